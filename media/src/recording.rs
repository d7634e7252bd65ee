//! Recording: what the SFU already forwards, written to WebM without decoding any video.
//!
//! The SFU hands every packet of a recorded room (the best layer of a simulcast track) to a
//! [`RecordTap`], a bounded queue: a full queue drops the recorded copy (counted in
//! `huddle_recording_packets_dropped_total`), never the live packet. A recording's own thread
//! (see [`crate::worker::start_recording`]) feeds them to a [`Recorder`], the sans-IO core here:
//! packets and the time in, file operations ([`RecOutput`]) out.
//!
//! What the recorder makes of them:
//! - per participant, one WebM file with their microphone (Opus, copied) and camera (VP8,
//!   frames put together from the RTP packets, starting at a keyframe); a screen share, or a
//!   track that starts after the participant's file was begun, gets a file of its own;
//! - one `mix.webm`: everyone's Opus decoded, mixed and encoded once (mono, 48 kHz, 48 kb/s).
//!
//! Packets are put back in order through a small jitter buffer per track (a gap is waited for
//! up to [`REORDER_WAIT`]); timestamps are on the recording's clock (milliseconds since it
//! started: a track's first packet is placed by its arrival, the rest by their RTP time), so
//! the files line up. The segment is written with an unknown size and each cluster whole, with
//! the duration patched after every cluster: a file cut off by a crash is valid up to its last
//! cluster (about a second).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use webm_iterable::matroska_spec::{Master, MatroskaSpec, SimpleBlock};
use webm_iterable::{WebmWriter, WriteOptions};

use crate::layers::vp8_keyframe_size;
use crate::sfu::TrackKind;
use crate::{ParticipantId, TrackId};

/// Packets queued between the SFU and a recording's thread (about 6 s of a 4-person meeting
/// with simulcast cameras, 1 s of a 25-person one).
pub const QUEUE_PACKETS: usize = 4096;
/// The least step after a video frame, ms (see `Recorder::monotonic`).
const VIDEO_STEP_MS: u64 = 10;
/// How often a recording's thread drains its queue.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// How long a track's jitter buffer waits for a missing packet.
pub const REORDER_WAIT: Duration = Duration::from_millis(150);
/// Packets a track holds before it starts.
const START_HOLD: usize = 4;
/// Packets a track's jitter buffer holds at most while it waits.
const REORDER_MAX: usize = 128;
/// Frames are held this long (recording clock) to be written in time order across the tracks
/// of one file.
const INTERLEAVE_MS: u64 = 400;
/// A cluster spans about this much.
const CLUSTER_MS: u64 = 1000;
/// A participant's file waits this long for both their microphone and camera before it is
/// begun with what it has.
const HEADER_WAIT: Duration = Duration::from_secs(3);
/// The mix is encoded this far behind the recording's clock (late packets still count).
const MIX_HOLD_MS: u64 = 500;
/// Frames a file holds before it begins (a camera whose keyframes never show their size): more
/// are dropped.
const MAX_PENDING: usize = 2000;
/// A VP8 frame put together from more than this is dropped (a publisher that never sets the
/// marker bit cannot make the recorder hold more).
const MAX_FRAME: usize = 4 * 1024 * 1024;
/// The mix holds at most this far ahead of what it has encoded (a wild RTP time is cut).
const MIX_AHEAD: usize = 48_000 * 10;
/// Samples per 20 ms frame at 48 kHz.
const FRAME: usize = 960;
/// A decoded Opus packet is at most 120 ms.
const MAX_DECODED: usize = 5760;

/// What a recorded packet carries, as far as the recorder cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecCodec {
    /// Opus audio.
    Opus,
    /// VP8 video.
    Vp8,
    /// Anything else (H.264, VP9, AV1): not written (see docs/recording.md).
    Other,
}

/// One RTP packet of a recorded room, copied off the forwarding path.
#[derive(Clone, Debug)]
pub struct RecordedPacket {
    /// Who sent it.
    pub participant: ParticipantId,
    /// Its track.
    pub track: TrackId,
    /// Audio or video.
    pub kind: TrackKind,
    /// A screen share (its own file).
    pub screen: bool,
    /// Its codec.
    pub codec: RecCodec,
    /// Which simulcast encoding (a change starts over at a keyframe).
    pub layer: u8,
    /// Extended sequence number.
    pub seq: u64,
    /// Extended RTP time (48 kHz audio, 90 kHz video).
    pub time: u64,
    /// When the SFU read it.
    pub arrival: Instant,
    /// The RTP marker bit (the last packet of a video frame).
    pub marker: bool,
    /// The RTP payload (shared with the forwarded copies, not copied).
    pub payload: std::sync::Arc<[u8]>,
}

/// The SFU's end of a recording: a bounded queue to the recording's thread.
#[derive(Clone, Debug)]
pub struct RecordTap {
    tx: std::sync::mpsc::SyncSender<RecordedPacket>,
    dropped: prometheus::IntCounter,
}

impl RecordTap {
    /// A tap and the receiving end of its queue (`capacity` packets).
    pub fn new(
        capacity: usize,
        dropped: prometheus::IntCounter,
    ) -> (RecordTap, std::sync::mpsc::Receiver<RecordedPacket>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
        (RecordTap { tx, dropped }, rx)
    }

    /// Queues a copy; a full queue (a slow disk) drops it and counts it.
    pub fn send(&self, p: RecordedPacket) {
        if self.tx.try_send(p).is_err() {
            self.dropped.inc();
        }
    }
}

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A participant's microphone and camera.
    Participant,
    /// A screen share, or a track published after the participant's file began.
    Track,
    /// Everyone's audio, mixed.
    Mix,
}

impl FileKind {
    /// As in the API and the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Participant => "participant",
            FileKind::Track => "screen",
            FileKind::Mix => "mix",
        }
    }
}

/// A file operation for the recording's driver.
#[derive(Debug, PartialEq, Eq)]
pub enum RecOutput {
    /// Create `name` in the recording's directory as file number `file`.
    Create {
        /// Number.
        file: usize,
        /// File name.
        name: String,
    },
    /// Append bytes.
    Append {
        /// Number.
        file: usize,
        /// What to append.
        bytes: Vec<u8>,
    },
    /// Overwrite 8 bytes at `offset` (the segment's duration).
    Patch {
        /// Number.
        file: usize,
        /// Where.
        offset: u64,
        /// The bytes.
        bytes: [u8; 8],
    },
    /// Nothing more goes to this file.
    Close {
        /// Number.
        file: usize,
    },
}

