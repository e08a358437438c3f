//! Pure statistics: latency percentiles, medians, and the per-metric summary of
//! paired repetitions (etcd median, Mainstay median, the median of the per-rep
//! Mainstay÷etcd ratios and their spread).

/// Latencies of one measured window, in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    micros: Vec<u32>,
    sorted: bool,
}

impl Latencies {
    /// Adds one latency.
    pub fn record(&mut self, micros: u32) {
        self.micros.push(micros);
        self.sorted = false;
    }

    /// Appends every latency of `other`.
    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
        self.sorted = false;
    }

    /// The `p`th percentile (0 < p ≤ 100) in milliseconds, by nearest rank; None
    /// when nothing was recorded.
    pub fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        percentile(&self.micros, p).map(|us| f64::from(us) / 1000.0)
    }
}

/// Nearest-rank percentile of an ascending slice: the smallest value such that
/// at least `p` percent of the values are ≤ it. None for an empty slice.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    let index = rank.clamp(1, n) - 1;
    sorted.get(index).copied()
}

/// Median of the values (the mean of the two middle ones for an even count);
/// None when empty. NaNs are not expected and sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    if n % 2 == 1 {
        Some(sorted[n / 2])
    } else {
        Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0)
    }
}

/// One metric over all repetitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Median of etcd's values.
    pub etcd: Option<f64>,
    /// Median of Mainstay's values.
    pub mainstay: Option<f64>,
    /// Median of the per-rep ratios Mainstay ÷ etcd.
    pub ratio: Option<f64>,
    /// Smallest and largest per-rep ratio.
    pub spread: Option<(f64, f64)>,
}

/// Summarises one metric from the values of each repetition (index = rep; None
/// where that system did not produce the metric in that rep). A rep's ratio
/// exists only when both systems have a value there and etcd's is not zero.
pub fn summarize(etcd: &[Option<f64>], mainstay: &[Option<f64>]) -> Summary {
    let present = |values: &[Option<f64>]| values.iter().flatten().copied().collect::<Vec<_>>();
    let ratios: Vec<f64> = etcd
        .iter()
        .zip(mainstay)
        .filter_map(|(e, m)| match (e, m) {
            (Some(e), Some(m)) if *e != 0.0 => Some(m / e),
            _ => None,
        })
        .collect();
    let spread = ratios.iter().copied().fold(None, |acc, r| match acc {
        None => Some((r, r)),
        Some((lo, hi)) => Some((f64::min(lo, r), f64::max(hi, r))),
    });
    Summary {
        etcd: median(&present(etcd)),
        mainstay: median(&present(mainstay)),
        ratio: median(&ratios),
        spread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ten: Vec<u32> = (1..=10).collect();
        let cases: &[(&[u32], f64, Option<u32>)] = &[
            (&[], 50.0, None),
            (&[7], 50.0, Some(7)),
            (&[7], 99.0, Some(7)),
            (&ten, 50.0, Some(5)),
            (&ten, 90.0, Some(9)),
            (&ten, 91.0, Some(10)),
            (&ten, 99.0, Some(10)),
            (&ten, 100.0, Some(10)),
            (&ten, 1.0, Some(1)),
            (&ten, 0.0, Some(1)),
        ];
        for (values, p, want) in cases {
            assert_eq!(percentile(values, *p), *want, "p{p} of {values:?}");
        }
        let hundred: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 99.0), Some(99));
        assert_eq!(percentile(&hundred, 50.0), Some(50));
    }

    #[test]
    fn latencies_sort_before_percentiles() {
        let mut l = Latencies::default();
        for us in [5000, 1000, 3000, 2000, 4000] {
            l.record(us);
        }
        let mut other = Latencies::default();
        other.record(500);
        l.merge(other);
        assert_eq!(l.percentile_ms(50.0), Some(2.0));
        assert_eq!(l.percentile_ms(100.0), Some(5.0));
        assert_eq!(l.percentile_ms(1.0), Some(0.5));
    }

    #[test]
    fn medians() {
        let cases: &[(&[f64], Option<f64>)] = &[
            (&[], None),
            (&[3.0], Some(3.0)),
            (&[4.0, 2.0], Some(3.0)),
            (&[9.0, 1.0, 5.0], Some(5.0)),
            (&[1.0, 100.0, 3.0, 2.0], Some(2.5)),
        ];
        for (values, want) in cases {
            assert_eq!(median(values), *want, "median of {values:?}");
        }
    }

    #[test]
    fn summaries_pair_reps() {
        // Two reps, both present.
        let s = summarize(&[Some(100.0), Some(200.0)], &[Some(50.0), Some(300.0)]);
        assert_eq!(s.etcd, Some(150.0));
        assert_eq!(s.mainstay, Some(175.0));
        assert_eq!(s.ratio, Some(1.0)); // ratios 0.5 and 1.5
        assert_eq!(s.spread, Some((0.5, 1.5)));

        // The ratio is per rep, not the ratio of medians.
        let s = summarize(
            &[Some(1.0), Some(10.0), Some(100.0)],
            &[Some(2.0), Some(10.0), Some(10.0)],
        );
        assert_eq!(s.ratio, Some(1.0)); // ratios 2, 1, 0.1
        assert_eq!(s.spread, Some((0.1, 2.0)));
        assert_eq!(s.mainstay, Some(10.0));

        // A rep missing on one side, or a zero etcd value, gives no ratio.
        let s = summarize(
            &[Some(2.0), None, Some(0.0)],
            &[Some(4.0), Some(1.0), Some(3.0)],
        );
        assert_eq!(s.ratio, Some(2.0));
        assert_eq!(s.spread, Some((2.0, 2.0)));
        assert_eq!(s.etcd, Some(1.0));
        assert_eq!(s.mainstay, Some(3.0));

        // Only one system measured.
        let s = summarize(&[None, None], &[Some(1.0), Some(3.0)]);
        assert_eq!(s.etcd, None);
        assert_eq!(s.ratio, None);
        assert_eq!(s.spread, None);
        assert_eq!(s.mainstay, Some(2.0));
    }
}
