//! Cluster mode end to end: several digue nodes, in this process, sharing
//! one line and one admission budget per site through a real Redis that
//! each test starts on a free port (and may kill, or restart empty).
//!
//! Nodes share a secret file and differ by `node_id`; they refresh their
//! view of the line every 100 ms. Every client is a small cookie jar
//! ([`Browser`]) that polls as the waiting page does (JSON). Every wait is
//! bounded; rates are chosen so that a line either stands still for the
//! whole test or moves fast enough to watch.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde_json::Value;
use tokio::time::{Instant, sleep};

use support::redis::{Redis, ShardedRedis, redis_cli};
use support::{
    Browser, Digue, ENTRY, Got, Origin, Proxy, TempDir, admission_table, get, page, signed_ticket,
    site_section, unix_now, unused_ports, wait_for, wait_until,
};

const REACHABLE: &str = "shared store reachable";
const UNREACHABLE: &str = "shared store UNREACHABLE";
const CALLS: &str = "digue_cluster_redis_calls_total";
/// Long enough for a node to connect, refresh and hear the others.
const SETTLE: Duration = Duration::from_secs(5);
/// Every client here comes from 127.0.0.1: one network may take many tickets.
const ONE_NETWORK: &str = "tickets_per_network_per_minute = 100000";

// ---- nodes ----

/// What the nodes of one test share: Redis, the portal, the secret.
struct Cluster {
    redis: Redis,
    origin: Origin,
    secret: PathBuf,
    _dir: TempDir,
}

impl Cluster {
    async fn start(origin: Origin) -> Cluster {
        let dir = TempDir::new("cluster");
        Cluster {
            redis: Redis::start().await,
            origin,
            secret: dir.secret(),
            _dir: dir,
        }
    }

    /// A node named `id`, admin API open; more `[cluster]` keys and site
    /// keys may follow.
    fn node(&self, id: &str) -> Digue {
        Digue::new(&self.origin.url())
            .admin()
            .secret(&self.secret)
            .cluster(&format!(
                "redis_url = \"{}\"\nrefresh_interval = \"100ms\"\nnode_id = \"{id}\"",
                self.redis.url()
            ))
    }

    /// A node whose autopilot decides quickly (300 ms), aiming at 50 ms,
    /// from 600 new users a minute.
    fn piloted(&self, id: &str) -> Digue {
        self.node(id)
            .site(
                "[site.autopilot]\nenabled = true\ninterval = \"100ms\"\n\
                 rate_interval = \"300ms\"\ntarget_latency = \"50ms\"\n",
            )
            .admission(&gate("new_users_per_minute = 600"))
    }

    /// Nodes A and B with these waiting-room keys, each reaching Redis and
    /// seeing the other.
    async fn pair(&self, keys: &str) -> (Proxy, Proxy) {
        let a = self.gated("a", keys).await;
        let b = self.gated("b", keys).await;
        all_ready(&[&a, &b]).await;
        (a, b)
    }

    /// A node named `id` whose waiting room has these keys.
    async fn gated(&self, id: &str, keys: &str) -> Proxy {
        self.node(id).admission(&gate(keys)).start().await
    }
}

/// The keys of a waiting room where one network may take many tickets.
fn gate(keys: &str) -> String {
    format!("{ONE_NETWORK}\n{keys}")
}

async fn readyz(node: &Proxy) -> String {
    get(&node.admin_url("/readyz"), &[]).await.text()
}

