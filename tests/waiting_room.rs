//! The waiting room end to end: newcomers admitted at the configured pace,
//! everyone else given a signed place in a FIFO line, over real sockets.
//!
//! Every client here is a small cookie jar ([`Browser`]) that keeps
//! `digue_ticket` / `digue_pass` from `Set-Cookie` and sends them back, as
//! a browser would. Rates are chosen so that the line either stands still
//! for the whole test (1/min once the burst is used) or moves fast enough
//! to watch (600/min). Time passes on digue's clock ([`Proxy::advance`]):
//! passes, turns, claim windows and the admission budget all run on it, so
//! a session expires or a claim window runs out without sleeping.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use support::{
    Accept, Browser, Digue, ENTRY, Got, Origin, PASS, Proxy, TICKET, TempDir, get, get_from,
    new_cookie, page, set_cookie, signed_ticket, unix_now,
};

/// A digue in front of a fresh portal, whose line is gated by
/// `[site.admission]` with these keys.
async fn gated(keys: &str) -> (Origin, Proxy) {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url()).admission(keys).start().await;
    (origin, proxy)
}

/// The whole `Set-Cookie` line of one of digue's cookies.
fn set_cookie_line<'a>(got: &'a Got, name: &str) -> Option<&'a str> {
    got.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

/// The `position` of a queued JSON answer, checking the waiting-room contract.
fn position(got: &Got) -> u64 {
    assert_eq!(
        got.status,
        503,
        "the waiting room answers 503: {}",
        got.text()
    );
    let j = got.json();
    assert_eq!(j["state"], "queued", "{j}");
    assert!(j["eta_seconds"].is_u64(), "an ETA in seconds: {j}");
    assert_eq!(
        j["retry_after"].as_u64(),
        Some(retry_after(got)),
        "the JSON and the header agree on when to poll again: {j}"
    );
    j["position"].as_u64().expect("a numeric position")
}

fn retry_after(got: &Got) -> u64 {
    let secs = got
        .header("retry-after")
        .unwrap_or_else(|| panic!("a Retry-After header: {:?}", got.headers))
        .parse::<u64>()
        .expect("Retry-After in seconds");
    assert!(
        secs >= 1,
        "a Retry-After of {secs} s would invite a retry storm"
    );
    secs
}

/// The place the HTML waiting page shows (its `id="position"` text), in
/// French or English.
fn html_position(html: &str) -> u64 {
    let start = html
        .find("id=\"position\">")
        .unwrap_or_else(|| panic!("the page shows a position: {html}"))
        + "id=\"position\">".len();
    let end = start + html[start..].find("</strong>").expect("closed element");
    let text = html[start..end].trim();
    if text.starts_with("Vous êtes le prochain") || text.starts_with("You are next") {
        return 0;
    }
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    assert!(
        text.contains("devant vous") || text.contains("ahead of you"),
        "the position says who is ahead: {text}"
    );
    digits
        .parse()
        .unwrap_or_else(|_| panic!("a number of people ahead: {text}"))
}

/// Asserts the common shape of a waiting-room answer.
fn assert_waiting_room(got: &Got) {
    assert_eq!(got.status, 503, "the waiting room: {}", got.text());
    assert_eq!(
        got.header("cache-control"),
        Some("no-store"),
        "a place in line is never stored by a cache"
    );
    retry_after(got);
}

/// A digue in front of `origin` signing with `secret`, gated with these keys.
async fn signed(origin: &Origin, secret: &Path, keys: &str) -> Proxy {
    Digue::new(&origin.url())
        .secret(secret)
        .admission(keys)
        .start()
        .await
}

/// digue signing with a secret of its own and keeping its lines in a
/// state file across restarts, gated with these keys.
fn restartable(origin: &Origin, dir: &TempDir, keys: &str) -> Digue {
    Digue::new(&origin.url())
        .secret(&dir.secret())
        .state_file(&dir.join("state.json"))
        .admission(keys)
}

/// Polls `ENTRY` as JSON, moving digue's clock `every` between polls,
/// until admitted; the time it took on that clock. (Measures when the turn
/// comes, at the poll's own pace.)
async fn poll_until_admitted(
    proxy: &Proxy,
    browser: &mut Browser,
    every: Duration,
    limit: Duration,
) -> Option<Duration> {
    let start = proxy.now();
    while proxy.now() - start < limit {
        let got = browser.poll(proxy).await;
        if got.status == 200 {
            assert_eq!(got.json()["state"], "admitted", "{}", got.text());
            return Some(proxy.now() - start);
        }
        position(&got);
        proxy.advance(every);
    }
    None
}

/// `n` cookie-less newcomers, one after the other.
async fn newcomers(proxy: &Proxy, n: usize, accept: Accept) -> Vec<(Browser, Got)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut b = Browser::default();
        let got = b.visit(proxy, ENTRY, accept).await;
        out.push((b, got));
    }
    out
}

