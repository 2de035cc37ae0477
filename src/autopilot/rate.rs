//! The slow loop: the site's admission rate (new users per minute), AIMD.
//!
//! New sessions are what loads a portal, and their cost shows up late (a
//! login, then a burst of pages over minutes), so this loop runs every
//! ~5–10 s on what the origin did meanwhile. It raises the rate by a fixed
//! step while the origin is healthy and there is a line to learn from, and
//! cuts it by a factor at the first sign of trouble: probing up slowly and
//! backing off fast is what keeps AIMD from re-creating the collapse.

use std::time::Duration;

use super::decisions::{Decision, Direction, Loop};
use super::words::{self, Lang};
use crate::closed_enum::closed_enum;

/// A cut keeps 70 % of the rate, as in TCP's CUBIC: out of trouble within
/// two or three intervals, without emptying the portal.
pub const DECREASE_FACTOR: f64 = 0.7;
/// A configured cut keeps between half the rate (the deepest fall in one
/// interval) and 95 % (a cut that still cuts).
const MIN_DECREASE_FACTOR: f64 = 0.5;
const MAX_DECREASE_FACTOR: f64 = 0.95;
/// The default step crosses from floor to ceiling in 50 healthy intervals
/// (4–8 minutes): slow enough to see a login's late pages before the next.
const STEPS_FLOOR_TO_CEILING: u32 = 50;
/// A rise never adds more than 10 % of the current rate: a step sized on
/// the range alone would be a fifth of the real capacity when the ceiling
/// is 10× too high, and the sawtooth as wide.
const MAX_RISE_SHARE: f64 = 0.1;
/// The rate may run this far above the admissions it actually made before
/// rises stop: a full line is admitted at the rate within ±1 person per
/// interval, and pupils who do not show up must not let it run away.
const USED_MARGIN: f64 = 1.25;
/// An interval with fewer origin requests says nothing about latency or
/// errors (one 500 among five is not a 20 % error rate).
pub const MIN_ORIGIN_REQUESTS: u64 = 20;
/// Steady busy pages are given this many intervals before the next cut.
const BUSY_HOLDS: u32 = 3;

closed_enum! {
    /// Why the rate moved, or did not (the `reason` label).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum RateReason {
        /// Healthy origin, people waiting: a step up.
        Healthy => "healthy",
        /// The origin's p90 over `target_latency`.
        Latency => "latency",
        /// The origin's error rate over `max_error_rate`.
        Errors => "errors",
        /// Busy pages not falling (a cut), or falling since the last cut (a hold).
        Rejections => "rejections",
        /// A backend's concurrency limit pinned at its floor.
        LimitCollapse => "limit_collapse",
        /// Too few origin requests to judge.
        FewSamples => "few_samples",
        /// Nobody waiting: a higher rate would teach nothing.
        EmptyLine => "empty_line",
        /// The rate is already above what admissions used.
        Unused => "unused",
        /// It would have moved, but it is at a bound.
        Bounds => "bounds",
    }
}

/// The operator's bounds and targets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Floor and ceiling, new users per minute (the floor at least 1).
    pub min_per_minute: u32,
    pub max_per_minute: u32,
    /// The origin's p90 response time users still find acceptable.
    pub target_latency: Duration,
    /// Share of origin requests that may fail (0.01 = 1 %).
    pub max_error_rate: f64,
    /// The additive step, users/min per interval: the largest rise (and
    /// never more than 10 % of the current rate).
    pub increase_step: u32,
    /// The multiplicative cut (0.5–0.95): also the largest fall.
    pub decrease_factor: f64,
}

impl RateConfig {
    /// With the default step and cut.
    pub fn new(min: u32, max: u32, target_latency: Duration, max_error_rate: f64) -> RateConfig {
        RateConfig {
            min_per_minute: min,
            max_per_minute: max,
            target_latency,
            max_error_rate,
            increase_step: (max.saturating_sub(min) / STEPS_FLOOR_TO_CEILING).max(1),
            decrease_factor: DECREASE_FACTOR,
        }
    }

    fn normalized(self) -> RateConfig {
        let max_per_minute = self.max_per_minute.max(1);
        RateConfig {
            min_per_minute: self.min_per_minute.clamp(1, max_per_minute),
            max_per_minute,
            increase_step: self.increase_step.max(1),
            decrease_factor: self
                .decrease_factor
                .clamp(MIN_DECREASE_FACTOR, MAX_DECREASE_FACTOR),
            ..self
        }
    }
}

