//! What may be cached, and for how long (RFC 9111), with the site's rules on top.
//!
//! Freshness and storability come from `http-cache-semantics` evaluated as a
//! shared cache. digue is stricter than the RFC where users' privacy is at
//! stake: a response carrying `Set-Cookie` is never stored, and requests with
//! `Authorization` or a session cookie never touch the shared cache. Laxer
//! on one point, like Varnish and nginx: a client's own cache directives
//! (`no-store`, `no-cache`) decide nothing for everyone else.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode, request, response};
use http_cache_semantics::{CacheOptions, CachePolicy};

use crate::cache::directives;
use crate::cache::key::Vary;
use crate::config::{CacheRule, RuleAction, SiteConfig};
use crate::outcome::BypassReason;

pub use crate::cache::directives::MAX_DELTA;

/// Decides whether a request may use the shared cache at all.
pub fn classify(
    req: &request::Parts,
    site: &SiteConfig,
    rule: Option<&CacheRule>,
) -> Result<(), BypassReason> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(BypassReason::Method);
    }
    if has_body(&req.headers) {
        // A GET with a body is unusual enough to be per-request.
        return Err(BypassReason::Method);
    }
    if matches!(rule.map(|r| r.action), Some(RuleAction::Bypass)) {
        return Err(BypassReason::Rule);
    }
    if req.headers.contains_key(header::AUTHORIZATION) {
        return Err(BypassReason::Authorization);
    }
    let shared = rule.is_some_and(|r| r.shared);
    if !shared && has_session_cookie(&req.headers, &site.session_cookies) {
        return Err(BypassReason::SessionCookie);
    }
    Ok(())
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The values of the `Cookie` pairs named one of `names`, in order.
/// Works on bytes: browsers send non-ASCII cookie values, and such a header
/// must not hide the session cookie next to them. The stricter reading
/// wins: names in any case (`sid` for `SID`: some stacks read them so), and
/// `,` as well as `;` between pairs (RFC 2965 servers split on both).
pub fn session_cookie_values<'a>(
    headers: &'a HeaderMap,
    names: &'a [String],
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';' || *b == b','))
        .filter_map(move |pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            let name = pair[..eq].trim_ascii();
            let named = names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name));
            named.then(|| pair[eq + 1..].trim_ascii())
        })
}

/// Whether any `Cookie` header names one of `names` (empty or not).
pub fn has_session_cookie(headers: &HeaderMap, names: &[String]) -> bool {
    session_cookie_values(headers, names).next().is_some()
}

/// How a storable response is to be kept.
pub struct StorePlan {
    pub policy: CachePolicy,
    pub vary: Vary,
    /// Fresh for this long from now.
    pub ttl: Duration,
    /// After that, served stale at once while one fetch refreshes it.
    pub stale_while_revalidate: Duration,
    /// After that, served stale only when the origin fails.
    pub stale_if_error: Duration,
    /// The response itself forbids serving it stale while it is refreshed
    /// (`must-revalidate`, `proxy-revalidate`, `no-cache`, or `s-maxage`
    /// without its own `stale-while-revalidate`), whatever the windows: a
    /// purged copy is fetched again before anyone is served.
    pub must_revalidate: bool,
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    SetCookie,
    VaryAny,
    /// `private`, `no-store`, an unknown status, or an `Authorization` request.
    Forbidden,
    /// Storable but already stale (`max-age=0`, `no-cache`, no freshness info).
    NoFreshness,
}

/// Statuses a rule may force a TTL on: those RFC 9110 calls heuristically
/// cacheable. Never 5xx: an error page must not outlive the error.
fn forceable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414
    )
}

