//! The operator's CLI cannot mislead: `huddle token` signs only with the server's own secret
//! (and creates none), refuses room names the server refuses; `huddle config check` refuses
//! what `serve` refuses; configuration errors name the key, the value and where it came from,
//! without Rust's type names or source locations; a taken port is named; logs written to a
//! file or pipe carry no colour codes.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::rand_u64;

const SECRET: &str = "an-operator-secret-of-some-length";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "huddle-cli-{name}-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `huddle ARGS` with a clean configuration environment.
fn huddle(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_huddle"));
    for (k, _) in std::env::vars() {
        if k.starts_with("HUDDLE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .output()
        .expect("huddle runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn no_internals(text: &str) {
    for inside in [
        "src/", ".rs:", "alloc::", "&str", "String", "default.", "Error {",
    ] {
        assert!(!text.contains(inside), "shows {inside:?}: {text}");
    }
}

#[test]
fn token_signs_only_with_the_servers_secret_and_never_makes_one() {
    let data = scratch("token");
    let d = data.to_str().unwrap();
    let token_args = [
        "token",
        "--data-dir",
        d,
        "--room",
        "standup",
        "--identity",
        "ann",
    ];
    let out = huddle(&token_args, &[]);
    assert!(!out.status.success(), "a token without the server's secret");
    let err = stderr(&out);
    assert!(
        err.contains("no token secret") && err.contains("secret.key"),
        "{err}"
    );
    assert!(!data.join("secret.key").exists(), "token created a secret");

    // With the server's generated secret (as `serve` leaves it), the token is signed with it.
    std::fs::write(data.join("secret.key"), SECRET).unwrap();
    let out = huddle(&token_args, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
    assert_eq!(
        std::fs::read_to_string(data.join("secret.key")).unwrap(),
        SECRET
    );

    // Room names the server would refuse are refused here.
    for room in ["two words", "", "ü", &"x".repeat(65), "a/b"] {
        let out = huddle(
            &[
                "token",
                "--data-dir",
                d,
                "--room",
                room,
                "--identity",
                "ann",
            ],
            &[],
        );
        assert!(!out.status.success(), "minted a token for room {room:?}");
        assert!(
            stderr(&out).contains("is not a room name"),
            "{}",
            stderr(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn config_check_refuses_what_serve_refuses() {
    let dir = scratch("check");
    let data = dir.join("data");
    let d = data.to_str().unwrap();
    let cases: [(&str, &str, &str); 5] = [
        (
            "short-secret",
            "[auth]\nsecret = \"short\"\n",
            "auth.secret",
        ),
        (
            "all-addresses",
            "[media]\nbind_ip = \"0.0.0.0\"\n",
            "media.public_ip",
        ),
        (
            "missing-tls",
            "[server]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n",
            "server.tls_cert",
        ),
        (
            "short-turn-secret",
            "[turn]\nsecret = \"short\"\n",
            "turn.secret",
        ),
        (
            "ttl",
            "[auth]\nguest_token_ttl_secs = 100\nmax_token_lifetime_secs = 10\n",
            "auth.guest_token_ttl_secs",
        ),
    ];
    for (name, toml, key) in cases {
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, toml).unwrap();
        let f = file.to_str().unwrap();
        let check = huddle(&["config", "check", f, "--data-dir", d], &[]);
        assert!(!check.status.success(), "config check passed {name}");
        let err = stderr(&check);
        assert!(err.contains(key), "{name}: the error names {key}: {err}");
        no_internals(&err);
        // And serve refuses the same file (before binding anything).
        let serve = huddle(
            &[
                "serve",
                "--config",
                f,
                "--data-dir",
                d,
                "--bind",
                "127.0.0.1:0",
                "--media-port",
                "0",
                "--turn-port",
                "0",
            ],
            &[],
        );
        assert!(!serve.status.success(), "serve started with {name}");
        assert!(stderr(&serve).contains(key), "{name}: {}", stderr(&serve));
    }
    // Checking creates no secret, and a good file passes.
    let good = dir.join("good.toml");
    std::fs::write(&good, "[auth]\nopen_join = false\n").unwrap();
    let out = huddle(
        &["config", "check", good.to_str().unwrap(), "--data-dir", d],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !data.join("secret.key").exists(),
        "config check created a secret"
    );
    // The environment counts, as it does for serve.
    let out = huddle(
        &["config", "check", good.to_str().unwrap(), "--data-dir", d],
        &[("HUDDLE_AUTH__SECRET", "short")],
    );
    assert!(
        !out.status.success(),
        "HUDDLE_AUTH__SECRET ignored by config check"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn configuration_errors_name_key_value_and_origin_without_internals() {
    let dir = scratch("errors");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[server]\nbind = \"not-an-address\"\n").unwrap();
    let f = file.to_str().unwrap();
    let from_file = stderr(&huddle(&["config", "check", f], &[]));
    assert!(
        from_file.contains("server.bind = \"not-an-address\""),
        "{from_file}"
    );
    assert!(from_file.contains("bad.toml"), "{from_file}");
    no_internals(&from_file);

    let from_flag = stderr(&huddle(
        &[
            "token",
            "--bind",
            "nonsense",
            "--room",
            "r",
            "--identity",
            "i",
        ],
        &[],
    ));
    assert!(
        from_flag.contains("server.bind = \"nonsense\" (a command-line flag)"),
        "{from_flag}"
    );
    no_internals(&from_flag);

    let from_env = stderr(&huddle(
        &["config", "show"],
        &[("HUDDLE_SIGNALING__MAX_PARTICIPANTS", "many")],
    ));
    assert!(
        from_env.contains("signaling.max_participants = \"many\" (environment variable HUDDLE_SIGNALING__MAX_PARTICIPANTS)"),
        "{from_env}"
    );
    no_internals(&from_env);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `huddle serve` in `data`, stdout and stderr piped, stopped once ready: (whether it got
/// ready, its stderr, its output).
fn serve_briefly(data: &Path, args: &[&str]) -> (bool, String, Output) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args([
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--bind",
            "127.0.0.1:0",
            "--turn-port",
            "0",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("huddle starts");
    let stdout = child.stdout.take().unwrap();
    let started = Instant::now();
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains("Huddle is ready at") {
            ready = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (ready, err, out)
}

#[test]
fn logs_to_a_pipe_have_no_colour_and_a_taken_port_is_named() {
    let data = scratch("logs");
    let (ready, err, _) = serve_briefly(&data, &["--media-port", "0"]);
    assert!(ready, "the server did not start: {err}");
    assert!(err.contains("INFO"), "info lines expected on stderr: {err}");
    assert!(
        !err.contains('\u{1b}'),
        "colour codes in a piped log: {err:?}"
    );

    // A media port another program holds: the error names it.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (ready, err, out) = serve_briefly(&data, &["--media-port", &port, "--workers", "1"]);
    assert!(!ready && !out.status.success(), "served on a taken port");
    assert!(
        err.contains(&format!("127.0.0.1:{port}")),
        "the port is named: {err}"
    );
    no_internals(&err);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn config_show_prints_toml_that_config_check_accepts_with_secrets_hidden() {
    let dir = scratch("show");
    let d = dir.join("data");
    let secret = "a-secret-nobody-may-see-0123";
    let out = huddle(
        &[
            "config",
            "show",
            "--data-dir",
            d.to_str().unwrap(),
            "--bind",
            "127.0.0.1:8443",
        ],
        &[
            ("HUDDLE_AUTH__SECRET", secret),
            ("HUDDLE_TURN__SECRET", "another-hidden-secret-456"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains(secret) && !text.contains("another-hidden"),
        "{text}"
    );
    assert!(
        text.contains("# auth.secret is set; hidden here."),
        "{text}"
    );
    assert!(text.contains("bind = \"127.0.0.1:8443\""), "{text}");
    let file = dir.join("shown.toml");
    std::fs::write(&file, &text).unwrap();
    let check = huddle(&["config", "check", file.to_str().unwrap()], &[]);
    assert!(
        check.status.success(),
        "config check refused config show's output: {}\n{text}",
        stderr(&check)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
