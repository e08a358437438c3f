//! A data group's leader in the scale-out scheme (docs/design/scale-out.md
//! §4.2–4.3), in front of a real three-member Mainstay cluster: it batches the
//! puts of its key range, takes a block of global revisions per batch from
//! the sequencer, and writes the batch as one Txn that carries each record's
//! global revision and the block, fenced by the leader's epoch. A new leader
//! (a restart, or a batch of unknown outcome) first raises the epoch, so no
//! older batch can still apply, and then tells the sequencer which blocks it
//! still has.

use std::time::Duration;

use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::{RangeRequest, RequestOp, TxnRequest};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use super::scheme::{Breaks, CostModel, counter_cas, counter_is, encode_value, put_op};
use super::sequencer;
use super::wire::{self, Line};

/// The port a group leader takes puts on.
pub(crate) const PORT: u16 = 7000;

/// The group's fencing key: the epoch of its current leader.
pub(crate) const EPOCH_KEY: &[u8] = b"/_sys/epoch";

/// The block of the group's last applied batch (`start end`).
pub(crate) const BLOCK_KEY: &[u8] = b"/_sys/block";

/// Puts per batch (a Txn holds them and the block key).
const BATCH_MAX: usize = 64;

/// How often an idle leader checks in with the sequencer.
const HEARTBEAT: Duration = Duration::from_millis(50);

/// One put waiting for its batch.
struct Pending {
    key: Vec<u8>,
    value: Vec<u8>,
    answer: oneshot::Sender<String>,
}

/// What a group leader is given.
pub(crate) struct LeaderSetup {
    pub(crate) group: u64,
    pub(crate) members: Vec<String>,
    pub(crate) cost: CostModel,
    pub(crate) breaks: Breaks,
}

/// The group's members, tried in turn.
struct Group {
    members: Vec<KvClient<Channel>>,
    next: usize,
}

impl Group {
    /// The member the leader talks to: the last one that answered.
    fn kv(&mut self) -> &mut KvClient<Channel> {
        &mut self.members[self.next]
    }

    /// The current member did not answer: the next one gets the next request.
    fn failed(&mut self) {
        self.next = (self.next + 1) % self.members.len();
    }

