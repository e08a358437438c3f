//! Every metric a member exports, registered once per member (several members
//! in one process, as in tests and the simulator, keep their own), with etcd's
//! names, types, labels and buckets (`operability.md` §1): the `etcd_` ones a
//! dashboard or alert written for etcd reads, and `mainstay_` extras.
//!
//! Recording is a field access and an atomic add; the code that records knows
//! nothing of Prometheus. Gauges that mirror state (leader, indexes, sizes) are
//! set when scraped (`mainstay-http` calls `refresh` first).

mod process;

use std::sync::Arc;
use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The counter type the fields hold (for code that keeps a clone).
pub use prometheus_client::metrics::counter::Counter as CounterHandle;

/// Labels as (name, value) pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A histogram family with fixed buckets.
pub type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// A member id in a label, written as etcd writes it (lower-case hex) only
/// when scraped: recording a peer's bytes or round trip allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerId(pub u64);

impl EncodeLabelValue for PeerId {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(encoder, "{:x}", self.0)
    }
}

/// One peer label (`To` or `From`).
pub type PeerLabels = [(&'static str, PeerId); 1];

/// Labels whose values are all known when the code is written (`op`,
/// `success`; gRPC's type, service and method): no allocation per record.
pub type StaticLabels<const N: usize> = [(&'static str, &'static str); N];

/// etcd's disk latency buckets: 1 ms × 2, 14 buckets (to 8.192 s).
fn disk_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// etcd's peer round-trip buckets: 100 µs × 2, 16 buckets.
fn rtt_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// etcd's apply duration buckets: 100 µs × 2, 20 buckets.
fn apply_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// etcd's keyspace hash buckets: 10 ms × 2, 15 buckets.
fn hash_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

/// etcd's snapshot transfer buckets: 100 ms × 2, 14 buckets.
fn snapshot_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 14))
}

/// `etcd_server_*`.
#[derive(Default)]
pub struct Server {
    /// 1 if this member knows a live leader.
    pub has_leader: Gauge,
    /// 1 if this member leads.
    pub is_leader: Gauge,
    /// 1 if this member is a learner.
    pub is_learner: Gauge,
    /// Leader changes seen since the process started.
    pub leader_changes_seen: Counter,
    /// The commit index (a gauge, as etcd's).
    pub proposals_committed: Gauge,
    /// The applied index (a gauge, as etcd's).
    pub proposals_applied: Gauge,
    /// Proposals waiting to commit.
    pub proposals_pending: Gauge,
    /// Proposals that failed (no leader, lost leadership, timeouts).
    pub proposals_failed: Counter,
    /// Applies slower than `--warning-apply-duration` (100 ms).
    pub slow_apply: Counter,
    /// Heartbeats the leader sent later than twice the heartbeat interval.
    pub heartbeat_send_failures: Counter,
    /// The backend quota in bytes.
    pub quota_backend_bytes: Gauge,
    /// `/health` answers that were healthy.
    pub health_success: Counter,
    /// `/health` answers that were not.
    pub health_failures: Counter,
    /// Linearizable read barriers that failed (`etcd_server_read_indexes_failed_total`).
    pub read_indexes_failed: Counter,
    /// Read barriers that took longer than 500 ms (etcd counts a read index
    /// that is retried after 500 ms).
    pub slow_read_indexes: Counter,
    /// Leases revoked because they expired (`etcd_debugging_server_lease_expired_total`).
    pub lease_expired: Counter,
    /// 1 while this member installs a snapshot from the leader.
    pub snapshot_apply_in_progress: Gauge,
}

/// `etcd_disk_*`.
pub struct Disk {
    /// Raft log fsync latency.
    pub wal_fsync: Histogram,
    /// State store (backend) commit latency.
    pub backend_commit: Histogram,
    /// Defragmentation latency (etcd's buckets: 100 ms doubling to 410 s).
    pub backend_defrag: Histogram,
}

