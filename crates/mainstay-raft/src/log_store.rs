//! openraft's `RaftLogStorage` over our `mainstay_storage::LogStore`.
//!
//! Every call stages its change in memory (so appended entries are readable,
//! and replicated to followers, at once) and queues the bytes to one writer
//! writer. The writer takes every job queued so far, writes them in order and
//! fsyncs once (group commit); then it fires the append callbacks ("on disk")
//! and answers votes. Truncations and purges need no fsync of their own (see
//! `LogStore`): they ride on the next one, and so does the committed id, which
//! is not even queued on its own (a wake-up of the writer per commit update):
//! its record joins the next queued job, ahead of it, and is written and
//! fsynced with it. It can be recovered from the state machine's applied id
//! or the leader, as etcd leaves a commit-only HardState unsynced. A member that restarts may therefore apply
//! less than it showed before a crash that lost unsynced data; it serves
//! clients again only after catching up with the leader (`Replica::catch_up`).
//! A failed write is published in `failure` and stops the member. openraft
//! calls the storage one call at a time (`&mut self`), so jobs are queued in
//! the order they were staged.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mainstay_storage::{LogJob, LogStore, LogWriter};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::{
    entry_from_stored, entry_to_stored, log_id_from_record, log_id_to_record, vote_from_record,
    vote_to_record,
};
use crate::type_config::TypeConfig;

/// Jobs queued to the writer before openraft waits: enough for every entry
/// openraft keeps in flight, small enough to bound memory.
const JOBS_QUEUED_MAX: usize = 1024;
/// Jobs written together at most (one write, one fsync).
const JOBS_PER_WRITE_MAX: usize = 1024;

/// Who is told when a job is on disk.
enum Waiter {
    /// An append; the index of its last entry.
    Append(IOFlushed<TypeConfig>, u64),
    Vote(oneshot::Sender<Result<(), io::Error>>),
    Nobody,
}

struct Queued {
    job: LogJob,
    /// Whether the job needs an fsync before its waiter is told.
    sync: bool,
    waiter: Waiter,
}

/// Shared handle to the log store; clones are readers.
#[derive(Clone)]
pub struct RaftLog {
    store: Arc<Mutex<LogStore>>,
    jobs: mpsc::Sender<Queued>,
    /// Staged committed-id records that ride on the next queued job.
    unsent: Arc<Mutex<Option<LogJob>>>,
    failure: watch::Receiver<Option<String>>,
    /// The highest index acknowledged on disk (append callbacks fired Ok),
    /// lowered by truncations: what a crash must not take back.
    acknowledged: Arc<AtomicU64>,
    /// The log's last index when it was opened (0 if empty).
    opened_last: u64,
    /// When recent entries were appended (a leader's follower lag in time).
    append_times: Arc<crate::append_times::AppendTimes>,
}

impl RaftLog {
    /// Wraps an opened log store and starts its writer task. `skip_fsync` is a
    /// deliberate bug for the simulator's self-test: entries are reported on
    /// disk without an fsync.
    pub fn new(
        store: LogStore,
        skip_fsync: bool,
        metrics: mainstay_metrics::SharedMetrics,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(JOBS_QUEUED_MAX);
        let (failed, failure) = watch::channel(None);
        let opened_last = store.last_index().unwrap_or(0);
        let acknowledged = Arc::new(AtomicU64::new(opened_last));
        start_writer(
            store.writer(),
            queue,
            failed,
            acknowledged.clone(),
            skip_fsync,
            metrics,
        );
        RaftLog {
            store: Arc::new(Mutex::new(store)),
            jobs,
            unsent: Arc::default(),
            failure,
            acknowledged,
            opened_last,
            append_times: Arc::default(),
        }
    }

    /// When recent entries were appended.
    pub(crate) fn append_times(&self) -> Arc<crate::append_times::AppendTimes> {
        self.append_times.clone()
    }

    /// The highest log index this member acknowledged as on disk (and did
    /// not truncate since): the simulator checks a restart keeps it.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }

    /// The log's last index when this process opened it.
    pub fn opened_last(&self) -> u64 {
        self.opened_last
    }

    /// The write or fsync error that stopped the writer, once there is one.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.failure.clone()
    }

    async fn queue(&self, job: LogJob, sync: bool, waiter: Waiter) -> Result<(), io::Error> {
        let held = self.unsent.lock().unwrap_or_else(|p| p.into_inner()).take();
        let job = match held {
            Some(held) => held.then(job),
            None => job,
        };
        self.jobs
            .send(Queued { job, sync, waiter })
            .await
            .map_err(|_| io::Error::other("raft log writer stopped"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogStore> {
        // A poisoned mutex means a panic mid-write: the member is already going down.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Size of the log file.
    pub fn file_bytes(&self) -> u64 {
        self.lock().file_bytes()
    }
}

fn to_io(error: mainstay_storage::StorageError) -> io::Error {
    io::Error::other(error.to_string())
}

/// Starts the writer: its own thread on a multi-threaded runtime (fsyncs never
/// hold up a runtime worker), a task on the simulator's single thread (so a
/// seed replays exactly).
fn start_writer(
    writer: Arc<Mutex<LogWriter>>,
    mut queue: mpsc::Receiver<Queued>,
    failed: watch::Sender<Option<String>>,
    acknowledged: Arc<AtomicU64>,
    skip_fsync: bool,
    metrics: mainstay_metrics::SharedMetrics,
) {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
        let spawned = std::thread::Builder::new()
            .name("raft-log-writer".to_string())
            .spawn(move || {
                let mut batch = Vec::new();
                while let Some(first) = queue.blocking_recv() {
                    batch.push(first);
                    while batch.len() < JOBS_PER_WRITE_MAX {
                        match queue.try_recv() {
                            Ok(queued) => batch.push(queued),
                            Err(_) => break,
                        }
                    }
                    if !write_batch(
                        &writer,
                        &mut batch,
                        &failed,
                        &acknowledged,
                        skip_fsync,
                        &metrics,
                    ) {
                        break;
                    }
                }
            });
        if let Err(error) = spawned {
            // Without a writer every append fails: the member stops.
            tracing::error!(%error, "cannot start the raft log writer thread");
        }
    } else {
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while queue.recv_many(&mut batch, JOBS_PER_WRITE_MAX).await > 0 {
                if !write_batch(
                    &writer,
                    &mut batch,
                    &failed,
                    &acknowledged,
                    skip_fsync,
                    &metrics,
                ) {
                    break;
                }
            }
        });
    }
}

