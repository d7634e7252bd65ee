//! Webhooks: room and participant events POSTed as JSON to the operator's URLs.
//!
//! Each body is signed with HMAC-SHA256 under the webhook secret; the hex digest is sent as
//! `X-Huddle-Signature: sha256=<hex>` (and the event name as `X-Huddle-Event`). Every URL has its
//! own background task and queue: events reach one URL in the order they happened, a failed
//! delivery is retried with exponential backoff (0.5 s, 1 s, 2 s, … capped at 30 s) up to
//! `max_attempts` times, and a slow or dead receiver never blocks signaling (a full queue drops
//! new events, with a warning).

use std::time::Duration;

use ring::hmac;
use serde::Serialize;
use tokio::sync::mpsc;

/// Queued events per URL before new ones are dropped.
const QUEUE: usize = 10_000;

/// Webhook settings.
#[derive(Clone, Default)]
pub struct WebhookConfig {
    /// Where to POST events. Empty: no webhooks.
    pub urls: Vec<String>,
    /// HMAC-SHA256 key for `X-Huddle-Signature`.
    pub secret: Vec<u8>,
    /// Delivery attempts per event and URL (the first included). Default 5.
    pub max_attempts: u32,
    /// Time allowed for one delivery attempt. Default 5 s.
    pub timeout: Duration,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("urls", &self.urls)
            .field("secret", &"<secret>")
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The first participant entered a room.
    RoomStarted,
    /// The last participant left a room (or it was ended through the API).
    RoomFinished,
    /// Someone entered a room (after the lobby, if any).
    ParticipantJoined,
    /// Someone left a room.
    ParticipantLeft,
    /// A recording of the room started.
    RecordingStarted,
    /// A recording of the room stopped (its files are being closed).
    RecordingEnded,
    /// A recording's files are closed and listed: they can be downloaded.
    RecordingReady,
}

/// The participant an event is about.
#[derive(Debug, Clone, Serialize)]
pub struct EventParticipant {
    /// Session id.
    pub participant_id: String,
    /// Identity from the token.
    pub identity: String,
    /// Display name.
    pub name: String,
}

/// One webhook body.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique per event (`EV_…`): receivers may use it to drop duplicates of a retried delivery.
    pub id: String,
    /// What happened.
    pub event: EventKind,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    /// The room's name.
    pub room: String,
    /// For the participant events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participant: Option<EventParticipant>,
    /// For `participant_left`: the leave reason (as on the wire).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<crate::protocol::LeaveReason>,
    /// For the recording events: the recording (its files once `recording_ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<crate::recording::Recording>,
}

/// One queued delivery: the event's kind and its JSON body.
type Queued = std::sync::Arc<(EventKind, Vec<u8>)>;

/// The webhook sender. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Webhooks {
    queues: Vec<mpsc::Sender<Queued>>,
}

impl Webhooks {
    /// Starts one delivery task per URL (must run inside a tokio runtime when URLs are set).
    pub(crate) fn start(config: &WebhookConfig) -> Self {
        if config.urls.is_empty() {
            return Webhooks::default();
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &config.secret);
        let client = match reqwest::Client::builder()
            .timeout(if config.timeout.is_zero() {
                Duration::from_secs(5)
            } else {
                config.timeout
            })
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook HTTP client failed to start: webhooks off");
                return Webhooks::default();
            }
        };
        let queues = config
            .urls
            .iter()
            .map(|url| {
                let (tx, rx) = mpsc::channel(QUEUE);
                tokio::spawn(deliver(
                    client.clone(),
                    url.clone(),
                    key.clone(),
                    config.max_attempts.max(1),
                    rx,
                ));
                tx
            })
            .collect();
        Webhooks { queues }
    }

    /// Queues a participant or room event for every URL; never waits.
    pub(crate) fn emit(
        &self,
        event: EventKind,
        room: &str,
        participant: Option<EventParticipant>,
        reason: Option<crate::protocol::LeaveReason>,
    ) {
        self.emit_full(event, room, participant, reason, None);
    }

    /// Queues a recording event for every URL; never waits.
    pub(crate) fn emit_recording(
        &self,
        event: EventKind,
        room: &str,
        recording: &crate::recording::Recording,
    ) {
        self.emit_full(event, room, None, None, Some(recording.clone()));
    }

    fn emit_full(
        &self,
        event: EventKind,
        room: &str,
        participant: Option<EventParticipant>,
        reason: Option<crate::protocol::LeaveReason>,
        recording: Option<crate::recording::Recording>,
    ) {
        if self.queues.is_empty() {
            return;
        }
        let body = Event {
            id: format!("EV_{:016x}", rand::random::<u64>()),
            event,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            room: room.to_string(),
            participant,
            reason,
            recording,
        };
        let Ok(bytes) = serde_json::to_vec(&body) else {
            return;
        };
        let item = std::sync::Arc::new((event, bytes));
        for q in &self.queues {
            if q.try_send(item.clone()).is_err() {
                tracing::warn!(?event, "webhook queue full or closed: event dropped");
            }
        }
    }
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), body)
}

fn sign(key: &hmac::Key, body: &[u8]) -> String {
    format!(
        "sha256={}",
        crate::moderation::hex(hmac::sign(key, body).as_ref())
    )
}

async fn deliver(
    client: reqwest::Client,
    url: String,
    key: hmac::Key,
    max_attempts: u32,
    mut rx: mpsc::Receiver<Queued>,
) {
    while let Some(item) = rx.recv().await {
        let (event, body) = (&item.0, &item.1);
        let sig = sign(&key, body);
        let name = serde_json::to_value(event)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=max_attempts {
            let res = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-huddle-signature", &sig)
                .header("x-huddle-event", &name)
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => break,
                Ok(r) => {
                    tracing::warn!(%url, event = %name, attempt, status = %r.status(), "webhook refused")
                }
                Err(e) => {
                    tracing::warn!(%url, event = %name, attempt, error = %e, "webhook delivery failed")
                }
            }
            if attempt == max_attempts {
                tracing::error!(%url, event = %name, "webhook given up after {max_attempts} attempts");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
