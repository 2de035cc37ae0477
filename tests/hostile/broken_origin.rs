//! A broken origin: answers longer than they say, keep-alive connections
//! closed under a request. Whatever the origin does to one connection, the
//! next request goes out clean and the user gets the page. See
//! `tests/hostile.rs`.

use crate::support::{Digue, Message, RawOrigin, exchange, get};

/// The page every answer carries, `Content-Length: 5`.
const PAGE: &[u8] = b"HTTP/1.1 200 OK\r\ncache-control: no-store\r\ncontent-length: 5\r\n\r\nhello";

/// The bytes an overrunning origin leaves after its body.
const STRAY: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

#[tokio::test]
async fn bytes_past_an_origin_s_content_length_never_reach_the_next_request() {
    // The first answer on each connection overruns by 26 bytes, written
    // with the page: a connection reused after it would read them as the
    // next answer.
    let origin = RawOrigin::answering(|_: &Message, nth| {
        let mut bytes = PAGE.to_vec();
        if nth == 0 {
            bytes.extend_from_slice(STRAY);
        }
        bytes
    })
    .await;
    let proxy = Digue::new(&origin.url()).start().await;
    for i in 0..4 {
        let got = get(&format!("http://{}/page/{i}", proxy.addr), &[]).await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
        assert_eq!(got.text(), "hello", "request {i} gets the page alone");
    }
    let post = exchange(
        proxy.addr,
        b"POST /form HTTP/1.1\r\nHost: portal\r\nContent-Length: 2\r\n\r\nok",
        1,
    )
    .await;
    assert_eq!(post.status(), 200, "a POST after them too: {}", post.raw);
    assert_eq!(post.responses[0].text(), "hello");
    for c in origin.connections() {
        assert!(
            c.requests.len() <= 1,
            "no connection is used again after an overrun: {:?}",
            c.requests
                .iter()
                .map(Message::start_line)
                .collect::<Vec<_>>()
        );
    }
    proxy.shutdown().await;
}

/// Sends GETs through digue to an origin whose connections each answer
/// once, then meet the next request with `second` (nothing: closed):
/// every GET gets the page, the second try on a fresh connection.
async fn every_get_is_served_when_reused_connections_answer(second: &'static [u8]) {
    let origin = RawOrigin::answering(move |_: &Message, nth| match nth {
        0 => PAGE.to_vec(),
        _ => second.to_vec(),
    })
    .await;
    let proxy = Digue::new(&origin.url()).start().await;
    for i in 0..4 {
        let got = get(&format!("http://{}/page/{i}", proxy.addr), &[]).await;
        assert_eq!(got.status, 200, "request {i}: {}", got.text());
        assert_eq!(got.text(), "hello", "request {i}");
    }
    assert!(
        proxy
            .metric("digue_origin_retries_total{site=\"portal\"}")
            .await
            >= 1.0,
        "the second tries are counted"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_get_meeting_the_late_tail_of_an_overrun_answer_is_sent_again() {
    // The 26 bytes past the first answer's length land only as the next
    // request goes out on that connection, and read as its answer.
    every_get_is_served_when_reused_connections_answer(STRAY).await;
}

#[tokio::test]
async fn a_get_on_a_keep_alive_connection_the_origin_closes_is_sent_again() {
    // The race every pooled proxy meets when an origin's keep-alive timer
    // fires as a request goes out: closed without a byte.
    every_get_is_served_when_reused_connections_answer(b"").await;
}
