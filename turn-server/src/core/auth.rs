//! Long-term credentials (RFC 5389 §10.2): static users, the TURN REST API
//! scheme, stateless nonces and MESSAGE-INTEGRITY checking.

use std::collections::HashMap;
use std::net::IpAddr;

use base64::prelude::{Engine, BASE64_STANDARD};
use md5::{Digest, Md5};
use ring::hmac;

/// The MD5 long-term key `MD5(username ":" realm ":" password)`.
pub(crate) type Key = [u8; 16];

pub(crate) fn long_term_key(username: &str, realm: &str, password: &str) -> Key {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// `base64(HMAC-SHA1(secret, username))`, the REST API password.
pub(crate) fn rest_password(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    BASE64_STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

/// What a USERNAME resolves to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Known and valid: the key, and the identity quotas are counted on.
    Found { key: Key, identity: String },
    /// Not a static user and not a REST username (or no secret configured).
    Unknown,
    /// A REST username whose expiry is in the past.
    Expired,
}

pub(crate) struct Credentials {
    realm: String,
    secret: Option<Vec<u8>>,
    users: HashMap<String, Key>,
}

impl Credentials {
    pub(crate) fn new(realm: &str, secret: Option<&str>, users: &[(String, String)]) -> Self {
        Credentials {
            realm: realm.to_owned(),
            secret: secret
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec()),
            users: users
                .iter()
                .map(|(u, p)| (u.clone(), long_term_key(u, realm, p)))
                .collect(),
        }
    }

    /// Resolves `username` at `unix_now` (seconds). Static users first, then
    /// the REST scheme: `expiry:identity` (coturn also accepts
    /// `identity:expiry`, and a bare `expiry`).
    pub(crate) fn lookup(&self, username: &str, unix_now: u64) -> Lookup {
        if let Some(key) = self.users.get(username) {
            return Lookup::Found {
                key: *key,
                identity: username.to_owned(),
            };
        }
        let Some(secret) = &self.secret else {
            return Lookup::Unknown;
        };
        let Some((expiry, identity)) = parse_rest_username(username) else {
            return Lookup::Unknown;
        };
        if expiry < unix_now {
            return Lookup::Expired;
        }
        let password = rest_password(secret, username);
        Lookup::Found {
            key: long_term_key(username, &self.realm, &password),
            identity: identity.to_owned(),
        }
    }
}

/// Splits a REST username into (expiry, identity). The identity of a bare
/// timestamp is the timestamp itself.
fn parse_rest_username(username: &str) -> Option<(u64, &str)> {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match username.split_once(':') {
        None if all_digits(username) => Some((username.parse().ok()?, username)),
        None => None,
        Some((ts, id)) if all_digits(ts) => Some((ts.parse().ok()?, id)),
        Some(_) => {
            let (id, ts) = username.rsplit_once(':')?;
            all_digits(ts).then_some(())?;
            Some((ts.parse().ok()?, id))
        }
    }
}

/// Stateless nonces: `hex(expiry) || hex(HMAC(key, expiry || client ip)[..8])`.
pub(crate) struct Nonces {
    key: hmac::Key,
    lifetime_secs: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    Valid,
    /// Expired, forged, or issued to another address: answer 438.
    Stale,
}

