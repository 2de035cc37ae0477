//! One reading of a request target, shared by every decision that matches
//! paths (the waiting room's gates, cache rules): the form the origin will
//! most likely act on, not the bytes the client happened to send.
//!
//! The path is percent-decoded (`%2F` included: some origins decode before
//! routing), backslashes read as slashes (IIS, where Pronote runs),
//! `;parameters` dropped from each segment (Tomcat's `;jsessionid=`),
//! repeated slashes merged and dot-segments removed (RFC 3986 §5.2.4). The
//! query is read as decoded name/value pairs (`+` as a space), in any
//! order. Targets no origin should see — a control character (raw or
//! escaped), a broken escape in the path, a `..` above the root — are
//! [`Unreadable`]: digue answers `400` and forwards nothing.
//!
//! When two readings could disagree, the stricter one wins: a gate matches
//! if any reading does ([`Gates`]); a cache rule that shares more applies
//! only when the raw and the read path both fall under it, one that shares
//! less when either does ([`rule_for`]). The cache key stays byte-exact:
//! two spellings are two keys, which is safe.

use std::borrow::Cow;

use percent_encoding::percent_decode;

use crate::config::{CacheRule, RuleAction};
pub use crate::outcome::Unreadable;

/// A request target as read for matching.
#[derive(Debug, Clone)]
pub struct Reading<'a> {
    /// The path as sent (before `?`).
    pub raw_path: &'a str,
    /// The path as the origin will most likely act on it; borrowed when it
    /// is the raw path already (the common case costs no allocation).
    pub path: Cow<'a, [u8]>,
    /// The query as sent, without `?`.
    pub raw_query: Option<&'a str>,
}

impl<'a> Reading<'a> {
    /// The query's name/value pairs, decoded, in order (repeated names
    /// included: PHP takes the last, Java the first).
    pub fn query_pairs(&self) -> impl Iterator<Item = (Cow<'a, str>, Cow<'a, str>)> {
        form_urlencoded::parse(self.raw_query.unwrap_or("").as_bytes())
    }
}

/// Reads a request target (`/path?query`, origin-form).
pub fn read(target: &str) -> Result<Reading<'_>, Unreadable> {
    // One pass on the hit path: controls anywhere, and whether the path
    // reads as itself (nothing to decode, drop, merge or resolve).
    let bytes = target.as_bytes();
    let mut query_at = None;
    let mut plain = bytes.first() == Some(&b'/');
    let mut segment_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !NOTABLE[usize::from(b)] {
            continue;
        }
        if is_control(b) {
            return Err(Unreadable::Control);
        }
        if query_at.is_some() {
            continue;
        }
        match b {
            b'/' => {
                plain &= i == 0 || !matches!(&bytes[segment_start..i], b"" | b"." | b"..");
                segment_start = i + 1;
            }
            b'?' => {
                plain &= !matches!(&bytes[segment_start..i], b"." | b"..");
                query_at = Some(i);
            }
            b'%' | b';' | b'\\' => plain = false,
            _ => {}
        }
    }
    let path_end = query_at.unwrap_or(bytes.len());
    if query_at.is_none() {
        plain &= !matches!(&bytes[segment_start..], b"." | b"..");
    }
    let raw_path = &target[..path_end];
    let raw_query = query_at.map(|i| &target[i + 1..]);
    let path = if plain {
        Cow::Borrowed(raw_path.as_bytes())
    } else {
        Cow::Owned(normalise(raw_path)?)
    };
    Ok(Reading {
        raw_path,
        path,
        raw_query,
    })
}

/// The bytes `read` looks at: controls, and what makes a path other than
/// itself once read. Everything else is skipped with one lookup.
const NOTABLE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[0x7f] = true;
    table[b'/' as usize] = true;
    table[b'?' as usize] = true;
    table[b'%' as usize] = true;
    table[b';' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

fn normalise(raw: &str) -> Result<Vec<u8>, Unreadable> {
    let bytes = raw.as_bytes();
    for (i, _) in raw.match_indices('%') {
        let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
        if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(Unreadable::BadEscape);
        }
    }
    let decoded: Vec<u8> = percent_decode(bytes).collect();
    if decoded.iter().copied().any(is_control) {
        return Err(Unreadable::Control);
    }
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut ends_in_slash = false;
    for segment in decoded.split(|b| *b == b'/' || *b == b'\\') {
        let segment = match segment.iter().position(|b| *b == b';') {
            Some(end) => &segment[..end],
            None => segment,
        };
        ends_in_slash = true;
        match segment {
            b"" | b"." => {}
            b".." => {
                if kept.pop().is_none() {
                    return Err(Unreadable::AboveRoot);
                }
            }
            name => {
                kept.push(name);
                ends_in_slash = false;
            }
        }
    }
    let mut path = Vec::with_capacity(decoded.len() + 1);
    for segment in &kept {
        path.push(b'/');
        path.extend_from_slice(segment);
    }
    if path.is_empty() || ends_in_slash {
        path.push(b'/');
    }
    Ok(path)
}

