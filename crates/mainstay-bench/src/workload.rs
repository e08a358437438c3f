//! The workloads, each run against a fresh, ready cluster: puts at 1/64/256
//! clients, linearizable and serializable gets, compare-and-swap transactions,
//! put→watch-event latency, memory after a bulk load, restart time after
//! SIGKILL with a dataset, and idle CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::watch_client::WatchClient;
use mainstay_proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    compare, request_op, response_op, watch_request,
};
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::cluster::Cluster;
use crate::driver::{self, Client, CpuMeter, Measured, Rng, Window, channel_of, channels};
use crate::procfs;
use crate::stats::Latencies;

/// One benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Puts, 1 client.
    Put1,
    /// Puts, 64 clients.
    Put64,
    /// Puts, 256 clients.
    Put256,
    /// Linearizable single-key gets, 64 clients.
    GetLin64,
    /// Serializable single-key gets, 64 clients.
    GetSer64,
    /// Compare-and-swap transactions, 16 clients.
    Txn16,
    /// Put → watch event latency.
    Watch,
    /// Put → watch event latency with 1000 watchers of one key each on one
    /// stream, and the servers' CPU per put.
    Watch1k,
    /// The same with each of the 1000 watchers on a stream of its own.
    Watch1kStreams,
    /// Resident memory after a bulk load.
    Rss,
    /// Time to serve again after SIGKILL of all members with a dataset.
    Restart,
    /// CPU of an idle cluster.
    Idle,
}

impl Workload {
    /// Every workload, in the order they run.
    pub const ALL: [Workload; 12] = [
        Workload::Put1,
        Workload::Put64,
        Workload::Put256,
        Workload::GetLin64,
        Workload::GetSer64,
        Workload::Txn16,
        Workload::Watch,
        Workload::Watch1k,
        Workload::Watch1kStreams,
        Workload::Rss,
        Workload::Restart,
        Workload::Idle,
    ];

    /// The name used by `--only` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put1 => "put1",
            Workload::Put64 => "put64",
            Workload::Put256 => "put256",
            Workload::GetLin64 => "get-lin64",
            Workload::GetSer64 => "get-ser64",
            Workload::Txn16 => "txn16",
            Workload::Watch => "watch",
            Workload::Watch1k => "watch1k",
            Workload::Watch1kStreams => "watch1k-streams",
            Workload::Rss => "rss",
            Workload::Restart => "restart",
            Workload::Idle => "idle",
        }
    }

    /// Parses an `--only` entry.
    pub fn parse(name: &str) -> anyhow::Result<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .with_context(|| {
                let names: Vec<&str> = Workload::ALL.iter().map(|w| w.name()).collect();
                format!("unknown workload {name:?} (one of {})", names.join(","))
            })
    }
}

/// Sizes and durations shared by every workload of a run.
pub struct Settings {
    /// Warm-up before each measured window.
    pub warmup: Duration,
    /// Length of each measured window.
    pub seconds: Duration,
    /// Keys loaded by `rss`.
    pub rss_keys: u64,
    /// Bytes of values loaded by `restart`.
    pub restart_bytes: u64,
    /// Clock ticks per second of `/proc/<pid>/stat`.
    pub ticks_per_second: u64,
    /// The value (256 bytes unless `--value-bytes` says otherwise), fixed per run.
    pub value: Arc<Vec<u8>>,
    /// The 4 KiB value of `restart`, fixed per run.
    pub big_value: Arc<Vec<u8>>,
    /// Seed of the clients' key choices.
    pub seed: u64,
}

