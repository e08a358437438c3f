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
const REGRESSION_SEEDS: [u64; 4] = [5, 271, 336, 393];

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

#[test]
fn self_test_reads_without_a_barrier_are_caught() {
    // Goal: the checks can fail. Serving "linearizable" reads from local state
    // (no read barrier) must produce a violation within a few seeds.
    let options = SimOptions {
        workload_seconds: 8,
        safety_breaks: SafetyBreaks {
            skip_read_barrier: true,
        },
        ..SimOptions::default()
    };
    let caught = (1..=10).find(|&seed| !run(seed, &options).ok());
    assert!(caught.is_some(), "stale reads went unnoticed for 10 seeds");
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
