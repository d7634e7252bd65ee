//! Uploaded files in PostgreSQL, for cluster mode: every node reads and writes them, so they
//! follow a room that restarts on another node. The functions run on the PostgreSQL chat thread
//! through [`crate::chat::pg::PgChat::run`]; `files` calls them when the store is in PostgreSQL.

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Error, Row};

use crate::protocol::Attachment;

/// The file table, created with the chat tables.
///
/// Files are kept whole in `chat_file` (`bytea`; the upload cap bounds them), with their
/// thumbnail; the retention sweep deletes rows by `created_ms`.
pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS chat_file (
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

/// What is known of a stored file (its `<id>.json`, or its row in PostgreSQL).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredFile {
    pub(crate) id: String,
    pub(crate) room: String,
    pub(crate) identity: String,
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) mime: String,
    pub(crate) thumb: bool,
    pub(crate) created_ms: i64,
}

impl StoredFile {
    pub(crate) fn attachment(&self) -> Attachment {
        Attachment {
            id: self.id.clone(),
            name: self.name.clone(),
            size: self.size,
            mime: self.mime.clone(),
            thumb: self
                .thumb
                .then(|| format!("/api/rooms/{}/files/{}/thumb", self.room, self.id)),
        }
    }
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
