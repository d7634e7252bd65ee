//! A participant on Huddle: access token, the signaling protocol of `docs/protocol.md` over a
//! WebSocket, and the peer connection of [`crate::peer`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use huddle_protocol::{
    encode_client_msg, ClientMsg, ErrorCode, Grants, MediaSlot, ParticipantInfo, ServerMsg, Source,
    TrackInfo, TrackKind, VideoSize, PROTOCOL_VERSION,
};
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
        let publish = p.role.audio || p.role.video;
        self.token_for(http, url, &p.name, &p.room, publish, p.role.subscribe)
            .await
    }

    /// A token for `name` in `room` (a guest token has the grants the server gives guests).
    async fn token_for(
        &self,
        http: &reqwest::Client,
        url: &str,
        name: &str,
        room: &str,
        publish: bool,
        subscribe: bool,
    ) -> Result<String> {
        match &self.tokens {
            TokenSource::Secret(s) => sign_token(s, name, room, publish, subscribe),
            TokenSource::Guest => {
                let res: Value = http
                    .post(format!("{url}/api/token"))
                    .json(&json!({"room": room, "name": name}))
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
    let send = |m: ClientMsg| Message::Text(encode_client_msg(&m, None).into());
    let join = ClientMsg::Join {
        protocol: PROTOCOL_VERSION,
        token,
        password: None,
    };
    let mut redirects = 0;
    let (mut tx, mut rx, joined) = loop {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url(&url))
            .await
            .with_context(|| format!("connecting the signaling WebSocket of {url}"))?;
        let (mut tx, mut rx) = ws.split();
        tx.send(send(join.clone())).await?;
        p.stage("join sent");
        let answer = next_msg(&mut rx)
            .await?
            .context("socket closed before joined")?;
        match answer {
            ServerMsg::Joined {
                participant_id,
                participants,
                ..
            } => break (tx, rx, (participant_id, participants)),
            ServerMsg::Redirect { url: to, .. } if redirects < MAX_REDIRECTS => {
                redirects += 1;
                p.redirects
                    .store(redirects, std::sync::atomic::Ordering::Relaxed);
                url = to.trim_end_matches('/').to_string();
                let _ = tx.close().await;
                p.stage("redirected");
            }
            other => bail!("join at {url} answered with {other:?}"),
        }
    };
    Participant::mark(&p.joined_us);
    *p.node_url.lock().expect("node lock") = Some(url);
    let (pid, others) = joined;
    let pid = pid.as_str();
    p.stage("joined: creating the peer connection");
    // A data channel only for a participant with no track of its own, as the web client
    // does (its offer needs an m-line to carry ICE and DTLS).
    let publishes = p.role.audio || p.role.video || p.role.screen;
    let (pc, published) = peer::new_peer(&ctx, &p, pid, !publishes).await?;
    p.stage("gathering");
    let offer = peer::offer_with_candidates(&pc).await?;
    let mut sources = std::collections::BTreeMap::new();
    if p.role.screen {
        // The screen's m-line is named in `sources`; it sends from the start, and `screen`
        // {sharing: true} follows the answer (docs/protocol.md, screen sharing).
        let mid = peer::screen_mid(&pc)
            .await
            .context("no m-line for the shared screen")?;
        sources.insert(mid, Source::Screen);
    }
    tx.send(send(ClientMsg::Offer {
        sdp: offer,
        sources,
    }))
    .await?;
    p.stage("offer sent");
    let switch = Arc::new(peer::LayerSwitch::default());
    peer::start_publishing(&ctx, published, switch.clone(), stop.clone());

    // Who publishes what, from the signaling (for tile sizes and the track count).
    let mut room = RoomView::default();
    for o in &others {
        room.participant(o);
    }
    room.record_peak(&p);
    // The video tracks whose tile size was reported (with a tile in the role), and those of
    // the server's offers whose publisher is not known yet (sized on their track_published).
    let mut sized: Vec<String> = Vec::new();
    let mut pending: Vec<String> = Vec::new();
    let mut answers = 0u64;
    // Whether the server says what each m-line carries (`media_slots`); older servers do not,
    // and their msids are then the truth.
    let mut slots_seen = false;
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.tick().await;
    let result: Result<()> = async { loop {
        tokio::select! {
            m = next_msg(&mut rx) => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => break Err(anyhow::anyhow!("the server closed the signaling socket")),
                    Err(e) => break Err(e),
                };
                match m {
                    ServerMsg::Answer { sdp } => {
                        p.note_sdp(sdp.len());
                        peer::apply_answer(&pc, sdp).await?;
                        p.stage("answer applied: ICE/DTLS");
                        if p.role.screen {
                            tx.send(send(ClientMsg::Screen { sharing: true })).await?;
                        }
                    }
                    ServerMsg::Offer { sdp: offer } => {
                        p.note_sdp(offer.len());
                        p.offers.fetch_add(1, Ordering::Relaxed);
                        let sdp = match peer::answer_offer(&pc, offer.clone(), false).await {
                            Ok(sdp) => sdp,
                            Err(e) => {
                                // Counted, and the session goes on: later offers may apply.
                                p.negotiation_failures.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(participant = %p.name, error = %format!("{e:#}"), "could not answer the server's offer");
                                continue;
                            }
                        };
                        answers += 1;
                        let rid = format!("answer-{answers}");
                        let answer = encode_client_msg(&ClientMsg::Answer { sdp }, Some(&rid));
                        tx.send(Message::Text(answer.into())).await?;
                        if !slots_seen && p.role.sizes_tiles() {
                            // A server that does not send media_slots: the msids say it. Every
                            // video track it receives is shown at the role's tile size for its
                            // publisher.
                            let new: Vec<String> = video_track_ids(&offer)
                                .into_iter()
                                .filter(|t| !sized.contains(t) && !pending.contains(t))
                                .collect();
                            if !new.is_empty() {
                                let (known, unknown): (Vec<String>, Vec<String>) =
                                    new.into_iter().partition(|t| {
                                        p.role.tile.is_some() || room.tracks.contains_key(t)
                                    });
                                pending.extend(unknown);
                                send_sizes(&mut tx, &p, &room, &known).await?;
                                sized.extend(known);
                            }
                        }
                    }
                    ServerMsg::MediaSlots { slots } => {
                        slots_seen = true;
                        // What each receiving m-line carries now (free m-lines are reused).
                        send_slot_sizes(&mut tx, &p, &room, &mut sized, &slots).await?;
                    }
                    ServerMsg::ParticipantJoined { participant } => {
                        room.participant(&participant);
                        room.record_peak(&p);
                    }
                    ServerMsg::TrackPublished { participant_id, track } => {
                        room.track(&participant_id, &track);
                        room.record_peak(&p);
                        let track = track.track_id;
                        if let Some(i) = pending.iter().position(|t| *t == track) {
                            pending.swap_remove(i);
                            send_sizes(&mut tx, &p, &room, std::slice::from_ref(&track)).await?;
                            sized.push(track);
                        }
                    }
                    ServerMsg::ParticipantLeft { participant_id: id, .. } => {
                        room.tracks.retain(|_, (owner, _)| *owner != id);
                        room.names.remove(&id);
                    }
                    ServerMsg::Layers { active, .. } => {
                        // Dynacast: one camera track per participant here, so its track_id is ours.
                        switch.set_active(&active);
                    }
                    ServerMsg::Error { code, message, request_id } => {
                        p.server_errors.fetch_add(1, Ordering::Relaxed);
                        // A refused answer: its request id is echoed, except when it was too
                        // large to be read (the answers are the only large messages sent).
                        if code == ErrorCode::MessageTooLarge
                            || request_id.as_deref().is_some_and(|r| r.starts_with("answer-"))
                        {
                            p.negotiation_failures.fetch_add(1, Ordering::Relaxed);
                        }
                        let name = match serde_json::to_value(code) {
                            Ok(Value::String(s)) => s,
                            _ => "unknown".to_string(),
                        };
                        *p.error_codes.lock().expect("codes lock").entry(name).or_default() += 1;
                        tracing::warn!(participant = %p.name, ?code, %message, ?request_id, "server error");
                    }
                    m @ ServerMsg::Leave { .. } => break Err(anyhow::anyhow!("the server ended the session: {m:?}")),
                    _ => {}
                }
            }
            _ = ping.tick() => {
                tx.send(send(ClientMsg::Ping { ts: json!(now_us()) })).await?;
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break Ok(());
                }
            }
        }
    }}.await;
    let _ = tx.send(send(ClientMsg::Leave)).await;
    let _ = pc.close().await;
    result
}

