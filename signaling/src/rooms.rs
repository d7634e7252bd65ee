//! The room registry: who is in which room, and fan-out of room events to their sessions.
//!
//! A room event is serialized once, before the lock is taken ([`RoomMsg::new`]); every member's
//! inbox gets a handle on the same bytes.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use huddle_media::ParticipantId;
use tokio::sync::mpsc;

use crate::protocol::{LeaveReason, ParticipantInfo, ServerMsg};

/// A member's session inbox.
pub(crate) type Inbox = mpsc::UnboundedSender<RoomMsg>;

/// A message from the room for one member.
#[derive(Debug, Clone)]
pub enum RoomMsg {
    /// A message for the client, serialized once for every recipient.
    Shared(Shared),
    /// The room or the server ends the member's session with this `leave`.
    Leave(Box<ServerMsg>),
}

/// A server message serialized once; every recipient's copy shares the bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    /// The JSON text of the frame.
    pub text: Utf8Bytes,
    /// The message's `type` (for the metrics).
    pub ty: &'static str,
}

impl RoomMsg {
    /// Serializes `msg` (once) for fan-out; a `leave` stays typed, for the session to act on.
    pub fn new(msg: &ServerMsg) -> Option<RoomMsg> {
        if let ServerMsg::Leave { .. } = msg {
            return Some(RoomMsg::Leave(Box::new(msg.clone())));
        }
        match serde_json::to_string(msg) {
            Ok(text) => Some(RoomMsg::Shared(Shared {
                text: Utf8Bytes::from(text),
                ty: crate::metrics::server_msg_type(msg),
            })),
            Err(e) => {
                tracing::warn!(error = %e, "room message not serialized");
                None
            }
        }
    }
}

struct Member {
    info: ParticipantInfo,
    inbox: Inbox,
}

#[derive(Default)]
struct Room {
    members: HashMap<ParticipantId, Member>,
}

/// Why a join was refused.
pub(crate) enum JoinRefused {
    /// The room has `max_participants`.
    Full,
    /// The room does not exist and the node has `max_rooms`.
    TooManyRooms,
}

/// All rooms of this node. The lock is held only to change membership or copy a member list,
/// never across I/O.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, Room>>,
}

impl Rooms {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of rooms with at least one participant.
    pub fn room_count(&self) -> usize {
        self.lock().len()
    }

    /// The names of the open rooms.
    pub fn room_names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Number of participants over all rooms.
    pub fn participant_count(&self) -> usize {
        self.lock().values().map(|r| r.members.len()).sum()
    }

    /// Everyone in a room.
    pub fn participants(&self, room: &str) -> Vec<ParticipantInfo> {
        self.lock()
            .get(room)
            .map(|r| r.members.values().map(|m| m.info.clone()).collect())
            .unwrap_or_default()
    }

    /// Adds a participant; returns everyone else. A member with the same identity is told to
    /// leave (`duplicate_identity`) and its session removes itself.
    pub(crate) fn join(
        &self,
        room: &str,
        id: ParticipantId,
        info: ParticipantInfo,
        inbox: Inbox,
        max_participants: usize,
        max_rooms: usize,
    ) -> Result<Vec<ParticipantInfo>, JoinRefused> {
        let joined = RoomMsg::new(&ServerMsg::ParticipantJoined {
            participant: info.clone(),
        });
        let mut rooms = self.lock();
        if !rooms.contains_key(room) && rooms.len() >= max_rooms {
            return Err(JoinRefused::TooManyRooms);
        }
        let r = rooms.entry(room.to_string()).or_default();
        for m in r.members.values() {
            if m.info.identity == info.identity {
                let leave = ServerMsg::leave(LeaveReason::DuplicateIdentity);
                let _ = m.inbox.send(RoomMsg::Leave(Box::new(leave)));
            }
        }
        let staying = r
            .members
            .values()
            .filter(|m| m.info.identity != info.identity)
            .count();
        if staying >= max_participants {
            if r.members.is_empty() {
                rooms.remove(room);
            }
            return Err(JoinRefused::Full);
        }
        let others: Vec<ParticipantInfo> = r.members.values().map(|m| m.info.clone()).collect();
        if let Some(joined) = joined {
            for m in r.members.values() {
                let _ = m.inbox.send(joined.clone());
            }
        }
        r.members.insert(id, Member { info, inbox });
        Ok(others)
    }

    /// Sends every member `leave` (their sessions then remove themselves). Returns how many
    /// were told.
    pub(crate) fn kick_all(&self, leave: &ServerMsg) -> usize {
        let leave = RoomMsg::Leave(Box::new(leave.clone()));
        let rooms = self.lock();
        let mut n = 0;
        for m in rooms.values().flat_map(|r| r.members.values()) {
            let _ = m.inbox.send(leave.clone());
            n += 1;
        }
        n
    }

