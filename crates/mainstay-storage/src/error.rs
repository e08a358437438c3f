//! Storage failures. Any of these stops the member (see ARCHITECTURE.md, R3).

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O call failed; `action` names what we were doing.
    #[error("failed to {action}: {source}")]
    Io {
        /// What we were doing, as a verb phrase.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A checksum or decoding failure not explained by a torn tail.
    #[error(
        "corrupt data in {path} ({at}): {reason}; stopping, and refusing to start on it. Replace this member: remove it from the cluster, wipe its data directory, add it back (it then catches up by snapshot)"
    )]
    Corrupt {
        /// The damaged file.
        path: String,
        /// Where: a byte offset or a row.
        at: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// The data directory was written in a layout this build does not know.
    #[error(
        "{path} is in format {found}, written by a newer Mainstay; this build reads format {supported} and older. Start the newer build, or restore this member from a snapshot"
    )]
    Format {
        /// The file.
        path: String,
        /// Its format.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// A previous write or fsync failed; the store accepts nothing more.
    #[error("storage is stopped after an earlier write or fsync failure")]
    Poisoned,
    /// A record exceeds the frame limit.
    #[error("record too large for the raft log")]
    TooLarge,
    /// Encoding failed (a bug: our own types always encode).
    #[error("failed to encode a record")]
    Encode,
    /// The state database failed.
    #[error("state database: {0}")]
    Database(String),
    /// A snapshot could not be decoded.
    #[error("invalid snapshot: {0}")]
    Snapshot(&'static str),
}

impl StorageError {
    pub(crate) fn io(action: &'static str, source: std::io::Error) -> Self {
        StorageError::Io { action, source }
    }

    pub(crate) fn db(error: impl std::fmt::Display) -> Self {
        StorageError::Database(error.to_string())
    }
}
