//! Chat storage: messages, and what happened to them after (attachments, reactions, edits,
//! deletions), behind one trait, [`ChatBackend`], with two implementations:
//!
//! * `sqlite`: one node's database file (the default);
//! * `pg`: PostgreSQL, shared by every node of a cluster, so a room that restarts on another
//!   node keeps its chat.
//!
//! [`ChatStore`] is what the rest of signaling holds: the backend, and the node's local SQLite
//! database for its other tables (room settings). Nothing outside this module knows which
//! backend it talks to. Every call blocks: async code runs them in `spawn_blocking`.

mod model;
pub(crate) mod pg;
mod sqlite;

use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;

use crate::protocol::{Attachment, ChatMessage};
use crate::SignalingError;
pub(crate) use model::{valid_emoji, ChatBackend, Refused};

/// How many messages a joining participant gets.
pub const HISTORY_ON_JOIN: usize = 100;

/// The chat store. Cheap to clone; calls block, so async code runs them in `spawn_blocking`.
#[derive(Clone)]
pub struct ChatStore {
    backend: Arc<dyn ChatBackend>,
    /// The node's own database (its other tables; the chat too, without PostgreSQL).
    local: sqlite::Sqlite,
    /// Cluster mode: the PostgreSQL connection (uploaded files live there too).
    pg: Option<pg::PgChat>,
}

impl ChatStore {
    /// Opens (or creates) the database file. Each message is committed before it is acknowledged.
    pub fn open(path: &Path) -> Result<Self, SignalingError> {
        Ok(Self::sqlite(sqlite::Sqlite::open(path)?))
    }

    /// Chat in PostgreSQL (shared by every node of a cluster); `local` keeps this node's other
    /// tables. Blocking: connects and creates the tables.
    pub fn open_postgres(local: &Path, url: &str) -> Result<Self, SignalingError> {
        let local = sqlite::Sqlite::open(local)?;
        let pg = pg::PgChat::connect(url)?;
        Ok(ChatStore {
            backend: Arc::new(pg.clone()),
            local,
            pg: Some(pg),
        })
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Self, SignalingError> {
        Ok(Self::sqlite(sqlite::Sqlite::in_memory()?))
    }

    fn sqlite(db: sqlite::Sqlite) -> Self {
        ChatStore {
            backend: Arc::new(db.clone()),
            local: db,
            pg: None,
        }
    }

    /// The PostgreSQL connection, in cluster mode (for uploaded files).
    pub(crate) fn pg(&self) -> Option<&pg::PgChat> {
        self.pg.as_ref()
    }

    /// Runs `f` on the local connection (other tables of the same database, e.g. room
    /// settings). Blocking.
    pub(crate) fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        self.local.with_conn(f)
    }

    /// Whether the databases answer a query (for readiness).
    pub fn ping(&self) -> Result<(), SignalingError> {
        self.backend.ping()?;
        self.local.ping()
    }

    /// Moves the local write-ahead log into the database file and truncates it (at shutdown;
    /// every message is already committed).
    pub fn checkpoint(&self) -> Result<(), SignalingError> {
        self.local.checkpoint()
    }

    /// Stores a message and returns it with its id.
    pub fn append(
        &self,
        room: &str,
        participant_id: &str,
        identity: &str,
        name: &str,
        text: &str,
        ts: i64,
    ) -> Result<ChatMessage, SignalingError> {
        let msg = ChatMessage {
            id: 0,
            participant_id: participant_id.to_string(),
            identity: identity.to_string(),
            name: name.to_string(),
            text: text.to_string(),
            ts,
            extra: Default::default(),
        };
        self.backend.append(room, msg)
    }

    /// The last `limit` messages of a room, oldest first (undecorated: see
    /// [`ChatStore::decorate`]).
    pub fn history(&self, room: &str, limit: usize) -> Result<Vec<ChatMessage>, SignalingError> {
        self.backend.history(room, limit)
    }

    /// Records that `message_id` carries `attachment`.
    pub(crate) fn attach(
        &self,
        message_id: i64,
        attachment: &Attachment,
    ) -> Result<(), SignalingError> {
        self.backend.attach(message_id, attachment)
    }

