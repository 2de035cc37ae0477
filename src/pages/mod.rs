//! Pages digue answers itself: the busy page and error pages, in French by
//! default (English by `Accept-Language`), or JSON when the client asks for it.
//!
//! Every page is self-contained (no third-party asset: invariant 6), marked
//! `Cache-Control: no-store`, and every 5xx carries a `Retry-After` with
//! jitter so that retries do not come back as one wave.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use minijinja::{Environment, context};

use crate::body::ProxyBody;

/// Extra seconds of Retry-After, spread uniformly, so that a wave of busy
/// pages does not turn into a synchronised wave of retries.
const RETRY_JITTER_SECS: u64 = 5;

/// The language of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Fr,
    En,
}

/// What the client said it can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefs {
    pub lang: Lang,
    pub json: bool,
}

impl Prefs {
    pub fn of(headers: &HeaderMap) -> Prefs {
        let get = |name| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        Prefs {
            lang: preferred_lang(get(header::ACCEPT_LANGUAGE)),
            json: wants_json(get(header::ACCEPT)),
        }
    }
}

/// French unless English is asked for before French.
fn preferred_lang(accept_language: &str) -> Lang {
    let mut best = (Lang::Fr, 0.0_f32);
    for item in accept_language.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let lang = if tag == "fr" || tag.starts_with("fr-") {
            Lang::Fr
        } else if tag == "en" || tag.starts_with("en-") {
            Lang::En
        } else {
            continue;
        };
        if q > best.1 {
            best = (lang, q);
        }
    }
    best.0
}

/// JSON when `application/json` comes before any HTML type.
fn wants_json(accept: &str) -> bool {
    match (accept.find("application/json"), accept.find("text/html")) {
        (Some(json), Some(html)) => json < html,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The pages digue can answer with.
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
}

impl Page {
    pub fn status(self) -> StatusCode {
        match self {
            Page::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Page::OriginDown => StatusCode::BAD_GATEWAY,
            Page::OriginTimeout => StatusCode::GATEWAY_TIMEOUT,
            Page::UnknownHost => StatusCode::MISDIRECTED_REQUEST,
            Page::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    fn state(self) -> &'static str {
        match self {
            Page::Busy => "busy",
            Page::OriginDown | Page::OriginTimeout => "unavailable",
            Page::UnknownHost => "unknown_host",
            Page::BadRequest => "bad_request",
        }
    }

    /// Seconds before a retry makes sense, if one does.
    fn retry_base(self) -> Option<u64> {
        match self {
            Page::Busy => Some(5),
            Page::OriginDown | Page::OriginTimeout => Some(10),
            Page::UnknownHost | Page::BadRequest => None,
        }
    }

    fn texts(self, lang: Lang) -> (&'static str, &'static str) {
        match (self, lang) {
            (Page::Busy, Lang::Fr) => (
                "Le portail est très demandé",
                "Beaucoup de monde se connecte en ce moment. Votre demande n'est pas perdue : \
                 cette page se rechargera toute seule dans quelques secondes.",
            ),
            (Page::Busy, Lang::En) => (
                "The portal is very busy",
                "Many people are connecting right now. Your request is not lost: this page \
                 will reload by itself in a few seconds.",
            ),
            (Page::OriginDown | Page::OriginTimeout, Lang::Fr) => (
                "Le portail ne répond pas pour le moment",
                "Le service est momentanément indisponible. Cette page se rechargera toute \
                 seule ; inutile de la recharger vous-même.",
            ),
            (Page::OriginDown | Page::OriginTimeout, Lang::En) => (
                "The portal is not answering right now",
                "The service is temporarily unavailable. This page will reload by itself; \
                 there is no need to reload it yourself.",
            ),
            (Page::UnknownHost, Lang::Fr) => (
                "Site inconnu",
                "Ce serveur ne sert pas l'adresse demandée. Vérifiez l'adresse du site.",
            ),
            (Page::UnknownHost, Lang::En) => (
                "Unknown site",
                "This server does not serve the requested address. Check the site's address.",
            ),
            (Page::BadRequest, Lang::Fr) => (
                "Requête invalide",
                "Votre navigateur a envoyé une requête que le serveur ne comprend pas.",
            ),
            (Page::BadRequest, Lang::En) => (
                "Bad request",
                "Your browser sent a request this server does not understand.",
            ),
        }
    }
}

fn retry_hint(lang: Lang, secs: u64) -> String {
    match lang {
        Lang::Fr => format!("Nouvel essai automatique dans {secs} secondes."),
        Lang::En => format!("Retrying automatically in {secs} seconds."),
    }
}

/// Templates, compiled once at start.
pub struct Pages {
    env: Environment<'static>,
}

impl Default for Pages {
    fn default() -> Self {
        Pages::new()
    }
}

impl Pages {
    pub fn new() -> Pages {
        let mut env = Environment::new();
        env.add_template("notice.html", include_str!("notice.html"))
            .expect("invariant: the built-in template is valid");
        Pages { env }
    }

    /// Renders `page` for a client with `prefs`.
    pub fn render(&self, page: Page, prefs: Prefs) -> Response<ProxyBody> {
        let retry_after = page
            .retry_base()
            .map(|base| base + jitter(RETRY_JITTER_SECS));
        let (title, message) = page.texts(prefs.lang);
        let (body, content_type) = if prefs.json {
            let json = serde_json::json!({
                "state": page.state(),
                "status": page.status().as_u16(),
                "retry_after": retry_after,
                "message": message,
            });
            (json.to_string(), "application/json")
        } else {
            let html = self
                .env
                .get_template("notice.html")
                .and_then(|t| {
                    t.render(context! {
                        lang => match prefs.lang { Lang::Fr => "fr", Lang::En => "en" },
                        title, message, retry_after,
                        retry_hint => retry_after.map(|s| retry_hint(prefs.lang, s)),
                    })
                })
                .unwrap_or_else(|_| title.to_owned());
            (html, "text/html; charset=utf-8")
        };
        let mut res = Response::new(ProxyBody::full(body));
        *res.status_mut() = page.status();
        let h = res.headers_mut();
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
}

/// A value in `0..spread`, different from call to call; not for security.
fn jitter(spread: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .subsec_nanos();
    u64::from(nanos.wrapping_mul(2_654_435_761) >> 7) % spread.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn french_is_the_default_and_english_is_chosen_by_preference() {
        assert_eq!(preferred_lang(""), Lang::Fr);
        assert_eq!(preferred_lang("de-DE,de;q=0.9"), Lang::Fr);
        assert_eq!(preferred_lang("en-GB,en;q=0.9,fr;q=0.5"), Lang::En);
        assert_eq!(preferred_lang("fr-FR,fr;q=0.9,en;q=0.8"), Lang::Fr);
    }

    #[test]
    fn json_only_when_preferred_over_html() {
        assert!(wants_json("application/json"));
        assert!(wants_json("application/json, text/plain, */*"));
        assert!(!wants_json("text/html,application/xhtml+xml,*/*;q=0.8"));
        assert!(!wants_json("*/*"));
    }

    #[test]
    fn busy_page_is_no_store_with_retry_after_and_valid_json() {
        let pages = Pages::new();
        let res = pages.render(
            Page::Busy,
            Prefs {
                lang: Lang::Fr,
                json: true,
            },
        );
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let retry: u64 = res.headers()[header::RETRY_AFTER]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((5..5 + RETRY_JITTER_SECS).contains(&retry), "{retry}");
    }
}
