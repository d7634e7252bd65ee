//! HTTP routes: the WebSocket, guest tokens, the web client and health.

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::token::{valid_room_name, Grants};
use crate::AppState;

#[derive(rust_embed::RustEmbed)]
#[folder = "../web/"]
struct WebAssets;

/// All routes of the signaling server.
pub fn router(state: AppState) -> Router {
    let body_timeout = state.inner.config.body_read_timeout;
    Router::new()
        .route("/ws", get(ws))
        .route("/api/token", post(token))
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::ops::routes())
        .merge(crate::api::router(state.clone()))
        .merge(crate::files::routes())
        .merge(crate::whip::routes())
        .route("/", get(index))
        .route("/r/{room}", get(room_page))
        .route("/watch/{room}", get(watch_page))
        .route("/assets/{*path}", get(asset))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::compress::json))
        .layer(axum::middleware::from_fn(security_headers))
        // A body (an upload) that pauses longer than this is cut; the time between its parts,
        // not its whole length, is bounded, so slow links can still upload large files.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(axum::middleware::from_fn(crate::ops::request_span))
        .with_state(state)
}

/// The page-wide content security policy, for responses whose route set none.
/// `'wasm-unsafe-eval'` lets the page compile WebAssembly (the vendored RNNoise and MediaPipe
/// builds of the noise suppression and background blur); it allows no JavaScript `eval`.
const PAGE_CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; media-src 'self' blob: mediastream:; style-src 'self'; script-src 'self' 'wasm-unsafe-eval'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

/// Adds the security headers to every response. A route that set its own content security
/// policy keeps it (downloads are `sandbox`ed): the page-wide one only fills the gap.
async fn security_headers(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(PAGE_CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), display-capture=(self)"),
    );
    res
}

#[derive(Deserialize)]
struct WsQuery {
    room: Option<String>,
}

async fn ws(
    State(state): State<AppState>,
    Query(q): Query<WsQuery>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    use crate::limits::{origin_allowed, Limit};
    if state.is_draining() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; join again on another node or in a moment",
        );
    }
    let inner = &state.inner;
    let cfg = &inner.config;
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if !origin_allowed(
        text(header::ORIGIN),
        text(header::HOST),
        &cfg.allowed_origins,
    ) {
        inner.counters.hit(Limit::Origin);
        tracing::debug!(origin = ?text(header::ORIGIN), "WebSocket origin refused");
        return api_error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not open the signaling socket",
        );
    }
    if let Some(ip) = request_ip(&state, connect_info, &headers) {
        if !inner.joins_per_ip.allow(ip, std::time::Instant::now()) {
            inner.counters.hit(Limit::JoinsPerIp);
            tracing::debug!(%ip, "too many joins from one address");
            return api_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many connections from this address; try again in a minute",
            );
        }
    }
    let Ok(permit) = inner.connections.clone().try_acquire_owned() else {
        inner.counters.hit(Limit::Connections);
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "the server has as many connections as it is configured for",
        );
    };
    let hard_cap = cfg.hard_cap();
    // The session logs in this request's span (its request id).
    let span = tracing::Span::current();
    upgrade
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |socket| {
            tracing::Instrument::instrument(
                async move {
                    crate::session::driver::run(socket, state, q.room).await;
                    drop(permit);
                },
                span,
            )
        })
}

/// The client's address: the TCP peer, or the address a trusted proxy forwarded for
/// (`signaling.trusted_proxies`). `None` where the server runs without connection info.
pub(crate) fn request_ip(
    state: &AppState,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: &HeaderMap,
) -> Option<std::net::IpAddr> {
    let axum::Extension(axum::extract::ConnectInfo(peer)) = connect_info?;
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    Some(crate::limits::client_ip(
        peer.ip(),
        &forwarded,
        &state.inner.config.trusted_proxies,
    ))
}

/// 429 with `Retry-After` (whole seconds, at least 1).
pub(crate) fn too_many(retry_after: std::time::Duration, message: impl Into<String>) -> Response {
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut res = api_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    res
}

#[derive(Deserialize)]
struct TokenRequest {
    room: String,
    #[serde(default)]
    name: String,
    /// An invite a host made for this room (`invite`): admits even with open joining off.
    #[serde(default)]
    invite: Option<String>,
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    identity: String,
}

#[derive(Serialize)]
struct ApiError {
    error: &'static str,
    message: String,
}

fn api_error(status: StatusCode, error: &'static str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error,
            message: message.into(),
        }),
    )
        .into_response()
}

