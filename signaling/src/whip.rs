//! WHIP ingest (RFC 9725) and WHEP playback (draft-ietf-wish-whep) over HTTP.
//!
//! * **WHIP**: `POST /whip/{room}` with an SDP offer and `Authorization: Bearer <access token
//!   with the publish grant>` makes the publisher a participant of the room, named by its
//!   token. It is an ordinary session of the signaling protocol whose client is a task of this
//!   module instead of a browser ([`driver::Link::Local`]): the task sends `join` and `offer`,
//!   returns the `answer` as the `201 Created`, and sends `leave` on `DELETE`. So the publisher
//!   goes through every check a browser does (token, room size, lobby, limits), everyone sees
//!   it in the participant list, and its tracks are forwarded like any other. It receives
//!   nothing: WHIP has no renegotiation.
//! * **WHEP**: `POST /whep/{room}` with a receive-only offer and a token with the subscribe
//!   grant connects a viewer straight to the room's media worker
//!   ([`huddle_media::MediaHandle::offer_viewer`]). A viewer is not a participant (not in the
//!   list, no chat, no signaling session); its m-lines carry the active speaker, or one
//!   participant with `?participant=<participant id or identity>`.
//!
//! Each session is a resource at the `Location` the `201` names; its id (128 random bits) is
//! unguessable, and a `DELETE` or `PATCH` that carries a token must carry one for that room.
//! `PATCH` takes trickled candidates (`application/trickle-ice-sdpfrag`); an ICE restart is
//! refused (`422`: start a new session).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use huddle_media::{Follow, ParticipantId, PeerEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::limits::Limit;
use crate::protocol::{ClientMsg, ErrorCode, ServerMsg, PROTOCOL_VERSION};
use crate::session::driver::{self, Link, LocalLink};
use crate::token::{valid_room_name, Claims};
use crate::AppState;

/// How long the server waits for the media worker's answer (and, for WHIP, the join).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The most WHEP viewers one room may have at once.
pub const MAX_VIEWERS_PER_ROOM: usize = 200;

/// The open WHIP and WHEP sessions, by resource id.
#[derive(Default)]
pub(crate) struct Resources {
    map: Mutex<HashMap<String, Resource>>,
}

struct Resource {
    room: String,
    etag: String,
    kind: Kind,
}

enum Kind {
    /// A WHIP publisher: its session reads this sender.
    Whip(mpsc::Sender<String>),
    /// A WHEP viewer on the media worker.
    Whep(ParticipantId),
}

impl Resources {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Resource>> {
        // Inserts and removes of whole entries: a panic elsewhere leaves no half-made one.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new session; returns its resource id and `ETag`.
    fn open(&self, room: &str, kind: Kind) -> (String, String) {
        let id = format!("{:032x}", rand::random::<u128>());
        let etag = format!("\"{}\"", &id[..16]);
        let resource = Resource {
            room: room.to_string(),
            etag: etag.clone(),
            kind,
        };
        self.lock().insert(id.clone(), resource);
        (id, etag)
    }

    fn viewers_in(&self, room: &str) -> usize {
        self.lock()
            .values()
            .filter(|r| r.room == room && matches!(r.kind, Kind::Whep(_)))
            .count()
    }
}

/// The WHIP, WHEP and player routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/whip/{room}", post(whip))
        .route("/whip/{room}/{id}", patch(update).delete(end))
        .route("/whep/{room}", post(whep))
        .route("/whep/{room}/{id}", patch(update).delete(end))
}

#[derive(Serialize)]
struct ApiError {
    error: String,
    message: String,
}

fn fail(status: StatusCode, error: impl Into<String>, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: error.into(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// [`fail`], boxed for a `Result`.
fn refuse(status: StatusCode, error: &'static str, message: impl Into<String>) -> Box<Response> {
    Box::new(fail(status, error, message))
}

/// The request's bearer token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// An offer that passed every check of [`accept`].
struct Accepted {
    sdp: String,
    /// The session's `max_connections` slot.
    permit: tokio::sync::OwnedSemaphorePermit,
    claims: Claims,
}

/// The checks a WHIP or WHEP offer passes, in order: the body ([`offer_text`]), admission
/// ([`admit`]), the token for this room ([`authorize`]) and the grant `allowed` reads
/// (`what` names it in the refusal).
fn accept(
    state: &AppState,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: &HeaderMap,
    room: &str,
    body: &Bytes,
    allowed: fn(&crate::token::Grants) -> bool,
    what: &str,
) -> Result<Accepted, Box<Response>> {
    let sdp = offer_text(state, headers, room, body)?;
    let permit = admit(state, connect_info, headers)?;
    let claims = authorize(state, headers, room)?;
    if !allowed(&claims.grants) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token has no {what} grant"),
        ));
    }
    Ok(Accepted {
        sdp,
        permit,
        claims,
    })
}

