//! The sequential etcd KV model the search replays operations against.
//!
//! State per key: absent, or a value with its mod revision. A write whose
//! outcome is unknown leaves the mod revision unknown but bounded below; a later
//! read that sees the key pins it.

use std::collections::BTreeMap;

use crate::history::{Input, Key, Outcome, Output};

/// What the model knows of a key's mod revision.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModRevision {
    /// Exactly this revision.
    Known(i64),
    /// Written by a request of unknown outcome: greater than this revision.
    Above(i64),
}

impl ModRevision {
    fn floor(&self) -> i64 {
        match self {
            ModRevision::Known(r) => *r,
            ModRevision::Above(r) => *r + 1,
        }
    }

    fn matches(&self, observed: i64) -> bool {
        match self {
            ModRevision::Known(r) => *r == observed,
            ModRevision::Above(r) => observed > *r,
        }
    }
}

/// One key's state.
pub type KeyState = Option<(Vec<u8>, ModRevision)>;

/// The state of the keys of one partition.
pub type State = BTreeMap<Key, KeyState>;

fn get(state: &State, key: &Key) -> KeyState {
    state.get(key).cloned().flatten()
}

/// The lowest revision a new write to `key` may have.
fn write_floor(state: &State, key: &Key) -> i64 {
    get(state, key).map_or(0, |(_, m)| m.floor())
}

/// Applies `input` with its observed `outcome` to `state`: every state it may
/// lead to (none when the outcome is impossible in that state).
pub fn step(state: &State, input: &Input, outcome: &Outcome) -> Vec<State> {
    let output = match outcome {
        Outcome::Ok(output) => Some(output),
        Outcome::Unknown => None,
        Outcome::Failed => return vec![state.clone()],
    };
    let mut next = state.clone();
    match (input, output) {
        (Input::Put { key, value }, None) => {
            let floor = write_floor(state, key);
            next.insert(
                key.clone(),
                Some((value.clone(), ModRevision::Above(floor))),
            );
        }
        (Input::Put { key, value }, Some(Output::Put { revision })) => {
            if *revision <= write_floor(state, key) {
                return Vec::new();
            }
            next.insert(
                key.clone(),
                Some((value.clone(), ModRevision::Known(*revision))),
            );
        }
        (Input::Get { key }, Some(Output::Get { value, .. })) => match (get(state, key), value) {
            (None, None) => {}
            (Some((have, modrev)), Some((seen, seen_mod))) => {
                if have != *seen || !modrev.matches(*seen_mod) {
                    return Vec::new();
                }
                next.insert(key.clone(), Some((have, ModRevision::Known(*seen_mod))));
            }
            _ => return Vec::new(),
        },
        // A read of unknown outcome tells nothing.
        (Input::Get { .. }, None) => {}
        (Input::Delete { key }, None) => {
            next.insert(key.clone(), None);
        }
        (Input::Delete { key }, Some(Output::Delete { deleted, revision })) => {
            if *deleted != get(state, key).is_some() {
                return Vec::new();
            }
            if *deleted && *revision <= write_floor(state, key) {
                return Vec::new();
            }
            next.insert(key.clone(), None);
        }
        (Input::Txn { guards, puts }, output) => return step_txn(state, guards, puts, output),
        _ => return Vec::new(),
    }
    vec![next]
}

fn step_txn(
    state: &State,
    guards: &[(Key, i64)],
    puts: &[(Key, Vec<u8>)],
    output: Option<&Output>,
) -> Vec<State> {
    // With an unknown mod revision a guard may hold or fail.
    let can_hold = guards.iter().all(|(key, expected)| match get(state, key) {
        None => *expected == 0,
        Some((_, modrev)) => *expected != 0 && modrev.matches(*expected),
    });
    let can_fail = guards.iter().any(|(key, expected)| match get(state, key) {
        None => *expected != 0,
        Some((_, ModRevision::Known(r))) => r != *expected,
        Some((_, ModRevision::Above(_))) => true,
    });
    let success = |revision: Option<i64>| -> Option<State> {
        let mut next = state.clone();
        for (key, expected) in guards {
            if let Some((value, ModRevision::Above(_))) = get(state, key) {
                next.insert(key.clone(), Some((value, ModRevision::Known(*expected))));
            }
        }
        for (key, value) in puts {
            let floor = write_floor(state, key);
            let modrev = match revision {
                Some(r) if r <= floor => return None,
                Some(r) => ModRevision::Known(r),
                None => ModRevision::Above(floor),
            };
            next.insert(key.clone(), Some((value.clone(), modrev)));
        }
        Some(next)
    };
    match output {
        Some(Output::Txn {
            succeeded: true,
            revision,
        }) if can_hold => success(Some(*revision)).into_iter().collect(),
        Some(Output::Txn {
            succeeded: false, ..
        }) if can_fail => vec![state.clone()],
        Some(_) => Vec::new(),
        None => {
            let mut outcomes = Vec::new();
            if can_fail {
                outcomes.push(state.clone());
            }
            if can_hold {
                outcomes.extend(success(None));
            }
            outcomes
        }
    }
}