/// A site's gated entry points, compiled from `[site.admission] paths`.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    gates: Vec<Gate>,
    case_sensitive: bool,
}

#[derive(Debug, Clone)]
struct Gate {
    /// As written, for the raw prefix comparison digue always made.
    raw: String,
    /// The path part, read like a request's.
    path: Vec<u8>,
    /// Parameters that must all be present with these values (decoded).
    query: Vec<(String, String)>,
}

impl Gates {
    /// `paths` as the config gives them; `case_sensitive` for origins known
    /// to tell `/Login` from `/login` (most portals run where they don't).
    pub fn new(paths: &[String], case_sensitive: bool) -> Gates {
        let gates = paths
            .iter()
            .map(|raw| {
                let (path, query) = match read(raw) {
                    Ok(r) => {
                        let query = r
                            .query_pairs()
                            .map(|(k, v)| (k.into_owned(), v.into_owned()))
                            .collect();
                        (r.path.into_owned(), query)
                    }
                    // Matched as written only (the config check keeps
                    // such paths out).
                    Err(_) => (raw.as_bytes().to_vec(), Vec::new()),
                };
                Gate {
                    raw: raw.clone(),
                    path,
                    query,
                }
            })
            .collect();
        Gates {
            gates,
            case_sensitive,
        }
    }

    /// Whether a request is at an entry point: by its raw target (as digue
    /// always matched), or by its reading — the path's prefix (in any case
    /// unless the site is case-sensitive) and every parameter the gate
    /// names, wherever it stands and whichever of its repeats.
    pub fn gate(&self, raw_target: &str, reading: &Reading<'_>) -> bool {
        self.gates.iter().any(|g| {
            raw_target.starts_with(g.raw.as_str())
                || (has_prefix(&reading.path, &g.path, self.case_sensitive)
                    && g.query.iter().all(|(name, value)| {
                        reading
                            .query_pairs()
                            .any(|(n, v)| self.same(&n, name) && self.same(&v, value))
                    }))
        })
    }

    fn same(&self, a: &str, b: &str) -> bool {
        if self.case_sensitive {
            a == b
        } else {
            a.eq_ignore_ascii_case(b)
        }
    }
}

/// The cache rule governing a request, the longest matching prefix. A rule
/// that shares more than the origin's headers (a forced ttl, `shared`)
/// applies only when the raw path and its reading both fall under it; a
/// `bypass` rule applies when either does, in any case unless the site is
/// case-sensitive. Readings that disagree otherwise get no rule: the
/// origin's own headers decide.
pub fn rule_for<'r>(
    rules: &'r [CacheRule],
    reading: &Reading<'_>,
    case_sensitive: bool,
) -> Option<&'r CacheRule> {
    let longest = |matches: &dyn Fn(&CacheRule) -> bool| {
        rules
            .iter()
            .filter(|r| matches(r))
            .max_by_key(|r| r.prefix.len())
    };
    if matches!(reading.path, Cow::Borrowed(_)) {
        // The hit path: one reading, so one pass.
        return plain_rule(rules, reading.raw_path.as_bytes(), case_sensitive);
    }
    let raw = longest(&|r| reading.raw_path.starts_with(&r.prefix));
    let read = longest(&|r| reading.path.starts_with(r.prefix.as_bytes()));
    let bypass = longest(&|r| {
        r.action == RuleAction::Bypass
            && (reading.raw_path.starts_with(&r.prefix)
                || has_prefix(&reading.path, r.prefix.as_bytes(), case_sensitive))
    });
    if bypass.is_some() {
        return bypass;
    }
    match (raw, read) {
        (Some(a), Some(b)) if std::ptr::eq(a, b) => Some(a),
        _ => None,
    }
}

/// [`rule_for`] when the path as sent is the path as read: the longest rule
/// it falls under, unless a bypass rule matches (in any case, unless the
/// site is case-sensitive), which wins.
fn plain_rule<'r>(
    rules: &'r [CacheRule],
    path: &[u8],
    case_sensitive: bool,
) -> Option<&'r CacheRule> {
    let mut best: Option<&CacheRule> = None;
    let mut bypass: Option<&CacheRule> = None;
    for rule in rules {
        let prefix = rule.prefix.as_bytes();
        let longer = |than: Option<&CacheRule>| than.is_none_or(|t| prefix.len() > t.prefix.len());
        if path.starts_with(prefix) && longer(best) {
            best = Some(rule);
        }
        if rule.action == RuleAction::Bypass
            && longer(bypass)
            && has_prefix(path, prefix, case_sensitive)
        {
            bypass = Some(rule);
        }
    }
    bypass.or(best)
}

/// Whether `path` starts with `prefix`, in any ASCII case unless told not to.
fn has_prefix(path: &[u8], prefix: &[u8], case_sensitive: bool) -> bool {
    path.len() >= prefix.len()
        && if case_sensitive {
            path.starts_with(prefix)
        } else {
            path[..prefix.len()].eq_ignore_ascii_case(prefix)
        }
}

#[cfg(test)]
mod tests;
