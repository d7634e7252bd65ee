//! Operator limits against the real server: each limit refuses the offender with its own error
//! code or HTTP status, and the others in the room carry on undisturbed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;

async fn joined(server: &Server, room: &str, name: &str) -> (Signal, String) {
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(json!({"type": "join", "protocol": 1, "token": server.guest_token(room, name).await}))
        .await;
    let m = s.recv().await;
    assert_eq!(m["type"], "joined", "{m}");
    let pid = m["participant_id"].as_str().unwrap().to_string();
    (s, pid)
}

/// A ping answered with its pong; returns what came before it (such as room events).
async fn ping_pong(s: &mut Signal, ts: u64) -> Vec<Value> {
    s.send(json!({"type": "ping", "ts": ts})).await;
    let mut before = Vec::new();
    loop {
        let m = s.recv().await;
        if m["type"] == "pong" {
            assert_eq!(m["ts"], ts, "{m}");
            return before;
        }
        assert_ne!(m["type"], "error", "the bystander got an error: {m}");
        before.push(m);
    }
}

/// The HTTP status a WebSocket upgrade was refused with.
async fn upgrade_status(url: &str, origin: Option<&str>) -> Option<u16> {
    use tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => None,
        Err(tungstenite::Error::Http(res)) => Some(res.status().as_u16()),
        Err(e) => panic!("unexpected upgrade failure: {e}"),
    }
}

#[tokio::test]
async fn a_flooding_client_is_rate_limited_then_closed_while_its_room_carries_on() {
    let server = Server::start_env(
        &[],
        &[
            ("HUDDLE_LIMITS__MESSAGES_PER_SECOND", "10"),
            ("HUDDLE_LIMITS__MESSAGE_BURST", "10"),
        ],
    );
    let (mut bob, _) = joined(&server, "flood", "Bob").await;
    let (mut mallory, mallory_id) = joined(&server, "flood", "Mallory").await;
    let _ = bob.recv_type("participant_joined").await;

    // A burst within the limit is answered in full.
    for i in 0..5 {
        mallory.send(json!({"type": "ping", "ts": i})).await;
    }
    for i in 0..5 {
        assert_eq!(mallory.recv().await, json!({"type": "pong", "ts": i}));
    }

    // Flood: 200 messages a second. The first overflow is answered with rate_limited.
    let started = Instant::now();
    let mut errors = Vec::new();
    let mut closed_after = None;
    let mut n = 0u64;
    // What Bob got besides pongs: Mallory's departure may come during a ping below.
    let mut bob_got = Vec::new();
    'flood: while started.elapsed() < Duration::from_secs(10) {
        for _ in 0..20 {
            n += 1;
            mallory.send(json!({"type": "ping", "ts": n})).await;
        }
        // Bob, in the same room, is served normally throughout.
        bob_got.extend(ping_pong(&mut bob, 1_000_000 + n).await);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        loop {
            let next = tokio::time::timeout_at(deadline, mallory_next(&mut mallory)).await;
            match next {
                Err(_) => break,
                Ok(None) => {
                    closed_after = Some(started.elapsed());
                    break 'flood;
                }
                Ok(Some(m)) if m["type"] == "error" => errors.push(m),
                Ok(Some(_)) => {}
            }
        }
    }
    let closed_after = closed_after.expect("the flooding connection is closed");
    assert!(
        errors.iter().all(|e| e["code"] == "rate_limited"),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 3, "one error per strike: {errors:?}");
    assert!(
        closed_after >= Duration::from_secs(2),
        "three strikes take at least two seconds, closed after {closed_after:?}"
    );
    // Bob saw Mallory go, removed, and still gets answers.
    let left = match bob_got
        .into_iter()
        .find(|m| m["type"] == "participant_left")
    {
        Some(m) => m,
        None => bob.recv_type("participant_left").await.0,
    };
    assert_eq!(left["participant_id"], mallory_id.as_str());
    assert_eq!(left["reason"], "removed");
    ping_pong(&mut bob, 7).await;
}

