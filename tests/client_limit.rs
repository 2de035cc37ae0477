//! Per-client limits (`[site.client_limit]`) end to end: one client's
//! origin-bound requests past its budget get a 429, nobody else's do, and
//! what never reaches the origin (hits, the waiting room, staff networks)
//! is never counted.

mod support;

use std::time::Duration;

use http::Method;
use support::{Digue, Origin, Proxy, Seen, get, get_from, reply, request, send};

const LIMITED: &str = r#"digue_client_limited_total{site="portal"}"#;

/// The portal: per-user pages (no-store), and a cacheable script.
async fn portal() -> Origin {
    Origin::start(|seen: &Seen| {
        if seen.target.starts_with("/static/") {
            reply(200, &[("cache-control", "public, max-age=600")], "app()")
        } else {
            reply(200, &[("cache-control", "no-store")], "emploi du temps")
        }
    })
    .await
}

/// A digue in front of `origin` with this `[site.client_limit]`.
async fn limited(origin: &Origin, limit: &str, more: &str) -> Proxy {
    Digue::new(&origin.url())
        .site(&format!("{more}\n[site.client_limit]\n{limit}"))
        .admin()
        .start()
        .await
}

fn session(id: &str) -> String {
    format!("JSESSIONID={id}")
}

#[tokio::test]
async fn one_session_hammering_a_per_user_page_is_limited_and_another_on_its_address_is_not() {
    let origin = portal().await;
    let proxy = limited(&origin, "requests_per_minute = 60\nburst = 5", "").await;
    let page = proxy.url("/pronote/emploidutemps");
    let hammer = session("pupil-who-holds-f5");
    for i in 0..5 {
        let got = get(&page, &[("cookie", &hammer)]).await;
        assert_eq!(got.status, 200, "request {i} is within the burst");
    }
    let refused = get(&page, &[("cookie", &hammer)]).await;
    assert_eq!(refused.status, 429, "the sixth at once is over budget");
    assert_eq!(refused.header("cache-control"), Some("no-store"));
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|r| r.parse().ok())
        .expect("a Retry-After in seconds");
    assert_eq!(retry, 1, "one request a second: room again within a second");
    assert!(
        refused.text().contains("Vous rechargez trop vite"),
        "a short French page: {}",
        refused.text()
    );
    assert!(
        refused.cache_status().contains("client-limited"),
        "{}",
        refused.cache_status()
    );
    let app = get(
        &page,
        &[("cookie", &hammer), ("accept", "application/json")],
    )
    .await;
    assert_eq!(app.status, 429);
    assert_eq!(
        app.json()["state"],
        "too_fast",
        "JSON for apps: {}",
        app.text()
    );
    assert_eq!(
        origin.count("/pronote/emploidutemps"),
        5,
        "the origin saw the budget only"
    );

    // Same address (a school's NAT), another session: its own budget.
    let classmate = session("classmate");
    let got = get(&page, &[("cookie", &classmate)]).await;
    assert_eq!(
        got.status, 200,
        "another session on the same address is unaffected"
    );
    // A POST is origin-bound too.
    let post = send(request(
        Method::POST,
        &page,
        &[("cookie", hammer.as_str())],
        "{}",
    ))
    .await;
    assert_eq!(post.status, 429, "POSTs count");

    proxy.advance(Duration::from_secs(1));
    let again = get(&page, &[("cookie", &hammer)]).await;
    assert_eq!(again.status, 200, "a second later the budget has one more");
    assert_eq!(proxy.metric(LIMITED).await, 3.0, "three refusals counted");
    proxy.shutdown().await;
}

