//! A portal whose capacity moves: `digue demo --capacity "0s:32,60s:12"`
//! halves it a minute in, the way a backup at 8 a.m. or an application
//! server down for maintenance does to a real one.
//!
//! The schedule is a pure function of the time since the portal started
//! ([`CapacitySchedule::at`]), so it is tested without sleeping; one task
//! ([`follow`]) sleeps until each change and applies it.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;

/// The portal's capacity over time: `(offset since start, capacity)`,
/// the first at zero, offsets strictly ascending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacitySchedule {
    steps: Vec<(Duration, NonZeroUsize)>,
}

impl CapacitySchedule {
    /// The same capacity for ever.
    pub fn constant(capacity: NonZeroUsize) -> CapacitySchedule {
        CapacitySchedule {
            steps: vec![(Duration::ZERO, capacity)],
        }
    }

    /// Parses `32` (a constant) or `0s:32,60s:12,2m:48` (offsets from the
    /// portal's start, as `30s`, `1m30s`, `500ms`). Every problem is named
    /// with the entry it is in.
    pub fn parse(text: &str) -> Result<CapacitySchedule, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("the capacity schedule is empty: {EXAMPLE}"));
        }
        if !text.contains(':') && !text.contains(',') {
            return capacity(text)
                .map(CapacitySchedule::constant)
                .map_err(|e| format!("{e}; {EXAMPLE}"));
        }
        let mut problems = Vec::new();
        let mut steps = Vec::new();
        for (i, entry) in text.split(',').map(str::trim).enumerate() {
            let at = format!("entry {} {entry:?}", i + 1);
            let Some((offset, count)) = entry.split_once(':') else {
                problems.push(format!("{at}: write it as OFFSET:CAPACITY, like 60s:12"));
                continue;
            };
            let offset = humantime::parse_duration(offset.trim()).map_err(|e| {
                format!("{at}: offset {offset:?} is not a duration ({e}; write 0s, 90s, 2m)")
            });
            match (offset, capacity(count.trim())) {
                (Ok(offset), Ok(count)) => steps.push((offset, count)),
                (offset, count) => {
                    let errors = [offset.err(), count.err().map(|e| format!("{at}: {e}"))];
                    problems.extend(errors.into_iter().flatten());
                }
            }
        }
        if problems.is_empty() {
            if let Some((first, _)) = steps.first()
                && !first.is_zero()
            {
                problems.push(format!(
                    "the schedule starts at {}: its first entry must be at 0s, the capacity \
                     the portal starts with",
                    spell(*first)
                ));
            }
            for pair in steps.windows(2) {
                let (before, after) = (pair[0].0, pair[1].0);
                if after <= before {
                    problems.push(format!(
                        "offset {} comes after {}: offsets must be in ascending order",
                        spell(after),
                        spell(before)
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(CapacitySchedule { steps })
        } else {
            Err(problems.join("; "))
        }
    }

    /// The capacity `elapsed` after the portal started.
    pub fn at(&self, elapsed: Duration) -> NonZeroUsize {
        let after = self.steps.partition_point(|(offset, _)| *offset <= elapsed);
        // The first step is at zero, so at least one step is at or before
        // any elapsed time.
        self.steps[after.saturating_sub(1)].1
    }

    /// The offset of the first change strictly after `elapsed`, if any.
    pub fn next_change_after(&self, elapsed: Duration) -> Option<Duration> {
        let after = self.steps.partition_point(|(offset, _)| *offset <= elapsed);
        self.steps.get(after).map(|(offset, _)| *offset)
    }

    /// The capacity the portal starts with.
    pub fn initial(&self) -> NonZeroUsize {
        self.at(Duration::ZERO)
    }
}

const EXAMPLE: &str = "write a capacity (32) or offsets and capacities (\"0s:32,60s:12,2m:48\")";

fn capacity(text: &str) -> Result<NonZeroUsize, String> {
    match text.parse::<usize>() {
        Ok(n) => {
            NonZeroUsize::new(n).ok_or_else(|| "capacity 0: the portal needs at least 1".to_owned())
        }
        Err(_) => Err(format!("capacity {text:?} is not a whole number ≥ 1")),
    }
}

/// An offset as the schedule is written: `0s`, `500ms`, `1m30s`.
fn spell(offset: Duration) -> String {
    if offset.is_zero() {
        "0s".to_owned()
    } else {
        humantime::format_duration(offset)
            .to_string()
            .replace(' ', "")
    }
}

impl FromStr for CapacitySchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CapacitySchedule::parse(s)
    }
}

