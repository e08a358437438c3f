//! `mainstay-sim`: run many seeds, in parallel processes, and summarise.
//!
//! ```text
//! mainstay-sim --seeds 1..500 --jobs 2        # a campaign
//! mainstay-sim --seed 5                       # one seed, with its trace hash
//! ```
//! Exits non-zero if any seed fails; each failure prints its replay command.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use mainstay_sim::scale_out::{self, ScaleOutOptions};
use mainstay_sim::{FaultCounts, SimOptions, replay_command, run_guarded};

struct Args {
    /// Self-test mode: succeed only if some seed finds a violation.
    expect_violations: bool,
    seeds: Vec<u64>,
    jobs: usize,
    worker: bool,
    options: SimOptions,
    /// `--groups N`: the scale-out scheme instead of one cluster.
    scale_out: Option<ScaleOutOptions>,
}

fn parse_range(text: &str) -> Result<Vec<u64>, String> {
    if let Some((low, high)) = text.split_once("..") {
        let low: u64 = low.parse().map_err(|_| format!("bad seed range {text}"))?;
        let high: u64 = high.parse().map_err(|_| format!("bad seed range {text}"))?;
        return Ok((low..high).collect());
    }
    text.split(',')
        .map(|s| s.trim().parse().map_err(|_| format!("bad seed {s}")))
        .collect()
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        expect_violations: false,
        seeds: vec![1],
        jobs: 1,
        worker: false,
        options: SimOptions::default(),
        scale_out: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let mut value = || given.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seed" | "--seeds" => args.seeds = parse_range(&value()?)?,
            "--jobs" => args.jobs = value()?.parse().map_err(|_| "bad --jobs".to_string())?,
            "--workload-seconds" => {
                args.options.workload_seconds = value()?
                    .parse()
                    .map_err(|_| "bad --workload-seconds".to_string())?
            }
            "--no-faults" => args.options.faults = false,
            "--break-read-barrier" => args.options.safety_breaks.skip_read_barrier = true,
            "--break-lease-expiry" => args.options.safety_breaks.expire_leases_early = true,
            "--break-watch-resume" => args.options.safety_breaks.watch_start_off_by_one = true,
            "--break-session" => args.options.safety_breaks.answer_before_local_apply = true,
            "--break-lock" => args.options.safety_breaks.lock_skip_wait = true,
            "--break-fsync" => args.options.lying_fsync = true,
            "--break-log-fsync" => args.options.safety_breaks.skip_log_fsync = true,
            "--break-catch-up" => args.options.safety_breaks.serve_before_catch_up = true,
            // Unlike the other --break flags, a run with this one passes:
            // the divergence must end in a CORRUPT alarm naming m1.
            "--break-diverge" => {
                args.options.diverge = true;
                args.options.faults = false;
            }
            "--auth" => args.options.auth = true,
            "--break-auth" => {
                args.options.auth = true;
                args.options.safety_breaks.skip_read_permission = true;
            }
            "--groups" => {
                let groups: u64 = value()?.parse().map_err(|_| "bad --groups".to_string())?;
                if !(1..=16).contains(&groups) {
                    return Err("--groups must be 1 to 16".to_string());
                }
                args.scale_out
                    .get_or_insert_with(ScaleOutOptions::default)
                    .groups = groups;
            }
            "--throughput" => {
                let clients: u64 = value()?
                    .parse()
                    .map_err(|_| "bad --throughput".to_string())?;
                args.scale_out
                    .get_or_insert_with(ScaleOutOptions::default)
                    .throughput_clients = Some(clients.max(1));
            }
            "--break-oracle" => {
                args.scale_out
                    .get_or_insert_with(ScaleOutOptions::default)
                    .breaks
                    .no_oracle = true
            }
            "--break-stable-wait" => {
                args.scale_out
                    .get_or_insert_with(ScaleOutOptions::default)
                    .breaks
                    .no_stable_wait = true
            }
            "--break-watch-merge" => {
                args.scale_out
                    .get_or_insert_with(ScaleOutOptions::default)
                    .breaks
                    .watch_on_stable_only = true
            }
            "--expect-violations" => args.expect_violations = true,
            "--worker" => args.worker = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if let Some(scale_out) = args.scale_out.as_mut() {
        scale_out.workload_seconds = args.options.workload_seconds;
        scale_out.faults = args.options.faults;
    }
    Ok(args)
}

/// The command that replays one seed of a scale-out run.
fn scale_out_replay(seed: u64, options: &ScaleOutOptions) -> String {
    let mut command = format!(
        "cargo run -p mainstay-sim -- --seed {seed} --workload-seconds {}",
        options.workload_seconds
    );
    if !options.faults {
        command.push_str(" --no-faults");
    }
    for arg in scale_out_args(options) {
        command.push(' ');
        command.push_str(&arg);
    }
    command
}

