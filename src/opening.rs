//! The clock of scheduled openings (`[[site.admission.event]]`): every
//! half second, each site's due draws are made (so an opening happens on
//! time even if nobody asks at that moment), and an event's
//! `new_users_per_minute` is applied from `opens_at` to `closes_at` as a
//! live change — the path a `PATCH` takes, so the admission budget keeps
//! what was already taken and the change lets no burst through.
//!
//! The override is applied once per event (and again after a reload of
//! the file, which puts the file's rate back): an operator who changes the
//! rate by hand during the event wins. At `closes_at`, the rate in force
//! before the opening comes back, unless someone changed it meanwhile.
//! Each node applies it from its own clock; nothing is told to the cluster
//! (every node has the same schedule from its file).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::App;
use crate::admission::event::{Planned, Refused};
use crate::config::{AdmissionPatch, EventSpec, LiveSettings};

const TICK: Duration = Duration::from_millis(500);

/// An override in force on one site.
struct Applied {
    /// The event's `name:opens_at`.
    ident: String,
    /// The event's rate.
    rate: u32,
    /// The rate to put back at the closing.
    previous: u32,
    /// The reload generation it was applied in.
    generation: u64,
}

/// Runs until the task is aborted.
pub async fn drive(app: Arc<App>) {
    let mut applied: HashMap<String, Applied> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        step(&app, &mut applied).await;
    }
}

async fn step(app: &App, applied: &mut HashMap<String, Applied>) {
    let unix = app.clock.now().unix();
    let generation = *app.reloaded.borrow();
    for site in app.snapshot().sites.iter() {
        let Some((gate, _, live)) = site.waiting_room() else {
            continue;
        };
        let name = &site.config.name;
        gate.draw_due(name, unix).await;
        let current = live.new_users_per_minute;
        match (gate.events().rate_override(unix), applied.get(name)) {
            (Some((ident, _)), Some(a)) if a.ident == ident && a.generation == generation => {}
            (Some((ident, rate)), _) => {
                if set_rate(app, name, rate) {
                    tracing::info!(site = %name, event = %ident, rate, "event rate applied");
                }
                let previous = applied
                    .remove(name)
                    .filter(|a| a.ident == ident)
                    .map_or(current, |a| a.previous);
                applied.insert(
                    name.clone(),
                    Applied {
                        ident,
                        rate,
                        previous,
                        generation,
                    },
                );
            }
            (None, Some(a)) => {
                if current == a.rate && a.generation == generation {
                    set_rate(app, name, a.previous);
                    tracing::info!(site = %name, event = %a.ident, rate = a.previous, "event over: rate restored");
                }
                applied.remove(name);
            }
            (None, None) => {}
        }
    }
}

/// Sets a site's admission rate as a live change; false if refused.
fn set_rate(app: &App, name: &str, rate: u32) -> bool {
    let patch = AdmissionPatch {
        new_users_per_minute: Some(rate),
        ..AdmissionPatch::default()
    };
    let changed = app.change_live(name, |live| {
        let admission = live.admission.ok_or_else(|| "no waiting room".to_owned())?;
        Ok(LiveSettings {
            admission: Some(admission.patched(&patch)),
            ..live
        })
    });
    if let Err(e) = &changed {
        tracing::warn!(site = %name, error = ?e, "event rate not applied");
    }
    changed.is_ok()
}

/// Why a change of a site's events was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRefused {
    NoSuchSite,
    /// The site has no `[site.admission]`.
    NoWaitingRoom,
    /// The event is invalid: every problem, `key: message`.
    Invalid(Vec<String>),
    /// An event of that name exists, or the site has too many.
    Conflict(Refused),
    /// No event of that name (to cancel).
    NoSuchEvent,
}

/// Runs `then` on the schedule of site `name`, with the time now.
fn with_schedule<T>(
    app: &App,
    name: &str,
    then: impl FnOnce(&crate::admission::event::Schedule, u64) -> Result<T, EventRefused>,
) -> Result<T, EventRefused> {
    let snapshot = app.snapshot();
    let site = snapshot
        .sites
        .iter()
        .find(|s| s.config.name == name)
        .ok_or(EventRefused::NoSuchSite)?;
    let (gate, _, _) = site.waiting_room().ok_or(EventRefused::NoWaitingRoom)?;
    then(gate.events(), app.clock.now().unix())
}

/// Every event of site `name`, in opening order, with the time now.
pub fn list(app: &App, name: &str) -> Result<(Vec<Planned>, u64), EventRefused> {
    with_schedule(app, name, |schedule, unix| Ok((schedule.list(), unix)))
}

/// Adds an event to site `name`: from the admin API it must open in the
/// future; `from_cluster` (another node's, maybe opened since) need not.
pub fn add(
    app: &App,
    name: &str,
    spec: &EventSpec,
    from_cluster: bool,
) -> Result<(Planned, u64), EventRefused> {
    let event = spec.checked().map_err(EventRefused::Invalid)?;
    with_schedule(app, name, |schedule, unix| {
        if event.opens_at <= unix && !from_cluster {
            return Err(EventRefused::Invalid(vec![
                "opens_at: is past: an event is announced before it opens".to_owned(),
            ]));
        }
        let event_name = event.name().to_owned();
        schedule.add(event).map_err(EventRefused::Conflict)?;
        tracing::info!(site = name, event = event_name, "event added");
        let added = schedule
            .find(&event_name)
            .expect("invariant: added under this name just now");
        Ok((added, unix))
    })
}

/// Cancels event `event` of site `name`: its pre-queue tickets are worth
/// nothing from now on.
pub fn cancel(app: &App, name: &str, event: &str) -> Result<(), EventRefused> {
    with_schedule(app, name, |schedule, _| {
        if !schedule.cancel(event) {
            return Err(EventRefused::NoSuchEvent);
        }
        tracing::info!(site = name, event, "event cancelled");
        Ok(())
    })
}
