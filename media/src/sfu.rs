//! The sans-IO core of one media worker.

use std::collections::VecDeque;

// The maps on the packet path (peers, source addresses, ufrags, rooms, a subscriber's
// consumers) hash with FxHash: a lookup per packet and poll, where SipHash was 8 % of the
// forwarding cost. Their keys are the server's own (participant ids, room names, ufrags it
// made) or the addresses of peers that passed ICE, so a stranger cannot fill one with keys
// chosen to collide.
use rustc_hash::FxHashMap as HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, KeyframeRequest, KeyframeRequestKind, MediaKind, Mid, Rid, Rids};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Vp8Descriptor};
use str0m::stats::{MediaEgressStats, MediaIngressStats};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc};

use crate::layers::{allocate, layer_for_size, vp8_keyframe_size, Quality, Source, Want};
use crate::metrics::MediaMetrics;
use crate::recording::{RecCodec, RecordTap, RecordedPacket};
use crate::speakers::{Speaker, SpeakerDetector};
use crate::{MediaError, ParticipantId, TrackId};

mod allocation;
mod consumer;
mod keyframes;
mod negotiation;
mod peer;
mod producer;
mod router;
mod rtp;
mod stats;
mod timers;
mod viewer;

use consumer::{Consumer, ConsumerState, Slot};
use peer::{Peer, StatsMark};
use producer::{Layer, Producer};
pub use router::Router;
pub(crate) use rtp::vp8_frame_part;
use rtp::{starts_keyframe, Behind, Codec, Rewrite};
use stats::{clock_rate, is_rtx};

use timers::{PeerTimer, Timers};
pub use viewer::Follow;
use viewer::Viewer;

/// A publisher is asked for a keyframe at most this often per track, however many subscribers
/// ask (new consumers, PLI/FIR from subscribers, gaps in the incoming stream).
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// How often every subscriber's layers are chosen again (also right after a tile size change or
/// a new track).
pub const ALLOCATION_INTERVAL: Duration = Duration::from_secs(1);

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

/// A recorded room: where its packets go, and the layer recorded of each track.
struct Recorded {
    tap: RecordTap,
    layers: HashMap<(ParticipantId, Mid), u8>,
}

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
    /// gets a [`PeerEvent::Error`] with [`crate::Refusal::TooManyTracks`].
    pub max_tracks_per_participant: usize,
}

/// What a participant may do with media (its access token's grants: media reads `publish`
/// and `subscribe`), and audio or video: the protocol's types, shared with signaling.
pub use huddle_protocol::{Grants, TrackKind};

