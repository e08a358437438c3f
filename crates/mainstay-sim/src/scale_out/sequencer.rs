//! The sequencer of docs/design/scale-out.md §4.2: hands out blocks of global
//! revisions to the data groups' leaders, keeps the blocks not yet resolved,
//! and answers the stable revision S. `Sequencer` is the pure state machine
//! (table-tested below); `host` runs it on a simulated host whose durable
//! state, the ceiling, lives in the meta group (a real Mainstay cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mainstay_proto::etcdserverpb::RangeRequest;
use mainstay_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

use super::scheme::counter_cas;
use super::wire::{self, Line};

/// Revisions persisted ahead at a time: a restarted sequencer starts at the
/// last persisted ceiling, so revisions jump forward by at most this much.
pub(crate) const WINDOW: i64 = 1 << 20;

/// The meta-group key holding the ceiling.
const CEILING_KEY: &[u8] = b"/seq/ceiling";

/// The port the sequencer listens on.
pub(crate) const PORT: u16 = 7100;

/// A block handed out and not yet resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    group: u64,
    end: i64,
}

/// What an allocation needs.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Alloc {
    /// The block `[start, start + n)`.
    Granted(i64),
    /// Persist this ceiling first (`raise_ceiling`), then ask again.
    NeedCeiling(i64),
    /// From an epoch older than one already heard from the group.
    StaleEpoch,
}

/// The sequencer's state.
#[derive(Debug)]
pub(crate) struct Sequencer {
    next: i64,
    ceiling: i64,
    outstanding: BTreeMap<i64, Block>,
    epochs: BTreeMap<u64, u64>,
    /// Per group, the highest revision known applied: a merged watch needs it
    /// besides S (S says a block is applied, not that a group's stream has
    /// delivered it).
    applied: BTreeMap<u64, i64>,
    heard: BTreeSet<u64>,
    groups: u64,
}

impl Sequencer {
    /// A sequencer starting at the persisted `ceiling` (0 on a new cluster:
    /// revisions start at 1, as etcd's first write's).
    pub(crate) fn new(ceiling: i64, groups: u64) -> Sequencer {
        Sequencer {
            next: ceiling.max(1),
            ceiling,
            outstanding: BTreeMap::new(),
            epochs: BTreeMap::new(),
            applied: BTreeMap::new(),
            heard: BTreeSet::new(),
            groups,
        }
    }

    /// Hands `n` revisions to `group`'s leader of `epoch`.
    pub(crate) fn alloc(&mut self, group: u64, epoch: u64, n: i64) -> Alloc {
        if self.epochs.get(&group).is_some_and(|known| epoch < *known) {
            return Alloc::StaleEpoch;
        }
        if self.next + n > self.ceiling {
            return Alloc::NeedCeiling(self.next + n + WINDOW);
        }
        let start = self.next;
        self.next += n;
        self.outstanding.insert(
            start,
            Block {
                group,
                end: start + n,
            },
        );
        Alloc::Granted(start)
    }

    /// The ceiling `ceiling` is durable.
    pub(crate) fn raise_ceiling(&mut self, ceiling: i64) {
        self.ceiling = self.ceiling.max(ceiling);
    }

    /// `group`'s block starting at `start` is applied or void, and `applied`
    /// is the highest revision the group has applied.
    pub(crate) fn resolve(&mut self, group: u64, start: i64, applied: i64) {
        self.raise_applied(group, applied);
        if self
            .outstanding
            .get(&start)
            .is_some_and(|block| block.group == group)
        {
            self.outstanding.remove(&start);
        }
    }

    fn raise_applied(&mut self, group: u64, applied: i64) {
        let high = self.applied.entry(group).or_insert(0);
        *high = (*high).max(applied);
    }

    /// `group`'s leader of `epoch` (fenced: no older leader's entry can still
    /// apply) says `blocks` are all it has outstanding and `applied` is the
    /// highest revision the group applied: any other block of the group is
    /// applied or void.
    pub(crate) fn hello(
        &mut self,
        group: u64,
        epoch: u64,
        applied: i64,
        blocks: &[(i64, i64)],
    ) -> bool {
        if self.epochs.get(&group).is_some_and(|known| epoch < *known) {
            return false;
        }
        self.epochs.insert(group, epoch);
        self.raise_applied(group, applied);
        self.outstanding.retain(|_, block| block.group != group);
        for &(start, end) in blocks {
            // Only blocks this incarnation could have handed out (a restarted
            // sequencer starts above every earlier block).
            if start < self.next && start < end {
                self.outstanding.insert(start, Block { group, end });
            }
        }
        self.heard.insert(group);
        true
    }

