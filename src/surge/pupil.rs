//! One virtual pupil following the session script: open the entry page,
//! wait in line the way a browser does, get in, load the page's assets,
//! then make a few per-user calls with think times. Impatient pupils reload
//! instead of letting the page poll (the 2020 retry bubble), quitters leave
//! after a while, bots hammer the entry page without cookies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::Full;
use tokio::time::{Instant, sleep, sleep_until};

use super::client::{Conn, Failure, Jar, Meaning, RoomState, assets_of, classify};
use super::record::{EtaSample, Kind, Phase, Recorder};
use super::rng::Rng;
use super::scenario::{Mix, Plan};
use crate::admission::cookies::TICKET;

/// What a browser sends when it navigates to a page.
const ACCEPT_HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
/// What the waiting page's script sends when it polls.
const ACCEPT_JSON: &str = "application/json";
const ACCEPT_ANY: &str = "*/*";
const ACCEPT_LANGUAGE: &str = "fr-FR,fr;q=0.9,en;q=0.5";
const USER_AGENT: &str = concat!("digue-surge/", env!("CARGO_PKG_VERSION"));
/// The portal's session cookie, echoed by per-user answers as `"session"`.
const SESSION_COOKIE: &str = "JSESSIONID";
/// A busy page or waiting room without `Retry-After`: what the page's
/// meta refresh would do.
const RETRY_FALLBACK: Duration = Duration::from_secs(5);
/// `Retry-After` is honoured up to this, so a wrong header cannot park a
/// pupil for the whole run. Applied before the jitter, so no value the
/// target sends can overflow it.
const MAX_PAUSE: Duration = Duration::from_secs(120);
/// The shortest pause between two requests for the entry page that the
/// target asks for (`Retry-After: 0`, an "admitted" status answered again
/// and again): a page's script, a reload, a person are never faster, and a
/// wrong answer must not turn a pupil into a busy loop.
const MIN_POLL: Duration = Duration::from_millis(250);
/// Back-off after an error: 1 s, 2 s, 4 s… up to this (what browsers and
/// users retrying by hand roughly do).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How a pupil behaves in front of a waiting room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persona {
    /// Lets the waiting page poll at the pace it asks for.
    Patient,
    /// Reloads the entry page every `impatient_reload`.
    Impatient,
    /// Patient, but leaves after `give_up_after` without getting in.
    Quitter,
    /// No cookies; requests the entry page every `bot_interval`.
    Bot,
}

/// Exactly `round(share × n)` pupils of each kind (patient ones take the
/// rest), in an order shuffled by `seed`, so the report's counts are the
/// scenario's and the kinds are spread along the arrival curve.
pub(crate) fn personas(n: u64, mix: Mix, seed: u64) -> Vec<Persona> {
    let count = |share: f64| ((share * n as f64).round() as u64).min(n);
    let bots = count(mix.bots);
    let impatient = count(mix.impatient).min(n - bots);
    let quitters = count(mix.quitters).min(n - bots - impatient);
    let mut all = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for (persona, k) in [
        (Persona::Bot, bots),
        (Persona::Impatient, impatient),
        (Persona::Quitter, quitters),
        (Persona::Patient, n - bots - impatient - quitters),
    ] {
        all.extend(std::iter::repeat_n(
            persona,
            usize::try_from(k).unwrap_or(0),
        ));
    }
    let mut rng = Rng::new(seed);
    for i in (1..all.len()).rev() {
        all.swap(i, rng.below(i + 1));
    }
    all
}

/// One answer (or its absence) and what it means.
struct Fetched {
    meaning: Meaning,
    body: Bytes,
}

/// A virtual pupil: one browser tab with its own connection and cookies.
pub(crate) struct Pupil {
    id: u64,
    persona: Persona,
    plan: Arc<Plan>,
    rec: Arc<Recorder>,
    conn: Conn,
    jar: Jar,
    rng: Rng,
    phase: Phase,
    /// When the pupil arrived on the curve: its time to get in counts from
    /// here, a wait for a slot under the concurrency ceiling included.
    arrived: Instant,
}

