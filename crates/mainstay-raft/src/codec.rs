//! openraft ↔ persisted forms. Persisted formats are ours (`LogIdRecord`,
//! `VoteRecord`, `PersistedPayload`, `MembershipRecord`), never serde of openraft's
//! structs, which change between alphas.

use std::collections::{BTreeMap, BTreeSet};

use mainstay_mvcc::Command;
use mainstay_storage::{LogIdRecord, StoredEntry, VoteRecord};
use openraft::alias::{EntryOf, LogIdOf, StoredMembershipOf, VoteOf};
use openraft::vote::leader_id_std::CommittedLeaderId;
use openraft::{EntryPayload, LogId, Membership, StoredMembership, Vote};
use serde::{Deserialize, Serialize};

use crate::proposal::{COMMAND_TAG, Proposal};
use crate::type_config::{MemberNode, TypeConfig};

/// The payload of a log entry as stored on disk. A command's payload is the
/// `Proposal`'s bytes as they are (tag 1, then the command): this enum encodes
/// and decodes the other two kinds.
#[derive(Serialize, Deserialize)]
enum PersistedPayload {
    Blank,
    Command(Command),
    Membership(MembershipRecord),
}

/// The stored form of a command through `PersistedPayload` (what `Proposal`
/// must equal, byte for byte).
#[cfg(test)]
pub(crate) fn encode_command_payload(command: &Command) -> bytes::Bytes {
    let payload = PersistedPayload::Command(command.clone());
    postcard::to_allocvec(&payload)
        .expect("our own payload types always encode")
        .into()
}

/// A membership as stored on disk: joint configs and node descriptions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    /// Voter sets; two during a joint change.
    pub configs: Vec<Vec<u64>>,
    /// Every node (voters and learners).
    pub nodes: Vec<(u64, MemberNode)>,
}

/// A membership plus the log id it was applied at.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMembershipRecord {
    /// Where it took effect.
    pub log_id: Option<LogIdRecord>,
    /// The membership.
    pub membership: MembershipRecord,
}

/// Converts an openraft log id. Standard Raft: the term alone identifies the
/// leader that proposed an entry, so `node_id` is always 0.
pub fn log_id_to_record(log_id: &LogIdOf<TypeConfig>) -> LogIdRecord {
    LogIdRecord {
        term: log_id.leader_id.term,
        node_id: 0,
        index: log_id.index,
    }
}

/// Converts a stored log id.
pub fn log_id_from_record(record: &LogIdRecord) -> LogIdOf<TypeConfig> {
    LogId::new(CommittedLeaderId::new(record.term), record.index)
}

/// Converts an openraft vote.
pub fn vote_to_record(vote: &VoteOf<TypeConfig>) -> VoteRecord {
    VoteRecord {
        term: vote.leader_id.term,
        node_id: Some(vote.leader_id.voted_for),
        committed: vote.is_committed(),
    }
}

/// Converts a stored vote.
pub fn vote_from_record(record: &VoteRecord) -> VoteOf<TypeConfig> {
    let node_id = record.node_id.unwrap_or_default();
    if record.committed {
        Vote::new_committed(record.term, node_id)
    } else {
        Vote::new(record.term, node_id)
    }
}

/// Converts a membership to its stored form.
pub fn membership_to_record(membership: &Membership<u64, MemberNode>) -> MembershipRecord {
    MembershipRecord {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|c| c.iter().copied().collect())
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect(),
    }
}

/// Rebuilds a membership from its stored form.
pub fn membership_from_record(
    record: &MembershipRecord,
) -> Result<Membership<u64, MemberNode>, String> {
    let configs: Vec<BTreeSet<u64>> = record
        .configs
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, MemberNode> = record.nodes.iter().cloned().collect();
    Membership::new(configs, nodes).map_err(|e| e.to_string())
}

/// Encodes a stored membership (with its log id) for the state store.
pub fn encode_stored_membership(stored: &StoredMembershipOf<TypeConfig>) -> Vec<u8> {
    let record = StoredMembershipRecord {
        log_id: stored.log_id().as_ref().map(log_id_to_record),
        membership: membership_to_record(stored.membership()),
    };
    postcard::to_allocvec(&record).expect("our own record types always encode")
}

/// Decodes a stored membership; empty bytes mean "none yet".
pub fn decode_stored_membership(bytes: &[u8]) -> Result<StoredMembershipOf<TypeConfig>, String> {
    if bytes.is_empty() {
        return Ok(StoredMembership::default());
    }
    let record: StoredMembershipRecord =
        postcard::from_bytes(bytes).map_err(|e| format!("undecodable membership: {e}"))?;
    let membership = membership_from_record(&record.membership)?;
    Ok(StoredMembership::new(
        record.log_id.as_ref().map(log_id_from_record),
        membership,
    ))
}

/// Converts an openraft entry to its stored form.
pub fn entry_to_stored(entry: &EntryOf<TypeConfig>) -> StoredEntry {
    let payload = match &entry.payload {
        EntryPayload::Blank => PersistedPayload::Blank,
        EntryPayload::Normal(proposal) => {
            return StoredEntry {
                log_id: log_id_to_record(&entry.log_id),
                payload: proposal.stored(),
            };
        }
        EntryPayload::Membership(membership) => {
            PersistedPayload::Membership(membership_to_record(membership))
        }
    };
    StoredEntry {
        log_id: log_id_to_record(&entry.log_id),
        payload: postcard::to_allocvec(&payload)
            .expect("our own payload types always encode")
            .into(),
    }
}

/// Rebuilds an openraft entry from its stored form.
/// A command's bytes are shared, not decoded: the state machine decodes them
/// when it applies the entry.
pub fn entry_from_stored(stored: &StoredEntry) -> Result<EntryOf<TypeConfig>, String> {
    let payload = if stored.payload.first() == Some(&COMMAND_TAG) {
        EntryPayload::Normal(Proposal::from_stored(stored.payload.clone()))
    } else {
        let payload: PersistedPayload = postcard::from_bytes(&stored.payload)
            .map_err(|e| format!("undecodable log entry {}: {e}", stored.log_id.index))?;
        match payload {
            PersistedPayload::Blank => EntryPayload::Blank,
            PersistedPayload::Command(_) => {
                return Err(format!(
                    "log entry {}: a command without its one-byte tag",
                    stored.log_id.index
                ));
            }
            PersistedPayload::Membership(record) => {
                EntryPayload::Membership(membership_from_record(&record)?)
            }
        }
    };
    Ok(openraft::Entry {
        log_id: log_id_from_record(&stored.log_id),
        payload,
    })
}

/// Encodes a transient peer message (never persisted).
pub fn encode_message<T: Serialize>(message: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(message).map_err(|e| format!("encode peer message: {e}"))
}

/// `encode_message` into a buffer of `capacity` bytes to begin with (a
/// message of many entries is not copied over and over as the buffer grows).
pub fn encode_message_within<T: Serialize>(
    message: &T,
    capacity: usize,
) -> Result<Vec<u8>, String> {
    postcard::to_extend(message, Vec::with_capacity(capacity))
        .map_err(|e| format!("encode peer message: {e}"))
}

/// Decodes a transient peer message.
pub fn decode_message<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("decode peer message: {e}"))
}
