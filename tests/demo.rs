//! `digue demo`, the README's first command, works end to end: the binary
//! starts the fragile portal and digue in front of it, and prints a URL
//! that serves the portal's pages through the cache.

mod support;

use std::process::Command;
use std::time::Duration;

use support::process::on_free_ports;
use support::{Process, get, wait_for};

/// `digue demo --listen addr`.
fn command(listen: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_digue"));
    command.args(["demo", "--listen", listen]);
    command
}

/// Starts `digue demo` on port 0 (it binds, then prints where); returns
/// it, the URL it printed, and the whole banner (up to its last line,
/// "… Ctrl-C to stop."). Its output keeps being read, like a terminal's.
async fn start_demo() -> (Process, String, Vec<String>) {
    start_demo_with(&[]).await
}

/// [`start_demo`] with more flags.
async fn start_demo_with(flags: &[&str]) -> (Process, String, Vec<String>) {
    let mut demo = Process::spawn("digue demo", command("127.0.0.1:0").args(flags));
    let banner = wait_for(
        "digue demo prints its banner",
        Duration::from_secs(10),
        async || {
            if let Some(status) = demo.exited() {
                panic!("digue demo exited ({status}):\n{}", demo.tail());
            }
            let out = demo.stdout();
            let lines: Vec<String> = out.lines().map(str::to_owned).collect();
            match lines.iter().position(|l| l.contains("Ctrl-C to stop")) {
                Some(last) => Ok(lines[..=last].to_vec()),
                None => Err(out),
            }
        },
    )
    .await;
    let url = banner
        .iter()
        .find_map(|line| {
            let rest = line.split("digue in front of it:").nth(1)?;
            Some(rest.trim().trim_end_matches('/').to_owned())
        })
        .expect("demo prints the URL to open");
    (demo, url, banner)
}

#[tokio::test]
async fn demo_serves_the_portal_through_the_cache() {
    let (_demo, url, _) = start_demo().await;

    let home = get(&format!("{url}/"), &[]).await;
    assert_eq!(home.status, 200, "home page through digue");
    assert!(
        home.text().contains("/pronote/eleve.html"),
        "the portal's home links to the login"
    );

    let css = format!("{url}/static/portail.css");
    get(&css, &[]).await;
    let again = get(&css, &[]).await;
    assert!(
        again.cache_status().starts_with("digue; hit"),
        "header-less static asset cached by the shipped rule: {}",
        again.cache_status()
    );

    let login = get(&format!("{url}/pronote/eleve.html"), &[]).await;
    let cookie = login
        .header("set-cookie")
        .expect("login creates a session")
        .to_owned();
    let session = cookie.split(';').next().expect("name=value").to_owned();
    let notes = get(&format!("{url}/api/notes"), &[("cookie", &session)]).await;
    assert_eq!(
        notes.status,
        200,
        "per-user API with the session: {}",
        notes.text()
    );
    assert!(
        notes.cache_status().contains("fwd=bypass"),
        "per-user calls bypass the cache: {}",
        notes.cache_status()
    );
}

#[derive(clap::Parser)]
struct SurgeCli {
    #[command(flatten)]
    surge: digue::surge::SurgeArgs,
}

/// The README says the demo prints the `digue surge` command to run: it
/// must name the demo's real addresses, and pass the surge's own checks.
#[tokio::test]
async fn demo_prints_a_ready_to_run_surge_command() {
    let (_demo, url, banner) = start_demo().await;
    let command = banner
        .iter()
        .find(|line| line.contains(" surge --target "))
        .unwrap_or_else(|| panic!("the banner prints a surge command: {banner:#?}"));
    let words: Vec<&str> = command
        .split_whitespace()
        .skip_while(|w| *w != "surge")
        .collect();
    let cli = <SurgeCli as clap::Parser>::try_parse_from(&words)
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    let args = cli.surge;
    assert_eq!(args.target, url, "the surge targets the demo's digue");
    digue::surge::Plan::from_args(&args)
        .unwrap_or_else(|e| panic!("the printed surge is a valid plan: {e:?}"));
    let admin = args
        .admin
        .as_deref()
        .expect("with --admin, to sample /metrics");
    let metrics = get(&format!("{admin}/metrics"), &[]).await;
    assert_eq!(metrics.status, 200, "{admin}/metrics answers");
    let limit = metrics
        .text()
        .lines()
        .find(|l| l.starts_with("digue_origin_limit{"))
        .map(str::to_owned)
        .expect("the origin limit is exported");
    assert!(
        limit.ends_with(" 128"),
        "the demo's ceiling is four times the portal's capacity: {limit}"
    );
    assert!(
        metrics
            .text()
            .lines()
            .any(|l| l == "digue_autopilot_enabled{site=\"pronote\"} 1"),
        "and the autopilot finds the real capacity under it"
    );
    let stats_url = args
        .portal_stats
        .as_deref()
        .expect("with --portal-stats, to read the portal's own counters");
    let stats = portal_stats(stats_url).await;
    assert_eq!(stats.capacity, 32, "the portal's own counters: {stats:?}");
}

