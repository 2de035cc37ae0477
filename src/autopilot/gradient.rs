//! The fast loop: one backend's origin concurrency limit, in the spirit of
//! Envoy's adaptive concurrency filter and Netflix's Gradient2.
//!
//! Every window (~1 s) the limit follows the ratio of the backend's latency
//! at low load (`minRTT`, plus a buffer) to its current median latency:
//! `limit = limit × gradient + √limit`, the gradient clamped to [0.5, 1],
//! half of the move taken (all of it when most samples are requests still
//! unanswered), the result within the operator's bounds. Against
//! an origin whose latency grows with its load past a capacity C, it
//! settles where `limit = C × (1 + buffer) + √limit` (27 for C = 20, 64 for
//! C = 50): the √limit headroom keeps a small queue at the origin, so a
//! rise in capacity shows up as a latency that does not rise. The window
//! it reads counts the requests still unanswered after a whole window as
//! samples of the window's length (`LatencySnapshot::with_stalled`): a
//! backend that stops answering is cut, not read as idle.
//!
//! It starts as Envoy's filter does, by measuring `minRTT` at its floor,
//! then climbs by slow start (the limit doubles each window while latency
//! stays within the buffer) until latency rises, and the gradient takes
//! over. Starting at the ceiling, as a static setting would, sends a
//! portal ten times its capacity before the first decision. A limit that
//! was learned before (a restart resuming it, an operator's value) is
//! given back after that first measure instead.
//!
//! `minRTT` is re-measured every ~30 s (with jitter, so backends and nodes
//! do not all dip at once) by holding the limit at its floor for one
//! decision: a slower database moves the origin's baseline, and a stale
//! `minRTT` would read it as overload forever. Between probes it only goes
//! down, to the lowest median a healthy window shows: the pages asked for
//! change (the first arrivals' heavy login pages, then lighter ones), and a
//! `minRTT` measured on heavier pages than today's reads an origin at its
//! capacity as unloaded (the demo portal collapsed 2–4 s into every run).

use std::time::Duration;

use tokio::time::Instant;

use super::decisions::{Decision, Direction, Loop};
use super::window::{LatencySnapshot, WindowStats};
use super::words::{self, Lang};
use crate::closed_enum::closed_enum;

/// A decision is taken on at least this many samples: a median of fewer is
/// noise. Windows are gathered until there are enough...
pub const MIN_SAMPLES: u64 = 10;
/// ...for at most this many windows: fewer samples by then means an idle
/// backend, with nothing to learn from (the samples are dropped). So a
/// backend at its floor `f` is still read if its latency is under `f` s.
pub const MAX_GATHER_WINDOWS: u32 = 10;
/// Latency up to 10 % above `minRTT` still reads as unloaded: the median of
/// a window and the histogram (12.5 % buckets) are noisy by about that.
const RTT_BUFFER: f64 = 0.1;
/// A decision at most halves the limit, as in Envoy and Gradient2.
const MIN_GRADIENT: f64 = 0.5;
/// Share of the way to the new limit taken per decision: damps noisy
/// medians; an error cut, and a move on mostly unanswered requests, are
/// not smoothed.
const SMOOTHING: f64 = 0.5;
/// More than 10 % of failures halves the limit at once, whatever the
/// median says: an origin that fails fast (a 503 from its own limiter)
/// barely moves the median. A stray 500 does not reach it.
const ERROR_SHARE_CUT: f64 = 0.1;
/// The wall stands at 90 % of the limit at which the origin failed.
const WALL_SHARE: f64 = 0.9;
/// `minRTT` is re-measured this often...
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// ...give or take this share, drawn from the controller's seed.
const PROBE_JITTER: f64 = 0.15;
/// The window cannot tell latencies under ~1 ms apart.
const RESOLUTION: Duration = Duration::from_millis(1);

closed_enum! {
    /// Why the limit moved, or did not (the `reason` label).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum LimitReason {
        /// The gradient: latency against `minRTT`.
        Latency => "latency",
        /// Over 10 % of the window's requests failed.
        Errors => "errors",
        /// Held at the floor to measure `minRTT`.
        Probe => "probe",
        /// Doubled: latency still within the buffer of `minRTT`.
        SlowStart => "slow_start",
        /// `minRTT` measured, the limit given back.
        MinRtt => "min_rtt",
        /// Not enough samples yet.
        FewSamples => "few_samples",
        /// Held: the traffic did not use the limit it has.
        Unused => "unused",
        /// It would have moved, but it is at a bound.
        Bounds => "bounds",
    }
}

/// The operator's bounds for one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConcurrencyConfig {
    /// The floor (at least 1: a backend is never shut).
    pub min_limit: usize,
    /// The ceiling: the configured `origin_concurrency`.
    pub max_limit: usize,
}

