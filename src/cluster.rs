//! Cluster mode: several nodes share one line and one admission budget per
//! site through Redis, and hear each other's purges and live settings.
//!
//! - The connection is made in the background and remade when lost (the
//!   redis crate's connection manager); a node starts and serves whether or
//!   not Redis is up: without it, it fails static (see `admission::redis`).
//! - Every `refresh_interval` the node refreshes its view of each shared
//!   line (one script call per site) and its heartbeat.
//! - Purges and admin changes are published on `digue:events` (pub/sub);
//!   settings are also kept in Redis (`digue:settings`) and purges in a
//!   short list (`digue:purges`), so a node that restarts or reconnects
//!   catches up.
//! - The Redis URL (it may hold a password) is never logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::App;
use crate::admission::token::unix_now;
use crate::config::{AdmissionMode, ClusterConfig};

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

/// This node's link to the shared store.
pub struct Cluster {
    client: redis::Client,
    /// `None` until connected; the manager reconnects by itself after that.
    /// Guards a clone-out only, never held across `.await`.
    conn: Mutex<Option<ConnectionManager>>,
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
        let mut info: redis::ConnectionInfo =
            config
                .redis_url
                .as_str()
                .parse()
                .map_err(|_: redis::RedisError| {
                    "cluster.redis_url is not a valid Redis URL".to_owned()
                })?;
        if let Ok(password) = std::env::var(PASSWORD_ENV)
            && info.redis_settings().password().is_none()
        {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info)
            .map_err(|_| "cluster.redis_url is not a valid Redis URL".to_owned())?;
        let node = config.node_id.clone().unwrap_or_else(default_node_id);
        Ok(Arc::new(Cluster {
            client,
            conn: Mutex::new(None),
            node,
            config: config.clone(),
            up: AtomicBool::new(false),
            calls,
            last_purge: AtomicU64::new(unix_now() * 1000),
        }))
    }

    /// A connection, if one was ever made (the manager reconnects itself).
    pub fn conn(&self) -> Option<ConnectionManager> {
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
        let made =
            tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_connection_manager()).await;
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
        let mut pipe = redis::pipe();
        match event {
            Event::Settings { site, settings, .. } => {
                if let Ok(s) = serde_json::to_string(settings) {
                    pipe.hset(SETTINGS, site, s).ignore();
                }
            }
            Event::Purge { .. } => {
                pipe.lpush(PURGES, &json).ignore();
                pipe.ltrim(PURGES, 0, PURGES_KEPT - 1).ignore();
            }
        }
        pipe.publish(EVENTS, &json).ignore();
        let sent: Result<Result<(), _>, _> =
            tokio::time::timeout(CONNECT_TIMEOUT, pipe.query_async(&mut conn)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!("could not publish a change to the other nodes");
        }
    }
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
        let mut all_ok = true;
        let mut lines = 0;
        for site in &app.snapshot().sites {
            if let (Some(gate), Some(cfg)) = (&site.gate, &site.config.admission) {
                all_ok &= gate.refresh(cfg).await;
                lines += 1;
            }
        }
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

async fn listen_once(app: &App, cluster: &Cluster) -> redis::RedisResult<()> {
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, cluster.client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timeout")))??;
    pubsub.subscribe(EVENTS).await?;
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
