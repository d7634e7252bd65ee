//! Resume tokens: a participant whose socket dropped gets back into its session on a new socket.
//!
//! Each session registers a slot at join: a secret token and the channel on which a new socket
//! reaches the session. A `resume` on a new socket presents the token with the same access token
//! (same identity and room); the socket is handed to the waiting session, which answers
//! `resumed`. The slot lives as long as the session.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::WebSocket;
use huddle_media::ParticipantId;
use tokio::sync::mpsc;

struct Slot {
    pid: ParticipantId,
    room: String,
    identity: String,
    tx: mpsc::Sender<WebSocket>,
}

/// Every live session's resume slot.
#[derive(Default)]
pub(crate) struct Resumes {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Resumes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new slot: its token, and where new sockets for it arrive.
    pub(crate) fn register(
        &self,
        pid: ParticipantId,
        room: &str,
        identity: &str,
    ) -> (String, mpsc::Receiver<WebSocket>) {
        let token = format!("{:032x}", rand::random::<u128>());
        let (tx, rx) = mpsc::channel(1);
        self.lock().insert(
            token.clone(),
            Slot {
                pid,
                room: room.to_string(),
                identity: identity.to_string(),
                tx,
            },
        );
        (token, rx)
    }

    /// The session behind `token`, when it belongs to `identity` in `room`.
    pub(crate) fn find(
        &self,
        token: &str,
        room: &str,
        identity: &str,
    ) -> Option<(ParticipantId, mpsc::Sender<WebSocket>)> {
        self.lock()
            .get(token)
            .filter(|s| s.room == room && s.identity == identity)
            .map(|s| (s.pid, s.tx.clone()))
    }

    /// The session ended.
    pub(crate) fn remove(&self, token: &str) {
        self.lock().remove(token);
    }
}
