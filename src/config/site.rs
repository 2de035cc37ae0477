//! `[[site]]`: one portal behind digue: the Host names it answers, its
//! origin, its cache rules and its waiting room.
//!
//! Split by lifetime: [`OriginConfig`] is what the connection pool is built
//! from (a reload keeps the pool while it is equal), [`LiveSettings`] what
//! operators turn at run time, the rest changes with the file.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderValue, Uri};
use rustls_pki_types::ServerName;
use serde::Deserialize;

use super::admission::{AdmissionConfig, RawAdmission};
use super::autopilot::{AutopilotConfig, RawAutopilot};
use super::backends::{Affinity, BalanceConfig, RawBalance, RawHealthCheck};
use super::cache::{RawSiteCache, SiteCacheConfig};
use super::client_limit::{ClientLimitConfig, RawClientLimit};
use super::errors::Errors;
use super::live::LiveSettings;
use super::tunnels::{RawTunnels, TunnelConfig};

pub const DEFAULT_ORIGIN_CONCURRENCY: usize = 64;
pub const DEFAULT_ORIGIN_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_ORIGIN_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_ORIGIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The share of a site's origin slots one client network may hold, in
/// percent: one machine that stops reading its answers can hold at most
/// half the origin, never all of it.
pub const DEFAULT_ORIGIN_SHARE_PER_NETWORK: u8 = 50;
/// A client that reads nothing of a relayed body for this long loses it:
/// its origin slot, and the portal worker writing to it, go back to others.
pub const DEFAULT_CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Cookies that mark a request as per-user when a site names none.
pub const DEFAULT_SESSION_COOKIES: &[&str] = &["JSESSIONID", "PHPSESSID", "oneSessionId"];

#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub origin: OriginConfig,
    /// How requests are spread over several backends.
    pub balance: BalanceConfig,
    /// Finding the pace the portal can take (off unless enabled).
    pub autopilot: AutopilotConfig,
    /// The live settings as the file sets them; the running values are the
    /// site's own (`Site::live`), which the admin API and the cluster change.
    pub live: LiveSettings,
    /// Longest wait for an origin slot.
    pub origin_queue_timeout: Duration,
    /// Percent of the origin's slots one client network (an IPv4 address,
    /// an IPv6 /64) may hold at once, 1–100 (100: no cap).
    pub origin_share_per_network: u8,
    /// Longest pause of a client reading a body relayed from the origin
    /// (never longer than `origin_timeout`).
    pub client_send_timeout: Duration,
    /// Cookie names that make a request per-user.
    pub session_cookies: Vec<String>,
    /// Whether the origin tells `/Login` from `/login`: gates and bypass
    /// rules then match paths in their exact case. Most portals run where
    /// paths are case-insensitive (Pronote on Windows), so by default any
    /// case matches them.
    pub case_sensitive: bool,
    pub cache: SiteCacheConfig,
    /// The waiting room; its pace and mode are in `live.admission`, which
    /// is set exactly when this is.
    pub admission: Option<AdmissionConfig>,
    /// WebSocket and other upgraded connections.
    pub tunnels: TunnelConfig,
    /// One client's budget of origin-bound requests (off when `None`).
    pub client_limit: Option<ClientLimitConfig>,
}

/// How to reach the origin: what its client and connection pool are built
/// from. `origin_concurrency` is not part of it: it is what operators turn
/// during a surge, and a new pool would send a wave of fresh connections to
/// a struggling origin.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginConfig {
    /// The origin's servers, `http://host:port` or `https://host:port`, no
    /// path, as written; at least one, no two alike. `origin_concurrency`
    /// applies to each.
    pub backends: Vec<Uri>,
    /// Replaces the client's `Host` toward the origin; passed through when unset.
    pub host: Option<HeaderValue>,
    /// Longest wait for the origin's response headers.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// How to speak TLS to an `https://` origin; `None` for `http://`.
    pub tls: Option<OriginTls>,
}

/// TLS toward an `https://` origin. Only file paths: what they hold is
/// read by the origin module (its preflight, and each pool it builds).
#[derive(Debug, Clone, PartialEq)]
pub struct OriginTls {
    /// The name the origin's certificate must carry, also sent as SNI:
    /// `origin_tls_name`, else `origin_host`'s name; `None`: the host of
    /// each origin address.
    pub name: Option<ServerName<'static>>,
    /// A private CA trusted beside the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate, for origins that require mutual TLS.
    pub client: Option<ClientCert>,
    /// Offer HTTP/2 by ALPN (HTTP/1.1 stays offered).
    pub http2: bool,
}