/// The first newcomer of a line at 1/min: it takes the only slot, and the
/// line then stands still for a minute, longer than any test here.
async fn use_up_the_budget(proxy: &Proxy) -> Browser {
    let mut first = Browser::default();
    let got = first.visit(proxy, ENTRY, Accept::Html).await;
    assert_eq!(got.status, 200, "the first newcomer enters at once");
    first
}

#[tokio::test]
async fn a_burst_of_newcomers_is_mostly_queued_and_later_arrivals_stand_further_back() {
    let (origin, proxy) = gated("new_users_per_minute = 60\nburst = 3").await;
    let arrivals = newcomers(&proxy, 20, Accept::Json).await;
    let statuses: Vec<u16> = arrivals.iter().map(|(_, g)| g.status.as_u16()).collect();
    assert_eq!(
        statuses[..3],
        [200, 200, 200],
        "the burst enters at once: {statuses:?}"
    );
    assert!(
        statuses[3..].iter().all(|s| *s == 503),
        "everyone after the burst waits: {statuses:?}"
    );
    for name in [PASS, TICKET] {
        let (_, got) = arrivals
            .iter()
            .find(|(_, g)| set_cookie_line(g, name).is_some())
            .unwrap_or_else(|| panic!("some newcomer got a {name}"));
        let line = set_cookie_line(got, name).expect("found above");
        for attr in ["Path=/", "HttpOnly", "SameSite=Lax"] {
            assert!(line.contains(attr), "{name} is {attr}: {line}");
        }
        assert!(
            !line.contains("Secure"),
            "not Secure over plain HTTP: {line}"
        );
    }
    for (browser, got) in &arrivals[..3] {
        assert_eq!(got.text(), page(ENTRY), "the origin's own page");
        assert!(browser.pass.is_some(), "an admitted newcomer gets a pass");
        assert!(browser.ticket.is_none(), "and no ticket");
    }
    let mut previous: Option<u64> = None;
    for (i, (browser, got)) in arrivals[3..].iter().enumerate() {
        assert_waiting_room(got);
        assert!(browser.ticket.is_some(), "newcomer {i} gets a ticket");
        assert!(browser.pass.is_none(), "but no pass");
        let p = position(got);
        if let Some(before) = previous {
            assert!(
                p > before,
                "later arrivals stand further back: #{i} at {p}, the one before at {before}"
            );
        }
        previous = Some(p);
    }
    assert_eq!(
        origin.count(ENTRY),
        3,
        "queued newcomers never reach the origin"
    );

    let mut last = arrivals.last().expect("twenty").0.clone();
    let ticket = last.ticket().to_owned();
    let html = last.visit(&proxy, ENTRY, Accept::Html).await;
    assert_waiting_room(&html);
    assert_eq!(
        html.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let text = html.text();
    assert!(text.contains("<html lang=\"fr\""), "French by default");
    assert!(
        text.contains("personnes devant vous"),
        "the page says how many are ahead: {text}"
    );
    assert!(
        html_position(&text) >= 15,
        "the last of 17 has most of them ahead"
    );
    assert!(
        set_cookie(&html, TICKET).is_none() && last.ticket() == ticket,
        "reloading keeps the same ticket"
    );
}

#[tokio::test]
async fn everyone_polling_is_admitted_in_ticket_order_at_the_configured_pace() {
    const RATE_PER_SEC: f64 = 10.0;
    const BURST: f64 = 1.0;
    let (origin, proxy) = gated("new_users_per_minute = 600\nburst = 1").await;
    let t0 = proxy.now();
    let mut first = Browser::default();
    assert_eq!(
        first.poll(&proxy).await.status,
        200,
        "the first newcomer enters at once"
    );
    let mut line: Vec<Browser> = Vec::new();
    for (b, got) in newcomers(&proxy, 12, Accept::Json).await {
        assert_waiting_room(&got);
        line.push(b);
    }

    // Everybody polls every 100 ms of digue's clock, front of the line first.
    let mut admitted: Vec<(usize, Duration)> = Vec::new();
    let mut pending: Vec<usize> = (0..line.len()).collect();
    while !pending.is_empty() && proxy.now() - t0 < Duration::from_secs(6) {
        let mut still = Vec::new();
        for i in pending {
            let got = line[i].poll(&proxy).await;
            if got.status == 200 {
                admitted.push((i, proxy.now() - t0));
                assert_eq!(
                    got.json(),
                    serde_json::json!({"state": "admitted", "retry_after": 0})
                );
                assert_eq!(got.header("cache-control"), Some("no-store"));
                assert!(
                    new_cookie(&got, PASS).is_some(),
                    "the admitted poll carries a pass"
                );
                assert_eq!(
                    set_cookie(&got, TICKET),
                    Some(None),
                    "and clears the ticket"
                );
            } else {
                position(&got);
                still.push(i);
            }
        }
        pending = still;
        proxy.advance(Duration::from_millis(100));
    }
    assert!(pending.is_empty(), "still waiting after 6 s: {pending:?}");

    let order: Vec<usize> = admitted.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        order,
        (0..line.len()).collect::<Vec<_>>(),
        "admitted in ticket order"
    );
    for (k, (i, at)) in admitted.iter().enumerate() {
        // The first newcomer, then these k + 1.
        let so_far = (k + 2) as f64;
        let bound = BURST + RATE_PER_SEC * at.as_secs_f64() + 1.0;
        assert!(
            so_far <= bound,
            "{so_far} admitted by {at:?} (ticket #{i}): more than burst + rate × t = {bound:.1}"
        );
    }
    let (_, last) = admitted.last().expect("all admitted");
    assert!(
        last.as_secs_f64() <= line.len() as f64 / RATE_PER_SEC + 2.0,
        "the line moves at the configured pace, not slower: the last got in at {last:?}"
    );
    assert_eq!(
        origin.count(ENTRY),
        1,
        "status polls are answered by digue, never by the origin"
    );

    for (i, browser) in line.iter_mut().enumerate() {
        assert!(browser.ticket.is_none(), "#{i}'s ticket was cleared");
        let got = browser.visit(&proxy, ENTRY, Accept::Html).await;
        assert_eq!(got.status, 200, "#{i} enters with its pass: {}", got.text());
        assert_eq!(
            got.text(),
            page(ENTRY),
            "the page asked for, at the same URL"
        );
        assert!(got.header("location").is_none(), "no redirect");
    }
    assert_eq!(origin.count(ENTRY), 1 + line.len());
}

