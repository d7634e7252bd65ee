//! The room API: list, create and end rooms, list, remove and mute participants, over HTTP
//! with JSON. `docs/api.md` and `docs/openapi.yaml` document it.
//!
//! # Authorisation
//!
//! Every call carries `Authorization: Bearer <JWT>`, a token the operator's backend signs with
//! HS256 under the API secret (`[api] secret`), with `iss` = the API key (`[api] key`), an `exp`,
//! and `grants.admin = true`; an optional `room` claim limits it to one room. This is LiveKit's
//! scheme: the secret itself never travels (a logged or leaked header is a token that expires,
//! possibly for one room only), and the key names which secret signed it, so secrets can be
//! rotated. The [`Admin`] extractor checks it: a missing, malformed, badly signed or expired
//! token is `401`; a good token without the admin grant, or for another room, is `403`.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::moderation::{hash_password, RoomSettings};
use crate::protocol::{LeaveReason, ParticipantInfo, ServerMsg, TrackKind};
use crate::token::{valid_room_name, Grants};
use crate::{AppState, SignalingError};

/// The API key and secret (`[api]`).
#[derive(Clone)]
pub struct ApiCredentials {
    /// The key: the `iss` of admin tokens.
    pub key: String,
    /// The HS256 secret admin tokens are signed with.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for ApiCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiCredentials({}, <secret>)", self.key)
    }
}

/// The claims of an admin token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminClaims {
    /// The API key.
    pub iss: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Who is acting (for logs). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Limits the token to one room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Must have `admin`.
    #[serde(default)]
    pub grants: Grants,
}

/// Signs an admin token (for `huddle api-token` and tests).
pub fn issue_admin_token(
    creds: &ApiCredentials,
    room: Option<&str>,
    ttl: std::time::Duration,
) -> Result<String, SignalingError> {
    let claims = AdminClaims {
        iss: creds.key.clone(),
        exp: crate::token::unix_now() + ttl.as_secs(),
        sub: Some("huddle-cli".into()),
        room: room.map(str::to_string),
        grants: Grants {
            admin: true,
            ..Grants::default()
        },
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&creds.secret),
    )
    .map_err(SignalingError::from)
}

