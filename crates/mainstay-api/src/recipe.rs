//! The prefix-key queue under the Lock and Election services: etcd's
//! `concurrency.Mutex` and `concurrency.Election` recipes, run on the server
//! over this member's `Api` (etcd runs them through an embedded client).
//!
//! Each caller owns the key `<name>/<lease in hex>`, attached to its lease so it
//! vanishes with the lease. Among the live keys under the prefix `<name>/`, the
//! one created first holds the lock or leads the election; every other caller
//! waits until each key created before its own is deleted. The decisions (key
//! naming, whose turn it is, who leads, the txns and how to read their answers)
//! are plain functions; the async part only proposes, reads and waits.
//!
//! A waiter owns no task: it is the RPC's own future, woken by the replica's
//! broadcast of applied revisions, and dropped when the client cancels.
//! Dropping it withdraws the waiter's key (`Withdrawal`), as etcd's recipes do
//! when their wait fails, so an abandoned waiter never inherits the lock. Unlike
//! etcd 3.4, a waiter whose own key is deleted (its lease expired or was
//! revoked) stops waiting at once and fails, instead of "acquiring" a lock it no
//! longer has a key for.

use mainstay_auth::Caller;
use std::time::Duration;

use mainstay_mvcc::{
    Command, CommandResponse, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue,
    LeaseGrantRequest, PutRequest, RangeRequest, RequestOp, ResponseOp, Revision, SortOrder,
    SortTarget, TxnRequest, TxnResponse, validate_txn,
};
use mainstay_raft::{AppliedEvents, ReplicaError};
use tokio::sync::broadcast;
use tonic::Status;

use crate::Api;
use crate::status::{mvcc_status, replica_status, unexpected};

#[cfg(test)]
mod tests;

/// TTL of the lease granted to a caller that names none (lease 0): etcd's
/// `concurrency` session default, which its Lock and Election servers inherit.
const SESSION_TTL_SECONDS: i64 = 60;

/// How long withdrawing an abandoned waiter's key may take; past it the key
/// is left to its lease.
const WITHDRAWAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The queue's prefix: the name and a slash (etcd's `pfx + "/"`).
pub(crate) fn queue_prefix(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// etcd's range end for every key that starts with `prefix`: the prefix with
/// its last byte below 0xff incremented and what follows dropped; `\0` (every
/// key from `prefix` on) when every byte is 0xff.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A lease id as Go's `%x` prints an int64 (how etcd names queue keys):
/// lowercase hex without leading zeros, a minus sign before negatives.
pub(crate) fn lease_hex(lease: i64) -> String {
    if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    }
}

/// The key a lease owns in a queue: `<prefix><lease hex>`.
pub(crate) fn queue_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(lease_hex(lease).as_bytes());
    key
}

/// Where a queued key stands among the live keys under its prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// No live key under the prefix was created before it: it holds the lock
    /// (or leads the election).
    Front,
    /// A key created before it is still live, or this member has not applied
    /// the key's creation yet.
    Behind,
    /// The key is gone, or is another incarnation (deleted and created again).
    Gone,
}

/// Where `own_key`, created at `own_create_revision`, stands among `keys` (the
/// live keys under its prefix at `revision`).
pub(crate) fn turn(
    keys: &[KeyValue],
    own_key: &[u8],
    own_create_revision: Revision,
    revision: Revision,
) -> Turn {
    if revision < own_create_revision {
        return Turn::Behind;
    }
    let own = keys.iter().find(|kv| kv.key == own_key);
    if own.is_none_or(|kv| kv.create_revision != own_create_revision) {
        return Turn::Gone;
    }
    // Keys created in the same revision (one client txn) share the front, as
    // in etcd, whose wait reads keys created at most one revision earlier.
    if keys
        .iter()
        .any(|kv| kv.create_revision < own_create_revision)
    {
        Turn::Behind
    } else {
        Turn::Front
    }
}

/// The key created first among `keys`: the lock holder, the election leader.
/// Ties (one txn creating several) go to the lowest key, as `keys` is in key order.
pub(crate) fn first_created(keys: &[KeyValue]) -> Option<&KeyValue> {
    keys.iter().min_by_key(|kv| kv.create_revision)
}

/// Whether an applied revision changed a key under `prefix`.
pub(crate) fn touches(events: &[mainstay_mvcc::Event], prefix: &[u8]) -> bool {
    events.iter().any(|event| event.kv.key.starts_with(prefix))
}

fn create_revision_is(key: &[u8], create_revision: Revision) -> Compare {
    Compare {
        result: CompareResult::Equal,
        target: CompareTarget::Create(create_revision),
        key: key.to_vec(),
        range_end: Vec::new(),
    }
}

