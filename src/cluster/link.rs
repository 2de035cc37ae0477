//! This node's link to the shared store: connections (one Redis or a
//! Redis Cluster, behind one type), the event channel and what is kept in
//! Redis for nodes that reconnect. Knows Redis, not the app.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use serde::{Deserialize, Serialize};

use super::fence::Fences;
use crate::autopilot::Observation;
use crate::config::{ClusterConfig, EventSpec, LiveSettings, RedisTarget};
use crate::origin::Mode;

pub(super) const EVENTS: &str = "digue:events";
const SETTINGS: &str = "digue:settings";
/// Backend modes set through the admin API, by `site backend`.
const BACKENDS: &str = "digue:backends";
/// Events added through the admin API, by "site name": a node that starts
/// later learns them (and can place their pre-queue tickets).
const SCHEDULE: &str = "digue:events";
const PURGES: &str = "digue:purges";
/// Each node's latest autopilot observation of a site (`…:{site}`, a hash
/// by node), read by the lease holder.
const PILOT_OBSERVATIONS: &str = "digue:autopilot:obs:";
/// Takes the autopilot's lease on a site (KEYS[1], holding the node's name)
/// when free, renews it when held by this node (ARGV[1]), for ARGV[2] ms.
/// Returns the lease's fence while this node holds it; when another does,
/// the current fence, negated (0 when there is none yet): each take counts
/// one more in KEYS[2], which never expires. The fence is never below
/// ARGV[3], the highest this node has applied: a Redis rolled back to a
/// snapshot (or a new, empty one, whose fence starts at Redis's clock in
/// ms) must not hand out a fence the nodes would refuse.
const LEASE_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return -(tonumber(redis.call('GET', KEYS[2])) or 0)
end
local fence = tonumber(redis.call('GET', KEYS[2]))
local floor = tonumber(ARGV[3])
if not fence then
  local now = redis.call('TIME')
  fence = math.max(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), floor + 1)
elseif not holder or fence < floor then
  fence = math.max(fence, floor) + 1
end
redis.call('SET', KEYS[2], string.format('%d', fence))
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return fence";
/// Stores a lease holder's settings of site ARGV[1] (ARGV[2], JSON) in
/// KEYS[1] unless a higher fence than ARGV[3] already stored its own; 0
/// when refused. The fence is kept beside them, in field `SITE#fence`.
const FENCED_SETTINGS_SCRIPT: &str = r"
local field = ARGV[1] .. '#fence'
local stored = tonumber(redis.call('HGET', KEYS[1], field))
if stored and tonumber(ARGV[3]) < stored then
  return 0
end
redis.call('HSET', KEYS[1], field, ARGV[3], ARGV[1], ARGV[2])
return 1";
/// Ends the hash field that keeps a site's settings fence.
const FENCE_FIELD_SUFFIX: &str = "#fence";

/// The keys of a site's autopilot lease and of its fence, in the site's
/// hash slot (the lease script touches both).
pub fn pilot_lease_keys(site: &str) -> [String; 2] {
    [
        format!("{{digue:{site}}}:autopilot:lease"),
        format!("{{digue:{site}}}:autopilot:fence"),
    ]
}

/// Purges kept for nodes that reconnect.
const PURGES_KEPT: isize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Environment variable for the Redis password, when not in the URL.
pub const PASSWORD_ENV: &str = "DIGUE_REDIS_PASSWORD";

/// What nodes tell each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    Purge {
        site: String,
        path: Option<String>,
        prefix: Option<String>,
        hard: bool,
        /// Sent after an unsafe method (RFC 9111 §4.4): the copies wait for
        /// the origin instead of being served stale while refreshed.
        #[serde(default)]
        invalidate: bool,
        from: String,
        /// Unix milliseconds, to replay purges missed while disconnected.
        at: u64,
    },
    Settings {
        site: String,
        settings: LiveSettings,
        from: String,
        /// The autopilot lease's fence, when its holder set the rate (not
        /// for an operator's change): see `fence`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fence: Option<u64>,
    },
    /// A backend set active, draining or down.
    Backend {
        site: String,
        backend: String,
        mode: Mode,
        from: String,
    },
    /// An event added to a site's schedule through the admin API.
    EventAdded {
        site: String,
        spec: EventSpec,
        from: String,
    },
    /// An event cancelled through the admin API.
    EventCancelled {
        site: String,
        name: String,
        from: String,
    },
}

