//! What the scale-out parts share (a leaf: it uses none of them): the
//! deliberate bugs, the cost model, how a stored value carries its global
//! revision, the layout of groups and key ranges, and the compare-and-set of
//! a counter key (the leader's epoch, the sequencer's ceiling).

use std::time::Duration;

use mainstay_proto::etcdserverpb::{
    Compare, PutRequest, RequestOp, TxnRequest, compare, request_op,
};

/// Deliberate bugs of the scheme (self-tests: the checks must catch them).
#[derive(Clone, Copy, Debug, Default)]
pub struct Breaks {
    /// Each group numbers its writes itself, as a lone cluster does: no
    /// sequencer, reads at each group's latest.
    pub no_oracle: bool,
    /// Reads are served at the newest revision handed out without waiting for
    /// the stable revision, and watches emit events as they arrive.
    pub no_stable_wait: bool,
    /// Watches emit revision r once S ≥ r, without waiting for every group's
    /// stream to have delivered what its group applied up to r (the design's
    /// first rule, which the simulation showed wrong).
    pub watch_on_stable_only: bool,
}

/// The model of a group leader's costs in throughput runs: the simulated
/// members' disks and CPUs take no time, so the leader charges each batch
/// the fsync and per-write CPU a group pays on this machine.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CostModel {
    pub(crate) batch: Duration,
    pub(crate) per_write: Duration,
}

impl CostModel {
    /// Measured on this machine (docs/design/scale-out.md §8): a batch pays
    /// one fsync (0.25 ms: `dd bs=8k count=500 oflag=dsync` took 0.10–0.14 s),
    /// and each write 121 µs, the inverse of the 8,243 puts/s one group of
    /// three members sustained at 256 clients (`mainstay-bench`, put256).
    pub(crate) const MEASURED: CostModel = CostModel {
        batch: Duration::from_micros(250),
        per_write: Duration::from_micros(121),
    };

    pub(crate) async fn charge(&self, writes: usize) {
        let cost = self.batch + self.per_write * writes as u32;
        if !cost.is_zero() {
            tokio::time::sleep(cost).await;
        }
    }
}

/// A stored value: the global revision (fixed width, so values compare in
/// revision order) and the client's value.
pub(crate) fn encode_value(revision: i64, value: &[u8]) -> Vec<u8> {
    let mut out = format!("{revision:020}|").into_bytes();
    out.extend_from_slice(value);
    out
}

/// The inverse of `encode_value`.
pub(crate) fn decode_value(stored: &[u8]) -> Option<(i64, Vec<u8>)> {
    let bar = stored.iter().position(|b| *b == b'|')?;
    let revision = std::str::from_utf8(&stored[..bar]).ok()?.parse().ok()?;
    Some((revision, stored[bar + 1..].to_vec()))
}

/// Groups, their members and the key ranges (range partitioning: group `g`
/// owns `[k{g}-, k{g}.)`).
pub(crate) struct Layout {
    pub(crate) members: Vec<Vec<String>>,
    pub(crate) keys: u64,
}

impl Layout {
    pub(crate) fn groups(&self) -> u64 {
        self.members.len() as u64
    }

    pub(crate) fn group_of(&self, index: u64) -> u64 {
        index * self.groups() / self.keys
    }

    pub(crate) fn key(&self, index: u64) -> Vec<u8> {
        format!("k{:02}-{index:03}", self.group_of(index)).into_bytes()
    }

    pub(crate) fn range_of(&self, group: u64) -> (Vec<u8>, Vec<u8>) {
        (
            format!("k{group:02}-").into_bytes(),
            format!("k{group:02}.").into_bytes(),
        )
    }

    pub(crate) fn leader(&self, group: u64) -> String {
        format!("lead{group}")
    }
}

/// The compare "counter key `key` holds `value`" (0: the key is absent).
pub(crate) fn counter_is(key: &[u8], value: i64) -> Compare {
    let (target, union) = if value == 0 {
        (
            compare::CompareTarget::Create,
            compare::TargetUnion::CreateRevision(0),
        )
    } else {
        (
            compare::CompareTarget::Value,
            compare::TargetUnion::Value(value.to_string().into_bytes()),
        )
    };
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: target as i32,
        key: key.to_vec(),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

/// A put as a Txn operation.
pub(crate) fn put_op(key: Vec<u8>, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key,
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// Sets counter key `key` from `current` to `next` if nobody changed it.
pub(crate) fn counter_cas(key: &[u8], current: i64, next: i64) -> TxnRequest {
    TxnRequest {
        compare: vec![counter_is(key, current)],
        success: vec![put_op(key.to_vec(), next.to_string().into_bytes())],
        failure: Vec::new(),
    }
}
