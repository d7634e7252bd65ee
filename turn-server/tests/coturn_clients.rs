//! Huddle's TURN server against coturn's test clients (`turnutils_uclient`,
//! `turnutils_stunclient`), in-process on 127.0.0.1.
//!
//! The clients come with Debian's `coturn` package; a missing client fails the
//! test (it is never skipped).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use huddle_turn::{PeerMode, Transport, TurnConfig, TurnServer};
use tokio::process::Command;

const SECRET: &str = "integration-secret";

fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found on PATH: install coturn's test clients with `apt-get install coturn`")
        })
}

fn general_config() -> TurnConfig {
    TurnConfig {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        secret: Some(SECRET.into()),
        realm: "huddle.test".into(),
        peer_mode: PeerMode::General,
        allow_peers: vec!["127.0.0.0/8".parse().expect("net")],
        user_quota: 1000,
        ..TurnConfig::default()
    }
}

async fn run(program: PathBuf, args: &[String]) -> Output {
    let mut cmd = Command::new(&program);
    cmd.args(args).kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(25), cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run {}: {e}", program.display()),
        Err(_) => panic!("{} {args:?} did not finish within 25 s", program.display()),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// (tot_send_msgs, tot_recv_msgs, lost packets) from uclient's summary.
fn summary(output: &str) -> (u64, u64, u64) {
    let after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    let totals = output
        .lines()
        .rev()
        .find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or_else(|| panic!("no tot_send_msgs summary in uclient output:\n{output}"));
    let lost = output
        .lines()
        .find_map(|l| after(l, "Total lost packets "))
        .unwrap_or_else(|| panic!("no `Total lost packets` line in uclient output:\n{output}"));
    (
        after(totals, "tot_send_msgs=").expect("send count"),
        after(totals, "tot_recv_msgs=").expect("recv count"),
        lost,
    )
}

fn uclient_args(extra: &[&str], secret: &str, port: u16) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    for a in [
        "-y",
        "-W",
        secret,
        "-e",
        "127.0.0.1",
        "-n",
        "100",
        "-m",
        "10",
        "-l",
        "170",
        "-z",
        "20",
        "-p",
    ] {
        args.push(a.to_string());
    }
    args.push(port.to_string());
    args.push("127.0.0.1".to_string());
    args
}