/// What a file ended up holding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSummary {
    /// File name.
    pub name: String,
    /// Whose (none for the mix).
    pub participant: Option<ParticipantId>,
    /// What it holds.
    pub kind: FileKind,
    /// Its duration, from the recording's start.
    pub duration_ms: u64,
}

struct Frame {
    track_no: u64,
    ms: u64,
    key: bool,
    data: Vec<u8>,
}

struct TrackInfo {
    no: u64,
    kind: TrackKind,
    size: (u32, u32),
}

struct File {
    name: String,
    participant: Option<ParticipantId>,
    kind: FileKind,
    created: Instant,
    tracks: Vec<TrackInfo>,
    writer: Option<WebmWriter<Vec<u8>>>,
    /// Where the 8 bytes of the segment's duration are.
    duration_at: u64,
    written: u64,
    pending: Vec<Frame>,
    latest_ms: u64,
    cluster: Option<(u64, Vec<MatroskaSpec>)>,
    end_ms: u64,
    closed: bool,
}

struct Track {
    codec: RecCodec,
    file: usize,
    track_no: u64,
    layer: u8,
    /// RTP time and recording-clock milliseconds of the packet the track is placed by.
    anchor: Option<(u64, u64)>,
    hz: u64,
    next_seq: Option<u64>,
    /// Whether a packet was handed on since the track (or its layer) started.
    released: bool,
    held: BTreeMap<u64, RecordedPacket>,
    /// A VP8 frame being put together: its data, RTP time, whether it is a keyframe.
    frame: Option<(Vec<u8>, u64, bool)>,
    waiting_key: bool,
    last_ms: Option<u64>,
    /// The length of the last frame written, ms.
    last_step: u64,
    decoder: Option<opus::Decoder>,
}

struct Mix {
    file: usize,
    encoder: Option<opus::Encoder>,
    /// Sample (48 kHz, recording clock) of `buf[0]`.
    base: u64,
    buf: VecDeque<i32>,
}

/// The sans-IO core of one recording.
pub struct Recorder {
    start: Instant,
    tracks: HashMap<TrackId, Track>,
    files: Vec<File>,
    /// Each participant's main file.
    main: HashMap<ParticipantId, usize>,
    mix: Mix,
    out: VecDeque<RecOutput>,
    scratch: Vec<i16>,
    finished: bool,
}

fn ms_since(start: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(start).as_millis() as u64
}

/// Writes `tag` with every element's size in a fixed number of bytes: 8 for masters, 4 for the
/// others. ebml-iterable's shortest encoding writes a size of 127 (or 16,383, …) as all ones,
/// which EBML reserves for "unknown size"; FFmpeg then misreads the element (a 123-byte Opus
/// frame in a SimpleBlock is enough). Fixed lengths never hit that.
fn put(w: &mut WebmWriter<Vec<u8>>, tag: &MatroskaSpec) -> bool {
    use webm_iterable::matroska_spec::{EbmlSpecification, EbmlTag};
    match tag.as_master() {
        Some(Master::Full(children)) => {
            let id = tag.get_id();
            let (Some(start), Some(end)) = (
                MatroskaSpec::get_master_tag(id, Master::Start),
                MatroskaSpec::get_master_tag(id, Master::End),
            ) else {
                return false;
            };
            w.write_advanced(&start, WriteOptions::set_size_byte_count(8))
                .is_ok()
                && children.iter().all(|c| put(w, c))
                && w.write(&end).is_ok()
        }
        Some(_) => w.write(tag).is_ok(),
        None => w
            .write_advanced(tag, WriteOptions::set_size_byte_count(4))
            .is_ok(),
    }
}

/// How long an Opus packet plays, ms, from its TOC byte (RFC 6716 3.1), rounded up; 20 when
/// it cannot be read.
fn opus_duration_ms(packet: &[u8]) -> u64 {
    let Some(&toc) = packet.first() else {
        return 20;
    };
    let config = toc >> 3;
    // Frame length in tenths of a millisecond.
    let tenths: u64 = match config {
        0..=11 => [100, 200, 400, 600][usize::from(config % 4)],
        12..=15 => [100, 200][usize::from(config % 2)],
        _ => [25, 50, 100, 200][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(1, |b| u64::from(b & 0x3f)).max(1),
    };
    (tenths * frames).div_ceil(10)
}

/// `OpusHead` (RFC 7845), the CodecPrivate of an Opus track.
fn opus_head(channels: u8, pre_skip: u16) -> Vec<u8> {
    let mut h = b"OpusHead".to_vec();
    h.push(1);
    h.push(channels);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&48_000u32.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes());
    h.push(0);
    h
}

