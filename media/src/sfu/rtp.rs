//! Forwarding RTP packets: what a consumer rewrites in each packet of its producer so that its
//! slot carries one continuous stream, whatever layer or producer feeds it.
//!
//! The publisher's packets are never reassembled into frames nor packetized again: the payload
//! (one shared allocation) goes to every subscriber as it came, under a header of the slot's
//! own. Per consumer, a [`Rewrite`] fixed at the packet where it started (or switched layer)
//! maps the producer's sequence numbers, RTP times and VP8 picture ids onto the slot's, going on
//! from the last packet the slot carried ([`SlotOut`]). A switch happens only at the first packet
//! of a keyframe, so the subscriber's decoder never sees a gap it cannot fill; losses inside a
//! layer stay gaps of the same size, and their repairs (str0m NACKs the publisher and unwraps
//! RTX) fill them when they come.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use str0m::media::{Mid, Rid};
use str0m::rtp::{RtpPacket, Vp8Descriptor};

use crate::ParticipantId;

/// Where the first packet on a slot starts its sequence numbers: low, so that no rollover
/// counter needs signalling (RFC 3711 3.3.1), and not zero.
const FIRST_SEQ: u64 = 1000;

/// What a slot last sent: the base a new consumer (or a layer switch) goes on from.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct SlotOut {
    /// Highest extended sequence number sent.
    pub(super) seq: Option<u64>,
    /// RTP time of the newest packet sent, and when it was sent.
    pub(super) ts: Option<(u32, Instant)>,
    /// VP8 picture id and TL0PICIDX of the newest packet sent.
    pub(super) picture_id: Option<u16>,
    pub(super) tl0: Option<u8>,
}

/// A consumer's mapping of its producer's packets (on its current layer) onto its slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rewrite {
    /// The producer's sequence number where this mapping starts: older packets belong to what
    /// the slot carried before and are dropped.
    first_seq: u64,
    seq_offset: u64,
    ts_offset: u32,
    picture_id_offset: u16,
    tl0_offset: u8,
}

/// One packet as it goes out on a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rewritten {
    pub(super) seq: u64,
    pub(super) ts: u32,
    /// New VP8 picture id and TL0PICIDX, when they differ from the packet's.
    pub(super) vp8: Option<(Option<u16>, Option<u8>)>,
}

impl Rewrite {
    /// The mapping for a consumer whose first packet (a keyframe's first, for video) is `seq`
    /// at RTP time `ts`, going on from what `slot` sent last: the next sequence number, an RTP
    /// time as much later as the wall clock moved (at least one tick), the next picture ids.
    pub(super) fn start(
        slot: &SlotOut,
        seq: u64,
        ts: u32,
        vp8: Option<&Vp8Descriptor>,
        hz: u32,
        now: Instant,
    ) -> Rewrite {
        let seq_offset = slot.seq.map_or(FIRST_SEQ, |s| s + 1).wrapping_sub(seq);
        let ts_offset = match slot.ts {
            None => 0,
            Some((last, at)) => {
                let ticks = (now.saturating_duration_since(at).as_micros() as u64 * u64::from(hz)
                    / 1_000_000)
                    .max(1) as u32;
                last.wrapping_add(ticks).wrapping_sub(ts)
            }
        };
        let (picture_id_offset, tl0_offset) = match vp8 {
            Some(d) => (
                match (slot.picture_id, d.picture_id()) {
                    (Some(last), Some(p)) => last.wrapping_add(1).wrapping_sub(p) & 0x7fff,
                    _ => 0,
                },
                match (slot.tl0, d.tl0_pic_idx()) {
                    (Some(last), Some(t)) => last.wrapping_add(1).wrapping_sub(t),
                    _ => 0,
                },
            ),
            None => (0, 0),
        };
        Rewrite {
            first_seq: seq,
            seq_offset,
            ts_offset,
            picture_id_offset,
            tl0_offset,
        }
    }