/// A connection to the shared store, whichever its kind; cheap to clone
/// (both kinds multiplex over shared sockets).
#[derive(Clone)]
pub enum Conn {
    /// One Redis; the manager reconnects by itself.
    Single(ConnectionManager),
    /// A Redis Cluster; follows redirects and node failures by itself.
    Sharded(ClusterConnection),
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Sharded(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sharded(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Sharded(c) => c.get_db(),
        }
    }
}

/// This node's link to the shared store.
pub struct Cluster {
    /// The client of a Redis Cluster, when the store is one; otherwise
    /// commands go to the one Redis, `nodes[0]`.
    sharded: Option<ClusterClient>,
    /// Where to subscribe to events, tried in order: the one Redis, or each
    /// seed node of a Redis Cluster.
    nodes: Vec<redis::Client>,
    /// `None` until connected; the connection reconnects by itself after
    /// that. Guards a clone-out only, never held across `.await`.
    conn: Mutex<Option<Conn>>,
    pub node: String,
    pub config: ClusterConfig,
    up: AtomicBool,
    /// Redis round-trips made, for the README's per-user cost figures.
    pub calls: prometheus::IntCounter,
    /// Unix ms of the newest purge applied, to replay after a reconnect.
    pub(super) last_purge: AtomicU64,
    /// The autopilot fences applied, by site.
    pub(super) fences: Fences,
}

impl Cluster {
    /// `calls` counts this node's round-trips to Redis (a metric handle).
    pub fn new(
        config: &ClusterConfig,
        calls: prometheus::IntCounter,
    ) -> Result<Arc<Cluster>, String> {
        let (sharded, nodes) = match &config.redis {
            RedisTarget::Single(url) => {
                let info = connection_info(url, "cluster.redis_url")?;
                let client = redis::Client::open(info)
                    .map_err(|_| "cluster.redis_url is not a valid Redis URL".to_owned())?;
                (None, vec![client])
            }
            RedisTarget::Cluster(urls) => {
                let infos = urls
                    .iter()
                    .enumerate()
                    .map(|(i, url)| connection_info(url, &format!("cluster.redis_urls[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                let nodes = infos
                    .iter()
                    .map(|info| redis::Client::open(info.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| "cluster.redis_urls: not valid Redis URLs".to_owned())?;
                // The error texts are fixed (different passwords, users or
                // TLS modes among the seeds): no URL, no password.
                let client = ClusterClientBuilder::new(infos)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(CONNECT_TIMEOUT)
                    .build()
                    .map_err(|e| format!("cluster.redis_urls: {e}"))?;
                (Some(client), nodes)
            }
        };
        let node = config.node_id.clone().unwrap_or_else(default_node_id);
        Ok(Arc::new(Cluster {
            sharded,
            nodes,
            conn: Mutex::new(None),
            node,
            config: config.clone(),
            up: AtomicBool::new(false),
            calls,
            last_purge: AtomicU64::new(crate::clock::unix_secs(crate::clock::wall()) * 1000),
            fences: Fences::default(),
        }))
    }

    /// A connection, if one was ever made (it reconnects itself).
    pub fn conn(&self) -> Option<Conn> {
        self.calls.inc();
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the last exchange with Redis worked.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("shared store reachable: cluster mode");
            } else {
                tracing::warn!(policy = ?self.config.on_store_failure, "shared store unreachable: failing as configured");
            }
        }
    }

    pub(super) async fn connect(&self) -> bool {
        if self
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return true;
        }
        let made = tokio::time::timeout(CONNECT_TIMEOUT, async {
            match (&self.sharded, self.nodes.first()) {
                (Some(sharded), _) => sharded.get_async_connection().await.map(Conn::Sharded),
                (None, Some(one)) => one.get_connection_manager().await.map(Conn::Single),
                (None, None) => Err((redis::ErrorKind::Io, "no Redis configured").into()),
            }
        })
        .await;
        match made {
            Ok(Ok(conn)) => {
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
                true
            }
            _ => {
                self.set_up(false);
                false
            }
        }
    }

    /// Tells the other nodes (and stores what a restarting node needs).
    pub async fn publish(&self, event: &Event) {
        let Some(mut conn) = self.conn() else {
            tracing::warn!("shared store unreachable: this change stays on this node");
            return;
        };
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        // What a restarting node needs first, then the news: two
        // round-trips, as the key and the channel may live on different
        // nodes of a Redis Cluster.
        let mut store = redis::pipe();
        match event {
            Event::Settings {
                site,
                settings,
                fence: Some(fence),
                ..
            } => {
                let Ok(s) = serde_json::to_string(settings) else {
                    return;
                };
                if !self.store_fenced(&mut conn, site, &s, *fence).await {
                    return;
                }
            }
            Event::Settings { site, settings, .. } => {
                if let Ok(s) = serde_json::to_string(settings) {
                    store.hset(SETTINGS, site, s).ignore();
                }
            }
            Event::Backend { site, backend, .. } => {
                store
                    .hset(BACKENDS, format!("{site} {backend}"), &json)
                    .ignore();
            }
            Event::EventAdded { site, spec, .. } => {
                store
                    .hset(SCHEDULE, format!("{site} {}", spec.name), &json)
                    .ignore();
            }
            Event::EventCancelled { site, name, .. } => {
                store.hdel(SCHEDULE, format!("{site} {name}")).ignore();
            }
            Event::Purge { .. } => {
                store.lpush(PURGES, &json).ignore();
                store.ltrim(PURGES, 0, PURGES_KEPT - 1).ignore();
            }
        }
        let mut news = redis::pipe();
        news.publish(EVENTS, &json).ignore();
        self.calls.inc();
        let sent = tokio::time::timeout(CONNECT_TIMEOUT, async {
            // Empty when a fenced rate was stored already, by its script.
            if !store.is_empty() {
                store.query_async::<()>(&mut conn).await?;
            }
            news.query_async::<()>(&mut conn).await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!("could not publish a change to the other nodes");
        }
    }

    /// Stores a lease holder's settings unless a later holder's are there:
    /// false when they are not stored (refused, or Redis did not answer),
    /// and then nothing is published either.
    async fn store_fenced(&self, conn: &mut Conn, site: &str, json: &str, fence: u64) -> bool {
        let script = redis::Script::new(FENCED_SETTINGS_SCRIPT);
        let mut invocation = script.prepare_invoke();
        invocation.key(SETTINGS).arg(site).arg(json).arg(fence);
        self.calls.inc();
        let stored =
            tokio::time::timeout(CONNECT_TIMEOUT, invocation.invoke_async::<i64>(conn)).await;
        match stored {
            Ok(Ok(1)) => true,
            Ok(Ok(_)) => {
                tracing::warn!(
                    site,
                    fence,
                    "autopilot rate not sent: its lease has passed to another node"
                );
                false
            }
            _ => {
                tracing::warn!(
                    site,
                    "could not publish the autopilot's rate to the other nodes"
                );
                false
            }
        }
    }

    /// A subscription to the events on the first node that answers: PUBLISH
    /// reaches every node of a Redis Cluster, so any one will do.
    pub(super) async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut last = redis::RedisError::from((redis::ErrorKind::Io, "no node to subscribe to"));
        for client in &self.nodes {
            let made = tokio::time::timeout(CONNECT_TIMEOUT, async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(EVENTS).await?;
                Ok::<_, redis::RedisError>(pubsub)
            })
            .await;
            match made {
                Ok(Ok(pubsub)) => return Ok(pubsub),
                Ok(Err(e)) => last = e,
                Err(_) => last = (redis::ErrorKind::Io, "connect timeout").into(),
            }
        }
        Err(last)
    }

