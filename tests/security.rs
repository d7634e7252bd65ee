//! Security and abuse (issue 15), against the real server: one test per finding, each of which
//! failed on the code before its fix.

mod common;

use common::*;
use serde_json::{json, Value};

async fn join(server: &Server, room: &str, name: &str) -> (Signal, String, Value) {
    let token = server.guest_token(room, name).await;
    let mut s = Signal::connect(&server.ws_url()).await;
    s.send(json!({"type": "join", "protocol": 1, "token": token}))
        .await;
    let joined = s.recv_type("joined").await.0;
    (s, token, joined)
}

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
    let (err, skipped) = bob.recv_type("error").await;
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
