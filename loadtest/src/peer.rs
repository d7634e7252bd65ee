//! The WebRTC side of a synthetic participant, shared by every target: the peer connection
//! (the `webrtc` crate on loopback), publishing loops, and the receive path that feeds
//! [`crate::stats`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::watch;
use webrtc::api::interceptor_registry;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_connection_state::RTCIceConnectionState;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocalWriter;
use webrtc::track::track_remote::TrackRemote;

use crate::media::{self, now_us, Stamp, Vp8Source};
use crate::stats::{Kind, Totals, TrackRx};

/// What publishers send.
#[derive(Clone, Debug, Serialize)]
pub struct MediaOpts {
    /// Opus bitrate, bits/s.
    pub audio_bitrate: i32,
    /// Video bitrate, bits/s (the average frame size is bitrate / fps; key frames are 3x that).
    pub video_bitrate: u32,
    /// Video frames per second.
    pub fps: u32,
    /// Seconds between periodic key frames (a PLI or FIR also triggers one).
    pub keyframe_interval: f64,
    /// Simulcast layers (1 = none; 2 or 3 send rids `q`, `h`, `f` lowest first, at 1/16, 1/4
    /// and all of the bitrate).
    pub simulcast: u8,
}

/// The simulcast rids, lowest first, and each layer's share of the bitrate.
const LAYERS: [(&str, u32); 3] = [("q", 16), ("h", 4), ("f", 1)];

/// Everything participants share.
pub struct Ctx {
    /// One `webrtc` API object (each peer connection gets its own copy of the media engine).
    pub api: API,
    /// Run-wide counters.
    pub totals: Arc<Totals>,
    /// Pre-encoded Opus frames, looped by every audio publisher.
    pub opus_frames: Arc<Vec<Vec<u8>>>,
    /// Publisher settings.
    pub media: MediaOpts,
}

impl Ctx {
    /// Builds the shared API: default codecs, the `sdes:mid` header extension (so forwarded
    /// streams map to their m-lines), the `rtp-stream-id` extensions (simulcast), receiver-side
    /// TWCC feedback and RTCP reports (a server's bandwidth estimate needs them, as it gets them
    /// from browsers); the rest of the crate's default interceptors (NACK) only with
    /// `interceptors`, as they cost the tester CPU that the server then does not get.
    ///
    /// ICE gathers only on `ice_ip` (127.0.0.1, or the host side of bench.sh's veth pair), and
    /// mDNS is off: no socket is bound to, and no multicast group joined on, any other
    /// interface.
    pub fn new(
        media: MediaOpts,
        opus_frames: Vec<Vec<u8>>,
        interceptors: bool,
        ice_ip: std::net::IpAddr,
    ) -> Result<Ctx> {
        let mut m = MediaEngine::default();
        m.register_default_codecs()?;
        for kind in [RTPCodecType::Audio, RTPCodecType::Video] {
            m.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: "urn:ietf:params:rtp-hdrext:sdes:mid".to_owned(),
                },
                kind,
                None,
            )?;
        }
        for uri in [
            "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        ] {
            m.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: uri.to_owned(),
                },
                RTPCodecType::Video,
                None,
            )?;
        }
        let mut registry = Registry::new();
        if interceptors {
            registry =
                webrtc::api::interceptor_registry::register_default_interceptors(registry, &mut m)?;
        } else {
            registry = interceptor_registry::configure_rtcp_reports(registry);
            registry = interceptor_registry::configure_twcc_receiver_only(registry, &mut m)?;
        }
        let mut s = SettingEngine::default();
        s.set_include_loopback_candidate(ice_ip.is_loopback());
        s.set_ip_filter(Box::new(move |ip| ip == ice_ip));
        s.set_network_types(vec![NetworkType::Udp4]);
        s.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        let api = APIBuilder::new()
            .with_media_engine(m)
            .with_interceptor_registry(registry)
            .with_setting_engine(s)
            .build();
        Ok(Ctx {
            api,
            totals: Arc::new(Totals::default()),
            opus_frames: Arc::new(opus_frames),
            media,
        })
    }
}

