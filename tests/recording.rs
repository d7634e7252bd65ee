//! Recording against the real server: the room API and the hosts' message start and stop it,
//! the room is told, webhooks and metrics follow, files download with their credentials only,
//! and a recording cut off by a crash is a valid file up to then, listed `interrupted` after
//! the restart. (A browser meeting recorded and checked with ffprobe and ffmpeg, tones and all:
//! tests/e2e/recording.test.mjs.)

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const API_KEY: &str = "rec-key";
const API_SECRET: &str = "rec-api-secret-0123456789abcdef";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn admin() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": API_KEY, "exp": now() + 600, "grants": {"admin": true}}),
        &jsonwebtoken::EncodingKey::from_secret(API_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A data directory and a configuration with the room API (and webhooks to `hook`).
fn setup(hook: Option<&str>) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "huddle-rec-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("huddle.toml");
    let mut toml = format!("[api]\nkey = \"{API_KEY}\"\nsecret = \"{API_SECRET}\"\n");
    if let Some(url) = hook {
        toml.push_str(&format!("[webhooks]\nurls = [\"{url}\"]\n"));
    }
    std::fs::write(&cfg, toml).unwrap();
    (dir, cfg)
}

fn start(dir: &std::path::Path, cfg: &std::path::Path) -> Server {
    Server::start_in(dir, &["--config", cfg.to_str().unwrap()])
}

async fn api(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// `method` on `/api/rooms/{room}/recording` with an admin token.
async fn recording(server: &Server, method: reqwest::Method, room: &str) -> (u16, Value) {
    let path = format!("/api/rooms/{room}/recording");
    api(server, method, &path, Some(&admin())).await
}

/// `ffprobe` on `path`: its streams' codecs and packet counts. Fails the test with what it said
/// when it refuses the file, or when ffprobe is missing (`.ci/run` installs it).
fn probe(path: &std::path::Path) -> Vec<(String, u64)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_packets", "-show_entries"])
        .arg("stream=codec_name,nb_read_packets")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe runs (Debian package ffmpeg; .ci/run installs it)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffprobe refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_name"].as_str().unwrap_or("").to_string(),
                s["nb_read_packets"]
                    .as_str()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect()
}