impl ConcurrencyConfig {
    /// At least 1, and the floor under the ceiling.
    fn normalized(self) -> ConcurrencyConfig {
        let max_limit = self.max_limit.max(1);
        ConcurrencyConfig {
            min_limit: self.min_limit.clamp(1, max_limit),
            max_limit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Steady,
    /// At the floor to measure `minRTT`; `restore` is the limit to give
    /// back, `None` at start when there is none yet (slow start follows).
    Probing {
        restore: Option<f64>,
    },
    /// Doubling from the floor until latency rises.
    SlowStart,
}

/// One backend's limit. Not shared: the loop that owns it calls
/// [`ConcurrencyController::on_window`] and applies the limit to the guard.
#[derive(Debug, Clone)]
pub struct ConcurrencyController {
    config: ConcurrencyConfig,
    /// Fractional, so that small moves add up.
    limit: f64,
    /// The median latency when last measured at the floor.
    min_rtt: Option<Duration>,
    /// Just under where the origin last failed: the limit does not climb
    /// past it until the next `minRTT` probe, so an origin whose latency
    /// barely rises before it breaks is not sent over the edge every few
    /// windows.
    wall: Option<f64>,
    phase: Phase,
    /// When to measure `minRTT` next; `None` before the first measure.
    next_probe: Option<Instant>,
    /// Windows gathered until [`MIN_SAMPLES`].
    gathered: LatencySnapshot,
    gathered_windows: u32,
    /// The most requests in flight at once over the gathered windows, and
    /// over those of the last decision.
    gathered_peak: usize,
    decided_peak: usize,
    /// Draws the probe jitter.
    rng: SplitMix64,
}

/// One decision of the concurrency loop.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitDecision {
    pub old: usize,
    pub new: usize,
    pub direction: Direction,
    pub reason: LimitReason,
    /// The window(s) it was decided on.
    pub stats: WindowStats,
    /// `minRTT` after the decision.
    pub min_rtt: Option<Duration>,
    /// The ceiling, to say which bound was hit.
    pub ceiling: usize,
    /// The most requests in flight at once over the window(s).
    pub peak: usize,
}

impl ConcurrencyController {
    /// Starts at the floor, measuring `minRTT`; then gives back `resume`
    /// (a limit learned before) or, with none, climbs by slow start.
    /// `seed` draws the probe jitter: give each backend and node its own.
    pub fn new(
        config: ConcurrencyConfig,
        seed: u64,
        resume: Option<usize>,
    ) -> ConcurrencyController {
        let config = config.normalized();
        let resume = resume.map(|limit| limit.clamp(config.min_limit, config.max_limit) as f64);
        ConcurrencyController {
            config,
            limit: config.min_limit as f64,
            min_rtt: None,
            wall: None,
            phase: Phase::Probing { restore: resume },
            next_probe: None,
            gathered: LatencySnapshot::default(),
            gathered_windows: 0,
            gathered_peak: 0,
            decided_peak: 0,
            rng: SplitMix64(seed),
        }
    }

    /// The limit to apply to the backend's guard.
    pub fn limit(&self) -> usize {
        self.limit.round() as usize
    }

    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    pub fn is_probing(&self) -> bool {
        matches!(self.phase, Phase::Probing { .. })
    }

    /// Pinned at its floor, not for a probe nor at start (nor because the
    /// floor is the ceiling): the admission loop's signal that the origin is collapsing.
    pub fn at_floor(&self) -> bool {
        let ConcurrencyConfig {
            min_limit,
            max_limit,
        } = self.config;
        self.phase == Phase::Steady && min_limit < max_limit && self.limit() <= min_limit
    }

    /// Moves the limit (a restart resuming its last value, an operator's
    /// PATCH); it goes on from there, within the bounds.
    pub fn set_limit(&mut self, limit: usize) {
        self.set_within_bounds(limit as f64);
    }

    fn set_within_bounds(&mut self, limit: f64) {
        let ConcurrencyConfig {
            min_limit,
            max_limit,
        } = self.config;
        self.limit = limit.clamp(min_limit as f64, max_limit as f64);
    }

    /// New bounds, live: the limit is brought within them.
    pub fn set_config(&mut self, config: ConcurrencyConfig) {
        self.config = config.normalized();
        self.set_limit(self.limit());
    }

