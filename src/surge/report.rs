//! The end-of-run report: what pupils and the origin experienced, and what
//! the simulator cost. Printed for people (`Display`) and written as JSON
//! (`--report FILE.json`, the same fields; durations in seconds unless the
//! field name says `_ms`).

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use super::pupil::Persona;
use super::record::{Histogram, Kind, Phase, Recorder};
use super::sampler::{SAMPLE_EVERY, Samples};
use super::scenario::Plan;

/// Everything a surge showed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The plan that ran.
    pub scenario: ScenarioEcho,
    /// Wall time from the first arrival to the end of the run.
    pub elapsed_seconds: f64,
    /// The run was cut by the time limit (else every pupil was done).
    pub time_limit_reached: bool,
    pub pupils: PupilCounts,
    /// From arrival on the curve to the entry page, over admitted pupils
    /// (`None` if nobody got in). A wait for a slot under the concurrency
    /// ceiling counts: the pupil had arrived.
    pub time_to_get_in: Option<Spread>,
    /// ETA shown at the first ticket vs the wait lived (`None` if nobody waited with one).
    pub eta: Option<EtaAccuracy>,
    pub responses: Responses,
    pub session: SessionChecks,
    /// From digue's `/metrics` (`None` without `--admin`).
    pub origin: Option<OriginStats>,
    /// From the demo portal's own counters (`None` without
    /// `--portal-stats`: the share of capacity used and the portal's
    /// failures are then unknown, not zero).
    pub portal: Option<PortalStats>,
    /// One point per second of the run.
    pub timeline: Vec<TimelinePoint>,
    pub simulator: SimulatorCost,
    /// Things that make the figures less than they seem.
    pub warnings: Vec<String>,
}

/// The plan, echoed so a report file stands on its own.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioEcho {
    pub name: String,
    pub target: String,
    pub entry: String,
    pub curve: &'static str,
    pub pupils: u64,
    pub peak_rate: f64,
    pub ramp_seconds: f64,
    pub time_limit_seconds: f64,
    pub concurrency: usize,
    pub request_timeout_seconds: f64,
    pub seed: u64,
}

/// Where the pupils ended. Bots aside, `admitted + still_waiting + gave_up
/// + failed + not_started` is every pupil.
#[derive(Debug, Clone, Serialize)]
pub struct PupilCounts {
    /// Bots included.
    pub total: u64,
    pub bots: u64,
    pub patient: u64,
    pub impatient: u64,
    pub quitters: u64,
    /// Got the entry page.
    pub admitted: u64,
    /// Of the admitted, those who finished the whole script.
    pub finished: u64,
    /// In line (or retrying) when the run stopped.
    pub still_waiting: u64,
    /// Left after `give_up_after` without getting in.
    pub gave_up: u64,
    /// Stopped after `max_errors` errors, timeouts or redirects in a row.
    pub failed: u64,
    /// Still waiting for a slot under the concurrency ceiling at the time limit.
    pub not_started: u64,
    /// Arrivals that waited for a slot under the concurrency ceiling.
    pub held_by_ceiling: u64,
}

/// Percentiles of a duration, in seconds (nearest rank).
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// How well the waiting room's ETA matched the wait.
#[derive(Debug, Clone, Serialize)]
pub struct EtaAccuracy {
    /// Pupils who waited with an ETA and got in.
    pub samples: u64,
    /// Median of |wait lived − `eta_seconds` shown|.
    pub median_abs_error_seconds: f64,
    pub median_shown_seconds: f64,
    pub median_actual_seconds: f64,
    /// Share of pupils whose wait fell within the range shown
    /// (`eta_range_seconds`), counting the overdue ones as misses.
    pub within_range_share: f64,
    /// Waited past the top of their range without getting in (still
    /// waiting, gave up or failed): without them only the lucky would vote.
    pub overdue_not_admitted: u64,
}

