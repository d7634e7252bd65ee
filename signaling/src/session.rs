//! One participant's WebSocket session.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use huddle_media::{ParticipantId, PeerEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::limits::{Limit, Strikes, TokenBucket};
use crate::metrics::JoinFailure;
use crate::protocol::{
    decode_client_msg, ClientMsg, ErrorCode, LeaveAction, LeaveReason, MediaSlot, ParticipantInfo,
    QualityInfo, ServerMsg, SpeakerInfo, TrackInfo, TrackKind, PROTOCOL_VERSION,
};
use crate::rooms::JoinRefused;
use crate::token::{Claims, TokenError};
use crate::AppState;

mod door;
mod rich;
pub(crate) use door::server_mute;

/// What ends a session, and whether the client is told to leave.
enum End {
    /// Client left or closed the socket.
    Gone(LeaveReason),
    /// We end it: send `leave` with this reason, then close.
    Kick(LeaveReason),
    /// The room or the server ends it: send this `leave` as it is, then close.
    Told(LeaveReason, Box<ServerMsg>),
}

pub(crate) async fn run(socket: WebSocket, state: AppState, room_hint: Option<String>) {
    let _open = state.inner.ops.connection();
    let mut conn = Conn::new(socket, &state);
    let Some((claims, pid, password)) = handshake(&mut conn, &state, room_hint).await else {
        if let Some(session) = conn.handoff.take() {
            // A good `resume`: the socket now belongs to the waiting session.
            if let Err(e) = session.try_send(conn.socket) {
                let _ = e.into_inner().close().await;
            }
            return;
        }
        conn.close().await;
        return;
    };
    let join_started = Instant::now();
    if state.is_draining() {
        state
            .inner
            .ops
            .metrics
            .join_failed(JoinFailure::ServerShutdown);
        let leave = state.farewell();
        let _ = conn.send(&leave).await;
        conn.close_code = CloseCode::after(&leave);
        conn.close().await;
        return;
    }
    // Cluster mode: a room another node owns is joined there.
    if let Some(mut msg) = crate::cluster::instead_of_join(&state, &claims.room).await {
        if let ServerMsg::Error { request_id, .. } = &mut msg {
            request_id.clone_from(&conn.join_rid);
        }
        let _ = conn.send(&msg).await;
        conn.close().await;
        return;
    }
    let span = tracing::info_span!("participant", id = %pid, room = %claims.room);
    async move {
        if door::pass(&mut conn, &state, &claims, pid, password.as_deref())
            .await
            .is_err()
        {
            conn.close().await;
            return;
        }
        info!(identity = %claims.sub, "joined");
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let (resume_token, resume_rx) =
            state.inner.resumes.register(pid, &claims.room, &claims.sub);
        let mut s = Session {
            resume_token,
            resume_rx,
            state: state.clone(),
            conn,
            claims,
            pid,
            offered: false,
            media_tx,
            chat_bucket: chat_bucket(&state),
            join_started: Some(join_started),
            media_rids: MediaRids::default(),
        };
        let end = match s.enter(inbox_tx).await {
            Ok(()) => s.run(inbox, media_rx).await,
            Err(end) => end,
        };
        s.state.inner.resumes.remove(&s.resume_token);
        let reason = match end {
            End::Gone(r) => r,
            End::Kick(r) => {
                let _ = s.conn.send(&ServerMsg::leave(r)).await;
                r
            }
            End::Told(r, leave) => {
                let _ = s.conn.send(&leave).await;
                s.conn.close_code = CloseCode::after(&leave);
                r
            }
        };
        let closed = s.state.inner.rooms.leave(&s.claims.room, pid, reason);
        s.left(reason, closed);
        s.state.inner.media.remove(&s.claims.room, pid);
        s.conn.close().await;
        info!(?reason, "left");
    }
    .instrument(span)
    .await
}

struct Conn {
    socket: WebSocket,
    /// Since when the socket is lost (the session waits for a `resume`); messages for the
    /// client are kept in `backlog` meanwhile.
    detached: Option<Instant>,
    backlog: Vec<String>,
    /// Set by a good `resume` in the handshake: the session that takes this socket.
    handoff: Option<mpsc::Sender<WebSocket>>,
    state: AppState,
    /// The connection's message rate; `None` without a limit.
    bucket: Option<TokenBucket>,
    strikes: Strikes,
    /// The status code of the Close frame that ends this connection.
    close_code: CloseCode,
    /// The `request_id` of the `join` (echoed on errors that refuse it).
    join_rid: Option<String>,
}

/// What one read from the socket gave.
enum Read {
    Msg(ClientMsg, Option<String>),
    /// A bad frame, already answered with an error.
    Bad,
    /// Pings, pongs, binary frames: nothing to do.
    Nothing,
    Closed,
    /// Over the message rate too often: already told, close the connection.
    Abuse,
}

