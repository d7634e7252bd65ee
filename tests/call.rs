//! Calls through the real server with client peers on an independent WebRTC stack.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Every payload a subscriber got from `tag` must be exactly one that was sent, in order.
fn assert_byte_for_byte(got: &[Vec<u8>], tag: &str) {
    let mut last = None;
    for p in got {
        let text = String::from_utf8_lossy(&p[1..]);
        let n: u32 = text
            .split(':')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unrecognised payload {p:?}"));
        assert_eq!(
            p,
            &payload(tag, n),
            "payload {n} from {tag} changed on the way"
        );
        if let Some(l) = last {
            assert!(n > l, "payload {n} arrived after {l}");
        }
        last = Some(n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publishers_payloads_arrive_byte_for_byte_at_two_subscribers() {
    let server = Server::start(&[]);
    let b = Peer::join(&server, "bytes", "Bob", false).await;
    let c = Peer::join(&server, "bytes", "Carol", false).await;
    let a = Peer::join(&server, "bytes", "Alice", true).await;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(a.audio.clone().unwrap(), "A", stop.clone());

    eventually(
        Duration::from_secs(15),
        "both subscribers receive 100 packets from Alice",
        || {
            b.payloads_from(&a.participant_id).len() >= 100
                && c.payloads_from(&a.participant_id).len() >= 100
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for sub in [&b, &c] {
        let got = sub.payloads_from(&a.participant_id);
        assert_byte_for_byte(&got, "A");
    }
    // Both subscribers were told about the track.
    for sub in [&b, &c] {
        assert!(sub
            .saw(|m| m["type"] == "track_published"
                && m["participant_id"] == a.participant_id.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_receives_the_earlier_publishers() {
    let server = Server::start(&[]);
    let a = Peer::join(&server, "late", "Alice", true).await;
    let b = Peer::join(&server, "late", "Bob", true).await;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(a.audio.clone().unwrap(), "A", stop.clone());
    spawn_publisher(b.audio.clone().unwrap(), "B", stop.clone());
    eventually(
        Duration::from_secs(15),
        "Alice and Bob receive each other",
        || {
            a.payloads_from(&b.participant_id).len() >= 20
                && b.payloads_from(&a.participant_id).len() >= 20
        },
    )
    .await;

    // Dave joins late: one server offer adds both earlier tracks at once.
    let d = Peer::join(&server, "late", "Dave", false).await;
    let others = d.joined["participants"].as_array().unwrap();
    assert_eq!(
        others.len(),
        2,
        "joined lists the two earlier participants: {}",
        d.joined
    );
    for p in others {
        assert_eq!(
            p["tracks"].as_array().map(|t| t.len()),
            Some(1),
            "each with its audio track: {p}"
        );
    }
    eventually(
        Duration::from_secs(15),
        "the late joiner receives both earlier publishers",
        || {
            d.payloads_from(&a.participant_id).len() >= 20
                && d.payloads_from(&b.participant_id).len() >= 20
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_byte_for_byte(&d.payloads_from(&a.participant_id), "A");
    assert_byte_for_byte(&d.payloads_from(&b.participant_id), "B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_frees_the_participants_m_lines_and_the_next_publisher_reuses_them() {
    let server = Server::start(&[]);
    let b = Peer::join(&server, "leave", "Bob", false).await;
    let a = Peer::join(&server, "leave", "Alice", true).await;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(a.audio.clone().unwrap(), "A", stop.clone());
    eventually(Duration::from_secs(15), "Bob receives Alice", || {
        b.payloads_from(&a.participant_id).len() >= 20
    })
    .await;

    a.send(json!({"type": "leave"}));
    let left = tokio::time::Instant::now();
    let aid = a.participant_id.clone();
    eventually(
        Duration::from_secs(1),
        "Bob is told Alice left within a second",
        || {
            b.saw(|m| {
                m["type"] == "participant_left"
                    && m["participant_id"] == aid.as_str()
                    && m["reason"] == "left"
            })
        },
    )
    .await;
    // The m-line that carried Alice (spare m-lines are announced free from the start, so the
    // freed one is known by what it carried).
    let alice_mid = b
        .messages_where(|m| m["type"] == "media_slots")
        .iter()
        .flat_map(|m| m["slots"].as_array().cloned().unwrap_or_default())
        .find(|s| s["participant_id"] == aid.as_str())
        .map(|s| s["mid"].clone())
        .expect("Bob was told which m-line carries Alice");
    eventually(
        Duration::from_secs(2),
        "Bob is told Alice's m-line is free",
        || {
            b.saw(|m| {
                m["type"] == "media_slots"
                    && m["slots"].as_array().is_some_and(|s| {
                        s.iter()
                            .any(|s| s["mid"] == alice_mid && s["participant_id"].is_null())
                    })
            })
        },
    )
    .await;
    println!("leave reached the subscriber in {:?}", left.elapsed());
    // Nothing more of Alice's media arrives (her publisher task is still writing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = b.payloads_from(&a.participant_id).len();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        b.payloads_from(&a.participant_id).len(),
        n,
        "media stopped after the leave"
    );
    stop.store(true, Ordering::Relaxed);
    a.close().await;

    // Carol comes: her track takes Alice's free m-line, with no offer.
    let offers = b.messages_where(|m| m["type"] == "offer").len();
    let c = Peer::join(&server, "leave", "Carol", true).await;
    let stop_c = Arc::new(AtomicBool::new(false));
    spawn_publisher(c.audio.clone().unwrap(), "C", stop_c.clone());
    eventually(Duration::from_secs(15), "Bob receives Carol", || {
        b.payloads_tagged("C").len() >= 20
    })
    .await;
    assert_byte_for_byte(&b.payloads_tagged("C"), "C");
    let cid = c.participant_id.clone();
    let slots = b.messages_where(|m| m["type"] == "media_slots");

    let carol = slots
        .iter()
        .flat_map(|m| m["slots"].as_array().cloned().unwrap_or_default())
        .find(|s| s["participant_id"] == cid.as_str())
        .expect("Bob is told which m-line carries Carol");
    assert_eq!(carol["mid"], alice_mid, "Carol reuses Alice's m-line");
    assert_eq!(carol["source"], "microphone");
    assert_eq!(
        b.messages_where(|m| m["type"] == "offer").len(),
        offers,
        "no offer was needed for Carol"
    );
    stop_c.store(true, Ordering::Relaxed);
    c.close().await;
}
