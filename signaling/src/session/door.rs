//! The session's moderation side: the room's password and lobby at the door, raised hands,
//! typing, admitting and denying knocks, a moderator's mute, and the webhook events of entering
//! and leaving.

use axum::extract::ws::Message;
use huddle_media::ParticipantId;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{Conn, Read, Session};
use crate::moderation::{Gate, LobbyOutcome};
use crate::protocol::{
    ClientMsg, ErrorCode, HostAction, KnockOutcome, LeaveReason, ServerMsg, TrackKind,
};
use crate::token::Claims;
use crate::webhooks::{EventKind, EventParticipant};
use crate::AppState;

/// Checks the room's password and, for a lobby room, waits until someone admits the joiner.
/// `Err` when the joiner was refused, denied or went away (already told; close the socket).
pub(super) async fn pass(
    conn: &mut Conn,
    state: &AppState,
    claims: &Claims,
    pid: ParticipantId,
    password: Option<&str>,
) -> Result<(), ()> {
    let (st, room, admin, pw) = (
        state.clone(),
        claims.room.clone(),
        claims.grants.admin,
        password.map(str::to_string),
    );
    // Password hashing takes a few milliseconds: off the async threads.
    let gate =
        tokio::task::spawn_blocking(move || st.inner.moderation.gate(&room, admin, pw.as_deref()))
            .await
            .unwrap_or(Gate::Refused(ErrorCode::Internal, "internal error"));
    match gate {
        Gate::Open => Ok(()),
        Gate::Refused(code, message) => {
            debug!(?code, "join refused at the door");
            conn.error(code, message, conn.join_rid.clone()).await;
            Err(())
        }
        Gate::Lobby => lobby(conn, state, claims, pid).await,
    }
}

async fn lobby(
    conn: &mut Conn,
    state: &AppState,
    claims: &Claims,
    pid: ParticipantId,
) -> Result<(), ()> {
    let room = claims.room.as_str();
    let m = &state.inner.moderation;
    let mut decision = m.knock(room, pid, &claims.sub, &claims.name);
    if conn.send(&ServerMsg::Lobby {}).await.is_err() {
        m.cancel_knock(room, pid);
        return Err(());
    }
    info!(participant = %pid, identity = %claims.sub, "waiting in the lobby");
    notify_deciders(
        state,
        room,
        &ServerMsg::Knock {
            participant_id: pid.to_string(),
            identity: claims.sub.clone(),
            name: claims.name.clone(),
        },
    );
    let idle = state.inner.config.idle_timeout;
    let every = state.inner.config.ping_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    let mut last_heard = Instant::now();
    let outcome = loop {
        tokio::select! {
            d = &mut decision => break d.unwrap_or(LobbyOutcome::RoomEnded),
            read = conn.read() => {
                last_heard = Instant::now();
                match read {
                    Read::Closed | Read::Abuse | Read::Msg(ClientMsg::Leave, _) => {
                        if m.cancel_knock(room, pid) {
                            knock_ended(state, room, pid, KnockOutcome::Left);
                        }
                        return Err(());
                    }
                    Read::Msg(ClientMsg::Ping { ts }, _) => {
                        let _ = conn.send(&ServerMsg::Pong { ts }).await;
                    }
                    Read::Msg(_, rid) => {
                        conn.error(ErrorCode::NotJoined, "waiting in the lobby", rid).await;
                    }
                    Read::Bad | Read::Nothing => {}
                }
            }
            _ = ping.tick() => {
                let _ = conn.send_frame(Message::Ping(Default::default())).await;
            }
            _ = tokio::time::sleep_until(last_heard + idle) => {
                if m.cancel_knock(room, pid) {
                    knock_ended(state, room, pid, KnockOutcome::Left);
                }
                return Err(());
            }
        }
    };
    info!(participant = %pid, ?outcome, "lobby wait over");
    let reason = match outcome {
        LobbyOutcome::Admitted => return Ok(()),
        LobbyOutcome::Denied => LeaveReason::Denied,
        LobbyOutcome::RoomEnded => LeaveReason::RoomEnded,
    };
    let _ = conn.send(&ServerMsg::leave(reason)).await;
    Err(())
}

/// Sends a knock to those who may answer it: the room's admins, or everyone when none is in.
fn notify_deciders(state: &AppState, room: &str, msg: &ServerMsg) {
    let to = state.inner.moderation.deciders(room);
    state.inner.rooms.send(room, to.as_deref(), msg);
}

