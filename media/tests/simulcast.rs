//! Simulcast, pausing and dynacast over an in-memory network on virtual time (the harness in
//! `harness/mod.rs`, with a str0m client publishing a three-layer VP8 simulcast track).
//!
//! The publisher answers keyframe requests per rid and keyframes are otherwise never sent, so a
//! subscriber that received a layer's frames got them from one of its keyframes on.

mod harness;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use harness::{Client, Net, Publish};
use huddle_media::{Sfu, Source, TrackId, TrackKind};
use str0m::media::{KeyframeRequestKind, MediaTime};

/// rid, frame size on the wire, picture size in its keyframes.
const LAYERS: [(&str, usize, (u16, u16)); 3] = [
    ("q", 200, (160, 120)),
    ("h", 800, (320, 240)),
    ("f", 2400, (640, 480)),
];
const RIDS: &[&str] = &["q", "h", "f"];

/// A received video frame: which layer it came from and whether it was a keyframe.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Got {
    layer: u8,
    key: bool,
    at: Instant,
}

/// The video frames `c` received, in order (byte 10 of each names its layer, see `vp8_frame`).
fn video(c: &Client) -> Vec<Got> {
    c.received
        .iter()
        .filter(|r| r.data.len() > 10 && r.data[10].is_ascii_lowercase())
        .map(|r| Got {
            layer: r.data[10],
            key: r.keyframe,
            at: r.at,
        })
        .collect()
}

/// The audio frames `c` received.
fn audio_frames(c: &Client) -> usize {
    c.received.len() - video(c).len()
}

/// Layers `c` received from `since` on.
fn layers_since(c: &Client, since: Instant) -> Vec<u8> {
    video(c)
        .iter()
        .filter(|g| g.at >= since)
        .map(|g| g.layer)
        .collect()
}

/// The harness's network with a simulcast publisher's sending loop.
struct Room {
    net: Net,
    metrics: huddle_media::MediaMetrics,
    frame_no: u32,
    /// Audio frames sent (20 ms each): their RTP time follows the clock, as a real one does.
    audio_no: u32,
    /// At most how many video RTP packets publishers have written (a frame over 1,100 bytes
    /// counted as three).
    video_packets_upper: u64,
}

impl Deref for Room {
    type Target = Net;
    fn deref(&self) -> &Net {
        &self.net
    }
}

impl DerefMut for Room {
    fn deref_mut(&mut self) -> &mut Net {
        &mut self.net
    }
}

impl Room {
    fn new() -> Room {
        let metrics = huddle_media::MediaMetrics::new();
        let mut sfu = Sfu::with_metrics(harness::config(), metrics.clone());
        // str0m's estimator does not model this zero-delay network (its estimate sinks to
        // what is sent); the tests set the downlink with set_max_bitrate instead.
        sfu.use_bandwidth_estimate = false;
        Room {
            net: Net::with_sfu(sfu),
            metrics,
            frame_no: 0,
            audio_no: 0,
            video_packets_upper: 0,
        }
    }

    /// A participant publishing audio and three-layer simulcast video, or nothing.
    fn join(&mut self, publish: bool) -> usize {
        self.net.join(if publish {
            Publish::simulcast(RIDS)
        } else {
            Publish::NOTHING
        })
    }

    /// Runs for `d`; publisher `p` sends an audio frame every 20 ms and a frame on each active
    /// layer every 30 ms.
    fn run(&mut self, p: Option<usize>, d: Duration) {
        let end = self.now + d;
        let mut t = 0u32;
        while self.now < end {
            if let Some(p) = p {
                if t.is_multiple_of(20) {
                    self.send_audio(p);
                }
                if t.is_multiple_of(30) {
                    self.send_video(p);
                }
            }
            t += 1;
            self.step(Duration::from_millis(1));
        }
    }

    fn send_audio(&mut self, i: usize) {
        self.audio_no += 1;
        let time = MediaTime::from_90khz(u64::from(self.audio_no) * 1800);
        // -30 dBov: speech.
        self.net
            .write_audio(i, time, Some(-30), vec![0xfc, 1, 2, 3]);
    }

