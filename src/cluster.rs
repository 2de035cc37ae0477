//! Cluster mode: several nodes share one line and one admission budget per
//! site through Redis, and hear each other's purges and live settings.
//!
//! - The store is one Redis or a Redis Cluster (sharded), behind one
//!   connection type ([`Conn`]) so scripts, pipelines and commands take one
//!   code path. The connection is made in the background and remade when
//!   lost (the redis crate's connection manager; the cluster connection
//!   follows MOVED/ASK, refreshes its slot map and reconnects to nodes, back
//!   to the seeds when it lost them all); a node starts and serves whether
//!   or not Redis is up: without it, it fails static (see `admission::redis`).
//! - Every `refresh_interval` the node refreshes its view of each shared
//!   line (one script call per site) and its heartbeat.
//! - Purges and admin changes are published on `digue:events` (pub/sub);
//!   settings are also kept in Redis (`digue:settings`) and purges in a
//!   short list (`digue:purges`), so a node that restarts or reconnects
//!   catches up.
//! - Nothing crosses hash slots on a Redis Cluster: a site's keys share one
//!   hash tag (its script touches those only); the global keys are each
//!   touched by single-key commands, and the event is published on its own
//!   (a pipeline goes to one node, and PUBLISH is routed by channel).
//!   PUBLISH reaches every node of a Redis Cluster, so the subscription is a
//!   plain connection to the first seed node that answers.
//! - The Redis URL (it may hold a password) is never logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use serde::{Deserialize, Serialize};

use crate::App;
use crate::admission::token::unix_now;
use crate::config::{AdmissionMode, ClusterConfig, RedisTarget};

const EVENTS: &str = "digue:events";
const SETTINGS: &str = "digue:settings";
const PURGES: &str = "digue:purges";
/// Purges kept for nodes that reconnect.
const PURGES_KEPT: isize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RETRY: Duration = Duration::from_millis(500);
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
        from: String,
        /// Unix milliseconds, to replay purges missed while disconnected.
        at: u64,
    },
    Settings {
        site: String,
        settings: SiteSettings,
        from: String,
    },
}