fn knock_ended(state: &AppState, room: &str, pid: ParticipantId, outcome: KnockOutcome) {
    state.inner.rooms.send(
        room,
        None,
        &ServerMsg::KnockEnded {
            participant_id: pid.to_string(),
            outcome,
        },
    );
}

/// A moderator's mute (room API): the server stops forwarding the participant's tracks of that
/// kind and tells everyone, the participant included. The participant may unmute themselves.
pub(crate) fn server_mute(state: &AppState, room: &str, pid: ParticipantId, kind: TrackKind) {
    state.inner.media.set_paused(room, pid, kind, true);
    state.inner.rooms.update_and_broadcast(
        room,
        pid,
        |i| match kind {
            TrackKind::Audio => i.audio_muted = true,
            TrackKind::Video => i.video_muted = true,
        },
        ServerMsg::Mute {
            participant_id: pid.to_string(),
            kind,
            muted: true,
            by_server: true,
        },
        true,
    );
}

/// The participant unmuted: forward its tracks of that kind again (a no-op unless a moderator
/// had muted them).
pub(super) fn resume_forwarding(state: &AppState, room: &str, pid: ParticipantId, kind: TrackKind) {
    state.inner.media.set_paused(room, pid, kind, false);
}

impl Session {
    fn event_participant(&self) -> EventParticipant {
        EventParticipant {
            participant_id: self.pid.to_string(),
            identity: self.claims.sub.clone(),
            name: self.claims.name.clone(),
        }
    }

    /// The participant is now in its room (`first`: it opened the room). It became a member
    /// of the room's moderation (and maybe its host) just before, in `enter`.
    pub(super) fn entered(&mut self, first: bool) {
        let st = &self.state.inner;
        if first {
            st.webhooks
                .emit(EventKind::RoomStarted, &self.claims.room, None, None);
        }
        st.webhooks.emit(
            EventKind::ParticipantJoined,
            &self.claims.room,
            Some(self.event_participant()),
            None,
        );
    }

    /// The participant left its room (`closed`: it was the last one).
    pub(super) fn left(&self, reason: LeaveReason, closed: bool) {
        let st = &self.state.inner;
        if !st.moderation.left(&self.claims.room, self.pid) {
            return;
        }
        st.webhooks.emit(
            EventKind::ParticipantLeft,
            &self.claims.room,
            Some(self.event_participant()),
            Some(reason),
        );
        if closed {
            st.webhooks
                .emit(EventKind::RoomFinished, &self.claims.room, None, None);
        }
    }

    /// Tells a newly entered decider who is already waiting in the lobby.
    pub(super) async fn send_knocks(&mut self) {
        let m = &self.state.inner.moderation;
        if !m.may_decide(&self.claims.room, self.pid, self.claims.grants.admin) {
            return;
        }
        for (pid, identity, name) in m.waiting(&self.claims.room) {
            let knock = ServerMsg::Knock {
                participant_id: pid.to_string(),
                identity,
                name,
            };
            if self.conn.send(&knock).await.is_err() {
                return;
            }
        }
    }

