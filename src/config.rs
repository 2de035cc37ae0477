//! Configuration: a raw serde layer in human units, validated into typed values.
//!
//! Validation collects every problem with its key path (`site[0].cache.rule[1].ttl`)
//! so an operator fixes the file in one pass. Unknown keys are errors too: a typo
//! in a limit must never silently fall back to a default during a surge.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use http::{HeaderValue, Uri};
use serde::Deserialize;

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
/// Bytes of stored responses when `cache.max_size` is not set.
pub const DEFAULT_CACHE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest single response worth storing when `cache.max_object_size` is not set.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 8 * 1024 * 1024;
/// How long an uncacheable key skips the coalescer (Varnish's hit-for-miss).
pub const DEFAULT_HIT_FOR_MISS: Duration = Duration::from_secs(120);
/// Requests that may wait on one in-flight fetch; the excess get the busy page.
pub const DEFAULT_MAX_WAITERS_PER_KEY: usize = 10_000;
pub const DEFAULT_ORIGIN_CONCURRENCY: usize = 64;
pub const DEFAULT_ORIGIN_QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_ORIGIN_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_ORIGIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::from_secs(30);
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(3600);
/// Cookies that mark a request as per-user when a site names none.
pub const DEFAULT_SESSION_COOKIES: &[&str] = &["JSESSIONID", "PHPSESSID", "oneSessionId"];
pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(20 * 60);
/// How long a ticket's turn waits for its holder before passing to the next
/// ticket: a few of the waiting page's slowest polls.
pub const DEFAULT_CLAIM_WINDOW: Duration = Duration::from_secs(60);
/// Shortest claim window: the waiting page polls at least three times in it
/// (every 3 s at the fastest, see `admission::gate`).
pub const MIN_CLAIM_WINDOW: Duration = Duration::from_secs(10);
/// Tickets one network (/24, /64) may take a minute: a whole collège behind
/// one NAT address arrives well within it; a bot that drops cookies does not.
pub const DEFAULT_TICKETS_PER_NETWORK_PER_MINUTE: u32 = 300;

/// A validated configuration. Built only by [`Config::parse`], so every value is usable.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    pub sites: Vec<SiteConfig>,
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Public listener: HTTP/1.1 and h2c.
    pub listen: SocketAddr,
    /// `/metrics`, `/healthz` and the admin API; never the public port.
    pub admin_listen: Option<SocketAddr>,
    /// Tokio worker threads; all cores when unset.
    pub worker_threads: Option<NonZeroUsize>,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Peers whose `X-Forwarded-*` headers are believed (a load balancer in front).
    pub trusted_proxies: Vec<Cidr>,
    /// Signing keys for tickets and passes: first line current, optional
    /// second line previous (rotation). `DIGUE_SECRET` otherwise.
    pub secret_file: Option<std::path::PathBuf>,
    /// Where the lines' counters are saved, so tickets keep their place
    /// across a restart.
    pub state_file: Option<std::path::PathBuf>,
    /// A directory overriding the built-in page templates and languages.
    pub pages_dir: Option<std::path::PathBuf>,
    /// The HTTPS listener (HTTP/2 and HTTP/1.1 by ALPN), when configured.
    pub tls: Option<TlsSettings>,
    /// Log lines as JSON instead of text.
    pub log_json: bool,
    /// One log line per request (site, method, path without query, status,
    /// outcome, duration, client network truncated to /24 or /48).
    pub access_log: bool,
}

/// The HTTPS listener and its certificates (PEM files).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub listen: SocketAddr,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// More certificates, chosen by the name the client asks for (SNI).
    pub sni: Vec<SniCertificate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniCertificate {
    pub hosts: Vec<String>,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of stored responses, headers included.
    pub max_size: u64,
    pub max_object_size: u64,
    pub hit_for_miss: Duration,
    pub max_waiters_per_key: usize,
}

#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    /// `http://host:port`, no path.
    pub origin: Uri,
    /// Replaces the client's `Host` toward the origin; passed through when unset.
    pub origin_host: Option<HeaderValue>,
    pub origin_concurrency: usize,
    pub origin_queue_timeout: Duration,
    pub origin_timeout: Duration,
    pub origin_connect_timeout: Duration,
    /// Cookie names that make a request per-user.
    pub session_cookies: Vec<String>,
    pub cache: SiteCacheConfig,
    pub admission: Option<AdmissionConfig>,
}

#[derive(Debug, Clone)]
pub struct SiteCacheConfig {
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub rules: Vec<CacheRule>,
}

/// A forced policy for paths under `prefix`, for origins that send no or bad headers.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheRule {
    pub prefix: String,
    pub action: RuleAction,
    /// Session cookies don't make these requests per-user (static assets).
    pub shared: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    /// Follow the origin's headers.
    Headers,
    /// Treat storable responses as fresh for this long, whatever the origin says.
    ForceTtl(Duration),
    /// Never cache.
    Bypass,
}