/// What a room API call can fail with. Internal errors are logged; their text never reaches the
/// client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiFailure {
    /// No valid admin token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// A valid token that may not do this.
    #[error("{0}")]
    Forbidden(&'static str),
    /// No such room or participant.
    #[error("{0}")]
    NotFound(&'static str),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The request contradicts the room's state (a recording already running).
    #[error("{0}")]
    Conflict(&'static str),
    /// The server cannot do it now (recording off, or at its limit).
    #[error("{0}")]
    Unavailable(String),
    /// A server fault.
    #[error(transparent)]
    Internal(#[from] SignalingError),
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiFailure::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiFailure::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiFailure::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiFailure::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiFailure::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiFailure::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiFailure::Internal(e) => {
                tracing::error!(error = %e, "room API internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let message = match &self {
            ApiFailure::Internal(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let body = Json(serde_json::json!({ "error": code, "message": message }));
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

/// A caller holding a valid admin token.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The one room the token is for, when scoped.
    pub room: Option<String>,
}

impl Admin {
    fn may_act_on(&self, room: &str) -> Result<(), ApiFailure> {
        match &self.room {
            Some(r) if r != room => Err(ApiFailure::Forbidden("this token is for another room")),
            _ => Ok(()),
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiFailure> {
        let Some(creds) = &state.inner.config.api else {
            return Err(ApiFailure::Unauthorized(
                "the room API is not configured on this server ([api] key and secret)",
            ));
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiFailure::Unauthorized(
                "send Authorization: Bearer <admin token>",
            ))?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_issuer(&[creds.key.as_str()]);
        v.set_required_spec_claims(&["exp", "iss"]);
        let claims = decode::<AdminClaims>(token, &DecodingKey::from_secret(&creds.secret), &v)
            .map_err(|e| {
                tracing::debug!(error = %e, "admin token refused");
                ApiFailure::Unauthorized("the admin token is invalid or expired")
            })?
            .claims;
        // The same bound as for access tokens (`auth.max_token_lifetime_secs`).
        let latest = crate::token::unix_now()
            .saturating_add(state.inner.keys.max_lifetime().as_secs())
            .saturating_add(5);
        if claims.exp > latest {
            return Err(ApiFailure::Unauthorized(
                "the admin token expires further ahead than this server accepts",
            ));
        }
        if !claims.grants.admin {
            return Err(ApiFailure::Forbidden("the token lacks the admin grant"));
        }
        Ok(Admin { room: claims.room })
    }
}

/// The room API routes. In cluster mode a call about one room that another node owns is
/// forwarded there (see [`to_owner`]).
pub(crate) fn router(state: AppState) -> Router<AppState> {
    let per_room = Router::new()
        .route("/api/rooms/{room}", get(get_room).delete(end_room))
        .route("/api/rooms/{room}/participants", get(participants))
        .route(
            "/api/rooms/{room}/participants/{identity}",
            axum::routing::delete(remove_participant),
        )
        .route(
            "/api/rooms/{room}/participants/{identity}/mute",
            post(mute_participant),
        )
        .route(
            "/api/rooms/{room}/recording",
            post(start_recording).delete(stop_recording),
        )
        .route("/api/rooms/{room}/recordings", get(list_recordings))
        .route(
            "/api/rooms/{room}/recordings/{id}/{name}",
            get(download_recording),
        )
        .route_layer(axum::middleware::from_fn_with_state(state, to_owner));
    Router::new()
        .route("/api/rooms", get(list_rooms).post(create_room))
        .merge(per_room)
}

/// Marks a call forwarded by another node (forwarded at most once).
const FORWARDED: &str = "x-huddle-forwarded";

/// Cluster mode: a call about a room that lives on another node is made there, by this node,
/// with the caller's credentials, and its answer returned; otherwise this node's copy of the
/// room's settings is refreshed from Redis and the call is handled here. (A redirect would do
/// too, but HTTP clients drop the Authorization header on a redirect to another host.)
async fn to_owner(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(cluster) = state.cluster().cloned() else {
        return next.run(req).await;
    };
    let room = req
        .uri()
        .path()
        .strip_prefix("/api/rooms/")
        .and_then(|r| r.split('/').next())
        .unwrap_or_default()
        .to_string();
    // Only calls that carry credentials are carried to another node (the others get their 401
    // here, and nobody can make a node send requests without a token).
    if room.is_empty()
        || req.headers().contains_key(FORWARDED)
        || !req.headers().contains_key(header::AUTHORIZATION)
    {
        return next.run(req).await;
    }
    match cluster.remote_owner(&room).await {
        Ok(None) => {
            crate::cluster::refresh_settings(&state, &cluster, &room).await;
            next.run(req).await
        }
        Ok(Some(url)) => forward(cluster.http(), &url, req).await,
        Err(e) => {
            tracing::warn!(error = %e, %room, "room API: the room's node could not be looked up");
            unavailable()
        }
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "unavailable", "message": "the cluster's state could not be read; try again shortly"})),
    )
        .into_response()
}

/// Makes `req` on the node at `base` and returns its answer.
async fn forward(client: &reqwest::Client, base: &str, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return ApiFailure::BadRequest("request body too large".into()).into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let mut out = client
        .request(parts.method.clone(), &url)
        .header(FORWARDED, "1")
        .timeout(std::time::Duration::from_secs(10))
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v.clone());
        }
    }
    match out.send().await {
        Ok(res) => {
            let status = res.status();
            let ctype = res.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = res.bytes().await.unwrap_or_default();
            let mut r = (status, bytes).into_response();
            if let Some(c) = ctype {
                r.headers_mut().insert(header::CONTENT_TYPE, c);
            }
            r
        }
        Err(e) => {
            tracing::warn!(error = %e, %url, "room API: forwarding to the room's node failed");
            unavailable()
        }
    }
}

/// A room as the API shows it.
#[derive(Debug, Serialize)]
struct RoomView {
    name: String,
    /// Participants in the room now.
    participants: usize,
    /// Joiners waiting in the lobby.
    waiting: usize,
    /// Created through the API (keeps its settings while empty).
    created: bool,
    /// The effective participant cap.
    max_participants: usize,
    password_protected: bool,
    lobby: bool,
    /// Being recorded now.
    recording: bool,
    /// Seconds since the Unix epoch, for created rooms.
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<u64>,
}

fn view(state: &AppState, name: &str, participants: usize) -> RoomView {
    let m = &state.inner.moderation;
    let s = m.settings(name);
    RoomView {
        name: name.to_string(),
        participants,
        waiting: m.waiting_count(name),
        created: s.is_some(),
        max_participants: m.max_participants(name, state.inner.config.max_participants),
        password_protected: s.as_ref().is_some_and(|s| s.password_hash.is_some()),
        lobby: s.as_ref().is_some_and(|s| s.lobby),
        recording: state.inner.recordings.is_active(name),
        created_at: s.map(|s| s.created_at),
    }
}

fn room_view(state: &AppState, name: &str) -> Option<RoomView> {
    let n = state.inner.rooms.participants(name).len();
    (n > 0 || state.inner.moderation.settings(name).is_some()).then(|| view(state, name, n))
}

async fn list_rooms(
    admin: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    if admin.room.is_some() {
        return Err(ApiFailure::Forbidden(
            "a room-scoped token cannot list rooms",
        ));
    }
    let local = || {
        let mut counts: std::collections::BTreeMap<String, usize> =
            state.inner.rooms.counts().into_iter().collect();
        for (name, _) in state.inner.moderation.all_settings() {
            counts.entry(name).or_insert(0);
        }
        counts
            .iter()
            .map(|(n, c)| serde_json::to_value(view(&state, n, *c)).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let cluster = match state.cluster() {
        Some(c) if !headers.contains_key(FORWARDED) => c.clone(),
        _ => return Ok(Json(serde_json::json!({ "rooms": local() })).into_response()),
    };
    // Cluster mode: every live node's rooms, and the rooms created through the API that no
    // node holds now.
    for (room, s) in cluster.all_settings().await.unwrap_or_default() {
        state.inner.moderation.set_cached(&room, Some(s));
    }
    let mut rooms: std::collections::BTreeMap<String, serde_json::Value> = local()
        .into_iter()
        .filter_map(|v| Some((v.get("name")?.as_str()?.to_string(), v)))
        .collect();
    let nodes = cluster.nodes().await.map_err(|e| {
        tracing::warn!(error = %e, "room list: nodes unknown");
        ApiFailure::Internal(e)
    })?;
    let client = cluster.http();
    for node in nodes.iter().filter(|n| n.id != cluster.node_id()) {
        let mut req = client
            .get(format!("{}/api/rooms", node.url.trim_end_matches('/')))
            .header(FORWARDED, "1")
            .timeout(std::time::Duration::from_secs(5));
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            req = req.header(header::AUTHORIZATION, v.clone());
        }
        let listed: Option<serde_json::Value> = match req.send().await {
            Ok(r) if r.status().is_success() => r
                .bytes()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()),
            Ok(r) => {
                tracing::warn!(node = %node.id, status = %r.status(), "room list: a node refused");
                None
            }
            Err(e) => {
                tracing::warn!(node = %node.id, error = %e, "room list: a node did not answer");
                None
            }
        };
        let Some(list) = listed
            .as_ref()
            .and_then(|v| v.get("rooms")?.as_array().cloned())
        else {
            continue;
        };
        for v in list {
            let Some(name) = v.get("name").and_then(|n| n.as_str()).map(str::to_string) else {
                continue;
            };
            let theirs = v.get("participants").and_then(|p| p.as_u64()).unwrap_or(0);
            let ours = rooms
                .get(&name)
                .and_then(|o| o.get("participants")?.as_u64())
                .unwrap_or(0);
            // The node holding the participants describes the room best.
            if !rooms.contains_key(&name) || theirs > ours {
                rooms.insert(name, v);
            }
        }
    }
    let rooms: Vec<serde_json::Value> = rooms.into_values().collect();
    Ok(Json(serde_json::json!({ "rooms": rooms })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    name: String,
    #[serde(default)]
    max_participants: Option<usize>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    lobby: bool,
}

async fn create_room(
    admin: Admin,
    State(state): State<AppState>,
    body: Result<Json<CreateRoom>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiFailure> {
    let Json(req) = body.map_err(|e| ApiFailure::BadRequest(e.body_text()))?;
    if !valid_room_name(&req.name) {
        return Err(ApiFailure::BadRequest(
            "room names have 1 to 64 of A-Z a-z 0-9 - _ ., not starting with .".into(),
        ));
    }
    admin.may_act_on(&req.name)?;
    let node_max = state.inner.config.max_participants;
    if let Some(n) = req.max_participants {
        if n == 0 || n > node_max {
            return Err(ApiFailure::BadRequest(format!(
                "max_participants must be 1 to {node_max} (the node's limit)"
            )));
        }
    }
    let password = req.password.filter(|p| !p.is_empty());
    if password.as_ref().is_some_and(|p| p.chars().count() > 128) {
        return Err(ApiFailure::BadRequest(
            "a password has at most 128 characters".into(),
        ));
    }
    let m = state.clone();
    let name = req.name.clone();
    let created = tokio::task::spawn_blocking(move || {
        let settings = RoomSettings {
            max_participants: req.max_participants,
            password_hash: password.as_deref().map(hash_password),
            lobby: req.lobby,
            created_at: crate::token::unix_now(),
        };
        m.inner.moderation.save(&name, settings)
    })
    .await
    .map_err(SignalingError::from)??;
    if let Some(cluster) = state.cluster() {
        if let Some(settings) = state.inner.moderation.settings(&req.name) {
            if let Err(e) = cluster.put_settings(&req.name, &settings).await {
                tracing::warn!(error = %e, room = %req.name, "room settings not shared through redis");
                return Ok(unavailable());
            }
        }
    }
    tracing::info!(room = %req.name, created, "room settings saved through the API");
    let n = state.inner.rooms.participants(&req.name).len();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&state, &req.name, n))).into_response())
}

async fn get_room(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Json<RoomView>, ApiFailure> {
    admin.may_act_on(&room)?;
    room_view(&state, &room)
        .map(Json)
        .ok_or(ApiFailure::NotFound("no such room"))
}

/// `POST /api/rooms/{room}/recording`: starts recording the room (201).
async fn start_recording(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Response, ApiFailure> {
    admin.may_act_on(&room)?;
    use crate::recording::RecordingError as E;
    match crate::recording::start(&state, &room, "api") {
        Ok(r) => Ok((StatusCode::CREATED, Json(r)).into_response()),
        Err(E::AlreadyRecording) => Err(ApiFailure::Conflict("the room is already being recorded")),
        Err(E::EmptyRoom) => Err(ApiFailure::NotFound("nobody is in the room")),
        Err(E::Io(e)) => Err(ApiFailure::Internal(SignalingError::Io(
            std::io::Error::other(e),
        ))),
        Err(e) => Err(ApiFailure::Unavailable(e.to_string())),
    }
}

/// `DELETE /api/rooms/{room}/recording`: stops it (its files are listed a moment later).
async fn stop_recording(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Json<crate::recording::Recording>, ApiFailure> {
    admin.may_act_on(&room)?;
    crate::recording::stop(&state, &room, "stopped through the API")
        .map(Json)
        .ok_or(ApiFailure::NotFound("the room is not being recorded"))
}

/// `GET /api/rooms/{room}/recordings`: the room's recordings, newest first.
async fn list_recordings(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    admin.may_act_on(&room)?;
    let s = state.clone();
    let r = room.clone();
    let list = tokio::task::spawn_blocking(move || s.inner.recordings.list(&r))
        .await
        .map_err(SignalingError::from)?;
    Ok(Json(serde_json::json!({ "recordings": list })))
}

/// `GET /api/rooms/{room}/recordings/{id}/{name}`: one file, with ranges (players seek).
async fn download_recording(
    admin: Admin,
    State(state): State<AppState>,
    Path((room, id, name)): Path<(String, String, String)>,
    req: axum::extract::Request,
) -> Result<Response, ApiFailure> {
    admin.may_act_on(&room)?;
    let s = state.clone();
    let path = tokio::task::spawn_blocking(move || s.inner.recordings.file(&room, &id, &name))
        .await
        .map_err(SignalingError::from)?
        .ok_or(ApiFailure::NotFound("no such recording file"))?;
    use tower::ServiceExt as _;
    // `.webm`: served as video/webm.
    let Ok(res) = tower_http::services::ServeFile::new(&path)
        .oneshot(req)
        .await;
    Ok(res.map(axum::body::Body::new).into_response())
}

async fn end_room(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    admin.may_act_on(&room)?;
    let s = state.clone();
    let r = room.clone();
    let had_settings = tokio::task::spawn_blocking(move || s.inner.moderation.end(&r))
        .await
        .map_err(SignalingError::from)??;
    if let Some(cluster) = state.cluster() {
        if let Err(e) = cluster.delete_settings(&room).await {
            tracing::warn!(error = %e, %room, "room settings not removed from redis");
        }
    }
    let told = state
        .inner
        .rooms
        .send(&room, None, &ServerMsg::leave(LeaveReason::RoomEnded));
    if !had_settings && told == 0 {
        return Err(ApiFailure::NotFound("no such room"));
    }
    tracing::info!(%room, participants = told, "room ended through the API");
    Ok(Json(
        serde_json::json!({ "room": room, "ended": true, "participants": told }),
    ))
}

#[derive(Serialize)]
struct Waiting {
    participant_id: String,
    identity: String,
    name: String,
}

async fn participants(
    admin: Admin,
    State(state): State<AppState>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    admin.may_act_on(&room)?;
    if room_view(&state, &room).is_none() {
        return Err(ApiFailure::NotFound("no such room"));
    }
    let mut list: Vec<ParticipantInfo> = state.inner.rooms.participants(&room);
    list.sort_by(|a, b| a.identity.cmp(&b.identity));
    let waiting: Vec<Waiting> = state
        .inner
        .moderation
        .waiting(&room)
        .into_iter()
        .map(|(pid, identity, name)| Waiting {
            participant_id: pid.to_string(),
            identity,
            name,
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "room": room, "participants": list, "waiting": waiting }),
    ))
}

async fn remove_participant(
    admin: Admin,
    State(state): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    admin.may_act_on(&room)?;
    let pid = state
        .inner
        .rooms
        .find_identity(&room, &identity)
        .ok_or(ApiFailure::NotFound(
            "no participant with that identity in the room",
        ))?;
    state
        .inner
        .rooms
        .send(&room, Some(&[pid]), &ServerMsg::leave(LeaveReason::Removed));
    tracing::info!(%room, %identity, "participant removed through the API");
    Ok(Json(
        serde_json::json!({ "room": room, "identity": identity, "participant_id": pid.to_string(), "removed": true }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteRequest {
    kind: TrackKind,
    #[serde(default = "yes")]
    muted: bool,
}

fn yes() -> bool {
    true
}

async fn mute_participant(
    admin: Admin,
    State(state): State<AppState>,
    Path((room, identity)): Path<(String, String)>,
    body: Result<Json<MuteRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    let Json(req) = body.map_err(|e| ApiFailure::BadRequest(e.body_text()))?;
    admin.may_act_on(&room)?;
    if !req.muted {
        return Err(ApiFailure::BadRequest(
            "the server can mute but not unmute: the participant unmutes themselves".into(),
        ));
    }
    let pid = state
        .inner
        .rooms
        .find_identity(&room, &identity)
        .ok_or(ApiFailure::NotFound(
            "no participant with that identity in the room",
        ))?;
    crate::session::server_mute(&state, &room, pid, req.kind);
    tracing::info!(%room, %identity, kind = ?req.kind, "participant muted through the API");
    Ok(Json(serde_json::json!({
        "room": room, "identity": identity, "participant_id": pid.to_string(),
        "kind": req.kind, "muted": true
    })))
}