/// `origin_client_cert` and `origin_client_key`, set together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// PEM chain, the client's certificate first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A `hosts` entry: an exact name (lower-cased, no port) or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    Exact(String),
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(name) => name.eq_ignore_ascii_case(host),
        }
    }
}

/// An address range, `10.0.0.0/8` or a single address.

#[derive(Deserialize)]
pub(super) struct RawSite {
    name: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    origin: Option<Origins>,
    origin_host: Option<String>,
    origin_concurrency: Option<u64>,
    origin_queue_timeout: Option<String>,
    origin_share_per_network: Option<u64>,
    client_send_timeout: Option<String>,
    origin_timeout: Option<String>,
    origin_connect_timeout: Option<String>,
    origin_tls_name: Option<String>,
    origin_ca_file: Option<PathBuf>,
    origin_client_cert: Option<PathBuf>,
    origin_client_key: Option<PathBuf>,
    origin_http2: Option<bool>,
    session_cookies: Option<Vec<String>>,
    #[serde(default)]
    case_sensitive: bool,
    #[serde(default)]
    cache: RawSiteCache,
    admission: Option<RawAdmission>,
    client_limit: Option<RawClientLimit>,
    autopilot: Option<RawAutopilot>,
    affinity: Option<Affinity>,
    eject_after: Option<u32>,
    eject_for: Option<String>,
    health_check: Option<RawHealthCheck>,
    max_websockets: Option<u64>,
    websocket_idle_timeout: Option<String>,
    allow_upgrades: Option<Vec<String>>,
}

/// `origin = "http://…"` or `origin = ["http://…", "http://…"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Origins {
    One(String),
    Many(Vec<String>),
}

