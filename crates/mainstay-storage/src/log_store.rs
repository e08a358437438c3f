//! `LogStore`: the Raft log, the vote and the committed log id in append-only,
//! CRC-checked segment files (`raft-<sequence number, 16 hex digits>.log`).
//!
//! Two ways to write. The `stage_*` calls change the in-memory log at once and
//! return a `LogJob`: the bytes that make the change on disk. A `LogWriter`
//! (shared, one per store) writes jobs strictly in the order they were staged,
//! many at a time with one fsync (group commit); the Raft adapter runs it on its
//! own task, so appends are readable (and replicated) while they are written.
//! The plain calls (`append`, `save_vote`, ...) stage and write one job with an
//! fsync before returning.
//!
//! Durability promises (the protocol openraft relies on; see ARCHITECTURE.md):
//! - a job is durable once a `LogWriter::write` with `sync` that includes it (or
//!   any later job) returns Ok; the segments are always a prefix of the staged
//!   jobs, so a crash loses a suffix of them, never a middle one;
//! - records are replayed in order, so writes complete in order with no holes;
//! - at start-up an *incomplete* last record of the newest segment (a torn
//!   write: it runs past the end of the file, or into the zeros after the last
//!   written byte) is cut off with a warning. Any checksum failure in a complete
//!   record, even the last one, is corruption and the store refuses to open: a
//!   flipped bit is never mistaken for a torn write, so an acknowledged entry is
//!   never dropped silently (etcd's WAL repairs only an unexpected EOF for the
//!   same reason);
//! - an fsync error is returned once and the store is poisoned: the caller stops
//!   the member, it never retries (an fsync failure may have dropped dirty pages).
//!
//! Segments (etcd's WAL files): records go to the newest segment; once it holds
//! `segment_bytes` the next job starts a new one. A roll-over cuts the full
//! segment to its last record and fsyncs it, then creates the next file and
//! fsyncs the directory, before any byte goes into the new segment: a crash
//! never leaves records in a later segment after a hole in an earlier one. A
//! segment opens with its header: a `KIND_SEGMENT` record (format, sequence
//! number), then the vote, committed id and purge point as they stand, so it
//! replays without the segments before it. A purge queues the removal of the
//! oldest segments (never the newest) whose entries it covers; the writer
//! removes them, oldest first, only after an fsync that made the purge durable,
//! then fsyncs the directory. So nothing is ever rewritten: disk use is what
//! the log retains plus at most one segment, and a purge costs an unlink.
//!
//! At start-up the segments replay in order; their numbers must be consecutive
//! (a missing one is corruption), and only the newest may end in a torn record.
//! A newest segment without a complete header (a crash in a roll-over, before
//! anything in it was acknowledged) is removed and started again, unless no
//! segment is left before it but the first: then the log lost what it held. A log of
//! format 1 (one `raft.log`, no headers) replays as segment 0 and stays until
//! purges cover it; new records go to segment 1. A segment of a newer format is
//! refused.
//!
//! Hand-written rather than a crate: the evaluated WAL crates own threads and call
//! std::fs directly, which the simulator must replace (stack.md §4). All I/O goes
//! through `Disk`.
//!
//! Record frame: `MAGIC (1) | kind (1) | length u32 LE (4) | body crc32 (4) |
//! header crc32 (4) | body | TRAILER (1)`. The header CRC covers the ten bytes
//! before it, so a damaged length is told apart from a body cut short by a crash.
//!
//! Preallocation: the writer keeps zeros written ahead of the end
//! (`PREALLOCATE_AHEAD`), so an append overwrites allocated blocks and its fsync
//! need not commit a new file size (etcd preallocates its WAL segments for the
//! same reason; measured here: fdatasync of a 6 KB append 0.18 → 0.12 ms). Zeros
//! after the last record are free space. A torn write in that space leaves a
//! record whose end is zeros; the trailer byte, never zero, tells it from a
//! complete record with a flipped bit, which keeps its trailer. Records written
//! before the trailer existed (`MAGIC_UNTRAILED`, no trailer) are still read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::disk::{DirLock, Disk, DiskFile, read_all};
use crate::error::StorageError;

/// First byte of a record with a trailer (every record written now).
const MAGIC: u8 = 0xA8;
/// First byte of a record without a trailer (written by older versions; read only).
const MAGIC_UNTRAILED: u8 = 0xA7;
/// Last byte of a record: never zero, and no single flipped bit makes it zero.
const TRAILER: u8 = 0xE5;
const HEADER_BYTES: usize = 14;
/// Zeros kept written ahead of the end of the log; topped up once less than
/// half is left, so each top-up writes about half of it.
const PREALLOCATE_AHEAD: u64 = 128 << 10;
/// The largest record we write or accept (a batch of entries is split below it).
pub const RECORD_BYTES_MAX: usize = 64 << 20;
/// An append job at least this long is written as it is, not copied into
/// the batch's buffer first (a few small jobs are cheaper copied than written
/// one system call each).
const DIRECT_WRITE_BYTES: usize = 16 << 10;
/// The format of the segments, named in each one's header. Format 1 was one
/// `raft.log` without headers (still read, as segment 0).
pub const LOG_FORMAT: u32 = 2;
/// Where a format-1 log lives.
const LEGACY_FILE: &str = "raft.log";
/// A segment this long is full (etcd's WAL segments are 64 MB too).
pub const SEGMENT_BYTES: u64 = 64 << 20;

