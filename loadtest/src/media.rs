//! Synthetic media: real Opus encoded from a voice-like signal, and VP8-framed RTP payloads.
//!
//! Both carry the sender's clock so that the receiver can measure end-to-end latency:
//!
//! - **Opus**: each 20 ms frame is re-framed as an Opus "code 3" packet (RFC 6716 §3.2.5) with one
//!   frame and 12 bytes of padding; the padding holds a [`Stamp`]: the packet's number in its
//!   stream and the send time (µs), big-endian. Decoders ignore padding, so the packet still decodes to the same audio, and an SFU that forwards
//!   Opus payloads unchanged (Huddle, Janus) delivers the time untouched. RFC 6716 asks encoders
//!   to zero padding bytes; decoders must accept any value, which is what this relies on.
//! - **VP8**: every RTP payload ends with a [`Stamp`] (the frame's number and its send time). An
//!   SFU that depacketizes and repacketizes frames (str0m does) keeps the frame's bytes but not the
//!   packet boundaries, so the receiver reads the stamp only from the last packet of a frame (RTP
//!   marker bit), where it is the frame's last 12 bytes on both sides.
//!
//! The numbers give end-to-end loss: SFUs renumber RTP sequence numbers per subscriber (Janus and
//! str0m both do), so a packet dropped inside the SFU leaves no gap in the sequence numbers the
//! subscriber sees; it does leave one in these.

use std::f32::consts::PI;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Largest RTP payload the tester writes (bytes); leaves room for headers and SRTP under a
/// 1280-byte path MTU.
pub const MAX_PAYLOAD: usize = 1100;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Starts the process clock that timestamps in payloads are relative to.
pub fn init_clock() {
    let _ = EPOCH.get_or_init(Instant::now);
}

/// Microseconds since [`init_clock`] (monotonic, shared by every sender and receiver in the
/// process, so sender and receiver timestamps compare directly).
pub fn now_us() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Samples per 20 ms Opus frame at 48 kHz.
pub const OPUS_FRAME_SAMPLES: usize = 960;

/// A voice-like test signal: a gliding fundamental (100–220 Hz) with 12 harmonics shaped by two
/// formant-like peaks, switched on and off at a syllable rate (~4 Hz) with pauses between
/// phrases.
pub fn voice_signal(seconds: f32, sample_rate: u32) -> Vec<i16> {
    let n = (seconds * sample_rate as f32) as usize;
    let mut out = Vec::with_capacity(n);
    let mut phase = 0.0f32;
    for i in 0..n {
        let t = i as f32 / sample_rate as f32;
        let f0 = 160.0 + 50.0 * (2.0 * PI * 0.3 * t).sin() + 10.0 * (2.0 * PI * 5.0 * t).sin();
        phase += 2.0 * PI * f0 / sample_rate as f32;
        if phase > 2.0 * PI {
            phase -= 2.0 * PI;
        }
        let formant1 = 500.0 + 200.0 * (2.0 * PI * 4.0 * t).sin();
        let formant2 = 1500.0 + 400.0 * (2.0 * PI * 2.7 * t).cos();
        let mut s = 0.0f32;
        for k in 1..=12 {
            let f = f0 * k as f32;
            let w = 1.0 / (1.0 + ((f - formant1) / 150.0).powi(2))
                + 0.5 / (1.0 + ((f - formant2) / 250.0).powi(2));
            s += w * (phase * k as f32).sin() / k as f32;
        }
        // Syllables at ~4 Hz, phrases of ~2.5 s with 0.5 s of silence between them.
        let syllable = (2.0 * PI * 4.0 * t).sin().max(0.0).powf(1.5);
        let phrase = if (t % 3.0) < 2.5 { 1.0 } else { 0.0 };
        out.push((s * syllable * phrase * 9000.0).clamp(-32000.0, 32000.0) as i16);
    }
    out
}

/// Encodes `seconds` of [`voice_signal`] as 20 ms mono Opus frames at `bitrate` bits/s. Every
/// frame is a single-frame ("code 0") packet, ready for [`opus_with_timestamp`].
pub fn encode_voice(seconds: f32, bitrate: i32) -> Result<Vec<Vec<u8>>> {
    let pcm = voice_signal(seconds, 48_000);
    let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)
        .context("creating the Opus encoder")?;
    enc.set_bitrate(opus::Bitrate::Bits(bitrate))
        .context("setting the Opus bitrate")?;
    let mut frames = Vec::new();
    let mut buf = [0u8; 1500];
    for chunk in pcm.chunks_exact(OPUS_FRAME_SAMPLES) {
        let n = enc.encode(chunk, &mut buf).context("Opus encode")?;
        if n < 2 || buf[0] & 0x03 != 0 {
            bail!(
                "the Opus encoder made a multi-frame packet (TOC {:#04x})",
                buf[0]
            );
        }
        frames.push(buf[..n].to_vec());
    }
    Ok(frames)
}

