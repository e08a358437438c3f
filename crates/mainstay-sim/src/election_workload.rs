//! Simulated election clients (etcd's `v3electionpb.Election` service) and the
//! election checks against the committed history R.
//!
//! An election client grants a short lease, asks a random member who leads
//! `elect0`, campaigns with the lease (giving up after a deadline), and while
//! it leads proclaims new values and asks who leads; then it resigns, revokes
//! the lease, or walks away. The leader is the first-created live key under
//! `elect0/`, so R decides:
//!
//! - **E1 Leader**: the key-value a Leader answer names is, field for field,
//!   the first-created live key under the prefix at the answer's revision;
//! - **E2 Campaign**: the answer's leader key was created at the answer's `rev`
//!   with the caller's lease and value;
//! - **E3 Proclaim**: a proclamation that succeeded after a Campaign answer is
//!   in R at its revision, and the proclaimer's key was first then (a key
//!   that led once leads until it goes; no older key can appear);
//! - **eventually** (after healing): no key is left under `elect0/`
//!   (`simulation::locks_released`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_mvcc::{EventKind, Revision};
use mainstay_proto::etcdserverpb::LeaseGrantRequest;
use mainstay_proto::etcdserverpb::LeaseRevokeRequest;
use mainstay_proto::etcdserverpb::lease_client::LeaseClient;
use mainstay_proto::mvccpb;
use mainstay_proto::v3electionpb::election_client::ElectionClient;
use mainstay_proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};

use crate::lease_workload::LEASE_TTL_MAX_SECONDS;
use crate::lock_workload::{between_rounds, live_at, older, renew_forever, revoke_somewhere};
use crate::rng::Rng;
use crate::watch_workload::Committed;
use crate::workload::{REQUEST_TIMEOUT, now_micros};

/// Election clients per run.
pub const ELECTION_CLIENTS: u64 = 2;

/// The one election every client runs in.
pub const ELECTION_NAME: &[u8] = b"elect0";

/// The election's prefix: `elect0/`.
pub const ELECTION_PREFIX: &[u8] = b"elect0/";

/// Longest a client campaigns before it gives up (cancelling the RPC).
const PATIENCE_MS_MAX: u64 = 8000;

/// What one election client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A Leader answer: its header revision and the key-value it named.
    Leader {
        /// Header revision (None: no header).
        revision: Option<Revision>,
        /// The leader's key-value (None: no kv in the answer).
        kv: Option<mvccpb::KeyValue>,
    },
    /// A Campaign answer: the caller leads with this key.
    Elected {
        /// The leader key the answer named (None: none in the answer).
        leader: Option<LeaderKey>,
        /// The value campaigned with.
        value: Vec<u8>,
    },
    /// A Proclaim that succeeded after the caller was elected.
    Proclaimed {
        /// The caller's key.
        key: Vec<u8>,
        /// Create revision of the caller's key.
        rev: Revision,
        /// The value proclaimed.
        value: Vec<u8>,
        /// Header revision (None: no header).
        revision: Option<Revision>,
    },
}

/// One observation with its client and times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The client.
    pub client: u64,
    /// Simulated microseconds at invocation.
    pub invoked: u64,
    /// Simulated microseconds at the answer.
    pub returned: u64,
    /// What it saw.
    pub seen: Seen,
}

/// Every observation of every election client.
pub type ElectionLog = Arc<Mutex<Vec<Observation>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Asks who leads; None if no answer (or no leader).
async fn leader_of(client: &mut ElectionClient<tonic::transport::Channel>) -> Option<Seen> {
    let request = LeaderRequest {
        name: ELECTION_NAME.to_vec(),
    };
    let reply = tokio::time::timeout(REQUEST_TIMEOUT, client.leader(request))
        .await
        .ok()?
        .ok()?
        .into_inner();
    Some(Seen::Leader {
        revision: reply.header.map(|h| h.revision),
        kv: reply.kv,
    })
}

