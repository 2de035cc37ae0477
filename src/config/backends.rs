//! How a site with several origin servers spreads its requests: session
//! affinity, passive health (ejection) and the optional active health
//! check. Keys of `[[site]]`; they change with a reload, without a new
//! connection pool.

use std::time::Duration;

use serde::Deserialize;

use super::errors::Errors;

/// Consecutive failures that eject a backend.
pub const DEFAULT_EJECT_AFTER: u32 = 5;
/// How long a first ejection lasts; it doubles while the backend keeps
/// failing, up to [`MAX_EJECT_FOR`].
pub const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);
pub const MAX_EJECT_FOR: Duration = Duration::from_secs(300);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Which backend a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    /// A session stays on the backend that holds it (the default with
    /// more than one backend: portal sessions live in one server's memory).
    Session,
    /// Every request goes to the least busy backend.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BalanceConfig {
    pub affinity: Affinity,
    /// Consecutive connect failures, timeouts or 5xx that eject a backend.
    pub eject_after: u32,
    pub eject_for: Duration,
    pub health_check: Option<HealthCheck>,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            affinity: Affinity::Session,
            eject_after: DEFAULT_EJECT_AFTER,
            eject_for: DEFAULT_EJECT_FOR,
            health_check: None,
        }
    }
}

/// `health_check = { path = "/ping", interval = "5s", timeout = "2s", expect = 200 }`
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub expect: u16,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    expect: Option<u16>,
}

/// The balancing keys of one `[[site]]`, as written.
#[derive(Default)]
pub(super) struct RawBalance {
    pub affinity: Option<Affinity>,
    pub eject_after: Option<u32>,
    pub eject_for: Option<String>,
    pub health_check: Option<RawHealthCheck>,
}

impl RawBalance {
    pub(super) fn validate(self, at: &str, errors: &mut Errors) -> BalanceConfig {
        let eject_after = self.eject_after.unwrap_or(DEFAULT_EJECT_AFTER);
        if eject_after == 0 {
            errors.push(
                format!("{at}.eject_after"),
                "must be at least 1 (consecutive failures before a backend is ejected)",
            );
        }
        let eject_for = errors.duration(
            &format!("{at}.eject_for"),
            self.eject_for.as_deref(),
            DEFAULT_EJECT_FOR,
        );
        if eject_for.is_zero() || eject_for > MAX_EJECT_FOR {
            errors.push(
                format!("{at}.eject_for"),
                format!("must be between 1s and {}s", MAX_EJECT_FOR.as_secs()),
            );
        }
        BalanceConfig {
            affinity: self.affinity.unwrap_or(Affinity::Session),
            eject_after,
            eject_for,
            health_check: self
                .health_check
                .map(|h| h.validate(&format!("{at}.health_check"), errors)),
        }
    }
}

impl RawHealthCheck {
    fn validate(self, at: &str, errors: &mut Errors) -> HealthCheck {
        let path = self.path.unwrap_or_else(|| {
            errors.push(format!("{at}.path"), "missing (e.g. \"/ping\")");
            "/".to_owned()
        });
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            errors.push(
                format!("{at}.path"),
                format!("{path:?} is not a path (e.g. \"/ping\")"),
            );
        }
        let interval = errors.duration(
            &format!("{at}.interval"),
            self.interval.as_deref(),
            DEFAULT_HEALTH_INTERVAL,
        );
        let timeout = errors.duration(
            &format!("{at}.timeout"),
            self.timeout.as_deref(),
            DEFAULT_HEALTH_TIMEOUT,
        );
        if interval < Duration::from_millis(100) {
            errors.push(format!("{at}.interval"), "must be at least 100ms");
        }
        if timeout.is_zero() || timeout > interval {
            errors.push(
                format!("{at}.timeout"),
                "must be above zero and at most the interval",
            );
        }
        let expect = self.expect.unwrap_or(200);
        if !(100..=599).contains(&expect) {
            errors.push(
                format!("{at}.expect"),
                format!("{expect} is not an HTTP status"),
            );
        }
        HealthCheck {
            path,
            interval,
            timeout,
            expect,
        }
    }
}
