//! Write admission: the two limits that keep a member from queueing without bound.
//!
//! - the apply backlog: when committed − applied exceeds 5000 entries (etcd's
//!   `maxGapBetweenApplyAndCommitIndex`) the member is not keeping up and new writes
//!   are refused with `etcdserver: too many requests`, as etcd does;
//! - proposals in flight on this member: each write holds a permit from a fixed pool
//!   until it is answered; with none left the write is refused the same way instead
//!   of queueing in memory.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::status::ApiError;

/// etcd's limit on committed-but-unapplied entries.
pub const APPLY_BACKLOG_MAX: u64 = 5000;
/// Default limit on writes in flight through one member.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 8192;

/// Shared by every service of one member. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    in_flight_max: usize,
    apply_backlog_max: u64,
}

impl Admission {
    /// A pool of `in_flight_max` proposals and the given apply backlog limit.
    pub fn new(in_flight_max: usize, apply_backlog_max: u64) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(in_flight_max)),
            in_flight_max,
            apply_backlog_max,
        }
    }

    /// Writes admitted and not yet answered (`etcd_server_proposals_pending`).
    pub fn in_flight(&self) -> usize {
        self.in_flight_max
            .saturating_sub(self.permits.available_permits())
    }

    /// Admits one write given the member's committed and applied indexes; the
    /// permit must be held until the write is answered.
    pub fn admit(&self, committed: u64, applied: u64) -> Result<OwnedSemaphorePermit, ApiError> {
        if committed.saturating_sub(applied) > self.apply_backlog_max {
            return Err(ApiError::TooManyRequests);
        }
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyRequests)
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(PROPOSALS_IN_FLIGHT_MAX, APPLY_BACKLOG_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_and_in_flight_limits_refuse_and_recover() {
        // Goal: a backlog over the limit refuses; permits run out and come back.
        let admission = Admission::new(2, 5000);
        assert_eq!(
            admission.admit(5001 + 10, 10).err(),
            Some(ApiError::TooManyRequests)
        );
        let first = admission
            .admit(5000 + 10, 10)
            .expect("at the limit is fine");
        let second = admission.admit(0, 0).expect("second permit");
        assert_eq!(admission.admit(0, 0).err(), Some(ApiError::TooManyRequests));
        drop(first);
        let _third = admission.admit(0, 0).expect("a permit came back");
        drop(second);
        let status = crate::api_status(ApiError::TooManyRequests);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "etcdserver: too many requests");
    }
}
