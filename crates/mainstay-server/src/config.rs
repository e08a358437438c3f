//! Member configuration: flags (etcd's names) > `MAINSTAY_*` environment >
//! TOML file (`--config-file`) > defaults. `Config::validate` names the setting
//! at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// Command-line and environment settings for one member. Every field is
/// optional so that unset ones fall through to the file and the defaults.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (same names, `-` or `_`).
    #[arg(long, env = "MAINSTAY_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Human-readable name of this member.
    #[arg(long, env = "MAINSTAY_NAME")]
    pub name: Option<String>,
    /// Directory for this member's log and state.
    #[arg(long, env = "MAINSTAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated).
    #[arg(long, env = "MAINSTAY_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Client URLs advertised to the cluster (comma-separated).
    #[arg(long, env = "MAINSTAY_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic (comma-separated).
    #[arg(long, env = "MAINSTAY_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Peer URLs advertised to the cluster (comma-separated).
    #[arg(long, env = "MAINSTAY_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster: `name=peer-url,name=peer-url,...`.
    #[arg(long, env = "MAINSTAY_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one.
    #[arg(long, env = "MAINSTAY_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Token distinguishing clusters bootstrapped from the same member names.
    #[arg(long, env = "MAINSTAY_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Leader heartbeat period in milliseconds.
    #[arg(long, env = "MAINSTAY_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Election timeout in milliseconds.
    #[arg(long, env = "MAINSTAY_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Largest client request in bytes.
    #[arg(long, env = "MAINSTAY_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<u64>,
    /// Most operations in one transaction level.
    #[arg(long, env = "MAINSTAY_MAX_TXN_OPS")]
    pub max_txn_ops: Option<u64>,
    /// Backend size quota in bytes (0 = default 2 GiB).
    #[arg(long, env = "MAINSTAY_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: Option<u64>,
    /// Applied entries between snapshots.
    #[arg(long, env = "MAINSTAY_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Entries kept behind a snapshot for slow followers.
    #[arg(long, env = "MAINSTAY_SNAPSHOT_CATCHUP_ENTRIES")]
    pub snapshot_catchup_entries: Option<u64>,
    /// Period of watch progress notifications in milliseconds (etcd's
    /// `--watch-progress-notify-interval`; default 10 minutes, at least 100 ms).
    #[arg(long, env = "MAINSTAY_WATCH_PROGRESS_NOTIFY_INTERVAL")]
    pub watch_progress_notify_interval: Option<u64>,
}

/// The same settings as read from a TOML file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    #[serde(alias = "name")]
    name: Option<String>,
    #[serde(alias = "data_dir")]
    data_dir: Option<PathBuf>,
    #[serde(alias = "listen_client_urls")]
    listen_client_urls: Option<String>,
    #[serde(alias = "advertise_client_urls")]
    advertise_client_urls: Option<String>,
    #[serde(alias = "listen_peer_urls")]
    listen_peer_urls: Option<String>,
    #[serde(alias = "initial_advertise_peer_urls")]
    initial_advertise_peer_urls: Option<String>,
    #[serde(alias = "initial_cluster")]
    initial_cluster: Option<String>,
    #[serde(alias = "initial_cluster_state")]
    initial_cluster_state: Option<String>,
    #[serde(alias = "initial_cluster_token")]
    initial_cluster_token: Option<String>,
    #[serde(alias = "heartbeat_interval")]
    heartbeat_interval: Option<u64>,
    #[serde(alias = "election_timeout")]
    election_timeout: Option<u64>,
    #[serde(alias = "max_request_bytes")]
    max_request_bytes: Option<u64>,
    #[serde(alias = "max_txn_ops")]
    max_txn_ops: Option<u64>,
    #[serde(alias = "quota_backend_bytes")]
    quota_backend_bytes: Option<u64>,
    #[serde(alias = "snapshot_count")]
    snapshot_count: Option<u64>,
    #[serde(alias = "snapshot_catchup_entries")]
    snapshot_catchup_entries: Option<u64>,
    #[serde(alias = "watch_progress_notify_interval")]
    watch_progress_notify_interval: Option<u64>,
}

/// Whether this member bootstraps a new cluster or belongs to an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap from `initial_cluster` (on first start only).
    New,
    /// The cluster exists; this member must already be part of it.
    Existing,
}

