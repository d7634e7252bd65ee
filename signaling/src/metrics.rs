//! Signaling's Prometheus metrics. Label values come from closed sets (message types, error
//! codes, failure reasons); no room or participant id is ever a label.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use crate::protocol::{ClientMsg, ErrorCode, ServerMsg};

/// Buckets of the join duration histogram, seconds.
const JOIN_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0,
];

/// Why a join did not end with connected media.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JoinFailure {
    /// The token did not verify.
    InvalidToken,
    /// The token had expired.
    TokenExpired,
    /// The token was for another room.
    WrongRoom,
    /// The client speaks another protocol version.
    UnsupportedProtocol,
    /// No `join` within the join timeout.
    Timeout,
    /// The room was full.
    RoomFull,
    /// The server was shutting down.
    ServerShutdown,
    /// ICE/DTLS did not complete in time.
    MediaTimeout,
    /// The media connection failed before it connected.
    MediaFailed,
}

impl JoinFailure {
    fn as_str(self) -> &'static str {
        match self {
            JoinFailure::InvalidToken => "invalid_token",
            JoinFailure::TokenExpired => "token_expired",
            JoinFailure::WrongRoom => "wrong_room",
            JoinFailure::UnsupportedProtocol => "unsupported_protocol",
            JoinFailure::Timeout => "timeout",
            JoinFailure::RoomFull => "room_full",
            JoinFailure::ServerShutdown => "server_shutdown",
            JoinFailure::MediaTimeout => "media_timeout",
            JoinFailure::MediaFailed => "media_failed",
        }
    }
}

/// The metrics of the signaling server. Cheap to clone (the metrics are shared atomics).
#[derive(Clone)]
pub(crate) struct SignalingMetrics {
    pub(crate) rooms: IntGauge,
    pub(crate) participants: IntGauge,
    pub(crate) joined: IntCounter,
    join_failures: IntCounterVec,
    pub(crate) join_duration: Histogram,
    pub(crate) ws_connections: IntGauge,
    ws_messages: IntCounterVec,
    errors: IntCounterVec,
    pub(crate) chat_messages: IntCounter,
    pub(crate) whip_sessions: IntGauge,
    pub(crate) whep_viewers: IntGauge,
    build_info: IntGaugeVec,
}

fn ok<T>(r: prometheus::Result<T>) -> T {
    // Constant definitions: they fail only on an invalid name, which the unit test catches.
    r.expect("valid metric definition")
}

