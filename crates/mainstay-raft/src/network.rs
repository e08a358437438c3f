//! Outgoing peer traffic: openraft's network traits over our `RaftPeer` gRPC
//! service. Every call has a deadline (a partition can swallow a reply).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_proto::peer::raft_peer_client::RaftPeerClient;
use mainstay_proto::peer::{RaftPayload, SnapshotChunk};
use openraft::OptionalSend;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::peer_channel::PeerChannel;

use crate::peer_channel::Dial;

use crate::codec::{decode_message, encode_message};
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
    /// Sends one AppendEntries message on the open stream (opening one first
    /// if needed) and reads its reply. Any failure drops the stream: the next
    /// call opens a new one.
    async fn append_exchange(
        &mut self,
        payload: RaftPayload,
    ) -> Result<RaftPayload, RPCError<TypeConfig>> {
        let mut stream = match self.append.take() {
            Some(stream) => stream,
            None => {
                let (requests, outgoing) = mpsc::channel(1);
                let replies = self
                    .client()?
                    .append_stream(tokio_stream::wrappers::ReceiverStream::new(outgoing))
                    .await
                    .map_err(|status| status_error(self.target, &status))?
                    .into_inner();
                AppendStream { requests, replies }
            }
        };
        if stream.requests.send(payload).await.is_err() {
            return Err(unreachable(format!(
                "peer {}: append stream closed",
                self.target
            )));
        }
        match stream.replies.message().await {
            Ok(Some(reply)) => {
                self.append = Some(stream);
                Ok(reply)
            }
            Ok(None) => Err(unreachable(format!(
                "peer {}: append stream ended",
                self.target
            ))),
            Err(status) => Err(status_error(self.target, &status)),
        }
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
                let rtt = started.elapsed();
                self.metrics.peer_sent(self.target, sent);
                self.metrics.peer_received(self.target, reply.payload.len());
                self.metrics.peer_rtt(self.target, rtt);
                self.health.contact(self.target, rtt);
            }
            Err(_) => {
                self.metrics.peer_send_failed(self.target);
                self.health.failed(self.target);
            }
        }
        reply
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

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let payload = RaftPayload {
            payload: encode_message(&rpc).map_err(network_error)?,
            to: self.target,
        };
        let sent = payload.payload.len();
        let started = tokio::time::Instant::now();
        if let Some(last) = self.last_answered_append
            && started.duration_since(last) > 2 * self.heartbeat
        {
            // The peer answered the last one long ago, yet this one leaves
            // only now: the leader itself is slow (etcd blames the disk first).
            self.metrics.server.heartbeat_send_failures.inc();
            tracing::warn!(
                to = format_args!("{:x}", self.target),
                gap = ?started.duration_since(last),
                expected = ?self.heartbeat,
                "leader failed to send out heartbeat on time; took too long, leader is overloaded likely from slow disk"
            );
        }
        let reply = tokio::time::timeout(option.hard_ttl(), self.append_exchange(payload))
            .await
            .map_err(|_| {
                // The connection may be half-open (the peer died without a
                // reset): the next call dials afresh (the stream was dropped).
                self.pool.evict(&self.node);
                unreachable(format!("peer {} timed out", self.target))
            })
            .and_then(|reply| reply);
        let reply = self.record(sent, started, reply);
        self.last_answered_append = reply.is_ok().then(tokio::time::Instant::now);
        let reply = reply?;
        let decoded: Result<AppendEntriesResponse<TypeConfig>, String> =
            decode_message(&reply.payload).map_err(network_error)?;
        decoded.map_err(|remote| RPCError::Unreachable(Unreachable::from_string(remote)))
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
