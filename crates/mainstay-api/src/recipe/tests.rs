//! The queue's plain decisions, case by case: key naming as etcd spells it,
//! prefix ranges, whose turn it is, who leads, and reading the txns' answers.

use mainstay_mvcc::{EventKind, RangeResponse};

use super::*;

fn kv(key: &str, create_revision: Revision) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision,
        mod_revision: create_revision,
        version: 1,
        value: Vec::new().into(),
        lease: 0,
    }
}

#[test]
fn lease_hex_is_gos_percent_x() {
    // Goal: queue keys are byte-identical to etcd's, which formats the lease
    // id (an int64) with Go's %x. Method: known ids, including the ones seen
    // from etcd 3.4.23 and the extremes.
    let cases: &[(i64, &str)] = &[
        (0, "0"),
        (255, "ff"),
        (0x390d_a246_699d_4f06, "390da246699d4f06"),
        (i64::MAX, "7fffffffffffffff"),
        (-1, "-1"),
        (-255, "-ff"),
        (i64::MIN, "-8000000000000000"),
    ];
    for (lease, hex) in cases {
        assert_eq!(lease_hex(*lease), *hex, "lease {lease}");
    }
    assert_eq!(queue_key(&queue_prefix(b"job"), 0x1a), b"job/1a".to_vec());
    assert_eq!(queue_key(&queue_prefix(b""), 7), b"/7".to_vec());
}

#[test]
fn prefix_end_follows_etcd() {
    // Goal: the range of a queue covers exactly the keys starting with its
    // prefix (etcd's GetPrefixRangeEnd). Method: plain, 0xff-tailed, all-0xff.
    let cases: &[(&[u8], &[u8])] = &[
        (b"job/", b"job0"),
        (b"a\xff", b"b"),
        (b"a\xff\xff", b"b"),
        (b"\xff\xff", b"\0"),
        (b"", b"\0"),
    ];
    for (prefix, end) in cases {
        assert_eq!(prefix_end(prefix), end.to_vec(), "prefix {prefix:?}");
    }
}

#[test]
fn turn_decides_from_create_revisions() {
    // Goal: a key is at the front only when no live key under the prefix is
    // older; it is gone when missing or re-created; a member that has not
    // applied its creation yet keeps it waiting. Method: one table.
    let own = "q/b";
    let cases: &[(&str, Vec<KeyValue>, Revision, Revision, Turn)] = &[
        ("alone", vec![kv(own, 5)], 5, 5, Turn::Front),
        (
            "older key waits",
            vec![kv("q/a", 4), kv(own, 5)],
            5,
            9,
            Turn::Behind,
        ),
        (
            "younger key behind",
            vec![kv(own, 5), kv("q/c", 6)],
            5,
            9,
            Turn::Front,
        ),
        (
            "older key in later key order",
            vec![kv(own, 5), kv("q/z", 3)],
            5,
            9,
            Turn::Behind,
        ),
        (
            "same txn shares the front",
            vec![kv("q/a", 5), kv(own, 5)],
            5,
            9,
            Turn::Front,
        ),
        ("own key deleted", vec![kv("q/a", 4)], 5, 9, Turn::Gone),
        ("own key re-created", vec![kv(own, 7)], 5, 9, Turn::Gone),
        ("not applied yet", Vec::new(), 5, 4, Turn::Behind),
    ];
    for (name, keys, own_create_revision, revision, expected) in cases {
        assert_eq!(
            turn(keys, own.as_bytes(), *own_create_revision, *revision),
            *expected,
            "{name}"
        );
    }
}

#[test]
fn first_created_is_the_leader() {
    // Goal: the holder/leader is the live key created first; ties go to the
    // lowest key. Method: one table.
    let cases: &[(&str, Vec<KeyValue>, Option<&str>)] = &[
        ("none", Vec::new(), None),
        ("one", vec![kv("e/1", 3)], Some("e/1")),
        (
            "oldest wins over key order",
            vec![kv("e/1", 9), kv("e/2", 4)],
            Some("e/2"),
        ),
        (
            "tie to the lowest key",
            vec![kv("e/1", 4), kv("e/2", 4)],
            Some("e/1"),
        ),
    ];
    for (name, keys, leader) in cases {
        let found = first_created(keys).map(|kv| kv.key.clone());
        assert_eq!(found, leader.map(|k| k.as_bytes().to_vec()), "{name}");
    }
}

