//! `/dashboard`: the whole cluster on one page, served by every member. The
//! page (compiled in: no CDN, works without network access) asks each member
//! for `/dashboard/api/member` (this member's view, with `Access-Control-
//! Allow-Origin: *` so a page from one member can read the others) and draws
//! roles, terms, applied indexes and lag, db size against quota, alarms,
//! slow disk or apply, the round-trip matrix, leader changes in the last hour
//! and a banner that says how many more failures the cluster survives.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use mainstay_api::{Api, ETCD_VERSION};
use serde_json::{Value, json};

const PAGE: &str = include_str!("../assets/dashboard.html");

/// The routes.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/", get(page))
        .route("/dashboard/api/member", get(member))
        .with_state(api)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

fn slow(last: Option<(Duration, Duration)>) -> Value {
    match last {
        Some((ago, took)) => json!({
            "ago_s": ago.as_secs(),
            "took_ms": took.as_millis() as u64,
        }),
        None => Value::Null,
    }
}

/// This member's view of itself and its peers.
pub fn member_view(api: &Api) -> Value {
    let replica = &api.replica;
    let status = replica.status();
    let metrics = replica.metrics();
    let own_id = replica.member_id();
    let members: Vec<Value> = replica
        .members()
        .into_iter()
        .map(|(id, node, learner)| {
            json!({
                "id": hex(id),
                "name": node.name,
                "client_urls": node.client_urls,
                "learner": learner,
            })
        })
        .collect();
    let name = replica
        .members()
        .into_iter()
        .find(|(id, _, _)| *id == own_id)
        .map(|(_, node, _)| node.name)
        .unwrap_or_default();
    let peers: Vec<Value> = replica
        .peer_views()
        .into_iter()
        .map(|(view, matched)| {
            json!({
                "id": hex(view.id),
                "since_contact_ms": view.since_contact.map(|d| d.as_millis() as u64),
                "rtt_ms": view.rtt_smoothed.map(|d| d.as_secs_f64() * 1000.0),
                "phi": view.phi,
                "failures": view.failures,
                "matched": matched,
            })
        })
        .collect();
    let alarms: Vec<Value> = replica
        .read(|space| space.alarms().clone())
        .iter()
        .map(|alarm| json!({"member": hex(alarm.member), "alarm": alarm.kind.name()}))
        .collect();
    json!({
        "id": hex(own_id),
        "name": name,
        "version": ETCD_VERSION,
        "role": replica.role(),
        "leader": status.leader.map(hex),
        "term": status.term,
        "committed": status.committed_index,
        "applied": status.applied_index,
        "db_bytes": status.db_bytes,
        "quota_bytes": api.limits.quota_backend_bytes,
        "alarms": alarms,
        "leader_changes_last_hour": metrics.own.leader_changes.within(Duration::from_secs(3600)),
        "slow_fsync": slow(metrics.own.last_slow_fsync.last()),
        "slow_apply": slow(metrics.own.last_slow_apply.last()),
        "members": members,
        "peers": peers,
    })
}

async fn member(State(api): State<Api>) -> Response {
    (
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::Json(member_view(&api)),
    )
        .into_response()
}
