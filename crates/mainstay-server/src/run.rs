//! `run`: one member, from configuration to graceful shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, bail};
use mainstay_api::{
    Admission, Api, AuthOptions, AuthService, ClusterService, ElectionService, JwtKeys, JwtOptions,
    KvService, LeaseService, Limits, LockService, MaintenanceService, MessageSizeLimit, TokenKind,
    WatchService, lease_ttl_min,
};
use mainstay_proto::etcdserverpb::auth_server::AuthServer;
use mainstay_proto::etcdserverpb::cluster_server::ClusterServer;
use mainstay_proto::etcdserverpb::kv_server::KvServer;
use mainstay_proto::etcdserverpb::lease_server::LeaseServer;
use mainstay_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use mainstay_proto::etcdserverpb::watch_server::WatchServer;
use mainstay_proto::v3electionpb::election_server::ElectionServer;
use mainstay_proto::v3lockpb::lock_server::LockServer;
use mainstay_raft::{
    Dial, MemberNode, Replica, ReplicaConfig, cluster_id_for, fetch_cluster_view, member_id_for,
    tcp_dial,
};
use mainstay_storage::{Disk, Identity, OsDisk};

use futures::TryStreamExt;

use crate::authority::AuthorityFix;
use crate::io::{Conn, Incoming};
use crate::listen::{client_grpc_server, listen};
use crate::peer_tls::peer_dial;
use crate::tls::{ServerTls, resolve_auto, tls_incoming};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{ClusterState, Config, TokenSpec};

/// Every connection, client or peer, through `AuthorityFix`: etcd ignores a
/// request's `:authority` (etcdctl 3.4 sends the endpoint URL there), h2 would
/// reset the request.
fn fix_authority(incoming: Incoming) -> Incoming {
    Box::pin(incoming.map_ok(|conn| {
        let remote = conn.remote.clone();
        let common_name = conn.common_name.clone();
        Conn::new(AuthorityFix::new(conn), remote).with_common_name(common_name)
    }))
}

/// Token issuing and password hashing as configured; the JWT key files are
/// read and checked here (a member with unusable keys does not start).
fn auth_options(config: &Config, token_seed: Option<u64>) -> anyhow::Result<AuthOptions> {
    let tokens = match &config.auth.token {
        TokenSpec::Simple => TokenKind::Simple,
        TokenSpec::Jwt {
            sign_method,
            public_key,
            private_key,
            ttl,
        } => {
            let read = |path: &Option<std::path::PathBuf>| {
                path.as_ref()
                    .map(|path| {
                        std::fs::read(path)
                            .with_context(|| format!("--auth-token: read {}", path.display()))
                    })
                    .transpose()
            };
            let options = JwtOptions {
                sign_method: sign_method.clone(),
                public_key: read(public_key)?,
                private_key: read(private_key)?,
                ttl: *ttl,
            };
            TokenKind::Jwt(
                JwtKeys::new(&options).map_err(|e| anyhow::anyhow!("--auth-token: {e}"))?,
            )
        }
    };
    let mut options = AuthOptions::new(
        tokens,
        config.auth.bcrypt_cost,
        config.client_tls.client_cert_auth,
    );
    options.token_seed = token_seed.map(std::sync::Mutex::new);
    Ok(options)
}

/// Names for a self-signed certificate: the listen addresses' IPs and the
/// advertised URLs' hosts.
fn tls_hosts(listen: &[crate::config::Listen], advertised: &[String]) -> Vec<String> {
    listen
        .iter()
        .filter_map(|listen| match &listen.address {
            crate::config::ListenAddress::Tcp(address) => Some(address.ip().to_string()),
            crate::config::ListenAddress::Unix(_) => None,
        })
        .chain(advertised.iter().filter_map(|url| url_host(url)))
        .collect()
}

/// The host of an `http(s)://host:port` URL (for a self-signed certificate's
/// names).
fn url_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((host, _)) => host,
        None => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_string())
}

/// What the servers take from listeners, in `listen`'s order: a TLS listener's
/// connections after their handshake, then every one through `AuthorityFix`.
fn accepted(
    incomings: Vec<Incoming>,
    listen: &[crate::config::Listen],
    tls: Option<&Arc<ServerTls>>,
) -> Vec<Incoming> {
    let flags = listen.iter().map(|listen| listen.tls);
    incomings
        .into_iter()
        .zip(flags.chain(std::iter::repeat(false)))
        .map(|(incoming, with_tls)| match (tls, with_tls) {
            (Some(tls), true) => fix_authority(tls_incoming(incoming, tls.clone())),
            _ => fix_authority(incoming),
        })
        .collect()
}

