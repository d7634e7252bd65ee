//! One subscriber's copy of a producer (mediasoup's Consumer), its send slot and its
//! keyframe budget.

use super::rtp::SlotOut;
#[allow(unused_imports)]
use super::*;
use str0m::media::Pt;
use str0m::rtp::Ssrc;

/// One subscriber's copy of a producer (mediasoup's Consumer).
#[derive(Debug, Clone)]
pub(super) struct Consumer {
    pub(super) publisher: ParticipantId,
    pub(super) producer: TrackId,
    pub(super) producer_mid: Mid,
    pub(super) kind: MediaKind,
    pub(super) state: ConsumerState,
    /// The size the subscriber shows it at, in device pixels; `None` until it says.
    pub(super) size: Option<(u32, u32)>,
    /// The layer being forwarded (`Some(None)`: a producer without rids); `None` forwards
    /// nothing.
    pub(super) current: Option<Option<Rid>>,
    /// The layer chosen for it; `current` becomes this at the layer's next keyframe.
    pub(super) target: Option<Option<Rid>>,
    /// How many keyframes the subscriber may still ask for (see [`KeyframeBudget`]).
    pub(super) keyframes: KeyframeBudget,
    /// Camera, microphone or screen (the producer's).
    pub(super) source: Source,
    /// Its place in the subscriber's send slots, once it has one.
    pub(super) slot: Option<usize>,
    /// How its producer's packets map onto its slot, from the packet where it started or last
    /// switched layer (`None`: fixed by the next packet forwarded).
    pub(super) rewrite: Option<Rewrite>,
    /// The producer's payload type and the subscriber's for the same codec.
    pub(super) pt: Option<(Pt, Pt)>,
}

/// A subscriber's keyframe requests for one consumer. A decoder that works asks for a keyframe
/// now and then and is satisfied by it; one that can never decode (an end-to-end encrypted
/// room entered with a wrong passphrase, a broken client) asks again and again, and every
/// keyframe it gets costs the publisher and all the other subscribers bandwidth. Over
/// `KF_BURST` requests in `KF_WINDOW`, its requests are passed on at most once per backoff
/// (doubling from `KF_BACKOFF_MIN` to `KF_BACKOFF_MAX`); a quiet window ends the backoff. Other
/// subscribers' requests are not affected.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyframeBudget {
    pub(super) window_start: Option<Instant>,
    pub(super) count: u32,
    pub(super) backoff: Duration,
    pub(super) next_allowed: Option<Instant>,
}

pub(super) const KF_WINDOW: Duration = Duration::from_secs(10);
pub(super) const KF_BURST: u32 = 5;
pub(super) const KF_BACKOFF_MIN: Duration = Duration::from_secs(2);
pub(super) const KF_BACKOFF_MAX: Duration = Duration::from_secs(16);

impl KeyframeBudget {
    /// Whether a request arriving now is passed on.
    pub(super) fn allow(&mut self, now: Instant) -> bool {
        if self.next_allowed.is_some_and(|t| now < t) {
            return false;
        }
        match self.window_start {
            Some(t) if now.saturating_duration_since(t) < KF_WINDOW => self.count += 1,
            _ => {
                if self.count <= KF_BURST {
                    self.backoff = Duration::ZERO;
                }
                self.window_start = Some(now);
                self.count = 1;
            }
        }
        if self.count > KF_BURST {
            self.backoff = (self.backoff * 2).clamp(KF_BACKOFF_MIN, KF_BACKOFF_MAX);
            self.next_allowed = Some(now + self.backoff);
        }
        true
    }
}

impl Consumer {
    pub(super) fn new(publisher: ParticipantId, prod: &Producer) -> Self {
        Consumer {
            publisher,
            producer: prod.id,
            producer_mid: prod.mid,
            kind: prod.kind,
            state: ConsumerState::ToOpen,
            size: None,
            current: None,
            target: None,
            keyframes: KeyframeBudget::default(),
            source: prod.source,
            slot: None,
            rewrite: None,
            pt: None,
        }
    }
}

/// One send m-line of a subscriber's connection. A subscriber's slots are a pool: a consumer
/// takes a free slot of its kind, and a departed producer's slot is freed for the next one,
/// so the SDP grows only with the most tracks sent at once, not with the meeting's history.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) mid: Mid,
    pub(super) kind: MediaKind,
    /// Answered by the client: media may be written to it.
    pub(super) open: bool,
    /// The consumer it carries: (publisher, producer mid).
    pub(super) consumer: Option<(ParticipantId, Mid)>,
    /// What it sent last (see [`SlotOut`]).
    pub(super) out: SlotOut,
    /// Its send stream's SSRC, once looked up.
    pub(super) ssrc: Option<Ssrc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConsumerState {
    /// Waiting for a slot: a free one, or a new m-line in the next offer.
    ToOpen,
    /// On a new m-line in an offer that is waiting for its answer.
    Negotiating(Mid),
    /// On a negotiated slot: media is written to it.
    Open(Mid),
}

impl ConsumerState {
    pub(super) fn mid(self) -> Option<Mid> {
        match self {
            ConsumerState::ToOpen => None,
            ConsumerState::Negotiating(m) | ConsumerState::Open(m) => Some(m),
        }
    }
}
