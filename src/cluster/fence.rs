//! Fencing the autopilot's lease. A node that holds the lease, then stalls
//! past its expiry (a long pause, a partition), may still send the rate it
//! decided before: by then another node holds the lease and decides. Each
//! lease taken gets a number one higher than the last (the fence, kept in
//! Redis); the holder sends it with every rate, Redis keeps the rate only if
//! no higher fence stored its own, and each node drops a rate whose fence
//! is lower than one it has already applied. Each node also follows the
//! lease's current fence as Redis reports it, so a Redis restored from an
//! old snapshot does not lock its next holder out.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The highest fence each node has applied, by site.
#[derive(Default)]
pub struct Fences(Mutex<HashMap<String, u64>>);

impl Fences {
    /// Takes `current`, the fence of the lease as Redis holds it now, as
    /// the one to beat: lower than the highest applied only when Redis went
    /// back in time, and then the lease holder's rates must not be refused.
    pub fn follow(&self, site: &str, current: u64) {
        if current > 0 {
            let mut highest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            highest.insert(site.to_owned(), current);
        }
    }

    /// The highest fence applied to `site`, 0 before any.
    pub fn highest(&self, site: &str) -> u64 {
        let highest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        highest.get(site).copied().unwrap_or(0)
    }

    /// Whether a rate sent under `fence` may be applied to `site`: not when
    /// a later holder's was already applied. Remembers it when it may.
    pub fn admits(&self, site: &str, fence: u64) -> bool {
        let mut highest = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = highest.entry(site.to_owned()).or_insert(0);
        if fence < *seen {
            return false;
        }
        *seen = fence;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_fence_is_refused_the_same_or_higher_applied() {
        let fences = Fences::default();
        assert!(fences.admits("portal", 2), "the first holder's");
        assert!(fences.admits("portal", 2), "its next rate");
        assert!(fences.admits("portal", 3), "the next holder's");
        assert!(!fences.admits("portal", 2), "the stalled holder's, late");
        assert!(fences.admits("cned", 1), "each site its own");
        // Redis restored from a snapshot: its holder's fence is lower.
        fences.follow("portal", 2);
        assert!(fences.admits("portal", 2), "the holder Redis names now");
        assert_eq!(fences.highest("portal"), 2);
    }
}
