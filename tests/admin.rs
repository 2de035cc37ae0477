//! The operations side end to end: the admin API on `admin_listen` (auth,
//! live state, live origin and admission settings, purge), hot reload of
//! the config file, and the metrics that count them.
//!
//! Every proxy here is started with an admin token (as `DIGUE_ADMIN_TOKEN`
//! would give it) and, for reloads, with the path of a config file written
//! in a fresh temp directory. Origin limits are observed with a held
//! origin: while it holds, whatever digue let through is in flight there.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use support::{
    ADMIN_TOKEN as TOKEN, Digue, ENTRY, Got, Origin, Proxy, Seen, TICKET, TempDir, get, new_cookie,
    reply, request, send, site_section, wait_for,
};

/// Every admin endpoint, with a body that would be valid.
const ENDPOINTS: [(&str, &str, &str); 5] = [
    ("GET", "/admin/sites", ""),
    (
        "PATCH",
        "/admin/sites/portal/admission",
        r#"{"mode":"closed"}"#,
    ),
    (
        "PATCH",
        "/admin/sites/portal/origin",
        r#"{"origin_concurrency":1}"#,
    ),
    ("POST", "/admin/purge", r#"{"site":"portal","prefix":"/"}"#),
    ("POST", "/admin/reload", ""),
];

/// digue in front of `origin` (one site, `portal`), its admin API open.
fn digue(origin: &Origin) -> Digue {
    Digue::new(&origin.url()).admin()
}

async fn patch(proxy: &Proxy, path: &str, body: &str) -> Got {
    proxy.admin_call(Method::PATCH, path, body).await
}

async fn purge(proxy: &Proxy, body: &str) -> Got {
    proxy.admin_call(Method::POST, "/admin/purge", body).await
}

async fn reload(proxy: &Proxy) -> Got {
    proxy.admin_call(Method::POST, "/admin/reload", "").await
}

/// Asserts a refusal: this status and a JSON `{"error": "..."}` saying why.
fn assert_refused(got: &Got, status: u16, what: &str) -> String {
    assert_eq!(got.status, status, "{what}: {}", got.text());
    let body = got.json();
    let message = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: an \"error\" message in {body}"));
    assert!(!message.is_empty(), "{what}: the error says why");
    message.to_owned()
}

/// `GET /admin/sites`, the entry of one site.
async fn site_state(proxy: &Proxy, name: &str) -> Value {
    let got = proxy.admin_call(Method::GET, "/admin/sites", "").await;
    assert_eq!(got.status, 200, "GET /admin/sites: {}", got.text());
    let body = got.json();
    body["sites"]
        .as_array()
        .unwrap_or_else(|| panic!("a \"sites\" array: {body}"))
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("site {name:?} in {body}"))
}

async fn origin_limit(proxy: &Proxy) -> u64 {
    site_state(proxy, "portal").await["origin"]["origin_concurrency"]
        .as_u64()
        .expect("a numeric origin_concurrency")
}

/// An origin that answers `{target} v{version}`: storable for a minute
/// under `/c/`, never storable under `/slow/`, header-less elsewhere.
async fn versioned_origin(version: Arc<AtomicUsize>) -> Origin {
    Origin::start(move |seen: &Seen| {
        let body = format!("{} v{}", seen.target, version.load(Ordering::SeqCst));
        if seen.target.starts_with("/c/") {
            reply(200, &[("cache-control", "max-age=60")], &body)
        } else if seen.target.starts_with("/slow/") {
            reply(200, &[("cache-control", "no-store")], &body)
        } else {
            reply(200, &[], &body)
        }
    })
    .await
}

/// `n` concurrent requests for distinct uncacheable targets `/slow/{tag}{i}`.
fn uncacheable_burst(proxy: &Proxy, tag: &str, n: usize) -> Vec<JoinHandle<Got>> {
    (0..n)
        .map(|i| {
            let url = proxy.url(&format!("/slow/{tag}{i}"));
            tokio::spawn(async move { get(&url, &[]).await })
        })
        .collect()
}

async fn all_ok(tasks: Vec<JoinHandle<Got>>, what: &str) {
    for t in tasks {
        let got = t.await.expect("request task");
        assert_eq!(got.status, 200, "{what}: every request is served");
    }
}

/// Holds the origin, sends `n` uncacheable requests at once, and asserts
/// that exactly `expected` reach it together: they arrive, and no other
/// does while they are held. Then releases them and checks all `n` are served.
async fn assert_in_flight_at_once(
    proxy: &Proxy,
    origin: &Origin,
    tag: &str,
    n: usize,
    expected: usize,
    what: &str,
) {
    let before = origin.total();
    origin.hold();
    let tasks = uncacheable_burst(proxy, tag, n);
    origin.wait_for_total(before + expected).await;
    // Time for a request beyond the limit to show up, were one let through.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        (origin.in_flight(), origin.total() - before),
        (expected, expected),
        "{what}: {expected} of {n} requests in flight at the origin"
    );
    let reported = site_state(proxy, "portal").await["origin"]["in_flight"].as_u64();
    assert_eq!(
        reported,
        Some(expected as u64),
        "{what}: GET /admin/sites reports the requests in flight"
    );
    origin.release();
    all_ok(tasks, what).await;
    assert_eq!(
        origin.total() - before,
        n,
        "{what}: each reached the origin once"
    );
}

/// A newcomer's JSON poll of [`ENTRY`].
async fn newcomer(proxy: &Proxy) -> Got {
    get(&proxy.url(ENTRY), &[("accept", "application/json")]).await
}

/// A newcomer who gets a ticket: the ticket and the JSON position.
async fn take_ticket(proxy: &Proxy) -> (String, u64) {
    let got = newcomer(proxy).await;
    assert_eq!(got.status, 503, "a newcomer waits: {}", got.text());
    let body = got.json();
    assert_eq!(body["state"], "queued", "{body}");
    let ticket = new_cookie(&got, TICKET).expect("a newcomer gets a ticket");
    let position = body["position"].as_u64().expect("a numeric position");
    (ticket, position)
}

/// A ticket holder's JSON poll.
async fn poll(proxy: &Proxy, ticket: &str) -> Got {
    let cookie = format!("{TICKET}={ticket}");
    get(
        &proxy.url(ENTRY),
        &[("accept", "application/json"), ("cookie", cookie.as_str())],
    )
    .await
}

