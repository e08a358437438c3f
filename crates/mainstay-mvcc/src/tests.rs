//! Semantics tests (each following an etcd behaviour) and a property test of
//! `KeySpace::apply` + `range` against a plain reference model.

use bytes::Bytes;
use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::*;

/// The context of an entry at an arbitrary log index (only lease ids depend on it).
const CTX: ApplyContext = ApplyContext {
    log_index: 7,
    prev_values: false,
};

/// A keyspace rebuilt from what storage would persist of `space`.
fn restored(space: &KeySpace) -> KeySpace {
    let space = space.materialized().expect("every value in memory");
    let records: Vec<(Vec<u8>, Record)> = space
        .records()
        .map(|(key, record)| (key.to_vec(), record.clone()))
        .collect();
    KeySpace::restore(
        records,
        space.leases().collect::<Vec<_>>(),
        space.revision(),
        space.compacted_revision(),
    )
}

fn put(space: &mut KeySpace, key: &str, value: &str) -> Applied {
    let request = PutRequest {
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..PutRequest::default()
    };
    space.apply(&Command::Put(request), &CTX)
}

fn delete(space: &mut KeySpace, key: &str, range_end: &str) -> Applied {
    let request = DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        prev_kv: true,
    };
    space.apply(&Command::DeleteRange(request), &CTX)
}

fn get_range(space: &KeySpace, key: &str, range_end: &str) -> RangeResponse {
    let request = RangeRequest {
        key: key.into(),
        range_end: range_end.into(),
        ..RangeRequest::default()
    };
    space.range(&request).expect("range")
}

fn keys(response: &RangeResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[test]
fn revisions_follow_etcd() {
    // Goal: a fresh store is at revision 1, each effective write bumps it once,
    // and the per-key version/create/mod revisions follow etcd (kv.go docs).
    let mut space = KeySpace::new();
    assert_eq!(space.revision(), 1);
    put(&mut space, "a", "1");
    put(&mut space, "a", "2");
    assert_eq!(space.revision(), 3);
    let kv = space.get(b"a", 3).expect("readable").expect("live");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // A delete of nothing changes nothing.
    let applied = delete(&mut space, "zzz", "");
    assert_eq!(space.revision(), 3);
    assert!(applied.changes.is_empty());
    // Delete then re-create: version restarts, create revision moves.
    let applied = delete(&mut space, "a", "");
    assert_eq!(space.revision(), 4);
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].kind, EventKind::Delete);
    put(&mut space, "a", "3");
    let kv = space.get(b"a", 5).expect("readable").expect("live");
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // History stays readable.
    assert_eq!(
        space.get(b"a", 3).expect("readable").expect("old").value,
        &b"2"[..]
    );
    assert!(space.get(b"a", 4).expect("readable").is_none());
}

#[test]
fn range_end_rules() {
    // Goal: empty range_end = one key, "\0" = from key on, prefix+1 = prefix,
    // "\0"/"\0" = everything, end ≤ key = nothing (etcd RangeRequest docs).
    let mut space = KeySpace::new();
    for key in ["a", "ab", "abc", "b", "c"] {
        put(&mut space, key, "v");
    }
    assert_eq!(keys(&get_range(&space, "ab", "")), ["ab"]);
    assert_eq!(
        keys(&get_range(&space, "ab", "\0")),
        ["ab", "abc", "b", "c"]
    );
    assert_eq!(keys(&get_range(&space, "a", "b")), ["a", "ab", "abc"]);
    assert_eq!(keys(&get_range(&space, "\0", "\0")).len(), 5);
    assert!(keys(&get_range(&space, "c", "a")).is_empty());
}

#[test]
fn limit_count_sort_and_filters() {
    // Goal: count ignores limit and filters; more reflects the limit; sorting
    // by a non-key target defaults to ascending (etcd txn/range.go behaviour).
    let mut space = KeySpace::new();
    put(&mut space, "k1", "c");
    put(&mut space, "k2", "a");
    put(&mut space, "k3", "b");
    put(&mut space, "k1", "d");
    let mut request = RangeRequest {
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        limit: 2,
        ..RangeRequest::default()
    };
    let response = space.range(&request).expect("range");
    assert_eq!(
        (keys(&response), response.more, response.count),
        (vec!["k1".into(), "k2".into()], true, 3)
    );
    request.limit = 0;
    request.sort_target = SortTarget::Value;
    assert_eq!(
        keys(&space.range(&request).expect("range")),
        ["k2", "k3", "k1"]
    );
    request.sort_order = SortOrder::Descend;
    request.sort_target = SortTarget::Mod;
    assert_eq!(
        keys(&space.range(&request).expect("range")),
        ["k1", "k3", "k2"]
    );
    request.sort_order = SortOrder::None;
    request.sort_target = SortTarget::Key;
    request.min_mod_revision = 4;
    let response = space.range(&request).expect("range");
    assert_eq!(
        (keys(&response), response.count),
        (vec!["k1".to_string(), "k3".to_string()], 3)
    );
    request.min_mod_revision = 0;
    request.count_only = true;
    let response = space.range(&request).expect("range");
    assert!(response.kvs.is_empty());
    assert_eq!(response.count, 3);
    request.count_only = false;
    request.keys_only = true;
    assert!(
        space
            .range(&request)
            .expect("range")
            .kvs
            .iter()
            .all(|kv| kv.value.is_empty())
    );
}

