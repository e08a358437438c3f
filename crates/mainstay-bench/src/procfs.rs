//! Server resource usage from `/proc`: CPU time (utime + stime of
//! `/proc/<pid>/stat`) and resident memory (`VmRSS` of `/proc/<pid>/status`),
//! the parsing pure and tested, the reading thin.

use anyhow::Context;

/// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`) in clock ticks. The
/// second field, the command name, is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` starts at field 3 (state): utime is the 12th from there.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of a `/proc/<pid>/status` text, in kB.
pub fn parse_vm_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// CPU ticks used so far by process `pid`.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_stat_cpu_ticks(&text).with_context(|| format!("parse {path}: {text:?}"))
}

/// Resident memory of process `pid` in kB.
pub fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_vm_rss_kb(&text).with_context(|| format!("no VmRSS in {path}"))
}

/// Sum of CPU ticks over processes.
pub fn cpu_ticks_sum(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| cpu_ticks(p)).sum()
}

/// Sum of resident memory over processes, in MB of 1024 kB (as `top` counts).
pub fn rss_mb_sum(pids: &[u32]) -> anyhow::Result<f64> {
    let kb: u64 = pids
        .iter()
        .map(|&p| rss_kb(p))
        .sum::<anyhow::Result<u64>>()?;
    Ok(kb as f64 / 1024.0)
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 when it cannot be read.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks() {
        let cases: &[(&str, Option<u64>)] = &[
            (
                "1234 (etcd) S 1 1234 1234 0 -1 4194560 2000 0 0 0 150 25 0 0 20 0 12 0 100 0 0",
                Some(175),
            ),
            // A command name with spaces and a closing parenthesis.
            (
                "77 (my ) prog) R 1 77 77 0 -1 0 0 0 0 0 7 8 0 0 20 0 1 0 5 0 0",
                Some(15),
            ),
            (
                "9 (mainstay) S 1 9 9 0 -1 0 0 0 0 0 4294967296 1 0 0",
                Some(4294967297),
            ),
            ("", None),
            ("1 (x) S 1 2 3", None),
            ("1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 5 0 0", None),
            (
                "no parenthesis at all 1 2 3 4 5 6 7 8 9 10 11 12 13 14",
                None,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_stat_cpu_ticks(text), *want, "{text:?}");
        }
    }

    #[test]
    fn status_rss() {
        let cases: &[(&str, Option<u64>)] = &[
            (
                "Name:\tetcd\nVmPeak:\t  900000 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 40000 kB\n",
                Some(51234),
            ),
            ("Name:\tx\nVmRSS:\t0 kB\n", Some(0)),
            ("Name:\tzombie\nState:\tZ (zombie)\n", None),
            ("VmRSS:\t12 MB\n", None),
            ("VmRSS:\t\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_vm_rss_kb(text), *want, "{text:?}");
        }
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(rss_kb(me).unwrap() > 0);
        assert!(clock_ticks_per_second() > 0);
    }
}
