//! The origin guard: never more than `origin_concurrency` requests in flight
//! to a site's origin, and nobody waits for a slot longer than
//! `origin_queue_timeout`.

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Slots toward one origin. A slot is held from sending the request until
/// the response body is fully read (or dropped), so slow downloads count.
pub struct OriginGuard {
    /// FIFO: tokio's semaphore wakes waiters in arrival order, so the
    /// first request to queue is the first to get a freed slot.
    slots: Arc<Semaphore>,
    in_flight: IntGauge,
}

/// No slot freed within the queue timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saturated;

/// One origin slot; dropping it frees the slot whatever happened.
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct OriginPermit {
    _slot: OwnedSemaphorePermit,
    in_flight: IntGauge,
}

impl Drop for OriginPermit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

impl OriginGuard {
    pub fn new(limit: usize, in_flight: IntGauge, limit_gauge: &IntGauge) -> OriginGuard {
        limit_gauge.set(i64::try_from(limit).unwrap_or(i64::MAX));
        OriginGuard {
            slots: Arc::new(Semaphore::new(limit)),
            in_flight,
        }
    }

    /// Waits at most `wait` for a slot.
    pub async fn acquire(&self, wait: Duration) -> Result<OriginPermit, Saturated> {
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::time::timeout(wait, self.slots.clone().acquire_owned())
                .await
                .map_err(|_| Saturated)?
                .map_err(|_| Saturated)?,
        };
        self.in_flight.inc();
        Ok(OriginPermit {
            _slot: slot,
            in_flight: self.in_flight.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limit: usize) -> OriginGuard {
        let g = IntGauge::new("in_flight", "test").expect("valid");
        OriginGuard::new(limit, g, &IntGauge::new("limit", "test").expect("valid"))
    }

    #[tokio::test(start_paused = true)]
    async fn waits_at_most_the_queue_timeout_then_refuses() {
        let g = guard(1);
        let held = g.acquire(Duration::ZERO).await.expect("one slot is free");
        let started = tokio::time::Instant::now();
        assert!(
            g.acquire(Duration::from_secs(2)).await.is_err(),
            "no slot left"
        );
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(2),
            "waited the full timeout"
        );
        drop(held);
        assert!(
            g.acquire(Duration::ZERO).await.is_ok(),
            "a dropped permit frees its slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_slot_goes_to_a_waiter() {
        let g = Arc::new(guard(1));
        let held = g.acquire(Duration::ZERO).await.expect("free");
        let waiter = tokio::spawn({
            let g = g.clone();
            async move { g.acquire(Duration::from_secs(5)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert!(
            waiter.await.expect("no panic"),
            "the waiter got the freed slot"
        );
        assert_eq!(g.in_flight.get(), 0, "in-flight gauge returns to zero");
    }
}
