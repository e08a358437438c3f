//! etcd's configuration as an operator migrating from etcd has it: refused
//! flags stop the binary at once with a one-line error naming them, ignored
//! ones let it start and are named in a warning, etcd's YAML file and `ETCD_*`
//! variables take their place in the precedence.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::{Children, serve, serve_command};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write config file");
    path.to_str().expect("utf-8 path").to_string()
}

/// The one line of a failed `serve`, checked to be the whole of its stderr.
fn one_line_error(args: &[&str], env: &[(&str, &str)]) -> String {
    let (ok, stderr) = serve(args, env);
    assert!(!ok, "{args:?} {env:?} started");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?} {env:?}: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

/// Arguments, environment, and what the error line must hold.
type RefusalCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn refused_flags_fail_fast_with_one_line_naming_them() {
    // Method: each refused setting, from a flag, an ETCD_* variable or etcd's
    // YAML file; a single stderr line also shows no member started (it logs).
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = write(
        &dir,
        "etcd.conf.yml",
        "name: infra1\npeer-transport-security:\n  client-cert-file: /etc/etcd/pc.crt\n  client-key-file: /etc/etcd/pc.key\n",
    );
    // (args, environment, what the line must hold)
    let cases: [RefusalCase; 10] = [
        (
            &["--cert-file", "/etc/etcd/server.crt"],
            &[],
            "--cert-file and --key-file must be given together",
        ),
        (
            &[
                "--listen-client-urls",
                "https://127.0.0.1:1",
                "--cert-file",
                "/nonexistent/server.crt",
                "--key-file",
                "/nonexistent/server.key",
            ],
            &[],
            "client TLS: read the certificate (--cert-file): /nonexistent/server.crt",
        ),
        (
            &["--peer-client-cert-auth"],
            &[],
            "--peer-client-cert-auth needs --peer-trusted-ca-file",
        ),
        (&["--enable-v2=true"], &[], "--enable-v2=true: "),
        (&["--proxy", "on"], &[], "--proxy=on: "),
        (
            &["--discovery", "https://discovery.etcd.io/x"],
            &[],
            "--discovery=",
        ),
        (&["--wal-dir", "/var/lib/etcd/wal"], &[], "--wal-dir="),
        (
            &[],
            &[("ETCD_DISCOVERY_SRV", "example.com")],
            "--discovery-srv=\"example.com\" (from ETCD_DISCOVERY_SRV): ",
        ),
        (
            &["--config-file", &yaml],
            &[],
            "--peer-client-cert-file=\"/etc/etcd/pc.crt\" (from peer-transport-security.client-cert-file in the config file): a separate certificate",
        ),
        (
            &["--listen-client-urls", "https://127.0.0.1:2379"],
            &[],
            "--listen-client-urls has https:// or unixs:// URLs: give --cert-file and --key-file",
        ),
    ];
    for (args, env, expected) in cases {
        let line = one_line_error(args, env);
        assert!(line.contains(expected), "{args:?} {env:?}: {line}");
    }
}

