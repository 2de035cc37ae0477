//! `digue surge` against the real thing: the fragile demo portal with digue
//! in front of it, on loopback, and the bad inputs an operator will type.
#![allow(clippy::disallowed_methods)] // deadlines and timings of the test itself run on real time

mod support;

use std::time::Duration;

use clap::Parser;
use digue::demo::{Portal, PortalOptions};
use digue::surge::{SurgeArgs, SurgeError, execute};
use support::{Origin, Proxy, TempDir, reply, unused_ports};
use tokio::net::TcpListener;

/// The shipped config's cache rules, a login gated at 10 a second, and an
/// origin limit well under the portal's capacity.
const SITE_TOML: &str = r#"origin_concurrency = 8

[[site.cache.rule]]
prefix = "/static/"
ttl = "1h"
shared = true

[[site.cache.rule]]
prefix = "/api/"
bypass = true

[[site.cache.rule]]
prefix = "/pronote/appelfonction/"
bypass = true

[site.admission]
paths = ["/pronote/eleve.html"]
new_users_per_minute = 600
burst = 5
claim_window = "10s"
"#;

/// Short patience and think times so a run fits in a few seconds.
const QUICK_SCENARIO: &str = r#"
name = "test surge"

[mix]
impatient = 0.2
quitters = 0.1
bots = 0.04

[patience]
impatient_reload = "1s"
give_up_after = "3s"
bot_interval = "1s"
max_errors = 3

[script]
think_min = "50ms"
think_max = "200ms"
"#;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    surge: SurgeArgs,
}

fn args(flags: &[&str]) -> SurgeArgs {
    Cli::try_parse_from(std::iter::once("surge").chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("flags parse: {e}"))
        .surge
}

/// A fresh directory for one test's files, removed when the test ends.
fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("surge-{name}"))
}

/// The input errors of a run against `target` with this scenario file.
async fn scenario_errors(label: &str, target: &str, scenario: &str) -> Vec<String> {
    let dir = scratch(label);
    let file = dir.join("scenario.toml");
    std::fs::write(&file, scenario).expect("write");
    let path = file.to_str().expect("utf-8 path");
    input_errors(execute(&args(&["--target", target, "--scenario", path])).await)
}

