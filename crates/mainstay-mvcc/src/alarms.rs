//! Cluster alarms as replicated state (etcd's alarm store): which member raised
//! which alarm (what each refuses at apply is `alarm_refusal`, in `command`).
//! NOSPACE (a member's backend passed its quota) refuses what would grow the
//! store: puts, txns that put, lease grants; reads, deletes and compaction go
//! on. CORRUPT (a member's data differs from the others') refuses every KV and
//! lease operation. Alarms refuse before permissions are checked, as etcd's
//! applier chain does.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// An alarm's kind (etcd's `AlarmType`, without NONE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmKind {
    /// The backend quota is exhausted.
    NoSpace,
    /// A member's data differs from the others'.
    Corrupt,
}

impl AlarmKind {
    /// etcd's name (`etcdctl alarm list`, `/health?exclude=`).
    pub fn name(self) -> &'static str {
        match self {
            AlarmKind::NoSpace => "NOSPACE",
            AlarmKind::Corrupt => "CORRUPT",
        }
    }
}

/// One raised alarm: the member it names (0: the whole cluster) and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlarmMember {
    /// The member the alarm is about.
    pub member: u64,
    /// What is wrong.
    pub kind: AlarmKind,
}

/// Raise or clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    /// Raise the alarm.
    Activate,
    /// Clear it.
    Deactivate,
}

/// An alarm change through the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmRequest {
    /// Raise or clear.
    pub action: AlarmAction,
    /// The alarm.
    pub alarm: AlarmMember,
}

/// What an alarm change answers: the alarm it raised (or found raised) or
/// cleared; empty when clearing one that was not raised (etcd's answer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmResponse {
    /// The alarms the change concerned.
    pub alarms: Vec<AlarmMember>,
}

/// The raised alarms.
pub type Alarms = BTreeSet<AlarmMember>;

/// Applies an alarm change; the response, and whether the set changed.
pub fn change_alarms(alarms: &mut Alarms, request: &AlarmRequest) -> (AlarmResponse, bool) {
    match request.action {
        AlarmAction::Activate => {
            let added = alarms.insert(request.alarm);
            (
                AlarmResponse {
                    alarms: vec![request.alarm],
                },
                added,
            )
        }
        AlarmAction::Deactivate => {
            let removed = alarms.remove(&request.alarm);
            let answered = if removed {
                vec![request.alarm]
            } else {
                Vec::new()
            };
            (AlarmResponse { alarms: answered }, removed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activate_and_deactivate_answer_as_etcd() {
        let mut raised = Alarms::new();
        let nospace = AlarmMember {
            member: 3,
            kind: AlarmKind::NoSpace,
        };
        let activate = AlarmRequest {
            action: AlarmAction::Activate,
            alarm: nospace,
        };
        let deactivate = AlarmRequest {
            action: AlarmAction::Deactivate,
            alarm: nospace,
        };
        assert_eq!(
            change_alarms(&mut raised, &activate),
            (
                AlarmResponse {
                    alarms: vec![nospace]
                },
                true
            )
        );
        assert_eq!(
            change_alarms(&mut raised, &activate),
            (
                AlarmResponse {
                    alarms: vec![nospace]
                },
                false
            )
        );
        assert_eq!(
            change_alarms(&mut raised, &deactivate),
            (
                AlarmResponse {
                    alarms: vec![nospace]
                },
                true
            )
        );
        assert_eq!(
            change_alarms(&mut raised, &deactivate),
            (AlarmResponse::default(), false)
        );
        assert!(raised.is_empty());
    }
}
