//! One Prometheus registry owned by the app, with typed handles.
//!
//! Label values come only from closed sets (site names from the config, the
//! `as_str()` of outcome enums, status classes): never paths, hosts or IPs.
//! Per-site handles are resolved once when a site is built, so the hit path
//! bumps an atomic instead of hashing label values.

#[cfg(target_os = "linux")]
use prometheus::process_collector::ProcessCollector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::outcome::{
    AdmitHow, BusyReason, BypassReason, OriginErrorKind, Outcome, Refusal, StaleReason, Unreadable,
};

/// Every metric family of the process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    responses: IntCounterVec,
    stale: IntCounterVec,
    bypass: IntCounterVec,
    coalesced: IntCounterVec,
    cache_stores: IntCounterVec,
    origin_in_flight: IntGaugeVec,
    origin_limit: IntGaugeVec,
    origin_seconds: HistogramVec,
    origin_errors: IntCounterVec,
    origin_retries: IntCounterVec,
    affinity_moved: IntCounterVec,
    autopilot: AutopilotFamilies,
    websockets_open: IntGaugeVec,
    websockets_total: IntCounterVec,
    backend_requests: IntCounterVec,
    backend_in_flight: IntGaugeVec,
    backend_seconds: HistogramVec,
    backend_ejections: IntCounterVec,
    backend_healthy: IntGaugeVec,
    busy: IntCounterVec,
    line_waiting: IntGaugeVec,
    tickets: IntCounterVec,
    throttled: IntCounterVec,
    admitted: IntCounterVec,
    missed: IntCounterVec,
    refused: IntCounterVec,
    admission_rate: IntGaugeVec,
    admissions_measured: prometheus::GaugeVec,
    sessions: IntGaugeVec,
    wait_seconds: HistogramVec,
    eta_error: HistogramVec,
    waiting_pages: IntCounterVec,
    refused_targets: IntCounterVec,
    client_limited: IntCounterVec,
    /// Entries in the shared cache, read from the store at scrape time.
    pub cache_entries: IntGauge,
    /// Weighted bytes in the shared cache, read from the store at scrape time.
    pub cache_bytes: IntGauge,
    /// Entries dropped to make room (capacity), not by expiry.
    pub cache_evictions: IntCounter,
    /// Downstream connections currently open on the public listener.
    pub connections_open: IntGauge,
    /// Downstream connections accepted since start.
    pub connections_total: IntCounter,
    /// Requests whose Host matched no site.
    pub misdirected: IntCounter,
    /// Config reloads by outcome: applied, refused.
    pub reloads: IntCounterVec,
    /// Admin API calls that changed something, by what: admission, origin, purge.
    pub admin_changes: IntCounterVec,
    /// 1 when the shared store answers (cluster mode), 0 when failing over.
    pub cluster_up: IntGauge,
    /// Live nodes seen in the shared store.
    pub cluster_nodes: IntGauge,
    /// Times the shared store lost its state and was fenced.
    pub cluster_epoch: IntGauge,
    /// Round-trips to Redis made by this node.
    pub redis_calls: IntCounter,
    /// Autopilot rates dropped: sent under a lease another node holds now.
    pub fenced_rates: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("invariant: valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("invariant: metric names are unique");
    c
}

