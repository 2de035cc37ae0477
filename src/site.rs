//! The runtime of one `[[site]]`: its config, its origin client, its origin
//! guard, its waiting room and its metric handles.
//!
//! A reload builds new `Site`s, but what holds live state — the guard's
//! slots, the line, metric handles, the origin's connection pool when the
//! origin did not change — is carried over from the old one by name.

use std::sync::Arc;

use crate::admission::gate::Gate;
use crate::admission::line::Saved;
use crate::cluster::Cluster;
use crate::config::SiteConfig;
use crate::guard::OriginGuard;
use crate::metrics::{Metrics, SiteMetrics};
use crate::origin::Origin;

pub struct Site {
    pub config: SiteConfig,
    pub origin: Arc<Origin>,
    pub guard: Arc<OriginGuard>,
    pub metrics: Arc<SiteMetrics>,
    /// The waiting room, when `[site.admission]` is configured.
    pub gate: Option<Arc<Gate>>,
}

impl Site {
    /// `saved`: the line's counters from the state file, and how many
    /// ticket numbers past them may have been issued before a crash.
    /// `cluster`: the shared store, when the line is shared.
    pub fn new(
        config: SiteConfig,
        metrics: &Metrics,
        saved: Option<(Saved, u64)>,
        cluster: Option<&Arc<Cluster>>,
    ) -> Site {
        let metrics = Arc::new(metrics.site(&config.name));
        let gate = config
            .admission
            .as_ref()
            .map(|a| Arc::new(new_gate(a, &config.name, saved, cluster)));
        let site = Site {
            origin: Arc::new(Origin::new(&config)),
            guard: Arc::new(OriginGuard::new(
                config.origin_concurrency,
                metrics.origin_in_flight.clone(),
                &metrics.origin_limit,
            )),
            metrics,
            gate,
            config,
        };
        site.publish_settings();
        site
    }

    /// The same site under a new config, keeping its live state.
    pub fn rebuild(&self, config: SiteConfig, cluster: Option<&Arc<Cluster>>) -> Site {
        let origin = if origin_unchanged(&self.config, &config) {
            self.origin.clone()
        } else {
            Arc::new(Origin::new(&config))
        };
        self.guard.set_limit(config.origin_concurrency);
        let gate = match (&self.gate, &config.admission) {
            (Some(gate), Some(a)) => {
                // The line takes the change now, not at the next request:
                // a closing is timed from here.
                gate.status(a, tokio::time::Instant::now());
                Some(gate.clone())
            }
            (None, Some(a)) => Some(Arc::new(new_gate(a, &config.name, None, cluster))),
            (_, None) => None,
        };
        let site = Site {
            origin,
            guard: self.guard.clone(),
            metrics: self.metrics.clone(),
            gate,
            config,
        };
        site.publish_settings();
        site
    }

    /// Gauges that mirror settings, so dashboards show limits beside usage.
    fn publish_settings(&self) {
        self.metrics
            .origin_limit
            .set(i64::try_from(self.config.origin_concurrency).unwrap_or(i64::MAX));
        if let Some(a) = &self.config.admission {
            self.metrics
                .admission_rate
                .set(i64::from(a.new_users_per_minute));
        }
    }
}

fn new_gate(
    a: &crate::config::AdmissionConfig,
    name: &str,
    saved: Option<(Saved, u64)>,
    cluster: Option<&Arc<Cluster>>,
) -> Gate {
    match cluster {
        Some(cluster) => Gate::shared(a, name, cluster.clone()),
        None => {
            let (saved, margin) = saved.map_or((None, 0), |(s, m)| (Some(s), m));
            Gate::local(a, saved, margin)
        }
    }
}

/// Whether the connection pool can be kept. `origin_concurrency` is not
/// part of it: it is what operators turn during a surge, and a new pool
/// would send a wave of fresh connections to a struggling origin (the old
/// pool keeps its idle limit; it only bounds idle connections).
fn origin_unchanged(a: &SiteConfig, b: &SiteConfig) -> bool {
    a.origin == b.origin
        && a.origin_host == b.origin_host
        && a.origin_timeout == b.origin_timeout
        && a.origin_connect_timeout == b.origin_connect_timeout
}
