//! Start-up with a damaged Raft log: a torn tail is cut and the member rejoins;
//! corruption elsewhere makes it refuse to start. Defragmentation shrinks the
//! state file while writes go on.

use std::time::Duration;

use mainstay_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mainstay_proto::etcdserverpb::{
    CompactionRequest, DefragmentRequest, DeleteRangeRequest, PutRequest,
};

use crate::harness::{Options, TestCluster};

/// The names of the Raft log's segment files in `dir`, oldest first.
fn log_segments(dir: &std::path::Path) -> Vec<String> {
    let mut named: Vec<(u64, String)> = std::fs::read_dir(dir)
        .expect("list the data directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .filter_map(|name| Some((mainstay_storage::segment_seq(&name)?, name)))
        .collect();
    named.sort();
    named.into_iter().map(|(_, name)| name).collect()
}

/// The Raft log segment that takes new records.
fn newest_log_segment(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(log_segments(dir).pop().expect("a raft log segment"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_is_truncated_and_the_member_rejoins() {
    // Goal: garbage after the last record (a write torn by a crash) is cut with a
    // warning; the member starts and catches up.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    cluster.put(0, "a", "1").await;
    cluster.eventually_sees(2, "a", "1").await;
    cluster.stop_member(2).await.expect("clean stop");
    // The start of a record's header where the next record goes: after the
    // last written byte, in the zeros the log keeps ahead of its end.
    let log = newest_log_segment(&cluster.data_dir(2));
    let mut bytes = std::fs::read(&log).expect("read");
    let end = bytes.iter().rposition(|&b| b != 0).expect("records") + 1;
    let torn = [0xA8, 1, 200, 0, 0, 0, 1, 2, 3, 4, 5];
    if bytes.len() < end + torn.len() {
        bytes.resize(end + torn.len(), 0);
    }
    bytes[end..end + torn.len()].copy_from_slice(&torn);
    std::fs::write(&log, &bytes).expect("tear");
    cluster.put(0, "b", "2").await;
    cluster.start_member(2).await;
    cluster.eventually_sees(2, "b", "2").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_segments_roll_over_and_purged_ones_go() {
    // Goal: with small segments, writes fill many; snapshots purge the log and
    // whole segments are removed (the data directory does not grow with the
    // writes); a member stopped and started replays its segments and catches up.
    let options = Options {
        snapshot_count: 40,
        snapshot_catchup_entries: 10,
        log_segment_bytes: Some(4096),
        ..Options::default()
    };
    let mut cluster = TestCluster::start(3, options).await;
    let value = "v".repeat(200);
    for i in 0..300 {
        cluster.put(0, &format!("k{i:03}"), &value).await;
    }
    cluster.eventually_sees(1, "k299", &value).await;
    // 300 puts of over 200 bytes fill more than 15 segments of 4 KiB; purges
    // keep about a snapshot's worth of entries.
    let names = log_segments(&cluster.data_dir(1));
    assert!(names.len() < 10, "purged segments removed: {names:?}");
    assert_ne!(names[0], "raft-0000000000000001.log", "{names:?}");
    cluster.stop_member(1).await.expect("clean stop");
    cluster.put(0, "after", "1").await;
    cluster.start_member(1).await;
    cluster.eventually_sees(1, "after", "1").await;
    cluster.eventually_sees(1, "k150", &value).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_log_refuses_to_start() {
    // Goal: a flipped bit in a record followed by valid records is corruption:
    // the member exits with a clear error instead of serving wrong data.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    for i in 0..5 {
        cluster.put(0, &format!("k{i}"), "v").await;
    }
    cluster.eventually_sees(1, "k4", "v").await;
    cluster.stop_member(1).await.expect("clean stop");
    let log = newest_log_segment(&cluster.data_dir(1));
    let mut bytes = std::fs::read(&log).expect("read");
    bytes[12] ^= 0x10;
    std::fs::write(&log, &bytes).expect("write");
    let outcome = cluster.try_start_member(1, Duration::from_secs(10)).await;
    let error = outcome.expect("member must exit").expect_err("must refuse");
    let text = format!("{error:#}");
    assert!(text.contains("refusing to start"), "{text}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_shrinks_the_state_file_while_writes_go_on() {
    // Goal: after deletes and a compaction, Defragment on a member gives a
    // much smaller state file (Status's db_size), loses nothing, and every
    // write acknowledged while it ran is there, also after a restart.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let mut kv = cluster.kv(1).await;
    let big = vec![7u8; 8 << 10];
    for i in 0..300 {
        kv.put(PutRequest {
            key: format!("big/{i:03}").into_bytes(),
            value: big.clone().into(),
            ..PutRequest::default()
        })
        .await
        .expect("put");
    }
    kv.delete_range(DeleteRangeRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        ..DeleteRangeRequest::default()
    })
    .await
    .expect("delete");
    let revision = cluster.put(1, "kept", "1").await;
    kv.compact(CompactionRequest {
        revision,
        physical: true,
    })
    .await
    .expect("compact");
    let before = cluster.status(1).await.expect("status").db_size;

    let writer = {
        let mut kv = cluster.kv(0).await;
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..200 {
                let key = format!("during/{i:03}");
                if kv
                    .put(PutRequest {
                        key: key.clone().into_bytes(),
                        value: b"v".to_vec().into(),
                        ..PutRequest::default()
                    })
                    .await
                    .is_ok()
                {
                    acknowledged.push(key);
                }
            }
            acknowledged
        })
    };
    let url = format!("http://127.0.0.1:{}", cluster.members[1].client_port);
    let mut maintenance = MaintenanceClient::connect(url).await.expect("connect");
    maintenance
        .defragment(DefragmentRequest {})
        .await
        .expect("defragment");
    let after = cluster.status(1).await.expect("status").db_size;
    assert!(
        after * 4 < before,
        "the deleted values' pages are gone: {before} -> {after} bytes"
    );
    let acknowledged = writer.await.expect("writer");
    assert_eq!(acknowledged.len(), 200, "writes went on");
    for key in &acknowledged {
        cluster.eventually_sees(1, key, "v").await;
    }
    cluster.stop_member(1).await.expect("clean stop");
    cluster.start_member(1).await;
    cluster.eventually_sees(1, "kept", "1").await;
    for key in &acknowledged {
        cluster.eventually_sees(1, key, "v").await;
    }
    assert_eq!(cluster.get(1, "big/000", true).await, None);
    cluster.shutdown().await;
}
