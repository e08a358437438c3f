//! `v3electionpb.Election`: Campaign, Proclaim, Leader, Observe, Resign;
//! etcd's `concurrency.Election` on the server (the queue itself is in
//! `recipe`).
//!
//! A candidate's key `<name>/<lease hex>` holds its value; the key created
//! first leads. Campaign waits for the lead; Proclaim and Resign act only while
//! the caller's key is the incarnation its `LeaderKey` names (same create
//! revision). Leader reads the first-created key. Observe streams the leader's
//! value, then every change of it, then the next leader's: it is an
//! `Observer` (plain decisions over the keyspace's history) pulled by the
//! response stream itself, so it ends when the client goes away.

use mainstay_auth::Caller;
use std::collections::VecDeque;
use std::pin::Pin;

use futures::Stream;
use mainstay_mvcc::{CommandResponse, Event, EventKind, KeyValue, MvccError, Revision};
use mainstay_proto::v3electionpb as pb;
use mainstay_proto::v3electionpb::election_server::Election;
use mainstay_raft::{AppliedEvents, ReplicaError};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::Api;
use crate::convert::key_value;
use crate::recipe::{self, Waited, Withdrawal};
use crate::status::{
    RecipeError, as_recipe_status, mvcc_status, recipe_status, replica_status, unexpected,
};

#[cfg(test)]
mod tests;

/// The Election service.
#[derive(Clone)]
pub struct ElectionService {
    api: Api,
}

impl ElectionService {
    /// Wraps the shared API state.
    pub fn new(api: Api) -> Self {
        ElectionService { api }
    }

    async fn campaign_for(
        &self,
        caller: &Caller,
        request: pb::CampaignRequest,
    ) -> Result<pb::CampaignResponse, Status> {
        self.api.check_size(&request)?;
        let prefix = recipe::queue_prefix(&request.name);
        recipe::permit_queue(&self.api, caller, &prefix, true)?;
        let lease = recipe::session_lease(&self.api, caller, request.lease).await?;
        let key = recipe::queue_key(&prefix, lease);
        let txn = recipe::campaign_txn(&key, &request.value, lease);
        let (response, term) = recipe::propose_txn(&self.api, caller, txn).await?;
        let placed = recipe::placed(&response)
            .ok_or_else(|| unexpected(&CommandResponse::Txn(response.clone())))?;
        let withdrawal = Withdrawal::new(&self.api, caller, &key, placed.create_revision);
        // The lease already campaigns here: a new value is proclaimed (etcd).
        if placed
            .existing
            .as_ref()
            .is_some_and(|existing| existing.value != request.value)
        {
            let txn = recipe::proclaim_txn(&key, placed.create_revision, &request.value, lease);
            let (proclaimed, _) = recipe::propose_txn(&self.api, caller, txn).await?;
            if !proclaimed.succeeded {
                withdrawal.disarm();
                return Err(recipe_status(RecipeError::ElectionNotLeader));
            }
        }
        // (The self-test break answers without waiting for the lead.)
        let waited = if self.api.unsafe_lock_skip_wait {
            Ok(response.revision)
        } else {
            recipe::wait_turn(&self.api, &prefix, &key, placed.create_revision).await
        };
        match waited {
            Ok(_) => {
                withdrawal.disarm();
                // etcd answers with the header of the campaign's txn.
                Ok(pb::CampaignResponse {
                    header: self.api.headers().header(response.revision, term),
                    leader: Some(pb::LeaderKey {
                        name: request.name,
                        key,
                        rev: placed.create_revision,
                        lease,
                    }),
                })
            }
            // The candidacy ended before the lead came (lease expired or
            // revoked, resigned by someone else); etcd 3.4 would wait on.
            Err(Waited::Gone) => {
                withdrawal.disarm();
                Err(recipe_status(RecipeError::ElectionNotLeader))
            }
            // The withdrawal resigns the candidacy as it drops, as etcd does.
            Err(Waited::Failed(status)) => Err(status),
        }
    }

    async fn proclaim_as(
        &self,
        caller: &Caller,
        request: pb::ProclaimRequest,
    ) -> Result<pb::ProclaimResponse, Status> {
        self.api.check_size(&request)?;
        let leader = request
            .leader
            .ok_or_else(|| recipe_status(RecipeError::MissingLeaderKey))?;
        // etcd's server opens a session with the given lease: 0 grants one.
        recipe::permit_queue(&self.api, caller, &recipe::queue_prefix(&leader.name), true)?;
        let lease = recipe::session_lease(&self.api, caller, leader.lease).await?;
        let txn = recipe::proclaim_txn(&leader.key, leader.rev, &request.value, lease);
        let (response, term) = recipe::propose_txn(&self.api, caller, txn).await?;
        if !response.succeeded {
            return Err(recipe_status(RecipeError::ElectionNotLeader));
        }
        Ok(pb::ProclaimResponse {
            header: self.api.headers().header(response.revision, term),
        })
    }

