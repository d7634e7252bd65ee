//! # huddle-signaling: rooms, participants, tokens and chat over one WebSocket
//!
//! The signaling server is where a participant becomes a member of a room. Its pieces:
//!
//! * [`protocol`]: the JSON messages of the `/ws` protocol (documented in `docs/protocol.md`).
//! * [`token`]: HS256 access tokens; every join needs one.
//! * [`chat`]: chat history in SQLite, replayed on join.
//! * `session`: one participant's session as a sans-IO state machine (join, lobby, room,
//!   resume; inputs in, outputs out, time as an argument), and `session::driver`, the task per
//!   WebSocket that does its I/O.
//! * [`router`]: the axum routes: `/ws`, `/api/token`, the web client, `/healthz`, and for
//!   operators `/readyz` and `/metrics` (Prometheus; [`AppState::registry`] takes more
//!   collectors). [`AppState::shutdown`] drains the server: no more joins, every participant
//!   told `leave` with `server_shutdown`, the chat database checkpointed.
//!
//! Media never passes through here: the session hands SDP to [`huddle_media::MediaHandle`] and
//! gets per-participant [`huddle_media::PeerEvent`]s back.
#![deny(missing_docs)]

pub mod api;
pub mod chat;
pub mod cluster;
mod compress;
pub mod files;
mod http;
pub mod limits;
mod metrics;
mod moderation;
mod ops;
pub mod protocol;
pub mod recording;
mod resume;
mod rooms;
mod session;
pub mod text;
pub mod token;
pub mod webhooks;
mod whip;

use std::sync::Arc;
use std::time::Duration;

pub use http::router;
use huddle_media::MediaHandle;
pub use ops::Shutdown;
use protocol::IceServer;
pub use rooms::Rooms;

/// Entry points for the fuzz targets in `fuzz/` (not an API).
#[doc(hidden)]
pub mod fuzzing {
    /// Drives one whole session through the sans-IO core with inputs and world answers taken
    /// from `data`; panics when the core breaks one of its invariants.
    pub fn session(data: &[u8]) {
        crate::session::sim::fuzz(data);
    }
}

