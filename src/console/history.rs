//! The console's memory: the last 30 minutes of each site's figures, one
//! sample every [`SAMPLE_EVERY`], so an operator without Prometheus sees
//! where the morning is going.
//!
//! Bounded: [`KEPT`] samples per site (a few dozen KiB each), for the
//! sites of the running config only. A sample stores the counters as read
//! (to take differences) and the figures derived over the last
//! [`WINDOW`]: rates per minute, hit ratio, latency quantiles.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prometheus::core::Metric;
use serde::Serialize;
use tokio::time::Instant;

use crate::outcome::Outcome;
use crate::site::Site;

/// How often each site is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How far back the charts go.
pub const SPAN: Duration = Duration::from_secs(30 * 60);
/// Samples kept per site.
pub const KEPT: usize = (SPAN.as_secs() / SAMPLE_EVERY.as_secs()) as usize;
/// Rates, ratios and quantiles are measured over this much of the past.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What one sample shows, derived over the last [`WINDOW`].
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Figures {
    /// Unix milliseconds of the app's clock.
    pub t: u64,
    /// Tickets waiting (0 without a waiting room).
    pub line: u64,
    pub sessions: u64,
    /// Admissions per minute measured from claims.
    pub admitted_per_minute: f64,
    /// The running `new_users_per_minute` (the autopilot's, while it steers).
    pub rate_per_minute: Option<u32>,
    pub in_flight: i64,
    pub origin_limit: usize,
    /// Origin latency quantiles in milliseconds (`None`: no response).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    /// Share of cache lookups served from memory (`None`: no lookup).
    pub hit_ratio: Option<f64>,
    pub requests_per_minute: f64,
    pub busy_per_minute: f64,
    pub errors_per_minute: f64,
    /// 429s of `[site.client_limit]`.
    pub limited_per_minute: f64,
}

/// Cumulative counters as read at one sample.
#[derive(Debug, Clone, Default)]
struct Counters {
    at: Option<Instant>,
    served: u64,
    lookups: u64,
    requests: u64,
    busy: u64,
    errors: u64,
    limited: u64,
    /// The origin latency histogram's cumulative bucket counts.
    latency: Vec<u64>,
}

/// One site's samples, oldest first.
#[derive(Default)]
struct Ring {
    samples: VecDeque<(Counters, Figures)>,
}

impl Ring {
    fn push(&mut self, counters: Counters, figures: Figures) {
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back((counters, figures));
    }
}

/// Every site's samples.
#[derive(Default)]
pub struct History {
    /// By site name. Locked for one sample's push or one poll's copy
    /// (microseconds), never across `.await`.
    sites: Mutex<HashMap<String, Ring>>,
}

impl History {
    /// Takes one sample of every site; forgets sites no longer configured.
    /// `now` and `unix_ms`: the app's clock.
    pub fn record(&self, sites: &[std::sync::Arc<Site>], now: Instant, unix_ms: u64) {
        let mut rings = self.sites.lock().expect("invariant: no panic while locked");
        rings.retain(|name, _| sites.iter().any(|s| s.config.name == *name));
        for site in sites {
            let ring = rings.entry(site.config.name.clone()).or_default();
            if ring.samples.back().is_some_and(|(_, f)| f.t >= unix_ms) {
                // Read before a sample that took the lock first: the ring
                // stays in order, so a poll's cursor never skips one.
                continue;
            }
            let (counters, bounds) = read(site, now);
            let base = ring
                .samples
                .iter()
                .find(|(c, _)| {
                    c.at.is_some_and(|at| now.saturating_duration_since(at) <= WINDOW)
                })
                .map(|(c, _)| c.clone());
            let figures = derive(&counters, base.as_ref(), &bounds, unix_ms, live(site, now));
            ring.push(counters, figures);
        }
    }

    /// A site's samples taken after `since` (Unix ms), oldest first.
    pub fn since(&self, site: &str, since: u64) -> Vec<Figures> {
        let rings = self.sites.lock().expect("invariant: no panic while locked");
        rings.get(site).map_or_else(Vec::new, |ring| {
            ring.samples
                .iter()
                .filter(|(_, f)| f.t > since)
                .map(|(_, f)| *f)
                .collect()
        })
    }

    /// Samples held for a site.
    pub fn len(&self, site: &str) -> usize {
        let rings = self.sites.lock().expect("invariant: no panic while locked");
        rings.get(site).map_or(0, |r| r.samples.len())
    }
}

/// What a site's gauges and settings say now.
#[derive(Debug, Clone, Copy, Default)]
struct Live {
    line: u64,
    sessions: u64,
    admitted_per_minute: f64,
    rate_per_minute: Option<u32>,
    in_flight: i64,
    origin_limit: usize,
}

