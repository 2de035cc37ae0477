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
use crate::config::{AdmissionPatch, LiveSettings};

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
