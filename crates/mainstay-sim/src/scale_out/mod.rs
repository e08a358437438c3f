//! Scale-out runs (docs/design/scale-out.md §8): several data groups, each a
//! real three-member Mainstay cluster, behind the revision and routing scheme
//! of the design: a group leader per group that batches puts and takes blocks
//! of global revisions from a sequencer, the sequencer persisting its ceiling
//! in a meta group (another real cluster), and routers in the clients that
//! read at a revision once the stable revision reaches it and merge the
//! groups' watch streams. The linearizability checker, a read-at-revision
//! check and a merged-watch check judge the history merged across groups.
//!
//! Simplifications, stated: the group leader is a process in front of its
//! group (the design puts it in the group's Raft leader; here its fencing is
//! an epoch key compared by every batch's Txn), and there is one sequencer
//! process at a time (restarted after a crash), as a single PD leader.

mod checks;
mod leader;
mod router;
mod scheme;
mod sequencer;
mod wire;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_server::{Env, Listeners, SafetyBreaks, run_with_listeners};
use mainstay_storage::MemDisk;

use crate::fault::FaultCounts;
use crate::rng::Rng;
use crate::simulation::{alone_in_process, data_dir, member_config};
use crate::workload::History;

pub use scheme::Breaks;
use scheme::{CostModel, Layout};

/// What a scale-out run may vary beyond the seed.
#[derive(Clone, Debug)]
pub struct ScaleOutOptions {
    /// Data groups.
    pub groups: u64,
    /// Simulated seconds of workload (and faults).
    pub workload_seconds: u64,
    /// Whether to inject faults.
    pub faults: bool,
    /// Deliberate bugs.
    pub breaks: Breaks,
    /// A throughput run: this many put-only clients per group, no faults,
    /// the cost model on, a fixed 1 ms network.
    pub throughput_clients: Option<u64>,
}

impl Default for ScaleOutOptions {
    fn default() -> Self {
        ScaleOutOptions {
            groups: 3,
            workload_seconds: 10,
            faults: true,
            breaks: Breaks::default(),
            throughput_clients: None,
        }
    }
}

/// What a scale-out run found.
#[derive(Clone, Debug, Default)]
pub struct ScaleOutResult {
    /// Client operations recorded.
    pub operations: usize,
    /// Faults injected, by kind.
    pub faults: FaultCounts,
    /// Everything that went wrong.
    pub violations: Vec<String>,
    /// Acknowledged puts per simulated second of workload.
    pub puts_per_second: f64,
    /// Median and 99th percentile of acknowledged puts, simulated ms.
    pub put_ms: (f64, f64),
    /// Median and 99th percentile of reads at a revision, simulated ms.
    pub read_ms: (f64, f64),
    /// Reads checked against their revision.
    pub reads: usize,
    /// Events the merged watches emitted.
    pub watch_events: usize,
}

impl ScaleOutResult {
    /// Whether the seed passed.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Adds a real member of the cluster `names` on host `name`.
fn add_member(sim: &mut turmoil::Sim<'_>, name: &str, names: &[String], disk: &MemDisk, seed: u64) {
    let config = member_config(name, names, 100, 4096);
    let disk = disk.clone();
    let incarnation = Arc::new(Mutex::new(0u64));
    sim.host(name, move || {
        let config = config.clone();
        let disk = disk.clone();
        let incarnation = {
            let mut n = lock(&incarnation);
            *n += 1;
            *n
        };
        async move {
            let client = crate::net::incoming(2379).await?;
            let peer = crate::net::incoming(2380).await?;
            let env = Env {
                dial: crate::net::dial(),
                disk: Arc::new(disk),
                seed: Rng::new(seed ^ incarnation).next_u64(),
                safety_breaks: SafetyBreaks::default(),
                seeded_tokens: true,
            };
            let listeners = Listeners {
                client: vec![client],
                peer: vec![peer],
                metrics: Vec::new(),
            };
            // A member that stops by itself is judged by the liveness check.
            let _ = run_with_listeners(config, listeners, env, std::future::pending(), None).await;
            Ok(())
        }
    });
}

/// One fault of the schedule: what, when, for how long.
#[derive(Clone, Debug)]
enum Fault {
    /// Kill a member (its disk loses unsynced writes) and start it again.
    CrashMember(String),
    /// Kill a group leader process and start it again.
    CrashLeader(String),
    /// Kill the sequencer and start it again.
    CrashSequencer,
    /// Cut a host off from every other host, then repair.
    Isolate(String),
    /// A host's messages out are lost, what comes in still arrives.
    OneWay(String),
    /// Hold every message to and from a host, then deliver them in a burst
    /// (the network's view of a stopped process: SIGSTOP).
    Pause(String),
}

impl Fault {
    fn kind(&self) -> &'static str {
        match self {
            Fault::CrashMember(_) => "member_crashes",
            Fault::CrashLeader(_) => "leader_crashes",
            Fault::CrashSequencer => "sequencer_crashes",
            Fault::Isolate(_) => "isolations",
            Fault::OneWay(_) => "one_way",
            Fault::Pause(_) => "pauses",
        }
    }
}

