//! Member configuration: flags (etcd's names) > `MAINSTAY_*` environment >
//! `ETCD_*` environment (etcd's own variables, so an etcd deployment's
//! environment carries over) > config file (`--config-file`: Mainstay's TOML or
//! etcd's YAML) > defaults. Validation names the setting at fault.
//!
//! Every etcd 3.4 and 3.5 flag is accepted on the command line, in the
//! environment and in the file; `etcd_flags` says which ones Mainstay acts on,
//! which it ignores with a warning at startup (`Config::warnings`) and which it
//! refuses. (etcd itself reads nothing but the file when one is given; Mainstay
//! keeps its layers.)

mod auth;
mod etcd_flags;
mod file;
#[cfg(test)]
mod tests;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::peer_names::{AllowedPeer, CertSide};
use crate::tls::{TlsFiles, TlsOptions, TlsVersion};

pub use auth::{AuthSettings, TokenSpec};
pub use etcd_flags::EtcdFlags;
use etcd_flags::{ETCD_FLAGS, EtcdFlag, Handling, Kind, Origin, Verdict, env_name, judge};
use file::{FileValue, Format};
use values::{parse_bool, parse_go_duration, parse_millis_or_duration, parse_uint, whole_millis};

/// Command-line and environment settings for one member. Every field is
/// optional so that unset ones fall through to the lower layers and the
/// defaults. The etcd flags Mainstay does not act on are accepted too (hidden
/// from `--help`; docs/compat.md lists them).
#[derive(Clone, Debug, Default, PartialEq, clap::Args)]
pub struct ServeArgs {
    /// Config file: Mainstay's TOML or etcd's YAML (`.yaml`/`.yml`, or any file
    /// that is not TOML), with any of the settings below under etcd's names.
    #[arg(long, env = "MAINSTAY_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// Human-readable name of this member.
    #[arg(long, env = "MAINSTAY_NAME")]
    pub name: Option<String>,
    /// Directory for this member's log and state.
    #[arg(long, env = "MAINSTAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (comma-separated `http://IP:port`
    /// or `unix://path`).
    #[arg(long, env = "MAINSTAY_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// More URLs serving only /metrics and the health endpoints
    /// (comma-separated `http://IP:port`, `https://` with the client
    /// certificate).
    #[arg(long, env = "MAINSTAY_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// Client URLs advertised to the cluster (comma-separated).
    #[arg(long, env = "MAINSTAY_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic (comma-separated `http://IP:port` or
    /// `unix://path`).
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
    /// Bytes of the state database's page cache (Mainstay's own; default 8 MiB).
    /// Reads are served from memory: the cache only speeds commits.
    #[arg(long, env = "MAINSTAY_STATE_CACHE_BYTES")]
    pub state_cache_bytes: Option<u64>,
    /// Entries kept behind a snapshot for slow followers (etcd 3.5:
    /// `--experimental-snapshot-catchup-entries`).
    #[arg(
        long,
        env = "MAINSTAY_SNAPSHOT_CATCHUP_ENTRIES",
        alias = "experimental-snapshot-catchup-entries"
    )]
    pub snapshot_catchup_entries: Option<u64>,
    /// Period of watch progress notifications in milliseconds; a Go duration
    /// (`10m`) is accepted too (etcd 3.4/3.5:
    /// `--experimental-watch-progress-notify-interval`; default 10 minutes, at
    /// least 100 ms).
    #[arg(
        long,
        env = "MAINSTAY_WATCH_PROGRESS_NOTIFY_INTERVAL",
        alias = "experimental-watch-progress-notify-interval",
        value_parser = millis_flag
    )]
    pub watch_progress_notify_interval: Option<u64>,
    /// Most concurrent HTTP/2 streams per client connection.
    #[arg(long, env = "MAINSTAY_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// Period of HTTP/2 pings to idle clients (Go duration; 0 = none).
    #[arg(long, env = "MAINSTAY_GRPC_KEEPALIVE_INTERVAL", value_parser = duration_flag)]
    pub grpc_keepalive_interval: Option<Duration>,
    /// How long to wait for a ping's answer before closing the connection.
    #[arg(long, env = "MAINSTAY_GRPC_KEEPALIVE_TIMEOUT", value_parser = duration_flag)]
    pub grpc_keepalive_timeout: Option<Duration>,
    /// Refuse member changes that would leave too few started voters for a
    /// quorum (default true).
    #[arg(long, env = "MAINSTAY_STRICT_RECONFIG_CHECK", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub strict_reconfig_check: Option<bool>,
    /// Quorum loss: keep this member's data and make it the only member of
    /// its cluster (the other members are removed; add them back with
    /// `member add`). Refused while an old member still answers.
    #[arg(long, env = "MAINSTAY_FORCE_NEW_CLUSTER", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub force_new_cluster: Option<bool>,
    /// Serve etcd's JSON gateway (`/v3/...`) on client URLs (default true).
    #[arg(long, env = "MAINSTAY_ENABLE_GRPC_GATEWAY", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub enable_grpc_gateway: Option<bool>,
    /// Automatic compaction: `periodic` (keep a time window) or `revision`
    /// (keep a number of revisions); off unless a retention is given.
    #[arg(long, env = "MAINSTAY_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// What automatic compaction keeps: a Go duration or whole hours
    /// (periodic), a count (revision); 0 turns it off (the default).
    #[arg(long, env = "MAINSTAY_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// Compare this member's data with its peers' before serving; refuse to
    /// start if a majority disagrees.
    #[arg(long, env = "MAINSTAY_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub experimental_initial_corrupt_check: Option<bool>,
    /// The leader's periodic hash comparison between members (default true).
    #[arg(long, env = "MAINSTAY_EXPERIMENTAL_COMPACT_HASH_CHECK_ENABLED", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub experimental_compact_hash_check_enabled: Option<bool>,
    /// How often the leader compares hashes (Go duration, default 1m).
    #[arg(long, env = "MAINSTAY_EXPERIMENTAL_COMPACT_HASH_CHECK_TIME", value_parser = duration_flag)]
    pub experimental_compact_hash_check_time: Option<Duration>,
    /// SO_REUSEPORT on the TCP listeners.
    #[arg(long, env = "MAINSTAY_SOCKET_REUSE_PORT", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub socket_reuse_port: Option<bool>,
    /// The client certificate chain (PEM) served on `https://` client URLs.
    #[arg(long, env = "MAINSTAY_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM) of `--cert-file`.
    #[arg(long, env = "MAINSTAY_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates.
    #[arg(long, env = "MAINSTAY_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `--trusted-ca-file`.
    #[arg(long, env = "MAINSTAY_CLIENT_CERT_AUTH", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub client_cert_auth: Option<bool>,
    /// Revoked client certificates (PEM certificate revocation lists).
    #[arg(long, env = "MAINSTAY_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Auth tokens: `simple`, or `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256[,ttl=5m]`.
    #[arg(long, env = "MAINSTAY_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Seconds a simple token lives after its last use (default 300).
    #[arg(long, env = "MAINSTAY_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: Option<u64>,
    /// bcrypt cost of password hashes (4-31, default 10).
    #[arg(long, env = "MAINSTAY_BCRYPT_COST")]
    pub bcrypt_cost: Option<u64>,
    /// Without `--cert-file`, serve `https://` client URLs with a self-signed
    /// certificate kept in the data directory.
    #[arg(long, env = "MAINSTAY_AUTO_TLS", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub auto_tls: Option<bool>,
    /// TLS 1.2 cipher suites, comma-separated Go names (default: all that
    /// Mainstay offers: ECDHE with AES-GCM or ChaCha20-Poly1305).
    #[arg(long, env = "MAINSTAY_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
    /// Oldest TLS version accepted: TLS1.2 (default) or TLS1.3.
    #[arg(long, env = "MAINSTAY_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,
    /// Newest TLS version accepted: TLS1.2 or TLS1.3 (default).
    #[arg(long, env = "MAINSTAY_TLS_MAX_VERSION")]
    pub tls_max_version: Option<String>,
    /// This member's certificate chain (PEM) for peer traffic, served on
    /// `https://` peer URLs and presented when dialing peers.
    #[arg(long, env = "MAINSTAY_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `--peer-cert-file`.
    #[arg(long, env = "MAINSTAY_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the members' peer certificates.
    #[arg(long, env = "MAINSTAY_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present a certificate signed by `--peer-trusted-ca-file`.
    #[arg(long, env = "MAINSTAY_PEER_CLIENT_CERT_AUTH", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub peer_client_cert_auth: Option<bool>,
    /// Revoked peer certificates (PEM certificate revocation lists).
    #[arg(long, env = "MAINSTAY_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Without `--peer-cert-file`, a self-signed peer certificate kept in the
    /// data directory (peers' certificates are then not checked, as in etcd).
    #[arg(long, env = "MAINSTAY_PEER_AUTO_TLS", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub peer_auto_tls: Option<bool>,
    /// The common name a peer's certificate must have.
    #[arg(long, env = "MAINSTAY_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// A host name or address a peer's certificate must name.
    #[arg(long, env = "MAINSTAY_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// A host name or address a client's certificate must name.
    #[arg(long, env = "MAINSTAY_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,
    /// Log level: debug, info, warn or error (MAINSTAY_LOG, a tracing filter,
    /// overrides it).
    #[arg(long, env = "MAINSTAY_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// etcd 3.4's `--debug`: the same as `--log-level=debug`.
    #[arg(long, env = "MAINSTAY_DEBUG", num_args = 0..=1,
          default_missing_value = "true", value_parser = bool_flag)]
    pub debug: Option<bool>,
    /// Where logs go: `stderr` (`default`) or `stdout`.
    #[arg(long, env = "MAINSTAY_LOG_OUTPUTS", alias = "log-output")]
    pub log_outputs: Option<String>,
    /// Log lines as `text` (default) or `json` (one object a line, for log
    /// shippers).
    #[arg(long, env = "MAINSTAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// The etcd flags Mainstay does not act on.
    #[command(flatten)]
    pub etcd: EtcdFlags,
}

