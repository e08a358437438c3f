//! The auth workload (`--auth` runs): permissions that change while users read
//! and write, with faults, and the check that no answer contradicts them.
//!
//! Before anything else, one operator (as nobody, auth still off) creates
//! `root` and a user `u` whose role `r` may read and write half of the keys
//! `p0..p{KEYS}`, and turns auth on. Then it flips one key's permission at a
//! time (revoke it from `r`, or grant it back), each until a definite answer
//! (a revoke that finds nothing to revoke already happened). Users log in as
//! `u` and put or read (linearizable) random keys, logging in again whenever a
//! member does not know their token (members forget tokens when they restart).
//!
//! For each key, between one change's answer and the next change's request
//! the permission is known. The check: no request that lived entirely inside
//! a window where its key was forbidden succeeded, and none that lived
//! entirely inside a window where it was granted was refused with `permission
//! denied`. The self-test (`--break-auth`: reads skip the permission check)
//! must be caught.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_proto::authpb;
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::auth_client::AuthClient;
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::rng::Rng;
use crate::workload::{REQUEST_TIMEOUT, now_micros};

/// Keys whose permission changes.
pub const KEYS: u64 = 6;
/// Users reading and writing them.
pub const USERS: u64 = 3;

/// One permission change, from its first request to its definite answer.
#[derive(Clone, Debug)]
pub struct Change {
    /// The key.
    pub key: u64,
    /// Granted (true) or revoked.
    pub granted: bool,
    /// First request, simulated microseconds.
    pub invoked: u64,
    /// The definite answer.
    pub returned: u64,
}

/// One user request and how it ended.
#[derive(Clone, Debug)]
pub struct Access {
    /// The key.
    pub key: u64,
    /// A put (else a read).
    pub write: bool,
    /// Simulated microseconds at invocation and answer.
    pub invoked: u64,
    /// See `invoked`.
    pub returned: u64,
    /// Served (true) or refused with `permission denied` (false).
    pub served: bool,
}

/// What the auth workload saw.
#[derive(Debug, Default)]
pub struct AuthLog {
    /// When auth was on and the initial permissions in force (the enable's answer).
    pub enabled_at: Option<u64>,
    /// Keys granted at enable.
    pub initial: Vec<bool>,
    /// Changes in order (one operator, one at a time).
    pub changes: Vec<Change>,
    /// Served or denied user requests.
    pub accesses: Vec<Access>,
    /// Whether the operator turned auth off at the end.
    pub disabled: bool,
}

/// The shared log.
pub type SharedAuthLog = Arc<Mutex<AuthLog>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn key_name(key: u64) -> Vec<u8> {
    format!("p{key}").into_bytes()
}

fn with<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token
        && let Ok(value) = token.parse()
    {
        request.metadata_mut().insert("token", value);
    }
    request
}

