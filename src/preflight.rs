//! The checks of a config that need more than its text: certificate files
//! (the listener's, the origins'),
//! the signing secret, the pages directory. Each belongs to the module that
//! knows the file; this runs them all with their key paths, the same way
//! for `digue check`, `digue run` and a reload.

use std::path::Path;

use crate::config::{Config, ConfigErrors};

/// Every problem the config's files have.
pub fn check(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = crate::tls::preflight(config.server.tls.as_ref());
    errors.extend(crate::admission::keys::preflight(
        config.server.secret_file.as_deref(),
    ));
    errors.extend(crate::pages::preflight(config.server.pages_dir.as_deref()));
    errors.extend(crate::origin::tls::preflight(&config.sites));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads, validates and preflights a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let config = Config::load(path)?;
    check(&config)?;
    Ok(config)
}

/// Validates and preflights config text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let config = Config::parse(text)?;
    check(&config)?;
    Ok(config)
}
