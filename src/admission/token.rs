//! Signed tickets and passes: cookies that carry only a site, a number and
//! times, authenticated with HMAC-SHA256 so they cannot be forged, advanced
//! or moved to another site. No personal data, no server-side session:
//! any node holding the key can check them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of MAC kept in a cookie: 128 bits are far beyond guessing.
const TAG_BYTES: usize = 16;
/// Shortest secret accepted.
pub const MIN_SECRET_BYTES: usize = 16;

/// The signing keys: new tokens use `current`; tokens signed with
/// `previous` still verify during a rotation.
#[derive(Clone)]
pub struct Keys {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    pub fn new(current: Vec<u8>, previous: Option<Vec<u8>>) -> Keys {
        Keys { current, previous }
    }

    /// A key nobody else has: tokens die with the process. For a single
    /// node without `DIGUE_SECRET`; the caller warns about it.
    pub fn ephemeral() -> Keys {
        use std::io::Read;
        let mut key = [0_u8; 32];
        let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
        if from_os.is_err() {
            // No /dev/urandom: fall back on the std hasher's random seed.
            for chunk in key.chunks_mut(8) {
                chunk.copy_from_slice(&crate::clock::entropy().to_le_bytes());
            }
        }
        Keys::new(key.to_vec(), None)
    }

    fn mac(key: &[u8], payload: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(key).expect("invariant: HMAC takes any key length");
        mac.update(payload);
        mac
    }

    /// A key for `purpose`, derived from the current secret: the same on
    /// every node that shares it, and across restarts (the event draw's
    /// key, `admission::draw`).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        Keys::mac(&self.current, purpose.as_bytes())
            .finalize()
            .into_bytes()
            .into()
    }

    /// `payload.tag`, both base64url.
    pub fn sign(&self, payload: &str) -> String {
        let tag = Keys::mac(&self.current, payload.as_bytes())
            .finalize()
            .into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES])
        )
    }

    /// The payload of a token signed with either key; `None` if forged or garbled.
    pub fn verify(&self, token: &str) -> Option<String> {
        let (payload, tag) = token.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        if tag.len() != TAG_BYTES {
            return None;
        }
        let ok = |key: &[u8]| Keys::mac(key, &payload).verify_truncated_left(&tag).is_ok();
        let valid = ok(&self.current) || self.previous.as_deref().is_some_and(ok);
        valid.then(|| String::from_utf8(payload).ok()).flatten()
    }
}

/// A place in a site's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub site: String,
    pub number: u64,
    /// When it was issued (Unix seconds), for the wait actually spent.
    pub issued: u64,
    /// The wait predicted at issue (seconds), to measure the ETA's error.
    pub eta: u64,
}

/// A place in an event's pre-queue: the `number`-th (from 0) to join it.
/// Its place in the line comes from the draw at the opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreTicket {
    pub site: String,
    /// The event's name (a-z, 0-9, '-', '_': never a `|`).
    pub event: String,
    pub number: u64,
    /// When it was issued (Unix seconds).
    pub issued: u64,
}

/// The right to enter a site's gated paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub site: String,
    /// A random or counter value: tells passes apart for `max_active_users`.
    pub id: u64,
    /// Last renewal (Unix seconds); the pass dies `session_duration` after it.
    pub seen: u64,
}

