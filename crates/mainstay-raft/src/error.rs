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