/// The protocol's kind of a str0m media kind.
pub(crate) fn track_kind(k: MediaKind) -> TrackKind {
    match k {
        MediaKind::Audio => TrackKind::Audio,
        MediaKind::Video => TrackKind::Video,
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
        /// What was refused.
        refusal: crate::Refusal,
        /// The error's text, for the log (it may name parser internals: not for clients).
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
    capture: Option<rtp::Capture>,
    /// Rooms being recorded (see [`crate::recording`]).
    recordings: HashMap<String, Recorded>,
    /// Every connection's next timeout.
    timers: Timers,
    /// Connections by the local ICE ufrag of their current (and earlier) credentials.
    by_ufrag: HashMap<String, ParticipantId>,
    /// Scratch list of connections whose timeout is due.
    due: Vec<ParticipantId>,
    /// The earliest postponed keyframe request (see [`Layer::keyframe_pending`]).
    postponed_keyframes: Option<Instant>,
    /// Whether the worker is behind (video yields), from the lateness of everyone's audio.
    behind: Behind,
    /// Whether the driver's socket holds a backlog (see [`Sfu::socket_drained`]).
    socket: SocketBacklog,
}

/// What the driver says of its socket: the first datagram handled after the socket was last
/// found empty starts a busy period; a datagram handled later in it may have waited in the
/// socket up to the period's length.
#[derive(Debug, Clone, Copy, Default)]
enum SocketBacklog {
    /// The driver does not say (a test harness): no backlog is assumed.
    #[default]
    Unknown,
    /// Empty when last read.
    Drained,
    /// Not found empty since this datagram.
    Since(Instant),
}

/// Queues a datagram str0m produced for the driver, counting it if it is a retransmission
/// (one of the connection's RTX SSRCs `rtx_out`).
fn send(
    out: &mut VecDeque<Output>,
    metrics: &MediaMetrics,
    rtx_out: &[u32],
    t: str0m::net::Transmit,
) {
    if !rtx_out.is_empty() && is_rtx(&t.contents, rtx_out) {
        metrics.retransmissions.out.inc();
    }
    out.push_back(Output::Transmit {
        destination: t.destination,
        contents: t.contents.into(),
    });
}

/// Parses a client's SDP answer (the text work of [`Sfu::answer`], which can be done on any
/// thread).
pub fn parse_answer(sdp: &str) -> Result<SdpAnswer, MediaError> {
    SdpAnswer::from_sdp_string(sdp).map_err(|e| MediaError::SdpParse(e.to_string()))
}

/// What polling one connection ended with (see `Sfu::drive`).
// Lives on the stack for one turn of the loop; boxing the event would allocate for every
// received packet (`Event::RtpPacket`).
#[allow(clippy::large_enum_variant)]
enum Polled {
    /// It waits for time or datagrams (its timer is set).
    Waiting,
    /// It has an event for the core.
    Event(Event),
    /// It is closed or failed: it goes.
    Dead,
}

impl Sfu {
    /// Starts (`Some`) or stops (`None`) handing a copy of every packet of `room` to a
    /// recording: the best layer of each simulcast track, which is kept flowing as long as the
    /// recording runs. Its video producers are asked for a keyframe.
    pub fn set_recording(&mut self, now: Instant, room: &str, tap: Option<RecordTap>) {
        let Some(tap) = tap else {
            self.recordings.remove(room);
            return;
        };
        self.recordings.insert(
            room.to_string(),
            Recorded {
                tap,
                layers: HashMap::default(),
            },
        );
        let members = self
            .routers
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        let mut asks = Vec::new();
        for pid in members {
            if let Some(peer) = self.peers.get(&pid) {
                for prod in &peer.producers {
                    if prod.kind == MediaKind::Video {
                        for l in &prod.layers {
                            asks.push((pid, prod.mid, l.rid));
                        }
                    }
                }
            }
        }
        for (pid, mid, rid) in asks {
            self.request_keyframe(now, pid, mid, rid, KeyframeRequestKind::Pli);
        }
        self.realloc = true;
    }

    /// Hands a recorded room's packet to its recording (only the best layer arriving of a
    /// simulcast track; a change of layer asks for a keyframe on the new one).
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        now: Instant,
        room: &str,
        publisher: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        codec: Codec,
        packet: &RtpPacket,
    ) {
        let Some(rec) = self.recordings.get_mut(room) else {
            return;
        };
        let Some(prod) = self
            .peers
            .get(&publisher)
            .and_then(|p| p.producers.iter().find(|p| p.mid == mid))
        else {
            return;
        };
        let layer = if prod.simulcast() {
            let best = prod.layers.iter().rposition(|l| {
                l.rid.is_some()
                    && l.last_seen
                        .is_some_and(|t| now.saturating_duration_since(t) < LAYER_STALE)
            });
            let Some(best) = best else { return };
            if prod.layers[best].rid != rid {
                return;
            }
            best as u8
        } else {
            0
        };
        let codec = match codec {
            Codec::Opus => RecCodec::Opus,
            Codec::Vp8 => RecCodec::Vp8,
            _ => RecCodec::Other,
        };
        rec.tap.send(RecordedPacket {
            participant: publisher,
            track: prod.id,
            kind: track_kind(prod.kind),
            screen: prod.source == Source::Screen,
            codec,
            layer,
            seq: *packet.seq_no,
            time: packet.time.numer(),
            arrival: now,
            marker: packet.header.marker,
            payload: packet.payload.clone(),
        });
        let switched = rec.layers.insert((publisher, mid), layer) != Some(layer);
        if switched && prod.simulcast() {
            self.request_keyframe(now, publisher, mid, rid, KeyframeRequestKind::Pli);
        }
    }

    /// The top layer of each simulcast track of the recorded rooms (kept on by dynacast).
    pub(super) fn recorded_layers(&self) -> Vec<(ParticipantId, Mid, Rid)> {
        let mut v = Vec::new();
        for room in self.recordings.keys() {
            let Some(router) = self.routers.get(room) else {
                continue;
            };
            for pid in &router.members {
                let Some(peer) = self.peers.get(pid) else {
                    continue;
                };
                for prod in &peer.producers {
                    if let Some(rid) = prod.layers.iter().rev().find_map(|l| l.rid) {
                        v.push((*pid, prod.mid, rid));
                    }
                }
            }
        }
        v
    }

    /// Records every published frame into `capture` from now on (a debugging aid, see
    /// [`crate::capture`]).
    pub fn set_capture(&mut self, capture: crate::capture::FrameCapture) {
        self.capture = Some(rtp::Capture::new(capture));
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
            peers: HashMap::default(),
            routers: HashMap::default(),
            by_addr: HashMap::default(),
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
            recordings: HashMap::default(),
            timers: Timers::default(),
            by_ufrag: HashMap::default(),
            due: Vec::new(),
            postponed_keyframes: None,
            behind: Behind::default(),
            socket: SocketBacklog::Unknown,
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
        self.connect(now, participant, room, grants, sdp, sources, None)
    }

    /// A receive-only viewer's one offer (WHEP): its connection in `room` is sent the tracks
    /// `follow` names on the receiving m-lines it offered, and is never made an offer (see
    /// [`Follow`]). The answer is queued as a [`PeerEvent::Answer`]. A viewer is a member of
    /// the room's media, not a participant: it publishes nothing.
    pub fn offer_viewer(
        &mut self,
        now: Instant,
        viewer: ParticipantId,
        room: &str,
        sdp: &str,
        follow: Follow,
    ) -> Result<(), MediaError> {
        let grants = Grants {
            publish: false,
            subscribe: true,
            chat: false,
            admin: false,
        };
        self.connect(
            now,
            viewer,
            room,
            grants,
            sdp,
            &[],
            Some(Viewer::new(follow)),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn connect(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        room: &str,
        grants: Grants,
        sdp: &str,
        sources: &[(String, Source)],
        viewer: Option<Viewer>,
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
            // Packets are forwarded as they come (see `forward`), not reassembled into frames.
            .set_rtp_mode(true)
            .set_stats_interval(Some(Duration::from_secs(1)))
            // No send-side estimator: str0m paces by it, one packet per timeout with a scan of
            // every stream each time (the cost of a packet grew with the meeting). The downlink
            // is judged by loss instead (see `next_estimate`), and packets go out as they come.
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

        let ufrag = rtc.direct_api().local_ice_credentials().ufrag;
        self.by_ufrag.insert(ufrag.clone(), participant);
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
                room: std::sync::Arc::from(room),
                rtc,
                grants,
                producers: Vec::new(),
                consumers,
                consumer_index: HashMap::default(),
                slots: Vec::new(),
                slots_changed: Vec::new(),
                pending: None,
                pending_sdp: None,
                ice_restart: false,
                addrs: Vec::new(),
                ufrags: vec![ufrag.clone()],
                rtx_in: Vec::new(),
                rtx_out: Vec::new(),
                timer: PeerTimer::new(now),
                dirty: false,
                negotiate: true,
                connected: false,
                created: now,
                ingress_marks: HashMap::default(),
                egress_marks: HashMap::default(),
                sources: sources
                    .iter()
                    .map(|(mid, s)| (Mid::from(mid.as_str()), *s))
                    .collect(),
                estimate: None,
                last_tx: None,
                rr_loss: None,
                max_bitrate: None,
                upgrade_hold: None,
                upgrade_backoff: Duration::ZERO,
                last_upgrade: None,
                quality_loss: 0.0,
                quality_jitter: 0.0,
                quality_rtt: 0.0,
                ingress_packets: Vec::new(),
                paused: Vec::new(),
                viewer,
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
        if !self.peers.contains_key(&participant) {
            return Err(MediaError::UnknownParticipant(participant));
        }
        let answer = parse_answer(sdp)?;
        self.answer_parsed(now, participant, answer)
    }

    /// [`Sfu::answer`] with the SDP already parsed ([`parse_answer`]): the worker's handle
    /// parses on the caller's thread, since a subscriber's answer in a meeting of 25 is about
    /// 100 KB and takes milliseconds to parse, which would hold up every packet of the worker.
    pub fn answer_parsed(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        answer: SdpAnswer,
    ) -> Result<(), MediaError> {
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant(participant))?;
        let pending = peer.pending.take().ok_or(MediaError::NoPendingOffer)?;
        peer.pending_sdp = None;
        peer.negotiate = true;
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
            slot.open = true;
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
                .filter(|p| track_kind(p.kind) == kind)
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
        self.remove_peer(participant, None);
        self.drive(now);
    }

    /// A datagram arrived on the worker's socket.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        if let SocketBacklog::Drained = self.socket {
            self.socket = SocketBacklog::Since(now);
        }
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
                // A new source: only an ICE check can introduce it, and its USERNAME
                // (`<our ufrag>:<theirs>`) names the connection; one lookup, no scan.
                let found = stun_local_ufrag(data)
                    .and_then(|u| self.by_ufrag.get(&u).copied())
                    .filter(|pid| self.peers.get(pid).is_some_and(|p| p.rtc.accepts(&input)));
                let Some(pid) = found else {
                    self.unrouted_datagrams += 1;
                    self.metrics.unrouted.inc();
                    return;
                };
                if let Some(peer) = self.peers.get_mut(&pid) {
                    peer.addrs.push(source);
                }
                self.by_addr.insert(source, pid);
                pid
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

    /// The driver read everything its socket held (a read found nothing). A driver that says
    /// so lets the core tell its own backlog from a slow network: while the socket has not
    /// been found empty for over 100 ms, the worker is behind, and the floor audio lateness is
    /// judged from does not rise with the queue (see `rtp::Lateness`).
    pub fn socket_drained(&mut self) {
        self.socket = SocketBacklog::Drained;
    }

    /// Whether the socket has held a backlog for over `VIDEO_LATE` at `now`: the worker is
    /// behind (its driver then reads a few datagrams at a time, see `worker::read_ready`).
    pub fn socket_behind(&self, now: Instant) -> bool {
        match self.socket {
            SocketBacklog::Since(t) => now.saturating_duration_since(t) > rtp::VIDEO_LATE,
            _ => false,
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
            self.negotiate_if_needed(now, pid);
            let mut spins = 0;
            while let Some(peer) = self.peers.get_mut(&pid) {
                // Polled with this one lookup until it has an event (handled with all of
                // `self`) or waits: its datagrams go out in between.
                let polled = loop {
                    if !peer.rtc.is_alive() {
                        break Polled::Dead;
                    }
                    // Forwarded packets first, without str0m's half-kilobyte `Output`
                    // (vendor/str0m/PATCHES.md, 3).
                    if let Some(t) = peer.rtc.direct_api().poll_transmit() {
                        send(&mut self.out, &self.metrics, &peer.rtx_out, t);
                        continue;
                    }
                    match peer.rtc.poll_output() {
                        Ok(str0m::Output::Timeout(t)) => {
                            // A timeout str0m wants within PACER_SLACK is fed here and now, at
                            // the time it asked for (never behind its clock, at most
                            // PACER_SLACK ahead of ours), rather than through the driver's
                            // millisecond timer.
                            if t <= now + PACER_SLACK && spins < MAX_SPINS {
                                spins += 1;
                                if let Err(e) = peer.rtc.handle_input(Input::Timeout(t.max(now))) {
                                    tracing::debug!(participant = %pid, error = %e, "timeout handling failed");
                                }
                                continue;
                            }
                            if !peer.rtc.is_alive() {
                                // Closed while draining (a DTLS close alert): nothing more
                                // will ever be due on it, so it goes now.
                                break Polled::Dead;
                            }
                            self.timers.schedule(pid, &mut peer.timer, t);
                            break Polled::Waiting;
                        }
                        Ok(str0m::Output::Transmit(t)) => {
                            send(&mut self.out, &self.metrics, &peer.rtx_out, t)
                        }
                        Ok(str0m::Output::Event(e)) => break Polled::Event(e),
                        Err(e) => {
                            tracing::info!(participant = %pid, error = %e, "connection failed");
                            break Polled::Dead;
                        }
                    }
                };
                match polled {
                    Polled::Waiting => break,
                    Polled::Dead => {
                        self.close(pid, CloseReason::Failed);
                        break;
                    }
                    Polled::Event(event) => self.handle_event(now, pid, event),
                }
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
                } else if let Some(peer) = self.peers.get_mut(&pid) {
                    // A viewer's receiving m-lines are its slots, open from its one offer.
                    if peer.viewer.is_some() && added.direction == Direction::SendOnly {
                        peer.slots.push(Slot {
                            mid: added.mid,
                            kind: added.kind,
                            open: true,
                            consumer: None,
                            out: Default::default(),
                            ssrc: None,
                        });
                        peer.negotiate = true;
                        self.mark_dirty(pid);
                    }
                }
            }
            Event::RtpPacket(packet) => self.forward(now, pid, packet),
            Event::KeyframeRequest(req) => self.keyframe_from_subscriber(now, pid, req),
            Event::MediaIngressStats(s) => {
                self.note_jitter(pid, &s);
                self.ingress_stats(pid, &s);
            }
            Event::PeerStats(s) => self.note_peer_stats(now, pid, &s),
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
                    refusal: crate::Refusal::TooManyTracks {
                        max: self.config.max_tracks_per_participant,
                    },
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
            params: None,
        });
        let room = peer.room.clone();
        self.out.push_back(Output::Event(
            pid,
            PeerEvent::TrackPublished {
                track_id: id,
                kind: track_kind(kind),
                source,
            },
        ));
        let prod = peer.producers.last().map(|p| Consumer::new(pid, p));
        let members = self
            .routers
            .get(&*room)
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

    /// The fan-out: one incoming RTP packet written to every open consumer of its producer,
    /// its payload shared, its header rewritten per slot (see [`rtp`]).
    fn forward(&mut self, now: Instant, publisher: ParticipantId, packet: RtpPacket) {
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let Some((mid, rid)) = peer
            .rtc
            .direct_api()
            .stream_rx(&packet.header.ssrc)
            .map(|s| (s.mid(), s.rid()))
        else {
            return;
        };
        if peer.is_paused(mid) {
            return;
        }
        let pt = packet.header.payload_type;
        let Peer { rtc, producers, .. } = peer;
        let Some(prod) = producers.iter_mut().find(|p| p.mid == mid) else {
            return;
        };
        let (params, codec) = match prod.params {
            Some((p, params, codec)) if p == pt => (params, codec),
            _ => {
                let Some(params) = rtc.codec_config().find(|p| p.pt() == pt).copied() else {
                    return;
                };
                let codec = Codec::of(params.spec().codec);
                prod.params = Some((pt, params, codec));
                (params, codec)
            }
        };
        let video = prod.kind == MediaKind::Video;
        let vp8 = if codec == Codec::Vp8 {
            Vp8Descriptor::parse(&packet.payload).ok()
        } else {
            None
        };
        let is_keyframe = video && starts_keyframe(codec, &packet.payload, vp8.as_ref());
        let keyframe_size = if is_keyframe && codec == Codec::Vp8 {
            vp8_frame_part(&packet.payload)
                .and_then(|(at, _)| vp8_keyframe_size(&packet.payload[at..]))
        } else {
            None
        };
        let arrival = allocation::Arrival {
            mid,
            rid,
            bytes: packet.payload.len(),
            keyframe_size,
            time: packet.time,
        };
        let Some((room, late)) = self.note_layer(now, publisher, arrival) else {
            return;
        };
        // Too late to be of use: dropped here (and counted), video before audio, rather than
        // queued behind everything else (see `rtp::Lateness`).
        if late {
            let kind = if video {
                TrackKind::Video
            } else {
                TrackKind::Audio
            };
            self.metrics.late_dropped.get(kind).inc();
            if video {
                self.video_fell_behind(publisher, mid, rid);
            }
            return;
        }
        if let Some(capture) = &mut self.capture {
            capture.packet(&room, publisher, mid, rid, codec, &packet);
        }
        if !self.recordings.is_empty() {
            self.record(now, &room, publisher, mid, rid, codec, &packet);
        }
        let Some(router) = self.routers.get_mut(&*room) else {
            return;
        };
        let h = &packet.header;
        if let Some(level) = h.ext_vals.audio_level {
            router.speakers.observe(now, publisher, level);
        }
        let ext = ExtensionValues {
            audio_level: h.ext_vals.audio_level,
            voice_activity: h.ext_vals.voice_activity,
            video_orientation: h.ext_vals.video_orientation,
            ..Default::default()
        };
        let hz = if video { 90_000 } else { 48_000 };
        let seq = *packet.seq_no;
        let mut written = false;
        for &sub_id in &router.members {
            if sub_id == publisher {
                continue;
            }
            let Some(sub) = self.peers.get_mut(&sub_id) else {
                continue;
            };
            let Some(&ci) = sub.consumer_index.get(&(publisher, mid)) else {
                continue;
            };
            let c = &mut sub.consumers[ci];
            if !matches!(c.state, ConsumerState::Open(_)) {
                continue;
            }
            let Some(slot) = c.slot.and_then(|i| sub.slots.get_mut(i)) else {
                continue;
            };
            // Video goes out only on its chosen layer, and changes layer (or starts) only at
            // the first packet of a keyframe of the new one: the subscriber's decoder never
            // sees a gap. Audio is never held back.
            if video && c.current != Some(rid) {
                if is_keyframe && c.target == Some(rid) {
                    c.current = Some(rid);
                    c.rewrite = None;
                } else {
                    continue;
                }
            }
            let rw = *c.rewrite.get_or_insert_with(|| {
                Rewrite::start(&slot.out, seq, h.timestamp, vp8.as_ref(), hz, now)
            });
            let Some(out) = rw.apply(&mut slot.out, seq, h.timestamp, vp8.as_ref(), now) else {
                continue;
            };
            let out_pt = match c.pt {
                Some((i, o)) if i == pt => o,
                _ => {
                    let Some(o) = sub.rtc.codec_config().match_params(params).map(|p| p.pt())
                    else {
                        continue;
                    };
                    c.pt = Some((pt, o));
                    o
                }
            };
            let mut api = sub.rtc.direct_api();
            let ssrc = match slot.ssrc {
                Some(s) => s,
                None => {
                    let Some(s) = api.stream_tx_by_mid(slot.mid, None).map(|s| s.ssrc()) else {
                        continue;
                    };
                    slot.ssrc = Some(s);
                    s
                }
            };
            let mut write = RtpWrite::new(
                out_pt,
                out.seq.into(),
                out.ts,
                packet.timestamp,
                packet.payload.clone(),
            )
            .marker(h.marker)
            .nackable(video)
            .ext_vals(ext.clone());
            if let (Some((picture_id, tl0)), Some(d)) = (out.vp8, vp8.as_ref()) {
                let mut patch = d.patch();
                if let Some(p) = picture_id {
                    patch = patch.picture_id(p);
                }
                if let Some(t) = tl0 {
                    patch = patch.tl0_pic_idx(t);
                }
                if let Ok(patch) = patch.build() {
                    write = write.vp8_patch(patch);
                }
            }
            // Through the direct path of our str0m (vendor/str0m/PATCHES.md): the next poll
            // sends it, with no timeout round and no walk over the subscriber's streams.
            if !api.write_rtp(ssrc, write) {
                continue;
            }
            written = true;
            if !sub.dirty {
                sub.dirty = true;
                self.dirty.push(sub_id);
            }
        }
        if written {
            let latency = now.saturating_duration_since(packet.timestamp);
            self.metrics.forward_latency.observe(latency.as_secs_f64());
        }
    }

    /// A packet of the publisher's video on `mid` (layer `rid`) was dropped as late: every
    /// consumer of that layer waits for a keyframe before it goes on (the frame cannot be
    /// decoded without it), and one is asked for by the next periodic allocation (it sees
    /// `current` unset), not at once: a keyframe now would only add to the load.
    fn video_fell_behind(&mut self, publisher: ParticipantId, mid: Mid, rid: Option<Rid>) {
        let Some(members) = self
            .peers
            .get(&publisher)
            .and_then(|p| self.routers.get(&*p.room))
            .map(|r| &r.members)
        else {
            return;
        };
        for sub_id in members {
            let Some(sub) = self.peers.get_mut(sub_id) else {
                continue;
            };
            if let Some(&ci) = sub.consumer_index.get(&(publisher, mid)) {
                let c = &mut sub.consumers[ci];
                if c.current == Some(rid) {
                    c.current = None;
                }
            }
        }
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
        peer.negotiate = true;
        if let Some(sdp) = peer.pending_sdp.clone() {
            self.out
                .push_back(Output::Event(participant, PeerEvent::Offer { sdp }));
        }
        self.mark_dirty(participant);
        self.drive(now);
        Ok(())
    }

    fn close(&mut self, pid: ParticipantId, reason: CloseReason) {
        if self.remove_peer(pid, Some(reason)) {
            self.out
                .push_back(Output::Event(pid, PeerEvent::Closed { reason }));
        }
    }

    /// Takes a peer out of the worker and counts why (`None`: signaling removed it); returns
    /// whether it was there. The close is counted before the connection gauge falls, so a
    /// scrape that sees one connection fewer also sees its reason.
    fn remove_peer(&mut self, pid: ParticipantId, reason: Option<CloseReason>) -> bool {
        let Some(mut peer) = self.peers.remove(&pid) else {
            return false;
        };
        peer.rtc.disconnect();
        self.metrics.connection_closed(reason);
        self.metrics.connections.dec();
        self.metrics.tracks.sub(peer.producers.len() as i64);
        self.metrics.subscriptions.sub(peer.consumers.len() as i64);
        for a in &peer.addrs {
            self.by_addr.remove(a);
        }
        for u in &peer.ufrags {
            self.by_ufrag.remove(u);
        }
        let members = match self.routers.get_mut(&*peer.room) {
            Some(router) => {
                router.members.retain(|m| *m != pid);
                router.speakers.remove(pid);
                if router.members.is_empty() {
                    self.routers.remove(&*peer.room);
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

/// The local (first) half of the USERNAME of a STUN message: `<ufrag of the receiver>:<ufrag
/// of the sender>` (RFC 8445 §7.2.2), parsed by str0m's own STUN parser. `None` for anything
/// else.
/// (Only a datagram from a source not seen before is asked, so the copy is rare.)
fn stun_local_ufrag(datagram: &[u8]) -> Option<String> {
    let message = str0m::ice::StunMessage::parse(datagram).ok()?;
    message.split_username().map(|(local, _)| local.to_string())
}

#[cfg(test)]
mod tests {
    use super::{stun_local_ufrag, Sfu, SfuConfig};
    use std::time::{Duration, Instant};

    #[test]
    fn a_socket_not_found_empty_for_over_100_ms_is_a_backlog_and_idle_time_is_not() {
        let mut sfu = Sfu::new(SfuConfig {
            candidates: vec![([127, 0, 0, 1], 50000).into()],
            local_addr: ([127, 0, 0, 1], 50000).into(),
            worker_index: 0,
            max_tracks_per_participant: 4,
        });
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let from = ([127, 0, 0, 1], 40000).into();
        // A driver that says nothing: never behind.
        sfu.handle_receive(t0, from, b"x");
        assert!(!sfu.socket_behind(t0 + ms(500)));
        // Drained, then idle for a second: the next datagram has not waited.
        sfu.socket_drained();
        sfu.handle_receive(t0 + ms(1000), from, b"x");
        assert!(!sfu.socket_behind(t0 + ms(1050)));
        // Read on and on without the socket ever found empty: behind after 100 ms.
        sfu.handle_receive(t0 + ms(1090), from, b"x");
        assert!(!sfu.socket_behind(t0 + ms(1090)));
        assert!(sfu.socket_behind(t0 + ms(1101)));
        // Found empty again: not behind, whatever came before.
        sfu.socket_drained();
        sfu.handle_receive(t0 + ms(1200), from, b"x");
        assert!(!sfu.socket_behind(t0 + ms(1250)));
    }

    #[test]
    fn the_local_ufrag_is_read_from_a_binding_requests_username() {
        let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        m.extend([7u8; 12]);
        // PRIORITY, USERNAME "srv1:cli2" (9 bytes, padded to 12), MESSAGE-INTEGRITY (a binding
        // request without one is refused; it is checked later, with the password).
        let attrs: Vec<u8> = [
            &[0x00, 0x24, 0, 4, 1, 2, 3, 4][..],
            &[0x00, 0x06, 0, 9],
            b"srv1:cli2",
            &[0, 0, 0],
            &[0x00, 0x08, 0, 20],
            &[0; 20],
        ]
        .concat();
        m[2..4].copy_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend(&attrs);
        assert_eq!(stun_local_ufrag(&m).as_deref(), Some("srv1"));
        assert_eq!(stun_local_ufrag(&m[..30]), None, "cut short");
        assert_eq!(stun_local_ufrag(&[0x80; 40]), None, "RTP");
        assert_eq!(stun_local_ufrag(b""), None);
    }
}
