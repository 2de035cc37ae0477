//! TLS toward an `https://` origin: what is trusted (the system's roots and
//! the site's private CA), the client certificate of mutual TLS, the
//! connector that speaks it (rustls through hyper-rustls, verification
//! always on, ALPN `h2` only when asked), and how a failure of it reads.
//!
//! The files are read three times over a config's life, all here: by
//! [`preflight`] (`digue check`, start, reload: errors with key paths), by
//! [`Material::load`] when a pool is built, and again on reload to tell
//! whether a file changed under an unchanged path.

use std::error::Error;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tower_service::Service;

use crate::config::{ClientCert, ConfigError, OriginTls, SiteConfig};
use crate::tls::{load_certificates, load_key, provider};

/// What an origin's TLS is built from, read from the files. Compared on
/// reload: a CA or client certificate replaced under the same path makes
/// a new pool (connections already open stay verified by the old one).
#[derive(PartialEq)]
pub struct Material {
    /// The system's roots, then the site's private CA.
    roots: Vec<CertificateDer<'static>>,
    /// The client certificate chain and its key, for mutual TLS.
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

/// A file that could not be used, with the site key that names it.
#[derive(Debug)]
pub struct LoadError {
    /// `origin_ca_file`, `origin_client_cert` or `origin_client_key`.
    pub key: &'static str,
    pub message: String,
}

impl Material {
    /// Reads the system's trust store (Debian's `ca-certificates`, where
    /// an académie's own CA may be installed too; `SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` override it) and the site's files. Every file's
    /// problem is returned, so an operator fixes them in one pass.
    pub fn load(tls: &OriginTls) -> Result<Material, Vec<LoadError>> {
        let roots = roots(tls);
        let client = tls.client.as_ref().map(client_pair).transpose();
        match (roots, client) {
            (Ok(roots), Ok(client)) => Ok(Material { roots, client }),
            (roots, client) => Err(roots.err().into_iter().chain(client.err()).collect()),
        }
    }

    /// The rustls client: TLS 1.2 and 1.3, these roots, this client
    /// certificate, ALPN `h2` then `http/1.1` when `http2`.
    fn client_config(&self) -> Result<ClientConfig, String> {
        let mut store = RootCertStore::empty();
        store.add_parsable_certificates(self.roots.iter().cloned());
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(store);
        match &self.client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("origin client certificate: {e}")),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

fn at(key: &'static str) -> impl Fn(String) -> LoadError {
    move |message| LoadError { key, message }
}

/// What a certificate of the origin must chain to: the system's roots,
/// then the site's private CA.
fn roots(tls: &OriginTls) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    // Unreadable entries of the system store are skipped, as every TLS
    // client does: one broken file must not cut every origin off.
    let mut roots = rustls_native_certs::load_native_certs().certs;
    if let Some(path) = &tls.ca_file {
        let private = load_certificates(path).map_err(at("origin_ca_file"))?;
        for (i, cert) in private.iter().enumerate() {
            RootCertStore::empty().add(cert.clone()).map_err(|e| {
                at("origin_ca_file")(format!(
                    "certificate {} of {} is not usable as a CA: {e}",
                    i + 1,
                    path.display()
                ))
            })?;
        }
        roots.extend(private);
    }
    if roots.is_empty() {
        return Err(at("origin_ca_file")(
            "nothing to verify the origin with: the system's trust store is empty \
             (install ca-certificates) and no origin_ca_file is set"
                .to_owned(),
        ));
    }
    Ok(roots)
}

/// The client certificate chain and its key, checked to be a pair.
fn client_pair(
    client: &ClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), LoadError> {
    let chain = load_certificates(&client.cert).map_err(at("origin_client_cert"))?;
    let key = load_key(&client.key).map_err(at("origin_client_key"))?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(
        |e| {
            at("origin_client_key")(format!(
                "{} is not the key of {}: {e}",
                client.key.display(),
                client.cert.display()
            ))
        },
    )?;
    Ok((chain, key))
}

/// The problems of every site's origin TLS files, with their key paths.
pub fn preflight(sites: &[SiteConfig]) -> Vec<ConfigError> {
    sites
        .iter()
        .enumerate()
        .filter_map(|(i, site)| Some((i, Material::load(site.origin.tls.as_ref()?).err()?)))
        .flat_map(|(i, errors)| {
            errors.into_iter().map(move |e| ConfigError {
                path: format!("site[{i}].{}", e.key),
                message: e.message,
            })
        })
        .collect()
}

/// The connector toward `url`, an `https://` address of the origin: TCP
/// by `http`, then TLS checked against `tls.name` (or `url`'s host), the
/// whole within `connect_timeout`.
pub(super) fn connector(
    tls: &OriginTls,
    material: &Material,
    url: &Uri,
    mut http: HttpConnector,
    connect_timeout: Duration,
) -> Result<Within<HttpsConnector<HttpConnector>>, String> {
    let name = match &tls.name {
        Some(name) => name.clone(),
        None => {
            let host = url.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host:?} is no certificate name: {e}"))?
        }
    };
    http.enforce_http(false);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(material.client_config()?)
        .https_only()
        .with_server_name_resolver(FixedServerNameResolver::new(name));
    let https = if tls.http2 {
        builder.enable_http1().enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Ok(Within {
        inner: https,
        limit: connect_timeout,
    })
}

/// The TLS error a failed connection attempt ended on, if TLS is what
/// failed (a bad or unknown certificate, a wrong name, a handshake the
/// origin refused): rustls' error, found down the error's causes, where
/// tokio-rustls and hyper-rustls wrap it in `io::Error`s (whose `source`
/// skips the wrapped error itself, hence `get_ref`).
pub fn failure<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(io::Error::get_ref)
            && let Some(found) = failure(inner)
        {
            return Some(found);
        }
        next = e.source();
    }
    None
}

/// A connector whose whole connection (TCP and TLS handshake) must be up
/// within `limit`: an origin that accepts TCP and then says nothing would
/// otherwise hold the request until `origin_timeout`.
#[derive(Clone)]
pub struct Within<C> {
    inner: C,
    limit: Duration,
}

type BoxError = Box<dyn Error + Send + Sync>;

impl<C> Service<Uri> for Within<C>
where
    C: Service<Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(done) => done.map_err(Into::into),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the origin did not complete the TLS handshake within origin_connect_timeout",
                )
                .into()),
            }
        })
    }
}
