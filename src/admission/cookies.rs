//! digue's own cookies: found in requests by bytes, written with the
//! attributes the issue of privacy and SSO asks for, and never forwarded to
//! the origin.

use http::header::{self, HeaderMap, HeaderValue};

/// The place in line.
pub const TICKET: &str = "digue_ticket";
/// The right to enter.
pub const PASS: &str = "digue_pass";
/// The backend that holds the visitor's session (several backends only).
pub const BACKEND: &str = "digue_backend";

/// The value of one of digue's cookies in a request, if present (the first
/// one sent).
pub fn find<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    find_all(headers, name).next()
}

/// Every value sent for the cookie `name`, in order: a browser sends two
/// when two were set for different paths or domains, and an attacker can
/// put a junk one first.
pub fn find_all<'a, 'n>(
    headers: &'a HeaderMap,
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let value = pair.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            std::str::from_utf8(value).ok()
        })
}

/// Removes digue's cookies from a request going to the origin, which has
/// no use for them.
pub fn strip(headers: &mut HeaderMap) {
    remove(headers, |name| {
        name == TICKET.as_bytes() || name == PASS.as_bytes() || name == BACKEND.as_bytes()
    });
}

/// Removes from the `Cookie` headers every cookie whose name `doomed`
/// picks. Works on bytes: browsers send non-ASCII cookie values.
pub fn remove(headers: &mut HeaderMap, doomed: impl Fn(&[u8]) -> bool) {
    let picked = |pair: &[u8]| {
        let pair = pair.trim_ascii();
        let name = pair.split(|b| *b == b'=').next().unwrap_or(pair);
        pair.contains(&b'=') && doomed(name.trim_ascii())
    };
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if !values
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b';').any(picked))
    {
        return;
    }
    headers.remove(header::COOKIE);
    for v in values {
        let kept: Vec<&[u8]> = v
            .as_bytes()
            .split(|b| *b == b';')
            .filter(|p| !picked(p))
            .map(<[u8]>::trim_ascii)
            .collect();
        if kept.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
            headers.append(header::COOKIE, v);
        }
    }
}

/// How digue's cookies are written for one site.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub tls: bool,
    pub domain: Option<&'a str>,
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure` on
/// TLS, and `Domain` when the site shares passes across subdomains (SSO).
pub fn set(name: &str, value: &str, max_age_secs: u64, attrs: &Attributes<'_>) -> HeaderValue {
    written(name, value, Some(max_age_secs), attrs)
}

/// Like [`set`], for a cookie that ends with the browser session.
pub fn set_for_session(name: &str, value: &str, attrs: &Attributes<'_>) -> HeaderValue {
    written(name, value, None, attrs)
}

fn written(
    name: &str,
    value: &str,
    max_age_secs: Option<u64>,
    attrs: &Attributes<'_>,
) -> HeaderValue {
    let mut s = format!("{name}={value}; Path=/");
    if let Some(secs) = max_age_secs {
        s.push_str(&format!("; Max-Age={secs}"));
    }
    s.push_str("; HttpOnly; SameSite=Lax");
    if attrs.tls {
        s.push_str("; Secure");
    }
    if let Some(d) = attrs.domain {
        s.push_str("; Domain=");
        s.push_str(d);
    }
    HeaderValue::from_str(&s).expect("invariant: token and domain are visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cookies_are_found_and_stripped_from_the_origin_request() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("JSESSIONID=a; digue_pass=p.q; digue_ticket=t.u; x=1"),
        );
        assert_eq!(find(&h, PASS), Some("p.q"));
        assert_eq!(find(&h, TICKET), Some("t.u"));
        strip(&mut h);
        assert_eq!(h[header::COOKIE], "JSESSIONID=a; x=1");
        let mut only = HeaderMap::new();
        only.insert(header::COOKIE, HeaderValue::from_static("digue_pass=p"));
        strip(&mut only);
        assert!(
            !only.contains_key(header::COOKIE),
            "an emptied header goes away"
        );
    }

    #[test]
    fn cookies_carry_the_privacy_and_sso_attributes() {
        let plain = set(
            PASS,
            "v",
            60,
            &Attributes {
                tls: false,
                domain: None,
            },
        );
        assert_eq!(
            plain,
            "digue_pass=v; Path=/; Max-Age=60; HttpOnly; SameSite=Lax"
        );
        let sso = set(
            PASS,
            "v",
            60,
            &Attributes {
                tls: true,
                domain: Some("ent.example.fr"),
            },
        );
        assert!(
            sso.to_str()
                .expect("ascii")
                .ends_with("; Secure; Domain=ent.example.fr")
        );
    }
}
