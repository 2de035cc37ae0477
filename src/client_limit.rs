//! Per-client limits (`[site.client_limit]`): one client's budget of
//! requests that would reach the origin — misses, per-user pages, POSTs —
//! so the pupil who holds F5 on the timetable does not eat the portal's
//! capacity. Cache hits, waiting-room answers and `bypass_cidrs` never
//! come here (see `proxy`).
//!
//! One GCRA budget per client key, in governor's keyed limiter. A key is
//! a 64-bit keyed hash of the session cookie's value (or of the network),
//! never the value itself: every client costs the same few bytes whatever
//! it sends, and nothing readable about anyone sits in memory. Two clients
//! share a budget only on a hash collision (about 1 in 2^64 per pair, keys
//! drawn at random at start, so not aimed).
//!
//! Memory is bounded two ways. Every [`SWEEP_EVERY`] a sweep drops the
//! clients whose budget is full again (`retain_recent`): they are
//! indistinguishable from newcomers. And at most `max_keys` clients are
//! tracked: when the table is full a sweep starts at once, and until it
//! has made room the limit is **suspended** (requests pass, counted as
//! `untracked`), rather than refusing people nobody has measured: a
//! courtesy limit must never lock a school out because someone else
//! filled the table. Tracked clients (36 B each with the map's overhead,
//! measured: `benches/README.md`) therefore cost about `max_keys × 36 B`
//! (35 MiB at the default million).
//!
//! Who can get around it: a client that invents a new session cookie on
//! every request is a new client every time. The limit tames browsers,
//! not attackers; the origin guard and the waiting room stay the shield.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::header::HeaderMap;
use tokio::time::Instant;

use crate::cache::policy::session_cookie_values;
use crate::config::{ClientKey, ClientLimitConfig};

/// How often idle clients are forgotten.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What one origin-bound request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Within its budget: on to the origin.
    Within,
    /// Over it: refused, to come back after this long.
    Spent(Duration),
    /// The table of clients is full (see the module doc): passes unmeasured.
    Untracked,
}

/// The app's clock as governor reads it: nanoseconds from `base` to the
/// latest reading a request brought (`check`'s `now`, from the app's clock,
/// so tests move it with `Proxy::advance`). Never goes back.
#[derive(Debug, Clone)]
struct Ticks {
    base: Instant,
    latest: Arc<AtomicU64>,
}

impl Ticks {
    fn at(&self, now: Instant) -> Nanos {
        let since = now.saturating_duration_since(self.base);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        let before = self.latest.fetch_max(nanos, Ordering::Relaxed);
        Nanos::from(before.max(nanos))
    }
}

impl GovernorClock for Ticks {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.latest.load(Ordering::Relaxed))
    }
}

/// One site's budgets, kept across reloads while its settings are equal.
pub struct ClientLimiter {
    pub config: ClientLimitConfig,
    budgets: RateLimiter<u64, DashMapStateStore<u64>, Ticks, NoOpMiddleware<Nanos>>,
    ticks: Ticks,
    /// Keys the hash of a client's cookie or network.
    hasher: RandomState,
    /// When the last sweep started, in `ticks`' nanoseconds.
    swept_at: AtomicU64,
    /// A sweep is running: one at a time.
    sweeping: AtomicBool,
}

impl ClientLimiter {
    pub fn new(config: ClientLimitConfig) -> ClientLimiter {
        let ticks = Ticks {
            base: Instant::now(),
            latest: Arc::new(AtomicU64::new(0)),
        };
        let quota = Quota::per_minute(config.requests_per_minute).allow_burst(config.burst);
        ClientLimiter {
            budgets: RateLimiter::dashmap_with_clock(quota, ticks.clone()),
            ticks,
            config,
            hasher: RandomState::new(),
            swept_at: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
        }
    }

    /// The key of the client that sent `headers` from `ip`.
    pub fn key(&self, headers: &HeaderMap, session_cookies: &[String], ip: IpAddr) -> u64 {
        if self.config.key == ClientKey::Session
            && let Some(value) = session_value(headers, session_cookies)
        {
            return self.hasher.hash_one((b'S', value));
        }
        match ip.to_canonical() {
            IpAddr::V4(ip) => self.hasher.hash_one((b'4', ip.octets())),
            IpAddr::V6(ip) => {
                let s = ip.segments();
                self.hasher.hash_one((b'6', [s[0], s[1], s[2], s[3]]))
            }
        }
    }

    /// Spends one request of `key`'s budget, if it has one left; `now`:
    /// the app's clock.
    pub fn check(self: &Arc<Self>, key: u64, now: Instant) -> Budget {
        let now = self.ticks.at(now);
        let due = now
            .as_u64()
            .saturating_sub(self.swept_at.load(Ordering::Relaxed))
            >= SWEEP_EVERY.as_nanos() as u64;
        if self.budgets.len() >= self.config.max_keys {
            self.sweep(now);
            return Budget::Untracked;
        }
        if due {
            self.sweep(now);
        }
        match self.budgets.check_key(&key) {
            Ok(()) => Budget::Within,
            Err(not_until) => Budget::Spent(not_until.wait_time_from(now)),
        }
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.budgets.len()
    }

