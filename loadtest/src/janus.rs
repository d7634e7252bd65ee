//! A participant on Janus VideoRoom, the peer SFU the benchmarks compare against: Janus's
//! WebSocket API (subprotocol `janus-protocol`: create a session, attach the videoroom plugin,
//! join as publisher or subscriber, exchange JSEP) with the same peer connection, media and
//! measurements as on Huddle.
//!
//! Publishers join first and publish; subscribers then join one multistream subscription to
//! every publisher of their room. In the `meeting` scenario everyone is both: each participant
//! publishes on one handle and, once every publisher of the room is up, subscribes to all the
//! others on a second session (Janus's VideoRoom separates the two roles; the browser's
//! equivalent is two peer connections).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::RTCPeerConnection;

use crate::media::now_us;
use crate::peer::{self, Ctx, Participant};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Publishers' feed ids (and display names) of one Janus room, filled as they publish.
#[derive(Default)]
pub struct Feeds {
    ids: Mutex<Vec<(u64, String)>>,
    changed: Notify,
}

impl Feeds {
    fn add(&self, id: u64, name: &str) {
        self.ids
            .lock()
            .expect("feeds lock")
            .push((id, name.to_string()));
        self.changed.notify_waiters();
    }

    async fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<(u64, String)>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            {
                let ids = self.ids.lock().expect("feeds lock");
                if ids.len() >= n {
                    return Ok(ids.clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("only some of the room's {n} publishers published within {timeout:?}");
            }
        }
    }
}

/// One Janus session with one videoroom handle.
struct Session {
    tx: SplitSink<Ws, Message>,
    rx: SplitStream<Ws>,
    session: u64,
    handle: u64,
    next_tx: u64,
}

impl Session {
    async fn open(url: &str) -> Result<Session> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "janus-protocol".parse().expect("static header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .with_context(|| format!("connecting to Janus at {url}"))?;
        let (tx, rx) = ws.split();
        let mut s = Session {
            tx,
            rx,
            session: 0,
            handle: 0,
            next_tx: 1,
        };
        let created = s.request(json!({"janus": "create"})).await?;
        s.session = created["data"]["id"].as_u64().context("no session id")?;
        let attached = s
            .request(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await?;
        s.handle = attached["data"]["id"].as_u64().context("no handle id")?;
        Ok(s)
    }

    /// Sends a request and waits for its final reply (`success`, `error`, or the plugin's
    /// `event` after an `ack`).
    async fn request(&mut self, mut v: Value) -> Result<Value> {
        let transaction = format!("t{}", self.next_tx);
        self.next_tx += 1;
        v["transaction"] = json!(transaction);
        if self.session != 0 {
            v["session_id"] = json!(self.session);
        }
        if self.handle != 0 && v["janus"] == "message" {
            v["handle_id"] = json!(self.handle);
        }
        self.tx.send(Message::Text(v.to_string().into())).await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(15), self.next())
                .await
                .context("Janus did not answer within 15 s")??;
            if m["transaction"] != transaction.as_str() || m["janus"] == "ack" {
                continue;
            }
            if m["janus"] == "error" {
                bail!("Janus error: {}", m["error"]);
            }
            if let Some(err) = m["plugindata"]["data"]["error"].as_str() {
                bail!("videoroom error: {err}");
            }
            return Ok(m);
        }
    }

    async fn message(&mut self, body: Value, jsep: Option<Value>) -> Result<Value> {
        let mut v = json!({"janus": "message", "body": body});
        if let Some(j) = jsep {
            v["jsep"] = j;
        }
        self.request(v).await
    }

    async fn next(&mut self) -> Result<Value> {
        loop {
            match self.rx.next().await {
                None => bail!("Janus closed the WebSocket"),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Tells Janus that every local candidate is in the SDP already.
    async fn end_of_candidates(&mut self) -> Result<()> {
        let v = json!({
            "janus": "trickle", "session_id": self.session, "handle_id": self.handle,
            "transaction": "eoc", "candidate": {"completed": true},
        });
        self.tx.send(Message::Text(v.to_string().into())).await?;
        Ok(())
    }

    /// Keeps the session alive (Janus drops sessions silent for 60 s) and applies Janus's
    /// trickled candidates until `stop`.
    async fn idle(mut self, pc: &RTCPeerConnection, mut stop: watch::Receiver<bool>) {
        let mut keepalive = tokio::time::interval(Duration::from_secs(20));
        keepalive.tick().await;
        loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    let v = json!({"janus": "keepalive", "session_id": self.session, "transaction": "ka"});
                    if self.tx.send(Message::Text(v.to_string().into())).await.is_err() {
                        return;
                    }
                }
                m = self.next() => match m {
                    Err(_) => return,
                    Ok(m) if m["janus"] == "trickle" => add_candidate(pc, &m["candidate"]).await,
                    Ok(_) => {}
                },
                r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            }
        }
        let v = json!({"janus": "destroy", "session_id": self.session, "transaction": "bye"});
        let _ = self.tx.send(Message::Text(v.to_string().into())).await;
    }
}

