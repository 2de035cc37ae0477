//! What the pupils lived, recorded as they go: responses by kind with their
//! latency, where each pupil stands, when people got in, and how the ETA
//! they were shown compared with their real wait.
//!
//! Thousands of pupils write here at once, so the hot counters are atomics
//! and latencies go to fixed-size histograms. The per-pupil lists (time to
//! get in, ETA samples) get one entry per pupil, behind short std mutexes
//! never held across `.await`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::closed_enum::closed_enum;

closed_enum! {
    /// What a response was, as the pupil experienced it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Kind {
        /// A page or asset from the origin (through digue or not): a 2xx.
        Page,
        /// A response whose `Cache-Status` starts with `digue; hit`.
        CacheHit,
        /// The waiting room: a queued/closed page, or a JSON status poll.
        WaitingRoom,
        /// digue's busy page (origin saturated, nothing stale), or a 429.
        Busy,
        /// Any other failure: refused connection, reset, 4xx, 5xx.
        Error,
        /// No complete response within the request timeout.
        Timeout,
        /// A 3xx: not what was asked for. The simulator does not follow it (a
        /// redirect on the gated page usually means `--entry` is the wrong page).
        Redirect,
    }
}

impl Kind {
    /// Whether the pupil got what it asked for.
    pub(crate) fn served(self) -> bool {
        match self {
            Kind::Page | Kind::CacheHit => true,
            Kind::WaitingRoom | Kind::Busy | Kind::Error | Kind::Timeout | Kind::Redirect => false,
        }
    }
}

/// Sub-buckets per power of two: bucket width is 1/32 of its lower bound,
/// so a quantile read at a bucket's middle is within ±1.6 % of the truth.
const SUB_BITS: u32 = 5;
const SUBS: usize = 1 << SUB_BITS;
/// Buckets cover every `u64` of microseconds.
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUBS;

/// A log-linear histogram of microseconds: fixed memory (15 KiB), lock-free
/// recording, quantiles within ±1.6 % (exact below 32 µs).
pub(crate) struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    pub(crate) fn new() -> Histogram {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    fn index(v: u64) -> usize {
        let msb = 63 - v.max(1).leading_zeros();
        if msb < SUB_BITS {
            return v as usize;
        }
        let shift = msb - SUB_BITS;
        let sub = ((v >> shift) as usize) & (SUBS - 1);
        ((shift as usize + 1) << SUB_BITS) | sub
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let group = i >> SUB_BITS;
        if group == 0 {
            return i as u64;
        }
        let shift = group - 1;
        let lower = ((SUBS + (i & (SUBS - 1))) as u64) << shift;
        lower + ((1_u64 << shift) >> 1)
    }

    pub(crate) fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[Histogram::index(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn max(&self) -> Duration {
        Duration::from_micros(self.max.load(Ordering::Relaxed))
    }

    /// The `q` quantile (0 < q ≤ 1), or `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let max = self.max.load(Ordering::Relaxed);
                return Some(Duration::from_micros(Histogram::value(i).min(max)));
            }
        }
        None
    }
}

closed_enum! {
    /// Where a (non-bot) pupil stands. Phases are sticky: when the run stops,
    /// the counters say where everybody was.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Phase {
        /// Opening the entry page, no answer yet that says in or wait.
        Arriving,
        /// In the waiting room, or retrying after a busy page or an error.
        Waiting,
        /// Got the entry page; browsing.
        In,
        /// Got in and finished the session script.
        Done,
        /// Left without getting in (patience ran out).
        GaveUp,
        /// Stopped after too many errors in a row.
        Failed,
    }
}

/// One pupil who waited with an ETA and then got in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EtaSample {
    /// `eta_seconds` shown at the first ticket.
    pub(crate) shown: f64,
    /// The range shown (`eta_range_seconds`), in seconds.
    pub(crate) range: (f64, f64),
    /// From the first ticket to the entry page.
    pub(crate) actual: f64,
}