/// A queued ticket's JSON answer (position, ETA).
async fn place(proxy: &Proxy, ticket: &str) -> Value {
    let got = poll(proxy, ticket).await;
    assert_eq!(got.status, 503, "the ticket still waits: {}", got.text());
    let body = got.json();
    assert_eq!(body["state"], "queued", "{body}");
    body
}

/// A line at 1/min whose only slot went to a first newcomer, then `n`
/// tickets: the line stands still for the rest of the test.
async fn still_line(proxy: &Proxy, n: usize) -> Vec<String> {
    let first = newcomer(proxy).await;
    assert_eq!(
        first.status,
        200,
        "the first newcomer takes the slot: {}",
        first.text()
    );
    let mut tickets = Vec::new();
    for i in 0..n {
        let (ticket, position) = take_ticket(proxy).await;
        assert_eq!(position, i as u64, "tickets queue in order");
        tickets.push(ticket);
    }
    tickets
}

/// A config file in a temp directory of its own, beside a signing secret.
struct ConfigFile {
    path: PathBuf,
    secret: PathBuf,
    _dir: TempDir,
}

impl ConfigFile {
    fn new() -> ConfigFile {
        let dir = TempDir::new("admin");
        ConfigFile {
            path: dir.join("digue.toml"),
            secret: dir.secret(),
            _dir: dir,
        }
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).expect("config file writable");
    }

    /// digue started from this file, the way `digue run` does.
    async fn start(&self) -> Proxy {
        Proxy::from_file(&self.path, Some(TOKEN)).await
    }
}

// ---- auth ----

#[tokio::test]
async fn every_admin_call_needs_the_bearer_token() {
    let origin = Origin::fixed(&[], "page").await;
    let proxy = digue(&origin)
        .site("origin_concurrency = 8")
        .admission("new_users_per_minute = 60")
        .start()
        .await;
    let wrong = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("bearer{TOKEN}")),
        Some(TOKEN.to_owned()),
        Some(format!("Basic {TOKEN}")),
    ];
    for (method, path, body) in ENDPOINTS {
        for auth in &wrong {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(a) = auth {
                headers.push(("authorization", a.as_str()));
            }
            let method: Method = method.parse().expect("valid method");
            let got = send(request(
                method.clone(),
                &proxy.admin_url(path),
                &headers,
                body,
            ))
            .await;
            assert_refused(&got, 401, &format!("{method} {path} with {auth:?}"));
        }
    }
    assert_eq!(
        origin_limit(&proxy).await,
        8,
        "refused calls changed nothing"
    );
    let state = site_state(&proxy, "portal").await;
    assert_eq!(state["admission"]["mode"], "auto", "{state}");
    assert_eq!(
        proxy
            .metric("digue_config_reloads_total{outcome=\"refused\"}")
            .await
            + proxy
                .metric("digue_config_reloads_total{outcome=\"applied\"}")
                .await,
        0.0,
        "no reload was attempted"
    );
    let ok = proxy.admin_call(Method::GET, "/admin/sites", "").await;
    assert_eq!(ok.status, 200, "the right token opens: {}", ok.text());
    assert_eq!(
        ok.header("cache-control"),
        Some("no-store"),
        "admin answers are never cached"
    );
}

#[tokio::test]
async fn without_a_configured_token_every_admin_call_is_refused() {
    let origin = Origin::fixed(&[], "page").await;
    for configured in [None, Some(String::new())] {
        let proxy = Digue::new(&origin.url())
            .site("origin_concurrency = 8")
            .admin_token(configured.as_deref())
            .start()
            .await;
        for (method, path, body) in ENDPOINTS {
            for auth in ["Bearer ", "Bearer anything", "Bearer null"] {
                let method: Method = method.parse().expect("valid method");
                let got = send(request(
                    method.clone(),
                    &proxy.admin_url(path),
                    &[
                        ("authorization", auth),
                        ("content-type", "application/json"),
                    ],
                    body,
                ))
                .await;
                let why = assert_refused(
                    &got,
                    401,
                    &format!("{method} {path} with {auth:?}, token {configured:?}"),
                );
                assert!(
                    why.contains("DIGUE_ADMIN_TOKEN"),
                    "the refusal says how to enable the API: {why}"
                );
            }
        }
        assert_eq!(
            proxy.metric("digue_origin_limit{site=\"portal\"}").await,
            8.0,
            "nothing was changed"
        );
    }
}

#[tokio::test]
async fn metrics_and_health_endpoints_need_no_token() {
    let origin = Origin::fixed(&[], "page").await;
    let proxy = digue(&origin).start().await;
    for path in ["/metrics", "/healthz", "/readyz"] {
        let got = get(&proxy.admin_url(path), &[]).await;
        assert_eq!(got.status, 200, "{path} without a token: {}", got.text());
    }
    let metrics = get(&proxy.admin_url("/metrics"), &[]).await.text();
    for family in [
        "digue_origin_limit",
        "digue_origin_in_flight",
        "digue_cache_entries",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "Prometheus text with {family}:\n{metrics}"
        );
    }
    assert!(
        get(&proxy.admin_url("/readyz"), &[])
            .await
            .text()
            .contains("standalone"),
        "readyz says which mode it is in"
    );
}

/// Memory and file descriptors are what a surge exhausts first (EMFILE, the
/// OOM killer); the process figures are exported next to digue's own.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn metrics_show_the_process_memory_and_file_descriptors() {
    let origin = Origin::fixed(&[], "page").await;
    let proxy = digue(&origin).start().await;
    let rss = proxy.metric("digue_process_resident_memory_bytes").await;
    let open = proxy.metric("digue_process_open_fds").await;
    let max = proxy.metric("digue_process_max_fds").await;
    assert!(rss > 1e6, "resident memory in bytes: {rss}");
    assert!(open >= 3.0, "open fds include the listeners: {open}");
    assert!(max >= open, "fd limit {max} above the {open} open");
}

#[tokio::test]
async fn the_admin_api_is_not_on_the_public_port() {
    let origin = Origin::fixed(&[], "the portal's own page").await;
    let proxy = digue(&origin).start().await;
    let auth = format!("Bearer {TOKEN}");
    let got = get(
        &proxy.url("/admin/sites"),
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.text(),
        "the portal's own page",
        "the public port proxies /admin/ to the origin"
    );
    assert_eq!(
        origin.count("/admin/sites"),
        1,
        "the origin got the request"
    );
    let purge = send(request(
        Method::POST,
        &proxy.url("/admin/purge"),
        &[("authorization", auth.as_str())],
        r#"{"site":"portal","prefix":"/"}"#,
    ))
    .await;
    assert_eq!(purge.text(), "the portal's own page");
    assert_eq!(
        proxy
            .metric("digue_admin_changes_total{kind=\"purge\"}")
            .await,
        0.0,
        "nothing was purged through the public port"
    );
}