    /// Whether the store answers a PING within the connect timeout.
    pub(super) async fn ping(&self) -> bool {
        let Some(mut conn) = self.conn() else {
            return false;
        };
        let ping: Result<Result<String, _>, _> =
            tokio::time::timeout(CONNECT_TIMEOUT, redis::cmd("PING").query_async(&mut conn)).await;
        matches!(ping, Ok(Ok(_)))
    }

    /// The live settings stored in Redis, by site.
    pub(super) async fn stored_settings(&self) -> Vec<(String, LiveSettings)> {
        let Some(mut conn) = self.conn() else {
            return Vec::new();
        };
        let stored: redis::RedisResult<Vec<(String, String)>> = conn.hgetall(SETTINGS).await;
        stored
            .unwrap_or_default()
            .into_iter()
            .filter(|(field, _)| !field.ends_with(FENCE_FIELD_SUFFIX))
            .filter_map(|(site, json)| Some((site, serde_json::from_str(&json).ok()?)))
            .collect()
    }

    /// Takes or renews this node's lease on `site`'s autopilot rate for
    /// `ttl`: its fence while it holds it, to send with the rates it
    /// decides. Unreachable Redis reads as not holding it, so no node moves
    /// the rate (each keeps the last one).
    pub async fn pilot_lease(&self, site: &str, ttl: Duration) -> Option<u64> {
        let mut conn = self.conn()?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let script = redis::Script::new(LEASE_SCRIPT);
        let mut invocation = script.prepare_invoke();
        let [lease, fence] = pilot_lease_keys(site);
        invocation
            .key(lease)
            .key(fence)
            .arg(&self.node)
            .arg(ms)
            .arg(self.fences.highest(site));
        let held =
            tokio::time::timeout(CONNECT_TIMEOUT, invocation.invoke_async::<i64>(&mut conn)).await;
        let answer = held.ok()?.ok()?;
        match u64::try_from(answer) {
            // This node's own rates go out under it: a later holder's
            // supersedes them everywhere, here too.
            Ok(fence) if fence > 0 => self.fences.admits(site, fence).then_some(fence),
            // Another node holds it: its fence is the one to follow, even
            // when lower than one applied before (a Redis restored from a
            // snapshot), or this node would refuse its rates for good.
            _ => {
                self.fences.follow(site, answer.unsigned_abs());
                None
            }
        }
    }

