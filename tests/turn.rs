//! The bundled TURN server as started by `huddle serve`: participants get working credentials,
//! and in its default media-only mode it refuses to relay anywhere but this node's SFU, checked
//! with coturn's own client.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

fn uclient() -> &'static str {
    let found = Command::new("sh")
        .args(["-c", "command -v turnutils_uclient"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "turnutils_uclient is missing: apt-get install coturn (.ci/run does)"
    );
    "turnutils_uclient"
}

/// Runs coturn's client in client-to-client mode (`-y`): it allocates two relays and asks for
/// permissions towards each other. Returns whether it exited 0 and everything it printed.
fn client_to_client(host: &str, port: u16, user: &str, pass: &str) -> (bool, String) {
    let out = Command::new(uclient())
        .args([
            "-y",
            "-u",
            user,
            "-w",
            pass,
            "-e",
            "127.0.0.1",
            "-n",
            "5",
            "-m",
            "1",
            "-l",
            "100",
            "-p",
        ])
        .arg(port.to_string())
        .arg(host)
        .output()
        .expect("turnutils_uclient runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The TURN UDP URL and credentials handed to a participant at join.
async fn credentials(server: &Server) -> (String, u16, String, String) {
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(json!({"type": "join", "protocol": 1, "token": server.guest_token("turn", "T").await}))
        .await;
    let joined = s.recv().await;
    let servers = joined["ice_servers"]
        .as_array()
        .expect("ice_servers")
        .clone();
    let turn = servers
        .iter()
        .find(|s| s["username"].is_string())
        .expect("a TURN server with credentials");
    let url = turn["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .find(|u| u.starts_with("turn:") && u.ends_with("transport=udp"))
        .expect("a TURN UDP URL")
        .to_string();
    let hostport = url.trim_start_matches("turn:").split('?').next().unwrap();
    let (host, port) = hostport.rsplit_once(':').unwrap();
    assert!(
        servers.iter().any(|s| s["urls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u.as_str().unwrap().starts_with("stun:"))),
        "a STUN URL too: {servers:?}"
    );
    (
        host.to_string(),
        port.parse().unwrap(),
        turn["username"].as_str().unwrap().to_string(),
        turn["credential"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn joined_credentials_allocate_but_media_only_mode_refuses_other_peers() {
    let server = Server::start(&[]);
    let (host, port, user, pass) = credentials(&server).await;
    assert!(
        user.split(':').next().unwrap().parse::<u64>().is_ok(),
        "REST username is expiry:identity: {user}"
    );

    // Client-to-client mode makes uclient ask for permissions towards its own relay addresses:
    // not this node's media sockets, so they must be refused with 403.
    let (_, text) = client_to_client(&host, port, &user, &pass);
    assert!(
        text.contains("403"),
        "a permission to a non-media peer is refused with 403:\n{text}"
    );
    assert!(
        !text.contains("Cannot complete Allocation"),
        "the joined credentials allocate:\n{text}"
    );

    // A wrong password does not even allocate.
    let (ok, text) = client_to_client(&host, port, &user, "wrong-password");
    assert!(!ok, "wrong credentials fail:\n{text}");
    assert!(
        text.contains("Cannot complete Allocation") || text.contains("401"),
        "refused at allocation:\n{text}"
    );
}
