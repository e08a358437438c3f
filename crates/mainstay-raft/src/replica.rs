//! `Replica`: one member's Raft node, its log, its state machine and its peer pool.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mainstay_mvcc::{Command, KeySpace};
use mainstay_proto::peer::{ForwardWritesRequest, ReadIndexRequest};
use mainstay_storage::{Disk, LogStore, StateStore};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{Config, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::codec::decode_message;
use crate::error::ReplicaError;
use crate::log_store::RaftLog;
use crate::network::{PeerNetwork, PeerPool};
use crate::peer_channel::Dial;
use crate::proposal::Proposal;
use crate::proposals::Joined;
use crate::state_machine::{AppliedEvents, StateMachine};
use crate::type_config::{MemberNode, Runtime, TypeConfig, WriteOutcome};
use crate::write_batches::WriteReply;

/// A read-index round slower than this counts as slow
/// (`etcd_server_slow_read_indexes_total`; etcd retries one after 500 ms).
const SLOW_READ_INDEX: Duration = Duration::from_millis(500);

/// The Raft handle type.
pub(crate) type RaftHandle = openraft::Raft<TypeConfig, StateMachine>;

/// How to run one replica.
#[derive(Clone)]
pub struct ReplicaConfig {
    /// This member's id.
    pub member_id: u64,
    /// The cluster's id (answered to joining members).
    pub cluster_id: u64,
    /// Where the log and the state live.
    pub data_dir: PathBuf,
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// etcd's `--election-timeout`: the leader lease; timers fire in [et/2, et).
    pub election_timeout_ms: u64,
    /// Applied entries between snapshots (etcd `--snapshot-count`).
    pub snapshot_count: u64,
    /// Bytes of the state database's page cache.
    pub state_cache_bytes: u64,
    /// Entries kept in the log behind a snapshot for slow followers.
    pub snapshot_catchup_entries: u64,
    /// Size at which a Raft log segment is full (`mainstay_storage::SEGMENT_BYTES`
    /// in production; small in the simulator, to roll over often).
    pub log_segment_bytes: u64,
    /// Seed of this member's Raft randomness (election timeouts).
    pub seed: u64,
    /// How to reach peers (real sockets in production, simulated in tests).
    pub dial: Dial,
    /// Where files live (the OS in production, `MemDisk` in the simulator).
    pub disk: Arc<dyn Disk>,
    /// SIMULATOR SELF-TEST ONLY: answer a forwarded write as soon as the leader
    /// applied it, before this member has (the bug the session checks catch).
    pub unsafe_answer_before_local_apply: bool,
    /// SIMULATOR SELF-TEST ONLY: report log entries on disk without an fsync.
    pub unsafe_skip_log_fsync: bool,
    /// SIMULATOR SELF-TEST ONLY: serve at once after a restart, without
    /// catching up with the leader (`catch_up` returns at once).
    pub unsafe_serve_before_catch_up: bool,
    /// SELF-TEST ONLY: apply every put with its value's last byte flipped
    /// (silent divergence, which the hash checks must catch).
    pub unsafe_diverge_values: bool,
    /// etcd's `--strict-reconfig-check`: refuse member changes that would leave
    /// too few started voters for a quorum.
    pub strict_reconfig_check: bool,
    /// How long a simple auth token lives after its last use (`--auth-token-ttl`).
    pub auth_token_ttl: Duration,
    /// `--force-new-cluster`, with this member as it is started: before Raft
    /// starts, make this member its cluster's only member (see `force`).
    pub force_new_cluster: Option<MemberNode>,
    /// Where this member's metrics are recorded.
    pub metrics: mainstay_metrics::SharedMetrics,
}

/// A point-in-time view of this member's Raft state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// This member.
    pub member_id: u64,
    /// The leader this member knows of.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Committed index.
    pub committed_index: u64,
    /// Whether this member is a learner.
    pub is_learner: bool,
    /// Whether this member is the leader.
    pub is_leader: bool,
    /// Bytes of the state database file.
    pub db_bytes: u64,
    /// Of those, what a defragmentation would keep (etcd's `dbSizeInUse`).
    pub db_in_use_bytes: u64,
    /// Bytes of the Raft log file.
    pub log_bytes: u64,
    /// Last log index covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last purged log index.
    pub purged_index: Option<u64>,
}

/// Read-index reply body.
#[derive(Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    Index(u64),
    NotLeader(Option<u64>),
    Failed(ReplicaError),
}

/// Where openraft answers a write proposed on this member.
type WriteResponder =
    openraft::impls::ProgressResponder<TypeConfig, openraft::raft::ClientWriteResult<TypeConfig>>;

