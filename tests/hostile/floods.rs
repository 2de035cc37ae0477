//! Floods: more connections, streams, frames, URLs or bytes than any honest
//! peer sends, from one attacker or one broken origin. Each flood is bounded
//! to a few seconds; a normal request is answered during and after it, and
//! what digue holds for it (open connections, origin slots, cache bytes)
//! goes back to where it was.
//!
//! Memory is judged by digue's own gauges and by what the flood managed to
//! push into digue, not by the process's RSS: the tests of this binary run
//! in parallel in one process, so its RSS measures all of them at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use digue::cache::key::CacheKey;

use crate::support::{Digue, Origin, Proxy, get, wait_until};

const OPEN: &str = "digue_connections_open";
const IN_FLIGHT: &str = "digue_origin_in_flight{site=\"portal\"}";
const CACHE_BYTES: &str = "digue_cache_bytes";

/// A normal visitor over HTTP/1.1 gets its page.
async fn assert_served(proxy: &Proxy, target: &str, when: &str) {
    let got = get(&proxy.url(target), &[]).await;
    assert_eq!(
        got.status,
        200,
        "a normal request for {target} is answered {when}: {}",
        got.text()
    );
}

/// A normal visitor over h2c gets its page.
async fn assert_served_h2(proxy: &Proxy, target: &str, when: &str) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::get(proxy.url(target))
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let res = timeout(Duration::from_secs(5), client.request(req))
        .await
        .unwrap_or_else(|_| {
            panic!("a normal h2c request for {target} is answered {when} within 5 s")
        })
        .unwrap_or_else(|e| panic!("a normal h2c request for {target} is answered {when}: {e}"));
    assert_eq!(
        res.status(),
        200,
        "a normal h2c request for {target} is answered {when}"
    );
}

/// Waits until digue holds no connection but those of the test's own
/// clients, whose pools close with them.
async fn assert_connections_back_to_zero(proxy: &Proxy, limit: Duration) {
    proxy.wait_metric(OPEN, |n| n == 0.0, limit).await;
}

/// HTTP/2 written by hand, frame by frame (RFC 9113 §4.1): what an attacker
/// writes is not what a well-behaved client library lets one write.
mod h2 {
    use super::*;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const ACK: u8 = 0x1;
    /// `SETTINGS_INITIAL_WINDOW_SIZE`.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// `CANCEL`, what a browser sends when the user navigates away.
    pub const CANCEL: u32 = 0x8;
    /// `ENHANCE_YOUR_CALM`, the error code of a peer refusing abuse.
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// One frame: the 9-byte header, then the payload.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("a test frame is small");
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let payload: Vec<u8> = pairs
            .iter()
            .flat_map(|(id, value)| [&id.to_be_bytes()[..], &value.to_be_bytes()[..]].concat())
            .collect();
        frame(SETTINGS, 0, 0, &payload)
    }

    /// The header block of `GET path` for authority `portal`, in HPACK
    /// static-table references and literals that touch no dynamic table
    /// (RFC 7541 §6.1, §6.2.2).
    pub fn get_block(path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
        literal(&mut block, 4, path); // :path
        literal(&mut block, 1, "portal"); // :authority
        block
    }

    /// A literal field without indexing whose name is static entry `name`.
    fn literal(block: &mut Vec<u8>, name: u8, value: &str) {
        let len = u8::try_from(value.len()).expect("short value");
        assert!(name < 15 && len < 127, "one-byte prefixes only");
        block.push(name);
        block.push(len);
        block.extend_from_slice(value.as_bytes());
    }

    /// A fresh header field `x-flood-N: ...` of about 100 bytes, as an
    /// endless CONTINUATION stream would carry.
    pub fn junk_field(n: usize) -> Vec<u8> {
        let name = format!("x-flood-{n}");
        let value = "v".repeat(80);
        let mut field = vec![0x00, u8::try_from(name.len()).expect("short name")];
        field.extend_from_slice(name.as_bytes());
        field.push(u8::try_from(value.len()).expect("short value"));
        field.extend_from_slice(value.as_bytes());
        field
    }

    /// Opens a connection: the preface, then these settings.
    pub async fn connect(addr: SocketAddr, settings: &[(u16, u32)]) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(self::settings(settings));
        stream.write_all(&hello).await.expect("preface written");
        stream
    }

    /// What the server sent back, as read by [`listen`].
    #[derive(Default)]
    pub struct Heard {
        /// Frames received, by type (0..=9).
        pub frames: [AtomicUsize; 10],
        /// The error code of the server's GOAWAY, plus one (0: none yet).
        goaway: AtomicU64,
        /// The server closed (or reset) the connection.
        pub closed: AtomicBool,
    }

    impl Heard {
        pub fn count(&self, kind: u8) -> usize {
            self.frames[usize::from(kind)].load(Ordering::SeqCst)
        }

        pub fn goaway(&self) -> Option<u32> {
            let code = self.goaway.load(Ordering::SeqCst);
            (code > 0).then(|| u32::try_from(code - 1).expect("a 32-bit code"))
        }

        pub fn ended(&self) -> bool {
            self.goaway().is_some() || self.closed.load(Ordering::SeqCst)
        }
    }

    /// Reads every frame the server sends, in a task, noting what came.
    pub fn listen(rd: OwnedReadHalf) -> (Arc<Heard>, JoinHandle<()>) {
        read_frames(rd, None)
    }

    /// Like [`listen`], and answers as a live peer does: every PING and
    /// SETTINGS of the server's acknowledged, nothing else ever written.
    pub fn listen_alive(rd: OwnedReadHalf, wr: OwnedWriteHalf) -> (Arc<Heard>, JoinHandle<()>) {
        read_frames(rd, Some(wr))
    }

    fn read_frames(
        mut rd: OwnedReadHalf,
        mut acks: Option<OwnedWriteHalf>,
    ) -> (Arc<Heard>, JoinHandle<()>) {
        let heard = Arc::new(Heard::default());
        let noted = heard.clone();
        let task = tokio::spawn(async move {
            let mut head = [0_u8; 9];
            loop {
                if rd.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0_u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let (kind, flags) = (head[3], head[4]);
                if let Some(count) = noted.frames.get(usize::from(kind)) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                if kind == GOAWAY && len >= 8 {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    noted.goaway.store(u64::from(code) + 1, Ordering::SeqCst);
                }
                let Some(wr) = acks.as_mut() else { continue };
                let ack = match kind {
                    PING if flags & ACK == 0 => frame(PING, ACK, 0, &payload),
                    SETTINGS if flags & ACK == 0 => frame(SETTINGS, ACK, 0, &[]),
                    _ => continue,
                };
                if wr.write_all(&ack).await.is_err() {
                    break;
                }
            }
            noted.closed.store(true, Ordering::SeqCst);
        });
        (heard, task)
    }

    /// Writes `bytes`; false once the server has closed the connection.
    pub async fn send(wr: &mut OwnedWriteHalf, bytes: &[u8]) -> bool {
        wr.write_all(bytes).await.is_ok()
    }
}

