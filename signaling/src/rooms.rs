//! The room registry: who is in which room, and fan-out of room events to their sessions.

use std::collections::HashMap;
use std::sync::Mutex;

use huddle_media::ParticipantId;
use tokio::sync::mpsc;

use crate::protocol::{LeaveReason, ParticipantInfo, ServerMsg};

/// A member's session inbox.
pub(crate) type Inbox = mpsc::UnboundedSender<ServerMsg>;

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
        let mut rooms = self.lock();
        if !rooms.contains_key(room) && rooms.len() >= max_rooms {
            return Err(JoinRefused::TooManyRooms);
        }
        let r = rooms.entry(room.to_string()).or_default();
        for m in r.members.values() {
            if m.info.identity == info.identity {
                let _ = m
                    .inbox
                    .send(ServerMsg::leave(LeaveReason::DuplicateIdentity));
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
        let joined = ServerMsg::ParticipantJoined {
            participant: info.clone(),
        };
        for m in r.members.values() {
            let _ = m.inbox.send(joined.clone());
        }
        r.members.insert(id, Member { info, inbox });
        Ok(others)
    }

    /// Sends every member `leave` (their sessions then remove themselves). Returns how many
    /// were told.
    pub(crate) fn kick_all(&self, leave: &ServerMsg) -> usize {
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
        let mut rooms = self.lock();
        let Some(r) = rooms.get_mut(room) else {
            return false;
        };
        if r.members.remove(&id).is_none() {
            return false;
        }
        let msg = ServerMsg::ParticipantLeft {
            participant_id: id.to_string(),
            reason,
        };
        for m in r.members.values() {
            let _ = m.inbox.send(msg.clone());
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
        let mut rooms = self.lock();
        let Some(r) = rooms.get_mut(room) else { return };
        if let Some(m) = r.members.get_mut(&id) {
            f(&mut m.info);
        }
        for (mid, m) in &r.members {
            if include_self || *mid != id {
                let _ = m.inbox.send(msg.clone());
            }
        }
    }
}
