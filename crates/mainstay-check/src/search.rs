//! The linearizability search: Wing & Gong's algorithm with Lowe's memoisation
//! (as in Porcupine), over one partition of the history.
//!
//! A configuration is (the set of operations already linearized, the model
//! state). An operation may be linearized next when no other pending operation
//! returned before it was invoked. Configurations already explored are skipped,
//! which keeps failing histories cheap. Operations with unknown outcomes return
//! at infinity: they may take effect at any point after their invocation, or
//! (being placed after everything) never.

use std::collections::HashSet;

use crate::history::{Operation, Outcome};
use crate::model::{State, step};

/// Search budget: configurations explored before giving up on a partition.
pub const CONFIGURATIONS_MAX: usize = 5_000_000;

/// How a search ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The budget ran out first.
    Undecided,
}

fn return_time(operation: &Operation) -> u64 {
    match operation.outcome {
        Outcome::Unknown => u64::MAX,
        _ => operation.returned,
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Done(Vec<u64>);

impl Done {
    fn new(size: usize) -> Self {
        Done(vec![0; size.div_ceil(64)])
    }
    fn has(&self, position: usize) -> bool {
        self.0[position / 64] & (1 << (position % 64)) != 0
    }
    fn with(&self, position: usize) -> Self {
        let mut next = self.clone();
        next.0[position / 64] |= 1 << (position % 64);
        next
    }
}

/// Searches for a linearization of `operations` (sorted by invocation) from `initial`.
pub fn search(operations: &[Operation], initial: &State) -> Verdict {
    let total = operations.len();
    let mut visited: HashSet<(Done, State)> = HashSet::new();
    let mut stack = vec![(Done::new(total), initial.clone(), 0usize)];
    visited.insert((Done::new(total), initial.clone()));
    while let Some((done, state, count)) = stack.pop() {
        if count == total {
            return Verdict::Linearizable;
        }
        if visited.len() > CONFIGURATIONS_MAX {
            return Verdict::Undecided;
        }
        let pending_min_return = (0..total)
            .filter(|&p| !done.has(p))
            .map(|p| return_time(&operations[p]))
            .min()
            .unwrap_or(u64::MAX);
        // Depth first, known outcomes before unknown ones: an unknown write can
        // always wait until the end, so valid histories are found fast.
        let mut unknown = Vec::new();
        let mut known = Vec::new();
        for (position, operation) in operations.iter().enumerate() {
            if operation.invoked > pending_min_return {
                break;
            }
            if done.has(position) {
                continue;
            }
            for next in step(&state, &operation.input, &operation.outcome) {
                let next_done = done.with(position);
                if visited.insert((next_done.clone(), next.clone())) {
                    let entry = (next_done, next, count + 1);
                    if operation.outcome == Outcome::Unknown {
                        unknown.push(entry);
                    } else {
                        known.push(entry);
                    }
                }
            }
        }
        // The stack pops the last pushed first.
        stack.extend(unknown);
        stack.extend(known.into_iter().rev());
    }
    Verdict::NotLinearizable
}
