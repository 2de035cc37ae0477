//! Request coalescing: a cold or expired key is fetched once, however many
//! clients ask for it at the same time.
//!
//! The first request becomes the leader and fetches; later ones follow and
//! are woken by a `watch` channel when the leader lands (no polling). The
//! number of followers per key is bounded, and the leader's permit lands as
//! `Abandoned` when dropped without an answer (client gone, panic), so
//! followers never wait on a fetch nobody is making.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::cache::key::CacheKey;
use crate::cache::store::Entry;
use crate::outcome::{BusyReason, OriginErrorKind};

/// How a leader's fetch ended, as its followers see it.
#[derive(Clone)]
pub enum Landing {
    /// Stored: serve this entry.
    Stored(Arc<Entry>),
    /// The response was per-user or too big: each follower forwards on its own.
    Uncacheable,
    /// The origin failed or was saturated: serve a stale copy or the same page,
    /// never a stampede of retries.
    Failed(Failure),
    /// The leader went away without an answer: try again.
    Abandoned,
}

/// Why a fetch produced no usable response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Busy(BusyReason),
    Origin(OriginErrorKind),
    /// The client's request body failed while it was relayed (malformed
    /// chunks, the client gone): the client's fault, not the origin's.
    /// Only a forwarded request has a body, so no fetch lands this.
    RequestBody,
}

struct Flight {
    landed: watch::Sender<Option<Landing>>,
    followers: Arc<AtomicUsize>,
}

/// The table of fetches in flight, one per key.
pub struct Coalescer {
    /// Guards the map only; held for a hash-map operation, never across
    /// `.await`. A std mutex because no critical section can block.
    flights: Mutex<HashMap<CacheKey, Flight>>,
    max_followers: usize,
}

/// What a request is to do for a key.
pub enum Role {
    Leader(Leader),
    Follower(Follower),
    /// Too many requests already wait on this key.
    Full,
}

impl Coalescer {
    pub fn new(max_followers: usize) -> Arc<Coalescer> {
        Arc::new(Coalescer {
            flights: Mutex::new(HashMap::new()),
            max_followers,
        })
    }

    /// Leads the fetch of `key`, or follows the one already in flight.
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Role {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(key) {
            let count = flight.followers.fetch_add(1, Ordering::Relaxed);
            if count >= self.max_followers {
                flight.followers.fetch_sub(1, Ordering::Relaxed);
                return Role::Full;
            }
            return Role::Follower(Follower {
                landed: flight.landed.subscribe(),
                count: flight.followers.clone(),
            });
        }
        let (tx, _) = watch::channel(None);
        flights.insert(
            key.clone(),
            Flight {
                landed: tx.clone(),
                followers: Arc::new(AtomicUsize::new(0)),
            },
        );
        Role::Leader(Leader {
            coalescer: self.clone(),
            key: key.clone(),
            landed: Some(tx),
        })
    }

    /// Whether a fetch of `key` is in flight (a background refresh need not start).
    pub fn in_flight(&self, key: &CacheKey) -> bool {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    fn finish(&self, key: &CacheKey) {
        self.flights
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// The right, and the duty, to fetch a key and tell its followers.
#[must_use = "dropping the leader releases its followers as Abandoned"]
pub struct Leader {
    coalescer: Arc<Coalescer>,
    key: CacheKey,
    landed: Option<watch::Sender<Option<Landing>>>,
}

impl Leader {
    /// Ends the fetch and wakes every follower with its result.
    pub fn land(mut self, landing: Landing) {
        self.release(landing);
    }

    fn release(&mut self, landing: Landing) {
        if let Some(tx) = self.landed.take() {
            // Remove first: a request arriving after this lands finds the
            // stored entry (or leads a new fetch), never a finished flight.
            self.coalescer.finish(&self.key);
            tx.send_replace(Some(landing));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.release(Landing::Abandoned);
    }
}

/// A request waiting on another's fetch.
pub struct Follower {
    landed: watch::Receiver<Option<Landing>>,
    count: Arc<AtomicUsize>,
}

impl Follower {
    /// Waits for the leader at most `deadline`; `None` when it took longer.
    pub async fn wait(mut self, deadline: Duration) -> Option<Landing> {
        let waited = tokio::time::timeout(deadline, self.landed.wait_for(Option::is_some)).await;
        match waited {
            Err(_) => None,
            Ok(Ok(landing)) => landing.clone(),
            Ok(Err(_)) => Some(Landing::Abandoned),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey::primary("s", "http", "h", "/k")
    }

    #[tokio::test]
    async fn followers_are_woken_by_the_leader() {
        let c = Coalescer::new(10);
        let Role::Leader(leader) = c.join(&key()) else {
            panic!("first request leads")
        };
        let Role::Follower(follower) = c.join(&key()) else {
            panic!("second request follows")
        };
        let waiting = tokio::spawn(follower.wait(Duration::from_secs(5)));
        leader.land(Landing::Uncacheable);
        let landing = waiting.await.expect("no panic");
        assert!(
            matches!(landing, Some(Landing::Uncacheable)),
            "woken with the result"
        );
        assert!(!c.in_flight(&key()), "the flight is gone once landed");
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers_as_abandoned() {
        let c = Coalescer::new(10);
        let leader = c.join(&key());
        let Role::Follower(follower) = c.join(&key()) else {
            panic!("follows")
        };
        drop(leader);
        assert!(matches!(
            follower.wait(Duration::from_secs(5)).await,
            Some(Landing::Abandoned)
        ));
        assert!(
            matches!(c.join(&key()), Role::Leader(_)),
            "the next request leads anew"
        );
    }

    #[tokio::test]
    async fn followers_per_key_are_bounded() {
        let c = Coalescer::new(2);
        let _leader = c.join(&key());
        let a = c.join(&key());
        let _b = c.join(&key());
        assert!(
            matches!(c.join(&key()), Role::Full),
            "a third follower is refused"
        );
        drop(a);
        assert!(
            matches!(c.join(&key()), Role::Follower(_)),
            "a freed place is reusable"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn followers_give_up_at_their_deadline() {
        let c = Coalescer::new(2);
        let _leader = c.join(&key());
        let Role::Follower(f) = c.join(&key()) else {
            panic!("follows")
        };
        assert!(f.wait(Duration::from_secs(3)).await.is_none());
    }
}
