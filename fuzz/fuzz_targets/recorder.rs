//! What a publisher sends, as the recorder gets it: any payloads (VP8 descriptors and frames,
//! Opus TOC bytes), sequence numbers, RTP times, layers, markers and kinds, in any order, on
//! virtual time. The recorder may not panic, and what it writes stays bounded by what came in
//! (its holds are capped: the jitter buffer, a VP8 frame, a file's frames before it begins).
#![no_main]

use std::time::{Duration, Instant};

use huddle_media::recording::{RecCodec, RecOutput, RecordedPacket, Recorder};
use huddle_media::{ParticipantId, TrackId, TrackKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut rec = Recorder::new(t0);
    let mut now = t0;
    let (mut seq, mut time) = (1000u64, 90_000u64);
    let mut input = 0usize;
    let mut rest = data;
    while rest.len() >= 6 {
        let (h, tail) = rest.split_at(6);
        let len = usize::from(h[5]).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        // h[0]: track (4) and kind; h[1]: codec, layer, marker; h[2..4]: seq and time steps;
        // h[4]: how far the clock moves.
        let track = u64::from(h[0] & 3);
        let video = h[0] & 4 != 0;
        let codec = match h[1] & 3 {
            0 => RecCodec::Opus,
            1 => RecCodec::Vp8,
            _ => RecCodec::Other,
        };
        seq = seq.wrapping_add_signed(i64::from(h[2] as i8)).min(u64::MAX / 2);
        time = time.wrapping_add_signed(i64::from(h[3] as i8) * 300).min(u64::MAX / 2);
        now += Duration::from_millis(u64::from(h[4] & 0x3f));
        input += payload.len();
        rec.packet(
            now,
            RecordedPacket {
                participant: ParticipantId(track % 2),
                track: TrackId(track),
                kind: if video { TrackKind::Video } else { TrackKind::Audio },
                screen: h[0] & 8 != 0,
                codec,
                layer: (h[1] >> 2) & 3,
                seq,
                time,
                arrival: now,
                marker: h[1] & 0x10 != 0,
                payload: payload.into(),
            },
        );
        if h[1] & 0x20 != 0 {
            rec.handle_timeout(now);
        }
    }
    rec.finish(now + Duration::from_secs(1));
    let mut written = 0usize;
    while let Some(op) = rec.poll_output() {
        if let RecOutput::Append { bytes, .. } = op {
            written += bytes.len();
        }
    }
    // Headers, block headers and the mix (encoded silence at worst) aside, nothing is
    // invented: a generous bound that catches a frame or a buffer written over and over.
    let elapsed = now.saturating_duration_since(t0).as_secs() as usize + 2;
    assert!(
        written <= 64 * 1024 + input * 2 + data.len() * 64 + elapsed * 8_000,
        "{written} bytes written for {input} bytes in"
    );
});
