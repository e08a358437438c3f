//! Unit tests of the configuration: etcd's flag table against etcd's own flag
//! lists and docs/compat.md, the decisions (judge, values, URLs, logging) from
//! tables, and `resolve` over flags, environment and files.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use super::etcd_flags::{
    ETCD_FLAGS, EtcdFlag, FILE_ONLY_KEYS, Handling, Inert, Kind, Origin, Releases, Verdict,
    check_kind, flag_for_file_key, judge, lookup,
};
use super::file::{FileValue, Format, format_of, parse};
use super::values::{parse_bool, parse_go_duration, parse_millis_or_duration};
use super::*;

/// `mainstay serve`'s arguments, parsed as the binary parses them.
#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    args: ServeArgs,
}

fn args(argv: &[&str]) -> ServeArgs {
    Serve::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
        .args
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn resolve(argv: &[&str], environment: &[(&str, &str)]) -> anyhow::Result<Config> {
    args(argv).resolve_with_env(&env(environment))
}

fn error(argv: &[&str], environment: &[(&str, &str)]) -> String {
    match resolve(argv, environment) {
        Ok(_) => panic!("{argv:?} {environment:?} resolved"),
        Err(error) => format!("{error:#}"),
    }
}

fn warnings(config: &Config) -> Vec<String> {
    config.warnings.iter().map(ToString::to_string).collect()
}

/// A config file with `text`, named `name` (the extension picks the format).
fn file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write config file");
    let path = path.to_str().expect("utf-8 path").to_string();
    (dir, path)
}

/// Every flag `etcd --help` of Debian's etcd-server 3.4.23 lists, plus the ones
/// etcdmain/config.go registers without listing them (`config-file`,
/// `enable-grpc-gateway`, `experimental-enable-lease-checkpoint-persist`,
/// `log-output`, `unsafe-no-fsync`, `version`).
const ETCD_34: &str = "advertise-client-urls auth-token auth-token-ttl auto-compaction-mode \
    auto-compaction-retention auto-tls backend-batch-interval backend-batch-limit bcrypt-cost \
    cert-file cipher-suites client-cert-allowed-hostname client-cert-auth client-crl-file \
    config-file cors data-dir debug discovery discovery-fallback discovery-proxy discovery-srv \
    discovery-srv-name election-timeout enable-grpc-gateway enable-pprof enable-v2 \
    experimental-backend-bbolt-freelist-type experimental-compaction-batch-limit \
    experimental-corrupt-check-time experimental-enable-lease-checkpoint \
    experimental-enable-lease-checkpoint-persist experimental-enable-v2v3 \
    experimental-initial-corrupt-check experimental-peer-skip-client-san-verification \
    experimental-warning-apply-duration experimental-watch-progress-notify-interval \
    force-new-cluster grpc-keepalive-interval grpc-keepalive-min-time grpc-keepalive-timeout \
    heartbeat-interval host-whitelist initial-advertise-peer-urls initial-cluster \
    initial-cluster-state initial-cluster-token initial-election-tick-advance key-file \
    listen-client-urls listen-metrics-urls listen-peer-urls log-level log-output log-outputs \
    log-package-levels logger max-concurrent-streams max-request-bytes max-snapshots \
    max-txn-ops max-wals metrics name peer-auto-tls peer-cert-allowed-cn \
    peer-cert-allowed-hostname peer-cert-file peer-client-cert-auth peer-crl-file peer-key-file \
    peer-trusted-ca-file pre-vote proxy proxy-dial-timeout proxy-failure-wait \
    proxy-read-timeout proxy-refresh-interval proxy-write-timeout quota-backend-bytes \
    snapshot-count strict-reconfig-check trusted-ca-file unsafe-no-fsync version wal-dir";

/// Every flag etcd 3.5's server/etcdmain/config.go registers.
const ETCD_35: &str = "advertise-client-urls auth-token auth-token-ttl auto-compaction-mode \
    auto-compaction-retention auto-tls backend-batch-interval backend-batch-limit \
    backend-bbolt-freelist-type bcrypt-cost cert-file cipher-suites client-cert-allowed-hostname \
    client-cert-auth client-cert-file client-crl-file client-key-file config-file cors data-dir \
    discovery discovery-fallback discovery-proxy discovery-srv discovery-srv-name \
    election-timeout enable-grpc-gateway enable-log-rotation enable-pprof enable-v2 \
    experimental-bootstrap-defrag-threshold-megabytes experimental-compact-hash-check-enabled \
    experimental-compact-hash-check-time experimental-compaction-batch-limit \
    experimental-compaction-sleep-interval experimental-corrupt-check-time \
    experimental-distributed-tracing-address experimental-distributed-tracing-instance-id \
    experimental-distributed-tracing-sampling-rate experimental-distributed-tracing-service-name \
    experimental-downgrade-check-time experimental-enable-distributed-tracing \
    experimental-enable-lease-checkpoint experimental-enable-lease-checkpoint-persist \
    experimental-enable-v2v3 experimental-initial-corrupt-check experimental-memory-mlock \
    experimental-peer-skip-client-san-verification experimental-snapshot-catchup-entries \
    experimental-stop-grpc-service-on-defrag experimental-txn-mode-write-with-shared-buffer \
    experimental-warning-apply-duration experimental-watch-progress-notify-interval \
    force-new-cluster grpc-keepalive-interval grpc-keepalive-min-time grpc-keepalive-timeout \
    heartbeat-interval host-whitelist initial-advertise-peer-urls initial-cluster \
    initial-cluster-state initial-cluster-token initial-election-tick-advance key-file \
    listen-client-http-urls listen-client-urls listen-metrics-urls listen-peer-urls log-level \
    log-outputs log-rotation-config-json logger max-concurrent-streams max-request-bytes \
    max-snapshots max-txn-ops max-wals metrics name peer-auto-tls peer-cert-allowed-cn \
    peer-cert-allowed-hostname peer-cert-file peer-client-cert-auth peer-client-cert-file \
    peer-client-key-file peer-crl-file peer-key-file peer-trusted-ca-file pre-vote proxy \
    proxy-dial-timeout proxy-failure-wait proxy-read-timeout proxy-refresh-interval \
    proxy-write-timeout quota-backend-bytes raft-read-timeout raft-write-timeout \
    self-signed-cert-validity snapshot-count socket-reuse-address socket-reuse-port \
    strict-reconfig-check tls-max-version tls-min-version trusted-ca-file unsafe-no-fsync \
    v2-deprecation version wal-dir";

