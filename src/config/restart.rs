//! The keys read once, when the listeners and tasks start. A reload that
//! changes one is refused with its key path, which comes from the types
//! (their serialized field names), never from a list to keep in step: a new
//! read-once key goes into one of these structs and is checked with them.

use serde::Serialize;
use serde_json::Value;

use super::admission::AdmissionStart;
use super::cache::CacheStart;
use super::cluster::ClusterConfig;
use super::server::ServerStart;
use super::{Config, ConfigError};

/// Everything a reload cannot change, by section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartOnly {
    pub server: ServerStart,
    pub cache: CacheStart,
    /// The whole `[cluster]` section: the link to Redis is made once.
    pub cluster: Option<ClusterConfig>,
}

/// Why a changed read-once key is refused.
const NEEDS_RESTART: &str = "changing it needs a restart (it is read once, when listeners and \
                             tasks start); the running config stays";

impl Config {
    /// The read-once keys `new` changes, each as an error with its path.
    /// Adding or removing a site's waiting room builds a new gate: that
    /// reloads fine; changing a kept gate's read-once keys does not.
    pub fn restart_needed(&self, new: &Config) -> Vec<ConfigError> {
        let mut paths = Vec::new();
        if self.restart != new.restart {
            changed_keys(
                "",
                &to_value(&self.restart),
                &to_value(&new.restart),
                2,
                &mut paths,
            );
        }
        for (i, site) in new.sites.iter().enumerate() {
            let before = self.sites.iter().find(|o| o.name == site.name);
            if let (Some(old), Some(new)) =
                (before.and_then(|b| b.admission.as_ref()), &site.admission)
                && old.start != new.start
            {
                changed_keys(
                    &format!("site[{i}].admission"),
                    &to_value::<AdmissionStart>(&old.start),
                    &to_value(&new.start),
                    1,
                    &mut paths,
                );
            }
        }
        paths
            .into_iter()
            .map(|path| ConfigError {
                path,
                message: NEEDS_RESTART.to_owned(),
            })
            .collect()
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("invariant: config types serialize to JSON")
}

/// The paths, `depth` levels of fields down, where `old` and `new` differ.
/// A section present on one side only is reported as a whole.
fn changed_keys(prefix: &str, old: &Value, new: &Value, depth: usize, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) if depth > 0 => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let (x, y) = (
                    a.get(key).unwrap_or(&Value::Null),
                    b.get(key).unwrap_or(&Value::Null),
                );
                changed_keys(&path, x, y, depth - 1, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_server: &str, extra_site: &str) -> Config {
        Config::parse(&format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\n{extra_server}\n\
             [[site]]\nname = \"p\"\nhosts = [\"*\"]\norigin = \"http://127.0.0.1:1\"\n\
             [site.admission]\npaths = [\"/login\"]\nnew_users_per_minute = 60\n{extra_site}\n"
        ))
        .expect("valid")
    }

    fn paths(old: &Config, new: &Config) -> Vec<String> {
        old.restart_needed(new)
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn a_changed_read_once_key_is_named_by_its_file_key() {
        let old = config("", "");
        assert!(paths(&old, &old).is_empty(), "nothing changed");
        let moved = config(
            "max_header_size = \"32KiB\"\nlog_format = \"json\"\n",
            "session_duration = \"5m\"",
        );
        assert_eq!(
            paths(&old, &moved),
            [
                "server.log_format",
                "server.max_header_size",
                "site[0].admission.session_duration"
            ]
        );
    }

    #[test]
    fn a_cluster_section_added_is_refused_as_a_whole() {
        let old = config("", "");
        let new = Config::parse(&format!(
            "{}\n[cluster]\nredis_url = \"redis://127.0.0.1:1\"\n",
            "[server]\nlisten = \"127.0.0.1:8080\"\n[[site]]\nname = \"p\"\nhosts = [\"*\"]\n\
             origin = \"http://127.0.0.1:1\"\n[site.admission]\npaths = [\"/login\"]\n\
             new_users_per_minute = 60\n"
        ))
        .expect("valid");
        assert_eq!(paths(&old, &new), ["cluster"]);
    }
}