/// The next message, or None when the socket closed (no panic on timeouts: the caller bounds it).
async fn mallory_next(s: &mut Signal) -> Option<Value> {
    s.recv_timeout(Duration::from_secs(3600)).await
}

#[tokio::test]
async fn chat_over_the_rate_is_refused_and_not_stored() {
    let server = Server::start_env(&[], &[("HUDDLE_LIMITS__CHAT_MESSAGES_PER_MINUTE", "2")]);
    let (mut alice, _) = joined(&server, "chatty", "Alice").await;
    let (mut bob, _) = joined(&server, "chatty", "Bob").await;
    let _ = alice.recv_type("participant_joined").await;
    for i in 0..3 {
        bob.send(json!({"type": "chat", "text": format!("m{i}"), "request_id": format!("c{i}")}))
            .await;
    }
    let mut bob_got = Vec::new();
    for _ in 0..3 {
        bob_got.push(bob.recv().await);
    }
    // The error is sent at once; the echoes come through the room, so the order may differ.
    let echoed: Vec<_> = bob_got
        .iter()
        .filter(|m| m["type"] == "chat")
        .map(|m| m["message"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(echoed, ["m0", "m1"], "{bob_got:?}");
    let err = bob_got.iter().find(|m| m["type"] == "error").unwrap();
    assert_eq!(err["code"], "rate_limited");
    assert_eq!(err["request_id"], "c2");
    // Alice can still chat: the limit is Bob's alone.
    alice.send(json!({"type": "chat", "text": "mine"})).await;
    let mut texts = Vec::new();
    while texts.len() < 3 {
        let m = alice.recv().await;
        if m["type"] == "chat" {
            texts.push(m["message"]["text"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(texts, ["m0", "m1", "mine"]);
}

#[tokio::test]
async fn connections_over_the_cap_get_503_before_the_upgrade() {
    let server = Server::start_env(&[], &[("HUDDLE_LIMITS__MAX_CONNECTIONS", "2")]);
    let (mut alice, _) = joined(&server, "cap", "Alice").await;
    let (mut bob, _) = joined(&server, "cap", "Bob").await;
    assert_eq!(upgrade_status(&server.ws_url(), None).await, Some(503));
    assert_eq!(
        server
            .metric("huddle_limit_hits_total{limit=\"connections\"}")
            .await,
        Some(1.0)
    );
    ping_pong(&mut alice, 1).await;
    // The slot is released when the session ends (a dropped socket keeps it for the resume
    // window: the participant is still there).
    bob.send(json!({"type": "leave"})).await;
    let mut tries = 0;
    while upgrade_status(&server.ws_url(), None).await == Some(503) {
        tries += 1;
        assert!(
            tries < 50,
            "the closed connection's slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn joins_from_one_address_over_the_per_minute_limit_get_429() {
    let server = Server::start_env(&[], &[("HUDDLE_LIMITS__JOINS_PER_IP_PER_MINUTE", "3")]);
    let (mut alice, _) = joined(&server, "ip", "Alice").await;
    let _b = Signal::connect(&server.ws_url()).await;
    let _c = Signal::connect(&server.ws_url()).await;
    assert_eq!(upgrade_status(&server.ws_url(), None).await, Some(429));
    // A forged X-Forwarded-For does not help: no proxy is trusted.
    use tungstenite::client::IntoClientRequest;
    let mut req = server.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    assert!(matches!(
        tokio_tungstenite::connect_async(req).await,
        Err(tungstenite::Error::Http(r)) if r.status() == 429
    ));
    assert_eq!(
        server
            .metric("huddle_limit_hits_total{limit=\"joins_per_ip\"}")
            .await,
        Some(2.0)
    );
    ping_pong(&mut alice, 1).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_limit_applies_per_forwarded_address() {
    let server = Server::start_env(
        &[],
        &[
            ("HUDDLE_LIMITS__JOINS_PER_IP_PER_MINUTE", "1"),
            ("HUDDLE_SIGNALING__TRUSTED_PROXIES", "[\"127.0.0.1\"]"),
        ],
    );
    use tungstenite::client::IntoClientRequest;
    let via = |client: &str| {
        let mut req = server.ws_url().into_client_request().unwrap();
        req.headers_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        req
    };
    let _a = tokio_tungstenite::connect_async(via("198.51.100.1"))
        .await
        .expect("first client");
    let _b = tokio_tungstenite::connect_async(via("198.51.100.2"))
        .await
        .expect("another client behind the same proxy");
    assert!(matches!(
        tokio_tungstenite::connect_async(via("198.51.100.1")).await,
        Err(tungstenite::Error::Http(r)) if r.status() == 429
    ));
}

#[tokio::test]
async fn a_join_that_would_open_one_room_too_many_is_refused() {
    let server = Server::start_env(&[], &[("HUDDLE_LIMITS__MAX_ROOMS", "1")]);
    let (mut alice, _) = joined(&server, "first", "Alice").await;
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(
        json!({"type": "join", "protocol": 1, "token": server.guest_token("second", "Bob").await}),
    )
    .await;
    let m = s.recv().await;
    assert_eq!(m["code"], "too_many_rooms", "{m}");
    assert!(s.recv_timeout(Duration::from_secs(5)).await.is_none());
    // The existing room still takes newcomers, and Alice is undisturbed.
    let (_carol, _) = joined(&server, "first", "Carol").await;
    let (m, _) = alice.recv_type("participant_joined").await;
    assert_eq!(m["participant"]["name"], "Carol");
    ping_pong(&mut alice, 1).await;
}

#[tokio::test]
async fn websocket_origins_must_match_the_host_unless_configured() {
    let server = Server::start(&[]);
    let host = server.url.trim_start_matches("http://").to_string();
    let url = server.ws_url();
    assert_eq!(
        upgrade_status(&url, Some("http://evil.example")).await,
        Some(403)
    );
    assert_eq!(upgrade_status(&url, Some("null")).await, Some(403));
    assert_eq!(
        server
            .metric("huddle_limit_hits_total{limit=\"origin\"}")
            .await,
        Some(2.0)
    );
    assert_eq!(
        upgrade_status(&url, Some(&format!("http://{host}"))).await,
        None
    );
    assert_eq!(upgrade_status(&url, None).await, None);

    let server = Server::start_env(
        &[],
        &[(
            "HUDDLE_SIGNALING__ALLOWED_ORIGINS",
            "[\"https://meet.example.org\"]",
        )],
    );
    let url = server.ws_url();
    let host = server.url.trim_start_matches("http://").to_string();
    assert_eq!(
        upgrade_status(&url, Some("https://meet.example.org")).await,
        None
    );
    assert_eq!(
        upgrade_status(&url, Some(&format!("http://{host}"))).await,
        Some(403)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_over_the_per_participant_cap_are_refused_and_only_the_first_is_published() {
    let server = Server::start_env(&[], &[("HUDDLE_LIMITS__MAX_TRACKS_PER_PARTICIPANT", "1")]);
    let bob = Peer::join(&server, "tracks", "Bob", false).await;
    let alice = Peer::join_with_tracks(&server, "tracks", "Alice", 2).await;
    eventually(
        Duration::from_secs(10),
        "Alice is told her second track is over the cap",
        || alice.saw(|m| m["type"] == "error" && m["code"] == "too_many_tracks"),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "Bob sees Alice's first track",
        || bob.saw(|m| m["type"] == "track_published"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let published = bob
        .messages
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m["type"] == "track_published")
        .count();
    assert_eq!(published, 1);
    assert!(!bob.saw(|m| m["type"] == "error"), "Bob got no error");
}
