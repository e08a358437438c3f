//! One write request against the keyspace: every key it touches gets a record at
//! the same pending revision; the request either commits (revision bumps only if
//! something changed) or rolls back without a trace.

use crate::error::MvccError;
use crate::key_space::{Change, KeySpace, Live, Record, Value, record_at};
use crate::types::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse, Event,
    EventKind, KeyValue, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, Revision, TxnRequest, TxnResponse,
};

/// An open write at revision `space.revision + 1`. See the module docs.
pub(crate) struct Writer<'a> {
    space: &'a mut KeySpace,
    pending: Revision,
    /// Keys that got a record at `pending`, with that record, in write order.
    touched: Vec<(Vec<u8>, Record)>,
    events: Vec<Event>,
    /// Events carry previous values read back from the store (`ApplyContext`).
    prev_values: bool,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(space: &'a mut KeySpace, prev_values: bool) -> Self {
        let pending = space.revision + 1;
        Writer {
            space,
            pending,
            touched: Vec::new(),
            events: Vec::new(),
            prev_values,
        }
    }

    /// Deletes every key attached to a lease, all at the pending revision.
    /// Returns how many; the caller drops the lease itself after the commit.
    pub(crate) fn revoke(&mut self, id: i64) -> Result<i64, MvccError> {
        if !self.space.leases.contains_key(&id) {
            return Err(MvccError::LeaseNotFound);
        }
        let keys = self.space.lease_keys(id);
        for key in &keys {
            let previous = self.latest(key, self.prev_values)?;
            self.append(key, None);
            self.events.push(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    mod_revision: self.pending,
                    ..KeyValue::default()
                },
                prev_value_stored: previous.as_ref().is_some_and(|(_, stored)| *stored),
                prev_kv: previous.map(|(kv, _)| kv),
            });
        }
        Ok(keys.len() as i64)
    }

    /// Reads inside the write see its own earlier changes, as in etcd.
    fn read_revision(&self) -> Revision {
        if self.touched.is_empty() {
            self.space.revision
        } else {
            self.pending
        }
    }

    /// Makes the changes permanent; returns the events and the changes to persist.
    pub(crate) fn commit(self) -> (Vec<Event>, Vec<Change>) {
        if self.touched.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let changes = self
            .touched
            .into_iter()
            .map(|(key, record)| Change::Append { key, record })
            .collect();
        self.space.revision = self.pending;
        (self.events, changes)
    }

    /// Undoes every record this write appended, and their pending values.
    pub(crate) fn rollback(self) {
        self.space.values.pending.unpush(self.pending);
        for (key, _) in self.touched {
            let Some(history) = self.space.keys.get_mut(key.as_slice()) else {
                unreachable!("touched key vanished during a write");
            };
            let last = history.pop().map(|record| record.revision);
            assert_eq!(last, Some(self.pending), "rollback of a record not ours");
            if history.is_empty() {
                self.space.keys.remove(key.as_slice());
            }
        }
    }

    fn append(&mut self, key: &[u8], live: Option<Live>) {
        let record = Record {
            revision: self.pending,
            live,
            sub: self.touched.len() as u32,
        };
        // One lookup for a key that exists (the common case), no copy of the key.
        match self.space.keys.get_mut(key) {
            Some(history) => push_record(history, record.clone()),
            None => {
                self.space
                    .keys
                    .insert(crate::key_space::index_key(key), vec![record.clone()]);
            }
        }
        self.touched.push((key.to_vec(), record));
    }

    /// The key's current state; its value read only `with_value` (see
    /// `Values::key_value_lazy`): events carry a stored previous value
    /// unread, and whoever sends them reads it if a watcher asks.
    fn latest(&self, key: &[u8], with_value: bool) -> Result<Option<(KeyValue, bool)>, MvccError> {
        let Some(history) = self.space.keys.get(key) else {
            return Ok(None);
        };
        match record_at(history, self.pending) {
            Some(record) => self.space.values.key_value_lazy(key, record, with_value),
            None => Ok(None),
        }
    }

    pub(crate) fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.space.range_at(request, self.read_revision())
    }

    pub(crate) fn put(&mut self, request: &PutRequest) -> Result<PutResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        if request.ignore_value && !request.value.is_empty() {
            return Err(MvccError::ValueProvided);
        }
        if request.ignore_lease && request.lease != 0 {
            return Err(MvccError::LeaseProvided);
        }
        let with_value = request.prev_kv || request.ignore_value || self.prev_values;
        // The key's history is looked up once: read for the previous state,
        // then appended to (the record is built below).
        let space = &mut *self.space;
        let mut history = space.keys.get_mut(request.key.as_slice());
        let previous = match history.as_deref().and_then(|h| record_at(h, self.pending)) {
            Some(record) => space
                .values
                .key_value_lazy(&request.key, record, with_value)?,
            None => None,
        };
        let prev_value_stored = previous.as_ref().is_some_and(|(_, stored)| *stored);
        let previous = previous.map(|(kv, _)| kv);
        if (request.ignore_value || request.ignore_lease) && previous.is_none() {
            return Err(MvccError::KeyNotFound);
        }
        let lease = match (&previous, request.ignore_lease) {
            (Some(previous), true) => previous.lease,
            _ => request.lease,
        };
        if lease != 0 && !space.leases.contains_key(&lease) {
            return Err(MvccError::LeaseNotFound);
        }
        let value = match (&previous, request.ignore_value) {
            (Some(previous), true) => previous.value.clone(),
            _ => request.value.clone(),
        };
        let create_revision = previous
            .as_ref()
            .map_or(self.pending, |p| p.create_revision);
        let version = previous.as_ref().map_or(1, |p| p.version + 1);
        let kv = KeyValue {
            key: request.key.clone(),
            create_revision,
            mod_revision: self.pending,
            version,
            value: value.clone(),
            lease,
        };
        // The keyspace's record numbers the value among the pending ones (a
        // state commit drops it from there without looking the key up); the
        // record handed to the store carries the bytes.
        let live = Live {
            create_revision,
            version,
            value: Value::Pending(space.values.pending.push(self.pending, value.clone())),
            lease,
        };
        let record = Record {
            revision: self.pending,
            live: Some(live.clone()),
            sub: self.touched.len() as u32,
        };
        match history.take() {
            Some(history) => push_record(history, record),
            None => {
                space
                    .keys
                    .insert(crate::key_space::index_key(&request.key), vec![record]);
            }
        }
        let stored = Record {
            revision: self.pending,
            live: Some(Live {
                value: Value::Inline(value),
                ..live
            }),
            sub: self.touched.len() as u32,
        };
        self.touched.push((request.key.clone(), stored));
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: previous.clone(),
            prev_value_stored,
        });
        let prev_kv = if request.prev_kv { previous } else { None };
        Ok(PutResponse {
            revision: 0,
            prev_kv,
        })
    }

    pub(crate) fn delete_range(
        &mut self,
        request: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let doomed = self.space.live_in_range_lazy(
            &request.key,
            &request.range_end,
            self.pending,
            request.prev_kv || self.prev_values,
        )?;
        for (previous, stored) in &doomed {
            self.append(&previous.key, None);
            let kv = KeyValue {
                key: previous.key.clone(),
                mod_revision: self.pending,
                ..KeyValue::default()
            };
            self.events.push(Event {
                kind: EventKind::Delete,
                kv,
                prev_kv: Some(previous.clone()),
                prev_value_stored: *stored,
            });
        }
        let deleted = doomed.len() as i64;
        let prev_kvs = if request.prev_kv {
            doomed.into_iter().map(|(kv, _)| kv).collect()
        } else {
            Vec::new()
        };
        Ok(DeleteRangeResponse {
            revision: 0,
            deleted,
            prev_kvs,
        })
    }

    pub(crate) fn txn(&mut self, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        let mut succeeded = true;
        for compare in &request.compare {
            if !self.compare(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                RequestOp::Range(range) => ResponseOp::Range(self.range(range)?),
                RequestOp::Put(put) => ResponseOp::Put(self.put(put)?),
                RequestOp::DeleteRange(delete) => {
                    ResponseOp::DeleteRange(self.delete_range(delete)?)
                }
                RequestOp::Txn(txn) => ResponseOp::Txn(self.txn(txn)?),
            };
            responses.push(response);
        }
        Ok(TxnResponse {
            revision: 0,
            succeeded,
            responses,
        })
    }

    fn compare(&self, compare: &Compare) -> Result<bool, MvccError> {
        evaluate_compare(self.space, compare, self.read_revision())
    }
}

