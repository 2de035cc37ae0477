//! The portal driven by a real HTTP client over loopback.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::stats::{self, STATS_PATH, Stats};
use super::{CapacitySchedule, Portal, PortalOptions, Shared, Timings};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type TestClient = Client<HttpConnector, Full<Bytes>>;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: HeaderName) -> &str {
        self.headers
            .get(&name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .expect("ASCII header")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn json_as<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).expect("JSON body of that shape")
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

async fn start(opts: PortalOptions) -> Portal {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    Portal::spawn(listener, opts)
}

fn fast() -> PortalOptions {
    PortalOptions {
        capacity: 32,
        base_latency: Duration::from_millis(1),
    }
}

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(portal: &Portal, method: Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", portal.addr))
}

async fn send(client: &TestClient, req: http::request::Builder, body: &'static str) -> Answer {
    let resp = client
        .request(
            req.body(Full::new(Bytes::from_static(body.as_bytes())))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(client: &TestClient, portal: &Portal, path: &str) -> Answer {
    send(client, request(portal, Method::GET, path), "").await
}

async fn login(client: &TestClient, portal: &Portal) -> String {
    let answer = get(client, portal, "/pronote/eleve.html").await;
    assert_eq!(answer.status, StatusCode::OK);
    let cookie = answer.header(header::SET_COOKIE);
    let (pair, attributes) = cookie.split_once(';').expect("cookie attributes");
    assert!(attributes.contains("Path=/"), "{cookie}");
    assert!(attributes.contains("HttpOnly"), "{cookie}");
    let id = pair.strip_prefix("JSESSIONID=").expect("JSESSIONID cookie");
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    id.to_owned()
}

#[tokio::test]
async fn home_page_is_cacheable_and_revalidates() {
    let portal = start(fast()).await;
    let client = client();

    let home = get(&client, &portal, "/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert_eq!(home.header(header::CACHE_CONTROL), "public, max-age=30");
    assert!(home.header(header::CONTENT_TYPE).starts_with("text/html"));
    httpdate::parse_http_date(home.header(header::LAST_MODIFIED)).expect("HTTP date");
    let etag = home.header(header::ETAG).to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(home.text().contains("href=\"/pronote/eleve.html\""));
    assert!(
        home.text()
            .contains("<link rel=stylesheet href=/static/portail.css>")
    );

    for validator in [etag.clone(), format!("W/{etag}"), format!("\"x\", {etag}")] {
        let req = request(&portal, Method::GET, "/").header(header::IF_NONE_MATCH, validator);
        let revalidated = send(&client, req, "").await;
        assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
        assert!(revalidated.body.is_empty());
        assert_eq!(revalidated.header(header::ETAG), etag);
        assert_eq!(
            revalidated.header(header::CACHE_CONTROL),
            "public, max-age=30"
        );
    }

    let req = request(&portal, Method::GET, "/").header(header::IF_NONE_MATCH, "\"périmé\"");
    assert_eq!(send(&client, req, "").await.status, StatusCode::OK);

    let req = request(&portal, Method::GET, "/").header(
        header::IF_MODIFIED_SINCE,
        home.header(header::LAST_MODIFIED),
    );
    assert_eq!(
        send(&client, req, "").await.status,
        StatusCode::NOT_MODIFIED
    );
}

#[tokio::test]
async fn statics_and_news_carry_no_caching_headers() {
    let portal = start(fast()).await;
    let client = client();
    let cases = [
        ("/static/portail.css", "text/css"),
        ("/static/portail.js", "text/javascript"),
        ("/static/logo.svg", "image/svg+xml"),
        ("/news", "text/html"),
    ];
    for (path, content_type) in cases {
        let answer = get(&client, &portal, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert!(
            answer
                .header(header::CONTENT_TYPE)
                .starts_with(content_type),
            "{path}"
        );
        assert!(
            (200..8192).contains(&answer.body.len()),
            "{path}: {}",
            answer.body.len()
        );
        for name in [
            header::CACHE_CONTROL,
            header::EXPIRES,
            header::LAST_MODIFIED,
            header::ETAG,
        ] {
            assert!(!answer.headers.contains_key(&name), "{path} has {name}");
        }
    }
}

#[tokio::test]
async fn login_opens_a_distinct_session_each_time() {
    let portal = start(fast()).await;
    let client = client();

    let answer = get(&client, &portal, "/pronote/eleve.html").await;
    assert_eq!(answer.header(header::CACHE_CONTROL), "no-store");
    let cookie = answer.header(header::SET_COOKIE);
    let id = cookie
        .strip_prefix("JSESSIONID=")
        .and_then(|rest| rest.split(';').next())
        .expect("session id");
    assert!(answer.text().contains(&format!("élève n° {}", &id[..6])));
    assert!(answer.text().contains("href=\"/api/notes\""));

    let first = login(&client, &portal).await;
    let second = login(&client, &portal).await;
    assert_ne!(first, second);
}

#[tokio::test]
async fn per_user_api_requires_a_session_and_echoes_it() {
    let portal = start(fast()).await;
    let client = client();

    let anonymous = get(&client, &portal, "/api/notes").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.json()["code"], 401);
    assert_eq!(anonymous.header(header::CACHE_CONTROL), "private, no-store");

    let forged =
        request(&portal, Method::GET, "/api/notes").header(header::COOKIE, "JSESSIONID=DEADBEEF");
    assert_eq!(
        send(&client, forged, "").await.status,
        StatusCode::UNAUTHORIZED
    );

    let alice = login(&client, &portal).await;
    let bob = login(&client, &portal).await;
    for session in [&alice, &bob] {
        let req = request(&portal, Method::GET, "/api/notes").header(
            header::COOKIE,
            format!("theme=sombre; JSESSIONID={session}"),
        );
        let notes = send(&client, req, "").await;
        assert_eq!(notes.status, StatusCode::OK);
        assert_eq!(notes.header(header::CACHE_CONTROL), "private, no-store");
        assert!(
            notes
                .header(header::CONTENT_TYPE)
                .starts_with("application/json")
        );
        assert_eq!(notes.json()["session"], session.as_str());
        assert_eq!(notes.json()["notes"].as_array().map(Vec::len), Some(5));

        let req = request(&portal, Method::POST, "/pronote/appelfonction/3/123")
            .header(header::COOKIE, format!("JSESSIONID={session}"));
        let call = send(&client, req, "{\"nom\":1}").await;
        assert_eq!(call.status, StatusCode::OK);
        assert_eq!(call.header(header::CACHE_CONTROL), "private, no-store");
        assert_eq!(call.json()["session"], session.as_str());
        assert_eq!(call.json()["octets_recus"], 9);
        assert_eq!(call.json()["fonction"], "3/123");
    }

    let req = request(&portal, Method::POST, "/pronote/appelfonction/3/123");
    assert_eq!(
        send(&client, req, "{}").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn unknown_paths_health_and_counters() {
    let portal = start(fast()).await;
    let client = client();

    let missing = get(&client, &portal, "/inexistant").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.text().contains("Page introuvable"));

    let wrong_method = send(&client, request(&portal, Method::POST, "/news"), "").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.header(header::ALLOW), "GET, HEAD");

    let before = portal.requests();
    let health = get(&client, &portal, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.text(), "ok\n");
    assert_eq!(portal.requests(), before, "health checks are not load");

    assert_eq!(portal.requests(), 2);
    assert_eq!(portal.in_flight(), 0);
    assert_eq!(portal.peak_in_flight(), 1);
    assert_eq!(portal.overload_errors(), 0);
}

#[tokio::test]
async fn over_capacity_degrades_into_503s() {
    let portal = start(PortalOptions {
        capacity: 2,
        base_latency: Duration::from_millis(200),
    })
    .await;
    let client = client();

    let mut pending = JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        let req = request(&portal, Method::GET, "/news")
            .body(Full::default())
            .expect("request");
        pending.spawn(async move { client.request(req).await.map(|resp| resp.status()) });
    }
    // Long enough for the served and 503 requests, too short for the
    // dropped ones, which would cost 5 s each.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    let mut statuses = Vec::new();
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, pending.join_next()).await {
        statuses.push(joined.expect("request task").expect("answered"));
    }

    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let unavailable = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    assert!(ok >= 1, "{statuses:?}");
    assert!(unavailable >= 1, "{statuses:?}");
    assert_eq!(ok + unavailable, statuses.len(), "{statuses:?}");
    assert!(!pending.is_empty(), "the other half is still hanging");
    assert!(
        portal.peak_in_flight() > 2,
        "peak {}",
        portal.peak_in_flight()
    );
    assert!(portal.overload_errors() > 0);
    assert_eq!(portal.requests(), 10);
}

#[tokio::test]
async fn half_of_the_excess_is_dropped_without_a_response() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let portal = Portal::spawn_with(
        listener,
        PortalOptions {
            capacity: 1,
            base_latency: Duration::from_millis(300),
        },
        Timings {
            reject_after: Duration::from_millis(50),
            drop_after: Duration::from_millis(100),
        },
    );
    let client = client();

    let mut pending = JoinSet::new();
    for _ in 0..3 {
        let client = client.clone();
        let req = request(&portal, Method::GET, "/news")
            .body(Full::default())
            .expect("request");
        pending.spawn(async move { client.request(req).await.map(|resp| resp.status()) });
    }
    let mut ok = 0;
    let mut unavailable = 0;
    let mut dropped = 0;
    while let Some(joined) = pending.join_next().await {
        match joined.expect("request task") {
            Ok(StatusCode::OK) => ok += 1,
            Ok(StatusCode::SERVICE_UNAVAILABLE) => unavailable += 1,
            Ok(other) => panic!("unexpected {other}"),
            Err(_) => dropped += 1,
        }
    }
    assert_eq!((ok, unavailable, dropped), (1, 1, 1));
    assert_eq!(portal.overload_errors(), 2);
    assert_eq!(portal.in_flight(), 0);
}

#[tokio::test]
async fn a_vanished_client_frees_its_slot() {
    use tokio::io::AsyncWriteExt;

    let portal = start(PortalOptions {
        capacity: 4,
        base_latency: Duration::from_secs(2),
    })
    .await;
    let mut stream = TcpStream::connect(portal.addr).await.expect("connect");
    stream
        .write_all(b"GET /pronote/eleve.html HTTP/1.1\r\nHost: portail\r\n\r\n")
        .await
        .expect("write");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while portal.in_flight() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stream);

    // The login would take 6 s; the slot must come back long before that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while portal.in_flight() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "slot still held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn dropping_the_portal_stops_it() {
    let portal = start(fast()).await;
    let addr = portal.addr;
    assert_eq!(
        get(&client(), &portal, "/healthz").await.status,
        StatusCode::OK
    );
    drop(portal);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if TcpStream::connect(addr).await.is_err() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_stats_endpoint_counts_what_the_portal_lived() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let portal = Portal::spawn_with(
        listener,
        PortalOptions {
            capacity: 1,
            base_latency: Duration::from_millis(20),
        },
        Timings {
            reject_after: Duration::from_millis(300),
            drop_after: Duration::from_millis(400),
        },
    );
    let client = client();
    let mut pending = JoinSet::new();
    for _ in 0..3 {
        let client = client.clone();
        let req = request(&portal, Method::GET, "/news")
            .body(Full::default())
            .expect("request");
        pending.spawn(async move { client.request(req).await.map(|resp| resp.status()) });
    }
    while pending.join_next().await.is_some() {}

    let answer = get(&client, &portal, STATS_PATH).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.header(header::CACHE_CONTROL),
        "no-store",
        "no cache may keep the counters"
    );
    let stats: Stats = serde_json::from_slice(&answer.body).expect("the Stats shape");
    assert_eq!(stats.requests, 3, "reads of the counters are not requests");
    assert_eq!(
        (
            stats.overload_errors,
            stats.late_503s,
            stats.dropped_connections
        ),
        (2, 1, 1),
        "one of each fate past capacity 1: {stats:?}"
    );
    assert_eq!(
        (stats.capacity, stats.in_flight, stats.serving),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.peak_in_flight, 3, "{stats:?}");
    assert!(
        (0.015..0.2).contains(&stats.busy_seconds),
        "the one 20 ms page served used the capacity; the refused requests, in \
         flight for 300 and 400 ms, did not: {stats:?}"
    );
    assert_eq!(portal.stats().requests, 3, "the handle reads the same");
}