/// Keys written by the put workloads are drawn from this many.
const WRITE_KEYS: u64 = 100_000;
/// Keys preloaded for the get workloads.
const GET_KEYS: u64 = 10_000;
/// Clients of bulk loads.
const LOAD_CLIENTS: usize = 64;
/// Size of a `restart` value.
const BIG_VALUE: u64 = 4096;
/// Longest wait for the members to serve again after a restart.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// A workload's results: named metrics in report order, and failed requests.
#[derive(Debug, Default)]
pub struct Outcome {
    /// (metric, value).
    pub metrics: Vec<(&'static str, f64)>,
    /// Requests that failed during the measured window (or were retried while
    /// loading).
    pub errors: u64,
}

/// Runs `workload` on a ready cluster.
pub async fn run(
    workload: Workload,
    cluster: &mut Cluster,
    settings: &Settings,
) -> anyhow::Result<Outcome> {
    match workload {
        Workload::Put1 => puts(cluster, settings, 1).await,
        Workload::Put64 => puts(cluster, settings, 64).await,
        Workload::Put256 => puts(cluster, settings, 256).await,
        Workload::GetLin64 => gets(cluster, settings, false).await,
        Workload::GetSer64 => gets(cluster, settings, true).await,
        Workload::Txn16 => txns(cluster, settings, 16).await,
        Workload::Watch => watch(cluster, settings, 1, 1).await,
        Workload::Watch1k => watch(cluster, settings, WATCH1K_WATCHERS, 1).await,
        Workload::Watch1kStreams => {
            watch(cluster, settings, WATCH1K_WATCHERS, WATCH1K_WATCHERS).await
        }
        Workload::Rss => rss(cluster, settings).await,
        Workload::Restart => restart(cluster, settings).await,
        Workload::Idle => idle(cluster, settings).await,
    }
}

/// A 16-byte key of the put and get workloads.
pub fn bench_key(n: u64) -> Vec<u8> {
    format!("bench/{n:010}").into_bytes()
}

fn rss_key(n: u64) -> Vec<u8> {
    format!("rss/{n:012}").into_bytes()
}

fn restart_key(n: u64) -> Vec<u8> {
    format!("restart/{n:08}").into_bytes()
}

fn window(settings: &Settings) -> Window {
    Window::after(settings.warmup, settings.seconds)
}

struct PutClient {
    kv: KvClient<Channel>,
    rng: Rng,
    value: Arc<Vec<u8>>,
}

impl Client for PutClient {
    async fn call(&mut self) -> anyhow::Result<()> {
        let put = PutRequest {
            key: bench_key(self.rng.below(WRITE_KEYS)),
            value: self.value.to_vec().into(),
            ..Default::default()
        };
        self.kv.put(put).await?;
        Ok(())
    }
}

async fn puts(cluster: &Cluster, s: &Settings, clients: usize) -> anyhow::Result<Outcome> {
    let channels = channels(cluster.client_urls(), clients)?;
    let clients: Vec<PutClient> = (0..clients)
        .map(|c| PutClient {
            kv: KvClient::new(channel_of(&channels, c)),
            rng: Rng::new(s.seed ^ (c as u64 + 1)),
            value: s.value.clone(),
        })
        .collect();
    let mut m = driver::closed_loop(clients, window(s), cluster.pids(), s.ticks_per_second).await?;
    Ok(latency_outcome(&mut m, true))
}

fn latency_outcome(m: &mut Measured, with_p50: bool) -> Outcome {
    let mut metrics = vec![("ops/s", m.ops_per_second())];
    if with_p50 {
        metrics.push((
            "p50 ms",
            m.latencies.percentile_ms(50.0).unwrap_or(f64::NAN),
        ));
    }
    metrics.push((
        "p99 ms",
        m.latencies.percentile_ms(99.0).unwrap_or(f64::NAN),
    ));
    metrics.push(("CPU/op ms", m.cpu_ms_per_op()));
    Outcome {
        metrics,
        errors: m.errors,
    }
}

struct GetClient {
    kv: KvClient<Channel>,
    rng: Rng,
    serializable: bool,
}

impl Client for GetClient {
    async fn call(&mut self) -> anyhow::Result<()> {
        let range = RangeRequest {
            key: bench_key(self.rng.below(GET_KEYS)),
            serializable: self.serializable,
            ..Default::default()
        };
        let reply = self.kv.range(range).await?.into_inner();
        if reply.kvs.len() != 1 {
            bail!("preloaded key missing");
        }
        Ok(())
    }
}

async fn gets(cluster: &Cluster, s: &Settings, serializable: bool) -> anyhow::Result<Outcome> {
    let (_, retries) = driver::load(
        cluster.client_urls(),
        LOAD_CLIENTS,
        GET_KEYS,
        bench_key,
        s.value.clone(),
    )
    .await?;
    let channels = channels(cluster.client_urls(), 64)?;
    let clients: Vec<GetClient> = (0..64)
        .map(|c| GetClient {
            kv: KvClient::new(channel_of(&channels, c)),
            rng: Rng::new(s.seed ^ (c as u64 + 1)),
            serializable,
        })
        .collect();
    let mut m = driver::closed_loop(clients, window(s), cluster.pids(), s.ticks_per_second).await?;
    let mut outcome = latency_outcome(&mut m, false);
    outcome.errors += retries;
    Ok(outcome)
}

/// Compare-and-swap on its own key: put if the key's mod revision is the one
/// last seen, else read it; either way learn the current mod revision.
struct CasClient {
    kv: KvClient<Channel>,
    key: Vec<u8>,
    revision: i64,
    value: Arc<Vec<u8>>,
}

impl Client for CasClient {
    async fn call(&mut self) -> anyhow::Result<()> {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: self.key.clone(),
                target_union: Some(compare::TargetUnion::ModRevision(self.revision)),
                range_end: Vec::new(),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: self.key.clone(),
                    value: self.value.to_vec().into(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: self.key.clone(),
                    ..Default::default()
                })),
            }],
        };
        let reply = self.kv.txn(txn).await?.into_inner();
        self.revision = if reply.succeeded {
            reply.header.context("txn reply without header")?.revision
        } else {
            match reply.responses.first().and_then(|r| r.response.as_ref()) {
                Some(response_op::Response::ResponseRange(range)) => {
                    range.kvs.first().map_or(0, |kv| kv.mod_revision)
                }
                _ => bail!("failed txn without its range response"),
            }
        };
        Ok(())
    }
}

