//! `StateStore`: the applied state in redb (`state.redb`).
//!
//! Durability promise: `commit` writes a batch's keyspace changes, the applied log
//! id, the membership and the revisions in ONE redb transaction, so after a crash
//! the state is exactly that of some applied prefix of the log and restart
//! replays what follows it from the Raft log. Most commits are not durable on
//! their own (as etcd's backend, which commits every 100 ms): the caller asks
//! for a `durable` one often enough, and always before the log behind it may be
//! purged (before a snapshot).
//!
//! Every stored value carries a CRC32 of its row (key and value), checked when the
//! state is loaded: a flipped bit in the data makes the member refuse to start
//! instead of serving a wrong value. redb checks its own page structure.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use mainstay_auth::AuthState;
use mainstay_mvcc::Alarms;
use mainstay_mvcc::{Change, KeySpace, LeaseRecord, Live, Record, Revision, Value, ValueStore};
use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};

use crate::disk::{Disk, DiskFile, RedbBackend};
use crate::error::StorageError;
use crate::log_store::LogIdRecord;

/// Key = revision (8 bytes, big endian) ++ user key; value = the sealed, encoded
/// `Record::live`. Keyed by revision first (as etcd's bbolt `key` bucket), so an
/// applied batch lands at the end of the tree: a commit rewrites one path of
/// pages, not one leaf per written key. (Format 2.)
const HISTORY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_by_revision");
/// Format 1's history table: key = user key ++ revision. Migrated on open.
const HISTORY_V1: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv_history");
/// Single row `"format"`: the version of this file's layout (u32, big endian).
const FORMAT: TableDefinition<&str, &[u8]> = TableDefinition::new("format");
const FORMAT_KEY: &str = "format";
/// The layout this build writes and reads.
const STATE_FORMAT: u32 = 2;
/// Single row `"meta"` holding the encoded `StateMeta`.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_KEY: &str = "meta";
/// Key = lease id (8 bytes, big endian); value = the sealed, encoded `LeaseRecord`.
const LEASES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("leases");
/// Key (in `META`) of the auth state: users, roles, permissions, enabled.
const AUTH_KEY: &str = "auth";
/// Key (in `META`) of the raised alarms.
const ALARMS_KEY: &str = "alarms";
/// 3: with the auth state; 4: with the alarms; 5: records with their
/// position within their revision (`Record::sub`).
const SNAPSHOT_FORMAT: u32 = 5;

/// State-machine metadata committed with every batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMeta {
    /// The last applied log id.
    pub applied: Option<LogIdRecord>,
    /// The last applied membership, encoded by the Raft adapter (with its log id).
    pub membership: Vec<u8>,
    /// The store revision.
    pub revision: Revision,
    /// The compacted revision.
    pub compacted: Revision,
}

/// A full copy of the state: what a snapshot carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotData {
    /// Format version of this structure.
    pub format: u32,
    /// The metadata at the snapshot point.
    pub meta: StateMeta,
    /// Every retained record.
    pub records: Vec<(Vec<u8>, Record)>,
    /// Every granted lease.
    pub leases: Vec<LeaseRecord>,
    /// Users, roles, permissions and whether auth is on.
    pub auth: AuthState,
    /// Raised alarms.
    pub alarms: Alarms,
}

impl SnapshotData {
    /// Encodes the snapshot with a trailing CRC32 of the body.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let mut bytes = postcard::to_allocvec(self).map_err(|_| StorageError::Encode)?;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(bytes)
    }

    /// Decodes and checks a snapshot made by `encode`.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotData, StorageError> {
        let Some(split) = bytes.len().checked_sub(4) else {
            return Err(StorageError::Snapshot("too short"));
        };
        let (body, crc) = bytes.split_at(split);
        let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != crc {
            return Err(StorageError::Snapshot("checksum mismatch"));
        }
        let data: SnapshotData =
            postcard::from_bytes(body).map_err(|_| StorageError::Snapshot("undecodable"))?;
        if data.format != SNAPSHOT_FORMAT {
            return Err(StorageError::Snapshot("unknown format version"));
        }
        Ok(data)
    }
}

/// The redb-backed state store. See the module docs.
pub struct StateStore {
    /// None once the engine panicked: it is left undropped (its drop would
    /// write to the damaged file, and panics again). Shared with the value
    /// readers (`values`).
    db: Option<DbCell>,
    disk: Arc<dyn Disk>,
    file: Arc<dyn DiskFile>,
    cache_bytes: u64,
    /// The file's size as of the last write, shared with the readers: the
    /// quota check reads it for every write request, so it is kept here
    /// rather than asked of the file system each time.
    size: Arc<AtomicU64>,
    /// Bytes of every row of every table (`row_bytes`), kept up to date by
    /// each commit from what it inserts and what the rows it replaces or
    /// removes held; shared with the readers (`StateReads::in_use_bytes`).
    rows: Arc<AtomicU64>,
    path: PathBuf,
    poisoned: bool,
    /// While a defragmentation copies the state: every batch committed since
    /// its copy began, to be written into the copy before the swap.
    journal: Option<Vec<(Vec<Change>, StateMeta)>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

/// The database the store writes, shared with its readers. Defragmenting
/// replaces it (`StateStore::defragment`); a reader takes the current one for
/// each read and keeps it for that read only, so a read begun before the swap
/// finishes on the old file.
type DbCell = Arc<RwLock<Arc<Database>>>;

fn current(cell: &DbCell) -> Arc<Database> {
    cell.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn history_key(key: &[u8], revision: Revision) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(key.len() + 8);
    bytes.extend_from_slice(&revision.to_be_bytes());
    bytes.extend_from_slice(key);
    bytes
}

fn split_history_key(bytes: &[u8]) -> Option<(Vec<u8>, Revision)> {
    let (revision, key) = bytes.split_at_checked(8)?;
    let revision = Revision::from_be_bytes(revision.try_into().ok()?);
    Some((key.to_vec(), revision))
}

/// Format 1's row key: user key ++ revision.
fn split_history_key_v1(bytes: &[u8]) -> Option<(Vec<u8>, Revision)> {
    let split = bytes.len().checked_sub(8)?;
    let (key, revision) = bytes.split_at(split);
    let revision = Revision::from_be_bytes(revision.try_into().ok()?);
    Some((key.to_vec(), revision))
}

/// Appends the CRC32 of `key ++ value` to `value`.
fn seal(key: &[u8], mut value: Vec<u8>) -> Vec<u8> {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(&value);
    let crc = hasher.finalize();
    value.extend_from_slice(&crc.to_le_bytes());
    value
}

/// Checks and strips the CRC added by `seal`.
fn unseal<'a>(key: &[u8], sealed: &'a [u8]) -> Option<&'a [u8]> {
    let split = sealed.len().checked_sub(4)?;
    let (value, crc) = sealed.split_at(split);
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(value);
    (hasher.finalize().to_le_bytes() == crc).then_some(value)
}

