//! The line of one site shared through Redis: one global ticket counter,
//! one global admission budget computed in Redis from Redis's own clock,
//! one cursor, whichever node a pupil reaches.
//!
//! Redis stays off the hot path. Each node refreshes its *view* (cursor,
//! turns handed out, rate, node count) with one script call every
//! `refresh_interval`; waiting-room polls are answered from that view. Redis
//! is called once per arrival and once per admission (the claim), never per
//! poll, so its load grows with arrivals and nodes, not with the people
//! waiting. All keys of a site share one hash tag, so this works on Redis
//! Cluster too; the script is loaded by SHA (EVALSHA, EVAL as fallback).
//!
//! When Redis fails the node **fails static**: passes keep working (they
//! are verified locally), ticket holders keep their place and see an
//! approximate ETA from the last view, and newcomers are admitted at a
//! conservative local share of the budget (last known rate ÷ last known
//! node count) until Redis answers again.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::sync::Arc;

use redis::{Script, ScriptInvocation};
use tokio::time::Instant;

use crate::admission::event::Drawn;
use crate::admission::gcra::Gcra;
use crate::admission::line::{Arrival, Claim, Params, Place, Status, eta_for};
use crate::cluster::Cluster;
use crate::config::NODE_TIMEOUT;

/// Longest wait for Redis before the node decides it is unreachable.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// Ticket numbers skipped after a reset on top of the measured arrivals:
/// those issued by other nodes since the caller's view may be in use.
pub const RESET_MARGIN_TICKETS: u64 = 100;

/// What the script returns: state, ticket, epoch, issued, cursor, nodes,
/// claims in the last minute, their span (ms), turns missed, turns pending.
pub type Reply = (String, u64, u64, u64, u64, u64, u64, u64, u64, Vec<u64>);

/// What the node last learned from Redis.
#[derive(Debug, Clone)]
struct View {
    epoch: u64,
    issued: u64,
    cursor: u64,
    /// Turns handed out and not yet claimed.
    turns: HashSet<u64>,
    nodes: u64,
    /// Admissions per second measured from claims (0 until known).
    rate: f64,
    missed: u64,
    /// Tickets issued per second cluster-wide, from refresh to refresh.
    issued_per_second: f64,
    /// When the last refresh was taken.
    at: Instant,
}

/// line.lua and the keys of one site's line: the one place that knows the
/// order of the script's keys and arguments (public for the conformance
/// test, which calls the script as a node does).
pub struct LineScript {
    script: Script,
    keys: [String; 10],
    /// event.lua: an event's pre-queue and draw, beside the line.
    events: Script,
    /// `{digue:<site>}`: the hash tag of every key of the site.
    tag: String,
}

/// One call of the script, besides the knobs: the op, the caller's last
/// view of the line (the fences against a store that lost its state), and
/// the op's arguments.
pub struct Call<'a> {
    pub op: &'a str,
    pub node: &'a str,
    pub epoch: u64,
    pub issued: u64,
    pub cursor: u64,
    /// Tickets other nodes may have issued since that view.
    pub margin: u64,
    pub ticket: u64,
    pub may_enter: bool,
    /// For `restore`: the turns the caller knew.
    pub turns: &'a [u64],
}

impl LineScript {
    pub fn new(site: &str) -> LineScript {
        let tag = format!("{{digue:{site}}}");
        let keys = [
            "issued", "cursor", "tat", "turns", "claims", "epoch", "nodes", "missed", "active",
            "budget",
        ]
        .map(|k| format!("{tag}:{k}"));
        LineScript {
            script: Script::new(include_str!("line.lua")),
            keys,
            events: Script::new(include_str!("event.lua")),
            tag,
        }
    }

    /// event.lua's invocation for the event `ident` (`name:opens_at`).
    pub fn event_invocation(
        &self,
        op: &str,
        ident: &str,
        known_issued: u64,
        ttl_secs: u64,
    ) -> ScriptInvocation<'_> {
        let mut invocation = self.events.prepare_invoke();
        invocation
            .key(&self.keys[0])
            .key(format!("{}:event:{ident}", self.tag))
            .arg(op)
            .arg(known_issued)
            .arg(ttl_secs.max(1));
        invocation
    }

    /// The invocation, keys and arguments in the order line.lua reads them.
    pub fn invocation(&self, params: &Params, call: &Call<'_>) -> ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        for k in &self.keys {
            invocation.key(k);
        }
        invocation
            .arg(call.op)
            .arg(params.per_minute)
            .arg(params.burst)
            .arg(params.claim_window.as_micros() as u64)
            .arg(params.max_active.unwrap_or(0))
            .arg(call.node)
            .arg(params.active)
            .arg(call.epoch)
            .arg(call.issued)
            .arg(call.cursor)
            .arg(call.ticket)
            .arg(if call.may_enter { "1" } else { "0" })
            .arg(call.margin)
            .arg(if params.frozen { "1" } else { "0" })
            .arg(NODE_TIMEOUT.as_micros() as u64);
        for t in call.turns {
            invocation.arg(*t);
        }
        invocation
    }
}