#[test]
fn compaction_and_revision_errors() {
    // Goal: reads below the compacted revision fail, the state at it survives,
    // future revisions fail, and compacting twice at the same point fails.
    let mut space = KeySpace::new();
    put(&mut space, "a", "1"); // 2
    put(&mut space, "a", "2"); // 3
    put(&mut space, "b", "1"); // 4
    delete(&mut space, "b", ""); // 5
    let compact = Command::Compact(CompactionRequest {
        revision: 4,
        physical: false,
    });
    assert!(space.apply(&compact, &CTX).result.is_ok());
    assert_eq!(space.revision(), 5, "compaction does not bump the revision");
    let at = |revision| RangeRequest {
        key: b"a".to_vec(),
        revision,
        ..RangeRequest::default()
    };
    assert_eq!(space.range(&at(3)), Err(MvccError::Compacted));
    assert_eq!(
        space.range(&at(4)).expect("at compacted").kvs[0].value,
        &b"2"[..]
    );
    assert_eq!(space.range(&at(6)), Err(MvccError::FutureRevision));
    assert_eq!(
        space.apply(&compact, &CTX).result,
        Err(MvccError::Compacted)
    );
    let future = Command::Compact(CompactionRequest {
        revision: 9,
        physical: false,
    });
    assert_eq!(
        space.apply(&future, &CTX).result,
        Err(MvccError::FutureRevision)
    );
}

#[test]
fn put_options() {
    // Goal: ignore_value / ignore_lease / prev_kv behave as etcd's Put.
    let mut space = KeySpace::new();
    let ignore = PutRequest {
        key: b"x".to_vec(),
        ignore_value: true,
        ..PutRequest::default()
    };
    let applied = space.apply(&Command::Put(ignore.clone()), &CTX);
    assert_eq!(applied.result, Err(MvccError::KeyNotFound));
    put(&mut space, "x", "keep");
    let applied = space.apply(
        &Command::Put(PutRequest {
            prev_kv: true,
            ..ignore.clone()
        }),
        &CTX,
    );
    let Ok(CommandResponse::Put(response)) = applied.result else {
        panic!("put failed")
    };
    assert_eq!(response.prev_kv.expect("prev").value, &b"keep"[..]);
    assert_eq!(
        space
            .get(b"x", space.revision())
            .expect("readable")
            .expect("x")
            .value,
        &b"keep"[..]
    );
    let both = PutRequest {
        value: Bytes::from_static(b"v"),
        ..ignore
    };
    assert_eq!(
        space.apply(&Command::Put(both), &CTX).result,
        Err(MvccError::ValueProvided)
    );
    let leased = PutRequest {
        key: b"y".to_vec(),
        lease: 7,
        ..PutRequest::default()
    };
    assert_eq!(
        space.apply(&Command::Put(leased), &CTX).result,
        Err(MvccError::LeaseNotFound)
    );
}

fn compare(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: key.into(),
        range_end: Vec::new(),
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp::Put(PutRequest {
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..PutRequest::default()
    })
}

