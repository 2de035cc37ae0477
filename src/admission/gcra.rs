//! GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp) whose rate can change in place.
//!
//! governor implements the same algorithm but fixes its quota at
//! construction; swapping limiters on a live change would hand out a fresh
//! bucket, i.e. a burst. Here the theoretical arrival time (TAT) is kept
//! across changes, so a new rate applies from the next request on and never
//! releases more than `burst` at once. Every method takes `now`, so tests
//! drive it with an injected clock.

use std::time::Duration;

use tokio::time::Instant;

fn tolerance(interval: Option<Duration>, burst: u32) -> Duration {
    interval.map_or(Duration::ZERO, |i| i * burst.max(1).saturating_sub(1))
}

#[derive(Debug, Clone)]
pub struct Gcra {
    /// Time between two admissions at the steady rate; `None` = rate 0.
    interval: Option<Duration>,
    /// How far ahead of `now` the TAT may run: `(burst - 1) × interval`.
    tolerance: Duration,
    /// When the bucket is next empty-but-one; `None` until the first take.
    tat: Option<Instant>,
}

impl Gcra {
    /// `per_minute` admissions a minute, at most `burst` at once.
    pub fn new(per_minute: u32, burst: u32) -> Gcra {
        let interval = (per_minute > 0).then(|| Duration::from_secs(60) / per_minute);
        Gcra {
            interval,
            tolerance: tolerance(interval, burst),
            tat: None,
        }
    }

    /// Changes the rate in place without a burst: the bucket keeps the
    /// admissions it had free (capped by the new burst), not its share of
    /// capacity. An emptied bucket (a line is draining) stays empty and
    /// refills at the new rate at once; one resumed from rate 0 starts empty.
    pub fn set_rate(&mut self, per_minute: u32, burst: u32, now: Instant) {
        let interval = (per_minute > 0).then(|| Duration::from_secs(60) / per_minute);
        if interval == self.interval && tolerance(interval, burst) == self.tolerance {
            return;
        }
        let free = match (self.interval, self.capacity()) {
            (Some(old), Some(capacity)) => {
                let debt = self.debt(now).min(capacity);
                (capacity - debt).as_secs_f64() / old.as_secs_f64()
            }
            _ => 0.0,
        };
        self.interval = interval;
        self.tolerance = tolerance(interval, burst);
        if let (Some(new), Some(capacity)) = (interval, self.capacity()) {
            let debt = capacity.as_secs_f64() - free * new.as_secs_f64();
            self.tat = Some(now + Duration::from_secs_f64(debt.max(0.0)));
        }
    }

    /// The bucket's size in time: `burst × interval`.
    fn capacity(&self) -> Option<Duration> {
        self.interval.map(|i| i + self.tolerance)
    }

    /// How far the budget is spent ahead of `now` (saved across restarts).
    pub fn debt(&self, now: Instant) -> Duration {
        self.tat
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Restores a saved debt.
    pub fn set_debt(&mut self, debt: Duration, now: Instant) {
        if !debt.is_zero() {
            self.tat = Some(now + debt);
        }
    }

    /// Takes one admission if the budget allows it now.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return false;
        };
        let tat = self.tat.map_or(now, |t| t.max(now));
        if tat > now + self.tolerance {
            return false;
        }
        self.tat = Some(tat + interval);
        true
    }

    /// Gives one admission back (it was granted to somebody who never came).
    pub fn refund(&mut self, now: Instant) {
        if let (Some(interval), Some(tat)) = (self.interval, self.tat) {
            self.tat = Some(tat.checked_sub(interval).unwrap_or(now).max(now));
        }
    }

    /// Admissions per second at the configured rate.
    pub fn per_second(&self) -> f64 {
        self.interval.map_or(0.0, |i| 1.0 / i.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(g: &mut Gcra, now: Instant) -> usize {
        std::iter::from_fn(|| g.try_take(now).then_some(())).count()
    }

    #[test]
    fn a_full_bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut g = Gcra::new(60, 5);
        assert_eq!(taken(&mut g, t0), 5, "burst at once");
        assert_eq!(
            taken(&mut g, t0 + Duration::from_millis(999)),
            0,
            "nothing before 1 s"
        );
        assert_eq!(
            taken(&mut g, t0 + Duration::from_secs(1)),
            1,
            "one per second"
        );
        assert_eq!(taken(&mut g, t0 + Duration::from_secs(3)), 2);
    }

    #[test]
    fn never_more_than_burst_plus_rate_times_elapsed() {
        let t0 = Instant::now();
        let mut g = Gcra::new(600, 10);
        let mut total = 0;
        for ms in (0..=30_000).step_by(50) {
            total += taken(&mut g, t0 + Duration::from_millis(ms));
            let bound = 10 + ms as usize * 10 / 1000;
            assert!(total <= bound, "{total} admitted by {ms} ms, bound {bound}");
        }
        assert_eq!(total, 10 + 300, "and the budget is used in full");
    }

    #[test]
    fn a_live_rate_change_lets_no_burst_through() {
        let t0 = Instant::now();
        let mut g = Gcra::new(60, 5);
        assert_eq!(taken(&mut g, t0), 5, "bucket emptied");
        g.set_rate(6000, 500, t0);
        let soon = t0 + Duration::from_millis(100);
        let after = taken(&mut g, soon);
        // The emptied bucket stays empty and refills at the new rate: 100/s
        // for 0.1 s, where a fresh limiter would let 500 through.
        assert!(
            after <= 11,
            "a raised rate does not refill the bucket: {after}"
        );
        g.set_rate(60, 5, soon);
        assert_eq!(
            taken(&mut g, soon),
            0,
            "lowering the rate keeps what was taken"
        );
    }

    #[test]
    fn a_raised_rate_moves_an_emptied_bucket_at_the_new_pace_at_once() {
        let t0 = Instant::now();
        let mut g = Gcra::new(1, 1);
        assert!(g.try_take(t0), "the one admission a minute");
        g.set_rate(600, 50, t0);
        assert_eq!(taken(&mut g, t0 + Duration::from_millis(50)), 0, "no burst");
        assert_eq!(
            taken(&mut g, t0 + Duration::from_secs(2)),
            20,
            "10 a second from the change on, not after the old minute"
        );
    }

    #[test]
    fn resuming_from_a_zero_rate_lets_no_burst_through() {
        let t0 = Instant::now();
        let mut g = Gcra::new(0, 5);
        g.set_rate(60, 5, t0);
        assert_eq!(taken(&mut g, t0), 0);
        assert_eq!(taken(&mut g, t0 + Duration::from_secs(1)), 1);
    }

    #[test]
    fn a_refund_gives_one_admission_back() {
        let t0 = Instant::now();
        let mut g = Gcra::new(60, 1);
        assert!(g.try_take(t0));
        assert!(!g.try_take(t0));
        g.refund(t0);
        assert!(g.try_take(t0), "the refunded admission is available again");
    }

    #[test]
    fn a_zero_rate_admits_nobody() {
        let mut g = Gcra::new(0, 5);
        assert!(!g.try_take(Instant::now()));
        assert_eq!(g.per_second(), 0.0);
    }
}
