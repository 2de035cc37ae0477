//! A deliberately fragile demo origin that behaves like a legacy school portal
//! (Pronote/ENT): `digue demo` puts the proxy in front of it, and the surge
//! simulator hammers it to show what digue absorbs.
//!
//! The portal speaks HTTP/1.1 with keep-alive only, like the aging Tomcat
//! installations it imitates. Its caching headers are intentionally
//! inconsistent: the home page is properly cacheable, static assets and the
//! news page carry no caching headers at all (so digue must force a TTL), and
//! everything tied to a student session is `no-store`.

use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use httpdate::HttpDate;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Every sleep of the portal is capped so that a silly `base_latency` cannot
/// park a task forever.
const MAX_THINK: Duration = Duration::from_secs(30);
/// Back-off after a failed `accept` (typically EMFILE during a surge), so the
/// loop does not spin on an error that needs time to clear.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// A client trickling its request body must not hold a slot forever.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Pronote's API calls are small JSON documents; anything bigger is abuse.
const MAX_BODY: usize = 1 << 20;
/// Sessions are forgotten first-in first-out past this count, standing in for
/// session expiry so a long surge simulation cannot grow memory without bound.
const MAX_SESSIONS: usize = 50_000;
/// The login page is the expensive one on a real portal (session creation,
/// ENT handshake), hence its higher cost.
const LOGIN_COST: f64 = 3.0;
const APPEL_PREFIX: &str = "/pronote/appelfonction/";
const SESSION_COOKIE: &str = "JSESSIONID";

type Body = Full<Bytes>;

/// Knobs of the demo portal; `Default` gives capacity 32, base latency 20 ms.
#[derive(Debug, Clone)]
pub struct PortalOptions {
    /// Requests the portal can work on at once; past this it degrades and then fails.
    pub capacity: usize,
    /// Latency of a dynamic page when the portal is idle.
    pub base_latency: Duration,
}

impl Default for PortalOptions {
    fn default() -> Self {
        PortalOptions {
            capacity: 32,
            base_latency: Duration::from_millis(20),
        }
    }
}

/// How long over-capacity requests linger before failing. Not public: the
/// figures imitate a saturated Tomcat, but tests need shorter ones.
#[derive(Debug, Clone, Copy)]
struct Timings {
    reject_after: Duration,
    drop_after: Duration,
}

impl Timings {
    const LEGACY: Timings = Timings {
        reject_after: Duration::from_secs(1),
        drop_after: Duration::from_secs(5),
    };
}

/// A running portal: its address, live counters, and a way to stop it.
pub struct Portal {
    /// Address the portal accepts connections on.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Portal {
    /// Starts serving on `listener` in a background tokio task.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime, or if the listener has no
    /// local address (which a bound listener always has).
    pub fn spawn(listener: TcpListener, opts: PortalOptions) -> Portal {
        Portal::spawn_with(listener, opts, Timings::LEGACY)
    }

    fn spawn_with(listener: TcpListener, opts: PortalOptions, timings: Timings) -> Portal {
        let addr = listener
            .local_addr()
            .expect("a bound TcpListener has a local address");
        let shared = Arc::new(Shared::new(opts, timings));
        tracing::info!(
            %addr,
            capacity = shared.capacity,
            base_latency_ms = shared.base_latency.as_millis(),
            "demo portal listening"
        );
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Portal {
            addr,
            shared,
            accept,
        }
    }

    /// Requests being processed right now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Highest in_flight ever seen.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::Relaxed)
    }

    /// Requests answered with 5xx or dropped because the portal was over capacity.
    ///
    /// A request is counted as soon as the portal decides to reject it, i.e.
    /// before its 1 s or 5 s wait is over.
    pub fn overload_errors(&self) -> u64 {
        self.shared.overload_errors.load(Ordering::Relaxed)
    }

    /// Total requests received (health checks excluded, so probes from digue
    /// do not blur how much traffic actually reached the origin).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Portal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Portal")
            .field("addr", &self.addr)
            .field("in_flight", &self.in_flight())
            .field("peak_in_flight", &self.peak_in_flight())
            .field("overload_errors", &self.overload_errors())
            .field("requests", &self.requests())
            .finish()
    }
}

