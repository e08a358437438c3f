//! Domain types for KV requests and responses. They mirror etcd's wire messages
//! field for field, but belong to us: `mainstay-api` converts at the boundary, and
//! the Raft log stores these (see `Command`), never the generated wire types.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The MVCC store revision: one per effective write request, starting at 1.
pub type Revision = i64;

/// One key's state at some revision, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key; never empty.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Revision of the put that created this incarnation of the key.
    pub create_revision: Revision,
    /// Revision of the last modification.
    pub mod_revision: Revision,
    /// Number of puts since creation (1 on creation).
    pub version: i64,
    /// The value (shared, not copied: see `shared_bytes`).
    #[serde(with = "crate::shared_bytes")]
    pub value: Bytes,
    /// Attached lease ID, 0 for none.
    pub lease: i64,
}

/// Whether an event created/updated or deleted a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete; `kv` carries only the key and the deletion revision.
    Delete,
}

/// A change to one key, as watchers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev_kv: Option<KeyValue>,
    /// `prev_kv`'s value was not read (it had left memory): its value is
    /// empty here and lives in the store at `prev_kv.mod_revision`. Whoever
    /// sends the event to a watcher that asked for it reads it then, as etcd
    /// reads a previous key-value when it sends an event.
    pub prev_value_stored: bool,
}

/// Sort direction of a range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortOrder {
    /// No sort requested (key order, unless a target is given).
    #[default]
    None,
    /// Ascending.
    Ascend,
    /// Descending.
    Descend,
}

/// Field a range sorts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortTarget {
    /// The key.
    #[default]
    Key,
    /// The per-key version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Mod,
    /// The value bytes.
    Value,
}

/// A read of a key or range (etcd `RangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// First key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// End of the half-open range; empty = single key, `\0` = every key ≥ key.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Maximum number of keys returned; 0 = unlimited.
    pub limit: i64,
    /// Revision to read at; ≤ 0 = latest.
    pub revision: Revision,
    /// Sort direction.
    pub sort_order: SortOrder,
    /// Sort field.
    pub sort_target: SortTarget,
    /// Member-local read.
    pub serializable: bool,
    /// Strip values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
    /// Keep keys with mod_revision ≥ this (0 = off).
    pub min_mod_revision: Revision,
    /// Keep keys with mod_revision ≤ this (0 = off).
    pub max_mod_revision: Revision,
    /// Keep keys with create_revision ≥ this (0 = off).
    pub min_create_revision: Revision,
    /// Keep keys with create_revision ≤ this (0 = off).
    pub max_create_revision: Revision,
}

/// Result of a range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// Store revision when served.
    pub revision: Revision,
    /// The keys.
    pub kvs: Vec<KeyValue>,
    /// Whether `limit` cut the result.
    pub more: bool,
    /// Keys in the range at the read revision, before limit and filters.
    pub count: i64,
}

/// A write of one key (etcd `PutRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key; never empty.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value (shared, not copied: see `shared_bytes`).
    #[serde(with = "crate::shared_bytes")]
    pub value: Bytes,
    /// Lease to attach, 0 for none.
    pub lease: i64,
    /// Return the previous key-value.
    pub prev_kv: bool,
    /// Keep the current value.
    pub ignore_value: bool,
    /// Keep the current lease.
    pub ignore_lease: bool,
}

/// Result of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// Store revision after the put.
    pub revision: Revision,
    /// The previous key-value, when asked and present.
    pub prev_kv: Option<KeyValue>,
}

/// A delete of a key or range (etcd `DeleteRangeRequest`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    /// First key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// End of the range, same rules as `RangeRequest::range_end`.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// Result of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    /// Store revision after the delete.
    pub revision: Revision,
    /// Number of keys deleted.
    pub deleted: i64,
    /// The deleted key-values, when asked.
    pub prev_kvs: Vec<KeyValue>,
}

/// How a compare relates the key's field to the given value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    /// Equal.
    #[default]
    Equal,
    /// Field greater than the value.
    Greater,
    /// Field less than the value.
    Less,
    /// Not equal.
    NotEqual,
}

