//! One participant's session, as a state machine with no I/O.
//!
//! A [`Session`] is everything signaling knows about one WebSocket: where it is in the join,
//! what it may do, what it owes the client. It owns no socket, spawns no task and reads no
//! clock. The [driver](driver) feeds it [`Input`]s (a frame from the client, a message from the
//! room, an event from the media worker, the answer to a question it asked) together with the
//! time `now`, calls [`Session::handle_timeout`] when [`Session::poll_timeout`] is reached, and
//! performs the [`Output`]s it takes from [`Session::poll_output`]: a message to this client, a
//! change for the room, a command for the media worker, a question for the world (a token to
//! verify, the room's door, a store operation), a webhook, a metric, and at the end a Close
//! frame with its code. The unit tests in `session/tests.rs` run whole sessions this way, on
//! virtual time and without a runtime; the fuzz target `session` does the same with inputs
//! chosen by the fuzzer.
//!
//! ```text
//!             ┌──────────── Session (this file) ────────────┐
//!  frames ──▶ │ Handshake ─▶ (Lobby) ─▶ Joined ◀─▶ Detached │ ──▶ sends, room ops, media
//!  room   ──▶ │      answers to Ask(..) come back as Reply  │     commands, asks, webhooks,
//!  media  ──▶ │              time only as `now`             │     metrics, Close(code)
//!             └─────────────────────────────────────────────┘
//! ```
//!
//! ## The join path
//!
//! Everything a `join` goes through, in order, is in [`Session::on_join`] and the replies it
//! waits for (search for `Pending::`):
//!
//! 1. `Handshake`: the first message must be `join` (or `resume`) within `join_timeout`; the
//!    protocol version must match.
//! 2. [`Query::Token`]: the access token verifies, and is for the room of `/ws?room=` (when given).
//! 3. [`Query::Admission`]: the node is not draining (else the draining `leave`), and in a
//!    cluster the room lives here (else `redirect`).
//! 4. [`Query::Gate`]: the room's lock and password ([`Gate`]); admins pass.
//! 5. `Lobby` (a lobby room only): the knock goes to the deciders; the session waits for
//!    [`Input::Lobby`] (admitted, denied, room ended), answering pings, until `idle_timeout`.
//! 6. [`Query::Enter`]: the room registry takes the participant (or refuses: room full, too
//!    many rooms) and gives back the others, the chat history and the resume token.
//! 7. `Joined`: `joined` goes out, webhooks fire, knocks waiting are shown to a decider.
//!
//! A lost socket in `Joined` moves to `Detached` (messages kept, up to [`MAX_BACKLOG`]) until
//! a `resume` on a new socket brings it back ([`Input::Reattached`]) or `resume_window` passes.

pub(crate) mod driver;
mod host;
#[doc(hidden)]
pub mod sim;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use huddle_media::{ParticipantId, PeerEvent, Refusal as MediaRefusal, TrackId};
use tracing::{debug, info, warn};

use crate::chat::Refused;
use crate::limits::{Limit, Strikes, TokenBucket};
use crate::metrics::JoinFailure;
use crate::moderation::{Gate, LobbyOutcome};
use crate::protocol::{
    decode_client_msg, Attachment, ChatMessage, ClientMsg, ErrorCode, Grants, IceServer,
    LeaveAction, LeaveReason, MediaSlot, ParticipantInfo, QualityInfo, ServerMsg, Source,
    SpeakerInfo, TrackInfo, TrackKind, PROTOCOL_VERSION,
};
pub use crate::rooms::{RoomMsg, Shared};
use crate::token::{Claims, TokenError};
use crate::SignalingError;

pub(crate) use host::server_mute;

/// The limits a session enforces (from [`crate::SignalingConfig`]).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message answered normally.
    pub max_message_bytes: usize,
    /// Largest `offer` or `answer`.
    pub max_sdp_bytes: usize,
    /// The hard cap (the socket library refuses larger frames).
    pub hard_cap: usize,
    /// Messages per second (0: no limit).
    pub messages_per_sec: u32,
    /// Burst of messages.
    pub message_burst: u32,
    /// Strikes before the connection is closed.
    pub rate_limit_strikes: u32,
    /// Chat messages per minute (0: no limit).
    pub chat_per_minute: u32,
    /// Longest chat message, characters.
    pub chat_max_chars: usize,
    /// Silence that ends a session.
    pub idle_timeout: Duration,
    /// Time allowed for `join`.
    pub join_timeout: Duration,
    /// WebSocket ping period.
    pub ping_interval: Duration,
    /// How long a lost socket may be resumed (zero: never).
    pub resume_window: Duration,
}

impl Limits {
    /// The session limits of a configuration.
    pub fn from_config(c: &crate::SignalingConfig) -> Self {
        Limits {
            max_message_bytes: c.max_message_bytes,
            max_sdp_bytes: c.max_sdp_bytes,
            hard_cap: c.hard_cap(),
            messages_per_sec: c.messages_per_sec,
            message_burst: c.message_burst,
            rate_limit_strikes: c.rate_limit_strikes,
            chat_per_minute: c.chat_per_minute,
            chat_max_chars: c.chat_max_chars,
            idle_timeout: c.idle_timeout,
            join_timeout: c.join_timeout,
            ping_interval: c.ping_interval,
            resume_window: c.resume_window,
        }
    }
}

/// One thing that happened to the session.
#[derive(Debug)]
// Inputs are moved once, never stored in bulk.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// Something from the socket.
    Frame(Frame),
    /// A message the driver could not deliver (the socket failed while sending it).
    Unsent(Outgoing),
    /// The answer to the last [`Output::Ask`].
    Reply(Reply),
    /// A message from the room (another session, the room API, a shutdown).
    Room(RoomMsg),
    /// The lobby's decision on this session's knock.
    Lobby(LobbyOutcome),
    /// An event from the media worker for this participant.
    Media(PeerEvent),
    /// A `resume` on a new socket took this session back; `participants` is the room now,
    /// this participant left out.
    Reattached {
        /// Everyone else in the room.
        participants: Vec<ParticipantInfo>,
    },
}

/// What the socket gave.
#[derive(Debug)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame (not part of the protocol).
    Binary,
    /// A ping or a pong.
    Control,
    /// The client's Close frame (the driver has answered it).
    Close,
    /// The socket library refused a frame over the hard cap.
    OverCap,
    /// The socket ended or failed.
    Lost,
}

