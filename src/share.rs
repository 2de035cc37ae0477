//! A client's share of a site's origin slots: per connection and per
//! network. A slot is held until the response body is relayed, so a client
//! that stops reading holds it until the stall watchdog cuts the body
//! (`client_send_timeout`), and one that reads just fast enough holds it
//! for as long as the body lasts; without shares, a few such clients could
//! hold every slot and send everyone else to the busy page.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// No slot freed within the queue timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saturated;

/// Origin slots one client connection may hold at once. One HTTP/2
/// connection can open hundreds of streams and, by not reading their
/// bodies (a zero flow-control window), hold an origin slot per stream
/// until `origin_timeout`: with a share per connection, it cannot take the
/// slots everyone else needs. HTTP/1.1 holds one at a time anyway; a
/// browser's burst of per-user calls fits well under it.
pub const ORIGIN_SLOTS_PER_CONNECTION: usize = 16;

/// A client connection's share of origin slots, carried by each of its
/// requests (an extension set by the server).
#[derive(Clone)]
pub struct ConnectionSlots(Arc<Semaphore>);

impl Default for ConnectionSlots {
    fn default() -> Self {
        ConnectionSlots(Arc::new(Semaphore::new(ORIGIN_SLOTS_PER_CONNECTION)))
    }
}

impl ConnectionSlots {
    /// Waits at most `wait` for one of the connection's slots.
    pub async fn acquire(&self, wait: Duration) -> Result<OwnedSemaphorePermit, Saturated> {
        match self.0.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => tokio::time::timeout(wait, self.0.clone().acquire_owned())
                .await
                .map_err(|_| Saturated)?
                .map_err(|_| Saturated),
        }
    }
}

/// Origin slots held by each client network of one site: an IPv4 address
/// or an IPv6 /64, the unit one machine holds. The connection share alone
/// is no bound: one machine opens as many connections as it likes.
///
/// The table only holds networks with a slot in use or a request waiting
/// for one, so it is bounded by the requests in flight.
#[derive(Default)]
pub struct NetworkShares {
    held: Mutex<HashMap<u64, Network>>,
    hasher: std::hash::RandomState,
}

/// One network's count, and the requests waiting for its share: a freed
/// slot wakes one of them, never the waiters of every network.
#[derive(Default)]
struct Network {
    slots: usize,
    waiting: usize,
    freed: Arc<Notify>,
}

/// One origin slot counted to a network; dropping it gives it back.
pub struct NetworkPermit {
    shares: Arc<NetworkShares>,
    key: u64,
}

/// A request waiting for its network's share; dropping it (served, timed
/// out or cancelled) lets the table forget an idle network.
struct Waiting<'a> {
    shares: &'a NetworkShares,
    key: u64,
}

impl NetworkShares {
    /// The key of the network `ip` belongs to.
    pub fn network(&self, ip: IpAddr) -> u64 {
        match ip.to_canonical() {
            IpAddr::V4(v4) => self.hasher.hash_one((4_u8, v4.octets())),
            IpAddr::V6(v6) => self.hasher.hash_one((6_u8, u128::from(v6) >> 64)),
        }
    }

    /// Waits at most `wait` until `network` holds fewer than `cap` slots,
    /// then counts one more to it. `cap` (a share of the site's live origin
    /// limit) is read once per request.
    pub async fn acquire(
        self: &Arc<Self>,
        network: u64,
        cap: usize,
        wait: Duration,
    ) -> Result<NetworkPermit, Saturated> {
        let permit = || NetworkPermit {
            shares: self.clone(),
            key: network,
        };
        let freed = match self.take(network, cap, false) {
            Ok(()) => return Ok(permit()),
            Err(freed) => freed,
        };
        let _waiting = Waiting {
            shares: self,
            key: network,
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the check, so a slot freed between the
            // check and the wait still wakes this request.
            let notified = freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.take(network, cap, true).is_ok() {
                return Ok(permit());
            }
            tokio::time::timeout_at(deadline, notified)
                .await
                .map_err(|_| Saturated)?;
        }
    }

