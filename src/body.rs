//! The one response body type: a cached or generated buffer, or an origin
//! stream that holds its origin slot until the last byte is sent — or until
//! it stops moving: a relayed body that delivers nothing for its stall
//! timeout is cut, so neither a silent origin nor a client that stopped
//! reading can pin an origin slot for ever. The two have their own
//! timeouts: an origin may think for `origin_timeout`, a client that does
//! not read holds a slot (and a portal worker) only `client_send_timeout`.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::guard::OriginPermit;

/// What a downstream body can fail with.
pub type BodyError = Box<dyn StdError + Send + Sync>;

/// A downstream response body.
pub enum ProxyBody {
    /// A whole body in memory: a cache entry (shared, not copied) or a page.
    Full(Option<Bytes>),
    /// Streamed from the origin, after an already-read `prefix`.
    Upstream {
        /// Bytes read but not yet handed out: the prefix, then the rest of
        /// a frame larger than [`MAX_FRAME`].
        prefix: Option<Bytes>,
        relay: Arc<Relayed>,
    },
}

/// The slowest reader a relayed body waits for: after handing out a frame
/// of n bytes, the watchdog allows n / MIN_READ_RATE on top of the stall
/// timeout, so a slow phone flushing a frame is not taken for gone.
const MIN_READ_RATE: u64 = 32 * 1024;
/// Frames are handed out in slices of at most this many bytes (zero-copy),
/// so progress is seen often even when a large prefix was read ahead.
const MAX_FRAME: usize = 64 * 1024;

/// The next slice of `pending`, leaving the rest there.
fn next_slice(pending: &mut Option<Bytes>) -> Option<Bytes> {
    let bytes = pending.as_mut()?;
    if bytes.len() > MAX_FRAME {
        return Some(bytes.split_to(MAX_FRAME));
    }
    pending.take()
}

/// The origin half of a relayed body, shared with its stall watchdog.
pub struct Relayed {
    stream: Mutex<Stream>,
    /// Frames delivered so far: the watchdog's measure of progress.
    frames: AtomicU64,
    /// Bytes in the last frame delivered.
    last_len: AtomicU64,
}

struct Stream {
    /// `None` once finished or cut.
    rest: Option<Incoming>,
    /// Released when the body ends, is cut, or the client goes away, so a
    /// slow download still counts toward origin_concurrency.
    permit: Option<OriginPermit>,
    /// The task waiting for the next frame, woken when the watchdog cuts.
    waker: Option<Waker>,
    /// Whether the last poll found the origin with nothing to give: the
    /// relay waits on the origin, not on its reader.
    awaiting_origin: bool,
    cut: bool,
}

/// How long a relayed body may deliver nothing before it is cut.
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    /// While the relay waits for the origin's next bytes.
    pub origin: Duration,
    /// While the client does not ask for the bytes it has (a full window).
    pub client: Duration,
}

/// The body stopped moving for longer than its stall timeout.
#[derive(Debug)]
pub struct Stalled;

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "relayed body made no progress within origin_timeout (origin silent) or \
             client_send_timeout (client not reading)",
        )
    }
}

impl StdError for Stalled {}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }

    /// Streams `rest` after `prefix`, holding `permit` until the end; cut if
    /// no frame goes out for the `stall` of whichever side it waits on
    /// (checked by `watch`, since a client that stops reading also stops
    /// polling the body).
    pub fn upstream(
        prefix: Option<Bytes>,
        rest: Incoming,
        permit: Option<OriginPermit>,
        stall: Stall,
        watch: &Arc<StallWatch>,
    ) -> Self {
        let relay = Arc::new(Relayed {
            stream: Mutex::new(Stream {
                rest: Some(rest),
                permit,
                waker: None,
                awaiting_origin: false,
                cut: false,
            }),
            frames: AtomicU64::new(0),
            last_len: AtomicU64::new(0),
        });
        watch.watch(&relay, stall);
        ProxyBody::Upstream {
            prefix: prefix.filter(|p| !p.is_empty()),
            relay,
        }
    }
}