/// `etcd_network_*`.
pub struct Network {
    /// Bytes sent to each peer (`To`).
    pub peer_sent_bytes: Family<PeerLabels, Counter>,
    /// Bytes received from each peer (`From`).
    pub peer_received_bytes: Family<PeerLabels, Counter>,
    /// Failed sends to each peer (`To`).
    pub peer_sent_failures: Family<PeerLabels, Counter>,
    /// Round trips to each peer (`To`).
    pub peer_round_trip_time: Family<PeerLabels, Histogram, fn() -> Histogram>,
    /// Peers with a live connection (`Local`, `Remote`).
    pub active_peers: Family<Labels, Gauge>,
    /// Bytes of gRPC messages sent to clients.
    pub client_grpc_sent_bytes: Counter,
    /// Bytes of gRPC messages received from clients.
    pub client_grpc_received_bytes: Counter,
    /// Snapshots sent to each peer (`To`).
    pub snapshot_send_success: Family<Labels, Counter>,
    /// Snapshots that failed to reach a peer (`To`).
    pub snapshot_send_failures: Family<Labels, Counter>,
    /// Time to send a snapshot to a peer (`To`).
    pub snapshot_send_duration: Histograms,
    /// Snapshots received from the leader and installed (`From`).
    pub snapshot_receive_success: Family<Labels, Counter>,
    /// Snapshots received and refused or not installed (`From`).
    pub snapshot_receive_failures: Family<Labels, Counter>,
    /// Time to receive and install a snapshot (`From`).
    pub snapshot_receive_duration: Histograms,
}

/// `etcd_mvcc_*` and `etcd_debugging_mvcc_*`.
pub struct Mvcc {
    /// Ranges served.
    pub range: Counter,
    /// Puts applied (inside txns too).
    pub put: Counter,
    /// Deletes applied (inside txns too).
    pub delete: Counter,
    /// Txns applied or served.
    pub txn: Counter,
    /// Physically allocated bytes of the state store.
    pub db_total_size: Gauge,
    /// What the state store's file would hold after a defragmentation
    /// (etcd's "logically in use").
    pub db_total_size_in_use: Gauge,
    /// Time to hash the whole keyspace (`Maintenance.Hash`).
    pub hash_duration: Histogram,
    /// Time to hash the keyspace up to a revision (`HashKV`, the corruption check).
    pub hash_rev_duration: Histogram,
    /// Live keys.
    pub keys: Gauge,
    /// The current revision.
    pub current_revision: Gauge,
    /// The compacted revision.
    pub compact_revision: Gauge,
    /// Watch streams open.
    pub watch_streams: Gauge,
    /// Watchers open.
    pub watchers: Gauge,
    /// Events sent to watchers.
    pub events: Counter,
}

/// `etcd_debugging_lease_*`: counted where a lease change is applied.
pub struct Lease {
    /// Leases granted.
    pub granted: Counter,
    /// Leases revoked (by a client or by expiry).
    pub revoked: Counter,
    /// Lease renewals applied (one per lease a keep-alive renewed).
    pub renewed: Counter,
    /// Granted TTLs in seconds (etcd's buckets: 1 s × 2, 14 buckets).
    pub ttl: Histogram,
}

/// `grpc_server_*` (go-grpc-prometheus's names and labels).
#[derive(Default)]
pub struct Grpc {
    /// RPCs started (`grpc_type`, `grpc_service`, `grpc_method`).
    pub started: Family<StaticLabels<3>, Counter>,
    /// RPCs completed, with `grpc_code`.
    pub handled: Family<StaticLabels<4>, Counter>,
}

/// The last slow event of a kind: when, and how long it took (for the health
/// checks' reasons; the counters say how many).
#[derive(Default)]
pub struct LastSlow(std::sync::Mutex<Option<(std::time::Instant, Duration)>>);

impl LastSlow {
    /// Records one.
    pub fn record(&self, took: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), took));
    }

    /// How long ago the last one was, and how long it took.
    pub fn last(&self) -> Option<(Duration, Duration)> {
        let last = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        last.map(|(at, took)| (at.elapsed(), took))
    }
}

