//! etcd's backend quota: what a write costs and whether it fits. A request
//! that would grow the store past `--quota-backend-bytes` is refused with
//! `etcdserver: mvcc: database space exceeded` and raises NOSPACE for this
//! member through the log (every member then refuses growing writes at apply,
//! `mainstay_mvcc::alarm_refusal`). Reads, deletes and compaction cost nothing.

use mainstay_mvcc::{Command, PutRequest, RequestOp, TxnRequest};

/// etcd's estimate of a key's metadata.
const KV_OVERHEAD: u64 = 256;
/// etcd's estimate of a lease.
const LEASE_OVERHEAD: u64 = 64;

fn put_cost(put: &PutRequest) -> u64 {
    KV_OVERHEAD + put.key.len() as u64 + put.value.len() as u64
}

fn branch_cost(ops: &[RequestOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            RequestOp::Put(put) => put_cost(put),
            RequestOp::Txn(nested) => txn_cost(nested),
            RequestOp::Range(_) | RequestOp::DeleteRange(_) => 0,
        })
        .sum()
}

/// The larger branch (only one runs); nested txns count, unlike etcd 3.4's.
fn txn_cost(txn: &TxnRequest) -> u64 {
    branch_cost(&txn.success).max(branch_cost(&txn.failure))
}

/// What `command` may add to the store, in bytes (etcd's estimate).
pub fn command_cost(command: &Command) -> u64 {
    match command.inner() {
        Command::Put(put) => put_cost(put),
        Command::Txn(txn) => txn_cost(txn),
        Command::LeaseGrant(_) => LEASE_OVERHEAD,
        _ => 0,
    }
}

/// Whether a request of `cost` bytes is refused with the store at `db_bytes`
/// (etcd: it fits while size + cost stays below the quota).
pub fn over_quota(db_bytes: u64, cost: u64, quota: u64) -> bool {
    cost > 0 && db_bytes.saturating_add(cost) >= quota
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainstay_mvcc::{DeleteRangeRequest, LeaseGrantRequest, RangeRequest};

    fn put(key: &str, value: usize) -> PutRequest {
        PutRequest {
            key: key.as_bytes().to_vec(),
            value: vec![b'v'; value].into(),
            ..PutRequest::default()
        }
    }

    #[test]
    fn costs_and_limits_are_etcds() {
        let txn = TxnRequest {
            success: vec![
                RequestOp::Put(put("a", 10)),
                RequestOp::Range(RangeRequest::default()),
            ],
            failure: vec![
                RequestOp::Put(put("b", 1)),
                RequestOp::Txn(TxnRequest {
                    success: vec![RequestOp::Put(put("c", 100))],
                    ..TxnRequest::default()
                }),
            ],
            ..TxnRequest::default()
        };
        let table = [
            (Command::Put(put("key", 4096)), 256 + 3 + 4096),
            (Command::Txn(txn), (256 + 1 + 1) + (256 + 1 + 100)),
            (Command::LeaseGrant(LeaseGrantRequest::default()), 64),
            (Command::DeleteRange(DeleteRangeRequest::default()), 0),
        ];
        for (command, cost) in table {
            assert_eq!(command_cost(&command), cost, "{command}");
        }
        // (db bytes, cost, quota, refused)
        for (db, cost, quota, refused) in [
            (1000, 0, 1000, false),
            (500, 499, 1000, false),
            (500, 500, 1000, true),
            (2000, 0, 1000, false),
            (u64::MAX, 1, u64::MAX, true),
        ] {
            assert_eq!(
                over_quota(db, cost, quota),
                refused,
                "{db} + {cost} vs {quota}"
            );
        }
    }
}