    /// One window of the backend's latencies has ended (`now`), in which
    /// at most `peak` requests were in flight at once: the limit for the
    /// next one. A limit the traffic did not use is not raised (as in
    /// Gradient2, and as TCP does not grow a window the sender did not
    /// fill): latency under a light load says nothing about a heavier one.
    pub fn on_window(
        &mut self,
        window: &LatencySnapshot,
        peak: usize,
        now: Instant,
    ) -> LimitDecision {
        let old = self.limit();
        self.gathered.merge(window);
        self.gathered_windows += 1;
        self.gathered_peak = self.gathered_peak.max(peak);
        self.decided_peak = self.gathered_peak;
        if self.gathered.samples() < MIN_SAMPLES {
            let stats = self.gathered.stats();
            if self.gathered_windows >= MAX_GATHER_WINDOWS {
                self.forget_gathered();
            }
            return self.decision(old, LimitReason::FewSamples, stats);
        }
        let stats = self.gathered.stats();
        // Slow start doubles a limit that was filled; the gradient's
        // headroom needs it half used.
        let filled = self.gathered_peak >= old;
        let half_used = self.gathered_peak.saturating_mul(2) >= old;
        self.forget_gathered();
        // `minRTT` is the lowest latency seen since the last probe: a probe
        // that measured a heavier mix of pages than the traffic now asks
        // for (the login pages of the first arrivals) would otherwise read
        // every later window as unloaded and let the limit climb past the
        // origin's capacity.
        if !self.is_probing()
            && stats.error_rate() <= ERROR_SHARE_CUT
            && let Some(min_rtt) = self.min_rtt
        {
            self.min_rtt = Some(min_rtt.min(stats.p50.max(RESOLUTION)));
        }
        let (wanted, reason) = match self.phase {
            Phase::Probing { restore } => {
                self.end_probe(restore, &stats, now);
                return self.decision(old, LimitReason::MinRtt, stats);
            }
            _ if stats.error_rate() > ERROR_SHARE_CUT => {
                self.phase = Phase::Steady;
                self.wall = Some(self.limit * WALL_SHARE);
                (self.limit * MIN_GRADIENT, LimitReason::Errors)
            }
            Phase::SlowStart if self.within_buffer(&stats) && !filled => {
                return self.decision(old, LimitReason::Unused, stats);
            }
            Phase::SlowStart if self.within_buffer(&stats) => {
                let doubled = self.under_wall(self.limit * 2.0);
                if doubled >= self.config.max_limit as f64 {
                    self.phase = Phase::Steady;
                }
                (doubled, LimitReason::SlowStart)
            }
            Phase::SlowStart => {
                self.phase = Phase::Steady;
                (
                    self.under_wall(self.follow_gradient(&stats)),
                    LimitReason::Latency,
                )
            }
            Phase::Steady if self.probe_due(now) => {
                self.phase = Phase::Probing {
                    restore: Some(self.limit),
                };
                self.limit = self.config.min_limit as f64;
                return self.decision(old, LimitReason::Probe, stats);
            }
            Phase::Steady => {
                let wanted = self.under_wall(self.follow_gradient(&stats));
                if wanted > self.limit && !half_used {
                    return self.decision(old, LimitReason::Unused, stats);
                }
                (wanted, LimitReason::Latency)
            }
        };
        self.set_within_bounds(wanted);
        let blocked = self.limit() == old && wanted.round() as usize != old;
        let reason = if blocked { LimitReason::Bounds } else { reason };
        self.decision(old, reason, stats)
    }

    fn forget_gathered(&mut self) {
        self.gathered = LatencySnapshot::default();
        self.gathered_windows = 0;
        self.gathered_peak = 0;
    }

    fn probe_due(&self, now: Instant) -> bool {
        self.next_probe.is_none_or(|at| now >= at)
    }

    /// The probe window's median is the new `minRTT`, unless it failed too
    /// often to say anything about latency (then it is measured again at
    /// the next healthy window if there was none yet). Requests let in
    /// before the probe may still end in its window: with latencies near a
    /// window's length, `minRTT` reads high, and the limit settles higher
    /// until the next probe.
    fn end_probe(&mut self, restore: Option<f64>, stats: &WindowStats, now: Instant) {
        if stats.error_rate() <= ERROR_SHARE_CUT {
            self.min_rtt = Some(stats.p50.max(RESOLUTION));
            // The origin may have changed since it failed: climb again.
            self.wall = None;
        }
        self.phase = match (restore, self.min_rtt) {
            (Some(restore), _) => {
                self.set_within_bounds(restore);
                Phase::Steady
            }
            (None, Some(_)) => Phase::SlowStart,
            // The first measure failed: measure again, still at the floor.
            (None, None) => Phase::Probing { restore: None },
        };
        self.next_probe = self.min_rtt.map(|_| {
            let jitter = 1.0 + PROBE_JITTER * (2.0 * self.rng.unit() - 1.0);
            now + PROBE_INTERVAL.mul_f64(jitter)
        });
    }

    /// `wanted`, but not past the wall; never lower than the limit now (a
    /// wall only stops a climb).
    fn under_wall(&self, wanted: f64) -> f64 {
        match self.wall {
            Some(wall) if wanted > wall => wall.max(self.limit.min(wanted)),
            _ => wanted,
        }
    }

    /// Latency no higher than `minRTT` plus the buffer: the origin is not
    /// loaded yet.
    fn within_buffer(&self, stats: &WindowStats) -> bool {
        self.min_rtt.is_some_and(|min_rtt| {
            stats.p50.max(RESOLUTION).as_secs_f64() <= min_rtt.as_secs_f64() * (1.0 + RTT_BUFFER)
        })
    }