/// What the site's origin and line did over one interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateObservation {
    /// Requests that reached the origin (all backends), failures included.
    pub origin_requests: u64,
    /// Their p90 latency, failures read as the worst.
    pub p90: Duration,
    /// Their share that failed (timeouts, connection failures, 5xx).
    pub error_rate: f64,
    /// Busy pages served (no origin slot within `origin_queue_timeout`).
    pub rejections: u64,
    /// A backend's concurrency limit at its floor, outside a probe
    /// ([`super::ConcurrencyController::at_floor`]).
    pub limit_collapsed: bool,
    /// People in line at the end of the interval.
    pub waiting: u64,
    /// Admissions made over the interval, per minute.
    pub admitted_per_minute: f64,
}

/// The site's admission rate.
#[derive(Debug, Clone)]
pub struct RateController {
    config: RateConfig,
    /// Fractional, so that a cut of a small rate is not lost to rounding.
    rate: f64,
    /// The operator took over: no decisions until resumed.
    pinned: bool,
    /// Busy pages in the previous interval, to tell a trend.
    last_rejections: u64,
    /// Intervals held since busy pages stopped rising without falling.
    busy_holds: u32,
}

/// One decision of the admission loop, with what it was decided on.
#[derive(Debug, Clone, PartialEq)]
pub struct RateDecision {
    pub old: u32,
    pub new: u32,
    pub direction: Direction,
    pub reason: RateReason,
    pub observed: RateObservation,
    /// Busy pages in the interval before.
    pub previous_rejections: u64,
    /// The targets and ceiling at the time, for the words.
    pub target_latency: Duration,
    pub max_error_rate: f64,
    pub ceiling: u32,
}

impl RateController {
    /// Starts from the configured rate (`new_users_per_minute`), within bounds.
    pub fn new(config: RateConfig, start_per_minute: u32) -> RateController {
        let mut controller = RateController {
            config: config.normalized(),
            rate: 0.0,
            pinned: false,
            last_rejections: 0,
            busy_holds: 0,
        };
        controller.set_current(start_per_minute);
        controller
    }

    /// The rate to apply, new users per minute.
    pub fn rate(&self) -> u32 {
        self.rate.round() as u32
    }

    /// The operator PATCHed the rate: the loop goes on from there. The
    /// bounds win (PATCH them to go beyond); returns the rate taken.
    pub fn set_current(&mut self, per_minute: u32) -> u32 {
        let config = self.config;
        self.rate = per_minute.clamp(config.min_per_minute, config.max_per_minute) as f64;
        self.rate()
    }

    /// New bounds or targets, live; the rate is brought within the bounds.
    pub fn set_config(&mut self, config: RateConfig) {
        self.config = config.normalized();
        self.set_current(self.rate());
    }

    /// The operator takes over: the rate stays where it is.
    pub fn pin(&mut self) {
        self.pinned = true;
    }

    /// Back to the autopilot, from the current rate.
    pub fn resume(&mut self) {
        self.pinned = false;
    }

    pub fn is_pinned(&self) -> bool {
        self.pinned
    }

    /// An interval has ended: the rate for the next one, `None` when pinned.
    pub fn on_interval(&mut self, observed: &RateObservation) -> Option<RateDecision> {
        let previous_rejections = std::mem::replace(&mut self.last_rejections, observed.rejections);
        if self.pinned {
            return None;
        }
        let old = self.rate();
        let config = self.config;
        let (direction, reason) = self.verdict(observed, previous_rejections);
        let steady_busy = reason == RateReason::Rejections
            && direction == Direction::Hold
            && observed.rejections >= previous_rejections;
        self.busy_holds = if steady_busy { self.busy_holds + 1 } else { 0 };
        let wanted = match direction {
            Direction::Down => self.rate * config.decrease_factor,
            Direction::Up => {
                let step =
                    f64::from(config.increase_step).min((self.rate * MAX_RISE_SHARE).max(1.0));
                (self.rate + step).min(observed.admitted_per_minute * USED_MARGIN)
            }
            Direction::Hold | Direction::Probe => self.rate,
        };
        let (min, max) = (config.min_per_minute, config.max_per_minute);
        self.rate = wanted.clamp(f64::from(min), f64::from(max));
        let new = self.rate();
        let blocked = new == old && wanted.round() as u32 != old;
        Some(RateDecision {
            old,
            new,
            direction: if new == old {
                Direction::Hold
            } else {
                direction
            },
            reason: if blocked { RateReason::Bounds } else { reason },
            observed: *observed,
            previous_rejections,
            target_latency: config.target_latency,
            max_error_rate: config.max_error_rate,
            ceiling: max,
        })
    }