/// Which field a compare reads, with the operand (etcd's `target_union`; a
/// mismatched union arm reads as zero, which the API layer resolves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The per-key version.
    Version(i64),
    /// The create revision.
    Create(Revision),
    /// The mod revision.
    Mod(Revision),
    /// The value bytes.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The attached lease.
    Lease(i64),
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The relation.
    pub result: CompareResult,
    /// Field and operand.
    pub target: CompareTarget,
    /// Key; never empty.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Optional range end: the compare must hold for every key in the range.
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

/// One operation inside a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// A read.
    Range(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    DeleteRange(DeleteRangeRequest),
    /// A nested transaction.
    Txn(TxnRequest),
}

/// The result of one transaction operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// From a read.
    Range(RangeResponse),
    /// From a put.
    Put(PutResponse),
    /// From a delete.
    DeleteRange(DeleteRangeResponse),
    /// From a nested transaction.
    Txn(TxnResponse),
}

/// Compare-then-operations, executed atomically at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRequest {
    /// Guards, all of which must hold (AND).
    pub compare: Vec<Compare>,
    /// Operations when the guards hold.
    pub success: Vec<RequestOp>,
    /// Operations otherwise.
    pub failure: Vec<RequestOp>,
}

/// Result of a transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Store revision after the transaction.
    pub revision: Revision,
    /// Whether the guards held.
    pub succeeded: bool,
    /// Results of the branch taken, in order.
    pub responses: Vec<ResponseOp>,
}

impl TxnResponse {
    /// (ranges, puts, deletes) the branch taken ran, nested txns included
    /// (etcd's mvcc counts these).
    pub fn op_counts(&self) -> (u64, u64, u64) {
        self.responses
            .iter()
            .map(|op| match op {
                ResponseOp::Range(_) => (1, 0, 0),
                ResponseOp::Put(_) => (0, 1, 0),
                ResponseOp::DeleteRange(_) => (0, 0, 1),
                ResponseOp::Txn(nested) => nested.op_counts(),
            })
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    }
}

/// Drop history older than a revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionRequest {
    /// Revisions below this one are dropped (the state at it is kept).
    pub revision: Revision,
    /// Wait until the space is really reclaimed (we always are).
    pub physical: bool,
}

/// Result of a compaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionResponse {
    /// Store revision when applied.
    pub revision: Revision,
}

/// The longest lease TTL etcd accepts, in seconds.
pub const LEASE_TTL_MAX: i64 = 9_000_000_000;

/// Grant a lease (etcd `LeaseGrantRequest`). The TTL has already been raised to
/// the member's minimum by the API layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// Requested id; 0 lets the state machine pick one.
    pub id: i64,
    /// Time to live in seconds.
    pub ttl: i64,
}

/// Result of a grant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantResponse {
    /// Store revision (a grant does not move it).
    pub revision: Revision,
    /// The lease id.
    pub id: i64,
    /// The granted TTL in seconds.
    pub ttl: i64,
}

/// Revoke a lease and delete its keys (etcd `LeaseRevokeRequest`); the leader
/// also proposes this when a lease expires.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeRequest {
    /// The lease id.
    pub id: i64,
}

/// Result of a revoke.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    /// Store revision after the keys were deleted.
    pub revision: Revision,
    /// How many keys were deleted.
    pub deleted: i64,
}

/// Keep leases alive (etcd `LeaseKeepAliveRequest`, several batched into one
/// entry). Changes no key and no revision: every replica restarts the countdown
/// of each named lease when it applies this, so a new leader knows how much of
/// each TTL is left.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewRequest {
    /// The leases to renew.
    pub ids: Vec<i64>,
}

/// Result of a renew.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewResponse {
    /// Store revision (a renew does not move it).
    pub revision: Revision,
    /// Per requested id, its granted TTL in seconds, or 0 if it does not exist.
    pub ttls: Vec<i64>,
}