/// The waiting-room settings of a site (enforced by the admission stage).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    pub paths: Vec<String>,
    pub new_users_per_minute: u32,
    pub burst: u32,
    pub max_active_users: Option<u32>,
    pub session_duration: Duration,
    pub mode: AdmissionMode,
    pub cookie_domain: Option<String>,
    pub claim_window: Duration,
    /// Staff networks that never wait (checked on the real peer address).
    pub bypass_cidrs: Vec<Cidr>,
    pub tickets_per_network_per_minute: u32,
    /// The portal's name on the waiting page.
    pub portal_name: String,
    /// News for the people waiting, shown on the page.
    pub message: Option<String>,
}

/// Five seconds' worth of the rate, at least one: the burst when none is set.
pub fn default_burst(per_minute: u32) -> u32 {
    (per_minute / 12).max(1)
}

impl AdmissionConfig {
    /// Whether a request target (path and query) is an entry point.
    pub fn gates(&self, target: &str) -> bool {
        self.paths.iter().any(|p| target.starts_with(p.as_str()))
    }
}

impl AdmissionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Auto => "auto",
            AdmissionMode::QueueAll => "queue_all",
            AdmissionMode::Passthrough => "passthrough",
            AdmissionMode::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<AdmissionMode> {
        Some(match s {
            "auto" => AdmissionMode::Auto,
            "queue_all" => AdmissionMode::QueueAll,
            "passthrough" => AdmissionMode::Passthrough,
            "closed" => AdmissionMode::Closed,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionMode {
    Auto,
    QueueAll,
    Passthrough,
    Closed,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where the shared store is. Never logged: a URL may hold a password.
    pub redis: RedisTarget,
    /// What a node does while Redis is unreachable.
    pub on_store_failure: StoreFailure,
    /// How often each node refreshes its view of the shared lines.
    pub refresh_interval: Duration,
    /// This node's name in the cluster (default: host name and process id).
    pub node_id: Option<String>,
}

/// The shared store: `redis://` or `rediss://` (TLS) URLs; a password may
/// come from `DIGUE_REDIS_PASSWORD` instead of the URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis (`redis_url`).
    Single(String),
    /// A Redis Cluster (`redis_cluster = true`): seed nodes, tried in
    /// order; the client learns the other nodes and the slots from them.
    Cluster(Vec<String>),
}

/// The policy while the shared store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailure {
    /// Passes keep working, tickets keep their place, newcomers enter at
    /// this node's share of the last known budget. The default.
    Static,
    /// Everybody gets in (re-creates 2020: only for portals that can take it).
    Open,
    /// Nobody new gets in until the store returns.
    Closed,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn mask_eq(net: u128, ip: u128, prefix: u8, bits: u8) -> bool {
    let shift = u32::from(bits - prefix);
    shift >= 128 || (net >> shift) == (ip >> shift)
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length (0..={max})"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::parse(&text)
    }

    /// Parses and validates config text, reporting every problem at once.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Errors::default();
        let mut unknown = Vec::new();
        let de = toml::Deserializer::parse(text).map_err(|e| single(e.to_string()))?;
        let raw: RawConfig = serde_ignored::deserialize(de, |path| {
            unknown.push(key_path(&path));
        })
        .map_err(|e| single(e.to_string()))?;
        for key in unknown {
            errors.push(key, "unknown key");
        }
        let config = raw.validate(&mut errors);
        if errors.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors.0))
        }
    }

    /// Finds the site answering `host` (lower-case, without port): the first exact
    /// match wins over any `*` site, whatever their order in the file.
    pub fn site_for_host(&self, host: &str) -> Option<usize> {
        let exact = self.sites.iter().position(|s| {
            s.hosts
                .iter()
                .any(|h| matches!(h, HostPattern::Exact(_)) && h.matches(host))
        });
        exact.or_else(|| {
            self.sites
                .iter()
                .position(|s| s.hosts.contains(&HostPattern::Any))
        })
    }
}

impl SiteConfig {
    /// The rule governing `path`: the longest matching prefix.
    pub fn rule_for(&self, path: &str) -> Option<&CacheRule> {
        self.cache
            .rules
            .iter()
            .filter(|r| path.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
    }
}

fn single(message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        path: String::new(),
        message: message.trim_end().to_owned(),
    }])
}