/// A participant's role.
#[derive(Clone, Debug, Serialize)]
pub struct Role {
    /// Publishes an Opus track.
    pub audio: bool,
    /// Publishes a VP8 track.
    pub video: bool,
    /// Receives everyone else's tracks.
    pub subscribe: bool,
    /// The size at which it shows every video track it receives (Huddle's `video_sizes`); none:
    /// it never reports one (the server then sends the best layer the bandwidth allows).
    pub tile: Option<Tile>,
    /// Instead of one size for everything: a meeting grid, one size per publisher.
    pub grid: Option<Grid>,
    /// Also shares a screen: a second video track, source `screen` (Huddle only).
    pub screen: bool,
}

impl Role {
    /// Whether it reports tile sizes at all.
    pub fn sizes_tiles(&self) -> bool {
        self.tile.is_some() || self.grid.is_some()
    }

    /// The tile it shows the video of `publisher` at (the name of the participant that
    /// publishes it, `lt-<room>-<i>` for the planned ones), `screen` for a shared screen; None
    /// when it reports no sizes.
    pub fn tile_for(&self, publisher: Option<&str>, screen: bool) -> Option<Tile> {
        if let Some(t) = &self.tile {
            return Some(t.clone());
        }
        let index = publisher
            .and_then(|n| n.strip_prefix("lt-"))
            .and_then(|n| n.rsplit('-').next())
            .and_then(|i| i.parse().ok());
        self.grid.as_ref().map(|g| g.tile(index, screen))
    }
}

/// How a meeting participant lays out the others' video, as a real client's grid does: the
/// active speaker large (participant 0 of the room; participant 0 itself sees participant 1
/// there), the next `medium` participants by join order medium (the row next to the speaker),
/// everyone else small (a thumbnail strip); shared screens large. The sizes are those of
/// [`Tile`]'s classes, so with 3-layer simulcast the server should send `f`, `h` and `q`.
#[derive(Clone, Debug, Serialize)]
pub struct Grid {
    /// This participant's index in its room.
    pub me: usize,
    /// How many of the others are shown medium.
    pub medium: usize,
}

impl Grid {
    /// The tile of the room's `publisher`-th participant's video (None: someone who is not a
    /// planned participant, e.g. a churning one: small), or of a shared screen.
    pub fn tile(&self, publisher: Option<usize>, screen: bool) -> Tile {
        let class = |c: &str| c.parse::<Tile>().expect("a tile class");
        let speaker = usize::from(self.me == 0);
        match publisher {
            _ if screen => class("large"),
            Some(i) if i == speaker => class("large"),
            Some(i) if i != self.me => {
                // Rank among the others, the speaker and this participant left out.
                let rank = i - usize::from(self.me < i) - usize::from(speaker < i);
                if rank < self.medium {
                    class("medium")
                } else {
                    class("small")
                }
            }
            _ => class("small"),
        }
    }
}

/// A tile size a subscriber reports for the video it receives, named by its class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tile {
    /// `small`, `medium`, `large`, or `WxH` as given.
    pub class: String,
    /// Device pixels.
    pub width: u32,
    /// Device pixels.
    pub height: u32,
}

impl std::str::FromStr for Tile {
    type Err = String;

    /// `small` (160x90: the `q` layer of a 1280x720 simulcast), `medium` (480x270: `h`),
    /// `large` (1280x720: `f`), `hidden` (0x0: no video), or `WxH`.
    fn from_str(s: &str) -> Result<Tile, String> {
        let (w, h) = match s {
            "small" => (160, 90),
            "medium" => (480, 270),
            "large" => (1280, 720),
            "hidden" => (0, 0),
            _ => {
                let (w, h) = s.split_once('x').ok_or_else(|| {
                    format!("{s:?}: expected small, medium, large, hidden or WxH")
                })?;
                (
                    w.parse().map_err(|_| format!("{s:?}: bad width"))?,
                    h.parse().map_err(|_| format!("{s:?}: bad height"))?,
                )
            }
        };
        Ok(Tile {
            class: s.to_string(),
            width: w,
            height: h,
        })
    }
}

