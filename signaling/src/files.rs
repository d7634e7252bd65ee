//! Chat attachments: pictures and files uploaded over HTTP, kept in the data directory.
//!
//! * `GET /api/rooms/{room}/files`: the upload policy (`max_upload_bytes`, `allowed_types`).
//! * `POST /api/rooms/{room}/files?name=NAME`: the body is the file's bytes. It is streamed to a
//!   temporary file and renamed into place only when complete, so an interrupted upload leaves
//!   nothing behind. Its type is sniffed from the content (the client's word is ignored) and
//!   must be allowed; pictures get a thumbnail (at most 320 px, JPEG). Answers the
//!   [`Attachment`] to put in a `chat` message (`attachment_id`).
//! * `GET /api/rooms/{room}/files/{id}` and `…/{id}/thumb`: the bytes.
//!
//! Every route needs `Authorization: Bearer <access token>` for that room: 401 without one or
//! with a bad one, 403 for a token of another room (or, to upload, one without the `chat`
//! grant). A sweep removes files older than the retention period.
//!
//! This module is the front: routes, policy, quotas, sniffing and thumbnails. Finished uploads
//! are kept behind one trait, [`FileBackend`] (`files/model.rs`), chosen once at start:
//!
//! * `disk`: the data directory, `<dir>/<room>/<id>` with `<id>.thumb` and `<id>.json` (its
//!   metadata, written last: a file without it does not exist);
//! * `pg`: when the chat store is in PostgreSQL (cluster mode), the table `chat_file` there, so
//!   that an upload made through one node downloads through any other and outlives the node;
//!   the data directory then only holds uploads in progress.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

mod disk;
mod model;
mod pg;

use crate::chat::pg::PgChat;
use crate::limits::{Limit, Quota};
use crate::protocol::Attachment;
use crate::token::{valid_room_name, Claims};
use crate::{AppState, SignalingError};
pub(crate) use model::StoredFile;
use model::{valid_id, FileBackend};

/// Longest side of a thumbnail, pixels.
pub const THUMB_PX: u32 = 320;
/// How many bytes of the start of a file the type is sniffed from.
const SNIFF_BYTES: usize = 8192;

/// Upload settings (`[chat]` in the configuration).
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Where files are kept (`<data_dir>/files`). `None`: uploads are off (503).
    pub dir: Option<PathBuf>,
    /// Largest upload, bytes; larger ones get 413. Default 20 MiB.
    pub max_upload_bytes: u64,
    /// MIME types accepted, as sniffed from the content; `type/*` allows a whole family.
    /// Content nothing recognises is `application/octet-stream`; UTF-8 text is `text/plain`.
    pub allowed_types: Vec<String>,
    /// Files older than this are removed. Zero: kept forever. Default 30 days.
    pub retention: Duration,
    /// Thumbnails made at once; more uploads of pictures wait their turn. 0: one per core.
    /// Default 0.
    pub thumbnail_workers: usize,
    /// Most memory one picture may take to decode for its thumbnail, bytes; a picture needing
    /// more gets no thumbnail (it is still stored). Default 128 MiB. With the workers, this
    /// bounds the memory thumbnails use at once: `thumbnail_workers` × this.
    pub thumbnail_max_bytes: u64,
    /// Uploads one identity may start per hour; more get 429. 0 = no limit. Default 30.
    pub uploads_per_identity_per_hour: u64,
    /// Bytes one identity may upload per hour; more get 429. 0 = no limit. Default 200 MiB.
    pub upload_bytes_per_identity_per_hour: u64,
    /// Uploads one client address may start per hour (guest tokens are new identities, so
    /// this is the bound that holds). 0 = no limit. Default 120.
    pub uploads_per_ip_per_hour: u64,
    /// Bytes one client address may upload per hour. 0 = no limit. Default 1 GiB.
    pub upload_bytes_per_ip_per_hour: u64,
    /// Bytes of files one room may keep; an upload that would go over gets 507. 0 = no limit.
    /// Default 2 GiB.
    pub max_room_bytes: u64,
}