/// `32`, or `0s:32,1m:12`: what [`CapacitySchedule::parse`] reads back.
impl fmt::Display for CapacitySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(_, only)] = self.steps.as_slice() {
            return write!(f, "{only}");
        }
        for (i, (offset, count)) in self.steps.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{}:{count}", spell(*offset))?;
        }
        Ok(())
    }
}

/// Applies `schedule` to the portal from `start` on, then returns after
/// its last change.
pub(super) async fn follow(shared: Arc<Shared>, schedule: CapacitySchedule, start: Instant) {
    loop {
        let elapsed = start.elapsed();
        shared.set_capacity(schedule.at(elapsed).get(), elapsed);
        match schedule.next_change_after(elapsed) {
            Some(next) => tokio::time::sleep_until(start + next).await,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn parse(text: &str) -> CapacitySchedule {
        CapacitySchedule::parse(text).unwrap_or_else(|e| panic!("{text:?} parses: {e}"))
    }

    fn error(text: &str) -> String {
        match CapacitySchedule::parse(text) {
            Ok(s) => panic!("{text:?} should be refused, parsed as {s}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_single_number_is_a_constant_capacity() {
        let s = parse("32");
        for t in [0, 1, 3600] {
            assert_eq!(s.at(secs(t)).get(), 32, "at {t} s");
        }
        assert_eq!(s.next_change_after(Duration::ZERO), None, "never changes");
        assert_eq!(s.to_string(), "32");
    }

    #[test]
    fn the_capacity_moves_at_each_offset_and_holds_between() {
        let s = parse("0s:32, 60s:12,2m:48");
        let at = |t: Duration| s.at(t).get();
        assert_eq!(at(Duration::ZERO), 32, "from the start");
        assert_eq!(at(Duration::from_millis(59_999)), 32, "just before 60 s");
        assert_eq!(at(secs(60)), 12, "exactly at 60 s");
        assert_eq!(at(secs(119)), 12, "held until the next change");
        assert_eq!(at(secs(120)), 48, "2m is 120 s");
        assert_eq!(at(secs(10_000)), 48, "the last one holds for ever");
        assert_eq!(s.initial().get(), 32);
    }

    #[test]
    fn the_next_change_is_strictly_after_now() {
        let s = parse("0s:32,500ms:12,1m:48");
        assert_eq!(
            s.next_change_after(Duration::ZERO),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            s.next_change_after(Duration::from_millis(500)),
            Some(secs(60)),
            "a change at now is done, not next"
        );
        assert_eq!(
            s.next_change_after(secs(60)),
            None,
            "nothing after the last"
        );
    }

    #[test]
    fn a_schedule_prints_as_it_parses() {
        let s = parse("0s:32,500ms:1,90s:12");
        let back = s.to_string();
        assert_eq!(back, "0s:32,500ms:1,1m30s:12", "humantime spelling");
        assert_eq!(parse(&back), s, "round trip");
    }

    #[test]
    fn bad_schedules_are_refused_with_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("0", "capacity 0"),
            ("lots", "\"lots\" is not a whole number"),
            ("-3", "\"-3\" is not a whole number"),
            ("10s:32,60s:12", "must be at 0s"),
            ("0s:32,60s:12,30s:48", "offset 30s comes after 1m"),
            ("0s:32,60s:12,60s:48", "offset 1m comes after 1m"),
            (
                "0s:32,60s12",
                "entry 2 \"60s12\": write it as OFFSET:CAPACITY",
            ),
            (
                "0s:32,6x:12",
                "entry 2 \"6x:12\": offset \"6x\" is not a duration",
            ),
            ("0s:32,60s:0", "entry 2 \"60s:0\": capacity 0"),
            ("0s:32,,60s:3", "entry 2 \"\""),
        ];
        for (text, expected) in cases {
            let e = error(text);
            assert!(
                e.contains(expected),
                "{text:?}: {e:?} should say {expected:?}"
            );
        }
        let both = error("0s:x,1m:0");
        assert!(
            both.contains("entry 1") && both.contains("entry 2"),
            "every bad entry is named at once: {both}"
        );
    }
}