/// What one participant measured. Times are µs on the tester clock; 0 means "not yet".
pub struct Participant {
    /// Display name (`lt-<room>-<n>`).
    pub name: String,
    /// Room name (or Janus room id).
    pub room: String,
    /// What it does.
    pub role: Role,
    /// When it started joining (before asking for a token).
    pub started_us: AtomicU64,
    /// When its peer connection reached `connected` (ICE and DTLS done).
    pub connected_us: AtomicU64,
    /// When its first remote media packet arrived.
    pub first_media_us: AtomicU64,
    /// When the first packet of a remote video key frame arrived.
    pub first_keyframe_us: AtomicU64,
    /// One entry per received track.
    pub tracks: Mutex<Vec<Arc<Mutex<TrackRx>>>>,
    /// Why it failed, if it did.
    pub error: Mutex<Option<String>>,
    /// The last step of its join it reached (for participants that never connect).
    pub stage: Mutex<&'static str>,
    /// Video payload bytes received, all tracks (read while the run goes on).
    pub video_bytes: AtomicU64,
    /// Video packets received, all tracks.
    pub video_packets: AtomicU64,
    /// When it opened its first signaling WebSocket (after getting its token).
    pub signal_start_us: AtomicU64,
    /// When `joined` arrived (after any redirects).
    pub joined_us: AtomicU64,
    /// `redirect` messages followed before `joined` (cluster mode).
    pub redirects: AtomicU64,
    /// `error` messages the server sent it (a synthetic participant never errs on purpose).
    pub server_errors: AtomicU64,
    /// The base URL of the node that answered `joined`.
    pub node_url: Mutex<Option<String>>,
    /// The tile class each received video is shown at, by track id, or by `mid:<mid>` (the
    /// m-line's current publisher on Huddle after `media_slots`; Janus's mids).
    pub track_tiles: Mutex<HashMap<String, String>>,
    /// The largest SDP the server sent it (offer or answer), bytes.
    pub max_sdp_bytes: AtomicU64,
    /// Offers the server sent it.
    pub offers: AtomicU64,
    /// Negotiations that failed: a server offer it could not apply, or an answer of its that the
    /// server refused (an `error` for the answer's request id).
    pub negotiation_failures: AtomicU64,
    /// The server's `error` messages by code.
    pub error_codes: Mutex<BTreeMap<String, u64>>,
    /// The most remote tracks it was told of at once (`joined`, `track_published`, minus
    /// `track_unpublished` and `participant_left`).
    pub peak_tracks: AtomicU64,
    /// Shared screens it was sent (video m-lines given to a track of source `screen`).
    pub screens_received: AtomicU64,
}

impl Participant {
    /// A participant that has not started.
    pub fn new(name: String, room: String, role: Role) -> Self {
        Participant {
            name,
            room,
            role,
            started_us: AtomicU64::new(0),
            connected_us: AtomicU64::new(0),
            first_media_us: AtomicU64::new(0),
            first_keyframe_us: AtomicU64::new(0),
            tracks: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            stage: Mutex::new("not started"),
            video_bytes: AtomicU64::new(0),
            video_packets: AtomicU64::new(0),
            signal_start_us: AtomicU64::new(0),
            joined_us: AtomicU64::new(0),
            redirects: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            node_url: Mutex::new(None),
            track_tiles: Mutex::new(HashMap::new()),
            max_sdp_bytes: AtomicU64::new(0),
            offers: AtomicU64::new(0),
            negotiation_failures: AtomicU64::new(0),
            error_codes: Mutex::new(BTreeMap::new()),
            peak_tracks: AtomicU64::new(0),
            screens_received: AtomicU64::new(0),
        }
    }

