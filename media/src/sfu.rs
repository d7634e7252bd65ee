//! The sans-IO core of one media worker.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::bwe::BweKind;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{
    Direction, KeyframeRequest, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Rid,
    Rids,
};
use str0m::net::{Protocol, Receive};
use str0m::stats::{MediaEgressStats, MediaIngressStats};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc};

use crate::layers::{allocate, layer_for_size, vp8_keyframe_size, Quality, Source, Want};
use crate::metrics::MediaMetrics;
use crate::speakers::{Speaker, SpeakerDetector};
use crate::{MediaError, ParticipantId, TrackId};

mod allocation;
mod negotiation;
mod timers;

use timers::{PeerTimer, Timers};

/// A publisher is asked for a keyframe at most this often per track, however many subscribers
/// ask (new consumers, PLI/FIR from subscribers, gaps in the incoming stream).
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// How often every subscriber's layers are chosen again (also right after a tile size change or
/// a new track).
pub const ALLOCATION_INTERVAL: Duration = Duration::from_secs(1);

/// How far each second of loss-free delivery raises a subscriber's downlink estimate.
const ESTIMATE_GROWTH: f64 = 1.08;
/// Loss above this lowers the estimate (to what arrived, less half the loss); below
/// `LOSS_LOW` it grows. In between it holds (GCC's loss-based controller, RFC 8698 style).
const LOSS_HIGH: f32 = 0.10;
const LOSS_LOW: f32 = 0.02;
/// The estimate never falls below this (audio and the lowest layer of one video).
const ESTIMATE_FLOOR: u64 = 100_000;

/// How often each room's connection qualities are evaluated; a [`PeerEvent::Quality`] follows
/// when one changed, or [`QUALITY_REPEAT`] after the last one.
const QUALITY_INTERVAL: Duration = Duration::from_secs(5);
const QUALITY_REPEAT: Duration = Duration::from_secs(20);

/// A layer not seen for this long, while the publisher should be sending it, is unavailable.
const LAYER_STALE: Duration = Duration::from_secs(2);
/// A layer the publisher was just asked to resume counts as available for this long.
const LAYER_RESUME_GRACE: Duration = Duration::from_secs(3);

/// How long a connection may stay without completing ICE and DTLS before it is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection's timeout due within this much of now is fed at once (see `Sfu::drive`).
const PACER_SLACK: Duration = Duration::from_micros(500);
/// At most this many timeouts fed at once per connection and drive: its share of the loop.
const MAX_SPINS: u32 = 512;

/// Settings of one [`Sfu`].
#[derive(Clone, Debug)]
pub struct SfuConfig {
    /// The addresses put in the SDP as this worker's host candidates (its socket address, or the
    /// configured public IP with the socket's port).
    pub candidates: Vec<SocketAddr>,
    /// The socket's own address (the `destination` of every datagram it receives).
    pub local_addr: SocketAddr,
    /// Worker number, folded into [`TrackId`]s so they are unique on the node.
    pub worker_index: u16,
    /// Tracks one participant may publish; further ones are not forwarded and the participant
    /// gets a [`PeerEvent::Error`] with code `too_many_tracks`.
    pub max_tracks_per_participant: usize,
}

/// What a participant may do with media, from its access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grants {
    /// May publish tracks.
    pub publish: bool,
    /// May receive other participants' tracks.
    pub subscribe: bool,
}

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrackKind {
    /// An audio track (Opus).
    Audio,
    /// A video track (VP8 or H.264).
    Video,
}

impl TrackKind {
    /// `"audio"` or `"video"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        }
    }
}

impl From<MediaKind> for TrackKind {
    fn from(k: MediaKind) -> Self {
        match k {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        }
    }
}

/// Why a participant's media connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// ICE lost the peer (no connectivity checks for too long).
    IceDisconnected,
    /// ICE and DTLS did not complete in time.
    ConnectTimeout,
    /// The connection failed (a DTLS or SRTP error).
    Failed,
}

/// An event for one participant's signaling session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// The answer to the client's offer.
    Answer {
        /// SDP text.
        sdp: String,
    },
    /// A server offer the client must answer (tracks added or stopped).
    Offer {
        /// SDP text.
        sdp: String,
    },
    /// ICE and DTLS completed: media can flow.
    Connected,
    /// The participant started publishing a track.
    TrackPublished {
        /// The producer's id.
        track_id: TrackId,
        /// Audio or video.
        kind: TrackKind,
        /// Camera, microphone or screen (from the client's offer; by kind otherwise).
        source: Source,
    },
    /// What some of this participant's receiving m-lines (slots) carry now. Sent before the
    /// offer that adds slots, and whenever a slot is freed by a departed producer or given to a
    /// new one without an offer. A slot's `a=msid` names only the first track it carried.
    Slots {
        /// The slots that changed.
        slots: Vec<SlotInfo>,
    },
    /// Dynacast: the simulcast layers (rids) of this participant's track that someone watches.
    /// The client keeps those encodings active and pauses the others.
    Layers {
        /// The participant's own track.
        track_id: TrackId,
        /// The rids to keep sending.
        active: Vec<String>,
    },
    /// The room's active speakers changed (sent to every member).
    Speakers {
        /// Loudest first; empty when nobody speaks.
        speakers: Vec<Speaker>,
    },
    /// The room's connection qualities (sent to every member).
    Quality {
        /// Each connected member's quality.
        participants: Vec<(ParticipantId, Quality)>,
    },
    /// A command for this participant failed; the session reports it to the client.
    Error {
        /// Short machine-readable kind: `invalid_offer` (the first offer was refused, no connection
        /// exists), `invalid_sdp`, `invalid_candidate`, `internal`.
        code: &'static str,
        /// Human-readable text.
        message: String,
    },
    /// The media connection ended; the participant is gone from the worker.
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// One receiving m-line of a participant and what it carries (see [`PeerEvent::Slots`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The m-line's mid.
    pub mid: String,
    /// Audio or video.
    pub kind: TrackKind,
    /// The track on it; `None`: free (its last producer left).
    pub track: Option<SlotTrack>,
}

/// A track carried by a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotTrack {
    /// The publisher.
    pub participant: ParticipantId,
    /// The producer's id.
    pub track_id: TrackId,
    /// Camera, microphone or screen.
    pub source: Source,
}

