//! `[cluster]`: the shared store of several nodes. Read once at start:
//! every key of it needs a restart.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::errors::Errors;

/// A node whose heartbeat is older than this no longer counts among the
/// live nodes (which set each node's share of the budget while Redis is
/// away).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest view refresh: faster would load Redis for no visible gain.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(50);
/// Longest view refresh: a node's refresh is its heartbeat, and a node
/// silent for `NODE_TIMEOUT` drops out of the live count (which sets each
/// node's share of the budget while Redis is away).
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
const _: () = assert!(2 * MAX_REFRESH_INTERVAL.as_millis() < NODE_TIMEOUT.as_millis());
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Field names serialize as the file's keys (a reload's refusal names
/// them); the serialized form is compared, never shown: URLs may hold a
/// password.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterConfig {
    /// Where the shared store is. Never logged: a URL may hold a password.
    #[serde(rename = "redis_url")]
    pub redis: RedisTarget,
    /// What a node does while Redis is unreachable.
    pub on_store_failure: StoreFailure,
    /// How often each node refreshes its view of the shared lines.
    pub refresh_interval: Duration,
    /// This node's name in the cluster (default: host name and process id).
    pub node_id: Option<String>,
}

/// The shared store: `redis://` or `rediss://` (TLS) URLs; a password may
/// come from `DIGUE_REDIS_PASSWORD` instead of the URLs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum RedisTarget {
    /// One Redis (`redis_url`).
    Single(String),
    /// A Redis Cluster (`redis_cluster = true`): seed nodes, tried in
    /// order; the client learns the other nodes and the slots from them.
    Cluster(Vec<String>),
}

/// The policy while the shared store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreFailure {
    /// Passes keep working, tickets keep their place, newcomers enter at
    /// this node's share of the last known budget. The default.
    Static,
    /// Everybody gets in (re-creates 2020: only for portals that can take it).
    Open,
    /// Nobody new gets in until the store returns.
    Closed,
}

#[derive(Deserialize)]
pub(super) struct RawCluster {
    redis_url: Option<String>,
    redis_urls: Option<Vec<String>>,
    #[serde(default)]
    redis_cluster: bool,
    on_store_failure: Option<String>,
    refresh_interval: Option<String>,
    node_id: Option<String>,
}

impl RawCluster {
    pub(super) fn validate(self, errors: &mut Errors) -> Option<ClusterConfig> {
        let redis = redis_target(self.redis_url, self.redis_urls, self.redis_cluster, errors);
        let on_store_failure = match self.on_store_failure.as_deref() {
            None | Some("static") => StoreFailure::Static,
            Some("open") => StoreFailure::Open,
            Some("closed") => StoreFailure::Closed,
            Some(other) => {
                errors.push(
                    "cluster.on_store_failure",
                    format!("{other:?} is not one of static, open, closed"),
                );
                StoreFailure::Static
            }
        };
        let refresh_interval = errors.duration(
            "cluster.refresh_interval",
            self.refresh_interval.as_deref(),
            DEFAULT_REFRESH_INTERVAL,
        );
        if !(MIN_REFRESH_INTERVAL..=MAX_REFRESH_INTERVAL).contains(&refresh_interval) {
            errors.push(
                "cluster.refresh_interval",
                "must be between 50ms and 2s: each refresh is the node's heartbeat, and a node \
                 silent for 5s no longer counts",
            );
        }
        Some(ClusterConfig {
            redis: redis?,
            on_store_failure,
            refresh_interval,
            node_id: self.node_id,
        })
    }
}

/// `redis_url` (one URL) or `redis_urls` (seed nodes, Redis Cluster only).
/// Error messages never quote a URL: it may hold a password.
fn redis_target(
    url: Option<String>,
    urls: Option<Vec<String>>,
    cluster: bool,
    errors: &mut Errors,
) -> Option<RedisTarget> {
    let seeds: Vec<(String, String)> = match (url, urls) {
        (Some(_), Some(_)) => {
            errors.push(
                "cluster.redis_urls",
                "give either redis_url or redis_urls, not both",
            );
            return None;
        }
        (Some(url), None) => vec![("cluster.redis_url".to_owned(), url)],
        (None, Some(urls)) if urls.is_empty() => {
            errors.push("cluster.redis_urls", "empty: list at least one node");
            return None;
        }
        (None, Some(urls)) => urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| (format!("cluster.redis_urls[{i}]"), url))
            .collect(),
        (None, None) => {
            errors.push(
                "cluster.redis_url",
                "missing (e.g. \"redis://10.0.0.20:6379\")",
            );
            return None;
        }
    };
    let before = errors.0.len();
    if !cluster && seeds.len() > 1 {
        errors.push(
            "cluster.redis_urls",
            "several URLs are the seed nodes of a Redis Cluster: set redis_cluster = true \
             (a single Redis has one URL, redis_url)",
        );
    }
    for (path, url) in &seeds {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            errors.push(path.as_str(), "must start with redis:// or rediss://");
            continue;
        }
        match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
            Err(_) => errors.push(path.as_str(), "is not a valid Redis URL"),
            Ok(info) if cluster && info.redis_settings().db() != 0 => errors.push(
                path.as_str(),
                "a Redis Cluster has only database 0: drop the /N at the end of the URL",
            ),
            Ok(_) => {}
        }
    }
    let tls = |url: &str| url.starts_with("rediss://");
    if seeds.iter().any(|(_, url)| tls(url) != tls(&seeds[0].1)) {
        errors.push(
            "cluster.redis_urls",
            "mixes redis:// and rediss://: the nodes of one Redis Cluster share one TLS mode",
        );
    }
    if errors.0.len() > before {
        return None;
    }
    let mut urls = seeds.into_iter().map(|(_, url)| url);
    if cluster {
        Some(RedisTarget::Cluster(urls.collect()))
    } else {
        urls.next().map(RedisTarget::Single)
    }
}
