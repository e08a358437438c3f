//! Invariants checked while a simulation runs.
//!
//! - Election safety (Raft §5.2): at most one leader per term.
//! - State machine safety (Raft §5.4.3): replicas that applied the same index
//!   have the same keyspace hash (and revision). The record is kept for the whole
//!   run, so a committed entry that is later lost or changed shows up as a
//!   different hash at its index on whichever member applies the replacement.
//! - Durability: a serving member's applied index and revision never go back,
//!   across crashes and restarts (a restarted member serves only once it has
//!   caught up with the leader).
//! - Committed entries never lost and revisions rising without gaps are checked
//!   on the client history by `mainstay-check` (acknowledged writes must stay
//!   visible; revisions never go backwards).

use std::collections::BTreeMap;

use mainstay_raft::Replica;

/// Observations so far and what contradicted them.
#[derive(Default)]
pub struct Invariants {
    leaders: BTreeMap<u64, u64>,
    hashes: BTreeMap<u64, (i64, u32, u64)>,
    /// Per member: the highest (applied index, revision) seen so far.
    progress: BTreeMap<u64, (u64, i64)>,
    /// Violations found.
    pub violations: Vec<String>,
}

impl Invariants {
    /// Records a violation once (the same contradiction is seen at every check).
    fn report(&mut self, violation: String) {
        if !self.violations.contains(&violation) {
            self.violations.push(violation);
        }
    }

    /// Records who claims leadership in which term.
    pub fn check_leaders<'a>(&mut self, replicas: impl Iterator<Item = &'a Replica>) {
        for replica in replicas {
            let status = replica.status();
            if !status.is_leader {
                continue;
            }
            let leader = *self.leaders.entry(status.term).or_insert(status.member_id);
            if leader != status.member_id {
                self.report(format!(
                    "election safety: term {} has two leaders {leader:x} and {:x}",
                    status.term, status.member_id
                ));
            }
        }
    }

    /// Records each replica's (applied index → revision, hash).
    pub fn check_hashes<'a>(&mut self, replicas: impl Iterator<Item = &'a Replica>) {
        for replica in replicas {
            let (applied, revision, hash) = replica.applied_hash();
            if applied == 0 {
                continue;
            }
            let member = replica.member_id();
            // What a serving member shows never goes back, crashes included: a
            // member restarted behind serves only once it caught up.
            if replica.is_serving() {
                let (last_applied, last_revision) =
                    *self.progress.entry(member).or_insert((applied, revision));
                if applied < last_applied || revision < last_revision {
                    self.report(format!(
                        "durability: member {member:x} went back from applied index {last_applied} (revision {last_revision}) to {applied} (revision {revision})"
                    ));
                }
                self.progress.insert(
                    member,
                    (applied.max(last_applied), revision.max(last_revision)),
                );
            }
            let (seen_revision, seen_hash, seen_member) = *self
                .hashes
                .entry(applied)
                .or_insert((revision, hash, member));
            if (seen_revision, seen_hash) != (revision, hash) {
                self.report(format!(
                    "state machine safety: at applied index {applied} member {seen_member:x} has revision {seen_revision} hash {seen_hash:08x} but {member:x} has revision {revision} hash {hash:08x}"
                ));
            }
        }
    }
}
