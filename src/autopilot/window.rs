//! Origin latencies of one backend over a window, recorded on every origin
//! request and read (and reset) once per window by the concurrency loop.
//!
//! Log-linear buckets of microseconds: 8 sub-buckets per power of two from
//! 2^10 µs (1.02 ms) to 2^26 µs (67.1 s). A bucket spans at most 1/8 of its
//! lower bound, and a percentile is interpolated inside the bucket that holds
//! the true order statistic, so it is within **12.5 % of the true value**
//! (within 1.02 ms below 1.02 ms). Latencies from 67.1 s up and failures share
//! the top bucket, read as [`WORST_LATENCY`].
//!
//! It also knows which requests are still in flight and since which window
//! ([`LatencyWindow::depart`], [`LatencyWindow::stalled`]): a portal that
//! stops answering (the March 2020 failure: connections accepted, no answer)
//! gives no latency until its requests time out, and missing samples would
//! read as an idle backend. A request in flight for a whole window is a
//! sample already: at least that slow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two: 8, so a bucket is at most 12.5 % wide.
const SUB_BITS: u32 = 3;
const SUBS: usize = 1 << SUB_BITS;
/// 2^10 µs = 1.02 ms: everything faster shares bucket 0.
const LOW_OCTAVE: u32 = 10;
/// 2^26 µs = 67.1 s: from there on, the top bucket.
const HIGH_OCTAVE: u32 = 26;
/// Bucket 0 (under 1.02 ms), the log-linear ones, the top bucket.
pub const BUCKETS: usize = 1 + (HIGH_OCTAVE - LOW_OCTAVE) as usize * SUBS + 1;
const TOP: usize = BUCKETS - 1;
/// What a failure counts as, and what the top bucket reads as.
pub const WORST_LATENCY: Duration = Duration::from_micros(1 << HIGH_OCTAVE);
/// Requests in flight are counted by the window they left in, modulo this:
/// one in flight for longer than the ring is read as young again for a few
/// windows, which only delays its being counted.
const EPOCHS: usize = 64;
/// The longest stall [`LatencyWindow::stalled`] can tell, in windows.
pub const MAX_STALL_WINDOWS: u64 = EPOCHS as u64 - 2;

/// The recorder shared by every request to one backend. Lock-free: a record
/// is two relaxed atomic additions, no allocation.
#[derive(Debug)]
pub struct LatencyWindow {
    /// Samples per bucket since the last [`LatencyWindow::take`].
    buckets: [AtomicU64; BUCKETS],
    /// Failures since the last take (also counted in the top bucket).
    errors: AtomicU64,
    /// Sum of the answered requests' latencies, in µs, for the mean.
    answered_micros: AtomicU64,
    /// Bumped by the concurrency loop when it cuts for failures: a request
    /// sent before (an older generation) that fails later is the past the
    /// cut already answered, not news. A portal that drops connections
    /// after 5 s would otherwise halve the limit five windows in a row, to
    /// its floor, on the same overload.
    generation: AtomicU64,
    /// The window's number, bumped by each [`LatencyWindow::take`].
    epoch: AtomicU64,
    /// Requests in flight by the window they left in (modulo [`EPOCHS`]).
    /// Each count only goes down after it went up, so the sum over slots
    /// is exact even when one wraps.
    flying: [AtomicU64; EPOCHS],
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            errors: AtomicU64::new(0),
            answered_micros: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            flying: [const { AtomicU64::new(0) }; EPOCHS],
        }
    }
}

/// One request on its way to the backend: in flight until it is answered,
/// fails, or is dropped without either (the client hung up, a reused
/// connection failed, the client's body failed: no sample).
#[must_use = "a flight is counted in flight until it is dropped"]
#[derive(Debug)]
pub struct Flight<'a> {
    window: &'a LatencyWindow,
    /// The window it left in; `None` when it is not counted in flight.
    epoch: Option<u64>,
    generation: u64,
}

