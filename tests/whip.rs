//! WHIP ingest and WHEP playback through the real server, with peers of the `webrtc` crate:
//! the HTTP contract (RFC 9725 and draft-ietf-wish-whep), a WHIP publisher seen and heard by
//! a participant, a WHEP viewer receiving its payloads byte for byte, and every resource and
//! gauge gone after the DELETEs. (`tests/e2e/whip.test.mjs` does the same with aiortc and
//! Chromium.)

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use webrtc::api::media_engine::MIME_TYPE_OPUS;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp_transceiver::rtp_codec::{RTCRtpCodecCapability, RTPCodecType};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;

struct Posted {
    status: u16,
    location: Option<String>,
    etag: Option<String>,
    content_type: Option<String>,
    body: String,
}

async fn post(server: &Server, path: &str, token: Option<&str>, ctype: &str, body: &str) -> Posted {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .header("content-type", ctype)
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("POST");
    let h = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (location, etag, content_type) = (h("location"), h("etag"), h("content-type"));
    Posted {
        status: res.status().as_u16(),
        location,
        etag,
        content_type,
        body: res.text().await.unwrap_or_default(),
    }
}

async fn send(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> u16 {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", server.url))
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("request").status().as_u16()
}

/// The offer of `pc` after ICE gathering (WHIP clients send no trickle).
async fn offer_of(pc: &webrtc::peer_connection::RTCPeerConnection) -> String {
    let offer = pc.create_offer(None).await.unwrap();
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await.unwrap();
    let _ = gathered.recv().await;
    pc.local_description().await.unwrap().sdp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whip_publisher_is_a_participant_and_a_whep_viewer_receives_it_byte_for_byte() {
    let server = Server::start(&[]);
    let room = "whip-room";
    let token = server.guest_token(room, "Encoder").await;
    let other_room = server.guest_token("another", "Encoder").await;

    // The contract's refusals, each with its code and nothing else disturbed.
    let p = post(&server, "/whip/whip-room", None, "application/sdp", "v=0").await;
    assert_eq!(p.status, 401, "no token: {}", p.body);
    let p = post(
        &server,
        "/whip/whip-room",
        Some(&token),
        "text/plain",
        "v=0",
    )
    .await;
    assert_eq!(p.status, 415, "not SDP: {}", p.body);
    let p = post(
        &server,
        "/whip/whip-room",
        Some(&other_room),
        "application/sdp",
        "v=0",
    )
    .await;
    assert_eq!(p.status, 403, "another room's token: {}", p.body);
    let p = post(
        &server,
        "/whip/whip-room",
        Some("not.a.jwt"),
        "application/sdp",
        "v=0",
    )
    .await;
    assert_eq!(p.status, 401, "a bad token: {}", p.body);
    let p = post(
        &server,
        "/whip/whip-room",
        Some(&token),
        "application/sdp",
        "v=0\r\nnonsense",
    )
    .await;
    assert_eq!(p.status, 400, "an offer that does not parse: {}", p.body);
    assert!(
        p.body.contains("\"error\""),
        "a coded JSON error: {}",
        p.body
    );
    let p = post(
        &server,
        "/whep/whip-room",
        Some(&token),
        "application/sdp",
        "garbage",
    )
    .await;
    assert_eq!(
        p.status, 400,
        "a WHEP offer that does not parse: {}",
        p.body
    );
    let big = "a".repeat(1_100_000);
    let p = post(
        &server,
        "/whip/whip-room",
        Some(&token),
        "application/sdp",
        &big,
    )
    .await;
    assert_eq!(p.status, 413, "an offer over the SDP cap: {}", p.body);

    // Bob is in the room before the encoder starts.
    let bob = Peer::join(&server, room, "Bob", false).await;

    // The WHIP publisher: one Opus track, no trickle.
    let pc = loopback_pc().await;
    let track = Arc::new(TrackLocalStaticRTP::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_OPUS.to_owned(),
            clock_rate: 48000,
            channels: 2,
            ..Default::default()
        },
        "audio".into(),
        "obs".into(),
    ));
    pc.add_transceiver_from_track(
        track.clone(),
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            send_encodings: vec![],
        }),
    )
    .await
    .unwrap();
    let sdp = offer_of(&pc).await;
    let p = post(
        &server,
        "/whip/whip-room",
        Some(&token),
        "application/sdp",
        &sdp,
    )
    .await;
    assert_eq!(p.status, 201, "WHIP offer: {}", p.body);
    assert_eq!(p.content_type.as_deref(), Some("application/sdp"));
    let whip_at = p.location.expect("a Location");
    assert!(whip_at.starts_with("/whip/whip-room/"), "{whip_at}");
    assert!(p.etag.is_some(), "an ETag");
    pc.set_remote_description(RTCSessionDescription::answer(p.body).unwrap())
        .await
        .expect("the answer applies");
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(track, "obs", stop.clone());

    // Bob sees the encoder join under its token's name, and hears it.
    eventually(Duration::from_secs(10), "bob sees the encoder join", || {
        bob.saw(|m| m["type"] == "participant_joined" && m["participant"]["name"] == "Encoder")
    })
    .await;
    let encoder_id = bob.messages_where(|m| m["type"] == "participant_joined")[0]["participant"]
        ["participant_id"]
        .as_str()
        .unwrap()
        .to_string();
    eventually(
        Duration::from_secs(10),
        "bob receives the encoder's audio",
        || bob.payloads_tagged("obs").len() >= 20,
    )
    .await;

    // A WHEP viewer: one audio and one video m-line, receive-only.
    let viewer = loopback_pc().await;
    for kind in [RTPCodecType::Audio, RTPCodecType::Video] {
        viewer
            .add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    send_encodings: vec![],
                }),
            )
            .await
            .unwrap();
    }
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let g = got.clone();
    viewer.on_track(Box::new(move |track, _, _| {
        let g = g.clone();
        tokio::spawn(async move {
            while let Ok((pkt, _)) = track.read_rtp().await {
                g.lock().unwrap().push(pkt.payload.to_vec());
            }
        });
        Box::pin(async {})
    }));
    let sdp = offer_of(&viewer).await;
    let p = post(
        &server,
        "/whep/whip-room",
        Some(&token),
        "application/sdp",
        &sdp,
    )
    .await;
    assert_eq!(p.status, 201, "WHEP offer: {}", p.body);
    let whep_at = p.location.expect("a Location");
    assert!(whep_at.starts_with("/whep/whip-room/"), "{whep_at}");
    let etag = p.etag.expect("an ETag");
    viewer
        .set_remote_description(RTCSessionDescription::answer(p.body).unwrap())
        .await
        .expect("the answer applies");
    eventually(
        Duration::from_secs(10),
        "the viewer receives the encoder's audio",
        || got.lock().unwrap().len() >= 20,
    )
    .await;
    for pkt in got.lock().unwrap().iter() {
        let text = String::from_utf8_lossy(&pkt[1..]).to_string();
        let n: u32 = text
            .split(':')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a numbered payload");
        assert_eq!(
            pkt,
            &payload("obs", n),
            "payload {n} changed on the way to the viewer"
        );
    }
    assert_eq!(server.metric("huddle_whep_viewers").await, Some(1.0));
    assert_eq!(server.metric("huddle_whip_sessions").await, Some(1.0));
    // A viewer is not a participant: Bob was told of nobody else.
    assert_eq!(
        bob.messages_where(|m| m["type"] == "participant_joined")
            .len(),
        1,
        "only the encoder joined"
    );

    // PATCH: a trickled candidate is taken, an ICE restart is refused, a stale ETag too.
    let frag = "a=ice-ufrag:x\r\na=ice-pwd:y\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let sdpfrag = ("content-type", "application/trickle-ice-sdpfrag");
    assert_eq!(
        send(
            &server,
            reqwest::Method::PATCH,
            &whep_at,
            &[sdpfrag, ("if-match", &etag)],
            frag
        )
        .await,
        204
    );
    assert_eq!(
        send(
            &server,
            reqwest::Method::PATCH,
            &whep_at,
            &[sdpfrag, ("if-match", "\"stale\"")],
            frag
        )
        .await,
        412
    );
    assert_eq!(
        send(
            &server,
            reqwest::Method::PATCH,
            &whep_at,
            &[sdpfrag, ("if-match", "\"*\"")],
            frag
        )
        .await,
        422
    );
    assert_eq!(
        send(
            &server,
            reqwest::Method::PATCH,
            &whep_at,
            &[("content-type", "text/plain")],
            frag
        )
        .await,
        415
    );

    // DELETE ends each session once; the encoder leaves the room.
    let other = format!("Bearer {other_room}");
    assert_eq!(
        send(
            &server,
            reqwest::Method::DELETE,
            &whep_at,
            &[("authorization", &other)],
            ""
        )
        .await,
        403
    );
    assert_eq!(
        send(&server, reqwest::Method::DELETE, &whep_at, &[], "").await,
        200
    );
    assert_eq!(
        send(&server, reqwest::Method::DELETE, &whep_at, &[], "").await,
        404
    );
    assert_eq!(
        send(
            &server,
            reqwest::Method::DELETE,
            "/whep/whip-room/0123",
            &[],
            ""
        )
        .await,
        404
    );
    assert_eq!(
        send(&server, reqwest::Method::DELETE, &whip_at, &[], "").await,
        200
    );
    eventually(
        Duration::from_secs(10),
        "bob sees the encoder leave",
        || {
            bob.saw(|m| {
                m["type"] == "participant_left" && m["participant_id"] == encoder_id.as_str()
            })
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (gauge, what) in [
        ("huddle_whep_viewers", "viewers"),
        ("huddle_whip_sessions", "publishers"),
    ] {
        let mut v = None;
        for _ in 0..50 {
            v = server.metric(gauge).await;
            if v == Some(0.0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(v, Some(0.0), "no {what} left");
    }
    assert_eq!(
        server.metric("huddle_participants").await,
        Some(1.0),
        "only bob is left"
    );
    let _ = pc.close().await;
    let _ = viewer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_viewer_holds_a_connection_slot_until_it_ends() {
    let server = Server::start_env(&[], &[("HUDDLE_LIMITS__MAX_CONNECTIONS", "1")]);
    let token = server.guest_token("capped", "Viewer").await;
    let viewer = loopback_pc().await;
    viewer
        .add_transceiver_from_kind(
            RTPCodecType::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: vec![],
            }),
        )
        .await
        .unwrap();
    let sdp = offer_of(&viewer).await;
    let p = post(
        &server,
        "/whep/capped",
        Some(&token),
        "application/sdp",
        &sdp,
    )
    .await;
    assert_eq!(p.status, 201, "the first viewer: {}", p.body);
    let at = p.location.expect("a Location");
    // The one slot is taken: the next offer is refused before anything is parsed.
    let p = post(
        &server,
        "/whep/capped",
        Some(&token),
        "application/sdp",
        "v=0",
    )
    .await;
    assert_eq!(p.status, 503, "over the cap: {}", p.body);
    assert!(p.body.contains("server_busy"), "{}", p.body);
    assert_eq!(
        server
            .metric("huddle_limit_hits_total{limit=\"connections\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(
        send(&server, reqwest::Method::DELETE, &at, &[], "").await,
        200
    );
    let mut status = 0;
    for _ in 0..50 {
        status = post(
            &server,
            "/whep/capped",
            Some(&token),
            "application/sdp",
            "v=0",
        )
        .await
        .status;
        if status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 400,
        "the slot is free again: a bad offer is judged on its own"
    );
    let _ = viewer.close().await;
}
