//! Outgoing peer traffic: openraft's network traits over our `RaftPeer` gRPC
//! service. Every call has a deadline (a partition can swallow a reply).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use mainstay_proto::peer::raft_peer_client::RaftPeerClient;
use mainstay_proto::peer::{RaftPayload, SnapshotChunk};
use openraft::OptionalSend;
use openraft::alias::{LogIdOf, SnapshotOf, VoteOf};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendError,
    StreamAppendResult, TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::peer_channel::PeerChannel;

use crate::peer_channel::Dial;

use crate::codec::{decode_message, encode_message, encode_message_within};
use crate::type_config::{MemberNode, TypeConfig};

/// Snapshot bytes per streamed chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest peer message accepted (a batch of entries or one snapshot chunk).
pub const PEER_MESSAGE_BYTES_MAX: usize = 256 << 20;

/// Channels to peers, keyed by the dialled URL; shared by raft and forwarding.
#[derive(Clone)]
pub struct PeerPool {
    dial: Dial,
    channels: Arc<Mutex<BTreeMap<String, Channel>>>,
}

impl PeerPool {
    /// A pool dialling with `dial`.
    pub fn new(dial: Dial) -> Self {
        PeerPool {
            dial,
            channels: Arc::default(),
        }
    }

    /// Forgets the channel to `node`, so the next call dials a new connection.
    pub fn evict(&self, node: &MemberNode) {
        if let Some(url) = node.peer_urls.first() {
            self.channels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(url);
        }
    }

    /// A client for `node` (connected lazily, reused).
    pub fn client(&self, node: &MemberNode) -> Result<RaftPeerClient<PeerChannel>, String> {
        let url = node
            .peer_urls
            .first()
            .ok_or_else(|| format!("member {} has no peer URL", node.name))?;
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(url) {
            Some(channel) => channel.clone(),
            None => {
                let channel = (self.dial)(url)?;
                channels.insert(url.clone(), channel.clone());
                channel
            }
        };
        Ok(RaftPeerClient::new(PeerChannel::new(channel))
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX))
    }
}

/// Builds one `PeerConnection` per target, as openraft asks.
#[derive(Clone)]
pub struct PeerNetwork {
    /// The shared channel pool.
    pub pool: PeerPool,
    /// Bytes, round trips and failures per peer.
    pub metrics: mainstay_metrics::SharedMetrics,
    /// Contacts per peer.
    pub health: std::sync::Arc<crate::peer_health::PeerHealth>,
    /// `--heartbeat-interval`: a leader's appends to a reachable peer more
    /// than twice this apart are late (etcd's heartbeat send failure).
    pub heartbeat: Duration,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &MemberNode) -> Self::Network {
        PeerConnection {
            target,
            node: node.clone(),
            pool: self.pool.clone(),
            append: None,
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            heartbeat: self.heartbeat,
            last_answered_append: None,
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    target: u64,
    node: MemberNode,
    pool: PeerPool,
    /// The open `AppendStream`, between calls (taken out during one, so a call
    /// abandoned halfway drops it rather than leave a reply unread).
    append: Option<AppendStream>,
    metrics: mainstay_metrics::SharedMetrics,
    health: std::sync::Arc<crate::peer_health::PeerHealth>,
    heartbeat: Duration,
    /// When the peer's answer to the last append arrived (a slow peer does
    /// not make the next send late).
    last_answered_append: Option<tokio::time::Instant>,
}

/// One `AppendStream` to a peer: a request in, exactly one reply out, in order.
struct AppendStream {
    requests: mpsc::Sender<RaftPayload>,
    replies: tonic::Streaming<RaftPayload>,
}

/// AppendEntries messages sent on one stream and not yet answered, at most.
pub const APPENDS_IN_FLIGHT_MAX: usize = 8;

/// Command bytes past which a held message takes no more requests.
const HELD_BYTES_MAX: usize = 4 << 20;

/// What one answer acknowledges: openraft's request for `(prev, last]`.
#[derive(Clone, Copy)]
struct Part {
    prev: Option<LogIdOf<TypeConfig>>,
    last: Option<LogIdOf<TypeConfig>>,
}

impl Part {
    fn of(rpc: &AppendEntriesRequest<TypeConfig>) -> Part {
        Part {
            prev: rpc.prev_log_id,
            last: rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id),
        }
    }
}

/// One message: openraft's requests, consecutive ones merged into one.
struct Message {
    rpc: AppendEntriesRequest<TypeConfig>,
    parts: Vec<Part>,
    bytes: usize,
}

