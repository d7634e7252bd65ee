//! Rich chat (attachments, reactions, edits, deletions) and uploaded files in PostgreSQL, for
//! cluster mode: every node reads and writes them, so they follow a room that restarts on
//! another node.
//!
//! The functions here run on the PostgreSQL chat thread through [`PgChat::run`]
//! (`crate::chat_pg::PgChat::run`); `richchat` and `files` call them when the chat store is in
//! PostgreSQL. Message ids are the `chat` table's ids. A change to a message runs in one
//! transaction that locks the message's row first, so two nodes changing the same message take
//! turns (and the emoji cap holds).

use std::collections::HashMap;

use tokio_postgres::{Client, Error, GenericClient, Row};

use crate::files::StoredFile;
use crate::protocol::{Attachment, ChatMessage};
use crate::richchat::{add_reaction, check, too_many_emojis, Refused};

/// The rich chat and file tables, created with the chat table (`chat_pg`).
///
/// Files are kept whole in `chat_file` (`bytea`; the upload cap bounds them), with their
/// thumbnail; the retention sweep deletes rows by `created_ms`.
pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS chat_attachment (
    message_id BIGINT PRIMARY KEY REFERENCES chat (id) ON DELETE CASCADE,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chat_reaction (
    message_id BIGINT NOT NULL REFERENCES chat (id) ON DELETE CASCADE,
    identity TEXT NOT NULL,
    emoji TEXT NOT NULL,
    seq BIGSERIAL,
    PRIMARY KEY (message_id, identity, emoji)
);
CREATE TABLE IF NOT EXISTS chat_edit (
    message_id BIGINT PRIMARY KEY REFERENCES chat (id) ON DELETE CASCADE,
    edited_ts BIGINT,
    deleted BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS chat_file (
    room TEXT NOT NULL,
    id TEXT NOT NULL,
    identity TEXT NOT NULL,
    name TEXT NOT NULL,
    size BIGINT NOT NULL,
    mime TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    data BYTEA NOT NULL,
    thumb BYTEA,
    PRIMARY KEY (room, id)
);
CREATE INDEX IF NOT EXISTS chat_file_created ON chat_file (created_ms)";

fn message(r: &Row) -> Result<ChatMessage, Error> {
    Ok(ChatMessage {
        id: r.try_get(0)?,
        participant_id: r.try_get(1)?,
        identity: r.try_get(2)?,
        name: r.try_get(3)?,
        text: r.try_get(4)?,
        ts: r.try_get(5)?,
        extra: Default::default(),
    })
}

/// Records that `message_id` carries the attachment `json`.
pub(crate) async fn attach(c: &mut Client, message_id: i64, json: String) -> Result<(), Error> {
    c.execute(
        "INSERT INTO chat_attachment (message_id, json) VALUES ($1, $2)
         ON CONFLICT (message_id) DO UPDATE SET json = excluded.json",
        &[&message_id, &json],
    )
    .await?;
    Ok(())
}

/// Fills in the attachment, reactions and edit state of each message (three queries for all).
pub(crate) async fn decorate<C: GenericClient + Sync>(
    c: &C,
    messages: &mut [ChatMessage],
) -> Result<(), Error> {
    if messages.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = messages.iter().map(|m| m.id).collect();
    let index: HashMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    for m in messages.iter_mut() {
        m.extra.attachment = None;
        m.extra.reactions.clear();
    }
    for r in c
        .query(
            "SELECT message_id, json FROM chat_attachment WHERE message_id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        if let Some(&i) = index.get(&r.try_get::<_, i64>(0)?) {
            messages[i].extra.attachment = serde_json::from_str(r.try_get(1)?).ok();
        }
    }
    for r in c
        .query(
            "SELECT message_id, emoji, identity FROM chat_reaction WHERE message_id = ANY($1)
             ORDER BY seq",
            &[&ids],
        )
        .await?
    {
        if let Some(&i) = index.get(&r.try_get::<_, i64>(0)?) {
            add_reaction(
                &mut messages[i].extra.reactions,
                r.try_get(1)?,
                r.try_get(2)?,
            );
        }
    }
    for r in c
        .query(
            "SELECT message_id, edited_ts, deleted FROM chat_edit WHERE message_id = ANY($1)",
            &[&ids],
        )
        .await?
    {
        if let Some(&i) = index.get(&r.try_get::<_, i64>(0)?) {
            messages[i].extra.edited_ts = r.try_get(1)?;
            messages[i].extra.deleted = r.try_get(2)?;
        }
    }
    Ok(())
}

/// One message of a room, decorated; `None` if there is none with this id.
async fn load<C: GenericClient + Sync>(
    c: &C,
    room: &str,
    id: i64,
) -> Result<Option<ChatMessage>, Error> {
    let Some(row) = c
        .query_opt(
            "SELECT id, participant_id, identity, name, text, ts FROM chat
             WHERE id = $1 AND room = $2",
            &[&id, &room],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut m = [message(&row)?];
    decorate(c, &mut m).await?;
    let [m] = m;
    Ok(Some(m))
}

/// Locks message `id` of `room` for the rest of the transaction and checks it as
/// [`check`] does.
async fn lock_owned<C: GenericClient + Sync>(
    c: &C,
    room: &str,
    id: i64,
    owner: Option<&str>,
) -> Result<Result<ChatMessage, Refused>, Error> {
    c.execute(
        "SELECT 1 FROM chat WHERE id = $1 AND room = $2 FOR UPDATE",
        &[&id, &room],
    )
    .await?;
    Ok(check(load(c, room, id).await?, owner))
}

/// Replaces the text of `identity`'s message `id`.
pub(crate) async fn edit(
    c: &mut Client,
    room: String,
    identity: String,
    id: i64,
    text: String,
    now_ms: i64,
) -> Result<Result<ChatMessage, Refused>, Error> {
    let tx = c.transaction().await?;
    if let Err(r) = lock_owned(&tx, &room, id, Some(&identity)).await? {
        return Ok(Err(r));
    }
    tx.execute("UPDATE chat SET text = $1 WHERE id = $2", &[&text, &id])
        .await?;
    tx.execute(
        "INSERT INTO chat_edit (message_id, edited_ts, deleted) VALUES ($1, $2, FALSE)
         ON CONFLICT (message_id) DO UPDATE SET edited_ts = excluded.edited_ts",
        &[&id, &now_ms],
    )
    .await?;
    let m = load(&tx, &room, id).await?;
    tx.commit().await?;
    Ok(m.ok_or(Refused::NotFound))
}

/// Deletes `identity`'s message `id`: its text, attachment and reactions are removed. Returns
/// the message as it is now and the attachment it had, when no other message carries it.
pub(crate) async fn delete(
    c: &mut Client,
    room: String,
    identity: String,
    id: i64,
) -> Result<Result<(ChatMessage, Option<Attachment>), Refused>, Error> {
    let tx = c.transaction().await?;
    let before = match lock_owned(&tx, &room, id, Some(&identity)).await? {
        Ok(m) => m,
        Err(r) => return Ok(Err(r)),
    };
    tx.execute("UPDATE chat SET text = '' WHERE id = $1", &[&id])
        .await?;
    tx.execute("DELETE FROM chat_attachment WHERE message_id = $1", &[&id])
        .await?;
    tx.execute("DELETE FROM chat_reaction WHERE message_id = $1", &[&id])
        .await?;
    tx.execute(
        "INSERT INTO chat_edit (message_id, edited_ts, deleted) VALUES ($1, NULL, TRUE)
         ON CONFLICT (message_id) DO UPDATE SET deleted = TRUE",
        &[&id],
    )
    .await?;
    let orphan = match before.extra.attachment {
        Some(a) => {
            let still_used: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM chat_attachment WHERE (json::json)->>'id' = $1)",
                    &[&a.id],
                )
                .await?
                .try_get(0)?;
            (!still_used).then_some(a)
        }
        None => None,
    };
    let m = load(&tx, &room, id).await?;
    tx.commit().await?;
    Ok(m.ok_or(Refused::NotFound).map(|m| (m, orphan)))
}