/// Retries `call` against random members until it gives an answer that
/// `done` accepts (simulated time bounds it: the run ends).
async fn until<T, F, Fut>(channels: &[Channel], rng: &mut Rng, mut call: F) -> T
where
    F: FnMut(Channel) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    loop {
        let channel = channels[rng.below(channels.len() as u64) as usize].clone();
        if let Ok(Some(answer)) = tokio::time::timeout(REQUEST_TIMEOUT, call(channel)).await {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn login(channels: &[Channel], rng: &mut Rng, user: &str) -> String {
    until(channels, rng, |channel| async move {
        AuthClient::new(channel)
            .authenticate(pb::AuthenticateRequest {
                name: user.into(),
                password: format!("{user}-pw"),
            })
            .await
            .ok()
            .map(|r| r.into_inner().token)
    })
    .await
}

/// Done, or already so: the answers that make a setup step definite.
fn settled(result: Result<(), Status>, already: &str) -> Option<()> {
    match result {
        Ok(()) => Some(()),
        Err(status) if status.message() == already => Some(()),
        Err(_) => None,
    }
}

fn grant(key: u64) -> pb::AuthRoleGrantPermissionRequest {
    pb::AuthRoleGrantPermissionRequest {
        name: "r".into(),
        perm: Some(authpb::Permission {
            perm_type: authpb::permission::Type::Readwrite as i32,
            key: key_name(key),
            range_end: Vec::new(),
        }),
    }
}

/// Sets up users and roles, turns auth on, then changes permissions until
/// `stop_micros`.
pub async fn operator(
    members: Vec<String>,
    seed: u64,
    stop_micros: u64,
    log: SharedAuthLog,
) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    let channels = crate::net::per_member(&members, |c| c)?;
    let exists = "etcdserver: user name already exists";
    for user in ["root", "u"] {
        until(&channels, &mut rng, |c| async move {
            let added = AuthClient::new(c)
                .user_add(pb::AuthUserAddRequest {
                    name: user.into(),
                    password: format!("{user}-pw"),
                    ..Default::default()
                })
                .await
                .map(drop);
            settled(added, exists)
        })
        .await;
    }
    until(&channels, &mut rng, |c| async move {
        let added = AuthClient::new(c)
            .role_add(pb::AuthRoleAddRequest { name: "r".into() })
            .await
            .map(drop);
        settled(added, "etcdserver: role name already exists")
    })
    .await;
    let initial: Vec<bool> = (0..KEYS).map(|key| key % 2 == 0).collect();
    for key in (0..KEYS).filter(|k| initial[*k as usize]) {
        until(&channels, &mut rng, |c| async move {
            AuthClient::new(c)
                .role_grant_permission(grant(key))
                .await
                .ok()
                .map(drop)
        })
        .await;
    }
    for (user, role) in [("root", "root"), ("u", "r")] {
        until(&channels, &mut rng, |c| async move {
            AuthClient::new(c)
                .user_grant_role(pb::AuthUserGrantRoleRequest {
                    user: user.into(),
                    role: role.into(),
                })
                .await
                .ok()
                .map(drop)
        })
        .await;
    }
    until(&channels, &mut rng, |c| async move {
        AuthClient::new(c)
            .auth_enable(pb::AuthEnableRequest {})
            .await
            .ok()
            .map(drop)
    })
    .await;
    {
        let mut log = lock(&log);
        log.enabled_at = Some(now_micros());
        log.initial = initial.clone();
    }
    let mut granted = initial;
    let mut token = login(&channels, &mut rng, "root").await;
    while now_micros() < stop_micros {
        tokio::time::sleep(Duration::from_millis(rng.between(50, 300))).await;
        let key = rng.below(KEYS);
        let grant_it = !granted[key as usize];
        let invoked = now_micros();
        loop {
            let channel = channels[rng.below(channels.len() as u64) as usize].clone();
            let mut auth = AuthClient::new(channel);
            let answer = if grant_it {
                tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    auth.role_grant_permission(with(grant(key), Some(&token))),
                )
                .await
                .map(|r| r.map(drop))
            } else {
                let revoke = pb::AuthRoleRevokePermissionRequest {
                    role: "r".into(),
                    key: key_name(key),
                    range_end: Vec::new(),
                };
                tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    auth.role_revoke_permission(with(revoke, Some(&token))),
                )
                .await
                .map(|r| r.map(drop))
            };
            match answer {
                Ok(Ok(())) => break,
                Ok(Err(status))
                    if status.message() == "etcdserver: permission is not granted to the role" =>
                {
                    break;
                }
                Ok(Err(status)) if status.code() == Code::Unauthenticated => {
                    token = login(&channels, &mut rng, "root").await;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        granted[key as usize] = grant_it;
        lock(&log).changes.push(Change {
            key,
            granted: grant_it,
            invoked,
            returned: now_micros(),
        });
    }
    Ok(())
}

/// After the run (the faults healed): root turns auth off, for the checks
/// that follow (they run without users).
pub async fn turn_off(members: Vec<String>, seed: u64, log: SharedAuthLog) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    let channels = crate::net::per_member(&members, |c| c)?;
    let mut token = login(&channels, &mut rng, "root").await;
    loop {
        let channel = channels[rng.below(channels.len() as u64) as usize].clone();
        let answer = tokio::time::timeout(
            REQUEST_TIMEOUT,
            AuthClient::new(channel).auth_disable(with(pb::AuthDisableRequest {}, Some(&token))),
        )
        .await;
        match answer {
            Ok(Ok(_)) => break,
            Ok(Err(status)) if status.code() == Code::Unauthenticated => {
                token = login(&channels, &mut rng, "root").await;
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    lock(&log).disabled = true;
    Ok(())
}

/// A user reading and writing random keys until `stop_micros`.
pub async fn user(
    id: u64,
    members: Vec<String>,
    seed: u64,
    stop_micros: u64,
    log: SharedAuthLog,
) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    let channels = crate::net::per_member(&members, |c| c)?;
    while lock(&log).enabled_at.is_none() {
        if now_micros() >= stop_micros {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut token = login(&channels, &mut rng, "u").await;
    let mut counter = 0u64;
    while now_micros() < stop_micros {
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        counter += 1;
        let key = rng.below(KEYS);
        let write = rng.chance(50);
        let mut kv = KvClient::new(channels[rng.below(channels.len() as u64) as usize].clone());
        let invoked = now_micros();
        let answer = if write {
            let put = pb::PutRequest {
                key: key_name(key),
                value: format!("u{id}-{counter}").into_bytes().into(),
                ..Default::default()
            };
            tokio::time::timeout(REQUEST_TIMEOUT, kv.put(with(put, Some(&token))))
                .await
                .map(|r| r.map(drop))
        } else {
            let range = pb::RangeRequest {
                key: key_name(key),
                ..Default::default()
            };
            tokio::time::timeout(REQUEST_TIMEOUT, kv.range(with(range, Some(&token))))
                .await
                .map(|r| r.map(drop))
        };
        let served = match answer {
            Ok(Ok(())) => true,
            Ok(Err(status)) if status.code() == Code::PermissionDenied => false,
            Ok(Err(status)) if status.code() == Code::Unauthenticated => {
                token = login(&channels, &mut rng, "u").await;
                continue;
            }
            _ => continue,
        };
        lock(&log).accesses.push(Access {
            key,
            write,
            invoked,
            returned: now_micros(),
            served,
        });
    }
    Ok(())
}

/// The check described in the module docs.
pub fn check(log: &AuthLog) -> Vec<String> {
    let Some(enabled_at) = log.enabled_at else {
        return Vec::new();
    };
    // Per key: windows (from, to, granted) where the permission is known.
    let mut windows: BTreeMap<u64, Vec<(u64, u64, bool)>> = BTreeMap::new();
    for key in 0..KEYS {
        let mut from = enabled_at;
        let mut state = log.initial.get(key as usize).copied().unwrap_or(false);
        let mut list = Vec::new();
        for change in log.changes.iter().filter(|c| c.key == key) {
            list.push((from, change.invoked, state));
            from = change.returned;
            state = change.granted;
        }
        list.push((from, u64::MAX, state));
        windows.insert(key, list);
    }
    let mut violations = Vec::new();
    for access in &log.accesses {
        let Some(list) = windows.get(&access.key) else {
            continue;
        };
        let inside = list
            .iter()
            .find(|(from, to, _)| *from <= access.invoked && access.returned <= *to);
        if let Some((from, to, granted)) = inside
            && *granted != access.served
        {
            violations.push(format!(
                "auth: a {} of p{} from {} to {} µs was {} while the key was {} from {from} to {to} µs",
                if access.write { "put" } else { "read" },
                access.key,
                access.invoked,
                access.returned,
                if access.served { "served" } else { "refused" },
                if *granted { "granted" } else { "forbidden" },
            ));
        }
    }
    if !log.disabled {
        violations.push("auth: auth could not be turned off after healing".into());
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_catches_served_forbidden_and_refused_granted_requests() {
        // Goal: windows between changes decide; overlapping a change decides nothing.
        let access = |key, invoked, returned, served| Access {
            key,
            write: false,
            invoked,
            returned,
            served,
        };
        let log = AuthLog {
            enabled_at: Some(100),
            initial: vec![true; KEYS as usize],
            changes: vec![Change {
                key: 0,
                granted: false,
                invoked: 200,
                returned: 300,
            }],
            accesses: vec![
                access(0, 110, 190, true),
                access(0, 150, 250, true),
                access(0, 250, 350, false),
                access(0, 310, 400, false),
                access(1, 310, 400, true),
            ],
            disabled: true,
        };
        assert!(check(&log).is_empty(), "{:?}", check(&log));
        let bad = AuthLog {
            accesses: vec![access(0, 310, 400, true), access(1, 120, 130, false)],
            ..log
        };
        assert_eq!(check(&bad).len(), 2, "{:?}", check(&bad));
    }
}
