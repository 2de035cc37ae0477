//! Cache poisoning through headers the origin reflects but the cache does
//! not key on: one client's `X-Forwarded-Host` or `X-Original-URL` must
//! never shape a page that digue then serves to everyone else.
//!
//! The origin here is the naive portal: it builds its pages (links,
//! redirects, which page to serve) from every such header it gets, reads
//! `_` in a header name as `-` as CGI-style stacks do, and marks the result
//! `public, max-age=60`. A clean client fetching after the attacker must get
//! exactly the page a clean request builds.

use crate::support::{Got, Origin, Proxy, Seen, get, reply};

/// The headers the naive origin builds its pages from, each obeyed by
/// some framework or server: host and scheme for absolute links and
/// redirects, the URL and method for routing. Written out here, not taken
/// from digue's `DEFAULT_ROUTING_HEADERS`: a name missing there must show up here
/// as a poisoned page.
const REFLECTED: &[&str] = &[
    "x-forwarded-host",
    "x-forwarded-proto",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The page the naive origin builds: one line per reflected header it
/// received, a header named with `_` read as the `-` one.
fn built_page(seen: &Seen) -> String {
    let mut lines: Vec<String> = seen
        .headers
        .iter()
        .filter(|(name, _)| REFLECTED.contains(&name.as_str().replace('_', "-").as_str()))
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes());
            format!("{}: {value}", name.as_str().replace('_', "-"))
        })
        .collect();
    lines.sort();
    lines.join("\n")
}

/// What a clean client sends.
const CLEAN: &[(&str, &str)] = &[("host", "ent.example.fr")];

async fn naive_origin() -> Origin {
    Origin::start(|seen| {
        reply(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("content-type", "text/html; charset=utf-8"),
            ],
            &built_page(seen),
        )
    })
    .await
}

fn is_hit(got: &Got) -> bool {
    got.cache_status().starts_with("digue; hit")
}

/// For each `(header, value)`: the attacker fetches a path of its own with
/// the header, then a clean client (`clean` headers only) fetches the same
/// path and must get the stored copy (else a poisoned copy could not show)
/// with the body a clean request builds. Fails the test naming every header
/// whose value reached a clean client.
async fn assert_never_poisoned(
    proxy: &Proxy,
    origin: &Origin,
    clean: &[(&str, &str)],
    attacks: &[(&str, &str)],
) {
    let control = get(&proxy.url("/control"), clean).await;
    assert_eq!(control.status, 200, "the control page: {}", control.text());
    let mut poisoned = Vec::new();
    for (i, (name, value)) in attacks.iter().enumerate() {
        let path = format!("/page/{i}");
        let mut attacker = clean.to_vec();
        attacker.push((name, value));
        let bait = get(&proxy.url(&path), &attacker).await;
        assert_eq!(bait.status, 200, "{name}: the attacker's fetch");
        let victim = get(&proxy.url(&path), clean).await;
        assert!(
            is_hit(&victim) && origin.count(&path) == 1,
            "{name}: the clean client gets the copy the attacker's fetch stored \
             (else this test proves nothing): {} after {} origin fetch(es)",
            victim.cache_status(),
            origin.count(&path)
        );
        if victim.body != control.body {
            poisoned.push(format!("{name}: {value} -> {:?}", victim.text()));
        }
    }
    assert!(
        poisoned.is_empty(),
        "a clean client got a page built from another client's header, \
         which the cache does not key on: {poisoned:#?}"
    );
}

