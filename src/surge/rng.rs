//! A small deterministic generator (SplitMix64): the same seed replays the
//! same mix of pupils, think times and jitter, so two runs differ only by
//! what the target did. Not for anything secret.

use std::time::Duration;

/// SplitMix64 (Steele, Lea, Flood 2014): passes BigCrush, one add and three
/// multiply-xorshifts per draw, and any seed (even 0) is a good one.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]` (`lo` when the range is empty).
    pub(crate) fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + hi.saturating_sub(lo).mul_f64(self.unit())
    }

    /// `d` times a factor in `[0.8, 1.2)`: the jitter the waiting page's own
    /// script applies, so simulated polls spread like real ones. Saturates
    /// at `Duration::MAX` (`mul_f64` would panic); callers cap `d` first.
    pub(crate) fn jitter(&mut self, d: Duration) -> Duration {
        let factor = 0.8 + 0.4 * self.unit();
        Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(Duration::MAX)
    }

    /// Uniform in `0..n` (`n` > 0). The modulo bias is below 2^-40 for any
    /// `n` a scenario allows, far under anything a report shows.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_the_same_draws() {
        let mut a = Rng::new(8);
        let mut b = Rng::new(8);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64(), "same seed, same sequence");
        }
    }

    #[test]
    fn draws_stay_in_their_ranges() {
        let mut r = Rng::new(0);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u), "unit {u}");
            let d = r.between(Duration::from_secs(1), Duration::from_secs(3));
            assert!(d >= Duration::from_secs(1) && d <= Duration::from_secs(3));
            let j = r.jitter(Duration::from_secs(10));
            assert!(j >= Duration::from_secs(8) && j < Duration::from_secs(12));
            assert!(r.below(7) < 7);
        }
        for _ in 0..100 {
            assert!(r.jitter(Duration::MAX) >= Duration::MAX.mul_f64(0.79));
        }
    }
}