fn read_key(key: &[u8]) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: key.to_vec(),
        ..RangeRequest::default()
    })
}

/// The first-created key under `prefix` (etcd's `WithFirstCreate`).
fn read_first_created(prefix: &[u8]) -> RequestOp {
    RequestOp::Range(RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: SortOrder::Ascend,
        sort_target: SortTarget::Create,
        ..RangeRequest::default()
    })
}

fn put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.to_vec(),
        value: value.to_vec().into(),
        lease,
        ..PutRequest::default()
    })
}

/// etcd's `Mutex.Lock` txn: create `key` (empty, with the lease) if absent,
/// else read it; either way read the first-created key under `prefix`.
pub(crate) fn lock_txn(key: &[u8], lease: i64, prefix: &[u8]) -> TxnRequest {
    TxnRequest {
        compare: vec![create_revision_is(key, 0)],
        success: vec![put(key, b"", lease), read_first_created(prefix)],
        failure: vec![read_key(key), read_first_created(prefix)],
    }
}

/// etcd's `Election.Campaign` txn: create `key` with the value and the lease
/// if absent, else read it.
pub(crate) fn campaign_txn(key: &[u8], value: &[u8], lease: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![create_revision_is(key, 0)],
        success: vec![put(key, value, lease)],
        failure: vec![read_key(key)],
    }
}

/// etcd's `Election.Proclaim` txn: a new value, only while `key` is the
/// incarnation created at `create_revision`.
pub(crate) fn proclaim_txn(
    key: &[u8],
    create_revision: Revision,
    value: &[u8],
    lease: i64,
) -> TxnRequest {
    TxnRequest {
        compare: vec![create_revision_is(key, create_revision)],
        success: vec![put(key, value, lease)],
        failure: Vec::new(),
    }
}

/// etcd's `Election.Resign` txn, also how an abandoned waiter is withdrawn:
/// delete `key` only while it is the incarnation created at `create_revision`.
pub(crate) fn withdraw_txn(key: &[u8], create_revision: Revision) -> TxnRequest {
    TxnRequest {
        compare: vec![create_revision_is(key, create_revision)],
        success: vec![RequestOp::DeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..DeleteRangeRequest::default()
        })],
        failure: Vec::new(),
    }
}

/// What a lock or campaign txn answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    /// Create revision of the caller's key, new or found.
    pub create_revision: Revision,
    /// The key as found, when the caller's lease already had one.
    pub existing: Option<KeyValue>,
    /// The first-created key under the prefix, when the txn read it.
    pub first: Option<KeyValue>,
}

impl Placed {
    /// Whether the txn's own read shows the caller's key first under the
    /// prefix (etcd's uncontended path, or the lease already holds the lock).
    pub(crate) fn first_in_line(&self) -> bool {
        self.first
            .as_ref()
            .is_none_or(|first| first.create_revision == self.create_revision)
    }
}

fn range_kvs(op: Option<&ResponseOp>) -> Option<&[KeyValue]> {
    match op {
        Some(ResponseOp::Range(range)) => Some(&range.kvs),
        _ => None,
    }
}

/// Reads a `lock_txn` or `campaign_txn` answer; `None` if it has another shape.
pub(crate) fn placed(response: &TxnResponse) -> Option<Placed> {
    let first = range_kvs(response.responses.get(1)).and_then(|kvs| kvs.first().cloned());
    if response.succeeded {
        return Some(Placed {
            create_revision: response.revision,
            existing: None,
            first,
        });
    }
    let existing = range_kvs(response.responses.first())?.first()?.clone();
    Some(Placed {
        create_revision: existing.create_revision,
        existing: Some(existing),
        first,
    })
}

/// The caller's lease: the one it named, or for lease 0 a new lease with
/// etcd's session TTL (what etcd's servers do; the key then outlives the
/// caller by up to that TTL, as in etcd).
pub(crate) async fn session_lease(api: &Api, caller: &Caller, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let grant = LeaseGrantRequest {
        id: 0,
        ttl: SESSION_TTL_SECONDS.max(api.limits.lease_ttl_min),
    };
    match api.propose(caller, Command::LeaseGrant(grant)).await? {
        (CommandResponse::LeaseGrant(granted), _) => Ok(granted.id),
        (other, _) => Err(unexpected(&other)),
    }
}

/// Proposes a txn built here, checked like a client's (a client-given key may
/// be empty).
pub(crate) async fn propose_txn(
    api: &Api,
    caller: &Caller,
    txn: TxnRequest,
) -> Result<(TxnResponse, u64), Status> {
    validate_txn(&txn, api.limits.txn_ops_max).map_err(|e| mvcc_status(&e))?;
    match api.propose(caller, Command::Txn(txn)).await? {
        (CommandResponse::Txn(response), term) => Ok((response, term)),
        (other, _) => Err(unexpected(&other)),
    }
}