/// A validated member configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Member name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client listen addresses.
    pub listen_client: Vec<SocketAddr>,
    /// Advertised client URLs.
    pub advertise_client_urls: Vec<String>,
    /// Peer listen addresses.
    pub listen_peer: Vec<SocketAddr>,
    /// Advertised peer URLs.
    pub advertise_peer_urls: Vec<String>,
    /// name → peer URL, for every initial member.
    pub initial_cluster: BTreeMap<String, String>,
    /// New or existing.
    pub initial_cluster_state: ClusterState,
    /// Cluster token.
    pub initial_cluster_token: String,
    /// Heartbeat period (ms).
    pub heartbeat_interval_ms: u64,
    /// Election timeout (ms).
    pub election_timeout_ms: u64,
    /// Largest request (bytes).
    pub request_bytes_max: u64,
    /// Most txn ops per level.
    pub txn_ops_max: u64,
    /// Backend quota (bytes).
    pub quota_backend_bytes: u64,
    /// Entries between snapshots.
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot.
    pub snapshot_catchup_entries: u64,
    /// Watch progress notification period (ms).
    pub watch_progress_notify_interval_ms: u64,
}

/// etcd's defaults, where etcd has one.
pub mod defaults {
    /// Member name.
    pub const NAME: &str = "default";
    /// Client URL.
    pub const CLIENT_URL: &str = "http://127.0.0.1:2379";
    /// Peer URL.
    pub const PEER_URL: &str = "http://127.0.0.1:2380";
    /// Cluster token.
    pub const CLUSTER_TOKEN: &str = "etcd-cluster";
    /// Heartbeat (ms).
    pub const HEARTBEAT_MS: u64 = 100;
    /// Election timeout (ms).
    pub const ELECTION_MS: u64 = 1000;
    /// 1.5 MiB.
    pub const REQUEST_BYTES_MAX: u64 = 1_572_864;
    /// Txn ops.
    pub const TXN_OPS_MAX: u64 = 128;
    /// 2 GiB.
    pub const QUOTA_BYTES: u64 = 2 << 30;
    /// etcd's watch progress notification period: 10 minutes.
    pub const WATCH_PROGRESS_MS: u64 = 600_000;
    /// etcd's `--snapshot-count`.
    pub const SNAPSHOT_COUNT: u64 = 10_000;
    /// etcd's `--snapshot-catchup-entries`.
    pub const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5_000;
}

const _: () = assert!(defaults::HEARTBEAT_MS * 5 <= defaults::ELECTION_MS);

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Parses `http://host:port` into a socket address; `setting` names the flag.
pub fn parse_url(url: &str, setting: &str) -> anyhow::Result<SocketAddr> {
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            bail!("--{setting}: {url:?}: TLS is not supported yet; use http://");
        }
        bail!("--{setting}: {url:?} is not a URL of the form http://host:port");
    };
    let authority = rest.trim_end_matches('/');
    let authority = if let Some(host) = authority.strip_prefix("localhost:") {
        format!("127.0.0.1:{host}")
    } else {
        authority.to_string()
    };
    authority
        .parse::<SocketAddr>()
        .with_context(|| format!("--{setting}: {url:?} must be http://IP:port"))
}

fn positive(value: u64, setting: &str) -> anyhow::Result<u64> {
    if value == 0 {
        bail!("--{setting} must be greater than 0");
    }
    Ok(value)
}