#[test]
fn the_table_holds_every_etcd_flag_once_with_its_releases() {
    // Method: etcd's own flag lists against the table, both ways.
    let etcd_34: Vec<&str> = ETCD_34.split_whitespace().collect();
    let etcd_35: Vec<&str> = ETCD_35.split_whitespace().collect();
    assert_eq!(etcd_34.len(), 86);
    assert_eq!(etcd_35.len(), 112);
    for name in etcd_34.iter().chain(&etcd_35) {
        let flag = lookup(name).unwrap_or_else(|| panic!("--{name} is missing"));
        let expected = match (etcd_34.contains(name), etcd_35.contains(name)) {
            (true, true) => Releases::Both,
            (true, false) => Releases::Only34,
            _ => Releases::Only35,
        };
        assert_eq!(flag.releases, expected, "--{name}");
    }
    for flag in ETCD_FLAGS {
        let in_etcd = etcd_34.contains(&flag.name) || etcd_35.contains(&flag.name);
        let extra = matches!(
            flag.releases,
            Releases::Etcd36 | Releases::Legacy | Releases::Mainstay
        );
        assert!(
            in_etcd != extra,
            "--{} is not an etcd 3.4/3.5 flag",
            flag.name
        );
        let copies = ETCD_FLAGS.iter().filter(|f| f.name == flag.name).count();
        assert_eq!(copies, 1, "--{} is listed {copies} times", flag.name);
    }
}

#[test]
fn every_flag_parses_on_the_command_line() {
    // Method: the serve command's long names and aliases against the table:
    // implemented flags are typed fields, the others come from the table.
    let command = Serve::command();
    let mut names = BTreeMap::new();
    for arg in command.get_arguments() {
        let aliases = arg.get_all_aliases().unwrap_or_default();
        for name in arg.get_long().into_iter().chain(aliases) {
            names.insert(name.to_string(), arg.get_id().to_string());
        }
    }
    for flag in ETCD_FLAGS {
        // `--version` is the binary's (clap's propagated version flag).
        if flag.name == "version" {
            continue;
        }
        assert!(
            names.contains_key(flag.name),
            "--{} is not accepted",
            flag.name
        );
    }
    for name in names
        .keys()
        .filter(|n| !matches!(n.as_str(), "help" | "version"))
    {
        assert!(lookup(name).is_some(), "--{name} is not in the table");
    }
    // Every implemented flag is read into a typed field, from every source.
    for flag in ETCD_FLAGS {
        if !matches!(flag.handling, Handling::Implemented(_)) || flag.name == "version" {
            continue;
        }
        let value = match flag.kind {
            Kind::Bool => "true",
            Kind::Uint | Kind::Int => "7",
            Kind::Duration => "5s",
            Kind::Choice(words) => words[0],
            Kind::Text | Kind::Any => "x",
        };
        let mut layer = ServeArgs::default();
        layer
            .set(flag, Raw::Text(value), Origin::Flag)
            .unwrap_or_else(|e| panic!("--{}={value}: {e}", flag.name));
        assert_ne!(
            layer,
            ServeArgs::default(),
            "--{} changed nothing",
            flag.name
        );
        assert!(layer.etcd.values.is_empty(), "--{} is untyped", flag.name);
        let merged = ServeArgs::default().or(layer.clone());
        assert_eq!(merged, layer, "--{} is lost when layers merge", flag.name);
    }
}

