//! One simulated run: a seed decides the cluster size, the workload, the fault
//! schedule and every timing; the real member code runs on turmoil hosts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_check::Operation;
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::{PutRequest, RangeRequest};
use mainstay_raft::Replica;
use mainstay_server::{ClusterState, Config, Env, Listeners, SafetyBreaks, run_with_listeners};

use crate::fault::{Fault, FaultCounts, plan_faults};
use crate::invariants::Invariants;
use crate::rng::Rng;
use crate::workload::{self, History};

/// Simulated time per step. Coarser than message latency granularity would be
/// wasted precision: heartbeats are 100 ms, elections 1 s.
const TICK_MS: u64 = 5;

/// What a run may vary beyond the seed (tests pin some of these).
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Simulated seconds of workload (and faults).
    pub workload_seconds: u64,
    /// Whether to inject faults.
    pub faults: bool,
    /// Force the cluster size instead of drawing it from the seed.
    pub members: Option<usize>,
    /// Deliberate safety bugs (self-tests: the checks must catch them).
    pub safety_breaks: SafetyBreaks,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            workload_seconds: 12,
            faults: true,
            members: None,
            safety_breaks: SafetyBreaks::default(),
        }
    }
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct SimResult {
    /// The seed.
    pub seed: u64,
    /// Cluster size.
    pub members: usize,
    /// Hash of the whole observable trace (history, faults, final state).
    pub trace_hash: u64,
    /// Client operations recorded.
    pub operations: usize,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Everything that went wrong; empty means the seed passed.
    pub violations: Vec<String>,
    /// Simulated time the run took.
    pub simulated: Duration,
}

