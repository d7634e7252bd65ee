//! Receive-only viewers (WHEP) on the in-memory network: a viewer's m-lines are fixed by its
//! one offer, it is never made an offer, and its video m-line follows the active speaker.

mod harness;

use std::time::Duration;

use harness::{Net, Publish};
use huddle_media::Follow;
use str0m::media::{MediaTime, Mid};

/// A VP8-shaped frame numbered `n` from publisher `who` (byte 10), a keyframe every 30th.
fn vp8(who: u8, n: u32) -> Vec<u8> {
    let mut f = vec![0u8; 300];
    f[0] = if n.is_multiple_of(30) { 0x10 } else { 0x11 };
    f[3..6].copy_from_slice(&[0x9d, 0x01, 0x2a]);
    f[6..8].copy_from_slice(&640u16.to_le_bytes());
    f[8..10].copy_from_slice(&360u16.to_le_bytes());
    f[10] = who;
    f[11..15].copy_from_slice(&n.to_be_bytes());
    f
}

/// An Opus-shaped frame from `who` (byte 1).
fn opus(who: u8, n: u32) -> Vec<u8> {
    let mut f = vec![0xfc, who];
    f.extend_from_slice(&n.to_be_bytes());
    f.extend(0..40u8);
    f
}

/// Runs for `d` with every publisher in `pubs` writing 50 audio and 30 video frames a second;
/// `loud` speaks (audio level -20 dBov), the others are quiet (-127).
fn run(net: &mut Net, pubs: &[usize], loud: Option<usize>, n: &mut u32, d: Duration) {
    let end = net.now + d;
    while net.now < end {
        for &p in pubs {
            let level = if Some(p) == loud { -20 } else { -127 };
            let who = p as u8 + 1;
            net.write_audio(
                p,
                MediaTime::from_90khz(u64::from(*n) * 1800),
                Some(level),
                opus(who, *n),
            );
            if *n % 5 < 3 {
                let v = *n / 5 * 3 + *n % 5;
                net.write_video(
                    p,
                    None,
                    MediaTime::from_90khz(u64::from(v) * 3000),
                    vp8(who, v),
                );
            }
        }
        *n += 1;
        for _ in 0..4 {
            net.step(Duration::from_millis(5));
        }
    }
}

/// Who sent the last `k` frames on `mid` the viewer received, as seen in byte `at`.
fn senders(net: &Net, viewer: usize, mid: Mid, at: usize, k: usize) -> Vec<u8> {
    let got: Vec<u8> = net.clients[viewer]
        .frames_on(mid)
        .map(|r| r.data.get(at).copied().unwrap_or(0))
        .collect();
    got[got.len().saturating_sub(k)..].to_vec()
}

#[test]
fn a_viewer_sees_the_active_speaker_and_is_never_offered_anything() {
    let mut net = Net::new();
    let av = Publish {
        audio: true,
        video: Some(&[]),
    };
    let alice = net.join(av);
    let bob = net.join(av);
    let (viewer, audio, video) = net.join_viewer(1, 1, Follow::ActiveSpeaker);
    let mut n = 0;
    run(
        &mut net,
        &[alice, bob],
        Some(alice),
        &mut n,
        Duration::from_secs(3),
    );
    assert!(net.clients[viewer].connected, "the viewer connected");
    let (a, b) = (alice as u8 + 1, bob as u8 + 1);
    let v = senders(&net, viewer, video[0], 10, 20);
    assert!(
        v.len() >= 10 && v.iter().all(|w| *w == a),
        "alice speaks: her video ({v:?})"
    );
    let s = senders(&net, viewer, audio[0], 1, 20);
    assert!(
        s.len() >= 10 && s.iter().all(|w| *w == a),
        "and her audio ({s:?})"
    );

    run(
        &mut net,
        &[alice, bob],
        Some(bob),
        &mut n,
        Duration::from_secs(3),
    );
    let v = senders(&net, viewer, video[0], 10, 20);
    assert!(
        v.len() >= 10 && v.iter().all(|w| *w == b),
        "bob speaks: his video ({v:?})"
    );
    let s = senders(&net, viewer, audio[0], 1, 20);
    assert!(s.iter().all(|w| *w == b), "and his audio ({s:?})");
    // The switch went through a keyframe of bob's, and the viewer's decoder saw no gap in
    // the RTP times.
    let frames: Vec<_> = net.clients[viewer].frames_on(video[0]).collect();
    let first_bob = frames
        .iter()
        .position(|r| r.data[10] == b)
        .expect("bob's frames");
    assert!(
        frames[first_bob].keyframe,
        "the switch starts at a keyframe"
    );
    assert!(
        frames.windows(2).all(|w| w[1].time > w[0].time),
        "RTP times only go forward across the switch"
    );
    assert!(
        net.clients[viewer].offers.is_empty(),
        "a viewer is never made an offer"
    );
    assert!(net.clients[viewer].slots.is_empty(), "nor told of slots");

    // The speaker leaves: the viewer's slot goes to the one left.
    let now = net.now;
    let pid = net.clients[bob].pid;
    net.sfu.remove(now, pid);
    run(&mut net, &[alice], None, &mut n, Duration::from_secs(2));
    let v = senders(&net, viewer, video[0], 10, 10);
    assert!(
        v.len() >= 10 && v.iter().all(|w| *w == a),
        "back to alice ({v:?})"
    );
}

#[test]
fn a_viewer_that_follows_one_participant_gets_only_their_tracks() {
    let mut net = Net::new();
    let av = Publish {
        audio: true,
        video: Some(&[]),
    };
    let alice = net.join(av);
    let bob = net.join(av);
    let follow = Follow::Participant(net.clients[alice].pid);
    let (viewer, audio, video) = net.join_viewer(2, 1, follow);
    let mut n = 0;
    run(
        &mut net,
        &[alice, bob],
        Some(bob),
        &mut n,
        Duration::from_secs(3),
    );
    let a = alice as u8 + 1;
    let v = senders(&net, viewer, video[0], 10, 30);
    assert!(
        v.len() >= 10 && v.iter().all(|w| *w == a),
        "only alice's video ({v:?})"
    );
    let s = senders(&net, viewer, audio[0], 1, 30);
    assert!(
        s.len() >= 10 && s.iter().all(|w| *w == a),
        "only alice's audio ({s:?})"
    );
    assert!(
        senders(&net, viewer, audio[1], 1, 30).is_empty(),
        "the second audio m-line stays empty"
    );
}

#[test]
fn a_viewer_with_more_audio_lines_hears_everyone() {
    let mut net = Net::new();
    let alice = net.join(Publish::AUDIO);
    let bob = net.join(Publish::AUDIO);
    let carol = net.join(Publish::AUDIO);
    let (viewer, audio, _) = net.join_viewer(4, 1, Follow::ActiveSpeaker);
    let mut n = 0;
    run(
        &mut net,
        &[alice, bob, carol],
        Some(carol),
        &mut n,
        Duration::from_secs(2),
    );
    let mut heard: Vec<u8> = audio
        .iter()
        .filter_map(|m| senders(&net, viewer, *m, 1, 1).first().copied())
        .collect();
    heard.sort();
    assert_eq!(
        heard,
        vec![1, 2, 3],
        "three speakers on three of the four audio m-lines"
    );
}
