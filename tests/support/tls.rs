//! TLS for the tests: self-signed certificates written as PEM files, a
//! private CA and the certificates it issues (for HTTPS origins), the
//! server side of a TLS origin, and a client that trusts them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::http::Got;

/// A self-signed certificate, written as `{label}.crt` / `{label}.key`.
pub struct TestCert {
    pub der: CertificateDer<'static>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    /// A new certificate for `names` in `dir` (replacing one of that label).
    pub fn new(dir: &Path, label: &str, names: &[&str]) -> TestCert {
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

    /// `[server]` keys for a TLS listener on `127.0.0.1:0` serving it.
    pub fn server_keys(&self) -> String {
        format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// A private CA, as an académie runs: its certificate written as
/// `{label}.crt`, and the certificates it issues.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub cert: PathBuf,
}

impl TestCa {
    /// A new CA in `dir` (replacing one of that label).
    pub fn new(dir: &Path, label: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{label} test CA"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let cert = dir.join(format!("{label}.crt"));
        std::fs::write(&cert, issuer.pem()).expect("write CA");
        TestCa { issuer, cert }
    }

    /// A certificate for `names` (DNS names or IP addresses) signed by
    /// this CA, written as `{label}.crt` / `{label}.key` in `dir`.
    pub fn issue(&self, dir: &Path, label: &str, names: &[&str]) -> TestCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let signed = params.signed_by(&key, &self.issuer).expect("signed");
        let cert = dir.join(format!("{label}.crt"));
        let key_file = dir.join(format!("{label}.key"));
        std::fs::write(&cert, signed.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        TestCert {
            der: signed.der().clone(),
            cert,
            key: key_file,
        }
    }

    /// The CA as a rustls trust anchor store.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut store = rustls::RootCertStore::empty();
        store.add(self.issuer.der().clone()).expect("valid CA");
        store
    }
}

/// The TLS of a test origin serving `cert`, offering `alpn`, and
/// requiring a client certificate issued by `clients` when given.
pub fn origin_tls(
    cert: &TestCert,
    clients: Option<&TestCa>,
    alpn: &[&[u8]],
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match clients {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider,
            )
            .build()
            .expect("client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let chain = vec![cert.der.clone()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&cert.key).expect("key");
    let mut config = builder.with_single_cert(chain, key).expect("server config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects with TLS, trusting `roots`, asking for `sni` and `alpn`; returns
/// the negotiated protocol, the server's certificate, and the stream.
pub async fn connect(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
    sni: &str,
    alpn: &[&[u8]],
) -> (
    Option<Vec<u8>>,
    CertificateDer<'static>,
    TlsStream<TcpStream>,
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

/// `GET target` with `Host: host` over HTTPS (HTTP/1.1), trusting `root`.
pub async fn get_https(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    host: &str,
    target: &str,
) -> Got {
    let (_, _, tls) = connect(addr, &[root], host, &[b"http/1.1"]).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(target)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = sender.send_request(req).await.expect("response");
    let (parts, body) = res.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}
