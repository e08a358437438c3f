//! Why a KV command was refused. The API layer maps each variant to etcd's exact
//! gRPC code and message (mainstay-api's status table); nothing here knows gRPC.

use serde::{Deserialize, Serialize};

/// A KV request that cannot be served; the keyspace is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum MvccError {
    /// A request or compare named an empty key.
    #[error("key is not provided")]
    EmptyKey,
    /// `ignore_value` / `ignore_lease` on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// `ignore_value` together with a value.
    #[error("value is provided")]
    ValueProvided,
    /// `ignore_lease` together with a lease.
    #[error("lease is provided")]
    LeaseProvided,
    /// More operations in one transaction level than allowed.
    #[error("too many operations in txn request")]
    TooManyOps,
    /// A key written twice in one transaction branch.
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// The revision asked for has been compacted away.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The revision asked for does not exist yet.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// A put or revoke named a lease that does not exist.
    #[error("requested lease not found")]
    LeaseNotFound,
    /// A grant named an id that is taken.
    #[error("lease already exists")]
    LeaseExists,
    /// A grant asked for more than `LEASE_TTL_MAX` seconds.
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// A NOSPACE alarm is raised: nothing that grows the store is applied.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised: no KV or lease operation is applied.
    #[error("corrupt cluster")]
    Corrupt,
    /// An auth request failed, or the caller may not run the command.
    #[error("{0}")]
    Auth(mainstay_auth::AuthError),
    /// A value that left memory could not be read back from the state store
    /// (I/O error or damage): the member stops.
    #[error("mainstay: cannot read a value from the state store: {0}")]
    ValueUnreadable(String),
}
