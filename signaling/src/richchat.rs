//! Chat beyond plain text: attachments, reactions, edits and deletions.
//!
//! They live in their own tables beside the chat table: in SQLite through
//! [`ChatStore::with_conn`], or, when the store is in PostgreSQL (cluster mode), in PostgreSQL
//! (`richchat_pg`), so that every node sees them. [`decorate`] lays them over messages read
//! from the store. Every call blocks: async code runs them in `spawn_blocking`.

use rusqlite::{params, Connection, OptionalExtension};

use crate::chat::ChatStore;
use crate::chat_pg::CALL_TIMEOUT;
use crate::protocol::{Attachment, ChatMessage, Reaction};
use crate::SignalingError;

/// Distinct emojis one message may collect.
pub(crate) const MAX_EMOJIS_PER_MESSAGE: usize = 20;

/// Why a change to a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No such message in this room (or it was deleted).
    NotFound,
    /// Someone else's message.
    NotYours,
    /// The message has as many distinct emojis as it may have.
    TooManyEmojis,
}

/// Creates the SQLite tables (idempotent). The PostgreSQL ones are created with the chat table.
pub(crate) fn init(store: &ChatStore) -> Result<(), SignalingError> {
    store.with_conn(|c| {
        c.execute_batch(
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
        )
    })?;
    Ok(())
}

/// Records that `message_id` carries `attachment`.
pub(crate) fn attach(
    store: &ChatStore,
    message_id: i64,
    attachment: &Attachment,
) -> Result<(), SignalingError> {
    let json = serde_json::to_string(attachment).unwrap_or_default();
    if let Some(pg) = store.pg() {
        return pg.run(CALL_TIMEOUT, move |c| {
            Box::pin(crate::richchat_pg::attach(c, message_id, json))
        });
    }
    store.with_conn(|c| {
        c.execute(
            "INSERT OR REPLACE INTO chat_attachment (message_id, json) VALUES (?1, ?2)",
            params![message_id, json],
        )
    })?;
    Ok(())
}

