//! Bad input on every surface: garbage datagrams on the media port during a call, hostile SDP
//! and foreign candidates on the signaling socket. None of it may disturb the call.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// The media address from an SDP answer's host candidate line.
fn media_addr(sdp: &str) -> std::net::SocketAddr {
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:") && l.contains("typ host"))
        .expect("a host candidate");
    let f: Vec<&str> = line.split_whitespace().collect();
    format!("{}:{}", f[4], f[5])
        .parse()
        .expect("candidate address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_on_the_media_port_do_not_disturb_a_call() {
    let server = Server::start(&[]);
    let bob = Peer::join(&server, "garbage", "Bob", false).await;
    let alice = Peer::join(&server, "garbage", "Alice", true).await;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(alice.audio.clone().unwrap(), "A", stop.clone());
    eventually(Duration::from_secs(15), "Bob receives Alice", || {
        bob.payloads_from(&alice.participant_id).len() >= 50
    })
    .await;
    let answer = bob
        .messages
        .lock()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "answer")
        .and_then(|m| m["sdp"].as_str().map(str::to_string))
        .unwrap();
    let target = media_addr(&answer);

    // 4000 datagrams of every shape, from several sockets, as fast as they go.
    let mut x: u64 = 0x9a7b_a9e0_0000_0001;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let socks: Vec<tokio::net::UdpSocket> =
        futures_util::future::join_all((0..4).map(|_| tokio::net::UdpSocket::bind("127.0.0.1:0")))
            .await
            .into_iter()
            .map(|s| s.unwrap())
            .collect();
    let before = bob.payloads_from(&alice.participant_id).len();
    for i in 0..4000usize {
        let len = [0, 1, 12, 20, 100, 1200, 1500, 2000][i % 8];
        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match (i / 8) % 5 {
            // STUN binding request with the magic cookie and a bogus USERNAME.
            0 if len >= 20 => {
                d[0..2].copy_from_slice(&[0x00, 0x01]);
                d[2..4].copy_from_slice(&((len - 20) as u16).to_be_bytes());
                d[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            }
            // RTP and RTCP headers.
            1 if len >= 12 => d[0] = 0x80,
            2 if len >= 12 => {
                d[0] = 0x80;
                d[1] = 200;
            }
            // A DTLS record.
            3 if len >= 13 => d[0..3].copy_from_slice(&[0x16, 0xfe, 0xfd]),
            _ => {}
        }
        let _ = socks[i % socks.len()].send_to(&d, target).await;
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    eventually(
        Duration::from_secs(10),
        "Bob keeps receiving Alice after the garbage",
        || bob.payloads_from(&alice.participant_id).len() >= before + 100,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in [&alice, &bob] {
        assert!(!p.saw(|m| m["type"] == "participant_left" || m["type"] == "error"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sdp_and_foreign_candidates_are_refused_without_harm() {
    let server = Server::start(&[]);
    let bob = Peer::join(&server, "hostile", "Bob", false).await;
    let alice = Peer::join(&server, "hostile", "Alice", true).await;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(alice.audio.clone().unwrap(), "A", stop.clone());

    let mut m = Signal::connect(&server.ws_url()).await;
    m.send(json!({"type": "join", "protocol": 1, "token": server.guest_token("hostile", "Mallory").await}))
        .await;
    assert_eq!(m.recv().await["type"], "joined");

    // Thousands of m-lines (within the frame size limit).
    let mut sdp = String::from("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n");
    for i in 0..1200 {
        sdp.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\n"));
    }
    m.send(json!({"type": "offer", "sdp": sdp, "request_id": "many"}))
        .await;
    let (e, _) = m.recv_type("error").await;
    assert_eq!(e["code"], "invalid_sdp", "{e}");
    assert_eq!(e["request_id"], "many");

    // One enormous attribute line, and garbage.
    let huge = format!(
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=x-huge:{}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        "A".repeat(60_000)
    );
    for sdp in [huge, "\u{0}\u{1}m=\r\n\r\n".to_string(), "v=0".to_string()] {
        m.send(json!({"type": "offer", "sdp": sdp})).await;
        let (e, _) = m.recv_type("error").await;
        assert_eq!(e["code"], "invalid_sdp", "{e}");
    }

    // Mallory's connection still works, and so does the call.
    m.send(json!({"type": "ping", "ts": 1})).await;
    let _ = m.recv_type("pong").await;
    eventually(Duration::from_secs(15), "Bob receives Alice", || {
        bob.payloads_from(&alice.participant_id).len() >= 50
    })
    .await;

    // A candidate for an address the loopback-bound media socket cannot reach is ignored, not
    // an error; a malformed one is an error.
    alice.send(json!({"type": "candidate", "candidate": "candidate:1 1 udp 2122260223 203.0.113.5 40000 typ host", "sdp_mid": "0", "sdp_m_line_index": 0}));
    alice.send(json!({"type": "candidate", "candidate": "candidate:bogus", "sdp_mid": "0", "sdp_m_line_index": 0, "request_id": "bad"}));
    eventually(
        Duration::from_secs(5),
        "the bad candidate is refused",
        || alice.saw(|m| m["type"] == "error" && m["code"] == "invalid_candidate"),
    )
    .await;
    // Refused later by media, still answered with the candidate's request id, in plain words.
    let refusal = alice.messages_where(|m| m["code"] == "invalid_candidate");
    assert_eq!(refusal[0]["request_id"], "bad", "{refusal:?}");
    assert_eq!(refusal[0]["message"], "the candidate could not be parsed");
    // The answer holds the server's one candidate, in the first m-line, then end-of-candidates.
    let answer = alice.messages_where(|m| m["type"] == "answer");
    let sdp = answer[0]["sdp"].as_str().expect("an answer with SDP");
    let first = sdp.split("\r\nm=").nth(1).expect("an m-line");
    assert_eq!(sdp.matches("a=candidate:").count(), 1, "{sdp}");
    assert!(first.contains("a=candidate:"), "{sdp}");
    let lines: Vec<&str> = first.split("\r\n").collect();
    let at = lines.iter().position(|l| l.starts_with("a=candidate:"));
    assert_eq!(
        at.and_then(|i| lines.get(i + 1)).copied(),
        Some("a=end-of-candidates"),
        "{sdp}"
    );
    let n = bob.payloads_from(&alice.participant_id).len();
    eventually(Duration::from_secs(10), "the call goes on", || {
        bob.payloads_from(&alice.participant_id).len() >= n + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        alice
            .messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "error")
            .count(),
        1,
        "only the malformed candidate was an error"
    );
    assert!(!bob.saw(|m| m["type"] == "error" || m["type"] == "participant_left"));
}