const KIND_ENTRY: u8 = 1;
const KIND_TRUNCATE: u8 = 2;
const KIND_PURGE: u8 = 3;
const KIND_VOTE: u8 = 4;
const KIND_COMMITTED: u8 = 5;
const KIND_SEGMENT: u8 = 6;

/// A log id in our own persisted form: the leader's term and node id, and the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogIdRecord {
    /// Term of the leader that proposed the entry.
    pub term: u64,
    /// Node id of that leader.
    pub node_id: u64,
    /// Position in the log.
    pub index: u64,
}

/// A vote in our own persisted form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRecord {
    /// Term voted in.
    pub term: u64,
    /// Candidate voted for (or the leader), if any.
    pub node_id: Option<u64>,
    /// Whether a quorum granted it.
    pub committed: bool,
}

/// One log entry: its id and an opaque payload encoded by the Raft adapter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEntry {
    /// The entry's id.
    pub log_id: LogIdRecord,
    /// Encoded payload (blank, command or membership); storage does not look
    /// inside. Shared, not copied, between the log, replication and apply;
    /// encoded like a `Vec<u8>` (length, then the bytes).
    pub payload: Bytes,
}

/// What `LogStore::open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes cut off a torn tail (0 if the log ended cleanly).
    pub torn_bytes: u64,
    /// Records replayed.
    pub records: u64,
    /// Segment files replayed.
    pub segments: u64,
}

/// The first record of a segment.
#[derive(Serialize, Deserialize)]
struct SegmentHead {
    format: u32,
    seq: u64,
}

/// The name of segment `seq` (0: the format-1 file).
pub fn segment_file_name(seq: u64) -> String {
    if seq == 0 {
        LEGACY_FILE.to_string()
    } else {
        format!("raft-{seq:016x}.log")
    }
}

/// The segment a file name names, if it names one (0: the format-1 file).
pub fn segment_seq(name: &str) -> Option<u64> {
    if name == LEGACY_FILE {
        return Some(0);
    }
    let hex = name.strip_prefix("raft-")?.strip_suffix(".log")?;
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if hex.len() != 16 || !hex.bytes().all(lower_hex) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().filter(|&seq| seq > 0)
}

/// One segment as it is once every staged job is written.
#[derive(Clone, Copy, Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    /// The highest entry index written into it (truncated since or not).
    max_index: Option<u64>,
}

/// The raft log store. See the module docs.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    _lock: DirLock,
    entries: BTreeMap<u64, StoredEntry>,
    vote: Option<VoteRecord>,
    committed: Option<LogIdRecord>,
    purged: Option<LogIdRecord>,
    /// Oldest first; the last takes new records. Never empty after `open`.
    segments: Vec<Segment>,
    segment_bytes: u64,
    writer: Arc<Mutex<LogWriter>>,
    /// Set after a failed write or fsync: every later call fails.
    poisoned: Arc<AtomicBool>,
}

/// Bytes that make staged changes durable, in staging order.
#[derive(Debug)]
#[must_use = "a staged change reaches the disk only through LogWriter::write"]
pub struct LogJob {
    ops: Vec<JobOp>,
}

impl LogJob {
    /// This job, then `later` (staged after it).
    pub fn then(mut self, later: LogJob) -> LogJob {
        self.ops.extend(later.ops);
        self
    }
}

#[derive(Debug)]
enum JobOp {
    /// Framed records to append to segment `seq` at `offset` (its end when staged).
    Append {
        seq: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Close the current segment and start segment `seq`.
    Roll { seq: u64 },
    /// Remove these segments once an fsync made the purge staged before it durable.
    Remove { seqs: Vec<u64> },
}

/// Writes staged jobs to the segments, in order. See the module docs.
#[derive(Debug)]
pub struct LogWriter {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// The segment being written (none only while the store opens).
    file: Option<Arc<dyn DiskFile>>,
    seq: u64,
    /// Length of the segment as written (records only).
    end: u64,
    /// Length of its file: zeros from `end` up to here (see the module docs).
    allocated: u64,
    /// Segments to remove after the next fsync, oldest first.
    removable: Vec<u64>,
    poisoned: Arc<AtomicBool>,
}

impl LogWriter {
    /// Writes `jobs` (staged in this order, directly after every job written
    /// before) and, if `sync`, fsyncs: then they and every earlier job are
    /// durable. Consecutive appends go down in one write. On any failure the store
    /// is poisoned and every later call fails: the caller stops the member.
    pub fn write(&mut self, jobs: &[LogJob], sync: bool) -> Result<(), StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        let result = self.write_inner(jobs, sync);
        if result.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        result
    }