/// The default `allowed_types`: pictures, PDF, plain text, archives, common audio and video,
/// and office documents. Never SVG or HTML (they carry scripts).
pub fn default_allowed_types() -> Vec<String> {
    [
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "application/pdf",
        "text/plain",
        "application/zip",
        "application/gzip",
        "audio/mpeg",
        "audio/ogg",
        "audio/x-wav",
        "video/mp4",
        "video/webm",
        "application/msword",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "application/vnd.oasis.opendocument.text",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            dir: None,
            max_upload_bytes: 20 * 1024 * 1024,
            allowed_types: default_allowed_types(),
            retention: Duration::from_secs(30 * 86_400),
            thumbnail_workers: 0,
            thumbnail_max_bytes: 128 * 1024 * 1024,
            uploads_per_identity_per_hour: 30,
            upload_bytes_per_identity_per_hour: 200 * 1024 * 1024,
            uploads_per_ip_per_hour: 120,
            upload_bytes_per_ip_per_hour: 1024 * 1024 * 1024,
            max_room_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// The file store.
#[derive(Debug, Clone)]
pub(crate) struct Files {
    cfg: FilesConfig,
    /// Where finished uploads are kept: PostgreSQL in cluster mode (`cfg.dir` then only holds
    /// uploads in progress), else `cfg.dir`. `None`: neither (uploads are off).
    backend: Option<Arc<dyn FileBackend>>,
    /// One permit per thumbnail being made (`cfg.thumbnail_workers`).
    thumbs: Arc<Semaphore>,
    /// Uploads and bytes per identity this hour.
    per_identity: Arc<Quota<String>>,
    /// Uploads and bytes per client address this hour.
    per_ip: Arc<Quota<IpAddr>>,
}

const HOUR: Duration = Duration::from_secs(3600);

/// The thumbnail workers for `cfg`: as configured, or one per core.
fn thumbnail_workers(cfg: &FilesConfig) -> usize {
    match cfg.thumbnail_workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    }
}

/// The backend for `cfg`: PostgreSQL when the chat store is there, else the data directory.
fn backend(cfg: &FilesConfig, pg: Option<PgChat>) -> Option<Arc<dyn FileBackend>> {
    match (pg, &cfg.dir) {
        (Some(pg), _) => Some(Arc::new(pg::PgFiles::new(pg, cfg.max_upload_bytes))),
        (None, Some(dir)) => Some(Arc::new(disk::Disk::new(dir.clone()))),
        (None, None) => None,
    }
}

impl Files {
    /// The store (in PostgreSQL with `pg`); starts the retention sweep when there is a runtime
    /// to run it on.
    pub(crate) fn start(cfg: FilesConfig, pg: Option<PgChat>) -> Self {
        let thumbs = Arc::new(Semaphore::new(thumbnail_workers(&cfg)));
        let per_identity = Arc::new(Quota::new(
            HOUR,
            cfg.uploads_per_identity_per_hour,
            cfg.upload_bytes_per_identity_per_hour,
        ));
        let per_ip = Arc::new(Quota::new(
            HOUR,
            cfg.uploads_per_ip_per_hour,
            cfg.upload_bytes_per_ip_per_hour,
        ));
        let files = Files {
            backend: backend(&cfg, pg),
            cfg,
            thumbs,
            per_identity,
            per_ip,
        };
        if let (Some(_), Ok(rt)) = (&files.cfg.dir, tokio::runtime::Handle::try_current()) {
            let f = files.clone();
            rt.spawn(async move {
                let every = if f.cfg.retention.is_zero() {
                    Duration::from_secs(3600)
                } else {
                    (f.cfg.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
                };
                loop {
                    let g = f.clone();
                    let removed = tokio::task::spawn_blocking(move || g.sweep(SystemTime::now()))
                        .await
                        .unwrap_or(0);
                    if removed > 0 {
                        info!(removed, "chat files past their retention removed");
                    }
                    tokio::time::sleep(every).await;
                }
            });
        }
        files
    }

    fn meta_blocking(&self, room: &str, id: &str) -> Option<StoredFile> {
        if !valid_id(id) || !valid_room_name(room) {
            return None;
        }
        self.backend
            .as_ref()?
            .meta(room, id)
            .map_err(|e| warn!(error = %e, "chat file lookup failed"))
            .ok()
            .flatten()
    }

    /// The attachment for file `id` of `room` and the identity that uploaded it, if it exists.
    /// Blocking.
    pub(crate) fn attachment(&self, room: &str, id: &str) -> Option<(Attachment, String)> {
        self.meta_blocking(room, id)
            .map(|m| (m.attachment(), m.identity))
    }

    /// Removes file `id` of `room` if `identity` uploaded it; someone else's file is kept (a
    /// message may carry only its sender's own uploads, but files attached before that rule
    /// are still around). Blocking.
    pub(crate) fn remove_if_uploaded_by(&self, room: &str, id: &str, identity: &str) {
        match self.meta_blocking(room, id) {
            Some(meta) if meta.identity == identity => self.remove(room, id),
            Some(_) => debug!("a deleted message's file kept: another participant uploaded it"),
            None => {}
        }
    }

    /// The file `id` of `room` and its bytes (or its thumbnail's). Blocking.
    fn fetch_blocking(&self, room: &str, id: &str, thumb: bool) -> Option<(StoredFile, Vec<u8>)> {
        if !valid_id(id) || !valid_room_name(room) {
            return None;
        }
        self.backend
            .as_ref()?
            .open(room, id, thumb)
            .map_err(|e| warn!(error = %e, "chat file download failed"))
            .ok()
            .flatten()
    }

    /// The thumbnail of the picture at `tmp`, made by one of the bounded thumbnail workers
    /// (waits for one to be free); `None` if it does not decode within the limits.
    async fn thumbnail(&self, tmp: PathBuf) -> Option<Vec<u8>> {
        let _permit = self.thumbs.clone().acquire_owned().await.ok()?;
        let max = self.cfg.thumbnail_max_bytes;
        tokio::task::spawn_blocking(move || make_thumb(&tmp, max))
            .await
            .ok()
            .flatten()
    }

    /// Stores a completed upload (at `tmp`) under `meta.id`, with its thumbnail if it has one.
    /// Blocking.
    fn store_blocking(
        &self,
        tmp: &Path,
        mut meta: StoredFile,
        thumb: Option<Vec<u8>>,
    ) -> Result<StoredFile, SignalingError> {
        meta.thumb = thumb.is_some();
        let backend = self
            .backend
            .as_ref()
            .ok_or(std::io::Error::from(std::io::ErrorKind::NotFound))?;
        backend.store(tmp, &meta, thumb)?;
        Ok(meta)
    }

    /// The bytes of the files `room` keeps now (the files themselves, not their thumbnails).
    /// Blocking.
    fn room_bytes_blocking(&self, room: &str) -> Result<u64, SignalingError> {
        match &self.backend {
            Some(b) => b.room_bytes(room),
            None => Ok(0),
        }
    }

    /// Whether `room` may keep `more` bytes beside what it has; `Ok(false)` when that would go
    /// over `max_room_bytes`.
    async fn room_has_space(&self, room: &str, more: u64) -> Result<bool, SignalingError> {
        let max = self.cfg.max_room_bytes;
        if max == 0 {
            return Ok(true);
        }
        let (f, room) = (self.clone(), room.to_string());
        let used = tokio::task::spawn_blocking(move || f.room_bytes_blocking(&room)).await??;
        Ok(used.saturating_add(more) <= max)
    }

    /// Removes file `id` of `room` (at once: a download that follows finds nothing). Blocking.
    pub(crate) fn remove(&self, room: &str, id: &str) {
        if !valid_id(id) || !valid_room_name(room) {
            return;
        }
        if let Some(Err(e)) = self.backend.as_ref().map(|b| b.remove(room, id)) {
            warn!(error = %e, "chat file not removed");
        }
    }

    /// Removes files older than the retention period as of `now`, and temporary files left by a
    /// crash. Returns how many files were removed. Blocking.
    pub(crate) fn sweep(&self, now: SystemTime) -> usize {
        let Some(dir) = &self.cfg.dir else { return 0 };
        if let Ok(tmp) = std::fs::read_dir(dir.join(".tmp")) {
            for e in tmp.flatten() {
                if disk::older_than(&e.path(), now, Duration::from_secs(3600)) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        if self.cfg.retention.is_zero() {
            return 0;
        }
        let Some(backend) = &self.backend else {
            return 0;
        };
        match backend.sweep(now, self.cfg.retention) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "chat file retention sweep failed");
                0
            }
        }
    }

    fn allowed(&self, mime: &str) -> bool {
        self.cfg.allowed_types.iter().any(|a| {
            a == mime
                || a.strip_suffix("/*")
                    .is_some_and(|family| mime.split('/').next() == Some(family))
        })
    }
}

/// The type of a file from its first bytes.
pub(crate) fn sniff(head: &[u8]) -> String {
    if let Some(t) = infer::get(head) {
        return t.mime_type().to_string();
    }
    // UTF-8 text without NULs (the cut at the end may split a character).
    let text_ok = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    if !head.is_empty() && text_ok && !head.contains(&0) {
        "text/plain".to_string()
    } else {
        "application/octet-stream".to_string()
    }
}

/// A thumbnail (JPEG, longest side [`THUMB_PX`]) of the picture at `path`; `None` if it does not
/// decode, or would take more than `max_bytes` to. Blocking.
fn make_thumb(path: &Path, max_bytes: u64) -> Option<Vec<u8>> {
    let mut reader = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(max_bytes);
    reader.limits(limits);
    // GIF and animated WebP decode to their first frame.
    let img = reader.decode().ok()?;
    let thumb = img.thumbnail(THUMB_PX, THUMB_PX).to_rgb8();
    let mut out = std::io::Cursor::new(Vec::new());
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
    thumb.write_with_encoder(enc).ok()?;
    Some(out.into_inner())
}

#[derive(Serialize)]
struct ApiError {
    error: &'static str,
    message: String,
}

fn fail(status: StatusCode, error: &'static str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error,
            message: message.into(),
        }),
    )
        .into_response()
}

