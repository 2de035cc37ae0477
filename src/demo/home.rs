//! The home page: the one page the portal makes properly cacheable, with
//! validators that stay stable for revalidation.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use httpdate::HttpDate;

use super::assets::HOME_HTML;
use super::response::{Body, HTML, page, set_header};

/// The home page never changes during a run, so its validators are computed
/// once and stay stable for revalidation.
pub(super) struct HomePage {
    body: Bytes,
    etag: String,
    last_modified: HttpDate,
}

impl HomePage {
    pub(super) fn new() -> HomePage {
        // A fixed-key hasher keeps the ETag identical across portal restarts,
        // as a real origin's would be for unchanged content.
        let mut hasher = DefaultHasher::new();
        HOME_HTML.hash(&mut hasher);
        HomePage {
            body: Bytes::from_static(HOME_HTML.as_bytes()),
            etag: format!("\"accueil-{:016x}\"", hasher.finish()),
            last_modified: HttpDate::from(crate::clock::wall()),
        }
    }

    fn not_modified(&self, headers: &HeaderMap) -> bool {
        // RFC 9110 §13.2.2: If-Modified-Since is ignored when If-None-Match is present.
        if headers.contains_key(header::IF_NONE_MATCH) {
            return headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .map(str::trim)
                .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag);
        }
        headers
            .get(header::IF_MODIFIED_SINCE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<HttpDate>().ok())
            .is_some_and(|since| self.last_modified <= since)
    }

    pub(super) fn respond(&self, headers: &HeaderMap) -> Response<Body> {
        let mut resp = if self.not_modified(headers) {
            let mut resp = Response::new(Body::default());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp
        } else {
            page(StatusCode::OK, HTML, self.body.clone())
        };
        let h = resp.headers_mut();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=30"),
        );
        set_header(h, header::ETAG, &self.etag);
        set_header(h, header::LAST_MODIFIED, &self.last_modified.to_string());
        resp
    }
}