    /// Which way, and why: the first trouble found cuts, in order of
    /// severity; a rise needs every light green.
    fn verdict(&self, seen: &RateObservation, previous_rejections: u64) -> (Direction, RateReason) {
        let enough = seen.origin_requests >= MIN_ORIGIN_REQUESTS;
        if enough && seen.error_rate > self.config.max_error_rate {
            return (Direction::Down, RateReason::Errors);
        }
        if seen.limit_collapsed {
            return (Direction::Down, RateReason::LimitCollapse);
        }
        if enough && seen.p90 > self.config.target_latency {
            return (Direction::Down, RateReason::Latency);
        }
        if seen.rejections > 0 {
            // The busy pages come from people admitted earlier, who stay
            // for a whole session: a cut shows late. Rising busy pages cut;
            // steady ones give the last cut a few intervals to work first,
            // or the rate would fall interval after interval, far under
            // what the portal takes; falling ones wait.
            let rising =
                seen.rejections > previous_rejections.saturating_add(previous_rejections / 10);
            let falling = seen.rejections < previous_rejections;
            return if rising || (!falling && self.busy_holds >= BUSY_HOLDS) {
                (Direction::Down, RateReason::Rejections)
            } else {
                (Direction::Hold, RateReason::Rejections)
            };
        }
        if seen.waiting == 0 {
            return (Direction::Hold, RateReason::EmptyLine);
        }
        if !enough {
            return (Direction::Hold, RateReason::FewSamples);
        }
        if self.rate > seen.admitted_per_minute * USED_MARGIN {
            return (Direction::Hold, RateReason::Unused);
        }
        (Direction::Up, RateReason::Healthy)
    }
}

impl Decision for RateDecision {
    fn loop_kind(&self) -> Loop {
        Loop::Admission
    }

    fn old_new(&self) -> (u64, u64) {
        (self.old.into(), self.new.into())
    }

    fn direction(&self) -> Direction {
        self.direction
    }