/// A question only the driver can answer; the answer comes back as [`Input::Reply`] before any
/// other input.
#[derive(Debug)]
pub enum Query {
    /// Verify an access token: [`Reply::Token`].
    Token(String),
    /// Whether this node takes joins for `room`: [`Reply::Admission`].
    Admission {
        /// The room.
        room: String,
    },
    /// The room's door for this joiner (lock, password, lobby): [`Reply::Gate`].
    Gate {
        /// The room.
        room: String,
        /// The token's admin grant.
        admin: bool,
        /// The password the joiner gave.
        password: Option<String>,
    },
    /// Make this participant a member of its room: [`Reply::Entered`].
    Enter {
        /// The verified token.
        claims: Claims,
    },
    /// Find the session `resume_token` names: [`Reply::ResumeFound`].
    Resume {
        /// `joined.resume_token`.
        resume_token: String,
        /// The token's room.
        room: String,
        /// The token's identity.
        identity: String,
    },
    /// A file uploaded to the room: [`Reply::Attachment`].
    Attachment {
        /// Its id.
        id: String,
    },
    /// A chat store operation: [`Reply::Stored`].
    Store(StoreOp),
    /// A host's or decider's request, applied to the room: [`Reply::Replies`].
    Host {
        /// `admit`, `deny`, `moderate`, `room_settings`, `end_room` or `invite`.
        msg: ClientMsg,
        /// Its request id.
        request_id: Option<String>,
    },
    /// A media command whose refusal the client hears of: [`Reply::Media`].
    Media(MediaCmd),
    /// Leave the room (and forget the resume slot): [`Reply::Left`].
    Leave {
        /// Why.
        reason: LeaveReason,
    },
}

/// Answers to [`Query`].
#[derive(Debug)]
pub enum Reply {
    /// The token's claims, or why not.
    Token(Result<Claims, TokenError>),
    /// Whether the node takes the join.
    Admission(Admission),
    /// The door.
    Gate(Gate),
    /// The room took the participant, or refused.
    Entered(Result<Entered, Refusal>),
    /// Whether the session to resume was found (the driver then has its handle).
    ResumeFound(bool),
    /// The attachment and who uploaded it.
    Attachment(Option<(Attachment, String)>),
    /// A stored chat message, a refusal, or a store failure.
    Stored(Result<Result<ChatMessage, Refused>, SignalingError>),
    /// Messages for this client (answers and errors).
    Replies(Vec<ServerMsg>),
    /// Whether media took the command.
    Media(Result<(), huddle_media::MediaError>),
    /// The participant left: whether it was a member, and whether the room closed with it.
    Left {
        /// It had entered the room.
        member: bool,
        /// It was the last one.
        closed: bool,
    },
}

/// Whether a node takes a join.
#[derive(Debug)]
pub enum Admission {
    /// Yes.
    Open,
    /// The server drains: send this `leave`.
    Draining(ServerMsg),
    /// The room lives elsewhere (`redirect`) or nowhere right now (`error`).
    Elsewhere(ServerMsg),
}

/// What the room registry answers to [`Query::Enter`].
#[derive(Debug)]
pub struct Entered {
    /// Everyone else in the room.
    pub others: Vec<ParticipantInfo>,
    /// This participant hosts the room.
    pub host: bool,
    /// The room's lobby is on.
    pub lobby: bool,
    /// The room is locked.
    pub locked: bool,
    /// Whom a host put in the spotlight.
    pub spotlight: Option<String>,
    /// The meeting is being recorded.
    pub recording: bool,
    /// Recent chat.
    pub history: Vec<ChatMessage>,
    /// ICE servers for this identity.
    pub ice_servers: Vec<IceServer>,
    /// The secret for `resume`.
    pub resume_token: String,
    /// `knock`s of people waiting, when this participant may answer them.
    pub knocks: Vec<ServerMsg>,
}

/// Why the room registry refused a member.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// The room has this many participants.
    Full(usize),
    /// The node has this many rooms.
    TooManyRooms(usize),
}

/// A chat store operation.
#[derive(Debug)]
pub enum StoreOp {
    /// A new message.
    Append {
        /// Cleaned text.
        text: String,
        /// An attachment.
        attachment: Option<Attachment>,
    },
    /// Edit one's own message.
    Edit {
        /// Which.
        message_id: i64,
        /// Cleaned text.
        text: String,
    },
    /// Delete one's own message.
    Delete {
        /// Which.
        message_id: i64,
    },
    /// React to a message.
    React {
        /// Which.
        message_id: i64,
        /// The emoji.
        emoji: String,
        /// Add or take back.
        active: bool,
    },
}

/// A command for the media worker about this participant.
#[derive(Debug)]
pub enum MediaCmd {
    /// The client's one offer.
    Offer {
        /// The token's grants.
        grants: Grants,
        /// SDP.
        sdp: String,
        /// Sources by mid.
        sources: Vec<(String, Source)>,
    },
    /// An answer to a server offer.
    Answer(String),
    /// A trickled candidate.
    Candidate(String),
    /// Sizes at which the client shows tracks.
    VideoSizes(Vec<(TrackId, u32, u32)>),
    /// The participant unmuted: forward its tracks of this kind again.
    Unpause(TrackKind),
    /// The client's addresses may have changed: restart ICE.
    IceRestart,
    /// The session is over.
    Remove,
}

/// A change of this member's public state (its `ParticipantInfo` in the room).
#[derive(Debug, Clone)]
pub enum Change {
    /// None.
    Nothing,
    /// Sharing a screen or not.
    Screen(bool),
    /// Muted or not.
    Muted(TrackKind, bool),
    /// Hand raised or not.
    Hand(bool),
    /// A track published.
    Track(TrackInfo),
}

/// Something for the room.
#[derive(Debug)]
// Outputs are moved once, never stored in bulk: no box for the broadcast's message.
#[allow(clippy::large_enum_variant)]
pub enum RoomOp {
    /// Change this member's state, then send `msg` to the others (everyone with `include_self`).
    Broadcast {
        /// The change.
        change: Change,
        /// The message.
        msg: ServerMsg,
        /// The sender gets it too.
        include_self: bool,
    },
    /// This joiner knocks: register it and tell those who may answer.
    Knock,
    /// This joiner gave up waiting: forget its knock (and tell the room it left, if it still
    /// waited).
    CancelKnock,
}

/// A webhook event about this participant or its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// The first participant opened the room.
    RoomStarted,
    /// This participant entered.
    Joined,
    /// This participant left.
    Left(LeaveReason),
    /// The room closed with it.
    RoomFinished,
}

/// A count for the metrics.
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    /// A client message, by type (`None`: it did not decode).
    MessageIn(Option<&'static str>),
    /// An operator limit was hit.
    Limit(Limit),
    /// A join failed.
    JoinFailed(JoinFailure),
    /// A join answered with `joined`.
    Joined,
    /// From `join` to connected media.
    JoinDuration(Duration),
    /// A chat message stored and delivered.
    Chat,
}

/// What the session wants done.
#[derive(Debug)]
pub enum Output {
    /// A message for this client.
    Send(Outgoing),
    /// A WebSocket ping.
    Ping,
    /// Something for the room.
    Room(RoomOp),
    /// A command for the media worker (failures only logged).
    Media(MediaCmd),
    /// A question; the answer must come back as [`Input::Reply`] before anything else.
    Ask(Query),
    /// A webhook event.
    Webhook(Hook),
    /// A metric.
    Metric(Metric),
    /// A good `resume`: hand this socket to the session found; this one is over.
    HandOver,
    /// Close the socket with this code; the session is over.
    Close(CloseCode),
}

/// A message for this client: the session's own, or a room message serialized once for all
/// its recipients.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// This session's message (serialized by the driver).
    Msg(Box<ServerMsg>),
    /// A room message, already serialized.
    Shared(Shared),
}

