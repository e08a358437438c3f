//! Simulated watch clients and the watch checks (W1–W8 of
//! `shared/reference/reliability.md`) against the committed history.
//!
//! A watch client follows *chains*: one key selection (all keys, the KV
//! clients' prefix, or one key; with or without `prev_kv`; sometimes a NOPUT or
//! NODELETE filter) watched through a series of sessions on random members.
//! The first session of a chain starts now (revision 0), at a past revision, or
//! at a future one; every later session resumes where the previous one left
//! off: one past the last event or progress mark it received (W5, W6). Sessions
//! end on their own after a while, when their stream breaks (a crash, a
//! partition), or when the member cancels the watch. During a session the client
//! asks for progress now and then.
//!
//! After the run, R (every event of every revision, read from the members'
//! converged keyspaces and required to be identical on all of them) judges each
//! session: what it delivered must be exactly R, filtered by its selection, from
//! its start to the last revision it vouched for, in R's order, with every
//! field (prev_kv included) equal; each reply carries whole revisions; a
//! progress mark at P comes after every event up to P and before any later one.
//! After healing, every client's chain must catch up to the final revision
//! (`final_session`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mainstay_mvcc::{Event, EventKind, KeyValue, Revision};
use mainstay_proto::etcdserverpb::watch_client::WatchClient;
use mainstay_proto::etcdserverpb::watch_create_request::FilterType;
use mainstay_proto::etcdserverpb::{
    WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse, watch_request,
};
use mainstay_proto::mvccpb;

use crate::rng::Rng;
use crate::workload::{REQUEST_TIMEOUT, now_micros};

/// Watch clients per run.
pub const WATCH_CLIENTS: u64 = 2;

/// What one chain watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// First key.
    pub key: Vec<u8>,
    /// etcd's range end (`[0]` = every key from `key` on; empty = `key` only).
    pub range_end: Vec<u8>,
    /// Whether events carry the previous key-value.
    pub prev_kv: bool,
    /// NOPUT filter.
    pub no_put: bool,
    /// NODELETE filter.
    pub no_delete: bool,
}

impl Selection {
    /// etcd's filter rules written out again on purpose: the checker is the
    /// oracle for the server's `Watcher::wants`, so it must not call it.
    fn wants(&self, event: &Event) -> bool {
        let kind_ok = match event.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_ok && mainstay_mvcc::in_range(&event.kv.key, &self.key, &self.range_end)
    }

    fn describe(&self) -> String {
        let range = if self.range_end.is_empty() {
            format!("key {}", String::from_utf8_lossy(&self.key))
        } else if self.range_end == [0] {
            format!("from {:?}", String::from_utf8_lossy(&self.key))
        } else {
            format!(
                "[{}, {})",
                String::from_utf8_lossy(&self.key),
                String::from_utf8_lossy(&self.range_end)
            )
        };
        let mut flags = Vec::new();
        if self.prev_kv {
            flags.push("prev_kv");
        }
        if self.no_put {
            flags.push("NOPUT");
        }
        if self.no_delete {
            flags.push("NODELETE");
        }
        format!("{range} {}", flags.join(","))
    }
}

/// One reply of a session, as received.
#[derive(Clone, Debug)]
pub enum Reply {
    /// The watch was created; the header's revision.
    Created(i64),
    /// Events (one or more whole revisions).
    Events(Vec<mvccpb::Event>),
    /// A progress mark: everything up to this revision has been sent.
    Progress(i64),
    /// The member cancelled the watch.
    Canceled {
        /// `compact_revision` of the reply.
        compact_revision: i64,
        /// Its reason.
        reason: String,
    },
}

/// One watch stream with one watcher on one member.
#[derive(Clone, Debug)]
pub struct Session {
    /// Which client.
    pub client: u64,
    /// Which chain of that client.
    pub chain: u64,
    /// Member that served it.
    pub member: String,
    /// What it watched.
    pub selection: Selection,
    /// The start revision it asked for (0 = now).
    pub start: i64,
    /// Everything it received, in order.
    pub replies: Vec<Reply>,
    /// Why it ended.
    pub end: String,
}

impl Session {
    /// The first revision it owes: the requested one, or one past the created
    /// header for a watch that starts now.
    fn first_owed(&self) -> Option<i64> {
        if self.start > 0 {
            return Some(self.start);
        }
        self.replies.iter().find_map(|r| match r {
            Reply::Created(revision) => Some(revision + 1),
            _ => None,
        })
    }

