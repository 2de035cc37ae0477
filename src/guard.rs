//! The origin guard: never more than `origin_concurrency` requests in flight
//! to one backend of a site's origin, and nobody waits for a slot longer
//! than `origin_queue_timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::share::ClientShare;
pub use crate::share::Saturated;

/// Slots toward one origin. A slot is held from sending the request until
/// the response body is fully read (or dropped), so slow downloads count.
pub struct OriginGuard {
    /// FIFO: tokio's semaphore wakes waiters in arrival order, so the
    /// first request to queue is the first to get a freed slot.
    slots: Arc<Semaphore>,
    /// Requests in flight, counted in each gauge (the site's and the
    /// backend's); the last one is this guard's own, read by the balancer.
    in_flight: Arc<[IntGauge]>,
    /// The current limit; changed live by the admin API or a reload.
    limit: AtomicUsize,
    /// Slots to retire as permits come back, after the limit was lowered
    /// while they were in use (a semaphore can only forget free permits).
    debt: Arc<AtomicUsize>,
    /// The most slots held at once since [`OriginGuard::take_peak`]: the
    /// autopilot does not raise a limit the traffic did not use.
    peak: AtomicUsize,
}

/// The highest limit a guard takes: far above what any origin holds, and
/// far below what tokio's semaphore can count (`usize::MAX >> 3`), so that
/// adding slots never overflows it. The live settings refuse more
/// (`origin_concurrency` ≤ 100,000); this bound only makes the guard safe
/// on its own.
pub const MAX_LIMIT: usize = 1 << 20;

/// One origin slot; dropping it frees the slot whatever happened.
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct OriginPermit {
    slot: Option<OwnedSemaphorePermit>,
    in_flight: Arc<[IntGauge]>,
    debt: Arc<AtomicUsize>,
    /// The client's shares ([`crate::share`]), freed with the slot.
    _share: ClientShare,
}

impl OriginPermit {
    /// This slot, also holding the client's shares until freed.
    pub fn holding(mut self, share: ClientShare) -> OriginPermit {
        self._share = share;
        self
    }
}

impl Drop for OriginPermit {
    fn drop(&mut self) {
        for gauge in self.in_flight.iter() {
            gauge.dec();
        }
        let repaid = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if repaid && let Some(slot) = self.slot.take() {
            slot.forget();
        }
    }
}

