//! Configuration: a raw serde layer in human units, validated into typed
//! values. A leaf of the crate: parsing and validation only, no I/O beyond
//! reading the file itself. Checks that need other files (certificates,
//! the secret, page templates) are each module's `preflight`, run by
//! [`crate::preflight`] with the same key paths.
//!
//! Validation collects every problem with its key path (`site[0].cache.rule[1].ttl`)
//! so an operator fixes the file in one pass. Unknown keys are errors too: a typo
//! in a limit must never silently fall back to a default during a surge.
//!
//! The typed config is split by lifetime: [`RestartOnly`] (read once at
//! start; a reload that changes it is refused), [`OriginConfig`] (a site
//! keeps its connection pool while it is equal), [`LiveSettings`] (what
//! the admin API, the cluster and reloads change at run time), and the
//! rest, which a reload applies.
//!
//! - `errors`: key-path errors and their collector.
//! - `server`, `cache`, `site`, `admission`, `cluster`: one file per section;
//!   `backends`: a site's balancing keys (affinity, health); `autopilot`:
//!   its targets and bounds; `tunnels`: its WebSocket and `Upgrade` keys;
//!   `client_limit`: its per-client budget of origin-bound requests.
//! - `live`: the live settings, their patches and their ranges.
//! - `restart`: the read-once keys and how a reload finds them changed.

mod admission;
mod autopilot;
mod backends;
mod cache;
mod cidr;
mod client_limit;
mod cluster;
mod errors;
mod events;
mod live;
mod restart;
mod server;
mod site;
mod tunnels;

use std::path::Path;

use serde::Deserialize;

pub use admission::{
    AdmissionConfig, AdmissionStart, DEFAULT_CLAIM_WINDOW, DEFAULT_SESSION_DURATION,
    DEFAULT_TICKETS_PER_NETWORK_PER_MINUTE, MIN_CLAIM_WINDOW,
};
pub use autopilot::{
    AutopilotConfig, AutopilotPatch, DEFAULT_AUTOPILOT_INTERVAL, DEFAULT_AUTOPILOT_RATE_INTERVAL,
    DEFAULT_MAX_ERROR_RATE, DEFAULT_MIN_ORIGIN_CONCURRENCY, DEFAULT_TARGET_LATENCY,
};
pub use backends::{
    Affinity, BalanceConfig, DEFAULT_EJECT_AFTER, DEFAULT_EJECT_FOR, HealthCheck, MAX_EJECT_FOR,
};
pub use cache::{
    CacheConfig, CacheRule, CacheStart, DEFAULT_CACHE_BYTES, DEFAULT_HIT_FOR_MISS,
    DEFAULT_MAX_OBJECT_BYTES, DEFAULT_MAX_WAITERS_PER_KEY, DEFAULT_STALE_IF_ERROR,
    DEFAULT_STALE_WHILE_REVALIDATE, RuleAction, SiteCacheConfig,
};
pub use cidr::Cidr;
pub use client_limit::{ClientKey, ClientLimitConfig, DEFAULT_CLIENT_LIMIT_MAX_KEYS};
pub use cluster::{
    ClusterConfig, DEFAULT_REFRESH_INTERVAL, NODE_TIMEOUT, RedisTarget, StoreFailure,
};
pub use errors::{ConfigError, ConfigErrors, key_path};
pub use events::{DEFAULT_PREQUEUE, EventConfig, EventSpec, MAX_EVENTS, parse_rfc3339};
pub use live::{
    AdmissionMode, AdmissionPatch, AdmissionSettings, LiveError, LiveSettings, OriginPatch,
    default_burst,
};
pub use restart::RestartOnly;
pub use server::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_ROUTING_HEADERS, DEFAULT_SHUTDOWN_GRACE, ServerConfig, ServerStart, SniCertificate,
    TlsSettings,
};
pub use site::{
    ClientCert, DEFAULT_ORIGIN_CONCURRENCY, DEFAULT_ORIGIN_CONNECT_TIMEOUT,
    DEFAULT_ORIGIN_QUEUE_TIMEOUT, DEFAULT_ORIGIN_TIMEOUT, DEFAULT_SESSION_COOKIES, HostPattern,
    OriginConfig, OriginTls, SiteConfig,
};
pub use tunnels::{DEFAULT_MAX_WEBSOCKETS, DEFAULT_WEBSOCKET_IDLE_TIMEOUT, TunnelConfig};

use errors::{Errors, single};

/// A validated configuration. Built only by [`Config::parse`], so every value is usable.
#[derive(Debug, Clone)]
pub struct Config {
    /// What only a restart changes.
    pub restart: RestartOnly,
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub sites: Vec<SiteConfig>,
}

impl Config {
    /// Reads and validates a config file (without its preflight).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text, reporting every problem at once.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Errors::default();
        let mut unknown = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| single(e.to_string()))?;
        let raw: RawConfig = serde_ignored::deserialize(de, |path| {
            unknown.push(key_path(&path));
        })
        .map_err(|e| single(e.to_string()))?;
        for key in unknown {
            errors.push(key, "unknown key");
        }
        let config = raw.validate(&mut errors);
        if errors.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors.0))
        }
    }

    /// The shared store, in cluster mode.
    pub fn cluster(&self) -> Option<&ClusterConfig> {
        self.restart.cluster.as_ref()
    }

    /// Finds the site answering `host` (lower-case, without port): the first exact
    /// match wins over any `*` site, whatever their order in the file.
    pub fn site_for_host(&self, host: &str) -> Option<usize> {
        let exact = self.sites.iter().position(|s| {
            s.hosts
                .iter()
                .any(|h| matches!(h, HostPattern::Exact(_)) && h.matches(host))
        });
        exact.or_else(|| {
            self.sites
                .iter()
                .position(|s| s.hosts.contains(&HostPattern::Any))
        })
    }
}

#[derive(Deserialize)]
struct RawConfig {
    server: Option<server::RawServer>,
    #[serde(default)]
    cache: cache::RawCache,
    #[serde(default)]
    site: Vec<site::RawSite>,
    cluster: Option<cluster::RawCluster>,
}

impl RawConfig {
    fn validate(self, errors: &mut Errors) -> Config {
        let (server_start, server) = match self.server {
            Some(s) => s.validate(errors),
            None => {
                errors.push("server", "missing section (it needs at least `listen`)");
                server::RawServer::fallback()
            }
        };
        let (cache_start, cache) = self.cache.validate(errors);
        if self.site.is_empty() {
            errors.push("site", "no [[site]] configured: digue would answer nothing");
        }
        let sites: Vec<SiteConfig> = self
            .site
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.validate(&format!("site[{i}]"), errors))
            .collect();
        site::check_unique_sites(&sites, errors);
        let cluster = self.cluster.and_then(|c| c.validate(errors));
        Config {
            restart: RestartOnly {
                server: server_start,
                cache: cache_start,
                cluster,
            },
            server,
            cache,
            sites,
        }
    }
}

#[cfg(test)]
mod tests;
