//! The operator's console: `GET /` on the admin listener serves one
//! self-contained page (HTML, CSS and script inline, no third-party byte,
//! French first, English by `Accept-Language`); the page asks for the
//! admin token, keeps it in `sessionStorage` only, and polls
//! `GET /admin/console` every 2 s with it as a bearer token. No cookie is
//! ever read, so a forged request from another site carries no
//! authority (CSRF-safe by construction); the page carries no figure
//! until the token is given.
//!
//! - [`history`]: the last 30 minutes of each site, sampled in memory.
//! - this file: the page, the poll's JSON, the sampling loop.

pub mod history;

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use crate::App;
use crate::body::ProxyBody;
use crate::pages::Pages;
use history::{History, SAMPLE_EVERY, SPAN};

const PAGE_HTML: &str = include_str!("console.html");

/// The page's own policy: nothing from elsewhere, no framing (a page of
/// buttons that close a portal must not be clicked through a frame), calls
/// only to this listener.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the page, in the client's language (French unless English is
/// preferred); the same bytes for everyone otherwise, with no figure in it.
pub fn page(pages: &Pages, headers: &HeaderMap) -> Response<ProxyBody> {
    let lang = match pages.lang_code(headers) {
        "en" => "en",
        _ => "fr",
    };
    let html = PAGE_HTML.replace("{{lang}}", lang);
    let mut res = Response::new(ProxyBody::full(html));
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::VARY, "Accept-Language"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    *res.status_mut() = StatusCode::OK;
    res
}

/// `GET /admin/console?since=MS`: each site's live state (`state`: what
/// `GET /admin/sites` shows of it) with its samples taken after `since`
/// (Unix ms; 0 for the whole 30 minutes). Every site is sampled at the
/// same `t`, under one lock, so the newest `t` received is the page's
/// next `since`: no sample is skipped or sent twice. A poll copies a few hundred
/// bytes per site once the page holds the history: nothing measurable.
pub fn poll(app: &App, since: u64, state: impl Fn(&str) -> Option<Value>) -> Value {
    let snapshot = app.snapshot();
    let sites: Vec<Value> = snapshot
        .sites
        .iter()
        .map(|site| {
            let name = &site.config.name;
            let backends = site.config.origin.backends.len();
            json!({
                "name": name,
                "backends": backends,
                "client_limit": site.client_limit.as_ref().map(|l| json!({
                    "requests_per_minute": l.config.requests_per_minute,
                    "burst": l.config.burst,
                    "tracked": l.tracked(),
                })),
                "state": state(name),
                "history": app.history.since(name, since),
            })
        })
        .collect();
    json!({
        "now": app.clock.now().unix_millis(),
        "sample_every_seconds": SAMPLE_EVERY.as_secs(),
        "span_seconds": SPAN.as_secs(),
        "sites": sites,
    })
}

/// `since` from a query string (`since=1733300000000`); 0 when absent or
/// unreadable.
pub fn since(query: Option<&str>) -> u64 {
    query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "since")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Takes one sample of every site now.
pub fn sample(app: &App) {
    let now = app.clock.now();
    app.history
        .record(&app.snapshot().sites, now.instant, now.unix_millis());
}

/// Samples every site every [`SAMPLE_EVERY`] while it lives: the admin
/// listener holds it and drops it with itself.
#[must_use]
pub struct Recorder(tokio::task::JoinHandle<()>);

impl Recorder {
    pub fn start(app: Arc<App>) -> Recorder {
        let app = Arc::downgrade(&app);
        Recorder(tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(app) = app.upgrade() else { return };
                sample(&app);
            }
        }))
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The history a new app starts with.
pub fn history() -> History {
    History::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_the_query_or_takes_everything() {
        assert_eq!(since(Some("since=1733300000000")), 1_733_300_000_000);
        assert_eq!(since(Some("a=1&since=42")), 42);
        assert_eq!(since(Some("since=-1")), 0);
        assert_eq!(since(None), 0);
    }

    #[test]
    fn the_page_is_french_first_self_contained_and_carries_no_figure() {
        let pages = Pages::default();
        let res = page(&pages, &HeaderMap::new());
        let ProxyBody::Full(Some(body)) = res.body() else {
            panic!("a page in memory")
        };
        let html = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(html.contains("<html lang=\"fr\""), "French first");
        let fetched = html.replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !fetched.contains("http://") && !fetched.contains("https://"),
            "no third-party byte (the SVG namespace is a name, never fetched)"
        );
        assert!(
            html.contains("sessionStorage"),
            "the token stays in the tab"
        );
        assert!(!html.contains("localStorage") && !html.contains("document.cookie"));
        assert!(body.len() < 64 * 1024, "{} bytes", body.len());
        let mut en = HeaderMap::new();
        en.insert(
            header::ACCEPT_LANGUAGE,
            HeaderValue::from_static("en-GB,en;q=0.9"),
        );
        let res = page(&pages, &en);
        let ProxyBody::Full(Some(body)) = res.body() else {
            panic!("a page in memory")
        };
        assert!(String::from_utf8_lossy(body).contains("<html lang=\"en\""));
    }
}
