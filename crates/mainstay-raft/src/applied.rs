//! `AppliedIndex`: this member's applied log index, and the requests waiting
//! for it to reach theirs (a forwarded write, a read after its read index).
//!
//! Each waiter is woken once, when its index is applied: the waiters are kept
//! by index, so an apply wakes exactly the ones it satisfies (watching openraft's
//! metrics instead woke every waiter at every metrics change, several times per
//! entry).

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

#[derive(Debug, Default)]
struct Waiting {
    applied: u64,
    waiters: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

/// See the module docs. Dropping it tells every waiter the member stopped.
#[derive(Debug, Default)]
pub(crate) struct AppliedIndex {
    waiting: Mutex<Waiting>,
}

impl AppliedIndex {
    /// Starts at `applied`.
    pub(crate) fn new(applied: u64) -> Self {
        AppliedIndex {
            waiting: Mutex::new(Waiting {
                applied,
                waiters: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The applied index.
    #[cfg(test)]
    pub(crate) fn get(&self) -> u64 {
        self.lock().applied
    }

    /// None if `index` is applied already; otherwise a receiver that resolves
    /// when it is (or fails when the member stops).
    pub(crate) fn wait(&self, index: u64) -> Option<oneshot::Receiver<()>> {
        let mut waiting = self.lock();
        if waiting.applied >= index {
            return None;
        }
        let (wake, woken) = oneshot::channel();
        waiting.waiters.entry(index).or_default().push(wake);
        Some(woken)
    }

    /// Records that everything up to `applied` is applied and wakes the
    /// waiters it satisfies. The index never goes back.
    pub(crate) fn advance(&self, applied: u64) {
        let ready = {
            let mut waiting = self.lock();
            if applied <= waiting.applied {
                return;
            }
            waiting.applied = applied;
            let later = waiting.waiters.split_off(&(applied + 1));
            std::mem::replace(&mut waiting.waiters, later)
        };
        for wake in ready.into_values().flatten() {
            // A waiter that gave up (timed out) is gone: nothing to tell.
            let _ = wake.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_wake_exactly_when_their_index_is_applied() {
        // Goal: each waiter is woken by the first advance that reaches its
        // index, not before; an applied index answers at once; the index
        // never goes back.
        let applied = AppliedIndex::new(5);
        assert!(applied.wait(5).is_none(), "already applied");
        let mut receivers = [
            applied.wait(6).expect("waits"),
            applied.wait(9).expect("waits"),
            applied.wait(9).expect("waits"),
        ];
        // (advance to, which of the three have been woken so far)
        let cases: [(u64, [bool; 3]); 4] = [
            (5, [false, false, false]),
            (8, [true, false, false]),
            (7, [true, false, false]),
            (10, [true, true, true]),
        ];
        let mut woken = [false; 3];
        for (to, expected) in cases {
            applied.advance(to);
            for (seen, receiver) in woken.iter_mut().zip(receivers.iter_mut()) {
                *seen |= receiver.try_recv().is_ok();
            }
            assert_eq!(woken, expected, "after advancing to {to}");
        }
        assert_eq!(applied.get(), 10);
    }

    #[test]
    fn a_stopped_member_fails_its_waiters() {
        // Goal: when the state machine goes, waiting requests learn it.
        let applied = AppliedIndex::new(0);
        let mut waiting = applied.wait(1).expect("waits");
        drop(applied);
        assert!(matches!(
            waiting.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