impl Recorder {
    /// A recording that started at `start`.
    pub fn new(start: Instant) -> Recorder {
        let encoder = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio)
            .ok()
            .map(|mut e| {
                let _ = e.set_bitrate(opus::Bitrate::Bits(48_000));
                // Complexity 5 of 10 (callgrind: 0.56 M instructions a 20 ms frame, against
                // 0.76 M at 10): the mix is speech, listened to afterwards.
                let _ = e.set_complexity(5);
                e
            });
        let mut r = Recorder {
            start,
            tracks: HashMap::new(),
            files: Vec::new(),
            main: HashMap::new(),
            mix: Mix {
                file: 0,
                encoder,
                base: 0,
                buf: VecDeque::new(),
            },
            out: VecDeque::new(),
            scratch: vec![0; MAX_DECODED * 2],
            finished: false,
        };
        let f = r.new_file("mix.webm".into(), None, FileKind::Mix, start);
        r.files[f].tracks.push(TrackInfo {
            no: 1,
            kind: TrackKind::Audio,
            size: (0, 0),
        });
        r.begin(f);
        r.mix.file = f;
        r
    }

    fn new_file(
        &mut self,
        name: String,
        participant: Option<ParticipantId>,
        kind: FileKind,
        now: Instant,
    ) -> usize {
        let file = self.files.len();
        self.out.push_back(RecOutput::Create {
            file,
            name: name.clone(),
        });
        self.files.push(File {
            name,
            participant,
            kind,
            created: now,
            tracks: Vec::new(),
            writer: None,
            duration_at: 0,
            written: 0,
            pending: Vec::new(),
            latest_ms: 0,
            cluster: None,
            end_ms: 0,
            closed: false,
        });
        file
    }

    /// One packet (in any order; duplicates are dropped).
    pub fn packet(&mut self, now: Instant, p: RecordedPacket) {
        if self.finished || p.codec == RecCodec::Other {
            return;
        }
        let id = p.track;
        if !self.tracks.contains_key(&id) {
            self.add_track(now, &p);
        }
        let Some(t) = self.tracks.get_mut(&id) else {
            return;
        };
        if p.layer != t.layer {
            // Another simulcast encoding: what is held of the last one goes first, then it
            // starts over (its own sequence numbers and RTP times) at a keyframe.
            self.release(id, true);
            let Some(t) = self.tracks.get_mut(&id) else {
                return;
            };
            t.layer = p.layer;
            t.next_seq = None;
            t.released = false;
            t.anchor = None;
            t.frame = None;
            t.waiting_key = true;
        }
        let Some(t) = self.tracks.get_mut(&id) else {
            return;
        };
        match t.next_seq {
            None => t.next_seq = Some(p.seq),
            // Before anything was handed on, an earlier packet starts the track.
            Some(n) if p.seq < n && !t.released && n - p.seq <= REORDER_MAX as u64 => {
                t.next_seq = Some(p.seq)
            }
            Some(n) if p.seq < n => return,
            Some(_) => {}
        }
        if t.held.len() >= REORDER_MAX {
            self.release(id, true);
        }
        let Some(t) = self.tracks.get_mut(&id) else {
            return;
        };
        t.held.entry(p.seq).or_insert(p);
        // A track starts once a few packets are in (or REORDER_WAIT passed, see
        // `handle_timeout`), so that its first packets can come in any order too.
        if t.released || t.held.len() >= START_HOLD {
            self.release(id, false);
        }
        self.poll_files(now);
    }

    fn add_track(&mut self, now: Instant, p: &RecordedPacket) {
        let pid = p.participant;
        let main = self.main.get(&pid).copied();
        let (file, track_no) = match main {
            // The participant's file, while it has not begun and has no track of this kind.
            Some(f)
                if !p.screen
                    && self.files[f].writer.is_none()
                    && !self.files[f].tracks.iter().any(|t| t.kind == p.kind) =>
            {
                (f, self.files[f].tracks.len() as u64 + 1)
            }
            None if !p.screen => {
                let f = self.new_file(format!("{pid}.webm"), Some(pid), FileKind::Participant, now);
                self.main.insert(pid, f);
                (f, 1)
            }
            _ => {
                let f = self.new_file(
                    format!("{pid}-track{}.webm", p.track),
                    Some(pid),
                    FileKind::Track,
                    now,
                );
                (f, 1)
            }
        };
        self.files[file].tracks.push(TrackInfo {
            no: track_no,
            kind: p.kind,
            size: (0, 0),
        });
        let decoder = (p.codec == RecCodec::Opus)
            .then(|| opus::Decoder::new(48_000, opus::Channels::Mono).ok())
            .flatten();
        self.tracks.insert(
            p.track,
            Track {
                codec: p.codec,
                file,
                track_no,
                layer: p.layer,
                anchor: None,
                hz: if p.kind == TrackKind::Audio {
                    48_000
                } else {
                    90_000
                },
                next_seq: None,
                released: false,
                held: BTreeMap::new(),
                frame: None,
                waiting_key: p.kind == TrackKind::Video,
                last_ms: None,
                last_step: 1,
                decoder,
            },
        );
    }

    /// Hands the track's held packets on in order: those that follow on (all of them when
    /// `all`, skipping gaps).
    fn release(&mut self, id: TrackId, all: bool) {
        loop {
            let Some(t) = self.tracks.get_mut(&id) else {
                return;
            };
            let Some(next) = t.next_seq else { return };
            let p = match t.held.remove(&next) {
                Some(p) => p,
                None if all => {
                    // A gap given up on: a VP8 frame it cut is dropped.
                    let Some((&first, _)) = t.held.iter().next() else {
                        return;
                    };
                    t.frame = None;
                    t.next_seq = Some(first);
                    continue;
                }
                None => return,
            };
            t.next_seq = Some(next + 1);
            t.released = true;
            self.in_order(p);
        }
    }

    /// A track's packet, in order.
    fn in_order(&mut self, p: RecordedPacket) {
        let start = self.start;
        let Some(t) = self.tracks.get_mut(&p.track) else {
            return;
        };
        // Placed by its arrival, but never before what the track already wrote: after a switch
        // of simulcast layer (whose RTP clock has its own offset), the new layer goes on a
        // frame (20 ms, 50 fps at most) after the old layer's last timestamp, instead of piling
        // frames 1 ms apart onto it until its own clock catches up.
        let last = t.last_ms;
        let (at, at_ms) = *t.anchor.get_or_insert_with(|| {
            let ms = ms_since(start, p.arrival);
            (p.time, last.map_or(ms, |l| ms.max(l + 20)))
        });
        // Saturating: a publisher's wild RTP times make wild timestamps, never an overflow.
        let place =
            |time: u64| at_ms.saturating_add(time.saturating_sub(at).saturating_mul(1000) / t.hz);
        match t.codec {
            RecCodec::Opus => {
                let ms = place(p.time);
                // The mix: 48 kHz samples on the recording's clock.
                let sample = at_ms
                    .saturating_mul(48)
                    .saturating_add(p.time.saturating_sub(at));
                let decoded = match &mut t.decoder {
                    Some(d) => d.decode(&p.payload, &mut self.scratch, false).unwrap_or(0),
                    None => 0,
                };
                let (file, no) = (t.file, t.track_no);
                let ms = Self::monotonic(t, ms, opus_duration_ms(&p.payload));
                self.mix_in(sample, decoded);
                self.frame(file, no, ms, true, p.payload.to_vec());
            }
            RecCodec::Vp8 => {
                let Some((off, starts)) = crate::sfu::vp8_frame_part(&p.payload) else {
                    return;
                };
                if starts {
                    let key = p.payload.get(off).is_some_and(|b| b & 1 == 0);
                    t.frame = Some((Vec::with_capacity(p.payload.len() * 4), p.time, key));
                }
                let Some((buf, time, _)) = &mut t.frame else {
                    return;
                };
                if *time != p.time {
                    // A packet of another frame without that frame's start.
                    t.frame = None;
                    return;
                }
                if buf.len() + p.payload.len() > MAX_FRAME {
                    t.frame = None;
                    return;
                }
                buf.extend_from_slice(&p.payload[off..]);
                if !p.marker {
                    return;
                }
                let Some((data, time, key)) = t.frame.take() else {
                    return;
                };
                if t.waiting_key && !key {
                    return;
                }
                t.waiting_key = false;
                let ms = Self::monotonic(t, place(time), VIDEO_STEP_MS);
                let (file, no) = (t.file, t.track_no);
                if key {
                    if let Some(size) = vp8_keyframe_size(&data) {
                        if let Some(ti) = self.files[file].tracks.iter_mut().find(|x| x.no == no) {
                            ti.size = size;
                        }
                    }
                }
                self.frame(file, no, ms, key, data);
            }
            RecCodec::Other => {}
        }
    }

    /// A track's timestamps only go forward, by at least the last frame's length (an Opus
    /// packet's, from its TOC byte; 10 ms for video): a packet placed on or just after the last
    /// one (a repeated or backward RTP time, seen from a starved browser) goes after it. Closer,
    /// players see overlapping frames (FFmpeg: "non monotonically increasing dts").
    fn monotonic(t: &mut Track, ms: u64, step: u64) -> u64 {
        let ms = match t.last_ms {
            Some(last) if ms < last.saturating_add(t.last_step) => last.saturating_add(t.last_step),
            _ => ms,
        };
        t.last_ms = Some(ms);
        t.last_step = step.max(1);
        ms
    }

    fn frame(&mut self, file: usize, track_no: u64, ms: u64, key: bool, data: Vec<u8>) {
        let f = &mut self.files[file];
        if f.closed || (f.writer.is_none() && f.pending.len() >= MAX_PENDING) {
            return;
        }
        f.latest_ms = f.latest_ms.max(ms);
        f.pending.push(Frame {
            track_no,
            ms,
            key,
            data,
        });
    }

    /// Adds `n` decoded samples (in `scratch`) at `sample` into the mix.
    fn mix_in(&mut self, sample: u64, n: usize) {
        let mix = &mut self.mix;
        for (i, &s) in self.scratch[..n].iter().enumerate() {
            let at = sample.saturating_add(i as u64);
            if at < mix.base {
                continue;
            }
            let idx = (at - mix.base) as usize;
            if idx > MIX_AHEAD {
                break;
            }
            if idx >= mix.buf.len() {
                mix.buf.resize(idx + 1, 0);
            }
            mix.buf[idx] += i32::from(s);
        }
    }

    /// Encodes the mix up to `until` (a 48 kHz sample on the recording clock).
    fn encode_mix(&mut self, until: u64) {
        let mut pcm = [0i16; FRAME];
        let mut packet = [0u8; 1500];
        while self.mix.base + FRAME as u64 <= until {
            for s in pcm.iter_mut() {
                let v = self.mix.buf.pop_front().unwrap_or(0);
                *s = v.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16;
            }
            let ms = self.mix.base / 48;
            self.mix.base += FRAME as u64;
            let Some(enc) = &mut self.mix.encoder else {
                continue;
            };
            if let Ok(n) = enc.encode(&pcm, &mut packet) {
                let file = self.mix.file;
                self.frame(file, 1, ms, true, packet[..n].to_vec());
            }
        }
    }

    /// Time passes: gaps given up on, the mix encoded, files begun and clusters written.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        let ids: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, t)| {
                t.held
                    .values()
                    .next()
                    .is_some_and(|p| now.saturating_duration_since(p.arrival) > REORDER_WAIT)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.release(id, true);
        }
        self.poll_files(now);
    }

    fn poll_files(&mut self, now: Instant) {
        let clock = ms_since(self.start, now);
        self.encode_mix(clock.saturating_sub(MIX_HOLD_MS) * 48);
        for f in 0..self.files.len() {
            if self.files[f].writer.is_none() {
                let file = &self.files[f];
                let complete = file.tracks.iter().any(|t| t.kind == TrackKind::Audio)
                    && file
                        .tracks
                        .iter()
                        .any(|t| t.kind == TrackKind::Video && t.size != (0, 0));
                let waited = now.saturating_duration_since(file.created) >= HEADER_WAIT;
                if file.kind == FileKind::Participant && !complete && !waited {
                    continue;
                }
                if file.kind != FileKind::Mix && !self.ready_to_begin(f) {
                    continue;
                }
                self.begin(f);
            }
            let latest = self.files[f]
                .latest_ms
                .max(clock.saturating_sub(2 * INTERLEAVE_MS));
            self.write_frames(f, latest.saturating_sub(INTERLEAVE_MS));
        }
    }

    /// A file's video tracks need their size (from a keyframe) before the file can begin; one
    /// without it is left out of the header.
    fn ready_to_begin(&self, f: usize) -> bool {
        self.files[f]
            .tracks
            .iter()
            .any(|t| t.kind == TrackKind::Audio || t.size != (0, 0))
    }

    /// Writes the file's header.
    fn begin(&mut self, f: usize) {
        // A video track still without a size (no keyframe yet) is left out: it gets a file of
        // its own, begun when its first keyframe comes.
        let late: Vec<u64> = self.files[f]
            .tracks
            .iter()
            .filter(|t| t.kind == TrackKind::Video && t.size == (0, 0))
            .map(|t| t.no)
            .collect();
        if self.files[f].kind == FileKind::Participant {
            for no in late {
                let moved: Vec<TrackId> = self
                    .tracks
                    .iter()
                    .filter(|(_, t)| t.file == f && t.track_no == no)
                    .map(|(id, _)| *id)
                    .collect();
                for id in moved {
                    let participant = self.files[f].participant;
                    let who = participant.map_or_else(String::new, |p| p.to_string());
                    let name = format!("{who}-track{id}.webm");
                    let created = self.files[f].created;
                    let nf = self.new_file(name, participant, FileKind::Track, created);
                    self.files[nf].tracks.push(TrackInfo {
                        no: 1,
                        kind: TrackKind::Video,
                        size: (0, 0),
                    });
                    if let Some(t) = self.tracks.get_mut(&id) {
                        t.file = nf;
                        t.track_no = 1;
                    }
                }
            }
        }
        let file = &mut self.files[f];
        file.tracks
            .retain(|t| t.kind == TrackKind::Audio || t.size != (0, 0));
        let mut w = WebmWriter::new(Vec::new());
        let mut entries = Vec::new();
        for t in &file.tracks {
            let mut e = vec![
                MatroskaSpec::TrackNumber(t.no),
                MatroskaSpec::TrackUID(t.no),
                MatroskaSpec::FlagLacing(0),
            ];
            match t.kind {
                TrackKind::Audio => {
                    let channels = if file.kind == FileKind::Mix { 1 } else { 2 };
                    e.extend([
                        MatroskaSpec::TrackType(2),
                        MatroskaSpec::CodecID("A_OPUS".into()),
                        MatroskaSpec::CodecPrivate(opus_head(channels, 0)),
                        MatroskaSpec::SeekPreRoll(80_000_000),
                        MatroskaSpec::Audio(Master::Full(vec![
                            MatroskaSpec::Channels(u64::from(channels)),
                            MatroskaSpec::SamplingFrequency(48_000.0),
                        ])),
                    ]);
                }
                TrackKind::Video => {
                    e.extend([
                        MatroskaSpec::TrackType(1),
                        MatroskaSpec::CodecID("V_VP8".into()),
                        MatroskaSpec::Video(Master::Full(vec![
                            MatroskaSpec::PixelWidth(u64::from(t.size.0)),
                            MatroskaSpec::PixelHeight(u64::from(t.size.1)),
                        ])),
                    ]);
                }
            }
            entries.push(MatroskaSpec::TrackEntry(Master::Full(e)));
        }
        let header = [MatroskaSpec::Ebml(Master::Full(vec![
            MatroskaSpec::EbmlVersion(1),
            MatroskaSpec::EbmlReadVersion(1),
            MatroskaSpec::EbmlMaxIdLength(4),
            MatroskaSpec::EbmlMaxSizeLength(8),
            MatroskaSpec::DocType("webm".into()),
            MatroskaSpec::DocTypeVersion(4),
            MatroskaSpec::DocTypeReadVersion(2),
        ]))];
        let mut ok = header.iter().all(|t| put(&mut w, t));
        ok &= w
            .write_advanced(
                &MatroskaSpec::Segment(Master::Start),
                WriteOptions::is_unknown_sized_element(),
            )
            .is_ok();
        ok &= put(
            &mut w,
            &MatroskaSpec::Info(Master::Full(vec![
                MatroskaSpec::TimestampScale(1_000_000),
                MatroskaSpec::MuxingApp("huddle".into()),
                MatroskaSpec::WritingApp("huddle".into()),
                MatroskaSpec::Duration(0.0),
            ])),
        );
        ok &= put(&mut w, &MatroskaSpec::Tracks(Master::Full(entries)));
        let bytes = std::mem::take(w.get_mut());
        // The duration's 8 bytes follow its ID and its 4-byte size (8).
        let duration_at = bytes
            .windows(6)
            .position(|x| x == [0x44, 0x89, 0x10, 0, 0, 8])
            .map_or(0, |i| i + 6);
        if !ok || duration_at == 0 {
            tracing::warn!(file = %file.name, "recording: the file header could not be written");
            file.closed = true;
            return;
        }
        file.duration_at = duration_at as u64;
        file.written = bytes.len() as u64;
        file.writer = Some(w);
        let known: Vec<u64> = file.tracks.iter().map(|t| t.no).collect();
        file.pending.retain(|fr| known.contains(&fr.track_no));
        self.out.push_back(RecOutput::Append { file: f, bytes });
    }

    /// Writes the file's frames up to `until` ms into clusters.
    fn write_frames(&mut self, f: usize, until: u64) {
        let file = &mut self.files[f];
        if file.writer.is_none() || file.closed || file.pending.is_empty() {
            return;
        }
        file.pending.sort_by_key(|fr| fr.ms);
        let n = file.pending.partition_point(|fr| fr.ms <= until);
        if n == 0 {
            return;
        }
        let frames: Vec<Frame> = file.pending.drain(..n).collect();
        for fr in frames {
            let video_key = fr.key
                && file
                    .tracks
                    .iter()
                    .any(|t| t.no == fr.track_no && t.kind == TrackKind::Video);
            let start_new = match &file.cluster {
                None => true,
                Some((start, blocks)) => {
                    fr.ms >= start.saturating_add(CLUSTER_MS)
                        || (video_key && fr.ms > *start && !blocks.is_empty())
                }
            };
            if start_new {
                Self::flush_cluster(file, f, &mut self.out);
                file.cluster = Some((fr.ms, vec![MatroskaSpec::Timestamp(fr.ms)]));
            }
            let Some((start, blocks)) = &mut file.cluster else {
                continue;
            };
            let rel = fr.ms.saturating_sub(*start).min(i16::MAX as u64) as i16;
            let block =
                SimpleBlock::new_uncheked(&fr.data, fr.track_no, rel, false, None, false, fr.key);
            blocks.push(block.into());
            let audio = file
                .tracks
                .iter()
                .any(|t| t.no == fr.track_no && t.kind == TrackKind::Audio);
            let end = fr.ms.saturating_add(if audio { 20 } else { 0 });
            file.end_ms = file.end_ms.max(end);
        }
    }

    fn flush_cluster(file: &mut File, f: usize, out: &mut VecDeque<RecOutput>) {
        let Some((_, blocks)) = file.cluster.take() else {
            return;
        };
        if blocks.len() <= 1 {
            return;
        }
        let Some(w) = &mut file.writer else {
            return;
        };
        if !put(w, &MatroskaSpec::Cluster(Master::Full(blocks))) {
            tracing::warn!(file = %file.name, "recording: a cluster could not be written");
            return;
        }
        let bytes = std::mem::take(w.get_mut());
        file.written += bytes.len() as u64;
        out.push_back(RecOutput::Append { file: f, bytes });
        out.push_back(RecOutput::Patch {
            file: f,
            offset: file.duration_at,
            bytes: (file.end_ms as f64).to_be_bytes(),
        });
    }

    /// The recording stops: everything held is written and every file closed.
    pub fn finish(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        let ids: Vec<TrackId> = self.tracks.keys().copied().collect();
        for id in ids {
            self.release(id, true);
        }
        let clock = ms_since(self.start, now);
        let end = (clock * 48).max(self.mix.base + self.mix.buf.len() as u64);
        self.encode_mix(end.div_ceil(FRAME as u64) * FRAME as u64);
        for f in 0..self.files.len() {
            if self.files[f].writer.is_none() && !self.files[f].closed {
                if self.ready_to_begin(f) {
                    self.begin(f);
                } else {
                    self.files[f].closed = true;
                }
            }
            self.write_frames(f, u64::MAX);
            let file = &mut self.files[f];
            Self::flush_cluster(file, f, &mut self.out);
            file.closed = true;
            self.out.push_back(RecOutput::Close { file: f });
        }
        self.finished = true;
    }

    /// The next file operation.
    pub fn poll_output(&mut self) -> Option<RecOutput> {
        self.out.pop_front()
    }

    /// What each file holds (files that never got a header, with nothing in them, are left
    /// out).
    pub fn files(&self) -> Vec<FileSummary> {
        self.files
            .iter()
            .filter(|f| f.writer.is_some())
            .map(|f| FileSummary {
                name: f.name.clone(),
                participant: f.participant,
                kind: f.kind,
                duration_ms: f.end_ms,
            })
            .collect()
    }
}

