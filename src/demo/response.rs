//! Building the portal's responses: content types, and the rule that
//! per-user answers are never cacheable.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

pub(super) type Body = Full<Bytes>;

pub(super) const HTML: &str = "text/html; charset=utf-8";
pub(super) const TEXT: &str = "text/plain; charset=utf-8";
pub(super) const JSON: &str = "application/json; charset=utf-8";

pub(super) fn page(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Per-user answers must never land in a shared cache, errors included.
pub(super) fn private_json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = page(status, JSON, value.to_string());
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    resp
}

/// Every dynamic value the portal emits is ASCII it built itself, so a
/// rejected value is a bug worth a log line, not worth failing the request.
pub(super) fn set_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    match HeaderValue::from_str(value) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => tracing::warn!(%name, "demo portal built an invalid header value"),
    }
}