impl Pupil {
    pub(crate) fn new(
        id: u64,
        persona: Persona,
        plan: Arc<Plan>,
        rec: Arc<Recorder>,
        addr: SocketAddr,
        arrived: Instant,
    ) -> Pupil {
        let seed = plan.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Pupil {
            id,
            persona,
            plan,
            rec,
            conn: Conn::new(addr),
            jar: Jar::default(),
            rng: Rng::new(seed),
            phase: Phase::Arriving,
            arrived,
        }
    }

    /// Runs the script to its end (or until the task is aborted at the time
    /// limit: the recorder then holds the phase the pupil had reached).
    pub(crate) async fn live(mut self) {
        if self.persona == Persona::Bot {
            self.rec.bots_started.fetch_add(1, Ordering::Relaxed);
            return self.hammer().await;
        }
        self.rec.arrive();
        if let Some(page) = self.get_in().await {
            self.browse(&page).await;
            self.set(Phase::Done);
        }
    }

    fn set(&mut self, phase: Phase) {
        self.rec.moved(self.phase, phase);
        self.phase = phase;
    }

    /// Until the entry page is served: returns its body, or `None` when the
    /// pupil gave up or failed.
    async fn get_in(&mut self) -> Option<Bytes> {
        let arrived = self.arrived;
        let entry = self.plan.entry.clone();
        let patience = self.plan.patience;
        // Patience is with the portal: it runs from the first request, not
        // from a wait for a slot under the simulator's own ceiling.
        let give_up_at =
            (self.persona == Persona::Quitter).then(|| Instant::now() + patience.give_up_after);
        let mut errors = 0;
        let mut poll = false;
        let mut ticket_at = None;
        let mut eta: Option<(f64, f64, f64)> = None;
        let mut eta_read = false;
        loop {
            let accept = if poll { ACCEPT_JSON } else { ACCEPT_HTML };
            let got = self.fetch(Method::GET, &entry, accept, None, true).await;
            let now = Instant::now();
            let holds_ticket = self.jar.get(TICKET).is_some();
            if holds_ticket && ticket_at.is_none() {
                ticket_at = Some(now);
            }
            let pause = match got.meaning.kind {
                Kind::Page | Kind::CacheHit => {
                    let sample = ticket_at.zip(eta).map(|(at, (shown, lo, hi))| EtaSample {
                        shown,
                        range: (lo, hi),
                        actual: now.duration_since(at).as_secs_f64(),
                    });
                    self.rec
                        .admitted(self.id, now.duration_since(arrived), sample);
                    self.set(Phase::In);
                    return Some(got.body);
                }
                Kind::WaitingRoom if got.meaning.state == Some(RoomState::Admitted) => {
                    errors = 0;
                    self.set(Phase::Waiting);
                    // The page's script reloads at once to get the page; an
                    // answer saying so again and again gets a pause.
                    poll = false;
                    MIN_POLL
                }
                Kind::WaitingRoom => {
                    errors = 0;
                    self.set(Phase::Waiting);
                    if !holds_ticket && got.meaning.state != Some(RoomState::Closed) {
                        self.rec.ticketless_waits.fetch_add(1, Ordering::Relaxed);
                    }
                    if let (Some(at), None) = (ticket_at, eta) {
                        if let Some(shown) = eta_of(&got.meaning) {
                            self.rec.eta_shown(self.id, at, shown.2);
                            eta = Some(shown);
                        } else if !eta_read {
                            // The page shows the ETA; the simulator reads the
                            // same figure from one JSON status request now.
                            eta_read = true;
                            poll = true;
                            continue;
                        }
                    }
                    if self.persona == Persona::Impatient {
                        poll = false;
                        patience.impatient_reload
                    } else {
                        poll = true;
                        self.asked_pause(got.meaning.retry_after)
                    }
                }
                Kind::Busy => {
                    self.set(Phase::Waiting);
                    poll = false;
                    if self.persona == Persona::Impatient {
                        patience.impatient_reload
                    } else {
                        self.asked_pause(got.meaning.retry_after)
                    }
                }
                // A redirect away from the gated page: retried like an
                // error, so a wrong `--entry` ends in "failed", not "admitted".
                Kind::Error | Kind::Timeout | Kind::Redirect => {
                    errors += 1;
                    if errors >= patience.max_errors {
                        self.rec.left_line(self.id, now);
                        self.set(Phase::Failed);
                        return None;
                    }
                    self.set(Phase::Waiting);
                    poll = false;
                    if self.persona == Persona::Impatient {
                        patience.impatient_reload
                    } else {
                        Duration::from_secs(1 << (errors - 1).min(5)).min(MAX_BACKOFF)
                    }
                }
            };
            let wake = now + pause.min(MAX_PAUSE);
            if let Some(limit) = give_up_at
                && wake >= limit
            {
                sleep_until(limit).await;
                self.rec.left_line(self.id, Instant::now());
                self.set(Phase::GaveUp);
                return None;
            }
            sleep_until(wake).await;
        }
    }

