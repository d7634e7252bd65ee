//! What operators run and watch: `/metrics`, `/readyz`, request ids on every HTTP log line, and
//! the drain at shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tracing::Instrument;

use crate::metrics::SignalingMetrics;
use crate::protocol::{LeaveReason, ServerMsg};
use crate::AppState;

/// Why the server drains (see [`AppState::shutdown`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// A restart or a deploy (SIGTERM): participants are told to come back.
    Restart,
    /// The operator stops the service (SIGINT, Ctrl-C): meetings end.
    Stop,
}

/// The operational state in [`AppState`].
pub(crate) struct Ops {
    pub(crate) metrics: SignalingMetrics,
    registry: prometheus::Registry,
    draining: AtomicBool,
    /// What the drain tells participants: come back (a restart) rather than it is over.
    restarting: AtomicBool,
}

impl Ops {
    pub(crate) fn new(media: &huddle_media::MediaHandle) -> Ops {
        let metrics = SignalingMetrics::new();
        let registry = prometheus::Registry::new();
        if let Err(e) = metrics
            .register(&registry)
            .and_then(|()| media.metrics().register(&registry))
        {
            tracing::error!(error = %e, "metrics registration failed");
        }
        Ops {
            metrics,
            registry,
            draining: AtomicBool::new(false),
            restarting: AtomicBool::new(false),
        }
    }

    /// The node's metrics registry.
    pub(crate) fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Counts an open signaling socket until the guard drops.
    pub(crate) fn connection(&self) -> ConnectionGuard {
        self.metrics.ws_connections.inc();
        ConnectionGuard(self.metrics.ws_connections.clone())
    }
}

/// One open signaling socket (see [`Ops::connection`]).
pub(crate) struct ConnectionGuard(prometheus::IntGauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl AppState {
    /// The Prometheus registry served at `/metrics`. It holds signaling's and media's metrics;
    /// the binary adds its own collectors (TURN, process).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.inner.ops.registry
    }

    /// Whether a shutdown has begun: `/ws` and `/readyz` answer 503.
    pub fn is_draining(&self) -> bool {
        self.inner.ops.draining.load(Ordering::SeqCst)
    }

    /// Open signaling sockets.
    pub fn open_sockets(&self) -> usize {
        self.inner.ops.metrics.ws_connections.get().max(0) as usize
    }

    /// The `leave` a draining server sends: `server_shutdown`, with action `reconnect` when
    /// the server is restarting, `disconnect` when it is stopping for good.
    pub(crate) fn farewell(&self) -> ServerMsg {
        if self.inner.ops.restarting.load(Ordering::SeqCst) {
            ServerMsg::leave_to_reconnect()
        } else {
            ServerMsg::leave(LeaveReason::ServerShutdown)
        }
    }

    /// Drains the server: refuses new joins, tells every participant `leave` with
    /// `server_shutdown` (their sessions close their sockets), waits up to `drain` for the
    /// sockets to close, then checkpoints the chat database. Returns the sockets still open.
    ///
    /// [`Shutdown::Restart`] tells participants to come back (`action: reconnect`, the web
    /// client rejoins by itself once the server answers again); [`Shutdown::Stop`] ends their
    /// meetings (`action: disconnect`).
    pub async fn shutdown(&self, drain: Duration, kind: Shutdown) -> usize {
        let deadline = tokio::time::Instant::now() + drain;
        self.inner
            .ops
            .restarting
            .store(kind == Shutdown::Restart, Ordering::SeqCst);
        self.inner.ops.draining.store(true, Ordering::SeqCst);
        let leave = self.farewell();
        let told = self.inner.rooms.kick_all(&leave);
        tracing::info!(
            participants = told,
            ?kind,
            "draining: participants told to leave"
        );
        while self.open_sockets() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A join that raced the flag is told too (sessions already told have left).
            self.inner.rooms.kick_all(&leave);
        }
        let open = self.open_sockets();
        if open > 0 {
            tracing::warn!(sockets = open, "drain time over with sockets still open");
        }
        let chat = self.inner.chat.clone();
        let flush = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::task::spawn_blocking(move || chat.checkpoint()),
        )
        .await;
        match flush {
            Ok(Ok(Ok(()))) => tracing::info!("chat database checkpointed"),
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "chat database checkpoint failed"),
            _ => tracing::error!("chat database checkpoint did not finish"),
        }
        open
    }
}

/// `/metrics` and `/readyz`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let m = &state.inner.ops.metrics;
    m.rooms.set(state.inner.rooms.room_count() as i64);
    m.participants
        .set(state.inner.rooms.participant_count() as i64);
    match prometheus::TextEncoder::new().encode_to_string(&state.registry().gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "metrics encoding failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    /// Each check: `"ok"` or what is wrong.
    checks: Checks,
    /// The HTTP port's TCP connections (informational: does not change `ready`).
    #[serde(skip_serializing_if = "Option::is_none")]
    http_connections: Option<HttpConnections>,
}

#[derive(Serialize)]
struct HttpConnections {
    open: usize,
    cap: usize,
    /// At least 90 % of the cap is in use: new connections will soon be closed at once.
    near_cap: bool,
}

#[derive(Serialize)]
struct Checks {
    accepting_joins: &'static str,
    media_workers: &'static str,
    chat_database: &'static str,
}

/// Ready to take calls: not draining, every media worker running, the chat database answering.
async fn readyz(State(state): State<AppState>) -> Response {
    let chat = state.inner.chat.clone();
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::task::spawn_blocking(move || chat.ping()),
    )
    .await;
    let checks = Checks {
        accepting_joins: if state.is_draining() {
            "shutting down"
        } else {
            "ok"
        },
        media_workers: if state.inner.media.all_workers_running() {
            "ok"
        } else {
            "a media worker is not running"
        },
        chat_database: match db {
            Ok(Ok(Ok(()))) => "ok",
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "readiness: chat database query failed");
                "query failed"
            }
            _ => "no answer within 2 s",
        },
    };
    let ready = [
        checks.accepting_joins,
        checks.media_workers,
        checks.chat_database,
    ]
    .iter()
    .all(|c| *c == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let http_connections = state.inner.http_connections.get().map(|c| {
        let (open, cap) = (c.open(), c.cap());
        HttpConnections {
            open,
            cap,
            near_cap: open * 10 >= cap * 9,
        }
    });
    (
        status,
        Json(Readiness {
            ready,
            checks,
            http_connections,
        }),
    )
        .into_response()
}

/// Puts every request in a `request` span with an id (the client's `x-request-id` when it is a
/// short token, else a random one) and echoes the id in the response. WebSocket sessions run in
/// that span too, so their lines carry both the request id and the participant id.
pub(crate) async fn request_span(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let started = std::time::Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = res.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "response"
        )
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    res
}