/// A history row's value: the encoded `Record::live`, then `Record::sub` (a
/// varint, absent from rows written before it was kept: readers of
/// `Option<Live>` alone ignore it, so older builds read newer rows).
fn encode_live(key: &[u8], record: &Record) -> Result<Vec<u8>, StorageError> {
    let mut value = postcard::to_allocvec(&record.live).map_err(|_| StorageError::Encode)?;
    if record.sub != 0 {
        let sub = postcard::to_allocvec(&record.sub).map_err(|_| StorageError::Encode)?;
        value.extend_from_slice(&sub);
    }
    Ok(seal(key, value))
}

/// The inverse of `encode_live`: `(live, sub)`, sub 0 when the row has none.
fn decode_live(value: &[u8]) -> Option<(Option<Live>, u32)> {
    let (live, rest) = postcard::take_from_bytes::<Option<Live>>(value).ok()?;
    let sub = if rest.is_empty() {
        0
    } else {
        let (sub, rest) = postcard::take_from_bytes::<u32>(rest).ok()?;
        if !rest.is_empty() {
            return None;
        }
        sub
    };
    Some((live, sub))
}

/// An error opening the database: corruption when redb says so or reads
/// past the file's end (only damaged bytes point there), else I/O.
fn corrupt_db(path: &Path, error: redb::DatabaseError) -> StorageError {
    let reason = match &error {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => {
            "the database engine found damaged pages"
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            "a page points past the end of the file"
        }
        _ => return StorageError::db(error),
    };
    StorageError::Corrupt {
        path: path.display().to_string(),
        at: "opening the database".to_string(),
        reason,
    }
}

fn encode_lease(lease: &LeaseRecord) -> Result<Vec<u8>, StorageError> {
    let encoded = postcard::to_allocvec(lease).map_err(|_| StorageError::Encode)?;
    Ok(seal(&lease.id.to_be_bytes(), encoded))
}

fn encode_meta(meta: &StateMeta) -> Result<Vec<u8>, StorageError> {
    let encoded = postcard::to_allocvec(meta).map_err(|_| StorageError::Encode)?;
    Ok(seal(META_KEY.as_bytes(), encoded))
}

fn encode_auth(auth: &AuthState) -> Result<Vec<u8>, StorageError> {
    let encoded = postcard::to_allocvec(auth).map_err(|_| StorageError::Encode)?;
    Ok(seal(AUTH_KEY.as_bytes(), encoded))
}

fn encode_alarms(alarms: &Alarms) -> Result<Vec<u8>, StorageError> {
    let encoded = postcard::to_allocvec(alarms).map_err(|_| StorageError::Encode)?;
    Ok(seal(ALARMS_KEY.as_bytes(), encoded))
}

impl StateStore {
    /// Opens (or creates) `dir/state.redb` on `disk` with a page cache of
    /// `cache_bytes` and loads the keyspace and metadata. The caller holds the
    /// data directory's lock (`LogStore::open`).
    pub fn open(
        disk: &Arc<dyn Disk>,
        dir: &Path,
        cache_bytes: u64,
    ) -> Result<(StateStore, KeySpace, StateMeta), StorageError> {
        disk.create_dir_all(dir)
            .map_err(|e| StorageError::io("create data directory", e))?;
        let path = dir.join("state.redb");
        let file = disk
            .open(&path)
            .map_err(|e| StorageError::io("open state.redb", e))?;
        // redb checks its pages as it opens (and repairs after a crash); on some
        // damage it panics rather than returning an error. Either way the file is
        // corrupt: refuse to start, never limp on.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || -> Result<(StateStore, KeySpace, StateMeta), StorageError> {
                let db = Builder::new()
                    .set_cache_size(usize::try_from(cache_bytes).unwrap_or(usize::MAX))
                    .create_with_backend(RedbBackend(file.clone()))
                    .map_err(|e| corrupt_db(&path, e))?;
                let store = StateStore {
                    db: Some(Arc::new(RwLock::new(Arc::new(db)))),
                    disk: disk.clone(),
                    file: file.clone(),
                    cache_bytes,
                    size: Arc::default(),
                    rows: Arc::default(),
                    path: path.clone(),
                    poisoned: false,
                    journal: None,
                };
                store.upgrade()?;
                store.measure();
                let (mut key_space, meta) = store.load()?;
                key_space.set_value_store(store.values()?);
                Ok((store, key_space, meta))
            },
        ));
        opened.unwrap_or_else(|_| {
            Err(StorageError::Corrupt {
                path: path.display().to_string(),
                at: "opening the database".to_string(),
                reason: "the database engine panicked on damaged pages",
            })
        })
    }

    /// The keyspace as stored, values left on disk; counts the rows' bytes
    /// on the way.
    fn load(&self) -> Result<(KeySpace, StateMeta), StorageError> {
        let (key_space, meta, rows) = self.reader()?.load_counted(false)?;
        self.rows.store(rows, Ordering::Relaxed);
        Ok((key_space, meta))
    }

    /// Counts the rows' bytes again (after the whole state was replaced).
    fn recount(&self) -> Result<(), StorageError> {
        let rows = self.reader()?.row_bytes()?;
        self.rows.store(rows, Ordering::Relaxed);
        Ok(())
    }

    /// Reads values back for a keyspace whose values left memory.
    pub fn values(&self) -> Result<Arc<dyn ValueStore>, StorageError> {
        let db = self.db.clone().ok_or(StorageError::Poisoned)?;
        Ok(Arc::new(StoredValues {
            db,
            path: self.path.clone(),
        }))
    }

    /// Brings the file to `STATE_FORMAT`: a new file gets the version; format
    /// 1 (no version row, history keyed by user key) is rewritten in one
    /// durable transaction; a newer format is refused, never misread.
    fn upgrade(&self) -> Result<(), StorageError> {
        let read = self
            .db()?
            .begin_read()
            .map_err(|e| read_error(&self.path, e.into()))?;
        let version = match read.open_table(FORMAT) {
            Ok(table) => match table
                .get(FORMAT_KEY)
                .map_err(|e| read_error(&self.path, e.into()))?
            {
                Some(value) => {
                    let value = unseal(FORMAT_KEY.as_bytes(), value.value())
                        .ok_or_else(|| corrupt(&self.path, "format row checksum mismatch"))?;
                    let bytes: [u8; 4] = value
                        .try_into()
                        .map_err(|_| corrupt(&self.path, "malformed format row"))?;
                    Some(u32::from_be_bytes(bytes))
                }
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(read_error(&self.path, error.into())),
        };
        let old_rows = match read.open_table(HISTORY_V1) {
            Ok(table) => {
                let mut rows = Vec::new();
                for row in table.iter().map_err(|e| read_error(&self.path, e.into()))? {
                    let (key, value) = row.map_err(|e| read_error(&self.path, e.into()))?;
                    let live = unseal(key.value(), value.value())
                        .ok_or_else(|| corrupt(&self.path, "history row checksum mismatch"))?;
                    let (user_key, revision) = split_history_key_v1(key.value())
                        .ok_or_else(|| corrupt(&self.path, "malformed history key"))?;
                    rows.push((history_key(&user_key, revision), live.to_vec()));
                }
                Some(rows)
            }
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(read_error(&self.path, error.into())),
        };
        drop(read);
        match version {
            Some(STATE_FORMAT) if old_rows.is_none() => return Ok(()),
            Some(newer) if newer > STATE_FORMAT => {
                return Err(StorageError::Format {
                    path: self.path.display().to_string(),
                    found: newer,
                    supported: STATE_FORMAT,
                });
            }
            _ => {}
        }
        let write = self.db()?.begin_write().map_err(StorageError::db)?;
        {
            if let Some(rows) = &old_rows {
                let mut history = write.open_table(HISTORY).map_err(StorageError::db)?;
                for (row, live) in rows {
                    let sealed = seal(row, live.clone());
                    history
                        .insert(row.as_slice(), sealed.as_slice())
                        .map_err(StorageError::db)?;
                }
            }
            let mut format = write.open_table(FORMAT).map_err(StorageError::db)?;
            let sealed = seal(FORMAT_KEY.as_bytes(), STATE_FORMAT.to_be_bytes().to_vec());
            format
                .insert(FORMAT_KEY, sealed.as_slice())
                .map_err(StorageError::db)?;
        }
        if old_rows.is_some() {
            write.delete_table(HISTORY_V1).map_err(StorageError::db)?;
            tracing::info!(path = %self.path.display(), "state database migrated to format {STATE_FORMAT}");
        }
        write.commit().map_err(StorageError::db)
    }

    /// One consistent read of the committed state (redb readers do not block
    /// its writer: applying goes on while a snapshot is read).
    pub fn reader(&self) -> Result<StateReader, StorageError> {
        self.reads()?.reader()
    }

    /// Reads of the committed state that need no access to the store itself,
    /// so they go on while a commit holds it.
    pub fn reads(&self) -> Result<StateReads, StorageError> {
        Ok(StateReads {
            db: self.db.clone().ok_or(StorageError::Poisoned)?,
            size: self.size.clone(),
            rows: self.rows.clone(),
            path: self.path.clone(),
        })
    }

    /// Commits one applied batch: its changes and the new metadata; with
    /// `durable`, fsynced together with every commit before it. A failure
    /// poisons the store: the member must stop.
    pub fn commit(
        &mut self,
        changes: &[Change],
        meta: &StateMeta,
        durable: bool,
    ) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        let result = self.guarded("committing an applied batch", |store| {
            store.commit_inner(changes, meta, durable)
        });
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn commit_inner(
        &mut self,
        changes: &[Change],
        meta: &StateMeta,
        durable: bool,
    ) -> Result<(), StorageError> {
        let db = self.db()?;
        let grown = write_batch(&db, changes, meta, durable)?;
        let _ = self
            .rows
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |rows| {
                Some(rows.saturating_add_signed(grown))
            });
        if let Some(journal) = self.journal.as_mut() {
            journal.push((changes.to_vec(), meta.clone()));
        }
        Ok(())
    }
}

