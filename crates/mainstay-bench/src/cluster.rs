//! A 3-member cluster of either system as real processes on loopback: spawn
//! with etcd's flags (Mainstay under `serve`), wait until every member serves,
//! SIGKILL and restart on the same data, and kill everything when dropped.

use std::fmt;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use mainstay_proto::etcdserverpb::{MoveLeaderRequest, RangeRequest, StatusRequest};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Members per cluster.
pub const MEMBERS: usize = 3;

/// Which server a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum System {
    /// etcd (Debian's binary).
    Etcd,
    /// Mainstay (the binary under test).
    Mainstay,
}

impl System {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Mainstay => "mainstay",
        }
    }

    /// Parses a `--systems` entry.
    pub fn parse(name: &str) -> anyhow::Result<System> {
        match name {
            "etcd" => Ok(System::Etcd),
            "mainstay" => Ok(System::Mainstay),
            other => bail!("unknown system {other:?} (expected mainstay or etcd)"),
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hands out loopback ports below the kernel's ephemeral range, each checked
/// free by binding it, never the same one twice in a run (a fresh cluster never
/// meets the previous one's connections in TIME_WAIT).
pub struct Ports {
    next: u16,
}

const FIRST_PORT: u16 = 17000;
const LAST_PORT: u16 = 32000;

impl Ports {
    /// Starts at the bottom of the range.
    pub fn new() -> Self {
        Ports { next: FIRST_PORT }
    }

    /// A port that was free a moment ago.
    pub fn take(&mut self) -> anyhow::Result<u16> {
        for _ in FIRST_PORT..LAST_PORT {
            let port = self.next;
            self.next = if port + 1 >= LAST_PORT {
                FIRST_PORT
            } else {
                port + 1
            };
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        bail!("no free loopback port in {FIRST_PORT}..{LAST_PORT}")
    }
}

/// A running (or killed) 3-member cluster. Dropping it SIGKILLs and reaps every
/// member.
pub struct Cluster {
    system: System,
    binary: PathBuf,
    dir: PathBuf,
    token: String,
    client_urls: Vec<String>,
    peer_urls: Vec<String>,
    children: Vec<Option<Child>>,
}

/// Deadline of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Cluster {
    /// Spawns the three members of a new cluster, data and logs under `dir`.
    pub fn start(
        system: System,
        binary: &Path,
        dir: &Path,
        ports: &mut Ports,
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let mut client_urls = Vec::new();
        let mut peer_urls = Vec::new();
        for _ in 0..MEMBERS {
            client_urls.push(format!("http://127.0.0.1:{}", ports.take()?));
            peer_urls.push(format!("http://127.0.0.1:{}", ports.take()?));
        }
        let token = format!(
            "bench-{}-{}",
            system,
            dir.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("cluster")
        );
        let mut cluster = Cluster {
            system,
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            token,
            client_urls,
            peer_urls,
            children: (0..MEMBERS).map(|_| None).collect(),
        };
        cluster.spawn_all()?;
        Ok(cluster)
    }

    /// The members' client URLs, member 0 first.
    pub fn client_urls(&self) -> &[String] {
        &self.client_urls
    }

    /// Process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    fn spawn_all(&mut self) -> anyhow::Result<()> {
        let initial = self
            .peer_urls
            .iter()
            .enumerate()
            .map(|(i, url)| format!("m{i}={url}"))
            .collect::<Vec<_>>()
            .join(",");
        for i in 0..MEMBERS {
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path(i))
                .context("open member log")?;
            let mut command = Command::new(&self.binary);
            if self.system == System::Mainstay {
                command.arg("serve");
            }
            command
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(self.data_path(i))
                .args(["--listen-client-urls", &self.client_urls[i]])
                .args(["--advertise-client-urls", &self.client_urls[i]])
                .args(["--listen-peer-urls", &self.peer_urls[i]])
                .args(["--initial-advertise-peer-urls", &self.peer_urls[i]])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", &self.token])
                .args(["--initial-cluster-state", "new"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("member log")?)
                .stderr(log);
            let child = command
                .spawn()
                .with_context(|| format!("start {}", self.binary.display()))?;
            self.children[i] = Some(child);
        }
        Ok(())
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("m{i}.log"))
    }

    fn data_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("m{i}"))
    }

    /// Waits until every member answers a linearizable Range and a Status;
    /// on timeout or an exited member, fails with the tail of every log.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        self.wait_members(Instant::now(), true, timeout).await
    }

    /// Makes member `target` the leader (etcd's MoveLeader, sent to the
    /// current leader) and waits until every member names it. Every workload
    /// starts with the same member leading in both systems: a client of one
    /// member goes through the leader or a follower by design, not by which
    /// member won the first election.
    pub async fn place_leader(&mut self, target: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        // When MoveLeader was last sent: sent again only if leadership is
        // still elsewhere 2 s later (a transfer that failed, or an election).
        let mut asked: Option<Instant> = None;
        loop {
            match self.statuses().await {
                Ok(statuses) => {
                    let ids: Vec<u64> = statuses.iter().map(|(id, _)| *id).collect();
                    let leaders: Vec<u64> = statuses.iter().map(|(_, leader)| *leader).collect();
                    if leaders.iter().all(|leader| *leader == ids[target]) {
                        return Ok(());
                    }
                    let current = ids
                        .iter()
                        .position(|id| leaders.iter().all(|leader| leader == id));
                    let due = asked.is_none_or(|at| at.elapsed() > Duration::from_secs(2));
                    if let (Some(current), true) = (current, due) {
                        asked = Some(Instant::now());
                        eprintln!("    leader m{current} → m{target}");
                        let channel = probe_channel(&self.client_urls[current])?;
                        let request = MoveLeaderRequest {
                            target_id: ids[target],
                        };
                        // Answered once the transfer is done or has failed;
                        // either way the loop reads where leadership is.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            MaintenanceClient::new(channel).move_leader(request),
                        )
                        .await;
                    }
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("{}: leader not placed on m{target}: {e:#}", self.system)
                }
                Err(_) => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: leader not on m{target} after {timeout:?}\n{}",
                    self.system,
                    self.log_tails(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Each member's id and the leader it names, member 0 first.
    async fn statuses(&self) -> anyhow::Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        for url in &self.client_urls {
            let status = tokio::time::timeout(
                PROBE_TIMEOUT,
                MaintenanceClient::new(probe_channel(url)?).status(StatusRequest {}),
            )
            .await
            .context("status timed out")??
            .into_inner();
            let id = status.header.map(|h| h.member_id).unwrap_or_default();
            out.push((id, status.leader));
        }
        Ok(out)
    }

    /// SIGKILLs every member at once, reaps them, and spawns them again with the
    /// same flags on the same data. Returns the moment of the spawn.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<Instant> {
        self.kill_all();
        let spawned = Instant::now();
        self.spawn_all()?;
        Ok(spawned)
    }

    /// Time from `since` until every member has answered a linearizable Range
    /// (each polled every 20 ms).
    pub async fn wait_readable(
        &mut self,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        self.wait_members(since, false, timeout).await
    }

    async fn wait_members(
        &mut self,
        since: Instant,
        with_status: bool,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let mut probes = JoinSet::new();
        for url in &self.client_urls {
            probes.spawn(probe_until_served(url.clone(), with_status));
        }
        let deadline = since + timeout;
        let mut last = since;
        let mut pending = MEMBERS;
        while pending > 0 {
            tokio::select! {
                joined = probes.join_next() => match joined {
                    Some(Ok(at)) => {
                        last = last.max(at);
                        pending -= 1;
                    }
                    Some(Err(e)) => bail!("readiness probe failed: {e}"),
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(exited) = self.exited() {
                        bail!("{} member {exited}\n{}", self.system, self.log_tails(20));
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "{} cluster not ready after {timeout:?}\n{}",
                            self.system,
                            self.log_tails(20)
                        );
                    }
                }
            }
        }
        Ok(last - since)
    }

    /// A member process that has exited, described.
    fn exited(&mut self) -> Option<String> {
        self.children.iter_mut().enumerate().find_map(|(i, child)| {
            let child = child.as_mut()?;
            match child.try_wait() {
                Ok(Some(status)) => Some(format!("m{i} exited: {status}")),
                Ok(None) => None,
                Err(e) => Some(format!("m{i}: {e}")),
            }
        })
    }

    /// The last `lines` lines of every member's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..MEMBERS {
            let path = self.log_path(i);
            out.push_str(&format!("--- {} (tail)\n", path.display()));
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let all: Vec<&str> = text.lines().collect();
                    for line in &all[all.len().saturating_sub(lines)..] {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                Err(e) => out.push_str(&format!("(unreadable: {e})\n")),
            }
        }
        out
    }

    /// SIGKILLs and reaps every member.
    pub fn kill_all(&mut self) {
        for child in &mut self.children {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Kills the members and deletes their data directories (logs stay).
    pub fn discard(mut self) -> anyhow::Result<()> {
        self.kill_all();
        for i in 0..MEMBERS {
            let path = self.data_path(i);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Polls one member every 20 ms until it answers a linearizable Range on
/// `bench-ready` (and a Status when asked); returns the moment it did.
async fn probe_until_served(url: String, with_status: bool) -> Instant {
    loop {
        if let Ok(channel) = probe_channel(&url)
            && probe(channel, with_status).await.is_ok()
        {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn probe_channel(url: &str) -> anyhow::Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT)
        .tcp_nodelay(true)
        .connect_lazy())
}

async fn probe(channel: Channel, with_status: bool) -> anyhow::Result<()> {
    let range = RangeRequest {
        key: b"bench-ready".to_vec(),
        ..Default::default()
    };
    tokio::time::timeout(PROBE_TIMEOUT, KvClient::new(channel.clone()).range(range))
        .await
        .context("range timed out")??;
    if with_status {
        tokio::time::timeout(
            PROBE_TIMEOUT,
            MaintenanceClient::new(channel).status(StatusRequest {}),
        )
        .await
        .context("status timed out")??;
    }
    Ok(())
}