fn bool_flag(text: &str) -> Result<bool, String> {
    parse_bool(text)
}

fn duration_flag(text: &str) -> Result<Duration, String> {
    parse_go_duration(text)
}

fn millis_flag(text: &str) -> Result<u64, String> {
    parse_millis_or_duration(text).map(whole_millis)
}

/// Whether this member bootstraps a new cluster or belongs to an existing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap from `initial_cluster` (on first start only).
    New,
    /// The cluster exists; this member must already be part of it.
    Existing,
}

/// One listen URL: where, and whether connections speak TLS (`https://`,
/// `unixs://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Where.
    pub address: ListenAddress,
    /// With TLS.
    pub tls: bool,
}

/// Where a listener listens: etcd's `http://IP:port` or `unix://path` URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket's path.
    Unix(PathBuf),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(address) => write!(f, "{address}"),
            ListenAddress::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Where logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOutput {
    /// Standard error (etcd's `default` and `stderr`).
    Stderr,
    /// Standard output.
    Stdout,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// A setting accepted but not acted on, reported at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The flag (`--logger`) or environment variable it is about.
    pub setting: String,
    /// The sentence to log, naming the setting: what is ignored, and why.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A validated member configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Member name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client listen addresses.
    pub listen_client: Vec<Listen>,
    /// Metrics and health listen addresses (`--listen-metrics-urls`).
    pub listen_metrics: Vec<Listen>,
    /// Advertised client URLs.
    pub advertise_client_urls: Vec<String>,
    /// Peer listen addresses.
    pub listen_peer: Vec<Listen>,
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
    /// Page cache of the state database (bytes).
    pub state_cache_bytes: u64,
    /// Entries kept behind a snapshot.
    pub snapshot_catchup_entries: u64,
    /// Size at which a Raft log segment is full. Not a flag: the simulator
    /// and tests set it small to roll segments over often.
    pub log_segment_bytes: u64,
    /// Watch progress notification period (ms).
    pub watch_progress_notify_interval_ms: u64,
    /// etcd's strict reconfiguration check: refuse member changes that leave
    /// too few started voters for a quorum.
    pub strict_reconfig_check: bool,
    /// `--force-new-cluster`: rewrite the stored membership to this member
    /// alone before starting (see `mainstay_raft::ReplicaConfig`).
    pub force_new_cluster: bool,
    /// Whether client URLs serve the JSON gateway (`--enable-grpc-gateway`).
    pub grpc_gateway: bool,
    /// `--auto-compaction-mode` and `--auto-compaction-retention` (None: off).
    pub auto_compaction: Option<mainstay_raft::AutoCompaction>,
    /// Most concurrent HTTP/2 streams per client connection (at least 1).
    pub concurrent_streams_max: u32,
    /// Period of HTTP/2 pings to idle clients; `None`: no pings.
    pub grpc_keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is closed.
    pub grpc_keepalive_timeout: Duration,
    /// SO_REUSEPORT on the TCP listeners.
    pub socket_reuse_port: bool,
    /// etcd's `--experimental-initial-corrupt-check`.
    pub initial_corrupt_check: bool,
    /// How often the leader compares hashes between members (None: never).
    pub hash_check_every: Option<Duration>,
    /// Auth tokens and password hashing.
    pub auth: AuthSettings,
    /// Certificates for the `https://` client listeners.
    pub client_tls: TlsFiles,
    /// Certificates for peer traffic (`https://` peer URLs).
    pub peer_tls: TlsFiles,
    /// Names a peer's certificate must carry.
    pub peer_allowed: AllowedPeer,
    /// Names a client's certificate must carry.
    pub client_allowed: AllowedPeer,
    /// Cipher suites and versions of every TLS listener.
    pub tls_options: TlsOptions,
    /// The least severe level logged (unless MAINSTAY_LOG says otherwise).
    pub log_level: tracing::Level,
    /// Where logs go.
    pub log_output: LogOutput,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// Settings accepted but not acted on; the binary logs each at startup.
    pub warnings: Vec<Warning>,
}

