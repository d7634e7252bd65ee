//! Room settings, passwords and the knock-to-enter lobby.
//!
//! A room created through the room API keeps its settings (in memory, and in the `rooms` table of
//! the chat database so they survive a restart) until it is ended through the API. A room that
//! someone simply joins gets the defaults: no password, no lobby, the node's participant cap.
//!
//! Who may let people in: the room's hosts, that is participants whose token has the `admin`
//! grant, those a host made hosts, and, on a server with open joining (the local default), the
//! first person in a room opened by link (one not created through the API). When no host is in
//! the room, every participant may (otherwise a lobby room without a host would be a dead end);
//! knocks then go to everyone. Admins skip the password, the lobby and the lock.
//!
//! Hosts may also turn the lobby on and off and lock the room from the page ([`LiveFlags`]);
//! those settings live in memory while the room has members.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

use huddle_media::ParticipantId;
use ring::pbkdf2;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::chat::ChatStore;
use crate::protocol::ErrorCode;
use crate::SignalingError;

const PBKDF2_ITERATIONS: u32 = 20_000;

/// The settings of a room created through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// Participant cap for this room (at most the node's `max_participants`).
    pub max_participants: Option<usize>,
    /// PBKDF2-SHA256 hash of the password (`pbkdf2-sha256$ITER$SALT$HASH`, hex).
    #[serde(skip_serializing)]
    pub password_hash: Option<String>,
    /// Joiners wait in the lobby until admitted.
    pub lobby: bool,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
}

/// What a joiner meets at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Straight in.
    Open,
    /// Wait in the lobby.
    Lobby,
    /// Refused: `error` with this code, then the socket closes.
    Refused(ErrorCode, &'static str),
}

/// The lobby and lock of a room as its hosts set them from the page. They override the API's
/// lobby flag while the room has members, and are forgotten when it empties.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LiveFlags {
    /// Joiners wait in the lobby.
    pub(crate) lobby: bool,
    /// Nobody new may join (admins excepted).
    pub(crate) locked: bool,
    /// Whom a host put in the spotlight (shown large for everyone).
    pub(crate) spotlight: Option<ParticipantId>,
}

/// How a lobby wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LobbyOutcome {
    Admitted,
    Denied,
    RoomEnded,
}

struct Waiter {
    identity: String,
    name: String,
    decide: oneshot::Sender<LobbyOutcome>,
}

#[derive(Default)]
struct State {
    settings: HashMap<String, RoomSettings>,
    lobbies: HashMap<String, HashMap<ParticipantId, Waiter>>,
    /// Members per room, with whether they are hosts.
    members: HashMap<String, HashMap<ParticipantId, bool>>,
    /// Rooms whose hosts changed their lobby or lock from the page.
    live: HashMap<String, LiveFlags>,
}

impl State {
    fn flags(&self, room: &str) -> LiveFlags {
        self.live.get(room).copied().unwrap_or(LiveFlags {
            lobby: self.settings.get(room).is_some_and(|s| s.lobby),
            locked: false,
            spotlight: None,
        })
    }
}

/// Room settings and lobbies of this node.
pub(crate) struct Moderation {
    state: Mutex<State>,
    db: ChatStore,
}

