//! The real `huddle` server for the load tester's tests: started on free loopback ports, killed
//! (and its data directory removed) on drop.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `huddle` binary of this workspace's target directory (built on demand when only this
/// package's tests were built). `HUDDLE_BIN` overrides.
pub fn huddle_bin() -> PathBuf {
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

pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Starts `huddle serve` with `extra` flags and waits for its ready line.
pub fn start_server(extra: &[&str]) -> Server {
    let data_dir = std::env::temp_dir().join(format!(
        "huddle-loadtest-test-{}-{}",
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
        .args(extra)
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

impl Server {
    /// The load tester aimed at this server: tokens signed with its secret, no progress bar, the
    /// JSON report to `report`. The scenario's flags are the caller's.
    pub fn tester(&self, report: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_huddle-loadtest"));
        cmd.args(["--url", &self.url, "--no-progress"])
            .arg("--token-secret-file")
            .arg(self.data_dir.join("secret.key"))
            .arg("--report")
            .arg(report);
        cmd
    }
}
