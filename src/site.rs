//! The runtime of one `[[site]]`: its config, its origin client, its origin
//! guard and its metric handles.

use crate::admission::gate::Gate;
use crate::admission::line::Saved;
use crate::config::SiteConfig;
use crate::guard::OriginGuard;
use crate::metrics::{Metrics, SiteMetrics};
use crate::origin::Origin;

pub struct Site {
    pub config: SiteConfig,
    pub origin: Origin,
    pub guard: OriginGuard,
    pub metrics: SiteMetrics,
    /// The waiting room, when `[site.admission]` is configured.
    pub gate: Option<Gate>,
}

impl Site {
    /// `saved`: the line's counters from the state file, and how many
    /// ticket numbers past them may have been issued before a crash.
    pub fn new(config: SiteConfig, metrics: &Metrics, saved: Option<(Saved, u64)>) -> Site {
        let metrics = metrics.site(&config.name);
        let gate = config.admission.as_ref().map(|a| {
            metrics
                .admission_rate
                .set(i64::from(a.new_users_per_minute));
            match saved {
                Some((saved, margin)) => Gate::new(a, Some(saved), margin),
                None => Gate::new(a, None, 0),
            }
        });
        Site {
            origin: Origin::new(&config),
            guard: OriginGuard::new(
                config.origin_concurrency,
                metrics.origin_in_flight.clone(),
                &metrics.origin_limit,
            ),
            metrics,
            gate,
            config,
        }
    }
}
