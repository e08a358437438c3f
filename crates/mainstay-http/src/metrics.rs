//! `/metrics`: the member's registry in Prometheus's text format, with the
//! gauges that mirror state set first.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mainstay_api::Api;

/// The route.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(api)
}

async fn metrics(State(api): State<Api>) -> Response {
    api.replica.refresh_metrics();
    let metrics = api.replica.metrics();
    let server = &metrics.server;
    server
        .quota_backend_bytes
        .set(i64::try_from(api.limits.quota_backend_bytes).unwrap_or(i64::MAX));
    server
        .proposals_pending
        .set(i64::try_from(api.admission.in_flight()).unwrap_or(i64::MAX));
    (
        [(header::CONTENT_TYPE, mainstay_metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}
