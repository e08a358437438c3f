//! Simulated lock clients (etcd's `v3lockpb.Lock` service) and the lock checks
//! against the committed history R.
//!
//! A lock client grants a short lease, locks the shared name `lock0` with it
//! through a random member (giving up after a deadline, which cancels the
//! RPC), keeps the lease alive or not, and while it holds the lock writes a
//! fencing key in a txn guarded by its own lock key's existence. Then it
//! unlocks, revokes the lease, or walks away and lets the lease expire.
//!
//! The lock is the first-created live key under `lock0/`, so R decides:
//!
//! - **L1 mutual exclusion**: at the header revision of every Lock answer the
//!   returned key is live in R and no live key under the prefix was created
//!   before it; every fenced write that succeeded was made (at its revision in
//!   R) while the writer's key was live and first, and is in R with its value;
//!   a refused one was made while the writer's key was gone;
//! - **L2 no lock on a dead lease**: the returned key is attached to the
//!   caller's lease; a key deleted at or before the answer's revision (its lease
//!   expired or was revoked) is reported as such;
//! - **L3 eventually** (after healing, no lease kept alive): no key is left
//!   under `lock0/` (`simulation::locks_released`), and none is live at R's end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_mvcc::{EventKind, KeyValue, Revision};
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::lease_client::LeaseClient;
use mainstay_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RequestOp, TxnRequest, compare,
    request_op,
};
use mainstay_proto::v3lockpb::lock_client::LockClient;
use mainstay_proto::v3lockpb::{LockRequest, UnlockRequest};

use crate::lease_workload::{LEASE_TTL_MAX_SECONDS, keep_alive};
use crate::rng::Rng;
use crate::watch_workload::Committed;
use crate::workload::{REQUEST_TIMEOUT, now_micros};

/// Lock clients per run.
pub const LOCK_CLIENTS: u64 = 2;

/// The one lock every client contends for.
pub const LOCK_NAME: &[u8] = b"lock0";

/// The queue's prefix: `lock0/`.
pub const LOCK_PREFIX: &[u8] = b"lock0/";

/// The key holders write while they hold the lock.
pub const FENCE_KEY: &[u8] = b"lockfence";

/// Longest a client waits for the lock before it gives up (cancelling the RPC).
const PATIENCE_MS_MAX: u64 = 8000;

/// A Lock answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The key the answer names.
    pub key: Vec<u8>,
    /// The answer header's revision (None: the answer had no header).
    pub revision: Option<Revision>,
}

/// One fenced write's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fenced {
    /// Simulated microseconds at invocation.
    pub invoked: u64,
    /// The value written to the fence key.
    pub value: Vec<u8>,
    /// The txn's header revision.
    pub revision: Revision,
    /// Whether the guard held (the fence key was written).
    pub succeeded: bool,
}

/// One attempt of one client: a lease, a Lock, what it did while holding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockAttempt {
    /// The client.
    pub client: u64,
    /// The caller's lease.
    pub lease: i64,
    /// Simulated microseconds when Lock was invoked.
    pub invoked: u64,
    /// Simulated microseconds when Lock returned (or was given up).
    pub returned: u64,
    /// The answer; None if Lock failed or was given up.
    pub held: Option<Held>,
    /// Fenced writes answered while holding.
    pub fenced: Vec<Fenced>,
}

/// Every lock attempt of every client.
pub type LockAttempts = Arc<Mutex<Vec<LockAttempt>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps `lease` alive through random members until dropped.
pub(crate) async fn renew_forever(
    lessors: &mut [LeaseClient<tonic::transport::Channel>],
    rng: &mut Rng,
    lease: i64,
    period: Duration,
) {
    loop {
        tokio::time::sleep(period).await;
        let target = rng.below(lessors.len() as u64) as usize;
        let _ = keep_alive(&mut lessors[target], lease).await;
    }
}

/// Revokes `lease` through a random member (the outcome does not matter).
pub(crate) async fn revoke_somewhere(
    rng: &mut Rng,
    lessors: &mut [LeaseClient<tonic::transport::Channel>],
    lease: i64,
) {
    let target = rng.below(lessors.len() as u64) as usize;
    let revoke = lessors[target].lease_revoke(LeaseRevokeRequest { id: lease });
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, revoke).await;
}

/// Between two rounds of holding a lock or leading: a pause, then a keep-alive
/// through a random member if the lease is being kept.
pub(crate) async fn between_rounds(
    rng: &mut Rng,
    lessors: &mut [LeaseClient<tonic::transport::Channel>],
    lease: i64,
    period: Duration,
    keep: bool,
) {
    tokio::time::sleep(Duration::from_millis(
        rng.between(50, period.as_millis() as u64 + 100),
    ))
    .await;
    if keep {
        let target = rng.below(lessors.len() as u64) as usize;
        let _ = keep_alive(&mut lessors[target], lease).await;
    }
}

