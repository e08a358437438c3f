//! PURE. The checks the scale-out runs add to the linearizability checker,
//! over the history merged across groups:
//!
//! - a read served at revision `R` shows each key as of `R`: the value of the
//!   acknowledged write with the highest revision ≤ R, and nothing written
//!   after R (etcd's meaning of a response's header revision, which a read
//!   that did not wait for the stable revision breaks);
//! - a merged watch emits strictly increasing revisions from its start, each
//!   one a write that was made, and misses no acknowledged write below the
//!   last revision it emitted.

use std::collections::{BTreeMap, BTreeSet};

use mainstay_check::{Input, Key, Operation, Outcome, Output};

/// What a read found for a key: its value and revision, or None (absent).
pub(crate) type Found = Option<(Vec<u8>, i64)>;

/// A read and the revision it was served at.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotRead {
    pub(crate) client: u64,
    pub(crate) revision: i64,
    /// Each key read: its value and revision, or None (absent at `revision`).
    pub(crate) keys: Vec<(Key, Found)>,
}

/// What one merged watch emitted.
#[derive(Clone, Debug)]
pub(crate) struct WatchLog {
    pub(crate) from: i64,
    pub(crate) events: Vec<(i64, Key, Vec<u8>)>,
}

/// The writes of a history: acknowledged ones with their revisions, and
/// the (key, value) pairs of writes of unknown outcome.
struct Writes {
    acknowledged: BTreeMap<Key, BTreeMap<i64, Vec<u8>>>,
    unknown: BTreeSet<(Key, Vec<u8>)>,
}

impl Writes {
    fn of(history: &[Operation]) -> Writes {
        let mut acknowledged: BTreeMap<Key, BTreeMap<i64, Vec<u8>>> = BTreeMap::new();
        let mut unknown = BTreeSet::new();
        for operation in history {
            if let Input::Put { key, value } = &operation.input {
                match &operation.outcome {
                    Outcome::Ok(Output::Put { revision }) => {
                        acknowledged
                            .entry(key.clone())
                            .or_default()
                            .insert(*revision, value.clone());
                    }
                    Outcome::Unknown => {
                        unknown.insert((key.clone(), value.clone()));
                    }
                    _ => {}
                }
            }
        }
        Writes {
            acknowledged,
            unknown,
        }
    }

    /// Whether `(key, value)` at `revision` is a write that was made.
    fn made(&self, key: &Key, value: &[u8], revision: i64) -> bool {
        match self.acknowledged.get(key).and_then(|w| w.get(&revision)) {
            Some(written) => written == value,
            None => self.unknown.contains(&(key.clone(), value.to_vec())),
        }
    }

