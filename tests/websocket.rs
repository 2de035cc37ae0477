//! WebSocket (and other `Upgrade`) tunnels through digue, end to end over
//! real sockets: a WebSocket echo origin, and a client made with
//! tokio-tungstenite (on the plain listener, the TLS listener, and over
//! HTTP/2 extended CONNECT), through the cap, the gate, the idle timeout
//! and shutdown's grace.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::{TestCert, connect};
use support::{Browser, Digue, ENTRY, PASS, Proxy, TempDir, get, raw, wait_until};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{WebSocketStream, client_async};

/// A request the echo origin saw.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    headers: HeaderMap,
}

/// An origin that echoes WebSocket messages on any path, echoes raw bytes
/// after an `Upgrade: echo-raw`, answers `/refused` with a 403 instead of
/// switching, and any plain request with its own name (never storable).
struct EchoOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Tunnels open at the origin now.
    open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoOrigin {
    async fn start(name: &'static str) -> EchoOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (s, o) = (seen.clone(), open.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, open) = (s.clone(), o.clone());
                let service = service_fn(move |req| {
                    let (seen, open) = (seen.clone(), open.clone());
                    async move { Ok::<_, std::convert::Infallible>(answer(name, req, &seen, &open)) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        EchoOrigin {
            addr,
            seen,
            open,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// The upgrade requests it saw.
    fn upgrades(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.headers.contains_key("upgrade"))
            .collect()
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for EchoOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(
    name: &str,
    mut req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    open: &Arc<AtomicUsize>,
) -> Response<Full<Bytes>> {
    let target = req.uri().path().to_owned();
    seen.lock().expect("not poisoned").push(Seen {
        target: target.clone(),
        headers: req.headers().clone(),
    });
    let upgrade = req
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    let plain = |status: u16, body: &str| {
        Response::builder()
            .status(status)
            .header("cache-control", "no-store")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("response")
    };
    if target == "/refused" {
        return plain(403, "no websocket here");
    }
    let Some(protocol) = upgrade else {
        return plain(200, name);
    };
    let mut res = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", protocol.as_str());
    if protocol == "websocket" {
        let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
        res = res.header("sec-websocket-accept", derive_accept_key(&key));
    }
    let switched = hyper::upgrade::on(&mut req);
    let open = open.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = switched.await else { return };
        open.fetch_add(1, Ordering::SeqCst);
        let mut io = TokioIo::new(upgraded);
        if protocol == "websocket" {
            let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        } else {
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
        open.fetch_sub(1, Ordering::SeqCst);
    });
    res.body(Full::new(Bytes::new())).expect("response")
}

/// A WebSocket handshake for `target` on `stream`, with extra headers.
async fn ws_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<(WebSocketStream<S>, Response<Option<Vec<u8>>>), WsError> {
    let mut req = format!("ws://portal.example{target}")
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    client_async(req, stream).await
}

/// A WebSocket to digue's plain listener.
async fn ws(
    proxy: &Proxy,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<(WebSocketStream<TcpStream>, Response<Option<Vec<u8>>>), WsError> {
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    ws_over(tcp, target, headers).await
}

/// Sends `text` and expects it back.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an answer within 10 s")
        .expect("the tunnel is open")
        .expect("a message");
    assert_eq!(back.to_text().expect("text"), text, "the origin echoes");
}

/// Waits until the tunnel is closed by the other side (or broken).
async fn closed<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, why: &str) {
    let end = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the tunnel closes: {why}");
}

/// The status of a refused handshake.
fn refused(result: Result<impl Sized, WsError>) -> Response<Option<Vec<u8>>> {
    match result {
        Err(WsError::Http(res)) => *res,
        Err(e) => panic!("expected an HTTP answer instead of a switch, got {e}"),
        Ok(_) => panic!("expected an HTTP answer instead of a switch, got a tunnel"),
    }
}

const OPEN: &str = "digue_websockets_open{site=\"portal\"}";
const TOTAL: &str = "digue_websockets_total{site=\"portal\"}";

#[tokio::test]
async fn a_websocket_echoes_through_digue_and_the_origin_sees_a_clean_upgrade() {
    let origin = EchoOrigin::start("echo").await;
    let proxy = Digue::new(&origin.url()).start().await;
    let (mut ws, res) = ws(
        &proxy,
        "/notifications?x=1",
        &[
            ("cookie", "digue_pass=forged; ENT=abc"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    )
    .await
    .expect("the handshake succeeds through digue");
    assert_eq!(res.status(), 101);
    let cache_status = res.headers()["cache-status"].to_str().expect("ascii");
    assert!(
        cache_status.contains("fwd=bypass; detail=upgrade"),
        "a tunnel never uses the cache: {cache_status}"
    );
    echo(&mut ws, "bonjour").await;
    ws.send(Message::binary(vec![0_u8, 1, 2, 255]))
        .await
        .expect("send");
    let back = ws.next().await.expect("open").expect("a message");
    assert_eq!(back.into_data().as_ref(), &[0_u8, 1, 2, 255], "binary too");

    let seen = origin.upgrades();
    assert_eq!(seen.len(), 1, "one upgrade request reached the origin");
    let h = &seen[0].headers;
    assert_eq!(seen[0].target, "/notifications");
    assert_eq!(h["upgrade"], "websocket");
    assert!(
        h["connection"]
            .to_str()
            .expect("ascii")
            .eq_ignore_ascii_case("upgrade")
    );
    assert!(h.contains_key("sec-websocket-key"), "the key is passed on");
    assert_eq!(h["sec-websocket-version"], "13");
    assert_eq!(h["cookie"], "ENT=abc", "digue's own cookies are stripped");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "X-Forwarded-For is digue's, not the client's"
    );
    assert_eq!(proxy.metric(OPEN).await, 1.0, "one tunnel open");
    assert_eq!(proxy.metric(TOTAL).await, 1.0, "one tunnel opened");

    ws.close(None).await.expect("close");
    closed(&mut ws, "after the close handshake").await;
    proxy
        .wait_metric(OPEN, |v| v == 0.0, Duration::from_secs(10))
        .await;
    wait_until(
        "the origin's side closes",
        Duration::from_secs(10),
        async || origin.open() == 0,
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_websocket_echoes_through_the_tls_listener() {
    let origin = EchoOrigin::start("echo").await;
    let dir = TempDir::new("websocket-tls");
    let cert = TestCert::new(dir.path(), "portal", &["portal.example"]);
    let proxy = Digue::new(&origin.url())
        .server(&cert.server_keys())
        .start()
        .await;
    let addr = proxy.tls.expect("a TLS listener");
    let (_, _, tls) = connect(addr, &[&cert.der], "portal.example", &[b"http/1.1"]).await;
    let (mut ws, _) = ws_over(tls, "/ws", &[])
        .await
        .expect("the handshake succeeds over TLS");
    echo(&mut ws, "salut en TLS").await;
    assert_eq!(origin.upgrades().len(), 1);
    // An open tunnel would hold shutdown for its whole grace.
    drop(ws);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_http2_client_tunnels_a_websocket_with_extended_connect() {
    let origin = EchoOrigin::start("echo").await;
    let proxy = Digue::new(&origin.url()).start().await;
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    // One ordinary request first: the server's SETTINGS (which enable
    // extended CONNECT) have arrived once it is answered.
    let url = format!("http://{}/", proxy.addr);
    let first = sender
        .send_request(
            Request::get(&url)
                .body(Empty::<Bytes>::new())
                .expect("request"),
        )
        .await
        .expect("an answer");
    assert_eq!(first.status(), 200);
    let mut req = Request::connect(format!("http://{}/ws", proxy.addr))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut res = sender.send_request(req).await.expect("an answer");
    assert_eq!(res.status(), 200, "RFC 8441: the tunnel opens with a 200");
    let upgraded = hyper::upgrade::on(&mut res)
        .await
        .expect("the stream is a tunnel");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    echo(&mut ws, "bonjour en HTTP/2").await;
    let seen = origin.upgrades();
    assert_eq!(seen.len(), 1, "the origin got an HTTP/1.1 upgrade");
    assert!(
        seen[0].headers.contains_key("sec-websocket-key"),
        "with a key of digue's own"
    );
    drop(ws);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_websocket_goes_to_the_backend_that_holds_its_session() {
    let a = EchoOrigin::start("a").await;
    let b = EchoOrigin::start("b").await;
    let proxy = Digue::without_site()
        .sites(&format!(
            "[[site]]\nname = \"portal\"\nhosts = [\"*\"]\norigin = [{:?}, {:?}]\n",
            a.url(),
            b.url()
        ))
        .start()
        .await;
    for n in 0..8 {
        let cookie = format!("JSESSIONID=session-{n}");
        let page = get(&proxy.url("/page"), &[("cookie", &cookie)]).await;
        let home = page.text();
        let (mut ws, _) = ws(&proxy, &format!("/ws/{n}"), &[("cookie", &cookie)])
            .await
            .expect("a tunnel");
        echo(&mut ws, "ping").await;
        let target = format!("/ws/{n}");
        let (there, other) = if home == "a" { (&a, &b) } else { (&b, &a) };
        assert!(
            there.upgrades().iter().any(|s| s.target == target),
            "session {n}'s WebSocket goes where its pages go ({home})"
        );
        assert!(!other.upgrades().iter().any(|s| s.target == target));
        drop(ws);
    }
    proxy.shutdown().await;
}

/// The soft limit on open files, raised toward the hard one when below
/// `wanted` (prlimit on this very process); what it is afterwards.
fn open_files_limit(wanted: u64) -> u64 {
    let read = || {
        std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse::<u64>()
            .ok()
    };
    let soft = read().unwrap_or(1024);
    if soft < wanted {
        let _ = std::process::Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={wanted}:"))
            .status();
    }
    read().unwrap_or(soft)
}

#[tokio::test]
async fn a_thousand_open_websockets_do_not_hold_back_ordinary_requests() {
    // Each tunnel is four sockets in this process: the client's, digue's
    // two, the origin's.
    let limit = open_files_limit(8192);
    let tunnels: usize = if limit >= 4 * 1000 + 1000 {
        1000
    } else {
        eprintln!("only {limit} open files allowed: fewer tunnels");
        usize::try_from(limit.saturating_sub(1000) / 4).unwrap_or(100)
    };
    let origin = EchoOrigin::start("page").await;
    let proxy = Digue::new(&origin.url())
        .site("origin_concurrency = 4\norigin_queue_timeout = \"10s\"")
        .start()
        .await;
    let mut open = Vec::with_capacity(tunnels);
    // Opened 100 at a time: each handshake takes one of the 4 origin
    // slots while the origin answers it.
    for batch in 0..tunnels.div_ceil(100) {
        let opening = (batch * 100..tunnels.min(batch * 100 + 100))
            .map(|i| {
                let proxy = &proxy;
                async move { ws(proxy, &format!("/ws/{i}"), &[]).await }
            })
            .collect::<Vec<_>>();
        for opened in join_all(opening).await {
            open.push(opened.expect("every tunnel opens").0);
        }
    }
    assert_eq!(
        proxy.metric(OPEN).await,
        tunnels as f64,
        "every tunnel is open"
    );
    let pages = join_all((0..40).map(|i| get_page(&proxy, i))).await;
    assert!(
        pages.iter().all(|status| *status == 200),
        "ordinary requests are answered while {tunnels} tunnels are open: {pages:?}"
    );
    join_all(open.iter_mut().map(|ws| echo(ws, "still here"))).await;
    drop(open);
    proxy
        .wait_metric(OPEN, |v| v == 0.0, Duration::from_secs(30))
        .await;
    proxy.shutdown().await;
}

async fn get_page(proxy: &Proxy, i: usize) -> u16 {
    get(&proxy.url(&format!("/page/{i}")), &[])
        .await
        .status
        .as_u16()
}

#[tokio::test]
async fn one_websocket_over_max_websockets_gets_the_busy_page() {
    let origin = EchoOrigin::start("echo").await;
    let proxy = Digue::new(&origin.url())
        .site("max_websockets = 2")
        .start()
        .await;
    let (mut first, _) = ws(&proxy, "/ws", &[]).await.expect("the first opens");
    let (second, _) = ws(&proxy, "/ws", &[]).await.expect("the second opens");
    let third = refused(ws(&proxy, "/ws", &[]).await);
    assert_eq!(third.status(), 503, "the third is over max_websockets");
    assert!(
        third.headers().contains_key("retry-after"),
        "the busy page says when to retry"
    );
    assert_eq!(
        origin.upgrades().len(),
        2,
        "the third never reached the origin"
    );
    first.close(None).await.expect("close");
    closed(&mut first, "after the close handshake").await;
    proxy
        .wait_metric(OPEN, |v| v == 1.0, Duration::from_secs(10))
        .await;
    let (mut again, _) = ws(&proxy, "/ws", &[])
        .await
        .expect("a place came back when one closed");
    echo(&mut again, "me voilà").await;
    drop((second, again));
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_websocket_to_a_gated_path_needs_a_pass() {
    let origin = EchoOrigin::start("portal").await;
    let proxy = Digue::new(&origin.url())
        .admission("new_users_per_minute = 1\nburst = 1")
        .start()
        .await;
    // The one place of the minute goes to a browser, which gets a pass.
    let mut browser = Browser::on("portal.example");
    let first = browser.visit(&proxy, ENTRY, support::Accept::Html).await;
    assert_eq!(first.status, 200, "the first newcomer is admitted");
    let pass = format!("{PASS}={}", browser.pass());

    let queued = refused(ws(&proxy, ENTRY, &[]).await);
    assert_eq!(
        queued.status(),
        503,
        "without a pass, the waiting room instead of a tunnel"
    );
    assert!(
        queued.headers().contains_key("retry-after"),
        "the waiting room's answer"
    );
    assert!(origin.upgrades().is_empty(), "no tunnel reached the origin");

    let (mut ws, _) = ws(&proxy, ENTRY, &[("cookie", &pass)])
        .await
        .expect("with a pass, the tunnel opens");
    echo(&mut ws, "admis").await;
    drop(ws);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_idle_websocket_is_closed_after_the_idle_timeout() {
    let origin = EchoOrigin::start("echo").await;
    let proxy = Digue::new(&origin.url())
        .site("websocket_idle_timeout = \"300ms\"")
        .start()
        .await;
    let (mut ws, _) = ws(&proxy, "/ws", &[]).await.expect("a tunnel");
    echo(&mut ws, "un seul message").await;
    closed(&mut ws, "nothing moved for websocket_idle_timeout").await;
    proxy
        .wait_metric(OPEN, |v| v == 0.0, Duration::from_secs(10))
        .await;
    wait_until(
        "the origin's side closes",
        Duration::from_secs(10),
        async || origin.open() == 0,
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_to_another_protocol_is_refused_with_a_400_unless_allowed() {
    let origin = EchoOrigin::start("echo").await;
    let proxy = Digue::new(&origin.url())
        .site("allow_upgrades = [\"echo-raw\"]")
        .start()
        .await;
    for (protocol, connection) in [("h2c", "Upgrade, HTTP2-Settings"), ("foo", "upgrade")] {
        let answer = raw(
            proxy.addr,
            format!(
                "GET / HTTP/1.1\r\nHost: portal.example\r\nConnection: {connection}\r\n\
                 Upgrade: {protocol}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "Upgrade: {protocol} is refused with a 400: {answer}"
        );
        assert!(
            answer.contains("Protocole non pris en charge"),
            "the page says why, in French first: {answer}"
        );
    }
    assert!(
        origin.seen().is_empty(),
        "nothing refused reached the origin"
    );

    // A protocol the site allows is tunnelled the same way as WebSocket.
    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    tcp.write_all(
        b"GET /raw HTTP/1.1\r\nHost: portal.example\r\nConnection: Upgrade\r\nUpgrade: echo-raw\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0_u8; 1];
        tcp.read_exact(&mut byte).await.expect("the answer's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "switched: {head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo-raw"),
        "{head}"
    );
    tcp.write_all(b"octets bruts").await.expect("write");
    let mut back = [0_u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut back))
        .await
        .expect("echoed within 10 s")
        .expect("echoed");
    assert_eq!(
        &back, b"octets bruts",
        "the allowed protocol's bytes go through"
    );
    drop(tcp);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_origin_that_does_not_switch_has_its_answer_relayed() {
    let origin = EchoOrigin::start("echo").await;
    let proxy = Digue::new(&origin.url()).start().await;
    let answer = refused(ws(&proxy, "/refused", &[]).await);
    assert_eq!(answer.status(), 403, "the origin's own status");
    assert_eq!(
        answer.body().as_deref(),
        Some(&b"no websocket here"[..]),
        "and its body"
    );
    assert_eq!(proxy.metric(TOTAL).await, 0.0, "no tunnel was opened");
    proxy
        .wait_metric(OPEN, |v| v == 0.0, Duration::from_secs(10))
        .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn websockets_stay_open_during_shutdown_grace_and_close_at_its_end() {
    let origin = EchoOrigin::start("echo").await;
    let proxy = Digue::new(&origin.url())
        .server("shutdown_grace = \"3s\"")
        .start()
        .await;
    let addr = proxy.addr;
    let (mut ws, _) = ws(&proxy, "/ws", &[]).await.expect("a tunnel");
    echo(&mut ws, "avant").await;
    let stopping = tokio::spawn(proxy.shutdown());
    wait_until(
        "digue stops accepting",
        Duration::from_secs(10),
        async || TcpStream::connect(addr).await.is_err(),
    )
    .await;
    echo(&mut ws, "pendant l'arrêt").await;
    assert!(!stopping.is_finished(), "shutdown waits for the tunnel");
    closed(&mut ws, "at the end of shutdown_grace").await;
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown ends with the grace")
        .expect("no panic");
}
