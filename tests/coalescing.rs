//! Coalescing, the origin guard and stale serving end to end: a cold key is
//! fetched once, the origin never sees more than its concurrency, and when it
//! fails or crawls users get a stale copy or an honest page, never a hang.
#![allow(clippy::disallowed_methods)] // deadlines and timings of the test itself run on real time

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use support::{Got, Origin, Proxy, Reply, get, reply, request, send, tally};

const COALESCED: &str = "digue_cache_coalesced_total{site=\"portal\"}";
const STORES: &str = "digue_cache_stores_total{site=\"portal\"}";
const CONNECTIONS_OPEN: &str = "digue_connections_open";

/// How long a metric may take to reach its value.
const METRIC_LIMIT: Duration = Duration::from_secs(10);

/// Moved on digue's clock to expire a one-second TTL (`max-age=1`).
const PAST_ONE_SECOND: Duration = Duration::from_millis(1100);

/// `GET` on a spawned task, so many can be in flight at once.
fn spawn_get(
    url: String,
    headers: Vec<(&'static str, String)>,
) -> tokio::task::JoinHandle<(Got, Duration)> {
    tokio::spawn(async move {
        let started = Instant::now();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = get(&url, &headers).await;
        (got, started.elapsed())
    })
}

async fn join_all(tasks: Vec<tokio::task::JoinHandle<(Got, Duration)>>) -> Vec<(Got, Duration)> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("client task did not panic"));
    }
    out
}

/// What a switchable origin does with the next request.
const SERVE: u8 = 0;
const FAIL_503: u8 = 1;
const CLOSE: u8 = 2;

/// An origin that answers `max-age=1` "v1" until told to fail.
async fn switchable_origin() -> (Origin, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(SERVE));
    let m = mode.clone();
    let origin = Origin::start(move |_| match m.load(Ordering::SeqCst) {
        SERVE => reply(200, &[("cache-control", "max-age=1")], "v1"),
        FAIL_503 => reply(503, &[("content-type", "text/plain")], "en maintenance"),
        _ => Reply::Close,
    })
    .await;
    (origin, mode)
}

