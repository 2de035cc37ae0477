//! The public listener: HTTP/1.1 and h2c on one port, with the limits that
//! keep one client from hurting the others (connection cap, header size,
//! header-read timeout, idle connections closed), and a graceful drain on
//! shutdown. Connections may switch protocols (WebSocket: HTTP/1.1
//! `Upgrade`, HTTP/2 extended CONNECT); a tunnel keeps its connection's
//! slot and is closed at the end of the drain's grace.

use std::any::Any;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::App;
use crate::body::{BodyError, ProxyBody};
use crate::origin::Downstream;
use crate::proxy;
use crate::share::ConnectionSlots;
use crate::tunnel::Lifeline;

/// Pause after a failed accept (EMFILE and friends) so a full fd table does
/// not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;
/// Connections the kernel queues for the accept loop. The default of std
/// and tokio (128) drops the SYNs of a larger burst, and each client
/// dropped waits a whole second before trying again: the first minute of
/// a surge is such a burst. Linux caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a public listener, with room for a burst of new connections.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As TcpListener::bind does: a restart can rebind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves until `stop` turns true, then drains in-flight requests. With
/// `tls`, every connection starts with a TLS handshake (HTTP/2 or HTTP/1.1
/// by ALPN). `slots` caps connections across the plain and TLS listeners.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let server = app.snapshot().config.restart.server.clone();
    // Every connection task holds a clone: the channel closes when the last
    // one ends, which is what the drain waits for.
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_bytes)
        .keep_alive(true);
    // HTTP/2 has no header timer once a connection is up: a phone that went
    // off the network would hold its connection slot for ever. Ping it, and
    // close it when the ping goes unanswered for header_read_timeout. (A
    // live one with nothing to ask is closed as idle: see `drive`.)
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(server.header_read_timeout * 2)
        .keep_alive_timeout(server.header_read_timeout)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS)
        // WebSocket over HTTP/2 (RFC 8441): see `tunnel`.
        .enable_connect_protocol();
    let metrics = app.metrics.clone();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("invariant: never closed"),
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        metrics.connections_total.inc();
        metrics.connections_open.inc();
        let held: Arc<dyn Any + Send + Sync> = Arc::new(Held {
            _slot: slot,
            _alive: alive.clone(),
            open: metrics.connections_open.clone(),
        });
        let app = app.clone();
        let builder = builder.clone();
        let stopping = stop.clone();
        let grace = server.shutdown_grace;
        let first_byte = server.header_read_timeout;
        let tls = tls.clone();
        tokio::spawn(async move {
            let from = Downstream {
                peer,
                tls: tls.is_some(),
            };
            let activity = Activity::new();
            let share = ConnectionSlots::default();
            let service = {
                let activity = activity.clone();
                let held = held.clone();
                let stopping = stopping.clone();
                service_fn(move |mut req: Request<Incoming>| {
                    let app = app.clone();
                    let in_flight = activity.begin();
                    // Only HTTP/2 multiplexes: an HTTP/1.1 connection has one
                    // request at a time, and its hit path no extension to carry.
                    if req.version() == http::Version::HTTP_2 {
                        req.extensions_mut().insert(share.clone());
                    }
                    // hyper marks the requests that may switch protocols;
                    // a tunnel keeps the connection's place until it ends.
                    if req.extensions().get::<OnUpgrade>().is_some() {
                        let lifeline = Lifeline::new(stopping.clone(), grace, held.clone());
                        req.extensions_mut().insert(lifeline);
                    }
                    async move {
                        let res = proxy::handle(app, from, req).await;
                        Ok::<_, Infallible>(res.map(|body| Counted {
                            body,
                            _in_flight: in_flight,
                        }))
                    }
                })
            };
            // Idle as long as a client may take to send a head: what hyper
            // allows an idle HTTP/1.1 connection.
            let idle = first_byte;
            // hyper's header timer starts only once it knows the protocol; a
            // client that never sends a byte (or never finishes a handshake)
            // would otherwise hold its connection slot forever.
            match tls {
                None => {
                    let mut probe = [0_u8; 1];
                    let peeked = tokio::time::timeout(first_byte, stream.peek(&mut probe)).await;
                    if matches!(peeked, Ok(Ok(n)) if n > 0) {
                        let io = TokioIo::new(stream);
                        let conn = builder.serve_connection_with_upgrades(io, service);
                        drive(conn.into_owned(), &activity, idle, stopping).await;
                    }
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(first_byte, acceptor.accept(stream)).await;
                    if let Ok(Ok(stream)) = handshake {
                        let io = TokioIo::new(stream);
                        let conn = builder.serve_connection_with_upgrades(io, service);
                        drive(conn.into_owned(), &activity, idle, stopping).await;
                    }
                }
            }
            drop(held);
        });
    }
    drop(listener);
    drop(alive);
    tracing::info!("stopped accepting; draining in-flight requests");
    tokio::select! {
        _ = all_closed.recv() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(server.shutdown_grace) => {
            tracing::warn!(grace = ?server.shutdown_grace, "shutdown grace elapsed; closing the rest");
        }
    }
}