impl RawSite {
    pub(super) fn validate(self, at: &str, errors: &mut Errors) -> SiteConfig {
        let name = match self.name {
            Some(n) if valid_name(&n) => n,
            Some(n) => {
                errors.push(
                    format!("{at}.name"),
                    format!("{n:?} must be 1-64 characters among a-z, 0-9, '-' and '_'"),
                );
                n
            }
            None => {
                errors.push(format!("{at}.name"), "missing");
                String::new()
            }
        };
        if self.hosts.is_empty() {
            errors.push(
                format!("{at}.hosts"),
                "missing: list the Host names this site answers, or [\"*\"] for any",
            );
        }
        let hosts = self
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| parse_host(h, &format!("{at}.hosts[{i}]"), errors))
            .collect();
        let backends = match self.origin {
            Some(Origins::One(raw)) => vec![parse_origin(&raw, &format!("{at}.origin"), errors)],
            Some(Origins::Many(list)) => parse_backends(&list, &format!("{at}.origin"), errors),
            None => {
                errors.push(
                    format!("{at}.origin"),
                    "missing (e.g. \"http://10.0.0.5:8080\", or a list of them)",
                );
                vec![Uri::from_static("http://127.0.0.1")]
            }
        };
        let balance = RawBalance {
            affinity: self.affinity,
            eject_after: self.eject_after,
            eject_for: self.eject_for,
            health_check: self.health_check,
        }
        .validate(at, errors);
        let tunnels = RawTunnels {
            max_websockets: self.max_websockets,
            websocket_idle_timeout: self.websocket_idle_timeout,
            allow_upgrades: self.allow_upgrades,
        }
        .validate(at, errors);
        let origin_host = self
            .origin_host
            .and_then(|h| match HeaderValue::from_str(&h) {
                Ok(v) if !h.is_empty() => Some(v),
                _ => {
                    errors.push(
                        format!("{at}.origin_host"),
                        format!("{h:?} is not a host name"),
                    );
                    None
                }
            });
        let session_cookies = self.session_cookies.unwrap_or_else(|| {
            DEFAULT_SESSION_COOKIES
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        });
        for (i, c) in session_cookies.iter().enumerate() {
            if c.is_empty()
                || !c
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b))
            {
                errors.push(
                    format!("{at}.session_cookies[{i}]"),
                    format!("{c:?} is not a cookie name"),
                );
            }
        }
        let (admission, live_admission) = match self.admission {
            Some(a) => {
                let (config, live) = a.validate(&format!("{at}.admission"), errors);
                (Some(config), Some(live))
            }
            None => (None, None),
        };
        let live = LiveSettings {
            origin_concurrency: self
                .origin_concurrency
                .map_or(DEFAULT_ORIGIN_CONCURRENCY, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            admission: live_admission,
        };
        for problem in live.problems() {
            errors.push(format!("{at}.{}", problem.key), problem.message);
        }
        let autopilot = self.autopilot.unwrap_or_default().validate(
            &format!("{at}.autopilot"),
            live.admission.map(|a| a.new_users_per_minute),
            live.origin_concurrency,
            errors,
        );
        let tls = RawOriginTls {
            name: self.origin_tls_name,
            ca_file: self.origin_ca_file,
            client_cert: self.origin_client_cert,
            client_key: self.origin_client_key,
            http2: self.origin_http2,
        }
        .validate(
            backends.iter().any(|b| b.scheme_str() == Some("https")),
            origin_host.as_ref(),
            at,
            errors,
        );
        let origin = OriginConfig {
            tls,
            backends,
            host: origin_host,
            timeout: errors.duration(
                &format!("{at}.origin_timeout"),
                self.origin_timeout.as_deref(),
                DEFAULT_ORIGIN_TIMEOUT,
            ),
            connect_timeout: errors.duration(
                &format!("{at}.origin_connect_timeout"),
                self.origin_connect_timeout.as_deref(),
                DEFAULT_ORIGIN_CONNECT_TIMEOUT,
            ),
        };
        SiteConfig {
            origin_queue_timeout: errors.duration(
                &format!("{at}.origin_queue_timeout"),
                self.origin_queue_timeout.as_deref(),
                DEFAULT_ORIGIN_QUEUE_TIMEOUT,
            ),
            origin_share_per_network: share_per_network(
                self.origin_share_per_network,
                &format!("{at}.origin_share_per_network"),
                errors,
            ),
            client_send_timeout: client_send_timeout(
                self.client_send_timeout.as_deref(),
                &format!("{at}.client_send_timeout"),
                errors,
            ),
            cache: self.cache.validate(&format!("{at}.cache"), errors),
            name,
            hosts,
            origin,
            balance,
            autopilot,
            live,
            admission,
            tunnels,
            client_limit: self
                .client_limit
                .map(|c| c.validate(&format!("{at}.client_limit"), errors)),
            session_cookies,
            case_sensitive: self.case_sensitive,
        }
    }
}

/// At least a second: the watchdog looks once a second, and a phone on a
/// train needs a moment.
fn client_send_timeout(raw: Option<&str>, at: &str, errors: &mut Errors) -> Duration {
    let timeout = errors.duration(at, raw, DEFAULT_CLIENT_SEND_TIMEOUT);
    if timeout < Duration::from_secs(1) {
        errors.push(at, "must be at least 1s");
    }
    timeout
}

fn share_per_network(raw: Option<u64>, at: &str, errors: &mut Errors) -> u8 {
    match raw {
        None => DEFAULT_ORIGIN_SHARE_PER_NETWORK,
        Some(percent @ 1..=100) => u8::try_from(percent).unwrap_or(100),
        Some(_) => {
            errors.push(
                at,
                "must be a percentage from 1 to 100 (100: one network may hold every origin slot)",
            );
            DEFAULT_ORIGIN_SHARE_PER_NETWORK
        }
    }
}

/// The `origin_tls_name`, `origin_ca_file`, `origin_client_*` and
/// `origin_http2` keys of a site.
struct RawOriginTls {
    name: Option<String>,
    ca_file: Option<PathBuf>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    http2: Option<bool>,
}