/// `site.0.cache.x` as serde_ignored sees it → `site[0].cache.x`.
pub fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        self.opt_duration(path, raw).unwrap_or(default)
    }

    fn opt_duration(&mut self, path: &str, raw: Option<&str>) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw) {
            Ok(d) => Some(d),
            Err(_) => {
                self.push(
                    path,
                    format!("{raw:?} is not a duration (write it like \"30s\", \"20m\", \"1h\")"),
                );
                None
            }
        }
    }

    fn size(&mut self, path: &str, raw: Option<&str>, default: u64) -> u64 {
        let Some(raw) = raw else { return default };
        match raw.parse::<bytesize::ByteSize>() {
            Ok(size) if size.as_u64() > 0 => size.as_u64(),
            _ => {
                self.push(
                    path,
                    format!("{raw:?} is not a size (write it like \"256MiB\", \"64KiB\")"),
                );
                default
            }
        }
    }

    fn addr(&mut self, path: &str, raw: &str) -> Option<SocketAddr> {
        match raw.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!("{raw:?} is not an address (write it like \"127.0.0.1:8080\")"),
                );
                None
            }
        }
    }

    fn positive(&mut self, path: &str, raw: Option<u64>, default: usize) -> usize {
        match raw {
            None => default,
            Some(0) => {
                self.push(path, "must be at least 1");
                default
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }
}

// ---- the raw layer: what the file says, in human units ----

#[derive(Deserialize)]
struct RawConfig {
    server: Option<RawServer>,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    site: Vec<RawSite>,
    cluster: Option<RawCluster>,
}

#[derive(Deserialize)]
struct RawServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    worker_threads: Option<u64>,
    max_connections: Option<u64>,
    max_header_size: Option<String>,
    header_read_timeout: Option<String>,
    shutdown_grace: Option<String>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
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

#[derive(Deserialize, Default)]
struct RawCache {
    max_size: Option<String>,
    max_object_size: Option<String>,
    hit_for_miss: Option<String>,
    max_waiters_per_key: Option<u64>,
}

#[derive(Deserialize)]
struct RawSite {
    name: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    origin: Option<String>,
    origin_host: Option<String>,
    origin_concurrency: Option<u64>,
    origin_queue_timeout: Option<String>,
    origin_timeout: Option<String>,
    origin_connect_timeout: Option<String>,
    session_cookies: Option<Vec<String>>,
    #[serde(default)]
    cache: RawSiteCache,
    admission: Option<RawAdmission>,
}

#[derive(Deserialize, Default)]
struct RawSiteCache {
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
    #[serde(default)]
    rule: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    prefix: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    bypass: bool,
    #[serde(default)]
    shared: bool,
    stale_while_revalidate: Option<String>,
    stale_if_error: Option<String>,
}

#[derive(Deserialize)]
struct RawAdmission {
    #[serde(default)]
    paths: Vec<String>,
    new_users_per_minute: Option<u64>,
    burst: Option<u64>,
    max_active_users: Option<u64>,
    session_duration: Option<String>,
    mode: Option<String>,
    cookie_domain: Option<String>,
    claim_window: Option<String>,
    #[serde(default)]
    bypass_cidrs: Vec<String>,
    tickets_per_network_per_minute: Option<u64>,
    portal_name: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct RawCluster {
    redis_url: Option<String>,
    redis_urls: Option<Vec<String>>,
    #[serde(default)]
    redis_cluster: bool,
    on_store_failure: Option<String>,
    refresh_interval: Option<String>,
    node_id: Option<String>,
}

impl RawConfig {
    fn validate(self, errors: &mut Errors) -> Config {
        let server = match self.server {
            Some(s) => s.validate(errors),
            None => {
                errors.push("server", "missing section (it needs at least `listen`)");
                RawServer::fallback()
            }
        };
        let cache = self.cache.validate(errors);
        if self.site.is_empty() {
            errors.push("site", "no [[site]] configured: digue would answer nothing");
        }
        let sites: Vec<SiteConfig> = self
            .site
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.validate(&format!("site[{i}]"), errors))
            .collect();
        check_unique_sites(&sites, errors);
        let cluster = self.cluster.and_then(|c| c.validate(errors));
        Config {
            server,
            cache,
            sites,
            cluster,
        }
    }
}

fn check_unique_sites(sites: &[SiteConfig], errors: &mut Errors) {
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

impl RawServer {
    fn fallback() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: None,
            worker_threads: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES as usize,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            trusted_proxies: Vec::new(),
            secret_file: None,
            state_file: None,
            pages_dir: None,
            tls: None,
            log_json: false,
            access_log: false,
        }
    }

    fn validate(self, errors: &mut Errors) -> ServerConfig {
        let mut out = RawServer::fallback();
        match self.listen.as_deref() {
            Some(raw) => {
                if let Some(a) = errors.addr("server.listen", raw) {
                    out.listen = a;
                }
            }
            None => errors.push("server.listen", "missing (e.g. \"0.0.0.0:8080\")"),
        }
        out.admin_listen = self
            .admin_listen
            .as_deref()
            .and_then(|raw| errors.addr("server.admin_listen", raw));
        if out.admin_listen == Some(out.listen) && out.listen.port() != 0 {
            errors.push(
                "server.admin_listen",
                "must differ from server.listen: the admin API is never public",
            );
        }
        out.worker_threads = self.worker_threads.map(|n| {
            NonZeroUsize::new(errors.positive("server.worker_threads", Some(n), 1))
                .expect("invariant: positive() never returns 0")
        });
        out.max_connections = errors.positive(
            "server.max_connections",
            self.max_connections,
            out.max_connections,
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
        out.max_header_bytes = usize::try_from(header.max(MIN_HEADER_BYTES)).unwrap_or(usize::MAX);
        out.header_read_timeout = errors.duration(
            "server.header_read_timeout",
            self.header_read_timeout.as_deref(),
            DEFAULT_HEADER_READ_TIMEOUT,
        );
        out.shutdown_grace = errors.duration(
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
        out.log_json = match self.log_format.as_deref() {
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
        out.state_file = self.state_file.map(Into::into);
        out.pages_dir = self.pages_dir.map(Into::into);
        if let Some(dir) = &out.pages_dir
            && !dir.is_dir()
        {
            errors.push(
                "server.pages_dir",
                format!("{} is not a directory", dir.display()),
            );
        }
        if let Some(file) = &out.secret_file
            && let Err(e) = crate::admission::keys_from_file(file)
        {
            errors.push("server.secret_file", e);
        }
        out.tls = tls_settings(
            self.tls_listen,
            self.tls_cert,
            self.tls_key,
            self.tls_sni,
            errors,
        );
        if let Some(tls) = &out.tls
            && (Some(tls.listen) == out.admin_listen || tls.listen == out.listen)
            && tls.listen.port() != 0
        {
            errors.push(
                "server.tls_listen",
                "must differ from server.listen and server.admin_listen",
            );
        }
        out
    }
}

fn tls_settings(
    listen: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    sni: Vec<RawSni>,
    errors: &mut Errors,
) -> Option<TlsSettings> {
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
    let (cert, key): (std::path::PathBuf, std::path::PathBuf) = (cert?.into(), key?.into());
    let mut ok = true;
    if let Err(e) = crate::tls::load_pair(&cert, &key) {
        errors.push("server.tls_cert", e);
        ok = false;
    }
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
        let (c, k): (std::path::PathBuf, std::path::PathBuf) = (c.into(), k.into());
        if let Err(e) = crate::tls::load_pair(&c, &k) {
            errors.push(format!("{at}.cert"), e);
            ok = false;
        }
        sni_certs.push(SniCertificate {
            hosts: raw.hosts,
            cert: c,
            key: k,
        });
    }
    ok.then_some(TlsSettings {
        listen,
        cert,
        key,
        sni: sni_certs,
    })
}

/// Shortest view refresh: faster would load Redis for no visible gain.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(50);
/// Longest view refresh: a node's refresh is its heartbeat, and a node
/// silent for `NODE_TIMEOUT` drops out of the live count (which sets each
/// node's share of the budget while Redis is away).
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
const _: () = assert!(
    2 * MAX_REFRESH_INTERVAL.as_millis() < crate::admission::redis::NODE_TIMEOUT.as_millis()
);
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

impl RawCluster {
    fn validate(self, errors: &mut Errors) -> Option<ClusterConfig> {
        let redis = redis_target(self.redis_url, self.redis_urls, self.redis_cluster, errors);
        let on_store_failure = match self.on_store_failure.as_deref() {
            None | Some("static") => StoreFailure::Static,
            Some("open") => StoreFailure::Open,
            Some("closed") => StoreFailure::Closed,
            Some(other) => {
                errors.push(
                    "cluster.on_store_failure",
                    format!("{other:?} is not one of static, open, closed"),
                );
                StoreFailure::Static
            }
        };
        let refresh_interval = errors.duration(
            "cluster.refresh_interval",
            self.refresh_interval.as_deref(),
            DEFAULT_REFRESH_INTERVAL,
        );
        if !(MIN_REFRESH_INTERVAL..=MAX_REFRESH_INTERVAL).contains(&refresh_interval) {
            errors.push(
                "cluster.refresh_interval",
                "must be between 50ms and 2s: each refresh is the node's heartbeat, and a node \
                 silent for 5s no longer counts",
            );
        }
        Some(ClusterConfig {
            redis: redis?,
            on_store_failure,
            refresh_interval,
            node_id: self.node_id,
        })
    }
}

/// `redis_url` (one URL) or `redis_urls` (seed nodes, Redis Cluster only).
/// Error messages never quote a URL: it may hold a password.
fn redis_target(
    url: Option<String>,
    urls: Option<Vec<String>>,
    cluster: bool,
    errors: &mut Errors,
) -> Option<RedisTarget> {
    let seeds: Vec<(String, String)> = match (url, urls) {
        (Some(_), Some(_)) => {
            errors.push(
                "cluster.redis_urls",
                "give either redis_url or redis_urls, not both",
            );
            return None;
        }
        (Some(url), None) => vec![("cluster.redis_url".to_owned(), url)],
        (None, Some(urls)) if urls.is_empty() => {
            errors.push("cluster.redis_urls", "empty: list at least one node");
            return None;
        }
        (None, Some(urls)) => urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| (format!("cluster.redis_urls[{i}]"), url))
            .collect(),
        (None, None) => {
            errors.push(
                "cluster.redis_url",
                "missing (e.g. \"redis://10.0.0.20:6379\")",
            );
            return None;
        }
    };
    let before = errors.0.len();
    if !cluster && seeds.len() > 1 {
        errors.push(
            "cluster.redis_urls",
            "several URLs are the seed nodes of a Redis Cluster: set redis_cluster = true \
             (a single Redis has one URL, redis_url)",
        );
    }
    for (path, url) in &seeds {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            errors.push(path.as_str(), "must start with redis:// or rediss://");
            continue;
        }
        match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
            Err(_) => errors.push(path.as_str(), "is not a valid Redis URL"),
            Ok(info) if cluster && info.redis_settings().db() != 0 => errors.push(
                path.as_str(),
                "a Redis Cluster has only database 0: drop the /N at the end of the URL",
            ),
            Ok(_) => {}
        }
    }
    let tls = |url: &str| url.starts_with("rediss://");
    if seeds.iter().any(|(_, url)| tls(url) != tls(&seeds[0].1)) {
        errors.push(
            "cluster.redis_urls",
            "mixes redis:// and rediss://: the nodes of one Redis Cluster share one TLS mode",
        );
    }
    if errors.0.len() > before {
        return None;
    }
    let mut urls = seeds.into_iter().map(|(_, url)| url);
    if cluster {
        Some(RedisTarget::Cluster(urls.collect()))
    } else {
        urls.next().map(RedisTarget::Single)
    }
}