    /// The last revision it vouched for: its last event's or progress mark's.
    fn vouched(&self) -> Option<i64> {
        self.replies
            .iter()
            .filter_map(|r| match r {
                Reply::Events(events) => events.last().map(event_revision),
                Reply::Progress(revision) => Some(*revision),
                _ => None,
            })
            .max()
    }
}

/// Every session of every watch client.
pub type Sessions = Arc<Mutex<Vec<Session>>>;

/// Where a client's current chain stands, shared with its final session.
#[derive(Clone, Debug, Default)]
pub struct ChainState {
    /// The chain's number.
    pub chain: u64,
    /// What it watches (None: no chain yet).
    pub selection: Option<Selection>,
    /// The revision the next session starts at (None: not yet known).
    pub next: Option<i64>,
    /// The start revision its first session asks for, until it is known.
    pub first_start: i64,
    /// Highest header revision the client has seen (to aim past and future starts).
    pub highest_seen: i64,
}

/// Per client, its chain.
pub type Chains = Arc<Mutex<Vec<ChainState>>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn event_revision(event: &mvccpb::Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

fn new_selection(rng: &mut Rng, keys: u64) -> Selection {
    let (key, range_end) = match rng.below(3) {
        // Everything: the KV clients' keys, the lease keys and their expiry.
        0 => (vec![0], vec![0]),
        // The KV clients' keys ("k0".."k4").
        1 => (b"k".to_vec(), b"l".to_vec()),
        _ => (format!("k{}", rng.below(keys)).into_bytes(), Vec::new()),
    };
    let filter = rng.below(10);
    Selection {
        key,
        range_end,
        prev_kv: rng.chance(50),
        no_put: filter == 0,
        no_delete: filter == 1,
    }
}

/// Runs one session on `member`; records it. Returns false if the chain must
/// start over (the watch was cancelled).
#[allow(clippy::too_many_arguments)] // one session's whole context; a struct would only rename it
async fn session(
    client: &mut WatchClient<tonic::transport::Channel>,
    id: u64,
    member: &str,
    rng: &mut Rng,
    chains: &Chains,
    sessions: &Sessions,
    until: impl Fn(&ChainState) -> bool,
    length: Duration,
) -> bool {
    let (chain, selection, start) = {
        let all = lock(chains);
        let state = &all[id as usize];
        let Some(selection) = state.selection.clone() else {
            return false;
        };
        (
            state.chain,
            selection,
            state.next.unwrap_or(state.first_start),
        )
    };
    let mut record = Session {
        client: id,
        chain,
        member: member.to_string(),
        selection: selection.clone(),
        start,
        replies: Vec::new(),
        end: String::new(),
    };
    let mut filters = Vec::new();
    if selection.no_put {
        filters.push(FilterType::Noput as i32);
    }
    if selection.no_delete {
        filters.push(FilterType::Nodelete as i32);
    }
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: selection.key.clone(),
                range_end: selection.range_end.clone(),
                start_revision: start,
                prev_kv: selection.prev_kv,
                filters,
                ..Default::default()
            },
        )),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut keep_chain = true;
    if sender.send(create).await.is_err() {
        return true;
    }
    let opened = tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.watch(tokio_stream::wrappers::ReceiverStream::new(receiver)),
    )
    .await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream.into_inner(),
        Ok(Err(status)) => {
            record.end = format!("refused: {}", status.message());
            lock(sessions).push(record);
            return true;
        }
        Err(_) => {
            record.end = "no answer to the watch".into();
            lock(sessions).push(record);
            return true;
        }
    };
    let deadline = tokio::time::Instant::now() + length;
    let mut progress_at =
        tokio::time::Instant::now() + Duration::from_millis(rng.between(100, 800));
    loop {
        if until(&lock(chains)[id as usize]) {
            record.end = "caught up".into();
            break;
        }
        let message = tokio::select! {
            message = stream.message() => message,
            () = tokio::time::sleep_until(deadline) => {
                record.end = "ended by the client".into();
                break;
            }
            () = tokio::time::sleep_until(progress_at) => {
                progress_at = tokio::time::Instant::now()
                    + Duration::from_millis(rng.between(100, 800));
                let request = WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(
                        WatchProgressRequest {},
                    )),
                };
                if sender.send(request).await.is_err() {
                    record.end = "stream closed".into();
                    break;
                }
                continue;
            }
        };
        let response: WatchResponse = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                record.end = "stream ended by the member".into();
                break;
            }
            Err(status) => {
                record.end = format!("stream failed: {}", status.message());
                break;
            }
        };
        let header = response.header.as_ref().map_or(0, |h| h.revision);
        let reply = if response.created {
            if response.canceled {
                Reply::Canceled {
                    compact_revision: response.compact_revision,
                    reason: response.cancel_reason.clone(),
                }
            } else {
                Reply::Created(header)
            }
        } else if response.canceled {
            Reply::Canceled {
                compact_revision: response.compact_revision,
                reason: response.cancel_reason.clone(),
            }
        } else if response.events.is_empty() {
            Reply::Progress(header)
        } else {
            Reply::Events(response.events)
        };
        {
            let mut all = lock(chains);
            let state = &mut all[id as usize];
            state.highest_seen = state.highest_seen.max(header);
            match &reply {
                Reply::Created(revision) if state.next.is_none() => {
                    state.next = Some(revision + 1);
                }
                Reply::Events(events) => {
                    if let Some(last) = events.last() {
                        state.next = Some(event_revision(last) + 1);
                    }
                }
                Reply::Progress(revision) => {
                    // A mark from before the start vouches for nothing new.
                    if let Some(next) = state.next {
                        state.next = Some(next.max(revision + 1));
                    }
                }
                _ => {}
            }
        }
        let canceled = matches!(reply, Reply::Canceled { .. });
        record.replies.push(reply);
        if canceled {
            record.end = "cancelled by the member".into();
            keep_chain = false;
            break;
        }
    }
    drop(sender);
    lock(sessions).push(record);
    keep_chain
}

