//! The WebSocket driver around the session core ([`super::Session`]).
//!
//! The driver owns the socket, the clock and the channels: the room's inbox, the media worker's
//! events, the lobby's decision, and the slot a `resume` on another socket comes through. It
//! turns each of them into an [`Input`], performs every [`Output`] (answering each
//! [`Output::Ask`] before it reads anything else) and sleeps until [`Session::poll_timeout`].
//! It decides nothing: what to send, when to close and with which code is the core's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use huddle_media::{ParticipantId, PeerEvent};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn, Instrument};

use super::{
    Admission, Change, CloseCode, Entered, Frame, Hook, Input, Limits, MediaCmd, Metric, Outgoing,
    Output, Query, Refusal, Reply, RoomOp, Session, StoreOp,
};
use crate::moderation::{Gate, LobbyOutcome};
use crate::protocol::{ErrorCode, KnockOutcome, ParticipantInfo, ServerMsg, TrackKind};
use crate::rooms::JoinRefused;
use crate::token::Claims;
use crate::webhooks::{EventKind, EventParticipant};
use crate::AppState;

/// How long the server waits for the client's answer to its Close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Runs one WebSocket's session to its end.
pub(crate) async fn run(socket: WebSocket, state: AppState, room_hint: Option<String>) {
    run_link(Link::Ws(socket), state, room_hint).await
}

/// What a session talks to its client over: a WebSocket, or (a WHIP publisher, see
/// [`crate::whip`]) a pair of channels to a task of the server's own that speaks the same
/// protocol for a client that has no socket.
// One per session, held by its driver: boxing the socket would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Link {
    Ws(WebSocket),
    Local(LocalLink),
}

/// The server's end of an in-process client: the client's messages come in on `rx`, the
/// session's go out on `tx`. A ping is answered by the link itself.
pub(crate) struct LocalLink {
    pub(crate) rx: mpsc::Receiver<String>,
    pub(crate) tx: mpsc::UnboundedSender<String>,
    /// Pings sent and not yet answered.
    pub(crate) pongs: u32,
}

impl Link {
    async fn next(&mut self) -> Option<Result<Message, axum::Error>> {
        match self {
            Link::Ws(ws) => ws.next().await,
            Link::Local(l) if l.pongs > 0 => {
                l.pongs -= 1;
                Some(Ok(Message::Pong(Default::default())))
            }
            Link::Local(l) => l.rx.recv().await.map(|t| Ok(Message::Text(t.into()))),
        }
    }