impl RawCache {
    fn validate(self, errors: &mut Errors) -> CacheConfig {
        let max_size = errors.size(
            "cache.max_size",
            self.max_size.as_deref(),
            DEFAULT_CACHE_BYTES,
        );
        let max_object_size = errors.size(
            "cache.max_object_size",
            self.max_object_size.as_deref(),
            DEFAULT_MAX_OBJECT_BYTES.min(max_size / 4).max(1),
        );
        if max_object_size > max_size {
            errors.push(
                "cache.max_object_size",
                "is larger than cache.max_size: such objects could never be stored",
            );
        }
        CacheConfig {
            max_size,
            max_object_size,
            hit_for_miss: errors.duration(
                "cache.hit_for_miss",
                self.hit_for_miss.as_deref(),
                DEFAULT_HIT_FOR_MISS,
            ),
            max_waiters_per_key: errors.positive(
                "cache.max_waiters_per_key",
                self.max_waiters_per_key,
                DEFAULT_MAX_WAITERS_PER_KEY,
            ),
        }
    }
}

impl RawSite {
    fn validate(self, at: &str, errors: &mut Errors) -> SiteConfig {
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
        let origin = match self.origin.as_deref() {
            Some(raw) => parse_origin(raw, &format!("{at}.origin"), errors),
            None => {
                errors.push(
                    format!("{at}.origin"),
                    "missing (e.g. \"http://10.0.0.5:8080\")",
                );
                Uri::from_static("http://127.0.0.1")
            }
        };
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
        SiteConfig {
            origin_concurrency: errors.positive(
                &format!("{at}.origin_concurrency"),
                self.origin_concurrency,
                DEFAULT_ORIGIN_CONCURRENCY,
            ),
            origin_queue_timeout: errors.duration(
                &format!("{at}.origin_queue_timeout"),
                self.origin_queue_timeout.as_deref(),
                DEFAULT_ORIGIN_QUEUE_TIMEOUT,
            ),
            origin_timeout: errors.duration(
                &format!("{at}.origin_timeout"),
                self.origin_timeout.as_deref(),
                DEFAULT_ORIGIN_TIMEOUT,
            ),
            origin_connect_timeout: errors.duration(
                &format!("{at}.origin_connect_timeout"),
                self.origin_connect_timeout.as_deref(),
                DEFAULT_ORIGIN_CONNECT_TIMEOUT,
            ),
            cache: self.cache.validate(&format!("{at}.cache"), errors),
            admission: self
                .admission
                .map(|a| a.validate(&format!("{at}.admission"), errors)),
            name,
            hosts,
            origin,
            origin_host,
            session_cookies,
        }
    }
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

fn parse_origin(raw: &str, at: &str, errors: &mut Errors) -> Uri {
    let fallback = Uri::from_static("http://127.0.0.1");
    let Ok(uri) = raw.parse::<Uri>() else {
        errors.push(
            at,
            format!("{raw:?} is not a URL (e.g. \"http://10.0.0.5:8080\")"),
        );
        return fallback;
    };
    if uri.scheme_str() == Some("https") {
        errors.push(
            at,
            "https origins are not supported yet; reach the origin over http on a private network",
        );
        return fallback;
    }
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        errors.push(at, format!("{raw:?} must look like \"http://host:port\""));
        return fallback;
    }
    if uri.path() != "/" || uri.query().is_some() {
        errors.push(at, "must not have a path: requests keep their own path");
        return fallback;
    }
    uri
}

