//! The only crate that touches the data directory.
//!
//! - `LogStore`: the Raft log, vote and committed id in CRC-checked append-only
//!   segment files.
//! - `StateStore`: the applied keyspace and state-machine metadata in redb, committed
//!   once per applied batch together with the applied log id.
//!
//! - `Disk`: the only way either touches files; `OsDisk` in production, `MemDisk`
//!   (pending unsynced writes, crashes, bit flips) in the simulator and tests.
//!
//! Neither knows openraft: ids, votes and payloads are our own persisted types.

mod disk;
mod error;
mod identity;
mod log_store;
mod mem_disk;
mod state_store;

#[cfg(test)]
mod tests;

pub use disk::{DirLock, Disk, DiskFile, OsDisk};
pub use error::StorageError;
pub use identity::Identity;
pub use log_store::{
    LOG_FORMAT, LogIdRecord, LogJob, LogStore, LogWriter, OpenReport, RECORD_BYTES_MAX,
    SEGMENT_BYTES, StoredEntry, VoteRecord, segment_file_name, segment_seq,
};
pub use mem_disk::{CrashReport, MemDisk};
pub use state_store::{
    DefragCopy, DefragError, EMPTY_FILE_BYTES, SnapshotData, StateMeta, StateReader, StateReads,
    StateStore, in_use_bytes, quota_bytes,
};
