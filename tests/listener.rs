//! The public listener end to end: malformed input, limits, Host routing,
//! header hygiene toward the origin and back, h2c, graceful drain, and the
//! admin port kept apart from the public one.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use support::{Digue, Origin, Proxy, get, raw, reply, request, send, site_section, wait_until};

/// Writes `bytes` while reading the answer, so that a server which answers
/// and closes before reading everything cannot block the writer; returns
/// what came back before the server closed (or 5 s passed).
async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr
    });
    let mut out = Vec::new();
    // A reset after the answer is fine: what was read before it is kept.
    let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

/// The status line of a raw answer, or "" when the server sent nothing.
fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

async fn assert_still_serving(proxy: &Proxy, target: &str) {
    let res = get(&proxy.url(target), &[]).await;
    assert_eq!(
        res.status, 200,
        "a normal request on a new connection is still served"
    );
}

#[tokio::test]
async fn garbage_bytes_get_a_400_and_the_proxy_keeps_serving() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;

    let tls = raw(proxy.addr, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert!(
        tls.is_empty() || status_line(&tls).starts_with("HTTP/1.1 400"),
        "a TLS-looking hello gets a 400 or a closed connection, got {tls:?}"
    );
    let bad = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(
        status_line(&bad).starts_with("HTTP/1.1 400"),
        "a header line without a colon gets a 400, got {bad:?}"
    );
    assert_eq!(
        origin.total(),
        0,
        "malformed requests never reach the origin"
    );
    assert_still_serving(&proxy, "/after-garbage").await;
}

#[tokio::test]
async fn a_200_kb_header_gets_431_and_the_proxy_keeps_serving() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;

    let mut head = b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 200 * 1024));
    head.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(proxy.addr, head).await;
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 431"),
        "an oversized head gets 431, got {:?}",
        status_line(&answer)
    );
    assert_eq!(
        origin.count("/big"),
        0,
        "the oversized request is not forwarded"
    );
    assert_still_serving(&proxy, "/after-big").await;
}

#[tokio::test]
async fn a_client_stalling_mid_head_is_disconnected_while_others_are_served() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "header_read_timeout = \"1s\"", "").await;

    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Half: ")
        .await
        .expect("half a head written");
    let stalled_at = Instant::now();

    assert_still_serving(&proxy, "/meanwhile").await;

    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_millis(2500), slow.read_to_end(&mut out)).await;
    let waited = stalled_at.elapsed();
    assert!(
        read.is_ok(),
        "a client stalling mid-head is disconnected within ~2 s (still open after {waited:?})"
    );
    let answer = String::from_utf8_lossy(&out);
    assert!(
        answer.is_empty() || status_line(&answer).starts_with("HTTP/1.1 408"),
        "the stalled client gets EOF or a 408, got {answer:?}"
    );
    assert!(
        waited >= Duration::from_millis(800),
        "not cut before the configured 1 s ({waited:?})"
    );
    assert_eq!(
        origin.count("/slow"),
        0,
        "the half request is never forwarded"
    );
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_header_timeout() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "header_read_timeout = \"1s\"", "").await;

    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut out = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_millis(2500), silent.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "a connection that sends nothing must not hold a connection slot past \
         header_read_timeout (still open after 2.5 s)"
    );
}

/// Reads one HTTP/1.1 response with a `Content-Length` body from a raw
/// stream, leaving the connection open.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(n > 0, "connection closed mid-response: {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A connection that made one request and now sits idle, kept open.
async fn idle_connection(addr: SocketAddr, target: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut stream))
        .await
        .expect("the first connections are served at once");
    assert!(
        status_line(&answer).starts_with("HTTP/1.1 200"),
        "{answer:?}"
    );
    stream
}

