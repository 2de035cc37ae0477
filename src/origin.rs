//! The upstream client and the one way to call it ([`call_origin`]): a slot
//! from the origin guard, pooled keep-alive connections, timeouts, and header
//! hygiene in both directions (hop-by-hop removal, `X-Forwarded-*` set by
//! digue from the real connection, never taken from the client, and the
//! [`ROUTING_HEADERS`] of untrusted clients dropped).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version, request, response};
use http_body::Body;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::cache::coalesce::Failure;
use crate::config::{Cidr, SiteConfig};
use crate::guard::{OriginGuard, OriginPermit};
use crate::metrics::SiteMetrics;
use crate::outcome::{BusyReason, OriginErrorKind};

/// A request body toward the origin: the client's stream, or nothing.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// No body toward the origin.
pub fn no_body() -> UpstreamBody {
    Either::Right(Empty::new())
}

/// How long an idle pooled connection is kept. Below the 15-20 s keep-alive
/// of common portal stacks (Tomcat, Apache), so digue closes first and rarely
/// races an origin that is closing the same connection.
const POOL_IDLE: Duration = Duration::from_secs(10);

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Headers some origins obey as the request's own URL, host, scheme, port,
/// path prefix or method: IIS URL Rewrite and Symfony read `X-Original-URL`
/// and `X-Rewrite-URL`, Rails, Django and Spring build links from
/// `X-Forwarded-Port/-Prefix/-Scheme/-Ssl/-Server` or `X-Host`, Express,
/// Symfony and ASP.NET take `X-HTTP-Method-Override` and its kin. None is in
/// the cache key, so one client's value would shape a page stored for
/// everyone (and would let it reach URLs the gates and rules never saw):
/// they are dropped from clients that are not `trusted_proxies`
/// ([`drop_unbelieved`]).
pub const ROUTING_HEADERS: [&str; 11] = [
    "x-original-url",
    "x-rewrite-url",
    "x-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers that say who the client is and what it asked for, which digue
/// sets itself from the real connection (or, for `Forwarded`, drops): a
/// client's own are believed only from `trusted_proxies`.
const FORWARDING_HEADERS: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The downstream connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Downstream {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// Whom a request to the origin is made for, as the origin is told it
/// (`Host`, `X-Forwarded-*`).
#[derive(Clone, Copy)]
pub struct Asker<'a> {
    /// The Host the client asked for.
    pub host: &'a HeaderValue,
    pub from: Downstream,
    /// Proxies whose `X-Forwarded-*` are believed.
    pub trusted: &'a [Cidr],
}

/// A site's way to its origin, borrowed for one call.
#[derive(Clone, Copy)]
pub struct Route<'a> {
    pub origin: &'a Origin,
    /// The site's slots; a call waits at most `queue_timeout` for one.
    pub guard: &'a OriginGuard,
    pub queue_timeout: Duration,
    /// Where the origin's latency and errors are counted.
    pub metrics: &'a SiteMetrics,
}

/// The origin's answer: its head, and its body still streaming with the
/// slot it holds until it ends (the slot rides inside the relayed body).
pub struct Answer {
    pub head: response::Parts,
    pub body: Incoming,
    pub slot: OriginPermit,
}

/// Calls the origin: a slot within the queue deadline, the request built
/// from `head`, the response head within `origin_timeout`. The origin's
/// health as the metrics show it (latency, errors by kind, 5xx) is counted
/// here, for every caller. A 5xx is an answer, not a failure: the cache
/// fill prefers a stale copy to it, a forwarded request relays it.
pub async fn call_origin(
    route: Route<'_>,
    head: &request::Parts,
    body: UpstreamBody,
    asker: Asker<'_>,
) -> Result<Answer, Failure> {
    let Ok(slot) = route.guard.acquire(route.queue_timeout).await else {
        return Err(Failure::Busy(BusyReason::QueueTimeout));
    };
    let req = route.origin.request(head, asker, body);
    let started = Instant::now();
    let sent = route.origin.send(req).await;
    let m = route.metrics;
    m.origin_seconds.observe(started.elapsed().as_secs_f64());
    let (head, body) = match sent {
        Ok(res) => res.into_parts(),
        Err(failure) => {
            if let Failure::Origin(kind) = failure {
                m.origin_error(kind);
            }
            return Err(failure);
        }
    };
    if head.status.is_server_error() {
        m.origin_error(OriginErrorKind::Status5xx);
    }
    Ok(Answer { head, body, slot })
}

/// The connection pool toward an origin, one variant per kind of
/// connection: an HTTPS origin is one more variant, behind the same
/// [`call_origin`].
enum Upstream {
    Http(Client<HttpConnector, UpstreamBody>),
}

impl Upstream {
    async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Upstream::Http(client) => client.request(req).await,
        }
    }
}

/// The client toward one site's origin.
pub struct Origin {
    upstream: Upstream,
    /// `http://host:port` of the origin.
    base: Uri,
    host_override: Option<HeaderValue>,
    timeout: Duration,
}

