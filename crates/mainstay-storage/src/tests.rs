//! Log store and state store: what survives a reopen, and what a damaged file does.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use mainstay_mvcc::{
    ApplyContext, Command, KeySpace, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
};

use crate::*;

fn os() -> Arc<dyn Disk> {
    Arc::new(OsDisk)
}

/// The names of the log's segment files in `dir`, sorted.
fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|name| name.starts_with("raft"))
        .collect();
    names.sort();
    names
}

/// The newest segment of the log in `dir` (never a format-1 `raft.log`).
fn newest_segment(dir: &Path) -> std::path::PathBuf {
    let mut names = segment_names(dir);
    names.retain(|name| name.starts_with("raft-"));
    dir.join(names.pop().expect("a segment"))
}

fn entry(index: u64, term: u64) -> StoredEntry {
    StoredEntry {
        log_id: LogIdRecord {
            term,
            node_id: 1,
            index,
        },
        payload: format!("payload-{index}").into_bytes().into(),
    }
}

#[test]
fn log_survives_reopen() {
    // Goal: entries, vote, committed id, truncation and purge all replay.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, report) = LogStore::open(&os(), dir.path()).expect("open");
        assert_eq!(report, OpenReport::default());
        log.append((1..=5).map(|i| entry(i, 1)).collect())
            .expect("append");
        log.save_vote(VoteRecord {
            term: 2,
            node_id: Some(3),
            committed: true,
        })
        .expect("vote");
        log.truncate_from(4).expect("truncate");
        log.append(vec![entry(4, 2)]).expect("append");
        log.purge_upto(entry(1, 1).log_id).expect("purge");
        log.save_committed(Some(entry(3, 1).log_id))
            .expect("committed");
    }
    let (log, report) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(
        log.vote(),
        Some(VoteRecord {
            term: 2,
            node_id: Some(3),
            committed: true
        })
    );
    assert_eq!(log.committed(), Some(entry(3, 1).log_id));
    assert_eq!(log.purged(), Some(entry(1, 1).log_id));
    let entries = log.entries(0, 100);
    assert_eq!(entries, vec![entry(2, 1), entry(3, 1), entry(4, 2)]);
    assert_eq!(log.last_log_id(), Some(entry(4, 2).log_id));
}

#[test]
fn torn_tail_is_truncated() {
    // Goal: a half-written last record (crash mid-append) is cut off and the
    // store opens with everything before it.
    let dir = tempfile::tempdir().expect("tempdir");
    let length = {
        let (mut log, _) = LogStore::open(&os(), dir.path()).expect("open");
        log.append(vec![entry(1, 1), entry(2, 1)]).expect("append");
        log.append(vec![entry(3, 1)]).expect("append");
        log.newest_segment_bytes()
    };
    let path = newest_segment(dir.path());
    OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(length - 5)
        .expect("cut");
    let (mut log, report) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert!(report.torn_bytes > 0);
    assert_eq!(log.last_index(), Some(2));
    // Appending after the cut works and survives.
    log.append(vec![entry(3, 2)]).expect("append");
    drop(log);
    let (log, report) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(log.last_log_id(), Some(entry(3, 2).log_id));
}

#[test]
fn zeros_after_the_last_record_are_free_space() {
    // Goal: the log keeps zeros written ahead of its end (preallocation); they
    // are no torn write, and appends go into them, surviving a reopen.
    let dir = tempfile::tempdir().expect("tempdir");
    let length = {
        let (mut log, _) = LogStore::open(&os(), dir.path()).expect("open");
        log.append(vec![entry(1, 1)]).expect("append");
        log.newest_segment_bytes()
    };
    let path = newest_segment(dir.path());
    let file_length = std::fs::metadata(&path).expect("meta").len();
    assert!(file_length > length, "zeros written ahead");
    OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open")
        .write_all(&[0; 100])
        .expect("w");
    let (mut log, report) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(log.last_index(), Some(1));
    log.append(vec![entry(2, 1)]).expect("append");
    drop(log);
    assert_eq!(
        std::fs::metadata(&path).expect("meta").len(),
        file_length + 100,
        "the append went into the zeros"
    );
    let (log, report) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(log.entries(1, 3), vec![entry(1, 1), entry(2, 1)]);
}

#[test]
fn every_torn_prefix_of_the_last_record_is_cut() {
    // Goal: a crash that landed only part of the last record in the zeros ahead
    // of the end (any prefix, down to its first byte) is a torn write: cut with
    // a report, everything before it kept, the log writable again.
    let dir = tempfile::tempdir().expect("tempdir");
    let (start, end) = {
        let (mut log, _) = LogStore::open(&os(), dir.path()).expect("open");
        log.append(vec![entry(1, 1), entry(2, 1)]).expect("append");
        let start = log.newest_segment_bytes();
        log.append(vec![entry(3, 1)]).expect("append");
        (start, log.newest_segment_bytes())
    };
    let path = newest_segment(dir.path());
    let whole = std::fs::read(&path).expect("read");
    for landed in 0..end - start {
        let mut bytes = whole.clone();
        bytes[(start + landed) as usize..end as usize].fill(0);
        std::fs::write(&path, &bytes).expect("write");
        let (mut log, report) = LogStore::open(&os(), dir.path()).expect("a tear opens");
        assert_eq!(report.torn_bytes > 0, landed > 0, "landed {landed}");
        assert_eq!(log.last_index(), Some(2), "landed {landed}");
        log.append(vec![entry(3, 2)]).expect("append");
        drop(log);
        let (log, _) = LogStore::open(&os(), dir.path()).expect("reopen");
        assert_eq!(log.last_log_id(), Some(entry(3, 2).log_id));
    }
}

