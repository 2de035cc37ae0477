//! One Prometheus registry owned by the app, with typed handles.
//!
//! Label values come only from closed sets (site names from the config, the
//! `as_str()` of outcome enums, status classes): never paths, hosts or IPs.
//! Per-site handles are resolved once when a site is built, so the hit path
//! bumps an atomic instead of hashing label values.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::outcome::{BusyReason, BypassReason, OriginErrorKind, Outcome, StaleReason};

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
    busy: IntCounterVec,
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
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("invariant: valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("invariant: metric names are unique");
    c
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
        let r = Registry::new();
        let origin_seconds = HistogramVec::new(
            HistogramOpts::new(
                "digue_origin_response_seconds",
                "Time from sending a request to the origin to its response headers. \
                 A rising p99 is the first sign of a struggling portal.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
            ]),
            &["site"],
        )
        .expect("invariant: valid metric");
        r.register(Box::new(origin_seconds.clone()))
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
                "Responses sent downstream by status class (2xx..5xx).",
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
                "Failed origin requests, by kind: connect, timeout, protocol, status_5xx.",
                &["site", "kind"],
            ),
            busy: counter(
                &r,
                "digue_busy_pages_total",
                "Busy pages (503 + Retry-After) served instead of making users wait, by why.",
                &["site", "reason"],
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
            coalesced: self.coalesced.with_label_values(&[site]),
            stores: self.cache_stores.with_label_values(&[site]),
            origin_in_flight: self.origin_in_flight.with_label_values(&[site]),
            origin_limit: self.origin_limit.with_label_values(&[site]),
            origin_seconds: self.origin_seconds.with_label_values(&[site]),
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
    pub coalesced: IntCounter,
    pub stores: IntCounter,
    pub origin_in_flight: IntGauge,
    pub origin_limit: IntGauge,
    pub origin_seconds: Histogram,
}

impl SiteMetrics {
    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
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
    pub fn origin_error(&self, kind: OriginErrorKind) {
        self.origin_errors[kind as usize].inc();
    }
}