fn start_chain(rng: &mut Rng, keys: u64, state: &mut ChainState) {
    state.chain += 1;
    state.selection = Some(new_selection(rng, keys));
    state.next = None;
    state.first_start = match rng.below(10) {
        0..=4 => 0,
        5..=7 => rng.between(1, state.highest_seen.max(1) as u64 + 1) as i64,
        _ => state.highest_seen + rng.between(1, 20) as i64,
    };
    if state.first_start > 0 {
        state.next = Some(state.first_start);
    }
}

/// What one watch client works with.
#[derive(Clone)]
pub struct WatchClientSetup {
    /// Which client (index into the chains).
    pub id: u64,
    /// Member host names.
    pub members: Vec<String>,
    /// How many KV keys the KV clients use.
    pub keys: u64,
    /// Its seed.
    pub seed: u64,
    /// Every client's chain.
    pub chains: Chains,
    /// Where sessions are recorded.
    pub sessions: Sessions,
}

/// Runs one watch client until `stop_micros` of simulated time.
pub async fn watch_client(setup: WatchClientSetup, stop_micros: u64) -> turmoil::Result {
    let WatchClientSetup {
        id,
        members,
        keys,
        seed,
        chains,
        sessions,
    } = setup;
    let mut rng = Rng::new(seed);
    let mut clients = crate::net::per_member(&members, WatchClient::new)?;
    while now_micros() < stop_micros {
        {
            let mut all = lock(&chains);
            let state = &mut all[id as usize];
            if state.selection.is_none() || rng.chance(25) {
                start_chain(&mut rng, keys, state);
            }
        }
        let target = rng.below(members.len() as u64) as usize;
        let length = Duration::from_millis(rng.between(200, 3000));
        let keep = session(
            &mut clients[target],
            id,
            &members[target],
            &mut rng,
            &chains,
            &sessions,
            |_| false,
            length,
        )
        .await;
        if !keep {
            lock(&chains)[id as usize].selection = None;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
    }
    Ok(())
}

/// After healing: resumes the client's chain (a fresh one if it has none) on
/// random members until it has been vouched for up to `target`. Sets `done`.
pub async fn final_session(
    setup: WatchClientSetup,
    target: i64,
    done: Arc<Mutex<u64>>,
) -> turmoil::Result {
    let WatchClientSetup {
        id,
        members,
        keys,
        seed,
        chains,
        sessions,
    } = setup;
    let mut rng = Rng::new(seed);
    let mut clients = crate::net::per_member(&members, WatchClient::new)?;
    let caught_up = move |state: &ChainState| state.next.is_some_and(|next| next > target);
    loop {
        {
            let mut all = lock(&chains);
            let state = &mut all[id as usize];
            if caught_up(state) {
                break;
            }
            if state.selection.is_none() {
                start_chain(&mut rng, keys, state);
                // Starting at the target itself is still a catch-up.
                if state.first_start > target {
                    state.first_start = 0;
                    state.next = None;
                }
            }
        }
        let target_member = rng.below(members.len() as u64) as usize;
        let keep = session(
            &mut clients[target_member],
            id,
            &members[target_member],
            &mut rng,
            &chains,
            &sessions,
            caught_up,
            Duration::from_secs(5),
        )
        .await;
        if !keep {
            lock(&chains)[id as usize].selection = None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *lock(&done) += 1;
    Ok(())
}

/// The committed history: every event of every revision, in R's order.
pub type Committed = Vec<(Revision, Event)>;

fn to_wire(kv: &KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.clone(),
        lease: kv.lease,
    }
}

/// R's event as a watcher with `selection` must receive it.
fn expected(selection: &Selection, event: &Event) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match event.kind {
            EventKind::Put => mvccpb::event::EventType::Put as i32,
            EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(to_wire(&event.kv)),
        prev_kv: if selection.prev_kv {
            event.prev_kv.as_ref().map(to_wire)
        } else {
            None
        },
    }
}

fn show(event: &mvccpb::Event) -> String {
    let kind = if event.r#type == mvccpb::event::EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    let kv = event.kv.clone().unwrap_or_default();
    let prev = event.prev_kv.as_ref().map_or("-".to_string(), |p| {
        format!("{}@{}", String::from_utf8_lossy(&p.value), p.mod_revision)
    });
    format!(
        "{kind} {}={} rev {} create {} version {} lease {:x} prev {prev}",
        String::from_utf8_lossy(&kv.key),
        String::from_utf8_lossy(&kv.value),
        kv.mod_revision,
        kv.create_revision,
        kv.version,
        kv.lease
    )
}

/// Judges every session against R (`committed`, up to `last` inclusive);
/// `compacted_max` is the highest compaction any client asked for.
pub fn check(
    sessions: &[Session],
    committed: &Committed,
    last: Revision,
    compacted_max: Revision,
) -> Vec<String> {
    let mut by_revision: BTreeMap<Revision, Vec<&Event>> = BTreeMap::new();
    for (revision, event) in committed {
        by_revision.entry(*revision).or_default().push(event);
    }
    let mut violations = Vec::new();
    for session in sessions {
        let name = format!(
            "watch client {} chain {} on {} ({}, start {})",
            session.client,
            session.chain,
            session.member,
            session.selection.describe(),
            session.start
        );
        if let Some(problem) = check_session(session, &by_revision, last, compacted_max) {
            violations.push(format!("{name}: {problem}"));
        }
    }
    violations
}

/// etcd's reason for a watch cancelled by compaction.
const COMPACTED: &str = "mvcc: required revision has been compacted";

fn check_session(
    session: &Session,
    by_revision: &BTreeMap<Revision, Vec<&Event>>,
    last: Revision,
    compacted_max: Revision,
) -> Option<String> {
    let selection = &session.selection;
    let created = session
        .replies
        .iter()
        .filter(|r| matches!(r, Reply::Created(_)))
        .count();
    if created > 1 {
        return Some("created twice".into());
    }
    let delivered: Vec<&mvccpb::Event> = session
        .replies
        .iter()
        .filter_map(|r| match r {
            Reply::Events(events) => Some(events.iter()),
            _ => None,
        })
        .flatten()
        .collect();
    if delivered.is_empty()
        && !session
            .replies
            .iter()
            .any(|r| matches!(r, Reply::Progress(_) | Reply::Canceled { .. }))
    {
        return None;
    }
    if created == 0 {
        return Some("events or progress before the watch was created".into());
    }
    let first = session.first_owed()?;
    let vouched = session.vouched().unwrap_or(first - 1);
    if vouched > last {
        return Some(format!(
            "vouched for revision {vouched}, beyond the last committed revision {last} (W6)"
        ));
    }
    // W1/W2: revisions never go down; no (key, revision) twice.
    let mut seen = std::collections::BTreeSet::new();
    let mut previous = 0;
    for event in &delivered {
        let revision = event_revision(event);
        if revision < previous {
            return Some(format!(
                "revision {revision} after {previous} (W1 ordered): {}",
                show(event)
            ));
        }
        previous = revision;
        let key = event
            .kv
            .as_ref()
            .map(|kv| kv.key.clone())
            .unwrap_or_default();
        if !seen.insert((key, revision)) {
            return Some(format!("delivered twice (W2 unique): {}", show(event)));
        }
    }
    // W4/W5/W7/W8: exactly R's matching events in [first, vouched], in order,
    // every field equal.
    let wanted: Vec<mvccpb::Event> = by_revision
        .range(first..vouched.max(first - 1) + 1)
        .flat_map(|(_, events)| events.iter())
        .filter(|event| selection.wants(event))
        .map(|event| expected(selection, event))
        .collect();
    for (position, want) in wanted.iter().enumerate() {
        match delivered.get(position) {
            Some(got) if *got == want => {}
            Some(got) => {
                return Some(format!(
                    "event {position} after start {first} is {} but the committed history has {} (W4 reliable, W7 prev_kv/filters)",
                    show(got),
                    show(want)
                ));
            }
            None => {
                return Some(format!(
                    "vouched for revision {vouched} but never delivered {} (W4 reliable / W6 bookmark)",
                    show(want)
                ));
            }
        }
    }
    if let Some(extra) = delivered.get(wanted.len()) {
        return Some(format!(
            "delivered {} which the committed history from {first} to {vouched} does not have (W4, W8 start revision)",
            show(extra)
        ));
    }
    // W3: every revision in a reply is whole there.
    for reply in &session.replies {
        let Reply::Events(events) = reply else {
            continue;
        };
        let mut revisions: Vec<i64> = events.iter().map(event_revision).collect();
        revisions.dedup();
        for revision in revisions {
            let whole = by_revision
                .get(&revision)
                .map_or(0, |all| all.iter().filter(|e| selection.wants(e)).count());
            let here = events
                .iter()
                .filter(|e| event_revision(e) == revision)
                .count();
            if here != whole {
                return Some(format!(
                    "a reply holds {here} of the {whole} events of revision {revision} (W3 atomic)"
                ));
            }
        }
    }
    // W6: a progress mark at P comes after every event up to P, before any later.
    let mut so_far: Option<i64> = None;
    for reply in &session.replies {
        match reply {
            Reply::Events(events) => so_far = events.last().map(event_revision).or(so_far),
            Reply::Progress(mark) => {
                let owed = wanted
                    .iter()
                    .map(event_revision)
                    .filter(|r| r <= mark)
                    .max();
                if owed.is_some_and(|owed| so_far.is_none_or(|got| got < owed)) {
                    return Some(format!(
                        "progress mark {mark} before the event of revision {} was delivered (W6 bookmarkable)",
                        owed.unwrap_or_default()
                    ));
                }
            }
            _ => {}
        }
    }
    // W8 compacted start: a watch is cancelled only when a revision it still
    // needs was compacted, and `compact_revision` (etcd's value: the compacted
    // revision, also the first a new watch can start from) says how far a
    // compaction that was asked for went.
    let owed = vouched.max(first - 1) + 1;
    session.replies.iter().find_map(|reply| match reply {
        Reply::Canceled {
            compact_revision,
            reason,
        } => {
            let fits = reason == COMPACTED
                && *compact_revision > owed
                && *compact_revision <= compacted_max;
            (!fits).then(|| {
                format!(
                    "cancelled by the member: {reason:?} with compact_revision {compact_revision}, still owing revision {owed}; the highest compaction asked for was {compacted_max} (W8)"
                )
            })
        }
        _ => None,
    })
}

/// Ties R to what the KV clients were told: every acknowledged put, delete of
/// an existing key and successful txn is in R at its revision with its value.
pub fn check_against_history(
    committed: &Committed,
    history: &[mainstay_check::Operation],
) -> Vec<String> {
    use mainstay_check::{Input, Outcome, Output};
    let mut at: BTreeMap<(Revision, &[u8]), &Event> = BTreeMap::new();
    for (revision, event) in committed {
        at.insert((*revision, event.kv.key.as_slice()), event);
    }
    let mut violations = Vec::new();
    for operation in history {
        let Outcome::Ok(output) = &operation.outcome else {
            continue;
        };
        // (key, value written; None for a delete)
        type Write<'a> = (&'a [u8], Option<&'a [u8]>);
        let (revision, writes): (Revision, Vec<Write<'_>>) = match (&operation.input, output) {
            (Input::Put { key, value }, Output::Put { revision }) => {
                (*revision, vec![(key.as_slice(), Some(value.as_slice()))])
            }
            (
                Input::Delete { key },
                Output::Delete {
                    deleted: true,
                    revision,
                },
            ) => (*revision, vec![(key.as_slice(), None)]),
            (
                Input::Txn { puts, .. },
                Output::Txn {
                    succeeded: true,
                    revision,
                },
            ) => (
                *revision,
                puts.iter()
                    .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
                    .collect(),
            ),
            _ => continue,
        };
        for (key, value) in writes {
            let found = at.get(&(revision, key));
            let matches = found.is_some_and(|event| match value {
                Some(value) => event.kind == EventKind::Put && event.kv.value == value,
                None => event.kind == EventKind::Delete,
            });
            if !matches {
                violations.push(format!(
                    "committed history: {operation} was acknowledged at revision {revision}, but R has {:?} there",
                    found.map(|e| (e.kind, String::from_utf8_lossy(&e.kv.value).into_owned()))
                ));
            }
        }
    }
    violations
}

/// R, gathered while the run goes on (compaction drops history, so it cannot
/// all be read at the end): every event of every revision up to `tip`, each
/// range read from every member that has applied it, and required equal.
#[derive(Default)]
pub struct Collector {
    /// The events gathered so far.
    pub events: Committed,
    /// Every revision up to this one is in `events`.
    pub tip: Revision,
    /// Members that disagreed, or history lost before it was gathered.
    pub violations: Vec<String>,
}

impl Collector {
    /// Gathers what the members applied since the last call.
    pub fn collect<'a>(
        &mut self,
        replicas: impl Iterator<Item = (&'a String, &'a mainstay_raft::Replica)>,
    ) {
        let states: Vec<(&String, Revision, Revision, &mainstay_raft::Replica)> = replicas
            .map(|(name, replica)| {
                let (revision, compacted) =
                    replica.read(|space| (space.revision(), space.compacted_revision()));
                (name, revision, compacted, replica)
            })
            .collect();
        let Some(to) = states.iter().map(|(_, revision, _, _)| *revision).max() else {
            return;
        };
        if to <= self.tip {
            return;
        }
        let from = self.tip + 1;
        let mut gathered: Option<(&String, Vec<(Revision, Event)>)> = None;
        for (name, revision, compacted, replica) in states {
            if revision < to || compacted >= from {
                continue;
            }
            let events = match replica.read(|space| space.events(&[0], &[0], from, to)) {
                Ok(events) => events,
                Err(error) => {
                    self.violations.push(format!(
                        "committed history: {name} cannot read revisions {from}..={to}: {error}"
                    ));
                    return;
                }
            };
            match &gathered {
                None => gathered = Some((name, events)),
                Some((first, first_events)) => {
                    if *first_events != events {
                        self.violations.push(format!(
                            "committed history: {first} and {name} hold different events in revisions {from}..={to}"
                        ));
                        return;
                    }
                }
            }
        }
        match gathered {
            Some((_, events)) => {
                self.events.extend(events);
                self.tip = to;
            }
            None => self.violations.push(format!(
                "committed history: revisions {from}..={to} were compacted on every member before they were gathered"
            )),
        }
    }
}

