//! The admission decision for one request: proceed (with a pass), wait
//! (with a ticket), or — for a JSON client whose turn came — "admitted".
//!
//! Answers come from memory: signature checks, one short lock on the line,
//! no origin request. A pass is checked on every path (it keeps the session
//! alive); tickets and the line only on gated paths.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::admission::cookies::{self, Attributes, PASS, TICKET};
use crate::admission::event::{Phase, Schedule};
use crate::admission::gcra::Gcra;
use crate::admission::line::{Arrival, Claim, Line, Params, Place, Saved, Status, eta_for};
use crate::admission::redis::RedisLine;
use crate::admission::token::{Keys, Pass, PreTicket, Ticket};
use crate::clock::Now;
use crate::cluster::Cluster;
use crate::config::{AdmissionConfig, AdmissionMode, AdmissionSettings, StoreFailure};
use crate::metrics::SiteMetrics;

mod prequeue;
use crate::outcome::{AdmitHow, Refusal};
pub use prequeue::PreQueueWait;
use prequeue::{Joined, Placed};

/// A pass is re-issued (sliding expiry) at most this often (or every
/// quarter of `session_duration` if shorter), so an active user does not
/// get a `Set-Cookie` on every response.
const RENEW_AFTER_SECS: u64 = 60;
/// Tickets outlive a closed laptop lid or a lunch break; an older one is
/// refused (its holder is a newcomer), whatever the cookie's Max-Age.
const TICKET_MAX_AGE_SECS: u64 = 12 * 3600;
/// Bounds of the waiting page's polling interval: near the front it polls
/// often enough to claim its turn well within the claim window; far back
/// it polls slowly, so a long line costs little. Never more than a third of
/// the claim window, so a holder polls (the page adds ±20 % jitter) at
/// least twice before a turn handed out just after a poll expires.
const RETRY_MIN_SECS: u64 = 3;
const RETRY_MAX_SECS: u64 = 20;
const _: () = assert!(crate::config::MIN_CLAIM_WINDOW.as_secs() >= 3 * RETRY_MIN_SECS);
/// How often a visitor without a ticket asks again while the site is closed.
const CLOSED_RETRY_SECS: u64 = 60;
/// Passes one node counts within `session_duration`: bounds the memory of
/// the count whatever the load, and is far above what one node admits in a
/// session's time. A `max_active_users` above it is enforced at this count.
const MAX_SESSIONS_TRACKED: u64 = 1_000_000;
/// Networks tracked for ticket issuance; the least recently seen go first.
const MAX_NETWORKS: u64 = 100_000;
const NETWORK_IDLE: Duration = Duration::from_secs(600);

/// The request, as the gate sees it.
pub struct Visitor<'a> {
    pub headers: &'a HeaderMap,
    /// Path and query, as sent.
    pub target: &'a str,
    /// Whether the target is one of the site's entry points, in any of its
    /// readings (see `target::Gates`).
    pub gated: bool,
    /// The client's address (the peer, or from a trusted proxy's header).
    pub ip: IpAddr,
    pub tls: bool,
    pub wants_json: bool,
}

/// What the gate decided.
#[derive(Debug)]
pub enum Verdict {
    /// Go on to the cache and origin; add these cookies to the response.
    Proceed(Vec<HeaderValue>),
    /// A JSON poll whose turn came: answer `{"state":"admitted"}` with the pass.
    AdmittedJson(Vec<HeaderValue>),
    /// The waiting room.
    Wait(Waiting),
    /// An event's pre-queue: the opening and its countdown, no place yet.
    PreQueue(PreQueueWait),
}

/// What the waiting room shows.
#[derive(Debug)]
pub struct Waiting {
    pub closed: bool,
    /// The ETA rests on an old view (the shared store is unreachable).
    pub approximate: bool,
    pub ahead: u64,
    pub eta: Duration,
    pub retry_after: u64,
    pub cookies: Vec<HeaderValue>,
}

/// Where a site's line lives.
enum Store {
    /// In this process (a single node).
    Local(Box<Line>),
    /// In Redis, shared by the nodes of a cluster.
    Shared {
        line: Box<RedisLine>,
        policy: StoreFailure,
    },
}

