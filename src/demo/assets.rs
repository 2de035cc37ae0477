//! The portal's pages, stylesheet, script and logo, compiled in from
//! `assets/`. They imitate a portal of the early 2010s, French as the real
//! ones are, and are served byte for byte.

pub(super) const HOME_HTML: &str = include_str!("assets/home.html");
pub(super) const NEWS_HTML: &str = include_str!("assets/news.html");
pub(super) const NOT_FOUND_HTML: &str = include_str!("assets/not_found.html");
pub(super) const NOT_ALLOWED_HTML: &str = include_str!("assets/not_allowed.html");
pub(super) const UNAVAILABLE_HTML: &str = include_str!("assets/unavailable.html");
/// The page shown once logged in; `{short}` stands for the student's number.
const LOGIN_HTML: &str = include_str!("assets/login.html");
const PORTAIL_CSS: &str = include_str!("assets/portail.css");
const PORTAIL_JS: &str = include_str!("assets/portail.js");
const LOGO_SVG: &str = include_str!("assets/logo.svg");

/// The content type and body of a static asset, by path.
pub(super) fn static_asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/static/portail.css" => Some(("text/css; charset=utf-8", PORTAIL_CSS)),
        "/static/portail.js" => Some(("text/javascript; charset=utf-8", PORTAIL_JS)),
        "/static/logo.svg" => Some(("image/svg+xml", LOGO_SVG)),
        _ => None,
    }
}

/// The login page for the student numbered `short`: an id the portal built
/// from hex digits, so it needs no escaping.
pub(super) fn login_html(short: &str) -> String {
    LOGIN_HTML.replace("{short}", short)
}
