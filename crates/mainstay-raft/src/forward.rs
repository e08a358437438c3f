//! Requests a follower hands to its leader, one peer call each with its own
//! reply type: `Publish` (a member's own client URLs), `ChangeMembers`
//! (served in `membership`), `LeaseTimeLeft` (by the leader's clock). Client
//! writes travel on `ForwardWrites` instead (`write_batches`).

use std::collections::BTreeMap;
use std::time::Duration;

use mainstay_proto::peer::ForwardRequest;
use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{decode_message, encode_message};
use crate::error::ReplicaError;
use crate::membership_rules::{MemberChangeOutcome, MembershipError};
use crate::replica::{Replica, Retry, Routed};
use crate::type_config::MemberNode;

/// The calls a follower makes to its leader (besides client writes).
#[derive(Clone, Copy, Debug)]
pub(crate) enum LeaderCall {
    /// Request `(member id, MemberNode)`, reply `PublishReply`.
    Publish,
    /// Request `MemberChange`, reply `MembershipReply`.
    ChangeMembers,
    /// Request a lease id, reply `LeaseTimeLeftReply`.
    LeaseTimeLeft,
}

/// A reply type of a `LeaderCall`: what a failed call reads as.
pub(crate) trait LeaderReply: Serialize + DeserializeOwned {
    /// The call failed (timeout, bad reply): the outcome is unknown.
    fn failed(error: ReplicaError) -> Self;
}

/// The reply to `Publish`.
#[derive(Serialize, Deserialize)]
pub(crate) enum PublishReply {
    /// The membership update was committed.
    Published,
    /// The receiver is not the leader (nothing was proposed); the leader it knows.
    NotLeader(Option<u64>),
    /// The member is not in the cluster's membership (removed while it was
    /// starting): it must stop, not publish.
    Removed,
    Failed(ReplicaError),
}

impl LeaderReply for PublishReply {
    fn failed(error: ReplicaError) -> Self {
        PublishReply::Failed(error)
    }
}

/// The reply to `ChangeMembers`.
#[derive(Serialize, Deserialize)]
pub(crate) enum MembershipReply {
    /// Done or refused by the leader.
    Changed(Result<MemberChangeOutcome, MembershipError>),
    /// The receiver is not the leader (nothing was proposed); the leader it knows.
    NotLeader(Option<u64>),
}

impl LeaderReply for MembershipReply {
    fn failed(error: ReplicaError) -> Self {
        MembershipReply::Changed(Err(error.into()))
    }
}

/// The reply to `LeaseTimeLeft`.
#[derive(Serialize, Deserialize)]
pub(crate) enum LeaseTimeLeftReply {
    /// Milliseconds left by the leader's clock (None: unknown lease).
    Left(Option<u64>),
    /// The receiver is not the leader; the leader it knows.
    NotLeader(Option<u64>),
    Failed(ReplicaError),
}

impl LeaderReply for LeaseTimeLeftReply {
    fn failed(error: ReplicaError) -> Self {
        LeaseTimeLeftReply::Failed(error)
    }
}

/// What publishing on the leader did.
enum Publishing {
    /// The membership update was committed.
    Published,
    NotLeader(Option<u64>),
    /// The member is not listed: it was removed.
    Removed,
    Failed(ReplicaError),
}

impl Replica {
    /// Makes `call` on the leader. `Err(Retry)` only when it surely was not sent.
    pub(crate) async fn ask_leader<Q: Serialize, P: LeaderReply>(
        &self,
        leader: u64,
        call: LeaderCall,
        request: &Q,
    ) -> Result<P, Retry> {
        let Some(node) = self.node(leader) else {
            return Err(Retry);
        };
        let Ok(mut client) = self.inner.pool.client(&node) else {
            return Err(Retry);
        };
        let Ok(command) = encode_message(request) else {
            return Ok(P::failed(ReplicaError::Stopped));
        };
        let request = ForwardRequest { command };
        let sent = async {
            match call {
                LeaderCall::Publish => client.publish(request).await,
                LeaderCall::ChangeMembers => client.change_members(request).await,
                LeaderCall::LeaseTimeLeft => client.lease_time_left(request).await,
            }
        };
        match tokio::time::timeout(self.inner.request_timeout, sent).await {
            Err(_) => {
                self.inner.pool.evict(&node);
                Ok(P::failed(ReplicaError::Timeout))
            }
            Ok(Err(status)) if crate::peer_channel::not_sent(&status) => Err(Retry),
            Ok(Err(_)) => Ok(P::failed(ReplicaError::Timeout)),
            Ok(Ok(reply)) => Ok(decode_message(&reply.into_inner().result)
                .unwrap_or(P::failed(ReplicaError::Timeout))),
        }
    }

