//! Why a replicated request failed. `mainstay-api` maps these to etcd's statuses.

use serde::{Deserialize, Serialize};

/// A request that could not be completed through Raft.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ReplicaError {
    /// No leader is known within the request deadline.
    #[error("no leader")]
    NoLeader,
    /// The leader changed while the request was in flight; its outcome is unknown.
    #[error("leader changed")]
    LeaderChanged,
    /// The request did not finish within its deadline; its outcome is unknown.
    #[error("request timed out")]
    Timeout,
    /// This member is shutting down or stopped after a fatal error.
    #[error("server stopped")]
    Stopped,
}

impl ReplicaError {
    /// An error the leader answered a forwarded request with, as this member
    /// reads it: the leader stopping is not this member stopping (a member
    /// that took it for its own stop would never serve again); for the
    /// request it is a leader going away mid-flight, the outcome unknown.
    pub(crate) fn leader_answered(self) -> ReplicaError {
        match self {
            ReplicaError::Stopped => ReplicaError::LeaderChanged,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReplicaError;

    #[test]
    fn a_leader_stopping_reads_as_a_leader_change() {
        let table = [
            (ReplicaError::Stopped, ReplicaError::LeaderChanged),
            (ReplicaError::LeaderChanged, ReplicaError::LeaderChanged),
            (ReplicaError::Timeout, ReplicaError::Timeout),
            (ReplicaError::NoLeader, ReplicaError::NoLeader),
        ];
        for (answered, read_here) in table {
            assert_eq!(
                answered.clone().leader_answered(),
                read_here,
                "{answered:?}"
            );
        }
    }
}