async fn txns(cluster: &Cluster, s: &Settings, clients: usize) -> anyhow::Result<Outcome> {
    let channels = channels(cluster.client_urls(), clients)?;
    let clients: Vec<CasClient> = (0..clients)
        .map(|c| CasClient {
            kv: KvClient::new(channel_of(&channels, c)),
            key: format!("cas/{c}").into_bytes(),
            revision: 0,
            value: s.value.clone(),
        })
        .collect();
    let mut m = driver::closed_loop(clients, window(s), cluster.pids(), s.ticks_per_second).await?;
    Ok(latency_outcome(&mut m, false))
}

/// Watchers of `watch1k` and `watch1k-streams`, one key each.
const WATCH1K_WATCHERS: u64 = 1000;
/// Watch streams per HTTP/2 connection of `watch1k-streams`.
const STREAMS_PER_CONNECTION: u64 = 125;

/// The watch workloads' writer: `w/<n>` (`w/<n mod keys>` when each watcher
/// watches one key), the value starting with the send time (nanoseconds since
/// `base`, little-endian).
struct WatchWriter {
    kv: KvClient<Channel>,
    base: Instant,
    n: u64,
    /// Keys written in turn; 0 for a new key each put.
    keys: u64,
    value: Arc<Vec<u8>>,
    last_revision: Arc<AtomicI64>,
}