impl Flight<'_> {
    /// An answer (to response headers) that was not a 5xx.
    /// Out of flight first, so that no window reads it both stalled and
    /// answered.
    pub fn answered(self, latency: Duration) {
        let window = self.window;
        drop(self);
        window.record(latency);
    }

    /// A timeout, a connection failure or a 5xx.
    pub fn failed(self) {
        let (window, generation) = (self.window, self.generation);
        drop(self);
        window.record_failure(generation);
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if let Some(epoch) = self.epoch {
            self.window.flying[slot(epoch)].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn slot(epoch: u64) -> usize {
    (epoch % EPOCHS as u64) as usize
}

impl LatencyWindow {
    pub fn new() -> LatencyWindow {
        LatencyWindow::default()
    }

    /// An answer from the origin (to response headers), that was not a 5xx.
    pub fn record(&self, latency: Duration) {
        let micros = micros(latency);
        self.buckets[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        self.answered_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// A timeout, a connection failure or a 5xx: the worst latency (an
    /// overloaded origin must not look faster by failing), and an error —
    /// unless the request was sent before the last cut (`sent_in`, the
    /// [`LatencyWindow::generation`] read when it was sent): then it is
    /// left out.
    pub fn record_failure(&self, sent_in: u64) {
        if sent_in < self.generation.load(Ordering::Relaxed) {
            return;
        }
        self.buckets[TOP].fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The generation to pass to [`LatencyWindow::record_failure`]: read
    /// when the request is sent.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The concurrency loop cut for failures: the requests in flight now
    /// belong to the past.
    pub fn new_generation(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// A request leaves for the backend now: say how it ended through the
    /// flight, which counts it in flight meanwhile. One that streams a
    /// body from the client is not: a pupil's slow upload is no stall of
    /// the backend.
    pub fn depart(&self, streams_body: bool) -> Flight<'_> {
        let epoch = (!streams_body).then(|| {
            let epoch = self.epoch.load(Ordering::Relaxed);
            self.flying[slot(epoch)].fetch_add(1, Ordering::Relaxed);
            epoch
        });
        Flight {
            window: self,
            epoch,
            generation: self.generation(),
        }
    }

    /// Requests still in flight that left before the last `windows`
    /// windows began: unanswered for at least that many whole windows (1
    /// to [`MAX_STALL_WINDOWS`]). Read after [`LatencyWindow::take`] with
    /// 1, they are the requests the window just taken could not time. A
    /// request leaving while this runs is never counted.
    pub fn stalled(&self, windows: u64) -> u64 {
        let now = self.epoch.load(Ordering::Relaxed);
        let young = windows.clamp(1, MAX_STALL_WINDOWS);
        (young + 1..EPOCHS as u64)
            .map(|age| self.flying[slot(now.wrapping_sub(age))].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// Reads and resets the window. A request recorded while this runs lands
    /// in this window or the next, never in both nor in neither; its error
    /// count may land in the other window than its bucket, which only shifts
    /// one error by one window.
    pub fn take(&self) -> LatencySnapshot {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        LatencySnapshot {
            counts: std::array::from_fn(|i| self.buckets[i].swap(0, Ordering::Relaxed)),
            errors: self.errors.swap(0, Ordering::Relaxed),
            answered_micros: self.answered_micros.swap(0, Ordering::Relaxed),
            stalled: 0,
        }
    }
}

/// One or several windows' worth of samples, mergeable (over windows,
/// backends or nodes) before reading percentiles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Samples per bucket; bucket `i` covers [`bucket_bounds`]`(i)`.
    pub counts: [u64; BUCKETS],
    /// Failures, also counted in the top bucket.
    pub errors: u64,
    /// Sum of the answered requests' latencies, in µs.
    pub answered_micros: u64,
    /// Samples that are requests still unanswered (see
    /// [`LatencySnapshot::with_stalled`]), also counted in `counts`.
    pub stalled: u64,
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        LatencySnapshot {
            counts: [0; BUCKETS],
            errors: 0,
            answered_micros: 0,
            stalled: 0,
        }
    }
}

/// What the controllers read from a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowStats {
    /// Requests that reached the origin, failures included.
    pub samples: u64,
    /// Timeouts, connection failures and 5xx.
    pub errors: u64,
    /// Requests still unanswered, counted at a lower bound of their latency.
    pub stalled: u64,
    /// Percentiles over every sample, failures read as [`WORST_LATENCY`].
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    /// Mean of the answered requests only: a failure has no latency worth
    /// averaging, and one would swamp the mean of a dashboard.
    pub mean: Duration,
}

impl WindowStats {
    /// Share of the samples that failed, 0 when there were none. Requests
    /// still unanswered count among the samples: a share over the few that
    /// ended would read one 500 beside nineteen stalled as 100 %, and the
    /// stalled ones are the latency rule's business.
    pub fn error_rate(&self) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        self.errors as f64 / self.samples as f64
    }
}

impl LatencySnapshot {
    pub fn samples(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn merge(&mut self, other: &LatencySnapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.errors += other.errors;
        self.answered_micros += other.answered_micros;
        self.stalled += other.stalled;
    }

    /// This window and `stalled` requests still unanswered after `at` (the
    /// window's length): samples of `at`, a lower bound of their latency
    /// (read, as every sample, within its bucket's 12.5 %). A loop counts
    /// them each window they stay unanswered (each window says what is
    /// known then), and again as what they turn out to be once they end.
    pub fn with_stalled(mut self, stalled: u64, at: Duration) -> LatencySnapshot {
        self.counts[bucket(micros(at))] += stalled;
        self.stalled += stalled;
        self
    }

    pub fn stats(&self) -> WindowStats {
        let samples = self.samples();
        let answered = samples.saturating_sub(self.errors + self.stalled);
        WindowStats {
            samples,
            errors: self.errors,
            stalled: self.stalled,
            p50: self.percentile(0.5),
            p90: self.percentile(0.9),
            p99: self.percentile(0.99),
            mean: match answered {
                0 => Duration::ZERO,
                n => Duration::from_micros(self.answered_micros / n),
            },
        }
    }

    /// The `q` percentile (0 < q ≤ 1), zero when empty: the sample of rank
    /// ⌈q·n⌉ is found by bucket, then placed linearly within it.
    pub fn percentile(&self, q: f64) -> Duration {
        let rank = q * self.samples() as f64;
        let mut below = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if rank <= (below + count) as f64 {
                if i == TOP {
                    return WORST_LATENCY;
                }
                let (low, high) = bucket_bounds(i);
                let within = (rank - below as f64) / count as f64;
                return low + (high - low).mul_f64(within);
            }
            below += count;
        }
        Duration::ZERO
    }
}

/// A latency in µs, saturating.
fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)
}

/// The bucket of a latency in µs.
fn bucket(micros: u64) -> usize {
    if micros < 1 << LOW_OCTAVE {
        return 0;
    }
    if micros >= 1 << HIGH_OCTAVE {
        return TOP;
    }
    let octave = 63 - micros.leading_zeros();
    let sub = (micros >> (octave - SUB_BITS)) as usize & (SUBS - 1);
    1 + (octave - LOW_OCTAVE) as usize * SUBS + sub
}

/// The latencies bucket `i` holds: `[low, high)`; the top bucket is open.
pub fn bucket_bounds(i: usize) -> (Duration, Duration) {
    if i == 0 {
        return (Duration::ZERO, Duration::from_micros(1 << LOW_OCTAVE));
    }
    if i >= TOP {
        return (WORST_LATENCY, Duration::MAX);
    }
    let octave = LOW_OCTAVE + ((i - 1) / SUBS) as u32;
    let sub = ((i - 1) % SUBS) as u64;
    let step = 1u64 << (octave - SUB_BITS);
    let low = (SUBS as u64 + sub) * step;
    (
        Duration::from_micros(low),
        Duration::from_micros(low + step),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        for i in 0..TOP {
            let (low, high) = bucket_bounds(i);
            assert_eq!(
                bucket_bounds(i + 1).0,
                high,
                "bucket {i} ends where {} starts",
                i + 1
            );
            let low_us = low.as_micros() as u64;
            assert_eq!(bucket(low_us), i, "{low:?} falls in bucket {i}");
            assert_eq!(
                bucket(high.as_micros() as u64 - 1),
                i,
                "just under {high:?}"
            );
            if i > 0 {
                assert!(high - low <= low / 8, "bucket {i} is at most 12.5 % wide");
            }
        }
    }

    #[test]
    fn failures_count_as_the_worst_latency_and_as_errors() {
        let window = LatencyWindow::new();
        for _ in 0..4 {
            window.record(ms(20));
        }
        for _ in 0..6 {
            window.record_failure(0);
        }
        let stats = window.take().stats();
        assert_eq!(
            (stats.samples, stats.errors),
            (10, 6),
            "every request counts once"
        );
        assert_eq!(stats.p50, WORST_LATENCY, "the median is a failure");
        assert_eq!(stats.mean, ms(20), "the mean is over answers only");
        assert!((stats.error_rate() - 0.6).abs() < 1e-9, "6 failures in 10");
    }

    #[test]
    fn failures_of_requests_sent_before_a_cut_are_left_out() {
        let window = LatencyWindow::new();
        let before = window.generation();
        window.new_generation();
        let after = window.generation();
        window.record_failure(before);
        window.record_failure(before);
        window.record_failure(after);
        window.record(ms(20));
        let stats = window.take().stats();
        assert_eq!(
            (stats.samples, stats.errors),
            (2, 1),
            "only the failure sent after the cut is news"
        );
    }

    #[test]
    fn requests_unanswered_for_a_whole_window_are_stalled_until_they_end() {
        let window = LatencyWindow::new();
        let early: Vec<Flight> = (0..3).map(|_| window.depart(false)).collect();
        let upload = window.depart(true);
        window.take();
        assert_eq!(window.stalled(1), 0, "in flight for part of a window only");
        let late = window.depart(false);
        window.take();
        assert_eq!(
            window.stalled(1),
            3,
            "the early three spanned a whole window, the upload is not counted"
        );
        drop(upload);
        assert_eq!(window.stalled(2), 0, "but not two");
        let mut early = early.into_iter();
        early.next().expect("flight").answered(ms(1500));
        early.next().expect("flight").failed();
        drop(early.next());
        assert_eq!(window.stalled(1), 0, "answered, failed, or dropped: ended");
        window.take();
        assert_eq!(window.stalled(1), 1, "then the late one");
        late.answered(ms(900));
        assert_eq!(window.stalled(1), 0);
        // Around the ring of epochs and back, nothing is left over.
        for _ in 0..3 * EPOCHS {
            let flight = window.depart(false);
            window.take();
            window.take();
            assert_eq!(window.stalled(1), 1, "one request, two windows old");
            drop(flight);
        }
        assert_eq!(window.stalled(1), 0);
    }

    #[test]
    fn stalled_samples_read_as_slow_but_neither_fail_nor_average() {
        let window = LatencyWindow::new();
        for _ in 0..4 {
            window.record(ms(20));
        }
        window.record_failure(0);
        let stats = window.take().with_stalled(5, ms(1000)).stats();
        assert_eq!((stats.samples, stats.stalled), (10, 5));
        assert!(
            (stats.error_rate() - 0.1).abs() < 1e-9,
            "one failure in ten requests, not one in the five that ended: {}",
            stats.error_rate()
        );
        assert_eq!(stats.mean, ms(20), "the mean is over answers only");
        assert!(
            stats.p90 >= ms(875) && stats.p90 <= ms(1125),
            "unanswered after 1 s reads as 1 s, within a bucket: {:?}",
            stats.p90
        );
    }

    #[test]
    fn take_resets_the_window() {
        let window = LatencyWindow::new();
        window.record(ms(5));
        window.record_failure(0);
        assert_eq!(window.take().samples(), 2, "the first window has both");
        assert_eq!(
            window.take(),
            LatencySnapshot::default(),
            "the next starts empty"
        );
        assert_eq!(
            window.take().stats().p90,
            Duration::ZERO,
            "empty reads zero"
        );
    }

    #[test]
    fn merged_snapshots_read_as_one_window() {
        let (a, b, both) = (
            LatencyWindow::new(),
            LatencyWindow::new(),
            LatencyWindow::new(),
        );
        for n in 1..=50 {
            a.record(ms(n));
            both.record(ms(n));
            b.record(ms(n * 10));
            both.record(ms(n * 10));
        }
        let mut merged = a.take();
        merged.merge(&b.take());
        assert_eq!(merged, both.take(), "merging is adding bucket by bucket");
    }

    proptest! {
        #[test]
        fn percentiles_are_within_the_stated_bound(
            micros in prop::collection::vec(0u64..(1 << HIGH_OCTAVE), 1..400),
            q in prop::sample::select(vec![0.5, 0.9, 0.99]),
        ) {
            let window = LatencyWindow::new();
            for &us in &micros {
                window.record(Duration::from_micros(us));
            }
            let estimate = window.take().percentile(q).as_secs_f64() * 1e6;
            let mut sorted = micros.clone();
            sorted.sort_unstable();
            let rank = (q * sorted.len() as f64).ceil() as usize;
            let truth = sorted[rank - 1] as f64;
            let bound = (truth / 8.0).max(1024.0);
            prop_assert!(
                (estimate - truth).abs() <= bound + 1.0,
                "p{} of {} samples: {estimate} µs for {truth} µs", q * 100.0, micros.len()
            );
        }
    }
}