    /// The acknowledged writes to `key` with a revision in `(above, upto]`.
    fn between(&self, key: &Key, above: i64, upto: i64) -> Vec<i64> {
        if above >= upto {
            return Vec::new();
        }
        self.acknowledged
            .get(key)
            .map(|w| w.range(above + 1..=upto).map(|(r, _)| *r).collect())
            .unwrap_or_default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads that do not show their keys as of their revision.
pub(crate) fn check_reads(history: &[Operation], reads: &[SnapshotRead]) -> Vec<String> {
    let writes = Writes::of(history);
    let mut violations = Vec::new();
    for read in reads {
        for (key, seen) in &read.keys {
            let (floor, shown) = match seen {
                Some((value, revision)) => {
                    if *revision > read.revision {
                        violations.push(format!(
                            "client {} read {} at revision {} and saw a write at {revision}",
                            read.client,
                            text(key),
                            read.revision
                        ));
                        continue;
                    }
                    if !writes.made(key, value, *revision) {
                        violations.push(format!(
                            "client {} read {}={} at revision {revision}: no such write",
                            read.client,
                            text(key),
                            text(value)
                        ));
                        continue;
                    }
                    (*revision, format!("{} (revision {revision})", text(value)))
                }
                None => (0, "nothing".to_string()),
            };
            let missed = writes.between(key, floor, read.revision);
            if let Some(first) = missed.first() {
                violations.push(format!(
                    "client {} read {} at revision {} and saw {shown}, missing the \
                     acknowledged write at revision {first}",
                    read.client,
                    text(key),
                    read.revision
                ));
            }
        }
    }
    violations
}

/// Merged watches that went out of order, made up an event or skipped one.
pub(crate) fn check_watches(history: &[Operation], watches: &[WatchLog]) -> Vec<String> {
    let writes = Writes::of(history);
    let mut violations = Vec::new();
    for (n, watch) in watches.iter().enumerate() {
        let mut previous = watch.from - 1;
        let mut emitted = BTreeSet::new();
        for (revision, key, value) in &watch.events {
            if *revision <= previous {
                violations.push(format!(
                    "watch {n} (from {}) emitted revision {revision} after {previous}",
                    watch.from
                ));
            }
            previous = previous.max(*revision);
            if !writes.made(key, value, *revision) {
                violations.push(format!(
                    "watch {n} emitted {}={} at revision {revision}: no such write",
                    text(key),
                    text(value)
                ));
            }
            emitted.insert(*revision);
        }
        let last = previous;
        for (key, written) in &writes.acknowledged {
            for revision in written.range(watch.from..=last).map(|(r, _)| *r) {
                if !emitted.contains(&revision) {
                    violations.push(format!(
                        "watch {n} (from {}) emitted up to {last} but not the \
                         acknowledged write of {} at revision {revision}",
                        watch.from,
                        text(key)
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str, outcome: Outcome) -> Operation {
        Operation {
            client: 0,
            input: Input::Put {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            },
            invoked: 0,
            returned: 1,
            outcome,
        }
    }

    fn ok(revision: i64) -> Outcome {
        Outcome::Ok(Output::Put { revision })
    }

    fn read(revision: i64, keys: &[(&str, Option<(&str, i64)>)]) -> SnapshotRead {
        SnapshotRead {
            client: 7,
            revision,
            keys: keys
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_bytes().to_vec(),
                        v.map(|(value, r)| (value.as_bytes().to_vec(), r)),
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn a_read_shows_each_key_as_of_its_revision() {
        let history = vec![
            put("a", "1", ok(3)),
            put("a", "2", ok(8)),
            put("b", "x", ok(5)),
            put("b", "y", Outcome::Unknown),
        ];
        let table: Vec<(SnapshotRead, usize, &str)> = vec![
            (read(4, &[("a", Some(("1", 3))), ("b", None)]), 0, "as of 4"),
            (
                read(9, &[("a", Some(("2", 8))), ("b", Some(("x", 5)))]),
                0,
                "latest",
            ),
            (read(2, &[("a", None)]), 0, "before the first write"),
            // A write of unknown outcome may have landed at any revision.
            (read(9, &[("b", Some(("y", 9)))]), 0, "unknown write seen"),
            (
                read(8, &[("a", Some(("1", 3)))]),
                1,
                "missed the write at 8",
            ),
            (read(5, &[("b", None)]), 1, "missed b at 5"),
            (read(7, &[("a", Some(("2", 8)))]), 1, "saw a write after R"),
            (read(9, &[("a", Some(("3", 9)))]), 1, "made-up value"),
        ];
        for (r, want, what) in table {
            let got = check_reads(&history, &[r]);
            assert_eq!(got.len(), want, "{what}: {got:?}");
        }
    }

    #[test]
    fn a_merged_watch_is_ordered_complete_and_real() {
        let history = vec![
            put("a", "1", ok(3)),
            put("b", "x", ok(4)),
            put("a", "2", ok(6)),
            put("b", "y", Outcome::Unknown),
        ];
        let event = |r: i64, k: &str, v: &str| (r, k.as_bytes().to_vec(), v.as_bytes().to_vec());
        let table = vec![
            (
                WatchLog {
                    from: 3,
                    events: vec![event(3, "a", "1"), event(4, "b", "x"), event(6, "a", "2")],
                },
                0,
                "everything in order",
            ),
            (
                WatchLog {
                    from: 4,
                    events: vec![event(4, "b", "x"), event(5, "b", "y")],
                },
                0,
                "an unknown write seen; 6 not reached yet",
            ),
            (
                WatchLog {
                    from: 3,
                    events: vec![event(4, "b", "x"), event(3, "a", "1")],
                },
                1,
                "out of order",
            ),
            (
                WatchLog {
                    from: 3,
                    events: vec![event(3, "a", "1"), event(6, "a", "2")],
                },
                1,
                "skipped 4",
            ),
            (
                WatchLog {
                    from: 3,
                    events: vec![event(3, "a", "9")],
                },
                1,
                "made-up value",
            ),
        ];
        for (watch, want, what) in table {
            let got = check_watches(&history, &[watch]);
            assert_eq!(got.len(), want, "{what}: {got:?}");
        }
    }
}
