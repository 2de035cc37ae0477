//! The `digue` binary end to end: `check` and `run` on real files, real
//! ports and real signals.
#![allow(clippy::disallowed_methods)] // deadlines and timings of the test itself run on real time

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::{Origin, Process, TempDir, raw, wait_for, wait_until};

const DIGUE: &str = env!("CARGO_BIN_EXE_digue");

/// The `digue` binary with these arguments (and `RUST_LOG=info`).
fn spawn(args: &[&str], env: &[(&str, &str)]) -> Process {
    Process::spawn(
        "digue",
        Command::new(DIGUE)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied()),
    )
}

/// Runs `digue args…` to its end (10 s at most).
async fn digue(args: &[&str]) -> Output {
    spawn(args, &[])
        .exit_within(Duration::from_secs(10))
        .await
        .expect("digue exits within 10 s")
}

/// `digue run --config file`, once it serves: the process, and the public
/// and admin addresses it bound. The file asks for port 0: digue binds
/// the ports and logs them, so no port changes hands between the test and
/// digue.
async fn run(file: &Path, env: &[(&str, &str)]) -> (Process, SocketAddr, SocketAddr) {
    let mut digue = spawn(&["run", "--config", &file.to_string_lossy()], env);
    let (listen, admin) = wait_for(
        "digue run logs \"digue is serving\" with its addresses",
        Duration::from_secs(10),
        async || {
            if let Some(status) = digue.exited() {
                panic!(
                    "digue run exited ({status}) before serving:\n{}",
                    digue.tail()
                );
            }
            serving(&digue.stderr()).ok_or("not yet")
        },
    )
    .await;
    (digue, listen, admin)
}