#[tokio::test]
async fn a_third_client_waits_until_one_of_two_allowed_connections_closes() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "max_connections = 2", "").await;

    let first = idle_connection(proxy.addr, "/one").await;
    let second = idle_connection(proxy.addr, "/two").await;

    let url = proxy.url("/three");
    let mut third = tokio::spawn(async move { get(&url, &[]).await });
    let early = tokio::time::timeout(Duration::from_millis(700), &mut third).await;
    assert!(
        early.is_err(),
        "the third request must not be served while two connections are held"
    );
    assert_eq!(
        origin.count("/three"),
        0,
        "the third request is not forwarded yet"
    );

    drop(first);
    let res = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third request is served once a connection closes")
        .expect("the client task did not panic");
    assert_eq!(res.status, 200);
    assert_eq!(origin.count("/three"), 1);
    drop(second);
}

#[tokio::test]
async fn an_unknown_host_gets_a_french_421_and_never_reaches_the_origin() {
    let origin = Origin::fixed(&[], "ent").await;
    let proxy = Digue::without_site()
        .sites(&site_section("ent", "ent.example.fr", &origin.url(), ""))
        .start()
        .await;

    let res = get(&proxy.url("/"), &[("host", "other.example")]).await;
    assert_eq!(res.status, 421, "no site answers other.example");
    assert!(
        res.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "an HTML page: {:?}",
        res.header("content-type")
    );
    assert!(
        res.text().contains("Site inconnu"),
        "the page is in French by default: {}",
        res.text()
    );
    assert_eq!(
        origin.total(),
        0,
        "a misdirected request never reaches the origin"
    );

    let res = get(&proxy.url("/ok"), &[("host", "ENT.example.fr:8080")]).await;
    assert_eq!(res.status, 200, "Host matching ignores case and port");
    assert_eq!(res.text(), "ent");
    let seen = origin.last("/ok").expect("the origin saw the request");
    assert_eq!(
        seen.headers["host"], "ENT.example.fr:8080",
        "the client's Host is passed through unchanged"
    );
}

#[tokio::test]
async fn an_exact_host_site_and_a_wildcard_site_reach_different_origins() {
    let ent = Origin::fixed(&[], "ent").await;
    let other = Origin::fixed(&[], "other").await;
    let proxy = Digue::new(&other.url())
        .name("any")
        .sites(&site_section("ent", "ent.example.fr", &ent.url(), ""))
        .start()
        .await;

    let a = get(&proxy.url("/p"), &[("host", "ent.example.fr")]).await;
    assert_eq!(a.text(), "ent", "the exact host wins over the wildcard");
    let b = get(&proxy.url("/p"), &[("host", "lycee.example.fr")]).await;
    assert_eq!(
        b.text(),
        "other",
        "any other host goes to the wildcard site"
    );
    assert_eq!(ent.count("/p"), 1);
    assert_eq!(other.count("/p"), 1);
}

#[tokio::test]
async fn forwarding_headers_come_from_the_connection_not_the_client() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;

    get(
        &proxy.url("/fwd"),
        &[
            ("host", "ent.example.fr"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let seen = origin.last("/fwd").expect("forwarded");
    let h = &seen.headers;
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "a forged XFF is replaced by the peer address"
    );
    assert_eq!(h["x-forwarded-proto"], "http", "the real scheme");
    assert_eq!(
        h["x-forwarded-host"], "ent.example.fr",
        "a forged X-Forwarded-Host is replaced by the client's Host"
    );
    assert_eq!(
        h["host"], "ent.example.fr",
        "Host passes through by default"
    );
    assert_eq!(
        h.get_all("x-forwarded-host").iter().count(),
        1,
        "one X-Forwarded-Host only"
    );
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarded_chain() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "trusted_proxies = [\"127.0.0.1\"]", "").await;

    get(
        &proxy.url("/chain"),
        &[("host", "ent.example.fr"), ("x-forwarded-for", "6.6.6.6")],
    )
    .await;
    let seen = origin.last("/chain").expect("forwarded");
    assert_eq!(
        seen.headers["x-forwarded-for"], "6.6.6.6, 127.0.0.1",
        "the trusted chain is kept and the peer appended"
    );
}

