//! Scheduled openings end to end: the pre-queue before `opens_at`, the
//! draw at the opening (uniform, the same on every node and after a
//! restart), latecomers behind every pre-queued ticket, cancelling, the
//! admin API and `digue check`.
//!
//! The event opens at a fixed moment ([`OPENS_AT`], in 2030) and digue's
//! clock is moved there ([`Proxy::advance`]): with a fixed secret, the
//! draw is the same on every run, so the bound on Kendall's tau is one a
//! uniform draw passes by construction, not by luck. The line's own rate
//! is 0 while positions are read, so they stand still.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use digue::admission::draw::kendall_tau;
use http::Method;
use support::redis::Redis;
use support::{Browser, Digue, Got, Origin, Proxy, TempDir, wait_until};

const OPENS_AT: &str = "2030-01-07T08:00:00+01:00";
const SECRET: &str = "events-test-secret-0123456789abcdef";
const VISITORS: usize = 50;

fn opens_unix() -> u64 {
    digue::config::parse_rfc3339(OPENS_AT).expect("valid").0
}

/// A waiting room holding its line (rate 0, so positions stand still)
/// with the event `rentree` opening at [`OPENS_AT`]; plenty of tickets
/// per network (every visitor comes from 127.0.0.1).
fn gated(extra: &str) -> String {
    format!(
        "new_users_per_minute = 0\nburst = 1\ntickets_per_network_per_minute = 100000\n\
         [[site.admission.event]]\nname = \"rentree\"\nopens_at = \"{OPENS_AT}\"\n\
         message = \"Rentrée : ouverture des inscriptions\"\n{extra}"
    )
}

fn secret(dir: &TempDir) -> PathBuf {
    dir.write("secret", SECRET)
}

/// Moves `proxy`'s clock to `offset` seconds after the opening (negative:
/// before), from wherever it is now (never back).
fn move_to(proxy: &Proxy, offset: i64) {
    let target = opens_unix() as i64 + offset;
    let now = digue::clock::unix_secs(proxy.app().clock.now().system) as i64;
    assert!(target >= now, "the clock only moves forward");
    proxy.advance(Duration::from_secs((target - now) as u64));
}

/// A pre-queue JSON answer's countdown, checking the contract.
fn prequeued(got: &Got) -> u64 {
    assert_eq!(got.status, 503, "the pre-queue answers 503: {}", got.text());
    let j = got.json();
    assert_eq!(j["state"], "prequeue", "{j}");
    assert_eq!(j["opens_at"], OPENS_AT, "{j}");
    assert!(
        j.get("position").is_none(),
        "no position before the draw: {j}"
    );
    assert_eq!(
        j["retry_after"].as_u64().map(|r| r.to_string()).as_deref(),
        got.header("retry-after"),
        "{j}"
    );
    j["opens_in_seconds"].as_u64().expect("a countdown")
}

/// A queued JSON answer's position.
fn position(got: &Got) -> u64 {
    assert_eq!(got.status, 503, "queued: {}", got.text());
    let j = got.json();
    assert_eq!(j["state"], "queued", "{j}");
    j["position"].as_u64().expect("a position")
}

/// `n` visitors join the pre-queue through `nodes` in turn.
async fn join(nodes: &[&Proxy], n: usize) -> Vec<Browser> {
    let mut visitors = Vec::new();
    for i in 0..n {
        let mut b = Browser::default();
        let left = prequeued(&b.poll(nodes[i % nodes.len()]).await);
        assert!(left > 0, "before the opening");
        assert!(b.ticket.is_some(), "visitor {i} holds a pre-queue ticket");
        visitors.push(b);
    }
    visitors
}

/// Each visitor's position on `node`.
async fn positions(node: &Proxy, visitors: &mut [Browser]) -> Vec<u64> {
    let mut out = Vec::new();
    for b in visitors.iter_mut() {
        out.push(position(&b.poll(node).await));
    }
    out
}

fn assert_a_permutation(positions: &[u64]) {
    let mut sorted = positions.to_vec();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..positions.len() as u64).collect::<Vec<_>>(),
        "every pre-queued visitor has a distinct place, and nobody is ahead of them: {positions:?}"
    );
}

