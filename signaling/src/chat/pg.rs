//! Chat history in PostgreSQL, for clusters: every node reads and writes the same history, so a
//! room that restarts on another node keeps its chat.
//!
//! The chat store's API is blocking (callers use `spawn_blocking`), so the PostgreSQL client
//! lives on a thread of its own with a current-thread runtime; calls go to it over a channel and
//! wait for the answer with a timeout. Nothing here can panic a caller that happens to be on an
//! async thread. A lost connection is re-opened at the next call.
//!
//! Besides the fixed jobs below, [`PgChat::run`] runs any async function on the connection: rich
//! chat (below) uses it, and so can another store that shares the connection (uploaded files:
//! it adds its tables with [`PgChat::add_schema`]; nothing here knows of it). Rich chat changes
//! run in one transaction that locks the message's row first, so two nodes changing the same
//! message take turns (and the emoji cap holds).

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Error, GenericClient, Row};

use super::model::{add_reaction, check, too_many_emojis, ChatBackend, Refused};
use crate::protocol::{Attachment, ChatMessage};
use crate::SignalingError;

/// The chat table; the rich chat tables ([`RICH_SCHEMA`]) and those added with
/// [`PgChat::add_schema`] follow it. Run in one transaction under an advisory lock
/// ([`SCHEMA_LOCK`]), so nodes starting together do not race creating them.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS chat (
    id BIGSERIAL PRIMARY KEY,
    room TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    identity TEXT NOT NULL,
    name TEXT NOT NULL,
    text TEXT NOT NULL,
    ts BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS chat_room_id ON chat (room, id)";

/// The advisory lock taken while tables are created.
const SCHEMA_LOCK: i64 = 72617;

/// How long a call waits for PostgreSQL.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A job for [`PgChat::run`]: gets the connection, answers through the channel it captured.
type RunJob = Box<dyn for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a, ()> + Send>;

fn run_job<F>(f: F) -> RunJob
where
    F: for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a, ()> + Send + 'static,
{
    Box::new(f)
}

enum Job {
    /// Any work on the connection (dropped unrun, which the caller sees, when not connected).
    Run(RunJob),
    /// More tables: created now (when connected) and at every (re)connection.
    Schema(&'static str),
    Append {
        room: String,
        msg: Box<ChatMessage>,
        reply: std_mpsc::SyncSender<Result<i64, SignalingError>>,
    },
    History {
        room: String,
        limit: i64,
        reply: std_mpsc::SyncSender<Result<Vec<ChatMessage>, SignalingError>>,
    },
    Ping {
        reply: std_mpsc::SyncSender<Result<(), SignalingError>>,
    },
}

/// A handle to the PostgreSQL chat thread. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PgChat {
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for PgChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgChat")
    }
}

impl PgChat {
    /// Starts the thread, connects and creates the table (blocking; fails if PostgreSQL does
    /// not answer within 10 s).
    pub(crate) fn connect(url: &str) -> Result<Self, SignalingError> {
        let config: tokio_postgres::Config = url.parse().map_err(SignalingError::PostgresUrl)?;
        let (jobs, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("huddle-pg-chat".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                rt.block_on(worker(config, rx, ready_tx));
            })?;
        match ready_rx.recv_timeout(CALL_TIMEOUT) {
            Ok(r) => r.map(|()| PgChat { jobs }),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err(SignalingError::PostgresUnavailable)
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(SignalingError::PostgresTimeout),
        }
    }

    /// Adds tables to the database, for another store that shares the connection: `schema`
    /// (statements safe to run again, `CREATE … IF NOT EXISTS`) runs in a transaction under the
    /// same lock as the chat's tables, before any job sent after this call, and again at every
    /// reconnection. Does not wait: a failure is logged, and the calls that need the tables fail.
    pub(crate) fn add_schema(&self, schema: &'static str) {
        if self.jobs.send(Job::Schema(schema)).is_err() {
            tracing::warn!("postgres tables not created: the chat thread stopped");
        }
    }

