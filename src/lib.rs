//! digue: a caching reverse proxy and surge shield for fragile school portals.
//!
//! # Layout
//!
//! Each module owns one stage of the request path (see `DESIGN.md`), and
//! imports go one way (`tests/layering.rs` checks it): `config` at the
//! bottom, `App` (this file) at the top, handed to every stage.
//!
//! The request path, in order:
//! - [`server`]: the public listeners (HTTP/1.1 + h2c, TLS), limits, graceful drain.
//! - [`proxy`]: site by Host, the gate, cache lookup, coalescing roles, stale
//!   serving; the one place where failures become pages.
//! - [`admission`]: the waiting room: admission budget, signed tickets and
//!   passes, the FIFO line (in process, or shared through Redis), the
//!   per-request decision, the signing keys.
//! - [`cache`]: RFC 9111 decisions ([`cache::policy`]) on strictly read and
//!   targeted fields ([`cache::directives`]), keys and `Vary`
//!   ([`cache::key`]), the bounded store ([`cache::store`]), one fetch per cold
//!   key ([`cache::coalesce`]), the leader's fetch that fills it ([`cache::fill`]),
//!   invalidation after unsafe methods ([`cache::invalidate`]), byte ranges
//!   cut from stored copies ([`cache::range`]).
//! - [`origin`]: the one call to the origin (a slot on a backend, timeout,
//!   one safe retry, latency and error metrics); a site's backends with
//!   their balancing, session affinity, passive and active health
//!   (`backends`, `backend`, `balance`, `health`, `probe`); the pool per
//!   backend by kind of connection (`upstream`, `connection`), TLS toward
//!   an `https://` origin ([`origin::tls`]: roots, client certificate,
//!   preflight), header hygiene (`headers`), a tunnel's upgrade request
//!   ([`origin::tunnel`]).
//! - [`client_limit`]: one client's budget of origin-bound requests
//!   (`[site.client_limit]`), keyed by session or network, bounded in memory.
//! - [`guard`]: a backend's concurrency cap and its queue deadline.
//! - [`body`]: the response body type, and reading origin bodies with a limit.
//! - [`pages`]: the waiting room, busy and error pages, French first, JSON on request.
//! - [`tunnel`]: WebSocket and other `Upgrade` tunnels, the client's side:
//!   what asks to switch, the `max_websockets` cap, the copy both ways
//!   with its idle timeout and shutdown grace (the origin's side is
//!   `origin::tunnel`).
//!
//! What the path stands on:
//! - [`config`]: the TOML file, raw layer → validated [`config::Config`],
//!   split by section and by lifetime (read once, origin, live); every error
//!   with its key path. Pure: no I/O beyond reading the file.
//! - [`preflight`]: the checks that read other files (certificates, secret,
//!   pages), each owned by its module, run by `check`, `run` and reload.
//! - [`site`]: the runtime of one `[[site]]`, and the cell of its running
//!   live settings.
//! - [`clock`]: the one place time is read; tests move it forward.
//! - [`outcome`]: how a request was served, as enums: `Cache-Status`, metric labels.
//! - [`closed_enum`]: enums whose `ALL` and labels come from one list.
//! - [`metrics`]: the Prometheus registry and typed handles.
//! - [`tls`]: the listener's rustls setup, ALPN, certificates by SNI,
//!   reloaded on SIGHUP; the PEM reading and crypto provider the origin's TLS
//!   shares.
//!
//! Around it:
//! - [`reload`]: changes at run time: a reload of the file (validate,
//!   preflight, swap) and live settings (one site's cell).
//! - [`autopilot`]: the pace the portal can take, found live: each backend's
//!   origin concurrency limit (fast loop, latency gradient) and the site's
//!   admission rate (slow loop, AIMD), with their decisions in words. Pure:
//!   time and observations come in as arguments.
//! - [`pilot`]: each site's autopilot at work (its running targets, its
//!   controllers, its decisions, its metrics) and the loop that drives
//!   every site's.
//! - [`cluster`]: several nodes, one line: the Redis link ([`cluster`]'s
//!   `link`), and the loops that apply what the other nodes say (`sync`).
//! - [`opening`]: scheduled openings on time: each due draw, and an
//!   event's admission rate from its opening to its closing.
//! - [`admin`]: the admin listener: `/metrics`, `/healthz`, `/readyz`, `/admin/*`.
//! - [`console`]: the operator's page on the admin listener (`GET /`), its
//!   poll (`/admin/console`) and the last 30 minutes it charts.
//! - [`demo`]: the fragile demo portal behind `digue demo`: connections, load
//!   and overload, a capacity that moves on a schedule, its own counters
//!   (`/__demo/stats`), routes, sessions; its pages, CSS, JS and logo as
//!   files in `src/demo/assets/`.
//! - [`surge`]: `digue surge`, the simulator of a Monday-morning surge.