impl Client for WatchWriter {
    async fn call(&mut self) -> anyhow::Result<()> {
        let mut value = self.value.to_vec();
        let nanos = self.base.elapsed().as_nanos() as u64;
        value[..8].copy_from_slice(&nanos.to_le_bytes());
        let n = if self.keys == 0 {
            self.n
        } else {
            self.n % self.keys
        };
        let put = PutRequest {
            key: format!("w/{n}").into_bytes(),
            value: value.into(),
            ..Default::default()
        };
        self.n += 1;
        let reply = self.kv.put(put).await?.into_inner();
        if let Some(header) = reply.header {
            self.last_revision
                .fetch_max(header.revision, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `watchers` = 1: one watcher of the prefix `w/`, a new key each put.
/// More: that many watchers of one key each (`w/0`, `w/1`, …), written in
/// turn, so each event is for one watcher of many; spread over `streams`
/// watch streams (watcher n on stream n mod `streams`), 125 streams per
/// HTTP/2 connection, all on member 0.
async fn watch(
    cluster: &Cluster,
    s: &Settings,
    watchers: u64,
    streams: u64,
) -> anyhow::Result<Outcome> {
    let urls = cluster.client_urls();
    let write_channel = driver::channel(&urls[1 % urls.len()])?;
    let creates: Vec<WatchCreateRequest> = if watchers == 1 {
        vec![WatchCreateRequest {
            key: b"w/".to_vec(),
            range_end: b"w0".to_vec(),
            ..Default::default()
        }]
    } else {
        (0..watchers)
            .map(|n| WatchCreateRequest {
                key: format!("w/{n}").into_bytes(),
                ..Default::default()
            })
            .collect()
    };
    let streams = streams.clamp(1, watchers.max(1));
    let connections: Vec<Channel> = (0..streams.div_ceil(STREAMS_PER_CONNECTION))
        .map(|_| driver::channel(&urls[0]))
        .collect::<anyhow::Result<_>>()?;
    let mut per_stream: Vec<Vec<WatchCreateRequest>> = (0..streams).map(|_| Vec::new()).collect();
    for (n, create) in creates.into_iter().enumerate() {
        per_stream[n % streams as usize].push(create);
    }
    let mut requests = Vec::new();
    let mut opened = tokio_stream::StreamMap::new();
    for (n, creates) in per_stream.into_iter().enumerate() {
        let (sender, receiver) = tokio::sync::mpsc::channel(creates.len() + 1);
        let wanted = creates.len();
        for create in creates {
            sender
                .send(WatchRequest {
                    request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
                })
                .await
                .context("watch request")?;
        }
        let channel = connections[n / STREAMS_PER_CONNECTION as usize % connections.len()].clone();
        let mut stream = tokio::time::timeout(
            Duration::from_secs(10),
            WatchClient::new(channel).watch(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        )
        .await
        .context("watch timed out")??
        .into_inner();
        let mut created = 0;
        while created < wanted {
            let reply = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .context("watch creation timed out")??
                .context("watch stream ended")?;
            if reply.canceled {
                bail!("watch refused: {}", reply.cancel_reason);
            }
            if reply.created {
                created += 1;
            }
        }
        requests.push(sender);
        opened.insert(n, stream);
    }

    let base = Instant::now();
    let window = window(s);
    let last_revision = Arc::new(AtomicI64::new(0));
    let (stop, stopped) = oneshot::channel();
    let watcher = tokio::spawn(watch_events(opened, base, window, stopped));
    let writer = WatchWriter {
        kv: KvClient::new(write_channel),
        base,
        n: 0,
        keys: if watchers == 1 { 0 } else { watchers },
        value: s.value.clone(),
        last_revision: last_revision.clone(),
    };
    let m = driver::closed_loop(vec![writer], window, cluster.pids(), s.ticks_per_second).await?;
    let _ = stop.send(last_revision.load(Ordering::Relaxed));
    let mut latencies = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .context("watcher did not see the last write")?
        .context("watcher task")??;
    drop(requests);
    let mut metrics = vec![
        (
            "put→event p50 ms",
            latencies.percentile_ms(50.0).unwrap_or(f64::NAN),
        ),
        (
            "put→event p99 ms",
            latencies.percentile_ms(99.0).unwrap_or(f64::NAN),
        ),
        ("writer ops/s", m.ops_per_second()),
    ];
    if watchers > 1 {
        metrics.push(("CPU/op ms", m.cpu_ms_per_op()));
    }
    Ok(Outcome {
        metrics,
        errors: m.errors,
    })
}

/// Receives events until one at or past the revision sent on `stop`; returns
/// the put→event latency of every event whose put was sent within `window`.
async fn watch_events(
    mut streams: tokio_stream::StreamMap<
        usize,
        Streaming<mainstay_proto::etcdserverpb::WatchResponse>,
    >,
    base: Instant,
    window: Window,
    mut stop: oneshot::Receiver<i64>,
) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::default();
    let mut stop_at = None;
    let mut seen = 0;
    loop {
        if stop_at.is_some_and(|last| seen >= last) {
            return Ok(latencies);
        }
        tokio::select! {
            last = &mut stop, if stop_at.is_none() => stop_at = Some(last.unwrap_or(0)),
            reply = streams.next() => {
                let (_, reply) = reply.context("watch streams ended")?;
                let reply = reply.context("watch stream")?;
                if reply.canceled {
                    bail!("watch canceled: {}", reply.cancel_reason);
                }
                let arrived = base.elapsed();
                for event in reply.events {
                    let Some(kv) = event.kv else { continue };
                    seen = seen.max(kv.mod_revision);
                    let Some(stamp) = kv.value.get(..8) else { continue };
                    let mut nanos = [0u8; 8];
                    nanos.copy_from_slice(stamp);
                    let sent = Duration::from_nanos(u64::from_le_bytes(nanos));
                    if window.contains(base + sent) {
                        let micros = arrived.saturating_sub(sent).as_micros();
                        latencies.record(micros.min(u128::from(u32::MAX)) as u32);
                    }
                }
            }
        }
    }
}

async fn rss(cluster: &Cluster, s: &Settings) -> anyhow::Result<Outcome> {
    let (took, retries) = driver::load(
        cluster.client_urls(),
        LOAD_CLIENTS,
        s.rss_keys,
        rss_key,
        s.value.clone(),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = procfs::rss_mb_sum(&cluster.pids())?;
    Ok(Outcome {
        metrics: vec![
            ("RSS MB", rss),
            ("load ops/s", s.rss_keys as f64 / took.as_secs_f64()),
        ],
        errors: retries,
    })
}

async fn restart(cluster: &mut Cluster, s: &Settings) -> anyhow::Result<Outcome> {
    let count = s.restart_bytes / BIG_VALUE;
    let (_, retries) = driver::load(
        cluster.client_urls(),
        LOAD_CLIENTS,
        count,
        restart_key,
        s.big_value.clone(),
    )
    .await?;
    let spawned = cluster.kill_and_restart()?;
    let took = cluster.wait_readable(spawned, RESTART_TIMEOUT).await?;
    // The dataset must have come back, or the time means nothing.
    let range = RangeRequest {
        key: b"restart/".to_vec(),
        range_end: b"restart0".to_vec(),
        count_only: true,
        ..Default::default()
    };
    let mut kv = KvClient::new(driver::channel(&cluster.client_urls()[0])?);
    let found = tokio::time::timeout(driver::REQUEST_TIMEOUT, kv.range(range))
        .await
        .context("count after restart timed out")??
        .into_inner()
        .count;
    if found != count as i64 {
        bail!("after restart {found} of the {count} loaded keys are there");
    }
    Ok(Outcome {
        metrics: vec![("restart s", took.as_secs_f64())],
        errors: retries,
    })
}

async fn idle(cluster: &Cluster, s: &Settings) -> anyhow::Result<Outcome> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let meter = CpuMeter::start(cluster.pids(), s.ticks_per_second)?;
    tokio::time::sleep(s.seconds).await;
    let cpu = meter.stop()?;
    Ok(Outcome {
        metrics: vec![("CPU cores", cpu / s.seconds.as_secs_f64())],
        errors: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()).unwrap(), w);
        }
        assert!(Workload::parse("put2").is_err());
    }

    #[test]
    fn keys_are_16_bytes() {
        for n in [0, 1, 99_999, 199_999] {
            assert_eq!(bench_key(n).len(), 16);
            assert_eq!(rss_key(n).len(), 16);
        }
        assert_eq!(restart_key(51_199).len(), 16);
        assert_eq!(bench_key(42), b"bench/0000000042".to_vec());
    }
}
