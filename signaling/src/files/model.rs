//! What every file backend shares: the [`FileBackend`] trait, the metadata kept with each
//! file, and the rule for file ids.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::protocol::Attachment;
use crate::SignalingError;

/// What is known of a stored file (its `<id>.json` on disk, or its row in PostgreSQL).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredFile {
    pub(crate) id: String,
    pub(crate) room: String,
    pub(crate) identity: String,
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) mime: String,
    pub(crate) thumb: bool,
    pub(crate) created_ms: i64,
}

impl StoredFile {
    /// The file as a chat message carries it.
    pub(crate) fn attachment(&self) -> Attachment {
        Attachment {
            id: self.id.clone(),
            name: self.name.clone(),
            size: self.size,
            mime: self.mime.clone(),
            thumb: self
                .thumb
                .then(|| format!("/api/rooms/{}/files/{}/thumb", self.room, self.id)),
        }
    }
}

/// File ids: 32 lowercase hexadecimal digits.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Where finished uploads are kept: their bytes, thumbnails and metadata. Uploads in progress
/// are not its business (they are streamed to the data directory first, whichever backend).
///
/// Every call blocks: async code runs them in `spawn_blocking`. Room names and ids are checked
/// by the caller ([`crate::token::valid_room_name`], [`valid_id`]) before they get here, except
/// the room of [`FileBackend::room_bytes`] (the caller's token names it).
pub(crate) trait FileBackend: Send + Sync + std::fmt::Debug {
    /// Stores a finished upload: the bytes at `tmp` (moved or read away; the caller removes
    /// whatever is left there), under `meta.id` of `meta.room`, with `meta` and, when
    /// `meta.thumb` is set, `thumb`. The file exists (for [`FileBackend::meta`]) only once all
    /// of it is stored.
    fn store(
        &self,
        tmp: &Path,
        meta: &StoredFile,
        thumb: Option<Vec<u8>>,
    ) -> Result<(), SignalingError>;

    /// What is known of file `id` of `room`; `None` if there is no such file.
    fn meta(&self, room: &str, id: &str) -> Result<Option<StoredFile>, SignalingError>;

    /// File `id` of `room` and its bytes, or with `thumb` its thumbnail's; `None` if there is
    /// no such file, or it has no thumbnail.
    fn open(
        &self,
        room: &str,
        id: &str,
        thumb: bool,
    ) -> Result<Option<(StoredFile, Vec<u8>)>, SignalingError>;

    /// The bytes of the files `room` keeps now (the files themselves, not their thumbnails).
    fn room_bytes(&self, room: &str) -> Result<u64, SignalingError>;

    /// Removes file `id` of `room` and its thumbnail; it is gone for [`FileBackend::meta`] at
    /// once. No such file is not an error.
    fn remove(&self, room: &str, id: &str) -> Result<(), SignalingError>;

    /// Removes the files stored `retention` or longer before `now`; returns how many.
    fn sweep(&self, now: SystemTime, retention: Duration) -> Result<usize, SignalingError>;
}
