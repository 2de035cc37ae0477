//! The first invariant end to end: nobody ever sees another user's page.
//!
//! The origins here echo who is asking (the `Authorization` or `Cookie`
//! value, the language, the host) into the body, so a page served to the
//! wrong client shows up as a wrong body, not as a subtle header.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request};
use http_body_util::Full;
use support::{Got, Origin, Proxy, Seen, get, reply, request, send};
use tokio::task::JoinSet;

/// A site rule forcing every path into the cache for an hour.
const FORCE_TTL_EVERYWHERE: &str = "[[site.cache.rule]]\nprefix = \"/\"\nttl = \"1h\"\n";

/// Who the origin thinks is asking: the `Authorization` value, else every
/// `Cookie` value (read as bytes, so nothing is lost), else `nobody`.
fn identity(seen: &Seen) -> String {
    for name in ["authorization", "cookie"] {
        let values: Vec<String> = seen
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if !values.is_empty() {
            return values.join("; ");
        }
    }
    "nobody".to_owned()
}

/// The page the echoing origins give to `who`.
fn page_of(who: &str) -> String {
    format!("page of {who}")
}

/// An origin answering `page of <identity>` with these headers.
async fn echo_origin(headers: &'static [(&'static str, &'static str)]) -> Origin {
    Origin::start(move |seen| reply(200, headers, &page_of(&identity(seen)))).await
}

/// `GET url` with one header whose value is raw bytes (not always UTF-8).
async fn get_with_raw_header(url: &str, name: &str, value: &[u8]) -> Got {
    let req = Request::builder()
        .method(Method::GET)
        .uri(url)
        .header(
            name,
            HeaderValue::from_bytes(value).expect("obs-text is a valid header value"),
        )
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    send(req).await
}

fn is_hit(got: &Got) -> bool {
    got.cache_status().starts_with("digue; hit")
}

/// The language an origin would pick: the highest `q`, the first listed
/// among equals (RFC 4647 §2.3 priority order).
fn greeting(seen: &Seen) -> &'static str {
    let header = seen
        .headers
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut best = ("", -1.0_f32);
    for item in header.split(',') {
        let mut parts = item.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.parse().ok())
            .unwrap_or(1.0);
        if q > best.1 {
            best = (tag, q);
        }
    }
    let tag = best.0.to_ascii_lowercase();
    if tag.starts_with("fr") {
        "bonjour"
    } else if tag.starts_with("en") {
        "hello"
    } else {
        "default"
    }
}

/// An origin greeting in the client's language, `Vary: Accept-Language`.
async fn language_origin() -> Origin {
    Origin::start(|seen| {
        reply(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
            greeting(seen),
        )
    })
    .await
}

/// Requests the origin saw carrying `Authorization`.
fn authorised_at_origin(origin: &Origin) -> usize {
    origin
        .seen()
        .iter()
        .filter(|s| s.headers.contains_key("authorization"))
        .count()
}

/// Runs the authorised-request scenario against an origin answering
/// `Cache-Control: <cache_control>` (the only header in `headers`).
async fn authorised_pages_stay_private(headers: &'static [(&'static str, &'static str)]) {
    let cache_control = headers[0].1;
    let origin = echo_origin(headers).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/notes");
    let alice = "Basic YWxpY2U6c2VjcmV0";
    let bob = "Bearer bob-token";

    let a = get(&url, &[("authorization", alice)]).await;
    assert_eq!(
        a.text(),
        page_of(alice),
        "{cache_control}: alice gets her page"
    );
    assert!(
        a.cache_status()
            .contains("fwd=bypass; detail=authorization"),
        "{cache_control}: an authorised request bypasses the cache: {}",
        a.cache_status()
    );
    let anon = get(&url, &[]).await;
    assert_eq!(
        anon.text(),
        page_of("nobody"),
        "{cache_control}: an anonymous client never gets alice's page"
    );
    let b = get(&url, &[("authorization", bob)]).await;
    assert_eq!(
        b.text(),
        page_of(bob),
        "{cache_control}: bob gets his own page, not the stored anonymous one nor alice's"
    );
    let anon = get(&url, &[]).await;
    assert_eq!(
        anon.text(),
        page_of("nobody"),
        "{cache_control}: the anonymous page is still the anonymous one"
    );
    assert!(
        is_hit(&anon),
        "{cache_control}: the anonymous page itself is cached: {}",
        anon.cache_status()
    );
    let a = get(&url, &[("authorization", alice)]).await;
    assert_eq!(
        a.text(),
        page_of(alice),
        "{cache_control}: alice again gets her page"
    );
    assert_eq!(
        authorised_at_origin(&origin),
        3,
        "{cache_control}: every authorised request reached the origin"
    );
    assert_eq!(
        origin.count("/notes"),
        4,
        "{cache_control}: 3 authorised requests and one anonymous fetch"
    );
    assert_eq!(
        proxy
            .metric("digue_cache_bypass_total{reason=\"authorization\",site=\"portal\"}")
            .await,
        3.0,
        "{cache_control}: every authorised request is counted as a bypass"
    );
}

