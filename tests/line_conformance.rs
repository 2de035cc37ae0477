//! One table of steps for the waiting line, run against both of its
//! implementations: the in-process line of one site
//! (`digue::admission::line`) and the line the nodes of a cluster share
//! through Redis (`src/admission/line.lua`, on a real `redis-server` this
//! test starts on a free port). Both must give the same reply to every
//! step, except where a step records a deliberate difference, and why.
//!
//! Time is injected on both sides: the in-process line runs on tokio's
//! paused clock (its `now` arguments, and the `Instant::now()` it reads when
//! saving and restoring), the script reads its clock from an eleventh key
//! the adapter sets before each call (nodes pass ten keys: Redis `TIME`).
//!
//! The Lua side is driven one call per step, with the arguments a node
//! sends ([`LineScript::invocation`]), not through `RedisLine`: that one
//! answers most polls from its periodic view, which is node behaviour, not
//! the line's.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use digue::admission::event::Schedule;
use digue::admission::line::{Arrival, Claim, Line, Params};
use digue::admission::redis::{Call, LineScript, RESET_MARGIN_TICKETS, Reply};
use digue::config::{EventConfig, EventSpec};
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

// ---- the table ----

/// What happens at one step.
#[derive(Debug, Clone, Copy)]
enum Action {
    /// A newcomer; `may_enter` is false in `queue_all` mode.
    Arrive {
        may_enter: bool,
    },
    /// A ticket holder asks whether its turn came.
    Claim(u64),
    /// How the line stands (metrics, the admin API; a node's refresh).
    Look,
    /// A live change of the admission rate (0 stops the line).
    Rate {
        per_minute: u32,
        burst: u32,
    },
    /// The site is closed (the line stands still) or reopened.
    Close,
    Open,
    /// Sessions active now (counted against `max_active_users`).
    Active(u64),
    /// In process: the counters saved, then a new line restored from them
    /// (a clean restart, at once). In Redis: the node starts again with an
    /// empty view (same node id, as a restarted host keeps its name) and
    /// reads the same keys.
    Restart,
    /// A newcomer joins the pre-queue of the scenario's event
    /// (`admission::event`; event.lua in Redis).
    Join,
    /// The event opens: its pre-queue's numbers are reserved at the end of
    /// the line, once.
    Draw,
}

/// The reply the implementations must give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Admitted,
    Queued {
        ticket: u64,
        ahead: u64,
    },
    Waiting {
        ahead: u64,
    },
    Missed,
    Lost,
    /// Tickets waiting for their turn, turns handed out but not claimed,
    /// turns missed since the line began.
    Line {
        waiting: u64,
        unclaimed: u64,
        missed: u64,
    },
    /// A change of the knobs, or a restart: nothing to answer.
    Done,
    /// The pre-queue number handed out.
    Joined(u64),
    /// Too late to join: the draw was made.
    TooLate,
    /// The draw: the line's number before the block, and its size.
    Drawn {
        base: u64,
        count: u64,
    },
}

use Action::{Active, Arrive, Claim as Ask, Close, Draw, Join, Look, Open, Rate, Restart};
use Answer::{Admitted, Done, Joined, Lost, Missed, TooLate};

#[derive(Debug)]
struct Step {
    /// Milliseconds since the line began.
    at_ms: u64,
    action: Action,
    /// The reply of both implementations, unless `lua` says otherwise.
    expect: Answer,
    /// Where line.lua answers differently on purpose: its reply, and why.
    lua: Option<Deliberate>,
}

/// A deliberate difference between the two implementations.
#[derive(Debug, Clone, Copy)]
struct Deliberate {
    answer: Answer,
    why: &'static str,
}

const fn at(at_ms: u64, action: Action, expect: Answer) -> Step {
    Step {
        at_ms,
        action,
        expect,
        lua: None,
    }
}

/// Which implementation runs the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    InProcess,
    Lua,
}

impl Step {
    /// line.lua answers `answer` here on purpose, for the reason `why`.
    const fn but_lua(self, answer: Answer, why: &'static str) -> Step {
        Step {
            lua: Some(Deliberate { answer, why }),
            ..self
        }
    }