async fn add_candidate(pc: &RTCPeerConnection, c: &Value) {
    let Some(candidate) = c["candidate"].as_str() else {
        return; // {"completed": true}
    };
    let init = RTCIceCandidateInit {
        candidate: candidate.to_string(),
        sdp_mid: c["sdpMid"].as_str().map(str::to_string),
        sdp_mline_index: c["sdpMLineIndex"].as_u64().map(|i| i as u16),
        username_fragment: None,
    };
    if let Err(e) = pc.add_ice_candidate(init).await {
        tracing::debug!(error = %e, "Janus candidate refused");
    }
}

/// Creates a videoroom for `publishers` publishers with Opus and VP8.
pub async fn create_room(url: &str, room: u64, publishers: usize) -> Result<()> {
    let mut s = Session::open(url).await?;
    let created = s
        .message(
            json!({
                "request": "create", "room": room, "publishers": publishers + 1,
                "audiocodec": "opus", "videocodec": "vp8", "bitrate": 0,
                "notify_joining": false, "description": "huddle-loadtest",
            }),
            None,
        )
        .await?;
    if created["plugindata"]["data"]["videoroom"] != "created" {
        bail!("room {room} not created: {created}");
    }
    let v = json!({"janus": "destroy", "session_id": s.session, "transaction": "bye"});
    let _ = s.tx.send(Message::Text(v.to_string().into())).await;
    Ok(())
}