impl SignalingMetrics {
    pub(crate) fn new() -> Self {
        let m = SignalingMetrics {
            rooms: ok(IntGauge::new(
                "huddle_rooms",
                "Rooms with at least one participant.",
            )),
            participants: ok(IntGauge::new(
                "huddle_participants",
                "Participants in rooms (joined over signaling).",
            )),
            joined: ok(IntCounter::new(
                "huddle_participants_joined_total",
                "Joins answered with `joined`.",
            )),
            join_failures: ok(IntCounterVec::new(
                Opts::new(
                    "huddle_join_failures_total",
                    "Joins that did not end with connected media, by reason.",
                ),
                &["reason"],
            )),
            join_duration: ok(Histogram::with_opts(
                HistogramOpts::new(
                    "huddle_join_duration_seconds",
                    "Time from a `join` message to the participant's media connection being connected (ICE and DTLS done).",
                )
                .buckets(JOIN_BUCKETS.to_vec()),
            )),
            ws_connections: ok(IntGauge::new(
                "huddle_websocket_connections",
                "Open signaling WebSocket connections.",
            )),
            ws_messages: ok(IntCounterVec::new(
                Opts::new(
                    "huddle_websocket_messages_total",
                    "Signaling messages by direction (in: from clients, out: to clients) and type; `invalid` counts frames that did not decode.",
                ),
                &["direction", "type"],
            )),
            errors: ok(IntCounterVec::new(
                Opts::new(
                    "huddle_signaling_errors_total",
                    "`error` messages sent to clients, by code.",
                ),
                &["code"],
            )),
            chat_messages: ok(IntCounter::new(
                "huddle_chat_messages_total",
                "Chat messages stored and delivered.",
            )),
            whip_sessions: ok(IntGauge::new(
                "huddle_whip_sessions",
                "WHIP publishers in rooms (each also counts as a participant).",
            )),
            whep_viewers: ok(IntGauge::new(
                "huddle_whep_viewers",
                "WHEP viewers watching rooms (not participants).",
            )),
            build_info: ok(IntGaugeVec::new(
                Opts::new("huddle_build_info", "Always 1; the huddle version as a label."),
                &["version"],
            )),
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    pub(crate) fn register(&self, r: &prometheus::Registry) -> prometheus::Result<()> {
        r.register(Box::new(self.rooms.clone()))?;
        r.register(Box::new(self.participants.clone()))?;
        r.register(Box::new(self.joined.clone()))?;
        r.register(Box::new(self.join_failures.clone()))?;
        r.register(Box::new(self.join_duration.clone()))?;
        r.register(Box::new(self.ws_connections.clone()))?;
        r.register(Box::new(self.ws_messages.clone()))?;
        r.register(Box::new(self.errors.clone()))?;
        r.register(Box::new(self.chat_messages.clone()))?;
        r.register(Box::new(self.whip_sessions.clone()))?;
        r.register(Box::new(self.whep_viewers.clone()))?;
        r.register(Box::new(self.build_info.clone()))?;
        Ok(())
    }

    pub(crate) fn join_failed(&self, why: JoinFailure) {
        self.join_failures.with_label_values(&[why.as_str()]).inc();
    }

    /// A client frame, by type (`None` when it did not decode).
    pub(crate) fn message_in(&self, ty: Option<&str>) {
        self.ws_messages
            .with_label_values(&["in", ty.unwrap_or("invalid")])
            .inc();
    }

    /// A server message sent; `error`s are also counted by code.
    pub(crate) fn message_out(&self, msg: &ServerMsg) {
        if let ServerMsg::Error { code, .. } = msg {
            self.errors.with_label_values(&[error_code(*code)]).inc();
        }
        self.message_out_type(server_msg_type(msg));
    }

    /// A server message of type `ty` sent (a shared room message).
    pub(crate) fn message_out_type(&self, ty: &str) {
        self.ws_messages.with_label_values(&["out", ty]).inc();
    }
}

/// The code's wire name (a closed set: the variants of [`ErrorCode`]).
fn error_code(c: ErrorCode) -> String {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_owned(),
    }
}

/// The `type` of a server message, as the metrics label it.
pub(crate) fn server_msg_type(msg: &ServerMsg) -> &'static str {
    match msg {
        ServerMsg::Joined { .. } => "joined",
        ServerMsg::Resumed { .. } => "resumed",
        ServerMsg::Answer { .. } => "answer",
        ServerMsg::Offer { .. } => "offer",
        ServerMsg::ParticipantJoined { .. } => "participant_joined",
        ServerMsg::ParticipantLeft { .. } => "participant_left",
        ServerMsg::TrackPublished { .. } => "track_published",
        ServerMsg::Mute { .. } => "mute",
        ServerMsg::Chat { .. } => "chat",
        ServerMsg::ChatUpdate { .. } => "chat_update",
        ServerMsg::TileReaction { .. } => "tile_reaction",
        ServerMsg::Layers { .. } => "layers",
        ServerMsg::MediaSlots { .. } => "media_slots",
        ServerMsg::Speakers { .. } => "speakers",
        ServerMsg::Quality { .. } => "quality",
        ServerMsg::Screen { .. } => "screen",
        ServerMsg::Pong { .. } => "pong",
        ServerMsg::Leave { .. } => "leave",
        ServerMsg::Redirect { .. } => "redirect",
        ServerMsg::Hand { .. } => "hand",
        ServerMsg::Typing { .. } => "typing",
        ServerMsg::Lobby { .. } => "lobby",
        ServerMsg::Knock { .. } => "knock",
        ServerMsg::KnockEnded { .. } => "knock_ended",
        ServerMsg::Host { .. } => "host",
        ServerMsg::RoomSettings { .. } => "room_settings",
        ServerMsg::Recording { .. } => "recording",
        ServerMsg::Spotlight { .. } => "spotlight",
        ServerMsg::Invite { .. } => "invite",
        ServerMsg::Error { .. } => "error",
    }
}

/// The `type` of a client message, as the metrics label it.
pub(crate) fn client_msg_type(m: &ClientMsg) -> &'static str {
    match m {
        ClientMsg::Join { .. } => "join",
        ClientMsg::Resume { .. } => "resume",
        ClientMsg::Offer { .. } => "offer",
        ClientMsg::VideoSizes { .. } => "video_sizes",
        ClientMsg::Screen { .. } => "screen",
        ClientMsg::Answer { .. } => "answer",
        ClientMsg::Candidate { .. } => "candidate",
        ClientMsg::Mute { .. } => "mute",
        ClientMsg::Chat { .. } => "chat",
        ClientMsg::ChatEdit { .. } => "chat_edit",
        ClientMsg::ChatDelete { .. } => "chat_delete",
        ClientMsg::React { .. } => "react",
        ClientMsg::TileReaction { .. } => "tile_reaction",
        ClientMsg::Leave => "leave",
        ClientMsg::Ping { .. } => "ping",
        ClientMsg::Hand { .. } => "hand",
        ClientMsg::Typing { .. } => "typing",
        ClientMsg::Admit { .. } => "admit",
        ClientMsg::Deny { .. } => "deny",
        ClientMsg::Moderate { .. } => "moderate",
        ClientMsg::RoomSettings { .. } => "room_settings",
        ClientMsg::Recording { .. } => "recording",
        ClientMsg::EndRoom => "end_room",
        ClientMsg::Invite => "invite",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_their_wire_names() {
        assert_eq!(error_code(ErrorCode::RoomFull), "room_full");
        assert_eq!(error_code(ErrorCode::BadMessage), "bad_message");
    }

    #[test]
    fn every_metric_registers() {
        let m = SignalingMetrics::new();
        let r = prometheus::Registry::new();
        m.register(&r).expect("registers");
        m.join_failed(JoinFailure::RoomFull);
        m.message_out(&ServerMsg::error(ErrorCode::RoomFull, "x", None));
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .expect("encodes");
        assert!(text.contains("huddle_signaling_errors_total{code=\"room_full\"} 1"));
        assert!(text.contains("huddle_join_failures_total{reason=\"room_full\"} 1"));
    }
}