/// Refuses a caller who may not read (and, with `write`, write) every key
/// under `prefix`: the recipes read, write and watch their queue there.
pub(crate) fn permit_queue(
    api: &Api,
    caller: &Caller,
    prefix: &[u8],
    write: bool,
) -> Result<(), Status> {
    let end = prefix_end(prefix);
    api.permit(|space| {
        let auth = space.auth();
        auth.check_op(caller, prefix, &end, mainstay_auth::PermissionKind::Read)?;
        if write {
            auth.check_op(caller, prefix, &end, mainstay_auth::PermissionKind::Write)?;
        }
        Ok(())
    })
}

/// The live keys under `prefix` and the revision they were read at.
pub(crate) fn read_queue(api: &Api, prefix: &[u8]) -> Result<(Vec<KeyValue>, Revision), Status> {
    let end = prefix_end(prefix);
    api.replica.read(|space| {
        let revision = space.revision();
        space
            .live_in_range(prefix, &end, revision)
            .map(|keys| (keys, revision))
            .map_err(|error| mvcc_status(&error))
    })
}

/// Waits until an applied revision changes a key under `prefix`, or the
/// broadcast lagged (then anything may have changed).
pub(crate) async fn changed(
    applied: &mut broadcast::Receiver<AppliedEvents>,
    prefix: &[u8],
) -> Result<(), Status> {
    loop {
        match applied.recv().await {
            Ok(revision) if touches(&revision.events, prefix) => return Ok(()),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
            Err(broadcast::error::RecvError::Closed) => {
                return Err(replica_status(&ReplicaError::Stopped));
            }
        }
    }
}

/// Why a wait for the front of a queue ended without it.
pub(crate) enum Waited {
    /// The caller's key was deleted first (lease expired or revoked, unlocked
    /// or resigned by someone else).
    Gone,
    /// The member could not go on (stopped, no leader for the confirming read).
    Failed(Status),
}

/// Waits until `key` (created at `create_revision`) is at the front of the
/// queue under `prefix`; returns the revision of a linearizable read that saw
/// it there. Re-checks only when a key under the prefix changes.
pub(crate) async fn wait_turn(
    api: &Api,
    prefix: &[u8],
    key: &[u8],
    create_revision: Revision,
) -> Result<Revision, Waited> {
    // Subscribe before reading: nothing applied in between is missed.
    let mut applied = api.replica.subscribe();
    loop {
        let (keys, revision) = read_queue(api, prefix).map_err(Waited::Failed)?;
        match turn(&keys, key, create_revision, revision) {
            Turn::Gone => return Err(Waited::Gone),
            Turn::Front => {
                // The local state says so; a read barrier makes it an answer
                // as of now (the key may have been deleted on the leader since).
                api.barrier(false).await.map_err(Waited::Failed)?;
                let (keys, revision) = read_queue(api, prefix).map_err(Waited::Failed)?;
                match turn(&keys, key, create_revision, revision) {
                    Turn::Front => return Ok(revision),
                    Turn::Gone => return Err(Waited::Gone),
                    Turn::Behind => {}
                }
            }
            Turn::Behind => {}
        }
        changed(&mut applied, prefix)
            .await
            .map_err(Waited::Failed)?;
    }
}

/// Withdraws a queued key when dropped armed: the RPC failed or its client
/// cancelled it while it waited. The delete runs in a short task of its own
/// (the RPC's future is gone), bounded by `WITHDRAWAL_TIMEOUT`.
pub(crate) struct Withdrawal {
    armed: Option<(Api, Caller, Vec<u8>, Revision)>,
}

impl Withdrawal {
    /// Arms a withdrawal of `key`'s incarnation created at `create_revision`.
    pub(crate) fn new(api: &Api, caller: &Caller, key: &[u8], create_revision: Revision) -> Self {
        Withdrawal {
            armed: Some((api.clone(), caller.clone(), key.to_vec(), create_revision)),
        }
    }

    /// The key stays (the caller got its turn, or the key is already gone).
    pub(crate) fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for Withdrawal {
    fn drop(&mut self) {
        let Some((api, caller, key, create_revision)) = self.armed.take() else {
            return;
        };
        // Without a runtime (the process is going down) the lease removes the key.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let txn = withdraw_txn(&key, create_revision);
            match tokio::time::timeout(WITHDRAWAL_TIMEOUT, propose_txn(&api, &caller, txn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    tracing::info!(%status, "withdrawing an abandoned waiter's key failed; its lease will remove it");
                }
                Err(_) => {
                    tracing::info!("withdrawing an abandoned waiter's key timed out; its lease will remove it");
                }
            }
        });
    }
}