// Slowloris.

/// Opens 500 connections at once, each run by `conn` until digue closes
/// it; waits until digue holds them all, checks that a normal visitor is
/// served meanwhile, and returns how long the last one lived from then.
async fn five_hundred_at_once<F>(proxy: &Proxy, conn: fn(SocketAddr) -> F) -> Duration
where
    F: Future<Output = ()> + Send + 'static,
{
    const CONNECTIONS: usize = 500;
    let flood: Vec<_> = (0..CONNECTIONS)
        .map(|_| tokio::spawn(conn(proxy.addr)))
        .collect();
    // All open at once, though they came at once: with a listen backlog of
    // 128, the SYNs of the rest were dropped, and they came back a second
    // later or three, when the first were being cut.
    proxy
        .wait_metric(OPEN, |n| n >= CONNECTIONS as f64, Duration::from_secs(2))
        .await;
    let all_open = Instant::now();
    assert_served(proxy, "/", "while 500 connections are held open").await;
    for conn in flood {
        timeout(Duration::from_secs(10), conn)
            .await
            .expect("every connection of the flood is closed by digue within 10 s")
            .expect("flood task");
    }
    all_open.elapsed()
}

/// One slowloris connection: a request head started, then one more byte
/// every 100 ms, never finished; returns once digue has closed it.
async fn slowloris(addr: SocketAddr) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return;
    };
    let (mut rd, mut wr) = stream.into_split();
    let head = b"GET / HTTP/1.1\r\nHost: portal\r\nX-Slow: ";
    if wr.write_all(head).await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut sink = [0_u8; 1024];
    loop {
        tokio::select! {
            read = rd.read(&mut sink) => match read {
                // digue closed it (after a 408 or without a word).
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if wr.write_all(b"a").await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn five_hundred_slowloris_connections_are_cut_at_the_header_timeout_while_others_are_served()
{
    let origin = Origin::fixed(&[], "home").await;
    let proxy = Digue::new(&origin.url())
        .server("header_read_timeout = \"3s\"")
        .start()
        .await;
    let lived = five_hundred_at_once(&proxy, slowloris).await;
    assert!(
        lived < Duration::from_secs(5),
        "a head trickled byte by byte is cut at header_read_timeout (3 s), \
         not kept alive by its trickle: the last lived {lived:?} more"
    );
    assert_connections_back_to_zero(&proxy, Duration::from_secs(2)).await;
    assert_served(&proxy, "/", "after the slowloris flood").await;
    proxy.shutdown().await;
}

/// One HTTP/2 slowloris connection: the preface, then never a request,
/// only the answers a live peer owes (PING and SETTINGS acknowledgements),
/// so that keep-alive pings find it alive. (A request's HEADERS left
/// without END_HEADERS forbids even those, so pings cut it.) Returns once
/// digue has closed it.
async fn h2_slowloris(addr: SocketAddr) {
    let (rd, wr) = h2::connect(addr, &[]).await.into_split();
    let (_heard, reader) = h2::listen_alive(rd, wr);
    let _ = reader.await;
}

#[tokio::test]
async fn five_hundred_idle_http2_connections_answering_pings_are_closed_like_idle_http1_ones() {
    let origin = Origin::fixed(&[], "home").await;
    let proxy = Digue::new(&origin.url())
        .server("header_read_timeout = \"2s\"")
        .start()
        .await;
    let lived = five_hundred_at_once(&proxy, h2_slowloris).await;
    // Pinged every 4 s and answering, they would live for ever.
    assert!(
        lived < Duration::from_secs(4),
        "an HTTP/2 connection with no request in flight is closed at \
         header_read_timeout (2 s), as an idle HTTP/1.1 one is: the last lived {lived:?} more"
    );
    assert_connections_back_to_zero(&proxy, Duration::from_secs(2)).await;
    assert_served_h2(&proxy, "/", "after the HTTP/2 slowloris flood").await;
    proxy.shutdown().await;
}

// HTTP/2.

/// Runs `attack` on fresh connections, one after another, while a normal
/// visitor asks for `/` over h2c a few times; returns what each attack
/// connection reported. The flood lasts as long as the visits do.
async fn flood_while_visiting<T, A, F>(proxy: &Proxy, attack: A) -> Vec<T>
where
    T: Send + 'static,
    A: Fn(SocketAddr) -> F + Send + 'static,
    F: Future<Output = T> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, rounds, addr) = (stop.clone(), rounds.clone(), proxy.addr);
        tokio::spawn(async move {
            let mut reports = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                reports.push(attack(addr).await);
                rounds.fetch_add(1, Ordering::SeqCst);
            }
            reports
        })
    };
    wait_until(
        "the first attack connection is over",
        Duration::from_secs(5),
        async || rounds.load(Ordering::SeqCst) >= 1,
    )
    .await;
    for _ in 0..5 {
        assert_served_h2(proxy, "/", "during the flood").await;
    }
    stop.store(true, Ordering::SeqCst);
    timeout(Duration::from_secs(10), attacker)
        .await
        .expect("the last attack connection ends within 10 s")
        .expect("attack task")
}