impl RawSiteCache {
    fn validate(self, at: &str, errors: &mut Errors) -> SiteCacheConfig {
        let rules = self
            .rule
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.validate(&format!("{at}.rule[{i}]"), errors))
            .collect();
        SiteCacheConfig {
            stale_while_revalidate: errors.duration(
                &format!("{at}.stale_while_revalidate"),
                self.stale_while_revalidate.as_deref(),
                DEFAULT_STALE_WHILE_REVALIDATE,
            ),
            stale_if_error: errors.duration(
                &format!("{at}.stale_if_error"),
                self.stale_if_error.as_deref(),
                DEFAULT_STALE_IF_ERROR,
            ),
            rules,
        }
    }
}

impl RawRule {
    fn validate(self, at: &str, errors: &mut Errors) -> CacheRule {
        let prefix = match self.prefix {
            Some(p) if p.starts_with('/') => p,
            Some(p) => {
                errors.push(format!("{at}.prefix"), format!("{p:?} must start with '/'"));
                p
            }
            None => {
                errors.push(format!("{at}.prefix"), "missing (e.g. \"/static/\")");
                String::from("/")
            }
        };
        let ttl = errors.opt_duration(&format!("{at}.ttl"), self.ttl.as_deref());
        let action = match (ttl, self.bypass) {
            (Some(_), true) => {
                errors.push(
                    format!("{at}.bypass"),
                    "a rule cannot both force a ttl and bypass",
                );
                RuleAction::Bypass
            }
            (Some(ttl), false) => RuleAction::ForceTtl(ttl),
            (None, true) => RuleAction::Bypass,
            (None, false) => RuleAction::Headers,
        };
        if self.shared && self.bypass {
            errors.push(format!("{at}.shared"), "a bypass rule shares nothing");
        }
        CacheRule {
            prefix,
            action,
            shared: self.shared,
            stale_while_revalidate: errors.opt_duration(
                &format!("{at}.stale_while_revalidate"),
                self.stale_while_revalidate.as_deref(),
            ),
            stale_if_error: errors.opt_duration(
                &format!("{at}.stale_if_error"),
                self.stale_if_error.as_deref(),
            ),
        }
    }
}