/// Responses by kind, bots included.
#[derive(Debug, Clone, Serialize)]
pub struct Responses {
    pub total: u64,
    /// Of which sent by bots.
    pub bot_requests: u64,
    pub bytes_received: u64,
    /// From the origin (2xx without a cache hit).
    pub page: KindStats,
    /// `Cache-Status: digue; hit…`.
    pub cache_hit: KindStats,
    /// Waiting-room pages and JSON status polls.
    pub waiting_room: KindStats,
    /// digue's busy page (503 + Retry-After), and 429s.
    pub busy: KindStats,
    /// Refused or broken connections, 4xx, other 5xx.
    pub error: KindStats,
    /// No whole response within the request timeout.
    pub timeout: KindStats,
    /// 3xx answers, not followed: a pupil redirected from the entry page
    /// did not get in.
    pub redirect: KindStats,
}

/// Count and latency (to the last body byte) of one kind of response.
#[derive(Debug, Clone, Serialize)]
pub struct KindStats {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// What admitted pupils did, and the privacy check.
#[derive(Debug, Clone, Serialize)]
pub struct SessionChecks {
    pub assets_fetched: u64,
    pub pupils_with_assets: u64,
    /// Per-user steps answered.
    pub steps_done: u64,
    /// Per-user answers echoing a session id, compared with the pupil's own.
    pub sessions_checked: u64,
    /// Of those, answers showing another session: must be 0.
    pub sessions_mismatched: u64,
    /// Waiting-room answers to pupils left without a ticket (throttled).
    pub ticketless_waits: u64,
}

/// The origin as digue's `/metrics` showed it.
#[derive(Debug, Clone, Serialize)]
pub struct OriginStats {
    pub metrics_url: String,
    pub sample_interval_ms: u64,
    pub samples: u64,
    pub failed_samples: u64,
    /// Highest `digue_origin_in_flight` sampled (a lower bound of the true peak).
    pub peak_in_flight: Option<u64>,
    /// `digue_origin_limit`.
    pub limit: Option<u64>,
    /// Highest `digue_line_waiting` sampled.
    pub peak_line_waiting: Option<u64>,
}

/// The portal as its own counters showed it, from a read just before the
/// load to the last read of the run.
#[derive(Debug, Clone, Serialize)]
pub struct PortalStats {
    pub stats_url: String,
    pub sample_interval_ms: u64,
    pub samples: u64,
    pub failed_samples: u64,
    /// ∫ min(in flight, capacity) dt / ∫ capacity dt over the run, from
    /// the portal's exact integrals (0 to 1; `None` if no time passed).
    pub capacity_used_share: Option<f64>,
    /// The capacity before the load and at the end of the run.
    pub capacity_at_start: u64,
    pub capacity_at_end: u64,
    /// The lowest and highest capacity read (a change shorter than the
    /// sample interval can fall between two reads).
    pub capacity_min: u64,
    pub capacity_max: u64,
    /// Requests the portal received during the run, from any client.
    pub requests: u64,
    /// The portal's own failures during the run: requests refused over
    /// capacity, `late_503s + dropped_connections`.
    pub overload_errors: u64,
    /// Answered 503 after a long wait.
    pub late_503s: u64,
    /// Closed without a response after a longer wait.
    pub dropped_connections: u64,
    /// Highest in flight since the portal started (the run's, if the
    /// portal started fresh).
    pub peak_in_flight_since_start: u64,
}

/// One second of the run (maxima over its samples).
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    pub second: u64,
    /// Simulated pupils arriving, waiting or retrying.
    pub pupils_waiting: u64,
    /// Pupils who got the entry page during this second.
    pub admissions: u64,
    /// `digue_line_waiting` (with `--admin`).
    pub line_waiting: Option<u64>,
    /// `digue_origin_in_flight` (with `--admin`).
    pub origin_in_flight: Option<u64>,
    /// The portal's capacity at the second's last read (with `--portal-stats`).
    pub portal_capacity: Option<u64>,
    /// Share of the portal's capacity used over about this second, from
    /// the reads that fell in it (with `--portal-stats`).
    pub portal_capacity_used_share: Option<f64>,
}

/// What generating the load cost, so the figures above can be trusted:
/// a saturated simulator would make any target look slow. Read from
/// `/proc` for the whole process (which, in tests, also runs the target).
#[derive(Debug, Clone, Serialize)]
pub struct SimulatorCost {
    pub cpu_seconds: Option<f64>,
    /// CPU time over wall time: 1.0 is one core fully busy.
    pub cpu_share_of_one_core: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub cpu_us_per_request: Option<f64>,
    /// The concurrency ceiling actually used.
    pub concurrency: usize,
}

