//! The console over real sockets: the page on the admin listener, its poll
//! `GET /admin/console` and the 30 minutes of history it charts. The same
//! page in a real browser is in `tests/browser.rs`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{ADMIN_TOKEN, Browser, Digue, Origin, Proxy, get, page, reply};

async fn portal() -> Origin {
    Origin::start(|seen| {
        if seen.target.starts_with("/static/") {
            reply(200, &[("cache-control", "max-age=600")], "app()")
        } else {
            reply(200, &[("cache-control", "no-store")], &page(&seen.target))
        }
    })
    .await
}

async fn console_proxy(origin: &Origin) -> Proxy {
    Digue::new(&origin.url())
        .admission("new_users_per_minute = 6\nburst = 1\nmax_active_users = 500")
        .site("[site.client_limit]\nrequests_per_minute = 600\nburst = 100")
        .admin()
        .start()
        .await
}

async fn poll(proxy: &Proxy, since: u64) -> Value {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let got = get(
        &proxy.admin_url(&format!("/admin/console?since={since}")),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.header("cache-control"), Some("no-store"));
    got.json()
}

#[tokio::test]
async fn the_page_loads_without_a_token_and_holds_no_figure() {
    let origin = portal().await;
    let proxy = Digue::new(&origin.url())
        .name("lycee-victor-hugo")
        .admin()
        .start()
        .await;
    let got = get(&proxy.admin_url("/"), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(got.header("cache-control"), Some("no-store"));
    let csp = got.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "nothing from elsewhere, no framing: {csp}"
    );
    let html = got.text();
    assert!(html.contains("<html lang=\"fr\""), "French first");
    assert!(
        html.contains("Jeton d'administration"),
        "asks for the token"
    );
    assert!(
        !html.contains("lycee-victor-hugo"),
        "no site name, no figure before the token"
    );
    let english = get(
        &proxy.admin_url("/"),
        &[("accept-language", "en-US,en;q=0.8")],
    )
    .await;
    assert!(english.text().contains("<html lang=\"en\""));
    let public = get(&proxy.url("/"), &[]).await;
    assert!(
        !public.text().contains("sessionStorage"),
        "the console is never on the public port"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_poll_without_the_token_is_refused_with_no_figure() {
    let origin = portal().await;
    let proxy = console_proxy(&origin).await;
    for auth in [None, Some("Bearer wrong"), Some("Basic YWRtaW46YWRtaW4=")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let got = get(&proxy.admin_url("/admin/console"), &headers).await;
        assert_eq!(got.status, 401, "{auth:?}");
        let json = got.json();
        assert!(json.get("sites").is_none(), "no figure: {json}");
        assert!(!got.text().contains("portal"), "not even a site name");
    }
    // A cookie is no credential, whatever it holds.
    let cookie = format!("token={ADMIN_TOKEN}; authorization=Bearer {ADMIN_TOKEN}");
    let got = get(&proxy.admin_url("/admin/console"), &[("cookie", &cookie)]).await;
    assert_eq!(got.status, 401, "no cookie auth");
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_poll_shows_each_site_live_and_only_the_samples_it_lacks() {
    let origin = portal().await;
    let proxy = console_proxy(&origin).await;
    let app = proxy.app().clone();
    // Traffic: a miss then hits, a visitor let in, three in line.
    for _ in 0..4 {
        get(&proxy.url("/static/app.js"), &[]).await;
    }
    let mut first = Browser::default();
    assert_eq!(first.poll(&proxy).await.status, 200, "let in");
    let mut line = Vec::new();
    for _ in 0..3 {
        let mut b = Browser::default();
        assert_eq!(b.poll(&proxy).await.status, 503, "queued");
        line.push(b);
    }
    proxy.advance(Duration::from_secs(5));
    digue::console::sample(&app);

    let whole = poll(&proxy, 0).await;
    let site = &whole["sites"][0];
    assert_eq!(site["name"], "portal");
    let admission = &site["state"]["admission"];
    assert_eq!(admission["line_length"], 3, "{admission}");
    assert_eq!(admission["max_active_users"], 500);
    assert_eq!(admission["mode"], "auto");
    assert_eq!(site["client_limit"]["requests_per_minute"], 600);
    assert!(site["state"]["origin"]["backends"][0]["limit"].as_u64() > Some(0));
    let history = site["history"].as_array().expect("samples");
    assert!(!history.is_empty(), "at least the sample just taken");
    let last = history.last().expect("a sample");
    assert_eq!(last["line"], 3, "{last}");
    assert_eq!(last["sessions"], 1, "{last}");
    let hit_ratio = last["hit_ratio"].as_f64().expect("lookups were made");
    assert!(
        (hit_ratio - 0.6).abs() < 1e-9,
        "3 hits of 5 lookups (the script's miss, the page of the visitor let in): {last}"
    );
    assert!(
        last["p50_ms"].as_f64().is_some(),
        "the origin answered: {last}"
    );
    assert_eq!(last["rate_per_minute"], 6);

    // The next poll carries only what is new.
    let now = whole["now"].as_u64().expect("now");
    let again = poll(&proxy, now).await;
    assert_eq!(
        again["sites"][0]["history"].as_array().map(Vec::len),
        Some(0)
    );
    proxy.advance(Duration::from_secs(5));
    digue::console::sample(&app);
    let next = poll(&proxy, now).await;
    assert_eq!(
        next["sites"][0]["history"].as_array().map(Vec::len),
        Some(1)
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_history_holds_thirty_minutes_and_no_more() {
    let origin = portal().await;
    let proxy = console_proxy(&origin).await;
    let app = proxy.app().clone();
    for _ in 0..500 {
        proxy.advance(digue::console::history::SAMPLE_EVERY);
        digue::console::sample(&app);
    }
    assert_eq!(
        app.history.len("portal"),
        digue::console::history::KEPT,
        "a ring of 30 minutes"
    );
    let whole = poll(&proxy, 0).await;
    let samples = whole["sites"][0]["history"].as_array().expect("samples");
    let first = samples.first().and_then(|s| s["t"].as_u64()).expect("t");
    let last = samples.last().and_then(|s| s["t"].as_u64()).expect("t");
    assert!(
        last - first < 30 * 60 * 1000,
        "within 30 minutes: {} ms",
        last - first
    );
    proxy.shutdown().await;
}
