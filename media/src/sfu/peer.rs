//! One participant's media connection (mediasoup's WebRtcTransport).

#[allow(unused_imports)]
use super::*;

/// One participant's media connection (mediasoup's WebRtcTransport with its producers and
/// consumers).
pub(super) struct Peer {
    /// The room's name (shared, so the data path takes it without an allocation).
    pub(super) room: std::sync::Arc<str>,
    pub(super) rtc: Rtc,
    pub(super) grants: Grants,
    pub(super) producers: Vec<Producer>,
    pub(super) consumers: Vec<Consumer>,
    /// `consumers` by (publisher, producer mid): the fan-out's lookup.
    pub(super) consumer_index: HashMap<(ParticipantId, Mid), usize>,
    /// Its send m-lines (see [`Slot`]).
    pub(super) slots: Vec<Slot>,
    /// Slots whose contents changed since the last [`PeerEvent::Slots`].
    pub(super) slots_changed: Vec<usize>,
    pub(super) pending: Option<SdpPendingOffer>,
    /// The SDP of `pending`, re-sent when the client resumes (it may have been lost).
    pub(super) pending_sdp: Option<String>,
    /// An ICE restart is wanted in the next server offer.
    pub(super) ice_restart: bool,
    /// Source addresses this peer's datagrams came from (for demultiplexing).
    pub(super) addrs: Vec<SocketAddr>,
    /// Local ICE ufrags it was given (one more per ICE restart), for demultiplexing.
    pub(super) ufrags: Vec<String>,
    /// The RTX SSRCs of its incoming and outgoing streams, learnt from the stats tick, to count
    /// retransmissions by a look at the (unencrypted) SSRC of each SRTP packet.
    pub(super) rtx_in: Vec<u32>,
    pub(super) rtx_out: Vec<u32>,
    pub(super) timer: PeerTimer,
    pub(super) dirty: bool,
    /// Something negotiation acts on changed (consumers, an answer, an ICE restart) since
    /// `negotiate_if_needed` last looked: otherwise it returns at once, with no walk over the
    /// consumers on each poll.
    pub(super) negotiate: bool,
    pub(super) connected: bool,
    pub(super) created: Instant,
    /// The last cumulative stats of each incoming stream, to turn them into counter deltas.
    /// (Per layer: a simulcast m-line reports one stats entry per rid.)
    pub(super) ingress_marks: HashMap<(Mid, Option<Rid>), StatsMark>,
    /// The same for each outgoing stream.
    pub(super) egress_marks: HashMap<(Mid, Option<Rid>), StatsMark>,
    /// Where each of its send m-lines comes from, as its offer said.
    pub(super) sources: HashMap<Mid, Source>,
    /// The downlink estimate (bits per second), from loss: `None` until loss was seen.
    pub(super) estimate: Option<u64>,
    /// `peer_bytes_tx` and time of the last peer stats, for the rate sent since.
    pub(super) last_tx: Option<(u64, Instant)>,
    /// The worst loss its receiver reports gave for a video stream since the last peer stats
    /// (used when there is no TWCC feedback).
    pub(super) rr_loss: Option<f32>,
    /// A cap on what it is sent (bits per second), set by [`Sfu::set_max_bitrate`].
    pub(super) max_bitrate: Option<u64>,
    /// No video layer goes up before this (see `allocate_all`).
    pub(super) upgrade_hold: Option<Instant>,
    /// The length of the last hold.
    pub(super) upgrade_backoff: Duration,
    /// When a layer last went up.
    pub(super) last_upgrade: Option<Instant>,
    /// Worst figures since the last quality evaluation.
    pub(super) quality_loss: f32,
    pub(super) quality_jitter: f64,
    pub(super) quality_rtt: f64,
    /// Packets received per incoming stream (mid, rid) at its last stats report: a stream that
    /// stopped (a paused simulcast layer) keeps reporting its last jitter, which must not count.
    pub(super) ingress_packets: Vec<((str0m::media::Mid, Option<str0m::media::Rid>), u64)>,
    /// Kinds whose tracks are not forwarded (a moderator muted them), see [`Sfu::set_paused`].
    pub(super) paused: Vec<TrackKind>,
    /// Set for a receive-only viewer (WHEP), whose slots are fixed by its offer.
    pub(super) viewer: Option<viewer::Viewer>,
}

impl Peer {
    /// Rebuilds `consumer_index` after `consumers` changed.
    pub(super) fn reindex(&mut self) {
        self.negotiate = true;
        self.consumer_index.clear();
        for (i, c) in self.consumers.iter().enumerate() {
            self.consumer_index.insert((c.publisher, c.producer_mid), i);
        }
    }

    /// Whether the producer on `mid` is of a paused kind.
    pub(super) fn is_paused(&self, mid: Mid) -> bool {
        !self.paused.is_empty()
            && self
                .producers
                .iter()
                .any(|p| p.mid == mid && self.paused.contains(&track_kind(p.kind)))
    }
}

/// Cumulative per-stream figures from str0m's last stats event.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct StatsMark {
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) nacks: u64,
    pub(super) plis: u64,
    pub(super) firs: u64,
    pub(super) lost: u64,
}
