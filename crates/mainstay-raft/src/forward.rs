//! Requests a follower hands to its leader on the unary `Forward` call: a
//! member publishing its own attributes, a membership change (served in
//! `membership`), a lease's time left by the leader's clock. Client writes
//! travel on `ForwardWrites` instead (`write_batches`).

use std::collections::BTreeMap;
use std::time::Duration;

use mainstay_proto::peer::ForwardRequest;
use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use crate::codec::{decode_message, encode_message};
use crate::error::ReplicaError;
use crate::replica::{Replica, Retry, Routed};
use crate::type_config::MemberNode;

/// The reply to a `Forward` call.
#[derive(Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    Published,
    Membership(
        Result<
            crate::membership_rules::MemberChangeOutcome,
            crate::membership_rules::MembershipError,
        >,
    ),
    /// The receiver is not the leader (nothing was proposed); the leader it knows.
    NotLeader(Option<u64>),
    Failed(ReplicaError),
    /// Milliseconds left on a lease by the leader's clock (None: unknown lease).
    LeaseRemaining(Option<u64>),
}

/// What a follower asks the leader to do on its behalf.
#[derive(Serialize, Deserialize)]
pub(crate) enum Forwarded {
    /// Record a member's own description (its client URLs) in the membership.
    PublishNode(u64, MemberNode),
    /// Change the membership.
    Membership(crate::membership_rules::MemberChange),
    /// How long a lease has left, by the leader's clock (a read: safe to retry).
    LeaseRemaining(i64),
}

/// What publishing on the leader did.
enum Publishing {
    /// The membership update was committed.
    Published,
    NotLeader(Option<u64>),
    Failed(ReplicaError),
}

impl Replica {
    /// Sends a request to the leader. `Err(Retry)` only when it surely was not sent.
    pub(crate) async fn forward(
        &self,
        leader: u64,
        request: &Forwarded,
    ) -> Result<ForwardReply, Retry> {
        let Some(node) = self.node(leader) else {
            return Err(Retry);
        };
        let Ok(mut client) = self.inner.pool.client(&node) else {
            return Err(Retry);
        };
        let Ok(bytes) = encode_message(request) else {
            return Ok(ForwardReply::Failed(ReplicaError::Stopped));
        };
        let reply = tokio::time::timeout(
            self.inner.request_timeout,
            client.forward(ForwardRequest { command: bytes }),
        )
        .await;
        match reply {
            Err(_) => {
                self.inner.pool.evict(&node);
                Ok(ForwardReply::Failed(ReplicaError::Timeout))
            }
            Ok(Err(status)) if crate::peer_channel::not_sent(&status) => Err(Retry),
            Ok(Err(_)) => Ok(ForwardReply::Failed(ReplicaError::Timeout)),
            Ok(Ok(reply)) => Ok(decode_message(&reply.into_inner().result)
                .unwrap_or(ForwardReply::Failed(ReplicaError::Timeout))),
        }
    }

    /// Serves a forwarded request: act locally, never forward again.
    pub(crate) async fn serve_forward(&self, request: Forwarded) -> ForwardReply {
        match request {
            Forwarded::PublishNode(id, node) => match self.publish_local(id, node).await {
                Publishing::Published => ForwardReply::Published,
                Publishing::NotLeader(leader) => ForwardReply::NotLeader(leader),
                Publishing::Failed(error) => ForwardReply::Failed(error),
            },
            Forwarded::Membership(change) => self.serve_membership(change).await,
            Forwarded::LeaseRemaining(id) => {
                let status = self.status();
                if status.is_leader {
                    ForwardReply::LeaseRemaining(
                        self.lease_clock()
                            .remaining(id)
                            .map(|left| u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
                    )
                } else {
                    ForwardReply::NotLeader(status.leader)
                }
            }
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
                match self.forward(leader, &Forwarded::LeaseRemaining(id)).await {
                    Ok(ForwardReply::LeaseRemaining(left)) => {
                        Routed::Done(left.map(Duration::from_millis))
                    }
                    Ok(ForwardReply::Failed(error)) => Routed::Failed(error),
                    Ok(_) | Err(Retry) => Routed::Again,
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
                        Publishing::Failed(error) => Routed::Failed(error),
                    }
                }
            },
            |leader| {
                let request = Forwarded::PublishNode(id, node.clone());
                async move {
                    match self.forward(leader, &request).await {
                        Ok(ForwardReply::Failed(error)) => Routed::Failed(error),
                        // Published or not, the next local attempt looks.
                        Ok(_) | Err(Retry) => Routed::Again,
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
            return Publishing::Failed(ReplicaError::Stopped);
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
