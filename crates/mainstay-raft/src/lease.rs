//! Lease expiry, part one: each replica's countdown of every lease. The
//! leader's loop that revokes expired leases is in `lease_expiry`.
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

use mainstay_mvcc::KeySpace;
use tokio::time::Instant;

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
    pub(crate) fn expired(&self, limit: usize, early: Duration) -> Vec<i64> {
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
    pub(crate) fn extend_all(&self, by: Duration) {
        for deadline in self.deadlines().values_mut() {
            *deadline = deadline.checked_add(by).unwrap_or(*deadline);
        }
    }
}
