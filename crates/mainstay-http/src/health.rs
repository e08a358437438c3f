//! `/health`, `/livez`, `/readyz` (with `?exclude=`, `?verbose`, per-check
//! paths) and `/version`, as etcd 3.6 answers them. Each handler gathers the
//! checks' outcomes; `checks.rs` decides.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mainstay_api::{Api, ETCD_VERSION, replica_status};
use serde::Serialize;

use crate::checks::{AlarmKind, PeerSight, apply_latency, disk_latency, peer_reachable};
use crate::checks::{HealthInputs, Probe, health_verdict, probe_answer};

/// The routes, over the member's API.
pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/livez/{check}", get(livez_one))
        .route("/readyz", get(readyz))
        .route("/readyz/{check}", get(readyz_one))
        .route("/version", get(version))
        .with_state(api)
}

/// The query's values for `name`, and whether `name` appears at all.
fn query_values(query: Option<&str>, name: &str) -> (Vec<String>, bool) {
    let mut values = Vec::new();
    let mut present = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            present = true;
            values.extend(value.split(',').filter(|v| !v.is_empty()).map(String::from));
        }
    }
    (values, present)
}

/// The kinds of the raised alarms, cluster-wide.
fn active_alarms(api: &Api) -> Vec<AlarmKind> {
    api.replica
        .read(|space| space.alarms().iter().map(|alarm| alarm.kind).collect())
}

/// How long a health read may take: etcd's request timeout, 5 s plus two
/// election timeouts.
fn read_timeout(api: &Api) -> Duration {
    Duration::from_secs(5) + 2 * api.replica.election_timeout()
}

/// A linearizable read's barrier, in etcd's words on failure.
async fn linearizable_read(api: &Api) -> Result<(), String> {
    match tokio::time::timeout(read_timeout(api), api.replica.read_barrier()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(replica_status(&error).message().to_string()),
        Err(_) => Err("etcdserver: request timed out".to_string()),
    }
}

/// A serializable read of the local keyspace (it hangs, as etcd's does, if
/// the state machine is stuck).
fn serializable_read(api: &Api) -> Result<(), String> {
    api.replica.read(|space| space.revision());
    Ok(())
}

#[derive(Serialize)]
struct HealthBody {
    health: &'static str,
    reason: String,
}

async fn health(State(api): State<Api>, RawQuery(query): RawQuery) -> Response {
    let (exclude, _) = query_values(query.as_deref(), "exclude");
    let (serializable, _) = query_values(query.as_deref(), "serializable");
    let serializable = serializable.iter().any(|v| v == "true");
    let exclude: BTreeSet<String> = exclude.into_iter().collect();
    let alarms = active_alarms(&api);
    let has_leader = api.replica.has_live_leader(api.replica.election_timeout());
    // The read runs only when the checks before it pass (etcd's order).
    let early = health_verdict(
        &HealthInputs {
            alarms: alarms.clone(),
            has_leader,
            range: Ok(()),
        },
        &exclude,
        serializable,
    );
    let range = if !early.healthy {
        Ok(())
    } else if serializable {
        serializable_read(&api)
    } else {
        linearizable_read(&api).await
    };
    let verdict = health_verdict(
        &HealthInputs {
            alarms,
            has_leader,
            range,
        },
        &exclude,
        serializable,
    );
    let server = &api.replica.metrics().server;
    if verdict.healthy {
        server.health_success.inc();
    } else {
        server.health_failures.inc();
        tracing::warn!(reason = %verdict.reason, "/health error");
    }
    let status = if verdict.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = HealthBody {
        health: if verdict.healthy { "true" } else { "false" },
        reason: verdict.reason,
    };
    (status, axum::Json(body)).into_response()
}

