//! Incoming peer traffic: the `RaftPeer` gRPC service handing messages to openraft.

use futures::StreamExt;
use mainstay_proto::peer::raft_peer_server::{RaftPeer, RaftPeerServer};
use mainstay_proto::peer::{
    ForwardRequest, ForwardResponse, ForwardWritesRequest, ForwardWritesResponse, MembersRequest,
    MembersResponse, RaftPayload, ReadIndexRequest, ReadIndexResponse, SnapshotChunk,
};
use openraft::EntryPayload;
use openraft::alias::{EntryOf, SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError,
    TransferLeaderRequest, VoteRequest,
};
use openraft::vote::RaftLeaderId;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

use crate::codec::{decode_message, encode_message};
use crate::membership_rules::MemberChange;
use crate::network::PEER_MESSAGE_BYTES_MAX;
use crate::proposal::Proposal;
use crate::replica::{ReadIndexReply, Replica};
use crate::type_config::{MemberNode, TypeConfig};

/// Largest snapshot accepted from a leader.
const SNAPSHOT_BYTES_MAX: usize = 16 << 30;

/// The peer service; see `Replica::peer_service`.
pub struct PeerService {
    pub(crate) replica: Replica,
}

fn reply<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    encode_message(value)
        .map(|payload| Response::new(RaftPayload { payload, to: 0 }))
        .map_err(Status::internal)
}

fn forward_reply<T: Serialize>(value: &T) -> Result<Response<ForwardResponse>, Status> {
    encode_message(value)
        .map(|result| Response::new(ForwardResponse { result }))
        .map_err(Status::internal)
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    decode_message(payload).map_err(Status::invalid_argument)
}

/// Refuses entries whose commands do not decode, before any reaches the log:
/// a peer's garbage changes nothing.
fn check_entries(entries: &[EntryOf<TypeConfig>]) -> Result<(), Status> {
    for entry in entries {
        if let EntryPayload::Normal(proposal) = &entry.payload {
            proposal.check().map_err(|error| {
                Status::invalid_argument(format!("log entry {}: {error}", entry.log_id.index))
            })?;
        }
    }
    Ok(())
}

impl Replica {
    /// The peer gRPC service to serve on the peer port.
    pub fn peer_service(&self) -> RaftPeerServer<PeerService> {
        RaftPeerServer::new(PeerService {
            replica: self.clone(),
        })
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX)
    }
}

/// Refuses a message addressed to another member id (see `RaftPayload.to`).
fn addressed_to(replica: &Replica, to: u64) -> Result<(), Status> {
    let me = replica.member_id();
    if to != 0 && to != me {
        return Err(Status::failed_precondition(format!(
            "message for member {to:x} reached member {me:x}"
        )));
    }
    Ok(())
}

impl PeerService {
    /// Reads a leader's snapshot stream and installs it; `from` is set to the
    /// leader's id once the header is read.
    async fn receive_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
        from: &mut Option<u64>,
    ) -> Result<Result<SnapshotResponse<TypeConfig>, String>, Status> {
        let mut stream = request.into_inner();
        let mut header = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if header.is_none() {
                self.addressed_to_me(chunk.to)?;
                let decoded: (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
                    decode(&chunk.header)?;
                *from = Some(*decoded.0.leader_id().node_id());
                header = Some(decoded);
            }
            if data.len() + chunk.data.len() > SNAPSHOT_BYTES_MAX {
                return Err(Status::resource_exhausted("snapshot too large"));
            }
            data.extend_from_slice(&chunk.data);
        }
        let Some((vote, meta)) = header else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        };
        let result = self
            .replica
            .inner
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        Ok(result)
    }

    /// Refuses a message addressed to another member id (see `RaftPayload.to`).
    fn addressed_to_me(&self, to: u64) -> Result<(), Status> {
        addressed_to(&self.replica, to)
    }

    /// Checks the address and decodes the payload.
    fn open<T: serde::de::DeserializeOwned>(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<T, Status> {
        let request = request.into_inner();
        self.addressed_to_me(request.to)?;
        decode(&request.payload)
    }
}

/// openraft's answers to a stream of AppendEntries messages.
type AppendAnswers = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<
                    openraft::raft::StreamAppendResult<TypeConfig>,
                    openraft::errors::Fatal<TypeConfig>,
                >,
            > + Send
            + 'static,
    >,
>;

