//! Requests that act on the room rather than on the session: answering knocks (`admit`,
//! `deny`) and the hosts' `moderate`, `room_settings`, `end_room` and `invite`. The session core
//! asks them as [`super::Query::Host`]; the driver applies them here to the room's shared state
//! and hands the replies (errors, the invite) back to the core.

use huddle_media::ParticipantId;
use tracing::info;

use crate::protocol::{
    ClientMsg, ErrorCode, HostAction, KnockOutcome, LeaveReason, ServerMsg, TrackKind,
};
use crate::AppState;

/// How long an invite link made by a host admits people.
pub(crate) const INVITE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Applies a host's or decider's request from `pid` (with the token's admin grant `admin`) to
/// `room`; returns the messages for the requester.
pub(crate) fn apply(
    state: &AppState,
    room: &str,
    pid: ParticipantId,
    admin: bool,
    msg: ClientMsg,
    rid: Option<String>,
) -> Vec<ServerMsg> {
    let m = &state.inner.moderation;
    let rooms = &state.inner.rooms;
    let refuse = |code, text: &str| vec![ServerMsg::error(code, text, rid.clone())];
    let host_only = || refuse(ErrorCode::Forbidden, "only the room's hosts may do that");
    match msg {
        ClientMsg::Admit { ref participant_id } | ClientMsg::Deny { ref participant_id } => {
            let admit = matches!(msg, ClientMsg::Admit { .. });
            if !m.may_decide(room, pid, admin) {
                return refuse(
                    ErrorCode::Forbidden,
                    "only the room's admins may answer knocks",
                );
            }
            let Some(t) = participant_id
                .parse::<ParticipantId>()
                .ok()
                .filter(|t| m.decide(room, *t, admit))
            else {
                return refuse(
                    ErrorCode::NotWaiting,
                    "nobody with that id is waiting in the lobby",
                );
            };
            info!(waiter = %t, admit, "knock answered");
            let outcome = if admit {
                KnockOutcome::Admitted
            } else {
                KnockOutcome::Denied
            };
            knock_ended(state, room, t, outcome);
            Vec::new()
        }
        ClientMsg::Moderate {
            ref participant_id,
            action,
        } => {
            if !m.is_host(room, pid) {
                return host_only();
            }
            let Some(target) = participant_id
                .parse::<ParticipantId>()
                .ok()
                .filter(|t| m.is_member(room, *t))
            else {
                return refuse(ErrorCode::BadMessage, "nobody with that id is in the room");
            };
            info!(host = %pid, %target, ?action, "host action");
            match action {
                HostAction::MuteAudio => server_mute(state, room, target, TrackKind::Audio),
                HostAction::MuteVideo => server_mute(state, room, target, TrackKind::Video),
                HostAction::Remove => {
                    rooms.send(
                        room,
                        Some(&[target]),
                        &ServerMsg::leave(LeaveReason::Removed),
                    );
                }
                HostAction::Spotlight | HostAction::Unspotlight => {
                    let on = action == HostAction::Spotlight;
                    if let Some(now) = m.set_spotlight(room, target, on) {
                        rooms.send(
                            room,
                            None,
                            &ServerMsg::Spotlight {
                                participant_id: now.map(|p| p.to_string()),
                            },
                        );
                    }
                }
                HostAction::MakeHost => {
                    if m.make_host(room, target) {
                        rooms.update_and_broadcast(
                            room,
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
            Vec::new()
        }
        ClientMsg::RoomSettings { lobby, locked } => {
            if !m.is_host(room, pid) {
                return host_only();
            }
            let f = m.set_flags(room, lobby, locked);
            info!(host = %pid, lobby = f.lobby, locked = f.locked, "room settings changed");
            rooms.send(
                room,
                None,
                &ServerMsg::RoomSettings {
                    lobby: f.lobby,
                    locked: f.locked,
                },
            );
            Vec::new()
        }
        ClientMsg::Recording { active } => {
            if !m.is_host(room, pid) {
                return host_only();
            }
            if !active {
                crate::recording::stop(state, room, "stopped by a host");
                return Vec::new();
            }
            let by = rooms
                .participants(room)
                .into_iter()
                .find(|p| p.participant_id == pid.to_string())
                .map_or_else(|| pid.to_string(), |p| p.identity);
            match crate::recording::start(state, room, &by) {
                Ok(_) | Err(crate::recording::RecordingError::AlreadyRecording) => Vec::new(),
                Err(e @ crate::recording::RecordingError::Io(_)) => {
                    tracing::error!(error = %e, "recording could not start");
                    refuse(ErrorCode::Internal, "the recording could not start")
                }
                Err(e) => refuse(ErrorCode::Unavailable, &e.to_string()),
            }
        }
        ClientMsg::EndRoom => {
            if !m.is_host(room, pid) {
                return host_only();
            }
            info!(host = %pid, "meeting ended by a host");
            m.end_lobby(room);
            rooms.send(room, None, &ServerMsg::leave(LeaveReason::RoomEnded));
            Vec::new()
        }
        ClientMsg::Invite => {
            if !m.is_host(room, pid) {
                return host_only();
            }
            match state.inner.keys.issue_invite(room, INVITE_TTL) {
                Ok((invite, expires_at)) => vec![ServerMsg::Invite { invite, expires_at }],
                Err(e) => {
                    tracing::error!(error = %e, "invite signing failed");
                    refuse(ErrorCode::Internal, "internal error")
                }
            }
        }
        _ => Vec::new(),
    }
}

/// Tells everyone who may have seen a knock that it ended.
pub(crate) fn knock_ended(state: &AppState, room: &str, pid: ParticipantId, outcome: KnockOutcome) {
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