/// How one attack connection ended.
#[derive(Debug)]
struct Ended {
    /// Streams (or frames) written before digue ended the connection.
    sent: usize,
    /// digue's GOAWAY error code, when it was read before the close.
    goaway: Option<u32>,
    /// digue ended the connection (GOAWAY or close) while the attacker kept
    /// its side open.
    by_digue: bool,
}

/// Asserts that digue ended every attack connection, and that every reason
/// it gave was ENHANCE_YOUR_CALM (a reset can overtake the GOAWAY frame).
fn assert_all_refused(what: &str, reports: &[Ended]) {
    assert!(
        !reports.is_empty(),
        "{what}: at least one attack connection"
    );
    for report in reports {
        assert!(
            report.by_digue,
            "{what}: digue ends the connection: {report:?}"
        );
        assert!(
            report
                .goaway
                .is_none_or(|code| code == h2::ENHANCE_YOUR_CALM),
            "{what}: the GOAWAY says ENHANCE_YOUR_CALM: {report:?}"
        );
    }
}

/// Streams opened and cancelled at once (CVE-2023-44487), up to 10,000 on
/// one connection, written 100 pairs at a time.
async fn rapid_reset(addr: SocketAddr) -> Ended {
    const STREAMS: usize = 10_000;
    let (rd, mut wr) = h2::connect(addr, &[]).await.into_split();
    let (heard, reader) = h2::listen(rd);
    let mut sent = 0;
    while sent < STREAMS && !heard.ended() {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let id = u32::try_from(2 * sent + 1).expect("stream ids fit");
            let block = h2::get_block(&format!("/reset/{id}"));
            let flags = h2::END_STREAM | h2::END_HEADERS;
            batch.extend(h2::frame(h2::HEADERS, flags, id, &block));
            batch.extend(h2::frame(h2::RST_STREAM, 0, id, &h2::CANCEL.to_be_bytes()));
            sent += 1;
        }
        if !h2::send(&mut wr, &batch).await {
            break;
        }
    }
    // digue's GOAWAY may come after the last streams, which the socket
    // buffers took; a server that accepted them all would stay open.
    let _ = timeout(Duration::from_secs(5), reader).await;
    Ended {
        sent,
        goaway: heard.goaway(),
        by_digue: heard.ended(),
    }
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_is_refused_with_enhance_your_calm_and_others_are_served() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url()).start().await;

    let reports = flood_while_visiting(&proxy, rapid_reset).await;
    assert_all_refused("rapid reset", &reports);
    let streams: usize = reports.iter().map(|r| r.sent).sum();
    let reached = origin.total() - origin.count("/");
    assert!(
        reached * 10 < streams,
        "cancelled streams seldom reach the origin: {reached} of {streams}"
    );
    assert_connections_back_to_zero(&proxy, Duration::from_secs(5)).await;
    assert_served_h2(&proxy, "/", "after the rapid reset flood").await;
    proxy.shutdown().await;
}

/// A header block that never ends (CVE-2024-27316): HEADERS without
/// END_HEADERS, then CONTINUATION frames of fresh fields, for at most 5 s
/// or 64 MiB.
async fn continuation_flood(addr: SocketAddr) -> Ended {
    const LIMIT: usize = 64 << 20;
    let (rd, mut wr) = h2::connect(addr, &[]).await.into_split();
    let (heard, reader) = h2::listen(rd);
    let begun = Instant::now();
    let first = h2::frame(h2::HEADERS, h2::END_STREAM, 1, &h2::get_block("/never"));
    let mut written = first.len();
    let mut open = h2::send(&mut wr, &first).await;
    let mut n = 0;
    while open && !heard.ended() && written < LIMIT && begun.elapsed() < Duration::from_secs(5) {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(h2::frame(h2::CONTINUATION, 0, 1, &h2::junk_field(n)));
            n += 1;
        }
        open = h2::send(&mut wr, &batch).await;
        written += batch.len();
    }
    let _ = timeout(Duration::from_secs(5), reader).await;
    Ended {
        sent: written,
        goaway: heard.goaway(),
        by_digue: !open || heard.ended(),
    }
}