/// When recent events happened (the last `RECENT_MAX`).
#[derive(Default)]
pub struct Recent(std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>);

/// Events a `Recent` keeps.
const RECENT_MAX: usize = 1000;

impl Recent {
    /// Records one now.
    pub fn record(&self) {
        let mut times = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if times.len() == RECENT_MAX {
            times.pop_front();
        }
        times.push_back(std::time::Instant::now());
    }

    /// How many happened within `window` of now.
    pub fn within(&self, window: Duration) -> usize {
        let times = self.0.lock().unwrap_or_else(|p| p.into_inner());
        times.iter().filter(|at| at.elapsed() <= window).count()
    }
}

/// Mainstay's own (`mainstay_*`).
#[derive(Default)]
pub struct Own {
    /// When leader changes were seen.
    pub leader_changes: Recent,
    /// Raft log fsyncs slower than etcd's 1 s warning.
    pub slow_fsyncs: Counter,
    /// The last of them.
    pub last_slow_fsync: LastSlow,
    /// The last apply slower than `--warning-apply-duration`.
    pub last_slow_apply: LastSlow,
    /// Corruption checks run by this member as leader, by outcome.
    pub hash_checks: Family<Labels, Counter>,
    /// Per peer (`To`): seconds since this member last heard from it.
    pub peer_silence: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Per peer (`To`): the phi-accrual suspicion level.
    pub peer_phi: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Per peer (`To`), on the leader: log entries it trails the leader by.
    pub peer_lag_entries: Family<Labels, Gauge>,
    /// How long the peer has been missing an entry the leader has (leader only).
    pub peer_lag_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// Everything, and the registry that exposes it.
pub struct Metrics {
    /// Server.
    pub server: Server,
    /// Disk.
    pub disk: Disk,
    /// Network.
    pub network: Network,
    /// MVCC.
    pub mvcc: Mvcc,
    /// gRPC.
    pub grpc: Grpc,
    /// Leases.
    pub lease: Lease,
    /// Apply latency (`etcd_server_apply_duration_seconds`, labels
    /// `version`, `op`, `success`).
    pub apply_duration: Family<StaticLabels<3>, Histogram, fn() -> Histogram>,
    /// Mainstay's own.
    pub own: Own,
    registry: Registry,
}

/// A member's metrics, shared by everything that records.
pub type SharedMetrics = Arc<Metrics>;

impl Metrics {
    /// Every metric registered; `version` is the etcd version reported,
    /// `member_id` this member's id (etcd's info metrics).
    pub fn new(version: &str, member_id: u64) -> SharedMetrics {
        let mut registry = Registry::default();
        let server = Server::default();
        let disk = Disk {
            wal_fsync: disk_buckets(),
            backend_commit: disk_buckets(),
            backend_defrag: Histogram::new(exponential_buckets(0.1, 2.0, 13)),
        };
        let network = Network {
            peer_sent_bytes: Family::default(),
            peer_received_bytes: Family::default(),
            peer_sent_failures: Family::default(),
            peer_round_trip_time: Family::new_with_constructor(rtt_buckets),
            active_peers: Family::default(),
            client_grpc_sent_bytes: Counter::default(),
            client_grpc_received_bytes: Counter::default(),
            snapshot_send_success: Family::default(),
            snapshot_send_failures: Family::default(),
            snapshot_send_duration: Family::new_with_constructor(snapshot_buckets),
            snapshot_receive_success: Family::default(),
            snapshot_receive_failures: Family::default(),
            snapshot_receive_duration: Family::new_with_constructor(snapshot_buckets),
        };
        let mvcc = Mvcc {
            range: Counter::default(),
            put: Counter::default(),
            delete: Counter::default(),
            txn: Counter::default(),
            db_total_size: Gauge::default(),
            db_total_size_in_use: Gauge::default(),
            hash_duration: hash_buckets(),
            hash_rev_duration: hash_buckets(),
            keys: Gauge::default(),
            current_revision: Gauge::default(),
            compact_revision: Gauge::default(),
            watch_streams: Gauge::default(),
            watchers: Gauge::default(),
            events: Counter::default(),
        };
        let grpc = Grpc::default();
        let lease = Lease {
            granted: Counter::default(),
            revoked: Counter::default(),
            renewed: Counter::default(),
            ttl: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
        };
        let apply_duration: Family<StaticLabels<3>, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(apply_buckets);

        let r = &mut registry;
        // prometheus-client adds `_total` to counters' names itself.
        let s = &server;
        r.register(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not",
            s.has_leader.clone(),
        );
        r.register(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise",
            s.is_leader.clone(),
        );
        r.register(
            "etcd_server_is_learner",
            "Whether or not this member is a learner. 1 if is, 0 otherwise",
            s.is_learner.clone(),
        );
        r.register(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen",
            s.leader_changes_seen.clone(),
        );
        r.register(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed",
            s.proposals_committed.clone(),
        );
        r.register(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied",
            s.proposals_applied.clone(),
        );
        r.register(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit",
            s.proposals_pending.clone(),
        );
        r.register(
            "etcd_server_proposals_failed",
            "The total number of failed proposals seen",
            s.proposals_failed.clone(),
        );
        r.register(
            "etcd_server_slow_apply",
            "The total number of slow apply requests (likely overloaded from slow disk)",
            s.slow_apply.clone(),
        );
        r.register(
            "etcd_server_heartbeat_send_failures",
            "The total number of leader heartbeat send failures (likely overloaded from slow disk)",
            s.heartbeat_send_failures.clone(),
        );
        r.register(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes",
            s.quota_backend_bytes.clone(),
        );
        r.register(
            "etcd_server_health_success",
            "The total number of successful health checks",
            s.health_success.clone(),
        );
        r.register(
            "etcd_server_health_failures",
            "The total number of failed health checks",
            s.health_failures.clone(),
        );
        r.register(
            "etcd_server_read_indexes_failed",
            "The total number of failed read indexes seen",
            s.read_indexes_failed.clone(),
        );
        r.register(
            "etcd_server_slow_read_indexes",
            "The total number of pending read indexes not in sync with leader's or timed out read index requests",
            s.slow_read_indexes.clone(),
        );
        r.register(
            "etcd_debugging_server_lease_expired",
            "The total number of expired leases",
            s.lease_expired.clone(),
        );
        r.register(
            "etcd_server_snapshot_apply_in_progress_total",
            "1 if the server is applying the incoming snapshot. 0 if none",
            s.snapshot_apply_in_progress.clone(),
        );
        r.register(
            "etcd_server_apply_duration_seconds",
            "The latency distributions of v2 apply called by backend",
            apply_duration.clone(),
        );
        let info =
            |r: &mut Registry, name: &str, help: &str, label: &'static str, value: String| {
                let family = Family::<Labels, Gauge>::default();
                family.get_or_create(&vec![(label, value)]).set(1);
                r.register(name, help, family);
            };
        info(
            r,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version",
            "server_version",
            version.to_string(),
        );
        let minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
        info(
            r,
            "etcd_cluster_version",
            "Which version is running. 1 for 'cluster_version' label with current cluster version",
            "cluster_version",
            minor,
        );
        info(
            r,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID",
            "server_id",
            format!("{member_id:x}"),
        );