    fn send_video(&mut self, i: usize) {
        self.frame_no += 1;
        let time = MediaTime::from_90khz(u64::from(self.frame_no) * 3000);
        for (rid, len, (w, h)) in LAYERS {
            if !self.clients[i].active.contains(rid) {
                continue;
            }
            let key = self.net.clients[i].owe_keyframe.remove(rid);
            let frame = vp8_frame(key, rid.as_bytes()[0], len, w, h);
            if self.net.write_video(i, Some(rid), time, frame) {
                self.video_packets_upper += if len > 1100 { 3 } else { 1 };
            } else if key {
                self.net.clients[i].owe_keyframe.insert(rid.to_string());
            }
        }
    }

    fn sizes(&mut self, sub: usize, track: TrackId, w: u32, h: u32) {
        let (now, pid) = (self.now, self.clients[sub].pid);
        self.sfu
            .set_video_sizes(now, pid, &[(track, w, h)])
            .unwrap();
    }
}

/// A VP8-shaped frame: a keyframe carries the start code and picture size (RFC 6386 9.1);
/// byte 10 names its layer.
fn vp8_frame(key: bool, layer: u8, len: usize, w: u16, h: u16) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0] = if key { 0x10 } else { 0x11 };
    f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
    f[6..8].copy_from_slice(&w.to_le_bytes());
    f[8..10].copy_from_slice(&h.to_le_bytes());
    f[10] = layer;
    f
}

/// Every change of layer in what a subscriber received (and its very first frame) is a
/// keyframe of the new layer.
fn assert_switches_only_at_keyframes(got: &[Got], who: &str) {
    let mut prev: Option<u8> = None;
    for (i, g) in got.iter().enumerate() {
        if prev != Some(g.layer) {
            assert!(
                g.key,
                "{who}: frame {i} switched from {prev:?} to layer {} without a keyframe",
                g.layer as char
            );
        }
        prev = Some(g.layer);
    }
}

fn last_layer(c: &Client) -> Option<char> {
    video(c).last().map(|g| g.layer as char)
}

fn room() -> (Room, usize, usize, usize, TrackId) {
    let mut net = Room::new();
    let alice = net.join(true);
    let bob = net.join(false);
    let carol = net.join(false);
    net.run(Some(alice), Duration::from_secs(2));
    assert!(net.clients.iter().all(|c| c.connected));
    let track = net.clients[alice].video_track();
    (net, alice, bob, carol, track)
}

#[test]
fn each_subscriber_gets_the_layer_its_tile_needs_and_switches_only_at_keyframes() {
    let (mut net, alice, bob, carol, track) = room();
    assert!(net.clients[alice]
        .tracks
        .iter()
        .any(|t| t.2 == Source::Camera && t.1 == TrackKind::Video));
    net.sizes(bob, track, 1280, 720);
    net.sizes(carol, track, 150, 110);
    net.run(Some(alice), Duration::from_secs(2));
    let t = net.now;
    net.run(Some(alice), Duration::from_secs(1));
    let b = layers_since(&net.clients[bob], t);
    let c = layers_since(&net.clients[carol], t);
    assert!(
        b.len() >= 25 && b.iter().all(|&l| l == b'f'),
        "bob (large tile) got {:?}",
        String::from_utf8_lossy(&b)
    );
    assert!(
        c.len() >= 25 && c.iter().all(|&l| l == b'q'),
        "carol (small tile) got {:?}",
        String::from_utf8_lossy(&c)
    );

    // Carol enlarges her tile: she moves up to the middle layer, at one of its keyframes.
    net.sizes(carol, track, 300, 230);
    net.run(Some(alice), Duration::from_secs(2));
    assert_eq!(last_layer(&net.clients[carol]), Some('h'));
    for (who, i) in [("bob", bob), ("carol", carol)] {
        assert_switches_only_at_keyframes(&video(&net.clients[i]), who);
    }
    // Nobody watches the quarter layer any more: the publisher was told to pause it.
    assert_eq!(
        net.clients[alice].layer_events.last().map(|a| {
            let mut a = a.clone();
            a.sort();
            a
        }),
        Some(vec!["f".to_string(), "h".to_string()])
    );
}