/// The admission state of one site.
pub struct Gate {
    line: Store,
    /// Passes seen within `session_duration`, by id: moka's time-to-idle
    /// forgets a pass whose holder stopped making requests.
    sessions: moka::sync::Cache<u64, ()>,
    /// Ticket issuance budget per network (/24 or /64).
    networks: moka::sync::Cache<u128, Arc<Mutex<Gcra>>>,
    /// Pass ids: a counter from a random start, never personal data.
    next_pass: AtomicU64,
    /// Scheduled openings, with their pre-queues and draws.
    events: Schedule,
}

impl Gate {
    /// A gate whose line lives in this process, resumed from `saved`.
    pub fn local(
        cfg: &AdmissionConfig,
        live: &AdmissionSettings,
        saved: Option<Saved>,
        margin: u64,
    ) -> Gate {
        let params = params(cfg, live, 0);
        // No crash margin: a clean save.
        let events = saved.as_ref().map_or(&[][..], |s| &s.events[..]);
        let schedule = Schedule::new(&cfg.events, events, margin == 0);
        let line = match saved {
            Some(saved) => Line::restore(&params, saved, margin),
            None => Line::new(&params),
        };
        Gate::with(cfg, Store::Local(Box::new(line)), schedule)
    }

    /// A gate whose line is shared through Redis.
    pub fn shared(
        cfg: &AdmissionConfig,
        live: &AdmissionSettings,
        site: &str,
        cluster: Arc<Cluster>,
    ) -> Gate {
        let policy = cluster.config.on_store_failure;
        let line = Box::new(RedisLine::new(cluster, site, &params(cfg, live, 0)));
        let schedule = Schedule::new(&cfg.events, &[], true);
        Gate::with(cfg, Store::Shared { line, policy }, schedule)
    }

    fn with(cfg: &AdmissionConfig, line: Store, events: Schedule) -> Gate {
        Gate {
            events,
            line,
            // Not sized from `max_active_users`: that changes live, the
            // cache's capacity does not.
            sessions: moka::sync::Cache::builder()
                .max_capacity(MAX_SESSIONS_TRACKED)
                .time_to_idle(cfg.start.session_duration)
                .build(),
            networks: moka::sync::Cache::builder()
                .max_capacity(MAX_NETWORKS)
                .time_to_idle(NETWORK_IDLE)
                .build(),
            next_pass: AtomicU64::new(random_start()),
        }
    }

