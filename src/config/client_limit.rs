//! `[site.client_limit]`: how many origin-bound requests one client may send
//! per minute. Off unless the table is written.

use std::num::NonZeroU32;

use serde::Deserialize;

use super::errors::Errors;

/// Clients tracked at once per site when `max_keys` is not written: 36
/// bytes each (measured, `benches/README.md`), so some 35 MiB at the cap.
pub const DEFAULT_CLIENT_LIMIT_MAX_KEYS: usize = 1_000_000;

/// Who one budget belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKey {
    /// The value of the site's first session cookie in the request; the
    /// client's network when it carries none (a school's NAT puts a whole
    /// school behind one address, so the session is the person).
    Session,
    /// The client's address: IPv4 /32, IPv6 /64.
    Network,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimitConfig {
    /// Sustained origin-bound requests per minute of one client.
    pub requests_per_minute: NonZeroU32,
    /// Requests one client may send at once above that pace.
    pub burst: NonZeroU32,
    pub key: ClientKey,
    /// Clients tracked at once; past it the limit is suspended until a
    /// sweep makes room (see `client_limit`).
    pub max_keys: usize,
}

#[derive(Deserialize)]
pub(super) struct RawClientLimit {
    requests_per_minute: Option<u32>,
    burst: Option<u32>,
    key: Option<ClientKey>,
    max_keys: Option<u64>,
}

/// The burst when none is written: ten seconds' worth of the pace, at
/// least one request.
fn default_burst(requests_per_minute: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new(requests_per_minute.get() / 6).unwrap_or(NonZeroU32::MIN)
}

impl RawClientLimit {
    pub(super) fn validate(self, at: &str, errors: &mut Errors) -> ClientLimitConfig {
        let positive = |errors: &mut Errors, key: &str, raw: Option<u32>| match raw {
            Some(n) => NonZeroU32::new(n).or_else(|| {
                errors.push(format!("{at}.{key}"), "must be at least 1");
                None
            }),
            None => None,
        };
        let requests_per_minute = match self.requests_per_minute {
            None => {
                errors.push(
                    format!("{at}.requests_per_minute"),
                    "missing (e.g. 120: two origin-bound requests a second)",
                );
                None
            }
            raw => positive(errors, "requests_per_minute", raw),
        }
        .unwrap_or(NonZeroU32::MIN);
        let burst = positive(errors, "burst", self.burst)
            .unwrap_or_else(|| default_burst(requests_per_minute));
        ClientLimitConfig {
            requests_per_minute,
            burst,
            key: self.key.unwrap_or(ClientKey::Session),
            max_keys: errors.positive(
                &format!("{at}.max_keys"),
                self.max_keys,
                DEFAULT_CLIENT_LIMIT_MAX_KEYS,
            ),
        }
    }
}
