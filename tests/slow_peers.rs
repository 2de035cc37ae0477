//! A relayed body that stops moving is cut: an origin that goes silent
//! mid-body after `origin_timeout`, a client that stops reading after
//! `client_send_timeout`. Neither holds an origin slot (and with it
//! everybody else's access) for ever.

mod support;

use std::time::Duration;

use support::{Origin, Proxy, reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const IN_FLIGHT: &str = "digue_origin_in_flight{site=\"portal\"}";

/// The length of [`pausing_origin`]'s body.
const PAUSED_BODY: usize = 100_000;

/// An origin that sends its headers and the first bytes of a long body, then
/// keeps the connection open without a word, like a hung servlet; after
/// `pause`, when there is one, it sends the rest.
async fn pausing_origin(pause: Option<Duration>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let mut head = [0_u8; 4096];
            let _ = conn.read(&mut head).await;
            let _ = conn
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\
                      Cache-Control: no-store\r\n\r\nfirst bytes",
                )
                .await;
            match pause {
                Some(pause) => {
                    tokio::spawn(async move {
                        tokio::time::sleep(pause).await;
                        let rest = vec![b'r'; PAUSED_BODY - "first bytes".len()];
                        let _ = conn.write_all(&rest).await;
                    });
                }
                None => held.push(conn),
            }
        }
    });
    (url, task)
}

#[tokio::test]
async fn an_origin_silent_mid_body_is_cut_and_frees_its_slot() {
    let (origin, _task) = pausing_origin(None).await;
    let proxy = Proxy::start(&origin, "", "origin_timeout = \"1s\"").await;

    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(b"POST /export HTTP/1.1\r\nHost: portal\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("request written");
    let mut got = Vec::new();
    let read = timeout(Duration::from_secs(10), client.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        read.is_ok(),
        "the connection is closed instead of hanging; got so far: {text}"
    );
    assert!(text.starts_with("HTTP/1.1 200"), "headers relayed: {text}");
    assert!(
        text.ends_with("first bytes"),
        "the body was cut short, not padded or completed: {text}"
    );
    // The origin slot is free again.
    proxy
        .wait_metric(IN_FLIGHT, |n| n == 0.0, Duration::from_secs(2))
        .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_slot_after_client_send_timeout_not_origin_timeout() {
    // Far more than loopback socket buffers hold, so the relay must stall.
    let big = "x".repeat(64 << 20);
    let origin = Origin::start(move |seen| match seen.target.as_str() {
        "/export" => reply(200, &[("cache-control", "no-store")], &big),
        _ => reply(200, &[], "home"),
    })
    .await;
    let site = "origin_timeout = \"60s\"\nclient_send_timeout = \"1s\"";
    let proxy = Proxy::start(&origin.url(), "", site).await;

    let mut idle = TcpStream::connect(proxy.addr).await.expect("connect");
    idle.write_all(b"GET /export HTTP/1.1\r\nHost: portal\r\n\r\n")
        .await
        .expect("request written");
    proxy
        .wait_metric(IN_FLIGHT, |n| n == 1.0, Duration::from_secs(5))
        .await;
    // Reading nothing: a minute of origin_timeout would hold the slot that
    // long; the client's own timeout frees it within seconds.
    proxy
        .wait_metric(IN_FLIGHT, |n| n == 0.0, Duration::from_secs(8))
        .await;
    let after = support::get(&proxy.url("/"), &[]).await;
    assert_eq!(after.status, 200, "the proxy keeps serving others");
    drop(idle);
}

#[tokio::test]
async fn an_origin_thinking_mid_body_is_waited_for_up_to_origin_timeout_not_client_send_timeout() {
    let (origin, _task) = pausing_origin(Some(Duration::from_secs(3))).await;
    let site = "origin_timeout = \"10s\"\nclient_send_timeout = \"1s\"";
    let proxy = Proxy::start(&origin, "", site).await;

    let got = support::get(&proxy.url("/report"), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body.len(),
        PAUSED_BODY,
        "the whole body, though the origin paused three times client_send_timeout"
    );
}
