//! The server's configuration: one tree with defaults, units in the doc comments.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Which peers an allocation may relay to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerMode {
    /// Relay only to the exact socket addresses in [`TurnConfig::media_addrs`]
    /// (the node's own SFU sockets). Every other CreatePermission, ChannelBind
    /// or Send is refused with 403 Forbidden. The default.
    #[default]
    MediaOnly,
    /// Relay to any public address: loopback, RFC 1918 private, unique-local
    /// (fc00::/7), link-local, multicast, unspecified and broadcast addresses
    /// are refused unless listed in [`TurnConfig::allow_peers`]; ports in
    /// [`TurnConfig::deny_ports`] (and the server's own listening ports) are
    /// always refused.
    General,
}

/// A static long-term credential (`username`, `password`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticUser {
    /// The USERNAME the client sends.
    pub username: String,
    /// The password; never logged.
    pub password: String,
}

impl fmt::Debug for StaticUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Configuration of the TURN server.
///
/// Every field has a default (see [`Default`]); a configuration file only
/// needs the fields it changes. Secrets and passwords are redacted in `Debug`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Addresses to serve TURN and STUN on, each over UDP *and* TCP on the same
    /// port. Port 0 picks a free port (the same one for UDP and TCP); read the
    /// result with [`crate::TurnServer::local_addrs`].
    /// Default: `["0.0.0.0:3478"]`.
    pub listen: Vec<SocketAddr>,
    /// Addresses to serve TURN over TLS on; used only when both
    /// [`tls_cert_pem`](Self::tls_cert_pem) and [`tls_key_pem`](Self::tls_key_pem)
    /// are set. Default: `["0.0.0.0:5349"]`.
    pub tls_listen: Vec<SocketAddr>,
    /// PEM file with the TLS certificate chain. Default: none (no TLS).
    pub tls_cert_pem: Option<PathBuf>,
    /// PEM file with the TLS private key. Default: none (no TLS).
    pub tls_key_pem: Option<PathBuf>,
    /// The realm of the long-term credentials. Default: `"huddle"`.
    pub realm: String,
    /// Shared secret of the TURN REST API scheme (coturn's `use-auth-secret`):
    /// usernames are `expiry:identity` (expiry in unix seconds) and the
    /// password is `base64(HMAC-SHA1(secret, username))`, see
    /// [`crate::rest_credentials`]. Default: none.
    pub secret: Option<String>,
    /// Static users, checked before the REST scheme. Default: none.
    pub users: Vec<StaticUser>,
    /// IP address to bind relay sockets on. Default: none, which means the IP
    /// of the listener the Allocate request came in on (it must then not be an
    /// unspecified address unless `public_ip` is set).
    pub relay_ip: Option<IpAddr>,
    /// IP address advertised in XOR-RELAYED-ADDRESS (the public address of a
    /// server behind 1:1 NAT). Default: none, which advertises the relay IP.
    pub public_ip: Option<IpAddr>,
    /// Lowest relay port. Default: 49152.
    pub min_port: u16,
    /// Highest relay port. Default: 65535.
    pub max_port: u16,
    /// Allocation lifetime when the client asks for less or nothing, seconds.
    /// Default: 600.
    pub default_lifetime_secs: u32,
    /// Longest allocation lifetime granted, seconds. Default: 3600.
    pub max_lifetime_secs: u32,
    /// Permission lifetime, seconds. Default: 300.
    pub permission_lifetime_secs: u32,
    /// Channel binding lifetime, seconds. Default: 600.
    pub channel_lifetime_secs: u32,
    /// How long a NONCE stays valid before requests get 438 Stale Nonce,
    /// seconds. Default: 600.
    pub nonce_lifetime_secs: u32,
    /// Allocations one user (REST identity or static username) may hold at
    /// once. Default: 10.
    pub user_quota: u32,
    /// Allocations the whole server may hold at once. Default: 1000.
    pub total_quota: u32,
    /// Bandwidth cap per allocation, both directions together, bytes per
    /// second (token bucket with a one-second burst); 0 means unlimited.
    /// Default: 0.
    pub max_bytes_per_sec: u64,
    /// Unauthenticated or failing requests accepted per source IP per second
    /// (a token bucket with as many tokens of burst); more are dropped
    /// silently. 0 means unlimited. Default: 20.
    pub unauth_requests_per_sec: u32,
    /// Peer policy. Default: `media_only`.
    pub peer_mode: PeerMode,
    /// The only peers allowed in `media_only` mode (the node's SFU sockets;
    /// the binary fills them in at start-up). Default: empty.
    pub media_addrs: Vec<SocketAddr>,
    /// In `general` mode, networks that are allowed even though they are in a
    /// refused range, e.g. `["127.0.0.0/8"]` for tests. Default: empty.
    pub allow_peers: Vec<IpNet>,
    /// In `general` mode, peer ports that are always refused, on any IP; the
    /// server adds its own listening ports. Default: empty.
    pub deny_ports: Vec<u16>,
    /// SO_RCVBUF and SO_SNDBUF for UDP sockets, bytes (the kernel caps it at
    /// `net.core.rmem_max` / `wmem_max`). Default: 4 MiB.
    pub socket_buffer_bytes: usize,
    /// Most TCP/TLS client connections at once. Default: 4096.
    pub max_tcp_connections: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478);
        TurnConfig {
            listen: vec![any],
            tls_listen: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5349)],
            tls_cert_pem: None,
            tls_key_pem: None,
            realm: "huddle".to_owned(),
            secret: None,
            users: Vec::new(),
            relay_ip: None,
            public_ip: None,
            min_port: 49152,
            max_port: 65535,
            default_lifetime_secs: 600,
            max_lifetime_secs: 3600,
            permission_lifetime_secs: 300,
            channel_lifetime_secs: 600,
            nonce_lifetime_secs: 600,
            user_quota: 10,
            total_quota: 1000,
            max_bytes_per_sec: 0,
            unauth_requests_per_sec: 20,
            peer_mode: PeerMode::MediaOnly,
            media_addrs: Vec::new(),
            allow_peers: Vec::new(),
            deny_ports: Vec::new(),
            socket_buffer_bytes: 4 << 20,
            max_tcp_connections: 4096,
        }
    }
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("listen", &self.listen)
            .field("tls_listen", &self.tls_listen)
            .field("tls_cert_pem", &self.tls_cert_pem)
            .field("tls_key_pem", &self.tls_key_pem)
            .field("realm", &self.realm)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("users", &self.users)
            .field("relay_ip", &self.relay_ip)
            .field("public_ip", &self.public_ip)
            .field("min_port", &self.min_port)
            .field("max_port", &self.max_port)
            .field("default_lifetime_secs", &self.default_lifetime_secs)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .field("permission_lifetime_secs", &self.permission_lifetime_secs)
            .field("channel_lifetime_secs", &self.channel_lifetime_secs)
            .field("nonce_lifetime_secs", &self.nonce_lifetime_secs)
            .field("user_quota", &self.user_quota)
            .field("total_quota", &self.total_quota)
            .field("max_bytes_per_sec", &self.max_bytes_per_sec)
            .field("unauth_requests_per_sec", &self.unauth_requests_per_sec)
            .field("peer_mode", &self.peer_mode)
            .field("media_addrs", &self.media_addrs)
            .field("allow_peers", &self.allow_peers)
            .field("deny_ports", &self.deny_ports)
            .field("socket_buffer_bytes", &self.socket_buffer_bytes)
            .field("max_tcp_connections", &self.max_tcp_connections)
            .finish()
    }
}

