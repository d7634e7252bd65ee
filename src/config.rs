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
    "limits",
    "log",
    "ice",
    "turn",
    "api",
    "webhooks",
    "chat",
    "recording",
    "cluster",
];

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Operator limits: rooms, tracks, message rates, connections.
    pub limits: LimitsSection,
    /// Logging.
    pub log: LogConfig,
    /// What participants are told about STUN and TURN.
    pub ice: IceSection,
    /// The bundled TURN server (see `turn-server/`): every key of `huddle_turn::TurnConfig`.
    /// `listen` and `tls_listen` default to port 3478 and 5349 on `media.bind_ip`; `secret`
    /// defaults to one derived from the token secret; `media_addrs` is always filled in with
    /// this node's media sockets.
    pub turn: huddle_turn::TurnConfig,
    /// The room API's credentials.
    pub api: ApiSection,
    /// Webhooks.
    pub webhooks: WebhooksSection,
    /// Chat attachments.
    pub chat: ChatSection,
    /// Recording meetings.
    pub recording: RecordingSection,
    /// Several nodes on one Redis and PostgreSQL (see docs/scaling.md).
    pub cluster: ClusterSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("huddle-data"),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            media: MediaSection::default(),
            signaling: SignalingSection::default(),
            limits: LimitsSection::default(),
            log: LogConfig::default(),
            ice: IceSection::default(),
            turn: huddle_turn::TurnConfig::default(),
            api: ApiSection::default(),
            webhooks: WebhooksSection::default(),
            chat: ChatSection::default(),
            recording: RecordingSection::default(),
            cluster: ClusterSection::default(),
        }
    }
}

/// `[cluster]`: several nodes behind one address, sharing Redis (node registry, room placement)
/// and PostgreSQL (chat history). Off unless `redis_url` is set; then `postgres_url`,
/// `public_url` and an explicit `auth.secret` (or `auth.secret_file`) are required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// `redis://host:6379/0`. Default: none (a single node).
    pub redis_url: Option<String>,
    /// `postgres://user:password@host:5432/huddle`: chat history for every node. Default: none.
    pub postgres_url: Option<String>,
    /// This node's unique name. Default: the host name.
    pub node_id: Option<String>,
    /// Where clients reach this node directly (`https://node1.example.org`); redirects to
    /// rooms on this node name it. Default: none.
    pub public_url: Option<String>,
    /// Region label: rooms opened through this node go to a node of the same region while one
    /// has room. Default: none.
    pub region: Option<String>,
}

/// `[api]`: the room API (`/api/rooms…`). Callers present a JWT signed (HS256) with `secret`,
/// whose `iss` is `key` and whose grants include `admin` (see docs/api.md). Without a key and
/// a secret the room API answers 401.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// The API key: admin tokens carry it as `iss`. Default: none.
    pub key: Option<String>,
    /// The API secret. Prefer `secret_file` or `HUDDLE_API__SECRET`. Default: none.
    pub secret: Option<String>,
    /// File holding the API secret (its whitespace-trimmed contents).
    pub secret_file: Option<PathBuf>,
}

/// `[recording]`: meetings recorded by the SFU into WebM files (see docs/recording.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingSection {
    /// Whether hosts and the room API may record. Default true.
    pub enabled: bool,
    /// Where recordings are kept. Default: `data_dir/recordings`.
    pub path: Option<PathBuf>,
    /// Days a recording is kept after it ended; 0 = forever. Default 30.
    pub retention_days: u64,
    /// Recordings running at once on this node; more are refused. Default 8.
    pub max_active: usize,
}

impl Default for RecordingSection {
    fn default() -> Self {
        RecordingSection {
            enabled: true,
            path: None,
            retention_days: 30,
            max_active: 8,
        }
    }
}

/// `[chat]`: pictures and files in chat, kept in `data_dir/files`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChatSection {
    /// Largest upload, bytes; larger ones get 413. Default 20971520 (20 MiB).
    pub max_upload_bytes: u64,
    /// MIME types accepted, sniffed from the content (`"image/*"` allows a family). Default:
    /// pictures (JPEG, PNG, GIF, WebP), PDF, plain text, ZIP/gzip, MP3/Ogg/WAV, MP4/WebM and
    /// office documents.
    pub allowed_types: Vec<String>,
    /// Days a file is kept; 0 = forever. Default 30.
    pub retention_days: u64,
    /// Thumbnails made at once (other picture uploads wait); 0 = one per core. Default 0.
    pub thumbnail_workers: usize,
    /// Most memory one picture may take to decode for its thumbnail, bytes; pictures needing
    /// more get none. Default 134217728 (128 MiB).
    pub thumbnail_max_bytes: u64,
    /// Uploads one identity may start per hour; more get 429 with `Retry-After`. 0 = no limit.
    /// Default 30.
    pub uploads_per_identity_per_hour: u64,
    /// Bytes one identity may upload per hour. 0 = no limit. Default 209715200 (200 MiB).
    pub upload_bytes_per_identity_per_hour: u64,
    /// Uploads one client address may start per hour. 0 = no limit. Default 120.
    pub uploads_per_ip_per_hour: u64,
    /// Bytes one client address may upload per hour. 0 = no limit. Default 1073741824 (1 GiB).
    pub upload_bytes_per_ip_per_hour: u64,
    /// Bytes of files one room may keep; an upload that would go over gets HTTP 507.
    /// 0 = no limit. Default 2147483648 (2 GiB).
    pub max_room_bytes: u64,
}