/// Posts webhook bodies into a list.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let g = g.clone();
            async move {
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    g.lock().unwrap().push(v);
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

/// Waits for `room`'s newest recording to be `ready`.
async fn ready(server: &Server, room: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, list) = api(
            server,
            reqwest::Method::GET,
            &format!("/api/rooms/{room}/recordings"),
            Some(&admin()),
        )
        .await;
        assert_eq!(s, 200, "{list}");
        let rec = list["recordings"][0].clone();
        if rec["state"] == "ready" {
            return rec;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within 20 s: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_recording_is_announced_hooked_counted_and_downloaded_with_credentials_only() {
    let (url, hooks) = receiver().await;
    let (dir, cfg) = setup(Some(&url));
    let server = start(&dir, &cfg);
    let room = "recorded";
    // Alice is first (she hosts, open joining); Bob is not a host.
    let alice = Peer::join(&server, room, "alice", true).await;
    let bob = Peer::join(&server, room, "bob", false).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    spawn_publisher(alice.audio.clone().unwrap(), "alice", stop.clone());

    // Nobody may start one without credentials, a non-host not over the socket either.
    let (s, _) = api(
        &server,
        reqwest::Method::POST,
        &format!("/api/rooms/{room}/recording"),
        None,
    )
    .await;
    assert_eq!(s, 401);
    bob.send(json!({"type": "recording", "active": true, "request_id": "r1"}));
    eventually(Duration::from_secs(5), "bob refused", || {
        bob.saw(|m| m["type"] == "error" && m["code"] == "forbidden" && m["request_id"] == "r1")
    })
    .await;

    // The room API starts it: everyone is told; a second start is a conflict.
    let (s, started) = recording(&server, reqwest::Method::POST, room).await;
    assert_eq!(s, 201, "{started}");
    assert_eq!(started["state"], "recording");
    let id = started["id"].as_str().unwrap().to_string();
    for p in [&alice, &bob] {
        eventually(Duration::from_secs(5), "the recording notice", || {
            p.saw(|m| m["type"] == "recording" && m["active"] == true)
        })
        .await;
    }
    let (s, again) = recording(&server, reqwest::Method::POST, room).await;
    assert_eq!((s, again["error"].as_str()), (409, Some("conflict")));
    // Someone who joins now is told in `joined`.
    let token = server.guest_token(room, "carol").await;
    let (mut carol, joined, _) = Signal::join_following(&server.ws_url(), &token).await;
    assert_eq!(joined["recording"], true, "{joined}");
    assert_eq!(server.metric("huddle_recordings_active").await, Some(1.0));

    tokio::time::sleep(Duration::from_secs(5)).await;
    let written = server
        .metric("huddle_recording_bytes_written_total")
        .await
        .unwrap_or(0.0);
    assert!(written > 0.0, "bytes written while it runs: {written}");

    // A host stops it over the socket.
    alice.send(json!({"type": "recording", "active": false}));
    let (m, _) = carol.recv_type("recording").await;
    assert_eq!(m["active"], false);
    let rec = ready(&server, room).await;
    assert_eq!(rec["id"], id.as_str());
    assert_eq!(rec["started_by"], "api");
    let files = rec["files"].as_array().unwrap();
    let identity = alice.joined["identity"].as_str().unwrap();
    let mine: Vec<&Value> = files
        .iter()
        .filter(|f| f["participant"] == identity)
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "one file for Alice (Bob published nothing): {rec}"
    );
    assert!(files.iter().any(|f| f["kind"] == "mix"), "{rec}");
    assert_eq!(files.len(), 2, "{rec}");
    let d = mine[0]["duration_ms"].as_u64().unwrap();
    assert!((4_500..=7_500).contains(&d), "Alice's file lasts {d} ms");
    assert_eq!(server.metric("huddle_recordings_active").await, Some(0.0));
    assert_eq!(
        server
            .metric("huddle_recording_packets_dropped_total")
            .await,
        Some(0.0)
    );

    // Downloads: the admin token, ranges, nothing outside the recording.
    let name = mine[0]["name"].as_str().unwrap();
    let file_url = format!("/api/rooms/{room}/recordings/{id}/{name}");
    let (s, _) = get(&server, &file_url, None).await;
    assert_eq!(s, 401);
    let res = reqwest::Client::new()
        .get(format!("{}{file_url}", server.url))
        .bearer_auth(admin())
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 206);
    assert_eq!(&res.bytes().await.unwrap()[..], &[0x1a, 0x45, 0xdf, 0xa3]);
    for bad in [
        format!("/api/rooms/{room}/recordings/{id}/recording.json"),
        format!("/api/rooms/{room}/recordings/{id}/..%2Frecording.json"),
        format!("/api/rooms/{room}/recordings/RC_..%2F..%2Fx/{name}"),
        format!("/api/rooms/other/recordings/{id}/{name}"),
    ] {
        let (s, _) = get(&server, &bad, Some(&admin())).await;
        assert_eq!(s, 404, "{bad}");
    }
    let stored = dir.join("recordings").join(room).join(&id).join(name);
    let streams = probe(&stored);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(streams[0].0, "opus");
    assert!(streams[0].1 >= 200, "packets in Alice's file: {streams:?}");

    // The webhooks, in order, each with the recording.
    eventually(Duration::from_secs(10), "three recording webhooks", || {
        hooks
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h["event"].as_str().unwrap_or("").starts_with("recording_"))
            .count()
            >= 3
    })
    .await;
    let events: Vec<(String, Value)> = hooks
        .lock()
        .unwrap()
        .iter()
        .filter(|h| h["event"].as_str().unwrap_or("").starts_with("recording_"))
        .map(|h| {
            (
                h["event"].as_str().unwrap().to_string(),
                h["recording"].clone(),
            )
        })
        .collect();
    let kinds: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        kinds,
        ["recording_started", "recording_ended", "recording_ready"]
    );
    assert!(events.iter().all(|(_, r)| r["id"] == id.as_str()));
    assert_eq!(events[2].1["files"].as_array().map(Vec::len), Some(2));

    // Stopping what is not running is a 404; the room's list keeps the recording.
    let (s, _) = recording(&server, reqwest::Method::DELETE, room).await;
    assert_eq!(s, 404);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(server);
}

#[tokio::test]
async fn a_recording_cut_off_by_a_crash_is_valid_up_to_then_and_listed_interrupted() {
    let (dir, cfg) = setup(None);
    let server = start(&dir, &cfg);
    let room = "crashy";
    let alice = Peer::join(&server, room, "alice", true).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    spawn_publisher(alice.audio.clone().unwrap(), "alice", stop.clone());
    let (s, started) = recording(&server, reqwest::Method::POST, room).await;
    assert_eq!(s, 201, "{started}");
    let id = started["id"].as_str().unwrap().to_string();
    // The participant's file begins after 3 s without a camera; then about a cluster a second.
    tokio::time::sleep(Duration::from_secs(7)).await;
    // SIGKILL: nothing is closed or finished.
    let dir = server.kill_keeping_data();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let server = start(&dir, &cfg);
    let (s, list) = api(
        &server,
        reqwest::Method::GET,
        &format!("/api/rooms/{room}/recordings"),
        Some(&admin()),
    )
    .await;
    assert_eq!(s, 200);
    let rec = &list["recordings"][0];
    assert_eq!(rec["id"], id.as_str());
    assert_eq!(rec["state"], "interrupted", "{list}");
    let files = rec["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "Alice's file and the mix: {list}");
    for f in files {
        let name = f["name"].as_str().unwrap();
        let path = dir.join("recordings").join(room).join(&id).join(name);
        let streams = probe(&path);
        assert_eq!(streams.len(), 1, "{name}: {streams:?}");
        assert_eq!(streams[0].0, "opus", "{name}");
        // At least 3 s of 20 ms packets made it to the disk.
        assert!(streams[0].1 >= 150, "{name}: {streams:?}");
        let (s, body) = get(
            &server,
            &format!("/api/rooms/{room}/recordings/{id}/{name}"),
            Some(&admin()),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(body.len() as u64, f["bytes"].as_u64().unwrap());
    }
}
