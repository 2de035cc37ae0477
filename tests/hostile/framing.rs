//! Request framing: raw bytes over TCP to a real digue in front of two raw
//! origins (sites `a.example` and `b.example`) that keep every byte they
//! receive and frame it strictly. Each input is refused with `400`, or read
//! one way and told to the origin that one way: digue re-frames every
//! request it forwards, so the client's framing bytes never reach the
//! origin. Either way the origins frame exactly the requests digue routed,
//! each at the site its Host names, and a fresh connection is served
//! afterwards. See `tests/hostile.rs`.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::support::raw_origin::{exchange_to_close, request_lines_in};
use crate::support::{Digue, Proxy, RawOrigin, exchange, site_section};

/// A request an attacker wants the origin to read as a second one, aimed
/// at the other site.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: b.example\r\n\r\n";

/// The two sites of the bench, each with its own origin.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Site {
    A,
    B,
}

impl Site {
    fn host(self) -> &'static str {
        match self {
            Site::A => "a.example",
            Site::B => "b.example",
        }
    }

    /// What its origin answers to every request.
    fn page(self) -> &'static str {
        match self {
            Site::A => "page of site a",
            Site::B => "page of site b",
        }
    }
}

/// What digue must make of an input.
#[derive(Debug, Clone, Copy)]
enum Reading {
    /// `400`, and nothing reaches either origin.
    Refused,
    /// One request reaches `site`'s origin, for `target`, with `body`.
    Forwarded {
        site: Site,
        target: &'static str,
        body: &'static str,
    },
}

use Reading::{Forwarded, Refused};

/// One hostile input and what digue must make of it.
struct Case {
    what: &'static str,
    bytes: String,
    reading: Reading,
    /// The connection must close after the answer: the bytes after the
    /// first request are never read as another (RFC 9112 §6.1).
    closes: bool,
}

impl Case {
    fn new(what: &'static str, bytes: impl Into<String>, reading: Reading) -> Case {
        Case {
            what,
            bytes: bytes.into(),
            reading,
            closes: false,
        }
    }

    fn then_closes(self) -> Case {
        Case {
            closes: true,
            ..self
        }
    }
}

/// digue with sites `a.example` and `b.example` (no catch-all), each in
/// front of its own raw origin.
struct Bench {
    proxy: Proxy,
    a: RawOrigin,
    b: RawOrigin,
}

impl Bench {
    async fn start() -> Bench {
        let a = RawOrigin::start(Site::A.page()).await;
        let b = RawOrigin::start(Site::B.page()).await;
        let proxy = Digue::without_site()
            .sites(&site_section("a", Site::A.host(), &a.url(), ""))
            .sites(&site_section("b", Site::B.host(), &b.url(), ""))
            .start()
            .await;
        Bench { proxy, a, b }
    }

    fn origin(&self, site: Site) -> &RawOrigin {
        match site {
            Site::A => &self.a,
            Site::B => &self.b,
        }
    }
}

/// `data` as one chunk and the last chunk.
fn chunked(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n0\r\n\r\n", data.len())
}

/// A POST to site a with these framing headers, whose body is an empty
/// chunked body followed by [`SMUGGLED`], and a `Content-Length` covering
/// both: a reader that takes the length sees one request with a body, a
/// reader that takes the chunks sees two requests.
fn empty_chunks_then_smuggled(framing: &str) -> String {
    let tail = format!("0\r\n\r\n{SMUGGLED}");
    format!(
        "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: {}\r\n{framing}\r\n\r\n{tail}",
        tail.len()
    )
}