/// The status code of the server's Close frame (documented in docs/protocol.md, "Closing").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: the session ended normally (after `leave`, a fatal `error`, or the client's Close).
    Normal,
    /// 1001: the server is stopping (after `leave` `server_shutdown` with `disconnect`).
    GoingAway,
    /// 1008: over the message rate too often, or no `join` in time.
    Policy,
    /// 1009: a frame over the hard cap.
    TooBig,
    /// 1012: the server is restarting (after `leave` with action `reconnect`).
    Restart,
}

impl CloseCode {
    /// The number on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Restart => 1012,
        }
    }

    /// The Close frame's reason text.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "",
            CloseCode::GoingAway => "server stopping",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Restart => "server restarting",
        }
    }

    /// The code that goes with the server's `leave`.
    pub fn after(leave: &ServerMsg) -> CloseCode {
        match leave {
            ServerMsg::Leave {
                action: LeaveAction::Reconnect,
                ..
            } => CloseCode::Restart,
            ServerMsg::Leave {
                reason: LeaveReason::ServerShutdown,
                ..
            } => CloseCode::GoingAway,
            _ => CloseCode::Normal,
        }
    }
}

/// m-lines in the client's one offer, at most: its own tracks and a data channel need a few;
/// thousands would only cost the media worker time.
const MAX_OFFER_M_LINES: usize = 16;
/// Entries of one `video_sizes` message that are applied (more than any screen shows).
const MAX_VIDEO_SIZES: usize = 64;
/// Messages kept for a client that is away, at most.
pub const MAX_BACKLOG: usize = 2000;

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for `join` or `resume` until the deadline (or checking one).
    Handshake,
    /// Waiting in the room's lobby.
    Lobby,
    /// In the room, socket attached.
    Joined,
    /// In the room, socket lost since `since`, waiting for a `resume`.
    Detached {
        /// When the socket was lost.
        since: Instant,
    },
    /// Over: nothing more comes out.
    Closed,
}

/// How a joined session ends.
enum End {
    /// The client left or its socket closed.
    Gone(LeaveReason),
    /// The server ends it: `leave` with this reason first.
    Kick(LeaveReason),
    /// The room or the server ends it with this `leave`.
    Told(LeaveReason, Box<ServerMsg>),
}

/// What an [`Output::Ask`] waits for, with what the session needs to go on.
#[derive(Debug)]
enum Pending {
    JoinToken {
        password: Option<String>,
    },
    ResumeToken {
        resume_token: String,
        rid: Option<String>,
    },
    Resume {
        rid: Option<String>,
    },
    Admission {
        password: Option<String>,
    },
    Gate,
    Enter,
    Attachment {
        text: String,
        client_msg_id: Option<String>,
        rid: Option<String>,
    },
    Chat {
        client_msg_id: Option<String>,
        rid: Option<String>,
    },
    ChatChange {
        rid: Option<String>,
    },
    Host,
    Offer {
        rid: Option<String>,
    },
    Answer {
        rid: Option<String>,
    },
    Leave {
        reason: LeaveReason,
    },
}

/// What one client frame amounts to.
enum Read {
    Msg(ClientMsg, Option<String>),
    /// Already answered (an error), or nothing to do.
    Nothing,
    /// The socket is gone.
    Closed,
    /// The client broke a limit so badly that the connection closes (already told).
    Abuse,
}

/// The `request_id`s of the last `offer`, `answer` and `candidate` handed to media, echoed on
/// media's refusal of it (media answers in the order it was given commands).
#[derive(Debug, Default)]
struct MediaRids {
    offer: Option<String>,
    answer: Option<String>,
    candidate: Option<String>,
}

/// One participant's session: see the module docs.
pub struct Session {
    limits: Limits,
    pid: ParticipantId,
    room_hint: Option<String>,
    phase: Phase,
    pending: Option<Pending>,
    outputs: VecDeque<Output>,
    /// Messages kept while detached.
    backlog: VecDeque<Outgoing>,
    join_deadline: Instant,
    last_heard: Instant,
    next_ping: Instant,
    bucket: Option<TokenBucket>,
    strikes: Strikes,
    chat_bucket: Option<TokenBucket>,
    close_code: CloseCode,
    /// The `request_id` of the `join` (echoed on errors that refuse it).
    join_rid: Option<String>,
    claims: Option<Claims>,
    /// When the token of `join` verified, until media connects (for the join duration).
    join_started: Option<Instant>,
    offered: bool,
    media_rids: MediaRids,
}

impl Session {
    /// A session on a new socket, opened at `now` (`room_hint`: the `/ws?room=` parameter).
    pub fn new(
        limits: Limits,
        pid: ParticipantId,
        room_hint: Option<String>,
        now: Instant,
    ) -> Self {
        let bucket = (limits.messages_per_sec > 0).then(|| {
            TokenBucket::new(
                f64::from(limits.messages_per_sec),
                limits.message_burst.max(limits.messages_per_sec),
                now,
            )
        });
        let per_minute = limits.chat_per_minute;
        let chat_bucket = (per_minute > 0)
            .then(|| TokenBucket::new(f64::from(per_minute) / 60.0, per_minute.min(5), now));
        Session {
            join_deadline: now + limits.join_timeout,
            next_ping: now + limits.ping_interval,
            limits,
            pid,
            room_hint,
            phase: Phase::Handshake,
            pending: None,
            outputs: VecDeque::new(),
            backlog: VecDeque::new(),
            last_heard: now,
            bucket,
            strikes: Strikes::default(),
            chat_bucket,
            close_code: CloseCode::Normal,
            join_rid: None,
            claims: None,
            join_started: None,
            offered: false,
            media_rids: MediaRids::default(),
        }
    }

    /// Where the session is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The verified token, once `join` got that far.
    pub fn claims(&self) -> Option<&Claims> {
        self.claims.as_ref()
    }

    /// Whether the driver should read the socket (not while detached, asking or over).
    pub fn reading(&self) -> bool {
        self.pending.is_none()
            && matches!(self.phase, Phase::Handshake | Phase::Lobby | Phase::Joined)
    }

    /// Whether the session is over (after [`Output::Close`] or [`Output::HandOver`]).
    pub fn is_over(&self) -> bool {
        self.phase == Phase::Closed && self.pending.is_none()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.pending.is_some() {
            return None;
        }
        match self.phase {
            Phase::Handshake => Some(self.join_deadline),
            Phase::Lobby | Phase::Joined => Some(
                self.next_ping
                    .min(self.last_heard + self.limits.idle_timeout),
            ),
            Phase::Detached { since } => Some(since + self.limits.resume_window),
            Phase::Closed => None,
        }
    }