impl Drop for Portal {
    /// Stops the accept loop. Open connections are owned by that task, so they
    /// are cut too, including requests still waiting out their latency.
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Error returned by the service to make hyper close the connection without
/// writing a response, which is what a saturated legacy server looks like.
#[derive(Debug)]
struct Saturated;

impl fmt::Display for Saturated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("portal saturated, connection dropped without a response")
    }
}

impl std::error::Error for Saturated {}

struct Shared {
    capacity: usize,
    base_latency: Duration,
    timings: Timings,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    overload_errors: AtomicU64,
    requests: AtomicU64,
    /// Alternates the fate of excess requests so that exactly half get a 503.
    excess_seen: AtomicU64,
    sessions: Mutex<Sessions>,
    /// Randomly keyed per portal, so session ids cannot be predicted from one
    /// run to the next (not cryptographic, which a demo does not need).
    id_keys: RandomState,
    id_counter: AtomicU64,
    home: HomePage,
}

impl Shared {
    fn new(opts: PortalOptions, timings: Timings) -> Shared {
        Shared {
            capacity: opts.capacity,
            base_latency: opts.base_latency,
            timings,
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            overload_errors: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            excess_seen: AtomicU64::new(0),
            sessions: Mutex::new(Sessions::default()),
            id_keys: RandomState::new(),
            id_counter: AtomicU64::new(0),
            home: HomePage::new(),
        }
    }

    /// Simulates the page being computed; the cost grows with the load
    /// already on the portal, so the idle latency is exactly `base_latency`.
    async fn think(&self, level: usize, cost: f64) {
        let others = level.saturating_sub(1) as f64;
        let load = others / self.capacity.max(1) as f64;
        // Requests under capacity never exceed 4×, the clamp only guards
        // against arithmetic surprises.
        let factor = (1.0 + load).powi(2).min(4.0) * cost;
        let secs = self.base_latency.as_secs_f64() * factor;
        let delay = Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_THINK)
            .min(MAX_THINK);
        tokio::time::sleep(delay).await;
    }

    fn new_session_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        // Upper-case hex, 32 characters: what Tomcat hands out.
        format!(
            "{:016X}{:016X}",
            self.id_keys.hash_one((n, 0u8)),
            self.id_keys.hash_one((n, 1u8))
        )
    }

    fn open_session(&self) -> String {
        let id = self.new_session_id();
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open(id.clone());
        id
    }

    /// The first `JSESSIONID` cookie naming a session this portal opened;
    /// forged or forgotten ids count as no session at all.
    fn session_of(&self, headers: &HeaderMap) -> Option<String> {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| name.trim() == SESSION_COOKIE)
            .map(|(_, id)| id.trim())
            .find(|id| sessions.known.contains(*id))
            .map(str::to_owned)
    }
}

#[derive(Default)]
struct Sessions {
    known: HashSet<String>,
    order: VecDeque<String>,
}

impl Sessions {
    fn open(&mut self, id: String) {
        if self.order.len() >= MAX_SESSIONS
            && let Some(oldest) = self.order.pop_front()
        {
            self.known.remove(&oldest);
        }
        self.known.insert(id.clone());
        self.order.push_back(id);
    }
}

/// The home page never changes during a run, so its validators are computed
/// once and stay stable for revalidation.
struct HomePage {
    body: Bytes,
    etag: String,
    last_modified: HttpDate,
}

impl HomePage {
    fn new() -> HomePage {
        // A fixed-key hasher keeps the ETag identical across portal restarts,
        // as a real origin's would be for unchanged content.
        let mut hasher = DefaultHasher::new();
        HOME_HTML.hash(&mut hasher);
        HomePage {
            body: Bytes::from_static(HOME_HTML.as_bytes()),
            etag: format!("\"accueil-{:016x}\"", hasher.finish()),
            last_modified: HttpDate::from(SystemTime::now()),
        }
    }

