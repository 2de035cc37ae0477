//! Admission: new sessions enter at the pace the portal can take; everyone
//! else gets a signed place in a FIFO line.
//!
//! - [`gcra`]: the admission budget, changeable live without a burst.
//! - [`token`]: signed ticket and pass cookies.
//! - [`cookies`]: reading, writing and hiding digue's own cookies.
//! - [`line`](mod@line): the line of one site (in process): tickets, cursor, claims.
//! - [`redis`]: the same line shared by the nodes of a cluster through Redis.
//! - [`event`]: scheduled openings: the pre-queue, and the draw that
//!   places it in the line at the opening ([`draw`]: the permutation).
//! - [`gate`]: the decision for one request: proceed, wait, or admitted.
//! - [`state`]: saving the lines' counters across restarts.
//! - [`keys`]: the signing keys, from a file or the environment.

pub mod cookies;
pub mod draw;
pub mod event;
pub mod gate;
pub mod gcra;
pub mod keys;
pub mod line;
pub mod redis;
pub mod state;
pub mod token;

pub use keys::{keys_from_file, load_keys};
