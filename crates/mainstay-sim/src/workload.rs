//! Simulated clients: each issues one request at a time to a random member and
//! records invocation, completion and answer. A request that times out or fails
//! in a way that does not prove it had no effect is recorded as unknown; no
//! write is ever retried blindly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_check::{Input, Operation, Outcome, Output, SessionEvent, SessionKind};
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use tonic::Code;

use crate::rng::Rng;

/// Deadline of one client request in simulated time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest pause between two requests of one client.
pub const THINK_MS_MAX: u64 = 40;

/// The shared, growing history.
pub type History = Arc<Mutex<Vec<Operation>>>;

/// Every answer with its connection, for the session checks.
pub type SessionLog = Arc<Mutex<Vec<SessionEvent>>>;

pub(crate) fn now_micros() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_micros() as u64)
}

/// Whether a failed write surely had no effect (refused before proposal).
fn definite(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::OutOfRange | Code::NotFound | Code::FailedPrecondition
    )
}

/// Runs one client until `stop_micros` of simulated time.
pub async fn client(
    id: u64,
    members: Vec<String>,
    keys: u64,
    seed: u64,
    stop_micros: u64,
    history: History,
    session_log: SessionLog,
) -> turmoil::Result {
    // A header's member id names the answering incarnation: a replaced member
    // starts a new session.
    let record = |member: u64, invoked: u64, kind: SessionKind| {
        if member != 0 {
            session_log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(SessionEvent {
                    client: id,
                    member,
                    invoked,
                    kind,
                });
        }
    };
    let mut rng = Rng::new(seed);
    let mut probe_rng = Rng::new(seed ^ 0x5e55_1011_0000_0000);
    let mut clients = crate::net::per_member(&members, KvClient::new)?;
    let mut counter = 0u64;
    let mut epoch = 0u64;
    // The mod revision this client last saw per key, for CAS guards.
    let mut seen_mod = vec![0i64; keys as usize];
    while now_micros() < stop_micros {
        counter += 1;
        let target = rng.below(clients.len() as u64) as usize;
        let kv = &mut clients[target];
        let key_index = rng.below(keys) as usize;
        let key = format!("k{key_index}").into_bytes();
        let value = format!("c{id}-{counter}").into_bytes();
        let choice = rng.below(100);
        let invoked = now_micros();
        let (input, outcome) = if choice < 35 {
            let input = Input::Put {
                key: key.clone(),
                value: value.clone(),
            };
            let request = PutRequest {
                key,
                value: value.into(),
                ..Default::default()
            };
            let reply = tokio::time::timeout(REQUEST_TIMEOUT, kv.put(request)).await;
            let outcome = match reply {
                Ok(Ok(r)) => {
                    let header = r.into_inner().header.unwrap_or_default();
                    let revision = header.revision;
                    record(header.member_id, invoked, SessionKind::Write { revision });
                    Outcome::Ok(Output::Put { revision })
                }
                Ok(Err(status)) if definite(status.code()) => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            (input, outcome)
        } else if choice < 75 {
            let serializable = choice >= 70;
            let request = RangeRequest {
                key: key.clone(),
                serializable,
                ..Default::default()
            };
            let reply = tokio::time::timeout(REQUEST_TIMEOUT, kv.range(request)).await;
            let outcome = match reply {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let value = r.kvs.first().map(|kv| (kv.value.to_vec(), kv.mod_revision));
                    seen_mod[key_index] = value.as_ref().map_or(0, |(_, m)| *m);
                    let header = r.header.unwrap_or_default();
                    let revision = header.revision;
                    record(
                        header.member_id,
                        invoked,
                        SessionKind::Read {
                            revision,
                            serializable,
                        },
                    );
                    Outcome::Ok(Output::Get {
                        value,
                        header_revision: revision,
                    })
                }
                _ => Outcome::Failed,
            };
            if serializable {
                // Serializable reads may be stale by design: not part of the check.
                continue;
            }
            (Input::Get { key }, outcome)
        } else if choice < 85 {
            let request = DeleteRangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let reply = tokio::time::timeout(REQUEST_TIMEOUT, kv.delete_range(request)).await;
            let outcome = match reply {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let header = r.header.unwrap_or_default();
                    let revision = header.revision;
                    record(header.member_id, invoked, SessionKind::Write { revision });
                    Outcome::Ok(Output::Delete {
                        deleted: r.deleted > 0,
                        revision,
                    })
                }
                Ok(Err(status)) if definite(status.code()) => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            (Input::Delete { key }, outcome)
        } else {
            let expected = seen_mod[key_index];
            let input = Input::Txn {
                guards: vec![(key.clone(), expected)],
                puts: vec![(key.clone(), value.clone())],
            };
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
                        key,
                        value: value.into(),
                        ..Default::default()
                    })),
                }],
                failure: Vec::new(),
            };
            let reply = tokio::time::timeout(REQUEST_TIMEOUT, kv.txn(request)).await;
            let outcome = match reply {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    let header = r.header.unwrap_or_default();
                    let revision = header.revision;
                    record(header.member_id, invoked, SessionKind::Write { revision });
                    Outcome::Ok(Output::Txn {
                        succeeded: r.succeeded,
                        revision,
                    })
                }
                Ok(Err(status)) if definite(status.code()) => Outcome::Failed,
                _ => Outcome::Unknown,
            };
            (input, outcome)
        };
        let returned = now_micros();
        let unknown = matches!(outcome, Outcome::Unknown);
        // Read-your-writes probe: right after an acknowledged write, half the
        // time, a serializable read on the same connection (a member that
        // answered before applying is caught here). Its own random stream, so
        // the workload's draws stay as they were.
        let acknowledged_write = input.writes() && matches!(outcome, Outcome::Ok(_));
        if acknowledged_write && probe_rng.below(2) == 0 {
            let probe = RangeRequest {
                key: input.keys().first().cloned().unwrap_or_default(),
                serializable: true,
                ..Default::default()
            };
            let probed = now_micros();
            if let Ok(Ok(r)) = tokio::time::timeout(REQUEST_TIMEOUT, kv.range(probe)).await {
                let header = r.into_inner().header.unwrap_or_default();
                record(
                    header.member_id,
                    probed,
                    SessionKind::Read {
                        revision: header.revision,
                        serializable: true,
                    },
                );
            }
        }
        history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Operation {
                client: id * 1000 + epoch,
                input,
                invoked,
                returned,
                outcome,
            });
        if unknown {
            // A request of unknown outcome may still land later: the client goes
            // on under a fresh identity, as in Knossos.
            epoch += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(THINK_MS_MAX))).await;
    }
    Ok(())
}
