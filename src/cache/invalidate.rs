//! Invalidation after unsafe methods (RFC 9111 §4.4): a teacher who posts
//! a homework entry and reloads the page must not get the copy from before.
//!
//! The stored responses for the request target, and for the `Location` and
//! `Content-Location` targets on the same host, are marked stale, not
//! dropped: the next request waits for the origin (coalesced), and a failing
//! origin can still be covered by `stale_if_error`. Other nodes of a cluster
//! hear it as a soft purge of the same paths, marked `invalidate`.

use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Uri, request};

use crate::App;
use crate::cache::key::CacheKey;
use crate::cluster::Event;

/// Whether a response to `method` with `status` invalidates: a method not
/// known to be safe (RFC 9110 §9.2.1), and a non-error status.
pub fn applies(method: &Method, status: StatusCode) -> bool {
    let safe = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    !safe && (status.is_success() || status.is_redirection())
}

/// Where the request was served from: the parts of its cache key.
pub struct Origin<'a> {
    pub site: &'a str,
    pub scheme: &'a str,
    /// Lower-cased, port included (see `CacheKey::primary`).
    pub host: &'a str,
}

/// Invalidates what the response `res_headers` to `req` makes stale, here
/// and across the cluster; returns how many stored responses were marked.
pub fn invalidate(
    app: &App,
    at: &Origin<'_>,
    req: &request::Parts,
    res_headers: &HeaderMap,
) -> usize {
    let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let now = app.clock.now();
    let mut marked = 0;
    for path in targets(target, at, res_headers) {
        let primary = CacheKey::primary(at.site, at.scheme, at.host, &path);
        marked += app.store.invalidate(&primary, now.instant);
        if let Some(cluster) = &app.cluster {
            let event = Event::Purge {
                site: at.site.to_owned(),
                path: Some(path),
                prefix: None,
                hard: false,
                invalidate: true,
                from: cluster.node.clone(),
                at: now.unix_millis(),
            };
            let cluster = cluster.clone();
            tokio::spawn(async move { cluster.publish(&event).await });
        }
    }
    marked
}

/// The request target, then the same-host `Location` and `Content-Location`
/// targets, without repeats.
fn targets(target: &str, at: &Origin<'_>, res_headers: &HeaderMap) -> Vec<String> {
    let mut out = vec![target.to_owned()];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let found = res_headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| same_host_target(v.trim(), target, at));
        if let Some(t) = found
            && !out.contains(&t)
        {
            out.push(t);
        }
    }
    out
}

/// The request target a `Location`-like reference names, when it is on the
/// host the request went to (RFC 9111 §4.4: never another host, which a
/// response must not be able to invalidate).
fn same_host_target(reference: &str, base: &str, at: &Origin<'_>) -> Option<String> {
    let reference = reference.split('#').next().unwrap_or_default();
    if reference.is_empty() {
        return None;
    }
    if reference.starts_with("//") {
        return same_host_target(&format!("{}:{reference}", at.scheme), base, at);
    }
    if reference.starts_with('/') {
        return Some(reference.to_owned());
    }
    let has_scheme = reference
        .split_once(':')
        .is_some_and(|(s, _)| !s.is_empty() && !s.contains(['/', '?']));
    if has_scheme {
        let uri: Uri = reference.parse().ok()?;
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let authority = uri.authority()?.as_str().to_ascii_lowercase();
        if scheme != at.scheme
            || without_default_port(&authority, &scheme) != without_default_port(at.host, at.scheme)
        {
            return None;
        }
        return Some(
            uri.path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned(),
        );
    }
    // A relative path: resolved against the request path's directory.
    let path = base.split('?').next().unwrap_or("/");
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let resolved = if reference.starts_with('?') {
        format!("{path}{reference}")
    } else {
        format!("{dir}{reference}")
    };
    resolved.starts_with('/').then_some(resolved)
}

fn without_default_port<'a>(authority: &'a str, scheme: &str) -> &'a str {
    let default = if scheme == "https" { ":443" } else { ":80" };
    authority.strip_suffix(default).unwrap_or(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: Origin<'static> = Origin {
        site: "ent",
        scheme: "https",
        host: "ent.example.fr",
    };

    fn resolve(reference: &str) -> Option<String> {
        same_host_target(reference, "/cahier/devoirs?classe=3B", &AT)
    }

    #[test]
    fn unsafe_methods_invalidate_on_non_error_statuses_only() {
        let patch = Method::PATCH;
        let unknown = Method::from_bytes(b"PURGEIT").expect("token");
        for m in [Method::POST, Method::PUT, Method::DELETE, patch, unknown] {
            assert!(applies(&m, StatusCode::OK), "{m}");
            assert!(applies(&m, StatusCode::SEE_OTHER), "{m}");
            assert!(!applies(&m, StatusCode::NOT_FOUND), "{m}");
            assert!(!applies(&m, StatusCode::BAD_GATEWAY), "{m}");
        }
        for m in [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE] {
            assert!(!applies(&m, StatusCode::OK), "{m}");
        }
    }

    #[test]
    fn references_on_the_same_host_resolve_to_targets() {
        assert_eq!(resolve("/cahier/liste").as_deref(), Some("/cahier/liste"));
        assert_eq!(
            resolve("https://ENT.example.fr:443/a?b#frag").as_deref(),
            Some("/a?b")
        );
        assert_eq!(resolve("//ent.example.fr/x").as_deref(), Some("/x"));
        assert_eq!(resolve("liste?p=2").as_deref(), Some("/cahier/liste?p=2"));
        assert_eq!(
            resolve("?classe=4A").as_deref(),
            Some("/cahier/devoirs?classe=4A")
        );
    }

    #[test]
    fn references_to_another_host_or_scheme_are_ignored() {
        for other in [
            "https://evil.example/cahier/devoirs",
            "http://ent.example.fr/cahier/devoirs",
            "//evil.example/x",
            "https://ent.example.fr:8443/x",
            "",
        ] {
            assert_eq!(resolve(other), None, "{other}");
        }
    }
}