    fn call<T>(
        &self,
        make: impl FnOnce(std_mpsc::SyncSender<Result<T, SignalingError>>) -> Job,
    ) -> Result<T, SignalingError> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.jobs
            .send(make(tx))
            .map_err(|_| SignalingError::PostgresUnavailable)?;
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(r) => r,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err(SignalingError::PostgresUnavailable)
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(SignalingError::PostgresTimeout),
        }
    }

    /// Runs `f` on the connection and waits up to `timeout` for its result. Blocking.
    pub(crate) fn run<T, F>(&self, timeout: Duration, f: F) -> Result<T, SignalingError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Client) -> BoxFuture<'a, Result<T, tokio_postgres::Error>>
            + Send
            + 'static,
    {
        let (tx, rx) = std_mpsc::sync_channel(1);
        let job = run_job(move |c| {
            Box::pin(async move {
                let r = f(c).await.map_err(SignalingError::from);
                let _ = tx.send(r);
            })
        });
        self.jobs
            .send(Job::Run(job))
            .map_err(|_| SignalingError::PostgresUnavailable)?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err(SignalingError::PostgresUnavailable)
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(SignalingError::PostgresTimeout),
        }
    }

    fn append_msg(&self, room: &str, msg: ChatMessage) -> Result<ChatMessage, SignalingError> {
        let id = self.call(|reply| Job::Append {
            room: room.to_string(),
            msg: Box::new(msg.clone()),
            reply,
        })?;
        Ok(ChatMessage { id, ..msg })
    }

    fn history_of(&self, room: &str, limit: usize) -> Result<Vec<ChatMessage>, SignalingError> {
        self.call(|reply| Job::History {
            room: room.to_string(),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            reply,
        })
    }

    fn ping_now(&self) -> Result<(), SignalingError> {
        self.call(|reply| Job::Ping { reply })
    }
}

/// Connects and creates the tables: the chat's, then `more` (from [`PgChat::add_schema`]).
async fn open(
    config: &tokio_postgres::Config,
    more: &[&'static str],
) -> Result<tokio_postgres::Client, SignalingError> {
    let (client, connection) =
        tokio::time::timeout(CALL_TIMEOUT, config.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| SignalingError::PostgresTimeout)??;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection lost");
        }
    });
    let mut schema =
        format!("BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {SCHEMA}; {RICH_SCHEMA}; ");
    for s in more {
        schema.push_str(s);
        schema.push_str("; ");
    }
    schema.push_str("COMMIT;");
    client.batch_execute(&schema).await?;
    Ok(client)
}

/// Creates the tables of `schema` on an open connection (see [`PgChat::add_schema`]).
async fn add_schema(c: &Client, schema: &str) -> Result<(), Error> {
    let r = c
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {schema}; COMMIT;"
        ))
        .await;
    if r.is_err() {
        // The transaction is left aborted: end it, or every later query on this connection fails.
        let _ = c.batch_execute("ROLLBACK").await;
    }
    r
}