impl Origin {
    pub fn new(site: &SiteConfig) -> Origin {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(site.origin.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(site.live.origin_concurrency)
            .build(connector);
        Origin {
            upstream: Upstream::Http(client),
            base: site.origin.url.clone(),
            host_override: site.origin.host.clone(),
            timeout: site.origin.timeout,
        }
    }

    /// Builds the request to send upstream from a downstream request's head.
    fn request(
        &self,
        parts: &request::Parts,
        asker: Asker<'_>,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        let Asker {
            host,
            from,
            trusted,
        } = asker;
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut uri = self.base.clone().into_parts();
        uri.path_and_query = path.parse().ok();
        let uri = Uri::from_parts(uri).unwrap_or_else(|_| self.base.clone());

        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        drop_underscored(&mut headers);
        crate::admission::cookies::strip(&mut headers);
        join_cookies(&mut headers);
        headers.insert(
            header::HOST,
            self.host_override.clone().unwrap_or_else(|| host.clone()),
        );
        set_forwarded(&mut headers, host, from, trusted);
        // A body of unknown length (chunked, or an HTTP/2 stream without
        // Content-Length) must be sent chunked: hyper's client would send a
        // GET or HEAD without it, and the origin would not see the request
        // that digue read and classified.
        if !body.is_end_stream() && !headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }

        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        req
    }

    /// Sends a request and waits at most `origin_timeout` for the response head.
    async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, Failure> {
        let origin = |kind| Err(Failure::Origin(kind));
        match tokio::time::timeout(self.timeout, self.upstream.send(req)).await {
            Err(_) => origin(OriginErrorKind::Timeout),
            Ok(Err(e)) if e.is_connect() => origin(OriginErrorKind::Connect),
            Ok(Err(e)) if request_body_failed(&e) => Err(Failure::RequestBody),
            Ok(Err(_)) => origin(OriginErrorKind::Protocol),
            Ok(Ok(mut res)) => {
                strip_hop_by_hop(res.headers_mut());
                Ok(res)
            }
        }
    }
}

/// Whether the client's request body, as hyper's client relayed it, is what
/// failed: hyper reports a failing request body as a user error caused by
/// the body's own error, and the only body digue sends that can fail is the
/// client's (a [`hyper::Error`] from the downstream connection).
fn request_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            return hyper.is_user()
                && std::error::Error::source(hyper)
                    .is_some_and(|cause| cause.is::<hyper::Error>());
        }
        source = err.source();
    }
    false
}

