//! The runtime of one `[[site]]`: its config, its origin client, its origin
//! guard and its metric handles.

use crate::config::SiteConfig;
use crate::guard::OriginGuard;
use crate::metrics::{Metrics, SiteMetrics};
use crate::origin::Origin;

pub struct Site {
    pub config: SiteConfig,
    pub origin: Origin,
    pub guard: OriginGuard,
    pub metrics: SiteMetrics,
}

impl Site {
    pub fn new(config: SiteConfig, metrics: &Metrics) -> Site {
        let metrics = metrics.site(&config.name);
        Site {
            origin: Origin::new(&config),
            guard: OriginGuard::new(
                config.origin_concurrency,
                metrics.origin_in_flight.clone(),
                &metrics.origin_limit,
            ),
            metrics,
            config,
        }
    }
}