/// The demo portal's counters, read from the URL the banner printed.
async fn portal_stats(url: &str) -> digue::demo::Stats {
    let answer = get(url, &[]).await;
    assert_eq!(answer.status, 200, "{url} answers: {}", answer.text());
    assert_eq!(
        answer.header("cache-control"),
        Some("no-store"),
        "the counters are never cached"
    );
    serde_json::from_str(&answer.text()).unwrap_or_else(|e| {
        panic!(
            "{url} serves the portal's counters ({e}): {}",
            answer.text()
        )
    })
}

/// `--capacity 0s:8,2s:5`: the portal starts at 8 (and digue with it), the
/// schedule brings it down to 5, and the portal's counters show both.
#[tokio::test]
async fn a_capacity_schedule_moves_the_demo_portal_s_capacity() {
    let (_demo, _url, banner) = start_demo_with(&["--capacity", "0s:8,2s:5"]).await;
    assert!(
        banner[0].contains("(capacity 0s:8,2s:5)"),
        "the banner shows the schedule: {banner:#?}"
    );
    let stats_url = banner
        .iter()
        .find_map(|line| {
            Some(
                line.split("the portal's counters:")
                    .nth(1)?
                    .trim()
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| panic!("the banner prints the portal's counters: {banner:#?}"));
    let stats = wait_for(
        "the schedule moves the capacity to 5",
        Duration::from_secs(10),
        async || {
            let stats = portal_stats(&stats_url).await;
            if stats.capacity == 5 {
                Ok(stats)
            } else {
                Err(stats)
            }
        },
    )
    .await;
    assert!(
        stats.capacity_seconds > 5.0 * stats.uptime_seconds + 1.0,
        "the capacity offered before the change was 8, for about 2 s: {stats:?}"
    );
}

#[test]
fn a_bad_capacity_schedule_is_refused_with_what_is_wrong() {
    let out = command("127.0.0.1:0")
        .args(["--capacity", "0s:32,60s:12,30s:48"])
        .output()
        .expect("digue runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
    assert!(
        stderr.contains("offset 30s comes after 1m"),
        "names the offset out of order: {stderr}"
    );
}

/// `digue demo | head -1`, or a terminal closed under it: the banner cannot
/// be written, and the demo must go on serving instead of dying with it.
#[tokio::test]
async fn demo_keeps_serving_when_nobody_reads_its_output() {
    // Its stdout is closed, so it cannot print where it listens: it is
    // given a port that was free, and started again on another when it
    // lost the race for it.
    let (mut demo, url) = on_free_ports(1, "digue demo", async |ports: &[u16]| {
        let listen = format!("127.0.0.1:{}", ports[0]);
        let mut demo = Process::spawn_unread("digue demo", &mut command(&listen));
        let up = wait_for("digue demo listens", Duration::from_secs(5), async || {
            if let Some(status) = demo.exited() {
                let why = demo.stderr();
                assert!(
                    why.contains("cannot listen on"),
                    "digue demo exited ({status}) for another reason than its port:\n{why}"
                );
                return Ok(Err(why));
            }
            match tokio::net::TcpStream::connect(&listen).await {
                Ok(_) => Ok(Ok(())),
                Err(e) => Err(e),
            }
        })
        .await;
        up.map(|()| (demo, format!("http://{listen}/")))
    })
    .await;
    let answered = get(&url, &[]).await.status;
    assert_eq!(answered, 200, "the demo answers on {url}");
    // Past the banner: still alive and serving.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&url, &[]).await.status, 200, "still serving");
    assert!(demo.exited().is_none(), "the demo is still running");
}