#[test]
fn txn_semantics() {
    // Goal: missing keys compare as zero except VALUE (always false); one revision
    // for all writes; read-only txns do not bump; nested txns run; a failing op
    // rolls the whole txn back.
    let mut space = KeySpace::new();
    let create = TxnRequest {
        compare: vec![compare("k", CompareResult::Equal, CompareTarget::Mod(0))],
        success: vec![put_op("k", "1"), put_op("j", "1")],
        failure: vec![RequestOp::Range(RangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })],
    };
    let applied = space.apply(&Command::Txn(create.clone()), &CTX);
    let Ok(CommandResponse::Txn(response)) = applied.result else {
        panic!("txn")
    };
    assert!(response.succeeded);
    assert_eq!(space.revision(), 2);
    assert_eq!(applied.events.len(), 2);
    let ResponseOp::Put(inner) = &response.responses[0] else {
        panic!("put")
    };
    assert_eq!(inner.revision, 2);
    let applied = space.apply(&Command::Txn(create), &CTX);
    let Ok(CommandResponse::Txn(response)) = applied.result else {
        panic!("txn")
    };
    assert!(!response.succeeded);
    assert_eq!(space.revision(), 2, "read-only txn does not bump");
    let missing_value = TxnRequest {
        compare: vec![compare(
            "nope",
            CompareResult::NotEqual,
            CompareTarget::Value(b"x".to_vec()),
        )],
        ..Default::default()
    };
    let Ok(CommandResponse::Txn(response)) = space.apply(&Command::Txn(missing_value), &CTX).result
    else {
        panic!("txn")
    };
    assert!(
        !response.succeeded,
        "VALUE compare on a missing key is false"
    );
    let nested = TxnRequest {
        success: vec![RequestOp::Txn(TxnRequest {
            compare: vec![compare(
                "k",
                CompareResult::Greater,
                CompareTarget::Version(0),
            )],
            success: vec![put_op("n", "1")],
            failure: vec![],
        })],
        ..Default::default()
    };
    space.apply(&Command::Txn(nested), &CTX);
    assert!(space.get(b"n", 3).expect("readable").is_some());
    let failing = TxnRequest {
        success: vec![
            put_op("m", "1"),
            RequestOp::Put(PutRequest {
                key: b"q".to_vec(),
                ignore_value: true,
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    let before = space.clone();
    assert_eq!(
        space.apply(&Command::Txn(failing), &CTX).result,
        Err(MvccError::KeyNotFound)
    );
    assert_eq!(space, before, "a failed txn changes nothing");
}

#[test]
fn txn_validation() {
    // Goal: etcd's duplicate-key and max-ops rules (v3rpc checkIntervals).
    let dup = TxnRequest {
        success: vec![put_op("a", "1"), put_op("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&dup, 128), Err(MvccError::DuplicateKey));
    let in_deleted = TxnRequest {
        success: vec![
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"c".to_vec(),
                prev_kv: false,
            }),
            put_op("b", "1"),
        ],
        ..Default::default()
    };
    assert_eq!(validate_txn(&in_deleted, 128), Err(MvccError::DuplicateKey));
    let branches = TxnRequest {
        success: vec![put_op("a", "1")],
        failure: vec![put_op("a", "2")],
        ..Default::default()
    };
    assert_eq!(validate_txn(&branches, 128), Ok(()));
    let nested_both = TxnRequest {
        success: vec![RequestOp::Txn(branches.clone())],
        ..Default::default()
    };
    assert_eq!(validate_txn(&nested_both, 128), Ok(()));
    let nested_clash = TxnRequest {
        success: vec![put_op("a", "0"), RequestOp::Txn(branches)],
        ..Default::default()
    };
    assert_eq!(
        validate_txn(&nested_clash, 128),
        Err(MvccError::DuplicateKey)
    );
    let many = TxnRequest {
        success: (0..3).map(|i| put_op(&format!("k{i}"), "v")).collect(),
        ..Default::default()
    };
    assert_eq!(validate_txn(&many, 2), Err(MvccError::TooManyOps));
    let empty = TxnRequest {
        compare: vec![compare("", CompareResult::Equal, CompareTarget::Version(0))],
        ..Default::default()
    };
    assert_eq!(validate_txn(&empty, 128), Err(MvccError::EmptyKey));
}

#[test]
fn restore_round_trip_and_hash() {
    // Goal: a keyspace rebuilt from its records equals the original, and equal
    // keyspaces hash equally while different ones do not.
    let mut space = KeySpace::new();
    put(&mut space, "a", "1");
    put(&mut space, "b", "2");
    delete(&mut space, "a", "");
    let restored = restored(&space);
    assert_eq!(restored, space.materialized().expect("values"));
    assert_eq!(restored.hash(0), space.hash(0));
    let mut other = space.clone();
    put(&mut other, "c", "3");
    assert_ne!(other.hash(0), space.hash(0));
    assert_eq!(other.hash(space.revision()), space.hash(0));
}

// ---- Property test against a reference model -------------------------------

/// The reference: a full copy of the live map after every revision.
#[derive(Clone, Debug)]
struct Model {
    snapshots: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: i64,
}

impl Model {
    fn new() -> Self {
        // Index = revision; revisions 0 and 1 are empty.
        Model {
            snapshots: vec![BTreeMap::new(), BTreeMap::new()],
            compacted: 0,
        }
    }
    fn revision(&self) -> i64 {
        self.snapshots.len() as i64 - 1
    }
    fn current(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        self.snapshots.last().expect("non-empty")
    }
    fn put(next: &mut BTreeMap<Vec<u8>, KeyValue>, revision: i64, key: &[u8], value: &[u8]) {
        let previous = next.get(key).cloned();
        next.insert(
            key.to_vec(),
            KeyValue {
                key: key.to_vec(),
                create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
                mod_revision: revision,
                version: previous.map_or(1, |p| p.version + 1),
                value: Bytes::copy_from_slice(value),
                lease: 0,
            },
        );
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8, u8),
    CasPut {
        key: u8,
        expect_version: i64,
        value: u8,
    },
    Get {
        key: u8,
        end: u8,
        back: i64,
    },
    Compact(i64),
}

fn key_of(k: u8) -> Vec<u8> {
    vec![b'a' + (k % 6)]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (any::<u8>(), 0u8..3).prop_map(|(k, width)| Op::Delete(k, width)),
        2 => (any::<u8>(), 0i64..3, any::<u8>())
            .prop_map(|(key, expect_version, value)| Op::CasPut { key, expect_version, value }),
        3 => (any::<u8>(), 0u8..4, 0i64..6).prop_map(|(key, end, back)| Op::Get { key, end, back }),
        1 => (0i64..4).prop_map(Op::Compact),
    ]
}

fn end_of(key: &[u8], width: u8) -> Vec<u8> {
    if width == 0 {
        Vec::new()
    } else {
        vec![key[0] + width]
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn keyspace_matches_reference_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        // Goal: every response and every historical read equals the model's.
        let mut space = KeySpace::new();
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    let applied = space.apply(&Command::Put(PutRequest { key: key_of(k), value: Bytes::from(vec![v]), ..Default::default() }), &CTX);
                    let mut next = model.current().clone();
                    Model::put(&mut next, model.revision() + 1, &key_of(k), &[v]);
                    model.snapshots.push(next);
                    prop_assert!(applied.result.is_ok());
                }
                Op::Delete(k, width) => {
                    let key = key_of(k);
                    let end = end_of(&key, width);
                    let applied = space.apply(&Command::DeleteRange(DeleteRangeRequest { key: key.clone(), range_end: end.clone(), prev_kv: false }), &CTX);
                    let mut next = model.current().clone();
                    let doomed: Vec<Vec<u8>> = next.keys().filter(|x| in_range(x, &key, &end)).cloned().collect();
                    for x in &doomed { next.remove(x); }
                    let Ok(CommandResponse::DeleteRange(response)) = applied.result else { panic!("delete") };
                    prop_assert_eq!(response.deleted, doomed.len() as i64);
                    if !doomed.is_empty() { model.snapshots.push(next); }
                }
                Op::CasPut { key, expect_version, value } => {
                    let key = key_of(key);
                    let txn = TxnRequest {
                        compare: vec![Compare { result: CompareResult::Equal, target: CompareTarget::Version(expect_version), key: key.clone(), range_end: vec![] }],
                        success: vec![RequestOp::Put(PutRequest { key: key.clone(), value: Bytes::from(vec![value]), ..Default::default() })],
                        failure: vec![RequestOp::Range(RangeRequest { key: key.clone(), ..Default::default() })],
                    };
                    let applied = space.apply(&Command::Txn(txn), &CTX);
                    let version = model.current().get(&key).map_or(0, |kv| kv.version);
                    let Ok(CommandResponse::Txn(response)) = applied.result else { panic!("txn") };
                    prop_assert_eq!(response.succeeded, version == expect_version);
                    if version == expect_version {
                        let mut next = model.current().clone();
                        Model::put(&mut next, model.revision() + 1, &key, &[value]);
                        model.snapshots.push(next);
                    } else {
                        let ResponseOp::Range(range) = &response.responses[0] else { panic!("range") };
                        prop_assert_eq!(range.kvs.first(), model.current().get(&key));
                    }
                }
                Op::Get { key, end, back } => {
                    let key = key_of(key);
                    let range_end = end_of(&key, end);
                    let revision = if back == 0 { 0 } else { model.revision() - back + 1 };
                    let result = space.range(&RangeRequest { key: key.clone(), range_end: range_end.clone(), revision, ..Default::default() });
                    let at = if revision <= 0 { model.revision() } else { revision };
                    if at < 1 || (revision > 0 && revision < model.compacted) {
                        prop_assert!(result.is_err());
                    } else {
                        let expected: Vec<KeyValue> = model.snapshots[at as usize].values().filter(|kv| in_range(&kv.key, &key, &range_end)).cloned().collect();
                        let response = result.expect("readable");
                        prop_assert_eq!(response.count, expected.len() as i64);
                        prop_assert_eq!(response.kvs, expected);
                    }
                }
                Op::Compact(back) => {
                    let target = model.revision() - back;
                    let result = space.apply(&Command::Compact(CompactionRequest { revision: target, physical: false }), &CTX).result;
                    if target <= model.compacted || target < 1 {
                        prop_assert!(result.is_err());
                    } else {
                        prop_assert!(result.is_ok());
                        model.compacted = target;
                    }
                }
            }
            prop_assert_eq!(space.revision(), model.revision().max(1));
        }
    }
}

