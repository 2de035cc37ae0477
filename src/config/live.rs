//! Live settings: what operators turn during a surge (the admin API), what
//! the nodes of a cluster share, and what the file sets at start and on
//! reload. One type, one validator, for all of them.
//!
//! The running values live in a cell of each site (`Site::live`), written
//! by the admin API, the cluster and reloads without rebuilding the config
//! snapshot; [`SiteConfig::live`](super::SiteConfig::live) is only what the
//! file said.

use serde::{Deserialize, Deserializer, Serialize};

/// The live settings of one site. Serialized as the cluster shares them
/// (`digue:settings` in Redis): keep the field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveSettings {
    /// Hard cap on requests in flight to the origin.
    pub origin_concurrency: usize,
    /// The waiting room's pace and mode; `None` for a site without one.
    pub admission: Option<AdmissionSettings>,
}

/// The waiting room's live half (the rest of `[site.admission]` changes
/// only with the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionSettings {
    pub new_users_per_minute: u32,
    /// Admissions that may happen at once after a quiet spell.
    pub burst: u32,
    /// Sessions active at once; `None` for no cap.
    pub max_active_users: Option<u32>,
    pub mode: AdmissionMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionMode {
    /// Admit at the rate while nobody waits, queue the rest.
    Auto,
    /// Everybody takes a ticket, even when the budget has room.
    QueueAll,
    /// The waiting room steps aside.
    Passthrough,
    /// Nobody new gets in; the line stands still.
    Closed,
}

impl AdmissionMode {
    pub const NAMES: &str = "auto, queue_all, passthrough, closed";

    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Auto => "auto",
            AdmissionMode::QueueAll => "queue_all",
            AdmissionMode::Passthrough => "passthrough",
            AdmissionMode::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<AdmissionMode> {
        Some(match s {
            "auto" => AdmissionMode::Auto,
            "queue_all" => AdmissionMode::QueueAll,
            "passthrough" => AdmissionMode::Passthrough,
            "closed" => AdmissionMode::Closed,
            _ => return None,
        })
    }
}

/// The ranges of the live settings, in one place for the file, the admin
/// API and the cluster: far above any portal, far below what the guard and
/// the GCRA can count, so that applying any value in range is instant and
/// exact.
pub const MAX_ORIGIN_CONCURRENCY: usize = 100_000;
/// 100,000 a second.
pub const MAX_NEW_USERS_PER_MINUTE: u32 = 6_000_000;
pub const MAX_BURST: u32 = 1_000_000;
pub const MAX_ACTIVE_USERS: u32 = 1_000_000;

/// Five seconds' worth of the rate, at least one: the burst when none is set.
pub fn default_burst(per_minute: u32) -> u32 {
    (per_minute / 12).max(1)
}

/// A live setting that is out of its range: the key (relative to its site,
/// e.g. `admission.burst`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveError {
    pub key: &'static str,
    pub message: &'static str,
}

impl std::fmt::Display for LiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl LiveSettings {
    /// Every value out of its range. The file, the admin API and settings
    /// received from the cluster all go through here.
    pub fn problems(&self) -> Vec<LiveError> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &'static str, message: &'static str| {
            if !ok {
                out.push(LiveError { key, message });
            }
        };
        check(
            (1..=MAX_ORIGIN_CONCURRENCY).contains(&self.origin_concurrency),
            "origin_concurrency",
            "must be between 1 and 100000 (requests in flight to each backend)",
        );
        if let Some(a) = &self.admission {
            check(
                a.new_users_per_minute <= MAX_NEW_USERS_PER_MINUTE,
                "admission.new_users_per_minute",
                "must be between 0 and 6000000 (0 holds the line)",
            );
            check(
                (1..=MAX_BURST).contains(&a.burst),
                "admission.burst",
                "must be between 1 and 1000000 (0 would admit nobody)",
            );
            check(
                a.max_active_users
                    .is_none_or(|m| (1..=MAX_ACTIVE_USERS).contains(&m)),
                "admission.max_active_users",
                "must be between 1 and 1000000 (0 would admit nobody; leave it out for no cap)",
            );
        }
        out
    }

    /// These settings, if every value is in range.
    pub fn checked(self) -> Result<LiveSettings, LiveError> {
        match self.problems().into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(self),
        }
    }
}

/// A change to a site's waiting room (`PATCH /admin/sites/{name}/admission`):
/// absent keys stay as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionPatch {
    #[serde(default, deserialize_with = "not_null")]
    pub new_users_per_minute: Option<u32>,
    #[serde(default, deserialize_with = "not_null")]
    pub burst: Option<u32>,
    /// `null` removes the cap; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    pub max_active_users: Option<Option<u32>>,
    #[serde(default, deserialize_with = "not_null")]
    pub mode: Option<AdmissionMode>,
}

/// A key that may be left out but not set to `null`: the stricter reading
/// of `"burst": null` is a mistake, not "leave it as it is".
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Tells `"key": null` (Some(None)) from an absent key (None).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// A change to a site's origin limit (`PATCH /admin/sites/{name}/origin`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginPatch {
    pub origin_concurrency: usize,
}

impl AdmissionSettings {
    /// These settings with `patch` applied. A burst left to its default
    /// follows the rate; one set on its own stays.
    pub fn patched(mut self, patch: &AdmissionPatch) -> AdmissionSettings {
        if let Some(rate) = patch.new_users_per_minute {
            let derived = self.burst == default_burst(self.new_users_per_minute);
            self.new_users_per_minute = rate;
            if patch.burst.is_none() && derived {
                self.burst = default_burst(rate);
            }
        }
        if let Some(burst) = patch.burst {
            self.burst = burst;
        }
        if let Some(max) = patch.max_active_users {
            self.max_active_users = max;
        }
        if let Some(mode) = patch.mode {
            self.mode = mode;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LiveSettings {
        LiveSettings {
            origin_concurrency: 8,
            admission: Some(AdmissionSettings {
                new_users_per_minute: 120,
                burst: default_burst(120),
                max_active_users: None,
                mode: AdmissionMode::Auto,
            }),
        }
    }

    #[test]
    fn a_default_burst_follows_the_rate_and_a_chosen_one_stays() {
        let a = settings().admission.expect("admission");
        let faster = AdmissionPatch {
            new_users_per_minute: Some(600),
            ..AdmissionPatch::default()
        };
        assert_eq!(a.patched(&faster).burst, 50, "derived burst follows");
        let chosen = AdmissionSettings { burst: 3, ..a };
        assert_eq!(chosen.patched(&faster).burst, 3, "a chosen burst stays");
    }

    #[test]
    fn zero_limits_are_refused_with_their_key() {
        let mut s = settings();
        s.origin_concurrency = 0;
        if let Some(a) = &mut s.admission {
            a.burst = 0;
            a.max_active_users = Some(0);
        }
        let keys: Vec<_> = s.problems().iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "origin_concurrency",
                "admission.burst",
                "admission.max_active_users"
            ]
        );
        assert!(settings().checked().is_ok(), "in range");
    }

    #[test]
    fn the_cluster_wire_format_keeps_its_field_names_and_mode_spelling() {
        let json = serde_json::to_string(&settings()).expect("serializes");
        assert_eq!(
            json,
            r#"{"origin_concurrency":8,"admission":{"new_users_per_minute":120,"burst":10,"max_active_users":null,"mode":"auto"}}"#
        );
    }
}