    /// Decides what `visitor` gets, under the site's waiting-room settings
    /// and their running live half.
    #[allow(clippy::too_many_arguments)] // each is one request-path input
    pub async fn check(
        &self,
        cfg: &AdmissionConfig,
        live: &AdmissionSettings,
        site: &str,
        keys: &Keys,
        visitor: &Visitor<'_>,
        m: &SiteMetrics,
        at: Now,
    ) -> Verdict {
        let (now, unix) = (at.instant, at.unix());
        let attrs = Attributes {
            tls: visitor.tls,
            domain: cfg.cookie_domain.as_deref(),
        };
        let session_secs = cfg.start.session_duration.as_secs();
        // Any valid pass among those sent: a junk or other-site one first
        // must not send an admitted user back to the line.
        let mut refused = None;
        for raw in cookies::find_all(visitor.headers, PASS) {
            match Pass::decode(keys, site, raw) {
                Some(pass) if unix.saturating_sub(pass.seen) <= session_secs => {
                    return Verdict::Proceed(self.keep_alive(
                        pass,
                        keys,
                        unix,
                        session_secs,
                        &attrs,
                    ));
                }
                Some(_) => refused = Some(Refusal::Expired),
                None => refused = refused.or(Some(Refusal::Invalid)),
            }
        }
        if let Some(why) = refused {
            m.refused(why);
        }
        if !visitor.gated {
            return Verdict::Proceed(Vec::new());
        }
        if live.mode == AdmissionMode::Passthrough {
            m.admitted(AdmitHow::Passthrough);
            return Verdict::Proceed(Vec::new());
        }
        if cfg.bypass_cidrs.iter().any(|c| c.contains(visitor.ip)) {
            m.admitted(AdmitHow::Bypass);
            return Verdict::Proceed(Vec::new());
        }
        let degraded = self.degraded();
        let policy = match &self.line {
            Store::Shared { policy, .. } if degraded => *policy,
            Store::Shared { .. } | Store::Local(_) => StoreFailure::Static,
        };
        if policy == StoreFailure::Open {
            m.admitted(AdmitHow::Passthrough);
            return Verdict::Proceed(Vec::new());
        }
        if live.mode == AdmissionMode::Closed || policy == StoreFailure::Closed {
            m.waiting_page(true);
            // A ticket holder must be back within the claim window once the
            // site reopens (a forged cookie gains only a shorter hint).
            let retry_after = if cookies::find(visitor.headers, TICKET).is_some() {
                poll_after(Duration::MAX, cfg.claim_window)
            } else {
                CLOSED_RETRY_SECS
            };
            return Verdict::Wait(Waiting {
                closed: true,
                approximate: false,
                ahead: 0,
                eta: Duration::ZERO,
                retry_after,
                cookies: Vec::new(),
            });
        }
        if live.max_active_users.is_some() {
            // moka counts lazily; the cap needs the count as of now.
            self.sessions.run_pending_tasks();
        }
        let params = params(cfg, live, self.sessions.entry_count());
        self.draw_due(site, unix).await;
        let phase = self.events.phase(unix);
        let mut held = None;
        if let Some(raw) = cookies::find(visitor.headers, TICKET) {
            if let Some(pre) = PreTicket::decode(keys, site, raw) {
                match self.placed(&pre, site, keys, unix) {
                    Placed::NotYet(planned) => {
                        return self.prequeue(&planned, unix, Vec::new(), degraded, m);
                    }
                    // Its place from the draw: from now on an ordinary
                    // ticket of that number, in the cookie too.
                    // Its wait (and its cookie's life) counts from the
                    // opening, however early it joined.
                    Placed::Drawn { number, opened } => {
                        held = Some((
                            Ticket {
                                site: site.to_owned(),
                                number,
                                issued: opened,
                                eta: 0,
                            },
                            true,
                        ));
                    }
                    // The event was cancelled, or the ticket came too late
                    // for the draw: a newcomer.
                    Placed::Void => {}
                }
            } else {
                match Ticket::decode(keys, site, raw) {
                    // Older than its cookie may live: likely from a line whose
                    // state was lost since, so its number means nothing now.
                    Some(ticket) if unix.saturating_sub(ticket.issued) > TICKET_MAX_AGE_SECS => {
                        m.refused(Refusal::Expired);
                    }
                    Some(ticket) => held = Some((ticket, false)),
                    None => m.refused(Refusal::Invalid),
                }
            }
        }
        if let Some((ticket, from_draw)) = held {
            match self.claim(ticket.number, &params, now).await {
                Claim::Admitted => {
                    m.admitted(AdmitHow::Line);
                    let waited = unix.saturating_sub(ticket.issued);
                    m.wait_seconds.observe(waited as f64);
                    m.eta_error.observe(waited.abs_diff(ticket.eta) as f64);
                    let mut set = vec![
                        self.mint_pass(site, keys, unix, session_secs, &attrs),
                        cookies::set(TICKET, "", 0, &attrs),
                    ];
                    return if visitor.wants_json {
                        Verdict::AdmittedJson(std::mem::take(&mut set))
                    } else {
                        Verdict::Proceed(set)
                    };
                }
                Claim::Waiting(place) => {
                    let cookies = if from_draw {
                        let token = Ticket {
                            eta: place.eta.as_secs(),
                            ..ticket
                        }
                        .encode(keys);
                        vec![cookies::set(TICKET, &token, TICKET_MAX_AGE_SECS, &attrs)]
                    } else {
                        Vec::new()
                    };
                    return self.wait(place, &params, cookies, degraded, m);
                }
                // The turn went to the next ticket, or the place was lost
                // with the line's state: a new place at the end.
                Claim::Missed | Claim::Lost => {}
            }
        }
        if !self.network_allows(visitor.ip, cfg, now) {
            // Same answer, no new ticket: a cookie-less client asking again
            // and again does not lengthen the line.
            m.throttled.inc();
            if let Phase::PreQueue(planned) = &phase {
                return self.prequeue(planned, unix, Vec::new(), degraded, m);
            }
            let status = self.status_with(&params, now);
            let place = Place {
                ahead: status.waiting,
                eta: eta_for(status.waiting, status.rate),
            };
            return self.wait(place, &params, Vec::new(), degraded, m);
        }
        if let Phase::PreQueue(planned) = &phase {
            match self.join(planned, unix).await {
                Joined::Number(number) => {
                    m.tickets.inc();
                    let token = PreTicket {
                        site: site.to_owned(),
                        event: planned.config.name().to_owned(),
                        number,
                        issued: unix,
                    }
                    .encode(keys);
                    // It lives until the opening, then as long as a ticket.
                    let max_age =
                        planned.config.opens_at.saturating_sub(unix) + TICKET_MAX_AGE_SECS;
                    let cookie = cookies::set(TICKET, &token, max_age, &attrs);
                    return self.prequeue(planned, unix, vec![cookie], degraded, m);
                }
                Joined::Unreachable => {
                    return self.prequeue(planned, unix, Vec::new(), true, m);
                }
                // Drawn meanwhile (on another node): an ordinary arrival.
                Joined::TooLate => {}
            }
        }
        match self
            .arrive(&params, live.mode == AdmissionMode::Auto, now)
            .await
        {
            Arrival::Admitted => {
                m.admitted(AdmitHow::Immediate);
                Verdict::Proceed(vec![self.mint_pass(site, keys, unix, session_secs, &attrs)])
            }
            Arrival::Queued { ticket, place } => {
                m.tickets.inc();
                let token = Ticket {
                    site: site.to_owned(),
                    number: ticket,
                    issued: unix,
                    eta: place.eta.as_secs(),
                }
                .encode(keys);
                let cookie = cookies::set(TICKET, &token, TICKET_MAX_AGE_SECS, &attrs);
                self.wait(place, &params, vec![cookie], degraded, m)
            }
            Arrival::Unticketed(place) => self.wait(place, &params, Vec::new(), true, m),
        }
    }

