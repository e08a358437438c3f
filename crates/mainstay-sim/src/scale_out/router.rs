//! The router in the simulated clients (docs/design/scale-out.md §4.3–4.5):
//! puts go to the leader of the key's group; a linearizable read takes
//! `R` from the sequencer, waits until the stable revision `S ≥ R`, and reads
//! each group it covers at `R`; a watch merges the groups' streams and emits
//! revision `r` only once `S ≥ r`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_check::{Input, Operation, Outcome, Output};
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use mainstay_proto::etcdserverpb::watch_client::WatchClient;
use mainstay_proto::etcdserverpb::{RangeRequest, WatchCreateRequest, WatchRequest, watch_request};
use tonic::transport::Channel;

use super::checks::{Found, SnapshotRead, WatchLog};
use super::scheme::{Breaks, Layout, decode_value};
use super::wire::{self, Line};
use super::{leader, sequencer};
use crate::rng::Rng;
use crate::workload::{History, now_micros};

/// What a client records besides the history.
#[derive(Default)]
pub(crate) struct Logs {
    /// Every read with the revision it was served at.
    pub(crate) reads: Mutex<Vec<SnapshotRead>>,
    /// Every watcher's merged stream.
    pub(crate) watches: Mutex<Vec<WatchLog>>,
    /// Latency of each acknowledged put and read, in simulated µs.
    pub(crate) put_micros: Mutex<Vec<u64>>,
    pub(crate) read_micros: Mutex<Vec<u64>>,
}

pub(crate) type SharedLogs = Arc<Logs>;

/// Latencies count from the second second: the first holds the elections
/// and the sequencer's first ceiling.
pub(crate) const WARM_UP_MICROS: u64 = 1_000_000;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the sequencer says of revisions.
struct Stable {
    /// R: the newest revision handed out.
    newest: i64,
    /// S: every revision up to it is applied or void.
    stable: i64,
    /// The highest revision each group has applied.
    applied: Vec<i64>,
}

/// Asks the sequencer; None while it cannot say.
async fn stable(link: &mut Option<Line>) -> Option<Stable> {
    if link.is_none() {
        *link = Line::connect("seq", sequencer::PORT).await.ok();
    }
    let line = link.as_mut()?;
    match line.call("stable").await {
        Ok(answer) => {
            let mut words = answer
                .strip_prefix("ok ")?
                .split_whitespace()
                .map(|w| w.parse::<i64>().ok());
            Some(Stable {
                newest: words.next()??,
                stable: words.next()??,
                applied: words.collect::<Option<Vec<i64>>>()?,
            })
        }
        Err(_) => {
            *link = None;
            None
        }
    }
}