/// The numbers of a verified token of `kind` (`t` or `p`) for `site`:
/// `None` when forged, garbled, of another kind or another site's.
fn numbers<const N: usize>(keys: &Keys, kind: &str, site: &str, token: &str) -> Option<[u64; N]> {
    let payload = keys.verify(token)?;
    let mut parts = payload.split('|');
    (parts.next()? == kind && parts.next()? == site).then_some(())?;
    let mut out = [0; N];
    for slot in &mut out {
        *slot = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl Ticket {
    pub fn encode(&self, keys: &Keys) -> String {
        keys.sign(&format!(
            "t|{}|{}|{}|{}",
            self.site, self.number, self.issued, self.eta
        ))
    }

    /// A ticket of `site`, or `None` when forged, garbled or another site's.
    pub fn decode(keys: &Keys, site: &str, token: &str) -> Option<Ticket> {
        let [number, issued, eta] = numbers(keys, "t", site, token)?;
        Some(Ticket {
            site: site.to_owned(),
            number,
            issued,
            eta,
        })
    }
}

impl PreTicket {
    pub fn encode(&self, keys: &Keys) -> String {
        keys.sign(&format!(
            "e|{}|{}|{}|{}",
            self.site, self.event, self.number, self.issued
        ))
    }

    /// A pre-queue ticket of `site`, or `None` when forged, garbled or
    /// another site's.
    pub fn decode(keys: &Keys, site: &str, token: &str) -> Option<PreTicket> {
        let payload = keys.verify(token)?;
        let mut parts = payload.split('|');
        (parts.next()? == "e" && parts.next()? == site).then_some(())?;
        let event = parts.next()?.to_owned();
        let number = parts.next()?.parse().ok()?;
        let issued = parts.next()?.parse().ok()?;
        parts.next().is_none().then_some(PreTicket {
            site: site.to_owned(),
            event,
            number,
            issued,
        })
    }
}

impl Pass {
    pub fn encode(&self, keys: &Keys) -> String {
        keys.sign(&format!("p|{}|{}|{}", self.site, self.id, self.seen))
    }

    /// A pass of `site`, or `None` when forged, garbled or another site's.
    /// Expiry is the caller's check (it knows `session_duration`).
    pub fn decode(keys: &Keys, site: &str, token: &str) -> Option<Pass> {
        let [id, seen] = numbers(keys, "p", site, token)?;
        Some(Pass {
            site: site.to_owned(),
            id,
            seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &str) -> Keys {
        Keys::new(k.as_bytes().to_vec(), None)
    }

    #[test]
    fn a_ticket_round_trips_and_a_tampered_one_is_worthless() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let t = Ticket {
            site: "pronote".into(),
            number: 42,
            issued: 1_700_000_000,
            eta: 90,
        };
        let token = t.encode(&k);
        assert_eq!(Ticket::decode(&k, "pronote", &token), Some(t));
        let (payload, tag) = token.split_once('.').expect("two parts");
        let forged_payload = URL_SAFE_NO_PAD.encode("t|pronote|1|1700000000|90");
        assert_eq!(
            Ticket::decode(&k, "pronote", &format!("{forged_payload}.{tag}")),
            None
        );
        let mut bad_tag = tag.to_owned();
        bad_tag.replace_range(0..1, if tag.starts_with('A') { "B" } else { "A" });
        assert_eq!(
            Ticket::decode(&k, "pronote", &format!("{payload}.{bad_tag}")),
            None
        );
        assert_eq!(
            Ticket::decode(&k, "ent", &token),
            None,
            "another site's ticket"
        );
        assert_eq!(
            Ticket::decode(&keys("another key, another node!"), "pronote", &token),
            None
        );
        assert_eq!(Ticket::decode(&k, "pronote", "garbage"), None);
    }

    #[test]
    fn a_pre_queue_ticket_round_trips_and_is_neither_a_ticket_nor_another_sites() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let t = PreTicket {
            site: "pronote".into(),
            event: "rentree".into(),
            number: 7,
            issued: 1_700_000_000,
        };
        let token = t.encode(&k);
        assert_eq!(PreTicket::decode(&k, "pronote", &token), Some(t));
        assert_eq!(PreTicket::decode(&k, "ent", &token), None);
        assert_eq!(Ticket::decode(&k, "pronote", &token), None);
        assert_ne!(k.derive("a"), k.derive("b"));
        assert_eq!(
            k.derive("a"),
            keys("0123456789abcdef0123456789abcdef").derive("a")
        );
    }

    #[test]
    fn a_pass_is_not_a_ticket() {
        let k = keys("0123456789abcdef");
        let p = Pass {
            site: "s".into(),
            id: 7,
            seen: 10,
        };
        let token = p.encode(&k);
        assert_eq!(Pass::decode(&k, "s", &token), Some(p));
        assert_eq!(Ticket::decode(&k, "s", &token), None);
    }

    #[test]
    fn tokens_of_the_previous_key_verify_during_a_rotation() {
        let old = keys("the old secret, 16+ bytes");
        let t = Ticket {
            site: "s".into(),
            number: 3,
            issued: 1,
            eta: 0,
        };
        let token = t.encode(&old);
        let rotated = Keys::new(
            b"the new secret, 16+ bytes".to_vec(),
            Some(b"the old secret, 16+ bytes".to_vec()),
        );
        assert_eq!(Ticket::decode(&rotated, "s", &token), Some(t.clone()));
        let fresh = t.encode(&rotated);
        assert_eq!(
            Ticket::decode(&old, "s", &fresh),
            None,
            "new tokens use the new key"
        );
        let after = Keys::new(b"the new secret, 16+ bytes".to_vec(), None);
        assert_eq!(Ticket::decode(&after, "s", &token), None, "old key retired");
    }

    #[test]
    fn ephemeral_keys_differ() {
        let a = Ticket {
            site: "s".into(),
            number: 1,
            issued: 1,
            eta: 0,
        }
        .encode(&Keys::ephemeral());
        assert_eq!(Ticket::decode(&Keys::ephemeral(), "s", &a), None);
    }

    /// Generated tokens: decoding never panics, nothing but the key makes a
    /// valid token, and what is signed comes back.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        const KEY: &str = "the key of this node, 16+ bytes";

        /// A site name as the config accepts it.
        const SITE: &str = "[a-z0-9_-]{1,64}";

        /// Strings shaped like tokens (base64url, a dot), or anything.
        fn token_like() -> impl Strategy<Value = String> {
            prop_oneof![
                "[A-Za-z0-9_-]{0,48}\\.[A-Za-z0-9_-]{0,24}",
                "[A-Za-z0-9_.|=+/-]{0,80}",
                any::<String>(),
            ]
        }

        fn ticket() -> impl Strategy<Value = Ticket> {
            (SITE, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(site, number, issued, eta)| Ticket {
                    site,
                    number,
                    issued,
                    eta,
                },
            )
        }

        fn pass() -> impl Strategy<Value = Pass> {
            (SITE, any::<u64>(), any::<u64>()).prop_map(|(site, id, seen)| Pass { site, id, seen })
        }

        proptest! {
            #[test]
            fn decoding_any_string_never_panics_nor_yields_a_token(
                token in token_like(),
                site in SITE,
            ) {
                let k = keys(KEY);
                prop_assert_eq!(Ticket::decode(&k, &site, &token), None);
                prop_assert_eq!(Pass::decode(&k, &site, &token), None);
            }

            #[test]
            fn a_well_formed_payload_with_a_guessed_tag_is_worthless(
                t in ticket(),
                tag in prop::collection::vec(any::<u8>(), TAG_BYTES),
            ) {
                let payload = format!("t|{}|{}|{}|{}", t.site, t.number, t.issued, t.eta);
                let forged = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(payload),
                    URL_SAFE_NO_PAD.encode(tag)
                );
                prop_assert_eq!(Ticket::decode(&keys(KEY), &t.site, &forged), None);
            }

            #[test]
            fn tickets_and_passes_round_trip_under_their_key_only(
                t in ticket(),
                p in pass(),
                other in SITE,
            ) {
                let k = keys(KEY);
                let stranger = keys("another node's key, 16+ bytes");
                let token = t.encode(&k);
                prop_assert_eq!(Ticket::decode(&k, &t.site, &token), Some(t.clone()));
                prop_assert_eq!(Ticket::decode(&stranger, &t.site, &token), None);
                prop_assert_eq!(Pass::decode(&k, &t.site, &token), None, "a ticket is no pass");
                if other != t.site {
                    prop_assert_eq!(Ticket::decode(&k, &other, &token), None);
                }
                let token = p.encode(&k);
                prop_assert_eq!(Pass::decode(&k, &p.site, &token), Some(p.clone()));
                prop_assert_eq!(Pass::decode(&stranger, &p.site, &token), None);
                prop_assert_eq!(Ticket::decode(&k, &p.site, &token), None, "a pass is no ticket");
            }

            #[test]
            fn changing_any_one_character_of_a_token_makes_it_worthless(
                t in ticket(),
                at in any::<prop::sample::Index>(),
                with in "[A-Za-z0-9_.-]",
            ) {
                let k = keys(KEY);
                let token = t.encode(&k);
                let i = at.index(token.len());
                prop_assume!(token[i..=i] != with);
                let mut tampered = token.clone();
                tampered.replace_range(i..=i, &with);
                prop_assert_eq!(Ticket::decode(&k, &t.site, &tampered), None, "{}", tampered);
            }
        }
    }
}
