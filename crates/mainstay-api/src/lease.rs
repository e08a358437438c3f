//! `etcdserverpb.Lease`: Grant, Revoke, KeepAlive, TimeToLive, Leases.
//!
//! Grants, revokes and keep-alives are Raft entries (see `mainstay_raft::lease`
//! for how expiry is decided). TimeToLive and Leases read the local replica
//! after a read barrier; the time left comes from the leader's clock.

use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream};
use mainstay_mvcc::{
    Command, CommandResponse, LeaseGrantRequest, LeaseRenewRequest, LeaseRevokeRequest,
};
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::lease_server::Lease;
use mainstay_raft::ReplicaError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Api;
use crate::status::{replica_status, unexpected};

/// Keep-alives folded into one Raft entry, at most.
const RENEWS_PER_ENTRY_MAX: usize = 128;

/// Keep-alives waiting for an entry, from every stream this service serves;
/// beyond it, streams wait (and stop reading their clients).
const RENEWS_QUEUED_MAX: usize = 4096;

/// Renew entries in flight at once; while they are, new keep-alives gather
/// into the next one.
const RENEW_ENTRIES_IN_FLIGHT: usize = 4;

/// Replies buffered per keep-alive stream before the server stops reading it.
const KEEPALIVE_REPLIES_BUFFERED: usize = 64;

/// The Lease service.
#[derive(Clone)]
pub struct LeaseService {
    api: Api,
    renewer: Renewer,
}

impl LeaseService {
    /// Wraps the shared API state.
    pub fn new(api: Api) -> Self {
        let renewer = Renewer::start(api.clone());
        LeaseService { api, renewer }
    }
}

/// One keep-alive's outcome: the granted TTL (0 for an unknown lease), the
/// revision and term of the entry that renewed it.
type Renewed = Result<(i64, i64, u64), Status>;

/// Folds keep-alives from every stream into shared Raft entries (etcd renews
/// each one on its own; one entry per keep-alive would be the dominant write
/// load of a cluster with many leases).
#[derive(Clone)]
struct Renewer {
    queue: mpsc::Sender<(i64, oneshot::Sender<Renewed>)>,
}

impl Renewer {
    /// Starts the folding task; it ends when the service and its streams are gone.
    fn start(api: Api) -> Renewer {
        let (queue, mut waiting) =
            mpsc::channel::<(i64, oneshot::Sender<Renewed>)>(RENEWS_QUEUED_MAX);
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(RENEW_ENTRIES_IN_FLIGHT));
            while let Some(first) = waiting.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                // Everything that arrived while waiting for a slot goes in too.
                let mut batch = vec![first];
                while batch.len() < RENEWS_PER_ENTRY_MAX {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let api = api.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let ids = batch.iter().map(|(id, _)| *id).collect();
                    match renew(&api, ids).await {
                        Ok((ttls, revision, term)) => {
                            for ((_, answer), ttl) in batch.into_iter().zip(ttls) {
                                let _ = answer.send(Ok((ttl, revision, term)));
                            }
                        }
                        Err(status) => {
                            for (_, answer) in batch {
                                let _ = answer.send(Err(status.clone()));
                            }
                        }
                    }
                });
            }
        });
        Renewer { queue }
    }

    /// Queues one keep-alive; the answer arrives on the returned receiver.
    async fn submit(&self, id: i64) -> Result<oneshot::Receiver<Renewed>, Status> {
        let (answer, receiver) = oneshot::channel();
        self.queue
            .send((id, answer))
            .await
            .map_err(|_| replica_status(&ReplicaError::Stopped))?;
        Ok(receiver)
    }
}

/// Renews `ids` in one entry; per id its granted TTL, 0 for an unknown lease.
async fn renew(api: &Api, ids: Vec<i64>) -> Result<(Vec<i64>, i64, u64), Status> {
    let (response, term) = api
        .propose(Command::LeaseRenew(LeaseRenewRequest { ids }))
        .await?;
    match response {
        CommandResponse::LeaseRenew(renewed) => Ok((renewed.ttls, renewed.revision, term)),
        other => Err(unexpected(&other)),
    }
}

