//! A backend's health as digue sees it: passive (consecutive failures
//! eject it for a while, doubling while it keeps failing), active (the
//! optional `health_check` probe), and what the operator set (active,
//! draining, down).

use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{BalanceConfig, MAX_EJECT_FOR};

/// What the operator set through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Takes new sessions and balanced requests.
    Active,
    /// Keeps the sessions it holds; gets no new ones.
    Drain,
    /// Gets nothing; its sessions move.
    Down,
}

/// Whether a backend may take a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Takes anything.
    Open,
    /// Takes only the sessions it holds (draining).
    SessionsOnly,
    /// Takes nothing: down, ejected, or failing its health check.
    Closed,
}

/// One backend's health. One std mutex: every use is a few comparisons,
/// never held across an await, and taken once per request to the origin
/// (not per cache hit).
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    /// Failures since the last success.
    failures: u32,
    /// Ejections in a row (reset by a success), to double the next one.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// The last health check failed.
    probe_failing: bool,
}

/// What one answer changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Unchanged,
    /// Ejected for this long.
    Ejected(Duration),
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: Mutex::new(State {
                mode: Mode::Active,
                failures: 0,
                ejections: 0,
                ejected_until: None,
                probe_failing: false,
            }),
        }
    }
}

impl Health {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn standing(&self, now: Instant) -> Standing {
        let s = self.state();
        let ejected = s.ejected_until.is_some_and(|until| now < until);
        match s.mode {
            Mode::Down => Standing::Closed,
            _ if ejected || s.probe_failing => Standing::Closed,
            Mode::Drain => Standing::SessionsOnly,
            Mode::Active => Standing::Open,
        }
    }

    /// Whether it is ejected now (for the half-the-pool bound).
    pub fn ejected(&self, now: Instant) -> bool {
        self.state().ejected_until.is_some_and(|until| now < until)
    }

    pub fn mode(&self) -> Mode {
        self.state().mode
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state().mode = mode;
    }

    /// An answer that was not a failure: the failure count starts over.
    pub fn succeeded(&self) {
        let mut s = self.state();
        s.failures = 0;
        s.ejections = 0;
    }

    /// A connect failure, a timeout or a 5xx. Ejects the backend after
    /// `eject_after` in a row when `may_eject` (fewer than half of the
    /// site's backends are ejected): for `eject_for`, doubled per ejection
    /// in a row, capped at [`MAX_EJECT_FOR`].
    pub fn failed(&self, now: Instant, config: &BalanceConfig, may_eject: bool) -> Verdict {
        let mut s = self.state();
        s.failures = s.failures.saturating_add(1);
        let ejected = s.ejected_until.is_some_and(|until| now < until);
        if s.failures < config.eject_after || ejected || !may_eject {
            return Verdict::Unchanged;
        }
        let doubling = 2_u32.saturating_pow(s.ejections.min(16));
        let length = config.eject_for.saturating_mul(doubling).min(MAX_EJECT_FOR);
        s.ejected_until = Some(now + length);
        s.ejections = s.ejections.saturating_add(1);
        s.failures = 0;
        Verdict::Ejected(length)
    }

    /// The health check's verdict; whether it differs from the last one.
    /// Passing again ends an ejection and starts the failure count over:
    /// the backend rejoins.
    pub fn probed(&self, passed: bool) -> bool {
        let mut s = self.state();
        let changed = s.probe_failing == passed;
        s.probe_failing = !passed;
        if passed {
            s.ejected_until = None;
            s.failures = 0;
            s.ejections = 0;
        }
        changed
    }

    /// For the admin API: the mode, whether ejected or failing its check.
    pub fn report(&self, now: Instant) -> (Mode, bool, bool) {
        let s = self.state();
        let ejected = s.ejected_until.is_some_and(|until| now < until);
        (s.mode, ejected, s.probe_failing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BalanceConfig {
        BalanceConfig {
            eject_after: 3,
            eject_for: Duration::from_secs(10),
            ..BalanceConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_time_that_doubles_up_to_a_cap() {
        let h = Health::default();
        let now = Instant::now();
        assert_eq!(h.failed(now, &config(), true), Verdict::Unchanged);
        h.succeeded();
        assert_eq!(h.failed(now, &config(), true), Verdict::Unchanged);
        assert_eq!(h.failed(now, &config(), true), Verdict::Unchanged);
        assert_eq!(
            h.failed(now, &config(), true),
            Verdict::Ejected(Duration::from_secs(10)),
            "three in a row, not counting before the success"
        );
        assert_eq!(h.standing(now), Standing::Closed);
        let later = now + Duration::from_secs(10);
        assert_eq!(h.standing(later), Standing::Open, "back after eject_for");
        for _ in 0..2 {
            h.failed(later, &config(), true);
        }
        assert_eq!(
            h.failed(later, &config(), true),
            Verdict::Ejected(Duration::from_secs(20)),
            "still failing: twice as long"
        );
        let mut at = later;
        let mut last = Verdict::Unchanged;
        for _ in 0..30 {
            at += Duration::from_secs(600);
            for _ in 0..3 {
                last = h.failed(at, &config(), true);
            }
        }
        assert_eq!(last, Verdict::Ejected(MAX_EJECT_FOR), "capped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_is_not_ejected_when_half_the_pool_already_is() {
        let h = Health::default();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(h.failed(now, &config(), false), Verdict::Unchanged);
        }
        assert_eq!(h.standing(now), Standing::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_health_check_ends_an_ejection_and_a_failing_one_closes() {
        let h = Health::default();
        let now = Instant::now();
        for _ in 0..3 {
            h.failed(now, &config(), true);
        }
        assert_eq!(h.standing(now), Standing::Closed);
        h.probed(true);
        assert_eq!(h.standing(now), Standing::Open, "rejoined");
        h.probed(false);
        assert_eq!(h.standing(now), Standing::Closed, "failing its check");
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_backend_takes_only_its_sessions_and_a_down_one_nothing() {
        let h = Health::default();
        let now = Instant::now();
        h.set_mode(Mode::Drain);
        assert_eq!(h.standing(now), Standing::SessionsOnly);
        h.set_mode(Mode::Down);
        assert_eq!(h.standing(now), Standing::Closed);
    }
}
