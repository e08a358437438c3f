//! Maintenance.Snapshot: a member streams its state as etcd's bbolt file
//! with etcd's SHA-256 trailer, while writes go on.

use mainstay_bbolt::{Database, Item};
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::lease_client::LeaseClient;
use mainstay_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mainstay_proto::etcdserverpb::watch_client::WatchClient;
use mainstay_proto::mvccpb::KeyValue;
use prost::Message;
use tonic::transport::Channel;

use crate::harness::{Options, TestCluster};

/// A bucket's entries, (key, value) in order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;
/// A history row as the test reads it: main, sub, tombstone, key, value.
type Row<'a> = (i64, i64, bool, &'a [u8], &'a [u8]);

/// A channel to member `i`'s client port.
async fn connect(cluster: &TestCluster, i: usize) -> Channel {
    Channel::from_shared(format!(
        "http://127.0.0.1:{}",
        cluster.members[i].client_port
    ))
    .expect("url")
    .connect()
    .await
    .expect("connect")
}

/// The snapshot as a client saves it: every blob, the digest last.
async fn save(channel: Channel) -> Vec<pb::SnapshotResponse> {
    let mut maintenance = MaintenanceClient::new(channel);
    let mut stream = maintenance
        .snapshot(pb::SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await.expect("message") {
        messages.push(message);
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_etcds_file_with_every_revision_lease_and_member() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let channel = connect(&cluster, follower).await;
    let lease = LeaseClient::new(channel.clone())
        .lease_grant(pb::LeaseGrantRequest { ttl: 100, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let mut kv = cluster.kv(follower).await;
    for (key, value, lease) in [("a", "1", 0), ("b", "2", lease), ("a", "3", 0)] {
        kv.put(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        })
        .await
        .expect("put");
    }
    // Two changes in one revision, then a deletion.
    let put = |key: &str| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: b"t".to_vec().into(),
            ..Default::default()
        })),
    };
    kv.txn(pb::TxnRequest {
        success: vec![put("y"), put("x")],
        ..Default::default()
    })
    .await
    .expect("txn");
    let revision = kv
        .delete_range(pb::DeleteRangeRequest {
            key: b"b".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner()
        .header
        .expect("header")
        .revision;
    assert_eq!(revision, 6);

    let messages = save(channel).await;
    let (digest, blobs) = messages.split_last().expect("messages");
    assert_eq!(digest.remaining_bytes, 0);
    let file: Vec<u8> = blobs.iter().flat_map(|m| m.blob.clone()).collect();
    // Each message says what is left after it, as etcd's do.
    let mut left = file.len() as u64;
    for message in blobs {
        left -= message.blob.len() as u64;
        assert_eq!(message.remaining_bytes, left);
    }
    assert_eq!(
        digest.blob,
        ring::digest::digest(&ring::digest::SHA256, &file).as_ref()
    );
    assert_eq!((file.len() + 32) % 512, 32, "etcdctl's trailer check");

    let db = Database::from_bytes(file).expect("a bbolt file");
    let mut buckets: Vec<(String, Entries)> = Vec::new();
    db.walk(&mut |item| {
        match item {
            Item::Bucket(name) => {
                buckets.push((String::from_utf8_lossy(name).into_owned(), Vec::new()))
            }
            Item::Entry(key, value) => {
                if let Some((_, entries)) = buckets.last_mut() {
                    entries.push((key.to_vec(), value.to_vec()));
                }
            }
        }
        Ok(())
    })
    .expect("every page accounted for");
    let names: Vec<&str> = buckets.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "alarm",
            "auth",
            "authRoles",
            "authUsers",
            "cluster",
            "key",
            "lease",
            "members",
            "members_removed",
            "meta"
        ]
    );
    let bucket = |name: &str| {
        buckets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, entries)| entries.clone())
            .unwrap_or_default()
    };
    // Revision keys: (main, sub), a tombstone marked 't'.
    let history: Vec<(i64, i64, bool, KeyValue)> = bucket("key")
        .into_iter()
        .map(|(key, value)| {
            let main = i64::from_be_bytes(key[..8].try_into().expect("main"));
            let sub = i64::from_be_bytes(key[9..17].try_into().expect("sub"));
            let tombstone = key.len() == 18 && key[17] == b't';
            (
                main,
                sub,
                tombstone,
                KeyValue::decode(value.as_slice()).expect("kv"),
            )
        })
        .collect();
    let summary: Vec<Row<'_>> = history
        .iter()
        .map(|(main, sub, tomb, kv)| (*main, *sub, *tomb, kv.key.as_slice(), &kv.value[..]))
        .collect();
    assert_eq!(
        summary,
        [
            (2, 0, false, &b"a"[..], &b"1"[..]),
            (3, 0, false, b"b", b"2"),
            (4, 0, false, b"a", b"3"),
            // The Txn put y, then x: etcd's sub-revisions follow its operations.
            (5, 0, false, b"y", b"t"),
            (5, 1, false, b"x", b"t"),
            (6, 0, true, b"b", b""),
        ]
    );
    let a3 = &history[2].3;
    assert_eq!((a3.create_revision, a3.mod_revision, a3.version), (2, 4, 2));
    assert_eq!(history[1].3.lease, lease);
    let leases = bucket("lease");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].0, lease.to_be_bytes());
    let members = bucket("members");
    assert_eq!(members.len(), 3);
    for (id, json) in &members {
        let member: serde_json::Value = serde_json::from_slice(json).expect("json");
        let hex = String::from_utf8_lossy(id).into_owned();
        assert_eq!(
            member["id"].as_u64().map(|id| format!("{id:x}")),
            Some(hex),
            "{member}"
        );
        assert!(member["peerURLs"].is_array(), "{member}");
    }
    let meta = bucket("meta");
    assert!(
        meta.iter()
            .any(|(key, value)| key == b"consistent_index" && value.len() == 8)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cluster_has_the_keys_and_moves_its_revision_on() {
    // Goal: `mainstay snapshot restore` of one snapshot into three data
    // directories gives a new cluster with the keys, values and leases; with
    // --bump-revision and --mark-compacted its revisions start past the old
    // ones and reads of old revisions are refused as compacted (a watcher of
    // the old cluster cannot silently miss events).
    let old = TestCluster::start(3, Options::default()).await;
    let leader = old.wait_for_leader().await;
    for i in 0..20 {
        old.put(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    let last = old.put(leader, "k0", "newest").await;
    let channel = connect(&old, leader).await;
    let lease = LeaseClient::new(channel.clone())
        .lease_grant(pb::LeaseGrantRequest { ttl: 300, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let file: Vec<u8> = save(channel)
        .await
        .into_iter()
        .flat_map(|m| m.blob)
        .collect();
    old.shutdown().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.db");
    std::fs::write(&path, &file).expect("write");

    // A damaged copy is refused and leaves no data directory.
    let mut damaged = file.clone();
    damaged[9000] ^= 0x40;
    let damaged_path = dir.path().join("damaged.db");
    std::fs::write(&damaged_path, &damaged).expect("write");

    let mut new = TestCluster::prepare(3, Options::default()).await;
    let restore_args =
        |file: &std::path::Path, i: usize, new: &TestCluster| mainstay_server::RestoreArgs {
            file: file.to_path_buf(),
            name: format!("t{i}"),
            initial_cluster: new.members[i].args.initial_cluster.clone(),
            initial_cluster_token: "test".into(),
            initial_advertise_peer_urls: String::new(),
            data_dir: Some(new.data_dir(i)),
            skip_hash_check: false,
            bump_revision: 1000,
            mark_compacted: true,
        };
    let refused = mainstay_server::restore(&restore_args(&damaged_path, 0, &new))
        .expect_err("damaged file refused");
    assert!(
        refused.to_string().starts_with("expected sha256"),
        "{refused}"
    );
    assert!(!new.data_dir(0).exists());
    for i in 0..3 {
        mainstay_server::restore(&restore_args(&path, i, &new)).expect("restore");
    }
    for i in 0..3 {
        new.start_member(i).await;
    }
    let leader = new.wait_for_leader().await;
    for i in 0..3 {
        new.eventually_sees(i, "k7", "v7").await;
        new.eventually_sees(i, "k0", "newest").await;
    }
    let revision = new.put(leader, "after", "restore").await;
    assert_eq!(revision, last + 1000 + 1);
    let mut kv = new.kv(leader).await;
    let old_read = kv
        .range(pb::RangeRequest {
            key: b"k0".to_vec(),
            revision: last,
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    assert_eq!(
        old_read.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    // A watcher of the old cluster resuming after the last event it saw is
    // told to start over (compacted), never handed revisions from before.
    let channel = connect(&new, leader).await;
    let (requests, receiver) = tokio::sync::mpsc::channel(1);
    requests
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: b"k".to_vec(),
                    range_end: b"l".to_vec(),
                    start_revision: last + 1,
                    ..Default::default()
                },
            )),
        })
        .await
        .expect("send");
    let mut watch = WatchClient::new(channel.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .expect("watch")
        .into_inner();
    let mut cancelled = None;
    while let Some(response) = watch.message().await.expect("watch response") {
        assert!(
            response.events.iter().all(|event| event
                .kv
                .as_ref()
                .is_some_and(|kv| kv.mod_revision > last + 1000)),
            "an event from before the bump: {response:?}"
        );
        if response.canceled {
            cancelled = Some(response.compact_revision);
            break;
        }
    }
    assert_eq!(cancelled, Some(last + 1000), "cancelled as compacted");
    drop(requests);
    let ttl = LeaseClient::new(channel)
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease,
            keys: false,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!(ttl.granted_ttl, 300);
    new.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_streams_to_its_end_through_a_leader_change_and_a_member_add() {
    // Goal: a snapshot being saved from the leader is a point-in-time copy
    // that finishes whole while leadership moves away from its member, a
    // learner is added and started, and writes go on: the file checks out
    // (SHA-256, every page) and holds exactly the writes made before the
    // call and the three members of that moment.
    use mainstay_proto::etcdserverpb::cluster_client::ClusterClient;
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let mut kv = cluster.kv(leader).await;
    let value = vec![b'v'; 1024];
    let mut revision = 0;
    for batch in 0..50 {
        let puts = (0..64)
            .map(|i| pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: format!("k{batch:02}-{i:02}").into_bytes(),
                    value: value.clone().into(),
                    ..Default::default()
                })),
            })
            .collect();
        revision = kv
            .txn(pb::TxnRequest {
                success: puts,
                ..Default::default()
            })
            .await
            .expect("txn")
            .into_inner()
            .header
            .expect("header")
            .revision;
    }
    let channel = connect(&cluster, leader).await;
    let mut stream = MaintenanceClient::new(channel.clone())
        .snapshot(pb::SnapshotRequest {})
        .await
        .expect("snapshot")
        .into_inner();
    let mut messages = vec![stream.message().await.expect("first").expect("a message")];

    // Leadership moves to another member...
    let target = (leader + 1) % 3;
    let target_id = cluster
        .status(target)
        .await
        .and_then(|s| s.header)
        .map(|h| h.member_id)
        .expect("target id");
    MaintenanceClient::new(channel.clone())
        .move_leader(pb::MoveLeaderRequest { target_id })
        .await
        .expect("move leader");
    // (MoveLeader answers once the target leads; the old leader's own
    // status may say so a moment later.)
    let mut moved = false;
    for _ in 0..100 {
        let mut leaders = Vec::new();
        for i in [leader, target] {
            leaders.push(cluster.status(i).await.map_or(0, |s| s.leader));
        }
        if leaders == [target_id, target_id] {
            moved = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(moved, "leadership moved to member {target}");
    // ...a learner is added and starts...
    let (new, peer_url) = cluster.prepare_member().await;
    ClusterClient::new(channel.clone())
        .member_add(pb::MemberAddRequest {
            peer_ur_ls: vec![peer_url],
            is_learner: true,
        })
        .await
        .expect("member add");
    cluster.start_member(new).await;
    cluster
        .eventually_sees(new, "k49-63", "v".repeat(1024).as_str())
        .await;
    // ...and writes go on.
    let after = cluster.put(target, "after", "1").await;
    assert!(after > revision);

    while let Some(message) = stream.message().await.expect("message") {
        messages.push(message);
    }
    let (digest, blobs) = messages.split_last().expect("messages");
    let file: Vec<u8> = blobs.iter().flat_map(|m| m.blob.clone()).collect();
    assert!(file.len() > 3 * 1024 * 1024, "{} bytes", file.len());
    assert_eq!(
        digest.blob,
        ring::digest::digest(&ring::digest::SHA256, &file).as_ref()
    );
    let db = Database::from_bytes(file).expect("a bbolt file");
    let mut bucket = String::new();
    let (mut rows, mut members, mut newest) = (0, 0, 0);
    db.walk(&mut |item| {
        match item {
            Item::Bucket(name) => bucket = String::from_utf8_lossy(name).into_owned(),
            Item::Entry(key, _) if bucket == "key" => {
                rows += 1;
                let main = i64::from_be_bytes(key[..8].try_into().expect("main"));
                newest = newest.max(main);
            }
            Item::Entry(..) if bucket == "members" => members += 1,
            Item::Entry(..) => {}
        }
        Ok(())
    })
    .expect("every page accounted for");
    assert_eq!(rows, 50 * 64, "every write before the call, none after");
    assert_eq!(newest, revision);
    assert_eq!(members, 3, "the members when the snapshot began");
    cluster.shutdown().await;
}