impl Config {
    /// The tracing filter for `log_level`: openraft speaks up from warnings on
    /// (its info lines are per-election chatter), unless asked for debug.
    pub fn log_filter(&self) -> String {
        log_filter(self.log_level)
    }
}

fn log_filter(level: tracing::Level) -> String {
    let openraft = if level >= tracing::Level::DEBUG {
        level
    } else {
        level.min(tracing::Level::WARN)
    };
    format!(
        "{},openraft={}",
        level.as_str().to_ascii_lowercase(),
        openraft.as_str().to_ascii_lowercase()
    )
}

impl Default for Config {
    /// etcd's defaults: one member, `default`, on 127.0.0.1:2379 and :2380.
    fn default() -> Config {
        let client = SocketAddr::from(([127, 0, 0, 1], 2379));
        let peer = SocketAddr::from(([127, 0, 0, 1], 2380));
        Config {
            name: defaults::NAME.to_string(),
            data_dir: PathBuf::from(format!("{}.mainstay", defaults::NAME)),
            listen_metrics: Vec::new(),
            listen_client: vec![Listen {
                address: ListenAddress::Tcp(client),
                tls: false,
            }],
            advertise_client_urls: vec![defaults::CLIENT_URL.to_string()],
            listen_peer: vec![Listen {
                address: ListenAddress::Tcp(peer),
                tls: false,
            }],
            advertise_peer_urls: vec![defaults::PEER_URL.to_string()],
            initial_cluster: BTreeMap::from([(
                defaults::NAME.to_string(),
                defaults::PEER_URL.to_string(),
            )]),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: defaults::CLUSTER_TOKEN.to_string(),
            heartbeat_interval_ms: defaults::HEARTBEAT_MS,
            election_timeout_ms: defaults::ELECTION_MS,
            request_bytes_max: defaults::REQUEST_BYTES_MAX,
            txn_ops_max: defaults::TXN_OPS_MAX,
            quota_backend_bytes: defaults::QUOTA_BYTES,
            snapshot_count: defaults::SNAPSHOT_COUNT,
            state_cache_bytes: defaults::STATE_CACHE_BYTES,
            snapshot_catchup_entries: defaults::SNAPSHOT_CATCHUP_ENTRIES,
            log_segment_bytes: mainstay_storage::SEGMENT_BYTES,
            watch_progress_notify_interval_ms: defaults::WATCH_PROGRESS_MS,
            strict_reconfig_check: true,
            force_new_cluster: false,
            grpc_gateway: true,
            auto_compaction: None,
            concurrent_streams_max: defaults::CONCURRENT_STREAMS_MAX,
            grpc_keepalive_interval: Some(defaults::GRPC_KEEPALIVE_INTERVAL),
            grpc_keepalive_timeout: defaults::GRPC_KEEPALIVE_TIMEOUT,
            socket_reuse_port: false,
            client_tls: TlsFiles::default(),
            peer_tls: TlsFiles::default(),
            peer_allowed: AllowedPeer::default(),
            client_allowed: AllowedPeer::default(),
            tls_options: TlsOptions::default(),
            initial_corrupt_check: false,
            hash_check_every: Some(Duration::from_secs(60)),
            auth: AuthSettings::default(),
            log_level: tracing::Level::INFO,
            log_output: LogOutput::Stderr,
            log_format: LogFormat::Text,
            warnings: Vec::new(),
        }
    }
}

/// etcd's defaults, where etcd has one.
pub mod defaults {
    use std::time::Duration;

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
    /// etcd's `--snapshot-count` (3.6's; 3.4 and 3.5 had 100000).
    pub const SNAPSHOT_COUNT: u64 = 10_000;
    /// etcd's `--snapshot-catchup-entries`.
    pub const SNAPSHOT_CATCHUP_ENTRIES: u64 = 5_000;
    /// The state database's page cache: 8 MiB. Reads are served from memory,
    /// so the cache only serves the batched state commits. Measured with
    /// mainstay-bench (3 members, 200k keys): RSS 856 MB at redb's 1 GiB
    /// default, 631 MB at 32 MiB, 538 MB at 8 MiB, 515 MB at 2 MiB; put64
    /// 11194, 11221 and 10778 ops/s at 32, 8 and 2 MiB.
    pub const STATE_CACHE_BYTES: u64 = 8 << 20;
    /// etcd's `--max-concurrent-streams`: 2^32-1.
    pub const CONCURRENT_STREAMS_MAX: u32 = u32::MAX;
    /// etcd's `--grpc-keepalive-interval`: 2 hours.
    pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
    /// etcd's `--grpc-keepalive-timeout`: 20 seconds.
    pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
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

/// Parses a listen URL: `http://IP:port` (or `http://localhost:port`) or
/// `unix://path` (etcd's form: everything after `unix://` is the path, so
/// `unix:///run/etcd.sock` is absolute and `unix://etcd.sock` relative), or
/// their TLS forms `https://` and `unixs://`; `setting` names the flag.
pub fn parse_url(url: &str, setting: &str) -> anyhow::Result<Listen> {
    let tls = url.starts_with("https://") || url.starts_with("unixs://");
    if let Some(path) = unix_path(url, setting)? {
        return Ok(Listen {
            address: ListenAddress::Unix(path),
            tls,
        });
    }
    let authority = http_authority(url, setting)?;
    let authority = if let Some(port) = authority.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        authority.to_string()
    };
    let address = authority
        .parse::<SocketAddr>()
        .map(ListenAddress::Tcp)
        .with_context(|| format!("--{setting}: {url:?} must be http://IP:port or unix://path"))?;
    Ok(Listen { address, tls })
}

/// Checks an advertised URL (peers and clients dial it, so a host name is
/// fine): `http://host:port` or `unix://path`.
fn check_advertised_url(url: &str, setting: &str) -> anyhow::Result<()> {
    if unix_path(url, setting)?.is_some() {
        return Ok(());
    }
    let authority = http_authority(url, setting)?;
    let port = authority
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok());
    if port.is_none() {
        bail!("--{setting}: {url:?} must be http://host:port or unix://path");
    }
    Ok(())
}

/// The path of a `unix://` or `unixs://` URL; `None` for any other scheme.
fn unix_path(url: &str, setting: &str) -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = url
        .strip_prefix("unix://")
        .or_else(|| url.strip_prefix("unixs://"))
    else {
        return Ok(None);
    };
    if path.is_empty() {
        bail!("--{setting}: {url:?} names no socket path");
    }
    Ok(Some(PathBuf::from(path)))
}