#[tokio::test]
async fn an_endless_http2_continuation_stream_is_cut_and_others_are_served() {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url()).start().await;

    let reports = flood_while_visiting(&proxy, continuation_flood).await;
    assert_all_refused("CONTINUATION flood", &reports);
    assert_eq!(
        origin.count("/never"),
        0,
        "an unfinished header block never reaches the origin"
    );
    assert_connections_back_to_zero(&proxy, Duration::from_secs(5)).await;
    assert_served_h2(&proxy, "/", "after the CONTINUATION flood").await;
    proxy.shutdown().await;
}

/// A flood of one control frame from a client that never reads what digue
/// answers (CVE-2019-9512 for PING, CVE-2019-9515 for SETTINGS): ten
/// million frames (150 to 170 MB), written as fast as the socket takes
/// them.
async fn unread_control_flood(addr: SocketAddr, frame: Vec<u8>) -> Taken {
    const FRAMES: usize = 10_000_000;
    const BATCH: usize = 10_000;
    let stream = h2::connect(addr, &[]).await;
    // Never read: digue's answers pile up on its side, or digue waits.
    let (_rd, mut wr) = stream.into_split();
    let batch = frame.repeat(BATCH);
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = written.clone();
        tokio::spawn(async move {
            for _ in 0..FRAMES / BATCH {
                if !h2::send(&mut wr, &batch).await {
                    return;
                }
                written.fetch_add(batch.len() as u64, Ordering::SeqCst);
            }
        })
    };
    let taken = watch_progress(&written, Duration::from_secs(8)).await;
    writer.abort();
    taken
}

/// How far a flood got into digue.
#[derive(Debug)]
struct Taken {
    bytes: u64,
    /// It stopped moving for 500 ms: digue stopped reading (or closed).
    /// A server that queued its answers in memory would read on; read at
    /// full speed, digue takes about 5 MB/s of PINGs in a debug build.
    stalled: bool,
}

/// Watches `progress` until it stops moving for 500 ms, or `limit` passes.
async fn watch_progress(progress: &AtomicU64, limit: Duration) -> Taken {
    let begun = Instant::now();
    let mut last = u64::MAX;
    loop {
        let bytes = progress.load(Ordering::SeqCst);
        if bytes == last {
            return Taken {
                bytes,
                stalled: true,
            };
        }
        if begun.elapsed() > limit {
            return Taken {
                bytes,
                stalled: false,
            };
        }
        last = bytes;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs an unread control-frame flood while a normal visitor is served, and
/// checks that digue stopped taking it.
async fn assert_unread_flood_is_held_back(name: &str, frame: Vec<u8>) {
    let origin = Origin::portal().await;
    let proxy = Digue::new(&origin.url()).start().await;
    let flood = tokio::spawn(unread_control_flood(proxy.addr, frame));
    proxy
        .wait_metric(OPEN, |n| n >= 1.0, Duration::from_secs(5))
        .await;
    assert_served_h2(&proxy, "/", &format!("during the {name} flood")).await;
    let taken = timeout(Duration::from_secs(10), flood)
        .await
        .expect("the flood is over within 10 s")
        .expect("flood task");
    // Loopback buffers hold at most 32 MiB on digue's side (tcp_rmem) and
    // 4 MiB on the client's, plus the answers stuck the other way.
    assert!(
        taken.stalled && taken.bytes < 64 << 20,
        "digue stops reading a {name} flood whose answers nobody reads: {taken:?}"
    );
    assert_connections_back_to_zero(&proxy, Duration::from_secs(5)).await;
    assert_served_h2(&proxy, "/", &format!("after the {name} flood")).await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_ping_flood_whose_answers_are_never_read_is_held_back_and_others_are_served() {
    let ping = h2::frame(h2::PING, 0, 0, &[0; 8]);
    assert_unread_flood_is_held_back("PING", ping).await;
}

#[tokio::test]
async fn a_settings_flood_whose_answers_are_never_read_is_held_back_and_others_are_served() {
    let settings = h2::settings(&[(h2::INITIAL_WINDOW_SIZE, 65_535)]);
    assert_unread_flood_is_held_back("SETTINGS", settings).await;
}

// Broken origins.

/// What the broken origin does with a request for anything but `/` (which
/// gets a small page, so that a normal visitor can be told apart).
#[derive(Clone, Copy)]
enum Broken {
    /// A response head of 1 MB: a thousand 1 KB `X-Junk` lines.
    HugeHead,
    /// A response head that never ends: 1 KB `X-Junk` lines for ever.
    EndlessHead,
    /// `Transfer-Encoding: chunked`, with chunks of 16 KiB for ever, every
    /// `pace` (as fast as the socket takes them when zero).
    Endless {
        cache_control: &'static str,
        pace: Duration,
    },
}

/// An HTTP/1.1 origin written by hand, for answers no server library lets
/// one write. Counts what it wrote and the connections digue dropped.
struct BrokenOrigin {
    url: String,
    /// Body bytes written so far, on all connections.
    written: Arc<AtomicU64>,
    /// Answers cut short because digue closed the connection.
    dropped: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for BrokenOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl BrokenOrigin {
    /// Waits until digue has hung up on `n` answers; returns the bytes
    /// written by then, on all connections.
    async fn wait_hung_up(&self, n: usize) -> u64 {
        let what = format!("digue hangs up on {n} answer(s) of the broken origin");
        wait_until(&what, Duration::from_secs(5), async || {
            self.dropped.load(Ordering::SeqCst) == n
        })
        .await;
        self.written.load(Ordering::SeqCst)
    }

    async fn start(broken: Broken) -> BrokenOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let written = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicUsize::new(0));
        let (w, d) = (written.clone(), dropped.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_broken(conn, broken, w.clone(), d.clone()));
            }
        });
        BrokenOrigin {
            url,
            written,
            dropped,
            task,
        }
    }
}