fn input_errors(result: Result<digue::surge::Report, SurgeError>) -> Vec<String> {
    match result {
        Err(SurgeError::Input(problems)) => problems,
        Err(other) => panic!("expected an input error, got {other}"),
        Ok(_) => panic!("expected an input error, the surge ran"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_through_digue_queues_admits_and_never_mixes_sessions() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind portal");
    let portal = Portal::spawn(
        listener,
        PortalOptions {
            capacity: 32,
            base_latency: Duration::from_millis(5),
        },
    );
    let proxy = Proxy::start(&format!("http://{}", portal.addr), "", SITE_TOML).await;
    let dir = scratch("through-digue");
    let scenario = dir.join("quick.toml");
    std::fs::write(&scenario, QUICK_SCENARIO).expect("write scenario");
    let report_path = dir.join("report.json");
    let chart_path = dir.join("chart.svg");
    let target = proxy.url("");
    let admin = proxy.admin_url("");

    let report = execute(&args(&[
        "--target",
        &target,
        "--admin",
        &admin,
        "--scenario",
        scenario.to_str().expect("utf-8 path"),
        "--pupils",
        "50",
        "--peak-rate",
        "50",
        "--curve",
        "constant",
        "--duration",
        "8s",
        "--request-timeout",
        "5s",
        "--report",
        report_path.to_str().expect("utf-8 path"),
        "--chart",
        chart_path.to_str().expect("utf-8 path"),
        "--quiet",
    ]))
    .await
    .unwrap_or_else(|e| panic!("the surge runs: {e}"));
    println!("{report}");

    let p = &report.pupils;
    assert_eq!(p.total, 50);
    assert_eq!(p.bots, 2, "4 % of 50 are bots");
    assert_eq!(
        p.admitted + p.still_waiting + p.gave_up + p.failed + p.not_started,
        p.total - p.bots,
        "every pupil is accounted for: {p:?}"
    );
    assert!(p.admitted > 0, "some pupils got in: {p:?}");
    assert!(
        report.responses.waiting_room.count > 0,
        "10 a second for 48 pupils makes a line"
    );
    assert!(
        report.time_to_get_in.is_some(),
        "admitted pupils were timed"
    );
    assert!(
        report.eta.is_some(),
        "queued pupils compared the ETA with their wait"
    );
    assert!(
        report.session.pupils_with_assets > 0 && report.session.assets_fetched > 0,
        "admitted pupils fetched the page's assets: {:?}",
        report.session
    );
    assert!(
        report.responses.cache_hit.count > 0,
        "assets came from digue's cache: {:?}",
        report.responses
    );
    assert!(
        report.session.sessions_checked > 0,
        "per-user answers were checked: {:?}",
        report.session
    );
    assert_eq!(
        report.session.sessions_mismatched, 0,
        "no pupil saw another's session"
    );
    assert_eq!(
        report.responses.timeout.count, 0,
        "digue answers everybody in time"
    );
    let origin = report.origin.as_ref().expect("sampled with --admin");
    assert!(origin.samples > 0, "metrics were read");
    assert!(
        origin.peak_in_flight.is_some_and(|peak| peak <= 8),
        "the origin stays under its limit: {origin:?}"
    );
    assert_eq!(origin.limit, Some(8));
    assert!(
        portal.peak_in_flight() <= 8,
        "the portal itself saw no more than the limit: {}",
        portal.peak_in_flight()
    );
    assert!(
        report.elapsed_seconds < 9.0,
        "the time limit bounds the run: {}",
        report.elapsed_seconds
    );
    assert!(
        report.portal.is_none(),
        "without --portal-stats the portal's figures are unknown, not zero"
    );
    assert!(
        report
            .to_string()
            .contains("capacity used and failures unknown"),
        "the text says so:\n{report}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report written"))
            .expect("the report is JSON");
    for pointer in [
        "/scenario/name",
        "/scenario/curve",
        "/elapsed_seconds",
        "/time_limit_reached",
        "/pupils/admitted",
        "/pupils/still_waiting",
        "/pupils/gave_up",
        "/time_to_get_in/p50",
        "/time_to_get_in/p90",
        "/time_to_get_in/p99",
        "/eta/median_abs_error_seconds",
        "/eta/within_range_share",
        "/responses/page/count",
        "/responses/cache_hit/p99_ms",
        "/responses/waiting_room/count",
        "/responses/busy/count",
        "/responses/error/count",
        "/responses/timeout/count",
        "/session/sessions_mismatched",
        "/origin/peak_in_flight",
        "/origin/peak_line_waiting",
        "/timeline/0/line_waiting",
        "/timeline/0/admissions",
        "/timeline/0/origin_in_flight",
        "/simulator/cpu_seconds",
        "/simulator/peak_rss_bytes",
        "/warnings",
    ] {
        assert!(
            json.pointer(pointer).is_some(),
            "{pointer} missing from the JSON report"
        );
    }
    assert_eq!(json["scenario"]["name"], "test surge");
    assert!(
        json["portal"].is_null(),
        "unknown, not zero: {}",
        json["portal"]
    );

    let svg = std::fs::read_to_string(&chart_path).expect("chart written");
    assert!(
        svg.starts_with("<svg"),
        "an SVG: {}",
        &svg[..svg.len().min(80)]
    );
    assert!(
        svg.contains("Admissions per second"),
        "the panels are labelled"
    );
}

#[tokio::test]
async fn an_unreachable_target_is_a_quick_clear_error() {
    let target = format!("http://127.0.0.1:{}", unused_ports(1)[0]);
    let started = std::time::Instant::now();
    let result = execute(&args(&["--target", &target, "--quiet"])).await;
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    match result {
        Err(e @ SurgeError::Unreachable { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&target), "names the target: {message}");
            assert_ne!(
                format!("{:?}", e.exit_code()),
                format!("{:?}", std::process::ExitCode::SUCCESS)
            );
        }
        Err(other) => panic!("expected unreachable, got {other}"),
        Ok(_) => panic!("a closed port cannot be surged"),
    }
}

