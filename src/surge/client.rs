//! One pupil's browser, as far as the network goes: its own keep-alive
//! connection, its cookie jar, and what a response means to a person.
//!
//! A bare `hyper::client::conn::http1` connection per pupil instead of a
//! pooled client: a pupil is one browser tab, so one connection, and
//! thousands of them cost a socket and two small tasks each.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode, response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::record::Kind;

/// Bodies past this are cut off and counted as errors: portal pages are
/// small, and a pupil must not buffer a runaway download.
const MAX_BODY_BYTES: usize = 4 << 20;
/// Assets read from a page at most, so a page with a thousand images does
/// not turn one pupil into a crawler.
const MAX_ASSETS: usize = 32;

/// Why no response came.
#[derive(Debug)]
pub(crate) enum Failure {
    Timeout,
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer in time"),
            Failure::Error(e) => f.write_str(e),
        }
    }
}

/// A whole response.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) head: response::Parts,
    pub(crate) body: Bytes,
}

struct Live {
    sender: SendRequest<Full<Bytes>>,
    /// Drives the connection; aborted with it so a timed-out request does not
    /// leave a task waiting on a server that never answers.
    driver: JoinHandle<()>,
    /// Whether a request already went through (a failure on a reused
    /// connection may be the server closing it while idle).
    used: bool,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One pupil's connection to the target, opened on first use and reopened
/// after the server closes it or a request fails.
pub(crate) struct Conn {
    addr: SocketAddr,
    live: Option<Live>,
}

impl Conn {
    pub(crate) fn new(addr: SocketAddr) -> Conn {
        Conn { addr, live: None }
    }

    /// Sends the request `make` builds and reads the whole response within
    /// `timeout`. Like a browser, a request that fails on a reused idle
    /// connection before any answer is sent again once on a new one.
    pub(crate) async fn send(
        &mut self,
        make: impl Fn() -> Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = tokio::time::timeout_at(deadline, async {
            match self.exchange(make()).await {
                Err((e, true)) if e.is_incomplete_message() || e.is_canceled() => {
                    self.live = None;
                    self.exchange(make()).await.map_err(|(e, _)| e.to_string())
                }
                other => other.map_err(|(e, _)| e.to_string()),
            }
        })
        .await;
        match outcome {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.live = None;
                Err(Failure::Error(e))
            }
            Err(_) => {
                // The request is still in flight on this connection; HTTP/1
                // cannot take another one until it ends, so drop it.
                self.live = None;
                Err(Failure::Timeout)
            }
        }
    }

    /// One request on the current connection; the flag says whether the
    /// connection had been used before.
    async fn exchange(&mut self, req: Request<Full<Bytes>>) -> Result<Answer, (Error, bool)> {
        let usable = match &mut self.live {
            Some(live) => live.sender.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            self.live = Some(connect(self.addr).await.map_err(|e| (e, false))?);
        }
        let live = self
            .live
            .as_mut()
            .expect("invariant: a connection was just opened");
        let reused = std::mem::replace(&mut live.used, true);
        let res = live
            .sender
            .send_request(req)
            .await
            .map_err(|e| (Error::Http(e), reused))?;
        let (head, body) = res.into_parts();
        let body = Limited::new(body, MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| (Error::Body(e.to_string()), false))?
            .to_bytes();
        Ok(Answer { head, body })
    }
}

/// What went wrong on the wire.
#[derive(Debug)]
pub(crate) enum Error {
    Connect(std::io::Error),
    Http(hyper::Error),
    Body(String),
}

impl Error {
    fn is_incomplete_message(&self) -> bool {
        matches!(self, Error::Http(e) if e.is_incomplete_message())
    }

    fn is_canceled(&self) -> bool {
        matches!(self, Error::Http(e) if e.is_canceled())
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect: {e}"),
            Error::Http(e) => write!(f, "http: {e}"),
            Error::Body(e) => write!(f, "body: {e}"),
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<Live, Error> {
    let stream = TcpStream::connect(addr).await.map_err(Error::Connect)?;
    // Only a latency hint: failing to set it changes nothing functionally.
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Http)?;
    let driver = tokio::spawn(async move {
        // Its errors surface on the request that was in flight.
        let _ = conn.await;
    });
    Ok(Live {
        sender,
        driver,
        used: false,
    })
}

/// Opens (and closes) one connection to `target`'s first reachable address,
/// so a wrong port fails the run at once instead of as thousands of errors.
pub(crate) async fn reach(host: &str, port: u16, timeout: Duration) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("resolving {host} took more than {}s", timeout.as_secs()))?
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
    let mut last = format!("{host} resolves to no address");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return Ok(addr),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within {}s", timeout.as_secs()),
        }
    }
    Err(last)
}