/// What the sender writes at the end of a payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Packet (audio) or frame (video) number in its stream, from 0.
    pub n: u32,
    /// Send time, µs on the [`now_us`] clock (below 2^48: 8.9 years).
    pub ts_us: u64,
    /// A random tag of the sending stream, in the top 16 bits of the time field: a receiver
    /// whose m-line the server gave to another publisher sees it change (see `media_slots`).
    pub stream: u16,
}

/// Bytes a [`Stamp`] takes.
pub const STAMP_LEN: usize = 12;
/// The send time's bits in a stamp's time field.
const TS_MASK: u64 = (1 << 48) - 1;

impl Stamp {
    fn write(self, p: &mut Vec<u8>) {
        p.extend_from_slice(&self.n.to_be_bytes());
        let t = (self.ts_us & TS_MASK) | (u64::from(self.stream) << 48);
        p.extend_from_slice(&t.to_be_bytes());
    }

    fn read_tail(payload: &[u8]) -> Option<Stamp> {
        let t = payload.get(payload.len().checked_sub(STAMP_LEN)?..)?;
        let time = u64::from_be_bytes(t[4..].try_into().ok()?);
        Some(Stamp {
            n: u32::from_be_bytes(t[..4].try_into().ok()?),
            ts_us: time & TS_MASK,
            stream: (time >> 48) as u16,
        })
    }
}

/// Re-frames a code-0 Opus packet as code 3 (one frame, CBR) with 12 bytes of padding holding
/// `stamp`.
pub fn opus_with_stamp(frame: &[u8], stamp: Stamp) -> Vec<u8> {
    let mut p = Vec::with_capacity(frame.len() + 3 + STAMP_LEN);
    p.push((frame[0] & 0xfc) | 0x03);
    p.push(0x40 | 0x01); // p = padding present, M = 1 frame
    p.push(STAMP_LEN as u8); // padding length
    p.extend_from_slice(&frame[1..]);
    stamp.write(&mut p);
    p
}

/// The stamp carried by [`opus_with_stamp`], if the payload has one.
pub fn opus_stamp(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < 3 + STAMP_LEN
        || payload[0] & 0x03 != 0x03
        || payload[1] != 0x41
        || usize::from(payload[2]) != STAMP_LEN
    {
        return None;
    }
    Stamp::read_tail(payload)
}

/// Generates VP8-framed RTP payloads: a valid payload descriptor (RFC 7741) on every packet and a
/// plausible VP8 frame header (key frames with the start code and the frame size, which SFUs
/// read to tell simulcast layers apart) at the start of every frame. The rest is filler; no decoder could show it, but every SFU only reads the
/// headers.
pub struct Vp8Source {
    width: u16,
    height: u16,
    picture_id: u16,
    filler: Vec<u8>,
    offset: usize,
}

impl Default for Vp8Source {
    fn default() -> Self {
        Self::new(1280, 720)
    }
}

impl Vp8Source {
    /// A `width` x `height` source starting at a random picture id.
    pub fn new(width: u16, height: u16) -> Self {
        let filler: Vec<u8> = (0..64 * 1024).map(|_| rand::random::<u8>()).collect();
        Vp8Source {
            width,
            height,
            picture_id: rand::random::<u16>() & 0x7fff,
            filler,
            offset: 0,
        }
    }