impl Conn {
    fn new(socket: WebSocket, state: &AppState) -> Self {
        let cfg = &state.inner.config;
        let bucket = (cfg.messages_per_sec > 0).then(|| {
            TokenBucket::new(
                f64::from(cfg.messages_per_sec),
                cfg.message_burst.max(cfg.messages_per_sec),
                std::time::Instant::now(),
            )
        });
        Conn {
            socket,
            detached: None,
            backlog: Vec::new(),
            handoff: None,
            state: state.clone(),
            bucket,
            strikes: Strikes::default(),
            close_code: CloseCode::Normal,
            join_rid: None,
        }
    }

    async fn send(&mut self, msg: &ServerMsg) -> Result<(), ()> {
        self.state.inner.ops.metrics.message_out(msg);
        let text = serde_json::to_string(msg).map_err(|_| ())?;
        if self.detached.is_some() {
            return self.keep(text);
        }
        let sent = self
            .send_frame(Message::Text(Utf8Bytes::from(text.clone())))
            .await;
        if sent.is_err() && self.detach() {
            return self.keep(text);
        }
        sent
    }

    /// Keeps a message for a client that is away; too many and the session ends.
    fn keep(&mut self, text: String) -> Result<(), ()> {
        if self.backlog.len() >= MAX_BACKLOG {
            return Err(());
        }
        self.backlog.push(text);
        Ok(())
    }

    /// The socket is lost: wait for a `resume` when the configuration allows it (returns
    /// whether the session is now waiting).
    fn detach(&mut self) -> bool {
        if self.state.inner.config.resume_window.is_zero() {
            return false;
        }
        if self.detached.is_none() {
            info!("socket lost; waiting for resume");
            self.detached = Some(Instant::now());
        }
        true
    }

    /// A resumed client's new socket; the old one is dropped.
    fn attach(&mut self, socket: WebSocket) {
        self.socket = socket;
        self.detached = None;
    }

    /// Sends what was kept while the client was away.
    async fn flush_backlog(&mut self) -> Result<(), ()> {
        let kept = std::mem::take(&mut self.backlog);
        let mut rest = kept.into_iter();
        for text in rest.by_ref() {
            if self
                .send_frame(Message::Text(Utf8Bytes::from(text.clone())))
                .await
                .is_err()
            {
                self.backlog.push(text);
                self.backlog.extend(rest);
                return if self.detach() { Ok(()) } else { Err(()) };
            }
        }
        Ok(())
    }

