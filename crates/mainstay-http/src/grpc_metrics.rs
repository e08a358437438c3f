//! `grpc_server_started_total` and `grpc_server_handled_total` (the names and
//! labels of go-grpc-prometheus, which etcd's dashboards read): a layer over
//! the client router. A call is counted as started when it arrives and as
//! handled with its status code once its `grpc-status` is known (in the
//! headers of a trailers-only answer, else in the trailers); a call whose
//! client leaves first is `Canceled`, as grpc-go reports it. The bytes of a
//! gRPC call's body each way go to `etcd_network_client_grpc_{sent,received}_bytes_total`
//! (framed messages: 5 bytes per message more than etcd's message sizes).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{Request, Response, header};
use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use mainstay_metrics::CounterHandle as Counter;
use mainstay_metrics::{SharedMetrics, StaticLabels};

/// The layer.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    metrics: SharedMetrics,
}

impl GrpcMetricsLayer {
    /// Counts into `metrics`.
    pub fn new(metrics: SharedMetrics) -> Self {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service the layer wraps.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: SharedMetrics,
}

/// The methods Mainstay serves, by service: go-grpc-prometheus counts calls of
/// registered methods only, and a fixed table keeps a client sending made-up
/// paths from adding label sets without end (and recording allocates nothing).
const METHODS: &[(&str, &[&str])] = &[
    (
        "etcdserverpb.KV",
        &["Range", "Put", "DeleteRange", "Txn", "Compact"],
    ),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
    (
        "v3electionpb.Election",
        &["Campaign", "Proclaim", "Leader", "Observe", "Resign"],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
];

/// go-grpc-prometheus's labels for a gRPC path (`/etcdserverpb.KV/Range`);
/// `None` for a method Mainstay does not serve.
fn call_labels(path: &str) -> Option<StaticLabels<3>> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let &(service, methods) = METHODS.iter().find(|(name, _)| *name == service)?;
    let method: &'static str = methods.iter().find(|name| **name == method)?;
    let kind = match (service, method) {
        ("etcdserverpb.Watch", "Watch") | (_, "LeaseKeepAlive") => "bidi_stream",
        (_, "Snapshot" | "Observe") | ("grpc.health.v1.Health", "Watch") => "server_stream",
        _ => "unary",
    };
    Some([
        ("grpc_type", kind),
        ("grpc_service", service),
        ("grpc_method", method),
    ])
}

/// grpc-go's name of a status code.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

fn status_of(headers: &axum::http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// A call not yet counted as handled; counted `Canceled` if dropped so.
struct Pending {
    metrics: SharedMetrics,
    labels: Option<StaticLabels<3>>,
}

impl Pending {
    fn handled(&mut self, code: i32) {
        if let Some([kind, service, method]) = self.labels.take() {
            let labels = [kind, service, method, ("grpc_code", code_name(code))];
            self.metrics.grpc.handled.get_or_create(&labels).inc();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.handled(1);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call as handled at its trailers, and
    /// its bytes.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        pending: Pending,
        bytes: Option<Counter>,
    }
}

pin_project_lite::pin_project! {
    /// A request body whose bytes are counted.
    struct ReceivedBody<B> {
        #[pin]
        inner: B,
        bytes: Counter,
    }
}

impl<B: Body> Body for ReceivedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.bytes.inc_by(data.remaining() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_of) {
                    this.pending.handled(code);
                }
                if let (Some(bytes), Some(data)) = (this.bytes.as_ref(), frame.data_ref()) {
                    bytes.inc_by(data.remaining() as u64);
                }
            }
            // Ended without a status: grpc-go's clients read that as Unknown.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.pending.handled(2),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<S, ResBody> tower::Service<Request<tonic::body::Body>> for GrpcMetrics<S>
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let grpc = request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let labels = grpc.then(|| call_labels(request.uri().path())).flatten();
        if let Some(labels) = &labels {
            self.metrics.grpc.started.get_or_create(labels).inc();
        }
        let mut pending = Pending {
            metrics: self.metrics.clone(),
            labels,
        };
        let network = &self.metrics.network;
        let request = if grpc {
            let bytes = network.client_grpc_received_bytes.clone();
            request.map(|inner| tonic::body::Body::new(ReceivedBody { inner, bytes }))
        } else {
            request
        };
        let bytes = grpc.then(|| network.client_grpc_sent_bytes.clone());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            if let Some(code) = status_of(response.headers()) {
                pending.handled(code);
            }
            Ok(response.map(|inner| CountedBody {
                inner,
                pending,
                bytes,
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_service_method_and_type() {
        let table = [
            (
                "/etcdserverpb.KV/Range",
                Some(("unary", "etcdserverpb.KV", "Range")),
            ),
            (
                "/etcdserverpb.Watch/Watch",
                Some(("bidi_stream", "etcdserverpb.Watch", "Watch")),
            ),
            (
                "/etcdserverpb.Lease/LeaseKeepAlive",
                Some(("bidi_stream", "etcdserverpb.Lease", "LeaseKeepAlive")),
            ),
            (
                "/etcdserverpb.Maintenance/Snapshot",
                Some(("server_stream", "etcdserverpb.Maintenance", "Snapshot")),
            ),
            (
                "/grpc.health.v1.Health/Watch",
                Some(("server_stream", "grpc.health.v1.Health", "Watch")),
            ),
            (
                "/v3lockpb.Lock/Unlock",
                Some(("unary", "v3lockpb.Lock", "Unlock")),
            ),
            // Not served: not counted, whatever a client sends.
            ("/etcdserverpb.KV/Made-up", None),
            ("/made.up.Service/Range", None),
            ("/health", None),
            ("", None),
        ];
        for (path, want) in table {
            let got = call_labels(path);
            let want = want.map(|(kind, service, method)| {
                [
                    ("grpc_type", kind),
                    ("grpc_service", service),
                    ("grpc_method", method),
                ]
            });
            assert_eq!(got, want, "{path}");
        }
        assert_eq!(code_name(1), "Canceled");
        assert_eq!(code_name(16), "Unauthenticated");
        assert_eq!(code_name(99), "Unknown");
    }
}
