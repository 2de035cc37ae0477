//! The arrival curve: when each virtual pupil opens the portal.
//!
//! Arrivals are computed, not drawn: pupil `i` arrives when the cumulative
//! arrivals of the curve reach `i`. Runs are reproducible and the peak rate
//! is exactly the one asked for, which is what a capacity rehearsal needs.

use std::time::Duration;

/// The shape of the arrival rate over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Curve {
    /// From 0 to the peak rate over `ramp`, then the peak until everybody
    /// has arrived: the 7:55–8:05 rise.
    Ramp,
    /// The peak rate from the first second.
    Constant,
    /// The peak rate at once, decaying exponentially (time constant
    /// pupils / peak rate): the bell at 8:00 sharp, then the stragglers.
    Spike,
}

impl Curve {
    /// The name used in scenario files, flags and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Curve::Ramp => "ramp",
            Curve::Constant => "constant",
            Curve::Spike => "spike",
        }
    }

    /// Parses a scenario file's `curve`.
    pub fn parse(s: &str) -> Option<Curve> {
        match s {
            "ramp" => Some(Curve::Ramp),
            "constant" => Some(Curve::Constant),
            "spike" => Some(Curve::Spike),
            _ => None,
        }
    }
}

/// Who arrives when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrivals {
    /// The shape of the rate over time.
    pub curve: Curve,
    /// Pupils in all, bots included; at least 1.
    pub pupils: u64,
    /// Arrivals per second at the peak; finite and above 0.
    pub peak_rate: f64,
    /// Length of the rise of the `ramp` curve (0 makes it a step).
    pub ramp: Duration,
}

impl Arrivals {
    /// When pupil `i` (from 0) arrives, counted from the start of the run.
    pub fn offset(&self, i: u64) -> Duration {
        let i = i as f64;
        let rate = self.peak_rate;
        let secs = match self.curve {
            Curve::Constant => i / rate,
            Curve::Ramp => {
                // Arrivals by time t during the rise: rate·t²/(2·ramp).
                let ramp = self.ramp.as_secs_f64();
                let during_rise = rate * ramp / 2.0;
                if i <= during_rise {
                    (2.0 * ramp * i / rate).sqrt()
                } else {
                    ramp + (i - during_rise) / rate
                }
            }
            Curve::Spike => {
                // Arrivals by time t: N·(1 − e^(−t/τ)), whose rate at 0 is N/τ = peak.
                let n = self.pupils as f64;
                let tau = n / rate;
                -tau * (1.0 - i / n).ln()
            }
        };
        Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX)
    }

    /// When the last pupil arrives.
    pub fn span(&self) -> Duration {
        self.offset(self.pupils.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrivals(curve: Curve, pupils: u64, peak_rate: f64, ramp_secs: u64) -> Arrivals {
        Arrivals {
            curve,
            pupils,
            peak_rate,
            ramp: Duration::from_secs(ramp_secs),
        }
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn a_constant_curve_spaces_pupils_evenly() {
        let a = arrivals(Curve::Constant, 100, 10.0, 0);
        assert_eq!(a.offset(0), Duration::ZERO);
        assert!((secs(a.offset(10)) - 1.0).abs() < 1e-9);
        assert!((secs(a.span()) - 9.9).abs() < 1e-9);
    }

    #[test]
    fn a_ramp_reaches_the_peak_at_the_end_of_the_rise() {
        // 0 → 10/s over 10 s: 50 pupils during the rise, then 10 a second.
        let a = arrivals(Curve::Ramp, 200, 10.0, 10);
        assert!(
            (secs(a.offset(50)) - 10.0).abs() < 1e-9,
            "rise ends at 10 s"
        );
        assert!((secs(a.offset(60)) - 11.0).abs() < 1e-9, "peak rate after");
        // Half-way up, the rate is half the peak: pupils 12.5 → 13.5 span ~0.2 s.
        let gap = secs(a.offset(13)) - secs(a.offset(12));
        assert!(gap > 0.15 && gap < 0.25, "gap {gap}");
        let step = arrivals(Curve::Ramp, 10, 10.0, 0);
        assert!(
            (secs(step.offset(5)) - 0.5).abs() < 1e-9,
            "no rise is a step"
        );
    }

    #[test]
    fn a_spike_starts_at_the_peak_and_decays() {
        let a = arrivals(Curve::Spike, 1000, 100.0, 0);
        let first = secs(a.offset(10));
        assert!((first - 0.1).abs() < 0.01, "starts at the peak: {first}");
        let early = secs(a.offset(101)) - secs(a.offset(100));
        let late = secs(a.offset(901)) - secs(a.offset(900));
        assert!(late > early * 5.0, "decays: {early} then {late}");
        assert!(a.span() < Duration::from_secs(120), "everybody arrives");
    }

    #[test]
    fn arrivals_never_go_back_in_time() {
        for curve in [Curve::Ramp, Curve::Constant, Curve::Spike] {
            let a = arrivals(curve, 500, 37.0, 7);
            for i in 1..500 {
                assert!(a.offset(i) >= a.offset(i - 1), "{curve:?} at {i}");
            }
        }
    }
}