/// Fills in the attachment, reactions and edit state of each message.
pub(crate) fn decorate(
    store: &ChatStore,
    messages: &mut [ChatMessage],
) -> Result<(), SignalingError> {
    if messages.is_empty() {
        return Ok(());
    }
    if let Some(pg) = store.pg() {
        let mut owned = messages.to_vec();
        let decorated = pg.run(CALL_TIMEOUT, move |c| {
            Box::pin(async move {
                crate::richchat_pg::decorate(&*c, &mut owned).await?;
                Ok(owned)
            })
        })?;
        messages.clone_from_slice(&decorated);
        return Ok(());
    }
    store.with_conn(|c| {
        for m in messages.iter_mut() {
            decorate_one(c, m)?;
        }
        Ok::<_, rusqlite::Error>(())
    })?;
    Ok(())
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

/// Counts `identity`'s `emoji` into `reactions` (in the order emojis were first given).
pub(crate) fn add_reaction(reactions: &mut Vec<Reaction>, emoji: String, identity: String) {
    match reactions.iter_mut().find(|r| r.emoji == emoji) {
        Some(r) => {
            r.count += 1;
            r.identities.push(identity);
        }
        None => reactions.push(Reaction {
            emoji,
            count: 1,
            identities: vec![identity],
        }),
    }
}

/// One message of a room, decorated; `None` if there is none with this id.
fn load(c: &Connection, room: &str, id: i64) -> Result<Option<ChatMessage>, rusqlite::Error> {
    let m = c
        .prepare_cached(
            "SELECT id, participant_id, identity, name, text, ts FROM chat WHERE id = ?1 AND room = ?2",
        )?
        .query_row(params![id, room], |r| {
            Ok(ChatMessage {
                id: r.get(0)?,
                participant_id: r.get(1)?,
                identity: r.get(2)?,
                name: r.get(3)?,
                text: r.get(4)?,
                ts: r.get(5)?,
                extra: Default::default(),
            })
        })
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

/// `m` if it exists, is not deleted and (with `owner`) was sent by that identity.
pub(crate) fn check(m: Option<ChatMessage>, owner: Option<&str>) -> Result<ChatMessage, Refused> {
    match m {
        None => Err(Refused::NotFound),
        Some(m) if m.extra.deleted => Err(Refused::NotFound),
        Some(m) if owner.is_some_and(|o| o != m.identity) => Err(Refused::NotYours),
        Some(m) => Ok(m),
    }
}

/// Replaces the text of `identity`'s message `id`.
pub(crate) fn edit(
    store: &ChatStore,
    room: &str,
    identity: &str,
    id: i64,
    text: &str,
    now_ms: i64,
) -> Result<Result<ChatMessage, Refused>, SignalingError> {
    if let Some(pg) = store.pg() {
        let (room, identity, text) = (room.to_string(), identity.to_string(), text.to_string());
        return pg.run(CALL_TIMEOUT, move |c| {
            Box::pin(crate::richchat_pg::edit(
                c, room, identity, id, text, now_ms,
            ))
        });
    }
    Ok(store.with_conn(|c| {
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
    })?)
}

/// Deletes `identity`'s message `id`: its text, attachment and reactions are removed. Returns
/// the message as it is now, and the attachment it had when no other message carries it (the
/// caller removes its file if `identity` uploaded it).
pub(crate) fn delete(
    store: &ChatStore,
    room: &str,
    identity: &str,
    id: i64,
) -> Result<Result<(ChatMessage, Option<Attachment>), Refused>, SignalingError> {
    if let Some(pg) = store.pg() {
        let (room, identity) = (room.to_string(), identity.to_string());
        return pg.run(CALL_TIMEOUT, move |c| {
            Box::pin(crate::richchat_pg::delete(c, room, identity, id))
        });
    }
    Ok(store.with_conn(|c| {
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
    })?)
}

/// Adds (or removes) `identity`'s `emoji` reaction to message `id` of `room`.
pub(crate) fn react(
    store: &ChatStore,
    room: &str,
    identity: &str,
    id: i64,
    emoji: &str,
    active: bool,
) -> Result<Result<ChatMessage, Refused>, SignalingError> {
    if let Some(pg) = store.pg() {
        let (room, identity, emoji) = (room.to_string(), identity.to_string(), emoji.to_string());
        return pg.run(CALL_TIMEOUT, move |c| {
            Box::pin(crate::richchat_pg::react(
                c, room, identity, id, emoji, active,
            ))
        });
    }
    Ok(store.with_conn(|c| {
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
    })?)
}

/// Whether adding `emoji` to `m` would give it more distinct emojis than it may have.
pub(crate) fn too_many_emojis(m: &ChatMessage, emoji: &str) -> bool {
    let known = m.extra.reactions.iter().any(|r| r.emoji == emoji);
    !known && m.extra.reactions.len() >= MAX_EMOJIS_PER_MESSAGE
}

/// Whether `s` is acceptable as one reaction emoji: 1 to 32 bytes, no whitespace or control
/// characters, and not plain ASCII (so not text).
pub(crate) fn valid_emoji(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !s.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ChatStore {
        let s = ChatStore::in_memory().unwrap();
        init(&s).unwrap();
        s
    }

    #[test]
    fn only_the_sender_edits_or_deletes() {
        let s = store();
        let m = s.append("r", "PA_1", "alice", "A", "hello", 1).unwrap();
        assert_eq!(
            edit(&s, "r", "bob", m.id, "x", 2).unwrap(),
            Err(Refused::NotYours)
        );
        assert_eq!(
            edit(&s, "other", "alice", m.id, "x", 2).unwrap(),
            Err(Refused::NotFound)
        );
        let e = edit(&s, "r", "alice", m.id, "hello!", 2).unwrap().unwrap();
        assert_eq!((e.text.as_str(), e.extra.edited_ts), ("hello!", Some(2)));
        assert_eq!(
            delete(&s, "r", "bob", m.id).unwrap(),
            Err(Refused::NotYours)
        );
        let (d, _) = delete(&s, "r", "alice", m.id).unwrap().unwrap();
        assert!(d.extra.deleted && d.text.is_empty());
        assert_eq!(
            edit(&s, "r", "alice", m.id, "again", 3).unwrap(),
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
        attach(&s, first.id, &a).unwrap();
        attach(&s, second.id, &a).unwrap();
        let (_, orphan) = delete(&s, "r", "alice", first.id).unwrap().unwrap();
        assert_eq!(orphan, None, "the second message still shows the file");
        let (_, orphan) = delete(&s, "r", "alice", second.id).unwrap().unwrap();
        assert_eq!(orphan.map(|a| a.id), Some(a.id));
    }

    #[test]
    fn reactions_count_per_emoji_and_survive_in_history() {
        let s = store();
        let m = s.append("r", "PA_1", "alice", "A", "hi", 1).unwrap();
        react(&s, "r", "bob", m.id, "👍", true).unwrap().unwrap();
        react(&s, "r", "bob", m.id, "👍", true).unwrap().unwrap();
        react(&s, "r", "carol", m.id, "👍", true).unwrap().unwrap();
        let r = react(&s, "r", "carol", m.id, "🎉", true).unwrap().unwrap();
        assert_eq!(r.extra.reactions.len(), 2);
        assert_eq!(r.extra.reactions[0].count, 2);
        let r = react(&s, "r", "bob", m.id, "👍", false).unwrap().unwrap();
        assert_eq!(r.extra.reactions[0].identities, ["carol"]);
        let mut h = s.history("r", 10).unwrap();
        decorate(&s, &mut h).unwrap();
        assert_eq!(h[0].extra.reactions, r.extra.reactions);
        assert!(valid_emoji("👍") && !valid_emoji("a") && !valid_emoji("👍 👍"));
    }
}