/// Serves one connection of the broken origin, request after request.
async fn serve_broken(
    mut conn: TcpStream,
    broken: Broken,
    written: Arc<AtomicU64>,
    dropped: Arc<AtomicUsize>,
) {
    let mut head = Vec::new();
    loop {
        let Some(target) = read_request_head(&mut conn, &mut head).await else {
            return;
        };
        if target == "/" {
            let page =
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nCache-Control: no-store\r\n\r\nhome";
            if conn.write_all(page).await.is_err() {
                return;
            }
            continue;
        }
        let answered = match broken {
            Broken::HugeHead => {
                let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
                let junk = "j".repeat(1000);
                for n in 0..1000 {
                    answer.extend_from_slice(format!("X-Junk-{n}: {junk}\r\n").as_bytes());
                }
                answer.extend_from_slice(b"\r\nok");
                conn.write_all(&answer).await
            }
            Broken::EndlessHead => endless_head(&mut conn, &written).await,
            Broken::Endless {
                cache_control,
                pace,
            } => endless_body(&mut conn, cache_control, pace, &written).await,
        };
        if answered.is_err() {
            dropped.fetch_add(1, Ordering::SeqCst);
            return;
        }
    }
}

/// Reads one request head (digue sends no body on these tests' GETs) and
/// returns its target; `None` when the connection ends.
async fn read_request_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            let line = String::from_utf8_lossy(&head);
            return line.split(' ').nth(1).map(str::to_owned);
        }
        let mut chunk = [0_u8; 4096];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A response head that never ends; returns only when the write fails.
async fn endless_head(conn: &mut TcpStream, written: &AtomicU64) -> std::io::Result<()> {
    conn.write_all(b"HTTP/1.1 200 OK\r\n").await?;
    let line = format!("X-Junk: {}\r\n", "j".repeat(1000));
    loop {
        conn.write_all(line.as_bytes()).await?;
        written.fetch_add(line.len() as u64, Ordering::SeqCst);
    }
}

/// A chunked body that never ends; returns only when the write fails.
async fn endless_body(
    conn: &mut TcpStream,
    cache_control: &str,
    pace: Duration,
    written: &AtomicU64,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nCache-Control: {cache_control}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    let mut chunk = b"4000\r\n".to_vec();
    chunk.extend_from_slice(&[b'e'; 0x4000]);
    chunk.extend_from_slice(b"\r\n");
    loop {
        conn.write_all(&chunk).await?;
        written.fetch_add(0x4000, Ordering::SeqCst);
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
    }
}

/// Asks `target` of an origin whose head is too large, and checks digue's
/// answer is its own 502 page.
async fn assert_bad_gateway_page(proxy: &Proxy, target: &str) {
    let got = get(&proxy.url(target), &[]).await;
    assert_eq!(
        got.status,
        StatusCode::BAD_GATEWAY,
        "a head too large to read is a broken origin: {}",
        got.text()
    );
    assert!(
        got.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "digue's own page, not the origin's junk: {:?}",
        got.headers
    );
    assert!(
        got.headers
            .keys()
            .all(|name| !name.as_str().starts_with("x-junk")),
        "none of the origin's headers is relayed: {:?}",
        got.headers
    );
}

#[tokio::test]
async fn an_origin_sending_a_megabyte_of_headers_gets_a_502_page_and_the_next_request_is_served() {
    let origin = BrokenOrigin::start(Broken::HugeHead).await;
    let proxy = Digue::new(&origin.url).start().await;
    assert_bad_gateway_page(&proxy, "/huge").await;
    assert_served(&proxy, "/", "after the huge head").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_origin_sending_headers_for_ever_is_hung_up_on_with_a_502_page() {
    let origin = BrokenOrigin::start(Broken::EndlessHead).await;
    let proxy = Digue::new(&origin.url).start().await;
    assert_bad_gateway_page(&proxy, "/endless").await;
    let written = origin.wait_hung_up(1).await;
    // hyper reads at most about 400 KB of head; the rest is loopback
    // buffers, 36 MiB at most (tcp_rmem 32 MiB, tcp_wmem 4 MiB).
    assert!(
        written < 64 << 20,
        "digue stops reading a head that never ends: the origin wrote {written} bytes"
    );
    assert_served(&proxy, "/", "after the endless head").await;
    proxy.shutdown().await;
}

/// Sends `GET target` on a raw connection and reads until `enough` bytes
/// (head and body) came; returns the connection, still open, and the head.
async fn read_some(
    addr: SocketAddr,
    target: impl AsRef<str>,
    enough: usize,
) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {} HTTP/1.1\r\nHost: portal\r\n\r\n", target.as_ref());
    conn.write_all(req.as_bytes())
        .await
        .expect("request written");
    let mut got = Vec::new();
    let mut buf = vec![0_u8; 64 * 1024];
    while got.len() < enough {
        let n = timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the body keeps coming")
            .expect("read");
        assert!(n > 0, "the body keeps coming until {enough} bytes");
        got.extend_from_slice(&buf[..n]);
    }
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    (conn, String::from_utf8_lossy(&got[..end]).into_owned())
}

