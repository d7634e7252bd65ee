//! Access tokens: HS256 JWTs naming one room, one identity, an expiry and grants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use crate::SignalingError;

pub use huddle_protocol::Grants;

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Identity.
    pub sub: String,
    /// Display name.
    pub name: String,
    /// The one room this token admits to.
    pub room: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// Grants.
    #[serde(default)]
    pub grants: Grants,
}

/// The default longest time ahead a token's `exp` may be: 30 days.
pub const DEFAULT_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 86_400);

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Invite links are signed with a key derived from the secret, so that an invite is never
    /// accepted as an access token (nor the reverse).
    invite_encoding: EncodingKey,
    invite_decoding: DecodingKey,
    /// The longest time ahead of now an accepted token's `exp` may be.
    max_lifetime: Duration,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<secret>)")
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKeys {
    /// Keys from the shared secret.
    pub fn new(secret: &[u8]) -> Self {
        let invite = [secret, b"\0huddle-invite-v1"].concat();
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            invite_encoding: EncodingKey::from_secret(&invite),
            invite_decoding: DecodingKey::from_secret(&invite),
            max_lifetime: DEFAULT_MAX_TOKEN_LIFETIME,
        }
    }

    /// Accepts only tokens whose `exp` is at most `max` ahead (default
    /// [`DEFAULT_MAX_TOKEN_LIFETIME`]).
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    /// The longest time ahead an accepted token's `exp` may be.
    pub fn max_lifetime(&self) -> Duration {
        self.max_lifetime
    }

    /// Signs a token for `identity` in `room`, valid for `ttl`.
    pub fn issue(
        &self,
        room: &str,
        identity: &str,
        name: &str,
        grants: Grants,
        ttl: Duration,
    ) -> Result<String, SignalingError> {
        let now = unix_now();
        let claims = Claims {
            sub: identity.to_string(),
            name: name.to_string(),
            room: room.to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
            grants,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(SignalingError::from)
    }

    /// Verifies signature, algorithm, expiry and `nbf` (no leeway), and the claims: `sub` not
    /// blank, `room` a room name ([`valid_room_name`]: the operator's application signs
    /// tokens too, and a room's name becomes a directory), `exp` at most
    /// [`TokenKeys::max_lifetime`] ahead. The display name comes back
    /// cleaned like a guest's ([`crate::text::clean_name`]).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        let mut claims = match decode::<Claims>(token, &self.decoding, &v) {
            Ok(data) => data.claims,
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => {
                return Err(TokenError::Expired)
            }
            Err(e) if matches!(e.kind(), ErrorKind::ImmatureSignature) => {
                return Err(TokenError::NotYetValid)
            }
            Err(_) => return Err(TokenError::Invalid),
        };
        if claims.sub.trim().is_empty() || !valid_room_name(&claims.room) {
            return Err(TokenError::Invalid);
        }
        if claims.exp > unix_now().saturating_add(self.max_lifetime.as_secs()) {
            return Err(TokenError::TooLong);
        }
        claims.name = crate::text::clean_name(&claims.name);
        Ok(claims)
    }
}

impl TokenKeys {
    /// Signs an invite for `room`, valid for `ttl`: `POST /api/token` exchanges it for a guest
    /// token of that room even where open joining is off. Returns the invite and its expiry.
    pub fn issue_invite(&self, room: &str, ttl: Duration) -> Result<(String, u64), SignalingError> {
        let now = unix_now();
        let claims = Claims {
            sub: "invite".to_string(),
            name: String::new(),
            room: room.to_string(),
            iat: now,
            exp: now + ttl.as_secs(),
            grants: Grants::default(),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.invite_encoding,
        )
        .map(|t| (t, claims.exp))
        .map_err(SignalingError::from)
    }

