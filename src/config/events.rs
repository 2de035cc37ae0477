//! `[[site.admission.event]]`: a scheduled opening with a pre-queue and a
//! draw. One shape ([`EventSpec`]) for the file, the admin API
//! (`POST /admin/sites/{name}/events`) and the state file; one validator
//! ([`EventSpec::validate`]) for all three, so an event the API accepts is
//! one the file would.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::errors::Errors;
use super::live::MAX_NEW_USERS_PER_MINUTE;

/// The pre-queue opens this long before `opens_at` unless `prequeue_from` says.
pub const DEFAULT_PREQUEUE: Duration = Duration::from_secs(30 * 60);
/// Longest event name: it goes into cookies and Redis keys.
pub const MAX_EVENT_NAME: usize = 64;
/// Events one site may hold (file and admin API together): the list is
/// scanned on every gated request.
pub const MAX_EVENTS: usize = 64;

/// An event as written: in the file, in an admin API body, in the state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub name: String,
    /// RFC 3339 with an offset, e.g. `2026-09-01T08:00:00+02:00`.
    pub opens_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prequeue_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closes_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_users_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A validated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    /// What was written, for listing it back as it was given.
    pub spec: EventSpec,
    /// When the draw happens, in Unix seconds.
    pub opens_at: u64,
    /// Minutes east of UTC of `opens_at` as written: the page shows the
    /// opening in the writer's local time ("Ouverture à 8 h 00").
    pub offset_minutes: i32,
    /// When the pre-queue starts, in Unix seconds (before `opens_at`).
    pub prequeue_from: u64,
    /// When the event ends, in Unix seconds (after `opens_at`).
    pub closes_at: Option<u64>,
    /// The admission rate from `opens_at` to `closes_at`.
    pub new_users_per_minute: Option<u32>,
}

impl EventConfig {
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn message(&self) -> Option<&str> {
        self.spec.message.as_deref()
    }

    /// Whether `unix` falls in the pre-queue.
    pub fn prequeue_at(&self, unix: u64) -> bool {
        (self.prequeue_from..self.opens_at).contains(&unix)
    }

    /// Whether the event runs at `unix`: opened, not yet closed.
    pub fn running_at(&self, unix: u64) -> bool {
        unix >= self.opens_at && self.closes_at.is_none_or(|c| unix < c)
    }

    /// The opening's hour and minute, local to the offset it was written in.
    pub fn local_time(&self) -> (u64, u64) {
        let local = i128::from(self.opens_at) + i128::from(self.offset_minutes) * 60;
        let of_day = local.rem_euclid(86_400) as u64;
        (of_day / 3600, of_day % 3600 / 60)
    }
}

impl EventSpec {
    /// The event, or its problems under `at` (e.g.
    /// `site[0].admission.event[1]`; `""` for an admin API body).
    pub(super) fn validate(&self, at: &str, errors: &mut Errors) -> Option<EventConfig> {
        let key = |k: &str| {
            if at.is_empty() {
                k.to_owned()
            } else {
                format!("{at}.{k}")
            }
        };
        let before = errors.0.len();
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_EVENT_NAME
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !name_ok {
            errors.push(
                key("name"),
                format!(
                    "{:?} must be 1 to {MAX_EVENT_NAME} of a-z, 0-9, '-' and '_'",
                    self.name
                ),
            );
        }
        let mut moment = |k: &str, raw: &str| match parse_rfc3339(raw) {
            Ok(m) => Some(m),
            Err(why) => {
                errors.push(key(k), format!("{raw:?} {why}"));
                None
            }
        };
        let opens = moment("opens_at", &self.opens_at);
        let prequeue = self
            .prequeue_from
            .as_deref()
            .map(|raw| moment("prequeue_from", raw));
        let closes = self
            .closes_at
            .as_deref()
            .map(|raw| moment("closes_at", raw));
        let opens_at = opens.map(|(secs, _)| secs);
        let prequeue_from = match (prequeue, opens_at) {
            (Some(Some((p, _))), Some(o)) if p >= o => {
                errors.push(
                    key("prequeue_from"),
                    "must be before opens_at: the pre-queue gathers people until the opening",
                );
                None
            }
            (Some(p), _) => p.map(|(secs, _)| secs),
            (None, o) => o.map(|o| o.saturating_sub(DEFAULT_PREQUEUE.as_secs())),
        };
        let closes_at = match (closes, opens_at) {
            (Some(Some((c, _))), Some(o)) if c <= o => {
                errors.push(key("closes_at"), "must be after opens_at");
                None
            }
            (Some(c), _) => c.map(|(secs, _)| secs),
            (None, _) => None,
        };
        let rate = match self.new_users_per_minute {
            Some(n) if n > u64::from(MAX_NEW_USERS_PER_MINUTE) => {
                errors.push(
                    key("new_users_per_minute"),
                    "must be between 0 and 6000000 (0 holds the line)",
                );
                None
            }
            Some(_) if self.closes_at.is_none() => {
                errors.push(
                    key("new_users_per_minute"),
                    "needs closes_at: the override applies from opens_at to closes_at",
                );
                None
            }
            n => n.map(|n| n as u32),
        };
        if errors.0.len() > before {
            return None;
        }
        let (opens_at, offset_minutes) = opens?;
        Some(EventConfig {
            spec: self.clone(),
            opens_at,
            offset_minutes,
            prequeue_from: prequeue_from?,
            closes_at,
            new_users_per_minute: rate,
        })
    }

