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

use crate::App;
use crate::origin::Downstream;
use crate::proxy;

/// Pause after a failed accept (EMFILE and friends) so a full fd table does
/// not become a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;

/// Serves until `stop` turns true, then drains in-flight requests.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let server = app.snapshot().config.server.clone();
    // Waiting for a permit before accept() leaves excess connections in the
    // kernel backlog instead of accepting and dropping them.
    let slots = Arc::new(Semaphore::new(server.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        .max_buf_size(server.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
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
        let from = Downstream { peer, tls: false };
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(proxy::handle(app, from, req).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte = server.header_read_timeout;
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // hyper's header timer starts only once it knows the protocol;
            // a client that never sends a byte would otherwise hold its
            // connection slot forever.
            let mut probe = [0_u8; 1];
            if let Ok(Ok(n)) = tokio::time::timeout(first_byte, stream.peek(&mut probe)).await
                && n > 0
            {
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                // Errors here are one client's broken connection; hyper has
                // already answered what could be answered (400, 431).
                let _ = watcher.watch(conn.into_owned()).await;
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