/// The `host:port` of an `http://` or `https://` URL.
fn http_authority<'a>(url: &'a str, setting: &str) -> anyhow::Result<&'a str> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        bail!("--{setting}: {url:?} is not a URL of the form http://host:port or unix://path");
    };
    Ok(rest.trim_end_matches('/'))
}

/// Peers are dialed over TLS at `https://` URLs; `unixs://` is not dialed.
fn tls_peer_dial_url(url: &str, setting: &str) -> anyhow::Result<()> {
    if url.starts_with("unixs://") {
        bail!("--{setting}: {url:?}: members dial unix:// peer URLs only, not unixs://");
    }
    Ok(())
}

fn positive(value: u64, setting: &str) -> anyhow::Result<u64> {
    if value == 0 {
        bail!("--{setting} must be greater than 0");
    }
    Ok(value)
}

/// A value for one setting, as given by the environment or a config file.
#[derive(Clone, Copy, Debug)]
enum Raw<'a> {
    /// Text: an environment variable.
    Text(&'a str),
    /// A config file's value, typed as the file typed it.
    File(&'a FileValue, Format),
}

impl Raw<'_> {
    fn text(self) -> String {
        match self {
            Raw::Text(text) => text.to_string(),
            Raw::File(value, _) => value.text(),
        }
    }

    fn uint(self) -> Result<u64, String> {
        match self {
            Raw::File(FileValue::Int(number), _) => {
                u64::try_from(*number).map_err(|_| format!("{number} is not a whole number"))
            }
            _ => parse_uint(&self.text()),
        }
    }

    fn bool(self) -> Result<bool, String> {
        match self {
            Raw::File(FileValue::Bool(value), _) => Ok(*value),
            _ => parse_bool(&self.text()),
        }
    }

    /// A bare number in a file: nanoseconds in etcd's YAML (Go's
    /// `time.Duration`), milliseconds in Mainstay's TOML.
    fn file_number_as_duration(self) -> Option<Result<Duration, String>> {
        let Raw::File(FileValue::Int(number), format) = self else {
            return None;
        };
        let number = u64::try_from(*number).map_err(|_| format!("{number} is not a duration"));
        Some(number.map(|n| match format {
            Format::Yaml => Duration::from_nanos(n),
            Format::Toml => Duration::from_millis(n),
        }))
    }

    fn duration(self) -> Result<Duration, String> {
        self.file_number_as_duration()
            .unwrap_or_else(|| parse_go_duration(&self.text()))
    }

    fn millis_or_duration(self) -> Result<Duration, String> {
        self.file_number_as_duration()
            .unwrap_or_else(|| parse_millis_or_duration(&self.text()))
    }

    /// The text kept for a flag without a typed field (a file's bare number
    /// for a duration gets its unit, so that it reads back as a Go duration).
    fn etcd_text(self, kind: Kind) -> String {
        match (self, kind) {
            (Raw::File(FileValue::Int(number), Format::Yaml), Kind::Duration) => {
                format!("{number}ns")
            }
            (Raw::File(FileValue::Int(number), Format::Toml), Kind::Duration) => {
                format!("{number}ms")
            }
            _ => self.text(),
        }
    }
}