/// Serves one keep-alive stream: reads what the client sent, hands everything
/// already waiting to the renewer, answers each request in order.
async fn keep_alive(
    api: Api,
    renewer: Renewer,
    mut inbound: Streaming<pb::LeaseKeepAliveRequest>,
    replies: mpsc::Sender<Result<pb::LeaseKeepAliveResponse, Status>>,
) {
    loop {
        let first = match inbound.message().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(status) => {
                tracing::debug!(%status, "keep-alive stream broke");
                return;
            }
        };
        let mut ids = vec![first.id];
        while ids.len() < RENEWS_PER_ENTRY_MAX {
            match inbound.message().now_or_never() {
                Some(Ok(Some(request))) => ids.push(request.id),
                _ => break,
            }
        }
        let mut pending = Vec::with_capacity(ids.len());
        for id in &ids {
            match renewer.submit(*id).await {
                Ok(receiver) => pending.push((*id, receiver)),
                Err(status) => {
                    let _ = replies.send(Err(status)).await;
                    return;
                }
            }
        }
        for (id, receiver) in pending {
            let answer = match receiver.await {
                Ok(Ok((ttl, revision, term))) => Ok(pb::LeaseKeepAliveResponse {
                    header: api.headers().header(revision, term),
                    id,
                    ttl,
                }),
                Ok(Err(status)) => Err(status),
                Err(_) => Err(replica_status(&ReplicaError::Stopped)),
            };
            let failed = answer.is_err();
            if replies.send(answer).await.is_err() || failed {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        // etcd raises a short TTL to its minimum (1.5 election timeouts) so a
        // lease cannot expire during a normal leader change.
        let ttl = request.ttl.max(self.api.limits.lease_ttl_min);
        let (response, term) = self
            .api
            .propose(Command::LeaseGrant(LeaseGrantRequest {
                id: request.id,
                ttl,
            }))
            .await?;
        match response {
            CommandResponse::LeaseGrant(granted) => Ok(Response::new(pb::LeaseGrantResponse {
                header: self.api.headers().header(granted.revision, term),
                id: granted.id,
                ttl: granted.ttl,
                error: String::new(),
            })),
            other => Err(unexpected(&other)),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let (response, term) = self
            .api
            .propose(Command::LeaseRevoke(LeaseRevokeRequest { id }))
            .await?;
        match response {
            CommandResponse::LeaseRevoke(revoked) => Ok(Response::new(pb::LeaseRevokeResponse {
                header: self.api.headers().header(revoked.revision, term),
            })),
            other => Err(unexpected(&other)),
        }
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let inbound = request.into_inner();
        let (replies, outbound) = mpsc::channel(KEEPALIVE_REPLIES_BUFFERED);
        tokio::spawn(keep_alive(
            self.api.clone(),
            self.renewer.clone(),
            inbound,
            replies,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        self.api.barrier(false).await?;
        let (lease, keys, revision) = self.api.replica.read(|space| {
            let lease = space.lease(request.id);
            let keys = match (lease, request.keys) {
                (Some(_), true) => space.lease_keys(request.id),
                _ => Vec::new(),
            };
            (lease, keys, space.revision())
        });
        let header = self.api.headers().header(revision, self.api.replica.term());
        let response = match lease {
            // etcd answers an unknown (or expired) lease with TTL -1, not an error.
            None => pb::LeaseTimeToLiveResponse {
                header,
                id: request.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(lease) => {
                // The leader's countdown, as etcd reports it; a leader that has
                // not applied the grant yet gives the full TTL.
                let remaining = self
                    .api
                    .replica
                    .lease_remaining(lease.id)
                    .await
                    .map_err(|e| replica_status(&e))?
                    .map_or(lease.ttl, |left| {
                        i64::try_from(left.as_secs()).unwrap_or(i64::MAX)
                    });
                pb::LeaseTimeToLiveResponse {
                    header,
                    id: lease.id,
                    ttl: remaining,
                    granted_ttl: lease.ttl,
                    keys,
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        _: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.api.barrier(false).await?;
        let (leases, revision) = self.api.replica.read(|space| {
            let leases = space
                .leases()
                .map(|lease| pb::LeaseStatus { id: lease.id })
                .collect();
            (leases, space.revision())
        });
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: self.api.headers().header(revision, self.api.replica.term()),
            leases,
        }))
    }
}
