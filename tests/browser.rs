//! The waiting room in a real browser: Debian's headless `chromium` loads
//! the page from a running digue, sees its place in line, keeps it when the
//! browser is closed and opened again, polls the JSON status without
//! reloading, and lands on the portal page when its turn comes.
//!
//! Chromium is driven from the command line only (`--dump-dom`,
//! `--screenshot`), no DevTools client. `--virtual-time-budget` lets the
//! page's own timers run: virtual time jumps ahead whenever no request is
//! pending, so the page's 3-second polls follow each other as fast as the
//! proxy answers them, while the line moves on digue's real clock. The
//! browser therefore polls far more often than a person's would; what it
//! runs is the page's unmodified script.
//!
//! Chromium is a hard requirement, not a silent skip: `.ci/run` installs it.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{Origin, Proxy, Reply, Seen, get, reply};

/// Flags for every run: headless in a container, nothing fetched from the
/// network behind the test's back, a French browser.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--lang=fr-FR",
    "--accept-lang=fr-FR,fr,en",
];

/// A line at 20 new users a minute (one turn every 3 s), one at a time.
const ADMISSION: &str = "[site.admission]\npaths = [\"/login\"]\n\
    new_users_per_minute = 20\nburst = 1\nportal_name = \"Pronote\"\n";
/// Visitors holding tickets ahead of the browser (and never coming back):
/// the browser's turn comes about 3 s × (this + 1) after they arrive, which
/// leaves a slow machine 9 s to start Chromium before the first turn moves.
const AHEAD_OF_THE_BROWSER: usize = 3;

/// The portal's login page, as the origin serves it.
const PORTAL_MARKER: &str = r#"<h1 id="portal">Bienvenue sur le portail</h1>"#;
const PORTAL_HTML: &str = "<!doctype html><html lang=\"fr\"><head><meta charset=\"utf-8\">\
    <title>Pronote</title></head><body><h1 id=\"portal\">Bienvenue sur le portail</h1></body></html>";

const QUEUED: &str = r#"digue_waiting_pages_total{site="portal",state="queued"}"#;
const TICKETS: &str = r#"digue_tickets_issued_total{site="portal"}"#;
const ADMITTED_FROM_LINE: &str = r#"digue_admitted_total{how="line",site="portal"}"#;

