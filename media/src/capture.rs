//! A debugging capture of the frames publishers send, as the SFU sees them after SRTP: one JSON
//! line per frame (`room`, `participant`, `codec`, `rid`, `len`, `data` in hex), up to a number
//! of frames. Off unless `media.capture_path` is set. It shows exactly what an operator of the
//! server can see: the media itself in an ordinary room, ciphertext in an end-to-end encrypted
//! one (the browser test of end-to-end encryption reads it for that reason).

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::ParticipantId;

/// Frames longer than this are cut (and marked `"truncated": true`).
const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Where captured frames go; shared by the workers of a node.
#[derive(Clone)]
pub struct FrameCapture {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    out: BufWriter<File>,
    left: usize,
}

impl std::fmt::Debug for FrameCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCapture").finish_non_exhaustive()
    }
}

impl FrameCapture {
    /// Creates (truncates) `path`; at most `frames` frames are written.
    pub fn create(path: &Path, frames: usize) -> std::io::Result<Self> {
        Ok(FrameCapture {
            inner: Arc::new(Mutex::new(Inner {
                out: BufWriter::new(File::create(path)?),
                left: frames,
            })),
        })
    }

    /// Records one frame (nothing once the count is reached; write errors end the capture).
    pub fn record(
        &self,
        room: &str,
        participant: ParticipantId,
        codec: &str,
        rid: Option<&str>,
        data: &[u8],
    ) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.left == 0 {
            return;
        }
        inner.left -= 1;
        let kept = &data[..data.len().min(MAX_FRAME_BYTES)];
        let mut hex = String::with_capacity(kept.len() * 2);
        for b in kept {
            let _ = write!(hex, "{b:02x}");
        }
        let line = format!(
            "{{\"room\":{},\"participant\":\"{participant}\",\"codec\":{},\"rid\":{},\"len\":{},\"truncated\":{},\"data\":\"{hex}\"}}\n",
            json_string(room),
            json_string(codec),
            rid.map_or("null".to_string(), json_string),
            data.len(),
            kept.len() < data.len(),
        );
        let ok = inner.out.write_all(line.as_bytes()).is_ok()
            && (inner.left > 0 || inner.out.flush().is_ok());
        if !ok {
            inner.left = 0;
        }
        // Readable while the server runs: flush every 50 frames.
        if inner.left % 50 == 0 {
            let _ = inner.out.flush();
        }
    }
}

/// A JSON string literal (room names and rids are restricted, but quote them properly anyway).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_lines_up_to_the_count() {
        let dir = std::env::temp_dir().join(format!("huddle-capture-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.jsonl");
        let c = FrameCapture::create(&path, 2).unwrap();
        let pid = ParticipantId(7);
        c.record("r\"1", pid, "opus", None, &[0xfc, 0x01]);
        c.record("r1", pid, "vp8", Some("f"), &[0x10]);
        c.record("r1", pid, "vp8", Some("f"), &[0x11]);
        drop(c);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("\"room\":\"r\\\"1\""), "{text}");
        assert!(lines[0].contains("\"data\":\"fc01\""), "{text}");
        assert!(lines[1].contains("\"rid\":\"f\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
