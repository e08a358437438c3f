//! `--auto-compaction-mode periodic`: the leader compacts to the revision of
//! one window ago by itself.

use std::time::Duration;

use mainstay_proto::etcdserverpb::RangeRequest;

use crate::harness::{Options, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_one_window() {
    let mut cluster = TestCluster::prepare(3, Options::default()).await;
    for member in &mut cluster.members {
        member.args.auto_compaction_mode = Some("periodic".to_string());
        member.args.auto_compaction_retention = Some("2s".to_string());
    }
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    let leader = cluster.wait_for_leader().await;
    let mut first = 0;
    for i in 0..10 {
        let revision = cluster.put(leader, &format!("k{i}"), "v").await;
        if i == 0 {
            first = revision;
        }
    }
    // Revision `first` was written before the window's first sample; within
    // a few windows it is compacted away, on every member, while the
    // latest revision stays readable.
    let mut kv = cluster.kv((leader + 1) % 3).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let old = kv
            .range(RangeRequest {
                key: b"k0".to_vec(),
                revision: first,
                serializable: true,
                ..Default::default()
            })
            .await;
        match old {
            Err(status) => {
                assert_eq!(
                    status.message(),
                    "etcdserver: mvcc: required revision has been compacted"
                );
                break;
            }
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "revision {first} never compacted"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let latest = kv
        .range(RangeRequest {
            key: b"k9".to_vec(),
            ..Default::default()
        })
        .await
        .expect("the latest revision stays readable")
        .into_inner();
    assert_eq!(latest.kvs.len(), 1);
    cluster.shutdown().await;
}
