//! Hand-built histories that must pass or fail, and generated ones at scale.

use std::collections::BTreeMap;

use crate::*;

fn op(client: u64, input: Input, invoked: u64, returned: u64, outcome: Outcome) -> Operation {
    Operation {
        client,
        input,
        invoked,
        returned,
        outcome,
    }
}

fn put(key: &str, value: &str) -> Input {
    Input::Put {
        key: key.into(),
        value: value.into(),
    }
}

fn get(key: &str) -> Input {
    Input::Get { key: key.into() }
}

fn wrote(revision: i64) -> Outcome {
    Outcome::Ok(Output::Put { revision })
}

fn saw(value: Option<(&str, i64)>, header_revision: i64) -> Outcome {
    Outcome::Ok(Output::Get {
        value: value.map(|(v, m)| (v.as_bytes().to_vec(), m)),
        header_revision,
    })
}

fn assert_fails(history: &[Operation], expected: fn(&ViolationKind) -> bool) {
    let report = check(history);
    assert!(!report.ok(), "history should fail");
    assert!(
        report.violations.iter().any(|v| expected(&v.kind)),
        "{:?}",
        report.violations
    );
    // The report is readable: every violation prints its operations.
    for violation in &report.violations {
        let text = violation.to_string();
        assert!(text.lines().count() > violation.operations.len(), "{text}");
    }
}

fn not_linearizable(kind: &ViolationKind) -> bool {
    matches!(kind, ViolationKind::NotLinearizable { .. })
}

#[test]
fn timed_out_write_seen_later_passes() {
    let history = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(2, put("x", "2"), 5, 0, Outcome::Unknown),
        op(3, get("x"), 20, 30, saw(Some(("2", 3)), 3)),
    ];
    assert!(check(&history).ok(), "{:?}", check(&history));
}

#[test]
fn timed_out_write_never_seen_passes() {
    let history = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(2, put("x", "2"), 5, 0, Outcome::Unknown),
        op(3, get("x"), 20, 30, saw(Some(("1", 2)), 2)),
        op(3, get("x"), 40, 50, saw(Some(("1", 2)), 2)),
    ];
    assert!(check(&history).ok());
}

#[test]
fn concurrent_read_may_see_either_value() {
    for seen in [Some(("1", 2)), None] {
        let history = [
            op(1, put("x", "1"), 0, 20, wrote(2)),
            op(
                2,
                get("x"),
                5,
                10,
                saw(seen, if seen.is_some() { 2 } else { 1 }),
            ),
        ];
        assert!(check(&history).ok(), "{seen:?}");
    }
}

#[test]
fn chains_of_timed_out_writes_are_found_by_the_exhaustive_pass() {
    // Goal: a read that needs two timed-out writes in a row (a put, then a CAS
    // that only holds after it) is accepted: the fast pass places one unknown
    // operation before a known one, so this exercises the exhaustive fallback.
    let cas = Input::Txn {
        guards: vec![(b"x".to_vec(), 3)],
        puts: vec![(b"x".to_vec(), b"3".to_vec())],
    };
    let history = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(2, get("x"), 11, 12, saw(Some(("1", 2)), 2)),
        op(3, put("x", "2"), 20, 0, Outcome::Unknown),
        op(4, cas, 21, 0, Outcome::Unknown),
        op(5, get("x"), 40, 50, saw(Some(("3", 4)), 4)),
    ];
    let report = check(&history);
    assert!(report.ok(), "{:?}", report.violations);
}

#[test]
fn stale_read_after_completed_write_fails() {
    let history = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(1, put("x", "2"), 20, 30, wrote(3)),
        op(2, get("x"), 40, 50, saw(Some(("1", 2)), 3)),
    ];
    assert_fails(&history, not_linearizable);
}

#[test]
fn lost_acknowledged_write_fails() {
    let history = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(2, get("x"), 20, 30, saw(None, 2)),
    ];
    assert_fails(&history, not_linearizable);
}

#[test]
fn timed_out_write_seen_then_unseen_fails() {
    let history = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(2, put("x", "2"), 15, 0, Outcome::Unknown),
        op(3, get("x"), 20, 30, saw(Some(("2", 3)), 3)),
        op(3, get("x"), 40, 50, saw(Some(("1", 2)), 3)),
    ];
    assert_fails(&history, not_linearizable);
}

