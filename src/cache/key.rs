//! Cache keys: site, scheme, host and request target, plus the normalised
//! values of the headers a response varies on.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};

/// Identifies one stored response. A boxed string: a hit builds one and
/// drops it (one allocation); clones happen only on the miss path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Box<str>);

/// Separates key parts; cannot appear in a host, a request target or a
/// header value that passed hyper's parser.
const SEP: char = '\u{0}';

impl CacheKey {
    /// The key of a URL on a site. `scheme` is the one the origin is told
    /// (an `http` answer may be a redirect to `https`); `host` is lower-case.
    pub fn primary(site: &str, scheme: &str, host: &str, target: &str) -> CacheKey {
        let len = site.len() + scheme.len() + host.len() + target.len() + 3;
        let mut k = String::with_capacity(len);
        k.push_str(site);
        k.push(SEP);
        k.push_str(scheme);
        k.push(SEP);
        k.push_str(host);
        k.push(SEP);
        k.push_str(target);
        CacheKey(k.into_boxed_str())
    }

    /// The key of the variant of this URL selected by `headers`.
    pub fn variant(&self, vary: &[HeaderName], headers: &HeaderMap) -> CacheKey {
        let mut k = String::with_capacity(self.0.len() + 32);
        k.push_str(&self.0);
        for name in vary {
            k.push(SEP);
            k.push_str(name.as_str());
            k.push('=');
            normalise_into(&mut k, headers, name);
        }
        CacheKey(k.into_boxed_str())
    }

    /// Whether this is the key of a variant of `primary`.
    pub fn is_variant_of(&self, primary: &CacheKey) -> bool {
        self.0
            .strip_prefix(&*primary.0)
            .is_some_and(|rest| rest.starts_with(SEP))
    }

    /// The site name this key belongs to.
    pub fn site(&self) -> &str {
        self.0.split(SEP).next().unwrap_or_default()
    }

    /// The request target (path and query) of this key.
    pub fn target(&self) -> &str {
        self.0.split(SEP).nth(3).unwrap_or_default()
    }

    /// Bytes this key takes, for the cache weigher.
    pub fn weight(&self) -> usize {
        self.0.len()
    }
}

/// Appends a canonical form of a header's values: every line of the header
/// joined, list items trimmed of surrounding spaces, so `gzip,br` and
/// `gzip, br` share a variant. Case and order are kept (cookie values are
/// case-sensitive, `Accept-Language` order is a priority), and bytes outside
/// printable ASCII are %-escaped, so distinct values never share a key.
fn normalise_into(out: &mut String, headers: &HeaderMap, name: &HeaderName) {
    let mut first = true;
    for value in headers.get_all(name) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            for &b in item {
                if b.is_ascii_graphic() && b != b'%' || b == b' ' {
                    out.push(char::from(b));
                } else {
                    out.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
}

/// What a response's `Vary` header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vary {
    /// No `Vary`: one response for every request.
    None,
    /// `Vary: *`: never reusable.
    Any,
    /// The request headers that select the variant.
    Headers(Arc<[HeaderName]>),
}

impl Vary {
    pub fn of(response: &HeaderMap) -> Vary {
        let mut names: Vec<HeaderName> = Vec::new();
        for value in response.get_all(http::header::VARY) {
            let Ok(value) = value.to_str() else {
                return Vary::Any;
            };
            for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if item == "*" {
                    return Vary::Any;
                }
                match HeaderName::from_bytes(item.as_bytes()) {
                    Ok(name) => names.push(name),
                    Err(_) => return Vary::Any,
                }
            }
        }
        if names.is_empty() {
            return Vary::None;
        }
        names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        Vary::Headers(names.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn equivalent_header_values_share_a_variant() {
        let base = CacheKey::primary("portal", "https", "ent.example.fr", "/a?b=1");
        let vary = [http::header::ACCEPT_ENCODING];
        let a = base.variant(&vary, &headers(&[("accept-encoding", "gzip, br")]));
        let b = base.variant(&vary, &headers(&[("accept-encoding", "gzip,br")]));
        let c = base.variant(&vary, &headers(&[("accept-encoding", "gzip")]));
        let d = base.variant(&vary, &headers(&[("accept-encoding", "br, gzip")]));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d, "order is kept: it can be a priority");
        assert_eq!(a.site(), "portal");
        assert_eq!(a.target(), "/a?b=1");
    }

    #[test]
    fn http_and_https_never_share_a_key() {
        let http = CacheKey::primary("portal", "http", "ent.example.fr", "/");
        let https = CacheKey::primary("portal", "https", "ent.example.fr", "/");
        assert_ne!(http, https);
        assert_eq!(https.target(), "/", "the target is still found for purges");
    }

    #[test]
    fn distinct_values_never_share_a_variant() {
        let base = CacheKey::primary("portal", "https", "h", "/");
        let vary = [http::header::COOKIE];
        let raw = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(
                http::header::COOKIE,
                HeaderValue::from_bytes(v).expect("valid"),
            );
            base.variant(&vary, &h)
        };
        assert_ne!(raw(b"t=abc"), raw(b"t=ABC"), "case matters");
        assert_ne!(
            raw("p=\u{c9}ric".as_bytes()),
            raw("p=\u{c9}lodie".as_bytes())
        );
        assert_ne!(
            raw("p=\u{c9}".as_bytes()),
            base.variant(&vary, &HeaderMap::new())
        );
        assert_ne!(
            raw(b"p=%C3%89"),
            raw("p=\u{c9}".as_bytes()),
            "escapes are escaped"
        );
    }

    #[test]
    fn vary_star_or_garbage_means_never_reusable() {
        assert_eq!(Vary::of(&headers(&[("vary", "accept, *")])), Vary::Any);
        assert_eq!(Vary::of(&headers(&[("vary", "bad header")])), Vary::Any);
        assert_eq!(Vary::of(&HeaderMap::new()), Vary::None);
        let Vary::Headers(names) = Vary::of(&headers(&[("vary", "Cookie"), ("vary", "accept")]))
        else {
            panic!("two names expected");
        };
        assert_eq!(names.len(), 2);
    }
}