#[test]
fn judging_flags_mainstay_does_not_act_on() {
    // Goal: refused flags are refused only for values that ask for something,
    // and every value is checked the way etcd parses it.
    // (flag, value, verdict: "ignore", "refuse", or "bad value")
    let cases = [
        ("logger", "zap", "ignore"),
        ("logger", "journald", "bad value"),
        ("enable-v2", "false", "ignore"),
        ("enable-v2", "true", "refuse"),
        ("enable-v2", "", "bad value"),
        ("enable-v2", "maybe", "bad value"),
        ("proxy", "off", "ignore"),
        ("proxy", "on", "refuse"),
        ("proxy", "readonly", "refuse"),
        ("cert-file", "/etc/etcd/server.crt", "implemented"),
        ("client-cert-auth", "true", "implemented"),
        ("peer-cert-file", "/etc/etcd/peer.crt", "implemented"),
        ("peer-client-cert-auth", "true", "implemented"),
        ("peer-client-cert-file", "", "ignore"),
        (
            "peer-client-cert-file",
            "/etc/etcd/peer-client.crt",
            "refuse",
        ),
        ("client-transport-security.allowed-cn", "etcd", "refuse"),
        ("client-cert-allowed-hostname", "example.com", "implemented"),
        ("client-cert-file", "/etc/etcd/client.crt", "ignore"),
        ("tls-min-version", "TLS1.2", "implemented"),
        (
            "cipher-suites",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            "implemented",
        ),
        ("wal-dir", "/var/lib/etcd/wal", "refuse"),
        ("wal-dir", "", "ignore"),
        ("discovery", "https://discovery.etcd.io/x", "refuse"),
        ("discovery-srv", "example.com", "refuse"),
        (
            "listen-metrics-urls",
            "http://127.0.0.1:2381",
            "implemented",
        ),
        ("peer-client-cert-file", "client.crt", "refuse"),
        ("listen-client-http-urls", "http://127.0.0.1:2382", "refuse"),
        ("force-new-cluster", "true", "implemented"),
        ("force-new-cluster", "false", "implemented"),
        ("auto-compaction-retention", "1", "implemented"),
        ("auto-compaction-mode", "revision", "implemented"),
        ("max-wals", "5", "ignore"),
        ("max-wals", "five", "bad value"),
        ("backend-batch-interval", "10ms", "ignore"),
        ("backend-batch-interval", "10", "bad value"),
        ("proxy-read-timeout", "0", "ignore"),
        (
            "experimental-distributed-tracing-sampling-rate",
            "-1",
            "ignore",
        ),
        ("unsafe-no-fsync", "true", "ignore"),
        (
            "auth-token",
            "jwt,pub-key=a.pub,priv-key=a.key",
            "implemented",
        ),
        ("v", "", "ignore"),
    ];
    for (name, value, expected) in cases {
        let flag = lookup(name).unwrap_or_else(|| panic!("--{name}"));
        let verdict = match judge(flag, value) {
            None => "implemented",
            Some(Err(_)) => "bad value",
            Some(Ok(Verdict::Ignore(_))) => "ignore",
            Some(Ok(Verdict::Refuse(_))) => "refuse",
        };
        assert_eq!(verdict, expected, "--{name}={value:?}");
    }
    assert_eq!(judge(lookup("name").expect("--name"), "x"), None);
}

#[test]
fn values_as_etcd_writes_them() {
    // Goal: Go's booleans (and YAML 1.1's) and Go's durations, edge cases included.
    for (text, expected) in [
        ("true", Some(true)),
        ("TRUE", Some(true)),
        ("1", Some(true)),
        ("t", Some(true)),
        ("yes", Some(true)),
        ("on", Some(true)),
        ("false", Some(false)),
        ("0", Some(false)),
        ("F", Some(false)),
        ("no", Some(false)),
        ("Off", Some(false)),
        ("", None),
        ("truthy", None),
    ] {
        assert_eq!(parse_bool(text).ok(), expected, "{text:?}");
    }
    let ms = Duration::from_millis;
    for (text, expected) in [
        ("0", Some(Duration::ZERO)),
        ("5s", Some(Duration::from_secs(5))),
        ("2h", Some(Duration::from_secs(7200))),
        ("10m", Some(Duration::from_secs(600))),
        ("1.5s", Some(ms(1500))),
        (".5s", Some(ms(500))),
        ("1h30m", Some(Duration::from_secs(5400))),
        ("100ms", Some(ms(100))),
        ("250us", Some(Duration::from_micros(250))),
        ("250µs", Some(Duration::from_micros(250))),
        ("7ns", Some(Duration::from_nanos(7))),
        ("+3s", Some(Duration::from_secs(3))),
        ("5", None),
        ("", None),
        ("-5s", None),
        ("5d", None),
        ("s", None),
        ("1..5s", None),
        ("99999999999999999999h", None),
    ] {
        assert_eq!(parse_go_duration(text).ok(), expected, "{text:?}");
    }
    // Mainstay's own duration flags take a bare number as milliseconds.
    assert_eq!(parse_millis_or_duration("500").ok(), Some(ms(500)));
    assert_eq!(parse_millis_or_duration("10m").ok(), Some(ms(600_000)));
    // Kinds of flags without a typed field.
    assert!(check_kind(Kind::Uint, "-1").is_err());
    assert!(check_kind(Kind::Int, "-1").is_ok());
    assert!(check_kind(Kind::Any, "anything").is_ok());
}

