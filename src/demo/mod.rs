//! A deliberately fragile demo origin that behaves like a legacy school portal
//! (Pronote/ENT): `digue demo` puts the proxy in front of it, and the surge
//! simulator hammers it to show what digue absorbs.
//!
//! The portal speaks HTTP/1.1 with keep-alive only, like the aging Tomcat
//! installations it imitates. Its caching headers are intentionally
//! inconsistent: the home page is properly cacheable, static assets and the
//! news page carry no caching headers at all (so digue must force a TTL), and
//! everything tied to a student session is `no-store`.
//!
//! # Layout
//!
//! This file is the public face: [`PortalOptions`], [`Portal`] and the state
//! its tasks share. The rest, by job:
//!
//! - `listener`: the accept loop and one HTTP/1.1 connection each.
//! - `load`: what makes the portal fragile: latency that grows with load,
//!   then late 503s and dropped connections past capacity.
//! - `capacity`: a capacity that moves on a schedule (`--capacity`).
//! - `stats`: the portal's own counters at `/__demo/stats`, and the share
//!   of its capacity used.
//! - `routes`: the portal's pages and API calls, by path.
//! - `home`: the cacheable home page and its validators.
//! - `sessions`: Tomcat-like session ids and the `JSESSIONID` cookie.
//! - `response`: response builders shared by the routes.
//! - `assets`: the pages, stylesheet, script and logo, compiled in from
//!   `assets/` so they can be read and edited as what they are.

mod assets;
mod capacity;
mod home;
mod listener;
mod load;
mod response;
mod routes;
mod sessions;
mod stats;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use home::HomePage;
use sessions::Sessions;
use stats::Usage;

pub use capacity::CapacitySchedule;
pub use stats::{STATS_PATH, Stats};

/// Knobs of the demo portal; `Default` gives capacity 32, base latency 20 ms.
#[derive(Debug, Clone)]
pub struct PortalOptions {
    /// Requests the portal can work on at once; past this it degrades and
    /// then fails. [`Portal::follow`] moves it on a schedule.
    pub capacity: usize,
    /// Latency of a dynamic page when the portal is idle.
    pub base_latency: Duration,
}

impl Default for PortalOptions {
    fn default() -> Self {
        PortalOptions {
            capacity: 32,
            base_latency: Duration::from_millis(20),
        }
    }
}

/// How long over-capacity requests linger before failing. Not public: the
/// figures imitate a saturated Tomcat, but tests need shorter ones.
#[derive(Debug, Clone, Copy)]
struct Timings {
    reject_after: Duration,
    drop_after: Duration,
}

impl Timings {
    const LEGACY: Timings = Timings {
        reject_after: Duration::from_secs(1),
        drop_after: Duration::from_secs(5),
    };
}

/// A running portal: its address, live counters, and a way to stop it.
pub struct Portal {
    /// Address the portal accepts connections on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
    /// The task applying a capacity schedule, if one was given.
    schedule: Option<JoinHandle<()>>,
}

impl Portal {
    /// Starts serving on `listener` in a background tokio task.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, or if the listener has no
    /// local address (which a bound listener always has).
    pub fn spawn(listener: TcpListener, opts: PortalOptions) -> Portal {
        Portal::spawn_with(listener, opts, Timings::LEGACY)
    }

    fn spawn_with(listener: TcpListener, opts: PortalOptions, timings: Timings) -> Portal {
        let addr = listener
            .local_addr()
            .expect("a bound TcpListener has a local address");
        let shared = Arc::new(Shared::new(opts, timings));
        tracing::info!(
            %addr,
            capacity = shared.capacity.load(Ordering::Relaxed),
            base_latency_ms = shared.base_latency.as_millis(),
            "demo portal listening"
        );
        let accept = tokio::spawn(listener::accept_loop(listener, Arc::clone(&shared)));
        Portal {
            addr,
            shared,
            accept,
            schedule: None,
        }
    }

