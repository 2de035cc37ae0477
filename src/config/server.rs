//! `[server]`: listeners, limits, secrets, pages, logs.
//!
//! Split by lifetime: [`ServerStart`] holds what is read once, when the
//! listeners and tasks start (a reload that changes it is refused);
//! [`ServerConfig`] what a reload applies.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Cidr;
use super::errors::Errors;

/// Most connections the public listener keeps open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Largest request head accepted; larger heads get `431`.
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// hyper cannot buffer less than this for a request head.
const MIN_HEADER_BYTES: u64 = 8 * 1024;
/// Time a client has to send a complete request head (slowloris guard).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The `[server]` keys read once at start. Field names serialize as the
/// file's keys: a reload's refusal names them from this type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerStart {
    /// Public listener: HTTP/1.1 and h2c.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz` and the admin API; never the public port.
    pub admin_listen: Option<SocketAddr>,
    /// The HTTPS listener, when configured (its certificates are in
    /// [`ServerConfig::tls`], and reload).
    pub tls_listen: Option<SocketAddr>,
    /// Tokio worker threads; all cores when unset.
    pub worker_threads: Option<NonZeroUsize>,
    pub max_connections: usize,
    #[serde(rename = "max_header_size")]
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Where the lines' counters are saved, so tickets keep their place
    /// across a restart.
    pub state_file: Option<PathBuf>,
    /// Log lines as JSON instead of text.
    #[serde(rename = "log_format")]
    pub log_json: bool,
}

/// The `[server]` keys a reload applies.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Peers whose `X-Forwarded-*` headers are believed (a load balancer in front).
    pub trusted_proxies: Vec<Cidr>,
    /// Headers dropped from clients that are not `trusted_proxies`
    /// ([`DEFAULT_ROUTING_HEADERS`] unless the file lists its own).
    pub routing_headers: Vec<http::HeaderName>,
    /// Signing keys for tickets and passes: first line current, optional
    /// second line previous (rotation). `DIGUE_SECRET` otherwise.
    pub secret_file: Option<PathBuf>,
    /// A directory overriding the built-in page templates and languages.
    pub pages_dir: Option<PathBuf>,
    /// The HTTPS listener's certificates, when `tls_listen` is set.
    pub tls: Option<TlsSettings>,
    /// One log line per request (site, method, path without query, status,
    /// outcome, duration, client network truncated to /24 or /48).
    pub access_log: bool,
}

/// Headers some origins obey as the request's own URL, host, scheme, port,
/// path prefix or method: IIS URL Rewrite and Symfony read `X-Original-URL`
/// and `X-Rewrite-URL`, Rails, Django and Spring build links from
/// `X-Forwarded-Port/-Prefix/-Scheme/-Ssl/-Server` or `X-Host`, Express,
/// Symfony and ASP.NET take `X-HTTP-Method-Override` and its kin. None is in
/// the cache key, so one client's value would shape a page stored for
/// everyone (and would let it reach URLs the gates and rules never saw):
/// they are dropped from clients that are not `trusted_proxies`, unless
/// `server.routing_headers` lists others (`[]`: none).
pub const DEFAULT_ROUTING_HEADERS: [&str; 11] = [
    "x-original-url",
    "x-rewrite-url",
    "x-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers a request cannot do without: never in `routing_headers`.
const NEEDED: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "cookie",
    "content-type",
];

fn default_routing_headers() -> Vec<http::HeaderName> {
    DEFAULT_ROUTING_HEADERS
        .iter()
        .map(|n| http::HeaderName::from_static(n))
        .collect()
}

fn routing_headers(names: &[String], errors: &mut Errors) -> Vec<http::HeaderName> {
    names
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| {
            let at = format!("server.routing_headers[{i}]");
            match http::HeaderName::from_bytes(raw.as_bytes()) {
                Ok(name) if NEEDED.contains(&name.as_str()) => {
                    errors.push(
                        at,
                        format!("{raw:?}: requests need it; it cannot be dropped"),
                    );
                    None
                }
                Ok(name) => Some(name),
                Err(_) => {
                    errors.push(at, format!("{raw:?} is not a header name"));
                    None
                }
            }
        })
        .collect()
}

/// The HTTPS listener's certificates (PEM files), re-read on reload.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// More certificates, chosen by the name the client asks for (SNI).
    pub sni: Vec<SniCertificate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniCertificate {
    pub hosts: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Deserialize)]
pub(super) struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    worker_threads: Option<u64>,
    max_connections: Option<u64>,
    max_header_size: Option<String>,
    header_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    routing_headers: Option<Vec<String>>,
    tls_listen: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    #[serde(default)]
    tls_sni: Vec<RawSni>,
    secret_file: Option<String>,
    state_file: Option<String>,
    pages_dir: Option<String>,
    log_format: Option<String>,
    #[serde(default)]
    access_log: bool,
}