    /// The pause a waiting room or busy page asks for, capped, then spread
    /// like the page's script does, never under [`MIN_POLL`].
    fn asked_pause(&mut self, retry_after: Option<Duration>) -> Duration {
        let asked = retry_after.unwrap_or(RETRY_FALLBACK).min(MAX_PAUSE);
        self.rng.jitter(asked).max(MIN_POLL)
    }

    /// The page's assets, then the per-user steps with think times.
    async fn browse(&mut self, page: &Bytes) {
        let plan = Arc::clone(&self.plan);
        let assets = match &plan.script.assets {
            Some(list) => list.clone(),
            None => assets_of(&String::from_utf8_lossy(page)),
        };
        let mut fetched = 0;
        for asset in &assets {
            let got = self.fetch(Method::GET, asset, ACCEPT_ANY, None, true).await;
            if got.meaning.kind.served() {
                fetched += 1;
            }
        }
        self.rec
            .assets_fetched
            .fetch_add(fetched, Ordering::Relaxed);
        if fetched > 0 {
            self.rec.pupils_with_assets.fetch_add(1, Ordering::Relaxed);
        }
        for (i, step) in plan.script.steps.iter().enumerate() {
            let think = self
                .rng
                .between(plan.script.think_min, plan.script.think_max);
            sleep(think).await;
            let (path, body) = step.render(i + 1, self.id);
            let got = self
                .fetch(step.method.clone(), &path, ACCEPT_JSON, body, true)
                .await;
            if got.meaning.kind.served() {
                self.rec.steps_done.fetch_add(1, Ordering::Relaxed);
            }
            self.check_session(&got.meaning);
        }
    }

    /// Invariant 1 seen from outside: a per-user answer that echoes a
    /// session id must echo this pupil's own.
    fn check_session(&self, meaning: &Meaning) {
        let echoed = meaning
            .json
            .as_ref()
            .and_then(|j| j.get("session"))
            .and_then(|s| s.as_str());
        if let (Some(mine), Some(echoed)) = (self.jar.get(SESSION_COOKIE), echoed) {
            self.rec.sessions_checked.fetch_add(1, Ordering::Relaxed);
            if mine != echoed {
                self.rec.sessions_mismatched.fetch_add(1, Ordering::Relaxed);
                tracing::error!(pupil = self.id, "a pupil was answered with another session");
            }
        }
    }

    /// A bot: the entry page again and again, no cookies, until stopped.
    async fn hammer(&mut self) {
        let entry = self.plan.entry.clone();
        let every = self.plan.patience.bot_interval;
        loop {
            self.fetch(Method::GET, &entry, ACCEPT_HTML, None, false)
                .await;
            self.rec.bot_requests.fetch_add(1, Ordering::Relaxed);
            let pause = self.rng.jitter(every);
            sleep(pause).await;
        }
    }