#[tokio::test]
async fn tampered_tickets_and_forged_passes_gain_nothing() {
    let dir = TempDir::new("waiting-room");
    let secret = dir.secret();
    let origin = Origin::portal().await;
    let proxy = signed(&origin, &secret, "new_users_per_minute = 1\nburst = 1").await;
    // Another site signed with the same key, and another deployment of a
    // site with the same name but its own key.
    let other_origin = Origin::portal().await;
    let ent = Digue::new(&other_origin.url())
        .name("ent")
        .secret(&secret)
        .admission("new_users_per_minute = 600\nburst = 10")
        .start()
        .await;
    let stranger = Digue::new(&other_origin.url())
        .admission("new_users_per_minute = 600\nburst = 10")
        .start()
        .await;

    use_up_the_budget(&proxy).await;
    let mut alice = Browser::default();
    let mut bob = Browser::default();
    let alice_at = position(&alice.poll(&proxy).await);
    let bob_at = position(&bob.poll(&proxy).await);
    assert!(bob_at > alice_at);
    let mut back = bob_at;

    let (alice_payload, _) = alice.ticket().split_once('.').expect("payload.tag");
    let (_, bob_tag) = bob.ticket().split_once('.').expect("payload.tag");
    let mut flipped = alice.ticket().as_bytes().to_vec();
    flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    let tampered = [
        ("one character flipped", flipped),
        (
            "Alice's number under Bob's signature",
            format!("{alice_payload}.{bob_tag}"),
        ),
    ];
    for (what, token) in &tampered {
        let mut cheat = Browser::with_ticket(token);
        let got = cheat.poll(&proxy).await;
        let at = position(&got);
        assert!(
            at > back,
            "a ticket with {what} is a newcomer's: at {at}, behind the last at {back}"
        );
        let fresh = new_cookie(&got, TICKET).expect("a new ticket for the newcomer");
        assert_ne!(&fresh, token);
        back = at;
    }

    let mut elsewhere = Browser::default();
    assert_eq!(elsewhere.visit(&ent, ENTRY, Accept::Html).await.status, 200);
    let mut unknown_key = Browser::default();
    assert_eq!(
        unknown_key
            .visit(&stranger, ENTRY, Accept::Html)
            .await
            .status,
        200
    );
    let made_up = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAA",
        URL_SAFE_NO_PAD.encode(format!("p|portal|1|{}", unix_now()))
    );
    let passes = [
        ("another site's pass", elsewhere.pass().to_owned()),
        (
            "a pass signed with another key",
            unknown_key.pass().to_owned(),
        ),
        ("a made-up pass", made_up),
    ];
    for (what, pass) in &passes {
        let mut cheat = Browser::with_pass(pass);
        let got = cheat.visit(&proxy, ENTRY, Accept::Html).await;
        assert_waiting_room(&got);
        assert!(
            new_cookie(&got, TICKET).is_some(),
            "{what}: the visitor is a newcomer, given a ticket"
        );
        let at = html_position(&got.text());
        assert!(at > back, "{what}: at the back of the line ({at} > {back})");
        back = at;
    }

    assert_eq!(
        position(&alice.poll(&proxy).await),
        alice_at,
        "Alice keeps her place"
    );
    assert_eq!(origin.count(ENTRY), 1, "nobody got past the gate");
    assert_eq!(
        proxy
            .metric("digue_tokens_refused_total{reason=\"invalid\",site=\"portal\"}")
            .await,
        5.0,
        "every worthless token is counted"
    );
}