    fn not_modified(&self, headers: &HeaderMap) -> bool {
        // RFC 9110 §13.2.2: If-Modified-Since is ignored when If-None-Match is present.
        if headers.contains_key(header::IF_NONE_MATCH) {
            return headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag);
        }
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<HttpDate>().ok())
            .is_some_and(|since| self.last_modified <= since)
    }

    fn respond(&self, headers: &HeaderMap) -> Response<Body> {
        let mut resp = if self.not_modified(headers) {
            let mut resp = Response::new(Body::default());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp
        } else {
            page(StatusCode::OK, HTML, self.body.clone())
        };
        let h = resp.headers_mut();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=30"),
        );
        set_header(h, header::ETAG, &self.etag);
        set_header(h, header::LAST_MODIFIED, &self.last_modified.to_string());
        resp
    }
}

/// In-flight accounting that survives clients hanging up: hyper drops the
/// service future, and with it this guard.
struct InFlight {
    shared: Arc<Shared>,
    level: usize,
}

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> InFlight {
        let level = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        shared.peak_in_flight.fetch_max(level, Ordering::Relaxed);
        InFlight {
            shared: Arc::clone(shared),
            level,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set so that aborting the accept task (on
    // `Portal` drop) tears every one of them down with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(stream, peer, Arc::clone(&shared)));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "demo portal failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reaps finished connections so the set does not grow for ever.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    // Only a latency hint: failing to set it changes nothing functionally.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        // Dropped connections are part of the act, not a portal failure.
        tracing::debug!(%peer, error = %err, "demo portal connection ended");
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Saturated> {
    if req.uri().path() == "/healthz" {
        return Ok(page(StatusCode::OK, TEXT, "ok\n"));
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let slot = InFlight::enter(&shared);
    if slot.level > shared.capacity {
        return overloaded(&shared).await;
    }
    Ok(route(&shared, req, slot.level).await)
}

/// Past capacity, a legacy servlet container either answers a late 503 or
/// keeps the socket until a timeout and closes it; clients see both.
async fn overloaded(shared: &Shared) -> Result<Response<Body>, Saturated> {
    shared.overload_errors.fetch_add(1, Ordering::Relaxed);
    let nth = shared.excess_seen.fetch_add(1, Ordering::Relaxed);
    if nth.is_multiple_of(2) {
        tokio::time::sleep(shared.timings.reject_after.min(MAX_THINK)).await;
        Ok(page(
            StatusCode::SERVICE_UNAVAILABLE,
            HTML,
            UNAVAILABLE_HTML,
        ))
    } else {
        tokio::time::sleep(shared.timings.drop_after.min(MAX_THINK)).await;
        Err(Saturated)
    }
}

async fn route(shared: &Shared, req: Request<Incoming>, level: usize) -> Response<Body> {
    let is_read = matches!(*req.method(), Method::GET | Method::HEAD);
    let path = req.uri().path().to_owned();
    if let Some((content_type, body)) = static_asset(&path) {
        // Deliberately no caching headers: that is the legacy behaviour digue
        // has to work around with a forced TTL.
        return if is_read {
            page(StatusCode::OK, content_type, body)
        } else {
            method_not_allowed("GET, HEAD")
        };
    }
    match path.as_str() {
        "/" | "/news" | "/pronote/eleve.html" | "/api/notes" if !is_read => {
            method_not_allowed("GET, HEAD")
        }
        "/" => {
            shared.think(level, 1.0).await;
            shared.home.respond(req.headers())
        }
        "/news" => {
            shared.think(level, 1.0).await;
            page(StatusCode::OK, HTML, NEWS_HTML)
        }
        "/pronote/eleve.html" => {
            shared.think(level, LOGIN_COST).await;
            login(shared)
        }
        "/api/notes" => match shared.session_of(req.headers()) {
            Some(session) => {
                shared.think(level, 1.0).await;
                notes(&session)
            }
            None => unauthorized(),
        },
        p if p.starts_with(APPEL_PREFIX) => {
            if req.method() != Method::POST {
                return method_not_allowed("POST");
            }
            appel_fonction(shared, req, level, &p[APPEL_PREFIX.len()..]).await
        }
        _ => page(StatusCode::NOT_FOUND, HTML, NOT_FOUND_HTML),
    }
}

fn login(shared: &Shared) -> Response<Body> {
    let session = shared.open_session();
    let short = short_id(&session);
    let mut resp = page(StatusCode::OK, HTML, login_html(short));
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set_header(
        h,
        header::SET_COOKIE,
        &format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly"),
    );
    resp
}

fn notes(session: &str) -> Response<Body> {
    // Grades derive from the session so that two students visibly differ.
    let mut hasher = DefaultHasher::new();
    session.hash(&mut hasher);
    let seed = hasher.finish();
    let notes: Vec<_> = SUBJECTS
        .iter()
        .enumerate()
        .map(|(i, subject)| {
            let half_points = (seed >> (i * 8)) % 41;
            json!({ "matiere": subject, "note": half_points as f64 / 2.0, "sur": 20 })
        })
        .collect();
    private_json(
        StatusCode::OK,
        &json!({
            "session": session,
            "eleve": short_id(session),
            "periode": "Trimestre 2",
            "notes": notes,
        }),
    )
}

async fn appel_fonction(
    shared: &Shared,
    req: Request<Incoming>,
    level: usize,
    fonction: &str,
) -> Response<Body> {
    let Some(session) = shared.session_of(req.headers()) else {
        return unauthorized();
    };
    let collected = tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await;
    let received = match collected {
        Ok(Ok(body)) => body.to_bytes().len(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
            return private_json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({ "erreur": "requête trop volumineuse", "code": 413 }),
            );
        }
        Ok(Err(_)) => {
            return private_json(
                StatusCode::BAD_REQUEST,
                &json!({ "erreur": "requête illisible", "code": 400 }),
            );
        }
        Err(_) => {
            return private_json(
                StatusCode::REQUEST_TIMEOUT,
                &json!({ "erreur": "délai de réception dépassé", "code": 408 }),
            );
        }
    };
    shared.think(level, 1.0).await;
    private_json(
        StatusCode::OK,
        &json!({ "session": session, "fonction": fonction, "octets_recus": received }),
    )
}

fn unauthorized() -> Response<Body> {
    private_json(
        StatusCode::UNAUTHORIZED,
        &json!({ "erreur": "session absente ou expirée, veuillez vous reconnecter", "code": 401 }),
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = page(StatusCode::METHOD_NOT_ALLOWED, HTML, NOT_ALLOWED_HTML);
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Per-user answers must never land in a shared cache, errors included.
fn private_json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = page(status, JSON, value.to_string());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    resp
}

fn page(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Every dynamic value the portal emits is ASCII it built itself, so a
/// rejected value is a bug worth a log line, not worth failing the request.
fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => tracing::warn!(%name, "demo portal built an invalid header value"),
    }
}

fn short_id(session: &str) -> &str {
    session.get(..6).unwrap_or(session)
}

fn static_asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/static/portail.css" => Some(("text/css; charset=utf-8", PORTAIL_CSS)),
        "/static/portail.js" => Some(("text/javascript; charset=utf-8", PORTAIL_JS)),
        "/static/logo.svg" => Some(("image/svg+xml", LOGO_SVG)),
        _ => None,
    }
}

fn login_html(short: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="fr">
<head>
<meta charset="utf-8">
<title>PRONOTE – Espace élèves</title>
<link rel="stylesheet" href="/static/portail.css">
</head>
<body>
<header><img src="/static/logo.svg" alt="Logo du collège" width="48" height="48"> Espace élèves</header>
<main>
<h1>Bonjour, élève n° {short}</h1>
<p>Votre session est ouverte.</p>
<p><a href="/api/notes">Consulter mes notes</a></p>
</main>
<script src="/static/portail.js" defer></script>
</body>
</html>
"#
    )
}

