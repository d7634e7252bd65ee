//! A participant on Huddle: access token, the signaling protocol of `docs/protocol.md` over a
//! WebSocket, and the peer connection of [`crate::peer`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::media::now_us;
use crate::peer::{self, Ctx, Participant};

/// How participants get their access tokens.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// `POST /api/token` (guest tokens; needs open joining).
    Guest,
    /// Signs HS256 tokens with the server's secret.
    Secret(Vec<u8>),
}

/// The server under test: one node, or the nodes of a cluster that participants reach in turn.
#[derive(Clone, Debug)]
pub struct HuddleTarget {
    /// `http://127.0.0.1:PORT`, one per node.
    pub urls: Vec<String>,
    /// Where tokens come from.
    pub tokens: TokenSource,
}

/// Redirects followed in a row before a join gives up (as the web client does).
const MAX_REDIRECTS: u64 = 3;

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    room: &'a str,
    exp: u64,
    iat: u64,
    grants: Grants,
}

#[derive(serde::Serialize)]
struct Grants {
    publish: bool,
    subscribe: bool,
    chat: bool,
    admin: bool,
}

/// Signs a token the way the server's issuer does (HS256 over the protocol's claims).
pub fn sign_token(
    secret: &[u8],
    identity: &str,
    room: &str,
    publish: bool,
    subscribe: bool,
) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        sub: identity,
        name: identity,
        room,
        exp: now + 3600,
        iat: now,
        grants: Grants {
            publish,
            subscribe,
            chat: false,
            admin: false,
        },
    };
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )?)
}

impl HuddleTarget {
    /// The entry node for the `n`-th participant (round robin).
    pub fn url(&self, n: usize) -> &str {
        &self.urls[n % self.urls.len().max(1)]
    }

    async fn token(&self, http: &reqwest::Client, url: &str, p: &Participant) -> Result<String> {
        match &self.tokens {
            TokenSource::Secret(s) => sign_token(
                s,
                &p.name,
                &p.room,
                p.role.audio || p.role.video,
                p.role.subscribe,
            ),
            TokenSource::Guest => {
                let res: Value = http
                    .post(format!("{url}/api/token"))
                    .json(&json!({"room": p.room, "name": p.name}))
                    .send()
                    .await
                    .context("POST /api/token")?
                    .error_for_status()
                    .context("POST /api/token")?
                    .json()
                    .await?;
                Ok(res["token"]
                    .as_str()
                    .context("no token in /api/token's answer")?
                    .to_string())
            }
        }
    }
}

/// The signaling WebSocket of the node at `base` (`http://host:port`, `https://…`, or a bare
/// `host:port`, which is taken as plain HTTP).
pub fn ws_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}/ws")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}/ws")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        format!("{base}/ws")
    } else {
        format!("ws://{base}/ws")
    }
}

/// The ids of the video tracks a server offer sends (`a=msid:<participant> <track>` of every
/// video m-line that is not stopped).
pub fn video_track_ids(sdp: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut video = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut f = m.split_whitespace();
            video = f.next() == Some("video") && f.next() != Some("0");
        } else if video {
            if let Some(track) = line
                .strip_prefix("a=msid:")
                .and_then(|v| v.split_whitespace().nth(1))
            {
                if !ids.iter().any(|t| t == track) {
                    ids.push(track.to_string());
                }
            }
        }
    }
    ids
}

