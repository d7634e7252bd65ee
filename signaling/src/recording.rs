//! Recording a meeting: started and stopped by a host (`recording` on the socket) or the room
//! API, announced to everyone in the room, written by the SFU (see `huddle_media::recording`),
//! kept under `recording.path` with a manifest per recording, and deleted after the retention.
//!
//! Layout: `<path>/<room>/<id>/recording.json` beside the recording's files. A recording whose
//! manifest still says `recording` when the server starts was cut off by a restart: it is
//! marked `interrupted`, its files kept (each is valid up to its last cluster).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use huddle_media::recording::RecordingDone;
use huddle_media::ParticipantId;
use serde::{Deserialize, Serialize};

use crate::protocol::ServerMsg;
use crate::webhooks::EventKind;
use crate::AppState;

/// The manifest's file name.
const MANIFEST: &str = "recording.json";

/// Recording settings.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// Where recordings are kept. `None`: recording is off (starting one is refused).
    pub dir: Option<PathBuf>,
    /// How long a recording is kept after it ended; zero keeps them forever. Default 30 days.
    pub retention: Duration,
    /// Recordings running at once on this node. Default 8.
    pub max_active: usize,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            dir: None,
            retention: Duration::from_secs(30 * 86_400),
            max_active: 8,
        }
    }
}

/// One file of a recording, as the API lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordingFile {
    /// File name (download it under the recording's URL).
    pub name: String,
    /// The identity whose media it holds (none for the mix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<String>,
    /// `participant` (microphone and camera), `screen` (a screen share or a later track), or
    /// `mix` (everyone's audio).
    pub kind: String,
    /// Size.
    pub bytes: u64,
    /// Length from the recording's start, milliseconds (none when cut off by a restart).
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

/// A recording's manifest (`recording.json`), and what the API answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recording {
    /// `RC_` and 16 hex digits.
    pub id: String,
    /// The room.
    pub room: String,
    /// `recording`, `ready` (files closed), or `interrupted` (cut off by a restart).
    pub state: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Seconds since the Unix epoch; none while it runs.
    #[serde(default)]
    pub ended_at: Option<u64>,
    /// How long it ran, milliseconds.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Who started it (a host's identity, or `api`).
    #[serde(default)]
    pub started_by: String,
    /// Listed once it is `ready` (or `interrupted`).
    #[serde(default)]
    pub files: Vec<RecordingFile>,
    /// Writes that failed (each gave up a file).
    #[serde(default)]
    pub write_errors: u64,
}

/// Why a recording could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// `recording.path` is not set.
    #[error("recording is off on this server")]
    Disabled,
    /// The room is already being recorded.
    #[error("the room is already being recorded")]
    AlreadyRecording,
    /// Nobody is in the room.
    #[error("nobody is in the room")]
    EmptyRoom,
    /// `recording.max_active` recordings run already.
    #[error("this server records as many meetings as it may at once")]
    TooMany,
    /// The directory or the SFU refused.
    #[error("recording could not start: {0}")]
    Io(String),
}

struct Active {
    id: String,
    started_at: u64,
    started: std::time::Instant,
    started_by: String,
    /// Who was in the room while it ran, for naming the files (shared with the task that
    /// lists them when they are closed).
    names: Names,
}

type Names = std::sync::Arc<Mutex<HashMap<ParticipantId, String>>>;

fn lock(names: &Names) -> std::sync::MutexGuard<'_, HashMap<ParticipantId, String>> {
    names
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The node's recordings.
pub(crate) struct Recordings {
    config: RecordingConfig,
    active: Mutex<HashMap<String, Active>>,
}

fn now_secs() -> u64 {
    crate::token::unix_now()
}

