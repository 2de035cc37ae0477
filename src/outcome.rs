//! How a request was served, as closed enums: one source for the
//! `Cache-Status` header, metric labels and logs.
//!
//! The label enums are declared with `closed_enum!`: each variant is written
//! once with its label, and `ALL` (declaration order, so metric handles can
//! be indexed by `variant as usize`) and `as_str` are generated from that.

use crate::closed_enum::closed_enum;

closed_enum! {
    /// The outcome of one request, the `outcome` label of `digue_requests_total`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Outcome {
        Hit => "hit",
        Stale => "stale",
        Miss => "miss",
        Collapsed => "collapsed",
        Bypass => "bypass",
        Pass => "pass",
        Busy => "busy",
        Error => "error",
    }
}

closed_enum! {
    /// Why a stale copy was served instead of a fresh one.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum StaleReason {
        /// Within stale-while-revalidate: one background fetch refreshes it.
        Revalidating => "revalidating",
        /// The origin failed (5xx, connect error, timeout): stale-if-error.
        OriginError => "origin_error",
        /// No origin slot within origin_queue_timeout, or too many waiters.
        OriginBusy => "origin_busy",
    }
}

impl StaleReason {
    /// The `detail` of `Cache-Status`.
    fn detail(self) -> &'static str {
        match self {
            StaleReason::Revalidating => "stale-while-revalidate",
            StaleReason::OriginError => "stale-if-error",
            StaleReason::OriginBusy => "origin-busy",
        }
    }
}

closed_enum! {
    /// Why a request skipped the shared cache.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BypassReason {
        /// Not GET or HEAD: passed untouched.
        Method => "method",
        /// Carries one of the site's session cookies: per-user.
        SessionCookie => "session_cookie",
        /// Carries `Authorization`: per-user (RFC 9111 §3.5).
        Authorization => "authorization",
        /// A `Range` request: digue does not store partial content.
        Range => "range",
        /// A cache rule says bypass.
        Rule => "rule",
        /// The key recently answered something uncacheable (hit-for-miss).
        Uncacheable => "uncacheable",
        /// Asks to switch protocols (WebSocket): tunnelled, never stored.
        Upgrade => "upgrade",
    }
}

impl BypassReason {
    fn detail(self) -> &'static str {
        match self {
            BypassReason::Method => "method",
            BypassReason::SessionCookie => "session-cookie",
            BypassReason::Authorization => "authorization",
            BypassReason::Range => "range",
            BypassReason::Rule => "rule",
            BypassReason::Uncacheable => "hit-for-miss",
            BypassReason::Upgrade => "upgrade",
        }
    }
}

closed_enum! {
    /// Why the busy page was served.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum BusyReason {
        /// No origin slot freed within origin_queue_timeout.
        QueueTimeout => "queue_timeout",
        /// Too many requests already wait on the same fetch.
        WaitersFull => "waiters_full",
        /// The fetch this request waited on did not finish within its deadline.
        WaitTimeout => "wait_timeout",
        /// The site has max_websockets tunnels open already.
        TunnelsFull => "tunnels_full",
        /// The client (its connection, or its network) already holds its
        /// share of the origin's slots.
        ClientShare => "client_share",
    }
}

closed_enum! {
    /// How a request to the origin failed.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum OriginErrorKind {
        /// Could not connect (refused, unreachable, connect timeout).
        Connect => "connect",
        /// The TLS handshake failed: an untrusted or expired certificate,
        /// a wrong name, a client certificate refused.
        Tls => "tls",
        /// No response headers within origin_timeout (or body stalled).
        Timeout => "timeout",
        /// The connection broke or the origin spoke bad HTTP.
        Protocol => "protocol",
        /// The origin answered 5xx (counted; the response itself is relayed).
        Status5xx => "status_5xx",
    }
}

closed_enum! {
    /// How a visitor got onto a gated path.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum AdmitHow {
        /// Nobody was waiting and the budget allowed it.
        Immediate => "immediate",
        /// Their ticket's turn came.
        Line => "line",
        /// From a staff network (`bypass_cidrs`).
        Bypass => "bypass",
        /// `mode = "passthrough"`: measured, never queued.
        Passthrough => "passthrough",
    }
}

closed_enum! {
    /// Why a ticket or pass cookie was worth nothing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Refusal {
        /// Forged, tampered, garbled, signed by an unknown key or for another site.
        Invalid => "invalid",
        /// A genuine pass unused for longer than `session_duration`, or a ticket
        /// older than its cookie's twelve hours.
        Expired => "expired",
    }
}