    /// The reply `side` must give, and why it differs, if it does.
    fn expected(&self, side: Side) -> (Answer, Option<&'static str>) {
        match (side, self.lua) {
            (Side::Lua, Some(d)) => (d.answer, Some(d.why)),
            (Side::Lua | Side::InProcess, _) => (self.expect, None),
        }
    }
}

const fn line(waiting: u64, unclaimed: u64, missed: u64) -> Answer {
    Answer::Line {
        waiting,
        unclaimed,
        missed,
    }
}

const fn queued(ticket: u64, ahead: u64) -> Answer {
    Answer::Queued { ticket, ahead }
}

const fn drawn(base: u64, count: u64) -> Answer {
    Answer::Drawn { base, count }
}

const fn waiting(ahead: u64) -> Answer {
    Answer::Waiting { ahead }
}

const fn rate(per_minute: u32, burst: u32) -> Action {
    Action::Rate { per_minute, burst }
}

const ENTER: Action = Arrive { may_enter: true };
const QUEUE_ALL: Action = Arrive { may_enter: false };

/// A line's knobs when it begins; steps change them.
const fn knobs(per_minute: u32, burst: u32, claim_window_s: u64) -> Params {
    Params {
        per_minute,
        burst,
        claim_window: Duration::from_secs(claim_window_s),
        active: 0,
        max_active: None,
        frozen: false,
    }
}

/// Each scenario starts from an empty line.
struct Scenario {
    name: &'static str,
    params: Params,
    steps: &'static [Step],
}