fn grant(space: &mut KeySpace, id: i64, ttl: i64, log_index: u64) -> Result<i64, MvccError> {
    let command = Command::LeaseGrant(LeaseGrantRequest { id, ttl });
    match space
        .apply(
            &command,
            &ApplyContext {
                log_index,
                prev_values: false,
            },
        )
        .result?
    {
        CommandResponse::LeaseGrant(response) => Ok(response.id),
        other => panic!("unexpected {other:?}"),
    }
}

fn leased_put(space: &mut KeySpace, key: &str, lease: i64) -> Applied {
    let request = PutRequest {
        key: key.into(),
        value: Bytes::from_static(b"v"),
        lease,
        ..PutRequest::default()
    };
    space.apply(&Command::Put(request), &CTX)
}

#[test]
fn leases_grant_attach_and_revoke_in_one_revision() {
    // Goal: etcd's lease semantics in the state machine. A grant does not move the
    // revision; ids are chosen deterministically (the same on every replica) or
    // taken as asked, and a taken id is refused; keys attach with Put; a revoke
    // deletes every attached key in ONE revision with one delete event each; a key
    // re-put under another lease (or none) is no longer the old lease's.
    let mut space = KeySpace::new();
    let before = space.revision();
    let a = grant(&mut space, 0, 10, 42).expect("grant");
    assert_ne!(a, 0);
    assert_eq!(
        space.revision(),
        before,
        "a grant does not move the revision"
    );
    let mut replica = KeySpace::new();
    assert_eq!(
        grant(&mut replica, 0, 10, 42),
        Ok(a),
        "same id on every replica"
    );
    assert_eq!(grant(&mut space, 5, 10, 43), Ok(5));
    assert_eq!(grant(&mut space, 5, 10, 44), Err(MvccError::LeaseExists));
    assert_eq!(
        grant(&mut space, 0, LEASE_TTL_MAX + 1, 45),
        Err(MvccError::LeaseTtlTooLarge)
    );
    for key in ["k1", "k2", "k3"] {
        assert!(leased_put(&mut space, key, a).result.is_ok());
    }
    assert!(
        leased_put(&mut space, "k3", 5).result.is_ok(),
        "moved to lease 5"
    );
    assert!(leased_put(&mut space, "k2", 0).result.is_ok(), "detached");
    assert_eq!(space.lease_keys(a), vec![b"k1".to_vec()]);
    assert_eq!(
        leased_put(&mut space, "k4", 999).result,
        Err(MvccError::LeaseNotFound)
    );

    let revision = space.revision();
    let revoke = Command::LeaseRevoke(LeaseRevokeRequest { id: 5 });
    let applied = space.apply(&revoke, &CTX);
    assert_eq!(
        applied.result,
        Ok(CommandResponse::LeaseRevoke(LeaseRevokeResponse {
            revision: revision + 1,
            deleted: 1
        }))
    );
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].kind, EventKind::Delete);
    assert!(applied.changes.contains(&Change::LeaseRemove(5)));
    assert_eq!(space.lease(5), None);
    assert!(
        space
            .get(b"k3", space.revision())
            .expect("readable")
            .is_none()
    );
    assert!(
        space
            .get(b"k2", space.revision())
            .expect("readable")
            .is_some(),
        "k2 was detached"
    );
    assert_eq!(
        space.apply(&revoke, &CTX).result,
        Err(MvccError::LeaseNotFound)
    );
    // A lease with no keys revokes without moving the revision.
    let empty = grant(&mut space, 0, 10, 50).expect("grant");
    let revision = space.revision();
    let applied = space.apply(
        &Command::LeaseRevoke(LeaseRevokeRequest { id: empty }),
        &CTX,
    );
    assert!(applied.result.is_ok());
    assert_eq!(space.revision(), revision);

    // Restoring from persisted records and leases rebuilds the index.
    let restored = restored(&space);
    assert_eq!(restored, space.materialized().expect("values"));
    assert_eq!(restored.lease_keys(a), vec![b"k1".to_vec()]);
}

