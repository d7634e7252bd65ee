//! The protocol's contract as docs/protocol.md states it, against the real server: every error
//! a message causes echoes its `request_id` and says nothing of the server's internals; a frame
//! over the hard cap closes the socket at once with status 1009; a client's Close is answered;
//! the server's Close frames carry the documented status codes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the server sent until it closed: its JSON messages and its Close frame (None when the
/// socket ended without one).
async fn until_closed(ws: &mut Ws, within: Duration) -> (Vec<Value>, Option<CloseFrame>) {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("the server did not close within {within:?}; saw {seen:?}"));
        match next {
            Some(Ok(Message::Text(t))) => seen.push(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Close(frame))) => return (seen, frame),
            Some(Ok(_)) => {}
            None => return (seen, None),
            Some(Err(e)) => {
                println!("socket error after {seen:?}: {e}");
                return (seen, None);
            }
        }
    }
}

async fn connect(server: &Server) -> Ws {
    tokio_tungstenite::connect_async(server.ws_url())
        .await
        .expect("WebSocket connects")
        .0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// An error's text must not show the server's insides.
fn plain(e: &Value) {
    let text = e["message"].as_str().unwrap_or_default();
    for inside in ["PointerOffset", "0x", "Parse error", "src/", ".rs:", "::"] {
        assert!(!text.contains(inside), "error text shows {inside:?}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_echoes_its_request_id_without_internals() {
    let server = Server::start(&[]);
    let token = server.guest_token("contract", "Ann").await;

    // Before the join: not_joined, bad_message, and a refused join echo their ids.
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "chat", "text": "hi", "request_id": "early"}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("not_joined"), Some("early")),
        "{e}"
    );
    send(
        &mut ws,
        json!({"type": "join", "protocol": "one", "request_id": "typo"}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("bad_message"), Some("typo")),
        "{e}"
    );
    send(
        &mut ws,
        json!({"type": "join", "protocol": 1, "token": "not.a.token", "request_id": "j0"}),
    )
    .await;
    let (seen, close) = until_closed(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0]["code"].as_str(), seen[0]["request_id"].as_str()),
        (Some("invalid_token"), Some("j0")),
        "{seen:?}"
    );
    plain(&seen[0]);
    assert_eq!(
        close.map(|c| c.code),
        Some(CloseCode::Normal),
        "a fatal error closes with 1000"
    );

    // Joined: a too-large chat, an offer media cannot parse, a candidate before any offer.
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "join", "protocol": 1, "token": token, "request_id": "j1"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "joined");
    send(
        &mut ws,
        json!({"type": "chat", "text": "x".repeat(70_000), "request_id": "big"}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("message_too_large"), Some("big")),
        "{e}"
    );
    send(
        &mut ws,
        json!({"type": "candidate", "candidate": "candidate:1", "request_id": "c0"}),
    )
    .await;
    let e = recv(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("invalid_candidate"), Some("c0")),
        "{e}"
    );
    for (i, sdp) in [
        "this is not SDP",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n",
        "\u{0}\u{1}m=\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let rid = format!("o{i}");
        send(
            &mut ws,
            json!({"type": "offer", "sdp": sdp, "request_id": rid}),
        )
        .await;
        let e = recv(&mut ws).await;
        assert_eq!(
            (e["code"].as_str(), e["request_id"].as_str()),
            (Some("invalid_sdp"), Some(rid.as_str())),
            "{e}"
        );
        plain(&e);
    }
    // The session carries on.
    send(&mut ws, json!({"type": "ping", "ts": 7})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_hard_cap_closes_at_once_with_1009() {
    // Hard cap: max(16 x 4 KiB, 2 x 16 KiB) = 64 KiB.
    let server = Server::start_env(
        &[],
        &[
            ("HUDDLE_SIGNALING__MAX_MESSAGE_BYTES", "4096"),
            ("HUDDLE_SIGNALING__MAX_SDP_BYTES", "16384"),
        ],
    );
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "join", "protocol": 1, "token": server.guest_token("cap", "Ann").await}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "joined");
    let sent = Instant::now();
    let _ = ws.send(Message::Text("x".repeat(70 * 1024).into())).await;
    let (seen, close) = until_closed(&mut ws, Duration::from_secs(3)).await;
    let took = sent.elapsed();
    assert!(
        seen.iter().any(|m| m["code"] == "message_too_large"),
        "told why first: {seen:?}"
    );
    let close = close.expect("a Close frame");
    assert_eq!(close.code, CloseCode::Size, "{close:?}");
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    println!("closed {took:?} after the frame, with {close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_answered_and_the_server_closes_with_its_code() {
    let server = Server::start(&[]);
    // Before the join.
    let mut ws = connect(&server).await;
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await
    .expect("close sent");
    let (_, answer) = until_closed(&mut ws, Duration::from_secs(3)).await;
    assert!(
        answer.is_some(),
        "the server answers a Close frame with one"
    );

    // Joined: the answer comes too (the participant then waits for a resume).
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "join", "protocol": 1, "token": server.guest_token("close", "Ann").await}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "joined");
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "".into(),
    })))
    .await
    .expect("close sent");
    let (_, answer) = until_closed(&mut ws, Duration::from_secs(3)).await;
    assert!(
        answer.is_some(),
        "the server answers a joined client's Close frame"
    );

    // The server's own close after `leave` carries 1000.
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "join", "protocol": 1, "token": server.guest_token("close", "Bo").await}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["type"], "joined");
    send(&mut ws, json!({"type": "leave"})).await;
    let (_, close) = until_closed(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Normal));
}
