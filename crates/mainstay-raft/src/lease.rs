//! Lease expiry: each replica's countdown of every lease, and the leader's loop
//! that revokes expired leases through Raft.
//!
//! The replicated state holds only a lease's id and granted TTL (no clock, so
//! apply stays pure). Each replica keeps a deadline per lease in its own
//! `LeaseClock`: the local time it applied the lease's grant or latest renew,
//! plus the TTL. A keep-alive is a Raft entry (`Command::LeaseRenew`), so every
//! replica restarts the countdown when it applies it, and a new leader keeps each
//! lease's remaining TTL instead of granting a fresh one (etcd resets it).
//! A replica applies an entry after the leader received it, so no replica's
//! deadline is earlier than the leader's: no lease expires before its TTL.
//!
//! Only a leader that just confirmed its leadership with a quorum (a read
//! barrier, which also applies every pending renew first) revokes, at most
//! `REVOKES_PER_SECOND_MAX`, and a stall of this member's own loop (a stuck
//! runtime, a frozen process) extends every deadline by the stall instead of
//! revoking everything at once when it wakes (etcd #15247).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use mainstay_mvcc::{Command, KeySpace, LeaseRevokeRequest};
use tokio::time::Instant;

use crate::replica::Replica;

/// How often the leader looks for expired leases.
pub const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// etcd's revoke rate limit.
pub const REVOKES_PER_SECOND_MAX: usize = 1000;

/// A deadline for a TTL too long to add to an `Instant` (etcd allows 9e9 s).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn deadline_after(now: Instant, ttl_seconds: i64) -> Instant {
    let ttl = Duration::from_secs(u64::try_from(ttl_seconds).unwrap_or(0));
    now.checked_add(ttl)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// One replica's lease deadlines.
#[derive(Debug, Default)]
pub struct LeaseClock {
    deadlines: Mutex<BTreeMap<i64, Instant>>,
}

/// What applying a batch did to leases, handed to the clock after the batch is
/// durable.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LeaseTouch {
    /// Granted or renewed: the countdown restarts at the TTL.
    Restart { id: i64, ttl: i64 },
    /// Revoked.
    Forget(i64),
}

impl LeaseClock {
    fn deadlines(&self) -> std::sync::MutexGuard<'_, BTreeMap<i64, Instant>> {
        self.deadlines.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn touch(&self, touches: &[LeaseTouch]) {
        if touches.is_empty() {
            return;
        }
        let now = Instant::now();
        tracing::debug!(?touches, ?now, "lease countdowns");
        let mut deadlines = self.deadlines();
        for touch in touches {
            match *touch {
                LeaseTouch::Restart { id, ttl } => {
                    deadlines.insert(id, deadline_after(now, ttl));
                }
                LeaseTouch::Forget(id) => {
                    deadlines.remove(&id);
                }
            }
        }
    }

    /// Matches the clock to a keyspace loaded from disk or a snapshot. Neither
    /// says when a lease was last renewed, so every lease gets its full TTL from
    /// now (or keeps a later deadline): a lease may live longer than its TTL
    /// after a restart or a snapshot, never shorter. A lease the keyspace no
    /// longer has is dropped.
    pub(crate) fn reconcile(&self, key_space: &KeySpace) {
        let now = Instant::now();
        let mut deadlines = self.deadlines();
        let mut next = BTreeMap::new();
        for lease in key_space.leases() {
            let fresh = deadline_after(now, lease.ttl);
            let deadline = deadlines
                .get(&lease.id)
                .map_or(fresh, |known| (*known).max(fresh));
            next.insert(lease.id, deadline);
        }
        *deadlines = next;
    }

    /// Time left on a lease, if this replica knows it.
    pub fn remaining(&self, id: i64) -> Option<Duration> {
        let now = Instant::now();
        self.deadlines()
            .get(&id)
            .map(|deadline| deadline.saturating_duration_since(now))
    }

    /// Leases past their deadline, earliest first, at most `limit`. (`early`
    /// moves every deadline forward: the simulator's self-test, zero otherwise.)
    fn expired(&self, limit: usize, early: Duration) -> Vec<i64> {
        let now = Instant::now() + early;
        let mut expired: Vec<(Instant, i64)> = self
            .deadlines()
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, deadline)| (*deadline, *id))
            .collect();
        expired.sort_unstable();
        expired.into_iter().take(limit).map(|(_, id)| id).collect()
    }

    /// Pushes every deadline back (after this member stalled).
    fn extend_all(&self, by: Duration) {
        for deadline in self.deadlines().values_mut() {
            *deadline = deadline.checked_add(by).unwrap_or(*deadline);
        }
    }
}

/// The leader's expiry loop; runs until the task is aborted. `early` is zero
/// except in the simulator's self-test, which revokes leases that much too soon.
pub async fn expire_leases(replica: Replica, early: Duration) {
    let per_tick = (REVOKES_PER_SECOND_MAX as u128 * EXPIRY_TICK.as_millis() / 1000) as usize;
    // A loop iteration that took this much longer than a tick means this member
    // was not running (or not committing); that time does not count against
    // anyone's lease.
    let stall = replica.election_timeout();
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(EXPIRY_TICK).await;
        let now = Instant::now();
        let gap = now.saturating_duration_since(last);
        last = now;
        let clock = replica.lease_clock();
        if gap > EXPIRY_TICK + stall {
            tracing::warn!(
                ?gap,
                "lease expiry loop stalled; extending every lease by the stall"
            );
            clock.extend_all(gap);
            continue;
        }
        if !replica.is_leader() || clock.expired(1, early).is_empty() {
            continue;
        }
        // From here until the revokes are applied, keep-alives proposed on this
        // member wait: a renew ordered between this decision and its revoke
        // would be answered "alive" and then lose its keys. Renews already in
        // flight finish (and are applied) before the gate opens.
        let _deciding = replica.inner.lease_gate.write().await;
        // Confirm leadership with a quorum and apply everything committed (renews
        // included) before deciding anything.
        let started = Instant::now();
        if let Err(error) = replica.read_barrier().await {
            tracing::debug!(%error, "no lease revokes: leadership not confirmed");
            continue;
        }
        let waited = started.elapsed();
        if waited > stall {
            // Could not commit for a while: the same as a stall.
            tracing::warn!(
                ?waited,
                "slow read barrier; extending every lease instead of revoking"
            );
            clock.extend_all(waited);
            last = Instant::now();
            continue;
        }
        let expired = clock.expired(per_tick, early);
        if !expired.is_empty() {
            tracing::debug!(?expired, status = ?replica.status(), "revoking expired leases");
        }
        let revokes = expired.into_iter().map(|id| {
            let replica = replica.clone();
            async move {
                let command = Command::LeaseRevoke(LeaseRevokeRequest { id });
                // Never forwarded: another leader decides for itself.
                match replica.propose_here(command).await {
                    Ok(outcome) => match outcome.outcome {
                        Ok(_) => tracing::info!(lease = format_args!("{id:x}"), "lease expired"),
                        // Revoked meanwhile by a client or an earlier round.
                        Err(error) => tracing::debug!(%error, "expired lease already gone"),
                    },
                    Err(error) => tracing::debug!(%error, "lease revoke not committed"),
                }
            }
        });
        futures::future::join_all(revokes).await;
        last = Instant::now();
    }
}
