//! Leases over real gRPC: etcd's answers and errors, expiry through Raft,
//! keep-alive streams, and a remaining TTL that survives a leader change.

use std::time::Duration;

use mainstay_proto::etcdserverpb::lease_client::LeaseClient;
use mainstay_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest,
};
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{Options, TestCluster};

async fn lease_client(cluster: &TestCluster, i: usize) -> LeaseClient<Channel> {
    let url = format!("http://127.0.0.1:{}", cluster.members[i].client_port);
    LeaseClient::connect(url)
        .await
        .expect("connect lease client")
}

async fn grant(client: &mut LeaseClient<Channel>, id: i64, ttl: i64) -> (i64, i64) {
    let response = client
        .lease_grant(LeaseGrantRequest { ttl, id })
        .await
        .expect("grant")
        .into_inner();
    (response.id, response.ttl)
}

async fn put_with_lease(cluster: &TestCluster, i: usize, key: &str, lease: i64) -> i64 {
    let mut kv = cluster.kv(i).await;
    let response = kv
        .put(PutRequest {
            key: key.into(),
            value: b"v".to_vec().into(),
            lease,
            ..Default::default()
        })
        .await
        .expect("put with lease")
        .into_inner();
    response.header.expect("header").revision
}

async fn time_to_live(client: &mut LeaseClient<Channel>, id: i64) -> (i64, i64, Vec<Vec<u8>>) {
    let response = client
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("time to live")
        .into_inner();
    (response.ttl, response.granted_ttl, response.keys)
}