/// Runs one election client until `stop_micros` of simulated time.
pub async fn election_client(
    id: u64,
    members: Vec<String>,
    seed: u64,
    stop_micros: u64,
    log: ElectionLog,
) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    let mut lessors = crate::net::per_member(&members, LeaseClient::new)?;
    let mut electors = crate::net::per_member(&members, ElectionClient::new)?;
    let pick = |rng: &mut Rng| rng.below(members.len() as u64) as usize;
    let record = |invoked: u64, seen: Seen| {
        lock(&log).push(Observation {
            client: id,
            invoked,
            returned: now_micros(),
            seen,
        });
    };
    let mut counter = 0u64;
    while now_micros() < stop_micros {
        counter += 1;
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        let target = pick(&mut rng);
        let invoked = now_micros();
        if let Some(seen) = leader_of(&mut electors[target]).await {
            record(invoked, seen);
        }
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
        let value = format!("{id}/{counter}").into_bytes();
        let request = CampaignRequest {
            name: ELECTION_NAME.to_vec(),
            lease,
            value: value.clone(),
        };
        let target = pick(&mut rng);
        let invoked = now_micros();
        let campaigning = tokio::time::timeout(patience, electors[target].campaign(request));
        let answer = if keep {
            let mut renew_rng = Rng::new(rng.fork());
            tokio::select! {
                answer = campaigning => Some(answer),
                () = renew_forever(&mut lessors, &mut renew_rng, lease, period) => None,
            }
        } else {
            Some(campaigning.await)
        };
        let leader = match answer {
            Some(Ok(Ok(reply))) => {
                let leader = reply.into_inner().leader;
                record(
                    invoked,
                    Seen::Elected {
                        leader: leader.clone(),
                        value,
                    },
                );
                leader
            }
            _ => None,
        };
        let Some(leader) = leader else {
            if rng.chance(50) {
                revoke_somewhere(&mut rng, &mut lessors, lease).await;
            }
            continue;
        };
        // Lead for a few rounds: proclaim, and ask who leads.
        for round in 0..rng.between(1, 4) {
            between_rounds(&mut rng, &mut lessors, lease, period, keep).await;
            let value = format!("{id}/{counter}/{round}").into_bytes();
            let request = ProclaimRequest {
                leader: Some(leader.clone()),
                value: value.clone(),
            };
            let target = pick(&mut rng);
            let invoked = now_micros();
            let proclaim = electors[target].proclaim(request);
            if let Ok(Ok(reply)) = tokio::time::timeout(REQUEST_TIMEOUT, proclaim).await {
                let revision = reply.into_inner().header.map(|h| h.revision);
                record(
                    invoked,
                    Seen::Proclaimed {
                        key: leader.key.clone(),
                        rev: leader.rev,
                        value,
                        revision,
                    },
                );
            }
            let target = pick(&mut rng);
            let invoked = now_micros();
            if let Some(seen) = leader_of(&mut electors[target]).await {
                record(invoked, seen);
            }
            if now_micros() >= stop_micros {
                break;
            }
        }
        // Step down: resign, revoke the lease, or walk away (it expires).
        let target = pick(&mut rng);
        match rng.below(10) {
            0..7 => {
                let resign = electors[target].resign(ResignRequest {
                    leader: Some(leader),
                });
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, resign).await;
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Judges every observation against R (`committed`, complete up to `tip`).
pub fn check(log: &[Observation], committed: &Committed, tip: Revision) -> Vec<String> {
    let mut violations = Vec::new();
    let put_at = |revision: Revision, key: &[u8]| {
        committed
            .iter()
            .skip_while(|(at, _)| *at < revision)
            .take_while(|(at, _)| *at == revision)
            .find(|(_, event)| event.kv.key == key && event.kind == EventKind::Put)
            .map(|(_, event)| event.kv.clone())
    };
    for observation in log {
        let who = format!(
            "election: client {} [{} .. {}] µs",
            observation.client, observation.invoked, observation.returned
        );
        let beyond = |revision: Revision| revision > tip;
        match &observation.seen {
            Seen::Leader { revision, kv } => {
                let (Some(revision), Some(kv)) = (*revision, kv) else {
                    violations.push(format!("{who}: a Leader answer without header or kv"));
                    continue;
                };
                if beyond(revision) {
                    violations.push(format!(
                        "{who}: Leader answered at revision {revision}, beyond R's last revision {tip}"
                    ));
                    continue;
                }
                let live = live_at(committed, ELECTION_PREFIX, revision);
                let first = live.values().min_by_key(|kv| kv.create_revision);
                let matches = first.is_some_and(|first| {
                    first.key == kv.key
                        && first.create_revision == kv.create_revision
                        && first.mod_revision == kv.mod_revision
                        && first.version == kv.version
                        && first.value == kv.value
                        && first.lease == kv.lease
                });
                if !matches {
                    violations.push(format!(
                        "{who}: Leader answered {} = {} (created at {}, modified at {}) at revision {revision}, but R's first-created key then is {:?}",
                        text(&kv.key),
                        text(&kv.value),
                        kv.create_revision,
                        kv.mod_revision,
                        first.map(|f| (text(&f.key), text(&f.value), f.create_revision, f.mod_revision))
                    ));
                }
            }
            Seen::Elected { leader, value } => {
                let Some(leader) = leader else {
                    violations.push(format!("{who}: a Campaign answer without a leader key"));
                    continue;
                };
                if beyond(leader.rev) {
                    violations.push(format!(
                        "{who}: elected with {} created at {}, beyond R's last revision {tip}",
                        text(&leader.key),
                        leader.rev
                    ));
                    continue;
                }
                let created = put_at(leader.rev, &leader.key);
                let fits = created.as_ref().is_some_and(|kv| {
                    kv.create_revision == leader.rev
                        && kv.lease == leader.lease
                        && kv.value == *value
                });
                if !fits {
                    violations.push(format!(
                        "{who}: elected with {} (lease {:x}) created at {}, but R has {:?} there",
                        text(&leader.key),
                        leader.lease,
                        leader.rev,
                        created.map(|kv| (kv.create_revision, kv.lease, text(&kv.value)))
                    ));
                }
            }
            Seen::Proclaimed {
                key,
                rev,
                value,
                revision,
            } => {
                let Some(revision) = *revision else {
                    violations.push(format!("{who}: a Proclaim answer without a header"));
                    continue;
                };
                if beyond(revision) {
                    violations.push(format!(
                        "{who}: Proclaim answered at revision {revision}, beyond R's last revision {tip}"
                    ));
                    continue;
                }
                let put = put_at(revision, key);
                if put
                    .as_ref()
                    .is_none_or(|kv| kv.create_revision != *rev || kv.value != *value)
                {
                    violations.push(format!(
                        "{who}: Proclaim of {} on {} was acknowledged at revision {revision}, but R has {:?} there",
                        text(value),
                        text(key),
                        put.map(|kv| (kv.create_revision, text(&kv.value)))
                    ));
                    continue;
                }
                let live = live_at(committed, ELECTION_PREFIX, revision);
                if let Some(own) = live.get(key)
                    && let Some(first) = older(&live, own)
                {
                    violations.push(format!(
                        "{who}: Proclaim of {} on {} succeeded at revision {revision} while {} (created at {}) was before it: two leaders",
                        text(value),
                        text(key),
                        text(&first.key),
                        first.create_revision
                    ));
                }
            }
        }
    }
    violations
}