/// The fencing txn: write `value` to the fence key only while `own_key` exists.
fn fenced_write(own_key: &[u8], value: &[u8]) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Version as i32,
            key: own_key.to_vec(),
            range_end: Vec::new(),
            target_union: Some(compare::TargetUnion::Version(0)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: FENCE_KEY.to_vec(),
                value: value.to_vec().into(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    }
}

/// Runs one lock client until `stop_micros` of simulated time.
pub async fn lock_client(
    id: u64,
    members: Vec<String>,
    seed: u64,
    stop_micros: u64,
    attempts: LockAttempts,
) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    let mut kvs = crate::net::per_member(&members, KvClient::new)?;
    let mut lessors = crate::net::per_member(&members, LeaseClient::new)?;
    let mut lockers = crate::net::per_member(&members, LockClient::new)?;
    let pick = |rng: &mut Rng| rng.below(members.len() as u64) as usize;
    let mut counter = 0u64;
    while now_micros() < stop_micros {
        counter += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        let ttl = rng.between(2, LEASE_TTL_MAX_SECONDS + 1) as i64;
        let target = pick(&mut rng);
        let grant = tokio::time::timeout(
            REQUEST_TIMEOUT,
            lessors[target].lease_grant(LeaseGrantRequest { ttl, id: 0 }),
        )
        .await;
        let Ok(Ok(granted)) = grant else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let lease = granted.into_inner().id;
        let keep = rng.chance(50);
        let period = Duration::from_millis(ttl.unsigned_abs() * 1000 / 3);
        let patience = Duration::from_millis(rng.between(1000, PATIENCE_MS_MAX));
        let target = pick(&mut rng);
        let request = LockRequest {
            name: LOCK_NAME.to_vec(),
            lease,
        };
        let invoked = now_micros();
        let locking = tokio::time::timeout(patience, lockers[target].lock(request));
        let answer = if keep {
            let mut renew_rng = Rng::new(rng.fork());
            tokio::select! {
                answer = locking => Some(answer),
                () = renew_forever(&mut lessors, &mut renew_rng, lease, period) => None,
            }
        } else {
            Some(locking.await)
        };
        let held = match answer {
            Some(Ok(Ok(reply))) => {
                let reply = reply.into_inner();
                Some(Held {
                    key: reply.key,
                    revision: reply.header.map(|h| h.revision),
                })
            }
            _ => None,
        };
        let position = {
            let mut all = lock(&attempts);
            all.push(LockAttempt {
                client: id,
                lease,
                invoked,
                returned: now_micros(),
                held: held.clone(),
                fenced: Vec::new(),
            });
            all.len() - 1
        };
        let Some(held) = held else {
            // Gave up or failed: revoke the lease, or let it expire.
            if rng.chance(50) {
                revoke_somewhere(&mut rng, &mut lessors, lease).await;
            }
            continue;
        };
        // Hold it for a few rounds, writing the fence key each time.
        for round in 0..rng.between(1, 4) {
            between_rounds(&mut rng, &mut lessors, lease, period, keep).await;
            let value = format!("{id}/{counter}/{round}").into_bytes();
            let target = pick(&mut rng);
            let invoked = now_micros();
            let txn = fenced_write(&held.key, &value);
            if let Ok(Ok(reply)) = tokio::time::timeout(REQUEST_TIMEOUT, kvs[target].txn(txn)).await
            {
                let reply = reply.into_inner();
                if let Some(header) = reply.header {
                    lock(&attempts)[position].fenced.push(Fenced {
                        invoked,
                        value,
                        revision: header.revision,
                        succeeded: reply.succeeded,
                    });
                }
            }
            if now_micros() >= stop_micros {
                break;
            }
        }
        // Let go: unlock, revoke the lease, or walk away (it expires).
        let target = pick(&mut rng);
        match rng.below(10) {
            0..7 => {
                let unlock = lockers[target].unlock(UnlockRequest {
                    key: held.key.clone(),
                });
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, unlock).await;
            }
            7..9 => {
                let revoke = lessors[target].lease_revoke(LeaseRevokeRequest { id: lease });
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, revoke).await;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The live keys under `prefix` in R just after `revision`.
pub(crate) fn live_at(
    committed: &Committed,
    prefix: &[u8],
    revision: Revision,
) -> BTreeMap<Vec<u8>, KeyValue> {
    let mut live = BTreeMap::new();
    for (at, event) in committed {
        if *at > revision {
            break;
        }
        if !event.kv.key.starts_with(prefix) {
            continue;
        }
        match event.kind {
            EventKind::Put => {
                live.insert(event.kv.key.clone(), event.kv.clone());
            }
            EventKind::Delete => {
                live.remove(&event.kv.key);
            }
        }
    }
    live
}

/// The last deletion of `key` in R at or before `revision`.
fn deleted_at(committed: &Committed, key: &[u8], revision: Revision) -> Option<Revision> {
    committed
        .iter()
        .take_while(|(at, _)| *at <= revision)
        .filter(|(_, event)| event.kv.key == key && event.kind == EventKind::Delete)
        .map(|(at, _)| *at)
        .last()
}

/// The live key created before `own` under the prefix, if any (the first such).
pub(crate) fn older<'a>(
    live: &'a BTreeMap<Vec<u8>, KeyValue>,
    own: &KeyValue,
) -> Option<&'a KeyValue> {
    live.values()
        .filter(|kv| kv.create_revision < own.create_revision)
        .min_by_key(|kv| kv.create_revision)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the lock checks found, and how often a Lock had to wait for its turn.