#[tokio::test]
async fn a_max_age_page_for_an_authorised_request_is_never_served_to_anyone_else() {
    authorised_pages_stay_private(&[("cache-control", "max-age=60")]).await;
}

#[tokio::test]
async fn even_a_public_page_for_an_authorised_request_is_never_served_to_anyone_else() {
    authorised_pages_stay_private(&[("cache-control", "public, max-age=60")]).await;
}

#[tokio::test]
async fn a_session_cookie_makes_a_page_per_user_even_when_the_origin_says_max_age() {
    let origin = echo_origin(&[("cache-control", "max-age=60")]).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/agenda");

    let alice = get(&url, &[("cookie", "JSESSIONID=alice")]).await;
    assert_eq!(alice.text(), page_of("JSESSIONID=alice"));
    assert!(
        alice
            .cache_status()
            .contains("fwd=bypass; detail=session-cookie"),
        "a session cookie bypasses the cache: {}",
        alice.cache_status()
    );
    let bob = get(&url, &[("cookie", "JSESSIONID=bob")]).await;
    assert_eq!(
        bob.text(),
        page_of("JSESSIONID=bob"),
        "bob never gets alice's page"
    );
    let anon = get(&url, &[]).await;
    assert_eq!(
        anon.text(),
        page_of("nobody"),
        "a client without cookie never gets a user's page"
    );
    let carol = get(&url, &[("cookie", "theme=dark; JSESSIONID=carol")]).await;
    assert_eq!(
        carol.text(),
        page_of("theme=dark; JSESSIONID=carol"),
        "a session cookie after another cookie still marks the request per-user"
    );
    let dave = get(
        &url,
        &[("cookie", "theme=dark"), ("cookie", "JSESSIONID=dave")],
    )
    .await;
    assert_eq!(
        dave.text(),
        page_of("theme=dark; JSESSIONID=dave"),
        "a session cookie in a second Cookie header (as HTTP/2 sends them) still counts"
    );
    let alice = get(&url, &[("cookie", "JSESSIONID=alice")]).await;
    assert_eq!(
        alice.text(),
        page_of("JSESSIONID=alice"),
        "alice's second visit is hers, not the stored anonymous page"
    );
    let anon = get(&url, &[]).await;
    assert_eq!(anon.text(), page_of("nobody"));
    assert!(
        is_hit(&anon),
        "the anonymous page is cached: {}",
        anon.cache_status()
    );
    assert_eq!(
        origin.count("/agenda"),
        6,
        "5 per-user requests and one anonymous fetch"
    );
}

/// Under a shared rule (static assets), session holders share one copy; it
/// must be fetched as nobody, or a portal that personalises even its assets
/// would have the first visitor's version stored for everyone.
#[tokio::test]
async fn a_shared_rule_fetches_its_copy_without_the_leaders_session() {
    let origin = echo_origin(&[]).await;
    let shared = "[[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\nshared = true\n";
    let proxy = Proxy::start(&origin.url(), "", shared).await;
    let url = proxy.url("/static/menu.js");

    let alice = get(&url, &[("cookie", "JSESSIONID=alice")]).await;
    assert_eq!(
        alice.text(),
        page_of("nobody"),
        "fetched without her session"
    );
    let bob = get(&url, &[("cookie", "JSESSIONID=bob")]).await;
    assert_eq!(bob.text(), page_of("nobody"), "bob never gets alice's copy");
    assert!(is_hit(&bob), "one shared copy: {}", bob.cache_status());
}