// ---- GET /admin/sites ----

#[tokio::test]
async fn sites_show_cache_origin_and_admission_state() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version).await;
    let proxy = digue(&origin)
        .site("origin_concurrency = 8")
        .admission("new_users_per_minute = 1\nburst = 1")
        .sites(&site_section(
            "news",
            "news.test",
            &origin.url(),
            "origin_concurrency = 3",
        ))
        .start()
        .await;

    let fresh = site_state(&proxy, "portal").await;
    assert_eq!(fresh["cache"]["entries"], 0, "{fresh}");
    assert_eq!(fresh["cache"]["hit_ratio"], 0.0, "no lookups yet: {fresh}");

    get(&proxy.url("/c/a"), &[]).await;
    get(&proxy.url("/c/b"), &[]).await;
    let hit = get(&proxy.url("/c/a"), &[]).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());
    get(&proxy.url("/c/n"), &[("host", "news.test")]).await;
    let tickets = still_line(&proxy, 2).await;

    let portal = site_state(&proxy, "portal").await;
    let entries = portal["cache"]["entries"].as_u64().expect("entries");
    assert!(entries >= 2, "both stored pages count: {portal}");
    assert!(
        portal["cache"]["bytes"].as_u64().expect("bytes") > 0,
        "stored bytes: {portal}"
    );
    let ratio = portal["cache"]["hit_ratio"].as_f64().expect("hit_ratio");
    assert!(
        ratio > 0.0 && ratio <= 1.0,
        "one hit in three lookups: {portal}"
    );
    assert_eq!(portal["origin"]["in_flight"], 0, "{portal}");
    assert_eq!(portal["origin"]["origin_concurrency"], 8, "{portal}");
    let a = &portal["admission"];
    assert_eq!(a["mode"], "auto", "{portal}");
    assert_eq!(a["new_users_per_minute"], 1, "{portal}");
    assert_eq!(
        a["line_length"],
        tickets.len(),
        "two tickets wait: {portal}"
    );
    assert!(
        a["sessions_active"].as_u64().expect("sessions_active") >= 1,
        "the admitted newcomer has a session: {portal}"
    );

    let news = site_state(&proxy, "news").await;
    assert_eq!(
        news["admission"],
        Value::Null,
        "no [site.admission]: {news}"
    );
    assert_eq!(news["origin"]["origin_concurrency"], 3, "{news}");
    assert_eq!(
        news["cache"]["entries"], 1,
        "entries are counted per site: {news}"
    );
    assert_eq!(news["cache"]["hit_ratio"], 0.0, "one miss, no hit: {news}");
}

// ---- PATCH /admin/sites/{name}/origin ----

#[tokio::test]
async fn a_patched_origin_limit_applies_at_once() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version).await;
    let proxy = digue(&origin)
        .site("origin_concurrency = 8\norigin_queue_timeout = \"5s\"")
        .start()
        .await;
    assert_in_flight_at_once(
        &proxy,
        &origin,
        "before",
        5,
        5,
        "under the configured 8, all five reach the origin together",
    )
    .await;

    let got = patch(
        &proxy,
        "/admin/sites/portal/origin",
        r#"{"origin_concurrency": 2}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json()["origin"]["origin_concurrency"],
        2,
        "the answer shows the new limit: {}",
        got.text()
    );
    assert_eq!(origin_limit(&proxy).await, 2, "GET /admin/sites agrees");
    assert_eq!(
        proxy.metric("digue_origin_limit{site=\"portal\"}").await,
        2.0,
        "the limit gauge follows"
    );
    assert_in_flight_at_once(
        &proxy,
        &origin,
        "held",
        5,
        2,
        "after the patch, two at a time",
    )
    .await;

    // Unheld but slow: sample the origin while the five go through.
    origin.set_delay(Duration::from_millis(60));
    let tasks = uncacheable_burst(&proxy, "slow", 5);
    let mut peak = 0;
    while !tasks.iter().all(JoinHandle::is_finished) {
        peak = peak.max(origin.in_flight());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    all_ok(tasks, "slow origin").await;
    origin.set_delay(Duration::ZERO);
    assert_eq!(peak, 2, "never more than two in flight, and two are used");

    let got = patch(
        &proxy,
        "/admin/sites/portal/origin",
        r#"{"origin_concurrency": 8}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_in_flight_at_once(
        &proxy,
        &origin,
        "raised",
        5,
        5,
        "raised back to 8, all five go together again",
    )
    .await;
    assert_eq!(
        proxy
            .metric("digue_admin_changes_total{kind=\"origin\"}")
            .await,
        2.0,
        "both changes are counted"
    );
}

#[tokio::test]
async fn bad_origin_patches_are_refused_with_a_json_error() {
    let origin = Origin::fixed(&[], "page").await;
    let proxy = digue(&origin).site("origin_concurrency = 8").start().await;
    for body in [
        r#"{"origin_concurrency": 0}"#,
        r#"{"origin_concurrency": -1}"#,
        r#"{"origin_concurrency": 2.5}"#,
        r#"{"origin_concurrency": "2"}"#,
        r#"{"origin_concurrency": 2, "burst": 1}"#,
        r#"{}"#,
        "origin_concurrency=2",
        "",
    ] {
        let got = patch(&proxy, "/admin/sites/portal/origin", body).await;
        assert_refused(&got, 400, &format!("PATCH origin with {body:?}"));
    }
    assert_eq!(origin_limit(&proxy).await, 8, "the limit did not move");
    let got = patch(
        &proxy,
        "/admin/sites/nowhere/origin",
        r#"{"origin_concurrency": 2}"#,
    )
    .await;
    let why = assert_refused(&got, 404, "an unknown site");
    assert!(why.contains("nowhere"), "the error names the site: {why}");
    let got = proxy
        .admin_call(
            Method::GET,
            "/admin/sites/portal/origin",
            r#"{"origin_concurrency": 2}"#,
        )
        .await;
    assert_refused(&got, 405, "GET on a PATCH endpoint");
    assert_eq!(origin_limit(&proxy).await, 8, "the limit did not move");
}

