//! `ReadRounds`: linearizable reads on one member share ReadIndex rounds, as
//! etcd's read loop does. A read joins the queue; one round at a time takes
//! every read queued so far, asks for one read index, and answers them all. A
//! read that arrives while a round is in flight waits for the next one (the
//! index must be taken after the read began), so a burst of reads costs two
//! rounds, not one per read.
//!
//! The queue and its rules are here, plain; `Replica` runs the rounds.

use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::ReplicaError;

/// The answer a round gives each of its reads.
pub(crate) type RoundResult = Result<u64, ReplicaError>;

#[derive(Debug, Default)]
struct Queue {
    reads: Vec<oneshot::Sender<RoundResult>>,
    /// A round runner is active (it takes the queue before each round).
    running: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct ReadRounds {
    queue: Mutex<Queue>,
}

impl ReadRounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a read. Returns its answer and whether the caller must start a
    /// runner (none is active).
    pub(crate) fn join(&self) -> (oneshot::Receiver<RoundResult>, bool) {
        let (answer, answered) = oneshot::channel();
        let mut queue = self.lock();
        queue.reads.push(answer);
        let start = !queue.running;
        queue.running = true;
        (answered, start)
    }

    /// The reads of the next round, or None (and the runner stops) when the
    /// queue is empty.
    pub(crate) fn next_round(&self) -> Option<Vec<oneshot::Sender<RoundResult>>> {
        let mut queue = self.lock();
        if queue.reads.is_empty() {
            queue.running = false;
            return None;
        }
        Some(std::mem::take(&mut queue.reads))
    }
}

/// Answers every read of a round.
pub(crate) fn answer(reads: Vec<oneshot::Sender<RoundResult>>, result: &RoundResult) {
    for read in reads {
        // A read that gave up (its deadline passed) is gone: nothing to tell.
        let _ = read.send(result.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_queued_during_a_round_wait_for_the_next() {
        // Goal: the first read starts a runner; reads joining while it runs do
        // not start another; a round takes exactly the reads queued before it;
        // the runner stops on an empty queue and the next read starts one.
        let rounds = ReadRounds::default();
        let (mut first, start) = rounds.join();
        assert!(start, "the first read starts a runner");
        let round_one = rounds.next_round().expect("one read queued");
        assert_eq!(round_one.len(), 1);
        let (mut second, start) = rounds.join();
        let (mut third, start_too) = rounds.join();
        assert!(!start && !start_too, "a runner is active");
        answer(round_one, &Ok(7));
        assert_eq!(first.try_recv().ok(), Some(Ok(7)));
        assert!(second.try_recv().is_err(), "joined during round one");
        let round_two = rounds.next_round().expect("two reads queued");
        assert_eq!(round_two.len(), 2);
        answer(round_two, &Err(ReplicaError::Timeout));
        assert_eq!(second.try_recv().ok(), Some(Err(ReplicaError::Timeout)));
        assert_eq!(third.try_recv().ok(), Some(Err(ReplicaError::Timeout)));
        assert!(rounds.next_round().is_none(), "the runner stops");
        let (_fourth, start) = rounds.join();
        assert!(start, "a new read starts a new runner");
    }
}