/// How a recording ended, from its thread.
#[derive(Clone, Debug, Default)]
pub struct RecordingDone {
    /// Each file with its size in bytes.
    pub files: Vec<(FileSummary, u64)>,
    /// Write errors (each gives up one file).
    pub write_errors: u64,
}

/// The thin driver of a [`Recorder`]: its own thread, reading the tap's queue until every
/// sender is gone, writing into `dir`. `done` gets the summary when the files are closed.
pub fn spawn(
    dir: std::path::PathBuf,
    rx: std::sync::mpsc::Receiver<RecordedPacket>,
    metrics: crate::MediaMetrics,
    start: Instant,
    done: tokio::sync::oneshot::Sender<RecordingDone>,
) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    use std::sync::mpsc::TryRecvError;

    std::fs::create_dir_all(&dir)?;
    std::thread::Builder::new()
        .name("recording".into())
        .spawn(move || {
            metrics.recordings.inc();
            let mut rec = Recorder::new(start);
            let mut files: Vec<Option<std::io::BufWriter<std::fs::File>>> = Vec::new();
            let mut sizes: Vec<u64> = Vec::new();
            let mut errors = 0u64;
            loop {
                // The queue is drained every 20 ms rather than waited on: a sender then never
                // has to wake this thread (a futex call and a context switch per packet).
                let mut ended = false;
                loop {
                    match rx.try_recv() {
                        Ok(p) => rec.packet(Instant::now(), p),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            ended = true;
                            break;
                        }
                    }
                }
                let now = Instant::now();
                if ended {
                    rec.finish(now);
                } else {
                    rec.handle_timeout(now);
                }
                while let Some(op) = rec.poll_output() {
                    let mut fail = |files: &mut Vec<Option<_>>, f: usize, e: std::io::Error| {
                        tracing::warn!(error = %e, "recording: a write failed; the file is given up");
                        metrics.recording_write_errors.inc();
                        errors += 1;
                        if let Some(slot) = files.get_mut(f) {
                            *slot = None;
                        }
                    };
                    match op {
                        RecOutput::Create { file, name } => {
                            let opened = std::fs::File::create(dir.join(&name));
                            if files.len() <= file {
                                files.resize_with(file + 1, || None);
                                sizes.resize(file + 1, 0);
                            }
                            match opened {
                                Ok(f) => files[file] = Some(std::io::BufWriter::new(f)),
                                Err(e) => fail(&mut files, file, e),
                            }
                        }
                        RecOutput::Append { file, bytes } => {
                            if let Some(Some(w)) = files.get_mut(file) {
                                match w.write_all(&bytes) {
                                    Ok(()) => {
                                        sizes[file] += bytes.len() as u64;
                                        metrics.recording_bytes.inc_by(bytes.len() as u64);
                                    }
                                    Err(e) => fail(&mut files, file, e),
                                }
                            }
                        }
                        RecOutput::Patch {
                            file,
                            offset,
                            bytes,
                        } => {
                            // After every cluster: what is on disk is a valid file.
                            if let Some(Some(w)) = files.get_mut(file) {
                                let r = w
                                    .flush()
                                    .and_then(|()| w.get_ref().write_all_at(&bytes, offset));
                                if let Err(e) = r {
                                    fail(&mut files, file, e);
                                }
                            }
                        }
                        RecOutput::Close { file } => {
                            if let Some(slot) = files.get_mut(file) {
                                if let Some(mut w) = slot.take() {
                                    if let Err(e) = w.flush().and_then(|()| w.get_ref().sync_all()) {
                                        fail(&mut files, file, e);
                                    }
                                }
                            }
                        }
                    }
                }
                if ended {
                    break;
                }
                std::thread::sleep(DRAIN_EVERY);
            }
            let names: Vec<FileSummary> = rec.files();
            let files = names
                .into_iter()
                .filter_map(|s| {
                    let size = std::fs::metadata(dir.join(&s.name)).ok()?.len();
                    Some((s, size))
                })
                .collect();
            metrics.recordings.dec();
            let _ = done.send(RecordingDone {
                files,
                write_errors: errors,
            });
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use webm_iterable::WebmIterator;

    /// Power of `f` Hz in `pcm` (48 kHz), by Goertzel.
    fn power(pcm: &[f32], f: f64) -> f64 {
        let w = 2.0 * std::f64::consts::PI * f / 48_000.0;
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &x in pcm {
            let s = f64::from(x) + 2.0 * w.cos() * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
    }

    fn vp8_frame(key: bool, n: usize) -> Vec<u8> {
        let mut f = vec![0u8; n];
        f[0] = if key { 0x10 } else { 0x11 };
        if key {
            f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
            f[6..8].copy_from_slice(&320u16.to_le_bytes());
            f[8..10].copy_from_slice(&180u16.to_le_bytes());
        }
        f
    }

    /// Every packet of 5 s of one participant (Opus at 440 Hz, VP8 at 25 fps in two packets a
    /// frame), with its arrival.
    fn packets(t0: Instant, pid: u64, hz: f64) -> Vec<RecordedPacket> {
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio).unwrap();
        let mut v = Vec::new();
        let base = RecordedPacket {
            participant: ParticipantId(pid),
            track: TrackId(pid * 10),
            kind: TrackKind::Audio,
            screen: false,
            codec: RecCodec::Opus,
            layer: 0,
            seq: 0,
            time: 0,
            arrival: t0,
            marker: false,
            payload: std::sync::Arc::from(&[][..]),
        };
        for i in 0..250u64 {
            let pcm: Vec<i16> = (0..960)
                .map(|k| {
                    let t = (i * 960 + k) as f64 / 48_000.0;
                    ((2.0 * std::f64::consts::PI * hz * t).sin() * 8000.0) as i16
                })
                .collect();
            let data = enc.encode_vec(&pcm, 1500).unwrap();
            v.push(RecordedPacket {
                seq: 1000 + i,
                time: 77_000 + i * 960,
                arrival: t0 + Duration::from_millis(100 + i * 20),
                payload: data.into(),
                ..base.clone()
            });
        }
        for i in 0..125u64 {
            let frame = vp8_frame(i % 50 == 0, 600);
            let (a, b) = frame.split_at(300);
            for (j, part) in [a, b].into_iter().enumerate() {
                let mut payload = vec![if j == 0 { 0x10 } else { 0x00 }];
                payload.extend_from_slice(part);
                v.push(RecordedPacket {
                    track: TrackId(pid * 10 + 1),
                    kind: TrackKind::Video,
                    codec: RecCodec::Vp8,
                    seq: 5000 + i * 2 + j as u64,
                    time: 9_000 + i * 3600,
                    arrival: t0 + Duration::from_millis(120 + i * 40 + j as u64),
                    marker: j == 1,
                    payload: payload.into(),
                    ..base.clone()
                });
            }
        }
        v.sort_by_key(|p| p.arrival);
        v
    }

    /// Runs a recording of `packets` (in their order, with some pairs swapped) and returns
    /// the files' bytes by name.
    fn record(t0: Instant, mut all: Vec<RecordedPacket>) -> (Recorder, HashMap<String, Vec<u8>>) {
        for i in (0..all.len() - 1).step_by(7) {
            all.swap(i, i + 1);
        }
        let mut rec = Recorder::new(t0);
        let mut names = HashMap::new();
        let mut files: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut drain = |rec: &mut Recorder| {
            while let Some(op) = rec.poll_output() {
                match op {
                    RecOutput::Create { file, name } => {
                        names.insert(file, name);
                        files.insert(file, Vec::new());
                    }
                    RecOutput::Append { file, bytes } => {
                        files.get_mut(&file).unwrap().extend(bytes)
                    }
                    RecOutput::Patch {
                        file,
                        offset,
                        bytes,
                    } => {
                        let f = files.get_mut(&file).unwrap();
                        f[offset as usize..offset as usize + 8].copy_from_slice(&bytes);
                    }
                    RecOutput::Close { .. } => {}
                }
            }
        };
        let mut next = t0;
        for p in all {
            while next < p.arrival {
                rec.handle_timeout(next);
                drain(&mut rec);
                next += Duration::from_millis(50);
            }
            let at = p.arrival;
            rec.packet(at, p);
            drain(&mut rec);
        }
        rec.finish(t0 + Duration::from_millis(5300));
        drain(&mut rec);
        let out = files
            .into_iter()
            .map(|(f, b)| (names[&f].clone(), b))
            .collect();
        (rec, out)
    }

    /// Blocks per track (their times), the tracks' codec ids, and the duration.
    #[allow(clippy::type_complexity)]
    fn parse(bytes: &[u8]) -> (HashMap<u64, Vec<(u64, Vec<u8>)>>, Vec<String>, f64) {
        let mut blocks: HashMap<u64, Vec<(u64, Vec<u8>)>> = HashMap::new();
        let mut codecs = Vec::new();
        let mut duration = 0.0;
        let mut cluster = 0u64;
        for tag in WebmIterator::new(bytes, &[]) {
            match tag.expect("a valid WebM file") {
                MatroskaSpec::Timestamp(t) => cluster = t,
                MatroskaSpec::CodecID(c) => codecs.push(c),
                MatroskaSpec::Duration(d) => duration = d,
                b @ MatroskaSpec::SimpleBlock(_) => {
                    let sb: SimpleBlock = (&b).try_into().unwrap();
                    let t = (cluster as i64 + i64::from(sb.timestamp)) as u64;
                    blocks
                        .entry(sb.track)
                        .or_default()
                        .push((t, sb.raw_frame_data().to_vec()));
                }
                _ => {}
            }
        }
        (blocks, codecs, duration)
    }

    #[test]
    fn a_participant_file_has_their_audio_and_video_in_order_on_the_recordings_clock() {
        let t0 = Instant::now();
        let (rec, files) = record(t0, packets(t0, 7, 440.0));
        let name = format!("{}.webm", ParticipantId(7));
        let (blocks, codecs, duration) = parse(&files[&name]);
        assert_eq!(codecs, ["A_OPUS", "V_VP8"]);
        let audio = &blocks[&1];
        let video = &blocks[&2];
        assert_eq!(audio.len(), 250, "every Opus packet, reordered back");
        assert_eq!(video.len(), 125, "every VP8 frame, put together");
        assert!(video.iter().all(|(_, f)| f.len() == 600));
        assert_eq!(video[0].1[0] & 1, 0, "the file starts at a keyframe");
        for track in [audio, video] {
            assert!(
                track.windows(2).all(|w| w[0].0 < w[1].0),
                "times go forward"
            );
        }
        // Placed by the first packet's arrival (100 ms), then by RTP time.
        assert_eq!(audio[0].0, 100);
        assert_eq!(audio[249].0, 100 + 249 * 20);
        assert_eq!(video[0].0, 120);
        assert!((duration - 5080.0).abs() < 50.0, "duration {duration}");
        let s = rec.files();
        assert!(s
            .iter()
            .any(|f| f.name == name && f.kind == FileKind::Participant));
    }

    #[test]
    fn a_switch_of_layer_goes_on_from_the_last_frame_without_piling_up() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(t0);
        let mut seq = 0;
        // Layer 0's RTP clock runs 20 % fast: its frames end up ahead of their arrival.
        for (layer, frames, step) in [(0u8, 50u64, 3600u64), (1, 50, 3000)] {
            for i in 0..frames {
                seq += 1;
                let at = t0 + Duration::from_millis((u64::from(layer) * 50 + i) * 33);
                let mut payload = vec![0x10];
                payload.extend(vp8_frame(i == 0, 100));
                rec.packet(
                    at,
                    RecordedPacket {
                        participant: ParticipantId(3),
                        track: TrackId(30),
                        kind: TrackKind::Video,
                        screen: false,
                        codec: RecCodec::Vp8,
                        layer,
                        seq: seq + u64::from(layer) * 10_000,
                        time: 1_000 * u64::from(layer) + i * step,
                        arrival: at,
                        marker: true,
                        payload: payload.into(),
                    },
                );
                rec.handle_timeout(at);
            }
        }
        rec.finish(t0 + Duration::from_secs(4));
        let mut bytes: HashMap<usize, Vec<u8>> = HashMap::new();
        while let Some(op) = rec.poll_output() {
            if let RecOutput::Append { file, bytes: b } = op {
                bytes.entry(file).or_default().extend(b);
            }
        }
        // Video alone: after 3 s its own file (the participant's file, begun without it, is
        // empty of frames) or the participant's file.
        let times: Vec<u64> = bytes
            .iter()
            .filter(|(f, _)| **f != 0) // not the mix
            .flat_map(|(_, b)| parse(b).0.into_values().flatten().map(|(t, _)| t))
            .collect();
        assert_eq!(times.len(), 100);
        let gaps: Vec<u64> = times.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(
            gaps.iter().all(|&g| (20..1000).contains(&g)),
            "frames 33 ms apart stay apart across the switch: {gaps:?}"
        );
    }

    #[test]
    fn opus_packet_lengths_come_from_the_toc_byte() {
        assert_eq!(opus_duration_ms(&[0xfc]), 20, "CELT FB 20 ms");
        assert_eq!(opus_duration_ms(&[0x78]), 20, "hybrid FB 20 ms");
        assert_eq!(opus_duration_ms(&[0x18]), 60, "SILK NB 60 ms");
        assert_eq!(opus_duration_ms(&[0xf1]), 20, "two 10 ms CELT frames");
        assert_eq!(opus_duration_ms(&[0xf9]), 40, "two 20 ms CELT frames");
        assert_eq!(opus_duration_ms(&[0xe3, 0x03]), 8, "three 2.5 ms frames");
        assert_eq!(opus_duration_ms(&[]), 20);
    }

    #[test]
    fn the_mix_holds_everyones_audio() {
        let t0 = Instant::now();
        let mut all = packets(t0, 1, 440.0);
        all.extend(packets(t0, 2, 1000.0));
        all.sort_by_key(|p| p.arrival);
        let (_, files) = record(t0, all);
        let (blocks, codecs, duration) = parse(&files["mix.webm"]);
        assert_eq!(codecs, ["A_OPUS"]);
        assert!((duration - 5300.0).abs() < 100.0, "duration {duration}");
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut pcm = Vec::new();
        let mut buf = [0i16; MAX_DECODED];
        for (_, f) in &blocks[&1] {
            let n = dec.decode(f, &mut buf, false).unwrap();
            pcm.extend(buf[..n].iter().map(|&s| f32::from(s) / 32768.0));
        }
        let off = power(&pcm, 700.0).max(power(&pcm, 2200.0));
        for tone in [440.0, 1000.0] {
            let p = power(&pcm, tone);
            assert!(
                p > 100.0 * off,
                "{tone} Hz: {p} against {off} off the tones"
            );
        }
    }
}