impl ServeArgs {
    /// Merges flags/env with the file and defaults, then validates.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let file = match &self.config_file {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        macro_rules! pick {
            ($field:ident) => {
                self.$field.clone().or(file.$field.clone())
            };
        }
        let name = pick!(name).unwrap_or_else(|| defaults::NAME.to_string());
        if name.is_empty() {
            bail!("--name must not be empty");
        }
        let data_dir = pick!(data_dir).unwrap_or_else(|| PathBuf::from(format!("{name}.mainstay")));
        let listen_client_urls =
            split_list(&pick!(listen_client_urls).unwrap_or_else(|| defaults::CLIENT_URL.into()));
        let advertise_client_urls = split_list(
            &pick!(advertise_client_urls).unwrap_or_else(|| listen_client_urls.join(",")),
        );
        let listen_peer_urls =
            split_list(&pick!(listen_peer_urls).unwrap_or_else(|| defaults::PEER_URL.into()));
        let advertise_peer_urls = split_list(
            &pick!(initial_advertise_peer_urls).unwrap_or_else(|| listen_peer_urls.join(",")),
        );
        let initial_cluster_text = pick!(initial_cluster).unwrap_or_else(|| {
            format!(
                "{name}={}",
                advertise_peer_urls.first().cloned().unwrap_or_default()
            )
        });
        let state = match pick!(initial_cluster_state).as_deref().unwrap_or("new") {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                bail!("--initial-cluster-state must be \"new\" or \"existing\", not {other:?}")
            }
        };
        let heartbeat_interval_ms = positive(
            pick!(heartbeat_interval).unwrap_or(defaults::HEARTBEAT_MS),
            "heartbeat-interval",
        )?;
        let election_timeout_ms = positive(
            pick!(election_timeout).unwrap_or(defaults::ELECTION_MS),
            "election-timeout",
        )?;
        if election_timeout_ms < 5 * heartbeat_interval_ms {
            bail!(
                "--election-timeout ({election_timeout_ms} ms) must be at least 5 times --heartbeat-interval ({heartbeat_interval_ms} ms)"
            );
        }
        if election_timeout_ms > 50_000 {
            bail!("--election-timeout ({election_timeout_ms} ms) must be at most 50000 ms");
        }
        let request_bytes_max = positive(
            pick!(max_request_bytes).unwrap_or(defaults::REQUEST_BYTES_MAX),
            "max-request-bytes",
        )?;
        if request_bytes_max > 64 << 20 {
            bail!("--max-request-bytes ({request_bytes_max}) must be at most 67108864 (64 MiB)");
        }
        let txn_ops_max = positive(
            pick!(max_txn_ops).unwrap_or(defaults::TXN_OPS_MAX),
            "max-txn-ops",
        )?;
        let quota_backend_bytes = match pick!(quota_backend_bytes).unwrap_or(0) {
            0 => defaults::QUOTA_BYTES,
            quota => quota,
        };
        let snapshot_count = positive(
            pick!(snapshot_count).unwrap_or(defaults::SNAPSHOT_COUNT),
            "snapshot-count",
        )?;
        let snapshot_catchup_entries =
            pick!(snapshot_catchup_entries).unwrap_or(defaults::SNAPSHOT_CATCHUP_ENTRIES);
        let watch_progress_notify_interval_ms =
            pick!(watch_progress_notify_interval).unwrap_or(defaults::WATCH_PROGRESS_MS);
        if watch_progress_notify_interval_ms < 100 {
            bail!(
                "--watch-progress-notify-interval ({watch_progress_notify_interval_ms} ms) must be at least 100 ms"
            );
        }

        let mut initial_cluster = BTreeMap::new();
        for member in split_list(&initial_cluster_text) {
            let Some((member_name, url)) = member.split_once('=') else {
                bail!("--initial-cluster: {member:?} is not name=peer-url");
            };
            parse_url(url, "initial-cluster")?;
            if initial_cluster
                .insert(member_name.to_string(), url.to_string())
                .is_some()
            {
                bail!("--initial-cluster: member name {member_name:?} appears twice");
            }
        }
        if !initial_cluster.contains_key(&name) {
            bail!("--initial-cluster does not contain this member's --name {name:?}");
        }
        let listen_client = listen_client_urls
            .iter()
            .map(|u| parse_url(u, "listen-client-urls"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let listen_peer = listen_peer_urls
            .iter()
            .map(|u| parse_url(u, "listen-peer-urls"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for url in &advertise_client_urls {
            parse_url(url, "advertise-client-urls")?;
        }
        for url in &advertise_peer_urls {
            parse_url(url, "initial-advertise-peer-urls")?;
        }
        if let Some(own) = initial_cluster.get(&name)
            && !advertise_peer_urls.contains(own)
        {
            bail!(
                "--initial-cluster gives {name:?} the peer URL {own}, which is not among --initial-advertise-peer-urls {advertise_peer_urls:?}"
            );
        }
        if listen_client.is_empty() || listen_peer.is_empty() {
            bail!("--listen-client-urls and --listen-peer-urls need at least one URL each");
        }
        Ok(Config {
            name,
            data_dir,
            listen_client,
            advertise_client_urls,
            listen_peer,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: state,
            initial_cluster_token: pick!(initial_cluster_token)
                .unwrap_or_else(|| defaults::CLUSTER_TOKEN.into()),
            heartbeat_interval_ms,
            election_timeout_ms,
            request_bytes_max,
            txn_ops_max,
            quota_backend_bytes,
            snapshot_count,
            snapshot_catchup_entries,
            watch_progress_notify_interval_ms,
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--config-file: read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("--config-file: parse {}", path.display()))
}
