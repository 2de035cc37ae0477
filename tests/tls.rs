//! HTTPS: HTTP/2 and HTTP/1.1 by ALPN, certificates by SNI, reloaded
//! without a restart, and bad certificate files refused at check time.

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::tls::{TestCert, connect};
use support::{Digue, Origin, Proxy, TempDir};

/// digue in front of `origin` with a TLS listener serving `cert`, and
/// `server` keys; started from a config file in `dir`, so that a reload
/// reads it again (as SIGHUP does).
async fn start(origin: &Origin, dir: &TempDir, cert: &TestCert, server: &str) -> Proxy {
    Digue::new(&origin.url())
        .server(&cert.server_keys())
        .server(server)
        .start_in(&dir.join("digue.toml"))
        .await
}

#[tokio::test]
async fn https_serves_http2_and_http1_by_alpn() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "bonjour").await;
    let dir = TempDir::new("tls-alpn");
    let a = TestCert::new(dir.path(), "a", &["localhost"]);
    let proxy = start(&origin, &dir, &a, "").await;
    let addr = proxy.tls.expect("TLS listener");

    let (alpn, _, tls) = connect(addr, &[&a.der], "localhost", &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "HTTP/2 is offered first");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/page")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = send.send_request(req).await.expect("h2 response");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"bonjour");
    let seen = origin.last("/page").expect("origin reached");
    assert_eq!(
        seen.headers["x-forwarded-proto"], "https",
        "the origin learns the scheme"
    );

    let (alpn, _, tls) = connect(addr, &[&a.der], "localhost", &[b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/page")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = send.send_request(req).await.expect("h1 response");
    assert_eq!(res.status(), 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_reloaded_without_a_restart() {
    let origin = Origin::fixed(&[], "x").await;
    let dir = TempDir::new("tls-sni");
    let a = TestCert::new(dir.path(), "a", &["a.test"]);
    let b = TestCert::new(dir.path(), "b", &["b.test"]);
    let sni = format!(
        "[[server.tls_sni]]\nhosts = [\"b.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        b.cert.display(),
        b.key.display()
    );
    let proxy = start(&origin, &dir, &a, &sni).await;
    let path = dir.join("digue.toml");
    let addr = proxy.tls.expect("TLS listener");
    let (_, served, _) = connect(addr, &[&a.der, &b.der], "b.test", &[b"http/1.1"]).await;
    assert_eq!(served, b.der, "b.test gets its own certificate");
    let (_, served, _) = connect(addr, &[&a.der, &b.der], "a.test", &[b"http/1.1"]).await;
    assert_eq!(served, a.der, "other names get the default one");

    // A renewal: new files in place, then a reload (what SIGHUP does).
    let renewed = TestCert::new(dir.path(), "a", &["a.test"]);
    proxy.app().reload().expect("reload applies");
    let (_, served, _) = connect(addr, &[&renewed.der, &b.der], "a.test", &[b"http/1.1"]).await;
    assert_eq!(
        served, renewed.der,
        "the renewed certificate is served at once"
    );

    // A broken file is refused; the running certificate stays.
    std::fs::write(&renewed.cert, "not a certificate").expect("write");
    let errors = proxy.app().reload().expect_err("refused");
    assert!(
        errors.0.iter().any(|e| e.path == "server.tls_cert"),
        "the error names the key: {errors}"
    );
    let (_, served, _) = connect(addr, &[&renewed.der, &b.der], "a.test", &[b"http/1.1"]).await;
    assert_eq!(served, renewed.der, "still served after the refused reload");

    // A reload refused for another key applies nothing, certificates included.
    let unused = TestCert::new(dir.path(), "a", &["a.test"]);
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text.replace("[server]\n", "[server]\nmax_connections = 5\n");
    std::fs::write(&path, text).expect("write config");
    let errors = proxy.app().reload().expect_err("refused");
    assert!(
        errors.0.iter().any(|e| e.path == "server.max_connections"),
        "{errors}"
    );
    let (_, served, _) = connect(
        addr,
        &[&renewed.der, &unused.der, &b.der],
        "a.test",
        &[b"http/1.1"],
    )
    .await;
    assert_eq!(served, renewed.der, "half a reload is never applied");
    proxy.shutdown().await;
}

#[test]
fn missing_or_bad_certificate_files_are_config_errors_not_panics() {
    let dir = TempDir::new("tls-bad");
    dir.write("junk.pem", "junk");
    for (cert, key) in [("missing.crt", "missing.key"), ("junk.pem", "junk.pem")] {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [[site]]\nname = \"p\"\nhosts = [\"*\"]\norigin = \"http://127.0.0.1:1\"\n",
            dir.join(cert).display(),
            dir.join(key).display()
        );
        let errors = digue::preflight::parse(&text).expect_err("refused");
        assert!(
            errors.0.iter().any(|e| e.path == "server.tls_cert"),
            "{cert}: {errors}"
        );
    }
    let half = "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
                [[site]]\nname = \"p\"\nhosts = [\"*\"]\norigin = \"http://127.0.0.1:1\"\n";
    let errors = digue::preflight::parse(half).expect_err("refused");
    assert!(
        errors.to_string().contains("tls_cert and tls_key"),
        "{errors}"
    );
}