        r.register(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL",
            disk.wal_fsync.clone(),
        );
        r.register(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend",
            disk.backend_commit.clone(),
        );
        r.register(
            "etcd_disk_backend_defrag_duration_seconds",
            "The latency distribution of backend defragmentation.",
            disk.backend_defrag.clone(),
        );
        let n = &network;
        r.register(
            "etcd_network_peer_sent_bytes",
            "The total number of bytes sent to peers",
            n.peer_sent_bytes.clone(),
        );
        r.register(
            "etcd_network_peer_received_bytes",
            "The total number of bytes received from peers",
            n.peer_received_bytes.clone(),
        );
        r.register(
            "etcd_network_peer_sent_failures",
            "The total number of send failures from peers",
            n.peer_sent_failures.clone(),
        );
        r.register(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-Trip-Time histogram between peers",
            n.peer_round_trip_time.clone(),
        );
        r.register(
            "etcd_network_active_peers",
            "The current number of active peer connections",
            n.active_peers.clone(),
        );
        r.register(
            "etcd_network_client_grpc_sent_bytes",
            "The total number of bytes sent to grpc clients",
            n.client_grpc_sent_bytes.clone(),
        );
        r.register(
            "etcd_network_client_grpc_received_bytes",
            "The total number of bytes received from grpc clients",
            n.client_grpc_received_bytes.clone(),
        );
        r.register(
            "etcd_network_snapshot_send_success",
            "Total number of successful snapshot sends",
            n.snapshot_send_success.clone(),
        );
        r.register(
            "etcd_network_snapshot_send_failures",
            "Total number of snapshot send failures",
            n.snapshot_send_failures.clone(),
        );
        r.register(
            "etcd_network_snapshot_send_total_duration_seconds",
            "Total latency distributions of v3 snapshot sends",
            n.snapshot_send_duration.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            n.snapshot_receive_success.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_failures",
            "Total number of snapshot receive failures",
            n.snapshot_receive_failures.clone(),
        );
        r.register(
            "etcd_network_snapshot_receive_total_duration_seconds",
            "Total latency distributions of v3 snapshot receives",
            n.snapshot_receive_duration.clone(),
        );

