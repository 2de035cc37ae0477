//! The autopilot at work for one site: its running targets and bounds, the
//! controllers of [`crate::autopilot`] and what they last decided, and its
//! metrics. [`drive`] runs every site's loops.
//!
//! The fast loop sets each backend's concurrency limit (its guard), within
//! `[min_origin_concurrency, origin_concurrency]`; the slow loop returns the
//! admission rate to set, within `[min, max]_new_users_per_minute`, which
//! the caller applies as a live change (so the GCRA keeps its no-burst
//! property, as for a PATCH). Switched off (`enabled = false`) it decides
//! nothing and the values stay where they are: the operator has taken over.
//! Whatever else moved a value (a PATCH, a reload, the cluster), the loops
//! go on from it. In a cluster, one node at a time (the holder of a lease
//! in Redis) decides the rate for all; each node steers its own limits.

pub mod drive;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::admission::state::SavedPace;
use crate::autopilot::{
    ConcurrencyConfig, ConcurrencyController, Decision, Decisions, Direction, LatencySnapshot,
    LimitReason, MAX_STALL_WINDOWS, Observation, RateConfig, RateController, RateObservation,
};
use crate::config::{AutopilotConfig, AutopilotPatch, LiveSettings, SiteConfig};
use crate::metrics::{AutopilotMetrics, Metrics};
use crate::origin::Origin;

/// Concurrency-limit changes logged at most this often per site (the fast
/// loop may move every second); rate changes are always logged.
const LOG_LIMITS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The waiting room's ETA range widens by how far the rate moved over this
/// span (a few of the slow loop's intervals).
const DRIFT_SPAN: std::time::Duration = std::time::Duration::from_secs(60);

pub struct Pilot {
    /// The running targets and bounds: the file's, then PATCHes. One std
    /// mutex for both fields below: taken by the loop a few times a second
    /// and by the admin API, never across an await.
    inner: Mutex<Inner>,
    /// `max / min` of the rates in force over [`DRIFT_SPAN`] (f64 bits),
    /// read by every waiting page without the mutex; 1 when it holds.
    drift: AtomicU64,
    metrics: AutopilotMetrics,
}

struct Inner {
    settings: AutopilotConfig,
    /// One per backend, by its name.
    limits: BTreeMap<String, ConcurrencyController>,
    rate: RateController,
    next_fast: Option<Instant>,
    next_slow: Option<Instant>,
    /// Every backend's latencies since the slow loop last looked.
    since_slow: LatencySnapshot,
    /// Requests unanswered for a whole slow interval, over every backend,
    /// when the fast loop last looked: samples for the slow loop too, or a
    /// portal that stops answering reads as one with too few requests to
    /// judge, and admissions go on into it until its requests time out.
    stalled_for_slow: u64,
    /// The busy-page count when the slow loop last looked.
    busy_seen: Option<u64>,
    decisions: Decisions,
    last_limit_log: Option<Instant>,
    /// The rates in force at each look of the slow loop over the last
    /// [`DRIFT_SPAN`], and the one before it.
    recent_rates: VecDeque<(Instant, u32)>,
    /// How many observations this node has published (cluster mode).
    published: u64,
    /// The last observation read from each other node, by its `seq`.
    read_from: BTreeMap<String, u64>,
}

impl Inner {
    /// The latencies since the slow loop last looked, with the requests
    /// unanswered all that time as samples of its length, if that is
    /// beyond `target_latency` (a shorter bound would read as on target).
    fn take_since_slow(&mut self) -> LatencySnapshot {
        let window = std::mem::take(&mut self.since_slow);
        let stalled = std::mem::take(&mut self.stalled_for_slow);
        let at = self.settings.interval * slow_windows(&self.settings) as u32;
        match at > self.settings.target_latency {
            true => window.with_stalled(stalled, at),
            false => window,
        }
    }
}

/// Fast-loop windows in a slow interval, from 1 to the longest stall a
/// window can tell (a longer `rate_interval` counts requests unanswered for
/// that long: still a lower bound).
fn slow_windows(settings: &AutopilotConfig) -> u64 {
    let fast = settings.interval.as_millis().max(1);
    let windows = u64::try_from(settings.rate_interval.as_millis() / fast).unwrap_or(u64::MAX);
    windows.clamp(1, MAX_STALL_WINDOWS)
}

