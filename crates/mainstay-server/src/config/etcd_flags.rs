//! Every etcd 3.4 and 3.5 server flag and what Mainstay does with it: the one
//! table behind the command line, the `MAINSTAY_*`/`ETCD_*` variables, the
//! config file's keys, the startup warnings, the refusals, and the table in
//! docs/compat.md (a unit test holds the two together).
//!
//! A flag is **implemented** (a typed `ServeArgs` field reads it into
//! `Config`), **ignored** (accepted, and a warning at startup names it and says
//! why it has no meaning here), or **refused** (the member does not start),
//! unless its value asks for nothing (`false`, empty, `off`): then it is ignored
//! with a warning like the others. Refusing is for what an operator would rely
//! on and not get: TLS, another bootstrap or data layout, v2, the proxy, HTTP
//! endpoints. Warning is for tuning and cosmetics.

use std::collections::BTreeMap;
use std::fmt;

use super::values::{parse_bool, parse_go_duration, parse_int, parse_uint};

/// One etcd server flag.
#[derive(Debug)]
pub(crate) struct EtcdFlag {
    /// The flag's name without dashes, as etcd spells it.
    pub name: &'static str,
    /// Which etcd releases have it.
    pub releases: Releases,
    /// How its value is written.
    pub kind: Kind,
    /// What Mainstay does with it.
    pub handling: Handling,
}

/// The etcd releases that have a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Releases {
    /// etcd 3.4 and 3.5.
    Both,
    /// etcd 3.4 only (removed in 3.5).
    Only34,
    /// etcd 3.5 only (new in 3.5).
    Only35,
    /// etcd 3.6's name for a 3.4/3.5 experimental flag; Mainstay's own spelling.
    Etcd36,
    /// An etcd 0.4 flag that etcd 3.x still accepts and ignores with a warning.
    Legacy,
    /// Not a flag: a key of etcd's YAML config file only.
    FileOnly,
    /// Mainstay's own setting, with no etcd equivalent.
    Mainstay,
}

impl fmt::Display for Releases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Releases::Both => "3.4, 3.5",
            Releases::Only34 => "3.4",
            Releases::Only35 => "3.5",
            Releases::Etcd36 => "3.6",
            Releases::Legacy => "0.4 (ignored by 3.x)",
            Releases::FileOnly => "YAML file only",
            Releases::Mainstay => "Mainstay only",
        })
    }
}

/// How a flag's value is written (etcd's Go flag types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `true`/`false`; a bare `--flag` means true.
    Bool,
    /// A whole number.
    Uint,
    /// A signed whole number.
    Int,
    /// A Go duration (`5s`, `2h`); in etcd's YAML file, integer nanoseconds.
    Duration,
    /// Free text: paths, URLs, names, comma-separated lists.
    Text,
    /// One of a few words.
    Choice(&'static [&'static str]),
    /// Anything, or nothing (etcd's ignored legacy flags).
    Any,
}