fn mib(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{bytes} bytes")
    }
}

/// The caller's claims if its bearer token admits it to `room`.
fn authorize(state: &AppState, headers: &HeaderMap, room: &str) -> Result<Claims, Box<Response>> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(Box::new(fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the room's access token as Authorization: Bearer",
        )));
    };
    let claims = state.inner.keys.verify(token).map_err(|_| {
        Box::new(fail(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the access token is not valid",
        ))
    })?;
    if claims.room != room {
        return Err(Box::new(fail(
            StatusCode::FORBIDDEN,
            "wrong_room",
            "this token is for another room",
        )));
    }
    Ok(claims)
}

/// The file routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/rooms/{room}/files", get(policy).post(upload))
        .route("/api/rooms/{room}/files/{id}", get(download))
        .route("/api/rooms/{room}/files/{id}/thumb", get(thumbnail))
        .layer(DefaultBodyLimit::disable())
}

#[derive(Serialize)]
struct Policy {
    max_upload_bytes: u64,
    allowed_types: Vec<String>,
}

async fn policy(
    State(state): State<AppState>,
    UrlPath(room): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &room) {
        return *r;
    }
    let cfg = &state.inner.files.cfg;
    Json(Policy {
        max_upload_bytes: cfg.max_upload_bytes,
        allowed_types: cfg.allowed_types.clone(),
    })
    .into_response()
}