#[test]
fn records_without_a_trailer_are_still_read() {
    // Goal: a log written before records had a trailer opens unchanged, and
    // appends after it (with trailers) survive a reopen next to it.
    let dir = tempfile::tempdir().expect("tempdir");
    let old = crate::log_store::untrailed_entries_record(&[entry(1, 1), entry(2, 1)]);
    std::fs::write(dir.path().join("raft.log"), &old).expect("write");
    let (mut log, report) = LogStore::open(&os(), dir.path()).expect("open");
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(log.entries(1, 3), vec![entry(1, 1), entry(2, 1)]);
    log.append(vec![entry(3, 1)]).expect("append");
    drop(log);
    let (log, report) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(
        log.entries(1, 4),
        (1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>()
    );
}

#[test]
fn corruption_before_valid_records_refuses_to_start() {
    // Goal: a flipped bit in a record that is followed by valid records is not a
    // torn write: the store refuses to open instead of silently losing entries.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = LogStore::open(&os(), dir.path()).expect("open");
        log.append(vec![entry(1, 1)]).expect("append");
        log.append(vec![entry(2, 1)]).expect("append");
        log.append(vec![entry(3, 1)]).expect("append");
    }
    let path = newest_segment(dir.path());
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[14] ^= 0x40; // inside the first record's body
    std::fs::write(&path, &bytes).expect("write");
    let error = LogStore::open(&os(), dir.path()).expect_err("must refuse");
    assert!(
        matches!(&error, StorageError::Corrupt { at, .. } if at == "offset 0"),
        "{error}"
    );
    assert!(error.to_string().contains("refusing to start"));
}

#[test]
fn state_store_commits_and_reloads() {
    // Goal: the keyspace and metadata committed in one batch come back on reopen,
    // and a snapshot installs into a fresh store with an equal keyspace.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut space = KeySpace::new();
    let mut changes = Vec::new();
    for i in 0..10u8 {
        let put = PutRequest {
            key: vec![b'k', i],
            value: vec![i].into(),
            ..PutRequest::default()
        };
        changes.extend(
            space
                .apply(&Command::Put(put), &ApplyContext::default())
                .changes,
        );
    }
    let meta = StateMeta {
        applied: Some(LogIdRecord {
            term: 1,
            node_id: 1,
            index: 12,
        }),
        membership: vec![1, 2, 3],
        revision: space.revision(),
        compacted: 0,
    };
    {
        let (mut store, loaded, loaded_meta) =
            StateStore::open(&os(), dir.path(), 1 << 20).expect("open");
        assert_eq!(loaded.materialized().expect("values"), KeySpace::new());
        assert_eq!(loaded_meta, StateMeta::default());
        store.commit(&changes, &meta, true).expect("commit");
    }
    let (store, loaded, loaded_meta) =
        StateStore::open(&os(), dir.path(), 1 << 20).expect("reopen");
    assert_eq!(
        loaded.materialized().expect("values"),
        space.materialized().expect("values")
    );
    assert_eq!(loaded_meta, meta);
    let snapshot = store.snapshot().expect("snapshot");
    let decoded = SnapshotData::decode(&snapshot.encode().expect("encode")).expect("decode");
    assert_eq!(decoded, snapshot);
    let mut bad = snapshot.encode().expect("encode");
    bad[3] ^= 1;
    assert!(SnapshotData::decode(&bad).is_err());
    let other = tempfile::tempdir().expect("tempdir");
    let (mut fresh, _, _) = StateStore::open(&os(), other.path(), 1 << 20).expect("open");
    let installed = fresh.install(&decoded).expect("install");
    rows_counted_as_stored(&fresh);
    assert_eq!(
        installed.materialized().expect("values"),
        space.materialized().expect("values")
    );
    drop(fresh);
    let (_, reloaded, reloaded_meta) =
        StateStore::open(&os(), other.path(), 1 << 20).expect("reopen");
    assert_eq!(
        reloaded.materialized().expect("values"),
        space.materialized().expect("values")
    );
    assert_eq!(reloaded_meta, meta);
}

#[test]
fn an_fsync_failure_stops_the_store_for_good() {
    // Goal: after one failed fsync every later call fails (the caller stops the
    // member); nothing is retried, and what was durable before survives.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/m");
    let (mut log, _) = LogStore::open(&disk, dir).expect("open");
    log.append(vec![entry(1, 1)]).expect("append");
    mem.fail_syncs_under(dir);
    let error = log.append(vec![entry(2, 1)]).expect_err("fsync fails");
    assert!(error.to_string().contains("fsync"), "{error}");
    assert!(matches!(
        log.append(vec![entry(2, 1)]),
        Err(StorageError::Poisoned)
    ));
    assert!(matches!(
        log.save_vote(VoteRecord {
            term: 1,
            node_id: Some(1),
            committed: false
        }),
        Err(StorageError::Poisoned)
    ));
    drop(log);
    mem.crash(dir, &mut |_| 0);
    let (log, _) = LogStore::open(&disk, dir).expect("reopen");
    assert_eq!(log.last_index(), Some(1));
}

#[test]
fn large_and_small_appends_of_one_batch_keep_their_order() {
    // Goal: an append long enough to be written as it is (not copied into the
    // batch's buffer) lands between the small ones around it, and a synced
    // batch survives a crash whole.
    let mem = MemDisk::new();
    let dir = Path::new("/m");
    let mut log = mem_log(&mem, dir);
    let writer = log.writer();
    let big = |index: u64| StoredEntry {
        log_id: LogIdRecord {
            term: 1,
            node_id: 1,
            index,
        },
        payload: vec![index as u8; 40_000].into(),
    };
    let jobs = vec![
        log.stage_append(vec![entry(1, 1)]).expect("stage"),
        log.stage_append(vec![big(2)]).expect("stage"),
        log.stage_append(vec![entry(3, 1), big(4)]).expect("stage"),
        log.stage_append(vec![entry(5, 1)]).expect("stage"),
    ];
    writer
        .lock()
        .expect("writer")
        .write(&jobs, true)
        .expect("write");
    drop(log);
    mem.crash(dir, &mut |_| 0);
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let (log, report) = LogStore::open(&disk, dir).expect("reopen");
    assert_eq!(report.torn_bytes, 0);
    let expected = vec![entry(1, 1), big(2), entry(3, 1), big(4), entry(5, 1)];
    assert_eq!(log.entries(1, 6), expected);
}