/// One site's line in Redis, with this node's view of it.
pub struct RedisLine {
    cluster: Arc<Cluster>,
    script: LineScript,
    node: String,
    /// Guards the view; held for copies, never across `.await`.
    view: Mutex<View>,
    healthy: AtomicBool,
    /// The fail-static budget: this node's share while Redis is away.
    fallback: Mutex<Gcra>,
    /// Missed turns already reported to metrics.
    missed_reported: Mutex<u64>,
}

/// An event's pre-queue as Redis has it (event.lua's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreQueueReply {
    /// This pre-queue number is the caller's.
    Joined(u64),
    /// The draw was made: too late to join.
    Drawn(Drawn),
    /// Neither joined nor drawn (a `view`).
    Open,
}

/// Why a Redis call produced nothing usable.
#[derive(Debug)]
pub struct Unreachable;

impl RedisLine {
    pub fn new(cluster: Arc<Cluster>, site: &str, params: &Params) -> RedisLine {
        RedisLine {
            node: cluster.node.clone(),
            cluster,
            script: LineScript::new(site),
            view: Mutex::new(View {
                epoch: 0,
                issued: 0,
                cursor: 0,
                turns: HashSet::new(),
                nodes: 1,
                rate: 0.0,
                missed: 0,
                issued_per_second: 0.0,
                at: Instant::now(),
            }),
            healthy: AtomicBool::new(false),
            fallback: Mutex::new(Gcra::new(params.per_minute, params.burst)),
            missed_reported: Mutex::new(0),
        }
    }

    /// Whether the last call to Redis succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn view(&self) -> View {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One run of the script, updating the view. A reset of the store
    /// (an empty Redis after a restart or failover) is repaired on the spot:
    /// the turns this node knew are given back, and a claim is asked again.
    async fn call(
        &self,
        op: &str,
        params: &Params,
        ticket: u64,
        may_enter: bool,
    ) -> Result<(String, u64), Unreachable> {
        let known = self.view();
        let reply = self
            .invoke(op, params, &known, ticket, may_enter, &[])
            .await?;
        let reset = known.epoch > 0 && reply.2 > known.epoch;
        self.update(op, ticket, reply.clone());
        if !reset {
            return Ok((reply.0, reply.1));
        }
        tracing::warn!(
            epoch = reply.2,
            "the shared store lost its state; counters fenced, turns restored"
        );
        let turns: Vec<u64> = known.turns.iter().copied().collect();
        let restored = self
            .invoke("restore", params, &self.view(), 0, false, &turns)
            .await?;
        self.update("restore", 0, restored);
        if op != "claim" {
            return Ok((reply.0, reply.1));
        }
        let again = self
            .invoke(op, params, &self.view(), ticket, may_enter, &[])
            .await?;
        self.update(op, ticket, again.clone());
        Ok((again.0, again.1))
    }

    async fn invoke(
        &self,
        op: &str,
        params: &Params,
        known: &View,
        ticket: u64,
        may_enter: bool,
        turns: &[u64],
    ) -> Result<Reply, Unreachable> {
        let invocation = self.script.invocation(
            params,
            &Call {
                op,
                node: &self.node,
                epoch: known.epoch,
                issued: known.issued,
                cursor: known.cursor,
                margin: margin(known),
                ticket,
                may_enter,
                turns,
            },
        );
        let reply = self.run_script(&invocation).await?;
        self.healthy.store(true, Ordering::Relaxed);
        Ok(reply)
    }