/// Everything that can go wrong in signaling outside a single message.
///
/// Its text is for logs and for the operator (a failed start); it never reaches a client, whose
/// answers carry fixed messages.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalingError {
    /// The chat database failed.
    #[error("chat database: {0}")]
    Database(#[from] rusqlite::Error),
    /// PostgreSQL (cluster mode: chat and uploaded files) refused or failed a query, or could
    /// not be connected to.
    #[error("postgres: {}", pg_detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The PostgreSQL URL (`cluster.postgres_url`) does not parse.
    #[error("postgres_url: {}", pg_detail(.0))]
    PostgresUrl(#[source] tokio_postgres::Error),
    /// PostgreSQL did not answer within the call's time.
    #[error("postgres did not answer in time")]
    PostgresTimeout,
    /// There is no connection to PostgreSQL (it is being re-opened at the next call).
    #[error("postgres: not connected")]
    PostgresUnavailable,
    /// Reading or writing local files failed (uploaded files, a thread that would not start).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Redis (cluster mode) refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis (cluster mode) did not answer within this time. (The URL is not named: it may
    /// hold a password.)
    #[error("redis did not answer within {} s (cluster.redis_url)", .0.as_secs())]
    RedisTimeout(Duration),
    /// No live node of the cluster can take another room.
    #[error("no live node can take the room")]
    NoNode,
    /// The cluster settings are unusable; the text names the key and what it must be.
    #[error("cluster configuration: {0}")]
    ClusterConfig(&'static str),
    /// A value could not be written as JSON (settings or node information for Redis).
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A token was refused (the precise reason: [`token::TokenError`]).
    #[error(transparent)]
    Token(#[from] token::TokenError),
    /// A token could not be signed.
    #[error("token signing: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
    /// Media refused a command.
    #[error(transparent)]
    Media(#[from] huddle_media::MediaError),
    /// A metric could not be registered (a name taken twice).
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A blocking task panicked or was cancelled.
    #[error("background task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A PostgreSQL error with what its own text leaves out: the server's message for a database
/// error, the underlying cause (an I/O error, a parse error) for the others.
fn pg_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{e}: {}", db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Signaling settings. Defaults suit one machine serving its own web client.
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    /// Whether `POST /api/token` mints tokens for anyone who asks (the local default). Turn off
    /// in production: then only tokens from the operator's application admit anyone.
    pub open_join: bool,
    /// Lifetime of tokens minted by `/api/token`. Default 1 hour.
    pub guest_token_ttl: Duration,
    /// Largest signaling frame answered normally; larger ones get `message_too_large`.
    /// Default 65 536 bytes. Frames over 16 times this close the socket.
    pub max_message_bytes: usize,
    /// Largest `offer` or `answer` (SDP holds an m-line per track received at once, about
    /// 1.6 KB each: a 25-person meeting's is about 80 KB). Default 1 MiB. Frames over twice
    /// this close the socket.
    pub max_sdp_bytes: usize,
    /// Participants per room. Default 50.
    pub max_participants: usize,
    /// A socket silent for this long (no frame at all, pongs included) is closed and its
    /// participant leaves with `disconnected`. Default 15 s.
    pub idle_timeout: Duration,
    /// Time allowed between the upgrade and `join`. Default 10 s.
    pub join_timeout: Duration,
    /// Longest chat message, in characters. Default 2 000.
    pub chat_max_chars: usize,
    /// How long a participant whose socket closed (without `leave`) stays in its room, its
    /// media kept, waiting for a `resume` on a new socket. Zero: it leaves at once. Default 20 s.
    pub resume_window: Duration,
    /// The server sends a WebSocket ping this often; any frame (a pong too) counts as traffic
    /// for `idle_timeout`. Default 5 s.
    pub ping_interval: Duration,
    /// Rooms on this node; a join that would open one more gets `too_many_rooms`. Default 1 000.
    pub max_rooms: usize,
    /// Signaling messages per second per connection (token bucket refill). 0 = no limit.
    /// Default 20.
    pub messages_per_sec: u32,
    /// Messages a connection may send at once before the rate applies. Default 50.
    pub message_burst: u32,
    /// A connection that goes over its rate in this many separate seconds (within 30 s of
    /// each other) is closed. Default 3.
    pub rate_limit_strikes: u32,
    /// Chat messages per minute per participant (bursts of up to 5). 0 = no limit. Default 30.
    pub chat_per_minute: u32,
    /// Concurrent WebSocket connections; over it, `/ws` answers 503. Default 1 000.
    pub max_connections: usize,
    /// WebSocket upgrades per client address per minute; over it, `/ws` answers 429.
    /// 0 = no limit. Default 120.
    pub joins_per_ip_per_minute: u32,
    /// Longest pause while a request body arrives (an upload); a body that stalls longer is
    /// cut. Default 30 s.
    pub body_read_timeout: Duration,
    /// Guest tokens (`POST /api/token`) per client address per minute; over it, 429 with
    /// `Retry-After`. 0 = no limit. Default 60.
    pub guest_tokens_per_ip_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` names the client (for the per-address limit).
    /// Default: none (the TCP peer is the client).
    pub trusted_proxies: Vec<limits::IpNet>,
    /// Origins allowed to open `/ws` (`https://meet.example.org`, or `*`). Default: none
    /// listed, which allows the origin that matches the request's `Host`, and clients that
    /// send no `Origin` (non-browser clients).
    pub allowed_origins: Vec<String>,
    /// The room API's key and secret. Default: none (the room API answers 401).
    pub api: Option<api::ApiCredentials>,
    /// Webhook URLs and their signing secret. Default: no URLs.
    pub webhooks: webhooks::WebhookConfig,
    /// Chat attachments: where they are kept, size cap, type policy, retention. Default: no
    /// directory (uploads off).
    pub files: files::FilesConfig,
    /// Recording: where recordings are kept, retention, how many at once. Default: no
    /// directory (recording off).
    pub recording: recording::RecordingConfig,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            open_join: true,
            guest_token_ttl: Duration::from_secs(3600),
            max_message_bytes: 64 * 1024,
            max_sdp_bytes: 1024 * 1024,
            max_participants: 50,
            idle_timeout: Duration::from_secs(15),
            join_timeout: Duration::from_secs(10),
            chat_max_chars: 2000,
            ping_interval: Duration::from_secs(5),
            resume_window: Duration::from_secs(20),
            max_rooms: 1000,
            messages_per_sec: 20,
            message_burst: 50,
            rate_limit_strikes: 3,
            chat_per_minute: 30,
            max_connections: 1000,
            joins_per_ip_per_minute: 120,
            guest_tokens_per_ip_per_minute: 60,
            body_read_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            api: None,
            webhooks: webhooks::WebhookConfig::default(),
            files: files::FilesConfig::default(),
            recording: recording::RecordingConfig::default(),
        }
    }
}

impl SignalingConfig {
    /// The largest frame the socket library reads at all: 16 times `max_message_bytes` or twice
    /// `max_sdp_bytes`, whichever is more. A larger one closes the connection at once (close
    /// code 1009).
    pub fn hard_cap(&self) -> usize {
        self.max_message_bytes
            .saturating_mul(16)
            .max(self.max_sdp_bytes.saturating_mul(2))
    }
}

/// Gives each joining participant its ICE servers (TURN credentials are per identity).
pub type IceServerProvider = Arc<dyn Fn(&str) -> Vec<IceServer> + Send + Sync>;

/// The number of TCP connections the HTTP port has open, and its cap, as counted by whoever
/// accepts them (the `huddle` binary); `/readyz` reports them.
pub trait ConnectionCount: Send + Sync {
    /// Connections open now.
    fn open(&self) -> usize;
    /// The most that may be open at once.
    fn cap(&self) -> usize;
}

/// The shared state of the signaling server. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: SignalingConfig,
    keys: token::TokenKeys,
    chat: chat::ChatStore,
    media: MediaHandle,
    rooms: Rooms,
    ice: IceServerProvider,
    moderation: moderation::Moderation,
    webhooks: webhooks::Webhooks,
    ops: ops::Ops,
    counters: limits::LimitCounters,
    connections: Arc<tokio::sync::Semaphore>,
    joins_per_ip: limits::IpWindow,
    guest_tokens_per_ip: limits::IpWindow,
    resumes: resume::Resumes,
    files: files::Files,
    /// The open WHIP and WHEP sessions.
    whip: whip::Resources,
    /// Recordings running, and the ones kept.
    recordings: recording::Recordings,
    /// Cluster mode: placement in Redis (set once at start).
    cluster: std::sync::OnceLock<cluster::Cluster>,
    /// The HTTP port's connection count (set once at start).
    http_connections: std::sync::OnceLock<Arc<dyn ConnectionCount>>,
}

impl AppState {
    /// Wires the parts together.
    pub fn new(
        config: SignalingConfig,
        keys: token::TokenKeys,
        chat: chat::ChatStore,
        media: MediaHandle,
        ice: IceServerProvider,
    ) -> Self {
        let ops = ops::Ops::new(&media);
        let counters = limits::LimitCounters::default();
        if let Err(e) = counters.register(ops.registry()) {
            tracing::error!(error = %e, "limit metrics registration failed");
        }
        let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let joins_per_ip = limits::IpWindow::new(config.joins_per_ip_per_minute);
        let guest_tokens_per_ip = limits::IpWindow::new(config.guest_tokens_per_ip_per_minute);
        let moderation = moderation::Moderation::new(chat.clone()).unwrap_or_else(|e| {
            tracing::error!(error = %e, "room settings could not be loaded: starting without them");
            moderation::Moderation::empty(chat.clone())
        });
        let webhooks = webhooks::Webhooks::start(&config.webhooks);
        let files = files::Files::start(config.files.clone(), chat.pg().cloned());
        let recordings = recording::Recordings::new(config.recording.clone());
        let state = AppState {
            inner: Arc::new(Inner {
                config,
                keys,
                chat,
                media,
                rooms: Rooms::default(),
                ice,
                moderation,
                webhooks,
                ops,
                counters,
                connections,
                joins_per_ip,
                guest_tokens_per_ip,
                resumes: resume::Resumes::default(),
                files,
                whip: whip::Resources::default(),
                recordings,
                cluster: std::sync::OnceLock::new(),
                http_connections: std::sync::OnceLock::new(),
            }),
        };
        recording::start_sweeper(&state);
        state
    }

    /// Where `/readyz` reads the HTTP port's connection count from. Once only.
    pub fn set_connection_count(&self, count: Arc<dyn ConnectionCount>) {
        let _ = self.inner.http_connections.set(count);
    }

    /// Joins a cluster: from now on a join for a room another node owns is redirected there,
    /// and the node reports its load to Redis. Once only (later calls are ignored).
    pub fn set_cluster(&self, cluster: cluster::Cluster) {
        if self.inner.cluster.set(cluster.clone()).is_ok() {
            cluster.spawn_heartbeat(self.clone());
        }
    }

    /// The cluster, in cluster mode.
    pub fn cluster(&self) -> Option<&cluster::Cluster> {
        self.inner.cluster.get()
    }

    /// The room registry.
    pub fn rooms(&self) -> &Rooms {
        &self.inner.rooms
    }

    /// How often each operator limit was hit (for the metrics endpoint).
    pub fn limit_counters(&self) -> &limits::LimitCounters {
        &self.inner.counters
    }
}
