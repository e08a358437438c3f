//! The linearizability search: Wing & Gong's algorithm with Lowe's memoisation
//! (as in Porcupine), over one partition of the history.
//!
//! A configuration is (the set of operations already linearized, the model
//! state). An operation may be linearized next when no other pending operation
//! returned before it was invoked. Configurations already explored are skipped,
//! which keeps failing histories cheap. Operations with unknown outcomes return
//! at infinity: they may take effect at any point after their invocation, or
//! (being placed after everything) never.

use std::collections::HashMap;

use crate::history::{Operation, Outcome};
use crate::model::{State, step};

/// Search budget: configurations explored before giving up on a partition.
pub const CONFIGURATIONS_MAX: usize = 1_000_000;

/// Budget of the fast pass used to shrink a failure to a short window.
pub const WINDOW_CONFIGURATIONS_MAX: usize = 20_000;

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
    fn subset_of(&self, other: &Done) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & !b == 0)
    }
    fn with(&self, position: usize) -> Self {
        let mut next = self.clone();
        next.0[position / 64] |= 1 << (position % 64);
        next
    }
}

/// Records a configuration unless an explored one dominates it (same known
/// operations and state, a subset of the unknown ones linearized).
fn admit(
    visited: &mut HashMap<(Done, State), Vec<Done>>,
    known_done: &Done,
    unknown_done: &Done,
    state: &State,
) -> bool {
    let seen = visited
        .entry((known_done.clone(), state.clone()))
        .or_default();
    if seen.iter().any(|earlier| earlier.subset_of(unknown_done)) {
        return false;
    }
    seen.push(unknown_done.clone());
    true
}

/// Searches for a linearization of `operations` (sorted by invocation) from `initial`.
///
/// Operations with unknown outcomes need never be linearized, which gives a
/// dominance rule on top of the memo: a configuration with the same linearized
/// known operations and the same state as one already explored, but with a
/// superset of the unknown operations linearized, can do nothing the explored one
/// could not, so it is skipped. The search succeeds once every known operation is
/// linearized.
///
/// Each of the two passes explores at most `budget` configurations
/// ([`CONFIGURATIONS_MAX`] for a history nothing else has failed).
pub fn search_within(operations: &[Operation], initial: &State, budget: usize) -> Verdict {
    // Fast pass: unknown operations only ever placed directly before a known one
    // (state after a run of puts and deletes is that of the last one, so one is
    // enough there). Any linearization it finds is real; only when it finds none
    // does the exhaustive pass decide.
    match search_with(operations, initial, true, budget) {
        Verdict::Linearizable => Verdict::Linearizable,
        _ => search_with(operations, initial, false, budget),
    }
}

/// The fast pass alone with a small budget: whether a prefix already fails
/// (used only to pick the window a failure report shows).
pub fn fast_pass_fails(operations: &[Operation], initial: &State) -> bool {
    search_with(operations, initial, true, WINDOW_CONFIGURATIONS_MAX) == Verdict::NotLinearizable
}

fn search_with(
    operations: &[Operation],
    initial: &State,
    pairs_only: bool,
    budget: usize,
) -> Verdict {
    let total = operations.len();
    let is_unknown: Vec<bool> = operations
        .iter()
        .map(|o| o.outcome == Outcome::Unknown)
        .collect();
    let known_total = is_unknown.iter().filter(|u| !**u).count();
    let unknown_positions: Vec<usize> = (0..total).filter(|&p| is_unknown[p]).collect();
    let first_known = |done: &Done, from: usize| {
        (from..total)
            .find(|&p| !is_unknown[p] && !done.has(p))
            .unwrap_or(total)
    };
    let mut visited: HashMap<(Done, State), Vec<Done>> = HashMap::new();
    let mut explored = 0usize;
    let start = first_known(&Done::new(total), 0);
    let mut stack = vec![(
        Done::new(total),
        Done::new(total),
        initial.clone(),
        0usize,
        start,
    )];
    while let Some((known_done, unknown_done, state, known_count, first)) = stack.pop() {
        if known_count == known_total {
            return Verdict::Linearizable;
        }
        explored += 1;
        if explored > budget {
            return Verdict::Undecided;
        }
        // Known operations from the first pending one: sorted by invocation, so
        // the scan stops at the first one invoked after the earliest pending return.
        let mut pending_min_return = u64::MAX;
        for position in first..total {
            let operation = &operations[position];
            if operation.invoked > pending_min_return {
                break;
            }
            if !is_unknown[position] && !known_done.has(position) {
                pending_min_return = pending_min_return.min(return_time(operation));
            }
        }
        let candidates = (first..total)
            .take_while(|&p| operations[p].invoked <= pending_min_return)
            .filter(|&p| !is_unknown[p] && !known_done.has(p))
            .chain(
                unknown_positions
                    .iter()
                    .copied()
                    .take_while(|&p| operations[p].invoked <= pending_min_return)
                    .filter(|&p| !unknown_done.has(p)),
            );
        // Depth first, known outcomes before unknown ones: an unknown write can
        // always wait, so valid histories are found fast.
        let mut unknown = Vec::new();
        let mut known = Vec::new();
        let candidates: Vec<usize> = candidates.collect();
        if pairs_only {
            // Each pending unknown operation, immediately followed by a known one.
            let known_candidates: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&p| !is_unknown[p])
                .collect();
            for &u in candidates.iter().filter(|&&p| is_unknown[p]) {
                for after_unknown in step(&state, &operations[u].input, &operations[u].outcome) {
                    for &k in &known_candidates {
                        for next in
                            step(&after_unknown, &operations[k].input, &operations[k].outcome)
                        {
                            let next_known = known_done.with(k);
                            let next_first = if k == first {
                                first_known(&next_known, first)
                            } else {
                                first
                            };
                            let entry = (
                                next_known,
                                unknown_done.with(u),
                                next,
                                known_count + 1,
                                next_first,
                            );
                            if admit(&mut visited, &entry.0, &entry.1, &entry.2) {
                                unknown.push(entry);
                            }
                        }
                    }
                }
            }
        }
        for position in candidates {
            if pairs_only && is_unknown[position] {
                continue;
            }
            let operation = &operations[position];
            for next in step(&state, &operation.input, &operation.outcome) {
                let entry = if is_unknown[position] {
                    (
                        known_done.clone(),
                        unknown_done.with(position),
                        next,
                        known_count,
                        first,
                    )
                } else {
                    let next_known = known_done.with(position);
                    let next_first = if position == first {
                        first_known(&next_known, first)
                    } else {
                        first
                    };
                    (
                        next_known,
                        unknown_done.clone(),
                        next,
                        known_count + 1,
                        next_first,
                    )
                };
                if !admit(&mut visited, &entry.0, &entry.1, &entry.2) {
                    continue;
                }
                if is_unknown[position] {
                    unknown.push(entry);
                } else {
                    known.push(entry);
                }
            }
        }
        // The stack pops the last pushed first.
        stack.extend(unknown);
        stack.extend(known.into_iter().rev());
    }
    Verdict::NotLinearizable
}