    /// Moves the capacity on `schedule`, its offsets counted from now:
    /// the capacity at 0 s applies at once, each change is logged. Replaces
    /// a schedule followed before.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime.
    pub fn follow(&mut self, schedule: CapacitySchedule) {
        let start = tokio::time::Instant::now();
        self.shared
            .set_capacity(schedule.initial().get(), Duration::ZERO);
        if let Some(old) = self.schedule.take() {
            old.abort();
        }
        self.schedule = Some(tokio::spawn(capacity::follow(
            Arc::clone(&self.shared),
            schedule,
            start,
        )));
    }

    /// Requests the portal can work on at once right now.
    pub fn capacity(&self) -> usize {
        self.shared.capacity.load(Ordering::Relaxed)
    }

    /// Every counter at one instant, as `/__demo/stats` serves them.
    pub fn stats(&self) -> Stats {
        stats::snapshot(&self.shared)
    }

    /// Requests being processed right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Highest in_flight ever seen.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Requests answered with 5xx or dropped because the portal was over capacity.
    ///
    /// A request is counted as soon as the portal decides to reject it, i.e.
    /// before its 1 s or 5 s wait is over.
    pub fn overload_errors(&self) -> u64 {
        self.shared.overload_errors.load(Ordering::Relaxed)
    }

    /// Total requests received (health checks excluded, so probes from digue
    /// do not blur how much traffic actually reached the origin).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Portal")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .field("peak_in_flight", &self.peak_in_flight())
            .field("overload_errors", &self.overload_errors())
            .field("requests", &self.requests())
            .finish()
    }
}

impl Drop for Portal {
    /// Stops the accept loop. Open connections are owned by that task, so they
    /// are cut too, including requests still waiting out their latency.
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(schedule) = &self.schedule {
            schedule.abort();
        }
    }
}

/// What the accept loop, every connection and the [`Portal`] handle share.
struct Shared {
    /// Requests worked on at once before the portal starts failing; moved
    /// by a capacity schedule, only through [`Shared::set_capacity`].
    capacity: AtomicUsize,
    /// Latency of a dynamic page on an idle portal.
    base_latency: Duration,
    /// How long over-capacity requests linger before failing.
    timings: Timings,
    /// Requests being processed, including those about to fail.
    in_flight: AtomicUsize,
    /// Highest `in_flight` ever seen.
    peak_in_flight: AtomicUsize,
    /// Of `in_flight`, the requests admitted under capacity and worked on:
    /// the ones refused hold a connection, not a share of the capacity.
    /// Moved only through `usage`.
    serving: AtomicUsize,
    /// Requests refused for being over capacity.
    overload_errors: AtomicU64,
    /// Of those, the ones answered with a late 503 (the rest are dropped).
    late_503s: AtomicU64,
    /// The integrals of capacity offered and used; every change of
    /// `serving` or `capacity` goes through it.
    usage: Usage,
    /// Requests received, health checks excluded.
    requests: AtomicU64,
    /// Alternates the fate of excess requests so that exactly half get a 503.
    excess_seen: AtomicU64,
    /// Sessions opened by the login page.
    sessions: Sessions,
    /// The home page and its validators, fixed for the portal's lifetime.
    home: HomePage,
}

impl Shared {
    fn new(opts: PortalOptions, timings: Timings) -> Shared {
        Shared {
            capacity: AtomicUsize::new(opts.capacity),
            base_latency: opts.base_latency,
            timings,
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            serving: AtomicUsize::new(0),
            overload_errors: AtomicU64::new(0),
            late_503s: AtomicU64::new(0),
            usage: Usage::new(),
            requests: AtomicU64::new(0),
            excess_seen: AtomicU64::new(0),
            sessions: Sessions::new(),
            home: HomePage::new(),
        }
    }

    /// Sets the capacity, closing the usage interval at the old one, and
    /// logs a change.
    fn set_capacity(&self, capacity: usize, elapsed: Duration) {
        let old = self
            .usage
            .change(self, || self.capacity.swap(capacity, Ordering::Relaxed));
        if old != capacity {
            tracing::info!(
                capacity,
                was = old,
                after_s = elapsed.as_secs_f64(),
                "demo portal capacity changed"
            );
        }
    }
}