/// The bearer token's claims, if it is valid for `room`.
fn authorize(state: &AppState, headers: &HeaderMap, room: &str) -> Result<Claims, Box<Response>> {
    let token = bearer(headers).ok_or_else(|| {
        let mut r = fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send an access token for this room as Authorization: Bearer",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Box::new(r)
    })?;
    let claims = state.inner.keys.verify(token).map_err(|_| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the access token is not valid",
        )
    })?;
    if claims.room != room {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "wrong_room",
            "this token is for another room",
        ));
    }
    Ok(claims)
}

/// What the signaling socket's own route checks before a join, for a WHIP or WHEP session: the
/// server is not draining, the address is within `joins_per_ip_per_minute`, and a connection
/// slot (`max_connections`) is free, held for the session's life.
fn admit(
    state: &AppState,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: &HeaderMap,
) -> Result<tokio::sync::OwnedSemaphorePermit, Box<Response>> {
    let inner = &state.inner;
    if state.is_draining() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down; try again on another node or in a moment",
        ));
    }
    if let Some(ip) = crate::http::request_ip(state, connect_info, headers) {
        if !inner.joins_per_ip.allow(ip, std::time::Instant::now()) {
            inner.counters.hit(Limit::JoinsPerIp);
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many sessions from this address; try again in a minute",
            ));
        }
    }
    inner.connections.clone().try_acquire_owned().map_err(|_| {
        inner.counters.hit(Limit::Connections);
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "the server has as many connections as it is configured for",
        )
    })
}

/// The checks every offer passes: a room name, an SDP body within the SDP cap.
fn offer_text(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
    body: &Bytes,
) -> Result<String, Box<Response>> {
    if !valid_room_name(room) {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "bad_room",
            "no such room name",
        ));
    }
    if !content_type_is(headers, "application/sdp") {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the offer as Content-Type: application/sdp",
        ));
    }
    let cap = state.inner.config.max_sdp_bytes;
    if body.len() > cap {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "sdp_too_large",
            format!("an offer may have at most {cap} bytes"),
        ));
    }
    String::from_utf8(body.to_vec()).map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "invalid_sdp",
            "the offer is not UTF-8 text",
        )
    })
}

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// `201 Created` with the answer, the resource's `Location` and its `ETag`.
fn created(path: &str, room: &str, id: &str, etag: &str, sdp: String) -> Response {
    let mut res = (StatusCode::CREATED, sdp).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/{path}/{room}/{id}")) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag"),
    );
    res
}

/// The HTTP status of a signaling error that ends a WHIP session before its answer.
fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidSdp | ErrorCode::BadMessage | ErrorCode::TooManyTracks => {
            StatusCode::BAD_REQUEST
        }
        ErrorCode::InvalidToken | ErrorCode::TokenExpired => StatusCode::UNAUTHORIZED,
        ErrorCode::WrongRoom
        | ErrorCode::Forbidden
        | ErrorCode::PasswordRequired
        | ErrorCode::WrongPassword
        | ErrorCode::RoomLocked => StatusCode::FORBIDDEN,
        ErrorCode::RoomFull | ErrorCode::TooManyRooms | ErrorCode::Unavailable => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `POST /whip/{room}`: a publisher's offer.
