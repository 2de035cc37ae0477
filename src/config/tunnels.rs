//! A site's tunnels: WebSocket connections, and the other `Upgrade`
//! protocols an operator allows. Keys of `[[site]]`; a reload applies
//! them to new tunnels (open ones keep going).

use std::time::Duration;

use super::errors::Errors;

/// Tunnels one site may have open at once: each is two sockets and two
/// copy buffers, so this bounds what a flood of ENT pages can pin.
pub const DEFAULT_MAX_WEBSOCKETS: usize = 10_000;
/// A tunnel with no byte either way for this long is closed. ENT
/// notification sockets ping every 30-60 s; a dead phone never does.
pub const DEFAULT_WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// `Upgrade` protocols that cannot be tunnelled: h2c is a change of HTTP
/// version on the same connection, which digue speaks itself.
const NEVER_TUNNELLED: [&str; 2] = ["h2c", "h2"];

#[derive(Debug, Clone, PartialEq)]
pub struct TunnelConfig {
    /// WebSocket and other tunnels open at once for the site.
    pub max_websockets: usize,
    /// A tunnel silent both ways this long is closed.
    pub idle_timeout: Duration,
    /// `Upgrade` protocols tunnelled besides `websocket`, lower-cased.
    pub allow_upgrades: Vec<String>,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            max_websockets: DEFAULT_MAX_WEBSOCKETS,
            idle_timeout: DEFAULT_WEBSOCKET_IDLE_TIMEOUT,
            allow_upgrades: Vec::new(),
        }
    }
}

impl TunnelConfig {
    /// Whether an `Upgrade` to `protocol` (any case) is tunnelled.
    pub fn allows(&self, protocol: &str) -> bool {
        protocol.eq_ignore_ascii_case("websocket")
            || self
                .allow_upgrades
                .iter()
                .any(|p| p.eq_ignore_ascii_case(protocol))
    }
}

/// The tunnel keys of one `[[site]]`, as written.
#[derive(Default)]
pub(super) struct RawTunnels {
    pub max_websockets: Option<u64>,
    pub websocket_idle_timeout: Option<String>,
    pub allow_upgrades: Option<Vec<String>>,
}

impl RawTunnels {
    pub(super) fn validate(self, at: &str, errors: &mut Errors) -> TunnelConfig {
        let max_websockets = errors.positive(
            &format!("{at}.max_websockets"),
            self.max_websockets,
            DEFAULT_MAX_WEBSOCKETS,
        );
        let idle_at = format!("{at}.websocket_idle_timeout");
        let idle_timeout = errors.duration(
            &idle_at,
            self.websocket_idle_timeout.as_deref(),
            DEFAULT_WEBSOCKET_IDLE_TIMEOUT,
        );
        if idle_timeout < Duration::from_millis(100) {
            errors.push(idle_at, "must be at least 100ms");
        }
        let allow_upgrades = self
            .allow_upgrades
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let at = format!("{at}.allow_upgrades[{i}]");
                let token = !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
                if !token {
                    errors.push(at, format!("{p:?} is not a protocol name (e.g. \"mqtt\")"));
                    return None;
                }
                let p = p.to_ascii_lowercase();
                if NEVER_TUNNELLED.contains(&p.as_str()) {
                    errors.push(
                        at,
                        format!("{p:?} cannot be tunnelled: digue speaks HTTP/2 itself"),
                    );
                    return None;
                }
                Some(p)
            })
            .collect();
        TunnelConfig {
            max_websockets,
            idle_timeout,
            allow_upgrades,
        }
    }
}