/// Decides whether and how to store `res`, the answer to `req`.
pub fn plan(
    req: &request::Parts,
    res: &response::Parts,
    site: &SiteConfig,
    rule: Option<&CacheRule>,
    now: SystemTime,
) -> Result<StorePlan, NotStorable> {
    if res.headers.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    let vary = Vary::of(&res.headers);
    if vary == Vary::Any {
        return Err(NotStorable::VaryAny);
    }
    let options = CacheOptions {
        shared: true,
        ..CacheOptions::default()
    };
    let normalised = directives::normalise(res).ok_or(NotStorable::Forbidden)?;
    let policy = CachePolicy::new_options(&without_directives(req), &normalised, now, options);
    if !policy.is_storable() {
        return Err(NotStorable::Forbidden);
    }
    let directives = Directives::of(&normalised.headers);
    let forced = rule.and_then(|r| match r.action {
        RuleAction::ForceTtl(ttl) => Some(ttl),
        RuleAction::Headers | RuleAction::Bypass => None,
    });
    let (ttl, may_serve_stale) = match forced {
        Some(ttl) if forceable(res.status) => (ttl, true),
        Some(_) => return Err(NotStorable::Forbidden),
        None => (policy.time_to_live(now), !directives.must_revalidate),
    };
    // An error page is kept briefly and never served stale: it must not
    // outlive the error (and a successful refetch replaces it at once).
    let error = res.status.is_client_error() || res.status.is_server_error();
    let (ttl, may_serve_stale) = match error {
        true => (ttl.min(site.cache.max_error_ttl), false),
        false => (ttl, may_serve_stale),
    };
    if ttl.is_zero() {
        return Err(NotStorable::NoFreshness);
    }
    let s_maxage_binds = directives.s_maxage && forced.is_none();
    let window = |rule_value: Option<Duration>, site_value: Duration, own: Option<Duration>| {
        if !may_serve_stale {
            return Duration::ZERO;
        }
        if s_maxage_binds {
            // `s-maxage` carries `proxy-revalidate` for a shared cache
            // (RFC 9111 §5.2.2.10): no stale copy, whatever the site's or a
            // rule's windows, unless the response grants one itself.
            return own.unwrap_or(Duration::ZERO).min(MAX_DELTA);
        }
        let window =
            rule_value.unwrap_or_else(|| own.map_or(site_value, |own| own.max(site_value)));
        window.min(MAX_DELTA)
    };
    Ok(StorePlan {
        must_revalidate: !may_serve_stale
            || (s_maxage_binds && directives.stale_while_revalidate.is_none()),
        stale_while_revalidate: window(
            rule.and_then(|r| r.stale_while_revalidate),
            site.cache.stale_while_revalidate,
            directives.stale_while_revalidate,
        ),
        stale_if_error: window(
            rule.and_then(|r| r.stale_if_error),
            site.cache.stale_if_error,
            directives.stale_if_error,
        ),
        policy,
        vary,
        ttl: ttl.min(MAX_DELTA),
    })
}

/// A copy of the request head without `Cache-Control` and `Pragma`: one
/// client's `no-store` must not make a page uncacheable for everyone (lookups
/// ignore them too: F5 never bypasses).
fn without_directives(req: &request::Parts) -> request::Parts {
    let (mut copy, ()) = http::Request::new(()).into_parts();
    copy.method = req.method.clone();
    copy.uri = req.uri.clone();
    copy.version = req.version;
    copy.headers = req.headers.clone();
    copy.headers.remove(header::CACHE_CONTROL);
    copy.headers.remove(header::PRAGMA);
    copy
}

/// The response directives that bound stale serving (RFC 5861, RFC 9111 §5.2.2).
#[derive(Debug, Default, PartialEq, Eq)]
struct Directives {
    must_revalidate: bool,
    /// `s-maxage` was given: stale only with the response's own permission.
    s_maxage: bool,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
}

