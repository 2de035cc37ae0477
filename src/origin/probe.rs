//! The active health check: every `interval`, each backend is asked for
//! `health_check.path`; one that does not answer `expect` within `timeout`
//! gets no new requests until it does again, and then rejoins (its
//! ejection and failure count cleared). Probes take no origin slot: a
//! backend busy at its limit is busy, not sick.

use std::sync::Arc;

use futures_util::future::join_all;
use http::header::{self, HeaderValue};
use http::{Request, Uri};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::backend::Backend;
use super::{Origin, no_body};
use crate::config::HealthCheck;

/// The running check of one site; stops when dropped.
pub struct Prober(JoinHandle<()>);

impl Drop for Prober {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Prober {
    /// Starts checking `origin`'s backends (outside a runtime, as in unit
    /// tests that build a site, nothing runs).
    pub fn start(origin: Arc<Origin>, check: HealthCheck) -> Option<Prober> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(Prober(runtime.spawn(async move {
            let mut tick = tokio::time::interval(check.interval);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                join_all(origin.backends.iter().map(|b| probe(&origin, b, &check))).await;
            }
        })))
    }
}

async fn probe(origin: &Origin, backend: &Backend, check: &HealthCheck) {
    let state = &backend.state;
    let host = origin
        .host_override
        .clone()
        .or_else(|| authority(&backend.pool.uri("/")));
    let mut req = Request::new(no_body());
    *req.uri_mut() = backend.pool.uri(&check.path);
    if let Some(host) = host {
        req.headers_mut().insert(header::HOST, host);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("digue-health-check"),
    );
    let answer = backend.pool.send(req, Instant::now() + check.timeout).await;
    let passed = matches!(&answer, Ok(res) if res.status().as_u16() == check.expect);
    if state.health.probed(passed) {
        let status = answer.as_ref().map(|res| res.status().as_u16()).ok();
        if passed {
            tracing::info!(backend = %state.name, "backend passes its health check again: it rejoins");
        } else {
            tracing::warn!(
                backend = %state.name,
                path = %check.path,
                ?status,
                "backend fails its health check: no new requests until it passes"
            );
        }
    }
    state.show_health(Instant::now());
}

fn authority(uri: &Uri) -> Option<HeaderValue> {
    HeaderValue::from_str(uri.authority()?.as_str()).ok()
}