    async fn send(&mut self, m: Message) -> Result<(), axum::Error> {
        match self {
            Link::Ws(ws) => ws.send(m).await,
            Link::Local(l) => {
                match m {
                    Message::Text(t) => {
                        l.tx.send(t.as_str().to_string())
                            .map_err(|_| axum::Error::new(Lost))?
                    }
                    Message::Ping(_) => l.pongs += 1,
                    _ => {}
                }
                Ok(())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), axum::Error> {
        match self {
            Link::Ws(ws) => ws.flush().await,
            Link::Local(_) => Ok(()),
        }
    }

    async fn close(&mut self) -> Result<(), axum::Error> {
        match self {
            Link::Ws(ws) => ws.close().await,
            Link::Local(l) => {
                l.rx.close();
                Ok(())
            }
        }
    }
}

/// Runs one session over `link` to its end.
pub(crate) async fn run_link(link: Link, state: AppState, room_hint: Option<String>) {
    let socket = link;
    // `huddle_websocket_connections` counts sockets; a WHIP session counts in its own gauge.
    let _open = matches!(socket, Link::Ws(_)).then(|| state.inner.ops.connection());
    let pid = ParticipantId(rand::random::<u64>() & 0xffff_ffff_ffff);
    let span = tracing::info_span!("participant", id = %pid, room = tracing::field::Empty);
    let limits = Limits::from_config(&state.inner.config);
    let session = Session::new(limits, pid, room_hint, std::time::Instant::now());
    let (media_tx, media_rx) = mpsc::unbounded_channel();
    let d = Driver {
        socket,
        state,
        pid,
        span: span.clone(),
        inbox: None,
        media_tx,
        media_rx,
        resume: None,
        decision: None,
        handoff: None,
    };
    d.run(session).instrument(span).await;
}

struct Driver {
    socket: Link,
    state: AppState,
    pid: ParticipantId,
    span: tracing::Span,
    /// The room's messages for this member (after `Enter`).
    inbox: Option<mpsc::UnboundedReceiver<crate::rooms::RoomMsg>>,
    media_tx: mpsc::UnboundedSender<PeerEvent>,
    media_rx: mpsc::UnboundedReceiver<PeerEvent>,
    /// This session's resume token and where resumed sockets arrive.
    resume: Option<(String, mpsc::Receiver<WebSocket>)>,
    /// The lobby's answer to this session's knock.
    decision: Option<oneshot::Receiver<LobbyOutcome>>,
    /// Set by a good `resume`: the session that takes this socket.
    handoff: Option<mpsc::Sender<WebSocket>>,
}

fn now() -> std::time::Instant {
    std::time::Instant::now()
}

impl Driver {
    async fn run(mut self, mut s: Session) {
        loop {
            while let Some(out) = s.poll_output() {
                match out {
                    Output::Close(code) => return self.close(code).await,
                    Output::HandOver => return self.hand_over().await,
                    o => self.perform(&mut s, o).await,
                }
            }
            if s.is_over() {
                return self.close(CloseCode::Normal).await;
            }
            let deadline = s.poll_timeout().map(tokio::time::Instant::from_std);
            let reading = s.reading();
            tokio::select! {
                next = self.socket.next(), if reading => {
                    let frame = self.frame(next).await;
                    s.handle(now(), Input::Frame(frame));
                }
                msg = recv(&mut self.inbox) => match msg {
                    Some(m) => s.handle(now(), Input::Room(m)),
                    // The registry dropped this member: nothing more will come.
                    None => self.inbox = None,
                },
                ev = self.media_rx.recv() => {
                    // The driver keeps a sender, so this never yields None.
                    if let Some(ev) = ev {
                        s.handle(now(), Input::Media(ev));
                    }
                }
                d = decide(&mut self.decision) => {
                    self.decision = None;
                    s.handle(now(), Input::Lobby(d.unwrap_or(LobbyOutcome::RoomEnded)));
                }
                socket = resumed(&mut self.resume) => match socket {
                    Some(socket) => {
                        // The old socket is dropped.
                        self.socket = Link::Ws(socket);
                        let participants = self.others(&s);
                        s.handle(now(), Input::Reattached { participants });
                    }
                    None => self.resume = None,
                },
                _ = sleep_until(deadline) => s.handle_timeout(now()),
            }
        }
    }

    /// What one read from the socket gave.
    async fn frame(&mut self, next: Option<Result<Message, axum::Error>>) -> Frame {
        match next {
            None => Frame::Lost,
            Some(Err(e)) => {
                if over_hard_cap(e) {
                    Frame::OverCap
                } else {
                    Frame::Lost
                }
            }
            Some(Ok(Message::Text(t))) => Frame::Text(t.as_str().to_string()),
            Some(Ok(Message::Binary(_))) => Frame::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Frame::Control,
            Some(Ok(Message::Close(_))) => {
                // The socket library has queued the answering Close frame: send it.
                let limit = self.state.inner.config.idle_timeout;
                let _ = tokio::time::timeout(limit, self.socket.flush()).await;
                Frame::Close
            }
        }
    }

    fn room<'a>(&self, s: &'a Session) -> &'a str {
        s.claims().map_or("", |c| c.room.as_str())
    }

    fn others(&self, s: &Session) -> Vec<ParticipantInfo> {
        let me = self.pid.to_string();
        self.state
            .inner
            .rooms
            .participants(self.room(s))
            .into_iter()
            .filter(|p| p.participant_id != me)
            .collect()
    }