async fn worker(
    config: tokio_postgres::Config,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ready: std_mpsc::SyncSender<Result<(), SignalingError>>,
) {
    let mut more: Vec<&'static str> = Vec::new();
    let mut client = match open(&config, &more).await {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            Some(c)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    while let Some(job) = jobs.recv().await {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = match open(&config, &more).await {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "postgres reconnect failed");
                    None
                }
            };
        }
        if let Job::Run(f) = job {
            if let Some(c) = client.as_mut() {
                f(c).await;
            }
            continue;
        }
        let c = client.as_ref();
        match job {
            Job::Run(_) => {}
            Job::Schema(schema) => {
                more.push(schema);
                if let Some(c) = c {
                    if let Err(e) = add_schema(c, schema).await {
                        let e = SignalingError::from(e);
                        tracing::warn!(error = %e, "postgres tables not created");
                    }
                }
            }
            Job::Append { room, msg, reply } => {
                let r = match c {
                    None => Err(SignalingError::PostgresUnavailable),
                    Some(c) => c
                        .query_one(
                            "INSERT INTO chat (room, participant_id, identity, name, text, ts)
                             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                            &[
                                &room,
                                &msg.participant_id,
                                &msg.identity,
                                &msg.name,
                                &msg.text,
                                &msg.ts,
                            ],
                        )
                        .await
                        .and_then(|row| row.try_get::<_, i64>(0))
                        .map_err(SignalingError::from),
                };
                let _ = reply.send(r);
            }
            Job::History { room, limit, reply } => {
                let r = match c {
                    None => Err(SignalingError::PostgresUnavailable),
                    Some(c) => c
                        .query(
                            "SELECT id, participant_id, identity, name, text, ts FROM chat
                             WHERE room = $1 ORDER BY id DESC LIMIT $2",
                            &[&room, &limit],
                        )
                        .await
                        .and_then(|rows| {
                            let mut out =
                                rows.iter()
                                    .map(message)
                                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
                            out.reverse();
                            Ok(out)
                        })
                        .map_err(SignalingError::from),
                };
                let _ = reply.send(r);
            }
            Job::Ping { reply } => {
                let r = match c {
                    None => Err(SignalingError::PostgresUnavailable),
                    Some(c) => c
                        .simple_query("SELECT 1")
                        .await
                        .map(|_| ())
                        .map_err(SignalingError::from),
                };
                let _ = reply.send(r);
            }
        }
    }
}

/// The rich chat tables, created with the chat table.
const RICH_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS chat_attachment (
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
)";

impl ChatBackend for PgChat {
    fn ping(&self) -> Result<(), SignalingError> {
        self.ping_now()
    }

    fn append(&self, room: &str, msg: ChatMessage) -> Result<ChatMessage, SignalingError> {
        self.append_msg(room, msg)
    }

    fn history(&self, room: &str, limit: usize) -> Result<Vec<ChatMessage>, SignalingError> {
        self.history_of(room, limit)
    }

    fn attach(&self, message_id: i64, attachment: &Attachment) -> Result<(), SignalingError> {
        let json = serde_json::to_string(attachment).unwrap_or_default();
        self.run(CALL_TIMEOUT, move |c| Box::pin(attach(c, message_id, json)))
    }

    fn decorate(&self, messages: &mut [ChatMessage]) -> Result<(), SignalingError> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut owned = messages.to_vec();
        let decorated = self.run(CALL_TIMEOUT, move |c| {
            Box::pin(async move {
                decorate(&*c, &mut owned).await?;
                Ok(owned)
            })
        })?;
        messages.clone_from_slice(&decorated);
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
        let (room, identity, text) = (room.to_string(), identity.to_string(), text.to_string());
        self.run(CALL_TIMEOUT, move |c| {
            Box::pin(edit(c, room, identity, id, text, now_ms))
        })
    }

    fn delete(
        &self,
        room: &str,
        identity: &str,
        id: i64,
    ) -> Result<Result<(ChatMessage, Option<Attachment>), Refused>, SignalingError> {
        let (room, identity) = (room.to_string(), identity.to_string());
        self.run(CALL_TIMEOUT, move |c| {
            Box::pin(delete(c, room, identity, id))
        })
    }

    fn react(
        &self,
        room: &str,
        identity: &str,
        id: i64,
        emoji: &str,
        active: bool,
    ) -> Result<Result<ChatMessage, Refused>, SignalingError> {
        let (room, identity, emoji) = (room.to_string(), identity.to_string(), emoji.to_string());
        self.run(CALL_TIMEOUT, move |c| {
            Box::pin(react(c, room, identity, id, emoji, active))
        })
    }
}

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
async fn attach(c: &mut Client, message_id: i64, json: String) -> Result<(), Error> {
    c.execute(
        "INSERT INTO chat_attachment (message_id, json) VALUES ($1, $2)
         ON CONFLICT (message_id) DO UPDATE SET json = excluded.json",
        &[&message_id, &json],
    )
    .await?;
    Ok(())
}

/// Fills in the attachment, reactions and edit state of each message (three queries for all).
async fn decorate<C: GenericClient + Sync>(
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
async fn edit(
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
async fn delete(
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
async fn react(
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
