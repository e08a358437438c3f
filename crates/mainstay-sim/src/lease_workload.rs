//! Simulated lease clients and the lease checks.
//!
//! A lease client grants a short lease, attaches two keys to it in one txn,
//! keeps it alive for a few rounds, then lets it go, reading the two keys all
//! along (linearizable reads) through random members. Only lease expiry or a
//! revoke deletes those keys, and no client revokes, so the history decides:
//!
//! - **never early**: a lease acknowledged alive by a grant or keep-alive
//!   invoked at `t` (the leader received it no earlier) cannot have lost its
//!   keys before `t + TTL`; a read that returned before that and saw them gone,
//!   or a keep-alive answered with TTL 0, is a violation (so is a lease seen
//!   alive after its keys were seen gone);
//! - **atomic**: the two keys go in one revision, so no read sees one of them;
//! - **eventually**: after the faults heal, every lease is gone within its TTL
//!   plus a few expiry ticks (`check_final`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::lease_client::LeaseClient;
use mainstay_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    request_op,
};

use crate::rng::Rng;
use crate::workload::{REQUEST_TIMEOUT, now_micros};

/// What one lease client saw of one lease.
#[derive(Clone, Debug, Default)]
pub struct LeaseTrack {
    /// The lease id.
    pub id: i64,
    /// Key prefix of its two keys.
    pub prefix: Vec<u8>,
    /// Granted TTL in microseconds.
    pub ttl_micros: u64,
    /// When the txn attaching both keys returned successfully.
    pub attached: Option<u64>,
    /// Invocation times of grants and keep-alives answered with a live lease.
    pub alive_since: Vec<u64>,
    /// What reads and keep-alives saw.
    pub observations: Vec<Observation>,
    /// Invocation of the last keep-alive attempt, answered or not.
    pub last_attempt: u64,
}

/// One read of the lease's keys, or one keep-alive that found the lease gone.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    /// Simulated microseconds at invocation.
    pub invoked: u64,
    /// Simulated microseconds at the answer.
    pub returned: u64,
    /// What it saw.
    pub seen: Seen,
}

/// What an observation saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A linearizable read found this many of the two keys.
    Keys(usize),
    /// A keep-alive was answered with TTL 0: the lease is gone.
    LeaseGone,
}

/// Longest TTL a lease client asks for (the shortest is etcd's minimum, 2 s).
pub const LEASE_TTL_MAX_SECONDS: u64 = 4;

/// Every lease the clients granted.
pub type Leases = Arc<Mutex<Vec<LeaseTrack>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Counts the keys under `prefix` with a linearizable read; None if it failed.
pub async fn count_keys(
    kv: &mut KvClient<tonic::transport::Channel>,
    prefix: &[u8],
) -> Option<usize> {
    let request = RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        ..Default::default()
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, kv.range(request)).await {
        Ok(Ok(reply)) => Some(reply.into_inner().kvs.len()),
        _ => None,
    }
}