#[test]
fn warned_flags_start_and_the_warnings_name_them() {
    // Method: a one-member cluster started with settings Mainstay ignores, from
    // flags, an ETCD_* variable and etcd's YAML file; its log up to "serving
    // clients" must hold a WARN line naming each.
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let yaml = write(
        &dir,
        "etcd.conf.yml",
        &format!(
            "name: solo\nlisten-client-urls: http://127.0.0.1:{client}\nlisten-peer-urls: http://127.0.0.1:{peer}\nmax-wals: 5\nenable-pprof: true\npeer-transport-security:\n  client-cert-file: \"\"\n"
        ),
    );
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let mut member = serve_command(
        &[
            "--config-file",
            &yaml,
            "--data-dir",
            data_dir,
            "--logger=zap",
            "--enable-v2=false",
        ],
        &[("ETCD_MAX_SNAPSHOTS", "5")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start mainstay");
    let stderr = member.stderr.take().expect("stderr");
    let _member = Children(vec![member]);
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let serving = line.contains("serving clients");
        seen.push(line);
        if serving || seen.len() > 200 {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("serving clients")),
        "{seen:#?}"
    );
    for flag in [
        "--logger=zap",
        "--enable-v2=false",
        "--max-snapshots=5 (from ETCD_MAX_SNAPSHOTS)",
        "--max-wals=5 (from max-wals in the config file)",
        "--enable-pprof=true (from enable-pprof in the config file)",
        "--peer-client-cert-file (empty) (from peer-transport-security.client-cert-file in the config file)",
    ] {
        assert!(
            seen.iter()
                .any(|l| l.contains("WARN") && l.contains(flag) && l.contains("is ignored")),
            "no warning naming {flag}: {seen:#?}"
        );
    }
}

#[test]
fn yaml_file_and_etcd_variables_take_their_place_in_the_precedence() {
    // Method: as flags_beat_env_beat_file_beat_defaults for TOML: the file
    // sets a bad election timeout; a higher layer overriding it moves the first
    // error on to --max-txn-ops (checked later). Layers: flag > MAINSTAY_* >
    // ETCD_* > file. `etcd.conf` has no extension: read as YAML by its content.
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["etcd.conf.yml", "etcd.conf"] {
        let file = write(
            &dir,
            name,
            "election-timeout: 100\nheartbeat-interval: 100\n",
        );
        let file = file.as_str();

        let line = one_line_error(&["--config-file", file], &[]);
        assert!(
            line.contains("--election-timeout (100 ms)"),
            "{name}: {line}"
        );

        let line = one_line_error(&[], &[("ETCD_CONFIG_FILE", file)]);
        assert!(
            line.contains("--election-timeout (100 ms)"),
            "ETCD_CONFIG_FILE: {line}"
        );

        let bad_txn_ops = ["--config-file", file, "--max-txn-ops", "0"];
        let line = one_line_error(&bad_txn_ops, &[("ETCD_ELECTION_TIMEOUT", "1000")]);
        assert!(
            line.contains("--max-txn-ops"),
            "ETCD_* beats the file: {line}"
        );

        let line = one_line_error(
            &bad_txn_ops,
            &[
                ("ETCD_ELECTION_TIMEOUT", "100"),
                ("MAINSTAY_ELECTION_TIMEOUT", "1000"),
            ],
        );
        assert!(
            line.contains("--max-txn-ops"),
            "MAINSTAY_* beats ETCD_*: {line}"
        );

        let line = one_line_error(
            &[
                "--config-file",
                file,
                "--election-timeout",
                "1000",
                "--max-txn-ops",
                "0",
            ],
            &[("ETCD_ELECTION_TIMEOUT", "100")],
        );
        assert!(line.contains("--max-txn-ops"), "a flag beats all: {line}");
    }
}

#[test]
fn etcd_variables_are_read_under_their_names() {
    // Method: ETCD_* values that fail validation; the error names the flag and
    // the variable it came from.
    let line = one_line_error(&[], &[("ETCD_HEARTBEAT_INTERVAL", "fast")]);
    assert!(
        line.contains(
            "--heartbeat-interval (from ETCD_HEARTBEAT_INTERVAL): \"fast\" is not a whole number"
        ),
        "{line}"
    );
    let line = one_line_error(&[], &[("ETCD_INITIAL_CLUSTER_STATE", "maybe")]);
    assert!(line.contains("--initial-cluster-state"), "{line}");
    let line = one_line_error(
        &[],
        &[("ETCD_LISTEN_CLIENT_URLS", "https://127.0.0.1:2379")],
    );
    assert!(line.contains("--listen-client-urls"), "{line}");
}

#[tokio::test]
async fn max_concurrent_streams_limits_a_client_connection() {
    // Method: a member started with --max-concurrent-streams 1; on one
    // connection, an open Watch stream holds the only stream, so a Range waits
    // (a second of waiting stands for "blocked"); once the watch ends, the
    // same Range goes through.
    use std::time::Duration;

    use mainstay_proto::etcdserverpb::kv_client::KvClient;
    use mainstay_proto::etcdserverpb::watch_client::WatchClient;
    use mainstay_proto::etcdserverpb::{
        RangeRequest, WatchCreateRequest, WatchRequest, watch_request,
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data_dir = dir.path().join("data");
    let _member = Children(vec![
        serve_command(
            &[
                "--data-dir",
                data_dir.to_str().expect("utf-8 path"),
                "--listen-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--max-concurrent-streams",
                "1",
            ],
            &[],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mainstay"),
    ]);
    let channel = tonic::transport::Endpoint::from_shared(client_url)
        .expect("endpoint")
        .connect_lazy();
    let mut kv = KvClient::new(channel.clone());
    let range = RangeRequest {
        key: b"k".to_vec(),
        ..RangeRequest::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while kv.range(range.clone()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: b"k".to_vec(),
                ..WatchCreateRequest::default()
            },
        )),
    };
    let (sender, requests) = tokio::sync::mpsc::channel(1);
    sender.send(create).await.expect("queue the create");
    let mut watch = WatchClient::new(channel.clone())
        .watch(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .expect("watch")
        .into_inner();
    let created = watch.message().await.expect("watch answer");
    assert!(created.is_some_and(|r| r.created));

    let blocked = tokio::time::timeout(Duration::from_secs(1), kv.range(range.clone())).await;
    assert!(blocked.is_err(), "a second stream was allowed: {blocked:?}");
    // Ending the requests and dropping the responses closes the watch stream.
    drop(sender);
    drop(watch);
    let after = tokio::time::timeout(Duration::from_secs(10), kv.range(range)).await;
    assert!(
        after.is_ok_and(|r| r.is_ok()),
        "the range never went through"
    );
}
