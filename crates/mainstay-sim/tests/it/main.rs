//! The simulator's own checks: a smoke set of seeds passes, a seed replays to
//! the identical trace, and `MAINSTAY_SEED` replays any seed.

use mainstay_sim::{SafetyBreaks, SimOptions, replay_command, run};

fn assert_passes(seed: u64, options: &SimOptions) -> u64 {
    let result = run(seed, options);
    assert!(
        result.ok(),
        "seed {seed} failed ({} members, {} ops, faults {:?}):\n{}\nreplay: {}",
        result.members,
        result.operations,
        result.faults,
        result.violations.join("\n"),
        replay_command(seed)
    );
    assert!(result.operations > 0, "seed {seed} recorded no operations");
    result.trace_hash
}

/// Seeds that once found a bug (see docs/simulation.md); they must keep passing.
const REGRESSION_SEEDS: [u64; 14] = [
    5, 86, 96, 114, 185, 225, 271, 274, 336, 393, 418, 447, 453, 466,
];

#[test]
fn smoke_seeds_pass() {
    let options = SimOptions::default();
    for seed in [1, 2, 3] {
        assert_passes(seed, &options);
    }
}

#[test]
fn regression_seeds_pass() {
    for seed in REGRESSION_SEEDS {
        assert_passes(seed, &SimOptions::default());
    }
}

/// Whether a deliberate bug is caught within 10 seeds of 8 s: some seed gives
/// a violation that `found` recognises.
fn caught_within_ten_seeds(breaks: SafetyBreaks, found: impl Fn(&str) -> bool) -> bool {
    let options = SimOptions {
        workload_seconds: 8,
        safety_breaks: breaks,
        ..SimOptions::default()
    };
    (1..=10).any(|seed| run(seed, &options).violations.iter().any(|v| found(v)))
}

#[test]
fn self_test_reads_without_a_barrier_are_caught() {
    // Goal: the checks can fail. Serving "linearizable" reads from local state
    // (no read barrier) must produce a violation within a few seeds.
    let breaks = SafetyBreaks {
        skip_read_barrier: true,
        ..SafetyBreaks::default()
    };
    assert!(
        caught_within_ten_seeds(breaks, |_| true),
        "stale reads went unnoticed for 10 seeds"
    );
}

#[test]
fn self_test_early_lease_expiry_is_caught() {
    // Goal: the lease checks can fail. A leader that revokes leases one second
    // before their deadline must be seen by a read or keep-alive in a few seeds.
    let breaks = SafetyBreaks {
        expire_leases_early: true,
        ..SafetyBreaks::default()
    };
    assert!(
        caught_within_ten_seeds(breaks, |_| true),
        "early lease expiry went unnoticed for 10 seeds"
    );
}

#[test]
fn self_test_watch_resumed_one_revision_late_is_caught() {
    // Goal: the watch checks can fail. A member that starts a watch with a start
    // revision one revision late (an off-by-one on resume) loses the event at
    // the start revision; the committed history must show the gap.
    let breaks = SafetyBreaks {
        watch_start_off_by_one: true,
        ..SafetyBreaks::default()
    };
    assert!(
        caught_within_ten_seeds(breaks, |v| v.contains("W4")),
        "watches resumed one revision late went unnoticed for 10 seeds"
    );
}

#[test]
fn self_test_answers_before_local_apply_are_caught() {
    // Goal: the session checks can fail. A member that answers a forwarded write
    // once the leader applied it, before applying it itself, lets the next
    // serializable read on the same connection miss the write.
    let breaks = SafetyBreaks {
        answer_before_local_apply: true,
        ..SafetyBreaks::default()
    };
    assert!(
        caught_within_ten_seeds(breaks, |v| v.starts_with("session:")),
        "answers before the local apply went unnoticed for 10 seeds"
    );
}

#[test]
fn self_test_lock_granted_without_waiting_is_caught() {
    // Goal: the lock checks can fail. A member that answers Lock as soon as
    // the caller's key is queued, while an older key still holds the lock,
    // gives two holders at once; the committed history must show it.
    let breaks = SafetyBreaks {
        lock_skip_wait: true,
        ..SafetyBreaks::default()
    };
    assert!(
        caught_within_ten_seeds(breaks, |v| v.starts_with("lock:")
            && v.contains("two holders")),
        "locks granted without waiting went unnoticed for 10 seeds"
    );
}