    fn write_inner(&mut self, jobs: &[LogJob], sync: bool) -> Result<(), StorageError> {
        let mut pending: Vec<u8> = Vec::new();
        for op in jobs.iter().flat_map(|job| &job.ops) {
            match op {
                JobOp::Append { seq, offset, bytes } => {
                    assert_eq!(
                        (*seq, *offset),
                        (self.seq, self.end + pending.len() as u64),
                        "raft log jobs written out of order"
                    );
                    if bytes.len() >= DIRECT_WRITE_BYTES {
                        self.flush_pending(&mut pending)?;
                        self.append_bytes(bytes)?;
                    } else {
                        pending.extend_from_slice(bytes);
                    }
                }
                JobOp::Roll { seq } => {
                    self.flush_pending(&mut pending)?;
                    self.roll(*seq)?;
                }
                JobOp::Remove { seqs } => self.removable.extend_from_slice(seqs),
            }
        }
        self.flush_pending(&mut pending)?;
        if sync {
            self.file()
                .sync()
                .map_err(|e| StorageError::io("fsync the raft log", e))?;
            self.remove_segments()?;
        }
        Ok(())
    }

    fn file(&self) -> &Arc<dyn DiskFile> {
        self.file
            .as_ref()
            .expect("the raft log writer has a segment once the store is open")
    }

    fn flush_pending(&mut self, pending: &mut Vec<u8>) -> Result<(), StorageError> {
        if pending.is_empty() {
            return Ok(());
        }
        self.append_bytes(pending)?;
        pending.clear();
        Ok(())
    }

    /// Writes `bytes` at the end of the segment (not synced), then tops up the
    /// preallocated zeros after it.
    fn append_bytes(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let file = self.file().clone();
        file.write_at(self.end, bytes)
            .map_err(|e| StorageError::io("append to the raft log", e))?;
        self.end += bytes.len() as u64;
        let (from, to) = top_up(self.end, self.allocated);
        if to > from {
            let zeros = vec![0; (to - from) as usize];
            file.write_at(from, &zeros)
                .map_err(|e| StorageError::io("preallocate the raft log", e))?;
        }
        self.allocated = self.allocated.max(to);
        Ok(())
    }

    /// Ends the current segment at its last record and makes it durable, then
    /// creates segment `seq` and makes its name durable: nothing reaches the
    /// new segment before the old one is whole on disk.
    fn roll(&mut self, seq: u64) -> Result<(), StorageError> {
        if let Some(file) = &self.file {
            file.set_len(self.end)
                .and_then(|()| file.sync())
                .map_err(|e| StorageError::io("close a raft log segment", e))?;
        }
        let path = self.dir.join(segment_file_name(seq));
        let file = (|| -> std::io::Result<Arc<dyn DiskFile>> {
            let file = self.disk.open(&path)?;
            file.set_len(0)?;
            self.disk.sync_dir(&self.dir)?;
            Ok(file)
        })()
        .map_err(|e| StorageError::io("start a raft log segment", e))?;
        self.file = Some(file);
        self.seq = seq;
        self.end = 0;
        self.allocated = 0;
        Ok(())
    }

    /// Removes the segments whose purge is now durable, oldest first (a crash
    /// midway leaves consecutive segments), then makes that durable.
    fn remove_segments(&mut self) -> Result<(), StorageError> {
        if self.removable.is_empty() {
            return Ok(());
        }
        for seq in std::mem::take(&mut self.removable) {
            match self
                .disk
                .remove_file(&self.dir.join(segment_file_name(seq)))
            {
                // Gone already (by hand): what the removal was for.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                result => {
                    result.map_err(|e| StorageError::io("remove a purged raft log segment", e))?
                }
            }
        }
        self.disk
            .sync_dir(&self.dir)
            .map_err(|e| StorageError::io("fsync the data directory", e))
    }
}

/// What replaying one segment found.
enum Replayed {
    /// Records, ending at `end`; the file is `allocated` long.
    Records {
        file: Arc<dyn DiskFile>,
        end: u64,
        allocated: u64,
    },
    /// The newest segment had no complete header and was removed.
    Headerless,
}

impl LogStore {
    /// Opens (or creates) the log in `dir` on `disk`, replaying it, and takes the
    /// data directory's lock. See the module docs for a torn tail, corruption
    /// and older formats.
    pub fn open(disk: &Arc<dyn Disk>, dir: &Path) -> Result<(LogStore, OpenReport), StorageError> {
        LogStore::open_with(disk, dir, SEGMENT_BYTES)
    }