/// ...and what the origin answers to nobody must not replace the session of
/// the user it is relayed to (a login redirect that sets a fresh cookie).
#[tokio::test]
async fn a_shared_rules_answer_for_nobody_never_replaces_the_holders_session() {
    let origin = Origin::start(|seen| {
        if identity(seen) == "nobody" {
            reply(
                302,
                &[
                    ("location", "/login"),
                    ("set-cookie", "JSESSIONID=anonymous; Path=/"),
                ],
                "",
            )
        } else {
            reply(200, &[], "asset")
        }
    })
    .await;
    let shared = "[[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\nshared = true\n";
    let proxy = Proxy::start(&origin.url(), "", shared).await;

    let alice = get(
        &proxy.url("/static/private.pdf"),
        &[("cookie", "JSESSIONID=alice")],
    )
    .await;
    assert_eq!(alice.status, 302, "{}", alice.cache_status());
    assert!(
        alice.header("set-cookie").is_none(),
        "alice keeps her session: {:?}",
        alice.header("set-cookie")
    );
    let anon = get(&proxy.url("/static/private.pdf"), &[]).await;
    assert_eq!(
        anon.header("set-cookie"),
        Some("JSESSIONID=anonymous; Path=/"),
        "a visitor without a session gets the origin's answer untouched"
    );
}

#[tokio::test]
async fn a_configured_session_cookie_replaces_the_default_markers() {
    let origin = echo_origin(&[("cache-control", "max-age=60")]).await;
    let proxy = Proxy::start(&origin.url(), "", "session_cookies = [\"MYSESS\"]\n").await;
    let url = proxy.url("/agenda");

    let alice = get(&url, &[("cookie", "MYSESS=alice")]).await;
    assert_eq!(alice.text(), page_of("MYSESS=alice"));
    assert!(
        alice
            .cache_status()
            .contains("fwd=bypass; detail=session-cookie"),
        "MYSESS is the session marker: {}",
        alice.cache_status()
    );
    let anon = get(&url, &[]).await;
    assert_eq!(anon.text(), page_of("nobody"), "alice's page is not shared");
    let bob = get(&url, &[("cookie", "lang=fr; MYSESS=bob")]).await;
    assert_eq!(
        bob.text(),
        page_of("lang=fr; MYSESS=bob"),
        "bob gets his own page, not the stored anonymous one"
    );
    let other = get(&url, &[("cookie", "JSESSIONID=zoe")]).await;
    assert!(
        !other.cache_status().contains("session-cookie"),
        "JSESSIONID is no longer a marker once the site names its own: {}",
        other.cache_status()
    );
    assert!(
        is_hit(&other),
        "so that request may use the cache: {}",
        other.cache_status()
    );
    assert_eq!(origin.count("/agenda"), 3);
}

#[tokio::test]
async fn a_session_cookie_next_to_a_non_ascii_cookie_is_still_per_user() {
    let origin = echo_origin(&[("cache-control", "max-age=60")]).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/agenda");
    // Browsers send UTF-8 bytes as they are when a script sets such a cookie.
    let cookie = "prenom=\u{c9}lodie; JSESSIONID=alice";

    let alice = get_with_raw_header(&url, "cookie", cookie.as_bytes()).await;
    assert_eq!(alice.text(), page_of(cookie), "alice gets her page");
    let anon = get(&url, &[]).await;
    assert_eq!(
        anon.text(),
        page_of("nobody"),
        "an anonymous client never gets alice's page ({})",
        anon.cache_status()
    );
    assert!(
        alice
            .cache_status()
            .contains("fwd=bypass; detail=session-cookie"),
        "JSESSIONID marks the request per-user whatever the other cookies hold: {}",
        alice.cache_status()
    );
}