#[tokio::test]
async fn origin_host_replaces_the_host_toward_the_origin() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "", "origin_host = \"backend.internal\"").await;

    get(&proxy.url("/rewritten"), &[("host", "ent.example.fr")]).await;
    let seen = origin.last("/rewritten").expect("forwarded");
    assert_eq!(seen.headers["host"], "backend.internal");
    assert_eq!(
        seen.headers["x-forwarded-host"], "ent.example.fr",
        "the origin still learns which Host the client asked for"
    );
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_in_both_directions() {
    let origin = Origin::start(|_| {
        reply(
            200,
            &[
                ("connection", "x-origin-secret"),
                ("x-origin-secret", "s3cret"),
                ("keep-alive", "timeout=5"),
                ("x-kept", "yes"),
            ],
            "ok",
        )
    })
    .await;
    let proxy = Proxy::start(&origin.url(), "", "").await;

    let res = get(
        &proxy.url("/hop"),
        &[
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic dXNlcjpwYXNz"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    let seen = origin.last("/hop").expect("forwarded");
    for name in ["x-drop-me", "keep-alive", "te", "proxy-authorization"] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} must not reach the origin: {:?}",
            seen.headers
        );
    }
    assert_eq!(
        seen.headers["x-end-to-end"], "kept",
        "end-to-end headers pass"
    );

    assert_eq!(res.status, 200);
    for name in ["x-origin-secret", "keep-alive"] {
        assert!(
            res.header(name).is_none(),
            "{name} must not reach the client: {:?}",
            res.headers
        );
    }
    assert_eq!(
        res.header("x-kept"),
        Some("yes"),
        "end-to-end response headers pass"
    );
}

/// A body of `len` bytes that is not one repeated byte, so that a shifted
/// or truncated copy cannot compare equal.
fn patterned_body(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + u8::try_from((i * 7 + i / 26) % 26).expect("< 26")))
        .collect()
}

#[tokio::test]
async fn a_post_body_reaches_the_origin_byte_exact_and_is_never_cached() {
    let origin = Origin::fixed(&[("cache-control", "public, max-age=60")], "done").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let body = patterned_body(100 * 1024);

    let mut statuses = Vec::new();
    for _ in 0..2 {
        let res = send(request(
            Method::POST,
            &proxy.url("/pronote/appelfonction/3/abc/1"),
            &[("content-type", "application/octet-stream")],
            &body,
        ))
        .await;
        assert_eq!(res.status, 200);
        assert!(
            res.cache_status().contains("fwd=method"),
            "a POST is forwarded because of its method: {}",
            res.cache_status()
        );
        statuses.push(res.cache_status());
    }
    let seen = origin.seen();
    assert_eq!(
        seen.len(),
        2,
        "both identical POSTs reach the origin: {statuses:?}"
    );
    for s in &seen {
        assert_eq!(s.method, Method::POST, "the method is kept");
        assert_eq!(s.body.len(), body.len(), "the whole body arrives");
        assert!(s.body == body.as_bytes(), "the body arrives byte-exact");
    }
}

#[tokio::test]
async fn a_post_answered_503_is_not_retried() {
    let origin = Origin::start(|_| reply(503, &[("retry-after", "5")], "down")).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;

    let res = send(request(
        Method::POST,
        &proxy.url("/pronote/appelfonction/3/abc/2"),
        &[("content-type", "application/octet-stream")],
        "encrypted-call",
    ))
    .await;
    assert_eq!(res.status, 503, "the origin's answer is relayed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        origin.total(),
        1,
        "a per-user call is never retried, even on 503"
    );
}

