//! Membership rules, pure: the types of a membership change and the decision
//! the leader takes on one (`plan_change`), with etcd's rules: one learner at
//! most; peer URLs unique across members; a learner is promoted only once it
//! has replicated at least 90 % of the leader's log; a change that would leave
//! fewer voters up than a quorum of the new voter set is refused (etcd's strict
//! reconfiguration check), except a one-voter cluster growing to two; the last
//! voter cannot go; a member added at run time gets a fresh id (never a present
//! one's) and an empty name until it starts and publishes itself. Also etcd's
//! member and cluster id derivations. `membership` runs the decisions through
//! openraft.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::ReplicaError;
use crate::type_config::MemberNode;

/// etcd's member id for a member of a new cluster: the first 8 bytes
/// (big-endian) of the SHA-1 of its peer URLs, sorted and concatenated, then
/// the cluster token. Tools that precompute ids (and etcd's e2e tests) agree.
pub fn member_id_for(peer_urls: &[String], cluster_token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut bytes = urls.concat().into_bytes();
    bytes.extend_from_slice(cluster_token.as_bytes());
    // Zero means "no member" on the wire.
    sha1_prefix(&bytes).max(1)
}

/// etcd's cluster id: the first 8 bytes of the SHA-1 of the sorted member ids,
/// each as 8 big-endian bytes.
pub fn cluster_id_for(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    sha1_prefix(&bytes)
}

/// SHA-1 is what etcd uses here, for identity, not for security.
fn sha1_prefix(bytes: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes);
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(prefix)
}

/// Most learners at once (etcd's `--max-learners` default).
pub const LEARNERS_MAX: usize = 1;

/// A requested membership change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add a member that will listen on these peer URLs.
    Add {
        /// Its peer URLs.
        peer_urls: Vec<String>,
        /// Whether it joins as a non-voting learner.
        learner: bool,
    },
    /// Remove a member.
    Remove(u64),
    /// Make a learner a voter.
    Promote(u64),
    /// Change a member's peer URLs.
    Update(u64, Vec<String>),
}

/// Why a membership change was refused (nothing changed) or failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MembershipError {
    /// No member has that id.
    #[error("member not found")]
    NotFound,
    /// Another member already uses one of the peer URLs.
    #[error("peer URLs already exist")]
    PeerUrlsExist,
    /// The member to promote is a voter already.
    #[error("not a learner")]
    NotLearner,
    /// The learner has not caught up with the leader.
    #[error("learner not in sync")]
    LearnerNotReady,
    /// The cluster already has `LEARNERS_MAX` learners.
    #[error("too many learners")]
    TooManyLearners,
    /// Removing the last voter would leave no cluster.
    #[error("not enough started members")]
    NotEnoughStarted,
    /// Replication failed; the outcome may be unknown.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
}

/// What a committed change returns: the added member's id, if any, and the log
/// index at which the change was committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChangeOutcome {
    /// Id given to an added member.
    pub added: Option<u64>,
    /// Log index of the final membership entry.
    pub index: u64,
    /// Whether that entry is committed. Only a one-voter cluster growing to
    /// two answers before: the new voter must start before anything commits
    /// (as in etcd, where the cluster waits for it too).
    pub committed: bool,
}

/// Who a stopping leader hands leadership to (etcd transfers it on a
/// graceful stop): the other voter whose log matches the leader's furthest
/// (it can win at once), the lower id on a tie; `None` when it leads alone
/// or no voter's progress is known.
pub(crate) fn successor(me: u64, voters: &[u64], matched: &BTreeMap<u64, u64>) -> Option<u64> {
    voters
        .iter()
        .copied()
        .filter(|voter| *voter != me)
        .filter_map(|voter| matched.get(&voter).map(|index| (voter, *index)))
        .max_by(|(a, x), (b, y)| x.cmp(y).then(b.cmp(a)))
        .map(|(voter, _)| voter)
}

/// etcd's strict reconfiguration rule: after a change, the voters that are up
/// must still be a majority of the new voter set.
pub(crate) fn keeps_quorum(up_after: usize, voters_after: usize) -> bool {
    up_after > voters_after / 2
}