    /// `hand`, `typing`, `admit`, `deny` and the hosts' `moderate`, `room_settings`,
    /// `end_room`, `invite`. `Err` when the socket failed.
    pub(super) async fn on_participant_msg(
        &mut self,
        msg: ClientMsg,
        rid: Option<String>,
    ) -> Result<(), ()> {
        let room = self.claims.room.clone();
        let state = self.state.clone();
        let rooms = &state.inner.rooms;
        match msg {
            ClientMsg::Hand { raised } => {
                let msg = ServerMsg::Hand {
                    participant_id: self.pid.to_string(),
                    raised,
                };
                rooms.update_and_broadcast(&room, self.pid, |i| i.hand_raised = raised, msg, true);
            }
            ClientMsg::Typing { active } => {
                if !self.claims.grants.chat {
                    self.conn
                        .error(ErrorCode::Forbidden, "this token may not chat", rid)
                        .await;
                    return Ok(());
                }
                let msg = ServerMsg::Typing {
                    participant_id: self.pid.to_string(),
                    active,
                };
                rooms.update_and_broadcast(&room, self.pid, |_| {}, msg, false);
            }
            ClientMsg::Admit { ref participant_id } | ClientMsg::Deny { ref participant_id } => {
                let admit = matches!(msg, ClientMsg::Admit { .. });
                let m = &self.state.inner.moderation;
                if !m.may_decide(&room, self.pid, self.claims.grants.admin) {
                    self.conn
                        .error(
                            ErrorCode::Forbidden,
                            "only the room's admins may answer knocks",
                            rid,
                        )
                        .await;
                    return Ok(());
                }
                let target = participant_id.parse::<ParticipantId>().ok();
                if !target.is_some_and(|t| m.decide(&room, t, admit)) {
                    self.conn
                        .error(
                            ErrorCode::NotWaiting,
                            "nobody with that id is waiting in the lobby",
                            rid,
                        )
                        .await;
                    return Ok(());
                }
                if let Some(t) = target {
                    info!(waiter = %t, admit, "knock answered");
                    let outcome = if admit {
                        KnockOutcome::Admitted
                    } else {
                        KnockOutcome::Denied
                    };
                    knock_ended(&self.state, &room, t, outcome);
                }
            }
            ClientMsg::Moderate {
                ref participant_id,
                action,
            } => {
                if !self.host_or_refuse(rid.clone()).await? {
                    return Ok(());
                }
                let m = &self.state.inner.moderation;
                let Some(target) = participant_id
                    .parse::<ParticipantId>()
                    .ok()
                    .filter(|t| m.is_member(&room, *t))
                else {
                    self.conn
                        .error(
                            ErrorCode::BadMessage,
                            "nobody with that id is in the room",
                            rid,
                        )
                        .await;
                    return Ok(());
                };
                info!(host = %self.pid, %target, ?action, "host action");
                match action {
                    HostAction::MuteAudio => {
                        server_mute(&self.state, &room, target, TrackKind::Audio)
                    }
                    HostAction::MuteVideo => {
                        server_mute(&self.state, &room, target, TrackKind::Video)
                    }
                    HostAction::Remove => {
                        rooms.send(
                            &room,
                            Some(&[target]),
                            &ServerMsg::leave(LeaveReason::Removed),
                        );
                    }
                    HostAction::MakeHost => {
                        if m.make_host(&room, target) {
                            rooms.update_and_broadcast(
                                &room,
                                target,
                                |i| i.host = true,
                                ServerMsg::Host {
                                    participant_id: target.to_string(),
                                    host: true,
                                },
                                true,
                            );
                        }
                    }
                }
            }
            ClientMsg::RoomSettings { lobby, locked } => {
                if !self.host_or_refuse(rid).await? {
                    return Ok(());
                }
                let f = self.state.inner.moderation.set_flags(&room, lobby, locked);
                info!(host = %self.pid, lobby = f.lobby, locked = f.locked, "room settings changed");
                rooms.send(
                    &room,
                    None,
                    &ServerMsg::RoomSettings {
                        lobby: f.lobby,
                        locked: f.locked,
                    },
                );
            }
            ClientMsg::EndRoom => {
                if !self.host_or_refuse(rid).await? {
                    return Ok(());
                }
                info!(host = %self.pid, "meeting ended by a host");
                self.state.inner.moderation.end_lobby(&room);
                rooms.send(&room, None, &ServerMsg::leave(LeaveReason::RoomEnded));
            }
            ClientMsg::Invite => {
                if !self.host_or_refuse(rid.clone()).await? {
                    return Ok(());
                }
                match self.state.inner.keys.issue_invite(&room, INVITE_TTL) {
                    Ok((invite, expires_at)) => {
                        let msg = ServerMsg::Invite { invite, expires_at };
                        self.conn.send(&msg).await?;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "invite signing failed");
                        self.conn
                            .error(ErrorCode::Internal, "internal error", rid)
                            .await;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `Ok(true)` for a host; otherwise answers `forbidden` and gives `Ok(false)`.
    async fn host_or_refuse(&mut self, rid: Option<String>) -> Result<bool, ()> {
        if self
            .state
            .inner
            .moderation
            .is_host(&self.claims.room, self.pid)
        {
            return Ok(true);
        }
        self.conn
            .error(
                ErrorCode::Forbidden,
                "only the room's hosts may do that",
                rid,
            )
            .await;
        Ok(false)
    }
}

/// How long an invite link made by a host admits people.
pub(crate) const INVITE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
