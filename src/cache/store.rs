//! The shared response store: moka, bounded in bytes by a weigher, plus the
//! short memory of uncacheable keys (hit-for-miss).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName};
use http_cache_semantics::CachePolicy;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::clock::Now;

use crate::cache::key::{CacheKey, Vary};
use crate::cache::policy::StorePlan;

/// Bytes counted for an entry beyond its key, headers and body: what it
/// really costs besides them (moka's bookkeeping, the header maps' spare
/// room, the cache policy's own copies of both header sets). Measured, not
/// guessed: 6,000 small pages took 10.7 KB of resident memory each while
/// 512 bytes were counted, so `max_size = "8MiB"` held 124 MiB
/// (`benches/cache_memory.sh`, benches/README.md). Counting it keeps
/// `max_size` a bound on memory, not on payload.
const ENTRY_OVERHEAD: usize = 10 * 1024;
/// Bytes of keys the hit-for-miss memory holds: about 100,000 keys of a
/// typical length. Bounded in bytes, not keys, since `max_size` does not
/// cover it: 100,000 distinct 16 KiB targets would pin 1.6 GB.
const HIT_FOR_MISS_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes counted for a hit-for-miss mark beyond its key: measured at about
/// 2 KB each (moka's entry with its time to live), where 64 bytes were
/// counted and 16 MiB of marks held 280 MiB (`benches/cache_memory.sh`).
const MARK_OVERHEAD: usize = 2 * 1024;

/// A stored response. Immutable once stored except for the purge marks; a
/// refresh replaces the whole entry.
pub struct Entry {
    /// The storage key (the variant key when the response varies).
    pub key: CacheKey,
    pub status: StatusCode,
    /// Prebuilt at store time: hop-by-hop headers are gone and `Set-Cookie`
    /// never gets here (such responses are not stored).
    pub headers: HeaderMap,
    /// Shared by every hit, never copied.
    pub body: Bytes,
    /// Kept to merge a 304 and to build revalidation requests.
    pub policy: CachePolicy,
    /// The headers this response varies on, if any.
    pub vary: Option<Arc<[HeaderName]>>,
    stored_at: Instant,
    /// `Age` the response already had when stored (from upstream caches).
    initial_age: Duration,
    ttl: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    /// Never served stale while refreshed, not even after a purge
    /// ([`StorePlan::must_revalidate`]).
    must_revalidate: bool,
    /// Set by a soft purge: the entry counts as expired from then on.
    purged_at: OnceLock<Instant>,
    /// Set when a refetch of the purged entry failed: its one refetch served
    /// stale-while-revalidate is spent.
    refetch_failed: AtomicBool,
    /// Set with `purged_at` after an unsafe method (RFC 9111 §4.4): the
    /// copy is known to be out of date, so nobody is served it while it is
    /// refetched; only `stale_if_error` may still use it.
    invalidated: AtomicBool,
}

/// Where an entry stands at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it; `ttl` seconds left.
    Fresh { ttl: u64 },
    /// Serve it now and refresh it with one background fetch.
    StaleWhileRevalidate,
    /// Must be refreshed; may still be served if the origin fails.
    Stale,
}

