//! Files in PostgreSQL, for cluster mode: every node reads and writes them, so an upload made
//! through one node downloads through any other, follows a room that restarts on another node
//! and outlives the node. They share the chat's connection ([`PgChat`]; its thread runs the
//! queries below through [`PgChat::run`]) and add their table to its schema.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, Error, Row};

use super::model::{FileBackend, StoredFile};
use crate::chat::pg::{PgChat, CALL_TIMEOUT};
use crate::SignalingError;

/// The file table, created with the chat tables (through [`PgChat::add_schema`]).
///
/// Files are kept whole in `chat_file` (`bytea`; the upload cap bounds them), with their
/// thumbnail; the retention sweep deletes rows by `created_ms`.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS chat_file (
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

/// The files in PostgreSQL.
#[derive(Debug, Clone)]
pub(crate) struct PgFiles {
    pg: PgChat,
    /// The largest upload: a download waits as long as one of this size may take.
    max_upload_bytes: u64,
}

/// How long a call to PostgreSQL that moves a file of `size` bytes may take.
fn pg_timeout(size: u64) -> Duration {
    CALL_TIMEOUT + Duration::from_secs(size / (1024 * 1024))
}

impl PgFiles {
    /// The files in the database `pg` connects to; their table is created before the first
    /// call runs (see [`PgChat::add_schema`]).
    pub(crate) fn new(pg: PgChat, max_upload_bytes: u64) -> Self {
        pg.add_schema(SCHEMA);
        PgFiles {
            pg,
            max_upload_bytes,
        }
    }
}

impl FileBackend for PgFiles {
    fn store(
        &self,
        tmp: &Path,
        meta: &StoredFile,
        thumb: Option<Vec<u8>>,
    ) -> Result<(), SignalingError> {
        let data = std::fs::read(tmp)?;
        let _ = std::fs::remove_file(tmp);
        let row = meta.clone();
        self.pg.run(pg_timeout(meta.size), move |c| {
            Box::pin(put_file(c, row, data, thumb))
        })
    }

    fn meta(&self, room: &str, id: &str) -> Result<Option<StoredFile>, SignalingError> {
        let (room, id) = (room.to_string(), id.to_string());
        self.pg
            .run(CALL_TIMEOUT, move |c| Box::pin(file_meta(c, room, id)))
    }

    fn open(
        &self,
        room: &str,
        id: &str,
        thumb: bool,
    ) -> Result<Option<(StoredFile, Vec<u8>)>, SignalingError> {
        let (room, id) = (room.to_string(), id.to_string());
        self.pg.run(pg_timeout(self.max_upload_bytes), move |c| {
            Box::pin(file_bytes(c, room, id, thumb))
        })
    }

    fn room_bytes(&self, room: &str) -> Result<u64, SignalingError> {
        let room = room.to_string();
        self.pg
            .run(CALL_TIMEOUT, move |c| Box::pin(room_file_bytes(c, room)))
    }

    fn remove(&self, room: &str, id: &str) -> Result<(), SignalingError> {
        let (room, id) = (room.to_string(), id.to_string());
        self.pg
            .run(CALL_TIMEOUT, move |c| Box::pin(remove_file(c, room, id)))
    }

    fn sweep(&self, now: SystemTime, retention: Duration) -> Result<usize, SignalingError> {
        let before = now
            .checked_sub(retention)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        let n = self
            .pg
            .run(CALL_TIMEOUT, move |c| Box::pin(sweep_files(c, before)))?;
        Ok(n as usize)
    }
}

/// Stores an uploaded file (and its thumbnail).
async fn put_file(
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
async fn file_meta(c: &mut Client, room: String, id: String) -> Result<Option<StoredFile>, Error> {
    c.query_opt(
        &format!("SELECT {FILE_COLUMNS} FROM chat_file WHERE room = $1 AND id = $2"),
        &[&room, &id],
    )
    .await?
    .map(|r| stored_file(&r))
    .transpose()
}

/// File `id` of `room` and its bytes (or its thumbnail's, with `thumb`; `None` if it has none).
async fn file_bytes(
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
async fn remove_file(c: &mut Client, room: String, id: String) -> Result<(), Error> {
    c.execute(
        "DELETE FROM chat_file WHERE room = $1 AND id = $2",
        &[&room, &id],
    )
    .await?;
    Ok(())
}

/// The bytes of the files `room` keeps.
async fn room_file_bytes(c: &mut Client, room: String) -> Result<u64, Error> {
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
async fn sweep_files(c: &mut Client, before_ms: i64) -> Result<u64, Error> {
    c.execute("DELETE FROM chat_file WHERE created_ms < $1", &[&before_ms])
        .await
}