#[tokio::test]
async fn an_endless_body_is_relayed_never_stored_and_cut_once_its_reader_stops() {
    let origin = BrokenOrigin::start(Broken::Endless {
        cache_control: "max-age=60",
        pace: Duration::ZERO,
    })
    .await;
    let proxy = Digue::new(&origin.url)
        .table("[cache]\nmax_size = \"1MiB\"")
        .site("origin_timeout = \"1s\"")
        .start()
        .await;

    // 4 MiB read: far past the largest object the cache takes (256 KiB).
    let (reader, head) = read_some(proxy.addr, "/endless", 4 << 20).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "relayed as it streams: {head}"
    );
    // The reader stops reading and keeps its connection open.
    assert_served(&proxy, "/", "while the endless body is relayed").await;
    proxy
        .wait_metric(IN_FLIGHT, |n| n == 0.0, Duration::from_secs(10))
        .await;
    let written = origin.wait_hung_up(1).await;
    // 4 MiB read, plus what loopback buffers hold on both sides of digue:
    // 72 MiB at most (tcp_rmem 32 MiB and tcp_wmem 4 MiB, twice). Buffered
    // without bound, the origin would have written gigabytes by now.
    assert!(
        written < 128 << 20,
        "digue relays at its reader's pace, never buffering ahead: the origin wrote {written} bytes"
    );
    assert_eq!(
        proxy.metric("digue_cache_entries").await,
        0.0,
        "a body without end is never stored"
    );
    drop(reader);
    assert_connections_back_to_zero(&proxy, Duration::from_secs(5)).await;
    assert_served(&proxy, "/", "after the endless body").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_trickling_endless_body_of_a_cacheable_page_gets_a_504_page_within_origin_timeout() {
    // 80 KB/s: never the 256 KiB that would make it too big to store, so
    // digue waits for its end to store it, origin_timeout at most.
    let origin = BrokenOrigin::start(Broken::Endless {
        cache_control: "max-age=60",
        pace: Duration::from_millis(200),
    })
    .await;
    let proxy = Digue::new(&origin.url)
        .table("[cache]\nmax_size = \"1MiB\"")
        .site("origin_timeout = \"1s\"")
        .start()
        .await;
    let begun = Instant::now();
    let got = get(&proxy.url("/trickle"), &[]).await;
    let took = begun.elapsed();
    assert_eq!(
        got.status,
        StatusCode::GATEWAY_TIMEOUT,
        "a body that never ends is a timeout: {}",
        got.text()
    );
    assert!(
        took < Duration::from_secs(3),
        "answered at origin_timeout (1 s), not later: {took:?}"
    );
    origin.wait_hung_up(1).await;
    proxy
        .wait_metric(IN_FLIGHT, |n| n == 0.0, Duration::from_secs(2))
        .await;
    assert_served(&proxy, "/", "after the trickling body").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_http2_client_that_never_opens_its_window_holds_no_origin_slot_past_origin_timeout() {
    const STREAMS: u32 = 8;
    let origin = BrokenOrigin::start(Broken::Endless {
        cache_control: "no-store",
        pace: Duration::ZERO,
    })
    .await;
    let proxy = Digue::new(&origin.url)
        .site("origin_timeout = \"1s\"")
        .start()
        .await;
    // A window of 0: digue may send headers, never a byte of body.
    let (rd, mut wr) = h2::connect(proxy.addr, &[(h2::INITIAL_WINDOW_SIZE, 0)])
        .await
        .into_split();
    let (heard, _reader) = h2::listen(rd);
    let mut asks = Vec::new();
    for n in 0..STREAMS {
        let block = h2::get_block(&format!("/large/{n}"));
        let flags = h2::END_STREAM | h2::END_HEADERS;
        asks.extend(h2::frame(h2::HEADERS, flags, 2 * n + 1, &block));
    }
    assert!(h2::send(&mut wr, &asks).await, "requests written");
    wait_until(
        "digue answers every stream's headers",
        Duration::from_secs(5),
        async || heard.count(h2::HEADERS) == STREAMS as usize,
    )
    .await;
    assert_served(&proxy, "/", "while the streams wait for a window").await;

    // The stalled relays are cut: origin slots and origin connections free.
    proxy
        .wait_metric(IN_FLIGHT, |n| n == 0.0, Duration::from_secs(10))
        .await;
    let written = origin.wait_hung_up(STREAMS as usize).await;
    assert_eq!(
        heard.count(h2::DATA),
        0,
        "no body byte beyond a window of 0"
    );
    // Per origin connection, what loopback buffers hold: 36 MiB at most.
    assert!(
        written < u64::from(STREAMS) * (36 << 20),
        "digue reads the origin no faster than the client's window allows: {written} bytes"
    );
    drop(wr);
    assert_connections_back_to_zero(&proxy, Duration::from_secs(5)).await;
    assert_served_h2(&proxy, "/", "after the closed window").await;
    proxy.shutdown().await;
}

// The cache.

/// An origin that answers every target at once with the same page of
/// `size` bytes under `cache_control`, and counts the requests it gets.
/// Unlike the support origin, it keeps no record of each request: there
/// are thousands.
async fn fast_origin(size: usize, cache_control: &'static str, asked: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let page = Bytes::from(vec![b'p'; size]);
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (asked, page) = (asked.clone(), page.clone());
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                asked.fetch_add(1, Ordering::SeqCst);
                let res = Response::builder()
                    .header("cache-control", cache_control)
                    .body(Full::new(page.clone()))
                    .expect("valid response");
                async move { Ok::<_, std::convert::Infallible>(res) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service),
            );
        }
    });
    url
}