/// Writes one applied batch (its changes and the new metadata) in one
/// transaction; `durable` syncs it with every commit before it. Returns how
/// many bytes of rows it added (negative when it removed more).
fn write_batch(
    db: &Database,
    changes: &[Change],
    meta: &StateMeta,
    durable: bool,
) -> Result<i64, StorageError> {
    let mut grown = RowGrowth::default();
    let mut write = db.begin_write().map_err(StorageError::db)?;
    write
        .set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(StorageError::db)?;
    // The allocator state is saved with every durable commit, so opening
    // after a crash reads it instead of walking every page of the file
    // (0.4 s of a 200 MB restart); commits are a batch each, off the
    // acknowledgement path, so their extra page costs little.
    write.set_quick_repair(durable);
    {
        let mut history = write.open_table(HISTORY).map_err(StorageError::db)?;
        for change in changes {
            match change {
                Change::Append { key, record } => {
                    let row = history_key(key, record.revision);
                    let live = encode_live(&row, record)?;
                    grown.insert(&mut history, &row, &live)?;
                }
                Change::Remove { key, revision } => {
                    grown.delete(&mut history, &history_key(key, *revision))?;
                }
                Change::LeasePut(lease) => {
                    let mut leases = write.open_table(LEASES).map_err(StorageError::db)?;
                    let key = lease.id.to_be_bytes();
                    grown.insert(&mut leases, &key, &encode_lease(lease)?)?;
                }
                Change::LeaseRemove(id) => {
                    let mut leases = write.open_table(LEASES).map_err(StorageError::db)?;
                    grown.delete(&mut leases, &id.to_be_bytes())?;
                }
                Change::Auth(auth) => {
                    let mut table = write.open_table(META).map_err(StorageError::db)?;
                    grown.put_meta(&mut table, AUTH_KEY, &encode_auth(auth)?)?;
                }
                Change::Alarms(alarms) => {
                    let mut table = write.open_table(META).map_err(StorageError::db)?;
                    grown.put_meta(&mut table, ALARMS_KEY, &encode_alarms(alarms)?)?;
                }
            }
        }
        let mut table = write.open_table(META).map_err(StorageError::db)?;
        grown.put_meta(&mut table, META_KEY, &encode_meta(meta)?)?;
    }
    write.commit().map_err(StorageError::db)?;
    Ok(grown.0)
}

/// Bytes redb keeps for a row beside its key and value (the end offsets of a
/// variable-width key and value, 4 bytes each).
const ROW_OVERHEAD: u64 = 8;

/// What a row costs in `StateStore::rows`.
fn row_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() as u64)
        .saturating_add(value.len() as u64)
        .saturating_add(ROW_OVERHEAD)
}

/// The bytes of rows one transaction added, less those it replaced or removed.
#[derive(Default)]
struct RowGrowth(i64);

impl RowGrowth {
    fn add(&mut self, key: &[u8], value: &[u8]) {
        self.0 = self
            .0
            .saturating_add(i64::try_from(row_bytes(key, value)).unwrap_or(i64::MAX));
    }

    fn remove(&mut self, key: &[u8], value: &[u8]) {
        self.0 = self
            .0
            .saturating_sub(i64::try_from(row_bytes(key, value)).unwrap_or(i64::MAX));
    }

    /// Writes one row of a byte-keyed table, counting it and what it replaced.
    fn insert(
        &mut self,
        table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), StorageError> {
        self.add(key, value);
        if let Some(old) = table.insert(key, value).map_err(StorageError::db)? {
            self.remove(key, old.value());
        }
        Ok(())
    }