    /// Sends a frame; a peer that does not take it within the idle timeout counts as gone
    /// (a client that stops reading must not stall its session).
    async fn send_frame(&mut self, frame: Message) -> Result<(), ()> {
        let limit = self.state.inner.config.idle_timeout;
        match tokio::time::timeout(limit, self.socket.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Takes a token for one client message. Over the rate: the message is dropped, the client
    /// is told once per strike, and the connection is closed at the configured strike count.
    async fn admit(&mut self, rid: Option<String>) -> Option<Read> {
        let now = std::time::Instant::now();
        let bucket = self.bucket.as_mut()?;
        if bucket.take(now) {
            return None;
        }
        let counters = &self.state.inner.counters;
        counters.hit(Limit::MessageRate);
        let cfg = &self.state.inner.config;
        let (rate, max) = (cfg.messages_per_sec, cfg.rate_limit_strikes.max(1));
        let Some(n) = self.strikes.overflow(now) else {
            return Some(Read::Bad);
        };
        if n >= max {
            counters.hit(Limit::MessageRateClose);
            warn!("closing a connection that keeps going over the message rate");
            self.error(
                ErrorCode::RateLimited,
                format!("over {rate} messages per second again: closing the connection"),
                rid,
            )
            .await;
            self.close_code = CloseCode::Policy;
            return Some(Read::Abuse);
        }
        self.error(
            ErrorCode::RateLimited,
            format!("over {rate} messages per second: messages dropped (strike {n} of {max})"),
            rid,
        )
        .await;
        Some(Read::Bad)
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        message: impl Into<String>,
        request_id: Option<String>,
    ) {
        let _ = self
            .send(&ServerMsg::error(code, message, request_id))
            .await;
    }

    async fn read(&mut self) -> Read {
        if self.detached.is_some() {
            // Nothing to read until a resume brings a new socket.
            return std::future::pending().await;
        }
        let frame = match self.socket.next().await {
            None => return Read::Closed,
            Some(Err(e)) => {
                if over_hard_cap(e) {
                    // The socket library stopped reading a frame over the hard cap: close at
                    // once (no resume: the client would send it again).
                    self.state.inner.counters.hit(Limit::MessageSize);
                    warn!("closing a connection that sent a frame over the hard cap");
                    let cap = self.state.inner.config.hard_cap();
                    self.error(
                        ErrorCode::MessageTooLarge,
                        format!("a frame over {cap} bytes: closing the connection"),
                        None,
                    )
                    .await;
                    self.close_code = CloseCode::TooBig;
                    return Read::Abuse;
                }
                return Read::Closed;
            }
            Some(Ok(f)) => f,
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(_) => {
                // The socket library has queued the answering Close frame: send it.
                let limit = self.state.inner.config.idle_timeout;
                let _ = tokio::time::timeout(limit, self.socket.flush()).await;
                return Read::Closed;
            }
            Message::Binary(_) => {
                if let Some(r) = self.admit(None).await {
                    return r;
                }
                self.state.inner.ops.metrics.message_in(None);
                self.error(
                    ErrorCode::BadMessage,
                    "binary frames are not part of the protocol",
                    None,
                )
                .await;
                return Read::Bad;
            }
            Message::Ping(_) | Message::Pong(_) => return Read::Nothing,
        };
        // Offers and answers may be larger than other messages (up to max_sdp_bytes): their
        // SDP has an m-line per track the participant receives at once.
        let (max_bytes, max_sdp) = (
            self.state.inner.config.max_message_bytes,
            self.state.inner.config.max_sdp_bytes,
        );
        let large = text.len() > max_bytes;
        let decoded = (!large || text.len() <= max_sdp).then(|| decode_client_msg(text.as_str()));
        let rid = match &decoded {
            Some(Ok((_, rid))) => rid.clone(),
            Some(Err(e)) => e.request_id.clone(),
            None => None,
        };
        // The rate applies to every message, read far enough to echo its request id.
        if let Some(r) = self.admit(rid.clone()).await {
            return r;
        }
        let sdp = matches!(
            decoded,
            Some(Ok((ClientMsg::Offer { .. } | ClientMsg::Answer { .. }, _)))
        );
        let Some(decoded) = decoded.filter(|_| !large || sdp) else {
            self.state.inner.ops.metrics.message_in(None);
            self.state.inner.counters.hit(Limit::MessageSize);
            self.error(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes is over the {max_bytes}-byte limit ({max_sdp} for an offer or answer)",
                    text.len(),
                ),
                rid,
            )
            .await;
            return Read::Bad;
        };
        let metrics = &self.state.inner.ops.metrics;
        metrics.message_in(decoded.as_ref().ok().map(|(m, _)| m));
        match decoded {
            Ok((m, rid)) => Read::Msg(m, rid),
            Err(e) => {
                let _ = self.send(&e.to_msg()).await;
                Read::Bad
            }
        }
    }

    /// Sends a Close frame with `self.close_code` (best effort) and closes the socket.
    async fn close(&mut self) {
        let frame = CloseFrame {
            code: self.close_code.code(),
            reason: Utf8Bytes::from_static(self.close_code.reason()),
        };
        let sent = self.send_frame(Message::Close(Some(frame))).await.is_ok();
        if sent && self.close_code == CloseCode::TooBig {
            // The rest of the frame over the cap is still unread (the socket library reads no
            // more after refusing it), and closing TCP with unread bytes resets the
            // connection, which can cost the client our Close frame: give it time to read it.
            tokio::time::sleep(CLOSE_LINGER).await;
        } else if sent {
            // Wait briefly for the client's answering Close, as RFC 6455 has it.
            let socket = &mut self.socket;
            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                loop {
                    match socket.next().await {
                        None | Some(Ok(Message::Close(_))) => break,
                        Some(Ok(_)) => {}
                        Some(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
            .await;
        }
        let _ = self.socket.close().await;
    }
}

/// Whether a read error is the socket library refusing a frame over the hard cap.
fn over_hard_cap(e: axum::Error) -> bool {
    e.into_inner()
        .downcast::<tungstenite::Error>()
        .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)))
}

/// The status code of the server's Close frame (documented in docs/protocol.md, "Closing").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseCode {
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
    pub(crate) fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Restart => 1012,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "",
            CloseCode::GoingAway => "server stopping",
            CloseCode::Policy => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::Restart => "server restarting",
        }
    }

    /// The code that goes with the server's `leave`.
    fn after(leave: &ServerMsg) -> CloseCode {
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

/// Reads until `join`, verifies it, and assigns a participant id.
async fn handshake(
    conn: &mut Conn,
    state: &AppState,
    room_hint: Option<String>,
) -> Option<(Claims, ParticipantId, Option<String>)> {
    let deadline = Instant::now() + state.inner.config.join_timeout;
    let metrics = &state.inner.ops.metrics;
    loop {
        let Ok(read) = tokio::time::timeout_at(deadline, conn.read()).await else {
            metrics.join_failed(JoinFailure::Timeout);
            conn.close_code = CloseCode::Policy;
            return None;
        };
        let (msg, rid) = match read {
            Read::Closed | Read::Abuse => return None,
            Read::Bad | Read::Nothing => continue,
            Read::Msg(m, rid) => (m, rid),
        };
        if let ClientMsg::Resume {
            protocol,
            token,
            resume_token,
        } = &msg
        {
            if resume_allowed(conn, state, *protocol, token, resume_token, rid).await {
                return None;
            }
            continue;
        }
        let ClientMsg::Join {
            protocol,
            token,
            password,
        } = msg
        else {
            conn.error(ErrorCode::NotJoined, "send join first", rid)
                .await;
            continue;
        };
        conn.join_rid.clone_from(&rid);
        if protocol != PROTOCOL_VERSION {
            conn.error(
                ErrorCode::UnsupportedProtocol,
                format!("this server speaks protocol {PROTOCOL_VERSION}"),
                rid,
            )
            .await;
            metrics.join_failed(JoinFailure::UnsupportedProtocol);
            return None;
        }
        let claims = match state.inner.keys.verify(&token) {
            Ok(c) => c,
            Err(e) => {
                let code = match e {
                    TokenError::Expired => ErrorCode::TokenExpired,
                    TokenError::Invalid | TokenError::NotYetValid | TokenError::TooLong => {
                        ErrorCode::InvalidToken
                    }
                };
                debug!(?code, "join refused");
                metrics.join_failed(match e {
                    TokenError::Expired => JoinFailure::TokenExpired,
                    TokenError::Invalid | TokenError::NotYetValid | TokenError::TooLong => {
                        JoinFailure::InvalidToken
                    }
                });
                conn.error(code, e.to_string(), rid).await;
                return None;
            }
        };
        if room_hint.as_deref().is_some_and(|r| r != claims.room)
            || !crate::token::valid_room_name(&claims.room)
        {
            conn.error(
                ErrorCode::WrongRoom,
                "the access token is for another room",
                rid,
            )
            .await;
            metrics.join_failed(JoinFailure::WrongRoom);
            return None;
        }
        let pid = ParticipantId(rand::random::<u64>() & 0xffff_ffff_ffff);
        return Some((claims, pid, password));
    }
}

/// Checks a `resume`; on success `conn.handoff` names the session that takes the socket.
/// On failure the client is told (`resume_failed` and the like) and may send `join`.
async fn resume_allowed(
    conn: &mut Conn,
    state: &AppState,
    protocol: u32,
    token: &str,
    resume_token: &str,
    rid: Option<String>,
) -> bool {
    if protocol != PROTOCOL_VERSION {
        let msg = format!("this server speaks protocol {PROTOCOL_VERSION}");
        conn.error(ErrorCode::UnsupportedProtocol, msg, rid).await;
        return false;
    }
    let claims = match state.inner.keys.verify(token) {
        Ok(c) => c,
        Err(e) => {
            let code = match e {
                TokenError::Expired => ErrorCode::TokenExpired,
                TokenError::Invalid | TokenError::NotYetValid | TokenError::TooLong => {
                    ErrorCode::InvalidToken
                }
            };
            conn.error(code, e.to_string(), rid).await;
            return false;
        }
    };
    match state
        .inner
        .resumes
        .find(resume_token, &claims.room, &claims.sub)
    {
        Some((pid, session)) if !session.is_closed() && session.capacity() > 0 => {
            info!(participant = %pid, "resume accepted");
            conn.handoff = Some(session);
            true
        }
        _ => {
            conn.error(
                ErrorCode::ResumeFailed,
                "nothing to resume (the window passed or the token is not yours): send join",
                rid,
            )
            .await;
            false
        }
    }
}

/// m-lines in the client's one offer, at most: its own tracks and a data channel need a few;
/// thousands would only cost the media worker time.
const MAX_OFFER_M_LINES: usize = 16;
/// Entries of one `video_sizes` message that are applied (more than any screen shows).
const MAX_VIDEO_SIZES: usize = 64;

/// How long the server waits for the client's answer to its Close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Messages kept for a client that is away, at most.
const MAX_BACKLOG: usize = 2000;

struct Session {
    resume_token: String,
    resume_rx: mpsc::Receiver<WebSocket>,
    state: AppState,
    conn: Conn,
    claims: Claims,
    pid: ParticipantId,
    offered: bool,
    media_tx: mpsc::UnboundedSender<PeerEvent>,
    chat_bucket: Option<TokenBucket>,
    /// When `join` arrived, until media connects (for the join duration).
    join_started: Option<Instant>,
    /// The `request_id`s of the last `offer`, `answer` and `candidate` handed to media, echoed
    /// on media's refusal of it (media answers in the order it was given commands).
    media_rids: MediaRids,
}

#[derive(Default)]
struct MediaRids {
    offer: Option<String>,
    answer: Option<String>,
    candidate: Option<String>,
}

/// The chat rate: `chat_per_minute`, in bursts of up to 5.
fn chat_bucket(state: &AppState) -> Option<TokenBucket> {
    let per_minute = state.inner.config.chat_per_minute;
    (per_minute > 0).then(|| {
        TokenBucket::new(
            f64::from(per_minute) / 60.0,
            per_minute.min(5),
            std::time::Instant::now(),
        )
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Session {
    fn room(&self) -> &str {
        &self.claims.room
    }

    /// Joins the room and sends `joined`.
    async fn enter(&mut self, inbox: crate::rooms::Inbox) -> Result<(), End> {
        // A member (and maybe the host: the first in a room opened by link, with open joining)
        // before the others hear of it, so that `participant_joined` says so.
        let moderation = &self.state.inner.moderation;
        let host = moderation.entered(
            &self.claims.room,
            self.pid,
            self.claims.grants.admin,
            self.state.inner.config.open_join,
        );
        let flags = moderation.flags(&self.claims.room);
        let info = ParticipantInfo {
            participant_id: self.pid.to_string(),
            identity: self.claims.sub.clone(),
            name: self.claims.name.clone(),
            audio_muted: false,
            video_muted: false,
            tracks: Vec::new(),
            hand_raised: false,
            screen_sharing: false,
            host,
        };
        let cfg = &self.state.inner.config;
        let max_participants = self
            .state
            .inner
            .moderation
            .max_participants(&self.claims.room, cfg.max_participants);
        let others = match self.state.inner.rooms.join(
            &self.claims.room,
            self.pid,
            info,
            inbox,
            max_participants,
            cfg.max_rooms,
        ) {
            Ok(o) => o,
            Err(JoinRefused::TooManyRooms) => {
                self.state
                    .inner
                    .moderation
                    .left(&self.claims.room, self.pid);
                self.state.inner.counters.hit(Limit::Rooms);
                self.conn
                    .error(
                        ErrorCode::TooManyRooms,
                        format!("this server has its limit of {} rooms", cfg.max_rooms),
                        self.conn.join_rid.clone(),
                    )
                    .await;
                return Err(End::Gone(LeaveReason::Left));
            }
            Err(JoinRefused::Full) => {
                self.state
                    .inner
                    .moderation
                    .left(&self.claims.room, self.pid);
                self.state
                    .inner
                    .ops
                    .metrics
                    .join_failed(JoinFailure::RoomFull);
                self.state.inner.counters.hit(Limit::Participants);
                self.conn
                    .error(
                        ErrorCode::RoomFull,
                        format!("the room is full ({max_participants} participants)"),
                        self.conn.join_rid.clone(),
                    )
                    .await;
                return Err(End::Gone(LeaveReason::Left));
            }
        };
        let first = others.is_empty();
        self.entered(first);
        let chat = self.state.inner.chat.clone();
        let room = self.claims.room.clone();
        let history = tokio::task::spawn_blocking(move || {
            let mut h = chat.history(&room, crate::chat::HISTORY_ON_JOIN)?;
            crate::richchat::decorate(&chat, &mut h)?;
            Ok::<_, crate::SignalingError>(h)
        })
        .await
        .ok()
        .and_then(|r| {
            r.map_err(|e| warn!(error = %e, "chat history unavailable"))
                .ok()
        })
        .unwrap_or_default();
        let joined = ServerMsg::Joined {
            protocol: PROTOCOL_VERSION,
            room: self.claims.room.clone(),
            participant_id: self.pid.to_string(),
            identity: self.claims.sub.clone(),
            name: self.claims.name.clone(),
            grants: self.claims.grants,
            participants: others,
            ice_servers: (self.state.inner.ice)(&self.claims.sub),
            chat_history: history,
            resume_token: self.resume_token.clone(),
            host,
            lobby: flags.lobby,
            locked: flags.locked,
        };
        self.conn
            .send(&joined)
            .await
            .map_err(|_| End::Gone(LeaveReason::Disconnected))?;
        self.state.inner.ops.metrics.joined.inc();
        self.send_knocks().await;
        Ok(())
    }

    async fn run(
        &mut self,
        mut inbox: mpsc::UnboundedReceiver<ServerMsg>,
        mut media: mpsc::UnboundedReceiver<PeerEvent>,
    ) -> End {
        let idle = self.state.inner.config.idle_timeout;
        let ping_every = self.state.inner.config.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let window = self.state.inner.config.resume_window;
        let mut last_heard = Instant::now();
        loop {
            let attached = self.conn.detached.is_none();
            let resume_by = self.conn.detached.map(|t| t + window);
            tokio::select! {
                read = self.conn.read() => {
                    last_heard = Instant::now();
                    match read {
                        Read::Closed => {
                            if !self.conn.detach() {
                                return End::Gone(LeaveReason::Disconnected);
                            }
                        }
                        Read::Abuse => return End::Gone(LeaveReason::Removed),
                        Read::Bad | Read::Nothing => {}
                        Read::Msg(m, rid) => {
                            if let Some(end) = self.on_client(m, rid).await {
                                return end;
                            }
                        }
                    }
                }
                msg = inbox.recv() => {
                    let Some(msg) = msg else { return End::Gone(LeaveReason::Disconnected) };
                    if let ServerMsg::Leave { reason, .. } = msg {
                        return End::Told(reason, Box::new(msg));
                    }
                    if self.conn.send(&msg).await.is_err() {
                        return End::Gone(LeaveReason::Disconnected);
                    }
                }
                ev = media.recv() => {
                    // The session keeps a sender, so this never yields None.
                    if let Some(ev) = ev {
                        if let Some(end) = self.on_media(ev).await {
                            return end;
                        }
                    }
                }
                _ = ping.tick(), if attached => {
                    let ping = self.conn.send_frame(Message::Ping(Default::default())).await;
                    if ping.is_err() && !self.conn.detach() {
                        return End::Gone(LeaveReason::Disconnected);
                    }
                }
                _ = tokio::time::sleep_until(last_heard + idle), if attached => {
                    // Silence is a dead network: no resume window on top of the idle timeout.
                    info!("idle timeout");
                    return End::Kick(LeaveReason::Disconnected);
                }
                _ = tokio::time::sleep_until(resume_by.unwrap_or(last_heard)), if resume_by.is_some() => {
                    info!("no resume within the window");
                    return End::Gone(LeaveReason::Disconnected);
                }
                socket = self.resume_rx.recv() => {
                    // The session holds the slot's sender's registry entry; None cannot happen
                    // while it runs, but is harmless.
                    let Some(socket) = socket else { continue };
                    last_heard = Instant::now();
                    if self.resumed(socket).await.is_err() {
                        return End::Gone(LeaveReason::Disconnected);
                    }
                }
            }
        }
    }

    /// A `resume` brought a new socket: answer `resumed`, deliver what was kept, and have media
    /// restart ICE (the client's addresses may have changed with its network).
    async fn resumed(&mut self, socket: WebSocket) -> Result<(), ()> {
        let away = self.conn.detached.map(|t| t.elapsed());
        self.conn.attach(socket);
        info!(?away, kept = self.conn.backlog.len(), "resumed");
        let me = self.pid.to_string();
        let participants = self
            .state
            .inner
            .rooms
            .participants(self.room())
            .into_iter()
            .filter(|p| p.participant_id != me)
            .collect();
        let msg = ServerMsg::Resumed {
            participant_id: me,
            participants,
        };
        // Sent before the backlog, straight to the socket.
        let text = serde_json::to_string(&msg).map_err(|_| ())?;
        self.state.inner.ops.metrics.message_out(&msg);
        if self
            .conn
            .send_frame(Message::Text(Utf8Bytes::from(text)))
            .await
            .is_err()
        {
            return if self.conn.detach() { Ok(()) } else { Err(()) };
        }
        self.conn.flush_backlog().await?;
        if self.offered {
            let room = self.claims.room.clone();
            if let Err(e) = self.state.inner.media.ice_restart(&room, self.pid) {
                warn!(error = %e, "media refused the ICE restart");
            }
        }
        Ok(())
    }

    async fn on_client(&mut self, msg: ClientMsg, rid: Option<String>) -> Option<End> {
        let media = &self.state.inner.media;
        let room = self.claims.room.clone();
        match msg {
            ClientMsg::Join { .. } | ClientMsg::Resume { .. } => {
                self.conn
                    .error(ErrorCode::AlreadyJoined, "already joined", rid)
                    .await
            }
            ClientMsg::Offer { sdp, sources } => {
                if self.offered {
                    self.conn
                        .error(
                            ErrorCode::InvalidSdp,
                            "the client offers once; answer the server's offers instead",
                            rid,
                        )
                        .await;
                } else if sdp.lines().filter(|l| l.starts_with("m=")).count() > MAX_OFFER_M_LINES {
                    self.conn
                        .error(
                            ErrorCode::InvalidSdp,
                            format!("an offer has at most {MAX_OFFER_M_LINES} m-lines"),
                            rid,
                        )
                        .await;
                } else if !self.claims.grants.publish && sdp_sends_media(&sdp) {
                    self.conn
                        .error(ErrorCode::Forbidden, "this token may not publish", rid)
                        .await;
                } else {
                    let grants = self.claims.grants;
                    let sources = sources.into_iter().collect();
                    self.media_rids.offer.clone_from(&rid);
                    match media.offer_with_sources(
                        &room,
                        self.pid,
                        grants,
                        sdp,
                        sources,
                        self.media_tx.clone(),
                    ) {
                        Ok(()) => self.offered = true,
                        Err(e) => {
                            warn!(error = %e, "media refused the offer");
                            self.conn
                                .error(ErrorCode::Internal, "media is unavailable", rid)
                                .await;
                        }
                    }
                }
            }
            ClientMsg::Answer { sdp } => {
                self.media_rids.answer.clone_from(&rid);
                if let Err(e) = media.answer(&room, self.pid, sdp) {
                    warn!(error = %e, "media refused the answer");
                    self.conn
                        .error(ErrorCode::Internal, "media is unavailable", rid)
                        .await;
                }
            }
            ClientMsg::Candidate { candidate, .. } => {
                if !self.offered {
                    self.conn
                        .error(
                            ErrorCode::InvalidCandidate,
                            "send the offer before candidates",
                            rid,
                        )
                        .await;
                } else if let Err(e) = {
                    self.media_rids.candidate.clone_from(&rid);
                    media.candidate(&room, self.pid, candidate)
                } {
                    warn!(error = %e, "media refused the candidate");
                }
            }
            ClientMsg::VideoSizes { tracks } => {
                let sizes = tracks
                    .iter()
                    .filter_map(|t| {
                        let id = t.track_id.parse().ok()?;
                        Some((id, t.width.min(16_384), t.height.min(16_384)))
                    })
                    .take(MAX_VIDEO_SIZES)
                    .collect();
                if let Err(e) = media.video_sizes(&room, self.pid, sizes) {
                    warn!(error = %e, "media refused the video sizes");
                }
            }
            ClientMsg::Screen { sharing } => {
                let msg = ServerMsg::Screen {
                    participant_id: self.pid.to_string(),
                    sharing,
                };
                self.state.inner.rooms.update_and_broadcast(
                    &room,
                    self.pid,
                    |i| i.screen_sharing = sharing,
                    msg,
                    false,
                );
            }
            ClientMsg::Mute { kind, muted } => {
                let msg = ServerMsg::Mute {
                    participant_id: self.pid.to_string(),
                    kind,
                    muted,
                    by_server: false,
                };
                if !muted {
                    // Undo a moderator's mute, if there was one: the participant may unmute.
                    door::resume_forwarding(&self.state, &room, self.pid, kind);
                }
                self.state.inner.rooms.update_and_broadcast(
                    &room,
                    self.pid,
                    |i| match kind {
                        TrackKind::Audio => i.audio_muted = muted,
                        TrackKind::Video => i.video_muted = muted,
                    },
                    msg,
                    false,
                );
            }
            ClientMsg::Chat {
                text,
                client_msg_id,
                attachment_id,
            } => self.chat(text, client_msg_id, attachment_id, rid).await,
            m @ (ClientMsg::ChatEdit { .. }
            | ClientMsg::ChatDelete { .. }
            | ClientMsg::React { .. }
            | ClientMsg::TileReaction { .. }) => self.on_rich_chat(m, rid).await,
            m @ (ClientMsg::Hand { .. }
            | ClientMsg::Typing { .. }
            | ClientMsg::Admit { .. }
            | ClientMsg::Deny { .. }
            | ClientMsg::Moderate { .. }
            | ClientMsg::RoomSettings { .. }
            | ClientMsg::EndRoom
            | ClientMsg::Invite) => {
                if self.on_participant_msg(m, rid).await.is_err() {
                    return Some(End::Gone(LeaveReason::Disconnected));
                }
            }
            ClientMsg::Leave => return Some(End::Gone(LeaveReason::Left)),
            ClientMsg::Ping { ts } => {
                if self.conn.send(&ServerMsg::Pong { ts }).await.is_err() {
                    return Some(End::Gone(LeaveReason::Disconnected));
                }
            }
        }
        None
    }

    async fn chat(
        &mut self,
        text: String,
        client_msg_id: Option<String>,
        attachment_id: Option<String>,
        rid: Option<String>,
    ) {
        if !self.claims.grants.chat {
            return self
                .conn
                .error(ErrorCode::Forbidden, "this token may not chat", rid)
                .await;
        }
        if let Some(b) = &mut self.chat_bucket {
            if !b.take(std::time::Instant::now()) {
                self.state.inner.counters.hit(Limit::ChatRate);
                let per_minute = self.state.inner.config.chat_per_minute;
                return self
                    .conn
                    .error(
                        ErrorCode::RateLimited,
                        format!("at most {per_minute} chat messages a minute: not sent"),
                        rid,
                    )
                    .await;
            }
        }
        let text = crate::text::clean_chat_text(&text);
        let max = self.state.inner.config.chat_max_chars;
        let attachment = match attachment_id {
            Some(id) => match self.find_attachment(id).await {
                Some((a, uploader)) if uploader == self.claims.sub => Some(a),
                Some(_) => {
                    return self
                        .conn
                        .error(
                            ErrorCode::NotYourFile,
                            "only the participant who uploaded a file may attach it",
                            rid,
                        )
                        .await
                }
                None => {
                    return self
                        .conn
                        .error(ErrorCode::BadMessage, "no such file in this room", rid)
                        .await
                }
            },
            None => None,
        };
        if (text.is_empty() && attachment.is_none()) || text.chars().count() > max {
            return self
                .conn
                .error(
                    ErrorCode::BadMessage,
                    format!("a chat message has 1 to {max} characters"),
                    rid,
                )
                .await;
        }
        let chat = self.state.inner.chat.clone();
        let (room, pid, identity, name) = (
            self.room().to_string(),
            self.pid.to_string(),
            self.claims.sub.clone(),
            self.claims.name.clone(),
        );
        let stored = tokio::task::spawn_blocking(move || {
            let mut m = chat.append(&room, &pid, &identity, &name, &text, now_ms())?;
            if let Some(a) = attachment {
                crate::richchat::attach(&chat, m.id, &a)?;
                m.extra.attachment = Some(a);
            }
            Ok::<_, crate::SignalingError>(m)
        })
        .await;
        match stored {
            Ok(Ok(message)) => {
                self.state.inner.ops.metrics.chat_messages.inc();
                // Others get the message; the sender's echo also carries its client_msg_id
                // (the delivery acknowledgement).
                self.state.inner.rooms.update_and_broadcast(
                    self.room(),
                    self.pid,
                    |_| {},
                    ServerMsg::Chat {
                        message: message.clone(),
                        client_msg_id: None,
                    },
                    false,
                );
                let client_msg_id = client_msg_id.filter(|c| c.len() <= 64);
                let _ = self
                    .conn
                    .send(&ServerMsg::Chat {
                        message,
                        client_msg_id,
                    })
                    .await;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "chat message not stored");
                self.conn
                    .error(ErrorCode::Internal, "the message could not be stored", rid)
                    .await;
            }
            Err(e) => {
                warn!(error = %e, "chat task failed");
                self.conn
                    .error(ErrorCode::Internal, "the message could not be stored", rid)
                    .await;
            }
        }
    }

    async fn on_media(&mut self, ev: PeerEvent) -> Option<End> {
        let sent = match ev {
            PeerEvent::Answer { sdp } => {
                let sdp = with_end_of_candidates(sdp);
                self.conn.send(&ServerMsg::Answer { sdp }).await
            }
            PeerEvent::Offer { sdp } => {
                let sdp = with_end_of_candidates(sdp);
                self.conn.send(&ServerMsg::Offer { sdp }).await
            }
            PeerEvent::Connected => {
                if let Some(t) = self.join_started.take() {
                    let took = t.elapsed();
                    self.state
                        .inner
                        .ops
                        .metrics
                        .join_duration
                        .observe(took.as_secs_f64());
                    info!(join_ms = took.as_millis() as u64, "media connected");
                } else {
                    info!("media connected");
                }
                Ok(())
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
                self.conn.send(&ServerMsg::MediaSlots { slots }).await
            }
            PeerEvent::Layers { track_id, active } => {
                let track_id = track_id.to_string();
                self.conn
                    .send(&ServerMsg::Layers { track_id, active })
                    .await
            }
            PeerEvent::Speakers { speakers } => {
                let speakers = speakers
                    .iter()
                    .map(|s| SpeakerInfo {
                        participant_id: s.participant.to_string(),
                        level: f32::from(s.level) / 100.0,
                    })
                    .collect();
                self.conn.send(&ServerMsg::Speakers { speakers }).await
            }
            PeerEvent::Quality { participants } => {
                let participants = participants
                    .iter()
                    .map(|(p, q)| QualityInfo {
                        participant_id: p.to_string(),
                        quality: q.as_str().to_string(),
                    })
                    .collect();
                self.conn.send(&ServerMsg::Quality { participants }).await
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
                self.state.inner.rooms.update_and_broadcast(
                    self.room(),
                    self.pid,
                    |i| i.tracks.push(track),
                    msg,
                    false,
                );
                Ok(())
            }
            PeerEvent::Error { code, message } => {
                // Media's own text names parser internals: it goes to the log, the client gets
                // a fixed sentence and the request id of the message media refused.
                info!(code, detail = %message, "media refused");
                let rids = &mut self.media_rids;
                let (code, text, rid) = match code {
                    "invalid_offer" => {
                        // The offer was refused: the client may send a corrected one.
                        self.offered = false;
                        let text = "the offer could not be parsed or applied";
                        (ErrorCode::InvalidSdp, text.to_string(), rids.offer.take())
                    }
                    "invalid_sdp" => {
                        let text = "the answer could not be parsed or applied";
                        (ErrorCode::InvalidSdp, text.to_string(), rids.answer.take())
                    }
                    "invalid_candidate" => {
                        let text = "the candidate could not be parsed";
                        let rid = rids.candidate.take();
                        (ErrorCode::InvalidCandidate, text.to_string(), rid)
                    }
                    // Not a reply: a track arrived over the limit (the text names the limit).
                    "too_many_tracks" => (ErrorCode::TooManyTracks, message, None),
                    _ => (ErrorCode::Internal, "internal error".to_string(), None),
                };
                self.conn.send(&ServerMsg::error(code, text, rid)).await
            }
            PeerEvent::Closed { reason } => {
                info!(?reason, "media connection closed");
                if self.join_started.is_some() {
                    self.state.inner.ops.metrics.join_failed(match reason {
                        huddle_media::CloseReason::ConnectTimeout => JoinFailure::MediaTimeout,
                        _ => JoinFailure::MediaFailed,
                    });
                }
                return Some(End::Kick(LeaveReason::Disconnected));
            }
        };
        sent.err().map(|_| End::Gone(LeaveReason::Disconnected))
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

#[cfg(test)]
mod tests {
    use super::{with_end_of_candidates, CloseCode};
    use crate::protocol::{LeaveReason, ServerMsg};

    #[test]
    fn the_close_code_follows_the_leave() {
        let code = |m: &ServerMsg| CloseCode::after(m).code();
        assert_eq!(code(&ServerMsg::leave_to_reconnect()), 1012);
        assert_eq!(code(&ServerMsg::leave(LeaveReason::ServerShutdown)), 1001);
        assert_eq!(code(&ServerMsg::leave(LeaveReason::Removed)), 1000);
        assert_eq!(code(&ServerMsg::leave(LeaveReason::RoomEnded)), 1000);
    }

    #[test]
    fn end_of_candidates_follows_the_last_candidate_of_each_section_that_has_any() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
                   a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=rtpmap:111 opus/48000/2\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
        let out = with_end_of_candidates(sdp.to_string());
        assert_eq!(
            out,
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
             a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\na=end-of-candidates\r\n\
             a=rtpmap:111 opus/48000/2\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"
        );
        // At the very end, and never twice.
        let last = "m=audio 9 X 0\r\na=candidate:1 1 udp 1 127.0.0.1 1 typ host";
        let once = with_end_of_candidates(last.to_string());
        assert!(
            once.ends_with("typ host\r\na=end-of-candidates\r\n"),
            "{once:?}"
        );
        assert_eq!(with_end_of_candidates(once.clone()), once);
        assert_eq!(with_end_of_candidates("v=0\r\n".into()), "v=0\r\n");
    }
}