#[test]
fn listen_and_advertised_urls() {
    // Goal: etcd's URL forms for listening (IPs, localhost, unix://, and the
    // TLS forms https:// and unixs://) and for advertising (host names too).
    // (url, listen address and TLS, advertised URL accepted)
    let tcp = |s: &str| {
        Some(Listen {
            address: ListenAddress::Tcp(s.parse().expect("address")),
            tls: false,
        })
    };
    let unix = |s: &str| {
        Some(Listen {
            address: ListenAddress::Unix(PathBuf::from(s)),
            tls: false,
        })
    };
    let tls = |listen: Option<Listen>| {
        listen.map(|listen| Listen {
            tls: true,
            ..listen
        })
    };
    let cases = [
        ("http://127.0.0.1:2379", tcp("127.0.0.1:2379"), true),
        ("http://localhost:2379", tcp("127.0.0.1:2379"), true),
        ("http://0.0.0.0:2379/", tcp("0.0.0.0:2379"), true),
        ("http://[::1]:2379", tcp("[::1]:2379"), true),
        (
            "unix:///run/etcd/client.sock",
            unix("/run/etcd/client.sock"),
            true,
        ),
        // etcd's relative form: everything after unix:// (a port is part of the name).
        ("unix://localhost:2379", unix("localhost:2379"), true),
        ("http://etcd-0.etcd:2380", None, true),
        ("http://etcd-0.etcd", None, false),
        ("https://127.0.0.1:2379", tls(tcp("127.0.0.1:2379")), true),
        ("https://etcd-0.etcd:2379", None, true),
        ("unixs:///run/etcd.sock", tls(unix("/run/etcd.sock")), true),
        ("unix://", None, false),
        ("127.0.0.1:2379", None, false),
    ];
    for (url, listen, advertised) in cases {
        assert_eq!(parse_url(url, "x").ok(), listen, "{url}");
        assert_eq!(
            check_advertised_url(url, "x").is_ok(),
            advertised,
            "{url} advertised"
        );
    }
    let message = format!(
        "{:#}",
        tls_peer_dial_url("unixs:///run/peer.sock", "initial-cluster").unwrap_err()
    );
    assert!(message.contains("not unixs://"), "{message}");
}

#[test]
fn log_levels_outputs_and_filters() {
    // Goal: etcd's log settings mapped onto tracing's level, stream and filter.
    use tracing::Level;
    // (--log-level, --debug, level)
    let cases = [
        (None, false, Some(Level::INFO)),
        (None, true, Some(Level::DEBUG)),
        (Some("warn"), true, Some(Level::WARN)),
        (Some("debug"), false, Some(Level::DEBUG)),
        (Some("fatal"), false, Some(Level::ERROR)),
        (Some("dpanic"), false, Some(Level::ERROR)),
        (Some("verbose"), false, None),
    ];
    for (level, debug, expected) in cases {
        assert_eq!(log_level(level, debug).ok(), expected, "{level:?} {debug}");
    }
    // (--log-outputs, output, ignored targets)
    let cases: [(&[&str], LogOutput, &[&str]); 6] = [
        (&["default"], LogOutput::Stderr, &[]),
        (&["stderr"], LogOutput::Stderr, &[]),
        (&["stdout"], LogOutput::Stdout, &[]),
        (&["stdout", "stderr"], LogOutput::Stderr, &["stdout"]),
        (
            &["/var/log/etcd.log"],
            LogOutput::Stderr,
            &["/var/log/etcd.log"],
        ),
        (&["stdout", "journal"], LogOutput::Stdout, &["journal"]),
    ];
    for (targets, output, ignored) in cases {
        let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
        let ignored: Vec<String> = ignored.iter().map(ToString::to_string).collect();
        assert_eq!(log_output(&targets), (output, ignored), "{targets:?}");
    }
    assert_eq!(log_filter(Level::INFO), "info,openraft=warn");
    assert_eq!(log_filter(Level::ERROR), "error,openraft=error");
    assert_eq!(log_filter(Level::DEBUG), "debug,openraft=debug");
}

#[test]
fn a_refused_flag_stops_resolution_naming_it() {
    // Method: refused values from the command line, the environment and a YAML
    // file; each error names the flag (and where the value came from).
    let message = error(&["--peer-client-cert-file", "/etc/etcd/pc.crt"], &[]);
    assert_eq!(
        message,
        "--peer-client-cert-file=\"/etc/etcd/pc.crt\": a separate certificate for dialing peers is not supported: --peer-cert-file serves both directions"
    );
    let message = error(&["--enable-v2"], &[]);
    assert_eq!(message, "--enable-v2=true: Mainstay serves only the v3 API");
    let message = error(&[], &[("ETCD_PROXY", "on")]);
    assert!(
        message.starts_with("--proxy=on (from ETCD_PROXY)"),
        "{message}"
    );
    // Refusals come before any other problem.
    let message = error(&["--election-timeout", "1", "--enable-v2"], &[]);
    assert!(message.starts_with("--enable-v2=true"), "{message}");
    let (_dir, path) = file(
        "etcd.conf.yml",
        "name: infra1\npeer-transport-security:\n  client-cert-file: /etc/etcd/pc.crt\n",
    );
    let message = error(&["--config-file", &path], &[]);
    assert!(
        message.starts_with(
            "--peer-client-cert-file=\"/etc/etcd/pc.crt\" (from peer-transport-security.client-cert-file in the config file)"
        ),
        "{message}"
    );
}

#[test]
fn an_ignored_flag_resolves_with_a_warning_naming_it() {
    // Method: ignored flags from the command line and the environment; each
    // resolves and yields exactly one warning naming it.
    let config = resolve(
        &["--logger", "zap", "--enable-v2=false", "--max-wals", "5"],
        &[("ETCD_MAX_SNAPSHOTS", "5"), ("ETCD_SNAPSHOTS", "x")],
    )
    .expect("resolves");
    let warnings = warnings(&config);
    for expected in [
        "--logger=zap is ignored: ",
        "--enable-v2=false is ignored: ",
        "--max-wals=5 is ignored: ",
        "--max-snapshots=5 (from ETCD_MAX_SNAPSHOTS) is ignored: ",
        "ETCD_SNAPSHOTS is ignored: it names no etcd flag",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(expected)),
            "{expected:?} not in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    // Nothing set, nothing to warn about.
    assert_eq!(warnings_of(&[]), Vec::<String>::new());
}

