//! etcd's JSON gateway (`/v3/...`, grpc-gateway in etcd): every KV, Lease,
//! Watch, Cluster, Maintenance, Auth, Lock and Election call as `POST` with
//! the request message as JSON (proto3's JSON mapping with the .proto field
//! names: 64-bit integers as strings, bytes as base64, enums by name).
//!
//! A call goes to the same service object gRPC uses, with the HTTP request's
//! extensions (who the client is: its certificate's name) and its
//! `Authorization` header as the token: the checks are the gRPC path's, there
//! is no second way in. Streams answer `{"result":…}` lines; errors
//! `{"error","message","code"}` with grpc-gateway's HTTP status for the code.
//! At most `--max-concurrent-streams` gateway calls run at once (etcd's gateway
//! shares one gRPC connection to itself, whose stream limit queues the rest).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::MethodRouter;
use futures::{Stream, StreamExt};
use mainstay_api::{
    AuthService, ClusterService, ElectionService, KvService, LeaseService, LockService,
    MaintenanceService, WatchService,
};
use mainstay_proto::etcdserverpb::auth_server::Auth;
use mainstay_proto::etcdserverpb::cluster_server::Cluster;
use mainstay_proto::etcdserverpb::kv_server::Kv;
use mainstay_proto::etcdserverpb::lease_server::Lease;
use mainstay_proto::etcdserverpb::maintenance_server::Maintenance;
use mainstay_proto::etcdserverpb::watch_server::Watch;
use mainstay_proto::v3electionpb::election_server::Election;
use mainstay_proto::v3lockpb::lock_server::Lock;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

use crate::codes::http_status;

/// The services the gateway calls, and its limits.
pub struct Gateway {
    /// KV.
    pub kv: KvService,
    /// Lease.
    pub lease: LeaseService,
    /// Watch.
    pub watch: WatchService,
    /// Cluster.
    pub cluster: ClusterService,
    /// Maintenance.
    pub maintenance: MaintenanceService,
    /// Auth.
    pub auth: AuthService,
    /// Lock.
    pub lock: LockService,
    /// Election.
    pub election: ElectionService,
    /// Gateway calls in flight (streams included), at most `--max-concurrent-streams`.
    pub calls: Arc<Semaphore>,
    /// Largest request body (and streamed request message) accepted, in bytes.
    pub body_max: usize,
}

/// The largest semaphore tokio allows (`--max-concurrent-streams` defaults to 2³²−1).
pub fn calls_limit(streams: u32) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        usize::try_from(streams).map_or(Semaphore::MAX_PERMITS, |n| n.min(Semaphore::MAX_PERMITS)),
    ))
}

type Shared = Arc<Gateway>;

