//! Test harness: the real `huddle` binary on loopback, and client peers built on an independent
//! WebRTC stack (the `webrtc` crate) that join through the real signaling protocol.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;

/// A peer connection of the `webrtc` crate that gathers only loopback candidates, with the
/// default codecs and the mid header extension (so forwarded streams map to their m-lines).
pub async fn loopback_pc() -> Arc<RTCPeerConnection> {
    let mut m = MediaEngine::default();
    m.register_default_codecs().unwrap();
    // The mid header extension lets the client map each forwarded stream to its m-line.
    for kind in [RTPCodecType::Audio, RTPCodecType::Video] {
        m.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned(),
            },
            kind,
            None,
        )
        .unwrap();
    }
    let registry = register_default_interceptors(Registry::new(), &mut m).unwrap();
    let mut s = SettingEngine::default();
    s.set_include_loopback_candidate(true);
    s.set_ip_filter(Box::new(|ip| ip.is_loopback()));
    s.set_network_types(vec![NetworkType::Udp4]);
    let api = APIBuilder::new()
        .with_media_engine(m)
        .with_interceptor_registry(registry)
        .with_setting_engine(s)
        .build();
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .unwrap(),
    );
    pc
}

/// A running `huddle` server with its own data directory; killed on drop.
pub struct Server {
    child: Child,
    pub url: String,
    pub data_dir: std::path::PathBuf,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let data_dir =
            std::env::temp_dir().join(format!("huddle-it-{}-{:x}", std::process::id(), rand_u64()));
        Self::start_in(&data_dir, extra)
    }

    pub fn start_in(data_dir: &std::path::Path, extra: &[&str]) -> Server {
        Self::start_full(data_dir, extra, &[])
    }

    /// A server with `HUDDLE_*` configuration variables, e.g. `("HUDDLE_LIMITS__MAX_ROOMS", "1")`.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let data_dir =
            std::env::temp_dir().join(format!("huddle-it-{}-{:x}", std::process::id(), rand_u64()));
        Self::start_full(&data_dir, extra, env)
    }

    pub fn start_full(data_dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = serve_command(data_dir)
            .args(extra)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the huddle binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("huddle printed its URL before exiting")
                .expect("stdout readable");
            if let Some(rest) = line.split("Huddle is ready at ").nth(1) {
                break rest.trim().trim_end_matches('/').to_string();
            }
        };
        Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The server's process, for tests that signal it and wait for its exit.
    pub fn process(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn ws_url(&self) -> String {
        format!("{}/ws", self.url.replacen("http://", "ws://", 1))
    }

    /// A guest token from `/api/token`.
    pub async fn guest_token(&self, room: &str, name: &str) -> String {
        let res: Value = reqwest::Client::new()
            .post(format!("{}/api/token", self.url))
            .json(&json!({"room": room, "name": name}))
            .send()
            .await
            .expect("token request")
            .json()
            .await
            .expect("token JSON");
        res["token"].as_str().expect("a token").to_string()
    }

    /// The value of one sample in `/metrics`, named exactly as exposed (`name{label="v"}`).
    #[allow(dead_code)] // not every test binary reads metrics
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }
}

impl Server {
    /// Kills the server but keeps its data directory (for restart tests).
    pub fn kill_keeping_data(mut self) -> std::path::PathBuf {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut self.data_dir)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.data_dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish()
}

/// A raw signaling connection.
pub struct Signal {
    tx: futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Message,
    >,
    rx: futures_util::stream::SplitStream<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    >,
}

impl Signal {
    pub async fn connect(url: &str) -> Signal {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket connects");
        let (tx, rx) = ws.split();
        Signal { tx, rx }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    pub async fn send_text(&mut self, text: String) {
        self.tx
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// The next JSON message, or None when the socket closed; panics after `timeout` (one
    /// deadline: the server's WebSocket pings do not extend it).
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.next())
                .await
                .expect("a signaling message within the timeout");
            match msg {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(_))) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        self.recv_timeout(Duration::from_secs(10))
            .await
            .expect("socket open")
    }

    /// Connects to `ws_url`, sends `join` with `token` and follows `redirect` answers (cluster
    /// mode) to the room's node. Returns the socket, the final answer (`joined`, or an error)
    /// and the URL that gave it.
    pub async fn join_following(ws_url: &str, token: &str) -> (Signal, Value, String) {
        let mut url = ws_url.to_string();
        for _ in 0..4 {
            let mut sig = Signal::connect(&url).await;
            sig.send(json!({"type": "join", "protocol": 1, "token": token}))
                .await;
            let answer = sig.recv().await;
            if answer["type"] != "redirect" {
                return (sig, answer, url);
            }
            let base = answer["url"].as_str().expect("redirect has a url");
            url = format!("{}/ws", base.replacen("http", "ws", 1));
        }
        panic!("more than 3 redirects joining through {ws_url}");
    }

    /// Reads until a message of `type` arrives (others are returned in the Vec).
    pub async fn recv_type(&mut self, ty: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let m = self.recv().await;
            if m["type"] == ty {
                return (m, skipped);
            }
            skipped.push(m);
        }
    }
}