    async fn leader_of(
        &self,
        caller: &Caller,
        request: pb::LeaderRequest,
    ) -> Result<pb::LeaderResponse, Status> {
        self.api.barrier(false).await?;
        let prefix = recipe::queue_prefix(&request.name);
        recipe::permit_queue(&self.api, caller, &prefix, false)?;
        let (keys, revision) = recipe::read_queue(&self.api, &prefix)?;
        let leader = recipe::first_created(&keys)
            .cloned()
            .ok_or_else(|| recipe_status(RecipeError::ElectionNoLeader))?;
        Ok(pb::LeaderResponse {
            header: self.api.headers().header(revision, self.api.replica.term()),
            kv: Some(key_value(leader)),
        })
    }

    async fn resign_as(
        &self,
        caller: &Caller,
        request: pb::ResignRequest,
    ) -> Result<pb::ResignResponse, Status> {
        self.api.check_size(&request)?;
        let leader = request
            .leader
            .ok_or_else(|| recipe_status(RecipeError::MissingLeaderKey))?;
        // Not leading (any more) is no error: the txn then changes nothing.
        let txn = recipe::withdraw_txn(&leader.key, leader.rev);
        let (response, term) = recipe::propose_txn(&self.api, caller, txn).await?;
        Ok(pb::ResignResponse {
            header: self.api.headers().header(response.revision, term),
        })
    }

    async fn observation(
        &self,
        caller: &Caller,
        request: pb::LeaderRequest,
    ) -> Result<Observation, Status> {
        self.api.barrier(false).await?;
        let prefix = recipe::queue_prefix(&request.name);
        recipe::permit_queue(&self.api, caller, &prefix, false)?;
        // Subscribe before reading: nothing applied in between is missed.
        let applied = self.api.replica.subscribe();
        let (keys, revision) = recipe::read_queue(&self.api, &prefix)?;
        let (observer, first) = Observer::start(recipe::first_created(&keys), revision);
        Ok(Observation {
            api: self.api.clone(),
            prefix,
            observer,
            applied,
            pending: first.into_iter().collect(),
            ended: false,
        })
    }
}

/// What an Observe stream follows (etcd's `Election.observe` loop).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Following {
    /// There was no leader: the next put under the prefix makes one.
    Nobody,
    /// The leader's key: each put on it is a proclamation, its delete ends
    /// the leadership.
    Leader(Vec<u8>),
}

/// The decisions of one Observe stream: which leader values to send, from the
/// keyspace's events under the election's prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observer {
    following: Following,
    /// The first revision whose events are still to be looked at.
    next: Revision,
}

impl Observer {
    /// Starts from `leader` as read at `revision`; it is the first answer, if any.
    pub(crate) fn start(
        leader: Option<&KeyValue>,
        revision: Revision,
    ) -> (Observer, Option<(Revision, KeyValue)>) {
        let mut observer = Observer {
            following: Following::Nobody,
            next: 0,
        };
        let mut answers = Vec::new();
        observer.look(leader, revision, &mut answers);
        (observer, answers.pop())
    }

    /// The first revision `advance` needs the events of.
    pub(crate) fn next(&self) -> Revision {
        self.next
    }

    /// Nothing under the prefix changed up to `revision`: its history before
    /// then is not needed any more (so a compaction cannot cut it).
    pub(crate) fn quiet_through(&mut self, revision: Revision) {
        self.next = self.next.max(revision + 1);
    }

    /// Takes the events under the prefix of revisions `next()..=revision`, in
    /// revision order, and the leader as of `revision`; returns the answers to
    /// send, each with the revision its header carries.
    pub(crate) fn advance(
        &mut self,
        events: &[(Revision, Event)],
        leader: Option<&KeyValue>,
        revision: Revision,
    ) -> Vec<(Revision, KeyValue)> {
        let mut answers = Vec::new();
        for (event_revision, event) in events {
            if *event_revision < self.next {
                continue;
            }
            match (&self.following, event.kind) {
                (Following::Nobody, EventKind::Put) => {
                    // The first put after a leaderless look is the new leader;
                    // later events of its revision are not about it.
                    answers.push((*event_revision, event.kv.clone()));
                    self.following = Following::Leader(event.kv.key.clone());
                    self.next = event_revision + 1;
                }
                (Following::Leader(key), EventKind::Put) if event.kv.key == *key => {
                    answers.push((*event_revision, event.kv.clone()));
                }
                (Following::Leader(key), EventKind::Delete) if event.kv.key == *key => {
                    // The leader is gone: look again, as etcd reads the prefix
                    // anew (values proclaimed in between are not replayed).
                    self.look(leader, revision, &mut answers);
                    return answers;
                }
                _ => {}
            }
        }
        self.next = revision + 1;
        answers
    }

