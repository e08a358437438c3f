//! The multi-version keyspace: every key's history of puts and deletions, the
//! current revision and the compacted revision. Reads at any retained revision,
//! writes through `Writer` (see `writer.rs`), compaction and a content hash.
//!
//! The index (every key's records: revisions, versions, leases) is in memory
//! and deterministic; `mainstay-storage` persists the `Change`s a write returns
//! and rebuilds a `KeySpace` with `restore` on start-up. A value is in memory
//! from its write until the state store holds it durably: its record says
//! `Value::Pending(n)`, the bytes are number `n` of the keyspace's pending
//! values, kept in write order. Once a state commit holds every write up to a
//! revision, the values up to it are dropped from the front of that queue
//! (`release_values`: no key is looked up) and a record whose number is gone
//! reads its value back from the store (`ValueStore`) when a read, an event or
//! a compare needs it, so memory grows with keys and revisions, not with the
//! size of values.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::MvccError;
use crate::types::{
    Event, EventKind, KeyValue, RangeRequest, RangeResponse, Revision, SortOrder, SortTarget,
};

/// The live part of a put: what a key holds from `Record::revision` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// Revision of the put that created this incarnation.
    pub create_revision: Revision,
    /// Puts since creation.
    pub version: i64,
    /// The value.
    pub value: Value,
    /// Attached lease, 0 for none.
    pub lease: i64,
}

/// A record's value: the bytes, in the keyspace's pending values until the
/// state store holds them, or only in the state store (under the record's key
/// and revision). Encoded as the bytes themselves; a `Pending` or `Stored`
/// value cannot be encoded (whoever encodes records reads them through the
/// keyspace or from the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// The bytes (records a write hands to the store, records decoded).
    Inline(Bytes),
    /// Number `n` of the keyspace's pending values while it is there (see
    /// `PendingValues`); read from the store once it is not.
    Pending(u64),
    /// Durable in the state store; read through the keyspace's `ValueStore`.
    Stored,
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Inline(bytes) => serializer.serialize_bytes(bytes),
            Value::Pending(_) | Value::Stored => {
                Err(serde::ser::Error::custom("the value is not in the record"))
            }
        }
    }
}

/// Values written and not yet durable, in write order, numbered from `first`
/// on; each with its record's revision, so that a state commit holding every
/// write up to a revision drops exactly those from the front.
#[derive(Clone, Debug, Default)]
pub(crate) struct PendingValues {
    first: u64,
    values: VecDeque<(Revision, Bytes)>,
}

impl PendingValues {
    /// Adds the value of a record at `revision` (not below the last one
    /// added); returns its number.
    pub(crate) fn push(&mut self, revision: Revision, bytes: Bytes) -> u64 {
        assert!(
            self.values.back().is_none_or(|(last, _)| *last <= revision),
            "pending values out of revision order"
        );
        let number = self.first + self.values.len() as u64;
        self.values.push_back((revision, bytes));
        number
    }

    /// Value number `n`, unless it was released.
    fn get(&self, n: u64) -> Option<&Bytes> {
        let at = usize::try_from(n.checked_sub(self.first)?).ok()?;
        self.values.get(at).map(|(_, bytes)| bytes)
    }

    /// Drops the values of records at `revision` added last (a write rolled
    /// back; its records are gone too).
    pub(crate) fn unpush(&mut self, revision: Revision) {
        while self.values.back().is_some_and(|(at, _)| *at == revision) {
            self.values.pop_back();
        }
    }

    /// Drops the values of records at or below `revision`; how many.
    fn release(&mut self, revision: Revision) -> usize {
        let mut released = 0;
        while self.values.front().is_some_and(|(at, _)| *at <= revision) {
            self.values.pop_front();
            self.first += 1;
            released += 1;
        }
        released
    }

    /// Drops every value.
    fn clear(&mut self) {
        self.first += self.values.len() as u64;
        self.values.clear();
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::shared_bytes::deserialize(deserializer).map(Value::Inline)
    }
}

