//! One participant's WebSocket session.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use huddle_media::{Grants as MediaGrants, ParticipantId, PeerEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::metrics::JoinFailure;
use crate::protocol::{
    decode_client_msg, ClientMsg, ErrorCode, Kind, LeaveReason, ParticipantInfo, QualityInfo,
    ServerMsg, SpeakerInfo, TrackInfo, PROTOCOL_VERSION,
};

/// Entries of one `video_sizes` message that are applied (more than any screen shows).
const MAX_VIDEO_SIZES: usize = 64;
use crate::rooms::JoinRefused;
use crate::token::{Claims, TokenError};
use crate::AppState;

/// What ends a session, and whether the client is told to leave.
enum End {
    /// Client left or closed the socket.
    Gone(LeaveReason),
    /// We end it: send `leave` with this reason, then close.
    Kick(LeaveReason),
}

pub(crate) async fn run(socket: WebSocket, state: AppState, room_hint: Option<String>) {
    let _open = state.inner.ops.connection();
    let mut conn = Conn {
        socket,
        max_bytes: state.inner.config.max_message_bytes,
        metrics: state.inner.ops.metrics.clone(),
    };
    let Some((claims, pid)) = handshake(&mut conn, &state, room_hint).await else {
        let _ = conn.socket.close().await;
        return;
    };
    let join_started = Instant::now();
    if state.is_draining() {
        state
            .inner
            .ops
            .metrics
            .join_failed(JoinFailure::ServerShutdown);
        let reason = LeaveReason::ServerShutdown;
        let _ = conn.send(&ServerMsg::Leave { reason }).await;
        let _ = conn.socket.close().await;
        return;
    }
    let span = tracing::info_span!("participant", id = %pid, room = %claims.room);
    async move {
        info!(identity = %claims.sub, "joined");
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let mut s = Session {
            state: state.clone(),
            conn,
            claims,
            pid,
            offered: false,
            media_tx,
            join_started: Some(join_started),
        };
        let end = match s.enter(inbox_tx).await {
            Ok(()) => s.run(inbox, media_rx).await,
            Err(end) => end,
        };
        let reason = match end {
            End::Gone(r) => r,
            End::Kick(r) => {
                let _ = s.conn.send(&ServerMsg::Leave { reason: r }).await;
                r
            }
        };
        s.state.inner.rooms.leave(&s.claims.room, pid, reason);
        s.state.inner.media.remove(&s.claims.room, pid);
        let _ = s.conn.socket.close().await;
        info!(?reason, "left");
    }
    .instrument(span)
    .await
}

struct Conn {
    socket: WebSocket,
    max_bytes: usize,
    metrics: crate::metrics::SignalingMetrics,
}

/// What one read from the socket gave.
enum Read {
    Msg(ClientMsg, Option<String>),
    /// A bad frame, already answered with an error.
    Bad,
    /// Pings, pongs, binary frames: nothing to do.
    Nothing,
    Closed,
}