    /// Records the size of an SDP the server sent (offer or answer).
    pub fn note_sdp(&self, bytes: usize) {
        self.max_sdp_bytes
            .fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// Records the join step reached.
    pub fn stage(&self, stage: &'static str) {
        *self.stage.lock().expect("stage lock") = stage;
    }

    /// Records a failure (the first one wins).
    pub fn fail(&self, e: &anyhow::Error) {
        let mut err = self.error.lock().expect("error lock");
        if err.is_none() {
            *err = Some(format!("{e:#}"));
        }
    }

    /// Records the current time in `slot` unless it holds one already.
    pub fn mark(slot: &AtomicU64) {
        let _ = slot.compare_exchange(0, now_us().max(1), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Time from `from` to `to`, ms, when both happened.
    pub fn between_ms(from: &AtomicU64, to: &AtomicU64) -> Option<f64> {
        let (a, b) = (from.load(Ordering::Relaxed), to.load(Ordering::Relaxed));
        (a != 0 && b != 0).then(|| b.saturating_sub(a) as f64 / 1000.0)
    }

    /// Time from start to `slot`, ms.
    pub fn since_start_ms(&self, slot: &AtomicU64) -> Option<f64> {
        let t = slot.load(Ordering::Relaxed);
        let s = self.started_us.load(Ordering::Relaxed);
        (t != 0 && s != 0).then(|| t.saturating_sub(s) as f64 / 1000.0)
    }
}

/// What one WHEP viewer (Huddle's `POST /whep/{room}`) measured. Times are µs on the tester
/// clock; 0 means "not yet". Its packets are counted apart from the participants' (they are in
/// no loss or latency figure: a viewer only counts what it receives).
pub struct Viewer {
    /// `whep-<room>-<n>`.
    pub name: String,
    /// Room name.
    pub room: String,
    /// When it asked for its token.
    pub started_us: AtomicU64,
    /// When its peer connection reached `connected` (ICE and DTLS done).
    pub connected_us: AtomicU64,
    /// RTP packets received, all m-lines.
    pub packets: AtomicU64,
    /// Of those, video.
    pub video_packets: AtomicU64,
    /// Video payload bytes received.
    pub video_bytes: AtomicU64,
    /// Why it failed, if it did.
    pub error: Mutex<Option<String>>,
    /// Its resource was deleted at the end (`DELETE` answered 200).
    pub deleted: AtomicBool,
}

impl Viewer {
    /// A viewer that has not started.
    pub fn new(name: String, room: String) -> Self {
        Viewer {
            name,
            room,
            started_us: AtomicU64::new(0),
            connected_us: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            video_packets: AtomicU64::new(0),
            video_bytes: AtomicU64::new(0),
            error: Mutex::new(None),
            deleted: AtomicBool::new(false),
        }
    }

    /// Records a failure (the first one wins).
    pub fn fail(&self, e: &anyhow::Error) {
        let mut err = self.error.lock().expect("error lock");
        if err.is_none() {
            *err = Some(format!("{e:#}"));
        }
    }
}

/// A local track this participant publishes: one encoding, or one per simulcast layer.
pub struct Published {
    /// Audio or video.
    pub kind: Kind,
    /// A shared screen (video, one layer, half the camera's frame rate and bitrate).
    pub screen: bool,
    /// (rid, bitrate divisor, track), lowest layer first; rid is empty without simulcast.
    layers: Vec<(&'static str, u32, Arc<TrackLocalStaticRTP>)>,
    sender: Arc<RTCRtpSender>,
}

/// Which simulcast layers of a participant's video the server wants (dynacast: Huddle's `layers`
/// message). Paused layers send nothing; a resumed layer starts with a key frame.
#[derive(Default)]
pub struct LayerSwitch {
    paused: Mutex<Vec<&'static str>>,
}

impl LayerSwitch {
    /// Keeps the layers in `active` (rids) and pauses the others.
    pub fn set_active(&self, active: &[String]) {
        let mut paused = self.paused.lock().expect("layers lock");
        paused.clear();
        paused.extend(
            LAYERS
                .iter()
                .map(|(rid, _)| *rid)
                .filter(|rid| !active.iter().any(|a| a == rid)),
        );
    }

    fn is_paused(&self, rid: &str) -> bool {
        !rid.is_empty() && self.paused.lock().expect("layers lock").contains(&rid)
    }
}

/// Creates a peer connection with the participant's send-only tracks (and a data channel named
/// `huddle` when `data_channel`), and starts recording every track it receives.
pub async fn new_peer(
    ctx: &Ctx,
    participant: &Arc<Participant>,
    stream_id: &str,
    data_channel: bool,
) -> Result<(Arc<RTCPeerConnection>, Vec<Published>)> {
    new_peer_with(ctx, participant, stream_id, data_channel, true).await
}

/// [`new_peer`] that only receives, whatever the participant publishes elsewhere (Janus's
/// separate subscriber connection in the meeting scenario).
pub async fn new_receiving_peer(
    ctx: &Ctx,
    participant: &Arc<Participant>,
    stream_id: &str,
) -> Result<Arc<RTCPeerConnection>> {
    Ok(new_peer_with(ctx, participant, stream_id, false, false)
        .await?
        .0)
}

async fn new_peer_with(
    ctx: &Ctx,
    participant: &Arc<Participant>,
    stream_id: &str,
    data_channel: bool,
    publish: bool,
) -> Result<(Arc<RTCPeerConnection>, Vec<Published>)> {
    let pc = Arc::new(
        ctx.api
            .new_peer_connection(RTCConfiguration::default())
            .await
            .context("creating the peer connection")?,
    );
    let mut published = Vec::new();
    let kinds = [
        (participant.role.audio, Kind::Audio, false),
        (participant.role.video, Kind::Video, false),
        (participant.role.screen, Kind::Video, true),
    ];
    for (on, kind, screen) in kinds {
        if !on || !publish {
            continue;
        }
        let (mime, clock_rate, channels, id) = match kind {
            Kind::Audio => (MIME_TYPE_OPUS, 48_000, 2, "audio"),
            Kind::Video if screen => (MIME_TYPE_VP8, 90_000, 0, SCREEN_TRACK_ID),
            Kind::Video => (MIME_TYPE_VP8, 90_000, 0, "video"),
        };
        let codec = RTCRtpCodecCapability {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            ..Default::default()
        };
        let n_layers = if kind == Kind::Video && !screen {
            usize::from(ctx.media.simulcast.clamp(1, 3))
        } else {
            1
        };
        let layers: Vec<(&'static str, u32, Arc<TrackLocalStaticRTP>)> = if n_layers == 1 {
            vec![(
                "",
                1,
                Arc::new(TrackLocalStaticRTP::new(
                    codec,
                    id.to_owned(),
                    stream_id.to_owned(),
                )),
            )]
        } else {
            LAYERS[3 - n_layers..]
                .iter()
                .map(|(rid, div)| {
                    (
                        *rid,
                        *div,
                        Arc::new(TrackLocalStaticRTP::new_with_rid(
                            codec.clone(),
                            id.to_owned(),
                            (*rid).to_owned(),
                            stream_id.to_owned(),
                        )),
                    )
                })
                .collect()
        };
        let t = pc
            .add_transceiver_from_track(
                layers[0].2.clone(),
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Sendonly,
                    send_encodings: vec![],
                }),
            )
            .await?;
        let sender = t.sender().await;
        for (_, _, track) in &layers[1..] {
            sender.add_encoding(track.clone()).await?;
        }
        published.push(Published {
            kind,
            screen,
            layers,
            sender,
        });
    }
    if data_channel {
        pc.create_data_channel("huddle", None).await?;
    }
    {
        let p = participant.clone();
        pc.on_peer_connection_state_change(Box::new(move |s| {
            if s == RTCPeerConnectionState::Connected {
                Participant::mark(&p.connected_us);
            }
            Box::pin(async {})
        }));
    }
    {
        let p = participant.clone();
        let totals = ctx.totals.clone();
        // The webrtc crate holds a lock on this handler until the future it returns completes,
        // so a handler that reads its track to the end starves every later track: spawn the
        // reader and return at once.
        pc.on_track(Box::new(move |track, _, transceiver| {
            let mid = transceiver.mid().map(|m| m.to_string()).unwrap_or_default();
            tokio::spawn(read_track(track, mid, p.clone(), totals.clone()));
            Box::pin(async {})
        }));
    }
    Ok((pc, published))
}

/// A receive-only peer connection for a WHEP viewer: `video` then `audio` recvonly m-lines.
/// It counts the RTP packets of every track it receives into `viewer` (headers only: nothing
/// is decoded or stamped) and marks `connected_us` when ICE and DTLS are up.
pub async fn new_viewer_peer(
    ctx: &Ctx,
    viewer: &Arc<Viewer>,
    video: usize,
    audio: usize,
) -> Result<Arc<RTCPeerConnection>> {
    let pc = Arc::new(
        ctx.api
            .new_peer_connection(RTCConfiguration::default())
            .await
            .context("creating the peer connection")?,
    );
    let kinds = std::iter::repeat_n(RTPCodecType::Video, video)
        .chain(std::iter::repeat_n(RTPCodecType::Audio, audio));
    for kind in kinds {
        pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: vec![],
            }),
        )
        .await?;
    }
    let v = viewer.clone();
    pc.on_peer_connection_state_change(Box::new(move |s| {
        if s == RTCPeerConnectionState::Connected {
            Participant::mark(&v.connected_us);
        }
        Box::pin(async {})
    }));
    let v = viewer.clone();
    // As in new_peer: the reader is spawned, so the handler returns at once.
    pc.on_track(Box::new(move |track, _, _| {
        let v = v.clone();
        tokio::spawn(async move {
            let video = track.kind() == RTPCodecType::Video;
            let mut buf = vec![0u8; 1500];
            while let Ok((pkt, _)) = track.read(&mut buf).await {
                v.packets.fetch_add(1, Ordering::Relaxed);
                if video {
                    v.video_packets.fetch_add(1, Ordering::Relaxed);
                    v.video_bytes
                        .fetch_add(pkt.payload.len() as u64, Ordering::Relaxed);
                }
            }
        });
        Box::pin(async {})
    }));
    Ok(pc)
}