/// etcd's `warnSyncDuration`: an fsync slower than this is logged.
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_secs(1);

/// Group commit of queued jobs, in queue order: one write, one fsync, then
/// every waiter is told. After a failure every waiter gets the error (the
/// store is poisoned), the error is published in `failed` (so the member stops
/// even if no waiter of this batch could tell openraft: a batch holding only a
/// committed id), and false is returned: the writer stops.
fn write_batch(
    writer: &Mutex<LogWriter>,
    batch: &mut Vec<Queued>,
    failed: &watch::Sender<Option<String>>,
    acknowledged: &AtomicU64,
    skip_fsync: bool,
    metrics: &mainstay_metrics::Metrics,
) -> bool {
    let needs_sync = batch.iter().any(|queued| queued.sync);
    let sync = needs_sync && !skip_fsync;
    let mut jobs = Vec::with_capacity(batch.len());
    let mut waiters = Vec::with_capacity(batch.len());
    for queued in batch.drain(..) {
        jobs.push(queued.job);
        waiters.push(queued.waiter);
    }
    let started = std::time::Instant::now();
    let result = writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .write(&jobs, sync);
    if sync && result.is_ok() {
        // The write and its fsync together: the write is a copy to the page
        // cache, the fsync is what waits for the disk.
        let took = started.elapsed();
        metrics.disk.wal_fsync.observe(took.as_secs_f64());
        if took > SLOW_FSYNC {
            metrics.own.slow_fsyncs.inc();
            metrics.own.last_slow_fsync.record(took);
            tracing::warn!(took = ?took, expected_duration = ?SLOW_FSYNC, "slow fdatasync");
        }
    }
    if let Err(error) = &result {
        tracing::error!(%error, "raft log write failed; stopping the member");
        failed.send_replace(Some(error.to_string()));
    }
    for waiter in waiters {
        let outcome = match &result {
            Ok(()) => Ok(()),
            Err(error) => Err(io::Error::other(error.to_string())),
        };
        match waiter {
            Waiter::Append(callback, last) => {
                if outcome.is_ok() {
                    acknowledged.fetch_max(last, Ordering::AcqRel);
                }
                callback.io_completed(outcome)
            }
            Waiter::Vote(answer) => {
                // The caller may be gone (openraft stopping): nothing to tell.
                let _ = answer.send(outcome);
            }
            Waiter::Nobody => {}
        }
    }
    result.is_ok()
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let stored = self.lock().entries(start, end);
        stored
            .iter()
            .map(|entry| entry_from_stored(entry).map_err(io::Error::other))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.lock().vote().as_ref().map(vote_from_record))
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let store = self.lock();
        Ok(LogState {
            last_purged_log_id: store.purged().as_ref().map(log_id_from_record),
            last_log_id: store.last_log_id().as_ref().map(log_id_from_record),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let job = self
            .lock()
            .stage_vote(vote_to_record(vote))
            .map_err(to_io)?;
        let (answer, written) = oneshot::channel();
        self.queue(job, true, Waiter::Vote(answer)).await?;
        written
            .await
            .map_err(|_| io::Error::other("raft log writer stopped"))?
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let job = self
            .lock()
            .stage_committed(committed.as_ref().map(log_id_to_record))
            .map_err(to_io)?;
        match (job, committed) {
            // Not queued on its own (a wake-up of the writer thread per commit
            // update): it joins the next queued job, in staging order, and the
            // next fsync makes it durable as before. A lost one is recovered
            // from the state machine's applied id or the leader.
            (Some(job), Some(_)) => {
                let mut unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
                let job = match unsent.take() {
                    Some(held) => held.then(job),
                    None => job,
                };
                *unsent = Some(job);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.lock().committed().as_ref().map(log_id_from_record))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let stored: Vec<_> = entries
            .into_iter()
            .map(|entry| entry_to_stored(&entry))
            .collect();
        let last = stored.last().map_or(0, |entry| entry.log_id.index);
        if last > 0 {
            self.append_times.appended(last);
        }
        let staged = self.lock().stage_append(stored).map_err(to_io);
        match staged {
            Ok(job) => self.queue(job, true, Waiter::Append(callback, last)).await,
            Err(error) => {
                tracing::error!(%error, "raft log append failed; stopping the member");
                callback.io_completed(Err(io::Error::other(error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        // Entries from `from` on are no longer promised to survive.
        self.acknowledged
            .fetch_min(from.saturating_sub(1), Ordering::AcqRel);
        let job = self.lock().stage_truncate(from).map_err(to_io)?;
        self.queue(job, false, Waiter::Nobody).await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let job = self
            .lock()
            .stage_purge(log_id_to_record(&log_id))
            .map_err(to_io)?;
        self.queue(job, false, Waiter::Nobody).await
    }
}
