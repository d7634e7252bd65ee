//! Files in the data directory (one node): `<dir>/<room>/<id>`, with `<id>.thumb` and
//! `<id>.json` (its metadata, written last: a file without it does not exist). Retention goes
//! by the metadata file's modification time.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::model::{valid_id, FileBackend, StoredFile};
use crate::token::valid_room_name;
use crate::SignalingError;

/// The files under one directory.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    dir: PathBuf,
}

/// Whether the file at `p` was last modified `age` or longer before `now`.
pub(crate) fn older_than(p: &Path, now: SystemTime, age: Duration) -> bool {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .is_some_and(|a| a >= age)
}

impl Disk {
    /// The files kept under `dir`.
    pub(crate) fn new(dir: PathBuf) -> Self {
        Disk { dir }
    }

    fn path(&self, room: &str, name: &str) -> PathBuf {
        // Room names and ids are checked before they get here: no separators, no dots alone.
        self.dir.join(room).join(name)
    }
}

impl FileBackend for Disk {
    fn store(
        &self,
        tmp: &Path,
        meta: &StoredFile,
        thumb: Option<Vec<u8>>,
    ) -> Result<(), SignalingError> {
        let room_dir = self.dir.join(&meta.room);
        std::fs::create_dir_all(&room_dir)?;
        if let Some(t) = thumb {
            let tt = tmp.with_extension("thumb");
            std::fs::write(&tt, t)?;
            std::fs::rename(&tt, room_dir.join(format!("{}.thumb", meta.id)))?;
        }
        std::fs::rename(tmp, room_dir.join(&meta.id))?;
        // The metadata last: until it is in place, the file does not exist.
        let tj = tmp.with_extension("json");
        std::fs::write(&tj, serde_json::to_vec(meta).unwrap_or_default())?;
        std::fs::rename(&tj, room_dir.join(format!("{}.json", meta.id)))?;
        Ok(())
    }

    fn meta(&self, room: &str, id: &str) -> Result<Option<StoredFile>, SignalingError> {
        // A metadata file that is missing, unreadable or broken: no such file.
        let Ok(text) = std::fs::read(self.path(room, &format!("{id}.json"))) else {
            return Ok(None);
        };
        let Ok(meta) = serde_json::from_slice::<StoredFile>(&text) else {
            return Ok(None);
        };
        Ok((meta.room == room).then_some(meta))
    }

    fn open(
        &self,
        room: &str,
        id: &str,
        thumb: bool,
    ) -> Result<Option<(StoredFile, Vec<u8>)>, SignalingError> {
        let Some(meta) = self.meta(room, id)? else {
            return Ok(None);
        };
        if thumb && !meta.thumb {
            return Ok(None);
        }
        let name = if thumb {
            format!("{id}.thumb")
        } else {
            id.to_string()
        };
        Ok(std::fs::read(self.path(room, &name))
            .ok()
            .map(|bytes| (meta, bytes)))
    }

    fn room_bytes(&self, room: &str) -> Result<u64, SignalingError> {
        let entries = match std::fs::read_dir(self.path(room, "")) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut total = 0u64;
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(valid_id) {
                total = total.saturating_add(e.metadata().map_or(0, |m| m.len()));
            }
        }
        Ok(total)
    }

    fn remove(&self, room: &str, id: &str) -> Result<(), SignalingError> {
        // The metadata first, so the file is gone at once.
        for suffix in [".json", "", ".thumb"] {
            let _ = std::fs::remove_file(self.path(room, &format!("{id}{suffix}")));
        }
        Ok(())
    }

    fn sweep(&self, now: SystemTime, retention: Duration) -> Result<usize, SignalingError> {
        let mut removed = 0;
        let Ok(rooms) = std::fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        for room in rooms.flatten() {
            let Some(room_name) = room.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !valid_room_name(&room_name) || room_name == ".tmp" {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(room.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                if valid_id(id) && older_than(&e.path(), now, retention) {
                    self.remove(&room_name, id)?;
                    removed += 1;
                }
            }
            // An emptied room directory goes too (fails harmlessly when not empty).
            let _ = std::fs::remove_dir(room.path());
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_file_reads_back_counts_and_goes() {
        let dir = std::env::temp_dir().join(format!("huddle-disk-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join(".tmp")).unwrap();
        let disk = Disk::new(dir.clone());
        let id = "0123456789abcdef0123456789abcdef";
        let tmp = dir.join(".tmp").join(id);
        std::fs::write(&tmp, b"hello").unwrap();
        let meta = StoredFile {
            id: id.into(),
            room: "r".into(),
            identity: "alice".into(),
            name: "a.png".into(),
            size: 5,
            mime: "image/png".into(),
            thumb: true,
            created_ms: 1,
        };
        disk.store(&tmp, &meta, Some(b"thumb".to_vec())).unwrap();
        assert!(!tmp.exists());
        for name in [id.to_string(), format!("{id}.thumb"), format!("{id}.json")] {
            assert!(dir.join("r").join(name).is_file());
        }
        assert_eq!(
            disk.meta("r", id).unwrap().map(|m| m.identity),
            Some("alice".into())
        );
        assert!(disk.meta("other", id).unwrap().is_none());
        let (_, bytes) = disk.open("r", id, false).unwrap().unwrap();
        assert_eq!(bytes, b"hello");
        let (_, thumb) = disk.open("r", id, true).unwrap().unwrap();
        assert_eq!(thumb, b"thumb");
        assert_eq!(disk.room_bytes("r").unwrap(), 5);
        assert_eq!(disk.room_bytes("empty").unwrap(), 0);
        disk.remove("r", id).unwrap();
        assert!(disk.meta("r", id).unwrap().is_none());
        assert!(disk.open("r", id, false).unwrap().is_none());
        assert_eq!(disk.room_bytes("r").unwrap(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