async fn relay_without_loss(extra: &[&str], transport: Transport) {
    let uclient = tool("turnutils_uclient");
    let server = TurnServer::start(general_config())
        .await
        .expect("server starts");
    let port = server.local_addr(transport).expect("listening").port();
    let out = run(uclient, &uclient_args(extra, SECRET, port)).await;
    let output = text(&out);
    assert!(out.status.success(), "uclient failed:\n{output}");
    let (sent, received, lost) = summary(&output);
    assert!(sent > 0, "nothing sent:\n{output}");
    assert_eq!(lost, 0, "packets lost:\n{output}");
    assert_eq!(sent, received, "sent != received:\n{output}");
    let stats = server.stats().snapshot();
    assert!(stats.allocations_total >= 10, "{stats:?}");
    assert!(stats.packets_to_peer >= sent, "{stats:?}");
    assert!(stats.packets_to_client >= received, "{stats:?}");
    assert_eq!(stats.auth_failures, 0, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_relays_over_udp_channels_without_loss() {
    relay_without_loss(&[], Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_relays_over_udp_send_indications_without_loss() {
    relay_without_loss(&["-s"], Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_relays_over_tcp_without_loss() {
    relay_without_loss(&["-t"], Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_with_a_wrong_secret_cannot_allocate() {
    let uclient = tool("turnutils_uclient");
    let server = TurnServer::start(general_config())
        .await
        .expect("server starts");
    let port = server.local_addr(Transport::Udp).expect("udp").port();
    let mut args = uclient_args(&[], "not-the-secret", port);
    // One client is enough to see the refusal.
    let m = args.iter().position(|a| a == "-m").expect("-m");
    args[m + 1] = "1".into();
    let out = run(uclient, &args).await;
    let output = text(&out);
    assert!(!out.status.success(), "uclient should fail:\n{output}");
    assert!(
        output.contains("Cannot complete Allocation") || output.contains("401"),
        "no allocation failure reported:\n{output}"
    );
    let stats = server.stats().snapshot();
    assert!(stats.auth_failures > 0, "{stats:?}");
    assert_eq!(stats.allocations_total, 0, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_only_mode_refuses_relaying_between_clients() {
    let uclient = tool("turnutils_uclient");
    let server = TurnServer::start(TurnConfig {
        peer_mode: PeerMode::MediaOnly,
        media_addrs: vec!["127.0.0.1:9".parse().expect("addr")],
        ..general_config()
    })
    .await
    .expect("server starts");
    let port = server.local_addr(Transport::Udp).expect("udp").port();
    let mut args = uclient_args(&[], SECRET, port);
    let m = args.iter().position(|a| a == "-m").expect("-m");
    args[m + 1] = "1".into();
    let out = run(uclient, &args).await;
    let output = text(&out);
    assert!(
        output.contains("403"),
        "expected 403 Forbidden for a peer outside media_addrs:\n{output}"
    );
    let stats = server.stats().snapshot();
    assert!(stats.permission_refusals > 0, "{stats:?}");
    assert_eq!(stats.packets_to_peer, 0, "{stats:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stunclient_gets_a_binding_answer() {
    let stunclient = tool("turnutils_stunclient");
    let server = TurnServer::start(general_config())
        .await
        .expect("server starts");
    let port = server.local_addr(Transport::Udp).expect("udp").port();
    let out = run(
        stunclient,
        &["-p".into(), port.to_string(), "127.0.0.1".into()],
    )
    .await;
    let output = text(&out);
    assert!(out.status.success(), "stunclient failed:\n{output}");
    assert!(
        output.contains("UDP reflexive addr: 127.0.0.1:"),
        "no reflexive address:\n{output}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_udp_share_the_port_and_shutdown_frees_it() {
    let server = TurnServer::start(general_config())
        .await
        .expect("server starts");
    let udp = server.local_addr(Transport::Udp).expect("udp");
    let tcp = server.local_addr(Transport::Tcp).expect("tcp");
    assert_eq!(udp.port(), tcp.port());
    server.shutdown().await;
    let again = TurnServer::start(TurnConfig {
        listen: vec![udp],
        ..general_config()
    })
    .await
    .expect("the port is free again after shutdown");
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_relays_over_tls_without_loss() {
    let uclient = tool("turnutils_uclient");
    let dir = std::env::temp_dir().join(format!("huddle-turn-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
    let server = TurnServer::start(TurnConfig {
        tls_listen: vec!["127.0.0.1:0".parse().expect("addr")],
        tls_cert_pem: Some(cert),
        tls_key_pem: Some(key),
        ..general_config()
    })
    .await
    .expect("server starts with TLS");
    let port = server.local_addr(Transport::Tls).expect("tls").port();
    let mut args = uclient_args(&["-t", "-S"], SECRET, port);
    let m = args.iter().position(|a| a == "-m").expect("-m");
    args[m + 1] = "4".into();
    let out = run(uclient, &args).await;
    let output = text(&out);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "uclient failed:\n{output}");
    let (sent, received, lost) = summary(&output);
    assert!(sent > 0, "nothing sent:\n{output}");
    assert_eq!(lost, 0, "packets lost:\n{output}");
    assert_eq!(sent, received, "sent != received:\n{output}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_tls_key_is_a_tls_error() {
    let err = TurnServer::start(TurnConfig {
        tls_cert_pem: Some("/nonexistent/cert.pem".into()),
        tls_key_pem: Some("/nonexistent/key.pem".into()),
        ..general_config()
    })
    .await
    .err()
    .expect("refused");
    assert!(matches!(err, huddle_turn::TurnError::Tls(_)), "{err}");
}