pub(crate) struct Inner {
    pub(crate) config: ReplicaConfig,
    pub(crate) raft: RaftHandle,
    pub(crate) state: StateMachine,
    log: RaftLog,
    pub(crate) pool: PeerPool,
    pub(crate) request_timeout: Duration,
    /// Keep-alives proposed here hold it shared until applied; the lease
    /// expiry loop holds it exclusively from its decision until its revokes are
    /// applied, so no renew is ordered between a decision and its revoke.
    pub(crate) lease_gate: tokio::sync::RwLock<()>,
    /// Held around every membership change this member proposes as leader
    /// (operator changes and members publishing their attributes), so they do
    /// not collide in openraft's one-change-at-a-time rule.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// When a leader's AppendEntries (heartbeats included) last reached this member.
    leader_contact: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Linearizable reads waiting for a shared read-index round.
    read_rounds: crate::read_rounds::ReadRounds,
    /// Writes proposed here, on their way to openraft together (`Proposals`).
    proposals: crate::proposals::Proposals<(Proposal, WriteResponder)>,
    /// Client writes waiting to be forwarded to the leader in a batch.
    write_batches: crate::write_batches::WriteBatches,
    /// Streams to the leader that forwarded writes travel on.
    write_streams: crate::write_streams::WriteStreams,
    /// Set once this process has caught up with the leader (`catch_up`).
    serving: std::sync::atomic::AtomicBool,
    /// Each peer as seen from this member's calls to it.
    peer_health: Arc<crate::peer_health::PeerHealth>,
    /// When this member's log received its recent entries.
    append_times: Arc<crate::append_times::AppendTimes>,
}

/// One member's replica. Cheap to clone.
#[derive(Clone)]
pub struct Replica {
    pub(crate) inner: Arc<Inner>,
}

enum LocalWrite {
    Done(WriteOutcome),
    NotLeader(Option<u64>),
    Failed(ReplicaError),
}