    /// Removes one row of a byte-keyed table, counting what it held.
    fn delete(
        &mut self,
        table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        key: &[u8],
    ) -> Result<(), StorageError> {
        if let Some(old) = table.remove(key).map_err(StorageError::db)? {
            self.remove(key, old.value());
        }
        Ok(())
    }

    /// Writes one row of `META`, counting it.
    fn put_meta(
        &mut self,
        table: &mut redb::Table<'_, &'static str, &'static [u8]>,
        key: &'static str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        self.add(key.as_bytes(), value);
        if let Some(old) = table.insert(key, value).map_err(StorageError::db)? {
            self.remove(key.as_bytes(), old.value());
        }
        Ok(())
    }
}

/// The size of a state file with nothing in it: redb lays out its header,
/// its region tracker and 64 KiB of free pages when it creates a file (a test
/// checks the number against the engine). etcd's empty bbolt file is 20-32
/// KiB; the quota counts what a file holds beyond this (see `quota_bytes`).
pub const EMPTY_FILE_BYTES: u64 = 73_728;

/// What the state file would hold after a defragmentation, as far as its
/// rows say: the empty file, plus twice the rows' bytes (redb splits a full
/// leaf in two halves, and a tree written in key order, as the history is,
/// keeps its leaves about half full), never more than the file.
pub fn in_use_bytes(file_bytes: u64, row_bytes: u64) -> u64 {
    EMPTY_FILE_BYTES
        .saturating_add(row_bytes.saturating_mul(2))
        .min(file_bytes)
}

/// What the backend quota counts of a file of `file_bytes`: what it holds
/// beyond an empty file (`EMPTY_FILE_BYTES`).
pub fn quota_bytes(file_bytes: u64) -> u64 {
    file_bytes.saturating_sub(EMPTY_FILE_BYTES)
}