/// The `/v3/…` routes, also under `/v3beta/…` as etcd 3.4 serves them.
pub fn routes(gateway: Gateway) -> Router {
    let g = Arc::new(gateway);
    let table: Vec<(&str, MethodRouter)> = vec![
        (
            "kv/range",
            unary(&g, |g, r| async move { g.kv.range(r).await }),
        ),
        ("kv/put", unary(&g, |g, r| async move { g.kv.put(r).await })),
        (
            "kv/deleterange",
            unary(&g, |g, r| async move { g.kv.delete_range(r).await }),
        ),
        ("kv/txn", unary(&g, |g, r| async move { g.kv.txn(r).await })),
        (
            "kv/compaction",
            unary(&g, |g, r| async move { g.kv.compact(r).await }),
        ),
        (
            "watch",
            bidi(&g, Ending::StaysOpen, |g, r| async move {
                g.watch.watch(r).await
            }),
        ),
        (
            "lease/grant",
            unary(&g, |g, r| async move { g.lease.lease_grant(r).await }),
        ),
        (
            "lease/revoke",
            unary(&g, |g, r| async move { g.lease.lease_revoke(r).await }),
        ),
        (
            "kv/lease/revoke",
            unary(&g, |g, r| async move { g.lease.lease_revoke(r).await }),
        ),
        (
            "lease/keepalive",
            bidi(&g, Ending::Ends, |g, r| async move {
                g.lease.lease_keep_alive(r).await
            }),
        ),
        (
            "lease/timetolive",
            unary(
                &g,
                |g, r| async move { g.lease.lease_time_to_live(r).await },
            ),
        ),
        (
            "kv/lease/timetolive",
            unary(
                &g,
                |g, r| async move { g.lease.lease_time_to_live(r).await },
            ),
        ),
        (
            "lease/leases",
            unary(&g, |g, r| async move { g.lease.lease_leases(r).await }),
        ),
        (
            "kv/lease/leases",
            unary(&g, |g, r| async move { g.lease.lease_leases(r).await }),
        ),
        (
            "cluster/member/add",
            unary(&g, |g, r| async move { g.cluster.member_add(r).await }),
        ),
        (
            "cluster/member/remove",
            unary(&g, |g, r| async move { g.cluster.member_remove(r).await }),
        ),
        (
            "cluster/member/update",
            unary(&g, |g, r| async move { g.cluster.member_update(r).await }),
        ),
        (
            "cluster/member/list",
            unary(&g, |g, r| async move { g.cluster.member_list(r).await }),
        ),
        (
            "cluster/member/promote",
            unary(&g, |g, r| async move { g.cluster.member_promote(r).await }),
        ),
        (
            "maintenance/alarm",
            unary(&g, |g, r| async move { g.maintenance.alarm(r).await }),
        ),
        (
            "maintenance/status",
            unary(&g, |g, r| async move { g.maintenance.status(r).await }),
        ),
        (
            "maintenance/defragment",
            unary(&g, |g, r| async move { g.maintenance.defragment(r).await }),
        ),
        // etcd registers Hash and HashKV at the same path; Hash wins.
        (
            "maintenance/hash",
            unary(&g, |g, r| async move { g.maintenance.hash(r).await }),
        ),
        (
            "maintenance/snapshot",
            server_stream(&g, |g, r| async move { g.maintenance.snapshot(r).await }),
        ),
        (
            "maintenance/transfer-leadership",
            unary(&g, |g, r| async move { g.maintenance.move_leader(r).await }),
        ),
        (
            "auth/enable",
            unary(&g, |g, r| async move { g.auth.auth_enable(r).await }),
        ),
        (
            "auth/disable",
            unary(&g, |g, r| async move { g.auth.auth_disable(r).await }),
        ),
        (
            "auth/status",
            unary(&g, |g, r| async move { g.auth.auth_status(r).await }),
        ),
        (
            "auth/authenticate",
            unary(&g, |g, r| async move { g.auth.authenticate(r).await }),
        ),
        (
            "auth/user/add",
            unary(&g, |g, r| async move { g.auth.user_add(r).await }),
        ),
        (
            "auth/user/get",
            unary(&g, |g, r| async move { g.auth.user_get(r).await }),
        ),
        (
            "auth/user/list",
            unary(&g, |g, r| async move { g.auth.user_list(r).await }),
        ),
        (
            "auth/user/delete",
            unary(&g, |g, r| async move { g.auth.user_delete(r).await }),
        ),
        (
            "auth/user/changepw",
            unary(
                &g,
                |g, r| async move { g.auth.user_change_password(r).await },
            ),
        ),
        (
            "auth/user/grant",
            unary(&g, |g, r| async move { g.auth.user_grant_role(r).await }),
        ),
        (
            "auth/user/revoke",
            unary(&g, |g, r| async move { g.auth.user_revoke_role(r).await }),
        ),
        (
            "auth/role/add",
            unary(&g, |g, r| async move { g.auth.role_add(r).await }),
        ),
        (
            "auth/role/get",
            unary(&g, |g, r| async move { g.auth.role_get(r).await }),
        ),
        (
            "auth/role/list",
            unary(&g, |g, r| async move { g.auth.role_list(r).await }),
        ),
        (
            "auth/role/delete",
            unary(&g, |g, r| async move { g.auth.role_delete(r).await }),
        ),
        (
            "auth/role/grant",
            unary(
                &g,
                |g, r| async move { g.auth.role_grant_permission(r).await },
            ),
        ),
        (
            "auth/role/revoke",
            unary(
                &g,
                |g, r| async move { g.auth.role_revoke_permission(r).await },
            ),
        ),
        (
            "election/campaign",
            unary(&g, |g, r| async move { g.election.campaign(r).await }),
        ),
        (
            "election/proclaim",
            unary(&g, |g, r| async move { g.election.proclaim(r).await }),
        ),
        (
            "election/leader",
            unary(&g, |g, r| async move { g.election.leader(r).await }),
        ),
        (
            "election/observe",
            server_stream(&g, |g, r| async move { g.election.observe(r).await }),
        ),
        (
            "election/resign",
            unary(&g, |g, r| async move { g.election.resign(r).await }),
        ),
        (
            "lock/lock",
            unary(&g, |g, r| async move { g.lock.lock(r).await }),
        ),
        (
            "lock/unlock",
            unary(&g, |g, r| async move { g.lock.unlock(r).await }),
        ),
    ];
    let mut router = Router::new();
    for prefix in ["/v3/", "/v3beta/"] {
        for (path, method) in &table {
            router = router.route(&format!("{prefix}{path}"), method.clone());
        }
    }
    router.layer(axum::middleware::map_response(cors))
}