impl Message {
    fn new(rpc: AppendEntriesRequest<TypeConfig>) -> Message {
        Message {
            parts: vec![Part::of(&rpc)],
            bytes: command_bytes(&rpc),
            rpc,
        }
    }

    /// Takes `rpc` in if it continues this message's entries for the same
    /// leader and the message is not full; gives it back otherwise.
    fn merge(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Option<AppendEntriesRequest<TypeConfig>> {
        let last = self.parts.last().and_then(|part| part.last);
        if rpc.prev_log_id != last || rpc.vote != self.rpc.vote || self.bytes >= HELD_BYTES_MAX {
            return Some(rpc);
        }
        self.bytes += command_bytes(&rpc);
        self.parts.push(Part::of(&rpc));
        self.rpc.entries.extend(rpc.entries);
        self.rpc.leader_commit = self.rpc.leader_commit.max(rpc.leader_commit);
        None
    }
}

fn command_bytes(rpc: &AppendEntriesRequest<TypeConfig>) -> usize {
    rpc.entries
        .iter()
        .map(|entry| match &entry.payload {
            openraft::EntryPayload::Normal(proposal) => proposal.len(),
            _ => 0,
        })
        .sum()
}

/// One sent, unanswered message.
struct InFlight {
    parts: Vec<Part>,
    carries_entries: bool,
    bytes: usize,
    sent: tokio::time::Instant,
}

/// What one `stream_append` call drives: openraft's requests out on the
/// `AppendStream`, the peer's answers back in order, one result per request.
///
/// A request without entries (a commit update) leaves at once, up to
/// `APPENDS_IN_FLIGHT_MAX` unanswered messages: a commit reaches a follower
/// while the entries it commits are still being written there (etcd pipelines
/// its appends too). Entries travel one message at a time: requests that come
/// while entries are in flight wait, merged into one message, and leave when
/// the answer comes, so a busy leader still sends few large messages.
///
/// Ends when openraft's input ends and every message is answered (the gRPC
/// stream is kept for the next call), or at the first failure or refusal (the
/// gRPC stream is dropped with it, so no late answer is ever read as another
/// message's).
struct Pipeline<'s, S> {
    connection: &'s mut PeerConnection,
    /// Opened (or taken from the connection) when the first message goes out:
    /// a failure to open is that message's failure, as for any other.
    stream: Option<AppendStream>,
    /// `None` once openraft's input ended.
    input: Option<S>,
    /// Requests waiting for entries in flight to be answered, in order.
    held: VecDeque<Message>,
    in_flight: VecDeque<InFlight>,
    /// Results not yet handed to openraft (a merged message's answer
    /// answers each of its requests).
    ready: VecDeque<StreamAppendResult<TypeConfig>>,
    /// How long the oldest message may wait for its answer.
    ttl: Duration,
}

type AppendItem = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

