//! The harness of the end-to-end tests: a real origin, a real digue in
//! front of it and a real client, all on `127.0.0.1:0`; real child
//! processes (`redis-server`, the `digue` binary, Chromium) where a test
//! needs them.
//!
//! # Layout
//!
//! - [`origin`]: the controllable test origin ([`Origin`]).
//! - [`raw_origin`]: an origin that keeps every byte it receives
//!   ([`RawOrigin`]), and a raw client that frames what comes back.
//! - [`proxy`]: digue under test: the config builder [`Digue`] and the
//!   running [`Proxy`] (metrics, admin calls, shutdown).
//! - [`http`]: the client side: requests, answers read whole, cookies.
//! - [`browser`]: a waiting-room visitor's cookie jar ([`Browser`]).
//! - [`chromium`]: headless Chromium, from the command line or driven
//!   over DevTools ([`chromium::Devtools`]).
//! - [`redis`]: a `redis-server` or a Redis Cluster of the test's own.
//! - [`process`]: child processes, and ports for them.
//! - [`files`]: a temp directory for secrets, state and config files.
//! - [`tls`]: test certificates and a TLS client.
//! - [`wait`]: polling for a condition against a deadline.
//!
//! Server tasks re-raise their panics: [`Origin::join`] (and dropping an
//! origin) for the test's handler, [`Proxy::shutdown`] for digue's own.
// Each test binary uses a different subset.
#![allow(dead_code, unused_imports)]

pub mod browser;
pub mod chromium;
pub mod files;
pub mod http;
pub mod origin;
pub mod process;
pub mod proxy;
pub mod raw_origin;
pub mod redis;
pub mod tls;
pub mod wait;

pub use browser::{Accept, BROWSER_ACCEPT, Browser, ENTRY, PASS, TICKET, signed_ticket, unix_now};
pub use files::TempDir;
pub use http::{Got, get, get_from, new_cookie, raw, request, send, set_cookie, tally};
pub use origin::{Origin, Reply, Seen, page, reply};
pub use process::{Process, unused_ports};
pub use proxy::{ADMIN_TOKEN, Digue, Proxy, admission_table, site_section};
pub use raw_origin::{Exchange, Message, RawOrigin, exchange};
pub use wait::{wait_for, wait_until};
