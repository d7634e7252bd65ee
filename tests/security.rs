//! Security and abuse (issue 15), against the real server: one test per finding, each of which
//! failed on the code before its fix.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Finding 1: B took the id of A's file from A's message, attached it to a message of B's own
/// and deleted that message; the server removed A's file.
#[tokio::test]
async fn another_participant_cannot_attach_or_delete_my_file() {
    let server = Server::start(&[]);
    let (mut alice, a_token, _) = join(&server, "files", "Alice").await;
    let (mut bob, _, _) = join(&server, "files", "Bob").await;

    let (status, att) = upload(&server, "files", Some(&a_token), "pic.png", PNG.to_vec()).await;
    assert_eq!(status, 201, "{att}");
    let id = att["id"].as_str().unwrap().to_string();
    alice
        .send(json!({"type": "chat", "text": "mine", "attachment_id": id}))
        .await;
    let posted = bob.recv_type("chat").await.0["message"].clone();
    assert_eq!(posted["attachment"]["id"], id.as_str());
    alice.recv_type("chat").await;

    // Bob re-attaches Alice's file: refused, with its own code, and nothing is sent.
    bob.send(json!({"type": "chat", "text": "stolen", "attachment_id": id}))
        .await;
    // (Bounded: the server's WebSocket pings would keep a per-message timeout from firing.)
    let (err, skipped) = tokio::time::timeout(Duration::from_secs(15), bob.recv_type("error"))
        .await
        .expect("Bob's chat with Alice's file is answered with an error");
    assert_eq!(err["code"], "not_your_file", "{err}");
    assert!(
        !skipped.iter().any(|m| m["type"] == "chat"),
        "the refused message was not echoed: {skipped:?}"
    );

    // Bob deletes a message of his own: Alice's file is untouched.
    bob.send(json!({"type": "chat", "text": "hello"})).await;
    let mine = bob.recv_type("chat").await.0["message"].clone();
    bob.send(json!({"type": "chat_delete", "message_id": mine["id"]}))
        .await;
    let u = bob.recv_type("chat_update").await.0;
    assert_eq!(u["message"]["deleted"], true);

    let (status, bytes) = get(
        &server,
        &format!("/api/rooms/files/files/{id}"),
        Some(&a_token),
    )
    .await;
    assert_eq!(
        (status, bytes.as_slice()),
        (200, PNG.as_slice()),
        "Alice's file is still there"
    );
    // And the history still shows it on Alice's message.
    let (_carol, _, joined) = join(&server, "files", "Carol").await;
    let h = joined["chat_history"].as_array().unwrap();
    assert!(
        h.iter().any(|m| m["attachment"]["id"] == id.as_str()),
        "{h:?}"
    );
    assert_eq!(
        h.iter()
            .filter(|m| m["attachment"]["id"] == id.as_str())
            .count(),
        1,
        "only Alice's message carries the file: {h:?}"
    );
}

/// Runs `huddle serve` on `data_dir` and waits for it to exit (at most 30 s): its status and
/// what it wrote to stderr. Panics if it is still running then (it started).
fn serve_until_exit(data_dir: &std::path::Path) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = serve_command(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the huddle binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server started on {}", data_dir.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status, err)
}