/// The flags that give a worker (or a replay) the same scale-out options
/// (seeds, workload length and faults are passed as for every run).
fn scale_out_args(options: &ScaleOutOptions) -> Vec<String> {
    let mut args = vec!["--groups".to_string(), options.groups.to_string()];
    for (on, flag) in [
        (options.breaks.no_oracle, "--break-oracle"),
        (options.breaks.no_stable_wait, "--break-stable-wait"),
        (options.breaks.watch_on_stable_only, "--break-watch-merge"),
    ] {
        if on {
            args.push(flag.to_string());
        }
    }
    if let Some(clients) = options.throughput_clients {
        args.push("--throughput".to_string());
        args.push(clients.to_string());
    }
    args
}

/// One scale-out seed; a panic is a finding of the seed.
fn run_scale_out(seed: u64, options: &ScaleOutOptions) -> bool {
    let result =
        std::panic::catch_unwind(|| scale_out::run(seed, options)).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            scale_out::ScaleOutResult {
                violations: vec![format!("panic: {message}")],
                ..Default::default()
            }
        });
    println!(
        "seed {seed} {} members={} ops={} reads={} events={} {}",
        if result.ok() { "ok" } else { "FAIL" },
        options.groups * 3 + 3,
        result.operations,
        result.reads,
        result.watch_events,
        result.faults,
    );
    if options.throughput_clients.is_some() {
        println!(
            "  groups={} puts/s={:.0} put p50/p99 ms={:.1}/{:.1} read p50/p99 ms={:.1}/{:.1}",
            options.groups,
            result.puts_per_second,
            result.put_ms.0,
            result.put_ms.1,
            result.read_ms.0,
            result.read_ms.1
        );
    }
    if !result.ok() {
        for violation in &result.violations {
            for line in violation.lines() {
                println!("  {line}");
            }
        }
        println!("  replay: {}", scale_out_replay(seed, options));
    }
    result.ok()
}

/// One line per seed, parsed back by the parent: `seed ok|FAIL ops faults...`.
fn run_seeds(args: &Args) -> bool {
    let mut all_ok = true;
    for &seed in &args.seeds {
        if let Some(scale_out) = &args.scale_out {
            all_ok &= run_scale_out(seed, scale_out);
            continue;
        }
        let result = run_guarded(seed, &args.options);
        println!(
            "seed {seed} {} members={} ops={} {} trace={:016x}",
            if result.ok() { "ok" } else { "FAIL" },
            result.members,
            result.operations,
            result.faults,
            result.trace_hash
        );
        if !result.ok() {
            all_ok = false;
            for violation in &result.violations {
                for line in violation.lines() {
                    println!("  {line}");
                }
            }
            println!("  replay: {}", replay_command(seed));
        }
    }
    all_ok
}

