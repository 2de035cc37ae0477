//! What the autopilot decided lately, for `GET /admin/sites`: the last
//! [`DECISIONS_KEPT`] decisions of a site, both loops mixed, newest first.

use std::collections::VecDeque;

use super::words::{self, Lang};
use crate::closed_enum::closed_enum;

/// Enough to see a trend (a minute of the fast loop's changes, a few
/// minutes of the slow loop's) in one screen of the admin API.
pub const DECISIONS_KEPT: usize = 20;

closed_enum! {
    /// Which way a decision moved its value (the `direction` label).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Direction {
        Up => "up",
        Down => "down",
        Hold => "hold",
        /// The concurrency limit held at its floor to measure, or given back.
        Probe => "probe",
    }
}

closed_enum! {
    /// Which loop decided (the `loop` label).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Loop {
        /// A backend's origin concurrency limit, every ~1 s.
        Concurrency => "concurrency",
        /// The site's admission rate, every ~5–10 s.
        Admission => "admission",
    }
}

/// A decision of either loop: its labels (for the metric
/// `digue_autopilot_decisions_total{loop,direction,reason}`), its words
/// (for the log and the admin API), its record.
pub trait Decision {
    fn loop_kind(&self) -> Loop;
    /// The value before and after: a limit, or new users per minute.
    fn old_new(&self) -> (u64, u64);
    fn direction(&self) -> Direction;
    /// The reason's label.
    fn reason(&self) -> &'static str;
    /// Why, with its numbers, before the change: "latence 1,8 s > cible 1 s".
    fn cause(&self, lang: Lang) -> String;

    /// "latence 1,8 s > cible 1 s : débit 40 → 28/min"
    fn describe(&self, lang: Lang) -> String {
        let (old, new) = self.old_new();
        words::sentence(&self.cause(lang), self.loop_kind(), old, new, lang)
    }

    fn describe_fr(&self) -> String {
        self.describe(Lang::Fr)
    }

    /// For the log.
    fn describe_en(&self) -> String {
        self.describe(Lang::En)
    }

    /// For the admin API's list; `backend` names the backend whose limit moved.
    fn record(&self, at_unix: u64, backend: Option<&str>) -> DecisionRecord {
        let (old, new) = self.old_new();
        DecisionRecord {
            at_unix,
            loop_kind: self.loop_kind(),
            backend: backend.map(str::to_owned),
            old,
            new,
            direction: self.direction(),
            reason: self.reason(),
            words: self.describe_fr(),
        }
    }
}

/// One decision as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    /// When, in seconds since the Unix epoch.
    pub at_unix: u64,
    pub loop_kind: Loop,
    /// The backend whose limit moved (concurrency loop only).
    pub backend: Option<String>,
    pub old: u64,
    pub new: u64,
    pub direction: Direction,
    /// The reason's label, as in the metric.
    pub reason: &'static str,
    /// The reason in French words, with its numbers.
    pub words: String,
}

/// The last decisions. Pushing holds too would let a quiet minute push the
/// story out: the caller keeps moves and probes.
#[derive(Debug, Clone, Default)]
pub struct Decisions {
    /// Oldest at the front; never more than [`DECISIONS_KEPT`].
    kept: VecDeque<DecisionRecord>,
}

impl Decisions {
    pub fn new() -> Decisions {
        Decisions::default()
    }

    pub fn push(&mut self, record: DecisionRecord) {
        if self.kept.len() == DECISIONS_KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(record);
    }

    /// Newest first.
    pub fn iter(&self) -> impl Iterator<Item = &DecisionRecord> {
        self.kept.iter().rev()
    }

    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(at_unix: u64) -> DecisionRecord {
        DecisionRecord {
            at_unix,
            loop_kind: Loop::Admission,
            backend: None,
            old: 40,
            new: 28,
            direction: Direction::Down,
            reason: "latency",
            words: "latence 1,8 s > cible 1 s : débit 40 → 28/min".to_owned(),
        }
    }

    #[test]
    fn only_the_last_twenty_decisions_are_kept_newest_first() {
        let mut decisions = Decisions::new();
        for at in 0..25 {
            decisions.push(record(at));
        }
        let times: Vec<u64> = decisions.iter().map(|r| r.at_unix).collect();
        assert_eq!(
            times,
            (5..25).rev().collect::<Vec<_>>(),
            "the 20 newest, newest first"
        );
    }
}