impl StateStore {
    /// Runs a write on the database, turning a panic of the engine (redb
    /// asserts on some damaged pages instead of returning an error) into
    /// corruption, so the member stops with a clear error instead of dying.
    fn guarded<T>(
        &mut self,
        at: &str,
        work: impl FnOnce(&mut Self) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let path = self.path.display().to_string();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(self)));
        self.measure();
        outcome.unwrap_or_else(|_| {
            self.poisoned = true;
            if let Some(db) = self.db.take() {
                std::mem::forget(db);
            }
            Err(StorageError::Corrupt {
                path,
                at: at.to_string(),
                reason: "the database engine panicked on damaged pages",
            })
        })
    }

    fn db(&self) -> Result<Arc<Database>, StorageError> {
        self.db.as_ref().map(current).ok_or(StorageError::Poisoned)
    }

    /// A consistent copy of the committed state (the Raft adapter reads
    /// through `reader`; tests take it in one call).
    #[cfg(test)]
    pub fn snapshot(&self) -> Result<SnapshotData, StorageError> {
        self.reader()?.snapshot()
    }

    /// Replaces the whole state with a snapshot's, durably, and returns the new
    /// keyspace (its values left in the store).
    pub fn install(&mut self, data: &SnapshotData) -> Result<KeySpace, StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned);
        }
        // A defragmentation's copy cannot follow a whole new state: give it up.
        self.journal = None;
        let result = self.guarded("installing a snapshot", |store| {
            let mut write = store.db()?.begin_write().map_err(StorageError::db)?;
            write
                .set_durability(Durability::Immediate)
                .map_err(StorageError::db)?;
            write.delete_table(HISTORY).map_err(StorageError::db)?;
            write.delete_table(LEASES).map_err(StorageError::db)?;
            {
                let mut leases = write.open_table(LEASES).map_err(StorageError::db)?;
                for lease in &data.leases {
                    let key = lease.id.to_be_bytes();
                    leases
                        .insert(key.as_slice(), encode_lease(lease)?.as_slice())
                        .map_err(StorageError::db)?;
                }
            }
            {
                let mut history = write.open_table(HISTORY).map_err(StorageError::db)?;
                for (key, record) in &data.records {
                    let row = history_key(key, record.revision);
                    let live = encode_live(&row, record)?;
                    history
                        .insert(row.as_slice(), live.as_slice())
                        .map_err(StorageError::db)?;
                }
                let mut table = write.open_table(META).map_err(StorageError::db)?;
                let encoded = encode_meta(&data.meta)?;
                table
                    .insert(META_KEY, encoded.as_slice())
                    .map_err(StorageError::db)?;
                table
                    .insert(AUTH_KEY, encode_auth(&data.auth)?.as_slice())
                    .map_err(StorageError::db)?;
                table
                    .insert(ALARMS_KEY, encode_alarms(&data.alarms)?.as_slice())
                    .map_err(StorageError::db)?;
            }
            write.commit().map_err(StorageError::db)
        });
        if result.is_err() {
            self.poisoned = true;
        }
        result?;
        self.recount()?;
        // The store holds every value durably now: none stays in memory.
        let records = data.records.iter().map(|(key, record)| {
            let mut record = record.clone();
            if let Some(live) = record.live.as_mut() {
                live.value = Value::Stored;
            }
            (key.clone(), record)
        });
        let mut key_space = KeySpace::restore(
            records,
            data.leases.iter().copied(),
            data.meta.revision,
            data.meta.compacted,
        );
        key_space.set_auth(data.auth.clone());
        key_space.set_alarms(data.alarms.clone());
        key_space.set_value_store(self.values()?);
        Ok(key_space)
    }

    /// Adds rows to the state of a member being restored from a snapshot
    /// (offline, on a fresh store): one transaction per call, not synced:
    /// `finish_restore` syncs them all. Memory stays one batch.
    pub fn restore_rows(
        &mut self,
        records: &[(Vec<u8>, Record)],
        leases: &[LeaseRecord],
    ) -> Result<(), StorageError> {
        let result = self.guarded("restoring a snapshot", |store| {
            let mut write = store.db()?.begin_write().map_err(StorageError::db)?;
            write
                .set_durability(Durability::None)
                .map_err(StorageError::db)?;
            {
                let mut history = write.open_table(HISTORY).map_err(StorageError::db)?;
                for (key, record) in records {
                    let row = history_key(key, record.revision);
                    let live = encode_live(&row, record)?;
                    history
                        .insert(row.as_slice(), live.as_slice())
                        .map_err(StorageError::db)?;
                }
                let mut table = write.open_table(LEASES).map_err(StorageError::db)?;
                for lease in leases {
                    let key = lease.id.to_be_bytes();
                    table
                        .insert(key.as_slice(), encode_lease(lease)?.as_slice())
                        .map_err(StorageError::db)?;
                }
            }
            write.commit().map_err(StorageError::db)
        });
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    /// Completes a restore: the metadata, auth state and alarms, and one
    /// synced commit that makes every restored row durable.
    pub fn finish_restore(
        &mut self,
        meta: &StateMeta,
        auth: &AuthState,
        alarms: &Alarms,
    ) -> Result<(), StorageError> {
        let result = self.guarded("restoring a snapshot", |store| {
            let mut write = store.db()?.begin_write().map_err(StorageError::db)?;
            write
                .set_durability(Durability::Immediate)
                .map_err(StorageError::db)?;
            {
                let mut table = write.open_table(META).map_err(StorageError::db)?;
                table
                    .insert(META_KEY, encode_meta(meta)?.as_slice())
                    .map_err(StorageError::db)?;
                table
                    .insert(AUTH_KEY, encode_auth(auth)?.as_slice())
                    .map_err(StorageError::db)?;
                table
                    .insert(ALARMS_KEY, encode_alarms(alarms)?.as_slice())
                    .map_err(StorageError::db)?;
            }
            write.commit().map_err(StorageError::db)
        });
        if result.is_err() {
            self.poisoned = true;
        }
        result?;
        self.recount()
    }

    /// Starts a defragmentation (etcd's: the state rewritten into a new file
    /// without the free pages deletes and compactions left): creates
    /// `state.redb.defrag` and a read of the state as it is now, which the
    /// returned copy writes out (`DefragCopy::copy`) while this store goes on
    /// committing. Every batch committed from now on is also kept in a journal
    /// (`take_journal`), to be written into the copy before
    /// `finish_defragment` swaps it in. Crash-safe: until the rename
    /// `state.redb` is the old file, whole; after it the new one, synced
    /// before; a leftover copy is truncated by the next run, never read.
    pub fn begin_defragment(&mut self) -> Result<DefragCopy, DefragError> {
        if self.poisoned {
            return Err(DefragError::Fatal(StorageError::Poisoned));
        }
        let path = self.path.with_extension("redb.defrag");
        let file = self
            .disk
            .open(&path)
            .and_then(|file| file.set_len(0).map(|()| file))
            .map_err(|e| DefragError::Abandoned(StorageError::io("create state.redb.defrag", e)))?;
        let cache = usize::try_from(self.cache_bytes).unwrap_or(usize::MAX);
        let db = Builder::new()
            .set_cache_size(cache)
            .create_with_backend(RedbBackend(file.clone()))
            .map_err(|e| DefragError::Abandoned(StorageError::db(e)))?;
        let old = self.db().map_err(DefragError::Fatal)?;
        let read = old
            .begin_read()
            .map_err(|e| DefragError::Fatal(read_error(&self.path, e.into())))?;
        self.journal = Some(Vec::new());
        Ok(DefragCopy {
            path,
            file,
            db,
            read,
            _old: old,
            before: self.file_bytes(),
        })
    }

    /// The batches committed since the defragmentation began or since the
    /// last call, for the copy to catch up with (`DefragCopy::replay`).
    pub fn take_journal(&mut self) -> Vec<(Vec<Change>, StateMeta)> {
        self.journal
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Stops keeping a journal: the defragmentation was given up (its copy
    /// is dropped; the old file serves on).
    pub fn abandon_defragment(&mut self) {
        self.journal = None;
    }

    /// Completes a defragmentation: writes the rest of the journal into the
    /// copy (synced), renames it over `state.redb`, swaps it in for every
    /// reader and syncs the directory. The caller holds the store, so nothing
    /// commits meanwhile. Returns the file's size before and after.
    pub fn finish_defragment(&mut self, copy: DefragCopy) -> Result<(u64, u64), DefragError> {
        if self.poisoned {
            return Err(DefragError::Fatal(StorageError::Poisoned));
        }
        let Some(journal) = self.journal.take() else {
            // A snapshot replaced the state during the copy (`install`).
            return Err(DefragError::Abandoned(StorageError::Database(
                "the state was replaced by a snapshot during the copy; run it again".to_string(),
            )));
        };
        let DefragCopy {
            path,
            file,
            db,
            read,
            _old,
            before,
        } = copy;
        drop(read);
        replay(&db, &journal, true).map_err(DefragError::Abandoned)?;
        self.disk
            .rename(&path, &self.path)
            .map_err(|e| DefragError::Abandoned(StorageError::io("rename state.redb.defrag", e)))?;
        // From here the new file is `state.redb`: a failure leaves the
        // directory entry's durability unknown, and the member must stop.
        let cell = self
            .db
            .as_ref()
            .ok_or(DefragError::Fatal(StorageError::Poisoned))?;
        *cell.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(db);
        self.file = file;
        self.measure();
        if let Some(dir) = self.path.parent()
            && let Err(e) = self.disk.sync_dir(dir)
        {
            self.poisoned = true;
            return Err(DefragError::Fatal(StorageError::io(
                "sync the data directory after defragmenting",
                e,
            )));
        }
        Ok((before, self.file_bytes()))
    }

    /// Size of the database file in bytes as of the last write (0 if it
    /// could not be read).
    pub fn file_bytes(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// The running count of the rows' bytes (`rows`).
    #[cfg(test)]
    pub(crate) fn counted_rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Records the file's size (after every write).
    fn measure(&self) {
        self.size
            .store(self.file.byte_len().unwrap_or(0), Ordering::Relaxed);
    }
}

/// Reads of the committed state beside the store (`StateStore::reads`);
/// clones share the database.
#[derive(Clone)]
pub struct StateReads {
    db: DbCell,
    size: Arc<AtomicU64>,
    rows: Arc<AtomicU64>,
    path: PathBuf,
}

impl std::fmt::Debug for StateReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateReads")
            .field("path", &self.path)
            .finish()
    }
}

impl StateReads {
    /// One consistent read of the committed state.
    pub fn reader(&self) -> Result<StateReader, StorageError> {
        let db = current(&self.db);
        let read = db
            .begin_read()
            .map_err(|e| read_error(&self.path, e.into()))?;
        Ok(StateReader {
            read,
            _db: db,
            path: self.path.clone(),
        })
    }

    /// Size of the database file in bytes as of the store's last write.
    pub fn file_bytes(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// etcd's `dbSizeInUse`: what the file would hold after a
    /// defragmentation, from its rows' bytes (`in_use_bytes`).
    pub fn in_use_bytes(&self) -> u64 {
        in_use_bytes(self.file_bytes(), self.rows.load(Ordering::Relaxed))
    }
}

/// A read error while loading: damaged pages are corruption, and so are a
/// table whose stored definition is not ours (the definitions are fixed for
/// a format version, which is checked first) and a page past the file's end;
/// the rest is I/O.
fn read_error(path: &Path, error: redb::Error) -> StorageError {
    match error {
        redb::Error::Corrupted(_) => corrupt(path, "the database engine found damaged pages"),
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_) => {
            corrupt(path, "a table's stored definition is damaged")
        }
        // redb reads only pages it was told exist: one past the end of the
        // file was pointed at by damaged bytes.
        redb::Error::Io(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            corrupt(path, "a page points past the end of the file")
        }
        other => StorageError::db(other),
    }
}

fn corrupt(path: &Path, reason: &'static str) -> StorageError {
    StorageError::Corrupt {
        path: path.display().to_string(),
        at: "loading the state".to_string(),
        reason,
    }
}

/// Why a defragmentation failed.
#[derive(Debug, thiserror::Error)]
pub enum DefragError {
    /// No copy was made (out of space, say): the old file serves on.
    #[error("defragment: {0}")]
    Abandoned(StorageError),
    /// The engine panicked on damaged pages, or the swap could not be made
    /// durable: the member must stop.
    #[error("defragment: {0}")]
    Fatal(StorageError),
}

/// A defragmentation's copy in progress (`StateStore::begin_defragment`).
pub struct DefragCopy {
    path: PathBuf,
    file: Arc<dyn DiskFile>,
    db: Database,
    /// The state as it was when the defragmentation began.
    read: redb::ReadTransaction,
    /// The database that read is on, kept open for it.
    _old: Arc<Database>,
    before: u64,
}

impl DefragCopy {
    /// Copies the state as it was when the defragmentation began (blocking;
    /// the store goes on committing meanwhile). The engine panicking on a
    /// damaged page of the old file is fatal; any other failure (out of
    /// space) gives the defragmentation up.
    pub fn copy(&self) -> Result<(), DefragError> {
        let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            copy_state(&self.read, &self.db)
        }));
        match copied {
            Ok(result) => result.map_err(DefragError::Abandoned),
            Err(_) => Err(DefragError::Fatal(StorageError::Corrupt {
                path: self.path.display().to_string(),
                at: "defragmenting".to_string(),
                reason: "the database engine panicked on damaged pages",
            })),
        }
    }

    /// Writes batches the store committed meanwhile into the copy (unsynced:
    /// `finish_defragment` syncs).
    pub fn replay(&self, batches: &[(Vec<Change>, StateMeta)]) -> Result<(), DefragError> {
        replay(&self.db, batches, false).map_err(DefragError::Abandoned)
    }
}

