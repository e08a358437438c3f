//! Cluster alarms as replicated state (etcd's alarm store): which member raised
//! which alarm, and what each alarm refuses at apply, on every member alike.
//! NOSPACE (a member's backend passed its quota) refuses what would grow the
//! store: puts, txns that put, lease grants; reads, deletes and compaction go
//! on. CORRUPT (a member's data differs from the others') refuses every KV and
//! lease operation. Alarms refuse before permissions are checked, as etcd's
//! applier chain does.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::error::MvccError;
use crate::types::{RequestOp, TxnRequest};

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

fn txn_puts(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).any(|op| match op {
        RequestOp::Put(_) => true,
        RequestOp::Txn(nested) => txn_puts(nested),
        RequestOp::Range(_) | RequestOp::DeleteRange(_) => false,
    })
}

/// What the raised alarms refuse of `command` (a bare or authorized one), if
/// anything: CORRUPT first, then NOSPACE (etcd's order).
pub fn alarm_refusal(alarms: &Alarms, command: &Command) -> Option<MvccError> {
    let raised = |kind| alarms.iter().any(|alarm| alarm.kind == kind);
    let command = command.inner();
    if raised(AlarmKind::Corrupt)
        && matches!(
            command,
            Command::Put(_)
                | Command::DeleteRange(_)
                | Command::Txn(_)
                | Command::Compact(_)
                | Command::LeaseGrant(_)
                | Command::LeaseRevoke(_)
        )
    {
        return Some(MvccError::Corrupt);
    }
    if raised(AlarmKind::NoSpace) {
        let grows = match command {
            Command::Put(_) | Command::LeaseGrant(_) => true,
            Command::Txn(txn) => txn_puts(txn),
            _ => false,
        };
        if grows {
            return Some(MvccError::NoSpace);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRenewRequest,
        LeaseRevokeRequest, PutRequest, RangeRequest,
    };

    fn alarms(kinds: &[AlarmKind]) -> Alarms {
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
                alarm_refusal(&alarms(raised), command),
                refusal,
                "{raised:?} {command}"
            );
        }
    }

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