impl ServeArgs {
    /// Merges the layers, then validates: flags and the `MAINSTAY_*` variables
    /// clap read > `MAINSTAY_*` for etcd-only flags > `ETCD_*` > file > defaults.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        let env: BTreeMap<String, String> = std::env::vars_os()
            .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
            .filter(|(key, _)| key.starts_with("ETCD_") || key.starts_with("MAINSTAY_"))
            .collect();
        self.resolve_with_env(&env)
    }

    /// `resolve` with the environment given (tests, and `mainstay dev`, which
    /// reads none).
    pub fn resolve_with_env(&self, env: &BTreeMap<String, String>) -> anyhow::Result<Config> {
        let mut warnings = Vec::new();
        let from_env = env_layer(env, &mut warnings)?;
        let config_file = self.config_file.clone().or(from_env.config_file.clone());
        let from_file = match &config_file {
            Some(path) => file_layer(path)?,
            None => ServeArgs::default(),
        };
        self.clone().or(from_env).or(from_file).validate(warnings)
    }

    /// Sets one setting (by its etcd flag name) from the environment or a file.
    fn set(&mut self, flag: &'static EtcdFlag, raw: Raw<'_>, origin: Origin) -> Result<(), String> {
        match flag.name {
            "config-file" => self.config_file = Some(PathBuf::from(raw.text())),
            "name" => self.name = Some(raw.text()),
            "data-dir" => self.data_dir = Some(PathBuf::from(raw.text())),
            "listen-client-urls" => self.listen_client_urls = Some(raw.text()),
            "listen-metrics-urls" => self.listen_metrics_urls = Some(raw.text()),
            "advertise-client-urls" => self.advertise_client_urls = Some(raw.text()),
            "listen-peer-urls" => self.listen_peer_urls = Some(raw.text()),
            "initial-advertise-peer-urls" => self.initial_advertise_peer_urls = Some(raw.text()),
            "initial-cluster" => self.initial_cluster = Some(raw.text()),
            "initial-cluster-state" => self.initial_cluster_state = Some(raw.text()),
            "initial-cluster-token" => self.initial_cluster_token = Some(raw.text()),
            "heartbeat-interval" => self.heartbeat_interval = Some(raw.uint()?),
            "election-timeout" => self.election_timeout = Some(raw.uint()?),
            "max-request-bytes" => self.max_request_bytes = Some(raw.uint()?),
            "max-txn-ops" => self.max_txn_ops = Some(raw.uint()?),
            "quota-backend-bytes" => self.quota_backend_bytes = Some(raw.uint()?),
            "snapshot-count" => self.snapshot_count = Some(raw.uint()?),
            "state-cache-bytes" => self.state_cache_bytes = Some(raw.uint()?),
            "snapshot-catchup-entries" | "experimental-snapshot-catchup-entries" => {
                self.snapshot_catchup_entries = Some(raw.uint()?);
            }
            "watch-progress-notify-interval" | "experimental-watch-progress-notify-interval" => {
                self.watch_progress_notify_interval = Some(whole_millis(raw.millis_or_duration()?));
            }
            "max-concurrent-streams" => {
                let streams = raw.uint()?;
                let streams = u32::try_from(streams)
                    .map_err(|_| format!("{streams} is more than 4294967295"))?;
                self.max_concurrent_streams = Some(streams);
            }
            "grpc-keepalive-interval" => self.grpc_keepalive_interval = Some(raw.duration()?),
            "grpc-keepalive-timeout" => self.grpc_keepalive_timeout = Some(raw.duration()?),
            "strict-reconfig-check" => self.strict_reconfig_check = Some(raw.bool()?),
            "force-new-cluster" => self.force_new_cluster = Some(raw.bool()?),
            "enable-grpc-gateway" => self.enable_grpc_gateway = Some(raw.bool()?),
            "auto-compaction-mode" => self.auto_compaction_mode = Some(raw.text()),
            "auto-compaction-retention" => self.auto_compaction_retention = Some(raw.text()),
            "experimental-initial-corrupt-check" => {
                self.experimental_initial_corrupt_check = Some(raw.bool()?);
            }
            "experimental-compact-hash-check-enabled" => {
                self.experimental_compact_hash_check_enabled = Some(raw.bool()?);
            }
            "experimental-compact-hash-check-time" => {
                self.experimental_compact_hash_check_time = Some(raw.duration()?);
            }
            "socket-reuse-port" => self.socket_reuse_port = Some(raw.bool()?),
            "cert-file" => self.cert_file = Some(PathBuf::from(raw.text())),
            "key-file" => self.key_file = Some(PathBuf::from(raw.text())),
            "trusted-ca-file" => self.trusted_ca_file = Some(PathBuf::from(raw.text())),
            "client-cert-auth" => self.client_cert_auth = Some(raw.bool()?),
            "client-crl-file" => self.client_crl_file = Some(PathBuf::from(raw.text())),
            "auth-token" => self.auth_token = Some(raw.text()),
            "auth-token-ttl" => self.auth_token_ttl = Some(raw.uint()?),
            "bcrypt-cost" => self.bcrypt_cost = Some(raw.uint()?),
            "auto-tls" => self.auto_tls = Some(raw.bool()?),
            "cipher-suites" => self.cipher_suites = Some(raw.text()),
            "tls-min-version" => self.tls_min_version = Some(raw.text()),
            "tls-max-version" => self.tls_max_version = Some(raw.text()),
            "peer-cert-file" => self.peer_cert_file = Some(PathBuf::from(raw.text())),
            "peer-key-file" => self.peer_key_file = Some(PathBuf::from(raw.text())),
            "peer-trusted-ca-file" => self.peer_trusted_ca_file = Some(PathBuf::from(raw.text())),
            "peer-client-cert-auth" => self.peer_client_cert_auth = Some(raw.bool()?),
            "peer-crl-file" => self.peer_crl_file = Some(PathBuf::from(raw.text())),
            "peer-auto-tls" => self.peer_auto_tls = Some(raw.bool()?),
            "peer-cert-allowed-cn" => self.peer_cert_allowed_cn = Some(raw.text()),
            "peer-cert-allowed-hostname" => self.peer_cert_allowed_hostname = Some(raw.text()),
            "client-cert-allowed-hostname" => self.client_cert_allowed_hostname = Some(raw.text()),
            "log-level" => self.log_level = Some(raw.text()),
            "debug" => self.debug = Some(raw.bool()?),
            "log-outputs" | "log-output" => self.log_outputs = Some(raw.text()),
            "log-format" => self.log_format = Some(raw.text()),
            "version" => return Err("is not a setting".to_string()),
            _ => {
                assert!(
                    !matches!(flag.handling, Handling::Implemented(_)),
                    "--{} is implemented but has no field in ServeArgs::set",
                    flag.name
                );
                self.etcd.insert(flag, raw.etcd_text(flag.kind), origin);
            }
        }
        Ok(())
    }

    /// These settings, with `lower`'s wherever one is not given here.
    fn or(self, lower: ServeArgs) -> ServeArgs {
        // Destructured so that a new field cannot be forgotten here.
        let ServeArgs {
            config_file,
            name,
            data_dir,
            listen_client_urls,
            listen_metrics_urls,
            advertise_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token,
            heartbeat_interval,
            election_timeout,
            max_request_bytes,
            max_txn_ops,
            quota_backend_bytes,
            snapshot_count,
            state_cache_bytes,
            snapshot_catchup_entries,
            watch_progress_notify_interval,
            max_concurrent_streams,
            grpc_keepalive_interval,
            grpc_keepalive_timeout,
            strict_reconfig_check,
            force_new_cluster,
            enable_grpc_gateway,
            auto_compaction_mode,
            auto_compaction_retention,
            experimental_initial_corrupt_check,
            experimental_compact_hash_check_enabled,
            experimental_compact_hash_check_time,
            socket_reuse_port,
            cert_file,
            key_file,
            trusted_ca_file,
            client_cert_auth,
            client_crl_file,
            auth_token,
            auth_token_ttl,
            bcrypt_cost,
            auto_tls,
            cipher_suites,
            tls_min_version,
            tls_max_version,
            peer_cert_file,
            peer_key_file,
            peer_trusted_ca_file,
            peer_client_cert_auth,
            peer_crl_file,
            peer_auto_tls,
            peer_cert_allowed_cn,
            peer_cert_allowed_hostname,
            client_cert_allowed_hostname,
            log_level,
            debug,
            log_outputs,
            log_format,
            etcd,
        } = lower;
        ServeArgs {
            config_file: self.config_file.or(config_file),
            name: self.name.or(name),
            data_dir: self.data_dir.or(data_dir),
            listen_client_urls: self.listen_client_urls.or(listen_client_urls),
            listen_metrics_urls: self.listen_metrics_urls.or(listen_metrics_urls),
            advertise_client_urls: self.advertise_client_urls.or(advertise_client_urls),
            listen_peer_urls: self.listen_peer_urls.or(listen_peer_urls),
            initial_advertise_peer_urls: self
                .initial_advertise_peer_urls
                .or(initial_advertise_peer_urls),
            initial_cluster: self.initial_cluster.or(initial_cluster),
            initial_cluster_state: self.initial_cluster_state.or(initial_cluster_state),
            initial_cluster_token: self.initial_cluster_token.or(initial_cluster_token),
            heartbeat_interval: self.heartbeat_interval.or(heartbeat_interval),
            election_timeout: self.election_timeout.or(election_timeout),
            max_request_bytes: self.max_request_bytes.or(max_request_bytes),
            max_txn_ops: self.max_txn_ops.or(max_txn_ops),
            quota_backend_bytes: self.quota_backend_bytes.or(quota_backend_bytes),
            snapshot_count: self.snapshot_count.or(snapshot_count),
            state_cache_bytes: self.state_cache_bytes.or(state_cache_bytes),
            snapshot_catchup_entries: self.snapshot_catchup_entries.or(snapshot_catchup_entries),
            watch_progress_notify_interval: self
                .watch_progress_notify_interval
                .or(watch_progress_notify_interval),
            max_concurrent_streams: self.max_concurrent_streams.or(max_concurrent_streams),
            grpc_keepalive_interval: self.grpc_keepalive_interval.or(grpc_keepalive_interval),
            grpc_keepalive_timeout: self.grpc_keepalive_timeout.or(grpc_keepalive_timeout),
            strict_reconfig_check: self.strict_reconfig_check.or(strict_reconfig_check),
            force_new_cluster: self.force_new_cluster.or(force_new_cluster),
            enable_grpc_gateway: self.enable_grpc_gateway.or(enable_grpc_gateway),
            auto_compaction_mode: self.auto_compaction_mode.or(auto_compaction_mode),
            auto_compaction_retention: self.auto_compaction_retention.or(auto_compaction_retention),
            experimental_initial_corrupt_check: self
                .experimental_initial_corrupt_check
                .or(experimental_initial_corrupt_check),
            experimental_compact_hash_check_enabled: self
                .experimental_compact_hash_check_enabled
                .or(experimental_compact_hash_check_enabled),
            experimental_compact_hash_check_time: self
                .experimental_compact_hash_check_time
                .or(experimental_compact_hash_check_time),
            socket_reuse_port: self.socket_reuse_port.or(socket_reuse_port),
            cert_file: self.cert_file.or(cert_file),
            key_file: self.key_file.or(key_file),
            trusted_ca_file: self.trusted_ca_file.or(trusted_ca_file),
            client_cert_auth: self.client_cert_auth.or(client_cert_auth),
            client_crl_file: self.client_crl_file.or(client_crl_file),
            auth_token: self.auth_token.or(auth_token),
            auth_token_ttl: self.auth_token_ttl.or(auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost.or(bcrypt_cost),
            auto_tls: self.auto_tls.or(auto_tls),
            cipher_suites: self.cipher_suites.or(cipher_suites),
            tls_min_version: self.tls_min_version.or(tls_min_version),
            tls_max_version: self.tls_max_version.or(tls_max_version),
            peer_cert_file: self.peer_cert_file.or(peer_cert_file),
            peer_key_file: self.peer_key_file.or(peer_key_file),
            peer_trusted_ca_file: self.peer_trusted_ca_file.or(peer_trusted_ca_file),
            peer_client_cert_auth: self.peer_client_cert_auth.or(peer_client_cert_auth),
            peer_crl_file: self.peer_crl_file.or(peer_crl_file),
            peer_auto_tls: self.peer_auto_tls.or(peer_auto_tls),
            peer_cert_allowed_cn: self.peer_cert_allowed_cn.or(peer_cert_allowed_cn),
            peer_cert_allowed_hostname: self
                .peer_cert_allowed_hostname
                .or(peer_cert_allowed_hostname),
            client_cert_allowed_hostname: self
                .client_cert_allowed_hostname
                .or(client_cert_allowed_hostname),
            log_level: self.log_level.or(log_level),
            debug: self.debug.or(debug),
            log_outputs: self.log_outputs.or(log_outputs),
            log_format: self.log_format.or(log_format),
            etcd: self.etcd.or(etcd),
        }
    }

    /// Checks the merged settings and fills in the defaults.
    fn validate(self, mut warnings: Vec<Warning>) -> anyhow::Result<Config> {
        // Refusals first: a member asked for something it does not do must not
        // report some other problem and leave that one for the next attempt.
        warnings.extend(judge_etcd_flags(&self.etcd)?);

        let name = self.name.unwrap_or_else(|| defaults::NAME.to_string());
        if name.is_empty() {
            bail!("--name must not be empty");
        }
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from(format!("{name}.mainstay")));
        let listen_client_urls = split_list(
            &self
                .listen_client_urls
                .unwrap_or_else(|| defaults::CLIENT_URL.into()),
        );
        let advertise_client_urls = split_list(
            &self
                .advertise_client_urls
                .unwrap_or_else(|| listen_client_urls.join(",")),
        );
        let listen_peer_urls = split_list(
            &self
                .listen_peer_urls
                .unwrap_or_else(|| defaults::PEER_URL.into()),
        );
        let advertise_peer_urls = split_list(
            &self
                .initial_advertise_peer_urls
                .unwrap_or_else(|| listen_peer_urls.join(",")),
        );
        let initial_cluster_text = self.initial_cluster.unwrap_or_else(|| {
            format!(
                "{name}={}",
                advertise_peer_urls.first().cloned().unwrap_or_default()
            )
        });
        let state = match self.initial_cluster_state.as_deref().unwrap_or("new") {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                bail!("--initial-cluster-state must be \"new\" or \"existing\", not {other:?}")
            }
        };
        let heartbeat_interval_ms = positive(
            self.heartbeat_interval.unwrap_or(defaults::HEARTBEAT_MS),
            "heartbeat-interval",
        )?;
        let election_timeout_ms = positive(
            self.election_timeout.unwrap_or(defaults::ELECTION_MS),
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
            self.max_request_bytes
                .unwrap_or(defaults::REQUEST_BYTES_MAX),
            "max-request-bytes",
        )?;
        if request_bytes_max > 64 << 20 {
            bail!("--max-request-bytes ({request_bytes_max}) must be at most 67108864 (64 MiB)");
        }
        let txn_ops_max = positive(
            self.max_txn_ops.unwrap_or(defaults::TXN_OPS_MAX),
            "max-txn-ops",
        )?;
        let quota_backend_bytes = match self.quota_backend_bytes.unwrap_or(0) {
            0 => defaults::QUOTA_BYTES,
            quota => quota,
        };
        let snapshot_count = positive(
            self.snapshot_count.unwrap_or(defaults::SNAPSHOT_COUNT),
            "snapshot-count",
        )?;
        let snapshot_catchup_entries = self
            .snapshot_catchup_entries
            .unwrap_or(defaults::SNAPSHOT_CATCHUP_ENTRIES);
        let state_cache_bytes = self
            .state_cache_bytes
            .unwrap_or(defaults::STATE_CACHE_BYTES);
        if state_cache_bytes < 1 << 20 {
            bail!("--state-cache-bytes ({state_cache_bytes}) must be at least 1048576 (1 MiB)");
        }
        let watch_progress_notify_interval_ms = self
            .watch_progress_notify_interval
            .unwrap_or(defaults::WATCH_PROGRESS_MS);
        if watch_progress_notify_interval_ms < 100 {
            bail!(
                "--watch-progress-notify-interval ({watch_progress_notify_interval_ms} ms) must be at least 100 ms"
            );
        }
        let concurrent_streams_max = self
            .max_concurrent_streams
            .unwrap_or(defaults::CONCURRENT_STREAMS_MAX);
        if concurrent_streams_max == 0 {
            bail!("--max-concurrent-streams must be greater than 0");
        }
        let grpc_keepalive_interval = Some(
            self.grpc_keepalive_interval
                .unwrap_or(defaults::GRPC_KEEPALIVE_INTERVAL),
        )
        .filter(|interval| !interval.is_zero());
        let grpc_keepalive_timeout = match self.grpc_keepalive_timeout {
            // etcd's gRPC library takes 0 for its default, 20 s.
            None | Some(Duration::ZERO) => defaults::GRPC_KEEPALIVE_TIMEOUT,
            Some(timeout) => timeout,
        };
        let log_level = log_level(self.log_level.as_deref(), self.debug.unwrap_or(false))?;
        let log_format = match self.log_format.as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("--log-format {other:?}: give text or json"),
        };
        let (log_output, log_ignored) = log_output(&split_list(
            self.log_outputs.as_deref().unwrap_or("default"),
        ));
        warnings.extend(log_ignored.into_iter().map(|target| Warning {
            setting: "--log-outputs".to_string(),
            message: format!(
                "--log-outputs: {target:?} is ignored: Mainstay logs to one of stderr or stdout (ship or rotate logs outside the process)"
            ),
        }));
        let token = match &self.auth_token {
            Some(text) => auth::parse_token(text).map_err(|e| anyhow!(e))?,
            None => TokenSpec::Simple,
        };
        let (bcrypt_cost, cost_warning) = auth::bcrypt_cost(self.bcrypt_cost);
        if let Some(message) = cost_warning {
            warnings.push(Warning {
                setting: "--bcrypt-cost".to_string(),
                message,
            });
        }
        let auth = AuthSettings {
            token,
            token_ttl: auth::token_ttl(self.auth_token_ttl),
            bcrypt_cost,
        };
        let auto_compaction = values::auto_compaction(
            self.auto_compaction_mode.as_deref(),
            self.auto_compaction_retention.as_deref(),
        )
        .map_err(|reason| anyhow::anyhow!(reason))?;
        let initial_corrupt_check = self.experimental_initial_corrupt_check.unwrap_or(false);
        let hash_check_every = match (
            self.experimental_compact_hash_check_enabled.unwrap_or(true),
            self.experimental_compact_hash_check_time,
        ) {
            (false, _) => None,
            (true, Some(every)) if every.is_zero() => {
                bail!("--experimental-compact-hash-check-time must be positive")
            }
            (true, every) => Some(every.unwrap_or(Duration::from_secs(60))),
        };

        let mut initial_cluster = BTreeMap::new();
        for member in split_list(&initial_cluster_text) {
            let Some((member_name, url)) = member.split_once('=') else {
                bail!("--initial-cluster: {member:?} is not name=peer-url");
            };
            check_advertised_url(url, "initial-cluster")?;
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
        let listen_metrics = split_list(self.listen_metrics_urls.as_deref().unwrap_or(""))
            .iter()
            .map(|u| parse_url(u, "listen-metrics-urls"))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for url in &advertise_client_urls {
            check_advertised_url(url, "advertise-client-urls")?;
        }
        for url in &advertise_peer_urls {
            tls_peer_dial_url(url, "initial-advertise-peer-urls")?;
            check_advertised_url(url, "initial-advertise-peer-urls")?;
        }
        for url in initial_cluster.values() {
            tls_peer_dial_url(url, "initial-cluster")?;
        }
        // An empty path (etcd's YAML `cert-file:`) asks for nothing.
        let path = |path: Option<PathBuf>| path.filter(|path| !path.as_os_str().is_empty());
        let client_tls = TlsFiles {
            cert_file: path(self.cert_file),
            key_file: path(self.key_file),
            trusted_ca_file: path(self.trusted_ca_file),
            client_cert_auth: self.client_cert_auth.unwrap_or(false),
            crl_file: path(self.client_crl_file),
            auto_tls: self.auto_tls.unwrap_or(false),
        };
        client_tls.check("")?;
        let peer_tls = TlsFiles {
            cert_file: path(self.peer_cert_file),
            key_file: path(self.peer_key_file),
            trusted_ca_file: path(self.peer_trusted_ca_file),
            client_cert_auth: self.peer_client_cert_auth.unwrap_or(false),
            crl_file: path(self.peer_crl_file),
            auto_tls: self.peer_auto_tls.unwrap_or(false),
        };
        peer_tls.check("peer-")?;
        let peer_allowed = AllowedPeer {
            cn: self.peer_cert_allowed_cn.filter(|cn| !cn.is_empty()),
            hostname: self
                .peer_cert_allowed_hostname
                .filter(|host| !host.is_empty()),
            side: CertSide::Peer,
        };
        let client_allowed = AllowedPeer {
            cn: None,
            hostname: self
                .client_cert_allowed_hostname
                .filter(|host| !host.is_empty()),
            side: CertSide::Client,
        };
        if client_allowed.any() && !client_tls.client_cert_auth {
            bail!("--client-cert-allowed-hostname needs --client-cert-auth");
        }
        let peer_tls_used = listen_peer.iter().any(|listen| listen.tls)
            || advertise_peer_urls
                .iter()
                .any(|url| url.starts_with("https://"))
            || initial_cluster
                .values()
                .any(|url| url.starts_with("https://"));
        if listen_peer.iter().any(|listen| listen.tls) && !peer_tls.has_certificate() {
            bail!(
                "--listen-peer-urls has https:// or unixs:// URLs: give --peer-cert-file and --peer-key-file (or --peer-auto-tls)"
            );
        }
        if initial_cluster
            .values()
            .any(|url| url.starts_with("https://"))
            && peer_tls.trusted_ca_file.is_none()
            && !peer_tls.auto_tls
        {
            bail!(
                "--initial-cluster has https:// peer URLs: give --peer-trusted-ca-file to check the peers' certificates (or --peer-auto-tls)"
            );
        }
        if peer_allowed.any() && !peer_tls.client_cert_auth {
            bail!(
                "--peer-cert-allowed-cn and --peer-cert-allowed-hostname need --peer-client-cert-auth"
            );
        }
        if !peer_tls_used && (peer_tls.any() || peer_allowed.any()) {
            warnings.push(Warning {
                setting: "--peer-cert-file".to_string(),
                message: "peer TLS settings are given but every peer URL is http:// or unix://: they are not used".to_string(),
            });
        }
        if peer_tls_used && peer_tls.auto_tls && peer_tls.trusted_ca_file.is_none() {
            warnings.push(Warning {
                setting: "--peer-auto-tls".to_string(),
                message: "--peer-auto-tls: peers' certificates are not checked (as in etcd); give --peer-trusted-ca-file and real certificates to check them".to_string(),
            });
        }
        let tls_listeners = listen_client.iter().filter(|listen| listen.tls).count();
        if tls_listeners > 0 && !client_tls.has_certificate() {
            bail!(
                "--listen-client-urls has https:// or unixs:// URLs: give --cert-file and --key-file (or --auto-tls)"
            );
        }
        if listen_metrics.iter().any(|listen| listen.tls) && !client_tls.has_certificate() {
            bail!(
                "--listen-metrics-urls has https:// URLs: give --cert-file and --key-file (or --auto-tls)"
            );
        }
        if tls_listeners == 0 && client_tls.any() {
            warnings.push(Warning {
                setting: "--cert-file".to_string(),
                message: "client TLS settings are given but every --listen-client-urls URL is http:// or unix://: they are not used".to_string(),
            });
        }
        let version = |text: Option<String>, setting: &str, default: TlsVersion| match text {
            Some(text) if !text.trim().is_empty() => TlsVersion::parse(&text, setting),
            _ => Ok(default),
        };
        let tls_options = TlsOptions::new(
            &split_list(&self.cipher_suites.unwrap_or_default()),
            version(self.tls_min_version, "tls-min-version", TlsVersion::Tls12)?,
            version(self.tls_max_version, "tls-max-version", TlsVersion::Tls13)?,
        )?;
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
            listen_metrics,
            advertise_client_urls,
            listen_peer,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: state,
            initial_cluster_token: self
                .initial_cluster_token
                .unwrap_or_else(|| defaults::CLUSTER_TOKEN.into()),
            heartbeat_interval_ms,
            election_timeout_ms,
            request_bytes_max,
            txn_ops_max,
            quota_backend_bytes,
            snapshot_count,
            state_cache_bytes,
            snapshot_catchup_entries,
            log_segment_bytes: mainstay_storage::SEGMENT_BYTES,
            watch_progress_notify_interval_ms,
            strict_reconfig_check: self.strict_reconfig_check.unwrap_or(true),
            force_new_cluster: self.force_new_cluster.unwrap_or(false),
            grpc_gateway: self.enable_grpc_gateway.unwrap_or(true),
            auto_compaction,
            concurrent_streams_max,
            grpc_keepalive_interval,
            grpc_keepalive_timeout,
            socket_reuse_port: self.socket_reuse_port.unwrap_or(false),
            client_tls,
            peer_tls,
            peer_allowed,
            client_allowed,
            tls_options,
            initial_corrupt_check,
            hash_check_every,
            auth,
            log_level,
            log_output,
            log_format,
            warnings,
        })
    }
}