    /// Runs one script call within [`CALL_TIMEOUT`]; the store is marked
    /// unhealthy when it cannot be reached, fails or does not answer in
    /// time.
    async fn run_script<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Unreachable> {
        let Some(mut conn) = self.cluster.conn() else {
            self.healthy.store(false, Ordering::Relaxed);
            return Err(Unreachable);
        };
        match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut conn)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis call failed");
                self.healthy.store(false, Ordering::Relaxed);
                Err(Unreachable)
            }
            Err(_) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err(Unreachable)
            }
        }
    }

    fn update(&self, op: &str, ticket: u64, reply: Reply) {
        let (_, _, epoch, issued, cursor, nodes, claims, span_ms, missed, turns) = reply;
        let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if op == "refresh" {
            let elapsed = now.saturating_duration_since(view.at).as_secs_f64();
            if elapsed > 0.0 && view.issued > 0 {
                let grown = issued.saturating_sub(view.issued) as f64;
                view.issued_per_second = grown / elapsed;
            }
            view.at = now;
            view.turns = turns.into_iter().collect();
        } else if op == "claim" {
            view.turns.remove(&ticket);
        }
        view.epoch = epoch;
        view.issued = view.issued.max(issued);
        view.cursor = view.cursor.max(cursor);
        view.nodes = nodes.max(1);
        view.rate = if claims >= 10 {
            claims as f64 * 1000.0 / span_ms.max(1) as f64
        } else {
            0.0
        };
        view.missed = missed;
    }

    /// An event's pre-queue: `join` it, `draw` it (once cluster-wide), or
    /// `view` it. `ttl_secs`: how long Redis keeps the event's hash.
    pub async fn event(
        &self,
        op: &str,
        ident: &str,
        ttl_secs: u64,
    ) -> Result<PreQueueReply, Unreachable> {
        let known = self.view().issued;
        let invocation = self.script.event_invocation(op, ident, known, ttl_secs);
        let reply: (String, u64, u64) = self.run_script(&invocation).await?;
        Ok(match reply.0.as_str() {
            "joined" => PreQueueReply::Joined(reply.1),
            "drawn" => {
                let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
                view.issued = view.issued.max(reply.1 + reply.2);
                PreQueueReply::Drawn(Drawn {
                    base: reply.1,
                    count: reply.2,
                })
            }
            _ => PreQueueReply::Open,
        })
    }

    /// Refreshes this node's view: one call per node per interval.
    pub async fn refresh(&self, params: &Params) -> Result<(), Unreachable> {
        self.call("refresh", params, 0, false).await.map(|_| ())
    }

    /// A newcomer. Fail static: at the local share of the budget.
    pub async fn arrive(&self, params: &Params, may_enter: bool, now: Instant) -> Arrival {
        // While the store is down, newcomers do not wait for a call to time
        // out: the refresh loop finds out when it is back.
        let reply = if self.healthy() {
            self.call("arrive", params, 0, may_enter).await
        } else {
            Err(Unreachable)
        };
        if let Ok((state, number)) = reply {
            if state == "admitted" {
                return Arrival::Admitted;
            }
            return Arrival::Queued {
                ticket: number,
                place: self.place(number, params),
            };
        }
        if may_enter && self.local_share(params, now) {
            return Arrival::Admitted;
        }
        let view = self.view();
        Arrival::Unticketed(Place {
            ahead: view.issued.saturating_sub(view.cursor),
            eta: eta_for(view.issued.saturating_sub(view.cursor), rate(&view, params)),
        })
    }

    /// A ticket holder's poll, answered from the view unless its turn came.
    pub async fn claim(&self, ticket: u64, params: &Params, now: Instant) -> Claim {
        let view = self.view();
        // A number far past the view is either that fresh on another node
        // or from a line whose state was lost: only Redis can tell.
        let due = view.turns.contains(&ticket)
            || ticket <= view.cursor
            || ticket > view.issued + margin(&view);
        if !due && self.healthy() {
            return Claim::Waiting(self.place(ticket, params));
        }
        if self.healthy() {
            match self.call("claim", params, ticket, false).await {
                Ok((state, _)) if state == "admitted" => return Claim::Admitted,
                Ok((state, _)) if state == "missed" => return Claim::Missed,
                Ok((state, _)) if state == "lost" => return Claim::Lost,
                Ok(_) => return Claim::Waiting(self.place(ticket, params)),
                Err(Unreachable) => {}
            }
        }
        // Redis is away: the place is kept; only a turn this node saw come
        // can be taken, at the local share (the line itself waits for Redis).
        if ticket <= view.cursor + 1 && self.local_share(params, now) {
            return Claim::Admitted;
        }
        Claim::Waiting(self.place(ticket, params))
    }

    pub fn status(&self, params: &Params) -> Status {
        let view = self.view();
        Status {
            waiting: view.issued.saturating_sub(view.cursor),
            unclaimed: view.turns.len() as u64,
            rate: rate(&view, params),
        }
    }

    /// Turns missed cluster-wide since the last call (for metrics).
    pub fn take_missed(&self) -> u64 {
        let total = self.view().missed;
        let mut reported = self
            .missed_reported
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let new = total.saturating_sub(*reported);
        *reported = total;
        new
    }

    /// The epoch of the shared line: how many times Redis lost its state.
    pub fn epoch(&self) -> u64 {
        self.view().epoch
    }

    pub fn nodes(&self) -> u64 {
        self.view().nodes
    }

    fn place(&self, ticket: u64, params: &Params) -> Place {
        let view = self.view();
        let ahead = ticket.saturating_sub(view.cursor + 1);
        Place {
            ahead,
            eta: eta_for(ahead, rate(&view, params)),
        }
    }

    /// This node's share of the budget while Redis is unreachable: the last
    /// known rate divided by the last known number of nodes, so the nodes
    /// together stay within the global budget.
    fn local_share(&self, params: &Params, now: Instant) -> bool {
        let nodes = u32::try_from(self.view().nodes.max(1)).unwrap_or(u32::MAX);
        let mut gcra = self.fallback.lock().unwrap_or_else(|p| p.into_inner());
        gcra.set_rate(
            params.per_minute / nodes,
            (params.burst / nodes).max(1),
            now,
        );
        gcra.try_take(now)
    }
}

/// Tickets other nodes may have issued since `view` was taken: ~2 s of
/// arrivals (a refresh is at most 2 s old).
fn margin(view: &View) -> u64 {
    (view.issued_per_second * 2.0) as u64 + RESET_MARGIN_TICKETS
}

fn rate(view: &View, params: &Params) -> f64 {
    let configured = f64::from(params.per_minute) / 60.0;
    if view.rate > 0.0 {
        view.rate.max(configured / 4.0)
    } else {
        configured
    }
}
