//! Log store and state store: what survives a reopen, and what a damaged file does.

use std::fs::OpenOptions;
use std::io::Write;

use mainstay_mvcc::{Command, KeySpace, PutRequest};

use crate::*;

fn entry(index: u64, term: u64) -> StoredEntry {
    StoredEntry {
        log_id: LogIdRecord {
            term,
            node_id: 1,
            index,
        },
        payload: format!("payload-{index}").into_bytes(),
    }
}

#[test]
fn log_survives_reopen() {
    // Goal: entries, vote, committed id, truncation and purge all replay.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, report) = LogStore::open(dir.path()).expect("open");
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
    let (log, report) = LogStore::open(dir.path()).expect("reopen");
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
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        log.append(vec![entry(1, 1), entry(2, 1)]).expect("append");
        log.append(vec![entry(3, 1)]).expect("append");
    }
    let path = dir.path().join("raft.log");
    let length = std::fs::metadata(&path).expect("meta").len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(length - 5)
        .expect("cut");
    let (mut log, report) = LogStore::open(dir.path()).expect("reopen");
    assert!(report.torn_bytes > 0);
    assert_eq!(log.last_index(), Some(2));
    // Appending after the cut works and survives.
    log.append(vec![entry(3, 2)]).expect("append");
    drop(log);
    let (log, report) = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(report.torn_bytes, 0);
    assert_eq!(log.last_log_id(), Some(entry(3, 2).log_id));
}

#[test]
fn garbage_appended_is_a_torn_tail() {
    // Goal: trailing garbage with no valid record after it counts as torn.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        log.append(vec![entry(1, 1)]).expect("append");
    }
    let path = dir.path().join("raft.log");
    OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open")
        .write_all(&[0; 100])
        .expect("w");
    let (log, report) = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(report.torn_bytes, 100);
    assert_eq!(log.last_index(), Some(1));
}

#[test]
fn corruption_before_valid_records_refuses_to_start() {
    // Goal: a flipped bit in a record that is followed by valid records is not a
    // torn write: the store refuses to open instead of silently losing entries.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (mut log, _) = LogStore::open(dir.path()).expect("open");
        log.append(vec![entry(1, 1)]).expect("append");
        log.append(vec![entry(2, 1)]).expect("append");
        log.append(vec![entry(3, 1)]).expect("append");
    }
    let path = dir.path().join("raft.log");
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[14] ^= 0x40; // inside the first record's body
    std::fs::write(&path, &bytes).expect("write");
    let error = LogStore::open(dir.path()).expect_err("must refuse");
    assert!(
        matches!(error, StorageError::Corrupt { offset: 0, .. }),
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
            value: vec![i],
            ..PutRequest::default()
        };
        changes.extend(space.apply(&Command::Put(put), &|_| false).changes);
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
        let (mut store, loaded, loaded_meta) = StateStore::open(dir.path()).expect("open");
        assert_eq!(loaded, KeySpace::new());
        assert_eq!(loaded_meta, StateMeta::default());
        store.commit(&changes, &meta).expect("commit");
    }
    let (store, loaded, loaded_meta) = StateStore::open(dir.path()).expect("reopen");
    assert_eq!(loaded, space);
    assert_eq!(loaded_meta, meta);
    let snapshot = store.snapshot().expect("snapshot");
    let decoded = SnapshotData::decode(&snapshot.encode().expect("encode")).expect("decode");
    assert_eq!(decoded, snapshot);
    let mut bad = snapshot.encode().expect("encode");
    bad[3] ^= 1;
    assert!(SnapshotData::decode(&bad).is_err());
    let other = tempfile::tempdir().expect("tempdir");
    let (mut fresh, _, _) = StateStore::open(other.path()).expect("open");
    let installed = fresh.install(&decoded).expect("install");
    assert_eq!(installed, space);
    drop(fresh);
    let (_, reloaded, reloaded_meta) = StateStore::open(other.path()).expect("reopen");
    assert_eq!(reloaded, space);
    assert_eq!(reloaded_meta, meta);
}

#[test]
fn an_fsync_failure_stops_the_store_for_good() {
    // Goal: after one failed fsync every later call fails (the caller stops the
    // member); nothing is retried, and what was durable before survives.
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = LogStore::open(dir.path()).expect("open");
    log.append(vec![entry(1, 1)]).expect("append");
    log.inject_sync_failure();
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
    assert_eq!(
        log.last_index(),
        Some(1),
        "the failed append is not visible"
    );
    drop(log);
    let (log, _) = LogStore::open(dir.path()).expect("reopen");
    assert!(log.last_index() >= Some(1));
}