/// gRPC accepts this much more than `--max-request-bytes` so the API can answer
/// "request is too large" itself (etcd does the same).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Where connections come from for one member (tests bind port 0 first, then
/// learn the ports; the simulator supplies simulated ones).
pub struct Listeners {
    /// Client connections, one stream per `Config::listen_client` entry in its
    /// order (an `https://` entry's connections get the TLS handshake here).
    pub client: Vec<Incoming>,
    /// Peer connections.
    pub peer: Vec<Incoming>,
    /// Metrics and health connections (`Config::listen_metrics`, in order).
    pub metrics: Vec<Incoming>,
}

/// What the member takes from its environment instead of reaching for it: the
/// simulator swaps these, never the logic.
#[derive(Clone)]
pub struct Env {
    /// How to reach peers.
    pub dial: Dial,
    /// Where the data directory's files live.
    pub disk: Arc<dyn Disk>,
    /// Seed of the member's Raft randomness.
    pub seed: u64,
    /// Deliberate safety bugs for the simulator's self-tests; all off in production.
    pub safety_breaks: SafetyBreaks,
    /// SIMULATOR ONLY: auth tokens' random parts drawn from `seed` (so a seed
    /// replays), never in production (they are secrets: the OS draws them).
    pub seeded_tokens: bool,
}

/// Deliberate safety bugs the simulator must detect (its self-tests). Each is a
/// field so that a test names exactly what it breaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SafetyBreaks {
    /// Serve linearizable reads from local state without a read barrier.
    pub skip_read_barrier: bool,
    /// Revoke leases one second before their deadline.
    pub expire_leases_early: bool,
    /// Start watches that name a start revision one revision late.
    pub watch_start_off_by_one: bool,
    /// Answer a forwarded write once the leader applied it, before this member did.
    pub answer_before_local_apply: bool,
    /// Answer Lock and Campaign as soon as the caller's key is queued, without
    /// waiting for the keys created before it to go.
    pub lock_skip_wait: bool,
    /// Report Raft log entries on disk without fsyncing them.
    pub skip_log_fsync: bool,
    /// Serve clients after a restart without catching up with the leader.
    pub serve_before_catch_up: bool,
    /// Serve reads without checking the caller's read permission.
    pub skip_read_permission: bool,
    /// Apply every put with its value's last byte flipped (silent divergence
    /// for the corruption checks to catch).
    pub diverge_values: bool,
}

impl Env {
    /// Real TCP, and a seed from the wall clock.
    pub fn production() -> Env {
        // The only wall-clock read in the member: randomness for election timeouts.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Env {
            dial: tcp_dial(),
            disk: Arc::new(OsDisk),
            seed: nanos ^ u64::from(std::process::id()).rotate_left(32),
            safety_breaks: SafetyBreaks::default(),
            seeded_tokens: false,
        }
    }
}

/// Binds the configured listen addresses.
pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
    let mut client = Vec::new();
    for address in config.listen_client.iter().map(|listen| &listen.address) {
        let listener = listen(address, config.socket_reuse_port)
            .await
            .with_context(|| format!("listen for clients on {address}"))?;
        client.push(listener);
    }
    let mut peer = Vec::new();
    for address in config.listen_peer.iter().map(|listen| &listen.address) {
        let listener = listen(address, config.socket_reuse_port)
            .await
            .with_context(|| format!("listen for peers on {address}"))?;
        peer.push(listener);
    }
    let mut metrics = Vec::new();
    for address in config.listen_metrics.iter().map(|listen| &listen.address) {
        let listener = listen(address, config.socket_reuse_port)
            .await
            .with_context(|| format!("listen for metrics on {address}"))?;
        metrics.push(listener);
    }
    Ok(Listeners {
        client,
        peer,
        metrics,
    })
}

/// Runs one member until `shutdown` resolves (graceful) or a fatal error stops it.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listeners = bind(&config).await?;
    run_with_listeners(config, listeners, Env::production(), shutdown, None).await
}

/// `run` with connections supplied and the environment given. `observer`, if
/// any, receives the member's `Replica` once it is open (for tests and the
/// simulator, which inspect Raft state).
pub async fn run_with_listeners(
    config: Config,
    listeners: Listeners,
    env: Env,
    shutdown: impl Future<Output = ()>,
    observer: Option<tokio::sync::oneshot::Sender<Replica>>,
) -> anyhow::Result<()> {
    let span = tracing::info_span!("member", member = %config.name);
    serve_member(config, listeners, env, shutdown, observer)
        .instrument(span)
        .await
}