    /// Forgets the clients whose budget is full again, off the request
    /// path (a blocking thread: a million keys take milliseconds), unless
    /// a sweep is running.
    fn sweep(self: &Arc<Self>, now: Nanos) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        self.swept_at.store(now.as_u64(), Ordering::Relaxed);
        let me = self.clone();
        let work = move || {
            me.sweep_now();
            me.sweeping.store(false, Ordering::Release);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    /// The sweep itself; gives memory back when it dropped most clients.
    pub fn sweep_now(&self) {
        let before = self.budgets.len();
        self.budgets.retain_recent();
        if self.budgets.len() < before / 2 {
            self.budgets.shrink_to_fit();
        }
    }
}

/// The value of the first of the site's session cookies in the request
/// (names in any case, pairs cut at `;` and `,` as the cache reads them),
/// as bytes: browsers send non-ASCII values. `None` when absent or empty.
fn session_value<'h>(headers: &'h HeaderMap, names: &'h [String]) -> Option<&'h [u8]> {
    session_cookie_values(headers, names).find(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use http::HeaderValue;
    use http::header;

    use super::*;

    fn limiter(rpm: u32, burst: u32, key: ClientKey, max_keys: usize) -> Arc<ClientLimiter> {
        let config = ClientLimitConfig {
            requests_per_minute: NonZeroU32::new(rpm).expect("positive"),
            burst: NonZeroU32::new(burst).expect("positive"),
            key,
            max_keys,
        };
        Arc::new(ClientLimiter::new(config))
    }

    fn cookie(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static(value));
        h
    }

    const SESSIONS: &[&str] = &["JSESSIONID"];

    fn names() -> Vec<String> {
        SESSIONS.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_session_names_the_client_and_the_network_stands_in_without_one() {
        let l = limiter(60, 5, ClientKey::Session, 100);
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        let a = l.key(&cookie("x=1; jsessionid=AAA"), &names(), ip);
        let b = l.key(&cookie("JSESSIONID=BBB"), &names(), ip);
        let none = l.key(&HeaderMap::new(), &names(), ip);
        let empty = l.key(&cookie("JSESSIONID="), &names(), ip);
        assert_ne!(a, b, "two sessions behind one NAT are two clients");
        assert_eq!(none, empty, "an empty session cookie is no session");
        assert_eq!(
            a,
            l.key(
                &cookie("JSESSIONID=AAA"),
                &names(),
                "198.51.100.1".parse().expect("ip")
            ),
            "a session keeps its budget when its address changes"
        );
    }

    #[test]
    fn a_network_key_is_the_ipv4_address_or_the_ipv6_64() {
        let l = limiter(60, 5, ClientKey::Network, 100);
        let key = |ip: &str| l.key(&cookie("JSESSIONID=AAA"), &names(), ip.parse().expect("ip"));
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff::9"),
            "one /64"
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"), "IPv4 /32");
        assert_eq!(
            key("::ffff:192.0.2.1"),
            key("192.0.2.1"),
            "a mapped IPv4 is IPv4"
        );
    }

    #[test]
    fn a_budget_is_spent_then_refilled_and_says_when() {
        let l = limiter(60, 3, ClientKey::Session, 100);
        let t0 = l.ticks.base + Duration::from_secs(1);
        for i in 0..3 {
            assert_eq!(l.check(7, t0), Budget::Within, "request {i} of the burst");
        }
        let Budget::Spent(wait) = l.check(7, t0) else {
            panic!("the fourth request at once is over budget")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "one a second: {wait:?}"
        );
        assert_eq!(
            l.check(8, t0),
            Budget::Within,
            "another client is unaffected"
        );
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            l.check(7, later),
            Budget::Within,
            "a second later, one more"
        );
        assert!(
            matches!(l.check(7, later), Budget::Spent(_)),
            "and only one"
        );
    }

    #[test]
    fn a_full_table_suspends_the_limit_until_a_sweep_makes_room() {
        let l = limiter(60, 1, ClientKey::Session, 3);
        let t0 = l.ticks.base + Duration::from_secs(1);
        for key in 0..3 {
            assert_eq!(l.check(key, t0), Budget::Within);
        }
        assert_eq!(l.check(0, t0), Budget::Untracked, "full: unmeasured");
        assert_eq!(l.check(99, t0), Budget::Untracked, "full: unmeasured");
        // The sweep started by the full table ran inline (no runtime here),
        // and found every client still spent.
        assert_eq!(l.tracked(), 3);
        l.ticks.at(t0 + Duration::from_secs(2));
        l.sweep_now();
        assert_eq!(l.tracked(), 0, "every budget refilled: all forgotten");
        assert_eq!(l.check(0, t0 + Duration::from_secs(2)), Budget::Within);
    }

    #[test]
    fn a_huge_or_odd_cookie_costs_one_key() {
        let l = limiter(60, 1, ClientKey::Session, 100);
        let huge = format!("JSESSIONID={}", "é".repeat(20_000));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&huge).expect("header"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"JSESSIONID=\xff\xfe, ;;==;").expect("obs-text is valid"),
        );
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let k = l.key(&h, &names(), ip);
        assert_eq!(k, l.key(&h, &names(), ip), "stable");
        assert_eq!(l.check(k, l.ticks.base), Budget::Within);
        assert_eq!(l.tracked(), 1);
    }
}
