//! The openraft adapter: the only crate that names openraft.
//!
//! `Replica` is the whole public face: propose a `Command`, pass a linearizable
//! read barrier, read the applied keyspace, inspect status and membership, and
//! serve the peer protocol. Log entries, votes and memberships are persisted in
//! our own formats (`codec`), so an openraft upgrade touches this crate only.

mod applied;
mod codec;
mod error;
mod lease;
mod log_store;
mod membership;
mod network;
mod peer_channel;
mod peer_service;
mod read_rounds;
mod replica;
mod state_machine;
mod type_config;
mod write_batches;

pub use error::ReplicaError;
pub use lease::{EXPIRY_TICK, LeaseClock, REVOKES_PER_SECOND_MAX, expire_leases};
pub use membership::{
    ClusterView, LEARNERS_MAX, MemberChange, MemberChangeOutcome, MembershipError,
    fetch_cluster_view,
};
pub use replica::{
    Dial, Replica, ReplicaConfig, ReplicaStatus, WriteOutcome, cluster_id_for, member_id_for,
    tcp_dial,
};
pub use state_machine::AppliedEvents;
pub use type_config::MemberNode;