#[tokio::test]
async fn an_unreachable_admin_url_is_refused_before_any_load() {
    let portal = Portal::spawn(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        PortalOptions::default(),
    );
    let admin = format!("http://127.0.0.1:{}", unused_ports(1)[0]);
    let target = format!("http://{}", portal.addr);
    let result = execute(&args(&["--target", &target, "--admin", &admin, "--quiet"])).await;
    assert!(
        matches!(
            &result,
            Err(SurgeError::Unreachable {
                what: "admin URL",
                ..
            })
        ),
        "{:?}",
        result.err()
    );
    assert_eq!(portal.requests(), 0, "no load was sent");
}

#[tokio::test]
async fn a_portal_stats_url_that_is_not_the_demo_portal_s_is_refused_before_any_load() {
    let portal = Portal::spawn(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        PortalOptions::default(),
    );
    let target = format!("http://{}", portal.addr);
    let stats = format!("http://{}/healthz", portal.addr);
    let result = execute(&args(&[
        "--target",
        &target,
        "--portal-stats",
        &stats,
        "--quiet",
    ]))
    .await;
    match &result {
        Err(
            e @ SurgeError::Unreachable {
                what: "portal stats URL",
                ..
            },
        ) => assert!(
            e.to_string()
                .contains("not with the demo portal's counters"),
            "says why: {e}"
        ),
        other => panic!("refused: {:?}", other.as_ref().err()),
    }
    assert_eq!(portal.requests(), 0, "no load was sent");
}

/// A portal whose capacity moves during the run, hammered directly (no
/// digue to protect it): the report gives the share of its capacity used
/// and the failures it lived, from its own counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_surge_reports_the_portal_s_capacity_used_and_its_own_failures() {
    let mut portal = Portal::spawn(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        PortalOptions {
            capacity: 2,
            base_latency: Duration::from_millis(5),
        },
    );
    // The surge reads the counters within milliseconds of this: the first
    // read sees 2, the run lasts well past the change to 4.
    portal.follow("0s:2,1500ms:4".parse().expect("schedule"));
    let dir = scratch("portal-stats");
    let report_path = dir.join("report.json");
    let report = run_with(
        &format!("http://{}", portal.addr),
        "portal-stats",
        PATIENT_ONLY,
        &[
            "--portal-stats",
            &format!("http://{}", portal.addr),
            "--pupils",
            "30",
            "--peak-rate",
            "30",
            "--curve",
            "constant",
            "--duration",
            "5s",
            "--request-timeout",
            "2s",
            "--report",
            report_path.to_str().expect("utf-8 path"),
        ],
    )
    .await;
    println!("{report}");

    let p = report.portal.as_ref().expect("read with --portal-stats");
    assert!(
        p.samples > 0,
        "the counters were read during the run: {p:?}"
    );
    assert!(
        p.stats_url.ends_with("/__demo/stats"),
        "a bare URL reads the demo's counters: {}",
        p.stats_url
    );
    assert_eq!(
        (p.capacity_at_start, p.capacity_min),
        (2, 2),
        "the capacity before the load: {p:?}"
    );
    assert_eq!(
        (p.capacity_at_end, p.capacity_max),
        (4, 4),
        "the schedule moved it during the run: {p:?}"
    );
    let share = p.capacity_used_share.expect("time passed");
    assert!(
        share > 0.0 && share <= 1.0,
        "30 pupils at once on 2 to 4 slots used some of it: {share}"
    );
    assert!(
        p.overload_errors > 0,
        "unprotected, the portal failed some requests: {p:?}"
    );
    assert_eq!(
        p.overload_errors,
        p.late_503s + p.dropped_connections,
        "every failure is a late 503 or a dropped connection: {p:?}"
    );
    assert!(p.requests > 0, "{p:?}");
    assert!(
        report.timeline.iter().any(|t| t.portal_capacity == Some(4))
            && report
                .timeline
                .iter()
                .any(|t| t.portal_capacity_used_share.is_some()),
        "the timeline follows the portal second by second: {:?}",
        report.timeline
    );
    let text = report.to_string();
    assert!(
        text.contains("capacity used") && text.contains("overload errors"),
        "the text report shows both:\n{text}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report written"))
            .expect("the report is JSON");
    for pointer in [
        "/portal/capacity_used_share",
        "/portal/overload_errors",
        "/portal/late_503s",
        "/portal/dropped_connections",
        "/portal/capacity_min",
        "/timeline/0/portal_capacity",
        "/timeline/0/portal_capacity_used_share",
    ] {
        assert!(
            json.pointer(pointer).is_some_and(|v| !v.is_null()),
            "{pointer} missing from the JSON report"
        );
    }
}