/// A per-site gauge of fractional values.
fn float_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::GaugeVec {
    let g = prometheus::GaugeVec::new(Opts::new(name, help), &["site"])
        .expect("invariant: valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("invariant: metric names are unique");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("invariant: valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("invariant: metric names are unique");
    g
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics::unlabelled();
        // Families without a site label are listed from the start, so
        // dashboards see the first reload or admin change as an increase.
        for outcome in ["applied", "refused"] {
            m.reloads.with_label_values(&[outcome]);
        }
        for kind in ["admission", "origin", "backend", "autopilot", "purge"] {
            m.admin_changes.with_label_values(&[kind]);
        }
        m
    }

    fn unlabelled() -> Metrics {
        let r = Registry::new();
        // CPU, memory and file descriptors of this process: a surge that ends
        // in EMFILE or in the OOM killer shows here first.
        #[cfg(target_os = "linux")]
        r.register(Box::new(ProcessCollector::new(
            std::process::id() as i32,
            "digue",
        )))
        .expect("invariant: registered once");
        let latency = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
                ]),
                labels,
            )
            .expect("invariant: valid metric");
            r.register(Box::new(h.clone()))
                .expect("invariant: metric names are unique");
            h
        };
        let origin_seconds = latency(
            "digue_origin_response_seconds",
            "Time from sending a request to the origin to its response headers. \
             A rising p99 is the first sign of a struggling portal.",
            &["site"],
        );
        let backend_seconds = latency(
            "digue_backend_response_seconds",
            "Time from sending a request to one backend to its response headers.",
            &["site", "backend"],
        );
        let wait_buckets = vec![
            1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
        ];
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(wait_buckets.clone()),
                &["site"],
            )
            .expect("invariant: valid metric");
            r.register(Box::new(h.clone()))
                .expect("invariant: metric names are unique");
            h
        };
        let admissions_measured = prometheus::GaugeVec::new(
            Opts::new(
                "digue_admissions_per_second",
                "Admissions per second measured from claims over the last minute (the \
                 configured rate until enough samples). ETAs are computed from it.",
            ),
            &["site"],
        )
        .expect("invariant: valid metric");
        r.register(Box::new(admissions_measured.clone()))
            .expect("invariant: metric names are unique");
        let single = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("invariant: valid metric");
            r.register(Box::new(c.clone()))
                .expect("invariant: metric names are unique");
            c
        };
        let single_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("invariant: valid metric");
            r.register(Box::new(g.clone()))
                .expect("invariant: metric names are unique");
            g
        };
        Metrics {
            requests: counter(
                &r,
                "digue_requests_total",
                "Requests answered, by how they were served: hit, stale, miss, collapsed \
                 (waited for another request's fetch), bypass (not cacheable), pass (non-GET), \
                 busy (busy page), error (origin unreachable).",
                &["site", "outcome"],
            ),
            responses: counter(
                &r,
                "digue_responses_total",
                "Responses sent downstream by status class (2xx..5xx), waiting-room answers \
                 excluded (they are digue_waiting_pages_total), so a 5xx alert means trouble.",
                &["site", "class"],
            ),
            stale: counter(
                &r,
                "digue_cache_stale_total",
                "Stale copies served, by why: revalidating (stale-while-revalidate), \
                 origin_error (stale-if-error), origin_busy (no origin slot in time).",
                &["site", "reason"],
            ),
            bypass: counter(
                &r,
                "digue_cache_bypass_total",
                "Requests that skipped the shared cache, by why.",
                &["site", "reason"],
            ),
            coalesced: counter(
                &r,
                "digue_cache_coalesced_total",
                "Requests that waited for another request's origin fetch instead of making their own.",
                &["site"],
            ),
            cache_stores: counter(
                &r,
                "digue_cache_stores_total",
                "Responses stored (or refreshed by a 304) in the shared cache.",
                &["site"],
            ),
            origin_in_flight: gauge(
                &r,
                "digue_origin_in_flight",
                "Requests in flight to the origin now; never above digue_origin_limit.",
                &["site"],
            ),
            origin_limit: gauge(
                &r,
                "digue_origin_limit",
                "The configured origin_concurrency.",
                &["site"],
            ),
            origin_seconds,
            origin_errors: counter(
                &r,
                "digue_origin_errors_total",
                "Failed origin requests, by kind: connect, tls, timeout, protocol, status_5xx.",
                &["site", "kind"],
            ),
            origin_retries: counter(
                &r,
                "digue_origin_retries_total",
                "Requests sent to the origin a second time, on a fresh connection, after the \
                 first try failed before any answer (a GET or HEAD, or a request never sent).",
                &["site"],
            ),
            autopilot: AutopilotFamilies {
                enabled: gauge(
                    &r,
                    "digue_autopilot_enabled",
                    "1 while the autopilot steers the site, 0 while pinned or off.",
                    &["site"],
                ),
                rate: gauge(
                    &r,
                    "digue_autopilot_rate_per_minute",
                    "The admission rate the autopilot set (new users per minute).",
                    &["site"],
                ),
                origin_limit: gauge(
                    &r,
                    "digue_autopilot_origin_limit",
                    "The concurrency limit the autopilot set for each backend.",
                    &["site", "backend"],
                ),
                latency: float_gauge(
                    &r,
                    "digue_autopilot_latency_seconds",
                    "The origin's p90 latency over the admission loop's last interval \
                     (failures read as the worst).",
                ),
                target: float_gauge(
                    &r,
                    "digue_autopilot_target_latency_seconds",
                    "The latency target the admission loop steers to.",
                ),
                error_rate: float_gauge(
                    &r,
                    "digue_autopilot_error_rate",
                    "Share of origin requests that failed over the admission loop's last \
                     interval (timeouts, connect failures, 5xx).",
                ),
                decisions: counter(
                    &r,
                    "digue_autopilot_decisions_total",
                    "Autopilot decisions, by loop (concurrency, admission), direction (up, \
                     down, hold, probe) and reason.",
                    &["site", "loop", "direction", "reason"],
                ),
            },
            affinity_moved: counter(
                &r,
                "digue_affinity_moved_total",
                "Requests of a session sent to another backend than the one holding it \
                 (ejected, failing its health check or set down): the user may have to \
                 log in again.",
                &["site"],
            ),
            websockets_open: gauge(
                &r,
                "digue_websockets_open",
                "WebSocket (and other upgraded) tunnels open or opening, capped by the \
                 site's max_websockets. They hold no origin slot.",
                &["site"],
            ),
            websockets_total: counter(
                &r,
                "digue_websockets_total",
                "Tunnels the origin accepted (answered 101) since start.",
                &["site"],
            ),
            backend_requests: counter(
                &r,
                "digue_backend_requests_total",
                "Requests sent to each backend (the address as written in the config).",
                &["site", "backend"],
            ),
            backend_in_flight: gauge(
                &r,
                "digue_backend_in_flight",
                "Requests in flight to each backend; origin_concurrency caps each.",
                &["site", "backend"],
            ),
            backend_seconds,
            backend_ejections: counter(
                &r,
                "digue_backend_ejections_total",
                "Times a backend was ejected after eject_after failures in a row.",
                &["site", "backend"],
            ),
            backend_healthy: gauge(
                &r,
                "digue_backend_healthy",
                "1 while a backend takes requests, 0 while it is ejected, failing its \
                 health check or set down.",
                &["site", "backend"],
            ),
            busy: counter(
                &r,
                "digue_busy_pages_total",
                "Busy pages (503 + Retry-After) served instead of making users wait, by why.",
                &["site", "reason"],
            ),
            line_waiting: gauge(
                &r,
                "digue_line_waiting",
                "Tickets waiting for their turn (read at scrape time).",
                &["site"],
            ),
            tickets: counter(
                &r,
                "digue_tickets_issued_total",
                "Tickets handed to newcomers who could not enter at once.",
                &["site"],
            ),
            throttled: counter(
                &r,
                "digue_tickets_throttled_total",
                "Newcomers refused a new ticket because their network (/24, /64) asked for too \
                 many (cookie-less bots); they still get the waiting page.",
                &["site"],
            ),
            admitted: counter(
                &r,
                "digue_admitted_total",
                "Visitors let onto a gated path, by how: immediate, line, bypass, passthrough.",
                &["site", "how"],
            ),
            missed: counter(
                &r,
                "digue_turns_missed_total",
                "Turns not claimed within the claim window (people who gave up); each slot \
                 went to the next ticket.",
                &["site"],
            ),
            refused: counter(
                &r,
                "digue_tokens_refused_total",
                "Ticket or pass cookies worth nothing, by why: invalid (forged, tampered, other \
                 site, unknown key) or expired.",
                &["site", "reason"],
            ),
            admission_rate: gauge(
                &r,
                "digue_admission_rate_per_minute",
                "The configured new_users_per_minute.",
                &["site"],
            ),
            admissions_measured,
            sessions: gauge(
                &r,
                "digue_sessions_active",
                "Passes used within session_duration (read at scrape time).",
                &["site"],
            ),
            wait_seconds: histogram(
                "digue_wait_seconds",
                "Time from ticket to admission, as lived by the people who waited.",
            ),
            eta_error: histogram(
                "digue_wait_eta_error_seconds",
                "Absolute difference between the wait predicted when the ticket was issued \
                 and the actual wait.",
            ),
            waiting_pages: counter(
                &r,
                "digue_waiting_pages_total",
                "Waiting-room answers (page or JSON poll), by state: queued, closed.",
                &["site", "state"],
            ),
            refused_targets: counter(
                &r,
                "digue_refused_targets_total",
                "Requests refused with 400 before anything else because no origin should see \
                 their target, by reason: control (a control character, raw or escaped), \
                 bad_escape (a broken %-escape in the path), above_root (a .. above the root).",
                &["site", "reason"],
            ),
            client_limited: counter(
                &r,
                "digue_client_limited_total",
                "Origin-bound requests refused with 429 because their client spent its \
                 [site.client_limit] budget.",
                &["site"],
            ),
            cache_entries: single_gauge(
                "digue_cache_entries",
                "Entries in the shared cache (all sites).",
            ),
            cache_bytes: single_gauge(
                "digue_cache_bytes",
                "Bytes held by the shared cache (all sites), headers included; bounded by cache.max_size.",
            ),
            cache_evictions: single(
                "digue_cache_evictions_total",
                "Entries evicted to stay under cache.max_size. Growing fast: the cache is too small.",
            ),
            connections_open: single_gauge(
                "digue_connections_open",
                "Downstream connections open on the public listener.",
            ),
            connections_total: single(
                "digue_connections_total",
                "Downstream connections accepted on the public listener.",
            ),
            misdirected: single(
                "digue_misdirected_requests_total",
                "Requests whose Host matched no configured site (answered 421).",
            ),
            reloads: counter(
                &r,
                "digue_config_reloads_total",
                "Config reloads (SIGHUP, POST /admin/reload) by outcome: applied, refused. \
                 A refused reload leaves the running config in place; the log says why.",
                &["outcome"],
            ),
            admin_changes: counter(
                &r,
                "digue_admin_changes_total",
                "Changes made through the admin API, by kind: admission, origin, purge.",
                &["kind"],
            ),
            cluster_up: single_gauge(
                "digue_cluster_store_up",
                "Cluster mode: 1 when the shared store (Redis) answers; 0 while this node \
                 fails static (or open/closed, per cluster.on_store_failure).",
            ),
            cluster_nodes: single_gauge(
                "digue_cluster_nodes",
                "Cluster mode: live nodes seen in the shared store (heartbeats within 5 s).",
            ),
            cluster_epoch: single_gauge(
                "digue_cluster_epoch",
                "Cluster mode: the shared lines' epoch; it goes up when Redis lost its state \
                 and counters were fenced from the nodes' memory.",
            ),
            redis_calls: single(
                "digue_cluster_redis_calls_total",
                "Cluster mode: round-trips to Redis made by this node since start \
                 (view refreshes, arrivals, claims, publishes).",
            ),
            fenced_rates: single(
                "digue_cluster_fenced_rates_total",
                "Cluster mode: autopilot rates dropped because the node that sent them had \
                 lost its lease to another (it stalled past the lease's expiry).",
            ),
            registry: r,
        }
    }

    /// The handles of one site, resolved once.
    pub fn site(&self, site: &str) -> SiteMetrics {
        let by = |vec: &IntCounterVec, label: &str| vec.with_label_values(&[site, label]);
        SiteMetrics {
            requests: Outcome::ALL.map(|o| by(&self.requests, o.as_str())),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| by(&self.responses, c)),
            stale: StaleReason::ALL.map(|r| by(&self.stale, r.as_str())),
            bypass: BypassReason::ALL.map(|r| by(&self.bypass, r.as_str())),
            busy: BusyReason::ALL.map(|r| by(&self.busy, r.as_str())),
            origin_errors: OriginErrorKind::ALL.map(|k| by(&self.origin_errors, k.as_str())),
            admitted: AdmitHow::ALL.map(|h| by(&self.admitted, h.as_str())),
            refused: Refusal::ALL.map(|r| by(&self.refused, r.as_str())),
            refused_targets: Unreadable::ALL.map(|r| by(&self.refused_targets, r.as_str())),
            waiting_pages: ["queued", "closed"].map(|s| by(&self.waiting_pages, s)),
            tickets: self.tickets.with_label_values(&[site]),
            throttled: self.throttled.with_label_values(&[site]),
            missed: self.missed.with_label_values(&[site]),
            line_waiting: self.line_waiting.with_label_values(&[site]),
            admission_rate: self.admission_rate.with_label_values(&[site]),
            admissions_measured: self.admissions_measured.with_label_values(&[site]),
            sessions: self.sessions.with_label_values(&[site]),
            wait_seconds: self.wait_seconds.with_label_values(&[site]),
            eta_error: self.eta_error.with_label_values(&[site]),
            coalesced: self.coalesced.with_label_values(&[site]),
            stores: self.cache_stores.with_label_values(&[site]),
            origin_in_flight: self.origin_in_flight.with_label_values(&[site]),
            origin_limit: self.origin_limit.with_label_values(&[site]),
            origin_seconds: self.origin_seconds.with_label_values(&[site]),
            origin_retries: self.origin_retries.with_label_values(&[site]),
            affinity_moved: self.affinity_moved.with_label_values(&[site]),
            websockets_open: self.websockets_open.with_label_values(&[site]),
            websockets_total: self.websockets_total.with_label_values(&[site]),
            client_limited: self.client_limited.with_label_values(&[site]),
        }
    }

    /// The autopilot's handles for one site.
    pub fn autopilot(&self, site: &str) -> AutopilotMetrics {
        let a = &self.autopilot;
        AutopilotMetrics {
            site: site.to_owned(),
            enabled: a.enabled.with_label_values(&[site]),
            rate: a.rate.with_label_values(&[site]),
            latency: a.latency.with_label_values(&[site]),
            target: a.target.with_label_values(&[site]),
            error_rate: a.error_rate.with_label_values(&[site]),
            origin_limit: a.origin_limit.clone(),
            decisions: a.decisions.clone(),
        }
    }

    /// The handles of one backend of a site.
    pub fn backend(&self, site: &str, backend: &str) -> BackendMetrics {
        let labels = [site, backend];
        BackendMetrics {
            requests: self.backend_requests.with_label_values(&labels),
            in_flight: self.backend_in_flight.with_label_values(&labels),
            seconds: self.backend_seconds.with_label_values(&labels),
            ejections: self.backend_ejections.with_label_values(&labels),
            healthy: self.backend_healthy.with_label_values(&labels),
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("invariant: encoding into a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Pre-resolved handles for one site.
pub struct SiteMetrics {
    requests: [IntCounter; Outcome::ALL.len()],
    responses: [IntCounter; 5],
    stale: [IntCounter; StaleReason::ALL.len()],
    bypass: [IntCounter; BypassReason::ALL.len()],
    busy: [IntCounter; BusyReason::ALL.len()],
    origin_errors: [IntCounter; OriginErrorKind::ALL.len()],
    admitted: [IntCounter; AdmitHow::ALL.len()],
    refused: [IntCounter; Refusal::ALL.len()],
    waiting_pages: [IntCounter; 2],
    refused_targets: [IntCounter; Unreadable::ALL.len()],
    pub tickets: IntCounter,
    pub throttled: IntCounter,
    pub missed: IntCounter,
    pub line_waiting: IntGauge,
    pub admission_rate: IntGauge,
    pub admissions_measured: prometheus::Gauge,
    pub sessions: IntGauge,
    pub wait_seconds: Histogram,
    pub eta_error: Histogram,
    pub coalesced: IntCounter,
    pub stores: IntCounter,
    pub origin_in_flight: IntGauge,
    pub origin_limit: IntGauge,
    pub origin_seconds: Histogram,
    pub origin_retries: IntCounter,
    pub affinity_moved: IntCounter,
    pub websockets_open: IntGauge,
    pub websockets_total: IntCounter,
    pub client_limited: IntCounter,
}

/// The autopilot's metric families.
struct AutopilotFamilies {
    enabled: IntGaugeVec,
    rate: IntGaugeVec,
    origin_limit: IntGaugeVec,
    latency: prometheus::GaugeVec,
    target: prometheus::GaugeVec,
    error_rate: prometheus::GaugeVec,
    decisions: IntCounterVec,
}

/// The autopilot's handles for one site; per backend and per decision
/// label, resolved when used (a few times a second at most).
pub struct AutopilotMetrics {
    site: String,
    pub enabled: IntGauge,
    pub rate: IntGauge,
    pub latency: prometheus::Gauge,
    pub target: prometheus::Gauge,
    pub error_rate: prometheus::Gauge,
    origin_limit: IntGaugeVec,
    decisions: IntCounterVec,
}

impl AutopilotMetrics {
    pub fn origin_limit(&self, backend: &str) -> IntGauge {
        self.origin_limit.with_label_values(&[&self.site, backend])
    }

    pub fn decided(&self, kind: &str, direction: &str, reason: &str) {
        self.decisions
            .with_label_values(&[&self.site, kind, direction, reason])
            .inc();
    }
}

/// Pre-resolved handles for one backend of a site.
pub struct BackendMetrics {
    pub requests: IntCounter,
    pub in_flight: IntGauge,
    pub seconds: Histogram,
    pub ejections: IntCounter,
    pub healthy: IntGauge,
}

impl SiteMetrics {
    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
    }
    pub fn requests_of(&self, outcome: Outcome) -> u64 {
        self.requests[outcome as usize].get()
    }
    pub fn response(&self, status: http::StatusCode) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.responses[class].inc();
    }
    pub fn stale(&self, reason: StaleReason) {
        self.stale[reason as usize].inc();
    }
    pub fn bypass(&self, reason: BypassReason) {
        self.bypass[reason as usize].inc();
    }
    pub fn busy(&self, reason: BusyReason) {
        self.busy[reason as usize].inc();
    }
    /// Busy pages served because the origin had no room (no slot within
    /// the queue timeout, too many waiting on one fetch), since start.
    pub fn busy_total(&self) -> u64 {
        [BusyReason::QueueTimeout, BusyReason::WaitersFull]
            .iter()
            .map(|r| self.busy[*r as usize].get())
            .sum()
    }
    pub fn origin_error(&self, kind: OriginErrorKind) {
        self.origin_errors[kind as usize].inc();
    }
    pub fn admitted(&self, how: AdmitHow) {
        self.admitted[how as usize].inc();
    }
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }
    pub fn refused_target(&self, why: Unreadable) {
        self.refused_targets[why as usize].inc();
    }
    pub fn waiting_page(&self, closed: bool) {
        self.waiting_pages[usize::from(closed)].inc();
    }
}