/// One AppendEntries message of an `AppendStream`, checked: for this member,
/// decodable, every command in it decodable.
fn open_append(
    replica: &Replica,
    request: RaftPayload,
) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    addressed_to(replica, request.to)?;
    // The entries' commands are slices of the message, not copies of it.
    let payload = bytes::Bytes::from(request.payload);
    let rpc: AppendEntriesRequest<TypeConfig> =
        mainstay_mvcc::shared_bytes::decode(&payload, decode)?;
    check_entries(&rpc.entries)?;
    Ok(rpc)
}

/// Serves an `AppendStream` pipelined: each message goes to openraft as soon
/// as it arrives (`Raft::stream_append`), not after the previous one is
/// answered, so a commit reaches the state machine while the entries before
/// it are still being written; answers go back one per message, in order. A
/// refused message ends the stream with its status after the answers to the
/// messages before it; the stream also ends with the member.
async fn serve_appends(requests: Streaming<RaftPayload>, replica: Replica) -> AppendReplies {
    let refused = std::sync::Arc::new(std::sync::Mutex::new(None::<Status>));
    let input = futures::stream::unfold(
        Some((requests, replica.clone(), refused.clone())),
        |state| async move {
            let (mut requests, replica, refused) = state?;
            let message = tokio::select! {
                message = requests.message() => message,
                _ = replica.stopped() => return None,
            };
            let checked = match message {
                Ok(Some(request)) => open_append(&replica, request),
                Ok(None) => return None,
                Err(status) => Err(status),
            };
            match checked {
                Ok(rpc) => Some((rpc, Some((requests, replica, refused)))),
                Err(status) => {
                    *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                    None
                }
            }
        },
    );
    let stopping = replica.clone();
    // openraft spawns the task that hands the messages to its core, and its
    // runtime derives a spawned task's random seed from the caller's scope
    // (see `Runtime`): this handler is not one of openraft's tasks, so it
    // enters the member's seed (the task draws nothing random).
    let raft = replica.inner.raft.clone();
    let answers = crate::type_config::Runtime::scope(replica.inner.config.seed, async move {
        let answers: AppendAnswers = Box::pin(raft.stream_append(Box::pin(input)));
        answers
    })
    .await;
    let answers = answers
        .map(move |result| {
            let result = result
                .map(|appended| {
                    if !matches!(appended, Err(StreamAppendError::HigherVote(_))) {
                        // A leader this member accepts just reached it.
                        replica.note_leader_contact();
                    }
                    AppendEntriesResponse::from(appended)
                })
                .map_err(|fatal| fatal.to_string());
            encode_message(&result)
                .map(|payload| RaftPayload { payload, to: 0 })
                .map_err(Status::internal)
        })
        .take_until(Box::pin(async move { stopping.stopped().await }));
    let refusal =
        futures::stream::once(
            async move { refused.lock().unwrap_or_else(|p| p.into_inner()).take() },
        )
        .filter_map(|status| std::future::ready(status.map(Err)));
    Box::pin(answers.chain(refusal))
}

/// One batch of a `ForwardWriteStream`: the leader proposes every write and
/// answers each; a malformed batch ends the stream.
async fn serve_forward_batch(
    replica: &Replica,
    request: ForwardWritesRequest,
) -> Result<ForwardWritesResponse, Status> {
    if request.commands.len() > crate::write_batches::BATCH_WRITES_MAX {
        return Err(Status::invalid_argument("too many writes in one batch"));
    }
    let commands = request
        .commands
        .into_iter()
        .map(|bytes| {
            let proposal = Proposal::from_stored(bytes);
            proposal.check().map_err(Status::invalid_argument)?;
            Ok(proposal)
        })
        .collect::<Result<Vec<_>, Status>>()?;
    let replies = replica.serve_forward_writes(commands).await;
    let replies = replies
        .iter()
        .map(encode_message)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Status::internal)?;
    Ok(ForwardWritesResponse { replies })
}

/// The replies of a request stream, one per request message, in order; ends
/// when the sender closes its side, when the member stops, or after the first
/// refused message (its status).
type Replies<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The replies of a `ForwardWriteStream`, one per batch.
type ForwardReplies = Replies<ForwardWritesResponse>;