    fn reason(&self) -> &'static str {
        self.reason.as_str()
    }

    /// "latence 1,8 s > cible 1 s", "p90 1.8 s > target 1 s"
    fn cause(&self, lang: Lang) -> String {
        let fr = lang == Lang::Fr;
        let seen = &self.observed;
        let p90 = words::duration(seen.p90, lang);
        let target = words::duration(self.target_latency, lang);
        let (busy, before) = (seen.rejections, self.previous_rejections);
        let rising = busy >= before && self.direction == Direction::Down;
        let steady = busy >= before;
        match (self.reason, fr) {
            (RateReason::Healthy, true) => format!(
                "origine saine (latence {p90} ≤ cible {target}), {} en file",
                seen.waiting
            ),
            (RateReason::Healthy, false) => format!(
                "origin healthy (p90 {p90} ≤ target {target}), {} waiting",
                seen.waiting
            ),
            (RateReason::Latency, true) => format!("latence {p90} > cible {target}"),
            (RateReason::Latency, false) => format!("p90 {p90} > target {target}"),
            (RateReason::Errors, _) => format!(
                "{} {} > max {}",
                if fr { "erreurs" } else { "errors" },
                words::percent(seen.error_rate, lang),
                words::percent(self.max_error_rate, lang)
            ),
            (RateReason::Rejections, true) if rising => {
                format!("pages « occupé » qui ne baissent pas ({busy}, avant {before})")
            }
            (RateReason::Rejections, true) if steady => {
                format!(
                    "pages « occupé » stables ({busy}, avant {before}), la dernière baisse agit"
                )
            }
            (RateReason::Rejections, true) => {
                format!("pages « occupé » en baisse ({busy}, avant {before})")
            }
            (RateReason::Rejections, false) if rising => {
                format!("busy pages not falling ({busy}, before {before})")
            }
            (RateReason::Rejections, false) if steady => {
                format!("busy pages steady ({busy}, before {before}), the last cut is working")
            }
            (RateReason::Rejections, false) => {
                format!("busy pages falling ({busy}, before {before})")
            }
            (RateReason::LimitCollapse, true) => "concurrence de l'origine au plancher".to_owned(),
            (RateReason::LimitCollapse, false) => "origin concurrency at its floor".to_owned(),
            (RateReason::FewSamples, true) => {
                format!("{} requêtes seulement vers l'origine", seen.origin_requests)
            }
            (RateReason::FewSamples, false) => {
                format!("only {} origin requests", seen.origin_requests)
            }
            (RateReason::EmptyLine, true) => "file vide".to_owned(),
            (RateReason::EmptyLine, false) => "line empty".to_owned(),
            (RateReason::Unused, true) => {
                format!("{:.0} admissions/min seulement", seen.admitted_per_minute)
            }
            (RateReason::Unused, false) => {
                format!("only {:.0} admitted/min", seen.admitted_per_minute)
            }
            (RateReason::Bounds, true) if self.new == self.ceiling => "maximum atteint".to_owned(),
            (RateReason::Bounds, true) => "minimum atteint".to_owned(),
            (RateReason::Bounds, false) if self.new == self.ceiling => "at the maximum".to_owned(),
            (RateReason::Bounds, false) => "at the minimum".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TARGET: Duration = Duration::from_secs(1);

    /// Floor 10, ceiling 600, step 10, cut × 0.7.
    fn controller(start: u32) -> RateController {
        let mut config = RateConfig::new(10, 600, TARGET, 0.01);
        config.increase_step = 10;
        RateController::new(config, start)
    }

    /// An origin well within its targets, a long line admitted at the rate.
    fn healthy(rate: u32) -> RateObservation {
        RateObservation {
            origin_requests: 500,
            p90: Duration::from_millis(300),
            error_rate: 0.0,
            rejections: 0,
            limit_collapsed: false,
            waiting: 200,
            admitted_per_minute: f64::from(rate),
        }
    }

    fn decide(
        controller: &mut RateController,
        seen: RateObservation,
    ) -> (u32, Direction, RateReason) {
        let decision = controller.on_interval(&seen).expect("not pinned");
        (decision.new, decision.direction, decision.reason)
    }

    #[test]
    fn the_rate_rises_by_one_step_only_with_a_line_and_a_healthy_origin() {
        let mut rate = controller(200);
        let up = (210, Direction::Up, RateReason::Healthy);
        assert_eq!(decide(&mut rate, healthy(200)), up, "all green: one step");
        let empty = RateObservation {
            waiting: 0,
            ..healthy(210)
        };
        assert_eq!(
            decide(&mut rate, empty),
            (210, Direction::Hold, RateReason::EmptyLine),
            "nobody waiting"
        );
        let quiet = RateObservation {
            origin_requests: 19,
            ..healthy(210)
        };
        assert_eq!(
            decide(&mut rate, quiet),
            (210, Direction::Hold, RateReason::FewSamples),
            "nothing to judge"
        );
        let unused = RateObservation {
            admitted_per_minute: 160.0,
            ..healthy(210)
        };
        assert_eq!(
            decide(&mut rate, unused),
            (210, Direction::Hold, RateReason::Unused),
            "pupils not showing up"
        );
        let partly = RateObservation {
            admitted_per_minute: 172.0,
            ..healthy(210)
        };
        assert_eq!(
            decide(&mut rate, partly),
            (215, Direction::Up, RateReason::Healthy),
            "up to 1.25 × used"
        );
        let mut small = controller(40);
        assert_eq!(
            decide(&mut small, healthy(40)),
            (44, Direction::Up, RateReason::Healthy),
            "10 % of 40"
        );
    }

    #[test]
    fn latency_errors_busy_pages_and_a_collapsed_limit_each_cut_the_rate_by_thirty_percent() {
        let troubles = [
            (
                RateObservation {
                    p90: Duration::from_millis(1800),
                    ..healthy(100)
                },
                RateReason::Latency,
            ),
            (
                RateObservation {
                    error_rate: 0.02,
                    ..healthy(100)
                },
                RateReason::Errors,
            ),
            (
                RateObservation {
                    rejections: 3,
                    ..healthy(100)
                },
                RateReason::Rejections,
            ),
            (
                RateObservation {
                    limit_collapsed: true,
                    ..healthy(100)
                },
                RateReason::LimitCollapse,
            ),
            (
                RateObservation {
                    limit_collapsed: true,
                    origin_requests: 0,
                    waiting: 0,
                    ..healthy(100)
                },
                RateReason::LimitCollapse,
            ),
        ];
        for (seen, reason) in troubles {
            let mut rate = controller(100);
            assert_eq!(
                decide(&mut rate, seen),
                (70, Direction::Down, reason),
                "{seen:?}"
            );
        }
        let mut rate = controller(100);
        let noisy = RateObservation {
            origin_requests: 5,
            error_rate: 0.2,
            ..healthy(100)
        };
        assert_eq!(
            decide(&mut rate, noisy),
            (100, Direction::Hold, RateReason::FewSamples),
            "one 500 among five is no error rate"
        );
    }

    #[test]
    fn busy_pages_cut_when_rising_or_steady_past_three_intervals_and_hold_while_they_fall() {
        let mut rate = controller(100);
        let busy = |n| RateObservation {
            rejections: n,
            ..healthy(100)
        };
        let moves: Vec<_> = [5, 5, 5, 5, 5, 9, 2, 0]
            .into_iter()
            .map(|n| decide(&mut rate, busy(n)))
            .collect();
        use RateReason::{Healthy, Rejections};
        assert_eq!(
            moves,
            [
                (70, Direction::Down, Rejections),
                (70, Direction::Hold, Rejections),
                (70, Direction::Hold, Rejections),
                (70, Direction::Hold, Rejections),
                (49, Direction::Down, Rejections),
                (34, Direction::Down, Rejections),
                (34, Direction::Hold, Rejections),
                (38, Direction::Up, Healthy),
            ],
            "rising: cut; steady: three intervals for the cut to work, then cut; falling: wait"
        );
    }

    #[test]
    fn pinned_the_controller_decides_nothing_and_resumes_from_the_current_rate() {
        let mut rate = controller(100);
        rate.pin();
        let trouble = RateObservation {
            p90: Duration::from_secs(5),
            ..healthy(100)
        };
        assert!(rate.on_interval(&trouble).is_none(), "pinned: no decision");
        assert_eq!(rate.set_current(250), 250, "the operator moves it");
        assert!(rate.on_interval(&healthy(250)).is_none(), "still pinned");
        rate.resume();
        assert_eq!(
            decide(&mut rate, healthy(250)),
            (260, Direction::Up, RateReason::Healthy),
            "from 250"
        );
    }

    #[test]
    fn a_patched_rate_is_where_the_loop_goes_on_from_within_the_bounds() {
        let mut rate = controller(40);
        assert_eq!(rate.set_current(5000), 600, "the ceiling wins");
        assert_eq!(
            decide(&mut rate, healthy(600)),
            (600, Direction::Hold, RateReason::Bounds),
            "at the max"
        );
        assert_eq!(rate.set_current(3), 10, "the floor wins");
        let slow = RateObservation {
            p90: Duration::from_secs(3),
            ..healthy(10)
        };
        assert_eq!(
            decide(&mut rate, slow),
            (10, Direction::Hold, RateReason::Bounds),
            "at the min"
        );
        rate.set_config(RateConfig::new(20, 100, TARGET, 0.01));
        assert_eq!(rate.rate(), 20, "new bounds bring the rate in");
        assert_eq!(
            RateController::new(RateConfig::new(20, 100, TARGET, 0.01), 60).rate(),
            60,
            "starts as configured"
        );
    }

    #[test]
    fn decisions_say_why_in_french_with_a_decimal_comma_and_in_english() {
        let mut rate = controller(40);
        let slow = RateObservation {
            p90: Duration::from_millis(1800),
            ..healthy(40)
        };
        let decision = rate.on_interval(&slow).expect("not pinned");
        assert_eq!(
            decision.describe_fr(),
            "latence 1,8 s > cible 1 s : débit 40 → 28/min"
        );
        assert_eq!(
            decision.describe_en(),
            "p90 1.8 s > target 1 s: rate 40 → 28/min"
        );
        let failing = RateObservation {
            error_rate: 0.032,
            ..healthy(28)
        };
        let decision = rate.on_interval(&failing).expect("not pinned");
        assert_eq!(
            decision.describe_fr(),
            "erreurs 3,2 % > max 1 % : débit 28 → 20/min"
        );
        let record = decision.record(1_700_000_000, None);
        assert_eq!(
            (record.loop_kind, record.reason),
            (Loop::Admission, "errors"),
            "labels"
        );
        let empty = RateObservation {
            waiting: 0,
            ..healthy(20)
        };
        let decision = rate.on_interval(&empty).expect("not pinned");
        assert_eq!(
            decision.describe_fr(),
            "file vide : débit maintenu à 20/min"
        );
    }

    /// A portal that takes 300 new pupils a minute: its p90 is 500 ms up to
    /// there, then grows with the fourth power of the overload (1 s, the
    /// target, at 1.19 × 300). From a ceiling 10× too high, AIMD settles in
    /// a sawtooth: up by 10 % steps to one step past the target's crossing,
    /// cut by 30 %; the portal gets about its capacity on average.
    #[test]
    fn the_rate_settles_in_a_sawtooth_around_what_the_portal_takes() {
        const TAKES: f64 = 300.0;
        let mut rate = RateController::new(RateConfig::new(10, 3000, TARGET, 0.01), 3000);
        let mut rates = Vec::new();
        for _ in 0..100 {
            let current = f64::from(rate.rate());
            let overload = (current / TAKES).max(1.0);
            let seen = RateObservation {
                p90: Duration::from_millis(500).mul_f64(overload.powi(4)),
                ..healthy(rate.rate())
            };
            rates.push(decide(&mut rate, seen).0);
        }
        let settled = &rates[10..];
        let (low, high) = (settled.iter().min(), settled.iter().max());
        assert!(
            low >= Some(&240) && high <= Some(&405),
            "within [0.8, 1.35] × 300 after 10 intervals: {rates:?}"
        );
        let mean = settled.iter().map(|&r| f64::from(r)).sum::<f64>() / settled.len() as f64;
        assert!(
            mean >= 0.85 * TAKES,
            "the portal is used at {:.0} % on average: {rates:?}",
            mean / TAKES * 100.0
        );
    }

    fn any_observation() -> impl Strategy<Value = RateObservation> {
        (
            0u64..200,
            0u64..3000,
            0.0..0.1f64,
            0u64..5,
            any::<bool>(),
            0u64..3,
            0.0..800.0f64,
        )
            .prop_map(
                |(origin_requests, p90, error_rate, rejections, collapsed, waiting, admitted)| {
                    RateObservation {
                        origin_requests,
                        p90: Duration::from_millis(p90),
                        error_rate,
                        rejections,
                        limit_collapsed: collapsed && rejections == 0,
                        waiting,
                        admitted_per_minute: admitted,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn the_rate_stays_within_bounds_and_moves_at_most_one_step(
            min in 1u32..100,
            span in 0u32..2000,
            step in 1u32..50,
            factor in 0.3..0.99f64,
            start in 0u32..3000,
            series in prop::collection::vec(any_observation(), 1..60),
        ) {
            let mut config = RateConfig::new(min, min + span, TARGET, 0.01);
            (config.increase_step, config.decrease_factor) = (step, factor);
            let mut rate = RateController::new(config, start);
            let deepest = factor.clamp(MIN_DECREASE_FACTOR, MAX_DECREASE_FACTOR);
            for seen in series {
                let before = rate.rate;
                let decision = rate.on_interval(&seen).expect("not pinned");
                let bounds = min..=min + span;
                prop_assert!(bounds.contains(&decision.new), "{decision:?} outside {bounds:?}");
                let rise = f64::from(step).min((before * MAX_RISE_SHARE).max(1.0));
                prop_assert!(rate.rate <= before + rise + 1e-9, "rise over a step: {decision:?}");
                prop_assert!(rate.rate >= before * deepest - 1e-9, "fall over the cut: {decision:?}");
                if decision.new > decision.old {
                    prop_assert!(seen.waiting > 0, "never raised into an empty line");
                    prop_assert!(rate.rate <= seen.admitted_per_minute * USED_MARGIN + 1e-9, "nor past use");
                }
            }
        }
    }
}