    /// Time passed: join deadline, pings, idle timeout, resume window.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.pending.is_some() {
            return;
        }
        match self.phase {
            Phase::Handshake => {
                if now >= self.join_deadline {
                    debug!("no join in time");
                    self.metric(Metric::JoinFailed(JoinFailure::Timeout));
                    self.close_code = CloseCode::Policy;
                    self.close();
                }
            }
            Phase::Lobby | Phase::Joined => {
                if now >= self.last_heard + self.limits.idle_timeout {
                    // Silence is a dead network: no resume window on top of the idle timeout.
                    info!("idle timeout");
                    if self.phase == Phase::Lobby {
                        self.out(Output::Room(RoomOp::CancelKnock));
                        self.close();
                    } else {
                        self.end(End::Kick(LeaveReason::Disconnected));
                    }
                    return;
                }
                if now >= self.next_ping {
                    self.out(Output::Ping);
                    self.next_ping = now + self.limits.ping_interval;
                }
            }
            Phase::Detached { since } => {
                if now >= since + self.limits.resume_window {
                    info!("no resume within the window");
                    self.end(End::Gone(LeaveReason::Disconnected));
                }
            }
            Phase::Closed => {}
        }
    }

    /// One input at `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        if self.phase == Phase::Closed && self.pending.is_none() {
            return;
        }
        match input {
            Input::Reply(r) => self.on_reply(now, r),
            Input::Frame(f) => {
                if !self.reading() {
                    return;
                }
                self.last_heard = now;
                let read = self.read(now, f);
                match self.phase {
                    Phase::Handshake => self.on_handshake(now, read),
                    Phase::Lobby => self.on_lobby(read),
                    Phase::Joined => self.on_joined(now, read),
                    Phase::Detached { .. } | Phase::Closed => {}
                }
            }
            Input::Unsent(msg) => self.unsent(now, msg),
            Input::Room(msg) => {
                if !self.in_room() {
                    return;
                }
                match msg {
                    RoomMsg::Leave(leave) => {
                        let reason = match &*leave {
                            ServerMsg::Leave { reason, .. } => *reason,
                            _ => LeaveReason::Disconnected,
                        };
                        self.end(End::Told(reason, leave));
                    }
                    RoomMsg::Shared(shared) => self.deliver(Outgoing::Shared(shared)),
                }
            }
            Input::Lobby(outcome) => self.on_decision(outcome),
            Input::Media(ev) => {
                if self.in_room() {
                    self.on_media(now, ev);
                }
            }
            Input::Reattached { participants } => self.reattached(now, participants),
        }
    }

    // ---- the socket side ----

    fn out(&mut self, o: Output) {
        self.outputs.push_back(o);
    }

    fn metric(&mut self, m: Metric) {
        self.out(Output::Metric(m));
    }

    /// A message of this session's for the client.
    fn send(&mut self, msg: ServerMsg) {
        self.deliver(Outgoing::Msg(Box::new(msg)));
    }

    /// A message for the client: sent, or kept while the socket is away.
    fn deliver(&mut self, msg: Outgoing) {
        match self.phase {
            Phase::Detached { .. } => {
                if self.backlog.len() >= MAX_BACKLOG {
                    warn!("too many messages kept for a client that is away");
                    return self.end(End::Gone(LeaveReason::Disconnected));
                }
                self.backlog.push_back(msg);
            }
            Phase::Closed if self.pending.is_none() => {}
            _ => self.out(Output::Send(msg)),
        }
    }

    fn error(&mut self, code: ErrorCode, message: impl Into<String>, rid: Option<String>) {
        self.send(ServerMsg::error(code, message, rid));
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.out(Output::Close(self.close_code));
    }

    fn in_room(&self) -> bool {
        matches!(self.phase, Phase::Joined | Phase::Detached { .. })
    }

    /// The driver could not send `msg`. In the room, with a resume window, the session waits
    /// for a `resume` and keeps `msg` and whatever else was on its way; otherwise it ends.
    fn unsent(&mut self, now: Instant, msg: Outgoing) {
        match self.phase {
            Phase::Joined if !self.limits.resume_window.is_zero() => {
                info!("socket lost; waiting for resume");
                self.phase = Phase::Detached { since: now };
                self.backlog.push_back(msg);
                let queued = std::mem::take(&mut self.outputs);
                for o in queued {
                    match o {
                        Output::Send(m) => self.backlog.push_back(m),
                        Output::Ping => {}
                        o => self.outputs.push_back(o),
                    }
                }
            }
            Phase::Joined => self.end(End::Gone(LeaveReason::Disconnected)),
            Phase::Detached { .. } => self.backlog.push_front(msg),
            // Before the room, the read that follows finds the socket closed.
            _ => {}
        }
    }

    /// The socket is lost in the room: wait for a resume when allowed.
    fn lost(&mut self, now: Instant) {
        if self.limits.resume_window.is_zero() {
            return self.end(End::Gone(LeaveReason::Disconnected));
        }
        info!("socket lost; waiting for resume");
        self.phase = Phase::Detached { since: now };
    }

    /// A frame, checked against the rate and the size limits and decoded.
    fn read(&mut self, now: Instant, frame: Frame) -> Read {
        let text = match frame {
            Frame::Text(t) => t,
            Frame::Close | Frame::Lost => return Read::Closed,
            Frame::Control => return Read::Nothing,
            Frame::OverCap => {
                // Closed at once (no resume: the client would send it again).
                self.metric(Metric::Limit(Limit::MessageSize));
                warn!("closing a connection that sent a frame over the hard cap");
                let cap = self.limits.hard_cap;
                self.error(
                    ErrorCode::MessageTooLarge,
                    format!("a frame over {cap} bytes: closing the connection"),
                    None,
                );
                self.close_code = CloseCode::TooBig;
                return Read::Abuse;
            }
            Frame::Binary => {
                if let Some(r) = self.admit(now, None) {
                    return r;
                }
                self.metric(Metric::MessageIn(None));
                self.error(
                    ErrorCode::BadMessage,
                    "binary frames are not part of the protocol",
                    None,
                );
                return Read::Nothing;
            }
        };
        // Offers and answers may be larger than other messages (up to max_sdp_bytes): their
        // SDP has an m-line per track the participant receives at once.
        let (max_bytes, max_sdp) = (self.limits.max_message_bytes, self.limits.max_sdp_bytes);
        let large = text.len() > max_bytes;
        let decoded = (!large || text.len() <= max_sdp).then(|| decode_client_msg(&text));
        let rid = match &decoded {
            Some(Ok((_, rid))) => rid.clone(),
            Some(Err(e)) => e.request_id.clone(),
            None => None,
        };
        // The rate applies to every message, read far enough to echo its request id.
        if let Some(r) = self.admit(now, rid.clone()) {
            return r;
        }
        let sdp = matches!(
            decoded,
            Some(Ok((ClientMsg::Offer { .. } | ClientMsg::Answer { .. }, _)))
        );
        let Some(decoded) = decoded.filter(|_| !large || sdp) else {
            self.metric(Metric::MessageIn(None));
            self.metric(Metric::Limit(Limit::MessageSize));
            self.error(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes is over the {max_bytes}-byte limit ({max_sdp} for an offer or answer)",
                    text.len(),
                ),
                rid,
            );
            return Read::Nothing;
        };
        match decoded {
            Ok((m, rid)) => {
                self.metric(Metric::MessageIn(Some(crate::metrics::client_msg_type(&m))));
                Read::Msg(m, rid)
            }
            Err(e) => {
                self.metric(Metric::MessageIn(None));
                self.send(e.to_msg());
                Read::Nothing
            }
        }
    }

    /// Takes a token for one client message. Over the rate: the message is dropped, the client
    /// is told once per strike, and the connection is closed at the configured strike count.
    fn admit(&mut self, now: Instant, rid: Option<String>) -> Option<Read> {
        let bucket = self.bucket.as_mut()?;
        if bucket.take(now) {
            return None;
        }
        self.metric(Metric::Limit(Limit::MessageRate));
        let (rate, max) = (
            self.limits.messages_per_sec,
            self.limits.rate_limit_strikes.max(1),
        );
        let Some(n) = self.strikes.overflow(now) else {
            return Some(Read::Nothing);
        };
        if n >= max {
            self.metric(Metric::Limit(Limit::MessageRateClose));
            warn!("closing a connection that keeps going over the message rate");
            self.error(
                ErrorCode::RateLimited,
                format!("over {rate} messages per second again: closing the connection"),
                rid,
            );
            self.close_code = CloseCode::Policy;
            return Some(Read::Abuse);
        }
        self.error(
            ErrorCode::RateLimited,
            format!("over {rate} messages per second: messages dropped (strike {n} of {max})"),
            rid,
        );
        Some(Read::Nothing)
    }

    fn ask(&mut self, pending: Pending, q: Query) {
        self.pending = Some(pending);
        self.out(Output::Ask(q));
    }

    // ---- the join path ----

    fn on_handshake(&mut self, now: Instant, read: Read) {
        let (msg, rid) = match read {
            Read::Closed | Read::Abuse => return self.close(),
            Read::Nothing => return,
            Read::Msg(m, rid) => (m, rid),
        };
        match msg {
            ClientMsg::Join {
                protocol,
                token,
                password,
            } => self.on_join(now, protocol, token, password, rid),
            ClientMsg::Resume {
                protocol,
                token,
                resume_token,
            } => {
                if protocol != PROTOCOL_VERSION {
                    let msg = format!("this server speaks protocol {PROTOCOL_VERSION}");
                    return self.error(ErrorCode::UnsupportedProtocol, msg, rid);
                }
                self.ask(
                    Pending::ResumeToken { resume_token, rid },
                    Query::Token(token),
                );
            }
            _ => self.error(ErrorCode::NotJoined, "send join first", rid),
        }
    }

    /// Step 1 of the join: the protocol version, then the token is verified.
    fn on_join(
        &mut self,
        _now: Instant,
        protocol: u32,
        token: String,
        password: Option<String>,
        rid: Option<String>,
    ) {
        self.join_rid.clone_from(&rid);
        if protocol != PROTOCOL_VERSION {
            self.error(
                ErrorCode::UnsupportedProtocol,
                format!("this server speaks protocol {PROTOCOL_VERSION}"),
                rid,
            );
            self.metric(Metric::JoinFailed(JoinFailure::UnsupportedProtocol));
            return self.close();
        }
        self.ask(Pending::JoinToken { password }, Query::Token(token));
    }

    fn on_reply(&mut self, now: Instant, reply: Reply) {
        let Some(pending) = self.pending.take() else {
            warn!(?reply, "a reply nobody asked for");
            return;
        };
        match (pending, reply) {
            // Step 2: the token, and its room.
            (Pending::JoinToken { password }, Reply::Token(verified)) => {
                let rid = self.join_rid.clone();
                let claims = match verified {
                    Ok(c) => c,
                    Err(e) => {
                        let (code, why) = token_refusal(e);
                        debug!(?code, "join refused");
                        self.metric(Metric::JoinFailed(why));
                        self.error(code, e.to_string(), rid);
                        return self.close();
                    }
                };
                if self.room_hint.as_deref().is_some_and(|r| r != claims.room)
                    || !crate::token::valid_room_name(&claims.room)
                {
                    self.error(
                        ErrorCode::WrongRoom,
                        "the access token is for another room",
                        rid,
                    );
                    self.metric(Metric::JoinFailed(JoinFailure::WrongRoom));
                    return self.close();
                }
                self.join_started = Some(now);
                let room = claims.room.clone();
                self.claims = Some(claims);
                self.ask(Pending::Admission { password }, Query::Admission { room });
            }
            // Step 3: this node takes the room.
            (Pending::Admission { password }, Reply::Admission(a)) => match a {
                Admission::Open => {
                    let Some(c) = &self.claims else {
                        return self.close();
                    };
                    let q = Query::Gate {
                        room: c.room.clone(),
                        admin: c.grants.admin,
                        password,
                    };
                    self.ask(Pending::Gate, q);
                }
                Admission::Draining(leave) => {
                    self.metric(Metric::JoinFailed(JoinFailure::ServerShutdown));
                    self.close_code = CloseCode::after(&leave);
                    self.send(leave);
                    self.close();
                }
                Admission::Elsewhere(mut msg) => {
                    if let ServerMsg::Error { request_id, .. } = &mut msg {
                        request_id.clone_from(&self.join_rid);
                    }
                    self.send(msg);
                    self.close();
                }
            },
            // Step 4: the door (lock, password, lobby).
            (Pending::Gate, Reply::Gate(gate)) => match gate {
                Gate::Open => self.ask(Pending::Enter, self.enter_query()),
                Gate::Refused(code, message) => {
                    debug!(?code, "join refused at the door");
                    self.error(code, message, self.join_rid.clone());
                    self.close();
                }
                Gate::Lobby => {
                    // Step 5: wait in the lobby (see on_lobby and on_decision).
                    self.phase = Phase::Lobby;
                    self.next_ping = now + self.limits.ping_interval;
                    self.out(Output::Room(RoomOp::Knock));
                    self.send(ServerMsg::Lobby {});
                    info!("waiting in the lobby");
                }
            },
            // Step 6: the room takes the participant.
            (Pending::Enter, Reply::Entered(entered)) => self.entered(now, entered),
            (Pending::ResumeToken { resume_token, rid }, Reply::Token(verified)) => {
                match verified {
                    Ok(c) => self.ask(
                        Pending::Resume { rid },
                        Query::Resume {
                            resume_token,
                            room: c.room,
                            identity: c.sub,
                        },
                    ),
                    Err(e) => self.error(token_refusal(e).0, e.to_string(), rid),
                }
            }
            (Pending::Resume { rid }, Reply::ResumeFound(found)) => {
                if found {
                    info!("resume accepted");
                    self.phase = Phase::Closed;
                    self.out(Output::HandOver);
                } else {
                    self.error(
                        ErrorCode::ResumeFailed,
                        "nothing to resume (the window passed or the token is not yours): send join",
                        rid,
                    );
                }
            }
            (
                Pending::Attachment {
                    text,
                    client_msg_id,
                    rid,
                },
                Reply::Attachment(found),
            ) => self.chat_with(text, Some(found), client_msg_id, rid),
            (Pending::Chat { client_msg_id, rid }, Reply::Stored(stored)) => match stored {
                Ok(Ok(message)) => {
                    self.metric(Metric::Chat);
                    // Others get the message; the sender's echo also carries its
                    // client_msg_id (the delivery acknowledgement).
                    self.broadcast(
                        Change::Nothing,
                        ServerMsg::Chat {
                            message: message.clone(),
                            client_msg_id: None,
                        },
                        false,
                    );
                    let client_msg_id = client_msg_id.filter(|c| c.len() <= 64);
                    self.send(ServerMsg::Chat {
                        message,
                        client_msg_id,
                    });
                }
                Ok(Err(_)) | Err(_) => {
                    if let Err(e) = stored {
                        warn!(error = %e, "chat message not stored");
                    }
                    self.error(ErrorCode::Internal, "the message could not be stored", rid);
                }
            },
            (Pending::ChatChange { rid }, Reply::Stored(stored)) => match stored {
                Ok(Ok(message)) => self.tell_all(ServerMsg::ChatUpdate { message }),
                Ok(Err(Refused::NotFound)) => self.bad(rid, "no such chat message"),
                Ok(Err(Refused::TooManyEmojis)) => self.bad(
                    rid,
                    "this message has as many different reactions as it may",
                ),
                Ok(Err(Refused::NotYours)) => self.error(
                    ErrorCode::Forbidden,
                    "only its sender may change a message",
                    rid,
                ),
                Err(e) => {
                    warn!(error = %e, "chat change not stored");
                    self.error(ErrorCode::Internal, "the change could not be stored", rid);
                }
            },
            (Pending::Host, Reply::Replies(msgs)) => {
                for m in msgs {
                    self.send(m);
                }
            }
            (Pending::Offer { rid }, Reply::Media(r)) => {
                if let Err(e) = r {
                    warn!(error = %e, "media refused the offer");
                    self.offered = false;
                    self.error(ErrorCode::Internal, "media is unavailable", rid);
                }
            }
            (Pending::Answer { rid }, Reply::Media(r)) => {
                if let Err(e) = r {
                    warn!(error = %e, "media refused the answer");
                    self.error(ErrorCode::Internal, "media is unavailable", rid);
                }
            }
            (Pending::Leave { reason }, Reply::Left { member, closed }) => {
                if member {
                    self.out(Output::Webhook(Hook::Left(reason)));
                    if closed {
                        self.out(Output::Webhook(Hook::RoomFinished));
                    }
                }
                self.out(Output::Media(MediaCmd::Remove));
                self.phase = Phase::Closed;
                self.out(Output::Close(self.close_code));
                info!(?reason, "left");
            }
            (pending, reply) => {
                // A driver bug, not a peer's doing: end the session rather than guess.
                warn!(?pending, ?reply, "a reply to another question");
                self.phase = Phase::Closed;
                self.out(Output::Close(CloseCode::Normal));
            }
        }
    }

    fn enter_query(&self) -> Query {
        Query::Enter {
            claims: self.claims.clone().unwrap_or_else(|| Claims {
                sub: String::new(),
                name: String::new(),
                room: String::new(),
                exp: 0,
                iat: 0,
                grants: Grants::default(),
            }),
        }
    }

    /// Step 5, while waiting: pings are answered, everything else waits; leaving, a lost
    /// socket or abuse cancel the knock.
    fn on_lobby(&mut self, read: Read) {
        match read {
            Read::Closed | Read::Abuse | Read::Msg(ClientMsg::Leave, _) => {
                self.out(Output::Room(RoomOp::CancelKnock));
                self.close();
            }
            Read::Msg(ClientMsg::Ping { ts }, _) => self.send(ServerMsg::Pong { ts }),
            Read::Msg(_, rid) => self.error(ErrorCode::NotJoined, "waiting in the lobby", rid),
            Read::Nothing => {}
        }
    }

    /// Step 5, decided.
    fn on_decision(&mut self, outcome: LobbyOutcome) {
        if self.phase != Phase::Lobby {
            return;
        }
        info!(?outcome, "lobby wait over");
        let reason = match outcome {
            LobbyOutcome::Admitted => return self.ask(Pending::Enter, self.enter_query()),
            LobbyOutcome::Denied => LeaveReason::Denied,
            LobbyOutcome::RoomEnded => LeaveReason::RoomEnded,
        };
        self.send(ServerMsg::leave(reason));
        self.close();
    }

    /// Step 6, answered; step 7: `joined`.
    fn entered(&mut self, now: Instant, entered: Result<Entered, Refusal>) {
        let rid = self.join_rid.clone();
        let e = match entered {
            Ok(e) => e,
            Err(Refusal::TooManyRooms(max)) => {
                self.metric(Metric::Limit(Limit::Rooms));
                let msg = format!("this server has its limit of {max} rooms");
                self.error(ErrorCode::TooManyRooms, msg, rid);
                return self.close();
            }
            Err(Refusal::Full(max)) => {
                self.metric(Metric::JoinFailed(JoinFailure::RoomFull));
                self.metric(Metric::Limit(Limit::Participants));
                let msg = format!("the room is full ({max} participants)");
                self.error(ErrorCode::RoomFull, msg, rid);
                return self.close();
            }
        };
        let Some(c) = self.claims.clone() else {
            return self.close();
        };
        info!(identity = %c.sub, "joined");
        self.phase = Phase::Joined;
        self.last_heard = now;
        self.next_ping = now + self.limits.ping_interval;
        if e.others.is_empty() {
            self.out(Output::Webhook(Hook::RoomStarted));
        }
        self.out(Output::Webhook(Hook::Joined));
        self.send(ServerMsg::Joined {
            protocol: PROTOCOL_VERSION,
            room: c.room,
            participant_id: self.pid.to_string(),
            identity: c.sub,
            name: c.name,
            grants: c.grants,
            participants: e.others,
            ice_servers: e.ice_servers,
            chat_history: e.history,
            resume_token: e.resume_token,
            host: e.host,
            lobby: e.lobby,
            locked: e.locked,
            spotlight: e.spotlight,
            recording: e.recording,
        });
        self.metric(Metric::Joined);
        for k in e.knocks {
            self.send(k);
        }
    }

    // ---- in the room ----

    fn end(&mut self, end: End) {
        if !self.in_room() {
            self.phase = Phase::Closed;
            return self.out(Output::Close(self.close_code));
        }
        let reason = match end {
            End::Gone(r) => r,
            End::Kick(r) => {
                self.send(ServerMsg::leave(r));
                r
            }
            End::Told(r, leave) => {
                self.close_code = CloseCode::after(&leave);
                self.send(*leave);
                r
            }
        };
        // Closed now, though the Leave is still asked: nothing else comes in.
        self.phase = Phase::Closed;
        self.ask(Pending::Leave { reason }, Query::Leave { reason });
    }

    fn broadcast(&mut self, change: Change, msg: ServerMsg, include_self: bool) {
        self.out(Output::Room(RoomOp::Broadcast {
            change,
            msg,
            include_self,
        }));
    }

    fn tell_all(&mut self, msg: ServerMsg) {
        self.broadcast(Change::Nothing, msg, true);
    }

    fn bad(&mut self, rid: Option<String>, what: &str) {
        self.error(ErrorCode::BadMessage, what, rid);
    }

    fn grants(&self) -> Grants {
        self.claims.as_ref().map(|c| c.grants).unwrap_or_default()
    }

    /// A `resume` brought a new socket: `resumed`, then what was kept, then an ICE restart
    /// (the client's addresses may have changed with its network).
    fn reattached(&mut self, now: Instant, participants: Vec<ParticipantInfo>) {
        // A resume may also come before this side noticed the old socket was gone.
        let since = match self.phase {
            Phase::Detached { since } => since,
            Phase::Joined => now,
            _ => return,
        };
        info!(away = ?now.saturating_duration_since(since), kept = self.backlog.len(), "resumed");
        self.phase = Phase::Joined;
        self.last_heard = now;
        self.next_ping = now + self.limits.ping_interval;
        self.out(Output::Send(Outgoing::Msg(Box::new(ServerMsg::Resumed {
            participant_id: self.pid.to_string(),
            participants,
        }))));
        for m in std::mem::take(&mut self.backlog) {
            self.out(Output::Send(m));
        }
        if self.offered {
            self.out(Output::Media(MediaCmd::IceRestart));
        }
    }

    fn on_joined(&mut self, now: Instant, read: Read) {
        let (msg, rid) = match read {
            Read::Closed => return self.lost(now),
            Read::Abuse => return self.end(End::Gone(LeaveReason::Removed)),
            Read::Nothing => return,
            Read::Msg(m, rid) => (m, rid),
        };
        let pid = self.pid.to_string();
        match msg {
            ClientMsg::Join { .. } | ClientMsg::Resume { .. } => {
                self.error(ErrorCode::AlreadyJoined, "already joined", rid)
            }
            ClientMsg::Offer { sdp, sources } => {
                if self.offered {
                    self.error(
                        ErrorCode::InvalidSdp,
                        "the client offers once; answer the server's offers instead",
                        rid,
                    );
                } else if sdp.lines().filter(|l| l.starts_with("m=")).count() > MAX_OFFER_M_LINES {
                    self.error(
                        ErrorCode::InvalidSdp,
                        format!("an offer has at most {MAX_OFFER_M_LINES} m-lines"),
                        rid,
                    );
                } else if !self.grants().publish && sdp_sends_media(&sdp) {
                    self.error(ErrorCode::Forbidden, "this token may not publish", rid);
                } else {
                    self.media_rids.offer.clone_from(&rid);
                    self.offered = true;
                    let cmd = MediaCmd::Offer {
                        grants: self.grants(),
                        sdp,
                        sources: sources.into_iter().collect(),
                    };
                    self.ask(Pending::Offer { rid }, Query::Media(cmd));
                }
            }
            ClientMsg::Answer { sdp } => {
                self.media_rids.answer.clone_from(&rid);
                self.ask(Pending::Answer { rid }, Query::Media(MediaCmd::Answer(sdp)));
            }
            ClientMsg::Candidate { candidate, .. } => {
                if !self.offered {
                    self.error(
                        ErrorCode::InvalidCandidate,
                        "send the offer before candidates",
                        rid,
                    );
                } else {
                    self.media_rids.candidate.clone_from(&rid);
                    self.out(Output::Media(MediaCmd::Candidate(candidate)));
                }
            }
            ClientMsg::VideoSizes { tracks } => {
                let sizes = tracks
                    .iter()
                    .filter_map(|t| {
                        let id: TrackId = t.track_id.parse().ok()?;
                        Some((id, t.width.min(16_384), t.height.min(16_384)))
                    })
                    .take(MAX_VIDEO_SIZES)
                    .collect();
                self.out(Output::Media(MediaCmd::VideoSizes(sizes)));
            }
            ClientMsg::Screen { sharing } => {
                let msg = ServerMsg::Screen {
                    participant_id: pid,
                    sharing,
                };
                self.broadcast(Change::Screen(sharing), msg, false);
            }
            ClientMsg::Mute { kind, muted } => {
                if !muted {
                    // Undo a moderator's mute, if there was one: the participant may unmute.
                    self.out(Output::Media(MediaCmd::Unpause(kind)));
                }
                let msg = ServerMsg::Mute {
                    participant_id: pid,
                    kind,
                    muted,
                    by_server: false,
                };
                self.broadcast(Change::Muted(kind, muted), msg, false);
            }
            ClientMsg::Chat {
                text,
                client_msg_id,
                attachment_id,
            } => self.chat(now, text, client_msg_id, attachment_id, rid),
            m @ (ClientMsg::ChatEdit { .. }
            | ClientMsg::ChatDelete { .. }
            | ClientMsg::React { .. }
            | ClientMsg::TileReaction { .. }) => self.rich_chat(m, rid),
            ClientMsg::Hand { raised } => {
                let msg = ServerMsg::Hand {
                    participant_id: pid,
                    raised,
                };
                self.broadcast(Change::Hand(raised), msg, true);
            }
            ClientMsg::Typing { active } => {
                if !self.grants().chat {
                    return self.error(ErrorCode::Forbidden, "this token may not chat", rid);
                }
                let msg = ServerMsg::Typing {
                    participant_id: pid,
                    active,
                };
                self.broadcast(Change::Nothing, msg, false);
            }
            m @ (ClientMsg::Admit { .. }
            | ClientMsg::Deny { .. }
            | ClientMsg::Moderate { .. }
            | ClientMsg::RoomSettings { .. }
            | ClientMsg::Recording { .. }
            | ClientMsg::EndRoom
            | ClientMsg::Invite) => self.ask(
                Pending::Host,
                Query::Host {
                    msg: m,
                    request_id: rid,
                },
            ),
            ClientMsg::Leave => self.end(End::Gone(LeaveReason::Left)),
            ClientMsg::Ping { ts } => self.send(ServerMsg::Pong { ts }),
        }
    }

    fn chat(
        &mut self,
        now: Instant,
        text: String,
        client_msg_id: Option<String>,
        attachment_id: Option<String>,
        rid: Option<String>,
    ) {
        if !self.grants().chat {
            return self.error(ErrorCode::Forbidden, "this token may not chat", rid);
        }
        if let Some(b) = &mut self.chat_bucket {
            if !b.take(now) {
                self.metric(Metric::Limit(Limit::ChatRate));
                let per_minute = self.limits.chat_per_minute;
                return self.error(
                    ErrorCode::RateLimited,
                    format!("at most {per_minute} chat messages a minute: not sent"),
                    rid,
                );
            }
        }
        let text = crate::text::clean_chat_text(&text);
        match attachment_id {
            Some(id) => self.ask(
                Pending::Attachment {
                    text,
                    client_msg_id,
                    rid,
                },
                Query::Attachment { id },
            ),
            None => self.chat_with(text, None, client_msg_id, rid),
        }
    }

    /// A chat message with its attachment looked up (`found`: `None` without an attachment,
    /// `Some(None)` when the file is not in the room, else the file and its uploader).
    fn chat_with(
        &mut self,
        text: String,
        found: Option<Option<(Attachment, String)>>,
        client_msg_id: Option<String>,
        rid: Option<String>,
    ) {
        let me = self.claims.as_ref().map(|c| c.sub.as_str()).unwrap_or("");
        let attachment = match found {
            None => None,
            Some(Some((a, uploader))) if uploader == me => Some(a),
            Some(Some(_)) => {
                return self.error(
                    ErrorCode::NotYourFile,
                    "only the participant who uploaded a file may attach it",
                    rid,
                )
            }
            Some(None) => return self.bad(rid, "no such file in this room"),
        };
        let max = self.limits.chat_max_chars;
        if (text.is_empty() && attachment.is_none()) || text.chars().count() > max {
            return self.bad(rid, &format!("a chat message has 1 to {max} characters"));
        }
        self.ask(
            Pending::Chat { client_msg_id, rid },
            Query::Store(StoreOp::Append { text, attachment }),
        );
    }

    /// `chat_edit`, `chat_delete`, `react`, `tile_reaction`.
    fn rich_chat(&mut self, m: ClientMsg, rid: Option<String>) {
        if !self.grants().chat {
            return self.error(ErrorCode::Forbidden, "this token may not chat", rid);
        }
        let max = self.limits.chat_max_chars;
        let op = match m {
            ClientMsg::TileReaction { emoji } => {
                if !crate::chat::valid_emoji(&emoji) {
                    return self.bad(rid, "a reaction is one emoji");
                }
                let msg = ServerMsg::TileReaction {
                    participant_id: self.pid.to_string(),
                    emoji,
                };
                return self.tell_all(msg);
            }
            ClientMsg::React {
                message_id,
                emoji,
                active,
            } => {
                if !crate::chat::valid_emoji(&emoji) {
                    return self.bad(rid, "a reaction is one emoji");
                }
                StoreOp::React {
                    message_id,
                    emoji,
                    active,
                }
            }
            ClientMsg::ChatEdit { message_id, text } => {
                let text = crate::text::clean_chat_text(&text);
                if text.is_empty() || text.chars().count() > max {
                    return self.bad(rid, &format!("a chat message has 1 to {max} characters"));
                }
                StoreOp::Edit { message_id, text }
            }
            ClientMsg::ChatDelete { message_id } => StoreOp::Delete { message_id },
            _ => return,
        };
        self.ask(Pending::ChatChange { rid }, Query::Store(op));
    }

    fn on_media(&mut self, now: Instant, ev: PeerEvent) {
        match ev {
            PeerEvent::Answer { sdp } => {
                let sdp = with_end_of_candidates(sdp);
                self.send(ServerMsg::Answer { sdp });
            }
            PeerEvent::Offer { sdp } => {
                let sdp = with_end_of_candidates(sdp);
                self.send(ServerMsg::Offer { sdp });
            }
            PeerEvent::Connected => {
                if let Some(t) = self.join_started.take() {
                    let took = now.saturating_duration_since(t);
                    self.metric(Metric::JoinDuration(took));
                    info!(join_ms = took.as_millis() as u64, "media connected");
                } else {
                    info!("media connected");
                }
            }
            PeerEvent::Slots { slots } => {
                let slots = slots
                    .into_iter()
                    .map(|s| MediaSlot {
                        mid: s.mid,
                        kind: s.kind,
                        participant_id: s.track.map(|t| t.participant.to_string()),
                        track_id: s.track.map(|t| t.track_id.to_string()),
                        source: s.track.map(|t| t.source),
                    })
                    .collect();
                self.send(ServerMsg::MediaSlots { slots });
            }
            PeerEvent::Layers { track_id, active } => {
                let track_id = track_id.to_string();
                self.send(ServerMsg::Layers { track_id, active });
            }
            PeerEvent::Speakers { speakers } => {
                let speakers = speakers
                    .iter()
                    .map(|s| SpeakerInfo {
                        participant_id: s.participant.to_string(),
                        level: f32::from(s.level) / 100.0,
                    })
                    .collect();
                self.send(ServerMsg::Speakers { speakers });
            }
            PeerEvent::Quality { participants } => {
                let participants = participants
                    .iter()
                    .map(|(p, q)| QualityInfo {
                        participant_id: p.to_string(),
                        quality: q.as_str().to_string(),
                    })
                    .collect();
                self.send(ServerMsg::Quality { participants });
            }
            PeerEvent::TrackPublished {
                track_id,
                kind,
                source,
            } => {
                let track = TrackInfo {
                    track_id: track_id.to_string(),
                    kind,
                    source,
                };
                let msg = ServerMsg::TrackPublished {
                    participant_id: self.pid.to_string(),
                    track: track.clone(),
                };
                self.broadcast(Change::Track(track), msg, false);
            }
            PeerEvent::Error { refusal, message } => {
                // Media's own text names parser internals: it goes to the log, the client gets
                // a fixed sentence and the request id of the message media refused.
                info!(?refusal, detail = %message, "media refused");
                let rids = &mut self.media_rids;
                let (code, text, rid) = match refusal {
                    MediaRefusal::Offer => {
                        // The offer was refused: the client may send a corrected one.
                        self.offered = false;
                        let text = "the offer could not be parsed or applied";
                        (ErrorCode::InvalidSdp, text.to_string(), rids.offer.take())
                    }
                    MediaRefusal::Answer => {
                        let text = "the answer could not be parsed or applied";
                        (ErrorCode::InvalidSdp, text.to_string(), rids.answer.take())
                    }
                    MediaRefusal::Candidate => {
                        let text = "the candidate could not be parsed";
                        let rid = rids.candidate.take();
                        (ErrorCode::InvalidCandidate, text.to_string(), rid)
                    }
                    // Not a reply: a track arrived over the limit (the text names the limit and
                    // the track's mid, nothing internal).
                    MediaRefusal::TooManyTracks { .. } => (ErrorCode::TooManyTracks, message, None),
                    _ => (ErrorCode::Internal, "internal error".to_string(), None),
                };
                self.error(code, text, rid);
            }
            PeerEvent::Closed { reason } => {
                info!(?reason, "media connection closed");
                if self.join_started.is_some() {
                    self.metric(Metric::JoinFailed(match reason {
                        huddle_media::CloseReason::ConnectTimeout => JoinFailure::MediaTimeout,
                        _ => JoinFailure::MediaFailed,
                    }));
                }
                self.end(End::Kick(LeaveReason::Disconnected));
            }
        }
    }
}

