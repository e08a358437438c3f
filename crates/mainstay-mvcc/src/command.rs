//! `Command`: a write request as the Raft log carries it, and `KeySpace::apply`,
//! the pure function every replica runs on each committed command.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::MvccError;
use crate::key_space::{Change, KeySpace};
use crate::types::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, Event,
    PutRequest, PutResponse, TxnRequest, TxnResponse,
};
use crate::writer::{Writer, stamp_txn};

/// A request that goes through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Write one key.
    Put(PutRequest),
    /// Delete a key or range.
    DeleteRange(DeleteRangeRequest),
    /// A transaction.
    Txn(TxnRequest),
    /// Drop old history.
    Compact(CompactionRequest),
}

impl fmt::Display for Command {
    // Keys and values may be sensitive and large: the log line names the kind only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Put(put) => write!(f, "put({} key bytes)", put.key.len()),
            Command::DeleteRange(_) => write!(f, "delete-range"),
            Command::Txn(txn) => write!(
                f,
                "txn({} compares, {}/{} ops)",
                txn.compare.len(),
                txn.success.len(),
                txn.failure.len()
            ),
            Command::Compact(compact) => write!(f, "compact({})", compact.revision),
        }
    }
}

/// What a command answered when applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// From a put.
    Put(PutResponse),
    /// From a delete.
    DeleteRange(DeleteRangeResponse),
    /// From a transaction.
    Txn(TxnResponse),
    /// From a compaction.
    Compact(CompactionResponse),
}

/// The outcome of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The answer for the client; an error leaves the keyspace untouched.
    pub result: Result<CommandResponse, MvccError>,
    /// Watch events, in the order the writes happened, all at one revision.
    pub events: Vec<Event>,
    /// What to persist, in the same storage transaction as the applied log id.
    pub changes: Vec<Change>,
}

impl KeySpace {
    /// Applies one committed command. Pure: the same keyspace and command give the
    /// same result on every replica. `lease_exists` answers whether a lease is live.
    pub fn apply(&mut self, command: &Command, lease_exists: &dyn Fn(i64) -> bool) -> Applied {
        if let Command::Compact(compact) = command {
            return match self.compact(compact.revision) {
                Ok(changes) => Applied {
                    result: Ok(CommandResponse::Compact(CompactionResponse {
                        revision: self.revision,
                    })),
                    events: Vec::new(),
                    changes,
                },
                Err(error) => Applied {
                    result: Err(error),
                    events: Vec::new(),
                    changes: Vec::new(),
                },
            };
        }
        let revision_before = self.revision;
        let mut writer = Writer::new(self, lease_exists);
        let outcome = match command {
            Command::Put(put) => writer.put(put).map(CommandResponse::Put),
            Command::DeleteRange(delete) => writer
                .delete_range(delete)
                .map(CommandResponse::DeleteRange),
            Command::Txn(txn) => writer.txn(txn).map(CommandResponse::Txn),
            Command::Compact(_) => unreachable!("handled above"),
        };
        let (result, events, changes) = match outcome {
            Ok(response) => {
                let (events, changes) = writer.commit();
                (Ok(response), events, changes)
            }
            Err(error) => {
                writer.rollback();
                (Err(error), Vec::new(), Vec::new())
            }
        };
        assert!(
            self.revision == revision_before || self.revision == revision_before + 1,
            "one command moved the revision from {revision_before} to {}",
            self.revision
        );
        assert_eq!(
            changes.is_empty(),
            self.revision == revision_before,
            "revision without change"
        );
        let revision = self.revision;
        let result = result.map(|response| match response {
            CommandResponse::Put(r) => CommandResponse::Put(PutResponse { revision, ..r }),
            CommandResponse::DeleteRange(r) => {
                CommandResponse::DeleteRange(DeleteRangeResponse { revision, ..r })
            }
            CommandResponse::Txn(mut r) => {
                stamp_txn(&mut r, revision);
                CommandResponse::Txn(r)
            }
            other => other,
        });
        Applied {
            result,
            events,
            changes,
        }
    }
}
