//! A site's scheduled openings (`[[site.admission.event]]` and those added
//! through the admin API), with their pre-queue counts and draws.
//!
//! Between `prequeue_from` and `opens_at` a newcomer on a gated path joins
//! the event's pre-queue: it gets the next pre-queue number `k` (0, 1, ...)
//! in a signed cookie, and no place yet. At the opening the line reserves
//! `n` ticket numbers at its end at once (`base+1 ..= base+n`, the count of
//! the pre-queue), and pre-queue ticket `k` stands at line number
//! `base + 1 + permute(key, n, k)` ([`draw`](super::draw)): a uniform
//! draw, the same on every node (the key is derived from the shared
//! secret), computed again identically after a restart. Arrivals after
//! the reservation get numbers after `base+n`: behind every pre-queued
//! ticket, in FIFO order. The line then moves as always, at the rate,
//! counted in claims.
//!
//! Only `n` and `base` are stored (state file, or a hash in Redis per
//! event): no list of tickets anywhere. One std mutex guards the list; it
//! is held for a scan and a few assignments, never across `.await`.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::config::{EventConfig, EventSpec, MAX_EVENTS};

/// How far past a pre-queue's count a number shown before the draw may be
/// and still be counted (see [`Schedule::seen`]): a restart without a state
/// file forgets the count, and its holders, polling, bring it back up by
/// steps of this much at most.
pub const SEEN_MARGIN: u64 = 10_000;

/// What the draw reserved in the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drawn {
    /// The line's last ticket number before the pre-queue's block.
    pub base: u64,
    /// How many pre-queue tickets the draw placed.
    pub count: u64,
}

impl Drawn {
    /// The line number of pre-queue ticket `k`, if it was part of the draw.
    pub fn number(&self, key: &[u8; 32], k: u64) -> Option<u64> {
        (k < self.count).then(|| self.base + 1 + super::draw::permute(key, self.count, k))
    }
}

/// One event and what happened to it so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub config: EventConfig,
    /// From the file (replaced on reload), else added through the admin API.
    pub from_file: bool,
    /// Pre-queue numbers handed out (the next one's `k`).
    pub joined: u64,
    /// Set once, at the opening.
    pub drawn: Option<Drawn>,
    /// Joins in the current Unix second and the one before:
    /// `(second, this, previous)`, for the crash margin.
    joins: (u64, u64, u64),
}

impl Planned {
    fn new(config: EventConfig, from_file: bool) -> Planned {
        Planned {
            config,
            from_file,
            joined: 0,
            drawn: None,
            joins: (0, 0, 0),
        }
    }

    /// What tells this event from an earlier one of the same name: its
    /// name and its opening (a cancelled then re-added event at another
    /// time is another draw).
    pub fn ident(&self) -> String {
        format!("{}:{}", self.config.name(), self.config.opens_at)
    }

    fn same(&self, other: &EventConfig) -> bool {
        self.config.name() == other.name() && self.config.opens_at == other.opens_at
    }
}

/// What the events mean for a gated request at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No pre-queue is open: the gate behaves as configured.
    Normal,
    /// Newcomers join this event's pre-queue.
    PreQueue(Box<Planned>),
}

/// What the state file keeps of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEvent {
    pub spec: EventSpec,
    pub from_file: bool,
    pub opens_at: u64,
    pub joined: u64,
    #[serde(default)]
    pub drawn: Option<Drawn>,
    /// Joins in the last whole second before the save.
    #[serde(default)]
    pub joins_per_sec: u64,
}

/// Why an admin change of the schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// An event of that name exists (409).
    Exists,
    /// Too many events (409).
    Full,
}

/// The events of one site.
#[derive(Debug, Default)]
pub struct Schedule {
    events: Mutex<Vec<Planned>>,
}

