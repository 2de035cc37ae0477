//! The shared cache end to end: what is stored, what never is, and how
//! stored copies are served.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::{Origin, Proxy, get, reply};

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
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let origin = Origin::start(move |_| {
        if flag.load(Ordering::SeqCst) {
            reply(503, &[], "en panne")
        } else {
            reply(200, &[("cache-control", "max-age=1")], "v1")
        }
    })
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.cache]\nstale_while_revalidate = \"0s\"\nstale_if_error = \"1h\"\n",
    )
    .await;
    assert_eq!(get(&proxy.url("/x"), &[]).await.text(), "v1");
    failing.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
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
