//! Rich chat against the real server: file uploads (authorization, size cap, type policy,
//! thumbnails, byte-exact downloads), attachments on messages, reactions, and editing and
//! deleting only one's own messages.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn files_need_a_token_for_their_room() {
    let server = Server::start(&[]);
    let token = server.guest_token("files", "Alice").await;
    let other = server.guest_token("elsewhere", "Mallory").await;

    assert_eq!(
        upload(&server, "files", None, "a.png", PNG.to_vec())
            .await
            .0,
        401
    );
    assert_eq!(
        upload(&server, "files", Some("garbage"), "a.png", PNG.to_vec())
            .await
            .0,
        401
    );
    let (status, body) = upload(&server, "files", Some(&other), "a.png", PNG.to_vec()).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("wrong_room")));

    let (status, att) = upload(&server, "files", Some(&token), "../pic.png", PNG.to_vec()).await;
    assert_eq!(status, 201, "{att}");
    assert_eq!(att["name"], "pic.png");
    assert_eq!(
        att["mime"], "image/png",
        "sniffed, not the client's text/html"
    );
    assert_eq!(att["size"], PNG.len());
    let id = att["id"].as_str().unwrap();
    let path = format!("/api/rooms/files/files/{id}");

    assert_eq!(get(&server, &path, None).await.0, 401);
    assert_eq!(get(&server, &path, Some("garbage")).await.0, 401);
    assert_eq!(get(&server, &path, Some(&other)).await.0, 403);
    assert_eq!(
        get(
            &server,
            &format!("/api/rooms/elsewhere/files/{id}"),
            Some(&other)
        )
        .await
        .0,
        404,
        "a file is only found in its own room"
    );
    let (status, bytes) = get(&server, &path, Some(&token)).await;
    assert_eq!((status, bytes.as_slice()), (200, PNG.as_slice()));
    let thumb = att["thumb"].as_str().expect("a picture has a thumbnail");
    let (status, jpeg) = get(&server, thumb, Some(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(&jpeg[..2], &[0xff, 0xd8], "thumbnails are JPEG");
    assert_eq!(
        get(
            &server,
            "/api/rooms/files/files/..%2F..%2Fsecret.key",
            Some(&token)
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn uploads_over_the_cap_or_of_refused_types_leave_nothing() {
    let server = Server::start_env(&[], &[("HUDDLE_CHAT__MAX_UPLOAD_BYTES", "1000")]);
    let token = server.guest_token("cap", "Alice").await;
    let (status, body) = upload(&server, "cap", Some(&token), "big.txt", vec![b'a'; 5000]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "too_large");
    assert!(
        body["message"].as_str().unwrap().contains("1000 bytes"),
        "{body}"
    );
    let (status, body) = upload(&server, "cap", Some(&token), "x.bin", vec![0, 1, 2, 0xff]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("type_not_allowed"))
    );
    let (status, _) = upload(&server, "cap", Some(&token), "note.txt", b"hello".to_vec()).await;
    assert_eq!(status, 201);
    // Only the accepted file is stored; no temporary files are left.
    let stored: Vec<_> = std::fs::read_dir(server.data_dir.join("files/cap"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(stored.len(), 2, "the file and its metadata: {stored:?}");
    let tmp = std::fs::read_dir(server.data_dir.join("files/.tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0);
    let (status, policy) = get(&server, "/api/rooms/cap/files", Some(&token)).await;
    assert_eq!(status, 200);
    let policy: Value = serde_json::from_slice(&policy).unwrap();
    assert_eq!(policy["max_upload_bytes"], 1000);
}

#[tokio::test]
async fn attachments_reactions_and_only_own_edits_and_deletes() {
    let server = Server::start(&[]);
    let (mut alice, token, _) = join(&server, "rich", "Alice").await;
    let (mut bob, _, _) = join(&server, "rich", "Bob").await;

    let (_, att) = upload(&server, "rich", Some(&token), "pic.png", PNG.to_vec()).await;
    let id = att["id"].as_str().unwrap().to_string();
    alice
        .send(json!({"type": "chat", "text": "", "attachment_id": id}))
        .await;
    let m = bob.recv_type("chat").await.0["message"].clone();
    assert_eq!(m["attachment"]["id"], id.as_str());
    assert_eq!(m["attachment"]["mime"], "image/png");
    let mid = m["id"].as_i64().unwrap();
    alice.recv_type("chat").await;
    // A file id of another room (or none at all) is refused.
    alice
        .send(json!({"type": "chat", "text": "x", "attachment_id": "0123456789abcdef0123456789abcdef"}))
        .await;
    assert_eq!(alice.recv_type("error").await.0["code"], "bad_message");

    bob.send(json!({"type": "react", "message_id": mid, "emoji": "👍"}))
        .await;
    for s in [&mut alice, &mut bob] {
        let u = s.recv_type("chat_update").await.0;
        assert_eq!(u["message"]["reactions"][0]["emoji"], "👍");
        assert_eq!(u["message"]["reactions"][0]["count"], 1);
    }
    bob.send(json!({"type": "react", "message_id": mid, "emoji": "not an emoji"}))
        .await;
    assert_eq!(bob.recv_type("error").await.0["code"], "bad_message");

    // Bob may not edit or delete Alice's message.
    bob.send(json!({"type": "chat_edit", "message_id": mid, "text": "hacked"}))
        .await;
    assert_eq!(bob.recv_type("error").await.0["code"], "forbidden");
    bob.send(json!({"type": "chat_delete", "message_id": mid}))
        .await;
    assert_eq!(bob.recv_type("error").await.0["code"], "forbidden");

    alice
        .send(json!({"type": "chat_edit", "message_id": mid, "text": "my picture"}))
        .await;
    let u = bob.recv_type("chat_update").await.0;
    assert_eq!(u["message"]["text"], "my picture");
    assert!(u["message"]["edited_ts"].is_i64());

    // Tile reactions go to everyone and are not stored.
    bob.send(json!({"type": "tile_reaction", "emoji": "🎉"}))
        .await;
    let r = alice.recv_type("tile_reaction").await.0;
    assert_eq!(r["emoji"], "🎉");

    // History for a newcomer carries the edit and the reaction.
    let (_carol, _, joined) = join(&server, "rich", "Carol").await;
    let h = &joined["chat_history"][0];
    assert_eq!(h["text"], "my picture");
    assert_eq!(h["reactions"][0]["count"], 1);
    assert_eq!(h["attachment"]["id"], id.as_str());

    alice
        .send(json!({"type": "chat_delete", "message_id": mid}))
        .await;
    let u = bob.recv_type("chat_update").await.0;
    assert_eq!(u["message"]["deleted"], true);
    assert_eq!(u["message"]["text"], "");
    assert!(u["message"].get("attachment").is_none());
    // Its file went with it.
    let (status, _) = get(
        &server,
        &format!("/api/rooms/rich/files/{id}"),
        Some(&token),
    )
    .await;
    assert_eq!(status, 404);
    // A deleted message can no longer be edited or reacted to.
    alice
        .send(json!({"type": "chat_edit", "message_id": mid, "text": "back"}))
        .await;
    assert_eq!(alice.recv_type("error").await.0["code"], "bad_message");
    let (_dave, _, joined) = join(&server, "rich", "Dave").await;
    assert_eq!(joined["chat_history"][0]["deleted"], true);
    let _ = tokio::time::timeout(Duration::from_millis(10), bob.recv()).await;
}