    /// Fills in the attachment, reactions and edit state of each message.
    pub(crate) fn decorate(&self, messages: &mut [ChatMessage]) -> Result<(), SignalingError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.backend.decorate(messages)
    }

    /// Replaces the text of `identity`'s message `id`.
    pub(crate) fn edit(
        &self,
        room: &str,
        identity: &str,
        id: i64,
        text: &str,
        now_ms: i64,
    ) -> Result<Result<ChatMessage, Refused>, SignalingError> {
        self.backend.edit(room, identity, id, text, now_ms)
    }

    /// Deletes `identity`'s message `id` (see [`ChatBackend::delete`]).
    pub(crate) fn delete(
        &self,
        room: &str,
        identity: &str,
        id: i64,
    ) -> Result<Result<(ChatMessage, Option<Attachment>), Refused>, SignalingError> {
        self.backend.delete(room, identity, id)
    }

    /// Adds (or removes) `identity`'s `emoji` reaction to message `id` of `room`.
    pub(crate) fn react(
        &self,
        room: &str,
        identity: &str,
        id: i64,
        emoji: &str,
        active: bool,
    ) -> Result<Result<ChatMessage, Refused>, SignalingError> {
        self.backend.react(room, identity, id, emoji, active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ChatStore {
        ChatStore::in_memory().unwrap()
    }

    #[test]
    fn only_the_sender_edits_or_deletes() {
        let s = store();
        let m = s.append("r", "PA_1", "alice", "A", "hello", 1).unwrap();
        assert_eq!(
            s.edit("r", "bob", m.id, "x", 2).unwrap(),
            Err(Refused::NotYours)
        );
        assert_eq!(
            s.edit("other", "alice", m.id, "x", 2).unwrap(),
            Err(Refused::NotFound)
        );
        let e = s.edit("r", "alice", m.id, "hello!", 2).unwrap().unwrap();
        assert_eq!((e.text.as_str(), e.extra.edited_ts), ("hello!", Some(2)));
        assert_eq!(s.delete("r", "bob", m.id).unwrap(), Err(Refused::NotYours));
        let (d, _) = s.delete("r", "alice", m.id).unwrap().unwrap();
        assert!(d.extra.deleted && d.text.is_empty());
        assert_eq!(
            s.edit("r", "alice", m.id, "again", 3).unwrap(),
            Err(Refused::NotFound)
        );
    }

    #[test]
    fn a_file_another_message_still_carries_is_not_handed_back_for_removal() {
        let s = store();
        let a = Attachment {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "pic.png".into(),
            size: 70,
            mime: "image/png".into(),
            thumb: None,
        };
        let first = s.append("r", "PA_1", "alice", "A", "", 1).unwrap();
        let second = s.append("r", "PA_1", "alice", "A", "again", 2).unwrap();
        s.attach(first.id, &a).unwrap();
        s.attach(second.id, &a).unwrap();
        let (_, orphan) = s.delete("r", "alice", first.id).unwrap().unwrap();
        assert_eq!(orphan, None, "the second message still shows the file");
        let (_, orphan) = s.delete("r", "alice", second.id).unwrap().unwrap();
        assert_eq!(orphan.map(|a| a.id), Some(a.id));
    }

    #[test]
    fn reactions_count_per_emoji_and_survive_in_history() {
        let s = store();
        let m = s.append("r", "PA_1", "alice", "A", "hi", 1).unwrap();
        s.react("r", "bob", m.id, "👍", true).unwrap().unwrap();
        s.react("r", "bob", m.id, "👍", true).unwrap().unwrap();
        s.react("r", "carol", m.id, "👍", true).unwrap().unwrap();
        let r = s.react("r", "carol", m.id, "🎉", true).unwrap().unwrap();
        assert_eq!(r.extra.reactions.len(), 2);
        assert_eq!(r.extra.reactions[0].count, 2);
        let r = s.react("r", "bob", m.id, "👍", false).unwrap().unwrap();
        assert_eq!(r.extra.reactions[0].identities, ["carol"]);
        let mut h = s.history("r", 10).unwrap();
        s.decorate(&mut h).unwrap();
        assert_eq!(h[0].extra.reactions, r.extra.reactions);
        assert!(valid_emoji("👍") && !valid_emoji("a") && !valid_emoji("👍 👍"));
    }

    #[test]
    fn history_is_per_room_oldest_first_and_bounded() {
        let s = ChatStore::in_memory().unwrap();
        for i in 0..5 {
            s.append("a", "PA_1", "alice", "Alice", &format!("m{i}"), i)
                .unwrap();
        }
        s.append("b", "PA_2", "bob", "Bob", "other room", 9)
            .unwrap();
        let h = s.history("a", 3).unwrap();
        let texts: Vec<_> = h.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["m2", "m3", "m4"]);
        assert!(h.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[test]
    fn history_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("huddle-chat-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chat.db");
        let _ = std::fs::remove_file(&path);
        ChatStore::open(&path)
            .unwrap()
            .append("r", "PA_1", "a", "A", "kept", 1)
            .unwrap();
        let h = ChatStore::open(&path).unwrap().history("r", 10).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].text, "kept");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