impl Moderation {
    /// Loads the saved room settings.
    pub(crate) fn new(db: ChatStore) -> Result<Self, SignalingError> {
        let settings = db.with_conn(|c| -> Result<_, rusqlite::Error> {
            c.execute_batch(
                "CREATE TABLE IF NOT EXISTS rooms (
                     name TEXT PRIMARY KEY,
                     max_participants INTEGER,
                     password_hash TEXT,
                     lobby INTEGER NOT NULL,
                     created_at INTEGER NOT NULL
                 );",
            )?;
            let mut stmt = c.prepare(
                "SELECT name, max_participants, password_hash, lobby, created_at FROM rooms",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    RoomSettings {
                        max_participants: r.get::<_, Option<i64>>(1)?.map(|n| n.max(0) as usize),
                        password_hash: r.get(2)?,
                        lobby: r.get(3)?,
                        created_at: r.get::<_, i64>(4)?.max(0) as u64,
                    },
                ))
            })?;
            rows.collect::<Result<HashMap<_, _>, _>>()
        })?;
        Ok(Moderation {
            state: Mutex::new(State {
                settings,
                ..State::default()
            }),
            db,
        })
    }

    /// No saved settings (when loading them failed).
    pub(crate) fn empty(db: ChatStore) -> Self {
        Moderation {
            state: Mutex::new(State::default()),
            db,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a room or replaces its settings. Returns whether it was new. Blocking (SQLite).
    pub(crate) fn save(&self, room: &str, s: RoomSettings) -> Result<bool, SignalingError> {
        self.db.with_conn(|c| {
            c.execute(
                "INSERT OR REPLACE INTO rooms (name, max_participants, password_hash, lobby, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    room,
                    s.max_participants.map(|n| n as i64),
                    s.password_hash,
                    s.lobby,
                    s.created_at as i64
                ],
            )
        })?;
        Ok(self.lock().settings.insert(room.to_string(), s).is_none())
    }

    /// Replaces (or, with `None`, forgets) a room's settings in memory only: cluster mode keeps
    /// them in Redis and refreshes this copy when the room is used here.
    pub(crate) fn set_cached(&self, room: &str, s: Option<RoomSettings>) {
        let mut st = self.lock();
        match s {
            Some(s) => {
                st.settings.insert(room.to_string(), s);
            }
            None => {
                st.settings.remove(room);
            }
        }
    }

    /// A room's settings, when it was created through the API.
    pub(crate) fn settings(&self, room: &str) -> Option<RoomSettings> {
        self.lock().settings.get(room).cloned()
    }

    /// Every API-created room with its settings.
    pub(crate) fn all_settings(&self) -> Vec<(String, RoomSettings)> {
        let st = self.lock();
        st.settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// How many people wait in a room's lobby.
    pub(crate) fn waiting_count(&self, room: &str) -> usize {
        self.lock().lobbies.get(room).map_or(0, |l| l.len())
    }

    /// Forgets a room's settings and turns its lobby away. Returns whether it had settings.
    /// Blocking (SQLite).
    pub(crate) fn end(&self, room: &str) -> Result<bool, SignalingError> {
        self.db
            .with_conn(|c| c.execute("DELETE FROM rooms WHERE name = ?1", params![room]))?;
        let mut st = self.lock();
        if let Some(waiters) = st.lobbies.remove(room) {
            for w in waiters.into_values() {
                let _ = w.decide.send(LobbyOutcome::RoomEnded);
            }
        }
        Ok(st.settings.remove(room).is_some())
    }

    /// The participant cap of a room: its own, never above the node's.
    pub(crate) fn max_participants(&self, room: &str, node_max: usize) -> usize {
        self.lock()
            .settings
            .get(room)
            .and_then(|s| s.max_participants)
            .map_or(node_max, |n| n.min(node_max))
    }

    /// Checks a joiner against the room's password and lobby. Admins pass both. May block
    /// for a few milliseconds (password hashing): call it from a blocking task.
    pub(crate) fn gate(&self, room: &str, admin: bool, password: Option<&str>) -> Gate {
        let (settings, flags) = {
            let st = self.lock();
            (st.settings.get(room).cloned(), st.flags(room))
        };
        if admin {
            return Gate::Open;
        }
        if flags.locked {
            return Gate::Refused(ErrorCode::RoomLocked, "the host has locked this room");
        }
        let Some(s) = settings else {
            return if flags.lobby { Gate::Lobby } else { Gate::Open };
        };
        if let Some(hash) = &s.password_hash {
            match password.filter(|p| !p.is_empty()) {
                None => {
                    return Gate::Refused(ErrorCode::PasswordRequired, "this room needs a password")
                }
                Some(p) if !verify_password(hash, p) => {
                    return Gate::Refused(ErrorCode::WrongPassword, "wrong room password")
                }
                Some(_) => {}
            }
        }
        if flags.lobby {
            Gate::Lobby
        } else {
            Gate::Open
        }
    }

    /// The room's lobby and lock now.
    pub(crate) fn flags(&self, room: &str) -> LiveFlags {
        self.lock().flags(room)
    }

    /// A host changes the lobby or the lock (`None` keeps it). Returns the new flags. Turning
    /// the lobby off does not admit those already waiting: they are still answered one by one.
    pub(crate) fn set_flags(
        &self,
        room: &str,
        lobby: Option<bool>,
        locked: Option<bool>,
    ) -> LiveFlags {
        let mut st = self.lock();
        let mut f = st.flags(room);
        if let Some(l) = lobby {
            f.lobby = l;
        }
        if let Some(l) = locked {
            f.locked = l;
        }
        st.live.insert(room.to_string(), f);
        f
    }

    /// A host puts `pid` in the spotlight (`on`) or takes it out (only if it is the one in
    /// it). Returns the spotlight if it changed.
    pub(crate) fn set_spotlight(
        &self,
        room: &str,
        pid: ParticipantId,
        on: bool,
    ) -> Option<Option<ParticipantId>> {
        let mut st = self.lock();
        let mut f = st.flags(room);
        let new = match (on, f.spotlight) {
            (true, s) if s != Some(pid) => Some(pid),
            (false, Some(s)) if s == pid => None,
            _ => return None,
        };
        f.spotlight = new;
        st.live.insert(room.to_string(), f);
        Some(new)
    }

    /// Whether `pid` is a host of `room`.
    pub(crate) fn is_host(&self, room: &str, pid: ParticipantId) -> bool {
        let st = self.lock();
        st.members
            .get(room)
            .and_then(|m| m.get(&pid))
            .copied()
            .unwrap_or(false)
    }

    /// Whether `pid` is in `room` (entered, not waiting).
    pub(crate) fn is_member(&self, room: &str, pid: ParticipantId) -> bool {
        self.lock()
            .members
            .get(room)
            .is_some_and(|m| m.contains_key(&pid))
    }

    /// Makes a member a host. `false` when `pid` is not in the room.
    pub(crate) fn make_host(&self, room: &str, pid: ParticipantId) -> bool {
        let mut st = self.lock();
        match st.members.get_mut(room).and_then(|m| m.get_mut(&pid)) {
            Some(h) => {
                *h = true;
                true
            }
            None => false,
        }
    }

    /// Turns everyone in a room's lobby away (the room was ended by a host).
    pub(crate) fn end_lobby(&self, room: &str) {
        let mut st = self.lock();
        if let Some(waiters) = st.lobbies.remove(room) {
            for w in waiters.into_values() {
                let _ = w.decide.send(LobbyOutcome::RoomEnded);
            }
        }
    }

    /// Puts a joiner in the lobby; the receiver yields the decision.
    pub(crate) fn knock(
        &self,
        room: &str,
        pid: ParticipantId,
        identity: &str,
        name: &str,
    ) -> oneshot::Receiver<LobbyOutcome> {
        let (tx, rx) = oneshot::channel();
        self.lock()
            .lobbies
            .entry(room.to_string())
            .or_default()
            .insert(
                pid,
                Waiter {
                    identity: identity.to_string(),
                    name: name.to_string(),
                    decide: tx,
                },
            );
        rx
    }

    /// The waiter gave up. Returns whether it was still waiting.
    pub(crate) fn cancel_knock(&self, room: &str, pid: ParticipantId) -> bool {
        let mut st = self.lock();
        let Some(l) = st.lobbies.get_mut(room) else {
            return false;
        };
        let was = l.remove(&pid).is_some();
        if l.is_empty() {
            st.lobbies.remove(room);
        }
        was
    }

    /// Whether `pid` may admit and deny in `room`: an admin, or anyone when no admin is in.
    pub(crate) fn may_decide(&self, room: &str, pid: ParticipantId, admin: bool) -> bool {
        let st = self.lock();
        let Some(m) = st.members.get(room) else {
            return false;
        };
        let Some(&host) = m.get(&pid) else {
            return false;
        };
        host || admin || !m.values().any(|a| *a)
    }

    /// The admins in a room, or `None` when there are none (then everyone decides).
    pub(crate) fn deciders(&self, room: &str) -> Option<Vec<ParticipantId>> {
        let st = self.lock();
        let admins: Vec<ParticipantId> = st
            .members
            .get(room)?
            .iter()
            .filter(|(_, a)| **a)
            .map(|(p, _)| *p)
            .collect();
        (!admins.is_empty()).then_some(admins)
    }

    /// Answers a knock. `false` when nobody with that id waits in that room.
    pub(crate) fn decide(&self, room: &str, pid: ParticipantId, admit: bool) -> bool {
        let mut st = self.lock();
        let Some(l) = st.lobbies.get_mut(room) else {
            return false;
        };
        let Some(w) = l.remove(&pid) else {
            return false;
        };
        if l.is_empty() {
            st.lobbies.remove(room);
        }
        let outcome = if admit {
            LobbyOutcome::Admitted
        } else {
            LobbyOutcome::Denied
        };
        // The waiter may have just closed its socket: then it is simply gone.
        w.decide.send(outcome).is_ok()
    }

    /// Who waits in a room's lobby: `(participant_id, identity, name)`.
    pub(crate) fn waiting(&self, room: &str) -> Vec<(ParticipantId, String, String)> {
        self.lock().lobbies.get(room).map_or_else(Vec::new, |l| {
            l.iter()
                .map(|(p, w)| (*p, w.identity.clone(), w.name.clone()))
                .collect()
        })
    }

    /// A member entered the room: a host when it has the admin grant, or when `first_host`
    /// (open joining: the first person in the room) and the room was opened by link, not
    /// created through the API. Returns whether it is a host.
    pub(crate) fn entered(
        &self,
        room: &str,
        pid: ParticipantId,
        admin: bool,
        first_host: bool,
    ) -> bool {
        let mut st = self.lock();
        let by_link = !st.settings.contains_key(room);
        let members = st.members.entry(room.to_string()).or_default();
        let host = admin || (first_host && by_link && members.is_empty());
        members.insert(pid, host);
        host
    }

    /// A member left the room. Returns whether it had entered.
    pub(crate) fn left(&self, room: &str, pid: ParticipantId) -> bool {
        let mut st = self.lock();
        let Some(m) = st.members.get_mut(room) else {
            return false;
        };
        let was = m.remove(&pid).is_some();
        let empty = m.is_empty();
        // Whoever joins later is not told of a spotlight on someone gone (the pages in the
        // room drop it with the tile).
        if let Some(f) = st.live.get_mut(room).filter(|f| f.spotlight == Some(pid)) {
            f.spotlight = None;
        }
        if empty {
            st.members.remove(room);
            // The page's lobby and lock go with the last member. In a room opened by link
            // nobody is left to answer a knock, so its waiters are told the meeting ended.
            st.live.remove(room);
            if !st.settings.contains_key(room) {
                if let Some(waiters) = st.lobbies.remove(room) {
                    for w in waiters.into_values() {
                        let _ = w.decide.send(LobbyOutcome::RoomEnded);
                    }
                }
            }
        }
        was
    }
}

/// Hashes a room password for storage (PBKDF2-HMAC-SHA256, random salt).
pub(crate) fn hash_password(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let mut out = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations(PBKDF2_ITERATIONS),
        &salt,
        password.as_bytes(),
        &mut out,
    );
    format!(
        "pbkdf2-sha256${PBKDF2_ITERATIONS}${}${}",
        hex(&salt),
        hex(&out)
    )
}