#[tokio::test(start_paused = true)]
async fn the_share_of_capacity_used_is_integrated_exactly() {
    let shared = Shared::new(
        PortalOptions {
            capacity: 4,
            base_latency: Duration::from_millis(1),
        },
        Timings::LEGACY,
    );
    let enter = |n: usize| {
        shared
            .usage
            .change(&shared, || shared.serving.fetch_add(n, Ordering::Relaxed));
    };
    enter(2);
    tokio::time::advance(Duration::from_secs(1)).await;
    shared.set_capacity(1, Duration::from_secs(1));
    tokio::time::advance(Duration::from_secs(1)).await;
    enter(3);
    tokio::time::advance(Duration::from_secs(2)).await;
    let stats = stats::snapshot(&shared);
    // 2 of 4 for 1 s, then 1 of 1 (2 served, capped) for 1 s, then 1 of 1
    // (5 served) for 2 s.
    assert_eq!(stats.busy_seconds, 2.0 + 1.0 + 2.0, "{stats:?}");
    assert_eq!(stats.capacity_seconds, 4.0 + 1.0 + 2.0, "{stats:?}");
    assert_eq!(stats.uptime_seconds, 4.0, "{stats:?}");
}

#[tokio::test]
async fn a_capacity_schedule_moves_the_capacity_seen_in_the_stats() {
    let mut portal = start(fast()).await;
    let schedule: CapacitySchedule = "0s:2,300ms:5".parse().expect("schedule");
    portal.follow(schedule);
    assert_eq!(portal.capacity(), 2, "the capacity at 0 s applies at once");
    let client = client();
    let first: Stats = get(&client, &portal, STATS_PATH).await.json_as();
    assert_eq!(first.capacity, 2, "{first:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats: Stats = get(&client, &portal, STATS_PATH).await.json_as();
        if stats.capacity == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the capacity never moved to 5: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(portal.capacity(), 5, "the handle sees it too");
}
