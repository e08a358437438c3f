//! Checks a request can be proposed at all, before it reaches Raft: the same
//! rules etcd applies at its API (empty keys, txn size, duplicate writes).

use crate::error::MvccError;
use crate::key_space::in_range;
use crate::types::{RequestOp, TxnRequest};

/// Validates a transaction: `max_ops` per level, no empty key, no key written
/// twice (or put inside a deleted range) in one branch.
pub fn validate_txn(txn: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    check_shape(txn, max_ops)?;
    written_in(&txn.success)?;
    written_in(&txn.failure)?;
    Ok(())
}

fn check_shape(txn: &TxnRequest, max_ops: usize) -> Result<(), MvccError> {
    if txn.compare.len() > max_ops || txn.success.len() > max_ops || txn.failure.len() > max_ops {
        return Err(MvccError::TooManyOps);
    }
    if txn.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match op {
            RequestOp::Range(r) if r.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::Put(p) if p.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::DeleteRange(d) if d.key.is_empty() => return Err(MvccError::EmptyKey),
            RequestOp::Txn(nested) => check_shape(nested, max_ops)?,
            _ => {}
        }
    }
    Ok(())
}

/// Keys put and ranges deleted by one branch (nested branches included).
struct Written {
    puts: Vec<Vec<u8>>,
    deletes: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Written {
    fn deleted(&self, key: &[u8]) -> bool {
        self.deletes
            .iter()
            .any(|(start, end)| in_range(key, start, end))
    }
}

fn written_in(ops: &[RequestOp]) -> Result<Written, MvccError> {
    let mut written = Written {
        puts: Vec::new(),
        deletes: Vec::new(),
    };
    for op in ops {
        if let RequestOp::DeleteRange(delete) = op {
            written
                .deletes
                .push((delete.key.clone(), delete.range_end.clone()));
        }
    }
    for op in ops {
        let RequestOp::Txn(nested) = op else { continue };
        let then = written_in(&nested.success)?;
        let otherwise = written_in(&nested.failure)?;
        let mut added = Vec::new();
        for key in &then.puts {
            if written.puts.contains(key) || written.deleted(key) {
                return Err(MvccError::DuplicateKey);
            }
            added.push(key.clone());
        }
        for key in &otherwise.puts {
            // Only one nested branch runs, so both may write the same key.
            let clash = written.puts.contains(key) && !then.puts.contains(key);
            if clash || written.deleted(key) {
                return Err(MvccError::DuplicateKey);
            }
            added.push(key.clone());
        }
        written.puts.extend(added);
        written.deletes.extend(then.deletes);
        written.deletes.extend(otherwise.deletes);
    }
    for op in ops {
        let RequestOp::Put(put) = op else { continue };
        if written.puts.contains(&put.key) || written.deleted(&put.key) {
            return Err(MvccError::DuplicateKey);
        }
        written.puts.push(put.key.clone());
    }
    Ok(written)
}
