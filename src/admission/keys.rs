//! The keys that sign tickets and passes: `server.secret_file`, else
//! `DIGUE_SECRET` (and `DIGUE_SECRET_PREVIOUS` during a rotation), else a
//! random key that dies with the process.

use std::path::Path;

use crate::admission::token::{Keys, MIN_SECRET_BYTES};
use crate::config::ConfigError;

/// Environment variables holding the signing secrets.
pub const SECRET_ENV: &str = "DIGUE_SECRET";
pub const PREVIOUS_SECRET_ENV: &str = "DIGUE_SECRET_PREVIOUS";

fn checked(secret: &str, what: &str) -> Result<Vec<u8>, String> {
    let secret = secret.trim();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{what} is shorter than {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

/// Keys from a file: the current secret on the first line, the previous one
/// (during a rotation) on the second.
pub fn keys_from_file(path: &Path) -> Result<Keys, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let current = checked(lines.next().unwrap_or(""), "the secret's first line")?;
    let previous = lines
        .next()
        .map(|l| checked(l, "the secret's second line"))
        .transpose()?;
    Ok(Keys::new(current, previous))
}

/// The signing keys: `secret_file`, else `DIGUE_SECRET` (and
/// `DIGUE_SECRET_PREVIOUS`), else a random key that dies with the process
/// (`None` in the second position tells the caller to warn).
pub fn load_keys(secret_file: Option<&Path>) -> Result<(Keys, bool), String> {
    if let Some(path) = secret_file {
        return keys_from_file(path).map(|k| (k, true));
    }
    match std::env::var(SECRET_ENV) {
        Ok(secret) => {
            let current = checked(&secret, SECRET_ENV)?;
            let previous = std::env::var(PREVIOUS_SECRET_ENV)
                .ok()
                .map(|p| checked(&p, PREVIOUS_SECRET_ENV))
                .transpose()?;
            Ok((Keys::new(current, previous), true))
        }
        Err(_) => Ok((Keys::ephemeral(), false)),
    }
}

/// `server.secret_file`'s problem, if any, with its key path.
pub fn preflight(secret_file: Option<&Path>) -> Vec<ConfigError> {
    match secret_file.map(keys_from_file) {
        Some(Err(message)) => vec![ConfigError {
            path: "server.secret_file".to_owned(),
            message,
        }],
        _ => Vec::new(),
    }
}
