//! The connection pools toward an origin and the sending of one request:
//! pooled keep-alive connections (plain, or TLS by [`super::tls`]), the
//! response-head deadline, and how a failure reads (connect, TLS, timeout,
//! protocol, or the client's own body).

use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Uri, Version, request};
use http_body::Body;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::connection::{Answered, Marking};
use super::headers::{strip_hop_by_hop, toward_origin};
use super::tls::{self, Material, Within};
use super::{Asker, UpstreamBody};
use crate::cache::coalesce::Failure;
use crate::config::{OriginConfig, OriginTls};
use crate::outcome::OriginErrorKind;

/// How long an idle pooled connection is kept. Below the 15-20 s keep-alive
/// of common portal stacks (Tomcat, Apache), so digue closes first and rarely
/// races an origin that is closing the same connection.
const POOL_IDLE: Duration = Duration::from_secs(10);

/// The connection pool toward a backend, one variant per kind of
/// connection, behind the same [`call_origin`](super::call_origin).
enum Upstream {
    Http(Client<Marking<HttpConnector>, UpstreamBody>),
    /// An `https://` origin, and what its TLS was built from (compared
    /// on reload).
    Https(Client<Marking<HttpsVia>, UpstreamBody>, Material),
}

/// TLS over TCP, the whole connection within the connect timeout.
type HttpsVia = Within<HttpsConnector<HttpConnector>>;

impl Upstream {
    /// Fails when the origin's TLS files cannot be used (changed since the
    /// preflight read them).
    fn new(origin: &OriginConfig, url: &Uri, idle: usize) -> Result<Upstream, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(origin.connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(idle);
        let Some(tls) = origin
            .tls
            .as_ref()
            .filter(|_| url.scheme_str() == Some("https"))
        else {
            return Ok(Upstream::Http(builder.build(Marking(connector))));
        };
        let material = Material::load(tls).map_err(|errors| {
            let each: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.key, e.message))
                .collect();
            each.join("; ")
        })?;
        let https = tls::connector(tls, &material, url, connector, origin.connect_timeout)?;
        // HTTP/2 when ALPN says so, HTTP/1.1 otherwise: one h2 connection
        // carries many requests; the guard still counts each request.
        builder.http2_only(false);
        Ok(Upstream::Https(builder.build(Marking(https)), material))
    }

    /// Whether this pool's TLS was built from `tls` as the files read now.
    fn same_material(&self, tls: Option<&OriginTls>) -> bool {
        match (self, tls) {
            (Upstream::Http(_), None) => true,
            (Upstream::Https(_, material), Some(tls)) => {
                Material::load(tls).is_ok_and(|now| now == *material)
            }
            _ => false,
        }
    }

    pub(super) async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Upstream::Http(client) => client.request(req).await,
            Upstream::Https(client, _) => client.request(req).await,
        }
    }
}

/// The connections toward one backend, and the address requests are sent to.
pub struct Pool {
    upstream: Upstream,
    /// `http://host:port` of the backend.
    base: Uri,
}

impl Pool {
    /// The pool toward `url`, one of the origin's backends, keeping at most
    /// `idle` idle connections. Fails when the origin's TLS files cannot be
    /// used.
    pub fn new(origin: &OriginConfig, url: &Uri, idle: usize) -> Result<Pool, String> {
        Ok(Pool {
            upstream: Upstream::new(origin, url, idle)?,
            base: url.clone(),
        })
    }

    /// Whether the TLS files of `config` (built from the same settings)
    /// still hold what this pool was built from: a CA renewed under the
    /// same path must take effect on reload.
    pub fn tls_unchanged(&self, config: &OriginConfig) -> bool {
        self.upstream.same_material(config.tls.as_ref())
    }

    /// The backend's URL for `path_and_query`.
    pub(super) fn uri(&self, path_and_query: &str) -> Uri {
        let mut uri = self.base.clone().into_parts();
        uri.path_and_query = path_and_query.parse().ok();
        Uri::from_parts(uri).unwrap_or_else(|_| self.base.clone())
    }

    /// Builds the request to send upstream from a downstream request's head.
    /// `host`: the `Host` the origin is told.
    pub(super) fn request(
        &self,
        parts: &request::Parts,
        asker: Asker<'_>,
        host: HeaderValue,
        body: UpstreamBody,
    ) -> Request<UpstreamBody> {
        let uri = self.uri(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()));
        let mut headers = toward_origin(parts, asker, host);
        // A body of unknown length (chunked, or an HTTP/2 stream without
        // Content-Length) must be sent chunked: hyper's client would send a
        // GET or HEAD without it, and the origin would not see the request
        // that digue read and classified.
        if !body.is_end_stream() && !headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }

        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        req
    }

    /// Sends a request and waits until `deadline` for the response head.
    pub(super) async fn send(
        &self,
        req: Request<UpstreamBody>,
        deadline: Instant,
    ) -> Result<Response<Incoming>, SendFailed> {
        let failed = |kind, on_reused| {
            Err(SendFailed {
                failure: Failure::Origin(kind),
                on_reused,
            })
        };
        match tokio::time::timeout_at(deadline, self.upstream.send(req)).await {
            Err(_) => failed(OriginErrorKind::Timeout, false),
            Ok(Err(e)) if request_body_failed(&e) => Err(SendFailed {
                failure: Failure::RequestBody,
                on_reused: false,
            }),
            Ok(Err(e)) => {
                // A TLS failure shows at connect (an untrusted certificate)
                // or at the first read (TLS 1.3 origins refuse a client
                // certificate after the client's handshake is done).
                let kind = match tls::failure(&e) {
                    Some(tls) => {
                        tracing::warn!(origin = %self.base, error = %tls, "TLS with the origin failed");
                        OriginErrorKind::Tls
                    }
                    None if e.is_connect() => OriginErrorKind::Connect,
                    None => OriginErrorKind::Protocol,
                };
                failed(kind, Answered::before(&e))
            }
            Ok(Ok(mut res)) => {
                Answered::mark(res.extensions());
                strip_hop_by_hop(res.headers_mut());
                Ok(res)
            }
        }
    }
}

/// A request the origin did not answer.
pub(super) struct SendFailed {
    pub failure: Failure,
    /// It failed on a connection that had answered before, before any
    /// answer to it: a fresh connection may well succeed.
    pub on_reused: bool,
}

/// Whether the client's request body, as hyper's client relayed it, is what
/// failed: hyper reports a failing request body as a user error caused by
/// the body's own error, and the only body digue sends that can fail is the
/// client's (a [`hyper::Error`] from the downstream connection).
fn request_body_failed(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(hyper) = err.downcast_ref::<hyper::Error>() {
            return hyper.is_user()
                && std::error::Error::source(hyper)
                    .is_some_and(|cause| cause.is::<hyper::Error>());
        }
        source = err.source();
    }
    false
}
