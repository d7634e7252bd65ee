//! The in-memory network on virtual time that the core's tests and its criterion bench share:
//! str0m client peers (real ICE, DTLS, SRTP and SDP) and one [`Sfu`], wired by a loop that moves
//! datagrams and signaling events between them, with loss, a queue on one client's way or a
//! dead network when a test asks for one (quinn's `Pair`/`drive()`, str0m's `progress()`).
//!
//! `tests/in_memory.rs` and `tests/simulcast.rs` use it as `mod harness;`,
//! `benches/forward.rs` through `#[path]`. Each uses part of it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huddle_media::{
    Follow, Grants, Output, ParticipantId, PeerEvent, Sfu, SfuConfig, SlotInfo, Source, TrackId,
    TrackKind,
};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc};

/// The SFU's address on the in-memory network.
pub const SFU: &str = "10.0.0.1:5000";

/// What a client publishes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Publish {
    /// An audio (Opus) track.
    pub audio: bool,
    /// A video (VP8) track: `Some(&[])` a single encoding, `Some(rids)` simulcast.
    pub video: Option<&'static [&'static str]>,
}

impl Publish {
    pub const NOTHING: Publish = Publish {
        audio: false,
        video: None,
    };
    pub const AUDIO: Publish = Publish {
        audio: true,
        video: None,
    };
    pub const VIDEO: Publish = Publish {
        audio: false,
        video: Some(&[]),
    };

    /// Audio and a simulcast video track with these rids (lowest first).
    pub fn simulcast(rids: &'static [&'static str]) -> Publish {
        Publish {
            audio: true,
            video: Some(rids),
        }
    }
}

/// A frame a client received.
#[derive(Debug, Clone)]
pub struct Received {
    pub mid: Mid,
    pub data: Vec<u8>,
    pub time: MediaTime,
    pub keyframe: bool,
    pub at: Instant,
}

/// One client peer and what it saw.
pub struct Client {
    pub pid: ParticipantId,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    pub pending: Option<SdpPendingOffer>,
    pub audio_mid: Option<Mid>,
    pub video_mid: Option<Mid>,
    pub connected: bool,
    /// Frames received, in order (when [`Net::record`]).
    pub received: Vec<Received>,
    /// Frames received, counted always.
    pub frames: u64,
    /// Keyframe requests (PLI/FIR) the SFU sent this client as a publisher.
    pub keyframe_requests: usize,
    /// Server offers received (SDP text).
    pub offers: Vec<String>,
    /// `PeerEvent::Slots` entries received, in order.
    pub slots: Vec<SlotInfo>,
    /// Its own tracks, as `TrackPublished` announced them.
    pub tracks: Vec<(TrackId, TrackKind, Source)>,
    /// `PeerEvent::Layers` received (dynacast), in order.
    pub layer_events: Vec<Vec<String>>,
    /// As a simulcast publisher: the layers it sends, and the layers owed a keyframe (a
    /// resumed or requested encoding starts with one, as a browser's does).
    pub active: HashSet<String>,
    pub owe_keyframe: HashSet<String>,
    /// `PeerEvent::Speakers` received, in order.
    pub speakers: Vec<Vec<ParticipantId>>,
    /// Its receiving video m-lines.
    pub recv_video: Vec<Mid>,
}

impl Client {
    /// Whether its send m-lines can be written to (the SFU's answer was applied).
    pub fn writer_ready(&mut self) -> bool {
        [self.audio_mid, self.video_mid]
            .into_iter()
            .flatten()
            .all(|m| self.rtc.writer(m).is_some())
    }

    /// The frames received on `mid`.
    pub fn frames_on(&self, mid: Mid) -> impl Iterator<Item = &Received> {
        self.received.iter().filter(move |r| r.mid == mid)
    }

    /// Its own video track's id.
    pub fn video_track(&self) -> TrackId {
        self.tracks
            .iter()
            .find(|t| t.1 == TrackKind::Video)
            .expect("a published video track")
            .0
    }
}

