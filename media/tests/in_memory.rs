//! The SFU core over an in-memory network, on virtual time: str0m client peers stand in for
//! browsers, datagrams are moved by hand, and the clock only moves when the test says so.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use huddle_media::{Grants, Output, ParticipantId, PeerEvent, Sfu, SfuConfig, SlotInfo};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc};

const SFU: &str = "10.0.0.1:5000";

struct Client {
    pid: ParticipantId,
    addr: SocketAddr,
    rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    send_mid: Option<Mid>,
    connected: bool,
    /// Payloads received, by the msid stream id (the publisher's participant id).
    received: HashMap<Mid, Vec<Vec<u8>>>,
    inbox: VecDeque<Vec<u8>>,
    /// Keyframe requests (PLI/FIR) the SFU sent this client as a publisher.
    keyframe_requests: usize,
    /// Server offers received (SDP text).
    offers: Vec<String>,
    /// `PeerEvent::Slots` entries received, in order.
    slots: Vec<SlotInfo>,
    /// RTP times of the frames received, by mid.
    times: HashMap<Mid, Vec<MediaTime>>,
}

impl Client {
    fn with_kind(n: u8, now: Instant, publish: Option<MediaKind>) -> Client {
        huddle_media::init_crypto();
        let addr: SocketAddr = format!("10.0.0.{}:6000", n + 1).parse().unwrap();
        let mut rtc = Rtc::builder().build(now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let send_mid =
            publish.map(|kind| change.add_media(kind, Direction::SendOnly, None, None, None));
        change.add_channel("huddle".into());
        let (offer, pending) = change.apply().unwrap();
        let mut c = Client {
            pid: ParticipantId(u64::from(n)),
            addr,
            rtc,
            pending: Some(pending),
            send_mid,
            connected: false,
            received: HashMap::new(),
            inbox: VecDeque::new(),
            keyframe_requests: 0,
            offers: Vec::new(),
            slots: Vec::new(),
            times: HashMap::new(),
        };
        c.inbox.push_back(offer.to_sdp_string().into_bytes());
        c
    }
}

struct Net {
    now: Instant,
    sfu: Sfu,
    clients: Vec<Client>,
    /// Fraction of client→SFU datagrams dropped, decided by a fixed-seed generator.
    loss: f64,
    /// Datagrams from this client address are dropped (its network died).
    silenced: Option<SocketAddr>,
    record_close: bool,
    /// The core's timers are fired only when due, as the driver does.
    driver_timing: bool,
    closed: Option<(ParticipantId, huddle_media::CloseReason)>,
    rng: u64,
}

impl Net {
    fn new() -> Net {
        let now = Instant::now();
        let addr: SocketAddr = SFU.parse().unwrap();
        Net {
            now,
            sfu: Sfu::new(SfuConfig {
                candidates: vec![addr],
                local_addr: addr,
                worker_index: 0,
                max_tracks_per_participant: 8,
            }),
            clients: Vec::new(),
            loss: 0.0,
            silenced: None,
            record_close: false,
            driver_timing: false,
            closed: None,
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn join(&mut self, publish: bool) -> usize {
        self.join_with(publish.then_some(MediaKind::Audio))
    }

    fn join_with(&mut self, publish: Option<MediaKind>) -> usize {
        let n = self.clients.len() as u8 + 1;
        let mut c = Client::with_kind(n, self.now, publish);
        let offer = String::from_utf8(c.inbox.pop_front().unwrap()).unwrap();
        let grants = Grants::default();
        self.sfu
            .offer(self.now, c.pid, "room", grants, &offer)
            .unwrap();
        self.clients.push(c);
        self.clients.len() - 1
    }

    fn random(&mut self) -> f64 {
        // xorshift64*: deterministic loss pattern.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Moves every pending datagram and event once, then advances the clock by `dt`.
    fn step(&mut self, dt: Duration) {
        let sfu_addr: SocketAddr = SFU.parse().unwrap();
        while let Some(out) = self.sfu.poll_output() {
            match out {
                Output::Transmit {
                    destination,
                    contents,
                } => {
                    if let Some(c) = self.clients.iter_mut().find(|c| c.addr == destination) {
                        let input = Input::Receive(
                            self.now,
                            Receive {
                                proto: Protocol::Udp,
                                source: sfu_addr,
                                destination,
                                contents: contents.as_slice().try_into().unwrap(),
                            },
                        );
                        c.rtc.handle_input(input).unwrap();
                    }
                }
                Output::Event(pid, ev) => {
                    let c = self.clients.iter_mut().find(|c| c.pid == pid).unwrap();
                    match ev {
                        PeerEvent::Answer { sdp } => {
                            let answer = SdpAnswer::from_sdp_string(&sdp).unwrap();
                            c.rtc
                                .sdp_api()
                                .accept_answer(c.pending.take().unwrap(), answer)
                                .unwrap();
                        }
                        PeerEvent::Slots { slots } => c.slots.extend(slots),
                        PeerEvent::Offer { sdp } => {
                            c.offers.push(sdp.clone());
                            let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
                            let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                            let pid = c.pid;
                            self.sfu
                                .answer(self.now, pid, &answer.to_sdp_string())
                                .unwrap();
                        }
                        PeerEvent::Closed { reason } if self.record_close => {
                            self.closed = Some((pid, reason));
                        }
                        PeerEvent::Closed { reason } => panic!("{pid} closed: {reason:?}"),
                        _ => {}
                    }
                }
            }
        }
        let mut to_sfu = Vec::new();
        for c in &mut self.clients {
            loop {
                match c.rtc.poll_output().unwrap() {
                    str0m::Output::Timeout(_) => break,
                    str0m::Output::Transmit(t) => to_sfu.push((c.addr, Vec::from(t.contents))),
                    str0m::Output::Event(Event::Connected) => c.connected = true,
                    str0m::Output::Event(Event::KeyframeRequest(_)) => c.keyframe_requests += 1,
                    str0m::Output::Event(Event::MediaData(d)) => {
                        c.received.entry(d.mid).or_default().push(d.data.to_vec());
                        c.times.entry(d.mid).or_default().push(d.time);
                    }
                    str0m::Output::Event(_) => {}
                }
            }
        }
        for (from, data) in to_sfu {
            if self.loss > 0.0 && self.random() < self.loss || self.silenced == Some(from) {
                continue;
            }
            self.sfu.handle_receive(self.now, from, &data);
        }
        self.now += dt;
        if !self.driver_timing || self.sfu.poll_timeout().is_some_and(|t| t <= self.now) {
            self.sfu.handle_timeout(self.now);
        }
        for c in &mut self.clients {
            c.rtc.handle_input(Input::Timeout(self.now)).unwrap();
        }
    }

    fn step_driver(&mut self, dt: Duration) {
        self.driver_timing = true;
        self.record_close = true;
        self.step(dt);
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(Duration::from_millis(5));
        }
    }

    /// Client `i` writes one 20 ms Opus frame numbered `n`.
    fn speak(&mut self, i: usize, n: u32) {
        let now = self.now;
        let c = &mut self.clients[i];
        let mid = c.send_mid.unwrap();
        let w = c.rtc.writer(mid).unwrap();
        let pt = w.payload_params().next().unwrap().pt();
        w.write(
            pt,
            now,
            MediaTime::from_90khz(u64::from(n) * 1800),
            frame(n),
        )
        .unwrap();
    }
}

fn frame(n: u32) -> Vec<u8> {
    let mut f = vec![0xfc];
    f.extend_from_slice(&n.to_be_bytes());
    f.extend((0..60u8).map(|i| i ^ n as u8));
    f
}

fn received_frames(c: &Client) -> Vec<Vec<u8>> {
    c.received.values().flatten().cloned().collect()
}

#[test]
fn frames_reach_every_subscriber_unchanged_on_virtual_time() {
    let wall = std::time::Instant::now();
    let mut net = Net::new();
    let alice = net.join(true);
    let bob = net.join(false);
    let carol = net.join(false);
    net.run(Duration::from_secs(2));
    assert!(
        net.clients.iter().all(|c| c.connected),
        "ICE and DTLS completed"
    );
    for n in 0..100 {
        net.speak(alice, n);
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(200));
    for sub in [bob, carol] {
        let got = received_frames(&net.clients[sub]);
        assert!(
            got.len() >= 95,
            "subscriber {sub} got {} of 100 frames",
            got.len()
        );
        for f in &got {
            let n = u32::from_be_bytes(f[1..5].try_into().unwrap());
            assert_eq!(f, &frame(n), "frame {n} changed on the way");
        }
    }
    assert!(
        received_frames(&net.clients[alice]).is_empty(),
        "a publisher gets none of its own media"
    );
    println!("3.2 virtual seconds took {:?} of wall time", wall.elapsed());
}

#[test]
fn a_late_joiner_is_offered_the_room_and_receives_it() {
    let mut net = Net::new();
    let alice = net.join(true);
    net.run(Duration::from_secs(1));
    let dave = net.join(false);
    net.run(Duration::from_secs(1));
    for n in 0..50 {
        net.speak(alice, n);
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(200));
    let got = received_frames(&net.clients[dave]);
    assert!(got.len() >= 45, "late joiner got {} of 50", got.len());
}

#[test]
fn a_removed_publisher_stops_reaching_subscribers() {
    let mut net = Net::new();
    let alice = net.join(true);
    let bob = net.join(false);
    net.run(Duration::from_secs(1));
    for n in 0..10 {
        net.speak(alice, n);
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(100));
    let before = received_frames(&net.clients[bob]).len();
    assert!(before >= 9);
    let pid = net.clients[alice].pid;
    let now = net.now;
    net.sfu.remove(now, pid);
    net.run(Duration::from_millis(200));
    assert_eq!(net.sfu.peer_count(), 1);
    assert_eq!(net.sfu.routers()["room"].members(), &[net.clients[bob].pid]);
    assert_eq!(received_frames(&net.clients[bob]).len(), before);
}

#[test]
fn audio_survives_ten_percent_loss_upstream() {
    let mut net = Net::new();
    let alice = net.join(true);
    let bob = net.join(false);
    net.run(Duration::from_secs(2));
    net.loss = 0.10;
    for n in 0..200 {
        net.speak(alice, n);
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(300));
    let got = received_frames(&net.clients[bob]).len();
    // Opus has no retransmission: what is lost upstream stays lost, the rest keeps flowing.
    assert!(
        (150..=200).contains(&got),
        "bob got {got} of 200 frames at 10 % loss"
    );
}

#[test]
fn mdns_candidates_are_ignored_and_garbage_is_refused() {
    let mut net = Net::new();
    let alice = net.join(true);
    let pid = net.clients[alice].pid;
    let now = net.now;
    net.sfu
        .add_candidate(now, pid, "candidate:1 1 udp 2122260223 3f1b2c4d-1111-2222-3333-444455556666.local 54321 typ host")
        .expect("an mDNS candidate is accepted and ignored");
    assert!(net
        .sfu
        .add_candidate(now, pid, "candidate:nonsense")
        .is_err());
    // Garbage datagrams are dropped and counted, and the call goes on.
    let before = net.sfu.unrouted_datagrams;
    net.sfu
        .handle_receive(now, "10.9.9.9:1".parse().unwrap(), b"\x00\x01garbage");
    assert_eq!(net.sfu.unrouted_datagrams, before + 1);
    net.run(Duration::from_secs(1));
    assert!(net.clients[alice].connected);
}

/// Runs for `d`, client `i` writing a 30 fps video frame every 33 ms (VP8 delta frames: the
/// first byte's low bit set).
fn run_with_video(net: &mut Net, i: usize, d: Duration) {
    let end = net.now + d;
    let mut n: u32 = 0;
    while net.now < end {
        let now = net.now;
        let c = &mut net.clients[i];
        // Nothing to write to until the SFU's answer is applied.
        if let Some(w) = c.rtc.writer(c.send_mid.unwrap()) {
            let pt = w.payload_params().next().unwrap().pt();
            let mut frame = vec![0x31, 0x00, 0x00];
            frame.extend((0..200u32).map(|b| (b ^ n) as u8));
            w.write(pt, now, MediaTime::from_90khz(u64::from(n) * 3000), frame)
                .unwrap();
            n += 1;
        }
        for _ in 0..6 {
            net.step(Duration::from_micros(5500));
        }
    }
}

#[test]
fn a_keyframe_request_inside_the_throttle_is_postponed_not_dropped() {
    let mut net = Net::new();
    let alice = net.join_with(Some(MediaKind::Video));
    run_with_video(&mut net, alice, Duration::from_secs(1));
    let before = net.clients[alice].keyframe_requests;
    // Two subscribers arrive together: each new video consumer asks Alice for a keyframe, the
    // second inside KEYFRAME_MIN_INTERVAL of the first.
    net.join(false);
    net.join(false);
    run_with_video(&mut net, alice, Duration::from_millis(300));
    let early = net.clients[alice].keyframe_requests - before;
    assert!(
        early >= 1,
        "the first subscriber's request goes out at once"
    );
    run_with_video(&mut net, alice, Duration::from_millis(700));
    let total = net.clients[alice].keyframe_requests - before;
    assert!(
        total >= 2,
        "the second subscriber's request follows when the throttle ends ({early} then {total})"
    );
}

/// The frames `c` received on `mid` from the publisher whose frames are numbered by `frame`.
fn frames_on(c: &Client, mid: Mid) -> Vec<u32> {
    c.received
        .get(&mid)
        .map(|fs| {
            fs.iter()
                .map(|f| u32::from_be_bytes(f[1..5].try_into().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_departed_publishers_slot_carries_the_next_publisher_without_an_offer() {
    let mut net = Net::new();
    let alice = net.join(true);
    let bob = net.join(false);
    net.run(Duration::from_secs(1));
    for n in 0..20 {
        net.speak(alice, n);
        net.run(Duration::from_millis(20));
    }
    let offers = net.clients[bob].offers.len();
    assert_eq!(offers, 1, "bob was offered alice's track");
    let slot = net.clients[bob].slots[0].clone();
    assert_eq!(
        slot.track.map(|t| t.participant),
        Some(net.clients[alice].pid),
        "the slot names alice"
    );
    let mid = Mid::from(slot.mid.as_str());
    let alice_frames = frames_on(&net.clients[bob], mid).len();
    assert!(
        alice_frames >= 18,
        "bob got {alice_frames} of alice's 20 frames"
    );
    let last_alice_time = *net.clients[bob].times[&mid].last().unwrap();

    let now = net.now;
    let pid = net.clients[alice].pid;
    net.sfu.remove(now, pid);
    net.run(Duration::from_millis(100));
    assert_eq!(
        net.clients[bob]
            .slots
            .last()
            .map(|s| (s.mid.clone(), s.track)),
        Some((slot.mid.clone(), None)),
        "bob is told the slot is free"
    );
    let carol = net.join(true);
    net.run(Duration::from_secs(1));
    for n in 1000..1020 {
        net.speak(carol, n);
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(100));
    let bob_c = &net.clients[bob];
    assert_eq!(
        bob_c.offers.len(),
        offers,
        "no new offer: the free slot was reused"
    );
    let last = bob_c.slots.last().unwrap();
    assert_eq!(last.mid, slot.mid);
    assert_eq!(
        last.track.map(|t| t.participant),
        Some(net.clients[carol].pid)
    );
    let carol_frames: Vec<u32> = frames_on(bob_c, mid)
        .into_iter()
        .filter(|n| *n >= 1000)
        .collect();
    assert!(
        carol_frames.len() >= 18,
        "bob got {} of carol's 20 frames on the reused slot",
        carol_frames.len()
    );
    // Carol's own RTP times start far below Alice's last one: the slot's times go on instead.
    let times = &bob_c.times[&mid];
    let first_carol = times[alice_frames];
    assert!(
        first_carol > last_alice_time,
        "timestamps go on from the last frame ({last_alice_time:?} then {first_carol:?})"
    );
}

#[test]
fn churn_leaves_a_steady_subscribers_sdp_bounded_by_the_tracks_sent_at_once() {
    let mut net = Net::new();
    let bob = net.join(false);
    net.run(Duration::from_millis(500));
    // 40 publishers come and go, at most two at a time.
    let mut present: Vec<usize> = Vec::new();
    for round in 0..40u32 {
        let i = net.join_with(Some(if round % 2 == 0 {
            MediaKind::Audio
        } else {
            MediaKind::Video
        }));
        present.push(i);
        net.run(Duration::from_millis(300));
        if present.len() > 2 {
            let gone = present.remove(0);
            let (now, pid) = (net.now, net.clients[gone].pid);
            net.sfu.remove(now, pid);
            net.run(Duration::from_millis(100));
        }
    }
    let bob_c = &net.clients[bob];
    let largest = bob_c.offers.iter().map(String::len).max().unwrap_or(0);
    let m_lines = bob_c
        .offers
        .last()
        .map(|o| o.matches("\nm=").count())
        .unwrap_or(0);
    println!(
        "{} offers, largest {largest} bytes, {m_lines} m-lines",
        bob_c.offers.len()
    );
    // Three at once at most (a newcomer before the oldest leaves): two of each kind, plus the
    // client's own data channel.
    assert!(
        m_lines <= 5,
        "bob's SDP has {m_lines} m-lines after 40 publishers came and went"
    );
    assert!(largest < 12_000, "bob's largest offer is {largest} bytes");
}

#[test]
fn a_publisher_that_closes_its_connection_is_closed_even_when_only_due_timers_fire() {
    let mut net = Net::new();
    let alice = net.join(true);
    let bob = net.join(true);
    net.run(Duration::from_secs(2));
    assert!(net.clients[alice].connected && net.clients[bob].connected);
    // Alice's side closes (DTLS close alert), then says nothing more.
    net.clients[alice].rtc.close().unwrap();
    net.step(Duration::from_millis(5));
    net.silenced = Some(net.clients[alice].addr);
    // The core is woken only when it asked to be, as the worker does.
    let end = net.now + Duration::from_secs(40);
    while net.closed.is_none() && net.now < end {
        let due = net
            .sfu
            .poll_timeout()
            .unwrap_or(net.now + Duration::from_secs(1));
        let dt = due
            .saturating_duration_since(net.now)
            .max(Duration::from_millis(1));
        net.step_driver(dt);
    }
    assert_eq!(
        net.closed.map(|(pid, _)| pid),
        Some(net.clients[alice].pid),
        "alice's connection was closed"
    );
}
