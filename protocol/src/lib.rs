//! # huddle-protocol: the signaling protocol, version 1
//!
//! Every message a Huddle client and server exchange over `/ws`, and the small vocabulary the
//! parts of Huddle share: [`TrackKind`], [`Source`], [`Grants`], [`ErrorCode`], [`LeaveReason`]
//! and [`LeaveAction`]. The signaling server, the media SFU and the load tester all use these
//! types; none defines its own copy. `docs/protocol.md` documents them table by table, and
//! `tests/protocol_docs.rs` holds the two in step.
//!
//! The crate depends on serde alone: a client written in Rust can take it without the server.
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};

/// What an access token allows (its `grants` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// May publish microphone and camera.
    #[serde(default = "yes")]
    pub publish: bool,
    /// May receive others' media.
    #[serde(default = "yes")]
    pub subscribe: bool,
    /// May send chat messages.
    #[serde(default = "yes")]
    pub chat: bool,
    /// May moderate the room (admin API).
    #[serde(default)]
    pub admin: bool,
}

fn yes() -> bool {
    true
}

impl Default for Grants {
    /// Everything but `admin`.
    fn default() -> Self {
        Grants {
            publish: true,
            subscribe: true,
            chat: true,
            admin: false,
        }
    }
}

/// The protocol version this server speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    /// An audio track (Opus).
    Audio,
    /// A video track (VP8 or H.264).
    Video,
}

impl TrackKind {
    /// `"audio"` or `"video"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        }
    }
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// First message: who I am.
    Join {
        /// Must be [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Access token (JWT).
        token: String,
        /// The room's password, for a room created with one.
        #[serde(default)]
        password: Option<String>,
    },
    /// First message on a new socket of a participant whose socket dropped: takes the
    /// participant back within the resume window, without leaving the room.
    Resume {
        /// Must be [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The same access token as the `join` (it must still be valid).
        token: String,
        /// `joined.resume_token`.
        resume_token: String,
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
        kind: TrackKind,
        /// New state.
        muted: bool,
    },
    /// A chat message for the room.
    Chat {
        /// The text.
        text: String,
        /// An id the client chose (up to 64 characters); the sender's echo carries it back.
        #[serde(default)]
        client_msg_id: Option<String>,
        /// A file uploaded to this room (`POST /api/rooms/{room}/files`) to attach; the text
        /// may then be empty.
        #[serde(default)]
        attachment_id: Option<String>,
    },
    /// Change the text of one's own chat message.
    ChatEdit {
        /// The message's `id`.
        message_id: i64,
        /// The new text.
        text: String,
    },
    /// Delete one's own chat message (its text and attachment are removed).
    ChatDelete {
        /// The message's `id`.
        message_id: i64,
    },
    /// Add (or, with `active: false`, take back) one's reaction to a chat message.
    React {
        /// The message's `id`.
        message_id: i64,
        /// One emoji (1 to 32 bytes, no spaces or control characters).
        emoji: String,
        /// `false` removes the reaction.
        #[serde(default = "yes")]
        active: bool,
    },
    /// A quick emoji reaction on one's own video tile: shown briefly to everyone, not stored.
    TileReaction {
        /// One emoji (1 to 32 bytes, no spaces or control characters).
        emoji: String,
    },
    /// Raise or lower one's hand.
    Hand {
        /// New state.
        raised: bool,
    },
    /// The user is typing in the chat box (send at most every 3 s while typing), or stopped.
    Typing {
        /// `true` while typing, `false` when the box was cleared or the message sent.
        #[serde(default = "yes")]
        active: bool,
    },
    /// Admit someone waiting in the lobby (admins; anyone when no admin is in the room).
    Admit {
        /// The waiting participant's id, from `knock`.
        participant_id: String,
    },
    /// Turn away someone waiting in the lobby.
    Deny {
        /// The waiting participant's id, from `knock`.
        participant_id: String,
    },
    /// A host acts on a participant (hosts only; see [`HostAction`]).
    Moderate {
        /// The participant acted on.
        participant_id: String,
        /// What to do.
        action: HostAction,
    },
    /// A host changes the room's lobby or lock (hosts only); a field left out stays as it is.
    RoomSettings {
        /// Joiners wait in the lobby.
        #[serde(default)]
        lobby: Option<bool>,
        /// Nobody new may join (hosts' admin tokens excepted).
        #[serde(default)]
        locked: Option<bool>,
    },
    /// A host starts or stops recording the meeting (hosts only; everyone is told with
    /// `recording`).
    Recording {
        /// Start (true) or stop.
        active: bool,
    },
    /// A host ends the meeting for everyone (hosts only).
    EndRoom,
    /// A host asks for an invite link's secret (hosts only): answered with `invite`.
    Invite,
    /// Leaving.
    Leave,
    /// Keepalive.
    Ping {
        /// Opaque, echoed.
        #[serde(default)]
        ts: serde_json::Value,
    },
}

