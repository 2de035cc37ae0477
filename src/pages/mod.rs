//! Pages digue answers itself: the waiting room, the busy page and error
//! pages. French by default, other languages by `Accept-Language`, JSON when
//! the client prefers `application/json`.
//!
//! Texts live in one TOML file per language (`lang/fr.toml`): adding a
//! language is adding a file. Templates and languages are compiled in and
//! can be overridden or extended from `server.pages_dir`. Every page is
//! self-contained (no third-party asset: invariant 6), `Cache-Control:
//! no-store`, and every 503 carries a `Retry-After` with jitter so that
//! retries do not come back as one wave.

use std::path::Path;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use minijinja::{Environment, context};

use crate::body::ProxyBody;

/// Extra seconds of Retry-After, spread uniformly, so that a wave of busy
/// pages does not turn into a synchronised wave of retries.
const RETRY_JITTER_SECS: u64 = 5;

/// The built-in languages; the first is the default.
const BUILT_IN_LANGS: [(&str, &str); 2] = [
    ("fr", include_str!("lang/fr.toml")),
    ("en", include_str!("lang/en.toml")),
];
const NOTICE_HTML: &str = include_str!("notice.html");
const WAITING_HTML: &str = include_str!("waiting.html");

/// The pages digue can answer with, besides the waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The origin is saturated and nothing stale can stand in: 503.
    Busy,
    /// The origin could not be reached or broke the connection: 502.
    OriginDown,
    /// The origin did not answer in time: 504.
    OriginTimeout,
    /// No site answers this Host: 421.
    UnknownHost,
    /// The request could not be understood: 400.
    BadRequest,
    /// An `Upgrade` to a protocol the site does not tunnel (only
    /// `websocket` and its `allow_upgrades`): 400, the client's request
    /// being what cannot be served, not a failure of digue's.
    UpgradeRefused,
    /// One client sent more origin-bound requests than its budget
    /// (`[site.client_limit]`): 429, with the wait its budget needs.
    TooFast,
}

impl Page {
    pub fn status(self) -> StatusCode {
        match self {
            Page::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Page::OriginDown => StatusCode::BAD_GATEWAY,
            Page::OriginTimeout => StatusCode::GATEWAY_TIMEOUT,
            Page::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            Page::BadRequest | Page::UpgradeRefused => StatusCode::BAD_REQUEST,
            Page::TooFast => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `state` of the JSON variant, and the section of the texts.
    fn key(self) -> &'static str {
        match self {
            Page::Busy => "busy",
            Page::OriginDown | Page::OriginTimeout => "unavailable",
            Page::UnknownHost => "unknown_host",
            Page::BadRequest => "bad_request",
            Page::UpgradeRefused => "upgrade_refused",
            Page::TooFast => "too_fast",
        }
    }

    /// Seconds before a retry makes sense, if one does.
    fn retry_base(self) -> Option<u64> {
        match self {
            Page::Busy => Some(5),
            Page::OriginDown | Page::OriginTimeout => Some(10),
            // Known exactly: see `too_fast`.
            Page::UnknownHost | Page::BadRequest | Page::UpgradeRefused | Page::TooFast => None,
        }
    }
}

/// What the waiting room shows one visitor.
#[derive(Debug, Clone)]
pub struct WaitView<'a> {
    pub closed: bool,
    /// Tickets ahead of this visitor.
    pub ahead: u64,
    pub eta: Duration,
    /// How far the admission rate moved lately (max / min, 1 when it holds):
    /// the ETA's range widens by it, so the page does not promise what the
    /// autopilot just took back.
    pub drift: f64,
    pub retry_after: u64,
    /// The ETA rests on stale information (cluster store unreachable).
    pub approximate: bool,
    pub portal: &'a str,
    pub message: Option<&'a str>,
    /// The URL asked for: the no-JavaScript "check my place" link.
    pub target: &'a str,
}

