//! The wire protocol, version 1: every message a client and the server exchange over `/ws`.
//! `docs/protocol.md` documents these types field by field; keep the two in step.

use serde::{Deserialize, Serialize};

use crate::token::Grants;

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Audio or video, on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Microphone.
    Audio,
    /// Camera.
    Video,
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First message: who I am.
    Join {
        /// Must be [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Access token (JWT).
        token: String,
    },
    /// The client's one offer, right after `joined`.
    Offer {
        /// SDP text.
        sdp: String,
        /// Where each send m-line's track comes from, by mid. Unlisted: camera or microphone
        /// by kind.
        #[serde(default)]
        sources: std::collections::BTreeMap<String, Source>,
    },
    /// The sizes at which the client shows other participants' video tracks.
    VideoSizes {
        /// One entry per track; width or height 0 means hidden.
        tracks: Vec<VideoSize>,
    },
    /// The client started or stopped sharing its screen (on its pre-negotiated screen m-line).
    Screen {
        /// Sharing now.
        sharing: bool,
    },
    /// Answer to a server offer.
    Answer {
        /// SDP text.
        sdp: String,
    },
    /// A trickled ICE candidate.
    Candidate {
        /// The `candidate:` line; empty at end of candidates.
        #[serde(default)]
        candidate: String,
        /// The m-line's mid.
        #[serde(default)]
        sdp_mid: Option<String>,
        /// The m-line's index.
        #[serde(default)]
        sdp_m_line_index: Option<u32>,
    },
    /// Microphone or camera muted or unmuted.
    Mute {
        /// Which.
        kind: Kind,
        /// New state.
        muted: bool,
    },
    /// A chat message for the room.
    Chat {
        /// The text.
        text: String,
    },
    /// Leaving.
    Leave,
    /// Keepalive.
    Ping {
        /// Opaque, echoed.
        #[serde(default)]
        ts: serde_json::Value,
    },
}

/// Where a published track comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A camera.
    #[default]
    Camera,
    /// A microphone.
    Microphone,
    /// A shared screen.
    Screen,
}

impl From<huddle_media::Source> for Source {
    fn from(s: huddle_media::Source) -> Self {
        match s {
            huddle_media::Source::Camera => Source::Camera,
            huddle_media::Source::Microphone => Source::Microphone,
            huddle_media::Source::Screen => Source::Screen,
        }
    }
}

impl From<Source> for huddle_media::Source {
    fn from(s: Source) -> Self {
        match s {
            Source::Camera => huddle_media::Source::Camera,
            Source::Microphone => huddle_media::Source::Microphone,
            Source::Screen => huddle_media::Source::Screen,
        }
    }
}

/// The size at which a client shows one remote video track, in device pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoSize {
    /// The track (`TR_…`).
    pub track_id: String,
    /// Width; 0 when hidden.
    pub width: u32,
    /// Height; 0 when hidden.
    pub height: u32,
}

/// One active speaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeakerInfo {
    /// Who.
    pub participant_id: String,
    /// Loudness from 0.1 to 1.0.
    pub level: f32,
}

/// One participant's connection quality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityInfo {
    /// Who.
    pub participant_id: String,
    /// `good`, `fair` or `poor`.
    pub quality: String,
}

/// A participant as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Session id (`PA_…`).
    pub participant_id: String,
    /// Identity from the token.
    pub identity: String,
    /// Display name from the token.
    pub name: String,
    /// Microphone muted.
    pub audio_muted: bool,
    /// Camera off.
    pub video_muted: bool,
    /// Published tracks.
    pub tracks: Vec<TrackInfo>,
    /// Sharing a screen.
    #[serde(default)]
    pub screen_sharing: bool,
}

/// A published track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Track id (`TR_…`), also the msid track id of its m-line.
    pub track_id: String,
    /// Audio or video.
    pub kind: Kind,
    /// Camera, microphone or screen.
    #[serde(default)]
    pub source: Source,
}

/// A stored chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Increasing id.
    pub id: i64,
    /// Sender's session id.
    pub participant_id: String,
    /// Sender's identity (from the token).
    pub identity: String,
    /// Sender's display name (from the token).
    pub name: String,
    /// The text.
    pub text: String,
    /// Milliseconds since the Unix epoch (server clock).
    pub ts: i64,
}

/// An ICE server for `RTCPeerConnection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// By choice.
    Left,
    /// Socket or media lost.
    Disconnected,
    /// Removed by a moderator.
    Removed,
    /// The server is shutting down.
    ServerShutdown,
    /// The same identity joined again elsewhere.
    DuplicateIdentity,
}