/// Evaluates one guard at `revision`.
fn evaluate_compare(
    space: &KeySpace,
    compare: &Compare,
    revision: Revision,
) -> Result<bool, MvccError> {
    if compare.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    let kvs: Vec<KeyValue> = if compare.range_end.is_empty() {
        space.get(&compare.key, revision)?.into_iter().collect()
    } else {
        space.live_in_range(&compare.key, &compare.range_end, revision)?
    };
    if kvs.is_empty() {
        // A missing key compares as all zeros, except that a VALUE compare is false.
        if matches!(compare.target, CompareTarget::Value(_)) {
            return Ok(false);
        }
        return Ok(compare_key_value(compare, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_key_value(compare, kv)))
}

impl KeySpace {
    /// Serves a transaction that writes nothing, without going through Raft
    /// (etcd serves read-only txns the same way). Panics if it would write.
    pub fn read_only_txn(&self, request: &TxnRequest) -> Result<TxnResponse, MvccError> {
        assert!(
            !txn_writes(request),
            "read_only_txn given a txn that writes"
        );
        let revision = self.revision;
        let mut succeeded = true;
        for compare in &request.compare {
            if !evaluate_compare(self, compare, revision)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(range) => ResponseOp::Range(self.range(range)?),
                RequestOp::Txn(txn) => ResponseOp::Txn(self.read_only_txn(txn)?),
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => unreachable!("checked above"),
            });
        }
        let mut response = TxnResponse {
            revision,
            succeeded,
            responses,
        };
        stamp_txn(&mut response, revision);
        Ok(response)
    }
}

