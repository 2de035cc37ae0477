//! HTTPS origins end to end: a real TLS origin on `127.0.0.1:0` with a
//! private CA made by the test, and digue in front of it: trust, names,
//! mutual TLS, HTTP/2 under the guard, failures as digue's 502 page, and a
//! CA file changed under the same path taken on reload.
#![allow(clippy::disallowed_methods)] // the deadlines of the test itself run on real time

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::Version;
use support::tls::{TestCa, TestCert, origin_tls};
use support::{Digue, Origin, Proxy, Seen, TempDir, get, page, reply};

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// A portal over HTTPS whose pages are never storable (every request
/// reaches it), serving `cert`, requiring a client certificate from
/// `clients` when given.
async fn https_portal(cert: &TestCert, clients: Option<&TestCa>, alpn: &[&[u8]]) -> Origin {
    Origin::start_tls(origin_tls(cert, clients, alpn), |seen: &Seen| {
        reply(200, &[("cache-control", "no-store")], &page(&seen.target))
    })
    .await
}

fn ca_file(path: &Path) -> String {
    format!("origin_ca_file = \"{}\"", path.display())
}

/// A 502 page from digue itself, in French first, for an origin it could
/// not reach; the origin counted as failed by TLS (once, by this proxy).
async fn assert_tls_refused(proxy: &Proxy, origin: &Origin, why: &str) {
    let before = origin.total();
    let started = Instant::now();
    let got = get(&proxy.url("/page"), &[]).await;
    let took = started.elapsed();
    assert_eq!(got.status, 502, "{why}: digue's 502 page: {}", got.text());
    assert!(
        got.text().contains("Le portail ne répond pas"),
        "{why}: the page is digue's, in French: {}",
        got.text()
    );
    assert!(
        got.cache_status().contains("detail=origin-unreachable"),
        "{why}: {}",
        got.cache_status()
    );
    assert!(
        took < Duration::from_secs(3),
        "{why}: refused within the connect timeout (3 s), took {took:?}"
    );
    assert_eq!(
        origin.total(),
        before,
        "{why}: no request reached the origin"
    );
    assert_eq!(
        proxy
            .metric("digue_origin_errors_total{kind=\"tls\",site=\"portal\"}")
            .await,
        1.0,
        "{why}: counted as a TLS failure"
    );
}