/// How long a WHEP viewer waits for its connection to come up after the answer.
const VIEWER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Watches `v`'s room over WHEP through the node at `url` until `stop`: a token with the
/// subscribe grant, `POST /whep/{room}` with an offer of one recvonly video and four recvonly
/// audio m-lines (every candidate in it: no trickle), the answer applied; then `DELETE` of the
/// resource the `201` named. A viewer not connected within [`VIEWER_CONNECT_TIMEOUT`] fails.
pub async fn run_viewer(
    ctx: Arc<Ctx>,
    target: Arc<HuddleTarget>,
    http: reqwest::Client,
    url: String,
    v: Arc<peer::Viewer>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    Participant::mark(&v.started_us);
    let url = url.trim_end_matches('/');
    let token = target
        .token_for(&http, url, &v.name, &v.room, false, true)
        .await?;
    let pc = peer::new_viewer_peer(&ctx, &v, 1, 4).await?;
    let offer = peer::offer_with_candidates(&pc).await?;
    let res = http
        .post(format!("{url}/whep/{}", v.room))
        .bearer_auth(&token)
        .header(reqwest::header::CONTENT_TYPE, "application/sdp")
        .body(offer)
        .send()
        .await
        .context("POST /whep")?;
    let status = res.status();
    let location = res
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .map(str::to_string);
    let body = res.text().await.context("reading the WHEP answer")?;
    if status != reqwest::StatusCode::CREATED {
        let _ = pc.close().await;
        bail!("POST /whep answered {status}: {body}");
    }
    let result = async {
        let location = location.context("no Location in the WHEP answer")?;
        peer::apply_answer(&pc, body).await?;
        let deadline = tokio::time::Instant::now() + VIEWER_CONNECT_TIMEOUT;
        while v.connected_us.load(Ordering::Relaxed) == 0 && !*stop.borrow() {
            if tokio::time::Instant::now() > deadline {
                bail!("not connected {VIEWER_CONNECT_TIMEOUT:?} after the answer");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(location)
    }
    .await;
    let location = match result {
        Ok(l) => l,
        Err(e) => {
            let _ = pc.close().await;
            return Err(e);
        }
    };
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    let at = if location.starts_with("http") {
        location
    } else {
        format!("{url}{location}")
    };
    let deleted = http.delete(&at).bearer_auth(&token).send().await;
    let _ = pc.close().await;
    match deleted {
        Ok(r) if r.status().is_success() => {
            v.deleted.store(true, Ordering::Relaxed);
            Ok(())
        }
        Ok(r) => bail!("DELETE {at} answered {}", r.status()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("DELETE {at}"))),
    }
}

/// What a participant knows of the others from the signaling: names by participant id, and
/// every live remote track's publisher and source.
#[derive(Default)]
struct RoomView {
    names: HashMap<String, String>,
    /// track id → (participant id, source).
    tracks: HashMap<String, (String, Source)>,
}

impl RoomView {
    /// A participant (`joined`, `participant_joined`).
    fn participant(&mut self, v: &ParticipantInfo) {
        self.names.insert(v.participant_id.clone(), v.name.clone());
        for t in &v.tracks {
            self.track(&v.participant_id, t);
        }
    }

    /// A track of participant `owner`.
    fn track(&mut self, owner: &str, t: &TrackInfo) {
        self.tracks
            .insert(t.track_id.clone(), (owner.to_string(), t.source));
    }

    fn record_peak(&self, p: &Participant) {
        p.peak_tracks
            .fetch_max(self.tracks.len() as u64, Ordering::Relaxed);
    }

    /// The tile `p` shows `track` at.
    fn tile(&self, p: &Participant, track: &str) -> Option<peer::Tile> {
        match self.tracks.get(track) {
            Some((owner, source)) => {
                let name = self.names.get(owner).map(String::as_str);
                p.role.tile_for(name, *source == Source::Screen)
            }
            None => p.role.tile_for(None, false),
        }
    }
}

/// Reports the tile sizes of `tracks` (`video_sizes`) and records their classes.
async fn send_sizes<S>(
    tx: &mut S,
    p: &Participant,
    room: &RoomView,
    tracks: &[String],
) -> Result<()>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    let mut sizes = Vec::new();
    for t in tracks {
        if let Some(tile) = room.tile(p, t) {
            p.track_tiles
                .lock()
                .expect("tiles lock")
                .insert(t.clone(), tile.class.clone());
            sizes.push(VideoSize {
                track_id: t.clone(),
                width: tile.width,
                height: tile.height,
            });
        }
    }
    if !sizes.is_empty() {
        let msg = encode_client_msg(&ClientMsg::VideoSizes { tracks: sizes }, None);
        tx.send(Message::Text(msg.into())).await?;
    }
    Ok(())
}