    /// Publishes this node's observation of `site`'s interval; the hash
    /// lapses `ttl` after the last node wrote to it.
    pub async fn publish_observation(&self, site: &str, seen: &Observation, ttl: Duration) {
        let (Some(mut conn), Ok(json)) = (self.conn(), serde_json::to_string(seen)) else {
            return;
        };
        let key = format!("{PILOT_OBSERVATIONS}{site}");
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.hset(&key, &self.node, json).ignore();
        pipe.pexpire(&key, ms).ignore();
        let sent = tokio::time::timeout(CONNECT_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!(site, "could not publish the autopilot's observation");
        }
    }

    /// The other nodes' latest observations of `site`; unreadable ones are
    /// left out, an unreachable Redis gives none.
    pub async fn observations(&self, site: &str) -> Vec<(String, Observation)> {
        let Some(mut conn) = self.conn() else {
            return Vec::new();
        };
        let key = format!("{PILOT_OBSERVATIONS}{site}");
        let read = tokio::time::timeout(
            CONNECT_TIMEOUT,
            conn.hgetall::<_, Vec<(String, String)>>(&key),
        )
        .await;
        let Ok(Ok(all)) = read else {
            return Vec::new();
        };
        all.into_iter()
            .filter(|(node, _)| *node != self.node)
            .filter_map(|(node, json)| Some((node, serde_json::from_str(&json).ok()?)))
            .collect()
    }

    /// The backend modes stored in Redis, as the events that set them.
    pub(super) async fn stored_backend_modes(&self) -> Vec<Event> {
        self.stored(BACKENDS).await
    }

    /// The events added through the admin API and not cancelled.
    pub(super) async fn stored_events(&self) -> Vec<Event> {
        self.stored(SCHEDULE).await
    }

    /// The cluster events stored in the hash `key`.
    async fn stored(&self, key: &str) -> Vec<Event> {
        let Some(mut conn) = self.conn() else {
            return Vec::new();
        };
        let stored: redis::RedisResult<Vec<(String, String)>> = conn.hgetall(key).await;
        stored
            .unwrap_or_default()
            .iter()
            .filter_map(|(_, json)| serde_json::from_str(json).ok())
            .collect()
    }

    /// The purges published after `since` (Unix ms), oldest first.
    pub(super) async fn purges_since(&self, since: u64) -> Vec<Event> {
        let Some(mut conn) = self.conn() else {
            return Vec::new();
        };
        let purges: redis::RedisResult<Vec<String>> = conn.lrange(PURGES, 0, PURGES_KEPT - 1).await;
        let mut missed: Vec<Event> = purges
            .unwrap_or_default()
            .iter()
            .filter_map(|j| serde_json::from_str(j).ok())
            .filter(|e| matches!(e, Event::Purge { at, .. } if *at > since))
            .collect();
        missed.reverse();
        missed
    }
}

/// A URL's connection details, with the password from the environment
/// when the URL has none. `key` names the URL in errors; the URL itself is
/// never quoted (it may hold a password).
fn connection_info(url: &str, key: &str) -> Result<redis::ConnectionInfo, String> {
    let mut info: redis::ConnectionInfo = url
        .parse()
        .map_err(|_: redis::RedisError| format!("{key} is not a valid Redis URL"))?;
    if let Ok(password) = std::env::var(PASSWORD_ENV)
        && info.redis_settings().password().is_none()
    {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    Ok(info)
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "node".to_owned());
    format!("{host}-{}", std::process::id())
}
