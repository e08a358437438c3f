//! Session guarantees: what one client sees on one connection to one member.
//!
//! etcd answers a request only from the member that received it, once that
//! member has applied it, so on one connection (one client, one member
//! incarnation) header revisions never go back, and a read after an
//! acknowledged write sees that write (its header revision is at least the
//! write's). Serializable reads count: they are where a member that answered
//! before applying is caught.

use std::collections::BTreeMap;
use std::fmt;

/// One answered request of a client on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEvent {
    /// The client (a client has at most one request in flight).
    pub client: u64,
    /// The member that answered (its id from the response header: a replaced
    /// member has a new id, and so a new session).
    pub member: u64,
    /// Time of invocation; a client's events are ordered by it.
    pub invoked: u64,
    /// What was asked and answered.
    pub kind: SessionKind,
}

/// The part of an answer the session checks read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// An acknowledged write (put, delete, txn) and its header revision.
    Write {
        /// Header revision of the answer.
        revision: i64,
    },
    /// A read (linearizable or serializable) and its header revision.
    Read {
        /// Header revision of the answer.
        revision: i64,
        /// Whether it was served without a read barrier.
        serializable: bool,
    },
}

impl SessionKind {
    fn revision(self) -> i64 {
        match self {
            SessionKind::Write { revision } | SessionKind::Read { revision, .. } => revision,
        }
    }
}

/// A broken session guarantee, with the two answers that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionViolation {
    /// The earlier answer.
    pub before: SessionEvent,
    /// The later answer, at a lower revision.
    pub after: SessionEvent,
}

impl SessionViolation {
    /// Whether the earlier answer was the client's own write (read-your-writes).
    pub fn own_write_unseen(&self) -> bool {
        matches!(self.before.kind, SessionKind::Write { .. })
    }
}

impl fmt::Display for SessionViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.own_write_unseen() {
            "did not see its own acknowledged write"
        } else {
            "saw the revision go back"
        };
        write!(
            f,
            "session: client {} on member {:x} {what}: {:?} at {} then {:?} at {}",
            self.before.client,
            self.before.member,
            self.before.kind,
            self.before.invoked,
            self.after.kind,
            self.after.invoked
        )
    }
}

/// Checks every session: header revisions never decrease in invocation order.
/// Reports at most one violation per session (the first).
pub fn check_sessions(events: &[SessionEvent]) -> Vec<SessionViolation> {
    let mut sessions: BTreeMap<(u64, u64), Vec<&SessionEvent>> = BTreeMap::new();
    for event in events {
        sessions
            .entry((event.client, event.member))
            .or_default()
            .push(event);
    }
    let mut violations = Vec::new();
    for mut session in sessions.into_values() {
        session.sort_by_key(|event| event.invoked);
        // The answer holding the highest revision so far.
        let mut highest: Option<&SessionEvent> = None;
        for event in session {
            match highest {
                Some(before) if event.kind.revision() < before.kind.revision() => {
                    violations.push(SessionViolation {
                        before: before.clone(),
                        after: event.clone(),
                    });
                    break;
                }
                Some(before) if event.kind.revision() == before.kind.revision() => {
                    // Keep the write: it names the stronger guarantee.
                }
                _ => highest = Some(event),
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(client: u64, member: u64, invoked: u64, revision: i64) -> SessionEvent {
        SessionEvent {
            client,
            member,
            invoked,
            kind: SessionKind::Write { revision },
        }
    }

    fn read(client: u64, member: u64, invoked: u64, revision: i64) -> SessionEvent {
        SessionEvent {
            client,
            member,
            invoked,
            kind: SessionKind::Read {
                revision,
                serializable: true,
            },
        }
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            events: Vec<SessionEvent>,
            violations: usize,
            own_write: bool,
        }
        let cases = [
            Case {
                name: "empty",
                events: vec![],
                violations: 0,
                own_write: false,
            },
            Case {
                name: "monotone",
                events: vec![write(1, 7, 1, 5), read(1, 7, 2, 5), read(1, 7, 3, 9)],
                violations: 0,
                own_write: false,
            },
            Case {
                name: "read before own write applied",
                events: vec![write(1, 7, 1, 6), read(1, 7, 2, 2)],
                violations: 1,
                own_write: true,
            },
            Case {
                name: "read went back",
                events: vec![read(1, 7, 1, 6), read(1, 7, 2, 5)],
                violations: 1,
                own_write: false,
            },
            Case {
                name: "order is by invocation, not by position in the input",
                events: vec![read(1, 7, 2, 5), write(1, 7, 1, 6)],
                violations: 1,
                own_write: true,
            },
            Case {
                name: "other members are other sessions",
                events: vec![write(1, 7, 1, 6), read(1, 8, 2, 2)],
                violations: 0,
                own_write: false,
            },
            Case {
                name: "other clients are other sessions",
                events: vec![write(1, 7, 1, 6), read(2, 7, 2, 2)],
                violations: 0,
                own_write: false,
            },
            Case {
                name: "equal revisions keep the write as the witness",
                events: vec![write(1, 7, 1, 6), read(1, 7, 2, 6), read(1, 7, 3, 4)],
                violations: 1,
                own_write: true,
            },
            Case {
                name: "one violation per session",
                events: vec![read(1, 7, 1, 6), read(1, 7, 2, 5), read(1, 7, 3, 4)],
                violations: 1,
                own_write: false,
            },
        ];
        for case in cases {
            let found = check_sessions(&case.events);
            assert_eq!(found.len(), case.violations, "{}", case.name);
            if let Some(v) = found.first() {
                assert_eq!(v.own_write_unseen(), case.own_write, "{}", case.name);
                assert!(!v.to_string().is_empty());
            }
        }
    }
}
