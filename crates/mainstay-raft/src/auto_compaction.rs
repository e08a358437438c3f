//! `--auto-compaction-mode` and `--auto-compaction-retention`, with etcd's
//! semantics: the leader compacts by itself (a follower's loop only watches).
//!
//! - `revision`: every 5 minutes, compact to the current revision minus the
//!   retention (when positive and not already done).
//! - `periodic`: keep a window of `retention` time. The revision is sampled
//!   every tenth of the window (of an hour, for windows longer than that);
//!   once the window has passed since the last compaction, compact to the
//!   oldest sample, the revision of one window ago. The first compaction
//!   waits a whole window, later ones an hour at most (the window when
//!   shorter).
//!
//! The decisions (`Periodic`, `by_revision`) are plain code with time passed
//! in and table tests; `compact_automatically` only moves data.

use std::collections::VecDeque;
use std::time::Duration;

use mainstay_mvcc::{Command, CommandResponse, CompactionRequest, MvccError};

use crate::replica::Replica;

/// How often `revision` mode looks (etcd's 5 minutes).
pub const REVISION_CHECK_EVERY: Duration = Duration::from_secs(300);

/// What to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// `revision` mode: the revision to compact to now, if any.
pub fn by_revision(current: i64, retention: i64, last: Option<i64>) -> Option<i64> {
    let target = current.checked_sub(retention)?;
    (target > 0 && Some(target) != last).then_some(target)
}

/// `periodic` mode's state: the samples of the window and when the last
/// compaction succeeded (time since the loop started).
#[derive(Debug)]
pub struct Periodic {
    window: Duration,
    samples: VecDeque<i64>,
    last_success: Duration,
    /// What must pass since the last success: the whole window at first.
    wait: Duration,
}

impl Periodic {
    /// A window of `window` (positive), starting at time zero.
    pub fn new(window: Duration) -> Periodic {
        Periodic {
            window,
            samples: VecDeque::new(),
            last_success: Duration::ZERO,
            wait: window,
        }
    }

    /// How often to sample: a tenth of the window, of an hour at most.
    pub fn sample_every(&self) -> Duration {
        self.window.min(Duration::from_secs(3600)) / 10
    }

    /// Samples kept: one window's worth, plus the one a window ago.
    fn kept(&self) -> usize {
        let every = self.sample_every().as_nanos().max(1);
        usize::try_from(self.window.as_nanos() / every).unwrap_or(usize::MAX) + 1
    }

    /// Records the revision sampled at `now`.
    pub fn sample(&mut self, revision: i64) {
        self.samples.push_back(revision);
        while self.samples.len() > self.kept() {
            self.samples.pop_front();
        }
    }

    /// The revision to compact to at `now`, if a compaction is due.
    pub fn due(&self, now: Duration) -> Option<i64> {
        if now.saturating_sub(self.last_success) < self.wait {
            return None;
        }
        self.samples
            .front()
            .copied()
            .filter(|revision| *revision > 0)
    }

    /// A compaction attempted at `now` succeeded (or the revision was
    /// already compacted): the next waits an hour at most.
    pub fn succeeded(&mut self, now: Duration) {
        self.last_success = now;
        self.wait = self.window.min(Duration::from_secs(3600));
    }
}

/// Runs the policy until the replica stops; only a leader compacts.
pub async fn compact_automatically(replica: Replica, policy: AutoCompaction) {
    let started = tokio::time::Instant::now();
    match policy {
        AutoCompaction::Revision(retention) => {
            let mut last = None;
            loop {
                tokio::time::sleep(REVISION_CHECK_EVERY).await;
                if !replica.is_leader() {
                    continue;
                }
                let current = replica.read(|space| space.revision());
                let Some(target) = by_revision(current, retention, last) else {
                    continue;
                };
                if compact(&replica, target, "revision").await {
                    last = Some(target);
                }
            }
        }
        AutoCompaction::Periodic(window) => {
            let mut state = Periodic::new(window);
            loop {
                state.sample(replica.read(|space| space.revision()));
                tokio::time::sleep(state.sample_every()).await;
                if !replica.is_leader() {
                    continue;
                }
                let now = started.elapsed();
                let Some(target) = state.due(now) else {
                    continue;
                };
                if compact(&replica, target, "periodic").await {
                    state.succeeded(now);
                }
            }
        }
    }
}

