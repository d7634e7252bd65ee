//! The signaling protocol's refusals and chat, against the real server.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

fn cli_token(server: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .arg("token")
        .arg("--data-dir")
        .arg(&server.data_dir)
        .args(args)
        .output()
        .expect("huddle token runs");
    assert!(
        out.status.success(),
        "huddle token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn join_expect_error(server: &Server, url: &str, token: &str, code: &str) {
    let mut s = Signal::connect(url).await;
    s.send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    let m = s.recv().await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["code"], code, "{m}");
    assert!(
        s.recv_timeout(Duration::from_secs(5)).await.is_none(),
        "the socket closes after {code}"
    );
    let _ = server;
}

#[tokio::test]
async fn forged_expired_and_wrong_room_tokens_are_refused_before_any_room_state_changes() {
    let server = Server::start(&[]);
    // Someone is in the room, to see that refused joins never reach it.
    let mut alice = Signal::connect(&server.ws_url()).await;
    alice
        .send(json!({"type": "join", "protocol": 1, "token": server.guest_token("secure", "Alice").await}))
        .await;
    assert_eq!(alice.recv().await["type"], "joined");

    let good = cli_token(&server, &["--room", "secure", "--identity", "mallory"]);
    // Forged: same claims, signature altered.
    let mut forged = good.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    join_expect_error(&server, &server.ws_url(), &forged, "invalid_token").await;
    join_expect_error(&server, &server.ws_url(), "garbage", "invalid_token").await;

    let expired = cli_token(
        &server,
        &["--room", "secure", "--identity", "mallory", "--ttl", "0"],
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    join_expect_error(&server, &server.ws_url(), &expired, "token_expired").await;

    let other_room = cli_token(&server, &["--room", "elsewhere", "--identity", "mallory"]);
    join_expect_error(
        &server,
        &format!("{}?room=secure", server.ws_url()),
        &other_room,
        "wrong_room",
    )
    .await;

    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(json!({"type": "join", "protocol": 99, "token": good}))
        .await;
    assert_eq!(s.recv().await["code"], "unsupported_protocol");

    // Alice saw nobody come or go.
    alice.send(json!({"type": "ping", "ts": 7})).await;
    let m = alice.recv().await;
    assert_eq!(
        m,
        json!({"type": "pong", "ts": 7}),
        "Alice's next message is her pong, not a join/leave"
    );
}

#[tokio::test]
async fn bad_messages_get_errors_and_the_connection_stays_open() {
    let server = Server::start(&[]);
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send_text("{not json".into()).await;
    assert_eq!(s.recv().await["code"], "bad_message");
    s.send(json!({"type": "chat", "text": "before join"})).await;
    assert_eq!(s.recv().await["code"], "not_joined");
    s.send(json!({"type": "join", "protocol": 1, "token": server.guest_token("bad", "Bo").await}))
        .await;
    assert_eq!(s.recv().await["type"], "joined");

    s.send(json!({"type": "teleport", "request_id": "r-1"}))
        .await;
    let m = s.recv().await;
    assert_eq!(
        (m["code"].as_str(), m["request_id"].as_str()),
        (Some("bad_message"), Some("r-1"))
    );

    s.send(json!({"type": "chat", "text": "x".repeat(70_000)}))
        .await;
    assert_eq!(s.recv().await["code"], "message_too_large");
    // An offer or answer may be larger (SDP grows with every track): this one is read, and
    // refused for what it says, not for its size; past max_sdp_bytes it is too large.
    s.send(json!({"type": "offer", "sdp": "x".repeat(200_000)}))
        .await;
    assert_eq!(s.recv().await["code"], "invalid_sdp");
    s.send(json!({"type": "offer", "sdp": "x".repeat(1_100_000)}))
        .await;
    assert_eq!(s.recv().await["code"], "message_too_large");

    s.send(json!({"type": "offer", "sdp": "this is not SDP"}))
        .await;
    assert_eq!(s.recv().await["code"], "invalid_sdp");

    s.send(json!({"type": "join", "protocol": 1, "token": "x"}))
        .await;
    assert_eq!(s.recv().await["code"], "already_joined");

    s.send(json!({"type": "ping", "ts": "still here"})).await;
    assert_eq!(s.recv().await["type"], "pong");
}

#[tokio::test]
async fn chat_is_delivered_stored_replayed_and_signed_by_the_token() {
    let server = Server::start(&[]);
    let mut a = Signal::connect(&server.ws_url()).await;
    a.send(
        json!({"type": "join", "protocol": 1, "token": server.guest_token("chat", "Alice").await}),
    )
    .await;
    let aj = a.recv().await;
    let mut b = Signal::connect(&server.ws_url()).await;
    b.send(
        json!({"type": "join", "protocol": 1, "token": server.guest_token("chat", "Bob").await}),
    )
    .await;
    assert_eq!(b.recv().await["type"], "joined");
    a.recv_type("participant_joined").await;

    // The name in the message is ignored: the sender is who the token says.
    a.send(json!({"type": "chat", "text": "  hello <b>team</b>  ", "name": "Mallory"}))
        .await;
    for s in [&mut a, &mut b] {
        let (m, _) = s.recv_type("chat").await;
        assert_eq!(m["message"]["text"], "hello <b>team</b>");
        assert_eq!(m["message"]["name"], "Alice");
        assert_eq!(m["message"]["identity"], aj["identity"]);
    }
    a.send(json!({"type": "chat", "text": "   "})).await;
    assert_eq!(a.recv().await["code"], "bad_message");

    // A newcomer gets the history.
    let mut c = Signal::connect(&server.ws_url()).await;
    c.send(
        json!({"type": "join", "protocol": 1, "token": server.guest_token("chat", "Carol").await}),
    )
    .await;
    let cj = c.recv().await;
    let history = cj["chat_history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{cj}");
    assert_eq!(history[0]["text"], "hello <b>team</b>");
}

#[tokio::test]
async fn chat_history_survives_a_restart() {
    let dir = {
        let server = Server::start(&[]);
        let mut a = Signal::connect(&server.ws_url()).await;
        a.send(json!({"type": "join", "protocol": 1, "token": server.guest_token("keep", "Alice").await}))
            .await;
        a.recv().await;
        a.send(json!({"type": "chat", "text": "remember me"})).await;
        a.recv_type("chat").await;
        server.kill_keeping_data()
    };
    let server = Server::start_in(&dir, &[]);
    let mut c = Signal::connect(&server.ws_url()).await;
    c.send(
        json!({"type": "join", "protocol": 1, "token": server.guest_token("keep", "Carol").await}),
    )
    .await;
    let j = c.recv().await;
    assert_eq!(j["chat_history"][0]["text"], "remember me", "{j}");
}

#[tokio::test]
async fn guest_tokens_are_refused_when_open_joining_is_off() {
    let server = Server::start(&["--no-open-join"]);
    let res = reqwest::Client::new()
        .post(format!("{}/api/token", server.url))
        .json(&json!({"room": "r", "name": "n"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // An application token still admits.
    let token = cli_token(
        &server,
        &["--room", "r", "--identity", "app-user-1", "--name", "Ann"],
    );
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    let j = s.recv().await;
    assert_eq!(
        (j["type"].as_str(), j["name"].as_str()),
        (Some("joined"), Some("Ann"))
    );
}

#[tokio::test]
async fn tls_serves_the_client_and_tokens_over_https() {
    let server = Server::start(&["--tls-self-signed"]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let page = client
        .get(format!("{}/r/tls-room", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    let token: serde_json::Value = client
        .post(format!("{}/api/token", server.url))
        .json(&json!({"room": "tls-room", "name": "T"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(token["token"]
        .as_str()
        .is_some_and(|t| t.split('.').count() == 3));
    // Plain HTTP to the TLS port gets no page.
    let plain = reqwest::get(server.url.replacen("https://", "http://", 1) + "/healthz").await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
}

/// GET (or POST) with an `Accept-Encoding`: status, `Content-Encoding`, body bytes as sent.
async fn fetch(
    url: &str,
    post: Option<serde_json::Value>,
    accept: &str,
) -> (u16, Option<String>, Vec<u8>) {
    let client = reqwest::Client::new();
    let req = match post {
        Some(body) => client.post(url).json(&body),
        None => client.get(url),
    };
    let res = req
        .header("accept-encoding", accept)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    let enc = res
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    (status, enc, res.bytes().await.expect("body").to_vec())
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &b[..], &mut out).expect("valid brotli");
    out
}

/// The web client's files go out in brotli to a client that takes it, in gzip to one that takes
/// only gzip, each compressed once (the same bytes every time), and as they are to one that
/// takes neither; the JSON API is gzipped.
#[tokio::test]
async fn the_web_client_goes_out_in_brotli_or_gzip_and_the_json_api_gzipped_when_asked() {
    let server = Server::start(&[]);
    let (mut plain_total, mut gzip_total, mut br_total) = (0, 0, 0);
    for path in [
        "/",
        "/assets/app.js",
        "/assets/style.css",
        "/assets/room.js",
        "/assets/i18n/en.json",
        "/assets/favicon.svg",
    ] {
        let url = format!("{}{path}", server.url);
        let (s, enc, plain) = fetch(&url, None, "identity").await;
        assert_eq!(
            (s, enc.as_deref()),
            (200, None),
            "{path} without compression"
        );
        let (s, enc, br) = fetch(&url, None, "gzip, deflate, br, zstd").await;
        assert_eq!((s, enc.as_deref()), (200, Some("br")), "{path} with brotli");
        assert_eq!(unbrotli(&br), plain, "{path}: the brotli holds the file");
        let (s, enc, gz) = fetch(&url, None, "gzip, deflate").await;
        assert_eq!((s, enc.as_deref()), (200, Some("gzip")), "{path} with gzip");
        assert_eq!(gunzip(&gz), plain, "{path}: the gzip holds the file");
        assert!(
            br.len() <= gz.len() && gz.len() < plain.len(),
            "{path}: {} / {} / {}",
            br.len(),
            gz.len(),
            plain.len()
        );
        let (_, _, again) = fetch(&url, None, "gzip").await;
        assert_eq!(again, gz, "{path}: compressed once, served the same");
        let (_, _, again) = fetch(&url, None, "br").await;
        assert_eq!(again, br, "{path}: compressed once, served the same");
        plain_total += plain.len();
        gzip_total += gz.len();
        br_total += br.len();
    }
    println!(
        "web client files: {plain_total} bytes plain, {gzip_total} gzipped, {br_total} in brotli"
    );

    let url = format!("{}/api/token", server.url);
    let body = json!({"room": "zipped", "name": "A long enough display name for the answer"});
    let (s, enc, plain) = fetch(&url, Some(body.clone()), "identity").await;
    assert_eq!((s, enc), (200, None));
    let (s, enc, gz) = fetch(&url, Some(body), "gzip").await;
    assert_eq!(
        (s, enc.as_deref()),
        (200, Some("gzip")),
        "the JSON API, {} bytes",
        plain.len()
    );
    let v: serde_json::Value = serde_json::from_slice(&gunzip(&gz)).expect("JSON inside");
    assert!(v["token"].is_string(), "{v}");
    // Pictures are not compressed again, and an upgrade is untouched (the other tests join).
}