    /// Checks an invite's signature and expiry; returns the room it admits to.
    pub fn verify_invite(&self, invite: &str) -> Result<String, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        match decode::<Claims>(invite, &self.invite_decoding, &v) {
            Ok(data) if data.claims.sub == "invite" => Ok(data.claims.room),
            Ok(_) => Err(TokenError::Invalid),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(TokenError::Expired),
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, format, algorithm or claims.
    #[error("the access token is not valid")]
    Invalid,
    /// Past its expiry.
    #[error("the access token has expired")]
    Expired,
    /// Its `nbf` (not before) is in the future.
    #[error("the access token is not valid yet")]
    NotYetValid,
    /// Its `exp` is further ahead than this server accepts (`auth.max_token_lifetime_secs`).
    #[error("the access token's expiry is further ahead than this server accepts")]
    TooLong,
}

/// Room names: 1 to 64 of `A-Z a-z 0-9 - _ .`, not starting with a dot. A room's name is a
/// directory of the data directory (its uploaded files): `.` and `..` would name the files
/// directory itself and the data directory, and `.tmp` the uploads in progress.
pub fn valid_room_name(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 64
        && !room.starts_with('.')
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips() {
        let k = TokenKeys::new(b"secret");
        let t = k
            .issue(
                "room",
                "alice",
                "Alice",
                Grants::default(),
                Duration::from_secs(60),
            )
            .unwrap();
        let c = k.verify(&t).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.room.as_str(), c.name.as_str()),
            ("alice", "room", "Alice")
        );
        assert!(c.grants.publish && !c.grants.admin);
    }

    #[test]
    fn forged_tokens_are_invalid() {
        let t = TokenKeys::new(b"other")
            .issue("room", "a", "A", Grants::default(), Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            TokenKeys::new(b"secret").verify(&t),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            TokenKeys::new(b"secret").verify("not.a.jwt"),
            Err(TokenError::Invalid)
        );
        // alg=none with the same claims must not pass.
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            base64_url(
                format!(
                    r#"{{"sub":"a","name":"A","room":"room","exp":{},"iat":0}}"#,
                    unix_now() + 60
                )
                .as_bytes()
            )
        );
        assert_eq!(
            TokenKeys::new(b"secret").verify(&none),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn expired_tokens_are_expired() {
        let k = TokenKeys::new(b"secret");
        let claims = Claims {
            sub: "a".into(),
            name: "A".into(),
            room: "r".into(),
            exp: unix_now() - 5,
            iat: unix_now() - 65,
            grants: Grants::default(),
        };
        let t = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(k.verify(&t), Err(TokenError::Expired));
    }

    fn signed(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap()
    }

    #[test]
    fn a_future_nbf_is_not_valid_yet() {
        let k = TokenKeys::new(b"secret");
        let now = unix_now();
        let t = signed(serde_json::json!({
            "sub": "a", "name": "A", "room": "r", "exp": now + 600, "iat": now, "nbf": now + 300
        }));
        assert_eq!(k.verify(&t), Err(TokenError::NotYetValid));
        let t = signed(serde_json::json!({
            "sub": "a", "name": "A", "room": "r", "exp": now + 600, "iat": now, "nbf": now - 1
        }));
        assert!(k.verify(&t).is_ok());
    }

    #[test]
    fn an_expiry_too_far_ahead_is_refused() {
        let k = TokenKeys::new(b"secret");
        let now = unix_now();
        let max = DEFAULT_MAX_TOKEN_LIFETIME.as_secs();
        for exp in [u64::MAX, now + max + 60] {
            let t = signed(serde_json::json!({
                "sub": "a", "name": "A", "room": "r", "exp": exp, "iat": now
            }));
            assert_eq!(k.verify(&t), Err(TokenError::TooLong), "exp {exp}");
        }
        let t = signed(serde_json::json!({
            "sub": "a", "name": "A", "room": "r", "exp": now + max - 60, "iat": now
        }));
        assert!(k.verify(&t).is_ok());
        let short = TokenKeys::new(b"secret").with_max_lifetime(Duration::from_secs(60));
        assert_eq!(short.verify(&t), Err(TokenError::TooLong));
    }

    #[test]
    fn a_blank_identity_is_refused() {
        let k = TokenKeys::new(b"secret");
        let now = unix_now();
        for sub in ["", "   "] {
            let t = signed(serde_json::json!({
                "sub": sub, "name": "A", "room": "r", "exp": now + 60, "iat": now
            }));
            assert_eq!(k.verify(&t), Err(TokenError::Invalid), "{sub:?}");
        }
    }

    #[test]
    fn names_in_tokens_are_cleaned_and_capped() {
        let k = TokenKeys::new(b"secret");
        let now = unix_now();
        let name = format!("\u{202E}Eve\u{0}{}", "x".repeat(10_000));
        let t = signed(serde_json::json!({
            "sub": "eve", "name": name, "room": "r", "exp": now + 60, "iat": now
        }));
        let c = k.verify(&t).unwrap();
        assert!(c.name.starts_with("Evex"), "{:?}", &c.name[..10]);
        assert_eq!(c.name.chars().count(), crate::text::MAX_NAME_CHARS);
    }

    #[test]
    fn room_names() {
        assert!(valid_room_name("team-standup_2.0"));
        assert!(valid_room_name("a..b"));
        for bad in [
            "",
            "a b",
            "x/y",
            "<script>",
            &"a".repeat(65),
            ".",
            "..",
            ".tmp",
            ".x",
        ] {
            assert!(!valid_room_name(bad), "{bad}");
        }
    }

    fn base64_url(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn invites_are_not_access_tokens_and_expire() {
        let k = TokenKeys::new(b"secret");
        let (invite, exp) = k.issue_invite("room-1", Duration::from_secs(60)).unwrap();
        assert!(exp > unix_now());
        assert_eq!(k.verify_invite(&invite).unwrap(), "room-1");
        // Signed with another key: an invite is no access token, an access token no invite.
        assert!(matches!(k.verify(&invite), Err(TokenError::Invalid)));
        let access = k
            .issue(
                "room-1",
                "alice",
                "Alice",
                Grants::default(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(k.verify_invite(&access), Err(TokenError::Invalid));
        assert_eq!(
            TokenKeys::new(b"other").verify_invite(&invite),
            Err(TokenError::Invalid)
        );
        let (old, _) = k.issue_invite("room-1", Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(k.verify_invite(&old), Err(TokenError::Expired));
    }
}
