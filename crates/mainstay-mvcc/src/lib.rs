//! PURE. The multi-version keyspace with etcd's revision semantics, and what a KV
//! command does to it.
//!
//! No I/O, no clock, no randomness, no async: the same keyspace and command give
//! the same result everywhere, so replicas agree and the simulator can drive it.
//! Persisting is the caller's job: every write returns the `Change`s to store.

mod alarms;
mod authorize;
mod command;
mod error;
mod key_space;
pub mod shared_bytes;
mod types;
mod validate;
mod writer;

#[cfg(test)]
mod auth_tests;
#[cfg(test)]
mod tests;

pub use alarms::{
    AlarmAction, AlarmKind, AlarmMember, AlarmRequest, AlarmResponse, Alarms, change_alarms,
};
pub use command::{Applied, ApplyContext, Command, CommandResponse, alarm_refusal};
pub use error::MvccError;
pub use key_space::{
    Change, INITIAL_REVISION, KeySpace, LeaseRecord, Live, PartialHash, Record, Value, ValueStore,
    in_range,
};
pub use types::*;
pub use validate::validate_txn;
pub use writer::txn_writes;
