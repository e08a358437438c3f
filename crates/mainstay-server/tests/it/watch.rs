//! Watch over real gRPC: history and live events, filters, prev_kv, compaction,
//! progress, cancel, client-chosen ids, and a lease expiry seen as one revision.

use std::time::Duration;

use mainstay_proto::etcdserverpb::watch_client::WatchClient;
use mainstay_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCancelRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest, WatchResponse,
    request_op, watch_create_request, watch_request,
};
use mainstay_proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::harness::{Options, TestCluster};

struct Stream {
    requests: mpsc::Sender<WatchRequest>,
    responses: Streaming<WatchResponse>,
}

impl Stream {
    async fn open(cluster: &TestCluster, i: usize) -> Stream {
        let url = format!("http://127.0.0.1:{}", cluster.members[i].client_port);
        let mut client: WatchClient<Channel> = WatchClient::connect(url)
            .await
            .expect("connect watch client");
        let (requests, receiver) = mpsc::channel(16);
        let responses = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .expect("watch stream")
            .into_inner();
        Stream {
            requests,
            responses,
        }
    }

    async fn send(&self, request: watch_request::RequestUnion) {
        self.requests
            .send(WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("send watch request");
    }

    async fn create(&self, create: WatchCreateRequest) {
        self.send(watch_request::RequestUnion::CreateRequest(create))
            .await;
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a watch response within 10 s")
            .expect("watch stream healthy")
            .expect("watch stream open")
    }
}

/// (type, key, value, mod revision, prev value) of every event in `response`.
type Summary = (i32, String, String, i64, Option<String>);

fn summary(response: &WatchResponse) -> Vec<Summary> {
    response
        .events
        .iter()
        .map(|event| {
            let kv = event.kv.clone().unwrap_or_default();
            (
                event.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
                event
                    .prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8_lossy(&p.value).into_owned()),
            )
        })
        .collect()
}

const PUT: i32 = EventType::Put as i32;
const DELETE: i32 = EventType::Delete as i32;

