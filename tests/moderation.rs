//! Moderation against the real server: the room API and its admin credential, remove, mute and
//! end reaching the participants, password and lobby rooms, webhooks, raised hands, typing and
//! chat acknowledgements.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const API_KEY: &str = "test-key";
const API_SECRET: &str = "test-api-secret-0123456789";

/// A server with the room API configured (and webhooks to `hook`, when given).
fn start(hook: Option<&str>) -> Server {
    let dir = std::env::temp_dir().join(format!(
        "huddle-mod-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("huddle.toml");
    let mut toml = format!("[api]\nkey = \"{API_KEY}\"\nsecret = \"{API_SECRET}\"\n");
    if let Some(url) = hook {
        toml.push_str(&format!(
            "[webhooks]\nurls = [\"{url}\"]\nmax_attempts = 4\ntimeout_secs = 2\n"
        ));
    }
    std::fs::write(&cfg, toml).unwrap();
    Server::start_in(&dir, &["--config", cfg.to_str().unwrap()])
}

fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A good admin token for every room.
fn admin() -> String {
    sign(
        &json!({"iss": API_KEY, "exp": now() + 600, "grants": {"admin": true}}),
        API_SECRET,
    )
}

/// A participant token signed with the server's own token secret.
fn participant_token(server: &Server, room: &str, identity: &str, admin: bool) -> String {
    let mut args = vec![
        "token".to_string(),
        "--data-dir".into(),
        server.data_dir.to_string_lossy().into_owned(),
        "--room".into(),
        room.into(),
        "--identity".into(),
        identity.into(),
    ];
    if admin {
        args.push("--admin".into());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(&args)
        .output()
        .expect("huddle token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn api(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("API request");
    let status = res.status().as_u16();
    let v = res.json().await.unwrap_or(Value::Null);
    (status, v)
}

/// Joins over a raw socket; returns the socket and the first answer.
async fn join_raw(server: &Server, token: &str, password: Option<&str>) -> (Signal, Value) {
    let mut s = Signal::connect(&server.ws_url()).await;
    let mut j = json!({"type": "join", "protocol": 1, "token": token});
    if let Some(p) = password {
        j["password"] = json!(p);
    }
    s.send(j).await;
    let first = s.recv().await;
    (s, first)
}

async fn join_guest(server: &Server, room: &str, name: &str) -> (Signal, Value) {
    let t = server.guest_token(room, name).await;
    let (s, j) = join_raw(server, &t, None).await;
    assert_eq!(j["type"], "joined", "{j}");
    (s, j)
}

use reqwest::Method;

#[tokio::test]
async fn every_endpoint_refuses_a_missing_bad_or_unprivileged_credential() {
    let server = start(None);
    let expired = sign(
        &json!({"iss": API_KEY, "exp": now() - 60, "grants": {"admin": true}}),
        API_SECRET,
    );
    let forged = sign(
        &json!({"iss": API_KEY, "exp": now() + 600, "grants": {"admin": true}}),
        "some-other-secret-0123456789",
    );
    let wrong_key = sign(
        &json!({"iss": "other-key", "exp": now() + 600, "grants": {"admin": true}}),
        API_SECRET,
    );
    let no_admin = sign(
        &json!({"iss": API_KEY, "exp": now() + 600, "grants": {"admin": false}}),
        API_SECRET,
    );
    let other_room = sign(
        &json!({"iss": API_KEY, "exp": now() + 600, "room": "elsewhere", "grants": {"admin": true}}),
        API_SECRET,
    );
    // A participant token with the admin grant is not an API credential.
    let participant = participant_token(&server, "r", "alice", true);
    let endpoints: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "/api/rooms", None),
        (Method::POST, "/api/rooms", Some(json!({"name": "r"}))),
        (Method::GET, "/api/rooms/r", None),
        (Method::DELETE, "/api/rooms/r", None),
        (Method::GET, "/api/rooms/r/participants", None),
        (Method::DELETE, "/api/rooms/r/participants/alice", None),
        (
            Method::POST,
            "/api/rooms/r/participants/alice/mute",
            Some(json!({"kind": "audio"})),
        ),
    ];
    for (method, path, body) in &endpoints {
        for (token, why) in [
            (None, "no credential"),
            (Some("garbage"), "not a JWT"),
            (Some(expired.as_str()), "expired"),
            (Some(forged.as_str()), "signed with another secret"),
            (Some(wrong_key.as_str()), "another API key"),
            (Some(participant.as_str()), "a participant token"),
        ] {
            let (status, v) = api(&server, method.clone(), path, token, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {why}: {v}");
            assert_eq!(v["error"], "unauthorized");
        }
        let (status, v) = api(&server, method.clone(), path, Some(&no_admin), body.clone()).await;
        assert_eq!(status, 403, "{method} {path} without the admin grant: {v}");
        let (status, _) = api(
            &server,
            method.clone(),
            path,
            Some(&other_room),
            body.clone(),
        )
        .await;
        assert_eq!(status, 403, "{method} {path} with a token for another room");
    }
    // A room-scoped token works for its room.
    let scoped = sign(
        &json!({"iss": API_KEY, "exp": now() + 600, "room": "r", "grants": {"admin": true}}),
        API_SECRET,
    );
    let (status, _) = api(
        &server,
        Method::POST,
        "/api/rooms",
        Some(&scoped),
        Some(json!({"name": "r"})),
    )
    .await;
    assert_eq!(status, 201);

    // Without [api], the API refuses everyone.
    let plain = Server::start(&[]);
    let (status, _) = api(&plain, Method::GET, "/api/rooms", Some(&admin()), None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn rooms_are_listed_with_counts_and_created_rooms_keep_their_settings() {
    let server = start(None);
    let a = admin();
    let (status, v) = api(
        &server,
        Method::POST,
        "/api/rooms",
        Some(&a),
        Some(json!({"name": "board", "max_participants": 1, "password": "sesame", "lobby": false})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["name"], "board");
    assert_eq!(v["max_participants"], 1);
    assert_eq!(v["password_protected"], true);
    assert!(
        v.get("password").is_none() && v.get("password_hash").is_none(),
        "{v}"
    );
    // Again: an update, not a creation.
    let (status, _) = api(
        &server,
        Method::POST,
        "/api/rooms",
        Some(&a),
        Some(json!({"name": "board", "max_participants": 2, "password": "sesame"})),
    )
    .await;
    assert_eq!(status, 200);
    for bad in [
        json!({"name": "bad name"}),
        json!({"name": "x", "max_participants": 0}),
        json!({"name": "x", "max_participants": 100000}),
        json!({"name": "x", "colour": "red"}),
        json!({"nom": "x"}),
    ] {
        let (status, v) = api(
            &server,
            Method::POST,
            "/api/rooms",
            Some(&a),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"], "bad_request");
    }

    // A room opened by joining gets the defaults.
    let (_x1, _) = join_guest(&server, "casual", "One").await;
    let (_x2, _) = join_guest(&server, "casual", "Two").await;
    let (status, v) = api(&server, Method::GET, "/api/rooms", Some(&a), None).await;
    assert_eq!(status, 200);
    let rooms = v["rooms"].as_array().unwrap();
    let find = |n: &str| rooms.iter().find(|r| r["name"] == n).cloned().unwrap();
    assert_eq!(find("casual")["participants"], 2);
    assert_eq!(find("casual")["created"], false);
    assert_eq!(find("casual")["password_protected"], false);
    assert_eq!(
        find("board")["participants"],
        0,
        "an empty created room is listed"
    );
    assert_eq!(find("board")["created"], true);
    assert_eq!(find("board")["max_participants"], 2);

    let (status, v) = api(
        &server,
        Method::GET,
        "/api/rooms/casual/participants",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = v["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"One") && names.contains(&"Two"));
    let (status, _) = api(&server, Method::GET, "/api/rooms/nowhere", Some(&a), None).await;
    assert_eq!(status, 404);
    let (status, _) = api(
        &server,
        Method::GET,
        "/api/rooms/nowhere/participants",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The cap applies: a room of 1.
    api(
        &server,
        Method::POST,
        "/api/rooms",
        Some(&a),
        Some(json!({"name": "solo", "max_participants": 1})),
    )
    .await;
    let (_s1, _) = join_guest(&server, "solo", "First").await;
    let t = server.guest_token("solo", "Second").await;
    let (_s2, m) = join_raw(&server, &t, None).await;
    assert_eq!(m["code"], "room_full", "{m}");

    // Settings survive a restart (SQLite).
    let dir = server.kill_keeping_data();
    let server = Server::start_in(
        &dir,
        &["--config", dir.join("huddle.toml").to_str().unwrap()],
    );
    let (status, v) = api(&server, Method::GET, "/api/rooms/board", Some(&a), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["password_protected"], true);
    assert_eq!(v["max_participants"], 2);
}

#[tokio::test]
async fn remove_and_end_reach_every_participant() {
    let server = start(None);
    let a = admin();
    let (mut alice, _) = join_guest(&server, "standup", "Alice").await;
    let bob_token = participant_token(&server, "standup", "bob", false);
    let (mut bob, j) = join_raw(&server, &bob_token, None).await;
    assert_eq!(j["type"], "joined");
    let bob_id = j["participant_id"].as_str().unwrap().to_string();
    alice.recv_type("participant_joined").await;

    let (status, _) = api(
        &server,
        Method::DELETE,
        "/api/rooms/standup/participants/nobody",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, v) = api(
        &server,
        Method::DELETE,
        "/api/rooms/standup/participants/bob",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["participant_id"], bob_id.as_str());
    let (leave, _) = bob.recv_type("leave").await;
    assert_eq!(leave["reason"], "removed");
    assert!(
        bob.recv_timeout(Duration::from_secs(5)).await.is_none(),
        "bob's socket closes"
    );
    let (left, _) = alice.recv_type("participant_left").await;
    assert_eq!(left["participant_id"], bob_id.as_str());
    assert_eq!(left["reason"], "removed");

    // End the room: everyone in it, and whoever waits in its lobby, gets room_ended.
    api(
        &server,
        Method::POST,
        "/api/rooms",
        Some(&a),
        Some(json!({"name": "standup", "lobby": true})),
    )
    .await;
    let carol = server.guest_token("standup", "Carol").await;
    let (mut carol, m) = join_raw(&server, &carol, None).await;
    assert_eq!(m["type"], "lobby", "{m}");
    alice.recv_type("knock").await;
    let (status, v) = api(
        &server,
        Method::DELETE,
        "/api/rooms/standup",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["participants"], 1);
    let (leave, _) = alice.recv_type("leave").await;
    assert_eq!(leave["reason"], "room_ended");
    let (leave, _) = carol.recv_type("leave").await;
    assert_eq!(leave["reason"], "room_ended");
    // The room and its settings are gone.
    let a2 = a.clone();
    let url = server.url.clone();
    let mut gone = false;
    for _ in 0..50 {
        let res = reqwest::Client::new()
            .get(format!("{url}/api/rooms/standup"))
            .bearer_auth(&a2)
            .send()
            .await
            .unwrap();
        if res.status() == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the ended room disappears");
    let (status, _) = api(
        &server,
        Method::DELETE,
        "/api/rooms/standup",
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_api_mute_reaches_everyone_stops_forwarding_and_the_participant_may_unmute() {
    let server = start(None);
    let a = admin();
    let alice = Peer::join(&server, "mutes", "Alice", true).await;
    let bob = Peer::join(&server, "mutes", "Bob", false).await;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(alice.audio.clone().unwrap(), "alice", stop.clone());
    let from = alice.participant_id.clone();
    eventually(Duration::from_secs(15), "bob hears alice", || {
        bob.payloads_from(&from).len() > 10
    })
    .await;
    let identity = alice.joined["identity"].as_str().unwrap().to_string();

    let (status, v) = api(
        &server,
        Method::POST,
        &format!("/api/rooms/mutes/participants/{identity}/mute"),
        Some(&a),
        Some(json!({"kind": "audio"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let is_mute = |muted: bool| {
        let from = from.clone();
        move |m: &Value| {
            m["type"] == "mute" && m["participant_id"] == from.as_str() && m["muted"] == muted
        }
    };
    eventually(Duration::from_secs(5), "both see the server mute", || {
        alice.saw(|m| is_mute(true)(m) && m["by_server"] == true)
            && bob.saw(|m| is_mute(true)(m) && m["by_server"] == true)
    })
    .await;
    // Forwarding stops (allow what was in flight).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = bob.payloads_from(&from).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        bob.payloads_from(&from).len(),
        before,
        "nothing forwarded while muted"
    );
    // The participant list shows it.
    let (_, v) = api(
        &server,
        Method::GET,
        "/api/rooms/mutes/participants",
        Some(&a),
        None,
    )
    .await;
    let me = v["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["participant_id"] == from.as_str())
        .cloned()
        .unwrap();
    assert_eq!(me["audio_muted"], true);

    // The server does not unmute; the participant does.
    let (status, _) = api(
        &server,
        Method::POST,
        &format!("/api/rooms/mutes/participants/{identity}/mute"),
        Some(&a),
        Some(json!({"kind": "audio", "muted": false})),
    )
    .await;
    assert_eq!(status, 400);
    alice.send(json!({"type": "mute", "kind": "audio", "muted": false}));
    eventually(Duration::from_secs(5), "bob sees the unmute", || {
        bob.saw(is_mute(false))
    })
    .await;
    eventually(Duration::from_secs(10), "forwarding resumes", || {
        bob.payloads_from(&from).len() > before + 10
    })
    .await;
    let (status, _) = api(
        &server,
        Method::POST,
        "/api/rooms/mutes/participants/nobody/mute",
        Some(&a),
        Some(json!({"kind": "video"})),
    )
    .await;
    assert_eq!(status, 404);
    stop.store(true, Ordering::Relaxed);
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn password_rooms_want_the_password_and_admins_skip_it() {
    let server = start(None);
    api(
        &server,
        Method::POST,
        "/api/rooms",
        Some(&admin()),
        Some(json!({"name": "vault", "password": "sesame"})),
    )
    .await;
    let t = server.guest_token("vault", "Guest").await;
    for (pw, code) in [
        (None, "password_required"),
        (Some(""), "password_required"),
        (Some("Sesame"), "wrong_password"),
    ] {
        let (mut s, m) = join_raw(&server, &t, pw).await;
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["code"], code, "{m}");
        assert!(
            s.recv_timeout(Duration::from_secs(5)).await.is_none(),
            "closed after {code}"
        );
    }
    let (_s, m) = join_raw(&server, &t, Some("sesame")).await;
    assert_eq!(m["type"], "joined", "{m}");
    let host = participant_token(&server, "vault", "host", true);
    let (_h, m) = join_raw(&server, &host, None).await;
    assert_eq!(m["type"], "joined", "an admin needs no password: {m}");
}

#[tokio::test]
async fn lobby_joiners_wait_until_an_admin_admits_or_denies_them() {
    let server = start(None);
    api(
        &server,
        Method::POST,
        "/api/rooms",
        Some(&admin()),
        Some(json!({"name": "clinic", "lobby": true})),
    )
    .await;
    // Someone waits before any host is there; the host gets the pending knock on entering.
    let early = server.guest_token("clinic", "Early").await;
    let (mut early, m) = join_raw(&server, &early, None).await;
    assert_eq!(m["type"], "lobby", "{m}");
    let host = participant_token(&server, "clinic", "host", true);
    let (mut host, m) = join_raw(&server, &host, None).await;
    assert_eq!(m["type"], "joined", "{m}");
    let (knock, _) = host.recv_type("knock").await;
    assert_eq!(knock["name"], "Early");
    let early_id = knock["participant_id"].as_str().unwrap().to_string();
    // Messages other than leave/ping are refused while waiting.
    early
        .send(json!({"type": "chat", "text": "let me in", "request_id": "q"}))
        .await;
    let e = early.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["request_id"].as_str()),
        (Some("not_joined"), Some("q"))
    );
    host.send(json!({"type": "admit", "participant_id": early_id}))
        .await;
    let (j, _) = early.recv_type("joined").await;
    assert_eq!(j["participants"].as_array().unwrap().len(), 1);
    let (ended, _) = host.recv_type("knock_ended").await;
    assert_eq!(ended["outcome"], "admitted");
    host.recv_type("participant_joined").await;

    // A non-admin may not answer while an admin is in; the admin denies.
    let late = server.guest_token("clinic", "Late").await;
    let (mut late, m) = join_raw(&server, &late, None).await;
    assert_eq!(m["type"], "lobby");
    let (knock, _) = host.recv_type("knock").await;
    let late_id = knock["participant_id"].as_str().unwrap().to_string();
    early
        .send(json!({"type": "admit", "participant_id": late_id, "request_id": "x"}))
        .await;
    let (e, _) = early.recv_type("error").await;
    assert_eq!(e["code"], "forbidden");
    host.send(json!({"type": "deny", "participant_id": late_id}))
        .await;
    let (leave, _) = late.recv_type("leave").await;
    assert_eq!(leave["reason"], "denied");
    assert!(late.recv_timeout(Duration::from_secs(5)).await.is_none());
    host.send(json!({"type": "admit", "participant_id": late_id, "request_id": "y"}))
        .await;
    let (e, _) = host.recv_type("error").await;
    assert_eq!(e["code"], "not_waiting");

    // Without an admin in the room, anyone in it may admit.
    api(
        &server,
        Method::POST,
        "/api/rooms",
        Some(&admin()),
        Some(json!({"name": "club", "lobby": true})),
    )
    .await;
    let first = participant_token(&server, "club", "first", true);
    let (mut first_admin, _) = join_raw(&server, &first, None).await;
    let g = server.guest_token("club", "Guest").await;
    let (mut guest, m) = join_raw(&server, &g, None).await;
    assert_eq!(m["type"], "lobby");
    let (knock, _) = first_admin.recv_type("knock").await;
    first_admin
        .send(json!({"type": "admit", "participant_id": knock["participant_id"]}))
        .await;
    guest.recv_type("joined").await;
    first_admin.send(json!({"type": "leave"})).await;
    guest.recv_type("participant_left").await;
    let w = server.guest_token("club", "Walker").await;
    let (mut walker, m) = join_raw(&server, &w, None).await;
    assert_eq!(m["type"], "lobby");
    let (knock, _) = guest.recv_type("knock").await;
    guest
        .send(json!({"type": "admit", "participant_id": knock["participant_id"]}))
        .await;
    walker.recv_type("joined").await;
}

/// What the webhook receiver got: (signature header, event header, body).
type Hooks = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

async fn receiver() -> (String, Hooks) {
    let got: Hooks = Arc::default();
    let refused_once = Arc::new(AtomicBool::new(false));
    let g = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let g = g.clone();
                let refused_once = refused_once.clone();
                async move {
                    // The very first delivery fails: the sender must retry it, in order.
                    if !refused_once.swap(true, Ordering::SeqCst) {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let h = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    g.lock().unwrap().push((
                        h("x-huddle-signature"),
                        h("x-huddle-event"),
                        body.to_vec(),
                    ));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn webhooks_arrive_signed_and_in_order_after_a_retry() {
    let (url, got) = receiver().await;
    let server = start(Some(&url));
    let (mut alice, _) = join_guest(&server, "hooked", "Alice").await;
    let (mut bob, _) = join_guest(&server, "hooked", "Bob").await;
    alice.recv_type("participant_joined").await;
    bob.send(json!({"type": "leave"})).await;
    alice.recv_type("participant_left").await;
    alice.send(json!({"type": "leave"})).await;
    let _ = alice.recv_timeout(Duration::from_secs(5)).await;
    eventually(Duration::from_secs(15), "six webhook deliveries", || {
        got.lock().unwrap().len() >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = got.lock().unwrap().clone();
    let mut seen = Vec::new();
    for (sig, event, body) in &got {
        assert_eq!(
            sig,
            &format!("sha256={}", hmac_hex(API_SECRET, body)),
            "signature over the body"
        );
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["event"], event.as_str());
        assert_eq!(v["room"], "hooked");
        assert!(v["id"].as_str().unwrap().starts_with("EV_"));
        seen.push((
            v["event"].as_str().unwrap().to_string(),
            v["participant"]["name"].as_str().unwrap_or("").to_string(),
            v["reason"].as_str().unwrap_or("").to_string(),
        ));
    }
    let expect: Vec<(String, String, String)> = [
        ("room_started", "", ""),
        ("participant_joined", "Alice", ""),
        ("participant_joined", "Bob", ""),
        ("participant_left", "Bob", "left"),
        ("participant_left", "Alice", "left"),
        ("room_finished", "", ""),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(seen, expect);
}

#[tokio::test]
async fn hands_typing_and_chat_acknowledgements() {
    let server = start(None);
    let (mut alice, j) = join_guest(&server, "class", "Alice").await;
    let alice_id = j["participant_id"].as_str().unwrap().to_string();
    let (mut bob, _) = join_guest(&server, "class", "Bob").await;
    alice.recv_type("participant_joined").await;

    alice.send(json!({"type": "hand", "raised": true})).await;
    for s in [&mut alice, &mut bob] {
        let (h, _) = s.recv_type("hand").await;
        assert_eq!(h["participant_id"], alice_id.as_str());
        assert_eq!(h["raised"], true);
    }
    // A late joiner sees the raised hand in the participant list.
    let (_carol, j) = join_guest(&server, "class", "Carol").await;
    let a = j["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["participant_id"] == alice_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(a["hand_raised"], true);

    alice.send(json!({"type": "typing"})).await;
    let (t, _) = bob.recv_type("typing").await;
    assert_eq!(
        (t["participant_id"].as_str(), t["active"].as_bool()),
        (Some(alice_id.as_str()), Some(true))
    );

    alice
        .send(json!({"type": "chat", "text": "hello", "client_msg_id": "c-42"}))
        .await;
    let (echo, skipped) = alice.recv_type("chat").await;
    assert!(
        skipped.iter().all(|m| m["type"] != "typing"),
        "no typing echo to the typist"
    );
    assert_eq!(echo["client_msg_id"], "c-42");
    assert_eq!(echo["message"]["text"], "hello");
    let (copy, _) = bob.recv_type("chat").await;
    assert!(copy.get("client_msg_id").is_none(), "{copy}");
    assert_eq!(copy["message"]["id"], echo["message"]["id"]);
}

#[test]
fn the_openapi_file_parses_and_documents_every_route() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = root.join("docs/openapi.yaml");
    let text = std::fs::read_to_string(&file).expect("docs/openapi.yaml exists");
    let check = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, yaml, json; d = yaml.safe_load(open(sys.argv[1])); \
             assert str(d['openapi']).startswith('3'), 'not OpenAPI 3'; \
             print(json.dumps(sorted(d['paths'])))",
        )
        .arg(&file)
        .output();
    match check {
        Ok(out) if out.status.success() => {
            let paths: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
            for p in [
                "/api/rooms",
                "/api/rooms/{room}",
                "/api/rooms/{room}/participants",
                "/api/rooms/{room}/participants/{identity}",
                "/api/rooms/{room}/participants/{identity}/mute",
                "/api/rooms/{room}/recording",
                "/api/rooms/{room}/recordings",
                "/api/rooms/{room}/recordings/{id}/{file}",
            ] {
                assert!(paths.iter().any(|x| x == p), "openapi.yaml lacks {p}");
            }
        }
        Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No module named 'yaml'") => {
            eprintln!("skipped the YAML parse: python3 has no yaml module (pip install pyyaml)");
            assert!(text.contains("openapi: 3"));
        }
        Ok(out) => panic!(
            "docs/openapi.yaml does not parse: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            eprintln!("skipped the YAML parse: no python3 ({e})");
            assert!(text.contains("openapi: 3"));
        }
    }
}

#[tokio::test]
async fn the_first_in_a_room_opened_by_link_hosts_from_the_socket() {
    let server = Server::start(&[]);
    let (mut a, j) = join_guest(&server, "link", "Ada").await;
    assert_eq!(j["host"], true, "the first by link hosts: {j}");
    let a_id = j["participant_id"].as_str().unwrap().to_string();
    let (mut b, j) = join_guest(&server, "link", "Bo").await;
    assert!(j.get("host").is_none(), "only the first hosts: {j}");
    assert_eq!(j["participants"][0]["host"], true, "{j}");
    let b_id = j["participant_id"].as_str().unwrap().to_string();

    // A non-host is refused, and nothing happens.
    for m in [
        json!({"type": "moderate", "participant_id": a_id, "action": "remove", "request_id": "r1"}),
        json!({"type": "room_settings", "lobby": true, "request_id": "r2"}),
        json!({"type": "end_room", "request_id": "r3"}),
        json!({"type": "invite", "request_id": "r4"}),
        json!({"type": "moderate", "participant_id": a_id, "action": "spotlight", "request_id": "r5"}),
    ] {
        b.send(m).await;
        let (e, _) = b.recv_type("error").await;
        assert_eq!(e["code"], "forbidden", "{e}");
    }
    // The host mutes and stops video: as the room API's mute.
    a.send(json!({"type": "moderate", "participant_id": b_id, "action": "mute_audio"}))
        .await;
    let (m, _) = b.recv_type("mute").await;
    assert_eq!(
        (m["kind"].as_str(), m["by_server"].as_bool()),
        (Some("audio"), Some(true))
    );
    a.send(json!({"type": "moderate", "participant_id": b_id, "action": "mute_video"}))
        .await;
    let (m, _) = b.recv_type("mute").await;
    assert_eq!(m["kind"], "video");
    a.send(json!({"type": "moderate", "participant_id": "PA_nobody", "action": "remove", "request_id": "x"}))
        .await;
    let (e, _) = a.recv_type("error").await;
    assert_eq!(e["code"], "bad_message");

    // Spotlight: everyone is told, and a later joiner finds it in `joined` (below).
    a.send(json!({"type": "moderate", "participant_id": b_id, "action": "spotlight"}))
        .await;
    for s in [&mut a, &mut b] {
        let (m, _) = s.recv_type("spotlight").await;
        assert_eq!(m["participant_id"], b_id.as_str(), "{m}");
    }

    // Lobby on: everyone is told; a newcomer waits and only a host may admit.
    a.send(json!({"type": "room_settings", "lobby": true}))
        .await;
    for s in [&mut a, &mut b] {
        let (r, _) = s.recv_type("room_settings").await;
        assert_eq!(
            (r["lobby"].as_bool(), r["locked"].as_bool()),
            (Some(true), Some(false))
        );
    }
    let c = server.guest_token("link", "Cy").await;
    let (mut c, m) = join_raw(&server, &c, None).await;
    assert_eq!(m["type"], "lobby", "{m}");
    let (knock, _) = a.recv_type("knock").await;
    b.send(json!({"type": "admit", "participant_id": knock["participant_id"], "request_id": "y"}))
        .await;
    let (e, _) = b.recv_type("error").await;
    assert_eq!(e["code"], "forbidden");
    a.send(json!({"type": "admit", "participant_id": knock["participant_id"]}))
        .await;
    let (j, _) = c.recv_type("joined").await;
    assert_eq!(j["lobby"], true, "{j}");
    assert_eq!(j["spotlight"], b_id.as_str(), "the spotlight replayed: {j}");
    let c_id = j["participant_id"].as_str().unwrap().to_string();
    a.send(json!({"type": "moderate", "participant_id": b_id, "action": "unspotlight"}))
        .await;
    let (m, _) = c.recv_type("spotlight").await;
    assert!(
        m["participant_id"].is_null(),
        "nobody in the spotlight: {m}"
    );

    // Make host: Bo may now lock the room; a newcomer is refused.
    a.send(json!({"type": "moderate", "participant_id": b_id, "action": "make_host"}))
        .await;
    let (h, _) = b.recv_type("host").await;
    assert_eq!(
        (h["participant_id"].as_str(), h["host"].as_bool()),
        (Some(b_id.as_str()), Some(true))
    );
    b.send(json!({"type": "room_settings", "locked": true}))
        .await;
    let (r, _) = a.recv_type("room_settings").await;
    assert_eq!(r["locked"], true);
    let d = server.guest_token("link", "Di").await;
    let (_d, m) = join_raw(&server, &d, None).await;
    assert_eq!(m["code"], "room_locked", "{m}");

    // Remove, then end for all.
    a.send(json!({"type": "moderate", "participant_id": c_id, "action": "remove"}))
        .await;
    let (l, _) = c.recv_type("leave").await;
    assert_eq!(l["reason"], "removed");
    a.send(json!({"type": "end_room"})).await;
    for s in [&mut a, &mut b] {
        let (l, _) = s.recv_type("leave").await;
        assert_eq!(l["reason"], "room_ended");
    }
}

#[tokio::test]
async fn a_hosts_invite_gets_a_guest_token_where_open_joining_is_off() {
    let server = Server::start(&["--no-open-join"]);
    let token = |body: Value| {
        let url = format!("{}/api/token", server.url);
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(token(json!({"room": "desk", "name": "X"})).await.0, 403);
    // Nobody hosts by arrival with open joining off; an admin token does.
    let host = participant_token(&server, "desk", "host", true);
    let (mut host, j) = join_raw(&server, &host, None).await;
    assert_eq!(j["host"], true, "{j}");
    host.send(json!({"type": "invite"})).await;
    let (inv, _) = host.recv_type("invite").await;
    let invite = inv["invite"].as_str().unwrap().to_string();
    assert!(inv["expires_at"].as_u64().unwrap() > now());
    // The invite admits to its room only, and is no access token itself.
    assert_eq!(
        token(json!({"room": "other", "name": "X", "invite": invite}))
            .await
            .0,
        403
    );
    assert_eq!(
        token(json!({"room": "desk", "name": "X", "invite": "a.b.c"}))
            .await
            .0,
        403
    );
    let (_s, first) = join_raw(&server, &invite, None).await;
    assert_eq!(first["code"], "invalid_token", "{first}");
    let (status, t) = token(json!({"room": "desk", "name": "Guest", "invite": invite})).await;
    assert_eq!(status, 200, "{t}");
    let (_guest, j) = join_raw(&server, t["token"].as_str().unwrap(), None).await;
    assert_eq!(j["type"], "joined", "{j}");
    assert!(j.get("host").is_none());
}