#[tokio::test]
async fn an_origin_signed_by_a_private_ca_is_reached_with_origin_ca_file() {
    let dir = TempDir::new("origin-tls");
    let ca = TestCa::new(dir.path(), "ca");
    let origin = https_portal(&ca.issue(dir.path(), "origin", &["127.0.0.1"]), None, H1).await;
    let proxy = Digue::new(&origin.url())
        .site(&ca_file(&ca.cert))
        .start()
        .await;
    for _ in 0..3 {
        let got = get(&proxy.url("/page"), &[]).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.text(), page("/page"), "the origin's page, over TLS");
    }
    assert_eq!(origin.total(), 3, "every request reached the origin");
    assert_eq!(
        origin.connections(),
        1,
        "one TLS connection, pooled and reused"
    );
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn without_its_ca_the_origin_is_refused_with_the_502_page_within_the_connect_timeout() {
    let dir = TempDir::new("origin-tls");
    let ca = TestCa::new(dir.path(), "ca");
    let origin = https_portal(&ca.issue(dir.path(), "origin", &["127.0.0.1"]), None, H1).await;
    // The system's roots only: the académie's CA is not among them.
    let proxy = Digue::new(&origin.url())
        .site("origin_connect_timeout = \"3s\"")
        .start()
        .await;
    assert_tls_refused(&proxy, &origin, "an unknown CA").await;
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_unless_origin_tls_name_names_it() {
    let dir = TempDir::new("origin-tls");
    let ca = TestCa::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "origin", &["pronote.example.fr"]);
    let origin = https_portal(&cert, None, H1).await;

    // Reached by address, the certificate does not name 127.0.0.1.
    let proxy = Digue::new(&origin.url())
        .site(&ca_file(&ca.cert))
        .start()
        .await;
    assert_tls_refused(&proxy, &origin, "a certificate for another name").await;
    proxy.shutdown().await;

    // origin_host names the portal; its name is the certificate's too.
    let proxy = Digue::new(&origin.url())
        .site(&ca_file(&ca.cert))
        .site("origin_host = \"pronote.example.fr\"")
        .start()
        .await;
    let got = get(&proxy.url("/page"), &[]).await;
    assert_eq!(
        got.status,
        200,
        "origin_host is the name checked: {}",
        got.text()
    );
    proxy.shutdown().await;

    // origin_tls_name alone, the client's Host passed through.
    let proxy = Digue::new(&origin.url())
        .site(&ca_file(&ca.cert))
        .site("origin_tls_name = \"pronote.example.fr\"")
        .start()
        .await;
    let got = get(&proxy.url("/page"), &[("host", "ent.example.fr")]).await;
    assert_eq!(
        got.status,
        200,
        "origin_tls_name is the name checked: {}",
        got.text()
    );
    assert_eq!(
        origin.last("/page").expect("seen").headers["host"],
        "ent.example.fr",
        "the certificate name does not change the Host sent"
    );
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn an_origin_requiring_a_client_certificate_gets_the_configured_one() {
    let dir = TempDir::new("origin-tls");
    let ca = TestCa::new(dir.path(), "ca");
    let clients = TestCa::new(dir.path(), "clients");
    let client = clients.issue(dir.path(), "digue", &["digue.example.fr"]);
    let origin = https_portal(
        &ca.issue(dir.path(), "origin", &["127.0.0.1"]),
        Some(&clients),
        H1,
    )
    .await;

    let proxy = Digue::new(&origin.url())
        .site(&ca_file(&ca.cert))
        .site(&format!(
            "origin_client_cert = \"{}\"\norigin_client_key = \"{}\"",
            client.cert.display(),
            client.key.display()
        ))
        .start()
        .await;
    let got = get(&proxy.url("/page"), &[]).await;
    assert_eq!(got.status, 200, "mutual TLS: {}", got.text());
    assert_eq!(got.text(), page("/page"));
    proxy.shutdown().await;

    let proxy = Digue::new(&origin.url())
        .site(&ca_file(&ca.cert))
        .start()
        .await;
    assert_tls_refused(&proxy, &origin, "no client certificate").await;
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn http2_to_the_origin_carries_100_concurrent_requests_never_more_than_4_at_once() {
    let dir = TempDir::new("origin-tls");
    let ca = TestCa::new(dir.path(), "ca");
    let origin = https_portal(&ca.issue(dir.path(), "origin", &["127.0.0.1"]), None, H2).await;
    origin.set_delay(Duration::from_millis(10));
    let proxy = Digue::new(&origin.url())
        .site(&ca_file(&ca.cert))
        .site("origin_http2 = true\norigin_concurrency = 4\norigin_queue_timeout = \"30s\"")
        .start()
        .await;
    let requests = (0..100).map(|i| {
        let url = proxy.url(&format!("/page/{i}"));
        async move { get(&url, &[]).await }
    });
    let answers = futures_util::future::join_all(requests).await;
    for (i, got) in answers.iter().enumerate() {
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
        assert_eq!(got.text(), page(&format!("/page/{i}")), "request {i}");
    }
    assert_eq!(origin.total(), 100, "every request reached the origin");
    assert!(
        origin.seen().iter().all(|s| s.version == Version::HTTP_2),
        "HTTP/2 by ALPN"
    );
    assert!(
        origin.peak_in_flight() <= 4,
        "the guard counts requests, not connections: {} in flight at once",
        origin.peak_in_flight()
    );
    assert!(
        origin.peak_in_flight() >= 2,
        "requests did share the origin: peak {}",
        origin.peak_in_flight()
    );
    assert!(
        origin.connections() <= 4,
        "requests share a few multiplexed connections: {}",
        origin.connections()
    );
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn a_ca_file_rewritten_under_the_same_path_is_taken_on_reload() {
    let dir = TempDir::new("origin-tls");
    let old_ca = TestCa::new(dir.path(), "old-ca");
    let new_ca = TestCa::new(dir.path(), "new-ca");
    // The origin's certificate comes from the new CA; the file still
    // holds the old one.
    let origin = https_portal(
        &new_ca.issue(dir.path(), "origin", &["127.0.0.1"]),
        None,
        H1,
    )
    .await;
    let trusted = dir.join("trusted-ca.pem");
    std::fs::copy(&old_ca.cert, &trusted).expect("copy CA");
    let proxy = Digue::new(&origin.url())
        .site(&ca_file(&trusted))
        .start_in(&dir.join("digue.toml"))
        .await;
    assert_tls_refused(&proxy, &origin, "the old CA").await;

    std::fs::copy(&new_ca.cert, &trusted).expect("copy CA");
    proxy.app().reload().expect("the reload is applied");
    let got = get(&proxy.url("/page"), &[]).await;
    assert_eq!(got.status, 200, "the new CA is trusted: {}", got.text());
    assert_eq!(origin.connections(), 1);

    // Nothing changed: the pool and its connection stay.
    proxy.app().reload().expect("the reload is applied");
    let got = get(&proxy.url("/page"), &[]).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        origin.connections(),
        1,
        "a reload that changes nothing keeps the pooled connection"
    );

    // A CA file broken since: the reload is refused, the running pool stays.
    std::fs::write(&trusted, "not a certificate").expect("break CA");
    let refused = proxy
        .app()
        .reload()
        .expect_err("a broken CA file is refused");
    assert!(
        refused.to_string().contains("site[0].origin_ca_file"),
        "with its key path: {refused}"
    );
    let got = get(&proxy.url("/page"), &[]).await;
    assert_eq!(got.status, 200, "the running config stays: {}", got.text());
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn an_origin_silent_after_tcp_is_given_up_at_the_connect_timeout_not_the_origin_timeout() {
    // Accepts TCP, then never answers the TLS handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let proxy = Digue::new(&format!("https://{addr}"))
        .site("origin_connect_timeout = \"1s\"\norigin_timeout = \"60s\"")
        .start()
        .await;
    let started = Instant::now();
    let got = get(&proxy.url("/page"), &[]).await;
    let took = started.elapsed();
    assert_eq!(got.status, 502, "{}", got.text());
    assert!(
        took < Duration::from_secs(10),
        "given up at the 1 s connect timeout, not the 60 s origin timeout: {took:?}"
    );
    assert_eq!(
        proxy
            .metric("digue_origin_errors_total{kind=\"connect\",site=\"portal\"}")
            .await,
        1.0,
        "counted as a connect failure"
    );
    proxy.shutdown().await;
    silent.abort();
}
