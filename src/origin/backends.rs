//! A site's origin as a set of backends: built from the config (carrying
//! over each backend's state by address across reloads), and the slot a
//! request takes on one of them.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::select_all;
use http::header::HeaderValue;
use tokio::time::Instant;

use super::Route;
use super::backend::{Backend, BackendState};
use super::balance::{self, Choice};
use super::health::Standing;
use crate::cache::coalesce::Failure;
use crate::config::{OriginConfig, SiteConfig};
use crate::guard::{OriginPermit, Saturated};
use crate::metrics::{Metrics, SiteMetrics};
use crate::outcome::{BusyReason, OriginErrorKind};
use crate::share::{NetworkPermit, NetworkShares, network_cap};

/// The client toward one site's origin: one pool and one guard per backend.
pub struct Origin {
    pub(super) backends: Vec<Backend>,
    pub(super) host_override: Option<HeaderValue>,
    pub(super) timeout: Duration,
    /// Breaks ties between equally busy backends: bumped by every choice,
    /// so ties rotate instead of always going to the first.
    ties: AtomicU64,
    /// Slots held by each client network, across the backends; kept over
    /// a reload like the backends' own slots.
    networks: Arc<NetworkShares>,
    /// Percent of the slots one network may hold (100: no cap).
    share_per_network: u8,
}

impl Origin {
    /// `previous`: the site's origin before a reload; a backend of the same
    /// address keeps its slots, health and metric handles.
    pub fn new(
        site: &SiteConfig,
        metrics: &Metrics,
        site_metrics: &SiteMetrics,
        previous: Option<&Origin>,
    ) -> Result<Origin, String> {
        let backends = site
            .origin
            .backends
            .iter()
            .map(|url| {
                let fresh = BackendState::new(
                    url,
                    site.live.origin_concurrency,
                    &site.name,
                    site_metrics,
                    metrics,
                );
                let state = previous
                    .and_then(|p| p.state(&fresh.name))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(fresh));
                Backend::new(&site.origin, url, state)
            })
            .collect::<Result<_, _>>()?;
        Ok(Origin {
            backends,
            host_override: site.origin.host.clone(),
            timeout: site.origin.timeout,
            ties: AtomicU64::new(0),
            networks: previous.map(|p| p.networks.clone()).unwrap_or_default(),
            share_per_network: site.origin_share_per_network,
        })
    }

    /// Whether the TLS files of `config` still hold what every pool was
    /// built from: a CA renewed under the same path must take effect on
    /// reload.
    pub fn tls_unchanged(&self, config: &OriginConfig) -> bool {
        self.backends.iter().all(|b| b.pool.tls_unchanged(config))
    }

    /// Each backend's state, in config order.
    pub fn states(&self) -> impl Iterator<Item = &Arc<BackendState>> {
        self.backends.iter().map(|b| &b.state)
    }

    /// The backend of that name (its address as written in the config).
    pub fn state(&self, name: &str) -> Option<&Arc<BackendState>> {
        self.states().find(|s| s.name == name)
    }

    /// A slot of `client`'s network share, waiting at most `wait` for one;
    /// `None` when the site sets no cap.
    pub(super) async fn network_share(
        &self,
        client: IpAddr,
        wait: Duration,
    ) -> Result<Option<NetworkPermit>, Saturated> {
        if self.share_per_network >= 100 {
            return Ok(None);
        }
        let limit = self.states().map(|s| s.guard.limit()).sum();
        let cap = network_cap(limit, self.share_per_network);
        let network = self.networks.network(client);
        self.networks.acquire(network, cap, wait).await.map(Some)
    }

    /// Sets `origin_concurrency`: each backend's own limit.
    pub fn set_limit(&self, limit: usize) {
        for state in self.states() {
            state.guard.set_limit(limit);
        }
    }

    /// Whether one more backend may be ejected: never half of them or
    /// more, so that a bug that makes every server fail does not empty the
    /// pool.
    pub(super) fn may_eject(&self, now: Instant) -> bool {
        let ejected = self.states().filter(|s| s.health.ejected(now)).count();
        (ejected + 1) * 2 <= self.backends.len()
    }

    /// A slot on the backend for a request whose session lives on `home`,
    /// never on `except`: the home backend's own (the session must stay
    /// there), else the least busy open backend's, else the first slot
    /// freed on any open backend within the queue timeout.
    pub(super) async fn slot(
        &self,
        route: &Route<'_>,
        home: Option<usize>,
        except: Option<usize>,
    ) -> Result<(usize, OriginPermit), Failure> {
        let tie = self.ties.fetch_add(1, Ordering::Relaxed);
        let Some(choice) = balance::choose(&self.backends, home, except, route.now, tie) else {
            // Every backend is set down (or the only other one just failed).
            return Err(Failure::Origin(OriginErrorKind::Connect));
        };
        let wait = route.queue_timeout;
        let busy = Err(Failure::Busy(BusyReason::QueueTimeout));
        let first = choice.index();
        if let Choice::Home(i) = choice {
            return self.backends[i]
                .state
                .guard
                .acquire(wait)
                .await
                .map(|slot| (i, slot))
                .or(busy);
        }
        if let Choice::Moved(_) = choice {
            route.metrics.affinity_moved.inc();
        }
        if let Ok(slot) = self.backends[first]
            .state
            .guard
            .acquire(Duration::ZERO)
            .await
        {
            return Ok((first, slot));
        }
        // The least busy open backend is full, so all are: the first slot
        // freed on any of them.
        let open: Vec<usize> = (0..self.backends.len())
            .filter(|&i| {
                Some(i) != except
                    && self.backends[i].state.health.standing(route.now) == Standing::Open
            })
            .collect();
        if open.len() <= 1 {
            return self.backends[first]
                .state
                .guard
                .acquire(wait)
                .await
                .map(|slot| (first, slot))
                .or(busy);
        }
        let waits = open
            .iter()
            .map(|&i| Box::pin(self.backends[i].state.guard.acquire(wait)));
        match select_all(waits).await {
            (Ok(slot), at, _) => Ok((open[at], slot)),
            (Err(_), _, _) => busy,
        }
    }
}
