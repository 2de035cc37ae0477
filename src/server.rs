//! The public listener: HTTP/1.1 and h2c on one port, with the limits that
//! keep one client from hurting the others (connection cap, header size and
//! header-read timeout), and a graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::App;
use crate::origin::Downstream;
use crate::proxy;

/// Pause after a failed accept (EMFILE and friends) so a full fd table does
/// not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;

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
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_bytes)
        .keep_alive(true);
    // HTTP/2 has no header timer once a connection is up: a phone that went
    // off the network would hold its connection slot for ever. Ping it, and
    // close it when the ping goes unanswered for header_read_timeout.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(server.header_read_timeout * 2)
        .keep_alive_timeout(server.header_read_timeout)
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_STREAMS);
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
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte = server.header_read_timeout;
        let metrics = metrics.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let from = Downstream {
                peer,
                tls: tls.is_some(),
            };
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(proxy::handle(app, from, req).await) }
            });
            // hyper's header timer starts only once it knows the protocol; a
            // client that never sends a byte (or never finishes a handshake)
            // would otherwise hold its connection slot forever.
            match tls {
                None => {
                    let mut probe = [0_u8; 1];
                    let peeked = tokio::time::timeout(first_byte, stream.peek(&mut probe)).await;
                    if matches!(peeked, Ok(Ok(n)) if n > 0) {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        // Errors are one client's broken connection; hyper has
                        // already answered what could be answered (400, 431).
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(first_byte, acceptor.accept(stream)).await;
                    if let Ok(Ok(stream)) = handshake {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            }
            metrics.connections_open.dec();
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(server.shutdown_grace) => {
            tracing::warn!(grace = ?server.shutdown_grace, "shutdown grace elapsed; closing the rest");
        }
    }
}