/// The addresses of the "digue is serving listen=… admin=Some(…)" log line.
fn serving(logs: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = logs.lines().find(|l| l.contains("digue is serving"))?;
    let listen = line.split("listen=").nth(1)?.split_whitespace().next()?;
    let admin = line.split("admin=Some(").nth(1)?.split(')').next()?;
    Some((listen.parse().ok()?, admin.parse().ok()?))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const VALID: &str = r#"
[server]
listen = "127.0.0.1:LISTEN"
admin_listen = "127.0.0.1:ADMIN"

[[site]]
name = "portal"
hosts = ["*"]
origin = "http://127.0.0.1:9"

[[site.cache.rule]]
prefix = "/static/"
ttl = "1h"
"#;

/// Two mistakes in one file: a bad duration in the second rule and a typo.
const BAD: &str = r#"
[server]
listen = "127.0.0.1:0"

[[site]]
name = "portal"
hosts = ["*"]
origin = "http://127.0.0.1:9"
origin_concurency = 64

[[site.cache.rule]]
prefix = "/static/"
ttl = "1h"

[[site.cache.rule]]
prefix = "/news"
ttl = "1 hour please"
"#;

fn assert_every_problem_is_listed(out: &Output) {
    let err = stderr(out);
    assert!(
        err.contains("site[0].cache.rule[1].ttl"),
        "the bad duration is reported with its key path:\n{err}"
    );
    assert!(
        err.contains("1 hour please"),
        "the offending value is quoted:\n{err}"
    );
    assert!(
        err.contains("site[0].origin_concurency"),
        "the unknown key is reported with its key path:\n{err}"
    );
}

/// A config file in a temp directory of its own.
fn config_file(text: &str) -> (TempDir, std::path::PathBuf) {
    let dir = TempDir::new("cli");
    let file = dir.write("digue.toml", text);
    (dir, file)
}

#[tokio::test]
async fn check_lists_every_problem_with_its_key_path_and_fails() {
    let (_dir, file) = config_file(BAD);
    let out = digue(&["check", "--config", &file.to_string_lossy()]).await;
    assert!(
        !out.status.success(),
        "a bad config fails the check: {:?}",
        out.status
    );
    assert_every_problem_is_listed(&out);
}

#[tokio::test]
async fn check_accepts_a_valid_file() {
    let (_dir, file) = config_file(&VALID.replace("LISTEN", "8080").replace("ADMIN", "9090"));
    let out = digue(&["check", "--config", &file.to_string_lossy()]).await;
    assert!(
        out.status.success(),
        "a valid config passes: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("ok"),
        "check says ok: {}",
        stdout(&out)
    );
}

#[tokio::test]
async fn check_accepts_the_shipped_example_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let out = digue(&["check", "--config", &example.to_string_lossy()]).await;
    assert!(
        out.status.success(),
        "the shipped config.toml is valid: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    assert!(stdout(&out).contains("ok"), "{}", stdout(&out));
}

#[tokio::test]
async fn check_on_a_missing_file_says_so_and_fails() {
    let dir = TempDir::new("cli");
    let missing = dir.join("does-not-exist.toml");
    let out = digue(&["check", "--config", &missing.to_string_lossy()]).await;
    assert!(
        !out.status.success(),
        "a missing file fails: {:?}",
        out.status
    );
    let err = stderr(&out);
    assert!(
        err.contains("cannot read") && err.contains(&*missing.to_string_lossy()),
        "the error names the file it could not read:\n{err}"
    );
    assert!(err.contains("No such file"), "the error says why:\n{err}");
}

#[tokio::test]
async fn run_refuses_to_start_on_a_bad_config() {
    let (_dir, file) = config_file(BAD);
    let out = spawn(&["run", "--config", &file.to_string_lossy()], &[])
        .exit_within(Duration::from_secs(5))
        .await
        .expect("digue run gives up on a bad config within 5 s");
    assert!(
        !out.status.success(),
        "a bad config is refused: {:?}",
        out.status
    );
    assert_every_problem_is_listed(&out);
}

/// `GET target` on the admin listener over a fresh connection, as raw text.
async fn admin_get(admin: SocketAddr, target: &str, headers: &str) -> String {
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: admin\r\n{headers}Connection: close\r\n\r\n");
    raw(admin, request.as_bytes()).await
}

#[tokio::test]
async fn run_serves_healthz_on_the_admin_port_and_exits_cleanly_on_sigterm() {
    let (_dir, file) = config_file(&VALID.replace("LISTEN", "0").replace("ADMIN", "0"));
    let (digue, _, admin) = run(&file, &[]).await;

    let healthz = admin_get(admin, "/healthz", "").await;
    let status = healthz.lines().next().unwrap_or_default();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "/healthz answers 200: {status}"
    );

    digue.signal("TERM");
    let out = digue
        .exit_within(Duration::from_secs(5))
        .await
        .expect("digue exits within 5 s of SIGTERM");
    assert_eq!(
        out.status.code(),
        Some(0),
        "a SIGTERM stop is a clean exit:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[tokio::test]
async fn sighup_reloads_the_file_refuses_a_broken_one_and_logs_keep_private_values_out() {
    let origin = Origin::fixed(&[], "page").await;
    let config = |concurrency: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             access_log = true\n[[site]]\nname = \"portal\"\nhosts = [\"*\"]\n\
             origin = \"{}\"\norigin_concurrency = {concurrency}\n",
            origin.url()
        )
    };
    let (_dir, file) = config_file(&config("8"));
    let token = "admin-token-for-the-test";
    let (digue, public, admin) = run(&file, &[("DIGUE_ADMIN_TOKEN", token)]).await;
    let auth = format!("Authorization: Bearer {token}\r\n");
    let limit = Duration::from_secs(10);
    let sites = async || admin_get(admin, "/admin/sites", &auth).await;
    wait_until("the admin API shows the limit", limit, async || {
        sites().await.contains("\"origin_concurrency\":8")
    })
    .await;

    // Requests full of things that must never reach a log line.
    let secret_request = "GET /page?eleve=query-secret-4711 HTTP/1.1\r\nHost: ent.example.fr\r\n\
         Cookie: JSESSIONID=cookie-secret-4711\r\nAuthorization: Bearer token-secret-4711\r\n\
         Connection: close\r\n\r\n";
    assert!(
        raw(public, secret_request.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );
    let body = "body-secret-4711";
    let post = format!(
        "POST /pronote/appelfonction/1 HTTP/1.1\r\nHost: ent.example.fr\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert!(
        raw(public, post.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );

    // SIGHUP applies a changed file.
    std::fs::write(&file, config("3")).expect("rewrite config");
    digue.signal("HUP");
    wait_until("the reloaded limit", limit, async || {
        sites().await.contains("\"origin_concurrency\":3")
    })
    .await;

    // A broken file is refused; the running config keeps serving.
    std::fs::write(
        &file,
        config("3").replace("origin_concurrency = 3", "origin_timeout = \"soon\""),
    )
    .expect("rewrite config");
    digue.signal("HUP");
    wait_until("a refused reload", limit, async || {
        admin_get(admin, "/metrics", "")
            .await
            .contains("digue_config_reloads_total{outcome=\"refused\"} 1")
    })
    .await;
    assert!(
        sites().await.contains("\"origin_concurrency\":3"),
        "the old config stays"
    );
    assert!(
        raw(public, secret_request.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );

    digue.signal("TERM");
    let out = digue
        .exit_within(Duration::from_secs(10))
        .await
        .expect("digue exits after SIGTERM");
    let logs = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        logs.contains("site[0].origin_timeout"),
        "the refused reload is logged with its key path:\n{logs}"
    );
    assert!(
        logs.contains("client=127.0.0.0/24"),
        "the access log truncates the client:\n{logs}"
    );
    assert!(
        logs.contains("path=/page"),
        "the access log has the path:\n{logs}"
    );
    for secret in [
        "query-secret",
        "cookie-secret",
        "token-secret",
        "body-secret",
        token,
    ] {
        assert!(
            !logs.contains(secret),
            "{secret} leaked into the logs:\n{logs}"
        );
    }
}

/// A site `name` in front of `origin`, with more keys.
fn site_toml(name: &str, origin: &str, keys: &str) -> String {
    format!(
        "[[site]]\nname = \"{name}\"\nhosts = [\"{name}.example.fr\"]\norigin = \"{origin}\"\n{keys}\n"
    )
}

#[tokio::test]
async fn check_reports_a_backend_that_is_not_http_with_its_index() {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\n[[site]]\nname = \"portal\"\nhosts = [\"*\"]\n\
                origin = [\"https://10.1.0.11\", \"ftp://10.1.0.12\"]\n";
    let (_dir, file) = config_file(text);
    let out = digue(&["check", "--config", &file.to_string_lossy()]).await;
    assert!(!out.status.success(), "the check fails");
    let err = stderr(&out);
    assert!(
        err.contains("site[0].origin[1]") && err.contains("ftp://10.1.0.12"),
        "the second backend is named:\n{err}"
    );
    assert!(
        !err.contains("site[0].origin[0]"),
        "the first is fine:\n{err}"
    );
}

#[tokio::test]
async fn check_reports_tls_keys_on_an_http_origin_and_a_client_certificate_without_its_key() {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}{}",
        site_toml(
            "plain",
            "http://10.0.0.5:8080",
            "origin_ca_file = \"ca.pem\"\norigin_http2 = true"
        ),
        site_toml(
            "secure",
            "https://pronote.example.fr",
            "origin_client_cert = \"client.pem\""
        ),
    );
    let (_dir, file) = config_file(&text);
    let out = digue(&["check", "--config", &file.to_string_lossy()]).await;
    assert!(!out.status.success(), "the check fails");
    let err = stderr(&out);
    for path in [
        "site[0].origin_ca_file",
        "site[0].origin_http2",
        "site[1].origin_client_key",
    ] {
        assert!(err.contains(path), "{path} is reported:\n{err}");
    }
    assert!(
        err.contains("only for an https:// origin"),
        "says why:\n{err}"
    );
}

