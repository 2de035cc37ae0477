//! One of a site's origin servers: its connection pool, and the state that
//! outlives a reload (its slots, its health, its metric handles).

use std::sync::Arc;

use http::Uri;
use tokio::time::Instant;

use super::balance::{Candidate, stable_hash};
use super::health::{Health, Mode, Standing, Verdict};
use super::upstream::Pool;
use crate::autopilot::LatencyWindow;
use crate::config::{BalanceConfig, OriginConfig};
use crate::guard::OriginGuard;
use crate::metrics::{BackendMetrics, Metrics, SiteMetrics};

/// A backend as the site's requests see it.
pub struct Backend {
    pub pool: Pool,
    pub state: Arc<BackendState>,
}

/// What a reload carries over from the backend of the same address: a
/// new guard would let a second `origin_concurrency` of requests in, new
/// health would forget an ejection.
pub struct BackendState {
    /// The address as written in the config: the metric label and the
    /// admin API's name for it.
    pub name: String,
    /// Its `digue_backend` cookie value: a hash of the name, so the cookie
    /// does not show internal addresses.
    pub id: String,
    pub guard: OriginGuard,
    pub health: Health,
    pub metrics: BackendMetrics,
    /// Latencies of the requests it answered since the autopilot last
    /// looked (written on every origin request, read once a window).
    pub window: LatencyWindow,
}

impl BackendState {
    pub fn new(
        url: &Uri,
        limit: usize,
        site: &str,
        site_metrics: &SiteMetrics,
        metrics: &Metrics,
    ) -> BackendState {
        let name = url.to_string().trim_end_matches('/').to_owned();
        let m = metrics.backend(site, &name);
        m.healthy.set(1);
        BackendState {
            id: format!("{:016x}", stable_hash(&[name.as_bytes()])),
            guard: OriginGuard::new(
                limit,
                vec![site_metrics.origin_in_flight.clone(), m.in_flight.clone()],
                &site_metrics.origin_limit,
            ),
            health: Health::default(),
            metrics: m,
            window: LatencyWindow::new(),
            name,
        }
    }

    /// Counts a failure (connect, timeout, 5xx, broken connection); ejects
    /// it when `may_eject` and this makes `eject_after` in a row.
    pub fn failed(&self, now: Instant, config: &BalanceConfig, may_eject: bool) {
        if let Verdict::Ejected(length) = self.health.failed(now, config, may_eject) {
            self.metrics.ejections.inc();
            self.show_health(now);
            tracing::warn!(
                backend = %self.name,
                seconds = length.as_secs(),
                "backend ejected after {} failures in a row",
                config.eject_after
            );
        }
    }

    pub fn succeeded(&self, now: Instant) {
        self.health.succeeded();
        self.show_health(now);
    }

    /// Sets the `digue_backend_healthy` gauge from the health now.
    pub fn show_health(&self, now: Instant) {
        let open = self.health.standing(now) != Standing::Closed;
        self.metrics.healthy.set(i64::from(open));
    }
}

impl Backend {
    /// Fails when the origin's TLS files cannot be used.
    pub fn new(
        origin: &OriginConfig,
        url: &Uri,
        state: Arc<BackendState>,
    ) -> Result<Backend, String> {
        Ok(Backend {
            pool: Pool::new(origin, url, state.guard.limit())?,
            state,
        })
    }
}

impl Candidate for Backend {
    fn name(&self) -> &str {
        &self.state.name
    }

    fn id(&self) -> &str {
        &self.state.id
    }

    fn standing(&self, now: Instant) -> Standing {
        self.state.health.standing(now)
    }

    fn down(&self) -> bool {
        self.state.health.mode() == Mode::Down
    }

    fn busy(&self) -> i64 {
        self.state.guard.busy()
    }
}
