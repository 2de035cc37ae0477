//! The admin listener (`server.admin_listen`, never the public port).
//!
//! `/metrics`, `/healthz` and `/readyz` need no token. Every `/admin/` call
//! needs `Authorization: Bearer $DIGUE_ADMIN_TOKEN` (compared in constant
//! time) and is refused outright when that variable is unset: there is no
//! default password. Bodies are JSON; errors are JSON `{"error": "..."}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::App;
use crate::body::ProxyBody;
use crate::config::{AdmissionMode, default_burst};
use crate::outcome::Outcome;
use crate::{cluster, reload};

/// Largest admin request body.
const MAX_BODY_BYTES: usize = 64 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until the task is aborted.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&app, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(app: &App, req: Request<Incoming>) -> Response<ProxyBody> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if !path.starts_with("/admin/") {
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        return match path.as_str() {
            "/metrics" => {
                app.refresh_gauges();
                let mut res = Response::new(ProxyBody::full(app.metrics.render()));
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let (status, text) = readiness(app);
                text_owned(status, text)
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /healthz, /readyz, /admin/...\n",
            ),
        };
    }
    if let Err(refused) = authorize(app, &req) {
        return refused.response();
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["sites"]) => json_ok(sites(app)),
        (&Method::PATCH, ["sites", name, "admission"]) => match body::<AdmissionPatch>(req).await {
            Ok(patch) => patch_admission(app, name, patch),
            Err(refused) => refused.response(),
        },
        (&Method::PATCH, ["sites", name, "origin"]) => match body::<OriginPatch>(req).await {
            Ok(patch) => patch_origin(app, name, patch),
            Err(refused) => refused.response(),
        },
        (&Method::POST, ["purge"]) => match body::<Purge>(req).await {
            Ok(purge) => do_purge(app, &purge),
            Err(refused) => refused.response(),
        },
        (&Method::POST, ["reload"]) => match reload::reload(app) {
            Ok(()) => json_ok(json!({"status": "applied"})),
            Err(errors) => json_response(
                StatusCode::BAD_REQUEST,
                json!({
                    "error": "config refused; the running config stays",
                    "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
            ),
        },
        (_, ["sites"] | ["sites", _, "admission" | "origin"] | ["purge"] | ["reload"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    }
}

/// A refused admin call: its status and why.
struct Refused(StatusCode, String);

impl Refused {
    fn response(self) -> Response<ProxyBody> {
        error(self.0, &self.1)
    }
}

/// Checks the bearer token in constant time.
fn authorize(app: &App, req: &Request<Incoming>) -> Result<(), Refused> {
    let Some(expected) = &app.admin_token else {
        return Err(Refused(
            StatusCode::UNAUTHORIZED,
            "the admin API is disabled: set DIGUE_ADMIN_TOKEN".to_owned(),
        ));
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Refused(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".to_owned(),
        ))
    }
}

/// Compares without an early exit, so timing says nothing about how much
/// of a guess was right (only its length, which a token does not hide).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn body<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Refused> {
    let bytes: Bytes = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|_| {
            Refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large or broken".to_owned(),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("bad JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdmissionPatch {
    new_users_per_minute: Option<u32>,
    burst: Option<u32>,
    /// `null` removes the cap; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    max_active_users: Option<Option<u32>>,
    mode: Option<String>,
}

/// Tells `"key": null` (Some(None)) from an absent key (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginPatch {
    origin_concurrency: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    site: String,
    path: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    hard: bool,
}

fn patch_admission(app: &App, name: &str, patch: AdmissionPatch) -> Response<ProxyBody> {
    let mode = match patch.mode.as_deref().map(AdmissionMode::parse) {
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "mode must be one of auto, queue_all, passthrough, closed",
            );
        }
        Some(Some(m)) => Some(m),
        None => None,
    };
    if patch.burst == Some(0) || patch.max_active_users == Some(Some(0)) {
        return error(
            StatusCode::BAD_REQUEST,
            "burst and max_active_users must be at least 1",
        );
    }
    let changed = reload::change_site(app, name, |site| {
        let Some(a) = &mut site.admission else {
            return Err("this site has no [site.admission]".to_owned());
        };
        if let Some(rate) = patch.new_users_per_minute {
            // A burst left to its default follows the rate; one the file
            // set on its own stays.
            let derived = a.burst == default_burst(a.new_users_per_minute);
            a.new_users_per_minute = rate;
            if patch.burst.is_none() && derived {
                a.burst = default_burst(rate);
            }
        }
        if let Some(burst) = patch.burst {
            a.burst = burst;
        }
        if let Some(max) = patch.max_active_users {
            a.max_active_users = max;
        }
        if let Some(mode) = mode {
            a.mode = mode;
        }
        Ok(())
    });
    applied(app, name, changed, "admission")
}

fn patch_origin(app: &App, name: &str, patch: OriginPatch) -> Response<ProxyBody> {
    if patch.origin_concurrency == 0 {
        return error(
            StatusCode::BAD_REQUEST,
            "origin_concurrency must be at least 1",
        );
    }
    let changed = reload::change_site(app, name, |site| {
        site.origin_concurrency = patch.origin_concurrency;
        Ok(())
    });
    applied(app, name, changed, "origin")
}