#[test]
fn a_watch_from_the_compacted_revision_gets_all_of_its_events() {
    // Goal: better than etcd. Events of exactly the compacted revision stay
    // readable, a delete and each event's prev_kv included; below it, refused.
    let mut space = KeySpace::new();
    put(&mut space, "a", "1"); // 2
    put(&mut space, "b", "1"); // 3
    delete(&mut space, "a", ""); // 4
    put(&mut space, "b", "2"); // 5
    for revision in [4, 5] {
        let mut copy = space.clone();
        let compact = Command::Compact(CompactionRequest {
            revision,
            physical: false,
        });
        assert!(copy.apply(&compact, &CTX).result.is_ok());
        let events = copy.events(b"a", b"c", revision, 5).expect("at compacted");
        let first = &events[0];
        assert_eq!(first.0, revision);
        let (kind, prev) = if revision == 4 {
            (EventKind::Delete, b"1")
        } else {
            (EventKind::Put, b"1")
        };
        assert_eq!(first.1.kind, kind, "at {revision}");
        assert_eq!(
            first.1.prev_kv.as_ref().map(|kv| &kv.value[..]),
            Some(prev.as_slice()),
            "prev_kv at {revision}"
        );
        assert_eq!(
            copy.events(b"a", b"c", revision - 1, 5),
            Err(MvccError::Compacted)
        );
    }
}

/// A value store over a copy of what was written, which can be made to fail.
struct MapValues {
    values: BTreeMap<(Vec<u8>, Revision), Bytes>,
    failing: std::sync::atomic::AtomicBool,
    reads: std::sync::atomic::AtomicUsize,
}

impl ValueStore for MapValues {
    fn value(&self, key: &[u8], revision: Revision) -> Result<Bytes, String> {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("disk on fire".to_string());
        }
        self.values
            .get(&(key.to_vec(), revision))
            .cloned()
            .ok_or_else(|| "no such row".to_string())
    }
}