    /// Counts a slot to `network` if it holds fewer than `cap`; else its
    /// wake-up, the request counted among its waiters unless `waiting`
    /// says it already is.
    fn take(&self, network: u64, cap: usize, waiting: bool) -> Result<(), Arc<Notify>> {
        let mut held = self.lock();
        let entry = held.entry(network).or_default();
        if entry.slots < cap {
            entry.slots += 1;
            return Ok(());
        }
        if !waiting {
            entry.waiting += 1;
        }
        Err(entry.freed.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Network>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes `network`'s entry, and forgets it once idle.
    fn update(&self, network: u64, change: impl FnOnce(&mut Network)) -> Option<Arc<Notify>> {
        let mut held = self.lock();
        let Entry::Occupied(mut entry) = held.entry(network) else {
            return None;
        };
        change(entry.get_mut());
        let freed = entry.get().freed.clone();
        if entry.get().slots == 0 && entry.get().waiting == 0 {
            entry.remove();
        }
        Some(freed)
    }

    /// Networks holding a slot or waiting for one now.
    pub fn networks(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shares.update(self.key, |n| n.waiting -= 1);
    }
}

impl Drop for NetworkPermit {
    fn drop(&mut self) {
        let freed = self.shares.update(self.key, |n| n.slots -= 1);
        if let Some(freed) = freed {
            freed.notify_one();
        }
    }
}

/// The slots one network may hold on a site whose backends together allow
/// `limit`: `percent` of it, at least one.
pub fn network_cap(limit: usize, percent: u8) -> usize {
    (limit.saturating_mul(usize::from(percent)) / 100).max(1)
}

/// What a client holds besides the origin slot itself, freed with it.
#[derive(Default)]
pub struct ClientShare {
    pub connection: Option<OwnedSemaphorePermit>,
    pub network: Option<NetworkPermit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn a_network_is_an_ipv4_address_or_an_ipv6_64() {
        let shares = NetworkShares::default();
        let net = |s: &str| shares.network(ip(s));
        assert_eq!(net("192.0.2.7"), net("::ffff:192.0.2.7"), "mapped IPv4");
        assert_ne!(net("192.0.2.7"), net("192.0.2.8"), "one address each");
        assert_eq!(net("2001:db8:1:2::1"), net("2001:db8:1:2:ffff::9"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_network_at_its_cap_waits_for_one_of_its_own_slots_or_gives_up() {
        let shares = Arc::new(NetworkShares::default());
        let (a, b) = (
            shares.network(ip("192.0.2.1")),
            shares.network(ip("192.0.2.2")),
        );
        let first = shares.acquire(a, 2, Duration::ZERO).await.expect("free");
        let second = shares.acquire(a, 2, Duration::ZERO).await.expect("free");
        let started = tokio::time::Instant::now();
        assert!(
            shares.acquire(a, 2, Duration::from_secs(1)).await.is_err(),
            "a third slot is over the cap"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(1), "after the wait");
        let other = shares.acquire(b, 2, Duration::ZERO).await;
        assert!(other.is_ok(), "another network has its own share");

        let waiting = {
            let shares = shares.clone();
            tokio::spawn(async move { shares.acquire(a, 2, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        drop(first);
        let third = waiting.await.expect("joined");
        assert!(third.is_ok(), "a freed slot goes to the waiting request");
        drop((second, third, other));
        assert_eq!(
            shares.networks(),
            0,
            "a network holding nothing is forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_freed_slot_serves_one_waiter_and_a_cancelled_wait_is_forgotten() {
        let shares = Arc::new(NetworkShares::default());
        let a = shares.network(ip("192.0.2.1"));
        let held: Vec<_> =
            futures_util::future::join_all((0..2).map(|_| shares.acquire(a, 2, Duration::ZERO)))
                .await;
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let shares = shares.clone();
                tokio::spawn(async move { shares.acquire(a, 2, Duration::from_secs(5)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let cancelled = {
            let shares = shares.clone();
            tokio::spawn(async move { shares.acquire(a, 2, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        cancelled.abort();
        drop(held);
        let mut served = Vec::new();
        for waiter in waiters {
            if let Ok(Ok(permit)) = tokio::time::timeout(Duration::from_secs(1), waiter).await {
                served.push(permit);
            }
        }
        assert_eq!(served.len(), 2, "two slots freed, two waiters served");
        drop(served);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(shares.networks(), 0, "nobody holds or waits: forgotten");
    }

    #[tokio::test]
    async fn a_lowered_cap_applies_to_the_next_request() {
        let shares = Arc::new(NetworkShares::default());
        let a = shares.network(ip("192.0.2.1"));
        let _held = shares.acquire(a, 4, Duration::ZERO).await.expect("free");
        assert!(shares.acquire(a, 1, Duration::ZERO).await.is_err());
    }

    #[test]
    fn the_cap_is_a_share_of_the_limit_never_zero() {
        assert_eq!(network_cap(32, 50), 16);
        assert_eq!(network_cap(1, 50), 1);
        assert_eq!(network_cap(20, 100), 20);
        assert_eq!(network_cap(usize::MAX, 100), usize::MAX / 100);
    }
}
