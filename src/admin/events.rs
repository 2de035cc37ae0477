//! `GET/POST/DELETE /admin/sites/{name}/events`: a site's scheduled
//! openings, listed, added and cancelled (see `admission::event`).
//! Bodies use the file's shape ([`EventSpec`]) and its validator.

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{error, json_response};
use crate::App;
use crate::admission::event::{Planned, Refused, Schedule};
use crate::body::ProxyBody;
use crate::config::EventSpec;

/// `DELETE /admin/sites/{name}/events` with a body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Cancel {
    name: String,
}

/// The schedule of site `name`, or the answer saying why there is none.
fn schedule_of<T>(
    app: &App,
    name: &str,
    then: impl FnOnce(&Schedule, u64) -> T,
) -> Result<T, Response<ProxyBody>> {
    let snapshot = app.snapshot();
    let Some(site) = snapshot.sites.iter().find(|s| s.config.name == name) else {
        return Err(error(StatusCode::NOT_FOUND, "no such site"));
    };
    let Some((gate, _, _)) = site.waiting_room() else {
        return Err(error(
            StatusCode::CONFLICT,
            "this site has no [site.admission]: events open a waiting room",
        ));
    };
    Ok(then(gate.events(), app.clock.now().unix()))
}

fn describe(p: &Planned, unix: u64) -> Value {
    let c = &p.config;
    let phase = if unix < c.prequeue_from {
        "scheduled"
    } else if unix < c.opens_at {
        "prequeue"
    } else if c.running_at(unix) {
        "open"
    } else {
        "closed"
    };
    json!({
        "name": c.name(),
        "opens_at": c.spec.opens_at,
        "prequeue_from": c.spec.prequeue_from,
        "closes_at": c.spec.closes_at,
        "new_users_per_minute": c.spec.new_users_per_minute,
        "message": c.spec.message,
        "opens_at_unix": c.opens_at,
        "prequeue_from_unix": c.prequeue_from,
        "closes_at_unix": c.closes_at,
        "source": if p.from_file { "file" } else { "admin" },
        "phase": phase,
        "prequeue_tickets": p.drawn.map_or(p.joined, |d| d.count),
        "drawn": p.drawn.is_some(),
    })
}

pub(super) fn list(app: &App, name: &str) -> Response<ProxyBody> {
    schedule_of(app, name, |schedule, unix| {
        let events: Vec<Value> = schedule.list().iter().map(|p| describe(p, unix)).collect();
        json_response(StatusCode::OK, json!({ "site": name, "events": events }))
    })
    .unwrap_or_else(|refused| refused)
}

pub(super) fn add(app: &App, name: &str, spec: &EventSpec) -> Response<ProxyBody> {
    let event = match spec.checked() {
        Ok(event) => event,
        Err(errors) => return invalid(errors),
    };
    schedule_of(app, name, |schedule, unix| {
        if event.opens_at <= unix {
            return invalid(vec![
                "opens_at: is past: an event is announced before it opens".to_owned(),
            ]);
        }
        let name = event.name().to_owned();
        match schedule.add(event) {
            Ok(()) => {
                tracing::info!(
                    site = name,
                    event = name,
                    "event added through the admin API"
                );
                let added = schedule.find(&name).map(|p| describe(&p, unix));
                json_response(StatusCode::CREATED, json!({ "added": added }))
            }
            Err(Refused::Exists) => error(
                StatusCode::CONFLICT,
                "an event of that name exists: cancel it first (DELETE)",
            ),
            Err(Refused::Full) => error(StatusCode::CONFLICT, "too many events for this site"),
        }
    })
    .unwrap_or_else(|refused| refused)
}

pub(super) fn cancel(app: &App, name: &str, event: &str) -> Response<ProxyBody> {
    schedule_of(app, name, |schedule, _| {
        if schedule.cancel(event) {
            tracing::info!(site = name, event, "event cancelled through the admin API");
            json_response(StatusCode::OK, json!({ "cancelled": event }))
        } else {
            error(StatusCode::NOT_FOUND, "no such event in this site")
        }
    })
    .unwrap_or_else(|refused| refused)
}

pub(super) fn cancel_body(app: &App, name: &str, cancel_: &Cancel) -> Response<ProxyBody> {
    cancel(app, name, &cancel_.name)
}

fn invalid(errors: Vec<String>) -> Response<ProxyBody> {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({ "error": "event refused; nothing changed", "errors": errors }),
    )
}
