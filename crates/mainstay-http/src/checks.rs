//! The health verdicts, as plain functions: which checks run, which one fails
//! first, and what the answer says. The async side (`health.rs`) only gathers
//! each check's outcome.

use std::collections::BTreeSet;

pub use mainstay_mvcc::AlarmKind;

/// What `/health` found, in etcd's order of checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthInputs {
    /// Active alarms, cluster-wide.
    pub alarms: Vec<AlarmKind>,
    /// Whether this member is in touch with a leader (not asked when serializable).
    pub has_leader: bool,
    /// The outcome of the keys-only range read (etcd's words on failure).
    pub range: Result<(), String>,
}

/// `/health`'s answer: healthy or not, and the reason (empty when healthy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthVerdict {
    /// Whether the member is healthy.
    pub healthy: bool,
    /// Why not (`ALARM NOSPACE`, `RAFT NO LEADER`, `RANGE ERROR:…`).
    pub reason: String,
}

/// etcd's `/health`: the first failing check wins; alarms named in `exclude`
/// are ignored; `serializable` skips the leader check.
pub fn health_verdict(
    inputs: &HealthInputs,
    exclude: &BTreeSet<String>,
    serializable: bool,
) -> HealthVerdict {
    let fail = |reason: String| HealthVerdict {
        healthy: false,
        reason,
    };
    if let Some(alarm) = inputs
        .alarms
        .iter()
        .find(|alarm| !exclude.contains(alarm.name()))
    {
        return fail(format!("ALARM {}", alarm.name()));
    }
    if !serializable && !inputs.has_leader {
        return fail("RAFT NO LEADER".to_string());
    }
    if let Err(error) = &inputs.range {
        return fail(format!("RANGE ERROR:{error}"));
    }
    HealthVerdict {
        healthy: true,
        reason: String::new(),
    }
}

/// `/livez` or `/readyz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Should the process be restarted?
    Live,
    /// Should clients be sent here?
    Ready,
}

impl Probe {
    /// The checks the probe runs, in order (etcd 3.6's).
    pub fn checks(self) -> &'static [&'static str] {
        match self {
            Probe::Live => &["serializable_read"],
            Probe::Ready => &[
                "data_corruption",
                "serializable_read",
                "linearizable_read",
                "non_learner",
            ],
        }
    }
}

/// A probe's answer: the HTTP status and the plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// 200 or 503.
    pub status: u16,
    /// `ok`, or `[+]`/`[-]` lines.
    pub body: String,
}

/// etcd's `/livez` and `/readyz` answer from each check's outcome (checks not
/// run because excluded are listed as such when verbose, as etcd does).
pub fn probe_answer(
    outcomes: &[(&str, Result<(), String>)],
    excluded: &BTreeSet<String>,
    verbose: bool,
    probe: Probe,
) -> ProbeAnswer {
    let mut lines = String::new();
    let mut failed = false;
    for (name, outcome) in outcomes {
        if excluded.contains(*name) {
            lines.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match outcome {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(error) => {
                failed = true;
                lines.push_str(&format!("[-]{name} failed: {error}\n"));
            }
        }
    }
    let what = match probe {
        Probe::Live => "livez",
        Probe::Ready => "readyz",
    };
    if failed {
        lines.push_str(&format!("{what} check failed\n"));
        return ProbeAnswer {
            status: 503,
            body: lines,
        };
    }
    let body = if verbose {
        lines.push_str(&format!("{what} check passed\n"));
        lines
    } else {
        "ok\n".to_string()
    };
    ProbeAnswer { status: 200, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn health_fails_on_the_first_check_in_etcds_order() {
        let healthy = HealthInputs {
            alarms: vec![],
            has_leader: true,
            range: Ok(()),
        };
        let no_leader = HealthInputs {
            has_leader: false,
            ..healthy.clone()
        };
        let nospace_no_leader = HealthInputs {
            alarms: vec![AlarmKind::NoSpace],
            ..no_leader.clone()
        };
        let corrupt_and_nospace = HealthInputs {
            alarms: vec![AlarmKind::NoSpace, AlarmKind::Corrupt],
            ..healthy.clone()
        };
        let range_failed = HealthInputs {
            range: Err("etcdserver: request timed out".to_string()),
            ..healthy.clone()
        };
        // (inputs, exclude, serializable, healthy, reason)
        let table: &[(&HealthInputs, &[&str], bool, bool, &str)] = &[
            (&healthy, &[], false, true, ""),
            (&no_leader, &[], false, false, "RAFT NO LEADER"),
            (&no_leader, &[], true, true, ""),
            (&nospace_no_leader, &[], false, false, "ALARM NOSPACE"),
            (
                &nospace_no_leader,
                &["NOSPACE"],
                false,
                false,
                "RAFT NO LEADER",
            ),
            (&nospace_no_leader, &["NOSPACE"], true, true, ""),
            (
                &corrupt_and_nospace,
                &["NOSPACE"],
                false,
                false,
                "ALARM CORRUPT",
            ),
            (
                &corrupt_and_nospace,
                &["NOSPACE", "CORRUPT"],
                false,
                true,
                "",
            ),
            (
                &range_failed,
                &[],
                false,
                false,
                "RANGE ERROR:etcdserver: request timed out",
            ),
        ];
        for (inputs, exclude, serializable, healthy, reason) in table {
            let verdict = health_verdict(inputs, &set(exclude), *serializable);
            assert_eq!(
                (verdict.healthy, verdict.reason.as_str()),
                (*healthy, *reason),
                "{inputs:?} exclude {exclude:?} serializable {serializable}"
            );
        }
    }

    #[test]
    fn probes_list_every_check_and_fail_with_503() {
        let ok = [("serializable_read", Ok(()))];
        assert_eq!(
            probe_answer(&ok, &set(&[]), false, Probe::Live),
            ProbeAnswer {
                status: 200,
                body: "ok\n".into()
            }
        );
        assert_eq!(
            probe_answer(&ok, &set(&[]), true, Probe::Live).body,
            "[+]serializable_read ok\nlivez check passed\n"
        );
        let corrupt = [
            (
                "data_corruption",
                Err("alarm activated: CORRUPT".to_string()),
            ),
            ("serializable_read", Ok(())),
        ];
        let answer = probe_answer(&corrupt, &set(&[]), false, Probe::Ready);
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.body,
            "[-]data_corruption failed: alarm activated: CORRUPT\n[+]serializable_read ok\nreadyz check failed\n"
        );
        let excluded = probe_answer(&corrupt, &set(&["data_corruption"]), true, Probe::Ready);
        assert_eq!(excluded.status, 200);
        assert_eq!(
            excluded.body,
            "[+]data_corruption excluded: ok\n[+]serializable_read ok\nreadyz check passed\n"
        );
    }
}
