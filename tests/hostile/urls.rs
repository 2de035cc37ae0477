//! Nobody skips the line by spelling a URL differently: every spelling of a
//! gated entry point waits while the line is full, and targets no origin
//! should see are refused with `400` before anything else.

use crate::support::http::{get, raw, request, send, set_cookie};
use crate::support::origin::Origin;
use crate::support::proxy::{Digue, Proxy};

/// Everyone takes a ticket (the line is never empty enough to enter at
/// once), and one machine may take as many as the test needs.
const WAITING_ROOM: &str = "[site.admission]\n\
    paths = [\"/login\", \"/index.php?title=Special:UserLogin\"]\n\
    new_users_per_minute = 1\n\
    mode = \"queue_all\"\n\
    tickets_per_network_per_minute = 100000\n";

async fn full_line() -> (Origin, Proxy) {
    let origin = Origin::fixed(&[], "the portal").await;
    let proxy = Digue::new(&origin.url()).site(WAITING_ROOM).start().await;
    (origin, proxy)
}

/// Asserts `target` got the waiting page and a ticket, not the portal.
async fn waits(proxy: &Proxy, origin: &Origin, target: &str) {
    let got = get(&proxy.url(target), &[]).await;
    assert_eq!(
        got.status,
        503,
        "{target:?} must wait in line, not reach the portal: {}",
        got.text()
    );
    assert!(
        set_cookie(&got, "digue_ticket").is_some_and(|t| t.is_some()),
        "{target:?} is given a place in line"
    );
    assert_eq!(origin.total(), 0, "{target:?} reached the origin");
}

#[tokio::test]
async fn every_spelling_of_a_gated_path_waits_in_line() {
    let (origin, proxy) = full_line().await;
    for target in [
        "/login",
        "/LOGIN",
        "/Login",
        "/%6cogin",
        "/%6Cogin",
        "//login",
        "/./login",
        "/x/../login",
        "/%2flogin",
        "/login;jsessionid=0123",
        "/static/..%2flogin",
        "/%2e/login",
        "/login?next=/timetable",
    ] {
        waits(&proxy, &origin, target).await;
    }
    let page = get(&proxy.url("/news"), &[]).await;
    assert_eq!(page.status, 200, "other pages are not gated");
    assert_eq!(origin.total(), 1, "and reach the portal");
}

#[tokio::test]
async fn a_gate_written_with_a_query_catches_its_parameter_however_it_is_written() {
    let (origin, proxy) = full_line().await;
    for target in [
        "/index.php?title=Special%3AUserLogin&returnto=Main+Page",
        "/index.php?returnto=Main&title=Special:UserLogin",
        "/index.php?title=Main&title=Special:UserLogin",
        "/index.php?%74itle=Special:UserLogin",
        "/index.php?title=special:userlogin",
        "/w/../index.php?title=Special:UserLogin",
    ] {
        waits(&proxy, &origin, target).await;
    }
    let page = get(&proxy.url("/index.php?title=Main_Page"), &[]).await;
    assert_eq!(page.status, 200, "the wiki's other pages are not gated");
}

/// A small deterministic generator (xorshift), so a failure names its seed.
struct Spellings(u64);

impl Spellings {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `/login` in random case, with random characters percent-encoded
    /// (either hex case), and random detours: `./`, `x/../`, `//`, `;p=v`.
    fn spell(&mut self) -> String {
        let mut out = String::new();
        for _ in 0..self.next() % 3 {
            out.push_str(["/.", "/x/..", "/", "/a;p=v/.."][(self.next() % 4) as usize]);
        }
        out.push('/');
        for c in "login".chars() {
            let c = if self.next().is_multiple_of(2) {
                c.to_ascii_uppercase()
            } else {
                c
            };
            if self.next().is_multiple_of(3) {
                let hex = format!("%{:02x}", c as u32);
                out.push_str(&if self.next().is_multiple_of(2) {
                    hex.to_ascii_uppercase()
                } else {
                    hex
                });
            } else {
                out.push(c);
            }
        }
        if self.next().is_multiple_of(4) {
            out.push_str(";jsessionid=x");
        }
        out
    }
}

#[tokio::test]
async fn generated_spellings_of_a_gated_path_all_wait_in_line() {
    let (origin, proxy) = full_line().await;
    let mut spellings = Spellings(0x9e37_79b9_7f4a_7c15);
    for _ in 0..60 {
        let target = spellings.spell();
        waits(&proxy, &origin, &target).await;
    }
}

#[tokio::test]
async fn a_form_posted_to_a_gated_path_without_a_pass_gets_the_waiting_page_and_a_ticket() {
    let (origin, proxy) = full_line().await;
    let post = send(request(
        http::Method::POST,
        &proxy.url("/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "user=pupil&password=secret",
    ))
    .await;
    assert_eq!(post.status, 503, "the form waits too: {}", post.text());
    assert!(
        set_cookie(&post, "digue_ticket").is_some_and(|t| t.is_some()),
        "with a place in line, like a GET"
    );
    let head = send(request(http::Method::HEAD, &proxy.url("/LOGIN"), &[], "")).await;
    assert_eq!(head.status, 503, "HEAD behaves like GET");
    assert_eq!(origin.total(), 0, "nothing reached the portal");
}

#[tokio::test]
async fn targets_no_origin_should_see_are_refused_with_400_and_counted() {
    let origin = Origin::fixed(&[], "the portal").await;
    let proxy = Digue::new(&origin.url()).start().await;
    for (target, reason) in [
        ("/a%00b", "control"),
        ("/a%0d%0aSet-Cookie:%20x=1", "control"),
        ("/static/%zz", "bad_escape"),
        ("/%", "bad_escape"),
        ("/../etc/passwd", "above_root"),
        ("/x/..%2f..%2fetc", "above_root"),
    ] {
        let answer = raw(
            proxy.addr,
            format!("GET {target} HTTP/1.1\r\nHost: portal\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{target:?} is refused: {answer}"
        );
        let sample = format!("digue_refused_targets_total{{reason=\"{reason}\",site=\"portal\"}}");
        assert!(proxy.metric(&sample).await >= 1.0, "{target:?} is counted");
    }
    assert_eq!(origin.total(), 0, "the origin saw none of them");
    let page = get(&proxy.url("/page"), &[]).await;
    assert_eq!(page.status, 200, "and digue serves on");
}
