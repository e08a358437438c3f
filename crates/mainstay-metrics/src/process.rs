//! `process_*` metrics, read from `/proc/self` at each scrape (Linux; other
//! systems export none). Hand-written: prometheus-client has no process
//! collector, and these are five small files.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Linux's USER_HZ: /proc reports CPU time in these ticks.
const TICKS_PER_SECOND: f64 = 100.0;
const PAGE_BYTES: i64 = 4096;

#[derive(Debug)]
struct Process;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    max_fds: i64,
    start_time_seconds: i64,
}

/// Fields of `/proc/self/stat` after the command name (which may hold spaces).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

fn parse(stat: &str, limits: &str, boot_time: i64, open_fds: i64) -> Sample {
    let fields = stat_fields(stat);
    // After the name: state is field 3 (index 0); utime 14, stime 15,
    // starttime 22, vsize 23, rss 24 (1-based, as proc(5) numbers them).
    let at = |n: usize| -> i64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
    let max_fds = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(0);
    Sample {
        cpu_seconds: (at(14) + at(15)) as f64 / TICKS_PER_SECOND,
        resident_bytes: at(24) * PAGE_BYTES,
        virtual_bytes: at(23),
        open_fds,
        max_fds,
        start_time_seconds: boot_time + (at(22) as f64 / TICKS_PER_SECOND) as i64,
    }
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as i64);
    Some(parse(&stat, &limits, boot_time, open_fds))
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(sample.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            MetricType::Counter,
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                sample.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                sample.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                sample.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                sample.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                sample.start_time_seconds,
            ),
        ] {
            ConstGauge::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// Registers the process collector.
pub(crate) fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(Process));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_with_spaces_in_the_name() {
        let stat = "4242 (mainstay (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1000 123456789 2500 18446744073709551615";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        assert_eq!(
            parse(stat, limits, 1_700_000_000, 12),
            Sample {
                cpu_seconds: 3.0,
                resident_bytes: 2500 * 4096,
                virtual_bytes: 123_456_789,
                open_fds: 12,
                max_fds: 1024,
                start_time_seconds: 1_700_000_010,
            }
        );
        assert_eq!(parse("garbage", "", 0, 0), Sample::default());
    }

    #[test]
    fn this_process_reads() {
        let sample = read().expect("/proc/self");
        assert!(sample.resident_bytes > 0 && sample.open_fds > 0 && sample.max_fds > 0);
    }
}