/// Serves a request stream's messages one after another with `serve`. The
/// stream ends with the member: it must neither keep a stopped member's
/// stores open nor hold up a graceful stop.
fn serve_in_order<Req, Rep, Serve, Served>(
    requests: Streaming<Req>,
    replica: Replica,
    serve: Serve,
) -> Replies<Rep>
where
    Req: Send + 'static,
    Rep: Send + 'static,
    Serve: Fn(Replica, Req) -> Served + Send + Sync + 'static,
    Served: std::future::Future<Output = Result<Rep, Status>> + Send,
{
    let serve = std::sync::Arc::new(serve);
    Box::pin(futures::stream::unfold(
        Some((requests, replica)),
        move |state| {
            let serve = serve.clone();
            async move {
                let (mut requests, replica) = state?;
                let request = tokio::select! {
                    message = requests.message() => message.ok()??,
                    _ = replica.stopped() => return None,
                };
                match serve(replica.clone(), request).await {
                    Ok(reply) => Some((Ok(reply), Some((requests, replica)))),
                    Err(status) => Some((Err(status), None)),
                }
            }
        },
    ))
}

/// The replies of an `AppendStream`, one per AppendEntries message.
type AppendReplies = Replies<RaftPayload>;

#[tonic::async_trait]
impl RaftPeer for PeerService {
    type AppendStreamStream = AppendReplies;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftPayload>>,
    ) -> Result<Response<AppendReplies>, Status> {
        Ok(Response::new(
            serve_appends(request.into_inner(), self.replica.clone()).await,
        ))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let (pre_vote, rpc): (bool, VoteRequest<TypeConfig>) = self.open(request)?;
        let raft = &self.replica.inner.raft;
        let result = if pre_vote {
            raft.pre_vote(rpc).await
        } else {
            raft.vote(rpc).await
        };
        reply(&result.map_err(|e| e.to_string()))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        let started = std::time::Instant::now();
        let mut from = None;
        let result = self.receive_snapshot(request, &mut from).await;
        let network = &self.replica.metrics().network;
        let labels = vec![(
            "From",
            from.map_or_else(String::new, |id| format!("{id:x}")),
        )];
        match &result {
            Ok(Ok(_)) => {
                network
                    .snapshot_receive_success
                    .get_or_create(&labels)
                    .inc();
                network
                    .snapshot_receive_duration
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64());
            }
            Ok(Err(_)) | Err(_) => {
                network
                    .snapshot_receive_failures
                    .get_or_create(&labels)
                    .inc();
            }
        }
        reply(&result?)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = self.open(request)?;
        let result = self
            .replica
            .inner
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| e.to_string());
        reply(&result)
    }

    async fn publish(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let (id, node): (u64, MemberNode) = decode(&request.into_inner().command)?;
        forward_reply(&self.replica.serve_publish(id, node).await)
    }

    async fn change_members(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let change: MemberChange = decode(&request.into_inner().command)?;
        forward_reply(&self.replica.serve_membership(change).await)
    }

    async fn peer_hash(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let revision: i64 = decode(&request.into_inner().command)?;
        forward_reply(&self.replica.serve_peer_hash(revision).await)
    }

    async fn lease_time_left(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let id: i64 = decode(&request.into_inner().command)?;
        forward_reply(&self.replica.serve_lease_time_left(id))
    }

    type ForwardWriteStreamStream = ForwardReplies;

    async fn forward_write_stream(
        &self,
        request: Request<Streaming<ForwardWritesRequest>>,
    ) -> Result<Response<ForwardReplies>, Status> {
        // Batches are served one after another; a follower runs one stream
        // per batch sender.
        Ok(Response::new(serve_in_order(
            request.into_inner(),
            self.replica.clone(),
            |replica, request| async move { serve_forward_batch(&replica, request).await },
        )))
    }

    async fn members(
        &self,
        _request: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        let view = encode_message(&self.replica.cluster_view()).map_err(Status::internal)?;
        Ok(Response::new(MembersResponse { view }))
    }

    async fn read_index(
        &self,
        _request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        match self.replica.read_index_local().await {
            ReadIndexReply::Index(index) => Ok(Response::new(ReadIndexResponse {
                index,
                error: Vec::new(),
            })),
            other => {
                let error = encode_message(&other).map_err(Status::internal)?;
                Ok(Response::new(ReadIndexResponse { index: 0, error }))
            }
        }
    }
}

const _: () = assert!(PEER_MESSAGE_BYTES_MAX < SNAPSHOT_BYTES_MAX);
