//! The admin listener (`server.admin_listen`, never the public port).
//!
//! `/metrics`, `/healthz` and `/readyz` need no token. Every `/admin/` call
//! needs `Authorization: Bearer $DIGUE_ADMIN_TOKEN` (compared in constant
//! time) and is refused outright when that variable is unset: there is no
//! default password. Bodies are JSON; errors are JSON `{"error": "..."}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

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

mod events;

use crate::App;
use crate::body::ProxyBody;
use crate::cluster::Event;
use crate::config::{
    AdmissionPatch, AutopilotPatch, EventSpec, LiveSettings, OriginPatch, StoreFailure,
};
use crate::console;
use crate::origin::Mode;
use crate::outcome::Outcome;
use crate::reload::LiveRefused;

/// Largest admin request body.
const MAX_BODY_BYTES: usize = 64 * 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until the task is aborted.
pub async fn serve(listener: TcpListener, app: Arc<App>) {
    let _history = console::Recorder::start(app.clone());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(answer(app, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers one call in a task of its own: a panic there (there should be
/// none) becomes a `500`, not a reset connection, and every change it made
/// before is one that was complete (each applies at once, or not at all).
async fn answer(app: Arc<App>, req: Request<Incoming>) -> Response<ProxyBody> {
    match tokio::spawn(async move { route(&app, req).await }).await {
        Ok(res) => res,
        Err(e) => {
            tracing::error!(error = %e, "admin call failed: a bug, nothing half-applied");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; nothing was changed by half",
            )
        }
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
            "/" => console::page(&app.pages.load(), req.headers()),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let (status, text) = readiness(app);
                text_owned(status, text)
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: / (the console), /metrics, /healthz, /readyz, /admin/...\n",
            ),
        };
    }
    if let Err(refused) = authorize(app, &req) {
        return refused.response();
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["sites"]) => json_ok(sites(app)),
        (&Method::GET, ["console"]) => {
            let since = console::since(req.uri().query());
            json_ok(console::poll(app, since, |name| site_state(app, name)))
        }
        (&Method::PATCH, ["sites", name, "admission"]) => match body::<AdmissionPatch>(req).await {
            Ok(patch) => patch_admission(app, name, &patch),
            Err(refused) => refused.response(),
        },
        (&Method::PATCH, ["sites", name, "origin"]) => match body::<OriginPatch>(req).await {
            Ok(patch) => patch_origin(app, name, &patch),
            Err(refused) => refused.response(),
        },
        (&Method::PATCH, ["sites", name, "autopilot"]) => match body::<AutopilotPatch>(req).await {
            Ok(patch) => patch_autopilot(app, name, &patch),
            Err(refused) => refused.response(),
        },
        (&Method::PATCH, ["sites", name, "backends"]) => match body::<BackendPatch>(req).await {
            Ok(patch) => patch_backend(app, name, &patch),
            Err(refused) => refused.response(),
        },
        (&Method::GET, ["sites", name, "events"]) => events::list(app, name),
        (&Method::POST, ["sites", name, "events"]) => match body::<EventSpec>(req).await {
            Ok(spec) => events::add(app, name, &spec),
            Err(refused) => refused.response(),
        },
        (&Method::DELETE, ["sites", name, "events", event]) => events::cancel(app, name, event),
        (&Method::DELETE, ["sites", name, "events"]) => match body::<events::Cancel>(req).await {
            Ok(cancel) => events::cancel_body(app, name, &cancel),
            Err(refused) => refused.response(),
        },
        (&Method::POST, ["purge"]) => match body::<Purge>(req).await {
            Ok(purge) => do_purge(app, &purge),
            Err(refused) => refused.response(),
        },
        (&Method::POST, ["reload"]) => match app.reload() {
            Ok(()) => json_ok(json!({"status": "applied"})),
            Err(errors) => json_response(
                StatusCode::BAD_REQUEST,
                json!({
                    "error": "config refused; the running config stays",
                    "errors": errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }),
            ),
        },
        (
            _,
            ["sites" | "console"]
            | [
                "sites",
                _,
                "admission" | "origin" | "backends" | "autopilot" | "events",
            ]
            | ["sites", _, "events", _]
            | ["purge"]
            | ["reload"],
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
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
struct Purge {
    site: String,
    path: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    hard: bool,
}

fn patch_admission(app: &App, name: &str, patch: &AdmissionPatch) -> Response<ProxyBody> {
    let changed = app.change_live(name, |live| {
        let Some(admission) = live.admission else {
            return Err("this site has no [site.admission]".to_owned());
        };
        Ok(LiveSettings {
            admission: Some(admission.patched(patch)),
            ..live
        })
    });
    applied(app, name, changed, "admission")
}

fn patch_origin(app: &App, name: &str, patch: &OriginPatch) -> Response<ProxyBody> {
    let changed = app.change_live(name, |live| {
        Ok(LiveSettings {
            origin_concurrency: patch.origin_concurrency,
            ..live
        })
    });
    applied(app, name, changed, "origin")
}

/// `PATCH /admin/sites/{name}/autopilot`: on, off (the values stay where
/// they are: the operator takes over), targets and bounds. Lasts until the
/// next reload, as other live changes do.
fn patch_autopilot(app: &App, name: &str, patch: &AutopilotPatch) -> Response<ProxyBody> {
    let snapshot = app.snapshot();
    let Some(site) = snapshot.sites.iter().find(|s| s.config.name == name) else {
        return error(StatusCode::NOT_FOUND, &format!("no site named {name:?}"));
    };
    let settings = match site.pilot.patch(patch, site.live().origin_concurrency) {
        Ok(settings) => settings,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    app.metrics
        .admin_changes
        .with_label_values(&["autopilot"])
        .inc();
    tracing::info!(
        site = name,
        enabled = settings.enabled,
        "autopilot changed through the admin API"
    );
    json_ok(site_state(app, name).unwrap_or(Value::Null))
}

/// `PATCH /admin/sites/{name}/backends`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendPatch {
    /// The backend's address as written in the config.
    backend: String,
    state: Mode,
}

fn patch_backend(app: &App, name: &str, patch: &BackendPatch) -> Response<ProxyBody> {
    match app.set_backend_mode(name, &patch.backend, patch.state) {
        Ok(()) => {}
        Err(LiveRefused::NoSuchSite) => {
            return error(StatusCode::NOT_FOUND, &format!("no site named {name:?}"));
        }
        Err(LiveRefused::Conflict(why) | LiveRefused::Invalid(why)) => {
            return error(StatusCode::NOT_FOUND, &why);
        }
    }
    app.metrics
        .admin_changes
        .with_label_values(&["backend"])
        .inc();
    tracing::info!(
        site = name,
        backend = patch.backend,
        mode = ?patch.state,
        "backend mode changed through the admin API"
    );
    if let Some(cluster) = &app.cluster {
        let event = Event::Backend {
            site: name.to_owned(),
            backend: patch.backend.clone(),
            mode: patch.state,
            from: cluster.node.clone(),
        };
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.publish(&event).await });
    }
    json_ok(site_state(app, name).unwrap_or(Value::Null))
}

/// The answer to a live change; an applied one is also told to the other
/// nodes of a cluster.
fn applied(
    app: &App,
    name: &str,
    changed: Result<LiveSettings, LiveRefused>,
    kind: &str,
) -> Response<ProxyBody> {
    let settings = match changed {
        Ok(settings) => settings,
        Err(LiveRefused::NoSuchSite) => {
            return error(StatusCode::NOT_FOUND, &format!("no site named {name:?}"));
        }
        Err(LiveRefused::Conflict(why)) => return error(StatusCode::CONFLICT, &why),
        Err(LiveRefused::Invalid(why)) => return error(StatusCode::BAD_REQUEST, &why),
    };
    app.metrics.admin_changes.with_label_values(&[kind]).inc();
    tracing::info!(
        site = name,
        kind,
        "live setting changed through the admin API"
    );
    app.tell_cluster(name, settings, None);
    json_ok(site_state(app, name).unwrap_or(Value::Null))
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
    let now = app.clock.now().instant;
    let purged = match (&purge.path, &purge.prefix) {
        (Some(path), None) if path.starts_with('/') => {
            app.store.purge(&purge.site, |t| t == path, purge.hard, now)
        }
        (None, Some(prefix)) if prefix.starts_with('/') => app.store.purge(
            &purge.site,
            |t| t.starts_with(prefix.as_str()),
            purge.hard,
            now,
        ),
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
        let event = Event::Purge {
            site: purge.site.clone(),
            path: purge.path.clone(),
            prefix: purge.prefix.clone(),
            hard: purge.hard,
            invalidate: false,
            from: cluster.node.clone(),
            at: app.clock.now().unix_millis(),
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
    let now = app.clock.instant();
    let (entries, bytes) = app.store.site_usage(name);
    let m = &site.metrics;
    let count = |o: Outcome| m.requests_of(o);
    let served = count(Outcome::Hit) + count(Outcome::Stale) + count(Outcome::Collapsed);
    let lookups = served + count(Outcome::Miss);
    let admission = match site.waiting_room() {
        Some((gate, cfg, live)) => {
            let status = gate.status(cfg, &live, app.clock.instant());
            json!({
                "mode": live.mode.as_str(),
                "new_users_per_minute": live.new_users_per_minute,
                "burst": live.burst,
                "max_active_users": live.max_active_users,
                "line_length": status.waiting,
                "turns_unclaimed": status.unclaimed,
                "admissions_per_second": status.rate,
                "sessions_active": gate.sessions_active(),
            })
        }
        None => Value::Null,
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
            "origin_concurrency": site.live().origin_concurrency,
            "backends": site.origin.states().map(|b| {
                let (mode, ejected, failing_check) = b.health.report(now);
                json!({
                    "backend": b.name,
                    "state": mode,
                    "ejected": ejected,
                    "failing_health_check": failing_check,
                    "in_flight": b.guard.busy(),
                    "limit": b.guard.limit(),
                    "ejections": b.metrics.ejections.get(),
                    "requests": b.metrics.requests.get(),
                    "mean_latency_seconds": mean(b.metrics.seconds.get_sample_sum(), b.metrics.seconds.get_sample_count()),
                })
            }).collect::<Vec<_>>(),
        },
        "admission": admission,
        "autopilot": site.pilot.report(),
    }))
}

/// A mean from a histogram's sum and count, 0 before any sample.
fn mean(sum: f64, count: u64) -> f64 {
    if count == 0 { 0.0 } else { sum / count as f64 }
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
                StoreFailure::Static => "static",
                StoreFailure::Open => "open",
                StoreFailure::Closed => "closed",
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
