//! `--force-new-cluster`: a member that lost its quorum for good becomes the
//! only member of its cluster, with its data, its ids and its whole log.
//!
//! Before Raft starts, the member writes one membership entry after the last
//! entry of its log: this member alone as the voter, in a term above any it
//! has seen, and a vote for itself in that term. Raft then starts as usual:
//! the one voter elects itself and commits everything in its log, the forced
//! membership included. Unlike etcd, which drops the entries its member had
//! not yet seen committed, every entry is kept: the old leader may have
//! acknowledged them to clients already (a follower learns of a commit one
//! round after the client does).
//!
//! The rewrite is refused while any other member of the old membership still
//! answers on its peer URL: a cluster that still runs would then have two
//! leaders writing to diverging copies of the same keys. The other members
//! come back with `member add` and fresh data directories.
//!
//! `plan` decides (a plain function with table tests); `force_new_cluster`
//! reads the stores, asks the peers and writes.

use std::collections::{BTreeMap, BTreeSet};

use mainstay_storage::{LogIdRecord, LogStore, StateMeta, StoredEntry, VoteRecord};
use openraft::{EntryPayload, Membership};

use crate::codec::{decode_stored_membership, entry_from_stored, entry_to_stored};
use crate::peer_channel::Dial;
use crate::type_config::MemberNode;

/// What `--force-new-cluster` does to a member's stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ForcePlan {
    /// No log and nothing applied: a new member, started as usual.
    Pristine,
    /// The membership is this member alone already.
    Unchanged,
    /// Write `entry` (this member alone) after the log, voting for this
    /// member in its term; first mark the log purged up to `purge` when the
    /// state is ahead of it (so the entry follows what was applied).
    Rewrite {
        entry: LogIdRecord,
        vote: VoteRecord,
        purge: Option<LogIdRecord>,
        membership: Membership<u64, MemberNode>,
        /// The members the rewrite removes, with how to reach them.
        removed: Vec<(u64, MemberNode)>,
    },
}

/// Decides the rewrite. `current` is the membership in effect (the last one
/// in the log, else the applied one), `own` this member's description for
/// the case that it is not in `current` (it then joins as the one voter).
pub(crate) fn plan(
    own_id: u64,
    own: &MemberNode,
    current: &Membership<u64, MemberNode>,
    vote: Option<VoteRecord>,
    last: Option<LogIdRecord>,
    applied: Option<LogIdRecord>,
) -> ForcePlan {
    let last_index = last.map(|l| l.index);
    let applied_index = applied.map(|a| a.index);
    let Some(end) = last_index.max(applied_index) else {
        return ForcePlan::Pristine;
    };
    let alone = BTreeSet::from([own_id]);
    let configs = current.get_joint_config();
    if configs.len() == 1 && configs[0] == alone && current.nodes().count() == 1 {
        return ForcePlan::Unchanged;
    }
    let term = vote
        .map_or(0, |v| v.term)
        .max(last.map_or(0, |l| l.term))
        .max(applied.map_or(0, |a| a.term))
        + 1;
    let node = current.get_node(&own_id).unwrap_or(own).clone();
    let removed = current
        .nodes()
        .filter(|(id, _)| **id != own_id)
        .map(|(id, node)| (*id, node.clone()))
        .collect();
    let membership = Membership::new(vec![alone], BTreeMap::from([(own_id, node)]))
        .expect("one voter that is also its one node is a valid membership");
    ForcePlan::Rewrite {
        entry: LogIdRecord {
            term,
            node_id: 0,
            index: end + 1,
        },
        vote: VoteRecord {
            term,
            node_id: Some(own_id),
            committed: false,
        },
        purge: match (last_index, applied) {
            (Some(last), Some(applied)) if applied.index <= last => None,
            (_, applied) => applied,
        },
        membership,
        removed,
    }
}