/// Joins through the `node`-th URL of `target` (following redirects to the room's node),
/// publishes and subscribes as `p`'s role says, until `stop`; then leaves.
pub async fn run(
    ctx: Arc<Ctx>,
    target: Arc<HuddleTarget>,
    http: reqwest::Client,
    p: Arc<Participant>,
    node: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    p.started_us
        .store(now_us().max(1), std::sync::atomic::Ordering::Relaxed);
    p.stage("token");
    let mut url = target.url(node).trim_end_matches('/').to_string();
    let token = target.token(&http, &url, &p).await?;
    p.stage("signaling connect");
    Participant::mark(&p.signal_start_us);
    let send = |v: Value| Message::Text(v.to_string().into());
    let join = json!({"type": "join", "protocol": 1, "token": token});
    let mut redirects = 0;
    let (mut tx, mut rx, joined) = loop {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(&url))
            .await
            .with_context(|| format!("connecting the signaling WebSocket of {url}"))?;
        let (mut tx, mut rx) = ws.split();
        tx.send(send(join.clone())).await?;
        p.stage("join sent");
        let answer = next_json(&mut rx)
            .await?
            .context("socket closed before joined")?;
        match answer["type"].as_str() {
            Some("joined") => break (tx, rx, answer),
            Some("redirect") if redirects < MAX_REDIRECTS => {
                redirects += 1;
                p.redirects
                    .store(redirects, std::sync::atomic::Ordering::Relaxed);
                url = answer["url"]
                    .as_str()
                    .context("redirect without a url")?
                    .trim_end_matches('/')
                    .to_string();
                let _ = tx.close().await;
                p.stage("redirected");
            }
            _ => bail!("join at {url} answered with {answer}"),
        }
    };
    Participant::mark(&p.joined_us);
    *p.node_url.lock().expect("node lock") = Some(url);
    let pid = joined["participant_id"].as_str().unwrap_or_default();
    p.stage("joined: creating the peer connection");
    let (pc, published) = peer::new_peer(&ctx, &p, pid, true).await?;
    p.stage("gathering");
    let offer = peer::offer_with_candidates(&pc).await?;
    tx.send(send(json!({"type": "offer", "sdp": offer})))
        .await?;
    p.stage("offer sent");
    let switch = Arc::new(peer::LayerSwitch::default());
    peer::start_publishing(&ctx, published, switch.clone(), stop.clone());

    // The video tracks whose tile size was reported (with a tile in the role).
    let mut sized: Vec<String> = Vec::new();
    let mut slots_seen = false;
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.tick().await;
    let result: Result<()> = async { loop {
        tokio::select! {
            m = next_json(&mut rx) => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => break Err(anyhow::anyhow!("the server closed the signaling socket")),
                    Err(e) => break Err(e),
                };
                match m["type"].as_str() {
                    Some("answer") => {
                        peer::apply_answer(&pc, m["sdp"].as_str().unwrap_or_default().to_string()).await?;
                        p.stage("answer applied: ICE/DTLS");
                    }
                    Some("offer") => {
                        let offer = m["sdp"].as_str().unwrap_or_default().to_string();
                        let sdp = peer::answer_offer(&pc, offer.clone(), false).await?;
                        tx.send(send(json!({"type": "answer", "sdp": sdp}))).await?;
                        p.note_sdp(offer.len());
                        if !slots_seen {
                            // A server that does not send media_slots: the msids say it.
                            size_tracks(&mut tx, &p, &mut sized, video_track_ids(&offer)).await?;
                        }
                    }
                    Some("media_slots") => {
                        slots_seen = true;
                        // What each receiving m-line carries now (free m-lines are reused).
                        let new: Vec<String> = m["slots"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|s| s["kind"] == "video")
                            .filter_map(|s| s["track_id"].as_str().map(str::to_string))
                            .collect();
                        size_tracks(&mut tx, &p, &mut sized, new).await?;
                    }
                    Some("layers") => {
                        // Dynacast: one video track per participant here, so its track_id is ours.
                        let active: Vec<String> = m["active"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_string)).collect())
                            .unwrap_or_default();
                        switch.set_active(&active);
                    }
                    Some("error") => {
                        p.server_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(participant = %p.name, message = %m, "server error");
                    }
                    Some("leave") => break Err(anyhow::anyhow!("the server ended the session: {m}")),
                    _ => {}
                }
            }
            _ = ping.tick() => {
                tx.send(send(json!({"type": "ping", "ts": now_us()}))).await?;
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break Ok(());
                }
            }
        }
    }}.await;
    let _ = tx.send(send(json!({"type": "leave"}))).await;
    let _ = pc.close().await;
    result
}

/// Reports the role's tile size for the video tracks in `tracks` not reported yet (every
/// video track it receives is shown at that size).
async fn size_tracks<S>(
    tx: &mut S,
    p: &Participant,
    sized: &mut Vec<String>,
    tracks: Vec<String>,
) -> Result<()>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(tile) = &p.role.tile else {
        return Ok(());
    };
    let new: Vec<String> = tracks.into_iter().filter(|t| !sized.contains(t)).collect();
    if new.is_empty() {
        return Ok(());
    }
    let list: Vec<Value> = new
        .iter()
        .map(|t| json!({"track_id": t, "width": tile.width, "height": tile.height}))
        .collect();
    let msg = json!({"type": "video_sizes", "tracks": list}).to_string();
    tx.send(Message::Text(msg.into())).await?;
    sized.extend(new);
    Ok(())
}

async fn next_json<S>(rx: &mut S) -> Result<Option<Value>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match rx.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(&t)?)),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_urls_become_websocket_urls() {
        assert_eq!(ws_url("http://127.0.0.1:8080/"), "ws://127.0.0.1:8080/ws");
        assert_eq!(
            ws_url("https://node2.example.org"),
            "wss://node2.example.org/ws"
        );
        assert_eq!(ws_url("127.0.0.1:9000"), "ws://127.0.0.1:9000/ws");
    }

    #[test]
    fn video_track_ids_come_from_live_video_m_lines() {
        let sdp = "v=0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=msid:P_1 TR_1\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=msid:P_1 TR_2\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=msid:P_2 TR_3\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=msid:P_3 TR_a\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(video_track_ids(sdp), vec!["TR_2", "TR_a"]);
    }
}