impl<'s, S> Pipeline<'s, S>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    /// The next result (sending whatever openraft hands over meanwhile), and
    /// the pipeline if it goes on.
    async fn next_reply(mut self) -> Option<(AppendItem, Option<Self>)> {
        loop {
            if let Err(error) = self.send_due().await {
                return Some((Err(error), None));
            }
            if let Some(result) = self.ready.pop_front() {
                return Some((Ok(result), Some(self)));
            }
            let Some(oldest) = self.in_flight.front().map(|m| m.sent) else {
                // Nothing to wait for but the next request.
                let Some(input) = self.input.as_mut() else {
                    self.connection.append = self.stream;
                    return None;
                };
                match input.next().await {
                    Some(rpc) => self.hold(rpc),
                    None => self.input = None,
                }
                continue;
            };
            let room = self.in_flight.len() + self.held.len() < APPENDS_IN_FLIGHT_MAX;
            let Some(stream) = self.stream.as_mut() else {
                // Messages in flight went out on a stream.
                return Some((Err(network_error("append stream lost")), None));
            };
            tokio::select! {
                biased;
                reply = stream.replies.message() => {
                    let (item, goes_on) = self.answer(reply);
                    return Some((item, goes_on.then_some(self)));
                }
                rpc = next_of(&mut self.input), if room => match rpc {
                    Some(rpc) => self.hold(rpc),
                    None => self.input = None,
                },
                () = tokio::time::sleep_until(oldest + self.ttl) => {
                    return Some((Err(self.timed_out()), None));
                }
            }
        }
    }

    /// Queues `rpc` behind the held messages, merged into the last if it can.
    fn hold(&mut self, rpc: AppendEntriesRequest<TypeConfig>) {
        let rpc = match self.held.back_mut() {
            Some(last) => last.merge(rpc),
            None => Some(rpc),
        };
        if let Some(rpc) = rpc {
            self.held.push_back(Message::new(rpc));
        }
    }

    /// Sends the held messages that may leave now: in order, while no
    /// entries are in flight or the next carries none.
    async fn send_due(&mut self) -> Result<(), RPCError<TypeConfig>> {
        while let Some(next) = self.held.front() {
            let entries_in_flight = self.in_flight.iter().any(|m| m.carries_entries);
            if entries_in_flight && !next.rpc.entries.is_empty() {
                break;
            }
            if let Some(message) = self.held.pop_front() {
                self.send_in_time(message).await?;
            }
        }
        Ok(())
    }

    /// The peer did not answer (or take a message) within `ttl`.
    fn timed_out(&mut self) -> RPCError<TypeConfig> {
        // The connection may be half-open (the peer died without a reset):
        // the next call dials afresh.
        let connection = &mut *self.connection;
        connection.pool.evict(&connection.node);
        connection.append_failed();
        unreachable(format!("peer {} timed out", connection.target))
    }

    /// `send` within `ttl`: opening the stream or handing a message to a
    /// peer that stopped reading can wait forever.
    async fn send_in_time(&mut self, message: Message) -> Result<(), RPCError<TypeConfig>> {
        match tokio::time::timeout(self.ttl, self.send(message)).await {
            Ok(sent) => sent,
            Err(_) => Err(self.timed_out()),
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), RPCError<TypeConfig>> {
        let connection = &mut *self.connection;
        let payload = RaftPayload {
            // Sized for the commands plus each entry's log id and framing.
            payload: encode_message_within(
                &message.rpc,
                message.bytes + 32 * message.rpc.entries.len() + 128,
            )
            .map_err(network_error)?,
            to: connection.target,
        };
        let stream = match self.stream.as_mut() {
            Some(stream) => stream,
            None => match connection.append_stream().await {
                Ok(stream) => self.stream.insert(stream),
                Err(error) => {
                    connection.append_failed();
                    return Err(error);
                }
            },
        };
        let now = tokio::time::Instant::now();
        if self.in_flight.is_empty() {
            connection.check_late(now);
        }
        self.in_flight.push_back(InFlight {
            parts: message.parts,
            carries_entries: !message.rpc.entries.is_empty(),
            bytes: payload.payload.len(),
            sent: now,
        });
        if stream.requests.send(payload).await.is_err() {
            connection.append_failed();
            return Err(unreachable(format!(
                "peer {}: append stream closed",
                connection.target
            )));
        }
        Ok(())
    }

    /// The oldest message's answer: the first of its requests' results (the
    /// rest wait in `ready`), and whether the pipeline goes on: not after a
    /// failure or refusal, nor after a partial success (the peer took less
    /// than the message held; openraft starts over from what it took).
    fn answer(&mut self, reply: Result<Option<RaftPayload>, tonic::Status>) -> (AppendItem, bool) {
        let connection = &mut *self.connection;
        let target = connection.target;
        let reply = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                connection.append_failed();
                let error = unreachable(format!("peer {target}: append stream ended"));
                return (Err(error), false);
            }
            Err(status) => {
                connection.append_failed();
                return (Err(status_error(target, &status)), false);
            }
        };
        let Some(message) = self.in_flight.pop_front() else {
            connection.append_failed();
            let error = network_error(format!("peer {target}: an answer to no message"));
            return (Err(error), false);
        };
        connection.answered(message.bytes, message.sent, reply.payload.len());
        let (Some(first), Some(whole_last)) = (
            message.parts.first(),
            message.parts.last().map(|part| part.last),
        ) else {
            return (Err(network_error("a message of no request")), false);
        };
        let item = append_result(target, &reply.payload, first.prev, whole_last);
        match item {
            Ok(Ok(matching)) if matching == whole_last => {
                // Every request of the message is taken.
                self.ready
                    .extend(message.parts[1..].iter().map(|part| Ok(part.last)));
                (Ok(Ok(first.last)), true)
            }
            other => (other, false),
        }
    }
}