/// Everything recorded during one run.
pub(crate) struct Recorder {
    pub(crate) start: Instant,
    /// Responses and their latency, by `Kind as usize`.
    latency: [Histogram; Kind::ALL.len()],
    /// Pupils in each phase, by `Phase as usize`.
    phases: [AtomicU64; Phase::ALL.len()],
    /// Admissions by second since the start (sized for the time limit).
    admissions: Box<[AtomicU64]>,
    /// Seconds from arrival to the entry page, one per admitted pupil.
    get_in: Mutex<Vec<f64>>,
    eta: Mutex<Vec<EtaSample>>,
    /// Pupils holding an ETA and not in yet: pupil → (ticket time, top of the
    /// range). Whoever is left here at the end, or leaves, past the top of
    /// the range counts against the ETA: without it the report would only
    /// hear from the pupils who got in.
    pending_eta: Mutex<HashMap<u64, (Instant, f64)>>,
    /// Waited past the top of the range and did not get in.
    pub(crate) eta_overdue: AtomicU64,
    /// Non-bot pupils started, and bots started.
    pub(crate) started: AtomicU64,
    pub(crate) bots_started: AtomicU64,
    /// Arrivals that had to wait for a slot under the concurrency ceiling.
    pub(crate) held_by_ceiling: AtomicU64,
    pub(crate) bot_requests: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) assets_fetched: AtomicU64,
    pub(crate) pupils_with_assets: AtomicU64,
    pub(crate) steps_done: AtomicU64,
    /// Per-user answers whose echoed session id was compared with the
    /// pupil's own `JSESSIONID`, and those that differed.
    pub(crate) sessions_checked: AtomicU64,
    pub(crate) sessions_mismatched: AtomicU64,
    /// Waiting-room answers to pupils who hold no ticket after asking for
    /// one: digue's per-network ticket budget is throttling them.
    pub(crate) ticketless_waits: AtomicU64,
}

impl Recorder {
    pub(crate) fn new(start: Instant, time_limit: Duration) -> Recorder {
        let seconds = usize::try_from(time_limit.as_secs()).unwrap_or(usize::MAX / 2) + 2;
        Recorder {
            start,
            latency: std::array::from_fn(|_| Histogram::new()),
            phases: std::array::from_fn(|_| AtomicU64::new(0)),
            admissions: (0..seconds).map(|_| AtomicU64::new(0)).collect(),
            get_in: Mutex::new(Vec::new()),
            eta: Mutex::new(Vec::new()),
            pending_eta: Mutex::new(HashMap::new()),
            eta_overdue: AtomicU64::new(0),
            started: AtomicU64::new(0),
            bots_started: AtomicU64::new(0),
            held_by_ceiling: AtomicU64::new(0),
            bot_requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            assets_fetched: AtomicU64::new(0),
            pupils_with_assets: AtomicU64::new(0),
            steps_done: AtomicU64::new(0),
            sessions_checked: AtomicU64::new(0),
            sessions_mismatched: AtomicU64::new(0),
            ticketless_waits: AtomicU64::new(0),
        }
    }