#[test]
fn txns_have_etcds_shapes() {
    // Goal: the txns are etcd's recipes: create-if-absent guarded by create
    // revision 0 (lock and campaign), guarded by the caller's create revision
    // (proclaim, resign/withdraw). Method: build and inspect.
    let lock = lock_txn(b"l/1", 1, b"l/");
    assert_eq!(lock.compare, vec![create_revision_is(b"l/1", 0)]);
    assert_eq!(lock.success.len(), 2);
    assert_eq!(lock.failure.len(), 2);
    assert!(
        matches!(&lock.success[0], RequestOp::Put(p) if p.key == b"l/1" && p.lease == 1 && p.value.is_empty())
    );
    assert!(matches!(&lock.success[1], RequestOp::Range(r)
        if r.key == b"l/" && r.range_end == b"l0" && r.limit == 1
            && r.sort_order == SortOrder::Ascend && r.sort_target == SortTarget::Create));
    assert!(
        matches!(&lock.failure[0], RequestOp::Range(r) if r.key == b"l/1" && r.range_end.is_empty())
    );

    let campaign = campaign_txn(b"e/1", b"v", 1);
    assert!(
        matches!(&campaign.success[..], [RequestOp::Put(p)] if p.value == b"v"[..] && p.lease == 1)
    );
    assert!(matches!(&campaign.failure[..], [RequestOp::Range(_)]));

    let proclaim = proclaim_txn(b"e/1", 8, b"w", 1);
    assert_eq!(proclaim.compare, vec![create_revision_is(b"e/1", 8)]);
    assert!(proclaim.failure.is_empty());

    let withdraw = withdraw_txn(b"e/1", 8);
    assert_eq!(withdraw.compare, vec![create_revision_is(b"e/1", 8)]);
    assert!(matches!(&withdraw.success[..], [RequestOp::DeleteRange(d)] if d.key == b"e/1"));
}

#[test]
fn placed_reads_both_branches() {
    // Goal: the caller's create revision is the txn's revision when it created
    // the key, the found key's otherwise; the first-created key comes along
    // when read and decides whether the caller is first in line; any other
    // shape is refused. Method: hand-made answers.
    let range = |kvs: Vec<KeyValue>| {
        ResponseOp::Range(RangeResponse {
            revision: 9,
            kvs,
            more: false,
            count: 0,
        })
    };
    let created = TxnResponse {
        revision: 9,
        succeeded: true,
        responses: vec![
            ResponseOp::Put(mainstay_mvcc::PutResponse::default()),
            range(vec![kv("l/0", 4)]),
        ],
    };
    assert_eq!(
        placed(&created),
        Some(Placed {
            create_revision: 9,
            existing: None,
            first: Some(kv("l/0", 4)),
        })
    );
    let found = TxnResponse {
        revision: 9,
        succeeded: false,
        responses: vec![range(vec![kv("l/1", 6)])],
    };
    assert_eq!(
        placed(&found),
        Some(Placed {
            create_revision: 6,
            existing: Some(kv("l/1", 6)),
            first: None,
        })
    );
    assert!(
        !placed(&created).is_some_and(|p| p.first_in_line()),
        "l/0 is older"
    );
    let alone = Placed {
        create_revision: 9,
        existing: None,
        first: Some(kv("l/1", 9)),
    };
    assert!(alone.first_in_line());
    assert!(
        placed(&found).is_some_and(|p| p.first_in_line()),
        "nothing read"
    );
    let vanished = TxnResponse {
        revision: 9,
        succeeded: false,
        responses: vec![range(Vec::new())],
    };
    assert_eq!(placed(&vanished), None);
}

#[test]
fn touches_only_keys_under_the_prefix() {
    // Goal: waiters wake only for changes in their own queue. Method: events
    // on the prefix, beside it and on the bare name.
    let event = |key: &str| mainstay_mvcc::Event {
        kind: EventKind::Delete,
        kv: kv(key, 0),
        prev_kv: None,
        prev_value_stored: false,
    };
    assert!(touches(&[event("x"), event("job/1")], b"job/"));
    assert!(!touches(
        &[event("job"), event("jobs/1"), event("job0")],
        b"job/"
    ));
    assert!(!touches(&[], b"job/"));
}