/// The track id of a shared screen's local track.
const SCREEN_TRACK_ID: &str = "screen";

/// The mid of the m-line that sends the shared screen (after the first offer), for the offer's
/// `sources`.
pub async fn screen_mid(pc: &RTCPeerConnection) -> Option<String> {
    for t in pc.get_transceivers().await {
        let track = t.sender().await.track().await;
        if track.is_some_and(|tr| tr.id() == SCREEN_TRACK_ID) {
            return t.mid().map(|m| m.to_string());
        }
    }
    None
}

/// Makes the first offer with every local candidate in it (no trickle).
pub async fn offer_with_candidates(pc: &RTCPeerConnection) -> Result<String> {
    let offer = pc.create_offer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(offer).await?;
    let _ = gathered.recv().await;
    Ok(pc
        .local_description()
        .await
        .context("no local description")?
        .sdp)
}

/// Applies a remote answer.
pub async fn apply_answer(pc: &RTCPeerConnection, sdp: String) -> Result<()> {
    pc.set_remote_description(RTCSessionDescription::answer(sdp)?)
        .await
        .context("applying the answer")
}

/// Answers a remote offer. The answer is returned only once the new receivers are bound to
/// their SSRCs, so that media sent right after the answer does not reach the crate's
/// "undeclared SSRC" path (which gives up on streams it cannot map and closes them).
///
/// A server offer that arrives before the crate's ICE transport has started (it starts in a task
/// the crate spawns when the first answer is applied) would look like an ICE restart to the crate,
/// which would then answer with new ICE credentials that the server refuses ("ICE restart in
/// answer without one in the preceding offer"); so this waits for ICE to leave `new` first.
pub async fn answer_offer(pc: &RTCPeerConnection, sdp: String, gather: bool) -> Result<String> {
    let renegotiation = pc.remote_description().await.is_some();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while renegotiation
        && pc.ice_connection_state() == RTCIceConnectionState::New
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pc.set_remote_description(RTCSessionDescription::offer(sdp)?)
        .await
        .context("applying the offer")?;
    let answer = pc.create_answer(None).await?;
    let mut gathered = pc.gathering_complete_promise().await;
    pc.set_local_description(answer).await?;
    if gather {
        let _ = gathered.recv().await;
    }
    wait_receivers_bound(pc).await;
    Ok(pc
        .local_description()
        .await
        .context("no local description")?
        .sdp)
}

