//! The test origin: a real HTTP/1.1 server on `127.0.0.1:0` (or HTTPS,
//! HTTP/1.1 and HTTP/2 by ALPN) that records what it gets, can hold its answers until released, and re-raises a
//! panic of the test's handler instead of swallowing it.

use std::any::Any;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::wait::wait_until;

/// What the test origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What the test origin does with a request.
pub enum Reply {
    Respond(Response<Full<Bytes>>),
    /// Closes the connection without answering.
    Close,
}

/// A response with these headers and body.
pub fn reply(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut res = Response::new(Full::new(Bytes::from(body.to_owned())));
    *res.status_mut() = StatusCode::from_u16(status).expect("valid status");
    for (k, v) in headers {
        res.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).expect("valid name"),
            HeaderValue::from_str(v).expect("valid value"),
        );
    }
    Reply::Respond(res)
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A panic, as `catch_unwind` hands it over.
type Panic = Box<dyn Any + Send>;

struct State {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// While set, requests wait for `release` before answering.
    held: AtomicBool,
    release: Notify,
    /// Artificial latency before each answer, in milliseconds.
    delay_ms: AtomicUsize,
    /// A portal's capacity, when set: requests in flight it serves at
    /// `base_ms`; beyond, each is slower in proportion; past twice it, it
    /// answers 503 at once (see [`Origin::set_capacity`]).
    capacity: AtomicUsize,
    base_ms: AtomicUsize,
    overloaded: AtomicUsize,
    handler: Box<Handler>,
    /// Bumped by [`Origin::kill`]: every open connection closes at once.
    killed: tokio::sync::watch::Sender<u64>,
    /// Connections accepted (over TLS: handshakes completed).
    connections: AtomicUsize,
    /// The first panic of `handler`: the connection it served is closed
    /// (as a panicking task would), and the test fails with it at
    /// [`Origin::join`] or when the origin is dropped.
    panicked: Mutex<Option<Panic>>,
}

/// A real HTTP/1.1 origin on a free loopback port that records what it gets.
pub struct Origin {
    pub addr: SocketAddr,
    /// Over TLS: `https://` URLs.
    tls: bool,
    /// Kept to serve TLS again after [`Origin::revive`].
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
}

