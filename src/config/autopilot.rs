//! `[site.autopilot]`: the targets and bounds within which digue finds the
//! pace the portal can take by itself (see `crate::autopilot`). Off unless
//! `enabled = true`; the admin API can turn it on and move its targets and
//! bounds live.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::errors::Errors;

pub const DEFAULT_TARGET_LATENCY: Duration = Duration::from_secs(1);
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.01;
pub const DEFAULT_MIN_ORIGIN_CONCURRENCY: usize = 2;
/// The concurrency loop's window.
pub const DEFAULT_AUTOPILOT_INTERVAL: Duration = Duration::from_secs(1);
/// The admission loop's window: long enough for admitted pupils' first
/// pages to reach the origin.
pub const DEFAULT_AUTOPILOT_RATE_INTERVAL: Duration = Duration::from_secs(5);
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The autopilot of one site. Serialized as `GET /admin/sites` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AutopilotConfig {
    pub enabled: bool,
    /// The origin response time (to headers) users still find acceptable.
    #[serde(serialize_with = "seconds")]
    pub target_latency: Duration,
    /// Share of origin requests that may fail (timeouts, connect, 5xx).
    pub max_error_rate: f64,
    /// The admission rate's bounds (a site with a waiting room).
    pub min_new_users_per_minute: u32,
    pub max_new_users_per_minute: u32,
    /// The concurrency limit's floor; its ceiling is `origin_concurrency`.
    pub min_origin_concurrency: usize,
    #[serde(serialize_with = "seconds")]
    pub interval: Duration,
    #[serde(serialize_with = "seconds")]
    pub rate_interval: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAutopilot {
    #[serde(default)]
    enabled: bool,
    target_latency: Option<String>,
    max_error_rate: Option<f64>,
    min_new_users_per_minute: Option<u32>,
    max_new_users_per_minute: Option<u32>,
    min_origin_concurrency: Option<usize>,
    interval: Option<String>,
    rate_interval: Option<String>,
}

/// A live change of the autopilot (`PATCH /admin/sites/{name}/autopilot`):
/// each key given replaces the running value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutopilotPatch {
    pub enabled: Option<bool>,
    /// Seconds.
    pub target_latency: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub min_new_users_per_minute: Option<u32>,
    pub max_new_users_per_minute: Option<u32>,
    pub min_origin_concurrency: Option<usize>,
}

impl RawAutopilot {
    /// `rate`: the file's `new_users_per_minute` (the default ceiling of
    /// the admission rate), `None` without a waiting room; `concurrency`:
    /// the file's `origin_concurrency`, the concurrency limit's ceiling.
    pub(super) fn validate(
        self,
        at: &str,
        rate: Option<u32>,
        concurrency: usize,
        errors: &mut Errors,
    ) -> AutopilotConfig {
        if rate.is_none()
            && (self.min_new_users_per_minute.is_some() || self.max_new_users_per_minute.is_some())
        {
            errors.push(
                format!("{at}.max_new_users_per_minute"),
                "only for a site with a [site.admission] waiting room",
            );
        }
        let rate = rate.unwrap_or(0);
        let config = AutopilotConfig {
            enabled: self.enabled,
            target_latency: errors.duration(
                &format!("{at}.target_latency"),
                self.target_latency.as_deref(),
                DEFAULT_TARGET_LATENCY,
            ),
            max_error_rate: self.max_error_rate.unwrap_or(DEFAULT_MAX_ERROR_RATE),
            min_new_users_per_minute: self
                .min_new_users_per_minute
                .unwrap_or((rate / 20).max(1).min(rate)),
            max_new_users_per_minute: self.max_new_users_per_minute.unwrap_or(rate),
            min_origin_concurrency: self
                .min_origin_concurrency
                .unwrap_or(DEFAULT_MIN_ORIGIN_CONCURRENCY.min(concurrency)),
            interval: errors.duration(
                &format!("{at}.interval"),
                self.interval.as_deref(),
                DEFAULT_AUTOPILOT_INTERVAL,
            ),
            rate_interval: errors.duration(
                &format!("{at}.rate_interval"),
                self.rate_interval.as_deref(),
                DEFAULT_AUTOPILOT_RATE_INTERVAL,
            ),
        };
        for problem in config.problems(concurrency) {
            errors.push(format!("{at}.{}", problem.0), problem.1);
        }
        config
    }
}

impl AutopilotConfig {
    /// What is out of range, by key: the one check for the file and for a
    /// PATCH. `concurrency`: the site's `origin_concurrency` (the ceiling).
    pub fn problems(&self, concurrency: usize) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.target_latency < Duration::from_millis(10)
            || self.target_latency > Duration::from_secs(60)
        {
            out.push(("target_latency", "must be between 10ms and 60s".to_owned()));
        }
        if !(self.max_error_rate > 0.0 && self.max_error_rate < 1.0) {
            out.push((
                "max_error_rate",
                format!(
                    "{} must be a fraction above 0 and below 1 (0.01 is 1 %)",
                    self.max_error_rate
                ),
            ));
        }
        if self.min_new_users_per_minute > self.max_new_users_per_minute {
            out.push((
                "min_new_users_per_minute",
                format!(
                    "{} is above max_new_users_per_minute ({})",
                    self.min_new_users_per_minute, self.max_new_users_per_minute
                ),
            ));
        }
        if self.min_origin_concurrency == 0 || self.min_origin_concurrency > concurrency {
            out.push((
                "min_origin_concurrency",
                format!(
                    "{} must be between 1 and origin_concurrency ({concurrency})",
                    self.min_origin_concurrency
                ),
            ));
        }
        if self.interval < MIN_INTERVAL {
            out.push(("interval", "must be at least 100ms".to_owned()));
        }
        if self.rate_interval < self.interval {
            out.push(("rate_interval", "must be at least the interval".to_owned()));
        }
        out
    }

    /// This config with `patch` applied, or what is wrong with the result.
    pub fn patched(
        &self,
        patch: &AutopilotPatch,
        concurrency: usize,
    ) -> Result<AutopilotConfig, String> {
        let mut new = *self;
        if let Some(v) = patch.enabled {
            new.enabled = v;
        }
        if let Some(secs) = patch.target_latency {
            if !(secs.is_finite() && secs > 0.0) {
                return Err("target_latency: a number of seconds above 0".to_owned());
            }
            new.target_latency = Duration::from_secs_f64(secs.min(3600.0));
        }
        if let Some(v) = patch.max_error_rate {
            new.max_error_rate = v;
        }
        if let Some(v) = patch.min_new_users_per_minute {
            new.min_new_users_per_minute = v;
        }
        if let Some(v) = patch.max_new_users_per_minute {
            new.max_new_users_per_minute = v;
        }
        if let Some(v) = patch.min_origin_concurrency {
            new.min_origin_concurrency = v;
        }
        match new.problems(concurrency).into_iter().next() {
            Some((key, why)) => Err(format!("{key}: {why}")),
            None => Ok(new),
        }
    }
}