impl Entry {
    pub fn new(
        key: CacheKey,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        plan: StorePlan,
        now: Now,
    ) -> Entry {
        let initial_age = plan.policy.age(now.system);
        let mut headers = headers;
        // Set once here rather than on every hit (and right even when the
        // origin sent the body chunked).
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(body.len()),
        );
        Entry {
            key,
            status,
            headers,
            body,
            vary: match plan.vary {
                Vary::Headers(names) => Some(names),
                Vary::None | Vary::Any => None,
            },
            policy: plan.policy,
            stored_at: now.instant,
            initial_age,
            ttl: plan.ttl,
            stale_while_revalidate: plan.stale_while_revalidate,
            stale_if_error: plan.stale_if_error,
            must_revalidate: plan.must_revalidate,
            purged_at: OnceLock::new(),
            refetch_failed: AtomicBool::new(false),
            invalidated: AtomicBool::new(false),
        }
    }

    pub fn freshness(&self, now: Instant) -> Freshness {
        let age = now.saturating_duration_since(self.stored_at);
        if self.purged_at.get().is_some() {
            // A purge must not cause a stampede: serve stale while one
            // refetch runs — unless the response forbids it. Once that
            // failed, or when forbidden, fetch in the foreground (still
            // coalesced) and let usable_if_error decide.
            return if self.must_revalidate
                || self.refetch_failed.load(Ordering::Relaxed)
                || self.invalidated.load(Ordering::Relaxed)
            {
                Freshness::Stale
            } else {
                Freshness::StaleWhileRevalidate
            };
        }
        if age < self.ttl {
            return Freshness::Fresh {
                ttl: (self.ttl - age).as_secs(),
            };
        }
        if age < self.ttl.saturating_add(self.stale_while_revalidate) {
            Freshness::StaleWhileRevalidate
        } else {
            Freshness::Stale
        }
    }

    /// Whether this copy may stand in for an origin that failed.
    pub fn usable_if_error(&self, now: Instant) -> bool {
        let age = now.saturating_duration_since(self.stored_at);
        let window = self.stale_while_revalidate.max(self.stale_if_error);
        let usable = age < self.ttl.saturating_add(window);
        match self.purged_at.get() {
            // The purge expired it: only its own stale-if-error window is
            // left, counted from the purge, so a down origin can't keep a
            // purged copy alive for ever.
            Some(purged_at) => {
                usable && now.saturating_duration_since(*purged_at) < self.stale_if_error
            }
            None => usable,
        }
    }

    /// The `Age` header value (RFC 9111 §4.2.3).
    pub fn age(&self, now: Instant) -> u64 {
        let resident = now.saturating_duration_since(self.stored_at);
        self.initial_age.saturating_add(resident).as_secs()
    }

    /// Marks the entry expired (soft purge), with one refetch to come.
    pub fn purge(&self, now: Instant) {
        let _ = self.purged_at.set(now);
        self.refetch_failed.store(false, Ordering::Relaxed);
    }

    /// Marks the entry out of date after an unsafe method: expired from
    /// now, never served while it is refetched (see `invalidated`).
    pub fn invalidate(&self, now: Instant) {
        let _ = self.purged_at.set(now);
        self.invalidated.store(true, Ordering::Relaxed);
    }

    /// Whether an unsafe method marked this entry out of date.
    pub fn is_invalidated(&self) -> bool {
        self.invalidated.load(Ordering::Relaxed)
    }

    /// Records that a refetch of this entry failed; counts only once purged.
    pub fn refetch_failed(&self) {
        if self.purged_at.get().is_some() {
            self.refetch_failed.store(true, Ordering::Relaxed);
        }
    }

    fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let total = self.key.weight() + headers + self.body.len() + ENTRY_OVERHEAD;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// What is stored under a primary key.
#[derive(Clone)]
enum Slot {
    Response(Arc<Entry>),
    /// The URL varies: look up the variant key built from these headers.
    Vary(Arc<[HeaderName]>),
}

/// What a lookup found.
pub enum Lookup {
    Found(Arc<Entry>),
    /// Nothing for this URL.
    Miss,
    /// Responses for this URL exist, but none for these header values;
    /// the key the missing variant would be stored under.
    VaryMiss(CacheKey),
}

/// The response store shared by all sites.
pub struct Store {
    entries: moka::sync::Cache<CacheKey, Slot>,
    /// Keys that recently answered something uncacheable: their requests go
    /// straight to the origin instead of queueing behind the coalescer.
    uncacheable: moka::sync::Cache<CacheKey, ()>,
}