    /// `open`, with segments full at `segment_bytes` (at least 1).
    pub fn open_with(
        disk: &Arc<dyn Disk>,
        dir: &Path,
        segment_bytes: u64,
    ) -> Result<(LogStore, OpenReport), StorageError> {
        disk.create_dir_all(dir)
            .map_err(|e| StorageError::io("create data directory", e))?;
        let lock = disk
            .lock_dir(dir)
            .map_err(|e| StorageError::io("lock the data directory", e))?;
        let mut seqs: Vec<u64> = disk
            .list_dir(dir)
            .map_err(|e| StorageError::io("list the data directory", e))?
            .iter()
            .filter_map(|name| segment_seq(name))
            .collect();
        seqs.sort_unstable();
        let poisoned = Arc::new(AtomicBool::new(false));
        let mut store = LogStore {
            dir: dir.to_path_buf(),
            _lock: lock,
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
            segments: Vec::new(),
            segment_bytes: segment_bytes.max(1),
            writer: Arc::new(Mutex::new(LogWriter {
                disk: disk.clone(),
                dir: dir.to_path_buf(),
                file: None,
                seq: 0,
                end: 0,
                allocated: 0,
                removable: Vec::new(),
                poisoned: poisoned.clone(),
            })),
            poisoned,
        };
        let mut report = OpenReport::default();
        let mut next_seq = 1;
        let mut headerless = false;
        for (position, &seq) in seqs.iter().enumerate() {
            if position > 0 && seq != seqs[position - 1] + 1 {
                return Err(StorageError::Corrupt {
                    path: dir
                        .join(segment_file_name(seqs[position - 1] + 1))
                        .display()
                        .to_string(),
                    at: "the whole file".to_string(),
                    reason: "a raft log segment between two others is missing",
                });
            }
            let newest = position + 1 == seqs.len();
            let only = seqs.len() == 1;
            match store.replay_segment(disk, seq, newest, only, &mut report)? {
                Replayed::Records {
                    file,
                    end,
                    allocated,
                } => {
                    let mut writer = store.lock_writer();
                    writer.file = Some(file);
                    writer.seq = seq;
                    writer.end = end;
                    writer.allocated = allocated;
                    next_seq = seq + 1;
                }
                Replayed::Headerless => {
                    next_seq = seq;
                    headerless = true;
                }
            }
        }
        // Records go to a segment of this format with a header: a new one
        // after a format-1 log, on a fresh directory, or instead of a
        // headerless one.
        if headerless || store.segments.last().is_none_or(|s| s.seq == 0) {
            let job = store.stage_roll(next_seq)?;
            store.write_now(job)?;
        }
        Ok((store, report))
    }

