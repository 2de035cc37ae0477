//! The cache by the letter of RFC 9111 and RFC 9213, over real sockets:
//! invalidation after unsafe methods, targeted cache control, and the
//! strict reading of the origin's caching fields, with exact header bytes.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use http::Method;
use support::{Origin, Proxy, RawOrigin, get, reply, request, send};

/// No stale windows: what is served is what the RFC allows, nothing more.
const STRICT: &str = "[site.cache]\nstale_while_revalidate = \"0s\"\nstale_if_error = \"0s\"\n";

/// A portal whose GETs are `v1`, `v2`... with `max-age=600`, and whose
/// unsafe requests answer what `unsafe_reply` says; GETs answer 503 once
/// `failing` is set.
async fn portal(
    unsafe_reply: impl Fn(&str) -> (u16, Vec<(&'static str, &'static str)>) + Send + Sync + 'static,
) -> (Origin, Arc<AtomicBool>) {
    let version = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let flag = failing.clone();
    let origin = Origin::start(move |seen| {
        if seen.method != Method::GET {
            let (status, headers) = unsafe_reply(&seen.target);
            return reply(status, &headers, "ok");
        }
        if flag.load(Ordering::SeqCst) {
            return reply(503, &[], "en panne");
        }
        let v = version.fetch_add(1, Ordering::SeqCst) + 1;
        reply(200, &[("cache-control", "max-age=600")], &format!("v{v}"))
    })
    .await;
    (origin, failing)
}

async fn call(proxy: &Proxy, method: Method, target: &str) -> support::Got {
    send(request(method, &proxy.url(target), &[], "titre=DM")).await
}

#[tokio::test]
async fn a_post_makes_the_reload_wait_for_the_origin() {
    let (origin, _) = portal(|_| (200, vec![])).await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(get(&proxy.url("/cahier"), &[]).await.text(), "v1");
    assert_eq!(get(&proxy.url("/cahier"), &[]).await.text(), "v1");

    let posted = call(&proxy, Method::POST, "/cahier").await;
    assert_eq!(posted.status, 200);
    assert_eq!(
        posted.cache_status(),
        "digue; fwd=method; fwd-status=200; detail=invalidated"
    );
    let reload = get(&proxy.url("/cahier"), &[]).await;
    assert_eq!(reload.text(), "v2", "{}", reload.cache_status());
    assert!(
        reload.cache_status().contains("stored"),
        "{}",
        reload.cache_status()
    );
    assert_eq!(get(&proxy.url("/cahier"), &[]).await.text(), "v2");
}

#[tokio::test]
async fn put_delete_patch_and_unknown_methods_invalidate_too() {
    let (origin, _) = portal(|_| (204, vec![])).await;
    // Even with a stale window: an invalidated copy is never served while
    // it is refetched.
    let proxy = Proxy::start(&origin.url(), "", "").await;
    let mut expected = 1;
    assert_eq!(get(&proxy.url("/notes"), &[]).await.text(), "v1");
    for method in ["PUT", "DELETE", "PATCH", "REINDEX"] {
        let method = Method::from_bytes(method.as_bytes()).expect("token");
        let answer = call(&proxy, method.clone(), "/notes").await;
        assert!(
            answer.cache_status().contains("detail=invalidated"),
            "{method}: {}",
            answer.cache_status()
        );
        expected += 1;
        let reload = get(&proxy.url("/notes"), &[]).await;
        assert_eq!(reload.text(), format!("v{expected}"), "after {method}");
    }
}

#[tokio::test]
async fn the_same_host_location_and_content_location_are_invalidated_not_another_host() {
    let (origin, _) = portal(|_| {
        (
            303,
            vec![
                ("location", "/cahier/liste"),
                ("content-location", "http://ailleurs.example/autre"),
            ],
        )
    })
    .await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(get(&proxy.url("/cahier/liste"), &[]).await.text(), "v1");
    assert_eq!(get(&proxy.url("/autre"), &[]).await.text(), "v2");

    let posted = call(&proxy, Method::POST, "/cahier/nouveau").await;
    assert_eq!(posted.status, 303);
    assert_eq!(get(&proxy.url("/cahier/liste"), &[]).await.text(), "v3");
    let other = get(&proxy.url("/autre"), &[]).await;
    assert_eq!(
        other.text(),
        "v2",
        "another host's URI is never invalidated"
    );
    assert!(
        other.cache_status().contains("hit"),
        "{}",
        other.cache_status()
    );
}

#[tokio::test]
async fn an_error_answer_to_a_post_invalidates_nothing() {
    let (origin, _) = portal(|_| (403, vec![])).await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(get(&proxy.url("/cahier"), &[]).await.text(), "v1");
    let refused = call(&proxy, Method::POST, "/cahier").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.cache_status(), "digue; fwd=method; fwd-status=403");
    let again = get(&proxy.url("/cahier"), &[]).await;
    assert_eq!(again.text(), "v1");
    assert!(
        again.cache_status().contains("hit"),
        "{}",
        again.cache_status()
    );
}