/// A pupil's cookies. The portal and digue both set cookies for `Path=/` on
/// one host, so names are enough; attributes other than expiry are ignored.
#[derive(Debug, Default)]
pub(crate) struct Jar(Vec<(String, String)>);

impl Jar {
    /// Applies a response's `Set-Cookie` headers.
    pub(crate) fn store(&mut self, headers: &HeaderMap) {
        for value in headers.get_all(header::SET_COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            let mut parts = value.split(';');
            let Some((name, val)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let (name, val) = (name.trim(), val.trim());
            let expired = parts.any(|attr| {
                attr.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("max-age")
                        && v.trim().parse::<i64>().is_ok_and(|s| s <= 0)
                })
            });
            self.0.retain(|(n, _)| n != name);
            if !expired && !val.is_empty() {
                self.0.push((name.to_owned(), val.to_owned()));
            }
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Cookie` header to send, if any cookie is held.
    pub(crate) fn header(&self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            return None;
        }
        let joined = self
            .0
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        HeaderValue::from_str(&joined).ok()
    }
}

/// The waiting room's `state`, when the answer is its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomState {
    Queued,
    Closed,
    Admitted,
}

/// What an answer means to the pupil.
#[derive(Debug)]
pub(crate) struct Meaning {
    pub(crate) kind: Kind,
    pub(crate) state: Option<RoomState>,
    /// The parsed body, for JSON answers of modest size.
    pub(crate) json: Option<serde_json::Value>,
    pub(crate) retry_after: Option<Duration>,
}

impl Meaning {
    /// No answer at all (error or timeout).
    pub(crate) fn failed(kind: Kind) -> Meaning {
        Meaning {
            kind,
            state: None,
            json: None,
            retry_after: None,
        }
    }
}

/// Classifies an answer. digue's waiting room answers before its cache, so
/// its 503s carry no `Cache-Status`; its busy page does (with a `detail`),
/// and so does anything the origin answered through it.
pub(crate) fn classify(answer: &Answer) -> Meaning {
    let h = &answer.head.headers;
    let status = answer.head.status;
    let json = is_json(h)
        .then(|| serde_json::from_slice::<serde_json::Value>(&answer.body).ok())
        .flatten();
    let state_str = json
        .as_ref()
        .and_then(|j| j.get("state"))
        .and_then(|s| s.as_str());
    let retry_after = retry_after(h).or_else(|| {
        json.as_ref()
            .and_then(|j| j.get("retry_after"))
            .and_then(serde_json::Value::as_u64)
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
    });
    let cache_status = h
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (kind, state) = match state_str {
        Some("queued") => (Kind::WaitingRoom, Some(RoomState::Queued)),
        Some("closed") => (Kind::WaitingRoom, Some(RoomState::Closed)),
        Some("admitted") => (Kind::WaitingRoom, Some(RoomState::Admitted)),
        Some("busy") if status == StatusCode::SERVICE_UNAVAILABLE => (Kind::Busy, None),
        // Whatever it points to, the pupil did not get the page it asked for.
        _ if status.is_redirection() => (Kind::Redirect, None),
        _ if status.is_success() => {
            if cache_status.starts_with("digue; hit") {
                (Kind::CacheHit, None)
            } else {
                (Kind::Page, None)
            }
        }
        _ if status == StatusCode::TOO_MANY_REQUESTS => (Kind::Busy, None),
        _ if status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some() => {
            if cache_status.is_empty() {
                (Kind::WaitingRoom, Some(RoomState::Queued))
            } else if cache_status.contains("fwd-status=") {
                // The origin's own 503, passed through.
                (Kind::Error, None)
            } else {
                (Kind::Busy, None)
            }
        }
        _ => (Kind::Error, None),
    };
    Meaning {
        kind,
        state,
        json,
        retry_after,
    }
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
}

/// `Retry-After` in seconds (the HTTP-date form is ignored: digue and the
/// portals this imitates send seconds).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The same-host assets a browser would fetch for `html`: stylesheets and
/// icons (`<link href>`), scripts and images (`src`). Absolute paths only;
/// other hosts are not the target's load.
pub(crate) fn assets_of(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found: Vec<String> = Vec::new();
    for (tag, attr) in [("<link", "href="), ("<script", "src="), ("<img", "src=")] {
        let mut from = 0;
        while let Some(at) = lower[from..].find(tag) {
            let start = from + at;
            let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
            from = end;
            let Some(a) = lower[start..end].find(attr) else {
                continue;
            };
            let value = &html[start + a + attr.len()..end];
            let value = match value.chars().next() {
                Some(q @ ('"' | '\'')) => value[1..].split(q).next().unwrap_or(""),
                _ => value
                    .split(|c: char| c.is_ascii_whitespace())
                    .next()
                    .unwrap_or("")
                    .trim_end_matches('/'),
            };
            // A link that is not a valid request target as written (a
            // space, say) is left out: a browser would percent-encode it,
            // the simulator does not guess.
            if super::scenario::request_target(value).is_some()
                && !found.iter().any(|f| f == value)
                && found.len() < MAX_ASSETS
            {
                found.push(value.to_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut res = http::Response::builder().status(status);
        for (k, v) in headers {
            res = res.header(*k, *v);
        }
        let (head, ()) = res.body(()).expect("response").into_parts();
        Answer {
            head,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn the_jar_keeps_sets_and_clears_cookies() {
        let mut jar = Jar::default();
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=ABC; Path=/; HttpOnly"),
        );
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("digue_ticket=t1; Path=/; Max-Age=43200; HttpOnly"),
        );
        jar.store(&h);
        assert_eq!(jar.get("JSESSIONID"), Some("ABC"));
        assert_eq!(
            jar.header().expect("cookies").to_str().expect("ascii"),
            "JSESSIONID=ABC; digue_ticket=t1"
        );
        let mut clear = HeaderMap::new();
        clear.append(
            header::SET_COOKIE,
            HeaderValue::from_static("digue_ticket=; Path=/; Max-Age=0"),
        );
        clear.append(
            header::SET_COOKIE,
            HeaderValue::from_static("digue_pass=p; Path=/; Max-Age=1200"),
        );
        jar.store(&clear);
        assert_eq!(jar.get("digue_ticket"), None, "Max-Age=0 deletes");
        assert_eq!(jar.get("digue_pass"), Some("p"));
    }

    #[test]
    fn answers_are_classified_as_a_pupil_sees_them() {
        let kind = |a: Answer| classify(&a).kind;
        assert_eq!(kind(answer(200, &[], "<html>")), Kind::Page);
        assert_eq!(
            kind(answer(200, &[("cache-status", "digue; hit; ttl=30")], "")),
            Kind::CacheHit
        );
        let queued = classify(&answer(
            503,
            &[("content-type", "application/json"), ("retry-after", "4")],
            r#"{"state":"queued","position":3,"eta_seconds":12}"#,
        ));
        assert_eq!(
            (queued.kind, queued.state),
            (Kind::WaitingRoom, Some(RoomState::Queued))
        );
        assert_eq!(queued.retry_after, Some(Duration::from_secs(4)));
        let admitted = classify(&answer(
            200,
            &[("content-type", "application/json")],
            r#"{"state":"admitted","retry_after":0}"#,
        ));
        assert_eq!(admitted.state, Some(RoomState::Admitted));
        assert_eq!(
            kind(answer(503, &[("retry-after", "5")], "<html>file")),
            Kind::WaitingRoom,
            "a 503 without Cache-Status is the gate's"
        );
        assert_eq!(
            kind(answer(
                503,
                &[
                    ("retry-after", "7"),
                    ("cache-status", "digue; fwd=uri-miss; detail=busy")
                ],
                "<html>",
            )),
            Kind::Busy
        );
        assert_eq!(
            kind(answer(
                503,
                &[("cache-status", "digue; fwd=miss; fwd-status=503")],
                ""
            )),
            Kind::Error
        );
        assert_eq!(
            kind(answer(503, &[], "")),
            Kind::Error,
            "a bare 503 is the origin failing"
        );
        assert_eq!(kind(answer(401, &[], "")), Kind::Error);
        assert_eq!(kind(answer(429, &[], "")), Kind::Busy);
        assert_eq!(
            kind(answer(302, &[("location", "/cas/login")], "")),
            Kind::Redirect,
            "a redirect is not the page"
        );
        assert_eq!(
            kind(answer(
                301,
                &[("location", "/x"), ("cache-status", "digue; hit")],
                ""
            )),
            Kind::Redirect,
            "not even from the cache"
        );
    }

    #[test]
    fn assets_are_read_from_the_page() {
        let html = r#"<link rel=stylesheet href=/static/portail.css>
            <img src="/static/logo.svg" alt="x"><script src='/static/portail.js' defer></script>
            <img src="https://cdn.example/x.png"><a href="/pronote/eleve.html">x</a>
            <img src="/logo 2.png"><img src="//cdn.example/y.png">
            <link rel="stylesheet" href="/static/portail.css">"#;
        assert_eq!(
            assets_of(html),
            [
                "/static/portail.css",
                "/static/portail.js",
                "/static/logo.svg"
            ]
        );
    }
}