/// Why the cache forwarded a request (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing stored for this URI.
    UriMiss,
    /// Stored, but for other values of the `Vary` headers.
    VaryMiss,
    /// Stored but stale: forwarded to revalidate.
    Stale,
    /// Not eligible for the cache.
    Bypass(BypassReason),
}

/// The `Cache-Status` entry of one response (RFC 9211).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served fresh from the cache; `ttl` seconds left.
    Hit { ttl: u64 },
    /// Served part of a fresh stored response (`206`/`416`): `ttl` seconds left.
    RangeHit { ttl: u64 },
    /// Served a stale copy without waiting for the origin.
    StaleServed(StaleReason),
    /// Forwarded to the origin.
    Forwarded {
        fwd: Forward,
        status: u16,
        stored: bool,
        collapsed: bool,
    },
    /// Forwarded for an unsafe method whose answer made the stored copies of
    /// its target stale (RFC 9111 §4.4).
    Invalidated { status: u16 },
    /// The origin could not be asked or did not answer: a digue page.
    NotServed { fwd: Forward, detail: &'static str },
}

impl CacheStatus {
    /// The header value, `digue; hit; ttl=30`.
    pub fn render(self) -> String {
        match self {
            CacheStatus::Hit { ttl } => format!("digue; hit; ttl={ttl}"),
            CacheStatus::RangeHit { ttl } => format!("digue; hit; ttl={ttl}; detail=range-hit"),
            CacheStatus::StaleServed(reason) => {
                format!("digue; fwd=stale; detail={}", reason.detail())
            }
            CacheStatus::Forwarded {
                fwd,
                status,
                stored,
                collapsed,
            } => {
                let mut s = format!("digue; {}; fwd-status={status}", fwd_param(fwd));
                if stored {
                    s.push_str("; stored");
                }
                if collapsed {
                    s.push_str("; collapsed");
                }
                s
            }
            CacheStatus::Invalidated { status } => {
                format!("digue; fwd=method; fwd-status={status}; detail=invalidated")
            }
            CacheStatus::NotServed { fwd, detail } => {
                format!("digue; {}; detail={detail}", fwd_param(fwd))
            }
        }
    }
}

impl CacheStatus {
    /// Appends this entry to a response's `Cache-Status`: entries from caches
    /// nearer the origin come first (RFC 9211 §2).
    pub fn append_to(self, headers: &mut http::HeaderMap) {
        // try_from(String) takes the buffer over instead of copying it.
        if let Ok(v) = http::HeaderValue::try_from(self.render()) {
            headers.append(http::header::HeaderName::from_static("cache-status"), v);
        }
    }
}

fn fwd_param(fwd: Forward) -> String {
    match fwd {
        Forward::UriMiss => "fwd=uri-miss".to_owned(),
        Forward::VaryMiss => "fwd=vary-miss".to_owned(),
        Forward::Stale => "fwd=stale".to_owned(),
        Forward::Bypass(BypassReason::Method) => "fwd=method".to_owned(),
        Forward::Bypass(reason) => format!("fwd=bypass; detail={}", reason.detail()),
    }
}

closed_enum! {
    /// Why a request target was refused with `400` (see `target`), the
    /// `reason` label of `digue_refused_targets_total`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Unreadable {
        /// A control character (NUL, CR, LF, DEL...), raw or percent-escaped.
        Control => "control",
        /// A `%` not followed by two hex digits, in the path.
        BadEscape => "bad_escape",
        /// A `..` that climbs above the root.
        AboveRoot => "above_root",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_status_values_follow_rfc_9211() {
        assert_eq!(CacheStatus::Hit { ttl: 30 }.render(), "digue; hit; ttl=30");
        let miss = CacheStatus::Forwarded {
            fwd: Forward::UriMiss,
            status: 200,
            stored: true,
            collapsed: false,
        };
        assert_eq!(miss.render(), "digue; fwd=uri-miss; fwd-status=200; stored");
        assert_eq!(
            CacheStatus::StaleServed(StaleReason::OriginError).render(),
            "digue; fwd=stale; detail=stale-if-error"
        );
        let bypass = CacheStatus::Forwarded {
            fwd: Forward::Bypass(BypassReason::SessionCookie),
            status: 200,
            stored: false,
            collapsed: false,
        };
        assert_eq!(
            bypass.render(),
            "digue; fwd=bypass; detail=session-cookie; fwd-status=200"
        );
    }
}
