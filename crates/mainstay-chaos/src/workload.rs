//! Recording clients, each on one connection to one member, and one watcher per
//! member that resumes after every break where its last event left off.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mainstay_check::{Input, Operation, Outcome, Output, SessionEvent, SessionKind};
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::watch_client::WatchClient;
use mainstay_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest, compare, request_op, watch_request,
};
use tonic::Code;
use tonic::transport::Channel;

/// Deadline of one client request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// One watched event: revision, key, value (None for a delete).
pub type Watched = (i64, Vec<u8>, Option<Vec<u8>>);

/// What every client and watcher writes into.
#[derive(Default)]
pub struct Records {
    /// Linearizability history (serializable reads are left out: stale by design).
    pub history: Vec<Operation>,
    /// Every answer with its connection, for the session checks.
    pub sessions: Vec<SessionEvent>,
    /// Per watcher, the events as delivered.
    pub watched: Vec<Vec<Watched>>,
}

/// Shared records.
pub type Shared = Arc<Mutex<Records>>;

pub fn lock(records: &Shared) -> std::sync::MutexGuard<'_, Records> {
    records.lock().unwrap_or_else(|p| p.into_inner())
}

/// A channel to a member's client URL (lazily connected, one connection).
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .connect_lazy())
}

fn micros(start: Instant) -> u64 {
    start.elapsed().as_micros() as u64
}

/// Whether a failed write surely had no effect.
fn definite(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::OutOfRange | Code::NotFound | Code::FailedPrecondition
    )
}

/// A tiny deterministic generator (xorshift) for client choices and the fault
/// plan (a run is not replayable anyway: real time decides the interleaving).
pub struct Draw(pub u64);

impl Draw {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One client on one connection until `stop`.
pub async fn client(
    id: u64,
    url: String,
    keys: u64,
    start: Instant,
    stop: Instant,
    records: Shared,
) -> anyhow::Result<()> {
    let mut kv = KvClient::new(channel(&url)?);
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut epoch = 0u64;
    let mut counter = 0u64;
    let mut seen_mod = vec![0i64; keys as usize];
    while Instant::now() < stop {
        counter += 1;
        let index = draw.below(keys) as usize;
        let key = format!("k{index}").into_bytes();
        let value = format!("c{id}-{counter}").into_bytes();
        let choice = draw.below(100);
        let invoked = micros(start);
        let session = |records: &Shared, member: u64, kind: SessionKind| {
            record_session(records, id, member, invoked, kind);
        };
        let (input, outcome) = if choice < 35 {
            let request = PutRequest {
                key: key.clone(),
                value: value.clone().into(),
                ..Default::default()
            };
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, kv.put(request)).await {
                Ok(Ok(reply)) => {
                    let header = reply.into_inner().header.unwrap_or_default();
                    session(
                        &records,
                        header.member_id,
                        SessionKind::Write {
                            revision: header.revision,
                        },
                    );
                    Outcome::Ok(Output::Put {
                        revision: header.revision,
                    })
                }
                Ok(Err(status)) if definite(status.code()) => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            // Read-your-writes probe: right after an acknowledged put, half the
            // time, a serializable read on the same connection. A member that
            // answered before applying the write itself shows an older
            // revision here (the session check).
            if matches!(outcome, Outcome::Ok(_)) && draw.below(2) == 0 {
                let probed = micros(start);
                let probe = RangeRequest {
                    key: key.clone(),
                    serializable: true,
                    ..Default::default()
                };
                if let Ok(Ok(reply)) = tokio::time::timeout(REQUEST_TIMEOUT, kv.range(probe)).await
                {
                    let header = reply.into_inner().header.unwrap_or_default();
                    record_session(
                        &records,
                        id,
                        header.member_id,
                        probed,
                        SessionKind::Read {
                            revision: header.revision,
                            serializable: true,
                        },
                    );
                }
            }
            (Input::Put { key, value }, outcome)
        } else if choice < 80 {
            // 30 % linearizable reads, 15 % serializable ones.
            let serializable = choice >= 65;
            let request = RangeRequest {
                key: key.clone(),
                serializable,
                ..Default::default()
            };
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, kv.range(request)).await {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    let header = reply.header.unwrap_or_default();
                    let value = reply
                        .kvs
                        .first()
                        .map(|kv| (kv.value.to_vec(), kv.mod_revision));
                    seen_mod[index] = value.as_ref().map_or(0, |(_, m)| *m);
                    session(
                        &records,
                        header.member_id,
                        SessionKind::Read {
                            revision: header.revision,
                            serializable,
                        },
                    );
                    Outcome::Ok(Output::Get {
                        value,
                        header_revision: header.revision,
                    })
                }
                _ => Outcome::Failed,
            };
            if serializable {
                pause(&mut draw).await;
                continue;
            }
            (Input::Get { key }, outcome)
        } else if choice < 85 {
            let request = DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let outcome =
                match tokio::time::timeout(REQUEST_TIMEOUT, kv.delete_range(request)).await {
                    Ok(Ok(reply)) => {
                        let reply = reply.into_inner();
                        let header = reply.header.unwrap_or_default();
                        session(
                            &records,
                            header.member_id,
                            SessionKind::Write {
                                revision: header.revision,
                            },
                        );
                        Outcome::Ok(Output::Delete {
                            deleted: reply.deleted > 0,
                            revision: header.revision,
                        })
                    }
                    Ok(Err(status)) if definite(status.code()) => Outcome::Failed,
                    _ => Outcome::Unknown,
                };
            (Input::Delete { key }, outcome)
        } else {
            let expected = seen_mod[index];
            let request = TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(compare::TargetUnion::ModRevision(expected)),
                    range_end: Vec::new(),
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value: value.clone().into(),
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            let outcome = match tokio::time::timeout(REQUEST_TIMEOUT, kv.txn(request)).await {
                Ok(Ok(reply)) => {
                    let reply = reply.into_inner();
                    let header = reply.header.unwrap_or_default();
                    session(
                        &records,
                        header.member_id,
                        SessionKind::Write {
                            revision: header.revision,
                        },
                    );
                    Outcome::Ok(Output::Txn {
                        succeeded: reply.succeeded,
                        revision: header.revision,
                    })
                }
                Ok(Err(status)) if definite(status.code()) => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            (
                Input::Txn {
                    guards: vec![(key.clone(), expected)],
                    puts: vec![(key, value)],
                },
                outcome,
            )
        };
        let unknown = matches!(outcome, Outcome::Unknown);
        lock(&records).history.push(Operation {
            client: id * 1000 + epoch,
            input,
            invoked,
            returned: micros(start),
            outcome,
        });
        if unknown {
            // It may still land later: go on under a fresh identity.
            epoch += 1;
        }
        pause(&mut draw).await;
    }
    Ok(())
}

