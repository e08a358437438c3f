//! Failed logins slow down the next attempt for the same user and from the
//! same client address, without touching anyone else's logins: after
//! `FREE_FAILURES` failures in a row each further failure doubles the wait
//! before the next attempt is heard (from `FIRST_WAIT` up to `WAIT_MAX`); a
//! success clears the user's count. Time is passed in (pure).

use std::collections::HashMap;
use std::ops::Add;
use std::time::Duration;

/// Failures in a row that cost nothing.
pub const FREE_FAILURES: u32 = 5;
/// The wait after the first failure past the free ones.
pub const FIRST_WAIT: Duration = Duration::from_millis(200);
/// The longest wait.
pub const WAIT_MAX: Duration = Duration::from_secs(30);
/// How long a key with no failure is remembered.
pub const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Most keys held; past it, keys not waiting are forgotten first.
pub const KEYS_MAX: usize = 50_000;

/// An attempt came before its wait was over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled;

#[derive(Debug, Clone, Copy)]
struct Entry<I> {
    failures: u32,
    not_before: I,
    forget_at: I,
}

/// Failure counts by key (a user name or a client address).
#[derive(Debug)]
pub struct LoginThrottle<I> {
    entries: HashMap<String, Entry<I>>,
}

impl<I: Copy + Ord + Add<Duration, Output = I>> Default for LoginThrottle<I> {
    fn default() -> Self {
        LoginThrottle {
            entries: HashMap::new(),
        }
    }
}

impl<I: Copy + Ord + Add<Duration, Output = I>> LoginThrottle<I> {
    /// Refuses an attempt for any of `keys` that is still waiting.
    pub fn check(&self, keys: &[&str], now: I) -> Result<(), Throttled> {
        for key in keys {
            if let Some(entry) = self.entries.get(*key)
                && entry.not_before > now
            {
                return Err(Throttled);
            }
        }
        Ok(())
    }

    /// Counts a failed attempt against every key.
    pub fn failed(&mut self, keys: &[&str], now: I) {
        if self.entries.len() + keys.len() > KEYS_MAX {
            self.entries
                .retain(|_, entry| entry.forget_at > now && entry.not_before > now);
        }
        if self.entries.len() + keys.len() > KEYS_MAX {
            // Still full of waiting keys: refuse to grow (the keys asked
            // about are not tracked, but no memory is spent on a flood).
            return;
        }
        for key in keys {
            let entry = self.entries.entry((*key).to_string()).or_insert(Entry {
                failures: 0,
                not_before: now,
                forget_at: now,
            });
            entry.failures = entry.failures.saturating_add(1);
            entry.forget_at = now + FORGET_AFTER;
            entry.not_before = now + wait_after(entry.failures);
        }
    }

    /// Clears a key's count (the user logged in).
    pub fn succeeded(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

/// The wait after `failures` failures in a row.
pub fn wait_after(failures: u32) -> Duration {
    if failures <= FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_FAILURES - 1).min(16);
    FIRST_WAIT.saturating_mul(1 << doublings).min(WAIT_MAX)
}
