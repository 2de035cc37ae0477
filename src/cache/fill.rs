//! Filling the cache: the coalesced leader's one fetch of a key, its
//! refresh by a 304, and storing what may be stored. The request path
//! (`proxy.rs`) decides who leads and turns what was fetched into responses.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, request, response};
use hyper::body::Incoming;

use crate::body::{CollectError, Collected, ProxyBody, collect_limited};
use crate::cache::coalesce::{Failure, Landing, Leader};
use crate::cache::key::{CacheKey, Vary};
use crate::cache::policy;
use crate::cache::store::Entry;
use crate::config::CacheRule;
use crate::guard::OriginPermit;
use crate::origin::{Answer, Asker, Downstream, call_origin, no_body};
use crate::outcome::{BusyReason, CacheStatus, Forward, OriginErrorKind};
use crate::share::ConnectionSlots;
use crate::site::Site;
use crate::target;
use crate::{App, Snapshot};

/// Request headers that make a fetch conditional or partial; removed from
/// fetches meant for the cache, which must get the whole response.
const CONDITIONALS: [HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Headers of a 304 that must not replace the stored ones (RFC 9111 §3.2
/// lets a cache keep its own framing; some origins send a bogus
/// `Content-Length: 0` or `Content-Type` on 304).
const KEPT_ON_304: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
];

/// The fill of one key, with what it needs from the request that started
/// it. Owned: the fetch runs in a task of its own, which outlives that
/// request when its client hangs up.
pub struct Fill {
    /// Holds the store that is filled.
    pub app: Arc<App>,
    /// The config the request came under: trusted proxies, object size limit.
    pub snapshot: Arc<Snapshot>,
    pub site: Arc<Site>,
    /// The Host the client asked for: the origin is asked for the same.
    pub host: HeaderValue,
    pub from: Downstream,
    /// The request as the cache asks it: see [`fetch_head`].
    pub head: request::Parts,
    /// The key without its `Vary` variant.
    pub primary: CacheKey,
    /// The stored copy this fetch may refresh.
    pub stale: Option<Arc<Entry>>,
    pub fwd: Forward,
}

/// What the leader's fetch produced.
pub enum Fetched {
    /// Stored, or refreshed by a 304.
    Cached(Arc<Entry>, CacheStatus),
    /// A response not to be stored: relayed as it streams.
    Relay(Relay),
    /// The stored body under headers that may not be stored (a 304 that
    /// brought a Set-Cookie): for this client only.
    Direct(Response<ProxyBody>, CacheStatus),
    /// A 5xx from the origin: a stale copy beats it when there is one.
    ServerError(Relay),
    /// No response at all.
    Failed(Failure),
}

impl Fetched {
    /// Drops the `Set-Cookie` headers of an answer that goes to this client
    /// only.
    fn without_set_cookie(mut self) -> Fetched {
        let headers = match &mut self {
            Fetched::Relay(r) | Fetched::ServerError(r) => &mut r.head.headers,
            Fetched::Direct(res, _) => res.headers_mut(),
            Fetched::Cached(..) | Fetched::Failed(_) => return self,
        };
        headers.remove(header::SET_COOKIE);
        self
    }
}

/// An origin response relayed as it streams, not stored.
pub struct Relay {
    pub head: response::Parts,
    /// What was already read of the body, when it proved too big to store.
    pub prefix: Option<Bytes>,
    pub body: Incoming,
    pub slot: OriginPermit,
    pub status: CacheStatus,
}

impl Fill {
    /// The leader's fetch, in a task of its own: when the leader's client
    /// goes away (a reload during a surge), the fetch its followers wait
    /// for goes on, instead of sending each of them to the origin alone.
    pub async fn detached(self, leader: Leader) -> Fetched {
        let task = tokio::spawn(self.fetch(leader));
        match task.await {
            Ok(fetched) => fetched,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => Fetched::Failed(Failure::Origin(OriginErrorKind::Protocol)),
        }
    }

    /// Refreshes the stale copy in a task of its own that nobody waits for.
    pub fn in_background(self, leader: Leader) {
        tokio::spawn(async move {
            // The result is stored by fetch(); nobody waits for the response.
            let _ = self.fetch(leader).await;
        });
    }

    /// The leader's fetch: one request to the origin for everybody waiting.
    async fn fetch(self, leader: Leader) -> Fetched {
        let fetched = self.fetch_once(leader).await;
        // A session holder under a shared rule was fetched for as nobody: a
        // cookie the origin sets for nobody must not replace their session.
        let sessions = &self.site.config.session_cookies;
        let fetched = if policy::has_session_cookie(&self.head.headers, sessions) {
            fetched.without_set_cookie()
        } else {
            fetched
        };
        // A purged copy is served stale for one refetch only.
        if let (Some(old), Fetched::Failed(_) | Fetched::ServerError(_)) = (&self.stale, &fetched) {
            old.refetch_failed();
        }
        fetched
    }

    /// The cache rule of this request's target (read before the gate; it
    /// reads the same here).
    fn rule(&self) -> Option<&CacheRule> {
        let site = &self.site.config;
        target::read(self.head.uri.path())
            .ok()
            .and_then(|reading| target::rule_for(&site.cache.rules, &reading, site.case_sensitive))
    }

    /// Whether a shared rule makes this copy one for session holders too.
    fn shared_rule(&self) -> bool {
        self.rule().is_some_and(|r| r.shared)
    }

    async fn fetch_once(&self, leader: Leader) -> Fetched {
        let site = &self.site;
        // What the origin is asked: the cache's request, adjusted below.
        let mut asked = fetch_head(&self.head);
        // The copy is for everyone, so it is asked for as nobody. Under a
        // shared rule (the one way a session holder gets here) with no
        // cookie at all: any cookie the origin reads — `remember=`, a
        // session cookie spelled in another case — would shape a copy
        // stored for everyone, keyed on nothing of it. Elsewhere the
        // session cookies go, in any case.
        let sessions = &site.config.session_cookies;
        if self.shared_rule() {
            asked.headers.remove(header::COOKIE);
        } else {
            crate::admission::cookies::remove(&mut asked.headers, |name| {
                sessions
                    .iter()
                    .any(|s| s.as_bytes().eq_ignore_ascii_case(name))
            });
        }
        asked.headers.remove(header::AUTHORIZATION);
        let stale = &self.stale;
        if let Some(old) = stale {
            add_validators(&mut asked.headers, &old.headers);
        }
        let asker = Asker {
            host: &self.host,
            from: self.from,
            trusted: &self.snapshot.config.server.trusted_proxies,
            routing: &self.snapshot.config.server.routing_headers,
        };
        let (res, body, slot) = match call_origin(
            site.route(self.app.clock.instant()),
            &asked,
            no_body(),
            asker,
        )
        .await
        {
            Ok(Answer { head, body, slot }) => (head, body, slot),
            // The leader's own share is full, not the origin: another
            // follower may fetch for the others.
            Err(failure @ Failure::Busy(BusyReason::ClientShare)) => {
                leader.land(Landing::Abandoned);
                return Fetched::Failed(failure);
            }
            Err(failure) => {
                leader.land(Landing::Failed(failure));
                return Fetched::Failed(failure);
            }
        };
        let status = res.status.as_u16();
        let not_stored = CacheStatus::Forwarded {
            fwd: self.fwd,
            status,
            stored: false,
            collapsed: false,
        };
        if res.status.is_server_error() {
            leader.land(Landing::Failed(Failure::Origin(OriginErrorKind::Status5xx)));
            return Fetched::ServerError(Relay {
                head: res,
                prefix: None,
                body,
                slot,
                status: not_stored,
            });
        }
        let now = self.app.clock.now();
        let rule = self.rule();
        if let (StatusCode::NOT_MODIFIED, Some(old)) = (res.status, stale) {
            drop((body, slot));
            let merged = merge_304(old, &res);
            if let Ok(plan) = policy::plan(&asked, &merged, &site.config, rule, now.system) {
                let entry = Arc::new(Entry::new(
                    old.key.clone(),
                    old.status,
                    merged.headers,
                    old.body.clone(),
                    plan,
                    now,
                ));
                return self.store(entry, leader, status);
            }
            // The refreshed headers forbid storing (a Set-Cookie, `private`):
            // this client alone gets the old body with them.
            self.app.store.mark_uncacheable(&self.primary, Some(old));
            leader.land(Landing::Uncacheable);
            let mut direct = Response::new(ProxyBody::Full(Some(old.body.clone())));
            *direct.status_mut() = merged.status;
            *direct.headers_mut() = merged.headers;
            return Fetched::Direct(direct, not_stored);
        }
        let Ok(plan) = policy::plan(&asked, &res, &site.config, rule, now.system) else {
            self.app
                .store
                .mark_uncacheable(&self.primary, stale.as_deref());
            leader.land(Landing::Uncacheable);
            return Fetched::Relay(Relay {
                head: res,
                prefix: None,
                body,
                slot,
                status: not_stored,
            });
        };
        let limit = self.snapshot.config.cache.max_object_size;
        match collect_limited(body, limit, site.config.origin.timeout).await {
            Ok(Collected::Complete(bytes)) => {
                drop(slot);
                let key = match &plan.vary {
                    Vary::Headers(names) => self.primary.variant(names, &self.head.headers),
                    Vary::None | Vary::Any => self.primary.clone(),
                };
                let entry = Arc::new(Entry::new(key, res.status, res.headers, bytes, plan, now));
                self.store(entry, leader, status)
            }
            Ok(Collected::TooBig { prefix, rest }) => {
                self.app
                    .store
                    .mark_uncacheable(&self.primary, stale.as_deref());
                leader.land(Landing::Uncacheable);
                Fetched::Relay(Relay {
                    head: res,
                    prefix: Some(prefix),
                    body: rest,
                    slot,
                    status: not_stored,
                })
            }
            Err(e) => {
                let kind = match e {
                    CollectError::Stalled => OriginErrorKind::Timeout,
                    CollectError::Broken(_) => OriginErrorKind::Protocol,
                };
                site.metrics.origin_error(kind);
                leader.land(Landing::Failed(Failure::Origin(kind)));
                Fetched::Failed(Failure::Origin(kind))
            }
        }
    }

    fn store(&self, entry: Arc<Entry>, leader: Leader, status: u16) -> Fetched {
        self.app.store.insert(&self.primary, entry.clone());
        self.site.metrics.stores.inc();
        leader.land(Landing::Stored(entry.clone()));
        let status = CacheStatus::Forwarded {
            fwd: self.fwd,
            status,
            stored: true,
            collapsed: false,
        };
        Fetched::Cached(entry, status)
    }
}

/// The head of a fetch meant for the cache: a plain GET of the same target,
/// without the client's conditionals (the cache needs the whole response).
pub fn fetch_head(parts: &request::Parts) -> request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = Method::GET;
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    // The leader's fetch counts against its own connection's share.
    if let Some(share) = parts.extensions.get::<ConnectionSlots>() {
        head.extensions.insert(share.clone());
    }
    for name in &CONDITIONALS {
        head.headers.remove(name);
    }
    head
}

/// Makes a refresh conditional on the stored validators (RFC 9111 §4.3.1).
fn add_validators(req: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        req.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(header::LAST_MODIFIED) {
        req.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

/// The stored response updated with a 304's headers (RFC 9111 §4.3.4).
fn merge_304(old: &Entry, res: &response::Parts) -> response::Parts {
    let (mut merged, ()) = Response::new(()).into_parts();
    merged.status = old.status;
    merged.headers = old.headers.clone();
    for name in res.headers.keys() {
        if KEPT_ON_304.contains(name) {
            continue;
        }
        merged.headers.remove(name);
        for value in res.headers.get_all(name) {
            merged.headers.append(name, value.clone());
        }
    }
    merged
}