fn retry_after(r: &Got) -> u64 {
    r.header("retry-after")
        .unwrap_or_else(|| panic!("a {} page carries Retry-After", r.status))
        .parse()
        .expect("Retry-After is in seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_asking_for_one_cold_key_reach_the_origin_once() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "emploi du temps").await;
    origin.hold();
    let proxy = Proxy::start(&origin.url(), "", "").await;

    let tasks: Vec<_> = (0..100)
        .map(|_| spawn_get(proxy.url("/edt"), Vec::new()))
        .collect();
    origin.wait_for_total(1).await;
    proxy
        .wait_metric(COALESCED, |v| v == 99.0, METRIC_LIMIT)
        .await;
    assert_eq!(origin.total(), 1, "followers do not reach the origin");
    origin.release();
    let answers = join_all(tasks).await;

    assert_eq!(
        origin.count("/edt"),
        1,
        "the origin saw exactly one request"
    );
    for (r, _) in &answers {
        assert_eq!(r.status, 200, "every client gets the page");
        assert_eq!(
            r.text(),
            "emploi du temps",
            "every client gets the same body"
        );
    }
    let statuses: Vec<String> = answers.iter().map(|(r, _)| r.cache_status()).collect();
    let collapsed = statuses.iter().filter(|s| s.contains("collapsed")).count();
    assert_eq!(collapsed, 99, "followers say collapsed: {statuses:?}");
    let stored = statuses.iter().filter(|s| s.contains("stored")).count();
    assert_eq!(stored, 1, "the leader stored the answer: {statuses:?}");
    assert_eq!(
        proxy.metric(COALESCED).await,
        99.0,
        "99 requests waited on the leader's fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_private_answer_are_forwarded_on_their_own() {
    let origin = Origin::start(|seen| {
        let user = seen
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("nobody");
        reply(
            200,
            &[("cache-control", "private")],
            &format!("bulletin de {user}"),
        )
    })
    .await;
    origin.hold();
    let proxy = Proxy::start(&origin.url(), "", "").await;

    const CLIENTS: usize = 10;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|n| {
            spawn_get(
                proxy.url("/bulletin"),
                vec![("x-user", format!("eleve{n}"))],
            )
        })
        .collect();
    origin.wait_for_total(1).await;
    proxy
        .wait_metric(COALESCED, |v| v == (CLIENTS - 1) as f64, METRIC_LIMIT)
        .await;
    origin.release();
    let answers = join_all(tasks).await;

    for (n, (r, _)) in answers.iter().enumerate() {
        assert_eq!(r.status, 200, "client {n}: {}", r.cache_status());
        assert_eq!(
            r.text(),
            format!("bulletin de eleve{n}"),
            "client {n} sees its own private page, never the leader's"
        );
    }
    assert_eq!(
        origin.count("/bulletin"),
        CLIENTS,
        "each follower was forwarded on its own"
    );
    let hit_for_miss = answers
        .iter()
        .filter(|(r, _)| r.cache_status().contains("fwd=bypass; detail=hit-for-miss"))
        .count();
    assert_eq!(
        hit_for_miss,
        CLIENTS - 1,
        "followers are forwarded as hit-for-miss: {:?}",
        answers
            .iter()
            .map(|(r, _)| r.cache_status())
            .collect::<Vec<_>>()
    );

    let next = get(&proxy.url("/bulletin"), &[("x-user", "eleve99")]).await;
    assert_eq!(next.text(), "bulletin de eleve99");
    assert!(
        next.cache_status()
            .contains("fwd=bypass; detail=hit-for-miss"),
        "the key is remembered as uncacheable: {}",
        next.cache_status()
    );
    assert_eq!(
        origin.count("/bulletin"),
        CLIENTS + 1,
        "the next request went straight to the origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_never_gets_more_than_its_concurrency_and_the_excess_get_the_busy_page() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "devoirs").await;
    origin.set_delay(Duration::from_millis(1500));
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "origin_concurrency = 4\norigin_queue_timeout = \"500ms\"\n",
    )
    .await;

    let tasks: Vec<_> = (0..30)
        .map(|n| spawn_get(proxy.url(&format!("/devoirs/{n}")), Vec::new()))
        .collect();
    let answers = join_all(tasks).await;

    assert!(
        origin.peak_in_flight() <= 4,
        "the origin had {} requests in flight",
        origin.peak_in_flight()
    );
    let statuses = tally(answers.iter().map(|(r, _)| r.status.as_str()));
    let ok = statuses.get("200").copied().unwrap_or(0);
    let busy = statuses.get("503").copied().unwrap_or(0);
    assert_eq!(ok + busy, 30, "only pages or busy pages: {statuses:?}");
    assert_eq!(
        ok,
        origin.total(),
        "every 200 came from the origin, no busy answer reached it"
    );
    assert!(ok >= 4, "the first four got origin slots: {statuses:?}");
    assert!(
        busy >= 20,
        "the excess got the busy page: {statuses:?}, origin saw {}",
        origin.total()
    );
    for (r, elapsed) in answers.iter().filter(|(r, _)| r.status == 503) {
        assert!(
            *elapsed < Duration::from_millis(1500),
            "a busy page comes after about the queue timeout, not the origin's pace: {elapsed:?}"
        );
        assert!(retry_after(r) >= 1, "Retry-After asks for a pause");
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(
            r.text().contains("Le portail"),
            "French by default: {}",
            r.text()
        );
    }

    // Fill the four slots with held requests, then ask in English and in JSON.
    origin.set_delay(Duration::ZERO);
    origin.hold();
    let before = origin.total();
    let holders: Vec<_> = (0..4)
        .map(|n| spawn_get(proxy.url(&format!("/cahier/{n}")), Vec::new()))
        .collect();
    origin.wait_for_total(before + 4).await;
    let en = spawn_get(
        proxy.url("/cahier/en"),
        vec![("accept-language", "en-GB,en;q=0.9".to_owned())],
    );
    let json = spawn_get(
        proxy.url("/cahier/json"),
        vec![("accept", "application/json".to_owned())],
    );
    let (en, _) = en.await.expect("no panic");
    let (json, json_elapsed) = json.await.expect("no panic");
    origin.release();
    for (r, _) in join_all(holders).await {
        assert_eq!(r.status, 200, "held requests finish once released");
    }

    assert_eq!(en.status, 503);
    assert!(
        en.text().contains("The portal is very busy"),
        "English on request: {}",
        en.text()
    );
    retry_after(&en);
    assert_eq!(json.status, 503);
    assert!(
        json_elapsed < Duration::from_millis(1500),
        "busy within about the queue timeout: {json_elapsed:?}"
    );
    assert!(
        json.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        json.header("content-type")
    );
    let body: serde_json::Value = serde_json::from_slice(&json.body).expect("valid JSON");
    assert_eq!(body["state"], "busy", "{body}");
    assert!(body["retry_after"].as_u64().is_some(), "{body}");
    retry_after(&json);
    assert!(
        origin.peak_in_flight() <= 4,
        "the origin had {} requests in flight",
        origin.peak_in_flight()
    );
}

/// Caches "/menu" for 1 s, switches the origin to `failure`, moves digue's
/// clock past the copy's expiry, and asks again: a stale copy must beat the failure.
async fn stale_after(failure: u8, what: &str) -> Origin {
    let (origin, mode) = switchable_origin().await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.cache]\nstale_while_revalidate = \"0s\"\n",
    )
    .await;
    assert_eq!(get(&proxy.url("/menu"), &[]).await.text(), "v1");
    mode.store(failure, Ordering::SeqCst);
    proxy.advance(PAST_ONE_SECOND);

    let r = get(&proxy.url("/menu"), &[]).await;
    assert_eq!(r.status, 200, "a stale copy beats {what}");
    assert_eq!(r.text(), "v1");
    assert!(
        r.cache_status().contains("fwd=stale"),
        "{}",
        r.cache_status()
    );
    origin
}

