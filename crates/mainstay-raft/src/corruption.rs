//! Corruption checks between members (etcd's `corrupt.go`): members compare
//! their keyspace hash at a common revision. The leader checks every
//! `--experimental-compact-hash-check-time` (on by default here, unlike
//! etcd): a member whose hash differs from a majority's, at the same
//! compacted revision, gets a CORRUPT alarm naming it; with no majority the
//! alarm names the whole cluster (member 0). A member started with
//! `--experimental-initial-corrupt-check` compares itself with its peers
//! before serving and refuses to start if a majority disagrees with it.
//! `judge` is the pure decision, with table tests.

use std::collections::BTreeMap;
use std::time::Duration;

use mainstay_mvcc::{AlarmAction, AlarmKind, AlarmMember, AlarmRequest, Command, MvccError};
use mainstay_proto::peer::ForwardRequest;
use serde::{Deserialize, Serialize};

use crate::codec::{decode_message, encode_message};
use crate::replica::Replica;

/// One member's hash at the checked revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashReport {
    /// The member.
    pub member: u64,
    /// Its keyspace hash at the revision.
    pub hash: u32,
    /// Its compacted revision then.
    pub compacted: i64,
}

/// A peer's answer to `PeerHash`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum PeerHashReply {
    /// The hash at the asked revision.
    Hash { hash: u32, compacted: i64 },
    /// Not applied that far yet.
    Behind,
    /// Compacted past the revision.
    Compacted,
    /// Reading the keyspace failed (its disk).
    Failed(String),
}

/// What a comparison found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every compared member agrees (or too few were compared to tell).
    Consistent,
    /// These members differ from a majority.
    Corrupt(Vec<u64>),
    /// Members differ and no hash has a majority: the whole cluster is suspect.
    NoMajority,
}

/// Compares the reports at one revision with `reference`'s compacted revision
/// (reports at another compacted revision are not comparable and skipped), a
/// majority being more than half of `voters`.
pub fn judge(reports: &[HashReport], reference_compacted: i64, voters: usize) -> Verdict {
    let mut groups: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for report in reports
        .iter()
        .filter(|report| report.compacted == reference_compacted)
    {
        groups.entry(report.hash).or_default().push(report.member);
    }
    if groups.len() <= 1 {
        return Verdict::Consistent;
    }
    let majority = voters / 2 + 1;
    match groups.values().find(|members| members.len() >= majority) {
        Some(agreeing) => {
            let mut corrupt: Vec<u64> = groups
                .values()
                .flatten()
                .filter(|member| !agreeing.contains(member))
                .copied()
                .collect();
            corrupt.sort_unstable();
            Verdict::Corrupt(corrupt)
        }
        None => Verdict::NoMajority,
    }
}

/// Keys hashed per hold of the keyspace.
const HASH_KEYS_PER_PART: usize = 1000;

/// How long a peer waits to apply the asked revision before answering `Behind`.
const PEER_CATCH_UP: Duration = Duration::from_secs(2);

impl Replica {
    /// This member's hash at `revision` and its compacted revision, hashed
    /// `HASH_KEYS_PER_PART` keys at a time so apply never waits long for the
    /// keyspace. A compaction meanwhile makes it `Compacted` (try later).
    pub async fn own_hash(&self, revision: i64) -> Result<(u32, i64), MvccError> {
        let started = std::time::Instant::now();
        let mut hash = self.read(|space| space.start_hash(revision))?;
        while !self.read(|space| space.hash_more(&mut hash, HASH_KEYS_PER_PART))? {
            tokio::task::yield_now().await;
        }
        if self.read(|space| space.compacted_revision()) != hash.compacted {
            return Err(MvccError::Compacted);
        }
        let compacted = hash.compacted;
        self.metrics()
            .mvcc
            .hash_rev_duration
            .observe(started.elapsed().as_secs_f64());
        Ok((hash.finish(), compacted))
    }

