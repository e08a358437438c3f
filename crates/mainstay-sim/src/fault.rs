//! The fault menu and the seeded schedule. Each fault that starts has a matching
//! end (repair, release, restart) inside the workload window, so the heal phase
//! only has to undo what is still active at the end.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::rng::Rng;

/// One fault action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Cut both directions between two members.
    Partition(String, String),
    /// Cut one direction (from → to).
    PartitionOneWay(String, String),
    /// Restore a link.
    Repair(String, String),
    /// Split the cluster into a minority and a majority that cannot talk.
    Split(Vec<String>, Vec<String>),
    /// Undo a split.
    Unsplit(Vec<String>, Vec<String>),
    /// Cut whoever leads when the fault starts off from everyone.
    IsolateLeader,
    /// End the leader isolation (whoever was isolated).
    RejoinLeader,
    /// Hold messages between two members (delivered later, in a burst).
    Hold(String, String),
    /// Release held messages.
    Release(String, String),
    /// Hold every message to and from a member, then release them in a burst:
    /// the network's view of a stopped process (SIGSTOP). Its timers keep running.
    Pause(String),
    /// Release a paused member's messages.
    Resume(String),
    /// Random message loss on every link of a member (turmoil's transient link
    /// failures: a failed link drops what is in flight until it is repaired).
    Lossy(String),
    /// Stop the message loss.
    Lossless(String),
    /// Kill a member: its runtime and memory are gone, its disk loses unsynced
    /// writes (a suffix of them, the first lost one possibly torn).
    Crash(String),
    /// Crash, and flip one bit of the member's durable raft log. On restart it
    /// must refuse to start; it stays down (replacing it needs membership changes).
    Corrupt(String),
    /// From now on every fsync under the member's data directory fails: the
    /// member must stop by itself. Its restart is on a replaced (healthy) disk.
    DiskFailure(String),
    /// Start a crashed (or disk-failed) member again on its data.
    Restart(String),
    /// Replace a member as the runbook says (remove, stop, wipe, add back with a
    /// new id, start with `existing`): it rejoins by snapshot. A corrupted member
    /// that refused to start is replaced the same way, automatically.
    Replace(String),
}

impl Fault {
    /// The name under which the fault is counted (end actions count nothing).
    fn kind(&self) -> Option<&'static str> {
        Some(match self {
            Fault::Partition(..) => "partitions",
            Fault::PartitionOneWay(..) => "one_way",
            Fault::Split(..) => "splits",
            Fault::IsolateLeader => "leader_isolations",
            Fault::Hold(..) => "holds",
            Fault::Pause(_) => "pauses",
            Fault::Lossy(_) => "lossy",
            Fault::Crash(_) => "crashes",
            Fault::Corrupt(_) => "corruptions",
            Fault::DiskFailure(_) => "disk_failures",
            Fault::Restart(_) => "restarts",
            Fault::Replace(_) => "planned_replacements",
            Fault::Repair(..)
            | Fault::Unsplit(..)
            | Fault::RejoinLeader
            | Fault::Release(..)
            | Fault::Resume(_)
            | Fault::Lossless(_) => return None,
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition(a, b) => write!(f, "partition {a} <-> {b}"),
            Fault::PartitionOneWay(a, b) => write!(f, "partition {a} -> {b}"),
            Fault::Repair(a, b) => write!(f, "repair {a} <-> {b}"),
            Fault::Split(a, b) => write!(f, "split {a:?} | {b:?}"),
            Fault::Unsplit(a, b) => write!(f, "unsplit {a:?} | {b:?}"),
            Fault::IsolateLeader => write!(f, "isolate the leader"),
            Fault::RejoinLeader => write!(f, "rejoin the isolated leader"),
            Fault::Hold(a, b) => write!(f, "hold {a} <-> {b}"),
            Fault::Release(a, b) => write!(f, "release {a} <-> {b}"),
            Fault::Pause(a) => write!(f, "pause {a}"),
            Fault::Resume(a) => write!(f, "resume {a}"),
            Fault::Lossy(a) => write!(f, "lossy links at {a}"),
            Fault::Lossless(a) => write!(f, "lossless links at {a}"),
            Fault::Crash(a) => write!(f, "crash {a}"),
            Fault::Corrupt(a) => write!(f, "crash {a} and flip a bit in its raft log"),
            Fault::DiskFailure(a) => write!(f, "fsync starts failing at {a}"),
            Fault::Restart(a) => write!(f, "restart {a}"),
            Fault::Replace(a) => write!(f, "replace {a} (remove, wipe, add back)"),
        }
    }
}

/// Faults injected, by kind (`partitions`, `crashes`, ...), plus outcomes the
/// run counts (`torn_writes`, `corruptions_refused`, `disk_failure_stops`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts(pub BTreeMap<String, u64>);