    pub(crate) fn response(&self, kind: Kind, latency: Duration, bytes: usize) {
        self.latency[kind as usize].record(latency);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn latency(&self, kind: Kind) -> &Histogram {
        &self.latency[kind as usize]
    }

    pub(crate) fn requests(&self) -> u64 {
        self.latency.iter().map(Histogram::count).sum()
    }

    /// A new pupil, in `Arriving`.
    pub(crate) fn arrive(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.phases[Phase::Arriving as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn moved(&self, from: Phase, to: Phase) {
        if from != to {
            self.phases[from as usize].fetch_sub(1, Ordering::Relaxed);
            self.phases[to as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn in_phase(&self, p: Phase) -> u64 {
        self.phases[p as usize].load(Ordering::Relaxed)
    }

    /// A pupil got the entry page `get_in` after arriving.
    pub(crate) fn admitted(&self, pupil: u64, get_in: Duration, eta: Option<EtaSample>) {
        let second = usize::try_from(self.start.elapsed().as_secs()).unwrap_or(usize::MAX);
        if let Some(slot) = self.admissions.get(second).or(self.admissions.last()) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        lock(&self.get_in).push(get_in.as_secs_f64());
        lock(&self.pending_eta).remove(&pupil);
        if let Some(sample) = eta {
            lock(&self.eta).push(sample);
        }
    }

    /// A pupil was shown an ETA whose range tops at `hi` seconds.
    pub(crate) fn eta_shown(&self, pupil: u64, ticket_at: Instant, hi: f64) {
        lock(&self.pending_eta).insert(pupil, (ticket_at, hi));
    }

    /// A pupil left the line without getting in.
    pub(crate) fn left_line(&self, pupil: u64, now: Instant) {
        let entry = lock(&self.pending_eta).remove(&pupil);
        if let Some((at, hi)) = entry
            && now.duration_since(at).as_secs_f64() > hi
        {
            self.eta_overdue.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// At the end: pupils still in line past the top of their range.
    pub(crate) fn close_line(&self, now: Instant) {
        let pending = std::mem::take(&mut *lock(&self.pending_eta));
        let overdue = pending
            .values()
            .filter(|(at, hi)| now.duration_since(*at).as_secs_f64() > *hi)
            .count();
        self.eta_overdue
            .fetch_add(overdue as u64, Ordering::Relaxed);
    }

    pub(crate) fn get_in_times(&self) -> Vec<f64> {
        lock(&self.get_in).clone()
    }

    pub(crate) fn eta_samples(&self) -> Vec<EtaSample> {
        lock(&self.eta).clone()
    }

    /// Admissions in second `s` since the start.
    pub(crate) fn admissions_in(&self, s: usize) -> u64 {
        self.admissions
            .get(s)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }
}

/// Poisoning only means another pupil panicked mid-push; the data is still
/// a list of numbers worth reporting.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let h = Histogram::new();
        for ms in 1..=1000_u64 {
            h.record(Duration::from_millis(ms));
        }
        let check = |q: f64, expected_ms: f64| {
            let got = h.quantile(q).expect("not empty").as_secs_f64() * 1000.0;
            let err = (got - expected_ms).abs() / expected_ms;
            assert!(err < 0.02, "q{q}: {got} ms vs {expected_ms} ms");
        };
        check(0.5, 500.0);
        check(0.9, 900.0);
        check(0.99, 990.0);
        assert_eq!(h.count(), 1000);
        assert_eq!(h.max(), Duration::from_millis(1000));
    }

    #[test]
    fn histogram_buckets_are_ordered_and_cover_everything() {
        let mut last = 0;
        for v in [0_u64, 1, 31, 32, 33, 63, 64, 1000, 1 << 40, u64::MAX] {
            let i = Histogram::index(v);
            assert!(i < BUCKETS, "{v} → {i}");
            assert!(i >= last, "monotone at {v}");
            last = i;
        }
        assert_eq!(
            Histogram::value(Histogram::index(17)),
            17,
            "exact when small"
        );
        assert!(Histogram::new().quantile(0.5).is_none());
    }

    #[test]
    fn phases_move_and_stay() {
        let r = Recorder::new(Instant::now(), Duration::from_secs(5));
        r.arrive();
        r.arrive();
        r.moved(Phase::Arriving, Phase::Waiting);
        r.moved(Phase::Waiting, Phase::In);
        assert_eq!(r.in_phase(Phase::In), 1);
        assert_eq!(r.in_phase(Phase::Arriving), 1);
        assert_eq!(r.in_phase(Phase::Waiting), 0);
    }

    #[test]
    fn pupils_left_past_their_range_count_against_the_eta() {
        let start = Instant::now();
        let r = Recorder::new(start, Duration::from_secs(5));
        r.eta_shown(1, start, 10.0);
        r.eta_shown(2, start, 100.0);
        r.eta_shown(3, start, 10.0);
        r.left_line(1, start + Duration::from_secs(20));
        r.admitted(3, Duration::from_secs(12), None);
        r.close_line(start + Duration::from_secs(20));
        assert_eq!(
            r.eta_overdue.load(Ordering::Relaxed),
            1,
            "pupil 1 left late; 2 is within range; 3 got in"
        );
    }
}