/// HTTP/2 clients may send each cookie as a field of its own; toward an
/// HTTP/1.1 origin they must be one `Cookie` line (RFC 9113 §8.2.3): legacy
/// stacks read only the first and lose the session.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Drops request headers whose name holds an `_`: some origins and gateways
/// (CGI, PHP's `$_SERVER`, some WAFs) read `_` as `-`, so
/// `Transfer_Encoding` or `X_Forwarded_For` would mean to them what digue
/// did not check. The stricter reading wins, as nginx's default does.
fn drop_underscored(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Removes the headers that describe one connection, not the message
/// (RFC 9110 §7.6.1), including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Whether the downstream peer is one of the proxies whose headers about
/// the client are believed.
fn is_trusted(from: Downstream, trusted: &[Cidr]) -> bool {
    let peer = from.peer.ip().to_canonical();
    trusted.iter().any(|c| c.contains(peer))
}

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the nearest untrusted address in its `X-Forwarded-For` chain.
pub fn client_ip(from: Downstream, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = from.peer.ip().to_canonical();
    if !is_trusted(from, trusted) {
        return peer;
    }
    let chain = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect::<Vec<_>>();
    chain
        .iter()
        .rev()
        .find(|ip| !trusted.iter().any(|c| c.contains(**ip)))
        .or(chain.first())
        .copied()
        .unwrap_or(peer)
}

/// The scheme the origin is told in `X-Forwarded-Proto`: what a trusted
/// proxy in front said, else the downstream connection's own. Origins build
/// redirects and absolute links from it, so the cache key includes it.
pub fn forwarded_proto(from: Downstream, headers: &HeaderMap, trusted: &[Cidr]) -> &'static str {
    let claimed = headers
        .get(&X_FORWARDED_PROTO)
        .filter(|_| is_trusted(from, trusted));
    match claimed {
        Some(proto) if proto.as_bytes().eq_ignore_ascii_case(b"https") => "https",
        Some(_) => "http",
        None if from.tls => "https",
        None => "http",
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host` from the real connection, after
/// [`drop_unbelieved`]. A trusted proxy's `X-Forwarded-For` chain is kept
/// and the peer appended. `X-Forwarded-Proto` and `X-Forwarded-Host` are
/// always the scheme and Host the cache keys on, even behind a trusted
/// proxy (which relays whatever its own client wrote): a value the key
/// ignores must never reach a portal that builds cacheable redirects and
/// links from it.
fn set_forwarded(headers: &mut HeaderMap, host: &HeaderValue, from: Downstream, trusted: &[Cidr]) {
    let proto = forwarded_proto(from, headers, trusted);
    drop_unbelieved(headers, is_trusted(from, trusted));
    let peer = HeaderValue::from_str(&from.peer.ip().to_canonical().to_string())
        .expect("invariant: an IP address is a valid header value");
    let chain = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prior) => {
            let mut v = prior.to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or(peer)
        }
        None => peer,
    };
    headers.insert(&X_FORWARDED_FOR, chain);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(&X_FORWARDED_HOST, host.clone());
}

/// Drops the client's headers the origin must not believe: `Forwarded`
/// from anyone (it carries a host and a scheme the cache key ignores; digue
/// speaks `X-Forwarded-*`), and from an untrusted client the
/// [`FORWARDING_HEADERS`] and the [`ROUTING_HEADERS`]. Their spellings with
/// `_` never get this far ([`drop_underscored`]).
fn drop_unbelieved(headers: &mut HeaderMap, trusted_peer: bool) {
    headers.remove(header::FORWARDED);
    if !trusted_peer {
        for name in FORWARDING_HEADERS.iter().chain(&ROUTING_HEADERS) {
            headers.remove(*name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn downstream(ip: &str) -> Downstream {
        Downstream {
            peer: SocketAddr::new(ip.parse().expect("ip"), 40000),
            tls: false,
        }
    }

    #[test]
    fn the_client_address_comes_from_the_peer_unless_it_is_a_trusted_proxy() {
        let mut h = HeaderMap::new();
        h.insert(
            &X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 198.51.100.9, 10.0.0.3"),
        );
        assert_eq!(
            client_ip(downstream("192.0.2.7"), &h, &[]).to_string(),
            "192.0.2.7"
        );
        let lb: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert_eq!(
            client_ip(downstream("10.0.0.2"), &h, &[lb]).to_string(),
            "198.51.100.9",
            "the nearest untrusted hop, not the client-written start of the chain"
        );
    }

    #[test]
    fn headers_named_with_an_underscore_never_reach_the_origin() {
        let mut h = HeaderMap::new();
        h.insert("transfer_encoding", HeaderValue::from_static("chunked"));
        h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        drop_underscored(&mut h);
        assert_eq!(h.len(), 1, "only x-kept survives: {h:?}");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "only Accept survives: {h:?}");
    }

    #[test]
    fn client_forwarded_headers_are_overwritten_unless_trusted() {
        let host = HeaderValue::from_static("ent.example.fr");
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        set_forwarded(&mut h, &host, downstream("192.0.2.7"), &[]);
        assert_eq!(h[&X_FORWARDED_HOST], "ent.example.fr");
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");

        let lb: Cidr = "10.0.0.0/8".parse().expect("cidr");
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        set_forwarded(&mut h, &host, downstream("10.0.0.2"), &[lb]);
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.2");
        assert_eq!(
            h[&X_FORWARDED_PROTO], "https",
            "a trusted proxy's scheme is kept"
        );
    }

    #[test]
    fn routing_headers_are_dropped_unless_trusted_and_forwarded_always() {
        let host = HeaderValue::from_static("ent.example.fr");
        let lb: Cidr = "10.0.0.0/8".parse().expect("cidr");
        let sent = || {
            let mut h = HeaderMap::new();
            for name in ROUTING_HEADERS {
                h.insert(name, HeaderValue::from_static("/admin"));
            }
            h.insert(header::FORWARDED, HeaderValue::from_static("host=evil"));
            h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            h
        };

        let mut h = sent();
        set_forwarded(&mut h, &host, downstream("192.0.2.7"), &[lb]);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ],
            "an untrusted client's routing headers are gone"
        );

        let mut h = sent();
        set_forwarded(&mut h, &host, downstream("10.0.0.2"), &[lb]);
        for name in ROUTING_HEADERS {
            assert!(h.contains_key(name), "a trusted proxy's {name} is kept");
        }
        assert!(
            !h.contains_key(header::FORWARDED),
            "Forwarded is dropped even when trusted"
        );
        assert_eq!(
            h[&X_FORWARDED_HOST], "ent.example.fr",
            "a trusted proxy's X-Forwarded-Host is the Host digue keys on"
        );
    }

    #[test]
    fn the_scheme_is_the_connection_s_unless_a_trusted_proxy_says_otherwise() {
        let lb: Cidr = "10.0.0.0/8".parse().expect("cidr");
        let mut said_https = HeaderMap::new();
        said_https.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("HTTPS"));
        let tls = Downstream {
            tls: true,
            ..downstream("192.0.2.7")
        };
        assert_eq!(forwarded_proto(tls, &HeaderMap::new(), &[]), "https");
        assert_eq!(
            forwarded_proto(downstream("192.0.2.7"), &said_https, &[lb]),
            "http"
        );
        assert_eq!(
            forwarded_proto(downstream("10.0.0.2"), &said_https, &[lb]),
            "https"
        );
    }
}
