//! A test cluster: members run in this process via `run_with_listeners`, each on
//! its own loopback ports, each stoppable and restartable on the same data.

use std::path::PathBuf;
use std::time::Duration;

use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mainstay_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest, StatusResponse};
use mainstay_server::{
    Env, Listeners, Replica, SafetyBreaks, ServeArgs, run_with_listeners, tcp_incoming,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub struct Member {
    pub args: ServeArgs,
    /// Deliberate bugs this member runs with (self-tests of the checks).
    pub safety_breaks: SafetyBreaks,
    /// Raft log segment size, when not the default (not a flag).
    pub log_segment_bytes: Option<u64>,
    pub client_port: u16,
    pub peer_port: u16,
    pub replica: Option<Replica>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub struct TestCluster {
    pub members: Vec<Member>,
    _dir: tempfile::TempDir,
    pub root: PathBuf,
}

pub struct Options {
    pub snapshot_count: u64,
    pub snapshot_catchup_entries: u64,
    pub max_request_bytes: Option<u64>,
    /// Raft log segment size (the default's 64 MiB when `None`).
    pub log_segment_bytes: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            snapshot_count: 10_000,
            snapshot_catchup_entries: 5_000,
            max_request_bytes: None,
            log_segment_bytes: None,
        }
    }
}

/// Members log to the test's output when `MAINSTAY_TEST_LOG` holds a filter
/// (`MAINSTAY_TEST_LOG=info cargo test ... -- --nocapture`): the record of a
/// failure that happens once in many runs.
fn log_when_asked() {
    if let Ok(filter) = std::env::var("MAINSTAY_TEST_LOG") {
        // A second test in the same process finds the subscriber already set.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// A free port below the kernel's ephemeral range (32768 and up): a port the
/// kernel handed out for port 0 can be taken by any outgoing connection before
/// the member binds it (and again while a member restarts). Each test process
/// starts at its own offset and checks that a port binds before using it.
async fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = std::process::id() % 500 * 20;
    loop {
        let port = 20_000 + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        let port = u16::try_from(port).expect("port below 32000");
        if TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return port;
        }
    }
}

impl TestCluster {
    pub async fn start(size: usize, options: Options) -> TestCluster {
        log_when_asked();
        let mut cluster = TestCluster::prepare(size, options).await;
        for i in 0..size {
            cluster.start_member(i).await;
        }
        cluster.wait_for_leader().await;
        cluster
    }