/// The membership in effect: the last membership entry of the log (in effect
/// as soon as it is appended), else the one the state applied.
fn membership_in_effect(
    log: &LogStore,
    meta: &StateMeta,
) -> Result<Membership<u64, MemberNode>, String> {
    let first = log.purged().map_or(0, |p| p.index + 1);
    let end = log.last_index().map_or(0, |l| l + 1);
    for stored in log.entries(first, end).iter().rev() {
        if stored.payload.first() == Some(&crate::proposal::COMMAND_TAG) {
            continue;
        }
        if let EntryPayload::Membership(membership) = entry_from_stored(stored)?.payload {
            return Ok(membership);
        }
    }
    Ok(decode_stored_membership(&meta.membership)?
        .membership()
        .clone())
}

/// Which of `members` answer on a peer URL (each as "name (id) at URL").
async fn answering(members: &[(u64, MemberNode)], dial: &Dial) -> Vec<String> {
    let asks = members.iter().flat_map(|(id, node)| {
        node.peer_urls.iter().map(move |url| async move {
            crate::cluster_view::fetch_cluster_view(dial, url)
                .await
                .ok()
                .map(|_| format!("{} ({id:x}) at {url}", node.name))
        })
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Rewrites the stores of a member started with `--force-new-cluster` (see
/// the module docs). Refuses while another member answers.
pub(crate) async fn force_new_cluster(
    log: &mut LogStore,
    meta: &StateMeta,
    own_id: u64,
    own: &MemberNode,
    dial: &Dial,
) -> Result<(), String> {
    let current = membership_in_effect(log, meta)?;
    match plan(
        own_id,
        own,
        &current,
        log.vote(),
        log.last_log_id(),
        meta.applied,
    ) {
        ForcePlan::Pristine => {
            tracing::warn!(
                "--force-new-cluster has no effect: this member has no data yet and starts as configured"
            );
            Ok(())
        }
        ForcePlan::Unchanged => {
            tracing::info!(
                "--force-new-cluster: this member is its cluster's only member already; nothing to rewrite"
            );
            Ok(())
        }
        ForcePlan::Rewrite {
            entry,
            vote,
            purge,
            membership,
            removed,
        } => {
            let serving = answering(&removed, dial).await;
            if !serving.is_empty() {
                return Err(format!(
                    "--force-new-cluster refused: {} still answer{}; a running cluster must not get a second one. Stop {} first, or remove this member's flag",
                    serving.join(", "),
                    if serving.len() == 1 { "s" } else { "" },
                    if serving.len() == 1 { "it" } else { "them" },
                ));
            }
            if let Some(purge) = purge {
                log.purge_upto(purge)
                    .map_err(|e| format!("--force-new-cluster: {e}"))?;
            }
            // The vote first: a crash before the entry leaves a vote in a
            // new term and the old log, and the next forced start plans
            // again from there.
            log.save_vote(vote)
                .map_err(|e| format!("--force-new-cluster: {e}"))?;
            let stored: StoredEntry = entry_to_stored(&openraft::Entry {
                log_id: crate::codec::log_id_from_record(&entry),
                payload: EntryPayload::Membership(membership),
            });
            log.append(vec![stored])
                .map_err(|e| format!("--force-new-cluster: {e}"))?;
            let removed: Vec<String> = removed
                .iter()
                .map(|(id, node)| format!("{} ({id:x})", node.name))
                .collect();
            tracing::warn!(
                removed = ?removed,
                term = entry.term,
                index = entry.index,
                "--force-new-cluster: this member is now its cluster's only member; add the others back (member add, empty data directories), then restart it without the flag"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> MemberNode {
        MemberNode {
            name: name.into(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379")],
        }
    }

    fn membership(voters: &[&[u64]], nodes: &[u64]) -> Membership<u64, MemberNode> {
        Membership::new(
            voters
                .iter()
                .map(|config| config.iter().copied().collect::<BTreeSet<u64>>())
                .collect(),
            nodes
                .iter()
                .map(|id| (*id, node(&format!("m{id}"))))
                .collect::<BTreeMap<u64, MemberNode>>(),
        )
        .expect("valid membership")
    }

    fn id(term: u64, index: u64) -> Option<LogIdRecord> {
        Some(LogIdRecord {
            term,
            node_id: 0,
            index,
        })
    }

    fn vote(term: u64, node_id: u64) -> Option<VoteRecord> {
        Some(VoteRecord {
            term,
            node_id: Some(node_id),
            committed: true,
        })
    }

    /// (entry term, entry index, purge index, removed ids) of a rewrite.
    fn rewrite(plan: &ForcePlan) -> (u64, u64, Option<u64>, Vec<u64>) {
        match plan {
            ForcePlan::Rewrite {
                entry,
                vote,
                purge,
                membership,
                removed,
            } => {
                assert_eq!(vote.term, entry.term, "the vote is in the entry's term");
                assert_eq!(vote.node_id, Some(1), "for this member");
                assert!(!vote.committed, "a vote, not a leadership");
                assert_eq!(
                    membership.get_joint_config(),
                    &vec![BTreeSet::from([1])],
                    "this member alone votes"
                );
                assert_eq!(membership.nodes().count(), 1, "and is the only node");
                (
                    entry.term,
                    entry.index,
                    purge.map(|p| p.index),
                    removed.iter().map(|(id, _)| *id).collect(),
                )
            }
            other => panic!("expected a rewrite, got {other:?}"),
        }
    }

    #[test]
    fn the_plan_for_each_member_state() {
        let own = node("m1");
        let three = membership(&[&[1, 2, 3]], &[1, 2, 3]);
        // The usual case: log ahead of the state; the new term is above the
        // vote's and the log's, the entry follows the log.
        let plan_of = |current: &Membership<u64, MemberNode>, v, last, applied| {
            plan(1, &own, current, v, last, applied)
        };
        assert_eq!(
            rewrite(&plan_of(&three, vote(7, 2), id(7, 120), id(7, 100))),
            (8, 121, None, vec![2, 3])
        );
        // A vote behind the log's last term (cannot happen, still safe).
        assert_eq!(
            rewrite(&plan_of(&three, vote(3, 2), id(5, 10), id(5, 10))).0,
            6
        );
        // No vote stored: the term still moves past the log's.
        assert_eq!(
            rewrite(&plan_of(&three, None, id(4, 9), None)),
            (5, 10, None, vec![2, 3])
        );
        // The state is ahead of the log (the log purged by a snapshot, or
        // lost): the log is marked purged up to what was applied first.
        assert_eq!(
            rewrite(&plan_of(&three, vote(9, 3), id(9, 40), id(9, 55))),
            (10, 56, Some(55), vec![2, 3])
        );
        assert_eq!(
            rewrite(&plan_of(&three, vote(9, 3), None, id(9, 55))),
            (10, 56, Some(55), vec![2, 3])
        );
        // Mid-change (joint), with a learner: everyone else goes.
        let joint = membership(&[&[1, 2, 3], &[1, 2, 4]], &[1, 2, 3, 4, 5]);
        assert_eq!(
            rewrite(&plan_of(&joint, vote(2, 1), id(2, 30), id(2, 30))).3,
            vec![2, 3, 4, 5]
        );
        // A learner forced: it becomes the one voter.
        let learner = membership(&[&[2, 3]], &[1, 2, 3]);
        assert_eq!(
            rewrite(&plan_of(&learner, vote(2, 2), id(2, 30), id(2, 30))).3,
            vec![2, 3]
        );
        // Not in the membership at all (removed, then forced): it joins as
        // the one voter with the description it was started with.
        let without = membership(&[&[2, 3]], &[2, 3]);
        match plan_of(&without, vote(2, 2), id(2, 30), id(2, 30)) {
            ForcePlan::Rewrite { membership, .. } => {
                assert_eq!(membership.get_node(&1), Some(&own));
            }
            other => panic!("expected a rewrite, got {other:?}"),
        }
        // Alone already (a restart with the flag left on): nothing to do.
        let alone = membership(&[&[1]], &[1]);
        assert_eq!(
            plan_of(&alone, vote(8, 1), id(8, 200), id(8, 200)),
            ForcePlan::Unchanged
        );
        // Alone as a voter but with a learner: the learner goes.
        let with_learner = membership(&[&[1]], &[1, 2]);
        assert_eq!(
            rewrite(&plan_of(&with_learner, vote(8, 1), id(8, 200), id(8, 200))).3,
            vec![2]
        );
        // No data: nothing to force.
        assert_eq!(
            plan_of(&Membership::default(), None, None, None),
            ForcePlan::Pristine
        );
    }
}