const HTML: &str = "text/html; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json; charset=utf-8";

const SUBJECTS: [&str; 5] = [
    "Mathématiques",
    "Français",
    "Histoire-Géographie",
    "Anglais",
    "Physique-Chimie",
];

const HOME_HTML: &str = r#"<!DOCTYPE html>
<html lang="fr">
<head>
<meta charset="utf-8">
<title>Collège Jean Moulin – Portail</title>
<link rel=stylesheet href=/static/portail.css>
</head>
<body>
<header><img src="/static/logo.svg" alt="Logo du collège" width="48" height="48"> Collège Jean Moulin</header>
<main>
<h1>Bienvenue sur le portail du collège</h1>
<p>Élèves et parents : retrouvez l'emploi du temps, le cahier de textes et les notes.</p>
<p><a class="bouton" href="/pronote/eleve.html">Se connecter à PRONOTE (espace élèves)</a></p>
<p><a href="/news">Actualités de l'établissement</a></p>
</main>
<footer>© Collège Jean Moulin – Académie de Lyon</footer>
<script src="/static/portail.js" defer></script>
</body>
</html>
"#;

const NEWS_HTML: &str = r#"<!DOCTYPE html>
<html lang="fr">
<head>
<meta charset="utf-8">
<title>Actualités – Collège Jean Moulin</title>
<link rel="stylesheet" href="/static/portail.css">
</head>
<body>
<main>
<h1>Actualités</h1>
<ul>
<li>Conseils de classe du deuxième trimestre : calendrier en ligne.</li>
<li>Sortie pédagogique des 4e au musée des Confluences le 14 mars.</li>
<li>Rappel : le portail est très sollicité à 8 h, merci de votre patience.</li>
</ul>
<p><a href="/">Retour à l'accueil</a></p>
</main>
</body>
</html>
"#;