    /// `(R, S)`: the newest revision handed out and the stable revision (every
    /// revision up to it applied or void). None until every group has said
    /// hello to this incarnation: a block handed out before a restart may still
    /// be outstanding.
    pub(crate) fn stable(&self) -> Option<(i64, i64)> {
        if (self.heard.len() as u64) < self.groups {
            return None;
        }
        let newest = self.next - 1;
        let stable = self
            .outstanding
            .keys()
            .next()
            .map_or(newest, |start| start - 1);
        Some((newest, stable))
    }

    /// The highest revision each group has applied (0 if none), by group.
    pub(crate) fn applied(&self) -> Vec<i64> {
        (0..self.groups)
            .map(|group| self.applied.get(&group).copied().unwrap_or(0))
            .collect()
    }
}

/// Reads the persisted ceiling from the meta group (0 if none).
async fn read_ceiling(meta: &mut [KvClient<Channel>]) -> Option<i64> {
    for kv in meta.iter_mut() {
        let request = RangeRequest {
            key: CEILING_KEY.to_vec(),
            ..Default::default()
        };
        if let Ok(Ok(reply)) = tokio::time::timeout(wire::TIMEOUT, kv.range(request)).await {
            let reply = reply.into_inner();
            return Some(
                reply
                    .kvs
                    .first()
                    .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
                    .unwrap_or(0),
            );
        }
    }
    None
}

/// Persists `ceiling` unless a higher one already is; retries until a meta
/// member answers.
async fn persist_ceiling(meta: &mut [KvClient<Channel>], ceiling: i64) {
    loop {
        let Some(current) = read_ceiling(meta).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if current >= ceiling {
            return;
        }
        let request = counter_cas(CEILING_KEY, current, ceiling);
        for kv in meta.iter_mut() {
            if let Ok(Ok(_)) = tokio::time::timeout(wire::TIMEOUT, kv.txn(request.clone())).await {
                break;
            }
        }
        // Whatever the answer, read again: an unknown outcome may have landed.
    }
}

/// Shared by the connections of one incarnation.
struct Shared {
    state: tokio::sync::Mutex<Sequencer>,
    meta: tokio::sync::Mutex<Vec<KvClient<Channel>>>,
}

