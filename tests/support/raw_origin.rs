//! A raw origin: a TCP listener that keeps every byte it receives and
//! answers each request it can frame with one fixed response, for the
//! tests that must see what digue really puts on the wire ([`Origin`] is a
//! hyper server: it shows requests as hyper read them, never the bytes).
//!
//! It frames strictly, as the most careful origin would: CRLF line ends,
//! no obs-fold, no control characters, and one unambiguous body length
//! (`Content-Length` or `Transfer-Encoding: chunked`, never both, never
//! two lengths). Whatever it cannot frame that way is recorded as a
//! [`Misframed`] connection and the connection closed: a lenient origin
//! might read such bytes as two requests.
//!
//! [`Origin`]: super::origin::Origin

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::wait::wait_until;

/// The longest head either side of the raw tests reads.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// One message as framed: its head (start line and header lines, without
/// the blank line) and its body, de-chunked.
#[derive(Debug, Clone)]
pub struct Message {
    pub head: String,
    pub body: Vec<u8>,
}

impl Message {
    /// The start line: `GET /x HTTP/1.1`, `HTTP/1.1 200 OK`.
    pub fn start_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }

    /// The request target, or the status code of a response.
    pub fn target(&self) -> &str {
        self.start_line().split(' ').nth(1).unwrap_or("")
    }

    /// Every value of header `name` (any case), trimmed.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    pub fn status(&self) -> u16 {
        self.target().parse().unwrap_or(0)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What a connection's bytes read as so far.
#[derive(Debug)]
pub enum Framed {
    /// A whole message, `len` bytes of the buffer.
    Whole(Message, usize),
    /// More bytes are needed.
    Partial,
    /// Bytes no strict reader should accept, and why.
    Bad(String),
}

/// Reads one message from the start of `buf`. `bodiless` (a request
/// without a length, a response to HEAD) has no body; otherwise a response
/// without a length runs until the connection closes, and reads as
/// [`Framed::Partial`] until then.
pub fn frame(buf: &[u8], bodiless_without_length: bool) -> Framed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD_BYTES {
            Framed::Bad("a head longer than 64 KiB".to_owned())
        } else {
            Framed::Partial
        };
    };
    let head = &buf[..end];
    if let Some(bad) = head.iter().enumerate().find_map(|(i, &b)| {
        let crlf = (b == b'\r' && head.get(i + 1) == Some(&b'\n'))
            || (b == b'\n' && i > 0 && head[i - 1] == b'\r');
        let control = (b < 0x20 && b != b'\t') || b == 0x7f;
        (control && !crlf).then_some(b)
    }) {
        return Framed::Bad(format!("byte {bad:#04x} in the head"));
    }
    let head = String::from_utf8_lossy(head).into_owned();
    if head
        .split("\r\n")
        .skip(1)
        .any(|l| l.starts_with([' ', '\t']))
    {
        return Framed::Bad("an obs-folded header line".to_owned());
    }
    let message = Message {
        head,
        body: Vec::new(),
    };
    let lengths = message.headers("content-length");
    let codings = message.headers("transfer-encoding");
    let rest = &buf[end + 4..];
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) if bodiless_without_length => Framed::Whole(message, end + 4),
        ([], []) => Framed::Partial,
        ([len], []) => match len.parse::<usize>() {
            Ok(n) if len.bytes().all(|b| b.is_ascii_digit()) => match rest.get(..n) {
                Some(body) => Framed::Whole(
                    Message {
                        body: body.to_vec(),
                        ..message
                    },
                    end + 4 + n,
                ),
                None => Framed::Partial,
            },
            _ => Framed::Bad(format!("Content-Length {len:?}")),
        },
        ([], ["chunked"]) => match dechunk(rest) {
            Ok(Some((body, n))) => Framed::Whole(Message { body, ..message }, end + 4 + n),
            Ok(None) => Framed::Partial,
            Err(why) => Framed::Bad(why),
        },
        _ => Framed::Bad(format!(
            "ambiguous length: Content-Length {lengths:?}, Transfer-Encoding {codings:?}"
        )),
    }
}

/// A chunked body at the start of `buf`: its data and its length on the
/// wire, `None` while incomplete. No extensions, no trailers.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let size = std::str::from_utf8(line)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("chunk size line {:?}", String::from_utf8_lossy(line)))?;
        at += eol + 2;
        let Some(chunk) = buf.get(at..at + size + 2) else {
            return Ok(None);
        };
        if !chunk.ends_with(b"\r\n") {
            return Err("a chunk not followed by CRLF".to_owned());
        }
        body.extend_from_slice(&chunk[..size]);
        at += size + 2;
        if size == 0 {
            return Ok(Some((body, at)));
        }
    }
}

/// One connection the raw origin accepted.
#[derive(Debug, Default, Clone)]
pub struct Connection {
    /// Every byte received, in order.
    pub raw: Vec<u8>,
    /// The requests framed from them, in order.
    pub requests: Vec<Message>,
    /// Why the rest of `raw` could not be framed, if it could not.
    pub misframed: Option<String>,
}

/// A connection whose bytes could not be framed strictly.
#[derive(Debug)]
pub struct Misframed {
    pub why: String,
    pub raw: String,
}

/// A raw origin on a free loopback port; see the module doc.
/// What a raw origin answers: the bytes to write for a request, given how
/// many requests came before it on the same connection.
pub type Answer = Arc<dyn Fn(&Message, usize) -> Vec<u8> + Send + Sync>;

pub struct RawOrigin {
    pub addr: SocketAddr,
    connections: Arc<Mutex<Vec<Connection>>>,
    task: JoinHandle<()>,
}