/// Every value of `space`, as a store holding them all would give them.
fn store_of(space: &KeySpace) -> BTreeMap<(Vec<u8>, Revision), Bytes> {
    space
        .materialized()
        .expect("every value in memory")
        .records()
        .filter_map(|(key, record)| {
            record.live.as_ref().map(|live| match &live.value {
                Value::Inline(bytes) => ((key.to_vec(), record.revision), bytes.clone()),
                Value::Pending(_) | Value::Stored => unreachable!("materialized"),
            })
        })
        .collect()
}

#[test]
fn released_values_are_read_from_the_store_and_later_ones_from_memory() {
    // Goal: releasing the values up to a revision (a state commit holding
    // every write up to it) makes exactly those reads go to the store; values
    // of later writes are still answered from memory; a rolled-back write's
    // value leaves nothing pending behind; reads give the same answers
    // throughout.
    let mut space = KeySpace::new();
    put(&mut space, "a", "1");
    put(&mut space, "b", "2");
    let full = {
        let mut copy = space.clone();
        put(&mut copy, "a", "3");
        put(&mut copy, "c", "4");
        store_of(&copy)
    };
    let store = std::sync::Arc::new(MapValues {
        values: full,
        failing: false.into(),
        reads: 0.into(),
    });
    space.set_value_store(store.clone());
    let committed = space.revision();
    put(&mut space, "a", "3");
    // A Txn whose second put fails (a lease that does not exist) rolls back
    // its first put, value included.
    let failing = TxnRequest {
        compare: vec![],
        success: vec![
            RequestOp::Put(PutRequest {
                key: b"x".to_vec(),
                value: Bytes::from_static(b"gone"),
                ..PutRequest::default()
            }),
            RequestOp::Put(PutRequest {
                key: b"y".to_vec(),
                lease: 99,
                ..PutRequest::default()
            }),
        ],
        failure: vec![],
    };
    let failed = space.apply(&Command::Txn(failing), &CTX);
    assert_eq!(failed.result, Err(MvccError::LeaseNotFound));
    assert!(failed.changes.is_empty());
    put(&mut space, "c", "4");
    let answers = |space: &KeySpace| get_range(space, "a", "d");
    let expected = answers(&space);
    assert_eq!(store.reads.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(space.release_values(committed), 2, "a=1 and b=2");
    assert_eq!(answers(&space), expected);
    assert_eq!(
        store.reads.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "b=2 from the store; a=3 and c=4 from memory"
    );
    assert_eq!(
        space.release_values(space.revision()),
        2,
        "a=3 and c=4; no x"
    );
    assert_eq!(answers(&space), expected);
    assert_eq!(store.reads.load(std::sync::atomic::Ordering::Relaxed), 4);
    assert_eq!(space.release_values(space.revision()), 0);
}

#[test]
fn evicted_values_are_read_from_the_store_and_a_failing_store_is_an_error() {
    // Goal: after eviction every read, event, compare and hash gives the same
    // answers as with values in memory, reading only the values it answers
    // (none for count_only / keys_only); a store that cannot read is a
    // `ValueUnreadable` error, never a wrong or empty value.
    let mut space = KeySpace::new();
    put(&mut space, "a", "1");
    put(&mut space, "b", "2");
    put(&mut space, "a", "3");
    let before = space.clone();
    let hash = space.hash(0).expect("hash");
    let values = store_of(&space);
    let store = std::sync::Arc::new(MapValues {
        values,
        failing: false.into(),
        reads: 0.into(),
    });
    space.set_value_store(store.clone());
    space.evict_all();
    assert!(space.records().all(|(_, record)| {
        record
            .live
            .as_ref()
            .is_none_or(|live| live.value == Value::Stored)
    }));
    assert_eq!(
        space.materialized().expect("values"),
        before.materialized().expect("values")
    );
    assert_eq!(space.hash(0).expect("hash"), hash);
    assert_eq!(get_range(&space, "a", "c"), get_range(&before, "a", "c"));
    assert_eq!(
        space.events(b"a", b"c", 2, 4).expect("events"),
        before.events(b"a", b"c", 2, 4).expect("events")
    );
    // Metadata-only answers read no value.
    let reads = store.reads.load(std::sync::atomic::Ordering::Relaxed);
    for request in [
        RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            count_only: true,
            ..RangeRequest::default()
        },
        RangeRequest {
            key: b"a".to_vec(),
            range_end: b"c".to_vec(),
            keys_only: true,
            ..RangeRequest::default()
        },
    ] {
        assert_eq!(space.range(&request), before.range(&request));
    }
    assert_eq!(
        store.reads.load(std::sync::atomic::Ordering::Relaxed),
        reads
    );
    // A put after eviction leaves the previous value unread in its event
    // (the sender reads it for a watcher that asks), but reads it when the
    // request asks for prev_kv.
    let mut written = space.clone();
    let reads = store.reads.load(std::sync::atomic::Ordering::Relaxed);
    let applied = put(&mut written, "a", "4");
    assert_eq!(
        store.reads.load(std::sync::atomic::Ordering::Relaxed),
        reads
    );
    let event = &applied.events[0];
    assert!(event.prev_value_stored);
    let prev = event.prev_kv.as_ref().expect("previous");
    assert_eq!((prev.mod_revision, prev.value.is_empty()), (4, true));
    assert_eq!(
        written
            .get(&prev.key, prev.mod_revision)
            .expect("readable")
            .map(|kv| kv.value),
        Some(Bytes::from_static(b"3"))
    );
    let applied = written.apply(
        &Command::Put(PutRequest {
            key: b"a".to_vec(),
            value: Bytes::from_static(b"6"),
            prev_kv: true,
            ..PutRequest::default()
        }),
        &CTX,
    );
    match applied.result {
        Ok(CommandResponse::Put(response)) => {
            assert_eq!(
                response.prev_kv.map(|kv| kv.value),
                Some(Bytes::from_static(b"4"))
            );
        }
        other => panic!("put: {other:?}"),
    }
    // A failing store: errors, never a value.
    store
        .failing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(matches!(
        space.get(b"a", space.revision()),
        Err(MvccError::ValueUnreadable(_))
    ));
    assert!(matches!(
        space.range(&RangeRequest {
            key: b"a".to_vec(),
            ..RangeRequest::default()
        }),
        Err(MvccError::ValueUnreadable(_))
    ));
    // A write that needs the previous value (prev_kv) fails and changes nothing.
    let revision = space.revision();
    let applied = space.apply(
        &Command::Put(PutRequest {
            key: b"a".to_vec(),
            value: Bytes::from_static(b"5"),
            prev_kv: true,
            ..PutRequest::default()
        }),
        &CTX,
    );
    assert!(matches!(applied.result, Err(MvccError::ValueUnreadable(_))));
    assert_eq!(
        space.revision(),
        revision,
        "the failed write changed nothing"
    );
}