#[tokio::test]
async fn a_stale_copy_is_served_when_the_origin_answers_503_after_expiry() {
    let origin = stale_after(FAIL_503, "a 503").await;
    assert_eq!(origin.count("/menu"), 2, "the origin was asked again");
}

#[tokio::test]
async fn a_stale_copy_is_served_when_the_origin_closes_connections() {
    let origin = stale_after(CLOSE, "a broken connection").await;
    assert!(origin.count("/menu") >= 2, "the origin was asked again");
}

#[tokio::test]
async fn without_a_stale_copy_a_broken_or_missing_origin_gives_a_502_page() {
    let closing = Origin::start(|_| Reply::Close).await;
    let proxy = Proxy::start(&closing.url(), "", "").await;
    let r = get(&proxy.url("/notes"), &[]).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("Le portail ne répond pas"),
        "French by default: {}",
        r.text()
    );
    assert!(retry_after(&r) >= 1);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(closing.count("/notes") >= 1, "the origin was asked");

    let down = Origin::fixed(&[], "never").await;
    let url = down.url();
    drop(down);
    tokio::task::yield_now().await;
    let proxy = Proxy::start(&url, "", "").await;
    let r = get(&proxy.url("/notes"), &[]).await;
    assert_eq!(r.status, 502, "connection refused: {}", r.text());
    assert!(
        r.text().contains("Le portail ne répond pas"),
        "{}",
        r.text()
    );
    assert!(retry_after(&r) >= 1);
}

#[tokio::test]
async fn an_origin_slower_than_its_timeout_gives_a_504_page_at_once() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "trop tard").await;
    origin.hold();
    let proxy = Proxy::start(&origin.url(), "", "origin_timeout = \"300ms\"\n").await;
    let started = Instant::now();
    let r = get(&proxy.url("/lent"), &[]).await;
    let elapsed = started.elapsed();
    origin.release();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        elapsed < Duration::from_secs(1),
        "answered at the origin timeout, not later: {elapsed:?}"
    );
    assert!(r.text().contains("Le portail"), "{}", r.text());
    assert!(retry_after(&r) >= 1);
    assert!(
        r.cache_status().contains("origin-timeout"),
        "{}",
        r.cache_status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_stale_while_revalidate_everyone_gets_the_stale_copy_while_one_refresh_runs() {
    let version = Arc::new(AtomicU8::new(1));
    let v = version.clone();
    let origin = Origin::start(move |_| match v.load(Ordering::SeqCst) {
        1 => reply(200, &[("cache-control", "max-age=1")], "v1"),
        _ => reply(200, &[("cache-control", "max-age=60")], "v2"),
    })
    .await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.cache]\nstale_while_revalidate = \"30s\"\n",
    )
    .await;
    assert_eq!(get(&proxy.url("/actu"), &[]).await.text(), "v1");
    proxy.advance(PAST_ONE_SECOND);
    version.store(2, Ordering::SeqCst);
    origin.hold();

    let tasks: Vec<_> = (0..20)
        .map(|_| spawn_get(proxy.url("/actu"), Vec::new()))
        .collect();
    let answers = join_all(tasks).await;
    for (r, elapsed) in &answers {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "v1", "the stale body is served at once");
        assert!(
            r.cache_status()
                .contains("fwd=stale; detail=stale-while-revalidate"),
            "{}",
            r.cache_status()
        );
        assert!(
            *elapsed < Duration::from_secs(1),
            "nobody waits for the held refresh: {elapsed:?}"
        );
    }
    origin.wait_for_total(2).await;
    assert_eq!(
        origin.count("/actu"),
        2,
        "exactly one background refresh reached the origin"
    );

    origin.release();
    proxy.wait_metric(STORES, |v| v == 2.0, METRIC_LIMIT).await;
    let r = get(&proxy.url("/actu"), &[]).await;
    assert_eq!(r.text(), "v2", "the refreshed body is served");
    assert!(
        r.cache_status().starts_with("digue; hit"),
        "{}",
        r.cache_status()
    );
    assert_eq!(origin.count("/actu"), 2, "the refresh was the only fetch");
}