const TABLE: &[Scenario] = &[
    Scenario {
        name: "newcomers enter while nobody waits and the budget allows, then queue in order",
        params: knobs(60, 2, 30),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, ENTER, Admitted),
            at(0, ENTER, queued(1, 0)),
            at(0, ENTER, queued(2, 1)),
            at(0, QUEUE_ALL, queued(3, 2)),
            at(0, Ask(1), waiting(0)),
            at(0, Look, line(3, 0, 0)),
            // The burst is spent until 1 s: then one turn a second.
            at(999, Ask(1), waiting(0)),
            at(1000, Ask(2), waiting(0)),
            at(1000, Ask(1), Admitted),
            at(1000, Ask(1), Missed),
            at(1000, ENTER, queued(4, 2)),
            at(2000, Ask(2), Admitted),
            at(2000, Look, line(2, 0, 0)),
        ],
    },
    Scenario {
        name: "in queue_all mode everybody takes a ticket and the budget moves the line at once",
        params: knobs(60, 5, 30),
        steps: &[
            at(0, QUEUE_ALL, queued(1, 0)),
            at(0, Ask(1), Admitted),
            at(0, QUEUE_ALL, queued(2, 0)),
            at(0, Ask(2), Admitted),
            at(0, Look, line(0, 0, 0)),
        ],
    },
    Scenario {
        name: "a turn unclaimed for a whole claim window is missed and its slot passes on",
        params: knobs(60, 1, 30),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, ENTER, queued(1, 0)),
            at(0, ENTER, queued(2, 1)),
            at(0, ENTER, queued(3, 2)),
            at(1000, Look, line(2, 1, 0)),
            at(2000, Ask(2), Admitted),
            at(3000, Look, line(0, 2, 0)),
            // Ticket 1's turn came at 1 s: its last moment is 31 s - 1 ms.
            at(30_999, Ask(1), Admitted),
            // Ticket 3's came at 3 s: gone at 33 s sharp.
            at(33_000, Ask(3), Missed),
            at(33_000, Look, line(0, 0, 1)),
        ],
    },
    Scenario {
        name: "a missed turn is refunded to the budget, so the next ticket's turn comes at once",
        params: knobs(60, 1, 5),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, ENTER, queued(1, 0)),
            at(0, ENTER, queued(2, 1)),
            at(0, ENTER, queued(3, 2)),
            at(500, Look, line(3, 0, 0)),
            at(1000, Look, line(2, 1, 0)),
            // Ticket 2's turn at 5.5 s spends the budget until 6.5 s ...
            at(5500, Look, line(1, 2, 0)),
            // ... but ticket 1's turn expires at 6 s and gives its slot back.
            at(6000, Look, line(0, 2, 1)),
            at(6000, Ask(3), Admitted),
            at(6000, Ask(2), Admitted),
            at(6000, Ask(1), Missed),
        ],
    },
    Scenario {
        name: "a live rate change applies at once without a burst, 0 stops the line, resuming starts empty",
        params: knobs(60, 1, 30),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, ENTER, queued(1, 0)),
            at(0, ENTER, queued(2, 1)),
            at(0, ENTER, queued(3, 2)),
            at(0, rate(600, 1), Done),
            // The spent budget stays spent: the next turn one new interval on.
            at(0, Look, line(3, 0, 0)),
            at(100, Look, line(2, 1, 0)),
            at(250, Look, line(1, 2, 0)),
            at(250, rate(0, 1), Done),
            at(10_000, Look, line(1, 2, 0)),
            at(10_000, ENTER, queued(4, 1)),
            at(10_000, Ask(3), waiting(0)),
            at(10_000, rate(60, 1), Done),
            at(10_000, Look, line(2, 2, 0)),
            at(10_999, Ask(3), waiting(0)),
            at(11_000, Ask(3), Admitted),
            at(11_000, Ask(1), Admitted),
            at(11_000, Ask(2), Admitted),
            // A burst raised live releases no burst: still one a second.
            at(11_000, rate(60, 5), Done),
            at(11_000, ENTER, queued(5, 1)),
            at(11_000, ENTER, queued(6, 2)),
            at(11_500, Look, line(3, 0, 0)),
            at(12_000, Look, line(2, 1, 0)),
            at(12_500, Look, line(2, 1, 0)),
            at(13_000, Look, line(1, 2, 0)),
        ],
    },
    Scenario {
        name: "a closed line hands out no turn, expires none, and lets pending turns be claimed",
        params: knobs(60, 1, 30),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, ENTER, queued(1, 0)),
            at(0, ENTER, queued(2, 1)),
            at(1000, Look, line(1, 1, 0)),
            at(20_000, Close, Done),
            at(20_000, Look, line(1, 1, 0)),
            at(20_000, ENTER, queued(3, 1)),
            at(50_000, Look, line(2, 1, 0)),
            at(50_000, Ask(2), waiting(0)),
            at(60_000, Look, line(2, 1, 0)),
            at(60_000, Open, Done),
            at(60_000, Ask(2), Admitted),
            at(60_000, Ask(1), Admitted),
            at(60_000, Look, line(1, 0, 0)),
        ],
    },
    Scenario {
        name: "max_active_users holds turns back, and pending turns count as sessions",
        params: Params {
            max_active: Some(2),
            active: 2,
            ..knobs(600, 10, 30)
        },
        steps: &[
            at(0, ENTER, queued(1, 0)),
            at(5000, Ask(1), waiting(0)),
            at(5000, Active(1), Done),
            at(5000, Look, line(0, 1, 0)),
            at(5000, ENTER, queued(2, 0)),
            at(5000, Ask(2), waiting(0)),
            at(5000, Ask(1), Admitted),
            at(5000, Ask(2), Admitted),
            at(5000, Active(2), Done),
            at(5000, ENTER, queued(3, 0)),
            at(6000, Ask(3), waiting(0)),
        ],
    },
    Scenario {
        name: "a ticket past the count keeps its number when near, and is lost when far",
        params: knobs(60, 1, 30),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, Ask(40_000), Lost),
            at(0, Ask(5), waiting(4)),
            at(0, ENTER, queued(6, 5)),
            at(0, Look, line(6, 0, 0)),
            at(0, Ask(50), Lost).but_lua(
                waiting(49),
                "the in-process count is exact (only its process issues numbers; a crash \
                 restore adds its own margin), so its bound is restart_margin = burst + \
                 per_minute/30 + 10 = 13 here; in a cluster other nodes issue numbers the \
                 caller's view has not seen yet, so line.lua's bound is the margin the caller \
                 sends (RESET_MARGIN_TICKETS = 100, plus 2 s of cluster-wide arrivals)",
            ),
        ],
    },
    Scenario {
        name: "a ticket past the count, with the budget free, takes the turn its number is given",
        params: knobs(60, 5, 30),
        steps: &[at(0, Ask(3), Admitted)],
    },
    Scenario {
        name: "a turn pending when the site closes keeps the rest of its claim window after it reopens",
        params: knobs(60, 1, 30),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, ENTER, queued(1, 0)),
            at(1000, Look, line(0, 1, 0)),
            at(20_000, Close, Done),
            at(20_000, Look, line(0, 1, 0)),
            at(60_000, Look, line(0, 1, 0)),
            at(60_000, Open, Done),
            at(60_000, Look, line(0, 1, 0)),
            // Granted at 1 s, closed from 20 s to 60 s: due by 71 s.
            at(70_999, Look, line(0, 1, 0)),
            at(71_000, Ask(1), Missed),
        ],
    },
    Scenario {
        name: "after a restart tickets keep their places, a pending turn its holder, the budget its debt",
        params: knobs(60, 3, 30),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, ENTER, Admitted),
            at(0, ENTER, Admitted),
            at(0, ENTER, queued(1, 0)),
            at(0, ENTER, queued(2, 1)),
            at(1000, Look, line(1, 1, 0)),
            at(1000, Restart, Done),
            at(1000, Look, line(1, 1, 0)),
            at(1500, Ask(1), Admitted),
            at(1500, Ask(2), waiting(0)),
            at(1500, ENTER, queued(3, 1)),
            at(2000, Ask(2), Admitted),
            at(2000, Restart, Done),
            at(2000, Ask(3), waiting(0)),
            at(3000, Ask(3), Admitted),
            at(3000, Look, line(0, 0, 0)),
        ],
    },
    Scenario {
        name: "an event's pre-queue is drawn into the line once, ahead of later arrivals",
        params: knobs(60, 1, 30),
        steps: &[
            at(0, ENTER, Admitted),
            at(0, ENTER, queued(1, 0)),
            at(0, Join, Joined(0)),
            at(0, Join, Joined(1)),
            at(0, Join, Joined(2)),
            at(0, Restart, Done),
            at(0, Join, Joined(3)),
            at(0, Draw, drawn(1, 4)),
            at(0, Draw, drawn(1, 4)),
            at(0, Join, TooLate),
            at(0, ENTER, queued(6, 5)),
            at(0, Restart, Done),
            at(0, Draw, drawn(1, 4)),
            at(0, ENTER, queued(7, 6)),
            at(1000, Ask(1), Admitted),
            at(2000, Ask(2), Admitted),
            at(2000, Look, line(5, 0, 0)),
        ],
    },
];