/// The raw material of a report.
pub(crate) struct Inputs<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) rec: &'a Recorder,
    pub(crate) samples: Samples,
    pub(crate) personas: &'a [Persona],
    pub(crate) elapsed: Duration,
    pub(crate) time_limit_reached: bool,
    pub(crate) cpu: Option<Duration>,
    pub(crate) peak_rss_bytes: Option<u64>,
    pub(crate) concurrency: usize,
    pub(crate) warnings: Vec<String>,
}

impl Report {
    pub(crate) fn build(i: Inputs<'_>) -> Report {
        let Inputs {
            plan, rec, samples, ..
        } = i;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let count = |p: Persona| i.personas.iter().filter(|x| **x == p).count() as u64;
        let bots = count(Persona::Bot);
        let people = plan.arrivals.pupils - bots;
        let phase = |p: Phase| rec.in_phase(p);
        let admitted = phase(Phase::In) + phase(Phase::Done);
        let started = load(&rec.started);
        let pupils = PupilCounts {
            total: plan.arrivals.pupils,
            bots,
            patient: count(Persona::Patient),
            impatient: count(Persona::Impatient),
            quitters: count(Persona::Quitter),
            admitted,
            finished: phase(Phase::Done),
            still_waiting: phase(Phase::Arriving) + phase(Phase::Waiting),
            gave_up: phase(Phase::GaveUp),
            failed: phase(Phase::Failed),
            not_started: people.saturating_sub(started),
            held_by_ceiling: load(&rec.held_by_ceiling),
        };
        let eta = eta_accuracy(rec);
        let stats = |k: Kind| kind_stats(rec.latency(k));
        let responses = Responses {
            total: rec.requests(),
            bot_requests: load(&rec.bot_requests),
            bytes_received: load(&rec.bytes),
            page: stats(Kind::Page),
            cache_hit: stats(Kind::CacheHit),
            waiting_room: stats(Kind::WaitingRoom),
            busy: stats(Kind::Busy),
            error: stats(Kind::Error),
            timeout: stats(Kind::Timeout),
            redirect: stats(Kind::Redirect),
        };
        let session = SessionChecks {
            assets_fetched: load(&rec.assets_fetched),
            pupils_with_assets: load(&rec.pupils_with_assets),
            steps_done: load(&rec.steps_done),
            sessions_checked: load(&rec.sessions_checked),
            sessions_mismatched: load(&rec.sessions_mismatched),
            ticketless_waits: load(&rec.ticketless_waits),
        };
        let seconds = (i.elapsed.as_secs_f64().ceil() as usize).max(1);
        let timeline: Vec<TimelinePoint> = (0..seconds)
            .map(|s| {
                let sample = samples.seconds.get(s).copied().unwrap_or_default();
                TimelinePoint {
                    second: s as u64,
                    pupils_waiting: sample.pupils_waiting,
                    admissions: rec.admissions_in(s),
                    line_waiting: sample.line_waiting,
                    origin_in_flight: sample.origin_in_flight,
                    portal_capacity: sample.portal_capacity,
                    portal_capacity_used_share: ratio(sample.portal_busy, sample.portal_offered),
                }
            })
            .collect();
        let origin = plan.admin.as_ref().map(|admin| OriginStats {
            metrics_url: admin.url.clone(),
            sample_interval_ms: SAMPLE_EVERY.as_millis() as u64,
            samples: samples.scrapes,
            failed_samples: samples.failed_scrapes,
            peak_in_flight: timeline.iter().filter_map(|p| p.origin_in_flight).max(),
            limit: samples.origin_limit,
            peak_line_waiting: timeline.iter().filter_map(|p| p.line_waiting).max(),
        });
        let portal = samples.portal.as_ref().map(|p| {
            let (first, last) = (&p.first, &p.last);
            let grown = |a: u64, b: u64| b.saturating_sub(a);
            PortalStats {
                stats_url: p.url.clone(),
                sample_interval_ms: SAMPLE_EVERY.as_millis() as u64,
                samples: p.reads,
                failed_samples: p.failed_reads,
                capacity_used_share: ratio(
                    last.busy_seconds - first.busy_seconds,
                    last.capacity_seconds - first.capacity_seconds,
                ),
                capacity_at_start: first.capacity,
                capacity_at_end: last.capacity,
                capacity_min: p.capacity_min,
                capacity_max: p.capacity_max,
                requests: grown(first.requests, last.requests),
                overload_errors: grown(first.overload_errors, last.overload_errors),
                late_503s: grown(first.late_503s, last.late_503s),
                dropped_connections: grown(first.dropped_connections, last.dropped_connections),
                peak_in_flight_since_start: last.peak_in_flight,
            }
        });
        let wall = i.elapsed.as_secs_f64();
        let cpu = i.cpu.map(|c| c.as_secs_f64());
        let simulator = SimulatorCost {
            cpu_seconds: cpu,
            cpu_share_of_one_core: cpu.filter(|_| wall > 0.0).map(|c| round3(c / wall)),
            peak_rss_bytes: i.peak_rss_bytes,
            cpu_us_per_request: cpu
                .filter(|_| responses.total > 0)
                .map(|c| round3(c * 1e6 / responses.total as f64)),
            concurrency: i.concurrency,
        };
        let mut warnings = i.warnings;
        if session.sessions_mismatched > 0 {
            warnings.insert(
                0,
                format!(
                    "PRIVACY: {} per-user answer(s) showed another pupil's session",
                    session.sessions_mismatched
                ),
            );
        }
        if session.ticketless_waits > 0 {
            warnings.push(format!(
                "{} waiting-room answers came without a ticket: digue's per-network budget \
                 (tickets_per_network_per_minute) is throttling the simulator's single address; \
                 raise it for the rehearsal, real pupils come from many networks",
                session.ticketless_waits
            ));
        }
        if responses.redirect.count > 0 {
            warnings.push(format!(
                "{} answers were redirects, which the simulator does not follow: a pupil \
                 redirected from the entry page ({}) does not get in; point --entry at the \
                 page the redirect leads to",
                responses.redirect.count, plan.entry
            ));
        }
        if pupils.not_started > 0 {
            // The curve fits in the time limit (the plan checks it): what
            // kept them out is the ceiling.
            warnings.push(format!(
                "{} pupils never started before the time limit: they were waiting for a slot \
                 under the concurrency ceiling (the curve alone needs {:.0} s)",
                pupils.not_started,
                plan.arrivals.span().as_secs_f64()
            ));
        }
        if pupils.held_by_ceiling > 0 {
            warnings.push(format!(
                "{} arrivals waited for a slot under the concurrency ceiling ({}): the curve \
                 was flattened",
                pupils.held_by_ceiling, i.concurrency
            ));
        }
        if let Some(p) = &samples.portal {
            if p.last.uptime_seconds < p.first.uptime_seconds {
                warnings.push(format!(
                    "the portal's counters at {} went back during the run: was it restarted? \
                     Its figures are not the run's",
                    p.url
                ));
            }
            if p.failed_reads > 0 {
                warnings.push(format!(
                    "{} of {} reads of the portal's counters failed (last: {}); the figures \
                     stop at the last read that worked",
                    p.failed_reads,
                    p.failed_reads + p.reads,
                    p.last_error.as_deref().unwrap_or("?")
                ));
            }
        }
        if samples.failed_scrapes > 0 {
            warnings.push(format!(
                "{} of {} reads of /metrics failed (last: {})",
                samples.failed_scrapes,
                samples.failed_scrapes + samples.scrapes,
                samples.last_error.as_deref().unwrap_or("?")
            ));
        }
        Report {
            scenario: ScenarioEcho {
                name: plan.name.clone(),
                target: plan.target.url.clone(),
                entry: plan.entry.clone(),
                curve: plan.arrivals.curve.as_str(),
                pupils: plan.arrivals.pupils,
                peak_rate: plan.arrivals.peak_rate,
                ramp_seconds: plan.arrivals.ramp.as_secs_f64(),
                time_limit_seconds: plan.time_limit.as_secs_f64(),
                concurrency: plan.concurrency,
                request_timeout_seconds: plan.request_timeout.as_secs_f64(),
                seed: plan.seed,
            },
            elapsed_seconds: round3(wall),
            time_limit_reached: i.time_limit_reached,
            pupils,
            time_to_get_in: spread(rec.get_in_times()),
            eta,
            responses,
            session,
            origin,
            portal,
            timeline,
            simulator,
            warnings,
        }
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// `part / whole` to three decimals, within 0..=1; `None` when nothing was
/// offered.
fn ratio(part: f64, whole: f64) -> Option<f64> {
    (whole > 0.0).then(|| round3((part / whole).clamp(0.0, 1.0)))
}

/// Three decimals: µs for `_ms` fields, ms for seconds; more is noise.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn kind_stats(h: &Histogram) -> KindStats {
    let ms = |d: Duration| round3(d.as_secs_f64() * 1000.0);
    let count = h.count();
    KindStats {
        count,
        p50_ms: h.quantile(0.5).map(ms),
        p99_ms: h.quantile(0.99).map(ms),
        max_ms: (count > 0).then(|| ms(h.max())),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn spread(values: Vec<f64>) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let v = sorted(values);
    Some(Spread {
        count: v.len() as u64,
        p50: round3(percentile(&v, 0.5)),
        p90: round3(percentile(&v, 0.9)),
        p99: round3(percentile(&v, 0.99)),
        max: round3(v[v.len() - 1]),
    })
}

fn eta_accuracy(rec: &Recorder) -> Option<EtaAccuracy> {
    let samples = rec.eta_samples();
    let overdue = rec.eta_overdue.load(Ordering::Relaxed);
    if samples.is_empty() && overdue == 0 {
        return None;
    }
    let median = |v: Vec<f64>| {
        if v.is_empty() {
            0.0
        } else {
            round3(percentile(&sorted(v), 0.5))
        }
    };
    let within = samples
        .iter()
        .filter(|s| s.actual >= s.range.0 && s.actual <= s.range.1)
        .count() as f64;
    Some(EtaAccuracy {
        samples: samples.len() as u64,
        median_abs_error_seconds: median(
            samples.iter().map(|s| (s.actual - s.shown).abs()).collect(),
        ),
        median_shown_seconds: median(samples.iter().map(|s| s.shown).collect()),
        median_actual_seconds: median(samples.iter().map(|s| s.actual).collect()),
        within_range_share: round3(within / (samples.len() as f64 + overdue as f64)),
        overdue_not_admitted: overdue,
    })
}

/// `0.4 ms`, `21 ms`, `1.2 s`.
fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(ms) if ms < 10.0 => format!("{ms:.1} ms"),
        Some(ms) if ms < 1000.0 => format!("{ms:.0} ms"),
        Some(ms) => secs(ms / 1000.0),
    }
}