#[tokio::test]
async fn a_bad_scenario_file_is_refused_with_the_key_named() {
    let dir = scratch("bad-scenario");
    let file = dir.join("typo.toml");
    std::fs::write(
        &file,
        "[arrivals]\npeak_rat = 30\npupils = 0\n[limits]\nduration = \"soon\"\n",
    )
    .expect("write");
    let problems = input_errors(
        execute(&args(&[
            "--target",
            "http://127.0.0.1:9",
            "--scenario",
            file.to_str().expect("utf-8 path"),
        ]))
        .await,
    );
    let all = problems.join("\n");
    assert!(all.contains("arrivals.peak_rat: unknown key"), "{all}");
    assert!(all.contains("arrivals.pupils"), "{all}");
    assert!(all.contains("limits.duration"), "{all}");

    let missing = dir.join("absent.toml");
    let problems = input_errors(
        execute(&args(&[
            "--target",
            "http://127.0.0.1:9",
            "--scenario",
            missing.to_str().expect("utf-8 path"),
        ]))
        .await,
    );
    assert!(problems[0].contains("cannot read"), "{problems:?}");
}

#[tokio::test]
async fn zero_pupils_and_absurd_rates_are_refused() {
    let target = "http://127.0.0.1:9";
    let problems = input_errors(execute(&args(&["--target", target, "--pupils", "0"])).await);
    assert!(problems[0].starts_with("--pupils:"), "{problems:?}");
    for rate in ["0", "-5", "2e6", "NaN"] {
        let problems =
            input_errors(execute(&args(&["--target", target, "--peak-rate", rate])).await);
        assert!(
            problems[0].starts_with("--peak-rate:") && problems[0].contains("rate"),
            "{rate}: {problems:?}"
        );
    }
    let problems = input_errors(execute(&args(&["--target", "https://example.org"])).await);
    assert!(problems[0].contains("https"), "{problems:?}");
    let problems = input_errors(
        execute(&args(&[
            "--target",
            target,
            "--report",
            "/nonexistent-dir/r.json",
        ]))
        .await,
    );
    assert!(problems[0].starts_with("--report:"), "{problems:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_target_gives_timeouts_and_the_time_limit_ends_the_run() {
    // Accepts connections and never answers: the worst origin there is.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let target = format!("http://{}", listener.local_addr().expect("addr"));
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let report = execute(&args(&[
        "--target",
        &target,
        "--pupils",
        "10",
        "--peak-rate",
        "100",
        "--duration",
        "1500ms",
        "--request-timeout",
        "300ms",
        "--quiet",
    ]))
    .await
    .unwrap_or_else(|e| panic!("runs: {e}"));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "bounded by the time limit: {:?}",
        started.elapsed()
    );
    assert!(report.time_limit_reached);
    assert!(report.responses.timeout.count > 0, "{:?}", report.responses);
    assert_eq!(report.pupils.admitted, 0);
    let p = &report.pupils;
    assert_eq!(
        p.still_waiting + p.gave_up + p.failed + p.not_started,
        p.total - p.bots,
        "{p:?}"
    );
    hold.abort();
}

/// Runs a short surge against `target` with `scenario` and extra flags.
async fn run_with(
    target: &str,
    name: &str,
    scenario: &str,
    flags: &[&str],
) -> digue::surge::Report {
    let dir = scratch(name);
    let file = dir.join("scenario.toml");
    std::fs::write(&file, scenario).expect("write scenario");
    let mut all = vec![
        "--target",
        target,
        "--scenario",
        file.to_str().expect("utf-8 path"),
        "--quiet",
    ];
    all.extend_from_slice(flags);
    execute(&args(&all))
        .await
        .unwrap_or_else(|e| panic!("the surge runs: {e}"))
}

