//! The watchers of one watch stream indexed by key range, so an applied
//! event finds the watchers whose range holds its key without visiting (or
//! copying the event for) every watcher of the stream.
//!
//! Ranges follow etcd's `range_end` rules (`mainstay_mvcc::in_range`): an
//! empty end is one key, `"\0"` every key from the start on, anything else
//! `[key, range_end)`. Each kind has its own structure:
//! - one key: an ordered map from the key to its watchers;
//! - from a key on: starts in order; the watchers of a key are a prefix;
//! - `[key, end)`: intervals in order of their start, each with the position
//!   of the farthest end among it and those before it. A lookup walks back
//!   from the last interval starting at or before the key and stops where
//!   no earlier interval reaches past the key.
//!
//! Hand-written: the crates for interval lookups want `Copy` bounds or are
//! built once and never changed, and watchers come and go one at a time.
//! Adding or removing an interval shifts the vector (one `memmove`) and
//! recomputes the farthest ends after it; a stream holds at most
//! `WATCHERS_PER_STREAM_MAX` watchers.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// A watcher's id on its stream.
pub type WatchId = i64;

#[derive(Debug)]
struct Interval {
    start: Vec<u8>,
    end: Vec<u8>,
    id: WatchId,
}

/// Watchers of one stream by key range.
#[derive(Debug, Default)]
pub struct WatchIndex {
    keys: BTreeMap<Vec<u8>, Vec<WatchId>>,
    /// `(start, id)` in order: watchers of every key from `start` on.
    from: Vec<(Vec<u8>, WatchId)>,
    /// In order of `(start, id)`.
    intervals: Vec<Interval>,
    /// For each interval, the position of the farthest end among it and
    /// those before it.
    farthest: Vec<usize>,
}

/// What kind of range `(key, range_end)` is under etcd's rules.
enum Kind {
    Key,
    From,
    Interval,
    /// `range_end` at or before `key`: no key lies in it.
    Empty,
}

fn kind(key: &[u8], range_end: &[u8]) -> Kind {
    if range_end.is_empty() {
        Kind::Key
    } else if range_end == [0] {
        Kind::From
    } else if range_end > key {
        Kind::Interval
    } else {
        Kind::Empty
    }
}

impl WatchIndex {
    /// Adds watcher `id` on `(key, range_end)`.
    pub fn insert(&mut self, id: WatchId, key: &[u8], range_end: &[u8]) {
        match kind(key, range_end) {
            Kind::Key => self.keys.entry(key.to_vec()).or_default().push(id),
            Kind::From => {
                let at = self
                    .from
                    .partition_point(|(start, i)| (start.as_slice(), *i) < (key, id));
                self.from.insert(at, (key.to_vec(), id));
            }
            Kind::Interval => {
                let at = self
                    .intervals
                    .partition_point(|e| (e.start.as_slice(), e.id) < (key, id));
                self.intervals.insert(
                    at,
                    Interval {
                        start: key.to_vec(),
                        end: range_end.to_vec(),
                        id,
                    },
                );
                self.farthest.insert(at, at);
                self.recompute_from(at);
            }
            Kind::Empty => {}
        }
    }

    /// Removes watcher `id`, added with the same `(key, range_end)`.
    pub fn remove(&mut self, id: WatchId, key: &[u8], range_end: &[u8]) {
        match kind(key, range_end) {
            Kind::Key => {
                if let Some(ids) = self.keys.get_mut(key) {
                    ids.retain(|i| *i != id);
                    if ids.is_empty() {
                        self.keys.remove(key);
                    }
                }
            }
            Kind::From => {
                if let Ok(at) = self
                    .from
                    .binary_search_by(|(start, i)| (start.as_slice(), *i).cmp(&(key, id)))
                {
                    self.from.remove(at);
                }
            }
            Kind::Interval => {
                if let Ok(at) = self
                    .intervals
                    .binary_search_by(|e| (e.start.as_slice(), e.id).cmp(&(key, id)))
                {
                    self.intervals.remove(at);
                    self.farthest.remove(at);
                    self.recompute_from(at);
                }
            }
            Kind::Empty => {}
        }
    }

    /// Recomputes the farthest ends from position `at` on.
    fn recompute_from(&mut self, at: usize) {
        for i in at..self.intervals.len() {
            let before = if i == 0 { i } else { self.farthest[i - 1] };
            self.farthest[i] = match self.intervals[i].end.cmp(&self.intervals[before].end) {
                Ordering::Greater => i,
                _ => before,
            };
        }
    }

