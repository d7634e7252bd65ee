//! The load tester against the real server: a short audio run must join everyone, deliver media
//! with no real loss, and measure join time and the server's cost.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `huddle` binary of this workspace's target directory (built on demand when only this
/// package's tests were built). `HUDDLE_BIN` overrides.
fn huddle_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HUDDLE_BIN") {
        return p.into();
    }
    // target/<profile>/deps/smoke-<hash> -> target/<profile>/huddle
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("huddle");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bin", "huddle", "--manifest-path"])
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building the huddle binary failed");
    }
    bin
}

struct Server {
    child: Child,
    url: String,
    data_dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn start_server() -> Server {
    let data_dir = std::env::temp_dir().join(format!(
        "huddle-loadtest-smoke-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let mut child = Command::new(huddle_bin())
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--media-port",
            "0",
            "--turn-port",
            "0",
            "--data-dir",
        ])
        .arg(&data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("huddle starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
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
        data_dir,
    }
}

#[test]
fn an_audio_run_with_two_publishers_and_two_listeners_delivers_everything() {
    let server = start_server();
    let report = server.data_dir.join("report.json");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_huddle-loadtest"))
        .args([
            "--scenario",
            "audio",
            "--publishers",
            "2",
            "--subscribers",
            "2",
        ])
        .args(["--duration", "5", "--warmup", "1", "--no-progress"])
        .args(["--url", &server.url])
        .arg("--token-secret-file")
        .arg(server.data_dir.join("secret.key"))
        .arg("--server-pid")
        .arg(server.child.id().to_string())
        .arg("--report")
        .arg(&report)
        .output()
        .expect("the load tester runs");
    assert!(
        out.status.success(),
        "load tester failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the run is bounded"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("server CPU"), "summary table:\n{table}");

    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).expect("report written")).unwrap();
    let s = &r["summary"];
    assert_eq!(s["participants"], 4, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["joined"], 4, "{s}");
    // Two listeners, each receiving both publishers (publishers do not subscribe).
    assert_eq!(s["tracks"], 4, "{s}");
    assert!(s["received_packets"].as_u64().unwrap() > 0, "{s}");
    assert!(s["loss_pct"].as_f64().unwrap() < 5.0, "{s}");
    assert!(s["e2e_loss_pct"].as_f64().unwrap() < 5.0, "{s}");
    let join = &s["join_ms"];
    assert_eq!(join["count"], 2, "both listeners measured a join time: {s}");
    assert!(join["p50"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["latency_audio"]["count"].as_u64().unwrap() > 0, "{s}");
    assert!(s["server"]["rss_mib"].as_f64().unwrap() > 0.0, "{s}");
}