impl Conn {
    async fn send(&mut self, msg: &ServerMsg) -> Result<(), ()> {
        self.metrics.message_out(msg);
        let text = serde_json::to_string(msg).map_err(|_| ())?;
        self.socket
            .send(Message::Text(Utf8Bytes::from(text)))
            .await
            .map_err(|_| ())
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
        let frame = match self.socket.next().await {
            None | Some(Err(_)) => return Read::Closed,
            Some(Ok(f)) => f,
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(_) => return Read::Closed,
            Message::Binary(_) => {
                self.metrics.message_in(None);
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
        if text.len() > self.max_bytes {
            self.metrics.message_in(None);
            self.error(
                ErrorCode::MessageTooLarge,
                format!(
                    "message of {} bytes is over the {}-byte limit",
                    text.len(),
                    self.max_bytes
                ),
                None,
            )
            .await;
            return Read::Bad;
        }
        let decoded = decode_client_msg(text.as_str());
        self.metrics
            .message_in(decoded.as_ref().ok().map(|(m, _)| m));
        match decoded {
            Ok((m, rid)) => Read::Msg(m, rid),
            Err(e) => {
                let _ = self.send(&e.to_msg()).await;
                Read::Bad
            }
        }
    }
}

/// Reads until `join`, verifies it, and assigns a participant id.
async fn handshake(
    conn: &mut Conn,
    state: &AppState,
    room_hint: Option<String>,
) -> Option<(Claims, ParticipantId)> {
    let deadline = Instant::now() + state.inner.config.join_timeout;
    let metrics = &state.inner.ops.metrics;
    loop {
        let Ok(read) = tokio::time::timeout_at(deadline, conn.read()).await else {
            metrics.join_failed(JoinFailure::Timeout);
            return None;
        };
        let (msg, rid) = match read {
            Read::Closed => return None,
            Read::Bad | Read::Nothing => continue,
            Read::Msg(m, rid) => (m, rid),
        };
        let ClientMsg::Join { protocol, token } = msg else {
            conn.error(ErrorCode::NotJoined, "send join first", rid)
                .await;
            continue;
        };
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
                    TokenError::Invalid => ErrorCode::InvalidToken,
                };
                debug!(?code, "join refused");
                metrics.join_failed(match e {
                    TokenError::Expired => JoinFailure::TokenExpired,
                    TokenError::Invalid => JoinFailure::InvalidToken,
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
        return Some((claims, pid));
    }
}

struct Session {
    state: AppState,
    conn: Conn,
    claims: Claims,
    pid: ParticipantId,
    offered: bool,
    media_tx: mpsc::UnboundedSender<PeerEvent>,
    /// When `join` arrived, until media connects (for the join duration).
    join_started: Option<Instant>,
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
        let info = ParticipantInfo {
            participant_id: self.pid.to_string(),
            identity: self.claims.sub.clone(),
            name: self.claims.name.clone(),
            audio_muted: false,
            video_muted: false,
            tracks: Vec::new(),
            screen_sharing: false,
        };
        let cfg = &self.state.inner.config;
        let others = match self.state.inner.rooms.join(
            &self.claims.room,
            self.pid,
            info,
            inbox,
            cfg.max_participants,
        ) {
            Ok(o) => o,
            Err(JoinRefused::Full) => {
                self.state
                    .inner
                    .ops
                    .metrics
                    .join_failed(JoinFailure::RoomFull);
                self.conn
                    .error(
                        ErrorCode::RoomFull,
                        format!("the room is full ({} participants)", cfg.max_participants),
                        None,
                    )
                    .await;
                return Err(End::Gone(LeaveReason::Left));
            }
        };
        let chat = self.state.inner.chat.clone();
        let room = self.claims.room.clone();
        let history =
            tokio::task::spawn_blocking(move || chat.history(&room, crate::chat::HISTORY_ON_JOIN))
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
        };
        self.conn
            .send(&joined)
            .await
            .map_err(|_| End::Gone(LeaveReason::Disconnected))?;
        self.state.inner.ops.metrics.joined.inc();
        Ok(())
    }

    async fn run(
        &mut self,
        mut inbox: mpsc::UnboundedReceiver<ServerMsg>,
        mut media: mpsc::UnboundedReceiver<PeerEvent>,
    ) -> End {
        let idle = self.state.inner.config.idle_timeout;
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                read = self.conn.read() => {
                    last_heard = Instant::now();
                    match read {
                        Read::Closed => return End::Gone(LeaveReason::Disconnected),
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
                    if let ServerMsg::Leave { reason } = msg {
                        return End::Kick(reason);
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
                _ = tokio::time::sleep_until(last_heard + idle) => {
                    info!("idle timeout");
                    return End::Kick(LeaveReason::Disconnected);
                }
            }
        }
    }

    async fn on_client(&mut self, msg: ClientMsg, rid: Option<String>) -> Option<End> {
        let media = &self.state.inner.media;
        let room = self.claims.room.clone();
        match msg {
            ClientMsg::Join { .. } => {
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
                } else if !self.claims.grants.publish && sdp_sends_media(&sdp) {
                    self.conn
                        .error(ErrorCode::Forbidden, "this token may not publish", rid)
                        .await;
                } else {
                    let grants = MediaGrants {
                        publish: self.claims.grants.publish,
                        subscribe: self.claims.grants.subscribe,
                    };
                    let sources = sources.into_iter().map(|(m, s)| (m, s.into())).collect();
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
                } else if let Err(e) = media.candidate(&room, self.pid, candidate) {
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
                };
                self.state.inner.rooms.update_and_broadcast(
                    &room,
                    self.pid,
                    |i| match kind {
                        Kind::Audio => i.audio_muted = muted,
                        Kind::Video => i.video_muted = muted,
                    },
                    msg,
                    false,
                );
            }
            ClientMsg::Chat { text } => self.chat(text, rid).await,
            ClientMsg::Leave => return Some(End::Gone(LeaveReason::Left)),
            ClientMsg::Ping { ts } => {
                if self.conn.send(&ServerMsg::Pong { ts }).await.is_err() {
                    return Some(End::Gone(LeaveReason::Disconnected));
                }
            }
        }
        None
    }

    async fn chat(&mut self, text: String, rid: Option<String>) {
        if !self.claims.grants.chat {
            return self
                .conn
                .error(ErrorCode::Forbidden, "this token may not chat", rid)
                .await;
        }
        let text = text.trim().to_string();
        let max = self.state.inner.config.chat_max_chars;
        if text.is_empty() || text.chars().count() > max {
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
            chat.append(&room, &pid, &identity, &name, &text, now_ms())
        })
        .await;
        match stored {
            Ok(Ok(message)) => {
                self.state.inner.ops.metrics.chat_messages.inc();
                self.state.inner.rooms.update_and_broadcast(
                    self.room(),
                    self.pid,
                    |_| {},
                    ServerMsg::Chat { message },
                    true,
                );
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
            PeerEvent::Answer { sdp } => self.conn.send(&ServerMsg::Answer { sdp }).await,
            PeerEvent::Offer { sdp } => self.conn.send(&ServerMsg::Offer { sdp }).await,
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
                    kind: match kind {
                        huddle_media::TrackKind::Audio => Kind::Audio,
                        huddle_media::TrackKind::Video => Kind::Video,
                    },
                    source: source.into(),
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
                let code = match code {
                    "invalid_offer" => {
                        // The offer was refused: the client may send a corrected one.
                        self.offered = false;
                        ErrorCode::InvalidSdp
                    }
                    "invalid_sdp" => ErrorCode::InvalidSdp,
                    "invalid_candidate" => ErrorCode::InvalidCandidate,
                    _ => ErrorCode::Internal,
                };
                self.conn.send(&ServerMsg::error(code, message, None)).await
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