impl RawOrigin {
    /// Answers every request `200` with `body` (`no-store`, so that each
    /// request digue lets through reaches it).
    pub async fn start(body: &'static str) -> RawOrigin {
        RawOrigin::answering(move |request, _| {
            let head_only = request.start_line().starts_with("HEAD ");
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncache-control: no-store\r\n\
                 content-length: {}\r\n\r\n{}",
                body.len(),
                if head_only { "" } else { body }
            )
            .into_bytes()
        })
        .await
    }

    /// Answers each request with what `answer` makes of it: the bytes are
    /// written as they are, however wrong (for the tests of a misbehaving
    /// origin). An empty answer closes the connection without a byte.
    pub async fn answering(
        answer: impl Fn(&Message, usize) -> Vec<u8> + Send + Sync + 'static,
    ) -> RawOrigin {
        let answer: Answer = Arc::new(answer);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind raw origin");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(Mutex::new(Vec::new()));
        let shared = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let index = {
                    let mut all = shared.lock().expect("not poisoned");
                    all.push(Connection::default());
                    all.len() - 1
                };
                tokio::spawn(record(stream, shared.clone(), index, answer.clone()));
            }
        });
        RawOrigin {
            addr,
            connections,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().expect("not poisoned").clone()
    }

    /// Every request framed, connection by connection.
    pub fn requests(&self) -> Vec<Message> {
        self.connections()
            .into_iter()
            .flat_map(|c| c.requests)
            .collect()
    }

    /// The targets of every request framed.
    pub fn targets(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.target().to_owned())
            .collect()
    }

    /// The connections whose bytes could not be framed strictly.
    pub fn misframed(&self) -> Vec<Misframed> {
        self.connections()
            .into_iter()
            .filter_map(|c| {
                Some(Misframed {
                    why: c.misframed?,
                    raw: String::from_utf8_lossy(&c.raw).into_owned(),
                })
            })
            .collect()
    }

    /// Request lines in the raw bytes, bodies included, whatever framing
    /// would say (see [`request_lines_in`]).
    pub fn request_lines(&self) -> usize {
        self.connections()
            .iter()
            .map(|c| request_lines_in(&c.raw))
            .sum()
    }

    /// Waits (at most 10 s) until `target` has been requested.
    pub async fn wait_for_target(&self, target: &str) {
        let what = format!("the raw origin receives {target}");
        wait_until(&what, Duration::from_secs(10), async || {
            self.targets().iter().any(|t| t == target)
        })
        .await;
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Request lines in `bytes`, wherever they start: each ` HTTP/1.x` before a
/// CR or LF ends one (a lenient reader may find a request anywhere,
/// even glued to the end of a body).
pub fn request_lines_in(bytes: &[u8]) -> usize {
    bytes
        .windows(10)
        .filter(|w| w.starts_with(b" HTTP/1.") && w[8].is_ascii_digit() && b"\r\n".contains(&w[9]))
        .count()
}

/// Serves one connection: records, frames, answers, until the peer closes
/// or sends what cannot be framed.
async fn record(
    mut stream: TcpStream,
    connections: Arc<Mutex<Vec<Connection>>>,
    index: usize,
    answer: Answer,
) {
    let update = |f: &mut dyn FnMut(&mut Connection)| {
        f(&mut connections.lock().expect("not poisoned")[index]);
    };
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 16 * 1024];
    let mut answered = 0;
    loop {
        match frame(&buf, true) {
            Framed::Whole(request, len) => {
                buf.drain(..len);
                update(&mut |c| c.requests.push(request.clone()));
                let bytes = answer(&request, answered);
                answered += 1;
                if bytes.is_empty() || stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Framed::Partial => match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    if !buf.is_empty() {
                        update(&mut |c| c.misframed = Some("a truncated message".to_owned()));
                    }
                    return;
                }
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    update(&mut |c| c.raw.extend_from_slice(&chunk[..n]));
                }
            },
            Framed::Bad(why) => {
                update(&mut |c| c.misframed = Some(why.clone()));
                return;
            }
        }
    }
}

/// What a raw client got back on one connection.
#[derive(Debug)]
pub struct Exchange {
    /// The responses framed, in order.
    pub responses: Vec<Message>,
    /// Whether the server closed the connection (within the deadline).
    pub closed: bool,
    /// Every byte received.
    pub raw: String,
}

impl Exchange {
    /// The status of the first response, 0 if none came.
    pub fn status(&self) -> u16 {
        self.responses.first().map_or(0, Message::status)
    }
}

/// Writes `bytes` on a new connection, then reads responses until the
/// server closes, `expected` responses have come, or 5 s pass.
/// (Unlike `raw`, a server that keeps the connection open costs nothing.)
pub async fn exchange(addr: SocketAddr, bytes: &[u8], expected: usize) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(bytes).await;
    let mut got = Exchange {
        responses: Vec::new(),
        closed: false,
        raw: String::new(),
    };
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while got.responses.len() < expected {
        if let Framed::Whole(res, len) = frame(&buf, false) {
            buf.drain(..len);
            got.responses.push(res);
            continue;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => {
                got.closed = true;
                break;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                got.raw.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
            Err(_) => break,
        }
    }
    got
}

/// Like [`exchange`], then waits (at most 5 s) for the server to close the
/// connection; `closed` tells whether it did, and anything more it sent is
/// in `raw`.
pub async fn exchange_to_close(addr: SocketAddr, bytes: &[u8]) -> Exchange {
    exchange(addr, bytes, usize::MAX).await
}