impl Default for ChatSection {
    fn default() -> Self {
        ChatSection {
            max_upload_bytes: 20 * 1024 * 1024,
            allowed_types: huddle_signaling::files::default_allowed_types(),
            retention_days: 30,
            thumbnail_workers: 0,
            thumbnail_max_bytes: 128 * 1024 * 1024,
            uploads_per_identity_per_hour: 30,
            upload_bytes_per_identity_per_hour: 200 * 1024 * 1024,
            uploads_per_ip_per_hour: 120,
            upload_bytes_per_ip_per_hour: 1024 * 1024 * 1024,
            max_room_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// `[webhooks]`: room and participant events POSTed to your URLs, signed with HMAC-SHA256.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksSection {
    /// URLs that receive every event. Default: none (no webhooks).
    pub urls: Vec<String>,
    /// Signing secret for `X-Huddle-Signature`. Default: the API secret.
    pub secret: Option<String>,
    /// Delivery attempts per event and URL, the first included. Default 5.
    pub max_attempts: u32,
    /// Time allowed for one attempt, seconds. Default 5.
    pub timeout_secs: u64,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        WebhooksSection {
            urls: Vec::new(),
            secret: None,
            max_attempts: 5,
            timeout_secs: 5,
        }
    }
}

/// `[ice]`
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// participant is told `leave` with `server_shutdown` (SIGTERM: action `reconnect`, a
    /// restart; Ctrl-C: action `disconnect`), and the process exits when their
    /// sockets have closed or this time is up. Default 10.
    pub drain_secs: u64,
    /// Seconds a connection may take to send a request's headers: the first request after the
    /// connection opens, each later one, and the idle wait between keep-alive requests. Slower
    /// or silent connections are closed. Default 10.
    pub header_read_timeout_secs: u64,
    /// Seconds a TLS handshake may take before the connection is closed. Default 10.
    pub tls_handshake_timeout_secs: u64,
    /// Longest pause, seconds, while a request body (an upload) arrives; a body that stalls
    /// longer is cut. The whole body may take longer. Default 30.
    pub body_read_timeout_secs: u64,
    /// TCP connections to the HTTP port at once (HTTP, TLS and WebSockets alike); more are
    /// closed at once. Lowered at start to stay 512 under the file-descriptor limit (whose soft
    /// value is raised to the hard one). Default 10000.
    pub max_connections: usize,
    /// TCP connections to the HTTP port at once from one address (addresses in
    /// `signaling.trusted_proxies` are exempt); more are closed at once. 0 = no limit.
    /// Default 256.
    pub max_connections_per_ip: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            tls_self_signed: false,
            drain_secs: 10,
            header_read_timeout_secs: 10,
            tls_handshake_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The longest time ahead a token's `exp` may be, seconds; tokens expiring later are
    /// refused (`invalid_token`). Default 2592000 (30 days).
    pub max_token_lifetime_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            secret: None,
            secret_file: None,
            open_join: true,
            guest_token_ttl_secs: 3600,
            max_token_lifetime_secs: 30 * 86_400,
        }
    }
}

/// `[media]`
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Debugging: write the frames publishers send (as the SFU sees them) to this file, one JSON
    /// line each. It records people's media: leave unset in production. Default: unset.
    pub capture_path: Option<PathBuf>,
    /// Frames written to `capture_path` before it stops. Default 2000.
    pub capture_frames: usize,
    /// Choose each subscriber's simulcast layers within its downlink bandwidth estimate. Off,
    /// only tile sizes decide (a LAN where every link is fast). Default true.
    pub bandwidth_estimate: bool,
}

impl Default for MediaSection {
    fn default() -> Self {
        MediaSection {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            port: 50000,
            workers: 0,
            public_ip: None,
            capture_path: None,
            capture_frames: 2000,
            bandwidth_estimate: true,
        }
    }
}

