//! `etcdserverpb.Watch`: many watchers multiplexed on one bidirectional stream,
//! served by any member from its own applied state.
//!
//! Each stream is one loop that owns its watchers. Live events come from the
//! service's `WatchHub`, which hands a stream only the applied revisions one of
//! its watchers wants (into the stream's inbox) and wakes it; history (a start
//! revision in the past, or a stream that fell behind) comes from the MVCC
//! keyspace. Each watcher remembers the next revision it owes the client, so
//! every revision reaches it exactly once, in order, whole (one revision is
//! never split across responses unless the client asked for fragments), from
//! either source. Memory per stream is bounded: replies wait in a bounded
//! channel, and a stream that cannot keep up lets its inbox overflow, lags, and
//! later catches up from history; a watcher that fell behind compaction is
//! cancelled with `compact_revision`, never skipped silently.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use mainstay_mvcc::{Event, EventKind, KeySpace, KeyValue, MvccError, Revision};
use mainstay_proto::etcdserverpb as pb;
use mainstay_proto::etcdserverpb::watch_server::Watch;
use mainstay_proto::mvccpb;
use mainstay_raft::AppliedEvents;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Api;
use crate::convert::key_value;
use crate::identity::Credentials;
use crate::watch_hub::{Inbox, WatchHub};
use crate::watch_index::{WatchId, WatchIndex};
use mainstay_auth::PermissionKind;

/// Replies buffered per stream before the stream task waits for the client.
const REPLIES_BUFFERED: usize = 64;

/// Events per reply when catching up from history (whole revisions only).
const EVENTS_PER_REPLY: usize = 1000;

/// Watchers per stream.
pub const WATCHERS_PER_STREAM_MAX: usize = 10_000;

/// How often a stream checks for a leader (require-leader) and due progress
/// notifications.
const TICK: Duration = Duration::from_millis(100);

/// Times a stream fell behind (its inbox overflowed) and caught up from
/// history (process-wide; the metrics endpoint will export it).
static STREAM_LAGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many times, in this process, a watch stream fell behind the applied
/// revisions handed to it and caught up from the keyspace's history instead.
pub fn stream_lags_total() -> u64 {
    STREAM_LAGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// etcd's text for a client-chosen watch id already in use on the stream.
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// etcd's text for a start revision that can never be served.
const COMPACTED: &str = "mvcc: required revision has been compacted";

/// The Watch service.
#[derive(Clone)]
pub struct WatchService {
    api: Api,
    progress_interval: Duration,
    /// Every stream's watchers, so a revision wakes only the streams it
    /// concerns.
    hub: Arc<WatchHub>,
}

impl WatchService {
    /// Wraps the shared API state; `progress_interval` is etcd's
    /// `--watch-progress-notify-interval` (10 minutes by default).
    pub fn new(api: Api, progress_interval: Duration) -> Self {
        WatchService {
            api,
            progress_interval,
            hub: Arc::default(),
        }
    }
}

struct Watcher {
    key: Vec<u8>,
    range_end: Vec<u8>,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    /// The next revision this watcher owes the client, unless the stream's
    /// `processed` is past it: a revision none of whose events the watcher
    /// wants does not visit it, so what it owes is
    /// `max(next, processed + 1)` (`WatchStream::owed`).
    next: Revision,
    /// When this watcher last sent anything (for progress notifications).
    last_sent: Instant,
    /// Held while the watcher wants prev_kv: applied events then carry
    /// previous values (see `Replica::want_prev_values`).
    _prev_values: Option<mainstay_raft::PrevValues>,
    /// Its id in the service's `WatchHub`.
    hub_id: WatchId,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let kind_ok = match event.kind {
            EventKind::Put => !self.no_put,
            EventKind::Delete => !self.no_delete,
        };
        kind_ok && mainstay_mvcc::in_range(&event.kv.key, &self.key, &self.range_end)
    }

    /// The event as sent; `prev_kv` is what `WatchStream::prev_kv` found
    /// (sent only to a watcher that asked for it).
    fn to_wire(&self, event: &Event, prev_kv: Option<KeyValue>) -> mvccpb::Event {
        mvccpb::Event {
            r#type: match event.kind {
                EventKind::Put => mvccpb::event::EventType::Put as i32,
                EventKind::Delete => mvccpb::event::EventType::Delete as i32,
            },
            kv: Some(key_value(event.kv.clone())),
            prev_kv: if self.prev_kv {
                prev_kv.map(key_value)
            } else {
                None
            },
        }
    }
}

