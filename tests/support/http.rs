//! The client side: a real HTTP client, answers read whole, raw bytes over
//! TCP, and readers for what digue sets (cookies, JSON bodies).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

    /// The body of a JSON answer; fails unless it is one.
    pub fn json(&self) -> Value {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "a JSON answer ({}): {}",
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("valid JSON ({e}): {}", self.text()))
    }
}

/// Sends a request with `client` and reads the whole response (10 s at most).
async fn send_with(client: Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Got {
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        let res = client.request(req).await.expect("request sent");
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

/// Sends a request and reads the whole response (10 s at most).
pub async fn send(req: Request<Full<Bytes>>) -> Got {
    send_with(Client::builder(TokioExecutor::new()).build_http(), req).await
}

/// `GET url` with extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Got {
    send(request(Method::GET, url, headers, "")).await
}

/// `GET url` from a chosen local address (any of 127.0.0.0/8 on Linux).
pub async fn get_from(local: IpAddr, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local));
    let client = Client::builder(TokioExecutor::new()).build(connector);
    send_with(client, request(Method::GET, url, headers, "")).await
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

/// A new value of one of digue's cookies in this answer.
pub fn new_cookie(got: &Got, name: &str) -> Option<String> {
    set_cookie(got, name).flatten()
}

/// Counts values, for asserting on many responses at once.
pub fn tally<'a>(items: impl IntoIterator<Item = &'a str>) -> HashMap<&'a str, usize> {
    let mut m = HashMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}