const NOT_FOUND_HTML: &str = r#"<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><title>Page introuvable</title></head>
<body><h1>Erreur 404 – Page introuvable</h1><p>La page demandée n'existe pas ou a été déplacée. <a href="/">Retour à l'accueil</a></p></body>
</html>
"#;

const NOT_ALLOWED_HTML: &str = r#"<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><title>Méthode non autorisée</title></head>
<body><h1>Erreur 405 – Méthode non autorisée</h1><p>Cette adresse ne peut pas être utilisée ainsi.</p></body>
</html>
"#;

const UNAVAILABLE_HTML: &str = r#"<!DOCTYPE html>
<html lang="fr">
<head><meta charset="utf-8"><title>Service indisponible</title></head>
<body><h1>Erreur 503 – Service momentanément indisponible</h1><p>Le serveur est surchargé. Veuillez réessayer dans quelques minutes.</p></body>
</html>
"#;

const PORTAIL_CSS: &str = r#"/* Feuille de style du portail – version 2011, ne pas modifier */
html, body {
  margin: 0;
  padding: 0;
  font-family: Verdana, Arial, sans-serif;
  font-size: 14px;
  color: #222;
  background: #f3f5f9;
}
header {
  display: flex;
  align-items: center;
  gap: 12px;
  padding: 8px 16px;
  background: #1d4e89;
  color: #fff;
  font-size: 20px;
  font-weight: bold;
}
main {
  max-width: 760px;
  margin: 24px auto;
  padding: 16px 24px;
  background: #fff;
  border: 1px solid #c9d3e0;
  border-radius: 4px;
}
h1 {
  font-size: 22px;
  color: #1d4e89;
}
a {
  color: #1d4e89;
}
a.bouton {
  display: inline-block;
  padding: 8px 14px;
  background: #e86a10;
  color: #fff;
  text-decoration: none;
  border-radius: 3px;
}
a.bouton:hover {
  background: #c95a0c;
}
footer {
  text-align: center;
  color: #667;
  font-size: 12px;
  margin-bottom: 24px;
}
"#;