/// Where values that left memory are read from (the state store).
pub trait ValueStore: Send + Sync {
    /// The value of `key`'s record at `revision`. An error means the store
    /// cannot give it (I/O, damage): the member must stop.
    fn value(&self, key: &[u8], revision: Revision) -> Result<Bytes, String>;
}

/// Where a keyspace's values are: the pending ones, and the value store if it
/// has one (compared equal always: they are where values live, not part of
/// the state).
#[derive(Clone, Default)]
pub(crate) struct Values {
    store: Option<Arc<dyn ValueStore>>,
    pub(crate) pending: PendingValues,
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Values({}, {} pending)",
            if self.store.is_some() {
                "store"
            } else {
                "none"
            },
            self.pending.values.len()
        )
    }
}

impl Values {
    /// The bytes of a record's value, from memory or the store.
    pub(crate) fn value_of(
        &self,
        key: &[u8],
        revision: Revision,
        value: &Value,
    ) -> Result<Bytes, MvccError> {
        match self.in_memory(value) {
            Some(bytes) => Ok(bytes.clone()),
            None => self.stored(key, revision),
        }
    }

    /// A value's bytes if memory has them.
    fn in_memory<'a>(&'a self, value: &'a Value) -> Option<&'a Bytes> {
        match value {
            Value::Inline(bytes) => Some(bytes),
            Value::Pending(n) => self.pending.get(*n),
            Value::Stored => None,
        }
    }

    fn stored(&self, key: &[u8], revision: Revision) -> Result<Bytes, MvccError> {
        match &self.store {
            Some(store) => store
                .value(key, revision)
                .map_err(MvccError::ValueUnreadable),
            None => Err(MvccError::ValueUnreadable(
                "no value store for an evicted value".to_string(),
            )),
        }
    }

    /// A record as a `KeyValue` (None for a tombstone). Its value is read
    /// only with `with_value`; else a value no longer in memory is left empty
    /// and the flag says so. Here, not on `KeySpace`, so a writer can read a
    /// key's history while it holds that history mutably.
    pub(crate) fn key_value_lazy(
        &self,
        key: &[u8],
        record: &Record,
        with_value: bool,
    ) -> Result<Option<(KeyValue, bool)>, MvccError> {
        let (Some(mut kv), Some(live)) = (key_value_without_value(key, record), &record.live)
        else {
            return Ok(None);
        };
        match (self.in_memory(&live.value), with_value) {
            (Some(bytes), _) => kv.value = bytes.clone(),
            (None, true) => kv.value = self.stored(key, record.revision)?,
            (None, false) => return Ok(Some((kv, true))),
        }
        Ok(Some((kv, false)))
    }
}

impl PartialEq for Values {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Values {}

/// One step of a key's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Revision of the write.
    pub revision: Revision,
    /// The key's state from then on; `None` is a deletion (tombstone).
    pub live: Option<Live>,
    /// Position among the records of its revision, in the order the request
    /// wrote them (etcd's sub-revision): a revision's watch events come in
    /// this order, as etcd sends them. 0 on records stored before it was kept
    /// (those then come in key order). Not part of the keyspace hash.
    pub sub: u32,
}

/// A lease as the replicated state keeps it. No clock: when it expires is decided
/// by the leader, which then proposes its revocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The lease id (never 0).
    pub id: i64,
    /// The granted time to live, in seconds.
    pub ttl: i64,
}

/// What a write or compaction changed, for the storage layer to persist in the
/// same transaction as the applied log id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A record appended to a key's history.
    Append {
        /// The key.
        key: Vec<u8>,
        /// The new record.
        record: Record,
    },
    /// Records dropped by compaction.
    Remove {
        /// The key.
        key: Vec<u8>,
        /// Revision of the dropped record.
        revision: Revision,
    },
    /// A lease granted.
    LeasePut(LeaseRecord),
    /// A lease revoked (its keys are deleted by `Append`s in the same batch).
    LeaseRemove(i64),
    /// The whole auth state after an auth change (it is small).
    Auth(Box<mainstay_auth::AuthState>),
    /// Every raised alarm after an alarm change.
    Alarms(crate::alarms::Alarms),
}

