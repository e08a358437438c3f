//! The openraft adapter: the only crate that names openraft.
//!
//! `Replica` is the whole public face: propose a `Command`, pass a linearizable
//! read barrier, read the applied keyspace, inspect status and membership, and
//! serve the peer protocol. Log entries, votes and memberships are persisted in
//! our own formats (`codec`), so an openraft upgrade touches this crate only.

mod append_times;
mod applied;
mod auto_compaction;
mod cluster_view;
mod codec;
mod corruption;
mod error;
mod force;
mod forward;
mod lease;
mod lease_expiry;
mod log_store;
mod membership;
mod membership_rules;
mod network;
mod peer_channel;
mod peer_health;
mod peer_service;
mod proposal;
mod proposals;
mod read_rounds;
mod replica;
mod state_machine;
mod tokens;
mod type_config;
mod write_batches;
mod write_streams;

pub use auto_compaction::{AutoCompaction, compact_automatically};
pub use cluster_view::{ClusterView, fetch_cluster_view};
pub use corruption::{
    HashReport, Verdict, check_hashes_periodically, initial_corruption_check, judge,
};
pub use error::ReplicaError;
pub use lease::LeaseClock;
pub use lease_expiry::{EXPIRY_TICK, REVOKES_PER_SECOND_MAX, expire_leases};
pub use mainstay_storage::StateReader;
pub use membership_rules::{
    LEARNERS_MAX, MemberChange, MemberChangeOutcome, MembershipError, cluster_id_for, member_id_for,
};
pub use peer_channel::{Dial, peer_endpoint, tcp_dial};
pub use peer_health::{PHI_SUSPECT, PeerHealth, PeerView, phi};
pub use proposal::Proposal;
pub use replica::{Replica, ReplicaConfig, ReplicaStatus};
pub use state_machine::{AppliedEvents, PrevValues};
pub use tokens::{Tokens, simple_token, simple_token_index};
pub use type_config::{MemberNode, WriteOutcome};
