//! Which watch streams an applied revision concerns. One dispatcher task per
//! Watch service takes the replica's applied-events broadcast and hands each
//! revision only to the streams holding a watcher whose range holds one of its
//! keys, into the stream's inbox, and wakes that stream (as etcd's watchable
//! store notifies only matching watchers). A stream is never woken for
//! revisions none of its watchers wants, and needs not see them: once its
//! inbox holds nothing at or below `dispatched`, it has handled everything up
//! to `dispatched`.
//!
//! Order: the dispatcher hands revision r to the inboxes and then publishes
//! `dispatched = r`, both under the hub's lock; a watcher is registered under
//! the same lock, and registering returns `dispatched` then: revisions up to
//! it come to that watcher from history, later ones through its inbox.
//! An inbox that overflows (or a dispatcher that fell behind the broadcast)
//! marks the stream lagged: it catches up from history.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mainstay_mvcc::Revision;
use mainstay_raft::{AppliedEvents, Replica};
use tokio::sync::{Notify, broadcast};

use crate::watch_index::{WatchId, WatchIndex};

/// Revisions an inbox holds before its stream counts as lagged (the
/// applied-events broadcast holds as many).
const INBOX_MAX: usize = 4096;

/// The watchers of every stream of one Watch service, by key range.
#[derive(Default)]
pub(crate) struct WatchHub {
    inner: Mutex<Inner>,
    /// Every revision up to this one has been handed to the inboxes it
    /// concerns.
    dispatched: AtomicI64,
    started: AtomicBool,
    /// The replica stopped (its broadcast closed).
    closed: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Watchers by the hub's own ids.
    index: WatchIndex,
    /// Each registered watcher's stream inbox.
    owners: HashMap<WatchId, Arc<Inbox>>,
    next_id: WatchId,
    next_inbox: u64,
}

/// What the dispatcher left for one stream.
pub(crate) struct Inbox {
    /// Numbered by the hub: inboxes are handed revisions in this order (the
    /// simulator replays a seed only if wake-ups come in the same order).
    id: u64,
    state: Mutex<InboxState>,
    wake: Notify,
}

#[derive(Default)]
struct InboxState {
    revisions: VecDeque<AppliedEvents>,
    lagged: bool,
}

/// What `Inbox::take` found.
pub(crate) struct Taken {
    /// Revisions for this stream, in order.
    pub revisions: Vec<AppliedEvents>,
    /// Revisions were dropped: catch up from history.
    pub lagged: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere; the data stays consistent
    // (every change is one push or one flag).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inbox {
    fn push(&self, applied: AppliedEvents) {
        {
            let mut state = lock(&self.state);
            if state.revisions.len() >= INBOX_MAX {
                state.revisions.clear();
                state.lagged = true;
            } else {
                state.revisions.push_back(applied);
            }
        }
        self.wake.notify_one();
    }

    fn mark_lagged(&self) {
        {
            let mut state = lock(&self.state);
            state.revisions.clear();
            state.lagged = true;
        }
        self.wake.notify_one();
    }

    /// Takes the revisions at or below `upto` and the lagged mark.
    pub fn take(&self, upto: Revision) -> Taken {
        let mut state = lock(&self.state);
        let split = state
            .revisions
            .iter()
            .position(|applied| applied.revision > upto)
            .unwrap_or(state.revisions.len());
        Taken {
            revisions: state.revisions.drain(..split).collect(),
            lagged: std::mem::take(&mut state.lagged),
        }
    }

    /// Resolves once something was left for the stream since the last call.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

impl WatchHub {
    /// Starts the dispatcher on the replica's broadcast, once.
    pub fn start(self: &Arc<Self>, replica: &Replica) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        // Subscribe before reading the revision: nothing applied in between
        // is missed (a revision received twice is skipped by the streams).
        let events = replica.subscribe();
        let applied = replica.read(|space| space.revision());
        self.dispatched.fetch_max(applied, Ordering::AcqRel);
        tokio::spawn(dispatch(self.clone(), events));
    }

    /// A new stream's inbox.
    pub fn inbox(&self) -> Arc<Inbox> {
        let mut inner = lock(&self.inner);
        inner.next_inbox += 1;
        Arc::new(Inbox {
            id: inner.next_inbox,
            state: Mutex::default(),
            wake: Notify::new(),
        })
    }

    /// Every revision up to this one has been handed to the inboxes it
    /// concerns.
    pub fn dispatched(&self) -> Revision {
        self.dispatched.load(Ordering::Acquire)
    }

    /// Whether the replica stopped.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Registers a watcher of `inbox`'s stream; returns its hub id and the
    /// revision up to which the watcher must read history.
    pub fn register(
        &self,
        inbox: &Arc<Inbox>,
        key: &[u8],
        range_end: &[u8],
    ) -> (WatchId, Revision) {
        let mut inner = lock(&self.inner);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.index.insert(id, key, range_end);
        inner.owners.insert(id, inbox.clone());
        (id, self.dispatched())
    }

    /// Forgets a watcher registered with the same `(key, range_end)`.
    pub fn unregister(&self, id: WatchId, key: &[u8], range_end: &[u8]) {
        let mut inner = lock(&self.inner);
        inner.index.remove(id, key, range_end);
        inner.owners.remove(&id);
    }