    /// Serves `PeerHash`: waits briefly to apply `revision`, then hashes.
    pub(crate) async fn serve_peer_hash(&self, revision: i64) -> PeerHashReply {
        let until = tokio::time::Instant::now() + PEER_CATCH_UP;
        loop {
            match self.own_hash(revision).await {
                Ok((hash, compacted)) => return PeerHashReply::Hash { hash, compacted },
                Err(MvccError::FutureRevision) if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(MvccError::FutureRevision) => return PeerHashReply::Behind,
                Err(MvccError::Compacted) => return PeerHashReply::Compacted,
                Err(error) => return PeerHashReply::Failed(error.to_string()),
            }
        }
    }

    /// A peer's hash at `revision`: `Some(Ok)` a hash, `Some(Err)` its data
    /// could not be read (damaged), None no answer.
    async fn peer_hash(&self, member: u64, revision: i64) -> Option<Result<HashReport, String>> {
        let node = self.node(member)?;
        let mut client = self.inner.pool.client(&node).ok()?;
        let request = ForwardRequest {
            command: encode_message(&revision).ok()?,
        };
        let reply = tokio::time::timeout(
            PEER_CATCH_UP + Duration::from_secs(3),
            client.peer_hash(request),
        )
        .await
        .ok()?
        .ok()?;
        match decode_message(&reply.into_inner().result).ok()? {
            PeerHashReply::Hash { hash, compacted } => Some(Ok(HashReport {
                member,
                hash,
                compacted,
            })),
            PeerHashReply::Failed(reason) => Some(Err(reason)),
            other => {
                tracing::debug!(
                    member = format_args!("{member:x}"),
                    ?other,
                    "no hash from peer"
                );
                None
            }
        }
    }

    /// Compares this member's hash at its current revision with every
    /// peer's (the revision it compared at, and the verdict). A member whose
    /// own data cannot be read back (a checksum failed) is corrupt whatever
    /// the others say.
    pub async fn compare_hashes(&self) -> Result<(i64, Verdict), MvccError> {
        let revision = self.read(|space| space.revision());
        let own = self.member_id();
        let (hash, compacted) = match self.own_hash(revision).await {
            Ok(own) => own,
            Err(MvccError::ValueUnreadable(reason)) => {
                tracing::error!(%reason, "this member's data cannot be read back");
                return Ok((revision, Verdict::Corrupt(vec![own])));
            }
            Err(error) => return Err(error),
        };
        let members = self.members();
        let voters = members.iter().filter(|(_, _, learner)| !learner).count();
        let peers: Vec<u64> = members
            .iter()
            .map(|(id, _, _)| *id)
            .filter(|id| *id != own)
            .collect();
        let answers =
            futures::future::join_all(peers.iter().map(|id| self.peer_hash(*id, revision))).await;
        let mut reports = vec![HashReport {
            member: own,
            hash,
            compacted,
        }];
        let mut damaged = Vec::new();
        for (peer, answer) in peers.iter().zip(answers) {
            match answer {
                Some(Ok(report)) => reports.push(report),
                Some(Err(reason)) => {
                    tracing::error!(member = format_args!("{peer:x}"), %reason, "a member's data cannot be read back");
                    damaged.push(*peer);
                }
                None => {}
            }
        }
        let verdict = match (judge(&reports, compacted, voters), damaged.is_empty()) {
            (verdict, true) => verdict,
            (Verdict::Corrupt(mut members), false) => {
                members.extend(damaged);
                members.sort_unstable();
                members.dedup();
                Verdict::Corrupt(members)
            }
            (Verdict::Consistent, false) => Verdict::Corrupt(damaged),
            (Verdict::NoMajority, false) => Verdict::NoMajority,
        };
        Ok((revision, verdict))
    }

    /// Raises a CORRUPT alarm naming `member` (0: the cluster), unless raised.
    async fn raise_corrupt(&self, member: u64) {
        let alarm = AlarmMember {
            member,
            kind: AlarmKind::Corrupt,
        };
        if self.read(|space| space.alarms().contains(&alarm)) {
            return;
        }
        let command = Command::Alarm(AlarmRequest {
            action: AlarmAction::Activate,
            alarm,
        });
        if let Err(error) = self.write(command).await {
            tracing::warn!(%error, "raising CORRUPT failed; the next check tries again");
        }
    }
}