#[derive(Deserialize)]
struct UploadQuery {
    #[serde(default)]
    name: String,
}

/// The uploader's file name without directories or control characters, at most 200 characters.
fn clean_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let n: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    let n = n.trim().to_string();
    if n.is_empty() || n == "." || n == ".." {
        "file".to_string()
    } else {
        n
    }
}

fn random_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn upload(
    State(state): State<AppState>,
    UrlPath(room): UrlPath<String>,
    Query(q): Query<UploadQuery>,
    connect_info: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let claims = match authorize(&state, &headers, &room) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if !claims.grants.chat {
        return fail(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token may not chat",
        );
    }
    let files = &state.inner.files;
    let Some(dir) = files.cfg.dir.clone() else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "uploads_off",
            "this server does not store files",
        );
    };
    let max = files.cfg.max_upload_bytes;
    let too_large = || {
        fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("files are limited to {}", mib(max)),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return too_large();
    }
    // Quotas: the upload (and its declared size) must fit the identity's and the address's
    // hour. The bytes actually received are counted once the body is in.
    let now = std::time::Instant::now();
    let ip = crate::http::request_ip(&state, connect_info, &headers);
    let size_hint = declared.unwrap_or(0);
    let over = files
        .per_identity
        .check(claims.sub.clone(), now, size_hint)
        .err()
        .or_else(|| ip.and_then(|ip| files.per_ip.check(ip, now, size_hint).err()));
    if let Some(retry) = over {
        state.inner.counters.hit(Limit::Uploads);
        debug!(identity = %claims.sub, ?ip, "upload quota reached");
        return crate::http::too_many(retry, "upload quota for this hour reached; try again later");
    }
    let room_full = || {
        state.inner.counters.hit(Limit::RoomBytes);
        fail(
            StatusCode::INSUFFICIENT_STORAGE,
            "room_storage_full",
            format!(
                "this room keeps {} of files already; delete some or wait for old ones to expire",
                mib(files.cfg.max_room_bytes)
            ),
        )
    };
    match files.room_has_space(&room, size_hint).await {
        Ok(true) => {}
        Ok(false) => return room_full(),
        Err(e) => {
            warn!(error = %e, "cannot measure a room's files");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
        }
    }
    files.per_identity.record(claims.sub.clone(), now, 1, 0);
    if let Some(ip) = ip {
        files.per_ip.record(ip, now, 1, 0);
    }
    let tmp_dir = dir.join(".tmp");
    if let Err(e) = tokio::fs::create_dir_all(&tmp_dir).await {
        warn!(error = %e, "cannot create the upload directory");
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        );
    }
    let id = random_id();
    let tmp = tmp_dir.join(&id);
    // Removes the temporary file unless the upload completes.
    struct Cleanup(Option<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut cleanup = Cleanup(Some(tmp.clone()));
    let mut out = match tokio::fs::File::create(&tmp).await {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "cannot create an upload file");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
        }
    };
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "upload interrupted");
                return fail(
                    StatusCode::BAD_REQUEST,
                    "interrupted",
                    "the upload broke off",
                );
            }
        };
        size += chunk.len() as u64;
        if size > max {
            return too_large();
        }
        if head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        if let Err(e) = out.write_all(&chunk).await {
            warn!(error = %e, "cannot write an upload");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
        }
    }
    files
        .per_identity
        .record(claims.sub.clone(), std::time::Instant::now(), 0, size);
    if let Some(ip) = ip {
        files.per_ip.record(ip, std::time::Instant::now(), 0, size);
    }
    if size == 0 {
        return fail(StatusCode::BAD_REQUEST, "empty", "the file is empty");
    }
    // Checked again with the real size (a chunked upload declares none).
    if declared.is_none() && matches!(files.room_has_space(&room, size).await, Ok(false)) {
        return room_full();
    }
    if let Err(e) = out.sync_all().await {
        warn!(error = %e, "cannot flush an upload");
        return fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        );
    }
    drop(out);
    let mime = sniff(&head);
    if !files.allowed(&mime) {
        return fail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "type_not_allowed",
            format!("files of type {mime} are not accepted here"),
        );
    }
    let meta = StoredFile {
        id: id.clone(),
        room: room.clone(),
        identity: claims.sub.clone(),
        name: clean_name(&q.name),
        size,
        mime: mime.clone(),
        thumb: false,
        created_ms: now_ms(),
    };
    let thumb = if mime.starts_with("image/") {
        files.thumbnail(tmp.clone()).await
    } else {
        None
    };
    let store = files.clone();
    let stored = tokio::task::spawn_blocking(move || store.store_blocking(&tmp, meta, thumb)).await;
    match stored {
        Ok(Ok(meta)) => {
            cleanup.0 = None;
            info!(size, mime = %meta.mime, "chat file stored");
            (StatusCode::CREATED, Json(meta.attachment())).into_response()
        }
        Ok(Err(e)) => {
            warn!(error = %e, "cannot store an upload");
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
        Err(e) => {
            warn!(error = %e, "upload task failed");
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

async fn serve(
    state: AppState,
    room: String,
    id: String,
    headers: HeaderMap,
    thumb: bool,
) -> Response {
    if let Err(r) = authorize(&state, &headers, &room) {
        return *r;
    }
    let files = state.inner.files.clone();
    let found = tokio::task::spawn_blocking(move || files.fetch_blocking(&room, &id, thumb))
        .await
        .ok()
        .flatten();
    let Some((meta, bytes)) = found else {
        return fail(StatusCode::NOT_FOUND, "not_found", "no such file");
    };
    let (mime, disposition) = if thumb {
        ("image/jpeg".to_string(), "inline".to_string())
    } else {
        (meta.mime.clone(), content_disposition(&meta.name))
    };
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "private, max-age=3600".to_string()),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; sandbox".to_string(),
            ),
        ],
        bytes,
    )
        .into_response()
}