    /// Hands one applied revision to the inboxes of the streams it concerns
    /// (every stream, lagged, if revisions were missed before it).
    fn dispatch(&self, applied: AppliedEvents, missed: bool) {
        let inner = lock(&self.inner);
        if missed {
            for inbox in distinct(inner.owners.values().cloned()) {
                inbox.mark_lagged();
            }
        }
        let mut concerned = Vec::new();
        for event in applied.events.iter() {
            inner.index.matching(&event.kv.key, |id| {
                if let Some(inbox) = inner.owners.get(&id) {
                    concerned.push(inbox.clone());
                }
            });
        }
        for inbox in distinct(concerned) {
            inbox.push(applied.clone());
        }
        self.dispatched
            .fetch_max(applied.revision, Ordering::AcqRel);
    }

    fn close(&self) {
        let inner = lock(&self.inner);
        self.closed.store(true, Ordering::Release);
        for inbox in distinct(inner.owners.values().cloned()) {
            inbox.wake.notify_one();
        }
    }
}

/// Each inbox once, in the order they were made.
fn distinct(inboxes: impl IntoIterator<Item = Arc<Inbox>>) -> Vec<Arc<Inbox>> {
    let mut all: Vec<Arc<Inbox>> = inboxes.into_iter().collect();
    all.sort_by_key(|inbox| inbox.id);
    all.dedup_by_key(|inbox| inbox.id);
    all
}

async fn dispatch(hub: Arc<WatchHub>, mut events: broadcast::Receiver<AppliedEvents>) {
    let mut missed = false;
    loop {
        match events.recv().await {
            Ok(applied) => hub.dispatch(applied, std::mem::take(&mut missed)),
            Err(broadcast::error::RecvError::Lagged(_)) => missed = true,
            Err(broadcast::error::RecvError::Closed) => {
                hub.close();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mainstay_mvcc::{Event, EventKind, KeyValue};

    fn applied(revision: Revision, keys: &[&str]) -> AppliedEvents {
        let events = keys
            .iter()
            .map(|key| Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.as_bytes().to_vec(),
                    mod_revision: revision,
                    ..KeyValue::default()
                },
                prev_kv: None,
                prev_value_stored: false,
            })
            .collect();
        AppliedEvents {
            revision,
            events: Arc::new(events),
        }
    }

    fn revisions(taken: &Taken) -> Vec<Revision> {
        taken.revisions.iter().map(|a| a.revision).collect()
    }

    #[test]
    fn a_revision_reaches_only_the_inboxes_it_concerns_and_once_each() {
        // Goal: each stream gets the revisions one of its watchers wants,
        // once however many of its watchers match, and what it takes stops at
        // the revision it read as dispatched.
        let hub = WatchHub::default();
        let (one, two, idle) = (hub.inbox(), hub.inbox(), hub.inbox());
        let (a, registered_at) = hub.register(&one, b"a", b"");
        assert_eq!(registered_at, 0);
        hub.register(&one, b"a", b"b");
        hub.register(&two, b"b", b"c");
        hub.register(&idle, b"z", b"");
        hub.dispatch(applied(5, &["a"]), false);
        hub.dispatch(applied(6, &["b1", "a"]), false);
        hub.dispatch(applied(7, &["c"]), false);
        hub.dispatch(applied(8, &["b2"]), false);
        assert_eq!(hub.dispatched(), 8);
        assert_eq!(revisions(&one.take(6)), vec![5, 6]);
        assert_eq!(revisions(&one.take(8)), Vec::<Revision>::new());
        assert_eq!(revisions(&two.take(7)), vec![6]);
        assert_eq!(revisions(&two.take(8)), vec![8]);
        assert!(idle.take(8).revisions.is_empty());
        // A registration reports what was dispatched before it.
        assert_eq!(hub.register(&idle, b"c", b"").1, 8);
        // Unregistered watchers are not matched.
        hub.unregister(a, b"a", b"");
        hub.dispatch(applied(9, &["a"]), false);
        assert_eq!(
            revisions(&one.take(9)),
            vec![9],
            "the range a..b still matches"
        );
    }

    #[test]
    fn an_overflowing_inbox_or_a_missed_revision_marks_streams_lagged() {
        // Goal: a stream that cannot keep up, or a dispatcher that missed
        // revisions, never silently drops events: the stream is told to
        // catch up from history.
        let hub = WatchHub::default();
        let (busy, other) = (hub.inbox(), hub.inbox());
        hub.register(&busy, b"k", b"");
        hub.register(&other, b"o", b"");
        for revision in 1..=INBOX_MAX as Revision + 1 {
            hub.dispatch(applied(revision, &["k"]), false);
        }
        let taken = busy.take(hub.dispatched());
        assert!(taken.lagged && taken.revisions.is_empty());
        assert!(!other.take(hub.dispatched()).lagged);
        hub.dispatch(applied(5000, &["k"]), true);
        let taken = other.take(hub.dispatched());
        assert!(taken.lagged, "every stream with a watcher lags on a miss");
        let taken = busy.take(hub.dispatched());
        assert!(taken.lagged);
        assert_eq!(
            revisions(&taken),
            vec![5000],
            "what came after the miss stays"
        );
    }
}