/// What the pre-queue page of an event shows one visitor.
#[derive(Debug, Clone)]
pub struct PreQueueView<'a> {
    /// The opening's hour and minute, local to the event's offset.
    pub local_time: (u64, u64),
    /// The opening as the operator wrote it (RFC 3339).
    pub opens_at: &'a str,
    pub opens_in: u64,
    pub retry_after: u64,
    pub approximate: bool,
    pub portal: &'a str,
    pub message: Option<&'a str>,
    /// The URL asked for: the no-JavaScript "check" link.
    pub target: &'a str,
}

/// One language's texts.
struct Catalog {
    code: String,
    texts: toml::Table,
}

/// Templates and texts, loaded once at start.
pub struct Pages {
    env: Environment<'static>,
    /// The default language first.
    langs: Vec<Catalog>,
}

impl Default for Pages {
    fn default() -> Self {
        Pages::new(None).expect("invariant: the built-in pages are valid")
    }
}

/// `server.pages_dir`'s problem, if any, with its key path.
pub fn preflight(dir: Option<&Path>) -> Vec<crate::config::ConfigError> {
    match dir {
        Some(dir) if !dir.is_dir() => vec![crate::config::ConfigError {
            path: "server.pages_dir".to_owned(),
            message: format!("{} is not a directory", dir.display()),
        }],
        _ => Vec::new(),
    }
}

