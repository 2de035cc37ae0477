//! Config changes at run time: a reload of the file (SIGHUP, `POST
//! /admin/reload`) or a live setting (admin API, cluster).
//!
//! A reload builds the new config, validates and preflights it, builds the
//! new sites from the old ones (guard slots, lines, metric handles and
//! connection pools carry over), then swaps the snapshot atomically. An
//! invalid change leaves the running config untouched. Listeners are never
//! rebound: keys that would need it are refused with a message saying so.
//!
//! A live setting builds nothing: it goes to the site's own cell
//! ([`Site::set_live`]). Both kinds are serialised by `App::changing`, so a
//! live change never lands on a site a reload just replaced.

use std::sync::Arc;

use crate::admission::load_keys;
use crate::cluster::Event;
use crate::config::{Config, ConfigError, ConfigErrors, LiveSettings};
use crate::origin::Mode;
use crate::pages::Pages;
use crate::site::Site;
use crate::{App, Snapshot};

/// Why a live change was not applied.
#[derive(Debug)]
pub enum LiveRefused {
    /// No site has that name.
    NoSuchSite,
    /// The change does not fit this site (e.g. it has no waiting room).
    Conflict(String),
    /// A value out of its range.
    Invalid(String),
}

impl App {
    /// Reloads the config file. On error, the running config stays and every
    /// problem is returned with its key path.
    pub fn reload(&self) -> Result<(), ConfigErrors> {
        let outcome = self.reload_file();
        let label = if outcome.is_ok() {
            "applied"
        } else {
            "refused"
        };
        self.metrics.reloads.with_label_values(&[label]).inc();
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

    fn reload_file(&self) -> Result<(), ConfigErrors> {
        let Some(path) = &self.config_path else {
            return Err(one(
                "",
                "digue was started without a config file: nothing to reload",
            ));
        };
        let new = crate::preflight::load(path)?;
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.snapshot();
        let mut errors = old.config.restart_needed(&new);
        let keys = load_keys(new.server.secret_file.as_deref())
            .map_err(|e| errors.push(error("server.secret_file", &e)))
            .ok();
        let pages = Pages::new(new.server.pages_dir.as_deref())
            .map_err(|e| errors.push(error("server.pages_dir", &e)))
            .ok();
        let certificates = match (self.tls.get(), &new.server.tls) {
            (Some(_), Some(settings)) => crate::tls::Resolver::load(settings)
                .map_err(|e| errors.push(error("server.tls_cert", &e)))
                .ok(),
            _ => None,
        };
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Before anything is installed: an origin's TLS files changed since
        // the preflight read them refuse the whole reload.
        let sites = self.build_sites(&old, &new)?;
        if let (Some(resolver), Some(certificates)) = (self.tls.get(), certificates) {
            resolver.install(certificates);
        }
        // A random key (no shared secret configured) is kept: a new one would
        // void every ticket and pass.
        if let Some((keys, true)) = keys {
            self.keys.store(Arc::new(keys));
        }
        if let Some(pages) = pages {
            self.pages.store(Arc::new(pages));
        }
        self.snapshot
            .store(Arc::new(Snapshot { config: new, sites }));
        // A rule added by this reload may make recently uncacheable URLs
        // cacheable: forget what hit-for-miss remembered.
        self.store.forget_uncacheable();
        // Whoever shares live settings (the cluster) puts them back: the
        // file must not undo a cluster-wide change on one node only.
        self.reloaded.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Applies a live change to one site's settings: `change` gets the
    /// running settings and returns the new ones. It lasts until the next
    /// reload of the file. Returns what is now in force.
    pub fn change_live(
        &self,
        name: &str,
        change: impl FnOnce(LiveSettings) -> Result<LiveSettings, String>,
    ) -> Result<LiveSettings, LiveRefused> {
        let _changing = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.snapshot();
        let site = snapshot
            .sites
            .iter()
            .find(|s| s.config.name == name)
            .ok_or(LiveRefused::NoSuchSite)?;
        let new = change(site.live()).map_err(LiveRefused::Conflict)?;
        site.set_live(new, self.clock.instant())
            .map_err(|e| LiveRefused::Invalid(e.to_string()))
    }

    /// Tells the other nodes of a cluster the live settings now in force
    /// on this one: an admin change, or the autopilot's rate under its
    /// lease's `fence`.
    pub fn tell_cluster(&self, site: &str, settings: LiveSettings, fence: Option<u64>) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let event = Event::Settings {
            site: site.to_owned(),
            settings,
            from: cluster.node.clone(),
            fence,
        };
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.publish(&event).await });
    }

    /// Sets one backend of a site active, draining or down (admin API,
    /// cluster). It lasts while the backend is in the file, reloads
    /// included.
    pub fn set_backend_mode(
        &self,
        name: &str,
        backend: &str,
        mode: Mode,
    ) -> Result<(), LiveRefused> {
        let snapshot = self.snapshot();
        let site = snapshot
            .sites
            .iter()
            .find(|s| s.config.name == name)
            .ok_or(LiveRefused::NoSuchSite)?;
        let state = site
            .origin
            .state(backend.trim_end_matches('/'))
            .ok_or_else(|| {
                let names: Vec<&str> = site.origin.states().map(|s| s.name.as_str()).collect();
                LiveRefused::Conflict(format!(
                    "no backend {backend:?} in this site; its backends: {names:?}"
                ))
            })?;
        state.health.set_mode(mode);
        state.show_health(self.clock.instant());
        Ok(())
    }

    /// Builds the sites of `config` from those of `old`.
    fn build_sites(&self, old: &Snapshot, config: &Config) -> Result<Vec<Arc<Site>>, ConfigErrors> {
        let cluster = self.cluster.as_ref();
        config
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let site = match old.sites.iter().find(|o| o.config.name == s.name) {
                    Some(previous) => {
                        previous.rebuild(s.clone(), &self.metrics, cluster, self.clock.instant())
                    }
                    None => Site::new(s.clone(), &self.metrics, None, cluster),
                };
                site.map(Arc::new)
                    .map_err(|e| one(&format!("site[{i}]"), &e))
            })
            .collect()
    }
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