/// The settings given by `MAINSTAY_*` and `ETCD_*` variables (etcd's names:
/// `ETCD_` and the flag in capitals with `_` for `-`); `MAINSTAY_*` wins. An
/// `ETCD_*` variable that names no flag is reported, as etcd does.
fn env_layer(
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<Warning>,
) -> anyhow::Result<ServeArgs> {
    let mut layer = ServeArgs::default();
    for prefix in ["ETCD", "MAINSTAY"] {
        for flag in ETCD_FLAGS {
            let variable = env_name(prefix, flag.name);
            let Some(value) = env.get(&variable) else {
                continue;
            };
            if flag.name == "version" {
                warnings.push(Warning {
                    message: format!(
                        "{variable} is ignored: it is not a setting (etcd ignores it too)"
                    ),
                    setting: variable,
                });
                continue;
            }
            let origin = Origin::Env(variable);
            let suffix = origin.suffix();
            layer
                .set(flag, Raw::Text(value), origin)
                .map_err(|error| anyhow!("--{}{suffix}: {error}", flag.name))?;
        }
    }
    for variable in env.keys().filter(|key| key.starts_with("ETCD_")) {
        if !ETCD_FLAGS
            .iter()
            .any(|flag| env_name("ETCD", flag.name) == *variable)
        {
            warnings.push(Warning {
                setting: variable.clone(),
                message: format!("{variable} is ignored: it names no etcd flag"),
            });
        }
    }
    Ok(layer)
}