/// `attachment` with the name percent-encoded (RFC 6266 / 8187).
fn content_disposition(name: &str) -> String {
    let mut enc = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename*=UTF-8''{enc}")
}

async fn download(
    State(state): State<AppState>,
    UrlPath((room, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve(state, room, id, headers, false).await
}

async fn thumbnail(
    State(state): State<AppState>,
    UrlPath((room, id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    serve(state, room, id, headers, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_ignores_names_and_knows_text() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff("hello 你好".as_bytes()), "text/plain");
        assert_eq!(sniff(b"\0\x01\x02binary"), "application/octet-stream");
        assert_eq!(sniff(b""), "application/octet-stream");
    }

    #[test]
    fn names_lose_their_directories() {
        assert_eq!(clean_name("../../etc/passwd"), "passwd");
        assert_eq!(clean_name("C:\\x\\a b.png"), "a b.png");
        assert_eq!(clean_name(".."), "file");
        assert_eq!(clean_name(""), "file");
    }

    #[test]
    fn type_policy_takes_families() {
        let cfg = FilesConfig {
            allowed_types: vec!["image/*".into(), "application/pdf".into()],
            ..FilesConfig::default()
        };
        let f = Files::start(cfg, None);
        assert!(f.allowed("image/png") && f.allowed("application/pdf"));
        assert!(!f.allowed("text/plain") && !f.allowed("imagex/png"));
    }

    #[test]
    fn sweep_removes_files_past_retention() {
        let dir = std::env::temp_dir().join(format!("huddle-files-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("r")).unwrap();
        let id = random_id();
        std::fs::write(dir.join("r").join(&id), b"x").unwrap();
        std::fs::write(dir.join("r").join(format!("{id}.json")), b"{}").unwrap();
        // No runtime here: the store starts no sweep of its own.
        let cfg = FilesConfig {
            dir: Some(dir.clone()),
            retention: Duration::from_secs(86_400),
            ..FilesConfig::default()
        };
        let f = Files::start(cfg, None);
        assert_eq!(f.sweep(SystemTime::now()), 0);
        let later = SystemTime::now() + Duration::from_secs(2 * 86_400);
        assert_eq!(f.sweep(later), 1);
        assert!(!dir.join("r").join(&id).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