/// Writes journaled batches into `db`; with `sync`, the last commit (an empty
/// one if there are none) is durable.
fn replay(
    db: &Database,
    batches: &[(Vec<Change>, StateMeta)],
    sync: bool,
) -> Result<(), StorageError> {
    for (at, (changes, meta)) in batches.iter().enumerate() {
        write_batch(db, changes, meta, sync && at + 1 == batches.len())?;
    }
    if sync && batches.is_empty() {
        let mut write = db.begin_write().map_err(StorageError::db)?;
        write
            .set_durability(Durability::Immediate)
            .map_err(StorageError::db)?;
        write.commit().map_err(StorageError::db)?;
    }
    Ok(())
}

/// Rows, and bytes, in one transaction of a defragmentation copy: memory
/// stays one batch, whatever the size of the state.
const COPY_ROWS_MAX: usize = 10_000;
const COPY_BYTES_MAX: usize = 16 << 20;

/// Copies every table of `from` into the empty `to`, the last commit synced.
/// A table this build does not know is refused rather than dropped.
fn copy_state(read: &redb::ReadTransaction, to: &Database) -> Result<(), StorageError> {
    let known = [HISTORY.name(), LEASES.name(), FORMAT.name(), META.name()];
    for table in read.list_tables().map_err(StorageError::db)? {
        if !known.contains(&table.name()) {
            return Err(StorageError::Database(format!(
                "table {:?} unknown to this build; not defragmenting",
                table.name()
            )));
        }
    }
    copy_table(read, to, HISTORY)?;
    copy_table(read, to, LEASES)?;
    let mut write = to.begin_write().map_err(StorageError::db)?;
    write
        .set_durability(Durability::Immediate)
        .map_err(StorageError::db)?;
    for definition in [FORMAT, META] {
        let source = match read.open_table(definition) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(error) => return Err(StorageError::db(error)),
        };
        let mut target = write.open_table(definition).map_err(StorageError::db)?;
        for row in source.iter().map_err(StorageError::db)? {
            let (key, value) = row.map_err(StorageError::db)?;
            target
                .insert(key.value(), value.value())
                .map_err(StorageError::db)?;
        }
    }
    write.commit().map_err(StorageError::db)
}

/// Copies one table in transactions of at most `COPY_ROWS_MAX` rows or
/// `COPY_BYTES_MAX` bytes, each synced: the disk takes the copy a batch at a
/// time, so the member's own fsyncs (its Raft log) never queue behind the
/// whole copy's write-back at once.
fn copy_table(
    read: &redb::ReadTransaction,
    to: &Database,
    definition: TableDefinition<&[u8], &[u8]>,
) -> Result<(), StorageError> {
    let source = match read.open_table(definition) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(error) => return Err(StorageError::db(error)),
    };
    let mut after: Option<Vec<u8>> = None;
    loop {
        let mut write = to.begin_write().map_err(StorageError::db)?;
        write
            .set_durability(Durability::Immediate)
            .map_err(StorageError::db)?;
        let mut more = false;
        {
            let mut target = write.open_table(definition).map_err(StorageError::db)?;
            let rows = match &after {
                None => source.range::<&[u8]>(..),
                Some(last) => source.range::<&[u8]>((
                    std::ops::Bound::Excluded(last.as_slice()),
                    std::ops::Bound::Unbounded,
                )),
            }
            .map_err(StorageError::db)?;
            let (mut count, mut bytes) = (0, 0);
            for row in rows {
                let (key, value) = row.map_err(StorageError::db)?;
                target
                    .insert(key.value(), value.value())
                    .map_err(StorageError::db)?;
                count += 1;
                bytes += key.value().len() + value.value().len();
                if count >= COPY_ROWS_MAX || bytes >= COPY_BYTES_MAX {
                    after = Some(key.value().to_vec());
                    more = true;
                    break;
                }
            }
        }
        write.commit().map_err(StorageError::db)?;
        if !more {
            return Ok(());
        }
    }
}

/// Reads a value back from the history table (`ValueStore`): one read
/// transaction per value, on the database the store writes.
struct StoredValues {
    db: DbCell,
    path: PathBuf,
}

impl StoredValues {
    fn read(&self, key: &[u8], revision: Revision) -> Result<bytes::Bytes, StorageError> {
        // Held until the read ends: a defragmentation may swap the file meanwhile.
        let db = current(&self.db);
        let read = db
            .begin_read()
            .map_err(|e| read_error(&self.path, e.into()))?;
        let table = read
            .open_table(HISTORY)
            .map_err(|e| read_error(&self.path, e.into()))?;
        let row = history_key(key, revision);
        let sealed = table
            .get(row.as_slice())
            .map_err(|e| read_error(&self.path, e.into()))?
            .ok_or_else(|| corrupt(&self.path, "history row missing for a stored value"))?;
        let value = unseal(&row, sealed.value())
            .ok_or_else(|| corrupt(&self.path, "history row checksum mismatch"))?;
        let (live, _) =
            decode_live(value).ok_or_else(|| corrupt(&self.path, "undecodable history record"))?;
        match live.map(|live| live.value) {
            Some(Value::Inline(bytes)) => Ok(bytes),
            _ => Err(corrupt(&self.path, "history row without the value")),
        }
    }
}

