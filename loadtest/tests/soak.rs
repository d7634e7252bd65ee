//! The soak: the load tester holds three meeting rooms (4 participants each, audio and video)
//! for 10 minutes while participants keep joining and leaving (30 a minute, 20 s each), and the
//! server must end where it started: no memory growth beyond a bound once warm, and no leaked
//! tasks, file descriptors (UDP sockets included) or connections once everyone has left. All
//! figures come from the server's own `/metrics` (`process_*`, `huddle_runtime_tasks_alive`).
//!
//! Ignored in a plain `cargo test` (it takes `SOAK_SECONDS`, 600 by default); scripts/test.sh
//! runs it in release:
//!
//! ```text
//! cargo test --release -p huddle-loadtest --test soak -- --ignored --nocapture
//! ```

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::start_server;

/// Resident memory may grow by at most this much from the end of the warm-up (2 minutes in)
/// to the end of the run, at a steady load with churn.
const RSS_GROWTH_BOUND_MIB: f64 = 32.0;
/// Descriptors and tasks may differ by at most this much between the idle server before the
/// run and the idle server after it (a resolver thread, a pooled database connection).
const SLACK: f64 = 8.0;

async fn scrape(url: &str) -> HashMap<String, f64> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, name: &str) -> f64 {
    *m.get(name)
        .unwrap_or_else(|| panic!("{name} is not in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10 minutes; scripts/test.sh runs it with --ignored"]
async fn ten_minutes_of_churn_leak_nothing() {
    let seconds: f64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600.0);
    let server = start_server(&["--no-turn"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_before = scrape(&server.url).await;
    let report = server.data_dir.join("soak.json");
    let mut tester = server
        .tester(&report)
        .args([
            "--scenario",
            "meeting",
            "--rooms",
            "3",
            "--participants",
            "4",
        ])
        .args(["--video-kbps", "300", "--fps", "15", "--ramp-rate", "4"])
        .args(["--churn-per-minute", "30", "--churn-stay", "20"])
        .args(["--duration", &seconds.to_string()])
        .arg("--server-pid")
        .arg(server.child.id().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the load tester starts");

    // The server's figures every 30 s while the load runs.
    let started = Instant::now();
    let warm = Duration::from_secs_f64((seconds / 5.0).max(20.0));
    let mut samples: Vec<(f64, HashMap<String, f64>)> = Vec::new();
    let mut next = Duration::ZERO;
    let status = loop {
        if let Some(status) = tester.try_wait().expect("wait for the load tester") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs_f64(seconds + 120.0),
            "the load tester did not stop by itself"
        );
        if started.elapsed() >= next {
            samples.push((started.elapsed().as_secs_f64(), scrape(&server.url).await));
            next += Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let out = tester.wait_with_output().expect("load tester output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(status.success(), "the load tester failed");

    // Everyone has left: the server must come back to idle.
    let deadline = Instant::now() + Duration::from_secs(40);
    let idle_after = loop {
        let m = scrape(&server.url).await;
        let busy = get(&m, "huddle_participants")
            + get(&m, "huddle_media_connections")
            + get(&m, "huddle_websocket_connections");
        if busy == 0.0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    println!("   t (s)  RSS (MiB)  fds  tasks  participants  media conns  ws");
    for (t, m) in samples
        .iter()
        .map(|(t, m)| (*t, m))
        .chain([(-1.0, &idle_before), (-2.0, &idle_after)])
    {
        let label = match t {
            -1.0 => "before".to_string(),
            -2.0 => "after".to_string(),
            t => format!("{t:.0}"),
        };
        println!(
            "{label:>8}  {:9.1}  {:3}  {:5}  {:12}  {:11}  {:2}",
            get(m, "process_resident_memory_bytes") / 1048576.0,
            get(m, "process_open_fds"),
            get(m, "huddle_runtime_tasks_alive"),
            get(m, "huddle_participants"),
            get(m, "huddle_media_connections"),
            get(m, "huddle_websocket_connections"),
        );
    }

    // The churn happened, and it worked.
    let churn = stdout
        .lines()
        .find_map(|l| l.strip_prefix("churn: "))
        .expect("the load tester reports its churn");
    let field = |k: &str| -> f64 {
        churn
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {churn}"))
    };
    let expected_churn = (seconds - 20.0) / 2.0; // one every 2 s until the last 20 s
    assert!(
        field("started") >= expected_churn * 0.9,
        "too little churn: {churn}"
    );
    assert!(
        field("joined") >= field("started") * 0.95,
        "churning participants failed to join: {churn}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written")).unwrap();
    let s = &r["summary"];
    assert_eq!(s["failed"], 0, "a measured participant failed: {s}");
    // An answer refused as too large (SDP grows with churn) showed up only here.
    assert_eq!(
        s["server_errors"], 0,
        "the server answered with errors: {s}"
    );
    assert_eq!(s["joined"], 12, "{s}");
    assert!(
        s["e2e_loss_pct"].as_f64().unwrap() < 2.0,
        "media was lost during the soak: {s}"
    );

    // Memory: steady after the warm-up.
    let rss = |m: &HashMap<String, f64>| get(m, "process_resident_memory_bytes") / 1048576.0;
    let warm_rss = samples
        .iter()
        .find(|(t, _)| *t >= warm.as_secs_f64())
        .map(|(_, m)| rss(m))
        .expect("a sample after the warm-up");
    let last_rss = samples.iter().map(|(_, m)| rss(m)).fold(0.0, f64::max);
    assert!(
        last_rss - warm_rss <= RSS_GROWTH_BOUND_MIB,
        "resident memory grew from {warm_rss:.1} MiB (after the warm-up) to {last_rss:.1} MiB"
    );
    // Nothing left behind once everyone has gone.
    for name in [
        "huddle_participants",
        "huddle_media_connections",
        "huddle_websocket_connections",
        "huddle_rooms",
        "huddle_subscriptions",
        "huddle_tracks_published",
    ] {
        assert_eq!(get(&idle_after, name), 0.0, "{name} after everyone left");
    }
    for name in ["process_open_fds", "huddle_runtime_tasks_alive"] {
        let (before, after) = (get(&idle_before, name), get(&idle_after, name));
        assert!(
            after <= before + SLACK,
            "{name}: {before} before the soak, {after} after everyone left"
        );
    }
}