    /// Removes a participant and tells the others. Returns whether that closed the room (it was
    /// the last one).
    pub(crate) fn leave(&self, room: &str, id: ParticipantId, reason: LeaveReason) -> bool {
        let msg = RoomMsg::new(&ServerMsg::ParticipantLeft {
            participant_id: id.to_string(),
            reason,
        });
        let mut rooms = self.lock();
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        if r.members.remove(&id).is_none() {
            return false;
        }
        if let Some(msg) = msg {
            for m in r.members.values() {
                let _ = m.inbox.send(msg.clone());
            }
        }
        if r.members.is_empty() {
            rooms.remove(room);
            return true;
        }
        false
    }

    /// Open rooms with their participant counts.
    pub(crate) fn counts(&self) -> Vec<(String, usize)> {
        self.lock()
            .iter()
            .map(|(name, r)| (name.clone(), r.members.len()))
            .collect()
    }

    /// The member of `room` with this identity.
    pub(crate) fn find_identity(&self, room: &str, identity: &str) -> Option<ParticipantId> {
        self.lock()
            .get(room)?
            .members
            .iter()
            .find(|(_, m)| m.info.identity == identity)
            .map(|(id, _)| *id)
    }

    /// Sends `msg` to some members of a room (`None`: all). Returns how many got it.
    pub(crate) fn send(&self, room: &str, to: Option<&[ParticipantId]>, msg: &ServerMsg) -> usize {
        let Some(msg) = RoomMsg::new(msg) else {
            return 0;
        };
        let rooms = self.lock();
        let Some(r) = rooms.get(room) else { return 0 };
        let mut n = 0;
        for (id, m) in &r.members {
            if to.is_none_or(|to| to.contains(id)) && m.inbox.send(msg.clone()).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Changes a member's public state with `f`, then sends `msg` to everyone but the member
    /// (or to everyone, with `include_self`).
    pub(crate) fn update_and_broadcast(
        &self,
        room: &str,
        id: ParticipantId,
        f: impl FnOnce(&mut ParticipantInfo),
        msg: ServerMsg,
        include_self: bool,
    ) {
        let msg = RoomMsg::new(&msg);
        let mut rooms = self.lock();
        let Some(r) = rooms.get_mut(room) else { return };
        if let Some(m) = r.members.get_mut(&id) {
            f(&mut m.info);
        }
        let Some(msg) = msg else { return };
        for (mid, m) in &r.members {
            if include_self || *mid != id {
                let _ = m.inbox.send(msg.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> ParticipantInfo {
        ParticipantInfo {
            participant_id: id.into(),
            identity: id.into(),
            name: id.into(),
            audio_muted: false,
            video_muted: false,
            tracks: Vec::new(),
            hand_raised: false,
            screen_sharing: false,
            host: false,
        }
    }

    #[test]
    fn a_broadcast_is_serialized_once_and_every_member_gets_the_same_bytes() {
        let rooms = Rooms::default();
        let mut inboxes = Vec::new();
        for i in 1..=3 {
            let (tx, rx) = mpsc::unbounded_channel();
            rooms
                .join("r", ParticipantId(i), info(&i.to_string()), tx, 10, 10)
                .ok()
                .unwrap();
            inboxes.push(rx);
        }
        // Drain the participant_joined messages.
        for rx in &mut inboxes {
            while rx.try_recv().is_ok() {}
        }
        let msg = ServerMsg::Hand {
            participant_id: "1".into(),
            raised: true,
        };
        rooms.update_and_broadcast(
            "r",
            ParticipantId(1),
            |i| i.hand_raised = true,
            msg.clone(),
            true,
        );
        let got: Vec<Shared> = inboxes
            .iter_mut()
            .map(|rx| match rx.try_recv() {
                Ok(RoomMsg::Shared(s)) => s,
                other => panic!("{other:?}"),
            })
            .collect();
        let ptr = got[0].text.as_str().as_ptr();
        assert!(
            got.iter().all(|s| s.text.as_str().as_ptr() == ptr),
            "one allocation"
        );
        assert_eq!(got[0].text.as_str(), serde_json::to_string(&msg).unwrap());
        assert_eq!(got[0].ty, "hand");
        assert!(rooms.participants("r").iter().any(|p| p.hand_raised));
        // A leave stays typed: the session acts on it.
        rooms.kick_all(&ServerMsg::leave_to_reconnect());
        assert!(matches!(inboxes[0].try_recv(), Ok(RoomMsg::Leave(_))));
    }
}
