//! The `digue` binary end to end: `check` and `run` on real files, real
//! ports and real signals.
#![allow(clippy::disallowed_methods)] // deadlines and timings of the test itself run on real time

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const DIGUE: &str = env!("CARGO_BIN_EXE_digue");

/// A config file under the temp dir, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(text: &str) -> TempConfig {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("digue-cli-test-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        TempConfig(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A digue process, killed when dropped if still running.
struct Process(Option<Child>);

impl Process {
    fn spawn(args: &[&str]) -> Process {
        Process::spawn_with(args, &[])
    }

    fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Process {
        let child = Command::new(DIGUE)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the digue binary starts");
        Process(Some(child))
    }

    fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Waits at most `limit` for the process to exit, then collects its output.
    fn exit_within(mut self, limit: Duration) -> Option<Output> {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut().expect("running");
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                let child = self.0.take().expect("running");
                return Some(child.wait_with_output().expect("collect output"));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn digue(args: &[&str]) -> Output {
    Process::spawn(args)
        .exit_within(Duration::from_secs(10))
        .expect("digue exits within 10 s")
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

#[test]
fn check_lists_every_problem_with_its_key_path_and_fails() {
    let file = TempConfig::new(BAD);
    let out = digue(&["check", "--config", &file.path().to_string_lossy()]);
    assert!(
        !out.status.success(),
        "a bad config fails the check: {:?}",
        out.status
    );
    assert_every_problem_is_listed(&out);
}

#[test]
fn check_accepts_a_valid_file() {
    let file = TempConfig::new(&VALID.replace("LISTEN", "8080").replace("ADMIN", "9090"));
    let out = digue(&["check", "--config", &file.path().to_string_lossy()]);
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

#[test]
fn check_accepts_the_shipped_example_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml");
    let out = digue(&["check", "--config", &example.to_string_lossy()]);
    assert!(
        out.status.success(),
        "the shipped config.toml is valid: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    assert!(stdout(&out).contains("ok"), "{}", stdout(&out));
}

#[test]
fn check_on_a_missing_file_says_so_and_fails() {
    let missing = std::env::temp_dir().join(format!(
        "digue-cli-test-{}-does-not-exist.toml",
        std::process::id()
    ));
    let out = digue(&["check", "--config", &missing.to_string_lossy()]);
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

#[test]
fn run_refuses_to_start_on_a_bad_config() {
    let file = TempConfig::new(BAD);
    let out = Process::spawn(&["run", "--config", &file.path().to_string_lossy()])
        .exit_within(Duration::from_secs(5))
        .expect("digue run gives up on a bad config within 5 s");
    assert!(
        !out.status.success(),
        "a bad config is refused: {:?}",
        out.status
    );
    assert_every_problem_is_listed(&out);
}

/// Two distinct ports that were free a moment ago (bound together, then
/// released for digue to take).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("local addr").port();
    (port(&a), port(&b))
}

/// `GET path` over a fresh connection; the status line, or None when
/// nothing answers yet.
fn status_of(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_owned)
}

#[test]
fn run_serves_healthz_on_the_admin_port_and_exits_cleanly_on_sigterm() {
    let (listen, admin) = free_ports();
    let file = TempConfig::new(
        &VALID
            .replace("LISTEN", &listen.to_string())
            .replace("ADMIN", &admin.to_string()),
    );
    let proc = Process::spawn(&["run", "--config", &file.path().to_string_lossy()]);
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(line) = status_of(admin_addr, "/healthz") {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz did not answer within 10 s on {admin_addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "/healthz answers 200: {status}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "SIGTERM delivered");
    let out = proc
        .exit_within(Duration::from_secs(5))
        .expect("digue exits within 5 s of SIGTERM");
    assert_eq!(
        out.status.code(),
        Some(0),
        "a SIGTERM stop is a clean exit:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// A one-thread origin answering every request with a small page.
fn std_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0_u8; 65536];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npage",
                );
            });
        }
    });
    addr
}

/// Sends raw request bytes and returns the whole response ("" when
/// nothing listens yet).
fn exchange(addr: SocketAddr, request: &str) -> String {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// Polls until `check` holds on an admin answer, 10 s at most.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_reloads_the_file_refuses_a_broken_one_and_logs_keep_private_values_out() {
    let origin = std_origin();
    let (listen, admin) = free_ports();
    let config = |concurrency: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
             access_log = true\n[[site]]\nname = \"portal\"\nhosts = [\"*\"]\n\
             origin = \"http://{origin}\"\norigin_concurrency = {concurrency}\n"
        )
    };
    let file = TempConfig::new(&config("8"));
    let token = "admin-token-for-the-test";
    let proc = Process::spawn_with(
        &["run", "--config", &file.path().to_string_lossy()],
        &[("DIGUE_ADMIN_TOKEN", token)],
    );
    let public = SocketAddr::from(([127, 0, 0, 1], listen));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    let sites = || {
        exchange(
            admin_addr,
            &format!(
                "GET /admin/sites HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
                 Connection: close\r\n\r\n"
            ),
        )
    };
    wait_for("the admin API", || {
        sites().contains("\"origin_concurrency\":8")
    });

    // Requests full of things that must never reach a log line.
    let secret_request = "GET /page?eleve=query-secret-4711 HTTP/1.1\r\nHost: ent.example.fr\r\n\
         Cookie: JSESSIONID=cookie-secret-4711\r\nAuthorization: Bearer token-secret-4711\r\n\
         Connection: close\r\n\r\n";
    assert!(exchange(public, secret_request).starts_with("HTTP/1.1 200"));
    let body = "body-secret-4711";
    let post = format!(
        "POST /pronote/appelfonction/1 HTTP/1.1\r\nHost: ent.example.fr\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert!(exchange(public, &post).starts_with("HTTP/1.1 200"));

    // SIGHUP applies a changed file.
    std::fs::write(file.path(), config("3")).expect("rewrite config");
    let hup = |pid: u32| {
        let sent = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGHUP delivered");
    };
    hup(proc.id());
    wait_for("the reloaded limit", || {
        sites().contains("\"origin_concurrency\":3")
    });

    // A broken file is refused; the running config keeps serving.
    std::fs::write(
        file.path(),
        config("3").replace("origin_concurrency = 3", "origin_timeout = \"soon\""),
    )
    .expect("rewrite config");
    hup(proc.id());
    let metrics = || {
        exchange(
            admin_addr,
            "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
    };
    wait_for("a refused reload", || {
        metrics().contains("digue_config_reloads_total{outcome=\"refused\"} 1")
    });
    assert!(
        sites().contains("\"origin_concurrency\":3"),
        "the old config stays"
    );
    assert!(exchange(public, secret_request).starts_with("HTTP/1.1 200"));

    let killed = Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let out = proc
        .exit_within(Duration::from_secs(10))
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
