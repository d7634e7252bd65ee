//! Huddle's bundled TURN server (RFC 5766 over UDP, TCP and optionally TLS,
//! with the STUN Binding method of RFC 5389 on the same ports).
//!
//! # Shape
//!
//! The server is split the way quinn and str0m split theirs. A sans-IO core
//! holds every allocation, permission, channel binding, credential check and
//! quota as plain state: it is fed what arrived and what time it is, and it
//! answers with datagrams to send and relay sockets to bind or release. It has
//! no sockets, no clock and no tasks, so its unit tests run on virtual time.
//! A thin tokio driver owns the sockets — the UDP and TCP listeners, one UDP
//! relay socket per allocation, TLS when configured — reads them in batches
//! (`recvmmsg`/`sendmmsg` on Linux), and moves bytes in and out of the core
//! under one short lock.
//!
//! # Credentials
//!
//! Long-term credentials only, in two flavours: static users, and coturn's
//! `use-auth-secret` (the "TURN REST API" scheme), where the signaling server
//! hands each participant a username `expiry:identity` and the password
//! `base64(HMAC-SHA1(secret, username))` from [`rest_credentials`]. Requests
//! without credentials get 401 with a REALM and a fresh NONCE; wrong, unknown
//! or expired credentials get 401 as well (and are counted); an old nonce gets
//! 438 Stale Nonce. Nonces are stateless (an expiry and a MAC bound to the
//! client's IP). Secrets and passwords are never logged.
//!
//! # Peers
//!
//! A TURN server is an open relay for anyone with credentials, so the default
//! [`PeerMode::MediaOnly`] lets allocations reach only the node's own SFU
//! sockets ([`TurnConfig::media_addrs`]). [`PeerMode::General`] relays to the
//! public Internet but refuses loopback, private, link-local, multicast and
//! similar ranges unless allow-listed, and the server's own ports.
//!
//! # Using it
//!
//! ```no_run
//! # async fn run() -> Result<(), huddle_turn::TurnError> {
//! use huddle_turn::{TurnConfig, TurnServer};
//! let config = TurnConfig {
//!     secret: Some("shared-with-signaling".into()),
//!     public_ip: Some("203.0.113.10".parse().unwrap()),
//!     media_addrs: vec!["203.0.113.10:50000".parse().unwrap()],
//!     ..TurnConfig::default()
//! };
//! let server = TurnServer::start(config).await?;
//! println!("TURN on {:?}", server.local_addrs());
//! let active = server.stats().snapshot().allocations_active;
//! # let _ = active;
//! server.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod config;
mod core;
mod driver;
#[doc(hidden)]
pub mod fuzzing;
mod stats;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use config::{PeerMode, StaticUser, TurnConfig};
pub use driver::TurnServer;
pub use stats::{TurnStats, TurnStatsSnapshot};

/// The transport between a client and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TURN over UDP.
    Udp,
    /// TURN over TCP (STUN and ChannelData framed on the stream).
    Tcp,
    /// TURN over TLS over TCP.
    Tls,
}

/// Errors of [`TurnServer::start`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// The configuration cannot work; the message names the field.
    #[error("invalid TURN configuration: {0}")]
    Config(String),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// Credentials of the TURN REST API scheme for `identity`, valid for `ttl`
/// from `now`: the username `expiry:identity` (expiry in unix seconds) and the
/// password `base64(HMAC-SHA1(secret, username))`. The signaling server hands
/// these to a participant together with the TURN URLs; `secret` is
/// [`TurnConfig::secret`]. An empty `identity` gives a bare `expiry`.
pub fn rest_credentials(
    secret: &[u8],
    identity: &str,
    ttl: Duration,
    now: SystemTime,
) -> (String, String) {
    let expiry = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .saturating_add(ttl)
        .as_secs();
    let username = if identity.is_empty() {
        expiry.to_string()
    } else {
        format!("{expiry}:{identity}")
    };
    let password = core::rest_password(secret, &username);
    (username, password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_put_the_expiry_first() {
        let now = UNIX_EPOCH + Duration::from_secs(1_699_999_000);
        let (user, pass) = rest_credentials(b"secret", "alice", Duration::from_secs(1000), now);
        assert_eq!(user, "1700000000:alice");
        assert_eq!(pass, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        let (bare, _) = rest_credentials(b"secret", "", Duration::from_secs(1000), now);
        assert_eq!(bare, "1700000000");
    }
}