/// Runs one participant until `stop`: a publisher adds its feed to `feeds`; a subscriber waits
/// for `publishers` feeds and subscribes to all of them.
pub async fn run(
    ctx: Arc<Ctx>,
    url: String,
    room: u64,
    feeds: Arc<Feeds>,
    publishers: usize,
    p: Arc<Participant>,
    stop: watch::Receiver<bool>,
) -> Result<()> {
    let publisher = p.role.audio || p.role.video;
    if !publisher {
        // Join time counts from the moment there is something to subscribe to, as on Huddle
        // where a listener's join starts when it asks for a token.
        feeds
            .wait_for(publishers, Duration::from_secs(60))
            .await
            .context("waiting for the publishers")?;
    }
    p.started_us.store(now_us().max(1), Ordering::Relaxed);
    p.stage("session");
    let mut s = Session::open(&url).await?;
    p.stage("attached");
    let (pc, published) = peer::new_peer(&ctx, &p, &p.name, false).await?;
    if publisher {
        let joined = s
            .message(
                json!({"request": "join", "ptype": "publisher", "room": room, "display": p.name}),
                None,
            )
            .await?;
        let feed = joined["plugindata"]["data"]["id"]
            .as_u64()
            .context("no publisher id in joined")?;
        let offer = peer::offer_with_candidates(&pc).await?;
        let res = s
            .message(
                json!({"request": "publish"}),
                Some(json!({"type": "offer", "sdp": offer})),
            )
            .await?;
        let answer = res["jsep"]["sdp"]
            .as_str()
            .context("no JSEP answer to publish")?;
        tracing::debug!(offer = %offer, answer = %answer, "publisher negotiation");
        s.end_of_candidates().await?;
        peer::apply_answer(&pc, answer.to_string()).await?;
        p.stage("answer applied: ICE/DTLS");
        peer::start_publishing(
            &ctx,
            published,
            Arc::new(peer::LayerSwitch::default()),
            stop.clone(),
        );
        // Janus lists a feed for subscribers only once its media is up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while p.connected_us.load(Ordering::Relaxed) == 0 {
            if tokio::time::Instant::now() > deadline {
                bail!("the publisher's connection to Janus did not come up within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        feeds.add(feed, &p.name);
        if p.role.subscribe {
            // Meeting: subscribe to every other publisher of the room on a second session.
            let ids = feeds
                .wait_for(publishers, Duration::from_secs(60))
                .await
                .context("waiting for the room's other publishers")?;
            let others: Vec<(u64, String)> =
                ids.into_iter().filter(|(id, _)| *id != feed).collect();
            let (sub, sub_pc) = subscribe(&ctx, &url, room, &others, &p).await?;
            let (a, b) = tokio::join!(s.idle(&pc, stop.clone()), sub.idle(&sub_pc, stop));
            let ((), ()) = (a, b);
            let _ = pc.close().await;
            let _ = sub_pc.close().await;
            return Ok(());
        }
    } else {
        let ids = feeds.wait_for(publishers, Duration::from_secs(5)).await?;
        join_subscriber(&mut s, &pc, room, &ids, &p).await?;
        p.stage("answer sent: ICE/DTLS");
    }
    s.idle(&pc, stop).await;
    let _ = pc.close().await;
    Ok(())
}

/// The simulcast substream to ask Janus for, for a tile: the lowest layer that covers it, as
/// Huddle's rule picks, or the top layer without a tile (what Huddle sends when the bandwidth
/// allows).
///
/// Janus numbers substreams by the order of the rids in the publisher's `a=simulcast` line,
/// taking the first as the highest (substream 2) and the last as the lowest (0); the tester
/// lists its rids lowest first (`q;h;f`), so Janus's 2 is `q` (320x180) and its 0 is `f`
/// (1280x720). Measured: substream 2 delivered ~50 kbit/s (q) and 1 ~200 kbit/s (h). Without
/// an explicit substream Janus sends its "highest", i.e. `q`: the Janus meeting figures before
/// this (2026-11-26, issue 13's table) forwarded only the lowest layer.
fn substream_for(tile: Option<&peer::Tile>) -> u8 {
    match tile.map(|t| (t.width, t.height)) {
        Some((w, h)) if w <= 320 && h <= 180 => 2, // q
        Some((w, h)) if w <= 640 && h <= 360 => 1, // h
        _ => 0,                                    // f
    }
}

/// Joins `s` as a subscriber to `feeds` (one multistream subscription) and answers Janus's offer
/// on `pc`. Each feed's video is asked at the substream its tile in `p`'s role needs (the top
/// layer without one), and the tile class of each video mid is recorded.
async fn join_subscriber(
    s: &mut Session,
    pc: &RTCPeerConnection,
    room: u64,
    feeds: &[(u64, String)],
    p: &Participant,
) -> Result<()> {
    let streams: Vec<Value> = feeds
        .iter()
        .map(|(id, name)| {
            let tile = p.role.tile_for(Some(name), false);
            json!({"feed": id, "substream": substream_for(tile.as_ref())})
        })
        .collect();
    let attached = s
        .message(
            json!({"request": "join", "ptype": "subscriber", "room": room, "streams": streams}),
            None,
        )
        .await?;
    if p.role.sizes_tiles() {
        let mut tiles = p.track_tiles.lock().expect("tiles lock");
        for st in attached["plugindata"]["data"]["streams"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if st["type"] != "video" {
                continue;
            }
            let (Some(mid), Some(name)) = (st["mid"].as_str(), st["feed_display"].as_str()) else {
                continue;
            };
            if let Some(tile) = p.role.tile_for(Some(name), false) {
                tiles.insert(format!("mid:{mid}"), tile.class);
            }
        }
    }
    let offer = attached["jsep"]["sdp"]
        .as_str()
        .context("no JSEP offer for the subscriber")?;
    p.note_sdp(offer.len());
    p.offers.fetch_add(1, Ordering::Relaxed);
    let answer = peer::answer_offer(pc, offer.to_string(), true).await?;
    s.message(
        json!({"request": "start"}),
        Some(json!({"type": "answer", "sdp": answer})),
    )
    .await?;
    s.end_of_candidates().await?;
    Ok(())
}

/// A second session and peer connection for `p`, subscribed to `feeds` (the meeting scenario).
async fn subscribe(
    ctx: &Ctx,
    url: &str,
    room: u64,
    feeds: &[(u64, String)],
    p: &Arc<Participant>,
) -> Result<(Session, Arc<RTCPeerConnection>)> {
    let mut s = Session::open(url).await?;
    let pc = peer::new_receiving_peer(ctx, p, &format!("{}-sub", p.name)).await?;
    join_subscriber(&mut s, &pc, room, feeds, p).await?;
    Ok((s, pc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_ask_janus_for_the_layer_huddle_would_pick() {
        let sub = |t: &str| substream_for(Some(&t.parse().unwrap()));
        // Janus's 2 is the tester's first rid (q), its 0 the last (f).
        assert_eq!((sub("small"), sub("medium"), sub("large")), (2, 1, 0));
        assert_eq!(sub("320x180"), 2);
        assert_eq!(sub("321x180"), 1);
        assert_eq!(substream_for(None), 0);
    }
}