/// Error codes sent in `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, unknown type, or wrong field types.
    BadMessage,
    /// Frame over the configured cap.
    MessageTooLarge,
    /// Protocol version not spoken.
    UnsupportedProtocol,
    /// Token did not verify.
    InvalidToken,
    /// Token expired.
    TokenExpired,
    /// Token for another room.
    WrongRoom,
    /// Message before `joined`.
    NotJoined,
    /// Second `join`.
    AlreadyJoined,
    /// Missing grant.
    Forbidden,
    /// SDP did not parse or apply.
    InvalidSdp,
    /// Candidate did not parse.
    InvalidCandidate,
    /// Room at capacity.
    RoomFull,
    /// Server fault.
    Internal,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Reply to a good `join`.
    Joined {
        /// [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Room name.
        room: String,
        /// This session's id.
        participant_id: String,
        /// Identity from the token.
        identity: String,
        /// Display name from the token.
        name: String,
        /// Grants from the token.
        grants: Grants,
        /// Everyone else in the room.
        participants: Vec<ParticipantInfo>,
        /// ICE servers for the peer connection.
        ice_servers: Vec<IceServer>,
        /// Recent chat, oldest first.
        chat_history: Vec<ChatMessage>,
    },
    /// Answer to the client's offer.
    Answer {
        /// SDP text.
        sdp: String,
    },
    /// A server offer.
    Offer {
        /// SDP text.
        sdp: String,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left.
    ParticipantLeft {
        /// Who.
        participant_id: String,
        /// Why.
        reason: LeaveReason,
    },
    /// Someone's track started.
    TrackPublished {
        /// Publisher.
        participant_id: String,
        /// The track.
        track: TrackInfo,
    },
    /// Someone's track ended.
    TrackUnpublished {
        /// Publisher.
        participant_id: String,
        /// The track.
        track_id: String,
    },
    /// Someone's mute state changed.
    Mute {
        /// Who.
        participant_id: String,
        /// Which.
        kind: Kind,
        /// New state.
        muted: bool,
    },
    /// A chat message.
    Chat {
        /// The stored message.
        message: ChatMessage,
    },
    /// Dynacast: keep these simulcast layers of your track active, pause the others.
    Layers {
        /// Your track.
        track_id: String,
        /// The rids to send.
        active: Vec<String>,
    },
    /// The room's active speakers, loudest first (empty: nobody speaks).
    Speakers {
        /// Who speaks.
        speakers: Vec<SpeakerInfo>,
    },
    /// Connection quality of the room's participants.
    Quality {
        /// One entry per connected participant (you included).
        participants: Vec<QualityInfo>,
    },
    /// Someone started or stopped sharing a screen.
    Screen {
        /// Who.
        participant_id: String,
        /// Sharing now.
        sharing: bool,
    },
    /// Reply to ping.
    Pong {
        /// Echoed.
        ts: serde_json::Value,
    },
    /// The server ends this session.
    Leave {
        /// Why.
        reason: LeaveReason,
    },
    /// Something went wrong.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable English.
        message: String,
        /// Echo of the offending message's `request_id`.
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
}

impl ServerMsg {
    /// An `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>, request_id: Option<String>) -> Self {
        ServerMsg::Error {
            code,
            message: message.into(),
            request_id,
        }
    }
}

/// A client frame that did not decode: answered with `bad_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// What was wrong, for the client.
    pub message: String,
    /// The frame's `request_id`, when it had one.
    pub request_id: Option<String>,
}

impl DecodeError {
    /// The `error` message to send back.
    pub fn to_msg(&self) -> ServerMsg {
        ServerMsg::error(
            ErrorCode::BadMessage,
            self.message.clone(),
            self.request_id.clone(),
        )
    }
}

/// Decodes one client frame, with its optional `request_id`.
pub fn decode_client_msg(text: &str) -> Result<(ClientMsg, Option<String>), DecodeError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| DecodeError {
        message: format!("not JSON: {e}"),
        request_id: None,
    })?;
    let request_id = value
        .get("request_id")
        .and_then(|v| v.as_str())
        .filter(|s| s.len() <= 64)
        .map(str::to_string);
    if !value.is_object() {
        return Err(DecodeError {
            message: "a message must be a JSON object".into(),
            request_id,
        });
    }
    serde_json::from_value::<ClientMsg>(value)
        .map(|msg| (msg, request_id.clone()))
        .map_err(|e| DecodeError {
            message: format!("bad message: {e}"),
            request_id,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_client_message() {
        let cases = [
            r#"{"type":"join","protocol":1,"token":"t"}"#,
            r#"{"type":"offer","sdp":"v=0"}"#,
            r#"{"type":"offer","sdp":"v=0","sources":{"0":"microphone","1":"camera","2":"screen"}}"#,
            r#"{"type":"video_sizes","tracks":[{"track_id":"TR_1","width":320,"height":180}]}"#,
            r#"{"type":"screen","sharing":true}"#,
            r#"{"type":"answer","sdp":"v=0"}"#,
            r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdp_mid":"0","sdp_m_line_index":0}"#,
            r#"{"type":"mute","kind":"audio","muted":true}"#,
            r#"{"type":"chat","text":"hi"}"#,
            r#"{"type":"leave"}"#,
            r#"{"type":"ping","ts":5}"#,
        ];
        for c in cases {
            assert!(decode_client_msg(c).is_ok(), "{c}");
        }
    }

    #[test]
    fn bad_messages_get_bad_message_with_request_id() {
        for (text, rid) in [
            ("{", None),
            ("[1,2]", None),
            (r#"{"type":"nope","request_id":"r1"}"#, Some("r1")),
            (
                r#"{"type":"mute","kind":"smell","muted":true,"request_id":"r2"}"#,
                Some("r2"),
            ),
            (r#"{"type":"join","protocol":"one","token":1}"#, None),
        ] {
            match decode_client_msg(text) {
                Err(e) => {
                    assert_eq!(e.request_id.as_deref(), rid, "{text}");
                    assert!(matches!(
                        e.to_msg(),
                        ServerMsg::Error {
                            code: ErrorCode::BadMessage,
                            ..
                        }
                    ));
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn server_messages_carry_their_type_tag() {
        let m = ServerMsg::ParticipantLeft {
            participant_id: "PA_1".into(),
            reason: LeaveReason::Left,
        };
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "participant_left");
        assert_eq!(v["reason"], "left");
    }
}