fn iterations(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Checks a password against a stored hash, in constant time.
pub(crate) fn verify_password(stored: &str, password: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some("pbkdf2-sha256"), Some(iter), Some(salt), Some(hash), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let (Ok(iter), Some(salt), Some(hash)) = (iter.parse::<u32>(), unhex(salt), unhex(hash)) else {
        return false;
    };
    pbkdf2::verify(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations(iter),
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moderation() -> Moderation {
        Moderation::new(ChatStore::in_memory().unwrap()).unwrap()
    }

    fn settings(password: Option<&str>, lobby: bool) -> RoomSettings {
        RoomSettings {
            max_participants: Some(3),
            password_hash: password.map(hash_password),
            lobby,
            created_at: 1,
        }
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("sesame");
        assert!(verify_password(&h, "sesame"));
        assert!(!verify_password(&h, "Sesame"));
        assert!(!verify_password("garbage", "sesame"));
        assert!(!verify_password("pbkdf2-sha256$1$zz$00", "sesame"));
    }

    #[test]
    fn the_gate_checks_password_then_lobby_and_admins_pass() {
        let m = moderation();
        assert!(matches!(m.gate("free", false, None), Gate::Open));
        m.save("locked", settings(Some("pw"), true)).unwrap();
        assert!(matches!(
            m.gate("locked", false, None),
            Gate::Refused(ErrorCode::PasswordRequired, _)
        ));
        assert!(matches!(
            m.gate("locked", false, Some("no")),
            Gate::Refused(ErrorCode::WrongPassword, _)
        ));
        assert!(matches!(m.gate("locked", false, Some("pw")), Gate::Lobby));
        assert!(matches!(m.gate("locked", true, None), Gate::Open));
        assert_eq!(m.max_participants("locked", 50), 3);
        assert_eq!(m.max_participants("locked", 2), 2);
        assert_eq!(m.max_participants("free", 50), 50);
    }

    #[test]
    fn knocks_are_decided_once() {
        let m = moderation();
        let pid = ParticipantId(7);
        let mut rx = m.knock("r", pid, "bob", "Bob");
        assert_eq!(m.waiting("r").len(), 1);
        assert!(m.decide("r", pid, true));
        assert!(!m.decide("r", pid, false));
        assert_eq!(rx.try_recv().unwrap(), LobbyOutcome::Admitted);
        assert_eq!(m.waiting_count("r"), 0);
    }

    #[test]
    fn deciders_are_admins_or_everyone() {
        let m = moderation();
        let (a, b) = (ParticipantId(1), ParticipantId(2));
        assert!(!m.may_decide("r", b, false), "not a member");
        m.entered("r", b, false, false);
        assert!(m.may_decide("r", b, false));
        m.entered("r", a, true, false);
        assert!(m.may_decide("r", a, true));
        assert!(!m.may_decide("r", b, false));
        assert_eq!(m.deciders("r"), Some(vec![a]));
        m.left("r", a);
        assert!(m.may_decide("r", b, false));
        assert_eq!(m.deciders("r"), None);
    }

    #[test]
    fn a_spotlight_moves_clears_only_on_its_own_participant_and_goes_when_they_leave() {
        let m = moderation();
        let (a, b) = (ParticipantId(1), ParticipantId(2));
        m.entered("r", a, false, true);
        m.entered("r", b, false, true);
        assert_eq!(m.set_spotlight("r", a, true), Some(Some(a)));
        assert_eq!(m.set_spotlight("r", a, true), None, "no change");
        assert_eq!(m.set_spotlight("r", b, false), None, "b is not in it");
        assert_eq!(m.set_spotlight("r", b, true), Some(Some(b)));
        assert_eq!(m.flags("r").spotlight, Some(b));
        m.left("r", b);
        assert_eq!(m.flags("r").spotlight, None, "gone with b");
        assert_eq!(m.set_spotlight("r", a, true), Some(Some(a)));
        assert_eq!(m.set_spotlight("r", a, false), Some(None));
    }

    #[test]
    fn ending_a_room_forgets_it_and_empties_its_lobby() {
        let m = moderation();
        m.save("r", settings(None, true)).unwrap();
        let mut rx = m.knock("r", ParticipantId(3), "c", "C");
        assert!(m.end("r").unwrap());
        assert_eq!(rx.try_recv().unwrap(), LobbyOutcome::RoomEnded);
        assert!(m.settings("r").is_none());
        assert!(!m.end("r").unwrap());
    }

    #[test]
    fn the_first_in_a_room_opened_by_link_hosts_and_hosts_lock_and_open_a_lobby() {
        let m = moderation();
        let (a, b, c) = (ParticipantId(1), ParticipantId(2), ParticipantId(3));
        assert!(
            m.entered("link", a, false, true),
            "the first one by link is host"
        );
        assert!(!m.entered("link", b, false, true), "only the first");
        assert!(m.is_host("link", a) && !m.is_host("link", b));
        assert!(m.may_decide("link", a, false) && !m.may_decide("link", b, false));
        assert!(m.make_host("link", b) && m.is_host("link", b));
        assert!(!m.make_host("link", c), "not a member");
        // A room created through the API keeps the API's rules: no host by arrival.
        m.save("api", settings(None, false)).unwrap();
        assert!(!m.entered("api", c, false, true));

        assert!(matches!(m.gate("link", false, None), Gate::Open));
        assert_eq!(
            m.set_flags("link", Some(true), None),
            LiveFlags {
                lobby: true,
                locked: false,
                spotlight: None
            }
        );
        assert!(matches!(m.gate("link", false, None), Gate::Lobby));
        m.set_flags("link", None, Some(true));
        assert!(matches!(
            m.gate("link", false, None),
            Gate::Refused(ErrorCode::RoomLocked, _)
        ));
        assert!(
            matches!(m.gate("link", true, None), Gate::Open),
            "admins pass the lock"
        );
        // The API room's lobby can be turned on from the page too.
        m.set_flags("api", Some(true), None);
        assert!(matches!(m.gate("api", false, None), Gate::Lobby));

        // The flags go with the last member; a waiter of a link room is told it ended.
        let mut rx = m.knock("link", ParticipantId(9), "w", "W");
        m.left("link", a);
        m.left("link", b);
        assert_eq!(rx.try_recv().unwrap(), LobbyOutcome::RoomEnded);
        assert_eq!(m.flags("link"), LiveFlags::default());
        assert!(matches!(m.gate("link", false, None), Gate::Open));
    }
}
