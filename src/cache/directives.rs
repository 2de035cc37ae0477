//! The response's caching fields as digue reads them, strictly (RFC 9111
//! §4.2, §5) and with targeted cache control (RFC 9213).
//!
//! `http-cache-semantics` is lenient where the RFC is not: it splits
//! `Cache-Control` on every comma (so `max-age` inside a quoted string counts),
//! parses `Age` as "a number or 0" (so `old, 0` is fresh) and `Expires` as
//! RFC 2822 (extra spaces and `+0000` pass). [`normalise`] rewrites a copy of
//! the head into the unambiguous form the library reads right; the response
//! the client gets is left as the origin sent it, minus [`strip_downstream`].

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::response;

use std::time::Duration;

/// Addressed to digue alone; wins over `CDN-Cache-Control` (RFC 9213 §2.1:
/// the more specific target list comes first).
pub const DIGUE_CACHE_CONTROL: HeaderName = HeaderName::from_static("digue-cache-control");
/// Addressed to every CDN-like cache, digue included (RFC 9213 §3.1).
pub const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");

/// The longest any origin-given lifetime, window or `Age` is taken to be:
/// enough for any real page, and far from overflowing instant arithmetic.
pub const MAX_DELTA: Duration = Duration::from_secs(365 * 24 * 3600);

/// What an invalid `Expires` becomes: a time in the past (RFC 9111 §5.3).
const ALREADY_EXPIRED: &str = "Thu, 01 Jan 1970 00:00:00 GMT";

/// Directives whose argument is a number of seconds.
const DELTA_DIRECTIVES: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Directives that matter to a shared cache, kept by name only: a field
/// list (`private="Set-Cookie"`, `no-cache="Foo"`) is read as the whole
/// directive, the stricter reading.
const FLAG_DIRECTIVES: [&str; 7] = [
    "public",
    "private",
    "no-store",
    "no-cache",
    "must-revalidate",
    "proxy-revalidate",
    "immutable",
];

/// A copy of `res` with one canonical `Cache-Control` (taken from
/// `Digue-Cache-Control`, else `CDN-Cache-Control`, else `Cache-Control`),
/// a strict `Age` and `Expires`. `None` when `Cache-Control` is not
/// readable: such a response is not stored.
pub fn normalise(res: &response::Parts) -> Option<response::Parts> {
    let (mut copy, ()) = http::Response::new(()).into_parts();
    copy.status = res.status;
    copy.version = res.version;
    copy.headers = res.headers.clone();
    let targeted = [DIGUE_CACHE_CONTROL, CDN_CACHE_CONTROL]
        .iter()
        .find_map(|name| parse(&res.headers, name).filter(|d| !d.is_empty()));
    let directives = match targeted {
        Some(directives) => {
            // RFC 9213 §2.1: the targeted field replaces Cache-Control and
            // Expires (and so Pragma, their fallback) for this cache.
            copy.headers.remove(header::EXPIRES);
            copy.headers.remove(header::PRAGMA);
            directives
        }
        None => parse(&res.headers, &header::CACHE_CONTROL)?,
    };
    copy.headers.remove(header::CACHE_CONTROL);
    if !directives.is_empty() {
        copy.headers
            .insert(header::CACHE_CONTROL, canonical(&directives)?);
    }
    let pragma: Option<Vec<_>> = copy
        .headers
        .get_all(header::PRAGMA)
        .iter()
        .map(|v| HeaderValue::from_str(&v.to_str().ok()?.to_ascii_lowercase()).ok())
        .collect();
    copy.headers.remove(header::PRAGMA);
    for v in pragma? {
        copy.headers.append(header::PRAGMA, v);
    }
    if copy.headers.contains_key(header::AGE) {
        let age = single(&copy.headers, &header::AGE)
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            // Digits beyond u64 are a huge age all the same.
            .map_or(MAX_DELTA.as_secs(), |v| {
                v.parse::<u64>()
                    .unwrap_or(u64::MAX)
                    .min(MAX_DELTA.as_secs())
            });
        copy.headers.insert(header::AGE, HeaderValue::from(age));
    }
    if copy.headers.contains_key(header::EXPIRES) {
        let expires = single(&copy.headers, &header::EXPIRES)
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .map(httpdate::fmt_http_date)
            .unwrap_or_else(|| ALREADY_EXPIRED.to_owned());
        let value = HeaderValue::from_str(&expires).ok()?;
        copy.headers.insert(header::EXPIRES, value);
    }
    Some(copy)
}

