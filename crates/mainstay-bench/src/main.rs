//! `mainstay-bench`: runs a real 3-member Mainstay cluster and a real 3-member
//! etcd cluster side by side on loopback, the same workloads against each (a
//! fresh cluster in a fresh data directory per workload), and prints per metric
//! etcd's median, Mainstay's median, the median of the per-rep Mainstay÷etcd
//! ratios and their spread (min–max over reps). Reps alternate which system
//! goes first. See docs/performance.md.
//!
//! `mainstay-bench --mainstay PATH [--etcd /usr/bin/etcd] [--reps 2]
//! [--seconds 10] [--only put1,put64,...] [--systems mainstay,etcd]
//! [--work DIR] [--json FILE] [--quick]`

mod cluster;
mod driver;
mod procfs;
mod report;
mod stats;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;

use crate::cluster::{Cluster, Ports, System};
use crate::driver::Rng;
use crate::report::{JsonReport, Machine, Metric, RunResult};
use crate::workload::{Settings, Workload};

/// Mainstay vs etcd on loopback: same workloads, Mainstay÷etcd ratios.
#[derive(Debug, Parser)]
#[command(name = "mainstay-bench")]
struct Args {
    /// The built mainstay binary (e.g. target/release/mainstay).
    #[arg(long)]
    mainstay: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Repetitions (default 2; 1 with --quick).
    #[arg(long)]
    reps: Option<u32>,
    /// Measured seconds per workload (default 10; 2 with --quick), after a 1 s warm-up.
    #[arg(long)]
    seconds: Option<u64>,
    /// Only these workloads (comma-separated): put1, put64, put256, get-lin64,
    /// get-ser64, txn16, watch, watch1k, watch1k-streams, rss, restart,
    /// idle.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Systems to run (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "mainstay,etcd")]
    systems: Vec<String>,
    /// Directory for data and logs (default: a new directory under /tmp,
    /// removed after a successful run).
    #[arg(long)]
    work: Option<PathBuf>,
    /// Write every raw per-rep number to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Smoke run: 2 s workloads, 20k keys for rss, 20 MB for restart, 1 rep.
    #[arg(long)]
    quick: bool,
    /// Bytes per value written and read by the put, get, txn and watch
    /// workloads (8 to 1 MiB; `rss` and `restart` keep their own sizes).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(8..=1 << 20))]
    value_bytes: u32,
}

/// How long a fresh cluster may take to serve.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The member that leads when a workload starts, in both systems: member 1,
/// so the one client of `put1` (member 0) goes through a follower, as two
/// clients in three do in a spread load, and the `watch` workload's writer
/// (member 1) writes at the leader while its watcher (member 0) follows.
const LEADER: usize = 1;

struct Plan {
    reps: u32,
    systems: Vec<System>,
    workloads: Vec<Workload>,
    binaries: [(System, PathBuf); 2],
    settings: Settings,
}

impl Plan {
    fn binary(&self, system: System) -> &Path {
        self.binaries
            .iter()
            .find(|(s, _)| *s == system)
            .map_or(Path::new(""), |(_, p)| p.as_path())
    }

