//! Chat history in SQLite.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection};

use crate::protocol::ChatMessage;
use crate::SignalingError;

/// How many messages a joining participant gets.
pub const HISTORY_ON_JOIN: usize = 100;

/// The chat store. Cheap to clone; calls block, so async code runs them in `spawn_blocking`.
#[derive(Clone)]
pub struct ChatStore {
    conn: Arc<Mutex<Connection>>,
    /// Cluster mode: messages go to PostgreSQL; the SQLite connection keeps node-local tables.
    pg: Option<crate::chat_pg::PgChat>,
}

impl ChatStore {
    /// Opens (or creates) the database file. Each message is committed before it is acknowledged.
    pub fn open(path: &Path) -> Result<Self, SignalingError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// Chat in PostgreSQL (shared by every node of a cluster); `local` keeps this node's other
    /// tables. Blocking: connects and creates the table.
    pub fn open_postgres(local: &Path, url: &str) -> Result<Self, SignalingError> {
        let mut store = Self::open(local)?;
        store.pg = Some(crate::chat_pg::PgChat::connect(url)?);
        Ok(store)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Self, SignalingError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, SignalingError> {
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS chat (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 room TEXT NOT NULL,
                 participant_id TEXT NOT NULL,
                 identity TEXT NOT NULL,
                 name TEXT NOT NULL,
                 text TEXT NOT NULL,
                 ts INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS chat_room_id ON chat(room, id);",
        )?;
        Ok(ChatStore {
            conn: Arc::new(Mutex::new(conn)),
            pg: None,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: keep going.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The PostgreSQL store, in cluster mode.
    pub(crate) fn pg(&self) -> Option<&crate::chat_pg::PgChat> {
        self.pg.as_ref()
    }

    /// Runs `f` on the connection (other tables of the same database, e.g. room settings).
    /// Blocking.
    pub(crate) fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&self.lock())
    }

    /// Whether the database answers a query (for readiness).
    pub fn ping(&self) -> Result<(), SignalingError> {
        if let Some(pg) = &self.pg {
            pg.ping()?;
        }
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    /// Moves the write-ahead log into the database file and truncates it (at shutdown; every
    /// message is already committed).
    pub fn checkpoint(&self) -> Result<(), SignalingError> {
        self.lock()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
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
        if let Some(pg) = &self.pg {
            let msg = ChatMessage {
                id: 0,
                participant_id: participant_id.to_string(),
                identity: identity.to_string(),
                name: name.to_string(),
                text: text.to_string(),
                ts,
                extra: Default::default(),
            };
            return pg.append(room, msg);
        }
        let conn = self.lock();
        conn.execute(
            "INSERT INTO chat (room, participant_id, identity, name, text, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![room, participant_id, identity, name, text, ts],
        )?;
        Ok(ChatMessage {
            id: conn.last_insert_rowid(),
            participant_id: participant_id.to_string(),
            identity: identity.to_string(),
            name: name.to_string(),
            text: text.to_string(),
            ts,
            extra: Default::default(),
        })
    }

    /// The last `limit` messages of a room, oldest first.
    pub fn history(&self, room: &str, limit: usize) -> Result<Vec<ChatMessage>, SignalingError> {
        if let Some(pg) = &self.pg {
            return pg.history(room, limit);
        }
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, participant_id, identity, name, text, ts FROM chat WHERE room = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![room, limit as i64], |r| {
            Ok(ChatMessage {
                id: r.get(0)?,
                participant_id: r.get(1)?,
                identity: r.get(2)?,
                name: r.get(3)?,
                text: r.get(4)?,
                ts: r.get(5)?,
                extra: Default::default(),
            })
        })?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