fn warnings_of(argv: &[&str]) -> Vec<String> {
    warnings(&resolve(argv, &[]).expect("resolves"))
}

#[test]
fn implemented_flags_reach_the_config() {
    // Method: every implemented flag set away from its default on one command
    // line (3.5 spellings where etcd has two), then the defaults.
    let config = resolve(
        &[
            "--strict-reconfig-check=false",
            "--force-new-cluster",
            "--max-concurrent-streams",
            "100",
            "--grpc-keepalive-interval",
            "0",
            "--grpc-keepalive-timeout",
            "3s",
            "--socket-reuse-port",
            "--experimental-watch-progress-notify-interval",
            "2s",
            "--experimental-snapshot-catchup-entries",
            "77",
            "--log-level",
            "warn",
            "--log-output",
            "stdout",
            "--listen-client-urls",
            "unix:///tmp/m.sock,http://127.0.0.1:2379",
        ],
        &[],
    )
    .expect("resolves");
    assert!(!config.strict_reconfig_check);
    assert!(config.force_new_cluster);
    assert_eq!(config.concurrent_streams_max, 100);
    assert_eq!(config.grpc_keepalive_interval, None);
    assert_eq!(config.grpc_keepalive_timeout, Duration::from_secs(3));
    assert!(config.socket_reuse_port);
    assert_eq!(config.watch_progress_notify_interval_ms, 2000);
    assert_eq!(config.snapshot_catchup_entries, 77);
    assert_eq!(config.log_level, tracing::Level::WARN);
    assert_eq!(config.log_output, LogOutput::Stdout);
    assert_eq!(
        config
            .listen_client
            .iter()
            .map(|listen| listen.address.clone())
            .collect::<Vec<_>>(),
        vec![
            ListenAddress::Unix(PathBuf::from("/tmp/m.sock")),
            ListenAddress::Tcp("127.0.0.1:2379".parse().expect("address")),
        ]
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);

    let defaults = resolve(&[], &[]).expect("resolves");
    assert!(defaults.strict_reconfig_check);
    assert!(!defaults.force_new_cluster);
    assert_eq!(defaults.concurrent_streams_max, u32::MAX);
    assert_eq!(
        defaults.grpc_keepalive_interval,
        Some(Duration::from_secs(7200))
    );
    assert_eq!(defaults.grpc_keepalive_timeout, Duration::from_secs(20));
    assert!(!defaults.initial_corrupt_check);

    assert_eq!(defaults.hash_check_every, Some(Duration::from_secs(60)));

    let config = resolve(&["--experimental-initial-corrupt-check"], &[]).expect("resolves");
    assert!(config.initial_corrupt_check);
    assert!(warnings(&config).is_empty());
    let config = resolve(&["--experimental-compact-hash-check-time", "5s"], &[]).expect("resolves");
    assert_eq!(config.hash_check_every, Some(Duration::from_secs(5)));
    let config =
        resolve(&["--experimental-compact-hash-check-enabled=false"], &[]).expect("resolves");
    assert_eq!(config.hash_check_every, None);
    assert!(
        error(&["--experimental-compact-hash-check-time", "0s"], &[])
            .contains("--experimental-compact-hash-check-time")
    );
    assert!(error(&["--max-concurrent-streams", "0"], &[]).contains("--max-concurrent-streams"));
}

#[test]
fn etcds_yaml_file_is_read_as_etcd_reads_it() {
    // Method: a file in the shape of etcd's sample configuration: empty keys
    // (unset), YAML 1.1 booleans, durations in nanoseconds, nested sections
    // with their inert values, a list.
    let (_dir, path) = file(
        "etcd.conf.yml",
        "\
name: 'infra1'
data-dir:
wal-dir:
snapshot-count: 20000
heartbeat-interval: 50
election-timeout: 500
listen-peer-urls: http://127.0.0.1:12380
listen-client-urls: http://127.0.0.1:12379,unix:///tmp/infra1.sock
initial-advertise-peer-urls: http://127.0.0.1:12380
advertise-client-urls: http://127.0.0.1:12379
initial-cluster: infra1=http://127.0.0.1:12380,infra2=http://infra2.example:12380
initial-cluster-state: 'existing'
strict-reconfig-check: no
grpc-keepalive-interval: 60000000000
experimental-watch-progress-notify-interval: 5000000000
experimental-snapshot-catch-up-entries: 100
max-concurrent-streams: 1000
enable-v2: false
proxy: 'off'
socket-options:
  reuse-port: yes
client-transport-security:
  cert-file:
  client-cert-auth: false
  auto-tls: false
peer-transport-security:
  allowed-cn:
log-level: debug
log-outputs: [stderr]
auto-compaction-mode: periodic
auto-compaction-retention: \"1\"
",
    );
    let config = resolve(&["--config-file", &path], &[]).expect("resolves");
    assert_eq!(config.name, "infra1");
    assert_eq!(config.data_dir, PathBuf::from("infra1.mainstay"));
    assert_eq!(config.snapshot_count, 20_000);
    assert_eq!(config.heartbeat_interval_ms, 50);
    assert_eq!(config.election_timeout_ms, 500);
    assert_eq!(config.initial_cluster_state, ClusterState::Existing);
    assert_eq!(config.initial_cluster.len(), 2);
    assert!(!config.strict_reconfig_check);
    assert_eq!(
        config.grpc_keepalive_interval,
        Some(Duration::from_secs(60))
    );
    assert_eq!(config.watch_progress_notify_interval_ms, 5000);
    assert_eq!(config.snapshot_catchup_entries, 100);
    assert_eq!(config.concurrent_streams_max, 1000);
    assert!(config.socket_reuse_port);
    assert_eq!(config.log_level, tracing::Level::DEBUG);
    assert_eq!(config.listen_client.len(), 2);
    let warnings = warnings(&config);
    for expected in [
        "--enable-v2=false (from enable-v2 in the config file) is ignored",
        "--proxy=off (from proxy in the config file) is ignored",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(expected)),
            "{expected:?} not in {warnings:#?}"
        );
    }
    // The empty and false client TLS settings ask for nothing: no warning.
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert_eq!(
        config.auto_compaction,
        Some(mainstay_raft::AutoCompaction::Periodic(
            Duration::from_secs(3600)
        ))
    );
}

