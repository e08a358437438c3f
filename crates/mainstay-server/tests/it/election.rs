//! The Election service over real gRPC: two candidates through Campaign,
//! Proclaim, Leader, Observe and Resign; a candidacy ended by its lease; and
//! etcd's errors (code Unknown, etcd's text).

use std::time::Duration;

use mainstay_proto::etcdserverpb::CompactionRequest;
use mainstay_proto::v3electionpb::election_client::ElectionClient;
use mainstay_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ResignRequest,
};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

use crate::harness::{Options, TestCluster};
use crate::lock::{grant, keys_under, revoke};

/// How long a candidate must stay blocked to count as not elected.
const WAITING_FOR: Duration = Duration::from_millis(700);

/// How long a hand-over or an observed value may take.
const WITHIN: Duration = Duration::from_secs(10);

async fn election_client(cluster: &TestCluster, i: usize) -> ElectionClient<Channel> {
    let url = format!("http://127.0.0.1:{}", cluster.members[i].client_port);
    ElectionClient::connect(url)
        .await
        .expect("connect election client")
}

async fn spawn_campaign(
    cluster: &TestCluster,
    i: usize,
    lease: i64,
    value: &str,
) -> JoinHandle<Result<CampaignResponse, tonic::Status>> {
    let mut client = election_client(cluster, i).await;
    let request = CampaignRequest {
        name: b"e".to_vec(),
        lease,
        value: value.into(),
    };
    tokio::spawn(async move { client.campaign(request).await.map(|r| r.into_inner()) })
}

async fn elected<T>(call: JoinHandle<T>, what: &str) -> T {
    tokio::time::timeout(WITHIN, call)
        .await
        .unwrap_or_else(|_| panic!("{what} still waiting after {WITHIN:?}"))
        .expect("campaign task")
}

async fn leader_value(client: &mut ElectionClient<Channel>) -> Result<Vec<u8>, tonic::Status> {
    let request = LeaderRequest {
        name: b"e".to_vec(),
    };
    let response = client.leader(request).await?.into_inner();
    Ok(response.kv.expect("leader kv").value.to_vec())
}

/// The next observed value and its header's revision (the value's own
/// revision when seen as a change, the read's when a new leader is looked up).
async fn observed(stream: &mut Streaming<LeaderResponse>) -> (i64, Vec<u8>) {
    let response = tokio::time::timeout(WITHIN, stream.message())
        .await
        .expect("an observed value in time")
        .expect("observe stream healthy")
        .expect("observe stream open");
    let kv = response.kv.expect("observed kv");
    (response.header.expect("header").revision, kv.value.to_vec())
}