/// Whether any branch of a transaction (nested ones included) writes.
pub fn txn_writes(request: &TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .any(|op| match op {
            RequestOp::Range(_) => false,
            RequestOp::Put(_) | RequestOp::DeleteRange(_) => true,
            RequestOp::Txn(nested) => txn_writes(nested),
        })
}

fn compare_key_value(compare: &Compare, kv: &KeyValue) -> bool {
    let ordering = match &compare.target {
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::Create(v) => kv.create_revision.cmp(v),
        CompareTarget::Mod(v) => kv.mod_revision.cmp(v),
        CompareTarget::Value(v) => kv.value[..].cmp(v.as_slice()),
        CompareTarget::Lease(v) => kv.lease.cmp(v),
    };
    match compare.result {
        CompareResult::Equal => ordering.is_eq(),
        CompareResult::Greater => ordering.is_gt(),
        CompareResult::Less => ordering.is_lt(),
        CompareResult::NotEqual => ordering.is_ne(),
    }
}

/// Stamps the final store revision into a transaction's nested responses.
pub(crate) fn stamp_txn(response: &mut TxnResponse, revision: Revision) {
    response.revision = revision;
    for op in &mut response.responses {
        match op {
            ResponseOp::Range(r) => r.revision = revision,
            ResponseOp::Put(r) => r.revision = revision,
            ResponseOp::DeleteRange(r) => r.revision = revision,
            ResponseOp::Txn(r) => stamp_txn(r, revision),
        }
    }
}

/// Appends a write's record to a key's history (revisions strictly increase:
/// one record per key per write).
fn push_record(history: &mut Vec<Record>, record: Record) {
    if let Some(last) = history.last() {
        assert!(
            last.revision < record.revision,
            "second write of one key at one revision"
        );
    }
    history.push(record);
}