impl Schedule {
    /// The file's events, with what was saved of them and the admin API's
    /// from before a restart. `clean`: the save was a clean shutdown's (no
    /// pre-queue number was handed out after it).
    pub fn new(file: &[EventConfig], saved: &[SavedEvent], clean: bool) -> Schedule {
        let mut events: Vec<Planned> = file.iter().map(|c| Planned::new(c.clone(), true)).collect();
        for s in saved {
            let restored = match events
                .iter_mut()
                .find(|p| p.config.name() == s.spec.name && p.config.opens_at == s.opens_at)
            {
                Some(p) => Some(p),
                None if !s.from_file => match s.spec.checked() {
                    Ok(config) if events.len() < MAX_EVENTS => {
                        events.push(Planned::new(config, false));
                        events.last_mut()
                    }
                    _ => None,
                },
                None => None,
            };
            if let Some(p) = restored {
                // After a crash, numbers handed out after the last save
                // are skipped, never handed out twice.
                let margin = if clean || s.drawn.is_some() {
                    0
                } else {
                    s.joins_per_sec * 2 + 10
                };
                p.joined = s.joined + margin;
                p.drawn = s.drawn;
            }
        }
        Schedule {
            events: Mutex::new(events),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Planned>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reload: the file's events replace the file's old ones (keeping
    /// the counts of those that stay the same); the admin API's stay.
    pub fn reload(&self, file: &[EventConfig]) {
        let mut events = self.lock();
        let mut next: Vec<Planned> = file
            .iter()
            .map(|c| {
                events
                    .iter()
                    .find(|p| p.from_file && p.same(c))
                    .map_or_else(
                        || Planned::new(c.clone(), true),
                        |p| Planned {
                            config: c.clone(),
                            ..p.clone()
                        },
                    )
            })
            .collect();
        let kept: Vec<Planned> = events
            .iter()
            .filter(|p| !p.from_file && !next.iter().any(|n| n.config.name() == p.config.name()))
            .cloned()
            .collect();
        next.extend(kept);
        *events = next;
    }

    /// Every event, in opening order.
    pub fn list(&self) -> Vec<Planned> {
        let mut all = self.lock().clone();
        all.sort_by_key(|p| p.config.opens_at);
        all
    }

    /// Adds an event (admin API).
    pub fn add(&self, config: EventConfig) -> Result<(), Refused> {
        let mut events = self.lock();
        if events.iter().any(|p| p.config.name() == config.name()) {
            return Err(Refused::Exists);
        }
        if events.len() >= MAX_EVENTS {
            return Err(Refused::Full);
        }
        events.push(Planned::new(config, false));
        Ok(())
    }

    /// Cancels an event: its pre-queue tickets are worth nothing from now
    /// on (their holders are newcomers again). False if there was none.
    pub fn cancel(&self, name: &str) -> bool {
        let mut events = self.lock();
        let before = events.len();
        events.retain(|p| p.config.name() != name);
        events.len() < before
    }

    /// The event whose pre-queue is open at `unix` (the earliest opening
    /// if several are).
    pub fn phase(&self, unix: u64) -> Phase {
        self.lock()
            .iter()
            .filter(|p| p.config.prequeue_at(unix) && p.drawn.is_none())
            .min_by_key(|p| p.config.opens_at)
            .map_or(Phase::Normal, |p| Phase::PreQueue(Box::new(p.clone())))
    }

    /// The event a pre-queue ticket names.
    pub fn find(&self, name: &str) -> Option<Planned> {
        self.lock()
            .iter()
            .find(|p| p.config.name() == name)
            .cloned()
    }

    /// Events opened at `unix` and not drawn yet, in opening order.
    pub fn due(&self, unix: u64) -> Vec<Planned> {
        let mut due: Vec<Planned> = self
            .lock()
            .iter()
            .filter(|p| p.drawn.is_none() && unix >= p.config.opens_at)
            .cloned()
            .collect();
        due.sort_by_key(|p| p.config.opens_at);
        due
    }

    /// The event running at `unix` with a rate of its own, if any.
    pub fn rate_override(&self, unix: u64) -> Option<(String, u32)> {
        self.lock()
            .iter()
            .filter(|p| p.config.running_at(unix))
            .find_map(|p| Some((p.ident(), p.config.new_users_per_minute?)))
    }

    /// In this process: the next pre-queue number of `ident`, unless it
    /// was drawn (or is gone) meanwhile.
    pub fn join(&self, ident: &str, unix: u64) -> Option<u64> {
        let mut events = self.lock();
        let p = events
            .iter_mut()
            .find(|p| p.ident() == ident && p.drawn.is_none())?;
        let k = p.joined;
        p.joined += 1;
        p.joins = match p.joins {
            (sec, this, _) if sec == unix => (sec, this + 1, p.joins.2),
            (sec, this, _) if sec + 1 == unix => (unix, 1, this),
            _ => (unix, 1, 0),
        };
        Some(k)
    }

    /// In this process: a pre-queue number shown before the draw that is
    /// past the count (handed out before a restart that lost it) is
    /// counted, so the draw places it — unless it is further past the
    /// count than [`SEEN_MARGIN`]: following it would put that many
    /// tickets held by nobody ahead of every later arrival.
    pub fn seen(&self, ident: &str, k: u64) {
        if let Some(p) = self
            .lock()
            .iter_mut()
            .find(|p| p.ident() == ident && p.drawn.is_none())
            && k < p.joined.saturating_add(SEEN_MARGIN)
        {
            p.joined = p.joined.max(k + 1);
        }
    }

    /// The draw of `ident`, made once: `reserve(count)` is called under
    /// the lock, at most once per event, and returns the line's base.
    pub fn draw_with(&self, ident: &str, reserve: impl FnOnce(u64) -> u64) -> Option<Drawn> {
        let mut events = self.lock();
        let p = events.iter_mut().find(|p| p.ident() == ident)?;
        if p.drawn.is_none() {
            let count = p.joined;
            p.drawn = Some(Drawn {
                base: reserve(count),
                count,
            });
        }
        p.drawn
    }

    /// Records a draw made elsewhere (by the shared store).
    pub fn drawn(&self, ident: &str, drawn: Drawn) {
        if let Some(p) = self.lock().iter_mut().find(|p| p.ident() == ident) {
            p.joined = p.joined.max(drawn.count);
            p.drawn = Some(drawn);
        }
    }

    /// What the state file keeps.
    pub fn saved(&self, unix: u64) -> Vec<SavedEvent> {
        self.lock()
            .iter()
            .map(|p| SavedEvent {
                spec: p.config.spec.clone(),
                from_file: p.from_file,
                opens_at: p.config.opens_at,
                joined: p.joined,
                drawn: p.drawn,
                joins_per_sec: match p.joins {
                    (sec, this, prev) if sec == unix => this.max(prev),
                    (sec, this, _) if sec + 1 == unix => this,
                    _ => 0,
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, opens_at: &str) -> EventConfig {
        EventSpec {
            name: name.into(),
            opens_at: opens_at.into(),
            prequeue_from: None,
            closes_at: None,
            new_users_per_minute: None,
            message: None,
        }
        .checked()
        .expect("valid")
    }

    #[test]
    fn the_draw_is_made_once_and_places_every_pre_queue_ticket_after_the_line() {
        let e = event("rentree", "2026-09-01T08:00:00+02:00");
        let schedule = Schedule::new(std::slice::from_ref(&e), &[], true);
        let ident = schedule.list()[0].ident();
        assert_eq!(schedule.phase(e.opens_at - 1801), Phase::Normal);
        assert!(matches!(
            schedule.phase(e.opens_at - 1800),
            Phase::PreQueue(_)
        ));
        for k in 0..5 {
            assert_eq!(schedule.join(&ident, e.opens_at - 10), Some(k));
        }
        let mut calls = 0;
        let drawn = schedule
            .draw_with(&ident, |n| {
                calls += 1;
                assert_eq!(n, 5);
                40
            })
            .expect("drawn");
        assert_eq!(drawn, Drawn { base: 40, count: 5 });
        schedule.draw_with(&ident, |_| unreachable!("drawn once"));
        assert_eq!(calls, 1);
        assert_eq!(schedule.join(&ident, e.opens_at), None, "too late to join");
        let key = [3; 32];
        let mut numbers: Vec<u64> = (0..5).map(|k| drawn.number(&key, k).expect("in")).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, vec![41, 42, 43, 44, 45]);
        assert_eq!(drawn.number(&key, 5), None);
    }

    #[test]
    fn a_restart_keeps_counts_and_draws_and_a_crash_skips_unsaved_numbers() {
        let e = event("rentree", "2026-09-01T08:00:00+02:00");
        let schedule = Schedule::new(std::slice::from_ref(&e), &[], true);
        let ident = schedule.list()[0].ident();
        let at = e.opens_at - 60;
        for _ in 0..7 {
            schedule.join(&ident, at);
        }
        let saved = schedule.saved(at);
        assert_eq!(saved[0].joins_per_sec, 7);
        let clean = Schedule::new(std::slice::from_ref(&e), &saved, true);
        assert_eq!(clean.join(&ident, at + 1), Some(7));
        let crashed = Schedule::new(std::slice::from_ref(&e), &saved, false);
        assert_eq!(crashed.join(&ident, at + 1), Some(7 + 14 + 10));
        crashed.seen(&ident, 1_000_000);
        assert_eq!(
            crashed.join(&ident, at + 1),
            Some(32),
            "a number far past the count does not drag it"
        );
        crashed.seen(&ident, 40);
        assert_eq!(crashed.join(&ident, at + 1), Some(41), "one near it does");
        let added = event("extra", "2026-09-02T08:00:00+02:00");
        schedule.add(added).expect("added");
        let kept = Schedule::new(&[], &schedule.saved(at), true);
        assert_eq!(
            kept.list()
                .iter()
                .map(|p| p.config.name().to_owned())
                .collect::<Vec<_>>(),
            vec!["extra"],
            "the admin API's events survive a restart; the file's come from the file"
        );
    }
}
