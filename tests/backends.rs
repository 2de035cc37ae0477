//! Several backends behind one site: least-busy balancing, sessions kept
//! on the backend that holds them, a dead backend ejected with no error
//! seen by clients, rejoining through the health check, draining.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use http::Method;
use support::{Digue, Got, Origin, Proxy, get, new_cookie, reply};

/// A backend answering its own name, never storable; `/login` starts a
/// session there (`JSESSIONID=<name>-<n>`).
async fn backend(name: &'static str) -> Origin {
    let logins = Arc::new(AtomicUsize::new(0));
    Origin::start(move |seen| {
        if seen.target == "/login" {
            let n = logins.fetch_add(1, Ordering::SeqCst);
            let cookie = format!("JSESSIONID={name}-{n}; Path=/; HttpOnly");
            reply(
                200,
                &[("cache-control", "no-store"), ("set-cookie", &cookie)],
                name,
            )
        } else if seen.target == "/ping" {
            reply(200, &[], "pong")
        } else {
            reply(200, &[("cache-control", "no-store")], name)
        }
    })
    .await
}

/// digue with one site `portal` in front of `backends`, with more keys.
async fn proxy(backends: &[&Origin], keys: &str) -> Proxy {
    let list: Vec<String> = backends.iter().map(|b| format!("{:?}", b.url())).collect();
    Digue::without_site()
        .admin()
        .sites(&format!(
            "[[site]]\nname = \"portal\"\nhosts = [\"*\"]\norigin = [{}]\n{keys}\n",
            list.join(", ")
        ))
        .start()
        .await
}

/// The `Cookie` header a browser would send after `got`.
fn cookies_after(got: &Got) -> String {
    let session = new_cookie(got, "JSESSIONID").expect("the login sets a session");
    let home = new_cookie(got, "digue_backend").expect("digue names the session's backend");
    format!("JSESSIONID={session}; digue_backend={home}")
}

