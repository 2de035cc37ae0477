//! TLS with rustls: HTTP/2 and HTTP/1.1 by ALPN, TLS 1.2 and 1.3 only, one
//! crypto provider (aws-lc-rs) passed explicitly (no process-wide default),
//! certificates chosen by SNI and swapped on reload (Let's Encrypt renewals)
//! without touching the listener.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsSettings};

/// The one crypto provider, for the listener and the origin connections.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads the PEM certificates of a file: a chain, or CAs. Never empty.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{} is not a readable PEM private key: {e}", path.display()))
}

/// Reads a PEM certificate chain and its private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = load_certificates(cert)?;
    let key_der = load_key(key)?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        format!(
            "{} and {} do not make a usable pair: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(certified))
}

/// The certificate files' problems, with their key paths: what the config
/// check cannot see without reading them.
pub fn preflight(settings: Option<&TlsSettings>) -> Vec<ConfigError> {
    let Some(settings) = settings else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    if let Err(message) = load_pair(&settings.cert, &settings.key) {
        errors.push(ConfigError {
            path: "server.tls_cert".to_owned(),
            message,
        });
    }
    for (i, sni) in settings.sni.iter().enumerate() {
        if let Err(message) = load_pair(&sni.cert, &sni.key) {
            errors.push(ConfigError {
                path: format!("server.tls_sni[{i}].cert"),
                message,
            });
        }
    }
    errors
}

/// The certificates of the TLS listener: one default, and more by SNI name.
#[derive(Debug)]
/// A loaded set of certificates, ready to be served.
pub struct Certificates {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl Certificates {
    fn load(settings: &TlsSettings) -> Result<Certificates, String> {
        let default = load_pair(&settings.cert, &settings.key)?;
        let mut by_name = HashMap::new();
        for sni in &settings.sni {
            let pair = load_pair(&sni.cert, &sni.key)?;
            for host in &sni.hosts {
                by_name.insert(host.to_ascii_lowercase(), pair.clone());
            }
        }
        Ok(Certificates { default, by_name })
    }
}

/// Picks a certificate by SNI; swapped whole on reload.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<Certificates>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.current.load();
        let by_sni = hello
            .server_name()
            .and_then(|name| certs.by_name.get(&name.to_ascii_lowercase()));
        Some(by_sni.unwrap_or(&certs.default).clone())
    }
}

impl Resolver {
    /// Reads the certificate files, without serving them yet: a reload
    /// refused for another key must not swap certificates either.
    pub fn load(settings: &TlsSettings) -> Result<Certificates, String> {
        Certificates::load(settings)
    }

    /// Serves `certificates` from the next handshake on.
    pub fn install(&self, certificates: Certificates) {
        self.current.store(Arc::new(certificates));
    }
}

/// Builds the acceptor and the resolver that reloads it.
pub fn acceptor(settings: &TlsSettings) -> Result<(TlsAcceptor, Arc<Resolver>), String> {
    let resolver = Arc::new(Resolver {
        current: ArcSwap::from_pointee(Certificates::load(settings)?),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), resolver))
}