impl Change {
    /// Whether this change touches key history (and so moves the revision).
    pub fn is_key_change(&self) -> bool {
        matches!(self, Change::Append { .. } | Change::Remove { .. })
    }
}

/// The revision of an empty store, as in etcd: the first write gets revision 2.
pub const INITIAL_REVISION: Revision = 1;

/// A key as the keyspace's index holds it: up to 24 bytes inline, in the
/// index's own nodes, longer ones on the heap. A lookup compares keys while
/// it walks the tree; inline keys are compared where the node already is in
/// cache instead of through a pointer each (measured: the index search was
/// 5 % of a member's CPU under 64 writers, most of it waiting on memory).
pub(crate) type IndexKey = smallvec::SmallVec<[u8; 24]>;

/// `key` as the index holds it.
pub(crate) fn index_key(key: &[u8]) -> IndexKey {
    IndexKey::from_slice(key)
}

/// Every key's history plus the store revisions. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpace {
    /// Per key, its records in strictly increasing revision order; never empty.
    pub(crate) keys: BTreeMap<IndexKey, Vec<Record>>,
    /// The revision of the last effective write.
    pub(crate) revision: Revision,
    /// Reads below this revision fail with `Compacted`; 0 before any compaction.
    pub(crate) compacted: Revision,
    /// Granted leases.
    pub(crate) leases: BTreeMap<i64, LeaseRecord>,
    /// Per lease, the keys whose current incarnation is attached to it.
    pub(crate) lease_keys: BTreeMap<i64, BTreeSet<Vec<u8>>>,
    /// Where evicted values are read from.
    pub(crate) values: Values,
    /// Users, roles, permissions, enabled.
    pub(crate) auth: mainstay_auth::AuthState,
    /// Raised alarms.
    pub(crate) alarms: crate::alarms::Alarms,
}

/// A hash of the keyspace at a revision, computed in parts
/// (`KeySpace::start_hash`, `KeySpace::hash_more`).
#[derive(Clone, Debug)]
pub struct PartialHash {
    hasher: crc32fast::Hasher,
    revision: Revision,
    /// The compacted revision when the hash started.
    pub compacted: Revision,
    next: Option<Vec<u8>>,
}

impl PartialHash {
    /// The hash of every part.
    pub fn finish(self) -> u32 {
        self.hasher.finalize()
    }
}

impl Default for KeySpace {
    fn default() -> Self {
        Self::new()
    }
}

impl KeySpace {
    /// An empty keyspace at the initial revision.
    pub fn new() -> Self {
        KeySpace {
            keys: BTreeMap::new(),
            revision: INITIAL_REVISION,
            compacted: 0,
            leases: BTreeMap::new(),
            lease_keys: BTreeMap::new(),
            values: Values::default(),
            auth: mainstay_auth::AuthState::default(),
            alarms: crate::alarms::Alarms::new(),
        }
    }

    /// Gives the keyspace the store its evicted values are read from.
    pub fn set_value_store(&mut self, store: Arc<dyn ValueStore>) {
        self.values.store = Some(store);
    }

    /// Drops from memory the values of every write at or below `revision`
    /// (the store now holds them durably: the caller committed every write up
    /// to it); their records read them from the store from now on. Returns
    /// how many values were dropped.
    pub fn release_values(&mut self, revision: Revision) -> usize {
        self.values.pending.release(revision)
    }

    /// Drops every value from memory (the store holds all of them durably).
    pub fn evict_all(&mut self) {
        self.values.pending.clear();
        for live in self
            .keys
            .values_mut()
            .flat_map(|history| history.iter_mut())
            .filter_map(|record| record.live.as_mut())
        {
            live.value = Value::Stored;
        }
    }

    /// A copy with every value in memory and no value store: keyspaces compare
    /// by content this way.
    pub fn materialized(&self) -> Result<KeySpace, MvccError> {
        let mut copy = self.clone();
        for (key, history) in copy.keys.iter_mut() {
            for record in history.iter_mut() {
                if let Some(live) = record.live.as_mut() {
                    live.value =
                        Value::Inline(self.values.value_of(key, record.revision, &live.value)?);
                }
            }
        }
        copy.values = Values::default();
        Ok(copy)
    }

