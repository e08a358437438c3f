//! openraft's `RaftStateMachine` over the pure keyspace and the redb `StateStore`.
//!
//! Apply order per batch (R3): every entry is applied to the in-memory keyspace,
//! the batch's changes + applied log id + membership are handed to the durable
//! buffer (below), and only then are client responses and watch events released.
//!
//! An entry is applied as soon as openraft reports it committed. The committed
//! id in this member's log is fsynced only with the next append, so a crash
//! that loses unsynced data can restart a member behind what it showed; it
//! serves clients again only once it has caught up with the leader
//! (`Replica::catch_up`), so what clients see never goes back.
//!
//! The keyspace in memory serves every read; the state store exists for
//! restarts. So applied changes are buffered and written to it in one durable
//! commit every `DURABLE_EVERY`, `DURABLE_ENTRIES_MAX` entries or
//! `PENDING_BYTES_MAX` bytes, as etcd's backend commits its batch: the Raft log
//! holds every applied entry durably, and a restart re-applies the entries after
//! the last state commit up to the saved committed id. Before a snapshot the
//! state is flushed, because the log behind a snapshot may be purged.
//!
//! A due commit runs beside apply (a blocking-pool thread; a task on the
//! simulator's single thread), so no apply waits for the store's fsync. It
//! holds the store's lock: at most one runs, commits land in apply order, and
//! a snapshot build or install first waits for it. Apply waits for it only
//! when the buffer is over `PENDING_BYTES_MAX`. Its values leave memory when
//! it is durable; a failed commit stops the member (`failure`).
//!
//! Building a snapshot copies nothing: the durable state store *is* the
//! snapshot, so a build only fsyncs it and records its log id (openraft then
//! purges the log behind it). The bytes are encoded from one consistent read of
//! the store only when a follower needs them (`get_current_snapshot`), never
//! cached, and never under the lock that apply takes for its commit.

use std::io;
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use mainstay_mvcc::{ApplyContext, Command, CommandResponse, Event, KeySpace, MvccError, Revision};
use mainstay_storage::{SnapshotData, StateMeta, StateReader, StateReads, StateStore};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::{broadcast, watch};

use crate::codec::{
    decode_stored_membership, encode_stored_membership, log_id_from_record, log_id_to_record,
};
use crate::lease::{LeaseClock, LeaseTouch};
use crate::tokens::Tokens;
use crate::type_config::{ApplyResult, TypeConfig};

/// What an applied command did to lease countdowns.
fn lease_touches(
    command: &Command,
    result: &Result<CommandResponse, MvccError>,
    touches: &mut Vec<LeaseTouch>,
) {
    match (command.inner(), result) {
        (Command::LeaseGrant(_), Ok(CommandResponse::LeaseGrant(granted))) => {
            touches.push(LeaseTouch::Restart {
                id: granted.id,
                ttl: granted.ttl,
            });
        }
        (Command::LeaseRenew(renew), Ok(CommandResponse::LeaseRenew(renewed))) => {
            for (id, ttl) in renew.ids.iter().zip(&renewed.ttls) {
                if *ttl > 0 {
                    touches.push(LeaseTouch::Restart { id: *id, ttl: *ttl });
                }
            }
        }
        (Command::LeaseRevoke(revoke), Ok(_)) => touches.push(LeaseTouch::Forget(revoke.id)),
        _ => {}
    }
}

/// Events of one applied revision, published after they are durable.
#[derive(Clone, Debug)]
pub struct AppliedEvents {
    /// The revision all events share.
    pub revision: Revision,
    /// The events, in write order.
    pub events: Arc<Vec<Event>>,
}

/// The longest applied changes stay buffered (etcd's backend batch interval).
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// The most entries applied without a state commit (etcd's batch limit).
const DURABLE_ENTRIES_MAX: u64 = 10_000;
/// The most bytes of buffered changes (keys and values).
const PENDING_BYTES_MAX: usize = 64 << 20;