impl Pages {
    /// The built-in pages, with `dir` (if any) overriding `notice.html`,
    /// `waiting.html` and adding or replacing `lang/*.toml`.
    pub fn new(dir: Option<&Path>) -> Result<Pages, String> {
        let mut langs = Vec::new();
        for (code, text) in BUILT_IN_LANGS {
            langs.push(Catalog {
                code: code.to_owned(),
                texts: text.parse().map_err(|e| format!("lang/{code}.toml: {e}"))?,
            });
        }
        let mut env = Environment::new();
        let mut notice = NOTICE_HTML.to_owned();
        let mut waiting = WAITING_HTML.to_owned();
        if let Some(dir) = dir {
            let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
            notice = read("notice.html").unwrap_or(notice);
            waiting = read("waiting.html").unwrap_or(waiting);
            let extra = std::fs::read_dir(dir.join("lang"))
                .into_iter()
                .flatten()
                .flatten();
            for entry in extra {
                let path = entry.path();
                let Some(code) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".toml"))
                else {
                    continue;
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let texts = text
                    .parse()
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                match langs.iter_mut().find(|c| c.code == code) {
                    Some(c) => c.texts = texts,
                    None => langs.push(Catalog {
                        code: code.to_owned(),
                        texts,
                    }),
                }
            }
        }
        env.add_template_owned("notice.html", notice)
            .map_err(|e| format!("notice.html: {e}"))?;
        env.add_template_owned("waiting.html", waiting)
            .map_err(|e| format!("waiting.html: {e}"))?;
        Ok(Pages { env, langs })
    }

    /// The language to answer in: the client's preferred one we have.
    fn lang(&self, headers: &HeaderMap) -> &Catalog {
        let accept = header_str(headers, header::ACCEPT_LANGUAGE);
        let mut best: (usize, f32) = (0, 0.0);
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            if let Some(i) = self.langs.iter().position(|c| c.code == primary)
                && q > best.1
            {
                best = (i, q);
            }
        }
        &self.langs[best.0]
    }

    /// The code (`fr`, `en`...) of the language to answer `headers` in.
    pub fn lang_code(&self, headers: &HeaderMap) -> &str {
        &self.lang(headers).code
    }

    /// One text, falling back on the default language, then on the key.
    fn text(&self, lang: &Catalog, section: &str, key: &str) -> String {
        let lookup = |c: &Catalog| {
            c.texts
                .get(section)
                .and_then(|s| s.get(key))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        lookup(lang)
            .or_else(|| lookup(&self.langs[0]))
            .unwrap_or_else(|| format!("{section}.{key}"))
    }

    /// Renders `page` for the client that sent `headers`.
    pub fn render(&self, page: Page, headers: &HeaderMap) -> Response<ProxyBody> {
        let retry_after = page
            .retry_base()
            .map(|base| base + jitter(RETRY_JITTER_SECS));
        self.notice(page, headers, retry_after)
    }

    /// The client's budget of origin-bound requests is spent: `429`, and
    /// `Retry-After` when it has room again (no jitter: each client's own
    /// budget sets it, so retries do not come back together).
    pub fn too_fast(&self, headers: &HeaderMap, retry_after: u64) -> Response<ProxyBody> {
        self.notice(Page::TooFast, headers, Some(retry_after))
    }

    fn notice(
        &self,
        page: Page,
        headers: &HeaderMap,
        retry_after: Option<u64>,
    ) -> Response<ProxyBody> {
        let lang = self.lang(headers);
        let title = self.text(lang, page.key(), "title");
        let message = self.text(lang, page.key(), "message");
        if wants_json(headers) {
            let json = serde_json::json!({
                "state": page.key(),
                "status": page.status().as_u16(),
                "retry_after": retry_after,
                "message": message,
            });
            return respond(page.status(), json.to_string(), true, retry_after);
        }
        let retry_hint = retry_after.map(|s| {
            self.text(lang, "retry", "hint")
                .replace("{secs}", &s.to_string())
        });
        let html = self
            .env
            .get_template("notice.html")
            .and_then(|t| {
                t.render(context! {
                    lang => lang.code, title, message, retry_after, retry_hint,
                })
            })
            .unwrap_or_else(|_| title.clone());
        respond(page.status(), html, false, retry_after)
    }

    /// The waiting room: `503` with `Retry-After`, HTML or JSON.
    pub fn waiting(&self, view: &WaitView<'_>, headers: &HeaderMap) -> Response<ProxyBody> {
        let lang = self.lang(headers);
        let t = |section: &str, key: &str| {
            self.text(lang, section, key)
                .replace("{portal}", view.portal)
        };
        let position_text = match view.ahead {
            0 => t("waiting", "ahead_zero"),
            1 => t("waiting", "ahead_one"),
            n => t("waiting", "ahead_many").replace("{n}", &n.to_string()),
        };
        let (lo, hi) = eta_range(view.eta, view.drift);
        let mut eta_text = if hi < 60 {
            t("waiting", "eta_soon")
        } else if lo >= 3600 {
            t("waiting", "eta_long")
        } else {
            let lo_min = (lo / 60).max(1);
            t("waiting", "eta_range")
                .replace("{lo}", &lo_min.to_string())
                .replace("{hi}", &hi.div_ceil(60).max(lo_min + 1).to_string())
        };
        if view.approximate {
            eta_text = format!("{eta_text} {}", t("waiting", "approximate"));
        }
        let state = if view.closed { "closed" } else { "queued" };
        if wants_json(headers) {
            let json = serde_json::json!({
                "state": state,
                "position": view.ahead,
                "eta_seconds": view.eta.as_secs(),
                "eta_range_seconds": [lo, hi],
                "retry_after": view.retry_after,
                "position_text": position_text,
                "eta_text": eta_text,
                "approximate": view.approximate,
            });
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                json.to_string(),
                true,
                Some(view.retry_after),
            );
        }
        let section = if view.closed { "closed" } else { "waiting" };
        let texts = context! {
            title => t(section, "title"),
            heading => t(section, "heading"),
            intro => t("waiting", "intro"),
            kept => t("waiting", "kept"),
            no_refresh => t("waiting", "no_refresh"),
            check => t("waiting", "check"),
            pause => t("waiting", "pause"),
            closed_message => t("closed", "message"),
        };
        let script_texts = context! {
            pause => t("waiting", "pause"),
            paused => t("waiting", "paused"),
            updated => t("waiting", "updated"),
            admitted => t("waiting", "admitted"),
        };
        let html = self
            .env
            .get_template("waiting.html")
            .and_then(|tpl| {
                tpl.render(context! {
                    lang => lang.code, t => texts, state, position_text, eta_text,
                    retry_after => view.retry_after, message => view.message,
                    target => view.target, script_texts,
                })
            })
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "waiting page template failed");
                position_text.clone()
            });
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            html,
            false,
            Some(view.retry_after),
        )
    }
}