#[test]
fn a_low_bandwidth_subscriber_gets_the_low_layer_and_audio_first() {
    let (mut net, alice, bob, carol, track) = room();
    net.sizes(bob, track, 1280, 720);
    net.sizes(carol, track, 1280, 720);
    let (now, bob_pid) = (net.now, net.clients[bob].pid);
    // Bob's downlink takes 150 kbit/s: the quarter layer (48 kbit/s) and audio fit, the others not.
    net.sfu
        .set_max_bitrate(now, bob_pid, Some(150_000))
        .unwrap();
    net.run(Some(alice), Duration::from_secs(3));
    let t = net.now;
    net.run(Some(alice), Duration::from_secs(1));
    let b = layers_since(&net.clients[bob], t);
    let c = layers_since(&net.clients[carol], t);
    assert!(
        b.len() >= 25 && b.iter().all(|&l| l == b'q'),
        "bob (150 kbit/s) got {:?}",
        String::from_utf8_lossy(&b)
    );
    assert!(
        c.iter().all(|&l| l == b'f') && !c.is_empty(),
        "carol got {:?}",
        String::from_utf8_lossy(&c)
    );

    // Below what any video layer needs: video pauses, audio keeps flowing.
    let now = net.now;
    net.sfu.set_max_bitrate(now, bob_pid, Some(45_000)).unwrap();
    net.run(Some(alice), Duration::from_millis(500));
    let (t, audio_before) = (net.now, audio_frames(&net.clients[bob]));
    net.run(Some(alice), Duration::from_secs(1));
    assert!(
        layers_since(&net.clients[bob], t).is_empty(),
        "video still sent to bob"
    );
    let audio = audio_frames(&net.clients[bob]) - audio_before;
    assert!(
        audio >= 45,
        "bob got {audio} audio frames in 1 s with video paused"
    );

    // Bandwidth is back: bob climbs to the full layer, at its keyframe.
    let now = net.now;
    net.sfu.set_max_bitrate(now, bob_pid, None).unwrap();
    net.run(Some(alice), Duration::from_secs(2));
    assert_eq!(last_layer(&net.clients[bob]), Some('f'));
    assert_switches_only_at_keyframes(&video(&net.clients[bob]), "bob");
}

#[test]
fn a_hidden_tile_gets_nothing_and_unwatched_layers_are_paused_at_the_publisher() {
    let mut net = Room::new();
    let alice = net.join(true);
    let bob = net.join(false);
    net.run(Some(alice), Duration::from_secs(2));
    let track = net.clients[alice].video_track();
    net.sizes(bob, track, 160, 120);
    net.run(Some(alice), Duration::from_secs(2));
    assert_eq!(last_layer(&net.clients[bob]), Some('q'));
    assert_eq!(
        net.clients[alice].layer_events.last(),
        Some(&vec!["q".to_string()])
    );

    // Bob scrolls alice off screen: nothing more is forwarded, and alice stops encoding.
    net.sizes(bob, track, 0, 0);
    net.run(Some(alice), Duration::from_millis(200));
    let t = net.now;
    let audio_before = audio_frames(&net.clients[bob]);
    net.run(Some(alice), Duration::from_secs(2));
    assert!(
        layers_since(&net.clients[bob], t).is_empty(),
        "a hidden tile still gets video"
    );
    assert!(
        audio_frames(&net.clients[bob]) - audio_before >= 90,
        "audio goes on"
    );
    assert_eq!(
        net.clients[alice].layer_events.last(),
        Some(&Vec::<String>::new())
    );

    // Back on screen: the layer is resumed, and bob starts again at a keyframe.
    net.sizes(bob, track, 320, 240);
    net.run(Some(alice), Duration::from_secs(2));
    assert_eq!(last_layer(&net.clients[bob]), Some('h'));
    assert_eq!(
        net.clients[alice].layer_events.last(),
        Some(&vec!["h".to_string()])
    );
    assert_switches_only_at_keyframes(&video(&net.clients[bob]), "bob");
}

