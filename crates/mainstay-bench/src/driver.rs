//! The load generator: gRPC channels spread over the members, closed-loop
//! clients timed over a measured window after a warm-up, server CPU sampled at
//! the window's edges, and bulk loading.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mainstay_proto::etcdserverpb::PutRequest;
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::procfs;
use crate::stats::Latencies;

/// Deadline of one benchmark request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Clients sharing one channel (one HTTP/2 connection).
pub const CLIENTS_PER_CHANNEL: usize = 8;

/// A lazily connected channel to `url`.
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())
        .with_context(|| format!("endpoint {url}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// One channel per 8 clients (at least one), spread round-robin over the
/// members' client URLs, member 0 first.
pub fn channels(urls: &[String], clients: usize) -> anyhow::Result<Vec<Channel>> {
    let count = clients.div_ceil(CLIENTS_PER_CHANNEL).max(1);
    (0..count).map(|i| channel(&urls[i % urls.len()])).collect()
}

/// The channel client number `client` uses.
pub fn channel_of(channels: &[Channel], client: usize) -> Channel {
    channels[(client / CLIENTS_PER_CHANNEL) % channels.len()].clone()
}

/// A small deterministic generator (SplitMix64) for key choices and values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0; the modulo bias is negligible here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// One closed-loop client: issues its next request when the previous one is
/// answered.
pub trait Client: Send + 'static {
    /// One request.
    fn call(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The phases of a run: warm-up from `start`, then the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Start of the measured window (after the warm-up).
    pub from: Instant,
    /// End of the measured window; clients stop issuing here.
    pub to: Instant,
}

impl Window {
    /// A window starting after `warmup` from now, lasting `length`.
    pub fn after(warmup: Duration, length: Duration) -> Self {
        let from = Instant::now() + warmup;
        Window {
            from,
            to: from + length,
        }
    }

    /// Length in seconds.
    pub fn seconds(&self) -> f64 {
        (self.to - self.from).as_secs_f64()
    }

    /// Whether something that completed at `at` counts.
    pub fn contains(&self, at: Instant) -> bool {
        at >= self.from && at <= self.to
    }
}

/// What a closed-loop run measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Requests answered successfully within the window.
    pub ops: u64,
    /// Requests that failed (or timed out) within the window.
    pub errors: u64,
    /// Latencies of the successful requests within the window.
    pub latencies: Latencies,
    /// Server CPU seconds (all members) over the window.
    pub cpu_seconds: f64,
    /// Window length in seconds.
    pub seconds: f64,
}

impl Measured {
    /// Successful requests per second.
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    /// Server CPU milliseconds per successful request.
    pub fn cpu_ms_per_op(&self) -> f64 {
        if self.ops == 0 {
            return f64::NAN;
        }
        self.cpu_seconds * 1000.0 / self.ops as f64
    }
}

/// Server CPU seconds of `pids`, sampled at the window's edges.
pub struct CpuMeter {
    pids: Vec<u32>,
    ticks_per_second: u64,
    start: u64,
}

impl CpuMeter {
    /// Samples now.
    pub fn start(pids: Vec<u32>, ticks_per_second: u64) -> anyhow::Result<Self> {
        let start = procfs::cpu_ticks_sum(&pids)?;
        Ok(CpuMeter {
            pids,
            ticks_per_second,
            start,
        })
    }

    /// CPU seconds since `start`.
    pub fn stop(&self) -> anyhow::Result<f64> {
        let end = procfs::cpu_ticks_sum(&self.pids)?;
        Ok(end.saturating_sub(self.start) as f64 / self.ticks_per_second as f64)
    }
}

/// Runs `clients` closed-loop until the end of `window` (the time before it is
/// the warm-up), sampling the CPU of `pids` at the window's edges.
pub async fn closed_loop<C: Client>(
    clients: Vec<C>,
    window: Window,
    pids: Vec<u32>,
    ticks_per_second: u64,
) -> anyhow::Result<Measured> {
    let mut tasks = JoinSet::new();
    for client in clients {
        tasks.spawn(run_client(client, window));
    }
    tokio::time::sleep_until(window.from.into()).await;
    let meter = CpuMeter::start(pids, ticks_per_second)?;
    tokio::time::sleep_until(window.to.into()).await;
    let cpu_seconds = meter.stop()?;
    let mut measured = Measured {
        cpu_seconds,
        seconds: window.seconds(),
        ..Measured::default()
    };
    while let Some(joined) = tasks.join_next().await {
        let (ops, errors, latencies) = joined.context("client task")?;
        measured.ops += ops;
        measured.errors += errors;
        measured.latencies.merge(latencies);
    }
    Ok(measured)
}

async fn run_client<C: Client>(mut client: C, window: Window) -> (u64, u64, Latencies) {
    let (mut ops, mut errors, mut latencies) = (0, 0, Latencies::default());
    loop {
        let sent = Instant::now();
        if sent >= window.to {
            break;
        }
        let result = tokio::time::timeout(REQUEST_TIMEOUT, client.call()).await;
        let done = Instant::now();
        let counted = window.contains(done);
        match result {
            Ok(Ok(())) => {
                if counted {
                    ops += 1;
                    let micros = (done - sent).as_micros().min(u128::from(u32::MAX)) as u32;
                    latencies.record(micros);
                }
            }
            Ok(Err(_)) | Err(_) => {
                if counted {
                    errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (ops, errors, latencies)
}

/// Puts `count` keys (`key(n)` for n in 0..count) with `clients` concurrent
/// clients as fast as they are answered, retrying refused puts. Returns the
/// time it took and the number of retried failures.
pub async fn load(
    urls: &[String],
    clients: usize,
    count: u64,
    key: fn(u64) -> Vec<u8>,
    value: Arc<Vec<u8>>,
) -> anyhow::Result<(Duration, u64)> {
    let channels = channels(urls, clients)?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..clients {
        let mut kv = KvClient::new(channel_of(&channels, c));
        let next = next.clone();
        let value = value.clone();
        tasks.spawn(async move {
            let mut retries = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<u64, anyhow::Error>(retries);
                }
                let mut attempt = 0;
                loop {
                    let put = PutRequest {
                        key: key(n),
                        value: value.to_vec().into(),
                        ..Default::default()
                    };
                    let error = match tokio::time::timeout(REQUEST_TIMEOUT, kv.put(put)).await {
                        Ok(Ok(_)) => break,
                        Ok(Err(status)) => status.to_string(),
                        Err(_) => "timed out".to_string(),
                    };
                    attempt += 1;
                    retries += 1;
                    if attempt >= 50 {
                        bail!("load: put {n} failed {attempt} times, last: {error}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }
    let mut retries = 0;
    while let Some(joined) = tasks.join_next().await {
        retries += joined.context("load task")??;
    }
    Ok((started.elapsed(), retries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let xs: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 10));
        // Every bucket is hit in 100 draws from 10.
        assert!((0..10).all(|v| xs.contains(&v)));
        assert_eq!(Rng::new(1).bytes(13).len(), 13);
        assert_ne!(Rng::new(1).bytes(16), Rng::new(2).bytes(16));
    }

    #[test]
    fn channels_per_clients() {
        let urls: Vec<String> = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        for (clients, want) in [(1, 1), (8, 1), (9, 2), (64, 8), (256, 32), (0, 1)] {
            assert_eq!(channels(&urls, clients).unwrap().len(), want, "{clients}");
        }
    }

    #[test]
    fn window_counts_completions_inside() {
        let w = Window::after(Duration::from_secs(1), Duration::from_secs(2));
        assert!(!w.contains(Instant::now()));
        assert!(w.contains(w.from));
        assert!(w.contains(w.to));
        assert!(!w.contains(w.to + Duration::from_millis(1)));
        assert_eq!(w.seconds(), 2.0);
    }
}