/// Whether the strict reconfiguration check refuses a change: only when it is
/// on (`--strict-reconfig-check`, etcd's default) and the change does not keep a
/// quorum of started voters. Off, the change is proposed; one that cannot commit
/// without a voter that is down waits for it (and the caller may time out).
pub(crate) fn refused_by_strict_check(strict: bool, keeps_quorum: bool) -> bool {
    strict && !keeps_quorum
}

/// etcd's one exception to `keeps_quorum`, for adding a voter: a one-voter
/// cluster may grow to two (1 started of 2), as when a cluster restored from a
/// snapshot onto one member is grown again. The new voter is not up yet, so the
/// cluster has no quorum until it starts.
pub(crate) fn grows_a_single_member(voters_before: &[u64], voters_after: &[u64]) -> bool {
    voters_before.len() == 1 && voters_after.len() == 2
}

/// What the leader knows when it decides on a change.
pub(crate) struct Facts<'a> {
    /// Every member: id, description, whether a learner.
    pub(crate) members: &'a [(u64, MemberNode, bool)],
    /// Members that are up: the leader, and those that acknowledged a
    /// heartbeat lately.
    pub(crate) up: &'a BTreeSet<u64>,
    /// `--strict-reconfig-check`.
    pub(crate) strict: bool,
    /// The leader's last log index (also the salt of a new member's id: fresh,
    /// and the same on every attempt at this position).
    pub(crate) last_log_index: u64,
    /// Per member, the last log index it is known to hold.
    pub(crate) matched: &'a BTreeMap<u64, u64>,
}

/// What to propose for an accepted change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Add a member under a fresh id, a voter unless `learner`.
    /// `uncommittable`: a one-voter cluster grows to two while the new voter is
    /// not up, so nothing commits until it starts.
    Add {
        id: u64,
        node: MemberNode,
        learner: bool,
        uncommittable: bool,
    },
    /// Remove a learner.
    RemoveLearner(u64),
    /// Remove a voter.
    RemoveVoter(u64),
    /// Make a learner a voter.
    Promote(u64),
    /// Replace a member's description (new peer URLs).
    SetNode(u64, MemberNode),
}

