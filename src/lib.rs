//! digue: a caching reverse proxy and surge shield for fragile school portals.
//!
//! # Layout
//!
//! Each module owns one stage of the request path (see `DESIGN.md`):
//!
//! - [`config`]: the TOML file, raw layer → validated [`config::Config`], every error with its key path.
//! - [`server`]: the public listener (HTTP/1.1 + h2c), limits, graceful drain.
//! - [`proxy`]: the request path: site by Host, cache, coalescing, stale
//!   serving; the one place where failures become pages.
//! - [`cache`]: RFC 9111 decisions ([`cache::policy`]), keys and `Vary`
//!   ([`cache::key`]), the bounded store ([`cache::store`]), one fetch per cold
//!   key ([`cache::coalesce`]).
//! - [`guard`]: the origin concurrency cap and its queue deadline.
//! - [`origin`]: the pooled upstream client and header hygiene.
//! - [`body`]: the response body type, and reading origin bodies with a limit.
//! - [`site`]: the runtime of one `[[site]]`.
//! - [`outcome`]: how a request was served, as enums: `Cache-Status`, metric labels.
//! - [`pages`]: the busy and error pages, French first, JSON on request.
//! - [`metrics`]: the Prometheus registry and typed handles.
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`.
//! - [`demo`]: the fragile demo portal behind `digue demo`.

pub mod admin;
pub mod admission;
pub mod body;
pub mod cache;
pub mod config;
pub mod demo;
pub mod guard;
pub mod metrics;
pub mod origin;
pub mod outcome;
pub mod pages;
pub mod proxy;
pub mod server;
pub mod site;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cache::coalesce::Coalescer;
use crate::cache::store::Store;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pages::Pages;
use crate::site::Site;

/// Everything the request path shares, built once at start.
pub struct App {
    /// The config and the sites built from it, swapped whole. State that
    /// must outlive a config change (the cache, in-flight fetches) lives in
    /// the fields below, not in the snapshot.
    snapshot: ArcSwap<Snapshot>,
    /// Stored responses of every site.
    pub store: Store,
    /// Fetches in flight, one per key.
    pub coalescer: Arc<Coalescer>,
    pub metrics: Arc<Metrics>,
    pub pages: Pages,
}

/// One consistent view of the config and its sites.
pub struct Snapshot {
    pub config: Config,
    pub sites: Vec<Arc<Site>>,
}

impl Snapshot {
    /// The site answering a Host (lower-case, without port).
    pub fn site_for_host(&self, host: &str) -> Option<Arc<Site>> {
        self.config
            .site_for_host(host)
            .and_then(|i| self.sites.get(i).cloned())
    }
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let metrics = Arc::new(Metrics::new());
        let sites = config
            .sites
            .iter()
            .map(|s| Arc::new(Site::new(s.clone(), &metrics)))
            .collect();
        let store = Store::new(
            config.cache.max_size,
            config.cache.hit_for_miss,
            metrics.cache_evictions.clone(),
        );
        Arc::new(App {
            coalescer: Coalescer::new(config.cache.max_waiters_per_key),
            store,
            pages: Pages::new(),
            snapshot: ArcSwap::from_pointee(Snapshot { config, sites }),
            metrics,
        })
    }

    /// The current config and sites; cheap (one atomic increment).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }
}

/// A started proxy: its bound addresses and a way to stop it.
pub struct Running {
    /// The public listener's address (useful when the config said port 0).
    pub listen: SocketAddr,
    /// The admin listener's address, when configured.
    pub admin: Option<SocketAddr>,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    public: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (bounded by
    /// `server.shutdown_grace`), and returns when done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.public.await;
        if let Some(admin) = self.admin_task {
            admin.abort();
        }
    }
}

/// Binds the listeners and starts serving in background tasks.
pub async fn start(config: Config) -> io::Result<Running> {
    let public = TcpListener::bind(config.server.listen).await?;
    let admin = match config.server.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let listen = public.local_addr()?;
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let app = App::new(config);
    let (stop, stopped) = watch::channel(false);
    let public = tokio::spawn(server::serve(public, app.clone(), stopped));
    let admin_task = admin.map(|l| tokio::spawn(admin::serve(l, app.clone())));
    Ok(Running {
        listen,
        admin: admin_addr,
        app,
        stop,
        public,
        admin_task,
    })
}