    /// The RTP payloads of one frame of `size` bytes (at least 16) plus a stamp per packet.
    pub fn frame(&mut self, size: usize, keyframe: bool, stamp: Stamp) -> Vec<Vec<u8>> {
        let size = size.max(16);
        let per_packet = MAX_PAYLOAD - 4 - STAMP_LEN;
        let n = size.div_ceil(per_packet);
        let chunk = size.div_ceil(n);
        let pid = self.picture_id;
        self.picture_id = (self.picture_id + 1) & 0x7fff;
        let mut out = Vec::with_capacity(n);
        let mut left = size;
        for i in 0..n {
            let len = chunk.min(left);
            left -= len;
            let mut p = Vec::with_capacity(4 + len + STAMP_LEN);
            // Payload descriptor: X=1, S on the first packet, PID 0; I=1 with a 15-bit picture id.
            p.push(0x80 | if i == 0 { 0x10 } else { 0 });
            p.push(0x80);
            p.push(0x80 | (pid >> 8) as u8);
            p.push(pid as u8);
            let mut body_len = len;
            if i == 0 {
                // VP8 frame tag (RFC 6386 §9.1): P bit (0 = key frame), version 0, show_frame 1,
                // first partition size (19 bits).
                let part = (size as u32 / 2).min(0x7ffff);
                let tag = (if keyframe { 0 } else { 1 }) | (1 << 4) | (part << 5);
                p.extend_from_slice(&tag.to_le_bytes()[..3]);
                body_len -= 3;
                if keyframe {
                    p.extend_from_slice(&[0x9d, 0x01, 0x2a]);
                    p.extend_from_slice(&self.width.to_le_bytes());
                    p.extend_from_slice(&self.height.to_le_bytes());
                    body_len -= 7;
                }
            }
            self.fill(&mut p, body_len);
            stamp.write(&mut p);
            out.push(p);
        }
        out
    }

    fn fill(&mut self, p: &mut Vec<u8>, mut len: usize) {
        while len > 0 {
            if self.offset >= self.filler.len() {
                self.offset = 0;
            }
            let take = len.min(self.filler.len() - self.offset);
            p.extend_from_slice(&self.filler[self.offset..self.offset + take]);
            self.offset += take;
            len -= take;
        }
    }
}

/// Whether a VP8 RTP payload starts a key frame (start of partition 0 with P bit clear).
pub fn vp8_is_keyframe_start(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&x) = payload.get(1) else {
            return false;
        };
        i = 2;
        if x & 0x80 != 0 {
            match payload.get(i) {
                Some(b) if b & 0x80 != 0 => i += 2,
                Some(_) => i += 1,
                None => return false,
            }
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    payload.get(i).is_some_and(|b| b & 0x01 == 0)
}

/// The stamp at the end of a VP8 payload (valid on the last packet of a frame).
pub fn vp8_stamp(payload: &[u8]) -> Option<Stamp> {
    // A repacketized frame may end with a packet of just a 1-byte descriptor and the stamp.
    if payload.len() < 1 + STAMP_LEN {
        return None;
    }
    Stamp::read_tail(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamped_opus_still_decodes_to_a_full_frame() {
        let frames = encode_voice(1.0, 32_000).unwrap();
        assert_eq!(frames.len(), 50);
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
        let mut pcm = [0i16; 5760];
        for (i, f) in frames.iter().enumerate() {
            let stamp = Stamp {
                stream: 0xbeef,
                n: i as u32,
                ts_us: 1_000_000 + i as u64,
            };
            let p = opus_with_stamp(f, stamp);
            assert_eq!(opus_stamp(&p), Some(stamp));
            let n = dec.decode(&p, &mut pcm, false).unwrap();
            assert_eq!(n, OPUS_FRAME_SAMPLES);
        }
        assert_eq!(opus_stamp(&frames[10]), None);
    }

    #[test]
    fn the_voice_signal_is_not_silence() {
        let s = voice_signal(1.0, 48_000);
        let loud = s.iter().filter(|x| x.unsigned_abs() > 1000).count();
        assert!(loud > 4_800, "{loud} loud samples");
    }

    #[test]
    fn vp8_frames_split_under_the_mtu_and_mark_key_frames() {
        let mut src = Vp8Source::default();
        let stamp = |n| Stamp {
            n,
            ts_us: 42,
            stream: 7,
        };
        let key = src.frame(5000, true, stamp(7));
        assert!(key.len() >= 5);
        assert!(key.iter().all(|p| p.len() <= MAX_PAYLOAD));
        assert_eq!(
            key.iter().map(|p| p.len() - 4 - STAMP_LEN).sum::<usize>(),
            5000
        );
        assert!(vp8_is_keyframe_start(&key[0]));
        assert!(!vp8_is_keyframe_start(&key[1]));
        assert_eq!(vp8_stamp(key.last().unwrap()), Some(stamp(7)));
        let delta = src.frame(800, false, stamp(8));
        assert_eq!(delta.len(), 1);
        assert!(!vp8_is_keyframe_start(&delta[0]));
    }
}