pub mod admin;
pub mod admission;
pub mod autopilot;
pub mod body;
pub mod cache;
pub mod client_limit;
pub mod clock;
pub mod closed_enum;
pub mod cluster;
pub mod config;
pub mod console;
pub mod demo;
pub mod guard;
pub mod metrics;
pub mod opening;
pub mod origin;
pub mod outcome;
pub mod pages;
pub mod pilot;
pub mod preflight;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod share;
pub mod site;
pub mod surge;
pub mod target;
pub mod tls;
pub mod tunnel;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::state::{self, SavedLines};
use crate::admission::token::Keys;
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
    /// Templates and languages; reloaded with the config.
    pub pages: ArcSwap<Pages>,
    /// Signs tickets and passes; reloaded with the config (key rotation).
    pub keys: ArcSwap<Keys>,
    /// The config file, for `POST /admin/reload` and SIGHUP.
    pub config_path: Option<PathBuf>,
    /// `DIGUE_ADMIN_TOKEN`: without it every `/admin/` call is refused.
    pub admin_token: Option<String>,
    /// Serialises config changes (reloads, live settings), so a live
    /// change never lands on a site a reload is replacing. Never held
    /// across `.await`.
    pub changing: std::sync::Mutex<()>,
    /// Counts applied reloads; whoever keeps live settings of its own (the
    /// cluster) watches it to put them back after the file replaced them.
    pub reloaded: watch::Sender<u64>,
    /// The TLS listener's certificates, swapped on reload.
    pub tls: std::sync::OnceLock<Arc<tls::Resolver>>,
    /// The shared store, in cluster mode.
    pub cluster: Option<Arc<cluster::Cluster>>,
    /// Set when shutdown starts: `/readyz` answers 503 from then on, so a
    /// load balancer stops sending users to a node that no longer accepts.
    pub draining: std::sync::atomic::AtomicBool,
    /// Watches every relayed origin body for stalls, in one task.
    pub stall_watch: Arc<body::StallWatch>,
    /// What the request path reads the time from.
    pub clock: clock::Clock,
    /// The console's last 30 minutes of every site, sampled while the
    /// admin listener runs.
    pub history: console::history::History,
    /// This app itself, for the tasks it spawns.
    me: std::sync::Weak<App>,
}