impl Relayed {
    fn stream(&self) -> std::sync::MutexGuard<'_, Stream> {
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn delivered(&self, len: usize) {
        self.last_len.store(len as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// Every relayed body's stall watchdog, in one task for the whole process.
/// A task per body, asleep for its stall timeout, cost a few hundred bytes
/// per request for `origin_timeout` after it ended: at 15,000 requests a
/// second of per-user pages, 144 MiB of sleeping tasks
/// (`benches/cache_memory.sh`). Here a body costs one list slot, dropped at
/// the first sweep after it ends.
#[derive(Default)]
pub struct StallWatch {
    /// The bodies being relayed. Pushed by each relay, swept once per
    /// [`SWEEP_EVERY`] by the one sweeping task; never held across an await
    /// (a relay's own lock is taken inside it, never the other way round).
    watched: Mutex<Vec<Watched>>,
    sweeping: std::sync::atomic::AtomicBool,
}

struct Watched {
    relay: Weak<Relayed>,
    stall: Stall,
    /// Frames delivered at the last sweep, and the time since they moved
    /// (counted again when the relay starts waiting on the other side).
    seen: u64,
    idle: Duration,
    /// Whether the relay waited on the origin at the last sweep.
    on_origin: bool,
}

/// How often the watchdog looks: a stalled body is cut between its stall
/// timeout and one sweep later.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl StallWatch {
    fn watch(self: &Arc<Self>, relay: &Arc<Relayed>, stall: Stall) {
        self.list().push(Watched {
            relay: Arc::downgrade(relay),
            stall,
            seen: u64::MAX,
            idle: Duration::ZERO,
            on_origin: false,
        });
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Watched>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sweeps until the watch is dropped with its app.
async fn sweep(watch: Weak<StallWatch>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(watch) = watch.upgrade() else { return };
        watch.list().retain_mut(still_moving);
    }
}

/// Whether `w` stays watched: false once its body ended or was dropped, or
/// once it is cut for making no progress for its stall timeout plus the
/// time a slow reader needs for the last frame.
fn still_moving(w: &mut Watched) -> bool {
    let Some(relay) = w.relay.upgrade() else {
        return false;
    };
    let frames = relay.frames.load(Ordering::Relaxed);
    let mut stream = relay.stream();
    if stream.rest.is_none() {
        return false;
    }
    if frames != w.seen {
        w.seen = frames;
        w.idle = Duration::ZERO;
        return true;
    }
    if stream.awaiting_origin != w.on_origin {
        // A client that paused, then asked for more the origin does not
        // have yet: the origin's wait starts now, not with the pause.
        w.on_origin = stream.awaiting_origin;
        w.idle = Duration::ZERO;
    }
    w.idle += SWEEP_EVERY;
    let allowed = if stream.awaiting_origin {
        w.stall.origin
    } else {
        let flush = relay.last_len.load(Ordering::Relaxed) / MIN_READ_RATE;
        w.stall.client + Duration::from_secs(flush)
    };
    if w.idle < allowed {
        return true;
    }
    // Dropping the origin body closes its connection, which frees the
    // portal's worker too, not only digue's slot.
    stream.rest = None;
    stream.permit = None;
    stream.cut = true;
    if let Some(waker) = stream.waker.take() {
        waker.wake();
    }
    false
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream { prefix, relay } => {
                if let Some(slice) = next_slice(prefix) {
                    relay.delivered(slice.len());
                    return Poll::Ready(Some(Ok(Frame::data(slice))));
                }
                let mut stream = relay.stream();
                let Some(rest) = stream.rest.as_mut() else {
                    let cut = std::mem::take(&mut stream.cut);
                    return Poll::Ready(cut.then(|| Err(Stalled.into())));
                };
                let polled = Pin::new(rest).poll_frame(cx);
                stream.awaiting_origin = polled.is_pending();
                match polled {
                    Poll::Pending => {
                        if !stream
                            .waker
                            .as_ref()
                            .is_some_and(|w| w.will_wake(cx.waker()))
                        {
                            stream.waker = Some(cx.waker().clone());
                        }
                        Poll::Pending
                    }
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            *prefix = Some(data).filter(|d| !d.is_empty());
                            let slice = next_slice(prefix).unwrap_or_default();
                            relay.delivered(slice.len());
                            Poll::Ready(Some(Ok(Frame::data(slice))))
                        }
                        // Trailers.
                        Err(frame) => Poll::Ready(Some(Ok(frame))),
                    },
                    Poll::Ready(end) => {
                        stream.rest = None;
                        stream.permit = None;
                        Poll::Ready(end.map(|r| r.map_err(Into::into)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream { prefix, relay } => {
                let stream = relay.stream();
                prefix.is_none()
                    && !stream.cut
                    && stream.rest.as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream { prefix, relay } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = relay
                    .stream()
                    .rest
                    .as_ref()
                    .map_or_else(SizeHint::new, Body::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
        }
    }
}

/// What reading an origin body with a size limit gave.
pub enum Collected {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit: what was read so far and the rest, still streaming.
    TooBig { prefix: Bytes, rest: Incoming },
}

/// Why collecting a body failed.
#[derive(Debug)]
pub enum CollectError {
    Stalled,
    Broken(hyper::Error),
}

/// Reads `body` into memory unless it exceeds `limit` bytes; gives up after
/// `deadline` so a stalled origin cannot hold a coalesced fetch forever.
pub async fn collect_limited(
    mut body: Incoming,
    limit: u64,
    deadline: Duration,
) -> Result<Collected, CollectError> {
    use http_body_util::BodyExt;
    if body.size_hint().lower() > limit {
        return Ok(Collected::TooBig {
            prefix: Bytes::new(),
            rest: body,
        });
    }
    // Stops early once over the limit; the caller streams the rest.
    let read = async {
        let mut buf = BytesMut::with_capacity(body.size_hint().lower() as usize);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(CollectError::Broken)?;
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() as u64 > limit {
                    break;
                }
            }
        }
        Ok(buf.freeze())
    };
    let result = tokio::time::timeout(deadline, read).await;
    match result {
        Err(_) => Err(CollectError::Stalled),
        Ok(Err(e)) => Err(e),
        Ok(Ok(bytes)) if bytes.len() as u64 > limit => Ok(Collected::TooBig {
            prefix: bytes,
            rest: body,
        }),
        Ok(Ok(bytes)) => Ok(Collected::Complete(bytes)),
    }
}