/// RTP payloads a peer received, by publishing participant id.
pub type Received = Arc<Mutex<HashMap<String, Vec<Vec<u8>>>>>;

/// A client peer: signaling plus a `webrtc` crate peer connection, driven by a task that follows
/// the protocol (answer server offers, record incoming tracks).
pub struct Peer {
    pub participant_id: String,
    pub joined: Value,
    pub pc: Arc<RTCPeerConnection>,
    pub audio: Option<Arc<TrackLocalStaticRTP>>,
    pub received: Received,
    /// Every server message the driver saw, in order.
    pub messages: Arc<Mutex<Vec<Value>>>,
    cmd: mpsc::UnboundedSender<Value>,
}

impl Peer {
    /// Joins `room` with a guest token; publishes an Opus track when `publish`.
    pub async fn join(server: &Server, room: &str, name: &str, publish: bool) -> Peer {
        Self::join_with_tracks(server, room, name, usize::from(publish)).await
    }

    /// Joins `room` publishing `tracks` Opus tracks (`audio` is the first).
    pub async fn join_with_tracks(server: &Server, room: &str, name: &str, tracks: usize) -> Peer {
        let token = server.guest_token(room, name).await;
        // In cluster mode the join may be redirected: `ws_url` is the node that took it.
        let (mut sig, joined, ws_url) = Signal::join_following(&server.ws_url(), &token).await;
        assert_eq!(joined["type"], "joined", "join answered with {joined}");
        let participant_id = joined["participant_id"].as_str().unwrap().to_string();

        let pc = loopback_pc().await;

        let mut audio = None;
        for i in 0..tracks {
            let track = Arc::new(TrackLocalStaticRTP::new(
                RTCRtpCodecCapability {
                    mime_type: MIME_TYPE_OPUS.to_owned(),
                    clock_rate: 48000,
                    channels: 2,
                    ..Default::default()
                },
                format!("audio{i}"),
                participant_id.clone(),
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
            audio.get_or_insert(track);
        }
        let _dc = pc.create_data_channel("huddle", None).await.unwrap();

        let received: Received = Arc::default();
        let rec = received.clone();
        // The webrtc crate holds its on_track handler's lock until the returned future finishes:
        // read each track in a task of its own and return at once, or later tracks never fire.
        pc.on_track(Box::new(move |track, _, _| {
            let rec = rec.clone();
            tokio::spawn(async move {
                let from = track.stream_id();
                while let Ok((pkt, _)) = track.read_rtp().await {
                    rec.lock()
                        .unwrap()
                        .entry(from.clone())
                        .or_default()
                        .push(pkt.payload.to_vec());
                }
            });
            Box::pin(async {})
        }));

        let offer = pc.create_offer(None).await.unwrap();
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer).await.unwrap();
        let _ = gathered.recv().await;
        let sdp = pc.local_description().await.unwrap().sdp;
        sig.send(json!({"type": "offer", "sdp": sdp})).await;

        let messages: Arc<Mutex<Vec<Value>>> = Arc::default();
        let resume_token = joined["resume_token"].clone();
        let mut resume_sent: Option<std::time::Instant> = None;
        let (cmd, mut cmd_rx) = mpsc::unbounded_channel::<Value>();
        let pc2 = pc.clone();
        let msgs = messages.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = sig.recv_timeout(Duration::from_secs(3600)) => {
                        let Some(m) = m else { break };
                        msgs.lock().unwrap().push(m.clone());
                        if let (Some("resumed"), Some(t)) = (m["type"].as_str(), resume_sent.take()) {
                            let us = t.elapsed().as_micros() as u64;
                            msgs.lock().unwrap().push(json!({"type": "test_resume_took", "us": us}));
                        }
                        match m["type"].as_str() {
                            Some("answer") => {
                                let a = RTCSessionDescription::answer(m["sdp"].as_str().unwrap().to_string()).unwrap();
                                pc2.set_remote_description(a).await.expect("server answer applies");
                            }
                            Some("offer") => {
                                let o = RTCSessionDescription::offer(m["sdp"].as_str().unwrap().to_string()).unwrap();
                                pc2.set_remote_description(o).await.expect("server offer applies");
                                let a = pc2.create_answer(None).await.unwrap();
                                pc2.set_local_description(a).await.unwrap();
                                let sdp = pc2.local_description().await.unwrap().sdp;
                                sig.send(json!({"type": "answer", "sdp": sdp})).await;
                            }
                            _ => {}
                        }
                    }
                    c = cmd_rx.recv() => {
                        let Some(c) = c else { break };
                        if c["type"] == "test_drop_and_resume" {
                            // The network blips: the socket dies without a close frame, and
                            // after `away_ms` a new one resumes the session.
                            // (The new TCP connection opens at once; it stays quiet until then.)
                            drop(std::mem::replace(&mut sig, Signal::connect(&ws_url).await));
                            let away = c["away_ms"].as_u64().unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(away)).await;
                            msgs.lock().unwrap().push(json!({"type": "test_resume_sent"}));
                            resume_sent = Some(std::time::Instant::now());
                            sig.send(json!({"type": "resume", "protocol": 1, "token": token,
                                "resume_token": resume_token})).await;
                            continue;
                        }
                        sig.send(c).await;
                    }
                }
            }
        });

        Peer {
            participant_id,
            joined,
            pc,
            audio,
            received,
            messages,
            cmd,
        }
    }

    /// Sends a protocol message.
    pub fn send(&self, v: Value) {
        let _ = self.cmd.send(v);
    }

    /// Payloads received from `publisher` so far.
    pub fn payloads_from(&self, publisher: &str) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap()
            .get(publisher)
            .cloned()
            .unwrap_or_default()
    }

    /// Payloads received whose text tag is `tag` (see [`payload`]), on any m-line: a reused
    /// m-line's msid names the track it carried first, not the one it carries now.
    pub fn payloads_tagged(&self, tag: &str) -> Vec<Vec<u8>> {
        let prefix = format!("{tag}:");
        self.received
            .lock()
            .unwrap()
            .values()
            .flatten()
            .filter(|p| p.get(1..).is_some_and(|t| t.starts_with(prefix.as_bytes())))
            .cloned()
            .collect()
    }

    /// The server messages received so far that match `f`.
    pub fn messages_where(&self, f: impl Fn(&Value) -> bool) -> Vec<Value> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| f(m))
            .cloned()
            .collect()
    }

    /// Whether a server message matching `f` has arrived.
    pub fn saw(&self, f: impl Fn(&Value) -> bool) -> bool {
        self.messages.lock().unwrap().iter().any(f)
    }

    pub async fn close(&self) {
        let _ = self.pc.close().await;
    }
}