fn assert_unknown(status: &tonic::Status, message: &str) {
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(status.message(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_candidates_campaign_proclaim_observe_and_resign() {
    // Goal: etcd's election sequence with two candidates on different members:
    // no leader at first; the first campaign wins at once; the second waits
    // until the first resigns; Proclaim changes the value only with a valid
    // LeaderKey; Observe sees each leader value in order; after the last
    // resignation there is no leader again. Method: one observer on a third
    // member throughout.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let (one, two, three) = (leader, (leader + 1) % 3, (leader + 2) % 3);
    let first_lease = grant(&cluster, one).await;
    let second_lease = grant(&cluster, one).await;
    let mut client = election_client(&cluster, three).await;

    let none = leader_value(&mut client).await.expect_err("no leader yet");
    assert_unknown(&none, "election: no leader");
    let mut observe = client
        .observe(LeaderRequest {
            name: b"e".to_vec(),
        })
        .await
        .expect("observe")
        .into_inner();

    let first = elected(
        spawn_campaign(&cluster, one, first_lease, "a").await,
        "first",
    )
    .await
    .expect("first campaign");
    let first_key = first.leader.expect("leader key");
    assert_eq!(first_key.name, b"e".to_vec());
    assert_eq!(first_key.key, format!("e/{first_lease:x}").into_bytes());
    assert_eq!(first_key.lease, first_lease);
    assert_eq!(first.header.expect("header").revision, first_key.rev);
    assert_eq!(observed(&mut observe).await, (first_key.rev, b"a".to_vec()));

    let mut second = spawn_campaign(&cluster, two, second_lease, "b").await;
    let waited = tokio::time::timeout(WAITING_FOR, &mut second).await;
    assert!(
        waited.is_err(),
        "second candidate elected too early: {waited:?}"
    );
    assert_eq!(leader_value(&mut client).await.expect("leader"), b"a");

    let mut proclaimer = election_client(&cluster, one).await;
    let proclaimed = proclaimer
        .proclaim(ProclaimRequest {
            leader: Some(first_key.clone()),
            value: b"a2".to_vec(),
        })
        .await
        .expect("proclaim")
        .into_inner();
    let proclaimed_at = proclaimed.header.expect("header").revision;
    assert_eq!(
        observed(&mut observe).await,
        (proclaimed_at, b"a2".to_vec())
    );
    assert_eq!(leader_value(&mut client).await.expect("leader"), b"a2");

    // A LeaderKey that names another incarnation does not lead.
    let forged = LeaderKey {
        rev: first_key.rev + 1,
        ..first_key.clone()
    };
    let refused = proclaimer
        .proclaim(ProclaimRequest {
            leader: Some(forged),
            value: b"x".to_vec(),
        })
        .await
        .expect_err("not leader");
    assert_unknown(&refused, "election: not leader");

    proclaimer
        .resign(ResignRequest {
            leader: Some(first_key.clone()),
        })
        .await
        .expect("resign");
    let second = elected(second, "second").await.expect("second campaign");
    let second_key = second.leader.expect("leader key");
    assert_eq!(second_key.key, format!("e/{second_lease:x}").into_bytes());
    let (_, value) = observed(&mut observe).await;
    assert_eq!(value, b"b");
    assert_eq!(leader_value(&mut client).await.expect("leader"), b"b");

    // The old LeaderKey leads no more: Proclaim refuses, Resign changes nothing.
    let stale = proclaimer
        .proclaim(ProclaimRequest {
            leader: Some(first_key.clone()),
            value: b"late".to_vec(),
        })
        .await
        .expect_err("resigned");
    assert_unknown(&stale, "election: not leader");
    proclaimer
        .resign(ResignRequest {
            leader: Some(first_key),
        })
        .await
        .expect("resigning twice is no error");
    assert_eq!(leader_value(&mut client).await.expect("leader"), b"b");

    client
        .resign(ResignRequest {
            leader: Some(second_key),
        })
        .await
        .expect("resign");
    let none = leader_value(&mut client).await.expect_err("no leader left");
    assert_unknown(&none, "election: no leader");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_end_leadership_and_candidacy() {
    // Goal: the election follows leases. Revoking the leader's lease elects
    // the next candidate (and Observe sees it); a waiting candidate whose lease
    // is revoked stops with `election: not leader` instead of waiting on; a
    // candidate whose client gives up takes its key out. Method: three
    // leases and a short client deadline.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let other = (leader + 1) % 3;
    let first_lease = grant(&cluster, leader).await;
    let second_lease = grant(&cluster, leader).await;
    let third_lease = grant(&cluster, leader).await;
    let mut client = election_client(&cluster, other).await;

    elected(
        spawn_campaign(&cluster, leader, first_lease, "a").await,
        "first",
    )
    .await
    .expect("first campaign");
    let mut observe = client
        .observe(LeaderRequest {
            name: b"e".to_vec(),
        })
        .await
        .expect("observe")
        .into_inner();
    assert_eq!(observed(&mut observe).await.1, b"a");
    // The second candidate queues before the third (its wait proves it).
    let mut second = spawn_campaign(&cluster, other, second_lease, "b").await;
    let waited = tokio::time::timeout(WAITING_FOR, &mut second).await;
    assert!(
        waited.is_err(),
        "second candidate elected too early: {waited:?}"
    );
    let mut third = spawn_campaign(&cluster, leader, third_lease, "c").await;
    let waited = tokio::time::timeout(WAITING_FOR, &mut third).await;
    assert!(
        waited.is_err(),
        "third candidate elected too early: {waited:?}"
    );

    revoke(&cluster, leader, first_lease).await;
    elected(second, "second").await.expect("second campaign");
    assert_eq!(observed(&mut observe).await.1, b"b");

    revoke(&cluster, other, third_lease).await;
    let ended = elected(third, "third").await.expect_err("lease revoked");
    assert_unknown(&ended, "election: not leader");

    let quitter = grant(&cluster, leader).await;
    let mut request = tonic::Request::new(CampaignRequest {
        name: b"e".to_vec(),
        lease: quitter,
        value: b"q".to_vec(),
    });
    request.set_timeout(Duration::from_millis(500));
    client.campaign(request).await.expect_err("deadline");
    let mut withdrawn = false;
    for _ in 0..100 {
        if keys_under(&cluster, leader, "e/").await
            == vec![format!("e/{second_lease:x}").into_bytes()]
        {
            withdrawn = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(withdrawn, "the cancelled candidate's key stayed");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_outlives_a_compaction_of_other_keys() {
    // Goal: an Observe stream that stayed idle while other keys changed keeps
    // going after those revisions are compacted (it never needs their
    // history), as etcd's synced watch does. Method: a leader, unrelated
    // puts, a compaction at the latest revision, then a proclamation.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let lease = grant(&cluster, leader).await;
    let mut client = election_client(&cluster, (leader + 1) % 3).await;
    let campaign = elected(
        spawn_campaign(&cluster, leader, lease, "a").await,
        "candidate",
    )
    .await
    .expect("campaign");
    let mut observe = client
        .observe(LeaderRequest {
            name: b"e".to_vec(),
        })
        .await
        .expect("observe")
        .into_inner();
    assert_eq!(observed(&mut observe).await.1, b"a");

    let mut latest = 0;
    for i in 0..20 {
        latest = cluster.put(leader, &format!("other{i}"), "v").await;
    }
    let mut kv = cluster.kv(leader).await;
    kv.compact(CompactionRequest {
        revision: latest,
        physical: true,
    })
    .await
    .expect("compact");
    let proclaimed = client
        .proclaim(ProclaimRequest {
            leader: campaign.leader,
            value: b"a2".to_vec(),
        })
        .await
        .expect("proclaim")
        .into_inner();
    let proclaimed_at = proclaimed.header.expect("header").revision;
    assert_eq!(
        observed(&mut observe).await,
        (proclaimed_at, b"a2".to_vec())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_errors_as_etcd() {
    // Goal: the refusals etcd gives, with its code (Unknown) and text: no
    // leader field, an unknown lease. Method: one member.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = election_client(&cluster, leader).await;

    let missing = client
        .proclaim(ProclaimRequest {
            leader: None,
            value: b"v".to_vec(),
        })
        .await
        .expect_err("no leader field");
    assert_unknown(&missing, "\"leader\" field must be provided");
    let missing = client
        .resign(ResignRequest { leader: None })
        .await
        .expect_err("no leader field");
    assert_unknown(&missing, "\"leader\" field must be provided");
    let unknown = client
        .campaign(CampaignRequest {
            name: b"e".to_vec(),
            lease: 0x7777,
            value: b"v".to_vec(),
        })
        .await
        .expect_err("unknown lease");
    assert_unknown(&unknown, "etcdserver: requested lease not found");
    cluster.shutdown().await;
}