#[test]
fn a_hash_in_parts_is_the_whole_hash_and_ignores_later_writes() {
    // Method: hash at a revision in parts of every size, with writes applied
    // between parts; then a compaction between parts is visible to the caller.
    let mut space = KeySpace::new();
    for i in 0..20 {
        put(&mut space, &format!("k{:02}", i % 7), &format!("v{i}"));
    }
    delete(&mut space, "k03", "");
    let revision = space.revision();
    let whole = space.hash(revision).expect("hash");
    for part in 1..9 {
        let mut later = space.clone();
        let mut hash = later.start_hash(revision).expect("start");
        let mut n = 0;
        while !later.hash_more(&mut hash, part).expect("part") {
            put(&mut later, &format!("new{n}"), "x");
            put(&mut later, "k01", "changed");
            n += 1;
        }
        assert_eq!(later.compacted_revision(), hash.compacted);
        assert_eq!(hash.finish(), whole, "parts of {part}");
    }
    let mut hash = space.start_hash(revision).expect("start");
    assert!(!space.hash_more(&mut hash, 1).expect("part"));
    space.compact(revision).expect("compact");
    assert_ne!(space.compacted_revision(), hash.compacted);
}

/// Alarms of the given kinds, raised for member 7.
fn alarms_of(kinds: &[AlarmKind]) -> Alarms {
    kinds
        .iter()
        .map(|kind| AlarmMember {
            member: 7,
            kind: *kind,
        })
        .collect()
}

#[test]
fn each_alarm_refuses_what_etcds_refuses() {
    use AlarmKind::{Corrupt, NoSpace};
    let put = Command::Put(PutRequest::default());
    let delete = Command::DeleteRange(DeleteRangeRequest::default());
    let reading_txn = Command::Txn(TxnRequest {
        success: vec![RequestOp::Range(RangeRequest::default())],
        failure: vec![RequestOp::DeleteRange(DeleteRangeRequest::default())],
        ..TxnRequest::default()
    });
    let nested_put = Command::Txn(TxnRequest {
        failure: vec![RequestOp::Txn(TxnRequest {
            success: vec![RequestOp::Put(PutRequest::default())],
            ..TxnRequest::default()
        })],
        ..TxnRequest::default()
    });
    let compact = Command::Compact(CompactionRequest::default());
    let grant = Command::LeaseGrant(LeaseGrantRequest::default());
    let revoke = Command::LeaseRevoke(LeaseRevokeRequest::default());
    let renew = Command::LeaseRenew(LeaseRenewRequest::default());
    let authorized_put = Command::Authorized {
        caller: mainstay_auth::Caller::anonymous(),
        command: Box::new(put.clone()),
    };
    let alarm = Command::Alarm(AlarmRequest {
        action: AlarmAction::Deactivate,
        alarm: AlarmMember {
            member: 7,
            kind: NoSpace,
        },
    });
    // (raised, command, refusal)
    let table: Vec<(&[AlarmKind], &Command, Option<MvccError>)> = vec![
        (&[], &put, None),
        (&[NoSpace], &put, Some(MvccError::NoSpace)),
        (&[NoSpace], &authorized_put, Some(MvccError::NoSpace)),
        (&[NoSpace], &delete, None),
        (&[NoSpace], &reading_txn, None),
        (&[NoSpace], &nested_put, Some(MvccError::NoSpace)),
        (&[NoSpace], &compact, None),
        (&[NoSpace], &grant, Some(MvccError::NoSpace)),
        (&[NoSpace], &revoke, None),
        (&[NoSpace], &renew, None),
        (&[NoSpace], &alarm, None),
        (&[Corrupt], &delete, Some(MvccError::Corrupt)),
        (&[Corrupt], &reading_txn, Some(MvccError::Corrupt)),
        (&[Corrupt], &compact, Some(MvccError::Corrupt)),
        (&[Corrupt], &revoke, Some(MvccError::Corrupt)),
        (&[Corrupt], &renew, None),
        (&[Corrupt], &alarm, None),
        (&[NoSpace, Corrupt], &put, Some(MvccError::Corrupt)),
    ];
    for (raised, command, refusal) in table {
        assert_eq!(
            alarm_refusal(&alarms_of(raised), command),
            refusal,
            "{raised:?} {command}"
        );
    }
}

