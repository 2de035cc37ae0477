//! The autopilot: finds the pace the portal can take and holds it (issue 12).
//!
//! Two loops, pure and deterministic here (time and observations come in as
//! arguments; the tasks, config, metrics and admin API that drive them live
//! elsewhere):
//! - [`window`]: every origin request's latency, lock-free, per backend.
//! - [`gradient`]: the fast loop (~1 s): each backend's origin concurrency
//!   limit, from its latency against its latency at low load.
//! - [`rate`]: the slow loop (~5–10 s): the site's admission rate, AIMD on
//!   the origin's health and the line.
//! - [`decisions`]: what both loops decided lately, with the reason in words.
//! - [`observation`]: a node's interval, as published to the cluster.

pub mod decisions;
pub mod gradient;
pub mod observation;
pub mod rate;
pub mod window;
mod words;

pub use decisions::{Decision, DecisionRecord, Decisions, Direction, Loop};
pub use gradient::{ConcurrencyConfig, ConcurrencyController, LimitDecision, LimitReason};
pub use observation::Observation;
pub use rate::{RateConfig, RateController, RateDecision, RateObservation, RateReason};
pub use window::{LatencySnapshot, LatencyWindow, MAX_STALL_WINDOWS, WindowStats};
pub use words::Lang;