// ---- running it ----

/// One implementation of the line, at one step.
trait Implementation {
    const SIDE: Side;
    async fn step(&mut self, at: Duration, params: &Params, action: Action) -> Answer;
}

/// Runs every scenario on a fresh line from `fresh` and returns every step
/// whose answer differs from the table, described.
async fn run<I: Implementation>(fresh: impl AsyncFn(usize) -> I) -> Vec<String> {
    let mut wrong = Vec::new();
    for (n, scenario) in TABLE.iter().enumerate() {
        let mut line = fresh(n).await;
        let mut params = scenario.params;
        for (i, step) in scenario.steps.iter().enumerate() {
            match step.action {
                Rate { per_minute, burst } => {
                    params.per_minute = per_minute;
                    params.burst = burst;
                }
                Close => params.frozen = true,
                Open => params.frozen = false,
                Active(active) => params.active = active,
                Arrive { .. } | Ask(_) | Look | Restart | Join | Draw => {}
            }
            let got = line
                .step(Duration::from_millis(step.at_ms), &params, step.action)
                .await;
            let (expect, why) = step.expected(I::SIDE);
            if got != expect {
                let why = why
                    .map(|w| format!("\n    (a deliberate difference: {w})"))
                    .unwrap_or_default();
                wrong.push(format!(
                    "{}, step {i} (at {} ms, {:?}): expected {expect:?}, got {got:?}{why}",
                    scenario.name, step.at_ms, step.action
                ));
            }
        }
    }
    wrong
}

