//! Shared helpers for end-to-end tests: a controllable origin, a real digue
//! in front of it, and a real HTTP client, all on `127.0.0.1:0`.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the test origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    /// Path and query.
    pub target: String,
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

struct State {
    seen: Mutex<Vec<Seen>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    /// While set, requests wait for `release` before answering.
    held: AtomicBool,
    release: Notify,
    /// Artificial latency before each answer, in milliseconds.
    delay_ms: AtomicUsize,
    handler: Box<Handler>,
}

/// A real HTTP/1.1 origin on a free loopback port that records what it gets.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct InFlight<'a>(&'a State);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Origin {
    pub async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            seen: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            held: AtomicBool::new(false),
            release: Notify::new(),
            delay_ms: AtomicUsize::new(0),
            handler: Box::new(handler),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move { answer(&state, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, state, task }
    }

    /// An origin answering every request with the same 200 and headers.
    pub async fn fixed(
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
    ) -> Origin {
        Origin::start(move |_| reply(200, headers, body)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

    /// Waits (at most 10 s) until the origin has received `n` requests in all.
    pub async fn wait_for_total(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.total() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "origin saw {} requests, expected {n}",
                self.total()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
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
    match (state.handler)(&seen) {
        Reply::Respond(res) => Ok(res),
        // hyper closes the connection without a response when a service fails.
        Reply::Close => Err(std::io::Error::other("closed by the test origin")),
    }
}

/// A running digue in front of an origin.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    running: Option<digue::Running>,
}

impl Proxy {
    /// Starts digue with one site `portal` for `origin`. `server` is TOML
    /// added to `[server]`; `site` is TOML added after the site's origin
    /// (keys, then `[site.cache]` / `[[site.cache.rule]]` tables).
    pub async fn start(origin: &str, server: &str, site: &str) -> Proxy {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server}\n\
             [[site]]\nname = \"portal\"\nhosts = [\"*\"]\norigin = \"{origin}\"\n{site}\n"
        );
        Proxy::from_toml(&text).await
    }

    pub async fn from_toml(text: &str) -> Proxy {
        Proxy::from_toml_with(text, digue::Options::default()).await
    }

    /// Starts digue with options (a config file path for reloads, an admin token).
    pub async fn from_toml_with(text: &str, options: digue::Options) -> Proxy {
        let config = digue::preflight::parse(text)
            .unwrap_or_else(|e| panic!("test config must be valid:\n{e}\n---\n{text}"));
        let running = digue::start_with(config, options)
            .await
            .expect("digue starts");
        Proxy {
            addr: running.listen,
            admin: running.admin.expect("admin listener configured"),
            running: Some(running),
        }
    }

    pub fn url(&self, target: &str) -> String {
        format!("http://{}{target}", self.addr)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, target: &str) -> String {
        format!("http://{}{target}", self.admin)
    }

    /// Stops accepting and drains, like SIGTERM does.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// The value of one sample of `/metrics`, e.g.
    /// `digue_requests_total{outcome="hit",site="portal"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let res = get(&format!("http://{}/metrics", self.admin), &[]).await;
        res.text()
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until a `/metrics` sample satisfies `ok`, failing the test
    /// after `limit`; returns its value.
    pub async fn wait_metric(
        &self,
        sample: &str,
        ok: impl Fn(f64) -> bool,
        limit: Duration,
    ) -> f64 {
        let start = tokio::time::Instant::now();
        loop {
            let value = self.metric(sample).await;
            if ok(value) {
                return value;
            }
            assert!(
                start.elapsed() < limit,
                "within {limit:?} {sample} reaches the expected value; it is {value}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Cache-Status` header (all entries), or "".
    pub fn cache_status(&self) -> String {
        self.headers
            .get_all("cache-status")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole response (10 s at most).
pub async fn send(req: Request<Full<Bytes>>) -> Got {
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        let res = client().request(req).await.expect("request sent");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body read").to_bytes();
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    })
    .await;
    res.expect("response within 10 s")
}

/// `GET url` with extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    send(request(Method::GET, url, headers, "")).await
}

pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid request")
}

/// Writes raw bytes on a new connection and reads what comes back until the
/// server closes or 5 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One `Set-Cookie` of digue's: the value, or `None` when it clears the cookie.
pub fn set_cookie(got: &Got, name: &str) -> Option<Option<String>> {
    got.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let value = pair.trim().strip_prefix(name)?.strip_prefix('=')?;
            let cleared = value.is_empty()
                || attrs
                    .split(';')
                    .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"));
            Some((!cleared).then(|| value.to_owned()))
        })
        .next_back()
}

/// An admin API call carrying `Authorization: Bearer token` and a JSON body.
pub async fn admin_call(proxy: &Proxy, token: &str, method: Method, path: &str, body: &str) -> Got {
    let auth = format!("Bearer {token}");
    send(request(
        method,
        &proxy.admin_url(path),
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        body,
    ))
    .await
}

/// Counts values, for asserting on many responses at once.
pub fn tally<'a>(items: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}