#[test]
fn file_formats_keys_and_values() {
    // Goal: the format by extension or content, nested sections flattened, and
    // each file key mapped to the flag it sets.
    let path = std::path::Path::new;
    assert_eq!(format_of(path("a.yaml"), "x = 1"), Format::Yaml);
    assert_eq!(format_of(path("a.yml"), ""), Format::Yaml);
    assert_eq!(format_of(path("a.toml"), "name: x"), Format::Toml);
    assert_eq!(format_of(path("etcd.conf"), "name = \"x\""), Format::Toml);
    assert_eq!(format_of(path("etcd.conf"), "name: x\n"), Format::Yaml);
    // Nested sections become dotted keys; YAML's empty values are unset.
    let entries = parse(
        "a: 1\nb:\nc:\n  d: [x, 2]\n  e: true\nf: 1.5\n",
        Format::Yaml,
    )
    .expect("parses");
    assert_eq!(
        entries,
        vec![
            ("a".to_string(), FileValue::Int(1)),
            (
                "c.d".to_string(),
                FileValue::List(vec![FileValue::Text("x".into()), FileValue::Int(2)])
            ),
            ("c.e".to_string(), FileValue::Bool(true)),
            ("f".to_string(), FileValue::Text("1.5".into())),
        ]
    );
    let entries = parse(
        "max_txn_ops = 3\n[socket-options]\nreuse_port = true\n",
        Format::Toml,
    )
    .expect("parses");
    assert_eq!(
        entries,
        vec![
            ("max-txn-ops".to_string(), FileValue::Int(3)),
            (
                "socket-options.reuse-port".to_string(),
                FileValue::Bool(true)
            ),
        ]
    );
    assert!(parse("- a\n- b\n", Format::Yaml).is_err());
    // (file key, flag it sets)
    let cases = [
        ("name", Some("name")),
        ("client-transport-security.cert-file", Some("cert-file")),
        ("peer-transport-security.cert-file", Some("peer-cert-file")),
        (
            "peer-transport-security.allowed-cn",
            Some("peer-cert-allowed-cn"),
        ),
        (
            "client-transport-security.allowed-cn",
            Some("client-transport-security.allowed-cn"),
        ),
        (
            "experimental-snapshot-catch-up-entries",
            Some("experimental-snapshot-catchup-entries"),
        ),
        ("socket-options.reuse-port", Some("socket-reuse-port")),
        ("config-file", None),
        ("version", None),
        ("snapshot", None),
        ("electoin-timeout", None),
    ];
    for (key, flag) in cases {
        assert_eq!(flag_for_file_key(key).map(|f| f.name), flag, "{key}");
    }
}

#[test]
fn layers_flags_then_mainstay_env_then_etcd_env_then_file() {
    // Method: each layer sets --election-timeout; the winner is the one
    // resolved, in both file formats (a bare duration is ms in TOML, ns in YAML).
    let (_toml_dir, toml) = file(
        "m.toml",
        "election-timeout = 2000\nwatch-progress-notify-interval = 300\n",
    );
    let (_yaml_dir, yaml) = file(
        "m.yaml",
        "election-timeout: 2000\nexperimental-watch-progress-notify-interval: 300000000\n",
    );
    for path in [&toml, &yaml] {
        let timeout = |argv: &[&str], environment: &[(&str, &str)]| {
            let mut argv = argv.to_vec();
            argv.extend(["--config-file", path]);
            resolve(&argv, environment)
                .expect("resolves")
                .election_timeout_ms
        };
        assert_eq!(timeout(&[], &[]), 2000, "{path}: the file");
        assert_eq!(timeout(&[], &[("ETCD_ELECTION_TIMEOUT", "3000")]), 3000);
        let both = [
            ("ETCD_ELECTION_TIMEOUT", "3000"),
            ("MAINSTAY_ELECTION_TIMEOUT", "4000"),
        ];
        assert_eq!(timeout(&[], &both), 4000);
        assert_eq!(timeout(&["--election-timeout", "5000"], &both), 5000);
        let config = resolve(&["--config-file", path], &[]).expect("resolves");
        assert_eq!(config.watch_progress_notify_interval_ms, 300, "{path}");
    }
    // The file may be named by ETCD_CONFIG_FILE too; a flag's file wins.
    let (_other_dir, other) = file("o.yaml", "election-timeout: 6000\n");
    let config = resolve(&[], &[("ETCD_CONFIG_FILE", &yaml)]).expect("resolves");
    assert_eq!(config.election_timeout_ms, 2000);
    let config =
        resolve(&["--config-file", &other], &[("ETCD_CONFIG_FILE", &yaml)]).expect("resolves");
    assert_eq!(config.election_timeout_ms, 6000);
    // An ill-formed variable names itself.
    let message = error(&[], &[("ETCD_HEARTBEAT_INTERVAL", "fast")]);
    assert!(
        message.starts_with("--heartbeat-interval (from ETCD_HEARTBEAT_INTERVAL): "),
        "{message}"
    );
    let config = resolve(&[], &[("ETCD_VERSION", "3.5")]).expect("resolves");
    assert!(warnings(&config)[0].starts_with("ETCD_VERSION is ignored"));
}