/// What a host does to a participant with `moderate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAction {
    /// Mute the microphone (as the room API's mute: the participant may unmute).
    MuteAudio,
    /// Stop the camera (likewise).
    MuteVideo,
    /// Remove from the room (`leave` with `removed`).
    Remove,
    /// Make a host too.
    MakeHost,
    /// Put in the spotlight: shown large for everyone (`spotlight` to the room).
    Spotlight,
    /// Take out of the spotlight (nothing happens if someone else is in it).
    Unspotlight,
}

/// Where a published track comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A camera (may be simulcast).
    #[default]
    Camera,
    /// A microphone.
    Microphone,
    /// A shared screen or window (never simulcast; shown large).
    Screen,
}

impl Source {
    /// `"camera"`, `"microphone"` or `"screen"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Camera => "camera",
            Source::Microphone => "microphone",
            Source::Screen => "screen",
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
    /// Hand raised.
    #[serde(default)]
    pub hand_raised: bool,
    /// Sharing a screen.
    #[serde(default)]
    pub screen_sharing: bool,
    /// A host of the room (may mute, remove, admit, lock and end).
    #[serde(default)]
    pub host: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A published track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Track id (`TR_…`), also the msid track id of its m-line.
    pub track_id: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// Camera, microphone or screen.
    #[serde(default)]
    pub source: Source,
}

/// One of your receiving m-lines and what it carries (`media_slots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaSlot {
    /// The m-line's mid.
    pub mid: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// The publisher; `null` when the m-line is free (nothing arrives on it).
    pub participant_id: Option<String>,
    /// The track (`TR_…`); `null` when free.
    pub track_id: Option<String>,
    /// Camera, microphone or screen; `null` when free.
    pub source: Option<Source>,
}

/// A file attached to a chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The file's id (`GET /api/rooms/{room}/files/{id}` downloads it).
    pub id: String,
    /// The uploader's file name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// The type sniffed from the content by the server.
    pub mime: String,
    /// Where its thumbnail is (`GET`, same authorization), for pictures; `null` otherwise.
    pub thumb: Option<String>,
}

/// How many participants reacted to a message with one emoji.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many reacted with it.
    pub count: u32,
    /// Their identities.
    pub identities: Vec<String>,
}

/// What happened to a chat message after it was sent: its attachment, reactions, edits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatExtra {
    /// The attached file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// Reactions, in the order first given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// When the text was last edited (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<i64>,
    /// The sender deleted it (its text is empty and its attachment gone).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
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
    /// Attachment, reactions, edits.
    #[serde(flatten)]
    pub extra: ChatExtra,
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
    /// The room was ended through the room API.
    RoomEnded,
    /// Turned away from the lobby.
    Denied,
}

/// What a client told `leave` should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveAction {
    /// The session is over: show that it ended; do not come back by yourself.
    Disconnect,
    /// The server is going away for a moment (a restart or a deploy): wait
    /// `reconnect_after_ms`, then `join` again (a new session: resume tokens do not survive),
    /// retrying while the server does not answer.
    Reconnect,
}

