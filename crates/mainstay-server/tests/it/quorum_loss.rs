//! Quorum loss: `--force-new-cluster` from one survivor of three back to three
//! members, with every write the survivor had.

use std::time::Duration;

use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::cluster_client::ClusterClient;
use mainstay_proto::etcdserverpb::lease_client::LeaseClient;
use tonic::transport::Channel;

use crate::harness::{Options, TestCluster};

fn channel(cluster: &TestCluster, i: usize) -> Channel {
    let url = format!("http://127.0.0.1:{}", cluster.members[i].client_port);
    tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect_lazy()
}

async fn members(cluster: &TestCluster, i: usize) -> Vec<String> {
    let list = ClusterClient::new(channel(cluster, i))
        .member_list(pb::MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner();
    let mut names: Vec<String> = list.members.into_iter().map(|m| m.name).collect();
    names.sort();
    names
}

/// Starts member `i` and returns the error it stops with at once.
async fn refused(cluster: &mut TestCluster, i: usize) -> String {
    match cluster.try_start_member(i, Duration::from_secs(20)).await {
        Some(Err(error)) => format!("{error:#}"),
        Some(Ok(())) => panic!("member {i} stopped without an error"),
        None => panic!("member {i} started"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forced_new_cluster_grows_from_one_survivor_back_to_three() {
    // Goal: etcd's quorum-loss runbook. Two of three members are gone for
    // good; the survivor, restarted with --force-new-cluster, serves alone
    // with every key, revision and lease it had, under its old ids; the
    // others come back through `member add` with empty data directories.
    // The flag is refused while an old member still answers, and on a
    // restart with the flag left on once the cluster is whole again.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let lease = LeaseClient::new(channel(&cluster, leader))
        .lease_grant(pb::LeaseGrantRequest { ttl: 300, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let mut kv = cluster.kv(leader).await;
    kv.put(pb::PutRequest {
        key: b"leased".to_vec(),
        value: b"yes".to_vec().into(),
        lease,
        ..Default::default()
    })
    .await
    .expect("leased put");
    let mut last = 0;
    for i in 0..30 {
        last = cluster
            .put(leader, &format!("k{i}"), &format!("v{i}"))
            .await;
    }
    let survivor = 1;
    cluster.eventually_sees(survivor, "k29", "v29").await;
    let status = cluster.status(survivor).await.expect("status");
    let (cluster_id, member_id) = status
        .header
        .as_ref()
        .map(|h| (h.cluster_id, h.member_id))
        .expect("header");

    // While the others serve, the survivor refuses to force.
    cluster.stop_member(survivor).await.expect("graceful stop");
    cluster.members[survivor].args.force_new_cluster = Some(true);
    let error = refused(&mut cluster, survivor).await;
    assert!(error.contains("--force-new-cluster refused"), "{error}");
    assert!(error.contains("still answer"), "{error}");
    let others = cluster.wait_for_leader().await;
    assert_ne!(others, survivor);
    assert!(
        cluster.put(others, "meanwhile", "written").await > last,
        "the running cluster was not touched"
    );
    cluster.eventually_sees(0, "meanwhile", "written").await;
    cluster.eventually_sees(2, "meanwhile", "written").await;
    last += 1;

    // The survivor's start without the flag, to have the last write too,
    // then the other two lost with their disks.
    cluster.members[survivor].args.force_new_cluster = None;
    cluster.start_member(survivor).await;
    cluster
        .eventually_sees(survivor, "meanwhile", "written")
        .await;
    for lost in [0, 2] {
        cluster.stop_member(lost).await.expect("stop");
        std::fs::remove_dir_all(cluster.data_dir(lost)).expect("lose the disk");
    }
    cluster.stop_member(survivor).await.expect("stop");

    // Forced: one member, its old ids, every key, the lease, the revision.
    cluster.members[survivor].args.force_new_cluster = Some(true);
    cluster.start_member(survivor).await;
    assert_eq!(cluster.wait_for_leader().await, survivor);
    let status = cluster.status(survivor).await.expect("status");
    let header = status.header.expect("header");
    assert_eq!(
        (header.cluster_id, header.member_id),
        (cluster_id, member_id)
    );
    assert_eq!(header.revision, last, "every write and nothing else");
    assert_eq!(members(&cluster, survivor).await, vec!["t1".to_string()]);
    for i in 0..30 {
        let value = cluster.get(survivor, &format!("k{i}"), false).await;
        assert_eq!(value, Some(format!("v{i}").into_bytes()));
    }
    let ttl = LeaseClient::new(channel(&cluster, survivor))
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .expect("ttl")
        .into_inner();
    assert_eq!((ttl.granted_ttl, ttl.keys), (300, vec![b"leased".to_vec()]));
    assert_eq!(cluster.put(survivor, "alone", "1").await, last + 1);

    // Back to three: member add, then each new member with an empty directory.
    for _ in 0..2 {
        let (new, peer_url) = cluster.prepare_member().await;
        ClusterClient::new(channel(&cluster, survivor))
            .member_add(pb::MemberAddRequest {
                peer_ur_ls: vec![peer_url],
                is_learner: false,
            })
            .await
            .expect("member add");
        cluster.start_member(new).await;
        cluster.eventually_sees(new, "k29", "v29").await;
        cluster.eventually_sees(new, "alone", "1").await;
    }
    assert_eq!(members(&cluster, survivor).await, vec!["t1", "t3", "t4"]);
    let revision = cluster.put(3, "whole", "again").await;
    assert_eq!(revision, last + 2);
    cluster.eventually_sees(4, "whole", "again").await;

    // The flag left on: the members it would remove answer, so it refuses.
    cluster.stop_member(survivor).await.expect("stop");
    let error = refused(&mut cluster, survivor).await;
    assert!(error.contains("t3") && error.contains("t4"), "{error}");
    cluster.members[survivor].args.force_new_cluster = None;
    cluster.start_member(survivor).await;
    cluster.eventually_sees(survivor, "whole", "again").await;
    assert_eq!(members(&cluster, survivor).await, vec!["t1", "t3", "t4"]);
    cluster.shutdown().await;
}