impl OriginGuard {
    /// `in_flight`: the gauges that count this guard's requests, its own last.
    pub fn new(limit: usize, in_flight: Vec<IntGauge>, limit_gauge: &IntGauge) -> OriginGuard {
        assert!(
            !in_flight.is_empty(),
            "invariant: a guard counts its requests"
        );
        let limit = limit.min(MAX_LIMIT);
        limit_gauge.set(i64::try_from(limit).unwrap_or(i64::MAX));
        OriginGuard {
            slots: Arc::new(Semaphore::new(limit)),
            in_flight: in_flight.into(),
            limit: AtomicUsize::new(limit),
            debt: Arc::new(AtomicUsize::new(0)),
            peak: AtomicUsize::new(0),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Requests holding a slot now.
    pub fn busy(&self) -> i64 {
        self.in_flight.last().map_or(0, IntGauge::get)
    }

    /// Changes the limit at once. Raising adds slots; lowering retires free
    /// slots now and busy ones as they come back, so in-flight requests are
    /// never cut and the new limit is never exceeded by new ones. O(1)
    /// whatever the old and new limits (a limit beyond [`MAX_LIMIT`] is
    /// taken as it), and the limit is stored once the slots match it.
    /// Callers change a guard one at a time (`App::changing`, the
    /// autopilot's loop): two changes at once could store either limit.
    pub fn set_limit(&self, new: usize) {
        let new = new.min(MAX_LIMIT);
        let old = self.limit.load(Ordering::Acquire);
        if new > old {
            let add = new - old;
            // Cancel retirements still pending from an earlier decrease
            // first, all at once.
            let cancelled = match self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(add))
                }) {
                Ok(d) | Err(d) => d.min(add),
            };
            self.slots.add_permits(add - cancelled);
        } else if new < old {
            let cut = old - new;
            let forgotten = self.slots.forget_permits(cut);
            self.debt.fetch_add(cut - forgotten, Ordering::AcqRel);
        }
        self.limit.store(new, Ordering::Release);
    }

    /// The most slots held at once since the last call; the next span
    /// starts from those held now.
    pub fn take_peak(&self) -> usize {
        let now = usize::try_from(self.busy()).unwrap_or(0);
        self.peak.swap(now, Ordering::Relaxed).max(now)
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
        for gauge in self.in_flight.iter() {
            gauge.inc();
        }
        let held = usize::try_from(self.busy()).unwrap_or(0);
        self.peak.fetch_max(held, Ordering::Relaxed);
        Ok(OriginPermit {
            slot: Some(slot),
            in_flight: self.in_flight.clone(),
            debt: self.debt.clone(),
            _share: ClientShare::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limit: usize) -> OriginGuard {
        let g = IntGauge::new("in_flight", "test").expect("valid");
        OriginGuard::new(
            limit,
            vec![g],
            &IntGauge::new("limit", "test").expect("valid"),
        )
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

    #[tokio::test]
    async fn a_lowered_limit_applies_as_busy_slots_come_back() {
        let g = guard(3);
        let a = g.acquire(Duration::ZERO).await.expect("free");
        let b = g.acquire(Duration::ZERO).await.expect("free");
        g.set_limit(1);
        assert!(
            g.acquire(Duration::ZERO).await.is_err(),
            "two busy, limit one"
        );
        drop(a);
        assert!(
            g.acquire(Duration::ZERO).await.is_err(),
            "still one busy: at the limit"
        );
        drop(b);
        let c = g
            .acquire(Duration::ZERO)
            .await
            .expect("one slot under the new limit");
        assert!(g.acquire(Duration::ZERO).await.is_err(), "and only one");
        drop(c);
        g.set_limit(4);
        let held: Vec<_> = futures_for(&g, 4).await;
        assert_eq!(held.len(), 4, "a raised limit adds slots at once");
    }

    async fn futures_for(g: &OriginGuard, n: usize) -> Vec<OriginPermit> {
        let mut v = Vec::new();
        for _ in 0..n + 1 {
            if let Ok(p) = g.acquire(Duration::ZERO).await {
                v.push(p);
            }
        }
        v
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
        assert_eq!(g.busy(), 0, "in-flight gauge returns to zero");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Release(usize),
        SetLimit(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => Just(Op::Acquire),
            3 => any::<usize>().prop_map(Op::Release),
            2 => (0_usize..=24).prop_map(Op::SetLimit),
            1 => prop_oneof![Just(usize::MAX), Just(MAX_LIMIT + 1), Just(1 << 40)].prop_map(Op::SetLimit),
        ]
    }

    proptest::proptest! {
        /// Against a model: a new slot is given exactly while fewer than the
        /// limit are in flight, whatever sequence of limits came before (huge
        /// ones included), and once every slot is back the free slots are the
        /// limit.
        #[test]
        fn the_guard_follows_any_sequence_of_limits(ops in proptest::collection::vec(op(), 1..200)) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let g = guard(4);
                let mut limit = 4_usize;
                let mut held = Vec::new();
                for op in ops {
                    match op {
                        Op::Acquire => {
                            let got = g.acquire(Duration::ZERO).await;
                            assert_eq!(got.is_ok(), held.len() < limit, "{} in flight, limit {limit}", held.len());
                            held.extend(got.ok());
                        }
                        Op::Release(i) if !held.is_empty() => {
                            drop(held.swap_remove(i % held.len()));
                        }
                        Op::Release(_) => {}
                        Op::SetLimit(n) => {
                            g.set_limit(n);
                            limit = n.min(MAX_LIMIT);
                            assert_eq!(g.limit(), limit);
                        }
                    }
                }
                held.clear();
                assert_eq!(g.slots.available_permits(), limit, "drained: free slots = limit");
            });
        }
    }
}
