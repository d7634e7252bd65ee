//! Huddle's configuration: one tree, read from built-in defaults, then a TOML file, then
//! `HUDDLE_*` environment variables, then command-line flags (later wins).
//! `docs/configuration.md` lists every key.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The top-level keys of [`Config`], for telling configuration variables from other `HUDDLE_*`
/// ones. A test checks it against the struct.
pub const CONFIG_KEYS: &[&str] = &[
    "data_dir",
    "server",
    "auth",
    "media",
    "signaling",
    "log",
    "ice",
    "turn",
];

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the generated secret and the chat database live. Default `./huddle-data`.
    pub data_dir: PathBuf,
    /// HTTP and WebSocket server.
    pub server: ServerConfig,
    /// Access tokens.
    pub auth: AuthConfig,
    /// The SFU.
    pub media: MediaSection,
    /// Signaling limits.
    pub signaling: SignalingSection,
    /// Logging.
    pub log: LogConfig,
    /// What participants are told about STUN and TURN.
    pub ice: IceSection,
    /// The bundled TURN server (see `turn-server/`): every key of `huddle_turn::TurnConfig`.
    /// `listen` and `tls_listen` default to port 3478 and 5349 on `media.bind_ip`; `secret`
    /// defaults to one derived from the token secret; `media_addrs` is always filled in with
    /// this node's media sockets.
    pub turn: huddle_turn::TurnConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("huddle-data"),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            media: MediaSection::default(),
            signaling: SignalingSection::default(),
            log: LogConfig::default(),
            ice: IceSection::default(),
            turn: huddle_turn::TurnConfig::default(),
        }
    }
}

/// `[ice]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IceSection {
    /// Run the bundled TURN server and hand its URLs with fresh credentials to every
    /// participant. Default true.
    pub turn: bool,
    /// Lifetime of the TURN credentials handed out at join, seconds. Default 86400.
    pub credential_ttl_secs: u64,
    /// Host name or IP put in the STUN/TURN URLs. Default: `media.public_ip`, else the TURN
    /// listener's IP, else `media.bind_ip`.
    pub host: Option<String>,
}

impl Default for IceSection {
    fn default() -> Self {
        IceSection {
            turn: true,
            credential_ttl_secs: 86400,
            host: None,
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the HTTP/WebSocket listener. Default `127.0.0.1:8080`. Port 0 picks a free port.
    pub bind: SocketAddr,
    /// PEM certificate chain: serve HTTPS/WSS. Default: none (plain HTTP).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate generated at start (for a LAN; browsers warn
    /// once). Ignored when `tls_cert` is set. Default false.
    pub tls_self_signed: bool,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) may take: joins are refused at once, every
    /// participant is told `leave` with `server_shutdown`, and the process exits when their
    /// sockets have closed or this time is up. Default 10.
    pub drain_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            drain_secs: 10,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Token signing secret. Prefer `secret_file` or the `HUDDLE_AUTH__SECRET` environment
    /// variable. Default: none (a secret is generated into `data_dir/secret.key`).
    pub secret: Option<String>,
    /// File holding the token signing secret (its whitespace-trimmed contents).
    pub secret_file: Option<PathBuf>,
    /// Whether `/api/token` mints guest tokens for anyone (the local default, true). Set false
    /// in production so that only your application's tokens admit anyone.
    pub open_join: bool,
    /// Lifetime of guest tokens, seconds. Default 3600.
    pub guest_token_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: None,
            secret_file: None,
            open_join: true,
            guest_token_ttl_secs: 3600,
        }
    }
}

/// `[media]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    /// Address the media UDP sockets bind to. Default `127.0.0.1`.
    pub bind_ip: IpAddr,
    /// First UDP port; worker i uses port + i. 0 picks free ports. Default 50000.
    pub port: u16,
    /// Media worker threads (one UDP socket each). 0 means one per core. Default 0.
    pub workers: usize,
    /// Address advertised to clients when it differs from `bind_ip` (1:1 NAT, or bind 0.0.0.0).
    pub public_ip: Option<IpAddr>,
}