fn live(site: &Site, now: Instant) -> Live {
    let mut live = Live {
        in_flight: site.metrics.origin_in_flight.get(),
        origin_limit: site.live().origin_concurrency,
        ..Live::default()
    };
    if let Some((gate, cfg, settings)) = site.waiting_room() {
        let status = gate.status(cfg, &settings, now);
        live.line = status.waiting;
        live.sessions = gate.sessions_active();
        live.admitted_per_minute = status.rate * 60.0;
        live.rate_per_minute = Some(settings.new_users_per_minute);
    }
    live
}

fn read(site: &Site, now: Instant) -> (Counters, Vec<f64>) {
    let m = &site.metrics;
    let count = |o: Outcome| m.requests_of(o);
    let served = count(Outcome::Hit) + count(Outcome::Stale) + count(Outcome::Collapsed);
    let histogram = m.origin_seconds.metric();
    let buckets = histogram.get_histogram().get_bucket();
    let counters = Counters {
        at: Some(now),
        served,
        lookups: served + count(Outcome::Miss),
        requests: Outcome::ALL.iter().map(|o| count(*o)).sum(),
        busy: count(Outcome::Busy),
        errors: count(Outcome::Error),
        limited: m.client_limited.get(),
        latency: buckets.iter().map(|b| b.cumulative_count()).collect(),
    };
    (counters, buckets.iter().map(|b| b.upper_bound()).collect())
}

fn derive(now: &Counters, base: Option<&Counters>, bounds: &[f64], t: u64, live: Live) -> Figures {
    let empty = Counters::default();
    let base = base.unwrap_or(&empty);
    let minutes = match (now.at, base.at) {
        (Some(a), Some(b)) => a.saturating_duration_since(b).as_secs_f64() / 60.0,
        _ => 0.0,
    };
    let per_minute = |a: u64, b: u64| {
        if minutes > 0.0 {
            a.saturating_sub(b) as f64 / minutes
        } else {
            0.0
        }
    };
    let latency: Vec<u64> = now
        .latency
        .iter()
        .enumerate()
        .map(|(i, c)| c.saturating_sub(base.latency.get(i).copied().unwrap_or(0)))
        .collect();
    let lookups = now.lookups.saturating_sub(base.lookups);
    Figures {
        t,
        line: live.line,
        sessions: live.sessions,
        admitted_per_minute: live.admitted_per_minute,
        rate_per_minute: live.rate_per_minute,
        in_flight: live.in_flight,
        origin_limit: live.origin_limit,
        p50_ms: quantile(&latency, bounds, 0.5).map(|s| s * 1000.0),
        p95_ms: quantile(&latency, bounds, 0.95).map(|s| s * 1000.0),
        hit_ratio: (lookups > 0)
            .then(|| now.served.saturating_sub(base.served) as f64 / lookups as f64),
        requests_per_minute: per_minute(now.requests, base.requests),
        busy_per_minute: per_minute(now.busy, base.busy),
        errors_per_minute: per_minute(now.errors, base.errors),
        limited_per_minute: per_minute(now.limited, base.limited),
    }
}

/// The `q` quantile of a histogram from its cumulative bucket counts, as
/// Prometheus' `histogram_quantile` computes it: linear within the bucket
/// that holds it, so the error is at most that bucket's width (the top
/// bucket's bound when it falls past the last one). `None` when empty.
pub fn quantile(cumulative: &[u64], bounds: &[f64], q: f64) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0;
    let mut lower = 0.0;
    for (count, upper) in cumulative.iter().zip(bounds) {
        if *count as f64 >= rank {
            let within = (*count - below) as f64;
            let share = if within > 0.0 {
                (rank - below as f64) / within
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * share);
        }
        below = *count;
        lower = *upper;
    }
    // Past the last finite bound: say the bound, not a guess beyond it.
    Some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let bounds = [0.1, 0.5, 1.0];
        // 10 under 100 ms, 10 more under 500 ms, none slower.
        let cumulative = [10, 20, 20];
        assert_eq!(quantile(&cumulative, &bounds, 0.5), Some(0.1));
        let p95 = quantile(&cumulative, &bounds, 0.95).expect("some");
        assert!((p95 - 0.46).abs() < 1e-9, "{p95}");
        assert_eq!(quantile(&[0, 0, 0], &bounds, 0.5), None);
        assert_eq!(
            quantile(&[0, 0, 0, 4], &[0.1, 0.5, 1.0], 0.5),
            Some(1.0),
            "past the last bound"
        );
    }

    #[test]
    fn the_ring_keeps_thirty_minutes_and_no_more() {
        assert_eq!(KEPT, 360);
        let mut ring = Ring::default();
        for t in 0..(KEPT as u64 + 50) {
            let f = derive(&Counters::default(), None, &[], t, Live::default());
            ring.push(Counters::default(), f);
        }
        assert_eq!(ring.samples.len(), KEPT);
        assert_eq!(
            ring.samples.front().map(|s| s.1.t),
            Some(50),
            "the oldest went first"
        );
    }
}