#[tokio::test]
async fn private_no_store_and_set_cookie_answers_are_never_shared_even_under_a_forced_ttl() {
    let origin = Origin::start(|seen| {
        let who = identity(seen);
        let cookie = format!("seen={}", who.replace([';', ' ', '='], "_"));
        let headers: Vec<(&str, &str)> = match seen.target.as_str() {
            "/private" => vec![("cache-control", "private, max-age=60")],
            "/private-bare" => vec![("cache-control", "private")],
            "/private-second-line" => vec![
                ("cache-control", "max-age=60"),
                ("cache-control", "private"),
            ],
            "/no-store" => vec![("cache-control", "no-store")],
            "/no-store-max-age" => vec![("cache-control", "max-age=60, no-store")],
            _ => vec![("set-cookie", cookie.as_str())],
        };
        reply(200, &headers, &page_of(&who))
    })
    .await;
    let proxy = Proxy::start(&origin.url(), "", FORCE_TTL_EVERYWHERE).await;

    for path in [
        "/private",
        "/private-bare",
        "/private-second-line",
        "/no-store",
        "/no-store-max-age",
        "/set-cookie",
    ] {
        let url = proxy.url(path);
        // Not session cookies: only the response can tell these pages are personal.
        for who in ["user=alice", "user=bob", "", "user=alice", "user=bob"] {
            let headers: &[(&str, &str)] = if who.is_empty() {
                &[]
            } else {
                &[("cookie", who)]
            };
            let got = get(&url, headers).await;
            let expected = if who.is_empty() { "nobody" } else { who };
            assert_eq!(
                got.text(),
                page_of(expected),
                "{path}: {expected:?} gets their own page"
            );
            assert!(!is_hit(&got), "{path}: never a hit: {}", got.cache_status());
            if path == "/set-cookie" {
                let cookie = got.header("set-cookie").unwrap_or_default();
                assert!(
                    cookie.contains(&expected.replace('=', "_")),
                    "{path}: {expected:?} gets their own Set-Cookie, got {cookie:?}"
                );
            }
        }
        assert_eq!(
            origin.count(path),
            5,
            "{path}: every request reached the origin"
        );
    }
}

#[tokio::test]
async fn private_and_no_store_are_recognised_whatever_their_case() {
    let origin = Origin::start(|seen| {
        let cc = match seen.target.as_str() {
            "/Private" => "Private, max-age=60",
            "/forced/NO-STORE" => "NO-STORE",
            _ => "No-Store, max-age=60",
        };
        reply(200, &[("cache-control", cc)], &page_of(&identity(seen)))
    })
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[[site.cache.rule]]\nprefix = \"/forced/\"\nttl = \"1h\"\n",
    )
    .await;
    // RFC 9111 §5.2: directive names are compared case-insensitively.
    let mut leaks = Vec::new();
    for path in ["/Private", "/No-Store", "/forced/NO-STORE"] {
        let alice = get(&proxy.url(path), &[("cookie", "user=alice")]).await;
        assert_eq!(alice.text(), page_of("user=alice"), "{path}");
        let anon = get(&proxy.url(path), &[]).await;
        if anon.text() != page_of("nobody") {
            leaks.push(format!(
                "{path}: {:?} ({})",
                anon.text(),
                anon.cache_status()
            ));
        }
    }
    assert!(
        leaks.is_empty(),
        "an anonymous client got alice's page: {leaks:#?}"
    );
}

#[tokio::test]
async fn each_language_variant_is_fetched_once_and_served_to_its_own_language() {
    let origin = language_origin().await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/accueil");

    for (i, (lang, expected)) in [
        ("fr", "bonjour"),
        ("en", "hello"),
        ("fr", "bonjour"),
        ("en", "hello"),
    ]
    .into_iter()
    .enumerate()
    {
        let got = get(&url, &[("accept-language", lang)]).await;
        assert_eq!(got.text(), expected, "request {i} in {lang}");
        if i >= 2 {
            assert!(
                is_hit(&got),
                "request {i} in {lang} is a hit: {}",
                got.cache_status()
            );
        }
    }
    assert_eq!(
        origin.count("/accueil"),
        2,
        "each language was fetched once for four requests"
    );
}

