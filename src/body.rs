//! The one response body type: a cached or generated buffer, or an origin
//! stream that holds its origin slot until the last byte is sent.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::guard::OriginPermit;

/// A downstream response body.
pub enum ProxyBody {
    /// A whole body in memory: a cache entry (shared, not copied) or a page.
    Full(Option<Bytes>),
    /// Streamed from the origin, after an already-read `prefix`.
    Upstream {
        prefix: Option<Bytes>,
        rest: Incoming,
        /// Released when the body ends or the client goes away, so a slow
        /// download still counts toward origin_concurrency.
        permit: Option<OriginPermit>,
    },
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Full(None)
    }

    pub fn upstream(prefix: Option<Bytes>, rest: Incoming, permit: Option<OriginPermit>) -> Self {
        ProxyBody::Upstream {
            prefix: prefix.filter(|p| !p.is_empty()),
            rest,
            permit,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream {
                prefix,
                rest,
                permit,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                let polled = Pin::new(rest).poll_frame(cx);
                if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
                    permit.take();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Upstream { prefix, rest, .. } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Upstream { prefix, rest, .. } => {
                let extra = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = rest.size_hint();
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
