//! The shared cache end to end: what is stored, what never is, and how
//! stored copies are served.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Method;
use support::tls::{TestCert, get_https};
use support::{Digue, Origin, Proxy, TempDir, get, reply, wait_for};

/// A `u64` of seconds no cache could ever honour.
const HUGE_SECONDS: &str = "18446744073709551615";

/// Moved on digue's clock to expire a one-second TTL.
const PAST_ONE_SECOND: Duration = Duration::from_millis(1100);

/// An origin answering "v1" with `cache_control` until the flag turns it
/// into a 503 "en panne".
/// An origin answering `v1` with one `Cache-Control` line per `;;`-separated
/// part of `cache_control`, or `503` once the flag is set.
async fn failing_origin(cache_control: &'static str) -> (Origin, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let lines: Vec<(&str, &str)> = cache_control
        .split(";;")
        .map(|line| ("cache-control", line.trim()))
        .collect();
    let origin = Origin::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            reply(503, &[], "en panne")
        } else {
            reply(200, &lines, "v1")
        }
    })
    .await;
    (origin, failing)
}

#[tokio::test]
async fn a_cacheable_page_is_fetched_once_then_served_from_memory() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "bonjour").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;

    let first = get(&proxy.url("/accueil"), &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "bonjour");
    assert!(
        first.cache_status().contains("fwd=uri-miss") && first.cache_status().contains("stored"),
        "first answer is a stored miss: {}",
        first.cache_status()
    );
    let second = get(&proxy.url("/accueil"), &[]).await;
    assert_eq!(second.text(), "bonjour");
    assert!(
        second.cache_status().starts_with("digue; hit"),
        "{}",
        second.cache_status()
    );
    assert!(second.header("age").is_some(), "a hit carries Age");
    assert_eq!(origin.count("/accueil"), 1, "the origin saw one request");
    assert_eq!(
        proxy
            .metric("digue_requests_total{outcome=\"hit\",site=\"portal\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn set_cookie_is_never_stored_nor_replayed() {
    let origin = Origin::start(|seen| {
        let n = seen.target.len();
        reply(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("set-cookie", &format!("JSESSIONID=user{n}")),
            ],
            "page",
        )
    })
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[[site.cache.rule]]\nprefix = \"/\"\nttl = \"1h\"\n",
    )
    .await;
    let a = get(&proxy.url("/p"), &[]).await;
    assert!(
        a.header("set-cookie").is_some(),
        "the requester gets its own cookie"
    );
    let b = get(&proxy.url("/p"), &[]).await;
    assert_eq!(
        origin.count("/p"),
        2,
        "a response with Set-Cookie is not reused"
    );
    assert!(
        !b.cache_status().starts_with("digue; hit"),
        "{}",
        b.cache_status()
    );
}

#[tokio::test]
async fn a_client_no_cache_does_not_bypass_a_fresh_entry() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "x").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    get(&proxy.url("/f5"), &[]).await;
    for _ in 0..5 {
        let r = get(
            &proxy.url("/f5"),
            &[("cache-control", "no-cache"), ("pragma", "no-cache")],
        )
        .await;
        assert!(r.cache_status().contains("hit"), "{}", r.cache_status());
    }
    assert_eq!(origin.count("/f5"), 1, "F5 never reaches the origin");
}

#[tokio::test]
async fn headerless_static_assets_are_cached_by_a_forced_ttl_rule() {
    let origin = Origin::fixed(&[("content-type", "text/css")], "body{}").await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\nshared = true\n",
    )
    .await;
    for _ in 0..3 {
        let r = get(
            &proxy.url("/static/app.css"),
            &[("cookie", "JSESSIONID=abc")],
        )
        .await;
        assert_eq!(r.text(), "body{}");
    }
    assert_eq!(
        origin.count("/static/app.css"),
        1,
        "stored despite no caching headers"
    );
    get(&proxy.url("/page"), &[]).await;
    get(&proxy.url("/page"), &[]).await;
    assert_eq!(
        origin.count("/page"),
        2,
        "outside the rule, header-less pages are not stored"
    );
}

#[tokio::test]
async fn stale_copy_is_served_while_origin_returns_503() {
    let (origin, failing) = failing_origin("max-age=1").await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.cache]\nstale_while_revalidate = \"0s\"\nstale_if_error = \"1h\"\n",
    )
    .await;
    assert_eq!(get(&proxy.url("/x"), &[]).await.text(), "v1");
    failing.store(true, Ordering::SeqCst);
    proxy.advance(PAST_ONE_SECOND);
    let r = get(&proxy.url("/x"), &[]).await;
    assert_eq!(r.status, 200, "a stale copy beats an error");
    assert_eq!(r.text(), "v1");
    assert!(
        r.cache_status()
            .contains("fwd=stale; detail=stale-if-error"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count("/x"), 2, "the origin was asked, and failed");
}