/// The settings in a config file. An unknown key is refused (a typo would
/// otherwise go unnoticed; etcd would skip it silently).
fn file_layer(path: &Path) -> anyhow::Result<ServeArgs> {
    let (format, entries) = file::read(path)?;
    let mut layer = ServeArgs::default();
    for (key, value) in &entries {
        let Some(flag) = etcd_flags::flag_for_file_key(key) else {
            bail!(
                "--config-file: {}: unknown setting {key:?} (docs/compat.md lists etcd's)",
                path.display()
            );
        };
        let origin = Origin::File(key.clone());
        let suffix = origin.suffix();
        layer
            .set(flag, Raw::File(value, format), origin)
            .map_err(|error| anyhow!("--{}{suffix}: {error}", flag.name))?;
    }
    Ok(layer)
}

/// Judges every given etcd flag without a typed field: the warnings for the
/// ignored ones, or the first refusal.
fn judge_etcd_flags(flags: &EtcdFlags) -> anyhow::Result<Vec<Warning>> {
    let mut warnings = Vec::new();
    for (name, given) in &flags.values {
        let flag = etcd_flags::lookup(name).ok_or_else(|| anyhow!("--{name}: unknown flag"))?;
        let shown = shown_value(flag, &given.value);
        let suffix = given.origin.suffix();
        match judge(flag, &given.value) {
            None => {}
            Some(Err(error)) => bail!("--{name}{suffix}: {error}"),
            Some(Ok(Verdict::Refuse(why))) => bail!("--{name}{shown}{suffix}: {why}"),
            Some(Ok(Verdict::Ignore(why))) => warnings.push(Warning {
                setting: format!("--{name}"),
                message: format!("--{name}{shown}{suffix} is ignored: {why}"),
            }),
        }
    }
    Ok(warnings)
}