async fn whip(
    State(state): State<AppState>,
    Path(room): Path<String>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Accepted {
        sdp,
        permit,
        claims,
    } = match accept(
        &state,
        connect_info,
        &headers,
        &room,
        &body,
        |g| g.publish,
        "publish",
    ) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let token = bearer(&headers).unwrap_or_default().to_string();
    // The publisher's session, with this task as its client.
    let (to_session, rx) = mpsc::channel::<String>(16);
    let (tx, mut from_session) = mpsc::unbounded_channel::<String>();
    let link = Link::Local(LocalLink { rx, tx, pongs: 0 });
    tokio::spawn(driver::run_link(link, state.clone(), Some(room.clone())));
    let send = |m: ClientMsg| serde_json::to_string(&m).unwrap_or_default();
    let join = send(ClientMsg::Join {
        protocol: PROTOCOL_VERSION,
        token,
        password: None,
    });
    let offer = send(ClientMsg::Offer {
        sdp,
        sources: Default::default(),
    });
    let exchange = async {
        to_session.send(join).await.ok()?;
        let mut offered = false;
        while let Some(text) = from_session.recv().await {
            match serde_json::from_str::<ServerMsg>(&text) {
                Ok(ServerMsg::Joined { .. }) if !offered => {
                    offered = true;
                    to_session.send(offer.clone()).await.ok()?;
                }
                Ok(ServerMsg::Answer { sdp }) => return Some(Ok(sdp)),
                Ok(ServerMsg::Error { code, message, .. }) => return Some(Err((code, message))),
                Ok(ServerMsg::Lobby {}) => {
                    return Some(Err((
                        ErrorCode::Forbidden,
                        "the room has a lobby: a WHIP publisher cannot wait in it".into(),
                    )))
                }
                Ok(ServerMsg::Leave { reason, .. }) => {
                    return Some(Err((ErrorCode::Forbidden, format!("refused: {reason:?}"))))
                }
                _ => {}
            }
        }
        None
    };
    let outcome = tokio::time::timeout(ANSWER_TIMEOUT, exchange).await;
    let answer = match outcome {
        Ok(Some(Ok(sdp))) => sdp,
        Ok(Some(Err((code, message)))) => {
            let _ = to_session.try_send(send(ClientMsg::Leave));
            // The protocol's own code (`invalid_sdp`, `room_full`, …) and its message.
            let name = serde_json::to_value(code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "refused".into());
            return fail(status_of(code), name, message);
        }
        _ => {
            let _ = to_session.try_send(send(ClientMsg::Leave));
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the media server did not answer in time",
            );
        }
    };
    let (id, etag) = state.inner.whip.open(&room, Kind::Whip(to_session));
    let metrics = state.inner.ops.metrics.clone();
    metrics.whip_sessions.inc();
    tracing::info!(room = %room, name = %claims.name, "WHIP publisher joined");
    // The rest of what the session says goes nowhere; when it ends (a DELETE, a removal by a
    // host, the media connection lost), the resource goes with it.
    let st = state.clone();
    let rid = id.clone();
    tokio::spawn(async move {
        let _permit = permit;
        while from_session.recv().await.is_some() {}
        st.inner.whip.lock().remove(&rid);
        metrics.whip_sessions.dec();
    });
    created("whip", &room, &id, &etag, answer)
}

#[derive(Deserialize)]
struct WhepQuery {
    /// Watch only this participant (an id or an identity).
    participant: Option<String>,
}

/// `POST /whep/{room}`: a viewer's receive-only offer.
async fn whep(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(q): Query<WhepQuery>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Accepted { sdp, permit, .. } = match accept(
        &state,
        connect_info,
        &headers,
        &room,
        &body,
        |g| g.subscribe,
        "subscribe",
    ) {
        Ok(a) => a,
        Err(r) => return *r,
    };
    if state.inner.whip.viewers_in(&room) >= MAX_VIEWERS_PER_ROOM {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_viewers",
            format!("at most {MAX_VIEWERS_PER_ROOM} viewers per room"),
        );
    }
    let follow = match q.participant.as_deref() {
        None | Some("") => Follow::ActiveSpeaker,
        Some(who) => {
            let found = state
                .inner
                .rooms
                .participants(&room)
                .into_iter()
                .find(|p| p.participant_id == who || p.identity == who)
                .and_then(|p| p.participant_id.parse::<ParticipantId>().ok());
            match found {
                Some(id) => Follow::Participant(id),
                None => {
                    return fail(
                        StatusCode::NOT_FOUND,
                        "no_such_participant",
                        "nobody with that id or identity is in the room",
                    )
                }
            }
        }
    };
    let viewer = ParticipantId(rand::random::<u64>() & 0xffff_ffff_ffff);
    let (events, mut rx) = mpsc::unbounded_channel();
    let media = &state.inner.media;
    if media
        .offer_viewer(&room, viewer, sdp, follow, events)
        .is_err()
    {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the media server is not running",
        );
    }
    let first = tokio::time::timeout(ANSWER_TIMEOUT, async {
        while let Some(ev) = rx.recv().await {
            match ev {
                PeerEvent::Answer { sdp } => return Some(Ok(sdp)),
                PeerEvent::Error { refusal, message } => return Some(Err((refusal, message))),
                _ => {}
            }
        }
        None
    })
    .await;
    let answer = match first {
        Ok(Some(Ok(sdp))) => sdp,
        Ok(Some(Err((refusal, message)))) => {
            // The text may name parser internals: the log has it, the client a fixed one.
            tracing::debug!(room = %room, %message, "WHEP offer refused");
            media.remove(&room, viewer);
            return match refusal {
                huddle_media::Refusal::Internal => fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the media server could not take the viewer",
                ),
                _ => fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_sdp",
                    "the offer could not be parsed or applied",
                ),
            };
        }
        _ => {
            media.remove(&room, viewer);
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the media server did not answer in time",
            );
        }
    };
    let (id, etag) = state.inner.whip.open(&room, Kind::Whep(viewer));
    let metrics = state.inner.ops.metrics.clone();
    metrics.whep_viewers.inc();
    let st = state.clone();
    let rid = id.clone();
    tokio::spawn(async move {
        let _permit = permit;
        // Speakers, qualities: nothing a viewer's HTTP client can be told. The connection's
        // end (ICE lost, never connected, a DELETE) ends the resource.
        while let Some(ev) = rx.recv().await {
            if let PeerEvent::Closed { .. } = ev {
                break;
            }
        }
        if st.inner.whip.lock().remove(&rid).is_some() {
            metrics.whep_viewers.dec();
        }
    });
    created("whep", &room, &id, &etag, answer)
}

