//! The Lock service over real gRPC: mutual exclusion, release by Unlock and by
//! a revoked lease, a waiter that loses its lease, a cancelled waiter, and
//! etcd's answers and errors (code Unknown, etcd's text).

use std::time::Duration;

use mainstay_proto::etcdserverpb::lease_client::LeaseClient;
use mainstay_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, RangeRequest,
};
use mainstay_proto::v3lockpb::lock_client::LockClient;
use mainstay_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{Options, TestCluster};

/// How long a waiter must stay blocked to count as excluded.
const EXCLUDED_FOR: Duration = Duration::from_millis(700);

/// How long a released waiter may take to get the lock.
const HANDOVER_WITHIN: Duration = Duration::from_secs(10);

pub async fn lock_client(cluster: &TestCluster, i: usize) -> LockClient<Channel> {
    let url = format!("http://127.0.0.1:{}", cluster.members[i].client_port);
    LockClient::connect(url).await.expect("connect lock client")
}

pub async fn lease_client(cluster: &TestCluster, i: usize) -> LeaseClient<Channel> {
    let url = format!("http://127.0.0.1:{}", cluster.members[i].client_port);
    LeaseClient::connect(url)
        .await
        .expect("connect lease client")
}

pub async fn grant(cluster: &TestCluster, i: usize) -> i64 {
    let mut leases = lease_client(cluster, i).await;
    let request = LeaseGrantRequest { ttl: 60, id: 0 };
    leases
        .lease_grant(request)
        .await
        .expect("grant")
        .into_inner()
        .id
}

pub async fn revoke(cluster: &TestCluster, i: usize, id: i64) {
    let mut leases = lease_client(cluster, i).await;
    let request = LeaseRevokeRequest { id };
    leases.lease_revoke(request).await.expect("revoke");
}

async fn lock(cluster: &TestCluster, i: usize, name: &str, lease: i64) -> LockResponse {
    let mut client = lock_client(cluster, i).await;
    let request = LockRequest {
        name: name.into(),
        lease,
    };
    client.lock(request).await.expect("lock").into_inner()
}

/// A Lock call running on its own; the handle answers when it returns.
async fn spawn_lock(
    cluster: &TestCluster,
    i: usize,
    name: &str,
    lease: i64,
) -> JoinHandle<Result<LockResponse, tonic::Status>> {
    let mut client = lock_client(cluster, i).await;
    let request = LockRequest {
        name: name.into(),
        lease,
    };
    tokio::spawn(async move { client.lock(request).await.map(|r| r.into_inner()) })
}

async fn unlock(cluster: &TestCluster, i: usize, key: &[u8]) -> i64 {
    let mut client = lock_client(cluster, i).await;
    let request = UnlockRequest { key: key.to_vec() };
    let response = client.unlock(request).await.expect("unlock").into_inner();
    response.header.expect("header").revision
}

/// Asserts the call is still waiting after `EXCLUDED_FOR`.
async fn still_waiting<T: std::fmt::Debug>(call: &mut JoinHandle<T>, what: &str) {
    let waited = tokio::time::timeout(EXCLUDED_FOR, call).await;
    assert!(
        waited.is_err(),
        "{what} returned while excluded: {waited:?}"
    );
}

async fn returns<T>(call: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(HANDOVER_WITHIN, call)
        .await
        .unwrap_or_else(|_| panic!("{what} still waiting after {HANDOVER_WITHIN:?}"))
        .expect("lock task")
}

pub async fn keys_under(cluster: &TestCluster, i: usize, prefix: &str) -> Vec<Vec<u8>> {
    let mut kv = cluster.kv(i).await;
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let request = RangeRequest {
        key: prefix.into(),
        range_end: end,
        keys_only: true,
        ..Default::default()
    };
    let response = kv.range(request).await.expect("range").into_inner();
    response.kvs.into_iter().map(|kv| kv.key).collect()
}