/// Removes what only digue may read before a response goes downstream:
/// `Digue-Cache-Control` always, `CDN-Cache-Control` when the site says no
/// cache further down is meant by it.
pub fn strip_downstream(headers: &mut HeaderMap, strip_cdn: bool) {
    headers.remove(DIGUE_CACHE_CONTROL);
    if strip_cdn {
        headers.remove(CDN_CACHE_CONTROL);
    }
}

/// The value of the only line of `name`, or `None` if it has several or is
/// not text (RFC 9111 §4.2.3, §5.3: more than one value is invalid).
fn single<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    if lines.next().is_some() {
        return None;
    }
    first.to_str().ok().map(str::trim)
}

/// One directive: lower-cased name, and its argument unquoted.
#[derive(Debug, PartialEq, Eq)]
struct Directive {
    name: String,
    value: Option<String>,
}

/// The directives of every line of `name`, combined as one list (RFC 9110
/// §5.3). `None` when a line is not text or its syntax is broken (an
/// unterminated quoted string): what it says cannot be known.
fn parse(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<Directive>> {
    let mut out = Vec::new();
    for line in headers.get_all(name) {
        parse_line(line.to_str().ok()?, &mut out)?;
    }
    Some(out)
}

fn parse_line(line: &str, out: &mut Vec<Directive>) -> Option<()> {
    let mut rest = line.as_bytes();
    loop {
        rest = trim_start(rest, |b| b == b',' || b == b' ' || b == b'\t');
        if rest.is_empty() {
            return Some(());
        }
        let end = rest
            .iter()
            .position(|b| matches!(b, b'=' | b',' | b' ' | b'\t' | b';'))
            .unwrap_or(rest.len());
        let name = std::str::from_utf8(&rest[..end]).ok()?.to_ascii_lowercase();
        rest = trim_start(&rest[end..], |b| b == b' ' || b == b'\t');
        let mut value = None;
        if let Some((b'=', after)) = rest.split_first() {
            let after = trim_start(after, |b| b == b' ' || b == b'\t');
            let (v, tail) = match after.split_first() {
                Some((b'"', quoted)) => quoted_string(quoted)?,
                _ => {
                    let end = after
                        .iter()
                        .position(|b| matches!(b, b',' | b' ' | b'\t' | b';'))
                        .unwrap_or(after.len());
                    (
                        String::from_utf8(after[..end].to_vec()).ok()?,
                        &after[end..],
                    )
                }
            };
            value = Some(v);
            rest = tail;
        }
        // Parameters (`;`, structured-field style) and junk up to the next
        // comma belong to this directive, outside any quoted string.
        let end = rest.iter().position(|b| *b == b',').unwrap_or(rest.len());
        if rest[..end].contains(&b'"') {
            return None;
        }
        rest = &rest[end..];
        out.push(Directive { name, value });
    }
}

/// The content of a quoted string whose opening quote is consumed, and what
/// follows its closing quote (RFC 9110 §5.6.4).
fn quoted_string(s: &[u8]) -> Option<(String, &[u8])> {
    let mut value = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return Some((String::from_utf8(value).ok()?, &s[i + 1..])),
            b'\\' => {
                value.push(*s.get(i + 1)?);
                i += 2;
            }
            b => {
                value.push(b);
                i += 1;
            }
        }
    }
    None
}

fn trim_start(s: &[u8], skip: impl Fn(u8) -> bool) -> &[u8] {
    let start = s.iter().position(|b| !skip(*b)).unwrap_or(s.len());
    &s[start..]
}