/// Writes Opus-shaped RTP with distinct, recognisable payloads until `stop` is set.
pub fn spawn_publisher(
    track: Arc<TrackLocalStaticRTP>,
    tag: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    tokio::spawn(async move {
        let mut seq: u16 = 1;
        let mut ts: u32 = 0;
        let mut n: u32 = 0;
        // Paced by the clock, as a capture device is (a sleep after each packet would run
        // slower than the RTP times say, and the SFU drops audio that falls 200 ms behind).
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            let pkt = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    sequence_number: seq,
                    timestamp: ts,
                    ..Default::default()
                },
                payload: payload(tag, n).into(),
            };
            let _ = track.write_rtp(&pkt).await;
            seq = seq.wrapping_add(1);
            ts = ts.wrapping_add(960);
            n += 1;
        }
    });
}

/// The payload of packet `n` from publisher `tag`: a TOC byte of a 20 ms Opus frame, then text.
pub fn payload(tag: &str, n: u32) -> Vec<u8> {
    let mut p = vec![0xfc];
    p.extend_from_slice(format!("{tag}:{n:06}:").as_bytes());
    p.extend((0..40u8).map(|i| i.wrapping_mul(7).wrapping_add(n as u8)));
    p
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A 1 × 1 PNG (gets a thumbnail).
#[allow(dead_code)] // for the tests that upload files
pub const PNG: [u8; 70] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f,
    0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47, 0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// `POST /api/rooms/{room}/files?name=NAME` on `server`, with `token` when given: the status
/// and the JSON answer. The declared content type is deliberately wrong (the server sniffs).
#[allow(dead_code)] // for the tests that upload files
pub async fn upload(
    server: &Server,
    room: &str,
    token: Option<&str>,
    name: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/rooms/{room}/files?name={name}", server.url))
        .header("content-type", "text/html") // ignored: the server sniffs
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("upload request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `GET path` on `server`, with `token` when given: the status and the bytes.
#[allow(dead_code)] // for the tests that download files
pub async fn get(server: &Server, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", server.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.expect("download request");
    let status = res.status().as_u16();
    (
        status,
        res.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    )
}

/// Joins `room` as `name` with a guest token over a bare signaling socket: the socket, the
/// token and the `joined` message.
pub async fn join(server: &Server, room: &str, name: &str) -> (Signal, String, Value) {
    let token = server.guest_token(room, name).await;
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    let joined = s.recv_type("joined").await.0;
    (s, token, joined)
}

/// `huddle serve` on `data_dir` with every port picked by the system (HTTP on 127.0.0.1).
pub fn serve_command(data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_huddle"));
    c.args([
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--media-port",
        "0",
        "--turn-port",
        "0",
        "--data-dir",
    ])
    .arg(data_dir);
    c
}
