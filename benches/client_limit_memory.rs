//! What `[site.client_limit]` costs in memory with a million distinct
//! clients, and what a sweep gives back: a figure, not a timed test.
//!
//! `cargo bench --bench client_limit_memory` (or, without a release build,
//! `cargo test --bench client_limit_memory`: the memory figures are the
//! same, the times are a debug build's). `KEYS=N` changes the count.
//! Reads the resident set from `/proc/self/statm` (Linux).
#![allow(clippy::disallowed_methods)] // a bench times itself on real time

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use digue::client_limit::{Budget, ClientLimiter};
use digue::config::{ClientKey, ClientLimitConfig};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let keys: u64 = std::env::var("KEYS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(1_000_000);
    let config = ClientLimitConfig {
        requests_per_minute: NonZeroU32::new(120).expect("positive"),
        burst: NonZeroU32::new(20).expect("positive"),
        key: ClientKey::Session,
        max_keys: usize::try_from(keys).unwrap_or(usize::MAX) + 1,
    };
    let limiter = Arc::new(ClientLimiter::new(config));
    let start = tokio::time::Instant::now();
    let before = resident_bytes();
    let filling = Instant::now();
    for key in 0..keys {
        // Keys are 64-bit hashes in digue: spread them the same way.
        let hashed = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        assert_eq!(limiter.check(hashed, start), Budget::Within);
    }
    let filled = filling.elapsed();
    let after = resident_bytes();
    let tracked = limiter.tracked();
    let per_key = after.saturating_sub(before) as f64 / tracked as f64;
    println!(
        "{tracked} clients tracked: resident +{:.1} MiB ({per_key:.0} B per client), \
         filled in {filled:.2?}",
        after.saturating_sub(before) as f64 / 1048576.0
    );
    // Nine seconds on (short of the periodic sweep), every burst of 20 at 2 a second has refilled: a
    // sweep forgets them all.
    limiter.check(1, start + Duration::from_secs(9));
    let sweeping = Instant::now();
    limiter.sweep_now();
    let swept = sweeping.elapsed();
    println!(
        "after a sweep: {} clients tracked, resident {:+.1} MiB from the start, swept in {swept:.2?}",
        limiter.tracked(),
        (resident_bytes() as f64 - before as f64) / 1048576.0
    );
}