/// Sends the case on a fresh bench and checks digue's answer, a fresh
/// connection afterwards, and every byte both origins received.
async fn check(case: Case) {
    let bench = Bench::start().await;
    let what = case.what;
    let got = if case.closes {
        exchange_to_close(bench.proxy.addr, case.bytes.as_bytes()).await
    } else {
        exchange(bench.proxy.addr, case.bytes.as_bytes(), 1).await
    };
    match case.reading {
        Refused => assert_eq!(got.status(), 400, "{what}: refused with 400; got {got:?}"),
        Forwarded { site, .. } => {
            assert_eq!(got.status(), 200, "{what}: forwarded; got {got:?}");
            assert_eq!(
                got.responses[0].text(),
                site.page(),
                "{what}: answered by the origin of site {site:?}"
            );
        }
    }
    if case.closes {
        assert!(got.closed, "{what}: digue closes the connection: {got:?}");
        assert_eq!(
            got.responses.len(),
            1,
            "{what}: one answer; what followed the first request was not read as another: {got:?}"
        );
    }

    let after = exchange(
        bench.proxy.addr,
        b"GET /after HTTP/1.1\r\nHost: a.example\r\n\r\n",
        1,
    )
    .await;
    assert_eq!(
        after.status(),
        200,
        "{what}: a normal request on a fresh connection afterwards is served: {after:?}"
    );
    bench.a.wait_for_target("/after").await;

    for site in [Site::A, Site::B] {
        let origin = bench.origin(site);
        let mut expected = match case.reading {
            Forwarded {
                site: to, target, ..
            } if to == site => vec![target],
            _ => vec![],
        };
        if site == Site::A {
            expected.push("/after");
        }
        assert_eq!(
            origin.targets(),
            expected,
            "{what}: the origin of site {site:?} frames exactly the requests routed to it"
        );
        assert!(
            origin.misframed().is_empty(),
            "{what}: every byte digue sent to site {site:?} frames strictly: {:?}",
            origin.misframed()
        );
        let requests = origin.requests();
        for request in &requests {
            let hosts = request.headers("host");
            assert!(
                hosts.len() == 1 && hosts[0].eq_ignore_ascii_case(site.host()),
                "{what}: the origin of site {site:?} is told its own Host, once: {hosts:?}"
            );
        }
        let in_bodies: usize = requests.iter().map(|r| request_lines_in(&r.body)).sum();
        assert_eq!(
            origin.request_lines(),
            requests.len() + in_bodies,
            "{what}: every request line site {site:?}'s origin received starts a request \
             or lies inside a framed body: {:?}",
            origin.connections()
        );
        if let Forwarded {
            site: to,
            target,
            body,
        } = case.reading
            && to == site
        {
            let request = requests
                .iter()
                .find(|r| r.target() == target)
                .expect("checked above");
            assert_eq!(request.text(), body, "{what}: the body, read one way");
        }
    }
    bench.proxy.shutdown().await;
}

async fn check_all(cases: Vec<Case>) {
    for case in cases {
        check(case).await;
    }
}