/// Bytes a buffered change holds.
fn change_bytes(change: &mainstay_mvcc::Change) -> usize {
    match change {
        mainstay_mvcc::Change::Append { key, record } => {
            let value = match record.live.as_ref().map(|live| &live.value) {
                Some(mainstay_mvcc::Value::Inline(bytes)) => bytes.len(),
                Some(mainstay_mvcc::Value::Pending(_) | mainstay_mvcc::Value::Stored) | None => 0,
            };
            64 + key.len() + value
        }
        mainstay_mvcc::Change::Remove { key, .. } => 32 + key.len(),
        mainstay_mvcc::Change::LeasePut(_) | mainstay_mvcc::Change::LeaseRemove(_) => 32,
        mainstay_mvcc::Change::Auth(_) => 1024,
        mainstay_mvcc::Change::Alarms(alarms) => 32 * (1 + alarms.len()),
    }
}

struct Durable {
    meta: StateMeta,
    /// Whether a snapshot was built or installed since the member started
    /// (before that openraft is told there is none, and builds one at start-up
    /// if the log was purged).
    snapshot_built: bool,
    /// Applied changes not yet handed to a commit, in apply order, and their
    /// bytes.
    pending: Vec<mainstay_mvcc::Change>,
    pending_bytes: usize,
    /// When a commit last started, and entries applied since.
    last_durable: tokio::time::Instant,
    entries_since_durable: u64,
}

impl Durable {
    /// Buffers one applied batch (`meta` is the state after it).
    fn buffer(&mut self, changes: Vec<mainstay_mvcc::Change>, meta: StateMeta, entries: u64) {
        self.pending_bytes += changes.iter().map(change_bytes).sum::<usize>();
        self.pending.extend(changes);
        self.meta = meta;
        self.entries_since_durable += entries;
    }

    /// Whether the buffer is due for a commit (see the module docs).
    fn due(&self) -> bool {
        self.entries_since_durable >= DURABLE_ENTRIES_MAX
            || self.pending_bytes >= PENDING_BYTES_MAX
            || self.last_durable.elapsed() >= DURABLE_EVERY
    }

    /// Whether apply must wait for the running commit before buffering more.
    fn full(&self) -> bool {
        self.pending_bytes >= PENDING_BYTES_MAX
    }

    /// Takes the buffer and the current metadata for a commit.
    fn take(&mut self) -> (Vec<mainstay_mvcc::Change>, StateMeta) {
        self.pending_bytes = 0;
        self.last_durable = tokio::time::Instant::now();
        self.entries_since_durable = 0;
        (std::mem::take(&mut self.pending), self.meta.clone())
    }
}

/// How many watchers on this member want prev_kv: while any does, events
/// carry previous values read back from the store (`ApplyContext`). A watcher
/// holds a `PrevValues` guard from before it reads the revision it starts
/// from, so every later revision it gets live carries them; earlier ones it
/// gets from history, which reads them itself.
#[derive(Debug, Default)]
pub(crate) struct PrevValuesWanted(std::sync::atomic::AtomicUsize);