#[tokio::test]
async fn cache_hits_are_never_limited() {
    let origin = portal().await;
    let proxy = limited(&origin, "requests_per_minute = 1\nburst = 1", "").await;
    let script = proxy.url("/static/app.js");
    let client = session("one");
    let first = get(&script, &[("cookie", "x=1")]).await;
    assert_eq!(first.status, 200, "the miss spends the only request");
    for i in 0..30 {
        let hit = get(&script, &[("cookie", "x=1")]).await;
        assert_eq!(hit.status, 200, "hit {i} is served");
        assert!(
            hit.cache_status().starts_with("digue; hit"),
            "{}",
            hit.cache_status()
        );
    }
    assert_eq!(origin.count("/static/app.js"), 1);
    let miss = get(&proxy.url("/static/other.js"), &[("cookie", "x=1")]).await;
    assert_eq!(miss.status, 429, "the budget was spent: a miss is refused");
    let other = get(&proxy.url("/page"), &[("cookie", &client)]).await;
    assert_eq!(other.status, 200, "a session is not the network's budget");
    assert_eq!(proxy.metric(LIMITED).await, 1.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_network_key_puts_every_session_of_an_address_on_one_budget() {
    let origin = portal().await;
    let proxy = limited(
        &origin,
        "requests_per_minute = 60\nburst = 2\nkey = \"network\"",
        "",
    )
    .await;
    let page = proxy.url("/p");
    for id in ["a", "b"] {
        let got = get(&page, &[("cookie", &session(id))]).await;
        assert_eq!(got.status, 200);
    }
    let third = get(&page, &[("cookie", &session("c"))]).await;
    assert_eq!(third.status, 429, "one address, one budget");
    let elsewhere = get_from("127.0.0.2".parse().expect("ip"), &page, &[]).await;
    assert_eq!(elsewhere.status, 200, "another address has its own");
    proxy.shutdown().await;
}

#[tokio::test]
async fn waiting_room_answers_and_staff_networks_are_never_limited() {
    let origin = portal().await;
    let proxy = Digue::new(&origin.url())
        .site("[site.client_limit]\nrequests_per_minute = 1\nburst = 1")
        .admission("new_users_per_minute = 1\nburst = 1\nbypass_cidrs = [\"127.0.0.3/32\"]")
        .start()
        .await;
    let entry = proxy.url(support::ENTRY);
    let first = get(&entry, &[]).await;
    assert_eq!(
        first.status, 200,
        "the first visitor is let in, spending its budget"
    );
    let mut waiting = support::Browser::default();
    for i in 0..20 {
        let got = waiting.poll(&proxy).await;
        assert_eq!(got.status, 503, "poll {i}: the line answers, never a 429");
    }
    let staff = "127.0.0.3".parse().expect("ip");
    for i in 0..5 {
        let got = get_from(staff, &proxy.url("/p"), &[]).await;
        assert_eq!(
            got.status, 200,
            "staff request {i}: bypass_cidrs are never limited"
        );
    }
    assert_eq!(proxy.metric(LIMITED).await, 0.0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn huge_and_odd_session_cookies_cost_one_budget_each_and_break_nothing() {
    let origin = portal().await;
    let proxy = limited(&origin, "requests_per_minute = 60\nburst = 2", "").await;
    let page = proxy.url("/p");
    let huge = format!("JSESSIONID={}", "A".repeat(12 * 1024));
    let odd: &[&str] = &[
        &huge,
        "JSESSIONID=",
        "jsessionid=x, JSESSIONID=y",
        "=; ; JSESSIONID",
        "JSESSIONID=\"quoted value\"",
    ];
    for cookie in odd {
        for i in 0..2 {
            let got = get(&page, &[("cookie", cookie)]).await;
            assert!(
                got.status == 200 || got.status == 429,
                "{cookie:.40}: request {i} answered {}",
                got.status
            );
        }
    }
    // The huge one has its own budget of two, now spent.
    let got = get(&page, &[("cookie", &huge)]).await;
    assert_eq!(got.status, 429, "a huge value is one client like any other");
    // Bytes outside ASCII, sent raw.
    let raw = support::raw(
        proxy.addr,
        b"GET /p HTTP/1.1\r\nHost: x\r\nCookie: JSESSIONID=\xff\xfe\x80\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw:.200}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_limit_is_checked_with_key_paths() {
    let origin = portal().await;
    let bad = Digue::new(&origin.url())
        .site("[site.client_limit]\nburst = 0\nrate = 3")
        .toml();
    let errors = match digue::preflight::parse(&bad) {
        Ok(_) => panic!("an invalid client_limit is refused"),
        Err(e) => e.to_string(),
    };
    for expected in [
        "site[0].client_limit.requests_per_minute",
        "site[0].client_limit.burst",
        "site[0].client_limit.rate",
    ] {
        assert!(errors.contains(expected), "{expected} in {errors}");
    }
}

#[test]
fn the_shipped_pronote_setting_is_valid_once_uncommented() {
    let shipped = include_str!("../config.toml");
    let start = shipped
        .find("# [site.client_limit]")
        .expect("config.toml shows a client_limit");
    let (before, rest) = shipped.split_at(start);
    let end = rest.find("\n\n").unwrap_or(rest.len());
    let block: String = rest[..end]
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(kv) if kv.starts_with('[') || kv.contains(" = ") => kv,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let text = format!("{before}{block}{}", &rest[end..]);
    let config = digue::preflight::parse(&text).expect("the shipped setting parses");
    let limit = config.sites[0]
        .client_limit
        .clone()
        .expect("the table is read");
    assert_eq!(limit.requests_per_minute.get(), 120);
    assert_eq!(limit.burst.get(), 30);
    assert_eq!(
        limit.key,
        digue::config::ClientKey::Session,
        "session first"
    );
    let off = digue::preflight::parse(shipped).expect("config.toml parses");
    assert!(off.sites[0].client_limit.is_none(), "off by default");
}

#[tokio::test]
async fn a_reload_keeps_the_budgets_unless_the_limit_changes() {
    let origin = portal().await;
    let dir = support::TempDir::new("client-limit-reload");
    let file = dir.path().join("digue.toml");
    let config = |rpm: u32| {
        Digue::new(&origin.url())
            .site(&format!(
                "[site.client_limit]\nrequests_per_minute = {rpm}\nburst = 1"
            ))
            .admin()
    };
    let proxy = config(1).start_in(&file).await;
    let page = proxy.url("/p");
    assert_eq!(get(&page, &[]).await.status, 200);
    assert_eq!(get(&page, &[]).await.status, 429, "the budget is spent");
    proxy.app().reload().expect("the same file reloads");
    assert_eq!(
        get(&page, &[]).await.status,
        429,
        "a reload does not refill anyone's budget"
    );
    std::fs::write(&file, config(2).toml()).expect("config file writable");
    proxy.app().reload().expect("a new limit reloads");
    assert_eq!(
        get(&page, &[]).await.status,
        200,
        "a new limit starts new budgets"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_limited_client_gets_a_stale_copy_rather_than_a_429_when_one_may_stand_in() {
    let origin = Origin::fixed(&[("cache-control", "max-age=1")], "actualités").await;
    let proxy = limited(
        &origin,
        "requests_per_minute = 1\nburst = 1",
        "[site.cache]\nstale_while_revalidate = \"0s\"\nstale_if_error = \"1h\"",
    )
    .await;
    let news = proxy.url("/actualites");
    assert_eq!(
        get(&news, &[]).await.status,
        200,
        "the miss spends the budget"
    );
    proxy.advance(Duration::from_secs(2));
    let stale = get(&news, &[]).await;
    assert_eq!(
        stale.status,
        200,
        "the expired copy stands in: {}",
        stale.text()
    );
    assert_eq!(stale.text(), "actualités");
    assert!(
        stale.cache_status().contains("fwd=stale"),
        "{}",
        stale.cache_status()
    );
    assert_eq!(origin.count("/actualites"), 1, "the origin was spared");
    assert_eq!(
        get(&proxy.url("/other"), &[]).await.status,
        429,
        "nothing to stand in: refused"
    );
    proxy.shutdown().await;
}