/// The error code and the join-failure metric of a refused token.
fn token_refusal(e: TokenError) -> (ErrorCode, JoinFailure) {
    match e {
        TokenError::Expired => (ErrorCode::TokenExpired, JoinFailure::TokenExpired),
        TokenError::Invalid | TokenError::NotYetValid | TokenError::TooLong => {
            (ErrorCode::InvalidToken, JoinFailure::InvalidToken)
        }
    }
}

/// Whether an SDP offers to send audio or video (for tokens without the publish grant).
fn sdp_sends_media(sdp: &str) -> bool {
    let mut in_media = false;
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(m) = line.strip_prefix("m=") {
            in_media = m.starts_with("audio") || m.starts_with("video");
        } else if in_media && (line == "a=sendrecv" || line == "a=sendonly") {
            return true;
        }
    }
    false
}

/// The server is ICE-lite and knows all its candidates when it writes an SDP: each m-section
/// that carries candidates gets `a=end-of-candidates` after the last one (str0m does not write
/// it; clients such as aiortc wait for it). With BUNDLE only the first m-section has them.
fn with_end_of_candidates(sdp: String) -> String {
    if sdp.contains("a=end-of-candidates") {
        return sdp;
    }
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut pending = false;
    for line in sdp.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\r', '\n']);
        if pending && !bare.starts_with("a=candidate:") {
            out.push_str("a=end-of-candidates\r\n");
            pending = false;
        }
        if bare.starts_with("a=candidate:") {
            pending = true;
        }
        out.push_str(line);
        if pending && !line.ends_with('\n') {
            out.push_str("\r\n");
        }
    }
    if pending {
        out.push_str("a=end-of-candidates\r\n");
    }
    out
}
