//! The leader's side of pipelined appends against a scripted peer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use mainstay_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use mainstay_proto::peer::{
    ForwardRequest, ForwardResponse, ForwardWritesRequest, ForwardWritesResponse, MembersRequest,
    MembersResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use openraft::alias::{EntryOf, LogIdOf};
use openraft::errors::RPCError;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendError};
use openraft::{EntryPayload, Vote};
use tonic::{Request, Response, Status, Streaming};

use super::{PeerConnection, PeerNetwork, PeerPool};
use crate::codec::{decode_message, encode_message, log_id_from_record};
use crate::type_config::{MemberNode, TypeConfig};

/// How long the peer holds answers when the messages it waits for do not
/// come: only a leader that does not pipeline waits this long.
const HOLD_LIMIT: Duration = Duration::from_secs(5);

/// How the peer serves one `AppendStream`: it holds its answers until `hold`
/// messages have arrived (or `HOLD_LIMIT` passed with none), then answers
/// each with the next of `answers` (Success once they run out), in order.
#[derive(Clone)]
struct Script {
    hold: usize,
    answers: Vec<AppendEntriesResponse<TypeConfig>>,
}

/// A peer serving its Nth `AppendStream` by the Nth script (streams past the
/// last: every message answered at once, Success). `events` records "in N"
/// and "out N" as they happen.
struct ScriptedPeer {
    scripts: Vec<Script>,
    events: Arc<Mutex<Vec<String>>>,
    streams: Arc<AtomicUsize>,
}

type Replies<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

fn unused<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not scripted"))
}

#[tonic::async_trait]
impl RaftPeer for ScriptedPeer {
    type AppendStreamStream = Replies<RaftPayload>;
    type ForwardWriteStreamStream = Replies<ForwardWritesResponse>;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let n = self.streams.fetch_add(1, Ordering::SeqCst);
        let mut requests = request.into_inner();
        let (replies, outgoing) = tokio::sync::mpsc::channel(64);
        let Script { hold, answers } = self.scripts.get(n).cloned().unwrap_or(Script {
            hold: 1,
            answers: Vec::new(),
        });
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut received = 0;
            let mut answered = 0;
            loop {
                let held = received - answered;
                if held == 0 || received < hold {
                    let next = requests.message();
                    let arrived = if held == 0 {
                        Some(next.await)
                    } else {
                        // Waited long enough (`None`): answer what is held.
                        tokio::time::timeout(HOLD_LIMIT, next).await.ok()
                    };
                    match arrived {
                        Some(Ok(Some(message))) => {
                            let _: AppendEntriesRequest<TypeConfig> =
                                decode_message(&message.payload).expect("an AppendEntries");
                            events
                                .lock()
                                .expect("events")
                                .push(format!("in {received}"));
                            received += 1;
                            continue;
                        }
                        Some(_) => return,
                        None => {}
                    }
                }
                let answer = answers
                    .get(answered)
                    .cloned()
                    .unwrap_or(AppendEntriesResponse::Success);
                let result: Result<AppendEntriesResponse<TypeConfig>, String> = Ok(answer);
                let payload = encode_message(&result).expect("encode");
                events
                    .lock()
                    .expect("events")
                    .push(format!("out {answered}"));
                answered += 1;
                if replies
                    .send(Ok(RaftPayload { payload, to: 0 }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(outgoing),
        )))
    }

    async fn vote(&self, _: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        unused()
    }

    async fn install_snapshot(
        &self,
        _: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        unused()
    }

    async fn transfer_leader(
        &self,
        _: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        unused()
    }

    async fn publish(
        &self,
        _: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        unused()
    }

    async fn change_members(
        &self,
        _: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        unused()
    }

    async fn lease_time_left(
        &self,
        _: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        unused()
    }

    async fn forward_write_stream(
        &self,
        _: Request<Streaming<ForwardWritesRequest>>,
    ) -> Result<Response<Self::ForwardWriteStreamStream>, Status> {
        unused()
    }

    async fn read_index(
        &self,
        _: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        unused()
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        unused()
    }

    async fn peer_hash(
        &self,
        _: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        unused()
    }
}

/// A scripted peer on a loopback port and a connection to it; the peer's
/// event log and count of streams opened.
async fn connect(
    scripts: Vec<Script>,
) -> (PeerConnection, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let events = Arc::new(Mutex::new(Vec::new()));
    let streams = Arc::new(AtomicUsize::new(0));
    let peer = ScriptedPeer {
        scripts,
        events: events.clone(),
        streams: streams.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftPeerServer::new(peer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dial: crate::peer_channel::Dial = Arc::new(|url: &str| {
        tonic::transport::Endpoint::from_shared(url.to_string())
            .map(|endpoint| endpoint.connect_lazy())
            .map_err(|e| e.to_string())
    });
    let mut network = PeerNetwork {
        pool: PeerPool::new(dial),
        metrics: mainstay_metrics::Metrics::new("test", 1),
        health: Arc::default(),
        heartbeat: Duration::from_millis(100),
    };
    let node = MemberNode {
        name: "peer".to_string(),
        peer_urls: vec![format!("http://{address}")],
        client_urls: Vec::new(),
    };
    (network.new_client(2, &node).await, events, streams)
}

fn log_id(index: u64) -> LogIdOf<TypeConfig> {
    log_id_from_record(&mainstay_storage::LogIdRecord {
        term: 1,
        node_id: 1,
        index,
    })
}

/// The leader's message carrying entry `index` after `index - 1`.
fn append(index: u64) -> AppendEntriesRequest<TypeConfig> {
    let entry: EntryOf<TypeConfig> = openraft::Entry {
        log_id: log_id(index),
        payload: EntryPayload::Blank,
    };
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: index.checked_sub(1).filter(|i| *i > 0).map(log_id),
        leader_commit: None,
        entries: vec![entry],
    }
}

/// The leader's commit update after entry `index`: no entries.
fn commit(index: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(log_id(index)),
        leader_commit: Some(log_id(index)),
        entries: Vec::new(),
    }
}

