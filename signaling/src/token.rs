//! Access tokens: HS256 JWTs naming one room, one identity, an expiry and grants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use crate::SignalingError;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// May publish microphone and camera.
    #[serde(default = "yes")]
    pub publish: bool,
    /// May receive others' media.
    #[serde(default = "yes")]
    pub subscribe: bool,
    /// May send chat messages.
    #[serde(default = "yes")]
    pub chat: bool,
    /// May moderate the room (admin API).
    #[serde(default)]
    pub admin: bool,
}

fn yes() -> bool {
    true
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            publish: true,
            subscribe: true,
            chat: true,
            admin: false,
        }
    }
}

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

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
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
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
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
            .map_err(|e| SignalingError::Token(e.to_string()))
    }

    /// Verifies signature, algorithm and expiry (no leeway).
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.validate_exp = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        match decode::<Claims>(token, &self.decoding, &v) {
            Ok(data) => Ok(data.claims),
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
}

/// Room names: 1 to 64 of `A-Z a-z 0-9 - _ .`.
pub fn valid_room_name(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 64
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

    #[test]
    fn room_names() {
        assert!(valid_room_name("team-standup_2.0"));
        for bad in ["", "a b", "x/y", "<script>", &"a".repeat(65)] {
            assert!(!valid_room_name(bad), "{bad}");
        }
    }

    fn base64_url(b: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }
}
