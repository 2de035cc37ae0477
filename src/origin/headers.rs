//! Header hygiene toward the origin and back: hop-by-hop headers removed
//! both ways, `X-Forwarded-*` set by digue from the real connection (never
//! taken from an untrusted client), `Forwarded` and the routing headers
//! of untrusted clients dropped.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request;

use super::tunnel::UpgradeTo;
use super::{Asker, Downstream};
use crate::config::Cidr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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

/// The headers the origin gets for a request with `parts`' headers:
/// hop-by-hop headers, `_` names and digue's own cookies gone, cookies on
/// one line, `Host` set to `host`, and `X-Forwarded-*` from the real
/// connection. A tunnel's request ([`UpgradeTo`]) keeps its `Upgrade`,
/// named by a `Connection` of digue's own.
pub(super) fn toward_origin(
    parts: &request::Parts,
    asker: Asker<'_>,
    host: HeaderValue,
) -> HeaderMap {
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    if let Some(UpgradeTo(protocol)) = parts.extensions.get::<UpgradeTo>() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    drop_underscored(&mut headers);
    crate::admission::cookies::strip(&mut headers);
    join_cookies(&mut headers);
    headers.insert(header::HOST, host);
    set_forwarded(&mut headers, asker);
    headers
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
pub(super) fn is_trusted(from: Downstream, trusted: &[Cidr]) -> bool {
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
fn set_forwarded(headers: &mut HeaderMap, asker: Asker<'_>) {
    let Asker {
        host,
        from,
        trusted,
        routing,
    } = asker;
    let proto = forwarded_proto(from, headers, trusted);
    drop_unbelieved(headers, is_trusted(from, trusted), routing);
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
/// [`FORWARDING_HEADERS`] and the `routing` headers
/// (`server.routing_headers`). Their spellings with `_` never get this far
/// ([`drop_underscored`]).
fn drop_unbelieved(headers: &mut HeaderMap, trusted_peer: bool, routing: &[HeaderName]) {
    headers.remove(header::FORWARDED);
    if !trusted_peer {
        for name in FORWARDING_HEADERS {
            headers.remove(name);
        }
        for name in routing {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn routing() -> Vec<HeaderName> {
        crate::config::DEFAULT_ROUTING_HEADERS
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect()
    }

    /// `set_forwarded` for a request to `host` from `ip`.
    fn forwarded(h: &mut HeaderMap, host: &HeaderValue, ip: &str, trusted: &[Cidr]) {
        let routing = routing();
        let asker = Asker {
            host,
            from: downstream(ip),
            trusted,
            routing: &routing,
        };
        set_forwarded(h, asker);
    }

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
        forwarded(&mut h, &host, "192.0.2.7", &[]);
        assert_eq!(h[&X_FORWARDED_HOST], "ent.example.fr");
        assert_eq!(h[&X_FORWARDED_FOR], "192.0.2.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");

        let lb: Cidr = "10.0.0.0/8".parse().expect("cidr");
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        forwarded(&mut h, &host, "10.0.0.2", &[lb]);
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
            for name in routing() {
                h.insert(name, HeaderValue::from_static("/admin"));
            }
            h.insert(header::FORWARDED, HeaderValue::from_static("host=evil"));
            h.insert(&X_FORWARDED_HOST, HeaderValue::from_static("evil.example"));
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            h
        };

        let mut h = sent();
        forwarded(&mut h, &host, "192.0.2.7", &[lb]);
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
        forwarded(&mut h, &host, "10.0.0.2", &[lb]);
        for name in routing() {
            assert!(h.contains_key(&name), "a trusted proxy's {name} is kept");
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