#[test]
fn revision_going_backwards_fails() {
    // Each key alone is fine; across keys the revision order contradicts real time.
    let history = [
        op(1, put("x", "1"), 0, 10, wrote(5)),
        op(2, put("y", "1"), 20, 30, wrote(4)),
    ];
    assert_fails(&history, |k| {
        matches!(k, ViolationKind::RevisionWentBackwards)
    });
    let reads = [
        op(1, get("x"), 0, 10, saw(None, 7)),
        op(2, get("y"), 20, 30, saw(None, 6)),
    ];
    assert_fails(&reads, |k| {
        matches!(k, ViolationKind::RevisionWentBackwards)
    });
}

#[test]
fn duplicate_write_revision_fails() {
    let history = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(2, put("y", "1"), 5, 15, wrote(2)),
    ];
    assert_fails(&history, |k| {
        matches!(k, ViolationKind::DuplicateRevision(2))
    });
}

#[test]
fn multi_key_txn_uses_a_combined_model() {
    // A CAS on x that writes y: y's value must follow x's state.
    let txn = |expected: i64| Input::Txn {
        guards: vec![(b"x".to_vec(), expected)],
        puts: vec![(b"y".to_vec(), b"t".to_vec())],
    };
    let good = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(
            2,
            txn(2),
            20,
            30,
            Outcome::Ok(Output::Txn {
                succeeded: true,
                revision: 3,
            }),
        ),
        op(3, get("y"), 40, 50, saw(Some(("t", 3)), 3)),
    ];
    let report = check(&good);
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.partitions, 1, "x and y share a partition");
    let bad = [
        op(1, put("x", "1"), 0, 10, wrote(2)),
        op(
            2,
            txn(0),
            20,
            30,
            Outcome::Ok(Output::Txn {
                succeeded: true,
                revision: 3,
            }),
        ),
    ];
    assert_fails(&bad, not_linearizable);
}

/// A register history with overlapping operations, made by choosing a
/// linearization point inside each interval and replaying in that order.
fn generated(clients: u64, operations: usize, seed: u64) -> Vec<Operation> {
    let mut random = seed | 1;
    let mut next = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let mut planned = Vec::new();
    let mut clock = vec![0u64; clients as usize];
    for _ in 0..operations {
        let client = next() % clients;
        let invoked = clock[client as usize] + next() % 5;
        let returned = invoked + 1 + next() % 20;
        clock[client as usize] = returned + 1;
        let point = invoked * 2 + 1 + (next() % ((returned - invoked) * 2 - 1));
        let key = format!("k{}", next() % 3);
        let input = if next() % 2 == 0 {
            put(&key, &format!("v{}", next() % 100))
        } else {
            get(&key)
        };
        planned.push((point, client, input, invoked, returned));
    }
    planned.sort_by_key(|p| p.0);
    let mut revision = 1;
    let mut state: BTreeMap<String, (String, i64)> = BTreeMap::new();
    let mut history = Vec::new();
    for (_, client, input, invoked, returned) in planned {
        let outcome = match &input {
            Input::Put { key, value } => {
                revision += 1;
                state.insert(
                    String::from_utf8_lossy(key).into(),
                    (String::from_utf8_lossy(value).into(), revision),
                );
                wrote(revision)
            }
            Input::Get { key } => {
                let value = state
                    .get(&*String::from_utf8_lossy(key))
                    .map(|(v, m)| (v.as_bytes().to_vec(), *m));
                Outcome::Ok(Output::Get {
                    value,
                    header_revision: revision,
                })
            }
            _ => unreachable!(),
        };
        history.push(op(client, input, invoked, returned, outcome));
    }
    history
}

#[test]
fn generated_histories_pass_and_a_corrupted_read_fails() {
    for seed in 1..20 {
        let history = generated(5, 400, seed);
        let report = check(&history);
        assert!(
            report.ok(),
            "seed {seed}: {}",
            report
                .violations
                .iter()
                .map(|v| v.to_string())
                .collect::<String>()
        );
        // Corrupt the last read that saw a value: it now reports a value nobody wrote.
        let mut corrupted = history.clone();
        if let Some(read) = corrupted
            .iter_mut()
            .rev()
            .find(|o| matches!(o.outcome, Outcome::Ok(Output::Get { value: Some(_), .. })))
        {
            if let Outcome::Ok(Output::Get {
                value: Some((v, _)),
                ..
            }) = &mut read.outcome
            {
                v.extend_from_slice(b"-corrupt");
            }
            assert!(
                !check(&corrupted).ok(),
                "seed {seed}: corruption not caught"
            );
        }
    }
}
