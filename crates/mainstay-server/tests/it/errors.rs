//! etcd's error contract over the wire: code and exact message, and nothing
//! changes when a request is refused.

use mainstay_proto::etcdserverpb::{
    CompactionRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, request_op,
};
use tonic::Code;

use crate::harness::{Options, TestCluster};

fn put_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_use_etcds_codes_and_messages() {
    // Goal: each refusal carries etcd's gRPC code and byte-identical message
    // (clients match on the text) and leaves the revision unchanged.
    let cluster = TestCluster::start(3, Options::default()).await;
    for i in 0..4 {
        cluster.put(0, &format!("k{i}"), "v").await;
    }
    let mut kv = cluster.kv(1).await;
    let compact = CompactionRequest {
        revision: 3,
        physical: true,
    };
    kv.compact(compact).await.expect("compact");
    let revision_before = cluster.put(0, "probe", "v").await;

    let mut cases: Vec<(&str, tonic::Status, Code, &str)> = Vec::new();
    let empty = kv.put(PutRequest::default()).await.expect_err("empty key");
    cases.push((
        "empty key put",
        empty,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    ));
    let empty = kv
        .range(RangeRequest::default())
        .await
        .expect_err("empty key");
    cases.push((
        "empty key range",
        empty,
        Code::InvalidArgument,
        "etcdserver: key is not provided",
    ));
    let old = kv
        .range(RangeRequest {
            key: b"k0".to_vec(),
            revision: 2,
            ..Default::default()
        })
        .await
        .expect_err("compacted");
    cases.push((
        "compacted read",
        old,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    ));
    let future = kv
        .range(RangeRequest {
            key: b"k0".to_vec(),
            revision: 1000,
            ..Default::default()
        })
        .await
        .expect_err("future");
    cases.push((
        "future read",
        future,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    ));
    let again = kv.compact(compact).await.expect_err("compacted twice");
    cases.push((
        "compact twice",
        again,
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    ));
    let many = TxnRequest {
        success: (0..129).map(|i| put_op(&format!("m{i}"))).collect(),
        ..Default::default()
    };
    let many = kv.txn(many).await.expect_err("too many ops");
    cases.push((
        "129 ops",
        many,
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    ));
    let duplicate = TxnRequest {
        success: vec![put_op("d"), put_op("d")],
        ..Default::default()
    };
    let duplicate = kv.txn(duplicate).await.expect_err("duplicate");
    cases.push((
        "duplicate",
        duplicate,
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    ));
    let large = PutRequest {
        key: b"big".to_vec(),
        value: vec![7; 1_600_000].into(),
        ..Default::default()
    };
    let large = kv.put(large).await.expect_err("too large");
    cases.push((
        "too large",
        large,
        Code::InvalidArgument,
        "etcdserver: request is too large",
    ));
    // Beyond gRPC's limit (max-request-bytes + 512 KiB = 2 MiB here): grpc-go's
    // status and words, on every service.
    let huge = PutRequest {
        key: b"huge".to_vec(),
        value: vec![7; 2_200_000].into(),
        ..Default::default()
    };
    let huge_length = prost::Message::encoded_len(&huge);
    let huge = kv.put(huge).await.expect_err("beyond the gRPC limit");
    let huge_message =
        format!("grpc: received message larger than max ({huge_length} vs. 2097152)");
    cases.push((
        "beyond the gRPC limit",
        huge,
        Code::ResourceExhausted,
        huge_message.as_str(),
    ));
    let url = format!("http://127.0.0.1:{}", cluster.members[0].client_port);
    let mut admin = mainstay_proto::etcdserverpb::cluster_client::ClusterClient::connect(url)
        .await
        .expect("connect");
    let many_urls = mainstay_proto::etcdserverpb::MemberAddRequest {
        peer_ur_ls: vec!["http://127.0.0.1:1".repeat(1000); 200],
        is_learner: true,
    };
    let many_length = prost::Message::encoded_len(&many_urls);
    let many = admin
        .member_add(many_urls)
        .await
        .expect_err("beyond the gRPC limit");
    let many_message =
        format!("grpc: received message larger than max ({many_length} vs. 2097152)");
    cases.push((
        "beyond the gRPC limit, cluster service",
        many,
        Code::ResourceExhausted,
        many_message.as_str(),
    ));
    let sort = RangeRequest {
        key: b"k".to_vec(),
        sort_order: 9,
        ..Default::default()
    };
    let sort = kv.range(sort).await.expect_err("sort");
    cases.push((
        "bad sort",
        sort,
        Code::InvalidArgument,
        "etcdserver: invalid sort option",
    ));
    let missing = PutRequest {
        key: b"nope".to_vec(),
        ignore_value: true,
        ..Default::default()
    };
    let missing = kv.put(missing).await.expect_err("missing");
    cases.push((
        "ignore_value on missing",
        missing,
        Code::InvalidArgument,
        "etcdserver: key not found",
    ));
    let lease = PutRequest {
        key: b"l".to_vec(),
        lease: 42,
        ..Default::default()
    };
    let lease = kv.put(lease).await.expect_err("lease");
    cases.push((
        "unknown lease",
        lease,
        Code::NotFound,
        "etcdserver: requested lease not found",
    ));

    for (name, status, code, message) in cases {
        assert_eq!((status.code(), status.message()), (code, message), "{name}");
    }
    let after = kv
        .range(RangeRequest {
            key: b"probe".to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(
        after.header.expect("header").revision,
        revision_before,
        "refusals changed nothing"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_version_kubernetes_accepts() {
    // Goal: Maintenance.Status carries a semver ≥ 3.5.13, the leader, raft
    // indexes and a real database size; headers carry true ids.
    let cluster = TestCluster::start(3, Options::default()).await;
    cluster.put(0, "a", "b").await;
    // Status is member-local: wait until member 2 has applied the write.
    cluster.eventually_sees(2, "a", "b").await;
    let status = cluster.status(2).await.expect("status");
    let parts: Vec<u64> = status
        .version
        .split('.')
        .map(|p| p.parse().expect("number"))
        .collect();
    assert!(parts >= vec![3, 5, 13], "version {}", status.version);
    assert_ne!(status.leader, 0);
    assert!(status.raft_index >= 2 && status.raft_applied_index >= 1);
    assert!(status.db_size > 0);
    let header = status.header.expect("header");
    assert_ne!(header.cluster_id, 0);
    assert_ne!(header.member_id, 0);
    assert!(header.raft_term >= 1);
    cluster.shutdown().await;
}