    /// Like `live_in_range`, values read only `with_values` (see `key_value_lazy`).
    pub(crate) fn live_in_range_lazy(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: Revision,
        with_values: bool,
    ) -> Result<Vec<(KeyValue, bool)>, MvccError> {
        self.live_records(key, range_end, revision)
            .into_iter()
            .filter_map(|(k, record)| {
                self.values
                    .key_value_lazy(k, record, with_values)
                    .transpose()
            })
            .collect()
    }

    /// A record as a `KeyValue` (None for a tombstone), its value read.
    pub(crate) fn key_value(
        &self,
        key: &[u8],
        record: &Record,
    ) -> Result<Option<KeyValue>, MvccError> {
        let Some(mut kv) = key_value_without_value(key, record) else {
            return Ok(None);
        };
        if let Some(live) = &record.live {
            kv.value = self.values.value_of(key, record.revision, &live.value)?;
        }
        Ok(Some(kv))
    }

    /// Rebuilds a keyspace from persisted records (any order), leases and revisions.
    pub fn restore(
        records: impl IntoIterator<Item = (Vec<u8>, Record)>,
        leases: impl IntoIterator<Item = LeaseRecord>,
        revision: Revision,
        compacted: Revision,
    ) -> Self {
        let mut keys: BTreeMap<IndexKey, Vec<Record>> = BTreeMap::new();
        for (key, record) in records {
            assert!(
                record.revision <= revision,
                "record above the store revision"
            );
            keys.entry(index_key(&key)).or_default().push(record);
        }
        for history in keys.values_mut() {
            history.sort_by_key(|record| record.revision);
        }
        assert!(
            compacted <= revision,
            "compacted {compacted} above revision {revision}"
        );
        let leases: BTreeMap<i64, LeaseRecord> = leases.into_iter().map(|l| (l.id, l)).collect();
        let mut lease_keys: BTreeMap<i64, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (key, history) in &keys {
            if let Some(live) = history.last().and_then(|r| r.live.as_ref())
                && live.lease != 0
            {
                assert!(
                    leases.contains_key(&live.lease),
                    "a key is attached to a lease that does not exist"
                );
                lease_keys
                    .entry(live.lease)
                    .or_default()
                    .insert(key.to_vec());
            }
        }
        KeySpace {
            keys,
            revision: revision.max(INITIAL_REVISION),
            compacted,
            leases,
            lease_keys,
            values: Values::default(),
            auth: mainstay_auth::AuthState::default(),
            alarms: crate::alarms::Alarms::new(),
        }
    }

    /// A granted lease.
    pub fn lease(&self, id: i64) -> Option<LeaseRecord> {
        self.leases.get(&id).copied()
    }

