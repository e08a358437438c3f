//! `WriteBatches`: client writes a follower forwards to its leader travel in
//! batches, one peer RPC (`ForwardWrites`) for every write queued meanwhile, as
//! etcd's followers hand their proposals to the leader in one message per
//! Ready. A write joins the queue; at most `SENDERS_MAX` senders run, each
//! taking every write queued for one leader (up to `BATCH_WRITES_MAX`) and
//! answering them all from one reply. An idle member sends a lone write at
//! once (a sender is free), so batching adds no wait; under load, writes that
//! arrive while every sender is out go together in the next batch.
//!
//! The queue and its rules are here, plain; `Replica` runs the senders.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::ReplicaError;
use crate::proposal::Proposal;
use crate::type_config::WriteOutcome;

/// Batches in flight from one member at most (the pipeline depth).
pub(crate) const SENDERS_MAX: usize = 2;
/// Writes in one batch at most; the rest wait for the next.
pub(crate) const BATCH_WRITES_MAX: usize = 256;

/// The leader's answer for one forwarded write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum WriteReply {
    /// Applied on the leader.
    Done(WriteOutcome),
    /// The receiver is not the leader (nothing was proposed); the leader it knows.
    NotLeader(Option<u64>),
    /// Proposed or not, it failed (the error says whether the outcome is unknown).
    Failed(ReplicaError),
    /// Surely not sent (no connection to the leader): safe to try again.
    Retry,
}

/// A queued write and where its answer goes.
pub(crate) struct Queued {
    pub(crate) leader: u64,
    pub(crate) command: Proposal,
    pub(crate) answer: oneshot::Sender<WriteReply>,
}

#[derive(Default)]
struct Queue {
    writes: Vec<Queued>,
    /// Senders active (each takes a batch before every send).
    senders: usize,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct WriteBatches {
    queue: Mutex<Queue>,
}

impl WriteBatches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a write for `leader`. Returns its answer and whether the caller
    /// must start a sender (fewer than `SENDERS_MAX` are active).
    pub(crate) fn join(
        &self,
        leader: u64,
        command: Proposal,
    ) -> (oneshot::Receiver<WriteReply>, bool) {
        let (answer, answered) = oneshot::channel();
        let mut queue = self.lock();
        queue.writes.push(Queued {
            leader,
            command,
            answer,
        });
        let start = queue.senders < SENDERS_MAX;
        if start {
            queue.senders += 1;
        }
        (answered, start)
    }

    /// The next batch: the oldest queued write's leader and every write queued
    /// for it (oldest first, at most `BATCH_WRITES_MAX`). None, and the sender
    /// stops, when the queue is empty. A write whose writer gave up (its
    /// deadline passed while it waited) is dropped, never sent: its client was
    /// told the outcome is unknown, and it must not land long after.
    pub(crate) fn next_batch(&self) -> Option<(u64, Vec<Queued>)> {
        let mut queue = self.lock();
        queue.writes.retain(|write| !write.answer.is_closed());
        let Some(leader) = queue.writes.first().map(|write| write.leader) else {
            queue.senders = queue.senders.saturating_sub(1);
            return None;
        };
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for write in std::mem::take(&mut queue.writes) {
            if write.leader == leader && batch.len() < BATCH_WRITES_MAX {
                batch.push(write);
            } else {
                rest.push(write);
            }
        }
        queue.writes = rest;
        Some((leader, batch))
    }
}