/// One fault at a time: start, end, gap.
fn plan(
    rng: &mut Rng,
    layout: &Layout,
    meta: &[String],
    workload: Duration,
) -> Vec<(Duration, Duration, Fault)> {
    let mut at = Duration::from_millis(rng.between(500, 1500));
    let mut out = Vec::new();
    let groups = layout.groups();
    while at + Duration::from_secs(2) < workload {
        let host = |rng: &mut Rng| {
            // A member of a data or the meta group, a group leader or the sequencer.
            match rng.below(4) {
                0 => layout.leader(rng.below(groups)),
                1 => "seq".to_string(),
                2 => meta[rng.below(meta.len() as u64) as usize].clone(),
                _ => {
                    let members = &layout.members[rng.below(groups) as usize];
                    members[rng.below(members.len() as u64) as usize].clone()
                }
            }
        };
        let fault = match rng.below(9) {
            7 => Fault::OneWay(host(rng)),
            8 => Fault::Pause(host(rng)),
            0 | 1 => {
                let g = rng.below(groups) as usize;
                let members = &layout.members[g];
                Fault::CrashMember(members[rng.below(members.len() as u64) as usize].clone())
            }
            2 => Fault::CrashMember(meta[rng.below(meta.len() as u64) as usize].clone()),
            3 => Fault::CrashLeader(layout.leader(rng.below(groups))),
            4 => Fault::CrashSequencer,
            5 => Fault::Isolate(layout.leader(rng.below(groups))),
            _ => {
                let g = rng.below(groups) as usize;
                let members = &layout.members[g];
                Fault::Isolate(members[rng.below(members.len() as u64) as usize].clone())
            }
        };
        let length = Duration::from_millis(rng.between(300, 2500));
        out.push((at, length, fault));
        at += length + Duration::from_millis(rng.between(200, 1200));
    }
    out
}