fn hex_key(name: &str, lease: i64) -> Vec<u8> {
    format!("{name}/{lease:x}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_locker_waits_until_unlock() {
    // Goal: mutual exclusion. A second Lock on the same name, through another
    // member, returns only after the holder's Unlock, with its own key; keys
    // are etcd's `<name>/<lease hex>`. Method: two leases, the holder on a
    // follower, the waiter on the leader.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let first_lease = grant(&cluster, leader).await;
    let second_lease = grant(&cluster, leader).await;

    let held = lock(&cluster, follower, "job", first_lease).await;
    assert_eq!(held.key, hex_key("job", first_lease));
    let mut second = spawn_lock(&cluster, leader, "job", second_lease).await;
    still_waiting(&mut second, "the second locker").await;

    // Locking again with the holder's lease is the same acquisition: at once.
    let again = lock(&cluster, leader, "job", first_lease).await;
    assert_eq!(again.key, held.key);

    let unlocked_at = unlock(&cluster, follower, &held.key).await;
    let taken = returns(second, "the second locker")
        .await
        .expect("second lock");
    assert_eq!(taken.key, hex_key("job", second_lease));
    let taken_at = taken.header.expect("header").revision;
    assert!(
        taken_at >= unlocked_at,
        "acquired at {taken_at}, before the unlock at {unlocked_at}"
    );
    assert_eq!(
        keys_under(&cluster, follower, "job/").await,
        vec![taken.key]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_releases_the_lock_and_ends_its_wait() {
    // Goal: the lock follows the holder's lease: revoking it hands the lock to
    // the next waiter. A waiter whose own lease is revoked stops waiting with
    // etcd's `mutex: session is expired` (etcd 3.4 would wait on and then
    // "acquire" without a key). Method: three leases, revoke the holder's and
    // then a queued waiter's.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 2) % 3;
    let holder = grant(&cluster, leader).await;
    let next = grant(&cluster, leader).await;
    let last = grant(&cluster, leader).await;

    lock(&cluster, leader, "db", holder).await;
    let mut second = spawn_lock(&cluster, follower, "db", next).await;
    still_waiting(&mut second, "the waiter").await;
    let mut third = spawn_lock(&cluster, leader, "db", last).await;
    still_waiting(&mut third, "the last waiter").await;

    revoke(&cluster, leader, holder).await;
    let taken = returns(second, "the waiter")
        .await
        .expect("lock after revoke");
    assert_eq!(taken.key, hex_key("db", next));
    still_waiting(&mut third, "the last waiter").await;

    revoke(&cluster, follower, last).await;
    let error = returns(third, "the waiter whose lease was revoked")
        .await
        .expect_err("its lease is gone");
    assert_eq!(error.code(), Code::Unknown);
    assert_eq!(error.message(), "mutex: session is expired");
    assert_eq!(keys_under(&cluster, leader, "db/").await, vec![taken.key]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_waiter_leaves_no_key_behind() {
    // Goal: a client that gives up waiting (cancels the call) takes its key
    // out of the queue, as etcd's Mutex does, so it never inherits the lock;
    // the next locker gets it as soon as the holder unlocks. Method: a waiter
    // with a short client deadline, then the queue's keys.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let holder = grant(&cluster, leader).await;
    let quitter = grant(&cluster, leader).await;
    let latecomer = grant(&cluster, leader).await;

    let held = lock(&cluster, leader, "q", holder).await;
    let mut client = lock_client(&cluster, (leader + 1) % 3).await;
    let mut request = tonic::Request::new(LockRequest {
        name: b"q".to_vec(),
        lease: quitter,
    });
    request.set_timeout(Duration::from_millis(500));
    let gave_up = client.lock(request).await.expect_err("deadline");
    assert!(
        matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{gave_up:?}"
    );

    let mut withdrawn = false;
    for _ in 0..100 {
        if keys_under(&cluster, leader, "q/").await == vec![held.key.clone()] {
            withdrawn = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(withdrawn, "the cancelled waiter's key stayed in the queue");

    unlock(&cluster, leader, &held.key).await;
    let taken = lock(&cluster, leader, "q", latecomer).await;
    assert_eq!(taken.key, hex_key("q", latecomer));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_answers_and_errors_as_etcd() {
    // Goal: etcd's answers where they are not obvious. An unknown lease and an
    // empty Unlock key fail with code Unknown and etcd's text (etcd's lock
    // server passes them through its embedded client); lease 0 gets a new
    // 60 s lease, as etcd's session does; Unlock of a free key is no error.
    // Method: one member, each case in turn.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = lock_client(&cluster, leader).await;

    let unknown = client
        .lock(LockRequest {
            name: b"x".to_vec(),
            lease: 0x7777,
        })
        .await
        .expect_err("unknown lease");
    assert_eq!(unknown.code(), Code::Unknown);
    assert_eq!(unknown.message(), "etcdserver: requested lease not found");

    let empty = client
        .unlock(UnlockRequest { key: Vec::new() })
        .await
        .expect_err("empty key");
    assert_eq!(empty.code(), Code::Unknown);
    assert_eq!(empty.message(), "etcdserver: key is not provided");

    let granted = lock(&cluster, leader, "auto", 0).await;
    let mut kv = cluster.kv(leader).await;
    let stored = kv
        .range(RangeRequest {
            key: granted.key.clone(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    let lease = stored.kvs.first().expect("the lock key").lease;
    assert_eq!(granted.key, hex_key("auto", lease));
    let mut leases = lease_client(&cluster, leader).await;
    let ttl = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: lease,
            keys: false,
        })
        .await
        .expect("time to live")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);

    let revision = unlock(&cluster, leader, &granted.key).await;
    assert_eq!(unlock(&cluster, leader, &granted.key).await, revision);
    cluster.shutdown().await;
}
