//! Range requests answered from a stored complete response (RFC 9110 §14):
//! PDFs and videos of the cahier de textes are read by ranges on phones.
//!
//! One range is answered `206` with `Content-Range`; a range that starts
//! past the end `416`; several ranges, an `If-Range` that does not match, or
//! a `Range` digue cannot read get the whole `200` (RFC 9110 §14.2: a server
//! may ignore `Range`). Only a stored `200` is cut.

use std::ops::Range;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, request};

/// What to send for a request's `Range` against a stored body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Cut {
    /// No usable `Range`: the whole response.
    Whole,
    /// `206` with these bytes.
    Part(Range<usize>),
    /// `416`: no byte of the range exists.
    Unsatisfiable,
}

/// How `req` is to be answered from a stored response with `status`,
/// `stored` headers and a body of `len` bytes.
pub fn cut(req: &request::Parts, status: StatusCode, stored: &HeaderMap, len: usize) -> Cut {
    let Some(range) = req.headers.get(header::RANGE) else {
        return Cut::Whole;
    };
    if req.method != Method::GET
        || status != StatusCode::OK
        || !if_range_holds(&req.headers, stored)
    {
        return Cut::Whole;
    }
    match range.to_str().ok().and_then(|r| single(r, len)) {
        Some(Some(part)) => Cut::Part(part),
        Some(None) => Cut::Unsatisfiable,
        None => Cut::Whole,
    }
}

/// The `Content-Range` of `part` of a `len`-byte body, or of a `416`.
pub fn content_range(part: Option<&Range<usize>>, len: usize) -> HeaderValue {
    let text = match part {
        Some(p) => format!("bytes {}-{}/{len}", p.start, p.end - 1),
        None => format!("bytes */{len}"),
    };
    HeaderValue::try_from(text).expect("invariant: digits, spaces, '-' and '/' are a valid value")
}

/// `If-Range` (RFC 9110 §13.1.5): a strong entity-tag equal to the stored
/// one, or an HTTP-date equal to a `Last-Modified`; absent, it holds.
fn if_range_holds(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(if_range) = req.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(if_range) = if_range.to_str().map(str::trim) else {
        return false;
    };
    let stored_text = |name| {
        stored
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if if_range.starts_with('"') {
        return stored_text(header::ETAG).is_some_and(|etag| etag == if_range);
    }
    if if_range.starts_with("W/") {
        return false;
    }
    let date = |v: &str| httpdate::parse_http_date(v).ok();
    match (
        date(if_range),
        stored_text(header::LAST_MODIFIED).and_then(date),
    ) {
        (Some(asked), Some(modified)) => asked == modified,
        _ => false,
    }
}

/// Reads a `Range` of one byte range: `Some(Some(range))` to send,
/// `Some(None)` when it cannot be satisfied, `None` to ignore it (another
/// unit, several ranges, bad syntax).
fn single(header: &str, len: usize) -> Option<Option<Range<usize>>> {
    let (unit, spec) = header.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    let len64 = len as u64;
    let (start, end) = match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => {
            let suffix = number(last)?;
            if suffix == 0 {
                return Some(None);
            }
            (len64.saturating_sub(suffix), len64)
        }
        (false, true) => (number(first)?, len64),
        (false, false) => {
            let (first, last) = (number(first)?, number(last)?);
            if last < first {
                return None;
            }
            (first, last.saturating_add(1).min(len64))
        }
        (true, true) => return None,
    };
    if start >= len64 {
        return Some(None);
    }
    // Both are at most `len`, a usize.
    Some(Some(start as usize..end as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_range_is_read_in_each_of_its_forms() {
        for (header, want) in [
            ("bytes=0-3", Some(Some(0..4))),
            ("bytes=4-", Some(Some(4..10))),
            ("bytes=-3", Some(Some(7..10))),
            ("bytes=-30", Some(Some(0..10))),
            ("BYTES = 2-99", Some(Some(2..10))),
            ("bytes=10-", Some(None)),
            ("bytes=-0", Some(None)),
            ("bytes=0-1,4-5", None),
            ("bytes=5-2", None),
            ("items=0-1", None),
            ("bytes=a-b", None),
            ("bytes=-", None),
        ] {
            assert_eq!(single(header, 10), want, "{header}");
        }
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let mut stored = HeaderMap::new();
        stored.insert(header::ETAG, HeaderValue::from_static("\"v1\""));
        stored.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        for (if_range, holds) in [
            ("\"v1\"", true),
            ("\"v2\"", false),
            ("W/\"v1\"", false),
            ("Sun, 06 Nov 1994 08:49:37 GMT", true),
            ("Sun, 06 Nov 1994 08:49:38 GMT", false),
        ] {
            let mut req = HeaderMap::new();
            req.insert(header::IF_RANGE, HeaderValue::from_static(if_range));
            assert_eq!(if_range_holds(&req, &stored), holds, "{if_range}");
        }
    }
}