#[test]
fn the_talking_participant_is_announced_to_the_room() {
    let mut net = Room::new();
    let alice = net.join(true);
    let bob = net.join(false);
    net.run(None, Duration::from_secs(1));
    let end = net.now + Duration::from_secs(1);
    while net.now < end {
        net.send_audio(alice);
        for _ in 0..4 {
            net.step(Duration::from_millis(5));
        }
    }
    let alice_pid = net.clients[alice].pid;
    for i in [alice, bob] {
        let last = net.clients[i].speakers.last();
        assert_eq!(
            last,
            Some(&vec![alice_pid]),
            "client {i} speaker updates: {:?}",
            net.clients[i].speakers
        );
        assert!(net.clients[i].speakers.len() <= 4, "updates only on change");
    }
    // Alice stops talking: after the hold, everyone hears that nobody speaks.
    net.run(None, Duration::from_secs(2));
    assert_eq!(net.clients[bob].speakers.last(), Some(&vec![]));
}

#[test]
fn after_a_congestion_downgrade_layers_go_up_again_only_after_a_hold() {
    let (mut net, alice, bob, _carol, track) = room();
    net.sizes(bob, track, 1280, 720);
    net.run(Some(alice), Duration::from_secs(2));
    assert_eq!(last_layer(&net.clients[bob]), Some('f'));
    let (now, bob_pid) = (net.now, net.clients[bob].pid);
    net.sfu
        .set_max_bitrate(now, bob_pid, Some(150_000))
        .unwrap();
    net.run(Some(alice), Duration::from_secs(2));
    assert_eq!(last_layer(&net.clients[bob]), Some('q'));

    // The bandwidth comes back at once (an estimate bouncing up): the layer stays down for the
    // hold (8 s from the downgrade) instead of flapping up and down.
    let now = net.now;
    net.sfu.set_max_bitrate(now, bob_pid, None).unwrap();
    let t = net.now;
    net.run(Some(alice), Duration::from_secs(4));
    let held = layers_since(&net.clients[bob], t);
    assert!(
        held.len() >= 100 && held.iter().all(|&l| l == b'q'),
        "bob went up during the hold: {:?}",
        String::from_utf8_lossy(&held)
    );
    net.run(Some(alice), Duration::from_secs(5));
    assert_eq!(
        last_layer(&net.clients[bob]),
        Some('f'),
        "bob is back up after the hold"
    );
    assert_switches_only_at_keyframes(&video(&net.clients[bob]), "bob");
}

#[test]
fn a_subscriber_that_keeps_asking_for_keyframes_is_slowed_down_alone() {
    let (mut net, alice, bob, carol, track) = room();
    net.sizes(bob, track, 1280, 720);
    net.sizes(carol, track, 1280, 720);
    net.run(Some(alice), Duration::from_secs(2));
    let ask = |net: &mut Net, who: usize| {
        let mid = net.clients[who].recv_video[0];
        let mut w = net.clients[who]
            .rtc
            .writer(mid)
            .expect("a receiving writer");
        w.request_keyframe(None, KeyframeRequestKind::Pli)
            .expect("request a keyframe");
    };
    assert!(!net.clients[bob].recv_video.is_empty());
    // Bob's decoder never gets going (another passphrase, say): a PLI every 100 ms for 10 s.
    let before = net.clients[alice].keyframe_requests;
    for _ in 0..100 {
        ask(&mut net, bob);
        net.run(Some(alice), Duration::from_millis(100));
    }
    let passed = net.clients[alice].keyframe_requests - before;
    // Without the budget the 500 ms throttle alone would pass ~20.
    assert!(
        (1..=9).contains(&passed),
        "alice was asked for {passed} keyframes in 10 s of bob's storm"
    );
    // Carol asks once: she is not held back by bob's storm.
    net.run(Some(alice), Duration::from_millis(600));
    let before = net.clients[alice].keyframe_requests;
    ask(&mut net, carol);
    net.run(Some(alice), Duration::from_millis(600));
    assert!(
        net.clients[alice].keyframe_requests > before,
        "carol's single request reached alice"
    );
}

