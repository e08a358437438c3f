//! `Proposals`: the writes this member proposes (as leader) reach openraft
//! together. Each client write runs in its own request task, and tokio runs the
//! task a wake-up names next: handed straight to openraft, every write would
//! wake openraft's core for itself, and the core would run once per write (an
//! engine pass, a log append, a replication message each). Instead a write joins
//! a queue, and one sender task waits one runtime turn (until the worker has
//! run the other ready tasks, whose writes join meanwhile) and hands openraft
//! the whole queue in one go; openraft merges consecutive writes into one
//! append.
//!
//! A turn that gathered no other write (a lone client) only delays it, so after
//! one the next `DIRECT_AFTER_LONE` writes that find no sender go to openraft
//! at once from their own task.
//!
//! The queue holds at most the writes in flight on this member (each caller
//! waits for its answer); its rules are here, plain; `Replica` runs the sender.

use std::sync::Mutex;

/// Writes sent directly after a turn that gathered only one.
pub(crate) const DIRECT_AFTER_LONE: u8 = 32;
/// Writes handed over after one turn at most; the rest wait for the next.
pub(crate) const PER_TURN_MAX: usize = 4096;

#[derive(Debug)]
struct Queue<T> {
    waiting: Vec<T>,
    /// A sender task runs (it takes the queue after each turn).
    sending: bool,
    /// Writes still to send directly.
    direct: u8,
}

/// See the module docs. `T` is a write with its responder.
#[derive(Debug)]
pub(crate) struct Proposals<T> {
    queue: Mutex<Queue<T>>,
}

impl<T> Default for Proposals<T> {
    fn default() -> Self {
        Proposals {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                sending: false,
                direct: 0,
            }),
        }
    }
}

/// What to do with a write that joins.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Joined<T> {
    /// Hand it to openraft now, from the caller's task.
    Direct(T),
    /// Queued; `start` says the caller must start the sender.
    Queued { start: bool },
}

impl<T> Proposals<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T>> {
        // A poisoned lock means a panic while holding it: the queue itself is
        // always whole (each step is one push or one take).
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A write joins (see the module docs).
    pub(crate) fn join(&self, write: T) -> Joined<T> {
        let mut queue = self.lock();
        if !queue.sending && queue.direct > 0 {
            queue.direct -= 1;
            return Joined::Direct(write);
        }
        queue.waiting.push(write);
        let start = !queue.sending;
        queue.sending = true;
        Joined::Queued { start }
    }

    /// The sender's take after a turn: the writes queued meanwhile (at most
    /// `PER_TURN_MAX`), or `None` when there are none and the sender stops.
    pub(crate) fn take(&self) -> Option<Vec<T>> {
        let mut queue = self.lock();
        if queue.waiting.is_empty() {
            queue.sending = false;
            return None;
        }
        if queue.waiting.len() == 1 {
            queue.direct = DIRECT_AFTER_LONE;
        }
        let taken = queue.waiting.len().min(PER_TURN_MAX);
        let rest = queue.waiting.split_off(taken);
        Some(std::mem::replace(&mut queue.waiting, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_write_starts_the_sender_and_later_ones_join_its_turn() {
        let proposals = Proposals::default();
        assert_eq!(proposals.join(1), Joined::Queued { start: true });
        assert_eq!(proposals.join(2), Joined::Queued { start: false });
        assert_eq!(proposals.join(3), Joined::Queued { start: false });
        assert_eq!(proposals.take(), Some(vec![1, 2, 3]));
        // Still sending: a write now waits for the sender's next turn.
        assert_eq!(proposals.join(4), Joined::Queued { start: false });
        assert_eq!(proposals.take(), Some(vec![4]));
        // Nothing queued after the next turn: the sender stops.
        assert_eq!(proposals.take(), None);
    }

    #[test]
    fn after_a_lone_write_the_next_ones_go_directly_until_the_count_runs_out() {
        let proposals = Proposals::default();
        assert_eq!(proposals.join(0), Joined::Queued { start: true });
        assert_eq!(proposals.take(), Some(vec![0]));
        assert_eq!(proposals.take(), None);
        for write in 1..=DIRECT_AFTER_LONE {
            assert_eq!(proposals.join(write), Joined::Direct(write));
        }
        assert_eq!(proposals.join(99), Joined::Queued { start: true });
    }

    #[test]
    fn while_a_sender_runs_no_write_goes_directly() {
        // Direct writes could overtake queued ones; they never run beside a sender.
        let proposals = Proposals::default();
        assert_eq!(proposals.join(1), Joined::Queued { start: true });
        assert_eq!(proposals.take(), Some(vec![1]));
        assert_eq!(proposals.join(2), Joined::Queued { start: false });
        assert_eq!(proposals.take(), Some(vec![2]));
        assert_eq!(proposals.take(), None);
        assert_eq!(proposals.join(3), Joined::Direct(3));
    }

    #[test]
    fn a_turn_hands_over_at_most_per_turn_max_writes() {
        let proposals = Proposals::default();
        for write in 0..PER_TURN_MAX + 3 {
            proposals.join(write);
        }
        let first = proposals.take().expect("a batch");
        assert_eq!(first.len(), PER_TURN_MAX);
        assert_eq!(first.first(), Some(&0));
        assert_eq!(
            proposals.take(),
            Some(vec![PER_TURN_MAX, PER_TURN_MAX + 1, PER_TURN_MAX + 2])
        );
    }
}
