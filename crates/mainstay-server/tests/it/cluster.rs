//! Replication, forwarding, linearizable reads, failover, restart, snapshots.

use std::time::Duration;

use crate::harness::{Options, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_followers_forward() {
    // Goal: a write sent to any member (followers forward it) is acknowledged with
    // one new revision, and a linearizable read on another member right after
    // the acknowledgement sees it. Method: write through each member in turn.
    let cluster = TestCluster::start(3, Options::default()).await;
    let mut last_revision = 1;
    for round in 0..3 {
        for writer in 0..3 {
            let key = format!("k{round}-{writer}");
            let revision = cluster.put(writer, &key, "v").await;
            assert_eq!(revision, last_revision + 1, "one revision per write");
            last_revision = revision;
            let reader = (writer + 1) % 3;
            assert_eq!(
                cluster.get(reader, &key, false).await.as_deref(),
                Some(&b"v"[..])
            );
        }
    }
    for member in 0..3 {
        cluster.eventually_sees(member, "k2-2", "v").await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_a_new_leader_and_the_old_one_catches_up() {
    // Goal: stopping the leader of three leaves a majority that elects a new
    // leader and keeps serving writes; the old leader, restarted, catches up and
    // no acknowledged write is lost.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put(leader, "before", "1").await;
    cluster.stop_member(leader).await.expect("clean stop");
    let survivor = (leader + 1) % 3;
    let revision = cluster.put(survivor, "after", "2").await;
    assert!(revision >= 3);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    cluster.start_member(leader).await;
    cluster.eventually_sees(leader, "after", "2").await;
    cluster.eventually_sees(leader, "before", "1").await;
    assert_eq!(
        cluster.get(leader, "after", false).await.as_deref(),
        Some(&b"2"[..])
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_before_it_goes() {
    // Goal: a leader stopped gracefully (SIGTERM's path) first hands
    // leadership to a follower: when its stop returns, a survivor already
    // leads in a later term (no election timeout of silence) with every write.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put(leader, "before", "1").await;
    let old = cluster.status(leader).await.expect("status");
    let old_id = old.header.as_ref().expect("header").member_id;
    cluster.stop_member(leader).await.expect("clean stop");
    let mut leaders = Vec::new();
    for i in (0..3).filter(|i| *i != leader) {
        let status = cluster.status(i).await.expect("status");
        let id = status.header.as_ref().expect("header").member_id;
        if status.leader == id {
            assert!(status.raft_term > old.raft_term, "a later term");
            leaders.push(i);
        }
    }
    assert_eq!(
        leaders.len(),
        1,
        "one survivor leads at once, not {old_id:x}"
    );
    cluster.eventually_sees(leaders[0], "before", "1").await;
    cluster.put(leaders[0], "after", "2").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_every_acknowledged_write() {
    // Goal: stop every member, start them again on the same data: all data and
    // the revision are intact and the cluster serves writes again.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let mut revision = 0;
    for i in 0..20 {
        revision = cluster
            .put(i % 3, &format!("key{i}"), &format!("value{i}"))
            .await;
    }
    for i in 0..3 {
        cluster.stop_member(i).await.expect("clean stop");
    }
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    cluster.wait_for_leader().await;
    for i in 0..20 {
        let value = cluster.get(i % 3, &format!("key{i}"), false).await;
        assert_eq!(value, Some(format!("value{i}").into_bytes()));
    }
    assert_eq!(cluster.put(0, "again", "x").await, revision + 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_behind_a_purged_log_catches_up_by_snapshot() {
    // Goal: a member that missed entries the leader has already purged is
    // brought up to date by snapshot transfer. Method: tiny snapshot policy,
    // stop one member, write until the leader purges past it, restart it.
    let options = Options {
        snapshot_count: 20,
        snapshot_catchup_entries: 5,
        ..Options::default()
    };
    let mut cluster = TestCluster::start(3, options).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = (leader + 1) % 3;
    cluster.put(leader, "first", "1").await;
    cluster.eventually_sees(lagging, "first", "1").await;
    let lagging_index = cluster
        .status(lagging)
        .await
        .expect("status")
        .raft_applied_index;
    cluster.stop_member(lagging).await.expect("clean stop");
    for i in 0..120 {
        cluster.put(leader, &format!("bulk{i}"), "x").await;
    }
    let leader_replica = cluster.members[leader]
        .replica
        .clone()
        .expect("leader replica");
    let mut purged = false;
    for _ in 0..100 {
        // The leader's log no longer holds what the lagging member needs next.
        if leader_replica
            .status()
            .purged_index
            .is_some_and(|p| p > lagging_index + 1)
        {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(purged, "leader never purged: {:?}", leader_replica.status());
    cluster.start_member(lagging).await;
    cluster.eventually_sees(lagging, "bulk119", "x").await;
    cluster.eventually_sees(lagging, "first", "1").await;
    let lagging_status = cluster.members[lagging]
        .replica
        .as_ref()
        .expect("replica")
        .status();
    assert!(
        lagging_status
            .snapshot_index
            .is_some_and(|s| s > lagging_index),
        "caught up without a snapshot: {lagging_status:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_promoted_and_removed_at_run_time() {
    // Goal: etcd's runtime reconfiguration. A learner is added (bad and duplicate
    // URLs and a second learner are refused with etcd's errors), starts with
    // `existing`, learns its id from its peers, catches up by snapshot, is promoted
    // once in sync, and serves; an original follower is removed and stops by itself.
    use mainstay_proto::etcdserverpb::cluster_client::ClusterClient;
    use mainstay_proto::etcdserverpb::{
        MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    };
    let options = Options {
        snapshot_count: 20,
        snapshot_catchup_entries: 5,
        ..Options::default()
    };
    let mut cluster = TestCluster::start(3, options).await;
    for i in 0..40 {
        cluster
            .put(i % 3, &format!("key{i}"), &format!("v{i}"))
            .await;
    }
    let url = format!("http://127.0.0.1:{}", cluster.members[1].client_port);
    let mut admin = ClusterClient::connect(url).await.expect("connect");
    let add = |urls: Vec<String>, is_learner| MemberAddRequest {
        peer_ur_ls: urls,
        is_learner,
    };
    let error = admin
        .member_add(add(vec!["not a url".into()], true))
        .await
        .expect_err("invalid");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert_eq!(error.message(), "etcdserver: given member URLs are invalid");
    let taken = cluster.members[0]
        .args
        .listen_peer_urls
        .clone()
        .expect("url");
    let error = admin
        .member_add(add(vec![taken], true))
        .await
        .expect_err("duplicate");
    assert_eq!(error.message(), "etcdserver: Peer URLs already exists");

    let (new, peer_url) = cluster.prepare_member().await;
    let added = admin
        .member_add(add(vec![peer_url.clone()], true))
        .await
        .expect("add")
        .into_inner();
    let member = added.member.expect("the added member");
    assert!(member.is_learner);
    assert_eq!(member.name, "", "unstarted until it publishes itself");
    assert_eq!(added.members.len(), 4);
    let error = admin
        .member_add(add(vec!["http://127.0.0.1:1".into()], true))
        .await
        .expect_err("second learner");
    assert_eq!(
        error.message(),
        "etcdserver: too many learner members in cluster"
    );

    cluster.start_member(new).await;
    cluster.eventually_sees(new, "key39", "v39").await;
    let replica = cluster.members[new].replica.clone().expect("replica");
    assert_eq!(
        replica.member_id(),
        member.id,
        "learned its id from the peers"
    );
    assert!(
        replica.status().snapshot_index.is_some(),
        "caught up by snapshot"
    );
    let mut promoted = false;
    for _ in 0..100 {
        match admin
            .member_promote(MemberPromoteRequest { id: member.id })
            .await
        {
            Ok(_) => {
                promoted = true;
                break;
            }
            // Retryable refusals only: not yet in sync (or, on a loaded machine,
            // a peer's heartbeat not yet seen).
            Err(status) => assert!(
                [
                    "etcdserver: can only promote a learner member which is in sync with leader",
                    "etcdserver: re-configuration failed due to not enough started members",
                ]
                .contains(&status.message()),
                "{}",
                status.message()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(promoted, "the learner was never promoted");
    let error = admin
        .member_promote(MemberPromoteRequest { id: member.id })
        .await
        .expect_err("already a voter");
    assert_eq!(
        error.message(),
        "etcdserver: can only promote a learner member"
    );

    // A follower is removed here (the admin talks to member 1). A leader removing
    // itself is exercised by the simulator's replacements.
    let leader = cluster.wait_for_leader().await;
    let gone = [0, 2]
        .into_iter()
        .find(|i| *i != leader)
        .expect("one of two is a follower");
    let removed_id = cluster.members[gone]
        .replica
        .as_ref()
        .expect("running")
        .member_id();
    let remaining = admin
        .member_remove(MemberRemoveRequest { id: removed_id })
        .await
        .expect("remove")
        .into_inner()
        .members;
    assert_eq!(remaining.len(), 3);
    assert!(
        remaining
            .iter()
            .all(|m| m.id != removed_id && !m.is_learner)
    );
    let exit = cluster.wait_exit(gone, Duration::from_secs(10)).await;
    let error = exit.expect_err("a removed member stops");
    assert!(format!("{error:#}").contains("removed"), "{error:#}");
    let error = admin
        .member_remove(MemberRemoveRequest { id: removed_id })
        .await
        .expect_err("gone");
    assert_eq!(error.message(), "etcdserver: member not found");

    cluster.wait_for_leader().await;
    let revision = cluster.put(new, "after", "reconfig").await;
    assert!(revision > 40);
    assert_eq!(
        cluster.get(1, "after", false).await.as_deref(),
        Some(&b"reconfig"[..])
    );
    let listed = admin
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("list")
        .into_inner()
        .members;
    let joined = listed.iter().find(|m| m.id == member.id).expect("listed");
    assert_eq!(joined.name, format!("t{new}"));
    assert!(!joined.client_ur_ls.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_can_remove_itself_and_the_client_hears_it() {
    // Goal: etcd lets an operator remove the leader. The client gets the new
    // member list (not `server stopped`), whether it asked a follower (which
    // forwards) or the leader itself; the removed leader stops by itself and the
    // rest elect a leader and serve. Method: 3 -> 2 through a follower, then
    // 2 -> 1 through the new leader.
    use mainstay_proto::etcdserverpb::MemberRemoveRequest;
    use mainstay_proto::etcdserverpb::cluster_client::ClusterClient;
    let mut cluster = TestCluster::start(3, Options::default()).await;
    cluster.put(0, "before", "1").await;
    let mut serving: Vec<usize> = vec![0, 1, 2];
    for round in 0..2 {
        let leader = cluster.wait_for_leader().await;
        let via = if round == 0 {
            *serving.iter().find(|i| **i != leader).expect("a follower")
        } else {
            leader
        };
        let leader_id = cluster.members[leader]
            .replica
            .as_ref()
            .expect("running")
            .member_id();
        let url = format!("http://127.0.0.1:{}", cluster.members[via].client_port);
        let mut admin = ClusterClient::connect(url).await.expect("connect");
        let remaining = admin
            .member_remove(MemberRemoveRequest { id: leader_id })
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "removing the leader through {}: {}",
                    if via == leader {
                        "itself"
                    } else {
                        "a follower"
                    },
                    status.message()
                )
            })
            .into_inner()
            .members;
        serving.retain(|i| *i != leader);
        assert_eq!(remaining.len(), serving.len());
        assert!(remaining.iter().all(|m| m.id != leader_id));
        let exit = cluster.wait_exit(leader, Duration::from_secs(10)).await;
        let error = exit.expect_err("a removed leader stops");
        assert!(format!("{error:#}").contains("removed"), "{error:#}");
        let key = format!("after{round}");
        cluster.put(serving[0], &key, "v").await;
        for member in &serving {
            cluster.eventually_sees(*member, &key, "v").await;
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_for_another_member_id_are_refused() {
    // Goal: a member answers Raft traffic only when it is addressed by its own id,
    // so a replaced member's old and new incarnations, reachable at one peer URL,
    // are never mistaken for each other, and undecodable ones change nothing.
    // Method: send a vote and an append addressed to another id, then garbage.
    use mainstay_proto::peer::RaftPayload;
    use mainstay_proto::peer::raft_peer_client::RaftPeerClient;
    let cluster = TestCluster::start(3, Options::default()).await;
    let url = format!("http://127.0.0.1:{}", cluster.members[0].peer_port);
    let mut peer = RaftPeerClient::connect(url).await.expect("connect");
    let me = cluster.members[0]
        .replica
        .as_ref()
        .expect("running")
        .member_id();
    let error = peer
        .vote(RaftPayload {
            payload: Vec::new(),
            to: me ^ 1,
        })
        .await
        .expect_err("refused");
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    assert!(
        error.message().contains("reached member"),
        "{}",
        error.message()
    );
    // Addressed correctly, the same garbage payload is refused as undecodable.
    let error = peer
        .vote(RaftPayload {
            payload: Vec::new(),
            to: me,
        })
        .await
        .expect_err("undecodable");
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    // The same on the append stream (served pipelined): the refused message
    // ends the stream with its status, and the member goes on.
    for (to, code) in [
        (me ^ 1, tonic::Code::FailedPrecondition),
        (me, tonic::Code::InvalidArgument),
    ] {
        let message = RaftPayload {
            payload: vec![0xff; 8],
            to,
        };
        let mut answers = peer
            .append_stream(futures::stream::iter(vec![message]))
            .await
            .expect("stream opened")
            .into_inner();
        let error = answers.message().await.expect_err("refused");
        assert_eq!(error.code(), code, "{error:?}");
    }
    cluster.put(0, "after", "refusals").await;
    cluster.eventually_sees(1, "after", "refusals").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_member_grows_to_two_voters() {
    // Goal: etcd's exception to the strict reconfiguration check (1 started of
    // 2 members), used to grow a cluster restored onto one member. The add is
    // answered before the new voter runs; writes wait for it, then go on.
    use mainstay_proto::etcdserverpb::MemberAddRequest;
    use mainstay_proto::etcdserverpb::cluster_client::ClusterClient;
    let mut cluster = TestCluster::start(1, Options::default()).await;
    cluster.put(0, "before", "1").await;
    let url = format!("http://127.0.0.1:{}", cluster.members[0].client_port);
    let mut admin = ClusterClient::connect(url).await.expect("connect");
    let (new, peer_url) = cluster.prepare_member().await;
    let added = admin
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![peer_url],
            is_learner: false,
        })
        .await
        .expect("a voting member add on one member is allowed")
        .into_inner();
    let member = added.member.expect("the added member");
    assert!(!member.is_learner);
    assert_eq!(added.members.len(), 2);

    cluster.start_member(new).await;
    cluster.eventually_sees(new, "before", "1").await;
    cluster.put(1, "after", "2").await;
    cluster.eventually_sees(0, "after", "2").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_serves_clients_only_after_publishing_its_client_urls() {
    // Goal: etcd publishes first, then serves. The first answer of every member
    // of a new cluster lists that member with its client URLs (a client that
    // takes ClientURLs[0] of a started member must not find it empty).
    use mainstay_proto::etcdserverpb::MemberListRequest;
    use mainstay_proto::etcdserverpb::cluster_client::ClusterClient;
    let cluster = TestCluster::start(3, Options::default()).await;
    for member in &cluster.members {
        let url = format!("http://127.0.0.1:{}", member.client_port);
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect_lazy();
        let mut admin = ClusterClient::new(channel);
        let mut answer = None;
        for _ in 0..100 {
            let call = admin.member_list(MemberListRequest {
                linearizable: false,
            });
            if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(200), call).await {
                answer = Some(reply.into_inner());
                break;
            }
        }
        let answer = answer.expect("the member serves within 20 s");
        let own = answer.header.as_ref().map(|h| h.member_id).expect("header");
        let listed = answer
            .members
            .iter()
            .find(|m| m.id == own)
            .expect("lists itself");
        assert!(
            !listed.client_ur_ls.is_empty(),
            "served before publishing: {listed:?}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_writes_costs_each_request_at_most_one_retry() {
    // Goal: restarting every member one after another (the graceful stop:
    // a leader hands over first) while a client writes, trying the next
    // member on a failure as etcd's clients do: every put succeeds with at
    // most one retry, and every acknowledged put is there afterwards.
    use mainstay_proto::etcdserverpb::PutRequest;
    use mainstay_proto::etcdserverpb::kv_client::KvClient;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let mut cluster = TestCluster::start(3, Options::default()).await;
    cluster.wait_for_leader().await;
    let urls: Vec<String> = cluster
        .members
        .iter()
        .map(|m| format!("http://127.0.0.1:{}", m.client_port))
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut at, mut most_retries, mut retries_total) = (0usize, 0, 0);
            let mut acknowledged = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let key = format!("roll/{:05}", acknowledged.len());
                let mut retries = 0;
                loop {
                    let url = urls[at % urls.len()].clone();
                    let put = async {
                        let mut kv = KvClient::connect(url).await.ok()?;
                        kv.put(PutRequest {
                            key: key.clone().into_bytes(),
                            value: b"v".to_vec().into(),
                            ..PutRequest::default()
                        })
                        .await
                        .ok()
                    };
                    // A member that is starting accepts connections before
                    // it serves: a client's deadline moves it on.
                    match tokio::time::timeout(Duration::from_secs(3), put).await {
                        Ok(Some(_)) => break,
                        _ => {
                            retries += 1;
                            at += 1;
                            assert!(retries <= 3, "{key}: {retries} retries");
                        }
                    }
                }
                most_retries = most_retries.max(retries);
                retries_total += retries;
                acknowledged.push(key);
            }
            (acknowledged, most_retries, retries_total)
        })
    };
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.stop_member(i).await.expect("clean stop");
        cluster.start_member(i).await;
        cluster.eventually_sees(i, "roll/00000", "v").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    done.store(true, Ordering::Relaxed);
    let (acknowledged, most_retries, retries_total) = writer.await.expect("writer");
    eprintln!(
        "rolling restart: {} puts, {retries_total} retries, at most {most_retries} for one",
        acknowledged.len()
    );
    assert!(most_retries <= 1, "a request needed {most_retries} retries");
    let last = acknowledged.last().expect("puts went on").clone();
    for i in 0..3 {
        cluster.eventually_sees(i, &last, "v").await;
    }
    for key in acknowledged.iter().step_by(7) {
        assert_eq!(cluster.get(0, key, false).await.as_deref(), Some(&b"v"[..]));
    }
    cluster.shutdown().await;
}