/// What the core wants its driver to do.
#[derive(Debug)]
pub enum Output {
    /// Send this datagram.
    Transmit {
        /// Where to.
        destination: SocketAddr,
        /// The bytes.
        contents: Vec<u8>,
    },
    /// Deliver this event to that participant's session.
    Event(ParticipantId, PeerEvent),
}

/// A room's media: who is in it and which tracks they publish (mediasoup's Router).
#[derive(Debug)]
pub struct Router {
    members: Vec<ParticipantId>,
    speakers: SpeakerDetector,
    next_quality: Instant,
    last_quality: Vec<(ParticipantId, Quality)>,
    last_quality_sent: Option<Instant>,
}

impl Router {
    fn new(now: Instant) -> Self {
        Router {
            members: Vec::new(),
            speakers: SpeakerDetector::new(now),
            next_quality: now + QUALITY_INTERVAL,
            last_quality: Vec::new(),
            last_quality_sent: None,
        }
    }

    /// The participants whose media connections are in this room.
    pub fn members(&self) -> &[ParticipantId] {
        &self.members
    }
}

/// An incoming track (mediasoup's Producer).
#[derive(Debug)]
struct Producer {
    id: TrackId,
    mid: Mid,
    kind: MediaKind,
    source: Source,
    /// The encodings it sends, lowest first: one per simulcast rid, or a single one without rid.
    layers: Vec<Layer>,
}

impl Producer {
    fn simulcast(&self) -> bool {
        self.layers.iter().any(|l| l.rid.is_some())
    }