impl Directives {
    fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        let items = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for item in items {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (item, None),
            };
            let secs = value
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_DELTA));
            match name.to_ascii_lowercase().as_str() {
                "must-revalidate" | "proxy-revalidate" | "no-cache" => d.must_revalidate = true,
                "s-maxage" => d.s_maxage = true,
                "stale-while-revalidate" => d.stale_while_revalidate = secs,
                "stale-if-error" => d.stale_if_error = secs,
                _ => {}
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_for<'s>(site: &'s SiteConfig, path: &str) -> Option<&'s CacheRule> {
        let reading = crate::target::read(path).expect("readable");
        crate::target::rule_for(&site.cache.rules, &reading, site.case_sensitive)
    }
    use crate::config::Config;

    fn site(rules: &str) -> SiteConfig {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[site]]\nname = \"p\"\nhosts = [\"*\"]\n\
             origin = \"http://127.0.0.1:1\"\n[site.cache]\nstale_while_revalidate = \"10s\"\n\
             stale_if_error = \"1h\"\n{rules}"
        );
        Config::parse(&text).expect("valid").sites.remove(0)
    }

    fn req(headers: &[(&'static str, &'static str)]) -> request::Parts {
        let mut b = http::Request::get("http://ent.example.fr/page");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid").into_parts().0
    }

    fn res(status: u16, headers: &[(&'static str, &'static str)]) -> response::Parts {
        let mut b = http::Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("valid").into_parts().0
    }

    fn decide(
        site: &SiteConfig,
        req: &request::Parts,
        res: &response::Parts,
    ) -> Result<StorePlan, NotStorable> {
        plan(
            req,
            res,
            site,
            rule_for(site, req.uri.path()),
            crate::clock::wall(),
        )
    }

    #[test]
    fn max_age_sets_ttl_and_site_windows_apply() {
        let s = site("");
        let p = decide(&s, &req(&[]), &res(200, &[("cache-control", "max-age=60")]))
            .unwrap_or_else(|e| panic!("storable: {e:?}"));
        assert_eq!(p.ttl, Duration::from_secs(60));
        assert_eq!(p.stale_while_revalidate, Duration::from_secs(10));
        assert_eq!(p.stale_if_error, Duration::from_secs(3600));
    }

    #[test]
    fn s_maxage_wins_over_max_age_for_a_shared_cache() {
        let s = site("");
        let p = decide(
            &s,
            &req(&[]),
            &res(200, &[("cache-control", "max-age=10, s-maxage=100")]),
        )
        .unwrap_or_else(|e| panic!("storable: {e:?}"));
        assert_eq!(p.ttl, Duration::from_secs(100));
    }

    #[test]
    fn private_no_store_and_set_cookie_are_never_stored() {
        let s = site("[[site.cache.rule]]\nprefix = \"/\"\nttl = \"1h\"\n");
        for (headers, why) in [
            (
                vec![("cache-control", "private, max-age=60")],
                NotStorable::Forbidden,
            ),
            (vec![("cache-control", "no-store")], NotStorable::Forbidden),
            (
                vec![
                    ("set-cookie", "JSESSIONID=1"),
                    ("cache-control", "public, max-age=60"),
                ],
                NotStorable::SetCookie,
            ),
            (
                vec![("vary", "*"), ("cache-control", "max-age=60")],
                NotStorable::VaryAny,
            ),
        ] {
            assert_eq!(
                decide(&s, &req(&[]), &res(200, &headers)).err(),
                Some(why),
                "{headers:?} must not be stored, even under a forced-ttl rule"
            );
        }
    }

    #[test]
    fn directives_are_recognised_whatever_their_case_or_bytes() {
        let forced = site("[[site.cache.rule]]\nprefix = \"/\"\nttl = \"1h\"\n");
        for cc in ["Private, max-age=60", "NO-STORE", "No-Store, max-age=60"] {
            assert_eq!(
                decide(&forced, &req(&[]), &res(200, &[("cache-control", cc)])).err(),
                Some(NotStorable::Forbidden),
                "{cc:?} must not be stored"
            );
        }
        let mut odd = res(200, &[]);
        odd.headers.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_bytes(b"max-age=60, private\xff").expect("bytes"),
        );
        assert_eq!(
            decide(&forced, &req(&[]), &odd).err(),
            Some(NotStorable::Forbidden)
        );
    }

    #[test]
    fn a_non_ascii_cookie_does_not_hide_the_session_cookie() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            http::HeaderValue::from_bytes("prenom=\u{c9}lodie; JSESSIONID=alice".as_bytes())
                .expect("bytes"),
        );
        assert!(has_session_cookie(&h, &["JSESSIONID".to_owned()]));
    }

    #[test]
    fn authorization_responses_are_stored_only_when_explicitly_shareable() {
        let s = site("");
        let auth = req(&[("authorization", "Basic eDp5")]);
        assert_eq!(
            decide(&s, &auth, &res(200, &[("cache-control", "max-age=60")])).err(),
            Some(NotStorable::Forbidden)
        );
        assert!(
            decide(
                &s,
                &auth,
                &res(200, &[("cache-control", "public, max-age=60")])
            )
            .is_ok()
        );
    }

    #[test]
    fn headerless_responses_are_stored_only_under_a_forced_ttl() {
        let plain = site("");
        assert_eq!(
            decide(&plain, &req(&[]), &res(200, &[])).err(),
            Some(NotStorable::NoFreshness)
        );
        let forced = site("[[site.cache.rule]]\nprefix = \"/\"\nttl = \"1h\"\n");
        let p = decide(
            &forced,
            &req(&[]),
            &res(200, &[("cache-control", "no-cache")]),
        )
        .unwrap_or_else(|e| panic!("forced: {e:?}"));
        assert_eq!(p.ttl, Duration::from_secs(3600));
        assert_eq!(
            decide(&forced, &req(&[]), &res(503, &[])).err(),
            Some(NotStorable::Forbidden),
            "an error page is never forced into the cache"
        );
    }

    #[test]
    fn heuristic_freshness_follows_last_modified() {
        let s = site("");
        let now = httpdate::fmt_http_date(crate::clock::wall());
        let p = decide(
            &s,
            &req(&[]),
            &res(
                200,
                &[
                    ("date", Box::leak(now.into_boxed_str())),
                    ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ],
            ),
        )
        .unwrap_or_else(|e| panic!("heuristically fresh: {e:?}"));
        assert!(
            p.ttl > Duration::from_secs(86_400),
            "10% of a long age: {:?}",
            p.ttl
        );
    }

    #[test]
    fn expires_in_the_past_or_invalid_is_stale() {
        let s = site("");
        assert_eq!(
            decide(&s, &req(&[]), &res(200, &[("expires", "0")])).err(),
            Some(NotStorable::NoFreshness)
        );
    }

    #[test]
    fn request_directives_never_decide_storability_but_response_ones_do() {
        let s = site("");
        let no_store = req(&[("cache-control", "no-store"), ("pragma", "no-cache")]);
        assert!(
            decide(&s, &no_store, &res(200, &[("cache-control", "max-age=60")])).is_ok(),
            "a client's no-store decides nothing for everyone"
        );
        assert_eq!(
            decide(&s, &req(&[]), &res(200, &[("cache-control", "no-store")])).err(),
            Some(NotStorable::Forbidden)
        );
    }

    #[test]
    fn huge_lifetimes_windows_and_ages_are_capped() {
        let s = site("");
        let huge = "max-age=18446744073709551615, stale-while-revalidate=18446744073709551615, \
                    stale-if-error=18446744073709551615";
        let p = decide(&s, &req(&[]), &res(200, &[("cache-control", huge)]))
            .unwrap_or_else(|e| panic!("storable: {e:?}"));
        assert_eq!(
            (p.ttl, p.stale_while_revalidate, p.stale_if_error),
            (MAX_DELTA, MAX_DELTA, MAX_DELTA)
        );
        let forced = site("[[site.cache.rule]]\nprefix = \"/\"\nttl = \"1h\"\n");
        let p = decide(
            &forced,
            &req(&[]),
            &res(200, &[("age", "18446744073709551615")]),
        )
        .unwrap_or_else(|e| panic!("forced: {e:?}"));
        let later = crate::clock::wall() + Duration::from_secs(5);
        assert!(
            p.policy.age(later) < MAX_DELTA + Duration::from_secs(6),
            "a huge Age is capped, so it can be added to"
        );
    }

    #[test]
    fn an_error_is_stored_at_most_max_error_ttl_and_never_served_stale() {
        let s =
            site("max_error_ttl = \"3s\"\n[[site.cache.rule]]\nprefix = \"/f\"\nttl = \"1h\"\n");
        for (path, status) in [("/page", 404), ("/page", 410), ("/f", 404)] {
            let mut r = req(&[]);
            r.uri = path.parse().expect("path");
            let p = decide(&s, &r, &res(status, &[("cache-control", "max-age=600")]))
                .unwrap_or_else(|e| panic!("storable: {e:?}"));
            assert_eq!(p.ttl, Duration::from_secs(3), "{path} {status}");
            assert_eq!(
                (
                    p.stale_while_revalidate,
                    p.stale_if_error,
                    p.must_revalidate
                ),
                (Duration::ZERO, Duration::ZERO, true)
            );
        }
    }

    #[test]
    fn must_revalidate_forbids_stale_serving() {
        let s = site("");
        let p = decide(
            &s,
            &req(&[]),
            &res(200, &[("cache-control", "max-age=60, must-revalidate")]),
        )
        .unwrap_or_else(|e| panic!("storable: {e:?}"));
        assert_eq!(p.stale_while_revalidate, Duration::ZERO);
        assert_eq!(p.stale_if_error, Duration::ZERO);
        assert!(p.must_revalidate);
    }

    #[test]
    fn s_maxage_forbids_stale_serving_unless_the_response_grants_it() {
        let s = site("[[site.cache.rule]]\nprefix = \"/\"\nstale_if_error = \"1d\"\n");
        for (headers, swr, sie, must_revalidate) in [
            (vec!["max-age=3600, s-maxage=1"], 0, 0, true),
            (vec!["s-maxage=2"], 0, 0, true),
            (vec!["max-age=2", "S-MAXAGE=2"], 0, 0, true),
            (vec!["s-maxage=2, stale-if-error=30"], 0, 30, true),
            (vec!["s-maxage=2", "stale-while-revalidate=5"], 5, 0, false),
            (vec!["max-age=2"], 10, 86_400, false),
        ] {
            let cache_control: Vec<(&str, &str)> =
                headers.iter().map(|h| ("cache-control", *h)).collect();
            let p = decide(&s, &req(&[]), &res(200, &cache_control))
                .unwrap_or_else(|e| panic!("storable: {e:?}"));
            assert_eq!(
                (
                    p.stale_while_revalidate,
                    p.stale_if_error,
                    p.must_revalidate
                ),
                (
                    Duration::from_secs(swr),
                    Duration::from_secs(sie),
                    must_revalidate
                ),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn response_stale_directives_extend_the_site_defaults() {
        let s = site("");
        let p = decide(
            &s,
            &req(&[]),
            &res(
                200,
                &[("cache-control", "max-age=60, stale-while-revalidate=600")],
            ),
        )
        .unwrap_or_else(|e| panic!("storable: {e:?}"));
        assert_eq!(p.stale_while_revalidate, Duration::from_secs(600));
    }

    #[test]
    fn session_cookies_make_a_request_per_user_unless_the_rule_shares_it() {
        let s = site("[[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\nshared = true\n");
        let with_cookie = |path: &str| {
            http::Request::get(path)
                .header("cookie", "theme=dark; JSESSIONID=abc")
                .body(())
                .expect("valid")
                .into_parts()
                .0
        };
        let page = with_cookie("/page");
        assert_eq!(
            classify(&page, &s, rule_for(&s, "/page")),
            Err(BypassReason::SessionCookie)
        );
        let asset = with_cookie("/static/app.css");
        assert_eq!(
            classify(&asset, &s, rule_for(&s, "/static/app.css")),
            Ok(())
        );
        let other_cookie = http::Request::get("/page")
            .header("cookie", "theme=dark")
            .body(())
            .expect("valid")
            .into_parts()
            .0;
        assert_eq!(classify(&other_cookie, &s, None), Ok(()));
    }
}