    /// The event, or every problem as `key: message` (the admin API's 400).
    pub fn checked(&self) -> Result<EventConfig, Vec<String>> {
        let mut errors = Errors::default();
        match self.validate("", &mut errors) {
            Some(event) if errors.0.is_empty() => Ok(event),
            _ => Err(errors.0.iter().map(ToString::to_string).collect()),
        }
    }
}

/// Validates a site's events: each one, and their names unique.
pub(super) fn validate_all(specs: &[EventSpec], at: &str, errors: &mut Errors) -> Vec<EventConfig> {
    if specs.len() > MAX_EVENTS {
        errors.push(
            at.to_owned(),
            format!("at most {MAX_EVENTS} events per site"),
        );
    }
    let mut out: Vec<EventConfig> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if specs[..i].iter().any(|s| s.name == spec.name) {
            errors.push(
                format!("{at}.name"),
                format!("{:?} is used by another event of this site", spec.name),
            );
        }
        out.extend(spec.validate(&at, errors));
    }
    out
}

/// An RFC 3339 date-time with its offset (`Z` or `±hh:mm`), as Unix
/// seconds and minutes east of UTC. Fractions of a second are dropped.
pub fn parse_rfc3339(raw: &str) -> Result<(u64, i32), &'static str> {
    const SHAPE: &str = "is not an RFC 3339 date-time with an offset \
                         (write it like \"2026-09-01T08:00:00+02:00\")";
    let b = raw.as_bytes();
    let digits = |from: usize, len: usize| -> Result<i64, &'static str> {
        let part = b.get(from..from + len).ok_or(SHAPE)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(SHAPE);
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return Err(SHAPE);
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let mut rest = 19;
    if at(rest, b".") {
        rest += 1;
        while b.get(rest).is_some_and(u8::is_ascii_digit) {
            rest += 1;
        }
    }
    let offset = match b.get(rest) {
        Some(b'Z' | b'z') if rest + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if rest + 6 == b.len() && at(rest + 3, b":") => {
            let (h, m) = (digits(rest + 1, 2)?, digits(rest + 4, 2)?);
            if h > 23 || m > 59 {
                return Err("has an offset out of range");
            }
            let minutes = h * 60 + m;
            if *sign == b'-' { -minutes } else { minutes }
        }
        None => return Err("has no offset: add one, like +02:00 (Paris in summer) or Z"),
        Some(_) => return Err(SHAPE),
    };
    let month_days = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        2 if leap => 29,
        1..=12 => month_days[(month - 1) as usize],
        _ => return Err("has a month out of range"),
    };
    if !(1970..=9999).contains(&year) || day < 1 || day > days_in_month {
        return Err("is not a date (day out of range, or before 1970)");
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err("is not a time of day");
    }
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second.min(59)
            - offset * 60;
    let secs = u64::try_from(secs).map_err(|_| "is before 1970")?;
    Ok((secs, offset as i32))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_reads_offsets_and_refuses_a_time_without_one() {
        assert_eq!(
            parse_rfc3339("2026-09-01T08:00:00+02:00"),
            Ok((1_788_242_400, 120))
        );
        assert_eq!(
            parse_rfc3339("2026-09-01T06:00:00Z"),
            Ok((1_788_242_400, 0))
        );
        assert_eq!(
            parse_rfc3339("2026-09-01T01:30:00.250-04:30"),
            Ok((1_788_242_400, -270))
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok((0, 0)));
        assert_eq!(parse_rfc3339("2028-02-29T00:00:00Z").map(|m| m.1), Ok(0));
        for bad in [
            "2026-09-01T08:00:00",
            "2026-09-01 08:00",
            "2026-02-30T08:00:00Z",
            "2026-13-01T08:00:00Z",
            "2026-09-01T24:00:00Z",
            "2026-09-01T08:00:00+2",
            "tomorrow",
            "",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?} refused");
        }
        assert!(
            parse_rfc3339("2026-09-01T08:00:00")
                .unwrap_err()
                .contains("no offset")
        );
    }

    #[test]
    fn the_opening_is_shown_in_the_offset_it_was_written_in() {
        let spec = EventSpec {
            name: "rentree".into(),
            opens_at: "2026-09-01T08:00:00+02:00".into(),
            prequeue_from: None,
            closes_at: None,
            new_users_per_minute: None,
            message: None,
        };
        let event = spec.checked().expect("valid");
        assert_eq!(event.local_time(), (8, 0));
        assert_eq!(event.prequeue_from, event.opens_at - 1800, "30 min before");
        assert!(event.prequeue_at(event.opens_at - 1));
        assert!(!event.prequeue_at(event.opens_at));
        assert!(event.running_at(event.opens_at));
    }
}
