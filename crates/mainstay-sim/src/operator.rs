//! The simulated operator: replaces a member the way the runbook says, through
//! the public API. Remove it, make sure its process is gone and wipe its data,
//! add it back (a new member id on the same peer URL), start it with
//! `--initial-cluster-state existing`; it catches up by snapshot.
//!
//! The operator is a turmoil client driving the Cluster API of any live member;
//! the steps that need the simulation itself (stopping the host, wiping the disk,
//! starting the host) are done by the run loop when the stage says so.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_proto::etcdserverpb::cluster_client::ClusterClient;
use mainstay_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberListRequest, MemberRemoveRequest,
};

/// Where a replacement stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The operator is removing the member.
    Removing,
    /// Removed: the run loop stops the host and wipes its data.
    Removed,
    /// Wiped: the operator adds the member back.
    Wiped,
    /// Added: the run loop starts it with `existing`.
    Added,
    /// Started on an empty data directory.
    Started,
    /// The operator gave up after removing the member (no quorum to add it back
    /// for too long): the member stays down.
    Abandoned,
    /// The operator gave up before the removal went through (the cluster refused
    /// it, e.g. not enough members up): the member was never touched.
    Declined,
}

/// Shared between the operator client and the run loop.
pub type Shared = Arc<Mutex<Stage>>;

fn lock(stage: &Shared) -> std::sync::MutexGuard<'_, Stage> {
    stage.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the stage.
pub fn stage(shared: &Shared) -> Stage {
    *lock(shared)
}

/// Sets the stage.
pub fn set(shared: &Shared, stage: Stage) {
    *lock(shared) = stage;
}

/// How long the operator keeps trying (a quorum may be down for a while).
const PATIENCE: Duration = Duration::from_secs(60);

/// A linearizable member list, or `None` if it failed or timed out.
async fn list_members(admin: &mut ClusterClient<tonic::transport::Channel>) -> Option<Vec<Member>> {
    let listed = tokio::time::timeout(
        Duration::from_secs(3),
        admin.member_list(MemberListRequest { linearizable: true }),
    )
    .await;
    match listed {
        Ok(Ok(listed)) => Some(listed.into_inner().members),
        _ => None,
    }
}

/// The operator's client task replacing `name` through the other members.
pub async fn replace(
    name: String,
    others: Vec<String>,
    shared: Shared,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let peer_url = format!("http://{name}:2380");
    let mut attempt = 0usize;
    let mut removed = false;
    loop {
        if tokio::time::Instant::now() > deadline {
            let gave_up = if stage(&shared) == Stage::Removing {
                Stage::Declined
            } else {
                Stage::Abandoned
            };
            set(&shared, gave_up);
            return Ok(());
        }
        attempt += 1;
        let target = &others[attempt % others.len()];
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Ok(channel) = crate::net::channel(&format!("http://{target}:2379")) else {
            continue;
        };
        let mut admin = ClusterClient::new(channel);
        match stage(&shared) {
            Stage::Removing if !removed => {
                let Some(listed) = list_members(&mut admin).await else {
                    continue;
                };
                let old = listed
                    .into_iter()
                    .find(|m| m.peer_ur_ls.contains(&peer_url));
                let Some(old) = old else {
                    removed = true;
                    set(&shared, Stage::Removed);
                    continue;
                };
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    admin.member_remove(MemberRemoveRequest { id: old.id }),
                )
                .await;
                match reply {
                    Ok(Ok(_)) => {
                        removed = true;
                        set(&shared, Stage::Removed);
                    }
                    Ok(Err(status)) if status.message() == "etcdserver: member not found" => {
                        removed = true;
                        set(&shared, Stage::Removed);
                    }
                    _ => {}
                }
            }
            Stage::Wiped => {
                let reply = tokio::time::timeout(
                    Duration::from_secs(5),
                    admin.member_add(MemberAddRequest {
                        peer_ur_ls: vec![peer_url.clone()],
                        is_learner: false,
                    }),
                )
                .await;
                match reply {
                    Ok(Ok(_)) => {
                        set(&shared, Stage::Added);
                        return Ok(());
                    }
                    Ok(Err(status))
                        if status.message() == "etcdserver: Peer URLs already exists" =>
                    {
                        // Either an earlier attempt went through (its answer was
                        // lost: the member is listed unstarted), or the old member
                        // is still listed: remove it again.
                        let Some(listed) = list_members(&mut admin).await else {
                            continue;
                        };
                        let unstarted = listed
                            .iter()
                            .any(|m| m.peer_ur_ls.contains(&peer_url) && m.name.is_empty());
                        if unstarted {
                            set(&shared, Stage::Added);
                            return Ok(());
                        }
                        removed = false;
                        set(&shared, Stage::Removing);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}
