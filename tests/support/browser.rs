//! A visitor of the waiting room: a cookie jar that keeps `digue_ticket`
//! and `digue_pass` from `Set-Cookie` and sends them back, as a browser
//! would, loading pages or polling the JSON status as the waiting page does.

use super::http::{Got, get, set_cookie};
use super::proxy::Proxy;

/// The gated entry point of the tests' waiting rooms ([`Digue::admission`]).
///
/// [`Digue::admission`]: super::proxy::Digue::admission
pub const ENTRY: &str = "/pronote/eleve.html";
pub const TICKET: &str = "digue_ticket";
pub const PASS: &str = "digue_pass";
/// What a browser sends when it loads a page.
pub const BROWSER_ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// A page load.
    Html,
    /// The waiting page's status poll.
    Json,
}

/// One visitor's browser: a jar for digue's two cookies, plus any cookie
/// of the portal's own, and the `Host` it asks for.
#[derive(Debug, Default, Clone)]
pub struct Browser {
    pub ticket: Option<String>,
    pub pass: Option<String>,
    /// Cookies of the portal's own, sent first.
    pub other: Option<&'static str>,
    /// The `Host` it asks for, when digue serves several sites.
    pub host: Option<String>,
}

impl Browser {
    /// A visitor of the site served at `host`.
    pub fn on(host: &str) -> Browser {
        Browser {
            host: Some(host.to_owned()),
            ..Browser::default()
        }
    }

    pub fn with_ticket(ticket: &str) -> Browser {
        Browser {
            ticket: Some(ticket.to_owned()),
            ..Browser::default()
        }
    }

    pub fn with_pass(pass: &str) -> Browser {
        Browser {
            pass: Some(pass.to_owned()),
            ..Browser::default()
        }
    }

    fn cookie_header(&self) -> Option<String> {
        let pairs: Vec<String> = [
            self.other.map(str::to_owned),
            self.ticket.as_ref().map(|t| format!("{TICKET}={t}")),
            self.pass.as_ref().map(|p| format!("{PASS}={p}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }

    /// `GET target` with the jar's cookies; keeps what comes back.
    pub async fn visit(&mut self, proxy: &Proxy, target: &str, accept: Accept) -> Got {
        let cookie = self.cookie_header();
        let mut headers = vec![(
            "accept",
            match accept {
                Accept::Html => BROWSER_ACCEPT,
                Accept::Json => "application/json",
            },
        )];
        if let Some(c) = &cookie {
            headers.push(("cookie", c.as_str()));
        }
        if let Some(host) = &self.host {
            headers.push(("host", host.as_str()));
        }
        let got = get(&proxy.url(target), &headers).await;
        self.keep(&got);
        got
    }

    /// The waiting page's JSON poll of [`ENTRY`] (a newcomer's first one
    /// too); keeps what comes back.
    pub async fn poll(&mut self, proxy: &Proxy) -> Got {
        self.visit(proxy, ENTRY, Accept::Json).await
    }

    fn keep(&mut self, got: &Got) {
        if let Some(t) = set_cookie(got, TICKET) {
            self.ticket = t;
        }
        if let Some(p) = set_cookie(got, PASS) {
            self.pass = p;
        }
    }

    pub fn ticket(&self) -> &str {
        self.ticket.as_deref().expect("this browser holds a ticket")
    }

    pub fn pass(&self) -> &str {
        self.pass.as_deref().expect("this browser holds a pass")
    }
}

/// Seconds since the Unix epoch, as tickets count them.
pub fn unix_now() -> u64 {
    digue::clock::unix_secs(digue::clock::wall())
}

/// A ticket for `site` as digue signs them with the key in `secret`, e.g.
/// one handed out by an earlier run, `issued` at that Unix time.
pub fn signed_ticket(secret: &std::path::Path, site: &str, number: u64, issued: u64) -> String {
    let keys = digue::admission::keys_from_file(secret).expect("a readable secret");
    digue::admission::token::Ticket {
        site: site.to_owned(),
        number,
        issued,
        eta: 0,
    }
    .encode(&keys)
}
