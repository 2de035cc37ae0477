//! The waiting room in a real browser: Debian's headless `chromium` loads
//! the page from a running digue, sees its place in line, keeps it when the
//! browser is closed and opened again, polls the JSON status without
//! reloading, and lands on the portal page when its turn comes.
//!
//! For the waiting room Chromium is driven from the command line only
//! (`--dump-dom`, `--screenshot`), no DevTools client. `--virtual-time-budget` lets the
//! page's own timers run: virtual time jumps ahead whenever no request is
//! pending, so the page's 3-second polls follow each other as fast as the
//! proxy answers them, while the line moves on digue's real clock. The
//! browser therefore polls far more often than a person's would; what it
//! runs is the page's unmodified script.
//!
//! Between Chromium and digue sits a byte-for-byte TCP relay that notes each
//! page load, each JSON poll and each answer's position, so the test sees
//! the place change while the page stays open, not just the final DOM.
//!
//! The operator's console (`GET /` on the admin listener) is driven over
//! DevTools instead, as its operator would use it: the token typed in, a
//! mode button clicked, the figures and charts read back.
//!
//! Chromium is a hard requirement, not a silent skip: `.ci/run` installs it.
#![allow(clippy::disallowed_methods)] // deadlines and timings of the test itself run on real time

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::chromium::Chromium;
use support::{
    ADMIN_TOKEN, Accept, Browser, Digue, Origin, Proxy, Reply, Seen, TempDir, get, reply,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// A line at 20 new users a minute (one turn every 3 s), one at a time.
const ADMISSION: &str = "[site.admission]\npaths = [\"/login\"]\n\
    new_users_per_minute = 20\nburst = 1\nportal_name = \"Pronote\"\n";
/// Visitors holding tickets ahead of the browser (and never coming back):
/// the browser's own turn comes about 3 s × (this + 1) = 12 s after they
/// arrive, and someone is still ahead of it for 9 s: time enough for a slow
/// machine to start Chromium and take a first look.
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
const FIRST_LOOK_LIMIT: Duration = Duration::from_secs(15);
const UNTIL_ADMITTED_LIMIT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_waits_in_line_and_lands_on_the_portal() {
    let browser = Chromium::new();
    let origin = Origin::start(portal).await;
    let proxy = Proxy::start(&origin.url(), "", ADMISSION).await;
    let relay = Relay::start(proxy.addr).await;
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
        .dump_dom(&relay.url("/login"), FIRST_LOOK_BUDGET_MS, FIRST_LOOK_LIMIT)
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
         (a machine taking more than 9 s to start Chromium shows none)"
    );
    let updated = text_of(&dom, "updated").unwrap_or_default();
    assert!(
        updated.starts_with("Mis à jour à "),
        "the script wrote the polled status into the page, got {updated:?}"
    );
    let look = relay.take();
    assert_eq!(look.pages(), 1, "one page load, no reload: {:?}", look.0);
    let told = look.positions();
    assert!(
        !told.is_empty() && told.iter().all(|&n| n > 0),
        "the page polled and was told its place: {:?}",
        look.0
    );
    assert_eq!(
        proxy.metric(TICKETS).await,
        tickets_before + 1.0,
        "the browser took one ticket"
    );
    let queued = proxy.metric(QUEUED).await - queued_before;
    assert!(
        queued >= (1 + told.len()) as f64,
        "the page and the polls were answered from the line: {queued}"
    );
    assert_eq!(
        origin.count("/login"),
        origin_logins,
        "the portal has not seen the browser yet"
    );

    // The browser is closed and opened again on the same profile: same
    // ticket, and this time the page waits for its turn.
    let dom = browser
        .dump_dom(
            &relay.url("/login"),
            UNTIL_ADMITTED_BUDGET_MS,
            UNTIL_ADMITTED_LIMIT,
        )
        .await;
    assert!(
        dom.contains(PORTAL_MARKER),
        "the browser ends on the portal page once admitted:\n{dom}"
    );
    assert!(
        !dom.contains("file d'attente"),
        "and no longer shows the line:\n{dom}"
    );
    assert_eq!(
        proxy.metric(TICKETS).await,
        tickets_before + 1.0,
        "closing the browser did not cost its place: no second ticket"
    );
    let wait = relay.take();
    let positions = wait.positions();
    assert!(
        positions.windows(2).all(|w| w[0] >= w[1]) && positions.last() == Some(&0),
        "the polls told the page its place, moving forward to the front: {positions:?}"
    );
    assert!(
        positions.first() > positions.last(),
        "the place shown changed while the page stayed open: {positions:?}"
    );
    assert_eq!(
        wait.admitted(),
        1,
        "one poll said the turn had come: {:?}",
        wait.0
    );
    let turn = wait.0.iter().position(|e| *e == Event::Admitted);
    let (before, after) = wait.0.split_at(turn.unwrap_or(0));
    let pages = |events: &[Event]| events.iter().filter(|e| **e == Event::Page).count();
    assert_eq!(
        (pages(before), pages(after)),
        (1, 1),
        "one page load while waiting, without a reload in {} polls, and one \
         more once the turn came",
        wait.polls()
    );
    assert_eq!(
        origin.count("/login"),
        origin_logins + 1,
        "the portal saw exactly one /login from the browser, once admitted"
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
    let browser = Chromium::new();
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
        browser.run(&args, FIRST_LOOK_LIMIT).await;
        assert!(png.is_file(), "chromium wrote {}", png.display());
    }
}

