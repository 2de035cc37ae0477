//! The loop that runs every site's autopilot: ten times a second it lets
//! each site's fast loop and slow loop act when their interval is due, and
//! applies a new admission rate as a live change, as a PATCH would.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::LineView;
use crate::App;
use crate::admission::gate::Gate;
use crate::config::{AdmissionPatch, LiveSettings};
use crate::reload::LiveRefused;

/// How often the loops are looked at; their own intervals (≥ 100 ms) say
/// when they act.
const TICK: Duration = Duration::from_millis(100);

pub async fn drive(app: Arc<App>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = app.clock.now();
        for site in &app.snapshot().sites {
            let live = site.live();
            site.pilot.fast(
                &site.origin,
                node_share(live.origin_concurrency, site.gate.as_deref()),
                now.instant,
                now.unix(),
            );
            let Some((gate, cfg, admission)) = site.waiting_room() else {
                continue;
            };
            let mut others = Vec::new();
            let mut fence = None;
            if site.pilot.slow_due(now.instant)
                && let Some(cluster) = &app.cluster
            {
                let name = &site.config.name;
                // The lease outlives two missed renewals, not more: a node
                // that died hands the rate over within three intervals.
                let ttl = site.pilot.settings().rate_interval * 3;
                fence = cluster.pilot_lease(name, ttl).await;
                if fence.is_none() {
                    let busy = site.metrics.busy_total();
                    let seen = site.pilot.observe(busy, now.instant, now.unix_millis());
                    cluster.publish_observation(name, &seen, ttl).await;
                    continue;
                }
                others = cluster.observations(name).await;
            }
            let status = gate.status(cfg, &admission, now.instant);
            let line = LineView {
                rate_now: admission.new_users_per_minute,
                waiting: status.waiting,
                admitted_per_minute: status.rate * 60.0,
                busy_total: site.metrics.busy_total(),
            };
            let Some(rate) = site
                .pilot
                .slow(line, &others, now.instant, now.unix_millis())
            else {
                continue;
            };
            let name = &site.config.name;
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
            match changed {
                Ok(settings) => app.tell_cluster(name, settings, fence),
                Err(LiveRefused::NoSuchSite) => {}
                Err(LiveRefused::Conflict(why) | LiveRefused::Invalid(why)) => {
                    tracing::warn!(site = %name, why, "autopilot: admission rate not applied");
                }
            }
        }
    }
}

/// This node's share of the concurrency ceiling: in a cluster each node
/// guards its own connections to the same portal, so `origin_concurrency`
/// is split by the nodes the shared line knows of (rounded up: a backend is
/// never shut).
fn node_share(ceiling: usize, gate: Option<&Gate>) -> usize {
    let nodes = gate
        .and_then(Gate::cluster_view)
        .map_or(1, |(_, nodes)| usize::try_from(nodes).unwrap_or(1).max(1));
    ceiling.div_ceil(nodes)
}
