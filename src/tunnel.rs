//! Tunnels, the client's side: which requests ask to switch protocols
//! (HTTP/1.1 `Upgrade`, HTTP/2 extended CONNECT), the per-site cap
//! (`max_websockets`), and the copy both ways once both sides switched,
//! until either side closes, the tunnel stays silent for
//! `websocket_idle_timeout`, or shutdown's grace ends.
//!
//! The origin's side is [`crate::origin::tunnel`].

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::{Method, Version, request};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::SiteMetrics;

/// A request's wish to switch protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The protocol asked for, lower-cased (`websocket`).
    pub protocol: String,
    /// Asked by an HTTP/2 extended CONNECT (answered 200, not 101).
    pub connect: bool,
}

/// What `parts` asks to switch to, if anything: `Connection: upgrade` with
/// an `Upgrade` (its first protocol) over HTTP/1.1, or a CONNECT with a
/// `:protocol` over HTTP/2. An `Upgrade` without `Connection: upgrade` is
/// no request to switch (RFC 9110 §7.8): it is dropped as hop-by-hop.
pub fn asked(parts: &request::Parts) -> Option<Ask> {
    if parts.version == Version::HTTP_2 {
        let protocol = parts.extensions.get::<hyper::ext::Protocol>()?;
        if parts.method != Method::CONNECT {
            return None;
        }
        return Some(Ask {
            protocol: String::from_utf8_lossy(protocol.as_ref()).to_ascii_lowercase(),
            connect: true,
        });
    }
    if !tokens(&parts.headers, &header::CONNECTION).any(|t| t.eq_ignore_ascii_case("upgrade")) {
        return None;
    }
    let protocol = tokens(&parts.headers, &header::UPGRADE).next()?;
    Some(Ask {
        protocol: protocol.to_ascii_lowercase(),
        connect: false,
    })
}

/// The comma-separated items of every `name` field.
fn tokens<'a>(
    headers: &'a HeaderMap,
    name: &header::HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A site's open tunnels. Outlives reloads (the site's rebuild carries it
/// over), so a reload never lets a second `max_websockets` in.
pub struct Tunnels {
    /// Tunnels open or opening; changed only through [`Tunnels::admit`]
    /// and the permit's drop.
    open: AtomicUsize,
    gauge: IntGauge,
    total: IntCounter,
}

impl Tunnels {
    pub fn new(metrics: &SiteMetrics) -> Arc<Tunnels> {
        Arc::new(Tunnels {
            open: AtomicUsize::new(0),
            gauge: metrics.websockets_open.clone(),
            total: metrics.websockets_total.clone(),
        })
    }

    /// A place for one more tunnel, unless `max` are open.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<TunnelPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.gauge.inc();
        Some(TunnelPermit(self.clone()))
    }
}

/// One tunnel's place under `max_websockets`, given back when dropped.
#[must_use]
pub struct TunnelPermit(Arc<Tunnels>);

impl TunnelPermit {
    /// The origin switched: the tunnel counts as opened.
    pub fn opened(&self) {
        self.0.total.inc();
    }
}

impl Drop for TunnelPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.dec();
    }
}

/// What ties a tunnel to the listener it came through: the client's
/// connection (its `max_connections` slot and the drain's count ride in
/// `held`, kept until the tunnel ends), and the signal that digue is
/// stopping. The listener puts it in the extensions of each request that
/// may switch protocols.
#[derive(Clone)]
pub struct Lifeline {
    stop: watch::Receiver<bool>,
    /// `server.shutdown_grace`: tunnels stay open this long once stopping
    /// starts, as in-flight requests do.
    grace: Duration,
    _held: Arc<dyn Any + Send + Sync>,
}

impl Lifeline {
    pub fn new(
        stop: watch::Receiver<bool>,
        grace: Duration,
        held: Arc<dyn Any + Send + Sync>,
    ) -> Lifeline {
        Lifeline {
            stop,
            grace,
            _held: held,
        }
    }