/// The console's site: a waiting room on `/login` that lets everyone in
/// at once until an operator says otherwise.
const OPEN_ROOM: &str = "[site.admission]\npaths = [\"/login\"]\nnew_users_per_minute = 600\n\
    burst = 50\nmax_active_users = 2000\nportal_name = \"Pronote\"\n";
/// Real time for the console to show what it is asked to.
const CONSOLE_LIMIT: Duration = Duration::from_secs(20);

/// In the console's page: the text of figure `key` of `site`'s card.
fn figure(site: &str, key: &str) -> String {
    format!("document.querySelector('[data-site=\"{site}\"] [data-k=\"{key}\"] .v').textContent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_runs_the_console_and_queue_all_makes_the_next_visitor_wait() {
    let browser = Chromium::new();
    let origin = Origin::start(portal).await;
    let proxy = Digue::new(&origin.url())
        .site(OPEN_ROOM)
        .admin()
        .start()
        .await;
    let app = proxy.app().clone();
    let login = proxy.url("/login");
    // A few minutes of a quiet morning, in the console's memory.
    for _ in 0..6 {
        let got = get(&login, &[]).await;
        assert_eq!(got.status, 200, "the room lets everyone in");
        proxy.advance(digue::console::history::SAMPLE_EVERY);
        digue::console::sample(&app);
    }

    let mut tab = browser.devtools(&proxy.admin_url("/"), 1280, 800).await;
    tab.wait_for(
        "the page asks for the token",
        "document.readyState === 'complete' && !document.getElementById('login').hidden",
        CONSOLE_LIMIT,
    )
    .await;
    assert_eq!(
        tab.eval(
            "document.querySelectorAll('.card').length + \
                  (document.body.innerText.includes('portal') ? 100 : 0)"
        )
        .await,
        0,
        "no site, no figure before the token"
    );
    assert_eq!(tab.eval("document.documentElement.lang").await, "fr");

    tab.click("#token").await;
    tab.type_text(ADMIN_TOKEN).await;
    tab.click("#login-form button").await;
    tab.wait_for(
        "the portal's card with a chart",
        "!!document.querySelector('[data-site=\"portal\"] svg polyline')",
        CONSOLE_LIMIT,
    )
    .await;
    assert_eq!(tab.eval(&figure("portal", "mode")).await, "auto");
    assert_eq!(tab.eval(&figure("portal", "line")).await, "0");
    assert_eq!(
        tab.eval(&figure("portal", "sessions")).await,
        "6",
        "the six visitors let in"
    );
    let points = tab
        .eval("Number(document.querySelector('[data-site=\"portal\"] svg').getAttribute('data-points'))")
        .await;
    assert!(
        points.as_u64() >= Some(6),
        "the chart drew the samples: {points}"
    );
    assert_eq!(
        tab.eval("[!!sessionStorage.getItem('digue-admin-token'), document.cookie]")
            .await,
        serde_json::json!([true, ""]),
        "the token is in sessionStorage, no cookie anywhere"
    );

    tab.click("[data-site=\"portal\"] button[data-mode=\"queue_all\"]")
        .await;
    tab.wait_for(
        "the console shows queue_all in force",
        "document.querySelector('[data-site=\"portal\"] button[data-mode=\"queue_all\"]')\
            .getAttribute('aria-pressed') === 'true'",
        CONSOLE_LIMIT,
    )
    .await;
    assert_eq!(tab.eval(&figure("portal", "mode")).await, "queue_all");
    let next = get(&login, &[]).await;
    assert_eq!(next.status, 503, "the next visitor queues");
    assert!(
        next.text().contains("Vous êtes dans la file"),
        "and sees the waiting room: {}",
        next.text()
    );

    // Closing asks first; "Annuler" changes nothing.
    let closed = "[data-site=\"portal\"] button[data-mode=\"closed\"]";
    tab.click(closed).await;
    tab.wait_for(
        "a confirmation",
        "document.getElementById('confirm').open",
        CONSOLE_LIMIT,
    )
    .await;
    tab.click("#confirm-no").await;
    let sites = proxy
        .admin_call(http::Method::GET, "/admin/sites", "")
        .await
        .json();
    assert_eq!(
        sites["sites"][0]["admission"]["mode"], "queue_all",
        "cancelled: still queue_all"
    );
    tab.click(closed).await;
    tab.wait_for(
        "a confirmation",
        "document.getElementById('confirm').open",
        CONSOLE_LIMIT,
    )
    .await;
    tab.click("#confirm-yes").await;
    tab.wait_for(
        "the console shows closed in force",
        &format!("{} === 'closed'", figure("portal", "mode")),
        CONSOLE_LIMIT,
    )
    .await;

    // A scheduled opening, added and cancelled from the card.
    let events = "[data-events=\"portal\"]";
    tab.wait_for(
        "the card lists the site's openings",
        &format!("!document.querySelector('{events}').hidden"),
        CONSOLE_LIMIT,
    )
    .await;
    tab.click(&format!("{events} input[type=text]")).await;
    tab.type_text("rentree").await;
    tab.eval(&format!(
        "document.querySelector('{events} input[type=datetime-local]').value = '2030-01-07T08:00'"
    ))
    .await;
    tab.click(&format!("{events} .row button")).await;
    let listed = format!("!!document.querySelector('{events} [data-event=\"rentree\"]')");
    tab.wait_for("the new opening in the list", &listed, CONSOLE_LIMIT)
        .await;
    let planned = proxy
        .admin_call(http::Method::GET, "/admin/sites/portal/events", "")
        .await
        .json();
    assert_eq!(planned["events"][0]["name"], "rentree", "{planned}");
    assert!(
        planned["events"][0]["opens_at"]
            .as_str()
            .is_some_and(|at| at.starts_with("2030-01-07T08:00:00")),
        "the browser's local time, with its offset: {planned}"
    );
    tab.click(&format!("{events} [data-event=\"rentree\"] button"))
        .await;
    tab.wait_for(
        "a confirmation",
        "document.getElementById('confirm').open",
        CONSOLE_LIMIT,
    )
    .await;
    tab.click("#confirm-yes").await;
    tab.wait_for("the opening gone", &format!("!{listed}"), CONSOLE_LIMIT)
        .await;
    let planned = proxy
        .admin_call(http::Method::GET, "/admin/sites/portal/events", "")
        .await
        .json();
    assert_eq!(planned["events"], serde_json::json!([]), "cancelled");
    drop(tab);
    proxy.shutdown().await;
}

/// Takes the README's screenshots of the console (desktop and phone)
/// after half an hour of a simulated Monday morning in digue's memory.
/// Run by hand: `cargo test --test browser -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/console-*.png; run by hand when the page changes"]
async fn screenshots_of_the_console_for_the_readme() {
    let browser = Chromium::new();
    let origin = Origin::start(portal).await;
    let spare = Origin::start(portal).await;
    let site = format!(
        "[[site]]\nname = \"pronote-lycee\"\nhosts = [\"*\"]\n\
         origin = [\"{}\", \"{}\"]\norigin_concurrency = 16\n\
         [site.admission]\npaths = [\"/login\"]\nnew_users_per_minute = 120\nburst = 10\n\
         max_active_users = 3000\nsession_duration = \"10m\"\n\
         tickets_per_network_per_minute = 100000\n\
         [site.client_limit]\nrequests_per_minute = 120\nburst = 20\n",
        origin.url(),
        spare.url()
    );
    let proxy = Digue::without_site().sites(&site).admin().start().await;
    let app = proxy.app().clone();
    let mut line: Vec<Browser> = Vec::new();
    for step in 0..digue::console::history::KEPT {
        // A wave of arrivals peaking ten minutes in, then a calm.
        let x = (step as f64 - 120.0) / 45.0;
        let arrivals = (24.0 * (-x * x).exp()) as usize + 1;
        origin.set_delay(Duration::from_millis(2 + (40.0 * (-x * x).exp()) as u64));
        for _ in 0..arrivals {
            let mut visitor = Browser::default();
            if visitor.visit(&proxy, "/login", Accept::Json).await.status == 503 {
                line.push(visitor);
            }
        }
        // The front of the line comes back for its turn.
        let mut kept = Vec::new();
        for (i, mut visitor) in line.drain(..).enumerate() {
            if i >= 12 || visitor.visit(&proxy, "/login", Accept::Json).await.status == 503 {
                kept.push(visitor);
            }
        }
        line = kept;
        for i in 0..6 {
            get(&proxy.url("/static/app.js"), &[]).await;
            let session = format!("JSESSIONID=s{}", step * 6 + i);
            get(
                &proxy.url("/pronote/emploidutemps"),
                &[("cookie", &session)],
            )
            .await;
        }
        if (100..160).contains(&step) {
            // The pupil who holds F5.
            for _ in 0..16 {
                get(
                    &proxy.url("/pronote/emploidutemps"),
                    &[("cookie", "JSESSIONID=f5")],
                )
                .await;
            }
        }
        proxy.advance(digue::console::history::SAMPLE_EVERY);
        digue::console::sample(&app);
    }
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for (name, width, height) in [("desktop", 1280, 800), ("phone", 390, 844)] {
        let mut tab = browser.devtools(&proxy.admin_url("/"), width, height).await;
        tab.wait_for(
            "the login form",
            "document.readyState === 'complete'",
            CONSOLE_LIMIT,
        )
        .await;
        tab.click("#token").await;
        tab.type_text(ADMIN_TOKEN).await;
        tab.click("#login-form button").await;
        tab.wait_for(
            "the charts",
            "document.querySelectorAll('svg polyline').length >= 4",
            CONSOLE_LIMIT,
        )
        .await;
        let png = docs.join(format!("console-{name}.png"));
        std::fs::write(&png, tab.screenshot().await).expect("docs/ is writable");
    }
    proxy.shutdown().await;
}

/// A waiting room with the event `rentree` at 8:00 (in 2030), and a
/// digue whose clock is moved to ten minutes before it: the pre-queue.
async fn in_the_pre_queue(origin: &Origin) -> Proxy {
    let opens_at = "2030-01-07T08:00:00+01:00";
    let site = format!(
        "[site.admission]\npaths = [\"/login\"]\nnew_users_per_minute = 20\n\
         portal_name = \"Pronote\"\n\
         [[site.admission.event]]\nname = \"rentree\"\nopens_at = \"{opens_at}\"\n\
         message = \"Les emplois du temps de la rentrée sont en ligne à 8 h.\"\n"
    );
    let proxy = Proxy::start(&origin.url(), "", &site).await;
    let opens = digue::config::parse_rfc3339(opens_at).expect("valid").0;
    let now = digue::clock::unix_secs(proxy.app().clock.now().system);
    proxy.advance(Duration::from_secs(opens - 600 - now));
    proxy
}

/// Width and height of a PNG file, from its header.
fn png_size(png: &Path) -> (u32, u32) {
    let bytes = std::fs::read(png).expect("a PNG file");
    assert_eq!(&bytes[1..4], b"PNG", "{} is a PNG", png.display());
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    (word(16), word(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_sees_the_pre_queue_countdown_tick_without_a_position() {
    let browser = Chromium::new();
    let origin = Origin::start(portal).await;
    let proxy = in_the_pre_queue(&origin).await;
    let login = proxy.url("/login");
    let served = get(&login, &[]).await;
    assert_eq!(served.status, 503, "the pre-queue page");
    let first = text_of(&served.text(), "countdown").expect("a countdown");
    assert!(
        first.starts_with("Ouverture dans 9 min") || first.starts_with("Ouverture dans 10 min"),
        "{first}"
    );

    // Three seconds of the page's own time: the countdown ticks in place.
    let dom = browser.dump_dom(&login, 3_000, FIRST_LOOK_LIMIT).await;
    assert!(dom.contains(r#"<html lang="fr""#), "a French page:\n{dom}");
    assert!(
        dom.contains("Ouverture à 8 h 00 — vous êtes inscrit(e) dans la file"),
        "the opening and the promise of a draw:\n{dom}"
    );
    let ticked = text_of(&dom, "countdown").expect("a countdown");
    assert!(ticked.starts_with("Ouverture dans "), "{ticked}");
    assert_ne!(ticked, first, "the countdown ticks without a reload");
    assert!(
        dom.contains(r#"role="timer""#),
        "announced as a timer, not every second"
    );
    assert!(
        text_of(&dom, "position").is_none(),
        "no position before the draw"
    );

    // On a phone: a 360-px screenshot (docs/prequeue-phone.png is one).
    let dir = TempDir::new("prequeue-shot");
    let png = dir.join("phone.png");
    let args = [
        "--window-size=360,780".to_owned(),
        "--hide-scrollbars".to_owned(),
        "--virtual-time-budget=2000".to_owned(),
        format!("--screenshot={}", png.display()),
        login.clone(),
    ];
    browser.run(&args, FIRST_LOOK_LIMIT).await;
    assert_eq!(png_size(&png), (360, 780), "a phone-sized screenshot");
}

/// Takes the README's screenshot of the pre-queue page on a phone.
/// Run by hand: `cargo test --test browser -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/prequeue-phone.png; run by hand when the page changes"]
async fn screenshot_of_the_pre_queue_page_for_the_readme() {
    let browser = Chromium::new();
    let origin = Origin::start(portal).await;
    let proxy = in_the_pre_queue(&origin).await;
    let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/prequeue-phone.png");
    let _ = std::fs::remove_file(&png);
    let args = [
        "--window-size=360,780".to_owned(),
        "--hide-scrollbars".to_owned(),
        "--virtual-time-budget=2000".to_owned(),
        format!("--screenshot={}", png.display()),
        proxy.url("/login"),
    ];
    browser.run(&args, FIRST_LOOK_LIMIT).await;
    assert_eq!(png_size(&png), (360, 780));
}

/// The origin: the portal's login page, its script (cacheable) and its
/// per-user pages.
fn portal(seen: &Seen) -> Reply {
    if seen.target.starts_with("/static/") {
        reply(200, &[("cache-control", "max-age=600")], "app()")
    } else if seen.target.starts_with("/pronote/") {
        reply(200, &[("cache-control", "no-store")], "emploi du temps")
    } else if seen.target == "/login" {
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

/// What went through the relay, in order.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    /// A request for `/login` asking for HTML: a page load.
    Page,
    /// A request for `/login` asking for JSON: the page's script polling.
    Poll,
    /// A JSON answer giving the number of people ahead.
    Position(u64),
    /// A JSON answer saying the turn has come.
    Admitted,
}

/// The events of one stretch of browsing.
struct Events(Vec<Event>);

impl Events {
    fn count(&self, event: &Event) -> usize {
        self.0.iter().filter(|e| *e == event).count()
    }

    fn pages(&self) -> usize {
        self.count(&Event::Page)
    }

    fn polls(&self) -> usize {
        self.count(&Event::Poll)
    }

    fn admitted(&self) -> usize {
        self.count(&Event::Admitted)
    }

    fn positions(&self) -> Vec<u64> {
        self.0
            .iter()
            .filter_map(|e| match e {
                Event::Position(n) => Some(*n),
                _ => None,
            })
            .collect()
    }
}

/// A TCP relay between the browser and digue, on its own loopback port,
/// that notes what the browser asks for and what it is told. Bytes pass
/// unchanged; each is noted before it is passed on, so everything the
/// browser has seen is in the log.
struct Relay {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (down_read, down_write) = down.into_split();
                let (up_read, up_write) = up.into_split();
                tokio::spawn(pump(down_read, up_write, shared.clone(), note_requests));
                tokio::spawn(pump(up_read, down_write, shared.clone(), note_answers));
            }
        });
        Relay { addr, log, task }
    }

    fn url(&self, target: &str) -> String {
        format!("http://{}{target}", self.addr)
    }

    /// The events since the last call.
    fn take(&self) -> Events {
        Events(std::mem::take(
            &mut *self.log.lock().expect("relay log not poisoned"),
        ))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction of a connection, noting events from the bytes
/// seen so far (`pending` keeps what `note` has not consumed yet).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    log: Arc<Mutex<Vec<Event>>>,
    note: fn(&mut Vec<u8>, &mut Vec<Event>),
) {
    let mut pending = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        note(
            &mut pending,
            &mut log.lock().expect("relay log not poisoned"),
        );
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Notes each complete request head for `/login` (the browser sends only
/// GETs without bodies here).
fn note_requests(pending: &mut Vec<u8>, log: &mut Vec<Event>) {
    while let Some(end) = find(pending, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
        pending.drain(..end + 4);
        if !head.starts_with("get /login ") {
            continue;
        }
        let json = head
            .lines()
            .any(|l| l.starts_with("accept:") && l.contains("application/json"));
        log.push(if json { Event::Poll } else { Event::Page });
    }
}

/// Notes the JSON answers' `"position":N` and `"state":"admitted"` (the
/// HTML page contains neither).
fn note_answers(pending: &mut Vec<u8>, log: &mut Vec<Event>) {
    const POSITION: &[u8] = b"\"position\":";
    const ADMITTED: &[u8] = b"\"state\":\"admitted\"";
    loop {
        let position = find(pending, POSITION).map(|at| (at, true));
        let admitted = find(pending, ADMITTED).map(|at| (at, false));
        let Some((at, is_position)) = position.into_iter().chain(admitted).min() else {
            // Keep a tail long enough to hold a pattern cut in two.
            let keep = pending.len().saturating_sub(ADMITTED.len());
            pending.drain(..keep);
            return;
        };
        if !is_position {
            log.push(Event::Admitted);
            pending.drain(..at + ADMITTED.len());
            continue;
        }
        let digits = &pending[at + POSITION.len()..];
        let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if len == digits.len() {
            return; // the number may go on in the next read
        }
        let n = String::from_utf8_lossy(&digits[..len]).parse().ok();
        log.extend(n.map(Event::Position));
        pending.drain(..at + POSITION.len() + len);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