/// Runs `seeds` in worker processes, one after another, and returns every line
/// they printed. A worker that dies (a panic that could not unwind through the
/// simulated runtime aborts the process) fails only the seed it was running: a
/// `seed N FAIL` line is made up for it and a new worker takes the rest.
///
/// In a self-test (`--expect-violations`) the first violation found by any job
/// ends the campaign: `caught` is raised and every job stops its worker at its
/// next line, so a bug caught by the first seed costs one seed, not all of them.
fn run_job(
    exe: &std::path::Path,
    args: &Args,
    mut seeds: Vec<u64>,
    caught: &AtomicBool,
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    while !seeds.is_empty() {
        if caught.load(Ordering::Relaxed) {
            return Ok(lines);
        }
        let list: Vec<String> = seeds.iter().map(u64::to_string).collect();
        let mut command = Command::new(exe);
        command
            .arg("--worker")
            .arg("--seeds")
            .arg(list.join(","))
            .arg("--workload-seconds")
            .arg(args.options.workload_seconds.to_string());
        if !args.options.faults {
            command.arg("--no-faults");
        }
        if args.options.safety_breaks.skip_read_barrier {
            command.arg("--break-read-barrier");
        }
        if args.options.safety_breaks.expire_leases_early {
            command.arg("--break-lease-expiry");
        }
        if args.options.safety_breaks.watch_start_off_by_one {
            command.arg("--break-watch-resume");
        }
        if args.options.safety_breaks.answer_before_local_apply {
            command.arg("--break-session");
        }
        if args.options.safety_breaks.lock_skip_wait {
            command.arg("--break-lock");
        }
        if args.options.lying_fsync {
            command.arg("--break-fsync");
        }
        if args.options.safety_breaks.skip_log_fsync {
            command.arg("--break-log-fsync");
        }
        if args.options.safety_breaks.serve_before_catch_up {
            command.arg("--break-catch-up");
        }
        if args.options.diverge {
            command.arg("--break-diverge");
        }
        if args.options.auth {
            command.arg("--auth");
        }
        if args.options.safety_breaks.skip_read_permission {
            command.arg("--break-auth");
        }
        if let Some(scale_out) = &args.scale_out {
            command.args(scale_out_args(scale_out));
        }
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn worker: {e}"))?;
        let mut finished = 0usize;
        let mut stop = false;
        let mut failing = false;
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("seed ") {
                    finished += 1;
                    failing = line.split_whitespace().nth(2) != Some("ok");
                    if args.expect_violations && failing {
                        caught.store(true, Ordering::Relaxed);
                    }
                }
                // A failing seed's details end with its replay line: a
                // self-test stops after them (what caught the bug shows), or
                // at the next line once another job caught it.
                let last_detail = line.starts_with("  replay:");
                lines.push(line);
                if args.expect_violations
                    && caught.load(Ordering::Relaxed)
                    && (!failing || last_detail)
                {
                    stop = true;
                    break;
                }
            }
        }
        if stop {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(lines);
        }
        let status = child.wait().map_err(|e| format!("wait for worker: {e}"))?;
        seeds.drain(..finished.min(seeds.len()));
        if let Some(&seed) = seeds.first() {
            lines.push(format!("seed {seed} FAIL members=0 ops=0 aborted=1"));
            lines.push(format!(
                "  the worker died ({status}) while running seed {seed}\n  replay: {}",
                replay_command(seed)
            ));
            seeds.remove(0);
        } else if !status.success() && !lines.iter().any(|l| l.contains(" FAIL ")) {
            lines.push(format!(
                "  a worker exited with {status} after all its seeds passed"
            ));
            lines.push("seed 0 FAIL members=0 ops=0 aborted=1".to_string());
        }
    }
    Ok(lines)
}

fn campaign(args: &Args) -> Result<bool, String> {
    let started = Instant::now();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let jobs = args.jobs.max(1);
    let caught = AtomicBool::new(false);
    let outputs: Vec<Result<Vec<String>, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs)
            .map(|job| {
                let seeds: Vec<u64> = args.seeds.iter().skip(job).step_by(jobs).copied().collect();
                let exe = exe.as_path();
                let caught = &caught;
                scope.spawn(move || run_job(exe, args, seeds, caught))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a job thread panicked".to_string()))
            })
            .collect()
    });
    let mut passed = 0u64;
    let mut failed = 0u64;
    let mut operations = 0u64;
    let mut faults = FaultCounts::default();
    for output in outputs {
        let lines = output?;
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() == Some(&"seed") && fields.len() > 2 {
                if fields[2] == "ok" {
                    passed += 1;
                } else {
                    failed += 1;
                }
                for field in &fields[3..] {
                    if let Some((name, value)) = field.split_once('=')
                        && let Ok(value) = value.parse::<u64>()
                    {
                        match name {
                            "ops" => operations += value,
                            "members" | "trace" | "reads" | "events" => {}
                            _ => faults.bump(name, value),
                        }
                    }
                }
            }
            if fields.get(2) != Some(&"ok") {
                println!("{line}");
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "simulation: {} seeds in {seconds:.1} s ({:.2} seeds/s, {} jobs), {operations} client operations, {} faults ({faults}), {failed} seeds with violations",
        passed + failed,
        (passed + failed) as f64 / seconds.max(0.001),
        args.jobs,
        faults.total(),
    );
    if args.expect_violations {
        // A self-test: the deliberate bug must be caught by at least one seed;
        // the campaign stopped at the first one that caught it.
        if failed > 0 {
            println!(
                "self-test: the deliberate bug was caught after {} of {} seeds",
                passed + failed,
                args.seeds.len()
            );
        } else {
            println!(
                "self-test FAILED: no seed of {} caught the deliberate bug",
                args.seeds.len()
            );
        }
        return Ok(failed > 0);
    }
    println!("simulation: {passed} passed, {failed} failed");
    Ok(failed == 0 && passed as usize == args.seeds.len())
}

fn main() {
    // `MAINSTAY_LOG=info,openraft=debug mainstay-sim --seed N` shows the members' logs.
    if let Ok(filter) = std::env::var("MAINSTAY_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let args = match parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("mainstay-sim: {error}");
            std::process::exit(2);
        }
    };
    let ok = if args.worker || args.jobs <= 1 && args.seeds.len() == 1 {
        run_seeds(&args)
    } else {
        match campaign(&args) {
            Ok(ok) => ok,
            Err(error) => {
                eprintln!("mainstay-sim: {error}");
                false
            }
        }
    };
    std::process::exit(if ok { 0 } else { 1 });
}