/// A peer's answer to an AppendEntries message covering `(prev, last]`, as
/// openraft's stream result.
fn append_result(
    target: u64,
    payload: &[u8],
    prev: Option<LogIdOf<TypeConfig>>,
    last: Option<LogIdOf<TypeConfig>>,
) -> AppendItem {
    let decoded: Result<AppendEntriesResponse<TypeConfig>, String> =
        decode_message(payload).map_err(network_error)?;
    let response =
        decoded.map_err(|remote| RPCError::Unreachable(Unreachable::from_string(remote)))?;
    match response {
        AppendEntriesResponse::Success => Ok(Ok(last)),
        AppendEntriesResponse::PartialSuccess(matching) => Ok(Ok(matching)),
        AppendEntriesResponse::HigherVote(vote) => Ok(Err(StreamAppendError::HigherVote(vote))),
        AppendEntriesResponse::Conflict => match prev {
            Some(prev) => Ok(Err(StreamAppendError::Conflict(prev))),
            // Nothing precedes the first entry: no log can conflict there.
            None => Err(network_error(format!(
                "peer {target}: a conflict before the first entry"
            ))),
        },
    }
}

/// The next item of `input`; never ready once it ended.
async fn next_of<S>(input: &mut Option<S>) -> Option<S::Item>
where
    S: futures::Stream + Unpin,
{
    match input {
        Some(input) => input.next().await,
        None => std::future::pending().await,
    }
}

/// A failed peer call's status as openraft's error: Unavailable (the peer is
/// down or unreachable) makes openraft back off instead of retrying at once.
fn status_error(target: u64, status: &tonic::Status) -> RPCError<TypeConfig> {
    let text = format!("peer {target}: {}", status.message());
    if status.code() == tonic::Code::Unavailable {
        unreachable(text)
    } else {
        network_error(text)
    }
}

fn network_error(message: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(
        message.to_string(),
    )))
}

fn unreachable(message: String) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(message))
}

impl PeerConnection {
    /// The open `AppendStream`, or a new one.
    async fn append_stream(&mut self) -> Result<AppendStream, RPCError<TypeConfig>> {
        if let Some(stream) = self.append.take() {
            return Ok(stream);
        }
        let (requests, outgoing) = mpsc::channel(1);
        let replies = self
            .client()?
            .append_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .map_err(|status| status_error(self.target, &status))?
            .into_inner();
        Ok(AppendStream { requests, replies })
    }

    /// Records a call's bytes and round trip, or its failure.
    fn record(
        &self,
        sent: usize,
        started: tokio::time::Instant,
        reply: Result<RaftPayload, RPCError<TypeConfig>>,
    ) -> Result<RaftPayload, RPCError<TypeConfig>> {
        match &reply {
            Ok(reply) => {
                self.contact(sent, reply.payload.len(), started.elapsed());
            }
            Err(_) => self.failed(),
        }
        reply
    }

    /// A call's answer: its bytes both ways and its round trip.
    fn contact(&self, sent: usize, received: usize, rtt: Duration) {
        self.metrics.peer_sent(self.target, sent);
        self.metrics.peer_received(self.target, received);
        self.metrics.peer_rtt(self.target, rtt);
        self.health.contact(self.target, rtt);
    }

    /// An append's answer (see `contact`).
    fn answered(&mut self, sent: usize, started: tokio::time::Instant, received: usize) {
        let now = tokio::time::Instant::now();
        self.contact(sent, received, now.duration_since(started));
        self.last_answered_append = Some(now);
    }

    /// A call that failed.
    fn failed(&self) {
        self.metrics.peer_send_failed(self.target);
        self.health.failed(self.target);
    }

    /// An append that failed.
    fn append_failed(&mut self) {
        self.failed();
        self.last_answered_append = None;
    }

    /// An append leaving at `now` with nothing in flight: if the peer answered
    /// the last one long ago, the leader itself was slow to send (etcd
    /// blames the disk first).
    fn check_late(&self, now: tokio::time::Instant) {
        if let Some(last) = self.last_answered_append
            && now.duration_since(last) > 2 * self.heartbeat
        {
            self.metrics.server.heartbeat_send_failures.inc();
            tracing::warn!(
                to = format_args!("{:x}", self.target),
                gap = ?now.duration_since(last),
                expected = ?self.heartbeat,
                "leader failed to send out heartbeat on time; took too long, leader is overloaded likely from slow disk"
            );
        }
    }