/// One keep-alive over a fresh stream; the TTL answered, None if no answer.
pub(crate) async fn keep_alive(
    client: &mut LeaseClient<tonic::transport::Channel>,
    id: i64,
) -> Option<i64> {
    let exchange = async {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        sender.send(LeaseKeepAliveRequest { id }).await.ok()?;
        let mut replies = client
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .ok()?
            .into_inner();
        let reply = replies.message().await.ok()??;
        drop(sender);
        Some(reply.ttl)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.ok()?
}

/// Runs one lease client until `stop_micros` of simulated time.
pub async fn lease_client(
    id: u64,
    members: Vec<String>,
    seed: u64,
    stop_micros: u64,
    leases: Leases,
) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    let mut kvs = Vec::new();
    let mut lessors = Vec::new();
    for member in &members {
        let channel = crate::net::channel(&format!("http://{member}:2379"))?;
        kvs.push(KvClient::new(channel.clone()));
        lessors.push(LeaseClient::new(channel));
    }
    let mut counter = 0u64;
    while now_micros() < stop_micros {
        counter += 1;
        let ttl = rng.between(2, LEASE_TTL_MAX_SECONDS + 1) as i64;
        let target = rng.below(members.len() as u64) as usize;
        let invoked = now_micros();
        let grant = tokio::time::timeout(
            REQUEST_TIMEOUT,
            lessors[target].lease_grant(LeaseGrantRequest { ttl, id: 0 }),
        )
        .await;
        let Ok(Ok(granted)) = grant else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let granted = granted.into_inner();
        let position = {
            let mut all = lock(&leases);
            all.push(LeaseTrack {
                id: granted.id,
                prefix: format!("lease/{id}/{counter}/").into_bytes(),
                ttl_micros: u64::try_from(granted.ttl).unwrap_or(0) * 1_000_000,
                attached: None,
                alive_since: vec![invoked],
                observations: Vec::new(),
                last_attempt: invoked,
            });
            all.len() - 1
        };
        let prefix = format!("lease/{id}/{counter}/").into_bytes();
        let put = |suffix: &str| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: [prefix.as_slice(), suffix.as_bytes()].concat(),
                value: b"v".to_vec().into(),
                lease: granted.id,
                ..Default::default()
            })),
        };
        let attach = TxnRequest {
            compare: Vec::new(),
            success: vec![put("a"), put("b")],
            failure: Vec::new(),
        };
        let target = rng.below(members.len() as u64) as usize;
        if let Ok(Ok(_)) = tokio::time::timeout(REQUEST_TIMEOUT, kvs[target].txn(attach)).await {
            lock(&leases)[position].attached = Some(now_micros());
        }
        // Keep it alive for a few rounds, then let it go and watch it expire.
        let rounds = rng.below(5);
        let period = Duration::from_millis(granted.ttl.unsigned_abs() * 1000 / 3);
        let watch_until = |last: u64| last + (granted.ttl.unsigned_abs() + 2) * 1_000_000;
        for round in 0..rounds + 4 {
            tokio::time::sleep(period).await;
            if round < rounds {
                let target = rng.below(members.len() as u64) as usize;
                let invoked = now_micros();
                lock(&leases)[position].last_attempt = invoked;
                if let Some(ttl) = keep_alive(&mut lessors[target], granted.id).await {
                    let returned = now_micros();
                    let mut all = lock(&leases);
                    if ttl > 0 {
                        all[position].alive_since.push(invoked);
                    } else {
                        all[position].observations.push(Observation {
                            invoked,
                            returned,
                            seen: Seen::LeaseGone,
                        });
                    }
                }
            }
            let target = rng.below(members.len() as u64) as usize;
            let invoked = now_micros();
            if let Some(count) = count_keys(&mut kvs[target], &prefix).await {
                let returned = now_micros();
                lock(&leases)[position].observations.push(Observation {
                    invoked,
                    returned,
                    seen: Seen::Keys(count),
                });
            }
            let last = lock(&leases)[position].last_attempt;
            if now_micros() > watch_until(last) || now_micros() >= stop_micros {
                break;
            }
        }
    }
    Ok(())
}

/// Checks every lease's history (never early, atomic).
pub fn check(leases: &[LeaseTrack]) -> Vec<String> {
    let mut violations = Vec::new();
    for lease in leases {
        for observation in &lease.observations {
            let Observation {
                invoked, returned, ..
            } = *observation;
            let gone = match observation.seen {
                Seen::Keys(count) if count != 0 && count != 2 => {
                    violations.push(format!(
                        "lease {:x}: a read [{invoked} .. {returned}] µs saw {count} of its 2 keys (a revoke deletes both in one revision)",
                        lease.id
                    ));
                    false
                }
                // Keys seen gone after they were attached: only a revoke deletes them.
                Seen::Keys(count) => count == 0 && lease.attached.is_some_and(|at| at <= invoked),
                Seen::LeaseGone => true,
            };
            if !gone {
                continue;
            }
            if let Some(alive) = lease
                .alive_since
                .iter()
                .find(|&&alive| alive + lease.ttl_micros > returned)
            {
                violations.push(format!(
                    "lease {:x} (TTL {} s): seen gone at [{invoked} .. {returned}] µs, but a grant or keep-alive invoked at {alive} µs was answered alive, so it had until {} µs",
                    lease.id,
                    lease.ttl_micros / 1_000_000,
                    alive + lease.ttl_micros
                ));
            }
        }
    }
    violations
}