#[tokio::test]
async fn a_mistyped_live_setting_is_refused_with_its_range_and_never_freezes_the_proxy() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "page").await;
    let proxy = digue(&origin)
        .site("origin_concurrency = 8")
        .admission("new_users_per_minute = 600")
        .start()
        .await;
    let huge = "18446744073709551615";
    for (endpoint, key) in [
        ("origin", "origin_concurrency"),
        ("admission", "new_users_per_minute"),
        ("admission", "burst"),
        ("admission", "max_active_users"),
    ] {
        for value in ["0", "-1", huge, "1e308", "NaN", "\"8\"", "null", "7000000"] {
            let allowed = matches!(
                (key, value),
                ("new_users_per_minute", "0") | ("max_active_users", "null")
            ) || (key == "origin_concurrency" && value == "7000000");
            if allowed {
                continue;
            }
            let body = format!("{{\"{key}\": {value}}}");
            let got = patch(&proxy, &format!("/admin/sites/portal/{endpoint}"), &body).await;
            let why = assert_refused(&got, 400, &body);
            if value == "0" || value == "7000000" {
                assert!(
                    why.contains(key) && why.contains("between"),
                    "{body}: names the key and its range: {why}"
                );
            }
        }
    }
    let got = patch(
        &proxy,
        "/admin/sites/portal/origin",
        &format!("{{\"origin_concurrency\": {}}}", usize::MAX),
    )
    .await;
    let why = assert_refused(&got, 400, "2^64-1 slots");
    assert!(why.contains("100000"), "says the range: {why}");
    let big = format!(
        "{{\"origin_concurrency\": 8, \"pad\": \"{}\"}}",
        "x".repeat(1 << 20)
    );
    let got = patch(&proxy, "/admin/sites/portal/origin", &big).await;
    assert_refused(&got, 413, "a 1 MB body");

    assert_eq!(origin_limit(&proxy).await, 8, "nothing changed");
    all_ok(uncacheable_burst(&proxy, "after", 8), "ordinary requests").await;
    let got = patch(
        &proxy,
        "/admin/sites/portal/origin",
        r#"{"origin_concurrency": 32}"#,
    )
    .await;
    assert_eq!(got.status, 200, "a sane patch afterwards: {}", got.text());
    assert_eq!(origin_limit(&proxy).await, 32, "applied at once");
    assert_in_flight_at_once(&proxy, &origin, "sane", 40, 32, "after the refusals").await;
    proxy.shutdown().await;
}

// ---- PATCH /admin/sites/{name}/admission ----

#[tokio::test]
async fn a_patched_admission_mode_applies_at_once() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "portal page").await;
    let proxy = digue(&origin)
        .admission("new_users_per_minute = 1\nburst = 1")
        .start()
        .await;
    let tickets = still_line(&proxy, 3).await;

    let got = patch(
        &proxy,
        "/admin/sites/portal/admission",
        r#"{"mode": "closed"}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["admission"]["mode"], "closed", "{}", got.text());
    let closed = newcomer(&proxy).await;
    assert_eq!(closed.status, 503, "{}", closed.text());
    assert_eq!(
        closed.json()["state"],
        "closed",
        "a newcomer finds the portal closed"
    );
    assert!(
        new_cookie(&closed, TICKET).is_none(),
        "a closed portal hands out no ticket"
    );

    let got = patch(
        &proxy,
        "/admin/sites/portal/admission",
        r#"{"mode": "passthrough"}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let through = newcomer(&proxy).await;
    assert_eq!(
        through.status,
        200,
        "passthrough lets a newcomer straight in: {}",
        through.text()
    );
    assert_eq!(through.text(), "portal page");

    let got = patch(
        &proxy,
        "/admin/sites/portal/admission",
        r#"{"mode": "auto"}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let state = site_state(&proxy, "portal").await;
    assert_eq!(state["admission"]["mode"], "auto", "{state}");
    assert_eq!(
        state["admission"]["line_length"],
        tickets.len(),
        "the line survived the mode changes: {state}"
    );
    for (i, t) in tickets.iter().enumerate() {
        assert_eq!(
            place(&proxy, t).await["position"],
            i,
            "ticket {i} kept its place"
        );
    }
    let (_, position) = take_ticket(&proxy).await;
    assert_eq!(position, 3, "back in auto, a newcomer queues at the end");
    assert_eq!(
        proxy
            .metric("digue_admin_changes_total{kind=\"admission\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_new_rate_keeps_a_burst_set_in_the_file_and_moves_a_default_one() {
    let origin = Origin::fixed(&[], "page").await;
    // The second site leaves its burst to the default (five seconds' worth).
    let cas = site_section(
        "cas",
        "cas.test",
        "http://127.0.0.1:1",
        "[site.admission]\npaths = [\"/cas/login\"]\nnew_users_per_minute = 60",
    );
    let proxy = digue(&origin)
        .admission("new_users_per_minute = 60\nburst = 2")
        .sites(&cas)
        .start()
        .await;
    for (site, want) in [("portal", 2), ("cas", 50)] {
        let got = patch(
            &proxy,
            &format!("/admin/sites/{site}/admission"),
            r#"{"new_users_per_minute": 600}"#,
        )
        .await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            got.json()["admission"]["burst"],
            want,
            "{site}: {}",
            got.text()
        );
    }
}

#[tokio::test]
async fn a_raised_admission_rate_lets_no_burst_through() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "portal page").await;
    let proxy = digue(&origin)
        .admission("new_users_per_minute = 1\nburst = 1")
        .start()
        .await;
    let tickets = still_line(&proxy, 40).await;

    let got = patch(
        &proxy,
        "/admin/sites/portal/admission",
        r#"{"new_users_per_minute": 6000}"#,
    )
    .await;
    let patched = Instant::now();
    assert_eq!(got.status, 200, "{}", got.text());
    let answer = got.json();
    assert_eq!(
        answer["admission"]["new_users_per_minute"], 6000,
        "{answer}"
    );
    let mut admitted = 0;
    while patched.elapsed() < Duration::from_millis(100) {
        for t in &tickets {
            if poll(&proxy, t).await.status == 200 {
                admitted += 1;
            }
        }
    }
    // 6000/min is 100 a second: what the new pace allows, plus the one
    // admission the old bucket had free, never the burst of 500 a fresh
    // limiter would give.
    let bound = 2 + (patched.elapsed().as_secs_f64() * 100.0) as usize;
    assert!(
        admitted <= bound,
        "{admitted} of {} tickets admitted in {:?}: a burst (bound {bound})",
        tickets.len(),
        patched.elapsed()
    );
    let state = site_state(&proxy, "portal").await;
    assert_eq!(state["admission"]["new_users_per_minute"], 6000, "{state}");
}

/// The line is moving at 60/min with a bucket of one when the rate goes to
/// 6000/min: what was taken stays taken, so turns come at the new pace —
/// not all at once.
#[tokio::test]
async fn a_raised_admission_rate_hands_out_turns_at_the_new_pace() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "portal page").await;
    let proxy = digue(&origin)
        .admission("new_users_per_minute = 60\nburst = 1")
        .start()
        .await;
    let first = newcomer(&proxy).await;
    assert_eq!(first.status, 200, "{}", first.text());
    for _ in 0..40 {
        take_ticket(&proxy).await;
    }
    let before = site_state(&proxy, "portal").await;
    let before_turns = before["admission"]["turns_unclaimed"]
        .as_u64()
        .expect("turns_unclaimed");

    let got = patch(
        &proxy,
        "/admin/sites/portal/admission",
        r#"{"new_users_per_minute": 6000}"#,
    )
    .await;
    let patched = Instant::now();
    assert_eq!(got.status, 200, "{}", got.text());
    let at_patch = got.json()["admission"]["turns_unclaimed"]
        .as_u64()
        .expect("turns_unclaimed");
    let after = site_state(&proxy, "portal").await;
    let elapsed_ms = patched.elapsed().as_millis() as u64;
    let turns = after["admission"]["turns_unclaimed"]
        .as_u64()
        .expect("turns_unclaimed");
    // 6000/min is one turn every 10 ms.
    let pace = before_turns + 2 + elapsed_ms / 10;
    assert!(
        at_patch <= before_turns + 2 && turns <= pace,
        "turns handed out: {before_turns} before, {at_patch} at the patch, {turns} \
         {elapsed_ms} ms later (the new pace allows {pace}): {after}"
    );
}