/// `=value` for messages (` (empty)` for an empty value).
fn shown_value(flag: &EtcdFlag, value: &str) -> String {
    match (flag.kind, value.trim()) {
        (_, "") => " (empty)".to_string(),
        (Kind::Text, value) => format!("={value:?}"),
        (_, value) => format!("={value}"),
    }
}

/// etcd's `--log-level` (and 3.4's `--debug`) as a tracing level: zap's
/// dpanic, panic and fatal log errors.
fn log_level(level: Option<&str>, debug: bool) -> anyhow::Result<tracing::Level> {
    Ok(match (level, debug) {
        (None, true) => tracing::Level::DEBUG,
        (None, false) => tracing::Level::INFO,
        (Some("debug"), _) => tracing::Level::DEBUG,
        (Some("info"), _) => tracing::Level::INFO,
        (Some("warn"), _) => tracing::Level::WARN,
        (Some("error" | "dpanic" | "panic" | "fatal"), _) => tracing::Level::ERROR,
        (Some(other), _) => bail!(
            "--log-level must be one of debug, info, warn, error, dpanic, panic, fatal; not {other:?}"
        ),
    })
}

/// etcd's `--log-outputs` targets: stdout if that is the only one Mainstay can
/// write to, stderr otherwise; the targets it cannot write to (files, journald
/// outside `default`) are returned to be warned about.
fn log_output(targets: &[String]) -> (LogOutput, Vec<String>) {
    let mut ignored = Vec::new();
    let mut stdout = false;
    let mut stderr = false;
    for target in targets {
        match target.as_str() {
            "default" | "stderr" => stderr = true,
            "stdout" => stdout = true,
            other => ignored.push(other.to_string()),
        }
    }
    let output = if stdout && !stderr {
        LogOutput::Stdout
    } else {
        if stdout {
            ignored.push("stdout".to_string());
        }
        LogOutput::Stderr
    };
    (output, ignored)
}