    /// The layer for `rid`, added when the publisher sends one its SDP did not list.
    fn layer_mut(&mut self, rid: Option<Rid>) -> &mut Layer {
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
struct Layer {
    rid: Option<Rid>,
    /// Frame size from its last VP8 keyframe; `(0, 0)` unknown.
    size: (u32, u32),
    /// Bits per second over the last full measuring window; 0 before one.
    bitrate: u64,
    window_bytes: u64,
    window_start: Option<Instant>,
    last_seen: Option<Instant>,
    /// Whether the publisher was last told to send it (dynacast). Every layer starts active.
    active: bool,
    resumed_at: Option<Instant>,
    last_keyframe_request: Option<Instant>,
    /// A request that came inside [`KEYFRAME_MIN_INTERVAL`] of the last one: sent when the
    /// interval ends rather than dropped, so a second subscriber is not left waiting for the
    /// publisher's next periodic keyframe.
    keyframe_pending: Option<KeyframeRequestKind>,
}

impl Layer {
    fn new(rid: Option<Rid>) -> Self {
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
        }
    }

    /// When a postponed keyframe request is due.
    fn keyframe_due(&self) -> Option<Instant> {
        self.keyframe_pending?;
        self.last_keyframe_request
            .map(|t| t + KEYFRAME_MIN_INTERVAL)
    }

    /// Whether a subscriber can be switched to it: it is arriving, or it was seen before and
    /// is paused by us (resuming it is our call), or it was just resumed.
    fn available(&self, now: Instant) -> bool {
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
    fn rate(&self, index: usize, n: usize, kind: MediaKind) -> u64 {
        if self.bitrate > 0 {
            return self.bitrate;
        }
        if kind == MediaKind::Audio {
            return 40_000;
        }
        1_200_000 / 3u64.pow((n - 1 - index).min(4) as u32)
    }
}

/// One subscriber's copy of a producer (mediasoup's Consumer).
#[derive(Debug, Clone)]
struct Consumer {
    publisher: ParticipantId,
    producer: TrackId,
    producer_mid: Mid,
    kind: MediaKind,
    state: ConsumerState,
    /// The size the subscriber shows it at, in device pixels; `None` until it says.
    size: Option<(u32, u32)>,
    /// The layer being forwarded (`Some(None)`: a producer without rids); `None` forwards
    /// nothing.
    current: Option<Option<Rid>>,
    /// The layer chosen for it; `current` becomes this at the layer's next keyframe.
    target: Option<Option<Rid>>,
    /// How many keyframes the subscriber may still ask for (see [`KeyframeBudget`]).
    keyframes: KeyframeBudget,
    /// Camera, microphone or screen (the producer's).
    source: Source,
    /// Its place in the subscriber's send slots, once it has one.
    slot: Option<usize>,
    /// Added to the producer's RTP times so that they go on from what the slot carried before
    /// (`None` until the first frame is written).
    ts_offset: Option<i64>,
}

/// A subscriber's keyframe requests for one consumer. A decoder that works asks for a keyframe
/// now and then and is satisfied by it; one that can never decode (an end-to-end encrypted
/// room entered with a wrong passphrase, a broken client) asks again and again, and every
/// keyframe it gets costs the publisher and all the other subscribers bandwidth. Over
/// `KF_BURST` requests in `KF_WINDOW`, its requests are passed on at most once per backoff
/// (doubling from `KF_BACKOFF_MIN` to `KF_BACKOFF_MAX`); a quiet window ends the backoff. Other
/// subscribers' requests are not affected.
#[derive(Debug, Clone, Default)]
struct KeyframeBudget {
    window_start: Option<Instant>,
    count: u32,
    backoff: Duration,
    next_allowed: Option<Instant>,
}

const KF_WINDOW: Duration = Duration::from_secs(10);
const KF_BURST: u32 = 5;
const KF_BACKOFF_MIN: Duration = Duration::from_secs(2);
const KF_BACKOFF_MAX: Duration = Duration::from_secs(16);

impl KeyframeBudget {
    /// Whether a request arriving now is passed on.
    fn allow(&mut self, now: Instant) -> bool {
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
    fn new(publisher: ParticipantId, prod: &Producer) -> Self {
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
    fn out_time(&mut self, slot: &Slot, t: MediaTime, now: Instant) -> MediaTime {
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
struct Slot {
    mid: Mid,
    kind: MediaKind,
    /// Answered by the client: media may be written to it.
    open: bool,
    /// The consumer it carries: (publisher, producer mid).
    consumer: Option<(ParticipantId, Mid)>,
    /// RTP time and wall clock of the last frame written to it.
    last_written: Option<(MediaTime, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsumerState {
    /// Waiting for a slot: a free one, or a new m-line in the next offer.
    ToOpen,
    /// On a new m-line in an offer that is waiting for its answer.
    Negotiating(Mid),
    /// On a negotiated slot: media is written to it.
    Open(Mid),
}

impl ConsumerState {
    fn mid(self) -> Option<Mid> {
        match self {
            ConsumerState::ToOpen => None,
            ConsumerState::Negotiating(m) | ConsumerState::Open(m) => Some(m),
        }
    }
}

/// One participant's media connection (mediasoup's WebRtcTransport with its producers and
/// consumers).
struct Peer {
    room: String,
    rtc: Rtc,
    grants: Grants,
    producers: Vec<Producer>,
    consumers: Vec<Consumer>,
    /// `consumers` by (publisher, producer mid): the fan-out's lookup.
    consumer_index: HashMap<(ParticipantId, Mid), usize>,
    /// Its send m-lines (see [`Slot`]).
    slots: Vec<Slot>,
    /// Slots whose contents changed since the last [`PeerEvent::Slots`].
    slots_changed: Vec<usize>,
    pending: Option<SdpPendingOffer>,
    /// The SDP of `pending`, re-sent when the client resumes (it may have been lost).
    pending_sdp: Option<String>,
    /// An ICE restart is wanted in the next server offer.
    ice_restart: bool,
    /// Source addresses this peer's datagrams came from (for demultiplexing).
    addrs: Vec<SocketAddr>,
    /// The RTX SSRCs of its incoming and outgoing streams, learnt from the stats tick, to count
    /// retransmissions by a look at the (unencrypted) SSRC of each SRTP packet.
    rtx_in: Vec<u32>,
    rtx_out: Vec<u32>,
    timer: PeerTimer,
    dirty: bool,
    connected: bool,
    created: Instant,
    /// The last cumulative stats of each incoming stream, to turn them into counter deltas.
    /// (Per layer: a simulcast m-line reports one stats entry per rid.)
    ingress_marks: HashMap<(Mid, Option<Rid>), StatsMark>,
    /// The same for each outgoing stream.
    egress_marks: HashMap<(Mid, Option<Rid>), StatsMark>,
    /// Where each of its send m-lines comes from, as its offer said.
    sources: HashMap<Mid, Source>,
    /// The downlink estimate (bits per second), from loss: `None` until loss was seen.
    estimate: Option<u64>,
    /// `peer_bytes_tx` and time of the last peer stats, for the rate sent since.
    last_tx: Option<(u64, Instant)>,
    /// The worst loss its receiver reports gave for a video stream since the last peer stats
    /// (used when there is no TWCC feedback).
    rr_loss: Option<f32>,
    /// A cap on what it is sent (bits per second), set by [`Sfu::set_max_bitrate`].
    max_bitrate: Option<u64>,
    /// The last (minimum, desired) handed to str0m's estimator.
    bwe_target: (u64, u64),
    /// No video layer goes up before this (see `allocate_all`).
    upgrade_hold: Option<Instant>,
    /// The length of the last hold.
    upgrade_backoff: Duration,
    /// When a layer last went up.
    last_upgrade: Option<Instant>,
    /// Worst figures since the last quality evaluation.
    quality_loss: f32,
    quality_jitter: f64,
    quality_rtt: f64,
    /// Kinds whose tracks are not forwarded (a moderator muted them), see [`Sfu::set_paused`].
    paused: Vec<TrackKind>,
}

impl Peer {
    /// Rebuilds `consumer_index` after `consumers` changed.
    fn reindex(&mut self) {
        self.consumer_index.clear();
        for (i, c) in self.consumers.iter().enumerate() {
            self.consumer_index.insert((c.publisher, c.producer_mid), i);
        }
    }

    /// Whether the producer on `mid` is of a paused kind.
    fn is_paused(&self, mid: Mid) -> bool {
        !self.paused.is_empty()
            && self
                .producers
                .iter()
                .any(|p| p.mid == mid && self.paused.contains(&TrackKind::from(p.kind)))
    }
}

/// Cumulative per-stream figures from str0m's last stats event.
#[derive(Debug, Default, Clone, Copy)]
struct StatsMark {
    packets: u64,
    bytes: u64,
    nacks: u64,
    plis: u64,
    firs: u64,
    lost: u64,
}

/// The sans-IO core of one media worker: every participant connection of the rooms pinned to it.
///
/// Drive it with [`Sfu::handle_receive`], [`Sfu::handle_timeout`] and the command methods, then
/// drain [`Sfu::poll_output`] and sleep until [`Sfu::poll_timeout`].
pub struct Sfu {
    config: SfuConfig,
    peers: HashMap<ParticipantId, Peer>,
    routers: HashMap<String, Router>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    dirty: Vec<ParticipantId>,
    out: VecDeque<Output>,
    next_track: u64,
    /// Datagrams that no participant accepted.
    pub unrouted_datagrams: u64,
    /// Published tracks refused over `max_tracks_per_participant`.
    pub refused_tracks: u64,
    metrics: MediaMetrics,
    /// Whether layers are chosen within str0m's downlink estimate (default). Off, only the tile
    /// sizes and [`Sfu::set_max_bitrate`] caps count: an ideal link, for tests on virtual time
    /// whose zero-delay network the estimator does not model, for browser tests of the tile
    /// logic on a loaded machine, and for LANs where every link is fast (`media.bandwidth_estimate`).
    pub use_bandwidth_estimate: bool,
    next_allocation: Option<Instant>,
    /// Layers must be chosen again before the next output.
    realloc: bool,
    /// Debug capture of published frames (`media.capture_path`).
    capture: Option<crate::capture::FrameCapture>,
    /// Every connection's next timeout.
    timers: Timers,
    /// Scratch list of connections whose timeout is due.
    due: Vec<ParticipantId>,
    /// The earliest postponed keyframe request (see [`Layer::keyframe_pending`]).
    postponed_keyframes: Option<Instant>,
}

impl Sfu {
    /// Records every published frame into `capture` from now on (a debugging aid, see
    /// [`crate::capture`]).
    pub fn set_capture(&mut self, capture: crate::capture::FrameCapture) {
        self.capture = Some(capture);
    }

    /// A worker core with no participants, counting into metrics of its own.
    pub fn new(config: SfuConfig) -> Self {
        Self::with_metrics(config, MediaMetrics::new())
    }

    /// A worker core with no participants that counts into `metrics` (shared by the workers
    /// of a node).
    pub fn with_metrics(config: SfuConfig, metrics: MediaMetrics) -> Self {
        Sfu {
            config,
            peers: HashMap::new(),
            routers: HashMap::new(),
            by_addr: HashMap::new(),
            dirty: Vec::new(),
            out: VecDeque::new(),
            next_track: 1,
            unrouted_datagrams: 0,
            refused_tracks: 0,
            metrics,
            use_bandwidth_estimate: true,
            next_allocation: None,
            realloc: false,
            capture: None,
            timers: Timers::default(),
            due: Vec::new(),
            postponed_keyframes: None,
        }
    }

    /// The rooms on this worker.
    pub fn routers(&self) -> &HashMap<String, Router> {
        &self.routers
    }

    /// The metrics this core counts into.
    pub fn metrics(&self) -> &MediaMetrics {
        &self.metrics
    }

    /// Number of participant connections.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The client's first offer: creates its connection in `room` and queues the answer as a
    /// [`PeerEvent::Answer`]. Consumers for every track already published in the room are added
    /// and offered right after.
    pub fn offer(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        room: &str,
        grants: Grants,
        sdp: &str,
    ) -> Result<(), MediaError> {
        self.offer_with_sources(now, participant, room, grants, sdp, &[])
    }

    /// [`Sfu::offer`], with the source of each send m-line (by mid) as the client declared it;
    /// unlisted ones are a camera or a microphone by kind.
    pub fn offer_with_sources(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        room: &str,
        grants: Grants,
        sdp: &str,
        sources: &[(String, Source)],
    ) -> Result<(), MediaError> {
        if self.peers.contains_key(&participant) {
            return Err(MediaError::AlreadyConnected);
        }
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| MediaError::SdpParse(e.to_string()))?;
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .enable_h264(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            // No send-side estimator: str0m paces by it, one packet per timeout with a scan of
            // every stream each time (the cost of a packet grew with the meeting). The downlink
            // is judged by loss instead (see `LossEstimate`), and packets go out as they come.
            .enable_bwe(None)
            .build(now);
        for addr in &self.config.candidates {
            let candidate = Candidate::host(*addr, "udp")
                .map_err(|e| MediaError::SdpApply(format!("host candidate {addr}: {e}")))?;
            rtc.add_local_candidate(candidate);
        }
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| MediaError::SdpApply(e.to_string()))?;

        // Everything already published in the room becomes a consumer of the newcomer.
        let router = self
            .routers
            .entry(room.to_string())
            .or_insert_with(|| Router::new(now));
        let mut consumers = Vec::new();
        if grants.subscribe {
            for other in &router.members {
                if let Some(p) = self.peers.get(other) {
                    consumers.extend(p.producers.iter().map(|prod| Consumer::new(*other, prod)));
                }
            }
        }
        router.members.push(participant);
        self.metrics.connections.inc();
        self.metrics.subscriptions.add(consumers.len() as i64);
        self.metrics
            .subscriptions_total
            .inc_by(consumers.len() as u64);
        self.peers.insert(
            participant,
            Peer {
                room: room.to_string(),
                rtc,
                grants,
                producers: Vec::new(),
                consumers,
                consumer_index: HashMap::new(),
                slots: Vec::new(),
                slots_changed: Vec::new(),
                pending: None,
                pending_sdp: None,
                ice_restart: false,
                addrs: Vec::new(),
                rtx_in: Vec::new(),
                rtx_out: Vec::new(),
                timer: PeerTimer::new(now),
                dirty: false,
                connected: false,
                created: now,
                ingress_marks: HashMap::new(),
                egress_marks: HashMap::new(),
                sources: sources
                    .iter()
                    .map(|(mid, s)| (Mid::from(mid.as_str()), *s))
                    .collect(),
                estimate: None,
                last_tx: None,
                rr_loss: None,
                max_bitrate: None,
                bwe_target: (0, 0),
                upgrade_hold: None,
                upgrade_backoff: Duration::ZERO,
                last_upgrade: None,
                quality_loss: 0.0,
                quality_jitter: 0.0,
                quality_rtt: 0.0,
                paused: Vec::new(),
            },
        );
        if let Some(p) = self.peers.get_mut(&participant) {
            p.reindex();
        }
        self.out.push_back(Output::Event(
            participant,
            PeerEvent::Answer {
                sdp: answer.to_sdp_string(),
            },
        ));
        self.mark_dirty(participant);
        self.drive(now);
        Ok(())
    }

    /// The client's answer to our last [`PeerEvent::Offer`].
    pub fn answer(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        sdp: &str,
    ) -> Result<(), MediaError> {
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant(participant))?;
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| MediaError::SdpParse(e.to_string()))?;
        let pending = peer.pending.take().ok_or(MediaError::NoPendingOffer)?;
        peer.pending_sdp = None;
        peer.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| MediaError::SdpApply(e.to_string()))?;
        for c in &mut peer.consumers {
            if let ConsumerState::Negotiating(m) = c.state {
                c.state = ConsumerState::Open(m);
                if c.kind == MediaKind::Video {
                    // Its layer is chosen (and a keyframe of it asked for) right below.
                    self.realloc = true;
                }
            }
        }
        // Every slot was in that offer; the ones whose producer left meanwhile are now free
        // (and taken by waiting consumers in `negotiate_if_needed`).
        for slot in &mut peer.slots {
            if !slot.open {
                slot.open = true;
                // Forwarded as it arrives, like Janus and mediasoup: the publisher paced it
                // already, and str0m's pacer (at 1.1x its estimate, one packet per timeout)
                // would queue what the allocation lets through and release it in bursts.
                // The estimate still keeps the chosen layers within the downlink.
                if let Some(tx) = peer.rtc.direct_api().stream_tx_by_mid(slot.mid, None) {
                    // (No effect without str0m's estimator, which paces; kept for when it is on.)
                    tx.set_unpaced(true);
                }
            }
        }
        self.mark_dirty(participant);
        self.drive(now);
        Ok(())
    }

    /// A trickled ICE candidate from the client (`candidate:…` line). Empty means end of
    /// candidates and is accepted as a no-op.
    pub fn add_candidate(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        candidate: &str,
    ) -> Result<(), MediaError> {
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant(participant))?;
        let line = candidate.trim();
        if line.is_empty() {
            return Ok(());
        }
        let line = line.strip_prefix("a=").unwrap_or(line);
        // Browsers hide host addresses behind mDNS names (`….local`) that this server cannot
        // resolve; such a candidate is valid but useless, and ICE finds the peer anyway
        // (peer-reflexive), so it is ignored, not refused.
        if line
            .split_whitespace()
            .nth(4)
            .is_some_and(|addr| addr.ends_with(".local"))
        {
            return Ok(());
        }
        let c = Candidate::from_sdp_string(line).map_err(|_| MediaError::BadCandidate)?;
        // As ICE-lite the server never sends to a candidate before a check arrived from it, so
        // a candidate cannot aim traffic anywhere. One this socket cannot reach (a non-loopback
        // address while bound to loopback) is dropped rather than kept in the agent.
        if self.config.local_addr.ip().is_loopback() && !c.addr().ip().is_loopback() {
            return Ok(());
        }
        peer.rtc.add_remote_candidate(c);
        self.mark_dirty(participant);
        self.drive(now);
        Ok(())
    }

    /// Stops (`paused`) or resumes forwarding a participant's tracks of one kind, present and
    /// future ones (a moderator's mute; the participant's own unmute resumes). Resuming video
    /// asks the publisher for a keyframe. Unknown participants are ignored.
    pub fn set_paused(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        kind: TrackKind,
        paused: bool,
    ) {
        let Some(peer) = self.peers.get_mut(&participant) else {
            return;
        };
        let was = peer.paused.contains(&kind);
        peer.paused.retain(|k| *k != kind);
        if paused {
            peer.paused.push(kind);
        } else if was && kind == TrackKind::Video {
            let mids: Vec<Mid> = peer
                .producers
                .iter()
                .filter(|p| TrackKind::from(p.kind) == kind)
                .map(|p| p.mid)
                .collect();
            for mid in mids {
                self.request_keyframe(now, participant, mid, None, KeyframeRequestKind::Pli);
            }
        }
        self.drive(now);
    }

    /// Removes a participant's connection; its tracks are stopped for every subscriber.
    /// Unknown participants are ignored (the connection may already have closed itself).
    pub fn remove(&mut self, now: Instant, participant: ParticipantId) {
        if self.remove_peer(participant) {
            self.metrics.connection_closed(None);
        }
        self.drive(now);
    }

    /// A datagram arrived on the worker's socket.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else {
            self.unrouted_datagrams += 1;
            self.metrics.unrouted.inc();
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                // The address the peer sent to: the advertised candidate (equal to the socket's
                // address unless a public IP is mapped onto it), which ICE matches the request
                // against.
                destination: self
                    .config
                    .candidates
                    .first()
                    .copied()
                    .unwrap_or(self.config.local_addr),
                contents,
            },
        );
        let pid = match self.by_addr.get(&source) {
            Some(pid) if self.peers.get(pid).is_some_and(|p| p.rtc.accepts(&input)) => *pid,
            _ => {
                // A new source: find the connection whose ICE credentials it carries.
                let Some((pid, peer)) = self.peers.iter_mut().find(|(_, p)| p.rtc.accepts(&input))
                else {
                    self.unrouted_datagrams += 1;
                    self.metrics.unrouted.inc();
                    return;
                };
                peer.addrs.push(source);
                self.by_addr.insert(source, *pid);
                *pid
            }
        };
        if let Some(peer) = self.peers.get_mut(&pid) {
            if !peer.rtx_in.is_empty() && is_rtx(data, &peer.rtx_in) {
                self.metrics.retransmissions.r#in.inc();
            }
            if let Err(e) = peer.rtc.handle_input(input) {
                tracing::debug!(participant = %pid, error = %e, "input refused");
            }
        }
        self.mark_dirty(pid);
        self.drive(now);
    }