/// Adds (or removes) `identity`'s `emoji` reaction to message `id` of `room`.
pub(crate) async fn react(
    c: &mut Client,
    room: String,
    identity: String,
    id: i64,
    emoji: String,
    active: bool,
) -> Result<Result<ChatMessage, Refused>, Error> {
    let tx = c.transaction().await?;
    let m = match lock_owned(&tx, &room, id, None).await? {
        Ok(m) => m,
        Err(r) => return Ok(Err(r)),
    };
    if active {
        if too_many_emojis(&m, &emoji) {
            return Ok(Err(Refused::TooManyEmojis));
        }
        tx.execute(
            "INSERT INTO chat_reaction (message_id, identity, emoji) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&id, &identity, &emoji],
        )
        .await?;
    } else {
        tx.execute(
            "DELETE FROM chat_reaction WHERE message_id = $1 AND identity = $2 AND emoji = $3",
            &[&id, &identity, &emoji],
        )
        .await?;
    }
    let m = load(&tx, &room, id).await?;
    tx.commit().await?;
    Ok(m.ok_or(Refused::NotFound))
}

/// Stores an uploaded file (and its thumbnail).
pub(crate) async fn put_file(
    c: &mut Client,
    meta: StoredFile,
    data: Vec<u8>,
    thumb: Option<Vec<u8>>,
) -> Result<(), Error> {
    let size = i64::try_from(meta.size).unwrap_or(i64::MAX);
    c.execute(
        "INSERT INTO chat_file (room, id, identity, name, size, mime, created_ms, data, thumb)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &meta.room,
            &meta.id,
            &meta.identity,
            &meta.name,
            &size,
            &meta.mime,
            &meta.created_ms,
            &data,
            &thumb,
        ],
    )
    .await?;
    Ok(())
}

