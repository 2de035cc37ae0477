//! The accept loop and its connections: HTTP/1.1 with keep-alive only, like
//! the aging Tomcat installations the portal imitates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::Shared;
use super::load::handle;

/// Back-off after a failed `accept` (typically EMFILE during a surge), so the
/// loop does not spin on an error that needs time to clear.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set so that aborting the accept task (on
    // `Portal` drop) tears every one of them down with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&shared)));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "demo portal failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reaps finished connections so the set does not grow for ever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Only a latency hint: failing to set it changes nothing functionally.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        // Dropped connections are part of the act, not a portal failure.
        tracing::debug!(%peer, error = %err, "demo portal connection ended");
    }
}
