//! etcd's `unix://` URLs end to end: three member processes whose client and
//! peer listeners are all Unix sockets, and a tonic client over a socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{Children, serve_command};

/// A channel to the client socket at `path` (the URI only names the authority).
fn unix_channel(path: PathBuf) -> Channel {
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
        move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        },
    ))
}

/// The members' logs, for a failure message.
fn logs(dir: &Path) -> String {
    (1..=3)
        .map(|i| {
            let log = std::fs::read_to_string(dir.join(format!("m{i}.log"))).unwrap_or_default();
            format!("--- m{i}\n{log}")
        })
        .collect()
}

#[tokio::test]
async fn a_cluster_on_unix_sockets_serves_a_tonic_client() {
    // Method: three members started with unix:// client and peer URLs only; a
    // put through m1's client socket (retried until a leader is elected), then
    // a linearizable read through m3's (its read index comes from the leader
    // over a peer socket) must see it.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let socket = |name: &str| format!("unix://{}", root.join(name).display());
    let cluster: Vec<String> = (1..=3)
        .map(|i| format!("m{i}={}", socket(&format!("m{i}.peer"))))
        .collect();
    let cluster = cluster.join(",");
    let mut members = Children(Vec::new());
    for i in 1..=3 {
        let name = format!("m{i}");
        let client_url = socket(&format!("{name}.client"));
        let peer_url = socket(&format!("{name}.peer"));
        let data_dir = root.join(&name);
        let log = std::fs::File::create(root.join(format!("{name}.log"))).expect("log file");
        let child = serve_command(
            &[
                "--name",
                &name,
                "--data-dir",
                data_dir.to_str().expect("utf-8 path"),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &cluster,
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ],
            &[],
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start mainstay");
        members.0.push(child);
    }

    let mut first = KvClient::new(unix_channel(root.join("m1.client")));
    let put = PutRequest {
        key: b"over".to_vec(),
        value: b"unix".to_vec().into(),
        ..PutRequest::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match first.put(put.clone()).await {
            Ok(_) => break,
            // No leader yet, or the sockets not bound yet: the cluster is forming.
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("put through m1: {status}\n{}", logs(root)),
        }
    }

    let mut third = KvClient::new(unix_channel(root.join("m3.client")));
    let range = RangeRequest {
        key: b"over".to_vec(),
        ..RangeRequest::default()
    };
    let response = third
        .range(range)
        .await
        .unwrap_or_else(|status| panic!("range through m3: {status}\n{}", logs(root)))
        .into_inner();
    let values: Vec<&[u8]> = response.kvs.iter().map(|kv| &kv.value[..]).collect();
    assert_eq!(values, vec![b"unix".as_slice()], "{}", logs(root));
}
