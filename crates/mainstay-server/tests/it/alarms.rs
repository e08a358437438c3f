//! Alarms end to end: the backend quota raises NOSPACE, which every member
//! enforces at apply; reads and deletes go on; the alarm survives a restart
//! and is cleared by disarming; an operator's CORRUPT alarm stops KV and lease
//! operations with etcd's error.

use std::time::Duration;

use mainstay_proto::etcdserverpb::alarm_request::AlarmAction;
use mainstay_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mainstay_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmType, DeleteRangeRequest, PutRequest, RangeRequest,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{Options, TestCluster};

async fn maintenance(cluster: &TestCluster, i: usize) -> MaintenanceClient<Channel> {
    let url = format!("http://127.0.0.1:{}", cluster.members[i].client_port);
    MaintenanceClient::connect(url).await.expect("connect")
}

async fn alarms(cluster: &TestCluster, i: usize) -> Vec<AlarmMember> {
    maintenance(cluster, i)
        .await
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            ..AlarmRequest::default()
        })
        .await
        .expect("alarm list")
        .into_inner()
        .alarms
}

async fn put(
    cluster: &TestCluster,
    i: usize,
    key: &str,
    bytes: usize,
) -> Result<(), tonic::Status> {
    let mut kv = cluster.kv(i).await;
    kv.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: vec![b'x'; bytes].into(),
        ..PutRequest::default()
    })
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nospace_is_raised_enforced_everywhere_and_disarmed() {
    let mut cluster = TestCluster::prepare(3, Options::default()).await;
    for member in &mut cluster.members {
        member.args.quota_backend_bytes = Some(300_000);
    }
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    // Fill through a follower until its quota check refuses.
    let mut refused = None;
    for n in 0..500 {
        if let Err(status) = put(&cluster, follower, &format!("k{n}"), 4096).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("the quota refused a write");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "etcdserver: mvcc: database space exceeded"
    );
    let follower_id = cluster
        .status(follower)
        .await
        .expect("status")
        .header
        .expect("header")
        .member_id;
    let first = AlarmMember {
        member_id: follower_id,
        alarm: AlarmType::Nospace as i32,
    };
    assert_eq!(alarms(&cluster, leader).await, vec![first]);

    // Every member refuses growing writes now (the leader's store is as big,
    // so its own check may raise its alarm too).
    let refused = put(&cluster, leader, "small", 1)
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let raised = alarms(&cluster, leader).await;
    assert!(raised.contains(&first), "{raised:?}");
    // Reads and deletes go on.
    let mut kv = cluster.kv(leader).await;
    let read = kv
        .range(RangeRequest {
            key: b"k1".to_vec(),
            ..RangeRequest::default()
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(read.count, 1);
    kv.delete_range(DeleteRangeRequest {
        key: b"k1".to_vec(),
        ..DeleteRangeRequest::default()
    })
    .await
    .expect("delete");
    let status = cluster.status(leader).await.expect("status");
    let line = format!("memberID:{follower_id} alarm:NOSPACE ");
    assert!(status.errors.contains(&line), "{:?}", status.errors);

    // The alarms are state: a restarted member still has them.
    let other = (leader + 2) % 3;
    cluster.stop_member(other).await.expect("stop");
    cluster.start_member(other).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen = alarms(&cluster, other).await;
        if seen == raised {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after restart: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Disarming (each alarm, as etcdctl does) clears them everywhere; the next
    // write over the quota raises one again (compaction and defragmentation
    // are what free space).
    for alarm in &raised {
        let disarmed = maintenance(&cluster, other)
            .await
            .alarm(AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: alarm.member_id,
                alarm: alarm.alarm,
            })
            .await
            .expect("disarm")
            .into_inner();
        assert_eq!(disarmed.alarms, vec![*alarm]);
    }
    assert!(alarms(&cluster, leader).await.is_empty());
    let again = put(&cluster, follower, "again", 4096)
        .await
        .expect_err("still over");
    assert_eq!(again.code(), Code::ResourceExhausted);
    assert_eq!(alarms(&cluster, leader).await, vec![first]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_stops_kv_and_lease_operations() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put(leader, "a", "1").await;
    let raise = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: 42,
        alarm: AlarmType::Corrupt as i32,
    };
    maintenance(&cluster, leader)
        .await
        .alarm(raise)
        .await
        .expect("raise");
    for i in 0..3 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut kv = cluster.kv(i).await;
            let read = kv
                .range(RangeRequest {
                    key: b"a".to_vec(),
                    serializable: true,
                    ..RangeRequest::default()
                })
                .await;
            match read {
                Err(status) => {
                    assert_eq!(status.code(), Code::DataLoss);
                    assert_eq!(status.message(), "etcdserver: corrupt cluster");
                    break;
                }
                Ok(_) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "member {i} still reads"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let write = put(&cluster, i, "b", 1).await.expect_err("refused");
        assert_eq!(write.code(), Code::DataLoss, "{write:?}");
    }
    // Status and the alarm list still answer, so an operator can see why.
    assert_eq!(alarms(&cluster, leader).await.len(), 1);
    maintenance(&cluster, leader)
        .await
        .alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 42,
            alarm: AlarmType::Corrupt as i32,
        })
        .await
        .expect("disarm");
    put(&cluster, leader, "b", 1).await.expect("writes again");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_diverges_is_named_corrupt_by_the_hash_check() {
    let mut cluster = TestCluster::prepare(3, Options::default()).await;
    for member in &mut cluster.members {
        member.args.experimental_compact_hash_check_time = Some(Duration::from_millis(500));
    }
    // Member 2 applies every put with a wrong last byte: silent divergence.
    cluster.members[2].safety_breaks.diverge_values = true;
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    let leader = cluster.wait_for_leader().await;
    let diverged = cluster
        .status(2)
        .await
        .expect("status")
        .header
        .expect("header")
        .member_id;
    cluster.put(leader, "a", "1").await;
    let named = AlarmMember {
        member_id: diverged,
        alarm: AlarmType::Corrupt as i32,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let raised = alarms(&cluster, leader).await;
        if raised.contains(&named) {
            break;
        }
        if leader == 2 {
            // A diverged leader is outvoted as well: the alarm names it.
            assert!(raised.is_empty() || raised.contains(&named), "{raised:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CORRUPT alarm: {raised:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Only the diverged member is named, and KV operations stop everywhere.
    assert_eq!(alarms(&cluster, leader).await, vec![named]);
    let refused = put(&cluster, leader, "b", 1).await.expect_err("refused");
    assert_eq!(refused.code(), Code::DataLoss);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_initial_check_refuses_to_start_a_diverged_member() {
    let mut cluster = TestCluster::prepare(3, Options::default()).await;
    for member in &mut cluster.members {
        member.args.experimental_compact_hash_check_enabled = Some(false);
    }
    cluster.members[2].safety_breaks.diverge_values = true;
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    let leader = cluster.wait_for_leader().await;
    for n in 0..5 {
        cluster.put(leader, &format!("k{n}"), "value").await;
    }
    // Restarted with the check, the diverged member's log replay is wrong
    // again (the bug stays on): a majority disagrees, it refuses to start.
    cluster.stop_member(2).await.expect("stop");
    cluster.members[2].args.experimental_initial_corrupt_check = Some(true);
    cluster.start_member(2).await;
    let ended = cluster.wait_exit(2, Duration::from_secs(30)).await;
    let error = ended.expect_err("refused to start");
    assert!(
        format!("{error:#}").contains("found data inconsistency with peers"),
        "{error:#}"
    );
    // A healthy member passes the same check.
    let healthy = (leader + 1) % 3;
    let healthy = if healthy == 2 {
        (leader + 2) % 3
    } else {
        healthy
    };
    cluster.stop_member(healthy).await.expect("stop");
    cluster.members[healthy]
        .args
        .experimental_initial_corrupt_check = Some(true);
    cluster.start_member(healthy).await;
    cluster.eventually_sees(healthy, "k4", "value").await;
    cluster.shutdown().await;
}