fn assert_conforms(implementation: &str, wrong: &[String]) {
    assert!(
        wrong.is_empty(),
        "the {implementation} line departs from the table:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test(start_paused = true)]
async fn the_in_process_line_gives_the_tables_reply_at_every_step() {
    let wrong = run(async |_| InProcess::new()).await;
    assert_conforms("in-process", &wrong);
}

#[tokio::test]
async fn the_redis_line_gives_the_tables_reply_at_every_step() {
    let redis = Redis::start().await;
    let wrong = run(async |n| Shared::new(&redis, &format!("conformance-{n}")).await).await;
    assert_conforms("Redis (line.lua)", &wrong);
}

// ---- the in-process line ----

/// `admission::line::Line` on tokio's paused clock.
struct InProcess {
    line: Option<Line>,
    /// The scenario's event, saved and restored with the line.
    schedule: Schedule,
    start: Instant,
    /// `take_missed` resets; the table counts from the start.
    missed: u64,
}

impl InProcess {
    fn new() -> InProcess {
        InProcess {
            line: None,
            schedule: Schedule::new(&[event()], &[], true),
            start: Instant::now(),
            missed: 0,
        }
    }

    /// Moves the paused clock to `at` past the start; `Line::restore` and
    /// `Line::saved` read it too.
    async fn now(&self, at: Duration) -> Instant {
        let target = self.start + at;
        let now = Instant::now();
        assert!(target >= now, "the table's steps are in time order");
        tokio::time::advance(target - now).await;
        Instant::now()
    }
}

impl Implementation for InProcess {
    const SIDE: Side = Side::InProcess;
    async fn step(&mut self, at: Duration, params: &Params, action: Action) -> Answer {
        let now = self.now(at).await;
        let line = self.line.get_or_insert_with(|| Line::new(params));
        match action {
            Arrive { may_enter } => match line.arrive(params, may_enter, now) {
                Arrival::Admitted => Admitted,
                Arrival::Queued { ticket, place } => Answer::Queued {
                    ticket,
                    ahead: place.ahead,
                },
                Arrival::Unticketed(place) => {
                    panic!("the in-process line always issues a ticket: {place:?}")
                }
            },
            Ask(ticket) => match line.claim(ticket, params, now) {
                Claim::Admitted => Admitted,
                Claim::Waiting(place) => Answer::Waiting { ahead: place.ahead },
                Claim::Missed => Missed,
                Claim::Lost => Lost,
            },
            Look => {
                let status = line.status(params, now);
                self.missed += line.take_missed();
                Answer::Line {
                    waiting: status.waiting,
                    unclaimed: status.unclaimed,
                    missed: self.missed,
                }
            }
            Restart => {
                self.missed += line.take_missed();
                *line = Line::restore(params, line.saved(), 0);
                self.schedule = Schedule::new(&[event()], &self.schedule.saved(0), true);
                Done
            }
            Join => self.schedule.join(&ident(), 0).map_or(TooLate, Joined),
            Draw => {
                let d = self
                    .schedule
                    .draw_with(&ident(), |n| line.reserve(n))
                    .expect("the scenario's event");
                drawn(d.base, d.count)
            }
            Rate { .. } | Close | Open | Active(_) => Done,
        }
    }
}

/// The event of the scenarios that use one.
fn event() -> EventConfig {
    EventSpec {
        name: "rentree".into(),
        opens_at: "2030-01-07T08:00:00+01:00".into(),
        prequeue_from: None,
        closes_at: None,
        new_users_per_minute: None,
        message: None,
    }
    .checked()
    .expect("a valid event")
}

fn ident() -> String {
    Schedule::new(&[event()], &[], true).list()[0].ident()
}

// ---- the Redis line ----

/// Microseconds of the script's clock when a line begins: a real Unix
/// time, so the script computes with numbers of the size it meets live.
const EPOCH_US: u64 = 1_700_000_000_000_000;

/// `line.lua` called as a node calls it, one call per step.
struct Shared {
    conn: MultiplexedConnection,
    script: LineScript,
    /// The eleventh key: the script's clock (see line.lua).
    clock: String,
    node: String,
    /// The node's view, sent back with each call as a node does.
    epoch: u64,
    issued: u64,
    cursor: u64,
}

impl Shared {
    async fn new(redis: &Redis, site: &str) -> Shared {
        let conn = redis::Client::open(redis.url())
            .expect("a valid Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the test's redis-server accepts a connection");
        Shared {
            conn,
            script: LineScript::new(site),
            clock: format!("{{digue:{site}}}:test-clock"),
            node: "node-a".to_owned(),
            epoch: 0,
            issued: 0,
            cursor: 0,
        }
    }

    async fn call(
        &mut self,
        op: &str,
        at: Duration,
        params: &Params,
        ticket: u64,
        may_enter: bool,
    ) -> Reply {
        let now = EPOCH_US + u64::try_from(at.as_micros()).expect("a test-sized duration");
        redis::cmd("SET")
            .arg(&self.clock)
            .arg(now)
            .exec_async(&mut self.conn)
            .await
            .expect("SET the script's clock");
        let mut invocation = self.script.invocation(
            params,
            &Call {
                op,
                node: &self.node,
                epoch: self.epoch,
                issued: self.issued,
                cursor: self.cursor,
                margin: RESET_MARGIN_TICKETS,
                ticket,
                may_enter,
                turns: &[],
            },
        );
        invocation.key(&self.clock);
        let reply: Reply = invocation
            .invoke_async(&mut self.conn)
            .await
            .unwrap_or_else(|e| panic!("line.lua {op} runs: {e}"));
        self.epoch = reply.2;
        self.issued = self.issued.max(reply.3);
        self.cursor = self.cursor.max(reply.4);
        reply
    }
}

impl Implementation for Shared {
    const SIDE: Side = Side::Lua;
    async fn step(&mut self, at: Duration, params: &Params, action: Action) -> Answer {
        let ahead = |ticket: u64, cursor: u64| ticket.saturating_sub(cursor + 1);
        match action {
            Arrive { may_enter } => {
                let (state, ticket, _, _, cursor, ..) =
                    self.call("arrive", at, params, 0, may_enter).await;
                match state.as_str() {
                    "admitted" => Admitted,
                    "queued" => Answer::Queued {
                        ticket,
                        ahead: ahead(ticket, cursor),
                    },
                    other => panic!("line.lua arrive answers {other:?}"),
                }
            }
            Ask(ticket) => {
                let (state, _, _, _, cursor, ..) =
                    self.call("claim", at, params, ticket, false).await;
                match state.as_str() {
                    "admitted" => Admitted,
                    "waiting" => Answer::Waiting {
                        ahead: ahead(ticket, cursor),
                    },
                    "missed" => Missed,
                    "lost" => Lost,
                    other => panic!("line.lua claim answers {other:?}"),
                }
            }
            Look => {
                let (_, _, _, issued, cursor, _, _, _, missed, turns) =
                    self.call("refresh", at, params, 0, false).await;
                Answer::Line {
                    waiting: issued - cursor,
                    unclaimed: turns.len() as u64,
                    missed,
                }
            }
            Restart => {
                (self.epoch, self.issued, self.cursor) = (0, 0, 0);
                Done
            }
            Join | Draw => {
                let op = if matches!(action, Join) {
                    "join"
                } else {
                    "draw"
                };
                let (state, number, count): (String, u64, u64) = self
                    .script
                    .event_invocation(op, &ident(), self.issued, 3600)
                    .invoke_async(&mut self.conn)
                    .await
                    .unwrap_or_else(|e| panic!("event.lua {op} runs: {e}"));
                match (op, state.as_str()) {
                    ("join", "joined") => Joined(number),
                    ("join", "drawn") => TooLate,
                    ("draw", "drawn") => {
                        self.issued = self.issued.max(number + count);
                        drawn(number, count)
                    }
                    other => panic!("event.lua answers {other:?}"),
                }
            }
            Rate { .. } | Close | Open | Active(_) => Done,
        }
    }
}

// ---- redis-server ----

/// A `redis-server` of this test's own on a free loopback port, killed on
/// drop (the approach of `tests/cluster.rs`).
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    /// Tries a few free ports: another process may take the one picked
    /// between its release and redis-server's bind.
    async fn start() -> Redis {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run redis-server ({e}): the line conformance test needs a real \
                         Redis. Install it with `apt-get install redis-server`"
                    )
                });
            let mut redis = Redis { port, child };
            if redis.answers().await {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING within 5 s (false if it exited: port taken).
    async fn answers(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").exec_async(&mut conn).await.is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