/// The revision a read is served at: `R` once `S ≥ R` (or at once under the
/// broken variant), within the request deadline.
async fn read_revision(link: &mut Option<Line>, breaks: Breaks) -> Option<i64> {
    let deadline = tokio::time::Instant::now() + wire::TIMEOUT;
    let mut wanted = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(now) = stable(link).await {
            let wanted = *wanted.get_or_insert(now.newest);
            if now.stable >= wanted || breaks.no_stable_wait {
                return Some(wanted);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// One group's members for reads.
pub(crate) struct GroupReader {
    members: Vec<KvClient<Channel>>,
    next: usize,
}

impl GroupReader {
    pub(crate) fn new(members: &[String]) -> Result<GroupReader, String> {
        Ok(GroupReader {
            members: crate::net::per_member(members, KvClient::new)?,
            next: 0,
        })
    }

    async fn range(&mut self, request: RangeRequest) -> Option<Vec<(Vec<u8>, Vec<u8>, i64)>> {
        // The last member that answered, the next one after a failure.
        let kv = &mut self.members[self.next];
        match tokio::time::timeout(wire::ATTEMPT, kv.range(request)).await {
            Ok(Ok(reply)) => Some(
                reply
                    .into_inner()
                    .kvs
                    .into_iter()
                    .map(|kv| (kv.key, kv.value.to_vec(), kv.mod_revision))
                    .collect(),
            ),
            _ => {
                self.next = (self.next + 1) % self.members.len();
                None
            }
        }
    }

    /// `key` as of global revision `at` (None = absent then), from its
    /// `latest` stored value and local revision, walking back
    /// through the group's own history past records written after `at`; under
    /// the no-oracle variant, the latest.
    async fn read_at(
        &mut self,
        key: &[u8],
        latest: Option<(Vec<u8>, i64)>,
        at: Option<i64>,
    ) -> Option<Found> {
        let (mut value, mut local) = match latest {
            Some(found) => found,
            None => return Some(None),
        };
        loop {
            let Some((revision, user_value)) = decode_value(&value) else {
                return Some(None);
            };
            if at.is_none_or(|at| revision <= at) {
                return Some(Some((user_value, revision)));
            }
            if local <= 1 {
                return Some(None);
            }
            let request = RangeRequest {
                key: key.to_vec(),
                revision: local - 1,
                ..Default::default()
            };
            let older = self.range(request).await?;
            match older.into_iter().next() {
                Some((_, older_value, older_local)) => {
                    value = older_value;
                    local = older_local;
                }
                None => return Some(None),
            }
        }
    }

    /// Every user key of `[key, range_end)` in this group as of `at`.
    async fn read_range_at(
        &mut self,
        key: &[u8],
        range_end: &[u8],
        at: Option<i64>,
    ) -> Option<Vec<(Vec<u8>, Found)>> {
        let request = RangeRequest {
            key: key.to_vec(),
            range_end: range_end.to_vec(),
            ..Default::default()
        };
        let latest = self.range(request).await?;
        let mut out = Vec::new();
        for (k, value, local) in latest {
            let seen = self.read_at(&k, Some((value, local)), at).await?;
            out.push((k, seen));
        }
        Some(out)
    }
}

/// What a client is given.
pub(crate) struct ClientSetup {
    pub(crate) id: u64,
    pub(crate) layout: Arc<Layout>,
    pub(crate) seed: u64,
    pub(crate) stop_micros: u64,
    pub(crate) history: History,
    pub(crate) logs: SharedLogs,
    pub(crate) breaks: Breaks,
    /// Puts only, back to back (the throughput runs).
    pub(crate) puts_only: bool,
    /// Some reads cover every key (not in throughput runs, whose thousands
    /// of keys would make such a read the measure).
    pub(crate) whole_reads: bool,
}

/// Runs one client until `stop_micros`.
pub(crate) async fn client(setup: ClientSetup) -> turmoil::Result {
    let ClientSetup {
        id,
        layout,
        seed,
        stop_micros,
        history,
        logs,
        breaks,
        puts_only,
        whole_reads,
    } = setup;
    let mut rng = Rng::new(seed);
    let mut leaders: Vec<Option<Line>> = (0..layout.groups()).map(|_| None).collect();
    let mut readers = Vec::new();
    for members in &layout.members {
        readers.push(GroupReader::new(members)?);
    }
    let mut sequencer: Option<Line> = None;
    let mut counter = 0u64;
    let mut epoch = 0u64;
    while now_micros() < stop_micros {
        counter += 1;
        let key_index = rng.below(layout.keys);
        let key = layout.key(key_index);
        let group = layout.group_of(key_index);
        let choice = if puts_only { 0 } else { rng.below(100) };
        let invoked = now_micros();
        if choice < 50 {
            let value = format!("c{id}-{counter}");
            let request = format!("put {} {value}", String::from_utf8_lossy(&key));
            let link = &mut leaders[group as usize];
            if link.is_none() {
                *link = Line::connect(&layout.leader(group), leader::PORT)
                    .await
                    .ok();
            }
            let answer = match link.as_mut() {
                Some(line) => line.call(&request).await.ok(),
                None => Some("failed".to_string()),
            };
            let outcome = match answer.as_deref() {
                Some("failed") => Outcome::Failed,
                Some(text) => match text.strip_prefix("ok ").and_then(|r| r.parse().ok()) {
                    Some(revision) => Outcome::Ok(Output::Put { revision }),
                    None => Outcome::Unknown,
                },
                None => Outcome::Unknown,
            };
            if matches!(outcome, Outcome::Unknown) {
                *link = None;
            }
            if link.is_none() {
                // No leader to talk to (starting, crashed, cut off): back off.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let returned = now_micros();
            if matches!(outcome, Outcome::Ok(_)) && invoked >= WARM_UP_MICROS {
                lock(&logs.put_micros).push(returned - invoked);
            }
            let unknown = matches!(outcome, Outcome::Unknown);
            lock(&history).push(Operation {
                client: id * 1000 + epoch,
                input: Input::Put {
                    key,
                    value: value.into_bytes(),
                },
                invoked,
                returned,
                outcome,
            });
            if unknown {
                epoch += 1;
            }
        } else {
            // A read of one key (90 %) or of every key across the groups.
            let whole = whole_reads && choice >= 90;
            let at = if breaks.no_oracle {
                None
            } else {
                match read_revision(&mut sequencer, breaks).await {
                    Some(at) => Some(at),
                    None => continue,
                }
            };
            let mut seen = Vec::new();
            let mut complete = true;
            for (g, reader) in readers.iter_mut().enumerate() {
                if !whole && g as u64 != group {
                    continue;
                }
                let (start, end) = if whole {
                    layout.range_of(g as u64)
                } else {
                    let mut end = key.clone();
                    end.push(0);
                    (key.clone(), end)
                };
                match reader.read_range_at(&start, &end, at).await {
                    Some(found) => seen.extend(found),
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            if !complete {
                continue;
            }
            let returned = now_micros();
            if invoked >= WARM_UP_MICROS {
                lock(&logs.read_micros).push(returned - invoked);
            }
            // A key a read found nothing for is absent at R.
            let mut keys: BTreeMap<Vec<u8>, Found> = BTreeMap::new();
            if whole {
                for index in 0..layout.keys {
                    keys.insert(layout.key(index), None);
                }
            } else {
                keys.insert(key.clone(), None);
            }
            for (k, value) in seen {
                if let Some(slot) = keys.get_mut(&k) {
                    *slot = value;
                }
            }
            let header_revision = at.unwrap_or_else(|| {
                keys.values()
                    .filter_map(|v| v.as_ref().map(|(_, r)| *r))
                    .max()
                    .unwrap_or(0)
            });
            if !whole {
                lock(&history).push(Operation {
                    client: id * 1000 + epoch,
                    input: Input::Get { key: key.clone() },
                    invoked,
                    returned,
                    outcome: Outcome::Ok(Output::Get {
                        value: keys.get(&key).cloned().flatten(),
                        header_revision,
                    }),
                });
            }
            lock(&logs.reads).push(SnapshotRead {
                client: id,
                revision: header_revision,
                keys: keys.into_iter().collect(),
            });
        }
        if !puts_only {
            tokio::time::sleep(Duration::from_millis(rng.below(20))).await;
        }
    }
    Ok(())
}

/// What a group's stream tells the merger.
enum Feed {
    /// A put of a user key at a global revision.
    Put(i64, Vec<u8>, Vec<u8>),
    /// The group's stream has delivered every write up to this revision (the
    /// block key, written last in each batch's Txn, came by).
    Delivered(u64, i64),
}

/// Runs several clients as tasks of one host.
pub(crate) async fn clients(setups: Vec<ClientSetup>) -> turmoil::Result {
    let tasks: Vec<_> = setups
        .into_iter()
        .map(|setup| {
            tokio::spawn(async move {
                // A client's only error is a member URL it cannot parse.
                client(setup).await.map_err(|e| e.to_string())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Follows one group's whole keyspace from its first revision, reconnecting
/// to another member (from the next revision) when a stream ends: the puts of
/// its user keys, and its block key as the mark of what was delivered.
async fn follow_group(
    group: u64,
    members: Vec<String>,
    users: (Vec<u8>, Vec<u8>),
    feed: tokio::sync::mpsc::Sender<Feed>,
) -> Result<(), String> {
    let mut clients = crate::net::per_member(&members, WatchClient::new)?;
    let mut next_local = 1i64;
    let mut at = 0usize;
    loop {
        at = (at + 1) % clients.len();
        let client = &mut clients[at];
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: vec![0],
                    range_end: vec![0],
                    start_revision: next_local,
                    ..Default::default()
                },
            )),
        };
        if sender.send(create).await.is_err() {
            return Ok(());
        }
        let opened = tokio::time::timeout(
            wire::TIMEOUT,
            client.watch(tokio_stream::wrappers::ReceiverStream::new(receiver)),
        )
        .await;
        if let Ok(Ok(stream)) = opened {
            let mut stream = stream.into_inner();
            while let Ok(Some(response)) = stream.message().await {
                if response.canceled {
                    break;
                }
                // The block mark goes after every put of the response: the
                // events of one revision come in one response, in the order
                // of the Txn's operations (the mark is written last), but a
                // merger should not depend on that order.
                let mut delivered = None;
                for event in response.events {
                    let Some(kv) = event.kv else { continue };
                    next_local = next_local.max(kv.mod_revision + 1);
                    if kv.key == leader::BLOCK_KEY {
                        let text = String::from_utf8_lossy(&kv.value).into_owned();
                        if let Some(end) = text
                            .split_once(' ')
                            .and_then(|(_, end)| end.parse::<i64>().ok())
                        {
                            delivered = Some(end - 1);
                        }
                    } else if kv.key >= users.0
                        && kv.key < users.1
                        && let Some((revision, value)) = decode_value(&kv.value)
                        && feed.send(Feed::Put(revision, kv.key, value)).await.is_err()
                    {
                        return Ok(());
                    }
                }
                if let Some(high) = delivered
                    && feed.send(Feed::Delivered(group, high)).await.is_err()
                {
                    return Ok(());
                }
            }
        }
        drop(sender);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A watcher of every user key across the groups, from the stable revision
/// it finds at its start + 1, until `stop_micros`. It emits revision `r` once
/// `S ≥ r` (every block up to `r` is applied or void) and every group's
/// stream has delivered what that group applied up to `r`.
pub(crate) async fn watcher(
    layout: Arc<Layout>,
    seed: u64,
    stop_micros: u64,
    logs: SharedLogs,
    breaks: Breaks,
) -> turmoil::Result {
    let mut rng = Rng::new(seed);
    tokio::time::sleep(Duration::from_millis(rng.below(2000))).await;
    let mut link = None;
    let from = loop {
        if let Some(now) = stable(&mut link).await {
            break now.stable + 1;
        }
        if now_micros() >= stop_micros {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (feed, mut events) = tokio::sync::mpsc::channel(1024);
    let mut followers = Vec::new();
    for group in 0..layout.groups() {
        let members = layout.members[group as usize].clone();
        let users = layout.range_of(group);
        followers.push(tokio::spawn(follow_group(
            group,
            members,
            users,
            feed.clone(),
        )));
    }
    drop(feed);
    let mut delivered = vec![0i64; layout.groups() as usize];
    let mut buffered: BTreeMap<i64, (Vec<u8>, Vec<u8>)> = BTreeMap::new();
    let mut emitted: Vec<(i64, Vec<u8>, Vec<u8>)> = Vec::new();
    while now_micros() < stop_micros {
        tokio::select! {
            event = events.recv() => match event {
                Some(Feed::Put(revision, key, value)) => {
                    if revision >= from {
                        buffered.insert(revision, (key, value));
                    }
                }
                Some(Feed::Delivered(group, high)) => {
                    if let Some(slot) = delivered.get_mut(group as usize) {
                        *slot = (*slot).max(high);
                    }
                }
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        if buffered.is_empty() {
            continue;
        }
        let ready = |revision: i64, now: &Stable| {
            now.stable >= revision
                && (breaks.watch_on_stable_only
                    || delivered
                        .iter()
                        .zip(&now.applied)
                        .all(|(delivered, applied)| *delivered >= revision.min(*applied)))
        };
        let now = if breaks.no_stable_wait || breaks.no_oracle {
            None
        } else {
            match stable(&mut link).await {
                Some(now) => Some(now),
                None => continue,
            }
        };
        while let Some(entry) = buffered.first_entry() {
            if now.as_ref().is_some_and(|now| !ready(*entry.key(), now)) {
                break;
            }
            let (revision, (key, value)) = entry.remove_entry();
            emitted.push((revision, key, value));
        }
    }
    for follower in followers {
        follower.abort();
    }
    lock(&logs.watches).push(WatchLog {
        from,
        events: emitted,
    });
    Ok(())
}

/// After the workload (faults healed): every group's leader takes a put, and
/// the stable revision reaches the newest revision handed out. Sets `live`.
pub(crate) async fn prober(
    layout: Arc<Layout>,
    stop_micros: u64,
    breaks: Breaks,
    live: Arc<Mutex<Option<Result<(), String>>>>,
) -> turmoil::Result {
    tokio::time::sleep(Duration::from_micros(stop_micros)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut missing = Vec::new();
    for group in 0..layout.groups() {
        let request = format!("put k{group:02}-probe live");
        let mut done = false;
        while !done && tokio::time::Instant::now() < deadline {
            if let Ok(mut line) = Line::connect(&layout.leader(group), leader::PORT).await
                && let Ok(answer) = line.call(&request).await
            {
                done = answer.starts_with("ok ");
            }
            if !done {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if !done {
            missing.push(group);
        }
    }
    let verdict = if !missing.is_empty() {
        Err(format!(
            "groups {missing:?} took no put within 60 s of the heal"
        ))
    } else if breaks.no_oracle {
        Ok(())
    } else {
        let mut link = None;
        let mut caught_up = false;
        while !caught_up && tokio::time::Instant::now() < deadline {
            caught_up = stable(&mut link)
                .await
                .is_some_and(|now| now.stable == now.newest);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if caught_up {
            Ok(())
        } else {
            Err("the stable revision did not reach the newest within 60 s".to_string())
        }
    };
    *lock(&live) = Some(verdict);
    Ok(())
}