impl TurnConfig {
    /// Checks the values that cannot work; the error names the field.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.min_port == 0 || self.min_port > self.max_port {
            return Err(format!(
                "min_port ({}) must be at least 1 and at most max_port ({})",
                self.min_port, self.max_port
            ));
        }
        if self.secret.as_deref().is_none_or(str::is_empty) && self.users.is_empty() {
            return Err("no credentials: set `secret` or `users`".to_owned());
        }
        if self.realm.is_empty() {
            return Err("`realm` must not be empty".to_owned());
        }
        if self.default_lifetime_secs == 0 || self.default_lifetime_secs > self.max_lifetime_secs {
            return Err(
                "default_lifetime_secs must be at least 1 and at most max_lifetime_secs".to_owned(),
            );
        }
        if self.permission_lifetime_secs == 0
            || self.channel_lifetime_secs == 0
            || self.nonce_lifetime_secs == 0
        {
            return Err(
                "permission, channel and nonce lifetimes must be at least 1 second".to_owned(),
            );
        }
        if self.tls_cert_pem.is_some() != self.tls_key_pem.is_some() {
            return Err("set both tls_cert_pem and tls_key_pem, or neither".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secret_and_passwords() {
        let config = TurnConfig {
            secret: Some("s3cr3t-value".into()),
            users: vec![StaticUser {
                username: "alice".into(),
                password: "pa55word".into(),
            }],
            ..TurnConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cr3t-value"), "{text}");
        assert!(!text.contains("pa55word"), "{text}");
        assert!(text.contains("alice"));
    }

    #[test]
    fn defaults_match_the_documentation() {
        let c = TurnConfig::default();
        assert_eq!(c.listen[0].port(), 3478);
        assert_eq!((c.min_port, c.max_port), (49152, 65535));
        assert_eq!(c.default_lifetime_secs, 600);
        assert_eq!(c.max_lifetime_secs, 3600);
        assert_eq!(c.permission_lifetime_secs, 300);
        assert_eq!(c.channel_lifetime_secs, 600);
        assert_eq!((c.user_quota, c.total_quota), (10, 1000));
        assert_eq!(c.max_bytes_per_sec, 0);
        assert_eq!(c.peer_mode, PeerMode::MediaOnly);
        assert_eq!(c.socket_buffer_bytes, 4 << 20);
    }

    #[test]
    fn deserializes_from_a_partial_tree() {
        let c: TurnConfig = serde_json::from_str(
            r#"{"secret": "x", "peer_mode": "general", "allow_peers": ["127.0.0.0/8"],
                "listen": ["127.0.0.1:3478"], "users": [{"username": "u", "password": "p"}]}"#,
        )
        .expect("valid config");
        assert_eq!(c.peer_mode, PeerMode::General);
        assert_eq!(c.allow_peers.len(), 1);
        assert_eq!(c.realm, "huddle", "defaults fill the rest");
        assert!(c.validate().is_ok());
        let typo = serde_json::from_str::<TurnConfig>(r#"{"secrett": "x"}"#);
        assert!(typo.is_err(), "unknown fields are refused");
    }

    #[test]
    fn validate_refuses_a_server_without_credentials() {
        assert!(TurnConfig::default().validate().is_err());
        let ok = TurnConfig {
            secret: Some("x".into()),
            ..TurnConfig::default()
        };
        assert!(ok.validate().is_ok());
    }
}