async fn pause(draw: &mut Draw) {
    tokio::time::sleep(Duration::from_millis(10 + draw.below(30))).await;
}

/// Watches every key from revision 1 on one member until `stop`, resuming
/// after every break at the revision after the last one delivered.
pub async fn watcher(slot: usize, url: String, stop: Instant, records: Shared) {
    let mut next = 1i64;
    while Instant::now() < stop {
        let Ok(channel) = channel(&url) else { return };
        let mut client = WatchClient::new(channel);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    start_revision: next,
                    ..Default::default()
                },
            )),
        };
        if sender.send(create).await.is_err() {
            return;
        }
        let requests = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let left = stop.saturating_duration_since(Instant::now());
        let Ok(Ok(response)) = tokio::time::timeout(left, client.watch(requests)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut stream = response.into_inner();
        loop {
            let left = stop.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.message()).await {
                Ok(Ok(Some(reply))) => {
                    if reply.canceled {
                        break;
                    }
                    let mut records = lock(&records);
                    for event in reply.events {
                        let Some(kv) = event.kv else { continue };
                        let value = (event.r#type == 0).then(|| kv.value.to_vec());
                        next = kv.mod_revision + 1;
                        records.watched[slot].push((kv.mod_revision, kv.key, value));
                    }
                }
                Ok(_) => break,
                Err(_) => return,
            }
        }
        drop(sender);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Adds one answer to the session log (an answer without a member id, 0,
/// names no session).
fn record_session(records: &Shared, client: u64, member: u64, invoked: u64, kind: SessionKind) {
    if member != 0 {
        lock(records).sessions.push(SessionEvent {
            client,
            member,
            invoked,
            kind,
        });
    }
}