/// Why a stream ended early.
enum Ended {
    /// The client went away (or stopped reading and the stream was dropped).
    Gone,
    /// Closed with this status (no leader).
    Status(Status),
}

struct WatchStream {
    api: Api,
    replies: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    /// The watchers by key range: an applied event visits only the
    /// watchers whose range holds its key.
    index: WatchIndex,
    /// The service's watchers of every stream, and this stream's inbox of
    /// the revisions its watchers want.
    hub: Arc<WatchHub>,
    inbox: Arc<Inbox>,
    next_id: i64,
    /// Every revision up to this one has been handled for every watcher.
    processed: Revision,
    progress_interval: Duration,
    require_leader: bool,
    leaderless_since: Option<Instant>,
    /// The stream's token or certificate name, resolved at each create.
    credentials: Credentials,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        for (_, watcher) in std::mem::take(&mut self.watchers) {
            self.hub
                .unregister(watcher.hub_id, &watcher.key, &watcher.range_end);
            self.api.replica.metrics().mvcc.watchers.dec();
        }
        let mvcc = &self.api.replica.metrics().mvcc;
        mvcc.watch_streams.dec();
    }
}

impl WatchStream {
    /// Drops a watcher (counted in `etcd_debugging_mvcc_watcher_total`).
    fn forget(&mut self, id: i64) -> Option<Watcher> {
        let removed = self.watchers.remove(&id);
        if let Some(watcher) = &removed {
            self.index.remove(id, &watcher.key, &watcher.range_end);
            self.hub
                .unregister(watcher.hub_id, &watcher.key, &watcher.range_end);
            self.api.replica.metrics().mvcc.watchers.dec();
        }
        removed
    }

    fn header(&self, revision: Revision) -> Option<pb::ResponseHeader> {
        self.api.headers().header(revision, self.api.replica.term())
    }

    async fn send(&self, response: pb::WatchResponse) -> Result<(), Ended> {
        let events = response.events.len() as u64;
        self.api.replica.metrics().mvcc.events.inc_by(events);
        self.replies
            .send(Ok(response))
            .await
            .map_err(|_| Ended::Gone)
    }

    /// An event's previous key-value. One whose value left memory before the
    /// event was applied is read back now, at its revision, as etcd reads a
    /// previous key-value when it sends an event; if that revision was
    /// compacted meanwhile (or cannot be read) it is left out, as etcd does.
    fn prev_kv(&self, event: &Event) -> Option<KeyValue> {
        let prev = event.prev_kv.as_ref()?;
        if !event.prev_value_stored {
            return Some(prev.clone());
        }
        match self
            .api
            .replica
            .read(|space| space.get(&prev.key, prev.mod_revision))
        {
            Ok(Some(kv)) if kv.mod_revision == prev.mod_revision => Some(kv),
            _ => None,
        }
    }

    /// What watcher `id` owes the client next (see `Watcher::next`).
    fn owed(&self, watcher: &Watcher) -> Revision {
        watcher.next.max(self.processed + 1)
    }