    /// Systems in the order they run in `rep`: etcd first in even reps.
    fn order(&self, rep: u32) -> Vec<System> {
        let first = if rep.is_multiple_of(2) {
            [System::Etcd, System::Mainstay]
        } else {
            [System::Mainstay, System::Etcd]
        };
        first
            .into_iter()
            .filter(|s| self.systems.contains(s))
            .collect()
    }
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let systems = args
        .systems
        .iter()
        .map(|s| System::parse(s.trim()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if systems.is_empty() {
        bail!("--systems: name at least one of mainstay, etcd");
    }
    let workloads = if args.only.is_empty() {
        Workload::ALL.to_vec()
    } else {
        let chosen = args
            .only
            .iter()
            .map(|w| Workload::parse(w.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        // Always in the documented order.
        Workload::ALL
            .into_iter()
            .filter(|w| chosen.contains(w))
            .collect()
    };
    for (system, path) in [
        (System::Mainstay, &args.mainstay),
        (System::Etcd, &args.etcd),
    ] {
        if systems.contains(&system) && !path.is_file() {
            bail!("--{system}: no binary at {}", path.display());
        }
    }
    let seconds = args.seconds.unwrap_or(if args.quick { 2 } else { 10 });
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(seed);
    Ok(Plan {
        reps: args.reps.unwrap_or(if args.quick { 1 } else { 2 }).max(1),
        systems,
        workloads,
        binaries: [
            (System::Mainstay, args.mainstay.clone()),
            (System::Etcd, args.etcd.clone()),
        ],
        settings: Settings {
            warmup: Duration::from_secs(1),
            seconds: Duration::from_secs(seconds),
            rss_keys: if args.quick { 20_000 } else { 200_000 },
            restart_bytes: if args.quick { 20 } else { 200 } * 1024 * 1024,
            ticks_per_second: procfs::clock_ticks_per_second(),
            value: Arc::new(rng.bytes(args.value_bytes as usize)),
            big_value: Arc::new(rng.bytes(4096)),
            seed: rng.next_u64(),
        },
    })
}

/// Runs every rep, system and workload; each workload on a fresh cluster whose
/// data is deleted afterwards (logs stay in `work`).
async fn run_all(plan: &Plan, work: &Path) -> anyhow::Result<Vec<RunResult>> {
    let mut ports = Ports::new();
    let mut results = Vec::new();
    for rep in 0..plan.reps {
        for system in plan.order(rep) {
            for &workload in &plan.workloads {
                let dir = work.join(format!("r{rep}-{system}-{}", workload.name()));
                eprintln!("rep {rep}: {system} {} ...", workload.name());
                let mut cluster = Cluster::start(system, plan.binary(system), &dir, &mut ports)?;
                cluster.wait_ready(READY_TIMEOUT).await?;
                cluster.place_leader(LEADER, READY_TIMEOUT).await?;
                let outcome = workload::run(workload, &mut cluster, &plan.settings)
                    .await
                    .with_context(|| {
                        format!(
                            "rep {rep}, {system}, {}\n{}",
                            workload.name(),
                            cluster.log_tails(10)
                        )
                    })?;
                cluster.discard()?;
                let line: Vec<String> = outcome
                    .metrics
                    .iter()
                    .map(|(name, value)| format!("{name} {}", report::format_value(Some(*value))))
                    .collect();
                eprintln!("    {}", line.join(", "));
                if outcome.errors > 0 {
                    eprintln!("    {} failed requests", outcome.errors);
                }
                results.push(RunResult {
                    rep,
                    system: system.name(),
                    workload: workload.name(),
                    metrics: outcome
                        .metrics
                        .into_iter()
                        .map(|(name, value)| Metric { name, value })
                        .collect(),
                    errors: outcome.errors,
                });
            }
        }
    }
    Ok(results)
}

fn print_report(
    plan: &Plan,
    results: &[RunResult],
    machine: &Machine,
    command: &str,
    versions: &[(String, String)],
) {
    println!("{}", machine.line());
    println!("Command: {command}");
    for (system, version) in versions {
        println!("{system}: {version}");
    }
    println!(
        "Reps: {}, {} s per workload after 1 s warm-up; ratio = Mainstay ÷ etcd per rep \
         (median; spread = min–max over reps).",
        plan.reps,
        plan.settings.seconds.as_secs()
    );
    println!();
    print!("{}", report::table(&report::rows(results, plan.reps)));
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.errors > 0)
        .map(|r| format!("rep {} {} {}: {}", r.rep, r.system, r.workload, r.errors))
        .collect();
    if !failed.is_empty() {
        println!();
        println!("Failed or retried requests: {}", failed.join("; "));
    }
}

fn versions(plan: &Plan) -> Vec<(String, String)> {
    plan.systems
        .iter()
        .map(|&system| {
            let version =
                report::command_line_output(&plan.binary(system).to_string_lossy(), &["--version"])
                    .unwrap_or_else(|| "unknown version".to_string());
            (
                format!("{system} ({})", plan.binary(system).display()),
                version,
            )
        })
        .collect()
}

async fn main_inner() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = plan(&args)?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let machine = Machine::read();
    let versions = versions(&plan);
    let (work, temporary) = match &args.work {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("mainstay-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
    eprintln!("data and member logs under {}", work.display());

    let results = tokio::select! {
        results = run_all(&plan, &work) => results
            .with_context(|| format!("member logs are under {}", work.display()))?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; member logs are under {}", work.display()),
    };

    print_report(&plan, &results, &machine, &command, &versions);
    if let Some(path) = &args.json {
        let json = JsonReport {
            machine: &machine,
            command: &command,
            versions: &versions,
            runs: &results,
        };
        let text = serde_json::to_string_pretty(&json).context("encode JSON")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    if temporary {
        std::fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mainstay-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_inner()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mainstay-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