/// What `start` needs besides the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config_path: Option<PathBuf>,
    pub admin_token: Option<String>,
    /// The system's, unless a test moves it (see [`clock`]).
    pub clock: clock::Clock,
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
    /// Builds the app: keys, saved lines, pages, sites. Fails on what the
    /// config check cannot see (an unreadable secret, state or page file).
    pub fn new(config: Config, options: Options) -> Result<Arc<App>, String> {
        let metrics = Arc::new(Metrics::new());
        let (keys, shared_key) = admission::load_keys(config.server.secret_file.as_deref())?;
        let gated = config.sites.iter().any(|s| s.admission.is_some());
        if gated && !shared_key {
            tracing::warn!(
                "no DIGUE_SECRET nor server.secret_file: tickets and passes are signed with a \
                 random key and die with this process"
            );
        }
        let cluster = config
            .cluster()
            .map(|c| cluster::Cluster::new(c, metrics.redis_calls.clone()))
            .transpose()?;
        let saved = match &config.restart.server.state_file {
            Some(path) => state::load(path)?,
            None => SavedLines::default(),
        };
        let sites = config
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let restored = saved.lines.get(&s.name).map(|line| {
                    let margin = match (&s.live.admission, saved.clean) {
                        (_, true) | (None, false) => 0,
                        (Some(a), false) => {
                            admission::line::crash_margin(line, a.new_users_per_minute, a.burst)
                        }
                    };
                    (line.clone(), margin)
                });
                let pace = saved.paces.get(&s.name).filter(|_| s.autopilot.enabled);
                let site = Site::new(
                    pilot::resumed(s, pace),
                    &metrics,
                    restored,
                    cluster.as_ref(),
                )
                .map_err(|e| format!("site[{i}]: {e}"))?;
                if let Some(pace) = pace {
                    site.pilot
                        .resume_limits(&site.origin, pace, site.live().origin_concurrency);
                }
                Ok::<_, String>(Arc::new(site))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store = Store::new(
            config.restart.cache.max_size,
            config.restart.cache.hit_for_miss,
            metrics.cache_evictions.clone(),
        );
        let pages = Pages::new(config.server.pages_dir.as_deref())?;
        Ok(Arc::new_cyclic(|me| App {
            me: me.clone(),
            cluster,
            coalescer: Coalescer::new(config.restart.cache.max_waiters_per_key),
            store,
            pages: ArcSwap::from_pointee(pages),
            snapshot: ArcSwap::from_pointee(Snapshot { config, sites }),
            metrics,
            keys: ArcSwap::from_pointee(keys),
            config_path: options.config_path,
            admin_token: options.admin_token.filter(|t| !t.is_empty()),
            clock: options.clock,
            history: console::history(),
            changing: std::sync::Mutex::new(()),
            reloaded: watch::channel(0).0,
            tls: std::sync::OnceLock::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            stall_watch: Arc::default(),
        }))
    }

    /// The lines' counters, for the state file.
    pub fn saved_lines(&self, clean: bool) -> SavedLines {
        let snapshot = self.snapshot();
        let unix = self.clock.now().unix();
        let lines = snapshot
            .sites
            .iter()
            .filter_map(|s| Some((s.config.name.clone(), s.gate.as_ref()?.saved(unix)?)))
            .collect();
        let paces = snapshot
            .sites
            .iter()
            .filter(|s| s.pilot.settings().enabled)
            .map(|s| (s.config.name.clone(), s.pilot.pace(&s.origin, &s.live())))
            .collect();
        SavedLines {
            clean,
            lines,
            paces,
        }
    }

    /// Writes the state file, if one is configured.
    fn save_lines(&self, clean: bool) {
        let snapshot = self.snapshot();
        let Some(path) = &snapshot.config.restart.server.state_file else {
            return;
        };
        if let Err(e) = state::save(path, &self.saved_lines(clean)) {
            tracing::error!(error = %e, path = %path.display(), "cannot save the waiting lines");
        }
    }

    /// Sets the gauges that are read rather than counted.
    pub fn refresh_gauges(&self) {
        let (entries, bytes) = self.store.usage();
        self.metrics
            .cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.metrics
            .cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        let now = self.clock.instant();
        for site in &self.snapshot().sites {
            let Some((gate, cfg, live)) = site.waiting_room() else {
                continue;
            };
            let status = gate.status(cfg, &live, now);
            let m = &site.metrics;
            m.line_waiting
                .set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
            m.admissions_measured.set(status.rate);
            m.sessions
                .set(i64::try_from(gate.sessions_active()).unwrap_or(i64::MAX));
            m.missed.inc_by(gate.take_missed());
            if let Some((epoch, nodes)) = gate.cluster_view() {
                self.metrics
                    .cluster_epoch
                    .set(i64::try_from(epoch).unwrap_or(i64::MAX));
                self.metrics
                    .cluster_nodes
                    .set(i64::try_from(nodes).unwrap_or(i64::MAX));
            }
        }
        if let Some(cluster) = &self.cluster {
            self.metrics.cluster_up.set(i64::from(cluster.up()));
        }
    }

    /// An owning handle on this app, for spawned tasks.
    pub fn me(&self) -> Arc<App> {
        self.me
            .upgrade()
            .expect("invariant: the app outlives its own methods")
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
    /// The TLS listener's address, when configured.
    pub tls: Option<SocketAddr>,
    pub app: Arc<App>,
    stop: watch::Sender<bool>,
    public: JoinHandle<()>,
    tls_task: Option<JoinHandle<()>>,
    admin_task: Option<JoinHandle<()>>,
    cluster_task: Option<JoinHandle<()>>,
    saver: JoinHandle<()>,
    pilot: JoinHandle<()>,
    opening: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (bounded by
    /// `server.shutdown_grace`), and returns when done.
    ///
    /// Panics with the panic of a server task (a listener, the admin
    /// listener, the cluster loop, the state saver) if one panicked: a
    /// panic swallowed here would let a broken server stop "cleanly", and
    /// its tests pass. The lines are then not saved as cleanly stopped.
    pub async fn shutdown(self) {
        self.app
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.stop.send(true);
        let mut ended = vec![self.public.await];
        if let Some(tls) = self.tls_task {
            ended.push(tls.await);
        }
        // These run until stopped: aborted, they end cancelled, unless
        // they had already ended in a panic.
        let stopped = [
            self.admin_task,
            self.cluster_task,
            Some(self.saver),
            Some(self.pilot),
            Some(self.opening),
        ];
        for task in stopped.into_iter().flatten() {
            task.abort();
            ended.push(task.await);
        }
        for end in ended {
            if let Err(e) = end
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        self.app.save_lines(true);
    }
}

/// Binds the listeners and starts serving in background tasks.
pub async fn start(config: Config) -> io::Result<Running> {
    start_with(config, Options::default()).await
}

/// [`start`], with the config file's path and the admin token.
pub async fn start_with(config: Config, options: Options) -> io::Result<Running> {
    let start = &config.restart.server;
    // The public listener last: a client must never connect to a listener
    // that is dropped a moment later because another one failed to bind.
    let admin = match start.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let tls = match (start.tls_listen, &config.server.tls) {
        (Some(listen), Some(settings)) => {
            let (acceptor, resolver) = tls::acceptor(settings).map_err(io::Error::other)?;
            Some((server::bind(listen)?, acceptor, resolver))
        }
        _ => None,
    };
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let tls_addr = tls.as_ref().map(|t| t.0.local_addr()).transpose()?;
    // One cap for both public listeners: it bounds memory, whatever the port.
    let slots = Arc::new(tokio::sync::Semaphore::new(start.max_connections));
    let listen = start.listen;
    let app = App::new(config, options).map_err(io::Error::other)?;
    let public = server::bind(listen)?;
    let listen = public.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    let saver = tokio::spawn(save_lines_every_second(app.clone()));
    let pilot = tokio::spawn(pilot::drive::drive(app.clone()));
    let opening = tokio::spawn(opening::drive(app.clone()));
    let public = tokio::spawn(server::serve(
        public,
        None,
        app.clone(),
        slots.clone(),
        stopped.clone(),
    ));
    let tls_task = tls.map(|(listener, acceptor, resolver)| {
        let _ = app.tls.set(resolver);
        tokio::spawn(server::serve(
            listener,
            Some(acceptor),
            app.clone(),
            slots,
            stopped,
        ))
    });
    let admin_task = admin.map(|l| tokio::spawn(admin::serve(l, app.clone())));
    let cluster_task = app
        .cluster
        .clone()
        .map(|c| tokio::spawn(cluster::run(app.clone(), c)));
    Ok(Running {
        listen,
        admin: admin_addr,
        tls: tls_addr,
        app,
        stop,
        public,
        tls_task,
        admin_task,
        cluster_task,
        saver,
        pilot,
        opening,
    })
}

/// Keeps the state file no more than a second behind the lines.
async fn save_lines_every_second(app: Arc<App>) {
    let mut last = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = app.saved_lines(false);
        if last.as_ref() != Some(&now) {
            app.save_lines(false);
            last = Some(now);
        }
    }
}