    async fn arrive(&self, params: &Params, may_enter: bool, now: Instant) -> Arrival {
        match &self.line {
            Store::Local(line) => line.arrive(params, may_enter, now),
            Store::Shared { line, .. } => line.arrive(params, may_enter, now).await,
        }
    }

    async fn claim(&self, ticket: u64, params: &Params, now: Instant) -> Claim {
        match &self.line {
            Store::Local(line) => line.claim(ticket, params, now),
            Store::Shared { line, .. } => line.claim(ticket, params, now).await,
        }
    }

    fn status_with(&self, params: &Params, now: Instant) -> Status {
        match &self.line {
            Store::Local(line) => line.status(params, now),
            Store::Shared { line, .. } => line.status(params),
        }
    }

    /// Whether the shared store is unreachable (always false for a local line).
    pub fn degraded(&self) -> bool {
        match &self.line {
            Store::Local(_) => false,
            Store::Shared { line, .. } => !line.healthy(),
        }
    }

    /// Refreshes a shared line's view (no-op for a local line); false when
    /// the store did not answer.
    pub async fn refresh(&self, cfg: &AdmissionConfig, live: AdmissionSettings) -> bool {
        match &self.line {
            Store::Local(_) => true,
            Store::Shared { line, .. } => {
                let params = params(cfg, &live, self.sessions.entry_count());
                line.refresh(&params).await.is_ok()
            }
        }
    }

    /// The shared line's epoch and node count, if shared.
    pub fn cluster_view(&self) -> Option<(u64, u64)> {
        match &self.line {
            Store::Local(_) => None,
            Store::Shared { line, .. } => Some((line.epoch(), line.nodes())),
        }
    }