/// Runs the `mainstay-sim` binary (a campaign in worker processes) and returns
/// its standard output.
fn campaign(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mainstay-sim"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run mainstay-sim: {e}"));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn self_test_acknowledging_before_fsync_is_caught() {
    // Goal: the checks can fail. Members whose fsync returns before anything is
    // durable lose acknowledged writes on a crash; a few seeds must show it.
    // Run in worker processes: a lying disk can trip an assertion inside
    // openraft, and a panic that cannot unwind through the simulated runtime
    // aborts its process (the campaign fails that seed and goes on).
    let (caught, output) = campaign(&[
        "--seeds",
        "1..11",
        "--jobs",
        "1",
        "--workload-seconds",
        "8",
        "--break-fsync",
        "--expect-violations",
    ]);
    assert!(
        caught,
        "acknowledging before fsync went unnoticed for 10 seeds:\n{output}"
    );
}

#[test]
fn storage_faults_stop_the_member_and_the_cluster_goes_on() {
    // Goal: a flipped bit in a member's files makes it refuse to start (seed 35
    // corrupts one member), and a failing fsync makes a member stop by itself (seed
    // 5): the run judges every such stop, and the rest of the cluster passes.
    let corrupted = run(35, &SimOptions::default());
    assert!(corrupted.ok(), "{}", corrupted.violations.join("\n"));
    assert_eq!(corrupted.faults.get("corruptions"), 1);
    assert!(corrupted.faults.get("corruptions_refused") >= 1);
    let disk_failed = run(5, &SimOptions::default());
    assert!(disk_failed.ok(), "{}", disk_failed.violations.join("\n"));
    assert_eq!(disk_failed.faults.get("disk_failures"), 1);
    assert_eq!(disk_failed.faults.get("disk_failure_stops"), 1);
}

#[test]
fn a_seed_replays_identically() {
    let options = SimOptions {
        workload_seconds: 6,
        ..SimOptions::default()
    };
    let first = assert_passes(42, &options);
    let second = assert_passes(42, &options);
    assert_eq!(first, second, "seed 42 gave two different traces");
    // And in another process (other hash keys, other addresses, no shared state).
    let (ok, output) = campaign(&["--seed", "42", "--workload-seconds", "6"]);
    assert!(ok, "seed 42 failed in its own process:\n{output}");
    let expected = format!("trace={first:016x}");
    assert!(
        output.contains(&expected),
        "seed 42 gave another trace in its own process ({expected} expected):\n{output}"
    );
}

#[test]
fn replay() {
    let seed = std::env::var("MAINSTAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let result = run(seed, &SimOptions::default());
    println!(
        "seed {seed}: {} members, {} operations, faults {:?}, {:?} simulated, trace {:016x}",
        result.members, result.operations, result.faults, result.simulated, result.trace_hash
    );
    assert!(
        result.ok(),
        "{}\nreplay: {}",
        result.violations.join("\n"),
        replay_command(seed)
    );
}

#[test]
fn scale_out_scheme_passes_and_its_broken_variants_are_caught() {
    // Goal: the scale-out simulation (docs/design/scale-out.md §8) passes on
    // the chosen scheme with faults, and each deliberately broken variant is
    // caught by the check it targets.
    use mainstay_sim::scale_out::{Breaks, ScaleOutOptions, run as scale_out};
    let options = ScaleOutOptions {
        groups: 2,
        workload_seconds: 8,
        ..ScaleOutOptions::default()
    };
    let passed = scale_out(1, &options);
    assert!(passed.ok(), "{}", passed.violations.join("\n"));
    assert!(passed.operations > 100, "{passed:?}");
    assert!(passed.reads > 50 && passed.watch_events > 50, "{passed:?}");
    assert!(passed.faults.total() > 0, "{passed:?}");
    let broken = |breaks: Breaks| {
        scale_out(
            1,
            &ScaleOutOptions {
                breaks,
                ..options.clone()
            },
        )
        .violations
        .join("\n")
    };
    let no_oracle = broken(Breaks {
        no_oracle: true,
        ..Breaks::default()
    });
    assert!(
        no_oracle.contains("two acknowledged writes at revision"),
        "{no_oracle}"
    );
    let no_wait = broken(Breaks {
        no_stable_wait: true,
        ..Breaks::default()
    });
    assert!(
        no_wait.contains("missing the acknowledged write"),
        "{no_wait}"
    );
    let merge = broken(Breaks {
        watch_on_stable_only: true,
        ..Breaks::default()
    });
    assert!(merge.contains("emitted revision"), "{merge}");
}