async fn token(
    State(state): State<AppState>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let cfg = &state.inner.config;
    let Ok(Json(req)) = body else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected JSON {\"room\", \"name\"}",
        );
    };
    // With open joining off, only a host's invite for this very room gets a guest token.
    let invited = req.invite.as_deref().is_some_and(|i| {
        state
            .inner
            .keys
            .verify_invite(i)
            .is_ok_and(|room| room == req.room)
    });
    if !cfg.open_join && !invited {
        return api_error(
            StatusCode::FORBIDDEN,
            "open_join_disabled",
            "this server admits only tokens from its operator's application, or a host's invite link",
        );
    }
    // Each guest token is a new identity: without a per-address rate, per-identity limits
    // (uploads, TURN) would be one request away from reset.
    if let Some(ip) = request_ip(&state, connect_info, &headers) {
        if let Err(retry) = state
            .inner
            .guest_tokens_per_ip
            .allow_or_retry(ip, std::time::Instant::now())
        {
            state.inner.counters.hit(crate::limits::Limit::GuestTokens);
            tracing::debug!(%ip, "too many guest tokens from one address");
            return too_many(
                retry,
                format!(
                    "at most {} guest tokens a minute from one address",
                    cfg.guest_tokens_per_ip_per_minute
                ),
            );
        }
    }
    if !valid_room_name(&req.room) {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_room",
            "room names have 1 to 64 of A-Z a-z 0-9 - _ ., not starting with .",
        );
    }
    let name = crate::text::clean_name(&req.name);
    let name = if name.is_empty() {
        "Guest".to_string()
    } else {
        name
    };
    let identity = format!("guest-{:08x}", rand::random::<u32>());
    match state.inner.keys.issue(
        &req.room,
        &identity,
        &name,
        Grants::default(),
        cfg.guest_token_ttl,
    ) {
        Ok(token) => Json(TokenResponse { token, identity }).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "token signing failed");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

async fn index(headers: HeaderMap) -> Response {
    serve_file("index.html", &headers)
}

async fn room_page(Path(room): Path<String>, headers: HeaderMap) -> Response {
    if !valid_room_name(&room) {
        // The page, not JSON: it tells the user what a room name may be (a name in another
        // script, typed into the address bar, is sent on to its URL-safe form).
        return page_not_found(&headers);
    }
    serve_file("index.html", &headers)
}

/// The WHEP player (see docs/whip-whep.md).
async fn watch_page(Path(room): Path<String>, headers: HeaderMap) -> Response {
    if !valid_room_name(&room) {
        return page_not_found(&headers);
    }
    serve_file("watch.html", &headers)
}

/// Any other path: `/r/NAME/` goes to `/r/NAME`; the API answers JSON; everything else gets the
/// web client with status 404, which says there is no page there.
async fn not_found(uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if let Some(room) = path
        .strip_prefix("/r/")
        .and_then(|r| r.strip_suffix('/'))
        .filter(|r| valid_room_name(r))
    {
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        return axum::response::Redirect::permanent(&format!("/r/{room}{query}")).into_response();
    }
    if path.starts_with("/api/") || path == "/ws" {
        return api_error(StatusCode::NOT_FOUND, "not_found", "not found");
    }
    page_not_found(&headers)
}

fn page_not_found(headers: &HeaderMap) -> Response {
    let mut res = serve_file("index.html", headers);
    *res.status_mut() = StatusCode::NOT_FOUND;
    res
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve_file(&path, &headers)
}

fn serve_file(path: &str, headers: &HeaderMap) -> Response {
    let Some(file) = WebAssets::get(path) else {
        return api_error(StatusCode::NOT_FOUND, "not_found", "not found");
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let compressible = crate::compress::compressible(mime.as_ref());
    let coded = crate::compress::file_coding(headers)
        .filter(|_| compressible)
        .and_then(|c| {
            // A client that takes brotli takes gzip too, when brotli would not be smaller.
            crate::compress::cached(path, &file, c)
                .map(|z| (c, z))
                .or_else(|| {
                    let gz = crate::compress::Coding::Gzip;
                    (c != gz && crate::compress::gzip_accepted(headers))
                        .then(|| crate::compress::cached(path, &file, gz).map(|z| (gz, z)))
                        .flatten()
                })
        });
    let mut res = match coded {
        // Compressed once per file (per version of it: the key is its hash), not per request.
        Some((coding, z)) => {
            let mut res = axum::body::Body::from(axum::body::Bytes::from_owner(z)).into_response();
            res.headers_mut().insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(coding.name()),
            );
            res
        }
        None => axum::body::Body::from(file.data).into_response(),
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.as_ref()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if compressible {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    res
}
