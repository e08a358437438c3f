//! `Observer` against etcd's Observe loop: the current leader first, then
//! each proclamation, then the next leader after a resignation or expiry.

use mainstay_mvcc::{Event, EventKind, KeyValue, Revision};

use super::Observer;

fn kv(key: &str, create_revision: Revision, mod_revision: Revision, value: &str) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        create_revision,
        mod_revision,
        version: 1,
        value: value.as_bytes().to_vec().into(),
        lease: 0,
    }
}

fn put(kv: &KeyValue) -> (Revision, Event) {
    (
        kv.mod_revision,
        Event {
            kind: EventKind::Put,
            kv: kv.clone(),
            prev_kv: None,
            prev_value_stored: false,
        },
    )
}

fn delete(key: &str, revision: Revision) -> (Revision, Event) {
    (
        revision,
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                mod_revision: revision,
                ..KeyValue::default()
            },
            prev_kv: None,
            prev_value_stored: false,
        },
    )
}

fn values(answers: &[(Revision, KeyValue)]) -> Vec<(Revision, String)> {
    answers
        .iter()
        .map(|(revision, kv)| (*revision, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect()
}

#[test]
fn starts_with_the_current_leader_or_waits_for_one() {
    // Goal: the stream opens with the leader as read (header at the read's
    // revision), or with nothing when there is none. Method: both starts.
    let leader = kv("e/1", 3, 4, "a");
    let (observer, first) = Observer::start(Some(&leader), 7);
    assert_eq!(first, Some((7, leader)));
    assert_eq!(observer.next(), 8);
    let (observer, first) = Observer::start(None, 7);
    assert_eq!(first, None);
    assert_eq!(observer.next(), 8);
}

#[test]
fn follows_proclamations_and_hands_over() {
    // Goal: etcd's sequence. Without a leader, the first put under the prefix
    // makes one (header at its revision, other events of that revision
    // skipped); puts on the leader's key are proclamations; puts on other
    // keys (candidates) are not; the leader's delete makes the observer look
    // again at the read's revision. Method: feed batches as the keyspace would.
    let (mut observer, first) = Observer::start(None, 2);
    assert_eq!(first, None);

    let a1 = kv("e/a", 3, 3, "a1");
    let b = kv("e/b", 4, 4, "b");
    let a2 = kv("e/a", 3, 5, "a2");
    let answers = observer.advance(&[put(&a1), put(&b), put(&a2)], Some(&a2), 5);
    assert_eq!(values(&answers), vec![(3, "a1".into()), (5, "a2".into())]);
    assert_eq!(observer.next(), 6);

    // The leader resigns; b leads, as the read at revision 7 shows (b's
    // proclamation at 7 is already in it, so it is sent once).
    let b2 = kv("e/b", 4, 7, "b2");
    let answers = observer.advance(&[delete("e/a", 6), put(&b2)], Some(&b2), 7);
    assert_eq!(values(&answers), vec![(7, "b2".into())]);
    assert_eq!(observer.next(), 8);

    // Nothing relevant happened.
    assert!(observer.advance(&[], Some(&b2), 9).is_empty());
    assert_eq!(observer.next(), 10);

    // The last leader goes; nobody is left; a new candidate takes over.
    assert!(observer.advance(&[delete("e/b", 10)], None, 10).is_empty());
    let c = kv("e/c", 11, 11, "c");
    let c2 = kv("e/c", 11, 12, "c2");
    let answers = observer.advance(&[put(&c), put(&c2)], Some(&c2), 12);
    assert_eq!(values(&answers), vec![(11, "c".into()), (12, "c2".into())]);
}

#[test]
fn events_already_seen_are_ignored() {
    // Goal: a batch that repeats revisions the observer has passed (a
    // wake-up for a revision the last read covered) sends nothing twice.
    let a = kv("e/a", 3, 3, "a");
    let (mut observer, first) = Observer::start(Some(&a), 3);
    assert_eq!(first.map(|(revision, _)| revision), Some(3));
    assert!(observer.advance(&[put(&a)], Some(&a), 3).is_empty());
    let a2 = kv("e/a", 3, 4, "a2");
    let answers = observer.advance(&[put(&a), put(&a2)], Some(&a2), 4);
    assert_eq!(values(&answers), vec![(4, "a2".into())]);
}

#[test]
fn quiet_revisions_move_the_observer_on() {
    // Goal: an observer idle while other keys change does not ask for the
    // history of those revisions again (a compaction may have removed it),
    // and never goes back. Method: quiet revisions, then a proclamation.
    let a = kv("e/a", 3, 3, "a");
    let (mut observer, _) = Observer::start(Some(&a), 3);
    observer.quiet_through(2);
    assert_eq!(observer.next(), 4);
    observer.quiet_through(900);
    assert_eq!(observer.next(), 901);
    let a2 = kv("e/a", 3, 901, "a2");
    let answers = observer.advance(&[put(&a2)], Some(&a2), 901);
    assert_eq!(values(&answers), vec![(901, "a2".into())]);
}
