//! What makes the portal fragile: every page gets slower as load grows, and
//! past capacity requests fail the way a saturated servlet container fails
//! them, with a late 503 or a connection dropped without a response.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use super::Shared;
use super::assets::UNAVAILABLE_HTML;
use super::response::{Body, HTML, TEXT, page};
use super::routes::route;
use super::stats::{self, STATS_PATH};

/// Every sleep of the portal is capped so that a silly `base_latency` cannot
/// park a task forever.
const MAX_THINK: Duration = Duration::from_secs(30);

/// Error returned by the service to make hyper close the connection without
/// writing a response, which is what a saturated legacy server looks like.
#[derive(Debug)]
pub(super) struct Saturated;

impl fmt::Display for Saturated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("portal saturated, connection dropped without a response")
    }
}

impl std::error::Error for Saturated {}

/// In-flight accounting that survives clients hanging up: hyper drops the
/// service future, and with it this guard.
struct InFlight {
    shared: Arc<Shared>,
    level: usize,
    /// Admitted under capacity, so counted in `serving`.
    serving: bool,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let level = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak_in_flight.fetch_max(level, Ordering::Relaxed);
        InFlight {
            shared: Arc::clone(shared),
            level,
            serving: false,
        }
    }

    /// The request is worked on: it takes a share of the capacity, through
    /// the usage integrals so that the share used is exact.
    fn serve(&mut self) {
        let shared = &self.shared;
        shared
            .usage
            .change(shared, || shared.serving.fetch_add(1, Ordering::Relaxed));
        self.serving = true;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let shared = &self.shared;
        if self.serving {
            shared
                .usage
                .change(shared, || shared.serving.fetch_sub(1, Ordering::Relaxed));
        }
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The service of every connection: health checks and the portal's counters
/// aside, each request takes an in-flight slot, and past capacity it is
/// refused instead of routed.
pub(super) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Saturated> {
    if req.uri().path() == "/healthz" {
        return Ok(page(StatusCode::OK, TEXT, "ok\n"));
    }
    if req.uri().path() == STATS_PATH {
        return Ok(stats::respond(&shared));
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let mut slot = InFlight::enter(&shared);
    if slot.level > shared.capacity.load(Ordering::Relaxed) {
        return overloaded(&shared).await;
    }
    slot.serve();
    Ok(route(&shared, req, slot.level).await)
}

/// Simulates the page being computed; the cost grows with the load
/// already on the portal, so the idle latency is exactly `base_latency`.
pub(super) async fn think(shared: &Shared, level: usize, cost: f64) {
    let others = level.saturating_sub(1) as f64;
    let load = others / shared.capacity.load(Ordering::Relaxed).max(1) as f64;
    // Requests under capacity never exceed 4×, the clamp only guards
    // against arithmetic surprises.
    let factor = (1.0 + load).powi(2).min(4.0) * cost;
    let secs = shared.base_latency.as_secs_f64() * factor;
    let delay = Duration::try_from_secs_f64(secs)
        .unwrap_or(MAX_THINK)
        .min(MAX_THINK);
    tokio::time::sleep(delay).await;
}

/// Past capacity, a legacy servlet container either answers a late 503 or
/// keeps the socket until a timeout and closes it; clients see both.
async fn overloaded(shared: &Shared) -> Result<Response<Body>, Saturated> {
    shared.overload_errors.fetch_add(1, Ordering::Relaxed);
    let nth = shared.excess_seen.fetch_add(1, Ordering::Relaxed);
    if nth.is_multiple_of(2) {
        shared.late_503s.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(shared.timings.reject_after.min(MAX_THINK)).await;
        Ok(page(
            StatusCode::SERVICE_UNAVAILABLE,
            HTML,
            UNAVAILABLE_HTML,
        ))
    } else {
        tokio::time::sleep(shared.timings.drop_after.min(MAX_THINK)).await;
        Err(Saturated)
    }
}