/// Proposes one compaction; true when done or already done.
async fn compact(replica: &Replica, revision: i64, mode: &str) -> bool {
    tracing::info!(revision, mode, "starting auto compaction");
    let command = Command::Compact(CompactionRequest {
        revision,
        physical: false,
    });
    match replica.write(command).await {
        Ok(outcome) => match outcome.outcome {
            Ok(CommandResponse::Compact(_)) | Err(MvccError::Compacted) => {
                tracing::info!(revision, mode, "completed auto compaction");
                true
            }
            Ok(_) => false,
            Err(error) => {
                tracing::warn!(revision, mode, %error, "auto compaction failed");
                false
            }
        },
        Err(error) => {
            tracing::warn!(revision, mode, %error, "auto compaction not committed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let table = [
            // (current, retention, last, want)
            (100, 10, None, Some(90)),
            (100, 10, Some(90), None),
            (105, 10, Some(90), Some(95)),
            (10, 10, None, None),
            (5, 10, None, None),
            (100, 0, None, Some(100)),
        ];
        for (current, retention, last, want) in table {
            assert_eq!(
                by_revision(current, retention, last),
                want,
                "{current} {retention} {last:?}"
            );
        }
    }

    fn minutes(m: u64) -> Duration {
        Duration::from_secs(60 * m)
    }

    #[test]
    fn periodic_samples_a_tenth_of_the_window_or_of_an_hour() {
        let table = [
            (Duration::from_secs(5), Duration::from_millis(500)),
            (minutes(59), Duration::from_secs(354)),
            (minutes(60), minutes(6)),
            (minutes(60 * 24), minutes(6)),
        ];
        for (window, every) in table {
            assert_eq!(Periodic::new(window).sample_every(), every, "{window:?}");
        }
    }

    #[test]
    fn periodic_compacts_to_the_revision_of_one_window_ago() {
        // A 10-minute window sampled every minute; the revision grows by 100
        // a minute.
        let mut state = Periodic::new(minutes(10));
        let mut compacted = Vec::new();
        for minute in 0..=25u64 {
            let now = minutes(minute);
            state.sample(minute as i64 * 100 + 1);
            if let Some(revision) = state.due(now) {
                compacted.push((minute, revision));
                state.succeeded(now);
            }
        }
        // First after a whole window, to the revision sampled then a window
        // ago; then every window (shorter than an hour).
        assert_eq!(compacted, vec![(10, 1), (20, 1001)]);
    }

    #[test]
    fn periodic_waits_at_most_an_hour_after_the_first() {
        let mut state = Periodic::new(minutes(60 * 3));
        let mut compacted = Vec::new();
        let every = state.sample_every();
        let mut now = Duration::ZERO;
        let mut revision = 1;
        while now <= minutes(60 * 5) {
            state.sample(revision);
            if let Some(target) = state.due(now) {
                compacted.push((now.as_secs() / 60, target));
                state.succeeded(now);
            }
            now += every;
            revision += 1;
        }
        // Samples every 6 minutes; 3 hours = 30 samples back.
        let at: Vec<u64> = compacted.iter().map(|(minute, _)| *minute).collect();
        assert_eq!(at, vec![180, 240, 300]);
        for (minute, target) in compacted {
            // The sample of 180 minutes before.
            assert_eq!(target, (minute as i64 - 180) / 6 + 1, "at {minute}");
        }
    }

    #[test]
    fn nothing_is_due_before_a_sample_or_for_revision_zero() {
        let mut state = Periodic::new(minutes(1));
        assert_eq!(state.due(minutes(5)), None);
        state.sample(0);
        assert_eq!(state.due(minutes(5)), None);
    }
}
