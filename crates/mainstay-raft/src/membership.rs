//! Runtime membership changes (etcd's MemberAdd/Remove/Update/Promote) through
//! openraft's joint consensus, run on the leader (a follower forwards them).
//! The rules are decided in `membership_rules::plan_change`; this file gathers
//! the facts from openraft's metrics and proposes the plan.

use std::collections::{BTreeMap, BTreeSet};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Precondition};

use crate::cluster_view::ClusterView;
use crate::error::ReplicaError;
use crate::forward::{LeaderCall, MembershipReply};
use crate::membership_rules::{
    Facts, MemberChange, MemberChangeOutcome, MembershipError, Plan, plan_change,
};
use crate::replica::{Replica, Retry, Routed};
use crate::type_config::MemberNode;

enum Local {
    Done(MemberChangeOutcome),
    NotLeader(Option<u64>),
    Failed(MembershipError),
}

impl Replica {
    /// This member's view of the cluster.
    pub fn cluster_view(&self) -> ClusterView {
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        let index = membership_index(&metrics);
        let applied = metrics.last_applied.as_ref().map_or(0, |l| l.index);
        ClusterView {
            cluster_id: self.inner.config.cluster_id,
            members: self.members(),
            membership_index: index,
            settled: applied >= index,
        }
    }

