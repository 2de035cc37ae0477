//! The loops that keep this node in step with the others: view refreshes
//! (the node's heartbeat), the event subscription, catching up after a
//! reconnect or a reload. They apply what they hear through `App`'s own
//! methods, as the admin API does.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;

use super::{Cluster, Event};
use crate::App;
use crate::config::LiveSettings;
use crate::origin::Mode;
use crate::reload::LiveRefused;

/// Pause before subscribing again after the subscription was lost.
const RETRY: Duration = Duration::from_millis(500);

/// Applies settings published by another node (or stored in Redis).
fn apply_settings(app: &App, site: &str, settings: LiveSettings) {
    match app.change_live(site, |_| Ok(settings)) {
        Ok(_) => tracing::debug!(site, "live settings received from the cluster"),
        // A site this node's file does not have.
        Err(LiveRefused::NoSuchSite) => {}
        Err(LiveRefused::Conflict(why) | LiveRefused::Invalid(why)) => {
            tracing::warn!(site, why, "live settings from the cluster refused");
        }
    }
}

fn apply_backend_mode(app: &App, site: &str, backend: &str, mode: Mode) {
    match app.set_backend_mode(site, backend, mode) {
        Ok(()) => tracing::info!(
            site,
            backend,
            ?mode,
            "backend mode received from the cluster"
        ),
        Err(LiveRefused::NoSuchSite) => {}
        Err(LiveRefused::Conflict(why) | LiveRefused::Invalid(why)) => {
            tracing::warn!(site, why, "backend mode from the cluster refused");
        }
    }
}

fn apply(app: &App, cluster: &Cluster, event: Event) {
    match event {
        Event::Settings { from, .. }
        | Event::Purge { from, .. }
        | Event::Backend { from, .. }
        | Event::EventAdded { from, .. }
        | Event::EventCancelled { from, .. }
            if from == cluster.node => {}
        Event::EventAdded { site, spec, .. } => {
            match crate::opening::add(app, &site, &spec, true) {
                Ok(_) | Err(crate::opening::EventRefused::Conflict(_)) => {}
                Err(why) => tracing::warn!(site, ?why, "event from the cluster refused"),
            }
        }
        Event::EventCancelled { site, name, .. } => {
            let _ = crate::opening::cancel(app, &site, &name);
        }
        Event::Settings {
            site,
            fence: Some(fence),
            from,
            ..
        } if !cluster.fences.admits(&site, fence) => {
            app.metrics.fenced_rates.inc();
            tracing::warn!(
                site,
                from,
                fence,
                "autopilot rate from a node whose lease has passed to another: dropped"
            );
        }
        Event::Settings { site, settings, .. } => apply_settings(app, &site, settings),
        Event::Backend {
            site,
            backend,
            mode,
            ..
        } => apply_backend_mode(app, &site, &backend, mode),
        Event::Purge {
            site,
            path,
            prefix,
            hard,
            invalidate,
            at,
            ..
        } => {
            cluster.last_purge.fetch_max(at, Ordering::Relaxed);
            let now = app.clock.now().instant;
            match (path, prefix) {
                (Some(path), _) if invalidate => app.store.invalidate_path(&site, &path, now),
                (Some(path), _) => app.store.purge(&site, |t| t == path, hard, now),
                (None, Some(prefix)) => {
                    app.store
                        .purge(&site, |t| t.starts_with(&prefix), hard, now)
                }
                (None, None) => 0,
            };
        }
    }
}

/// Runs the cluster side of a node until aborted: view refreshes, the
/// event subscription, and the cluster's live settings put back after
/// each reload of the file.
pub async fn run(app: Arc<App>, cluster: Arc<Cluster>) {
    tokio::join!(
        refresh_views(app.clone(), cluster.clone()),
        listen(app.clone(), cluster.clone()),
        reapply_after_reloads(app, cluster),
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
            .filter_map(|site| {
                let (gate, cfg, live) = site.waiting_room()?;
                Some(gate.refresh(cfg, live))
            })
            .collect();
        let lines = refreshes.len();
        let mut all_ok = futures_util::future::join_all(refreshes)
            .await
            .into_iter()
            .all(|ok| ok);
        if lines == 0 {
            // No line refreshed: a ping tells whether the store is there.
            all_ok = cluster.ping().await;
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
    let mut pubsub = cluster.subscribe().await?;
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
    for (site, settings) in cluster.stored_settings().await {
        apply_settings(app, &site, settings);
    }
    for event in cluster.stored_backend_modes().await {
        if let Event::Backend {
            site,
            backend,
            mode,
            ..
        } = event
        {
            apply_backend_mode(app, &site, &backend, mode);
        }
    }
    // Not through `apply`: a node restarted under the same id takes back
    // the events it added itself.
    for event in cluster.stored_events().await {
        if let Event::EventAdded { site, spec, .. } = event {
            let _ = crate::opening::add(app, &site, &spec, true);
        }
    }
    let since = cluster.last_purge.load(Ordering::Relaxed);
    for event in cluster.purges_since(since).await {
        apply(app, cluster, event);
    }
}

/// A reload of the file replaces the live settings with the file's on this
/// node only: the cluster's, stored in Redis, are put back at once.
async fn reapply_after_reloads(app: Arc<App>, cluster: Arc<Cluster>) {
    let mut reloads = app.reloaded.subscribe();
    while reloads.changed().await.is_ok() {
        catch_up(&app, &cluster).await;
    }
}