impl Nonces {
    pub(crate) fn new(secret: &[u8], lifetime_secs: u64) -> Self {
        Nonces {
            key: hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret),
            lifetime_secs,
        }
    }

    fn mac(&self, expiry: u64, ip: IpAddr) -> [u8; 8] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&expiry.to_be_bytes());
        match ip {
            IpAddr::V4(v4) => ctx.update(&v4.octets()),
            IpAddr::V6(v6) => ctx.update(&v6.octets()),
        }
        let tag = ctx.sign();
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag.as_ref()[..8]);
        out
    }

    pub(crate) fn issue(&self, ip: IpAddr, unix_now: u64) -> String {
        let expiry = unix_now + self.lifetime_secs;
        let mut s = format!("{expiry:016x}");
        for b in self.mac(expiry, ip) {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub(crate) fn check(&self, nonce: &str, ip: IpAddr, unix_now: u64) -> NonceCheck {
        if nonce.len() != 32 || !nonce.is_ascii() {
            return NonceCheck::Stale;
        }
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return NonceCheck::Stale;
        };
        let mut mac = [0u8; 8];
        for (i, m) in mac.iter_mut().enumerate() {
            match u8::from_str_radix(&nonce[16 + 2 * i..18 + 2 * i], 16) {
                Ok(b) => *m = b,
                Err(_) => return NonceCheck::Stale,
            }
        }
        // Constant-time comparison of the tag.
        let expected = self.mac(expiry, ip);
        let diff = expected
            .iter()
            .zip(mac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 || expiry < unix_now {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }
}

/// Checks the MESSAGE-INTEGRITY of the STUN message `raw` (exactly one
/// message, header included) with `key`. False when absent or malformed.
pub(crate) fn verify_integrity(raw: &[u8], key: &[u8]) -> bool {
    if raw.len() < 20 {
        return false;
    }
    let len = u16::from_be_bytes([raw[2], raw[3]]) as usize;
    let end = 20 + len;
    if raw.len() < end {
        return false;
    }
    let mut off = 20;
    while off + 4 <= end {
        let typ = u16::from_be_bytes([raw[off], raw[off + 1]]);
        let alen = u16::from_be_bytes([raw[off + 2], raw[off + 3]]) as usize;
        if typ == 0x0008 {
            if alen != 20 || off + 24 > end {
                return false;
            }
            let tag = &raw[off + 4..off + 24];
            let mut msg = raw[..off].to_vec();
            let adjusted = (off + 24 - 20) as u16;
            msg[2..4].copy_from_slice(&adjusted.to_be_bytes());
            let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
            return hmac::verify(&k, &msg, tag).is_ok();
        }
        off += 4 + alen.div_ceil(4) * 4;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn rest_password_matches_coturn_formula() {
        // HMAC-SHA1("secret", "1700000000:alice") computed independently with
        // `printf %s 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64`.
        let p = rest_password(b"secret", "1700000000:alice");
        assert_eq!(p, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_ne!(p, rest_password(b"other", "1700000000:alice"));
    }

    #[test]
    fn rest_usernames_parse_in_both_orders() {
        assert_eq!(parse_rest_username("123:bob"), Some((123, "bob")));
        assert_eq!(parse_rest_username("bob:123"), Some((123, "bob")));
        assert_eq!(parse_rest_username("123"), Some((123, "123")));
        assert_eq!(parse_rest_username("bob"), None);
        assert_eq!(parse_rest_username("bob:x"), None);
        assert_eq!(parse_rest_username(":"), None);
        assert_eq!(parse_rest_username("99999999999999999999999:x"), None);
    }

    #[test]
    fn expired_rest_usernames_are_refused() {
        let c = Credentials::new("r", Some("s"), &[]);
        assert_eq!(c.lookup("100:bob", 101), Lookup::Expired);
        assert!(matches!(c.lookup("100:bob", 100), Lookup::Found { .. }));
        assert_eq!(c.lookup("bob", 1), Lookup::Unknown);
        let none = Credentials::new("r", None, &[("bob".into(), "pw".into())]);
        assert_eq!(none.lookup("100:bob", 1), Lookup::Unknown);
        assert_eq!(
            none.lookup("bob", 1),
            Lookup::Found {
                key: long_term_key("bob", "r", "pw"),
                identity: "bob".into()
            }
        );
    }

    #[test]
    fn nonces_expire_and_are_bound_to_the_client_ip() {
        let n = Nonces::new(b"k", 600);
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let nonce = n.issue(ip, 1000);
        assert_eq!(n.check(&nonce, ip, 1000), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, ip, 1600), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, ip, 1601), NonceCheck::Stale);
        assert_eq!(n.check(&nonce, other, 1000), NonceCheck::Stale);
        assert_eq!(n.check("garbage", ip, 1000), NonceCheck::Stale);
        assert_eq!(
            n.check("é".repeat(16).as_str(), ip, 1000),
            NonceCheck::Stale
        );
    }

    #[test]
    fn verify_integrity_never_panics_on_junk() {
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = verify_integrity(&junk, b"k");
        }
        // An MI attribute with a short length.
        let mut m = vec![0u8; 20];
        m[2..4].copy_from_slice(&4u16.to_be_bytes());
        m.extend_from_slice(&[0, 8, 0, 0]);
        assert!(!verify_integrity(&m, b"k"));
    }
}
