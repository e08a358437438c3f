//! TLS between members: a three-member cluster whose peers talk over mutual
//! TLS only, and what a stranger meets at a member's peer port.

use std::time::Duration;

use mainstay_proto::etcdserverpb::{PutRequest, RangeRequest};

use crate::harness::{Options, TestCluster};
use crate::tls::{Ca, Usage, ca, leaf, raw_handshake, write};

/// The cluster's peer settings: https:// peer URLs, each member's own
/// certificate (common name `peer`), client certificates required and their
/// common name checked.
async fn mtls_cluster(ca1: &Ca) -> TestCluster {
    let mut cluster = TestCluster::prepare(3, Options::default()).await;
    let files = cluster.root.join("pki");
    std::fs::create_dir_all(&files).expect("pki dir");
    let ca_file = write(&files, "ca.pem", &ca1.pem);
    let initial: Vec<String> = cluster
        .members
        .iter()
        .enumerate()
        .map(|(i, member)| format!("t{i}=https://127.0.0.1:{}", member.peer_port))
        .collect();
    for (i, member) in cluster.members.iter_mut().enumerate() {
        let cert = leaf(ca1, "peer", 100 + i as u64, Usage::Peer, false);
        let args = &mut member.args;
        let url = format!("https://127.0.0.1:{}", member.peer_port);
        args.listen_peer_urls = Some(url.clone());
        args.initial_advertise_peer_urls = Some(url);
        args.initial_cluster = Some(initial.join(","));
        args.peer_cert_file = Some(write(&files, &format!("t{i}.pem"), &cert.cert));
        args.peer_key_file = Some(write(&files, &format!("t{i}-key.pem"), &cert.key));
        args.peer_trusted_ca_file = Some(ca_file.clone());
        args.peer_client_cert_auth = Some(true);
        args.peer_cert_allowed_cn = Some("peer".to_string());
    }
    for i in 0..3 {
        cluster.start_member(i).await;
    }
    cluster.wait_for_leader().await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_replicate_over_mutual_tls_and_refuse_strangers() {
    // Method: a cluster whose peer ports speak only mutual TLS; writes through
    // one member are read from another; then strangers knock on a peer port.
    let ca1 = ca("peer CA");
    let ca2 = ca("other CA");
    let mut cluster = mtls_cluster(&ca1).await;
    let mut kv = cluster.kv(1).await;
    for n in 0..20 {
        kv.put(PutRequest {
            key: format!("k{n}").into_bytes(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })
        .await
        .expect("put through member 1");
    }
    let mut other = cluster.kv(2).await;
    let read = other
        .range(RangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        })
        .await
        .expect("read through member 2")
        .into_inner();
    assert_eq!(read.count, 20);

    let port = cluster.members[0].peer_port;
    let peer = leaf(&ca1, "peer", 200, Usage::Peer, false);
    assert_eq!(
        raw_handshake(port, &ca1, Some(&peer), &[&rustls::version::TLS13]).await,
        Ok(()),
        "a certificate like the members' is served"
    );
    let strangers = [
        ("no certificate", None),
        (
            "a certificate from another CA",
            Some(leaf(&ca2, "peer", 201, Usage::Peer, false)),
        ),
        (
            "another common name",
            Some(leaf(&ca1, "intruder", 202, Usage::Peer, false)),
        ),
        (
            "an expired certificate",
            Some(leaf(&ca1, "peer", 203, Usage::Peer, true)),
        ),
    ];
    for (case, identity) in &strangers {
        assert!(
            raw_handshake(port, &ca1, identity.as_ref(), &[&rustls::version::TLS13])
                .await
                .is_err(),
            "{case} must be refused at the peer port"
        );
    }
    // Plain text to the peer port: no answer.
    let (dial, url) = (
        mainstay_raft::tcp_dial(),
        format!("http://127.0.0.1:{port}"),
    );
    let plain = mainstay_raft::fetch_cluster_view(&dial, &url);
    let plain = tokio::time::timeout(Duration::from_secs(10), plain).await;
    assert!(
        !matches!(plain, Ok(Ok(_))),
        "plain text to a TLS peer port must not be answered"
    );

    // A restarted member rejoins over TLS and has every write.
    cluster.stop_member(2).await.expect("stops");
    kv.put(PutRequest {
        key: b"k-late".to_vec(),
        value: b"v".to_vec().into(),
        ..Default::default()
    })
    .await
    .expect("put while member 2 is down");
    cluster.start_member(2).await;
    let mut caught_up = false;
    for _ in 0..100 {
        let mut kv2 = cluster.kv(2).await;
        let got = kv2
            .range(RangeRequest {
                key: b"k-late".to_vec(),
                serializable: true,
                ..Default::default()
            })
            .await;
        if got.is_ok_and(|reply| reply.into_inner().count == 1) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(caught_up, "the restarted member caught up over TLS");
    for i in 0..3 {
        cluster.stop_member(i).await.expect("stops cleanly");
    }
}