/// The sequencer host: reads its ceiling from the meta group, then serves
/// `alloc`, `resolve`, `hello` and `stable` lines.
pub(crate) async fn host(meta_members: Vec<String>, groups: u64) -> turmoil::Result {
    let mut meta = crate::net::per_member(&meta_members, KvClient::new)?;
    let ceiling = loop {
        if let Some(ceiling) = read_ceiling(&mut meta).await {
            break ceiling;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let shared = Arc::new(Shared {
        state: tokio::sync::Mutex::new(Sequencer::new(ceiling, groups)),
        meta: tokio::sync::Mutex::new(meta),
    });
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut line = Line::new(stream);
            while let Ok(Some(request)) = line.read().await {
                let answer = serve(&shared, &request).await;
                if line.send(&answer).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn serve(shared: &Shared, request: &str) -> String {
    let words: Vec<&str> = request.split_whitespace().collect();
    let number = |at: usize| words.get(at).and_then(|w| w.parse::<i64>().ok());
    match words.first().copied() {
        Some("alloc") => {
            let (Some(group), Some(epoch), Some(n)) = (number(1), number(2), number(3)) else {
                return "err bad alloc".to_string();
            };
            let mut state = shared.state.lock().await;
            loop {
                match state.alloc(group as u64, epoch as u64, n) {
                    Alloc::Granted(start) => return format!("ok {start}"),
                    Alloc::StaleEpoch => return "err stale epoch".to_string(),
                    Alloc::NeedCeiling(ceiling) => {
                        // Allocations wait while the ceiling is persisted.
                        persist_ceiling(&mut shared.meta.lock().await, ceiling).await;
                        state.raise_ceiling(ceiling);
                    }
                }
            }
        }
        Some("resolve") => {
            let (Some(group), Some(start), Some(applied)) = (number(1), number(2), number(3))
            else {
                return "err bad resolve".to_string();
            };
            shared
                .state
                .lock()
                .await
                .resolve(group as u64, start, applied);
            "ok".to_string()
        }
        Some("hello") => {
            let (Some(group), Some(epoch), Some(applied)) = (number(1), number(2), number(3))
            else {
                return "err bad hello".to_string();
            };
            let blocks: Vec<(i64, i64)> = words[4..]
                .iter()
                .filter_map(|w| {
                    let (start, end) = w.split_once(':')?;
                    Some((start.parse().ok()?, end.parse().ok()?))
                })
                .collect();
            if shared
                .state
                .lock()
                .await
                .hello(group as u64, epoch as u64, applied, &blocks)
            {
                "ok".to_string()
            } else {
                "err stale epoch".to_string()
            }
        }
        Some("stable") => {
            let state = shared.state.lock().await;
            match state.stable() {
                Some((newest, stable)) => {
                    let applied: Vec<String> = state.applied().iter().map(i64::to_string).collect();
                    format!("ok {newest} {stable} {}", applied.join(" "))
                }
                None => "wait".to_string(),
            }
        }
        _ => "err unknown request".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_unique_and_the_stable_revision_waits_for_the_lowest() {
        let mut s = Sequencer::new(0, 2);
        // A new cluster: the first allocation persists a ceiling first.
        assert_eq!(s.alloc(0, 1, 3), Alloc::NeedCeiling(4 + WINDOW));
        s.raise_ceiling(4 + WINDOW);
        assert_eq!(s.stable(), None, "no group has said hello yet");
        assert!(s.hello(0, 1, 0, &[]));
        assert!(s.hello(1, 1, 0, &[]));
        assert_eq!(s.stable(), Some((0, 0)));
        assert_eq!(s.alloc(0, 1, 3), Alloc::Granted(1));
        assert_eq!(s.alloc(1, 1, 2), Alloc::Granted(4));
        assert_eq!(s.stable(), Some((5, 0)));
        // Group 1 resolves first: S still waits for group 0's block.
        s.resolve(1, 4, 5);
        assert_eq!(s.stable(), Some((5, 0)));
        // Another group cannot resolve a block that is not its own.
        s.resolve(1, 1, 5);
        assert_eq!(s.stable(), Some((5, 0)));
        s.resolve(0, 1, 3);
        assert_eq!(s.stable(), Some((5, 5)));
        assert_eq!(s.applied(), vec![3, 5]);
    }

    #[test]
    fn a_new_leader_drops_its_groups_old_blocks_and_stale_epochs_are_refused() {
        let mut s = Sequencer::new(100, 2);
        s.raise_ceiling(100 + WINDOW);
        assert!(s.hello(0, 1, 0, &[]));
        assert!(s.hello(1, 1, 0, &[]));
        assert_eq!(s.alloc(0, 1, 2), Alloc::Granted(100));
        assert_eq!(s.alloc(1, 1, 2), Alloc::Granted(102));
        // Group 0's leader restarted and fenced epoch 1: its block is applied
        // or void, and S moves up to group 1's block.
        assert!(s.hello(0, 2, 101, &[]));
        assert_eq!(s.stable(), Some((103, 101)));
        assert_eq!(s.applied(), vec![101, 0]);
        assert_eq!(s.alloc(0, 1, 1), Alloc::StaleEpoch);
        assert!(!s.hello(0, 1, 0, &[]));
        assert_eq!(s.alloc(0, 2, 1), Alloc::Granted(104));
        assert_eq!(s.stable(), Some((104, 101)));
    }

    #[test]
    fn a_restarted_sequencer_starts_at_the_ceiling_and_learns_outstanding_blocks() {
        // Before the restart 1..=10 were handed out under a ceiling of 50.
        let mut s = Sequencer::new(50, 2);
        assert_eq!(s.alloc(0, 3, 1), Alloc::NeedCeiling(51 + WINDOW));
        s.raise_ceiling(51 + WINDOW);
        assert_eq!(
            s.alloc(0, 3, 1),
            Alloc::Granted(50),
            "never below the ceiling"
        );
        assert_eq!(s.stable(), None);
        // Group 1 still has block [7, 9) from before the restart.
        assert!(s.hello(1, 1, 6, &[(7, 9)]));
        assert_eq!(s.stable(), None, "group 0 not heard yet");
        assert!(s.hello(0, 3, 3, &[(50, 51)]));
        assert_eq!(s.stable(), Some((50, 6)));
        s.resolve(1, 7, 8);
        assert_eq!(s.stable(), Some((50, 49)));
        s.resolve(0, 50, 50);
        assert_eq!(s.stable(), Some((50, 50)));
        // A block above what this incarnation handed out is ignored.
        assert!(s.hello(0, 3, 50, &[(900, 901)]));
        assert_eq!(s.stable(), Some((50, 50)));
    }
}