/// Follows a `media_slots` message: records the tile class of each video m-line's new track
/// (by `mid:<mid>` and by track id) and reports the sizes of the tracks not reported yet.
async fn send_slot_sizes<S>(
    tx: &mut S,
    p: &Participant,
    room: &RoomView,
    sized: &mut Vec<String>,
    slots: &[MediaSlot],
) -> Result<()>
where
    S: futures_util::Sink<Message> + Unpin,
    S::Error: std::error::Error + Send + Sync + 'static,
{
    if !p.role.sizes_tiles() {
        return Ok(());
    }
    let mut sizes = Vec::new();
    for slot in slots {
        if slot.kind != TrackKind::Video {
            continue;
        }
        let (mid, Some(track)) = (&slot.mid, slot.track_id.as_deref()) else {
            continue; // a freed m-line
        };
        let name = slot
            .participant_id
            .as_deref()
            .and_then(|id| room.names.get(id))
            .map(String::as_str);
        let screen = slot.source == Some(Source::Screen);
        let Some(tile) = p.role.tile_for(name, screen) else {
            continue;
        };
        {
            let mut tiles = p.track_tiles.lock().expect("tiles lock");
            tiles.insert(format!("mid:{mid}"), tile.class.clone());
            tiles.insert(track.to_string(), tile.class.clone());
        }
        if !sized.iter().any(|t| t == track) {
            if screen {
                p.screens_received.fetch_add(1, Ordering::Relaxed);
            }
            sized.push(track.to_string());
            sizes.push(VideoSize {
                track_id: track.to_string(),
                width: tile.width,
                height: tile.height,
            });
        }
    }
    if !sizes.is_empty() {
        let msg = encode_client_msg(&ClientMsg::VideoSizes { tracks: sizes }, None);
        tx.send(Message::Text(msg.into())).await?;
    }
    Ok(())
}

/// The next server message. A message of a type this tester does not know (a newer server)
/// is skipped.
async fn next_msg<S>(rx: &mut S) -> Result<Option<ServerMsg>>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match rx.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMsg>(&t) {
                Ok(m) => return Ok(Some(m)),
                Err(e) => tracing::debug!(error = %e, "a server message this tester does not read"),
            },
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