    /// A linearizable read of one key's value, trying members until one answers.
    async fn read(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        loop {
            let request = RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            };
            match tokio::time::timeout(wire::ATTEMPT, self.kv().range(request)).await {
                Ok(Ok(reply)) => {
                    return reply.into_inner().kvs.first().map(|kv| kv.value.to_vec());
                }
                _ => {
                    self.failed();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Raises the group's epoch above every epoch before it: once this
    /// returns, no Txn of an older leader (or of this one before) can apply.
    async fn fence(&mut self) -> u64 {
        loop {
            let current: u64 = self
                .read(EPOCH_KEY)
                .await
                .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(0);
            let next = current + 1;
            let request = counter_cas(EPOCH_KEY, current as i64, next as i64);
            match tokio::time::timeout(wire::ATTEMPT, self.kv().txn(request)).await {
                Ok(Ok(reply)) if reply.get_ref().succeeded => return next,
                Ok(Ok(_)) => {}
                _ => self.failed(),
            }
        }
    }

    /// The start of the group's last applied block (0 if none).
    async fn applied_block(&mut self) -> (i64, i64) {
        self.read(BLOCK_KEY)
            .await
            .and_then(|v| {
                let text = String::from_utf8(v).ok()?;
                let (start, end) = text.split_once(' ')?;
                Some((start.parse().ok()?, end.parse().ok()?))
            })
            .unwrap_or((0, 1))
    }
}

/// The leader's link to the sequencer: reconnects, and on every new
/// connection first says hello with the blocks it has outstanding.
struct SequencerLink {
    group: u64,
    line: Option<Line>,
}

impl SequencerLink {
    /// Sends `request` until the sequencer answers it. A new connection
    /// starts with the leader's epoch, the highest revision its group applied
    /// and its outstanding blocks.
    async fn call(
        &mut self,
        epoch: u64,
        applied: i64,
        outstanding: &[(i64, i64)],
        request: &str,
    ) -> String {
        loop {
            if self.line.is_none()
                && let Ok(mut line) = Line::connect("seq", sequencer::PORT).await
            {
                let blocks: Vec<String> = outstanding
                    .iter()
                    .map(|(s, e)| format!("{s}:{e}"))
                    .collect();
                let hello = format!(
                    "hello {} {epoch} {applied} {}",
                    self.group,
                    blocks.join(" ")
                );
                if matches!(line.call(&hello).await.as_deref(), Ok("ok")) {
                    self.line = Some(line);
                }
            }
            if let Some(line) = self.line.as_mut() {
                match line.call(request).await {
                    Ok(answer) => return answer,
                    Err(_) => self.line = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Takes client connections: one `put <key> <value>` per line, answered
/// `ok <revision>`, `failed` (surely not applied) or `err <why>` (unknown).
async fn accept(queue: mpsc::Sender<Pending>) -> std::io::Result<()> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut line = Line::new(stream);
            while let Ok(Some(request)) = line.read().await {
                let mut words = request.split_whitespace();
                let answer = match (words.next(), words.next(), words.next()) {
                    (Some("put"), Some(key), Some(value)) => {
                        let (answer, answered) = oneshot::channel();
                        let pending = Pending {
                            key: key.as_bytes().to_vec(),
                            value: value.as_bytes().to_vec(),
                            answer,
                        };
                        if queue.try_send(pending).is_err() {
                            "failed".to_string()
                        } else {
                            answered
                                .await
                                .unwrap_or_else(|_| "err leader stopped".to_string())
                        }
                    }
                    _ => "err bad request".to_string(),
                };
                if line.send(&answer).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// The group leader host.
pub(crate) async fn host(setup: LeaderSetup) -> turmoil::Result {
    let LeaderSetup {
        group,
        members,
        cost,
        breaks,
    } = setup;
    let mut kv = Group {
        members: crate::net::per_member(&members, KvClient::new)?,
        next: 0,
    };
    let mut epoch = kv.fence().await;
    // The highest global revision the group applied: its last block's end - 1.
    let mut applied = kv.applied_block().await.1 - 1;
    // Without the oracle (a broken variant), the group numbers its writes
    // itself, after its last applied block.
    let mut own_next = applied + 1;
    let mut sequencer = SequencerLink { group, line: None };
    if !breaks.no_oracle {
        sequencer.call(epoch, applied, &[], "stable").await;
    }
    let (queue, mut pending) = mpsc::channel::<Pending>(1024);
    tokio::spawn(accept(queue));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => tokio::select! {
                first = pending.recv() => match first {
                    Some(first) => first,
                    None => return Ok(()),
                },
                () = tokio::time::sleep(HEARTBEAT) => {
                    // An idle leader still talks to the sequencer: a restarted
                    // sequencer answers no stable revision until every group
                    // has said hello.
                    if !breaks.no_oracle {
                        sequencer.call(epoch, applied, &[], "stable").await;
                    }
                    continue;
                }
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            let Ok(next) = pending.try_recv() else { break };
            if batch.iter().any(|p| p.key == next.key) {
                // A Txn writes a key once: it starts the next batch.
                carried = Some(next);
                break;
            }
            batch.push(next);
        }
        let n = batch.len() as i64;
        let start = if breaks.no_oracle {
            let start = own_next;
            own_next += n;
            start
        } else {
            let answer = sequencer
                .call(epoch, applied, &[], &format!("alloc {group} {epoch} {n}"))
                .await;
            match answer
                .strip_prefix("ok ")
                .and_then(|s| s.parse::<i64>().ok())
            {
                Some(start) => start,
                None => {
                    // A stale epoch: another leader of this group exists.
                    for p in batch {
                        let _ = p.answer.send("failed".to_string());
                    }
                    epoch = kv.fence().await;
                    sequencer.line = None;
                    continue;
                }
            }
        };
        let end = start + n;
        cost.charge(batch.len()).await;
        let mut success: Vec<RequestOp> = batch
            .iter()
            .enumerate()
            .map(|(i, p)| put_op(p.key.clone(), encode_value(start + i as i64, &p.value)))
            .collect();
        success.push(put_op(
            BLOCK_KEY.to_vec(),
            format!("{start} {end}").into_bytes(),
        ));
        let request = TxnRequest {
            compare: vec![counter_is(EPOCH_KEY, epoch as i64)],
            success,
            failure: Vec::new(),
        };
        let done = match tokio::time::timeout(wire::ATTEMPT, kv.kv().txn(request)).await {
            Ok(Ok(reply)) if reply.get_ref().succeeded => true,
            _ => {
                kv.failed();
                // Unknown (or refused by a newer epoch): fence, then the
                // group's last block says whether this batch applied.
                epoch = kv.fence().await;
                kv.applied_block().await.0 == start
            }
        };
        if done {
            applied = end - 1;
        }
        for (i, p) in batch.into_iter().enumerate() {
            let answer = if done {
                format!("ok {}", start + i as i64)
            } else {
                "failed".to_string()
            };
            let _ = p.answer.send(answer);
        }
        // Answered once applied; the block resolves after (reads wait for it).
        if !breaks.no_oracle {
            sequencer
                .call(
                    epoch,
                    applied,
                    &[(start, end)],
                    &format!("resolve {group} {start} {applied}"),
                )
                .await;
        }
    }
}