#[test]
fn unknown_file_keys_are_refused() {
    // Goal: a typo in etcd's YAML file stops the member (etcd skips it silently).
    let (_dir, path) = file("m.yml", "electoin-timeout: 1000\n");
    let message = error(&["--config-file", &path], &[]);
    assert!(
        message.contains("unknown setting \"electoin-timeout\""),
        "{message}"
    );
}

/// The docs/compat.md row of one flag.
fn compat_row(flag: &EtcdFlag) -> String {
    let shown = match flag.releases {
        Releases::FileOnly => format!("`{}` (YAML)", flag.name),
        _ => format!("`--{}`", flag.name),
    };
    let (what, why) = match flag.handling {
        Handling::Implemented(how) => ("implemented".to_string(), how),
        Handling::Ignored(why) => ("warned".to_string(), why),
        Handling::Refused { inert, why } => {
            let inert = match inert {
                Inert::False => "`false`".to_string(),
                Inert::Empty => "empty".to_string(),
                Inert::Word(word) => format!("`{word}`"),
            };
            (format!("refused (warned if {inert})"), why)
        }
    };
    format!("| {shown} | {} | {what} | {why} |", flag.releases)
}

#[test]
fn compat_md_has_every_flag_as_the_code_handles_it() {
    // Method: the table's rows, generated from the code, must all be in
    // docs/compat.md (a changed reason fails here with the row to paste).
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/compat.md");
    let compat = std::fs::read_to_string(path).expect("read docs/compat.md");
    let missing: Vec<String> = ETCD_FLAGS
        .iter()
        .chain(FILE_ONLY_KEYS)
        .map(compat_row)
        .filter(|row| !compat.lines().any(|line| line == row))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/compat.md lacks these rows:\n{}",
        missing.join("\n")
    );
    // And the summary counts the etcd 3.4/3.5 flags as the table does.
    let count = |wanted: fn(&Handling) -> bool| {
        ETCD_FLAGS
            .iter()
            .filter(|f| {
                !matches!(
                    f.releases,
                    Releases::Etcd36 | Releases::Legacy | Releases::Mainstay
                )
            })
            .filter(|f| wanted(&f.handling))
            .count()
    };
    let summary = format!(
        "flags: {} implemented, {} warned, {} refused.",
        count(|h| matches!(h, Handling::Implemented(_))),
        count(|h| matches!(h, Handling::Ignored(_))),
        count(|h| matches!(h, Handling::Refused { .. })),
    );
    let prose = compat.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        prose.contains(&summary),
        "docs/compat.md should say {summary:?}"
    );
}

#[test]
fn the_state_cache_is_sized_by_flag_or_env_with_a_floor() {
    // Goal: --state-cache-bytes (Mainstay's own) and its variable set the redb
    // page cache; the default is small, and a cache under 1 MiB is refused.
    let config = resolve(&[], &[]).expect("defaults");
    assert_eq!(config.state_cache_bytes, 8 << 20);
    let config = resolve(&["--state-cache-bytes", "16777216"], &[]).expect("flag");
    assert_eq!(config.state_cache_bytes, 16 << 20);
    let config = resolve(&[], &[("MAINSTAY_STATE_CACHE_BYTES", "4194304")]).expect("env");
    assert_eq!(config.state_cache_bytes, 4 << 20);
    let error = resolve(&["--state-cache-bytes", "1000"], &[]).expect_err("too small");
    assert!(
        error.to_string().contains("must be at least 1048576"),
        "{error}"
    );
}