/// How a lobby knock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KnockOutcome {
    /// Let in.
    Admitted,
    /// Turned away.
    Denied,
    /// The waiter left (or the room was ended).
    Left,
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
    /// The node has its configured number of rooms; this join would open another.
    TooManyRooms,
    /// Messages (or chat messages) faster than the configured rate; the message was dropped.
    RateLimited,
    /// A published track over `max_tracks_per_participant`; it is not forwarded.
    TooManyTracks,
    /// The room has a password and `join` had none.
    PasswordRequired,
    /// The room has a password and `join` had another one.
    WrongPassword,
    /// `admit`/`deny` for someone who is not waiting in the lobby.
    NotWaiting,
    /// `resume` with an unknown or expired resume token, or for another participant: send `join`.
    ResumeFailed,
    /// Cluster mode: no node could be chosen for the room (Redis unreachable, or every node
    /// at its room limit). Try again shortly.
    Unavailable,
    /// `chat` with an `attachment_id` another identity uploaded: only the uploader may attach
    /// a file. The message was not sent.
    NotYourFile,
    /// The room is locked by its host: nobody new may join.
    RoomLocked,
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
        /// Secret for `resume` after a dropped socket.
        resume_token: String,
        /// This participant hosts the room (left out when not).
        #[serde(default, skip_serializing_if = "is_false")]
        host: bool,
        /// The room has its lobby on (left out when off).
        #[serde(default, skip_serializing_if = "is_false")]
        lobby: bool,
        /// The room is locked (left out when not).
        #[serde(default, skip_serializing_if = "is_false")]
        locked: bool,
        /// The participant a host put in the spotlight (left out when nobody is).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spotlight: Option<String>,
        /// The meeting is being recorded (left out when not).
        #[serde(default, skip_serializing_if = "is_false")]
        recording: bool,
    },
    /// Reply to a good `resume`: the participant is back on this socket. Messages the server
    /// queued while the socket was down follow.
    Resumed {
        /// This session's id (unchanged).
        participant_id: String,
        /// Everyone else in the room now (replaces the client's list).
        participants: Vec<ParticipantInfo>,
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
    /// Someone's mute state changed.
    Mute {
        /// Who.
        participant_id: String,
        /// Which.
        kind: TrackKind,
        /// New state.
        muted: bool,
        /// The room API muted it (sent to the muted participant too, who should disable the
        /// track; they may unmute themselves).
        #[serde(default, skip_serializing_if = "is_false")]
        by_server: bool,
    },
    /// A chat message.
    Chat {
        /// The stored message.
        message: ChatMessage,
        /// The sender's `client_msg_id`, on the sender's own echo only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
    },
    /// A chat message was edited, deleted or reacted to: the whole message as it is now (to
    /// everyone, the sender included).
    ChatUpdate {
        /// The message.
        message: ChatMessage,
    },
    /// Someone's quick emoji reaction on their tile (to everyone, the sender included).
    TileReaction {
        /// Who.
        participant_id: String,
        /// The emoji.
        emoji: String,
    },
    /// Someone raised or lowered their hand (sent to everyone, the sender included).
    Hand {
        /// Who.
        participant_id: String,
        /// New state.
        raised: bool,
    },
    /// Someone is typing in the chat, or stopped (not sent back to the typist).
    Typing {
        /// Who.
        participant_id: String,
        /// Typing or stopped.
        active: bool,
    },
    /// The room has a lobby: wait here until someone admits (then `joined`) or denies (then
    /// `leave` with `denied`).
    Lobby {},
    /// Someone is waiting in the lobby (to admins; to everyone when no admin is in the room).
    Knock {
        /// The waiting participant's id (for `admit`/`deny`).
        participant_id: String,
        /// Identity from their token.
        identity: String,
        /// Display name from their token.
        name: String,
    },
    /// A knock was answered, or the waiter gave up (to everyone who may have seen the knock).
    KnockEnded {
        /// The waiter.
        participant_id: String,
        /// `admitted`, `denied`, `left`.
        outcome: KnockOutcome,
    },
    /// What some of your receiving m-lines carry now (by mid). Sent before an `offer` that
    /// adds m-lines, and whenever an m-line is freed by a participant who left or given to a
    /// new track without an offer: the server reuses free m-lines, so an m-line's `a=msid`
    /// names only the first track it carried. Trust this message, not the msid.
    MediaSlots {
        /// The m-lines that changed.
        slots: Vec<MediaSlot>,
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
    /// Someone became a host, or stopped being one (to everyone, the participant included).
    Host {
        /// Who.
        participant_id: String,
        /// A host now.
        host: bool,
    },
    /// A host put someone in the spotlight or took them out of it (to everyone; `joined` has
    /// it too): the page shows that participant large, as a pin.
    Spotlight {
        /// Who, or `None`: nobody is in the spotlight now.
        participant_id: Option<String>,
    },
    /// The meeting is being recorded (or no longer is), to everyone in the room when it
    /// changes; `joined` has it too.
    Recording {
        /// Whether it is being recorded now.
        active: bool,
    },
    /// The room's lobby and lock, whenever a host changes them (to everyone; `joined` has them
    /// too).
    RoomSettings {
        /// Joiners wait in the lobby.
        lobby: bool,
        /// Nobody new may join.
        locked: bool,
    },
    /// Reply to `invite`: the secret of an invite link (`/r/ROOM?invite=…`), which `POST
    /// /api/token` exchanges for a guest token of this room until `expires_at`.
    Invite {
        /// The signed invite.
        invite: String,
        /// Expiry, seconds since the Unix epoch.
        expires_at: u64,
    },
    /// Reply to ping.
    Pong {
        /// Echoed.
        ts: serde_json::Value,
    },
    /// Instead of `joined` (cluster mode): the room lives on another node. Open a WebSocket to
    /// that node (`url` with `/ws`) and send the same `join` there.
    Redirect {
        /// The room's node, e.g. `https://node2.example.org` (no trailing slash).
        url: String,
        /// The room.
        room: String,
    },
    /// The server ends this session.
    Leave {
        /// Why.
        reason: LeaveReason,
        /// What the client should do next.
        action: LeaveAction,
        /// With `reconnect`: how long to wait before joining again, in milliseconds (a hint;
        /// clients add jitter).
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect_after_ms: Option<u64>,
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

/// How long a client told to `reconnect` waits before it joins again, by default.
pub const RECONNECT_AFTER_MS: u64 = 1000;

impl ServerMsg {
    /// A `leave` that ends the session for good (action `disconnect`).
    pub fn leave(reason: LeaveReason) -> Self {
        ServerMsg::Leave {
            reason,
            action: LeaveAction::Disconnect,
            reconnect_after_ms: None,
        }
    }

    /// A `leave` for a server that is restarting: come back after a moment (action
    /// `reconnect`, reason `server_shutdown`).
    pub fn leave_to_reconnect() -> Self {
        ServerMsg::Leave {
            reason: LeaveReason::ServerShutdown,
            action: LeaveAction::Reconnect,
            reconnect_after_ms: Some(RECONNECT_AFTER_MS),
        }
    }

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

/// Encodes one client frame, with a `request_id` when given (the load tester and test clients
/// send through this).
pub fn encode_client_msg(msg: &ClientMsg, request_id: Option<&str>) -> String {
    let mut v = serde_json::to_value(msg).unwrap_or(serde_json::Value::Null);
    if let (Some(obj), Some(rid)) = (v.as_object_mut(), request_id) {
        obj.insert("request_id".into(), rid.into());
    }
    v.to_string()
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
    fn an_encoded_client_message_decodes_to_itself_with_its_request_id() {
        let msgs = [
            ClientMsg::Join {
                protocol: PROTOCOL_VERSION,
                token: "t".into(),
                password: None,
            },
            ClientMsg::Offer {
                sdp: "v=0".into(),
                sources: [("2".to_string(), Source::Screen)].into_iter().collect(),
            },
            ClientMsg::VideoSizes {
                tracks: vec![VideoSize {
                    track_id: "TR_1".into(),
                    width: 320,
                    height: 180,
                }],
            },
            ClientMsg::Ping {
                ts: serde_json::json!(12),
            },
            ClientMsg::Leave,
        ];
        for m in msgs {
            let text = encode_client_msg(&m, Some("r1"));
            assert_eq!(
                decode_client_msg(&text),
                Ok((m, Some("r1".into()))),
                "{text}"
            );
        }
    }

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
            r#"{"type":"chat","text":"hi","client_msg_id":"c1"}"#,
            r#"{"type":"join","protocol":1,"token":"t","password":"p"}"#,
            r#"{"type":"hand","raised":true}"#,
            r#"{"type":"typing"}"#,
            r#"{"type":"admit","participant_id":"PA_1"}"#,
            r#"{"type":"deny","participant_id":"PA_1"}"#,
            r#"{"type":"moderate","participant_id":"PA_1","action":"mute_audio"}"#,
            r#"{"type":"moderate","participant_id":"PA_1","action":"make_host"}"#,
            r#"{"type":"moderate","participant_id":"PA_1","action":"spotlight"}"#,
            r#"{"type":"moderate","participant_id":"PA_1","action":"unspotlight"}"#,
            r#"{"type":"room_settings","lobby":true}"#,
            r#"{"type":"room_settings","locked":false}"#,
            r#"{"type":"end_room"}"#,
            r#"{"type":"invite"}"#,
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

/// Bounded random and mutated input for [`decode_client_msg`], run as an ordinary test on the
/// stable compiler (the cargo-fuzz target `signaling_decode` explores further).
#[cfg(test)]
mod fuzz_smoke {
    use super::*;

    /// xorshift64*: deterministic, so a failure names its iteration.
    pub(crate) struct Rng(u64);
    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    const SEEDS: &[&str] = &[
        r#"{"type":"join","protocol":1,"token":"t","request_id":"r"}"#,
        r#"{"type":"resume","protocol":1,"token":"t","resume_token":"x"}"#,
        r#"{"type":"offer","sdp":"v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}"#,
        r#"{"type":"candidate","candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdp_mid":"0","sdp_m_line_index":0}"#,
        r#"{"type":"mute","kind":"audio","muted":true}"#,
        r#"{"type":"chat","text":"hi \u00e9\ud83d\ude00"}"#,
        r#"{"type":"ping","ts":[1,{"a":null}]}"#,
    ];

    #[test]
    fn the_decoder_survives_random_and_mutated_frames() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let alphabet = br#"{}[]":,\0123456789.-+eEtrufalsn typejoinrequest_id "#;
        for i in 0..20_000 {
            let mut bytes = SEEDS[i % SEEDS.len()].as_bytes().to_vec();
            for _ in 0..1 + rng.below(8) {
                match rng.below(5) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] = alphabet[rng.below(alphabet.len())];
                    }
                    1 if !bytes.is_empty() => {
                        bytes.truncate(rng.below(bytes.len()));
                    }
                    2 => {
                        let at = rng.below(bytes.len() + 1);
                        bytes.insert(at, alphabet[rng.below(alphabet.len())]);
                    }
                    3 => bytes.push(rng.next() as u8),
                    _ => {
                        // Deep nesting and long request ids.
                        let depth = rng.below(200);
                        let at = rng.below(bytes.len() + 1);
                        let nest: Vec<u8> = std::iter::repeat_n(b'[', depth).collect();
                        bytes.splice(at..at, nest);
                    }
                }
            }
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let rid = match decode_client_msg(text) {
                Ok((_, rid)) => rid,
                Err(e) => e.request_id,
            };
            assert!(rid.is_none_or(|r| r.len() <= 64), "iteration {i}: {text}");
        }
        let long_id = format!(r#"{{"type":"leave","request_id":"{}"}}"#, "x".repeat(65));
        assert_eq!(decode_client_msg(&long_id).map(|(_, r)| r), Ok(None));
    }
}