impl Replica {
    /// Opens storage and starts the Raft node (not yet part of any cluster
    /// unless its log says so; see `bootstrap`).
    pub async fn open(config: ReplicaConfig) -> Result<Replica, String> {
        let (mut log_store, report) =
            LogStore::open_with(&config.disk, &config.data_dir, config.log_segment_bytes)
                .map_err(|e| format!("open raft log: {e}"))?;
        if report.torn_bytes > 0 {
            tracing::warn!(
                torn_bytes = report.torn_bytes,
                "raft log had a torn tail; truncated"
            );
        }
        let (state_store, key_space, meta) =
            StateStore::open(&config.disk, &config.data_dir, config.state_cache_bytes)
                .map_err(|e| format!("open state store: {e}"))?;
        if let Some(own) = &config.force_new_cluster {
            crate::force::force_new_cluster(
                &mut log_store,
                &meta,
                config.member_id,
                own,
                &config.dial,
            )
            .await?;
        }
        let log = RaftLog::new(
            log_store,
            config.unsafe_skip_log_fsync,
            config.metrics.clone(),
        );
        let tokens = crate::tokens::Tokens::new(config.auth_token_ttl);
        let state = StateMachine::new(state_store, key_space, meta, tokens, config.metrics.clone())
            .map(|state| state.diverging(config.unsafe_diverge_values))
            .map_err(|e| format!("open state store: {e}"))?;
        let raft_config = Config {
            cluster_name: "mainstay".to_string(),
            heartbeat_interval: config.heartbeat_ms,
            // openraft uses `election_timeout_max` as the leader lease: a follower
            // that heard from the leader less than that long ago refuses to vote,
            // as etcd's check-quorum followers ignore votes within one election
            // timeout. So the lease is `--election-timeout`, and timers fire in
            // [et/2, et): the first (pre-)vote after a leader dies is refused by
            // the lease, the second lands in [et, 2et), etcd's own failover window.
            // (Timers in [et, 1.5et) measured 2.5-2.8 et: two rounds past a longer
            // lease.)
            election_timeout_min: config.election_timeout_ms / 2,
            election_timeout_max: config.election_timeout_ms,
            enable_pre_vote: Some(true),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_count),
            max_in_snapshot_log_to_keep: config.snapshot_catchup_entries,
            install_snapshot_timeout: config.election_timeout_ms.max(1000) * 5,
            // A follower whose log went backwards (a disk that lost synced data, a
            // member restarted on a wiped directory under its old identity) must not
            // take the leader down: openraft's default is a (debug) assertion in the
            // leader. With reversion allowed, the leader restarts replication from
            // what the follower really has; the quorum-accepted index never moves
            // back, and the simulator's checks judge any acknowledged write lost.
            allow_log_reversion: Some(true),
            // A restarted leader stands for election like everyone else (as in
            // etcd and standard Raft). The committed id is saved without an fsync
            // of its own and the state machine is fsynced in batches, so a leader
            // restored at once could serve a state older than what it answered
            // before the crash (the simulator found this, seed 94).
            enable_leader_restore: Some(false),
            // Replicate an entry as soon as its log write is queued, while the
            // leader's own fsync runs (etcd sends while it writes). openraft's
            // default waits for the end of its loop iteration, which in traces
            // of one client's puts came after the leader's fsync had returned.
            broadcast_submitted_on_append: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("invalid raft config: {e}"))?;
        let pool = PeerPool::new(config.dial.clone());
        let peer_health = Arc::new(crate::peer_health::PeerHealth::default());
        let network = PeerNetwork {
            pool: pool.clone(),
            metrics: config.metrics.clone(),
            health: peer_health.clone(),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
        };
        // Raft's tasks inherit the seed's scope from here (see `Runtime`).
        let raft = Runtime::scope(
            config.seed,
            RaftHandle::new(
                config.member_id,
                Arc::new(raft_config),
                network,
                log.clone(),
                state.clone(),
            ),
        )
        .await
        .map_err(|e| format!("start raft: {e}"))?;
        let request_timeout =
            Duration::from_secs(5) + Duration::from_millis(2 * config.election_timeout_ms);
        let append_times = log.append_times();
        tokio::spawn(count_leader_changes(raft.metrics(), config.metrics.clone()));
        Ok(Replica {
            inner: Arc::new(Inner {
                config,
                raft,
                state,
                log,
                pool,
                request_timeout,
                lease_gate: tokio::sync::RwLock::new(()),
                membership_lock: tokio::sync::Mutex::new(()),
                leader_contact: std::sync::Mutex::new(None),
                read_rounds: crate::read_rounds::ReadRounds::default(),
                proposals: crate::proposals::Proposals::default(),
                write_batches: crate::write_batches::WriteBatches::default(),
                write_streams: crate::write_streams::WriteStreams::default(),
                serving: std::sync::atomic::AtomicBool::new(false),
                peer_health,
                append_times,
            }),
        })
    }

    /// Size of the state database file, in bytes.
    pub fn db_bytes(&self) -> u64 {
        self.inner.state.db_bytes()
    }

    /// What the backend quota is checked against: the state file's size
    /// (as etcd checks its bbolt file's), less an empty file's
    /// (`mainstay_storage::quota_bytes`).
    pub fn quota_bytes(&self) -> u64 {
        mainstay_storage::quota_bytes(self.db_bytes())
    }

    /// This member's Raft role: `leader`, `follower`, `candidate`,
    /// `learner` or `stopped`.
    pub fn role(&self) -> &'static str {
        match self.inner.raft.metrics().borrow_watched().state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "stopped",
        }
    }

    /// Where this member's metrics are recorded.
    pub fn metrics(&self) -> &mainstay_metrics::SharedMetrics {
        &self.inner.config.metrics
    }

    /// Sets the gauges that mirror state (called before each scrape).
    pub fn refresh_metrics(&self) {
        let metrics = self.metrics();
        let status = self.status();
        let server = &metrics.server;
        server
            .has_leader
            .set(i64::from(self.has_live_leader(self.election_timeout())));
        server.is_leader.set(i64::from(status.is_leader));
        server.is_learner.set(i64::from(status.is_learner));
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        server
            .proposals_committed
            .set(gauge(status.committed_index));
        server.proposals_applied.set(gauge(status.applied_index));
        let mvcc = &metrics.mvcc;
        mvcc.db_total_size.set(gauge(status.db_bytes));
        mvcc.db_total_size_in_use.set(gauge(status.db_in_use_bytes));
        let (keys, revision, compacted) = self.read(|space| {
            (
                space.live_keys(),
                space.revision(),
                space.compacted_revision(),
            )
        });
        mvcc.keys.set(i64::try_from(keys).unwrap_or(i64::MAX));
        mvcc.current_revision.set(revision);
        mvcc.compact_revision.set(compacted);
        let own = &metrics.own;
        for (view, matched) in self.peer_views() {
            let labels = vec![("To", format!("{:x}", view.id))];
            if let Some(since) = view.since_contact {
                own.peer_silence
                    .get_or_create(&labels)
                    .set(since.as_secs_f64());
            }
            own.peer_phi.get_or_create(&labels).set(view.phi);
            if let Some(matched) = matched.filter(|_| status.is_leader) {
                own.peer_lag_entries
                    .get_or_create(&labels)
                    .set(gauge(status.last_log_index.saturating_sub(matched)));
                own.peer_lag_seconds
                    .get_or_create(&labels)
                    .set(self.behind_for(matched).as_secs_f64());
            }
            let active = view.since_contact.is_some() && view.phi < crate::peer_health::PHI_SUSPECT;
            metrics
                .network
                .active_peers
                .get_or_create(&vec![
                    ("Local", format!("{:x}", self.member_id())),
                    ("Remote", format!("{:x}", view.id)),
                ])
                .set(i64::from(active));
        }
    }

    /// How long a follower whose log matches this one up to `matched` has
    /// been missing the next entry (zero when it is not behind).
    pub fn behind_for(&self, matched: u64) -> Duration {
        self.inner
            .append_times
            .behind_since(matched)
            .map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Each peer this member has called, as it sees them; on the leader also
    /// the index up to which each follower's log matches its own.
    pub fn peer_views(&self) -> Vec<(crate::peer_health::PeerView, Option<u64>)> {
        let matched: BTreeMap<u64, u64> = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics
                .replication
                .as_ref()
                .map(|replication| {
                    replication
                        .iter()
                        .map(|(id, log_id)| (*id, log_id.as_ref().map_or(0, |l| l.index)))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.inner
            .peer_health
            .views()
            .into_iter()
            .map(|view| {
                let matched = matched.get(&view.id).copied();
                (view, matched)
            })
            .collect()
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.inner.config.member_id
    }

    /// Whether this member has never been part of a cluster (empty log, no vote).
    pub async fn is_pristine(&self) -> bool {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        metrics.last_log_index.is_none()
            && metrics.last_applied.is_none()
            && metrics.current_term == 0
    }

    /// Makes a pristine member part of a new cluster with these voters. Every
    /// member of a new cluster calls it with the same map; that is safe.
    pub async fn bootstrap(&self, members: BTreeMap<u64, MemberNode>) -> Result<(), String> {
        match self.inner.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(error)) => {
                tracing::info!(%error, "cluster already initialized");
                Ok(())
            }
            Err(error) => Err(format!("initialize: {error}")),
        }
    }

    /// Reads the applied keyspace. Serializable: may trail the leader.
    pub fn read<T>(&self, read: impl FnOnce(&KeySpace) -> T) -> T {
        self.inner.state.read(read)
    }

    /// This replica's lease deadlines.
    pub fn lease_clock(&self) -> &crate::lease::LeaseClock {
        self.inner.state.lease_clock()
    }

    /// Whether auth is on in this member's applied state, without taking the
    /// keyspace's lock.
    pub fn auth_enabled(&self) -> bool {
        self.inner.state.auth_enabled()
    }

    /// The simple auth tokens this member knows.
    pub fn tokens(&self) -> &crate::tokens::Tokens {
        self.inner.state.tokens()
    }

    /// Waits until this member has applied `index`, at most `within`; whether
    /// it has (a simple token names the login's index).
    pub async fn applied_by(&self, index: u64, within: Duration) -> bool {
        self.wait_index(index, tokio::time::Instant::now() + within)
            .await
            .is_ok()
    }

    pub(crate) fn note_leader_contact(&self) {
        *self
            .inner
            .leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    /// Whether this member is in touch with a leader: it leads and a quorum
    /// acknowledged it within `within`, or a leader's AppendEntries reached it
    /// within `within`. (openraft's `current_leader` stays set on a cut-off
    /// follower until it wins or loses an election, which pre-vote may never
    /// start.)
    pub fn has_live_leader(&self, within: Duration) -> bool {
        // Read in place: every require-leader stream asks this each 100 ms.
        let (leading, acked_ms, known_leader) = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow_watched();
            // Deprecated for `last_quorum_acked`, whose instant type is openraft's
            // runtime wrapper; the millisecond form says the same thing plainly.
            #[allow(deprecated)]
            let acked_ms = metrics.millis_since_quorum_ack;
            (
                metrics.state == ServerState::Leader,
                acked_ms,
                metrics.current_leader.is_some(),
            )
        };
        if leading {
            return acked_ms.is_some_and(|ms| Duration::from_millis(ms) <= within);
        }
        let contact = *self
            .inner
            .leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        known_leader && contact.is_some_and(|at| at.elapsed() <= within)
    }

    /// Whether this member believes it is the leader (unconfirmed; see `read_barrier`).
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The configured election timeout (`--election-timeout`).
    pub fn election_timeout(&self) -> Duration {
        Duration::from_millis(self.inner.config.election_timeout_ms)
    }

    /// While the guard lives, applied events carry previous values that left
    /// memory (a watcher wants prev_kv). Take it before reading the revision
    /// the watcher starts from.
    pub fn want_prev_values(&self) -> crate::state_machine::PrevValues {
        self.inner.state.want_prev_values()
    }

    /// Durable applied events.
    pub fn subscribe(&self) -> broadcast::Receiver<AppliedEvents> {
        self.inner.state.subscribe()
    }

    /// The current Raft term.
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow_watched().current_term
    }

    /// Status for `Maintenance.Status` and health checks.
    pub fn status(&self) -> ReplicaStatus {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        let id = self.inner.config.member_id;
        ReplicaStatus {
            member_id: id,
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |l| l.index),
            committed_index: self.commit_and_apply_indexes().0,
            is_learner: membership.learner_ids().any(|l| l == id),
            is_leader: metrics.state == ServerState::Leader,
            db_bytes: self.inner.state.db_bytes(),
            db_in_use_bytes: self.inner.state.db_in_use_bytes(),
            log_bytes: self.inner.log.file_bytes(),
            snapshot_index: metrics.snapshot.map(|l| l.index),
            purged_index: metrics.purged.map(|l| l.index),
        }
    }

    /// (committed, applied) log indexes, cheaply (no file sizes): what write
    /// admission needs on every write. A follower learns the quorum commit index
    /// from its leader; committed is never reported below applied.
    pub fn commit_and_apply_indexes(&self) -> (u64, u64) {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow_watched();
        let applied = metrics.last_applied.as_ref().map_or(0, |l| l.index);
        let committed = [&metrics.local_committed, &metrics.cluster_committed]
            .into_iter()
            .flatten()
            .map(|l| l.index)
            .max()
            .unwrap_or(0)
            .max(applied);
        (committed, applied)
    }

    /// The highest log index this member acknowledged as on disk and did not
    /// truncate since; and its log's last index when this process opened it.
    /// A crash must never leave the second below the first's value before it
    /// (the simulator checks; `--break-log-fsync` breaks it).
    pub fn log_promises(&self) -> (u64, u64) {
        (self.inner.log.acknowledged(), self.inner.log.opened_last())
    }

    /// The applied index and the keyspace hash at it, read together (for
    /// cross-replica comparison).
    pub fn applied_hash(&self) -> (u64, i64, u32) {
        self.inner.state.applied_hash()
    }

    /// Every member: id, description, whether a learner.
    /// One consistent read of this member's applied state, holding everything
    /// it applied before the call (Maintenance.Snapshot reads it while apply
    /// goes on).
    pub async fn state_reader(&self) -> Result<mainstay_storage::StateReader, String> {
        self.inner
            .state
            .durable_reader()
            .await
            .map_err(|error| error.to_string())
    }

    /// Defragments this member's state file (Maintenance.Defragment):
    /// the file's size before and after.
    pub async fn defragment(&self) -> Result<(u64, u64), String> {
        self.inner
            .state
            .defragment()
            .await
            .map_err(|error| error.to_string())
    }

    pub fn members(&self) -> Vec<(u64, MemberNode, bool)> {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership().clone();
        let learners: Vec<u64> = membership.learner_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| (*id, node.clone(), learners.contains(id)))
            .collect()
    }

    /// Resolves when the Raft core stopped (shutdown or a fatal storage error),
    /// with the fatal error's text if there was one.
    /// A failed log write stops the member even when openraft was not waiting
    /// on it (a batch holding only a committed id).
    pub async fn stopped(&self) -> Option<String> {
        // Server metrics change only with the vote, role, leader or membership
        // (the full metrics change with every entry): waiting on them does not
        // wake this task per write. They close when the core stops; its last
        // full metrics say why.
        let mut server = self.inner.raft.server_metrics();
        let mut failure = self.inner.log.failure();
        let mut state_failure = self.inner.state.failure();
        let core_stopped = async { while server.changed().await.is_ok() {} };
        tokio::select! {
            () = core_stopped => {}
            Ok(failed) = failure.wait_for(Option::is_some) => {
                return Some(format!("raft log write failed: {}", failed.as_deref().unwrap_or("")));
            }
            Ok(failed) = state_failure.wait_for(Option::is_some) => {
                return Some(format!("state commit failed: {}", failed.as_deref().unwrap_or("")));
            }
        }
        match &self.inner.raft.metrics().borrow_watched().running_state {
            Err(fatal) => Some(fatal.to_string()),
            Ok(()) => None,
        }
    }

    /// Waits until this member has applied everything the cluster committed
    /// before the call (one read barrier) and from then on reports it serving.
    /// A restarted member may come back behind what it showed before a crash
    /// (its committed id is fsynced lazily): it serves clients only after this.
    pub async fn catch_up(&self) -> Result<(), ReplicaError> {
        if !self.inner.config.unsafe_serve_before_catch_up {
            self.read_barrier().await?;
        }
        self.tokens().start_learning();
        self.inner
            .serving
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Whether `catch_up` succeeded in this process: what this member shows
    /// from now on is at least what it showed before any restart.
    pub fn is_serving(&self) -> bool {
        self.inner
            .serving
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops the Raft node.
    pub async fn shutdown(&self) {
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        self.inner.state.settle().await;
    }

    /// On a graceful stop: if this member leads, hands leadership to the voter
    /// furthest along (`membership_rules::successor`) and waits until another
    /// member leads or `within` passes, so clients see a new leader at once
    /// instead of after an election timeout (etcd does the same on stop).
    /// Returns the member now leading, if the hand-over happened.
    pub async fn hand_over_leadership(&self, within: Duration) -> Option<u64> {
        let me = self.member_id();
        let (voters, matched) = {
            let metrics = self.inner.raft.metrics();
            let metrics = metrics.borrow_watched();
            if metrics.current_leader != Some(me) {
                return None;
            }
            let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
            let matched = matched_indexes(&metrics);
            (voters, matched)
        };
        let target = crate::membership_rules::successor(me, &voters, &matched)?;
        tracing::info!(
            to = format_args!("{target:x}"),
            "handing leadership over before stopping"
        );
        self.transfer_leader(target).await.ok()?;
        let mut metrics = self.inner.raft.metrics();
        let handed = async {
            loop {
                let leader = metrics.borrow_watched().current_leader;
                if let Some(leader) = leader.filter(|leader| *leader != me) {
                    return Some(leader);
                }
                if metrics.changed().await.is_err() {
                    return None;
                }
            }
        };
        match tokio::time::timeout(within, handed).await {
            Ok(leader) => leader,
            Err(_) => {
                tracing::warn!("leadership hand-over did not finish; stopping anyway");
                None
            }
        }
    }

    /// Asks the leader to hand over to `target` and waits briefly for it.
    pub async fn transfer_leader(&self, target: u64) -> Result<(), ReplicaError> {
        self.inner
            .raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|_| ReplicaError::Stopped)
    }

    /// Proposes a write and waits until it is applied, forwarding to the leader
    /// when this member is not it. Never re-proposes a command that may have
    /// been proposed: an unknown outcome is reported as such.
    pub async fn write(&self, command: Command) -> Result<WriteOutcome, ReplicaError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        // Encoded once: every member, the log and the network share these bytes.
        let command = Proposal::encode(&command);
        self.route(
            deadline,
            || {
                let command = command.clone();
                async move {
                    match self.write_local(command).await {
                        LocalWrite::Done(outcome) => Routed::Done(outcome),
                        LocalWrite::Failed(error) => Routed::Failed(error),
                        LocalWrite::NotLeader(leader) => Routed::NotLeader(leader),
                    }
                }
            },
            |leader| {
                let command = command.clone();
                async move {
                    match self.forward_write(leader, command, deadline).await {
                        WriteReply::Done(outcome) => {
                            match self.wait_applied(outcome.log_index, deadline).await {
                                Ok(()) => Routed::Done(outcome),
                                Err(error) => Routed::Failed(error),
                            }
                        }
                        WriteReply::Failed(error) => Routed::Failed(error),
                        WriteReply::NotLeader(_) | WriteReply::Retry => Routed::Again,
                    }
                }
            },
        )
        .await
    }

    /// Leader routing, the one retry loop of this crate (writes, read
    /// indexes, membership changes, publishing, lease time left): try on this
    /// member; when another member leads, ask it through `remote`; otherwise
    /// pause and try again, until the deadline (`Timeout` if a leader was known
    /// meanwhile, `NoLeader` if not).
    pub(crate) async fn route<T, E, Local, Remote>(
        &self,
        deadline: tokio::time::Instant,
        mut local: impl FnMut() -> Local,
        mut remote: impl FnMut(u64) -> Remote,
    ) -> Result<T, E>
    where
        E: From<ReplicaError>,
        Local: Future<Output = Routed<T, E>>,
        Remote: Future<Output = Routed<T, E>>,
    {
        let mut known_leader = None;
        loop {
            match local().await {
                Routed::Done(value) => return Ok(value),
                Routed::Failed(error) => return Err(error),
                Routed::Again => {}
                Routed::NotLeader(leader) => {
                    known_leader = leader.or(known_leader);
                    if let Some(leader) = leader.filter(|l| *l != self.member_id()) {
                        match remote(leader).await {
                            Routed::Done(value) => return Ok(value),
                            Routed::Failed(error) => return Err(error),
                            Routed::NotLeader(_) | Routed::Again => {}
                        }
                    }
                }
            }
            retry_pause(deadline, known_leader).await?;
        }
    }

    /// Waits until this member has applied a forwarded write's entry (etcd
    /// answers a request only from the member that received it, once that member
    /// applied it: on one connection revisions never go back and a read sees the
    /// client's own writes). A timeout here leaves the outcome unknown to the client.
    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), ReplicaError> {
        if self.inner.config.unsafe_answer_before_local_apply {
            return Ok(());
        }
        self.wait_index(index, deadline).await
    }

    /// Waits until this member has applied `index`, or the deadline (woken
    /// once, by the apply that reaches it: `AppliedIndex`).
    pub(crate) async fn wait_index(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), ReplicaError> {
        let Some(applied) = self.inner.state.applied().wait(index) else {
            return Ok(());
        };
        match tokio::time::timeout_at(deadline, applied).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ReplicaError::Stopped),
            Err(_) => Err(ReplicaError::Timeout),
        }
    }

    async fn write_local(&self, command: Proposal) -> LocalWrite {
        let _renewing = if command.is_lease_renew() {
            Some(self.inner.lease_gate.read().await)
        } else {
            None
        };
        let (responder, answer) = WriteResponder::complete_only();
        match self.inner.proposals.join((command, responder)) {
            Joined::Direct((command, responder)) => self.hand_over(command, responder).await,
            Joined::Queued { start: true } => {
                tokio::spawn(self.clone().send_proposals());
            }
            Joined::Queued { start: false } => {}
        }
        // No answer: openraft stopped (it dropped the responder).
        let Ok(answered) = answer.await else {
            return LocalWrite::Failed(ReplicaError::Stopped);
        };
        match answered {
            Ok(response) => match response.data.outcome {
                Some(outcome) => LocalWrite::Done(WriteOutcome {
                    outcome,
                    raft_term: response.log_id.leader_id.term,
                    log_index: response.log_id.index,
                }),
                None => LocalWrite::Failed(ReplicaError::Stopped),
            },
            Err(ClientWriteError::ForwardToLeader(forward)) => {
                LocalWrite::NotLeader(forward.leader_id)
            }
            Err(ClientWriteError::LogEntryDiscarded(_)) => {
                LocalWrite::Failed(ReplicaError::LeaderChanged)
            }
            Err(error) => {
                tracing::warn!(%error, "unexpected write error");
                LocalWrite::Failed(ReplicaError::Stopped)
            }
        }
    }

    /// Hands queued writes to openraft, each time after one runtime turn,
    /// until a turn finds none (`Proposals`).
    async fn send_proposals(self) {
        loop {
            tokio::task::yield_now().await;
            let Some(batch) = self.inner.proposals.take() else {
                return;
            };
            for (command, responder) in batch {
                self.hand_over(command, responder).await;
            }
        }
    }

    /// Hands one write to openraft. A stopped openraft drops the responder:
    /// the write's answer says so.
    async fn hand_over(&self, command: Proposal, responder: WriteResponder) {
        let _ = self
            .inner
            .raft
            .client_write_ff(command, Some(responder))
            .await;
    }

    /// Proposes on this member only (no forwarding) and waits until applied;
    /// `NoLeader` if this member is not the leader.
    pub(crate) async fn propose_here(
        &self,
        command: Command,
    ) -> Result<WriteOutcome, ReplicaError> {
        let command = Proposal::encode(&command);
        match self.write_local(command).await {
            LocalWrite::Done(outcome) => Ok(outcome),
            LocalWrite::Failed(error) => Err(error),
            LocalWrite::NotLeader(_) => Err(ReplicaError::NoLeader),
        }
    }

    /// Hands a client write to the leader in the next batch (`WriteBatches`)
    /// and waits for the leader's answer, or the deadline (outcome unknown).
    async fn forward_write(
        &self,
        leader: u64,
        command: Proposal,
        deadline: tokio::time::Instant,
    ) -> WriteReply {
        let (answered, start) = self.inner.write_batches.join(leader, command);
        if start {
            tokio::spawn(self.clone().send_write_batches());
        }
        match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => WriteReply::Failed(ReplicaError::Stopped),
            Err(_) => WriteReply::Failed(ReplicaError::Timeout),
        }
    }

    /// Sends batches of forwarded writes until none is queued.
    async fn send_write_batches(self) {
        while let Some((leader, batch)) = self.inner.write_batches.next_batch() {
            let replies = self.send_writes(leader, &batch).await;
            crate::write_batches::answer(batch, replies);
        }
    }

    /// One batch on a `ForwardWriteStream` to the leader (`WriteStreams`):
    /// a reply per write, in order. `Retry` only when the batch surely was
    /// not sent.
    async fn send_writes(
        &self,
        leader: u64,
        batch: &[crate::write_batches::Queued],
    ) -> Vec<WriteReply> {
        let all = |reply: WriteReply| vec![reply; batch.len()];
        let Some(node) = self.node(leader) else {
            return all(WriteReply::Retry);
        };
        let mut stream = match self.inner.write_streams.take(leader) {
            Some(stream) => stream,
            None => {
                let Ok(mut client) = self.inner.pool.client(&node) else {
                    return all(WriteReply::Retry);
                };
                let (requests, outgoing) = tokio::sync::mpsc::channel(1);
                let opened = tokio::time::timeout(
                    self.inner.request_timeout,
                    client.forward_write_stream(tokio_stream::wrappers::ReceiverStream::new(
                        outgoing,
                    )),
                )
                .await;
                match opened {
                    Ok(Ok(replies)) => crate::write_streams::WriteStream {
                        requests,
                        replies: replies.into_inner(),
                    },
                    // Nothing of the batch left this member.
                    Ok(Err(_)) => return all(WriteReply::Retry),
                    Err(_) => {
                        self.inner.pool.evict(&node);
                        return all(WriteReply::Retry);
                    }
                }
            }
        };
        let commands = batch.iter().map(|write| write.command.stored()).collect();
        if stream
            .requests
            .send(ForwardWritesRequest { commands })
            .await
            .is_err()
        {
            // The stream ended before the batch was handed to it.
            return all(WriteReply::Retry);
        }
        let reply =
            tokio::time::timeout(self.inner.request_timeout, stream.replies.message()).await;
        match reply {
            Err(_) => {
                // Possibly a half-open connection: dial afresh next time.
                self.inner.pool.evict(&node);
                all(WriteReply::Failed(ReplicaError::Timeout))
            }
            Ok(Err(_) | Ok(None)) => all(WriteReply::Failed(ReplicaError::Timeout)),
            Ok(Ok(Some(reply))) => {
                self.inner.write_streams.give_back(leader, stream);
                reply
                    .replies
                    .iter()
                    .map(|bytes| match decode_message(bytes) {
                        Ok(WriteReply::Failed(error)) => {
                            WriteReply::Failed(error.leader_answered())
                        }
                        Ok(reply) => reply,
                        Err(_) => WriteReply::Failed(ReplicaError::Timeout),
                    })
                    .collect()
            }
        }
    }

    /// Serves a batch of forwarded writes: proposes them all at once, locally
    /// only (never forwarded again), and answers each.
    pub(crate) async fn serve_forward_writes(&self, commands: Vec<Proposal>) -> Vec<WriteReply> {
        let writes = commands.into_iter().map(|command| async move {
            match self.write_local(command).await {
                LocalWrite::Done(outcome) => WriteReply::Done(outcome),
                LocalWrite::NotLeader(leader) => WriteReply::NotLeader(leader),
                LocalWrite::Failed(error) => WriteReply::Failed(error),
            }
        });
        futures::future::join_all(writes).await
    }

    pub(crate) fn node(&self, id: u64) -> Option<MemberNode> {
        self.members()
            .into_iter()
            .find(|(member, _, _)| *member == id)
            .map(|(_, node, _)| node)
    }

    /// Waits until this member has applied everything committed before the call
    /// (a ReadIndex barrier through the leader; no log write). Concurrent
    /// barriers on this member share rounds (`ReadRounds`).
    pub async fn read_barrier(&self) -> Result<(), ReplicaError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let (answered, start) = self.inner.read_rounds.join();
        if start {
            tokio::spawn(self.clone().run_read_rounds());
        }
        let index = match tokio::time::timeout_at(deadline, answered).await {
            Ok(Ok(result)) => result?,
            Ok(Err(_)) => return Err(ReplicaError::Stopped),
            Err(_) => return Err(ReplicaError::Timeout),
        };
        self.wait_index(index, deadline).await
    }

    /// Runs read-index rounds until no read is queued.
    async fn run_read_rounds(self) {
        while let Some(reads) = self.inner.read_rounds.next_round() {
            let started = std::time::Instant::now();
            let result = self.read_index_round().await;
            let server = &self.metrics().server;
            if result.is_err() {
                server.read_indexes_failed.inc();
            }
            if started.elapsed() > SLOW_READ_INDEX {
                server.slow_read_indexes.inc();
            }
            crate::read_rounds::answer(reads, &result);
        }
    }

    /// One read index, taken now: the leader's own, or asked of the leader.
    async fn read_index_round(&self) -> Result<u64, ReplicaError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let routed = |reply: Option<ReadIndexReply>| match reply {
            Some(ReadIndexReply::Index(index)) => Routed::Done(index),
            Some(ReadIndexReply::Failed(error)) => Routed::Failed(error),
            Some(ReadIndexReply::NotLeader(leader)) => Routed::NotLeader(leader),
            None => Routed::Again,
        };
        self.route(
            deadline,
            || async { routed(Some(self.read_index_local().await)) },
            |leader| async move { routed(self.remote_read_index(leader).await) },
        )
        .await
    }

    /// On the leader: confirms leadership with a quorum and returns the read index
    /// (after applying up to it locally).
    pub(crate) async fn read_index_local(&self) -> ReadIndexReply {
        // Bounded: a round that never ends would hold every later read of
        // this member (they share rounds), and a restarted member's catch-up.
        let confirmed = tokio::time::timeout(
            self.inner.request_timeout,
            self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await;
        let Ok(confirmed) = confirmed else {
            return ReadIndexReply::NotLeader(None);
        };
        match confirmed {
            Ok(read_log_id) => ReadIndexReply::Index(read_log_id.index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
                ReadIndexReply::NotLeader(forward.leader_id)
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                ReadIndexReply::NotLeader(None)
            }
            Err(RaftError::Fatal(_)) => ReadIndexReply::Failed(ReplicaError::Stopped),
        }
    }

    async fn remote_read_index(&self, leader: u64) -> Option<ReadIndexReply> {
        let node = self.node(leader)?;
        let mut client = self.inner.pool.client(&node).ok()?;
        let Ok(reply) = tokio::time::timeout(
            self.inner.request_timeout,
            client.read_index(ReadIndexRequest {}),
        )
        .await
        else {
            // Possibly a half-open connection: dial afresh next time.
            self.inner.pool.evict(&node);
            return None;
        };
        let reply = reply.ok()?;
        let reply = reply.into_inner();
        if reply.error.is_empty() {
            return Some(ReadIndexReply::Index(reply.index));
        }
        match decode_message(&reply.error).ok()? {
            // A read: a leader stopping is only a reason to ask again.
            ReadIndexReply::Failed(ReplicaError::Stopped) => None,
            ReadIndexReply::Failed(error) => Some(ReadIndexReply::Failed(error.leader_answered())),
            reply => Some(reply),
        }
    }
}