    /// Sends the events `id` wants of `events` (revision-ordered) in replies
    /// that never split a revision, unless the watcher asked for fragments and
    /// one revision alone exceeds the reply size limit. Events are borrowed:
    /// only what this watcher sends is copied, into its reply.
    async fn deliver<'e>(
        &mut self,
        id: i64,
        events: impl IntoIterator<Item = (Revision, &'e Event)>,
    ) -> Result<(), Ended> {
        let Some(watcher) = self.watchers.get(&id) else {
            return Ok(());
        };
        let limit = self.api.limits.request_bytes_max;
        let fragment = watcher.fragment;
        let mut batches: Vec<(Revision, Vec<mvccpb::Event>)> = Vec::new();
        let mut current: Vec<mvccpb::Event> = Vec::new();
        let mut current_revision = 0;
        for (revision, event) in events {
            if !watcher.wants(event) {
                continue;
            }
            if revision != current_revision && current.len() >= EVENTS_PER_REPLY {
                batches.push((current_revision, std::mem::take(&mut current)));
            }
            current_revision = revision;
            let prev_kv = if watcher.prev_kv {
                self.prev_kv(event)
            } else {
                None
            };
            current.push(watcher.to_wire(event, prev_kv));
        }
        if !current.is_empty() {
            batches.push((current_revision, current));
        }
        for (revision, events) in batches {
            let response = pb::WatchResponse {
                header: self.header(revision),
                watch_id: id,
                events,
                ..Default::default()
            };
            if fragment && response.encoded_len() > limit {
                for part in split(response, limit) {
                    self.send(part).await?;
                }
            } else {
                self.send(response).await?;
            }
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.last_sent = Instant::now();
            }
        }
        Ok(())
    }

    /// Brings one watcher up to `to` from the keyspace's history; cancels it if
    /// the revisions it still needs were compacted.
    async fn catch_up(&mut self, id: i64, to: Revision) -> Result<(), Ended> {
        let Some(watcher) = self.watchers.get(&id) else {
            return Ok(());
        };
        if watcher.next > to {
            return Ok(());
        }
        let (from, key, range_end) = (watcher.next, watcher.key.clone(), watcher.range_end.clone());
        let history = self.api.replica.read(|space: &KeySpace| {
            (
                space.events(&key, &range_end, from, to),
                space.compacted_revision(),
            )
        });
        match history {
            (Ok(events), _) => {
                self.deliver(
                    id,
                    events.iter().map(|(revision, event)| (*revision, event)),
                )
                .await?;
                if let Some(watcher) = self.watchers.get_mut(&id) {
                    watcher.next = to + 1;
                }
                Ok(())
            }
            (Err(MvccError::Compacted), compacted) => {
                self.forget(id);
                // etcd's value: the compacted revision, which is also the first
                // revision a new watch can start from (its events are all kept).
                self.send(pb::WatchResponse {
                    header: self.header(to),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compacted,
                    cancel_reason: COMPACTED.to_string(),
                    ..Default::default()
                })
                .await
            }
            (Err(error), _) => {
                tracing::error!(%error, "watch history read failed");
                self.forget(id);
                self.send(pb::WatchResponse {
                    header: self.header(to),
                    watch_id: id,
                    canceled: true,
                    cancel_reason: error.to_string(),
                    ..Default::default()
                })
                .await
            }
        }
    }

    async fn create(&mut self, request: pb::WatchCreateRequest) -> Result<(), Ended> {
        // Before the revision is read: every later revision is applied with
        // previous values; up to it, this watcher reads history.
        let prev_values = request.prev_kv.then(|| self.api.replica.want_prev_values());
        let current = self.api.replica.read(|space| space.revision());
        let refuse = |reason: &str| pb::WatchResponse {
            header: self.header(current),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..Default::default()
        };
        if request.start_revision < 0 {
            return self.send(refuse(COMPACTED)).await;
        }
        // Read permission on the whole range, a from-key range as one (etcd
        // 3.5.33); a refusal cancels this watcher, not the stream (etcd's reply,
        // with the gRPC status in words as the reason).
        let permitted = match self.api.resolve(&self.credentials).await {
            Ok(caller) => self.api.permit(|space| {
                space.auth().check_op(
                    &caller,
                    &request.key,
                    &request.range_end,
                    PermissionKind::Read,
                )
            }),
            Err(status) => Err(status),
        };
        if let Err(status) = permitted {
            let reason = format!(
                "rpc error: code = {} desc = {}",
                go_code_name(status.code()),
                status.message()
            );
            return self.send(refuse(&reason)).await;
        }
        if self.watchers.len() >= WATCHERS_PER_STREAM_MAX {
            return self
                .send(refuse("etcdserver: too many watchers on this stream"))
                .await;
        }
        let id = if request.watch_id != 0 {
            if self.watchers.contains_key(&request.watch_id) {
                return self.send(refuse(DUPLICATE_ID)).await;
            }
            request.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let filters = request.filters.clone();
        // From here on every revision this watcher wants reaches the inbox;
        // up to `dispatched` it comes from history.
        let (hub_id, dispatched) = self
            .hub
            .register(&self.inbox, &request.key, &request.range_end);
        let watcher = Watcher {
            key: request.key,
            range_end: request.range_end,
            prev_kv: request.prev_kv,
            no_put: filters.contains(&(pb::watch_create_request::FilterType::Noput as i32)),
            no_delete: filters.contains(&(pb::watch_create_request::FilterType::Nodelete as i32)),
            progress_notify: request.progress_notify,
            fragment: request.fragment,
            next: if request.start_revision == 0 {
                self.processed + 1
            } else if self.api.unsafe_watch_start_off_by_one {
                request.start_revision + 1
            } else {
                request.start_revision
            },
            last_sent: Instant::now(),
            _prev_values: prev_values,
            hub_id,
        };
        // A prev_kv watcher takes from history everything applied before its
        // guard (the inbox may still get such revisions, applied without
        // previous values); others take history up to what this stream
        // handled, or what the hub had dispatched when it registered the
        // watcher (those revisions never reach the inbox for it).
        let history_to = if watcher.prev_kv {
            current.max(self.processed).max(dispatched)
        } else {
            self.processed.max(dispatched)
        };
        self.index.insert(id, &watcher.key, &watcher.range_end);
        if self.watchers.insert(id, watcher).is_none() {
            self.api.replica.metrics().mvcc.watchers.inc();
        }
        self.send(pb::WatchResponse {
            header: self.header(self.processed),
            watch_id: id,
            created: true,
            ..Default::default()
        })
        .await?;
        // Past revisions up to `history_to` come from history; later ones
        // arrive live.
        self.catch_up(id, history_to).await
    }

    async fn cancel(&mut self, id: i64) -> Result<(), Ended> {
        // etcd answers only a cancel of a watcher that exists.
        if self.forget(id).is_some() {
            self.send(pb::WatchResponse {
                header: self.header(self.processed),
                watch_id: id,
                canceled: true,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    }

    /// One applied revision from the inbox.
    async fn live(&mut self, applied: AppliedEvents) -> Result<(), Ended> {
        let revision = applied.revision;
        if revision <= self.processed {
            return Ok(());
        }
        if revision > self.processed + 1 {
            // The revisions in between concern none of this stream's
            // watchers (the hub hands a stream only those that do).
            self.processed = revision - 1;
        }
        // Every watcher now owes `revision` or a later one. Only the watchers
        // whose range holds an event's key are visited, in id order, each
        // with its events in the order the request wrote them, as etcd sends
        // a revision's events (and as `KeySpace::events` replays them).
        let events = applied.events;
        let mut wanted: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for (at, event) in events.iter().enumerate() {
            self.index.matching(&event.kv.key, |id| {
                let positions = wanted.entry(id).or_default();
                if positions.last() != Some(&at) {
                    positions.push(at);
                }
            });
        }
        for (id, positions) in wanted {
            let Some(watcher) = self.watchers.get(&id) else {
                continue;
            };
            if self.owed(watcher) > revision {
                // Starts at a later revision.
                continue;
            }
            self.deliver(id, positions.iter().map(|at| (revision, &events[*at])))
                .await?;
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.next = revision + 1;
            }
        }
        self.processed = revision;
        Ok(())
    }

    /// Every watcher up to `to` from history (after the stream lagged).
    async fn catch_up_all(&mut self, to: Revision) -> Result<(), Ended> {
        let processed = self.processed;
        for watcher in self.watchers.values_mut() {
            watcher.next = watcher.next.max(processed + 1);
        }
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id, to).await?;
        }
        self.processed = self.processed.max(to);
        Ok(())
    }

    /// Handles what the inbox already holds, so a progress answer is as
    /// fresh as this member's applied state.
    async fn drain(&mut self) -> Result<(), Ended> {
        // Read first: the inbox then holds every revision up to it that
        // concerns this stream.
        let dispatched = self.hub.dispatched();
        let taken = self.inbox.take(dispatched);
        if taken.lagged {
            STREAM_LAGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Up to what is applied now: at least every revision dropped.
            let current = self.api.replica.read(|space| space.revision());
            self.catch_up_all(current).await?;
        }
        for applied in taken.revisions {
            self.live(applied).await?;
        }
        self.processed = self.processed.max(dispatched);
        if self.hub.closed() {
            return Err(Ended::Status(Status::unavailable(
                "etcdserver: server stopped",
            )));
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<(), Ended> {
        let now = Instant::now();
        if self.require_leader {
            if self
                .api
                .replica
                .has_live_leader(self.api.replica.election_timeout())
            {
                self.leaderless_since = None;
            } else {
                let since = *self.leaderless_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= self.api.replica.election_timeout() * 3 {
                    return Err(Ended::Status(Status::unavailable("etcdserver: no leader")));
                }
            }
        }
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| {
                w.progress_notify
                    && now.saturating_duration_since(w.last_sent) >= self.progress_interval
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.send(pb::WatchResponse {
                header: self.header(self.processed),
                watch_id: id,
                ..Default::default()
            })
            .await?;
            if let Some(watcher) = self.watchers.get_mut(&id) {
                watcher.last_sent = now;
            }
        }
        Ok(())
    }

    async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) -> Ended {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let inbox = self.inbox.clone();
        loop {
            let step = tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.handle(request).await,
                    Ok(None) | Err(_) => Err(Ended::Gone),
                },
                () = inbox.woken() => self.drain().await,
                _ = ticker.tick() => match self.drain().await {
                    Ok(()) => self.tick().await,
                    Err(ended) => Err(ended),
                },
            };
            if let Err(ended) = step {
                return ended;
            }
        }
    }

    async fn handle(&mut self, request: pb::WatchRequest) -> Result<(), Ended> {
        use pb::watch_request::RequestUnion;
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => {
                self.drain().await?;
                self.create(create).await
            }
            Some(RequestUnion::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every event up to `processed` has been sent on this stream,
                // and nothing later: that is the progress mark (etcd #15220).
                self.drain().await?;
                self.send(pb::WatchResponse {
                    header: self.header(self.processed),
                    watch_id: -1,
                    ..Default::default()
                })
                .await
            }
            None => Ok(()),
        }
    }
}