    /// Applies a membership change through the leader and waits until this member
    /// has applied it, so its own member list shows the change.
    pub async fn change_members(
        &self,
        change: MemberChange,
    ) -> Result<MemberChangeOutcome, MembershipError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let outcome = self
            .route(
                deadline,
                || {
                    let change = change.clone();
                    async move {
                        match self.change_members_local(change, deadline).await {
                            Local::Done(outcome) => Routed::Done(outcome),
                            Local::Failed(error) => Routed::Failed(error),
                            Local::NotLeader(leader) => Routed::NotLeader(leader),
                        }
                    }
                },
                |leader| {
                    let request = change.clone();
                    async move {
                        match self
                            .ask_leader(leader, LeaderCall::ChangeMembers, &request)
                            .await
                        {
                            Ok(MembershipReply::Changed(Ok(outcome))) => Routed::Done(outcome),
                            Ok(MembershipReply::Changed(Err(MembershipError::Replica(error)))) => {
                                Routed::Failed(MembershipError::Replica(error.leader_answered()))
                            }
                            Ok(MembershipReply::Changed(Err(error))) => Routed::Failed(error),
                            Ok(MembershipReply::NotLeader(_)) | Err(Retry) => Routed::Again,
                        }
                    }
                },
            )
            .await?;
        if outcome.committed {
            self.wait_index(outcome.index, deadline).await?;
        }
        Ok(outcome)
    }

    /// Serves a forwarded membership change: act locally, never forward again.
    pub(crate) async fn serve_membership(&self, change: MemberChange) -> MembershipReply {
        // Half the forwarder's own wait, so the answer reaches it in time.
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout / 2;
        match self.change_members_local(change, deadline).await {
            Local::Done(outcome) => MembershipReply::Changed(Ok(outcome)),
            Local::Failed(error) => MembershipReply::Changed(Err(error)),
            Local::NotLeader(leader) => MembershipReply::NotLeader(leader),
        }
    }

    /// Runs one change on this member if it leads. Changes are serialised here;
    /// one that openraft refuses because an earlier term's change is still in
    /// progress is tried again until `deadline` (etcd answers that case with a
    /// timeout too, but only after its own wait).
    async fn change_members_local(
        &self,
        change: MemberChange,
        deadline: tokio::time::Instant,
    ) -> Local {
        let Ok(_serial) =
            tokio::time::timeout_at(deadline, self.inner.membership_lock.lock()).await
        else {
            return Local::Failed(ReplicaError::Timeout.into());
        };
        loop {
            if let Some(local) = self.change_members_once(change.clone()).await {
                return local;
            }
            if tokio::time::Instant::now() >= deadline {
                return Local::Failed(ReplicaError::Timeout.into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn change_members_once(&self, change: MemberChange) -> Option<Local> {
        let removing_self = change == MemberChange::Remove(self.member_id());
        let metrics = self.inner.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(self.member_id()) {
            return Some(Local::NotLeader(metrics.current_leader));
        }
        // Up: this leader, and the voters that acknowledged a heartbeat within
        // etcd's health interval of 5 s (or two election timeouts if longer).
        let fresh = std::time::Duration::from_millis(
            (2 * self.inner.config.election_timeout_ms).max(5_000),
        );
        let members = self.members();
        let up: BTreeSet<u64> = members
            .iter()
            .map(|(id, _, _)| *id)
            .filter(|id| {
                *id == self.member_id()
                    || metrics
                        .heartbeat
                        .as_ref()
                        .and_then(|beats| beats.get(id).cloned().flatten())
                        .is_some_and(|at| {
                            openraft::async_runtime::instant::Instant::elapsed(&*at) < fresh
                        })
            })
            .collect();
        let matched = crate::replica::matched_indexes(&metrics);
        let facts = Facts {
            members: &members,
            up: &up,
            strict: self.inner.config.strict_reconfig_check,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            matched: &matched,
        };
        let plan = match plan_change(change, &facts) {
            Ok(plan) => plan,
            Err(error) => return Some(Local::Failed(error)),
        };
        let (changes, added, uncommittable) = match plan {
            Plan::Add {
                id,
                node,
                learner,
                uncommittable,
            } => {
                let nodes = BTreeMap::from([(id, node)]);
                let changes = if learner {
                    ChangeMembers::AddNodes(nodes)
                } else {
                    ChangeMembers::AddVoters(nodes)
                };
                (changes, Some(id), uncommittable)
            }
            Plan::RemoveLearner(id) => (
                ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                None,
                false,
            ),
            Plan::RemoveVoter(id) => (
                ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                None,
                false,
            ),
            Plan::Promote(id) => (
                ChangeMembers::AddVoterIds(BTreeSet::from([id])),
                None,
                false,
            ),
            Plan::SetNode(id, node) => (
                ChangeMembers::SetNodes(BTreeMap::from([(id, node)])),
                None,
                false,
            ),
        };
        // Proposed only while the effective membership is the one decided on and
        // still lists this member: a leader that has just appended its own
        // removal must not propose again (openraft asserts against it).
        let Some(guard) = self.membership_guard(&metrics) else {
            return Some(Local::NotLeader(None));
        };
        if let (true, Some(id)) = (uncommittable, added) {
            return Some(self.add_second_voter(changes, guard, id).await);
        }
        // `retain = false`: a removed voter leaves the membership entirely.
        let proposing = self
            .inner
            .raft
            .change_membership_if(changes, false, [guard]);
        let proposed = if removing_self {
            // openraft may never answer a leader that removed itself (it steps
            // down, and the member stops soon after): its own applied membership
            // without it is the answer.
            tokio::select! {
                proposed = proposing => proposed,
                index = self.own_removal_applied() => {
                    return Some(Local::Done(MemberChangeOutcome {
                        added: None,
                        index,
                        committed: true,
                    }));
                }
            }
        } else {
            proposing.await
        };
        // `None`: refused for now (an earlier change is not yet committed, or the
        // membership moved since it was read): the caller reads it again.
        Some(match proposed {
            Ok(response) => Local::Done(MemberChangeOutcome {
                added,
                index: response.log_id.index,
                committed: true,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Local::NotLeader(forward.leader_id)
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Local::Failed(ReplicaError::LeaderChanged.into())
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )))
            | Err(RaftError::APIError(ClientWriteError::PreconditionFailed(_))) => return None,
            Err(RaftError::APIError(error)) => {
                tracing::warn!(%error, "membership change refused");
                Local::Failed(ReplicaError::Timeout.into())
            }
            Err(RaftError::Fatal(_)) => Local::Failed(ReplicaError::Stopped.into()),
        })
    }

    /// Grows a one-voter cluster to two while the new voter is not up: the
    /// change cannot commit before it starts, so the answer is the membership
    /// taking effect on this leader (etcd answers once it applied the change,
    /// which its single-step changes allow, and then waits for the member too).
    /// The proposal goes on in a task that ends when it commits or the member
    /// stops.
    async fn add_second_voter(
        &self,
        changes: ChangeMembers<u64, MemberNode>,
        guard: Precondition<crate::type_config::TypeConfig>,
        id: u64,
    ) -> Local {
        let raft = self.inner.raft.clone();
        tokio::spawn(async move {
            match raft.change_membership_if(changes, false, [guard]).await {
                Ok(response) => tracing::info!(
                    member_id = format_args!("{id:x}"),
                    index = response.log_id.index,
                    "second voter started; membership committed"
                ),
                Err(error) => tracing::warn!(%error, "adding a second voter did not complete"),
            }
        });
        let mut metrics = self.inner.raft.metrics();
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            let index = {
                let metrics = metrics.borrow_watched();
                let listed = metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|voter| voter == id);
                listed.then(|| membership_index(&metrics))
            };
            if let Some(index) = index {
                return Local::Done(MemberChangeOutcome {
                    added: Some(id),
                    index,
                    committed: false,
                });
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Local::Failed(ReplicaError::Stopped.into()),
                Err(_) => return Local::Failed(ReplicaError::Timeout.into()),
            }
        }
    }

    /// Resolves, with the membership's log index, once this member has applied a
    /// membership that does not list it.
    async fn own_removal_applied(&self) -> u64 {
        let mut metrics = self.inner.raft.metrics();
        let me = self.member_id();
        loop {
            {
                let current = metrics.borrow_watched();
                let applied = current.last_applied.as_ref().map_or(0, |l| l.index);
                let index = membership_index(&current);
                let listed = current
                    .membership_config
                    .membership()
                    .nodes()
                    .any(|(id, _)| *id == me);
                if !listed && applied >= index {
                    return index;
                }
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Resolves once this member, having been in the membership, is no longer in
    /// it (it was removed). A removed follower usually never receives the final
    /// membership (the leader stops replicating to it, and openraft keeps the old
    /// leader in its vote), so it also asks its peers every two seconds: a peer
    /// whose membership is newer than the last one listing us, and does not list
    /// us, means removed.
    pub async fn removed(&self) {
        // Woken by membership changes only (server metrics), not by every
        // entry; the full metrics only while a removal waits to be applied.
        let mut server = self.inner.raft.server_metrics();
        let mut metrics = self.inner.raft.metrics();
        let me = self.member_id();
        let mut seen_at: Option<u64> = None;
        'watching: loop {
            let (present, index, applied, peers) = {
                let applied = metrics
                    .borrow_watched()
                    .last_applied
                    .as_ref()
                    .map_or(0, |l| l.index);
                let current = server.borrow_watched();
                let membership = current.membership_config.membership();
                let peers: Vec<MemberNode> = membership
                    .nodes()
                    .filter(|(id, _)| **id != me)
                    .map(|(_, node)| node.clone())
                    .collect();
                (
                    membership.nodes().any(|(id, _)| *id == me),
                    current
                        .membership_config
                        .log_id()
                        .as_ref()
                        .map_or(0, |l| l.index),
                    applied,
                    peers,
                )
            };
            if present {
                seen_at = Some(index);
            } else if seen_at.is_some() && applied >= index {
                // Applied, so final.
                break 'watching;
            }
            if let Some(seen) = seen_at {
                for node in &peers {
                    let Ok(mut client) = self.inner.pool.client(node) else {
                        continue;
                    };
                    let reply = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        client.members(mainstay_proto::peer::MembersRequest {}),
                    )
                    .await;
                    let Ok(Ok(reply)) = reply else { continue };
                    let Ok(view) =
                        crate::codec::decode_message::<ClusterView>(&reply.into_inner().view)
                    else {
                        continue;
                    };
                    // Only a committed membership is final: an uncommitted one
                    // that drops this member may still be undone.
                    if view.settled
                        && view.membership_index > seen
                        && !view.members.iter().any(|(id, _, _)| *id == me)
                    {
                        tracing::warn!(
                            peer = %node.name,
                            "this member is not in the cluster's membership any more"
                        );
                        break 'watching;
                    }
                }
            }
            let awaiting_apply = !present && seen_at.is_some();
            let changed = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                if awaiting_apply {
                    metrics.changed().await
                } else {
                    server.changed().await
                }
            })
            .await;
            if let Ok(Err(_)) = changed {
                return std::future::pending().await;
            }
        }
        // Let the answer to the removal itself (this member may have led it)
        // leave before the member stops.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

impl Replica {
    /// The precondition every membership change of this member carries: the
    /// effective membership is still the one in `metrics`, which lists this
    /// member. None if it does not list this member.
    pub(crate) fn membership_guard(
        &self,
        metrics: &openraft::RaftMetrics<crate::type_config::TypeConfig>,
    ) -> Option<Precondition<crate::type_config::TypeConfig>> {
        let me = self.member_id();
        let listed = metrics
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == me);
        listed.then(|| Precondition::LastMembershipLogId {
            last_membership_log_id: *metrics.membership_config.log_id(),
        })
    }
}

fn membership_index(metrics: &openraft::RaftMetrics<crate::type_config::TypeConfig>) -> u64 {
    metrics
        .membership_config
        .log_id()
        .as_ref()
        .map_or(0, |l| l.index)
}
