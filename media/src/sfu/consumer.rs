//! One subscriber's copy of a producer (mediasoup's Consumer), its send slot and its
//! keyframe budget.

#[allow(unused_imports)]
use super::*;

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
    /// Added to the producer's RTP times so that they go on from what the slot carried before
    /// (`None` until the first frame is written).
    pub(super) ts_offset: Option<i64>,
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
            ts_offset: None,
        }
    }

    /// The RTP time to write a frame of the producer at `t` with, on its slot: the producer's
    /// own times, shifted once so that a reused slot's timestamps go on from the last frame the
    /// slot carried (as much later as the wall clock moved), never back.
    pub(super) fn out_time(&mut self, slot: &Slot, t: MediaTime, now: Instant) -> MediaTime {
        let offset = *self
            .ts_offset
            .get_or_insert_with(|| match slot.last_written {
                None => 0,
                Some((last, at)) => {
                    let hz = u64::from(t.frequency().get());
                    let last = last.rebase(t.frequency()).numer();
                    let ticks = (now.saturating_duration_since(at).as_micros() as u64 * hz
                        / 1_000_000)
                        .max(1);
                    (last + ticks) as i64 - t.numer() as i64
                }
            });
        let numer = (t.numer() as i64).saturating_add(offset).max(0) as u64;
        MediaTime::new(numer, t.frequency())
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
    /// RTP time and wall clock of the last frame written to it.
    pub(super) last_written: Option<(MediaTime, Instant)>,
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
