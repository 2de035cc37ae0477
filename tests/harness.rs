//! The harness's own promises, which the other tests lean on: a metric
//! that is not there fails its test instead of reading 0, a panic in the
//! test origin fails its test, a child that loses the race for its port is
//! seen losing it, and moving a proxy's clock moves the time digue reads.

mod support;

use std::time::Duration;

use support::redis::Redis;
use support::{Origin, Proxy, get};

#[tokio::test]
#[should_panic(expected = "/metrics has no sample digue_requests_totl")]
async fn a_metric_missing_from_metrics_fails_the_test_instead_of_reading_zero() {
    let origin = Origin::fixed(&[], "page").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let renamed = "digue_requests_totl{outcome=\"hit\",site=\"portal\"}";
    assert_eq!(proxy.metric(renamed).await, 0.0, "unreachable");
}

#[tokio::test]
async fn advancing_a_proxys_clock_ages_what_digue_has_stored() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page").await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    get(&proxy.url("/"), &[]).await;
    let before = proxy.now();
    proxy.advance(Duration::from_secs(30));
    assert!(
        proxy.now() - before >= Duration::from_secs(30),
        "Proxy::now reads the moved clock"
    );
    let hit = get(&proxy.url("/"), &[]).await;
    let age: u64 = hit
        .header("age")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("a hit carries Age: {:?}", hit.headers));
    assert!(
        (30..60).contains(&age),
        "the stored copy is 30 s older, and still fresh: Age {age}, {}",
        hit.cache_status()
    );
    assert_eq!(origin.count("/"), 1, "served from the cache");
}

#[tokio::test]
#[should_panic(expected = "the handler broke")]
async fn a_panic_in_the_test_origin_fails_the_test_at_its_join() {
    let origin = Origin::start(|_| panic!("the handler broke")).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let got = get(&proxy.url("/"), &[]).await;
    assert_eq!(got.status, 502, "digue answers for the broken origin");
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
#[should_panic(expected = "the handler broke")]
async fn a_panic_in_the_test_origin_fails_the_test_even_without_a_join() {
    let origin = Origin::start(|_| panic!("the handler broke")).await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    get(&proxy.url("/"), &[]).await;
}

#[tokio::test]
async fn a_redis_server_whose_port_is_taken_is_seen_losing_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = taken.local_addr().expect("bound").port();
    let lost = tokio::time::timeout(Duration::from_secs(10), Redis::start_on(port))
        .await
        .expect("redis-server gives up within 10 s");
    let log = lost.err().expect("no Redis can start on a taken port");
    assert!(
        log.contains("exited"),
        "the child's exit is what tells: {log}"
    );
}