#[tokio::test]
async fn equivalent_accept_language_lists_never_get_the_wrong_language() {
    let origin = language_origin().await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/accueil");

    for (lang, expected) in [
        ("fr-FR, en;q=0.5", "bonjour"),
        ("en;q=0.5,fr-FR", "bonjour"),
        ("FR-fr,EN;q=0.5", "bonjour"),
        ("en, fr;q=0.5", "hello"),
        ("fr;q=0.5, en", "hello"),
        ("fr-FR, en;q=0.5", "bonjour"),
    ] {
        let got = get(&url, &[("accept-language", lang)]).await;
        assert_eq!(
            got.text(),
            expected,
            "{lang:?} gets its language ({})",
            got.cache_status()
        );
    }
}

#[tokio::test]
async fn languages_of_equal_weight_keep_their_priority_order() {
    let origin = language_origin().await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/accueil");

    let fr = get(&url, &[("accept-language", "fr, en")]).await;
    assert_eq!(fr.text(), "bonjour", "French first");
    let en = get(&url, &[("accept-language", "en, fr")]).await;
    assert_eq!(
        en.text(),
        "hello",
        "English first gets English, not the stored French variant ({})",
        en.cache_status()
    );
}

#[tokio::test]
async fn vary_star_is_never_served_from_the_cache() {
    let origin = echo_origin(&[("cache-control", "public, max-age=60"), ("vary", "*")]).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/vary-star");

    for who in ["user=alice", "user=bob", "user=alice", "user=bob"] {
        let got = get(&url, &[("cookie", who)]).await;
        assert_eq!(got.text(), page_of(who), "{who} gets their own page");
        assert!(!is_hit(&got), "never a hit: {}", got.cache_status());
    }
    assert_eq!(
        origin.count("/vary-star"),
        4,
        "every request reached the origin"
    );
}

#[tokio::test]
async fn vary_cookie_keeps_users_with_different_cookies_apart() {
    let origin = echo_origin(&[("cache-control", "max-age=60"), ("vary", "Cookie")]).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/menu");

    for who in ["user=alice", "user=bob", "", "user=alice", "user=bob", ""] {
        let headers: &[(&str, &str)] = if who.is_empty() {
            &[]
        } else {
            &[("cookie", who)]
        };
        let got = get(&url, headers).await;
        let expected = if who.is_empty() { "nobody" } else { who };
        assert_eq!(
            got.text(),
            page_of(expected),
            "{expected:?} gets their own variant ({})",
            got.cache_status()
        );
    }
    assert_eq!(
        origin.count("/menu"),
        3,
        "one fetch per distinct Cookie value, then hits"
    );
}

#[tokio::test]
async fn vary_cookie_keeps_apart_values_that_differ_only_in_case() {
    let origin = echo_origin(&[("cache-control", "max-age=60"), ("vary", "Cookie")]).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/menu");

    let upper = get(&url, &[("cookie", "token=AbC123")]).await;
    assert_eq!(upper.text(), page_of("token=AbC123"));
    let lower = get(&url, &[("cookie", "token=abc123")]).await;
    assert_eq!(
        lower.text(),
        page_of("token=abc123"),
        "cookie values are case-sensitive: another user's page was served ({})",
        lower.cache_status()
    );
}

#[tokio::test]
async fn vary_cookie_keeps_apart_non_ascii_values() {
    let origin = echo_origin(&[("cache-control", "max-age=60"), ("vary", "Cookie")]).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/menu");
    let elodie = "prenom=\u{c9}lodie";
    let eric = "prenom=\u{c9}ric";

    let got = get_with_raw_header(&url, "cookie", elodie.as_bytes()).await;
    assert_eq!(got.text(), page_of(elodie));
    let got = get_with_raw_header(&url, "cookie", eric.as_bytes()).await;
    assert_eq!(
        got.text(),
        page_of(eric),
        "Éric never gets Élodie's page ({})",
        got.cache_status()
    );
    let got = get(&url, &[]).await;
    assert_eq!(
        got.text(),
        page_of("nobody"),
        "a client without cookie never gets Élodie's page ({})",
        got.cache_status()
    );
}