    /// A cluster's members with their settings, none started (a test changes
    /// settings first, then calls `start_member`).
    pub async fn prepare(size: usize, options: Options) -> TestCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((free_port().await, free_port().await));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("t{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let args = ServeArgs {
                name: Some(format!("t{i}")),
                data_dir: Some(root.join(format!("t{i}"))),
                listen_client_urls: Some(format!("http://127.0.0.1:{client}")),
                listen_peer_urls: Some(format!("http://127.0.0.1:{peer}")),
                initial_cluster: Some(initial.join(",")),
                initial_cluster_token: Some("test".into()),
                heartbeat_interval: Some(50),
                election_timeout: Some(500),
                snapshot_count: Some(options.snapshot_count),
                snapshot_catchup_entries: Some(options.snapshot_catchup_entries),
                max_request_bytes: options.max_request_bytes,
                watch_progress_notify_interval: Some(500),
                ..ServeArgs::default()
            };
            members.push(Member {
                args,
                safety_breaks: SafetyBreaks::default(),
                log_segment_bytes: options.log_segment_bytes,
                client_port: *client,
                peer_port: *peer,
                replica: None,
                stop: None,
                task: None,
            });
        }
        TestCluster {
            members,
            _dir: dir,
            root,
        }
    }

    pub async fn start_member(&mut self, i: usize) {
        let member = &mut self.members[i];
        assert!(member.task.is_none(), "member {i} already running");
        let mut config = member.args.resolve().expect("valid config");
        if let Some(bytes) = member.log_segment_bytes {
            config.log_segment_bytes = bytes;
        }
        let mut client = None;
        let mut peer = None;
        for _ in 0..50 {
            // The port was just released by a stopped member; retry briefly.
            client = TcpListener::bind(("127.0.0.1", member.client_port))
                .await
                .ok();
            peer = TcpListener::bind(("127.0.0.1", member.peer_port))
                .await
                .ok();
            if client.is_some() && peer.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let listeners = Listeners {
            client: vec![tcp_incoming(client.expect("client port"))],
            peer: vec![tcp_incoming(peer.expect("peer port"))],
            metrics: Vec::new(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (observer, observed) = oneshot::channel();
        member.stop = Some(stop);
        member.task = Some(tokio::spawn(run_with_listeners(
            config,
            listeners,
            Env {
                safety_breaks: member.safety_breaks,
                ..Env::production()
            },
            async move {
                let _ = stopped.await;
            },
            Some(observer),
        )));
        member.replica = observed.await.ok();
    }

    /// Stops a member (graceful) and returns how `run` ended.
    pub async fn stop_member(&mut self, i: usize) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        if let Some(stop) = member.stop.take() {
            let _ = stop.send(());
        }
        member.replica = None;
        let task = member.task.take().expect("member running");
        task.await.expect("member task")
    }

    /// Runs a member and returns its result if it exits within `wait`
    /// (a member that refuses to start exits at once).
    pub async fn try_start_member(
        &mut self,
        i: usize,
        wait: Duration,
    ) -> Option<anyhow::Result<()>> {
        self.start_member(i).await;
        let member = &mut self.members[i];
        let task = member.task.as_mut().expect("running");
        match tokio::time::timeout(wait, task).await {
            Ok(joined) => {
                member.task = None;
                member.stop = None;
                Some(joined.expect("member task"))
            }
            Err(_) => None,
        }
    }

    /// Prepares (does not start) a member to be added at run time: fresh ports,
    /// `--initial-cluster-state existing`. Returns its position and peer URL.
    pub async fn prepare_member(&mut self) -> (usize, String) {
        let i = self.members.len();
        let (client, peer) = (free_port().await, free_port().await);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let template = self.members[0].args.clone();
        let initial = format!(
            "{},t{i}={peer_url}",
            template.initial_cluster.clone().unwrap_or_default()
        );
        let args = ServeArgs {
            name: Some(format!("t{i}")),
            data_dir: Some(self.root.join(format!("t{i}"))),
            listen_client_urls: Some(format!("http://127.0.0.1:{client}")),
            listen_peer_urls: Some(peer_url.clone()),
            initial_cluster: Some(initial),
            initial_cluster_state: Some("existing".into()),
            ..template
        };
        let log_segment_bytes = self.members[0].log_segment_bytes;
        self.members.push(Member {
            args,
            safety_breaks: SafetyBreaks::default(),
            log_segment_bytes,
            client_port: client,
            peer_port: peer,
            replica: None,
            stop: None,
            task: None,
        });
        (i, peer_url)
    }

    /// Waits for member `i`'s `run` to end by itself and returns how it ended.
    pub async fn wait_exit(&mut self, i: usize, wait: Duration) -> anyhow::Result<()> {
        let member = &mut self.members[i];
        let task = member.task.as_mut().expect("running");
        let joined = tokio::time::timeout(wait, task)
            .await
            .expect("member did not stop");
        member.task = None;
        member.stop = None;
        member.replica = None;
        joined.expect("member task")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("t{i}"))
    }

    pub async fn kv(&self, i: usize) -> KvClient<Channel> {
        let url = format!("http://127.0.0.1:{}", self.members[i].client_port);
        for _ in 0..50 {
            if let Ok(client) = KvClient::connect(url.clone()).await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let finished = self.members[i].task.as_ref().map(|t| t.is_finished());
        panic!("cannot connect to member {i} (task finished: {finished:?})");
    }

    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        let url = format!("http://127.0.0.1:{}", self.members[i].client_port);
        let mut client = MaintenanceClient::connect(url).await.ok()?;
        // A member that is starting has its port bound but serves nothing yet.
        let status = tokio::time::timeout(ANSWER_WITHIN, client.status(StatusRequest {}));
        Some(status.await.ok()?.ok()?.into_inner())
    }

    /// Waits until some running member reports itself leader; returns its position.
    pub async fn wait_for_leader(&self) -> usize {
        for _ in 0..200 {
            for (i, member) in self.members.iter().enumerate() {
                if member.task.is_none() {
                    continue;
                }
                if let Some(status) = self.status(i).await
                    && status.leader != 0
                    && status
                        .header
                        .as_ref()
                        .is_some_and(|h| h.member_id == status.leader)
                {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no leader elected");
    }

    pub async fn put(&self, i: usize, key: &str, value: &str) -> i64 {
        let mut kv = self.kv(i).await;
        let request = PutRequest {
            key: key.into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        };
        let response = answer(i, "put", kv.put(request))
            .await
            .expect("put")
            .into_inner();
        response.header.expect("header").revision
    }

    pub async fn get(&self, i: usize, key: &str, serializable: bool) -> Option<Vec<u8>> {
        let mut kv = self.kv(i).await;
        let request = RangeRequest {
            key: key.into(),
            serializable,
            ..Default::default()
        };
        let response = answer(i, "range", kv.range(request))
            .await
            .expect("range")
            .into_inner();
        response.kvs.into_iter().next().map(|kv| kv.value.to_vec())
    }

    /// Polls a serializable read on member `i` until it sees `value`.
    pub async fn eventually_sees(&self, i: usize, key: &str, value: &str) {
        for _ in 0..200 {
            if self.get(i, key, true).await.as_deref() == Some(value.as_bytes()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("member {i} never saw {key}={value}");
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.members.len() {
            if self.members[i].task.is_some() {
                let _ = self.stop_member(i).await;
            }
        }
    }
}

/// How long a test waits for a member to answer one request: a member that
/// never serves (its port is bound before it does) fails the test, not hang it.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

async fn answer<T>(i: usize, what: &str, call: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(ANSWER_WITHIN, call).await {
        Ok(answer) => answer,
        Err(_) => panic!("member {i} did not answer a {what} within {ANSWER_WITHIN:?}"),
    }
}