#[tokio::test]
async fn an_expired_entry_with_an_etag_is_revalidated_and_the_304_merged() {
    let origin = Origin::start(|seen| {
        let inm = seen.headers.get("if-none-match").map(|v| v.as_bytes());
        if inm == Some(b"\"v1\"".as_slice()) {
            reply(
                304,
                &[
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=60"),
                    ("x-version", "2"),
                ],
                "",
            )
        } else {
            reply(
                200,
                &[
                    ("etag", "\"v1\""),
                    ("cache-control", "max-age=1"),
                    ("x-version", "1"),
                    ("content-type", "text/plain"),
                ],
                "circulaire",
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
    let first = get(&proxy.url("/circ"), &[]).await;
    assert_eq!(first.header("x-version"), Some("1"));
    proxy.advance(PAST_ONE_SECOND);

    let r = get(&proxy.url("/circ"), &[]).await;
    let conditional = origin.last("/circ").expect("the origin was asked again");
    assert_eq!(
        conditional
            .headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok()),
        Some("\"v1\""),
        "the refresh is conditional on the stored ETag"
    );
    assert_eq!(r.status, 200, "the client asked unconditionally");
    assert_eq!(r.text(), "circulaire", "the stored body is kept");
    assert_eq!(
        r.header("x-version"),
        Some("2"),
        "the 304's headers replace the stored ones"
    );
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(
        r.cache_status().contains("fwd=stale") && r.cache_status().contains("fwd-status=304"),
        "{}",
        r.cache_status()
    );

    let again = get(&proxy.url("/circ"), &[]).await;
    assert!(
        again.cache_status().starts_with("digue; hit"),
        "fresh again after the 304: {}",
        again.cache_status()
    );
    assert_eq!(again.header("x-version"), Some("2"));
    assert_eq!(origin.count("/circ"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_client_goes_away_does_not_strand_its_followers() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "cantine").await;
    origin.hold();
    let proxy = Proxy::start(&origin.url(), "", "").await;

    let leader = spawn_get(proxy.url("/cantine"), Vec::new());
    origin.wait_for_total(1).await;
    let follower = spawn_get(proxy.url("/cantine"), Vec::new());
    proxy
        .wait_metric(COALESCED, |v| v == 1.0, METRIC_LIMIT)
        .await;
    // The leader's client reloads the page (closes its connection): the
    // fetch it started goes on for the follower.
    let open = proxy.metric(CONNECTIONS_OPEN).await;
    leader.abort();
    // digue saw the connection close: the leader's request is gone.
    proxy
        .wait_metric(CONNECTIONS_OPEN, |now| now < open, METRIC_LIMIT)
        .await;
    origin.release();

    let (r, _) = follower.await.expect("no panic");
    assert_eq!(r.status, 200, "{}: {}", r.cache_status(), r.text());
    assert_eq!(r.text(), "cantine");
    let after = get(&proxy.url("/cantine"), &[]).await;
    assert!(
        after.cache_status().starts_with("digue; hit"),
        "the leader's fetch was stored: {}",
        after.cache_status()
    );
    assert_eq!(origin.count("/cantine"), 1, "one fetch for both");
}

#[tokio::test]
async fn posts_beyond_the_origin_concurrency_get_the_busy_page() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "ok").await;
    origin.hold();
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "origin_concurrency = 2\norigin_queue_timeout = \"300ms\"\n",
    )
    .await;
    let holders: Vec<_> = (0..2)
        .map(|n| {
            let url = proxy.url(&format!("/pronote/appelfonction/{n}"));
            tokio::spawn(async move { send(request(Method::POST, &url, &[], "{}")).await })
        })
        .collect();
    origin.wait_for_total(2).await;
    let started = Instant::now();
    let r = send(request(
        Method::POST,
        &proxy.url("/pronote/appelfonction/3"),
        &[],
        "{}",
    ))
    .await;
    let elapsed = started.elapsed();
    origin.release();
    for h in holders {
        assert_eq!(h.await.expect("no panic").status, 200);
    }
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        elapsed < Duration::from_secs(1),
        "busy at the queue timeout: {elapsed:?}"
    );
    assert!(origin.peak_in_flight() <= 2);
    assert_eq!(
        origin.total(),
        2,
        "the refused POST never reached the origin"
    );
}