/// Compacts now and then, never beyond what the collector has gathered, so
/// watches that resume too far back are cancelled (and R stays whole).
pub async fn compactor(
    members: Vec<String>,
    seed: u64,
    stop_micros: u64,
    gathered: Arc<std::sync::atomic::AtomicI64>,
    compactions: Arc<Mutex<Vec<Revision>>>,
) -> turmoil::Result {
    use mainstay_proto::etcdserverpb::CompactionRequest;
    use mainstay_proto::etcdserverpb::kv_client::KvClient;
    let mut rng = Rng::new(seed);
    let mut clients = crate::net::per_member(&members, KvClient::new)?;
    while now_micros() < stop_micros {
        tokio::time::sleep(Duration::from_millis(rng.between(1000, 3000))).await;
        let tip = gathered.load(std::sync::atomic::Ordering::Relaxed);
        if tip < 10 {
            continue;
        }
        let revision = tip - rng.between(0, 30).min(tip as u64 - 1) as i64;
        // Recorded before it is sent: it may take effect even if no answer comes.
        lock(&compactions).push(revision);
        let target = rng.below(clients.len() as u64) as usize;
        let request = CompactionRequest {
            revision,
            physical: rng.chance(50),
        };
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, clients[target].compact(request)).await;
    }
    Ok(())
}

/// Revisions have no gaps: every revision after the first (an empty store is
/// revision 1) was made by a write, so R holds at least one event for each.
pub fn check_no_gaps(committed: &Committed, last: Revision) -> Vec<String> {
    let present: std::collections::BTreeSet<Revision> =
        committed.iter().map(|(revision, _)| *revision).collect();
    let missing: Vec<Revision> = (2..=last).filter(|r| !present.contains(r)).collect();
    if missing.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "committed history: revisions {:?} have no event (a gap in the revision sequence)",
        &missing[..missing.len().min(10)]
    )]
}
