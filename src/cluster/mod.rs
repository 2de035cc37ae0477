//! Cluster mode: several nodes share one line and one admission budget per
//! site through Redis, and hear each other's purges and live settings.
//!
//! - `link`: the connection to Redis, events and what is kept there.
//! - `sync`: the loops that apply what the other nodes say.
//! - `fence`: a stalled autopilot lease holder's late rates are dropped.
//!
//! - The store is one Redis or a Redis Cluster (sharded), behind one
//!   connection type ([`Conn`]) so scripts, pipelines and commands take one
//!   code path. The connection is made in the background and remade when
//!   lost (the redis crate's connection manager; the cluster connection
//!   follows MOVED/ASK, refreshes its slot map and reconnects to nodes, back
//!   to the seeds when it lost them all); a node starts and serves whether
//!   or not Redis is up: without it, it fails static (see `admission::redis`).
//! - Every `refresh_interval` the node refreshes its view of each shared
//!   line (one script call per site) and its heartbeat.
//! - Purges and admin changes are published on `digue:events` (pub/sub);
//!   settings are also kept in Redis (`digue:settings`) and purges in a
//!   short list (`digue:purges`), so a node that restarts or reconnects
//!   catches up.
//! - Nothing crosses hash slots on a Redis Cluster: a site's keys share one
//!   hash tag (its script touches those only); the global keys are each
//!   touched by single-key commands, and the event is published on its own
//!   (a pipeline goes to one node, and PUBLISH is routed by channel).
//!   PUBLISH reaches every node of a Redis Cluster, so the subscription is a
//!   plain connection to the first seed node that answers.
//! - The Redis URL (it may hold a password) is never logged.

mod fence;
mod link;
mod sync;

pub use link::{Cluster, Conn, Event, PASSWORD_ENV, pilot_lease_keys};
pub use sync::run;