#[derive(Deserialize)]
struct RawSni {
    #[serde(default)]
    hosts: Vec<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl RawServer {
    /// What a missing `[server]` section stands for while the rest is checked.
    pub(super) fn fallback() -> (ServerStart, ServerConfig) {
        let start = ServerStart {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            tls_listen: None,
            worker_threads: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES as usize,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            state_file: None,
            log_json: false,
        };
        let server = ServerConfig {
            trusted_proxies: Vec::new(),
            routing_headers: default_routing_headers(),
            secret_file: None,
            pages_dir: None,
            tls: None,
            access_log: false,
        };
        (start, server)
    }

    pub(super) fn validate(self, errors: &mut Errors) -> (ServerStart, ServerConfig) {
        let (mut start, mut out) = RawServer::fallback();
        match self.listen.as_deref() {
            Some(raw) => {
                if let Some(a) = errors.addr("server.listen", raw) {
                    start.listen = a;
                }
            }
            None => errors.push("server.listen", "missing (e.g. \"0.0.0.0:8080\")"),
        }
        start.admin_listen = self
            .admin_listen
            .as_deref()
            .and_then(|raw| errors.addr("server.admin_listen", raw));
        if start.admin_listen == Some(start.listen) && start.listen.port() != 0 {
            errors.push(
                "server.admin_listen",
                "must differ from server.listen: the admin API is never public",
            );
        }
        start.worker_threads = self.worker_threads.map(|n| {
            NonZeroUsize::new(errors.positive("server.worker_threads", Some(n), 1))
                .expect("invariant: positive() never returns 0")
        });
        start.max_connections = errors.positive(
            "server.max_connections",
            self.max_connections,
            start.max_connections,
        );
        let header = errors.size(
            "server.max_header_size",
            self.max_header_size.as_deref(),
            DEFAULT_MAX_HEADER_BYTES,
        );
        if header < MIN_HEADER_BYTES {
            errors.push(
                "server.max_header_size",
                format!("must be at least {}KiB", MIN_HEADER_BYTES / 1024),
            );
        }
        start.max_header_bytes =
            usize::try_from(header.max(MIN_HEADER_BYTES)).unwrap_or(usize::MAX);
        start.header_read_timeout = errors.duration(
            "server.header_read_timeout",
            self.header_read_timeout.as_deref(),
            DEFAULT_HEADER_READ_TIMEOUT,
        );
        start.shutdown_grace = errors.duration(
            "server.shutdown_grace",
            self.shutdown_grace.as_deref(),
            DEFAULT_SHUTDOWN_GRACE,
        );
        for (i, raw) in self.trusted_proxies.iter().enumerate() {
            match raw.parse::<Cidr>() {
                Ok(c) => out.trusted_proxies.push(c),
                Err(e) => errors.push(format!("server.trusted_proxies[{i}]"), e),
            }
        }
        if let Some(names) = self.routing_headers {
            out.routing_headers = routing_headers(&names, errors);
        }
        start.log_json = match self.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                errors.push(
                    "server.log_format",
                    format!("{other:?} is not one of text, json"),
                );
                false
            }
        };
        out.access_log = self.access_log;
        out.secret_file = self.secret_file.map(Into::into);
        start.state_file = self.state_file.map(Into::into);
        out.pages_dir = self.pages_dir.map(Into::into);
        if let Some((listen, tls)) = tls_settings(
            self.tls_listen,
            self.tls_cert,
            self.tls_key,
            self.tls_sni,
            errors,
        ) {
            if (Some(listen) == start.admin_listen || listen == start.listen) && listen.port() != 0
            {
                errors.push(
                    "server.tls_listen",
                    "must differ from server.listen and server.admin_listen",
                );
            }
            start.tls_listen = Some(listen);
            out.tls = Some(tls);
        }
        (start, out)
    }
}

/// The TLS listener and its certificate files. Whether the files hold a
/// usable certificate is checked by `tls::preflight` (it reads them).
fn tls_settings(
    listen: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    sni: Vec<RawSni>,
    errors: &mut Errors,
) -> Option<(SocketAddr, TlsSettings)> {
    let listen = match (listen, &cert, &key) {
        (None, None, None) if sni.is_empty() => return None,
        (Some(raw), Some(_), Some(_)) => errors.addr("server.tls_listen", &raw)?,
        _ => {
            errors.push(
                "server.tls_listen",
                "TLS needs all of tls_listen, tls_cert and tls_key",
            );
            return None;
        }
    };
    let (cert, key): (PathBuf, PathBuf) = (cert?.into(), key?.into());
    let mut ok = true;
    let mut sni_certs = Vec::new();
    for (i, raw) in sni.into_iter().enumerate() {
        let at = format!("server.tls_sni[{i}]");
        let (Some(c), Some(k)) = (raw.cert, raw.key) else {
            errors.push(at, "needs cert and key");
            ok = false;
            continue;
        };
        if raw.hosts.is_empty() {
            errors.push(
                format!("{at}.hosts"),
                "missing: the names this certificate serves",
            );
        }
        sni_certs.push(SniCertificate {
            hosts: raw.hosts,
            cert: c.into(),
            key: k.into(),
        });
    }
    ok.then_some((
        listen,
        TlsSettings {
            cert,
            key,
            sni: sni_certs,
        },
    ))
}