    /// The packet `seq` at `ts` (with its VP8 descriptor) as it goes out on the slot, noted in
    /// `slot`; `None` for a packet from before this mapping started.
    pub(super) fn apply(
        &self,
        slot: &mut SlotOut,
        seq: u64,
        ts: u32,
        vp8: Option<&Vp8Descriptor>,
        now: Instant,
    ) -> Option<Rewritten> {
        if seq < self.first_seq {
            return None;
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        let mut patch = None;
        if let Some(d) = vp8 {
            let pid = d
                .picture_id()
                .map(|p| p.wrapping_add(self.picture_id_offset) & 0x7fff);
            let tl0 = d.tl0_pic_idx().map(|t| t.wrapping_add(self.tl0_offset));
            if self.picture_id_offset != 0 || self.tl0_offset != 0 {
                patch = Some((pid, tl0));
            }
            if slot.seq.is_none_or(|s| out_seq > s) {
                slot.picture_id = pid.or(slot.picture_id);
                slot.tl0 = tl0.or(slot.tl0);
            }
        }
        if slot.seq.is_none_or(|s| out_seq > s) {
            slot.seq = Some(out_seq);
            slot.ts = Some((out_ts, now));
        }
        Some(Rewritten {
            seq: out_seq,
            ts: out_ts,
            vp8: patch,
        })
    }
}

/// Audio that reaches the SFU this much later than its place in the publisher's clock says is
/// dropped, not forwarded: it would only be played late or thrown away by the receiver's jitter
/// buffer, and sending it keeps an overloaded worker behind.
pub(super) const AUDIO_LATE: Duration = Duration::from_millis(200);
/// Video yields first: its packets are dropped while every audio stream of the worker arrives at
/// least this late (the worker is behind, see [`Behind`]), and its consumers wait for a keyframe
/// to resume (the frame a dropped packet belonged to cannot be decoded).
pub(super) const VIDEO_LATE: Duration = Duration::from_millis(100);
/// The shortest transit seen is kept over two windows of this length, so that a changed path
/// or a drifting clock is followed within 2 windows.
const LATENESS_WINDOW: Duration = Duration::from_secs(5);
/// Lateness over this is taken for a jump of the stream's RTP times, not a queue.
const TIMEBASE_JUMP: Duration = Duration::from_secs(3);

/// How late the packets of one incoming stream are, from their RTP times alone: the transit
/// `arrival - rtp_time` (arbitrary origin) of each packet, less the shortest one seen recently,
/// is the time it spent queued beyond the stream's best path, on the network or in this
/// worker's socket buffer while the worker was busy. No header extension or clock of the
/// sender is needed.
///
/// The shortest transit follows a path that got slower within two windows, except while the
/// worker's own socket holds a backlog (`hold`): that queue is the worker's, and letting the
/// floor rise with it would let an overloaded worker's queue grow by a window's worth of
/// minimum backlog every two windows, with nothing ever counted late.
#[derive(Debug, Clone, Default)]
pub(super) struct Lateness {
    /// The first packet's arrival and RTP time (µs of media time), the origin of transits.
    origin: Option<(Instant, u64)>,
    /// The shortest transit (µs) in the current and the previous window.
    current: i64,
    previous: i64,
    window_start: Option<Instant>,
}

impl Lateness {
    /// How long the packet with media time `time` (extended, `hz` ticks per second), arriving
    /// `now`, was held up.
    pub(super) fn observe(&mut self, now: Instant, time: u64, hz: u64, hold: bool) -> Duration {
        let media_us = time.saturating_mul(1_000_000) / hz.max(1);
        let (t0, m0) = *self.origin.get_or_insert((now, media_us));
        let transit =
            now.saturating_duration_since(t0).as_micros() as i64 - (media_us as i64 - m0 as i64);
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < LATENESS_WINDOW => {
                self.current = self.current.min(transit);
            }
            Some(_) => {
                // Held, a window that ends can only lower the floor.
                self.previous = if hold {
                    self.previous.min(self.current)
                } else {
                    self.current
                };
                self.current = transit;
                self.window_start = Some(now);
            }
            None => {
                self.previous = transit;
                self.current = transit;
                self.window_start = Some(now);
            }
        }
        let floor = self.current.min(self.previous);
        let late = (transit - floor).max(0) as u64;
        if late > TIMEBASE_JUMP.as_micros() as u64 {
            // No queue holds this much: the stream's RTP times jumped back (a restarted
            // encoder). Start over from this packet.
            *self = Lateness::default();
            return self.observe(now, time, hz, hold);
        }
        Duration::from_micros(late)
    }
}