    async fn perform(&mut self, s: &mut Session, out: Output) {
        let st = self.state.clone();
        let inner = &st.inner;
        match out {
            Output::Send(out) => {
                let text = match &out {
                    Outgoing::Msg(msg) => {
                        inner.ops.metrics.message_out(msg);
                        match serde_json::to_string(msg) {
                            Ok(t) => Utf8Bytes::from(t),
                            Err(e) => return warn!(error = %e, "message not serialized"),
                        }
                    }
                    // Serialized once by the room: this is a handle on the same bytes.
                    Outgoing::Shared(shared) => {
                        inner.ops.metrics.message_out_type(shared.ty);
                        shared.text.clone()
                    }
                };
                if self.send_frame(Message::Text(text)).await.is_err() {
                    s.handle(now(), Input::Unsent(out));
                }
            }
            Output::Ping => {
                if self
                    .send_frame(Message::Ping(Default::default()))
                    .await
                    .is_err()
                {
                    s.handle(now(), Input::Frame(Frame::Lost));
                }
            }
            Output::Room(op) => self.room_op(s, op),
            Output::Media(cmd) => {
                if let Err(e) = self.media(s, cmd) {
                    warn!(error = %e, "media refused a command");
                }
            }
            Output::Ask(q) => {
                let reply = self.answer(s, q).await;
                s.handle(now(), Input::Reply(reply));
            }
            Output::Webhook(hook) => {
                let Some(c) = s.claims() else { return };
                let who = EventParticipant {
                    participant_id: self.pid.to_string(),
                    identity: c.sub.clone(),
                    name: c.name.clone(),
                };
                let (kind, who, reason) = match hook {
                    Hook::RoomStarted => (EventKind::RoomStarted, None, None),
                    Hook::Joined => (EventKind::ParticipantJoined, Some(who), None),
                    Hook::Left(r) => (EventKind::ParticipantLeft, Some(who), Some(r)),
                    Hook::RoomFinished => (EventKind::RoomFinished, None, None),
                };
                inner.webhooks.emit(kind, &c.room, who, reason);
            }
            Output::Metric(m) => match m {
                Metric::MessageIn(ty) => inner.ops.metrics.message_in(ty),
                Metric::Limit(l) => inner.counters.hit(l),
                Metric::JoinFailed(f) => inner.ops.metrics.join_failed(f),
                Metric::Joined => inner.ops.metrics.joined.inc(),
                Metric::JoinDuration(d) => inner.ops.metrics.join_duration.observe(d.as_secs_f64()),
                Metric::Chat => inner.ops.metrics.chat_messages.inc(),
            },
            // Handled by the loop.
            Output::Close(_) | Output::HandOver => {}
        }
    }

    fn room_op(&mut self, s: &Session, op: RoomOp) {
        let inner = &self.state.inner;
        let room = self.room(s);
        match op {
            RoomOp::Broadcast {
                change,
                msg,
                include_self,
            } => inner.rooms.update_and_broadcast(
                room,
                self.pid,
                |i| match change {
                    Change::Nothing => {}
                    Change::Screen(on) => i.screen_sharing = on,
                    Change::Muted(TrackKind::Audio, m) => i.audio_muted = m,
                    Change::Muted(TrackKind::Video, m) => i.video_muted = m,
                    Change::Hand(up) => i.hand_raised = up,
                    Change::Track(t) => i.tracks.push(t),
                },
                msg,
                include_self,
            ),
            RoomOp::Knock => {
                let Some(c) = s.claims() else { return };
                let m = &inner.moderation;
                self.decision = Some(m.knock(room, self.pid, &c.sub, &c.name));
                info!(identity = %c.sub, "waiting in the lobby");
                // To those who may answer it: the room's admins, or everyone when none is in.
                let to = m.deciders(room);
                let knock = ServerMsg::Knock {
                    participant_id: self.pid.to_string(),
                    identity: c.sub.clone(),
                    name: c.name.clone(),
                };
                inner.rooms.send(room, to.as_deref(), &knock);
            }
            RoomOp::CancelKnock => {
                self.decision = None;
                if inner.moderation.cancel_knock(room, self.pid) {
                    super::host::knock_ended(&self.state, room, self.pid, KnockOutcome::Left);
                }
            }
        }
    }

    fn media(&self, s: &Session, cmd: MediaCmd) -> Result<(), huddle_media::MediaError> {
        let media = &self.state.inner.media;
        let (room, pid) = (self.room(s), self.pid);
        match cmd {
            MediaCmd::Offer {
                grants,
                sdp,
                sources,
            } => {
                // An in-process client (a WHIP publisher) only publishes: it has no way to
                // answer the offers that receiving would bring.
                let grants = match self.socket {
                    Link::Local(_) => huddle_media::Grants {
                        subscribe: false,
                        ..grants
                    },
                    Link::Ws(_) => grants,
                };
                media.offer_with_sources(room, pid, grants, sdp, sources, self.media_tx.clone())
            }
            MediaCmd::Answer(sdp) => media.answer(room, pid, sdp),
            MediaCmd::Candidate(c) => media.candidate(room, pid, c),
            MediaCmd::VideoSizes(sizes) => media.video_sizes(room, pid, sizes),
            MediaCmd::Unpause(kind) => {
                media.set_paused(room, pid, kind, false);
                Ok(())
            }
            MediaCmd::IceRestart => media.ice_restart(room, pid),
            MediaCmd::Remove => {
                media.remove(room, pid);
                Ok(())
            }
        }
    }

