//! Config changes at run time: a reload of the file (SIGHUP, `POST
//! /admin/reload`) or a live setting from the admin API.
//!
//! Either way: build the new config, validate it, build the new sites from
//! the old ones (guard slots, lines, metric handles and connection pools
//! carry over), then swap the snapshot atomically. An invalid change leaves
//! the running config untouched. Listeners are never rebound: keys that
//! would need it are refused with a message saying so.

use std::sync::Arc;

use crate::admission::load_keys;
use crate::config::{Config, ConfigError, ConfigErrors, SiteConfig};
use crate::pages::Pages;
use crate::site::Site;
use crate::{App, Snapshot};

/// Reloads the config file. On error, the running config stays and every
/// problem is returned with its key path.
pub fn reload(app: &App) -> Result<(), ConfigErrors> {
    let outcome = reload_file(app);
    let label = if outcome.is_ok() {
        "applied"
    } else {
        "refused"
    };
    app.metrics.reloads.with_label_values(&[label]).inc();
    match &outcome {
        Ok(()) => tracing::info!("config reloaded"),
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(problem = %e, "config reload refused; the running config stays");
            }
        }
    }
    outcome
}

fn reload_file(app: &App) -> Result<(), ConfigErrors> {
    let Some(path) = &app.config_path else {
        return Err(one(
            "",
            "digue was started without a config file: nothing to reload",
        ));
    };
    let new = Config::load(path)?;
    let _changing = app.changing.lock().unwrap_or_else(|p| p.into_inner());
    let old = app.snapshot();
    let mut errors = restart_only(&old.config, &new);
    let keys = load_keys(new.server.secret_file.as_deref())
        .map_err(|e| errors.push(error("server.secret_file", &e)))
        .ok();
    let pages = Pages::new(new.server.pages_dir.as_deref())
        .map_err(|e| errors.push(error("server.pages_dir", &e)))
        .ok();
    let certificates = match (app.tls.get(), &new.server.tls) {
        (Some(_), Some(settings)) => crate::tls::Resolver::load(settings)
            .map_err(|e| errors.push(error("server.tls_cert", &e)))
            .ok(),
        _ => None,
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    if let (Some(resolver), Some(certificates)) = (app.tls.get(), certificates) {
        resolver.install(certificates);
    }
    // A random key (no shared secret configured) is kept: a new one would
    // void every ticket and pass.
    if let Some((keys, true)) = keys {
        app.keys.store(Arc::new(keys));
    }
    if let Some(pages) = pages {
        app.pages.store(Arc::new(pages));
    }
    swap(app, &old, new);
    // A rule added by this reload may make recently uncacheable URLs
    // cacheable: forget what hit-for-miss remembered.
    app.store.forget_uncacheable();
    if let Some(cluster) = &app.cluster {
        // Live settings are cluster-wide: the file does not undo them on
        // one node only.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(crate::cluster::reapply_settings(app.me(), cluster.clone()));
        }
    }
    Ok(())
}

/// Applies a live change to one site's settings (admin API). It lasts until
/// the next reload of the file. `None` when no site has that name.
pub fn change_site(
    app: &App,
    name: &str,
    change: impl FnOnce(&mut SiteConfig) -> Result<(), String>,
) -> Option<Result<(), String>> {
    let _changing = app.changing.lock().unwrap_or_else(|p| p.into_inner());
    let old = app.snapshot();
    let mut config = old.config.clone();
    let site = config.sites.iter_mut().find(|s| s.name == name)?;
    if let Err(e) = change(site) {
        return Some(Err(e));
    }
    swap(app, &old, config);
    Some(Ok(()))
}

/// Builds the sites of `config` from those of `old` and swaps them in.
fn swap(app: &App, old: &Snapshot, config: Config) {
    let sites = config
        .sites
        .iter()
        .map(|s| {
            let site = match old.sites.iter().find(|o| o.config.name == s.name) {
                Some(previous) => previous.rebuild(s.clone(), app.cluster.as_ref()),
                None => Site::new(s.clone(), &app.metrics, None, app.cluster.as_ref()),
            };
            Arc::new(site)
        })
        .collect();
    app.snapshot.store(Arc::new(Snapshot { config, sites }));
}

/// Keys that only a restart can change, each refused with its path.
fn restart_only(old: &Config, new: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let (o, n) = (&old.server, &new.server);
    let mut check = |changed: bool, path: &str| {
        if changed {
            errors.push(error(
                path,
                "changing it needs a restart (it is read once, when listeners and \
                 tasks start); the running config stays",
            ));
        }
    };
    check(o.listen != n.listen, "server.listen");
    check(o.admin_listen != n.admin_listen, "server.admin_listen");
    check(
        o.worker_threads != n.worker_threads,
        "server.worker_threads",
    );
    check(
        o.max_connections != n.max_connections,
        "server.max_connections",
    );
    check(
        o.max_header_bytes != n.max_header_bytes,
        "server.max_header_size",
    );
    check(
        o.header_read_timeout != n.header_read_timeout,
        "server.header_read_timeout",
    );
    check(o.state_file != n.state_file, "server.state_file");
    check(
        o.shutdown_grace != n.shutdown_grace,
        "server.shutdown_grace",
    );
    check(o.log_json != n.log_json, "server.log_format");
    check(
        old.cluster.as_ref().map(|c| c.refresh_interval)
            != new.cluster.as_ref().map(|c| c.refresh_interval),
        "cluster.refresh_interval",
    );
    // Active sessions are counted by how long a pass goes unused.
    for (i, site) in new.sites.iter().enumerate() {
        let before = old.sites.iter().find(|o| o.name == site.name);
        // Adding or removing a waiting room builds a new gate: that is fine.
        let changed = match (before.and_then(|b| b.admission.as_ref()), &site.admission) {
            (Some(old), Some(new)) => old.session_duration != new.session_duration,
            _ => false,
        };
        check(changed, &format!("site[{i}].admission.session_duration"));
    }
    check(
        o.tls.as_ref().map(|t| t.listen) != n.tls.as_ref().map(|t| t.listen),
        "server.tls_listen",
    );
    check(old.cache.max_size != new.cache.max_size, "cache.max_size");
    check(
        old.cache.hit_for_miss != new.cache.hit_for_miss,
        "cache.hit_for_miss",
    );
    check(
        old.cache.max_waiters_per_key != new.cache.max_waiters_per_key,
        "cache.max_waiters_per_key",
    );
    check(
        old.cluster
            .as_ref()
            .map(|c| (&c.redis, &c.node_id, c.on_store_failure))
            != new
                .cluster
                .as_ref()
                .map(|c| (&c.redis, &c.node_id, c.on_store_failure)),
        "cluster",
    );
    errors
}

fn error(path: &str, message: &str) -> ConfigError {
    ConfigError {
        path: path.to_owned(),
        message: message.to_owned(),
    }
}

fn one(path: &str, message: &str) -> ConfigErrors {
    ConfigErrors(vec![error(path, message)])
}