#[tokio::test]
async fn a_page_once_private_is_remembered_and_later_requests_reach_the_origin_in_parallel() {
    let origin = echo_origin(&[("cache-control", "private, max-age=60")]).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/carnet");

    let first = get(&url, &[("cookie", "user=first")]).await;
    assert_eq!(first.text(), page_of("user=first"));
    assert_eq!(origin.count("/carnet"), 1);

    origin.hold();
    let mut clients = JoinSet::new();
    for i in 0..10 {
        let url = url.clone();
        clients.spawn(async move {
            let who = format!("user=u{i}");
            let got = get(&url, &[("cookie", &who)]).await;
            (who, got)
        });
    }
    // All ten are at the origin at once: none queued behind another's fetch.
    origin.wait_for_total(11).await;
    assert!(
        origin.peak_in_flight() >= 10,
        "the requests reached the origin in parallel, peak {}",
        origin.peak_in_flight()
    );
    origin.release();
    while let Some(joined) = clients.join_next().await {
        let (who, got) = joined.expect("client task finished");
        assert_eq!(got.text(), page_of(&who), "{who} gets their own page");
        assert!(
            got.cache_status()
                .contains("fwd=bypass; detail=hit-for-miss"),
            "{who}: the key is remembered as uncacheable: {}",
            got.cache_status()
        );
    }
    assert_eq!(origin.count("/carnet"), 11);
}

#[tokio::test]
async fn head_and_a_matching_if_none_match_are_answered_from_a_stored_get() {
    let origin = Origin::fixed(
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("content-type", "text/html"),
        ],
        "bulletin",
    )
    .await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/bulletin");

    assert_eq!(get(&url, &[]).await.text(), "bulletin");
    let head = send(request(Method::HEAD, &url, &[], "")).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD has no body: {:?}", head.body);
    assert_eq!(
        head.header("content-length"),
        Some("8"),
        "HEAD tells the GET body's length"
    );
    assert!(
        is_hit(&head),
        "HEAD is served from the stored GET: {}",
        head.cache_status()
    );

    let matching = get(&url, &[("if-none-match", "\"v0\", \"v1\"")]).await;
    assert_eq!(matching.status, 304, "a matching ETag gets 304");
    assert!(matching.body.is_empty(), "a 304 has no body");
    assert_eq!(matching.header("etag"), Some("\"v1\""));
    assert!(is_hit(&matching), "{}", matching.cache_status());

    let other = get(&url, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(other.status, 200, "another ETag gets the whole page");
    assert_eq!(other.text(), "bulletin");

    assert_eq!(origin.count("/bulletin"), 1, "the origin saw only the GET");
    assert!(
        origin
            .seen()
            .iter()
            .all(|s| s.method == Method::GET && !s.headers.contains_key("if-none-match")),
        "no HEAD nor conditional reached the origin"
    );
}

#[tokio::test]
async fn a_hit_carries_cache_status_age_and_the_origin_headers_but_never_set_cookie() {
    const ORIGIN_HEADERS: &[(&str, &str)] = &[
        ("cache-control", "max-age=60"),
        ("content-type", "text/html; charset=utf-8"),
        ("etag", "\"e1\""),
        ("x-portal", "ent"),
    ];
    let origin = Origin::fixed(ORIGIN_HEADERS, "accueil").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/hit");

    get(&url, &[]).await;
    let hit = get(&url, &[("cookie", "theme=dark")]).await;
    assert!(is_hit(&hit), "{}", hit.cache_status());
    assert_eq!(hit.text(), "accueil");
    let age = hit.header("age").expect("a hit carries Age");
    assert!(age.parse::<u64>().is_ok(), "Age is a number: {age:?}");
    for (name, value) in ORIGIN_HEADERS {
        assert_eq!(
            hit.header(name),
            Some(*value),
            "the hit keeps the origin's {name}"
        );
    }
    let allowed: HashSet<&str> = ORIGIN_HEADERS
        .iter()
        .map(|(name, _)| *name)
        .chain(["age", "cache-status", "content-length", "date"])
        .collect();
    for name in hit.headers.keys() {
        assert!(
            allowed.contains(name.as_str()),
            "the hit has a header the origin never sent: {name}"
        );
    }
    assert!(hit.header("set-cookie").is_none(), "no Set-Cookie on a hit");
    assert_eq!(origin.count("/hit"), 1);
}