/// Finding 2: an empty, newline-only or 3-byte `secret.key` was accepted, and a token signed
/// with it joined any room.
#[test]
fn a_short_generated_secret_stops_the_start() {
    for (what, contents) in [("empty", ""), ("newline", "\n"), ("3 bytes", "abc")] {
        let dir = std::env::temp_dir().join(format!("huddle-sec-key-{:x}", rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("secret.key"), contents).unwrap();
        let (status, err) = serve_until_exit(&dir);
        assert!(!status.success(), "{what}: exited with {status}");
        assert!(
            err.contains("secret.key") && err.contains("16"),
            "{what}: the message names the file and the minimum: {err}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("secret.key")).unwrap(),
            contents,
            "{what}: the file is left for the operator"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The generated secret is complete, private, and leaves no temporary file.
#[test]
fn the_generated_secret_is_written_whole_and_private() {
    let server = Server::start(&[]);
    let path = server.data_dir.join("secret.key");
    let key = std::fs::read_to_string(&path).unwrap();
    assert_eq!(key.len(), 64, "{key:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let leftovers: Vec<_> = std::fs::read_dir(&server.data_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Finding 5: the download route set `sandbox`, and the security headers layer replaced it with
/// the page-wide policy.
#[tokio::test]
async fn downloads_keep_their_sandbox_policy() {
    let server = Server::start(&[]);
    let token = server.guest_token("csp", "Alice").await;
    let (status, att) = upload(&server, "csp", Some(&token), "note.txt", b"hi".to_vec()).await;
    assert_eq!(status, 201, "{att}");
    let id = att["id"].as_str().unwrap();
    let res = reqwest::Client::new()
        .get(format!("{}/api/rooms/csp/files/{id}", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let csp: Vec<_> = res
        .headers()
        .get_all("content-security-policy")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(csp.len(), 1, "{csp:?}");
    assert!(csp[0].contains("sandbox"), "{csp:?}");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    // Pages keep the page-wide policy.
    let page = reqwest::get(format!("{}/", server.url)).await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("sandbox"),
        "{csp}"
    );
}

const SECRET: &str = "security-test-secret-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with exactly these claims, signed with [`SECRET`].
fn sign(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The first answer to a `join` with `token`.
async fn join_answer(server: &Server, token: &str) -> (Signal, Value) {
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    let answer = s.recv().await;
    (s, answer)
}

/// Finding 7: a future `nbf` was ignored, `exp` = u64::MAX and an empty `sub` accepted, and
/// names of 10,000 characters with bidirectional overrides passed.
#[tokio::test]
async fn token_rules_nbf_exp_sub_and_names() {
    let server = Server::start_env(&[], &[("HUDDLE_AUTH__SECRET", SECRET)]);
    let t = now();
    let claims = |extra: Value| {
        let mut c = json!({"sub": "mallory", "name": "M", "room": "tok", "exp": t + 600, "iat": t});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    for (what, token) in [
        ("nbf in the future", sign(claims(json!({"nbf": t + 3600})))),
        ("exp = u64::MAX", sign(claims(json!({"exp": u64::MAX})))),
        (
            "exp past the maximum",
            sign(claims(json!({"exp": t + 31 * 86_400}))),
        ),
        ("empty sub", sign(claims(json!({"sub": ""})))),
        ("blank sub", sign(claims(json!({"sub": "  "})))),
    ] {
        let (mut s, answer) = join_answer(&server, &token).await;
        assert_eq!(answer["type"], "error", "{what}: {answer}");
        assert_eq!(answer["code"], "invalid_token", "{what}: {answer}");
        assert!(
            s.recv_timeout(std::time::Duration::from_secs(10))
                .await
                .is_none(),
            "{what}: the socket is closed"
        );
    }
    // A past nbf and an exp within the maximum are fine.
    let (_ok, answer) = join_answer(&server, &sign(claims(json!({"nbf": t - 10})))).await;
    assert_eq!(answer["type"], "joined", "{answer}");

    // The maximum is configurable.
    let strict = Server::start_env(
        &[],
        &[
            ("HUDDLE_AUTH__SECRET", SECRET),
            ("HUDDLE_AUTH__MAX_TOKEN_LIFETIME_SECS", "3600"),
        ],
    );
    let (_s, answer) = join_answer(&strict, &sign(claims(json!({"exp": t + 7200})))).await;
    assert_eq!(answer["code"], "invalid_token", "{answer}");
    let (_s, answer) = join_answer(&strict, &sign(claims(json!({"exp": t + 600})))).await;
    assert_eq!(answer["type"], "joined", "{answer}");

    // A signed name is cleaned and capped like a guest's, and others see it so.
    let (mut watcher, _, _) = join(&server, "tok", "Watcher").await;
    let long = format!("\u{202E}Eve\u{0}\u{2066}{}", "x".repeat(10_000));
    let (_eve, answer) =
        join_answer(&server, &sign(claims(json!({"sub": "eve", "name": long})))).await;
    assert_eq!(answer["type"], "joined", "{answer}");
    let name = answer["name"].as_str().unwrap();
    assert!(name.starts_with("Evexxx"), "{name:?}");
    assert_eq!(name.chars().count(), 64);
    let seen = watcher.recv_type("participant_joined").await.0;
    assert_eq!(seen["participant"]["name"], name, "{seen}");

    // Guest names lose the same characters.
    let res: Value = reqwest::Client::new()
        .post(format!("{}/api/token", server.url))
        .json(&json!({"room": "tok", "name": "\u{202E}gpj.exe\u{0}"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (_g, answer) = join_answer(&server, res["token"].as_str().unwrap()).await;
    assert_eq!(answer["name"], "gpj.exe", "{answer}");
}

/// A room's name is a directory of the data directory (its uploads): `.`, `..` and `.tmp`
/// were accepted, so a token for room `..` could upload beside the files directory, where the
/// retention sweep never looks. Names starting with a dot are refused everywhere.
#[tokio::test]
async fn room_names_starting_with_a_dot_are_refused_everywhere() {
    let server = Server::start_env(&[], &[("HUDDLE_AUTH__SECRET", SECRET)]);
    let t = now();
    let http = reqwest::Client::new();
    for room in [".", "..", ".tmp", ".hidden"] {
        // No guest token for it.
        let res = http
            .post(format!("{}/api/token", server.url))
            .json(&json!({"room": room, "name": "M"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 400, "guest token for {room:?}");
        // A signed one (the operator's application signs tokens too) is not a valid token.
        let token =
            sign(json!({"sub": "mallory", "name": "M", "room": room, "exp": t + 600, "iat": t}));
        let (_s, answer) = join_answer(&server, &token).await;
        assert_eq!(answer["type"], "error", "{room:?}: {answer}");
        assert_eq!(answer["code"], "invalid_token", "{room:?}: {answer}");
        // Nor for uploads (the name percent-encoded, as a client could send it): `.tmp` is the
        // uploads-in-progress directory.
        let encoded: String = room.bytes().map(|b| format!("%{b:02X}")).collect();
        let res = http
            .post(format!(
                "{}/api/rooms/{encoded}/files?name=x.txt",
                server.url
            ))
            .bearer_auth(&token)
            .body("hello")
            .send()
            .await
            .unwrap();
        assert!(
            res.status().is_client_error(),
            "upload to {room:?}: {}",
            res.status()
        );
    }
    // Dots inside a name are fine.
    let res = http
        .post(format!("{}/api/token", server.url))
        .json(&json!({"room": "v1.2", "name": "M"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}

/// Finding 7: NUL and bidirectional overrides were stored in chat text.
#[tokio::test]
async fn chat_text_loses_nul_and_bidi_overrides() {
    let server = Server::start(&[]);
    let (mut alice, _, _) = join(&server, "txt", "Alice").await;
    let (mut bob, _, _) = join(&server, "txt", "Bob").await;
    alice
        .send(json!({"type": "chat", "text": "pay\u{0} to \u{202E}4321\u{202C} now\nthanks"}))
        .await;
    let m = bob.recv_type("chat").await.0["message"].clone();
    assert_eq!(m["text"], "pay to 4321 now\nthanks", "{m}");
    let mid = m["id"].clone();
    alice.recv_type("chat").await;
    alice
        .send(json!({"type": "chat_edit", "message_id": mid, "text": "\u{2067}edited\u{0}"}))
        .await;
    let u = bob.recv_type("chat_update").await.0;
    assert_eq!(u["message"]["text"], "edited", "{u}");
    // Only forbidden characters: nothing is left to send.
    alice
        .send(json!({"type": "chat", "text": "\u{0}\u{202E}"}))
        .await;
    assert_eq!(alice.recv_type("error").await.0["code"], "bad_message");
    // The history has the cleaned text.
    let (_carol, _, joined) = join(&server, "txt", "Carol").await;
    assert_eq!(joined["chat_history"][0]["text"], "edited");
}

/// A TCP connection to `addr` from the loopback address `from` (the whole of 127.0.0.0/8 is
/// local, so a flood can come from another address than the test's own requests).
async fn connect_from(
    addr: std::net::SocketAddr,
    from: [u8; 4],
) -> std::io::Result<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(std::net::SocketAddr::from((from, 0)))?;
    sock.connect(addr).await
}

/// Plays `kind` on `s` (0 silent, 1 headers without their end, 2 one byte, 3 one full
/// keep-alive request then silence) and returns when the server closes it.
async fn idle_connection(mut s: tokio::net::TcpStream, kind: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = match kind {
        1 => s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await,
        2 => s.write_all(b"G").await,
        3 => {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
        }
        _ => Ok(()),
    };
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

/// Finding 3: idle and half-sent-header connections were never closed, and enough of them took
/// the file descriptors `/healthz` and joins needed.
#[tokio::test]
async fn idle_connections_are_capped_and_closed_and_the_server_keeps_answering() {
    const HELD: usize = 1000;
    const PER_IP: usize = 600;
    // Long enough that all connections are open before the first ones time out, even on a
    // busy machine (opening 1000 took 6 s on two shared cores, the server in a debug build).
    const TIMEOUT_SECS: u64 = 20;
    let server = Server::start_env(
        &[],
        &[
            ("HUDDLE_SERVER__HEADER_READ_TIMEOUT_SECS", "20"),
            ("HUDDLE_SERVER__MAX_CONNECTIONS_PER_IP", "600"),
        ],
    );
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let connecting = std::time::Instant::now();
    let mut conns = Vec::with_capacity(HELD);
    for _ in 0..HELD {
        conns.push(
            connect_from(addr, [127, 0, 0, 2])
                .await
                .expect("loopback connects"),
        );
    }
    let opened_in = connecting.elapsed();
    eprintln!("{HELD} connections opened in {opened_in:?}");
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for (i, s) in conns.into_iter().enumerate() {
        let closed = closed.clone();
        flood.spawn(async move {
            idle_connection(s, i % 4).await;
            closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
    }
    // The connections over the per-address cap are closed at once and counted.
    let hits = r#"huddle_limit_hits_total{limit="http_connections"}"#;
    let want = (HELD - PER_IP) as f64;
    let mut refused = 0.0;
    for _ in 0..200 {
        refused = server.metric(hits).await.unwrap_or(0.0);
        if refused >= want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(refused, want, "{hits}");

    // With the others held, /healthz answers and a participant joins (from another address).
    let started = std::time::Instant::now();
    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let (_alice, _, joined) = join(&server, "busy", "Alice").await;
    assert_eq!(joined["type"], "joined");
    let took = started.elapsed();
    eprintln!("/healthz and a join with {PER_IP} idle connections held: {took:?}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "healthz and a join took {took:?} with {PER_IP} idle connections held"
    );
    // /readyz says how many are open (the held ones, the test's own and the WebSocket).
    let ready: Value = reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let open = ready["http_connections"]["open"].as_u64().unwrap_or(0);
    assert!(open >= PER_IP as u64, "{ready}");
    assert_eq!(ready["http_connections"]["cap"], 10_000, "{ready}");
    let closed_now = closed.load(std::sync::atomic::Ordering::SeqCst);
    // The checks above hold only while none of the held connections has reached its timeout.
    assert!(
        connecting.elapsed() < std::time::Duration::from_secs(TIMEOUT_SECS),
        "the machine is too slow for this test: {:?} since the first connection",
        connecting.elapsed()
    );
    assert!(
        closed_now <= HELD - PER_IP,
        "the held connections were still open meanwhile ({closed_now} closed)"
    );

    // Every idle connection is closed by the server after the timeout (with room to spare).
    let all = tokio::time::timeout(std::time::Duration::from_secs(TIMEOUT_SECS + 30), async {
        while flood.join_next().await.is_some() {}
    })
    .await;
    assert!(
        all.is_ok(),
        "{} of {HELD} idle connections still open 30 s after the timeout",
        HELD - closed.load(std::sync::atomic::Ordering::SeqCst),
    );
    let h = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
}

/// Finding 3, TLS: a connection that never completes its handshake is closed.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed() {
    use tokio::io::AsyncReadExt;
    let server = Server::start_env(
        &["--tls-self-signed"],
        &[("HUDDLE_SERVER__TLS_HANDSHAKE_TIMEOUT_SECS", "2")],
    );
    let addr: std::net::SocketAddr = server.url.trim_start_matches("https://").parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the silent TLS connection was closed: {read:?}"
    );
}

/// A PNG of `side` × `side` transparent black RGBA pixels: a few kilobytes that decode to
/// `side² × 4` bytes.
fn bomb_png(side: u32) -> Vec<u8> {
    use image::ImageEncoder;
    let pixels = vec![0u8; (side * side * 4) as usize];
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(&pixels, side, side, image::ExtendedColorType::Rgba8)
    .unwrap();
    out
}

/// A line of the server's `/proc/<pid>/status`, in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Finding 4: six concurrent uploads of a small PNG that decodes to 8000 × 8000 took the
/// server from 277 MB to 1.5 GB: each thumbnail could take 256 MiB and nothing bounded how
/// many were made at once.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn concurrent_picture_bombs_stay_within_the_thumbnail_memory_bound() {
    const UPLOADS: usize = 20;
    const WORKERS: u64 = 2;
    // 3200² RGBA = 41 MB decoded: above glibc's largest mmap threshold (32 MiB), so each
    // decode is its own mapping and the peak RSS counts exactly the decodes at once.
    const SIDE: u32 = 3200;
    let decoded_mib = u64::from(SIDE * SIDE * 4) / (1024 * 1024);
    let mut server = Server::start_env(
        &[],
        &[
            ("HUDDLE_CHAT__THUMBNAIL_WORKERS", "2"),
            ("HUDDLE_CHAT__THUMBNAIL_MAX_BYTES", "67108864"), // 64 MiB
        ],
    );
    let pid = server.process().id();
    let token = server.guest_token("pics", "Alice").await;
    // Warm up (first upload, thread pool, JPEG encoder) before the baseline.
    let (status, att) = upload(&server, "pics", Some(&token), "a.png", PNG.to_vec()).await;
    assert_eq!(status, 201, "{att}");
    let bomb = bomb_png(SIDE);
    assert!(bomb.len() < 256 * 1024, "a small file: {}", bomb.len());
    let baseline_mib = status_kib(pid, "VmRSS") / 1024;
    let before_hwm_mib = status_kib(pid, "VmHWM") / 1024;

    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..UPLOADS {
        let (url, token, body) = (server.url.clone(), token.clone(), bomb.clone());
        uploads.spawn(async move {
            let res = reqwest::Client::new()
                .post(format!("{url}/api/rooms/pics/files?name=bomb{i}.png"))
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        });
    }
    while let Some(r) = uploads.join_next().await {
        let (status, att) = r.unwrap();
        assert_eq!(status, 201, "{att}");
        assert!(
            att["thumb"].is_string(),
            "under the limit: a thumbnail {att}"
        );
    }
    let peak_mib = status_kib(pid, "VmHWM") / 1024;
    // The bound: the baseline, WORKERS decodes at once, and 64 MiB for the rest (20 request
    // bodies, the thumbnails, allocator slack). Without the pool all 20 decode at once.
    let bound_mib = baseline_mib.max(before_hwm_mib) + WORKERS * decoded_mib + 64;
    eprintln!("RSS: baseline {baseline_mib} MiB, peak {peak_mib} MiB, bound {bound_mib} MiB");
    assert!(
        peak_mib <= bound_mib,
        "peak RSS {peak_mib} MiB over the bound {bound_mib} MiB (baseline {baseline_mib} MiB, \
         {decoded_mib} MiB per decode)"
    );

    // A picture that needs more than thumbnail_max_bytes is stored without a thumbnail.
    let (status, att) = upload(&server, "pics", Some(&token), "big.png", bomb_png(4500)).await;
    assert_eq!(status, 201, "{att}");
    assert!(
        att["thumb"].is_null(),
        "81 MB to decode, over 64 MiB: {att}"
    );
    let (status, bytes) = get(
        &server,
        &format!("/api/rooms/pics/files/{}", att["id"].as_str().unwrap()),
        Some(&token),
    )
    .await;
    assert_eq!((status, bytes.len()), (200, bomb_png(4500).len()));
}

/// `POST /api/token` from the loopback address `from`: the status, `Retry-After` and body.
async fn guest_token_from(server: &Server, from: [u8; 4]) -> (u16, Option<u64>, Value) {
    let res = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(from))
        .build()
        .unwrap()
        .post(format!("{}/api/token", server.url))
        .json(&json!({"room": "r", "name": "N"}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (status, retry, res.json().await.unwrap_or(Value::Null))
}

/// Finding 6: `/api/token` handed out 300 tokens (each a new identity) in 0.1 s.
#[tokio::test]
async fn guest_tokens_are_rate_limited_per_address() {
    let server = Server::start_env(
        &[],
        &[("HUDDLE_LIMITS__GUEST_TOKENS_PER_IP_PER_MINUTE", "5")],
    );
    for i in 0..5 {
        let (status, _, body) = guest_token_from(&server, [127, 0, 0, 1]).await;
        assert_eq!(status, 200, "token {i}: {body}");
    }
    let (status, retry, body) = guest_token_from(&server, [127, 0, 0, 1]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let retry = retry.expect("a Retry-After header");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Another address has its own allowance.
    let (status, _, body) = guest_token_from(&server, [127, 0, 0, 3]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        server
            .metric(r#"huddle_limit_hits_total{limit="guest_tokens"}"#)
            .await,
        Some(1.0)
    );
}

/// `POST` of `body` as a file to room `r` with `token`: the status and `Retry-After`.
async fn upload_retry(server: &Server, token: &str, body: Vec<u8>) -> (u16, Option<u64>) {
    let res = reqwest::Client::new()
        .post(format!("{}/api/rooms/r/files?name=f.txt", server.url))
        .bearer_auth(token)
        .body(body)
        .send()
        .await
        .unwrap();
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (res.status().as_u16(), retry)
}

/// Finding 6: one guest uploaded 60 × 1 MiB in 0.4 s (kept 30 days).
#[tokio::test]
async fn uploads_are_limited_per_identity_and_per_address() {
    let server = Server::start_env(
        &[],
        &[
            ("HUDDLE_CHAT__UPLOADS_PER_IDENTITY_PER_HOUR", "3"),
            ("HUDDLE_CHAT__UPLOAD_BYTES_PER_IDENTITY_PER_HOUR", "10000"),
            ("HUDDLE_CHAT__UPLOADS_PER_IP_PER_HOUR", "5"),
        ],
    );
    let alice = server.guest_token("r", "Alice").await;
    assert_eq!(upload_retry(&server, &alice, vec![b'a'; 6000]).await.0, 201);
    // Over the identity's bytes for the hour (the declared length tells before the body).
    let (status, retry) = upload_retry(&server, &alice, vec![b'a'; 6000]).await;
    assert_eq!(status, 429);
    let retry = retry.expect("a Retry-After header");
    assert!((3000..=3600).contains(&retry), "Retry-After {retry}");
    assert_eq!(upload_retry(&server, &alice, b"hi".to_vec()).await.0, 201);
    assert_eq!(upload_retry(&server, &alice, b"hi".to_vec()).await.0, 201);
    // Over the identity's uploads for the hour.
    assert_eq!(upload_retry(&server, &alice, b"hi".to_vec()).await.0, 429);
    // A fresh guest identity from the same address gets only what the address has left.
    let bob = server.guest_token("r", "Bob").await;
    assert_eq!(upload_retry(&server, &bob, b"hi".to_vec()).await.0, 201);
    assert_eq!(upload_retry(&server, &bob, b"hi".to_vec()).await.0, 201);
    let (status, retry) = upload_retry(&server, &bob, b"hi".to_vec()).await;
    assert_eq!((status, retry.is_some()), (429, true));
    assert_eq!(
        server
            .metric(r#"huddle_limit_hits_total{limit="uploads"}"#)
            .await,
        Some(3.0)
    );
}

/// Finding 7, for room API admin tokens too: a future `nbf` and an `exp` past the maximum are
/// refused.
#[tokio::test]
async fn admin_tokens_follow_the_nbf_and_exp_rules() {
    const KEY: &str = "sec-api-key";
    const API_SECRET: &str = "sec-api-secret-0123456789";
    let server = Server::start_env(
        &[],
        &[("HUDDLE_API__KEY", KEY), ("HUDDLE_API__SECRET", API_SECRET)],
    );
    let t = now();
    let call = |claims: Value| {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(API_SECRET.as_bytes()),
        )
        .unwrap();
        let url = format!("{}/api/rooms", server.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let grants = json!({"admin": true});
    assert_eq!(
        call(json!({"iss": KEY, "exp": t + 600, "grants": grants})).await,
        200
    );
    for (what, claims) in [
        (
            "exp = u64::MAX",
            json!({"iss": KEY, "exp": u64::MAX, "grants": grants}),
        ),
        (
            "exp past 30 days",
            json!({"iss": KEY, "exp": t + 31 * 86_400, "grants": grants}),
        ),
        (
            "nbf in the future",
            json!({"iss": KEY, "exp": t + 600, "nbf": t + 600, "grants": grants}),
        ),
    ] {
        assert_eq!(call(claims).await, 401, "{what}");
    }
}

/// What to build (issue 15): a cap on the bytes of files one room keeps.
#[tokio::test]
async fn a_room_keeps_at_most_its_share_of_files() {
    let server = Server::start_env(&[], &[("HUDDLE_CHAT__MAX_ROOM_BYTES", "10000")]);
    let token = server.guest_token("r", "Alice").await;
    assert_eq!(upload_retry(&server, &token, vec![b'a'; 6000]).await.0, 201);
    let (status, body) = upload(&server, "r", Some(&token), "f.txt", vec![b'a'; 6000]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (507, Some("room_storage_full")),
        "{body}"
    );
    assert_eq!(upload_retry(&server, &token, vec![b'a'; 4000]).await.0, 201);
    // Other rooms have their own share.
    let other = server.guest_token("r2", "Bob").await;
    let (status, body) = upload(&server, "r2", Some(&other), "f.txt", vec![b'a'; 6000]).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        server
            .metric(r#"huddle_limit_hits_total{limit="room_bytes"}"#)
            .await,
        Some(1.0)
    );
}

/// Finding 3, bodies: an upload whose body stops arriving held its connection (and its
/// temporary file) for ever.
#[tokio::test]
async fn a_stalled_upload_body_is_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start_env(&[], &[("HUDDLE_SERVER__BODY_READ_TIMEOUT_SECS", "2")]);
    let token = server.guest_token("slow", "Alice").await;
    let addr: std::net::SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/rooms/slow/files?name=a.txt HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: 100000\r\n\r\nhello"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server gives up on the body: it answers (400) and closes, or just closes.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        s.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the stalled upload was still open after 30 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    // Nothing is kept.
    let tmp = std::fs::read_dir(server.data_dir.join("files/.tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0);
}
