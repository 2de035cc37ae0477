//! HTTPS: HTTP/2 and HTTP/1.1 by ALPN, certificates by SNI, reloaded
//! without a restart, and bad certificate files refused at check time.

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::Origin;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `names`, written as PEM files.
struct TestCert {
    der: CertificateDer<'static>,
    cert: PathBuf,
    key: PathBuf,
}

fn cert(dir: &std::path::Path, label: &str, names: &[&str]) -> TestCert {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let generated = rcgen::generate_simple_self_signed(names).expect("rcgen");
    let cert = dir.join(format!("{label}.crt"));
    let key = dir.join(format!("{label}.key"));
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
    TestCert {
        der: generated.cert.der().clone(),
        cert,
        key,
    }
}

fn temp_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("digue-tls-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Connects with TLS, trusting `roots`, asking for `sni` and `alpn`; returns
/// the negotiated protocol, the server's certificate, and the stream.
async fn connect(
    addr: std::net::SocketAddr,
    roots: &[&CertificateDer<'static>],
    sni: &str,
    alpn: &[&[u8]],
) -> (
    Option<Vec<u8>>,
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<TcpStream>,
) {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).expect("valid root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_owned()).expect("server name");
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let served = session.peer_certificates().expect("a certificate")[0].clone();
    (alpn, served, tls)
}

async fn start(origin: &Origin, dir: &std::path::Path, extra: &str) -> (digue::Running, PathBuf) {
    let path = dir.join("digue.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         tls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n\
         [[site]]\nname = \"portal\"\nhosts = [\"*\"]\norigin = \"{}\"\n",
        dir.join("a.crt").display(),
        dir.join("a.key").display(),
        origin.url()
    );
    std::fs::write(&path, &text).expect("write config");
    let config = digue::preflight::load(&path).unwrap_or_else(|e| panic!("valid: {e}"));
    let options = digue::Options {
        config_path: Some(path.clone()),
        admin_token: None,
        ..digue::Options::default()
    };
    (
        digue::start_with(config, options).await.expect("starts"),
        path,
    )
}

#[tokio::test]
async fn https_serves_http2_and_http1_by_alpn() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "bonjour").await;
    let dir = temp_dir("alpn");
    let a = cert(&dir, "a", &["localhost"]);
    let (running, _) = start(&origin, &dir, "").await;
    let addr = running.tls.expect("TLS listener");

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
    running.shutdown().await;
}

#[tokio::test]
async fn certificates_are_chosen_by_sni_and_reloaded_without_a_restart() {
    let origin = Origin::fixed(&[], "x").await;
    let dir = temp_dir("sni");
    let a = cert(&dir, "a", &["a.test"]);
    let b = cert(&dir, "b", &["b.test"]);
    let sni = format!(
        "[[server.tls_sni]]\nhosts = [\"b.test\"]\ncert = \"{}\"\nkey = \"{}\"\n",
        b.cert.display(),
        b.key.display()
    );
    let (running, path) = start(&origin, &dir, &sni).await;
    let addr = running.tls.expect("TLS listener");
    let (_, served, _) = connect(addr, &[&a.der, &b.der], "b.test", &[b"http/1.1"]).await;
    assert_eq!(served, b.der, "b.test gets its own certificate");
    let (_, served, _) = connect(addr, &[&a.der, &b.der], "a.test", &[b"http/1.1"]).await;
    assert_eq!(served, a.der, "other names get the default one");

    // A renewal: new files in place, then a reload (what SIGHUP does).
    let renewed = cert(&dir, "a", &["a.test"]);
    running.app.reload().expect("reload applies");
    let (_, served, _) = connect(addr, &[&renewed.der, &b.der], "a.test", &[b"http/1.1"]).await;
    assert_eq!(
        served, renewed.der,
        "the renewed certificate is served at once"
    );

    // A broken file is refused; the running certificate stays.
    std::fs::write(&renewed.cert, "not a certificate").expect("write");
    let errors = running.app.reload().expect_err("refused");
    assert!(
        errors.0.iter().any(|e| e.path == "server.tls_cert"),
        "the error names the key: {errors}"
    );
    let (_, served, _) = connect(addr, &[&renewed.der, &b.der], "a.test", &[b"http/1.1"]).await;
    assert_eq!(served, renewed.der, "still served after the refused reload");

    // A reload refused for another key applies nothing, certificates included.
    let unused = cert(&dir, "a", &["a.test"]);
    let text = std::fs::read_to_string(&path).expect("read config");
    let text = text.replace("[server]\n", "[server]\nmax_connections = 5\n");
    std::fs::write(&path, text).expect("write config");
    let errors = running.app.reload().expect_err("refused");
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
    running.shutdown().await;
}

#[test]
fn missing_or_bad_certificate_files_are_config_errors_not_panics() {
    let dir = temp_dir("bad");
    std::fs::write(dir.join("junk.pem"), "junk").expect("write");
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