/// The leader's periodic check; runs until the replica stops.
pub async fn check_hashes_periodically(replica: Replica, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if !replica.is_leader() {
            continue;
        }
        let outcome = replica.compare_hashes().await;
        let label = match &outcome {
            Ok((_, Verdict::Consistent)) => "consistent",
            Ok(_) => "mismatch",
            Err(_) => "failed",
        };
        replica
            .metrics()
            .own
            .hash_checks
            .get_or_create(&vec![("outcome", label.to_string())])
            .inc();
        match outcome {
            Ok((_, Verdict::Consistent)) => {}
            Ok((revision, Verdict::Corrupt(members))) => {
                for member in members {
                    tracing::error!(
                        revision,
                        member = format_args!("{member:x}"),
                        "detected hash mismatch: the member's data differs from a majority's; raising CORRUPT"
                    );
                    replica.raise_corrupt(member).await;
                }
            }
            Ok((revision, Verdict::NoMajority)) => {
                tracing::error!(
                    revision,
                    "detected hash mismatch with no majority agreeing; raising CORRUPT for the cluster"
                );
                replica.raise_corrupt(0).await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot hash the keyspace for the corruption check")
            }
        }
    }
}

/// `--experimental-initial-corrupt-check`: refuses (Err) when a majority of
/// the members that answered disagrees with this member.
pub async fn initial_corruption_check(replica: &Replica) -> Result<(), String> {
    let own = replica.member_id();
    match replica.compare_hashes().await {
        Ok((revision, Verdict::Corrupt(members))) if members.contains(&own) => Err(format!(
            "{own:x} found data inconsistency with peers at revision {revision}"
        )),
        Ok((revision, verdict)) => {
            tracing::info!(revision, ?verdict, "initial corruption check done");
            Ok(())
        }
        Err(error) => Err(format!("cannot hash this member's keyspace: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(member: u64, hash: u32, compacted: i64) -> HashReport {
        HashReport {
            member,
            hash,
            compacted,
        }
    }

    #[test]
    fn the_minority_is_named_and_no_majority_names_the_cluster() {
        // (reports, reference compacted, voters, verdict)
        let table = vec![
            (vec![report(1, 7, 0)], 0, 3, Verdict::Consistent),
            (
                vec![report(1, 7, 0), report(2, 7, 0), report(3, 7, 0)],
                0,
                3,
                Verdict::Consistent,
            ),
            (
                vec![report(1, 7, 0), report(2, 7, 0), report(3, 9, 0)],
                0,
                3,
                Verdict::Corrupt(vec![3]),
            ),
            // The leader itself in the minority.
            (
                vec![report(1, 9, 0), report(2, 7, 0), report(3, 7, 0)],
                0,
                3,
                Verdict::Corrupt(vec![1]),
            ),
            // Two answered and differ: no majority of three.
            (
                vec![report(1, 7, 0), report(2, 9, 0)],
                0,
                3,
                Verdict::NoMajority,
            ),
            // A different compacted revision is not comparable.
            (
                vec![report(1, 7, 5), report(2, 9, 4)],
                5,
                3,
                Verdict::Consistent,
            ),
            (
                vec![
                    report(1, 7, 5),
                    report(2, 7, 5),
                    report(3, 9, 5),
                    report(4, 7, 5),
                    report(5, 8, 5),
                ],
                5,
                5,
                Verdict::Corrupt(vec![3, 5]),
            ),
            (
                vec![report(1, 7, 0), report(2, 8, 0), report(3, 9, 0)],
                0,
                3,
                Verdict::NoMajority,
            ),
        ];
        for (reports, compacted, voters, verdict) in table {
            assert_eq!(judge(&reports, compacted, voters), verdict, "{reports:?}");
        }
    }
}