fn percentiles(mut micros: Vec<u64>) -> (f64, f64) {
    if micros.is_empty() {
        return (0.0, 0.0);
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

/// Runs one seed of the scale-out scheme.
pub fn run(seed: u64, options: &ScaleOutOptions) -> ScaleOutResult {
    let _alone = alone_in_process();
    let mut rng = Rng::new(seed);
    let throughput = options.throughput_clients;
    let groups = options.groups.max(1);
    let workload = Duration::from_secs(options.workload_seconds);
    let (min_latency, max_latency, tick) = if throughput.is_some() {
        (1, 1, 1)
    } else {
        (0, rng.between(1, 10), 5)
    };
    let mut sim = turmoil::Builder::new()
        .simulation_duration(workload + Duration::from_secs(300))
        .tick_duration(Duration::from_millis(tick))
        .min_message_latency(Duration::from_millis(min_latency))
        .max_message_latency(Duration::from_millis(max_latency))
        .tcp_capacity(65_536)
        .rng_seed(seed)
        .build();
    let disk = MemDisk::new();
    let member_seed = rng.fork();
    let meta: Vec<String> = (0..3).map(|i| format!("meta{i}")).collect();
    let layout = Arc::new(Layout {
        members: (0..groups)
            .map(|g| (0..3).map(|i| format!("g{g}m{i}")).collect())
            .collect(),
        // Few keys for the safety runs (the checkers look for conflicts);
        // many in throughput runs, so batches are not cut at repeated keys.
        keys: if throughput.is_some() {
            groups * 512
        } else {
            (groups * 4).max(8)
        },
    });
    let mut hosts: Vec<String> = meta.clone();
    for (n, name) in meta.iter().enumerate() {
        add_member(&mut sim, name, &meta, &disk, member_seed ^ (n as u64) << 40);
    }
    for (g, names) in layout.members.iter().enumerate() {
        for (n, name) in names.iter().enumerate() {
            add_member(
                &mut sim,
                name,
                names,
                &disk,
                member_seed ^ ((g as u64) << 32) ^ ((n as u64) << 40),
            );
            hosts.push(name.clone());
        }
    }
    let breaks = options.breaks;
    {
        let meta = meta.clone();
        sim.host("seq", move || sequencer::host(meta.clone(), groups));
        hosts.push("seq".to_string());
    }
    let cost = if throughput.is_some() {
        CostModel::MEASURED
    } else {
        CostModel::default()
    };
    for g in 0..groups {
        let members = layout.members[g as usize].clone();
        let name = layout.leader(g);
        sim.host(name.as_str(), move || {
            leader::host(leader::LeaderSetup {
                group: g,
                members: members.clone(),
                cost,
                breaks,
            })
        });
        hosts.push(name);
    }
    let history: History = Arc::default();
    let logs: router::SharedLogs = Arc::default();
    let stop_micros = workload.as_micros() as u64;
    let (put_clients, mixed_clients) = match throughput {
        Some(per_group) => (per_group * groups, 2),
        None => (0, rng.between(4, 8)),
    };
    // Put-only clients run as tasks of one host per group: turmoil's work per
    // step grows with the square of its hosts.
    let mut client_hosts = Vec::new();
    let mut loaders: Vec<Vec<router::ClientSetup>> = (0..groups).map(|_| Vec::new()).collect();
    for client in 0..put_clients + mixed_clients {
        let setup = router::ClientSetup {
            id: client,
            layout: layout.clone(),
            seed: rng.fork(),
            stop_micros,
            history: history.clone(),
            logs: logs.clone(),
            breaks,
            puts_only: client < put_clients,
            whole_reads: throughput.is_none(),
        };
        if setup.puts_only {
            loaders[(client % groups) as usize].push(setup);
        } else {
            let name = format!("client{client}");
            sim.client(name.as_str(), router::client(setup));
            client_hosts.push(name);
        }
    }
    for (g, setups) in loaders.into_iter().enumerate() {
        if !setups.is_empty() {
            let name = format!("load{g}");
            sim.client(name.as_str(), router::clients(setups));
            client_hosts.push(name);
        }
    }
    if throughput.is_none() {
        for watcher in 0..2 {
            sim.client(
                format!("watcher{watcher}").as_str(),
                router::watcher(
                    layout.clone(),
                    rng.fork(),
                    stop_micros,
                    logs.clone(),
                    breaks,
                ),
            );
        }
    }
    // After the workload and the faults: every group takes a put, and the
    // stable revision catches up with the newest one handed out.
    let live = Arc::new(Mutex::new(None::<Result<(), String>>));
    {
        let live = live.clone();
        let layout = layout.clone();
        sim.client("prober", router::prober(layout, stop_micros, breaks, live));
    }

    let mut result = ScaleOutResult::default();
    let faults = if options.faults && throughput.is_none() {
        plan(&mut rng, &layout, &meta, workload)
    } else {
        Vec::new()
    };
    let step = |sim: &mut turmoil::Sim<'_>, until: Duration| -> Result<(), String> {
        while sim.elapsed() < until {
            sim.step().map_err(|e| format!("simulation error: {e}"))?;
        }
        Ok(())
    };
    let mut outcome = Ok(());
    for (at, length, fault) in &faults {
        outcome = step(&mut sim, *at);
        if outcome.is_err() {
            break;
        }
        result.faults.bump(fault.kind(), 1);
        match fault {
            Fault::CrashMember(name) => {
                disk.power_off(&data_dir(name));
                sim.crash(name.as_str());
                let report = disk.crash(&data_dir(name), &mut |n| rng.below(n));
                if report.torn {
                    result.faults.bump("torn_writes", 1);
                }
            }
            Fault::CrashLeader(name) => sim.crash(name.as_str()),
            Fault::CrashSequencer => sim.crash("seq"),
            Fault::Isolate(name) => {
                for other in hosts.iter().chain(&client_hosts).filter(|h| *h != name) {
                    sim.partition(name.as_str(), other.as_str());
                }
            }
            Fault::OneWay(name) => {
                for other in hosts.iter().chain(&client_hosts).filter(|h| *h != name) {
                    sim.partition_oneway(name.as_str(), other.as_str());
                }
            }
            Fault::Pause(name) => {
                for other in hosts.iter().chain(&client_hosts).filter(|h| *h != name) {
                    sim.hold(name.as_str(), other.as_str());
                }
            }
        }
        outcome = step(&mut sim, *at + *length);
        if outcome.is_err() {
            break;
        }
        match fault {
            Fault::CrashMember(name) | Fault::CrashLeader(name) => sim.bounce(name.as_str()),
            Fault::CrashSequencer => sim.bounce("seq"),
            Fault::Isolate(name) => {
                for other in hosts.iter().chain(&client_hosts).filter(|h| *h != name) {
                    sim.repair(name.as_str(), other.as_str());
                }
            }
            Fault::OneWay(name) => {
                for other in hosts.iter().chain(&client_hosts).filter(|h| *h != name) {
                    sim.repair_oneway(name.as_str(), other.as_str());
                }
            }
            Fault::Pause(name) => {
                for other in hosts.iter().chain(&client_hosts).filter(|h| *h != name) {
                    sim.release(name.as_str(), other.as_str());
                }
            }
        }
    }
    if outcome.is_ok() {
        outcome = step(&mut sim, workload);
    }
    // The prober has a minute after the workload.
    if outcome.is_ok() {
        let deadline = workload + Duration::from_secs(90);
        while lock(&live).is_none() && sim.elapsed() < deadline && outcome.is_ok() {
            outcome = sim
                .step()
                .map(|_| ())
                .map_err(|e| format!("simulation error: {e}"));
        }
        match lock(&live).take() {
            Some(Ok(())) => {}
            Some(Err(why)) => result.violations.push(format!("liveness: {why}")),
            None => result
                .violations
                .push("liveness: the prober did not finish within 90 s".to_string()),
        }
    }
    if let Err(why) = outcome {
        result.violations.push(why);
    }

    let history = lock(&history).clone();
    result.operations = history.len();
    if std::env::var_os("MAINSTAY_SIM_FAULTS").is_some() {
        // The fault schedule and the acknowledged operations per second.
        for (at, length, fault) in &faults {
            eprintln!(
                "{:>6} ms +{:>5} ms {fault:?}",
                at.as_millis(),
                length.as_millis()
            );
        }
        let mut per_second = vec![0u64; options.workload_seconds as usize + 1];
        for op in &history {
            if matches!(op.outcome, mainstay_check::Outcome::Ok(_))
                && let Some(slot) = per_second.get_mut((op.returned / 1_000_000) as usize)
            {
                *slot += 1;
            }
        }
        eprintln!("acknowledged per second: {per_second:?}");
    }
    let report = mainstay_check::check(&history);
    for violation in &report.violations {
        result.violations.push(violation.to_string());
    }
    let reads = lock(&logs.reads).clone();
    result.reads = reads.len();
    result
        .violations
        .extend(checks::check_reads(&history, &reads));
    let watches = lock(&logs.watches).clone();
    result.watch_events = watches.iter().map(|w| w.events.len()).sum();
    result
        .violations
        .extend(checks::check_watches(&history, &watches));
    let acknowledged = history
        .iter()
        .filter(|op| {
            op.returned >= router::WARM_UP_MICROS
                && matches!(
                    op.outcome,
                    mainstay_check::Outcome::Ok(mainstay_check::Output::Put { .. })
                )
        })
        .count();
    result.puts_per_second = acknowledged as f64 / (workload.as_secs_f64() - 1.0).max(1.0);
    result.put_ms = percentiles(lock(&logs.put_micros).clone());
    result.read_ms = percentiles(lock(&logs.read_micros).clone());
    result
}