/// Pauses before another attempt, or gives up at the deadline: `Timeout` when a
/// leader was known (the request may be in flight), `NoLeader` otherwise.
pub(crate) async fn retry_pause(
    deadline: tokio::time::Instant,
    known_leader: Option<u64>,
) -> Result<(), ReplicaError> {
    if tokio::time::Instant::now() >= deadline {
        return Err(if known_leader.is_some() {
            ReplicaError::Timeout
        } else {
            ReplicaError::NoLeader
        });
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// Marker: the forward surely did not reach the leader, so retrying is safe.
pub(crate) struct Retry;

/// One attempt's answer in `Replica::route`, from this member or the leader.
pub(crate) enum Routed<T, E> {
    /// Answered.
    Done(T),
    /// The one asked does not lead (nothing was done); the leader it knows.
    NotLeader(Option<u64>),
    /// Nothing done yet (or surely not sent): try again after a pause.
    Again,
    /// Failed; the error says whether the outcome is unknown.
    Failed(E),
}

/// Counts leader changes as etcd does: each time a leader other than the last
/// one is known (the first leader seen included). Polls every 50 ms rather
/// than waking on each of openraft's metric updates (several per write):
/// a leader that came and went within one poll is not counted. Ends when
/// Raft stops.
async fn count_leader_changes(
    raft_metrics: openraft_rt_tokio::TokioWatchReceiver<openraft::RaftMetrics<TypeConfig>>,
    metrics: mainstay_metrics::SharedMetrics,
) {
    use openraft_rt::watch::WatchReceiver;
    let mut last = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (leader, running) = {
            let now = raft_metrics.borrow_watched();
            (now.current_leader, now.state != ServerState::Shutdown)
        };
        if !running {
            return;
        }
        if leader.is_some() && leader != last {
            metrics.server.leader_changes_seen.inc();
            metrics.own.leader_changes.record();
            last = leader;
        }
    }
}

/// On the leader: the index up to which each follower's log matches its own
/// (followers with no match yet left out); empty elsewhere.
pub(crate) fn matched_indexes(
    metrics: &openraft::RaftMetrics<crate::type_config::TypeConfig>,
) -> BTreeMap<u64, u64> {
    metrics
        .replication
        .as_ref()
        .map(|replication| {
            replication
                .iter()
                .filter_map(|(id, log_id)| log_id.as_ref().map(|l| (*id, l.index)))
                .collect()
        })
        .unwrap_or_default()
}
