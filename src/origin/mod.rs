//! The way to a site's origin, and the one way to call it
//! ([`call_origin`]): a slot from the origin guard, the request sent on a
//! pooled connection ([`upstream`], over TLS to an `https://` origin:
//! [`tls`]) with its headers made safe ([`headers`]), one second try where
//! it is safe, and the origin's health counted for every caller. A
//! tunnel's upgrade request goes the same way ([`tunnel`]).

mod backend;
mod backends;
mod balance;
mod connection;
mod headers;
mod health;
mod probe;
pub mod tls;
pub mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, request, response};
use http_body::Body;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use backend::BackendState;
pub use backends::Origin;
pub use headers::{client_ip, forwarded_proto, strip_hop_by_hop};
pub use health::Mode;
pub use probe::Prober;
use upstream::SendFailed;

use crate::admission::cookies;
use crate::cache::coalesce::Failure;
use crate::config::{Affinity, BalanceConfig, Cidr};
use crate::guard::OriginPermit;
use crate::metrics::SiteMetrics;
use crate::outcome::{BusyReason, OriginErrorKind};
use crate::share::{ClientShare, ConnectionSlots};

/// A request body toward the origin: the client's stream, or nothing.
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// No body toward the origin.
pub fn no_body() -> UpstreamBody {
    Either::Right(Empty::new())
}

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
    /// Headers dropped when the client is not one of them.
    pub routing: &'a [http::HeaderName],
}

/// A site's way to its origin, borrowed for one call.
#[derive(Clone, Copy)]
pub struct Route<'a> {
    pub origin: &'a Origin,
    /// A call waits at most this long for a slot on a backend.
    pub queue_timeout: Duration,
    /// Where the origin's latency and errors are counted.
    pub metrics: &'a SiteMetrics,
    pub balance: &'a BalanceConfig,
    /// The cookies that hold a session on one backend.
    pub session_cookies: &'a [String],
    /// The app's clock: ejections are timed by it.
    pub now: Instant,
}

/// The origin's answer: its head, and its body still streaming with the
/// slot it holds until it ends (the slot rides inside the relayed body).
pub struct Answer {
    pub head: response::Parts,
    pub body: Incoming,
    pub slot: OriginPermit,
}

/// Calls the origin: a slot on a backend within the queue deadline, the
/// request built from `head`, the response head within `origin_timeout`.
/// The origin's health as the metrics show it (latency, errors by kind,
/// 5xx) is counted here, for every caller, and each backend's for its
/// ejection. A 5xx is an answer, not a failure: the cache fill prefers a
/// stale copy to it, a forwarded request relays it.
///
/// One second try, within the same deadline, where the origin cannot have
/// acted on the first: a request without a body whose connection could
/// not be opened goes to another backend; a GET or HEAD without a body
/// that fails before any answer goes to another backend, or — with one
/// backend — once more when the failure was on a reused connection (the
/// origin closed it as the request went out, or the late tail of an
/// earlier answer that overran its `Content-Length` arrived as its
/// answer); a fresh connection is then taken, the failed one never reused.
/// Other requests are not retried (a request hyper never wrote is re-sent
/// by hyper itself), nor is a timeout: a slow origin must not get twice
/// the load.
pub async fn call_origin(
    route: Route<'_>,
    head: &request::Parts,
    body: UpstreamBody,
    asker: Asker<'_>,
) -> Result<Answer, Failure> {
    let origin = route.origin;
    let m = route.metrics;
    let several = origin.backends.len() > 1;
    let affinity = several && route.balance.affinity == Affinity::Session;
    let home = affinity
        .then(|| balance::home(&origin.backends, &head.headers, route.session_cookies))
        .flatten();
    let bodiless = body.is_end_stream();
    let resendable = bodiless && matches!(head.method, Method::GET | Method::HEAD);
    // The client's shares first: a client past them waits, never holding
    // a slot everyone else needs. The connection's share is not counted
    // for a trusted proxy's (a load balancer in front carries many users
    // on one connection); the network's is, for the client it names.
    // One queue deadline for the shares and the slot together.
    let queued = Instant::now() + route.queue_timeout;
    let left = || queued.saturating_duration_since(Instant::now());
    let busy = |_| Failure::Busy(BusyReason::ClientShare);
    let trusted = headers::is_trusted(asker.from, asker.trusted);
    let share = head
        .extensions
        .get::<ConnectionSlots>()
        .filter(|_| !trusted);
    let connection = match share {
        Some(share) => Some(share.acquire(left()).await.map_err(busy)?),
        None => None,
    };
    let client = headers::client_ip(asker.from, &head.headers, asker.trusted);
    // A trusted proxy that names no client carries its users as itself.
    let network = if trusted && client == asker.from.peer.ip().to_canonical() {
        None
    } else {
        origin.network_share(client, left()).await.map_err(busy)?
    };
    // The route with what is left of the queue deadline.
    let queue = || Route {
        queue_timeout: left(),
        ..route
    };
    let (mut at, mut slot) = origin.slot(&queue(), home, None).await?;
    let started = Instant::now();
    let deadline = started + origin.timeout;
    let mut sent = send(&route, at, head, asker, body, deadline).await;
    if let Err(SendFailed {
        failure: Failure::Origin(kind),
        on_reused,
    }) = sent
    {
        let again = match kind {
            OriginErrorKind::Connect | OriginErrorKind::Tls => bodiless && several,
            OriginErrorKind::Protocol => resendable && (several || on_reused),
            OriginErrorKind::Timeout | OriginErrorKind::Status5xx => false,
        };
        if again {
            m.origin_error(kind);
            m.origin_retries.inc();
            drop(slot);
            (at, slot) = origin.slot(&queue(), home, several.then_some(at)).await?;
            sent = send(&route, at, head, asker, no_body(), deadline).await;
        }
    }
    m.origin_seconds.observe(started.elapsed().as_secs_f64());
    let (mut head_out, body) = match sent {
        Ok(res) => res.into_parts(),
        Err(SendFailed { failure, .. }) => {
            if let Failure::Origin(kind) = failure {
                m.origin_error(kind);
            }
            return Err(failure);
        }
    };
    if head_out.status.is_server_error() {
        m.origin_error(OriginErrorKind::Status5xx);
    }
    if affinity {
        pin_session(
            &route,
            head,
            asker,
            &mut head_out,
            &origin.backends[at].state,
        );
    }
    Ok(Answer {
        head: head_out,
        body,
        slot: slot.holding(ClientShare {
            connection,
            network,
        }),
    })
}