    /// Replays segment `seq` (see the module docs for what is refused).
    fn replay_segment(
        &mut self,
        disk: &Arc<dyn Disk>,
        seq: u64,
        newest: bool,
        only: bool,
        report: &mut OpenReport,
    ) -> Result<Replayed, StorageError> {
        let path = self.dir.join(segment_file_name(seq));
        let file = disk
            .open(&path)
            .map_err(|e| StorageError::io("open a raft log segment", e))?;
        let bytes =
            read_all(file.as_ref()).map_err(|e| StorageError::io("read a raft log segment", e))?;
        let corrupt = |offset: usize, reason: &'static str| StorageError::Corrupt {
            path: path.display().to_string(),
            at: format!("offset {offset}"),
            reason,
        };
        // Past the last non-zero byte: free space (see the module docs).
        let written = bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        let mut allocated = bytes.len() as u64;
        let mut offset = 0usize;
        let mut records = 0u64;
        let mut max_index = None;
        while offset < written {
            match parse_frame(&bytes[offset..], written - offset) {
                Ok((kind, body, frame_bytes)) => {
                    if seq > 0 && (records == 0) != (kind == KIND_SEGMENT) {
                        return Err(corrupt(
                            offset,
                            if records == 0 {
                                "segment does not start with its header"
                            } else {
                                "a segment header inside a segment"
                            },
                        ));
                    }
                    if kind == KIND_SEGMENT && seq > 0 {
                        let head: SegmentHead = postcard::from_bytes(body)
                            .map_err(|_| corrupt(offset, "bad segment header"))?;
                        if head.format > LOG_FORMAT {
                            return Err(StorageError::Format {
                                path: path.display().to_string(),
                                found: head.format,
                                supported: LOG_FORMAT,
                            });
                        }
                        if head.format != LOG_FORMAT {
                            return Err(corrupt(offset, "segment header names an unknown format"));
                        }
                        if head.seq != seq {
                            return Err(corrupt(
                                offset,
                                "segment header names another segment than its file name",
                            ));
                        }
                    } else {
                        self.replay(kind, body, &path, offset, &mut max_index)?;
                    }
                    offset += frame_bytes;
                    records += 1;
                }
                Err(Damage::Corrupt(reason)) => return Err(corrupt(offset, reason)),
                Err(Damage::Incomplete(reason)) => {
                    if !newest {
                        // Segments are whole on disk before the next one starts.
                        return Err(corrupt(offset, "a torn record before the newest segment"));
                    }
                    report.torn_bytes = (bytes.len() - offset) as u64;
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        torn_bytes = report.torn_bytes,
                        reason,
                        "truncating a torn tail of the raft log (an unacknowledged write)"
                    );
                    file.set_len(offset as u64)
                        .and_then(|()| file.sync())
                        .map_err(|e| StorageError::io("truncate torn tail", e))?;
                    allocated = offset as u64;
                    break;
                }
            }
        }
        report.records += records;
        if seq > 0 && records == 0 {
            if !newest {
                return Err(corrupt(0, "an empty segment before the newest"));
            }
            if only && seq > 1 {
                // Older segments go only after a purge in a newer one with its
                // header is durable: this log lost what it held.
                return Err(corrupt(0, "the only raft log segment has no header"));
            }
            // A roll-over cut short before the header was durable: nothing in
            // this segment was acknowledged. It starts again.
            tracing::warn!(path = %path.display(), "removing a raft log segment without a header");
            drop(file);
            disk.remove_file(&path)
                .and_then(|()| disk.sync_dir(&self.dir))
                .map_err(|e| StorageError::io("remove a raft log segment without a header", e))?;
            return Ok(Replayed::Headerless);
        }
        report.segments += 1;
        self.segments.push(Segment {
            seq,
            bytes: offset as u64,
            max_index,
        });
        Ok(Replayed::Records {
            file,
            end: offset as u64,
            allocated,
        })
    }

    fn replay(
        &mut self,
        kind: u8,
        body: &[u8],
        path: &Path,
        offset: usize,
        max_index: &mut Option<u64>,
    ) -> Result<(), StorageError> {
        let decode_error = |what: &'static str| StorageError::Corrupt {
            path: path.display().to_string(),
            at: format!("offset {offset}"),
            reason: what,
        };
        match kind {
            KIND_ENTRY => {
                let entries: Vec<StoredEntry> =
                    postcard::from_bytes(body).map_err(|_| decode_error("bad entry record"))?;
                for entry in entries {
                    let index = entry.log_id.index;
                    if let Some((&last, _)) = self.entries.last_key_value()
                        && index != last + 1
                    {
                        return Err(decode_error("log entries out of order"));
                    }
                    *max_index = (*max_index).max(Some(index));
                    self.entries.insert(index, entry);
                }
            }
            KIND_TRUNCATE => {
                let from: u64 =
                    postcard::from_bytes(body).map_err(|_| decode_error("bad truncate"))?;
                self.entries.split_off(&from);
            }
            KIND_PURGE => {
                let upto: LogIdRecord =
                    postcard::from_bytes(body).map_err(|_| decode_error("bad purge record"))?;
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.purged = Some(upto);
            }
            KIND_VOTE => {
                self.vote = Some(postcard::from_bytes(body).map_err(|_| decode_error("bad vote"))?);
            }
            KIND_COMMITTED => {
                self.committed =
                    Some(postcard::from_bytes(body).map_err(|_| decode_error("bad committed"))?);
            }
            _ => return Err(decode_error("unknown record kind")),
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        Ok(())
    }

    fn lock_writer(&self) -> MutexGuard<'_, LogWriter> {
        // A poisoned mutex means a panic mid-write: the member is already going down.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer that makes staged jobs durable (one per store).
    pub fn writer(&self) -> Arc<Mutex<LogWriter>> {
        self.writer.clone()
    }

    /// Stages the start of segment `seq` with its header: the state as every
    /// job staged so far leaves it.
    fn stage_roll(&mut self, seq: u64) -> Result<LogJob, StorageError> {
        let mut header = Vec::new();
        frame(
            &mut header,
            KIND_SEGMENT,
            &encode(&SegmentHead {
                format: LOG_FORMAT,
                seq,
            })?,
        );
        if let Some(vote) = &self.vote {
            frame(&mut header, KIND_VOTE, &encode(vote)?);
        }
        if let Some(committed) = &self.committed {
            frame(&mut header, KIND_COMMITTED, &encode(committed)?);
        }
        if let Some(purged) = &self.purged {
            frame(&mut header, KIND_PURGE, &encode(purged)?);
        }
        self.segments.push(Segment {
            seq,
            bytes: header.len() as u64,
            max_index: None,
        });
        Ok(LogJob {
            ops: vec![
                JobOp::Roll { seq },
                JobOp::Append {
                    seq,
                    offset: 0,
                    bytes: header,
                },
            ],
        })
    }

    /// Frames records as one append job at the staged end of the log.
    fn stage_records(&mut self, records: &[(u8, Vec<u8>)]) -> Result<LogJob, StorageError> {
        let mut bytes = Vec::new();
        for (kind, body) in records {
            frame(&mut bytes, *kind, body);
        }
        self.stage_bytes(bytes)
    }

    /// Stages framed records to follow the log's last byte, in a new segment
    /// if the newest is full.
    fn stage_bytes(&mut self, bytes: Vec<u8>) -> Result<LogJob, StorageError> {
        let newest = *self.newest();
        let mut ops = Vec::new();
        if newest.bytes >= self.segment_bytes {
            ops = self.stage_roll(newest.seq + 1)?.ops;
        }
        let length = bytes.len() as u64;
        let segment = self.newest_mut();
        ops.push(JobOp::Append {
            seq: segment.seq,
            offset: segment.bytes,
            bytes,
        });
        segment.bytes += length;
        Ok(LogJob { ops })
    }

    fn newest(&self) -> &Segment {
        self.segments
            .last()
            .expect("an open raft log has a segment")
    }

    fn newest_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("an open raft log has a segment")
    }

    /// Writes one job and fsyncs (the plain, durable-on-return calls).
    fn write_now(&self, job: LogJob) -> Result<(), StorageError> {
        self.lock_writer().write(&[job], true)
    }

    pub fn stage_append(&mut self, entries: Vec<StoredEntry>) -> Result<LogJob, StorageError> {
        self.check_usable()?;
        let mut next = self.last_index().map(|i| i + 1);
        for entry in &entries {
            if let Some(expected) = next {
                assert_eq!(
                    entry.log_id.index, expected,
                    "log append would leave a hole"
                );
            }
            next = Some(entry.log_id.index + 1);
        }
        // Each chunk is encoded straight into its frame in one buffer, sized
        // up front: a payload's bytes are copied once on their way to the file.
        let payload_bytes: usize = entries.iter().map(|e| e.payload.len() + 32).sum();
        let mut bytes = Vec::with_capacity(payload_bytes + 2 * (HEADER_BYTES + 1));
        let mut chunk: Vec<&StoredEntry> = Vec::new();
        let mut chunk_bytes = 0;
        for entry in &entries {
            if !chunk.is_empty() && chunk_bytes + entry.payload.len() > RECORD_BYTES_MAX / 2 {
                frame_encoded(&mut bytes, KIND_ENTRY, &chunk)?;
                chunk.clear();
                chunk_bytes = 0;
            }
            chunk_bytes += entry.payload.len() + 32;
            chunk.push(entry);
        }
        if !chunk.is_empty() {
            frame_encoded(&mut bytes, KIND_ENTRY, &chunk)?;
        }
        let job = self.stage_bytes(bytes)?;
        if let Some(last) = entries.last() {
            let newest = self.newest_mut();
            newest.max_index = newest.max_index.max(Some(last.log_id.index));
        }
        for entry in entries {
            self.entries.insert(entry.log_id.index, entry);
        }
        Ok(job)
    }

    /// Appends entries that must directly follow the last one; durable on return.
    pub fn append(&mut self, entries: Vec<StoredEntry>) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let job = self.stage_append(entries)?;
        self.write_now(job)
    }

    /// Stages the deletion of every entry at index ≥ `from` (a conflicting suffix).
    /// Not durable before a later fsync; until then a crash brings the suffix
    /// back, which is the log as it was before the call.
    pub fn stage_truncate(&mut self, from: u64) -> Result<LogJob, StorageError> {
        self.check_usable()?;
        let job = self.stage_records(&[(KIND_TRUNCATE, encode(&from)?)])?;
        self.entries.split_off(&from);
        Ok(job)
    }

    /// Deletes every entry at index ≥ `from` (a conflicting suffix); durable on return.
    pub fn truncate_from(&mut self, from: u64) -> Result<(), StorageError> {
        let job = self.stage_truncate(from)?;
        self.write_now(job)
    }

    /// Stages the deletion of every entry at index ≤ `upto.index` (covered by a
    /// snapshot). Until a later fsync a crash brings them back, which is harmless.
    /// The oldest segments holding only such entries are removed once the
    /// purge is durable (see the module docs).
    pub fn stage_purge(&mut self, upto: LogIdRecord) -> Result<LogJob, StorageError> {
        self.check_usable()?;
        let mut job = self.stage_records(&[(KIND_PURGE, encode(&upto)?)])?;
        self.entries = self.entries.split_off(&(upto.index + 1));
        self.purged = Some(upto);
        let covered = removable_segments(&self.segments, upto.index);
        if covered > 0 {
            let seqs = self.segments.drain(..covered).map(|s| s.seq).collect();
            job.ops.push(JobOp::Remove { seqs });
        }
        Ok(job)
    }

    /// Deletes every entry at index ≤ `upto.index` (covered by a snapshot).
    pub fn purge_upto(&mut self, upto: LogIdRecord) -> Result<(), StorageError> {
        let job = self.stage_purge(upto)?;
        self.write_now(job)
    }

    /// Stages the vote; the caller must write it with an fsync before acting on it.
    pub fn stage_vote(&mut self, vote: VoteRecord) -> Result<LogJob, StorageError> {
        self.check_usable()?;
        let job = self.stage_records(&[(KIND_VOTE, encode(&vote)?)])?;
        self.vote = Some(vote);
        Ok(job)
    }

    /// Records the vote; durable on return.
    pub fn save_vote(&mut self, vote: VoteRecord) -> Result<(), StorageError> {
        let job = self.stage_vote(vote)?;
        self.write_now(job)
    }

    /// Stages the committed log id. It needs no fsync of its own: a lost one is
    /// recovered (from the state machine's applied id or the leader), so it rides
    /// on the next fsync of entries or votes.
    pub fn stage_committed(
        &mut self,
        committed: Option<LogIdRecord>,
    ) -> Result<Option<LogJob>, StorageError> {
        self.check_usable()?;
        let job = match committed {
            Some(committed) => Some(self.stage_records(&[(KIND_COMMITTED, encode(&committed)?)])?),
            None => None,
        };
        self.committed = committed;
        Ok(job)
    }

    /// Records the committed log id; durable on return.
    pub fn save_committed(&mut self, committed: Option<LogIdRecord>) -> Result<(), StorageError> {
        match self.stage_committed(committed)? {
            Some(job) => self.write_now(job),
            None => Ok(()),
        }
    }

    /// The last saved vote.
    pub fn vote(&self) -> Option<VoteRecord> {
        self.vote
    }

    /// The last saved committed log id.
    pub fn committed(&self) -> Option<LogIdRecord> {
        self.committed
    }

    /// The last purged log id.
    pub fn purged(&self) -> Option<LogIdRecord> {
        self.purged
    }

    /// Index of the last entry, or of the last purged one when the log is empty.
    pub fn last_index(&self) -> Option<u64> {
        self.last_log_id().map(|id| id.index)
    }

    /// Id of the last entry, or the last purged id when the log is empty.
    pub fn last_log_id(&self) -> Option<LogIdRecord> {
        self.entries
            .last_key_value()
            .map(|(_, e)| e.log_id)
            .or(self.purged)
    }

    /// Entries with index in `[start, end)`.
    pub fn entries(&self, start: u64, end: u64) -> Vec<StoredEntry> {
        if start >= end {
            return Vec::new();
        }
        self.entries
            .range(start..end)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Bytes of the log's segments (once every staged job is written).
    pub fn file_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// The segment files, oldest first, once every staged job is written.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|s| self.dir.join(segment_file_name(s.seq)))
            .collect()
    }

    /// Bytes of the newest segment (once every staged job is written).
    pub fn newest_segment_bytes(&self) -> u64 {
        self.newest().bytes
    }
}

