//! What this member knows of each peer's health from its own calls to it: the
//! last successful contact, round-trip times, failures, and a phi-accrual
//! suspicion level over the intervals between contacts (Hayashibara et al.;
//! Akka's and Cassandra's failure detectors). The leader calls every peer at
//! least once a heartbeat interval; a follower calls the leader for
//! forwarded writes and read indexes, and hears from it (`leader_contact`).
//! `phi` is a plain function with table tests; the table only records.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Intervals kept per peer.
const WINDOW: usize = 200;
/// The smallest standard deviation assumed (Akka's default is 100 ms for 1 s
/// heartbeats; heartbeats here come every 100 ms, so 25 ms).
pub const PHI_MIN_STD_SECONDS: f64 = 0.025;
/// Above this, a peer is suspected (Akka and Cassandra use 8).
pub const PHI_SUSPECT: f64 = 8.0;
/// Phi is reported no higher than this (a peer silent for long).
pub const PHI_MAX: f64 = 100.0;

/// φ = −log10(1 − F(elapsed)), F the normal distribution fitted to the
/// recent intervals between contacts (mean, standard deviation at least
/// `min_std`). Without intervals yet there is no suspicion.
pub fn phi(intervals: &[f64], elapsed: f64, min_std: f64) -> f64 {
    if intervals.is_empty() {
        return 0.0;
    }
    let n = intervals.len() as f64;
    let mean = intervals.iter().sum::<f64>() / n;
    let variance = intervals.iter().map(|i| (i - mean).powi(2)).sum::<f64>() / n;
    let std = variance.sqrt().max(min_std);
    // The logistic approximation of the normal CDF's tail that Akka uses:
    // P(later than elapsed) = e / (1 + e), e = exp(-y (1.5976 + 0.070566 y²)).
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    if p_later <= 0.0 {
        return PHI_MAX;
    }
    (-p_later.log10()).clamp(0.0, PHI_MAX)
}

#[derive(Default)]
struct Record {
    last_contact: Option<Instant>,
    intervals: VecDeque<f64>,
    rtt_last: Option<Duration>,
    rtt_smoothed: Option<Duration>,
    failures: u64,
}

/// One peer as this member sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerView {
    /// The peer's member id.
    pub id: u64,
    /// Time since the last successful call, if any.
    pub since_contact: Option<Duration>,
    /// The last round trip.
    pub rtt_last: Option<Duration>,
    /// Smoothed round trip (7/8 old + 1/8 new, as TCP's SRTT).
    pub rtt_smoothed: Option<Duration>,
    /// Failed calls since the process started.
    pub failures: u64,
    /// The suspicion level now.
    pub phi: f64,
}

/// Per-peer records.
#[derive(Default)]
pub struct PeerHealth {
    peers: Mutex<BTreeMap<u64, Record>>,
}

impl PeerHealth {
    /// A call to `peer` succeeded after `rtt`.
    pub fn contact(&self, peer: u64, rtt: Duration) {
        let now = Instant::now();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let record = peers.entry(peer).or_default();
        if let Some(last) = record.last_contact {
            record
                .intervals
                .push_back(now.duration_since(last).as_secs_f64());
            if record.intervals.len() > WINDOW {
                record.intervals.pop_front();
            }
        }
        record.last_contact = Some(now);
        record.rtt_last = Some(rtt);
        record.rtt_smoothed = Some(match record.rtt_smoothed {
            Some(srtt) => (srtt * 7 + rtt) / 8,
            None => rtt,
        });
    }

    /// A call to `peer` failed.
    pub fn failed(&self, peer: u64) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.entry(peer).or_default().failures += 1;
    }

    /// Every peer called so far.
    pub fn views(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .map(|(id, record)| {
                let since_contact = record.last_contact.map(|at| now.duration_since(at));
                let intervals: Vec<f64> = record.intervals.iter().copied().collect();
                PeerView {
                    id: *id,
                    since_contact,
                    rtt_last: record.rtt_last,
                    rtt_smoothed: record.rtt_smoothed,
                    failures: record.failures,
                    phi: since_contact.map_or(0.0, |since| {
                        phi(&intervals, since.as_secs_f64(), PHI_MIN_STD_SECONDS)
                    }),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_grows_with_silence_against_the_usual_interval() {
        let steady = vec![0.1; 50];
        // (intervals, elapsed, at least, at most)
        let table: &[(&[f64], f64, f64, f64)] = &[
            (&[], 10.0, 0.0, 0.0),
            (&steady, 0.05, 0.0, 0.3),
            (&steady, 0.1, 0.25, 0.35),
            (&steady, 0.2, 3.0, 8.0),
            (&steady, 0.3, PHI_SUSPECT, PHI_MAX),
            (&steady, 60.0, PHI_MAX, PHI_MAX),
        ];
        for (intervals, elapsed, low, high) in table {
            let value = phi(intervals, *elapsed, PHI_MIN_STD_SECONDS);
            assert!(
                (*low..=*high).contains(&value),
                "phi({elapsed}) = {value}, want {low}..={high}"
            );
        }
        // Jittery intervals suspect later than steady ones.
        let jittery: Vec<f64> = (0..50)
            .map(|i| if i % 2 == 0 { 0.05 } else { 0.25 })
            .collect();
        assert!(phi(&jittery, 0.3, PHI_MIN_STD_SECONDS) < phi(&steady, 0.3, PHI_MIN_STD_SECONDS));
    }

    #[tokio::test(start_paused = true)]
    async fn contacts_feed_intervals_and_smoothed_rtt() {
        let health = PeerHealth::default();
        for _ in 0..20 {
            health.contact(7, Duration::from_millis(8));
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        health.contact(7, Duration::from_millis(16));
        health.failed(7);
        let view = &health.views()[0];
        assert_eq!(view.id, 7);
        assert_eq!(view.rtt_last, Some(Duration::from_millis(16)));
        assert_eq!(view.rtt_smoothed, Some(Duration::from_millis(9)));
        assert_eq!(view.failures, 1);
        assert!(view.phi < 1.0, "{view:?}");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(health.views()[0].phi > PHI_SUSPECT);
    }
}