impl ValueStore for StoredValues {
    fn value(&self, key: &[u8], revision: Revision) -> Result<bytes::Bytes, String> {
        // redb may panic on damaged pages: that is corruption, not a crash.
        let read =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.read(key, revision)));
        match read {
            Ok(result) => result.map_err(|error| error.to_string()),
            Err(_) => Err(format!(
                "corrupt data in {}: the database engine panicked on damaged pages",
                self.path.display()
            )),
        }
    }
}

/// Receives each history record with its user key.
pub type RecordVisitor<'a, E> = dyn FnMut(&[u8], Record) -> Result<(), E> + 'a;

/// Receives each history record with its user key and its row's bytes.
type RowVisitor<'a, E> = dyn FnMut(&[u8], Record, u64) -> Result<(), E> + 'a;

/// What one read of the store holds: metadata, records, leases.
type Parts = (
    StateMeta,
    Vec<(Vec<u8>, Record)>,
    Vec<LeaseRecord>,
    AuthState,
    Alarms,
);

/// One consistent read of the state store (see `StateStore::reader`).
pub struct StateReader {
    read: redb::ReadTransaction,
    /// The database the read is on, kept open for it: a defragmentation may
    /// swap the store's file while the read goes on (a snapshot being sent).
    _db: Arc<Database>,
    path: PathBuf,
}

impl StateReader {
    fn read_error(&self, error: redb::Error) -> StorageError {
        read_error(&self.path, error)
    }

    fn corrupt(&self, reason: &'static str) -> StorageError {
        corrupt(&self.path, reason)
    }

    /// The keyspace and metadata as of this read; with `values`, every value
    /// in memory, else every value left in the store (`Value::Stored`).
    pub fn load(&self, values: bool) -> Result<(KeySpace, StateMeta), StorageError> {
        self.load_counted(values)
            .map(|(key_space, meta, _)| (key_space, meta))
    }

    /// `load`, and the bytes of every row of the file (`row_bytes`).
    fn load_counted(&self, values: bool) -> Result<(KeySpace, StateMeta, u64), StorageError> {
        let ((meta, records, leases, auth, alarms), history) = self.parts(values)?;
        let rows = history.saturating_add(self.small_tables_bytes()?);
        let mut key_space = KeySpace::restore(records, leases, meta.revision, meta.compacted);
        key_space.set_auth(auth);
        key_space.set_alarms(alarms);
        Ok((key_space, meta, rows))
    }

    /// The metadata, every record (in the table's order: revision, then key)
    /// and every lease, as of this read; and the history rows' bytes.
    fn parts(&self, values: bool) -> Result<(Parts, u64), StorageError> {
        let mut records = Vec::new();
        let mut bytes = 0u64;
        self.visit_rows::<StorageError>(values, &mut |key, record, row| {
            records.push((key.to_vec(), record));
            bytes = bytes.saturating_add(row);
            Ok(())
        })?;
        Ok((
            (
                self.meta()?,
                records,
                self.leases()?,
                self.auth()?,
                self.alarms()?,
            ),
            bytes,
        ))
    }

    /// The bytes of every row of the file (`row_bytes`), read as stored.
    pub fn row_bytes(&self) -> Result<u64, StorageError> {
        let history = self.table_bytes(HISTORY)?;
        Ok(history.saturating_add(self.small_tables_bytes()?))
    }

    /// The bytes of the rows of every table but the history.
    fn small_tables_bytes(&self) -> Result<u64, StorageError> {
        let mut bytes = self.table_bytes(LEASES)?;
        for definition in [META, FORMAT] {
            let table = match self.read.open_table(definition) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => continue,
                Err(error) => return Err(self.read_error(error.into())),
            };
            for row in table.iter().map_err(|e| self.read_error(e.into()))? {
                let (key, value) = row.map_err(|e| self.read_error(e.into()))?;
                bytes = bytes.saturating_add(row_bytes(key.value().as_bytes(), value.value()));
            }
        }
        Ok(bytes)
    }

    fn table_bytes(&self, definition: TableDefinition<&[u8], &[u8]>) -> Result<u64, StorageError> {
        let table = match self.read.open_table(definition) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(error) => return Err(self.read_error(error.into())),
        };
        let mut bytes = 0u64;
        for row in table.iter().map_err(|e| self.read_error(e.into()))? {
            let (key, value) = row.map_err(|e| self.read_error(e.into()))?;
            bytes = bytes.saturating_add(row_bytes(key.value(), value.value()));
        }
        Ok(bytes)
    }

    /// A sealed row of `META`, decoded; `None` when absent.
    fn meta_row<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static str,
        what: &'static str,
    ) -> Result<Option<T>, StorageError> {
        match self.read.open_table(META) {
            Ok(table) => match table.get(key).map_err(|e| self.read_error(e.into()))? {
                Some(value) => {
                    let value =
                        unseal(key.as_bytes(), value.value()).ok_or_else(|| self.corrupt(what))?;
                    postcard::from_bytes(value)
                        .map(Some)
                        .map_err(|_| self.corrupt(what))
                }
                None => Ok(None),
            },
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(error) => Err(self.read_error(error.into())),
        }
    }

    /// The state metadata as of this read.
    pub fn meta(&self) -> Result<StateMeta, StorageError> {
        Ok(self
            .meta_row(META_KEY, "damaged state metadata")?
            .unwrap_or_default())
    }

    /// Users, roles and whether auth is on, as of this read.
    pub fn auth(&self) -> Result<AuthState, StorageError> {
        Ok(self
            .meta_row(AUTH_KEY, "damaged auth state")?
            .unwrap_or_default())
    }

    /// The raised alarms as of this read.
    pub fn alarms(&self) -> Result<Alarms, StorageError> {
        Ok(self
            .meta_row(ALARMS_KEY, "damaged alarms")?
            .unwrap_or_else(Alarms::new))
    }

    /// Every granted lease as of this read, by id.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, StorageError> {
        let mut leases = Vec::new();
        match self.read.open_table(LEASES) {
            Ok(table) => {
                for row in table.iter().map_err(|e| self.read_error(e.into()))? {
                    let (key, value) = row.map_err(|e| self.read_error(e.into()))?;
                    let value = unseal(key.value(), value.value())
                        .ok_or_else(|| self.corrupt("lease row checksum mismatch"))?;
                    let lease: LeaseRecord = postcard::from_bytes(value)
                        .map_err(|_| self.corrupt("undecodable lease"))?;
                    if key.value() != lease.id.to_be_bytes() {
                        return Err(self.corrupt("lease stored under another id"));
                    }
                    leases.push(lease);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(self.read_error(error.into())),
        }
        Ok(leases)
    }

    /// Visits every retained record (user key, record) in revision order,
    /// then key order within a revision (`Record::sub` says the order they
    /// were written in), one row in memory at a time; with
    /// `values` the values too, else `Value::Stored`.
    pub fn visit_records<E: From<StorageError>>(
        &self,
        values: bool,
        visit: &mut RecordVisitor<'_, E>,
    ) -> Result<(), E> {
        self.visit_rows(values, &mut |key, record, _| visit(key, record))
    }

    /// `visit_records`, each record with its row's bytes (`row_bytes`).
    fn visit_rows<E: From<StorageError>>(
        &self,
        values: bool,
        visit: &mut RowVisitor<'_, E>,
    ) -> Result<(), E> {
        let table = match self.read.open_table(HISTORY) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(error) => return Err(self.read_error(error.into()).into()),
        };
        let rows = table.iter().map_err(|e| self.read_error(e.into()))?;
        for row in rows {
            let (key, value) = row.map_err(|e| self.read_error(e.into()))?;
            let bytes = row_bytes(key.value(), value.value());
            let value = unseal(key.value(), value.value())
                .ok_or_else(|| self.corrupt("history row checksum mismatch"))?;
            let (user_key, revision) = split_history_key(key.value())
                .ok_or_else(|| self.corrupt("malformed history key"))?;
            let (mut live, sub) =
                decode_live(value).ok_or_else(|| self.corrupt("undecodable history record"))?;
            if !values && let Some(live) = live.as_mut() {
                live.value = Value::Stored;
            }
            visit(
                &user_key,
                Record {
                    revision,
                    live,
                    sub,
                },
                bytes,
            )?;
        }
        Ok(())
    }

    /// A consistent copy of the state as of this read, for a snapshot: the
    /// records as read (one copy of the values, no keyspace built), in key
    /// then revision order.
    pub fn snapshot(&self) -> Result<SnapshotData, StorageError> {
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.parts(true)));
        let ((meta, mut records, leases, auth, alarms), _) = read.unwrap_or_else(|_| {
            Err(StorageError::Corrupt {
                path: self.path.display().to_string(),
                at: "reading a snapshot".to_string(),
                reason: "the database engine panicked on damaged pages",
            })
        })?;
        records.sort_by(|(a, x), (b, y)| a.cmp(b).then(x.revision.cmp(&y.revision)));
        Ok(SnapshotData {
            format: SNAPSHOT_FORMAT,
            meta,
            records,
            leases,
            auth,
            alarms,
        })
    }
}