#[test]
fn byte_strings_keep_their_stored_encoding() {
    // Goal: keys and values encode as a length then the raw bytes (serde's
    // bytes form), which in postcard is exactly what the element-by-element
    // form the log held before wrote; so a log written before either way
    // decodes, and the encoding below is the one on disk.
    #[derive(serde::Serialize)]
    enum OldCommand {
        Put(OldPut),
    }
    #[derive(serde::Serialize)]
    struct OldPut {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
        prev_kv: bool,
        ignore_value: bool,
        ignore_lease: bool,
    }
    let put = Command::Put(PutRequest {
        key: b"k".to_vec(),
        value: Bytes::from(vec![0xff; 130]),
        lease: 3,
        prev_kv: true,
        ..PutRequest::default()
    });
    let encoded = postcard::to_allocvec(&put).expect("encodes");
    let mut expected = vec![0, 1, b'k', 130, 1];
    expected.extend([0xff; 130]);
    expected.extend([6, 1, 0, 0]);
    assert_eq!(encoded, expected);
    let old = postcard::to_allocvec(&OldCommand::Put(OldPut {
        key: b"k".to_vec(),
        value: vec![0xff; 130],
        lease: 3,
        prev_kv: true,
        ignore_value: false,
        ignore_lease: false,
    }))
    .expect("encodes");
    assert_eq!(old, encoded);
    assert_eq!(postcard::from_bytes::<Command>(&old).ok(), Some(put));
    let live = Some(Live {
        create_revision: 2,
        version: 1,
        value: Value::Inline(Bytes::from_static(b"v")),
        lease: 0,
    });
    let stored = postcard::to_allocvec(&live).expect("encodes");
    assert_eq!(stored, [1, 4, 2, 1, b'v', 0]);
    assert_eq!(
        postcard::from_bytes::<Option<Live>>(&stored).ok(),
        Some(live)
    );
}

#[test]
fn a_revisions_events_come_in_the_order_the_request_wrote_them() {
    // Goal: etcd's order within one revision (its sub-revision): a Txn's
    // puts in operation order, a DeleteRange's keys in key order at its place
    // in the Txn; the same live, from history, and after a restore.
    let mut space = KeySpace::new();
    put(&mut space, "b1", "x"); // 2
    put(&mut space, "b2", "x"); // 3
    let txn = TxnRequest {
        compare: Vec::new(),
        success: vec![
            put_op("zz", "1"),
            RequestOp::DeleteRange(DeleteRangeRequest {
                key: b"b".to_vec(),
                range_end: b"c".to_vec(),
                prev_kv: false,
            }),
            put_op("/aa", "2"),
            put_op("mm", "3"),
        ],
        failure: Vec::new(),
    };
    let applied = space.apply(&Command::Txn(txn), &CTX);
    assert!(applied.result.is_ok());
    let want = ["zz", "b1", "b2", "/aa", "mm"];
    let live: Vec<String> = applied
        .events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.kv.key).into_owned())
        .collect();
    assert_eq!(live, want, "live");
    for (what, space) in [("history", space.clone()), ("restored", restored(&space))] {
        let events = space.events(&[0], &[0], 4, 4).expect("events");
        let keys: Vec<String> = events
            .iter()
            .map(|(_, e)| String::from_utf8_lossy(&e.kv.key).into_owned())
            .collect();
        assert_eq!(keys, want, "{what}");
    }
    // Records stored before positions were kept (all 0) replay in key order.
    let mut old: Vec<(Vec<u8>, Record)> = space
        .materialized()
        .expect("values")
        .records()
        .map(|(key, record)| (key.to_vec(), record.clone()))
        .collect();
    for (_, record) in &mut old {
        record.sub = 0;
    }
    let old = KeySpace::restore(
        old,
        space.leases().collect::<Vec<_>>(),
        space.revision(),
        space.compacted_revision(),
    );
    let keys: Vec<String> = old
        .events(&[0], &[0], 4, 4)
        .expect("events")
        .iter()
        .map(|(_, e)| String::from_utf8_lossy(&e.kv.key).into_owned())
        .collect();
    assert_eq!(keys, ["/aa", "b1", "b2", "mm", "zz"]);
}
