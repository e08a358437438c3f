//! How etcd writes a setting's value, read the way etcd reads it: Go's
//! booleans and durations on the command line and in `ETCD_*` variables, YAML
//! 1.1's booleans in a config file.

use std::time::Duration;

/// A boolean as etcd accepts one: Go's `strconv.ParseBool` spellings (flags
/// and environment) and YAML 1.1's (`yes`, `on`, ... in etcd's config file,
/// which Go's YAML library reads as booleans).
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim() {
        "1" | "t" | "T" | "true" | "True" | "TRUE" | "y" | "Y" | "yes" | "Yes" | "YES" | "on"
        | "On" | "ON" => Ok(true),
        "0" | "f" | "F" | "false" | "False" | "FALSE" | "n" | "N" | "no" | "No" | "NO" | "off"
        | "Off" | "OFF" => Ok(false),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    }
}

/// A whole number of at most `u64::MAX`.
pub(crate) fn parse_uint(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("{:?} is not a whole number", text.trim()))
}

/// A signed whole number.
pub(crate) fn parse_int(text: &str) -> Result<i64, String> {
    text.trim()
        .parse::<i64>()
        .map_err(|_| format!("{:?} is not a whole number", text.trim()))
}

/// A Go duration (`time.ParseDuration`): a sequence of decimal numbers, each
/// with a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `300ms`,
/// `1.5h` or `2h45m`; a bare `0` is zero. Negative durations mean nothing for
/// any setting, so they are refused.
pub(crate) fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = |why: &str| format!("{text:?} is not a duration ({why}; e.g. 500ms, 5s, 2h)");
    if text == "0" || text == "+0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(invalid("negative"));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(invalid("empty"));
    }
    let mut nanos_total: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        rest = after;
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(invalid("a number without a unit")),
            _ => return Err(invalid("unknown unit")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid("a unit without a number"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid("too large"))?
        };
        // Go keeps the fraction's leading digits; 18 of them are below a nanosecond.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| invalid("bad fraction"))?;
            digits * unit_nanos / 10u128.pow(fraction.len() as u32)
        };
        nanos_total = whole
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(nanos_total))
            .ok_or_else(|| invalid("too large"))?;
    }
    let nanos = u64::try_from(nanos_total).map_err(|_| invalid("too large"))?;
    Ok(Duration::from_nanos(nanos))
}

/// Mainstay's own duration flags (`--watch-progress-notify-interval`): a bare
/// whole number is milliseconds, as they always took; anything else is a Go
/// duration, as etcd writes them.
pub(crate) fn parse_millis_or_duration(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(millis) => Ok(Duration::from_millis(millis)),
        Err(_) => parse_go_duration(text),
    }
}

/// A duration in whole milliseconds, for settings Mainstay keeps in ms.
pub(crate) fn whole_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `--auto-compaction-mode` and `--auto-compaction-retention` as etcd reads
/// them: the mode defaults to periodic; a retention that is a whole number
/// means hours (periodic) or revisions (revision), anything else is a Go
/// duration (periodic only); no retention, or zero, turns compaction off.
pub(crate) fn auto_compaction(
    mode: Option<&str>,
    retention: Option<&str>,
) -> Result<Option<mainstay_raft::AutoCompaction>, String> {
    use mainstay_raft::AutoCompaction;
    let mode = mode
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .unwrap_or("periodic");
    if mode != "periodic" && mode != "revision" {
        return Err(format!(
            "--auto-compaction-mode: {mode:?} is not periodic or revision"
        ));
    }
    let Some(retention) = retention.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let whole = retention.parse::<u64>().ok();
    let policy = match (mode, whole) {
        (_, Some(0)) => return Ok(None),
        ("revision", Some(count)) => AutoCompaction::Revision(
            i64::try_from(count)
                .map_err(|_| "--auto-compaction-retention: too large".to_string())?,
        ),
        ("revision", None) => {
            return Err(format!(
                "--auto-compaction-retention: {retention:?} is not a number of revisions (--auto-compaction-mode revision)"
            ));
        }
        (_, Some(hours)) => AutoCompaction::Periodic(Duration::from_secs(
            hours
                .checked_mul(3600)
                .ok_or_else(|| "--auto-compaction-retention: too large".to_string())?,
        )),
        (_, None) => {
            let window = parse_go_duration(retention)
                .map_err(|reason| format!("--auto-compaction-retention: {reason}"))?;
            if window.is_zero() {
                return Ok(None);
            }
            AutoCompaction::Periodic(window)
        }
    };
    Ok(Some(policy))
}