/// The directives that matter, written so a naive comma split reads them
/// right. A delta directive keeps its first occurrence (RFC 9111 §4.2.1);
/// one whose argument is not a number becomes 0, the most restrictive.
fn canonical(directives: &[Directive]) -> Option<HeaderValue> {
    let mut parts: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for d in directives {
        let name = d.name.as_str();
        if seen.contains(&name) {
            continue;
        }
        if DELTA_DIRECTIVES.contains(&name) {
            let secs = d
                .value
                .as_deref()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .map_or(0, |v| {
                    v.parse::<u64>()
                        .unwrap_or(u64::MAX)
                        .min(MAX_DELTA.as_secs())
                });
            parts.push(format!("{name}={secs}"));
        } else if FLAG_DIRECTIVES.contains(&name) {
            parts.push(name.to_owned());
        } else {
            continue;
        }
        seen.push(name);
    }
    HeaderValue::from_str(&parts.join(", ")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(lines: &[(&'static str, &'static [u8])]) -> response::Parts {
        let mut res = http::Response::new(()).into_parts().0;
        for (k, v) in lines {
            res.headers
                .append(*k, HeaderValue::from_bytes(v).expect("bytes"));
        }
        res
    }

    fn field(res: &response::Parts, name: HeaderName) -> Option<String> {
        normalise(res)
            .expect("readable")
            .headers
            .get(name)
            .map(|v| v.to_str().expect("text").to_owned())
    }

    #[test]
    fn quoted_strings_hide_what_they_contain() {
        let res = head(&[(
            "cache-control",
            b"no-cache=\"max-age=60, x\", foo=\"a\\\"b, max-age=90\"",
        )]);
        assert_eq!(
            field(&res, header::CACHE_CONTROL).as_deref(),
            Some("no-cache")
        );
    }

    #[test]
    fn repeated_lines_combine_and_names_fold_case() {
        let res = head(&[
            ("cache-control", b"Public"),
            ("cache-control", b" MAX-AGE=60 ,, s-maxage=\"30\""),
            ("cache-control", b"max-age=5"),
        ]);
        assert_eq!(
            field(&res, header::CACHE_CONTROL).as_deref(),
            Some("public, max-age=60, s-maxage=30")
        );
    }

    #[test]
    fn a_broken_quoted_string_makes_the_field_unreadable() {
        assert!(normalise(&head(&[("cache-control", b"max-age=60, x=\"open")])).is_none());
    }

    #[test]
    fn a_non_numeric_lifetime_is_zero() {
        let res = head(&[("cache-control", b"max-age=6O")]);
        assert_eq!(
            field(&res, header::CACHE_CONTROL).as_deref(),
            Some("max-age=0")
        );
    }

    #[test]
    fn targeted_fields_win_in_order_and_replace_expires() {
        let res = head(&[
            ("cache-control", b"no-store"),
            ("expires", b"Thu, 01 Jan 2099 00:00:00 GMT"),
            ("cdn-cache-control", b"max-age=60"),
            ("digue-cache-control", b"max-age=10, stale-if-error=5"),
        ]);
        let n = normalise(&res).expect("readable");
        assert_eq!(
            n.headers.get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
            Some(&b"max-age=10, stale-if-error=5"[..])
        );
        assert!(!n.headers.contains_key(header::EXPIRES));
        let cdn = head(&[
            ("cache-control", b"no-store"),
            ("cdn-cache-control", b"max-age=60"),
        ]);
        assert_eq!(
            field(&cdn, header::CACHE_CONTROL).as_deref(),
            Some("max-age=60")
        );
        let empty = head(&[
            ("cache-control", b"max-age=7"),
            ("digue-cache-control", b" "),
        ]);
        assert_eq!(
            field(&empty, header::CACHE_CONTROL).as_deref(),
            Some("max-age=7")
        );
    }

    #[test]
    fn an_age_that_is_not_one_integer_is_huge() {
        let huge = MAX_DELTA.as_secs().to_string();
        for bad in [&b"old, 0"[..], b"-1", b"1.5", b"", b"0x10"] {
            let res = head(&[("age", bad)]);
            assert_eq!(field(&res, header::AGE), Some(huge.clone()), "{bad:?}");
        }
        let twice = head(&[("age", b"1"), ("age", b"1")]);
        assert_eq!(field(&twice, header::AGE), Some(huge));
        assert_eq!(
            field(&head(&[("age", b"42")]), header::AGE).as_deref(),
            Some("42")
        );
    }

    #[test]
    fn an_expires_outside_rfc_9110_is_already_expired() {
        for bad in [
            &b"0"[..],
            b"Sun,  06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 +0000",
            b"Sun, 06 Nov 1994  08:49:37 GMT",
            b"2099-01-01T00:00:00Z",
        ] {
            let res = head(&[("expires", bad)]);
            assert_eq!(
                field(&res, header::EXPIRES).as_deref(),
                Some(ALREADY_EXPIRED),
                "{bad:?}"
            );
        }
        for good in [
            &b"Sun, 06 Nov 1994 08:49:37 GMT"[..],
            b"Sunday, 06-Nov-94 08:49:37 GMT",
            b"Sun Nov  6 08:49:37 1994",
        ] {
            let res = head(&[("expires", good)]);
            assert_ne!(
                field(&res, header::EXPIRES).as_deref(),
                Some(ALREADY_EXPIRED)
            );
        }
    }
}