    /// Calls `found` with every watcher whose range holds `key` (each once,
    /// in no particular order).
    pub fn matching(&self, key: &[u8], mut found: impl FnMut(WatchId)) {
        if let Some(ids) = self.keys.get(key) {
            ids.iter().copied().for_each(&mut found);
        }
        let from = self
            .from
            .partition_point(|(start, _)| start.as_slice() <= key);
        self.from[..from].iter().for_each(|(_, id)| found(*id));
        let mut i = self
            .intervals
            .partition_point(|e| e.start.as_slice() <= key);
        while i > 0 {
            i -= 1;
            if self.intervals[self.farthest[i]].end.as_slice() <= key {
                // No interval at or before `i` reaches past the key.
                break;
            }
            let interval = &self.intervals[i];
            if interval.end.as_slice() > key {
                found(interval.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(index: &WatchIndex, key: &[u8]) -> Vec<WatchId> {
        let mut ids = Vec::new();
        index.matching(key, |id| ids.push(id));
        ids.sort_unstable();
        ids
    }

    #[test]
    fn each_kind_of_range_matches_what_etcd_would() {
        // (key, range_end) of watchers 1.., then (event key, watchers found).
        let watchers: &[(&[u8], &[u8])] = &[
            (b"a", b""),     // 1: the key "a"
            (b"a", b"b"),    // 2: prefix "a"
            (b"\0", b"\0"),  // 3: every key
            (b"c", b"\0"),   // 4: from "c" on
            (b"b", b"a"),    // 5: an empty range
            (b"ab", b"ad"),  // 6
            (b"a", b"z"),    // 7: wide, before 6
            (b"a", b""),     // 8: the key "a" again
            (b"zz", b"zzz"), // 9
        ];
        let cases: &[(&[u8], &[WatchId])] = &[
            (b"a", &[1, 2, 3, 7, 8]),
            (b"ab", &[2, 3, 6, 7]),
            (b"ac", &[2, 3, 6, 7]),
            (b"ad", &[2, 3, 7]),
            (b"b", &[3, 7]),
            (b"c", &[3, 4, 7]),
            (b"z", &[3, 4]),
            (b"zz", &[3, 4, 9]),
            (b"zzz", &[3, 4]),
            (b"", &[]),
            (b"\0", &[3]),
        ];
        let mut index = WatchIndex::default();
        for (i, (key, end)) in watchers.iter().enumerate() {
            index.insert(i as WatchId + 1, key, end);
        }
        for (key, expected) in cases {
            assert_eq!(&found(&index, key), expected, "key {key:?}");
        }
        // Removing 7 (the wide interval) leaves the rest found.
        index.remove(7, b"a", b"z");
        assert_eq!(found(&index, b"ab"), vec![2, 3, 6]);
        assert_eq!(found(&index, b"c"), vec![3, 4]);
        for (i, (key, end)) in watchers.iter().enumerate() {
            index.remove(i as WatchId + 1, key, end);
        }
        assert!(index.keys.is_empty() && index.from.is_empty());
        assert!(index.intervals.is_empty() && index.farthest.is_empty());
    }

    #[test]
    fn lookups_agree_with_in_range_as_watchers_come_and_go() {
        // A deterministic stream of inserts, removals and lookups over short
        // keys, checked against `mainstay_mvcc::in_range` on every watcher.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let key = |next: &mut dyn FnMut(u64) -> u64| -> Vec<u8> {
            (0..next(3)).map(|_| b'a' + next(4) as u8).collect()
        };
        let mut index = WatchIndex::default();
        let mut live: BTreeMap<WatchId, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
        for id in 0..3000 {
            if next(3) == 0 && !live.is_empty() {
                let victim = *live
                    .keys()
                    .nth(next(live.len() as u64) as usize)
                    .unwrap_or(&0);
                if let Some((k, e)) = live.remove(&victim) {
                    index.remove(victim, &k, &e);
                }
            } else {
                let k = key(&mut next);
                let e = match next(4) {
                    0 => Vec::new(),
                    1 => vec![0],
                    _ => key(&mut next),
                };
                index.insert(id, &k, &e);
                live.insert(id, (k, e));
            }
            let probe = key(&mut next);
            let expected: Vec<WatchId> = live
                .iter()
                .filter(|(_, (k, e))| mainstay_mvcc::in_range(&probe, k, e))
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(found(&index, &probe), expected, "key {probe:?} after {id}");
        }
    }
}