/// What the slow loop sees of the site besides the origin's latencies.
#[derive(Debug, Clone, Copy)]
pub struct LineView {
    pub rate_now: u32,
    pub waiting: u64,
    pub admitted_per_minute: f64,
    /// Busy pages served since start.
    pub busy_total: u64,
}

impl Pilot {
    pub fn new(config: &SiteConfig, metrics: &Metrics) -> Pilot {
        let settings = config.autopilot;
        let start = config.live.admission.map_or(0, |a| a.new_users_per_minute);
        let pilot = Pilot {
            inner: Mutex::new(Inner {
                settings,
                limits: BTreeMap::new(),
                rate: RateController::new(rate_config(&settings), start),
                next_fast: None,
                next_slow: None,
                since_slow: LatencySnapshot::default(),
                stalled_for_slow: 0,
                busy_seen: None,
                decisions: Decisions::new(),
                last_limit_log: None,
                recent_rates: VecDeque::new(),
                published: 0,
                read_from: BTreeMap::new(),
            }),
            drift: AtomicU64::new(1.0_f64.to_bits()),
            metrics: metrics.autopilot(&config.name),
        };
        pilot.show_settings(&settings);
        pilot
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settings(&self) -> AutopilotConfig {
        self.inner().settings
    }

    /// A reload: the file's targets and bounds replace the running ones.
    pub fn reconfigure(&self, config: &SiteConfig) {
        self.set(config.autopilot);
    }

    /// `PATCH /admin/sites/{name}/autopilot`; `ceiling`: the site's
    /// running `origin_concurrency`.
    pub fn patch(&self, patch: &AutopilotPatch, ceiling: usize) -> Result<AutopilotConfig, String> {
        let new = self.settings().patched(patch, ceiling)?;
        self.set(new);
        Ok(new)
    }

    fn set(&self, settings: AutopilotConfig) {
        let mut inner = self.inner();
        inner.settings = settings;
        inner.rate.set_config(rate_config(&settings));
        if !settings.enabled {
            // Pinned: the rate holds from now on.
            inner.recent_rates.clear();
            self.drift.store(1.0_f64.to_bits(), Ordering::Relaxed);
        }
        drop(inner);
        self.show_settings(&settings);
    }

    fn show_settings(&self, settings: &AutopilotConfig) {
        self.metrics.enabled.set(i64::from(settings.enabled));
        self.metrics
            .target
            .set(settings.target_latency.as_secs_f64());
    }

    /// One window of the fast loop, when due: each backend's latencies
    /// since the last one decide its limit, set on its guard at once.
    /// `ceiling`: the site's running `origin_concurrency`.
    pub fn fast(&self, origin: &Origin, ceiling: usize, now: Instant, at_unix: u64) {
        let mut inner = self.inner();
        let settings = inner.settings;
        if !settings.enabled || inner.next_fast.is_some_and(|at| now < at) {
            return;
        }
        inner.next_fast = Some(now + settings.interval);
        let config = ConcurrencyConfig {
            min_limit: settings.min_origin_concurrency,
            max_limit: ceiling,
        };
        let names: Vec<&str> = origin.states().map(|s| s.name.as_str()).collect();
        inner
            .limits
            .retain(|name, _| names.contains(&name.as_str()));
        let mut moved = Vec::new();
        let slow_windows = slow_windows(&settings);
        let mut stalled_for_slow = 0;
        for state in origin.states() {
            let window = state.window.take();
            inner.since_slow.merge(&window);
            stalled_for_slow += state.window.stalled(slow_windows);
            let controller = inner.limits.entry(state.name.clone()).or_insert_with(|| {
                // A guard under the ceiling holds a value learned before
                // (a resume, an operator's): give it back after the
                // first measure. At the ceiling, nothing is known.
                let known = state.guard.limit();
                let resume = (known < ceiling).then_some(known);
                let new = ConcurrencyController::new(config, crate::clock::entropy(), resume);
                state.guard.set_limit(new.limit());
                new
            });
            controller.set_config(config);
            // A PATCH, a reload or a resume moved the guard: go on from there.
            if state.guard.limit() != controller.limit() {
                controller.set_limit(state.guard.limit());
            }
            // Requests unanswered for a whole window are samples too, but
            // not for a probe (`minRTT` is timed on answers), and only when
            // a window is long beside the backend's unloaded latency: a
            // sample of one window must read as slow, never as fast.
            let long_window = controller
                .min_rtt()
                .is_some_and(|rtt| rtt * 2 <= settings.interval);
            let stalled = match !controller.is_probing() && long_window {
                true => state.window.stalled(1),
                false => 0,
            };
            let judged = window.with_stalled(stalled, settings.interval);
            let decision = controller.on_window(&judged, state.guard.take_peak(), now);
            if decision.reason == LimitReason::Errors {
                state.window.new_generation();
            }
            if decision.new != state.guard.limit() {
                state.guard.set_limit(decision.new);
            }
            self.metrics
                .origin_limit(&state.name)
                .set(i64::try_from(decision.new).unwrap_or(i64::MAX));
            if decision.direction != Direction::Hold {
                self.metrics.decided(
                    decision.loop_kind().as_str(),
                    decision.direction.as_str(),
                    decision.reason(),
                );
                moved.push(decision.describe_en());
                inner
                    .decisions
                    .push(decision.record(at_unix, Some(&state.name)));
            }
        }
        inner.stalled_for_slow = stalled_for_slow;
        let log_due = inner
            .last_limit_log
            .is_none_or(|at| now.duration_since(at) >= LOG_LIMITS_EVERY);
        if !moved.is_empty() && log_due {
            inner.last_limit_log = Some(now);
            tracing::info!(changes = %moved.join("; "), "autopilot: origin concurrency");
        }
    }

    /// Whether the slow loop would act now.
    pub fn slow_due(&self, now: Instant) -> bool {
        let inner = self.inner();
        inner.settings.enabled && inner.next_slow.is_none_or(|at| now >= at)
    }

    /// Another node decides the rate this interval (cluster mode): this
    /// node's interval, for it to judge on, and the next one starts.
    /// `at_ms`: the time (Unix ms), so that a dead node's is left out.
    pub fn observe(&self, busy_total: u64, now: Instant, at_ms: u64) -> Observation {
        let mut inner = self.inner();
        inner.next_slow = Some(now + inner.settings.rate_interval);
        let window = inner.take_since_slow();
        let busy_before = inner.busy_seen.replace(busy_total);
        inner.published += 1;
        let busy = busy_total.saturating_sub(busy_before.unwrap_or(busy_total));
        Observation::new(inner.published, at_ms, &window, busy)
    }

    /// The slow loop, when due: the admission rate to set now, if it moves.
    /// `others`: the other nodes' latest observations (cluster mode), by
    /// node; each is counted once, and only if taken within the last two
    /// intervals before `at_ms`.
    pub fn slow(
        &self,
        line: LineView,
        others: &[(String, Observation)],
        now: Instant,
        at_ms: u64,
    ) -> Option<u32> {
        let mut inner = self.inner();
        let settings = inner.settings;
        if !settings.enabled || inner.next_slow.is_some_and(|at| now < at) {
            return None;
        }
        inner.next_slow = Some(now + settings.rate_interval);
        self.note_rate(&mut inner, now, line.rate_now);
        let mut window = inner.take_since_slow();
        let busy_before = inner.busy_seen.replace(line.busy_total);
        let mut others_busy = 0_u64;
        let fresh_since = at_ms.saturating_sub(millis(settings.rate_interval * 2));
        for (node, seen) in others {
            let last = inner.read_from.insert(node.clone(), seen.seq);
            if seen.at_ms >= fresh_since && last.is_none_or(|last| seen.seq > last) {
                window.merge(&seen.window());
                others_busy = others_busy.saturating_add(seen.busy);
            }
        }
        if busy_before.is_none() || settings.max_new_users_per_minute == 0 {
            // The first look only starts the interval.
            return None;
        }
        let stats = window.stats();
        self.metrics.latency.set(stats.p90.as_secs_f64());
        self.metrics.error_rate.set(stats.error_rate());
        if inner.rate.rate() != line.rate_now {
            inner.rate.set_current(line.rate_now);
        }
        let observed = RateObservation {
            origin_requests: stats.samples,
            p90: stats.p90,
            error_rate: stats.error_rate(),
            rejections: line
                .busy_total
                .saturating_sub(busy_before.unwrap_or(line.busy_total))
                .saturating_add(others_busy),
            limit_collapsed: inner.limits.values().any(ConcurrencyController::at_floor),
            waiting: line.waiting,
            admitted_per_minute: line.admitted_per_minute,
        };
        let decision = inner.rate.on_interval(&observed)?;
        self.metrics.decided(
            decision.loop_kind().as_str(),
            decision.direction.as_str(),
            decision.reason(),
        );
        self.metrics.rate.set(i64::from(decision.new));
        if decision.direction == Direction::Hold {
            return None;
        }
        tracing::info!(decision = %decision.describe_en(), "autopilot: admission rate");
        self.note_rate(&mut inner, now, decision.new);
        inner.decisions.push(decision.record(at_ms / 1000, None));
        (decision.new != line.rate_now).then_some(decision.new)
    }

    /// What it has set, for the state file.
    pub fn pace(&self, origin: &Origin, live: &LiveSettings) -> SavedPace {
        SavedPace {
            new_users_per_minute: live.admission.map(|a| a.new_users_per_minute),
            origin_limits: origin
                .states()
                .map(|s| (s.name.clone(), s.guard.limit()))
                .collect(),
        }
    }

    /// A restart: each backend's guard gets the limit saved for it, within
    /// the bounds; the fast loop gives it back after its first measure.
    pub fn resume_limits(&self, origin: &Origin, pace: &SavedPace, ceiling: usize) {
        let floor = self.settings().min_origin_concurrency.min(ceiling);
        for state in origin.states() {
            if let Some(&limit) = pace.origin_limits.get(&state.name) {
                state
                    .guard
                    .set_limit(limit.clamp(floor.max(1), ceiling.max(1)));
            }
        }
    }

    /// How far the admission rate moved over the last minute: `max / min`
    /// of the rates in force, 1 when it held (or the autopilot is off).
    pub fn rate_drift(&self) -> f64 {
        f64::from_bits(self.drift.load(Ordering::Relaxed))
    }

    fn note_rate(&self, inner: &mut Inner, now: Instant, rate: u32) {
        let rates = &mut inner.recent_rates;
        rates.push_back((now, rate));
        // Keep the last rate set before the span: it was in force in it.
        while rates.len() > 1 && rates[1].0 + DRIFT_SPAN <= now {
            rates.pop_front();
        }
        let (low, high) = rates.iter().fold((u32::MAX, 0), |(low, high), &(_, r)| {
            (low.min(r), high.max(r))
        });
        let drift = f64::from(high.max(1)) / f64::from(low.max(1));
        self.drift.store(drift.to_bits(), Ordering::Relaxed);
    }

    /// The autopilot as `GET /admin/sites` shows it.
    pub fn report(&self) -> Value {
        let inner = self.inner();
        json!({
            "settings": inner.settings,
            "rate_per_minute": inner.rate.rate(),
            "rate_drift": self.rate_drift(),
            "origin_limits": inner.limits.iter().map(|(name, c)| {
                json!({
                    "backend": name,
                    "limit": c.limit(),
                    "min_rtt_seconds": c.min_rtt().map(|d| d.as_secs_f64()),
                    "probing": c.is_probing(),
                })
            }).collect::<Vec<_>>(),
            "decisions": inner.decisions.iter().map(|d| json!({
                "at": d.at_unix,
                "loop": d.loop_kind.as_str(),
                "backend": d.backend,
                "old": d.old,
                "new": d.new,
                "direction": d.direction.as_str(),
                "reason": d.reason,
                "words": d.words,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The site's config with the admission rate a restart resumes from, within
/// the autopilot's bounds (its limits are resumed on the built site, by
/// [`Pilot::resume_limits`]).
pub fn resumed(config: &SiteConfig, pace: Option<&SavedPace>) -> SiteConfig {
    let mut config = config.clone();
    let settings = config.autopilot;
    if let (Some(admission), Some(rate)) = (
        config.live.admission.as_mut(),
        pace.and_then(|p| p.new_users_per_minute),
    ) {
        admission.new_users_per_minute = rate.clamp(
            settings.min_new_users_per_minute,
            settings
                .max_new_users_per_minute
                .max(settings.min_new_users_per_minute),
        );
    }
    config
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn rate_config(s: &AutopilotConfig) -> RateConfig {
    RateConfig::new(
        s.min_new_users_per_minute,
        s.max_new_users_per_minute,
        s.target_latency,
        s.max_error_rate,
    )
}
