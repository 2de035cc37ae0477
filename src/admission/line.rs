//! The line of one site, in process: a ticket counter, a cursor, and the
//! turns handed out at the admission rate.
//!
//! The cursor moves at the rate **counted in claims**: each admission the
//! budget allows becomes a *turn* for the next ticket. A turn not claimed
//! within the claim window is refunded to the budget, so the slot passes to
//! the next ticket: people who gave up never stall the line, and waste at
//! most one claim window of capacity each. Everything is computed lazily on
//! calls with an explicit `now`, so tests drive it with an injected clock.
//!
//! One std mutex guards the whole state; it is held for a few arithmetic
//! steps and never across `.await`. The cluster store (Redis) replaces this
//! type with the same operations.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::admission::gcra::Gcra;

/// Claims older than this no longer count toward the measured rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Claims needed before the measured rate is trusted over the configured one.
const RATE_MIN_SAMPLES: usize = 10;

/// The knobs of one call; read every time, so live changes apply at once.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub per_minute: u32,
    pub burst: u32,
    pub claim_window: Duration,
    /// Sessions active now and the cap on them, if any.
    pub active: u64,
    pub max_active: Option<u64>,
    /// The site is closed: nobody can claim a turn, so none is handed out
    /// and none expires; the line stands still until it reopens.
    pub frozen: bool,
}

/// Ticket numbers past a line's count that it still honours: a second or
/// two of arrivals, issued after the last save before a crash. A number
/// further out comes from a line whose state was lost.
pub fn restart_margin(per_minute: u32, burst: u32) -> u64 {
    u64::from(burst) + u64::from(per_minute) / 30 + 10
}

/// Where a waiting ticket stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    /// Tickets ahead of this one still waiting for their turn.
    pub ahead: u64,
    /// Expected wait at the measured admission rate.
    pub eta: Duration,
}

/// What a newcomer gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Nobody waits and the budget allows: in at once.
    Admitted,
    /// A ticket and its place.
    Queued { ticket: u64, place: Place },
    /// No ticket could be issued (the shared store is unreachable): the
    /// waiting page, and another try later.
    Unticketed(Place),
}

/// The expected wait of someone with `ahead` tickets before them.
pub fn eta_for(ahead: u64, rate: f64) -> Duration {
    if rate > 0.0 {
        Duration::from_secs_f64(((ahead + 1) as f64 / rate).min(86_400.0))
    } else {
        Duration::from_secs(86_400)
    }
}

/// What a returning ticket gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Claim {
    /// Its turn has come: in.
    Admitted,
    /// Not yet.
    Waiting(Place),
    /// Its turn came and went unclaimed: the slot went to the next ticket.
    Missed,
    /// Issued by this line before it lost its state (a restart without
    /// `state_file`, a wiped Redis): the place is gone.
    Lost,
}

/// A moment of the line, for metrics and the admin API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    /// Tickets waiting for their turn.
    pub waiting: u64,
    /// Turns handed out, not yet claimed.
    pub unclaimed: u64,
    /// Admissions per second: measured from claims, else configured.
    pub rate: f64,
}

/// What a line saves across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub issued: u64,
    pub cursor: u64,
    /// Turns handed out and not yet claimed: their holders keep them.
    #[serde(default)]
    pub turns: Vec<u64>,
    /// Admission budget already spent ahead of the save, in milliseconds,
    /// so a restart does not refill the bucket.
    #[serde(default)]
    pub budget_debt_ms: u64,
    /// Tickets issued in the last whole second before the save: what a
    /// crash may have issued unsaved (see [`crash_margin`]).
    #[serde(default)]
    pub arrivals_per_sec: u64,
    /// The site's scheduled openings: pre-queue counts, draws, and the
    /// events added through the admin API (`admission::event`).
    #[serde(default)]
    pub events: Vec<crate::admission::event::SavedEvent>,
}

/// Ticket numbers a crash may have issued after the last save (one second
/// earlier at most): twice the arrivals of the last second, so a surge's
/// newcomers are never given a number already handed out, plus the
/// rate-based margin. Numbers in it held by nobody cost nothing: the cursor
/// jumps over them, and their holders, if any, are let in when they ask.
pub fn crash_margin(saved: &Saved, per_minute: u32, burst: u32) -> u64 {
    restart_margin(per_minute, burst).saturating_add(saved.arrivals_per_sec.saturating_mul(2))
}

