//! The only crate that touches the data directory.
//!
//! - `LogStore`: the Raft log, vote and committed id in one CRC-checked append-only file.
//! - `StateStore`: the applied keyspace and state-machine metadata in redb, committed
//!   once per applied batch together with the applied log id.
//!
//! Neither knows openraft: ids, votes and payloads are our own persisted types.

mod error;
mod log_store;
mod state_store;

#[cfg(test)]
mod tests;

pub use error::StorageError;
pub use log_store::{LogIdRecord, LogStore, OpenReport, RECORD_BYTES_MAX, StoredEntry, VoteRecord};
pub use state_store::{SnapshotData, StateMeta, StateStore};