/// The live settings of one site, as the admin API sets them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteSettings {
    pub origin_concurrency: usize,
    pub admission: Option<AdmissionSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionSettings {
    pub new_users_per_minute: u32,
    pub burst: u32,
    pub max_active_users: Option<u32>,
    pub mode: String,
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
    last_purge: AtomicU64,
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
            last_purge: AtomicU64::new(unix_now() * 1000),
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

    async fn connect(&self) -> bool {
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
            Event::Settings { site, settings, .. } => {
                if let Ok(s) = serde_json::to_string(settings) {
                    store.hset(SETTINGS, site, s).ignore();
                }
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
            store.query_async::<()>(&mut conn).await?;
            news.query_async::<()>(&mut conn).await
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!("could not publish a change to the other nodes");
        }
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

/// The settings of a site as they are now, to publish after a change.
pub fn settings_of(app: &App, site: &str) -> Option<SiteSettings> {
    let snapshot = app.snapshot();
    let s = snapshot.sites.iter().find(|s| s.config.name == site)?;
    Some(SiteSettings {
        origin_concurrency: s.config.origin_concurrency,
        admission: s.config.admission.as_ref().map(|a| AdmissionSettings {
            new_users_per_minute: a.new_users_per_minute,
            burst: a.burst,
            max_active_users: a.max_active_users,
            mode: a.mode.as_str().to_owned(),
        }),
    })
}

/// Applies settings published by another node (or stored in Redis).
pub fn apply_settings(app: &App, site: &str, settings: &SiteSettings) {
    if settings_of(app, site).as_ref() == Some(settings) {
        return;
    }
    let applied = crate::reload::change_site(app, site, |s| {
        s.origin_concurrency = settings.origin_concurrency.max(1);
        if let (Some(a), Some(new)) = (&mut s.admission, &settings.admission) {
            a.new_users_per_minute = new.new_users_per_minute;
            a.burst = new.burst.max(1);
            a.max_active_users = new.max_active_users;
            a.mode = AdmissionMode::parse(&new.mode).unwrap_or(a.mode);
        }
        Ok(())
    });
    if matches!(applied, Some(Ok(()))) {
        tracing::info!(site, "live settings received from the cluster");
    }
}

fn apply(app: &App, cluster: &Cluster, event: Event) {
    match event {
        Event::Settings { from, .. } | Event::Purge { from, .. } if from == cluster.node => {}
        Event::Settings { site, settings, .. } => apply_settings(app, &site, &settings),
        Event::Purge {
            site,
            path,
            prefix,
            hard,
            at,
            ..
        } => {
            cluster.last_purge.fetch_max(at, Ordering::Relaxed);
            match (path, prefix) {
                (Some(path), _) => app.store.purge(&site, |t| t == path, hard),
                (None, Some(prefix)) => app.store.purge(&site, |t| t.starts_with(&prefix), hard),
                (None, None) => 0,
            };
        }
    }
}

/// Runs the cluster side of a node until aborted: view refreshes and the
/// event subscription.
pub async fn run(app: Arc<App>, cluster: Arc<Cluster>) {
    tokio::join!(
        refresh_views(app.clone(), cluster.clone()),
        listen(app, cluster)
    );
}

async fn refresh_views(app: Arc<App>, cluster: Arc<Cluster>) {
    let mut tick = tokio::time::interval(cluster.config.refresh_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !cluster.connect().await {
            continue;
        }
        // All lines at once: on a Redis Cluster, a shard that is down
        // (each call waits for its timeout) must not hold up the views of
        // the sites on the other shards.
        let snapshot = app.snapshot();
        let refreshes: Vec<_> = snapshot
            .sites
            .iter()
            .filter_map(|site| match (&site.gate, &site.config.admission) {
                (Some(gate), Some(cfg)) => Some(gate.refresh(cfg)),
                _ => None,
            })
            .collect();
        let lines = refreshes.len();
        let mut all_ok = futures_util::future::join_all(refreshes)
            .await
            .into_iter()
            .all(|ok| ok);
        if lines == 0 {
            // No line refreshed: a ping tells whether the store is there.
            if let Some(mut conn) = cluster.conn() {
                let ping: Result<Result<String, _>, _> = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    redis::cmd("PING").query_async(&mut conn),
                )
                .await;
                all_ok = matches!(ping, Ok(Ok(_)));
            }
        }
        cluster.set_up(all_ok);
    }
}

async fn listen(app: Arc<App>, cluster: Arc<Cluster>) {
    loop {
        if let Err(e) = listen_once(&app, &cluster).await {
            tracing::debug!(error = %e, "event subscription lost; retrying");
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// A subscription to the events on the first node that answers: PUBLISH
/// reaches every node of a Redis Cluster, so any one will do.
async fn subscribe(cluster: &Cluster) -> redis::RedisResult<redis::aio::PubSub> {
    let mut last = redis::RedisError::from((redis::ErrorKind::Io, "no node to subscribe to"));
    for client in &cluster.nodes {
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

async fn listen_once(app: &App, cluster: &Cluster) -> redis::RedisResult<()> {
    let mut pubsub = subscribe(cluster).await?;
    // The command connection may come up after the subscription; catching up
    // needs it.
    while !cluster.connect().await {
        tokio::time::sleep(RETRY).await;
    }
    catch_up(app, cluster).await;
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let Ok(payload) = msg.get_payload::<String>() else {
            continue;
        };
        match serde_json::from_str::<Event>(&payload) {
            Ok(event) => apply(app, cluster, event),
            Err(e) => tracing::warn!(error = %e, "unreadable cluster event ignored"),
        }
    }
    Ok(())
}

/// After (re)connecting: the live settings stored in Redis, and the purges
/// published while this node was not listening.
async fn catch_up(app: &App, cluster: &Cluster) {
    let Some(mut conn) = cluster.conn() else {
        return;
    };
    let settings: redis::RedisResult<Vec<(String, String)>> = conn.hgetall(SETTINGS).await;
    for (site, json) in settings.unwrap_or_default() {
        if let Ok(s) = serde_json::from_str::<SiteSettings>(&json) {
            apply_settings(app, &site, &s);
        }
    }
    let since = cluster.last_purge.load(Ordering::Relaxed);
    let purges: redis::RedisResult<Vec<String>> = conn.lrange(PURGES, 0, PURGES_KEPT - 1).await;
    let mut missed: Vec<Event> = purges
        .unwrap_or_default()
        .iter()
        .filter_map(|j| serde_json::from_str(j).ok())
        .filter(|e| matches!(e, Event::Purge { at, .. } if *at > since))
        .collect();
    missed.reverse();
    for event in missed {
        apply(app, cluster, event);
    }
}

/// Re-applies the live settings stored in Redis (after a reload of the
/// file, which would otherwise undo them on this node only).
pub async fn reapply_settings(app: Arc<App>, cluster: Arc<Cluster>) {
    catch_up(&app, &cluster).await;
}