#[tokio::test]
async fn a_set_cookie_arriving_with_a_304_revalidation_is_never_replayed() {
    let origin = Origin::start(|seen| {
        if seen.headers.contains_key("if-none-match") {
            reply(
                304,
                &[
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=60"),
                    ("set-cookie", "JSESSIONID=carol"),
                ],
                "",
            )
        } else {
            reply(
                200,
                &[("etag", "\"v1\""), ("cache-control", "max-age=1")],
                "profil",
            )
        }
    })
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.cache]\nstale_while_revalidate = \"0s\"\n",
    )
    .await;
    let url = proxy.url("/profil");

    assert_eq!(get(&url, &[]).await.text(), "profil");
    // Past the one-second TTL, on digue's clock.
    proxy.advance(Duration::from_millis(1100));
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(get(&url, &[]).await);
    }
    assert!(
        origin
            .seen()
            .iter()
            .any(|s| s.headers.contains_key("if-none-match")),
        "the stale entry was revalidated"
    );
    // Answer 0 made the revalidation: the 304's cookie was issued to its own
    // request, so it may carry it. Nobody after it may.
    for (i, got) in answers.iter().enumerate() {
        assert_eq!(got.status, 200, "answer {i}");
        assert_eq!(got.text(), "profil", "answer {i}");
        assert!(
            i == 0 || got.header("set-cookie").is_none(),
            "answer {i} replays a cookie from a 304 ({})",
            got.cache_status()
        );
    }
}

#[tokio::test]
async fn query_strings_are_part_of_the_key() {
    let origin = Origin::start(|seen| {
        reply(
            200,
            &[("cache-control", "max-age=60")],
            &format!("page for {}", seen.target),
        )
    })
    .await;
    let proxy = Proxy::start(&origin.url(), "", "").await;

    for target in ["/p?user=1", "/p?user=2", "/p?user=1", "/p?user=2"] {
        let got = get(&proxy.url(target), &[]).await;
        assert_eq!(
            got.text(),
            format!("page for {target}"),
            "{target} gets its own page ({})",
            got.cache_status()
        );
    }
    assert_eq!(origin.count("/p?user=1"), 1, "each query fetched once");
    assert_eq!(origin.count("/p?user=2"), 1, "each query fetched once");
}

/// An origin whose page names the Host it was asked for.
async fn host_origin() -> Origin {
    Origin::start(|seen| {
        let host = seen
            .headers
            .get("host")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        reply(
            200,
            &[("cache-control", "max-age=60")],
            &format!("page for host {host}"),
        )
    })
    .await
}

#[tokio::test]
async fn each_host_gets_its_own_entries_on_a_wildcard_site() {
    let origin = host_origin().await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/accueil");

    for host in ["lycee-a.example", "lycee-b.example"].repeat(2) {
        let got = get(&url, &[("host", host)]).await;
        assert_eq!(
            got.text(),
            format!("page for host {host}"),
            "{host} gets its own page ({})",
            got.cache_status()
        );
    }
    assert_eq!(origin.count("/accueil"), 2, "one fetch per host");
}

#[tokio::test]
async fn the_host_port_sent_to_the_origin_is_part_of_the_key() {
    let origin = host_origin().await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let url = proxy.url("/login");

    for host in ["ent.example:8080", "ent.example:9090"] {
        let got = get(&url, &[("host", host)]).await;
        assert_eq!(
            got.text(),
            format!("page for host {host}"),
            "{host} gets the page built for its own Host ({})",
            got.cache_status()
        );
    }
}