impl SimResult {
    /// Whether the seed passed.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The one-line command that replays a seed.
pub fn replay_command(seed: u64) -> String {
    format!("MAINSTAY_SEED={seed} cargo test -p mainstay-sim --test it replay -- --nocapture")
}

fn data_root() -> PathBuf {
    // tmpfs when there is one: fsync there is free, and the simulated members
    // fsync a lot (durability under crashes comes from the simulated disk, not this).
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

fn member_config(
    name: &str,
    names: &[String],
    root: &std::path::Path,
    snapshot_count: u64,
) -> Config {
    let initial_cluster: BTreeMap<String, String> = names
        .iter()
        .map(|n| (n.clone(), format!("http://{n}:2380")))
        .collect();
    Config {
        name: name.to_string(),
        data_dir: root.join(name),
        listen_client: Vec::new(),
        advertise_client_urls: vec![format!("http://{name}:2379")],
        listen_peer: Vec::new(),
        advertise_peer_urls: vec![format!("http://{name}:2380")],
        initial_cluster,
        initial_cluster_state: ClusterState::New,
        initial_cluster_token: "sim".to_string(),
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        request_bytes_max: 1_572_864,
        txn_ops_max: 128,
        quota_backend_bytes: 2 << 30,
        snapshot_count,
        snapshot_catchup_entries: snapshot_count / 4,
    }
}

type Replicas = Arc<Mutex<BTreeMap<String, Replica>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one seed. Never panics on a finding: findings are returned.
pub fn run(seed: u64, options: &SimOptions) -> SimResult {
    let mut rng = Rng::new(seed);
    let size = options
        .members
        .unwrap_or(if rng.chance(70) { 3 } else { 5 });
    let keys = rng.between(2, 5);
    let clients = rng.between(3, 6);
    let snapshot_count = rng.between(30, 200);
    let max_latency_ms = rng.between(1, 15);
    let names: Vec<String> = (0..size).map(|i| format!("m{i}")).collect();
    let dir = tempfile::Builder::new()
        .prefix("mainstay-sim-")
        .tempdir_in(data_root());
    let mut result = SimResult {
        seed,
        members: size,
        trace_hash: 0,
        operations: 0,
        faults: FaultCounts::default(),
        violations: Vec::new(),
        simulated: Duration::ZERO,
    };
    let dir = match dir {
        Ok(dir) => dir,
        Err(error) => {
            result
                .violations
                .push(format!("harness: cannot create a data directory: {error}"));
            return result;
        }
    };

    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(options.workload_seconds + 600))
        .tick_duration(Duration::from_millis(TICK_MS))
        .min_message_latency(Duration::from_millis(0))
        .max_message_latency(Duration::from_millis(max_latency_ms))
        .tcp_capacity(65_536)
        .rng_seed(seed)
        .build();

    let replicas: Replicas = Arc::default();
    let incarnations: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let member_seed = rng.fork();
    let safety_breaks = options.safety_breaks;
    for (position, name) in names.iter().enumerate() {
        let config = member_config(name, &names, dir.path(), snapshot_count);
        let replicas = replicas.clone();
        let incarnations = incarnations.clone();
        let host = name.clone();
        let name = name.clone();
        sim.host(host.as_str(), move || {
            let config = config.clone();
            let replicas = replicas.clone();
            let name = name.clone();
            let incarnation = {
                let mut all = lock(&incarnations);
                let counter = all.entry(name.clone()).or_insert(0);
                *counter += 1;
                *counter
            };
            let seed = Rng::new(member_seed ^ ((position as u64) << 32) ^ incarnation).next_u64();
            async move {
                let client = crate::net::incoming(2379).await?;
                let peer = crate::net::incoming(2380).await?;
                let (observer, observed) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    if let Ok(replica) = observed.await {
                        lock(&replicas).insert(name, replica);
                    }
                });
                let env = Env {
                    dial: crate::net::dial(),
                    seed,
                    safety_breaks,
                };
                let listeners = Listeners {
                    client: vec![client],
                    peer: vec![peer],
                };
                run_with_listeners(
                    config,
                    listeners,
                    env,
                    std::future::pending(),
                    Some(observer),
                )
                .await
                .map_err(|e| format!("{e:#}").into())
            }
        });
    }

    let history: History = Arc::default();
    let stop_micros = options.workload_seconds * 1_000_000;
    for client in 0..clients {
        let client_seed = rng.fork();
        sim.client(
            format!("client{client}").as_str(),
            workload::client(
                client,
                names.clone(),
                keys,
                client_seed,
                stop_micros,
                history.clone(),
            ),
        );
    }

    let mut plan = if options.faults {
        plan_faults(
            &mut rng,
            &names,
            Duration::from_secs(options.workload_seconds),
        )
    } else {
        Vec::new()
    };
    plan.reverse(); // pop from the end = earliest first
    let mut fault_log: Vec<String> = Vec::new();
    let mut crashed: Vec<String> = Vec::new();
    let mut invariants = Invariants::default();
    let mut steps: u64 = 0;

    // Phase 1: workload with faults.
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                result.violations.push(format!("simulation error: {error}"));
                break;
            }
        }
        steps += 1;
        let now = sim.elapsed();
        while plan.last().is_some_and(|(at, _)| *at <= now) {
            let Some((at, fault)) = plan.pop() else { break };
            apply_fault(&mut sim, &fault, &replicas, &mut crashed);
            result.faults.count(&fault);
            fault_log.push(format!("{:>8} ms {fault}", at.as_millis()));
        }
        observe(&replicas, &mut invariants, steps);
    }

    // Phase 2: heal everything, then the cluster must make progress and converge.
    if result.violations.is_empty() {
        for a in &names {
            for b in &names {
                if a != b {
                    sim.repair(a.as_str(), b.as_str());
                    sim.release(a.as_str(), b.as_str());
                }
            }
        }
        for name in crashed.drain(..) {
            sim.bounce(name.as_str());
            fault_log.push(format!("heal: restart {name}"));
        }
        liveness(
            &mut sim,
            &names,
            &replicas,
            &mut invariants,
            &mut result,
            &mut steps,
        );
    }
    result.simulated = sim.elapsed();
    result
        .violations
        .extend(invariants.violations.iter().cloned());

    let history = lock(&history).clone();
    result.operations = history.len();
    let checking = std::time::Instant::now();
    let report = mainstay_check::check(&history);
    if std::env::var_os("MAINSTAY_SIM_PROFILE").is_some() {
        eprintln!(
            "check of {} operations took {:?}",
            history.len(),
            checking.elapsed()
        );
    }
    for violation in &report.violations {
        result.violations.push(violation.to_string());
    }
    result.trace_hash = trace_hash(&history, &fault_log, &replicas);
    drop(sim);
    result
}

