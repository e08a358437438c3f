//! HTTP/1.1 on the client port beside gRPC: the JSON gateway, health probes
//! and version, with etcd's bodies, statuses and errors.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Options, TestCluster};

/// One HTTP/1.1 request on its own connection (`Connection: close`), and the
/// status and body of the answer. Test-only: a plain client keeps what is on
/// the wire visible.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    http(port, "POST", path, &[], body).await
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_answers_etcds_json_beside_grpc() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let port = cluster.members[1].client_port;

    // Writes and reads through a follower, base64 bytes, 64-bit strings.
    let (status, body) = post(port, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#).await;
    assert_eq!(status, 200, "{body}");
    let revision = json(&body)["header"]["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    let (status, body) = post(port, "/v3beta/kv/range", r#"{"key":"Zm9v"}"#).await;
    assert_eq!(status, 200, "{body}");
    let range = json(&body);
    assert_eq!(range["kvs"][0]["value"], "YmFy");
    assert_eq!(range["kvs"][0]["mod_revision"], revision.as_str());
    assert_eq!(range["count"], "1");
    // The same key through gRPC on the same port.
    assert_eq!(
        cluster.get(1, "foo", false).await.as_deref(),
        Some(&b"bar"[..])
    );

    // A txn with camelCase names and enum names; nested headers carry only the revision.
    let txn = r#"{"compare":[{"target":"VALUE","key":"Zm9v","value":"YmFy"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmF6"}}]}"#;
    let (status, body) = post(port, "/v3/kv/txn", txn).await;
    assert_eq!(status, 200, "{body}");
    let txn = json(&body);
    assert_eq!(txn["succeeded"], true);
    let nested = &txn["responses"][0]["response_put"]["header"];
    assert!(
        nested.get("revision").is_some() && nested.get("cluster_id").is_none(),
        "{body}"
    );

    // etcd's errors: grpc-gateway's body and HTTP status per code.
    let (status, body) = post(port, "/v3/kv/put", r#"{"value":"YmFy"}"#).await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#
        )
    );
    let (status, body) = post(port, "/v3/lease/revoke", r#"{"ID":12345}"#).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        json(&body)["error"],
        "etcdserver: requested lease not found"
    );
    let (status, body) = post(port, "/v3/kv/range", "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["code"], 3);
    let (status, body) = post(port, "/v3/election/proclaim", r#"{"value":"djI="}"#).await;
    assert_eq!(
        (status, body.as_str()),
        (
            500,
            r#"{"error":"\"leader\" field must be provided","message":"\"leader\" field must be provided","code":2}"#
        )
    );

    // A stream: the watch answers `{"result":…}` lines and stays open.
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let watch = r#"{"create_request":{"key":"Zm9v","start_revision":1}}"#;
    let request = format!(
        "POST /v3/watch HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{watch}",
        watch.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut seen = String::new();
    let mut buffer = [0u8; 4096];
    while !(seen.contains("\"created\":true") && seen.contains("\"YmF6\"")) {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("watch answered in time")
            .expect("read");
        assert!(read > 0, "the watch ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(seen.contains("{\"result\":{\"header\":"), "{seen}");
    // Still open: a later write arrives on it.
    cluster.put(0, "foo", "later").await;
    while !seen.contains("\"bGF0ZXI=\"") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the later event arrived")
            .expect("read");
        assert!(read > 0, "the watch ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }

    // What is not a route.
    let (status, body) = http(port, "GET", "/v3/kv/range", &[], "").await;
    assert_eq!(status, 405, "{body}");
    let (status, body) = http(port, "GET", "/nowhere", &[], "").await;
    assert_eq!((status, body.as_str()), (404, "404 page not found\n"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_calls_pass_the_same_auth_checks() {
    let cluster = TestCluster::start(1, Options::default()).await;
    let port = cluster.members[0].client_port;
    for body in [
        r#"{"name":"root","password":"toor"}"#,
        r#"{"name":"reader","password":"pass"}"#,
    ] {
        assert_eq!(post(port, "/v3/auth/user/add", body).await.0, 200);
    }
    assert_eq!(
        post(port, "/v3/auth/role/add", r#"{"name":"root"}"#)
            .await
            .0,
        200
    );
    assert_eq!(
        post(port, "/v3/auth/role/add", r#"{"name":"ro"}"#).await.0,
        200
    );
    let grant = r#"{"name":"ro","perm":{"permType":"READ","key":"YQ==","range_end":"Yg=="}}"#;
    assert_eq!(post(port, "/v3/auth/role/grant", grant).await.0, 200);
    assert_eq!(
        post(
            port,
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            port,
            "/v3/auth/user/grant",
            r#"{"user":"reader","role":"ro"}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(post(port, "/v3/auth/enable", "{}").await.0, 200);

    let (status, body) = post(port, "/v3/kv/put", r#"{"key":"YQ==","value":"MQ=="}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(json(&body)["error"], "etcdserver: user name is empty");

    let login = |name: &'static str, password: &'static str| async move {
        let body = format!(r#"{{"name":"{name}","password":"{password}"}}"#);
        let (status, body) = post(port, "/v3/auth/authenticate", &body).await;
        assert_eq!(status, 200, "{body}");
        json(&body)["token"].as_str().expect("token").to_string()
    };
    let root = login("root", "toor").await;
    let reader = login("reader", "pass").await;
    let put = r#"{"key":"YQ==","value":"MQ=="}"#;
    let (status, body) = http(port, "POST", "/v3/kv/put", &[("Authorization", &root)], put).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        port,
        "POST",
        "/v3/kv/put",
        &[("Authorization", &reader)],
        put,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["error"], "etcdserver: permission denied");
    let read = r#"{"key":"YQ=="}"#;
    let (status, body) = http(
        port,
        "POST",
        "/v3/kv/range",
        &[("Authorization", &reader)],
        read,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        port,
        "POST",
        "/v3/kv/range",
        &[("Authorization", "made-up.7")],
        read,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(json(&body)["error"], "etcdserver: invalid auth token");
    // Health reads bypass auth as etcd's do (it reads as root).
    assert_eq!(http(port, "GET", "/health", &[], "").await.0, 200);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_probes_say_why_with_etcds_bodies() {
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let port = cluster.members[2].client_port;
    assert_eq!(
        http(port, "GET", "/health", &[], "").await,
        (200, r#"{"health":"true","reason":""}"#.to_string())
    );
    assert_eq!(http(port, "POST", "/health", &[], "").await.0, 405);
    assert_eq!(
        http(port, "GET", "/livez", &[], "").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(
        http(port, "GET", "/readyz?verbose", &[], "").await,
        (
            200,
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n[+]non_learner ok\n\
             [+]peer_reachable ok\n[+]disk_latency ok\n[+]apply_latency ok\nreadyz check passed\n"
                .to_string()
        )
    );
    assert_eq!(
        http(port, "GET", "/readyz/non_learner", &[], "").await.0,
        200
    );
    assert_eq!(http(port, "GET", "/readyz/nonsense", &[], "").await.0, 404);
    let (status, body) = http(port, "GET", "/dashboard", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("<title>Mainstay cluster</title>"));
    let (status, body) = http(port, "GET", "/dashboard/api/member", &[], "").await;
    assert_eq!(status, 200);
    let view = json(&body);
    assert_eq!(view["members"].as_array().map(Vec::len), Some(3), "{body}");
    assert!(
        ["leader", "follower"].contains(&view["role"].as_str().unwrap_or("")),
        "{body}"
    );
    assert_eq!(view["alarms"], serde_json::json!([]));
    let (status, body) = http(port, "GET", "/version", &[], "").await;
    assert_eq!(status, 200);
    assert_eq!(json(&body)["etcdserver"], mainstay_api::ETCD_VERSION);

    // Two of three gone: no leader, yet alive.
    cluster.stop_member(0).await.expect("stop 0");
    cluster.stop_member(1).await.expect("stop 1");
    // (A check that began while the leader still looked alive times out its
    // read instead: `RANGE ERROR:etcdserver: request timed out`.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(port, "GET", "/health", &[], "").await;
        if (status, body.as_str()) == (503, r#"{"health":"false","reason":"RAFT NO LEADER"}"#) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still healthy: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        http(port, "GET", "/health?serializable=true", &[], "")
            .await
            .0,
        200
    );
    assert_eq!(http(port, "GET", "/livez", &[], "").await.0, 200);
    let (status, body) = http(port, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("[-]linearizable_read failed: "), "{body}");
    assert!(body.contains("[+]serializable_read ok"), "{body}");
    assert!(body.contains("[+]serializable_read ok"), "{body}");
    let (status, body) = http(port, "GET", "/readyz/peer_reachable", &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("[-]peer_reachable failed: "), "{body}");
    let (status, _) = http(
        port,
        "GET",
        "/readyz?exclude=linearizable_read&exclude=peer_reachable",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    cluster.shutdown().await;
}

/// The value of the first sample line starting with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_have_etcds_names_and_move_under_load() {
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let port = cluster.members[leader].client_port;
    let scrape = || async move {
        let (status, body) = http(port, "GET", "/metrics", &[], "").await;
        assert_eq!(status, 200);
        body
    };
    let before = scrape().await;
    for i in 0..5 {
        cluster.put(leader, &format!("k{i}"), "v").await;
    }
    let (status, _) = post(port, "/v3/kv/deleterange", r#"{"key":"azA="}"#).await;
    assert_eq!(status, 200);
    assert!(cluster.get(leader, "k1", false).await.is_some());
    let after = scrape().await;
    for (name, at_least) in [
        ("etcd_mvcc_put_total", 5.0),
        ("etcd_mvcc_delete_total", 1.0),
        ("etcd_mvcc_range_total", 1.0),
        ("etcd_disk_wal_fsync_duration_seconds_count", 6.0),
        ("etcd_network_client_grpc_received_bytes_total", 5.0),
        ("etcd_network_client_grpc_sent_bytes_total", 5.0),
        (
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"etcdserverpb.KV\",grpc_method=\"Put\",grpc_code=\"OK\"}",
            5.0,
        ),
    ] {
        let (was, is) = (sample(&before, name).unwrap_or(0.0), sample(&after, name));
        let is = is.unwrap_or_else(|| panic!("{name} missing:\n{after}"));
        assert!(is - was >= at_least, "{name}: {was} -> {is}");
    }
    for (name, value) in [
        ("etcd_server_has_leader", 1.0),
        ("etcd_server_is_leader", 1.0),
        ("etcd_debugging_mvcc_keys_total", 4.0),
        ("etcd_server_quota_backend_bytes", 2147483648.0),
    ] {
        assert_eq!(sample(&after, name), Some(value), "{name}:\n{after}");
    }
    // In use: the empty file plus the rows, never more than the file.
    let total = sample(&after, "etcd_mvcc_db_total_size_in_bytes").expect("db size");
    let in_use = sample(&after, "etcd_mvcc_db_total_size_in_use_in_bytes").expect("in use");
    assert!(
        in_use >= mainstay_storage::EMPTY_FILE_BYTES as f64 && in_use <= total,
        "in use {in_use}, total {total}"
    );
    for line in [
        "# TYPE etcd_server_proposals_committed_total gauge",
        "# TYPE etcd_server_leader_changes_seen counter",
        "# TYPE etcd_network_peer_round_trip_time_seconds histogram",
        "etcd_disk_backend_commit_duration_seconds_bucket{le=\"8.192\"}",
        "etcd_server_version{server_version=\"",
        "process_resident_memory_bytes ",
        "mainstay_peer_phi{To=\"",
        "mainstay_peer_lag_entries{To=\"",
        "mainstay_peer_lag_seconds{To=\"",
        "etcd_network_active_peers{Local=\"",
    ] {
        assert!(after.contains(line), "{line} missing:\n{after}");
    }
    // The leader has called both followers: bytes and round trips per peer.
    let followers = after
        .lines()
        .filter(|line| line.starts_with("etcd_network_peer_sent_bytes_total{To="))
        .count();
    assert_eq!(followers, 2, "{after}");
    // Leader changes are sampled every 50 ms: the election is counted soon.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape().await;
        if sample(&text, "etcd_server_leader_changes_seen_total").is_some_and(|n| n >= 1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader change counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}
