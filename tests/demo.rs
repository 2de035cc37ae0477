//! `digue demo`, the README's first command, works end to end: the binary
//! starts the fragile portal and digue in front of it, and prints a URL
//! that serves the portal's pages through the cache.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use support::get;

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `digue demo` on a free port and returns the URL it printed.
fn start_demo() -> (Demo, String) {
    let (demo, url, _) = start_demo_with_banner();
    (demo, url)
}

/// Starts `digue demo` on a free port; returns the URL it printed and the
/// whole banner (up to its last line, "… Ctrl-C to stop.").
fn start_demo_with_banner() -> (Demo, String, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_digue"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("digue demo starts");
    let stdout = child.stdout.take().expect("piped");
    let demo = Demo(child);
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let last = line.contains("Ctrl-C to stop");
        banner.push(line);
        if last {
            break;
        }
    }
    let url = banner
        .iter()
        .find_map(|line| {
            let rest = line.split("digue in front of it:").nth(1)?;
            Some(rest.trim().trim_end_matches('/').to_owned())
        })
        .expect("demo prints the URL to open");
    // Keep reading, like a terminal would, until the demo exits.
    std::thread::spawn(move || lines.for_each(drop));
    (demo, url, banner)
}

/// A free loopback port, for a demo whose output nobody reads.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn demo_serves_the_portal_through_the_cache() {
    let (_demo, url) = tokio::task::spawn_blocking(start_demo)
        .await
        .expect("no panic");

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
    let (_demo, url, banner) = tokio::task::spawn_blocking(start_demo_with_banner)
        .await
        .expect("no panic");
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
        limit.ends_with(" 32"),
        "digue sends the demo portal no more than its capacity: {limit}"
    );
}

/// `digue demo | head -1`, or a terminal closed under it: the banner cannot
/// be written, and the demo must go on serving instead of dying with it.
#[tokio::test]
async fn demo_keeps_serving_when_nobody_reads_its_output() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_digue"))
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("digue demo starts");
    drop(child.stdout.take());
    let mut demo = Demo(child);

    let url = format!("http://127.0.0.1:{port}/");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(res) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            drop(res);
            answered = Some(get(&url, &[]).await.status);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        answered.map(|s| s.as_u16()),
        Some(200),
        "the demo answers on {url}"
    );
    // Past the banner: still alive and serving.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(get(&url, &[]).await.status, 200, "still serving");
    assert!(
        demo.0.try_wait().expect("try_wait").is_none(),
        "the demo is still running"
    );
}