#[tokio::test]
async fn an_h2c_client_is_served_and_the_origin_gets_the_authority_as_host_and_one_cookie_line() {
    let origin = Origin::fixed(&[], "over h2c").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();

    let req = Request::get(proxy.url("/h2"))
        .header("cookie", "JSESSIONID=abc")
        .header("cookie", "lang=fr")
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("answer within 10 s")
        .expect("an h2c request is answered");
    assert_eq!(res.version(), http::Version::HTTP_2, "spoken over HTTP/2");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"over h2c");

    let seen = origin.last("/h2").expect("forwarded over HTTP/1.1");
    assert_eq!(
        seen.headers["host"],
        proxy.addr.to_string().as_str(),
        "the origin gets the request's authority as Host"
    );
    assert_eq!(
        seen.headers.get_all("cookie").iter().collect::<Vec<_>>(),
        ["JSESSIONID=abc; lang=fr"],
        "HTTP/2 cookie fields reach an HTTP/1.1 origin as one line"
    );
}

/// A phone that went off the network mid-HTTP/2 never answers again: its
/// connection is closed when a ping goes unanswered, freeing its slot.
#[tokio::test]
async fn an_http2_peer_that_stops_answering_pings_is_disconnected() {
    let origin = Origin::fixed(&[], "ok").await;
    let proxy = Proxy::start(&origin.url(), "header_read_timeout = \"500ms\"", "").await;
    let mut silent = TcpStream::connect(proxy.addr).await.expect("connect");
    // The HTTP/2 preface and an empty SETTINGS frame; then nothing, not
    // even the acknowledgements a live client sends.
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface written");
    let started = Instant::now();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "the silent HTTP/2 connection is still open after 10 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before a ping could be answered: {:?}",
        started.elapsed()
    );
    // Its connection slot is freed.
    let open = "digue_connections_open";
    proxy
        .wait_metric(open, |n| n == 0.0, Duration::from_secs(2))
        .await;
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let origin = Origin::fixed(&[], "finished").await;
    let proxy = Proxy::start(&origin.url(), "shutdown_grace = \"10s\"", "").await;
    let addr = proxy.addr;
    origin.hold();

    let url = proxy.url("/slow-report");
    let readyz = proxy.admin_url("/readyz");
    let in_flight = tokio::spawn(async move { get(&url, &[]).await });
    origin.wait_for_total(1).await;

    let shutdown = tokio::spawn(proxy.shutdown());
    wait_until(
        "new connections are refused once shutdown began",
        Duration::from_secs(5),
        async || match TcpStream::connect(addr).await {
            // Accepted before the listener closed: hang up at once so this
            // probe is not one more connection to drain.
            Ok(probe) => {
                drop(probe);
                false
            }
            Err(_) => true,
        },
    )
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the request in flight"
    );
    let ready = get(&readyz, &[]).await;
    assert_eq!(
        ready.status,
        503,
        "while draining, /readyz sends load balancers away: {}",
        ready.text()
    );

    origin.release();
    let res = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("the in-flight request completes")
        .expect("the client task did not panic");
    assert_eq!(res.status, 200, "the request in flight completes normally");
    assert_eq!(res.text(), "finished");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown returns once the last request is done")
        .expect("shutdown did not panic");
}

#[tokio::test]
async fn admin_endpoints_live_on_the_admin_port_only() {
    let origin = Origin::fixed(&[], "from the origin").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    get(&proxy.url("/warm-up"), &[]).await;

    let health = get(&format!("http://{}/healthz", proxy.admin), &[]).await;
    assert_eq!(health.status, 200, "/healthz answers on the admin port");

    let metrics = get(&format!("http://{}/metrics", proxy.admin), &[]).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "Prometheus text format: {:?}",
        metrics.header("content-type")
    );
    assert!(
        metrics.text().contains("digue_requests_total"),
        "metrics list digue_requests_total:\n{}",
        metrics.text()
    );

    let public = get(&proxy.url("/metrics"), &[]).await;
    assert_eq!(
        public.text(),
        "from the origin",
        "the public port proxies /metrics to the origin"
    );
    assert_eq!(origin.count("/metrics"), 1, "the origin saw /metrics");
    let public = get(&proxy.url("/healthz"), &[]).await;
    assert_eq!(public.text(), "from the origin");
    assert_eq!(origin.count("/healthz"), 1, "the origin saw /healthz");
}