/// The SFU and its clients on one virtual clock.
pub struct Net {
    pub now: Instant,
    pub sfu: Sfu,
    pub sfu_addr: SocketAddr,
    pub clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Fraction of client→SFU datagrams dropped, decided by a fixed-seed generator.
    pub loss: f64,
    /// Datagrams from this client address are dropped (its network died).
    pub silenced: Option<SocketAddr>,
    /// Datagrams from this client address reach the SFU this much later (a queue on its way).
    pub delay: Option<(SocketAddr, Duration)>,
    delayed: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
    /// A closed connection is recorded in `closed` instead of failing the test.
    pub record_close: bool,
    pub closed: Option<(ParticipantId, huddle_media::CloseReason)>,
    /// The core's timers are fired only when due, as the driver does.
    pub driver_timing: bool,
    /// Received frames are kept (off in the bench: only counted).
    pub record: bool,
    rng: u64,
    /// Datagrams from the clients, waiting for the core.
    pub to_sfu: Vec<(SocketAddr, Vec<u8>)>,
    /// The core's output, waiting for the clients.
    pub from_sfu: Vec<Output>,
}

/// The configuration of the tests' core: one worker, this network's address.
pub fn config() -> SfuConfig {
    let addr: SocketAddr = SFU.parse().expect("valid address");
    SfuConfig {
        candidates: vec![addr],
        local_addr: addr,
        worker_index: 0,
        max_tracks_per_participant: 8,
    }
}

impl Net {
    pub fn new() -> Net {
        Net::with_sfu(Sfu::new(config()))
    }

    pub fn with_sfu(sfu: Sfu) -> Net {
        huddle_media::init_crypto();
        Net {
            now: Instant::now(),
            sfu,
            sfu_addr: SFU.parse().expect("valid address"),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            loss: 0.0,
            silenced: None,
            delay: None,
            delayed: VecDeque::new(),
            record_close: false,
            closed: None,
            driver_timing: false,
            record: true,
            rng: 0x9e37_79b9_7f4a_7c15,
            to_sfu: Vec::new(),
            from_sfu: Vec::new(),
        }
    }

    /// A client that publishes and subscribes, in room "room".
    pub fn join(&mut self, publish: Publish) -> usize {
        self.join_with(
            publish,
            Grants {
                publish: true,
                subscribe: true,
                ..Grants::default()
            },
        )
    }

