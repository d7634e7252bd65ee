//! The chat store in SQLite (one node): messages, and beside them attachments, reactions and
//! edits in their own tables. The connection also keeps the node's other tables (room settings,
//! through `ChatStore::with_conn`).

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use super::model::{add_reaction, check, too_many_emojis, ChatBackend, Refused};
use crate::protocol::{Attachment, ChatMessage, Reaction};
use crate::SignalingError;

/// One SQLite database. Cheap to clone.
#[derive(Clone)]
pub(super) struct Sqlite {
    conn: Arc<Mutex<Connection>>,
}

impl Sqlite {
    /// Opens (or creates) the database file and its tables.
    pub(super) fn open(path: &Path) -> Result<Self, SignalingError> {
        Self::init(Connection::open(path)?)
    }

    /// An in-memory database, for tests.
    pub(super) fn in_memory() -> Result<Self, SignalingError> {
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
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS chat_attachment (
                 message_id INTEGER PRIMARY KEY,
                 json TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS chat_reaction (
                 message_id INTEGER NOT NULL,
                 identity TEXT NOT NULL,
                 emoji TEXT NOT NULL,
                 PRIMARY KEY (message_id, identity, emoji)
             );
             CREATE TABLE IF NOT EXISTS chat_edit (
                 message_id INTEGER PRIMARY KEY,
                 edited_ts INTEGER,
                 deleted INTEGER NOT NULL DEFAULT 0
             );",
        )?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: keep going.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection. Blocking.
    pub(super) fn with_conn<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        f(&self.lock())
    }

    /// Moves the write-ahead log into the database file and truncates it.
    pub(super) fn checkpoint(&self) -> Result<(), SignalingError> {
        self.lock()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

impl ChatBackend for Sqlite {
    fn ping(&self) -> Result<(), SignalingError> {
        self.lock().query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn append(&self, room: &str, msg: ChatMessage) -> Result<ChatMessage, SignalingError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO chat (room, participant_id, identity, name, text, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![room, msg.participant_id, msg.identity, msg.name, msg.text, msg.ts],
        )?;
        Ok(ChatMessage {
            id: conn.last_insert_rowid(),
            ..msg
        })
    }

    fn history(&self, room: &str, limit: usize) -> Result<Vec<ChatMessage>, SignalingError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, participant_id, identity, name, text, ts FROM chat WHERE room = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![room, limit as i64], message)?;
        let mut out = rows.collect::<Result<Vec<_>, _>>()?;
        out.reverse();
        Ok(out)
    }

    fn attach(&self, message_id: i64, attachment: &Attachment) -> Result<(), SignalingError> {
        let json = serde_json::to_string(attachment).unwrap_or_default();
        self.lock().execute(
            "INSERT OR REPLACE INTO chat_attachment (message_id, json) VALUES (?1, ?2)",
            params![message_id, json],
        )?;
        Ok(())
    }

    fn decorate(&self, messages: &mut [ChatMessage]) -> Result<(), SignalingError> {
        let c = self.lock();
        for m in messages.iter_mut() {
            decorate_one(&c, m)?;
        }
        Ok(())
    }

    fn edit(
        &self,
        room: &str,
        identity: &str,
        id: i64,
        text: &str,
        now_ms: i64,
    ) -> Result<Result<ChatMessage, Refused>, SignalingError> {
        let c = &*self.lock();
        let r: Result<_, rusqlite::Error> = (|| {
            if let Err(r) = owned(c, room, id, Some(identity))? {
                return Ok(Err(r));
            }
            c.execute("UPDATE chat SET text = ?1 WHERE id = ?2", params![text, id])?;
            c.execute(
                "INSERT INTO chat_edit (message_id, edited_ts, deleted) VALUES (?1, ?2, 0)
             ON CONFLICT(message_id) DO UPDATE SET edited_ts = excluded.edited_ts",
                params![id, now_ms],
            )?;
            load(c, room, id).map(|m| m.ok_or(Refused::NotFound))
        })();
        Ok(r?)
    }