/// `1.2 s`, `45 s`, `12m05s`.
fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else {
        let whole = s.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

fn bytes(b: u64) -> String {
    let mib = b as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.0} KiB", b as f64 / 1024.0)
    }
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_owned()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

/// `values` as a row of block characters, at most `width` wide (each mark
/// the maximum of the seconds it covers), and the seconds per mark.
pub(crate) fn sparkline(values: &[u64], width: usize) -> (String, usize) {
    sparkline_to(values, width, 0)
}

/// [`sparkline`] whose full mark stands for at least `top` (100 for a
/// percentage), so that small values look small.
fn sparkline_to(values: &[u64], width: usize, top: u64) -> (String, usize) {
    const MARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let per = values.len().div_ceil(width.max(1)).max(1);
    let maxima: Vec<u64> = values
        .chunks(per)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect();
    let top = maxima.iter().copied().max().unwrap_or(0).max(top).max(1);
    let line = maxima
        .iter()
        .map(|v| {
            if *v == 0 {
                ' '
            } else {
                MARKS[(v.saturating_mul(8).div_ceil(top) as usize)
                    .saturating_sub(1)
                    .min(7)]
            }
        })
        .collect();
    (line, per)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scenario;
        writeln!(f, "digue surge — {}", s.name)?;
        writeln!(
            f,
            "  target     {}{}",
            s.target.trim_end_matches('/'),
            s.entry
        )?;
        let shape = match s.curve {
            "ramp" => format!("ramp 0 → {}/s over {}", s.peak_rate, secs(s.ramp_seconds)),
            "spike" => format!("spike at {}/s, decaying", s.peak_rate),
            _ => format!("constant {}/s", s.peak_rate),
        };
        writeln!(
            f,
            "  arrivals   {shape}; {} pupils; time limit {}; ceiling {}",
            s.pupils,
            secs(s.time_limit_seconds),
            s.concurrency
        )?;
        writeln!(
            f,
            "  ran        {} ({})",
            secs(self.elapsed_seconds),
            if self.time_limit_reached {
                "stopped by the time limit"
            } else {
                "every pupil done"
            }
        )?;

        let p = &self.pupils;
        let people = p.total - p.bots;
        writeln!(f, "\nPupils ({people} people, {} bots aside)", p.bots)?;
        writeln!(
            f,
            "  admitted        {:>7}  {:>7}  (finished their visit: {})",
            p.admitted,
            share(p.admitted, people),
            p.finished
        )?;
        writeln!(
            f,
            "  still waiting   {:>7}  {:>7}",
            p.still_waiting,
            share(p.still_waiting, people)
        )?;
        writeln!(
            f,
            "  gave up         {:>7}  {:>7}",
            p.gave_up,
            share(p.gave_up, people)
        )?;
        writeln!(
            f,
            "  failed          {:>7}  {:>7}  (errors in a row)",
            p.failed,
            share(p.failed, people)
        )?;
        writeln!(
            f,
            "  never arrived   {:>7}  {:>7}",
            p.not_started,
            share(p.not_started, people)
        )?;
        writeln!(
            f,
            "  mix             {} patient, {} impatient, {} quitters",
            p.patient, p.impatient, p.quitters
        )?;

        match &self.time_to_get_in {
            Some(t) => writeln!(
                f,
                "\nTime to get in    p50 {} · p90 {} · p99 {} · max {}  ({} pupils)",
                secs(t.p50),
                secs(t.p90),
                secs(t.p99),
                secs(t.max),
                t.count
            )?,
            None => writeln!(f, "\nTime to get in    nobody got in")?,
        }
        match &self.eta {
            Some(e) => {
                writeln!(
                    f,
                    "ETA shown vs lived  median error {} (shown {}, lived {}); {:.0} % within the range shown",
                    secs(e.median_abs_error_seconds),
                    secs(e.median_shown_seconds),
                    secs(e.median_actual_seconds),
                    e.within_range_share * 100.0
                )?;
                writeln!(
                    f,
                    "                    ({} waited with an ETA and got in; {} overdue without getting in)",
                    e.samples, e.overdue_not_admitted
                )?;
            }
            None => writeln!(f, "ETA shown vs lived  nobody waited with an ETA")?,
        }

        let r = &self.responses;
        writeln!(f, "\nResponses            count        p50        p99")?;
        for (name, k) in [
            ("page", &r.page),
            ("cache hit", &r.cache_hit),
            ("waiting room", &r.waiting_room),
            ("busy page", &r.busy),
            ("error", &r.error),
            ("timeout", &r.timeout),
            ("redirect", &r.redirect),
        ] {
            writeln!(
                f,
                "  {name:<14} {:>9} {:>10} {:>10}",
                k.count,
                ms(k.p50_ms),
                ms(k.p99_ms)
            )?;
        }
        writeln!(
            f,
            "  {:<14} {:>9}  (bots sent {}; {} received)",
            "total",
            r.total,
            r.bot_requests,
            bytes(r.bytes_received)
        )?;

        let c = &self.session;
        let verdict = if c.sessions_mismatched == 0 {
            "none showed another pupil's session".to_owned()
        } else {
            format!("{} SHOWED ANOTHER PUPIL'S SESSION", c.sessions_mismatched)
        };
        writeln!(
            f,
            "\nSessions          {} per-user answers checked: {verdict}",
            c.sessions_checked
        )?;
        writeln!(
            f,
            "                  {} assets fetched by {} pupils; {} per-user steps answered",
            c.assets_fetched, c.pupils_with_assets, c.steps_done
        )?;

        if let Some(o) = &self.origin {
            writeln!(
                f,
                "\nOrigin (digue {}, sampled every {} ms)",
                o.metrics_url, o.sample_interval_ms
            )?;
            let opt = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
            writeln!(
                f,
                "  peak in flight    {} (limit {})",
                opt(o.peak_in_flight),
                opt(o.limit)
            )?;
            writeln!(f, "  peak line length  {}", opt(o.peak_line_waiting))?;
        }
        let (label, series): (&str, Vec<u64>) = if self.origin.is_some() {
            (
                "line length",
                self.timeline
                    .iter()
                    .map(|p| p.line_waiting.unwrap_or(0))
                    .collect(),
            )
        } else {
            (
                "pupils waiting",
                self.timeline.iter().map(|p| p.pupils_waiting).collect(),
            )
        };
        let (line, per) = sparkline(&series, 60);
        writeln!(
            f,
            "  {label} over time  |{line}|  (max {}; one mark = {per} s)",
            series.iter().max().copied().unwrap_or(0)
        )?;

        self.fmt_portal(f)?;

        let sim = &self.simulator;
        let cpu = match (sim.cpu_seconds, sim.cpu_share_of_one_core) {
            (Some(c), Some(share)) => format!("{c:.1} s CPU ({:.0} % of one core)", share * 100.0),
            (Some(c), None) => format!("{c:.1} s CPU"),
            _ => "CPU time unknown".to_owned(),
        };
        let rss = sim
            .peak_rss_bytes
            .map_or("peak RSS unknown".to_owned(), |b| {
                format!("peak RSS {}", bytes(b))
            });
        let per_req = sim
            .cpu_us_per_request
            .map_or(String::new(), |us| format!(", {us:.0} µs CPU per request"));
        writeln!(f, "\nSimulator         {cpu}, {rss}{per_req}")?;

        if !self.warnings.is_empty() {
            writeln!(f, "\nWarnings")?;
            for w in &self.warnings {
                writeln!(f, "  - {w}")?;
            }
        }
        Ok(())
    }
}

