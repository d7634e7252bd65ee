//! What operators see: `/metrics` moving with a real call (and passing `promtool check
//! metrics`), `/readyz`, and the drain on SIGTERM.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

async fn scrape(server: &Server) -> String {
    let res = reqwest::get(format!("{}/metrics", server.url))
        .await
        .expect("GET /metrics");
    assert_eq!(res.status(), 200);
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    res.text().await.expect("metrics text")
}

/// The value of one series, e.g. `huddle_rtp_packets_total{direction="in",kind="audio"}`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{series} is not a number"))
}

/// Pipes a scrape through `promtool check metrics`; a missing promtool fails the test.
fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install the Debian package `prometheus` \
             (apt-get install prometheus; .ci/run does) to run this test"
        ),
        Err(e) => panic!("promtool failed to start: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics exited {:?}:\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Scrapes until `f` holds for the scrape; panics with `what` and the last scrape after `timeout`.
async fn eventually_scrape(
    server: &Server,
    timeout: Duration,
    what: &str,
    f: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = scrape(server).await;
        if f(&text) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const IN_AUDIO: &str = "huddle_rtp_packets_total{direction=\"in\",kind=\"audio\"}";
const OUT_AUDIO: &str = "huddle_rtp_packets_total{direction=\"out\",kind=\"audio\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_call_and_pass_promtool() {
    let server = Server::start(&[]);
    let idle = scrape(&server).await;
    promtool_check(&idle);
    assert_eq!(value(&idle, "huddle_participants"), 0.0);
    assert_eq!(value(&idle, IN_AUDIO), 0.0);
    assert!(
        idle.contains("process_resident_memory_bytes"),
        "process metrics"
    );
    assert!(idle.contains("huddle_turn_allocations "), "TURN metrics");

    let b = Peer::join(&server, "metrics", "Bob", false).await;
    let a = Peer::join(&server, "metrics", "Alice", true).await;
    let stop = Arc::new(AtomicBool::new(false));
    spawn_publisher(a.audio.clone().unwrap(), "A", stop.clone());
    eventually(Duration::from_secs(15), "Bob receives Alice", || {
        b.payloads_from(&a.participant_id).len() >= 20
    })
    .await;

    // str0m reports stream stats once a second: the RTP counters follow within a few.
    let during = eventually_scrape(
        &server,
        Duration::from_secs(10),
        "RTP packets counted in and out",
        |t| value(t, IN_AUDIO) > 0.0 && value(t, OUT_AUDIO) > 0.0,
    )
    .await;
    promtool_check(&during);
    assert_eq!(value(&during, "huddle_participants"), 2.0);
    assert_eq!(value(&during, "huddle_rooms"), 1.0);
    assert_eq!(value(&during, "huddle_websocket_connections"), 2.0);
    assert_eq!(value(&during, "huddle_media_connections"), 2.0);
    assert_eq!(value(&during, "huddle_tracks_published"), 1.0);
    assert_eq!(value(&during, "huddle_tracks_published_total"), 1.0);
    assert_eq!(value(&during, "huddle_subscriptions"), 1.0);
    assert_eq!(value(&during, "huddle_participants_joined_total"), 2.0);
    assert_eq!(value(&during, "huddle_join_duration_seconds_count"), 2.0);
    assert!(value(&during, "huddle_sfu_forward_latency_seconds_count") > 0.0);
    assert!(
        value(
            &during,
            "huddle_rtp_bytes_total{direction=\"in\",kind=\"audio\"}"
        ) > 0.0
    );
    assert!(
        value(
            &during,
            "huddle_websocket_messages_total{direction=\"in\",type=\"offer\"}"
        ) >= 2.0
    );
    assert!(
        value(
            &during,
            "huddle_websocket_messages_total{direction=\"out\",type=\"joined\"}"
        ) >= 2.0
    );

    // While Alice publishes, the counters keep climbing.
    let before = value(&during, IN_AUDIO);
    let out_before = value(&during, OUT_AUDIO);
    eventually_scrape(
        &server,
        Duration::from_secs(10),
        "RTP packet counters increase while publishing",
        |t| value(t, IN_AUDIO) > before && value(t, OUT_AUDIO) > out_before,
    )
    .await;

    // A chat message and a refused message are counted too.
    b.send(json!({"type": "chat", "text": "hello"}));
    b.send(json!({"type": "mute", "kind": "nonsense"}));
    eventually_scrape(
        &server,
        Duration::from_secs(5),
        "chat and error counted",
        |t| {
            value(t, "huddle_chat_messages_total") == 1.0
                && t.contains("huddle_signaling_errors_total{code=\"bad_message\"} 1")
        },
    )
    .await;

    // Alice leaves: participants 2 → 1, her track and Bob's subscription go.
    a.send(json!({"type": "leave"}));
    let after = eventually_scrape(
        &server,
        Duration::from_secs(10),
        "participants 1, no track, no subscription after the leave",
        |t| {
            value(t, "huddle_participants") == 1.0
                && value(t, "huddle_tracks_published") == 0.0
                && value(t, "huddle_subscriptions") == 0.0
                && value(t, "huddle_media_connections") == 1.0
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        value(
            &after,
            "huddle_media_connections_closed_total{reason=\"removed\"}"
        ),
        1.0
    );
    assert_eq!(value(&after, "huddle_tracks_published_total"), 1.0);
    promtool_check(&after);
    a.close().await;
}

#[tokio::test]
async fn readyz_reports_each_check() {
    let server = Server::start(&[]);
    let res = reqwest::get(format!("{}/readyz", server.url))
        .await
        .expect("GET /readyz");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("JSON");
    assert_eq!(body["ready"], true, "{body}");
    assert_eq!(body["checks"]["media_workers"], "ok", "{body}");
    assert_eq!(body["checks"]["chat_database"], "ok", "{body}");
    let health = reqwest::get(format!("{}/healthz", server.url))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
    assert!(health.headers().contains_key("x-request-id"));
}

/// The real binary with a drain time, whose process this test signals and waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_everyone_to_come_back_flushes_chat_and_exits_zero_within_the_drain() {
    let (dir, mut server) = start_with_drain("drain", 3);
    let url = server.url.clone();
    let ws = server.ws_url();
    let token = server.guest_token("drain", "Alice").await;
    let mut alice = Signal::connect(&ws).await;
    alice
        .send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    assert_eq!(alice.recv().await["type"], "joined");
    alice.send(json!({"type": "chat", "text": "kept"})).await;
    alice.recv_type("chat").await;
    // A socket that never joins keeps the drain open until its time is up, so that the test
    // can see the server refusing work meanwhile.
    let _lurker = Signal::connect(&ws).await;

    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.process().id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());

    let (leave, _) = alice.recv_type("leave").await;
    assert_eq!(leave["reason"], "server_shutdown", "{leave}");
    assert_eq!(
        leave["action"], "reconnect",
        "SIGTERM is a restart: {leave}"
    );
    assert_eq!(leave["reconnect_after_ms"], 1000, "{leave}");
    assert!(
        alice.recv_timeout(Duration::from_secs(3)).await.is_none(),
        "the server closes the socket after the leave"
    );

    // Draining: not ready, no new joins.
    let ready = reqwest::get(format!("{url}/readyz"))
        .await
        .expect("readyz answers while draining");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["accepting_joins"], "shutting down", "{body}");
    let upgrade = tokio_tungstenite::connect_async(ws.as_str()).await;
    match upgrade {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 503)
        }
        other => panic!("a WebSocket upgrade while draining must get 503, got {other:?}"),
    }

    let exit = exited_within(&mut server, sent, Duration::from_secs(3 + 2), "SIGTERM").await;
    assert!(exit.success(), "huddle exited with {exit:?}");
    println!("exited {:?} after SIGTERM", sent.elapsed());

    // The chat database was checkpointed: the write-ahead log is empty.
    let wal = dir.join("data").join("chat.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "chat.db-wal still holds {wal_len} bytes");
    assert!(
        std::fs::metadata(dir.join("data").join("chat.db"))
            .unwrap()
            .len()
            > 0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C (SIGINT) is an operator stopping the server: the meeting ends for everyone (action
/// `disconnect`, no reconnect hint), where SIGTERM (above) is a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_the_meetings() {
    let (dir, mut server) = start_with_drain("stop", 2);
    let token = server.guest_token("stop", "Alice").await;
    let mut alice = Signal::connect(&server.ws_url()).await;
    alice
        .send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    assert_eq!(alice.recv().await["type"], "joined");
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &server.process().id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let (leave, _) = alice.recv_type("leave").await;
    assert_eq!(leave["reason"], "server_shutdown", "{leave}");
    assert_eq!(
        leave["action"], "disconnect",
        "Ctrl-C ends the meeting: {leave}"
    );
    assert!(leave.get("reconnect_after_ms").is_none(), "{leave}");
    let exit = exited_within(&mut server, sent, Duration::from_secs(2 + 2), "SIGINT").await;
    assert!(exit.success(), "huddle exited with {exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits for the server to exit after `signal` was sent at `sent`; fails after `within`.
async fn exited_within(
    server: &mut Server,
    sent: Instant,
    within: Duration,
    signal: &str,
) -> std::process::ExitStatus {
    loop {
        if let Some(s) = server.process().try_wait().expect("wait") {
            return s;
        }
        assert!(
            sent.elapsed() < within,
            "huddle still running {:?} after {signal}",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server in a scratch directory of its own (`huddle-NAME-…`, returned for the test to remove)
/// whose configuration sets `drain_secs`.
fn start_with_drain(name: &str, drain_secs: u64) -> (std::path::PathBuf, Server) {
    let dir = std::env::temp_dir().join(format!(
        "huddle-{name}-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("huddle.toml");
    std::fs::write(&config, format!("[server]\ndrain_secs = {drain_secs}\n")).unwrap();
    let server = Server::start_in(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    (dir, server)
}