/// etcd's default CORS (`--cors=*`): any origin may call the gateway.
async fn cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    response
}

/// A call's permit and its one request message from the JSON body (with the
/// HTTP request's metadata and extensions), or the error answer.
async fn unary_request<Req: DeserializeOwned + Default>(
    g: &Gateway,
    request: Request,
) -> Result<(tokio::sync::OwnedSemaphorePermit, tonic::Request<Req>), Response> {
    let Ok(permit) = g.calls.clone().acquire_owned().await else {
        return Err(error_response(&Status::unavailable(
            "etcdserver: server stopped",
        )));
    };
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, g.body_max)
        .await
        .map_err(|error| error_response(&Status::invalid_argument(error.to_string())))?;
    let message: Req = decode(&bytes).map_err(|status| error_response(&status))?;
    let request = tonic::Request::from_parts(metadata(&parts.headers), parts.extensions, message);
    Ok((permit, request))
}

/// A unary call: one JSON message in, one out.
fn unary<Req, Resp, F, Fut>(g: &Shared, call: F) -> MethodRouter
where
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Shared, tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>> + Send,
{
    let g = g.clone();
    axum::routing::post(move |request: Request| {
        let (g, call) = (g.clone(), call.clone());
        async move {
            let (_permit, request) = match unary_request::<Req>(&g, request).await {
                Ok(read) => read,
                Err(answer) => return answer,
            };
            match call(g.clone(), request).await {
                Ok(response) => json_response(StatusCode::OK, &response.into_inner()),
                Err(status) => error_response(&status),
            }
        }
    })
    .options(preflight)
}

/// A call that answers a stream (Snapshot, Observe): one JSON message in.
fn server_stream<Req, Resp, S, F, Fut>(g: &Shared, call: F) -> MethodRouter
where
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: Fn(Shared, tonic::Request<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<S>, Status>> + Send,
{
    let g = g.clone();
    axum::routing::post(move |request: Request| {
        let (g, call) = (g.clone(), call.clone());
        async move {
            let (permit, request) = match unary_request::<Req>(&g, request).await {
                Ok(read) => read,
                Err(answer) => return answer,
            };
            match call(g.clone(), request).await {
                Ok(response) => stream_response(response.into_inner(), permit),
                Err(status) => error_response(&status),
            }
        }
    })
    .options(preflight)
}

/// What a bidirectional call does when the request body ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// The call goes on (Watch: etcd keeps the stream until the client leaves).
    StaysOpen,
    /// The call ends (LeaseKeepAlive).
    Ends,
}