/// grpc-go's name of a status code, as etcd's cancel reasons spell it.
fn go_code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::Unauthenticated => "Unauthenticated",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Unavailable => "Unavailable",
        _ => "Unknown",
    }
}

/// Splits a reply whose events exceed `limit` bytes into fragments; all but
/// the last carry `fragment = true`.
fn split(mut response: pb::WatchResponse, limit: usize) -> Vec<pb::WatchResponse> {
    let events = std::mem::take(&mut response.events);
    let empty = response;
    let mut parts = Vec::new();
    let mut part = empty.clone();
    let mut size = part.encoded_len();
    for event in events {
        let event_size = event.encoded_len() + 8;
        if !part.events.is_empty() && size + event_size > limit {
            parts.push(std::mem::replace(&mut part, empty.clone()));
            size = part.encoded_len();
        }
        size += event_size;
        part.events.push(event);
    }
    parts.push(part);
    let last = parts.len() - 1;
    for (index, part) in parts.iter_mut().enumerate() {
        part.fragment = index < last;
    }
    parts
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let require_leader = request
            .metadata()
            .get("hasleader")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "true");
        if require_leader && self.api.replica.status().leader.is_none() {
            return Err(Status::unavailable("etcdserver: no leader"));
        }
        let credentials = Credentials::of(&request);
        let inbound = request.into_inner();
        self.hub.start(&self.api.replica);
        let processed = self.api.replica.read(|space| space.revision());
        let (replies, outbound) = mpsc::channel(REPLIES_BUFFERED);
        self.api.replica.metrics().mvcc.watch_streams.inc();
        let stream = WatchStream {
            api: self.api.clone(),
            replies: replies.clone(),
            watchers: BTreeMap::new(),
            index: WatchIndex::default(),
            hub: self.hub.clone(),
            inbox: self.hub.inbox(),
            next_id: 0,
            processed,
            progress_interval: self.progress_interval,
            require_leader,
            leaderless_since: None,
            credentials,
        };
        // The stream's loop runs inside the response body, polled by the
        // task that writes the body: an applied event wakes that task
        // directly instead of a task of its own that then wakes it through
        // the channel. Dropping the body (the client left) drops the loop.
        let driver = async move {
            if let Ended::Status(status) = stream.run(inbound).await {
                let _ = replies.send(Err(status)).await;
            }
        };
        let driver = futures::stream::once(driver).filter_map(|()| std::future::ready(None));
        Ok(Response::new(Box::pin(futures::stream::select(
            ReceiverStream::new(outbound),
            driver,
        ))))
    }
}
