//! The fault menu and the seeded schedule. Each fault that starts has a matching
//! end (repair, release, restart) inside the workload window, so the heal phase
//! only has to undo what is still active at the end.

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
    /// Hold messages between two members (delivered later, in a burst).
    Hold(String, String),
    /// Release held messages.
    Release(String, String),
    /// Kill a member: its runtime and in-memory state are gone.
    Crash(String),
    /// Start a crashed member again on its data.
    Restart(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition(a, b) => write!(f, "partition {a} <-> {b}"),
            Fault::PartitionOneWay(a, b) => write!(f, "partition {a} -> {b}"),
            Fault::Repair(a, b) => write!(f, "repair {a} <-> {b}"),
            Fault::Hold(a, b) => write!(f, "hold {a} <-> {b}"),
            Fault::Release(a, b) => write!(f, "release {a} <-> {b}"),
            Fault::Crash(a) => write!(f, "crash {a}"),
            Fault::Restart(a) => write!(f, "restart {a}"),
        }
    }
}

/// Faults injected in one run, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Symmetric partitions (including isolations, counted per link).
    pub partitions: u64,
    /// One-way partitions.
    pub one_way: u64,
    /// Held links.
    pub holds: u64,
    /// Crashes.
    pub crashes: u64,
    /// Restarts.
    pub restarts: u64,
}

impl FaultCounts {
    /// Counts one applied fault.
    pub fn count(&mut self, fault: &Fault) {
        match fault {
            Fault::Partition(..) => self.partitions += 1,
            Fault::PartitionOneWay(..) => self.one_way += 1,
            Fault::Hold(..) => self.holds += 1,
            Fault::Crash(_) => self.crashes += 1,
            Fault::Restart(_) => self.restarts += 1,
            Fault::Repair(..) | Fault::Release(..) => {}
        }
    }

    /// Adds another run's counts.
    pub fn add(&mut self, other: &FaultCounts) {
        self.partitions += other.partitions;
        self.one_way += other.one_way;
        self.holds += other.holds;
        self.crashes += other.crashes;
        self.restarts += other.restarts;
    }

    /// All faults started.
    pub fn total(&self) -> u64 {
        self.partitions + self.one_way + self.holds + self.crashes
    }
}

/// A seeded schedule of (time, fault) pairs over the workload window.
pub fn plan_faults(rng: &mut Rng, names: &[String], window: Duration) -> Vec<(Duration, Fault)> {
    let mut plan = Vec::new();
    let window_ms = window.as_millis() as u64;
    let mut at = rng.between(500, 2_000);
    let pick = |rng: &mut Rng| names[rng.below(names.len() as u64) as usize].clone();
    while at + 500 < window_ms {
        let length = rng.between(300, 4_000).min(window_ms - at);
        let start = Duration::from_millis(at);
        let end = Duration::from_millis(at + length);
        match rng.below(6) {
            0 => {
                let (a, b) = (pick(rng), pick(rng));
                if a != b {
                    plan.push((start, Fault::Partition(a.clone(), b.clone())));
                    plan.push((end, Fault::Repair(a, b)));
                }
            }
            1 => {
                // Isolate one member (often the leader) from everyone.
                let a = pick(rng);
                for b in names.iter().filter(|b| **b != a) {
                    plan.push((start, Fault::Partition(a.clone(), b.clone())));
                    plan.push((end, Fault::Repair(a.clone(), b.clone())));
                }
            }
            2 => {
                let (a, b) = (pick(rng), pick(rng));
                if a != b {
                    plan.push((start, Fault::PartitionOneWay(a.clone(), b.clone())));
                    plan.push((end, Fault::Repair(a, b)));
                }
            }
            3 => {
                let (a, b) = (pick(rng), pick(rng));
                if a != b {
                    plan.push((start, Fault::Hold(a.clone(), b.clone())));
                    plan.push((end, Fault::Release(a, b)));
                }
            }
            _ => {
                let a = pick(rng);
                plan.push((start, Fault::Crash(a.clone())));
                plan.push((end, Fault::Restart(a)));
            }
        }
        at += rng.between(200, 3_000);
    }
    plan.sort_by_key(|(time, _)| *time);
    plan
}