/// The resource `id` in `room`, checked against the token the request carries (if any).
fn resource_check(
    state: &AppState,
    headers: &HeaderMap,
    room: &str,
    id: &str,
) -> Result<(), Box<Response>> {
    let known = state
        .inner
        .whip
        .lock()
        .get(id)
        .is_some_and(|r| r.room == room);
    if !known {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such session",
        ));
    }
    if headers.contains_key(header::AUTHORIZATION) {
        authorize(state, headers, room)?;
    }
    Ok(())
}

/// `DELETE` on a session: the publisher leaves the room, or the viewer stops.
async fn end(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = resource_check(&state, &headers, &room, &id) {
        return *r;
    }
    let Some(res) = state.inner.whip.lock().remove(&id) else {
        return fail(StatusCode::NOT_FOUND, "not_found", "no such session");
    };
    match res.kind {
        Kind::Whip(tx) => {
            let leave = serde_json::to_string(&ClientMsg::Leave).unwrap_or_default();
            let _ = tx.send(leave).await;
        }
        Kind::Whep(viewer) => {
            state.inner.media.remove(&room, viewer);
            state.inner.ops.metrics.whep_viewers.dec();
        }
    }
    StatusCode::OK.into_response()
}

/// `PATCH` on a session: trickled candidates. An ICE restart (new credentials in the
/// fragment) is refused.
async fn update(
    State(state): State<AppState>,
    Path((room, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = resource_check(&state, &headers, &room, &id) {
        return *r;
    }
    if !content_type_is(&headers, "application/trickle-ice-sdpfrag") {
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send candidates as Content-Type: application/trickle-ice-sdpfrag",
        );
    }
    if body.len() > state.inner.config.max_sdp_bytes {
        return fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "sdp_too_large",
            "the fragment is too large",
        );
    }
    let etag = state.inner.whip.lock().get(&id).map(|r| r.etag.clone());
    if let Some(m) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        if m.trim() != "*" && m.trim() != "\"*\"" && Some(m.trim()) != etag.as_deref() {
            return fail(
                StatusCode::PRECONDITION_FAILED,
                "etag_mismatch",
                "If-Match does not name this session",
            );
        }
    }
    // RFC 9725 4.3.2: an ICE restart is a PATCH with `If-Match: "*"`.
    if headers
        .get(header::IF_MATCH)
        .is_some_and(|v| v == "\"*\"" || v == "*")
    {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ice_restart_unsupported",
            "ICE restarts are not supported: start a new session",
        );
    }
    let text = String::from_utf8_lossy(&body);
    let candidates: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .map(str::to_string)
        .collect();
    let kind = state.inner.whip.lock().get(&id).map(|r| match &r.kind {
        Kind::Whip(tx) => Ok(tx.clone()),
        Kind::Whep(v) => Err(*v),
    });
    for c in candidates {
        match &kind {
            Some(Ok(tx)) => {
                let msg = serde_json::to_string(&ClientMsg::Candidate {
                    candidate: c,
                    sdp_mid: None,
                    sdp_m_line_index: None,
                })
                .unwrap_or_default();
                let _ = tx.send(msg).await;
            }
            Some(Err(viewer)) => {
                if state.inner.media.candidate(&room, *viewer, c).is_err() {
                    return fail(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the media server is not running",
                    );
                }
            }
            None => return fail(StatusCode::NOT_FOUND, "not_found", "no such session"),
        }
    }
    StatusCode::NO_CONTENT.into_response()
}