impl PrevValuesWanted {
    fn wanted(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

/// Held by a watcher that wants prev_kv; see `PrevValuesWanted`.
#[derive(Debug)]
pub struct PrevValues(Arc<PrevValuesWanted>);

impl Drop for PrevValues {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Shared {
    key_space: RwLock<KeySpace>,
    prev_values: Arc<PrevValuesWanted>,
    applied: crate::applied::AppliedIndex,
    durable: Mutex<Durable>,
    /// The store's writer, held by a running commit (see the module docs).
    store: Arc<tokio::sync::Mutex<StateStore>>,
    /// Reads of the committed state, beside the writer.
    reads: StateReads,
    /// The error of a failed state commit: the member stops.
    failure: watch::Sender<Option<String>>,
    events: broadcast::Sender<AppliedEvents>,
    metrics: mainstay_metrics::SharedMetrics,
    /// Self-test only: flip the last byte of every put's value at apply.
    diverge_values: std::sync::atomic::AtomicBool,
    leases: LeaseClock,
    tokens: Tokens,
    /// Whether auth is on in the applied state, readable without the
    /// keyspace lock (requests ask it first; a check that matters reads the
    /// state under the lock).
    auth_enabled: std::sync::atomic::AtomicBool,
}

/// The state machine; clones share state (one is openraft's, others serve reads).
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

fn to_io(error: mainstay_storage::StorageError) -> io::Error {
    io::Error::other(error.to_string())
}

/// Capacity of the applied-events broadcast; a watcher that lags further
/// catches up from the MVCC history instead.
const EVENTS_BUFFERED_MAX: usize = 4096;

impl StateMachine {
    /// A guard under which applied events carry previous values.
    pub(crate) fn want_prev_values(&self) -> PrevValues {
        self.shared
            .prev_values
            .0
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        PrevValues(self.shared.prev_values.clone())
    }

    /// Wraps an opened state store and the keyspace it loaded.
    pub fn new(
        store: StateStore,
        key_space: KeySpace,
        meta: StateMeta,
        tokens: Tokens,
        metrics: mainstay_metrics::SharedMetrics,
    ) -> Result<Self, mainstay_storage::StorageError> {
        let (events, _) = broadcast::channel(EVENTS_BUFFERED_MAX);
        let leases = LeaseClock::default();
        leases.reconcile(&key_space);
        Ok(StateMachine {
            shared: Arc::new(Shared {
                auth_enabled: std::sync::atomic::AtomicBool::new(key_space.auth().enabled()),
                leases,
                tokens,
                applied: crate::applied::AppliedIndex::new(
                    meta.applied.as_ref().map_or(0, |id| id.index),
                ),
                key_space: RwLock::new(key_space),
                prev_values: Arc::default(),
                reads: store.reads()?,
                store: Arc::new(tokio::sync::Mutex::new(store)),
                failure: watch::Sender::new(None),
                durable: Mutex::new(Durable {
                    meta,
                    snapshot_built: false,
                    pending: Vec::new(),
                    pending_bytes: 0,
                    last_durable: tokio::time::Instant::now(),
                    entries_since_durable: 0,
                }),
                events,
                metrics,
                diverge_values: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// The same state machine, applying puts wrongly if `diverge` (a
    /// deliberate bug for the corruption checks' self-test).
    pub(crate) fn diverging(self, diverge: bool) -> Self {
        self.shared
            .diverge_values
            .store(diverge, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The error of the state commit that failed, once there is one.
    pub(crate) fn failure(&self) -> watch::Receiver<Option<String>> {
        self.shared.failure.subscribe()
    }

    /// Waits until no state commit is running (at shutdown: the store's file
    /// is closed only after it).
    pub(crate) async fn settle(&self) {
        drop(self.shared.store.lock().await);
    }

    /// Runs `read` against the applied keyspace.
    pub fn read<T>(&self, read: impl FnOnce(&KeySpace) -> T) -> T {
        let guard = self
            .shared
            .key_space
            .read()
            .unwrap_or_else(|p| p.into_inner());
        read(&guard)
    }

    /// Whether auth is on in the applied state (no lock taken).
    pub fn auth_enabled(&self) -> bool {
        self.shared
            .auth_enabled
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// The simple auth tokens this member knows.
    pub fn tokens(&self) -> &Tokens {
        &self.shared.tokens
    }

    /// This member's lease deadlines.
    pub fn lease_clock(&self) -> &LeaseClock {
        &self.shared.leases
    }

    /// This member's applied index, and the requests waiting for it.
    pub(crate) fn applied(&self) -> &crate::applied::AppliedIndex {
        &self.shared.applied
    }

    /// Subscribes to durable applied events.
    pub fn subscribe(&self) -> broadcast::Receiver<AppliedEvents> {
        self.shared.events.subscribe()
    }

    fn durable(&self) -> std::sync::MutexGuard<'_, Durable> {
        self.shared
            .durable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Size of the state database file.
    pub fn db_bytes(&self) -> u64 {
        self.shared.reads.file_bytes()
    }

    /// What a defragmentation would keep of the state file.
    pub fn db_in_use_bytes(&self) -> u64 {
        self.shared.reads.in_use_bytes()
    }

    /// Applied index, revision and keyspace hash, consistent with each other.
    pub fn applied_hash(&self) -> (u64, Revision, u32) {
        // The durable lock is taken first, as in `install_snapshot`.
        let durable = self.durable();
        let applied = durable.meta.applied.map_or(0, |id| id.index);
        let key_space = self
            .shared
            .key_space
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let hash = key_space.hash(0).unwrap_or(0);
        (applied, key_space.revision(), hash)
    }

    /// Starts a commit of the buffer if one is due and none is running;
    /// waits for the running one first if the buffer is full.
    async fn commit_if_due(&self) {
        loop {
            {
                let mut durable = self.durable();
                if !durable.due() {
                    return;
                }
                match self.shared.store.clone().try_lock_owned() {
                    Ok(store) => {
                        let (changes, meta) = durable.take();
                        self.start_commit(store, changes, meta);
                        return;
                    }
                    Err(_) if !durable.full() => return,
                    Err(_) => {}
                }
            }
            self.settle().await;
        }
    }

    /// Runs one commit beside apply (see the module docs).
    fn start_commit(
        &self,
        mut store: tokio::sync::OwnedMutexGuard<StateStore>,
        changes: Vec<mainstay_mvcc::Change>,
        meta: StateMeta,
    ) {
        let shared = self.shared.clone();
        let commit = move || {
            // A failure is published in `failure`: the member stops.
            let _ = shared.commit(&mut store, &changes, &meta);
            drop(store);
        };
        let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
        if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
            drop(tokio::task::spawn_blocking(commit));
        } else {
            drop(tokio::spawn(async move { commit() }));
        }
    }

    /// A consistent read of the state store that holds everything applied
    /// before the call (the buffered commits made durable first, as etcd
    /// commits its batch before a snapshot).
    pub(crate) async fn durable_reader(&self) -> Result<StateReader, io::Error> {
        self.make_durable().await?;
        self.shared.reads.reader().map_err(to_io)
    }

    /// Defragments the state store: copies the state into a compact file
    /// while commits go on (`StateStore::begin_defragment`), catches the copy
    /// up with what was committed meanwhile, then holds the store only to
    /// write the last few batches, sync and swap. Reads and writes on this
    /// member go on throughout (writes wait only for that last step). Returns
    /// the file's size before and after. A failure that left the old file in
    /// place is only reported; one after the swap began stops the member.
    pub(crate) async fn defragment(&self) -> Result<(u64, u64), io::Error> {
        /// Rounds of catching up before the store is held for the rest.
        const CATCH_UP_ROUNDS_MAX: usize = 8;
        /// Few enough batches to write while commits wait.
        const CATCH_UP_SMALL: usize = 4;
        let started = std::time::Instant::now();
        let begun = {
            let mut store = self.shared.store.lock().await;
            if let Some(reason) = self.shared.failure.borrow().clone() {
                return Err(io::Error::other(reason));
            }
            // What is applied goes into the copy, not into its journal: a
            // compaction just applied frees its pages before the copy.
            let (changes, meta) = self.durable().take();
            self.shared.commit(&mut store, &changes, &meta)?;
            store.begin_defragment()
        };
        let mut copy = begun.map_err(|error| self.defrag_failed(error))?;
        let mut round = 0;
        loop {
            let batches = if round == 0 {
                Vec::new()
            } else {
                self.shared.store.lock().await.take_journal()
            };
            let first = round == 0;
            let small = batches.len() <= CATCH_UP_SMALL;
            let (back, outcome) = tokio::task::spawn_blocking(move || {
                let outcome = if first {
                    copy.copy()
                } else {
                    copy.replay(&batches)
                };
                (copy, outcome)
            })
            .await
            .map_err(|e| io::Error::other(format!("defragment: {e}")))?;
            copy = back;
            if let Err(error) = outcome {
                self.shared.store.lock().await.abandon_defragment();
                return Err(self.defrag_failed(error));
            }
            round += 1;
            if (!first && small) || round > CATCH_UP_ROUNDS_MAX {
                break;
            }
        }
        let mut store = self.shared.store.clone().lock_owned().await;
        let outcome = tokio::task::spawn_blocking(move || store.finish_defragment(copy))
            .await
            .map_err(|e| io::Error::other(format!("defragment: {e}")))?;
        let sizes = outcome.map_err(|error| self.defrag_failed(error))?;
        self.shared
            .metrics
            .disk
            .backend_defrag
            .observe(started.elapsed().as_secs_f64());
        Ok(sizes)
    }

    /// Logs a failed defragmentation; a fatal one stops the member.
    fn defrag_failed(&self, error: mainstay_storage::DefragError) -> io::Error {
        match &error {
            mainstay_storage::DefragError::Abandoned(_) => {
                tracing::warn!(%error, "defragmentation failed; the old file serves on");
            }
            mainstay_storage::DefragError::Fatal(_) => {
                tracing::error!(%error, "defragmentation failed; stopping the member");
                self.shared.failure.send_replace(Some(error.to_string()));
            }
        }
        io::Error::other(error.to_string())
    }

    /// Commits the whole buffer now, after any running commit (before a
    /// snapshot: the log behind it may be purged); returns the metadata it
    /// made durable.
    async fn make_durable(&self) -> Result<StateMeta, io::Error> {
        let mut store = self.shared.store.lock().await;
        if let Some(reason) = self.shared.failure.borrow().clone() {
            return Err(io::Error::other(reason));
        }
        let (changes, meta) = self.durable().take();
        self.shared.commit(&mut store, &changes, &meta)?;
        Ok(meta)
    }
}

/// etcd's apply metrics for one command: its latency (slow over
/// `SLOW_APPLY`), and the puts, deletes and ranges it ran (a txn is counted
/// once it runs more than one operation, as etcd's mvcc does).
fn record_apply(
    metrics: &mainstay_metrics::Metrics,
    command: &mainstay_mvcc::Command,
    result: &Result<mainstay_mvcc::CommandResponse, MvccError>,
    took: std::time::Duration,
) {
    use mainstay_mvcc::{Command, CommandResponse};
    let op = match command.inner() {
        Command::Put(_) => "Put",
        Command::DeleteRange(_) => "DeleteRange",
        Command::Txn(_) => "Txn",
        Command::Compact(_) => "Compaction",
        Command::LeaseGrant(_) => "LeaseGrant",
        Command::LeaseRevoke(_) => "LeaseRevoke",
        Command::LeaseRenew(_) => "LeaseRenew",
        Command::Auth(_) | Command::Authorized { .. } => "Auth",
        Command::Alarm(_) => "Alarm",
    };
    let counts = match result {
        Ok(CommandResponse::Put(_)) => (0, 1, 0),
        Ok(CommandResponse::DeleteRange(_)) => (0, 0, 1),
        Ok(CommandResponse::Txn(txn)) => txn.op_counts(),
        _ => (0, 0, 0),
    };
    let lease = &metrics.lease;
    match (command.inner(), result) {
        (Command::LeaseGrant(_), Ok(CommandResponse::LeaseGrant(granted))) => {
            lease.granted.inc();
            lease.ttl.observe(granted.ttl as f64);
        }
        (Command::LeaseRevoke(_), Ok(CommandResponse::LeaseRevoke(_))) => {
            lease.revoked.inc();
        }
        (Command::LeaseRenew(_), Ok(CommandResponse::LeaseRenew(renewed))) => {
            let alive = renewed.ttls.iter().filter(|ttl| **ttl > 0).count();
            lease.renewed.inc_by(alive as u64);
        }
        _ => {}
    }
    let (ranges, puts, deletes) = counts;
    metrics.mvcc.range.inc_by(ranges);
    metrics.mvcc.put.inc_by(puts);
    metrics.mvcc.delete.inc_by(deletes);
    if ranges + puts + deletes > 1 {
        metrics.mvcc.txn.inc();
    }
    let success = if result.is_ok() { "true" } else { "false" };
    metrics
        .apply_duration
        .get_or_create(&[("version", "v3"), ("op", op), ("success", success)])
        .observe(took.as_secs_f64());
    if took > SLOW_APPLY {
        metrics.server.slow_apply.inc();
        metrics.own.last_slow_apply.record(took);
        tracing::warn!(
            took = ?took,
            expected_duration = ?SLOW_APPLY,
            op,
            "apply request took too long"
        );
    }
}

/// The self-test's wrong apply: a put's value with its last byte flipped.
fn diverge(command: &mut mainstay_mvcc::Command) {
    match command {
        mainstay_mvcc::Command::Put(put) => {
            let mut value = put.value.to_vec();
            if let Some(last) = value.last_mut() {
                *last ^= 0x01;
            }
            put.value = value.into();
        }
        mainstay_mvcc::Command::Authorized { command, .. } => diverge(command),
        _ => {}
    }
}

/// etcd's `--warning-apply-duration` default.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(100);

impl Shared {
    /// Commits `changes` and `meta` durably, then drops their values from
    /// memory; a failure is published in `failure` (the member stops).
    fn commit(
        &self,
        store: &mut StateStore,
        changes: &[mainstay_mvcc::Change],
        meta: &StateMeta,
    ) -> Result<(), io::Error> {
        let started = std::time::Instant::now();
        if let Err(error) = store.commit(changes, meta, true) {
            tracing::error!(%error, "state commit failed; stopping the member");
            self.failure.send_replace(Some(error.to_string()));
            return Err(to_io(error));
        }
        self.metrics
            .disk
            .backend_commit
            .observe(started.elapsed().as_secs_f64());
        self.evict(changes);
        Ok(())
    }

    /// Drops from memory the values the store now holds durably: `committed`
    /// is every change applied since the last commit, in apply order, so its
    /// last record's revision covers every value written up to it. Lock
    /// order: `durable`, then `key_space` (a caller may hold the first).
    fn evict(&self, committed: &[mainstay_mvcc::Change]) {
        let Some(through) = committed.iter().rev().find_map(|change| match change {
            mainstay_mvcc::Change::Append { record, .. } => Some(record.revision),
            _ => None,
        }) else {
            return;
        };
        let mut key_space = self.key_space.write().unwrap_or_else(|p| p.into_inner());
        key_space.release_values(through);
    }
}

impl StateMachine {
    /// Makes the state durable: it is now the snapshot (see the module docs).
    async fn build(&self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        // The log id is the one made durable: apply may go on meanwhile.
        let durable = self.make_durable().await?;
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: durable.applied.as_ref().map(log_id_from_record),
            last_membership: decode_stored_membership(&durable.membership)
                .map_err(io::Error::other)?,
        };
        self.durable().snapshot_built = true;
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: Vec::new(),
        })
    }

    /// Encodes the applied state from one consistent read, with its own log id.
    fn encode_snapshot(&self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        // A read transaction: apply goes on meanwhile (redb readers do not
        // block its writer); the durable lock is held only to open it.
        let read = self.shared.reads.reader().map_err(to_io)?;
        let data = read.snapshot().map_err(to_io)?;
        let bytes = data.encode().map_err(to_io)?;
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: data.meta.applied.as_ref().map(log_id_from_record),
            last_membership: decode_stored_membership(&data.meta.membership)
                .map_err(io::Error::other)?,
        };
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: bytes,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        self.build().await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let durable = self.durable();
        let membership =
            decode_stored_membership(&durable.meta.membership).map_err(io::Error::other)?;
        Ok((
            durable.meta.applied.as_ref().map(log_id_from_record),
            membership,
        ))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let Some(last) = batch.last().map(|(entry, _)| entry.log_id.index) else {
            return Ok(());
        };
        if let Some(reason) = self.shared.failure.borrow().clone() {
            return Err(io::Error::other(reason));
        }
        // Decoded before the keyspace lock is taken. Undecodable bytes in a
        // committed entry are this member's corruption (peers' entries are
        // checked on arrival): stop, apply nothing of the batch.
        let mut commands = Vec::with_capacity(batch.len());
        for (entry, _) in &batch {
            if let EntryPayload::Normal(proposal) = &entry.payload {
                let mut command = proposal.decode().map_err(|reason| {
                    tracing::error!(index = entry.log_id.index, %reason, "undecodable committed entry; stopping the member");
                    io::Error::other(format!("log entry {}: {reason}", entry.log_id.index))
                })?;
                if self
                    .shared
                    .diverge_values
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    diverge(&mut command);
                }
                commands.push(command);
            }
        }
        let mut commands = commands.into_iter();
        let mut meta = self.durable().meta.clone();
        let mut changes = Vec::new();
        let mut published = Vec::new();
        let mut touches = Vec::new();
        let entries = batch.len() as u64;
        let mut replies = Vec::with_capacity(batch.len());
        {
            let mut key_space = self
                .shared
                .key_space
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for (entry, responder) in batch {
                if let Some(applied) = meta.applied {
                    assert!(entry.log_id.index > applied.index, "apply went backwards");
                }
                let outcome = match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(_) => {
                        let command = commands
                            .next()
                            .expect("one decoded command per normal entry");
                        // Read under the keyspace lock: a watcher that takes a
                        // guard before reading the revision gets every later
                        // revision's previous values (see `PrevValues`).
                        let context = ApplyContext {
                            log_index: entry.log_id.index,
                            prev_values: self.shared.prev_values.wanted(),
                        };
                        let started = std::time::Instant::now();
                        let applied = key_space.apply(&command, &context);
                        record_apply(
                            &self.shared.metrics,
                            &command,
                            &applied.result,
                            started.elapsed(),
                        );
                        if let Err(MvccError::ValueUnreadable(reason)) = &applied.result {
                            // Not an answer: this member's disk failed it. Stop
                            // before anything of this batch is released.
                            tracing::error!(%reason, "state store unreadable; stopping the member");
                            return Err(io::Error::other(reason.clone()));
                        }
                        lease_touches(&command, &applied.result, &mut touches);
                        self.shared
                            .tokens
                            .applied(&command, &applied.result, entry.log_id.index);
                        changes.extend(applied.changes);
                        if !applied.events.is_empty() {
                            published.push(AppliedEvents {
                                revision: key_space.revision(),
                                events: Arc::new(applied.events),
                            });
                        }
                        Some(applied.result)
                    }
                    EntryPayload::Membership(membership) => {
                        let stored =
                            StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), membership);
                        meta.membership = encode_stored_membership(&stored);
                        None
                    }
                };
                meta.applied = Some(log_id_to_record(&entry.log_id));
                replies.push((responder, ApplyResult { outcome }));
            }
            meta.revision = key_space.revision();
            self.shared.auth_enabled.store(
                key_space.auth().enabled(),
                std::sync::atomic::Ordering::Release,
            );
            meta.compacted = key_space.compacted_revision();
        }
        self.durable().buffer(changes, meta, entries);
        self.commit_if_due().await;
        // Countdowns restart when the grant or renew is durable and applied.
        self.shared.leases.touch(&touches);
        for events in published {
            // No receiver is fine: nobody watches.
            let _ = self.shared.events.send(events);
        }
        self.shared.applied.advance(last);
        for (responder, result) in replies {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let data = SnapshotData::decode(&snapshot).map_err(to_io)?;
        let claimed = meta.last_log_id.as_ref().map(log_id_to_record);
        if data.meta.applied != claimed {
            return Err(io::Error::other(
                "snapshot data does not match its metadata",
            ));
        }
        // After any running commit: it must not land on the installed state.
        let mut store = self.shared.store.lock().await;
        let in_progress = &self.shared.metrics.server.snapshot_apply_in_progress;
        in_progress.set(1);
        let installed = store.install(&data).map_err(to_io);
        in_progress.set(0);
        let key_space = installed?;
        let mut durable = self.durable();
        self.shared.leases.reconcile(&key_space);
        self.shared.auth_enabled.store(
            key_space.auth().enabled(),
            std::sync::atomic::Ordering::Release,
        );
        *self
            .shared
            .key_space
            .write()
            .unwrap_or_else(|p| p.into_inner()) = key_space;
        durable.meta = data.meta;
        self.shared
            .applied
            .advance(durable.meta.applied.as_ref().map_or(0, |id| id.index));
        durable.snapshot_built = true;
        durable.pending.clear();
        durable.pending_bytes = 0;
        durable.last_durable = tokio::time::Instant::now();
        durable.entries_since_durable = 0;
        tracing::info!(snapshot = %meta, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        if !self.durable().snapshot_built {
            return Ok(None);
        }
        Ok(Some(self.encode_snapshot()?))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mainstay_mvcc::PutRequest;
    use mainstay_storage::{Disk, MemDisk};
    use openraft::alias::EntryOf;
    use openraft::storage::RaftStateMachine;
    use openraft::{Entry, EntryPayload, RaftSnapshotBuilder};

    use super::*;
    use crate::codec::log_id_from_record;
    use crate::proposal::Proposal;

    fn open(disk: &MemDisk, dir: &Path) -> StateMachine {
        let disk: Arc<dyn Disk> = Arc::new(disk.clone());
        let (store, key_space, meta) = StateStore::open(&disk, dir, 1 << 20).expect("open");
        StateMachine::new(
            store,
            key_space,
            meta,
            Tokens::new(std::time::Duration::from_secs(300)),
            mainstay_metrics::Metrics::new("test", 1),
        )
        .expect("state machine")
    }

    fn put(index: u64) -> EntryOf<TypeConfig> {
        let command = Command::Put(PutRequest {
            key: format!("k{index}").into_bytes(),
            value: vec![7; 16].into(),
            ..Default::default()
        });
        Entry {
            log_id: log_id_from_record(&mainstay_storage::LogIdRecord {
                term: 1,
                node_id: 1,
                index,
            }),
            payload: EntryPayload::Normal(Proposal::encode(&command)),
        }
    }

    async fn apply(state: &mut StateMachine, indexes: std::ops::RangeInclusive<u64>) {
        let entries: Vec<Result<_, io::Error>> = indexes.map(|i| Ok((put(i), None))).collect();
        state
            .apply(futures::stream::iter(entries))
            .await
            .expect("apply");
    }

    /// The index of the last entry the store holds durably.
    fn stored_applied(state: &StateMachine) -> Option<u64> {
        let read = state.shared.reads.reader().expect("reader");
        let (_, meta) = read.load(false).expect("load");
        meta.applied.map(|id| id.index)
    }

    #[tokio::test(start_paused = true)]
    async fn apply_goes_on_while_a_commit_runs_and_commits_land_in_order() {
        let disk = MemDisk::new();
        let dir = Path::new("/m0");
        let mut state = open(&disk, dir);
        apply(&mut state, 1..=2).await;
        assert_eq!(stored_applied(&state), None, "not due yet: buffered");

        // A commit is running (it holds the store): a due apply still goes on.
        let running = state.shared.store.clone().lock_owned().await;
        tokio::time::advance(DURABLE_EVERY * 2).await;
        apply(&mut state, 3..=4).await;
        assert_eq!(state.read(|keys| keys.revision()), 5);
        assert_eq!(stored_applied(&state), None);
        drop(running);

        // The next due apply commits everything buffered, in order.
        tokio::time::advance(DURABLE_EVERY * 2).await;
        apply(&mut state, 5..=5).await;
        state.settle().await;
        assert_eq!(stored_applied(&state), Some(5));
        let read = state.shared.reads.reader().expect("reader");
        let (keys, meta) = read.load(true).expect("load");
        assert_eq!(meta.revision, 6);
        assert_eq!(keys.revision(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_build_waits_for_the_running_commit_and_is_durable() {
        let disk = MemDisk::new();
        let dir = Path::new("/m0");
        let mut state = open(&disk, dir);
        tokio::time::advance(DURABLE_EVERY * 2).await;
        apply(&mut state, 1..=3).await;
        apply(&mut state, 4..=6).await;
        let snapshot = state.build_snapshot().await.expect("build");
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(6));
        assert_eq!(stored_applied(&state), Some(6));

        // What a restart finds: the state as of the snapshot, no log needed.
        disk.power_off(dir);
        drop(state);
        let reopened = open(&disk, dir);
        assert_eq!(reopened.read(|keys| keys.revision()), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_state_commit_stops_the_member() {
        let disk = MemDisk::new();
        let dir = Path::new("/m0");
        let mut state = open(&disk, dir);
        let mut failure = state.failure();
        disk.fail_syncs_under(dir);
        tokio::time::advance(DURABLE_EVERY * 2).await;
        apply(&mut state, 1..=1).await;
        let failed = failure
            .wait_for(Option::is_some)
            .await
            .expect("failure reported")
            .clone();
        assert!(failed.is_some());
        let entries: Vec<Result<_, io::Error>> = vec![Ok((put(2), None))];
        let next = state.apply(futures::stream::iter(entries)).await;
        assert!(
            next.is_err(),
            "apply after a failed commit must stop the member"
        );
        assert!(state.build_snapshot().await.is_err());
    }
}
