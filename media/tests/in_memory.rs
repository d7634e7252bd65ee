//! The SFU core over an in-memory network, on virtual time: str0m client peers stand in for
//! browsers, datagrams are moved by hand, and the clock only moves when the test says so (the
//! harness in `harness/mod.rs`, shared with `simulcast.rs` and the criterion bench).

mod harness;

use std::time::Duration;

use harness::{Client, Net, Publish};
use str0m::media::{MediaKind, MediaTime, Mid};

/// The shapes of client these tests use.
trait Room {
    /// A client that publishes audio (or nothing) and subscribes.
    fn join_audio(&mut self, publish: bool) -> usize;
    /// A client that publishes one track of `kind` (or nothing) and subscribes.
    fn join_kind(&mut self, kind: Option<MediaKind>) -> usize;
    /// Client `i` writes one 20 ms Opus frame numbered `n`.
    fn speak(&mut self, i: usize, n: u32);
    /// A step with the core's timers fired only when due, and closes recorded.
    fn step_driver(&mut self, dt: Duration);
}

impl Room for Net {
    fn join_audio(&mut self, publish: bool) -> usize {
        self.join(if publish {
            Publish::AUDIO
        } else {
            Publish::NOTHING
        })
    }

    fn join_kind(&mut self, kind: Option<MediaKind>) -> usize {
        self.join(match kind {
            Some(MediaKind::Audio) => Publish::AUDIO,
            Some(MediaKind::Video) => Publish::VIDEO,
            None => Publish::NOTHING,
        })
    }

    fn speak(&mut self, i: usize, n: u32) {
        self.write_audio(
            i,
            MediaTime::from_90khz(u64::from(n) * 1800),
            None,
            frame(n),
        );
    }

    fn step_driver(&mut self, dt: Duration) {
        self.driver_timing = true;
        self.record_close = true;
        self.step(dt);
    }
}

/// The RTP times of the frames `c` received on `mid`.
fn times(c: &Client, mid: Mid) -> Vec<MediaTime> {
    c.frames_on(mid).map(|r| r.time).collect()
}

fn frame(n: u32) -> Vec<u8> {
    let mut f = vec![0xfc];
    f.extend_from_slice(&n.to_be_bytes());
    f.extend((0..60u8).map(|i| i ^ n as u8));
    f
}

fn received_frames(c: &Client) -> Vec<Vec<u8>> {
    c.received.iter().map(|r| r.data.clone()).collect()
}

#[test]
fn frames_reach_every_subscriber_unchanged_on_virtual_time() {
    let wall = std::time::Instant::now();
    let mut net = Net::new();
    let alice = net.join_audio(true);
    let bob = net.join_audio(false);
    let carol = net.join_audio(false);
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
    let alice = net.join_audio(true);
    net.run(Duration::from_secs(1));
    let dave = net.join_audio(false);
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
    let alice = net.join_audio(true);
    let bob = net.join_audio(false);
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
    let alice = net.join_audio(true);
    let bob = net.join_audio(false);
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
    let alice = net.join_audio(true);
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
        // Nothing to write to until the SFU's answer is applied.
        let mut frame = vec![0x31, 0x00, 0x00];
        frame.extend((0..200u32).map(|b| (b ^ n) as u8));
        if net.write_video(i, None, MediaTime::from_90khz(u64::from(n) * 3000), frame) {
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
    let alice = net.join_kind(Some(MediaKind::Video));
    run_with_video(&mut net, alice, Duration::from_secs(1));
    let before = net.clients[alice].keyframe_requests;
    // Two subscribers arrive together: each new video consumer asks Alice for a keyframe, the
    // second inside KEYFRAME_MIN_INTERVAL of the first.
    net.join_audio(false);
    net.join_audio(false);
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
    c.frames_on(mid)
        .map(|r| u32::from_be_bytes(r.data[1..5].try_into().unwrap()))
        .collect()
}

#[test]
fn a_departed_publishers_slot_carries_the_next_publisher_without_an_offer() {
    let mut net = Net::new();
    let alice = net.join_audio(true);
    let bob = net.join_audio(false);
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
    let last_alice_time = *times(&net.clients[bob], mid).last().unwrap();

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
    let carol = net.join_audio(true);
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
    let times = times(bob_c, mid);
    let first_carol = times[alice_frames];
    assert!(
        first_carol > last_alice_time,
        "timestamps go on from the last frame ({last_alice_time:?} then {first_carol:?})"
    );
}

#[test]
fn churn_leaves_a_steady_subscribers_sdp_bounded_by_the_tracks_sent_at_once() {
    let mut net = Net::new();
    let bob = net.join_audio(false);
    net.run(Duration::from_millis(500));
    // 40 publishers come and go, at most two at a time.
    let mut present: Vec<usize> = Vec::new();
    for round in 0..40u32 {
        let i = net.join_kind(Some(if round % 2 == 0 {
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
    // Three at once at most (a newcomer before the oldest leaves): two of each kind, the spares
    // an offer adds with them (at least two of a kind, see `spare_slots`), and the client's own
    // data channel. Without reuse it would be 41.
    assert!(
        m_lines <= 2 * (2 + 2) + 1,
        "bob's SDP has {m_lines} m-lines after 40 publishers came and went"
    );
    assert!(largest < 20_000, "bob's largest offer is {largest} bytes");
}

#[test]
fn a_publisher_that_closes_its_connection_is_closed_even_when_only_due_timers_fire() {
    let mut net = Net::new();
    let alice = net.join_audio(true);
    let bob = net.join_audio(true);
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

/// The late-packet counter of one kind, read as an operator would (the metrics text).
fn late_dropped(net: &Net, kind: &str) -> u64 {
    let registry = prometheus::Registry::new();
    net.sfu.metrics().register(&registry).unwrap();
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "huddle_media_late_packets_dropped_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == kind))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[test]
fn audio_that_arrives_too_late_is_dropped_and_counted_not_forwarded() {
    let mut net = Net::new();
    let alice = net.join_audio(true);
    let bob = net.join_audio(false);
    net.run(Duration::from_secs(2));
    let mut n = 0;
    for _ in 0..50 {
        net.speak(alice, n);
        n += 1;
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(100));
    let on_time = received_frames(&net.clients[bob]).len();
    assert!(on_time >= 48, "bob got {on_time} of 50 frames on time");
    assert_eq!(late_dropped(&net, "audio"), 0, "nothing on time is dropped");

    // Alice's packets now queue for 400 ms on their way (an overloaded worker's socket would
    // hold them the same way): they are of no use to a listener any more.
    net.delay = Some((net.clients[alice].addr, Duration::from_millis(400)));
    for _ in 0..50 {
        net.speak(alice, n);
        n += 1;
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(500));
    let late = received_frames(&net.clients[bob]).len() - on_time;
    let dropped = late_dropped(&net, "audio");
    assert!(late <= 2, "bob got {late} frames 400 ms late");
    assert!(dropped >= 48, "{dropped} late packets counted");

    // A path that stays this slow becomes the new normal within two measuring windows.
    for _ in 0..600 {
        net.speak(alice, n);
        n += 1;
        net.run(Duration::from_millis(20));
    }
    net.run(Duration::from_millis(500));
    let after = received_frames(&net.clients[bob]).len() - on_time - late;
    assert!(
        after >= 50,
        "bob gets the steady 400 ms path again ({after} frames)"
    );
}
