//! Who may run a command: etcd's auth checks (its `authApplierV3`, with the
//! later fixes: nested transactions, a put's previous value and lease inside
//! a transaction, compaction by root only), as pure functions of the
//! keyspace (the keys a lease holds) and its auth state. The member a client
//! reached checks before proposing; every member checks again when it
//! applies, against the auth state of that point in the log.

use mainstay_auth::{AuthError, Caller, PermissionKind};

use crate::command::Command;
use crate::key_space::KeySpace;
use crate::types::{DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};

use PermissionKind::{Read, Write};

impl KeySpace {
    /// Whether `caller` may run `command` now. Always while auth is off.
    pub fn authorize(&self, caller: &Caller, command: &Command) -> Result<(), AuthError> {
        let auth = &self.auth;
        if !auth.enabled() {
            return Ok(());
        }
        match command {
            Command::Put(put) => self.authorize_put(caller, put),
            Command::DeleteRange(delete) => self.authorize_delete(caller, delete),
            Command::Txn(txn) => self.authorize_txn(caller, txn),
            Command::Compact(_) => auth.check_admin(caller),
            Command::LeaseGrant(_) => auth.check_user(caller),
            Command::LeaseRevoke(revoke) => self.authorize_lease_keys(caller, revoke.id, Write),
            Command::LeaseRenew(renew) => {
                for id in &renew.ids {
                    self.authorize_lease_keys(caller, *id, Write)?;
                }
                Ok(())
            }
            Command::Auth(request) if request.needs_admin() => auth.check_admin(caller),
            Command::Auth(_) => Ok(()),
            Command::Alarm(_) => auth.check_admin(caller),
            // Never proposed: one caller per command.
            Command::Authorized { .. } => Err(AuthError::PermissionDenied),
        }
    }

    /// Whether `caller` may read what `range` names.
    pub fn authorize_range(&self, caller: &Caller, range: &RangeRequest) -> Result<(), AuthError> {
        self.auth
            .check_op(caller, &range.key, &range.range_end, Read)
    }

    /// Whether `caller` may act on a lease's keys with `kind`: an
    /// authenticated user, and (unless root) `kind` on every key the lease
    /// holds. Used for revokes and keep-alives (write) and for a time-to-live
    /// that lists the keys (read).
    pub fn authorize_lease_keys(
        &self,
        caller: &Caller,
        id: i64,
        kind: PermissionKind,
    ) -> Result<(), AuthError> {
        let auth = &self.auth;
        auth.check_user(caller)?;
        if auth.check_admin(caller).is_ok() {
            return Ok(());
        }
        if let Some(keys) = self.lease_keys.get(&id) {
            for key in keys {
                auth.check_op(caller, key, &[], kind)?;
            }
        }
        Ok(())
    }

    fn authorize_put(&self, caller: &Caller, put: &PutRequest) -> Result<(), AuthError> {
        let auth = &self.auth;
        auth.check_op(caller, &put.key, &[], Write)?;
        if put.lease != 0 && auth.check_admin(caller).is_err() {
            // Attaching to a lease lets the caller's revoke or expiry delete
            // its other keys: write on every one of them.
            if let Some(keys) = self.lease_keys.get(&put.lease) {
                for key in keys {
                    auth.check_op(caller, key, &[], Write)?;
                }
            }
        }
        if put.prev_kv {
            auth.check_op(caller, &put.key, &[], Read)?;
        }
        Ok(())
    }

    fn authorize_delete(
        &self,
        caller: &Caller,
        delete: &DeleteRangeRequest,
    ) -> Result<(), AuthError> {
        self.auth
            .check_op(caller, &delete.key, &delete.range_end, Write)?;
        if delete.prev_kv {
            self.auth
                .check_op(caller, &delete.key, &delete.range_end, Read)?;
        }
        Ok(())
    }

    /// Every compare (read), then both branches in full whatever the compares
    /// will say, nested transactions included.
    pub fn authorize_txn(&self, caller: &Caller, txn: &TxnRequest) -> Result<(), AuthError> {
        for compare in &txn.compare {
            self.auth
                .check_op(caller, &compare.key, &compare.range_end, Read)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                RequestOp::Range(range) => self.authorize_range(caller, range)?,
                RequestOp::Put(put) => self.authorize_put(caller, put)?,
                RequestOp::DeleteRange(delete) => self.authorize_delete(caller, delete)?,
                RequestOp::Txn(nested) => self.authorize_txn(caller, nested)?,
            }
        }
        Ok(())
    }
}