fn apply_fault(
    sim: &mut turmoil::Sim<'_>,
    fault: &Fault,
    replicas: &Replicas,
    crashed: &mut Vec<String>,
) {
    match fault {
        Fault::Partition(a, b) => sim.partition(a.as_str(), b.as_str()),
        Fault::PartitionOneWay(a, b) => sim.partition_oneway(a.as_str(), b.as_str()),
        Fault::Repair(a, b) => sim.repair(a.as_str(), b.as_str()),
        Fault::Hold(a, b) => sim.hold(a.as_str(), b.as_str()),
        Fault::Release(a, b) => sim.release(a.as_str(), b.as_str()),
        Fault::Crash(a) => {
            if !crashed.contains(a) {
                // Drop our handle first: the member's storage must close with it.
                lock(replicas).remove(a);
                sim.crash(a.as_str());
                crashed.push(a.clone());
            }
        }
        Fault::Restart(a) => {
            if let Some(position) = crashed.iter().position(|c| c == a) {
                crashed.remove(position);
                sim.bounce(a.as_str());
            }
        }
    }
}

fn observe(replicas: &Replicas, invariants: &mut Invariants, steps: u64) {
    if steps.is_multiple_of(2) {
        let replicas = lock(replicas);
        invariants.check_leaders(replicas.values());
        if steps.is_multiple_of(50) {
            invariants.check_hashes(replicas.values());
        }
    }
}

/// After healing: a fresh write and a linearizable read must succeed, and every
/// member must converge to the same applied index and hash, in bounded time.
fn liveness(
    sim: &mut turmoil::Sim<'_>,
    names: &[String],
    replicas: &Replicas,
    invariants: &mut Invariants,
    result: &mut SimResult,
    steps: &mut u64,
) {
    let done = Arc::new(Mutex::new(false));
    let flag = done.clone();
    let target = names[0].clone();
    sim.client("liveness", async move {
        let mut kv = KvClient::new(crate::net::channel(&format!("http://{target}:2379"))?);
        loop {
            let put = PutRequest {
                key: b"liveness".to_vec(),
                value: b"ok".to_vec(),
                ..Default::default()
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(3), kv.put(put)).await {
                let get = RangeRequest {
                    key: b"liveness".to_vec(),
                    ..Default::default()
                };
                if let Ok(Ok(reply)) =
                    tokio::time::timeout(Duration::from_secs(3), kv.range(get)).await
                    && reply
                        .into_inner()
                        .kvs
                        .first()
                        .is_some_and(|kv| kv.value == b"ok")
                {
                    *lock(&flag) = true;
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let deadline = sim.elapsed() + Duration::from_secs(60);
    while !*lock(&done) {
        if sim.elapsed() > deadline {
            result
                .violations
                .push("liveness: no write + read succeeded within 60 s after healing".into());
            return;
        }
        if let Err(error) = sim.step() {
            result
                .violations
                .push(format!("simulation error while healing: {error}"));
            return;
        }
        *steps += 1;
        observe(replicas, invariants, *steps);
    }
    let deadline = sim.elapsed() + Duration::from_secs(30);
    loop {
        let states: Vec<(u64, i64, u32)> = {
            let replicas = lock(replicas);
            replicas.values().map(|r| r.applied_hash()).collect()
        };
        let converged = states.len() == names.len() && states.windows(2).all(|w| w[0] == w[1]);
        if converged {
            invariants.check_hashes(lock(replicas).values());
            return;
        }
        if sim.elapsed() > deadline {
            let statuses: Vec<String> = lock(replicas)
                .iter()
                .map(|(name, r)| format!("{name}: {:?} {:?}", r.applied_hash(), r.status()))
                .collect();
            result.violations.push(format!(
                "liveness: members did not converge within 30 s:\n  {}",
                statuses.join("\n  ")
            ));
            return;
        }
        for _ in 0..10 {
            if let Err(error) = sim.step() {
                result
                    .violations
                    .push(format!("simulation error while converging: {error}"));
                return;
            }
        }
    }
}

fn trace_hash(history: &[Operation], fault_log: &[String], replicas: &Replicas) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |text: &str| {
        for byte in text.bytes().chain([b'\n']) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for operation in history {
        feed(&operation.to_string());
    }
    for line in fault_log {
        feed(line);
    }
    for (name, replica) in lock(replicas).iter() {
        feed(&format!("{name} {:?}", replica.applied_hash()));
    }
    hash
}