async fn revision(cluster: &TestCluster, i: usize) -> i64 {
    let mut kv = cluster.kv(i).await;
    let response = kv
        .range(RangeRequest {
            key: b"any".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    response.header.expect("header").revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_answer_and_fail_as_etcd_does() {
    // Goal: every Lease RPC gives etcd's answer, including its quiet answers for
    // unknown leases (TTL -1, TTL 0) and its exact errors; a revoke deletes all
    // attached keys in one revision. Method: drive one follower and the leader.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut client = lease_client(&cluster, follower).await;

    // The harness's election timeout is 500 ms: the minimum TTL is 1 s.
    let (short, ttl) = grant(&mut client, 0, 0).await;
    assert!(short > 0, "a server-chosen id is positive");
    assert_eq!(ttl, 1, "a TTL below the minimum is raised to it");
    let (lease, ttl) = grant(&mut client, 0x1234, 60).await;
    assert_eq!((lease, ttl), (0x1234, 60));

    let error = client
        .lease_grant(LeaseGrantRequest { ttl: 60, id: lease })
        .await
        .expect_err("duplicate id");
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert_eq!(error.message(), "etcdserver: lease already exists");
    let error = client
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .expect_err("TTL too large");
    assert_eq!(error.code(), Code::OutOfRange);
    assert_eq!(error.message(), "etcdserver: too large lease TTL");

    let mut kv = cluster.kv(follower).await;
    let error = kv
        .put(PutRequest {
            key: b"x".to_vec(),
            lease: 777,
            ..Default::default()
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(error.message(), "etcdserver: requested lease not found");

    put_with_lease(&cluster, follower, "a", lease).await;
    put_with_lease(&cluster, leader, "b", lease).await;
    let (remaining, granted, keys) = time_to_live(&mut client, lease).await;
    assert_eq!(granted, 60);
    assert!((55..=60).contains(&remaining), "remaining {remaining}");
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);

    let leases = client
        .lease_leases(LeaseLeasesRequest {})
        .await
        .expect("leases")
        .into_inner();
    let mut ids: Vec<i64> = leases.leases.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    let mut expected = vec![short, lease];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    let before = revision(&cluster, leader).await;
    let revoked = client
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .expect("revoke")
        .into_inner();
    assert_eq!(
        revoked.header.expect("header").revision,
        before + 1,
        "both keys go in one revision"
    );
    assert_eq!(cluster.get(leader, "a", false).await, None);
    assert_eq!(cluster.get(follower, "b", false).await, None);
    let error = client
        .lease_revoke(LeaseRevokeRequest { id: lease })
        .await
        .expect_err("revoked twice");
    assert_eq!(error.code(), Code::NotFound);
    assert_eq!(error.message(), "etcdserver: requested lease not found");

    let (remaining, _, keys) = time_to_live(&mut client, lease).await;
    assert_eq!(remaining, -1, "an unknown lease has TTL -1");
    assert!(keys.is_empty());

    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender
        .send(LeaseKeepAliveRequest { id: lease })
        .await
        .expect("queue keep-alive");
    let mut replies = client
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("keep-alive stream")
        .into_inner();
    let reply = replies
        .message()
        .await
        .expect("keep-alive reply")
        .expect("one reply");
    assert_eq!(
        (reply.id, reply.ttl),
        (lease, 0),
        "an unknown lease has TTL 0"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_hold_a_lease_and_an_expired_lease_loses_its_keys() {
    // Goal: a lease kept alive outlives its TTL many times over; a lease left
    // alone is revoked by the leader after its TTL and its keys are deleted in
    // one revision. Method: a 3 s lease kept alive every 300 ms for 6 s, and a
    // 1 s lease left alone.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut client = lease_client(&cluster, follower).await;
    let (kept, _) = grant(&mut client, 0, 3).await;
    let (left, _) = grant(&mut client, 0, 1).await;
    put_with_lease(&cluster, follower, "kept", kept).await;
    put_with_lease(&cluster, follower, "left1", left).await;
    let attached = put_with_lease(&cluster, follower, "left2", left).await;

    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut replies = client
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("keep-alive stream")
        .into_inner();
    for _ in 0..20 {
        sender
            .send(LeaseKeepAliveRequest { id: kept })
            .await
            .expect("queue keep-alive");
        let reply = replies
            .message()
            .await
            .expect("keep-alive reply")
            .expect("one reply");
        assert_eq!((reply.id, reply.ttl), (kept, 3));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // 6 s later: the kept lease and its key live, the other is gone.
    assert_eq!(
        cluster.get(leader, "kept", false).await.as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!(cluster.get(leader, "left1", false).await, None);
    assert_eq!(cluster.get(leader, "left2", false).await, None);
    let (remaining, _, _) = time_to_live(&mut client, left).await;
    assert_eq!(remaining, -1, "the expired lease is gone");
    // Both keys of the expired lease went in one revision: the revision moved
    // by exactly one after the last write attached to it.
    assert_eq!(revision(&cluster, leader).await, attached + 1);

    drop(sender);
    let mut gone = false;
    for _ in 0..100 {
        if cluster.get(leader, "kept", false).await.is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "a lease no longer kept alive expires");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeps_its_remaining_ttl_across_a_leader_change() {
    // Goal: better than etcd, which gives every lease a fresh TTL on a new
    // leader: the new leader continues each lease's countdown. Method: a 30 s
    // lease, 4 s pass, the leader stops; the new leader reports what is left.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = lease_client(&cluster, leader).await;
    let (lease, _) = grant(&mut client, 0, 30).await;
    put_with_lease(&cluster, leader, "held", lease).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.stop_member(leader).await.expect("clean stop");
    let survivor = (leader + 1) % 3;
    // A write through the survivors proves a new leader serves.
    cluster.put(survivor, "after", "1").await;
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let mut client = lease_client(&cluster, new_leader).await;
    let (remaining, granted, keys) = time_to_live(&mut client, lease).await;
    assert_eq!(granted, 30);
    assert_eq!(keys, vec![b"held".to_vec()]);
    assert!(
        (1..=26).contains(&remaining),
        "the countdown went on across the leader change: {remaining} s left of 30"
    );
    // A follower answers with the leader's countdown (asked later: never more).
    let follower = (0..3)
        .find(|i| *i != leader && *i != new_leader)
        .expect("the other survivor");
    let mut client = lease_client(&cluster, follower).await;
    let (on_follower, granted, _) = time_to_live(&mut client, lease).await;
    assert_eq!(granted, 30);
    assert!(
        (1..=remaining).contains(&on_follower),
        "a follower reports the leader's countdown: {on_follower} s, the leader said {remaining} s"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alives_from_many_streams_share_raft_entries() {
    // Goal: keep-alives waiting at the same time on different streams are folded
    // into shared Raft entries, and each is still answered on its own stream.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = lease_client(&cluster, leader).await;
    let (id, _) = grant(&mut client, 0, 60).await;
    const STREAMS: u64 = 100;
    // Every stream opened first, so that only the keep-alives meet.
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let replies = client
            .clone()
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .expect("keep-alive stream")
            .into_inner();
        streams.push((sender, replies));
    }
    let before = cluster.status(leader).await.expect("status").raft_index;
    for (sender, _) in &streams {
        sender
            .send(LeaseKeepAliveRequest { id })
            .await
            .expect("send keep-alive");
    }
    for (_, replies) in &mut streams {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await
            .expect("an answer within 10 s")
            .expect("stream healthy")
            .expect("stream open");
        assert_eq!(reply.id, id);
        assert!(reply.ttl > 0, "the lease is alive");
    }
    let entries = cluster.status(leader).await.expect("status").raft_index - before;
    assert!(
        entries * 2 <= STREAMS,
        "{STREAMS} keep-alives on {STREAMS} streams took {entries} Raft entries"
    );
    cluster.shutdown().await;
}