/// `s-maxage` makes a shared cache revalidate (RFC 9111 §5.2.2.10): once
/// stale, the copy is not served, whatever the site's windows.
#[tokio::test]
async fn a_page_with_s_maxage_is_never_served_stale_unless_it_says_so() {
    for (cache_control, stale_allowed) in [
        ("max-age=3600, s-maxage=1", false),
        ("s-maxage=1", false),
        ("max-age=3600;; s-maxage=1", false),
        ("s-maxage=1, stale-if-error=60", true),
    ] {
        let (origin, failing) = failing_origin(cache_control).await;
        let proxy = Proxy::start(
            &origin.url(),
            "",
            "[site.cache]\nstale_while_revalidate = \"30s\"\nstale_if_error = \"1h\"\n",
        )
        .await;
        assert_eq!(get(&proxy.url("/x"), &[]).await.text(), "v1");
        proxy.advance(PAST_ONE_SECOND);
        let revalidated = get(&proxy.url("/x"), &[]).await;
        assert!(
            !revalidated
                .cache_status()
                .contains("stale-while-revalidate"),
            "{cache_control}: not served stale while revalidating: {}",
            revalidated.cache_status()
        );
        assert_eq!(
            origin.count("/x"),
            2,
            "{cache_control}: asked again at once"
        );
        failing.store(true, Ordering::SeqCst);
        proxy.advance(PAST_ONE_SECOND);
        let failed = get(&proxy.url("/x"), &[]).await;
        assert_eq!(
            failed.status == 200,
            stale_allowed,
            "{cache_control}: a stale copy stands in for the 503 only with the page's own \
             stale-if-error: {} {}",
            failed.status,
            failed.cache_status()
        );
    }
}

#[tokio::test]
async fn a_purged_page_under_s_maxage_is_fetched_again_before_it_is_served() {
    for (cache_control, served_stale) in [
        ("s-maxage=60", false),
        ("max-age=60;; s-maxage=60", false),
        ("s-maxage=60, stale-if-error=60", false),
        ("s-maxage=60, stale-while-revalidate=60", true),
        ("max-age=60", true),
    ] {
        let (origin, _failing) = failing_origin(cache_control).await;
        let proxy = Digue::new(&origin.url()).admin().start().await;
        assert_eq!(get(&proxy.url("/x"), &[]).await.text(), "v1");
        let purged = proxy
            .admin_call(
                Method::POST,
                "/admin/purge",
                r#"{"site":"portal","path":"/x"}"#,
            )
            .await;
        assert_eq!(purged.status, 200, "{}", purged.text());
        let next = get(&proxy.url("/x"), &[]).await;
        assert_eq!(
            next.cache_status()
                .contains("fwd=stale; detail=stale-while-revalidate"),
            served_stale,
            "{cache_control}: the purged copy is served during its refetch only when the \
             page allows it: {}",
            next.cache_status()
        );
        origin.wait_for_total(2).await;
    }
}

#[tokio::test]
async fn huge_stale_windows_and_ages_from_the_origin_never_drop_a_connection() {
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let origin = Origin::start(move |seen| {
        let swr = format!("max-age=1, stale-while-revalidate={HUGE_SECONDS}");
        let sie = format!("max-age=1, stale-if-error={HUGE_SECONDS}");
        match seen.target.as_str() {
            "/swr" => reply(200, &[("cache-control", &swr)], "swr"),
            "/sie" if flag.load(Ordering::SeqCst) => reply(503, &[], "en panne"),
            "/sie" => reply(200, &[("cache-control", &sie)], "sie"),
            _ => reply(200, &[("age", HUGE_SECONDS)], "age"),
        }
    })
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.cache]\nstale_while_revalidate = \"0s\"\nstale_if_error = \"0s\"\n\
         [[site.cache.rule]]\nprefix = \"/age\"\nttl = \"1s\"\n",
    )
    .await;
    for target in ["/swr", "/sie", "/age"] {
        let first = get(&proxy.url(target), &[]).await;
        assert_eq!(first.status, 200, "{target}: {}", first.cache_status());
    }
    failing.store(true, Ordering::SeqCst);
    proxy.advance(PAST_ONE_SECOND);
    for target in ["/swr", "/sie", "/age"] {
        let expired = get(&proxy.url(target), &[]).await;
        assert_eq!(
            expired.status,
            200,
            "{target} after expiry: {}",
            expired.cache_status()
        );
        assert_eq!(expired.text(), &target[1..], "{target}: the page itself");
    }
}