    /// Resolves at the end of shutdown's grace (never, while running).
    async fn grace_over(mut self) {
        // An error is the listener gone: stopping all the same.
        let _ = self.stop.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(self.grace).await;
    }
}

/// Copies both ways between the client and the origin once both switched,
/// in a task of its own, until either side closes, nothing moves either
/// way for `idle`, or shutdown's grace ends. The permit and the lifeline
/// are held until then.
pub fn splice(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    lifeline: Lifeline,
    permit: TunnelPermit,
) {
    tokio::spawn(async move {
        let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
            // The client left before the 101 reached it.
            return;
        };
        let stamp = Arc::new(Stamp::new());
        let (mut from_client, mut to_client) =
            tokio::io::split(Watched::new(TokioIo::new(down), stamp.clone()));
        let (mut from_origin, mut to_origin) =
            tokio::io::split(Watched::new(TokioIo::new(up), stamp.clone()));
        tokio::select! {
            // Either side's end ends the tunnel, once what it sent is
            // delivered: WebSocket has no half-closed state, and a client
            // that keeps its socket after the origin closed (or the other
            // way round) would hold the tunnel until the idle timeout.
            () = one_way(&mut from_client, &mut to_origin) => {}
            () = one_way(&mut from_origin, &mut to_client) => {}
            () = stamp.silent_for(idle) => {
                tracing::debug!(idle = ?idle, "tunnel closed after being idle");
            }
            () = lifeline.grace_over() => {}
        }
        drop(permit);
    });
}

/// Copies until `from` ends (or fails), then closes `to`'s writing side.
async fn one_way<R, W>(from: &mut R, to: &mut W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if tokio::io::copy(from, to).await.is_ok() {
        let _ = to.shutdown().await;
    }
}

/// When a tunnel last moved a byte, in milliseconds since it opened.
struct Stamp {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Stamp {
    fn new() -> Stamp {
        Stamp {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `idle`. Sleeps to the earliest
    /// moment that could be, and again from there if bytes moved meanwhile:
    /// one timer per tunnel, woken at most once per `idle` while busy.
    async fn silent_for(&self, idle: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// One side of a tunnel, stamping its [`Stamp`] on every byte read: a
/// byte written was read on the other side first.
struct Watched<T> {
    io: T,
    stamp: Arc<Stamp>,
}

impl<T> Watched<T> {
    fn new(io: T, stamp: Arc<Stamp>) -> Watched<T> {
        Watched { io, stamp }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.stamp.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::request::Builder) -> request::Parts {
        req.body(()).expect("valid").into_parts().0
    }

    #[test]
    fn an_upgrade_needs_connection_upgrade_and_takes_the_first_protocol() {
        let ws = parts(
            http::Request::get("/ws")
                .header("connection", "keep-alive, Upgrade")
                .header("upgrade", "WebSocket, foo"),
        );
        assert_eq!(
            asked(&ws),
            Some(Ask {
                protocol: "websocket".to_owned(),
                connect: false
            })
        );
        let no_connection = parts(http::Request::get("/").header("upgrade", "websocket"));
        assert_eq!(asked(&no_connection), None, "Upgrade alone asks nothing");
        let plain = parts(http::Request::get("/").header("connection", "upgrade"));
        assert_eq!(asked(&plain), None, "no protocol named");
    }

    #[test]
    fn the_cap_gives_places_back_when_permits_drop() {
        let tunnels = Tunnels::new(&crate::metrics::Metrics::new().site("portal"));
        let first = tunnels.admit(1).expect("a first place");
        assert!(tunnels.admit(1).is_none(), "one place only");
        assert_eq!(tunnels.gauge.get(), 1);
        drop(first);
        assert!(tunnels.admit(1).is_some(), "the place came back");
        assert_eq!(tunnels.gauge.get(), 0);
    }
}
