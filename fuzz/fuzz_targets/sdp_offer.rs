//! The SDP a client offers: str0m's parser, then the SFU's whole offer path (a new connection,
//! its answer) on a fixed configuration. Neither may panic; a refused offer leaves no connection.
#![no_main]

use std::time::Instant;

use huddle_media::{Grants, ParticipantId, Sfu, SfuConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let _ = str0m::change::SdpOffer::from_sdp_string(sdp);
    huddle_media::init_crypto();
    let mut sfu = Sfu::new(SfuConfig {
        candidates: vec![([127, 0, 0, 1], 50000).into()],
        local_addr: ([127, 0, 0, 1], 50000).into(),
        worker_index: 0,
        max_tracks_per_participant: 4,
    });
    let grants = Grants::default();
    let ok = sfu
        .offer(Instant::now(), ParticipantId(1), "fuzz", grants, sdp)
        .is_ok();
    assert_eq!(sfu.peer_count(), usize::from(ok));
    while sfu.poll_output().is_some() {}
});
