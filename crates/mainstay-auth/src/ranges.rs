//! Key intervals and whether granted permissions cover a request's keys.
//!
//! A permission or request names keys with etcd's range rules: an empty
//! `range_end` is the single key, `"\0"` every key from `key` on, anything else
//! the half-open `[key, range_end)`. A request is permitted only when the union
//! of the caller's granted intervals covers all of its interval (etcd's
//! `checkKeyInterval`), so a from-key watch or a prefix read is never let
//! through on a permission for part of it.

/// A half-open interval of keys; `end: None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interval {
    /// First key.
    pub start: Vec<u8>,
    /// First key after the interval; `None`: no end.
    pub end: Option<Vec<u8>>,
}

impl Interval {
    /// The keys `key` and `range_end` name under etcd's rules. An interval
    /// whose end is at or before its start (a range that reads nothing) is
    /// taken as its first key, so it asks for at least that key's permission.
    pub fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let single = || {
            let mut end = key.to_vec();
            end.push(0);
            Interval {
                start: key.to_vec(),
                end: Some(end),
            }
        };
        match range_end {
            [] => single(),
            [0] => Interval {
                start: key.to_vec(),
                end: None,
            },
            end if end <= key => single(),
            end => Interval {
                start: key.to_vec(),
                end: Some(end.to_vec()),
            },
        }
    }
}

impl Interval {
    /// The keys a permission grants: as `of`, but a permission whose end is at
    /// or before its key grants nothing.
    pub fn granted(key: &[u8], range_end: &[u8]) -> Option<Interval> {
        match range_end {
            [] | [0] => Some(Interval::of(key, range_end)),
            end if end <= key => None,
            _ => Some(Interval::of(key, range_end)),
        }
    }
}

/// Whether the union of `granted` covers every key of `wanted`.
pub fn covers(granted: &[Interval], wanted: &Interval) -> bool {
    let mut sorted: Vec<&Interval> = granted.iter().collect();
    sorted.sort_by(|a, b| a.start.cmp(&b.start));
    // Every key before `covered` (from wanted.start on) is granted.
    let mut covered: Vec<u8> = wanted.start.clone();
    let reached = |covered: &[u8]| match &wanted.end {
        Some(end) => covered >= end.as_slice(),
        None => false,
    };
    for interval in sorted {
        if interval.start.as_slice() > covered.as_slice() {
            // A gap: later intervals start even further on.
            return false;
        }
        match &interval.end {
            None => return true,
            Some(end) if end.as_slice() > covered.as_slice() => {
                covered = end.clone();
                if reached(&covered) {
                    return true;
                }
            }
            Some(_) => {}
        }
    }
    false
}
