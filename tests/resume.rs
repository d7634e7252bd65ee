//! Reconnection with resume: a participant whose signaling socket drops comes back on a new
//! socket within the resume window as the same participant, with its media, and nobody else
//! sees it leave.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_the_same_participant_with_its_media_and_nobody_notices() {
    let server = Server::start(&[]);
    let alice = Peer::join(&server, "blip", "Alice", true).await;
    let bob = Peer::join(&server, "blip", "Bob", true).await;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(alice.audio.clone().unwrap(), "A", stop.clone());
    spawn_publisher(bob.audio.clone().unwrap(), "B", stop.clone());
    eventually(Duration::from_secs(15), "media flows both ways", || {
        alice.payloads_from(&bob.participant_id).len() >= 50
            && bob.payloads_from(&alice.participant_id).len() >= 50
    })
    .await;
    assert!(
        alice.joined["resume_token"]
            .as_str()
            .is_some_and(|t| t.len() >= 32),
        "joined carries a resume token: {}",
        alice.joined
    );

    // Alice's socket dies; she is back 2 s later.
    alice.send(json!({"type": "test_drop_and_resume", "away_ms": 2000}));
    eventually(Duration::from_secs(10), "Alice sends resume", || {
        alice.saw(|m| m["type"] == "test_resume_sent")
    })
    .await;
    eventually(Duration::from_secs(5), "Alice is resumed", || {
        alice.saw(|m| m["type"] == "test_resume_took")
    })
    .await;
    let resume_took = alice
        .messages
        .lock()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "test_resume_took")
        .map(|m| Duration::from_micros(m["us"].as_u64().unwrap()))
        .unwrap();
    let resumed = alice
        .messages
        .lock()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "resumed")
        .cloned()
        .unwrap();
    assert_eq!(resumed["participant_id"], alice.participant_id.as_str());
    let others = resumed["participants"].as_array().unwrap();
    assert_eq!(others.len(), 1, "{resumed}");
    assert_eq!(others[0]["participant_id"], bob.participant_id.as_str());

    // Media keeps flowing both ways after the resume (and its ICE restart offer).
    let (a0, b0) = (
        alice.payloads_from(&bob.participant_id).len(),
        bob.payloads_from(&alice.participant_id).len(),
    );
    eventually(
        Duration::from_secs(10),
        "media flows both ways after the resume",
        || {
            alice.payloads_from(&bob.participant_id).len() >= a0 + 100
                && bob.payloads_from(&alice.participant_id).len() >= b0 + 100
        },
    )
    .await;
    let restarts = alice
        .messages
        .lock()
        .unwrap()
        .iter()
        .skip_while(|m| m["type"] != "resumed")
        .filter(|m| m["type"] == "offer")
        .count();
    assert!(
        restarts >= 1,
        "the server offered an ICE restart after the resume"
    );
    stop.store(true, Ordering::Relaxed);

    // Bob never saw Alice leave or join again.
    assert!(!bob.saw(|m| m["type"] == "participant_left"));
    assert_eq!(
        bob.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "participant_joined")
            .count(),
        0,
        "Bob joined after Alice: he never sees her join"
    );
    eprintln!("resume answered in {resume_took:?} (resume sent to resumed received)");
}

#[tokio::test]
async fn after_the_window_the_participant_leaves_and_resume_fails() {
    let server = Server::start_env(&[], &[("HUDDLE_SIGNALING__RESUME_WINDOW_SECS", "2")]);
    let token = server.guest_token("window", "Alice").await;
    let mut alice = Signal::connect(&server.ws_url()).await;
    alice
        .send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    let joined = alice.recv().await;
    let alice_id = joined["participant_id"].as_str().unwrap().to_string();
    let resume_token = joined["resume_token"].as_str().unwrap().to_string();
    let mut bob = Signal::connect(&server.ws_url()).await;
    bob.send(
        json!({"type": "join", "protocol": 1, "token": server.guest_token("window", "Bob").await}),
    )
    .await;
    assert_eq!(bob.recv().await["type"], "joined");

    // A resume token is no use to anyone else, even in the same room.
    let mut mallory = Signal::connect(&server.ws_url()).await;
    let other = server.guest_token("window", "Mallory").await;
    mallory
        .send(
            json!({"type": "resume", "protocol": 1, "token": other, "resume_token": resume_token}),
        )
        .await;
    assert_eq!(mallory.recv().await["code"], "resume_failed");

    let dropped = Instant::now();
    drop(alice);
    let left = bob.recv_type("participant_left").await.0;
    let took = dropped.elapsed();
    assert_eq!(left["participant_id"], alice_id.as_str());
    assert_eq!(left["reason"], "disconnected");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "left after {took:?}, the window is 2 s"
    );

    // Too late: resume fails, and the socket can still join afresh.
    let mut again = Signal::connect(&server.ws_url()).await;
    again
        .send(
            json!({"type": "resume", "protocol": 1, "token": token, "resume_token": resume_token}),
        )
        .await;
    assert_eq!(again.recv().await["code"], "resume_failed");
    again
        .send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    let j = again.recv().await;
    assert_eq!(j["type"], "joined");
    assert_ne!(j["participant_id"], alice_id.as_str());
}