    /// Every granted lease, by id.
    pub fn leases(&self) -> impl Iterator<Item = LeaseRecord> + '_ {
        self.leases.values().copied()
    }

    /// The keys currently attached to a lease, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Vec<u8>> {
        self.lease_keys
            .get(&id)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Moves `key` in the lease index from its previous incarnation's lease to
    /// its current one (called for every key a committed write touched).
    pub(crate) fn reindex_lease(&mut self, key: &[u8]) {
        let Some(history) = self.keys.get(key) else {
            return;
        };
        let lease_of = |record: Option<&Record>| {
            record
                .and_then(|r| r.live.as_ref())
                .map_or(0, |live| live.lease)
        };
        let current = lease_of(history.last());
        let previous = lease_of(history.len().checked_sub(2).and_then(|i| history.get(i)));
        if previous != 0
            && previous != current
            && let Some(keys) = self.lease_keys.get_mut(&previous)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.lease_keys.remove(&previous);
            }
        }
        if current != 0 {
            self.lease_keys
                .entry(current)
                .or_default()
                .insert(key.to_vec());
        }
    }

    /// The revision of the last effective write.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// The auth state.
    pub fn auth(&self) -> &mainstay_auth::AuthState {
        &self.auth
    }

    /// The raised alarms.
    pub fn alarms(&self) -> &crate::alarms::Alarms {
        &self.alarms
    }

    /// Sets the raised alarms (restoring a keyspace from storage or a snapshot).
    pub fn set_alarms(&mut self, alarms: crate::alarms::Alarms) {
        self.alarms = alarms;
    }

    /// Sets the auth state (restoring a keyspace from storage or a snapshot).
    pub fn set_auth(&mut self, auth: mainstay_auth::AuthState) {
        self.auth = auth;
    }

    /// The compacted revision (0 if never compacted).
    pub fn compacted_revision(&self) -> Revision {
        self.compacted
    }

    /// Every record, in key then revision order. A value still in memory is
    /// `Value::Pending`, a number only this keyspace resolves: records meant
    /// to stand alone come from `materialized()`.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], &Record)> {
        self.keys
            .iter()
            .flat_map(|(key, history)| history.iter().map(move |record| (key.as_slice(), record)))
    }

    /// Number of keys live at the current revision.
    pub fn live_keys(&self) -> usize {
        self.keys
            .values()
            .filter(|history| history.last().is_some_and(|r| r.live.is_some()))
            .count()
    }

    /// Checks that `revision` (≤ 0 = current) can be read and resolves it.
    pub fn resolve_read_revision(&self, revision: Revision) -> Result<Revision, MvccError> {
        self.resolve_at(revision, self.revision)
    }

    pub(crate) fn resolve_at(
        &self,
        revision: Revision,
        current: Revision,
    ) -> Result<Revision, MvccError> {
        if revision <= 0 {
            return Ok(current);
        }
        if revision > current {
            return Err(MvccError::FutureRevision);
        }
        if revision < self.compacted {
            return Err(MvccError::Compacted);
        }
        Ok(revision)
    }

    /// The events of revisions `from..=to` on keys in `[key, range_end)`, in
    /// revision order and, within one revision, in the order the request
    /// wrote them (`Record::sub`, as live delivery). `from` must be at least the compacted
    /// revision: compaction keeps every record of that revision (tombstones
    /// included, unlike etcd), and drops what is below it, so events there could
    /// be missing and are refused rather than lost silently.
    pub fn events(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: Revision,
        to: Revision,
    ) -> Result<Vec<(Revision, Event)>, MvccError> {
        if from < self.compacted {
            return Err(MvccError::Compacted);
        }
        let mut events = Vec::new();
        for (k, history) in self.histories_in_range(key, range_end) {
            let first = history.partition_point(|record| record.revision < from);
            for position in first..history.len() {
                let record = &history[position];
                if record.revision > to {
                    break;
                }
                let prev_kv = match position.checked_sub(1) {
                    Some(before) => self.key_value(k, &history[before])?,
                    None => None,
                };
                let event = match self.key_value(k, record)? {
                    Some(kv) => Event {
                        kind: EventKind::Put,
                        kv,
                        prev_kv,
                        prev_value_stored: false,
                    },
                    None => Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: k.to_vec(),
                            mod_revision: record.revision,
                            ..KeyValue::default()
                        },
                        prev_kv,
                        prev_value_stored: false,
                    },
                };
                events.push(((record.revision, record.sub), event));
            }
        }
        // Stable: keys were visited in order, so records without a position
        // (stored before it was kept, all 0) stay key-ordered.
        events.sort_by_key(|(at, _)| *at);
        let events = events
            .into_iter()
            .map(|((revision, _), event)| (revision, event))
            .collect();
        Ok(events)
    }

    /// The key as of `revision`, if it was live then.
    pub fn get(&self, key: &[u8], revision: Revision) -> Result<Option<KeyValue>, MvccError> {
        let Some(history) = self.keys.get(key) else {
            return Ok(None);
        };
        match record_at(history, revision) {
            Some(record) => self.key_value(key, record),
            None => Ok(None),
        }
    }

    /// Keys live at `revision` in `[key, range_end)` (etcd's range_end rules),
    /// in key order, values read.
    pub fn live_in_range(
        &self,
        key: &[u8],
        range_end: &[u8],
        revision: Revision,
    ) -> Result<Vec<KeyValue>, MvccError> {
        self.live_records(key, range_end, revision)
            .into_iter()
            .filter_map(|(k, record)| self.key_value(k, record).transpose())
            .collect()
    }

    /// The records live at `revision` in `[key, range_end)`, in key order.
    fn live_records<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
        revision: Revision,
    ) -> Vec<(&'a [u8], &'a Record)> {
        self.histories_in_range(key, range_end)
            .filter_map(|(k, history)| {
                record_at(history, revision)
                    .filter(|record| record.live.is_some())
                    .map(|record| (k, record))
            })
            .collect()
    }

    pub(crate) fn histories_in_range<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> Box<dyn Iterator<Item = (&'a [u8], &'a Vec<Record>)> + 'a> {
        let iter: Box<dyn Iterator<Item = (&IndexKey, &Vec<Record>)>> = if range_end.is_empty() {
            Box::new(self.keys.get_key_value(key).into_iter())
        } else if range_end == [0] {
            Box::new(
                self.keys
                    .range::<[u8], _>((Bound::Included(key), Bound::Unbounded)),
            )
        } else if range_end <= key {
            Box::new(std::iter::empty())
        } else {
            Box::new(
                self.keys
                    .range::<[u8], _>((Bound::Included(key), Bound::Excluded(range_end))),
            )
        };
        Box::new(iter.map(|(k, history)| (k.as_slice(), history)))
    }

    /// Serves a range read at `request.revision` (validated against `current`).
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, MvccError> {
        self.range_at(request, self.revision)
    }

    pub(crate) fn range_at(
        &self,
        request: &RangeRequest,
        current: Revision,
    ) -> Result<RangeResponse, MvccError> {
        if request.key.is_empty() {
            return Err(MvccError::EmptyKey);
        }
        let revision = self.resolve_at(request.revision, current)?;
        let filtered = request.min_mod_revision > 0
            || request.max_mod_revision > 0
            || request.min_create_revision > 0
            || request.max_create_revision > 0;
        let sorted = !(request.sort_target == SortTarget::Key
            && matches!(request.sort_order, SortOrder::None | SortOrder::Ascend));
        let limit = usize::try_from(request.limit).unwrap_or(0);
        let mut records = self.live_records(&request.key, &request.range_end, revision);
        let count = records.len() as i64;
        if request.count_only {
            records.clear();
        }
        if !filtered && !sorted && limit > 0 {
            // The limit is pushed down: one extra key is enough to know `more`.
            records.truncate(limit + 1);
        }
        // Values are read only when they are answered or sorted on.
        let with_values = !request.keys_only || request.sort_target == SortTarget::Value;
        let mut kvs = Vec::with_capacity(records.len());
        for (key, record) in records {
            let kv = if with_values {
                self.key_value(key, record)?
            } else {
                key_value_without_value(key, record)
            };
            kvs.extend(kv);
        }
        if filtered {
            kvs.retain(|kv| passes_filters(request, kv));
        }
        if sorted {
            sort_kvs(&mut kvs, request.sort_order, request.sort_target);
        }
        let mut more = false;
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
        if request.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        Ok(RangeResponse {
            revision: current,
            kvs,
            more,
            count,
        })
    }

    /// Drops history below `revision`, keeping each key's state at it.
    pub fn compact(&mut self, revision: Revision) -> Result<Vec<Change>, MvccError> {
        if revision <= self.compacted {
            return Err(MvccError::Compacted);
        }
        if revision > self.revision {
            return Err(MvccError::FutureRevision);
        }
        let mut changes = Vec::new();
        let mut emptied = Vec::new();
        for (key, history) in self.keys.iter_mut() {
            // Keep the newest record at or below `revision` unless it is a
            // tombstone from before it. A change at exactly `revision` keeps the
            // record before it too, and a delete there is kept, until a later
            // compaction: a watch starting at the compacted revision still gets
            // every event of it, with its prev_kv (etcd loses both).
            let at = history.partition_point(|record| record.revision <= revision);
            let drop = match at.checked_sub(1).map(|newest| &history[newest]) {
                None => 0,
                Some(newest) if newest.revision == revision => at.saturating_sub(2),
                Some(newest) if newest.live.is_none() => at,
                Some(_) => at - 1,
            };
            for record in history.drain(..drop) {
                changes.push(Change::Remove {
                    key: key.to_vec(),
                    revision: record.revision,
                });
            }
            if history.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.keys.remove(&key);
        }
        self.compacted = revision;
        Ok(changes)
    }

    /// A content hash over every retained record at or below `revision` (≤ 0 =
    /// current). Replicas that applied the same log agree on it.
    pub fn hash(&self, revision: Revision) -> Result<u32, MvccError> {
        let mut hash = self.start_hash(revision)?;
        while !self.hash_more(&mut hash, usize::MAX)? {}
        Ok(hash.finish())
    }

    /// Starts hashing the keyspace at `revision` in parts (`hash_more`), so
    /// that a caller can let go of the keyspace between parts. The parts give
    /// the same hash as `hash` as long as no compaction ran in between (the
    /// records up to `revision` change only by compaction): the caller checks
    /// `PartialHash::compacted` against the keyspace's at the end.
    pub fn start_hash(&self, revision: Revision) -> Result<PartialHash, MvccError> {
        let revision = self.resolve_read_revision(revision)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.compacted.to_be_bytes());
        Ok(PartialHash {
            hasher,
            revision,
            compacted: self.compacted,
            next: Some(Vec::new()),
        })
    }

    /// Hashes up to `keys` more keys; true once every key is hashed.
    pub fn hash_more(&self, hash: &mut PartialHash, keys: usize) -> Result<bool, MvccError> {
        let Some(start) = hash.next.take() else {
            return Ok(true);
        };
        let mut histories = self
            .keys
            .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Unbounded));
        for _ in 0..keys {
            let Some((key, history)) = histories.next() else {
                return Ok(true);
            };
            for record in history.iter() {
                if record.revision > hash.revision {
                    continue;
                }
                let hasher = &mut hash.hasher;
                hasher.update(&(key.len() as u64).to_be_bytes());
                hasher.update(key);
                hasher.update(&record.revision.to_be_bytes());
                match &record.live {
                    None => hasher.update(&[0]),
                    Some(live) => {
                        let value = self.values.value_of(key, record.revision, &live.value)?;
                        hasher.update(&[1]);
                        hasher.update(&live.create_revision.to_be_bytes());
                        hasher.update(&live.version.to_be_bytes());
                        hasher.update(&live.lease.to_be_bytes());
                        hasher.update(&(value.len() as u64).to_be_bytes());
                        hasher.update(&value);
                    }
                }
            }
        }
        hash.next = histories.next().map(|(key, _)| key.to_vec());
        Ok(hash.next.is_none())
    }
}