#[derive(Debug, Default)]
pub struct LockReport {
    /// Violations of L1–L3.
    pub violations: Vec<String>,
    /// Lock answers whose key was created before the answer's revision with an
    /// older key live then (the answer waited for its turn).
    pub waited: u64,
}

/// Judges every attempt against R (`committed`, complete up to `tip`).
pub fn check(attempts: &[LockAttempt], committed: &Committed, tip: Revision) -> LockReport {
    let mut report = LockReport::default();
    let violations = &mut report.violations;
    let mut fences: BTreeMap<Revision, &[u8]> = BTreeMap::new();
    for (at, event) in committed {
        if event.kv.key == FENCE_KEY && event.kind == EventKind::Put {
            fences.insert(*at, &event.kv.value);
        }
    }
    for attempt in attempts {
        let Some(held) = &attempt.held else {
            continue;
        };
        let who = format!(
            "lock: client {} (lease {:x}, Lock [{} .. {}] µs)",
            attempt.client, attempt.lease, attempt.invoked, attempt.returned
        );
        let key = text(&held.key);
        let Some(revision) = held.revision else {
            violations.push(format!("{who} was answered {key} without a header"));
            continue;
        };
        if !held.key.starts_with(LOCK_PREFIX) {
            violations.push(format!(
                "{who} was answered {key}, a key outside {}",
                text(LOCK_PREFIX)
            ));
            continue;
        }
        if revision > tip {
            violations.push(format!(
                "{who} was answered {key} at revision {revision}, beyond R's last revision {tip}"
            ));
            continue;
        }
        let live = live_at(committed, LOCK_PREFIX, revision);
        let Some(own) = live.get(&held.key) else {
            // L2: a lock granted on a key that is gone (its lease expired or was revoked).
            violations.push(match deleted_at(committed, &held.key, revision) {
                Some(deleted) => format!(
                    "{who} was answered {key} at revision {revision}, but R deleted that key at revision {deleted} (lease expired or revoked)"
                ),
                None => format!(
                    "{who} was answered {key} at revision {revision}, a key R never created by then"
                ),
            });
            continue;
        };
        if own.lease != attempt.lease {
            violations.push(format!(
                "{who} was answered {key}, which R attaches to lease {:x}",
                own.lease
            ));
        }
        // L1: the answer's key is the first-created live key at its revision.
        if let Some(first) = older(&live, own) {
            violations.push(format!(
                "{who} was answered {key} (created at {}) as the holder at revision {revision}, but {} (created at {}) was live then: two holders",
                own.create_revision,
                text(&first.key),
                first.create_revision
            ));
        }
        if live_at(committed, LOCK_PREFIX, own.create_revision)
            .values()
            .any(|kv| kv.create_revision < own.create_revision)
        {
            report.waited += 1;
        }
        for fenced in &attempt.fenced {
            let at = fenced.revision;
            let value = text(&fenced.value);
            if at > tip {
                violations.push(format!(
                    "{who}: fenced write {value} answered at revision {at}, beyond R's last revision {tip}"
                ));
                continue;
            }
            let live = live_at(committed, LOCK_PREFIX, at);
            let own = live
                .get(&held.key)
                .filter(|kv| kv.create_revision == own.create_revision);
            match (fenced.succeeded, own) {
                (true, None) => violations.push(format!(
                    "{who}: fenced write {value} succeeded at revision {at}, but R has no {key} then"
                )),
                (true, Some(own)) => {
                    if let Some(first) = older(&live, own) {
                        violations.push(format!(
                            "{who}: fenced write {value} succeeded at revision {at} while {} (created at {}) was before {key}: two holders",
                            text(&first.key),
                            first.create_revision
                        ));
                    }
                    if fences.get(&at).copied() != Some(fenced.value.as_slice()) {
                        violations.push(format!(
                            "{who}: fenced write {value} was acknowledged at revision {at}, but R has {:?} on {} there",
                            fences.get(&at).map(|v| text(v)),
                            text(FENCE_KEY)
                        ));
                    }
                }
                (false, Some(_)) => violations.push(format!(
                    "{who}: fenced write {value} was refused at revision {at}, but {key} was live then"
                )),
                (false, None) => {}
            }
        }
    }
    // L3: every lease is gone by the end, so no key is left in the queue.
    for kv in live_at(committed, LOCK_PREFIX, tip).values() {
        violations.push(format!(
            "lock: {} (lease {:x}) still live at R's last revision {tip}, after every lease expired",
            text(&kv.key),
            kv.lease
        ));
    }
    report
}