    /// Where the line stands, for metrics and the admin API.
    pub fn status(&self, cfg: &AdmissionConfig, live: &AdmissionSettings, now: Instant) -> Status {
        self.status_with(&params(cfg, live, self.sessions.entry_count()), now)
    }

    /// Passes active within `session_duration`.
    pub fn sessions_active(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.sessions.entry_count()
    }

    /// Turns missed since the last call.
    pub fn take_missed(&self) -> u64 {
        match &self.line {
            Store::Local(line) => line.take_missed(),
            Store::Shared { line, .. } => line.take_missed(),
        }
    }

    /// The counters to save across a restart (a shared line lives in
    /// Redis); `unix`: the app's clock, which counted the pre-queue joins.
    pub fn saved(&self, unix: u64) -> Option<Saved> {
        match &self.line {
            Store::Local(line) => Some(Saved {
                events: self.events.saved(unix),
                ..line.saved()
            }),
            Store::Shared { .. } => None,
        }
    }

    fn wait(
        &self,
        place: Place,
        params: &Params,
        cookies: Vec<HeaderValue>,
        approximate: bool,
        m: &SiteMetrics,
    ) -> Verdict {
        m.waiting_page(false);
        Verdict::Wait(Waiting {
            closed: false,
            approximate,
            ahead: place.ahead,
            eta: place.eta,
            retry_after: poll_after(place.eta, params.claim_window),
            cookies,
        })
    }

    fn keep_alive(
        &self,
        pass: Pass,
        keys: &Keys,
        unix: u64,
        session_secs: u64,
        attrs: &Attributes<'_>,
    ) -> Vec<HeaderValue> {
        // `get` refreshes moka's idle timer; insert when new to this node.
        if self.sessions.get(&pass.id).is_none() {
            self.sessions.insert(pass.id, ());
        }
        if unix.saturating_sub(pass.seen) < RENEW_AFTER_SECS.min(session_secs / 4) {
            return Vec::new();
        }
        let renewed = Pass { seen: unix, ..pass }.encode(keys);
        vec![cookies::set(PASS, &renewed, session_secs, attrs)]
    }

    fn mint_pass(
        &self,
        site: &str,
        keys: &Keys,
        unix: u64,
        session_secs: u64,
        attrs: &Attributes<'_>,
    ) -> HeaderValue {
        let id = self.next_pass.fetch_add(1, Ordering::Relaxed);
        self.sessions.insert(id, ());
        let pass = Pass {
            site: site.to_owned(),
            id,
            seen: unix,
        };
        cookies::set(PASS, &pass.encode(keys), session_secs, attrs)
    }

    /// Whether `ip`'s network may take one more ticket now.
    fn network_allows(&self, ip: IpAddr, cfg: &AdmissionConfig, now: Instant) -> bool {
        let mut taken: Vec<Arc<Mutex<Gcra>>> = Vec::with_capacity(2);
        for (network, per_minute) in networks_of(ip, cfg.tickets_per_network_per_minute) {
            let bucket = self.networks.get_with(network, || {
                Arc::new(Mutex::new(Gcra::new(per_minute, per_minute)))
            });
            let mut gcra = bucket.lock().unwrap_or_else(|p| p.into_inner());
            gcra.set_rate(per_minute, per_minute, now);
            if !gcra.try_take(now) {
                drop(gcra);
                for earlier in taken {
                    earlier
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .refund(now);
                }
                return false;
            }
            drop(gcra);
            taken.push(bucket);
        }
        true
    }
}

fn params(cfg: &AdmissionConfig, live: &AdmissionSettings, active: u64) -> Params {
    Params {
        per_minute: live.new_users_per_minute,
        burst: live.burst,
        claim_window: cfg.claim_window,
        active,
        max_active: live
            .max_active_users
            .map(|m| u64::from(m).min(MAX_SESSIONS_TRACKED)),
        frozen: live.mode == AdmissionMode::Closed,
    }
}