/// Whether the worker itself is behind: every audio packet of a 100 ms window, from whichever
/// publisher, came at least [`VIDEO_LATE`] late. One publisher's jittery uplink does not make
/// it so (the others' audio is on time); a busy worker does, for everyone at once.
#[derive(Debug, Clone, Default)]
pub(super) struct Behind {
    window_start: Option<Instant>,
    /// The least lateness seen in the current window.
    least: Option<Duration>,
    behind: bool,
    last_audio: Option<Instant>,
}

const BEHIND_WINDOW: Duration = Duration::from_millis(100);

impl Behind {
    /// An audio packet `late` behind its clock arrived.
    pub(super) fn audio(&mut self, now: Instant, late: Duration) {
        self.last_audio = Some(now);
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < BEHIND_WINDOW => {
                self.least = Some(self.least.map_or(late, |l| l.min(late)));
            }
            _ => {
                if let Some(least) = self.least {
                    self.behind = least > VIDEO_LATE;
                }
                self.window_start = Some(now);
                self.least = Some(late);
            }
        }
    }

    /// Whether video should yield now (never after a second without any audio to judge by).
    pub(super) fn is_behind(&self, now: Instant) -> bool {
        self.behind
            && self
                .last_audio
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
    }
}

/// The codecs forwarded, as far as forwarding needs to know them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Codec {
    Opus,
    Vp8,
    H264,
    Other,
}

impl Codec {
    pub(super) fn of(codec: str0m::format::Codec) -> Codec {
        match codec {
            str0m::format::Codec::Opus => Codec::Opus,
            str0m::format::Codec::Vp8 => Codec::Vp8,
            str0m::format::Codec::H264 => Codec::H264,
            _ => Codec::Other,
        }
    }

    /// The name in the frame capture.
    pub(super) fn name(self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::Vp8 => "vp8",
            Codec::H264 => "h264",
            Codec::Other => "other",
        }
    }
}

/// Whether a video payload is the first packet of a keyframe.
pub(super) fn starts_keyframe(codec: Codec, payload: &[u8], vp8: Option<&Vp8Descriptor>) -> bool {
    match codec {
        Codec::Vp8 => vp8.is_some_and(|d| d.starts_keyframe(payload)),
        Codec::H264 => h264_starts_keyframe(payload),
        Codec::Opus | Codec::Other => false,
    }
}

/// An H.264 payload (RFC 6184) that starts an IDR picture or carries a sequence parameter set
/// (sent just before one): a single NAL unit, a STAP-A holding one, or the first fragment of an
/// FU-A of one.
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    let key = |t: u8| t == IDR || t == SPS;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        t @ 1..=23 => key(t),
        24 => {
            let mut i = 1;
            while i + 2 < payload.len() {
                let len = usize::from(u16::from_be_bytes([payload[i], payload[i + 1]]));
                if key(payload[i + 2] & 0x1f) {
                    return true;
                }
                i += 2 + len;
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && key(fu & 0x1f)),
        _ => false,
    }
}

/// Where the VP8 frame starts in a payload (past the payload descriptor, RFC 7741 4.2), and
/// whether the packet starts a frame (S set, partition 0).
pub(crate) fn vp8_frame_part(payload: &[u8]) -> Option<(usize, bool)> {
    let b0 = *payload.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            let m = *payload.get(i)?;
            i += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    (i <= payload.len()).then_some((i, start))
}

/// The debug capture (`media.capture_path`) of whole frames, put together again from the
/// packets only when it is on: Opus packets are frames; a VP8 frame is the payloads past their
/// descriptors from a packet that starts one to the marker bit; H.264 is recorded packet by
/// packet.
#[derive(Debug)]
pub(super) struct Capture {
    out: crate::capture::FrameCapture,
    frames: HashMap<(ParticipantId, Mid, Option<Rid>), Vec<u8>>,
}

impl Capture {
    pub(super) fn new(out: crate::capture::FrameCapture) -> Capture {
        Capture {
            out,
            frames: HashMap::new(),
        }
    }