    /// Time has passed: call when [`Sfu::poll_timeout`] is reached (calling more often is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = std::mem::take(&mut self.due);
        self.timers.pop_due(now, &mut self.peers, &mut due);
        for pid in due.drain(..) {
            let mut timed_out = false;
            if let Some(peer) = self.peers.get_mut(&pid) {
                if !peer.connected && now.duration_since(peer.created) > CONNECT_TIMEOUT {
                    timed_out = true;
                } else if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(participant = %pid, error = %e, "timeout handling failed");
                }
            }
            if timed_out {
                self.close(pid, CloseReason::ConnectTimeout);
            } else {
                self.mark_dirty(pid);
            }
        }
        self.due = due;
        self.send_postponed_keyframe_requests(now);
        self.room_ticks(now);
        self.drive(now);
    }

    /// Sends the keyframe requests that were held back by [`KEYFRAME_MIN_INTERVAL`] and are due.
    fn send_postponed_keyframe_requests(&mut self, now: Instant) {
        if self.postponed_keyframes.is_none_or(|t| t > now) {
            return;
        }
        self.postponed_keyframes = None;
        let mut due = Vec::new();
        for (pid, peer) in &self.peers {
            for producer in &peer.producers {
                for layer in &producer.layers {
                    if let (Some(kind), Some(at)) = (layer.keyframe_pending, layer.keyframe_due()) {
                        if at <= now {
                            due.push((*pid, producer.mid, layer.rid, kind));
                        } else {
                            self.postponed_keyframes =
                                Some(self.postponed_keyframes.map_or(at, |t| t.min(at)));
                        }
                    }
                }
            }
        }
        for (pid, mid, rid, kind) in due {
            self.request_keyframe(now, pid, mid, rid, kind);
        }
    }

    /// The earliest time the core needs [`Sfu::handle_timeout`], if it has any connection.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let peers = self.timers.next()?;
        let rooms = self
            .routers
            .values()
            .map(|r| r.speakers.next_tick().min(r.next_quality))
            .min();
        Some(
            [
                Some(peers),
                rooms,
                self.next_allocation,
                self.postponed_keyframes,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(peers),
        )
    }

    /// The next thing to do: a datagram to send or an event for signaling.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn mark_dirty(&mut self, pid: ParticipantId) {
        if let Some(p) = self.peers.get_mut(&pid) {
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(pid);
            }
        }
    }

    /// Polls every connection that had input until all are waiting for time or datagrams.
    fn drive(&mut self, now: Instant) {
        if self.realloc {
            self.allocate_all(now);
        }
        while let Some(pid) = self.dirty.pop() {
            let Some(peer) = self.peers.get_mut(&pid) else {
                continue;
            };
            peer.dirty = false;
            self.negotiate_if_needed(pid);
            let mut spins = 0;
            while let Some(peer) = self.peers.get_mut(&pid) {
                if !peer.rtc.is_alive() {
                    self.close(pid, CloseReason::Failed);
                    break;
                }
                let event = match peer.rtc.poll_output() {
                    Ok(str0m::Output::Timeout(t)) => {
                        // str0m's pacer releases one packet per timeout and asks for the next
                        // one a microsecond later. Fed through the driver's millisecond timer,
                        // that caps every connection at ~1,000 packets/s and queues the rest;
                        // so a timeout due within PACER_SLACK is fed here and now, at the time
                        // str0m asked for (never behind its clock, at most PACER_SLACK ahead
                        // of ours).
                        if t <= now + PACER_SLACK && spins < MAX_SPINS {
                            spins += 1;
                            if let Err(e) = peer.rtc.handle_input(Input::Timeout(t.max(now))) {
                                tracing::debug!(participant = %pid, error = %e, "timeout handling failed");
                            }
                            continue;
                        }
                        self.timers.schedule(pid, &mut peer.timer, t);
                        break;
                    }
                    Ok(str0m::Output::Transmit(t)) => {
                        if !peer.rtx_out.is_empty() && is_rtx(&t.contents, &peer.rtx_out) {
                            self.metrics.retransmissions.out.inc();
                        }
                        self.out.push_back(Output::Transmit {
                            destination: t.destination,
                            contents: t.contents.into(),
                        });
                        continue;
                    }
                    Ok(str0m::Output::Event(e)) => e,
                    Err(e) => {
                        tracing::info!(participant = %pid, error = %e, "connection failed");
                        self.close(pid, CloseReason::Failed);
                        break;
                    }
                };
                self.handle_event(now, pid, event);
            }
        }
    }

    fn handle_event(&mut self, now: Instant, pid: ParticipantId, event: Event) {
        match event {
            Event::Connected => {
                if let Some(p) = self.peers.get_mut(&pid) {
                    p.connected = true;
                }
                self.out.push_back(Output::Event(pid, PeerEvent::Connected));
            }
            // Before the first connection ICE may pass through "disconnected" (no pair possible
            // yet: candidates still trickling in) and recover when a check arrives;
            // CONNECT_TIMEOUT ends a connection that never comes up.
            Event::IceConnectionStateChange(IceConnectionState::Disconnected)
                if self.peers.get(&pid).is_some_and(|p| p.connected) =>
            {
                self.close(pid, CloseReason::IceDisconnected);
            }
            Event::MediaAdded(added) => {
                // The server's own send-only m-lines raise MediaAdded too: only receiving ones
                // are the participant's tracks.
                if matches!(added.direction, Direction::RecvOnly | Direction::SendRecv) {
                    self.add_producer(pid, added.mid, added.kind);
                }
            }
            Event::MediaData(data) => self.forward(now, pid, data),
            Event::KeyframeRequest(req) => self.keyframe_from_subscriber(now, pid, req),
            Event::MediaIngressStats(s) => {
                self.note_jitter(pid, &s);
                self.ingress_stats(pid, &s);
            }
            Event::PeerStats(s) => self.note_peer_stats(now, pid, &s),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if let Some(p) = self.peers.get_mut(&pid) {
                    let new = estimate.as_u64();
                    tracing::debug!(participant = %pid, estimate = new, "downlink estimate");
                    // A sharp drop is acted on at once; the rest waits for the next round.
                    if p.estimate.is_some_and(|old| new < old / 10 * 8) {
                        self.realloc = true;
                    }
                    p.estimate = Some(new);
                }
            }
            Event::MediaEgressStats(s) => self.egress_stats(pid, &s),
            _ => {}
        }
    }

    fn add_producer(&mut self, pid: ParticipantId, mid: Mid, kind: MediaKind) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if !peer.grants.publish || peer.producers.iter().any(|p| p.mid == mid) {
            return;
        }
        if peer.producers.len() >= self.config.max_tracks_per_participant {
            self.refused_tracks += 1;
            self.out.push_back(Output::Event(
                pid,
                PeerEvent::Error {
                    code: "too_many_tracks",
                    message: format!(
                        "at most {} published tracks: track {mid} is not forwarded",
                        self.config.max_tracks_per_participant
                    ),
                },
            ));
            return;
        }
        let id = TrackId((u64::from(self.config.worker_index) << 48) | self.next_track);
        self.next_track += 1;
        self.metrics.tracks.inc();
        self.metrics.tracks_total.inc();
        let source = peer.sources.get(&mid).copied().unwrap_or(match kind {
            MediaKind::Audio => Source::Microphone,
            MediaKind::Video => Source::Camera,
        });
        // Simulcast: one layer per rid the offer declared, in its order (lowest first).
        let layers = match peer.rtc.media(mid).map(|m| m.rids_rx()) {
            Some(Rids::Specific(rids)) if source != Source::Screen && !rids.is_empty() => {
                rids.iter().map(|r| Layer::new(Some(*r))).collect()
            }
            _ => vec![Layer::new(None)],
        };
        peer.producers.push(Producer {
            id,
            mid,
            kind,
            source,
            layers,
        });
        let room = peer.room.clone();
        self.out.push_back(Output::Event(
            pid,
            PeerEvent::TrackPublished {
                track_id: id,
                kind: kind.into(),
                source,
            },
        ));
        let prod = peer.producers.last().map(|p| Consumer::new(pid, p));
        let members = self
            .routers
            .get(&room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for other in members {
            if other == pid {
                continue;
            }
            if let (Some(sub), Some(template)) = (self.peers.get_mut(&other), prod.as_ref()) {
                if sub.grants.subscribe {
                    sub.consumers.push(template.clone());
                    sub.reindex();
                    self.metrics.subscriptions.inc();
                    self.metrics.subscriptions_total.inc();
                    self.mark_dirty(other);
                }
            }
        }
    }

    /// The fan-out: one incoming frame written to every open consumer of its producer.
    fn forward(&mut self, now: Instant, publisher: ParticipantId, data: MediaData) {
        if self
            .peers
            .get(&publisher)
            .is_some_and(|p| p.is_paused(data.mid))
        {
            return;
        }
        if !data.contiguous {
            self.request_keyframe(now, publisher, data.mid, data.rid, KeyframeRequestKind::Pli);
        }
        let is_keyframe = data.is_keyframe();
        let Some(room) = self.note_layer(now, publisher, &data, is_keyframe) else {
            return;
        };
        if let Some(capture) = &self.capture {
            let codec = data.params.spec().codec.to_string().to_ascii_lowercase();
            capture.record(&room, publisher, &codec, data.rid.as_deref(), &data.data);
        }
        let Some(router) = self.routers.get_mut(&room) else {
            return;
        };
        if let Some(level) = data.ext_vals.audio_level {
            router.speakers.observe(now, publisher, level);
        }
        let mut written = false;
        for &sub_id in &router.members {
            if sub_id == publisher {
                continue;
            }
            let Some(sub) = self.peers.get_mut(&sub_id) else {
                continue;
            };
            let Some(&ci) = sub.consumer_index.get(&(publisher, data.mid)) else {
                continue;
            };
            let c = &mut sub.consumers[ci];
            let ConsumerState::Open(mid) = c.state else {
                continue;
            };
            let Some(slot) = c.slot.and_then(|i| sub.slots.get_mut(i)) else {
                continue;
            };
            // Video goes out only on its chosen layer, and changes layer (or starts) only at
            // a keyframe of the new one: the subscriber's decoder never sees a gap. Audio is
            // never held back.
            if c.kind == MediaKind::Video && c.current != Some(data.rid) {
                if is_keyframe && c.target == Some(data.rid) {
                    c.current = Some(data.rid);
                } else {
                    continue;
                }
            }
            let Some(writer) = sub.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.match_params(data.params) else {
                continue;
            };
            let time = c.out_time(slot, data.time, now);
            match writer.write(pt, data.network_time, time, data.data.clone()) {
                Ok(()) => {
                    written = true;
                    slot.last_written = Some((time, now));
                }
                Err(e) => tracing::debug!(participant = %sub_id, error = %e, "write failed"),
            }
            if !sub.dirty {
                sub.dirty = true;
                self.dirty.push(sub_id);
            }
        }
        if written {
            let latency = now.saturating_duration_since(data.network_time);
            self.metrics.forward_latency.observe(latency.as_secs_f64());
        }
    }

    /// Counts a published stream's stats (deltas of str0m's cumulative figures).
    fn ingress_stats(&mut self, pid: ParticipantId, s: &MediaIngressStats) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let kind = match peer.producers.iter().find(|p| p.mid == s.mid) {
            Some(p) => TrackKind::from(p.kind),
            None => match peer.rtc.media(s.mid) {
                Some(m) => TrackKind::from(m.kind()),
                None => return,
            },
        };
        let rtx = peer
            .rtc
            .direct_api()
            .stream_rx_by_mid(s.mid, s.rid)
            .and_then(|r| r.rtx());
        remember_ssrc(&mut peer.rtx_in, rtx);
        let mark = peer.ingress_marks.entry((s.mid, s.rid)).or_default();
        let packets = s.packets.saturating_sub(mark.packets);
        let m = &self.metrics;
        m.rtp_packets.r#in.get(kind).inc_by(packets);
        m.rtp_bytes
            .r#in
            .get(kind)
            .inc_by(s.bytes.saturating_sub(mark.bytes));
        m.nacks.out.inc_by(s.nacks.saturating_sub(mark.nacks));
        m.plis.out.inc_by(s.plis.saturating_sub(mark.plis));
        m.firs.out.inc_by(s.firs.saturating_sub(mark.firs));
        if let Some(loss) = s.loss {
            let loss = f64::from(loss).clamp(0.0, 1.0);
            m.loss_ratio.r#in.observe(loss);
            // The loss fraction of our last receiver report: received = expected × (1 − loss).
            if loss < 1.0 && packets > 0 {
                let lost = (packets as f64 * loss / (1.0 - loss)).round() as u64;
                m.packets_lost.r#in.inc_by(lost);
            }
        }
        if s.packets > 0 {
            m.jitter
                .r#in
                .get(kind)
                .observe(f64::from(s.jitter) / clock_rate(kind));
        }
        *mark = StatsMark {
            packets: s.packets,
            bytes: s.bytes,
            nacks: s.nacks,
            plis: s.plis,
            firs: s.firs,
            lost: 0,
        };
    }

    /// Counts a forwarded stream's stats and what its subscriber reports about it.
    fn egress_stats(&mut self, pid: ParticipantId, s: &MediaEgressStats) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let kind = match peer.consumers.iter().find(|c| c.state.mid() == Some(s.mid)) {
            Some(c) => TrackKind::from(c.kind),
            None => match peer.rtc.media(s.mid) {
                Some(m) => TrackKind::from(m.kind()),
                None => return,
            },
        };
        let rtx = peer
            .rtc
            .direct_api()
            .stream_tx_by_mid(s.mid, s.rid)
            .and_then(|t| t.rtx());
        remember_ssrc(&mut peer.rtx_out, rtx);
        let mark = peer.egress_marks.entry((s.mid, s.rid)).or_default();
        let m = &self.metrics;
        m.rtp_packets
            .out
            .get(kind)
            .inc_by(s.packets.saturating_sub(mark.packets));
        m.rtp_bytes
            .out
            .get(kind)
            .inc_by(s.bytes.saturating_sub(mark.bytes));
        m.nacks.r#in.inc_by(s.nacks.saturating_sub(mark.nacks));
        m.plis.r#in.inc_by(s.plis.saturating_sub(mark.plis));
        m.firs.r#in.inc_by(s.firs.saturating_sub(mark.firs));
        if let Some(loss) = s.loss {
            m.loss_ratio.out.observe(f64::from(loss).clamp(0.0, 1.0));
            if kind == TrackKind::Video && s.packets > mark.packets {
                peer.rr_loss = Some(peer.rr_loss.map_or(loss, |l| l.max(loss)));
            }
        }
        if let Some(rtt) = s.rtt {
            m.rtt.observe(rtt.as_secs_f64());
        }
        let mut lost = mark.lost;
        if let Some(r) = &s.remote {
            m.packets_lost
                .out
                .inc_by(r.packets_lost.saturating_sub(mark.lost));
            lost = lost.max(r.packets_lost);
            m.jitter
                .out
                .get(kind)
                .observe(f64::from(r.jitter) / clock_rate(kind));
        }
        *mark = StatsMark {
            packets: s.packets,
            bytes: s.bytes,
            nacks: s.nacks,
            plis: s.plis,
            firs: s.firs,
            lost,
        };
    }

    fn keyframe_from_subscriber(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        req: KeyframeRequest,
    ) {
        let Some(target) = self.peers.get_mut(&subscriber).and_then(|p| {
            p.consumers
                .iter_mut()
                .find(|c| c.state.mid() == Some(req.mid))
                .map(|c| {
                    let allowed = c.keyframes.allow(now);
                    (c.publisher, c.producer_mid, c.current.or(c.target), allowed)
                })
        }) else {
            return;
        };
        if !target.3 {
            self.metrics.keyframe_requests_suppressed.inc();
            return;
        }
        // Paused: nothing to refresh.
        let Some(rid) = target.2 else {
            return;
        };
        self.request_keyframe(now, target.0, target.1, rid, req.kind);
    }

    fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
    ) {
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let Some(producer) = peer.producers.iter_mut().find(|p| p.mid == mid) else {
            return;
        };
        if producer.kind != MediaKind::Video {
            return;
        }
        let layer = producer.layer_mut(rid);
        if layer
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_MIN_INTERVAL)
        {
            layer.keyframe_pending = Some(kind);
            if let Some(at) = layer.keyframe_due() {
                self.postponed_keyframes = Some(self.postponed_keyframes.map_or(at, |t| t.min(at)));
            }
            return;
        }
        layer.last_keyframe_request = Some(now);
        layer.keyframe_pending = None;
        if let Some(mut writer) = peer.rtc.writer(mid) {
            if let Err(e) = writer.request_keyframe(rid, kind) {
                tracing::debug!(participant = %publisher, error = %e, "keyframe request failed");
            }
        }
        self.mark_dirty(publisher);
    }

    /// The participant's signaling came back after a dropped socket: its network may have
    /// changed, so the next server offer restarts ICE (new credentials; the client's checks
    /// from its new addresses then find this ICE-lite server). An offer still waiting for its
    /// answer is sent again first, since it may have been lost with the old socket.
    pub fn ice_restart(
        &mut self,
        now: Instant,
        participant: ParticipantId,
    ) -> Result<(), MediaError> {
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant(participant))?;
        peer.ice_restart = true;
        if let Some(sdp) = peer.pending_sdp.clone() {
            self.out
                .push_back(Output::Event(participant, PeerEvent::Offer { sdp }));
        }
        self.mark_dirty(participant);
        self.drive(now);
        Ok(())
    }

    fn close(&mut self, pid: ParticipantId, reason: CloseReason) {
        if self.remove_peer(pid) {
            self.metrics.connection_closed(Some(reason));
            self.out
                .push_back(Output::Event(pid, PeerEvent::Closed { reason }));
        }
    }

    /// Takes a peer out of the worker; returns whether it was there.
    fn remove_peer(&mut self, pid: ParticipantId) -> bool {
        let Some(mut peer) = self.peers.remove(&pid) else {
            return false;
        };
        peer.rtc.disconnect();
        self.metrics.connections.dec();
        self.metrics.tracks.sub(peer.producers.len() as i64);
        self.metrics.subscriptions.sub(peer.consumers.len() as i64);
        for a in &peer.addrs {
            self.by_addr.remove(a);
        }
        let members = match self.routers.get_mut(&peer.room) {
            Some(router) => {
                router.members.retain(|m| *m != pid);
                router.speakers.remove(pid);
                if router.members.is_empty() {
                    self.routers.remove(&peer.room);
                    Vec::new()
                } else {
                    router.members.clone()
                }
            }
            None => Vec::new(),
        };
        let metrics = &self.metrics;
        let mut dirty = Vec::new();
        for other in members {
            let Some(sub) = self.peers.get_mut(&other) else {
                continue;
            };
            let mut changed = false;
            let Peer {
                consumers,
                slots,
                slots_changed,
                ..
            } = sub;
            consumers.retain(|c| {
                if c.publisher != pid {
                    return true;
                }
                changed = true;
                metrics.subscriptions.dec();
                // Its slot is free for the next producer of that kind: no renegotiation.
                if let Some(i) = c.slot {
                    if let Some(slot) = slots.get_mut(i) {
                        slot.consumer = None;
                        slots_changed.push(i);
                    }
                }
                false
            });
            if changed {
                sub.reindex();
                dirty.push(other);
            }
        }
        for other in dirty {
            self.mark_dirty(other);
        }
        self.realloc = true;
        true
    }
}