/// What Mainstay does with a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handling {
    /// Read into `Config` by a typed `ServeArgs` field; the text says how.
    Implemented(&'static str),
    /// Accepted, with a warning naming it and saying why (the text).
    Ignored(&'static str),
    /// Refused at start (the text says why), unless the value is `inert`.
    Refused { inert: Inert, why: &'static str },
}

/// The value of a refused flag that asks for nothing: ignored with a warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inert {
    /// `false`.
    False,
    /// Empty.
    Empty,
    /// This word.
    Word(&'static str),
}

impl Inert {
    fn holds(self, value: &str) -> bool {
        match self {
            Inert::False => parse_bool(value) == Ok(false),
            Inert::Empty => value.trim().is_empty(),
            Inert::Word(word) => value.trim() == word,
        }
    }
}

/// What to do with one given value of a flag that is not implemented.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Accept it, with this warning.
    Ignore(&'static str),
    /// Refuse to start, for this reason.
    Refuse(&'static str),
}

/// Judges a value of a flag Mainstay does not implement: an ill-formed value is
/// an error (as in etcd), a refused flag set to something other than its inert
/// value is refused, anything else is ignored with a warning. `None` for an
/// implemented flag (its typed field decides).
pub(crate) fn judge(flag: &EtcdFlag, value: &str) -> Option<Result<Verdict, String>> {
    let verdict = match flag.handling {
        Handling::Implemented(_) => return None,
        Handling::Ignored(why) => Verdict::Ignore(why),
        Handling::Refused { inert, why } if inert.holds(value) => Verdict::Ignore(why),
        Handling::Refused { why, .. } => Verdict::Refuse(why),
    };
    Some(check_kind(flag.kind, value).map(|()| verdict))
}

/// Checks that `value` is written the way `kind` says.
pub(crate) fn check_kind(kind: Kind, value: &str) -> Result<(), String> {
    match kind {
        Kind::Bool => parse_bool(value).map(drop),
        Kind::Uint => parse_uint(value).map(drop),
        Kind::Int => parse_int(value).map(drop),
        Kind::Duration => parse_go_duration(value).map(drop),
        Kind::Choice(words) if !words.contains(&value.trim()) => Err(format!(
            "{:?} is not one of {}",
            value.trim(),
            words.join(", ")
        )),
        Kind::Choice(_) | Kind::Text | Kind::Any => Ok(()),
    }
}

/// The flag (or YAML-only key) called `name`.
pub(crate) fn lookup(name: &str) -> Option<&'static EtcdFlag> {
    ETCD_FLAGS
        .iter()
        .chain(FILE_ONLY_KEYS)
        .find(|flag| flag.name == name)
}

/// The environment variable etcd reads for a flag: `ETCD_` (or Mainstay's
/// `MAINSTAY_`) and the name in capitals with `_` for `-`.
pub(crate) fn env_name(prefix: &str, flag: &str) -> String {
    format!(
        "{prefix}_{}",
        flag.to_ascii_uppercase().replace(['-', '.'], "_")
    )
}

/// The flag that a key of etcd's YAML config file sets: the flag's own name,
/// except inside the nested `client-transport-security`,
/// `peer-transport-security` and `socket-options` sections and one key that
/// etcd spells differently from its flag.
pub(crate) fn flag_for_file_key(key: &str) -> Option<&'static EtcdFlag> {
    let name = match key {
        "experimental-snapshot-catch-up-entries" => "experimental-snapshot-catchup-entries",
        "socket-options.reuse-port" => "socket-reuse-port",
        "socket-options.reuse-address" => "socket-reuse-address",
        "client-transport-security.cert-file" => "cert-file",
        "client-transport-security.key-file" => "key-file",
        "client-transport-security.client-cert-file" => "client-cert-file",
        "client-transport-security.client-key-file" => "client-key-file",
        "client-transport-security.client-cert-auth" => "client-cert-auth",
        "client-transport-security.trusted-ca-file" => "trusted-ca-file",
        "client-transport-security.auto-tls" => "auto-tls",
        "client-transport-security.allowed-hostname" => "client-cert-allowed-hostname",
        "peer-transport-security.cert-file" => "peer-cert-file",
        "peer-transport-security.key-file" => "peer-key-file",
        "peer-transport-security.client-cert-file" => "peer-client-cert-file",
        "peer-transport-security.client-key-file" => "peer-client-key-file",
        "peer-transport-security.client-cert-auth" => "peer-client-cert-auth",
        "peer-transport-security.trusted-ca-file" => "peer-trusted-ca-file",
        "peer-transport-security.auto-tls" => "peer-auto-tls",
        "peer-transport-security.allowed-cn" => "peer-cert-allowed-cn",
        "peer-transport-security.allowed-hostname" => "peer-cert-allowed-hostname",
        // Flags that never come from a file: the file itself, and --version.
        "config-file" | "version" => return None,
        other => other,
    };
    lookup(name).filter(|flag| flag.releases != Releases::Legacy)
}

/// Values given for the flags without a typed field, by flag name, each with
/// where it came from (so that a refusal can say).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdFlags {
    pub(crate) values: BTreeMap<&'static str, Given>,
}

/// One given value and its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Given {
    pub value: String,
    pub origin: Origin,
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The command line (or a `MAINSTAY_*` variable clap read for it).
    Flag,
    /// This environment variable.
    Env(String),
    /// This key of the config file.
    File(String),
}

impl Origin {
    /// ` (from X)`, or nothing for a flag: appended to messages about a value.
    pub(crate) fn suffix(&self) -> String {
        match self {
            Origin::Flag => String::new(),
            Origin::Env(variable) => format!(" (from {variable})"),
            Origin::File(key) => format!(" (from {key} in the config file)"),
        }
    }
}