/// Asks for each target `url(n)`, n in `range`, one after another on one
/// keep-alive connection.
async fn ask_each(addr: SocketAddr, range: std::ops::Range<usize>, url: impl Fn(usize) -> String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    for n in range {
        let target = url(n);
        let req = Request::get(&target)
            .header("host", "portal")
            .body(Full::new(Bytes::new()))
            .expect("valid request");
        let res = sender.send_request(req).await.expect("answered");
        assert_eq!(res.status(), 200, "{target} is served");
        res.into_body().collect().await.expect("body read");
    }
}

/// Asks for `count` distinct targets `url(n)` from `workers` connections at
/// once, checking on the way that a normal visitor is served and sampling
/// `digue_cache_bytes`; returns its largest sample.
async fn flood_distinct(
    proxy: &Proxy,
    count: usize,
    workers: usize,
    url: fn(usize) -> String,
) -> f64 {
    let per = count / workers;
    let flood: Vec<_> = (0..workers)
        .map(|w| tokio::spawn(ask_each(proxy.addr, w * per..(w + 1) * per, url)))
        .collect();
    let mut peak: f64 = 0.0;
    while !flood.iter().all(JoinHandle::is_finished) {
        peak = peak.max(proxy.metric(CACHE_BYTES).await);
        assert_served(proxy, "/", "during the flood of distinct URLs").await;
        // A sample every 100 ms: polling the flood's progress, not waiting
        // for it to be done.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for worker in flood {
        timeout(Duration::from_secs(20), worker)
            .await
            .expect("the flood is over within 20 s")
            .expect("flood worker");
    }
    peak
}

/// Distinct URLs through a small cache: 5,000 pages of 32 KiB (160 MB
/// through a 1 MiB cache, which holds about 30 of them). A hundred
/// thousand take 40 s in a debug build; the store's bound is in bytes, so
/// bigger pages test it as well as more URLs would.
#[tokio::test]
async fn five_thousand_distinct_urls_of_32_kib_keep_the_cache_within_its_max_size() {
    const URLS: usize = 5_000;
    const MAX_SIZE: f64 = 1_048_576.0;
    let asked = Arc::new(AtomicUsize::new(0));
    let origin = fast_origin(32 * 1024, "max-age=600", asked.clone()).await;
    let proxy = Digue::new(&origin)
        .table("[cache]\nmax_size = \"1MiB\"")
        .start()
        .await;
    assert_served(&proxy, "/", "before the flood").await;

    let peak = flood_distinct(&proxy, URLS, 8, |n| format!("/u/{n}")).await;
    let bytes = proxy.metric(CACHE_BYTES).await;
    assert!(
        peak <= MAX_SIZE && bytes <= MAX_SIZE,
        "the cache stays within max_size (1 MiB): peak {peak}, after {bytes}"
    );
    let evicted = proxy.metric("digue_cache_evictions_total").await;
    assert!(
        evicted > 0.0,
        "the flood did overflow the cache: {evicted} evictions"
    );
    assert!(
        asked.load(Ordering::SeqCst) >= URLS,
        "every distinct URL was a miss"
    );
    assert_served(&proxy, "/", "after the flood of distinct URLs").await;
    proxy.shutdown().await;
}

/// A target of about 45 KB, distinct for each `n`.
fn long_target(n: usize) -> String {
    format!("/search?n={n}&q={}", "q".repeat(45_000))
}