/// Nothing but patient pupils who get in, look around briefly and leave.
const PATIENT_ONLY: &str = "[mix]\nimpatient = 0.0\nquitters = 0.0\nbots = 0.0\n\
                            [script]\nthink_min = \"10ms\"\nthink_max = \"50ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_never_keep_pupils_from_starting() {
    let portal = Portal::spawn(
        TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        PortalOptions {
            capacity: 32,
            base_latency: Duration::from_millis(2),
        },
    );
    // Half the arrivals are bots, hammering until the end; two pupils at once.
    let scenario = "[mix]\nimpatient = 0.0\nquitters = 0.0\nbots = 0.5\n\
                    [patience]\nbot_interval = \"200ms\"\n\
                    [script]\nthink_min = \"10ms\"\nthink_max = \"50ms\"\n";
    let report = run_with(
        &format!("http://{}", portal.addr),
        "bots-ceiling",
        scenario,
        &[
            "--pupils",
            "20",
            "--peak-rate",
            "100",
            "--curve",
            "constant",
            "--concurrency",
            "2",
            "--duration",
            "8s",
        ],
    )
    .await;
    let p = &report.pupils;
    assert_eq!(p.bots, 10);
    assert_eq!(
        (p.admitted, p.finished, p.not_started),
        (10, 10, 0),
        "every pupil started and finished despite the bots: {p:?}"
    );
    assert!(
        !report.time_limit_reached,
        "the run ends when the pupils are done, not at the time limit"
    );
    assert!(report.responses.bot_requests > 0, "the bots did hammer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_never_crashes_a_pupil() {
    let huge = "18446744073709551615";
    let header = Origin::start(move |_| reply(503, &[("retry-after", huge)], "<html>file")).await;
    let json = Origin::start(move |_| {
        reply(
            503,
            &[("content-type", "application/json")],
            &format!(r#"{{"state":"queued","position":3,"retry_after":{huge}}}"#),
        )
    })
    .await;
    for origin in [&header, &json] {
        let report = run_with(
            &origin.url(),
            "huge-retry",
            PATIENT_ONLY,
            &["--pupils", "10", "--peak-rate", "1000", "--duration", "1s"],
        )
        .await;
        assert!(
            report.time_limit_reached,
            "the pupils honour the (capped) wait instead of crashing: {:?}",
            report.warnings
        );
        assert_eq!(report.pupils.still_waiting, 10, "{:?}", report.pupils);
        assert!(
            !report.warnings.iter().any(|w| w.contains("panicked")),
            "{:?}",
            report.warnings
        );
    }
}

#[tokio::test]
async fn a_curve_longer_than_the_time_limit_is_refused_before_the_run() {
    let target = "http://127.0.0.1:9";
    for (rate, pupils) in [("1e-20", "2"), ("0.01", "500")] {
        let problems = input_errors(
            execute(&args(&[
                "--target",
                target,
                "--peak-rate",
                rate,
                "--pupils",
                pupils,
            ]))
            .await,
        );
        assert!(
            problems[0].starts_with("--peak-rate:") && problems[0].contains("--duration"),
            "{rate}/s for {pupils} pupils: {problems:?}"
        );
    }
    let problems = scenario_errors(
        "slow-curve",
        target,
        "[arrivals]\npeak_rate = 0.01\npupils = 500\n",
    )
    .await;
    assert!(
        problems.iter().any(|p| p.contains("arrivals.peak_rate:")),
        "the scenario key is named: {problems:?}"
    );
}

#[tokio::test]
async fn paths_that_are_not_uris_are_refused_with_their_key() {
    let target = "http://127.0.0.1:9";
    let problems = input_errors(execute(&args(&["--target", target, "--entry", "/a b"])).await);
    assert!(problems[0].starts_with("--entry:"), "{problems:?}");
    let problems = scenario_errors(
        "bad-paths",
        target,
        "[script]\nentry = \"/é l\"\nassets = [\"/ok.css\", \"/x y.css\"]\n\
         [[script.step]]\npath = \"/api/{n} notes\"\n",
    )
    .await;
    let all = problems.join("\n");
    for key in ["script.entry:", "script.assets[1]:", "script.step[0].path:"] {
        assert!(all.contains(key), "{key} missing from {all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_link_that_is_not_a_uri_is_never_sent_as_the_home_page() {
    let origin = Origin::start(|_| {
        reply(
            200,
            &[("content-type", "text/html")],
            r#"<img src="/logo 1.png"><link href="/ok.css">"#,
        )
    })
    .await;
    let report = run_with(
        &origin.url(),
        "bad-asset",
        "[mix]\nimpatient = 0.0\nquitters = 0.0\nbots = 0.0\n[script]\nstep = []\n",
        &["--pupils", "1", "--entry", "/e.html", "--duration", "3s"],
    )
    .await;
    assert_eq!(report.pupils.finished, 1, "{:?}", report.pupils);
    assert_eq!(origin.count("/ok.css"), 1, "the good asset is fetched");
    assert_eq!(origin.count("/"), 0, "no request turned into one for /");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_on_the_entry_page_is_not_getting_in() {
    let origin = Origin::start(|s| {
        if s.target == "/login" {
            reply(200, &[], "<html>login")
        } else {
            reply(302, &[("location", "/login")], "")
        }
    })
    .await;
    let report = run_with(
        &origin.url(),
        "redirect",
        PATIENT_ONLY,
        &[
            "--pupils",
            "1",
            "--entry",
            "/e.html",
            "--duration",
            "1500ms",
        ],
    )
    .await;
    assert_eq!(report.pupils.admitted, 0, "{:?}", report.pupils);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("JSON");
    assert!(
        json.pointer("/responses/redirect/count")
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|n| n >= 1),
        "redirects are reported as such: {}",
        json["responses"]
    );
    assert_eq!(
        json["responses"]["page"]["count"], 0,
        "{}",
        json["responses"]
    );
    assert!(
        report.to_string().contains("redirect"),
        "the text report lists redirects"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_room_answers_never_make_a_pupil_poll_in_a_busy_loop() {
    let admitted = Origin::start(|_| {
        reply(
            200,
            &[("content-type", "application/json")],
            r#"{"state":"admitted"}"#,
        )
    })
    .await;
    let retry_now = Origin::start(|_| reply(503, &[("retry-after", "0")], "<html>file")).await;
    for origin in [&admitted, &retry_now] {
        run_with(
            &origin.url(),
            "busy-loop",
            PATIENT_ONLY,
            &["--pupils", "1", "--duration", "1s"],
        )
        .await;
        assert!(
            origin.total() <= 10,
            "a pupil paused between polls: {} requests in 1 s",
            origin.total()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_get_in_counts_the_wait_for_a_slot() {
    let origin = Origin::start(|_| reply(200, &[], "<html>in")).await;
    origin.set_delay(Duration::from_millis(400));
    let report = run_with(
        &origin.url(),
        "slot-wait",
        "[mix]\nimpatient = 0.0\nquitters = 0.0\nbots = 0.0\n[script]\nstep = []\n",
        &[
            "--pupils",
            "3",
            "--peak-rate",
            "1000",
            "--curve",
            "constant",
            "--concurrency",
            "1",
            "--duration",
            "5s",
        ],
    )
    .await;
    let t = report.time_to_get_in.expect("everybody got in");
    assert_eq!(t.count, 3);
    assert!(
        t.max >= 1.1,
        "the third pupil waited for two others, then 0.4 s: {t:?}"
    );
}

#[tokio::test]
async fn output_paths_are_checked_before_any_load() {
    let dir = scratch("outputs");
    let as_dir = dir.path().to_str().expect("utf-8 path");
    for flag in ["--report", "--chart"] {
        let problems =
            input_errors(execute(&args(&["--target", "http://127.0.0.1:9", flag, as_dir])).await);
        assert!(
            problems[0].starts_with(&format!("{flag}:")) && problems[0].contains("directory"),
            "{problems:?}"
        );
    }
}
