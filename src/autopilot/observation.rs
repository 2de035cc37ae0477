//! What one node saw of the portal over a slow-loop interval. In a cluster
//! every node publishes its own, and the node deciding the shared admission
//! rate judges on all of them: one node's requests are a fraction of the
//! load, and its busy pages a fraction of the refusals.

use serde::{Deserialize, Serialize};

use super::window::LatencySnapshot;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// Grows with each one a node publishes, so that each is read once.
    pub seq: u64,
    /// When it was taken (Unix ms): a dead node's last one is left out.
    pub at_ms: u64,
    /// The non-empty latency buckets, as `(index, count)`.
    pub buckets: Vec<(usize, u64)>,
    pub errors: u64,
    pub answered_micros: u64,
    /// Samples that are requests still unanswered (absent from older nodes).
    #[serde(default)]
    pub stalled: u64,
    /// Busy pages the node served over the interval.
    pub busy: u64,
}

impl Observation {
    pub fn new(seq: u64, at_ms: u64, window: &LatencySnapshot, busy: u64) -> Observation {
        Observation {
            seq,
            at_ms,
            buckets: window
                .counts
                .iter()
                .enumerate()
                .filter(|&(_, &count)| count > 0)
                .map(|(i, &count)| (i, count))
                .collect(),
            errors: window.errors,
            answered_micros: window.answered_micros,
            stalled: window.stalled,
            busy,
        }
    }

    /// The latencies, to merge with the deciding node's own. It came
    /// through Redis, so it is read defensively: a bucket out of range is
    /// dropped and every count capped (far above any real interval), so
    /// that sums over buckets and nodes cannot overflow.
    pub fn window(&self) -> LatencySnapshot {
        let mut window = LatencySnapshot::default();
        for &(i, count) in &self.buckets {
            if let Some(slot) = window.counts.get_mut(i) {
                *slot = slot.saturating_add(count).min(MAX_COUNT);
            }
        }
        window.errors = self.errors.min(window.samples());
        window.answered_micros = self.answered_micros.min(MAX_COUNT * MAX_COUNT);
        window.stalled = self
            .stalled
            .min(window.samples().saturating_sub(window.errors));
        window
    }
}

/// A bucket's count from another node is capped here: 2^24 requests in one
/// interval is past any portal, and 130 buckets × 2^24 × a few hundred
/// nodes stays far from overflowing a u64.
const MAX_COUNT: u64 = 1 << 24;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autopilot::LatencyWindow;
    use crate::autopilot::window::BUCKETS;
    use std::time::Duration;

    #[test]
    fn an_observation_round_trips_through_json_and_reads_as_the_window() {
        let recorder = LatencyWindow::new();
        for ms in [5, 20, 20, 80, 400] {
            recorder.record(Duration::from_millis(ms));
        }
        recorder.record_failure(0);
        let window = recorder.take();
        let sent = Observation::new(7, 1_700_000_000_000, &window, 3);
        assert!(sent.buckets.len() < 8, "sparse: {:?}", sent.buckets);
        let json = serde_json::to_string(&sent).expect("serializable");
        let got: Observation = serde_json::from_str(&json).expect("readable");
        assert_eq!(got, sent);
        assert_eq!(got.window(), window);
    }

    #[test]
    fn garbage_from_redis_reads_as_something_sane() {
        let hostile = Observation {
            buckets: vec![(usize::MAX, 5), (BUCKETS, 9), (3, u64::MAX), (3, u64::MAX)],
            errors: u64::MAX,
            stalled: u64::MAX,
            ..Observation::default()
        };
        let window = hostile.window();
        assert_eq!(window.samples(), MAX_COUNT, "capped, not wrapped");
        assert_eq!(window.errors, MAX_COUNT, "no more errors than samples");
        assert_eq!(window.stalled, 0, "nor unanswered ones than the rest");
        let mut merged = window.clone();
        merged.merge(&window);
        assert_eq!(merged.stats().samples, 2 * MAX_COUNT);
    }
}