#[tokio::test]
async fn a_client_no_store_does_not_make_a_page_uncacheable_for_everyone() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "accueil").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let first = get(
        &proxy.url("/"),
        &[("cache-control", "no-store"), ("pragma", "no-cache")],
    )
    .await;
    assert_eq!(first.text(), "accueil");
    for _ in 0..5 {
        let r = get(&proxy.url("/"), &[]).await;
        assert_eq!(r.text(), "accueil");
        assert!(
            r.cache_status().starts_with("digue; hit"),
            "{}",
            r.cache_status()
        );
    }
    assert_eq!(
        origin.count("/"),
        1,
        "one client's directive does not decide for everyone"
    );
}

#[tokio::test]
async fn an_http_redirect_to_https_is_never_served_to_https_clients() {
    let origin = Origin::start(|seen| {
        let cacheable = ("cache-control", "max-age=60");
        if seen.headers["x-forwarded-proto"] == "http" {
            reply(301, &[cacheable, ("location", "https://localhost/")], "")
        } else {
            reply(200, &[cacheable], "secure")
        }
    })
    .await;
    let dir = TempDir::new("caching-tls");
    let cert = TestCert::new(dir.path(), "a", &["localhost"]);
    let proxy = Digue::new(&origin.url())
        .server(&cert.server_keys())
        .start()
        .await;
    let plain = proxy.url("/");
    let tls = proxy.tls.expect("TLS listener");

    let redirect = get(&plain, &[("host", "localhost")]).await;
    assert_eq!(redirect.status, 301, "plain HTTP is redirected");
    let again = get(&plain, &[("host", "localhost")]).await;
    assert!(
        again.cache_status().starts_with("digue; hit"),
        "and the redirect is cached: {}",
        again.cache_status()
    );
    let secure = get_https(tls, &cert.der, "localhost", "/").await;
    assert_eq!(
        (secure.status.as_u16(), secure.text().as_str()),
        (200, "secure"),
        "an HTTPS client never gets the HTTP redirect: {}",
        secure.cache_status()
    );
    proxy.shutdown().await;
}

/// digue with an admin token and a one-second hit-for-miss memory; `site`
/// as for [`Proxy::start`].
async fn start_with_admin(origin: &Origin, site: &str) -> Proxy {
    Digue::new(&origin.url())
        .admin()
        .table("[cache]\nhit_for_miss = \"1s\"")
        .site(site)
        .start()
        .await
}

async fn soft_purge(proxy: &Proxy, path: &str) {
    let body = format!(r#"{{"site": "portal", "path": "{path}"}}"#);
    let got = proxy.admin_call(Method::POST, "/admin/purge", &body).await;
    assert_eq!(got.status, 200, "purge: {}", got.text());
}

#[tokio::test]
async fn a_purged_page_that_turned_private_never_comes_back() {
    let private = Arc::new(AtomicBool::new(false));
    let flag = private.clone();
    let origin = Origin::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            reply(200, &[("cache-control", "private, max-age=60")], "v2")
        } else {
            reply(200, &[("cache-control", "max-age=60")], "v1")
        }
    })
    .await;
    let proxy = start_with_admin(&origin, "").await;
    assert_eq!(get(&proxy.url("/notes"), &[]).await.text(), "v1");
    private.store(true, Ordering::SeqCst);
    soft_purge(&proxy, "/notes").await;
    let during = get(&proxy.url("/notes"), &[]).await;
    assert_eq!(during.text(), "v1", "stale while the one refetch runs");
    origin.wait_for_total(2).await;

    // Past the hit-for-miss memory, the origin still says private. That
    // memory is moka's own time-to-live, on real time: slept, not advanced.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        let after = get(&proxy.url("/notes"), &[]).await;
        assert_eq!(
            after.text(),
            "v2",
            "the purged copy is gone: {}",
            after.cache_status()
        );
    }
}

#[tokio::test]
async fn a_purged_page_is_not_served_stale_for_ever_while_the_origin_fails() {
    let (origin, failing) = failing_origin("max-age=60").await;
    let proxy = start_with_admin(
        &origin,
        "[site.cache]\nstale_while_revalidate = \"0s\"\nstale_if_error = \"0s\"\n",
    )
    .await;
    assert_eq!(get(&proxy.url("/news"), &[]).await.text(), "v1");
    failing.store(true, Ordering::SeqCst);
    soft_purge(&proxy, "/news").await;
    let during = get(&proxy.url("/news"), &[]).await;
    assert_eq!(during.text(), "v1", "stale while the one refetch runs");
    origin.wait_for_total(2).await;

    let after = wait_for(
        "the purged copy stops being served once the refetch failed",
        Duration::from_secs(2),
        async || {
            let got = get(&proxy.url("/news"), &[]).await;
            if got.status == 200 {
                Err(got.cache_status())
            } else {
                Ok(got)
            }
        },
    )
    .await;
    assert_eq!(
        after.status,
        503,
        "once the refetch failed, no stale-if-error window keeps the purged copy: {}",
        after.cache_status()
    );
}
