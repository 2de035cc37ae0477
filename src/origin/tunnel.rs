//! The origin's side of a tunnel (WebSocket, or another `Upgrade` a site
//! allows): the upgrade request goes through [`call_origin`] like any
//! other (a backend chosen for the session, a slot while the origin
//! answers, one retry where safe, the same header hygiene), with its
//! `Upgrade` kept; when the origin switches protocols, its slot is given
//! back and its connection taken over.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, request, response};
use hyper::upgrade::OnUpgrade;

use super::{Answer, Asker, Route, call_origin, no_body};
use crate::cache::coalesce::Failure;
use crate::outcome::OriginErrorKind;

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// Marks a request head whose `Upgrade` the origin must see: header
/// hygiene keeps `Connection: upgrade` and this protocol for it.
#[derive(Debug, Clone)]
pub struct UpgradeTo(pub HeaderValue);

/// What the origin made of an upgrade request.
pub enum Opened {
    /// It switched protocols: its 101 head (hop-by-hop headers removed),
    /// and its side of the connection, to be copied to and from the client.
    Switched {
        head: response::Parts,
        upstream: OnUpgrade,
    },
    /// It answered something else: relayed like any answer.
    Answered(Answer),
}

/// Sends the upgrade request for `protocol` (lower-case). An HTTP/2
/// extended CONNECT (RFC 8441) becomes the HTTP/1.1 `GET` with `Upgrade`
/// that origins speak, with a `Sec-WebSocket-Key` of digue's own, since
/// RFC 8441 has the client send none.
pub async fn open(
    route: Route<'_>,
    head: &request::Parts,
    protocol: &str,
    asker: Asker<'_>,
) -> Result<Opened, Failure> {
    let upgrade =
        HeaderValue::from_str(protocol).map_err(|_| Failure::Origin(OriginErrorKind::Protocol))?;
    let (mut ask, ()) = Request::new(()).into_parts();
    ask.method = Method::GET;
    ask.uri = head.uri.clone();
    ask.headers = head.headers.clone();
    if head.method == Method::CONNECT && protocol == "websocket" {
        ask.headers
            .insert(SEC_WEBSOCKET_KEY.clone(), websocket_key());
        ask.headers
            .entry(SEC_WEBSOCKET_VERSION.clone())
            .or_insert(HeaderValue::from_static("13"));
    }
    ask.extensions.insert(UpgradeTo(upgrade));
    let answer = call_origin(route, &ask, no_body(), asker).await?;
    if answer.head.status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Opened::Answered(answer));
    }
    let Answer {
        mut head,
        body,
        slot,
    } = answer;
    // The tunnel may stay open for hours: a slot held that long would
    // starve the guard of the requests it is there for.
    drop(slot);
    drop(body);
    let upstream = head
        .extensions
        .remove::<OnUpgrade>()
        .ok_or(Failure::Origin(OriginErrorKind::Protocol))?;
    head.headers.remove(header::CONTENT_LENGTH);
    Ok(Opened::Switched { head, upstream })
}

/// A `Sec-WebSocket-Key`: 16 bytes, base64. A nonce against confused
/// caches and servers, not a secret (RFC 6455 §4.1), so the clock's
/// entropy is enough.
fn websocket_key() -> HeaderValue {
    let mut nonce = [0_u8; 16];
    nonce[..8].copy_from_slice(&crate::clock::entropy().to_le_bytes());
    nonce[8..].copy_from_slice(&crate::clock::entropy().to_le_bytes());
    HeaderValue::from_str(&STANDARD.encode(nonce)).expect("invariant: base64 is a header value")
}