impl Default for MediaSection {
    fn default() -> Self {
        MediaSection {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            port: 50000,
            workers: 0,
            public_ip: None,
        }
    }
}

/// `[signaling]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingSection {
    /// Largest signaling message answered normally, bytes. Default 65536.
    pub max_message_bytes: usize,
    /// Participants per room. Default 50.
    pub max_participants: usize,
    /// Seconds of silence before a socket is closed. Default 45.
    pub idle_timeout_secs: u64,
    /// Longest chat message, characters. Default 2000.
    pub chat_max_chars: usize,
}

impl Default for SignalingSection {
    fn default() -> Self {
        SignalingSection {
            max_message_bytes: 64 * 1024,
            max_participants: 50,
            idle_timeout_secs: 45,
            chat_max_chars: 2000,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"text"` (default) or `"json"`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `"info,huddle_media=debug"`. Default `"info"`. `RUST_LOG` wins.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// Loads defaults, then the file (if any), then `HUDDLE_*` variables (`__` separates sections:
/// `HUDDLE_MEDIA__PUBLIC_IP`), then `overrides` (from flags).
pub fn load(
    file: Option<&std::path::Path>,
    overrides: Figment,
) -> Result<Config, Box<figment::Error>> {
    // Every section has `#[serde(default)]`: keys absent everywhere take their defaults.
    let mut fig = Figment::new();
    if let Some(f) = file {
        if !f.exists() {
            return Err(Box::new(figment::Error::from(format!(
                "config file {} does not exist",
                f.display()
            ))));
        }
        fig = fig.merge(Toml::file(f));
    }
    // Only variables that name a section or key of Config are configuration: other HUDDLE_*
    // variables (HUDDLE_CONFIG for the file, a test's HUDDLE_BIN) are someone else's.
    let env = Env::prefixed("HUDDLE_").filter(|key| {
        let top = key.as_str().split("__").next().unwrap_or_default();
        CONFIG_KEYS.iter().any(|k| top.eq_ignore_ascii_case(k))
    });
    fig.merge(env.split("__"))
        .merge(overrides)
        .extract()
        .map_err(Box::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_name_every_section() {
        // Each listed key is accepted, and an unlisted one is refused by the struct.
        for key in CONFIG_KEYS {
            let toml = if *key == "data_dir" {
                "data_dir = \"x\"".to_string()
            } else {
                format!("[{key}]")
            };
            let fig = Figment::new().merge(Toml::string(&toml));
            assert!(fig.extract::<Config>().is_ok(), "{key}");
        }
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config.rs")).unwrap();
        let start = text.find("pub struct Config {").unwrap();
        let body = &text[start..start + text[start..].find("\n}").unwrap()];
        let fields = body
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub "))
            .filter_map(|l| l.split(':').next())
            .filter(|f| !f.starts_with("struct"));
        for f in fields {
            assert!(CONFIG_KEYS.contains(&f), "CONFIG_KEYS lacks {f}");
        }
    }

    #[test]
    fn defaults_are_local_and_open() {
        let c = load(None, Figment::new()).unwrap();
        assert!(c.server.bind.ip().is_loopback());
        assert!(c.auth.open_join);
    }

    #[test]
    fn a_bad_key_is_named() {
        let dir = std::env::temp_dir().join(format!("huddle-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "[media]\nbind_ipp = \"0.0.0.0\"\n").unwrap();
        let err = load(Some(&f), Figment::new()).unwrap_err().to_string();
        assert!(err.contains("bind_ipp"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("huddle-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ok.toml");
        std::fs::write(&f, "[auth]\nopen_join = false\n[media]\nport = 40000\n").unwrap();
        let over =
            Figment::new().merge(figment::providers::Serialized::default("media.port", 41000));
        let c = load(Some(&f), over).unwrap();
        assert!(!c.auth.open_join);
        assert_eq!(c.media.port, 41000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