/// How many of the oldest `segments` a purge up to `index` covers: each holds
/// no entry after `index`, and the newest (which takes new records) is never
/// one of them.
fn removable_segments(segments: &[Segment], index: u64) -> usize {
    let older = segments.len().saturating_sub(1);
    segments[..older]
        .iter()
        .take_while(|s| s.max_index.is_none_or(|max| max <= index))
        .count()
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_allocvec(value).map_err(|_| StorageError::Encode)
}

/// Where to write zeros after an append that ended at `end`, with the file
/// `allocated` long: `[from, to)`, empty while enough is left.
fn top_up(end: u64, allocated: u64) -> (u64, u64) {
    if allocated >= end + PREALLOCATE_AHEAD / 2 {
        return (0, 0);
    }
    let from = allocated.max(end);
    (from, (end + PREALLOCATE_AHEAD).next_multiple_of(4096))
}

fn frame(buffer: &mut Vec<u8>, kind: u8, body: &[u8]) {
    frame_as(buffer, MAGIC, kind, body);
}

fn frame_as(buffer: &mut Vec<u8>, magic: u8, kind: u8, body: &[u8]) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; HEADER_BYTES]);
    buffer.extend_from_slice(body);
    seal(buffer, start, magic, kind);
}

/// `frame` of `value`'s encoding, encoded in place after the header (the
/// same bytes as `frame(buffer, kind, &encode(value)?)`, without the copy).
/// A body over `RECORD_BYTES_MAX` is `TooLarge`.
fn frame_encoded<T: Serialize + ?Sized>(
    buffer: &mut Vec<u8>,
    kind: u8,
    value: &T,
) -> Result<(), StorageError> {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; HEADER_BYTES]);
    *buffer =
        postcard::to_extend(value, std::mem::take(buffer)).map_err(|_| StorageError::Encode)?;
    if buffer.len() - start - HEADER_BYTES > RECORD_BYTES_MAX {
        return Err(StorageError::TooLarge);
    }
    seal(buffer, start, MAGIC, kind);
    Ok(())
}