/// Answers every write of a batch: reply `i` goes to write `i`; a reply
/// missing (a malformed answer) leaves that write's outcome unknown.
pub(crate) fn answer(batch: Vec<Queued>, replies: Vec<WriteReply>) {
    let mut replies = replies.into_iter();
    for write in batch {
        let reply = replies
            .next()
            .unwrap_or(WriteReply::Failed(ReplicaError::Timeout));
        // A writer that gave up (its deadline passed) is gone: nothing to tell.
        let _ = write.answer.send(reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainstay_mvcc::{Command, PutRequest};

    fn put(key: &str) -> Proposal {
        Proposal::encode(&Command::Put(PutRequest {
            key: key.as_bytes().to_vec(),
            ..PutRequest::default()
        }))
    }

    fn keys(batch: &[Queued]) -> Vec<Vec<u8>> {
        batch
            .iter()
            .map(|write| match write.command.decode() {
                Ok(Command::Put(put)) => put.key,
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn writes_batch_per_leader_behind_busy_senders() {
        // Goal: the first SENDERS_MAX writes each start a sender (no wait when
        // idle); later ones queue; a batch takes every write for the oldest
        // write's leader, in order, leaving others' writes; senders stop on an
        // empty queue and a new write starts one again.
        let batches = WriteBatches::default();
        let (_a, start_a) = batches.join(1, put("a"));
        let (_b, start_b) = batches.join(1, put("b"));
        assert!(start_a && start_b, "free senders start at once");
        let (_c, start_c) = batches.join(2, put("c"));
        let (_d, start_d) = batches.join(1, put("d"));
        assert!(!start_c && !start_d, "every sender is busy");
        let (leader, first) = batches.next_batch().expect("queued");
        assert_eq!(leader, 1);
        assert_eq!(keys(&first), [b"a".to_vec(), b"b".to_vec(), b"d".to_vec()]);
        let (leader, second) = batches.next_batch().expect("queued");
        assert_eq!(leader, 2);
        assert_eq!(keys(&second), [b"c".to_vec()]);
        assert!(batches.next_batch().is_none(), "one sender stops");
        assert!(batches.next_batch().is_none(), "the other stops");
        let (_e, start_e) = batches.join(1, put("e"));
        assert!(start_e, "an idle member sends at once");
    }

    #[test]
    fn a_batch_is_capped_and_the_rest_waits() {
        // Goal: no batch exceeds BATCH_WRITES_MAX; the overflow is the next batch.
        let batches = WriteBatches::default();
        let mut answers = Vec::new();
        for i in 0..BATCH_WRITES_MAX + 3 {
            answers.push(batches.join(1, put(&i.to_string())).0);
        }
        let (_, first) = batches.next_batch().expect("queued");
        assert_eq!(first.len(), BATCH_WRITES_MAX);
        let (_, second) = batches.next_batch().expect("queued");
        assert_eq!(second.len(), 3);
    }

    #[test]
    fn a_write_whose_writer_gave_up_is_never_sent() {
        // Goal: a queued write whose answer is no longer awaited (deadline
        // passed) is dropped from the queue, so it cannot land late.
        let batches = WriteBatches::default();
        let (gone, _) = batches.join(1, put("gone"));
        let (_kept, _) = batches.join(1, put("kept"));
        drop(gone);
        let (_, batch) = batches.next_batch().expect("queued");
        assert_eq!(keys(&batch), [b"kept".to_vec()]);
        let (gone_too, _) = batches.join(1, put("gone too"));
        drop(gone_too);
        assert!(batches.next_batch().is_none(), "nothing left to send");
    }

    #[test]
    fn every_write_gets_its_own_reply_and_a_missing_one_is_unknown() {
        // Goal: replies are matched by position; a short reply list leaves the
        // unanswered writes with an unknown outcome (Timeout), never a success.
        let batches = WriteBatches::default();
        let (mut a, _) = batches.join(1, put("a"));
        let (mut b, _) = batches.join(1, put("b"));
        let (_, batch) = batches.next_batch().expect("queued");
        answer(batch, vec![WriteReply::NotLeader(Some(3))]);
        assert_eq!(a.try_recv().ok(), Some(WriteReply::NotLeader(Some(3))));
        assert_eq!(
            b.try_recv().ok(),
            Some(WriteReply::Failed(ReplicaError::Timeout))
        );
    }
}
