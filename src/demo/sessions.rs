//! Student sessions: ids that look like Tomcat's, remembered first-in
//! first-out, found again from the `JSESSIONID` cookie.

use std::collections::hash_map::RandomState;
use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use http::header::{self, HeaderMap};

/// The cookie carrying the session id, named as Tomcat names it.
pub(super) const SESSION_COOKIE: &str = "JSESSIONID";
/// Sessions are forgotten first-in first-out past this count, standing in for
/// session expiry so a long surge simulation cannot grow memory without bound.
const MAX_SESSIONS: usize = 50_000;

/// The sessions a portal opened.
pub(super) struct Sessions {
    /// Ids handed out and not yet forgotten. A std mutex: every holder only
    /// inserts or looks up, never across an `.await`.
    known: Mutex<Known>,
    /// Randomly keyed per portal, so session ids cannot be predicted from one
    /// run to the next (not cryptographic, which a demo does not need).
    id_keys: RandomState,
    /// Makes every id hashed with `id_keys` distinct.
    id_counter: AtomicU64,
}

impl Sessions {
    pub(super) fn new() -> Sessions {
        Sessions {
            known: Mutex::new(Known::default()),
            id_keys: RandomState::new(),
            id_counter: AtomicU64::new(0),
        }
    }

    /// Opens a session and returns its id.
    pub(super) fn open(&self) -> String {
        let id = self.new_id();
        self.known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone());
        id
    }

    /// The first `JSESSIONID` cookie naming a session this portal opened;
    /// forged or forgotten ids count as no session at all.
    pub(super) fn find(&self, headers: &HeaderMap) -> Option<String> {
        let known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, _)| name.trim() == SESSION_COOKIE)
            .map(|(_, id)| id.trim())
            .find(|id| known.ids.contains(*id))
            .map(str::to_owned)
    }

    fn new_id(&self) -> String {
        let n = self.id_counter.fetch_add(1, Ordering::Relaxed);
        // Upper-case hex, 32 characters: what Tomcat hands out.
        format!(
            "{:016X}{:016X}",
            self.id_keys.hash_one((n, 0u8)),
            self.id_keys.hash_one((n, 1u8))
        )
    }
}

/// Open session ids, and the order they were opened in to forget the oldest.
#[derive(Default)]
struct Known {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Known {
    fn insert(&mut self, id: String) {
        if self.order.len() >= MAX_SESSIONS
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.clone());
        self.order.push_back(id);
    }
}