#[derive(Debug)]
struct Turn {
    ticket: u64,
    granted: Instant,
}

#[derive(Debug)]
struct State {
    gcra: Gcra,
    /// Last ticket number issued.
    issued: u64,
    /// Every ticket up to this one has had its turn.
    cursor: u64,
    /// Tickets `skip.0 < n <= skip.1` were possibly never handed out (lost
    /// by a crash between two saves): the cursor jumps over them.
    skip: (u64, u64),
    /// Skipped tickets whose holders came back and were let in, so a copied
    /// cookie cannot use the same number twice.
    skipped_admitted: HashSet<u64>,
    /// Tickets issued in the current second, and in the last whole one.
    arrivals: (Instant, u64, u64),
    /// Turns handed out and not yet claimed, oldest first.
    turns: VecDeque<Turn>,
    /// Claim times within `RATE_WINDOW`, for the measured rate.
    claims: VecDeque<Instant>,
    /// Turns missed since the last `take_missed`.
    missed: u64,
    /// Since when the line stands still (the site is closed).
    frozen_since: Option<Instant>,
}

/// The line of one site.
#[derive(Debug)]
pub struct Line {
    state: Mutex<State>,
}

impl Line {
    pub fn new(params: &Params) -> Line {
        Line::restore(params, Saved::default(), 0)
    }