#[tokio::test]
async fn an_admitted_visitor_stays_in_for_the_session_duration() {
    let (origin, proxy) =
        gated("new_users_per_minute = 1\nburst = 1\nsession_duration = \"3s\"").await;
    let mut visitor = use_up_the_budget(&proxy).await;
    let started = proxy.now();
    let mut uses = 0;
    // Passes are checked in whole seconds: a 3 s session lasts at least 3 s.
    while proxy.now() - started < Duration::from_secs(2) {
        proxy.advance(Duration::from_millis(400));
        let got = visitor.visit(&proxy, ENTRY, Accept::Html).await;
        assert_eq!(
            got.status,
            200,
            "still in {:?} after admission: {}",
            proxy.now() - started,
            got.text()
        );
        assert_eq!(got.text(), page(ENTRY));
        uses += 1;
    }
    assert_eq!(
        origin.count(ENTRY),
        1 + uses,
        "every use reached the origin"
    );
    let mut newcomer = Browser::default();
    assert_waiting_room(&newcomer.visit(&proxy, ENTRY, Accept::Html).await);
}

#[tokio::test]
async fn an_idle_pass_expires_and_its_holder_goes_back_to_the_line() {
    let (origin, proxy) =
        gated("new_users_per_minute = 1\nburst = 1\nsession_duration = \"1s\"").await;
    let mut visitor = use_up_the_budget(&proxy).await;
    // Whole seconds: 2.5 s idle is more than 1 s whatever the rounding.
    proxy.advance(Duration::from_millis(2500));
    let got = visitor.visit(&proxy, ENTRY, Accept::Html).await;
    assert_waiting_room(&got);
    assert!(
        new_cookie(&got, TICKET).is_some(),
        "back in the line with a ticket"
    );
    assert_eq!(
        origin.count(ENTRY),
        1,
        "the expired pass did not get through"
    );
    assert_eq!(
        proxy
            .metric("digue_tokens_refused_total{reason=\"expired\",site=\"portal\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_pass_in_use_slides_past_the_session_duration() {
    let (_origin, proxy) =
        gated("new_users_per_minute = 1\nburst = 1\nsession_duration = \"2s\"").await;
    let mut visitor = use_up_the_budget(&proxy).await;
    let started = proxy.now();
    while proxy.now() - started < Duration::from_secs(5) {
        proxy.advance(Duration::from_millis(300));
        let got = visitor.visit(&proxy, ENTRY, Accept::Html).await;
        assert_eq!(
            got.status,
            200,
            "a pass used every 300 ms is never idle for 2 s, yet refused {:?} after admission",
            proxy.now() - started
        );
    }
}

#[tokio::test]
async fn abandoned_tickets_do_not_stall_the_line() {
    let (_origin, proxy) =
        gated("new_users_per_minute = 600\nburst = 1\nclaim_window = \"10s\"").await;
    let t0 = proxy.now();
    use_up_the_budget(&proxy).await;
    let gone = newcomers(&proxy, 5, Accept::Json).await;
    assert!(gone.iter().all(|(_, g)| g.status == 503));
    let mut last = Browser::default();
    position(&last.poll(&proxy).await);
    let took = poll_until_admitted(
        &proxy,
        &mut last,
        Duration::from_millis(50),
        Duration::from_secs(12),
    )
    .await
    .expect("the sixth gets in although the five ahead never came back");
    // Without a cap on active users the line never waits on a claim: the
    // five turns pass at the rate and cost nothing else.
    let bound = 6.0 / 10.0 + 2.0;
    let since_first = proxy.now() - t0;
    assert!(
        since_first.as_secs_f64() <= bound,
        "admitted {took:?} after polling, {since_first:?} after the first arrival (bound {bound} s)"
    );
}

#[tokio::test]
async fn under_a_session_cap_abandoned_turns_hold_their_slots_for_one_claim_window_only() {
    // Everybody takes a ticket; five turns fill the cap of five, and their
    // holders never come back.
    let (_origin, proxy) = gated(
        "new_users_per_minute = 600\nburst = 1\nmode = \"queue_all\"\n\
         max_active_users = 5\nclaim_window = \"10s\"",
    )
    .await;
    let t0 = proxy.now();
    let gone = newcomers(&proxy, 5, Accept::Json).await;
    assert!(gone.iter().all(|(_, g)| g.status == 503));
    let mut sixth = Browser::default();
    position(&sixth.poll(&proxy).await);
    poll_until_admitted(
        &proxy,
        &mut sixth,
        Duration::from_millis(200),
        Duration::from_secs(13),
    )
    .await
    .expect("abandoned turns are given back after the claim window");
    let waited = (proxy.now() - t0).as_secs_f64();
    assert!(
        waited >= 9.5,
        "pending turns count toward max_active_users until claimed or expired: in after {waited:.1} s"
    );
    assert!(
        waited <= 6.0 / 10.0 + 10.0 + 1.5,
        "at most rate × 6 + one claim window: in after {waited:.1} s"
    );
    assert!(
        proxy
            .metric("digue_turns_missed_total{site=\"portal\"}")
            .await
            >= 1.0,
        "missed turns are counted"
    );
}

#[tokio::test]
async fn queue_all_gives_even_the_first_newcomer_a_ticket_then_admits_it_on_its_next_poll() {
    let (origin, proxy) =
        gated("new_users_per_minute = 600\nburst = 1\nmode = \"queue_all\"").await;
    let mut first = Browser::default();
    let got = first.visit(&proxy, ENTRY, Accept::Html).await;
    assert_waiting_room(&got);
    assert!(first.ticket.is_some(), "even the first newcomer waits");
    assert_eq!(origin.count(ENTRY), 0);
    proxy.advance(Duration::from_millis(150));
    let got = first.visit(&proxy, ENTRY, Accept::Html).await;
    assert_eq!(got.status, 200, "its turn came at the rate: {}", got.text());
    assert_eq!(got.text(), page(ENTRY));
    assert!(first.pass.is_some() && first.ticket.is_none());
}

#[tokio::test]
async fn passthrough_never_queues_and_counts_who_came_in() {
    let (origin, proxy) =
        gated("new_users_per_minute = 60\nburst = 1\nmode = \"passthrough\"").await;
    for (i, (browser, got)) in newcomers(&proxy, 20, Accept::Html).await.iter().enumerate() {
        assert_eq!(got.status, 200, "newcomer {i} does not wait");
        assert!(browser.ticket.is_none(), "no ticket for newcomer {i}");
    }
    assert_eq!(origin.count(ENTRY), 20);
    assert_eq!(
        proxy
            .metric("digue_admitted_total{how=\"passthrough\",site=\"portal\"}")
            .await,
        20.0
    );
}

#[tokio::test]
async fn closed_turns_newcomers_away_but_lets_pass_holders_in() {
    let dir = TempDir::new("waiting-room");
    let secret = dir.secret();
    let open_origin = Origin::portal().await;
    let open = signed(&open_origin, &secret, "new_users_per_minute = 600").await;
    let mut regular = Browser::default();
    assert_eq!(regular.visit(&open, ENTRY, Accept::Html).await.status, 200);
    open.shutdown().await;

    // The mode is config-only: the same site, restarted closed, same key.
    let origin = Origin::portal().await;
    let proxy = signed(
        &origin,
        &secret,
        "new_users_per_minute = 600\nmode = \"closed\"",
    )
    .await;
    let mut newcomer = Browser::default();
    let got = newcomer.poll(&proxy).await;
    assert_waiting_room(&got);
    assert_eq!(got.json()["state"], "closed", "{}", got.text());
    assert!(newcomer.ticket.is_none(), "no ticket while closed");
    let html = newcomer.visit(&proxy, ENTRY, Accept::Html).await;
    assert_waiting_room(&html);
    assert!(
        html.text().contains("Les nouvelles connexions") && html.text().contains("sont fermées"),
        "the page says connections are closed: {}",
        html.text()
    );
    assert_eq!(origin.count(ENTRY), 0);

    let got = regular.visit(&proxy, ENTRY, Accept::Html).await;
    assert_eq!(
        got.status,
        200,
        "a valid pass still gets in: {}",
        got.text()
    );
    assert_eq!(origin.count(ENTRY), 1);
}

#[tokio::test]
async fn json_and_html_agree_on_the_position() {
    let (_origin, proxy) = gated("new_users_per_minute = 1\nburst = 1").await;
    use_up_the_budget(&proxy).await;
    let mut seen = Vec::new();
    for (mut browser, got) in newcomers(&proxy, 4, Accept::Html).await {
        assert_waiting_room(&got);
        let from_html = html_position(&got.text());
        let status = browser.poll(&proxy).await;
        let from_json = position(&status);
        assert_eq!(from_html, from_json, "HTML and JSON differ");
        let english = get(
            &proxy.url(ENTRY),
            &[
                ("accept-language", "en-GB,en;q=0.9"),
                ("cookie", &format!("{TICKET}={}", browser.ticket())),
            ],
        )
        .await;
        assert!(english.text().contains("<html lang=\"en\""));
        assert_eq!(
            html_position(&english.text()),
            from_json,
            "the English page too"
        );
        let text = status.json()["position_text"].clone();
        assert!(
            got.text().contains(text.as_str().expect("a string")),
            "the same words in both: {text}"
        );
        seen.push(from_json);
    }
    assert_eq!(seen, [0, 1, 2, 3], "one more ahead for each later arrival");
}

#[tokio::test]
async fn paths_outside_the_gate_are_never_queued() {
    let origin = Origin::portal().await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.admission]\n\
         paths = [\"/pronote/eleve.html\", \"/index.php?title=Special:UserLogin\"]\n\
         new_users_per_minute = 1\nburst = 1\n",
    )
    .await;
    use_up_the_budget(&proxy).await;
    for (_, got) in newcomers(&proxy, 5, Accept::Html).await {
        assert_waiting_room(&got);
    }
    for target in ["/static/x", "/api/notes", "/index.php?title=Accueil"] {
        let got = get(&proxy.url(target), &[]).await;
        assert_eq!(got.status, 200, "{target} is not an entry point");
        assert_eq!(got.text(), page(target));
        assert!(set_cookie(&got, TICKET).is_none(), "no ticket for {target}");
    }
    let login = get(&proxy.url("/index.php?title=Special:UserLogin"), &[]).await;
    assert_waiting_room(&login);
    assert_eq!(origin.count("/index.php?title=Special:UserLogin"), 0);
}

#[tokio::test]
async fn a_network_gets_a_few_tickets_a_minute_then_the_same_answer() {
    let (_origin, proxy) =
        gated("new_users_per_minute = 60\nburst = 1\ntickets_per_network_per_minute = 5").await;
    let arrivals = newcomers(&proxy, 10, Accept::Json).await;
    let entered = arrivals.iter().filter(|(_, g)| g.status == 200).count();
    let ticketed: Vec<&Got> = arrivals
        .iter()
        .filter(|(b, _)| b.ticket.is_some())
        .map(|(_, g)| g)
        .collect();
    assert!(entered <= 1, "the burst at most: {entered}");
    assert!(
        ticketed.len() <= 5,
        "at most 5 tickets a minute for one /24: {}",
        ticketed.len()
    );
    let back = ticketed.iter().map(|g| position(g)).max().unwrap_or(0);
    let turned_away: Vec<&Got> = arrivals
        .iter()
        .filter(|(b, g)| g.status != 200 && b.ticket.is_none())
        .map(|(_, g)| g)
        .collect();
    assert_eq!(
        entered + ticketed.len() + turned_away.len(),
        10,
        "every newcomer is either in, ticketed or turned away"
    );
    assert!(
        turned_away.len() >= 4,
        "the rest got no ticket: {}",
        turned_away.len()
    );
    for got in &turned_away {
        assert_waiting_room(got);
        assert!(
            position(got) >= back,
            "shown the back of the line, not a place in front"
        );
    }
    assert_eq!(
        proxy
            .metric("digue_tickets_throttled_total{site=\"portal\"}")
            .await,
        turned_away.len() as f64
    );
}

#[tokio::test]
async fn staff_networks_in_bypass_cidrs_never_wait() {
    let (_origin, proxy) =
        gated("new_users_per_minute = 1\nburst = 1\nbypass_cidrs = [\"127.0.0.2/32\"]").await;
    use_up_the_budget(&proxy).await;
    for (_, got) in newcomers(&proxy, 5, Accept::Html).await {
        assert_waiting_room(&got);
    }
    let staff: IpAddr = "127.0.0.2".parse().expect("ip");
    for i in 0..5 {
        let got = get_from(staff, &proxy.url(ENTRY), &[]).await;
        assert_eq!(
            got.status,
            200,
            "staff request {i} skips the long line: {}",
            got.text()
        );
        assert!(set_cookie(&got, TICKET).is_none());
    }
    let pupil: IpAddr = "127.0.0.3".parse().expect("ip");
    assert_waiting_room(&get_from(pupil, &proxy.url(ENTRY), &[]).await);
    let liar = get(&proxy.url(ENTRY), &[("x-forwarded-for", "127.0.0.2")]).await;
    assert_waiting_room(&liar);
    assert_eq!(
        proxy
            .metric("digue_admitted_total{how=\"bypass\",site=\"portal\"}")
            .await,
        5.0
    );
}

#[tokio::test]
async fn a_ticket_keeps_its_place_across_a_restart() {
    const BURST: u64 = 1;
    let dir = TempDir::new("waiting-room");
    let origin = Origin::portal().await;
    let digue = restartable(&origin, &dir, "new_users_per_minute = 1\nburst = 1");
    let proxy = digue.clone().start().await;
    use_up_the_budget(&proxy).await;
    let mut before = Vec::new();
    let mut line = Vec::new();
    for (browser, got) in newcomers(&proxy, 3, Accept::Json).await {
        before.push(position(&got));
        line.push(browser);
    }
    proxy.shutdown().await;

    let proxy = digue.start().await;
    // From the back of the line, so that nobody ahead leaves it first.
    let mut waiting = Vec::new();
    for (i, browser) in line.iter_mut().enumerate().rev() {
        let was = before[i];
        let got = browser.poll(&proxy).await;
        assert!(
            set_cookie(&got, TICKET).is_none_or(|t| t.is_none()),
            "ticket #{i} is honoured, not replaced by a new one"
        );
        if got.status == 200 {
            // A restarted budget hands out up to `burst` turns at once.
            assert!(
                was < BURST,
                "ticket #{i}, {was} ahead before the restart, got in at once"
            );
            continue;
        }
        let now = position(&got);
        assert!(
            now <= was && now + BURST >= was,
            "ticket #{i} was {was} ahead, now {now}: nobody moves back, and only \
             the restarted budget moves anyone forward"
        );
        waiting.push(now);
    }
    assert!(!waiting.is_empty(), "at 1/min most of the line still waits");
    let mut late = Browser::default();
    let late_at = position(&late.poll(&proxy).await);
    assert!(
        waiting.iter().all(|p| *p < late_at),
        "a new arrival stands behind the tickets of before the restart: {late_at} vs {waiting:?}"
    );
}

#[tokio::test]
async fn a_ticket_whose_turn_came_just_before_a_restart_still_gets_in() {
    let dir = TempDir::new("waiting-room");
    let origin = Origin::portal().await;
    let digue = restartable(
        &origin,
        &dir,
        "new_users_per_minute = 1\nburst = 1\nmode = \"queue_all\"",
    );
    let proxy = digue.clone().start().await;
    // The second arrival moves the line: the first ticket's turn comes.
    let mut line = newcomers(&proxy, 3, Accept::Json).await;
    assert!(line.iter().all(|(_, g)| g.status == 503));
    proxy.shutdown().await;

    let proxy = digue.start().await;
    let (first, _) = &mut line[0];
    let got = first.poll(&proxy).await;
    assert_eq!(
        got.status,
        200,
        "the first ticket had its turn before the restart; after it: {} (new ticket: {})",
        got.text(),
        new_cookie(&got, TICKET).is_some()
    );
}

#[tokio::test]
async fn a_restart_does_not_refill_the_admission_budget() {
    let dir = TempDir::new("waiting-room");
    let origin = Origin::portal().await;
    let digue = restartable(&origin, &dir, "new_users_per_minute = 1\nburst = 1");
    let proxy = digue.clone().start().await;
    use_up_the_budget(&proxy).await;
    proxy.shutdown().await;
    let proxy = digue.start().await;
    let mut second = Browser::default();
    let got = second.poll(&proxy).await;
    assert_eq!(
        got.status, 503,
        "at 1/min with a burst of 1, a second newcomer a moment later waits, restart or not"
    );
}

#[tokio::test]
async fn a_junk_or_forged_pass_sent_before_a_valid_one_keeps_the_user_in() {
    let (_origin, proxy) =
        gated("new_users_per_minute = 600\nburst = 1\nmode = \"queue_all\"").await;
    let mut pupil = Browser::default();
    assert_waiting_room(&pupil.visit(&proxy, ENTRY, Accept::Html).await);
    proxy.advance(Duration::from_millis(150));
    assert_eq!(pupil.visit(&proxy, ENTRY, Accept::Html).await.status, 200);
    let pass = pupil.pass().to_owned();
    let mut forged = pass.clone();
    let last = forged.pop().expect("a pass");
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for junk in ["junk", "", forged.as_str()] {
        let got = get(
            &proxy.url(ENTRY),
            &[("cookie", &format!("{PASS}={junk}; {PASS}={pass}"))],
        )
        .await;
        assert_eq!(
            got.status,
            200,
            "a pass {junk:?} before the valid one: still in ({})",
            got.text()
        );
    }
}

#[tokio::test]
async fn the_origin_never_sees_digues_cookies() {
    let (origin, proxy) =
        gated("new_users_per_minute = 600\nburst = 1\nmode = \"queue_all\"").await;
    let mut pupil = Browser {
        other: Some("theme=dark; JSESSIONID=abc"),
        ..Browser::default()
    };
    assert_waiting_room(&pupil.visit(&proxy, ENTRY, Accept::Html).await);
    proxy.advance(Duration::from_millis(150));
    // Admitted with the ticket still in the request.
    assert_eq!(pupil.visit(&proxy, ENTRY, Accept::Html).await.status, 200);
    // With the pass, on a gated and a non-gated path.
    assert_eq!(pupil.visit(&proxy, ENTRY, Accept::Html).await.status, 200);
    assert_eq!(
        pupil.visit(&proxy, "/api/notes", Accept::Json).await.status,
        200
    );
    // Two Cookie header lines, digue's own first.
    let split = get(
        &proxy.url("/api/devoirs"),
        &[
            ("cookie", &format!("{PASS}={}", pupil.pass())),
            ("cookie", "theme=dark"),
        ],
    )
    .await;
    assert_eq!(split.status, 200);

    let seen = origin.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    for s in &seen {
        let cookies: Vec<&str> = s
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert!(
            cookies.iter().all(|c| !c.contains("digue_")),
            "{} reached the origin with {cookies:?}",
            s.target
        );
        assert!(
            cookies.iter().any(|c| c.contains("theme=dark")),
            "the portal's own cookies pass untouched to {}: {cookies:?}",
            s.target
        );
    }
    assert!(
        seen[..3].iter().all(|s| s
            .headers
            .get("cookie")
            .is_some_and(|c| c == "theme=dark; JSESSIONID=abc")),
        "byte for byte: {seen:?}"
    );
}

#[tokio::test]
async fn max_active_users_keeps_the_third_waiting_even_when_the_rate_allows() {
    let (origin, proxy) =
        gated("new_users_per_minute = 600\nburst = 10\nmax_active_users = 2").await;
    let mut arrivals = newcomers(&proxy, 3, Accept::Html).await;
    let statuses: Vec<u16> = arrivals.iter().map(|(_, g)| g.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [200, 200, 503],
        "two active sessions fill the cap"
    );
    // Half a second is five admissions' worth of budget: the cap still holds.
    proxy.advance(Duration::from_millis(500));
    let (third, _) = &mut arrivals[2];
    let got = third.poll(&proxy).await;
    position(&got);
    assert_eq!(origin.count(ENTRY), 2);
}

#[tokio::test]
async fn a_closed_site_keeps_its_line_still_and_reopens_in_ticket_order() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url())
        .admin()
        .admission(
            "new_users_per_minute = 120\nburst = 1\nclaim_window = \"10s\"\n\
             mode = \"queue_all\"",
        )
        .start()
        .await;
    // The first ticket's turn comes at once; the site closes before its
    // holder's next poll.
    let mut line = Vec::new();
    for (browser, got) in newcomers(&proxy, 2, Accept::Json).await {
        position(&got);
        line.push(browser);
    }
    proxy.patch_admission(r#"{"mode": "closed"}"#).await;
    // Closed for longer than the claim window, scraped as Prometheus would:
    // at 2/s both turns would be out within a second and expire 10 s later
    // if the line moved.
    for _ in 0..24 {
        proxy
            .metric("digue_turns_missed_total{site=\"portal\"}")
            .await;
        let got = line[0].poll(&proxy).await;
        assert_eq!(got.json()["state"], "closed", "{}", got.text());
        assert!(
            3 * retry_after(&got) <= 10,
            "a ticket holder polls several times per claim window, even while closed"
        );
        proxy.advance(Duration::from_millis(500));
    }
    proxy.patch_admission(r#"{"mode": "queue_all"}"#).await;

    let ticket = line[0].ticket().to_owned();
    let got = line[0].poll(&proxy).await;
    assert_eq!(
        got.status,
        200,
        "the first in line is admitted when the site reopens (new ticket: {}): {}",
        new_cookie(&got, TICKET).is_some_and(|t| t != ticket),
        got.text()
    );
    let second = line[1].ticket().to_owned();
    let got = line[1].poll(&proxy).await;
    assert!(
        got.status == 200 || position(&got) == 0 && line[1].ticket() == second,
        "the second is next, not sent to the back: {}",
        got.text()
    );
    assert_eq!(
        proxy
            .metric("digue_turns_missed_total{site=\"portal\"}")
            .await,
        0.0,
        "no turn was handed out to holders who could not claim it"
    );
}

#[tokio::test]
async fn a_ticket_older_than_its_cookie_is_refused_and_its_holder_queues_anew() {
    let dir = TempDir::new("waiting-room");
    let secret = dir.secret();
    let origin = Origin::portal().await;
    let proxy = signed(&origin, &secret, "new_users_per_minute = 1\nburst = 1").await;
    use_up_the_budget(&proxy).await;
    let mut today = Browser::default();
    assert_eq!(position(&today.poll(&proxy).await), 0);

    // Yesterday's first ticket: its number is today's first ticket's too.
    let stale = signed_ticket(&secret, "portal", 1, unix_now() - 13 * 3600);
    let mut yesterday = Browser::with_ticket(&stale);
    let got = yesterday.poll(&proxy).await;
    assert_eq!(
        position(&got),
        1,
        "a 13-hour-old ticket is a newcomer's, behind today's first: {}",
        got.text()
    );
    assert!(
        new_cookie(&got, TICKET).is_some_and(|t| t != stale),
        "and its holder is given a new ticket"
    );
    assert_eq!(
        proxy
            .metric("digue_tokens_refused_total{reason=\"expired\",site=\"portal\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn after_a_restart_without_state_an_old_far_ticket_does_not_hold_up_the_line() {
    let dir = TempDir::new("waiting-room");
    let secret = dir.secret();
    let origin = Origin::portal().await;
    // Restarted without a state file: the line's count starts again at 0.
    let proxy = signed(
        &origin,
        &secret,
        "new_users_per_minute = 600\nburst = 1\nmode = \"queue_all\"",
    )
    .await;
    let old = signed_ticket(&secret, "portal", 40_000, unix_now() - 3600);
    let mut holder = Browser::with_ticket(&old);
    let got = holder.poll(&proxy).await;
    assert_eq!(
        position(&got),
        0,
        "the old ticket's holder starts again at the end of today's (empty) line: {}",
        got.text()
    );
    assert!(
        new_cookie(&got, TICKET).is_some_and(|t| t != old),
        "its place was lost with the state: it is given a new ticket"
    );

    let mut newcomer = Browser::default();
    newcomer.poll(&proxy).await;
    let took = poll_until_admitted(
        &proxy,
        &mut newcomer,
        Duration::from_millis(50),
        Duration::from_secs(3),
    )
    .await;
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(1)),
        "at 10/s a newcomer behind one ticket gets in within a second, not after \
         40,000 turns nobody holds: {took:?}"
    );
}

#[tokio::test]
async fn a_max_active_users_raised_live_is_enforced_at_its_new_value() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url())
        .admin()
        .admission(
            "new_users_per_minute = 6000\nburst = 100\nmax_active_users = 2\n\
             tickets_per_network_per_minute = 1000",
        )
        .start()
        .await;
    proxy.patch_admission(r#"{"max_active_users": 20}"#).await;
    let arrivals = newcomers(&proxy, 30, Accept::Html).await;
    let statuses: Vec<u16> = arrivals.iter().map(|(_, g)| g.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "the new cap lets 20 in and holds the rest, whatever the first cap was: {statuses:?}"
    );
    assert_eq!(origin.count(ENTRY), 20);
}
