//! Which backend a request goes to: the one holding its session, else the
//! least busy one that is open.
//!
//! A session's home is named by digue's own `digue_backend` cookie, set on
//! the answer that started it: hashing the session cookie alone would send
//! a new session elsewhere than the server that created it (the login page
//! is balanced before any cookie exists) and log the user out. Sessions
//! digue never saw start (it was restarted, or they came through another
//! way) are placed by rendezvous hashing of the session cookie's value, so
//! every node agrees and removing one backend moves only its own sessions.

use http::header::HeaderMap;
use tokio::time::Instant;

use super::health::Standing;
use crate::admission::cookies;

/// What the balancer needs to know of one backend.
pub trait Candidate {
    fn name(&self) -> &str;
    /// Its `digue_backend` cookie value.
    fn id(&self) -> &str;
    fn standing(&self, now: Instant) -> Standing;
    /// Set down by the operator: rendezvous ranks every other backend, so
    /// that a passing ejection does not reshuffle sessions once it ends.
    fn down(&self) -> bool;
    /// Requests in flight to it now.
    fn busy(&self) -> i64;
}

/// How a request found its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// The backend that holds its session.
    Home(usize),
    /// Its session's backend is closed: it goes elsewhere (the user may
    /// have to log in again).
    Moved(usize),
    /// No session: the least busy open backend.
    Balanced(usize),
}

impl Choice {
    pub fn index(self) -> usize {
        match self {
            Choice::Home(i) | Choice::Moved(i) | Choice::Balanced(i) => i,
        }
    }
}

/// The backend of a request's session, if it carries one: the one its
/// `digue_backend` cookie names, else the rendezvous choice for the first
/// session cookie's value among the backends not set down.
pub fn home<C: Candidate>(
    backends: &[C],
    headers: &HeaderMap,
    session_cookies: &[String],
) -> Option<usize> {
    if let Some(id) = cookies::find(headers, cookies::BACKEND)
        && let Some(i) = backends.iter().position(|b| b.id() == id)
    {
        return Some(i);
    }
    let value = session_cookies
        .iter()
        .find_map(|name| cookies::find(headers, name))?;
    backends
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.down())
        .max_by_key(|(_, b)| score(value.as_bytes(), b.name()))
        .map(|(i, _)| i)
}

/// Picks the backend for a request whose session lives on `home`, if any,
/// never `except` (a backend that just failed it). `tie` breaks ties
/// between equally busy backends.
pub fn choose<C: Candidate>(
    backends: &[C],
    home: Option<usize>,
    except: Option<usize>,
    now: Instant,
    tie: u64,
) -> Option<Choice> {
    if let Some(h) = home
        && Some(h) != except
        && backends[h].standing(now) != Standing::Closed
    {
        return Some(Choice::Home(h));
    }
    let least_busy = |wanted: Standing| {
        // Each backend's load is read once: other requests move it all the
        // time, and a second read could leave no backend at the least load
        // (that divided by zero below, a panic on the request path).
        let open: Vec<(usize, i64)> = (0..backends.len())
            .filter(|&i| Some(i) != except && backends[i].standing(now) == wanted)
            .map(|i| (i, backends[i].busy()))
            .collect();
        let least = open.iter().map(|&(_, busy)| busy).min()?;
        let tied: Vec<usize> = open
            .into_iter()
            .filter(|&(_, busy)| busy == least)
            .map(|(i, _)| i)
            .collect();
        let pick = usize::try_from(tie % tied.len() as u64).unwrap_or(0);
        tied.get(pick).copied()
    };
    let i = least_busy(Standing::Open).or_else(|| least_busy(Standing::SessionsOnly))?;
    Some(match home {
        Some(_) => Choice::Moved(i),
        None => Choice::Balanced(i),
    })
}

/// A stable 64-bit hash (FNV-1a, then a finaliser that spreads it): the
/// same on every node and every build, unlike std's hasher.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn score(session: &[u8], backend: &str) -> u64 {
    stable_hash(&[session, backend.as_bytes()])
}