#[tokio::test]
async fn fifty_visitors_of_the_pre_queue_are_admitted_in_a_drawn_order_unrelated_to_their_arrival()
{
    let origin = Origin::portal().await;
    let dir = TempDir::new("events");
    let proxy = Digue::new(&origin.url())
        .admin()
        .secret(&secret(&dir))
        .admission(&gated(""))
        .start()
        .await;
    move_to(&proxy, -29 * 60);
    let mut visitors = join(&[&proxy], VISITORS / 2).await;

    // Refreshing keeps the ticket and gives nothing new.
    let before = visitors[0].ticket.clone();
    let again = visitors[0].poll(&proxy).await;
    prequeued(&again);
    assert_eq!(
        visitors[0].ticket, before,
        "the same ticket, kept by its cookie"
    );
    assert!(
        again.header("set-cookie").is_none(),
        "no new ticket on a refresh"
    );
    // Arriving a minute before the opening: same chances, still no place.
    move_to(&proxy, -60);
    visitors.extend(join(&[&proxy], VISITORS - VISITORS / 2).await);

    move_to(&proxy, 1);
    let places = positions(&proxy, &mut visitors).await;
    assert_a_permutation(&places);
    let tau = kendall_tau(&places);
    eprintln!("Kendall tau of the draw against the arrival order: {tau:.3}");
    assert!(
        tau.abs() < 0.3,
        "the drawn order is unrelated to the arrival order (Kendall tau {tau}), nor reversed"
    );

    // Latecomers queue behind every pre-queued ticket, in their order.
    let mut late = vec![Browser::default(), Browser::default(), Browser::default()];
    let late_places = positions(&proxy, &mut late).await;
    assert_eq!(
        late_places,
        vec![50, 51, 52],
        "after the opening, FIFO behind the draw"
    );

    // The line moves: admissions come in the drawn order.
    proxy
        .patch_admission(r#"{"new_users_per_minute": 600, "burst": 1}"#)
        .await;
    // Round by round (100 ms of digue's time, plus the real time a round
    // takes: sometimes two turns), nobody gets in before someone ahead.
    let mut admitted_in: Vec<Option<usize>> = vec![None; VISITORS];
    for round in 0..400 {
        if admitted_in.iter().all(Option::is_some) {
            break;
        }
        proxy.advance(Duration::from_millis(100));
        for (i, b) in visitors.iter_mut().enumerate() {
            if admitted_in[i].is_some() {
                continue;
            }
            let got = b.poll(&proxy).await;
            if got.status == 200 {
                assert_eq!(got.json()["state"], "admitted");
                admitted_in[i] = Some(round);
            }
        }
    }
    let rounds: Vec<usize> = admitted_in
        .iter()
        .map(|r| r.expect("everyone got in"))
        .collect();
    let distinct: std::collections::BTreeSet<usize> = rounds.iter().copied().collect();
    assert!(
        distinct.len() >= VISITORS / 3,
        "admissions spread over rounds, so their order says something: {rounds:?}"
    );
    let mut by_place: Vec<usize> = (0..VISITORS).collect();
    by_place.sort_by_key(|&i| places[i]);
    for pair in by_place.windows(2) {
        assert!(
            rounds[pair[0]] <= rounds[pair[1]],
            "admitted in the order of the draw: place {} got in at round {}, place {} at round {}",
            places[pair[0]],
            rounds[pair[0]],
            places[pair[1]],
            rounds[pair[1]]
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_pre_queue_page_says_when_it_opens_in_french_first_with_a_countdown() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url())
        .admission(&gated(""))
        .start()
        .await;
    move_to(&proxy, -12 * 60 - 30);
    let html = support::get(&proxy.url(support::ENTRY), &[("accept", "text/html")]).await;
    assert_eq!(html.status, 503);
    assert_eq!(html.header("cache-control"), Some("no-store"));
    let text = html.text().replace("&#x27;", "'");
    assert!(
        text.contains(
            "Ouverture à 8 h 00 — vous êtes inscrit(e) dans la file ; votre place sera \
             tirée au sort à l'ouverture"
        ),
        "{text}"
    );
    assert!(text.contains("Ouverture dans 12 min "), "{text}");
    assert!(
        text.contains("role=\"timer\""),
        "the countdown is a timer: {text}"
    );
    assert!(
        text.contains("Rentrée : ouverture des inscriptions"),
        "{text}"
    );
    assert!(!text.contains("personnes devant vous"), "no position yet");
    let en = support::get(
        &proxy.url(support::ENTRY),
        &[
            ("accept", "text/html"),
            ("accept-language", "en-GB,en;q=0.9"),
        ],
    )
    .await;
    assert!(en.text().contains("Opening at 8:00"), "{}", en.text());
    proxy.shutdown().await;
}

#[tokio::test]
async fn pre_queue_tickets_survive_a_restart_and_the_draw_is_not_redrawn_by_one() {
    let origin = Origin::portal().await;
    let dir = TempDir::new("events-restart");
    let config = Digue::new(&origin.url())
        .secret(&secret(&dir))
        .state_file(&dir.join("state.json"))
        .admission(&gated(""));
    let proxy = config.clone().start().await;
    move_to(&proxy, -600);
    let mut visitors = join(&[&proxy], 20).await;
    proxy.shutdown().await;

    // Restarted in the pre-queue: the tickets still count.
    let proxy = config.clone().start().await;
    move_to(&proxy, -300);
    visitors.extend(join(&[&proxy], 10).await);
    prequeued(&visitors[0].poll(&proxy).await);
    move_to(&proxy, 1);
    let places = positions(&proxy, &mut visitors).await;
    assert_a_permutation(&places);
    proxy.shutdown().await;

    // Restarted after the draw: the same places.
    let proxy = config.start().await;
    move_to(&proxy, 30);
    let after = positions(&proxy, &mut visitors).await;
    assert_eq!(after, places, "a restart does not redraw");
    let mut late = Browser::default();
    assert_eq!(
        position(&late.poll(&proxy).await),
        30,
        "a newcomer after the restart is still behind the draw"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn two_cluster_nodes_draw_the_same_order_and_share_the_events_added_on_either() {
    let origin = Origin::portal().await;
    let redis = Redis::start().await;
    let dir = TempDir::new("events-cluster");
    let node = |id: &str| {
        Digue::new(&origin.url())
            .admin()
            .secret(&secret(&dir))
            .cluster(&format!(
                "redis_url = \"{}\"\nrefresh_interval = \"100ms\"\nnode_id = \"{id}\"",
                redis.url()
            ))
            .admission(&gated(""))
    };
    let a = node("a").start().await;
    let b = node("b").start().await;
    move_to(&a, -600);
    move_to(&b, -600);
    wait_until(
        "both nodes reach Redis",
        Duration::from_secs(5),
        async || {
            !a.app().snapshot().sites[0]
                .gate
                .as_ref()
                .expect("gated")
                .degraded()
                && !b.app().snapshot().sites[0]
                    .gate
                    .as_ref()
                    .expect("gated")
                    .degraded()
        },
    )
    .await;
    let mut visitors = join(&[&a, &b], 30).await;
    move_to(&a, 1);
    move_to(&b, 1);
    let on_a = positions(&a, &mut visitors).await;
    assert_a_permutation(&on_a);
    let on_b = positions(&b, &mut visitors).await;
    assert_eq!(on_a, on_b, "both nodes place every ticket alike");
    let tau = kendall_tau(&on_a);
    assert!(tau.abs() < 0.4, "unrelated to the arrival order: tau {tau}");
    let mut late = Browser::default();
    assert_eq!(
        position(&late.poll(&b).await),
        30,
        "latecomers behind the draw"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn cancelling_an_event_returns_to_normal_gating() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url())
        .admin()
        .admission(
            "new_users_per_minute = 600\n\
             [[site.admission.event]]\nname = \"rentree\"\nopens_at = \"2030-01-07T08:00:00+01:00\"\n",
        )
        .start()
        .await;
    move_to(&proxy, -60);
    let mut early = Browser::default();
    prequeued(&early.poll(&proxy).await);
    let listed = proxy
        .admin_call(Method::GET, "/admin/sites/portal/events", "")
        .await;
    assert_eq!(listed.status, 200);
    let j = listed.json();
    assert_eq!(j["events"][0]["name"], "rentree", "{j}");
    assert_eq!(j["events"][0]["phase"], "prequeue", "{j}");
    assert_eq!(j["events"][0]["prequeue_tickets"], 1, "{j}");
    assert_eq!(j["events"][0]["source"], "file", "{j}");

    let cancelled = proxy
        .admin_call(Method::DELETE, "/admin/sites/portal/events/rentree", "")
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    let got = early.poll(&proxy).await;
    assert_eq!(
        got.status,
        200,
        "the pre-queue ticket holder is a newcomer again, admitted at the configured pace: {}",
        got.text()
    );
    let mut newcomer = Browser::default();
    assert_eq!(newcomer.poll(&proxy).await.status, 200, "normal gating");
    let again = proxy
        .admin_call(Method::DELETE, "/admin/sites/portal/events/rentree", "")
        .await;
    assert_eq!(again.status, 404);
    proxy.shutdown().await;
}

#[tokio::test]
async fn events_added_through_the_admin_api_open_a_pre_queue_and_bad_ones_get_400() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url())
        .admin()
        .admission("new_users_per_minute = 600")
        .start()
        .await;
    let call = async |method: Method, body: &str| {
        proxy
            .admin_call(method, "/admin/sites/portal/events", body)
            .await
    };
    for (body, needle) in [
        (
            r#"{"name": "x", "opens_at": "2030-01-07T08:00:00"}"#,
            "opens_at: \\\"2030-01-07T08:00:00\\\" has no offset",
        ),
        (
            r#"{"name": "x", "opens_at": "2030-01-07T08:00:00+01:00", "prequeue_from": "2030-01-07T08:10:00+01:00"}"#,
            "prequeue_from: must be before opens_at",
        ),
        (
            r#"{"name": "x", "opens_at": "2030-01-07T08:00:00+01:00", "closes_at": "2030-01-07T07:00:00+01:00"}"#,
            "closes_at: must be after opens_at",
        ),
        (
            r#"{"name": "Rentrée!", "opens_at": "2030-01-07T08:00:00+01:00"}"#,
            "name: ",
        ),
        (
            r#"{"name": "x", "opens_at": "2020-01-07T08:00:00+01:00"}"#,
            "opens_at: is past",
        ),
        (
            r#"{"name": "x", "opens_at": "2030-01-07T08:00:00+01:00", "colour": "red"}"#,
            "unknown field",
        ),
        (r#"{"name": "x"}"#, "missing field"),
        ("not json", "bad JSON body"),
    ] {
        let got = call(Method::POST, body).await;
        assert_eq!(got.status, 400, "{body} is refused: {}", got.text());
        assert!(
            got.text().contains(needle),
            "{body}: {needle} in {}",
            got.text()
        );
    }
    let listed = call(Method::GET, "").await.json();
    assert_eq!(
        listed["events"],
        serde_json::json!([]),
        "nothing half-added"
    );

    let added = call(
        Method::POST,
        &format!(
            r#"{{"name": "brevet", "opens_at": "{OPENS_AT}", "message": "Résultats du brevet"}}"#
        ),
    )
    .await;
    assert_eq!(added.status, 201, "{}", added.text());
    assert_eq!(
        call(
            Method::POST,
            &format!(r#"{{"name": "brevet", "opens_at": "{OPENS_AT}"}}"#)
        )
        .await
        .status,
        409,
        "one event per name"
    );
    let missing = proxy
        .admin_call(Method::GET, "/admin/sites/nope/events", "")
        .await;
    assert_eq!(missing.status, 404);

    move_to(&proxy, -10 * 60);
    let mut visitor = Browser::default();
    prequeued(&visitor.poll(&proxy).await);
    let cancelled = call(Method::DELETE, r#"{"name": "brevet"}"#).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(visitor.poll(&proxy).await.status, 200, "back to normal");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_events_rate_applies_from_its_opening_to_its_closing() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url())
        .admission(
            "new_users_per_minute = 60\n\
             [[site.admission.event]]\nname = \"rentree\"\nopens_at = \"2030-01-07T08:00:00+01:00\"\n\
             closes_at = \"2030-01-07T09:00:00+01:00\"\nnew_users_per_minute = 1200\n",
        )
        .start()
        .await;
    let rate = "digue_admission_rate_per_minute{site=\"portal\"}";
    move_to(&proxy, -60);
    assert_eq!(proxy.metric(rate).await, 60.0, "the file's rate before");
    move_to(&proxy, 1);
    proxy
        .wait_metric(rate, |r| r == 1200.0, Duration::from_secs(5))
        .await;
    move_to(&proxy, 3600);
    proxy
        .wait_metric(rate, |r| r == 60.0, Duration::from_secs(5))
        .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_operators_change_during_the_event_outlasts_its_closing() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url())
        .admin()
        .admission(
            "new_users_per_minute = 60\n\
             [[site.admission.event]]\nname = \"rentree\"\nopens_at = \"2030-01-07T08:00:00+01:00\"\n\
             closes_at = \"2030-01-07T09:00:00+01:00\"\nnew_users_per_minute = 1200\n",
        )
        .start()
        .await;
    let rate = "digue_admission_rate_per_minute{site=\"portal\"}";
    move_to(&proxy, 1);
    proxy
        .wait_metric(rate, |r| r == 1200.0, Duration::from_secs(5))
        .await;
    proxy
        .patch_admission(r#"{"new_users_per_minute": 300}"#)
        .await;
    move_to(&proxy, 3600);
    // Two ticks of the opening clock (every 500 ms) see the closing.
    let ticks = proxy.now();
    wait_until("the closing is seen", Duration::from_secs(5), async || {
        proxy.now() >= ticks + Duration::from_millis(1200)
    })
    .await;
    assert_eq!(
        proxy.metric(rate).await,
        300.0,
        "the operator's rate stays; the file's does not come back over it"
    );
    proxy.shutdown().await;
}

#[test]
fn check_reports_bad_events_with_their_key_paths() {
    let dir = TempDir::new("events-check");
    let file = dir.write(
        "digue.toml",
        "[server]\nlisten = \"127.0.0.1:0\"\n[[site]]\nname = \"p\"\nhosts = [\"*\"]\n\
         origin = \"http://127.0.0.1:1\"\n[site.admission]\npaths = [\"/login\"]\n\
         new_users_per_minute = 60\n\
         [[site.admission.event]]\nname = \"a\"\nopens_at = \"2030-01-07T08:00:00\"\n\
         [[site.admission.event]]\nname = \"b\"\nopens_at = \"2030-01-07T08:00:00+01:00\"\n\
         prequeue_from = \"2030-01-07T08:30:00+01:00\"\n\
         [[site.admission.event]]\nname = \"c\"\nopens_at = \"2030-01-07T08:00:00+01:00\"\n\
         closes_at = \"2030-01-07T07:00:00+01:00\"\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_digue"))
        .args(["check", "--config", &file.to_string_lossy()])
        .output()
        .expect("digue runs");
    assert!(!out.status.success(), "a bad event fails the check");
    let err =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for needle in [
        "site[0].admission.event[0].opens_at",
        "has no offset",
        "site[0].admission.event[1].prequeue_from: must be before opens_at",
        "site[0].admission.event[2].closes_at: must be after opens_at",
    ] {
        assert!(err.contains(needle), "{needle} in:\n{err}");
    }
}

#[tokio::test]
async fn forged_stale_and_far_fetched_pre_queue_tickets_buy_nothing() {
    let origin = Origin::portal().await;
    let dir = TempDir::new("events-hostile");
    let secret = secret(&dir);
    let proxy = Digue::new(&origin.url())
        .secret(&secret)
        .admission(&gated(""))
        .start()
        .await;
    move_to(&proxy, -600);
    let now = digue::clock::unix_secs(proxy.app().clock.now().system);
    let keys = digue::admission::keys_from_file(&secret).expect("a readable secret");
    let other = digue::admission::token::Keys::new(b"another-secret-entirely-0123".to_vec(), None);
    let pre = |number: u64, issued: u64| digue::admission::token::PreTicket {
        site: "portal".into(),
        event: "rentree".into(),
        number,
        issued,
    };
    let mut honest = join(&[&proxy], 1).await;
    // Signed with another key: worthless, a newcomer's ticket instead.
    let mut forged = Browser::with_ticket(&pre(0, now).encode(&other));
    prequeued(&forged.poll(&proxy).await);
    assert_ne!(forged.ticket(), pre(0, now).encode(&other), "a new ticket");
    // From an earlier event of the same name (before this pre-queue).
    let stale_token = pre(0, opens_unix() - 3 * 3600).encode(&keys);
    let mut stale = Browser::with_ticket(&stale_token);
    prequeued(&stale.poll(&proxy).await);
    assert_ne!(stale.ticket(), stale_token, "a new ticket");
    // Properly signed but far past the count (say, a copy from a lost
    // state): it must not put a million empty places ahead of everyone.
    let mut far = Browser::with_ticket(&pre(1_000_000, now).encode(&keys));
    prequeued(&far.poll(&proxy).await);

    move_to(&proxy, 1);
    let mut placed = vec![honest.remove(0), forged, stale];
    assert_a_permutation(&positions(&proxy, &mut placed).await);
    assert_eq!(
        position(&far.poll(&proxy).await),
        3,
        "the far-fetched ticket was not in the draw: it queues behind it"
    );
    let mut late = Browser::default();
    assert_eq!(
        position(&late.poll(&proxy).await),
        4,
        "three drawn, then FIFO"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reload_replaces_the_files_events_and_keeps_those_added_through_the_api() {
    let origin = Origin::portal().await;
    let dir = TempDir::new("events-reload");
    let file = dir.join("digue.toml");
    let with_event = Digue::new(&origin.url()).admin().admission(&gated(""));
    let proxy = with_event.start_in(&file).await;
    let added = proxy
        .admin_call(
            Method::POST,
            "/admin/sites/portal/events",
            r#"{"name": "brevet", "opens_at": "2030-07-07T08:00:00+02:00"}"#,
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.text());
    move_to(&proxy, -600);
    let mut early = join(&[&proxy], 1).await;
    let names = async || {
        let j = proxy
            .admin_call(Method::GET, "/admin/sites/portal/events", "")
            .await
            .json();
        j["events"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|e| e["name"].as_str().expect("a name").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names().await, vec!["rentree", "brevet"]);

    // The same file reloaded: the pre-queue and its count stay.
    proxy.app().reload().expect("the same file reloads");
    prequeued(&early[0].poll(&proxy).await);
    let j = proxy
        .admin_call(Method::GET, "/admin/sites/portal/events", "")
        .await
        .json();
    assert_eq!(j["events"][0]["prequeue_tickets"], 1, "{j}");

    // The file without its event: the API's stays, the pre-queue ends.
    Digue::new(&origin.url())
        .admin()
        .admission("new_users_per_minute = 600\ntickets_per_network_per_minute = 100000")
        .start_in(&dir.join("unused.toml"))
        .await
        .shutdown()
        .await;
    std::fs::copy(dir.join("unused.toml"), &file).expect("config rewritten");
    proxy.app().reload().expect("the new file reloads");
    assert_eq!(names().await, vec!["brevet"]);
    // Resuming from a rate of 0 lets no burst in: a place in the line.
    let got = early[0].poll(&proxy).await;
    assert_eq!(got.json()["state"], "queued", "normal gating again");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_pre_queue_opened_days_ahead_keeps_its_tickets_beyond_a_tickets_usual_life() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url())
        .admission(&gated("prequeue_from = \"2030-01-05T08:00:00+01:00\"\n"))
        .start()
        .await;
    move_to(&proxy, -36 * 3600);
    let mut visitors = join(&[&proxy], 3).await;
    let set = visitors[0].poll(&proxy).await;
    prequeued(&set);
    move_to(&proxy, 1);
    let places = positions(&proxy, &mut visitors).await;
    assert_a_permutation(&places);
    // Its wait counts from the opening: still in line eleven hours later.
    move_to(&proxy, 11 * 3600);
    let later = positions(&proxy, &mut visitors).await;
    assert_eq!(later, places, "the line holds (rate 0), the places stay");
    proxy.shutdown().await;
}