const PORTAIL_JS: &str = r#"/* Scripts du portail – compatibles Internet Explorer 8 */
(function () {
  "use strict";
  function horodatage() {
    var d = new Date();
    var jours = ["dimanche", "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi"];
    return jours[d.getDay()] + " " + d.toLocaleDateString("fr-FR");
  }
  function init() {
    var pied = document.getElementsByTagName("footer")[0];
    if (pied) {
      pied.appendChild(document.createTextNode(" – " + horodatage()));
    }
    var liens = document.querySelectorAll("a.bouton");
    for (var i = 0; i < liens.length; i++) {
      liens[i].addEventListener("click", function () {
        this.textContent = "Connexion en cours…";
      });
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
"#;

const LOGO_SVG: &str = r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48" viewBox="0 0 48 48">
  <title>Collège Jean Moulin</title>
  <rect x="2" y="2" width="44" height="44" rx="6" fill="#ffffff" stroke="#e86a10" stroke-width="3"/>
  <path d="M10 34 L24 12 L38 34 Z" fill="#1d4e89"/>
  <rect x="20" y="26" width="8" height="8" fill="#ffffff"/>
  <text x="24" y="44" font-family="Verdana" font-size="6" text-anchor="middle" fill="#1d4e89">JM</text>
</svg>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;

    type TestClient = Client<HttpConnector, Full<Bytes>>;

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn header(&self, name: HeaderName) -> &str {
            self.headers
                .get(&name)
                .unwrap_or_else(|| panic!("missing {name}"))
                .to_str()
                .expect("ASCII header")
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).expect("JSON body")
        }

        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).expect("UTF-8 body")
        }
    }

    async fn start(opts: PortalOptions) -> Portal {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Portal::spawn(listener, opts)
    }

    fn fast() -> PortalOptions {
        PortalOptions {
            capacity: 32,
            base_latency: Duration::from_millis(1),
        }
    }

    fn client() -> TestClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    fn request(portal: &Portal, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", portal.addr))
    }

    async fn send(client: &TestClient, req: http::request::Builder, body: &'static str) -> Answer {
        let resp = client
            .request(
                req.body(Full::new(Bytes::from_static(body.as_bytes())))
                    .expect("request"),
            )
            .await
            .expect("response");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(client: &TestClient, portal: &Portal, path: &str) -> Answer {
        send(client, request(portal, Method::GET, path), "").await
    }

    async fn login(client: &TestClient, portal: &Portal) -> String {
        let answer = get(client, portal, "/pronote/eleve.html").await;
        assert_eq!(answer.status, StatusCode::OK);
        let cookie = answer.header(header::SET_COOKIE);
        let (pair, attributes) = cookie.split_once(';').expect("cookie attributes");
        assert!(attributes.contains("Path=/"), "{cookie}");
        assert!(attributes.contains("HttpOnly"), "{cookie}");
        let id = pair.strip_prefix("JSESSIONID=").expect("JSESSIONID cookie");
        assert!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        id.to_owned()
    }

    #[tokio::test]
    async fn home_page_is_cacheable_and_revalidates() {
        let portal = start(fast()).await;
        let client = client();

        let home = get(&client, &portal, "/").await;
        assert_eq!(home.status, StatusCode::OK);
        assert_eq!(home.header(header::CACHE_CONTROL), "public, max-age=30");
        assert!(home.header(header::CONTENT_TYPE).starts_with("text/html"));
        httpdate::parse_http_date(home.header(header::LAST_MODIFIED)).expect("HTTP date");
        let etag = home.header(header::ETAG).to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
        assert!(home.text().contains("href=\"/pronote/eleve.html\""));
        assert!(
            home.text()
                .contains("<link rel=stylesheet href=/static/portail.css>")
        );

        for validator in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
            let req = request(&portal, Method::GET, "/").header(header::IF_NONE_MATCH, validator);
            let revalidated = send(&client, req, "").await;
            assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
            assert!(revalidated.body.is_empty());
            assert_eq!(revalidated.header(header::ETAG), etag);
            assert_eq!(
                revalidated.header(header::CACHE_CONTROL),
                "public, max-age=30"
            );
        }

        let req = request(&portal, Method::GET, "/").header(header::IF_NONE_MATCH, "\"périmé\"");
        assert_eq!(send(&client, req, "").await.status, StatusCode::OK);

        let req = request(&portal, Method::GET, "/").header(
            header::IF_MODIFIED_SINCE,
            home.header(header::LAST_MODIFIED),
        );
        assert_eq!(
            send(&client, req, "").await.status,
            StatusCode::NOT_MODIFIED
        );
    }

    #[tokio::test]
    async fn statics_and_news_carry_no_caching_headers() {
        let portal = start(fast()).await;
        let client = client();
        let cases = [
            ("/static/portail.css", "text/css"),
            ("/static/portail.js", "text/javascript"),
            ("/static/logo.svg", "image/svg+xml"),
            ("/news", "text/html"),
        ];
        for (path, content_type) in cases {
            let answer = get(&client, &portal, path).await;
            assert_eq!(answer.status, StatusCode::OK, "{path}");
            assert!(
                answer
                    .header(header::CONTENT_TYPE)
                    .starts_with(content_type),
                "{path}"
            );
            assert!(
                (200..8192).contains(&answer.body.len()),
                "{path}: {}",
                answer.body.len()
            );
            for name in [
                header::CACHE_CONTROL,
                header::EXPIRES,
                header::LAST_MODIFIED,
                header::ETAG,
            ] {
                assert!(!answer.headers.contains_key(&name), "{path} has {name}");
            }
        }
    }

    #[tokio::test]
    async fn login_opens_a_distinct_session_each_time() {
        let portal = start(fast()).await;
        let client = client();

        let answer = get(&client, &portal, "/pronote/eleve.html").await;
        assert_eq!(answer.header(header::CACHE_CONTROL), "no-store");
        let cookie = answer.header(header::SET_COOKIE);
        let id = cookie
            .strip_prefix("JSESSIONID=")
            .and_then(|rest| rest.split(';').next())
            .expect("session id");
        assert!(answer.text().contains(&format!("élève n° {}", &id[..6])));
        assert!(answer.text().contains("href=\"/api/notes\""));

        let first = login(&client, &portal).await;
        let second = login(&client, &portal).await;
        assert_ne!(first, second);
    }

    #[tokio::test]
    async fn per_user_api_requires_a_session_and_echoes_it() {
        let portal = start(fast()).await;
        let client = client();

        let anonymous = get(&client, &portal, "/api/notes").await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        assert_eq!(anonymous.json()["code"], 401);
        assert_eq!(anonymous.header(header::CACHE_CONTROL), "private, no-store");

        let forged = request(&portal, Method::GET, "/api/notes")
            .header(header::COOKIE, "JSESSIONID=DEADBEEF");
        assert_eq!(
            send(&client, forged, "").await.status,
            StatusCode::UNAUTHORIZED
        );

        let alice = login(&client, &portal).await;
        let bob = login(&client, &portal).await;
        for session in [&alice, &bob] {
            let req = request(&portal, Method::GET, "/api/notes").header(
                header::COOKIE,
                format!("theme=sombre; JSESSIONID={session}"),
            );
            let notes = send(&client, req, "").await;
            assert_eq!(notes.status, StatusCode::OK);
            assert_eq!(notes.header(header::CACHE_CONTROL), "private, no-store");
            assert!(
                notes
                    .header(header::CONTENT_TYPE)
                    .starts_with("application/json")
            );
            assert_eq!(notes.json()["session"], session.as_str());
            assert_eq!(notes.json()["notes"].as_array().map(Vec::len), Some(5));

            let req = request(&portal, Method::POST, "/pronote/appelfonction/3/123")
                .header(header::COOKIE, format!("JSESSIONID={session}"));
            let call = send(&client, req, "{\"nom\":1}").await;
            assert_eq!(call.status, StatusCode::OK);
            assert_eq!(call.header(header::CACHE_CONTROL), "private, no-store");
            assert_eq!(call.json()["session"], session.as_str());
            assert_eq!(call.json()["octets_recus"], 9);
            assert_eq!(call.json()["fonction"], "3/123");
        }

        let req = request(&portal, Method::POST, "/pronote/appelfonction/3/123");
        assert_eq!(
            send(&client, req, "{}").await.status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn unknown_paths_health_and_counters() {
        let portal = start(fast()).await;
        let client = client();

        let missing = get(&client, &portal, "/inexistant").await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert!(missing.text().contains("Page introuvable"));

        let wrong_method = send(&client, request(&portal, Method::POST, "/news"), "").await;
        assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(wrong_method.header(header::ALLOW), "GET, HEAD");

        let before = portal.requests();
        let health = get(&client, &portal, "/healthz").await;
        assert_eq!(health.status, StatusCode::OK);
        assert_eq!(health.text(), "ok\n");
        assert_eq!(portal.requests(), before, "health checks are not load");

        assert_eq!(portal.requests(), 2);
        assert_eq!(portal.in_flight(), 0);
        assert_eq!(portal.peak_in_flight(), 1);
        assert_eq!(portal.overload_errors(), 0);
    }

    #[tokio::test]
    async fn over_capacity_degrades_into_503s() {
        let portal = start(PortalOptions {
            capacity: 2,
            base_latency: Duration::from_millis(200),
        })
        .await;
        let client = client();

        let mut pending = JoinSet::new();
        for _ in 0..10 {
            let client = client.clone();
            let req = request(&portal, Method::GET, "/news")
                .body(Full::default())
                .expect("request");
            pending.spawn(async move { client.request(req).await.map(|resp| resp.status()) });
        }
        // Long enough for the served and 503 requests, too short for the
        // dropped ones, which would cost 5 s each.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
        let mut statuses = Vec::new();
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, pending.join_next()).await {
            statuses.push(joined.expect("request task").expect("answered"));
        }

        let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let unavailable = statuses
            .iter()
            .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
            .count();
        assert!(ok >= 1, "{statuses:?}");
        assert!(unavailable >= 1, "{statuses:?}");
        assert_eq!(ok + unavailable, statuses.len(), "{statuses:?}");
        assert!(!pending.is_empty(), "the other half is still hanging");
        assert!(
            portal.peak_in_flight() > 2,
            "peak {}",
            portal.peak_in_flight()
        );
        assert!(portal.overload_errors() > 0);
        assert_eq!(portal.requests(), 10);
    }

    #[tokio::test]
    async fn half_of_the_excess_is_dropped_without_a_response() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let portal = Portal::spawn_with(
            listener,
            PortalOptions {
                capacity: 1,
                base_latency: Duration::from_millis(300),
            },
            Timings {
                reject_after: Duration::from_millis(50),
                drop_after: Duration::from_millis(100),
            },
        );
        let client = client();

        let mut pending = JoinSet::new();
        for _ in 0..3 {
            let client = client.clone();
            let req = request(&portal, Method::GET, "/news")
                .body(Full::default())
                .expect("request");
            pending.spawn(async move { client.request(req).await.map(|resp| resp.status()) });
        }
        let mut ok = 0;
        let mut unavailable = 0;
        let mut dropped = 0;
        while let Some(joined) = pending.join_next().await {
            match joined.expect("request task") {
                Ok(StatusCode::OK) => ok += 1,
                Ok(StatusCode::SERVICE_UNAVAILABLE) => unavailable += 1,
                Ok(other) => panic!("unexpected {other}"),
                Err(_) => dropped += 1,
            }
        }
        assert_eq!((ok, unavailable, dropped), (1, 1, 1));
        assert_eq!(portal.overload_errors(), 2);
        assert_eq!(portal.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_vanished_client_frees_its_slot() {
        use tokio::io::AsyncWriteExt;

        let portal = start(PortalOptions {
            capacity: 4,
            base_latency: Duration::from_secs(2),
        })
        .await;
        let mut stream = TcpStream::connect(portal.addr).await.expect("connect");
        stream
            .write_all(b"GET /pronote/eleve.html HTTP/1.1\r\nHost: portail\r\n\r\n")
            .await
            .expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while portal.in_flight() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "request never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(stream);

        // The login would take 6 s; the slot must come back long before that.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while portal.in_flight() != 0 {
            assert!(tokio::time::Instant::now() < deadline, "slot still held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn dropping_the_portal_stops_it() {
        let portal = start(fast()).await;
        let addr = portal.addr;
        assert_eq!(
            get(&client(), &portal, "/healthz").await.status,
            StatusCode::OK
        );
        drop(portal);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            if TcpStream::connect(addr).await.is_err() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "still accepting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