/// Sends the request to backend `at`, and counts how it went in its
/// metrics and health.
async fn send(
    route: &Route<'_>,
    at: usize,
    head: &request::Parts,
    asker: Asker<'_>,
    body: UpstreamBody,
    deadline: Instant,
) -> Result<http::Response<Incoming>, SendFailed> {
    let origin = route.origin;
    let backend = &origin.backends[at];
    let state = &backend.state;
    let host = origin
        .host_override
        .clone()
        .unwrap_or_else(|| asker.host.clone());
    let streams_body = !body.is_end_stream();
    let req = backend.pool.request(head, asker, host, body);
    state.metrics.requests.inc();
    let flight = state.window.depart(streams_body);
    let started = Instant::now();
    let sent = backend.pool.send(req, deadline).await;
    let took = started.elapsed();
    state.metrics.seconds.observe(took.as_secs_f64());
    let failed = match &sent {
        Ok(res) => res.status().is_server_error(),
        // A reused connection's failure is the connection's past, not the
        // backend's health; the client's own body failing is the client's.
        Err(SendFailed {
            failure: Failure::Origin(_),
            on_reused,
        }) => !on_reused,
        Err(_) => false,
    };
    if failed {
        flight.failed();
        state.failed(route.now, route.balance, origin.may_eject(route.now));
    } else if sent.is_ok() {
        flight.answered(took);
        state.succeeded(route.now);
    }
    sent
}

/// Names the backend that answered in digue's `digue_backend` cookie when
/// the answer starts a session there, or when the request's session had
/// no such cookie or named another backend (it was moved): its next
/// requests go where its session now is. Never on a response that could be
/// stored: one that sets a session cookie is not, and a request with a
/// session is per-user.
fn pin_session(
    route: &Route<'_>,
    req: &request::Parts,
    asker: Asker<'_>,
    res: &mut response::Parts,
    answered: &BackendState,
) {
    let sessions = route.session_cookies;
    let starts_session = res.headers.get_all(header::SET_COOKIE).iter().any(|v| {
        let name = v
            .as_bytes()
            .split(|b| *b == b'=')
            .next()
            .unwrap_or_default();
        sessions.iter().any(|s| s.as_bytes() == name.trim_ascii())
    });
    let named = cookies::find(&req.headers, cookies::BACKEND);
    let has_session = sessions
        .iter()
        .any(|name| cookies::find(&req.headers, name).is_some());
    if starts_session || (has_session && named != Some(answered.id.as_str())) {
        let attrs = cookies::Attributes {
            tls: forwarded_proto(asker.from, &req.headers, asker.trusted) == "https",
            domain: None,
        };
        res.headers.append(
            header::SET_COOKIE,
            cookies::set_for_session(cookies::BACKEND, &answered.id, &attrs),
        );
    }
}