    fn client(&self) -> Result<RaftPeerClient<PeerChannel>, RPCError<TypeConfig>> {
        self.pool
            .client(&self.node)
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))
    }

    async fn call<Req, Resp, F, Fut>(
        &self,
        request: &Req,
        option: &RPCOption,
        send: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftPeerClient<PeerChannel>, RaftPayload) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftPayload>, tonic::Status>>,
    {
        let client = self.client()?;
        let payload = RaftPayload {
            payload: encode_message(request).map_err(network_error)?,
            to: self.target,
        };
        let sent = payload.payload.len();
        let started = tokio::time::Instant::now();
        // Unreachable (not NetworkError) makes openraft back off instead of retrying
        // a dead or partitioned peer in a tight loop.
        let reply = tokio::time::timeout(option.hard_ttl(), send(client, payload))
            .await
            .map_err(|_| {
                // The connection may be half-open (the peer died without a reset):
                // the next call dials afresh.
                self.pool.evict(&self.node);
                unreachable(format!("peer {} timed out", self.target))
            })
            .and_then(|reply| {
                reply
                    .map(tonic::Response::into_inner)
                    .map_err(|status| status_error(self.target, &status))
            });
        let reply = self.record(sent, started, reply)?;
        let decoded: Result<Resp, String> =
            decode_message(&reply.payload).map_err(network_error)?;
        decoded.map_err(|remote| RPCError::Unreachable(Unreachable::from_string(remote)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = Vec<u8>;

    /// One message through the pipeline (openraft sends appends as streams;
    /// this is the single-message form of the same path).
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let input = futures::stream::once(std::future::ready(rpc));
        let mut replies = self.stream_append(input, option).await?;
        let reply = replies.next().await;
        // Ends the stream (nothing is in flight), keeping the gRPC stream open.
        let _ = replies.next().await;
        drop(replies);
        match reply {
            Some(result) => Ok(AppendEntriesResponse::from(result?)),
            None => Err(unreachable(format!(
                "peer {}: append stream ended",
                self.target
            ))),
        }
    }

    /// Pipelined appends (see `append_pipeline`): up to
    /// `APPENDS_IN_FLIGHT_MAX` messages on the open `AppendStream` before the
    /// first is answered, answers in order.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        Box::pin(async move {
            let pipeline = Pipeline {
                connection: self,
                stream: None,
                input: Some(input),
                held: VecDeque::new(),
                in_flight: VecDeque::new(),
                ready: VecDeque::new(),
                ttl: option.hard_ttl(),
            };
            let replies: BoxStream<'s, _> = Box::pin(futures::stream::unfold(
                Some(pipeline),
                |pipeline| async move { pipeline?.next_reply().await },
            ));
            Ok(replies)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = (false, rpc);
        self.call(&request, &option, |mut c, p| async move { c.vote(p).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = (true, rpc);
        self.call(&request, &option, |mut c, p| async move { c.vote(p).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, p| async move {
            c.transfer_leader(p).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Unreachable(Unreachable::from_string(other.to_string())),
        })?;
        let header = encode_message(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))?;
        let mut chunks = Vec::new();
        let data = snapshot.snapshot;
        let mut first = true;
        for piece in data.chunks(SNAPSHOT_CHUNK_BYTES) {
            let header = if first { header.clone() } else { Vec::new() };
            first = false;
            chunks.push(SnapshotChunk {
                header,
                data: piece.to_vec(),
                to: self.target,
            });
        }
        if chunks.is_empty() {
            chunks.push(SnapshotChunk {
                header,
                data: Vec::new(),
                to: self.target,
            });
        }
        let target = self.target;
        // Sending a big snapshot takes longer than one RPC: allow 10 s per 16 MiB.
        let allowance =
            option.hard_ttl() + Duration::from_secs(10 * (1 + (data.len() as u64 >> 24)));
        let send = async move {
            tokio::time::timeout(
                allowance,
                client.install_snapshot(futures::stream::iter(chunks)),
            )
            .await
        };
        let started = std::time::Instant::now();
        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = send => reply,
        };
        let labels = vec![("To", format!("{target:x}"))];
        let network = &self.metrics.network;
        if matches!(reply, Ok(Ok(_))) {
            network.snapshot_send_success.get_or_create(&labels).inc();
            network
                .snapshot_send_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
        } else {
            network.snapshot_send_failures.get_or_create(&labels).inc();
        }
        let reply = reply
            .map_err(|_| {
                self.pool.evict(&self.node);
                StreamingError::Network(NetworkError::new(&std::io::Error::other(format!(
                    "snapshot to {target} timed out"
                ))))
            })?
            .map_err(|status| {
                StreamingError::Network(NetworkError::new(&std::io::Error::other(
                    status.message().to_string(),
                )))
            })?;
        let decoded: Result<SnapshotResponse<TypeConfig>, String> =
            decode_message(&reply.into_inner().payload).map_err(|e| {
                StreamingError::Network(NetworkError::new(&std::io::Error::other(e)))
            })?;
        decoded.map_err(|remote| StreamingError::Unreachable(Unreachable::from_string(remote)))
    }
}

#[cfg(test)]
#[path = "network_tests.rs"]
mod tests;
