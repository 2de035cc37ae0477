//! The request path: site by Host, the gate, cache lookup, coalesced fetch
//! under the origin guard, stale serving, tunnels (WebSocket) past the
//! gate, and the one place where failures become pages.

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, request, response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use crate::admission::gate::{Verdict, Visitor};
use crate::body::{ProxyBody, Stall};
use crate::cache::coalesce::{Failure, Landing, Role};
use crate::cache::fill::{Fetched, Fill, Relay, fetch_head};
use crate::cache::key::CacheKey;
use crate::cache::store::{Entry, Freshness, Lookup};
use crate::cache::{directives, invalidate, policy, serve};
use crate::client_limit::Budget;
use crate::config::CacheRule;
use crate::origin::tunnel::{Opened, open as tunnel_to_origin};
use crate::origin::{
    Answer, Asker, Downstream, UpstreamBody, call_origin, client_ip, forwarded_proto, no_body,
};
use crate::outcome::{
    BusyReason, BypassReason, CacheStatus, Forward, OriginErrorKind, Outcome, StaleReason,
};
use crate::pages::{self, Page, PreQueueView, WaitView};
use crate::site::Site;
use crate::target;
use crate::tunnel::{self, Ask, Lifeline};
use crate::{App, Snapshot};

/// Times a request re-joins a key whose leader vanished or stored another
/// variant, before fetching on its own.
const MAX_ATTEMPTS: usize = 3;

/// Answers one downstream request. Never fails: every error becomes a page.
pub async fn handle(
    app: Arc<App>,
    from: Downstream,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some((host, host_name)) = downstream_host(&req) else {
        return app.pages.load().render(Page::BadRequest, req.headers());
    };
    let snapshot = app.snapshot();
    let Some(site) = snapshot.site_for_host(&host_name) else {
        app.metrics.misdirected.inc();
        return app.pages.load().render(Page::UnknownHost, req.headers());
    };
    let host_key = host_name_and_port(&host);
    let access = snapshot.config.server.access_log.then(|| {
        (
            Instant::now(),
            req.method().clone(),
            req.uri().path().to_owned(),
        )
    });
    let ctx = Ctx {
        app,
        snapshot,
        site,
        host,
        host_key,
        from,
    };
    let res = ctx.serve(req).await;
    if let Some((started, method, path)) = access {
        log_access(&ctx, &method, &path, &res, started);
    }
    res
}

/// One access-log line: never a query string, cookie or full client address
/// (pupils are minors; the network is enough to spot an abuser).
fn log_access(ctx: &Ctx, method: &Method, path: &str, res: &Response<ProxyBody>, started: Instant) {
    let network = match ctx.from.peer.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        std::net::IpAddr::V6(ip) => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    };
    let cache = res
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::info!(
        target: "digue::access",
        site = %ctx.site.config.name,
        %method,
        path = %path,
        status = res.status().as_u16(),
        cache = %cache,
        ms = started.elapsed().as_millis() as u64,
        client = %network,
    );
}

/// The Host a client asked for (`Host`, or the authority of an HTTP/2
/// request), and its lower-cased name without port for site matching.
/// `None` when the request names no host, or two: two `Host` fields (RFC
/// 9112 §3.2), or a target authority (absolute form, HTTP/2 `:authority`)
/// naming another host than `Host` (RFC 9113 §8.3.1). A proxy or filter in
/// front that routes by the other one would check one site and let digue
/// serve another: which of the two is meant is not for digue to guess.
fn downstream_host<B>(req: &Request<B>) -> Option<(HeaderValue, String)> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let authority = req.uri().authority();
    let value = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.clone(),
        (None, _) => HeaderValue::from_str(authority?.as_str()).ok()?,
        (Some(_), Some(_)) => return None,
    };
    let name = host_name(value.to_str().ok()?)?;
    match authority {
        Some(authority) if host_name(authority.as_str())? != name => None,
        _ => Some((value, name)),
    }
}

