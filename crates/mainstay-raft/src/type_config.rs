//! The openraft type configuration and the node description.

use std::fmt;

use mainstay_mvcc::{CommandResponse, MvccError};
use serde::{Deserialize, Serialize};

/// What a member advertises: its name and URLs. Stored in the Raft membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Human-readable member name (`--name`).
    pub name: String,
    /// Peer URLs (`--initial-advertise-peer-urls`); the first is dialled.
    pub peer_urls: Vec<String>,
    /// Client URLs (`--advertise-client-urls`).
    pub client_urls: Vec<String>,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// What applying a log entry answered. `None` for blank and membership entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    /// The command's outcome.
    pub outcome: Option<Result<CommandResponse, MvccError>>,
}

openraft::declare_raft_types!(
    /// Mainstay's Raft types.
    pub TypeConfig:
        D = crate::proposal::Proposal,
        R = ApplyResult,
        NodeId = u64,
        Node = MemberNode,
        AsyncRuntime = Runtime,
        // Standard Raft: at most one leader per term (the raft_term etcd clients see
        // identifies a leadership), not openraft's default "advanced" mode.
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// openraft's runtime: tokio with every random draw (election timeouts) taken
/// from a seeded generator, so a simulated member replays exactly. Production
/// seeds it from the environment; `Replica::open` enters the seed's scope.
pub type Runtime =
    openraft_rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

/// The outcome of an applied write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The command's answer (an error changed nothing).
    pub outcome: Result<CommandResponse, MvccError>,
    /// Raft term of the entry.
    pub raft_term: u64,
    /// Raft log index of the entry: a member answers only once it has applied
    /// this far itself, so one connection never sees its own write undone.
    pub log_index: u64,
}
