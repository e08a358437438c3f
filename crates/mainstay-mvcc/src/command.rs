//! `Command`: a write request as the Raft log carries it, and `KeySpace::apply`,
//! the pure function every replica runs on each committed command.

use std::fmt;

use mainstay_auth::{AuthReply, AuthRequest, Caller};
use serde::{Deserialize, Serialize};

use crate::alarms::{AlarmKind, AlarmRequest, AlarmResponse, Alarms, change_alarms};
use crate::error::MvccError;
use crate::key_space::{Change, KeySpace, LeaseRecord};
use crate::types::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, Event,
    LEASE_TTL_MAX, LeaseGrantRequest, LeaseGrantResponse, LeaseRenewRequest, LeaseRenewResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RequestOp, TxnRequest,
    TxnResponse,
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
    /// Grant a lease.
    LeaseGrant(LeaseGrantRequest),
    /// Revoke a lease (by a client, or by the leader on expiry).
    LeaseRevoke(LeaseRevokeRequest),
    /// Renew leases (keep-alives).
    LeaseRenew(LeaseRenewRequest),
    /// Change users, roles or permissions, turn auth on or off, or log in.
    Auth(AuthRequest),
    /// A client's command with the identity the member it reached found for
    /// it: every member checks the caller may run it against the auth state
    /// at this point of the log (`KeySpace::authorize`) before applying it.
    /// Commands a member makes itself (lease expiry) and keep-alives (checked
    /// when received) travel bare. New variants go last: the log stores the
    /// variant index.
    Authorized {
        /// Who asked.
        caller: Caller,
        /// What they asked for.
        command: Box<Command>,
    },
    /// Raise or clear a cluster alarm (by an operator as root, or by a member
    /// that found its quota passed or its data corrupt).
    Alarm(AlarmRequest),
}

impl Command {
    /// The command itself, without the caller it travels with.
    pub fn inner(&self) -> &Command {
        match self {
            Command::Authorized { command, .. } => command.inner(),
            other => other,
        }
    }
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
            Command::LeaseGrant(grant) => write!(f, "lease-grant(ttl {})", grant.ttl),
            Command::LeaseRevoke(revoke) => write!(f, "lease-revoke({:x})", revoke.id),
            Command::LeaseRenew(renew) => write!(f, "lease-renew({} leases)", renew.ids.len()),
            Command::Auth(request) => write!(f, "{request:?}"),
            Command::Authorized { caller, command } => write!(f, "{command} as {:?}", caller.user),
            Command::Alarm(request) => write!(f, "{request:?}"),
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
    /// From a lease grant.
    LeaseGrant(LeaseGrantResponse),
    /// From a lease revoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// From a lease renew.
    LeaseRenew(LeaseRenewResponse),
    /// From an auth request.
    Auth(AuthReply),
    /// From an alarm change.
    Alarm(AlarmResponse),
}

fn txn_puts(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(nested) => txn_puts(nested),
        RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
    })
}

/// Raised alarms refuse at apply, on every member alike, before permissions
/// (etcd's corrupt and capped appliers): what the raised alarms refuse of `command` (a bare or authorized one), if
/// anything: CORRUPT first, then NOSPACE (etcd's order).
pub fn alarm_refusal(alarms: &Alarms, command: &Command) -> Option<MvccError> {
    let raised = |kind| alarms.iter().any(|alarm| alarm.kind == kind);
    let command = command.inner();
    if raised(AlarmKind::Corrupt)
        && matches!(
            command,
            Command::Put(_)
                | Command::DeleteRange(_)
                | Command::Txn(_)
                | Command::Compact(_)
                | Command::LeaseGrant(_)
                | Command::LeaseRevoke(_)
        )
    {
        return Some(MvccError::Corrupt);
    }
    if raised(AlarmKind::NoSpace) {
        let grows = match command {
            Command::Put(_) | Command::LeaseGrant(_) => true,
            Command::Txn(txn) => txn_puts(txn),
            _ => false,
        };
        if grows {
            return Some(MvccError::NoSpace);
        }
    }
    None
}

/// What a replica knows about the entry it applies, beyond the command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyContext {
    /// The Raft log index of the entry (the same on every replica).
    pub log_index: u64,
    /// Read previous values that left memory into the events (a watcher on
    /// this replica wants prev_kv). Changes no answer and no state, only
    /// whether an event's `prev_kv` carries its value (`prev_value_stored`).
    pub prev_values: bool,
}

/// A lease id derived from the log index, so every replica picks the same one.
fn derived_lease_id(log_index: u64) -> i64 {
    // splitmix64: spreads consecutive indexes over the id space, as etcd's ids are.
    let mut z = log_index.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // Positive and non-zero, as etcd clients expect.
    ((z >> 1) as i64).max(1)
}