#[test]
fn client_tls_settings_as_etcd_takes_them() {
    // Goal: https:// client URLs need a certificate; the TLS flags reach the
    // config; contradictory or useless combinations are refused or warned.
    let https = ["--listen-client-urls", "https://127.0.0.1:2379"];
    let message = error(&https, &[]);
    assert!(
        message.contains("give --cert-file and --key-file"),
        "{message}"
    );
    let config = resolve(
        &[
            https[0],
            https[1],
            "--cert-file",
            "/etc/m/c.pem",
            "--key-file",
            "/etc/m/k.pem",
            "--trusted-ca-file",
            "/etc/m/ca.pem",
            "--client-cert-auth",
            "--client-crl-file",
            "/etc/m/crl.pem",
            "--cipher-suites",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            "--tls-max-version",
            "TLS1.2",
        ],
        &[],
    )
    .expect("resolves");
    assert!(config.listen_client[0].tls);
    assert_eq!(
        config.client_tls.cert_file,
        Some(PathBuf::from("/etc/m/c.pem"))
    );
    assert!(config.client_tls.client_cert_auth);
    assert_eq!(
        config.client_tls.crl_file,
        Some(PathBuf::from("/etc/m/crl.pem"))
    );
    assert_eq!(config.tls_options.cipher_suites.len(), 2);
    assert_eq!(
        config.tls_options.max_version,
        crate::tls::TlsVersion::Tls12
    );
    // From etcd's environment variables, with --auto-tls.
    let config = resolve(
        &[],
        &[
            ("ETCD_LISTEN_CLIENT_URLS", "https://127.0.0.1:2379"),
            ("ETCD_AUTO_TLS", "true"),
        ],
    )
    .expect("resolves");
    assert!(config.client_tls.auto_tls);
    for (argv, expected) in [
        (
            vec!["--cert-file", "/etc/m/c.pem"],
            "--cert-file and --key-file must be given together",
        ),
        (
            vec!["--auto-tls", "--client-cert-auth"],
            "--client-cert-auth needs --trusted-ca-file",
        ),
        (
            vec!["--auto-tls", "--tls-min-version", "TLS1.1"],
            "TLS1.1 is not supported",
        ),
        (
            vec!["--auto-tls", "--cipher-suites", "TLS_RSA_WITH_RC4_128_SHA"],
            "TLS_RSA_WITH_RC4_128_SHA is not supported",
        ),
    ] {
        let argv: Vec<&str> = https.iter().copied().chain(argv).collect();
        let message = error(&argv, &[]);
        assert!(message.contains(expected), "{argv:?}: {message}");
    }
    // Certificates without any TLS listener: started, with a warning.
    let warned = warnings_of(&["--cert-file", "/etc/m/c.pem", "--key-file", "/etc/m/k.pem"]);
    assert!(
        warned.iter().any(|w| w.contains("they are not used")),
        "{warned:?}"
    );
}

#[test]
fn peer_tls_settings_as_etcd_takes_them() {
    // Goal: https:// peer URLs need certificates and a CA to check peers by;
    // name rules need client certificates; unused settings are warned about.
    let peer = [
        "--listen-peer-urls",
        "https://127.0.0.1:2380",
        "--initial-cluster",
        "default=https://127.0.0.1:2380",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        peer.iter().copied().chain(extra.iter().copied()).collect()
    };
    let files = [
        "--peer-cert-file",
        "/etc/m/p.pem",
        "--peer-key-file",
        "/etc/m/pk.pem",
        "--peer-trusted-ca-file",
        "/etc/m/ca.pem",
    ];
    let config = resolve(
        &with(&[
            files[0],
            files[1],
            files[2],
            files[3],
            files[4],
            files[5],
            "--peer-client-cert-auth",
            "--peer-cert-allowed-cn",
            "peer",
        ]),
        &[],
    )
    .expect("resolves");
    assert!(config.listen_peer[0].tls);
    assert!(config.peer_tls.client_cert_auth);
    assert_eq!(config.peer_allowed.cn.as_deref(), Some("peer"));
    for (argv, expected) in [
        (with(&[]), "give --peer-cert-file and --peer-key-file"),
        (
            with(&[files[0], files[1], files[2], files[3]]),
            "give --peer-trusted-ca-file",
        ),
        (
            with(&[
                files[0],
                files[1],
                files[2],
                files[3],
                files[4],
                files[5],
                "--peer-cert-allowed-hostname",
                "n1.example.com",
            ]),
            "need --peer-client-cert-auth",
        ),
        (
            with(&["--peer-auto-tls", "--peer-client-cert-auth"]),
            "--peer-client-cert-auth needs --peer-trusted-ca-file",
        ),
    ] {
        let message = error(&argv, &[]);
        assert!(message.contains(expected), "{argv:?}: {message}");
    }
    let warned = warnings_of(&with(&["--peer-auto-tls"]));
    assert!(
        warned.iter().any(|w| w.contains("not checked")),
        "{warned:?}"
    );
    let warned = warnings_of(&files[..4]);
    assert!(
        warned.iter().any(|w| w.contains("they are not used")),
        "{warned:?}"
    );
}

#[test]
fn auto_compaction_reads_etcds_forms() {
    use mainstay_raft::AutoCompaction::{Periodic, Revision};
    let hour = Duration::from_secs(3600);
    type Want = Result<Option<mainstay_raft::AutoCompaction>, ()>;
    let table: [(Option<&str>, Option<&str>, Want); 11] = [
        (None, None, Ok(None)),
        (None, Some("0"), Ok(None)),
        (None, Some("1"), Ok(Some(Periodic(hour)))),
        (Some("periodic"), Some("72"), Ok(Some(Periodic(hour * 72)))),
        (Some("periodic"), Some("30m"), Ok(Some(Periodic(hour / 2)))),
        (Some("periodic"), Some("0s"), Ok(None)),
        (Some("revision"), Some("1000"), Ok(Some(Revision(1000)))),
        (Some("revision"), Some("0"), Ok(None)),
        (Some("revision"), Some("1h"), Err(())),
        (Some("hourly"), Some("1"), Err(())),
        (Some("periodic"), Some("soon"), Err(())),
    ];
    for (mode, retention, want) in table {
        assert_eq!(
            super::values::auto_compaction(mode, retention).map_err(|_| ()),
            want,
            "{mode:?} {retention:?}"
        );
    }
}