#[tokio::test]
async fn a_request_goes_to_the_least_busy_backend_not_to_the_next_in_turn() {
    let slow = backend("slow").await;
    let quick = backend("quick").await;
    let proxy = proxy(&[&slow, &quick], "origin_queue_timeout = \"10s\"").await;
    slow.hold();
    let mut waiting = Vec::new();
    for i in 0..10 {
        // Distinct pages: one page would be fetched once for all.
        let url = proxy.url(&format!("/page/{i}"));
        waiting.push(tokio::spawn(async move { get(&url, &[]).await }));
        // Each request is balanced once the previous one is in flight.
        support::wait_until(
            "the request reaches a backend",
            Duration::from_secs(5),
            async || slow.total() + quick.total() >= waiting.len(),
        )
        .await;
    }
    assert!(
        slow.total() <= 1,
        "a held backend gets no more requests once busy: {} of 10 (round-robin would give 5)",
        slow.total()
    );
    slow.release();
    for w in waiting {
        assert_eq!(w.await.expect("joined").status, 200);
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn each_session_stays_on_one_backend_across_its_requests() {
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let proxy = proxy(&backends.iter().collect::<Vec<_>>(), "").await;
    let url = proxy.url("/notes");
    let sessions = (0..50).map(|s| {
        let url = url.clone();
        async move {
            let cookie = format!("PHPSESSID=session-{s}");
            let mut answered = Vec::new();
            for _ in 0..20 {
                let got = get(&url, &[("cookie", &cookie)]).await;
                assert_eq!(got.status, 200);
                answered.push(got.text());
            }
            answered
        }
    });
    let mut homes = Vec::new();
    for (s, answered) in join_all(sessions).await.into_iter().enumerate() {
        assert!(
            answered.iter().all(|a| *a == answered[0]),
            "session {s} stays on one backend: {answered:?}"
        );
        homes.push(answered[0].clone());
    }
    for b in ["a", "b", "c"] {
        assert!(
            homes.iter().any(|h| h == b),
            "sessions spread over every backend: {homes:?}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_session_stays_on_the_backend_that_started_it() {
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let proxy = proxy(&backends.iter().collect::<Vec<_>>(), "").await;
    for login in 0..30 {
        let started = get(&proxy.url("/login"), &[]).await;
        let home = started.text();
        let cookie = cookies_after(&started);
        for _ in 0..5 {
            let got = get(&proxy.url("/notes"), &[("cookie", &cookie)]).await;
            assert_eq!(
                got.text(),
                home,
                "login {login}: the session's requests go where it started ({cookie})"
            );
        }
    }
    for b in &backends {
        assert!(
            b.seen().iter().all(|s| s
                .headers
                .get_all("cookie")
                .iter()
                .all(|c| { !c.to_str().unwrap_or_default().contains("digue_backend") })),
            "digue's cookie never reaches a backend"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_dies_mid_surge_costs_no_client_an_error_and_rejoins_when_healthy() {
    let (a, mut b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let proxy = proxy(
        &[&a, &b, &c],
        "eject_after = 2\nhealth_check = { path = \"/ping\", interval = \"500ms\", timeout = \"400ms\" }",
    )
    .await;
    let b_name = b.url();
    let clients = |round: usize| {
        let proxy = &proxy;
        join_all((0..30).map(move |s| async move {
            let cookie = format!("JSESSIONID=pupil-{s}");
            let mut statuses = Vec::new();
            for i in 0..5 {
                let got = get(
                    &proxy.url(&format!("/r{round}/{i}")),
                    &[("cookie", &cookie)],
                )
                .await;
                statuses.push((got.status.as_u16(), got.text()));
            }
            statuses
        }))
    };
    let before = clients(0).await;
    assert!(
        before.iter().flatten().any(|(_, who)| who == "b"),
        "b had sessions before it died"
    );
    b.kill();
    let during = clients(1).await;
    let errors: Vec<_> = during.iter().flatten().filter(|(s, _)| *s != 200).collect();
    assert!(errors.is_empty(), "no client sees an error: {errors:?}");
    assert!(
        during.iter().flatten().all(|(_, who)| who != "b"),
        "the dead backend answers nothing"
    );
    let backend_label = format!("backend=\"{b_name}\",site=\"portal\"");
    assert_eq!(
        proxy
            .metric(&format!("digue_backend_healthy{{{backend_label}}}"))
            .await,
        0.0,
        "the dead backend is out"
    );
    assert!(
        proxy
            .metric("digue_affinity_moved_total{site=\"portal\"}")
            .await
            > 0.0,
        "its sessions moved, and were counted"
    );
    b.revive().await;
    proxy
        .wait_metric(
            &format!("digue_backend_healthy{{{backend_label}}}"),
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .await;
    let after = clients(2).await;
    assert!(
        after.iter().flatten().any(|(_, who)| who == "b"),
        "back through the health check, it takes its sessions again"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_draining_backend_gets_no_new_session_but_keeps_its_own_until_set_down() {
    let (a, b) = (backend("a").await, backend("b").await);
    let proxy = proxy(&[&a, &b], "").await;
    // A session on `a`.
    let mut on_a = None;
    for _ in 0..50 {
        let got = get(&proxy.url("/login"), &[]).await;
        if got.text() == "a" {
            on_a = Some(cookies_after(&got));
            break;
        }
    }
    let on_a = on_a.expect("one login of fifty lands on a");
    let drained = proxy
        .admin_call(
            Method::PATCH,
            "/admin/sites/portal/backends",
            &format!(r#"{{"backend": "{}", "state": "drain"}}"#, a.url()),
        )
        .await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    let shown = &drained.json()["origin"]["backends"];
    assert_eq!(shown[0]["state"], "drain", "{shown}");
    assert_eq!(shown[1]["state"], "active", "{shown}");
    for _ in 0..20 {
        assert_eq!(
            get(&proxy.url("/login"), &[]).await.text(),
            "b",
            "no new session on a draining backend"
        );
        assert_eq!(
            get(&proxy.url("/notes"), &[("cookie", &on_a)]).await.text(),
            "a",
            "its own sessions stay"
        );
    }
    let down = proxy
        .admin_call(
            Method::PATCH,
            "/admin/sites/portal/backends",
            &format!(r#"{{"backend": "{}", "state": "down"}}"#, a.url()),
        )
        .await;
    assert_eq!(down.status, 200, "{}", down.text());
    let moved = get(&proxy.url("/notes"), &[("cookie", &on_a)]).await;
    assert_eq!(moved.text(), "b", "set down, its sessions move");
    assert!(
        new_cookie(&moved, "digue_backend").is_some(),
        "and are told their new home"
    );
    assert_eq!(
        proxy
            .metric("digue_affinity_moved_total{site=\"portal\"}")
            .await,
        1.0
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_backend_patch_naming_no_backend_or_state_is_refused_clearly() {
    let (a, b) = (backend("a").await, backend("b").await);
    let proxy = proxy(&[&a, &b], "").await;
    for (body, status, says) in [
        (
            r#"{"backend": "http://10.9.9.9:80", "state": "drain"}"#,
            404,
            "no backend",
        ),
        (
            &format!(r#"{{"backend": "{}", "state": "asleep"}}"#, a.url()) as &str,
            400,
            "",
        ),
        (r#"{"state": "drain"}"#, 400, ""),
    ] {
        let got = proxy
            .admin_call(Method::PATCH, "/admin/sites/portal/backends", body)
            .await;
        assert_eq!(got.status, status, "{body}: {}", got.text());
        assert!(got.text().contains(says), "{body}: {}", got.text());
    }
    let got = proxy
        .admin_call(
            Method::PATCH,
            "/admin/sites/nowhere/backends",
            &format!(r#"{{"backend": "{}", "state": "drain"}}"#, a.url()),
        )
        .await;
    assert_eq!(got.status, 404, "{}", got.text());
    proxy.shutdown().await;
}