/// Decides on a change: what to propose, or why it is refused.
pub(crate) fn plan_change(
    change: MemberChange,
    facts: &Facts<'_>,
) -> Result<Plan, MembershipError> {
    let find = |id: u64| facts.members.iter().find(|(member, _, _)| *member == id);
    let urls_taken = |urls: &[String], except: Option<u64>| {
        facts.members.iter().any(|(id, node, _)| {
            Some(*id) != except && node.peer_urls.iter().any(|u| urls.contains(u))
        })
    };
    let voters: Vec<u64> = facts
        .members
        .iter()
        .filter(|(_, _, learner)| !*learner)
        .map(|(id, _, _)| *id)
        .collect();
    let quorum_up = |new_voters: &[u64]| {
        let up = new_voters.iter().filter(|id| facts.up.contains(id)).count();
        keeps_quorum(up, new_voters.len())
    };
    let refused = |new_voters: &[u64]| refused_by_strict_check(facts.strict, quorum_up(new_voters));
    match change {
        MemberChange::Add { peer_urls, learner } => {
            if urls_taken(&peer_urls, None) {
                return Err(MembershipError::PeerUrlsExist);
            }
            let learners = facts.members.iter().filter(|(_, _, l)| *l).count();
            if learner && learners >= LEARNERS_MAX {
                return Err(MembershipError::TooManyLearners);
            }
            let salt = format!("{}", facts.last_log_index);
            let mut id = member_id_for(&peer_urls, &salt);
            while find(id).is_some() {
                id = id.wrapping_add(1).max(1);
            }
            let mut after = voters.clone();
            after.push(id);
            let mut uncommittable = false;
            if !learner && !quorum_up(&after) {
                if grows_a_single_member(&voters, &after) {
                    uncommittable = true;
                } else if refused(&after) {
                    return Err(MembershipError::NotEnoughStarted);
                }
            }
            let node = MemberNode {
                name: String::new(),
                peer_urls,
                client_urls: Vec::new(),
            };
            Ok(Plan::Add {
                id,
                node,
                learner,
                uncommittable,
            })
        }
        MemberChange::Remove(id) => {
            let Some((_, _, learner)) = find(id) else {
                return Err(MembershipError::NotFound);
            };
            if *learner {
                return Ok(Plan::RemoveLearner(id));
            }
            let after: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
            // The last voter cannot go, strict check or not.
            if after.is_empty() || refused(&after) {
                return Err(MembershipError::NotEnoughStarted);
            }
            Ok(Plan::RemoveVoter(id))
        }
        MemberChange::Promote(id) => {
            let Some((_, _, learner)) = find(id) else {
                return Err(MembershipError::NotFound);
            };
            if !*learner {
                return Err(MembershipError::NotLearner);
            }
            let matched = facts.matched.get(&id).copied().unwrap_or(0);
            if matched.saturating_mul(10) < facts.last_log_index.saturating_mul(9) {
                return Err(MembershipError::LearnerNotReady);
            }
            let mut after = voters.clone();
            after.push(id);
            if refused(&after) {
                return Err(MembershipError::NotEnoughStarted);
            }
            Ok(Plan::Promote(id))
        }
        MemberChange::Update(id, peer_urls) => {
            let Some((_, node, _)) = find(id) else {
                return Err(MembershipError::NotFound);
            };
            if urls_taken(&peer_urls, Some(id)) {
                return Err(MembershipError::PeerUrlsExist);
            }
            Ok(Plan::SetNode(
                id,
                MemberNode {
                    peer_urls,
                    ..node.clone()
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopping_leader_hands_over_to_the_furthest_voter() {
        // (me, voters, matched index per follower) → successor
        type Case<'a> = (u64, &'a [u64], &'a [(u64, u64)], Option<u64>);
        let cases: [Case<'_>; 6] = [
            (1, &[1, 2, 3], &[(2, 10), (3, 12)], Some(3)),
            (1, &[1, 2, 3], &[(2, 12), (3, 12)], Some(2)),
            (1, &[1], &[], None),
            (1, &[1, 2, 3], &[], None),
            // A learner's progress is known but it is not a voter.
            (1, &[1, 2], &[(2, 5), (9, 50)], Some(2)),
            (2, &[1, 2, 3], &[(1, 7), (3, 0)], Some(1)),
        ];
        for (me, voters, matched, expected) in cases {
            let matched: BTreeMap<u64, u64> = matched.iter().copied().collect();
            assert_eq!(
                successor(me, voters, &matched),
                expected,
                "{voters:?} {matched:?}"
            );
        }
    }

    #[test]
    fn strict_reconfiguration_table() {
        // (voters up after, voters after, keeps a quorum)
        let cases = [
            (1, 1, true),
            (1, 2, false),
            (2, 2, true),
            (2, 3, true),
            (1, 3, false),
            (2, 4, false),
            (3, 4, true),
            (3, 5, true),
            (2, 5, false),
        ];
        for (up, voters, keeps) in cases {
            assert_eq!(keeps_quorum(up, voters), keeps, "{up} up of {voters}");
        }
        // (strict check on, keeps a quorum, refused)
        let cases = [
            (true, true, false),
            (true, false, true),
            (false, true, false),
            (false, false, false),
        ];
        for (strict, keeps, refused) in cases {
            assert_eq!(
                refused_by_strict_check(strict, keeps),
                refused,
                "strict {strict}, keeps a quorum {keeps}"
            );
        }
        // etcd's exception: one voter growing to two, and nothing else.
        assert!(grows_a_single_member(&[1], &[1, 2]));
        assert!(!grows_a_single_member(&[1, 2], &[1, 2, 3]));
        assert!(!grows_a_single_member(&[1, 2], &[1]));
        assert!(!grows_a_single_member(&[1], &[1]));
    }

    #[test]
    fn ids_are_derived_as_etcd_derives_them() {
        // Facts read from etcd 3.4.23 started with --initial-cluster
        // a=http://127.0.0.1:41380,b=http://127.0.0.1:41390,c=http://127.0.0.1:41400
        // and --initial-cluster-token tok-1 (its "added member" log lines).
        let url = |port: u16| vec![format!("http://127.0.0.1:{port}")];
        let ids: Vec<u64> = [41380, 41390, 41400]
            .into_iter()
            .map(|port| member_id_for(&url(port), "tok-1"))
            .collect();
        assert_eq!(
            ids,
            vec![
                0x29be_1ae5_193b_2e64,
                0x0120_3b43_c093_7dd2,
                0xe432_f568_f844_9f2e
            ]
        );
        assert_eq!(cluster_id_for(&ids), 0x4347_2f52_c41a_0358);
        // Several peer URLs are sorted first, so their order does not matter.
        let two = ["http://b:2380".to_string(), "http://a:2380".to_string()];
        let swapped = [two[1].clone(), two[0].clone()];
        assert_eq!(member_id_for(&two, "t"), member_id_for(&swapped, "t"));
    }

    fn member(id: u64, port: u16, learner: bool) -> (u64, MemberNode, bool) {
        (
            id,
            MemberNode {
                name: format!("m{id}"),
                peer_urls: vec![format!("http://10.0.0.{id}:{port}")],
                client_urls: Vec::new(),
            },
            learner,
        )
    }

    fn urls(id: u64, port: u16) -> Vec<String> {
        vec![format!("http://10.0.0.{id}:{port}")]
    }

    #[test]
    fn change_decision_table() {
        // Goal: every rule of `plan_change` decides as etcd does, for a given
        // cluster (members, who is up, the strict check, log progress).
        let three = [
            member(1, 2380, false),
            member(2, 2380, false),
            member(3, 2380, false),
        ];
        let with_learner = [
            member(1, 2380, false),
            member(2, 2380, false),
            member(4, 2380, true),
        ];
        let one = [member(1, 2380, false)];
        let all_up: BTreeSet<u64> = [1, 2, 3, 4].into();
        let leader_only: BTreeSet<u64> = [1].into();
        let two_up: BTreeSet<u64> = [1, 2].into();
        let caught_up: BTreeMap<u64, u64> = [(4, 95)].into();
        let behind: BTreeMap<u64, u64> = [(4, 80)].into();
        type Expect = Result<&'static str, MembershipError>;
        type Members<'a> = &'a [(u64, MemberNode, bool)];
        /// (case, members, up, strict check, matched, change, expected plan)
        type Case<'a> = (
            &'a str,
            Members<'a>,
            &'a BTreeSet<u64>,
            bool,
            &'a BTreeMap<u64, u64>,
            MemberChange,
            Expect,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "add a voter, all up",
                &three,
                &all_up,
                true,
                &caught_up,
                MemberChange::Add {
                    peer_urls: urls(9, 2380),
                    learner: false,
                },
                Ok("add voter"),
            ),
            (
                "add with taken URLs",
                &three,
                &all_up,
                true,
                &caught_up,
                MemberChange::Add {
                    peer_urls: urls(2, 2380),
                    learner: false,
                },
                Err(MembershipError::PeerUrlsExist),
            ),
            (
                "second learner",
                &with_learner,
                &all_up,
                true,
                &caught_up,
                MemberChange::Add {
                    peer_urls: urls(9, 2380),
                    learner: true,
                },
                Err(MembershipError::TooManyLearners),
            ),
            (
                "first learner, nobody else up",
                &three,
                &leader_only,
                true,
                &caught_up,
                MemberChange::Add {
                    peer_urls: urls(9, 2380),
                    learner: true,
                },
                Ok("add learner"),
            ),
            (
                "add a voter, 1 of 3 up, strict",
                &three,
                &leader_only,
                true,
                &caught_up,
                MemberChange::Add {
                    peer_urls: urls(9, 2380),
                    learner: false,
                },
                Err(MembershipError::NotEnoughStarted),
            ),
            (
                "add a voter, 1 of 3 up, not strict",
                &three,
                &leader_only,
                false,
                &caught_up,
                MemberChange::Add {
                    peer_urls: urls(9, 2380),
                    learner: false,
                },
                Ok("add voter"),
            ),
            (
                "one voter grows to two",
                &one,
                &leader_only,
                true,
                &caught_up,
                MemberChange::Add {
                    peer_urls: urls(9, 2380),
                    learner: false,
                },
                Ok("add voter uncommittable"),
            ),
            (
                "remove a voter, two stay up",
                &three,
                &two_up,
                true,
                &caught_up,
                MemberChange::Remove(3),
                Ok("remove voter"),
            ),
            (
                "remove an up voter, 1 of 2 left up",
                &three,
                &two_up,
                true,
                &caught_up,
                MemberChange::Remove(2),
                Err(MembershipError::NotEnoughStarted),
            ),
            (
                "same, not strict",
                &three,
                &two_up,
                false,
                &caught_up,
                MemberChange::Remove(2),
                Ok("remove voter"),
            ),
            (
                "remove the last voter",
                &one,
                &leader_only,
                false,
                &caught_up,
                MemberChange::Remove(1),
                Err(MembershipError::NotEnoughStarted),
            ),
            (
                "remove a learner",
                &with_learner,
                &leader_only,
                true,
                &caught_up,
                MemberChange::Remove(4),
                Ok("remove learner"),
            ),
            (
                "remove an unknown id",
                &three,
                &all_up,
                true,
                &caught_up,
                MemberChange::Remove(7),
                Err(MembershipError::NotFound),
            ),
            (
                "promote a caught-up learner",
                &with_learner,
                &all_up,
                true,
                &caught_up,
                MemberChange::Promote(4),
                Ok("promote"),
            ),
            (
                "promote a learner behind",
                &with_learner,
                &all_up,
                true,
                &behind,
                MemberChange::Promote(4),
                Err(MembershipError::LearnerNotReady),
            ),
            (
                "promote a voter",
                &three,
                &all_up,
                true,
                &caught_up,
                MemberChange::Promote(2),
                Err(MembershipError::NotLearner),
            ),
            (
                "promote a learner that is down, 1 of 3 up",
                &with_learner,
                &leader_only,
                true,
                &caught_up,
                MemberChange::Promote(4),
                Err(MembershipError::NotEnoughStarted),
            ),
            (
                "update to new URLs",
                &three,
                &all_up,
                true,
                &caught_up,
                MemberChange::Update(2, urls(2, 2390)),
                Ok("set node"),
            ),
            (
                "update to its own URLs",
                &three,
                &all_up,
                true,
                &caught_up,
                MemberChange::Update(2, urls(2, 2380)),
                Ok("set node"),
            ),
            (
                "update to another's URLs",
                &three,
                &all_up,
                true,
                &caught_up,
                MemberChange::Update(2, urls(3, 2380)),
                Err(MembershipError::PeerUrlsExist),
            ),
            (
                "update an unknown id",
                &three,
                &all_up,
                true,
                &caught_up,
                MemberChange::Update(7, urls(7, 2380)),
                Err(MembershipError::NotFound),
            ),
        ];
        for (name, members, up, strict, matched, change, expected) in cases {
            let facts = Facts {
                members,
                up,
                strict,
                last_log_index: 100,
                matched,
            };
            let got = plan_change(change, &facts).map(|plan| match plan {
                Plan::Add { learner: true, .. } => "add learner",
                Plan::Add {
                    uncommittable: true,
                    ..
                } => "add voter uncommittable",
                Plan::Add { .. } => "add voter",
                Plan::RemoveLearner(_) => "remove learner",
                Plan::RemoveVoter(_) => "remove voter",
                Plan::Promote(_) => "promote",
                Plan::SetNode(..) => "set node",
            });
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn an_added_member_gets_a_fresh_id_and_an_empty_name() {
        // Goal: the new id is derived from the peer URLs and the log position,
        // never one a member has, and the member is nameless until it publishes.
        let members = [member(1, 2380, false)];
        let up: BTreeSet<u64> = [1].into();
        let matched = BTreeMap::new();
        let mut facts = Facts {
            members: &members,
            up: &up,
            strict: true,
            last_log_index: 7,
            matched: &matched,
        };
        let change = MemberChange::Add {
            peer_urls: urls(9, 2380),
            learner: true,
        };
        let Ok(Plan::Add { id, node, .. }) = plan_change(change.clone(), &facts) else {
            panic!("add refused");
        };
        assert_eq!(id, member_id_for(&urls(9, 2380), "7"));
        assert!(node.name.is_empty());
        // A member already holding that id pushes the new one along.
        let taken = [
            member(1, 2380, false),
            (id, member(5, 2380, false).1, false),
        ];
        let up_all: BTreeSet<u64> = [1, id].into();
        facts.members = &taken;
        facts.up = &up_all;
        let Ok(Plan::Add { id: next, .. }) = plan_change(change, &facts) else {
            panic!("add refused");
        };
        assert_eq!(next, id.wrapping_add(1).max(1));
    }
}