/// `[signaling]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SignalingSection {
    /// Largest signaling message answered normally, bytes. Default 65536.
    pub max_message_bytes: usize,
    /// Largest `offer` or `answer`, bytes (SDP holds an m-line per track received at once).
    /// Default 1048576.
    pub max_sdp_bytes: usize,
    /// Participants per room. Default 50.
    pub max_participants: usize,
    /// Seconds without any frame from a client (pongs included) before its socket counts as
    /// dead and its participant leaves with `disconnected`. Default 15.
    pub idle_timeout_secs: u64,
    /// Seconds between the server's WebSocket pings. Default 5.
    pub ping_interval_secs: u64,
    /// Seconds a participant whose socket closed is kept in its room, waiting for it to
    /// `resume`, before it leaves with `disconnected`. Default 20.
    pub resume_window_secs: u64,
    /// Longest chat message, characters. Default 2000.
    pub chat_max_chars: usize,
    /// Origins allowed to open the WebSocket (`https://meet.example.org`, or `"*"`). Default
    /// empty: only the origin matching the request's `Host` header, plus clients that send no
    /// `Origin` (non-browser clients).
    pub allowed_origins: Vec<String>,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` header names the
    /// client for the per-address join limit. Default empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
}

impl Default for SignalingSection {
    fn default() -> Self {
        SignalingSection {
            max_message_bytes: 64 * 1024,
            max_sdp_bytes: 1024 * 1024,
            max_participants: 50,
            idle_timeout_secs: 15,
            ping_interval_secs: 5,
            resume_window_secs: 20,
            chat_max_chars: 2000,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

/// `[limits]`: what one node accepts. Going over a limit affects only the offender, gets a
/// specific error code (or HTTP status) and is counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Rooms open at once on this node; a join that would open another gets `too_many_rooms`.
    /// Default 1000.
    pub max_rooms: usize,
    /// Tracks one participant may publish; more are not forwarded and get `too_many_tracks`.
    /// Default 4 (camera, microphone, screen and its audio).
    pub max_tracks_per_participant: usize,
    /// Signaling messages per second per connection; more are dropped with `rate_limited`.
    /// 0 = no limit. Default 20.
    pub messages_per_second: u32,
    /// Messages a connection may send in one burst before the rate applies. Default 50.
    pub message_burst: u32,
    /// A connection over its message rate in this many separate seconds (within 30 s) is
    /// closed. Default 3.
    pub rate_limit_strikes: u32,
    /// Chat messages per minute per participant (bursts of 5); more get `rate_limited`.
    /// 0 = no limit. Default 30.
    pub chat_messages_per_minute: u32,
    /// Concurrent WebSocket connections and WHIP/WHEP sessions; more get HTTP 503 (before the
    /// upgrade, for a WebSocket). Default 1000.
    pub max_connections: usize,
    /// WebSocket upgrades and WHIP/WHEP offers per client address per minute; more get HTTP
    /// 429. 0 = no limit.
    /// Default 120.
    pub joins_per_ip_per_minute: u32,
    /// Guest tokens (`POST /api/token`) per client address per minute; more get HTTP 429 with
    /// `Retry-After`. 0 = no limit. Default 60.
    pub guest_tokens_per_ip_per_minute: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_rooms: 1000,
            max_tracks_per_participant: 4,
            messages_per_second: 20,
            message_burst: 50,
            rate_limit_strikes: 3,
            chat_messages_per_minute: 30,
            max_connections: 1000,
            joins_per_ip_per_minute: 120,
            guest_tokens_per_ip_per_minute: 60,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
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
pub fn load(file: Option<&std::path::Path>, overrides: Figment) -> Result<Config, ConfigError> {
    // Every section has `#[serde(default)]`: keys absent everywhere take their defaults.
    let mut fig = Figment::new();
    if let Some(f) = file {
        if !f.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                f.display()
            )));
        }
        fig = fig.merge(Toml::file(f));
    }
    // Only variables that name a section or key of Config are configuration: other HUDDLE_*
    // variables (HUDDLE_CONFIG for the file, a test's HUDDLE_BIN) are someone else's.
    let env = Env::prefixed("HUDDLE_").filter(|key| {
        let top = key.as_str().split("__").next().unwrap_or_default();
        CONFIG_KEYS.iter().any(|k| top.eq_ignore_ascii_case(k))
    });
    let fig = fig.merge(env.split("__")).merge(overrides);
    fig.extract()
        .map_err(|e| ConfigError::from_figment(&fig, e))
}

/// A configuration that does not load, said for an operator: each bad key with its value and
/// where it came from (the file, an environment variable, a flag), never Rust's type names or
/// source locations.
#[derive(Debug)]
pub struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn from_figment(fig: &Figment, e: figment::Error) -> ConfigError {
        use figment::Source;
        let lines: Vec<String> = e
            .into_iter()
            .map(|err| {
                let key = err.path.join(".");
                let value = (!key.is_empty())
                    .then(|| fig.find_value(&key).ok())
                    .flatten()
                    .and_then(|v| serde_json::to_string(&v).ok());
                let from = match err.metadata.as_ref() {
                    Some(m) => match &m.source {
                        Some(Source::File(p)) => format!(" in {}", p.display()),
                        Some(Source::Code(_)) => " (a command-line flag)".to_string(),
                        // The variable as the operator wrote it (`load` reads HUDDLE_*, `__`
                        // between a section and its key).
                        _ if m.name.contains("environment") => format!(
                            " (environment variable HUDDLE_{})",
                            err.path.join("__").to_uppercase()
                        ),
                        _ => String::new(),
                    },
                    None => String::new(),
                };
                let what = err.kind.to_string();
                match (key.is_empty(), value) {
                    (true, _) => what,
                    (false, Some(v)) => format!("{key} = {v}{from}: {what}"),
                    (false, None) => format!("{key}{from}: {what}"),
                }
            })
            .collect();
        ConfigError(lines.join("; "))
    }
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