#[test]
fn incoming_simulcast_packets_are_counted_once_per_layer() {
    let (mut net, alice, bob, _carol, track) = room();
    net.sizes(bob, track, 1280, 720);
    net.run(Some(alice), Duration::from_secs(5));
    let registry = prometheus::Registry::new();
    net.metrics.register(&registry).unwrap();
    let counted: u64 = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "huddle_rtp_packets_total")
        .flat_map(|f| f.get_metric().to_vec())
        .filter(|m| {
            let labels: Vec<(&str, &str)> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            labels.contains(&("direction", "in")) && labels.contains(&("kind", "video"))
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum();
    assert!(counted > 0, "video packets in were counted");
    assert!(
        counted <= net.video_packets_upper,
        "counted {counted} incoming video packets; the publisher wrote at most {}",
        net.video_packets_upper
    );
}

#[test]
fn a_recorded_room_hands_over_the_best_layer_and_keeps_it_on_while_only_a_small_one_is_watched() {
    let (mut net, alice, bob, carol, track) = room();
    net.sizes(bob, track, 160, 120);
    net.sizes(carol, track, 160, 120);
    net.run(Some(alice), Duration::from_secs(2));
    assert_eq!(
        net.clients[alice].layer_events.last(),
        Some(&vec!["q".to_string()]),
        "only the small layer is watched"
    );
    let dropped = prometheus::IntCounter::new("d", "d").unwrap();
    let (tap, rx) = huddle_media::recording::RecordTap::new(100_000, dropped.clone());
    let now = net.now;
    net.sfu.set_recording(now, "room", Some(tap));
    net.run(Some(alice), Duration::from_secs(3));
    let mut active = net.clients[alice].layer_events.last().cloned().unwrap();
    active.sort();
    assert_eq!(active, ["f", "q"], "the recording keeps the full layer on");
    let got: Vec<_> = rx.try_iter().collect();
    let audio = got.iter().filter(|p| p.kind == TrackKind::Audio).count();
    assert!(audio >= 140, "audio handed over: {audio} in 3 s");
    let video: Vec<_> = got.iter().filter(|p| p.kind == TrackKind::Video).collect();
    assert!(!video.is_empty());
    // Once the full layer is back, nothing else is handed over, and it starts at a keyframe.
    let first_f = video
        .iter()
        .position(|p| p.layer == 2)
        .expect("the full layer recorded");
    assert!(video[first_f..].iter().all(|p| p.layer == 2));
    assert!(vp8_key_start(&video[first_f].payload), "a keyframe first");
    assert_eq!(dropped.get(), 0);

    // Stopped: nothing more, and the unwatched layer may pause again.
    let now = net.now;
    net.sfu.set_recording(now, "room", None);
    net.run(Some(alice), Duration::from_secs(2));
    assert_eq!(rx.try_iter().count(), 0);
    assert!(
        rx.recv().is_err(),
        "the tap is let go of: the recording's thread ends"
    );
    assert_eq!(
        net.clients[alice].layer_events.last(),
        Some(&vec!["q".to_string()])
    );
}

/// Whether an RTP VP8 payload starts a keyframe (RFC 7741 descriptor, then the frame's P bit).
fn vp8_key_start(p: &[u8]) -> bool {
    let mut at = 1;
    if p[0] & 0x80 != 0 {
        let x = p[1];
        at = 2;
        if x & 0x80 != 0 {
            at += if p[at] & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    p[0] & 0x10 != 0 && p[at] & 1 == 0
}