/// How long a member started with `--initial-cluster-state existing` and no data
/// keeps asking its peers for its id before giving up.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Learns a runtime-added member's id and the cluster id from its peers: the
/// member whose peer URLs match ours and that has not started yet. (A started one
/// with our URL and name may be the removed member this one replaces, seen by a
/// peer that has not applied the removal yet: never take its id.)
async fn join(config: &Config, dial: &Dial) -> anyhow::Result<Identity> {
    let peers: Vec<&String> = config
        .initial_cluster
        .iter()
        .filter(|(name, _)| **name != config.name)
        .map(|(_, url)| url)
        .collect();
    if peers.is_empty() {
        bail!("--initial-cluster-state existing needs the other members in --initial-cluster");
    }
    let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let mut last = String::new();
    loop {
        for url in &peers {
            match fetch_cluster_view(dial, url).await {
                Ok(view) => {
                    let ours = view.members.iter().find(|(_, node, _)| {
                        node.name.is_empty()
                            && node
                                .peer_urls
                                .iter()
                                .any(|u| config.advertise_peer_urls.contains(u))
                    });
                    if let Some((id, _, _)) = ours {
                        tracing::info!(member_id = format_args!("{id:x}"), via = %url, "joined the cluster");
                        return Ok(Identity {
                            member_id: *id,
                            cluster_id: view.cluster_id,
                        });
                    }
                    tracing::debug!(via = %url, members = ?view.members, "no unstarted member with our peer URL yet");
                    last = format!(
                        "{url} lists no member with peer URL {:?}; add this member first (etcdctl member add {} --peer-urls={})",
                        config.advertise_peer_urls,
                        config.name,
                        config.advertise_peer_urls.join(",")
                    );
                }
                Err(error) => last = error,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("cannot join the cluster: {last}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// An unknown path: gRPC's Unimplemented to a gRPC client, Go's 404 to others.
async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    }
    (http::StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

async fn serve_member(
    config: Config,
    listeners: Listeners,
    env: Env,
    shutdown: impl Future<Output = ()>,
    observer: Option<tokio::sync::oneshot::Sender<Replica>>,
) -> anyhow::Result<()> {
    let token = &config.initial_cluster_token;
    let members: BTreeMap<u64, MemberNode> = config
        .initial_cluster
        .iter()
        .map(|(name, url)| {
            // Every member must bootstrap with byte-identical membership (the
            // entry at index 0 is never replicated), so client URLs are left out
            // here and published through Raft once the cluster runs.
            let client_urls = Vec::new();
            let peer_urls = vec![url.clone()];
            (
                member_id_for(&peer_urls, token),
                MemberNode {
                    name: name.clone(),
                    peer_urls,
                    client_urls,
                },
            )
        })
        .collect();
    // Certificates first: a bad file stops the member before it does anything.
    let client_tls = if config
        .listen_client
        .iter()
        .chain(&config.listen_metrics)
        .any(|listen| listen.tls)
    {
        let hosts = tls_hosts(&config.listen_client, &config.advertise_client_urls);
        let files = resolve_auto(
            &config.client_tls,
            "client",
            &config.data_dir.join("fixtures").join("client"),
            &hosts,
        )?;
        Some(ServerTls::new(
            &files,
            &config.tls_options,
            "client",
            config.client_allowed.clone(),
        )?)
    } else {
        None
    };
    let peer_tls_used = config.listen_peer.iter().any(|listen| listen.tls)
        || config
            .advertise_peer_urls
            .iter()
            .chain(config.initial_cluster.values())
            .any(|url| url.starts_with("https://"));
    let (peer_tls, dial) = if peer_tls_used {
        let hosts = tls_hosts(&config.listen_peer, &config.advertise_peer_urls);
        let files = resolve_auto(
            &config.peer_tls,
            "peer",
            &config.data_dir.join("fixtures").join("peer"),
            &hosts,
        )?;
        let server = ServerTls::new(
            &files,
            &config.tls_options,
            "peer",
            config.peer_allowed.clone(),
        )?;
        (
            Some(server),
            peer_dial(&files, &config.tls_options, &config.peer_allowed)?,
        )
    } else {
        (None, env.dial.clone())
    };
    let ids: Vec<u64> = members.keys().copied().collect();
    let own_id = members
        .iter()
        .find(|(_, node)| node.name == config.name)
        .map(|(id, _)| *id)
        .context("--initial-cluster does not contain this member's --name")?;
    // Who this member is: recorded in the data directory the first time it starts,
    // derived from the name for an initial member, learned from the peers for one
    // added at run time.
    let identity = match Identity::load(&env.disk, &config.data_dir)
        .with_context(|| format!("read the identity in {}", config.data_dir.display()))?
    {
        Some(identity) => identity,
        None => {
            let identity = match config.initial_cluster_state {
                ClusterState::New => Identity {
                    member_id: own_id,
                    cluster_id: cluster_id_for(&ids),
                },
                ClusterState::Existing => join(&config, &dial).await?,
            };
            identity
                .save(&env.disk, &config.data_dir)
                .context("record the member identity")?;
            identity
        }
    };
    let (member_id, cluster_id) = (identity.member_id, identity.cluster_id);
    tracing::info!(
        member_id = format_args!("{member_id:x}"),
        cluster_id = format_args!("{cluster_id:x}"),
        "starting"
    );

    let replica = Replica::open(ReplicaConfig {
        member_id,
        cluster_id,
        data_dir: config.data_dir.clone(),
        heartbeat_ms: config.heartbeat_interval_ms,
        election_timeout_ms: config.election_timeout_ms,
        snapshot_count: config.snapshot_count,
        state_cache_bytes: config.state_cache_bytes,
        snapshot_catchup_entries: config.snapshot_catchup_entries,
        log_segment_bytes: config.log_segment_bytes,
        seed: env.seed,
        dial: dial.clone(),
        disk: env.disk.clone(),
        unsafe_answer_before_local_apply: env.safety_breaks.answer_before_local_apply,
        unsafe_skip_log_fsync: env.safety_breaks.skip_log_fsync,
        unsafe_serve_before_catch_up: env.safety_breaks.serve_before_catch_up,
        unsafe_diverge_values: env.safety_breaks.diverge_values,
        strict_reconfig_check: config.strict_reconfig_check,
        auth_token_ttl: config.auth.token_ttl,
        force_new_cluster: config.force_new_cluster.then(|| MemberNode {
            name: config.name.clone(),
            peer_urls: config.advertise_peer_urls.clone(),
            client_urls: config.advertise_client_urls.clone(),
        }),
        metrics: mainstay_metrics::Metrics::new(mainstay_api::ETCD_VERSION, member_id),
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))
    .with_context(|| {
        format!(
            "open member {} at {}",
            config.name,
            config.data_dir.display()
        )
    })?;

    if let Some(observer) = observer {
        let _ = observer.send(replica.clone());
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut servers = tokio::task::JoinSet::new();
    for incoming in accepted(listeners.peer, &config.listen_peer, peer_tls.as_ref()) {
        let service = replica.peer_service();
        let signal = stopped(stop_rx.clone());
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .context("serve peers")
        });
    }

    if replica.is_pristine().await {
        match config.initial_cluster_state {
            ClusterState::New => {
                tracing::info!(members = members.len(), "bootstrapping a new cluster");
                replica
                    .bootstrap(members.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
            ClusterState::Existing => {
                tracing::info!("waiting for the leader to replicate the cluster to this member");
            }
        }
    }

    // Record our client URLs in the membership (etcd "publishes" its attributes
    // the same way) before serving clients, as etcd does: a client listing the
    // members never finds this one started but without client URLs. A member
    // restarted with the same URLs is published already.
    let own = MemberNode {
        name: config.name.clone(),
        peer_urls: config.advertise_peer_urls.clone(),
        client_urls: config.advertise_client_urls.clone(),
    };
    // Then catch up with the leader (one read barrier), as etcd serves only
    // once its own publish is applied: the committed id is fsynced lazily, so a
    // member restarted after losing unsynced data may be behind what it showed.
    let publisher = replica.clone();
    let published = async move {
        loop {
            match publisher.publish(own.clone()).await {
                Ok(()) => {
                    tracing::info!(client_urls = ?own.client_urls, "published this member's client URLs");
                    break;
                }
                Err(mainstay_raft::ReplicaError::Stopped) => return false,
                Err(error) => tracing::debug!(%error, "publishing member attributes; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        loop {
            match publisher.catch_up().await {
                Ok(()) => return true,
                Err(mainstay_raft::ReplicaError::Stopped) => return false,
                Err(error) => tracing::debug!(%error, "catching up with the leader; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };

    // Every member runs the loop; only a confirmed leader revokes.
    let early = if env.safety_breaks.expire_leases_early {
        std::time::Duration::from_secs(1)
    } else {
        std::time::Duration::ZERO
    };
    let lease_expiry = tokio::spawn(
        mainstay_raft::expire_leases(replica.clone(), early).instrument(tracing::Span::current()),
    );
    let auto_compaction = config.auto_compaction.map(|policy| {
        tokio::spawn(
            mainstay_raft::compact_automatically(replica.clone(), policy)
                .instrument(tracing::Span::current()),
        )
    });
    let hash_checks = config.hash_check_every.map(|every| {
        tokio::spawn(
            mainstay_raft::check_hashes_periodically(replica.clone(), every)
                .instrument(tracing::Span::current()),
        )
    });

    let request_bytes_max =
        usize::try_from(config.request_bytes_max).context("--max-request-bytes")?;
    let api = Api {
        replica: replica.clone(),
        cluster_id,
        limits: Limits {
            request_bytes_max,
            txn_ops_max: usize::try_from(config.txn_ops_max).context("--max-txn-ops")?,
            quota_backend_bytes: config.quota_backend_bytes,
            lease_ttl_min: lease_ttl_min(config.election_timeout_ms),
        },
        admission: Admission::default(),
        auth: std::sync::Arc::new(auth_options(
            &config,
            env.seeded_tokens.then_some(env.seed),
        )?),
        unsafe_skip_read_barrier: env.safety_breaks.skip_read_barrier,
        unsafe_watch_start_off_by_one: env.safety_breaks.watch_start_off_by_one,
        unsafe_lock_skip_wait: env.safety_breaks.lock_skip_wait,
        unsafe_skip_read_permission: env.safety_breaks.skip_read_permission,
    };
    let grpc_bytes_max = request_bytes_max + GRPC_OVERHEAD_BYTES;
    // gRPC's limit with grpc-go's answer (tonic's own stays as a backstop).
    let size_limit = MessageSizeLimit {
        limit: grpc_bytes_max as u64,
    };
    let mut client_servers = Vec::new();
    let gateway_calls = mainstay_http::calls_limit(config.concurrent_streams_max);
    let (grpc_health_reporter, grpc_health) = tonic_health::server::health_reporter();
    for incoming in accepted(listeners.client, &config.listen_client, client_tls.as_ref()) {
        let kv = KvServer::new(KvService::new(api.clone()))
            .max_decoding_message_size(grpc_bytes_max)
            .max_encoding_message_size(usize::MAX);
        let cluster = ClusterServer::new(ClusterService::new(api.clone()))
            .max_decoding_message_size(grpc_bytes_max);
        let maintenance = MaintenanceServer::new(MaintenanceService::new(api.clone()))
            .max_decoding_message_size(grpc_bytes_max);
        let lease = LeaseServer::new(LeaseService::new(api.clone()))
            .max_decoding_message_size(grpc_bytes_max);
        let watch = WatchServer::new(WatchService::new(
            api.clone(),
            std::time::Duration::from_millis(config.watch_progress_notify_interval_ms),
        ))
        .max_decoding_message_size(grpc_bytes_max)
        .max_encoding_message_size(usize::MAX);
        let auth = AuthServer::new(AuthService::new(api.clone()))
            .max_decoding_message_size(grpc_bytes_max);
        let lock = LockServer::new(LockService::new(api.clone()))
            .max_decoding_message_size(grpc_bytes_max);
        let election = ElectionServer::new(ElectionService::new(api.clone()))
            .max_decoding_message_size(grpc_bytes_max);
        let gateway = mainstay_http::Gateway {
            kv: KvService::new(api.clone()),
            lease: LeaseService::new(api.clone()),
            watch: WatchService::new(
                api.clone(),
                std::time::Duration::from_millis(config.watch_progress_notify_interval_ms),
            ),
            cluster: ClusterService::new(api.clone()),
            maintenance: MaintenanceService::new(api.clone()),
            auth: AuthService::new(api.clone()),
            lock: LockService::new(api.clone()),
            election: ElectionService::new(api.clone()),
            calls: gateway_calls.clone(),
            body_max: grpc_bytes_max,
        };
        // One router for gRPC and HTTP: gRPC services by their paths, the
        // gateway and the basic endpoints by theirs; HTTP/1.1 and HTTP/2 both.
        let mut routes = tonic::service::Routes::new(kv)
            .add_service(lease)
            .add_service(watch)
            .add_service(cluster)
            .add_service(maintenance)
            .add_service(auth)
            .add_service(lock)
            .add_service(election)
            .add_service(grpc_health.clone());
        let router = std::mem::take(routes.axum_router_mut())
            .merge(mainstay_http::client_routes(
                api.clone(),
                config.grpc_gateway.then_some(gateway),
            ))
            .fallback(not_found);
        *routes.axum_router_mut() = router;
        let signal = stopped(stop_rx.clone());
        let mut server = client_grpc_server(&config)
            .layer(mainstay_http::GrpcMetricsLayer::new(
                replica.metrics().clone(),
            ))
            .layer(size_limit);
        client_servers.push(async move {
            server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .context("serve clients")
        });
    }
    // Metrics and health URLs serve from the start, as etcd's do: a member
    // catching up is exactly when an operator looks.
    for incoming in accepted(
        listeners.metrics,
        &config.listen_metrics,
        client_tls.as_ref(),
    ) {
        let routes = tonic::service::Routes::from(
            mainstay_http::metrics_routes(api.clone()).fallback(not_found),
        );
        let signal = stopped(stop_rx.clone());
        servers.spawn(async move {
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, signal)
                .await
                .context("serve metrics")
        });
    }
    let initial_check = config.initial_corrupt_check.then(|| replica.clone());
    servers.spawn(
        async move {
            if !published.await {
                // Stopped before publishing: the member's stop is reported instead.
                return std::future::pending().await;
            }
            if let Some(replica) = initial_check {
                mainstay_raft::initial_corruption_check(&replica)
                    .await
                    .map_err(|reason| anyhow::anyhow!("initial corruption check: {reason}"))?;
            }
            tracing::info!("serving clients");
            grpc_health_reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            futures::future::try_join_all(client_servers)
                .await
                .map(|_| ())
        }
        .instrument(tracing::Span::current()),
    );

    let outcome = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            // A leader hands over first (clients then wait for no election),
            // bounded by two election timeouts.
            let within = std::time::Duration::from_millis(2 * config.election_timeout_ms);
            if let Some(leader) = replica.hand_over_leadership(within).await {
                tracing::info!(leader = format_args!("{leader:x}"), "leadership handed over");
            }
            Ok(())
        }
        () = replica.removed() => Err(anyhow::anyhow!(
            "this member was removed from the cluster; stopping (wipe its data directory before reusing it)"
        )),
        fatal = replica.stopped() => match fatal {
            Some(error) => Err(anyhow::anyhow!("member stopped after a fatal error: {error}")),
            None => Err(anyhow::anyhow!("raft stopped unexpectedly")),
        },
        Some(result) = servers.join_next() => match result {
            Ok(Ok(())) => Err(anyhow::anyhow!("a server exited unexpectedly")),
            Ok(Err(error)) => Err(error),
            Err(error) => Err(anyhow::anyhow!("server task failed: {error}")),
        },
    };
    lease_expiry.abort();
    if let Some(checks) = hash_checks {
        checks.abort();
        let _ = checks.await;
    }
    if let Some(checks) = auto_compaction {
        checks.abort();
        let _ = checks.await;
    }
    // Awaited, not only aborted: an aborted task drops its future (and its hold
    // on the member's stores) later, on a worker; a restart in the same process
    // must find the data directory free once `run` has returned.
    let _ = lease_expiry.await;
    let _ = stop_tx.send(true);
    replica.shutdown().await;
    if outcome.is_err() {
        // A fatal stop (a failed fsync, a broken server): answer nothing more.
        // Clients see the connection drop, an unknown outcome they already handle.
        servers.abort_all();
    }
    // Servers drain in-flight requests after the stop signal; don't wait forever.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    // Whatever did not drain is aborted and waited for, for the same reason.
    servers.shutdown().await;
    drop(api);
    drop(replica);
    // Tasks of openraft's (replication, the state machine worker) may still hold
    // the stores for a moment after shutdown; after a graceful stop `run`
    // returns once the data directory is free, so a restart in the same process
    // can open it. (After a fatal stop or a removal, connections aborted above
    // may hold the API a while longer; nothing restarts in place then.)
    let free_by = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while outcome.is_ok() {
        match env.disk.lock_dir(&config.data_dir) {
            Ok(lock) => {
                drop(lock);
                break;
            }
            Err(_) if tokio::time::Instant::now() < free_by => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "the data directory is still held after stopping");
                break;
            }
        }
    }
    outcome
}