#[tokio::test]
async fn an_invalidated_copy_still_covers_a_failing_origin() {
    let (origin, failing) = portal(|_| (200, vec![])).await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.cache]\nstale_while_revalidate = \"0s\"\nstale_if_error = \"1h\"\n",
    )
    .await;
    assert_eq!(get(&proxy.url("/cahier"), &[]).await.text(), "v1");
    call(&proxy, Method::POST, "/cahier").await;
    failing.store(true, Ordering::SeqCst);
    let saved = get(&proxy.url("/cahier"), &[]).await;
    assert_eq!((saved.status.as_u16(), saved.text().as_str()), (200, "v1"));
    assert!(
        saved.cache_status().contains("fwd=stale"),
        "{}",
        saved.cache_status()
    );
}

/// A raw origin answering `200 v1` with these exact header lines (CRLF
/// separated, no trailing CRLF), counting requests.
async fn raw_origin(lines: &'static str) -> RawOrigin {
    RawOrigin::answering(move |_, _| {
        format!("HTTP/1.1 200 OK\r\n{lines}\r\ncontent-length: 2\r\n\r\nv1").into_bytes()
    })
    .await
}

/// How many of two GETs of `/page` reached the origin: 1 when the first
/// answer was stored and fresh.
async fn fetches_for_two_gets(origin: &RawOrigin, proxy: &Proxy) -> usize {
    for _ in 0..2 {
        let got = get(&proxy.url("/page"), &[]).await;
        assert_eq!(got.text(), "v1");
    }
    origin.targets().len()
}

#[tokio::test]
async fn an_age_that_is_not_one_non_negative_integer_makes_the_response_stale() {
    for lines in [
        "Cache-Control: max-age=60\r\nAge: old, 0",
        "Cache-Control: max-age=60\r\nAge: -5",
        "Cache-Control: max-age=60\r\nAge: 1\r\nage: 1",
    ] {
        let origin = raw_origin(lines).await;
        let proxy = Proxy::start(&origin.url(), "", STRICT).await;
        assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 2, "{lines:?}");
    }
    let origin = raw_origin("Cache-Control: max-age=60\r\nAGE:  7 ").await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 1);
}

#[tokio::test]
async fn an_expires_outside_rfc_9110_is_already_expired() {
    let tomorrow = httpdate::fmt_http_date(digue::clock::wall() + Duration::from_secs(86_400));
    let spaced = tomorrow.replacen(", ", ",  ", 1);
    let offset = tomorrow.replace(" GMT", " +0000");
    for expires in [spaced, offset] {
        let lines: &'static str = Box::leak(format!("Expires: {expires}").into_boxed_str());
        let origin = raw_origin(lines).await;
        let proxy = Proxy::start(&origin.url(), "", STRICT).await;
        assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 2, "{lines:?}");
    }
    let lines: &'static str = Box::leak(format!("expires: {tomorrow}").into_boxed_str());
    let origin = raw_origin(lines).await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 1, "{lines:?}");
}

#[tokio::test]
async fn max_age_inside_a_quoted_string_is_not_a_directive() {
    let origin = raw_origin("Cache-Control: ext=\"a, max-age=600\"").await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 2);
}

#[tokio::test]
async fn repeated_cache_control_lines_are_one_list_whatever_their_case() {
    let origin = raw_origin("CACHE-CONTROL: Public\r\ncache-control:  MAX-AGE=60 ").await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 1);

    let origin = raw_origin("Cache-Control: max-age=60\r\ncache-control: Private").await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 2);
}

#[tokio::test]
async fn digue_cache_control_wins_over_the_others_and_never_goes_downstream() {
    let origin = raw_origin(
        "Cache-Control: no-store\r\nCDN-Cache-Control: max-age=5\r\n\
         digue-cache-control:  MAX-AGE=60",
    )
    .await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    let first = get(&proxy.url("/page"), &[]).await;
    proxy.advance(Duration::from_secs(30));
    let second = get(&proxy.url("/page"), &[]).await;
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    assert_eq!(origin.targets().len(), 1);
    for got in [&first, &second] {
        assert_eq!(got.header("digue-cache-control"), None);
        assert_eq!(got.header("cdn-cache-control"), Some("max-age=5"));
        assert_eq!(got.header("cache-control"), Some("no-store"));
    }
    proxy.advance(Duration::from_secs(31));
    get(&proxy.url("/page"), &[]).await;
    assert_eq!(origin.targets().len(), 2, "60 s, not 5 s nor never");
}