/// The `Retry-After` of a waiting visitor whose turn is `eta` away: further
/// back, slower polls, but always several per claim window.
fn poll_after(eta: Duration, claim_window: Duration) -> u64 {
    let within_claim = (claim_window.as_secs() / 3).max(RETRY_MIN_SECS);
    (eta.as_secs() / 8).clamp(RETRY_MIN_SECS, RETRY_MAX_SECS.min(within_claim))
}

/// The /24 of an IPv4 address or the /64 of an IPv6 one: a whole school
/// behind one NAT shares a budget, a whole ISP does not.
/// How many /64s of one /48 may together ask for tickets, in budgets of a
/// /64: a /48 is one customer site (a school, a home), and without this a
/// bot with an IPv6 allocation would get a fresh budget from every /64.
const SITE_BUDGETS_PER_48: u32 = 4;

/// The ticket buckets an address draws from, with their per-minute budget:
/// its /24 (IPv4: a school behind NAT), or its /64 and its /48 (IPv6).
fn networks_of(ip: IpAddr, per_minute: u32) -> Vec<(u128, u32)> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => vec![(u128::from(u32::from(v4) & 0xFFFF_FF00), per_minute)],
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            // The low bits tell the prefixes apart; neither is an IPv4 key.
            vec![
                ((bits & !((1_u128 << 64) - 1)) | 1, per_minute),
                (
                    (bits & !((1_u128 << 80) - 1)) | 2,
                    per_minute.saturating_mul(SITE_BUDGETS_PER_48),
                ),
            ]
        }
    }
}

fn random_start() -> u64 {
    crate::clock::entropy() >> 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_polls_several_times_per_claim_window_wherever_it_stands() {
        for window in [10, 15, 30, 60, 300] {
            let claim_window = Duration::from_secs(window);
            for eta in [0, 10, 100, 1000, 86_400] {
                let retry = poll_after(Duration::from_secs(eta), claim_window);
                assert!(
                    3 * retry <= window,
                    "every {retry} s is too rare for a {window} s claim window (eta {eta} s)"
                );
                assert!(retry >= RETRY_MIN_SECS, "{retry} s invites a retry storm");
            }
        }
        assert_eq!(
            poll_after(Duration::from_secs(86_400), Duration::from_secs(300)),
            RETRY_MAX_SECS,
            "far back in a line with a long claim window, polls stay slow"
        );
    }

    #[test]
    fn networks_group_a_school_but_not_the_internet() {
        let of = |ip: &str| networks_of(ip.parse().expect("ip"), 300);
        assert_eq!(of("192.0.2.10"), of("192.0.2.250"));
        assert_ne!(of("192.0.2.10"), of("192.0.3.10"));
        assert_eq!(of("2001:db8::1"), of("2001:db8::ffff"));
        let (a, b) = (of("2001:db8:0:1::1"), of("2001:db8:0:2::1"));
        assert_ne!(a[0], b[0], "two /64s have budgets of their own");
        assert_eq!(a[1], b[1], "and share their /48's");
    }

    #[test]
    fn a_bot_spreading_over_its_ipv6_allocation_gets_a_few_budgets_not_thousands() {
        let config = crate::config::Config::parse(
            "[server]\nlisten = \"127.0.0.1:0\"\n[[site]]\nname = \"p\"\nhosts = [\"*\"]\n\
             origin = \"http://127.0.0.1:1\"\n[site.admission]\npaths = [\"/login\"]\n\
             new_users_per_minute = 60\ntickets_per_network_per_minute = 10\n",
        )
        .expect("valid");
        let cfg = config.sites[0].admission.clone().expect("admission");
        let live = config.sites[0].live.admission.expect("admission");
        let gate = Gate::local(&cfg, &live, None, 0);
        let now = Instant::now();
        let granted = (0..1000_u32)
            .filter(|n| {
                let ip: IpAddr = format!("2001:db8:0:{n:x}::1").parse().expect("ip");
                gate.network_allows(ip, &cfg, now)
            })
            .count();
        assert_eq!(granted, 40, "four /64 budgets for the whole /48");
        let elsewhere: IpAddr = "2001:db8:1::1".parse().expect("ip");
        assert!(
            gate.network_allows(elsewhere, &cfg, now),
            "another /48 is apart"
        );
    }
}