impl Store {
    pub fn new(max_bytes: u64, hit_for_miss: Duration, evictions: IntCounter) -> Store {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, slot: &Slot| match slot {
                Slot::Response(e) => e.weight(),
                Slot::Vary(names) => {
                    u32::try_from(key.weight() + names.len() * 32 + 64).unwrap_or(u32::MAX)
                }
            })
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        let uncacheable = moka::sync::Cache::builder()
            .max_capacity(HIT_FOR_MISS_BYTES)
            .weigher(|key: &CacheKey, ()| {
                u32::try_from(key.weight() + MARK_OVERHEAD).unwrap_or(u32::MAX)
            })
            .time_to_live(hit_for_miss)
            .build();
        Store {
            entries,
            uncacheable,
        }
    }

    /// Finds the response for `primary` that matches the request `headers`.
    pub fn lookup(&self, primary: &CacheKey, headers: &HeaderMap) -> Lookup {
        match self.entries.get(primary) {
            None => Lookup::Miss,
            Some(Slot::Response(e)) => Lookup::Found(e),
            Some(Slot::Vary(names)) => {
                let variant = primary.variant(&names, headers);
                match self.entries.get(&variant) {
                    Some(Slot::Response(e)) => Lookup::Found(e),
                    Some(Slot::Vary(_)) | None => Lookup::VaryMiss(variant),
                }
            }
        }
    }

    /// Stores an entry built for `primary`.
    pub fn insert(&self, primary: &CacheKey, entry: Arc<Entry>) {
        match &entry.vary {
            Some(names) => {
                self.entries
                    .insert(primary.clone(), Slot::Vary(names.clone()));
                self.entries
                    .insert(entry.key.clone(), Slot::Response(entry));
            }
            None => self.entries.insert(primary.clone(), Slot::Response(entry)),
        }
        self.uncacheable.invalidate(primary);
    }

    /// Remembers that `primary` answered something uncacheable, and drops
    /// `replaced`, the copy that answer supersedes: the origin took it back
    /// (a page turned `private`), so it must not come back when the mark
    /// expires or is forgotten.
    pub fn mark_uncacheable(&self, primary: &CacheKey, replaced: Option<&Entry>) {
        self.uncacheable.insert(primary.clone(), ());
        let Some(old) = replaced else { return };
        // Only that copy: a newer one stored meanwhile stays.
        self.entries
            .entry_by_ref(&old.key)
            .and_compute_with(|slot| match slot.as_ref().map(|s| s.value()) {
                Some(Slot::Response(e)) if std::ptr::eq(Arc::as_ptr(e), old) => Op::Remove,
                Some(_) | None => Op::Nop,
            });
    }

    /// Forgets every hit-for-miss mark (after a config change).
    pub fn forget_uncacheable(&self) {
        self.uncacheable.invalidate_all();
    }

    pub fn is_uncacheable(&self, primary: &CacheKey) -> bool {
        self.uncacheable.contains_key(primary)
    }

    /// Marks stale (soft) or drops (hard) the entries of `site` whose request
    /// target matches; returns how many responses were affected. Soft is the
    /// default: the next request is served stale while one fetch refreshes,
    /// so a purge never causes a stampede on the origin.
    pub fn purge(
        &self,
        site: &str,
        matches: impl Fn(&str) -> bool,
        hard: bool,
        now: Instant,
    ) -> usize {
        let mut affected = 0;
        let mut doomed = Vec::new();
        for (key, slot) in &self.entries {
            if key.site() != site || !matches(key.target()) {
                continue;
            }
            match slot {
                Slot::Response(entry) => {
                    affected += 1;
                    if !hard {
                        entry.purge(now);
                    }
                }
                Slot::Vary(_) => {}
            }
            if hard {
                doomed.push(key);
            }
        }
        for key in doomed {
            self.entries.invalidate(&*key);
        }
        affected
    }

    /// Marks out of date the responses stored under `primary`, its variants
    /// included; returns how many. A direct lookup: only a URL that varies
    /// costs a scan of the store (its variants' keys cannot be listed).
    pub fn invalidate(&self, primary: &CacheKey, now: Instant) -> usize {
        match self.entries.get(primary) {
            None => 0,
            Some(Slot::Response(entry)) => {
                entry.invalidate(now);
                1
            }
            Some(Slot::Vary(_)) => {
                let mut marked = 0;
                for (key, slot) in &self.entries {
                    if let Slot::Response(entry) = slot
                        && key.is_variant_of(primary)
                    {
                        entry.invalidate(now);
                        marked += 1;
                    }
                }
                marked
            }
        }
    }

    /// Marks out of date the responses of `site` for `path` on any host:
    /// an invalidation heard from another node of the cluster.
    pub fn invalidate_path(&self, site: &str, path: &str, now: Instant) -> usize {
        let mut marked = 0;
        for (key, slot) in &self.entries {
            if let Slot::Response(entry) = slot
                && key.site() == site
                && key.target() == path
            {
                entry.invalidate(now);
                marked += 1;
            }
        }
        marked
    }

    /// Entries of one site and their weighted bytes (an admin-time scan).
    pub fn site_usage(&self, site: &str) -> (u64, u64) {
        let mut entries = 0;
        let mut bytes = 0;
        for (key, slot) in &self.entries {
            if key.site() == site
                && let Slot::Response(e) = slot
            {
                entries += 1;
                bytes += u64::from(e.weight());
            }
        }
        (entries, bytes)
    }

    /// Entries and weighted bytes, for metrics.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.entry_count(), self.entries.weighted_size())
    }
}