/// The lower-cased name of a `Host` value, without port or trailing dot;
/// `None` unless it is `name[:port]` or `[ipv6][:port]` with a numeric port
/// (no user info, no list, no second `:`): `b.test:@evil.example` would be
/// site `b` to a reader that cuts at the last `:`, and `evil.example` to an
/// origin building a redirect from it.
fn host_name(raw: &str) -> Option<String> {
    let (name, port) = match raw.strip_prefix('[') {
        Some(rest) => {
            let (inside, after) = rest.split_once(']')?;
            let ipv6 = !inside.is_empty()
                && inside
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if !ipv6 {
                return None;
            }
            (&raw[..inside.len() + 2], after.strip_prefix(':'))
        }
        None => match raw.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (raw, None),
        },
    };
    if let Some(port) = port
        && (!(1..=5).contains(&port.len()) || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    if port.is_none() && name.len() != raw.len() {
        // `[::1]x`: something after the literal that is no port.
        return None;
    }
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && (name.starts_with('[')
            || name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    valid.then_some(name)
}

fn with_cookies(mut res: Response<ProxyBody>, cookies: Vec<HeaderValue>) -> Response<ProxyBody> {
    for c in cookies {
        res.headers_mut().append(header::SET_COOKIE, c);
    }
    res
}

fn host_name_and_port(host: &HeaderValue) -> String {
    String::from_utf8_lossy(host.as_bytes()).to_ascii_lowercase()
}

/// What one request is served with.
struct Ctx {
    app: Arc<App>,
    snapshot: Arc<Snapshot>,
    site: Arc<Site>,
    host: HeaderValue,
    /// The Host as the cache key sees it: lower-cased, port included, since
    /// the full Host reaches the origin and may shape the page.
    host_key: String,
    from: Downstream,
}

impl Ctx {
    /// Whom this request's calls to the origin are made for.
    fn asker(&self) -> Asker<'_> {
        Asker {
            host: &self.host,
            from: self.from,
            trusted: &self.snapshot.config.server.trusted_proxies,
            routing: &self.snapshot.config.server.routing_headers,
        }
    }

    /// The admission gate, then the cache and origin.
    async fn serve(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        let raw = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let reading = match target::read(raw) {
            Ok(reading) => reading,
            Err(why) => {
                self.site.metrics.refused_target(why);
                let res = self
                    .app
                    .pages
                    .load()
                    .render(Page::BadRequest, &parts.headers);
                self.site.metrics.response(res.status());
                return res;
            }
        };
        // Refused before the gate: nobody queues for what cannot be served.
        let ask = tunnel::asked(&parts);
        if let Some(ask) = &ask
            && !self.site.config.tunnels.allows(&ask.protocol)
        {
            let res = self
                .app
                .pages
                .load()
                .render(Page::UpgradeRefused, &parts.headers);
            self.site.metrics.response(res.status());
            return res;
        }
        let mut pass_cookies = Vec::new();
        if let Some((gate, cfg, live)) = self.site.waiting_room() {
            let trusted = &self.snapshot.config.server.trusted_proxies;
            let visitor = Visitor {
                headers: &parts.headers,
                target: raw,
                gated: self.site.gates.gate(raw, &reading),
                ip: client_ip(self.from, &parts.headers, trusted),
                tls: self.from.tls,
                wants_json: pages::wants_json(&parts.headers),
            };
            let m = &self.site.metrics;
            let keys = self.app.keys.load();
            match gate
                .check(
                    cfg,
                    &live,
                    &self.site.config.name,
                    &keys,
                    &visitor,
                    m,
                    self.app.clock.now(),
                )
                .await
            {
                Verdict::Proceed(cookies) => pass_cookies = cookies,
                Verdict::AdmittedJson(cookies) => {
                    self.site.metrics.response(StatusCode::OK);
                    return with_cookies(pages::admitted_json(), cookies);
                }
                Verdict::Wait(w) => {
                    let view = WaitView {
                        closed: w.closed,
                        ahead: w.ahead,
                        eta: w.eta,
                        drift: self.site.pilot.rate_drift(),
                        retry_after: w.retry_after,
                        approximate: w.approximate,
                        portal: &cfg.portal_name,
                        message: cfg.message.as_deref(),
                        target: visitor.target,
                    };
                    let page = self.app.pages.load().waiting(&view, &parts.headers);
                    return with_cookies(page, w.cookies);
                }
                Verdict::PreQueue(p) => {
                    let view = PreQueueView {
                        local_time: p.event.local_time(),
                        opens_at: &p.event.spec.opens_at,
                        opens_in: p.opens_in,
                        retry_after: p.retry_after,
                        approximate: p.approximate,
                        portal: &cfg.portal_name,
                        message: p.event.message().or(cfg.message.as_deref()),
                        target: visitor.target,
                    };
                    let page = self.app.pages.load().prequeue(&view, &parts.headers);
                    return with_cookies(page, p.cookies);
                }
            }
        }
        let mut res = match ask {
            Some(ask) => self.tunnel(parts, &ask).await,
            None => {
                let rule = target::rule_for(
                    &self.site.config.cache.rules,
                    &reading,
                    self.site.config.case_sensitive,
                );
                self.serve_admitted(parts, body, rule).await
            }
        };
        directives::strip_downstream(
            res.headers_mut(),
            self.site.config.cache.strip_cdn_cache_control,
        );
        // Waiting-room answers are counted apart (digue_waiting_pages_total):
        // a 5xx alert must not fire on every well-handled surge.
        self.site.metrics.response(res.status());
        with_cookies(res, pass_cookies)
    }

    /// The cache and the origin, for a request the gate let through, under
    /// the cache rule its target falls under.
    async fn serve_admitted(
        &self,
        parts: request::Parts,
        body: Incoming,
        rule: Option<&CacheRule>,
    ) -> Response<ProxyBody> {
        if let Err(reason) = policy::classify(&parts, &self.site.config, rule) {
            return self
                .forward(&parts, Either::Left(body), Forward::Bypass(reason))
                .await;
        }
        drop(body);
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let trusted = &self.snapshot.config.server.trusted_proxies;
        let scheme = forwarded_proto(self.from, &parts.headers, trusted);
        let primary = CacheKey::primary(&self.site.config.name, scheme, &self.host_key, target);
        if self.app.store.is_uncacheable(&primary) {
            let fwd = Forward::Bypass(BypassReason::Uncacheable);
            return self.forward(&parts, no_body(), fwd).await;
        }
        for _ in 0..MAX_ATTEMPTS {
            let (stale, fwd, flight) = match self.app.store.lookup(&primary, &parts.headers) {
                Lookup::Found(entry) => match entry.freshness(self.app.clock.instant()) {
                    Freshness::Fresh { ttl } => {
                        return self.cached_response(
                            &parts,
                            &entry,
                            CacheStatus::Hit { ttl },
                            Outcome::Hit,
                        );
                    }
                    Freshness::StaleWhileRevalidate => {
                        self.refresh_in_background(&parts, &primary, &entry);
                        return self.stale(&parts, &entry, StaleReason::Revalidating);
                    }
                    Freshness::Stale => {
                        let key = entry.key.clone();
                        (Some(entry), Forward::Stale, key)
                    }
                },
                Lookup::VaryMiss(variant) => (None, Forward::VaryMiss, variant),
                Lookup::Miss => (None, Forward::UriMiss, primary.clone()),
            };
            if parts.method == Method::HEAD {
                return self.forward(&parts, no_body(), fwd).await;
            }
            if parts.headers.contains_key(header::RANGE) {
                // Only a stored copy is cut: a fill must not store a part.
                let fwd = Forward::Bypass(BypassReason::Range);
                return self.forward(&parts, no_body(), fwd).await;
            }
            match self.app.coalescer.join(&flight) {
                Role::Leader(leader) => {
                    if let Some(refused) = self.over_budget(&parts, fwd, stale.as_ref()) {
                        // Its followers find the key abandoned and lead in turn.
                        return refused;
                    }
                    let fetched = self
                        .fill(&parts, &primary, stale.clone(), fwd)
                        .detached(leader)
                        .await;
                    return self.respond(&parts, fetched, stale, fwd);
                }
                Role::Follower(follower) => {
                    self.site.metrics.coalesced.inc();
                    match follower.wait(self.follow_deadline()).await {
                        Some(Landing::Stored(entry)) => {
                            if entry.key
                                == self.storage_key(&primary, entry.vary.as_deref(), &parts)
                            {
                                let status = CacheStatus::Forwarded {
                                    fwd,
                                    status: entry.status.as_u16(),
                                    stored: false,
                                    collapsed: true,
                                };
                                return self.cached_response(
                                    &parts,
                                    &entry,
                                    status,
                                    Outcome::Collapsed,
                                );
                            }
                        }
                        Some(Landing::Abandoned) => {}
                        Some(Landing::Uncacheable) => {
                            let fwd = Forward::Bypass(BypassReason::Uncacheable);
                            return self.forward(&parts, no_body(), fwd).await;
                        }
                        Some(Landing::Failed(failure)) => {
                            return self.failed(&parts, stale, failure, fwd);
                        }
                        None => {
                            let failure = Failure::Busy(BusyReason::WaitTimeout);
                            return self.failed(&parts, stale, failure, fwd);
                        }
                    }
                }
                Role::Full => {
                    let failure = Failure::Busy(BusyReason::WaitersFull);
                    return self.failed(&parts, stale, failure, fwd);
                }
            }
        }
        // Leaders kept vanishing: fetch alone rather than loop.
        self.forward(&parts, no_body(), Forward::UriMiss).await
    }

    /// How long a follower waits for its leader: the leader's own worst case.
    fn follow_deadline(&self) -> std::time::Duration {
        let c = &self.site.config;
        c.origin_queue_timeout + c.origin.timeout * 2
    }

    fn storage_key(
        &self,
        primary: &CacheKey,
        vary: Option<&[HeaderName]>,
        parts: &request::Parts,
    ) -> CacheKey {
        match vary {
            Some(names) => primary.variant(names, &parts.headers),
            None => primary.clone(),
        }
    }

    /// Starts one background fetch to refresh `entry`, unless one is running.
    fn refresh_in_background(
        &self,
        parts: &request::Parts,
        primary: &CacheKey,
        entry: &Arc<Entry>,
    ) {
        let Role::Leader(leader) = self.app.coalescer.join(&entry.key) else {
            return;
        };
        self.fill(parts, primary, Some(entry.clone()), Forward::Stale)
            .in_background(leader);
    }

    /// The fill of `primary` for this request, should it lead the fetch.
    fn fill(
        &self,
        parts: &request::Parts,
        primary: &CacheKey,
        stale: Option<Arc<Entry>>,
        fwd: Forward,
    ) -> Fill {
        Fill {
            app: self.app.clone(),
            snapshot: self.snapshot.clone(),
            site: self.site.clone(),
            host: self.host.clone(),
            from: self.from,
            head: fetch_head(parts),
            primary: primary.clone(),
            stale,
            fwd,
        }
    }

    /// Turns the leader's fetch into the leader's own response.
    fn respond(
        &self,
        parts: &request::Parts,
        fetched: Fetched,
        stale: Option<Arc<Entry>>,
        fwd: Forward,
    ) -> Response<ProxyBody> {
        match fetched {
            Fetched::Cached(entry, status) => {
                self.cached_response(parts, &entry, status, Outcome::Miss)
            }
            Fetched::Relay(relay) => self.relay(relay, Outcome::Miss),
            Fetched::Direct(mut res, status) => {
                self.site.metrics.request(Outcome::Miss);
                status.append_to(res.headers_mut());
                res
            }
            Fetched::ServerError(relay) => {
                match stale.filter(|e| e.usable_if_error(self.app.clock.instant())) {
                    Some(entry) => self.stale(parts, &entry, StaleReason::OriginError),
                    None => self.relay(relay, Outcome::Miss),
                }
            }
            Fetched::Failed(failure) => self.failed(parts, stale, failure, fwd),
        }
    }

    /// Forwards a request that does not use the cache, under the origin guard.
    async fn forward(
        &self,
        parts: &request::Parts,
        body: UpstreamBody,
        fwd: Forward,
    ) -> Response<ProxyBody> {
        let site = &self.site;
        let m = &site.metrics;
        let outcome = match fwd {
            Forward::Bypass(BypassReason::Method) => Outcome::Pass,
            Forward::Bypass(_) => Outcome::Bypass,
            Forward::UriMiss | Forward::VaryMiss | Forward::Stale => Outcome::Miss,
        };
        if let Forward::Bypass(reason) = fwd {
            m.bypass(reason);
        }
        if let Some(refused) = self.over_budget(parts, fwd, None) {
            return refused;
        }
        match call_origin(
            site.route(self.app.clock.instant()),
            parts,
            body,
            self.asker(),
        )
        .await
        {
            Ok(answer) => {
                let invalidated = fwd == Forward::Bypass(BypassReason::Method)
                    && self.invalidate_after(parts, &answer.head);
                self.relay_answer(answer, fwd, outcome, invalidated)
            }
            Err(failure) => self.failed(parts, None, failure, fwd),
        }
    }

    /// Marks stale what the answer to an unsafe method made out of date;
    /// whether it applied (RFC 9111 §4.4).
    fn invalidate_after(&self, parts: &request::Parts, head: &response::Parts) -> bool {
        if !invalidate::applies(&parts.method, head.status) {
            return false;
        }
        let trusted = &self.snapshot.config.server.trusted_proxies;
        let at = invalidate::Origin {
            site: &self.site.config.name,
            scheme: forwarded_proto(self.from, &parts.headers, trusted),
            host: &self.host_key,
        };
        invalidate::invalidate(&self.app, &at, parts, &head.headers);
        true
    }

    /// Relays the origin's answer to a request that did not use the cache.
    fn relay_answer(
        &self,
        answer: Answer,
        fwd: Forward,
        outcome: Outcome,
        invalidated: bool,
    ) -> Response<ProxyBody> {
        let Answer { head, body, slot } = answer;
        let status = match invalidated {
            true => CacheStatus::Invalidated {
                status: head.status.as_u16(),
            },
            false => CacheStatus::Forwarded {
                fwd,
                status: head.status.as_u16(),
                stored: false,
                collapsed: false,
            },
        };
        self.relay(
            Relay {
                head,
                prefix: None,
                body,
                slot,
                status,
            },
            outcome,
        )
    }

    /// Tunnels a request that asks to switch protocols (and may: see
    /// `serve`) to the origin, under the site's `max_websockets`. Once the
    /// origin switched, the client gets its answer (101, or 200 to an
    /// HTTP/2 extended CONNECT) and a task copies both ways; any other
    /// answer is relayed as it came.
    async fn tunnel(&self, mut parts: request::Parts, ask: &Ask) -> Response<ProxyBody> {
        let m = &self.site.metrics;
        let fwd = Forward::Bypass(BypassReason::Upgrade);
        m.bypass(BypassReason::Upgrade);
        let (Some(downstream), Some(lifeline)) = (
            parts.extensions.remove::<OnUpgrade>(),
            parts.extensions.remove::<Lifeline>(),
        ) else {
            // This connection cannot switch (HTTP/1.0).
            return self
                .app
                .pages
                .load()
                .render(Page::UpgradeRefused, &parts.headers);
        };
        if let Some(refused) = self.over_budget(&parts, fwd, None) {
            return refused;
        }
        let config = &self.site.config.tunnels;
        let Some(permit) = self.site.tunnels.admit(config.max_websockets) else {
            let failure = Failure::Busy(BusyReason::TunnelsFull);
            return self.failed(&parts, None, failure, fwd);
        };
        let route = self.site.route(self.app.clock.instant());
        let (head, upstream) =
            match tunnel_to_origin(route, &parts, &ask.protocol, self.asker()).await {
                Ok(Opened::Switched { head, upstream }) => (head, upstream),
                Ok(Opened::Answered(answer)) => {
                    return self.relay_answer(answer, fwd, Outcome::Bypass, false);
                }
                Err(failure) => return self.failed(&parts, None, failure, fwd),
            };
        permit.opened();
        m.request(Outcome::Bypass);
        tunnel::splice(downstream, upstream, config.idle_timeout, lifeline, permit);
        let mut res = Response::from_parts(head, ProxyBody::empty());
        if ask.connect {
            // RFC 8441 §5: the stream is the tunnel; no handshake headers.
            *res.status_mut() = StatusCode::OK;
            res.headers_mut().remove("sec-websocket-accept");
        } else {
            let headers = res.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            if let Ok(protocol) = HeaderValue::from_str(&ask.protocol) {
                headers.insert(header::UPGRADE, protocol);
            }
        }
        let status = CacheStatus::Forwarded {
            fwd,
            status: StatusCode::SWITCHING_PROTOCOLS.as_u16(),
            stored: false,
            collapsed: false,
        };
        status.append_to(res.headers_mut());
        res
    }

    /// The 429 of a client that spent its budget of origin-bound requests
    /// (`[site.client_limit]`), asked only of a request about to go to the
    /// origin: never of a hit, a waiting-room answer or a staff network
    /// (`bypass_cidrs`). A `stale` copy that may stand in for a busy origin
    /// is served instead: the client is refused the origin, not the page.
    fn over_budget(
        &self,
        parts: &request::Parts,
        fwd: Forward,
        stale: Option<&Arc<Entry>>,
    ) -> Option<Response<ProxyBody>> {
        let limiter = self.site.client_limit.as_ref()?;
        let trusted = &self.snapshot.config.server.trusted_proxies;
        let ip = client_ip(self.from, &parts.headers, trusted);
        let staff = self.site.config.admission.as_ref();
        if staff.is_some_and(|a| a.bypass_cidrs.iter().any(|c| c.contains(ip))) {
            return None;
        }
        let key = limiter.key(&parts.headers, &self.site.config.session_cookies, ip);
        let now = self.app.clock.instant();
        let Budget::Spent(wait) = limiter.check(key, now) else {
            return None;
        };
        if let Some(entry) = stale.filter(|e| e.usable_if_error(now)) {
            return Some(self.stale(parts, entry, StaleReason::OriginBusy));
        }
        self.site.metrics.client_limited.inc();
        let secs = wait
            .as_secs()
            .saturating_add(u64::from(wait.subsec_nanos() > 0));
        let pages = self.app.pages.load();
        let mut res = pages.too_fast(&parts.headers, secs.max(1));
        let detail = "client-limited";
        CacheStatus::NotServed { fwd, detail }.append_to(res.headers_mut());
        Some(res)
    }

    fn relay(&self, relay: Relay, outcome: Outcome) -> Response<ProxyBody> {
        self.site.metrics.request(outcome);
        let origin = self.site.config.origin.timeout;
        let stall = Stall {
            origin,
            client: self.site.config.client_send_timeout.min(origin),
        };
        let body = ProxyBody::upstream(
            relay.prefix,
            relay.body,
            Some(relay.slot),
            stall,
            &self.app.stall_watch,
        );
        let mut res = Response::from_parts(relay.head, body);
        relay.status.append_to(res.headers_mut());
        res
    }

    /// A response built from a stored entry (hit, stale, collapsed, stored).
    fn cached_response(
        &self,
        parts: &request::Parts,
        entry: &Entry,
        status: CacheStatus,
        outcome: Outcome,
    ) -> Response<ProxyBody> {
        self.site.metrics.request(outcome);
        serve::respond(entry, parts, status, self.app.clock.instant())
    }

    fn stale(
        &self,
        parts: &request::Parts,
        entry: &Entry,
        reason: StaleReason,
    ) -> Response<ProxyBody> {
        self.site.metrics.stale(reason);
        self.cached_response(
            parts,
            entry,
            CacheStatus::StaleServed(reason),
            Outcome::Stale,
        )
    }

    /// Nothing fresh came back: a stale copy if one may stand in, else a page.
    fn failed(
        &self,
        parts: &request::Parts,
        stale: Option<Arc<Entry>>,
        failure: Failure,
        fwd: Forward,
    ) -> Response<ProxyBody> {
        let reason = match failure {
            Failure::Busy(_) => Some(StaleReason::OriginBusy),
            Failure::Origin(_) => Some(StaleReason::OriginError),
            Failure::RequestBody => None,
        };
        if let Some(reason) = reason
            && let Some(entry) = stale.filter(|e| e.usable_if_error(self.app.clock.instant()))
        {
            return self.stale(parts, &entry, reason);
        }
        let m = &self.site.metrics;
        let (page, detail) = match failure {
            Failure::Busy(reason) => {
                m.busy(reason);
                m.request(Outcome::Busy);
                (Page::Busy, "origin-busy")
            }
            Failure::Origin(kind) => {
                m.request(Outcome::Error);
                match kind {
                    OriginErrorKind::Timeout => (Page::OriginTimeout, "origin-timeout"),
                    OriginErrorKind::Connect
                    | OriginErrorKind::Tls
                    | OriginErrorKind::Protocol
                    | OriginErrorKind::Status5xx => (Page::OriginDown, "origin-unreachable"),
                }
            }
            Failure::RequestBody => {
                m.request(Outcome::Error);
                (Page::BadRequest, "bad-request-body")
            }
        };
        let mut res = self.app.pages.load().render(page, &parts.headers);
        CacheStatus::NotServed { fwd, detail }.append_to(res.headers_mut());
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_lower_cased_without_port() {
        let req = Request::get("/")
            .header("host", "ENT.Example.fr:8080")
            .body(())
            .expect("valid");
        let (value, name) = downstream_host(&req).expect("valid host");
        assert_eq!(value, "ENT.Example.fr:8080", "passed through unchanged");
        assert_eq!(name, "ent.example.fr");
        let bad = Request::get("/")
            .header("host", "a b")
            .body(())
            .expect("valid");
        assert!(downstream_host(&bad).is_none());
        let h2 = Request::get("https://portal.example/x")
            .body(())
            .expect("valid");
        assert_eq!(
            downstream_host(&h2).map(|h| h.1),
            Some("portal.example".to_owned())
        );
    }

    #[test]
    fn a_host_that_is_not_a_name_and_a_numeric_port_names_none() {
        for bad in [
            "b.test:@evil.example",
            "b.test:80@evil.example",
            "b.test:80:81",
            "b.test:",
            "b.test:123456",
            "b.test:8o",
            "user@b.test",
            "[::1]x",
            "[::1]:x",
            "[zz]",
            "b.test, evil.example",
        ] {
            assert_eq!(host_name(bad), None, "{bad:?}");
        }
        for (good, name) in [
            ("B.test:8080", "b.test"),
            ("b.test.", "b.test"),
            ("[::1]:8443", "[::1]"),
            ("[2001:db8::1]", "[2001:db8::1]"),
            ("192.0.2.7:80", "192.0.2.7"),
        ] {
            assert_eq!(host_name(good).as_deref(), Some(name), "{good:?}");
        }
    }

    #[test]
    fn a_request_naming_two_hosts_names_none() {
        let two = Request::get("/")
            .header("host", "a.example")
            .header("host", "a.example")
            .body(())
            .expect("valid");
        assert!(downstream_host(&two).is_none(), "two Host fields");
        let other = Request::get("http://b.example/x")
            .header("host", "a.example")
            .body(())
            .expect("valid");
        assert!(downstream_host(&other).is_none(), "authority b, Host a");
        let same = Request::get("http://A.example:8080/x")
            .header("host", "a.example.")
            .body(())
            .expect("valid");
        assert_eq!(
            downstream_host(&same).map(|h| h.1),
            Some("a.example".to_owned()),
            "the same name, whatever its case, port or trailing dot"
        );
    }
}
