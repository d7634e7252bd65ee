//! The SFU's offer path under hostile SDP, on the stable compiler (the cargo-fuzz target
//! `sdp_offer` explores further): a real offer, mutated line by line and byte by byte, must be
//! answered or refused, never panic, and a refused offer leaves no connection behind.

use std::time::Instant;

use huddle_media::{Grants, ParticipantId, Sfu, SfuConfig};
use str0m::media::{Direction, MediaKind};
use str0m::Rtc;

fn sfu() -> Sfu {
    huddle_media::init_crypto();
    Sfu::new(SfuConfig {
        candidates: vec![([127, 0, 0, 1], 50000).into()],
        local_addr: ([127, 0, 0, 1], 50000).into(),
        worker_index: 0,
        max_tracks_per_participant: 4,
    })
}

fn real_offer() -> String {
    huddle_media::init_crypto();
    let mut rtc = Rtc::new(Instant::now());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    change.add_channel("huddle".into());
    let (offer, _) = change.apply().expect("an offer");
    offer.to_sdp_string()
}

#[test]
fn mutated_offers_are_answered_or_refused_without_panicking() {
    let seed = real_offer();
    let lines: Vec<&str> = seed.lines().collect();
    let mut x: u64 = 0x5d9_0ffe_4000_0001;
    let mut next = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n.max(1) as u64) as usize
    };
    let grants = Grants::default();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..150u64 {
        let mut ls: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        for _ in 0..1 + next(4) {
            let at = next(ls.len());
            match next(6) {
                0 => {
                    ls.remove(at);
                }
                1 => {
                    let l = ls[at].clone();
                    let copies = 1 + next(50);
                    for _ in 0..copies {
                        ls.insert(at, l.clone());
                    }
                }
                2 => {
                    let mut b = ls[at].clone().into_bytes();
                    if !b.is_empty() {
                        let j = next(b.len());
                        b[j] = b" :=/0123456789abcxyz\x00\xff"[next(22)];
                    }
                    ls[at] = String::from_utf8_lossy(&b).into_owned();
                }
                3 => ls[at].push_str(&"9".repeat(next(5000))),
                4 => ls.insert(
                    at,
                    format!("a=ssrc:{} cname:{}", next(1 << 30), "x".repeat(next(300))),
                ),
                _ => ls.truncate(at),
            }
        }
        let sdp = ls.join("\r\n") + "\r\n";
        let mut s = sfu();
        let ok = s
            .offer(Instant::now(), ParticipantId(i), "fuzz", grants, &sdp)
            .is_ok();
        assert_eq!(s.peer_count(), usize::from(ok), "iteration {i}");
        while s.poll_output().is_some() {}
        if ok {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // The mutations exercise both paths.
    assert!(
        accepted > 0 && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
}