fn applied(
    app: &App,
    name: &str,
    changed: Option<Result<(), String>>,
    kind: &str,
) -> Response<ProxyBody> {
    match changed {
        None => error(StatusCode::NOT_FOUND, &format!("no site named {name:?}")),
        Some(Err(e)) => error(StatusCode::CONFLICT, &e),
        Some(Ok(())) => {
            app.metrics.admin_changes.with_label_values(&[kind]).inc();
            tracing::info!(
                site = name,
                kind,
                "live setting changed through the admin API"
            );
            if let (Some(cluster), Some(settings)) = (&app.cluster, cluster::settings_of(app, name))
            {
                let event = cluster::Event::Settings {
                    site: name.to_owned(),
                    settings,
                    from: cluster.node.clone(),
                };
                let cluster = cluster.clone();
                tokio::spawn(async move { cluster.publish(&event).await });
            }
            json_ok(site_state(app, name).unwrap_or(Value::Null))
        }
    }
}

fn do_purge(app: &App, purge: &Purge) -> Response<ProxyBody> {
    if !app
        .snapshot()
        .sites
        .iter()
        .any(|s| s.config.name == purge.site)
    {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no site named {:?}", purge.site),
        );
    }
    let purged = match (&purge.path, &purge.prefix) {
        (Some(path), None) if path.starts_with('/') => {
            app.store.purge(&purge.site, |t| t == path, purge.hard)
        }
        (None, Some(prefix)) if prefix.starts_with('/') => {
            app.store
                .purge(&purge.site, |t| t.starts_with(prefix.as_str()), purge.hard)
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "give exactly one of \"path\" or \"prefix\", starting with '/'",
            );
        }
    };
    app.metrics
        .admin_changes
        .with_label_values(&["purge"])
        .inc();
    tracing::info!(site = %purge.site, purged, hard = purge.hard, "purge");
    if let Some(cluster) = &app.cluster {
        let event = cluster::Event::Purge {
            site: purge.site.clone(),
            path: purge.path.clone(),
            prefix: purge.prefix.clone(),
            hard: purge.hard,
            from: cluster.node.clone(),
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.publish(&event).await });
    }
    json_ok(json!({"site": purge.site, "purged": purged, "hard": purge.hard}))
}

fn sites(app: &App) -> Value {
    let snapshot = app.snapshot();
    let sites: Vec<Value> = snapshot
        .sites
        .iter()
        .filter_map(|s| site_state(app, &s.config.name))
        .collect();
    json!({ "sites": sites })
}

/// The live state of one site, as `GET /admin/sites` shows it.
fn site_state(app: &App, name: &str) -> Option<Value> {
    let snapshot = app.snapshot();
    let site = snapshot.sites.iter().find(|s| s.config.name == name)?;
    let (entries, bytes) = app.store.site_usage(name);
    let m = &site.metrics;
    let count = |o: Outcome| m.requests_of(o);
    let served = count(Outcome::Hit) + count(Outcome::Stale) + count(Outcome::Collapsed);
    let lookups = served + count(Outcome::Miss);
    let admission = match (&site.gate, &site.config.admission) {
        (Some(gate), Some(cfg)) => {
            let status = gate.status(cfg, tokio::time::Instant::now());
            json!({
                "mode": cfg.mode.as_str(),
                "new_users_per_minute": cfg.new_users_per_minute,
                "burst": cfg.burst,
                "max_active_users": cfg.max_active_users,
                "line_length": status.waiting,
                "turns_unclaimed": status.unclaimed,
                "admissions_per_second": status.rate,
                "sessions_active": gate.sessions_active(),
            })
        }
        _ => Value::Null,
    };
    Some(json!({
        "name": name,
        "cache": {
            "entries": entries,
            "bytes": bytes,
            "hit_ratio": if lookups == 0 { 0.0 } else { served as f64 / lookups as f64 },
        },
        "origin": {
            "in_flight": site.metrics.origin_in_flight.get(),
            "origin_concurrency": site.guard.limit(),
        },
        "admission": admission,
    }))
}

fn json_ok(value: Value) -> Response<ProxyBody> {
    json_response(StatusCode::OK, value)
}

fn error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    json_response(status, json!({ "error": message }))
}

fn json_response(status: StatusCode, value: Value) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(value.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

/// Ready whenever the config is loaded and the listeners are up (this
/// answer proves both); says which mode the node is in.
fn readiness(app: &App) -> (StatusCode, String) {
    if app.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: shutting down, in-flight requests finishing\n".to_owned(),
        );
    }
    let text = match &app.cluster {
        None => "ready: standalone\n".to_owned(),
        Some(c) if c.up() => format!("ready: cluster, node {}, shared store reachable\n", c.node),
        Some(c) => format!(
            "ready: cluster, node {}, shared store UNREACHABLE: failing {}\n",
            c.node,
            match c.config.on_store_failure {
                crate::config::StoreFailure::Static => "static",
                crate::config::StoreFailure::Open => "open",
                crate::config::StoreFailure::Closed => "closed",
            }
        ),
    };
    (StatusCode::OK, text)
}

fn text_owned(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut res = text(status, "");
    *res.body_mut() = ProxyBody::full(body);
    res
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut res = Response::new(ProxyBody::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-token", b"secret-tokeN"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
    }
}