/// An operator raises the rate from 1/min to 600/min during a surge: the
/// line must start moving at once, not when the old minute is over.
#[tokio::test]
async fn a_raised_admission_rate_moves_the_line_at_once() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "portal page").await;
    let proxy = digue(&origin)
        .admission("new_users_per_minute = 1\nburst = 1")
        .start()
        .await;
    let tickets = still_line(&proxy, 3).await;
    let got = patch(
        &proxy,
        "/admin/sites/portal/admission",
        r#"{"new_users_per_minute": 600}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    // 600/min is one turn every 100 ms: the first ticket's turn is due at once.
    let admitted = wait_for(
        "2 s after raising the rate to 600/min, the first ticket is admitted",
        Duration::from_secs(2),
        async || {
            let got = poll(&proxy, &tickets[0]).await;
            if got.status == 200 {
                Ok(got)
            } else {
                Err(got.text())
            }
        },
    )
    .await;
    assert_eq!(admitted.json()["state"], "admitted", "{}", admitted.text());
}

#[tokio::test]
async fn bad_admission_patches_are_refused() {
    let origin = Origin::fixed(&[], "page").await;
    let proxy = digue(&origin)
        .admission("new_users_per_minute = 60")
        .sites(&site_section("news", "news.test", &origin.url(), ""))
        .start()
        .await;
    for body in [
        r#"{"mode": "open"}"#,
        r#"{"mode": "AUTO"}"#,
        r#"{"mode": 1}"#,
        r#"{"new_users_per_minute": -5}"#,
        r#"{"new_users_per_minute": "lots"}"#,
        r#"{"max_active_users": 0}"#,
        r#"{"rate": 60}"#,
        "mode=closed",
    ] {
        let got = patch(&proxy, "/admin/sites/portal/admission", body).await;
        assert_refused(&got, 400, &format!("PATCH admission with {body:?}"));
    }
    let state = site_state(&proxy, "portal").await;
    assert_eq!(state["admission"]["mode"], "auto", "{state}");
    assert_eq!(state["admission"]["new_users_per_minute"], 60, "{state}");

    let got = patch(
        &proxy,
        "/admin/sites/news/admission",
        r#"{"mode": "closed"}"#,
    )
    .await;
    let why = assert_refused(&got, 409, "a site without [site.admission]");
    assert!(why.contains("admission"), "{why}");
    let got = patch(
        &proxy,
        "/admin/sites/nowhere/admission",
        r#"{"mode": "closed"}"#,
    )
    .await;
    assert_refused(&got, 404, "an unknown site");
    assert_eq!(
        proxy
            .metric("digue_admin_changes_total{kind=\"admission\"}")
            .await,
        0.0,
        "nothing was changed"
    );
}

// ---- POST /admin/purge ----

#[tokio::test]
async fn a_soft_purge_serves_stale_while_one_refetch_runs() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version.clone()).await;
    let proxy = digue(&origin).start().await;
    for target in ["/c/a", "/c/b/x"] {
        get(&proxy.url(target), &[]).await;
        let hit = get(&proxy.url(target), &[]).await;
        assert!(
            hit.cache_status().contains("hit"),
            "{target} is stored: {}",
            hit.cache_status()
        );
    }
    version.store(2, Ordering::SeqCst);

    let got = purge(&proxy, r#"{"site": "portal", "path": "/c/a"}"#).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let body = got.json();
    assert_eq!(body["purged"], 1, "one entry marked stale: {body}");
    assert_eq!(body["hard"], false, "soft by default: {body}");

    origin.hold();
    let started = Instant::now();
    let stale = get(&proxy.url("/c/a"), &[]).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the stale copy is served without waiting for the origin"
    );
    assert_eq!(stale.text(), "/c/a v1", "the stale copy");
    assert!(
        stale.cache_status().contains("fwd=stale"),
        "{}",
        stale.cache_status()
    );
    origin.wait_for_total(3).await;
    for _ in 0..5 {
        let again = get(&proxy.url("/c/a"), &[]).await;
        assert_eq!(
            again.text(),
            "/c/a v1",
            "stale again while the refetch runs"
        );
    }
    assert_eq!(
        origin.count("/c/a"),
        2,
        "exactly one refetch reached the origin"
    );
    origin.release();

    let fresh = wait_for(
        "the refetched copy replaces the stale one",
        Duration::from_secs(2),
        async || {
            let got = get(&proxy.url("/c/a"), &[]).await;
            if got.cache_status().contains("fwd=stale") {
                Err(got.cache_status())
            } else {
                Ok(got)
            }
        },
    )
    .await;
    assert_eq!(fresh.text(), "/c/a v2", "then the new version");
    assert!(
        fresh.cache_status().contains("hit"),
        "served as a hit: {}",
        fresh.cache_status()
    );
    assert_eq!(origin.count("/c/a"), 2, "and still one refetch in all");
    let other = get(&proxy.url("/c/b/x"), &[]).await;
    assert_eq!(
        (other.text().as_str(), other.cache_status().contains("hit")),
        ("/c/b/x v1", true),
        "a path purge leaves other entries alone"
    );
}