/// RTP clock rate of a kind's codecs (Opus 48 kHz; VP8 and H.264 90 kHz), for jitter in seconds.
fn clock_rate(kind: TrackKind) -> f64 {
    match kind {
        TrackKind::Audio => 48_000.0,
        TrackKind::Video => 90_000.0,
    }
}

/// Adds `ssrc` to `list` once.
fn remember_ssrc(list: &mut Vec<u32>, ssrc: Option<str0m::rtp::Ssrc>) {
    if let Some(ssrc) = ssrc.map(|s| *s) {
        if !list.contains(&ssrc) {
            list.push(ssrc);
        }
    }
}

/// Whether `datagram` is an (S)RTP retransmission: a packet on one of the `rtx` SSRCs without
/// the padding bit (padding-only packets on the RTX SSRC are bandwidth probes, not repairs).
/// The RTP header, SSRC included, is not encrypted by SRTP; RTCP (second byte 192–223) is not
/// RTP.
fn is_rtx(datagram: &[u8], rtx: &[u32]) -> bool {
    if datagram.len() < 12
        || datagram[0] >> 6 != 2
        || datagram[0] & 0x20 != 0
        || (192..=223).contains(&datagram[1])
    {
        return false;
    }
    let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    rtx.contains(&ssrc)
}
