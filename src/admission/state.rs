//! Saving the lines' counters, so that a ticket keeps its place across a
//! restart of a single node (a cluster keeps them in Redis instead).
//!
//! The file is rewritten atomically (temp file + rename) every second while
//! counters move, and once more on a clean shutdown. After a crash, up to a
//! second of tickets may have been issued after the last save: their
//! numbers are never reissued, and their holders go in first when they come
//! back (see `crash_margin` and `Line::restore`). The autopilot's values
//! ride along, so that a restart resumes from what it had found.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::admission::line::Saved;

/// What the state file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLines {
    /// Written by a clean shutdown: nothing was issued after it.
    pub clean: bool,
    /// Counters by site name.
    pub lines: BTreeMap<String, Saved>,
    /// What the autopilot had found, by site name (absent in older files).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paces: BTreeMap<String, SavedPace>,
}

/// The values a site's autopilot had set, so that a restart resumes from
/// them rather than from the file's (which may be ten times too high).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPace {
    /// The admission rate, for a site with a waiting room.
    pub new_users_per_minute: Option<u32>,
    /// Each backend's concurrency limit, by its name.
    pub origin_limits: BTreeMap<String, usize>,
}

/// Reads the state file; a missing file is an empty state, a corrupt one an error.
pub fn load(path: &Path) -> Result<SavedLines, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a digue state file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SavedLines::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the state file atomically.
pub fn save(path: &Path, state: &SavedLines) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_through_the_file() {
        let path = std::env::temp_dir().join(format!("digue-state-{}.json", std::process::id()));
        assert_eq!(
            load(&path).expect("missing is empty"),
            SavedLines::default()
        );
        let mut state = SavedLines {
            clean: true,
            ..SavedLines::default()
        };
        state.lines.insert(
            "pronote".into(),
            Saved {
                issued: 9,
                cursor: 3,
                turns: vec![3],
                budget_debt_ms: 1500,
                arrivals_per_sec: 40,
                events: Vec::new(),
            },
        );
        state.paces.insert(
            "pronote".into(),
            SavedPace {
                new_users_per_minute: Some(420),
                origin_limits: [("http://10.1.0.11:8080".to_owned(), 27)].into(),
            },
        );
        save(&path, &state).expect("writable");
        assert_eq!(load(&path).expect("readable"), state);
        std::fs::write(&path, r#"{"clean": true, "lines": {}}"#).expect("writable");
        assert_eq!(
            load(&path).expect("a file written before the autopilot"),
            SavedLines {
                clean: true,
                ..SavedLines::default()
            }
        );
        std::fs::write(&path, "garbage").expect("writable");
        assert!(
            load(&path).is_err(),
            "a corrupt file is an error, not a silent reset"
        );
        let _ = std::fs::remove_file(&path);
    }
}