#[tokio::test]
async fn a_body_length_given_twice_is_refused_or_read_one_way_only() {
    let te_then_cl = format!(
        "POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{}",
        chunked(SMUGGLED)
    );
    let as_chunks = Forwarded {
        site: Site::A,
        target: "/",
        body: "",
    };
    check_all(vec![
        Case::new(
            "Content-Length and Transfer-Encoding: chunked, the length covering a smuggled request",
            empty_chunks_then_smuggled("Transfer-Encoding: chunked"),
            as_chunks,
        )
        .then_closes(),
        Case::new(
            "Transfer-Encoding: chunked and a short Content-Length, the chunk a smuggled request",
            te_then_cl,
            Forwarded {
                site: Site::A,
                target: "/",
                body: SMUGGLED,
            },
        )
        .then_closes(),
        Case::new(
            "two equal Content-Length",
            "POST /twice HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            Forwarded {
                site: Site::A,
                target: "/twice",
                body: "hello",
            },
        ),
        Case::new(
            "a GET with a Content-Length body",
            "GET /get HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhello",
            Forwarded {
                site: Site::A,
                target: "/get",
                body: "hello",
            },
        ),
        Case::new(
            "a GET with a chunked body",
            format!(
                "GET /get HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                chunked("hello")
            ),
            Forwarded {
                site: Site::A,
                target: "/get",
                body: "hello",
            },
        ),
        Case::new(
            "a chunked body with a trailer field holding a request line",
            "POST /trailer HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\nX-Note: GET /smuggled HTTP/1.1\r\n\r\n",
            Forwarded {
                site: Site::A,
                target: "/trailer",
                body: "hello",
            },
        ),
        Case::new(
            "two different Content-Length",
            format!(
                "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\nContent-Length: {}\r\n\r\nhello{SMUGGLED}",
                5 + SMUGGLED.len()
            ),
            Refused,
        ),
        Case::new(
            "one Content-Length listing two lengths",
            "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5, 5\r\n\r\nhello",
            Refused,
        ),
        Case::new(
            "a signed Content-Length",
            "POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: +5\r\n\r\nhello",
            Refused,
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_malformed_chunked_body_is_answered_400_and_never_completed_upstream() {
    let bodies = [
        ("a bare LF after a chunk size", "5\nhello\r\n0\r\n\r\n"),
        (
            "a bare LF after a chunk extension",
            "5;x=y\nhello\r\n0\r\n\r\n",
        ),
        ("a chunk size written 0x5", "0x5\r\nhello\r\n0\r\n\r\n"),
        (
            "a chunk size beyond 64 bits",
            "10000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a chunk longer than its size, the rest a last chunk and a request",
            "5\r\nhelloXX0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: b.example\r\n\r\n",
        ),
    ];
    for (what, body) in bodies {
        let bench = Bench::start().await;
        let bytes = format!(
            "POST /chunks HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
        );
        let got = exchange(bench.proxy.addr, bytes.as_bytes(), 1).await;
        assert_eq!(
            got.status(),
            400,
            "{what}: the client's fault, answered 400, not blamed on the origin: {got:?}"
        );
        let after = exchange(
            bench.proxy.addr,
            b"GET /after HTTP/1.1\r\nHost: a.example\r\n\r\n",
            1,
        )
        .await;
        assert_eq!(after.status(), 200, "{what}: a fresh connection is served");
        bench.a.wait_for_target("/after").await;
        assert_eq!(
            bench.a.targets(),
            ["/after"],
            "{what}: the origin never frames the broken request whole"
        );
        for broken in bench.a.misframed() {
            assert_eq!(
                broken.why, "a truncated message",
                "{what}: the origin at most sees the request broken off: {broken:?}"
            );
            assert_eq!(
                request_lines_in(broken.raw.as_bytes()),
                1,
                "{what}: and nothing after it: {broken:?}"
            );
        }
        assert!(
            bench.b.connections().is_empty(),
            "{what}: site b's origin is never called"
        );
        assert_eq!(
            bench
                .proxy
                .metric("digue_origin_errors_total{kind=\"protocol\",site=\"a\"}")
                .await,
            0.0,
            "{what}: not counted against the origin"
        );
        bench.proxy.shutdown().await;
    }
}

#[tokio::test]
async fn an_obfuscated_transfer_encoding_is_refused_or_read_as_chunked() {
    let as_chunks = Forwarded {
        site: Site::A,
        target: "/",
        body: "",
    };
    let chunks = |what, framing| {
        Case::new(what, empty_chunks_then_smuggled(framing), as_chunks).then_closes()
    };
    let refused = |what, framing| Case::new(what, empty_chunks_then_smuggled(framing), Refused);
    check_all(vec![
        chunks("a space before chunked", "Transfer-Encoding:  chunked"),
        chunks("a tab before chunked", "Transfer-Encoding:\tchunked"),
        chunks("a tab after chunked", "Transfer-Encoding: chunked\t"),
        chunks("chunked in upper case", "Transfer-Encoding: CHUNKED"),
        chunks("identity, then chunked", "Transfer-Encoding: identity, chunked"),
        refused("chunked, then identity", "Transfer-Encoding: chunked, identity"),
        refused("xchunked", "Transfer-Encoding: xchunked"),
        refused("identity alone", "Transfer-Encoding: identity"),
        refused(
            "chunked, then another Transfer-Encoding line saying identity",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        ),
        refused(
            "a space before the colon",
            "Transfer-Encoding : chunked",
        ),
        Case::new(
            "Transfer-Encoding in HTTP/1.0",
            format!(
                "POST / HTTP/1.0\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            Refused,
        ),
    ])
    .await;
}

#[tokio::test]
async fn malformed_line_ends_and_header_values_are_refused_or_read_one_way() {
    check_all(vec![
        Case::new(
            "bare LF line ends",
            "GET /lf HTTP/1.1\nHost: a.example\n\n",
            Forwarded {
                site: Site::A,
                target: "/lf",
                body: "",
            },
        ),
        Case::new(
            "a bare LF hiding a Content-Length line from a CRLF-only reader",
            "POST /lf HTTP/1.1\r\nHost: a.example\r\nX-Note: a\nContent-Length: 5\r\n\r\nhello",
            Forwarded {
                site: Site::A,
                target: "/lf",
                body: "hello",
            },
        ),
        Case::new(
            "obs-fold: a header continued on the next line after a space",
            "GET /fold HTTP/1.1\r\nHost: a.example\r\nX-Note: a\r\n b\r\n\r\n",
            Refused,
        ),
        Case::new(
            "obs-fold: Transfer-Encoding folded into the line before after a tab",
            "POST /fold HTTP/1.1\r\nHost: a.example\r\nX-Note: a\r\n\tTransfer-Encoding: chunked\r\n\
             Content-Length: 5\r\n\r\n0\r\n\r\n",
            Refused,
        ),
        Case::new(
            "obs-fold: a Host continued on the next line",
            "GET /fold HTTP/1.1\r\nHost: a.example\r\n b.example\r\n\r\n",
            Refused,
        ),
        Case::new(
            "a NUL in a header value",
            "GET /nul HTTP/1.1\r\nHost: a.example\r\nX-Note: a\0b\r\n\r\n",
            Refused,
        ),
        Case::new(
            "a bare CR in a header value, before a request line",
            format!("GET /cr HTTP/1.1\r\nHost: a.example\r\nX-Note: a\r{SMUGGLED}"),
            Refused,
        ),
        Case::new(
            "a bare CR ending the request line",
            "GET /cr HTTP/1.1\rHost: a.example\r\n\r\n",
            Refused,
        ),
    ])
    .await;
}

#[tokio::test]
async fn a_request_naming_two_hosts_or_none_is_refused() {
    check_all(vec![
        Case::new(
            "an absolute-form target naming site b, Host naming site a",
            "GET http://b.example/abs HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Refused,
        ),
        Case::new(
            "an absolute-form target naming site a, Host naming site b",
            "GET http://a.example/abs HTTP/1.1\r\nHost: b.example\r\n\r\n",
            Refused,
        ),
        Case::new(
            "an absolute-form target with user info before another site",
            "GET http://a.example@b.example/abs HTTP/1.1\r\nHost: a.example\r\n\r\n",
            Refused,
        ),
        Case::new(
            "two Host headers naming two sites",
            "GET /two HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            Refused,
        ),
        Case::new(
            "two Host headers naming the same site",
            "GET /two HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
            Refused,
        ),
        Case::new(
            "one Host header listing two sites",
            "GET /two HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n",
            Refused,
        ),
        Case::new(
            "a Host whose port is user info before another host",
            "GET /at HTTP/1.1\r\nHost: b.example:@evil.example\r\n\r\n",
            Refused,
        ),
        Case::new(
            "a Host with a port that is no number",
            "GET /at HTTP/1.1\r\nHost: b.example:8o\r\n\r\n",
            Refused,
        ),
        Case::new(
            "a Host with two ports",
            "GET /at HTTP/1.1\r\nHost: b.example:80:81\r\n\r\n",
            Refused,
        ),
        Case::new(
            "HTTP/1.1 without Host",
            "GET /none HTTP/1.1\r\n\r\n",
            Refused,
        ),
        Case::new(
            "HTTP/1.0 without Host",
            "GET /none HTTP/1.0\r\n\r\n",
            Refused,
        ),
    ])
    .await;
}

#[tokio::test]
async fn an_absolute_form_target_agreeing_with_host_reaches_that_site_only() {
    check_all(vec![
        Case::new(
            "an absolute-form target and Host naming site a, in two cases",
            "GET http://a.example/abs HTTP/1.1\r\nHost: A.Example\r\n\r\n",
            Forwarded {
                site: Site::A,
                target: "/abs",
                body: "",
            },
        ),
        Case::new(
            "an absolute-form target naming site b, in HTTP/1.0 without Host",
            "GET http://b.example/abs HTTP/1.0\r\n\r\n",
            Forwarded {
                site: Site::B,
                target: "/abs",
                body: "",
            },
        ),
    ])
    .await;
}

/// One HTTP/2 request over h2c; the status and body.
async fn h2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    uri: &str,
    hosts: &[&str],
) -> (StatusCode, String) {
    let mut req = Request::get(uri);
    for host in hosts {
        req = req.header("host", *host);
    }
    let req = req.body(Empty::new()).expect("valid request");
    let res = sender.send_request(req).await.expect("an answer");
    let status = res.status();
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_http2_request_whose_authority_and_host_disagree_is_refused() {
    let bench = Bench::start().await;
    let stream = TcpStream::connect(bench.proxy.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);

    let refused = [
        (
            "http://b.example/h2",
            &["a.example"][..],
            ":authority b, host a",
        ),
        (
            "http://a.example/h2",
            &["b.example"][..],
            ":authority a, host b",
        ),
        (
            "http://a.example/h2",
            &["a.example", "b.example"][..],
            ":authority a, two host fields",
        ),
    ];
    for (uri, hosts, what) in refused {
        let (status, body) = h2_get(&mut sender, uri, hosts).await;
        assert_eq!(status, 400, "{what}: refused with 400: {body}");
    }
    let served = [
        (
            "http://a.example/only",
            &[][..],
            Site::A,
            ":authority a alone",
        ),
        (
            "http://b.example/both",
            &["B.example"][..],
            Site::B,
            ":authority b, host b",
        ),
    ];
    for (uri, hosts, site, what) in served {
        let (status, body) = h2_get(&mut sender, uri, hosts).await;
        assert_eq!(status, 200, "{what}: served: {body}");
        assert_eq!(body, site.page(), "{what}: by the origin of site {site:?}");
    }
    assert_eq!(
        bench.a.targets(),
        ["/only"],
        "site a's origin sees only the request that named site a alone"
    );
    assert_eq!(
        bench.b.targets(),
        ["/both"],
        "site b's origin sees only the request whose :authority and host both named site b"
    );
    for site in [Site::A, Site::B] {
        for request in bench.origin(site).requests() {
            assert_eq!(
                request.headers("host").len(),
                1,
                "site {site:?}'s origin is told one Host: {}",
                request.head
            );
            assert!(
                request.headers("host")[0].eq_ignore_ascii_case(site.host()),
                "site {site:?}'s origin is told its own Host: {}",
                request.head
            );
        }
    }
    bench.proxy.shutdown().await;
}

#[tokio::test]
async fn header_names_an_origin_could_read_with_a_dash_never_reach_it() {
    let origin = RawOrigin::start("page").await;
    let proxy = Digue::new(&origin.url()).start().await;
    let got = exchange(
        proxy.addr,
        b"POST /form HTTP/1.1\r\nHost: portal\r\nContent-Length: 5\r\n\
          Transfer_Encoding: chunked\r\nX_Forwarded_For: 6.6.6.6\r\n\r\nhello",
        1,
    )
    .await;
    assert_eq!(got.status(), 200, "served: {}", got.raw);
    origin.wait_for_target("/form").await;
    let seen = &origin.requests()[0];
    for name in ["transfer_encoding", "x_forwarded_for"] {
        assert!(
            seen.headers(name).is_empty(),
            "{name} was dropped: {}",
            seen.text()
        );
    }
    assert_eq!(seen.text(), "hello", "the body as digue read it");
}