/// Virtual time for a first look: the page polls a few times (every 3 s ±
/// 20 %), in a few milliseconds of real time, far from its turn.
const FIRST_LOOK_BUDGET_MS: u64 = 10_000;
/// Virtual time for waiting until admitted: enough polls to cover minutes
/// of real waiting even when each answer takes a fraction of a millisecond;
/// the wall-clock limit below ends the run long before this runs out.
const UNTIL_ADMITTED_BUDGET_MS: u64 = 1_000_000_000;
/// Wall-clock limits of one Chromium run.
const FIRST_LOOK_LIMIT: Duration = Duration::from_secs(20);
const UNTIL_ADMITTED_LIMIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_waits_in_line_and_lands_on_the_portal() {
    let browser = Browser::new();
    let origin = Origin::start(portal).await;
    let proxy = Proxy::start(&origin.url(), "", ADMISSION).await;
    let login = proxy.url("/login");

    // Outside a surge there is no friction; this visitor also uses the burst.
    let first = get(&login, &[]).await;
    assert_eq!(first.status, 200, "an empty line lets the first visitor in");
    assert!(first.text().contains(PORTAL_MARKER), "{}", first.text());
    // Others arrive and take tickets: the last one gets the page as digue
    // serves it, before any script has run.
    let mut served = String::new();
    for _ in 0..AHEAD_OF_THE_BROWSER {
        let waiting = get(&login, &[]).await;
        assert_eq!(waiting.status, 503, "the next visitors wait in line");
        served = waiting.text();
    }
    assert_eq!(
        text_of(&served, "updated").as_deref(),
        Some(""),
        "digue serves the page with an empty 'updated' line; only the script fills it:\n{served}"
    );
    let origin_logins = origin.count("/login");
    let queued_before = proxy.metric(QUEUED).await;
    let tickets_before = proxy.metric(TICKETS).await;

    // A first look: the browser takes a ticket, sees its place in French,
    // and the script updates the page from the JSON status in place.
    let dom = browser
        .dump_dom(&login, FIRST_LOOK_BUDGET_MS, FIRST_LOOK_LIMIT)
        .await;
    assert!(dom.contains(r#"<html lang="fr""#), "a French page:\n{dom}");
    assert!(
        dom.contains("Vous êtes dans la file d'attente de Pronote"),
        "the browser sees the waiting room:\n{dom}"
    );
    let position = text_of(&dom, "position").unwrap_or_default();
    assert!(
        position.ends_with("devant vous."),
        "the browser sees how many people are ahead of it, got {position:?} \
         (a machine slow enough to start Chromium in more than 9 s shows none)"
    );
    let updated = text_of(&dom, "updated").unwrap_or_default();
    assert!(
        updated.starts_with("Mis à jour à "),
        "the page polled the JSON status and updated itself without a reload, got {updated:?}"
    );
    assert_eq!(
        proxy.metric(TICKETS).await,
        tickets_before + 1.0,
        "the browser took one ticket"
    );
    let queued_after_look = proxy.metric(QUEUED).await;
    assert!(
        queued_after_look >= queued_before + 2.0,
        "the page and at least one poll were answered from the line: {queued_before} -> {queued_after_look}"
    );
    assert_eq!(
        origin.count("/login"),
        origin_logins,
        "the portal has not seen the browser yet"
    );

    // The browser is closed and opened again on the same profile: same
    // ticket, and this time the page waits for its turn.
    let run = {
        let browser = browser.clone();
        let login = login.clone();
        tokio::task::spawn_blocking(move || {
            browser.run_dump_dom(&login, UNTIL_ADMITTED_BUDGET_MS, UNTIL_ADMITTED_LIMIT)
        })
    };
    let mut polls_before_the_portal = 0.0_f64;
    while !run.is_finished() {
        let queued = proxy.metric(QUEUED).await;
        if origin.count("/login") == origin_logins {
            polls_before_the_portal = queued - queued_after_look;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dom = run.await.expect("the Chromium run does not panic");
    assert!(
        dom.contains(PORTAL_MARKER),
        "the browser ends on the portal page once admitted:\n{dom}"
    );
    assert!(
        !dom.contains("file d'attente"),
        "and no longer shows the line:\n{dom}"
    );
    assert_eq!(
        origin.count("/login"),
        origin_logins + 1,
        "the portal saw exactly one /login from the browser, once it was admitted"
    );
    assert_eq!(
        proxy.metric(TICKETS).await,
        tickets_before + 1.0,
        "closing the browser did not cost its place: no second ticket"
    );
    assert!(
        polls_before_the_portal >= 3.0,
        "while the portal had not seen the browser, the page kept polling \
         ({polls_before_the_portal} answers from the line)"
    );
    assert_eq!(
        proxy.metric(ADMITTED_FROM_LINE).await,
        1.0,
        "the browser was admitted from the line; the others gave up"
    );
}

/// Takes the README's screenshots of the waiting page, at phone and
/// desktop sizes, with a dozen people ahead and an operator message.
/// Run by hand: `cargo test --test browser -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/waiting-room-*.png; run by hand when the page changes"]
async fn screenshots_of_the_waiting_page_for_the_readme() {
    let browser = Browser::new();
    let origin = Origin::start(portal).await;
    let site = "[site.admission]\npaths = [\"/login\"]\nnew_users_per_minute = 4\nburst = 1\n\
        portal_name = \"Pronote\"\n\
        message = \"Les devoirs de la semaine sont aussi dans le cahier de textes de l'ENT.\"\n";
    let proxy = Proxy::start(&origin.url(), "", site).await;
    let login = proxy.url("/login");
    get(&login, &[]).await;
    for _ in 0..12 {
        get(&login, &[("accept", "application/json")]).await;
    }
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).expect("docs/ exists");
    for (name, size) in [("phone", "360,780"), ("desktop", "1280,800")] {
        let png = docs.join(format!("waiting-room-{name}.png"));
        let _ = std::fs::remove_file(&png);
        let args = [
            format!("--window-size={size}"),
            "--hide-scrollbars".to_owned(),
            // Long enough to lay out, short of the first poll.
            "--virtual-time-budget=2000".to_owned(),
            format!("--screenshot={}", png.display()),
            login.clone(),
        ];
        let b = browser.clone();
        tokio::task::spawn_blocking(move || b.run(&args, FIRST_LOOK_LIMIT))
            .await
            .expect("the Chromium run does not panic");
        assert!(png.is_file(), "chromium wrote {}", png.display());
    }
}

/// The origin: the portal's login page, and nothing else.
fn portal(seen: &Seen) -> Reply {
    if seen.target == "/login" {
        reply(
            200,
            &[
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "no-store"),
            ],
            PORTAL_HTML,
        )
    } else {
        reply(404, &[("cache-control", "no-store")], "")
    }
}

/// The text right inside the element with this `id` (up to its first
/// child tag), or `None` when there is no such element.
fn text_of(html: &str, id: &str) -> Option<String> {
    let start = html.find(&format!("id=\"{id}\""))?;
    let rest = &html[start..];
    let open = rest.find('>')? + 1;
    let len = rest[open..].find('<')?;
    Some(rest[open..open + len].trim().to_owned())
}

/// Headless Chromium with its own profile, kept across runs like a
/// person's browser between two visits.
#[derive(Clone)]
struct Browser {
    exe: PathBuf,
    dir: Arc<TempDir>,
}

impl Browser {
    /// Finds `chromium` on `PATH`; fails, with how to install it, if absent.
    fn new() -> Browser {
        let exe = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .map(|dir| dir.join("chromium"))
            .find(|exe| exe.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "this test drives a real headless Chromium, and `chromium` is not on PATH. \
                     Install it with `apt-get install chromium` (Debian; `.ci/run` does it)."
                )
            });
        let dir = TempDir::new();
        std::fs::create_dir_all(dir.0.join("profile")).expect("profile directory");
        Browser {
            exe,
            dir: Arc::new(dir),
        }
    }

    /// The DOM after the page's scripts ran for `budget_ms` of virtual time.
    async fn dump_dom(&self, url: &str, budget_ms: u64, limit: Duration) -> String {
        let browser = self.clone();
        let url = url.to_owned();
        tokio::task::spawn_blocking(move || browser.run_dump_dom(&url, budget_ms, limit))
            .await
            .expect("the Chromium run does not panic")
    }

    fn run_dump_dom(&self, url: &str, budget_ms: u64, limit: Duration) -> String {
        self.run(
            &[
                format!("--virtual-time-budget={budget_ms}"),
                "--dump-dom".to_owned(),
                url.to_owned(),
            ],
            limit,
        )
    }

    /// Runs Chromium to the end (killing it after `limit`) and returns its
    /// standard output. Blocking.
    fn run(&self, args: &[String], limit: Duration) -> String {
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let n = RUNS.fetch_add(1, Ordering::SeqCst);
        let out = self.dir.0.join(format!("stdout-{n}"));
        let err = self.dir.0.join(format!("stderr-{n}"));
        let started = Instant::now();
        let child = Command::new(&self.exe)
            .args(CHROMIUM_FLAGS)
            .arg(format!(
                "--user-data-dir={}",
                self.dir.0.join("profile").display()
            ))
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("chromium starts");
        let mut child = KillOnDrop(child);
        let status = loop {
            if let Some(status) = child.0.try_wait().expect("chromium is waitable") {
                break status;
            }
            assert!(
                started.elapsed() < limit,
                "chromium did not finish within {limit:?}\n{}",
                tail(&err)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "chromium failed: {status}\n{}",
            tail(&err)
        );
        std::fs::read_to_string(&out).expect("chromium's output is UTF-8")
    }
}

/// The last lines Chromium wrote on stderr, for failure messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    format!("chromium's stderr (end):\n{}", lines[from..].join("\n"))
}

/// A Chromium process that cannot outlive a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("digue-browser-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
