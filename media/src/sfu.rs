//! The sans-IO core of one media worker.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, KeyframeRequest, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::stats::{MediaEgressStats, MediaIngressStats};
use str0m::{Candidate, Event, IceConnectionState, Input, Rtc};

use crate::metrics::MediaMetrics;
use crate::{MediaError, ParticipantId, TrackId};

/// A publisher is asked for a keyframe at most this often per track, however many subscribers
/// ask (new consumers, PLI/FIR from subscribers, gaps in the incoming stream).
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// How long a connection may stay without completing ICE and DTLS before it is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

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
#[derive(Debug, Default)]
pub struct Router {
    members: Vec<ParticipantId>,
}

impl Router {
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
    last_keyframe_request: Option<Instant>,
}

/// One subscriber's copy of a producer (mediasoup's Consumer).
#[derive(Debug)]
struct Consumer {
    publisher: ParticipantId,
    producer: TrackId,
    producer_mid: Mid,
    kind: MediaKind,
    state: ConsumerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsumerState {
    /// Waiting to be put in an offer.
    ToOpen,
    /// In an offer that is waiting for its answer.
    Negotiating(Mid),
    /// Negotiated: media is written to it.
    Open(Mid),
    /// Its producer is gone: waiting to be stopped in an offer.
    ToStop(Mid),
    /// Stopped in an offer that is waiting for its answer.
    Stopping(Mid),
}

impl ConsumerState {
    fn mid(self) -> Option<Mid> {
        match self {
            ConsumerState::ToOpen => None,
            ConsumerState::Negotiating(m)
            | ConsumerState::Open(m)
            | ConsumerState::ToStop(m)
            | ConsumerState::Stopping(m) => Some(m),
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
    pending: Option<SdpPendingOffer>,
    /// Source addresses this peer's datagrams came from (for demultiplexing).
    addrs: Vec<SocketAddr>,
    next_timeout: Instant,
    dirty: bool,
    connected: bool,
    created: Instant,
    /// The last cumulative stats of each incoming stream, to turn them into counter deltas.
    ingress_marks: HashMap<Mid, StatsMark>,
    /// The same for each outgoing stream.
    egress_marks: HashMap<Mid, StatsMark>,
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
    metrics: MediaMetrics,
}

impl Sfu {
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
            metrics,
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
        let router = self.routers.entry(room.to_string()).or_default();
        let mut consumers = Vec::new();
        if grants.subscribe {
            for other in &router.members {
                if let Some(p) = self.peers.get(other) {
                    consumers.extend(p.producers.iter().map(|prod| Consumer {
                        publisher: *other,
                        producer: prod.id,
                        producer_mid: prod.mid,
                        kind: prod.kind,
                        state: ConsumerState::ToOpen,
                    }));
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
                pending: None,
                addrs: Vec::new(),
                next_timeout: now,
                dirty: false,
                connected: false,
                created: now,
                ingress_marks: HashMap::new(),
                egress_marks: HashMap::new(),
            },
        );
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
        peer.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| MediaError::SdpApply(e.to_string()))?;
        let mut opened = Vec::new();
        for c in &mut peer.consumers {
            if let ConsumerState::Negotiating(m) = c.state {
                c.state = ConsumerState::Open(m);
                if c.kind == MediaKind::Video {
                    opened.push((c.publisher, c.producer_mid));
                }
            }
        }
        let before = peer.consumers.len();
        peer.consumers
            .retain(|c| !matches!(c.state, ConsumerState::Stopping(_)));
        self.metrics
            .subscriptions
            .sub((before - peer.consumers.len()) as i64);
        // A new video consumer needs a keyframe before its subscriber can show anything.
        for (publisher, mid) in opened {
            self.request_keyframe(now, publisher, mid, KeyframeRequestKind::Pli);
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
        let c = Candidate::from_sdp_string(line).map_err(|_| MediaError::BadCandidate)?;
        peer.rtc.add_remote_candidate(c);
        self.mark_dirty(participant);
        self.drive(now);
        Ok(())
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
                destination: self.config.local_addr,
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
            if let Err(e) = peer.rtc.handle_input(input) {
                tracing::debug!(participant = %pid, error = %e, "input refused");
            }
        }
        self.mark_dirty(pid);
        self.drive(now);
    }

    /// Time has passed: call when [`Sfu::poll_timeout`] is reached (calling more often is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ParticipantId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next_timeout <= now)
            .map(|(id, _)| *id)
            .collect();
        for pid in due {
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
        self.drive(now);
    }

    /// The earliest time the core needs [`Sfu::handle_timeout`], if it has any connection.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().map(|p| p.next_timeout).min()
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
        while let Some(pid) = self.dirty.pop() {
            let Some(peer) = self.peers.get_mut(&pid) else {
                continue;
            };
            peer.dirty = false;
            self.negotiate_if_needed(pid);
            while let Some(peer) = self.peers.get_mut(&pid) {
                if !peer.rtc.is_alive() {
                    self.close(pid, CloseReason::Failed);
                    break;
                }
                let event = match peer.rtc.poll_output() {
                    Ok(str0m::Output::Timeout(t)) => {
                        peer.next_timeout = t;
                        break;
                    }
                    Ok(str0m::Output::Transmit(t)) => {
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
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
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
            Event::MediaIngressStats(s) => self.ingress_stats(pid, &s),
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
        let id = TrackId((u64::from(self.config.worker_index) << 48) | self.next_track);
        self.next_track += 1;
        self.metrics.tracks.inc();
        self.metrics.tracks_total.inc();
        peer.producers.push(Producer {
            id,
            mid,
            kind,
            last_keyframe_request: None,
        });
        let room = peer.room.clone();
        self.out.push_back(Output::Event(
            pid,
            PeerEvent::TrackPublished {
                track_id: id,
                kind: kind.into(),
            },
        ));
        let members = self
            .routers
            .get(&room)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for other in members {
            if other == pid {
                continue;
            }
            if let Some(sub) = self.peers.get_mut(&other) {
                if sub.grants.subscribe {
                    sub.consumers.push(Consumer {
                        publisher: pid,
                        producer: id,
                        producer_mid: mid,
                        kind,
                        state: ConsumerState::ToOpen,
                    });
                    self.metrics.subscriptions.inc();
                    self.metrics.subscriptions_total.inc();
                    self.mark_dirty(other);
                }
            }
        }
    }

    /// The fan-out: one incoming frame written to every open consumer of its producer.
    fn forward(&mut self, now: Instant, publisher: ParticipantId, data: MediaData) {
        if !data.contiguous {
            self.request_keyframe(now, publisher, data.mid, KeyframeRequestKind::Pli);
        }
        let Some(room) = self.peers.get(&publisher).map(|p| p.room.clone()) else {
            return;
        };
        let Some(router) = self.routers.get(&room) else {
            return;
        };
        let mut written = false;
        for &sub_id in &router.members {
            if sub_id == publisher {
                continue;
            }
            let Some(sub) = self.peers.get_mut(&sub_id) else {
                continue;
            };
            let Some(mid) = sub
                .consumers
                .iter()
                .find(|c| c.publisher == publisher && c.producer_mid == data.mid)
                .and_then(|c| match c.state {
                    ConsumerState::Open(m) => Some(m),
                    _ => None,
                })
            else {
                continue;
            };
            let Some(writer) = sub.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.match_params(data.params) else {
                continue;
            };
            match writer.write(pt, data.network_time, data.time, data.data.clone()) {
                Ok(()) => written = true,
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
        let mark = peer.ingress_marks.entry(s.mid).or_default();
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
        let mark = peer.egress_marks.entry(s.mid).or_default();
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
        let Some(target) = self.peers.get(&subscriber).and_then(|p| {
            p.consumers
                .iter()
                .find(|c| c.state.mid() == Some(req.mid))
                .map(|c| (c.publisher, c.producer_mid))
        }) else {
            return;
        };
        self.request_keyframe(now, target.0, target.1, req.kind);
    }

    fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        mid: Mid,
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
        if producer
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_MIN_INTERVAL)
        {
            return;
        }
        producer.last_keyframe_request = Some(now);
        if let Some(mut writer) = peer.rtc.writer(mid) {
            if let Err(e) = writer.request_keyframe(None, kind) {
                tracing::debug!(participant = %publisher, error = %e, "keyframe request failed");
            }
        }
        self.mark_dirty(publisher);
    }

    /// Makes a server offer when consumers wait to be opened or stopped and no offer is pending.
    fn negotiate_if_needed(&mut self, pid: ParticipantId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if peer.pending.is_some()
            || !peer
                .consumers
                .iter()
                .any(|c| matches!(c.state, ConsumerState::ToOpen | ConsumerState::ToStop(_)))
        {
            return;
        }
        let mut change = peer.rtc.sdp_api();
        let mut planned = Vec::new();
        for (i, c) in peer.consumers.iter().enumerate() {
            match c.state {
                ConsumerState::ToOpen => {
                    let mid = change.add_media(
                        c.kind,
                        Direction::SendOnly,
                        Some(c.publisher.to_string()),
                        Some(c.producer.to_string()),
                        None,
                    );
                    planned.push((i, ConsumerState::Negotiating(mid)));
                }
                ConsumerState::ToStop(mid) => {
                    change.stop_media(mid);
                    planned.push((i, ConsumerState::Stopping(mid)));
                }
                _ => {}
            }
        }
        let Some((offer, pending)) = change.apply() else {
            return;
        };
        for (i, state) in planned {
            peer.consumers[i].state = state;
        }
        peer.pending = Some(pending);
        self.out.push_back(Output::Event(
            pid,
            PeerEvent::Offer {
                sdp: offer.to_sdp_string(),
            },
        ));
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
            sub.consumers.retain_mut(|c| {
                if c.publisher != pid {
                    return true;
                }
                changed = true;
                match c.state {
                    ConsumerState::ToOpen => {
                        metrics.subscriptions.dec();
                        false
                    }
                    ConsumerState::Open(m) | ConsumerState::Negotiating(m) => {
                        c.state = ConsumerState::ToStop(m);
                        true
                    }
                    _ => true,
                }
            });
            if changed {
                dirty.push(other);
            }
        }
        for other in dirty {
            self.mark_dirty(other);
        }
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