#[tokio::test]
async fn a_prefix_purge_counts_the_entries_it_marks() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version.clone()).await;
    let proxy = digue(&origin).start().await;
    for target in ["/c/b/x", "/c/b/y?q=1", "/c/bz", "/c/a"] {
        get(&proxy.url(target), &[]).await;
    }
    version.store(2, Ordering::SeqCst);
    let got = purge(&proxy, r#"{"site": "portal", "prefix": "/c/b/"}"#).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        got.json()["purged"],
        2,
        "/c/b/x and /c/b/y?q=1, not /c/bz: {}",
        got.text()
    );
    let got = purge(&proxy, r#"{"site": "portal", "path": "/c/none"}"#).await;
    assert_eq!(got.json()["purged"], 0, "nothing stored there");

    let x = get(&proxy.url("/c/b/x"), &[]).await;
    assert!(
        x.cache_status().contains("fwd=stale"),
        "{}",
        x.cache_status()
    );
    for untouched in ["/c/bz", "/c/a"] {
        let got = get(&proxy.url(untouched), &[]).await;
        assert_eq!(got.text(), format!("{untouched} v1"), "{untouched} kept");
        assert!(
            got.cache_status().contains("hit"),
            "{untouched}: {}",
            got.cache_status()
        );
    }
    assert_eq!(
        proxy
            .metric("digue_admin_changes_total{kind=\"purge\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn a_hard_purge_drops_the_entry() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version.clone()).await;
    let proxy = digue(&origin).start().await;
    get(&proxy.url("/c/a"), &[]).await;
    get(&proxy.url("/c/b/x"), &[]).await;
    version.store(2, Ordering::SeqCst);

    let got = purge(
        &proxy,
        r#"{"site": "portal", "path": "/c/a", "hard": true}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let body = got.json();
    assert_eq!(
        (body["purged"].as_u64(), body["hard"].as_bool()),
        (Some(1), Some(true)),
        "{body}"
    );
    assert_eq!(
        site_state(&proxy, "portal").await["cache"]["entries"],
        1,
        "the entry is gone"
    );

    origin.hold();
    let url = proxy.url("/c/a");
    let waiting = tokio::spawn(async move { get(&url, &[]).await });
    origin.wait_for_total(3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "no stale copy: the request waits for the origin"
    );
    origin.release();
    let miss = waiting.await.expect("request task");
    assert_eq!(miss.text(), "/c/a v2");
    assert!(
        miss.cache_status().contains("fwd=uri-miss"),
        "a miss: {}",
        miss.cache_status()
    );

    let got = purge(
        &proxy,
        r#"{"site": "portal", "prefix": "/c/", "hard": true}"#,
    )
    .await;
    assert_eq!(got.json()["purged"], 2, "{}", got.text());
    assert_eq!(
        site_state(&proxy, "portal").await["cache"]["entries"],
        0,
        "a hard prefix purge empties the site"
    );
}

#[tokio::test]
async fn bad_purges_are_refused() {
    let origin = Origin::fixed(&[("cache-control", "max-age=60")], "page").await;
    let proxy = digue(&origin).start().await;
    get(&proxy.url("/a"), &[]).await;
    for body in [
        r#"{"site": "portal", "path": "/a", "prefix": "/"}"#,
        r#"{"site": "portal"}"#,
        r#"{"site": "portal", "path": "a"}"#,
        r#"{"site": "portal", "prefix": "a/"}"#,
        r#"{"path": "/a"}"#,
        r#"{"site": "portal", "path": "/a", "hard": "yes"}"#,
        r#"{"site": "portal", "path": "/a", "soft": true}"#,
        "site=portal&path=/a",
    ] {
        let got = purge(&proxy, body).await;
        assert_refused(&got, 400, &format!("purge {body:?}"));
    }
    let got = purge(&proxy, r#"{"site": "nowhere", "path": "/a"}"#).await;
    assert_refused(&got, 404, "an unknown site");
    let hit = get(&proxy.url("/a"), &[]).await;
    assert!(
        hit.cache_status().contains("hit"),
        "nothing was purged: {}",
        hit.cache_status()
    );
    assert_eq!(origin.count("/a"), 1);
}

// ---- POST /admin/reload ----

/// The reload tests' config: one site with limits, a cache rule for
/// `/static/`, more `rules`, and a line at `rate`.
fn reloadable(origin: &str, concurrency: usize, rules: &str, rate: u32) -> Digue {
    Digue::new(origin)
        .admin()
        .site(&format!(
            "origin_concurrency = {concurrency}\norigin_queue_timeout = \"5s\"\n\
             [[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\n{rules}"
        ))
        .admission(&format!("new_users_per_minute = {rate}\nburst = 1"))
}

/// [`reloadable`], signed with the file's secret, as the file's text.
fn reload_config(
    file: &ConfigFile,
    origin: &str,
    concurrency: usize,
    rules: &str,
    rate: u32,
) -> String {
    reloadable(origin, concurrency, rules, rate)
        .secret(&file.secret)
        .toml()
}

#[tokio::test]
async fn a_reload_applies_the_changed_file() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version).await;
    let file = ConfigFile::new();
    file.write(&reload_config(&file, &origin.url(), 8, "", 1));
    let proxy = file.start().await;
    let tickets = still_line(&proxy, 2).await;
    assert_eq!(place(&proxy, &tickets[1]).await["eta_seconds"], 120);
    for _ in 0..2 {
        get(&proxy.url("/news/1"), &[]).await;
    }
    assert_eq!(origin.count("/news/1"), 2, "no rule for /news/ yet");

    file.write(&reload_config(
        &file,
        &origin.url(),
        3,
        "[[site.cache.rule]]\nprefix = \"/news/\"\nttl = \"1h\"\n",
        2,
    ));
    let got = reload(&proxy).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json(), json!({"status": "applied"}));

    let state = site_state(&proxy, "portal").await;
    assert_eq!(state["origin"]["origin_concurrency"], 3, "{state}");
    assert_eq!(state["admission"]["new_users_per_minute"], 2, "{state}");
    assert_in_flight_at_once(
        &proxy,
        &origin,
        "reloaded",
        5,
        3,
        "the new origin limit holds",
    )
    .await;
    get(&proxy.url("/news/2"), &[]).await;
    let hit = get(&proxy.url("/news/2"), &[]).await;
    assert!(
        hit.cache_status().contains("hit"),
        "the new rule caches /news/: {}",
        hit.cache_status()
    );
    assert_eq!(origin.count("/news/2"), 1);
    let second = place(&proxy, &tickets[1]).await;
    assert_eq!(
        (second["position"].as_u64(), second["eta_seconds"].as_u64()),
        (Some(1), Some(60)),
        "same place, ETA at the new rate: {second}"
    );
    assert_eq!(
        proxy
            .metric("digue_config_reloads_total{outcome=\"applied\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("digue_admission_rate_per_minute{site=\"portal\"}")
            .await,
        2.0
    );
}

/// A rule added by a reload is for the pages that need it now: the ones
/// requested a moment ago, before the rule existed.
#[tokio::test]
async fn a_cache_rule_added_by_reload_applies_to_pages_seen_before() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version).await;
    let file = ConfigFile::new();
    file.write(&reload_config(&file, &origin.url(), 8, "", 60));
    let proxy = file.start().await;
    get(&proxy.url("/news/hot"), &[]).await;
    file.write(&reload_config(
        &file,
        &origin.url(),
        8,
        "[[site.cache.rule]]\nprefix = \"/news/\"\nttl = \"1h\"\n",
        60,
    ));
    assert_eq!(reload(&proxy).await.status, 200);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&proxy.url("/news/hot"), &[]).await.cache_status());
    }
    assert!(
        origin.count("/news/hot") <= 2,
        "after the reload, /news/hot is fetched once and stored; the origin saw it {} \
         times in all, with Cache-Status {statuses:#?}",
        origin.count("/news/hot")
    );
}

