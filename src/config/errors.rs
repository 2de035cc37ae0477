//! Config problems with their key paths, and the collector that gathers
//! them all during validation.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub(super) fn single(message: String) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        path: String::new(),
        message: message.trim_end().to_owned(),
    }])
}

/// `site.0.cache.x` as serde_ignored sees it → `site[0].cache.x`.
pub fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        P::Map { parent, key } => {
            let parent = key_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            key_path(parent)
        }
    }
}

#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        raw: Option<&str>,
        default: Duration,
    ) -> Duration {
        self.opt_duration(path, raw).unwrap_or(default)
    }

    pub(super) fn opt_duration(&mut self, path: &str, raw: Option<&str>) -> Option<Duration> {
        let raw = raw?;
        match humantime::parse_duration(raw) {
            Ok(d) => Some(d),
            Err(_) => {
                self.push(
                    path,
                    format!("{raw:?} is not a duration (write it like \"30s\", \"20m\", \"1h\")"),
                );
                None
            }
        }
    }

    pub(super) fn size(&mut self, path: &str, raw: Option<&str>, default: u64) -> u64 {
        let Some(raw) = raw else { return default };
        match raw.parse::<bytesize::ByteSize>() {
            Ok(size) if size.as_u64() > 0 => size.as_u64(),
            _ => {
                self.push(
                    path,
                    format!("{raw:?} is not a size (write it like \"256MiB\", \"64KiB\")"),
                );
                default
            }
        }
    }

    pub(super) fn addr(&mut self, path: &str, raw: &str) -> Option<SocketAddr> {
        match raw.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!("{raw:?} is not an address (write it like \"127.0.0.1:8080\")"),
                );
                None
            }
        }
    }

    pub(super) fn positive(&mut self, path: &str, raw: Option<u64>, default: usize) -> usize {
        match raw {
            None => default,
            Some(0) => {
                self.push(path, "must be at least 1");
                default
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }
}
