//! The one place digue reads the time (`clippy.toml` bans
//! `SystemTime::now` and `std::time::Instant::now` elsewhere).
//!
//! Two readings are taken together: a monotonic [`Instant`] (tokio's, so
//! `tokio::time::pause` moves it) for windows, TTLs and rates, and the wall
//! time for what leaves the process (cookie timestamps, HTTP dates).
//!
//! A [`Clock`] can be moved forward by hand ([`Clock::advance`]): an
//! end-to-end test over real sockets (where tokio's paused time cannot be
//! used, as it would fire every I/O timeout at once) lets a TTL, a claim
//! window or a session expire without sleeping. Only what the request path
//! decides moves with it; timers (`sleep`, timeouts) keep real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// One reading of a clock.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For windows, TTLs and rates: never goes back.
    pub instant: Instant,
    /// For what leaves the process: cookie timestamps, HTTP dates.
    pub system: SystemTime,
}

impl Now {
    /// Whole seconds since the Unix epoch.
    pub fn unix(&self) -> u64 {
        unix_secs(self.system)
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(&self) -> u64 {
        self.system
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The app's clock: the system's, plus how far it was moved forward by hand.
/// Cheap to clone; clones move together.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Nanoseconds added to both readings; only ever grows, so neither
    /// reading goes back.
    ahead: Arc<AtomicU64>,
}

impl Clock {
    /// The system's clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> Now {
        let ahead = self.ahead();
        Now {
            instant: Instant::now() + ahead,
            system: wall() + ahead,
        }
    }

    /// The monotonic reading alone (the hit path needs no wall time).
    pub fn instant(&self) -> Instant {
        Instant::now() + self.ahead()
    }

    fn ahead(&self) -> Duration {
        Duration::from_nanos(self.ahead.load(Ordering::Relaxed))
    }

    /// Moves this clock forward, for tests and rehearsals: what it decides
    /// (expiry, windows, rates) sees `by` pass at once.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.ahead.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The wall time, for code with no app at hand (the demo portal, the surge
/// simulator, start-up). The request path reads its app's [`Clock`].
pub fn wall() -> SystemTime {
    #[allow(clippy::disallowed_methods)] // the one allowed reading
    SystemTime::now()
}

/// A value that differs from call to call and process to process (the
/// time's nanoseconds through the std hasher's random keys): for seeds and
/// jitter, never for secrets.
pub fn entropy() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let nanos = wall()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    h.finish()
}

/// Whole seconds since the Unix epoch of a wall time.
pub fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clock_moved_forward_moves_both_readings_and_its_clones() {
        let clock = Clock::system();
        let twin = clock.clone();
        let before = clock.now();
        twin.advance(Duration::from_secs(90));
        let after = clock.now();
        assert_eq!(after.instant - before.instant, Duration::from_secs(90));
        assert!(after.unix() >= before.unix() + 90, "wall time moved too");
    }
}
