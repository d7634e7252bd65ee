//! A long meeting with people coming and going, through the real server with client peers on an
//! independent WebRTC stack: the SDP of someone who stays is bounded by the tracks sent to them
//! at once, not by how many people came and went, and they never get a server error.
//!
//! Before send slots were reused, every departed track left a stopped m-line behind (about
//! 0.8 KB of SDP per audio track): after about 20 departures of four-track publishers here, the
//! steady participant's answer passed the 64 KiB message cap and it stopped negotiating.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_participants_sdp_stays_bounded_while_thirty_publishers_come_and_go() {
    let server = Server::start(&[]);
    let bob = Peer::join(&server, "churn", "Bob", false).await;
    let mut largest = 0usize;
    let rounds = 30;
    for round in 0..rounds {
        // One publisher of four tracks at a time, each leaving before the next arrives.
        let p = Peer::join_with_tracks(&server, "churn", &format!("P{round}"), 4).await;
        let stop = Arc::new(AtomicBool::new(false));
        let tag: &'static str = Box::leak(format!("P{round}").into_boxed_str());
        spawn_publisher(p.audio.clone().unwrap(), tag, stop.clone());
        eventually(
            Duration::from_secs(20),
            &format!("Bob receives publisher {round}"),
            || bob.payloads_tagged(tag).len() >= 5,
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        p.send(serde_json::json!({"type": "leave"}));
        p.close().await;
        let errors = bob.messages_where(|m| m["type"] == "error");
        assert!(
            errors.is_empty(),
            "Bob got server errors in round {round}: {errors:?}"
        );
        largest = bob
            .messages_where(|m| m["type"] == "offer")
            .iter()
            .filter_map(|m| m["sdp"].as_str().map(str::len))
            .max()
            .unwrap_or(0)
            .max(largest);
    }
    let offers = bob.messages_where(|m| m["type"] == "offer").len();
    println!("{rounds} publishers of 4 tracks came and went: Bob got {offers} offers, the largest {largest} bytes");
    // Four audio tracks at once (the next publisher's take the slots the last one freed, or new
    // m-lines while those are still being freed): at most eight m-lines, about 7 KB.
    assert!(
        largest < 16 * 1024,
        "Bob's largest offer is {largest} bytes after {rounds} publishers came and went"
    );
    assert!(
        offers < rounds,
        "most publishers reused free m-lines without an offer ({offers} offers for {rounds})"
    );
}