#[test]
fn staged_jobs_are_durable_only_after_a_synced_write() {
    // Goal: the group-commit contract. Staged changes are readable at once; a
    // crash before a synced write loses them all (the file is a prefix of the
    // staged jobs), one synced write of many jobs keeps them all, and a committed
    // id written without its own fsync rides on the next one.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/m");
    let (mut log, _) = LogStore::open(&disk, dir).expect("open");
    let writer = log.writer();
    let first = log.stage_append(vec![entry(1, 1)]).expect("stage");
    let second = log.stage_append(vec![entry(2, 1)]).expect("stage");
    assert_eq!(log.last_index(), Some(2), "staged entries are readable");
    writer
        .lock()
        .expect("writer")
        .write(&[first, second], false)
        .expect("write");
    drop(log);
    mem.crash(dir, &mut |_| 0);
    let (mut log, _) = LogStore::open(&disk, dir).expect("reopen");
    assert_eq!(log.last_index(), None, "unsynced jobs are lost by a crash");

    let writer = log.writer();
    let mut jobs = vec![
        log.stage_append(vec![entry(1, 1), entry(2, 1)])
            .expect("stage"),
    ];
    jobs.extend(
        log.stage_committed(Some(entry(2, 1).log_id))
            .expect("stage"),
    );
    jobs.push(log.stage_truncate(2).expect("stage"));
    writer
        .lock()
        .expect("writer")
        .write(&jobs, false)
        .expect("write");
    let vote = VoteRecord {
        term: 2,
        node_id: Some(1),
        committed: false,
    };
    let job = log.stage_vote(vote).expect("stage");
    writer
        .lock()
        .expect("writer")
        .write(&[job], true)
        .expect("write");
    drop(log);
    mem.crash(dir, &mut |_| 0);
    let (log, _) = LogStore::open(&disk, dir).expect("reopen");
    assert_eq!(log.last_index(), Some(1), "the truncation survived");
    assert_eq!(log.committed(), Some(entry(2, 1).log_id));
    assert_eq!(log.vote(), Some(vote));
}

#[test]
fn a_job_joined_to_a_later_one_is_written_first_in_the_same_write() {
    // Goal: `LogJob::then` keeps staging order (the writer asserts offsets).
    // A committed id staged on its own and joined to the next staged append
    // goes down ahead of it, and the append's fsync makes both durable.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/j");
    let (mut log, _) = LogStore::open(&disk, dir).expect("open");
    let writer = log.writer();
    let first = log.stage_append(vec![entry(1, 1)]).expect("stage");
    writer
        .lock()
        .expect("writer")
        .write(&[first], true)
        .expect("write");
    let committed = log
        .stage_committed(Some(entry(1, 1).log_id))
        .expect("stage")
        .expect("a job");
    let append = log.stage_append(vec![entry(2, 1)]).expect("stage");
    writer
        .lock()
        .expect("writer")
        .write(&[committed.then(append)], true)
        .expect("write");
    drop(log);
    mem.crash(dir, &mut |_| 0);
    let (log, _) = LogStore::open(&disk, dir).expect("reopen");
    assert_eq!(log.committed(), Some(entry(1, 1).log_id));
    assert_eq!(log.last_index(), Some(2));
}

#[test]
fn only_durable_state_commits_survive_a_crash() {
    // Goal: a commit without durability is lost by a crash that drops unsynced
    // writes; a durable commit keeps itself and every commit before it.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/s");
    let meta_at = |index: u64, space: &KeySpace| StateMeta {
        applied: Some(LogIdRecord {
            term: 1,
            node_id: 1,
            index,
        }),
        membership: Vec::new(),
        revision: space.revision(),
        compacted: 0,
    };
    let put = |space: &mut KeySpace, key: &str| {
        space
            .apply(
                &Command::Put(PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: b"v".to_vec().into(),
                    ..PutRequest::default()
                }),
                &ApplyContext::default(),
            )
            .changes
    };
    let mut space = KeySpace::new();
    {
        let (mut store, _, _) = StateStore::open(&disk, dir, 1 << 20).expect("open");
        let changes = put(&mut space, "a");
        store
            .commit(&changes, &meta_at(1, &space), false)
            .expect("commit");
        let changes = put(&mut space, "b");
        store
            .commit(&changes, &meta_at(2, &space), true)
            .expect("commit");
        let changes = put(&mut space, "c");
        store
            .commit(&changes, &meta_at(3, &space), false)
            .expect("commit");
        // A crash, not a clean close (redb makes the state durable on close).
        std::mem::forget(store);
    }
    mem.crash(dir, &mut |_| 0);
    let (_, loaded, meta) = StateStore::open(&disk, dir, 1 << 20).expect("reopen");
    assert_eq!(meta.applied.map(|id| id.index), Some(2));
    assert_eq!(loaded.revision(), 3, "a and b survived, c did not");
}

fn mem_log(mem: &MemDisk, dir: &Path) -> LogStore {
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    LogStore::open(&disk, dir).expect("open").0
}