impl EtcdFlags {
    /// Records a value (a later one for the same flag replaces it).
    pub(crate) fn insert(&mut self, flag: &'static EtcdFlag, value: String, origin: Origin) {
        self.values.insert(flag.name, Given { value, origin });
    }

    /// These values, with `lower`'s for flags not given here.
    pub(crate) fn or(mut self, lower: EtcdFlags) -> EtcdFlags {
        for (name, given) in lower.values {
            self.values.entry(name).or_insert(given);
        }
        self
    }
}

/// The flags that get a command-line argument here (the implemented ones are
/// `ServeArgs` fields; the legacy ones too, so that etcd's command lines parse).
fn untyped_flags() -> impl Iterator<Item = &'static EtcdFlag> {
    ETCD_FLAGS
        .iter()
        .filter(|flag| !matches!(flag.handling, Handling::Implemented(_)))
}

impl clap::FromArgMatches for EtcdFlags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = EtcdFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        for flag in untyped_flags() {
            if let Some(value) = matches.get_one::<String>(flag.name) {
                self.insert(flag, value.clone(), Origin::Flag);
            }
        }
        Ok(())
    }
}

impl clap::Args for EtcdFlags {
    fn augment_args(command: clap::Command) -> clap::Command {
        untyped_flags().fold(command, |command, flag| {
            // Hidden from --help (there are 80 of them); docs/compat.md lists them.
            let arg = clap::Arg::new(flag.name)
                .long(flag.name)
                .hide(true)
                .action(clap::ArgAction::Set);
            let arg = match flag.kind {
                // Go's boolean flags: `--flag` alone means true.
                Kind::Bool => arg.num_args(0..=1).default_missing_value("true"),
                Kind::Any => arg.num_args(0..=1).default_missing_value(""),
                _ => arg.num_args(1).allow_hyphen_values(true),
            };
            command.arg(arg)
        })
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

const V2: &str = "Mainstay serves only the v3 API";
const V2_PROXY: &str = "only the v2 proxy (--proxy) uses it, and Mainstay does not run one";
const DISCOVERY: &str = "only discovery uses it, and Mainstay bootstraps from --initial-cluster";
const NO_BBOLT: &str = "Mainstay keeps its state in redb, not bbolt";
const LEASE_CHECKPOINT: &str = "Mainstay's keep-alives are Raft entries, so a lease keeps its remaining TTL across leader changes (what checkpoints are for)";
const TRACING: &str = "Mainstay exports no OpenTelemetry traces; it logs tracing spans";
const LEGACY: &str = "an etcd 0.4 flag that etcd 3.x ignores too";

use Handling::{Ignored, Implemented, Refused};
use Kind::{Any, Bool, Choice, Duration, Int, Text, Uint};
use Releases::{Both, Etcd36, Legacy, Only34, Only35};

const fn flag(name: &'static str, releases: Releases, kind: Kind, handling: Handling) -> EtcdFlag {
    EtcdFlag {
        name,
        releases,
        kind,
        handling,
    }
}

const fn refused(inert: Inert, why: &'static str) -> Handling {
    Refused { inert, why }
}

/// Every flag of etcd 3.4.23 (`etcd --help` of Debian's etcd-server, and
/// etcdmain/config.go) and 3.5 (server/etcdmain/config.go), in etcd's order,
/// plus the two 3.6 names Mainstay uses itself and etcd's ignored legacy flags.
#[rustfmt::skip]
pub(crate) static ETCD_FLAGS: &[EtcdFlag] = &[
    flag("config-file", Both, Text, Implemented("TOML (Mainstay's) or YAML (etcd's) file; unlike etcd, flags and environment still override it")),
    // Member.
    flag("name", Both, Text, Implemented("member name")),
    flag("data-dir", Both, Text, Implemented("holds the Raft log and the state (default `${name}.mainstay`)")),
    flag("wal-dir", Both, Text, refused(Inert::Empty, "Mainstay keeps its Raft log in --data-dir; a separate WAL directory is not supported")),
    flag("snapshot-count", Both, Uint, Implemented("applied entries between snapshots (default 10000, etcd 3.6's)")),
    flag("heartbeat-interval", Both, Uint, Implemented("milliseconds")),
    flag("election-timeout", Both, Uint, Implemented("milliseconds; at least 5 heartbeats, at most 50000")),
    flag("initial-election-tick-advance", Both, Bool, Ignored("Mainstay's first election waits one ordinary election timeout; there are no ticks to advance")),
    flag("listen-peer-urls", Both, Text, Implemented("`http://IP:port` or `unix://path`")),
    flag("listen-client-urls", Both, Text, Implemented("`http://IP:port` or `unix://path`")),
    flag("listen-client-http-urls", Only35, Text, refused(Inert::Empty, "HTTP (the JSON gateway, /health, /version) is served on --listen-client-urls beside gRPC, and /metrics and health on --listen-metrics-urls; an HTTP-only client listener is not supported")),
    flag("listen-metrics-urls", Both, Text, Implemented("/metrics, /health, /livez and /readyz on more URLs (https:// with the client certificate)")),
    flag("max-snapshots", Both, Uint, Ignored("Mainstay keeps one snapshot, in its state store")),
    flag("max-wals", Both, Uint, Ignored("Mainstay purges its Raft log itself once a snapshot covers it")),
    flag("quota-backend-bytes", Both, Int, Implemented("bytes; 0 means 2 GiB")),
    flag("backend-bbolt-freelist-type", Only35, Choice(&["array", "map"]), Ignored(NO_BBOLT)),
    flag("experimental-backend-bbolt-freelist-type", Only34, Choice(&["array", "map"]), Ignored(NO_BBOLT)),
    flag("backend-batch-interval", Both, Duration, Ignored("Mainstay commits its state store once per applied batch of Raft entries")),
    flag("backend-batch-limit", Both, Int, Ignored("Mainstay commits its state store once per applied batch of Raft entries")),
    flag("max-txn-ops", Both, Uint, Implemented("operations per transaction level")),
    flag("max-request-bytes", Both, Uint, Implemented("bytes; at most 64 MiB")),
    flag("max-concurrent-streams", Both, Uint, Implemented("HTTP/2 streams per client connection (default 2^32-1)")),
    flag("grpc-keepalive-min-time", Both, Duration, Ignored("the HTTP/2 server does not police how often clients ping")),
    flag("grpc-keepalive-interval", Both, Duration, Implemented("HTTP/2 pings to idle clients (default 2h; 0 turns them off)")),
    flag("grpc-keepalive-timeout", Both, Duration, Implemented("wait for a ping's answer before closing (default 20s)")),
    flag("socket-reuse-port", Only35, Bool, Implemented("SO_REUSEPORT on the TCP listeners")),
    flag("socket-reuse-address", Only35, Bool, Ignored("Mainstay's TCP listeners always set SO_REUSEADDR, as etcd's Go listeners do on Unix")),
    flag("raft-read-timeout", Only35, Duration, Ignored("every peer call has its own deadline, derived from --election-timeout")),
    flag("raft-write-timeout", Only35, Duration, Ignored("every peer call has its own deadline, derived from --election-timeout")),
    // Clustering.
    flag("initial-advertise-peer-urls", Both, Text, Implemented("`http://host:port` or `unix://path`")),
    flag("initial-cluster", Both, Text, Implemented("`name=peer-url,...`")),
    flag("initial-cluster-state", Both, Choice(&["new", "existing"]), Implemented("`new` or `existing`")),
    flag("initial-cluster-token", Both, Text, Implemented("part of the derived member and cluster ids")),
    flag("advertise-client-urls", Both, Text, Implemented("`http://host:port` or `unix://path`; published through Raft")),
    flag("discovery", Both, Text, refused(Inert::Empty, "discovery bootstrap is not supported; list the members in --initial-cluster")),
    flag("discovery-fallback", Both, Choice(&["exit", "proxy"]), Ignored(DISCOVERY)),
    flag("discovery-proxy", Both, Text, Ignored(DISCOVERY)),
    flag("discovery-srv", Both, Text, refused(Inert::Empty, "DNS SRV bootstrap is not supported; list the members in --initial-cluster")),
    flag("discovery-srv-name", Both, Text, Ignored(DISCOVERY)),
    flag("strict-reconfig-check", Both, Bool, Implemented("default true; false lets member changes through that leave too few started voters")),
    flag("pre-vote", Both, Bool, Ignored("Mainstay always runs Raft's pre-vote phase (etcd 3.5's default)")),
    flag("auto-compaction-retention", Both, Text, Implemented("hours or a Go duration (periodic), revisions (revision); 0, the default, turns it off")),
    flag("auto-compaction-mode", Both, Choice(&["periodic", "revision"]), Implemented("periodic keeps a time window sampled every tenth of it (of an hour at most), revision the last N revisions, checked every 5 minutes; the leader compacts")),
    flag("enable-v2", Both, Bool, refused(Inert::False, V2)),
    flag("experimental-enable-v2v3", Both, Text, refused(Inert::Empty, V2)),
    flag("v2-deprecation", Only35, Choice(&["not-yet", "write-only", "write-only-drop-data", "gone"]), Ignored("Mainstay has no v2 store (etcd's stage `gone`)")),
    // v2 proxy.
    flag("proxy", Both, Choice(&["off", "readonly", "on"]), refused(Inert::Word("off"), "Mainstay does not run as a v2 proxy")),
    flag("proxy-failure-wait", Both, Uint, Ignored(V2_PROXY)),
    flag("proxy-refresh-interval", Both, Uint, Ignored(V2_PROXY)),
    flag("proxy-dial-timeout", Both, Uint, Ignored(V2_PROXY)),
    flag("proxy-write-timeout", Both, Uint, Ignored(V2_PROXY)),
    flag("proxy-read-timeout", Both, Uint, Ignored(V2_PROXY)),
    // Security.
    flag("cert-file", Both, Text, Implemented("PEM certificate chain served on https:// and unixs:// client URLs; re-read when the file changes")),
    flag("key-file", Both, Text, Implemented("PEM private key of --cert-file")),
    flag("client-cert-file", Only35, Text, Ignored("the member makes no client connections of its own (its JSON gateway calls the services in process)")),
    flag("client-key-file", Only35, Text, Ignored("the member makes no client connections of its own (its JSON gateway calls the services in process)")),
    flag("client-cert-auth", Both, Bool, Implemented("clients must present a certificate signed by --trusted-ca-file (refused at the handshake otherwise)")),
    flag("client-crl-file", Both, Text, Implemented("PEM revocation lists; a revoked client certificate is refused at the handshake")),
    flag("client-cert-allowed-hostname", Both, Text, Implemented("a DNS name or IP address a client's certificate must name (needs --client-cert-auth)")),
    flag("trusted-ca-file", Both, Text, Implemented("PEM CA certificates that sign client certificates")),
    flag("auto-tls", Both, Bool, Implemented("without --cert-file, a self-signed certificate kept in <data-dir>/fixtures/client")),
    flag("peer-cert-file", Both, Text, Implemented("PEM certificate chain served on https:// peer URLs and presented when dialing peers; re-read when the file changes")),
    flag("peer-key-file", Both, Text, Implemented("PEM private key of --peer-cert-file")),
    flag("peer-client-cert-file", Only35, Text, refused(Inert::Empty, "a separate certificate for dialing peers is not supported: --peer-cert-file serves both directions")),
    flag("peer-client-key-file", Only35, Text, refused(Inert::Empty, "a separate certificate for dialing peers is not supported: --peer-cert-file serves both directions")),
    flag("peer-client-cert-auth", Both, Bool, Implemented("peers must present a certificate signed by --peer-trusted-ca-file")),
    flag("peer-trusted-ca-file", Both, Text, Implemented("PEM CA certificates that sign peer certificates; dialed peers are checked against it and their URL's host")),
    flag("peer-auto-tls", Both, Bool, Implemented("without --peer-cert-file, a self-signed certificate kept in <data-dir>/fixtures/peer; peers' certificates are then not checked (as in etcd), with a warning")),
    flag("self-signed-cert-validity", Only35, Uint, Ignored("self-signed certificates (--auto-tls) are valid for one year")),
    flag("peer-crl-file", Both, Text, Implemented("PEM revocation lists; a revoked peer certificate is refused at the handshake")),
    flag("peer-cert-allowed-cn", Both, Text, Implemented("the common name a peer's certificate must have (needs --peer-client-cert-auth)")),
    flag("peer-cert-allowed-hostname", Both, Text, Implemented("a DNS name or IP address a peer's certificate must name (needs --peer-client-cert-auth)")),
    flag("cipher-suites", Both, Text, Implemented("TLS 1.2 suites by their Go names; ECDHE with AES-GCM or ChaCha20-Poly1305 only (others are refused)")),
    flag("experimental-peer-skip-client-san-verification", Both, Bool, Ignored("Mainstay does not match a peer's certificate against its address; restrict peers with --peer-cert-allowed-cn or --peer-cert-allowed-hostname")),
    flag("tls-min-version", Only35, Choice(&["TLS1.2", "TLS1.3"]), Implemented("TLS1.2 (default) or TLS1.3")),
    flag("tls-max-version", Only35, Choice(&["", "TLS1.2", "TLS1.3"]), Implemented("TLS1.2 or TLS1.3 (default: the newest)")),
    flag("cors", Both, Text, Ignored("Mainstay's HTTP endpoints send no CORS headers, so browser pages from other origins cannot call them")),
    flag("host-whitelist", Both, Text, Ignored("Mainstay does not check the Host header of HTTP requests")),
    // Logging.
    flag("logger", Both, Choice(&["zap", "capnslog"]), Ignored("Mainstay logs with tracing (--log-level, MAINSTAY_LOG)")),
    flag("log-outputs", Both, Text, Implemented("`default`, `stderr` or `stdout`; other targets (files, journald) are warned about and stderr is used")),
    flag("log-output", Only34, Text, Implemented("etcd 3.4's spelling of --log-outputs")),
    flag("log-level", Both, Choice(&["debug", "info", "warn", "error", "dpanic", "panic", "fatal"]), Implemented("debug, info, warn or error (dpanic, panic and fatal log errors only); MAINSTAY_LOG, a tracing filter, overrides it")),
    flag("debug", Only34, Bool, Implemented("true means --log-level=debug")),
    flag("log-package-levels", Only34, Text, Ignored("set levels per module with MAINSTAY_LOG (a tracing filter, e.g. `info,mainstay_raft=debug`)")),
    flag("enable-log-rotation", Only35, Bool, Ignored("Mainstay logs to stderr or stdout; rotate outside the process")),
    flag("log-rotation-config-json", Only35, Text, Ignored("Mainstay logs to stderr or stdout; rotate outside the process")),
    flag("version", Both, Bool, Implemented("`mainstay serve --version` prints the version")),
    // Profiling and monitoring.
    flag("enable-pprof", Both, Bool, Ignored("Mainstay serves no profiling endpoint")),
    flag("metrics", Both, Choice(&["basic", "extensive"]), Ignored("Mainstay exports one set of metrics (basic's, with the peer and process ones); no per-RPC latency histograms")),
    flag("experimental-enable-distributed-tracing", Only35, Bool, Ignored(TRACING)),
    flag("experimental-distributed-tracing-address", Only35, Text, Ignored(TRACING)),
    flag("experimental-distributed-tracing-service-name", Only35, Text, Ignored(TRACING)),
    flag("experimental-distributed-tracing-instance-id", Only35, Text, Ignored(TRACING)),
    flag("experimental-distributed-tracing-sampling-rate", Only35, Int, Ignored(TRACING)),
    // Auth.
    flag("auth-token", Both, Text, Implemented("`simple` (default) or `jwt,pub-key=…,priv-key=…,sign-method=…[,ttl=…]`: RS/PS/ES/HS algorithms and EdDSA; a bad value refuses to start")),
    flag("bcrypt-cost", Both, Uint, Implemented("default 10; outside 4-31 falls back to 10 with a warning, as etcd does")),
    flag("auth-token-ttl", Both, Uint, Implemented("seconds a simple token lives after its last use; default 300 (0 = 300)")),
    flag("enable-grpc-gateway", Both, Bool, Implemented("default true: client URLs serve the JSON gateway (/v3/...) beside gRPC")),
    // Experimental.
    flag("experimental-initial-corrupt-check", Both, Bool, Implemented("before serving, compare this member's hash with its peers' at its revision; refuse to start if a majority differs")),
    flag("experimental-corrupt-check-time", Both, Duration, Ignored("Mainstay's periodic check is the compact-hash one (--experimental-compact-hash-check-*), on by default")),
    flag("experimental-compact-hash-check-enabled", Only35, Bool, Implemented("default true (etcd: false): the leader compares members' hashes at a common revision and raises CORRUPT for a minority")),
    flag("experimental-compact-hash-check-time", Only35, Duration, Implemented("default 1m: how often the leader compares hashes")),
    flag("experimental-enable-lease-checkpoint", Both, Bool, Ignored(LEASE_CHECKPOINT)),
    flag("experimental-enable-lease-checkpoint-persist", Both, Bool, Ignored(LEASE_CHECKPOINT)),
    flag("experimental-compaction-batch-limit", Both, Int, Ignored("a compaction is applied like any write, in its batch's one state-store transaction")),
    flag("experimental-compaction-sleep-interval", Only35, Duration, Ignored("a compaction is applied like any write, in its batch's one state-store transaction")),
    flag("experimental-watch-progress-notify-interval", Both, Duration, Implemented("the same setting as --watch-progress-notify-interval")),
    flag("experimental-downgrade-check-time", Only35, Duration, Ignored("downgrades are not implemented")),
    flag("experimental-warning-apply-duration", Both, Duration, Ignored("Mainstay logs no slow-apply warnings yet")),
    flag("experimental-memory-mlock", Only35, Bool, Ignored(NO_BBOLT)),
    flag("experimental-txn-mode-write-with-shared-buffer", Only35, Bool, Ignored(NO_BBOLT)),
    flag("experimental-stop-grpc-service-on-defrag", Only35, Bool, Ignored("a defragmenting member keeps serving; writes wait only for the swap")),
    flag("experimental-bootstrap-defrag-threshold-megabytes", Only35, Uint, Ignored("no defragmentation at start-up; run `etcdctl defrag`")),
    flag("experimental-snapshot-catchup-entries", Only35, Uint, Implemented("the same setting as --snapshot-catchup-entries")),
    // Unsafe.
    flag("unsafe-no-fsync", Both, Bool, Ignored("Mainstay always fsyncs before it acknowledges")),
    flag("force-new-cluster", Both, Bool, Implemented("keeps this member's data, every entry of its log included, and makes it the only member; refused while an old member answers")),
    // etcd 3.6's names for two of the experimental flags above: Mainstay's own.
    flag("snapshot-catchup-entries", Etcd36, Uint, Implemented("entries kept behind a snapshot for slow followers (default 5000)")),
    flag("watch-progress-notify-interval", Etcd36, Duration, Implemented("a Go duration, or a whole number of milliseconds (default 10m, at least 100ms)")),
    // Mainstay's own settings.
    flag("state-cache-bytes", Releases::Mainstay, Uint, Implemented("page cache of the state database in bytes (default 8 MiB, at least 1 MiB)")),
    flag("log-format", Releases::Mainstay, Choice(&["text", "json"]), Implemented("text (default) or json: one JSON object a line, for log shippers")),
    // Ignored by etcd itself (etcdmain's `ignored` list).
    flag("cluster-active-size", Legacy, Any, Ignored(LEGACY)),
    flag("cluster-remove-delay", Legacy, Any, Ignored(LEGACY)),
    flag("cluster-sync-interval", Legacy, Any, Ignored(LEGACY)),
    flag("config", Legacy, Any, Ignored(LEGACY)),
    flag("force", Legacy, Any, Ignored(LEGACY)),
    flag("max-result-buffer", Legacy, Any, Ignored(LEGACY)),
    flag("max-retry-attempts", Legacy, Any, Ignored(LEGACY)),
    flag("peer-heartbeat-interval", Legacy, Any, Ignored(LEGACY)),
    flag("peer-election-timeout", Legacy, Any, Ignored(LEGACY)),
    flag("retry-interval", Legacy, Any, Ignored(LEGACY)),
    flag("snapshot", Legacy, Any, Ignored(LEGACY)),
    flag("v", Legacy, Any, Ignored(LEGACY)),
    flag("vv", Legacy, Any, Ignored(LEGACY)),
];

/// Keys of etcd's YAML file that no flag sets.
pub(crate) static FILE_ONLY_KEYS: &[EtcdFlag] = &[flag(
    "client-transport-security.allowed-cn",
    Releases::FileOnly,
    Text,
    refused(
        Inert::Empty,
        "restricting client certificates to a common name is not supported yet",
    ),
)];
