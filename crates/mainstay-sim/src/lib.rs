//! Deterministic simulation of Mainstay clusters.
//!
//! The *real* member (`mainstay_server::run_with_listeners`: openraft, our log
//! store, redb, the peer transport, the client API) runs on turmoil hosts with a
//! simulated network and clock and a seeded Raft runtime. One `u64` seed decides
//! cluster size, workload, fault schedule and timings. Clients record histories
//! that `mainstay-check` judges; invariants are checked while it runs; after the
//! faults heal, the cluster must make progress and converge. See
//! docs/simulation.md.

mod auth_workload;
mod election_workload;
mod fault;
mod invariants;
mod lease_workload;
mod lock_workload;
mod net;
mod operator;
mod rng;
pub mod scale_out;
mod simulation;
mod watch_workload;
mod workload;

pub use fault::{Fault, FaultCounts};
pub use mainstay_server::SafetyBreaks;
pub use rng::Rng;
pub use simulation::{SimOptions, SimResult, replay_command, run, run_guarded};