#[tokio::test]
async fn a_broken_file_is_refused_with_every_key_path_and_the_running_config_stays() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version).await;
    let file = ConfigFile::new();
    let good = reload_config(&file, &origin.url(), 3, "", 1);
    file.write(&good);
    let proxy = file.start().await;
    get(&proxy.url("/static/app.css"), &[]).await;

    let broken = reload_config(
        &file,
        &origin.url(),
        1,
        "[[site.cache.rule]]\nprefix = \"/news/\"\nttl = \"forever\"\n",
        600,
    )
    .replace(
        "origin_queue_timeout = \"5s\"",
        "origin_queue_timeout = \"5s\"\norigin_timeout = \"soon\"\ncolour = \"blue\"",
    );
    file.write(&broken);
    let got = reload(&proxy).await;
    assert_eq!(got.status, 400, "{}", got.text());
    let body = got.json();
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("stays")),
        "the answer says the running config stays: {body}"
    );
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("an \"errors\" array: {body}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for path in [
        "site[0].origin_timeout",
        "site[0].cache.rule[1].ttl",
        "site[0].colour",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(path)),
            "{path} is reported: {errors:#?}"
        );
    }
    assert!(
        errors.iter().any(|e| e.contains("\"soon\"")),
        "the error quotes the bad value: {errors:#?}"
    );

    let state = site_state(&proxy, "portal").await;
    assert_eq!(state["origin"]["origin_concurrency"], 3, "{state}");
    assert_eq!(state["admission"]["new_users_per_minute"], 1, "{state}");
    assert_in_flight_at_once(
        &proxy,
        &origin,
        "kept",
        5,
        3,
        "the running limit still holds",
    )
    .await;
    let hit = get(&proxy.url("/static/app.css"), &[]).await;
    assert!(hit.cache_status().contains("hit"), "{}", hit.cache_status());

    file.write("[server\nlisten = ");
    let got = reload(&proxy).await;
    assert_eq!(got.status, 400, "not TOML: {}", got.text());
    assert!(
        got.json()["errors"]
            .as_array()
            .is_some_and(|e| !e.is_empty()),
        "{}",
        got.text()
    );
    assert_eq!(
        proxy
            .metric("digue_config_reloads_total{outcome=\"refused\"}")
            .await,
        2.0
    );
    assert_eq!(
        proxy
            .metric("digue_config_reloads_total{outcome=\"applied\"}")
            .await,
        0.0
    );

    file.write(&good);
    let got = reload(&proxy).await;
    assert_eq!(got.status, 200, "the fixed file applies: {}", got.text());
    assert_eq!(
        proxy
            .metric("digue_config_reloads_total{outcome=\"applied\"}")
            .await,
        1.0
    );
}

/// Turning the waiting room on at the start of a surge, or off after it, is
/// a reload, not a restart.
#[tokio::test]
async fn a_reload_turns_the_waiting_room_on_and_off() {
    let origin = Origin::fixed(&[], "page").await;
    let file = ConfigFile::new();
    let with_room = reload_config(&file, &origin.url(), 8, "", 1);
    let (before, room) = with_room
        .split_once("[site.admission]")
        .expect("the config has a waiting room");
    let without_room = format!(
        "{before}{}",
        &room[room.find("\n[").map_or(room.len(), |i| i + 1)..]
    );
    file.write(&without_room);
    let proxy = file.start().await;
    assert_eq!(site_state(&proxy, "portal").await["admission"], Value::Null);

    file.write(&with_room);
    let got = reload(&proxy).await;
    assert_eq!(got.status, 200, "turned on: {}", got.text());
    let state = site_state(&proxy, "portal").await;
    assert_eq!(state["admission"]["new_users_per_minute"], 1, "{state}");

    file.write(&without_room);
    let got = reload(&proxy).await;
    assert_eq!(got.status, 200, "turned off: {}", got.text());
    assert_eq!(site_state(&proxy, "portal").await["admission"], Value::Null);
}