/// Runs one named check.
async fn run_check(api: &Api, name: &str) -> Result<(), String> {
    match name {
        "data_corruption" => {
            if active_alarms(api).contains(&AlarmKind::Corrupt) {
                Err("alarm activated: CORRUPT".to_string())
            } else {
                Ok(())
            }
        }
        "serializable_read" => serializable_read(api),
        "linearizable_read" => linearizable_read(api).await,
        "non_learner" => {
            if api.replica.status().is_learner {
                Err("etcdserver: rpc not supported for learner".to_string())
            } else {
                Ok(())
            }
        }
        "peer_reachable" => {
            let replica = &api.replica;
            let voters: Vec<u64> = replica
                .members()
                .into_iter()
                .filter(|(_, _, learner)| !learner)
                .map(|(id, _, _)| id)
                .collect();
            let peers: Vec<PeerSight> = replica
                .peer_views()
                .into_iter()
                .map(|(view, _)| PeerSight {
                    id: view.id,
                    since_contact: view.since_contact,
                    phi: view.phi,
                })
                .collect();
            let within = replica.election_timeout();
            peer_reachable(
                replica.is_leader(),
                replica.has_live_leader(within),
                &voters,
                replica.member_id(),
                &peers,
                within,
            )
        }
        "disk_latency" => disk_latency(api.replica.metrics().own.last_slow_fsync.last()),
        "apply_latency" => {
            let (committed, applied) = api.replica.commit_and_apply_indexes();
            apply_latency(
                api.replica.metrics().own.last_slow_apply.last(),
                committed,
                applied,
            )
        }
        other => Err(format!("unknown check {other}")),
    }
}

async fn probe(api: &Api, probe: Probe, only: Option<&str>, query: Option<&str>) -> Response {
    let (exclude, _) = query_values(query, "exclude");
    let (_, verbose) = query_values(query, "verbose");
    let known: BTreeSet<&str> = probe.checks().iter().copied().collect();
    for name in &exclude {
        if !known.contains(name.as_str()) {
            tracing::warn!(check = %name, "cannot exclude an unknown check");
        }
    }
    let names: Vec<&str> = match only {
        Some(name) if known.contains(name) => vec![name],
        Some(_) => return (StatusCode::NOT_FOUND, "404 page not found\n").into_response(),
        None => probe.checks().to_vec(),
    };
    let exclude: BTreeSet<String> = exclude.into_iter().collect();
    let mut outcomes = Vec::new();
    for name in names {
        let outcome = if exclude.contains(name) {
            Ok(())
        } else {
            run_check(api, name).await
        };
        outcomes.push((name, outcome));
    }
    let answer = probe_answer(&outcomes, &exclude, verbose, probe);
    if answer.status != 200 {
        tracing::error!(body = %answer.body.trim_end(), "health check failed");
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        answer.body,
    )
        .into_response()
}

async fn livez(State(api): State<Api>, RawQuery(query): RawQuery) -> Response {
    probe(&api, Probe::Live, None, query.as_deref()).await
}

async fn livez_one(
    State(api): State<Api>,
    Path(check): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    probe(&api, Probe::Live, Some(&check), query.as_deref()).await
}

async fn readyz(State(api): State<Api>, RawQuery(query): RawQuery) -> Response {
    probe(&api, Probe::Ready, None, query.as_deref()).await
}

async fn readyz_one(
    State(api): State<Api>,
    Path(check): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    probe(&api, Probe::Ready, Some(&check), query.as_deref()).await
}

#[derive(Serialize)]
struct VersionBody {
    etcdserver: &'static str,
    etcdcluster: &'static str,
    storage: &'static str,
}

async fn version() -> Response {
    axum::Json(VersionBody {
        etcdserver: ETCD_VERSION,
        etcdcluster: ETCD_VERSION,
        storage: ETCD_VERSION,
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_repeat_and_flag() {
        let (values, present) =
            query_values(Some("exclude=NOSPACE&exclude=CORRUPT&verbose"), "exclude");
        assert_eq!(values, vec!["NOSPACE", "CORRUPT"]);
        assert!(present);
        assert_eq!(query_values(Some("verbose"), "verbose"), (vec![], true));
        assert_eq!(query_values(None, "verbose"), (vec![], false));
        assert_eq!(
            query_values(Some("serializable=true"), "serializable").0,
            vec!["true"]
        );
    }
}