/// The newest record at or below `revision`.
pub(crate) fn record_at(history: &[Record], revision: Revision) -> Option<&Record> {
    let at = history.partition_point(|record| record.revision <= revision);
    if at == 0 { None } else { history.get(at - 1) }
}

/// A record as a `KeyValue` with an empty value (None for a tombstone).
fn key_value_without_value(key: &[u8], record: &Record) -> Option<KeyValue> {
    let live = record.live.as_ref()?;
    Some(KeyValue {
        key: key.to_vec(),
        create_revision: live.create_revision,
        mod_revision: record.revision,
        version: live.version,
        value: Bytes::new(),
        lease: live.lease,
    })
}

fn passes_filters(request: &RangeRequest, kv: &KeyValue) -> bool {
    (request.min_mod_revision <= 0 || kv.mod_revision >= request.min_mod_revision)
        && (request.max_mod_revision <= 0 || kv.mod_revision <= request.max_mod_revision)
        && (request.min_create_revision <= 0 || kv.create_revision >= request.min_create_revision)
        && (request.max_create_revision <= 0 || kv.create_revision <= request.max_create_revision)
}

fn sort_kvs(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    // etcd sorts ascending when a target other than the key is given without an order.
    let descend = order == SortOrder::Descend;
    kvs.sort_by(|a, b| {
        let ordering = match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        if descend {
            ordering.reverse()
        } else {
            ordering
        }
    });
}

/// Whether `key` lies in `[start, end)` under etcd's range_end rules.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}