impl RawAdmission {
    fn validate(self, at: &str, errors: &mut Errors) -> AdmissionConfig {
        for (i, p) in self.paths.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(
                    format!("{at}.paths[{i}]"),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
        let rate = match self.new_users_per_minute {
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
            None => {
                errors.push(format!("{at}.new_users_per_minute"), "missing");
                60
            }
        };
        let mode = match self.mode.as_deref() {
            None => AdmissionMode::Auto,
            Some(m) => AdmissionMode::parse(m).unwrap_or_else(|| {
                errors.push(
                    format!("{at}.mode"),
                    format!("{m:?} is not one of auto, queue_all, passthrough, closed"),
                );
                AdmissionMode::Auto
            }),
        };
        if self.burst == Some(0) {
            errors.push(
                format!("{at}.burst"),
                "must be at least 1 (0 would admit nobody)",
            );
        }
        if self.max_active_users == Some(0) {
            errors.push(
                format!("{at}.max_active_users"),
                "must be at least 1 (0 would admit nobody; leave it out for no cap)",
            );
        }
        if self.paths.is_empty() {
            errors.push(
                format!("{at}.paths"),
                "missing: list the entry points that create a session (e.g. [\"/pronote/eleve.html\"])",
            );
        }
        let mut bypass_cidrs = Vec::new();
        for (i, raw) in self.bypass_cidrs.iter().enumerate() {
            match raw.parse::<Cidr>() {
                Ok(c) => bypass_cidrs.push(c),
                Err(e) => errors.push(format!("{at}.bypass_cidrs[{i}]"), e),
            }
        }
        if let Some(d) = &self.cookie_domain
            && (d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        {
            errors.push(
                format!("{at}.cookie_domain"),
                format!("{d:?} is not a domain"),
            );
        }
        let claim_window = errors.duration(
            &format!("{at}.claim_window"),
            self.claim_window.as_deref(),
            DEFAULT_CLAIM_WINDOW,
        );
        if claim_window < MIN_CLAIM_WINDOW {
            errors.push(
                format!("{at}.claim_window"),
                "must be at least 10s: a ticket's holder must be able to poll several times \
                 within it (every 3 s at the fastest)",
            );
        }
        AdmissionConfig {
            paths: self.paths,
            new_users_per_minute: rate,
            burst: self.burst.map_or(default_burst(rate), |b| {
                u32::try_from(b).unwrap_or(u32::MAX)
            }),
            max_active_users: self
                .max_active_users
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            session_duration: errors.duration(
                &format!("{at}.session_duration"),
                self.session_duration.as_deref(),
                DEFAULT_SESSION_DURATION,
            ),
            mode,
            cookie_domain: self.cookie_domain,
            claim_window,
            bypass_cidrs,
            tickets_per_network_per_minute: self
                .tickets_per_network_per_minute
                .map_or(DEFAULT_TICKETS_PER_NETWORK_PER_MINUTE, |n| {
                    u32::try_from(n).unwrap_or(u32::MAX).max(1)
                }),
            portal_name: self.portal_name.unwrap_or_else(|| "le portail".to_owned()),
            message: self.message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [server]
        listen = "127.0.0.1:8080"
        [[site]]
        name = "portal"
        hosts = ["*"]
        origin = "http://127.0.0.1:8081"
    "#;

    fn errors_of(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MINIMAL).expect("minimal config is valid");
        assert_eq!(c.cache.max_size, DEFAULT_CACHE_BYTES);
        let site = &c.sites[0];
        assert_eq!(site.origin_concurrency, DEFAULT_ORIGIN_CONCURRENCY);
        assert_eq!(site.origin_queue_timeout, DEFAULT_ORIGIN_QUEUE_TIMEOUT);
        assert_eq!(site.session_cookies, DEFAULT_SESSION_COOKIES);
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../config.toml");
        if let Err(e) = Config::parse(text) {
            panic!("config.toml must parse:\n{e}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let text = r#"
            [server]
            listen = "nowhere"
            colour = "blue"
            [cache]
            max_size = "lots"
            [[site]]
            name = "portal"
            hosts = ["*"]
            origin = "http://127.0.0.1:8081"
            [[site.cache.rule]]
            prefix = "/static/"
            ttl = "1h"
            [[site.cache.rule]]
            prefix = "static"
            ttl = "1 hour please"
            typo = 1
        "#;
        let errs = errors_of(text);
        for expected in [
            "server.listen: \"nowhere\" is not an address",
            "server.colour: unknown key",
            "cache.max_size: \"lots\" is not a size",
            "site[0].cache.rule[1].prefix: \"static\" must start with '/'",
            "site[0].cache.rule[1].ttl: \"1 hour please\" is not a duration",
            "site[0].cache.rule[1].typo: unknown key",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(expected)),
                "missing {expected:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn type_errors_name_the_key() {
        let errs = errors_of(&MINIMAL.replace(
            "hosts = [\"*\"]",
            "hosts = [\"*\"]\norigin_concurrency = \"many\"",
        ));
        assert!(
            errs.len() == 1 && errs[0].contains("origin_concurrency"),
            "{errs:?}"
        );
    }

    #[test]
    fn bad_origins_and_duplicate_hosts_are_refused() {
        let text = format!(
            "{MINIMAL}\n[[site]]\nname = \"portal\"\nhosts = [\"*\"]\norigin = \"https://x\"\n"
        );
        let errs = errors_of(&text);
        assert!(
            errs.iter().any(|e| e.starts_with("site[1].name")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("site[1].hosts[0]")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("site[1].origin")),
            "{errs:?}"
        );
    }

    #[test]
    fn an_admission_that_would_admit_nobody_is_refused() {
        let errs = errors_of(&format!(
            "{MINIMAL}\n[site.admission]\npaths = [\"/login\"]\nnew_users_per_minute = 60\n\
             burst = 0\nmax_active_users = 0\n"
        ));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("site[0].admission.burst: must be at least 1")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("site[0].admission.max_active_users: must be at least 1")),
            "{errs:?}"
        );
    }

    #[test]
    fn exact_host_wins_over_wildcard_whatever_the_order() {
        let text = format!(
            "{MINIMAL}\n[[site]]\nname = \"ent\"\nhosts = [\"ent.example.fr\"]\norigin = \"http://127.0.0.1:9\"\n"
        );
        let c = Config::parse(&text).expect("valid");
        assert_eq!(c.site_for_host("ent.example.fr"), Some(1));
        assert_eq!(c.site_for_host("other"), Some(0));
    }

    #[test]
    fn longest_rule_prefix_wins() {
        let text = format!(
            "{MINIMAL}\n[[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\n[[site.cache.rule]]\nprefix = \"/static/private/\"\nbypass = true\n"
        );
        let c = Config::parse(&text).expect("valid");
        let site = &c.sites[0];
        assert_eq!(
            site.rule_for("/static/private/x").map(|r| r.action),
            Some(RuleAction::Bypass)
        );
        assert_eq!(
            site.rule_for("/static/a.css").map(|r| r.action),
            Some(RuleAction::ForceTtl(Duration::from_secs(3600)))
        );
        assert!(site.rule_for("/other").is_none());
    }

    #[test]
    fn cluster_refresh_interval_stays_within_the_node_heartbeat() {
        let with = |interval: &str| {
            errors_of(&format!(
                "{MINIMAL}\n[cluster]\nredis_url = \"redis://127.0.0.1:6379\"\n\
                 refresh_interval = \"{interval}\"\n"
            ))
        };
        for ok in ["50ms", "250ms", "2s"] {
            assert_eq!(with(ok), Vec::<String>::new(), "{ok} is a sane refresh");
        }
        for bad in ["10ms", "3s", "5s", "1m"] {
            let errs = with(bad);
            assert!(
                errs.len() == 1 && errs[0].starts_with("cluster.refresh_interval: must be between"),
                "{bad}: {errs:?}"
            );
        }
    }

    #[test]
    fn cluster_redis_is_one_url_or_the_seed_nodes_of_a_redis_cluster() {
        let parse = |keys: &str| Config::parse(&format!("{MINIMAL}\n[cluster]\n{keys}\n"));
        let target = |keys: &str| {
            parse(keys)
                .unwrap_or_else(|e| panic!("{keys}: {e}"))
                .cluster
                .expect("a cluster section")
                .redis
        };
        assert_eq!(
            target("redis_url = \"redis://10.0.0.20:6379\""),
            RedisTarget::Single("redis://10.0.0.20:6379".to_owned()),
            "redis_url alone is one Redis, as before"
        );
        assert_eq!(
            target("redis_url = \"rediss://:pw@r1:6379\"\nredis_cluster = true"),
            RedisTarget::Cluster(vec!["rediss://:pw@r1:6379".to_owned()]),
            "one seed is enough for a Redis Cluster"
        );
        assert_eq!(
            target("redis_urls = [\"redis://r1:7000\", \"redis://r2:7000\"]\nredis_cluster = true"),
            RedisTarget::Cluster(vec![
                "redis://r1:7000".to_owned(),
                "redis://r2:7000".to_owned()
            ]),
            "seeds in the order given"
        );
        let errs = |keys: &str| errors_of(&format!("{MINIMAL}\n[cluster]\n{keys}\n"));
        let cases = [
            (
                "redis_url = \"redis://a:1\"\nredis_urls = [\"redis://b:1\"]",
                "cluster.redis_urls: give either redis_url or redis_urls",
            ),
            ("redis_urls = []", "cluster.redis_urls: empty"),
            ("redis_cluster = true", "cluster.redis_url: missing"),
            (
                "redis_urls = [\"redis://a:1\", \"redis://b:1\"]",
                "cluster.redis_urls: several URLs are the seed nodes of a Redis Cluster",
            ),
            (
                "redis_urls = [\"redis://a:1\", \"http://b:1\"]\nredis_cluster = true",
                "cluster.redis_urls[1]: must start with redis:// or rediss://",
            ),
            (
                "redis_urls = [\"redis://a:1\", \"rediss://b:1\"]\nredis_cluster = true",
                "cluster.redis_urls: mixes redis:// and rediss://",
            ),
            (
                "redis_url = \"redis://a:1/2\"\nredis_cluster = true",
                "cluster.redis_url: a Redis Cluster has only database 0",
            ),
            (
                "redis_url = \"redis://secret-pw@a:notaport\"",
                "cluster.redis_url: is not a valid Redis URL",
            ),
        ];
        for (keys, expected) in cases {
            let found = errs(keys);
            assert!(
                found.len() == 1 && found[0].starts_with(expected),
                "{keys:?} gives one error starting {expected:?}: {found:?}"
            );
            assert!(
                !found[0].contains("secret-pw"),
                "errors never quote a URL (it may hold a password): {found:?}"
            );
        }
        let both = errs("redis_url = \"ftp://a\"\non_store_failure = \"maybe\"");
        assert_eq!(both.len(), 2, "all errors at once: {both:?}");
    }

    #[test]
    fn cidr_ranges_match_v4_and_mapped_v6() {
        let net: Cidr = "10.0.0.0/8".parse().expect("valid");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let all: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains("1.2.3.4".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