impl FaultCounts {
    /// Counts one applied fault.
    pub fn count(&mut self, fault: &Fault) {
        if let Some(kind) = fault.kind() {
            self.bump(kind, 1);
        }
    }

    /// Adds `by` to a named counter.
    pub fn bump(&mut self, name: &str, by: u64) {
        *self.0.entry(name.to_string()).or_default() += by;
    }

    /// Adds another run's counts.
    pub fn add(&mut self, other: &FaultCounts) {
        for (name, count) in &other.0 {
            self.bump(name, *count);
        }
    }

    /// One counter (0 if never counted).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// All faults started (restarts and outcomes are not faults).
    pub fn total(&self) -> u64 {
        self.0
            .iter()
            .filter(|(name, _)| !OUTCOMES.contains(&name.as_str()) && *name != "restarts")
            .map(|(_, count)| count)
            .sum()
    }
}

/// Counters that record what a fault did rather than a fault.
pub const OUTCOMES: [&str; 9] = [
    "torn_writes",
    "corruptions_refused",
    "disk_failure_stops",
    "replacements",
    "removed_stops",
    "aborted",
    "leases",
    "lease_renewals",
    "lease_expiries_seen",
];

impl fmt::Display for FaultCounts {
    /// `name=count` pairs separated by spaces (parsed back by the campaign).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, count) in &self.0 {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={count}")?;
        }
        Ok(())
    }
}

/// A seeded schedule of (time, fault) pairs over the workload window.
///
/// Storage faults that take a member down until it is replaced (`Corrupt`)
/// happen at most once per run, so the damage stays in a minority; `DiskFailure`
/// and planned replacements at most once; a 3-member run never has both a
/// corruption and a planned replacement (two members out of three at once).
pub fn plan_faults(rng: &mut Rng, names: &[String], window: Duration) -> Vec<(Duration, Fault)> {
    let mut plan = Vec::new();
    let window_ms = window.as_millis() as u64;
    let mut at = rng.between(500, 2_000);
    let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
    let mut corrupted = false;
    let mut disk_failed = false;
    let mut replaced = false;
    let small = names.len() < 5;
    while at + 500 < window_ms {
        let length = rng.between(300, 4_000).min(window_ms - at);
        let start = Duration::from_millis(at);
        let end = Duration::from_millis(at + length);
        let mut both = |first: Fault, second: Fault| {
            plan.push((start, first));
            plan.push((end, second));
        };
        match rng.below(14) {
            0 => {
                let (a, b) = (pick(rng), pick(rng));
                if a != b {
                    both(Fault::Partition(a.clone(), b.clone()), Fault::Repair(a, b));
                }
            }
            1 => {
                // A minority (one member, or two of five) against the rest.
                let minority = rng.between(1, ((names.len() - 1) / 2) as u64 + 1) as usize;
                let mut shuffled = names.to_vec();
                for i in (1..shuffled.len()).rev() {
                    shuffled.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let majority = shuffled.split_off(minority);
                both(
                    Fault::Split(shuffled.clone(), majority.clone()),
                    Fault::Unsplit(shuffled, majority),
                );
            }
            2 => {
                let (a, b) = (pick(rng), pick(rng));
                if a != b {
                    both(
                        Fault::PartitionOneWay(a.clone(), b.clone()),
                        Fault::Repair(a, b),
                    );
                }
            }
            3 => {
                let (a, b) = (pick(rng), pick(rng));
                if a != b {
                    both(Fault::Hold(a.clone(), b.clone()), Fault::Release(a, b));
                }
            }
            4 => both(Fault::IsolateLeader, Fault::RejoinLeader),
            5 => {
                let a = pick(rng);
                both(Fault::Pause(a.clone()), Fault::Resume(a));
            }
            6 => {
                let a = pick(rng);
                both(Fault::Lossy(a.clone()), Fault::Lossless(a));
            }
            7 if !(corrupted || replaced && small) && rng.chance(40) => {
                corrupted = true;
                let a = pick(rng);
                both(Fault::Corrupt(a.clone()), Fault::Restart(a));
            }
            // Three members are two while one is replaced: a member lost for good
            // then (a corrupted one) would leave no quorum, in any Raft system.
            9 if !(replaced || corrupted && small) && rng.chance(40) => {
                replaced = true;
                plan.push((start, Fault::Replace(pick(rng))));
            }
            8 if !disk_failed && rng.chance(40) => {
                disk_failed = true;
                let a = pick(rng);
                both(Fault::DiskFailure(a.clone()), Fault::Restart(a));
            }
            _ => {
                let a = pick(rng);
                both(Fault::Crash(a.clone()), Fault::Restart(a));
            }
        }
        at += rng.between(200, 3_000);
    }
    plan.sort_by_key(|(time, _)| *time);
    plan
}
