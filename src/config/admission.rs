//! `[site.admission]`: the waiting room of a site. Its pace and mode are
//! live settings ([`AdmissionSettings`]); the rest changes with the file.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Cidr;
use super::errors::Errors;
use super::events::{EventConfig, EventSpec, validate_all};
use super::live::{AdmissionMode, AdmissionSettings, default_burst};

pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(20 * 60);
/// How long a ticket's turn waits for its holder before passing to the next
/// ticket: a few of the waiting page's slowest polls.
pub const DEFAULT_CLAIM_WINDOW: Duration = Duration::from_secs(60);
/// Shortest claim window: the waiting page polls at least three times in it
/// (every 3 s at the fastest, see `admission::gate`).
pub const MIN_CLAIM_WINDOW: Duration = Duration::from_secs(10);
/// Tickets one network (/24, /64) may take a minute: a whole collège behind
/// one NAT address arrives well within it; a bot that drops cookies does not.
pub const DEFAULT_TICKETS_PER_NETWORK_PER_MINUTE: u32 = 300;

/// The waiting-room settings of a site that change with the file (enforced
/// by the admission stage).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Entry points that need a pass: prefixes of path or path?query.
    pub paths: Vec<String>,
    pub start: AdmissionStart,
    pub cookie_domain: Option<String>,
    pub claim_window: Duration,
    /// Staff networks that never wait (checked on the real peer address).
    pub bypass_cidrs: Vec<Cidr>,
    pub tickets_per_network_per_minute: u32,
    /// The portal's name on the waiting page.
    pub portal_name: String,
    /// News for the people waiting, shown on the page.
    pub message: Option<String>,
    /// Scheduled openings with a pre-queue and a draw (`[[site.admission.event]]`).
    pub events: Vec<EventConfig>,
}

/// The `[site.admission]` keys read once, when the site's gate is built.
/// Field names serialize as the file's keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdmissionStart {
    /// Active sessions are counted by how long a pass goes unused: the
    /// count's memory is sized by it.
    pub session_duration: Duration,
}

#[derive(Deserialize)]
pub(super) struct RawAdmission {
    #[serde(default)]
    paths: Vec<String>,
    new_users_per_minute: Option<u64>,
    burst: Option<u64>,
    max_active_users: Option<u64>,
    session_duration: Option<String>,
    mode: Option<String>,
    cookie_domain: Option<String>,
    claim_window: Option<String>,
    #[serde(default)]
    bypass_cidrs: Vec<String>,
    tickets_per_network_per_minute: Option<u64>,
    portal_name: Option<String>,
    message: Option<String>,
    #[serde(default)]
    event: Vec<EventSpec>,
}

/// A count from the file, saturated to what a `u32` holds.
fn count(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl RawAdmission {
    /// The waiting room and its live settings as the file sets them (their
    /// ranges are checked with the site's other live settings).
    pub(super) fn validate(
        self,
        at: &str,
        errors: &mut Errors,
    ) -> (AdmissionConfig, AdmissionSettings) {
        for (i, p) in self.paths.iter().enumerate() {
            if !p.starts_with('/') {
                errors.push(
                    format!("{at}.paths[{i}]"),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
        let rate = match self.new_users_per_minute {
            Some(n) => count(n),
            None => {
                errors.push(format!("{at}.new_users_per_minute"), "missing");
                60
            }
        };
        let mode = match self.mode.as_deref() {
            None => AdmissionMode::Auto,
            Some(m) => AdmissionMode::parse(m).unwrap_or_else(|| {
                errors.push(
                    format!("{at}.mode"),
                    format!("{m:?} is not one of {}", AdmissionMode::NAMES),
                );
                AdmissionMode::Auto
            }),
        };
        if self.paths.is_empty() {
            errors.push(
                format!("{at}.paths"),
                "missing: list the entry points that create a session (e.g. [\"/pronote/eleve.html\"])",
            );
        }
        let mut bypass_cidrs = Vec::new();
        for (i, raw) in self.bypass_cidrs.iter().enumerate() {
            match raw.parse::<Cidr>() {
                Ok(c) => bypass_cidrs.push(c),
                Err(e) => errors.push(format!("{at}.bypass_cidrs[{i}]"), e),
            }
        }
        if let Some(d) = &self.cookie_domain
            && (d.is_empty()
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        {
            errors.push(
                format!("{at}.cookie_domain"),
                format!("{d:?} is not a domain"),
            );
        }
        let claim_window = errors.duration(
            &format!("{at}.claim_window"),
            self.claim_window.as_deref(),
            DEFAULT_CLAIM_WINDOW,
        );
        if claim_window < MIN_CLAIM_WINDOW {
            errors.push(
                format!("{at}.claim_window"),
                "must be at least 10s: a ticket's holder must be able to poll several times \
                 within it (every 3 s at the fastest)",
            );
        }
        let events = validate_all(&self.event, &format!("{at}.event"), errors);
        let live = AdmissionSettings {
            new_users_per_minute: rate,
            burst: self.burst.map_or(default_burst(rate), count),
            max_active_users: self.max_active_users.map(count),
            mode,
        };
        let config = AdmissionConfig {
            paths: self.paths,
            start: AdmissionStart {
                session_duration: errors.duration(
                    &format!("{at}.session_duration"),
                    self.session_duration.as_deref(),
                    DEFAULT_SESSION_DURATION,
                ),
            },
            cookie_domain: self.cookie_domain,
            claim_window,
            bypass_cidrs,
            tickets_per_network_per_minute: self
                .tickets_per_network_per_minute
                .map_or(DEFAULT_TICKETS_PER_NETWORK_PER_MINUTE, |n| count(n).max(1)),
            portal_name: self.portal_name.unwrap_or_else(|| "le portail".to_owned()),
            message: self.message,
            events,
        };
        (config, live)
    }
}