/// A bidirectional call: every JSON object of the request body is one request
/// message, each answer one `{"result":…}` line.
fn bidi<Req, Resp, S, F, Fut>(g: &Shared, ending: Ending, call: F) -> MethodRouter
where
    Req: DeserializeOwned + prost::Message + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: Fn(Shared, tonic::Request<tonic::Streaming<Req>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<tonic::Response<S>, Status>> + Send,
{
    let g = g.clone();
    axum::routing::post(move |request: Request| {
        let (g, call) = (g.clone(), call.clone());
        async move {
            let Ok(permit) = g.calls.clone().acquire_owned().await else {
                return error_response(&Status::unavailable("etcdserver: server stopped"));
            };
            let (parts, body) = request.into_parts();
            let frames = grpc_frames::<Req>(body, g.body_max);
            let frames: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>> =
                match ending {
                    Ending::Ends => Box::pin(frames),
                    Ending::StaysOpen => Box::pin(frames.chain(futures::stream::pending())),
                };
            let decoder = tonic_prost::ProstDecoder::<Req>::default();
            let inbound =
                tonic::Streaming::new_request(decoder, Body::from_stream(frames), None, None);
            let request =
                tonic::Request::from_parts(metadata(&parts.headers), parts.extensions, inbound);
            match call(g.clone(), request).await {
                Ok(response) => stream_response(response.into_inner(), permit),
                Err(status) => error_response(&status),
            }
        }
    })
    .options(preflight)
}

/// `OPTIONS`: a CORS preflight, answered with the headers only.
async fn preflight() -> StatusCode {
    StatusCode::OK
}

/// The request body's JSON objects, one after another, as gRPC frames (the
/// form `tonic::Streaming` reads). A malformed object or one over `max` bytes
/// ends the stream with InvalidArgument.
fn grpc_frames<Req>(body: Body, max: usize) -> impl Stream<Item = Result<Bytes, Status>> + Send
where
    Req: DeserializeOwned + prost::Message + Default + Send + 'static,
{
    let state = (body.into_data_stream(), Vec::<u8>::new(), false);
    futures::stream::unfold(state, move |(mut chunks, mut buffer, done)| async move {
        if done {
            return None;
        }
        loop {
            let start = buffer
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(buffer.len());
            buffer.drain(..start);
            if !buffer.is_empty() {
                let mut values = serde_json::Deserializer::from_slice(&buffer).into_iter::<Req>();
                match values.next() {
                    Some(Ok(message)) => {
                        let used = values.byte_offset();
                        buffer.drain(..used);
                        let frame = frame(&message);
                        return Some((Ok(frame), (chunks, buffer, false)));
                    }
                    Some(Err(error)) if !error.is_eof() => {
                        let status = Status::invalid_argument(error.to_string());
                        return Some((Err(status), (chunks, buffer, true)));
                    }
                    _ => {}
                }
            }
            if buffer.len() > max {
                let status = Status::invalid_argument("etcdserver: request is too large");
                return Some((Err(status), (chunks, buffer, true)));
            }
            match chunks.next().await {
                Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                Some(Err(error)) => {
                    let status = Status::invalid_argument(error.to_string());
                    return Some((Err(status), (chunks, buffer, true)));
                }
                None if buffer.is_empty() => return None,
                None => {
                    let status = Status::invalid_argument("unexpected EOF");
                    return Some((Err(status), (chunks, buffer, true)));
                }
            }
        }
    })
}

/// One message as a gRPC frame: no compression, length, bytes.
fn frame(message: &impl prost::Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let length = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(encoded.len() + 5);
    out.push(0);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&encoded);
    Bytes::from(out)
}

/// The request message from the body: empty means every field at its default
/// (grpc-gateway accepts an empty body).
fn decode<Req: DeserializeOwned + Default>(bytes: &[u8]) -> Result<Req, Status> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Req::default());
    }
    serde_json::from_slice(bytes).map_err(|error| Status::invalid_argument(error.to_string()))
}

/// grpc-gateway's metadata from HTTP headers: `Authorization` as the token,
/// `Grpc-Metadata-X` as `x`.
fn metadata(headers: &HeaderMap) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for (name, value) in headers {
        let key = if name == header::AUTHORIZATION {
            "authorization"
        } else if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            key
        } else {
            continue;
        };
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_bytes()),
        ) {
            metadata.append(key, value);
        }
    }
    metadata
}

fn json_response(status: StatusCode, message: &impl Serialize) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap_or_default(),
        Err(error) => error_response(&Status::internal(error.to_string())),
    }
}

/// grpc-gateway's error body, fields in its order.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    code: i32,
}

/// An error answer: grpc-gateway's HTTP status for the code and its body.
pub fn error_response(status: &Status) -> Response {
    let body = ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let http = http_status(status.code());
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    Response::builder()
        .status(http)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(bytes))
        .unwrap_or_default()
}

