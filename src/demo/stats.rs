//! The portal's own counters, for `digue surge --portal-stats` to report
//! what the portal lived: `GET /__demo/stats`.
//!
//! The share of capacity used is integrated exactly, not sampled: every
//! change of the requests being served or of the capacity first closes the
//! interval since the previous change, adding `min(serving, capacity) × dt`
//! to `busy_seconds` and `capacity × dt` to `capacity_seconds`. A reader
//! divides the growth of one by the growth of the other between two reads.
//! Requests refused over capacity are in flight (they hold a connection
//! while they wait to fail) but use none of it: an overloaded portal is
//! not a well-used one.

use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::Shared;
use super::response::{Body, JSON, page};

/// Where the counters are served. Outside the portal's own paths, and
/// never counted as a request.
pub const STATS_PATH: &str = "/__demo/stats";

/// What `GET /__demo/stats` answers. Counters run from the portal's start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The capacity now.
    pub capacity: u64,
    /// Requests in the portal now, including those about to fail.
    pub in_flight: u64,
    /// Of those, the requests admitted under capacity and worked on.
    pub serving: u64,
    /// Highest `in_flight` since the portal started.
    pub peak_in_flight: u64,
    /// Requests received (health checks and these reads excluded).
    pub requests: u64,
    /// Requests refused for being over capacity: `late_503s +
    /// dropped_connections`, counted when refused.
    pub overload_errors: u64,
    /// Of those, answered with a 503 after a long wait.
    pub late_503s: u64,
    /// Of those, closed without a response after a longer wait.
    pub dropped_connections: u64,
    /// ∫ min(serving, capacity) dt: the capacity actually used, in
    /// request-seconds.
    pub busy_seconds: f64,
    /// ∫ capacity dt: the capacity offered, in request-seconds.
    pub capacity_seconds: f64,
    /// Seconds since the portal started.
    pub uptime_seconds: f64,
}

/// The integrals, and when they were last brought up to date.
#[derive(Debug)]
struct Integrals {
    since: Instant,
    busy_seconds: f64,
    capacity_seconds: f64,
}

/// Serialises every change of `serving` and `capacity` with the
/// integrals they feed. A std mutex: held for a few arithmetic operations,
/// never across `.await`; two short locks per request are nothing next to
/// the portal's own latency.
#[derive(Debug)]
pub(super) struct Usage {
    started: Instant,
    integrals: Mutex<Integrals>,
}

impl Usage {
    pub(super) fn new() -> Usage {
        let now = Instant::now();
        Usage {
            started: now,
            integrals: Mutex::new(Integrals {
                since: now,
                busy_seconds: 0.0,
                capacity_seconds: 0.0,
            }),
        }
    }

    /// Closes the interval since the last change at the current levels,
    /// then runs `change` (which moves a level) before anyone else can.
    pub(super) fn change<R>(&self, shared: &Shared, change: impl FnOnce() -> R) -> R {
        let _settled = self.settle(shared);
        change()
    }

    fn settle(&self, shared: &Shared) -> MutexGuard<'_, Integrals> {
        let mut i = self
            .integrals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let dt = now.duration_since(i.since).as_secs_f64();
        let capacity = shared.capacity.load(Ordering::Relaxed);
        let used = shared.serving.load(Ordering::Relaxed).min(capacity);
        i.busy_seconds += used as f64 * dt;
        i.capacity_seconds += capacity as f64 * dt;
        i.since = now;
        i
    }
}

/// Reads every counter at one instant.
pub(super) fn snapshot(shared: &Shared) -> Stats {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (busy_seconds, capacity_seconds, since) = {
        let i = shared.usage.settle(shared);
        (i.busy_seconds, i.capacity_seconds, i.since)
    };
    let overload_errors = load(&shared.overload_errors);
    let late_503s = load(&shared.late_503s).min(overload_errors);
    Stats {
        capacity: shared.capacity.load(Ordering::Relaxed) as u64,
        in_flight: shared.in_flight.load(Ordering::Relaxed) as u64,
        serving: shared.serving.load(Ordering::Relaxed) as u64,
        peak_in_flight: shared.peak_in_flight.load(Ordering::Relaxed) as u64,
        requests: load(&shared.requests),
        overload_errors,
        late_503s,
        dropped_connections: overload_errors - late_503s,
        busy_seconds: micros(busy_seconds),
        capacity_seconds: micros(capacity_seconds),
        uptime_seconds: micros(since.duration_since(shared.usage.started).as_secs_f64()),
    }
}

/// Seconds to the microsecond: the clock reads no finer, and the JSON
/// stays readable.
fn micros(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e6
}

/// The counters as JSON, never to be stored by a cache on the way.
pub(super) fn respond(shared: &Shared) -> Response<Body> {
    let body = serde_json::to_string(&snapshot(shared)).unwrap_or_else(|_| "{}".to_owned());
    let mut resp = page(StatusCode::OK, JSON, body);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