        let m = &mvcc;
        r.register(
            "etcd_mvcc_range",
            "Total number of ranges seen by this member",
            m.range.clone(),
        );
        r.register(
            "etcd_mvcc_put",
            "Total number of puts seen by this member",
            m.put.clone(),
        );
        r.register(
            "etcd_mvcc_delete",
            "Total number of deletes seen by this member",
            m.delete.clone(),
        );
        r.register(
            "etcd_mvcc_txn",
            "Total number of txns seen by this member",
            m.txn.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes",
            m.db_total_size.clone(),
        );
        r.register(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes",
            m.db_total_size_in_use.clone(),
        );
        r.register(
            "etcd_mvcc_hash_duration_seconds",
            "The latency distribution of storage hash operation",
            m.hash_duration.clone(),
        );
        r.register(
            "etcd_mvcc_hash_rev_duration_seconds",
            "The latency distribution of storage hash by revision operation",
            m.hash_rev_duration.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys",
            m.keys.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store",
            m.current_revision.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store",
            m.compact_revision.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_watch_stream_total",
            "Total number of watch streams",
            m.watch_streams.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_watcher_total",
            "Total number of watchers",
            m.watchers.clone(),
        );
        r.register(
            "etcd_debugging_mvcc_events",
            "Total number of events sent by this member",
            m.events.clone(),
        );