async fn wait_receivers_bound(pc: &RTCPeerConnection) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        let mut all = true;
        for t in pc.get_transceivers().await {
            if t.direction() != RTCRtpTransceiverDirection::Recvonly {
                continue;
            }
            let tracks = t.receiver().await.tracks().await;
            if tracks.is_empty() || tracks.iter().any(|t| t.ssrc() == 0) {
                all = false;
                break;
            }
        }
        if all || tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn read_track(
    track: Arc<TrackRemote>,
    mid: String,
    p: Arc<Participant>,
    totals: Arc<Totals>,
) {
    let (kind, clock_rate) = match track.kind() {
        RTPCodecType::Video => (Kind::Video, 90_000),
        _ => (Kind::Audio, 48_000),
    };
    let mut first = TrackRx::new(kind, track.stream_id(), clock_rate);
    first.track_id = track.id();
    first.mid = mid.clone();
    let mut rx = Arc::new(Mutex::new(first));
    let mut stream: Option<u16> = None;
    p.tracks.lock().expect("tracks lock").push(rx.clone());
    let mut buf = vec![0u8; 1500];
    while let Ok((pkt, _)) = track.read(&mut buf).await {
        let arrival = now_us();
        let payload = &pkt.payload;
        totals.count(payload.len());
        if kind == Kind::Video {
            p.video_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
            p.video_packets.fetch_add(1, Ordering::Relaxed);
        }
        Participant::mark(&p.first_media_us);
        let stamp = match kind {
            Kind::Audio => media::opus_stamp(payload),
            Kind::Video if pkt.header.marker => media::vp8_stamp(payload),
            Kind::Video => None,
        };
        if let Some(s) = stamp {
            // The server gave this m-line to another publisher (a free slot reused): count
            // the new stream on its own.
            if stream.is_some_and(|t| t != s.stream) {
                let mut next = TrackRx::new(
                    kind,
                    format!("{}#{:04x}", track.stream_id(), s.stream),
                    clock_rate,
                );
                next.mid = mid.clone();
                rx = Arc::new(Mutex::new(next));
                p.tracks.lock().expect("tracks lock").push(rx.clone());
            }
            stream = Some(s.stream);
        }
        let key = kind == Kind::Video && media::vp8_is_keyframe_start(payload);
        if key {
            Participant::mark(&p.first_keyframe_us);
        }
        let latency = stamp
            .map(|s| s.ts_us)
            .filter(|s| *s <= arrival && arrival - s < 60_000_000)
            .map(|s| arrival - s);
        {
            let mut rx = rx.lock().expect("track lock");
            rx.on_packet(
                pkt.header.sequence_number,
                pkt.header.timestamp,
                payload.len(),
                arrival,
            );
            if key {
                rx.keyframes += 1;
            }
            if let Some(s) = stamp {
                rx.on_stamp(s.n);
            }
            if let Some(l) = latency {
                let _ = rx.latency.record(l.max(1));
            }
        }
        if let Some(l) = latency {
            totals.latency(l);
        }
    }
}

