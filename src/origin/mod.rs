//! The way to a site's origin, and the one way to call it
//! ([`call_origin`]): a slot from the origin guard, the request sent on a
//! pooled connection ([`upstream`], over TLS to an `https://` origin:
//! [`tls`]) with its headers made safe ([`headers`]), one second try where
//! it is safe, and the origin's health counted for every caller.

mod connection;
mod headers;
pub mod tls;
mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, request, response};
use http_body::Body;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use tokio::time::Instant;

pub use headers::{ROUTING_HEADERS, client_ip, forwarded_proto, strip_hop_by_hop};
pub use upstream::Origin;
use upstream::SendFailed;

use crate::cache::coalesce::Failure;
use crate::config::Cidr;
use crate::guard::{OriginGuard, OriginPermit};
use crate::metrics::SiteMetrics;
use crate::outcome::{BusyReason, OriginErrorKind};

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
///
/// A GET or HEAD without a body that fails before any answer on a reused
/// connection (the origin closed it as the request went out, or sent bytes
/// that are no answer, such as the late tail of an earlier response that
/// overran its `Content-Length`) is sent once more, on a fresh connection,
/// within the same deadline: the failed connection is never reused, and
/// the user gets the page. Other requests are not: the origin may have
/// acted on them (a request hyper never wrote is re-sent by hyper itself).
/// Nor is a failure on a fresh connection (the origin's own) or a timeout:
/// a failing or slow origin must not get twice the load.
pub async fn call_origin(
    route: Route<'_>,
    head: &request::Parts,
    body: UpstreamBody,
    asker: Asker<'_>,
) -> Result<Answer, Failure> {
    let Ok(slot) = route.guard.acquire(route.queue_timeout).await else {
        return Err(Failure::Busy(BusyReason::QueueTimeout));
    };
    let m = route.metrics;
    let origin = route.origin;
    let resendable = body.is_end_stream() && matches!(head.method, Method::GET | Method::HEAD);
    let started = Instant::now();
    let deadline = started + origin.timeout;
    let mut sent = origin
        .send(origin.request(head, asker, body), deadline)
        .await;
    if let Err(SendFailed {
        failure: Failure::Origin(kind),
        on_reused: true,
    }) = sent
        && resendable
    {
        m.origin_error(kind);
        m.origin_retries.inc();
        sent = origin
            .send(origin.request(head, asker, no_body()), deadline)
            .await;
    }
    m.origin_seconds.observe(started.elapsed().as_secs_f64());
    let (head, body) = match sent {
        Ok(res) => res.into_parts(),
        Err(SendFailed { failure, .. }) => {
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