#[tokio::test]
async fn cdn_cache_control_applies_and_is_stripped_when_the_site_says_so() {
    let origin = raw_origin("Cache-Control: private\r\nCDN-Cache-Control: max-age=60").await;
    let proxy = Proxy::start(
        &origin.url(),
        "",
        "[site.cache]\nstale_while_revalidate = \"0s\"\nstale_if_error = \"0s\"\n\
         strip_cdn_cache_control = true\n",
    )
    .await;
    assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 1);
    let got = get(&proxy.url("/page"), &[]).await;
    assert_eq!(got.header("cdn-cache-control"), None);
    assert_eq!(got.header("cache-control"), Some("private"));

    let origin = raw_origin("Cache-Control: max-age=60\r\nCDN-Cache-Control: no-store").await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(fetches_for_two_gets(&origin, &proxy).await, 2);
}

async fn ranged(proxy: &Proxy, headers: &[(&str, &str)]) -> support::Got {
    get(&proxy.url("/devoir.pdf"), headers).await
}

#[tokio::test]
async fn a_range_of_a_stored_response_is_cut_from_the_cache() {
    let origin = Origin::fixed(
        &[("cache-control", "max-age=600"), ("etag", "\"v1\"")],
        "0123456789",
    )
    .await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    assert_eq!(ranged(&proxy, &[]).await.text(), "0123456789");

    let part = ranged(&proxy, &[("range", "bytes=2-4")]).await;
    assert_eq!((part.status.as_u16(), part.text().as_str()), (206, "234"));
    assert_eq!(part.header("content-range"), Some("bytes 2-4/10"));
    assert_eq!(part.header("content-length"), Some("3"));
    assert!(
        part.cache_status().contains("detail=range-hit"),
        "{}",
        part.cache_status()
    );
    let tail = ranged(&proxy, &[("range", "Bytes = -3"), ("if-range", "\"v1\"")]).await;
    assert_eq!((tail.status.as_u16(), tail.text().as_str()), (206, "789"));

    let unchanged = ranged(
        &proxy,
        &[("range", "bytes=2-4"), ("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(unchanged.status, 304, "preconditions come before Range");

    let past = ranged(&proxy, &[("range", "bytes=10-")]).await;
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some("bytes */10"));

    for headers in [
        vec![("range", "bytes=0-1, 4-5")],
        vec![("range", "bytes=0-1"), ("if-range", "\"v2\"")],
        vec![("range", "bytes=0-1"), ("if-range", "W/\"v1\"")],
    ] {
        let whole = ranged(&proxy, &headers).await;
        assert_eq!(
            (whole.status.as_u16(), whole.text().as_str()),
            (200, "0123456789"),
            "{headers:?}"
        );
    }
    assert_eq!(
        origin.count("/devoir.pdf"),
        1,
        "every answer came from the cache"
    );
}

#[tokio::test]
async fn a_range_for_an_uncached_object_goes_to_the_origin_and_stores_nothing() {
    let origin = Origin::fixed(&[("cache-control", "max-age=600")], "0123456789").await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    let first = ranged(&proxy, &[("range", "bytes=0-1")]).await;
    assert_eq!(
        first.cache_status(),
        "digue; fwd=bypass; detail=range; fwd-status=200"
    );
    assert_eq!(
        origin
            .last("/devoir.pdf")
            .and_then(|s| s.headers.get("range").cloned()),
        Some(http::HeaderValue::from_static("bytes=0-1"))
    );
    let plain = ranged(&proxy, &[]).await;
    assert!(
        plain.cache_status().contains("fwd=uri-miss"),
        "{}",
        plain.cache_status()
    );
    assert_eq!(origin.count("/devoir.pdf"), 2);
}

#[tokio::test]
async fn an_error_with_a_long_max_age_is_kept_only_max_error_ttl() {
    let origin_404 =
        Origin::start(|_| reply(404, &[("cache-control", "max-age=3600")], "introuvable")).await;
    let proxy = Proxy::start(&origin_404.url(), "", STRICT).await;
    let first = get(&proxy.url("/absent"), &[]).await;
    assert_eq!(first.status, 404);
    let again = get(&proxy.url("/absent"), &[]).await;
    assert!(
        again.cache_status().starts_with("digue; hit; ttl="),
        "{}",
        again.cache_status()
    );
    proxy.advance(Duration::from_secs(6));
    get(&proxy.url("/absent"), &[]).await;
    assert_eq!(
        origin_404.count("/absent"),
        2,
        "refetched after max_error_ttl (5s)"
    );
}

#[tokio::test]
async fn an_early_hints_interim_response_is_never_stored_nor_breaks_the_answer() {
    let origin = RawOrigin::answering(|_, _| {
        b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n\
          HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: 2\r\n\r\nv1"
            .to_vec()
    })
    .await;
    let proxy = Proxy::start(&origin.url(), "", STRICT).await;
    for _ in 0..2 {
        let got = get(&proxy.url("/page"), &[]).await;
        assert_eq!((got.status.as_u16(), got.text().as_str()), (200, "v1"));
        assert_eq!(
            got.header("link"),
            None,
            "the hints are not the final answer's"
        );
    }
    assert_eq!(
        origin.targets().len(),
        1,
        "the final 200 was stored, no 1xx"
    );
}