    /// The smoothed limit the gradient asks for. The median, not the p90:
    /// it is stable over the few dozen samples of a window, and `minRTT`
    /// is a median too, so the ratio compares like with like. The tail and
    /// failures are the error rule's and the admission loop's business.
    /// When most samples are requests still unanswered after a whole
    /// window, the median is no noise to damp: that move is taken whole.
    fn follow_gradient(&self, stats: &WindowStats) -> f64 {
        let Some(min_rtt) = self.min_rtt else {
            return self.limit;
        };
        let sample = stats.p50.max(RESOLUTION).as_secs_f64();
        let gradient =
            (min_rtt.as_secs_f64() * (1.0 + RTT_BUFFER) / sample).clamp(MIN_GRADIENT, 1.0);
        let target = self.limit * gradient + self.limit.sqrt();
        let smoothing = match stats.stalled.saturating_mul(2) > stats.samples {
            true => 1.0,
            false => SMOOTHING,
        };
        self.limit + smoothing * (target - self.limit)
    }

    fn decision(&self, old: usize, reason: LimitReason, stats: WindowStats) -> LimitDecision {
        let new = self.limit();
        // Waiting for samples moves nothing, probe or not (an idle site
        // would log and count a decision every window); a probe that
        // decides is a probe.
        let direction = if reason == LimitReason::FewSamples {
            Direction::Hold
        } else if self.is_probing() || reason == LimitReason::MinRtt {
            Direction::Probe
        } else {
            match new.cmp(&old) {
                std::cmp::Ordering::Less => Direction::Down,
                std::cmp::Ordering::Equal => Direction::Hold,
                std::cmp::Ordering::Greater => Direction::Up,
            }
        };
        LimitDecision {
            old,
            new,
            direction,
            reason,
            stats,
            min_rtt: self.min_rtt,
            ceiling: self.config.max_limit,
            peak: self.decided_peak,
        }
    }
}

impl Decision for LimitDecision {
    fn loop_kind(&self) -> Loop {
        Loop::Concurrency
    }

    fn old_new(&self) -> (u64, u64) {
        (self.old as u64, self.new as u64)
    }

    fn direction(&self) -> Direction {
        self.direction
    }

    fn reason(&self) -> &'static str {
        self.reason.as_str()
    }

    /// "latence 45 ms pour 20 ms à vide", "latency 45 ms vs 20 ms unloaded"
    fn cause(&self, lang: Lang) -> String {
        let fr = lang == Lang::Fr;
        let p50 = words::duration(self.stats.p50, lang);
        let min_rtt = match self.min_rtt {
            Some(rtt) => words::duration(rtt, lang),
            None if fr => "inconnue".to_owned(),
            None => "unknown".to_owned(),
        };
        let stalled = match (self.stats.stalled, fr) {
            (0, _) => String::new(),
            (n, true) => format!(", {n} toujours sans réponse"),
            (n, false) => format!(", {n} still unanswered"),
        };
        match (self.reason, fr) {
            (LimitReason::Latency, true) => {
                format!("latence {p50} pour {min_rtt} à vide{stalled}")
            }
            (LimitReason::Latency, false) => {
                format!("latency {p50} vs {min_rtt} unloaded{stalled}")
            }
            (LimitReason::Errors, true) => {
                format!("erreurs {}", words::percent(self.stats.error_rate(), lang))
            }
            (LimitReason::Errors, false) => {
                format!("errors {}", words::percent(self.stats.error_rate(), lang))
            }
            (LimitReason::Probe, true) => "mesure de la latence à vide".to_owned(),
            (LimitReason::Probe, false) => "measuring unloaded latency".to_owned(),
            (LimitReason::SlowStart, true) => format!("latence {p50}, {min_rtt} à vide"),
            (LimitReason::SlowStart, false) => format!("latency {p50}, {min_rtt} unloaded"),
            (LimitReason::MinRtt, true) => format!("latence à vide {min_rtt}"),
            (LimitReason::MinRtt, false) => format!("unloaded latency {min_rtt}"),
            (LimitReason::Unused, true) => format!("{} en cours au plus", self.peak),
            (LimitReason::Unused, false) => format!("at most {} in flight", self.peak),
            (LimitReason::FewSamples, true) => format!("{} réponses seulement", self.stats.samples),
            (LimitReason::FewSamples, false) => format!("only {} responses", self.stats.samples),
            (LimitReason::Bounds, true) if self.new == self.ceiling => "plafond atteint".to_owned(),
            (LimitReason::Bounds, true) => "plancher atteint".to_owned(),
            (LimitReason::Bounds, false) if self.new == self.ceiling => "at the ceiling".to_owned(),
            (LimitReason::Bounds, false) => "at the floor".to_owned(),
        }
    }
}

/// A tiny seeded generator (SplitMix64) for the probe jitter: deterministic
/// in tests, no dependency.
#[derive(Debug, Clone)]
pub(super) struct SplitMix64(pub(super) u64);

impl SplitMix64 {
    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autopilot::window::LatencyWindow;
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(1);
    const BASE: Duration = Duration::from_millis(20);
    /// Demand exceeds any limit: the guard is always full.
    const FULL: usize = usize::MAX;

