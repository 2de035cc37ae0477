//! The pre-queue side of the gate (`admission::event`): joining an
//! event's pre-queue, its page, the draw at the opening, and where a
//! pre-queue ticket stands after it. The request-path decision that calls
//! these is [`Gate::check`](super::Gate::check).

use http::header::HeaderValue;

use super::{Gate, RETRY_MIN_SECS, Store, TICKET_MAX_AGE_SECS, Verdict};
use crate::admission::event::{Planned, Schedule};
use crate::admission::redis::PreQueueReply;
use crate::admission::token::{Keys, PreTicket};
use crate::config::EventConfig;
use crate::metrics::SiteMetrics;

/// Longest pause between two polls of the pre-queue page: the countdown
/// runs in the page; a poll only confirms the ticket.
const PREQUEUE_RETRY_MAX_SECS: u64 = 60;

/// The pre-queue page: an event opens soon; no place yet.
#[derive(Debug)]
pub struct PreQueueWait {
    pub event: EventConfig,
    /// Seconds until the opening (and the draw).
    pub opens_in: u64,
    pub retry_after: u64,
    /// The shared store is unreachable: no pre-queue ticket could be issued.
    pub approximate: bool,
    pub cookies: Vec<HeaderValue>,
}

/// Where a pre-queue ticket stands.
pub(super) enum Placed {
    /// Before the draw: the pre-queue page.
    NotYet(Box<Planned>),
    /// Its line number, from the draw at `opened` (Unix seconds).
    Drawn { number: u64, opened: u64 },
    /// Worth nothing (cancelled event, joined after the draw, too old).
    Void,
}

/// What joining a pre-queue gave.
pub(super) enum Joined {
    Number(u64),
    /// The draw was made meanwhile.
    TooLate,
    /// The shared store did not answer.
    Unreachable,
}

/// The key of an event's draw: the same on every node sharing the secret.
fn draw_key(keys: &Keys, site: &str, ident: &str) -> [u8; 32] {
    keys.derive(&format!("digue-draw|{site}|{ident}"))
}

/// How long the shared store keeps an event's counts: past its closing
/// (or opening) by the life of a ticket, and a day.
fn event_ttl(planned: &Planned, unix: u64) -> u64 {
    let end = planned.config.closes_at.unwrap_or(planned.config.opens_at);
    end.saturating_sub(unix) + TICKET_MAX_AGE_SECS + 86_400
}

impl Gate {
    /// The site's scheduled openings.
    pub fn events(&self) -> &Schedule {
        &self.events
    }

    /// Makes the draw of every event whose opening has come, before any
    /// arrival after it takes a number (in the shared store: once for
    /// the cluster, whichever node asks first).
    pub async fn draw_due(&self, site: &str, unix: u64) {
        for planned in self.events.due(unix) {
            let ident = planned.ident();
            let drawn = match &self.line {
                Store::Local(line) => self.events.draw_with(&ident, |n| line.reserve(n)),
                Store::Shared { line, .. } if line.healthy() => {
                    let reply = line.event("draw", &ident, event_ttl(&planned, unix)).await;
                    if let Ok(PreQueueReply::Drawn(drawn)) = reply {
                        self.events.drawn(&ident, drawn);
                        Some(drawn)
                    } else {
                        None
                    }
                }
                // Drawn when the store answers again; meanwhile its holders
                // see the pre-queue page, opening.
                Store::Shared { .. } => None,
            };
            if let Some(drawn) = drawn {
                tracing::info!(
                    site,
                    event = planned.config.name(),
                    tickets = drawn.count,
                    "event opened: pre-queue drawn"
                );
            }
        }
    }

    /// Where a pre-queue ticket stands.
    pub(super) fn placed(&self, pre: &PreTicket, site: &str, keys: &Keys, unix: u64) -> Placed {
        let Some(planned) = self.events.find(&pre.event) else {
            return Placed::Void;
        };
        // Issued for an earlier event of the same name, or its event opened
        // longer ago than a ticket lives.
        if pre.issued < planned.config.prequeue_from
            || unix.saturating_sub(planned.config.opens_at) > TICKET_MAX_AGE_SECS
        {
            return Placed::Void;
        }
        match planned.drawn {
            None => {
                if matches!(self.line, Store::Local(_)) {
                    self.events.seen(&planned.ident(), pre.number);
                }
                // Opened but not drawn yet (the shared store is away):
                // the pre-queue page, opening now.
                Placed::NotYet(Box::new(planned))
            }
            Some(drawn) => {
                let key = draw_key(keys, site, &planned.ident());
                drawn
                    .number(&key, pre.number)
                    .map_or(Placed::Void, |number| Placed::Drawn {
                        number,
                        opened: planned.config.opens_at,
                    })
            }
        }
    }

    pub(super) async fn join(&self, planned: &Planned, unix: u64) -> Joined {
        let ident = planned.ident();
        match &self.line {
            Store::Local(_) => self
                .events
                .join(&ident, unix)
                .map_or(Joined::TooLate, Joined::Number),
            Store::Shared { line, .. } => {
                if !line.healthy() {
                    return Joined::Unreachable;
                }
                match line.event("join", &ident, event_ttl(planned, unix)).await {
                    Ok(PreQueueReply::Joined(k)) => Joined::Number(k),
                    Ok(PreQueueReply::Drawn(drawn)) => {
                        self.events.drawn(&ident, drawn);
                        Joined::TooLate
                    }
                    Ok(PreQueueReply::Open) | Err(_) => Joined::Unreachable,
                }
            }
        }
    }

    pub(super) fn prequeue(
        &self,
        planned: &Planned,
        unix: u64,
        cookies: Vec<HeaderValue>,
        approximate: bool,
        m: &SiteMetrics,
    ) -> Verdict {
        m.waiting_page(false);
        let opens_in = planned.config.opens_at.saturating_sub(unix);
        Verdict::PreQueue(PreQueueWait {
            event: planned.config.clone(),
            opens_in,
            retry_after: opens_in.clamp(RETRY_MIN_SECS, PREQUEUE_RETRY_MAX_SECS),
            approximate,
            cookies,
        })
    }
}