#[cfg(test)]
mod format_tests {
    use std::sync::Arc;

    use mainstay_mvcc::{ApplyContext, Command, KeySpace, PutRequest};
    use redb::Database;

    use super::*;
    use crate::disk::OsDisk;

    fn os() -> Arc<dyn Disk> {
        Arc::new(OsDisk)
    }

    #[test]
    fn a_rows_position_in_its_revision_round_trips_and_old_rows_read_as_0() {
        let live = Some(Live {
            create_revision: 2,
            version: 1,
            value: Value::Inline(b"v".to_vec().into()),
            lease: 0,
        });
        for sub in [0, 1, 300, u32::MAX] {
            let record = Record {
                revision: 2,
                live: live.clone(),
                sub,
            };
            let sealed = encode_live(b"row", &record).expect("encode");
            let value = unseal(b"row", &sealed).expect("seal");
            assert_eq!(decode_live(value), Some((live.clone(), sub)));
            // What a build without positions reads: the same `live`.
            let older: Option<Live> = postcard::from_bytes(value).expect("older reader");
            assert_eq!(older, live);
        }
        // A row written before positions were kept.
        let old = postcard::to_allocvec(&live).expect("encode");
        assert_eq!(decode_live(&old), Some((live.clone(), 0)));
        let mut trailing = old.clone();
        trailing.extend_from_slice(&[1, 2]);
        assert_eq!(decode_live(&trailing), None, "bytes after the position");
    }

    /// Rows as format 1 kept them: (user key ++ revision, sealed value).
    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    /// A keyspace with a few revisions of two keys, and the rows format 1 kept.
    fn format_1_rows() -> (KeySpace, Rows) {
        let mut space = KeySpace::new();
        let mut rows = Vec::new();
        for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
            let put = PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec().into(),
                ..PutRequest::default()
            };
            for change in space
                .apply(&Command::Put(put), &ApplyContext::default())
                .changes
            {
                if let Change::Append { key, record } = change {
                    let mut row = key.clone();
                    row.extend_from_slice(&record.revision.to_be_bytes());
                    let live = encode_live(&row, &record).expect("encode");
                    rows.push((row, live));
                }
            }
        }
        (space, rows)
    }

    #[test]
    fn a_format_1_file_is_migrated_and_keeps_its_keys() {
        // Goal: a data directory written before the format row existed (rows
        // keyed by user key) opens with the same keyspace, and is rewritten.
        let dir = tempfile::tempdir().expect("tempdir");
        let (space, rows) = format_1_rows();
        {
            let db = Database::create(dir.path().join("state.redb")).expect("create");
            let write = db.begin_write().expect("write");
            {
                let mut history = write.open_table(HISTORY_V1).expect("table");
                for (row, live) in &rows {
                    history
                        .insert(row.as_slice(), live.as_slice())
                        .expect("insert");
                }
                let mut meta = write.open_table(META).expect("meta");
                let encoded = encode_meta(&StateMeta {
                    revision: space.revision(),
                    ..StateMeta::default()
                })
                .expect("encode");
                meta.insert(META_KEY, encoded.as_slice()).expect("insert");
            }
            write.commit().expect("commit");
        }
        for _ in 0..2 {
            let (store, loaded, _) = StateStore::open(&os(), dir.path(), 1 << 20).expect("open");
            assert_eq!(
                loaded.materialized().expect("values"),
                space.materialized().expect("values")
            );
            let read = store.db().expect("db").begin_read().expect("read");
            assert!(
                matches!(
                    read.open_table(HISTORY_V1),
                    Err(redb::TableError::TableDoesNotExist(_))
                ),
                "the format 1 table is gone"
            );
        }
    }

    #[test]
    fn a_newer_format_is_refused() {
        // Goal: a file written by a newer build is never misread.
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Database::create(dir.path().join("state.redb")).expect("create");
            let write = db.begin_write().expect("write");
            {
                let mut format = write.open_table(FORMAT).expect("table");
                let sealed = seal(
                    FORMAT_KEY.as_bytes(),
                    (STATE_FORMAT + 1).to_be_bytes().to_vec(),
                );
                format
                    .insert(FORMAT_KEY, sealed.as_slice())
                    .expect("insert");
            }
            write.commit().expect("commit");
        }
        let error = StateStore::open(&os(), dir.path(), 1 << 20).expect_err("refused");
        assert!(
            matches!(
                error,
                StorageError::Format {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{error}"
        );
    }
}