    /// The brief's origin: `capacity` requests at once at `base` latency;
    /// past that, latency grows with the load (`base × in-flight /
    /// capacity`); past twice the capacity, the extra requests fail (after
    /// `base`, like a portal's own 503). The guard is always full: demand
    /// exceeds any limit. `fragile` is the demo portal instead: slower from
    /// the first request on (`(1 + load)²`), failing past its capacity.
    struct Origin {
        capacity: f64,
        fragile: bool,
        base: Duration,
        /// Each latency is multiplied by 1 ± up to this.
        noise: f64,
        rng: SplitMix64,
    }

    impl Origin {
        fn new(capacity: f64) -> Origin {
            Origin {
                capacity,
                fragile: false,
                base: BASE,
                noise: 0.0,
                rng: SplitMix64(7),
            }
        }

        /// One window at `limit` in flight, by Little's law.
        fn window(&mut self, limit: usize) -> LatencySnapshot {
            let recorder = LatencyWindow::new();
            let in_flight = limit as f64;
            let (served, latency) = if self.fragile {
                let served = in_flight.min(self.capacity);
                // The median request sees half the others.
                let load = served / 2.0 / self.capacity;
                (served, self.base.mul_f64((1.0 + load).powi(2)))
            } else {
                let served = in_flight.min(2.0 * self.capacity);
                (served, self.base.mul_f64((served / self.capacity).max(1.0)))
            };
            let answered = (served * WINDOW.as_secs_f64() / latency.as_secs_f64()).round();
            let failed =
                ((in_flight - served) * WINDOW.as_secs_f64() / self.base.as_secs_f64()).round();
            for _ in 0..answered as u64 {
                let noise = 1.0 + self.noise * (2.0 * self.rng.unit() - 1.0);
                recorder.record(latency.mul_f64(noise));
            }
            for _ in 0..failed as u64 {
                recorder.record_failure(0);
            }
            recorder.take()
        }
    }

    /// Drives a controller against an origin, one window a second.
    struct Run {
        controller: ConcurrencyController,
        now: Instant,
        /// Every decision, in order.
        decisions: Vec<LimitDecision>,
    }