/// Waits until `/readyz` contains `needle`.
async fn wait_readyz(node: &Proxy, needle: &str, limit: Duration) {
    let what = format!("/readyz says {needle:?}");
    wait_for(&what, limit, async || {
        let text = readyz(node).await;
        if text.contains(needle) {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
}

/// Waits until every node reaches Redis and sees all the gated nodes.
async fn all_ready(nodes: &[&Proxy]) {
    for node in nodes {
        wait_readyz(node, REACHABLE, SETTLE).await;
        let n = nodes.len() as f64;
        node.wait_metric("digue_cluster_nodes", |v| v == n, SETTLE)
            .await;
    }
}

/// Waits until `node` has refreshed its view of the lines since this call.
/// An idle node calls Redis only from its refresh loop, one call a tick,
/// counted as the call starts, one tick after the other: two more calls
/// mean that a whole refresh began and ended after this point.
async fn wait_for_a_refresh(node: &Proxy) {
    let before = node.metric(CALLS).await;
    node.wait_metric(CALLS, |now| now >= before + 2.0, Duration::from_secs(2))
        .await;
}

/// The Redis round-trips counted by all these nodes.
async fn calls(nodes: &[&Proxy]) -> f64 {
    let mut total = 0.0;
    for node in nodes {
        total += node.metric(CALLS).await;
    }
    total
}

// ---- clients ----

/// What a JSON client may get at the gate: nothing else is acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Through to the portal, or `{"state":"admitted"}` for a ticket whose turn came.
    Admitted,
    Queued {
        position: u64,
        approximate: bool,
    },
    Closed,
}

/// Classifies an answer, failing on anything that is not the portal's page,
/// the admitted JSON or the waiting room (a 502, a 504, another 5xx...).
fn answer(got: &Got) -> Answer {
    match got.status.as_u16() {
        200 if got.header("content-type") == Some("application/json") => {
            assert_eq!(got.json()["state"], "admitted", "{}", got.text());
            Answer::Admitted
        }
        200 => {
            assert_eq!(got.text(), page(ENTRY), "the portal's page");
            Answer::Admitted
        }
        503 => {
            let j = got.json();
            assert!(
                got.header("retry-after").is_some(),
                "the waiting room says when to poll again: {j}"
            );
            match j["state"].as_str() {
                Some("queued") => Answer::Queued {
                    position: j["position"].as_u64().expect("a numeric position"),
                    approximate: j["approximate"].as_bool().expect("an approximate flag"),
                },
                Some("closed") => Answer::Closed,
                _ => panic!("a 503 that is not the waiting room: {j}"),
            }
        }
        status => panic!(
            "only the portal's page or the waiting room, never {status}: {}",
            got.text()
        ),
    }
}

/// Polls `node` with `browser` until it is admitted (`admitted`, within
/// `limit`), failing if it is handed a new ticket meanwhile (`keeps`).
async fn admitted_keeping_its_ticket(
    browser: &mut Browser,
    node: &Proxy,
    limit: Duration,
    admitted: &str,
    keeps: &str,
) {
    let ticket = browser.ticket.clone();
    wait_for(admitted, limit, async || {
        let got = browser.poll(node).await;
        let seen = answer(&got);
        if seen == Answer::Admitted {
            return Ok(());
        }
        assert_eq!(browser.ticket, ticket, "{keeps}: {seen:?}");
        Err(got.text())
    })
    .await;
}

fn queued_position(got: &Got) -> u64 {
    match answer(got) {
        Answer::Queued { position, .. } => position,
        other => panic!("queued, not {other:?}: {}", got.text()),
    }
}

// ---- one line ----

#[tokio::test]
async fn arrivals_alternating_between_nodes_stand_in_one_line_and_a_ticket_is_honoured_by_any_node()
{
    let cluster = Cluster::start(Origin::portal().await).await;
    // One admission at once, then one a second: the arrivals below take
    // milliseconds, so nobody's turn comes while they arrive.
    let keys = "new_users_per_minute = 60\nburst = 1";
    let (a, b) = cluster.pair(keys).await;

    // Arrival i reaches B when i is even, A when odd.
    let nodes = [&b, &a];
    let mut first = Browser::default();
    let got = first.poll(&b).await;
    assert_eq!(answer(&got), Answer::Admitted, "the burst lets one in");
    let mut arrivals = Vec::new();
    let mut positions = Vec::new();
    for i in 1..10 {
        let mut browser = Browser::default();
        let got = browser.poll(nodes[i % 2]).await;
        positions.push(queued_position(&got));
        assert!(browser.ticket.is_some(), "arrival {i} holds a ticket");
        arrivals.push(browser);
    }
    assert!(
        positions.windows(2).all(|w| w[1] > w[0]),
        "arrivals alternating between A and B get strictly increasing positions: {positions:?}"
    );
    assert_eq!(
        cluster.origin.count(ENTRY),
        1,
        "queued arrivals never reach the portal"
    );

    // Arrival 3 got its ticket from A; B reads it, keeps its place.
    let mut from_a = arrivals[2].clone();
    let issued = from_a.ticket.clone();
    let got = from_a.poll(&b).await;
    assert_eq!(
        queued_position(&got),
        positions[2],
        "B gives A's ticket the place A gave it"
    );
    assert_eq!(from_a.ticket, issued, "B issues no new ticket for it");

    wait_for(
        "the ticket from A is admitted on B when its turn comes (at about 3 s)",
        Duration::from_secs(8),
        async || {
            let got = from_a.poll(&b).await;
            if answer(&got) == Answer::Admitted {
                Ok(())
            } else {
                Err(got.text())
            }
        },
    )
    .await;
    assert!(from_a.pass.is_some(), "B hands out a pass for A's ticket");
    assert!(from_a.ticket.is_none(), "and clears the ticket");
    let got = from_a.poll(&a).await;
    assert_eq!(got.status, 200, "the pass from B lets it through on A");
    assert_eq!(got.text(), page(ENTRY), "the portal's page");
}

#[tokio::test]
async fn the_admission_budget_holds_across_three_nodes_instead_of_tripling() {
    let cluster = Cluster::start(Origin::portal().await).await;
    let keys = "new_users_per_minute = 600\nburst = 1";
    let a = cluster.gated("a", keys).await;
    let b = cluster.gated("b", keys).await;
    let c = cluster.gated("c", keys).await;
    all_ready(&[&a, &b, &c]).await;
    let nodes = [&a, &b, &c];

    let start = Instant::now();
    let mut admitted_by = [0_usize; 3];
    let mut waiting = Vec::new();
    for i in 0..60 {
        let mut browser = Browser::default();
        match answer(&browser.poll(nodes[i % 3]).await) {
            Answer::Admitted => admitted_by[i % 3] += 1,
            Answer::Queued { .. } => waiting.push(browser),
            Answer::Closed => panic!("the site is open"),
        }
    }
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let mut still = Vec::new();
        for (j, mut browser) in waiting.into_iter().enumerate() {
            let n = (j + round) % 3;
            match answer(&browser.poll(nodes[n]).await) {
                Answer::Admitted => admitted_by[n] += 1,
                Answer::Queued { .. } => still.push(browser),
                Answer::Closed => panic!("the site is open"),
            }
        }
        waiting = still;
        round += 1;
        sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let admitted: usize = admitted_by.iter().sum();
    // The budget: the burst (1), then 10 a second. Slack of 3 for the
    // rounding of Redis's clock against ours; the clock here starts before
    // the first arrival and stops after the last poll, which only helps.
    let bound = 1.0 + 10.0 * elapsed + 3.0;
    println!(
        "budget across 3 nodes: {admitted} admitted in {elapsed:.2} s \
         (by node {admitted_by:?}), bound {bound:.1}, a budget per node would allow ~{:.0}",
        3.0 * (1.0 + 10.0 * elapsed)
    );
    assert!(
        admitted as f64 <= bound,
        "3 nodes admit {admitted} in {elapsed:.2} s, more than one budget allows ({bound:.1})"
    );
    assert!(
        admitted >= 10,
        "the line moves at the budget's pace ({admitted} admitted in {elapsed:.2} s)"
    );
    assert!(
        admitted_by.iter().all(|n| *n > 0),
        "every node admits its share of the line: {admitted_by:?}"
    );
    assert!(
        !waiting.is_empty(),
        "60 arrivals outlast 3 s at 10 a second"
    );
}

// ---- purges and live settings ----

#[tokio::test]
async fn resuming_admissions_live_lets_no_burst_through_the_shared_budget() {
    let cluster = Cluster::start(Origin::portal().await).await;
    // A burst of 10 is one second of the budget at 600 a minute.
    let keys = "new_users_per_minute = 600\nburst = 10";
    let (a, b) = cluster.pair(keys).await;

    a.patch_admission(r#"{"new_users_per_minute":0}"#).await;
    // Paused for longer than it takes a bucket to fill up again.
    sleep(Duration::from_millis(1500)).await;
    a.patch_admission(r#"{"new_users_per_minute":600}"#).await;
    b.wait_metric(
        "digue_admission_rate_per_minute{site=\"portal\"}",
        |rate| rate == 600.0,
        Duration::from_secs(1),
    )
    .await;

    let started = Instant::now();
    let mut admitted = 0;
    for i in 0..20 {
        let node = if i % 2 == 0 { &a } else { &b };
        if answer(&Browser::default().poll(node).await) == Answer::Admitted {
            admitted += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // At the rate: 10 a second from the moment of the change, plus slack
    // for the clocks; the stale bucket would have let all 10 of the burst in.
    let bound = 10.0 * (elapsed + 0.3) + 1.0;
    assert!(
        f64::from(admitted) <= bound,
        "{admitted} of 20 newcomers admitted in {elapsed:.2} s just after resuming (bound {bound:.1})"
    );
}

/// Nodes A and B in front of a page kept a minute, each having fetched it.
async fn pair_holding_a_page() -> (Cluster, Proxy, Proxy) {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "bonjour").await;
    let cluster = Cluster::start(origin).await;
    let a = cluster.node("a").start().await;
    let b = cluster.node("b").start().await;
    for node in [&a, &b] {
        wait_readyz(node, REACHABLE, SETTLE).await;
        get(&node.url("/page"), &[]).await;
    }
    (cluster, a, b)
}

#[tokio::test]
async fn a_hard_purge_on_one_node_invalidates_the_copy_on_another_within_a_second() {
    let (cluster, a, b) = pair_holding_a_page().await;
    for node in [&a, &b] {
        let hit = get(&node.url("/page"), &[]).await;
        assert!(
            hit.cache_status().starts_with("digue; hit"),
            "each node holds a copy: {}",
            hit.cache_status()
        );
    }
    assert_eq!(cluster.origin.count("/page"), 2, "one fetch per node");

    let took = hard_purge_reaches(&a, &b, "portal", &[]).await;
    println!("purge on A reached B in {took:?}");
    assert_eq!(
        cluster.origin.count("/page"),
        3,
        "B fetched the page again from the portal"
    );
}

#[tokio::test]
async fn a_post_on_one_node_invalidates_the_copy_on_another() {
    let (_cluster, a, b) = pair_holding_a_page().await;
    let posted = support::send(support::request(Method::POST, &a.url("/page"), &[], "x=1")).await;
    assert!(
        posted.cache_status().ends_with("detail=invalidated"),
        "{}",
        posted.cache_status()
    );
    wait_for(
        "B stops serving its copy of the page A's POST changed",
        Duration::from_secs(1),
        async || {
            let status = get(&b.url("/page"), &[]).await.cache_status();
            if status.starts_with("digue; hit") {
                Err(status)
            } else {
                Ok(())
            }
        },
    )
    .await;
    let after = get(&b.url("/page"), &[]).await;
    assert!(
        after.cache_status().starts_with("digue; hit"),
        "refetched once, stored again"
    );
}

/// Hard-purges `/page` of `site` on `a` and waits until `b` stops serving
/// its copy, which must take less than a second; returns how long it took.
async fn hard_purge_reaches(
    a: &Proxy,
    b: &Proxy,
    site: &str,
    headers: &[(&str, &str)],
) -> Duration {
    let body = format!(r#"{{"site":"{site}","path":"/page","hard":true}}"#);
    let got = a.admin_call(Method::POST, "/admin/purge", &body).await;
    assert_eq!(got.status, 200, "the purge is accepted: {}", got.text());
    let purged = Instant::now();
    wait_for(
        "within 1 s of the purge on A, B stops serving its copy",
        Duration::from_secs(1),
        async || {
            let got = get(&b.url("/page"), headers).await;
            assert_eq!(got.status, 200, "{}", got.text());
            let status = got.cache_status();
            if status.starts_with("digue; hit") {
                Err(status)
            } else {
                Ok(())
            }
        },
    )
    .await;
    purged.elapsed()
}

/// Asserts that `node`'s `GET /admin/sites` shows the change made on A.
async fn shows_the_change(node: &Proxy, name: &str) {
    let got = node.admin_call(Method::GET, "/admin/sites", "").await;
    assert_eq!(got.status, 200, "{name}: {}", got.text());
    let admission = got.json()["sites"][0]["admission"].clone();
    assert_eq!(
        admission["mode"], "closed",
        "{name}'s /admin/sites shows the change: {admission}"
    );
    assert_eq!(
        admission["new_users_per_minute"], 120,
        "{name}'s /admin/sites shows the new rate: {admission}"
    );
}

const CHANGE: &str = r#"{"mode":"closed","new_users_per_minute":120}"#;

#[tokio::test]
async fn an_admin_change_on_one_node_applies_on_the_others_within_a_second() {
    let cluster = Cluster::start(Origin::portal().await).await;
    let keys = "new_users_per_minute = 600\nburst = 50";
    let (a, b) = cluster.pair(keys).await;
    assert_eq!(
        answer(&Browser::default().poll(&b).await),
        Answer::Admitted,
        "before the change B lets newcomers in"
    );

    a.patch_admission(CHANGE).await;
    let changed = Instant::now();
    wait_for(
        "within 1 s of the change on A, a newcomer on B finds the site closed",
        Duration::from_secs(1),
        async || {
            let got = Browser::default().poll(&b).await;
            if answer(&got) == Answer::Closed {
                Ok(())
            } else {
                Err(got.text())
            }
        },
    )
    .await;
    println!("admin change on A reached B in {:?}", changed.elapsed());
    shows_the_change(&b, "B").await;
}

#[tokio::test]
async fn nodes_started_after_an_admin_change_pick_it_up_from_redis() {
    let cluster = Cluster::start(Origin::portal().await).await;
    let keys = "new_users_per_minute = 600\nburst = 50";
    let a = cluster.gated("a", keys).await;
    all_ready(&[&a]).await;
    a.patch_admission(CHANGE).await;

    // Each start is a new race between the node's two connections to
    // Redis; five starts make a lost race all but certain to show.
    for i in 0..5 {
        let name = format!("late node {i}");
        let late = cluster.gated(&format!("late{i}"), keys).await;
        wait_readyz(&late, REACHABLE, SETTLE).await;
        let what = format!(
            "{name}, started after the change and reaching Redis, picks the change up from Redis"
        );
        wait_for(&what, Duration::from_secs(2), async || {
            let got = late.admin_call(Method::GET, "/admin/sites", "").await;
            if got.json()["sites"][0]["admission"]["mode"] == "closed" {
                Ok(())
            } else {
                Err(got.text())
            }
        })
        .await;
        shows_the_change(&late, &name).await;
        assert_eq!(
            answer(&Browser::default().poll(&late).await),
            Answer::Closed,
            "newcomers on {name} find the site closed too"
        );
    }
}

// ---- Redis failing ----

#[tokio::test]
async fn killing_redis_mid_surge_keeps_sessions_and_places_and_admits_newcomers_at_a_local_share() {
    let mut cluster = Cluster::start(Origin::portal().await).await;
    let keys = "new_users_per_minute = 600\nburst = 2";
    let (a, b) = cluster.pair(keys).await;
    let nodes = [&a, &b];

    // The surge: the burst enters (one on each node), the rest queue.
    let mut admitted = Vec::new();
    let mut queued = Vec::new();
    for i in 0..40 {
        let mut browser = Browser::default();
        match answer(&browser.poll(nodes[i % 2]).await) {
            Answer::Admitted => admitted.push(browser),
            Answer::Queued { .. } => queued.push(browser),
            Answer::Closed => panic!("the site is open"),
        }
    }
    assert!(
        admitted.len() >= 2,
        "the burst of 2 entered: {}",
        admitted.len()
    );
    cluster.redis.kill();
    for node in nodes {
        wait_readyz(node, UNREACHABLE, Duration::from_secs(3)).await;
        assert!(
            readyz(node).await.contains("failing static"),
            "/readyz names the policy: {}",
            readyz(node).await
        );
        assert_eq!(
            node.metric("digue_cluster_store_up").await,
            0.0,
            "the metric says the store is down"
        );
    }

    // The back of the line: far from its turn for the whole outage.
    let mut far_back = queued.split_off(queued.len() - 10);
    // Newcomers arrive concurrently, 3 every 50 ms on each node (60 a
    // second each, far above the local share), while sessions and the
    // line keep polling.
    let mut arrivals = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut entered_on = [0_usize; 2];
    let (mut polls, mut sessions) = (0, 0);
    let mut slowest_local = Duration::ZERO;
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(2) {
        for n in [0, 1] {
            for _ in 0..3 {
                let url = nodes[n].url(ENTRY);
                arrivals.spawn(async move {
                    let sent = Instant::now();
                    let got = get(&url, &[("accept", "application/json")]).await;
                    (n, got, sent.elapsed())
                });
            }
        }
        let local = Instant::now();
        for browser in &mut admitted {
            for node in nodes {
                let got = browser.poll(node).await;
                assert_eq!(
                    got.status,
                    200,
                    "an admitted user keeps going while Redis is down: {}",
                    got.text()
                );
                sessions += 1;
            }
        }
        for (j, browser) in far_back.iter_mut().enumerate() {
            let got = browser.poll(nodes[(j + round) % 2]).await;
            match answer(&got) {
                Answer::Queued { approximate, .. } => assert!(
                    approximate,
                    "a queued user sees the waiting page, its ETA marked approximate: {}",
                    got.text()
                ),
                other => panic!("the back of the line keeps waiting, got {other:?}"),
            }
            polls += 1;
        }
        slowest_local = slowest_local.max(local.elapsed());
        // The front of the line shares a node's local budget with newcomers.
        for n in [0, 1] {
            let front = round % queued.len().max(1);
            if let Some(browser) = queued.get_mut(front) {
                match answer(&browser.poll(nodes[n]).await) {
                    Answer::Admitted => {
                        entered_on[n] += 1;
                        queued.remove(front);
                    }
                    Answer::Queued { .. } => {}
                    Answer::Closed => panic!("fail static, not closed"),
                }
            }
        }
        round += 1;
        sleep(Duration::from_millis(50)).await;
    }
    let mut newcomers = 0;
    let mut latencies = Vec::new();
    while let Some(done) = arrivals.join_next().await {
        let (n, got, took) = done.expect("a newcomer's request completes");
        newcomers += 1;
        latencies.push(took);
        match answer(&got) {
            Answer::Admitted => entered_on[n] += 1,
            Answer::Queued { approximate, .. } => {
                assert!(approximate, "an approximate ETA: {}", got.text());
            }
            Answer::Closed => panic!("fail static, not closed"),
        }
    }
    // Admissions are decided from the first request to the last answer.
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let median_newcomer = latencies[latencies.len() / 2];
    // 600/min over 2 known nodes: 5 a second each, burst 2/2 = 1; one more
    // for rounding at the window's edges.
    let bound = 1.0 + 5.0 * elapsed + 1.0;
    println!(
        "Redis down for {elapsed:.2} s: admitted {entered_on:?} by node (bound {bound:.1} each) \
         of {newcomers} newcomers (median answer in {median_newcomer:?}); {polls} polls from the \
         back and {sessions} session requests (slowest round {slowest_local:?})"
    );
    for (n, entered) in entered_on.iter().enumerate() {
        assert!(
            *entered as f64 <= bound,
            "node {n} admits {entered} in {elapsed:.2} s, more than its local share ({bound:.1})"
        );
        assert!(
            *entered as f64 >= 2.5 * elapsed,
            "node {n} admits newcomers at about its local share of 5 a second \
             (fail static, not closed): {entered} in {elapsed:.2} s"
        );
    }
}

#[tokio::test]
async fn restarting_redis_empty_keeps_one_global_order_without_reissuing_tickets() {
    let mut cluster = Cluster::start(Origin::portal().await).await;
    // One a second: the last of 30 tickets waits far longer than the test.
    let keys = "new_users_per_minute = 60\nburst = 1";
    let (a, b) = cluster.pair(keys).await;
    let nodes = [&a, &b];
    let mut last = Browser::default();
    for i in 0..30 {
        last = Browser::default();
        answer(&last.poll(nodes[i % 2]).await);
    }
    let before = queued_position(&last.poll(&a).await);
    let epoch = a.metric("digue_cluster_epoch").await;
    assert!(epoch >= 1.0, "an epoch is known: {epoch}");

    cluster.redis.kill();
    for node in nodes {
        wait_readyz(node, UNREACHABLE, Duration::from_secs(3)).await;
    }
    cluster.redis.restart_empty().await;
    for node in nodes {
        wait_readyz(node, REACHABLE, Duration::from_secs(10)).await;
        node.wait_metric("digue_cluster_epoch", |e| e > epoch, Duration::from_secs(2))
            .await;
    }

    let mut positions = Vec::new();
    for i in 0..6 {
        let node = nodes[i % 2];
        let mut newcomer = Browser::default();
        let position = queued_position(&newcomer.poll(node).await);
        let old = queued_position(&last.poll(node).await);
        assert!(
            position > old,
            "a ticket taken after the restart (position {position} on node {i}) stands \
             behind the last one taken before it (position {old})"
        );
        assert!(
            old <= before,
            "the line never moves back: the old ticket was at {before}, now at {old}"
        );
        positions.push(position);
    }
    assert!(
        positions.windows(2).all(|w| w[1] > w[0]),
        "after the restart, arrivals on A and B still make one line: {positions:?}"
    );
}

#[tokio::test]
async fn a_node_whose_view_is_a_moment_old_never_reissues_a_ticket_after_redis_restarts_empty() {
    let mut cluster = Cluster::start(Origin::portal().await).await;
    let keys = "new_users_per_minute = 60\nburst = 1";
    let (a, b) = cluster.pair(keys).await;
    for (i, node) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        let got = Browser::default().poll(node).await;
        assert!(
            matches!(answer(&got), Answer::Admitted | Answer::Queued { .. }),
            "arrival {i}: {}",
            got.text()
        );
    }
    wait_for_a_refresh(&b).await;
    // A surge on A, then Redis dies before B's next refresh (100 ms) has
    // seen all of it: B's view is a moment old, as in any real surge.
    let mut last = Browser::default();
    for _ in 0..10 {
        last = Browser::default();
        queued_position(&last.poll(&a).await);
    }
    cluster.redis.restart_empty().await;

    let position = wait_for(
        "B hands out tickets again within 10 s of Redis's return",
        Duration::from_secs(10),
        async || {
            // While B reconnects it fails static (admits at its share or
            // answers without a ticket); the first ticket it hands out counts.
            match answer(&Browser::default().poll(&b).await) {
                Answer::Queued {
                    position,
                    approximate: false,
                } => Ok(position),
                other => Err(other),
            }
        },
    )
    .await;
    let old = queued_position(&last.poll(&b).await);
    assert!(
        position > old,
        "the first ticket B hands out after the restart (position {position}) stands behind \
         the last ticket A handed out before it (position {old}); in front means its number \
         was handed out twice"
    );
}

#[tokio::test]
async fn a_ticket_whose_turn_came_just_before_redis_restarted_empty_keeps_its_turn() {
    let mut cluster = Cluster::start(Origin::portal().await).await;
    let keys = "new_users_per_minute = 600\nburst = 1";
    let (a, b) = cluster.pair(keys).await;
    let nodes = [&a, &b];
    let mut queued = Vec::new();
    for i in 0..30 {
        let mut browser = Browser::default();
        if let Answer::Queued { .. } = answer(&browser.poll(nodes[i % 2]).await) {
            queued.push(browser);
        }
    }
    // Ten turns a second: after a second the first tickets' turns have
    // come, and they may be claimed for the next 60 s (claim_window).
    sleep(Duration::from_secs(1)).await;
    let mut front = queued[2].clone();
    cluster.redis.kill();
    for node in nodes {
        wait_readyz(node, UNREACHABLE, Duration::from_secs(3)).await;
    }
    cluster.redis.restart_empty().await;
    for node in nodes {
        wait_readyz(node, REACHABLE, Duration::from_secs(10)).await;
    }

    admitted_keeping_its_ticket(
        &mut front,
        &a,
        Duration::from_secs(2),
        "the third in line is admitted after the restart",
        "the third in line, whose turn came a second before Redis restarted, keeps its \
         ticket; it was given a new one",
    )
    .await;
}

#[tokio::test]
async fn with_on_store_failure_closed_newcomers_find_the_site_closed_while_redis_is_down() {
    let mut cluster = Cluster::start(Origin::portal().await).await;
    let node = cluster
        .node("a")
        .cluster("on_store_failure = \"closed\"")
        .admission(&gate("new_users_per_minute = 600\nburst = 5"))
        .start()
        .await;
    all_ready(&[&node]).await;
    let mut inside = Browser::default();
    assert_eq!(answer(&inside.poll(&node).await), Answer::Admitted);

    cluster.redis.kill();
    wait_readyz(&node, "UNREACHABLE: failing closed", Duration::from_secs(3)).await;
    for _ in 0..5 {
        let got = Browser::default().poll(&node).await;
        assert_eq!(
            answer(&got),
            Answer::Closed,
            "a newcomer finds the site closed: {}",
            got.text()
        );
    }
    assert_eq!(
        inside.poll(&node).await.status,
        200,
        "a session admitted before keeps going"
    );
}

#[tokio::test]
async fn with_on_store_failure_open_newcomers_go_straight_through_while_redis_is_down() {
    let mut cluster = Cluster::start(Origin::portal().await).await;
    let node = cluster
        .node("a")
        .cluster("on_store_failure = \"open\"")
        .admission(&gate("new_users_per_minute = 60\nburst = 1"))
        .start()
        .await;
    all_ready(&[&node]).await;
    assert_eq!(
        answer(&Browser::default().poll(&node).await),
        Answer::Admitted
    );
    assert!(
        matches!(
            answer(&Browser::default().poll(&node).await),
            Answer::Queued { .. }
        ),
        "with Redis up the budget of 1 is spent"
    );

    cluster.redis.kill();
    wait_readyz(&node, "UNREACHABLE: failing open", Duration::from_secs(3)).await;
    for _ in 0..10 {
        let got = Browser::default().poll(&node).await;
        assert_eq!(got.status, 200, "a newcomer goes through: {}", got.text());
        assert_eq!(got.text(), page(ENTRY), "the portal's page");
    }
}

// ---- Redis load ----

/// Redis calls a second of all `nodes` when nobody arrives (view refreshes).
async fn idle_rate(nodes: &[&Proxy], over: Duration) -> f64 {
    let (c0, t0) = (calls(nodes).await, Instant::now());
    sleep(over).await;
    (calls(nodes).await - c0) / t0.elapsed().as_secs_f64()
}

#[tokio::test]
async fn each_admitted_user_costs_at_most_three_redis_calls_beyond_the_view_refreshes() {
    let cluster = Cluster::start(Origin::portal().await).await;
    let keys = "new_users_per_minute = 1200\nburst = 1";
    let (a, b) = cluster.pair(keys).await;
    let nodes = [&a, &b];
    let idle = idle_rate(&nodes, Duration::from_secs(2)).await;

    const N: usize = 40;
    let (c0, t0) = (calls(&nodes).await, Instant::now());
    let mut waiting = Vec::new();
    let mut admitted = 0;
    for i in 0..N {
        let mut browser = Browser::default();
        match answer(&browser.poll(nodes[i % 2]).await) {
            Answer::Admitted => admitted += 1,
            Answer::Queued { .. } => waiting.push(browser),
            Answer::Closed => panic!("the site is open"),
        }
    }
    let (c1, t1) = (calls(&nodes).await, Instant::now());
    let mut polls = 0;
    let mut round = 0;
    while !waiting.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "40 arrivals at 20 a second are all admitted within 10 s ({} still wait)",
            waiting.len()
        );
        let mut still = Vec::new();
        for (j, mut browser) in waiting.into_iter().enumerate() {
            polls += 1;
            match answer(&browser.poll(nodes[(j + round) % 2]).await) {
                Answer::Admitted => admitted += 1,
                Answer::Queued { .. } => still.push(browser),
                Answer::Closed => panic!("the site is open"),
            }
        }
        waiting = still;
        round += 1;
        sleep(Duration::from_millis(50)).await;
    }
    let (c2, t2) = (calls(&nodes).await, Instant::now());
    let arrivals = (c1 - c0) - idle * (t1 - t0).as_secs_f64();
    let total = (c2 - c0) - idle * (t2 - t0).as_secs_f64();
    let per_arrival = arrivals / N as f64;
    let per_admitted = total / admitted as f64;
    println!(
        "Redis calls, 2 nodes at 100 ms refresh: idle {idle:.1}/s; {N} arrivals cost {arrivals:.1} \
         ({per_arrival:.2} each); admitting all {admitted} through the line with {polls} polls \
         cost {total:.1} ({per_admitted:.2} per admitted user) beyond the refreshes, \
         in {:.2} s",
        (t2 - t0).as_secs_f64()
    );
    assert_eq!(admitted, N, "everybody got in");
    assert!(
        per_arrival <= 1.5,
        "an arrival costs about one Redis call, not {per_arrival:.2}"
    );
    assert!(
        per_admitted <= 3.0,
        "an admitted user costs at most 3 Redis calls beyond the refreshes, not {per_admitted:.2}"
    );
}

#[tokio::test]
async fn polling_waiting_tickets_is_answered_from_the_view_without_redis_calls() {
    let cluster = Cluster::start(Origin::portal().await).await;
    // One a minute: after the first, nobody's turn comes during the test.
    let keys = "new_users_per_minute = 1\nburst = 1";
    let (a, b) = cluster.pair(keys).await;
    let nodes = [&a, &b];
    let mut waiting = Vec::new();
    for i in 0..21 {
        let mut browser = Browser::default();
        if let Answer::Queued { .. } = answer(&browser.poll(nodes[i % 2]).await) {
            waiting.push(browser);
        }
    }
    assert_eq!(waiting.len(), 20, "all but the first wait");
    let idle = idle_rate(&nodes, Duration::from_secs(2)).await;

    let (c0, t0) = (calls(&nodes).await, Instant::now());
    let mut polls = 0_usize;
    while t0.elapsed() < Duration::from_secs(2) {
        for (j, browser) in waiting.iter_mut().enumerate() {
            queued_position(&browser.poll(nodes[(j + polls) % 2]).await);
            polls += 1;
        }
    }
    let (c1, t1) = (calls(&nodes).await, Instant::now());
    let extra = (c1 - c0) - idle * (t1 - t0).as_secs_f64();
    println!(
        "Redis calls, 2 nodes at 100 ms refresh: idle {idle:.1}/s; {polls} polls of waiting \
         tickets in {:.2} s cost {extra:.1} beyond the refreshes ({:.4} per poll)",
        (t1 - t0).as_secs_f64(),
        extra / polls as f64
    );
    assert!(polls >= 200, "enough polls to see a cost: {polls}");
    // The refresh ticks of 2 nodes (2 calls each) can fall either side of
    // the window's two ends: up to 8 calls of jitter.
    assert!(
        extra <= 8.0,
        "{polls} polls cost no Redis calls beyond the refreshes, not {extra:.1}"
    );
}

// ---- the line across closing and lost state ----

#[tokio::test]
async fn a_site_closed_for_longer_than_the_claim_window_reopens_with_its_line_in_order() {
    let cluster = Cluster::start(Origin::portal().await).await;
    // Two a second, everybody queued: the first ticket's turn comes at
    // once; if the line moved while closed, the second's would come half a
    // second later, and both would expire 10 s later.
    let keys =
        "new_users_per_minute = 120\nburst = 1\nclaim_window = \"10s\"\nmode = \"queue_all\"";
    let (a, b) = cluster.pair(keys).await;
    let mut first = Browser::default();
    let mut second = Browser::default();
    queued_position(&first.poll(&a).await);
    queued_position(&second.poll(&b).await);
    a.patch_admission(r#"{"mode": "closed"}"#).await;
    // Both nodes keep refreshing their view (every 100 ms) meanwhile.
    sleep(Duration::from_secs(12)).await;
    assert_eq!(answer(&first.poll(&b).await), Answer::Closed);
    a.patch_admission(r#"{"mode": "queue_all"}"#).await;

    admitted_keeping_its_ticket(
        &mut first,
        &b,
        Duration::from_secs(3),
        "the first in line is admitted soon after the reopening",
        "the first in line keeps its ticket across the closure, not sent to the back",
    )
    .await;
    assert_eq!(
        a.metric("digue_turns_missed_total{site=\"portal\"}").await,
        0.0,
        "no turn was handed out to holders who could not claim it"
    );
}

#[tokio::test]
async fn a_ticket_from_before_redis_lost_the_line_gets_a_new_place_at_the_end() {
    let cluster = Cluster::start(Origin::portal().await).await;
    let keys = "new_users_per_minute = 600\nburst = 1\nmode = \"queue_all\"";
    let a = cluster.gated("a", keys).await;
    all_ready(&[&a]).await;
    // Yesterday evening's ticket, signed with the cluster's key, from a
    // line that Redis no longer holds.
    let old = signed_ticket(&cluster.secret, "portal", 40_000, unix_now() - 3600);
    let mut holder = Browser::with_ticket(&old);
    let got = holder.poll(&a).await;
    assert_eq!(
        queued_position(&got),
        0,
        "its holder starts again at the end of today's (empty) line, not 40,000 back"
    );
    assert!(
        holder.ticket.as_ref().is_some_and(|t| *t != old),
        "with a new ticket"
    );
    let mut newcomer = Browser::default();
    answer(&newcomer.poll(&a).await);
    wait_until(
        "at 10/s a newcomer behind one ticket gets in within 2 s",
        Duration::from_secs(2),
        async || answer(&newcomer.poll(&a).await) == Answer::Admitted,
    )
    .await;
}

// ---- Redis Cluster (sharded) ----

/// `[[site]]` sections: each named site (served at `<name>.test`) gated by
/// a waiting room with `keys`.
fn sites(names: &[String], origin: &str, keys: &str) -> String {
    names
        .iter()
        .map(|name| {
            let host = format!("{name}.test");
            site_section(name, &host, origin, &admission_table(&gate(keys)))
        })
        .collect()
}

/// A node on a Redis Cluster: `redis` names the seed nodes.
async fn sharded_node(id: &str, redis: &str, secret: &Path, sites: &str) -> Proxy {
    Digue::without_site()
        .admin()
        .secret(secret)
        .cluster(redis)
        .cluster(&format!(
            "redis_cluster = true\nrefresh_interval = \"100ms\"\nnode_id = \"{id}\""
        ))
        .sites(sites)
        .start()
        .await
}

/// The admission settings `node` reports for `site`.
async fn admission_of(node: &Proxy, site: &str) -> Value {
    let got = node.admin_call(Method::GET, "/admin/sites", "").await;
    got.json()["sites"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == site))
        .map(|s| s["admission"].clone())
        .unwrap_or_else(|| panic!("{site} in /admin/sites: {}", got.text()))
}

#[tokio::test]
async fn on_a_sharded_redis_cluster_nodes_share_each_sites_line_and_budget_and_hear_each_other() {
    let begun = Instant::now();
    let redis = ShardedRedis::start().await;
    let cluster_up = begun.elapsed();
    // On each master: a site whose line stands still (one a second) and
    // one whose line moves (ten a second).
    let still: Vec<String> = (0..3).map(|i| redis.site_on(i, "line")).collect();
    let moving: Vec<String> = (0..3).map(|i| redis.site_on(i, "rate")).collect();
    // A subscribes through the master that serves the events channel, B
    // through another: B hears A only because the cluster forwards PUBLISH
    // to every node.
    let events_on = redis.owner("digue:events");
    let b_order = [(events_on + 1) % 3, (events_on + 2) % 3, events_on];
    let a_redis = format!("redis_url = \"{}\"", redis.url(events_on));
    let b_seeds: Vec<String> = b_order
        .iter()
        .map(|i| format!("\"{}\"", redis.url(*i)))
        .collect();
    let b_redis = format!("redis_urls = [{}]", b_seeds.join(", "));

    let origin = Origin::portal().await;
    let pages = Origin::fixed(&[("cache-control", "max-age=60")], "bonjour").await;
    let config = sites(
        &still,
        &origin.url(),
        "new_users_per_minute = 60\nburst = 1",
    ) + &sites(
        &moving,
        &origin.url(),
        "new_users_per_minute = 600\nburst = 1",
    ) + &site_section("pages", "pages.test", &pages.url(), "");
    let dir = TempDir::new("sharded");
    let secret = dir.secret();
    let a = sharded_node("a", &a_redis, &secret, &config).await;
    let b = sharded_node("b", &b_redis, &secret, &config).await;
    all_ready(&[&a, &b]).await;

    // One line per site, whichever node and whichever shard.
    let nodes = [&b, &a];
    for site in &still {
        let host = format!("{site}.test");
        let got = Browser::on(&host).poll(&b).await;
        assert_eq!(
            answer(&got),
            Answer::Admitted,
            "{site}: the burst lets one in"
        );
        let mut positions = Vec::new();
        let mut arrivals = Vec::new();
        for i in 1..7 {
            let mut browser = Browser::on(&host);
            positions.push(queued_position(&browser.poll(nodes[i % 2]).await));
            arrivals.push(browser);
        }
        assert!(
            positions.windows(2).all(|w| w[1] > w[0]),
            "{site}: arrivals alternating between A and B get strictly increasing positions: \
             {positions:?}"
        );
        // arrivals[0] came from A, arrivals[1] from B: each keeps its place
        // on the other node.
        for (k, other) in [(0, &b), (1, &a)] {
            let mut browser = arrivals[k].clone();
            let ticket = browser.ticket.clone();
            assert_eq!(
                queued_position(&browser.poll(other).await),
                positions[k],
                "{site}: the other node gives ticket {k} the place it got"
            );
            assert_eq!(browser.ticket, ticket, "{site}: and issues no new ticket");
        }
    }

    // One budget per site across the two nodes, on every shard.
    let start = Instant::now();
    let mut admitted = [[0_usize; 2]; 3];
    let mut waiting: Vec<(usize, Browser)> = Vec::new();
    for i in 0..40 {
        for (s, site) in moving.iter().enumerate() {
            let mut browser = Browser::on(&format!("{site}.test"));
            match answer(&browser.poll(nodes[i % 2]).await) {
                Answer::Admitted => admitted[s][i % 2] += 1,
                Answer::Queued { approximate, .. } => {
                    assert!(!approximate, "{site}: Redis answers: {approximate}");
                    waiting.push((s, browser));
                }
                Answer::Closed => panic!("{site} is open"),
            }
        }
    }
    let mut round = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        let mut still_waiting = Vec::new();
        for (j, (s, mut browser)) in waiting.into_iter().enumerate() {
            let n = (j + round) % 2;
            match answer(&browser.poll(nodes[n]).await) {
                Answer::Admitted => admitted[s][n] += 1,
                Answer::Queued { .. } => still_waiting.push((s, browser)),
                Answer::Closed => panic!("{} is open", moving[s]),
            }
        }
        waiting = still_waiting;
        round += 1;
        sleep(Duration::from_millis(50)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The burst (1), then 10 a second; 3 of slack for the rounding of
    // Redis's clock against ours.
    let bound = 1.0 + 10.0 * elapsed + 3.0;
    for (s, site) in moving.iter().enumerate() {
        let total: usize = admitted[s].iter().sum();
        println!(
            "{site} (master {s}): {total} admitted in {elapsed:.2} s by node [B, A] {:?}, \
             bound {bound:.1}; a budget per node would allow ~{:.0}",
            admitted[s],
            2.0 * (1.0 + 10.0 * elapsed)
        );
        assert!(
            total as f64 <= bound,
            "{site}: 2 nodes admit {total} in {elapsed:.2} s, more than one budget allows \
             ({bound:.1})"
        );
        assert!(
            total >= 10,
            "{site}: the line moves at the budget's pace ({total} in {elapsed:.2} s)"
        );
        assert!(
            admitted[s].iter().all(|n| *n > 0),
            "{site}: both nodes admit their share: {:?}",
            admitted[s]
        );
        assert!(
            waiting.iter().any(|(w, _)| *w == s),
            "{site}: 40 arrivals outlast 2.5 s at 10 a second"
        );
    }

    // A hard purge on A reaches B.
    for node in [&a, &b] {
        get(&node.url("/page"), &[("host", "pages.test")]).await;
        let hit = get(&node.url("/page"), &[("host", "pages.test")]).await;
        assert!(
            hit.cache_status().starts_with("digue; hit"),
            "each node holds a copy: {}",
            hit.cache_status()
        );
    }
    let purge_took = hard_purge_reaches(&a, &b, "pages", &[("host", "pages.test")]).await;

    // An admin change on A reaches B, and is kept in Redis for a node that
    // starts later (whose first seed is dead).
    let closed_site = &still[2];
    let host = format!("{closed_site}.test");
    let path = format!("/admin/sites/{closed_site}/admission");
    let got = a.admin_call(Method::PATCH, &path, CHANGE).await;
    assert_eq!(got.status, 200, "the change is accepted: {}", got.text());
    let changed = Instant::now();
    let what =
        format!("within 1 s of the change on A, a newcomer to {closed_site} on B finds it closed");
    wait_until(&what, Duration::from_secs(1), async || {
        answer(&Browser::on(&host).poll(&b).await) == Answer::Closed
    })
    .await;
    let change_took = changed.elapsed();
    // A port where nothing listens: connections to it are refused.
    let dead_seed = format!("redis://127.0.0.1:{}", unused_ports(1)[0]);
    let late_redis = redis
        .seeds()
        .replacen('[', &format!("[\"{dead_seed}\", "), 1);
    let late = sharded_node("late", &late_redis, &secret, &config).await;
    wait_readyz(&late, REACHABLE, SETTLE).await;
    wait_until(
        "a node started after the change picks it up from Redis within 2 s",
        Duration::from_secs(2),
        async || admission_of(&late, closed_site).await["mode"] == "closed",
    )
    .await;
    assert_eq!(
        admission_of(&late, closed_site).await["new_users_per_minute"],
        120,
        "with the new rate"
    );

    // Where the keys are: each master holds the lines of its own sites.
    let mut holders = Vec::new();
    for i in 0..3 {
        let keys = redis.keys_on(i);
        let tags: BTreeSet<String> = keys
            .iter()
            .filter_map(|k| Some(k.strip_prefix("{digue:")?.split_once('}')?.0.to_owned()))
            .collect();
        let expected: BTreeSet<String> = [still[i].clone(), moving[i].clone()].into();
        assert_eq!(
            tags, expected,
            "master {i} holds the lines of the sites whose hash tag it serves: {keys:?}"
        );
        holders.push(format!(
            "master {i} (port {}, slots {:?}): sites {tags:?} (slots {} and {}), {} keys",
            redis.ports[i],
            redis.slots[i],
            redis.keyslot(&format!("{{digue:{}}}", still[i])),
            redis.keyslot(&format!("{{digue:{}}}", moving[i])),
            keys.len()
        ));
    }
    println!(
        "Redis Cluster of 3 masters up in {cluster_up:?}; {}; events channel on master \
         {events_on}, settings on master {}, purges on master {}; purge reached B in \
         {purge_took:?}, admin change in {change_took:?}; whole test {:?}",
        holders.join("; "),
        redis.owner("digue:settings"),
        redis.owner("digue:purges"),
        begun.elapsed()
    );
}

#[tokio::test]
async fn when_one_shard_of_a_redis_cluster_dies_only_its_sites_fail_static_until_it_returns() {
    let mut redis = ShardedRedis::start().await;
    let lines: Vec<String> = (0..3).map(|i| redis.site_on(i, "line")).collect();
    let origin = Origin::portal().await;
    let config = sites(
        &lines,
        &origin.url(),
        "new_users_per_minute = 60\nburst = 1",
    );
    let dir = TempDir::new("sharded");
    let a = sharded_node("a", &redis.seeds(), &dir.secret(), &config).await;
    all_ready(&[&a]).await;
    for site in &lines {
        let host = format!("{site}.test");
        assert_eq!(
            answer(&Browser::on(&host).poll(&a).await),
            Answer::Admitted,
            "{site}: the burst lets one in"
        );
        assert!(
            matches!(
                answer(&Browser::on(&host).poll(&a).await),
                Answer::Queued {
                    approximate: false,
                    ..
                }
            ),
            "{site}: the next one gets a ticket from Redis"
        );
    }

    // The shard of the last site dies.
    let dead = 2;
    redis.kill(dead);
    wait_readyz(&a, UNREACHABLE, Duration::from_secs(3)).await;
    let died = Instant::now();
    let mut dead_answers = Vec::new();
    while died.elapsed() < Duration::from_secs(1) {
        for (i, site) in lines.iter().enumerate() {
            let got = Browser::on(&format!("{site}.test")).poll(&a).await;
            match (i == dead, answer(&got)) {
                (false, Answer::Queued { approximate, .. }) => assert!(
                    !approximate,
                    "{site}, on a live shard, still gets tickets from Redis: {}",
                    got.text()
                ),
                (false, other) => panic!("{site}, on a live shard, queues: {other:?}"),
                (true, Answer::Closed) => panic!("{site} fails static, not closed"),
                (true, other) => dead_answers.push(other),
            }
        }
        sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dead_answers.iter().all(|a| match a {
            Answer::Queued { approximate, .. } => *approximate,
            _ => true,
        }),
        "{}, on the dead shard, fails static: approximate places or the local share: \
         {dead_answers:?}",
        lines[dead]
    );

    // It returns (empty, with its slots): the node reconnects by itself.
    redis.restart(dead).await;
    let back = Instant::now();
    wait_readyz(&a, REACHABLE, Duration::from_secs(10)).await;
    let reconnected = back.elapsed();
    let host = format!("{}.test", lines[dead]);
    let what = format!(
        "{}, back on its shard, gets tickets from Redis again",
        lines[dead]
    );
    let left = Duration::from_secs(10).saturating_sub(back.elapsed());
    wait_for(&what, left, async || {
        match answer(&Browser::on(&host).poll(&a).await) {
            Answer::Queued {
                approximate: false, ..
            } => Ok(()),
            other => Err(other),
        }
    })
    .await;
    println!(
        "one shard of 3 killed: its site failed static ({} answers), the others kept their \
         tickets from Redis; restarted, the node was back in {reconnected:?}",
        dead_answers.len()
    );
}

#[tokio::test]
async fn a_backend_drained_on_one_node_is_drained_on_the_others_and_on_nodes_started_later() {
    let cluster = Cluster::start(Origin::portal().await).await;
    let a = cluster.node("a").start().await;
    let b = cluster.node("b").start().await;
    for node in [&a, &b] {
        wait_readyz(node, REACHABLE, SETTLE).await;
    }
    let backend = cluster.origin.url();
    let drained = a
        .admin_call(
            Method::PATCH,
            "/admin/sites/portal/backends",
            &format!(r#"{{"backend": "{backend}", "state": "drain"}}"#),
        )
        .await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    let state = async |node: &Proxy| {
        let got = node.admin_call(Method::GET, "/admin/sites", "").await;
        got.json()["sites"][0]["origin"]["backends"][0]["state"].clone()
    };
    wait_for(
        "B shows the backend draining",
        Duration::from_secs(2),
        async || {
            let s = state(&b).await;
            if s == "drain" { Ok(()) } else { Err(s) }
        },
    )
    .await;
    let late = cluster.node("late").start().await;
    wait_readyz(&late, REACHABLE, SETTLE).await;
    wait_for(
        "a node started later picks the drain up from Redis",
        Duration::from_secs(2),
        async || {
            let s = state(&late).await;
            if s == "drain" { Ok(()) } else { Err(s) }
        },
    )
    .await;
}

#[tokio::test]
async fn one_node_at_a_time_decides_the_admission_rate_for_the_whole_cluster() {
    let origin = Origin::portal().await;
    origin.set_delay(Duration::from_millis(100));
    let cluster = Cluster::start(origin).await;
    let a = cluster.piloted("a").start().await;
    let b = cluster.piloted("b").start().await;
    all_ready(&[&a, &b]).await;
    // Per-user pages through both nodes, slower than the target: twenty
    // pupils on each.
    let traffic: Vec<_> = [&a, &b]
        .iter()
        .flat_map(|node| (0..20).map(move |p| node.url(&format!("/eleve/{p}/"))))
        .map(|base| {
            tokio::spawn(async move {
                for n in 0..200 {
                    let _ = get(&format!("{base}{n}"), &[]).await;
                }
            })
        })
        .collect();
    let rate = async |node: &Proxy| {
        let got = node.admin_call(Method::GET, "/admin/sites", "").await;
        got.json()["sites"][0]["admission"]["new_users_per_minute"].as_u64()
    };
    wait_for("the rate is cut", Duration::from_secs(10), async || match (
        rate(&a).await,
        rate(&b).await,
    ) {
        (Some(x), Some(y)) if x < 600 && y < 600 => Ok(()),
        other => Err(other),
    })
    .await;
    for t in traffic {
        t.abort();
    }
    let decided = async |node: &Proxy| {
        let got = node.admin_call(Method::GET, "/admin/sites", "").await;
        got.json()["sites"][0]["autopilot"]["decisions"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["loop"] == "admission"))
    };
    let deciders = [decided(&a).await, decided(&b).await];
    assert_eq!(
        deciders.iter().filter(|d| **d).count(),
        1,
        "one node decided, the other applied its rate: {deciders:?}"
    );
}

#[tokio::test]
async fn the_deciding_node_judges_on_what_every_node_saw() {
    let origin = Origin::portal().await;
    origin.set_delay(Duration::from_millis(100));
    let cluster = Cluster::start(origin).await;
    let a = cluster.piloted("a").start().await;
    let b = cluster.piloted("b").start().await;
    all_ready(&[&a, &b]).await;
    let port = cluster.redis.port;
    let mut holder = String::new();
    wait_for(
        "a node takes the lease",
        Duration::from_secs(5),
        async || {
            holder = redis_cli(
                port,
                &["GET", &digue::cluster::pilot_lease_keys("portal")[0]],
            )
            .trim()
            .to_owned();
            if holder.is_empty() { Err(()) } else { Ok(()) }
        },
    )
    .await;
    let (decider, other) = if holder == "a" { (&a, &b) } else { (&b, &a) };
    // Slow per-user pages through the other node only: the decider sees
    // none of them itself.
    let traffic: Vec<_> = (0..20)
        .map(|p| other.url(&format!("/eleve/{p}/")))
        .map(|base| {
            tokio::spawn(async move {
                for n in 0..200 {
                    let _ = get(&format!("{base}{n}"), &[]).await;
                }
            })
        })
        .collect();
    let sites = async |node: &Proxy| {
        node.admin_call(Method::GET, "/admin/sites", "")
            .await
            .json()
    };
    wait_for(
        "the decider cuts the rate on the other node's latencies",
        Duration::from_secs(10),
        async || {
            let site = sites(decider).await["sites"][0].clone();
            match site["admission"]["new_users_per_minute"].as_u64() {
                Some(rate) if rate < 600 => Ok(()),
                _ => Err(site["autopilot"]["decisions"].clone()),
            }
        },
    )
    .await;
    for t in traffic {
        t.abort();
    }
    let cut = "digue_autopilot_decisions_total{direction=\"down\",loop=\"admission\",\
               reason=\"latency\",site=\"portal\"}";
    assert!(
        decider.metrics().await.contains(cut),
        "the decider cut for latency"
    );
    assert!(
        !other.metrics().await.contains(cut),
        "the other node decided nothing"
    );
    assert_eq!(
        redis_cli(
            port,
            &["GET", &digue::cluster::pilot_lease_keys("portal")[0]]
        )
        .trim(),
        holder,
        "still the decider"
    );
}

/// `GET /admin/sites` of a node's first site.
async fn first_site(node: &Proxy) -> Value {
    let got = node.admin_call(Method::GET, "/admin/sites", "").await;
    got.json()["sites"][0].clone()
}

#[tokio::test]
async fn a_rate_sent_under_an_older_autopilot_lease_is_dropped_and_an_operator_s_change_is_not() {
    let cluster = Cluster::start(Origin::portal().await).await;
    let (a, b) = cluster.pair("new_users_per_minute = 600").await;
    let port = cluster.redis.port;
    let rate_on = async |node: &Proxy, rate: u64| {
        let what = format!("{rate} new users a minute");
        wait_for(&what, Duration::from_secs(5), async || {
            let site = first_site(node).await;
            match site["admission"]["new_users_per_minute"].as_u64() {
                Some(r) if r == rate => Ok(()),
                other => Err(other),
            }
        })
        .await;
    };
    let patch = r#"{"new_users_per_minute":420}"#;
    let got = a
        .admin_call(Method::PATCH, "/admin/sites/portal/admission", patch)
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    rate_on(&b, 420).await;

    // Rates as a lease holder sends them, in the stored settings' format.
    let stored: Value =
        serde_json::from_str(&redis_cli(port, &["HGET", "digue:settings", "portal"]))
            .expect("the settings are kept as JSON");
    let under_lease = |rate: u64, concurrency: u64, fence: u64| {
        let mut settings = stored.clone();
        settings["admission"]["new_users_per_minute"] = rate.into();
        settings["origin_concurrency"] = concurrency.into();
        let event = serde_json::json!({
            "kind": "settings", "site": "portal", "settings": settings,
            "from": "ghost", "fence": fence,
        });
        redis_cli(port, &["PUBLISH", "digue:events", &event.to_string()]);
    };
    under_lease(300, 64, 7);
    rate_on(&a, 300).await;
    rate_on(&b, 300).await;
    // A holder that stalled past its lease sends its rate late, after the
    // next holder's (fence 7): every node drops it.
    under_lease(900, 33, 6);
    for node in [&a, &b] {
        node.wait_metric(
            "digue_cluster_fenced_rates_total",
            |n| n == 1.0,
            Duration::from_secs(5),
        )
        .await;
        let site = first_site(node).await;
        assert_eq!(
            site["admission"]["new_users_per_minute"], 300,
            "not applied"
        );
        assert_eq!(site["origin"]["origin_concurrency"], 64, "nothing of it");
    }
    // A holder's own late send is refused at the source: Redis keeps the
    // later holder's settings, and nothing goes out.
    let cluster_a = a.app().cluster.clone().expect("cluster mode");
    let send = async |rate: u64, fence: u64| {
        let mut settings = stored.clone();
        settings["admission"]["new_users_per_minute"] = rate.into();
        let settings = serde_json::from_value(settings).expect("live settings");
        let from = cluster_a.node.clone();
        let site = "portal".to_owned();
        let fence = Some(fence);
        cluster_a
            .publish(&digue::cluster::Event::Settings {
                site,
                settings,
                from,
                fence,
            })
            .await;
    };
    send(250, 8).await;
    rate_on(&b, 250).await;
    send(950, 7).await;
    let kept: Value = serde_json::from_str(&redis_cli(port, &["HGET", "digue:settings", "portal"]))
        .expect("JSON");
    assert_eq!(
        kept["admission"]["new_users_per_minute"], 250,
        "kept: fence 8"
    );
    assert_eq!(
        redis_cli(port, &["HGET", "digue:settings", "portal#fence"]).trim(),
        "8"
    );
    // An operator's change carries no fence: it always applies.
    let got = b
        .admin_call(Method::PATCH, "/admin/sites/portal/admission", patch)
        .await;
    assert_eq!(got.status, 200, "{}", got.text());
    rate_on(&a, 420).await;
    assert_eq!(
        b.metric("digue_cluster_fenced_rates_total").await,
        1.0,
        "the refused send never reached B"
    );
}

#[tokio::test]
async fn each_autopilot_lease_taken_gets_a_higher_fence() {
    let cluster = Cluster::start(Origin::portal().await).await;
    let a = cluster.piloted("a").start().await;
    let b = cluster.piloted("b").start().await;
    all_ready(&[&a, &b]).await;
    let port = cluster.redis.port;
    let [lease, fence] = digue::cluster::pilot_lease_keys("portal");
    let held = async || {
        let mut now = (String::new(), 0_u64);
        wait_for(
            "a node holds the lease",
            Duration::from_secs(5),
            async || {
                let holder = redis_cli(port, &["GET", &lease]).trim().to_owned();
                let fence = redis_cli(port, &["GET", &fence])
                    .trim()
                    .parse()
                    .unwrap_or(0);
                now = (holder.clone(), fence);
                if holder.is_empty() {
                    Err(now.clone())
                } else {
                    Ok(())
                }
            },
        )
        .await;
        now
    };
    let (first, fence_then) = held().await;
    assert!(
        fence_then > 1_600_000_000_000,
        "a new fence starts at Redis's clock in ms: {fence_then}"
    );
    // The holder stalls: its lease lapses, and whichever node takes it
    // next gets the next fence.
    redis_cli(port, &["DEL", &lease]);
    let (next, fence_now) = held().await;
    assert_eq!(fence_now, fence_then + 1, "{first} then {next}");
    // Both nodes have read the fence (each reads the lease every 300 ms);
    // then Redis is restored from an old snapshot: its fence is back to 5.
    // The next holder's is still above what the nodes applied.
    sleep(Duration::from_millis(700)).await;
    redis_cli(port, &["SET", &fence, "5"]);
    redis_cli(port, &["DEL", &lease]);
    let (_, fence_after) = held().await;
    assert!(
        fence_after > fence_now,
        "{fence_after} after a rollback, {fence_now} before"
    );
}