    async fn answer(&mut self, s: &Session, q: Query) -> Reply {
        let state = self.state.clone();
        let inner = &state.inner;
        match q {
            Query::Token(token) => Reply::Token(inner.keys.verify(&token)),
            Query::Admission { room } => {
                self.span.record("room", tracing::field::display(&room));
                if state.is_draining() {
                    return Reply::Admission(Admission::Draining(state.farewell()));
                }
                // Cluster mode: a room another node owns is joined there.
                Reply::Admission(match crate::cluster::instead_of_join(&state, &room).await {
                    Some(msg) => Admission::Elsewhere(msg),
                    None => Admission::Open,
                })
            }
            Query::Gate {
                room,
                admin,
                password,
            } => {
                // Password hashing takes a few milliseconds: off the async threads.
                let st = state.clone();
                let gate = tokio::task::spawn_blocking(move || {
                    st.inner.moderation.gate(&room, admin, password.as_deref())
                })
                .await
                .unwrap_or(Gate::Refused(ErrorCode::Internal, "internal error"));
                Reply::Gate(gate)
            }
            Query::Enter { claims } => Reply::Entered(self.enter(claims).await),
            Query::Resume {
                resume_token,
                room,
                identity,
            } => {
                let found = inner.resumes.find(&resume_token, &room, &identity);
                Reply::ResumeFound(match found {
                    Some((pid, session)) if !session.is_closed() && session.capacity() > 0 => {
                        info!(participant = %pid, "resume accepted");
                        self.handoff = Some(session);
                        true
                    }
                    _ => false,
                })
            }
            Query::Attachment { id } => {
                let files = inner.files.clone();
                let room = self.room(s).to_string();
                let found = tokio::task::spawn_blocking(move || files.attachment(&room, &id))
                    .await
                    .ok()
                    .flatten();
                Reply::Attachment(found)
            }
            Query::Store(op) => {
                let work = self.store(s, op);
                Reply::Stored(
                    tokio::task::spawn_blocking(work)
                        .await
                        .unwrap_or_else(|e| Err(e.into())),
                )
            }
            Query::Host { msg, request_id } => {
                let admin = s.claims().is_some_and(|c| c.grants.admin);
                let room = self.room(s);
                Reply::Replies(super::host::apply(
                    &state, room, self.pid, admin, msg, request_id,
                ))
            }
            Query::Media(cmd) => Reply::Media(self.media(s, cmd)),
            Query::Leave { reason } => {
                if let Some((token, _)) = self.resume.take() {
                    inner.resumes.remove(&token);
                }
                let room = self.room(s);
                let closed = inner.rooms.leave(room, self.pid, reason);
                let member = inner.moderation.left(room, self.pid);
                if closed {
                    // Nobody left to record: the recording ends with the meeting.
                    crate::recording::stop(&self.state, room, "room_closed");
                }
                Reply::Left { member, closed }
            }
        }
    }

