//! Cluster mode: three real `huddle` nodes on a real `redis-server` and PostgreSQL, on loopback.
//!
//! Needs the Debian packages `redis-server` and `postgresql`; a missing tool fails the test with
//! the package to install.
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{spawn_publisher, Peer, Server};
use serde_json::{json, Value};

const SECRET: &str = "cluster-test-secret-0123456789";

/// A tool on PATH or in PostgreSQL's bin directory; fails naming the package otherwise.
fn tool(name: &str, package: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev().map(|v| v.join("bin")));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` not found: install it with `apt-get install -y {package}`")
        })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` on a free loopback port, without persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let bin = tool("redis-server", "redis-server");
        let port = free_port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let r = Redis { child, port };
        wait_port(port, "redis-server");
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli GET key`.
    fn get(&self, key: &str) -> Option<String> {
        let out = Command::new(tool("redis-cli", "redis-tools"))
            .args(["-p", &self.port.to_string(), "--raw", "GET", key])
            .output()
            .expect("redis-cli runs");
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!v.is_empty()).then_some(v)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL server in a temporary directory on a free loopback port, run as the `postgres`
/// user when the test runs as root (it refuses root); killed and deleted on drop.
struct Postgres {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

fn as_postgres_user(bin: &Path) -> Command {
    // SAFETY-free check for root: the effective uid from /proc.
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        let mut c = Command::new(tool("setpriv", "util-linux"));
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--reset-env",
        ])
        .arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

impl Postgres {
    fn start() -> Postgres {
        let initdb = tool("initdb", "postgresql");
        let postgres = tool("postgres", "postgresql");
        let isready = tool("pg_isready", "postgresql-client");
        let dir = std::env::temp_dir().join(format!("huddle-pg-{:x}", common::rand_u64()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut pg = Postgres {
            child: None,
            dir: dir.clone(),
            port: free_port(),
        };
        // Owned by postgres when we are root (chown through the tool, no libc needed).
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
        let data = dir.join("data");
        let out = as_postgres_user(&initdb)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "huddle", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.child = Some(
            as_postgres_user(&postgres)
                .arg("-D")
                .arg(&data)
                .args(["-p", &pg.port.to_string(), "-k"])
                .arg(&dir)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("postgres starts"),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new(&isready)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &pg.port.to_string(),
                    "-U",
                    "huddle",
                ])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "postgres did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    fn url(&self) -> String {
        format!("postgres://huddle@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three nodes (`n1`..`n3`) of one cluster.
struct Cluster {
    // Dropped in this order: the nodes before the servers they use.
    nodes: Vec<(String, Option<Server>)>,
    redis: Redis,
    _pg: Postgres,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let redis = Redis::start();
        let pg = Postgres::start();
        let (redis_url, pg_url) = (redis.url(), pg.url());
        let nodes = (1..=n)
            .map(|i| {
                let id = format!("n{i}");
                let s = Server::start_env(
                    &[],
                    &[
                        ("HUDDLE_AUTH__SECRET", SECRET),
                        ("HUDDLE_API__KEY", API_KEY),
                        ("HUDDLE_API__SECRET", API_SECRET),
                        ("HUDDLE_CLUSTER__REDIS_URL", &redis_url),
                        ("HUDDLE_CLUSTER__POSTGRES_URL", &pg_url),
                        ("HUDDLE_CLUSTER__NODE_ID", &id),
                    ],
                );
                (id, Some(s))
            })
            .collect();
        Cluster {
            redis,
            _pg: pg,
            nodes,
        }
    }

    fn node(&self, id: &str) -> &Server {
        self.nodes
            .iter()
            .find(|(n, _)| n == id)
            .and_then(|(_, s)| s.as_ref())
            .expect("a live node")
    }

    fn owner(&self, room: &str) -> Option<String> {
        self.redis.get(&format!("huddle:room:{room}"))
    }

    /// Waits until every node has registered (its first heartbeat).
    async fn wait_registered(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for (id, _) in &self.nodes {
            while self.redis.get(&format!("huddle:node:{id}")).is_none() {
                assert!(Instant::now() < deadline, "node {id} never registered");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One join without panicking on a dead node: follows redirects; the URL that answered
/// `joined`, with its `joined` message.
async fn try_join(ws_url: &str, token: &str) -> Result<(String, Value), String> {
    try_join_with(ws_url, token, None).await
}

/// [`try_join`] with a room password.
async fn try_join_with(
    ws_url: &str,
    token: &str,
    password: Option<&str>,
) -> Result<(String, Value), String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut url = ws_url.to_string();
    for _ in 0..4 {
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        .map_err(|_| format!("{url}: connect timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
        let mut join = json!({"type": "join", "protocol": 1, "token": token});
        if let Some(p) = password {
            join["password"] = json!(p);
        }
        let join = join.to_string();
        ws.send(Message::Text(join.into()))
            .await
            .map_err(|e| e.to_string())?;
        let answer = loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    break serde_json::from_str::<Value>(&t).map_err(|e| e.to_string())?
                }
                Ok(Some(Ok(_))) => continue,
                _ => return Err(format!("{url}: no answer to join")),
            }
        };
        match answer["type"].as_str() {
            Some("joined") => {
                let _ = ws.send(Message::Text(r#"{"type":"leave"}"#.into())).await;
                return Ok((url, answer));
            }
            Some("redirect") => {
                let base = answer["url"].as_str().unwrap_or_default();
                url = format!("{}/ws", base.replacen("http", "ws", 1));
            }
            _ => return Err(format!("{url}: {answer}")),
        }
    }
    Err("too many redirects".into())
}

const API_KEY: &str = "cluster-api-key";
const API_SECRET: &str = "cluster-api-secret-0123456789abcdef";

/// An admin token for the room API (every node has the same API key and secret).
fn admin_token() -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::default(),
        &json!({"iss": API_KEY, "exp": exp, "grants": {"admin": true}}),
        &EncodingKey::from_secret(API_SECRET.as_bytes()),
    )
    .unwrap()
}

fn token(room: &str, identity: &str) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    encode(
        &Header::default(),
        &json!({"room": room, "sub": identity, "name": identity, "exp": exp, "iat": exp - 3600}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn participants_joining_through_different_nodes_meet_on_the_rooms_node() {
    tokio::time::timeout(Duration::from_secs(55), async {
        let c = Cluster::start(3);
        c.wait_registered().await;
        let room = "cluster-room";
        // Alice joins through n1; the room is placed on some node.
        let alice = Peer::join(c.node("n1"), room, "Alice", true).await;
        let owner = c.owner(room).expect("the room has an owner in Redis");
        let others: Vec<&str> = ["n1", "n2", "n3"]
            .into_iter()
            .filter(|n| *n != owner)
            .collect();
        // Bob joins through a node that does not own the room: redirected to the owner.
        let bob = Peer::join(c.node(others[0]), room, "Bob", true).await;
        assert_eq!(c.owner(room).as_deref(), Some(owner.as_str()));
        let stop = Arc::new(AtomicBool::new(false));
        let _stop = StopOnDrop(stop.clone());
        spawn_publisher(alice.audio.clone().unwrap(), "alice", stop.clone());
        spawn_publisher(bob.audio.clone().unwrap(), "bob", stop.clone());
        common::eventually(Duration::from_secs(15), "media both ways", || {
            alice.payloads_from(&bob.participant_id).len() > 5
                && bob.payloads_from(&alice.participant_id).len() > 5
        })
        .await;
        // Chat between them, stored in PostgreSQL.
        bob.send(json!({"type": "chat", "text": "hello from bob"}));
        common::eventually(Duration::from_secs(5), "alice gets bob's chat", || {
            alice.saw(|m| m["type"] == "chat" && m["message"]["text"] == "hello from bob")
        })
        .await;
        // A third participant joining through the other non-owner sees the history.
        let (_, joined) = try_join(&c.node(others[1]).ws_url(), &token(room, "carol"))
            .await
            .expect("carol joins");
        assert!(
            joined["chat_history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["text"] == "hello from bob"),
            "history on join: {joined}"
        );
        // Every node serves /metrics with its node label, and the owner counts the room.
        for (id, s) in &c.nodes {
            let text = reqwest::get(format!("{}/metrics", s.as_ref().unwrap().url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                text.contains(&format!("huddle_node_info{{node=\"{id}\"")),
                "node label on {id}"
            );
        }
        // The added join latency of a redirect: join time through the owner and through a
        // node that does not own the room.
        let mut direct = Vec::new();
        let mut routed = Vec::new();
        for i in 0..10 {
            let t = token(room, &format!("probe-{i}"));
            let started = Instant::now();
            try_join(&c.node(&owner).ws_url(), &t).await.unwrap();
            direct.push(started.elapsed());
            let started = Instant::now();
            let (url, _) = try_join(&c.node(others[0]).ws_url(), &t).await.unwrap();
            routed.push(started.elapsed());
            assert_eq!(url, c.node(&owner).ws_url());
        }
        println!(
            "join through the owner: median {:.1} ms; through another node (redirect): median {:.1} ms",
            median_ms(direct),
            median_ms(routed)
        );
        alice.close().await;
        bob.close().await;
    })
    .await
    .expect("test finished within 55 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_the_rooms_node_dies_the_call_resumes_on_another_node_with_its_chat() {
    tokio::time::timeout(Duration::from_secs(58), async {
        let mut c = Cluster::start(3);
        c.wait_registered().await;
        let room = "failover-room";
        let alice = Peer::join(c.node("n1"), room, "Alice", true).await;
        let bob = Peer::join(c.node("n2"), room, "Bob", true).await;
        alice.send(json!({"type": "chat", "text": "said before the crash"}));
        common::eventually(Duration::from_secs(5), "bob gets the chat", || {
            bob.saw(|m| m["type"] == "chat" && m["message"]["text"] == "said before the crash")
        })
        .await;
        let owner = c.owner(room).expect("an owner");
        // The room's node dies without a goodbye, with both in the call.
        let killed = Instant::now();
        for (id, s) in &mut c.nodes {
            if *id == owner {
                drop(s.take());
            }
        }
        let live: Vec<String> = c
            .nodes
            .iter()
            .filter(|(_, s)| s.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        // The clients reconnect with backoff (here: every 250 ms, alternating live nodes)
        // until a join succeeds.
        let mut attempt = 0;
        let (url, joined) = loop {
            let node = c.node(&live[attempt % live.len()]);
            match try_join(&node.ws_url(), &token(room, "alice-probe")).await {
                Ok(r) => break r,
                Err(_) => {
                    attempt += 1;
                    assert!(killed.elapsed() < Duration::from_secs(30), "no failover in 30 s");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        let rejoin = killed.elapsed();
        drop((alice, bob));
        let new_owner = c.owner(room).expect("a new owner");
        assert_ne!(new_owner, owner);
        assert_eq!(url, c.node(&new_owner).ws_url());
        assert!(
            joined["chat_history"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["text"] == "said before the crash"),
            "chat history survives: {joined}"
        );
        // Both back in a call, media flowing, through whichever live node they reach.
        let alice = Peer::join(c.node(&live[0]), room, "Alice", true).await;
        let bob = Peer::join(c.node(&live[1]), room, "Bob", true).await;
        let stop = Arc::new(AtomicBool::new(false));
        let _stop = StopOnDrop(stop.clone());
        spawn_publisher(alice.audio.clone().unwrap(), "alice", stop.clone());
        spawn_publisher(bob.audio.clone().unwrap(), "bob", stop.clone());
        common::eventually(Duration::from_secs(15), "media both ways after failover", || {
            alice.payloads_from(&bob.participant_id).len() > 5
                && bob.payloads_from(&alice.participant_id).len() > 5
        })
        .await;
        let media = killed.elapsed();
        println!(
            "failover: killed {owner}; room rejoinable on {new_owner} after {:.2} s, media flowing both ways after {:.2} s",
            rejoin.as_secs_f64(),
            media.as_secs_f64()
        );
        assert!(rejoin < Duration::from_secs(10), "rejoin took {rejoin:?}");
        alice.close().await;
        bob.close().await;
    })
    .await
    .expect("test finished within 58 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reactions_edits_and_files_are_shared_by_the_nodes_and_survive_failover() {
    tokio::time::timeout(Duration::from_secs(58), async {
        let mut c = Cluster::start(2);
        c.wait_registered().await;
        let room = "rich-cluster";
        let (alice_token, bob_token) = (token(room, "alice"), token(room, "bob"));
        let (mut alice, joined, _) =
            common::Signal::join_following(&c.node("n1").ws_url(), &alice_token).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        let (mut bob, joined, _) =
            common::Signal::join_following(&c.node("n2").ws_url(), &bob_token).await;
        assert_eq!(joined["type"], "joined", "{joined}");
        let owner = c.owner(room).expect("an owner");

        // A picture and a larger file uploaded through n1, downloaded byte for byte through n2.
        let (status, att) = common::upload(
            c.node("n1"),
            room,
            Some(&alice_token),
            "pic.png",
            common::PNG.to_vec(),
        )
        .await;
        assert_eq!(status, 201, "{att}");
        let pic = att["id"].as_str().unwrap().to_string();
        let big: Vec<u8> = (0..1_500_000u32)
            .map(|i| b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26)
            .collect();
        let (status, doc) = common::upload(
            c.node("n1"),
            room,
            Some(&alice_token),
            "notes.txt",
            big.clone(),
        )
        .await;
        assert_eq!(
            (status, doc["mime"].as_str()),
            (201, Some("text/plain")),
            "{doc}"
        );
        let doc_path = format!("/api/rooms/{room}/files/{}", doc["id"].as_str().unwrap());
        let (status, bytes) = common::get(c.node("n2"), &doc_path, Some(&bob_token)).await;
        assert_eq!(status, 200);
        assert!(
            bytes == big,
            "the file downloads byte for byte through the other node"
        );
        let pic_path = format!("/api/rooms/{room}/files/{pic}");
        let (status, bytes) = common::get(c.node("n2"), &pic_path, Some(&bob_token)).await;
        assert_eq!((status, bytes.as_slice()), (200, common::PNG.as_slice()));
        let thumb = att["thumb"].as_str().expect("a picture has a thumbnail");
        let (status, jpeg) = common::get(c.node("n2"), thumb, Some(&bob_token)).await;
        assert_eq!((status, &jpeg[..2]), (200, &[0xff_u8, 0xd8][..]));

        // A message with the picture, reacted to by Bob and edited by Alice.
        alice
            .send(json!({"type": "chat", "text": "look", "attachment_id": pic}))
            .await;
        let m = bob.recv_type("chat").await.0["message"].clone();
        assert_eq!(m["attachment"]["id"], pic.as_str());
        let mid = m["id"].as_i64().unwrap();
        bob.send(json!({"type": "react", "message_id": mid, "emoji": "👍"}))
            .await;
        let u = alice.recv_type("chat_update").await.0;
        assert_eq!(u["message"]["reactions"][0]["count"], 1, "{u}");
        bob.recv_type("chat_update").await;
        alice
            .send(json!({"type": "chat_edit", "message_id": mid, "text": "look at this"}))
            .await;
        let u = bob.recv_type("chat_update").await.0;
        assert_eq!(u["message"]["text"], "look at this", "{u}");
        // A second message, deleted: its file goes for every node.
        let (_, gone) = common::upload(
            c.node("n2"),
            room,
            Some(&bob_token),
            "gone.txt",
            b"bye".to_vec(),
        )
        .await;
        let gone_path = format!("/api/rooms/{room}/files/{}", gone["id"].as_str().unwrap());
        bob.send(json!({"type": "chat", "text": "oops", "attachment_id": gone["id"]}))
            .await;
        let oops = alice.recv_type("chat").await.0["message"]["id"]
            .as_i64()
            .unwrap();
        bob.send(json!({"type": "chat_delete", "message_id": oops}))
            .await;
        let u = alice.recv_type("chat_update").await.0;
        assert_eq!(u["message"]["deleted"], true, "{u}");
        assert_eq!(
            common::get(c.node("n1"), &gone_path, Some(&bob_token))
                .await
                .0,
            404
        );
        assert_eq!(
            common::get(c.node("n2"), &gone_path, Some(&bob_token))
                .await
                .0,
            404
        );

        // The room's node dies; the room restarts on the other one with all of it.
        drop((alice, bob));
        for (id, s) in &mut c.nodes {
            if *id == owner {
                drop(s.take());
            }
        }
        let live = if owner == "n1" { "n2" } else { "n1" };
        let killed = Instant::now();
        let (_, joined) = loop {
            match try_join(&c.node(live).ws_url(), &token(room, "carol")).await {
                Ok(r) => break r,
                Err(_) => {
                    assert!(
                        killed.elapsed() < Duration::from_secs(30),
                        "no failover in 30 s"
                    );
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        assert_eq!(c.owner(room).as_deref(), Some(live));
        let history = joined["chat_history"].as_array().unwrap();
        let h = history
            .iter()
            .find(|m| m["id"] == mid)
            .unwrap_or_else(|| panic!("the message in the history: {joined}"));
        assert_eq!(h["text"], "look at this");
        assert!(h["edited_ts"].is_i64(), "{h}");
        assert_eq!(h["reactions"][0]["emoji"], "👍");
        assert_eq!(h["reactions"][0]["identities"], json!(["bob"]));
        assert_eq!(h["attachment"]["id"], pic.as_str());
        let d = history
            .iter()
            .find(|m| m["id"] == oops)
            .expect("the deleted one");
        assert_eq!(
            (d["deleted"].as_bool(), d["text"].as_str()),
            (Some(true), Some(""))
        );
        let carol = token(room, "carol");
        let (status, bytes) = common::get(c.node(live), &pic_path, Some(&carol)).await;
        assert_eq!((status, bytes.as_slice()), (200, common::PNG.as_slice()));
        let (status, bytes) = common::get(c.node(live), &doc_path, Some(&carol)).await;
        assert!(
            status == 200 && bytes == big,
            "the large file after failover"
        );
        println!("rich chat and files survived losing {owner}; rejoined on {live}");
    })
    .await
    .expect("test finished within 58 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_past_their_retention_are_deleted_from_postgresql() {
    tokio::time::timeout(Duration::from_secs(40), async {
        let c = Cluster::start(1);
        c.wait_registered().await;
        let room = "retention";
        let t = token(room, "alice");
        let (_, old) =
            common::upload(c.node("n1"), room, Some(&t), "old.txt", b"old".to_vec()).await;
        let (_, new) =
            common::upload(c.node("n1"), room, Some(&t), "new.txt", b"new".to_vec()).await;
        let (old, new) = (old["id"].as_str().unwrap(), new["id"].as_str().unwrap());
        // One file ages past the retention (30 days by default).
        let out = Command::new(tool("psql", "postgresql-client"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &c._pg.port.to_string(),
                "-U",
                "huddle",
            ])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!(
                "UPDATE chat_file SET created_ms = 0 WHERE id = '{old}'"
            ))
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A node sweeps at start (then every 6 hours with this retention).
        let (redis_url, pg_url) = (c.redis.url(), c._pg.url());
        let n2 = Server::start_env(
            &[],
            &[
                ("HUDDLE_AUTH__SECRET", SECRET),
                ("HUDDLE_CLUSTER__REDIS_URL", &redis_url),
                ("HUDDLE_CLUSTER__POSTGRES_URL", &pg_url),
                ("HUDDLE_CLUSTER__NODE_ID", "n2"),
            ],
        );
        let old_path = format!("/api/rooms/{room}/files/{old}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while common::get(&n2, &old_path, Some(&t)).await.0 != 404 {
            assert!(Instant::now() < deadline, "the old file was not swept");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(common::get(c.node("n1"), &old_path, Some(&t)).await.0, 404);
        let new_path = format!("/api/rooms/{room}/files/{new}");
        assert_eq!(
            common::get(c.node("n1"), &new_path, Some(&t)).await,
            (200, b"new".to_vec())
        );
    })
    .await
    .expect("test finished within 40 s");
}

#[test]
fn a_cluster_node_refuses_to_start_without_a_configured_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(["serve", "--bind", "127.0.0.1:0", "--media-port", "0"])
        .env("HUDDLE_CLUSTER__REDIS_URL", "redis://127.0.0.1:1/0")
        .env("HUDDLE_CLUSTER__POSTGRES_URL", "postgres://x@127.0.0.1:1/x")
        .env(
            "HUDDLE_DATA_DIR",
            std::env::temp_dir().join(format!("huddle-nosecret-{:x}", common::rand_u64())),
        )
        .env_remove("HUDDLE_AUTH__SECRET")
        .output()
        .expect("huddle runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_room_api_answers_for_the_whole_cluster_on_every_node() {
    tokio::time::timeout(Duration::from_secs(55), async {
        let c = Cluster::start(2);
        c.wait_registered().await;
        let http = reqwest::Client::new();
        let auth = format!("Bearer {}", admin_token());
        let api = |node: &str, path: &str| format!("{}/api/rooms{path}", c.node(node).url);

        // A password room created through n2 keeps its password whichever node holds it.
        let res = http
            .post(api("n2", ""))
            .header("authorization", &auth)
            .json(&json!({"name": "locked", "password": "s3cret", "max_participants": 5}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let refused = try_join(&c.node("n1").ws_url(), &token("locked", "eve")).await;
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("password_required")),
            "a join without the password: {refused:?}"
        );
        try_join_with(
            &c.node("n1").ws_url(),
            &token("locked", "dan"),
            Some("s3cret"),
        )
        .await
        .expect("the password admits, through either node");

        // An open room with Alice in it, placed wherever; asked about through the other node.
        let alice = Peer::join(c.node("n1"), "open", "Alice", true).await;
        let owner = c.owner("open").expect("placed");
        let other = if owner == "n1" { "n2" } else { "n1" };
        for node in ["n1", "n2"] {
            let list: Value = http
                .get(api(node, ""))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let rooms = list["rooms"].as_array().expect("rooms");
            let open = rooms.iter().find(|r| r["name"] == "open");
            assert_eq!(
                open.map(|r| r["participants"].clone()),
                Some(json!(1)),
                "{node} lists the open room with Alice: {list}"
            );
            assert!(
                rooms
                    .iter()
                    .any(|r| r["name"] == "locked" && r["password_protected"] == true),
                "{node} lists the locked room: {list}"
            );
        }
        let people: Value = http
            .get(api(other, "/open/participants"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            people["participants"][0]["name"], "Alice",
            "participants through the node that does not hold the room: {people}"
        );
        let identity = people["participants"][0]["identity"]
            .as_str()
            .expect("an identity")
            .to_string();
        let res = http
            .post(api(other, &format!("/open/participants/{identity}/mute")))
            .header("authorization", &auth)
            .json(&json!({"kind": "audio"}))
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert_eq!(status, 200, "{}", res.text().await.unwrap());
        common::eventually(
            Duration::from_secs(5),
            "alice is told she was muted",
            || alice.saw(|m| m["type"] == "mute" && m["by_server"] == true),
        )
        .await;
        // Without credentials the forwarded call is refused like a local one.
        let res = http
            .get(api(other, "/open/participants"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);

        // Ending the locked room through n1 forgets its password everywhere.
        let res = http
            .delete(api("n1", "/locked"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        assert!(c.redis.get("huddle:settings:locked").is_none());
        try_join(&c.node("n2").ws_url(), &token("locked", "eve"))
            .await
            .expect("no password once the room was ended");
        alice.close().await;
    })
    .await
    .expect("test finished within 55 s");
}
