//! The runtime of one `[[site]]`: its config, its origin client (with each
//! backend's guard and health), its waiting room, its metric handles and
//! its running live settings.
//!
//! A reload builds new `Site`s, but what holds live state — each backend's
//! slots and health, the line, metric handles, the count of open tunnels, the origin's connection
//! pools while [`OriginConfig`](crate::config::OriginConfig) is unchanged —
//! is carried over from the old one by name. A live change (admin API,
//! cluster) builds nothing: it goes through [`Site::set_live`].

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::admission::gate::Gate;
use crate::admission::line::Saved;
use crate::client_limit::ClientLimiter;
use crate::cluster::Cluster;
use crate::config::{AdmissionConfig, AdmissionSettings, LiveError, LiveSettings, SiteConfig};
use crate::metrics::{Metrics, SiteMetrics};
use crate::origin::{Origin, Prober, Route};
use crate::pilot::Pilot;
use crate::target::Gates;
use crate::tunnel::Tunnels;

pub struct Site {
    /// What the file says; its `live` part is only the starting point.
    pub config: SiteConfig,
    pub origin: Arc<Origin>,
    /// The autopilot: kept across reloads, which give it the file's targets.
    pub pilot: Arc<Pilot>,
    /// The active health check of the origin's backends, when configured.
    prober: Option<Arc<Prober>>,
    pub metrics: Arc<SiteMetrics>,
    /// The waiting room, when `[site.admission]` is configured.
    pub gate: Option<Arc<Gate>>,
    /// Its entry points, compiled (none without a waiting room).
    pub gates: Gates,
    /// Its open WebSocket tunnels, under `max_websockets`.
    pub tunnels: Arc<Tunnels>,
    /// Each client's budget of origin-bound requests, when
    /// `[site.client_limit]` is configured; kept by a reload that leaves
    /// its settings as they were.
    pub client_limit: Option<Arc<ClientLimiter>>,
    /// The running live settings: the file's at build, then what the admin
    /// API or the cluster set. Read on every gated request (one atomic
    /// load); written only by `set_live`, under `App::changing`.
    live: ArcSwap<LiveSettings>,
}

impl Site {
    /// `saved`: the line's counters from the state file, and how many
    /// ticket numbers past them may have been issued before a crash.
    /// `cluster`: the shared store, when the line is shared. Fails when
    /// the origin's TLS files cannot be used.
    pub fn new(
        config: SiteConfig,
        registry: &Metrics,
        saved: Option<(Saved, u64)>,
        cluster: Option<&Arc<Cluster>>,
    ) -> Result<Site, String> {
        let metrics = Arc::new(registry.site(&config.name));
        let origin = Arc::new(Origin::new(&config, registry, &metrics, None)?);
        let gate = waiting_room(&config)
            .map(|(a, live)| Arc::new(new_gate(a, live, &config.name, saved, cluster)));
        let site = Site {
            pilot: Arc::new(Pilot::new(&config, registry)),
            prober: prober(&origin, &config),
            origin,
            tunnels: Tunnels::new(&metrics),
            client_limit: config
                .client_limit
                .clone()
                .map(|c| Arc::new(ClientLimiter::new(c))),
            metrics,
            gate,
            gates: gates(&config),
            live: ArcSwap::from_pointee(config.live),
            config,
        };
        site.publish_settings();
        Ok(site)
    }

    /// The same site under a new config, keeping its live state. The file's
    /// live settings replace the running ones (a reload is an operator
    /// saying what they want now). The origin's pool is kept unless its
    /// settings or the contents of its TLS files changed.
    pub fn rebuild(
        &self,
        config: SiteConfig,
        registry: &Metrics,
        cluster: Option<&Arc<Cluster>>,
        now: Instant,
    ) -> Result<Site, String> {
        let origin =
            if self.config.origin == config.origin && self.origin.tls_unchanged(&config.origin) {
                self.origin.clone()
            } else {
                Arc::new(Origin::new(
                    &config,
                    registry,
                    &self.metrics,
                    Some(&self.origin),
                )?)
            };
        let same_checks = Arc::ptr_eq(&origin, &self.origin)
            && self.config.balance.health_check == config.balance.health_check;
        let prober = if same_checks {
            self.prober.clone()
        } else {
            prober(&origin, &config)
        };
        let gate = match (&self.gate, waiting_room(&config)) {
            (Some(gate), Some((a, _))) => {
                gate.events().reload(&a.events);
                Some(gate.clone())
            }
            (None, Some((a, live))) => {
                Some(Arc::new(new_gate(a, live, &config.name, None, cluster)))
            }
            (_, None) => None,
        };
        self.pilot.reconfigure(&config);
        let client_limit = match (&self.client_limit, &config.client_limit) {
            (Some(kept), Some(new)) if kept.config == *new => Some(kept.clone()),
            (_, new) => new.clone().map(|c| Arc::new(ClientLimiter::new(c))),
        };
        let site = Site {
            client_limit,
            pilot: self.pilot.clone(),
            origin,
            prober,
            metrics: self.metrics.clone(),
            gate,
            gates: gates(&config),
            tunnels: self.tunnels.clone(),
            live: ArcSwap::from_pointee(config.live),
            config,
        };
        site.apply(site.config.live, now, true);
        Ok(site)
    }