/// Fills in the header of the record that starts at `start` (its body is
/// everything after the header) and ends it with the trailer (`MAGIC` only).
fn seal(buffer: &mut Vec<u8>, start: usize, magic: u8, kind: u8) {
    let (head, body) = buffer[start..].split_at_mut(HEADER_BYTES);
    let length = u32::try_from(body.len()).expect("record length bounded by RECORD_BYTES_MAX");
    head[0] = magic;
    head[1] = kind;
    head[2..6].copy_from_slice(&length.to_le_bytes());
    head[6..10].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    let header_crc = crc32fast::hash(&head[..10]);
    head[10..14].copy_from_slice(&header_crc.to_le_bytes());
    if magic == MAGIC {
        buffer.push(TRAILER);
    }
}

/// Entries framed as versions before the trailer wrote them (for tests).
#[cfg(test)]
pub(crate) fn untrailed_entries_record(entries: &[StoredEntry]) -> Vec<u8> {
    let mut buffer = Vec::new();
    let body = encode(entries).expect("entries encode");
    frame_as(&mut buffer, MAGIC_UNTRAILED, KIND_ENTRY, &body);
    buffer
}

/// The header record of a segment (for tests).
#[cfg(test)]
pub(crate) fn segment_head_record(format: u32, seq: u64) -> Vec<u8> {
    let mut buffer = Vec::new();
    let body = encode(&SegmentHead { format, seq }).expect("header encodes");
    frame(&mut buffer, KIND_SEGMENT, &body);
    buffer
}

