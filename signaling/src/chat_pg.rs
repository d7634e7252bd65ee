//! Chat history in PostgreSQL, for clusters: every node reads and writes the same history, so a
//! room that restarts on another node keeps its chat.
//!
//! The chat store's API is blocking (callers use `spawn_blocking`), so the PostgreSQL client
//! lives on a thread of its own with a current-thread runtime; calls go to it over a channel and
//! wait for the answer with a timeout. Nothing here can panic a caller that happens to be on an
//! async thread. A lost connection is re-opened at the next call.
//!
//! Besides the fixed jobs below, [`PgChat::run`] runs any async function on the connection: rich
//! chat and uploaded files (`richchat_pg`) use it.

use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::protocol::ChatMessage;
use crate::SignalingError;

/// The chat table; the rich chat and file tables follow it (`richchat_pg::SCHEMA`). Run in one
/// transaction under an advisory lock, so nodes starting together do not race creating them.
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

/// An error as text, with the server's message for database errors.
pub(crate) fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => e.to_string(),
    }
}

enum Job {
    /// Any work on the connection (dropped unrun, which the caller sees, when not connected).
    Run(RunJob),
    Append {
        room: String,
        msg: Box<ChatMessage>,
        reply: std_mpsc::SyncSender<Result<i64, String>>,
    },
    History {
        room: String,
        limit: i64,
        reply: std_mpsc::SyncSender<Result<Vec<ChatMessage>, String>>,
    },
    Ping {
        reply: std_mpsc::SyncSender<Result<(), String>>,
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
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| SignalingError::Chat(format!("postgres_url: {e}")))?;
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
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                rt.block_on(worker(config, rx, ready_tx));
            })
            .map_err(|e| SignalingError::Chat(format!("starting the chat thread: {e}")))?;
        match ready_rx.recv_timeout(CALL_TIMEOUT) {
            Ok(Ok(())) => Ok(PgChat { jobs }),
            Ok(Err(e)) => Err(SignalingError::Chat(format!("postgres: {e}"))),
            Err(_) => Err(SignalingError::Chat(
                "postgres did not answer within 10 s".into(),
            )),
        }
    }

    fn call<T>(
        &self,
        make: impl FnOnce(std_mpsc::SyncSender<Result<T, String>>) -> Job,
    ) -> Result<T, SignalingError> {
        let (tx, rx) = std_mpsc::sync_channel(1);
        self.jobs
            .send(make(tx))
            .map_err(|_| SignalingError::Chat("the chat thread stopped".into()))?;
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(r) => r.map_err(|e| SignalingError::Chat(format!("postgres: {e}"))),
            Err(_) => Err(SignalingError::Chat(
                "postgres did not answer in time".into(),
            )),
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
                let r = f(c).await.map_err(|e| pg_error(&e));
                let _ = tx.send(r);
            })
        });
        self.jobs
            .send(Job::Run(job))
            .map_err(|_| SignalingError::Chat("the chat thread stopped".into()))?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r.map_err(|e| SignalingError::Chat(format!("postgres: {e}"))),
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                Err(SignalingError::Chat("postgres: not connected".into()))
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => Err(SignalingError::Chat(
                "postgres did not answer in time".into(),
            )),
        }
    }

    pub(crate) fn append(
        &self,
        room: &str,
        msg: ChatMessage,
    ) -> Result<ChatMessage, SignalingError> {
        let id = self.call(|reply| Job::Append {
            room: room.to_string(),
            msg: Box::new(msg.clone()),
            reply,
        })?;
        Ok(ChatMessage { id, ..msg })
    }

    pub(crate) fn history(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, SignalingError> {
        self.call(|reply| Job::History {
            room: room.to_string(),
            limit: i64::try_from(limit).unwrap_or(i64::MAX),
            reply,
        })
    }

    pub(crate) fn ping(&self) -> Result<(), SignalingError> {
        self.call(|reply| Job::Ping { reply })
    }
}

async fn open(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client, String> {
    let (client, connection) =
        tokio::time::timeout(CALL_TIMEOUT, config.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection lost");
        }
    });
    let schema = format!(
        "BEGIN; SELECT pg_advisory_xact_lock(72617); {SCHEMA}; {}; COMMIT;",
        crate::richchat_pg::SCHEMA
    );
    client
        .batch_execute(&schema)
        .await
        .map_err(|e| pg_error(&e))?;
    Ok(client)
}

async fn worker(
    config: tokio_postgres::Config,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    ready: std_mpsc::SyncSender<Result<(), String>>,
) {
    let mut client = match open(&config).await {
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
            client = match open(&config).await {
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
            Job::Append { room, msg, reply } => {
                let r = match c {
                    None => Err("not connected".to_string()),
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
                        .map_err(|e| e.to_string()),
                };
                let _ = reply.send(r);
            }
            Job::History { room, limit, reply } => {
                let r = match c {
                    None => Err("not connected".to_string()),
                    Some(c) => c
                        .query(
                            "SELECT id, participant_id, identity, name, text, ts FROM chat
                             WHERE room = $1 ORDER BY id DESC LIMIT $2",
                            &[&room, &limit],
                        )
                        .await
                        .and_then(|rows| {
                            let mut out = rows
                                .iter()
                                .map(|r| {
                                    Ok(ChatMessage {
                                        id: r.try_get(0)?,
                                        participant_id: r.try_get(1)?,
                                        identity: r.try_get(2)?,
                                        name: r.try_get(3)?,
                                        text: r.try_get(4)?,
                                        ts: r.try_get(5)?,
                                        extra: Default::default(),
                                    })
                                })
                                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
                            out.reverse();
                            Ok(out)
                        })
                        .map_err(|e| e.to_string()),
                };
                let _ = reply.send(r);
            }
            Job::Ping { reply } => {
                let r = match c {
                    None => Err("not connected".to_string()),
                    Some(c) => c
                        .simple_query("SELECT 1")
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                };
                let _ = reply.send(r);
            }
        }
    }
}
