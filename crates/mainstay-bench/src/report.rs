//! The report: raw per-rep results, their summary per (workload, metric), the
//! markdown table, the machine line, and the JSON file.

use serde::Serialize;

use crate::stats::{Summary, summarize};

/// One system's results for one workload in one rep.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// Repetition, from 0.
    pub rep: u32,
    /// `etcd` or `mainstay`.
    pub system: &'static str,
    /// Workload name.
    pub workload: &'static str,
    /// Metrics in report order.
    pub metrics: Vec<Metric>,
    /// Failed (or, while loading, retried) requests.
    pub errors: u64,
}

/// One measured value.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    /// Metric name, e.g. `ops/s`.
    pub name: &'static str,
    /// Its value.
    pub value: f64,
}

impl RunResult {
    fn value(&self, metric: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.name == metric)
            .map(|m| m.value)
            .filter(|v| v.is_finite())
    }
}

/// One table row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Workload name.
    pub workload: &'static str,
    /// Metric name.
    pub metric: &'static str,
    /// The summary over reps.
    pub summary: Summary,
}

/// Summarises raw results into rows: workloads in first-seen order, metrics in
/// their order within the workload, values paired by rep.
pub fn rows(results: &[RunResult], reps: u32) -> Vec<Row> {
    let mut keys: Vec<(&'static str, &'static str)> = Vec::new();
    for result in results {
        for metric in &result.metrics {
            let key = (result.workload, metric.name);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    let per_rep = |system: &str, workload: &str, metric: &str| -> Vec<Option<f64>> {
        (0..reps)
            .map(|rep| {
                results
                    .iter()
                    .find(|r| r.rep == rep && r.system == system && r.workload == workload)
                    .and_then(|r| r.value(metric))
            })
            .collect()
    };
    keys.into_iter()
        .map(|(workload, metric)| Row {
            workload,
            metric,
            summary: summarize(
                &per_rep("etcd", workload, metric),
                &per_rep("mainstay", workload, metric),
            ),
        })
        .collect()
}

/// A measured value with about three significant digits.
pub fn format_value(value: Option<f64>) -> String {
    match value {
        None => "-".to_string(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 1.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// A ratio with two decimals (three below 0.1).
pub fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        None => "-".to_string(),
        Some(r) if r.abs() < 0.1 => format!("{r:.3}"),
        Some(r) => format!("{r:.2}"),
    }
}

/// The markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from("| Workload | metric | etcd | Mainstay | ratio | spread |\n");
    out.push_str("|---|---|---:|---:|---:|---|\n");
    for row in rows {
        let s = &row.summary;
        let spread = match s.spread {
            Some((lo, hi)) => format!("{}–{}", format_ratio(Some(lo)), format_ratio(Some(hi))),
            None => "-".to_string(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.workload,
            row.metric,
            format_value(s.etcd),
            format_value(s.mainstay),
            format_ratio(s.ratio),
            spread
        ));
    }
    out
}

/// The machine the run was on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu: String,
    /// Kernel release.
    pub kernel: String,
    /// When the run started (UTC).
    pub date: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".to_string()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".to_string()),
            date: command_line_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_else(|| "unknown".to_string()),
        }
    }

    /// One line for the report.
    pub fn line(&self) -> String {
        format!(
            "Machine: nproc {}, {}, Linux {}, {}",
            self.nproc, self.cpu, self.kernel, self.date
        )
    }
}

/// The first `model name` of a /proc/cpuinfo text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
}

/// First line of a command's standard output, if it ran and succeeded.
pub fn command_line_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// Everything `--json` writes.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// The machine.
    pub machine: &'a Machine,
    /// The command line.
    pub command: &'a str,
    /// Versions of the two servers.
    pub versions: &'a [(String, String)],
    /// Every raw per-rep result.
    pub runs: &'a [RunResult],
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        rep: u32,
        system: &'static str,
        workload: &'static str,
        m: &[(&'static str, f64)],
    ) -> RunResult {
        RunResult {
            rep,
            system,
            workload,
            metrics: m
                .iter()
                .map(|&(name, value)| Metric { name, value })
                .collect(),
            errors: 0,
        }
    }

    #[test]
    fn values_and_ratios_format() {
        let cases: &[(Option<f64>, &str)] = &[
            (None, "-"),
            (Some(12345.6), "12346"),
            (Some(123.45), "123"),
            (Some(12.345), "12.3"),
            (Some(1.2345), "1.23"),
            (Some(0.12345), "0.123"),
            (Some(0.0), "0.000"),
        ];
        for (v, want) in cases {
            assert_eq!(format_value(*v), *want, "{v:?}");
        }
        let cases: &[(Option<f64>, &str)] = &[
            (None, "-"),
            (Some(1.0), "1.00"),
            (Some(0.456), "0.46"),
            (Some(0.0456), "0.046"),
        ];
        for (r, want) in cases {
            assert_eq!(format_ratio(*r), *want, "{r:?}");
        }
    }

    #[test]
    fn rows_pair_systems_by_rep() {
        let results = vec![
            run(0, "etcd", "put1", &[("ops/s", 100.0), ("p99 ms", 2.0)]),
            run(0, "mainstay", "put1", &[("ops/s", 150.0), ("p99 ms", 1.0)]),
            run(1, "mainstay", "put1", &[("ops/s", 300.0), ("p99 ms", 1.0)]),
            run(1, "etcd", "put1", &[("ops/s", 200.0), ("p99 ms", f64::NAN)]),
            run(0, "etcd", "idle", &[("CPU cores", 0.02)]),
            run(0, "mainstay", "idle", &[("CPU cores", 0.01)]),
        ];
        let rows = rows(&results, 2);
        let names: Vec<(&str, &str)> = rows.iter().map(|r| (r.workload, r.metric)).collect();
        assert_eq!(
            names,
            [("put1", "ops/s"), ("put1", "p99 ms"), ("idle", "CPU cores")]
        );
        assert_eq!(rows[0].summary.etcd, Some(150.0));
        assert_eq!(rows[0].summary.mainstay, Some(225.0));
        assert_eq!(rows[0].summary.ratio, Some(1.5));
        assert_eq!(rows[0].summary.spread, Some((1.5, 1.5)));
        // A NaN (no latency recorded) is a missing value, not a ratio.
        assert_eq!(rows[1].summary.etcd, Some(2.0));
        assert_eq!(rows[1].summary.ratio, Some(0.5));
        assert_eq!(rows[2].summary.ratio, Some(0.5));
    }

    #[test]
    fn table_layout() {
        let rows = vec![Row {
            workload: "put64",
            metric: "ops/s",
            summary: Summary {
                etcd: Some(5000.0),
                mainstay: Some(6000.0),
                ratio: Some(1.2),
                spread: Some((1.1, 1.3)),
            },
        }];
        let want = "| Workload | metric | etcd | Mainstay | ratio | spread |\n\
                    |---|---|---:|---:|---:|---|\n\
                    | put64 | ops/s | 5000 | 6000 | 1.20 | 1.10–1.30 |\n";
        assert_eq!(table(&rows), want);
        let empty = Row {
            workload: "idle",
            metric: "CPU cores",
            summary: Summary {
                etcd: None,
                mainstay: Some(0.01),
                ratio: None,
                spread: None,
            },
        };
        assert!(table(&[empty]).ends_with("| idle | CPU cores | - | 0.010 | - | - |\n"));
    }

    #[test]
    fn cpu_model_line() {
        let info = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\nflags\t: fpu\n";
        assert_eq!(
            cpu_model(info).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