/// A refusal: the answer, nothing changed.
fn refused(error: MvccError) -> Applied {
    Applied {
        result: Err(error),
        events: Vec::new(),
        changes: Vec::new(),
    }
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
    /// Applies one committed command. Pure: the same keyspace, command and
    /// context give the same result on every replica. A command with a caller
    /// runs only if the caller may run it now (`authorize`); a bare auth
    /// request is checked as from nobody.
    pub fn apply(&mut self, command: &Command, context: &ApplyContext) -> Applied {
        if let Some(refusal) = alarm_refusal(&self.alarms, command) {
            return refused(refusal);
        }
        let (caller, inner) = match command {
            Command::Authorized { caller, command } => (caller.clone(), &**command),
            Command::Auth(_) => (Caller::anonymous(), command),
            bare => return self.apply_checked(bare, context),
        };
        match self.authorize(&caller, inner) {
            Ok(()) => self.apply_checked(inner, context),
            Err(error) => refused(MvccError::Auth(error)),
        }
    }

    fn apply_auth(&mut self, request: &AuthRequest) -> Applied {
        let before = (self.auth.enabled(), self.auth.revision());
        match self.auth.apply(request) {
            Ok(reply) => {
                let changed = before != (self.auth.enabled(), self.auth.revision());
                Applied {
                    result: Ok(CommandResponse::Auth(reply)),
                    events: Vec::new(),
                    changes: if changed {
                        vec![Change::Auth(Box::new(self.auth.clone()))]
                    } else {
                        Vec::new()
                    },
                }
            }
            Err(error) => refused(MvccError::Auth(error)),
        }
    }

    fn apply_checked(&mut self, command: &Command, context: &ApplyContext) -> Applied {
        match command {
            Command::Auth(request) => return self.apply_auth(request),
            Command::Alarm(request) => {
                let (response, changed) = change_alarms(&mut self.alarms, request);
                return Applied {
                    result: Ok(CommandResponse::Alarm(response)),
                    events: Vec::new(),
                    changes: if changed {
                        vec![Change::Alarms(self.alarms.clone())]
                    } else {
                        Vec::new()
                    },
                };
            }
            // One caller per command: a nested one is refused (`authorize`).
            Command::Authorized { .. } => {
                return refused(MvccError::Auth(mainstay_auth::AuthError::PermissionDenied));
            }
            Command::Compact(compact) => {
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
            Command::LeaseGrant(grant) => return self.grant(grant, context),
            Command::LeaseRenew(renew) => {
                let ttls = renew
                    .ids
                    .iter()
                    .map(|id| self.leases.get(id).map_or(0, |lease| lease.ttl))
                    .collect();
                return Applied {
                    result: Ok(CommandResponse::LeaseRenew(LeaseRenewResponse {
                        revision: self.revision,
                        ttls,
                    })),
                    events: Vec::new(),
                    changes: Vec::new(),
                };
            }
            _ => {}
        }
        let revision_before = self.revision;
        let mut writer = Writer::new(self, context.prev_values);
        let outcome = match command {
            Command::Put(put) => writer.put(put).map(CommandResponse::Put),
            Command::DeleteRange(delete) => writer
                .delete_range(delete)
                .map(CommandResponse::DeleteRange),
            Command::Txn(txn) => writer.txn(txn).map(CommandResponse::Txn),
            Command::LeaseRevoke(revoke) => writer.revoke(revoke.id).map(|deleted| {
                CommandResponse::LeaseRevoke(LeaseRevokeResponse {
                    revision: 0,
                    deleted,
                })
            }),
            Command::Compact(_)
            | Command::LeaseGrant(_)
            | Command::LeaseRenew(_)
            | Command::Auth(_)
            | Command::Alarm(_)
            | Command::Authorized { .. } => {
                unreachable!("handled above")
            }
        };
        let (result, events, mut changes) = match outcome {
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
        for change in &changes {
            if let Change::Append { key, .. } = change {
                self.reindex_lease(key);
            }
        }
        if let (Command::LeaseRevoke(revoke), Ok(_)) = (command, &result) {
            assert!(
                self.lease_keys(revoke.id).is_empty(),
                "a revoked lease kept keys"
            );
            self.leases.remove(&revoke.id);
            self.lease_keys.remove(&revoke.id);
            changes.push(Change::LeaseRemove(revoke.id));
        }
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
            CommandResponse::LeaseRevoke(r) => {
                CommandResponse::LeaseRevoke(LeaseRevokeResponse { revision, ..r })
            }
            other => other,
        });
        Applied {
            result,
            events,
            changes,
        }
    }

    fn grant(&mut self, grant: &LeaseGrantRequest, context: &ApplyContext) -> Applied {
        let refuse = |error| Applied {
            result: Err(error),
            events: Vec::new(),
            changes: Vec::new(),
        };
        if grant.ttl > LEASE_TTL_MAX {
            return refuse(MvccError::LeaseTtlTooLarge);
        }
        let id = if grant.id == 0 {
            let mut id = derived_lease_id(context.log_index);
            while self.leases.contains_key(&id) {
                id = id.wrapping_add(1).max(1);
            }
            id
        } else if self.leases.contains_key(&grant.id) {
            return refuse(MvccError::LeaseExists);
        } else {
            grant.id
        };
        let lease = LeaseRecord { id, ttl: grant.ttl };
        self.leases.insert(id, lease);
        Applied {
            result: Ok(CommandResponse::LeaseGrant(LeaseGrantResponse {
                revision: self.revision,
                id,
                ttl: grant.ttl,
            })),
            events: Vec::new(),
            changes: vec![Change::LeasePut(lease)],
        }
    }
}