struct InFlight<'a>(&'a State);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Origin {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        Origin::serve(None, handler).await
    }

    /// An HTTPS origin with this TLS (see `tls::origin_tls`): HTTP/2 when
    /// ALPN picks it, HTTP/1.1 otherwise.
    pub async fn start_tls(
        tls: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        Origin::serve(Some(tokio_rustls::TlsAcceptor::from(tls)), handler).await
    }

    async fn serve(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            held: AtomicBool::new(false),
            release: Notify::new(),
            delay_ms: AtomicUsize::new(0),
            capacity: AtomicUsize::new(0),
            base_ms: AtomicUsize::new(0),
            overloaded: AtomicUsize::new(0),
            handler: Box::new(handler),
            killed: tokio::sync::watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            panicked: Mutex::new(None),
        });
        let over_tls = tls.is_some();
        let task = tokio::spawn(accept(listener, state.clone(), tls.clone()));
        Origin {
            addr,
            tls: over_tls,
            acceptor: tls,
            state,
            task: Some(task),
        }
    }

    /// Dies as a crashed server does: the listener closes (connects are
    /// refused) and so does every open connection, mid-answer or idle.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.state.killed.send_modify(|n| *n += 1);
    }

    /// Comes back on the same address after [`Origin::kill`].
    pub async fn revive(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("the killed origin's port is free again");
        self.task = Some(tokio::spawn(accept(
            listener,
            self.state.clone(),
            self.acceptor.clone(),
        )));
    }

    /// An origin answering every request with the same 200 and headers.
    pub async fn fixed(
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> Origin {
        Origin::start(move |_| reply(200, headers, body)).await
    }

    /// A portal whose pages are never storable: every request digue lets
    /// through reaches it, and answers `page {target}` (see [`page`]).
    pub async fn portal() -> Origin {
        Origin::start(|seen: &Seen| {
            reply(
                200,
                &[
                    ("cache-control", "no-store"),
                    ("content-type", "text/html; charset=utf-8"),
                ],
                &page(&seen.target),
            )
        })
        .await
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Connections it accepted (over TLS: handshakes that succeeded).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests received for a target (path and query).
    pub fn count(&self, target: &str) -> usize {
        self.seen().iter().filter(|s| s.target == target).count()
    }

    pub fn total(&self) -> usize {
        self.seen().len()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("not poisoned").clone()
    }

    pub fn last(&self, target: &str) -> Option<Seen> {
        self.seen().into_iter().rev().find(|s| s.target == target)
    }

    pub fn peak_in_flight(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Requests arriving from now on wait until [`Origin::release`].
    pub fn hold(&self) {
        self.state.held.store(true, Ordering::SeqCst);
    }

    pub fn release(&self) {
        self.state.held.store(false, Ordering::SeqCst);
        self.state.release.notify_waiters();
    }

    /// Every answer is delayed by this much.
    pub fn set_delay(&self, delay: Duration) {
        let ms = usize::try_from(delay.as_millis()).unwrap_or(usize::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Behaves like a portal of this capacity: up to `capacity` requests in
    /// flight are answered after `base`; with more, each takes
    /// `base × in flight / capacity`; past twice the capacity, `503` at
    /// once. 0 turns it off.
    pub fn set_capacity(&self, capacity: usize, base: Duration) {
        let ms = usize::try_from(base.as_millis()).unwrap_or(usize::MAX);
        self.state.base_ms.store(ms, Ordering::SeqCst);
        self.state.capacity.store(capacity, Ordering::SeqCst);
    }

    /// Answers given as `503` for being past twice the capacity.
    pub fn overloaded(&self) -> usize {
        self.state.overloaded.load(Ordering::SeqCst)
    }

    /// Waits (at most 10 s) until the origin has received `n` requests in all.
    pub async fn wait_for_total(&self, n: usize) {
        let what = format!("the origin receives {n} requests in all");
        wait_until(&what, Duration::from_secs(10), async || self.total() >= n).await;
    }

    /// Stops accepting, and fails the test with the panic of its accept
    /// loop or of the test's handler, if one panicked.
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        if let Some(panic) = self.take_panic() {
            std::panic::resume_unwind(panic);
        }
    }

    fn take_panic(&self) -> Option<Panic> {
        self.state
            .panicked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}

impl Drop for Origin {
    /// A test that never joins its origin still fails with a handler's
    /// panic (unless it is failing already).
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if !std::thread::panicking()
            && let Some(panic) = self.take_panic()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Serves every connection `listener` accepts (over TLS with `tls`: HTTP/2
/// when ALPN picks it), each until it closes or the origin is killed.
async fn accept(listener: TcpListener, shared: Arc<State>, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = shared.clone();
        let tls = tls.clone();
        let mut killed = shared.killed.subscribe();
        tokio::spawn(async move {
            let counted = state.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move { answer(&state, req).await }
            });
            let serving = async move {
                let Some(tls) = tls else {
                    counted.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    return;
                };
                // A refused handshake (the test's point, often) ends here.
                let Ok(stream) = tls.accept(stream).await else {
                    return;
                };
                counted.connections.fetch_add(1, Ordering::SeqCst);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(stream), service)
                .await;
            };
            tokio::select! {
                () = serving => {}
                _ = killed.changed() => {}
            }
        });
    }
}

/// A portal past its capacity.
fn reply_503() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(b"surcharge")));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res
}

/// The page [`Origin::portal`] serves for a target.
pub fn page(target: &str) -> String {
    format!("page {target}")
}

async fn answer(
    state: &State,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let seen = Seen {
        version: parts.version,
        method: parts.method,
        target: parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: parts.headers,
        body,
    };
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(state);
    state.seen.lock().expect("not poisoned").push(seen.clone());
    while state.held.load(Ordering::SeqCst) {
        let released = state.release.notified();
        if !state.held.load(Ordering::SeqCst) {
            break;
        }
        released.await;
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let capacity = state.capacity.load(Ordering::SeqCst);
    if capacity > 0 {
        if now > 2 * capacity {
            state.overloaded.fetch_add(1, Ordering::SeqCst);
            return Ok(reply_503());
        }
        let base = state.base_ms.load(Ordering::SeqCst) as u64;
        let slowed = base * (now.max(capacity) as u64) / capacity as u64;
        tokio::time::sleep(Duration::from_millis(slowed)).await;
    }
    let replied = std::panic::catch_unwind(AssertUnwindSafe(|| (state.handler)(&seen)));
    match replied {
        Ok(Reply::Respond(res)) => Ok(res),
        // hyper closes the connection without a response when a service fails.
        Ok(Reply::Close) => Err(std::io::Error::other("closed by the test origin")),
        Err(panic) => {
            let mut first = state.panicked.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(panic);
            Err(std::io::Error::other("the test origin's handler panicked"))
        }
    }
}