    /// A line resumed from saved counters. `margin` tickets past the saved
    /// count may have been issued before a crash; they keep their numbers
    /// but the cursor does not wait on them.
    pub fn restore(params: &Params, saved: Saved, margin: u64) -> Line {
        let issued = saved.issued + margin;
        let now = Instant::now();
        let mut gcra = Gcra::new(params.per_minute, params.burst);
        gcra.set_debt(Duration::from_millis(saved.budget_debt_ms), now);
        // Saved turns get a whole claim window again: their holders could
        // not claim while the node was down.
        let turns = saved
            .turns
            .iter()
            .filter(|t| **t <= saved.cursor)
            .map(|&ticket| Turn {
                ticket,
                granted: now,
            })
            .collect();
        Line {
            state: Mutex::new(State {
                gcra,
                issued,
                cursor: saved.cursor.min(saved.issued),
                skip: (saved.issued, issued),
                skipped_admitted: HashSet::new(),
                arrivals: (now, 0, 0),
                turns,
                claims: VecDeque::new(),
                missed: 0,
                frozen_since: params.frozen.then_some(now),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A newcomer: admitted at once when nobody waits and the budget allows
    /// (`may_enter` false in `queue_all` mode), else a ticket at the end.
    pub fn arrive(&self, params: &Params, may_enter: bool, now: Instant) -> Arrival {
        let mut s = self.lock();
        s.advance(params, now);
        let nobody_waits = s.cursor >= s.issued;
        if may_enter && nobody_waits && s.room_for_one(params) && s.gcra.try_take(now) {
            s.record_claim(now);
            return Arrival::Admitted;
        }
        s.issued += 1;
        s.count_arrival(now);
        let ticket = s.issued;
        let place = s.place(ticket, params, now);
        Arrival::Queued { ticket, place }
    }

    /// A ticket holder asking whether its turn has come.
    pub fn claim(&self, ticket: u64, params: &Params, now: Instant) -> Claim {
        let mut s = self.lock();
        if ticket > s.issued {
            if ticket - s.issued > restart_margin(params.per_minute, params.burst) {
                // Following it would hand a turn to every number in between,
                // held by nobody: its holder starts again at the end. The
                // bound is tighter than line.lua's on purpose: this count is
                // exact (only this process issues numbers; a crash restore
                // adds its own margin), while in a cluster other nodes issue
                // numbers the caller's view has not seen yet, so line.lua
                // honours the margin the caller sends (100 plus 2 s of
                // cluster-wide arrivals). tests/line_conformance.rs records it.
                return Claim::Lost;
            }
            // Issued before a restart that lost the count: it waits at the
            // end. Raised before the turns are handed out, so a ticket whose
            // turn the budget allows gets it in this call (line.lua alike).
            s.issued = ticket;
        }
        s.advance(params, now);
        if let Some(i) = s.turns.iter().position(|t| t.ticket == ticket) {
            s.turns.remove(i);
            s.record_claim(now);
            return Claim::Admitted;
        }
        if s.skip.0 < ticket && ticket < s.skip.1 && ticket <= s.cursor {
            return s.claim_skipped(ticket, params, now);
        }
        if ticket <= s.cursor {
            return Claim::Missed;
        }
        Claim::Waiting(s.place(ticket, params, now))
    }

    /// Reserves `n` numbers at the end of the line at once, for an event's
    /// pre-queue (placed among them by its draw, `admission::event`):
    /// returns the last number before them. Later arrivals queue behind.
    pub fn reserve(&self, n: u64) -> u64 {
        let mut s = self.lock();
        let base = s.issued;
        s.issued += n;
        base
    }

    /// Where the line stands now.
    pub fn status(&self, params: &Params, now: Instant) -> Status {
        let mut s = self.lock();
        s.advance(params, now);
        Status {
            waiting: s.issued - s.cursor,
            unclaimed: s.turns.len() as u64,
            rate: s.rate_per_second(params, now),
        }
    }

    /// The counters to save.
    pub fn saved(&self) -> Saved {
        let s = self.lock();
        let debt = s.gcra.debt(Instant::now());
        Saved {
            issued: s.issued,
            cursor: s.cursor,
            turns: s.turns.iter().map(|t| t.ticket).collect(),
            budget_debt_ms: u64::try_from(debt.as_millis()).unwrap_or(u64::MAX),
            arrivals_per_sec: s.arrivals_per_sec(Instant::now()),
            events: Vec::new(),
        }
    }

    /// Turns missed since the last call (for metrics).
    pub fn take_missed(&self) -> u64 {
        std::mem::take(&mut self.lock().missed)
    }
}

impl State {
    /// Expires unclaimed turns, then hands out the turns the budget allows.
    fn advance(&mut self, params: &Params, now: Instant) {
        self.gcra.set_rate(params.per_minute, params.burst, now);
        while self.claims.front().is_some_and(|t| *t + RATE_WINDOW <= now) {
            self.claims.pop_front();
        }
        if params.frozen {
            self.frozen_since.get_or_insert(now);
            return;
        }
        if let Some(since) = self.frozen_since.take() {
            // Holders could not claim while the site was closed: the
            // closure does not count against their claim window (line.lua
            // keeps its start in the line's hash, `closed_since`).
            let closed = now.saturating_duration_since(since);
            for turn in &mut self.turns {
                turn.granted += closed;
            }
        }
        while let Some(turn) = self.turns.front() {
            if turn.granted + params.claim_window > now {
                break;
            }
            self.turns.pop_front();
            self.gcra.refund(now);
            self.missed += 1;
        }
        while self.cursor < self.issued && self.room_for_one(params) && self.gcra.try_take(now) {
            self.cursor += 1;
            if self.cursor > self.skip.0 && self.cursor <= self.skip.1 {
                self.cursor = self.skip.1.min(self.issued);
            }
            let ticket = self.cursor;
            self.turns.push_back(Turn {
                ticket,
                granted: now,
            });
        }
    }

    /// Whether `max_active_users` leaves room for one more (pending turns
    /// count: they are about to become sessions).
    fn room_for_one(&self, params: &Params) -> bool {
        params
            .max_active
            .is_none_or(|max| params.active + (self.turns.len() as u64) < max)
    }

    fn record_claim(&mut self, now: Instant) {
        self.claims.push_back(now);
    }

    fn count_arrival(&mut self, now: Instant) {
        let (since, current, _) = self.arrivals;
        if now.saturating_duration_since(since) >= Duration::from_secs(1) {
            self.arrivals = (now, 1, current);
        } else {
            self.arrivals.1 += 1;
        }
    }

    /// Arrivals in the last whole second (or the current one, if busier).
    fn arrivals_per_sec(&self, now: Instant) -> u64 {
        let (since, current, last) = self.arrivals;
        match now.saturating_duration_since(since).as_secs() {
            0 => current.max(last),
            1 => current,
            _ => 0,
        }
    }

    /// A ticket issued unsaved before a crash, that the cursor jumped over:
    /// its holder was ahead of everyone still waiting, so it goes in as soon
    /// as the budget allows, once.
    fn claim_skipped(&mut self, ticket: u64, params: &Params, now: Instant) -> Claim {
        if self.skipped_admitted.contains(&ticket) {
            return Claim::Missed;
        }
        if params.frozen || !self.room_for_one(params) || !self.gcra.try_take(now) {
            return Claim::Waiting(Place {
                ahead: 0,
                eta: eta_for(0, self.rate_per_second(params, now)),
            });
        }
        self.skipped_admitted.insert(ticket);
        self.record_claim(now);
        Claim::Admitted
    }

    fn rate_per_second(&self, params: &Params, now: Instant) -> f64 {
        let configured = f64::from(params.per_minute) / 60.0;
        if self.claims.len() < RATE_MIN_SAMPLES {
            return configured;
        }
        let first = self.claims.front().copied().unwrap_or(now);
        let span = now.saturating_duration_since(first).as_secs_f64().max(1.0);
        (self.claims.len() as f64 / span).max(configured / 4.0)
    }

    fn place(&self, ticket: u64, params: &Params, now: Instant) -> Place {
        let ahead = ticket.saturating_sub(self.cursor + 1);
        Place {
            ahead,
            eta: eta_for(ahead, self.rate_per_second(params, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(per_minute: u32, burst: u32) -> Params {
        Params {
            per_minute,
            burst,
            claim_window: Duration::from_secs(30),
            active: 0,
            max_active: None,
            frozen: false,
        }
    }

    fn queued(a: Arrival) -> (u64, Place) {
        match a {
            Arrival::Queued { ticket, place } => (ticket, place),
            Arrival::Admitted | Arrival::Unticketed(_) => panic!("expected a ticket"),
        }
    }

    #[test]
    fn newcomers_enter_at_once_until_the_burst_then_get_tickets_in_order() {
        let p = params(60, 3);
        let line = Line::new(&p);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(line.arrive(&p, true, t0), Arrival::Admitted);
        }
        let (a, pa) = queued(line.arrive(&p, true, t0));
        let (b, pb) = queued(line.arrive(&p, true, t0));
        assert!(b > a, "later arrivals get later tickets");
        assert!(pb.ahead > pa.ahead, "and stand further back");
        assert_eq!(pa.ahead, 0);
        assert_eq!(pa.eta, Duration::from_secs(1), "one a second at 60/min");
    }

    #[test]
    fn turns_come_in_ticket_order_at_the_rate() {
        let p = params(60, 1);
        let line = Line::new(&p);
        let t0 = Instant::now();
        assert_eq!(line.arrive(&p, true, t0), Arrival::Admitted);
        let tickets: Vec<u64> = (0..5)
            .map(|_| queued(line.arrive(&p, true, t0)).0)
            .collect();
        for (i, t) in tickets.iter().enumerate() {
            let before = t0 + Duration::from_millis(1000 * i as u64 + 999);
            assert!(
                matches!(line.claim(*t, &p, before), Claim::Waiting(_)),
                "ticket {t} not before its second"
            );
            let at = t0 + Duration::from_secs(1 + i as u64);
            assert_eq!(
                line.claim(*t, &p, at),
                Claim::Admitted,
                "ticket {t} at {at:?}"
            );
        }
    }

    #[test]
    fn a_ticket_whose_holder_gave_up_passes_its_slot_on_after_the_claim_window() {
        let p = params(60, 1);
        let line = Line::new(&p);
        let t0 = Instant::now();
        line.arrive(&p, true, t0);
        let (gone, _) = queued(line.arrive(&p, true, t0));
        let (next, _) = queued(line.arrive(&p, true, t0));
        // At 1 s the turn goes to `gone`, who never comes back.
        assert!(matches!(
            line.claim(next, &p, t0 + Duration::from_secs(1)),
            Claim::Waiting(_)
        ));
        // Within the window the slot is held for `gone`; at 2 s the budget
        // has a second admission: `next`'s turn comes anyway.
        assert_eq!(
            line.claim(next, &p, t0 + Duration::from_secs(2)),
            Claim::Admitted
        );
        assert_eq!(
            line.claim(gone, &p, t0 + Duration::from_secs(40)),
            Claim::Missed
        );
        assert_eq!(line.take_missed(), 1);
    }

    #[test]
    fn abandoned_turns_are_refunded_so_the_line_keeps_its_pace() {
        let p = params(60, 1);
        let line = Line::new(&p);
        let t0 = Instant::now();
        line.arrive(&p, true, t0);
        let tickets: Vec<u64> = (0..40)
            .map(|_| queued(line.arrive(&p, true, t0)).0)
            .collect();
        // Only the last ticket's holder polls; everyone ahead gave up.
        let last = *tickets.last().expect("forty");
        let mut admitted_at = None;
        for s in 1..=200 {
            let now = t0 + Duration::from_secs(s);
            if line.claim(last, &p, now) == Claim::Admitted {
                admitted_at = Some(s);
                break;
            }
        }
        let at = admitted_at.expect("the last ticket gets in");
        assert!(
            at <= 40 + 30 + 1,
            "abandoned turns cost one claim window, not one each: {at} s"
        );
    }

    #[test]
    fn max_active_users_holds_turns_back() {
        let mut p = params(600, 10);
        p.max_active = Some(2);
        p.active = 2;
        let line = Line::new(&p);
        let t0 = Instant::now();
        let (t, _) = queued(line.arrive(&p, true, t0));
        assert!(matches!(
            line.claim(t, &p, t0 + Duration::from_secs(5)),
            Claim::Waiting(_)
        ));
        p.active = 1;
        assert_eq!(
            line.claim(t, &p, t0 + Duration::from_secs(6)),
            Claim::Admitted
        );
    }

    #[test]
    fn queue_all_gives_everybody_a_ticket_and_the_line_still_moves() {
        let p = params(60, 5);
        let line = Line::new(&p);
        let t0 = Instant::now();
        let (t, _) = queued(line.arrive(&p, false, t0));
        assert_eq!(
            line.claim(t, &p, t0),
            Claim::Admitted,
            "the budget moves the line at once"
        );
    }

    #[test]
    fn a_live_rate_change_applies_without_a_burst() {
        let slow = params(6, 1);
        let line = Line::new(&slow);
        let t0 = Instant::now();
        line.arrive(&slow, true, t0);
        let tickets: Vec<u64> = (0..100)
            .map(|_| queued(line.arrive(&slow, true, t0)).0)
            .collect();
        let fast = params(6000, 1);
        let now = t0 + Duration::from_millis(50);
        let admitted = tickets
            .iter()
            .filter(|t| line.claim(**t, &fast, now) == Claim::Admitted)
            .count();
        assert!(
            admitted <= 6,
            "100/s for 50 ms, not the whole line: {admitted}"
        );
    }

    #[test]
    fn a_restored_line_keeps_its_order_and_skips_lost_numbers() {
        let p = params(60, 1);
        let line = Line::restore(
            &p,
            Saved {
                issued: 10,
                cursor: 4,
                ..Saved::default()
            },
            100,
        );
        let t0 = Instant::now();
        assert!(
            matches!(line.claim(5, &p, t0), Claim::Admitted),
            "ticket 5 is next"
        );
        let (t, place) = queued(line.arrive(&p, true, t0));
        assert_eq!(
            t, 111,
            "new numbers never repeat one possibly issued before the crash"
        );
        assert!(place.ahead >= 5, "saved tickets 6..10 are ahead: {place:?}");
        let after = line.saved();
        assert_eq!((after.issued, after.cursor), (111, 5));
    }

    #[test]
    fn a_crash_mid_surge_never_reissues_a_number_nor_drops_an_unsaved_ticket() {
        let p = params(60, 1);
        let line = Line::new(&p);
        let t0 = Instant::now();
        line.arrive(&p, true, t0);
        // A surge: 500 arrivals in a second, saved, then 300 more unsaved.
        for i in 0..500 {
            queued(line.arrive(&p, true, t0 + Duration::from_millis(i)));
        }
        let saved = line.saved();
        assert!(saved.arrivals_per_sec >= 500, "{saved:?}");
        let unsaved: Vec<u64> = (0..300)
            .map(|_| queued(line.arrive(&p, true, t0 + Duration::from_millis(900))).0)
            .collect();

        let margin = crash_margin(&saved, p.per_minute, p.burst);
        let resumed = Line::restore(&p, saved.clone(), margin);
        let later = t0 + Duration::from_secs(1);
        let (fresh, _) = queued(resumed.arrive(&p, true, later));
        assert!(
            fresh > *unsaved.last().expect("some"),
            "newcomer {fresh} never gets a number handed out before the crash"
        );
        // The cursor walks the saved line, then jumps the unknown numbers.
        for t in saved.cursor + 1..=saved.issued {
            let mut at = later;
            while resumed.claim(t, &p, at) != Claim::Admitted {
                at += Duration::from_secs(1);
                assert!(at < later + Duration::from_secs(3600), "ticket {t} got in");
            }
        }
        let holder = unsaved[10];
        let mut at = later + Duration::from_secs(3600);
        resumed.status(&p, at);
        let mut answers = Vec::new();
        loop {
            let claim = resumed.claim(holder, &p, at);
            answers.push(claim);
            if claim == Claim::Admitted || answers.len() > 120 {
                break;
            }
            at += Duration::from_secs(1);
        }
        assert_eq!(
            answers.last(),
            Some(&Claim::Admitted),
            "an unsaved ticket is let in, never sent to the back: {answers:?}"
        );
        assert_eq!(
            resumed.claim(holder, &p, at),
            Claim::Missed,
            "and only once"
        );
    }

    #[test]
    fn a_turn_handed_out_before_a_restart_is_still_claimable_after_it() {
        let p = params(60, 1);
        let line = Line::new(&p);
        let t0 = Instant::now();
        line.arrive(&p, false, t0);
        line.status(&p, t0);
        let saved = line.saved();
        assert_eq!(saved.turns, vec![1], "ticket 1's turn is pending");
        assert!(saved.budget_debt_ms > 0, "the budget was spent");
        let resumed = Line::restore(&p, saved, 0);
        assert_eq!(resumed.claim(1, &p, Instant::now()), Claim::Admitted);
        let (t, _) = queued(resumed.arrive(&p, true, Instant::now()));
        assert!(
            matches!(resumed.claim(t, &p, Instant::now()), Claim::Waiting(_)),
            "the restored budget is not refilled by the restart"
        );
    }

    #[test]
    fn a_closed_line_stands_still_and_its_pending_turns_outlast_the_closure() {
        let open = params(60, 1);
        let closed = Params {
            frozen: true,
            ..open
        };
        let line = Line::new(&open);
        let t0 = Instant::now();
        line.arrive(&open, true, t0);
        let (a, _) = queued(line.arrive(&open, true, t0));
        let (b, _) = queued(line.arrive(&open, true, t0));
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(line.status(&open, at(1)).unclaimed, 1, "a's turn came");
        for s in 2..100 {
            let status = line.status(&closed, at(s));
            assert_eq!(
                (status.waiting, status.unclaimed),
                (1, 1),
                "closed at {s} s"
            );
        }
        assert_eq!(
            line.claim(a, &open, at(100)),
            Claim::Admitted,
            "a keeps its turn"
        );
        assert_eq!(
            line.claim(b, &open, at(100)),
            Claim::Admitted,
            "then b's, from the budget that refilled meanwhile"
        );
        assert_eq!(line.take_missed(), 0);
    }

    #[test]
    fn a_ticket_far_past_the_count_is_lost_and_does_not_drag_the_line() {
        let p = params(60, 1);
        let line = Line::new(&p);
        let t0 = Instant::now();
        line.arrive(&p, true, t0);
        let near = restart_margin(p.per_minute, p.burst);
        assert_eq!(line.claim(40_000, &p, t0), Claim::Lost);
        assert!(
            matches!(line.claim(near, &p, t0), Claim::Waiting(_)),
            "within the restart margin a ticket keeps its number"
        );
        let (t, _) = queued(line.arrive(&p, true, t0));
        assert_eq!(t, near + 1, "the count follows the kept ticket only");
    }

    #[test]
    fn position_and_eta_use_the_measured_rate() {
        let p = params(600, 1);
        let line = Line::new(&p);
        let t0 = Instant::now();
        line.arrive(&p, true, t0);
        let (t, place) = queued(line.arrive(&p, true, t0));
        assert_eq!(place.ahead, 0);
        assert_eq!(place.eta, Duration::from_millis(100));
        assert_eq!(
            line.claim(t, &p, t0 + Duration::from_millis(100)),
            Claim::Admitted
        );
        let status = line.status(&p, t0 + Duration::from_secs(1));
        assert_eq!(status.waiting, 0);
        assert!(
            (status.rate - 10.0).abs() < f64::EPSILON,
            "configured until enough samples"
        );
    }
}
