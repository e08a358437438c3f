//! The health verdicts, as plain functions: which checks run, which one fails
//! first, and what the answer says. The async side (`health.rs`) only gathers
//! each check's outcome.

use std::collections::BTreeSet;
use std::time::Duration;

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
    /// The checks the probe runs, in order: etcd 3.6's, then Mainstay's.
    pub fn checks(self) -> &'static [&'static str] {
        match self {
            Probe::Live => &["serializable_read"],
            Probe::Ready => &[
                "data_corruption",
                "serializable_read",
                "linearizable_read",
                "non_learner",
                "peer_reachable",
                "disk_latency",
                "apply_latency",
            ],
        }
    }
}

/// How recent a slow fsync or apply must be to fail a check.
pub const SLOW_WINDOW: Duration = Duration::from_secs(10);
/// Entries committed and not applied beyond which applying is behind.
pub const APPLY_BACKLOG_LIMIT: u64 = 5000;

/// A peer as this member last saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerSight {
    /// Its member id.
    pub id: u64,
    /// Time since this member last heard from it.
    pub since_contact: Option<Duration>,
    /// Its phi-accrual suspicion level.
    pub phi: f64,
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

/// `peer_reachable`: a leader must be in touch with a quorum of voters
/// (itself included) within `within`; a follower with a leader.
pub fn peer_reachable(
    leading: bool,
    has_leader: bool,
    voters: &[u64],
    own: u64,
    peers: &[PeerSight],
    within: Duration,
) -> Result<(), String> {
    if !leading {
        return if has_leader {
            Ok(())
        } else {
            Err(format!(
                "no contact with a leader within {}",
                seconds(within)
            ))
        };
    }
    let mut lost = Vec::new();
    let mut reached = 0;
    for voter in voters {
        if *voter == own {
            reached += 1;
            continue;
        }
        let sight = peers.iter().find(|peer| peer.id == *voter);
        match sight.and_then(|peer| peer.since_contact) {
            Some(since) if since <= within => reached += 1,
            Some(since) => lost.push(format!(
                "{voter:x} silent for {} (phi {:.1})",
                seconds(since),
                sight.map_or(0.0, |peer| peer.phi)
            )),
            None => lost.push(format!("{voter:x} never reached")),
        }
    }
    let quorum = voters.len() / 2 + 1;
    if reached >= quorum {
        Ok(())
    } else {
        Err(format!(
            "{reached} of {} voters reachable, {quorum} needed: {}",
            voters.len(),
            lost.join(", ")
        ))
    }
}

/// `disk_latency`: no Raft log fsync over 1 s in the last `SLOW_WINDOW`.
pub fn disk_latency(last_slow: Option<(Duration, Duration)>) -> Result<(), String> {
    match last_slow {
        Some((ago, took)) if ago <= SLOW_WINDOW => Err(format!(
            "slow fdatasync {} ago: took {} (expected under 1s)",
            seconds(ago),
            seconds(took)
        )),
        _ => Ok(()),
    }
}

/// `apply_latency`: no apply over `--warning-apply-duration` in the last
/// `SLOW_WINDOW`, and applying keeps up with commits.
pub fn apply_latency(
    last_slow: Option<(Duration, Duration)>,
    committed: u64,
    applied: u64,
) -> Result<(), String> {
    let behind = committed.saturating_sub(applied);
    if behind > APPLY_BACKLOG_LIMIT {
        return Err(format!(
            "applying is {behind} entries behind the commit index (limit {APPLY_BACKLOG_LIMIT})"
        ));
    }
    match last_slow {
        Some((ago, took)) if ago <= SLOW_WINDOW => Err(format!(
            "apply request took too long {} ago: {:.0}ms (expected under 100ms)",
            seconds(ago),
            took.as_secs_f64() * 1000.0
        )),
        _ => Ok(()),
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
    fn mainstay_checks_say_what_is_wrong() {
        let ms = Duration::from_millis;
        let seen = |id, since: Option<u64>| PeerSight {
            id,
            since_contact: since.map(ms),
            phi: if since.unwrap_or(0) > 1000 { 12.0 } else { 0.5 },
        };
        let within = ms(1000);
        let voters = [1, 2, 3];
        // (leading, has leader, peers, verdict)
        type Case = (bool, bool, Vec<PeerSight>, Result<(), &'static str>);
        let table: Vec<Case> = vec![
            (false, true, vec![], Ok(())),
            (
                false,
                false,
                vec![],
                Err("no contact with a leader within 1.0s"),
            ),
            (
                true,
                true,
                vec![seen(2, Some(50)), seen(3, Some(60))],
                Ok(()),
            ),
            (
                true,
                true,
                vec![seen(2, Some(50)), seen(3, Some(5000))],
                Ok(()),
            ),
            (
                true,
                true,
                vec![seen(2, Some(3000)), seen(3, None)],
                Err(
                    "1 of 3 voters reachable, 2 needed: 2 silent for 3.0s (phi 12.0), 3 never reached",
                ),
            ),
        ];
        for (leading, has_leader, peers, verdict) in table {
            assert_eq!(
                peer_reachable(leading, has_leader, &voters, 1, &peers, within),
                verdict.map_err(String::from),
                "{peers:?}"
            );
        }
        assert_eq!(disk_latency(None), Ok(()));
        assert_eq!(
            disk_latency(Some((Duration::from_secs(60), ms(1500)))),
            Ok(())
        );
        assert_eq!(
            disk_latency(Some((ms(2000), ms(1500)))),
            Err("slow fdatasync 2.0s ago: took 1.5s (expected under 1s)".to_string())
        );
        assert_eq!(apply_latency(None, 10, 10), Ok(()));
        assert_eq!(
            apply_latency(Some((ms(500), ms(250))), 10, 10),
            Err("apply request took too long 0.5s ago: 250ms (expected under 100ms)".to_string())
        );
        assert_eq!(
            apply_latency(None, 9000, 1000),
            Err("applying is 8000 entries behind the commit index (limit 5000)".to_string())
        );
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