/// Why a frame did not parse.
enum Damage {
    /// Cut short by the end of the file: a torn write.
    Incomplete(&'static str),
    /// Complete but wrong: corruption.
    Corrupt(&'static str),
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses one frame at the start of `bytes`: (kind, body, frame length).
/// `written`: how many of `bytes` come before the zeros that end the file
/// (at least 1: the caller stops at free space).
fn parse_frame(bytes: &[u8], written: usize) -> Result<(u8, &[u8], usize), Damage> {
    if bytes.len() < HEADER_BYTES {
        return Err(Damage::Incomplete("short record header"));
    }
    let magic = bytes[0];
    if magic != MAGIC && magic != MAGIC_UNTRAILED {
        return Err(Damage::Corrupt("bad record magic"));
    }
    if crc32fast::hash(&bytes[..10]) != le_u32(bytes, 10) {
        // A header whose writing stopped partway: the zeros start inside it.
        if magic == MAGIC && written < HEADER_BYTES {
            return Err(Damage::Incomplete("record header cut short"));
        }
        return Err(Damage::Corrupt("record header checksum mismatch"));
    }
    let kind = bytes[1];
    let length = le_u32(bytes, 2) as usize;
    if length > RECORD_BYTES_MAX {
        return Err(Damage::Corrupt("record length out of bounds"));
    }
    let frame_bytes = HEADER_BYTES + length + usize::from(magic == MAGIC);
    if bytes.len() < frame_bytes {
        return Err(Damage::Incomplete("record runs past the end of the file"));
    }
    // A complete record ends with its (non-zero) trailer: zeros from inside it
    // on mean its writing stopped partway.
    if magic == MAGIC && written < frame_bytes {
        return Err(Damage::Incomplete("record cut short by zeros"));
    }
    let body = &bytes[HEADER_BYTES..HEADER_BYTES + length];
    if crc32fast::hash(body) != le_u32(bytes, 6) {
        return Err(Damage::Corrupt("record checksum mismatch"));
    }
    if magic == MAGIC && bytes[frame_bytes - 1] != TRAILER {
        return Err(Damage::Corrupt("bad record trailer"));
    }
    Ok((kind, body, frame_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_encoded_in_place_is_the_frame_of_the_encoding() {
        let entry = |index: u64, bytes: usize| StoredEntry {
            log_id: LogIdRecord {
                term: 1,
                node_id: 0,
                index,
            },
            payload: vec![index as u8; bytes].into(),
        };
        let chunks: [Vec<StoredEntry>; 3] = [
            vec![],
            vec![entry(1, 0)],
            vec![entry(1, 10), entry(2, 300), entry(3, 70_000)],
        ];
        for chunk in &chunks {
            let refs: Vec<&StoredEntry> = chunk.iter().collect();
            let mut framed = vec![7, 7];
            frame(&mut framed, KIND_ENTRY, &encode(&refs).expect("encodes"));
            let mut in_place = vec![7, 7];
            frame_encoded(&mut in_place, KIND_ENTRY, &refs).expect("encodes");
            assert_eq!(in_place, framed, "{} entries", chunk.len());
        }
    }

    #[test]
    fn segment_file_names_round_trip() {
        for seq in [0, 1, 2, 0xff, u64::MAX] {
            assert_eq!(segment_seq(&segment_file_name(seq)), Some(seq), "{seq}");
        }
        assert_eq!(segment_file_name(1), "raft-0000000000000001.log");
        for other in [
            "raft-0000000000000000.log",
            "raft-000000000000001.log",
            "raft-00000000000000001.log",
            "raft-000000000000000A.log",
            "raft-000000000000000g.log",
            "raft-0000000000000001.log.tmp",
            "raft.log.rewrite",
            "state.redb",
            "LOCK",
        ] {
            assert_eq!(segment_seq(other), None, "{other}");
        }
    }

    #[test]
    fn a_purge_removes_the_oldest_segments_it_covers() {
        let segments = |maxima: &[Option<u64>]| -> Vec<Segment> {
            maxima
                .iter()
                .enumerate()
                .map(|(i, &max_index)| Segment {
                    seq: i as u64 + 1,
                    bytes: 100,
                    max_index,
                })
                .collect()
        };
        // (max index per segment, purged up to) -> segments removed
        let table: [(&[Option<u64>], u64, usize); 8] = [
            (&[], 10, 0),
            // The newest takes new records: never removed.
            (&[Some(5)], 10, 0),
            (&[Some(5), Some(9)], 10, 1),
            (&[Some(5), Some(9), Some(12)], 10, 2),
            (&[Some(5), Some(9), Some(12)], 9, 2),
            (&[Some(5), Some(9), Some(12)], 8, 1),
            // Segments without entries go with the ones around them; one
            // with entries not yet covered stops the removal there.
            (&[None, Some(5), None, Some(20), None, Some(21)], 10, 3),
            (&[Some(20), None, Some(5), Some(21)], 10, 0),
        ];
        for (maxima, purged, removed) in table {
            assert_eq!(
                removable_segments(&segments(maxima), purged),
                removed,
                "{maxima:?} purged {purged}"
            );
        }
    }

    #[test]
    fn zeros_are_topped_up_ahead_of_the_end() {
        // (end, allocated) -> the zeros to write.
        let half = PREALLOCATE_AHEAD / 2;
        let table = [
            // A fresh file: all of it, to a block boundary.
            ((0, 0), (0, PREALLOCATE_AHEAD)),
            (
                (100, 0),
                (100, (100 + PREALLOCATE_AHEAD).next_multiple_of(4096)),
            ),
            // Enough left: nothing.
            ((1000, 1000 + half), (0, 0)),
            ((1000, 1000 + PREALLOCATE_AHEAD), (0, 0)),
            // Less than half left: from the old allocation on.
            (
                (1000, 999 + half),
                (
                    999 + half,
                    (1000 + PREALLOCATE_AHEAD).next_multiple_of(4096),
                ),
            ),
            // Written past the allocation (a closed segment has no zeros left):
            // from the end on.
            (
                (5000, 10),
                (5000, (5000 + PREALLOCATE_AHEAD).next_multiple_of(4096)),
            ),
        ];
        for ((end, allocated), expected) in table {
            assert_eq!(
                top_up(end, allocated),
                expected,
                "end {end} allocated {allocated}"
            );
            let (from, to) = expected;
            assert!(from >= end || to == 0, "zeros never overwrite records");
        }
    }
}
