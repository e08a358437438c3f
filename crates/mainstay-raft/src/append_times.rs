//! When this member's log received its recent entries, so a leader can say
//! how long a follower has been behind (`mainstay_peer_lag_seconds`): a
//! follower whose log matches up to `m` has been missing entry `m + 1` since
//! it was appended here. The log store records each append (one short lock);
//! `behind_since` is a plain function with table tests.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::time::Instant;

/// Appends remembered (older ones are forgotten: a follower further behind
/// reports the oldest remembered time, a lower bound).
const KEPT: usize = 4096;

/// `(last index of an append, when it was staged)`, oldest first.
#[derive(Default)]
pub struct AppendTimes {
    appends: Mutex<VecDeque<(u64, Instant)>>,
}

impl AppendTimes {
    /// Entries up to `last` were appended now. A truncation followed by a
    /// new append at lower indexes drops the records it replaces.
    pub fn appended(&self, last: u64) {
        let mut appends = self.appends.lock().unwrap_or_else(|p| p.into_inner());
        while appends.back().is_some_and(|(index, _)| *index >= last) {
            appends.pop_back();
        }
        appends.push_back((last, Instant::now()));
        if appends.len() > KEPT {
            appends.pop_front();
        }
    }

    /// Since when a follower whose log matches up to `matched` has been
    /// behind this log (None: it is not behind).
    pub fn behind_since(&self, matched: u64) -> Option<Instant> {
        let appends = self.appends.lock().unwrap_or_else(|p| p.into_inner());
        behind_since(appends.iter().copied(), matched)
    }
}

/// The time of the first append that holds an entry after `matched`; None
/// when every recorded append ends at or before it.
pub fn behind_since<I>(appends: I, matched: u64) -> Option<Instant>
where
    I: IntoIterator<Item = (u64, Instant)>,
{
    appends
        .into_iter()
        .find(|(last, _)| *last > matched)
        .map(|(_, at)| at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn behind_since_is_the_first_append_past_the_match() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let appends = [(5, at(0)), (9, at(10)), (12, at(20))];
        let cases: [(u64, Option<Instant>); 6] = [
            (0, Some(at(0))),
            (4, Some(at(0))),
            (5, Some(at(10))),
            (10, Some(at(20))),
            (12, None),
            (30, None),
        ];
        for (matched, want) in cases {
            assert_eq!(behind_since(appends, matched), want, "matched {matched}");
        }
        assert_eq!(behind_since([], 3), None);
    }

    #[test]
    fn a_rewritten_tail_replaces_its_records() {
        let times = AppendTimes::default();
        times.appended(5);
        times.appended(9);
        // Truncated after 6 and appended up to 7.
        times.appended(7);
        let appends = times.appends.lock().unwrap_or_else(|p| p.into_inner());
        let indexes: Vec<u64> = appends.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, vec![5, 7]);
    }
}