    /// One request, recorded; `cookies` says whether the jar is used.
    async fn fetch(
        &mut self,
        method: Method,
        path: &str,
        accept: &'static str,
        body: Option<String>,
        cookies: bool,
    ) -> Fetched {
        // Scenario paths are checked when the plan is read and page links
        // when they are read: this is a guard, and it never sends another
        // path instead (`/` would be a cache hit that proves nothing).
        let Some(uri) = super::scenario::request_target(path) else {
            tracing::debug!(pupil = self.id, path, "not a request target; not sent");
            self.rec.response(Kind::Error, Duration::ZERO, 0);
            return Fetched {
                meaning: Meaning::failed(Kind::Error),
                body: Bytes::new(),
            };
        };
        let cookie = if cookies { self.jar.header() } else { None };
        let body = body.map(Bytes::from);
        let host = HeaderValue::from_str(&self.plan.target.authority).ok();
        let make = || {
            let mut req = Request::new(Full::new(body.clone().unwrap_or_default()));
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri.clone();
            let h = req.headers_mut();
            if let Some(host) = &host {
                h.insert(header::HOST, host.clone());
            }
            h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
            h.insert(header::ACCEPT, HeaderValue::from_static(accept));
            h.insert(
                header::ACCEPT_LANGUAGE,
                HeaderValue::from_static(ACCEPT_LANGUAGE),
            );
            if let Some(c) = &cookie {
                h.insert(header::COOKIE, c.clone());
            }
            if body.is_some() {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            req
        };
        let started = Instant::now();
        let result = self.conn.send(make, self.plan.request_timeout).await;
        let latency = started.elapsed();
        let (meaning, body) = match result {
            Ok(answer) => {
                if cookies {
                    self.jar.store(&answer.head.headers);
                }
                let meaning = classify(&answer);
                (meaning, answer.body)
            }
            Err(failure) => {
                let kind = match failure {
                    Failure::Timeout => Kind::Timeout,
                    Failure::Error(e) => {
                        tracing::debug!(pupil = self.id, error = %e, "request failed");
                        Kind::Error
                    }
                };
                (Meaning::failed(kind), Bytes::new())
            }
        };
        self.rec.response(meaning.kind, latency, body.len());
        Fetched { meaning, body }
    }
}

/// The ETA of a JSON status: `eta_seconds` and the range shown.
fn eta_of(meaning: &Meaning) -> Option<(f64, f64, f64)> {
    let json = meaning.json.as_ref()?;
    let eta = json.get("eta_seconds")?.as_f64()?;
    let range = json
        .get("eta_range_seconds")
        .and_then(|r| Some((r.get(0)?.as_f64()?, r.get(1)?.as_f64()?)));
    let (lo, hi) = range.unwrap_or((eta, eta));
    Some((eta, lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personas_follow_the_mix_exactly() {
        let mix = Mix {
            impatient: 0.2,
            quitters: 0.1,
            bots: 0.05,
        };
        let all = personas(1000, mix, 7);
        let count = |p: Persona| all.iter().filter(|x| **x == p).count();
        assert_eq!(count(Persona::Bot), 50);
        assert_eq!(count(Persona::Impatient), 200);
        assert_eq!(count(Persona::Quitter), 100);
        assert_eq!(count(Persona::Patient), 650);
        assert_ne!(
            all[..50].iter().filter(|p| **p == Persona::Bot).count(),
            50,
            "shuffled"
        );
        assert_eq!(all, personas(1000, mix, 7), "reproducible");
    }

    #[test]
    fn the_eta_is_read_with_its_range() {
        let meaning = Meaning {
            kind: Kind::WaitingRoom,
            state: Some(RoomState::Queued),
            json: Some(serde_json::json!({"eta_seconds": 40, "eta_range_seconds": [32, 62]})),
            retry_after: None,
        };
        assert_eq!(eta_of(&meaning), Some((40.0, 32.0, 62.0)));
    }
}