/// Starts one sending loop per published track; they end when `stop` turns true.
pub fn start_publishing(
    ctx: &Ctx,
    published: Vec<Published>,
    switch: Arc<LayerSwitch>,
    stop: watch::Receiver<bool>,
) {
    for p in published {
        match p.kind {
            Kind::Audio => {
                for (_, _, track) in p.layers {
                    tokio::spawn(send_audio(
                        track,
                        ctx.opus_frames.clone(),
                        ctx.totals.clone(),
                        stop.clone(),
                    ));
                }
            }
            Kind::Video => {
                // One stamp tag for all layers of the track: a subscriber moved between layers
                // stays on one stream.
                let stream: u16 = rand::random();
                for (rid, div, track) in p.layers {
                    let (fps_div, div) = if p.screen { (2, 2) } else { (1, div) };
                    let keyframe_wanted = Arc::new(AtomicBool::new(false));
                    tokio::spawn(read_feedback(
                        p.sender.clone(),
                        rid,
                        keyframe_wanted.clone(),
                    ));
                    let mut opts = ctx.media.clone();
                    opts.video_bitrate /= div;
                    opts.fps = (opts.fps / fps_div).max(1);
                    let size = match rid {
                        "q" => (320, 180),
                        "h" => (640, 360),
                        _ => (1280, 720),
                    };
                    tokio::spawn(send_video(
                        track,
                        opts,
                        Vp8Source::new(size.0, size.1),
                        (rid, switch.clone()),
                        (keyframe_wanted, stream),
                        ctx.totals.clone(),
                        stop.clone(),
                    ));
                }
            }
        }
    }
}

