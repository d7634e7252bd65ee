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

/// The server under test.
#[derive(Clone, Debug)]
pub struct HuddleTarget {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Where tokens come from.
    pub tokens: TokenSource,
}

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
    async fn token(&self, http: &reqwest::Client, p: &Participant) -> Result<String> {
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
                    .post(format!("{}/api/token", self.url))
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

    fn ws_url(&self) -> String {
        format!(
            "{}/ws",
            self.url
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        )
    }
}

/// Joins, publishes and subscribes as `p`'s role says, until `stop`; then leaves.
pub async fn run(
    ctx: Arc<Ctx>,
    target: Arc<HuddleTarget>,
    http: reqwest::Client,
    p: Arc<Participant>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    p.started_us
        .store(now_us().max(1), std::sync::atomic::Ordering::Relaxed);
    p.stage("token");
    let token = target.token(&http, &p).await?;
    p.stage("signaling connect");
    let (ws, _) = tokio_tungstenite::connect_async(target.ws_url())
        .await
        .context("connecting the signaling WebSocket")?;
    let (mut tx, mut rx) = ws.split();
    let send = |v: Value| Message::Text(v.to_string().into());
    tx.send(send(json!({"type": "join", "protocol": 1, "token": token})))
        .await?;
    p.stage("join sent");
    let joined = next_json(&mut rx)
        .await?
        .context("socket closed before joined")?;
    if joined["type"] != "joined" {
        bail!("join answered with {joined}");
    }
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
                        let sdp = peer::answer_offer(&pc, m["sdp"].as_str().unwrap_or_default().to_string(), false).await?;
                        tx.send(send(json!({"type": "answer", "sdp": sdp}))).await?;
                    }
                    Some("layers") => {
                        // Dynacast: one video track per participant here, so its track_id is ours.
                        let active: Vec<String> = m["active"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_string)).collect())
                            .unwrap_or_default();
                        switch.set_active(&active);
                    }
                    Some("error") => tracing::warn!(participant = %p.name, message = %m, "server error"),
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