fn prefix(key: &str) -> WatchCreateRequest {
    let mut end = key.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    WatchCreateRequest {
        key: key.into(),
        range_end: end,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_get_history_then_live_events_as_etcd_sends_them() {
    // Goal: a watch from a past revision replays history then continues live,
    // every revision once, in order, with prev_kv and filters; compaction,
    // progress requests, cancel and client-chosen ids behave as in etcd.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    assert_eq!(cluster.put(leader, "a/x", "1").await, 2);
    assert_eq!(cluster.put(leader, "b", "1").await, 3);
    assert_eq!(cluster.put(leader, "a/x", "2").await, 4);
    let mut kv = cluster.kv(leader).await;
    kv.delete_range(DeleteRangeRequest {
        key: b"a/x".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete");

    // Served by a follower, from revision 2, with prev_kv.
    let mut stream = Stream::open(&cluster, follower).await;
    stream
        .create(WatchCreateRequest {
            start_revision: 2,
            prev_kv: true,
            watch_id: 7,
            ..prefix("a/")
        })
        .await;
    let created = stream.next().await;
    assert!(created.created && !created.canceled);
    assert_eq!(created.watch_id, 7, "a client-chosen id is honoured");
    let mut history = Vec::new();
    while history.len() < 3 {
        let response = stream.next().await;
        assert_eq!(response.watch_id, 7);
        history.extend(summary(&response));
    }
    assert_eq!(
        history,
        vec![
            (PUT, "a/x".into(), "1".into(), 2, None),
            (PUT, "a/x".into(), "2".into(), 4, Some("1".into())),
            (DELETE, "a/x".into(), String::new(), 5, Some("2".into())),
        ]
    );

    // Live, on a second watcher of the same stream that ignores puts.
    stream
        .create(WatchCreateRequest {
            filters: vec![watch_create_request::FilterType::Noput as i32],
            watch_id: 8,
            ..prefix("a/")
        })
        .await;
    let created = stream.next().await;
    assert_eq!((created.watch_id, created.created), (8, true));
    // The same id again is refused, as etcd does.
    stream
        .create(WatchCreateRequest {
            watch_id: 8,
            ..prefix("a/")
        })
        .await;
    let duplicate = stream.next().await;
    assert!(duplicate.created && duplicate.canceled);
    assert_eq!(duplicate.watch_id, -1);
    assert_eq!(
        duplicate.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );

    cluster.put(leader, "a/y", "1").await; // rev 6: only watcher 7
    cluster.put(leader, "b", "2").await; // rev 7: nobody
    kv.delete_range(DeleteRangeRequest {
        key: b"a/y".to_vec(),
        ..Default::default()
    })
    .await
    .expect("delete"); // rev 8: both
    let mut seen: Vec<(i64, Vec<Summary>)> = Vec::new();
    while seen.len() < 3 {
        let response = stream.next().await;
        seen.push((response.watch_id, summary(&response)));
    }
    seen.sort_by_key(|(id, events)| (events.first().map(|e| e.3), *id));
    assert_eq!(
        seen,
        vec![
            (7, vec![(PUT, "a/y".into(), "1".into(), 6, None)]),
            (
                7,
                vec![(DELETE, "a/y".into(), String::new(), 8, Some("1".into()))]
            ),
            (8, vec![(DELETE, "a/y".into(), String::new(), 8, None)]),
        ]
    );

    // Progress: watch id -1 and the revision everything before was sent at.
    stream
        .send(watch_request::RequestUnion::ProgressRequest(
            WatchProgressRequest {},
        ))
        .await;
    let progress = stream.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty() && !progress.created && !progress.canceled);
    assert_eq!(progress.header.expect("header").revision, 8);

    // Cancel.
    stream
        .send(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id: 8 },
        ))
        .await;
    let canceled = stream.next().await;
    assert_eq!((canceled.watch_id, canceled.canceled), (8, true));

    // Compaction at the delete's revision: a watch from below it is cancelled
    // with etcd's compact_revision (the compacted revision); one from exactly
    // there still gets the delete, with its prev_kv (etcd loses it).
    kv.compact(CompactionRequest {
        revision: 8,
        physical: false,
    })
    .await
    .expect("compact");
    // The watch is served by the follower: wait until it applied the compaction.
    let mut follower_kv = cluster.kv(follower).await;
    for _ in 0..100 {
        let read = follower_kv
            .range(RangeRequest {
                key: b"a/x".to_vec(),
                revision: 3,
                serializable: true,
                ..Default::default()
            })
            .await;
        if read.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stream
        .create(WatchCreateRequest {
            start_revision: 3,
            ..prefix("a/")
        })
        .await;
    let created = stream.next().await;
    assert!(created.created);
    let compacted = stream.next().await;
    assert_eq!(compacted.watch_id, created.watch_id);
    assert!(compacted.canceled);
    assert_eq!(compacted.compact_revision, 8);
    assert_eq!(
        compacted.cancel_reason,
        "mvcc: required revision has been compacted"
    );
    stream
        .create(WatchCreateRequest {
            start_revision: 8,
            prev_kv: true,
            ..prefix("a/")
        })
        .await;
    let created = stream.next().await;
    assert!(created.created && !created.canceled);
    let replayed = stream.next().await;
    assert_eq!(
        summary(&replayed),
        vec![(DELETE, "a/y".into(), String::new(), 8, Some("1".into()))]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_revision_reaches_exactly_the_watchers_whose_range_holds_its_keys() {
    // Goal: on one stream holding watchers of every kind of range (one key,
    // a prefix, from a key on, every key, an empty range, one that starts
    // later, one cancelled), a revision writing several keys reaches each
    // watcher with exactly the events in its range, in write order, in one
    // reply; a watcher that matched nothing for many revisions still gets
    // the next event in its range (the stream's key-range index).
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let mut stream = Stream::open(&cluster, leader).await;
    let watchers: Vec<(i64, WatchCreateRequest)> = vec![
        (
            1,
            WatchCreateRequest {
                key: b"k/b".to_vec(),
                ..Default::default()
            },
        ),
        (2, prefix("k/")),
        (
            3,
            WatchCreateRequest {
                key: b"k/b".to_vec(),
                range_end: vec![0],
                ..Default::default()
            },
        ),
        (
            4,
            WatchCreateRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            },
        ),
        (
            5,
            WatchCreateRequest {
                key: b"k/z".to_vec(),
                range_end: b"k/a".to_vec(),
                ..Default::default()
            },
        ),
        (
            6,
            WatchCreateRequest {
                start_revision: 1000,
                ..prefix("k/")
            },
        ),
        (7, prefix("k/")),
        (
            8,
            WatchCreateRequest {
                key: b"z".to_vec(),
                ..Default::default()
            },
        ),
    ];
    for (id, create) in watchers {
        stream
            .create(WatchCreateRequest {
                watch_id: id,
                ..create
            })
            .await;
        let created = stream.next().await;
        assert_eq!(
            (created.watch_id, created.created, created.canceled),
            (id, true, false)
        );
    }
    stream
        .send(watch_request::RequestUnion::CancelRequest(
            WatchCancelRequest { watch_id: 7 },
        ))
        .await;
    assert!(stream.next().await.canceled);
    // Many revisions no watcher but 4 wants, then one writing three keys.
    for i in 0..20 {
        cluster.put(leader, &format!("other{i}"), "v").await;
    }
    let mut kv = cluster.kv(leader).await;
    let put = |key: &str| RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })),
    };
    let written = kv
        .txn(TxnRequest {
            success: vec![put("k/c"), put("k/a"), put("k/b")],
            ..Default::default()
        })
        .await
        .expect("txn")
        .into_inner();
    let revision = written.header.expect("header").revision;
    cluster.put(leader, "z", "last").await;
    let mut got: Vec<(i64, Vec<String>)> = Vec::new();
    // Watchers 3 and 4 get the 20 puts one reply each (left out below), then
    // the txn, then "z".
    loop {
        let response = stream.next().await;
        let keys: Vec<String> = summary(&response).into_iter().map(|e| e.1).collect();
        if keys.iter().all(|k| k.starts_with("other")) {
            assert!([3, 4].contains(&response.watch_id), "{response:?}");
            continue;
        }
        got.push((response.watch_id, keys));
        if response.watch_id == 8 {
            break;
        }
    }
    got.sort();
    let keys = |k: &[&str]| k.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            (1, keys(&["k/b"])),
            (2, keys(&["k/c", "k/a", "k/b"])),
            (3, keys(&["k/c", "k/b"])),
            (3, keys(&["z"])),
            (4, keys(&["k/c", "k/a", "k/b"])),
            (4, keys(&["z"])),
            (8, keys(&["z"])),
        ],
        "revision {revision}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notifications_reach_idle_watchers() {
    // Goal: a watcher that asked for progress notifications and sees no events
    // gets empty responses carrying its id and the current revision (the
    // harness sets the interval to 500 ms).
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    cluster.put(leader, "other", "1").await;
    let mut stream = Stream::open(&cluster, leader).await;
    stream
        .create(WatchCreateRequest {
            progress_notify: true,
            ..prefix("quiet/")
        })
        .await;
    let created = stream.next().await;
    assert!(created.created);
    let notification = stream.next().await;
    assert_eq!(notification.watch_id, created.watch_id);
    assert!(notification.events.is_empty() && !notification.canceled);
    assert_eq!(notification.header.expect("header").revision, 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_revision_is_sent_in_fragments_when_asked() {
    // Goal: with `fragment`, a revision whose events exceed the request size
    // limit arrives in several replies, all but the last marked `fragment`, and
    // together they hold every event of that one revision.
    let options = Options {
        max_request_bytes: Some(4096),
        ..Options::default()
    };
    let cluster = TestCluster::start(3, options).await;
    let leader = cluster.wait_for_leader().await;
    let value = "x".repeat(1000);
    for i in 0..10 {
        cluster.put(leader, &format!("f/{i}"), &value).await;
    }
    let mut stream = Stream::open(&cluster, leader).await;
    stream
        .create(WatchCreateRequest {
            prev_kv: true,
            fragment: true,
            ..prefix("f/")
        })
        .await;
    assert!(stream.next().await.created);
    let mut kv = cluster.kv(leader).await;
    let deleted = kv
        .delete_range(DeleteRangeRequest {
            key: b"f/".to_vec(),
            range_end: b"f0".to_vec(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    let revision = deleted.header.expect("header").revision;
    let mut parts = Vec::new();
    loop {
        let part = stream.next().await;
        let last = !part.fragment;
        parts.push(part);
        if last {
            break;
        }
    }
    assert!(
        parts.len() > 1,
        "10 KB of events under a 4 KB limit come in fragments"
    );
    let events: Vec<_> = parts.iter().flat_map(summary).collect();
    assert_eq!(events.len(), 10);
    assert!(events.iter().all(|e| e.0 == DELETE && e.3 == revision));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_require_leader_watch_ends_when_its_member_loses_the_leader() {
    // Goal: a stream opened with `hasleader: true` (as Kubernetes does) is closed
    // with `etcdserver: no leader` once its member has been without a leader for
    // a while, instead of silently serving a stale view.
    let mut cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let member = (leader + 1) % 3;
    let url = format!("http://127.0.0.1:{}", cluster.members[member].client_port);
    let mut client: WatchClient<Channel> = WatchClient::connect(url).await.expect("connect");
    let (requests, receiver) = mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    request.metadata_mut().insert(
        "hasleader",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut responses = client.watch(request).await.expect("watch").into_inner();
    requests
        .send(WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(prefix("r/"))),
        })
        .await
        .expect("create");
    let created = responses.message().await.expect("created").expect("open");
    assert!(created.created);
    for other in 0..3 {
        if other != member {
            cluster.stop_member(other).await.expect("clean stop");
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the stream ends within 20 s");
    let status = ended.expect("closed with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "etcdserver: no leader");
    drop(requests);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_lags_the_broadcast_catches_up_from_history() {
    // Goal: a slow watch stream costs bounded memory and loses nothing. A client
    // that stops reading fills the reply buffer and the HTTP/2 window; the stream
    // then falls more than the broadcast's 4096 revisions behind, and must catch
    // up from the keyspace's history: every revision once, in order.
    let cluster = TestCluster::start(3, Options::default()).await;
    let leader = cluster.wait_for_leader().await;
    let lags_before = mainstay_api::stream_lags_total();
    let mut stream = Stream::open(&cluster, leader).await;
    stream.create(prefix("slow/")).await;
    let created = stream.next().await;
    assert!(created.created);
    let first = created.header.map_or(0, |h| h.revision) + 1;
    // Writes the client does not read yet, 16 writers at a time: 4 KiB values,
    // so HTTP/2's 2 MiB stream window holds only about 500 of them and the
    // rest must wait in the 64-reply buffer and the 4096-revision broadcast.
    const WRITES: usize = 6000;
    let value = "v".repeat(4096);
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..16 {
        let mut kv = cluster.kv(leader).await;
        let value = value.clone();
        writers.spawn(async move {
            for i in (writer..WRITES).step_by(16) {
                kv.put(mainstay_proto::etcdserverpb::PutRequest {
                    key: format!("slow/{i:05}").into_bytes(),
                    value: value.clone().into_bytes().into(),
                    ..Default::default()
                })
                .await
                .expect("put");
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("writer");
    }
    let last = first + WRITES as i64 - 1;
    let mut expected = first;
    while expected <= last {
        let response = stream.next().await;
        for event in &response.events {
            let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
            assert_eq!(revision, expected, "every revision once, in order");
            expected += 1;
        }
    }
    assert!(
        mainstay_api::stream_lags_total() > lags_before,
        "the stream never fell behind the broadcast: the test did not exercise catch-up"
    );
    cluster.shutdown().await;
}