fn option() -> RPCOption {
    // Long enough that no answer here is late.
    RPCOption::new(Duration::from_secs(60))
}

type Item = Result<
    Result<Option<LogIdOf<TypeConfig>>, StreamAppendError<TypeConfig>>,
    RPCError<TypeConfig>,
>;

async fn run(
    connection: &mut PeerConnection,
    requests: Vec<AppendEntriesRequest<TypeConfig>>,
) -> Vec<Item> {
    let input = futures::stream::iter(requests);
    let answers = connection
        .stream_append(input, option())
        .await
        .expect("a stream");
    answers.collect().await
}

#[tokio::test]
async fn commit_updates_leave_before_the_entries_are_answered_and_answers_keep_their_order() {
    // The peer answers nothing until it holds three messages: a leader that
    // waited for each answer before the next would stall for `HOLD_LIMIT`
    // per message and the log would interleave.
    let (mut connection, events, streams) = connect(vec![Script {
        hold: 3,
        answers: Vec::new(),
    }])
    .await;
    let results = run(&mut connection, vec![append(1), commit(1), commit(1)]).await;
    let acknowledged: Vec<_> = results
        .into_iter()
        .map(|item| item.expect("answered").expect("accepted"))
        .collect();
    assert_eq!(acknowledged, vec![Some(log_id(1)); 3]);
    assert_eq!(
        *events.lock().expect("events"),
        vec!["in 0", "in 1", "in 2", "out 0", "out 1", "out 2"]
    );
    // A lone message (openraft's heartbeats) goes on the same gRPC stream.
    let response = connection
        .append_entries(append(4), option())
        .await
        .expect("answered");
    assert_eq!(response, AppendEntriesResponse::Success);
    assert_eq!(streams.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refusal_ends_the_pipeline_and_the_next_call_opens_a_new_stream() {
    // The second of three messages conflicts: the third, already sent, is
    // not reported (its answer belongs to a log the peer refused), and the
    // next call does not read that stale answer as its own.
    let (mut connection, _events, streams) = connect(vec![Script {
        hold: 3,
        answers: vec![
            AppendEntriesResponse::Success,
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::Success,
        ],
    }])
    .await;
    let results = run(&mut connection, vec![append(1), commit(1), commit(1)]).await;
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].as_ref().expect("answered"), &Ok(Some(log_id(1))));
    assert_eq!(
        results[1].as_ref().expect("answered"),
        &Err(StreamAppendError::Conflict(log_id(1)))
    );
    let results = run(&mut connection, vec![append(2), commit(2), commit(2)]).await;
    assert_eq!(results.len(), 3, "{results:?}");
    assert!(
        results.iter().all(|r| matches!(r, Ok(Ok(_)))),
        "{results:?}"
    );
    assert_eq!(streams.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_conflict_before_the_first_entry_is_a_network_error() {
    // Nothing precedes entry 1, so no log conflicts there: a peer that says
    // so is broken, and the leader must not take it as a conflict.
    let (mut connection, _events, _streams) = connect(vec![Script {
        hold: 1,
        answers: vec![AppendEntriesResponse::Conflict],
    }])
    .await;
    let results = run(&mut connection, vec![append(1)]).await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(
        matches!(results[0], Err(RPCError::Network(_))),
        "{results:?}"
    );
}

#[tokio::test]
async fn entries_wait_for_the_entries_in_flight_and_leave_merged() {
    // Three requests with entries, the peer answering at once: the second
    // and third wait for the first's answer and leave as one message, yet
    // each request gets its own result.
    let (mut connection, events, _streams) = connect(vec![Script {
        hold: 1,
        answers: Vec::new(),
    }])
    .await;
    let results = run(&mut connection, vec![append(1), append(2), append(3)]).await;
    let acknowledged: Vec<_> = results
        .into_iter()
        .map(|item| item.expect("answered").expect("accepted"))
        .collect();
    assert_eq!(
        acknowledged,
        vec![Some(log_id(1)), Some(log_id(2)), Some(log_id(3))]
    );
    assert_eq!(
        *events.lock().expect("events"),
        vec!["in 0", "out 0", "in 1", "out 1"]
    );
}
