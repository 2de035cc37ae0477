//! Building a response from a stored entry: the hit path. No per-hit copy
//! of the body (a refcount), headers prebuilt at store time.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, request};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::cache::range::{self, Cut};
use crate::cache::store::Entry;
use crate::outcome::CacheStatus;

/// The response to `req` from `entry`, with `Age` and `Cache-Status`; a 304
/// when the client's own validators match.
pub fn respond(
    entry: &Entry,
    req: &request::Parts,
    status: CacheStatus,
    now: Instant,
) -> Response<ProxyBody> {
    let mut headers = entry.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(entry.age(now)));
    // Preconditions come before Range (RFC 9110 §13.2.2): a matching
    // If-None-Match is a 304 even when a range is asked for.
    let unchanged = entry.status == StatusCode::OK && not_modified(&req.headers, &headers);
    let cut = match unchanged {
        true => Cut::Whole,
        false => range::cut(req, entry.status, &headers, entry.body.len()),
    };
    let status = match (cut != Cut::Whole, status) {
        (true, CacheStatus::Hit { ttl }) => CacheStatus::RangeHit { ttl },
        _ => status,
    };
    status.append_to(&mut headers);
    if cut != Cut::Whole {
        return ranged(entry, headers, cut);
    }
    let (code, body) = if unchanged {
        headers.remove(header::CONTENT_LENGTH);
        (StatusCode::NOT_MODIFIED, ProxyBody::empty())
    } else {
        let body = if req.method == Method::HEAD {
            ProxyBody::empty()
        } else {
            ProxyBody::Full(Some(entry.body.clone()))
        };
        (entry.status, body)
    };
    let mut res = Response::new(body);
    *res.status_mut() = code;
    *res.headers_mut() = headers;
    res
}

/// A `206` with one part of `entry`, or a `416`.
fn ranged(entry: &Entry, mut headers: HeaderMap, cut: Cut) -> Response<ProxyBody> {
    let len = entry.body.len();
    let (code, body, range) = match cut {
        Cut::Part(part) => {
            let body = entry.body.slice(part.clone());
            (StatusCode::PARTIAL_CONTENT, body, Some(part))
        }
        Cut::Unsatisfiable | Cut::Whole => {
            (StatusCode::RANGE_NOT_SATISFIABLE, bytes::Bytes::new(), None)
        }
    };
    headers.insert(
        header::CONTENT_RANGE,
        range::content_range(range.as_ref(), len),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut res = Response::new(ProxyBody::Full(Some(body)));
    *res.status_mut() = code;
    *res.headers_mut() = headers;
    res
}

/// Whether the client's conditional request matches the stored response
/// (RFC 9110 §13.1.2, weak comparison; §13.1.3 only without If-None-Match).
fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let etag = weak(etag);
        return inm.split(',').any(|t| t.trim() == "*" || weak(t) == etag);
    }
    let date = |h: &HeaderMap, name| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
    };
    match (
        date(req, header::IF_MODIFIED_SINCE),
        date(stored, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_requests_match_weakly() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("W/\"v1\""));
        let mut req = HeaderMap::new();
        req.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"v0\", \"v1\""),
        );
        assert!(not_modified(&req, &stored));
        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"v2\""));
        assert!(!not_modified(&req, &stored));
    }
}
