//! Faults: a participant whose network dies is detected and removed, and everyone is told.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A client that stops reading sends no pongs (tungstenite answers pings only while read):
/// to the server it is a dead network. It must be gone within the idle timeout (15 s) plus a
/// ping interval.
#[tokio::test]
async fn a_client_that_goes_silent_is_removed_as_disconnected_within_the_idle_timeout() {
    let server = Server::start(&[]);
    let mut alice = Signal::connect(&server.ws_url()).await;
    alice
        .send(json!({"type": "join", "protocol": 1, "token": server.guest_token("silent", "Alice").await}))
        .await;
    assert_eq!(alice.recv().await["type"], "joined");
    let mut bob = Signal::connect(&server.ws_url()).await;
    bob.send(
        json!({"type": "join", "protocol": 1, "token": server.guest_token("silent", "Bob").await}),
    )
    .await;
    let joined = bob.recv().await;
    let bob_id = joined["participant_id"].as_str().unwrap().to_string();
    let _ = alice.recv_type("participant_joined").await;

    // From here on Bob neither reads nor writes: no pongs.
    let went_silent = Instant::now();
    let left = loop {
        let m = alice
            .recv_timeout(Duration::from_secs(25))
            .await
            .expect("Alice's socket stays open");
        if m["type"] == "participant_left" {
            break m;
        }
    };
    let took = went_silent.elapsed();
    eprintln!("silent participant removed after {took:?}");
    assert_eq!(left["participant_id"], bob_id.as_str());
    assert_eq!(left["reason"], "disconnected");
    assert!(
        took >= Duration::from_secs(13) && took <= Duration::from_secs(17),
        "removed after {took:?}, expected about 15 s"
    );
    drop(bob);
}

/// A client whose WebSocket stays healthy but whose media connection dies (its peer connection
/// is gone without a word) is removed when ICE gives up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_media_dies_is_removed_and_everyone_is_told() {
    let server = Server::start(&[]);
    let alice = Peer::join(&server, "medialoss", "Alice", true).await;
    let bob = Peer::join(&server, "medialoss", "Bob", true).await;
    eventually(Duration::from_secs(10), "Bob sees Alice's track", || {
        bob.saw(|m| m["type"] == "track_published")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Alice's media stops (her peer connection closes; her signaling socket stays up).
    let t0 = Instant::now();
    alice.close().await;
    let alice_id = alice.participant_id.clone();
    eventually(
        Duration::from_secs(40),
        "Bob is told Alice left, disconnected",
        || {
            bob.saw(|m| {
                m["type"] == "participant_left"
                    && m["participant_id"] == alice_id.as_str()
                    && m["reason"] == "disconnected"
            })
        },
    )
    .await;
    eprintln!(
        "participant with dead media removed after {:?}",
        t0.elapsed()
    );
}