        r.register(
            "etcd_debugging_lease_granted",
            "The total number of granted leases",
            lease.granted.clone(),
        );
        r.register(
            "etcd_debugging_lease_revoked",
            "The total number of revoked leases",
            lease.revoked.clone(),
        );
        r.register(
            "etcd_debugging_lease_renewed",
            "The number of renewed leases seen by the leader",
            lease.renewed.clone(),
        );
        r.register(
            "etcd_debugging_lease_ttl_total",
            "Bucketed histogram of lease TTLs",
            lease.ttl.clone(),
        );
        r.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            grpc.started.clone(),
        );
        r.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            grpc.handled.clone(),
        );

        let own = Own::default();
        r.register(
            "mainstay_disk_slow_fsyncs",
            "Raft log fsyncs slower than 1s",
            own.slow_fsyncs.clone(),
        );
        r.register(
            "mainstay_hash_checks",
            "Corruption checks this member ran as leader, by outcome",
            own.hash_checks.clone(),
        );
        r.register(
            "mainstay_peer_silence_seconds",
            "Seconds since this member last heard from the peer",
            own.peer_silence.clone(),
        );
        r.register(
            "mainstay_peer_phi",
            "Phi-accrual suspicion of the peer (8 or more: suspected)",
            own.peer_phi.clone(),
        );
        r.register(
            "mainstay_peer_lag_entries",
            "Log entries the peer trails the leader by (leader only)",
            own.peer_lag_entries.clone(),
        );
        r.register(
            "mainstay_peer_lag_seconds",
            "How long the peer has been missing an entry the leader has (leader only)",
            own.peer_lag_seconds.clone(),
        );
        process::register(r);
        Arc::new(Metrics {
            server,
            disk,
            network,
            mvcc,
            grpc,
            lease,
            apply_duration,
            own,
            registry,
        })
    }

    /// The text exposition (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Records a peer round trip.
    pub fn peer_rtt(&self, peer: u64, took: Duration) {
        self.network
            .peer_round_trip_time
            .get_or_create(&[("To", PeerId(peer))])
            .observe(took.as_secs_f64());
    }

    /// Records bytes sent to a peer.
    pub fn peer_sent(&self, peer: u64, bytes: usize) {
        self.network
            .peer_sent_bytes
            .get_or_create(&[("To", PeerId(peer))])
            .inc_by(bytes as u64);
    }

    /// Records bytes received from a peer.
    pub fn peer_received(&self, peer: u64, bytes: usize) {
        self.network
            .peer_received_bytes
            .get_or_create(&[("From", PeerId(peer))])
            .inc_by(bytes as u64);
    }

    /// Records a failed send to a peer.
    pub fn peer_send_failed(&self, peer: u64) {
        self.network
            .peer_sent_failures
            .get_or_create(&[("To", PeerId(peer))])
            .inc();
    }
}

/// The content type of `Metrics::encode`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_types_and_buckets_are_etcds() {
        let metrics = Metrics::new("3.6.0", 0xabc);
        metrics.server.leader_changes_seen.inc();
        metrics.server.proposals_committed.set(7);
        metrics.disk.wal_fsync.observe(0.003);
        metrics.peer_rtt(0x1f, Duration::from_micros(150));
        metrics.mvcc.put.inc_by(2);
        metrics.network.client_grpc_sent_bytes.inc_by(5);
        metrics.mvcc.hash_rev_duration.observe(0.015);
        metrics.server.lease_expired.inc();
        metrics.lease.ttl.observe(60.0);
        metrics
            .network
            .snapshot_send_duration
            .get_or_create(&vec![("To", "1f".to_string())])
            .observe(0.3);
        let text = metrics.encode();
        for line in [
            "# TYPE etcd_server_leader_changes_seen counter",
            "etcd_server_leader_changes_seen_total 1",
            "# TYPE etcd_server_proposals_committed_total gauge",
            "etcd_server_proposals_committed_total 7",
            "etcd_mvcc_put_total 2",
            "etcd_server_version{server_version=\"3.6.0\"} 1",
            "etcd_cluster_version{cluster_version=\"3.6\"} 1",
            "etcd_server_id{server_id=\"abc\"} 1",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 1",
            "etcd_network_peer_round_trip_time_seconds_bucket{le=\"0.0002\",To=\"1f\"} 1",
            "# TYPE process_resident_memory_bytes gauge",
            "etcd_network_client_grpc_sent_bytes_total 5",
            "etcd_mvcc_hash_rev_duration_seconds_bucket{le=\"0.01\"} 0",
            "etcd_mvcc_hash_rev_duration_seconds_bucket{le=\"0.02\"} 1",
            "etcd_debugging_server_lease_expired_total 1",
            "etcd_debugging_lease_ttl_total_bucket{le=\"64.0\"} 1",
            "# TYPE etcd_debugging_lease_granted counter",
            "# TYPE etcd_server_read_indexes_failed counter",
            "# TYPE etcd_server_snapshot_apply_in_progress_total gauge",
            "etcd_network_snapshot_send_total_duration_seconds_bucket{le=\"0.4\",To=\"1f\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