fn rtp(seq: u16, ts: u32, marker: bool, payload: Vec<u8>) -> webrtc::rtp::packet::Packet {
    webrtc::rtp::packet::Packet {
        header: webrtc::rtp::header::Header {
            version: 2,
            sequence_number: seq,
            timestamp: ts,
            marker,
            ..Default::default()
        },
        payload: payload.into(),
    }
}

async fn send_audio(
    track: Arc<TrackLocalStaticRTP>,
    frames: Arc<Vec<Vec<u8>>>,
    totals: Arc<Totals>,
    stop: watch::Receiver<bool>,
) {
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    // Publishers start at different points of the loop, like different voices.
    let mut i: usize = rand::random::<u32>() as usize % frames.len().max(1);
    let mut n: u64 = 0;
    let stream: u16 = rand::random();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Burst: a late tick is caught up, so the long-run rate is exact.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !*stop.borrow() {
        tick.tick().await;
        let stamp = Stamp {
            n: n as u32,
            ts_us: now_us(),
            stream,
        };
        let payload = media::opus_with_stamp(&frames[i % frames.len()], stamp);
        if track.write_rtp(&rtp(seq, ts, false, payload)).await.is_ok() {
            totals.sent_packets.fetch_add(1, Ordering::Relaxed);
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(media::OPUS_FRAME_SAMPLES as u32);
        i += 1;
        n += 1;
    }
}

async fn send_video(
    track: Arc<TrackLocalStaticRTP>,
    opts: MediaOpts,
    mut src: Vp8Source,
    (rid, switch): (&'static str, Arc<LayerSwitch>),
    (keyframe_wanted, stream): (Arc<AtomicBool>, u16),
    totals: Arc<Totals>,
    stop: watch::Receiver<bool>,
) {
    let fps = opts.fps.max(1);
    let mut was_paused = false;
    let mut seq: u16 = rand::random();
    let mut ts: u32 = rand::random();
    let frame_bytes = (opts.video_bitrate / 8 / fps) as usize;
    let key_every = ((opts.keyframe_interval * f64::from(fps)).round() as u64).max(1);
    let mut n: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(fps)));
    // Burst: a late tick is caught up, so the long-run rate is exact.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !*stop.borrow() {
        tick.tick().await;
        if switch.is_paused(rid) {
            // Time and frame numbers run on, so that the layers' stamps stay aligned and a
            // subscriber moved between layers sees no gap.
            was_paused = true;
            ts = ts.wrapping_add(90_000 / fps);
            n += 1;
            continue;
        }
        let resumed = std::mem::take(&mut was_paused);
        let key = resumed
            || n.is_multiple_of(key_every)
            || keyframe_wanted.swap(false, Ordering::Relaxed);
        let size = if key { frame_bytes * 3 } else { frame_bytes };
        let stamp = Stamp {
            n: n as u32,
            ts_us: now_us(),
            stream,
        };
        let packets = src.frame(size, key, stamp);
        let last = packets.len() - 1;
        for (i, payload) in packets.into_iter().enumerate() {
            if track
                .write_rtp(&rtp(seq, ts, i == last, payload))
                .await
                .is_ok()
            {
                totals.sent_packets.fetch_add(1, Ordering::Relaxed);
            }
            seq = seq.wrapping_add(1);
        }
        ts = ts.wrapping_add(90_000 / fps);
        n += 1;
    }
}

/// Reads RTCP sent to one encoding of a video sender (`rid` empty without simulcast); a PLI or
/// FIR asks its next frame to be a key frame.
async fn read_feedback(
    sender: Arc<RTCRtpSender>,
    rid: &'static str,
    keyframe_wanted: Arc<AtomicBool>,
) {
    loop {
        let read = if rid.is_empty() {
            sender.read_rtcp().await
        } else {
            sender.read_rtcp_simulcast(rid).await
        };
        let Ok((packets, _)) = read else {
            return;
        };
        for p in packets {
            tracing::trace!(rtcp = ?p, "feedback");
            let any = p.as_any();
            if any.downcast_ref::<PictureLossIndication>().is_some()
                || any.downcast_ref::<FullIntraRequest>().is_some()
            {
                keyframe_wanted.store(true, Ordering::Relaxed);
            }
        }
    }
}