    fn look(
        &mut self,
        leader: Option<&KeyValue>,
        revision: Revision,
        answers: &mut Vec<(Revision, KeyValue)>,
    ) {
        match leader {
            Some(kv) => {
                answers.push((revision, kv.clone()));
                self.following = Following::Leader(kv.key.clone());
            }
            None => self.following = Following::Nobody,
        }
        self.next = revision + 1;
    }
}

/// One Observe stream: its `Observer`, fed from this member's applied state
/// whenever a key under the prefix changes. It is polled by the response
/// stream, so it is dropped (and stops) when the client goes away.
struct Observation {
    api: Api,
    prefix: Vec<u8>,
    observer: Observer,
    applied: broadcast::Receiver<AppliedEvents>,
    pending: VecDeque<(Revision, KeyValue)>,
    ended: bool,
}

impl Observation {
    /// Waits until an applied revision changes a key under the prefix, or the
    /// broadcast lagged. Revisions that change nothing there move the
    /// observer on: the broadcast is in revision order and everything before
    /// it was read or woke this stream, so a stream idle on a busy keyspace
    /// never needs history a compaction removed.
    async fn changed(&mut self) -> Result<(), Status> {
        loop {
            match self.applied.recv().await {
                Ok(applied) if recipe::touches(&applied.events, &self.prefix) => return Ok(()),
                Ok(applied) => self.observer.quiet_through(applied.revision),
                Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(replica_status(&ReplicaError::Stopped));
                }
            }
        }
    }

    async fn next_answer(&mut self) -> Option<Result<pb::LeaderResponse, Status>> {
        loop {
            if let Some((revision, kv)) = self.pending.pop_front() {
                return Some(Ok(pb::LeaderResponse {
                    header: self.api.headers().header(revision, self.api.replica.term()),
                    kv: Some(key_value(kv)),
                }));
            }
            if self.ended {
                return None;
            }
            if let Err(status) = self.changed().await {
                self.ended = true;
                return Some(Err(as_recipe_status(status)));
            }
            let end = recipe::prefix_end(&self.prefix);
            let from = self.observer.next();
            let prefix = &self.prefix;
            let (read, revision) = self.api.replica.read(|space| {
                let revision = space.revision();
                let read = space
                    .events(prefix, &end, from, revision)
                    .and_then(|events| {
                        let keys: Vec<KeyValue> = space.live_in_range(prefix, &end, revision)?;
                        Ok((events, recipe::first_created(&keys).cloned()))
                    });
                (read, revision)
            });
            match read {
                Ok((events, leader)) => {
                    let answers = self.observer.advance(&events, leader.as_ref(), revision);
                    self.pending.extend(answers);
                }
                // History this stream still needed was compacted: the stream
                // ends, as etcd's does when its watch is cancelled.
                Err(MvccError::Compacted) => self.ended = true,
                Err(error) => {
                    self.ended = true;
                    return Some(Err(as_recipe_status(mvcc_status(&error))));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::CampaignResponse>, Status> {
        self.campaign_for(
            &self.api.caller(&request).await.map_err(as_recipe_status)?,
            request.into_inner(),
        )
        .await
        .map(Response::new)
        .map_err(as_recipe_status)
    }

    async fn proclaim(
        &self,
        request: Request<pb::ProclaimRequest>,
    ) -> Result<Response<pb::ProclaimResponse>, Status> {
        self.proclaim_as(
            &self.api.caller(&request).await.map_err(as_recipe_status)?,
            request.into_inner(),
        )
        .await
        .map(Response::new)
        .map_err(as_recipe_status)
    }

    async fn leader(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderResponse>, Status> {
        self.leader_of(
            &self.api.caller(&request).await.map_err(as_recipe_status)?,
            request.into_inner(),
        )
        .await
        .map(Response::new)
        .map_err(as_recipe_status)
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaderResponse, Status>> + Send>>;

    async fn observe(
        &self,
        request: Request<pb::LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = self.api.caller(&request).await.map_err(as_recipe_status)?;
        let observation = self
            .observation(&caller, request.into_inner())
            .await
            .map_err(as_recipe_status)?;
        let answers = futures::stream::unfold(observation, |mut observation| async move {
            let answer = observation.next_answer().await?;
            Some((answer, observation))
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn resign(
        &self,
        request: Request<pb::ResignRequest>,
    ) -> Result<Response<pb::ResignResponse>, Status> {
        self.resign_as(
            &self.api.caller(&request).await.map_err(as_recipe_status)?,
            request.into_inner(),
        )
        .await
        .map(Response::new)
        .map_err(as_recipe_status)
    }
}