    /// The running live settings.
    pub fn live(&self) -> LiveSettings {
        **self.live.load()
    }

    /// The running pace and mode of the waiting room, with the rest of its
    /// settings; `None` for a site without one.
    pub fn waiting_room(&self) -> Option<(&Gate, &AdmissionConfig, AdmissionSettings)> {
        let gate = self.gate.as_deref()?;
        let config = self.config.admission.as_ref()?;
        Some((gate, config, self.live().admission?))
    }

    /// The way to this site's origin, for [`call_origin`](crate::origin::call_origin);
    /// `now`: the app's clock.
    pub fn route(&self, now: Instant) -> Route<'_> {
        Route {
            origin: &self.origin,
            queue_timeout: self.config.origin_queue_timeout,
            metrics: &self.metrics,
            balance: &self.config.balance,
            session_cookies: &self.config.session_cookies,
            now,
        }
    }

    /// Applies new live settings at once, without rebuilding anything: the
    /// guard's limit, the line's pace, the gauges. Refused, with nothing
    /// changed, when a value is out of range. A waiting-room part for a
    /// site without one is ignored, and a missing one keeps the current one
    /// (settings from a node whose file differs).
    pub fn set_live(&self, new: LiveSettings, now: Instant) -> Result<LiveSettings, LiveError> {
        let current = self.live();
        let new = LiveSettings {
            origin_concurrency: new.origin_concurrency,
            admission: current.admission.and(new.admission.or(current.admission)),
        }
        .checked()?;
        if new != current {
            self.apply(
                new,
                now,
                new.origin_concurrency != current.origin_concurrency,
            );
        }
        Ok(new)
    }

    /// `now`: the app's clock, from which a closing is timed. `limits`:
    /// whether `origin_concurrency` is to be set on every backend — unless
    /// the autopilot steers them (it follows a new ceiling at its next
    /// window).
    fn apply(&self, new: LiveSettings, now: Instant, limits: bool) {
        self.live.store(Arc::new(new));
        if limits && !self.pilot.settings().enabled {
            self.origin.set_limit(new.origin_concurrency);
        }
        if let Some((gate, config, live)) = self.waiting_room() {
            // The line takes the change now, not at the next request: a
            // closing is timed from here.
            gate.status(config, &live, now);
        }
        self.publish_settings();
    }

    /// Gauges that mirror settings, so dashboards show limits beside usage.
    fn publish_settings(&self) {
        let live = self.live();
        self.metrics
            .origin_limit
            .set(i64::try_from(live.origin_concurrency).unwrap_or(i64::MAX));
        if let Some(a) = live.admission {
            self.metrics
                .admission_rate
                .set(i64::from(a.new_users_per_minute));
        }
    }
}

fn prober(origin: &Arc<Origin>, config: &SiteConfig) -> Option<Arc<Prober>> {
    let check = config.balance.health_check.clone()?;
    Prober::start(origin.clone(), check).map(Arc::new)
}

fn gates(config: &SiteConfig) -> Gates {
    config.admission.as_ref().map_or_else(Gates::default, |a| {
        Gates::new(&a.paths, config.case_sensitive)
    })
}

/// A site config's waiting room and its live half, set together by the parser.
fn waiting_room(config: &SiteConfig) -> Option<(&AdmissionConfig, &AdmissionSettings)> {
    Some((config.admission.as_ref()?, config.live.admission.as_ref()?))
}

fn new_gate(
    a: &AdmissionConfig,
    live: &AdmissionSettings,
    name: &str,
    saved: Option<(Saved, u64)>,
    cluster: Option<&Arc<Cluster>>,
) -> Gate {
    match cluster {
        Some(cluster) => Gate::shared(a, live, name, cluster.clone()),
        None => {
            let (saved, margin) = saved.map_or((None, 0), |(s, m)| (Some(s), m));
            Gate::local(a, live, saved, margin)
        }
    }
}