    /// Serves `Publish` on the leader: act locally, never forward again.
    pub(crate) async fn serve_publish(&self, id: u64, node: MemberNode) -> PublishReply {
        match self.publish_local(id, node).await {
            Publishing::Published => PublishReply::Published,
            Publishing::NotLeader(leader) => PublishReply::NotLeader(leader),
            Publishing::Removed => PublishReply::Removed,
            Publishing::Failed(error) => PublishReply::Failed(error),
        }
    }

    /// Serves `LeaseTimeLeft` on the leader, by its clock.
    pub(crate) fn serve_lease_time_left(&self, id: i64) -> LeaseTimeLeftReply {
        let status = self.status();
        if status.is_leader {
            LeaseTimeLeftReply::Left(
                self.lease_clock()
                    .remaining(id)
                    .map(|left| u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
            )
        } else {
            LeaseTimeLeftReply::NotLeader(status.leader)
        }
    }

    /// Time left on a lease as the leader counts it (etcd asks its leader too):
    /// a follower's own countdown starts when it applies a renew, later than the
    /// leader's. None for a lease the leader does not know.
    pub async fn lease_remaining(&self, id: i64) -> Result<Option<Duration>, ReplicaError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        self.route(
            deadline,
            || async {
                let status = self.status();
                if status.is_leader {
                    Routed::Done(self.lease_clock().remaining(id))
                } else {
                    Routed::NotLeader(status.leader)
                }
            },
            |leader| async move {
                match self
                    .ask_leader(leader, LeaderCall::LeaseTimeLeft, &id)
                    .await
                {
                    Ok(LeaseTimeLeftReply::Left(left)) => {
                        Routed::Done(left.map(Duration::from_millis))
                    }
                    // A read: a leader stopping is only a reason to ask again.
                    Ok(LeaseTimeLeftReply::Failed(ReplicaError::Stopped)) => Routed::Again,
                    Ok(LeaseTimeLeftReply::Failed(error)) => {
                        Routed::Failed(error.leader_answered())
                    }
                    Ok(LeaseTimeLeftReply::NotLeader(_)) | Err(Retry) => Routed::Again,
                }
            },
        )
        .await
    }

    /// Records this member's description (client URLs) in the cluster
    /// membership, through the leader. Idempotent; returns once it is applied
    /// locally or the deadline passes.
    pub async fn publish(&self, node: MemberNode) -> Result<(), ReplicaError> {
        let id = self.member_id();
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        self.route(
            deadline,
            || {
                let node = node.clone();
                async move {
                    if self.node(id).as_ref() == Some(&node) {
                        return Routed::Done(());
                    }
                    let status = self.status();
                    if !status.is_leader {
                        return Routed::NotLeader(status.leader);
                    }
                    match self.publish_local(id, node).await {
                        // Done once applied here: the next attempt sees it.
                        Publishing::Published => Routed::Again,
                        Publishing::NotLeader(leader) => Routed::NotLeader(leader),
                        Publishing::Removed => Routed::Failed(ReplicaError::Stopped),
                        Publishing::Failed(error) => Routed::Failed(error),
                    }
                }
            },
            |leader| {
                let request = (id, node.clone());
                async move {
                    match self.ask_leader(leader, LeaderCall::Publish, &request).await {
                        Ok(PublishReply::Removed) => Routed::Failed(ReplicaError::Stopped),
                        Ok(PublishReply::Failed(error)) => Routed::Failed(error.leader_answered()),
                        // Published or not, the next local attempt looks.
                        Ok(PublishReply::Published | PublishReply::NotLeader(_)) | Err(Retry) => {
                            Routed::Again
                        }
                    }
                }
            },
        )
        .await
    }

    async fn publish_local(&self, id: u64, node: MemberNode) -> Publishing {
        let serial = tokio::time::timeout(
            self.inner.request_timeout,
            self.inner.membership_lock.lock(),
        );
        let Ok(_serial) = serial.await else {
            // Another change holds it: the publisher tries again.
            return Publishing::NotLeader(None);
        };
        // SetNodes would add an unknown id as a learner: a member removed while it
        // was still publishing must not come back that way.
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let leading = metrics.current_leader == Some(self.member_id());
        let listed = metrics
            .membership_config
            .membership()
            .nodes()
            .any(|(member, _)| *member == id);
        if leading && !listed {
            return Publishing::Removed;
        }
        let Some(guard) = self.membership_guard(&metrics) else {
            return Publishing::NotLeader(None);
        };
        let change = ChangeMembers::SetNodes(BTreeMap::from([(id, node)]));
        let proposed = self
            .inner
            .raft
            .change_membership_if(change, true, [guard])
            .await;
        match proposed {
            Ok(_) => Publishing::Published,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Publishing::NotLeader(forward.leader_id)
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Publishing::NotLeader(None)
            }
            Err(RaftError::APIError(error)) => {
                // A change of an earlier term still in progress: the publisher
                // tries again.
                tracing::info!(%error, "publishing member attributes refused for now");
                Publishing::NotLeader(None)
            }
            Err(RaftError::Fatal(_)) => Publishing::Failed(ReplicaError::Stopped),
        }
    }
}