/// A mid-stream error chunk (grpc-gateway's `StreamError`).
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
    details: [(); 0],
}

#[derive(Serialize)]
enum Chunk<'a, T> {
    #[serde(rename = "result")]
    Result(&'a T),
    #[serde(rename = "error")]
    Error(StreamError<'a>),
}

/// A streamed answer: one `{"result":…}` line per message, an `{"error":…}`
/// line for a failure (which ends it). The call's permit is held until the
/// stream ends or the client leaves.
fn stream_response<Resp, S>(stream: S, permit: tokio::sync::OwnedSemaphorePermit) -> Response
where
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let lines = stream
        .scan(false, |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            let line = match item {
                Ok(message) => serde_json::to_vec(&Chunk::Result(&message)),
                Err(status) => {
                    *ended = true;
                    let http = http_status(status.code());
                    serde_json::to_vec(&Chunk::<Resp>::Error(StreamError {
                        grpc_code: status.code() as i32,
                        http_code: http.as_u16(),
                        message: status.message(),
                        http_status: http.canonical_reason().unwrap_or(""),
                        details: [],
                    }))
                }
            };
            let mut line = line.unwrap_or_default();
            line.push(b'\n');
            futures::future::ready(Some(Ok::<_, Infallible>(Bytes::from(line))))
        })
        .map(move |line| {
            let _held = &permit;
            line
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(lines))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainstay_proto::etcdserverpb as pb;

    #[test]
    fn json_is_etcds_gateway_json() {
        let response = pb::PutResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 10276657743932975437,
                revision: 2,
                raft_term: 2,
            }),
            prev_kv: None,
        };
        assert_eq!(
            serde_json::to_string(&response).expect("json"),
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"2","raft_term":"2"}}"#
        );
        // Numbers or strings for 64-bit integers, proto or camelCase names,
        // base64 bytes, enum names or numbers, unknown fields ignored.
        let request: pb::WatchRequest = serde_json::from_str(
            r#"{"create_request" : {"key":"Zm9v","start_revision":1,"filters":["NOPUT"],"prevKv":true,"whatever":3}}"#,
        )
        .expect("watch request");
        let Some(pb::watch_request::RequestUnion::CreateRequest(create)) = request.request_union
        else {
            panic!("not a create: {request:?}");
        };
        assert_eq!(create.key, b"foo");
        assert_eq!(create.start_revision, 1);
        assert!(create.prev_kv);
        assert_eq!(
            create.filters,
            vec![pb::watch_create_request::FilterType::Noput as i32]
        );
        let grant: pb::LeaseGrantRequest =
            serde_json::from_str(r#"{"ID":"7","TTL":20}"#).expect("grant");
        assert_eq!((grant.id, grant.ttl), (7, 20));
        let compare: pb::Compare =
            serde_json::from_str(r#"{"result":0,"target":1,"key":"Zm9v"}"#).expect("compare");
        assert_eq!(compare.target, pb::compare::CompareTarget::Create as i32);
    }

    #[test]
    fn errors_have_grpc_gateways_shape() {
        let response = error_response(&Status::unknown("\"leader\" field must be provided"));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn request_bodies_split_into_messages_anywhere() {
        let text = r#"{"create_request":{"key":"YQ=="}} {"cancel_request":{"watch_id":"3"}}"#;
        for cut in 0..text.len() {
            let chunks = vec![
                Ok::<_, Infallible>(Bytes::copy_from_slice(&text.as_bytes()[..cut])),
                Ok(Bytes::copy_from_slice(&text.as_bytes()[cut..])),
            ];
            let body = Body::from_stream(futures::stream::iter(chunks));
            let frames: Vec<_> = grpc_frames::<pb::WatchRequest>(body, 1024).collect().await;
            assert_eq!(frames.len(), 2, "cut at {cut}: {frames:?}");
            assert!(frames.iter().all(Result::is_ok), "cut at {cut}");
        }
        let body = Body::from(r#"{"create_request":"#);
        let frames: Vec<_> = grpc_frames::<pb::WatchRequest>(body, 1024).collect().await;
        assert!(matches!(frames.as_slice(), [Err(_)]), "{frames:?}");
    }
}