    /// The room registry takes the participant: moderation membership (and maybe host), the
    /// room's member list, the resume slot, the chat history.
    async fn enter(&mut self, claims: Claims) -> Result<Entered, Refusal> {
        let inner = &self.state.inner;
        let cfg = &inner.config;
        let room = claims.room.as_str();
        // A member (and maybe the host: the first in a room opened by link, with open joining)
        // before the others hear of it, so that `participant_joined` says so.
        let m = &inner.moderation;
        let host = m.entered(room, self.pid, claims.grants.admin, cfg.open_join);
        let flags = m.flags(room);
        let info = ParticipantInfo {
            participant_id: self.pid.to_string(),
            identity: claims.sub.clone(),
            name: claims.name.clone(),
            audio_muted: false,
            video_muted: false,
            tracks: Vec::new(),
            hand_raised: false,
            screen_sharing: false,
            host,
        };
        let max_participants = m.max_participants(room, cfg.max_participants);
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let others = match inner.rooms.join(
            room,
            self.pid,
            info,
            inbox_tx,
            max_participants,
            cfg.max_rooms,
        ) {
            Ok(o) => o,
            Err(refused) => {
                m.left(room, self.pid);
                return Err(match refused {
                    JoinRefused::TooManyRooms => Refusal::TooManyRooms(cfg.max_rooms),
                    JoinRefused::Full => Refusal::Full(max_participants),
                });
            }
        };
        self.inbox = Some(inbox);
        // After the join: a recording started from now on reaches this inbox.
        let recording = inner.recordings.entered(room, self.pid, &claims.sub);
        let (resume_token, resume_rx) = inner.resumes.register(self.pid, room, &claims.sub);
        self.resume = Some((resume_token.clone(), resume_rx));
        let chat = inner.chat.clone();
        let r = room.to_string();
        let history = tokio::task::spawn_blocking(move || {
            let mut h = chat.history(&r, crate::chat::HISTORY_ON_JOIN)?;
            chat.decorate(&mut h)?;
            Ok::<_, crate::SignalingError>(h)
        })
        .await
        .ok()
        .and_then(|r| {
            r.map_err(|e| warn!(error = %e, "chat history unavailable"))
                .ok()
        })
        .unwrap_or_default();
        // A decider who enters is shown who is already waiting in the lobby.
        let knocks = if m.may_decide(room, self.pid, claims.grants.admin) {
            m.waiting(room)
                .into_iter()
                .map(|(pid, identity, name)| ServerMsg::Knock {
                    participant_id: pid.to_string(),
                    identity,
                    name,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Entered {
            others,
            host,
            lobby: flags.lobby,
            locked: flags.locked,
            spotlight: flags.spotlight.map(|p| p.to_string()),
            recording,
            history,
            ice_servers: (inner.ice)(&claims.sub),
            resume_token,
            knocks,
        })
    }

    /// The blocking work of a store operation (run on a blocking thread).
    fn store(&self, s: &Session, op: StoreOp) -> impl FnOnce() -> Stored + Send + 'static {
        let inner = &self.state.inner;
        let (chat, files) = (inner.chat.clone(), inner.files.clone());
        let room = self.room(s).to_string();
        let (identity, name) = s
            .claims()
            .map(|c| (c.sub.clone(), c.name.clone()))
            .unwrap_or_default();
        let pid = self.pid.to_string();
        move || match op {
            StoreOp::Append { text, attachment } => {
                let mut m = chat.append(&room, &pid, &identity, &name, &text, now_ms())?;
                if let Some(a) = attachment {
                    chat.attach(m.id, &a)?;
                    m.extra.attachment = Some(a);
                }
                Ok(Ok(m))
            }
            StoreOp::Edit { message_id, text } => {
                chat.edit(&room, &identity, message_id, &text, now_ms())
            }
            StoreOp::Delete { message_id } => {
                Ok(chat
                    .delete(&room, &identity, message_id)?
                    .map(|(m, attachment)| {
                        if let Some(a) = attachment {
                            files.remove_if_uploaded_by(&room, &a.id, &identity);
                        }
                        m
                    }))
            }
            StoreOp::React {
                message_id,
                emoji,
                active,
            } => chat.react(&room, &identity, message_id, &emoji, active),
        }
    }

    /// Sends a frame; a peer that does not take it within the idle timeout counts as gone
    /// (a client that stops reading must not stall its session).
    async fn send_frame(&mut self, frame: Message) -> Result<(), Lost> {
        let limit = self.state.inner.config.idle_timeout;
        match tokio::time::timeout(limit, self.socket.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Lost),
        }
    }

    /// A good `resume`: the socket now belongs to the waiting session.
    async fn hand_over(mut self) {
        let Some(session) = self.handoff.take() else {
            return self.close(CloseCode::Normal).await;
        };
        match self.socket {
            Link::Ws(ws) => {
                if let Err(e) = session.try_send(ws) {
                    let _ = e.into_inner().close().await;
                }
            }
            // An in-process client never resumes another session.
            Link::Local(_) => self.close(CloseCode::Normal).await,
        }
    }

    /// Sends a Close frame with `code` (best effort) and closes the socket.
    async fn close(&mut self, code: CloseCode) {
        let frame = CloseFrame {
            code: code.code(),
            reason: Utf8Bytes::from_static(code.reason()),
        };
        let sent = self.send_frame(Message::Close(Some(frame))).await.is_ok();
        if sent && code == CloseCode::TooBig {
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

/// What a store operation gives.
type Stored =
    Result<Result<crate::protocol::ChatMessage, crate::chat::Refused>, crate::SignalingError>;

/// A socket that failed (or did not take a frame in time).
#[derive(Debug)]
struct Lost;

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the in-process client is gone")
    }
}

impl std::error::Error for Lost {}

async fn recv<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn decide(
    rx: &mut Option<oneshot::Receiver<LobbyOutcome>>,
) -> Result<LobbyOutcome, oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

async fn resumed(slot: &mut Option<(String, mpsc::Receiver<WebSocket>)>) -> Option<WebSocket> {
    match slot {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Whether a read error is the socket library refusing a frame over the hard cap.
fn over_hard_cap(e: axum::Error) -> bool {
    e.into_inner()
        .downcast::<tungstenite::Error>()
        .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
