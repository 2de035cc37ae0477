//! `[cache]` (sizing, read once at start, and the object limit) and each
//! site's `[site.cache]` with its forced rules.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::errors::Errors;

/// Bytes of stored responses when `cache.max_size` is not set.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest single response worth storing when `cache.max_object_size` is not set.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 8 * 1024 * 1024;
/// How long an uncacheable key skips the coalescer (Varnish's hit-for-miss).
pub const DEFAULT_HIT_FOR_MISS: Duration = Duration::from_secs(120);
/// Requests that may wait on one in-flight fetch; the excess get the busy page.
pub const DEFAULT_MAX_WAITERS_PER_KEY: usize = 10_000;
pub const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(30);
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(3600);
/// Longest a stored 4xx stays fresh, whatever the origin or a rule says.
pub const DEFAULT_MAX_ERROR_TTL: Duration = Duration::from_secs(5);

/// The `[cache]` keys that size the store and the coalescer: read once at
/// start. Field names serialize as the file's keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheStart {
    /// Bytes of stored responses, headers included.
    pub max_size: u64,
    pub hit_for_miss: Duration,
    pub max_waiters_per_key: usize,
}

/// The `[cache]` keys a reload applies.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_object_size: u64,
}

#[derive(Debug, Clone)]
pub struct SiteCacheConfig {
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// Remove `CDN-Cache-Control` from responses sent downstream: no cache
    /// between digue and the browsers is meant by it (RFC 9213 §3.1).
    pub strip_cdn_cache_control: bool,
    /// Longest freshness of a stored error (`4xx`): a surge shield must not
    /// pin an error page once the portal is fixed.
    pub max_error_ttl: Duration,
    pub rules: Vec<CacheRule>,
}

/// A forced policy for paths under `prefix`, for origins that send no or bad headers.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRule {
    pub prefix: String,
    pub action: RuleAction,
    /// Session cookies don't make these requests per-user (static assets).
    pub shared: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Follow the origin's headers.
    Headers,
    /// Treat storable responses as fresh for this long, whatever the origin says.
    ForceTtl(Duration),
    /// Never cache.
    Bypass,
}

#[derive(Deserialize, Default)]
pub(super) struct RawCache {
    max_size: Option<String>,
    max_object_size: Option<String>,
    hit_for_miss: Option<String>,
    max_waiters_per_key: Option<u64>,
}

#[derive(Deserialize, Default)]
pub(super) struct RawSiteCache {
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
    #[serde(default)]
    strip_cdn_cache_control: bool,
    max_error_ttl: Option<String>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    prefix: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    bypass: bool,
    #[serde(default)]
    shared: bool,
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
}

impl RawCache {
    pub(super) fn validate(self, errors: &mut Errors) -> (CacheStart, CacheConfig) {
        let max_size = errors.size(
            "cache.max_size",
            self.max_size.as_deref(),
            DEFAULT_CACHE_BYTES,
        );
        let max_object_size = errors.size(
            "cache.max_object_size",
            self.max_object_size.as_deref(),
            DEFAULT_MAX_OBJECT_BYTES.min(max_size / 4).max(1),
        );
        if max_object_size > max_size {
            errors.push(
                "cache.max_object_size",
                "is larger than cache.max_size: such objects could never be stored",
            );
        }
        let start = CacheStart {
            max_size,
            hit_for_miss: errors.duration(
                "cache.hit_for_miss",
                self.hit_for_miss.as_deref(),
                DEFAULT_HIT_FOR_MISS,
            ),
            max_waiters_per_key: errors.positive(
                "cache.max_waiters_per_key",
                self.max_waiters_per_key,
                DEFAULT_MAX_WAITERS_PER_KEY,
            ),
        };
        (start, CacheConfig { max_object_size })
    }
}

impl RawSiteCache {
    pub(super) fn validate(self, at: &str, errors: &mut Errors) -> SiteCacheConfig {
        let rules = self
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.validate(&format!("{at}.rule[{i}]"), errors))
            .collect();
        SiteCacheConfig {
            stale_while_revalidate: errors.duration(
                &format!("{at}.stale_while_revalidate"),
                self.stale_while_revalidate.as_deref(),
                DEFAULT_STALE_WHILE_REVALIDATE,
            ),
            stale_if_error: errors.duration(
                &format!("{at}.stale_if_error"),
                self.stale_if_error.as_deref(),
                DEFAULT_STALE_IF_ERROR,
            ),
            strip_cdn_cache_control: self.strip_cdn_cache_control,
            max_error_ttl: errors.duration(
                &format!("{at}.max_error_ttl"),
                self.max_error_ttl.as_deref(),
                DEFAULT_MAX_ERROR_TTL,
            ),
            rules,
        }
    }
}

impl RawRule {
    pub(super) fn validate(self, at: &str, errors: &mut Errors) -> CacheRule {
        let prefix = match self.prefix {
            Some(p) if p.starts_with('/') => p,
            Some(p) => {
                errors.push(format!("{at}.prefix"), format!("{p:?} must start with '/'"));
                p
            }
            None => {
                errors.push(format!("{at}.prefix"), "missing (e.g. \"/static/\")");
                String::from("/")
            }
        };
        let ttl = errors.opt_duration(&format!("{at}.ttl"), self.ttl.as_deref());
        let action = match (ttl, self.bypass) {
            (Some(_), true) => {
                errors.push(
                    format!("{at}.bypass"),
                    "a rule cannot both force a ttl and bypass",
                );
                RuleAction::Bypass
            }
            (Some(ttl), false) => RuleAction::ForceTtl(ttl),
            (None, true) => RuleAction::Bypass,
            (None, false) => RuleAction::Headers,
        };
        if self.shared && self.bypass {
            errors.push(format!("{at}.shared"), "a bypass rule shares nothing");
        }
        CacheRule {
            prefix,
            action,
            shared: self.shared,
            stale_while_revalidate: errors.opt_duration(
                &format!("{at}.stale_while_revalidate"),
                self.stale_while_revalidate.as_deref(),
            ),
            stale_if_error: errors.opt_duration(
                &format!("{at}.stale_if_error"),
                self.stale_if_error.as_deref(),
            ),
        }
    }
}