impl Report {
    /// The portal's own figures, or that they are unknown.
    fn fmt_portal(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(p) = &self.portal else {
            return writeln!(
                f,
                "\nPortal            capacity used and failures unknown: no --portal-stats URL \
                 (`digue demo` prints it)"
            );
        };
        writeln!(
            f,
            "\nPortal (its own counters, {}, read every {} ms)",
            p.stats_url, p.sample_interval_ms
        )?;
        let capacity = if p.capacity_min == p.capacity_max {
            format!("capacity {}", p.capacity_min)
        } else {
            format!(
                "capacity {} → {}, between {} and {}",
                p.capacity_at_start, p.capacity_at_end, p.capacity_min, p.capacity_max
            )
        };
        let used = p
            .capacity_used_share
            .map_or("unknown".to_owned(), |s| format!("{:.1} %", s * 100.0));
        writeln!(f, "  capacity used     {used} over the run ({capacity})")?;
        writeln!(
            f,
            "  failures          {} overload errors ({} late 503s, {} dropped connections)",
            p.overload_errors, p.late_503s, p.dropped_connections
        )?;
        writeln!(
            f,
            "  requests          {} (peak in flight {} since it started)",
            p.requests, p.peak_in_flight_since_start
        )?;
        let shares: Vec<u64> = self
            .timeline
            .iter()
            .map(|t| {
                t.portal_capacity_used_share
                    .map_or(0, |s| (s * 100.0).round() as u64)
            })
            .collect();
        let (line, per) = sparkline_to(&shares, 60, 100);
        writeln!(
            f,
            "  capacity used over time  |{line}|  (full: 100 %; max {} %; one mark = {per} s)",
            shares.iter().max().copied().unwrap_or(0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v = sorted((1..=100).map(f64::from).rev().collect());
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.9), 7.0);
        let s = spread(vec![3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.count, s.p50, s.max), (3, 2.0, 3.0));
        assert!(spread(Vec::new()).is_none());
    }

    #[test]
    fn the_sparkline_keeps_peaks_when_squeezed() {
        let (line, per) = sparkline(&[0, 1, 2, 8, 4, 0], 3);
        assert_eq!(per, 2);
        assert_eq!(line.chars().count(), 3);
        assert_eq!(line.chars().nth(1), Some('█'), "the 8 survives: {line}");
        assert_eq!(sparkline(&[], 10).0, "");
        assert_eq!(
            sparkline_to(&[1, 100], 2, 100).0,
            "▁█",
            "a percentage is drawn against 100"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(ms(Some(0.42)), "0.4 ms");
        assert_eq!(ms(Some(210.0)), "210 ms");
        assert_eq!(ms(Some(1500.0)), "1.5 s");
        assert_eq!(secs(725.0), "12m05s");
        assert_eq!(ms(None), "-");
    }
}