fn valid_id(id: &str) -> bool {
    id.len() == 19 && id.starts_with("RC_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn write_manifest(dir: &Path, r: &Recording) -> std::io::Result<()> {
    let tmp = dir.join(".recording.json.tmp");
    let body = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(tmp, dir.join(MANIFEST))
}

fn read_manifest(dir: &Path) -> Option<Recording> {
    let bytes = std::fs::read(dir.join(MANIFEST)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl Recordings {
    pub(crate) fn new(config: RecordingConfig) -> Self {
        let r = Recordings {
            config,
            active: Mutex::new(HashMap::new()),
        };
        r.recover();
        r
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        // Maps updated in place: a poisoned lock is still consistent.
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn room_dir(&self, room: &str) -> Option<PathBuf> {
        if !crate::token::valid_room_name(room) {
            return None;
        }
        Some(self.config.dir.as_ref()?.join(room))
    }

    /// Whether the room is being recorded; notes the participant's identity for the files.
    pub(crate) fn entered(&self, room: &str, pid: ParticipantId, identity: &str) -> bool {
        match self.active().get_mut(room) {
            Some(a) => {
                lock(&a.names).insert(pid, identity.to_string());
                true
            }
            None => false,
        }
    }

    /// Whether the room is being recorded.
    pub(crate) fn is_active(&self, room: &str) -> bool {
        self.active().contains_key(room)
    }

    /// The room's recordings, newest first.
    pub(crate) fn list(&self, room: &str) -> Vec<Recording> {
        let Some(dir) = self.room_dir(room) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut v: Vec<Recording> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| read_manifest(&e.path()))
            .collect();
        v.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        v
    }

    /// The path of one listed file of a recording.
    pub(crate) fn file(&self, room: &str, id: &str, name: &str) -> Option<PathBuf> {
        if !valid_id(id) || !valid_file_name(name) || name == MANIFEST {
            return None;
        }
        let dir = self.room_dir(room)?.join(id);
        let manifest = read_manifest(&dir)?;
        manifest
            .files
            .iter()
            .any(|f| f.name == name)
            .then(|| dir.join(name))
    }

    /// Manifests left `recording` by a server that stopped: `interrupted`, with the files on
    /// disk listed.
    fn recover(&self) {
        let Some(root) = &self.config.dir else { return };
        let Ok(rooms) = std::fs::read_dir(root) else {
            return;
        };
        for room in rooms.filter_map(|e| e.ok()) {
            let Ok(recs) = std::fs::read_dir(room.path()) else {
                continue;
            };
            for rec in recs.filter_map(|e| e.ok()) {
                let dir = rec.path();
                let Some(mut m) = read_manifest(&dir) else {
                    continue;
                };
                if m.state != "recording" {
                    continue;
                }
                let mut ended = m.started_at;
                m.files = std::fs::read_dir(&dir)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        if !name.ends_with(".webm") {
                            return None;
                        }
                        let meta = e.metadata().ok()?;
                        if let Some(t) = meta
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        {
                            ended = ended.max(t.as_secs());
                        }
                        Some(RecordingFile {
                            kind: if name == "mix.webm" {
                                "mix"
                            } else {
                                "participant"
                            }
                            .into(),
                            name,
                            participant: None,
                            bytes: meta.len(),
                            duration_ms: None,
                        })
                    })
                    .collect();
                m.files.sort_by(|a, b| a.name.cmp(&b.name));
                m.state = "interrupted".into();
                m.ended_at = Some(ended);
                m.duration_ms = Some(ended.saturating_sub(m.started_at) * 1000);
                if let Err(e) = write_manifest(&dir, &m) {
                    tracing::warn!(error = %e, id = %m.id, "recording manifest could not be updated");
                } else {
                    tracing::info!(id = %m.id, room = %m.room, "recording cut off by a restart marked interrupted");
                }
            }
        }
    }

    /// Deletes recordings that ended longer than the retention ago. How many.
    pub(crate) fn sweep(&self) -> usize {
        let (Some(root), false) = (&self.config.dir, self.config.retention.is_zero()) else {
            return 0;
        };
        let cutoff = now_secs().saturating_sub(self.config.retention.as_secs());
        let mut n = 0;
        for room in std::fs::read_dir(root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            for rec in std::fs::read_dir(room.path())
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
            {
                let dir = rec.path();
                let Some(m) = read_manifest(&dir) else {
                    continue;
                };
                if m.ended_at.is_some_and(|t| t < cutoff) && std::fs::remove_dir_all(&dir).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }
}

/// Starts recording `room`, by `by` (a host's identity or `api`).
pub(crate) fn start(state: &AppState, room: &str, by: &str) -> Result<Recording, RecordingError> {
    let inner = &state.inner;
    let recs = &inner.recordings;
    let dir = recs.room_dir(room).ok_or(RecordingError::Disabled)?;
    let members = inner.rooms.participants(room);
    if members.is_empty() {
        return Err(RecordingError::EmptyRoom);
    }
    let mut active = recs.active();
    if active.contains_key(room) {
        return Err(RecordingError::AlreadyRecording);
    }
    if active.len() >= recs.config.max_active {
        return Err(RecordingError::TooMany);
    }
    let id = format!("RC_{:016x}", rand::random::<u64>());
    let dir = dir.join(&id);
    std::fs::create_dir_all(&dir).map_err(|e| RecordingError::Io(e.to_string()))?;
    let manifest = Recording {
        id: id.clone(),
        room: room.to_string(),
        state: "recording".into(),
        started_at: now_secs(),
        ended_at: None,
        duration_ms: None,
        started_by: by.to_string(),
        files: Vec::new(),
        write_errors: 0,
    };
    write_manifest(&dir, &manifest).map_err(|e| RecordingError::Io(e.to_string()))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    inner
        .media
        .start_recording(room, dir.clone(), done_tx)
        .map_err(|e| RecordingError::Io(e.to_string()))?;
    let names: Names = std::sync::Arc::new(Mutex::new(
        members
            .iter()
            .filter_map(|p| Some((p.participant_id.parse().ok()?, p.identity.clone())))
            .collect(),
    ));
    active.insert(
        room.to_string(),
        Active {
            id: id.clone(),
            started_at: manifest.started_at,
            started: std::time::Instant::now(),
            started_by: by.to_string(),
            names: names.clone(),
        },
    );
    drop(active);
    tracing::info!(%room, %id, "recording started");
    inner
        .rooms
        .send(room, None, &ServerMsg::Recording { active: true });
    inner
        .webhooks
        .emit_recording(EventKind::RecordingStarted, room, &manifest);
    // The files are closed some time after the stop: then the manifest lists them.
    let st = state.clone();
    let room_name = room.to_string();
    let base = manifest.clone();
    tokio::spawn(async move {
        let done = done_rx.await.unwrap_or_default();
        let names = lock(&names).clone();
        finished(&st, &room_name, &dir, base, done, names).await;
    });
    Ok(manifest)
}

/// Stops recording `room` (`why` for the log). The recording, if one ran.
pub(crate) fn stop(state: &AppState, room: &str, why: &str) -> Option<Recording> {
    let inner = &state.inner;
    let a = inner.recordings.active().remove(room)?;
    inner.media.stop_recording(room);
    tracing::info!(%room, id = %a.id, why, "recording stopped");
    let ended = now_secs();
    let r = Recording {
        id: a.id,
        room: room.to_string(),
        state: "recording".into(),
        started_at: a.started_at,
        ended_at: Some(ended),
        duration_ms: Some(a.started.elapsed().as_millis() as u64),
        started_by: a.started_by,
        files: Vec::new(),
        write_errors: 0,
    };
    inner
        .rooms
        .send(room, None, &ServerMsg::Recording { active: false });
    inner
        .webhooks
        .emit_recording(EventKind::RecordingEnded, room, &r);
    Some(r)
}

async fn finished(
    state: &AppState,
    room: &str,
    dir: &Path,
    mut m: Recording,
    done: RecordingDone,
    names: HashMap<ParticipantId, String>,
) {
    let ended = now_secs();
    m.state = "ready".into();
    m.ended_at = Some(ended);
    m.duration_ms = Some(
        done.files
            .iter()
            .find(|(f, _)| f.kind == huddle_media::recording::FileKind::Mix)
            .map(|(f, _)| f.duration_ms)
            .unwrap_or_else(|| ended.saturating_sub(m.started_at) * 1000),
    );
    m.write_errors = done.write_errors;
    m.files = done
        .files
        .iter()
        .map(|(f, bytes)| RecordingFile {
            name: f.name.clone(),
            participant: f.participant.and_then(|p| names.get(&p).cloned()),
            kind: f.kind.as_str().into(),
            bytes: *bytes,
            duration_ms: Some(f.duration_ms),
        })
        .collect();
    m.files.sort_by(|a, b| a.name.cmp(&b.name));
    let dir = dir.to_path_buf();
    let written = m.clone();
    let r = tokio::task::spawn_blocking(move || write_manifest(&dir, &written)).await;
    if !matches!(r, Ok(Ok(()))) {
        tracing::warn!(id = %m.id, "recording manifest could not be written");
    }
    tracing::info!(%room, id = %m.id, files = m.files.len(), "recording ready");
    state
        .inner
        .webhooks
        .emit_recording(EventKind::RecordingReady, room, &m);
}

/// Deletes old recordings now and every hour (on the runtime that calls it).
pub(crate) fn start_sweeper(state: &AppState) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    if state.inner.recordings.config.dir.is_none() {
        return;
    }
    let st = state.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let s = st.clone();
            let n = tokio::task::spawn_blocking(move || s.inner.recordings.sweep())
                .await
                .unwrap_or(0);
            if n > 0 {
                tracing::info!(
                    deleted = n,
                    "old recordings deleted (recording.retention_days)"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_checked_before_they_touch_the_disk() {
        assert!(valid_id("RC_0123456789abcdef"));
        assert!(!valid_id("RC_0123456789abcde/"));
        assert!(!valid_id("../../etc/passwd"));
        assert!(valid_file_name("7.webm"));
        assert!(!valid_file_name("../x.webm"));
        assert!(!valid_file_name(".recording.json.tmp"));
        assert!(!valid_file_name("a/b"));
    }

    #[test]
    fn a_recording_cut_off_is_marked_interrupted_and_old_ones_are_swept() {
        let root = std::env::temp_dir().join(format!("huddle-rec-{}", std::process::id()));
        let dir = root.join("room1").join("RC_00000000000000aa");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("7.webm"), b"x").unwrap();
        let m = Recording {
            id: "RC_00000000000000aa".into(),
            room: "room1".into(),
            state: "recording".into(),
            started_at: 1000,
            ended_at: None,
            duration_ms: None,
            started_by: "api".into(),
            files: Vec::new(),
            write_errors: 0,
        };
        write_manifest(&dir, &m).unwrap();
        let recs = Recordings::new(RecordingConfig {
            dir: Some(root.clone()),
            retention: Duration::from_secs(86_400),
            max_active: 1,
        });
        let list = recs.list("room1");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, "interrupted");
        assert_eq!(list[0].files.len(), 1);
        assert!(recs.file("room1", &m.id, "7.webm").is_some());
        assert!(recs.file("room1", &m.id, "recording.json").is_none());
        assert!(recs.file("room1", &m.id, "8.webm").is_none());
        // The files' time is now: kept. An old one goes.
        assert_eq!(recs.sweep(), 0);
        let mut old = read_manifest(&dir).unwrap();
        old.ended_at = Some(1000);
        write_manifest(&dir, &old).unwrap();
        assert_eq!(recs.sweep(), 1);
        assert!(recs.list("room1").is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
