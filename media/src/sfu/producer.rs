//! What a participant publishes (mediasoup's Producer) and each of its encodings.

use super::rtp::Lateness;
#[allow(unused_imports)]
use super::*;
use str0m::format::PayloadParams;
use str0m::media::Pt;

/// An incoming track (mediasoup's Producer).
#[derive(Debug)]
pub(super) struct Producer {
    pub(super) id: TrackId,
    pub(super) mid: Mid,
    pub(super) kind: MediaKind,
    pub(super) source: Source,
    /// The encodings it sends, lowest first: one per simulcast rid, or a single one without rid.
    pub(super) layers: Vec<Layer>,
    /// The payload type of its last packet, its parameters and codec (one lookup per change
    /// of payload type, not per packet).
    pub(super) params: Option<(Pt, PayloadParams, Codec)>,
}

impl Producer {
    pub(super) fn simulcast(&self) -> bool {
        self.layers.iter().any(|l| l.rid.is_some())
    }

    /// The layer for `rid`, added when the publisher sends one its SDP did not list.
    pub(super) fn layer_mut(&mut self, rid: Option<Rid>) -> &mut Layer {
        let i = match self.layers.iter().position(|l| l.rid == rid) {
            Some(i) => i,
            None => {
                self.layers.push(Layer::new(rid));
                self.layers.len() - 1
            }
        };
        &mut self.layers[i]
    }
}

/// One encoding of a producer (a simulcast layer, or the only one).
#[derive(Debug)]
pub(super) struct Layer {
    pub(super) rid: Option<Rid>,
    /// Frame size from its last VP8 keyframe; `(0, 0)` unknown.
    pub(super) size: (u32, u32),
    /// Bits per second over the last full measuring window; 0 before one.
    pub(super) bitrate: u64,
    pub(super) window_bytes: u64,
    pub(super) window_start: Option<Instant>,
    pub(super) last_seen: Option<Instant>,
    /// Whether the publisher was last told to send it (dynacast). Every layer starts active.
    pub(super) active: bool,
    pub(super) resumed_at: Option<Instant>,
    pub(super) last_keyframe_request: Option<Instant>,
    /// A request that came inside [`KEYFRAME_MIN_INTERVAL`] of the last one: sent when the
    /// interval ends rather than dropped, so a second subscriber is not left waiting for the
    /// publisher's next periodic keyframe.
    pub(super) keyframe_pending: Option<KeyframeRequestKind>,
    /// How late its packets arrive (see [`Lateness`]).
    pub(super) lateness: Lateness,
}

impl Layer {
    pub(super) fn new(rid: Option<Rid>) -> Self {
        Layer {
            rid,
            size: (0, 0),
            bitrate: 0,
            window_bytes: 0,
            window_start: None,
            last_seen: None,
            active: true,
            resumed_at: None,
            last_keyframe_request: None,
            keyframe_pending: None,
            lateness: Lateness::default(),
        }
    }

    /// When a postponed keyframe request is due.
    pub(super) fn keyframe_due(&self) -> Option<Instant> {
        self.keyframe_pending?;
        self.last_keyframe_request
            .map(|t| t + KEYFRAME_MIN_INTERVAL)
    }

    /// Whether a subscriber can be switched to it: it is arriving, or it was seen before and
    /// is paused by us (resuming it is our call), or it was just resumed.
    pub(super) fn available(&self, now: Instant) -> bool {
        let Some(seen) = self.last_seen else {
            return false;
        };
        now.saturating_duration_since(seen) < LAYER_STALE
            || !self.active
            || self
                .resumed_at
                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_RESUME_GRACE)
    }

    /// Its bitrate for allocation: measured, or a guess from its place among `n` layers.
    pub(super) fn rate(&self, index: usize, n: usize, kind: MediaKind) -> u64 {
        if self.bitrate > 0 {
            return self.bitrate;
        }
        if kind == MediaKind::Audio {
            return 40_000;
        }
        1_200_000 / 3u64.pow((n - 1 - index).min(4) as u32)
    }
}