    /// A client with these grants; its offer goes to the core at once.
    pub fn join_with(&mut self, publish: Publish, grants: Grants) -> usize {
        let n = self.clients.len() as u32 + 1;
        let addr: SocketAddr =
            format!("10.{}.{}.{}:6000", n / 62_500, (n / 250) % 250, n % 250 + 1)
                .parse()
                .expect("valid address");
        let mut rtc = Rtc::builder().build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
        let mut change = rtc.sdp_api();
        let audio_mid = publish
            .audio
            .then(|| change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        let video_mid = publish.video.map(|rids| {
            let simulcast = (!rids.is_empty()).then(|| {
                let mut sim = Simulcast::new();
                for rid in rids {
                    sim.add_send_layer(SimulcastLayer::new(rid));
                }
                sim
            });
            change.add_media(MediaKind::Video, Direction::SendOnly, None, None, simulcast)
        });
        change.add_channel("huddle".into());
        let (offer, pending) = change.apply().expect("an offer");
        let rids: &[&str] = publish.video.unwrap_or(&[]);
        let pid = ParticipantId(u64::from(n));
        self.sfu
            .offer(self.now, pid, "room", grants, &offer.to_sdp_string())
            .expect("the core accepts the offer");
        self.add_client(pid, addr, rtc, pending, (audio_mid, video_mid), rids)
    }

    /// Adds a client whose offer the core has; `mids`: its audio and video send m-lines,
    /// `rids`: its simulcast layers.
    fn add_client(
        &mut self,
        pid: ParticipantId,
        addr: SocketAddr,
        rtc: Rtc,
        pending: SdpPendingOffer,
        (audio_mid, video_mid): (Option<Mid>, Option<Mid>),
        rids: &[&str],
    ) -> usize {
        self.by_addr.insert(addr, self.clients.len());
        self.clients.push(Client {
            pid,
            addr,
            rtc,
            pending: Some(pending),
            audio_mid,
            video_mid,
            connected: false,
            received: Vec::new(),
            frames: 0,
            keyframe_requests: 0,
            offers: Vec::new(),
            slots: Vec::new(),
            tracks: Vec::new(),
            layer_events: Vec::new(),
            active: rids.iter().map(|r| r.to_string()).collect(),
            owe_keyframe: rids.iter().map(|r| r.to_string()).collect(),
            speakers: Vec::new(),
            recv_video: Vec::new(),
        });
        self.clients.len() - 1
    }

    /// A receive-only viewer (WHEP) in room "room" with `audio` and `video` receiving m-lines,
    /// offered once through [`Sfu::offer_viewer`]; returns its index and the m-lines' mids.
    pub fn join_viewer(
        &mut self,
        audio: usize,
        video: usize,
        follow: Follow,
    ) -> (usize, Vec<Mid>, Vec<Mid>) {
        let n = self.clients.len() as u32 + 1;
        let addr: SocketAddr = format!("10.200.{}.{}:6000", n / 250, n % 250 + 1)
            .parse()
            .expect("valid address");
        let mut rtc = Rtc::builder().build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").expect("host candidate"));
        let mut change = rtc.sdp_api();
        let audio_mids: Vec<Mid> = (0..audio)
            .map(|_| change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None))
            .collect();
        let video_mids: Vec<Mid> = (0..video)
            .map(|_| change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None))
            .collect();
        let (offer, pending) = change.apply().expect("an offer");
        let pid = ParticipantId(u64::from(n) + 1_000_000);
        self.sfu
            .offer_viewer(self.now, pid, "room", &offer.to_sdp_string(), follow)
            .expect("the core accepts the viewer's offer");
        let i = self.add_client(pid, addr, rtc, pending, (None, None), &[]);
        (i, audio_mids, video_mids)
    }

    /// Hands the core's pending output to the clients: datagrams, and signaling events (a
    /// server offer is answered at once, as the web client does).
    pub fn deliver(&mut self) {
        while let Some(o) = self.sfu.poll_output() {
            self.from_sfu.push(o);
        }
        for out in std::mem::take(&mut self.from_sfu) {
            match out {
                Output::Transmit {
                    destination,
                    contents,
                } => {
                    let Some(&i) = self.by_addr.get(&destination) else {
                        continue;
                    };
                    let input = Input::Receive(
                        self.now,
                        Receive {
                            proto: Protocol::Udp,
                            source: self.sfu_addr,
                            destination,
                            contents: contents.as_slice().try_into().expect("a datagram"),
                        },
                    );
                    // A client already gone from the core may refuse late datagrams.
                    let _ = self.clients[i].rtc.handle_input(input);
                }
                Output::Event(pid, ev) => self.event(pid, ev),
            }
        }
    }

    fn event(&mut self, pid: ParticipantId, ev: PeerEvent) {
        let Some(c) = self.clients.iter_mut().find(|c| c.pid == pid) else {
            return;
        };
        match ev {
            PeerEvent::Answer { sdp } => {
                let answer = SdpAnswer::from_sdp_string(&sdp).expect("an answer");
                c.rtc
                    .sdp_api()
                    .accept_answer(c.pending.take().expect("an offer pending"), answer)
                    .expect("the answer applies");
            }
            PeerEvent::Offer { sdp } => {
                c.offers.push(sdp.clone());
                let offer = SdpOffer::from_sdp_string(&sdp).expect("an offer");
                let answer = c.rtc.sdp_api().accept_offer(offer).expect("answerable");
                self.sfu
                    .answer(self.now, pid, &answer.to_sdp_string())
                    .expect("the core takes the answer");
            }
            PeerEvent::Slots { slots } => c.slots.extend(slots),
            PeerEvent::TrackPublished {
                track_id,
                kind,
                source,
            } => c.tracks.push((track_id, kind, source)),
            PeerEvent::Layers { active, .. } => {
                for rid in &active {
                    if !c.active.contains(rid) {
                        c.owe_keyframe.insert(rid.clone());
                    }
                }
                c.active = active.iter().cloned().collect();
                c.layer_events.push(active);
            }
            PeerEvent::Speakers { speakers } => {
                c.speakers
                    .push(speakers.iter().map(|s| s.participant).collect());
            }
            PeerEvent::Closed { reason } if self.record_close => {
                self.closed = Some((pid, reason));
            }
            PeerEvent::Closed { reason } => panic!("{pid} closed: {reason:?}"),
            _ => {}
        }
    }

    /// Collects every client's pending datagrams into `to_sfu`, and what each client saw.
    pub fn collect(&mut self) {
        let (now, record) = (self.now, self.record);
        for c in &mut self.clients {
            loop {
                match c.rtc.poll_output().expect("client output") {
                    str0m::Output::Timeout(_) => break,
                    str0m::Output::Transmit(t) => {
                        self.to_sfu.push((c.addr, Vec::from(t.contents)));
                    }
                    str0m::Output::Event(Event::Connected) => c.connected = true,
                    str0m::Output::Event(Event::KeyframeRequest(r)) => {
                        c.keyframe_requests += 1;
                        if let Some(rid) = r.rid {
                            c.owe_keyframe.insert(rid.to_string());
                        }
                    }
                    str0m::Output::Event(Event::MediaData(d)) => {
                        c.frames += 1;
                        if record {
                            c.received.push(Received {
                                mid: d.mid,
                                keyframe: d.is_keyframe(),
                                data: d.data.to_vec(),
                                time: d.time,
                                at: now,
                            });
                        }
                    }
                    str0m::Output::Event(Event::MediaAdded(m)) => {
                        if m.kind == MediaKind::Video && m.direction == Direction::RecvOnly {
                            c.recv_video.push(m.mid);
                        }
                    }
                    str0m::Output::Event(_) => {}
                }
            }
        }
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: a deterministic loss pattern.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Hands the collected datagrams to the core, through the loss, the dead network and the
    /// queue a test set up.
    pub fn feed(&mut self) {
        for (from, data) in std::mem::take(&mut self.to_sfu) {
            if self.loss > 0.0 && self.random() < self.loss || self.silenced == Some(from) {
                continue;
            }
            if let Some((_, d)) = self.delay.filter(|(a, _)| *a == from) {
                self.delayed.push_back((self.now + d, from, data));
                continue;
            }
            self.sfu.handle_receive(self.now, from, &data);
        }
        while self
            .delayed
            .front()
            .is_some_and(|(due, _, _)| *due <= self.now)
        {
            if let Some((_, from, data)) = self.delayed.pop_front() {
                self.sfu.handle_receive(self.now, from, &data);
            }
        }
    }

    /// Moves the clock on for the clients (the core's timers are the caller's).
    pub fn advance(&mut self, dt: Duration) {
        self.now += dt;
        for c in &mut self.clients {
            c.rtc
                .handle_input(Input::Timeout(self.now))
                .expect("client timeout");
        }
    }

    /// One step: output delivered, input collected and fed, `dt` on, the core's timers.
    pub fn step(&mut self, dt: Duration) {
        self.deliver();
        self.collect();
        self.feed();
        self.now += dt;
        if !self.driver_timing || self.sfu.poll_timeout().is_some_and(|t| t <= self.now) {
            self.sfu.handle_timeout(self.now);
        }
        for c in &mut self.clients {
            c.rtc
                .handle_input(Input::Timeout(self.now))
                .expect("client timeout");
        }
    }

    /// Steps of 5 ms for `d`.
    pub fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(Duration::from_millis(5));
        }
    }

    /// Client `i` writes an audio frame at media time `time`; false (nothing written) before
    /// its writer is ready. `level`: the audio-level extension (dBov, speech around -30).
    pub fn write_audio(
        &mut self,
        i: usize,
        time: MediaTime,
        level: Option<i8>,
        data: Vec<u8>,
    ) -> bool {
        let now = self.now;
        let c = &mut self.clients[i];
        let Some(mid) = c.audio_mid else {
            return false;
        };
        let Some(w) = c.rtc.writer(mid) else {
            return false;
        };
        let Some(pt) = w.payload_params().next().map(|p| p.pt()) else {
            return false;
        };
        let w = match level {
            Some(l) => w.audio_level(l, true),
            None => w,
        };
        w.write(pt, now, time, data).expect("audio written");
        true
    }

    /// Client `i` writes a VP8 frame at media time `time` on layer `rid` (`None` for a single
    /// encoding); false (nothing written) before its writer is ready.
    pub fn write_video(
        &mut self,
        i: usize,
        rid: Option<&str>,
        time: MediaTime,
        data: Vec<u8>,
    ) -> bool {
        let now = self.now;
        let c = &mut self.clients[i];
        let Some(mid) = c.video_mid else {
            return false;
        };
        let Some(w) = c.rtc.writer(mid) else {
            return false;
        };
        let Some(pt) = w
            .payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            return false;
        };
        let w = match rid {
            Some(r) => w.rid(Rid::from(r)),
            None => w,
        };
        w.write(pt, now, time, data).expect("video written");
        true
    }
}
