//! A client command as it travels: encoded once, by the member a client
//! reached, then carried as those bytes through forwarding, the leader's log,
//! replication and every follower's log. Each member decodes it once, to apply
//! it (and a member receiving it from a peer once more, to refuse garbage
//! before it reaches the log).
//!
//! The bytes are the log's stored payload for a command (`codec`'s
//! `PersistedPayload::Command`: tag 1, then the command), so storing an entry
//! and reading it back copies nothing.

use std::fmt;

use bytes::Bytes;
use mainstay_mvcc::{Command, shared_bytes};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The stored payload's first byte for a command (`PersistedPayload::Command`).
pub(crate) const COMMAND_TAG: u8 = 1;
/// The command's variant index for `Command::LeaseRenew`, the second byte.
const LEASE_RENEW_VARIANT: u8 = 6;

/// An encoded command; see the module docs. The bytes are not checked until
/// `decode` (or `check`) runs.
#[derive(Clone, PartialEq, Eq)]
pub struct Proposal(Bytes);

impl Proposal {
    /// Encodes a command.
    pub fn encode(command: &Command) -> Proposal {
        let bytes = postcard::to_extend(command, vec![COMMAND_TAG])
            .expect("a command always encodes into memory");
        Proposal(Bytes::from(bytes))
    }

    /// Wraps bytes in the stored form, as read from the log or a peer.
    pub(crate) fn from_stored(bytes: Bytes) -> Proposal {
        Proposal(bytes)
    }

    /// The stored form (shares the bytes).
    pub(crate) fn stored(&self) -> Bytes {
        self.0.clone()
    }

    /// The command. Its values are slices of these bytes, not copies
    /// (`shared_bytes`).
    pub fn decode(&self) -> Result<Command, String> {
        shared_bytes::decode(&self.0, |bytes| match bytes.split_first() {
            Some((&COMMAND_TAG, command)) => {
                postcard::from_bytes(command).map_err(|e| format!("undecodable command: {e}"))
            }
            _ => Err("not a command".to_string()),
        })
    }

    /// Ok if the bytes decode to a command: how bytes from a peer are checked
    /// before they reach the log.
    pub fn check(&self) -> Result<(), String> {
        self.decode().map(drop)
    }

    /// Whether this is a lease renewal (a keep-alive), told from the variant
    /// tag without decoding: renewals wait for the lease gate.
    pub fn is_lease_renew(&self) -> bool {
        self.0.get(..2) == Some(&[COMMAND_TAG, LEASE_RENEW_VARIANT][..])
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for no bytes at all (never a valid command).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Keys and values may be sensitive and large: logs name the size only.
impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal({} bytes)", self.0.len())
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "command({} bytes)", self.0.len())
    }
}

impl Serialize for Proposal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Proposal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        shared_bytes::deserialize(deserializer).map(Proposal)
    }
}

#[cfg(test)]
mod tests {
    use mainstay_mvcc::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRenewRequest,
        LeaseRevokeRequest, PutRequest, TxnRequest,
    };

    use super::*;

    fn every_kind() -> Vec<Command> {
        vec![
            Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![7; 300].into(),
                ..PutRequest::default()
            }),
            Command::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                ..DeleteRangeRequest::default()
            }),
            Command::Txn(TxnRequest::default()),
            Command::Compact(CompactionRequest::default()),
            Command::LeaseGrant(LeaseGrantRequest::default()),
            Command::LeaseRevoke(LeaseRevokeRequest { id: 5 }),
            Command::LeaseRenew(LeaseRenewRequest::default()),
        ]
    }

    #[test]
    fn every_command_round_trips() {
        for command in every_kind() {
            let proposal = Proposal::encode(&command);
            assert_eq!(proposal.decode(), Ok(command));
        }
    }

    #[test]
    fn only_a_renewal_is_a_renewal() {
        for command in every_kind() {
            let renew = matches!(command, Command::LeaseRenew(_));
            assert_eq!(
                Proposal::encode(&command).is_lease_renew(),
                renew,
                "{command}"
            );
        }
    }

    /// The log's format: a stored command is `PersistedPayload::Command`.
    #[test]
    fn the_stored_form_is_the_logs_command_payload() {
        for command in every_kind() {
            let old = crate::codec::encode_command_payload(&command);
            assert_eq!(Proposal::encode(&command).stored(), old);
        }
    }

    #[test]
    fn garbage_is_refused() {
        for bytes in [
            &b""[..],
            &[COMMAND_TAG][..],
            &[0][..],
            &[2, 0][..],
            &[COMMAND_TAG, 99, 1, 2][..],
            &[COMMAND_TAG, 0, 200, 200, 200, 200, 200][..],
        ] {
            let proposal = Proposal::from_stored(Bytes::copy_from_slice(bytes));
            assert!(proposal.check().is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn serializes_as_length_and_bytes() {
        let proposal = Proposal::encode(&every_kind()[0]);
        let wire = postcard::to_allocvec(&proposal).expect("encodes");
        let back: Proposal = postcard::from_bytes(&wire).expect("decodes");
        assert_eq!(back, proposal);
        assert_eq!(wire.len(), proposal.len() + 2);
    }
}