#[cfg(test)]
mod sizes {
    use super::*;
    use webm_iterable::WebmIterator;

    #[test]
    fn blocks_whose_size_looks_like_unknown_are_read_back() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(t0);
        // Sizes around 127 and 16,383 (all ones in a 1- or 2-byte size field).
        let lens: Vec<usize> = (115..=135).chain(16_370..=16_390).collect();
        for (i, &n) in lens.iter().enumerate() {
            let i = i as u64;
            rec.packet(
                t0 + Duration::from_millis(i * 20),
                RecordedPacket {
                    participant: ParticipantId(1),
                    track: TrackId(1),
                    kind: TrackKind::Audio,
                    screen: false,
                    codec: RecCodec::Opus,
                    layer: 0,
                    seq: i,
                    time: i * 960,
                    arrival: t0 + Duration::from_millis(i * 20),
                    marker: false,
                    payload: vec![0xfc; n].into(),
                },
            );
        }
        rec.finish(t0 + Duration::from_secs(5));
        let mut bytes: HashMap<usize, Vec<u8>> = HashMap::new();
        let mut names = HashMap::new();
        while let Some(op) = rec.poll_output() {
            match op {
                RecOutput::Create { file, name } => {
                    names.insert(name, file);
                }
                RecOutput::Append { file, bytes: b } => bytes.entry(file).or_default().extend(b),
                _ => {}
            }
        }
        let file = &bytes[&names[&format!("{}.webm", ParticipantId(1))]];
        let got: Vec<usize> = WebmIterator::new(&file[..], &[])
            .filter_map(|t| match t.expect("valid") {
                b @ MatroskaSpec::SimpleBlock(_) => {
                    let sb: SimpleBlock = (&b).try_into().ok()?;
                    Some(sb.raw_frame_data().len())
                }
                _ => None,
            })
            .collect();
        assert_eq!(got, lens);
    }
}