    pub(super) fn packet(
        &mut self,
        room: &str,
        participant: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        codec: Codec,
        packet: &RtpPacket,
    ) {
        let rid_str = rid.as_deref();
        let payload = &packet.payload[..];
        if codec != Codec::Vp8 {
            self.out
                .record(room, participant, codec.name(), rid_str, payload);
            return;
        }
        let Some((at, start)) = vp8_frame_part(payload) else {
            return;
        };
        let key = (participant, mid, rid);
        let frame = self.frames.entry(key).or_default();
        if start {
            frame.clear();
        } else if frame.is_empty() {
            // The frame's start was not seen.
            return;
        }
        frame.extend_from_slice(&payload[at..]);
        if packet.header.marker {
            self.out
                .record(room, participant, codec.name(), rid_str, frame);
            frame.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VP8 payload with a 15-bit picture id, a TL0PICIDX and a TID byte (as Chromium sends
    /// with simulcast), S set when `start`, then `frame`.
    fn vp8(picture_id: u16, tl0: u8, start: bool, frame: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x80 | if start { 0x10 } else { 0 },
            0xe0,
            0x80 | (picture_id >> 8) as u8,
            picture_id as u8,
            tl0,
            0x20,
        ];
        p.extend_from_slice(frame);
        p
    }

    #[test]
    fn a_switch_goes_on_from_the_slots_last_packet_with_no_gap() {
        let t0 = Instant::now();
        let mut slot = SlotOut::default();
        // First producer: its own numbers shifted to the slot's start.
        let a = vp8(100, 7, true, &[0x10, 0, 0]);
        let da = Vp8Descriptor::parse(&a).unwrap();
        let rw = Rewrite::start(&slot, 5000, 90_000, Some(&da), 90_000, t0);
        let out = rw.apply(&mut slot, 5000, 90_000, Some(&da), t0).unwrap();
        assert_eq!((out.seq, out.ts, out.vp8), (FIRST_SEQ, 90_000, None));
        let out = rw.apply(&mut slot, 5001, 93_000, Some(&da), t0).unwrap();
        assert_eq!(out.seq, FIRST_SEQ + 1);
        assert_eq!(
            rw.apply(&mut slot, 4999, 87_000, Some(&da), t0),
            None,
            "before the start"
        );

        // Another layer (other numbers entirely) takes over 100 ms later at a keyframe.
        let b = vp8(30_000, 200, true, &[0x10, 0, 0]);
        let db = Vp8Descriptor::parse(&b).unwrap();
        let later = t0 + Duration::from_millis(100);
        let rw = Rewrite::start(&slot, 60_000, 7, Some(&db), 90_000, later);
        let out = rw.apply(&mut slot, 60_000, 7, Some(&db), later).unwrap();
        assert_eq!(out.seq, FIRST_SEQ + 2, "sequence numbers continue");
        assert_eq!(
            out.ts,
            93_000 + 9_000,
            "RTP time moves as the wall clock did"
        );
        assert_eq!(out.vp8, Some((Some(101), Some(8))), "picture ids continue");
        // A loss stays a gap of its size; the repair fills it later.
        let out = rw
            .apply(&mut slot, 60_002, 3_007, Some(&db), later)
            .unwrap();
        assert_eq!(out.seq, FIRST_SEQ + 4);
        let out = rw.apply(&mut slot, 60_001, 7, Some(&db), later).unwrap();
        assert_eq!(out.seq, FIRST_SEQ + 3);
        assert_eq!(
            slot.seq,
            Some(FIRST_SEQ + 4),
            "a late repair does not move the slot back"
        );
    }

    #[test]
    fn lateness_is_the_queueing_beyond_the_best_transit() {
        let t0 = Instant::now();
        let mut l = Lateness::default();
        // 20 ms packets arriving on time, one 30 ms transit jitter, then a backlog of 300 ms.
        let base = 48_000 * 60;
        for i in 0..50u64 {
            let at = t0 + Duration::from_millis(i * 20);
            assert_eq!(
                l.observe(at, base + 960 * i, 48_000, false),
                Duration::ZERO,
                "packet {i}"
            );
        }
        let at = t0 + Duration::from_millis(50 * 20 + 30);
        assert_eq!(
            l.observe(at, base + 960 * 50, 48_000, false),
            Duration::from_millis(30)
        );
        let at = t0 + Duration::from_millis(51 * 20 + 300);
        assert_eq!(
            l.observe(at, base + 960 * 51, 48_000, false),
            Duration::from_millis(300)
        );
        assert!(Duration::from_millis(300) > AUDIO_LATE && AUDIO_LATE > VIDEO_LATE);
        // RTP times that jump 10 s back are a new timebase, not 10 s of queue.
        let at = t0 + Duration::from_millis(52 * 20);
        let back = base - 48_000 * 10;
        assert_eq!(l.observe(at, back, 48_000, false), Duration::ZERO);
        let at = t0 + Duration::from_millis(53 * 20 + 50);
        assert_eq!(
            l.observe(at, back + 960, 48_000, false),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn a_backlog_in_the_workers_socket_does_not_become_the_norm() {
        let t0 = Instant::now();
        let base = 48_000 * 60;
        // On time for a second, then every packet 250 to 350 ms late for 20 s (an overloaded
        // worker whose queue never empties).
        let run = |hold: bool| {
            let mut l = Lateness::default();
            let mut last = Duration::ZERO;
            for i in 0..1050u64 {
                let queue = if i < 50 { 0 } else { 250 + (i * 37) % 100 };
                let at = t0 + Duration::from_millis(i * 20 + queue);
                last = l.observe(at, base + 960 * i, 48_000, hold && i >= 50);
            }
            last
        };
        let held = run(true);
        assert!(held > AUDIO_LATE, "held: still counted late ({held:?})");
        let free = run(false);
        assert!(
            free < Duration::from_millis(150),
            "not held, the slower path is the norm after two windows ({free:?})"
        );
    }

    #[test]
    fn the_worker_is_behind_only_when_all_audio_is_late() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Behind::default();
        // One jittery publisher among punctual ones: not behind.
        for i in 0..20u64 {
            b.audio(t0 + ms(i * 10), if i % 2 == 0 { ms(150) } else { ms(5) });
        }
        assert!(!b.is_behind(t0 + ms(200)));
        // Everyone late for a whole window: behind, until a window with a punctual packet.
        for i in 20..40u64 {
            b.audio(t0 + ms(i * 10), ms(150));
        }
        assert!(b.is_behind(t0 + ms(400)));
        assert!(
            !b.is_behind(t0 + ms(1500)),
            "no audio for a second: no judgement"
        );
        for i in 40..50u64 {
            b.audio(t0 + ms(i * 10), if i == 45 { ms(1) } else { ms(150) });
        }
        b.audio(t0 + ms(500), ms(150));
        assert!(
            !b.is_behind(t0 + ms(500)),
            "one punctual packet in the last window"
        );
    }

    #[test]
    fn picture_ids_wrap_within_fifteen_bits() {
        let t0 = Instant::now();
        let slot = SlotOut {
            seq: Some(10),
            ts: Some((0, t0)),
            picture_id: Some(0x7fff),
            tl0: Some(255),
        };
        let p = vp8(5, 5, true, &[0x10, 0, 0]);
        let d = Vp8Descriptor::parse(&p).unwrap();
        let rw = Rewrite::start(&slot, 1, 0, Some(&d), 90_000, t0);
        let mut s = slot;
        let out = rw.apply(&mut s, 1, 0, Some(&d), t0).unwrap();
        assert_eq!(out.vp8, Some((Some(0), Some(0))));
    }

    #[test]
    fn keyframe_starts_are_found_per_codec() {
        let key = vp8(1, 1, true, &[0x10, 0, 0]);
        let inter = vp8(1, 1, true, &[0x11, 0, 0]);
        let middle = vp8(1, 1, false, &[0x10, 0, 0]);
        for (p, want) in [(&key, true), (&inter, false), (&middle, false)] {
            let d = Vp8Descriptor::parse(p).ok();
            assert_eq!(starts_keyframe(Codec::Vp8, p, d.as_ref()), want);
        }
        assert_eq!(vp8_frame_part(&key), Some((6, true)));
        assert_eq!(vp8_frame_part(&middle), Some((6, false)));
        assert_eq!(vp8_frame_part(&[0x90]), None, "cut short");
        // H.264: an IDR NAL, a STAP-A with SPS, an FU-A start of an IDR, a P slice.
        assert!(starts_keyframe(Codec::H264, &[0x65, 1, 2], None));
        assert!(starts_keyframe(
            Codec::H264,
            &[0x78, 0, 2, 0x67, 1, 0, 1, 0x68],
            None
        ));
        assert!(starts_keyframe(Codec::H264, &[0x7c, 0x85, 1], None));
        assert!(
            !starts_keyframe(Codec::H264, &[0x7c, 0x05, 1], None),
            "not the first fragment"
        );
        assert!(!starts_keyframe(Codec::H264, &[0x41, 1], None));
        assert!(!starts_keyframe(Codec::H264, &[], None));
        assert!(!starts_keyframe(Codec::Opus, &[0x65], None));
    }
}
