//! Lease expiry, part two: the leader's loop that revokes expired leases
//! through Raft (the countdowns are `lease::LeaseClock`; see its docs for the
//! rules).

use std::time::Duration;

use mainstay_mvcc::{Command, LeaseRevokeRequest};
use tokio::time::Instant;

use crate::replica::Replica;

/// How often the leader looks for expired leases.
pub const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// etcd's revoke rate limit.
pub const REVOKES_PER_SECOND_MAX: usize = 1000;

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
                        Ok(_) => {
                            replica.metrics().server.lease_expired.inc();
                            tracing::info!(lease = format_args!("{id:x}"), "lease expired")
                        }
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