impl Pages {
    /// An event's pre-queue: `503` with `Retry-After`, the opening time and
    /// a countdown, no position; HTML or JSON (`state: "prequeue"`).
    pub fn prequeue(&self, view: &PreQueueView<'_>, headers: &HeaderMap) -> Response<ProxyBody> {
        let lang = self.lang(headers);
        let (h, mm) = view.local_time;
        let time = self
            .text(lang, "prequeue", "time")
            .replace("{h}", &h.to_string())
            .replace("{mm}", &format!("{mm:02}"));
        let t = |key: &str| {
            self.text(lang, "prequeue", key)
                .replace("{portal}", view.portal)
                .replace("{time}", &time)
        };
        let left = |secs: u64| {
            let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
            let pattern = match (h, m) {
                (0, 0) => t("left_s"),
                (0, _) => t("left_ms"),
                _ => t("left_hms"),
            };
            pattern
                .replace("{h}", &h.to_string())
                .replace("{m}", &m.to_string())
                .replace("{s}", &s.to_string())
        };
        let countdown_text = if view.opens_in == 0 {
            t("opening")
        } else {
            t("countdown").replace("{left}", &left(view.opens_in))
        };
        let heading = t("heading");
        if wants_json(headers) {
            let json = serde_json::json!({
                "state": "prequeue",
                "opens_at": view.opens_at,
                "opens_in_seconds": view.opens_in,
                "retry_after": view.retry_after,
                "heading": heading,
                "countdown_text": countdown_text,
                "approximate": view.approximate,
            });
            return respond(
                StatusCode::SERVICE_UNAVAILABLE,
                json.to_string(),
                true,
                Some(view.retry_after),
            );
        }
        let texts = context! {
            title => t("title"),
            heading,
            intro => t("fair"),
            kept => t("kept"),
            no_refresh => t("no_refresh"),
            check => t("check"),
            pause => self.text(lang, "waiting", "pause"),
        };
        let script_texts = context! {
            pause => self.text(lang, "waiting", "pause"),
            paused => self.text(lang, "waiting", "paused"),
            updated => self.text(lang, "waiting", "updated"),
            admitted => self.text(lang, "waiting", "admitted"),
            countdown => t("countdown"),
            opening => t("opening"),
            left_hms => t("left_hms"),
            left_ms => t("left_ms"),
            left_s => t("left_s"),
        };
        let html = self
            .env
            .get_template("waiting.html")
            .and_then(|tpl| {
                tpl.render(context! {
                    lang => lang.code, t => texts, state => "prequeue", countdown_text,
                    opens_in => view.opens_in,
                    retry_after => view.retry_after, message => view.message,
                    target => view.target, script_texts,
                })
            })
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "pre-queue page template failed");
                countdown_text.clone()
            });
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            html,
            false,
            Some(view.retry_after),
        )
    }
}

/// The turn of a JSON client has come: it has its pass cookie, and its next
/// request goes through.
pub fn admitted_json() -> Response<ProxyBody> {
    respond(
        StatusCode::OK,
        r#"{"state":"admitted","retry_after":0}"#.to_owned(),
        true,
        None,
    )
}

/// The range shown for an ETA, in seconds: the rate moves, so a point
/// estimate would promise too much; by `drift` more when it just moved.
fn eta_range(eta: Duration, drift: f64) -> (u64, u64) {
    let secs = eta.as_secs_f64();
    // At most 10×: a wild drift must not turn the range into nonsense.
    let drift = if drift.is_finite() {
        drift.clamp(1.0, 10.0)
    } else {
        1.0
    };
    (
        (secs * 0.8 / drift) as u64,
        ((secs * 1.3 + 10.0) * drift) as u64,
    )
}