    fn delete(
        &self,
        room: &str,
        identity: &str,
        id: i64,
    ) -> Result<Result<(ChatMessage, Option<Attachment>), Refused>, SignalingError> {
        let c = &*self.lock();
        let r: Result<_, rusqlite::Error> = (|| {
            let before = match owned(c, room, id, Some(identity))? {
                Ok(m) => m,
                Err(r) => return Ok(Err(r)),
            };
            c.execute("UPDATE chat SET text = '' WHERE id = ?1", params![id])?;
            c.execute(
                "DELETE FROM chat_attachment WHERE message_id = ?1",
                params![id],
            )?;
            c.execute(
                "DELETE FROM chat_reaction WHERE message_id = ?1",
                params![id],
            )?;
            c.execute(
                "INSERT INTO chat_edit (message_id, edited_ts, deleted) VALUES (?1, NULL, 1)
             ON CONFLICT(message_id) DO UPDATE SET deleted = 1",
                params![id],
            )?;
            let orphan = match before.extra.attachment {
                Some(a) => {
                    let still_used: bool = c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM chat_attachment WHERE json_extract(json, '$.id') = ?1)",
                    params![a.id],
                    |r| r.get(0),
                )?;
                    (!still_used).then_some(a)
                }
                None => None,
            };
            load(c, room, id).map(|m| m.ok_or(Refused::NotFound).map(|m| (m, orphan)))
        })();
        Ok(r?)
    }

    fn react(
        &self,
        room: &str,
        identity: &str,
        id: i64,
        emoji: &str,
        active: bool,
    ) -> Result<Result<ChatMessage, Refused>, SignalingError> {
        let c = &*self.lock();
        let r: Result<_, rusqlite::Error> = (|| {
            let m = match owned(c, room, id, None)? {
                Ok(m) => m,
                Err(r) => return Ok(Err(r)),
            };
            if active {
                if too_many_emojis(&m, emoji) {
                    return Ok(Err(Refused::TooManyEmojis));
                }
                c.execute(
                "INSERT OR IGNORE INTO chat_reaction (message_id, identity, emoji) VALUES (?1, ?2, ?3)",
                params![id, identity, emoji],
            )?;
            } else {
                c.execute(
                "DELETE FROM chat_reaction WHERE message_id = ?1 AND identity = ?2 AND emoji = ?3",
                params![id, identity, emoji],
            )?;
            }
            load(c, room, id).map(|m| m.ok_or(Refused::NotFound))
        })();
        Ok(r?)
    }
}

fn decorate_one(c: &Connection, m: &mut ChatMessage) -> Result<(), rusqlite::Error> {
    let json: Option<String> = c
        .prepare_cached("SELECT json FROM chat_attachment WHERE message_id = ?1")?
        .query_row(params![m.id], |r| r.get(0))
        .optional()?;
    m.extra.attachment = json.and_then(|j| serde_json::from_str(&j).ok());
    let mut stmt = c.prepare_cached(
        "SELECT emoji, identity FROM chat_reaction WHERE message_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt.query_map(params![m.id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut reactions: Vec<Reaction> = Vec::new();
    for row in rows {
        let (emoji, identity) = row?;
        add_reaction(&mut reactions, emoji, identity);
    }
    m.extra.reactions = reactions;
    let edit: Option<(Option<i64>, bool)> = c
        .prepare_cached("SELECT edited_ts, deleted FROM chat_edit WHERE message_id = ?1")?
        .query_row(params![m.id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))
        .optional()?;
    if let Some((edited_ts, deleted)) = edit {
        m.extra.edited_ts = edited_ts;
        m.extra.deleted = deleted;
    }
    Ok(())
}

/// One message of a room, decorated; `None` if there is none with this id.
fn load(c: &Connection, room: &str, id: i64) -> Result<Option<ChatMessage>, rusqlite::Error> {
    let m = c
        .prepare_cached(
            "SELECT id, participant_id, identity, name, text, ts FROM chat WHERE id = ?1 AND room = ?2",
        )?
        .query_row(params![id, room], message)
        .optional()?;
    let Some(mut m) = m else { return Ok(None) };
    decorate_one(c, &mut m)?;
    Ok(Some(m))
}

/// The message `id` of `room` if it exists, is not deleted, and (with `owner`) was sent by
/// that identity.
fn owned(
    c: &Connection,
    room: &str,
    id: i64,
    owner: Option<&str>,
) -> Result<Result<ChatMessage, Refused>, rusqlite::Error> {
    Ok(check(load(c, room, id)?, owner))
}

/// A `chat` row (id, participant_id, identity, name, text, ts) as a message.
fn message(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChatMessage> {
    Ok(ChatMessage {
        id: r.get(0)?,
        participant_id: r.get(1)?,
        identity: r.get(2)?,
        name: r.get(3)?,
        text: r.get(4)?,
        ts: r.get(5)?,
        extra: Default::default(),
    })
}
