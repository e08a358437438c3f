//! openraft's `RaftLogStorage` over our `mainstay_storage::LogStore`.
//!
//! Every call fsyncs before returning (the store's promise), so the append
//! callback fires right after the write: "on disk" is already true.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use mainstay_storage::LogStore;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};

use crate::codec::{
    entry_from_stored, entry_to_stored, log_id_from_record, log_id_to_record, vote_from_record,
    vote_to_record,
};
use crate::type_config::TypeConfig;

/// Shared handle to the log store; clones are readers.
#[derive(Clone)]
pub struct RaftLog {
    store: Arc<Mutex<LogStore>>,
}

impl RaftLog {
    /// Wraps an opened log store.
    pub fn new(store: LogStore) -> Self {
        RaftLog {
            store: Arc::new(Mutex::new(store)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogStore> {
        // A poisoned mutex means a panic mid-write: the member is already going down.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Size of the log file.
    pub fn file_bytes(&self) -> u64 {
        self.lock().file_bytes()
    }
}

fn to_io(error: mainstay_storage::StorageError) -> io::Error {
    io::Error::other(error.to_string())
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let stored = self.lock().entries(start, end);
        stored
            .iter()
            .map(|entry| entry_from_stored(entry).map_err(io::Error::other))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.lock().vote().as_ref().map(vote_from_record))
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let store = self.lock();
        Ok(LogState {
            last_purged_log_id: store.purged().as_ref().map(log_id_from_record),
            last_log_id: store.last_log_id().as_ref().map(log_id_from_record),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.lock().save_vote(vote_to_record(vote)).map_err(to_io)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        self.lock()
            .save_committed(committed.as_ref().map(log_id_to_record))
            .map_err(to_io)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.lock().committed().as_ref().map(log_id_from_record))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let stored: Vec<_> = entries
            .into_iter()
            .map(|entry| entry_to_stored(&entry))
            .collect();
        let result = self.lock().append(stored).map_err(to_io);
        match result {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "raft log append failed; stopping the member");
                callback.io_completed(Err(io::Error::other(error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.lock().truncate_from(from).map_err(to_io)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.lock()
            .purge_upto(log_id_to_record(&log_id))
            .map_err(to_io)
    }
}