impl RawOriginTls {
    /// Checked against the origin's scheme: when no backend is `https://`
    /// each key set is an error (it would silently do nothing).
    fn validate(
        self,
        https: bool,
        origin_host: Option<&HeaderValue>,
        at: &str,
        errors: &mut Errors,
    ) -> Option<OriginTls> {
        if !https {
            let set = [
                ("origin_tls_name", self.name.is_some()),
                ("origin_ca_file", self.ca_file.is_some()),
                ("origin_client_cert", self.client_cert.is_some()),
                ("origin_client_key", self.client_key.is_some()),
                ("origin_http2", self.http2.is_some()),
            ];
            for (key, _) in set.iter().filter(|(_, set)| *set) {
                errors.push(
                    format!("{at}.{key}"),
                    "only for an https:// origin; this origin is http://",
                );
            }
            return None;
        }
        let name = match (&self.name, origin_host) {
            (Some(raw), _) => server_name(raw).or_else(|| {
                errors.push(
                    format!("{at}.origin_tls_name"),
                    format!("{raw:?} is not a DNS name or an IP address"),
                );
                None
            }),
            (None, Some(host)) => {
                let raw = host.to_str().unwrap_or_default();
                let name = raw
                    .parse::<http::uri::Authority>()
                    .ok()
                    .and_then(|a| server_name(a.host()));
                if name.is_none() {
                    errors.push(
                        format!("{at}.origin_tls_name"),
                        format!(
                            "missing: origin_host {raw:?} is no certificate name; \
                             set the name the origin's certificate carries"
                        ),
                    );
                }
                name
            }
            (None, None) => None,
        };
        let client = match (self.client_cert, self.client_key) {
            (Some(cert), Some(key)) => Some(ClientCert { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                errors.push(
                    format!("{at}.origin_client_key"),
                    "missing: origin_client_cert needs its private key",
                );
                None
            }
            (None, Some(_)) => {
                errors.push(
                    format!("{at}.origin_client_cert"),
                    "missing: origin_client_key needs its certificate",
                );
                None
            }
        };
        Some(OriginTls {
            name,
            ca_file: self.ca_file,
            client,
            http2: self.http2.unwrap_or(false),
        })
    }
}

/// A certificate name: a DNS name or an IP address (`[::1]` unbracketed).
fn server_name(raw: &str) -> Option<ServerName<'static>> {
    let raw = raw.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(raw.to_owned()).ok()
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn parse_host(raw: &str, at: &str, errors: &mut Errors) -> Option<HostPattern> {
    if raw == "*" {
        return Some(HostPattern::Any);
    }
    let ok = !raw.is_empty()
        && raw.len() <= 253
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Some(HostPattern::Exact(raw.to_ascii_lowercase()))
    } else {
        errors.push(
            at,
            format!("{raw:?} is not a host name (no port, no scheme; \"*\" for any)"),
        );
        None
    }
}

/// A list of backends: each parsed, at least one, none twice.
fn parse_backends(list: &[String], at: &str, errors: &mut Errors) -> Vec<Uri> {
    if list.is_empty() {
        errors.push(at, "an empty list: name at least one backend");
        return vec![Uri::from_static("http://127.0.0.1")];
    }
    let mut seen = BTreeSet::new();
    list.iter()
        .enumerate()
        .map(|(i, raw)| {
            let at = format!("{at}[{i}]");
            let uri = parse_origin(raw, &at, errors);
            if !seen.insert(uri.to_string()) {
                errors.push(at, format!("{raw:?} is listed twice"));
            }
            uri
        })
        .collect()
}

fn parse_origin(raw: &str, at: &str, errors: &mut Errors) -> Uri {
    let fallback = Uri::from_static("http://127.0.0.1");
    let Ok(uri) = raw.parse::<Uri>() else {
        errors.push(
            at,
            format!("{raw:?} is not a URL (e.g. \"http://10.0.0.5:8080\")"),
        );
        return fallback;
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        errors.push(
            at,
            format!("{raw:?} must look like \"http://host:port\" or \"https://host[:port]\""),
        );
        return fallback;
    }
    if uri.path() != "/" || uri.query().is_some() {
        errors.push(at, "must not have a path: requests keep their own path");
        return fallback;
    }
    uri
}

pub(super) fn check_unique_sites(sites: &[SiteConfig], errors: &mut Errors) {
    let mut names = BTreeSet::new();
    let mut hosts = BTreeSet::new();
    for (i, site) in sites.iter().enumerate() {
        if !names.insert(site.name.as_str()) {
            errors.push(
                format!("site[{i}].name"),
                format!("{:?} is used by an earlier site", site.name),
            );
        }
        for (j, host) in site.hosts.iter().enumerate() {
            let key = match host {
                HostPattern::Any => "*",
                HostPattern::Exact(h) => h.as_str(),
            };
            if !hosts.insert(key.to_owned()) {
                errors.push(
                    format!("site[{i}].hosts[{j}]"),
                    format!("{key:?} is already answered by an earlier site"),
                );
            }
        }
    }
}
