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
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Api;
use crate::identity::Credentials;
use crate::status::{ApiError, api_status, replica_status, unexpected};

/// Keep-alives folded into one Raft entry, at most.
const RENEWS_PER_ENTRY_MAX: usize = 128;

/// Keep-alives waiting for an entry, from every stream this service serves;
/// beyond it a keep-alive is refused with `etcdserver: too many requests`.
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
        LeaseService {
            api,
            renewer: Renewer::default(),
        }
    }
}

/// One keep-alive's outcome: the granted TTL (0 for an unknown lease), the
/// revision and term of the entry that renewed it.
type Renewed = Result<(i64, i64, u64), Status>;

/// Folds keep-alives from every stream into shared Raft entries (etcd renews
/// each one on its own; one entry per keep-alive would be the dominant write
/// load of a cluster with many leases). There is no task of its own: streams
/// queue their keep-alives, and whichever finds a free slot proposes what is
/// waiting, so nothing outlives the streams (and the member's files are
/// released as soon as it stops).
#[derive(Clone, Default)]
struct Renewer {
    folding: Arc<std::sync::Mutex<Folding>>,
}

#[derive(Default)]
struct Folding {
    waiting: std::collections::VecDeque<(i64, oneshot::Sender<Renewed>)>,
    in_flight: usize,
}

/// A slot of `RENEW_ENTRIES_IN_FLIGHT`, given back when dropped (also if the
/// proposing stream is cancelled).
struct Slot(Arc<std::sync::Mutex<Folding>>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut folding = self.0.lock().unwrap_or_else(|p| p.into_inner());
        folding.in_flight -= 1;
    }
}

impl Renewer {
    fn folding(&self) -> std::sync::MutexGuard<'_, Folding> {
        self.folding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues one keep-alive; the answer arrives on the returned receiver once
    /// some stream has driven it (`drive`).
    fn submit(&self, id: i64) -> Result<oneshot::Receiver<Renewed>, Status> {
        let (answer, receiver) = oneshot::channel();
        let mut folding = self.folding();
        if folding.waiting.len() >= RENEWS_QUEUED_MAX {
            return Err(api_status(ApiError::TooManyRequests));
        }
        folding.waiting.push_back((id, answer));
        Ok(receiver)
    }

    /// Proposes what is waiting, one entry of at most `RENEWS_PER_ENTRY_MAX` at
    /// a time, while a slot is free. Returns when nothing waits or every slot
    /// is taken (a slot's holder proposes what is left when it is done, since it
    /// looks again after giving its slot back).
    async fn drive(&self, api: &Api) {
        loop {
            let (slot, batch) = {
                let mut folding = self.folding();
                if folding.in_flight >= RENEW_ENTRIES_IN_FLIGHT || folding.waiting.is_empty() {
                    return;
                }
                folding.in_flight += 1;
                let take = folding.waiting.len().min(RENEWS_PER_ENTRY_MAX);
                let batch: Vec<_> = folding.waiting.drain(..take).collect();
                (Slot(self.folding.clone()), batch)
            };
            let ids = batch.iter().map(|(id, _)| *id).collect();
            match renew(api, ids).await {
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
            drop(slot);
        }
    }
}

/// Renews `ids` in one entry; per id its granted TTL, 0 for an unknown lease.
async fn renew(api: &Api, ids: Vec<i64>) -> Result<(Vec<i64>, i64, u64), Status> {
    // Bare: each id was checked when the stream received it.
    let (response, term, _) = api
        .propose_bare(Command::LeaseRenew(LeaseRenewRequest { ids }))
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
    credentials: Credentials,
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
        // A user renews only leases whose keys they may write (etcd 3.5's
        // `checkLeaseRenew`); a refusal ends the stream, as in etcd.
        let permitted = match api.resolve(&credentials).await {
            Ok(caller) => ids.iter().try_for_each(|id| {
                api.permit(|space| {
                    space.authorize_lease_keys(&caller, *id, mainstay_auth::PermissionKind::Write)
                })
            }),
            Err(status) => Err(status),
        };
        if let Err(status) = permitted {
            let _ = replies.send(Err(status)).await;
            return;
        }
        let mut pending = Vec::with_capacity(ids.len());
        for id in &ids {
            match renewer.submit(*id) {
                Ok(receiver) => pending.push((*id, receiver)),
                Err(status) => {
                    // Those already queued are still driven below.
                    let _ = replies.send(Err(status)).await;
                    renewer.drive(&api).await;
                    return;
                }
            }
        }
        renewer.drive(&api).await;
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
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        // etcd raises a short TTL to its minimum (1.5 election timeouts) so a
        // lease cannot expire during a normal leader change.
        let ttl = request.ttl.max(self.api.limits.lease_ttl_min);
        let (response, term) = self
            .api
            .propose(
                &caller,
                Command::LeaseGrant(LeaseGrantRequest {
                    id: request.id,
                    ttl,
                }),
            )
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
        let caller = self.api.caller(&request).await?;
        let id = request.into_inner().id;
        let (response, term) = self
            .api
            .propose(&caller, Command::LeaseRevoke(LeaseRevokeRequest { id }))
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
        let credentials = Credentials::of(&request);
        let inbound = request.into_inner();
        let (replies, outbound) = mpsc::channel(KEEPALIVE_REPLIES_BUFFERED);
        tokio::spawn(keep_alive(
            self.api.clone(),
            credentials,
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
        let caller = self.api.caller(&request).await?;
        let request = request.into_inner();
        self.api.barrier(false).await?;
        // Key names only to whoever may read every one (CVE-2023-32082).
        self.api.permit(|space| {
            if request.keys {
                space.authorize_lease_keys(&caller, request.id, mainstay_auth::PermissionKind::Read)
            } else {
                space.auth().check_user(&caller)
            }
        })?;
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
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let caller = self.api.caller(&request).await?;
        self.api.barrier(false).await?;
        // Lease ids only to whoever may read every leased key (etcd 3.5).
        self.api.permit(|space| {
            space.leases().try_for_each(|lease| {
                space.authorize_lease_keys(&caller, lease.id, mainstay_auth::PermissionKind::Read)
            })?;
            space.auth().check_user(&caller)
        })?;
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