#[tokio::test]
async fn an_untrusted_client_s_forwarded_headers_never_shape_a_shared_page() {
    let origin = naive_origin().await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let attacks = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "host=evil.example;proto=https"),
        ("x_forwarded_host", "evil.example"),
        ("X_Forwarded_Proto", "https"),
    ];

    assert_never_poisoned(&proxy, &origin, CLEAN, &attacks).await;
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn routing_headers_of_an_untrusted_client_never_shape_a_shared_page() {
    let origin = naive_origin().await;
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let attacks = [
        ("x-original-url", "/admin/evil"),
        ("x-rewrite-url", "/admin/evil"),
        ("x-host", "evil.example"),
        ("x-forwarded-port", "666"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-scheme", "https"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-server", "evil.example"),
        ("x-http-method-override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("x-method-override", "DELETE"),
        ("X_Original_URL", "/admin/evil"),
    ];

    assert_never_poisoned(&proxy, &origin, CLEAN, &attacks).await;
    for (i, (name, _)) in attacks.iter().enumerate() {
        let seen = origin.last(&format!("/page/{i}")).expect("fetched once");
        let page = built_page(&seen);
        assert!(
            !page.contains("evil") && !page.contains("DELETE"),
            "{name} never reaches the origin from an untrusted client: {page:?}"
        );
    }
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn a_trusted_proxy_s_forwarded_host_and_scheme_are_the_ones_digue_keys_on() {
    let origin = naive_origin().await;
    let proxy = Proxy::start(&origin.url(), "trusted_proxies = [\"127.0.0.1\"]", "").await;
    // The load balancer relays what its client sent: a trusted peer is no
    // guarantee that these values are its own.
    let attacks = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-host", "EVIL.example, ent.example.fr"),
        // Read as http for the key, as https by an origin that takes the first.
        ("x-forwarded-proto", "https, http"),
        ("forwarded", "host=evil.example;proto=https"),
        ("x_forwarded_host", "evil.example"),
    ];

    assert_never_poisoned(&proxy, &origin, CLEAN, &attacks).await;
    let seen = origin.last("/control").expect("fetched");
    assert_eq!(
        seen.headers["x-forwarded-host"], "ent.example.fr",
        "the origin is told the Host digue keys on"
    );
    proxy.shutdown().await;
    origin.join().await;
}

#[tokio::test]
async fn a_trusted_proxy_s_https_still_reaches_the_origin_under_its_own_key() {
    let origin = naive_origin().await;
    let proxy = Proxy::start(&origin.url(), "trusted_proxies = [\"127.0.0.1\"]", "").await;
    let mut secure = CLEAN.to_vec();
    secure.push(("x-forwarded-proto", "https"));

    let secure = get(&proxy.url("/p"), &secure).await;
    assert!(
        secure.text().contains("x-forwarded-proto: https"),
        "the scheme a trusted proxy says reaches the origin: {:?}",
        secure.text()
    );
    let plain = get(&proxy.url("/p"), CLEAN).await;
    assert!(
        plain.text().lines().any(|l| l == "x-forwarded-proto: http"),
        "and its page is not served over plain HTTP: {:?}",
        plain.text()
    );
    assert_eq!(origin.count("/p"), 2, "one copy per scheme");
    proxy.shutdown().await;
    origin.join().await;
}

/// An origin that personalises whatever it gets: the page names the
/// cookies it was sent, and is marked `public, max-age=60` all the same.
async fn personalising_origin() -> Origin {
    Origin::start(|seen| {
        let cookies: Vec<String> = seen
            .headers
            .get_all("cookie")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        reply(
            200,
            &[("cache-control", "public, max-age=60")],
            &format!("cookies: {}", cookies.join(" | ")),
        )
    })
    .await
}

#[tokio::test]
async fn no_cookie_of_one_user_shapes_a_copy_stored_for_everyone() {
    let origin = personalising_origin().await;
    let proxy = crate::support::Digue::new(&origin.url())
        .site(
            "session_cookies = [\"JSESSIONID\"]\n\
             [[site.cache.rule]]\nprefix = \"/static/\"\nttl = \"1h\"\nshared = true\n",
        )
        .start()
        .await;
    // Under a shared rule: any cookie at all.
    for (i, cookie) in [
        "remember=secret-token",
        "JSESSIONID=s1; remember=secret-token",
        "SID=secret-token",
    ]
    .iter()
    .enumerate()
    {
        let target = format!("/static/app{i}.js");
        let attacker = get(&proxy.url(&target), &[CLEAN[0], ("cookie", cookie)]).await;
        assert_eq!(attacker.status, 200, "{cookie}");
        let clean = get(&proxy.url(&target), CLEAN).await;
        assert!(
            !clean.text().contains("secret"),
            "{cookie}: a clean client gets a copy made with no cookie: {}",
            clean.text()
        );
    }
    // Elsewhere: a session cookie spelled in another case, or after a comma,
    // makes the request per-user, never stored.
    for (i, cookie) in ["jsessionid=secret-token", "x=1, JSESSIONID=secret-token"]
        .iter()
        .enumerate()
    {
        let target = format!("/page{i}");
        let user = get(&proxy.url(&target), &[CLEAN[0], ("cookie", cookie)]).await;
        assert_eq!(user.status, 200, "{cookie}");
        let clean = get(&proxy.url(&target), CLEAN).await;
        assert!(
            !clean.text().contains("secret"),
            "{cookie}: the user's page is not served to a clean client: {}",
            clean.text()
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_routing_headers_dropped_from_clients_are_the_operator_s_list() {
    let origin = Origin::start(|_| reply(200, &[("cache-control", "no-store")], "page")).await;
    let proxy = crate::support::Digue::new(&origin.url())
        .server("routing_headers = [\"X-Tenant\"]")
        .start()
        .await;
    let got = get(
        &proxy.url("/p"),
        &[("x-tenant", "other-school"), ("x-original-url", "/admin")],
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = origin.last("/p").expect("reached the origin");
    assert!(
        !seen.headers.contains_key("x-tenant"),
        "a listed header is dropped: {:?}",
        seen.headers
    );
    assert!(
        seen.headers.contains_key("x-original-url"),
        "the list replaces the default one"
    );
    proxy.shutdown().await;
}