/// What one downstream connection holds until it ends, and its tunnels
/// (WebSocket) with it, which outlive hyper's connection: its
/// `max_connections` slot, its count in the drain, the open gauge.
struct Held {
    _slot: OwnedSemaphorePermit,
    _alive: mpsc::Sender<()>,
    open: IntGauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Drives one connection to its end. Once it has had no request in flight
/// for `idle`, or once digue stops, it is asked to finish gracefully:
/// HTTP/2 sends GOAWAY, HTTP/1.1 closes after the response in flight.
/// hyper closes an idle HTTP/1.1 connection at its header timer, but keeps
/// an HTTP/2 one that answers its pings for ever: without this, connections
/// that never ask anything would hold every slot.
async fn drive<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tokio::pin!(conn);
    tokio::select! {
        // Errors are one client's broken connection; hyper has already
        // answered what could be answered (400, 431).
        _ = conn.as_mut() => return,
        () = activity.idle_for(idle) => {}
        // Stopping, or the sender gone with the server.
        _ = stop.wait_for(|stopping| *stopping) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// The requests in flight on one connection, and how many ever started:
/// what tells a quiet connection from a busy one. Plain counters: a request
/// costs two atomic increments and wakes nothing; the idle check looks at
/// them a few times per `limit` instead.
#[derive(Clone, Default)]
struct Activity(Arc<Counters>);

#[derive(Default)]
struct Counters {
    in_flight: AtomicUsize,
    /// Counts every request, so one that came and went between two looks
    /// still counts as activity.
    started: AtomicU64,
}

/// Looks per idle limit: a quiet connection is closed between `limit` and
/// `limit + limit / IDLE_LOOKS` after its last request ended.
const IDLE_LOOKS: u32 = 4;

impl Activity {
    fn new() -> Activity {
        Activity::default()
    }

    /// Counts a request in flight until the mark is dropped (with its
    /// response body, once sent).
    fn begin(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        self.0.started.fetch_add(1, Ordering::Relaxed);
        InFlight(self.0.clone())
    }

    /// Resolves once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        let look = (limit / IDLE_LOOKS).max(Duration::from_millis(1));
        let mut seen = self.0.started.load(Ordering::Relaxed);
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(look).await;
            let started = self.0.started.load(Ordering::Relaxed);
            if started != seen || self.0.in_flight.load(Ordering::Relaxed) > 0 {
                seen = started;
                quiet_since = tokio::time::Instant::now();
            } else if quiet_since.elapsed() >= limit {
                return;
            }
        }
    }
}

/// One request counted in flight.
#[must_use]
struct InFlight(Arc<Counters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted in flight until it is
/// sent or dropped.
struct Counted {
    body: ProxyBody,
    _in_flight: InFlight,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
