//! `GET/POST/DELETE /admin/sites/{name}/events`: a site's scheduled
//! openings, listed, added and cancelled (see `admission::event`).
//! Bodies use the file's shape ([`EventSpec`]) and its validator. In a
//! cluster, an addition or a cancellation is told to the other nodes.

use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{error, json_response};
use crate::App;
use crate::admission::event::{Planned, Refused};
use crate::body::ProxyBody;
use crate::cluster::Event;
use crate::config::EventSpec;
use crate::opening::{self, EventRefused};

/// `DELETE /admin/sites/{name}/events` with a body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Cancel {
    name: String,
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

fn refused(why: EventRefused) -> Response<ProxyBody> {
    match why {
        EventRefused::NoSuchSite => error(StatusCode::NOT_FOUND, "no such site"),
        EventRefused::NoWaitingRoom => error(
            StatusCode::CONFLICT,
            "this site has no [site.admission]: events open a waiting room",
        ),
        EventRefused::Invalid(errors) => json_response(
            StatusCode::BAD_REQUEST,
            json!({ "error": "event refused; nothing changed", "errors": errors }),
        ),
        EventRefused::Conflict(Refused::Exists) => error(
            StatusCode::CONFLICT,
            "an event of that name exists: cancel it first (DELETE)",
        ),
        EventRefused::Conflict(Refused::Full) => {
            error(StatusCode::CONFLICT, "too many events for this site")
        }
        EventRefused::NoSuchEvent => error(StatusCode::NOT_FOUND, "no such event in this site"),
    }
}

pub(super) fn list(app: &App, name: &str) -> Response<ProxyBody> {
    match opening::list(app, name) {
        Ok((events, unix)) => {
            let events: Vec<Value> = events.iter().map(|p| describe(p, unix)).collect();
            json_response(StatusCode::OK, json!({ "site": name, "events": events }))
        }
        Err(why) => refused(why),
    }
}

pub(super) fn add(app: &App, name: &str, spec: &EventSpec) -> Response<ProxyBody> {
    match opening::add(app, name, spec, false) {
        Ok((added, unix)) => {
            tell(app, |from| Event::EventAdded {
                site: name.to_owned(),
                spec: spec.clone(),
                from,
            });
            json_response(
                StatusCode::CREATED,
                json!({ "added": describe(&added, unix) }),
            )
        }
        Err(why) => refused(why),
    }
}

pub(super) fn cancel(app: &App, name: &str, event: &str) -> Response<ProxyBody> {
    match opening::cancel(app, name, event) {
        Ok(()) => {
            tell(app, |from| Event::EventCancelled {
                site: name.to_owned(),
                name: event.to_owned(),
                from,
            });
            json_response(StatusCode::OK, json!({ "cancelled": event }))
        }
        Err(why) => refused(why),
    }
}

pub(super) fn cancel_body(app: &App, name: &str, body: &Cancel) -> Response<ProxyBody> {
    cancel(app, name, &body.name)
}

/// Tells the other nodes of a cluster, if any.
fn tell(app: &App, event: impl FnOnce(String) -> Event) {
    if let Some(cluster) = &app.cluster {
        let event = event(cluster.node.clone());
        let cluster = cluster.clone();
        tokio::spawn(async move { cluster.publish(&event).await });
    }
}