fn respond(
    status: StatusCode,
    body: String,
    json: bool,
    retry_after: Option<u64>,
) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    let content_type = if json {
        "application/json"
    } else {
        "text/html; charset=utf-8"
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Language"),
    );
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    res
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// JSON when `application/json` comes before any HTML type in `Accept`
/// (compared case-insensitively, parameters ignored).
pub fn wants_json(headers: &HeaderMap) -> bool {
    let accept = header_str(headers, header::ACCEPT).to_ascii_lowercase();
    match (accept.find("application/json"), accept.find("text/html")) {
        (Some(json), Some(html)) => json < html,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// A value in `0..spread`, different from call to call; not for security.
pub fn jitter(spread: u64) -> u64 {
    crate::clock::entropy() % spread.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn french_is_the_default_and_english_is_chosen_by_preference() {
        let p = Pages::default();
        let code = |al: &'static str| p.lang(&headers(&[("accept-language", al)])).code.clone();
        assert_eq!(p.lang(&HeaderMap::new()).code, "fr");
        assert_eq!(code("de-DE,de;q=0.9"), "fr");
        assert_eq!(code("en-GB,en;q=0.9,fr;q=0.5"), "en");
        assert_eq!(code("fr-FR,fr;q=0.9,en;q=0.8"), "fr");
    }

    #[test]
    fn every_language_has_every_text_of_the_default() {
        let p = Pages::default();
        let default = &p.langs[0].texts;
        for lang in &p.langs[1..] {
            for (section, keys) in default {
                let Some(keys) = keys.as_table() else {
                    continue;
                };
                for key in keys.keys() {
                    assert!(
                        lang.texts.get(section).and_then(|s| s.get(key)).is_some(),
                        "{}.toml lacks {section}.{key}",
                        lang.code
                    );
                }
            }
        }
    }

    #[test]
    fn json_only_when_preferred_over_html() {
        assert!(wants_json(&headers(&[("accept", "application/json")])));
        assert!(wants_json(&headers(&[(
            "accept",
            "Application/JSON; q=0.9, */*"
        )])));
        assert!(!wants_json(&headers(&[(
            "accept",
            "text/html,application/xhtml+xml,*/*;q=0.8"
        )])));
        assert!(!wants_json(&headers(&[("accept", "*/*")])));
    }

    #[test]
    fn busy_page_is_no_store_with_retry_after_and_valid_json() {
        let res = Pages::default().render(Page::Busy, &headers(&[("accept", "application/json")]));
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let retry: u64 = res.headers()[header::RETRY_AFTER]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((5..5 + RETRY_JITTER_SECS).contains(&retry), "{retry}");
    }

    #[test]
    fn the_eta_range_widens_by_the_rate_s_recent_drift_within_reason() {
        let eta = Duration::from_secs(600);
        assert_eq!(eta_range(eta, 1.0), (480, 790));
        assert_eq!(eta_range(eta, 1.5), (320, 1185), "a rate cut by a third");
        for odd in [0.0, 0.5, -3.0, f64::NAN, f64::INFINITY] {
            assert_eq!(eta_range(eta, odd), (480, 790), "drift {odd}");
        }
        assert_eq!(eta_range(eta, 1e9), (48, 7900), "at most 10×");
    }

    #[test]
    fn the_waiting_page_is_small_and_needs_no_third_party_asset() {
        let view = WaitView {
            closed: false,
            ahead: 12,
            eta: Duration::from_secs(150),
            drift: 1.0,
            retry_after: 10,
            approximate: false,
            portal: "Pronote",
            message: Some("Les devoirs sont aussi sur l'ENT."),
            target: "/pronote/eleve.html",
        };
        let res = Pages::default().waiting(&view, &HeaderMap::new());
        let ProxyBody::Full(Some(body)) = res.into_body() else {
            panic!("a page in memory")
        };
        let html = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(body.len() < 30 * 1024, "{} bytes", body.len());
        assert!(html.contains("12 personnes devant vous"), "{html}");
        assert!(html.contains("entre 2 et 4 minutes"), "{html}");
        assert!(
            !html.contains("http-equiv=\"refresh\""),
            "no timed refresh (WCAG F40)"
        );
        assert!(!html.contains("https://"), "no third-party asset");
        assert!(html.contains("aria-live=\"polite\""));
    }
}