#[tokio::test]
async fn a_reload_of_a_key_read_only_at_start_is_refused_as_needing_a_restart() {
    let origin = Origin::fixed(&[], "page").await;
    let file = ConfigFile::new();
    let good = reload_config(&file, &origin.url(), 8, "", 1);
    file.write(&good);
    let proxy = file.start().await;
    for (key, moved) in [
        (
            "server.listen",
            good.replace(
                "listen = \"127.0.0.1:0\"\nadmin",
                "listen = \"127.0.0.1:1\"\nadmin",
            ),
        ),
        (
            "server.admin_listen",
            good.replace(
                "admin_listen = \"127.0.0.1:0\"",
                "admin_listen = \"127.0.0.1:1\"",
            ),
        ),
        // Read once at start: a reload that said "applied" would lie.
        (
            "server.shutdown_grace",
            good.replace(
                "admin_listen = \"127.0.0.1:0\"",
                "admin_listen = \"127.0.0.1:0\"\nshutdown_grace = \"3s\"",
            ),
        ),
        (
            "server.log_format",
            good.replace(
                "admin_listen = \"127.0.0.1:0\"",
                "admin_listen = \"127.0.0.1:0\"\nlog_format = \"json\"",
            ),
        ),
    ] {
        assert_ne!(moved, good, "the test changed {key}");
        file.write(&moved.replace("origin_concurrency = 8", "origin_concurrency = 2"));
        let got = reload(&proxy).await;
        assert_eq!(got.status, 400, "{key}: {}", got.text());
        let body = got.json();
        let errors: Vec<&str> = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("an \"errors\" array: {body}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(key) && e.contains("restart")),
            "{key} needs a restart: {errors:#?}"
        );
        assert_eq!(
            origin_limit(&proxy).await,
            8,
            "nothing else of the file was applied"
        );
    }
    let got = get(&proxy.url("/still-here"), &[]).await;
    assert_eq!(got.status, 200, "the listener still serves");
    assert_eq!(
        proxy
            .metric("digue_config_reloads_total{outcome=\"refused\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn the_cache_and_the_waiting_line_survive_a_reload() {
    let version = Arc::new(AtomicUsize::new(1));
    let origin = versioned_origin(version).await;
    let file = ConfigFile::new();
    let text = reload_config(&file, &origin.url(), 8, "", 1);
    file.write(&text);
    let proxy = file.start().await;
    get(&proxy.url("/static/app.css"), &[]).await;
    get(&proxy.url("/c/page"), &[]).await;
    let tickets = still_line(&proxy, 3).await;
    let before: Vec<Value> = {
        let mut v = Vec::new();
        for t in &tickets {
            v.push(place(&proxy, t).await);
        }
        v
    };

    // A reload that changes nothing about admission.
    file.write(&text.replace("origin_concurrency = 8", "origin_concurrency = 6"));
    let got = reload(&proxy).await;
    assert_eq!(got.status, 200, "{}", got.text());

    for target in ["/static/app.css", "/c/page"] {
        let hit = get(&proxy.url(target), &[]).await;
        assert!(
            hit.cache_status().contains("hit"),
            "{target} is still a hit after the reload: {}",
            hit.cache_status()
        );
        assert_eq!(origin.count(target), 1, "{target} was fetched once");
    }
    for (t, was) in tickets.iter().zip(&before) {
        let now = place(&proxy, t).await;
        assert_eq!(
            now["position"], was["position"],
            "the ticket kept its place: {was} → {now}"
        );
    }
    let (_, position) = take_ticket(&proxy).await;
    assert_eq!(position, 3, "newcomers still queue behind");
    let state = site_state(&proxy, "portal").await;
    assert_eq!(state["admission"]["line_length"], 4, "{state}");
    assert!(
        state["admission"]["sessions_active"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "sessions survive too: {state}"
    );
}

/// Without `DIGUE_SECRET` nor `server.secret_file`, tickets and passes are
/// signed with a random key "that dies with the process" — not with a reload.
#[tokio::test]
async fn without_a_shared_secret_tickets_and_passes_survive_a_reload() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "portal page").await;
    let file = ConfigFile::new();
    let text = reloadable(&origin.url(), 8, "", 1).toml();
    assert!(!text.contains("secret_file"), "no shared secret: {text}");
    file.write(&text);
    let proxy = file.start().await;
    let first = newcomer(&proxy).await;
    assert_eq!(first.status, 200, "{}", first.text());
    let pass = new_cookie(&first, "digue_pass").expect("the admitted newcomer gets a pass");
    let (ticket, position) = take_ticket(&proxy).await;
    assert_eq!(position, 0);

    let got = reload(&proxy).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = poll(&proxy, &ticket).await;
    assert_eq!(
        got.header("set-cookie"),
        None,
        "the ticket is still good: no new ticket ({})",
        got.text()
    );
    assert_eq!(
        got.json()["position"],
        0,
        "the ticket kept its place: {}",
        got.text()
    );
    let pass_cookie = format!("digue_pass={pass}");
    let back = get(&proxy.url(ENTRY), &[("cookie", pass_cookie.as_str())]).await;
    assert_eq!(
        back.status,
        200,
        "the admitted user is still in: {}",
        back.text()
    );
}

#[tokio::test]
async fn a_reload_without_a_config_file_is_refused() {
    let origin = Origin::fixed(&[], "page").await;
    let proxy = digue(&origin).start().await;
    let got = reload(&proxy).await;
    assert_eq!(got.status, 400, "{}", got.text());
    assert!(
        got.text().contains("config file"),
        "the answer says why: {}",
        got.text()
    );
    assert_eq!(
        proxy
            .metric("digue_config_reloads_total{outcome=\"refused\"}")
            .await,
        1.0
    );
}

// ---- live changes and the file ----

#[tokio::test]
async fn live_changes_last_until_the_next_reload() {
    let origin = Origin::fixed(&[("cache-control", "no-store")], "page").await;
    let file = ConfigFile::new();
    file.write(&reload_config(&file, &origin.url(), 8, "", 1));
    let proxy = file.start().await;
    let got = patch(
        &proxy,
        "/admin/sites/portal/origin",
        r#"{"origin_concurrency": 2}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let got = patch(
        &proxy,
        "/admin/sites/portal/admission",
        r#"{"mode": "closed", "new_users_per_minute": 30}"#,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let state = site_state(&proxy, "portal").await;
    assert_eq!(
        (
            state["origin"]["origin_concurrency"].as_u64(),
            state["admission"]["mode"].as_str(),
            state["admission"]["new_users_per_minute"].as_u64(),
        ),
        (Some(2), Some("closed"), Some(30)),
        "the live changes hold: {state}"
    );
    assert_eq!(newcomer(&proxy).await.json()["state"], "closed");

    let got = reload(&proxy).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let state = site_state(&proxy, "portal").await;
    assert_eq!(
        (
            state["origin"]["origin_concurrency"].as_u64(),
            state["admission"]["mode"].as_str(),
            state["admission"]["new_users_per_minute"].as_u64(),
        ),
        (Some(8), Some("auto"), Some(1)),
        "the file's values are back: {state}"
    );
    let first = newcomer(&proxy).await;
    assert_eq!(
        first.status,
        200,
        "open again: the first newcomer gets in: {}",
        first.text()
    );
    assert_in_flight_at_once(
        &proxy,
        &origin,
        "file",
        5,
        5,
        "the file's origin limit of 8 holds again",
    )
    .await;
}