#[test]
fn a_crash_keeps_every_synced_write_and_a_prefix_of_the_rest() {
    // Goal: whatever a crash does to unsynced writes, synced ones survive; with a
    // disk that lies about fsync, a crash loses a suffix, may tear the last
    // surviving write, and the log still opens at a clean prefix.
    for keep in 0..6u64 {
        for tear in [0u64, 1] {
            let mem = MemDisk::new();
            let dir = Path::new("/m");
            let mut log = mem_log(&mem, dir);
            log.append((1..=3).map(|i| entry(i, 1)).collect())
                .expect("append");
            mem.lie_on_sync_of("raft-");
            for i in 4..=8 {
                log.append(vec![entry(i, 1)]).expect("append");
            }
            drop(log);
            let mut choices = vec![keep, tear, 7].into_iter();
            let report = mem.crash(dir, &mut |n| choices.next().unwrap_or(0).min(n - 1));
            assert_eq!(report.lost_ops, 5 - keep.min(5));
            let disk: Arc<dyn Disk> = Arc::new(mem.clone());
            let (log, open) = LogStore::open(&disk, dir).expect("reopen");
            assert_eq!(log.last_index(), Some(3 + keep.min(5)), "keep {keep}");
            assert_eq!(open.torn_bytes > 0, report.torn, "keep {keep} tear {tear}");
            assert_eq!(
                log.entries(1, 4),
                (1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn every_flipped_bit_in_the_log_is_refused() {
    // Goal: a bit flip anywhere in a synced log is corruption, never mistaken for a
    // torn tail (which would drop an acknowledged entry silently).
    let mem = MemDisk::new();
    let dir = Path::new("/m");
    let mut log = mem_log(&mem, dir);
    log.append(vec![entry(1, 1), entry(2, 1)]).expect("append");
    log.save_vote(VoteRecord {
        term: 1,
        node_id: Some(1),
        committed: true,
    })
    .expect("vote");
    log.append(vec![entry(3, 1)]).expect("append");
    let length = log.newest_segment_bytes();
    let path = log.segment_paths().pop().expect("a segment");
    drop(log);
    // Every record byte, the zeros just after them (where a torn write would
    // start) and some further into the free space.
    let offsets = (0..length + 64).chain([length + 1000, length + 50_000]);
    for offset in offsets {
        for bit in [0u64, 7] {
            let mut choices = vec![offset, bit].into_iter();
            mem.flip_bit(&path, &mut |_| choices.next().unwrap_or(0));
            mem.crash(dir, &mut |_| 0);
            let disk: Arc<dyn Disk> = Arc::new(mem.clone());
            let error = LogStore::open(&disk, dir).expect_err("a flip must be refused");
            assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
            let mut choices = vec![offset, bit].into_iter();
            mem.flip_bit(&path, &mut |_| choices.next().unwrap_or(0));
        }
    }
    assert_eq!(mem_log(&mem, dir).last_index(), Some(3));
}

/// A state store in `dir` holding one durable put of `value` at key `k`.
fn store_one_put(disk: &Arc<dyn Disk>, dir: &Path, value: &[u8]) {
    let mut space = KeySpace::new();
    let put = PutRequest {
        key: b"k".to_vec(),
        value: value.to_vec().into(),
        ..PutRequest::default()
    };
    let changes = space
        .apply(&Command::Put(put), &ApplyContext::default())
        .changes;
    let (mut store, _, _) = StateStore::open(disk, dir, 1 << 20).expect("open");
    let meta = StateMeta {
        revision: space.revision(),
        ..StateMeta::default()
    };
    store.commit(&changes, &meta, true).expect("commit");
}

#[test]
fn a_flipped_bit_in_a_stored_value_is_refused() {
    // Goal: the state store's row checksums catch a flipped bit in a value.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/m");
    let value = b"a-distinctive-value-0123456789".to_vec();
    store_one_put(&disk, dir, &value);
    let path = dir.join("state.redb");
    let image = mem.durable_image(&path).expect("image");
    let at = image
        .windows(value.len())
        .position(|w| w == value.as_slice())
        .expect("value stored verbatim") as u64;
    let mut choices = vec![at + 3, 2].into_iter();
    mem.flip_bit(&path, &mut |_| choices.next().unwrap_or(0));
    mem.crash(dir, &mut |_| 0);
    let error = StateStore::open(&disk, dir, 1 << 20).expect_err("must refuse");
    assert!(error.to_string().contains("refusing to start"), "{error}");
}

#[test]
fn a_data_directory_has_one_owner() {
    // Goal: a second log store on the same directory fails instead of interleaving.
    let dir = tempfile::tempdir().expect("tempdir");
    let (_log, _) = LogStore::open(&os(), dir.path()).expect("open");
    let error = LogStore::open(&os(), dir.path()).expect_err("locked");
    assert!(error.to_string().contains("in use"), "{error}");
}

#[test]
fn identity_round_trips_and_refuses_damage() {
    // Goal: the identity is absent until saved, then survives a crash; a flipped
    // bit is corruption.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/m");
    assert_eq!(Identity::load(&disk, dir).expect("load"), None);
    let identity = Identity {
        member_id: 7,
        cluster_id: 9,
    };
    identity.save(&disk, dir).expect("save");
    mem.crash(dir, &mut |_| 0);
    assert_eq!(Identity::load(&disk, dir).expect("load"), Some(identity));
    let mut choices = vec![0u64, 3].into_iter();
    mem.flip_bit(&dir.join("member.id"), &mut |_| choices.next().unwrap_or(0));
    assert!(matches!(
        Identity::load(&disk, dir),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn identity_interrupted_by_a_failing_fsync_is_absent_not_corrupt() {
    // Goal: a save whose fsync fails, then a crash that tears the unsynced
    // write, leaves no identity (the member starts afresh), never a damaged one
    // that refuses every later start; a later save works.
    // Pending: the truncation, then the write. Keep neither; or keep the
    // truncation and land 3 bytes of the write.
    for choices in [vec![0u64], vec![1, 1, 3]] {
        let mem = MemDisk::new();
        let disk: Arc<dyn Disk> = Arc::new(mem.clone());
        let dir = Path::new("/m");
        assert_eq!(Identity::load(&disk, dir).expect("load"), None);
        let identity = Identity {
            member_id: 7,
            cluster_id: 9,
        };
        mem.fail_syncs_under(dir);
        assert!(identity.save(&disk, dir).is_err());
        let mut choices = choices.into_iter();
        mem.crash(dir, &mut |n| {
            // Files with nothing pending ask for one of 1 choice: not consumed.
            if n > 1 {
                choices.next().unwrap_or(0).min(n - 1)
            } else {
                0
            }
        });
        mem.heal_syncs_under(dir);
        assert_eq!(Identity::load(&disk, dir).expect("load"), None);
        identity.save(&disk, dir).expect("save");
        mem.crash(dir, &mut |_| 0);
        assert_eq!(Identity::load(&disk, dir).expect("load"), Some(identity));
    }
}

#[test]
fn leases_persist_with_their_keys_and_travel_in_snapshots() {
    // Goal: a granted lease and its attached key survive a reopen and a snapshot
    // install; a revoke is persisted too (lease and key gone after reopen).
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/m");
    let mut space = KeySpace::new();
    let context = ApplyContext {
        log_index: 3,
        prev_values: false,
    };
    let mut changes = space
        .apply(
            &Command::LeaseGrant(LeaseGrantRequest { id: 77, ttl: 30 }),
            &context,
        )
        .changes;
    let put = PutRequest {
        key: b"held".to_vec(),
        value: b"v".to_vec().into(),
        lease: 77,
        ..PutRequest::default()
    };
    changes.extend(space.apply(&Command::Put(put), &context).changes);
    let meta = |space: &KeySpace| StateMeta {
        revision: space.revision(),
        ..StateMeta::default()
    };
    {
        let (mut store, _, _) = StateStore::open(&disk, dir, 1 << 20).expect("open");
        store.commit(&changes, &meta(&space), true).expect("commit");
    }
    mem.crash(dir, &mut |_| 0);
    let (mut store, loaded, _) = StateStore::open(&disk, dir, 1 << 20).expect("reopen");
    assert_eq!(
        loaded.materialized().expect("values"),
        space.materialized().expect("values")
    );
    assert_eq!(loaded.lease_keys(77), vec![b"held".to_vec()]);
    let snapshot = store.snapshot().expect("snapshot");
    assert_eq!(snapshot.leases.len(), 1);
    let other = Path::new("/other");
    let (mut fresh, _, _) = StateStore::open(&disk, other, 1 << 20).expect("open");
    let decoded = SnapshotData::decode(&snapshot.encode().expect("encode")).expect("decode");
    assert_eq!(
        fresh
            .install(&decoded)
            .expect("install")
            .materialized()
            .expect("values"),
        space.materialized().expect("values")
    );

    let revoke = space.apply(
        &Command::LeaseRevoke(LeaseRevokeRequest { id: 77 }),
        &context,
    );
    store
        .commit(&revoke.changes, &meta(&space), true)
        .expect("commit");
    rows_counted_as_stored(&store);
    drop(store);
    mem.crash(dir, &mut |_| 0);
    let (_, loaded, _) = StateStore::open(&disk, dir, 1 << 20).expect("reopen");
    assert_eq!(
        loaded.materialized().expect("values"),
        space.materialized().expect("values")
    );
    assert_eq!(loaded.lease(77), None);
    assert!(
        loaded
            .get(b"held", loaded.revision())
            .expect("readable")
            .is_none()
    );
}

/// The store's running count of its rows' bytes equals a count of the rows
/// as stored.
fn rows_counted_as_stored(store: &StateStore) {
    let stored = store.reader().expect("reader").row_bytes().expect("count");
    assert_eq!(store.counted_rows(), stored, "rows counted by the commits");
}

#[test]
fn in_use_and_quota_bytes_leave_out_the_empty_file() {
    // Goal: dbSizeInUse is the empty file plus twice the rows (half-full
    // leaves), never above the file; the quota counts what the file holds
    // beyond an empty one.
    let empty = EMPTY_FILE_BYTES;
    for (file, rows, in_use) in [
        (empty, 0, empty),
        (empty, 100, empty),
        (1 << 20, 100, empty + 200),
        (1 << 20, 1 << 20, 1 << 20),
        (u64::MAX, u64::MAX, u64::MAX),
    ] {
        assert_eq!(in_use_bytes(file, rows), in_use, "file {file}, rows {rows}");
    }
    for (file, counted) in [
        (0, 0),
        (empty, 0),
        (empty + 1, 1),
        (1 << 20, (1 << 20) - empty),
    ] {
        assert_eq!(quota_bytes(file), counted, "file {file}");
    }
}

#[test]
fn defragmenting_shrinks_the_file_and_keeps_every_row() {
    // Goal: after deletes and a compaction leave free pages, defragmenting
    // gives a smaller file with the same state; readers made before the swap
    // (a value store, an open read) keep working; writes after it land in the
    // new file and survive a crash; a leftover copy from a crashed
    // defragmentation is neither read nor in the way.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/d");
    let meta_of = |index: u64, space: &KeySpace| StateMeta {
        applied: Some(LogIdRecord {
            term: 1,
            node_id: 1,
            index,
        }),
        membership: vec![1],
        revision: space.revision(),
        compacted: space.compacted_revision(),
    };
    let apply = |space: &mut KeySpace, command: Command| {
        space.apply(&command, &ApplyContext::default()).changes
    };
    let put = |key: usize, fill: u8| {
        Command::Put(PutRequest {
            key: format!("key/{key:05}").into_bytes(),
            value: vec![fill; 1024].into(),
            ..PutRequest::default()
        })
    };
    // A leftover of a defragmentation cut short: garbage, never opened as state.
    disk.create_dir_all(dir).expect("dir");
    disk.open(&dir.join("state.redb.defrag"))
        .and_then(|file| file.write_at(0, b"not a database"))
        .expect("leftover");
    let (mut store, _, _) = StateStore::open(&disk, dir, 1 << 20).expect("open");
    assert_eq!(
        store.file_bytes(),
        EMPTY_FILE_BYTES,
        "an empty state file is EMPTY_FILE_BYTES (the engine's own layout)"
    );
    rows_counted_as_stored(&store);
    let mut space = KeySpace::new();
    let mut index = 0;
    for round in 0..4u8 {
        let mut changes = Vec::new();
        for key in 0..1000 {
            changes.extend(apply(&mut space, put(key, round)));
        }
        index += 1;
        store
            .commit(&changes, &meta_of(index, &space), true)
            .expect("commit");
    }
    let latest = space.revision();
    let changes = apply(
        &mut space,
        Command::Compact(mainstay_mvcc::CompactionRequest {
            revision: latest,
            physical: true,
        }),
    );
    index += 1;
    store
        .commit(&changes, &meta_of(index, &space), true)
        .expect("commit compaction");
    rows_counted_as_stored(&store);
    let values = store.values().expect("values");
    let open_read = store.reader().expect("reader");
    let (old_state, _) = store.reader().expect("reader").load(true).expect("load");

    // Commits go on while the copy is made: one before the copy, one after
    // the journal was taken once, both in the new file after the swap.
    let copy = store.begin_defragment().expect("begin");
    let changes = apply(&mut space, put(5000, 8));
    index += 1;
    store
        .commit(&changes, &meta_of(index, &space), true)
        .expect("commit during the copy");
    copy.copy().expect("copy");
    copy.replay(&store.take_journal()).expect("catch up");
    let changes = apply(&mut space, put(5001, 9));
    index += 1;
    store
        .commit(&changes, &meta_of(index, &space), true)
        .expect("commit after catching up");
    let (state, meta) = store.reader().expect("reader").load(true).expect("load");
    let in_use = store.reads().expect("reads").in_use_bytes();
    let (before, after) = store.finish_defragment(copy).expect("defragment");
    assert!(
        after * 2 < before,
        "the copy drops the compacted history's pages: {before} -> {after} bytes"
    );
    // dbSizeInUse said, before the swap, about what the copy came to.
    assert!(
        in_use * 4 >= after * 3 && in_use * 3 <= after * 4,
        "in use {in_use} bytes before defragmenting, {after} after"
    );
    assert_eq!(store.reads().expect("reads").in_use_bytes(), in_use);
    rows_counted_as_stored(&store);
    assert_eq!(store.file_bytes(), after);
    let (copied, copied_meta) = store.reader().expect("reader").load(true).expect("load");
    assert_eq!(copied, state, "every row copied");
    assert_eq!(copied_meta, meta);
    let (old_view, _) = open_read.load(true).expect("a read begun before the swap");
    assert_eq!(old_view, old_state);
    assert_eq!(meta.applied.map(|id| id.index), Some(index));
    let revision = latest;
    assert_eq!(
        values.value(b"key/00999", revision).expect("value"),
        vec![3; 1024],
        "a value store made before the swap reads the new file"
    );

    let changes = apply(&mut space, put(7, 9));
    index += 1;
    store
        .commit(&changes, &meta_of(index, &space), true)
        .expect("commit after defragmenting");
    std::mem::forget(store);
    mem.power_off(dir);
    mem.crash(dir, &mut |_| 0);
    let (reopened, loaded, loaded_meta) = StateStore::open(&disk, dir, 1 << 20).expect("reopen");
    rows_counted_as_stored(&reopened);
    assert_eq!(loaded_meta.applied.map(|id| id.index), Some(index));
    assert_eq!(loaded.revision(), space.revision());
    assert_eq!(
        loaded.materialized().expect("values"),
        space.materialized().expect("values"),
        "the defragmented file and the write after it survive a crash"
    );
}

#[test]
fn a_snapshot_installed_during_a_defragmentation_gives_it_up() {
    // Goal: the copy follows commits (journal), not a whole new state; a
    // snapshot installed meanwhile makes finishing refuse, leaving the
    // installed state in the old file, which serves on.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/i");
    let (mut store, _, _) = StateStore::open(&disk, dir, 1 << 20).expect("open");
    let mut space = KeySpace::new();
    let changes = space
        .apply(
            &Command::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec().into(),
                ..PutRequest::default()
            }),
            &ApplyContext::default(),
        )
        .changes;
    let meta = StateMeta {
        applied: Some(LogIdRecord {
            term: 1,
            node_id: 1,
            index: 1,
        }),
        membership: vec![1],
        revision: space.revision(),
        compacted: 0,
    };
    store.commit(&changes, &meta, true).expect("commit");
    let snapshot = store.snapshot().expect("snapshot");
    let copy = store.begin_defragment().expect("begin");
    copy.copy().expect("copy");
    store.install(&snapshot).expect("install");
    let error = store.finish_defragment(copy).expect_err("must give up");
    assert!(matches!(error, DefragError::Abandoned(_)), "{error}");
    let (loaded, _) = store.reader().expect("reader").load(true).expect("load");
    assert_eq!(loaded.revision(), space.revision());
}

#[test]
fn a_damaged_table_definition_is_refused_as_corruption() {
    // Goal: a flipped bit in the page where the state database describes its
    // tables (names, stored key and value types, widths, alignments, page
    // pointers) either changes nothing redb reads back or is refused as
    // corruption, never reported as a plain database failure (the simulator
    // found one, seed 84: a member stopped instead of refusing). Method: every
    // bit of that page, flipped in turn.
    let mem = MemDisk::new();
    let disk: Arc<dyn Disk> = Arc::new(mem.clone());
    let dir = Path::new("/m");
    store_one_put(&disk, dir, b"v");
    let path = dir.join("state.redb");
    let image = mem.durable_image(&path).expect("image");
    let name = b"kv_by_revision";
    let at = image
        .windows(name.len())
        .position(|w| w == name.as_slice())
        .expect("the table's name is stored") as u64;
    let mut other_errors = Vec::new();
    let page = at & !4095;
    for offset in page..page + 4096 {
        for bit in 0..8u64 {
            let mut choices = vec![offset, bit].into_iter();
            mem.flip_bit(&path, &mut |_| choices.next().unwrap_or(0));
            mem.crash(dir, &mut |_| 0);
            match StateStore::open(&disk, dir, 1 << 20) {
                Ok(_) | Err(StorageError::Corrupt { .. }) => {}
                Err(error) => other_errors.push(format!("byte {offset} bit {bit}: {error}")),
            }
            let mut choices = vec![offset, bit].into_iter();
            mem.flip_bit(&path, &mut |_| choices.next().unwrap_or(0));
            mem.crash(dir, &mut |_| 0);
        }
    }
    assert!(other_errors.is_empty(), "{other_errors:#?}");
}

#[test]
fn segments_roll_over_and_a_purge_removes_whole_ones() {
    // Goal: a full segment is followed by a new one whose header carries the
    // vote, committed id and purge point; a purge removes the oldest segments
    // it covers and nothing else; everything replays, with any segment size.
    let dir = tempfile::tempdir().expect("tempdir");
    let vote = VoteRecord {
        term: 3,
        node_id: Some(2),
        committed: true,
    };
    {
        let (mut log, _) = LogStore::open_with(&os(), dir.path(), 200).expect("open");
        for i in 1..=40 {
            log.append(vec![entry(i, 1)]).expect("append");
            if i == 7 {
                log.save_vote(vote).expect("vote");
                log.save_committed(Some(entry(5, 1).log_id))
                    .expect("committed");
            }
        }
        let names = segment_names(dir.path());
        assert!(names.len() >= 8, "{names:?}");
        assert_eq!(names[0], "raft-0000000000000001.log");
        assert_eq!(
            log.segment_paths()
                .iter()
                .map(|p| p.file_name().expect("name").to_string_lossy().to_string())
                .collect::<Vec<_>>(),
            names
        );
        let sizes: u64 = names
            .iter()
            .map(|n| std::fs::metadata(dir.path().join(n)).expect("meta").len())
            .sum();
        assert!(sizes >= log.file_bytes(), "preallocated zeros only add");

        log.purge_upto(entry(20, 1).log_id).expect("purge");
        let kept = segment_names(dir.path());
        assert!(kept.len() < names.len(), "{kept:?}");
        assert_eq!(kept, names[names.len() - kept.len()..], "the oldest went");
        // Every entry after the purge point is still on disk: the oldest kept
        // segment starts at or before entry 21.
        drop(log);
        let (log, report) = LogStore::open(&os(), dir.path()).expect("reopen");
        assert_eq!(report.torn_bytes, 0);
        assert_eq!(report.segments, kept.len() as u64);
        assert_eq!(log.vote(), Some(vote));
        assert_eq!(log.committed(), Some(entry(5, 1).log_id));
        assert_eq!(log.purged(), Some(entry(20, 1).log_id));
        assert_eq!(
            log.entries(0, 100),
            (21..=40).map(|i| entry(i, 1)).collect::<Vec<_>>()
        );
    }
    // Purging everything keeps the newest segment, whose header is the state.
    let (mut log, _) = LogStore::open_with(&os(), dir.path(), 200).expect("reopen");
    log.purge_upto(entry(40, 1).log_id).expect("purge");
    log.append(vec![entry(41, 2)]).expect("append");
    log.purge_upto(entry(41, 2).log_id).expect("purge");
    assert_eq!(segment_names(dir.path()).len(), 1);
    drop(log);
    let (log, _) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert_eq!(log.vote(), Some(vote));
    assert_eq!(log.last_log_id(), Some(entry(41, 2).log_id));
    assert_eq!(log.entries(0, 100), vec![]);
}

#[test]
fn a_format_1_log_is_read_and_removed_once_purged() {
    // Goal: a data directory written before segments (one `raft.log`) opens
    // with everything in it; new records go to segment 1; a purge covering
    // the old file removes it.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut old = crate::log_store::untrailed_entries_record(&[entry(1, 1), entry(2, 1)]);
    old.extend_from_slice(&[0; 4096]);
    std::fs::write(dir.path().join("raft.log"), &old).expect("write");
    let (mut log, report) = LogStore::open(&os(), dir.path()).expect("open");
    assert_eq!(report.segments, 1);
    assert_eq!(
        segment_names(dir.path()),
        ["raft-0000000000000001.log", "raft.log"]
    );
    log.append(vec![entry(3, 1)]).expect("append");
    drop(log);
    let (mut log, _) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert_eq!(
        log.entries(1, 4),
        (1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>()
    );
    log.purge_upto(entry(1, 1).log_id).expect("purge");
    assert!(dir.path().join("raft.log").exists(), "entry 2 still in it");
    log.purge_upto(entry(2, 1).log_id).expect("purge");
    assert_eq!(segment_names(dir.path()), ["raft-0000000000000001.log"]);
    drop(log);
    let (log, _) = LogStore::open(&os(), dir.path()).expect("reopen");
    assert_eq!(log.entries(1, 4), vec![entry(3, 1)]);
    assert_eq!(log.purged(), Some(entry(2, 1).log_id));
}

#[test]
fn a_missing_or_newer_segment_is_refused() {
    // Goal: a segment missing between two others, a segment of a newer
    // format, and an empty segment before the newest are never read past.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = LogStore::open_with(&os(), dir.path(), 100).expect("open");
        for i in 1..=10 {
            log.append(vec![entry(i, 1)]).expect("append");
        }
    }
    let names = segment_names(dir.path());
    assert!(names.len() >= 4, "{names:?}");
    let middle = dir.path().join(&names[1]);
    let saved = std::fs::read(&middle).expect("read");

    std::fs::remove_file(&middle).expect("remove");
    let error = LogStore::open(&os(), dir.path()).expect_err("a hole");
    assert!(
        matches!(&error, StorageError::Corrupt { reason, .. } if reason.contains("missing")),
        "{error}"
    );

    std::fs::write(&middle, []).expect("empty");
    let error = LogStore::open(&os(), dir.path()).expect_err("an empty old segment");
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");

    let seq = 2;
    let mut newer = crate::log_store::segment_head_record(LOG_FORMAT + 1, seq);
    newer.extend_from_slice(&saved[newer.len()..]);
    std::fs::write(&middle, &newer).expect("newer");
    let error = LogStore::open(&os(), dir.path()).expect_err("a newer format");
    assert!(
        matches!(error, StorageError::Format { found, supported, .. }
            if found == LOG_FORMAT + 1 && supported == LOG_FORMAT),
        "{error}"
    );

    std::fs::write(&middle, &saved).expect("restore");
    let (log, _) = LogStore::open(&os(), dir.path()).expect("whole again");
    assert_eq!(log.last_index(), Some(10));
}

#[test]
fn a_newest_segment_without_a_header_starts_again() {
    // Goal: a crash in a roll-over can leave the next segment empty or with
    // part of its header: nothing in it was acknowledged, so it is removed,
    // started again, and the log goes on.
    let dir = tempfile::tempdir().expect("tempdir");
    let newest = {
        let (mut log, _) = LogStore::open(&os(), dir.path()).expect("open");
        log.append((1..=3).map(|i| entry(i, 1)).collect())
            .expect("append");
        newest_segment(dir.path())
    };
    let next = dir.path().join("raft-0000000000000002.log");
    let header = crate::log_store::segment_head_record(LOG_FORMAT, 2);
    for landed in [0, 1, 5, header.len() - 1] {
        let mut bytes = header[..landed].to_vec();
        bytes.extend_from_slice(&[0; 100]);
        std::fs::write(&next, &bytes).expect("torn roll-over");
        let (mut log, _) = LogStore::open(&os(), dir.path()).expect("opens");
        assert_eq!(log.last_index(), Some(3), "landed {landed}");
        assert_eq!(newest_segment(dir.path()), next, "started again");
        log.append(vec![entry(4, 1)]).expect("append");
        drop(log);
        let (log, report) = LogStore::open(&os(), dir.path()).expect("reopen");
        assert_eq!(report.torn_bytes, 0);
        assert_eq!(log.last_index(), Some(4));
        drop(log);
        // Back to one segment (and entry 4 with it) for the next round.
        std::fs::remove_file(&next).expect("remove");
        assert_eq!(newest_segment(dir.path()), newest);
    }
    // Alone, an empty first segment is a crash while the log was created;
    // an empty later one means the segments before it are lost.
    let fresh = tempfile::tempdir().expect("tempdir");
    std::fs::write(fresh.path().join("raft-0000000000000001.log"), []).expect("empty");
    let (log, _) = LogStore::open(&os(), fresh.path()).expect("a new log");
    assert_eq!(log.last_index(), None);
    drop(log);
    let lost = tempfile::tempdir().expect("tempdir");
    std::fs::write(lost.path().join("raft-0000000000000003.log"), []).expect("empty");
    let error = LogStore::open(&os(), lost.path()).expect_err("lost segments");
    assert!(matches!(error, StorageError::Corrupt { .. }), "{error}");
}

#[test]
fn a_crash_anywhere_in_rolls_and_purges_leaves_a_staged_state() {
    // Goal: with tiny segments (a roll-over every few jobs) and jobs written
    // with and without fsync, a crash at any point leaves a log that opens
    // as one of the states staged since the last fsync, and goes on.
    type State = (Vec<StoredEntry>, Option<VoteRecord>, Option<LogIdRecord>);
    let state = |log: &LogStore| -> State { (log.entries(0, u64::MAX), log.vote(), log.purged()) };
    for seed in 1..=400u64 {
        let mut random = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            random % n.max(1)
        };
        let mem = MemDisk::new();
        let dir = Path::new("/m");
        let disk: Arc<dyn Disk> = Arc::new(mem.clone());
        let (mut log, _) = LogStore::open_with(&disk, dir, 256).expect("open");
        let writer = log.writer();
        let mut possible = vec![state(&log)];
        let mut term = 1;
        for _ in 0..30 {
            let last = log.last_index().unwrap_or(0);
            let first = log.purged().map_or(1, |p| p.index + 1);
            let job = match next(10) {
                0..=5 => {
                    let count = 1 + next(3);
                    log.stage_append((last + 1..=last + count).map(|i| entry(i, term)).collect())
                }
                6 => {
                    term += 1;
                    log.stage_vote(VoteRecord {
                        term,
                        node_id: Some(1),
                        committed: false,
                    })
                }
                7 if last > first => log.stage_truncate(last - next(2)),
                8 | 9 if last >= first => {
                    let upto = first + next(last - first + 1);
                    let id = log.entries(upto, upto + 1)[0].log_id;
                    log.stage_purge(id)
                }
                _ => continue,
            }
            .expect("stage");
            let sync = next(3) == 0;
            writer
                .lock()
                .expect("writer")
                .write(&[job], sync)
                .expect("write");
            if sync {
                possible.clear();
            }
            possible.push(state(&log));
        }
        drop(log);
        mem.crash(dir, &mut next);
        let (mut log, _) = LogStore::open_with(&disk, dir, 256)
            .unwrap_or_else(|e| panic!("seed {seed}: a crash left a log that does not open: {e}"));
        assert!(possible.contains(&state(&log)), "seed {seed}");
        let last = log.last_index().unwrap_or(0);
        log.append(vec![entry(last + 1, 99)]).expect("append");
        drop(log);
        let (log, _) = LogStore::open_with(&disk, dir, 256).expect("reopen");
        assert_eq!(
            log.last_log_id(),
            Some(entry(last + 1, 99).log_id),
            "seed {seed}"
        );
    }
}