#[tokio::test]
async fn check_reports_a_bad_ca_file_and_an_unreadable_client_key_with_their_key_paths() {
    let dir = TempDir::new("cli-tls");
    let bad_ca = dir.write(
        "ca.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    let client = support::tls::TestCert::new(dir.path(), "client", &["digue.example.fr"]);
    let missing_key = dir.join("nowhere.key");
    let keys = format!(
        "origin_ca_file = \"{}\"\norigin_client_cert = \"{}\"\norigin_client_key = \"{}\"",
        bad_ca.display(),
        client.cert.display(),
        missing_key.display()
    );
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        site_toml("secure", "https://pronote.example.fr", &keys)
    );
    let file = dir.write("digue.toml", &text);
    let out = digue(&["check", "--config", &file.to_string_lossy()]).await;
    assert!(!out.status.success(), "the check fails");
    let err = stderr(&out);
    assert!(
        err.contains("site[0].origin_ca_file") && err.contains(&bad_ca.display().to_string()),
        "the bad CA file, by key path and file:\n{err}"
    );
    assert!(
        err.contains("site[0].origin_client_key") && err.contains("nowhere.key"),
        "the unreadable key, by key path and file:\n{err}"
    );
}

#[tokio::test]
async fn run_logs_one_line_naming_the_origin_and_its_tls_error() {
    let dir = TempDir::new("cli-tls");
    let ca = support::tls::TestCa::new(dir.path(), "ca");
    let cert = ca.issue(dir.path(), "origin", &["127.0.0.1"]);
    let origin = Origin::start_tls(
        support::tls::origin_tls(&cert, None, &[b"http/1.1"]),
        |_| support::reply(200, &[], "secret page body"),
    )
    .await;
    // No origin_ca_file: the private CA is unknown.
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}",
        site_toml("portal", &origin.url(), "").replace("portal.example.fr", "*")
    );
    let file = dir.write("digue.toml", &text);
    let (digue, public, _) = run(&file, &[]).await;
    let answer = raw(
        public,
        b"GET /page HTTP/1.1\r\nHost: ent.example.fr\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    digue.signal("TERM");
    let out = digue
        .exit_within(Duration::from_secs(10))
        .await
        .expect("digue exits after SIGTERM");
    let logs = format!("{}{}", stdout(&out), stderr(&out));
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("TLS with the origin failed"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for one failure:\n{logs}");
    assert!(
        lines[0].contains(&origin.url()) && lines[0].contains("UnknownIssuer"),
        "it names the origin and the TLS error: {}",
        lines[0]
    );
    assert!(!logs.contains("secret page body"), "never page content");
}