/// The hit-for-miss memory (keys that answered something uncacheable,
/// skipping the coalescer for a while) holds keys, not responses: the
/// cache's max_size does not bound it. 900 distinct 45 KB targets answered
/// `no-store` are 40 MB of keys.
#[tokio::test]
async fn distinct_long_uncacheable_urls_are_remembered_within_a_bounded_memory() {
    const URLS: usize = 900;
    let asked = Arc::new(AtomicUsize::new(0));
    let origin = fast_origin(16, "no-store", asked.clone()).await;
    let proxy = Digue::new(&origin)
        .server("max_header_size = \"48KiB\"")
        .start()
        .await;

    flood_distinct(&proxy, URLS, 4, long_target).await;
    let store = &proxy.app().store;
    let remembered = (0..URLS)
        .filter(|n| {
            let key = CacheKey::primary("portal", "http", "portal", &long_target(*n));
            store.is_uncacheable(&key)
        })
        .count();
    let bytes = remembered * long_target(0).len();
    // moka applies evictions in batches: twice the budget leaves room for
    // the pending ones, and is less than the flood would pin unbounded.
    assert!(
        bytes <= 32 << 20,
        "the hit-for-miss memory stays within its 16 MiB (plus pending \
         evictions): {remembered} keys of 45 KB remembered"
    );
    assert!(remembered > 0, "recent uncacheable keys are remembered");
    assert_served(&proxy, "/", "after the flood of long URLs").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn one_http2_connection_that_stops_reading_cannot_pin_every_origin_slot() {
    // Every page is 1 MiB and never stored: a client that reads none of
    // them holds, per stream, a slot until the origin timeout.
    let big = "x".repeat(1 << 20);
    let origin = Origin::start(move |seen| {
        let body = if seen.target.starts_with("/big/") {
            big.as_str()
        } else {
            "ok"
        };
        crate::support::reply(200, &[("cache-control", "no-store")], body)
    })
    .await;
    let proxy = Digue::new(&origin.url())
        .site("origin_concurrency = 20\norigin_queue_timeout = \"1s\"")
        .start()
        .await;
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    // Forty streams whose bodies are never read, each answered head first.
    let mut unread = Vec::new();
    let pending: Vec<_> = (0..40)
        .map(|i| {
            let req = Request::get(format!("http://portal/big/{i}"))
                .body(http_body_util::Empty::new())
                .expect("request");
            sender.send_request(req)
        })
        .collect();
    for answer in futures_util::future::join_all(pending).await {
        unread.push(answer.expect("an answer"));
    }
    let pinned = unread
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert!(
        pinned <= 16,
        "one connection holds at most its share of the origin: {pinned} of 40"
    );
    let other = get(&proxy.url("/ok"), &[]).await;
    assert_eq!(
        other.status,
        200,
        "another user still reaches the origin: {}",
        other.text()
    );
    drop(unread);
    proxy.shutdown().await;
}

#[tokio::test]
async fn many_connections_from_one_machine_cannot_pin_every_origin_slot() {
    // Endless downloads trickling at 160 KiB/s: never stalled, so each
    // holds its origin slot for as long as its client keeps it open.
    let origin = BrokenOrigin::start(Broken::Endless {
        cache_control: "no-store",
        pace: Duration::from_millis(100),
    })
    .await;
    let proxy = Digue::new(&origin.url)
        .site(
            "origin_concurrency = 8\norigin_queue_timeout = \"1s\"\norigin_share_per_network = 50",
        )
        .start()
        .await;
    // Eight HTTP/1.1 connections from 127.0.0.1, one download each: the
    // connection share does not bind them, the network's does (half of 8).
    let downloads = (0..8).map(|n| read_some(proxy.addr, format!("/endless/{n}"), 256));
    let downloads = futures_util::future::join_all(downloads).await;
    let heads: Vec<&str> = downloads.iter().map(|(_, head)| head.as_str()).collect();
    let pinned = heads
        .iter()
        .filter(|h| h.starts_with("HTTP/1.1 200"))
        .count();
    assert_eq!(pinned, 4, "one machine holds half the origin: {heads:?}");
    assert!(
        heads
            .iter()
            .filter(|h| !h.starts_with("HTTP/1.1 200"))
            .all(|h| h.starts_with("HTTP/1.1 503")),
        "the rest get the busy page: {heads:?}"
    );
    assert_eq!(proxy.metric(IN_FLIGHT).await, 4.0);

    let other =
        crate::support::get_from("127.0.0.2".parse().expect("ip"), &proxy.url("/"), &[]).await;
    assert_eq!(
        other.status,
        200,
        "another machine reaches the origin: {}",
        other.text()
    );
    drop(downloads);
    proxy
        .wait_metric(IN_FLIGHT, |n| n == 0.0, Duration::from_secs(5))
        .await;
    assert_served(&proxy, "/", "after the downloads").await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_leader_whose_network_is_at_its_share_hands_the_fetch_to_another_client() {
    let origin = Origin::start(|seen| {
        let cc = if seen.target == "/page" {
            "max-age=60"
        } else {
            "no-store"
        };
        crate::support::reply(200, &[("cache-control", cc)], "page")
    })
    .await;
    let proxy = Digue::new(&origin.url())
        .site(
            "origin_concurrency = 2\norigin_queue_timeout = \"1s\"\n\
             origin_share_per_network = 50",
        )
        .start()
        .await;
    // 127.0.0.1 holds its one slot of two with a request the origin sits on.
    origin.hold();
    let url = proxy.url("/held");
    let holding = tokio::spawn(async move { get(&url, &[]).await });
    origin.wait_for_total(1).await;
    // It asks for a cold page: it leads the fetch, but waits for its share.
    let url = proxy.url("/page");
    let leader = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another machine asks for the same page and follows that fetch.
    let other = "127.0.0.2".parse().expect("ip");
    let url = proxy.url("/page");
    let follower = tokio::spawn(async move { crate::support::get_from(other, &url, &[]).await });
    // The leader gives up at its queue deadline; the follower fetches.
    origin.wait_for_total(2).await;
    origin.release();
    let follower = follower.await.expect("joined");
    assert_eq!(
        follower.status,
        200,
        "served, not the busy page of another network's share: {}",
        follower.text()
    );
    assert_eq!(
        leader.await.expect("joined").status,
        503,
        "its own share was full"
    );
    assert_eq!(holding.await.expect("joined").status, 200);
    proxy.shutdown().await;
}
