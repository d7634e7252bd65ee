//! # huddle-signaling: rooms, participants, tokens and chat over one WebSocket
//!
//! The signaling server is where a participant becomes a member of a room. Its pieces:
//!
//! * [`protocol`]: the JSON messages of the `/ws` protocol (documented in `docs/protocol.md`).
//! * [`token`]: HS256 access tokens; every join needs one.
//! * [`chat`]: chat history in SQLite, replayed on join.
//! * `session`: one task per WebSocket that verifies the join, keeps the participant in its room,
//!   relays SDP between the browser and the media worker, and fans out room events.
//! * [`router`]: the axum routes: `/ws`, `/api/token`, the web client, `/healthz`, and for
//!   operators `/readyz` and `/metrics` (Prometheus; [`AppState::registry`] takes more
//!   collectors). [`AppState::shutdown`] drains the server: no more joins, every participant
//!   told `leave` with `server_shutdown`, the chat database checkpointed.
//!
//! Media never passes through here: the session hands SDP to [`huddle_media::MediaHandle`] and
//! gets per-participant [`huddle_media::PeerEvent`]s back.
#![deny(missing_docs)]

pub mod chat;
mod http;
mod metrics;
mod ops;
pub mod protocol;
mod rooms;
mod session;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

pub use http::router;
use huddle_media::MediaHandle;
use protocol::IceServer;
pub use rooms::Rooms;

/// Everything that can go wrong in signaling outside a single message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalingError {
    /// The chat database failed.
    #[error("chat database: {0}")]
    Database(#[from] rusqlite::Error),
    /// A token could not be signed.
    #[error("token signing: {0}")]
    Token(String),
    /// Media refused a command.
    #[error(transparent)]
    Media(#[from] huddle_media::MediaError),
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
    /// Participants per room. Default 50.
    pub max_participants: usize,
    /// A socket silent for this long is closed. Default 45 s.
    pub idle_timeout: Duration,
    /// Time allowed between the upgrade and `join`. Default 10 s.
    pub join_timeout: Duration,
    /// Longest chat message, in characters. Default 2 000.
    pub chat_max_chars: usize,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        SignalingConfig {
            open_join: true,
            guest_token_ttl: Duration::from_secs(3600),
            max_message_bytes: 64 * 1024,
            max_participants: 50,
            idle_timeout: Duration::from_secs(45),
            join_timeout: Duration::from_secs(10),
            chat_max_chars: 2000,
        }
    }
}

/// Gives each joining participant its ICE servers (TURN credentials are per identity).
pub type IceServerProvider = Arc<dyn Fn(&str) -> Vec<IceServer> + Send + Sync>;

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
    ops: ops::Ops,
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
        AppState {
            inner: Arc::new(Inner {
                config,
                keys,
                chat,
                media,
                rooms: Rooms::default(),
                ice,
                ops,
            }),
        }
    }

    /// The room registry.
    pub fn rooms(&self) -> &Rooms {
        &self.inner.rooms
    }
}
