//! Fencing the autopilot's lease. A node that holds the lease, then stalls
//! past its expiry (a long pause, a partition), may still send the rate it
//! decided before: by then another node holds the lease and decides. Each
//! lease taken gets a number one higher than the last (the fence, kept in
//! Redis); the holder sends it with every rate, and each node drops a rate
//! whose fence is lower than one it has already applied.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// The highest fence each node has applied, by site.
#[derive(Default)]
pub struct Fences(Mutex<HashMap<String, u64>>);

impl Fences {
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
    }
}
