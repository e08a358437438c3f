//! HTTP/1.1 (and HTTP/2 requests that are not gRPC) on the client port and on
//! `--listen-metrics-urls`: etcd's JSON gateway under `/v3/`, `/health`,
//! `/livez`, `/readyz`, `/version` and `/metrics`; and the gRPC metrics layer. The server merges these routes with the
//! gRPC services into one router, so both share the port, its TLS and its
//! connection limits.

mod checks;
mod codes;
mod dashboard;
mod gateway;
mod grpc_metrics;
mod health;
mod metrics;

pub use checks::{AlarmKind, HealthInputs, HealthVerdict, Probe, health_verdict, probe_answer};
pub use codes::http_status;
pub use dashboard::member_view;
pub use gateway::{Gateway, calls_limit, error_response};
pub use grpc_metrics::GrpcMetricsLayer;

use axum::Router;
use mainstay_api::Api;

/// Everything HTTP on a client URL: the gateway (unless
/// `--enable-grpc-gateway=false`) and the basic endpoints.
pub fn client_routes(api: Api, gateway: Option<Gateway>) -> Router {
    let basic = health::routes(api.clone())
        .merge(metrics::routes(api.clone()))
        .merge(dashboard::routes(api));
    match gateway {
        Some(gateway) => gateway::routes(gateway).merge(basic),
        None => basic,
    }
}

/// What a `--listen-metrics-urls` listener serves.
pub fn metrics_routes(api: Api) -> Router {
    health::routes(api.clone()).merge(metrics::routes(api))
}