    impl std::fmt::Debug for Run {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let limits: Vec<usize> = self.decisions.iter().map(|d| d.new).collect();
            write!(f, "limits {limits:?}")
        }
    }

    impl Run {
        /// A controller with nothing learned yet, floor 1.
        fn new(max_limit: usize) -> Run {
            let config = ConcurrencyConfig {
                min_limit: 1,
                max_limit,
            };
            let controller = ConcurrencyController::new(config, 42, None);
            Run {
                controller,
                now: Instant::now(),
                decisions: Vec::new(),
            }
        }

        fn windows(&mut self, origin: &mut Origin, count: usize) {
            for _ in 0..count {
                let window = origin.window(self.controller.limit());
                self.now += WINDOW;
                let decision = self.controller.on_window(&window, FULL, self.now);
                self.decisions.push(decision);
            }
        }

        /// The limits set over the last `count` windows, probes left out.
        fn steady_limits(&self, count: usize) -> Vec<usize> {
            let recent = &self.decisions[self.decisions.len() - count..];
            recent
                .iter()
                // A probe's windows: deciding, or gathering samples at the floor.
                .filter(|d| d.direction != Direction::Probe && d.reason != LimitReason::FewSamples)
                .map(|d| d.new)
                .collect()
        }
    }

    /// `limits` all within [low × C, high × C].
    fn assert_within(limits: &[usize], capacity: f64, (low, high): (f64, f64), what: &str) {
        for &limit in limits {
            let share = limit as f64 / capacity;
            assert!(
                (low..=high).contains(&share),
                "{what}: limit {limit} is {share:.2} × capacity {capacity}, outside [{low}, {high}]: {limits:?}"
            );
        }
    }

    /// Where the limit settles: at least the capacity (the origin is kept
    /// busy), at most 1.5 × (its latency at most 1.5 × the base, and never
    /// the 2 × past which it fails).
    const BAND: (f64, f64) = (0.8, 1.5);

    #[test]
    fn a_ceiling_ten_times_too_high_is_never_sent_slow_start_climbs_to_capacity() {
        let mut origin = Origin::new(20.0);
        let mut run = Run::new(200);
        run.windows(&mut origin, 7);
        let first: Vec<(usize, LimitReason)> =
            run.decisions.iter().map(|d| (d.new, d.reason)).collect();
        use LimitReason::{Latency, MinRtt, SlowStart};
        assert_eq!(
            first,
            [
                (1, MinRtt),
                (2, SlowStart),
                (4, SlowStart),
                (8, SlowStart),
                (16, SlowStart),
                (32, SlowStart),
                (30, Latency)
            ],
            "minRTT at the floor, then doubling until latency rises"
        );
        origin.noise = 0.2;
        run.windows(&mut origin, 120);
        assert_within(&run.steady_limits(120), 20.0, BAND, "after 7 windows");
        let failures: u64 = run.decisions.iter().map(|d| d.stats.errors).sum();
        assert_eq!(failures, 0, "the origin never gets 2 × its capacity");
    }

    #[test]
    fn a_fragile_portal_is_never_sent_past_its_capacity() {
        for capacity in [12.0, 24.0, 36.0] {
            let mut origin = Origin::new(capacity);
            (origin.fragile, origin.noise) = (true, 0.2);
            let mut run = Run::new(10 * capacity as usize);
            run.windows(&mut origin, 120);
            let failures: u64 = run.decisions.iter().map(|d| d.stats.errors).sum();
            assert_eq!(failures, 0, "capacity {capacity}: {run:?}");
            let what = format!("fragile, capacity {capacity}");
            assert_within(&run.steady_limits(100), capacity, (0.3, 1.0), &what);
        }
    }

    #[test]
    fn a_limit_learned_before_is_given_back_after_the_first_measure() {
        let config = ConcurrencyConfig {
            min_limit: 2,
            max_limit: 200,
        };
        let mut controller = ConcurrencyController::new(config, 1, Some(27));
        assert_eq!(controller.limit(), 2, "measuring at the floor first");
        let window = Origin::new(20.0).window(2);
        let decision = controller.on_window(&window, FULL, Instant::now());
        assert_eq!((decision.reason, decision.new), (LimitReason::MinRtt, 27));
        assert!(!controller.is_probing());
    }

    #[test]
    fn limit_follows_a_halving_of_capacity_within_two_windows_and_climbs_back() {
        let mut origin = Origin::new(40.0);
        origin.noise = 0.2;
        let mut run = Run::new(400);
        run.windows(&mut origin, 60);
        assert_within(&run.steady_limits(40), 40.0, BAND, "settled at 40");
        origin.capacity = 20.0;
        run.windows(&mut origin, 2);
        assert!(
            run.controller.limit() <= 30,
            "1.5 × the new capacity in two windows: {run:?}"
        );
        run.windows(&mut origin, 60);
        assert_within(&run.steady_limits(60), 20.0, BAND, "settled at 20");
        origin.capacity = 40.0;
        run.windows(&mut origin, 20);
        assert!(
            run.controller.limit() >= 32,
            "back to 0.8 × 40 within 20 windows: {run:?}"
        );
    }

    /// Under ±20 % noise, the settled limit (probes left out) moves by at
    /// most 0.2 × C against a fast origin (hundreds of samples a window),
    /// 0.35 × C against a slow one (400 ms: tens of samples a window, and
    /// a `minRTT` measured on about ten), and stays in the band. Noise
    /// may end slow start early, leaving the gradient to climb by about
    /// √limit / 2 a window: the limits are read after 80 windows.
    #[test]
    fn noisy_latencies_move_the_settled_limit_by_a_bounded_amplitude() {
        for (base, bound) in [(BASE, 0.2), (Duration::from_millis(400), 0.35)] {
            for capacity in [20.0, 50.0, 100.0] {
                for seed in 1..=8 {
                    let mut origin = Origin::new(capacity);
                    (origin.base, origin.noise, origin.rng) = (base, 0.2, SplitMix64(seed));
                    let mut run = Run::new(1000);
                    run.windows(&mut origin, 180);
                    let limits = run.steady_limits(100);
                    let what = format!("{base:?}, capacity {capacity}, seed {seed}");
                    assert_within(&limits, capacity, BAND, &what);
                    let (low, high) = (limits.iter().min(), limits.iter().max());
                    let amplitude = (high.unwrap_or(&0) - low.unwrap_or(&0)) as f64;
                    assert!(
                        amplitude <= bound * capacity,
                        "{what}: ±20 % noise moved the limit by {amplitude}: {limits:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn min_rtt_is_measured_again_so_a_slower_baseline_is_not_read_as_overload() {
        let mut origin = Origin::new(20.0);
        let mut run = Run::new(200);
        run.windows(&mut origin, 40);
        let measured = run.controller.min_rtt().unwrap_or_default();
        assert!(
            measured.abs_diff(BASE) <= BASE / 8,
            "minRTT {measured:?} within 12.5 % of {BASE:?}"
        );
        origin.base = 2 * BASE;
        run.windows(&mut origin, 35 + 20);
        let measured = run.controller.min_rtt().unwrap_or_default();
        assert!(
            measured.abs_diff(2 * BASE) <= BASE / 4,
            "minRTT {measured:?} follows the baseline"
        );
        assert_within(
            &run.steady_limits(10),
            20.0,
            BAND,
            "back near capacity after the next probe",
        );
    }

    #[test]
    fn a_min_rtt_measured_on_heavier_pages_is_lowered_and_the_fragile_portal_never_fails() {
        let mut origin = Origin::new(20.0);
        origin.fragile = true;
        // The first arrivals ask for login pages three times heavier.
        origin.base = 3 * BASE;
        let mut run = Run::new(200);
        run.windows(&mut origin, 1);
        assert!(run.controller.min_rtt().is_some_and(|m| m >= 2 * BASE));
        origin.base = BASE;
        run.windows(&mut origin, 25);
        let measured = run.controller.min_rtt().unwrap_or_default();
        assert!(
            measured <= BASE * 3 / 2,
            "minRTT {measured:?} follows the lighter pages"
        );
        let failing: Vec<_> = run
            .decisions
            .iter()
            .filter(|d| d.stats.error_rate() > 0.0)
            .map(|d| d.old)
            .collect();
        assert!(
            failing.is_empty(),
            "limits that sent the portal past its capacity: {failing:?}"
        );
    }

    #[test]
    fn min_rtt_is_probed_every_thirty_seconds_give_or_take_fifteen_percent() {
        let mut origin = Origin::new(20.0);
        let mut run = Run::new(200);
        run.windows(&mut origin, 400);
        let starts: Vec<usize> = (0..run.decisions.len())
            .filter(|&i| run.decisions[i].reason == LimitReason::Probe)
            .collect();
        assert!(
            starts.len() >= 11,
            "a probe at start, then about every 30 s: {starts:?}"
        );
        for pair in starts.windows(2) {
            let gap = pair[1] - pair[0];
            assert!((26..=36).contains(&gap), "probes {gap} s apart: {starts:?}");
        }
        let gaps: std::collections::BTreeSet<usize> =
            starts.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps.len() > 1, "jitter spreads the probes: {gaps:?}");
        for &start in &starts {
            let (probe, end) = (&run.decisions[start], &run.decisions[start + 1]);
            assert_eq!(probe.new, 1, "a probe holds the floor");
            assert_eq!(
                (end.reason, end.new),
                (LimitReason::MinRtt, probe.old),
                "for one window, then gives the limit back"
            );
        }
    }

    #[test]
    fn failures_halve_the_limit_at_once_but_never_under_the_floor() {
        let config = ConcurrencyConfig {
            min_limit: 4,
            max_limit: 100,
        };
        let mut controller = ConcurrencyController::new(config, 1, Some(100));
        let recorder = LatencyWindow::new();
        let now = Instant::now();
        for _ in 0..10 {
            recorder.record(BASE);
        }
        controller.on_window(&recorder.take(), FULL, now);
        let mut limits = Vec::new();
        for _ in 0..6 {
            for _ in 0..8 {
                recorder.record(BASE);
            }
            recorder.record_failure(0);
            recorder.record_failure(0);
            let decision = controller.on_window(&recorder.take(), FULL, now);
            let expected = if decision.old == 4 {
                LimitReason::Bounds
            } else {
                LimitReason::Errors
            };
            assert_eq!(decision.reason, expected, "{decision:?}");
            limits.push(decision.new);
        }
        assert_eq!(
            limits,
            [50, 25, 13, 6, 4, 4],
            "20 % failures halve each window"
        );
        assert!(controller.at_floor(), "collapsed at the floor");
        let fixed = ConcurrencyConfig {
            min_limit: 4,
            max_limit: 4,
        };
        assert!(
            !ConcurrencyController::new(fixed, 1, None).at_floor(),
            "a fixed limit is no collapse"
        );
    }

    #[test]
    fn after_failures_the_limit_stays_under_where_they_began_until_the_next_probe() {
        let config = ConcurrencyConfig {
            min_limit: 1,
            max_limit: 200,
        };
        let mut controller = ConcurrencyController::new(config, 3, Some(40));
        let mut now = Instant::now();
        let window = |answered: u64, failed: u64| {
            let recorder = LatencyWindow::new();
            (0..answered).for_each(|_| recorder.record(BASE));
            (0..failed).for_each(|_| recorder.record_failure(0));
            recorder.take()
        };
        controller.on_window(&window(50, 0), FULL, now);
        assert_eq!(controller.limit(), 40);
        let cut = controller.on_window(&window(50, 50), FULL, now);
        assert_eq!((cut.reason, cut.new), (LimitReason::Errors, 20));
        let mut limits = Vec::new();
        // An origin that stays fast right up to where it breaks.
        for _ in 0..20 {
            now += WINDOW;
            limits.push(controller.on_window(&window(50, 0), FULL, now).new);
        }
        assert!(
            limits.iter().all(|&l| l <= 36) && limits.contains(&36),
            "climbs back to 90 % of 40, not past it: {limits:?}"
        );
        for _ in 0..40 {
            now += WINDOW;
            limits.push(controller.on_window(&window(50, 0), FULL, now).new);
        }
        assert!(
            limits.iter().any(|&l| l > 40),
            "a new minRTT lifts the wall: {limits:?}"
        );
    }

    #[test]
    fn a_limit_the_traffic_does_not_use_is_not_raised() {
        let config = ConcurrencyConfig {
            min_limit: 2,
            max_limit: 200,
        };
        let mut controller = ConcurrencyController::new(config, 5, None);
        let mut now = Instant::now();
        let fast = || {
            let recorder = LatencyWindow::new();
            (0..50).for_each(|_| recorder.record(BASE));
            recorder.take()
        };
        controller.on_window(&fast(), 2, now);
        let mut seen = Vec::new();
        for peak in [2, 4, 5, 5, 5, 8] {
            now += WINDOW;
            let d = controller.on_window(&fast(), peak, now);
            seen.push((d.new, d.reason));
        }
        use LimitReason::{SlowStart, Unused};
        assert_eq!(
            seen,
            [
                (4, SlowStart),
                (8, SlowStart),
                (8, Unused),
                (8, Unused),
                (8, Unused),
                (16, SlowStart)
            ],
            "doubles only a limit that was filled"
        );
        assert!(
            controller
                .on_window(&fast(), 3, now + WINDOW)
                .describe_en()
                .contains("at most 3 in flight")
        );
    }

    #[test]
    fn a_quiet_backend_is_judged_on_ten_samples_gathered_over_ten_windows_at_most() {
        let mut controller = ConcurrencyController::new(
            ConcurrencyConfig {
                min_limit: 1,
                max_limit: 8,
            },
            1,
            None,
        );
        let recorder = LatencyWindow::new();
        let now = Instant::now();
        let mut reasons = Vec::new();
        for samples in [4, 4, 4, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1] {
            for _ in 0..samples {
                recorder.record(BASE);
            }
            reasons.push(controller.on_window(&recorder.take(), FULL, now).reason);
        }
        use LimitReason::{FewSamples as Few, MinRtt};
        assert_eq!(
            reasons,
            [
                Few, Few, MinRtt, Few, Few, Few, Few, Few, Few, Few, Few, Few, Few, Few
            ],
            "12 samples over 3 windows decide; 9 then silence are dropped after 10 windows"
        );
        assert_eq!(controller.limit(), 1, "no window had enough samples since");
        assert!(
            !controller.at_floor(),
            "slow start at the floor is no collapse"
        );
    }

    #[test]
    fn a_backend_that_stops_answering_is_cut_by_its_unanswered_requests() {
        let mut run = Run::new(200);
        run.windows(&mut Origin::new(20.0), 40);
        let before = run.controller.limit();
        assert!(before >= 20, "steady near the capacity first: {run:?}");
        // No answer at all from now on: what was sent stays in flight.
        let silent = LatencySnapshot::default;
        let mut alone = run.controller.clone();
        let held = alone.on_window(&silent(), FULL, run.now + WINDOW);
        assert_eq!(
            (held.reason, held.new),
            (LimitReason::FewSamples, before),
            "without the requests in flight, silence reads as an idle backend"
        );
        let mut limits = Vec::new();
        for _ in 0..5 {
            let stalled = silent().with_stalled(run.controller.limit() as u64, WINDOW);
            run.now += WINDOW;
            let decision = run.controller.on_window(&stalled, FULL, run.now);
            // Under ten in flight, two windows make one decision.
            if decision.reason != LimitReason::FewSamples {
                assert_eq!(decision.reason, LimitReason::Latency, "{decision:?}");
                let words = decision.describe_fr();
                assert!(words.contains("toujours sans réponse"), "{words}");
            }
            limits.push(decision.new);
        }
        assert!(
            limits.windows(2).all(|w| w[1] <= w[0]) && limits[4] * 3 <= before,
            "a third of {before} or less within five windows: {limits:?}"
        );
    }

    #[test]
    fn decisions_say_why_in_french_and_english() {
        let decision = LimitDecision {
            old: 40,
            new: 32,
            direction: Direction::Down,
            reason: LimitReason::Latency,
            stats: WindowStats {
                samples: 100,
                p50: Duration::from_millis(45),
                ..WindowStats::default()
            },
            min_rtt: Some(BASE),
            ceiling: 200,
            peak: 40,
        };
        assert_eq!(
            decision.describe_fr(),
            "latence 45 ms pour 20 ms à vide : limite 40 → 32"
        );
        assert_eq!(
            decision.describe_en(),
            "latency 45 ms vs 20 ms unloaded: limit 40 → 32"
        );
        let record = decision.record(1_700_000_000, Some("app1"));
        assert_eq!(
            (record.reason, record.backend.as_deref()),
            ("latency", Some("app1")),
            "labels"
        );
    }

    proptest! {
        #[test]
        fn the_limit_never_leaves_its_bounds(
            min_limit in 1usize..20,
            span in 0usize..300,
            start in 0usize..400,
            windows in prop::collection::vec((0u64..60, 1u64..5_000, 0u64..20), 1..80),
        ) {
            let config = ConcurrencyConfig { min_limit, max_limit: min_limit + span };
            let mut controller = ConcurrencyController::new(config, start as u64, Some(start));
            let mut now = Instant::now();
            for (answered, millis, failed) in windows {
                let recorder = LatencyWindow::new();
                for i in 0..answered {
                    recorder.record(Duration::from_millis(millis + i));
                }
                for _ in 0..failed {
                    recorder.record_failure(0);
                }
                now += WINDOW;
                let decision = controller.on_window(&recorder.take(), FULL, now);
                let bounds = min_limit..=min_limit + span;
                prop_assert!(bounds.contains(&decision.new), "{decision:?} outside {bounds:?}");
                prop_assert!(bounds.contains(&controller.limit()), "limit outside {bounds:?}");
            }
        }
    }
}