const FILE_COLUMNS: &str = "id, room, identity, name, size, mime, thumb IS NOT NULL, created_ms";

fn stored_file(r: &Row) -> Result<StoredFile, Error> {
    Ok(StoredFile {
        id: r.try_get(0)?,
        room: r.try_get(1)?,
        identity: r.try_get(2)?,
        name: r.try_get(3)?,
        size: u64::try_from(r.try_get::<_, i64>(4)?).unwrap_or(0),
        mime: r.try_get(5)?,
        thumb: r.try_get(6)?,
        created_ms: r.try_get(7)?,
    })
}

/// What is known of file `id` of `room`, if it exists.
pub(crate) async fn file_meta(
    c: &mut Client,
    room: String,
    id: String,
) -> Result<Option<StoredFile>, Error> {
    c.query_opt(
        &format!("SELECT {FILE_COLUMNS} FROM chat_file WHERE room = $1 AND id = $2"),
        &[&room, &id],
    )
    .await?
    .map(|r| stored_file(&r))
    .transpose()
}

/// File `id` of `room` and its bytes (or its thumbnail's, with `thumb`; `None` if it has none).
pub(crate) async fn file_bytes(
    c: &mut Client,
    room: String,
    id: String,
    thumb: bool,
) -> Result<Option<(StoredFile, Vec<u8>)>, Error> {
    let column = if thumb { "thumb" } else { "data" };
    let Some(r) = c
        .query_opt(
            &format!("SELECT {FILE_COLUMNS}, {column} FROM chat_file WHERE room = $1 AND id = $2"),
            &[&room, &id],
        )
        .await?
    else {
        return Ok(None);
    };
    let bytes: Option<Vec<u8>> = r.try_get(8)?;
    bytes.map(|b| stored_file(&r).map(|m| (m, b))).transpose()
}

/// Removes file `id` of `room`.
pub(crate) async fn remove_file(c: &mut Client, room: String, id: String) -> Result<(), Error> {
    c.execute(
        "DELETE FROM chat_file WHERE room = $1 AND id = $2",
        &[&room, &id],
    )
    .await?;
    Ok(())
}

/// The bytes of the files `room` keeps.
pub(crate) async fn room_file_bytes(c: &mut Client, room: String) -> Result<u64, Error> {
    let total: i64 = c
        .query_one(
            "SELECT COALESCE(SUM(size), 0)::BIGINT FROM chat_file WHERE room = $1",
            &[&room],
        )
        .await?
        .try_get(0)?;
    Ok(u64::try_from(total).unwrap_or(0))
}

/// Removes files stored before `before_ms`; how many.
pub(crate) async fn sweep_files(c: &mut Client, before_ms: i64) -> Result<u64, Error> {
    c.execute("DELETE FROM chat_file WHERE created_ms < $1", &[&before_ms])
        .await
}
