//! `huddle-loadtest`: synthetic participants that join a Huddle server (or a Janus VideoRoom)
//! through its real signaling, do real ICE and DTLS-SRTP with the `webrtc` crate, publish Opus
//! and VP8-framed media, and measure what they receive; alongside, the server's CPU time and
//! memory from `/proc`. Everything runs on 127.0.0.1 (or, with `loadtest/bench.sh`, between the
//! root namespace and the servers' own network namespace) and stops by itself after
//! `--duration`.
//!
//! See `BENCHMARKS.md` at the repository root for the figures and `loadtest/bench.sh` for the
//! comparison run.

mod floor;
mod huddle;
mod janus;
mod media;
mod peer;
mod recording;
mod report;
mod stats;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::watch;

use crate::huddle::{HuddleTarget, TokenSource};
use crate::media::now_us;
use crate::peer::{Ctx, MediaOpts, Participant, Role, Viewer};
use crate::stats::{proc_sample, ProcSample, Second};

/// A named load shape, modelled on LiveKit's published benchmark scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Scenario {
    /// P audio publishers and S listeners per room (defaults 10 and 40).
    Audio,
    /// N participants per room, each publishing audio and video and receiving everyone else
    /// (default 6), each showing the others as a grid would (--layout).
    Meeting,
    /// One publisher (audio and video) and S viewers per room (default 40).
    Livestream,
    /// N steady meeting participants per room (--participants, default 8) while others join
    /// and leave: --churn-total of them, --churn-concurrent at a time, each staying
    /// --churn-stay seconds on average, publishing audio and video, one in
    /// --churn-screen-every also sharing a screen. The measured participants are the steady
    /// ones; the run ends when every joiner has left or at --duration (Huddle only).
    Churn,
}

/// How meeting participants lay out the others' video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Layout {
    /// The active speaker large (participant 0 of the room; participant 0 sees participant 1
    /// there), the next --grid-medium participants medium, everyone else small, shared screens
    /// large: the sizes of --subscriber-mix's classes (1280x720, 480x270, 160x90).
    Grid,
    /// No sizes reported: everyone gets the best layer its bandwidth allows.
    None,
}

/// The server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    /// Huddle's signaling protocol (docs/protocol.md).
    Huddle,
    /// Janus VideoRoom over Janus's WebSocket API.
    Janus,
}

#[derive(Parser, Debug, Clone, Serialize)]
#[command(
    name = "huddle-loadtest",
    version,
    about = "Load tester for Huddle and Janus VideoRoom"
)]
struct Cli {
    /// Another measurement instead of a load test (`floor`: the kernel and cipher cost an SFU
    /// cannot go below).
    #[command(subcommand)]
    #[serde(skip)]
    command: Option<Command>,
    /// The load shape.
    #[arg(long, value_enum, default_value = "audio")]
    scenario: Scenario,
    /// The server under test.
    #[arg(long, value_enum, default_value = "huddle")]
    target: Target,
    /// Huddle's base URL. Repeat it (or separate URLs with commas) for the nodes of a cluster:
    /// participants then join through the nodes in turn (round robin in join order), follow the
    /// `redirect` to their room's node, and the summary reports each node's rooms,
    /// participants and forwarded packets from its /metrics.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    url: Vec<String>,
    /// Janus's WebSocket API URL (with --target janus).
    #[arg(long, default_value = "ws://127.0.0.1:8188")]
    janus_url: String,
    /// The only local address ICE uses. Janus (libnice) gathers no loopback candidates, so runs
    /// against Janus need a server on another address: bench.sh runs every server in a network
    /// namespace of its own and passes the host side of its veth pair (10.77.0.1) here.
    #[arg(long, default_value = "127.0.0.1")]
    ice_ip: std::net::IpAddr,
    /// Sign tokens with this secret (HS256) instead of asking POST /api/token.
    #[arg(long, env = "HUDDLE_LOADTEST_SECRET", hide_env_values = true)]
    #[serde(skip)]
    token_secret: Option<String>,
    /// Read the token secret from this file (e.g. DATA_DIR/secret.key).
    #[arg(long)]
    token_secret_file: Option<PathBuf>,
    /// Rooms; every room gets the scenario's participants.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishers per room (audio scenario).
    #[arg(long)]
    publishers: Option<usize>,
    /// Listeners or viewers per room (audio and livestream scenarios).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Participants per room (meeting scenario).
    #[arg(long)]
    participants: Option<usize>,
    /// Publishers also receive the other publishers (audio scenario).
    #[arg(long)]
    publishers_subscribe: bool,
    /// Total run time, seconds, ramp-up included; the run stops by itself.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Joins started per second.
    #[arg(long, default_value_t = 20.0)]
    ramp_rate: f64,
    /// Seconds after the last join before the measurement window opens.
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Opus bitrate, kbit/s.
    #[arg(long, default_value_t = 32)]
    audio_kbps: u32,
    /// Video bitrate, kbit/s.
    #[arg(long, default_value_t = 800)]
    video_kbps: u32,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seconds between periodic video key frames.
    #[arg(long, default_value_t = 3.0)]
    keyframe_interval: f64,
    /// Simulcast layers per video track (1 = none; 2 or 3 send rids q/h/f at 1/16, 1/4 and all
    /// of --video-kbps).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    simulcast: u8,
    /// PID of the server process, to sample its CPU time and memory from /proc. Without it, a
    /// Huddle target is sampled through its /metrics (process_cpu_seconds_total), if exported.
    /// Repeat it for the nodes of a cluster, in the order of --url: the server figures are then
    /// the sum over the nodes, and each node's own figures are in the per-node rows.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Tile sizes subscribers report for every video track they receive (Huddle's
    /// `video_sizes`), assigned in turn to the subscribers of each room: `small` (160x90, the
    /// lowest of three simulcast layers), `medium` (480x270), `large` (1280x720), `hidden`, or
    /// `WxH`; e.g. `small,medium,large`. With --simulcast 3 each class gets its own layer; the
    /// summary gives the received video bitrate per class. Without it, no sizes are reported
    /// (every subscriber gets the best layer its bandwidth allows).
    /// In the meeting and churn scenarios the default is --layout grid instead, one size per
    /// publisher; this option overrides it.
    #[arg(long, value_delimiter = ',')]
    subscriber_mix: Vec<peer::Tile>,
    /// How meeting and churn participants show each other's video: `grid` (default: one
    /// participant large as the active speaker, --grid-medium of the others medium, the rest
    /// small, as in a 25-person call's speaker-and-grid view) or `none` (no sizes reported).
    /// On Janus the grid picks each video's simulcast substream when subscribing (Janus's 2,
    /// 1, 0 for small, medium, large: it counts the tester's rids q;h;f from the top).
    #[arg(long, value_enum, default_value = "grid")]
    layout: Layout,
    /// Participants shown medium in --layout grid, after the speaker.
    #[arg(long, default_value_t = 4)]
    grid_medium: usize,
    /// Raise the receive buffer of the tester's UDP sockets to this many bytes (checked every
    /// second; 0 = the system default, ~208 KiB). A tester core that falls behind for a moment
    /// then queues instead of dropping what the server sent; bench.sh uses 1 MiB.
    #[arg(long, default_value_t = 0)]
    udp_rcvbuf: usize,
    /// Use all of the `webrtc` crate's default interceptors (adds NACK and sender-side TWCC to
    /// the RTCP reports and TWCC feedback that are always on); off by default because they cost
    /// the tester CPU.
    #[arg(long)]
    interceptors: bool,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Plot throughput and latency over time to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// A label for this run in the summary, report and plot.
    #[arg(long)]
    label: Option<String>,
    /// No progress bar (logs only).
    #[arg(long)]
    no_progress: bool,
    /// Churn: extra participants joining per minute (spread over the rooms, round robin), each
    /// publishing what the scenario's first participant publishes and subscribing, and leaving
    /// after --churn-stay seconds. They are counted apart from the measured participants (the
    /// last line of the output), for soak runs.
    #[arg(long, default_value_t = 0.0)]
    churn_per_minute: f64,
    /// How long each churning participant stays, seconds (with --scenario churn, the mean: each
    /// stays a uniformly drawn 0.5 to 1.5 times it).
    #[arg(long, default_value_t = 20.0)]
    churn_stay: f64,
    /// Churn scenario: participants that join and leave over the run, in all (the run's bound
    /// in count).
    #[arg(long, default_value_t = 40)]
    churn_total: usize,
    /// Churn scenario: joiners in the room at once.
    #[arg(long, default_value_t = 4)]
    churn_concurrent: usize,
    /// Churn scenario: every N-th joiner also shares a screen (a second video track, source
    /// `screen`); 0 = none.
    #[arg(long, default_value_t = 4)]
    churn_screen_every: usize,
    /// WHEP viewers per room (Huddle only): once every participant has joined, this many viewers
    /// per room start (at --ramp-rate), each a `POST /whep/{room}` with one recvonly video and
    /// four recvonly audio m-lines; they count the RTP packets they receive and `DELETE` their
    /// resource at the end. The window opens --warmup after they are in. Their packets are in
    /// none of the participants' figures, but in the server's and the tester's cost per packet.
    #[arg(long, default_value_t = 0)]
    whep_viewers: usize,
    /// Records every room (Huddle only): once every participant has joined, `POST
    /// /api/rooms/{room}/recording` with an admin token (--api-key, --api-secret); the window
    /// opens --warmup after the recordings started. At the end the recordings are stopped and
    /// their files' bytes reported once they are ready.
    #[arg(long)]
    record: bool,
    /// The server's `api.key`, for --record.
    #[arg(long)]
    api_key: Option<String>,
    /// The server's `api.secret`, for --record.
    #[arg(long)]
    api_secret: Option<String>,
}

/// An admin token for the room API (--record).
fn admin_token(cli: &Cli) -> Result<String> {
    let (Some(key), Some(secret)) = (&cli.api_key, &cli.api_secret) else {
        bail!("--record needs --api-key and --api-secret");
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let claims =
        serde_json::json!({"iss": key, "exp": exp, "sub": "loadtest", "grants": {"admin": true}});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Measurements other than the load test.
#[derive(clap::Subcommand, Debug, Clone)]
enum Command {
    /// A minimal forwarder on this machine: recvmmsg, one AES-128-GCM open, N seals, sendmmsg,
    /// nothing else; prints its CPU-µs per outgoing and incoming packet (see BENCHMARKS.md).
    Floor(floor::FloorArgs),
}

impl Cli {
    /// The participants of one room, publishers first.
    fn room_roles(&self) -> Vec<Role> {
        let mut roles = self.room_roles_untiled();
        if !self.subscriber_mix.is_empty() {
            for (i, r) in roles.iter_mut().filter(|r| r.subscribe).enumerate() {
                r.tile = Some(self.subscriber_mix[i % self.subscriber_mix.len()].clone());
                r.grid = None;
            }
        }
        roles
    }

    /// Whether meeting participants show each other in a grid (--layout grid, no
    /// --subscriber-mix).
    fn grid(&self) -> bool {
        matches!(self.scenario, Scenario::Meeting | Scenario::Churn)
            && self.layout == Layout::Grid
            && self.subscriber_mix.is_empty()
    }

    /// The grid layout of the room's `me`-th participant, if meetings use one.
    fn grid_of(&self, me: usize) -> Option<peer::Grid> {
        self.grid().then_some(peer::Grid {
            me,
            medium: self.grid_medium,
        })
    }

    /// The tile classes of --subscriber-mix (or of the grid), each once, in order.
    fn tile_classes(&self) -> Vec<String> {
        if self.grid() {
            return ["large", "medium", "small"].map(String::from).to_vec();
        }
        let mut classes: Vec<String> = Vec::new();
        for t in &self.subscriber_mix {
            if !classes.contains(&t.class) {
                classes.push(t.class.clone());
            }
        }
        classes
    }

    fn room_roles_untiled(&self) -> Vec<Role> {
        let mut roles = Vec::new();
        match self.scenario {
            Scenario::Audio => {
                for _ in 0..self.publishers.unwrap_or(10) {
                    roles.push(Role {
                        audio: true,
                        video: false,
                        subscribe: self.publishers_subscribe,
                        tile: None,
                        grid: None,
                        screen: false,
                    });
                }
                for _ in 0..self.subscribers.unwrap_or(40) {
                    roles.push(Role {
                        audio: false,
                        video: false,
                        subscribe: true,
                        tile: None,
                        grid: None,
                        screen: false,
                    });
                }
            }
            Scenario::Meeting | Scenario::Churn => {
                let default = if self.scenario == Scenario::Churn {
                    8
                } else {
                    6
                };
                for me in 0..self.participants.unwrap_or(default) {
                    roles.push(Role {
                        audio: true,
                        video: true,
                        subscribe: true,
                        tile: None,
                        grid: self.grid_of(me),
                        screen: false,
                    });
                }
            }
            Scenario::Livestream => {
                roles.push(Role {
                    audio: true,
                    video: true,
                    subscribe: false,
                    tile: None,
                    grid: None,
                    screen: false,
                });
                for _ in 0..self.subscribers.unwrap_or(40) {
                    roles.push(Role {
                        audio: false,
                        video: false,
                        subscribe: true,
                        tile: None,
                        grid: None,
                        screen: false,
                    });
                }
            }
        }
        roles
    }

    fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| {
            format!(
                "{} {:?}",
                match self.target {
                    Target::Huddle => "huddle",
                    Target::Janus => "janus",
                },
                self.scenario
            )
            .to_lowercase()
        })
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,huddle_loadtest=info,webrtc=error,dtls=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Command::Floor(args)) = cli.command {
        return floor::main(args);
    }
    if cli.duration <= 0.0 || cli.ramp_rate <= 0.0 {
        bail!("--duration and --ramp-rate must be positive");
    }
    if cli.target == Target::Janus && cli.publishers_subscribe {
        bail!("--publishers-subscribe is not implemented for Janus");
    }
    if cli.target == Target::Janus && !cli.subscriber_mix.is_empty() {
        bail!("--subscriber-mix is not implemented for Janus");
    }
    if cli.target == Target::Janus
        && (cli.scenario == Scenario::Churn || cli.churn_per_minute > 0.0)
    {
        bail!("churn is not implemented for Janus");
    }
    if cli.target == Target::Janus && cli.whep_viewers > 0 {
        bail!("--whep-viewers is Huddle's WHEP: not for Janus");
    }
    if cli.record
        && (cli.target == Target::Janus || cli.api_key.is_none() || cli.api_secret.is_none())
    {
        bail!("--record is Huddle's recording, and needs --api-key and --api-secret");
    }
    if cli.scenario == Scenario::Churn && (cli.churn_concurrent == 0 || cli.churn_stay <= 0.0) {
        bail!("--churn-concurrent and --churn-stay must be positive");
    }
    if cli.url.is_empty() {
        bail!("--url needs a URL");
    }
    media::init_clock();
    // The tester's runtime uses the cores it may run on (taskset limits them).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

/// Where the server's CPU time and memory come from.
enum ServerProbe {
    /// `/proc/PID/stat` and `/proc/PID/status`.
    Pid(String),
    /// `process_cpu_seconds_total` and `process_resident_memory_bytes` from Prometheus metrics
    /// (when the server exports them; resolution is whatever the server reports).
    Metrics(String),
    /// Not measured.
    None,
}

impl ServerProbe {
    async fn sample(&self) -> Option<ProcSample> {
        match self {
            ServerProbe::Pid(pid) => proc_sample(pid),
            ServerProbe::Metrics(url) => {
                let text = reqwest::get(url).await.ok()?.text().await.ok()?;
                let value = |name: &str| {
                    text.lines()
                        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
                        .and_then(|l| l.rsplit(' ').next())
                        .and_then(|v| v.parse::<f64>().ok())
                };
                Some(ProcSample {
                    cpu_seconds: value("process_cpu_seconds_total")?,
                    rss_bytes: value("process_resident_memory_bytes").unwrap_or(0.0) as u64,
                })
            }
            ServerProbe::None => None,
        }
    }
}

/// One run's data for the report.
pub struct RunData {
    participants: Vec<Arc<Participant>>,
    /// The WHEP viewers (--whep-viewers), started or not.
    viewers: Vec<Arc<Viewer>>,
    seconds: Vec<Second>,
    samples: Vec<Sample>,
    window: (usize, usize),
    rss_before: Option<u64>,
    sent_packets: u64,
    /// Each probe's sample (one per --server-pid, or per node's /metrics), per sample.
    probe_samples: Vec<Vec<Option<ProcSample>>>,
    /// The tile classes of --subscriber-mix.
    classes: Vec<String>,
    /// Per sample, per tile class: (video bytes, video packets) received by its subscribers.
    class_samples: Vec<Vec<(u64, u64)>>,
    /// The nodes (--url).
    urls: Vec<String>,
    /// Each node's /metrics at the window's first sample, and after its last.
    scrape_start: Option<Vec<NodeScrape>>,
    scrape_end: Option<Vec<NodeScrape>>,
    /// The joiners' counts (churn scenario, --churn-per-minute).
    churn: Option<report::ChurnCounts>,
    /// Seconds of the window before the churn's first/last comparison starts (the longest
    /// stay: by then every slot has turned over).
    churn_warmup: f64,
    /// When the churn stopped and the room began to drain (seconds since the start), if it did
    /// before the window's end: the comparison ends there.
    churn_end: Option<f64>,
    /// Every track's latency (audio, video) added up when the window opened: what the window
    /// saw is the end's totals less these.
    latency_at_window: Option<(report::LatencyHist, report::LatencyHist)>,
}

/// The figures of one node's /metrics the summary uses (`None`: the node did not answer).
#[derive(Clone, Debug, Default)]
pub struct NodeScrape {
    /// `huddle_node_info{node=…}` (cluster mode).
    node: Option<String>,
    rooms: f64,
    participants: f64,
    /// `huddle_rtp_packets_total{direction="out"}`, all kinds.
    packets_out: f64,
    /// `huddle_rtp_packets_total{direction="in"}`, all kinds.
    packets_in: f64,
    /// `huddle_cluster_redirects_total`.
    redirects: f64,
    ok: bool,
}

/// Parses the figures the summary needs out of a Prometheus text page.
fn parse_node_metrics(text: &str) -> NodeScrape {
    let mut n = NodeScrape {
        ok: true,
        ..NodeScrape::default()
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let label = |key: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
            })
        };
        match name {
            "huddle_node_info" => n.node = label("node"),
            "huddle_rooms" => n.rooms += v,
            "huddle_participants" => n.participants += v,
            "huddle_cluster_redirects_total" => n.redirects += v,
            "huddle_rtp_packets_total" => match label("direction").as_deref() {
                Some("out") => n.packets_out += v,
                Some("in") => n.packets_in += v,
                _ => {}
            },
            _ => {}
        }
    }
    n
}

/// Every node's /metrics, in the order of `urls` (a node that does not answer in 2 s gets an
/// empty scrape).
async fn scrape_nodes(urls: &[String]) -> Vec<NodeScrape> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let mut out = Vec::new();
    for u in urls {
        let text = async { http.get(format!("{u}/metrics")).send().await?.text().await };
        out.push(match text.await {
            Ok(t) => parse_node_metrics(&t),
            Err(_) => NodeScrape::default(),
        });
    }
    out
}

/// The sum of the probes' samples (none when a probe has none).
fn sum_samples(each: &[Option<ProcSample>]) -> Option<ProcSample> {
    each.iter().try_fold(
        ProcSample {
            cpu_seconds: 0.0,
            rss_bytes: 0,
        },
        |acc, s| {
            s.map(|s| ProcSample {
                cpu_seconds: acc.cpu_seconds + s.cpu_seconds,
                rss_bytes: acc.rss_bytes + s.rss_bytes,
            })
        },
    )
}

/// Video bytes and packets received so far by the subscribers of each tile class.
fn class_counters(participants: &[Arc<Participant>], classes: &[String]) -> Vec<(u64, u64)> {
    let mut out = vec![(0, 0); classes.len()];
    for p in participants {
        if let Some(tile) = &p.role.tile {
            if let Some(i) = classes.iter().position(|c| *c == tile.class) {
                out[i].0 += p.video_bytes.load(Ordering::Relaxed);
                out[i].1 += p.video_packets.load(Ordering::Relaxed);
            }
            continue;
        }
        if p.role.grid.is_none() {
            continue;
        }
        // A grid: each track its own class.
        for t in p.tracks.lock().expect("tracks lock").iter() {
            let t = t.lock().expect("track lock");
            if t.kind != stats::Kind::Video {
                continue;
            }
            let class = report::track_class(p, &t);
            if let Some(i) = classes.iter().position(|c| Some(c) == class.as_ref()) {
                out[i].0 += t.bytes;
                out[i].1 += t.packets;
            }
        }
    }
    out
}

/// Cumulative counters at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    t: f64,
    packets: u64,
    sent: u64,
    bytes: u64,
    /// Packets the WHEP viewers received, and their video payload bytes.
    whep_packets: u64,
    whep_video_bytes: u64,
    server: Option<ProcSample>,
    tester: Option<ProcSample>,
}

async fn run(cli: Cli) -> Result<()> {
    let secret = match (&cli.token_secret, &cli.token_secret_file) {
        (Some(s), _) => Some(s.as_bytes().to_vec()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .as_bytes()
                .to_vec(),
        ),
        (None, None) => None,
    };
    let opus_frames = media::encode_voice(10.0, (cli.audio_kbps * 1000) as i32)?;
    let ctx = Arc::new(Ctx::new(
        MediaOpts {
            audio_bitrate: (cli.audio_kbps * 1000) as i32,
            video_bitrate: cli.video_kbps * 1000,
            fps: cli.fps,
            keyframe_interval: cli.keyframe_interval,
            simulcast: cli.simulcast,
        },
        opus_frames,
        cli.interceptors,
        cli.ice_ip,
    )?);
    let urls: Vec<String> = cli
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    // One probe per server process (or per node's /metrics); the server figures are their sum.
    let probes: Vec<ServerProbe> = match (cli.server_pid.is_empty(), cli.target) {
        (false, _) => {
            let mut probes = Vec::new();
            for pid in &cli.server_pid {
                let pid = pid.to_string();
                if proc_sample(&pid).is_none() {
                    bail!("no process {pid} to sample (--server-pid)");
                }
                probes.push(ServerProbe::Pid(pid));
            }
            probes
        }
        (true, Target::Huddle) => urls
            .iter()
            .map(|u| ServerProbe::Metrics(format!("{u}/metrics")))
            .collect(),
        (true, Target::Janus) => vec![ServerProbe::None],
    };
    let probe_all = || async {
        let mut each = Vec::new();
        for p in &probes {
            each.push(p.sample().await);
        }
        each
    };
    let classes = cli.tile_classes();

    // The participants, room by room, publishers first in each room.
    let run_id: u32 = rand::random::<u32>() % 1_000_000;
    let roles = cli.room_roles();
    let per_room = roles.len();
    let publishers_per_room = roles.iter().filter(|r| r.audio || r.video).count();
    let mut plan = Vec::new();
    for room in 0..cli.rooms {
        let (name, janus_id) = match cli.target {
            Target::Huddle => (format!("lt-{run_id}-{room}"), 0),
            Target::Janus => {
                let id = 100_000_000 + u64::from(run_id) * 1000 + room as u64;
                (id.to_string(), id)
            }
        };
        for (i, role) in roles.iter().enumerate() {
            plan.push((
                Arc::new(Participant::new(
                    format!("lt-{room}-{i}"),
                    name.clone(),
                    role.clone(),
                )),
                janus_id,
            ));
        }
    }
    // Ramp in the order publishers of every room, then everyone else.
    plan.sort_by_key(|(p, _)| !(p.role.audio || p.role.video));
    let total = plan.len();
    let viewers: Vec<Arc<Viewer>> = (0..cli.rooms)
        .flat_map(|room| {
            (0..cli.whep_viewers).map(move |i| {
                Arc::new(Viewer::new(
                    format!("whep-{room}-{i}"),
                    format!("lt-{run_id}-{room}"),
                ))
            })
        })
        .collect();
    tracing::info!(
        scenario = ?cli.scenario,
        target = ?cli.target,
        rooms = cli.rooms,
        per_room,
        total,
        "starting"
    );

    let mut rooms_feeds = std::collections::HashMap::new();
    if cli.target == Target::Janus {
        for (_, id) in &plan {
            if !rooms_feeds.contains_key(id) {
                janus::create_room(&cli.janus_url, *id, publishers_per_room).await?;
                rooms_feeds.insert(*id, Arc::new(janus::Feeds::default()));
            }
        }
    }

    let rss_before = sum_samples(&probe_all().await).map(|s| s.rss_bytes);
    let (stop_tx, stop_rx) = watch::channel(false);
    let http = reqwest::Client::new();
    let target = Arc::new(HuddleTarget {
        urls: urls.clone(),
        tokens: match secret {
            Some(s) => TokenSource::Secret(s),
            None => TokenSource::Guest,
        },
    });
    let t0 = now_us();
    let t_of = |us: u64| us.saturating_sub(t0) as f64 / 1e6;
    let ramp_secs = total as f64 / cli.ramp_rate;
    if ramp_secs + 1.0 > cli.duration {
        tracing::warn!(
            ramp_secs,
            duration = cli.duration,
            "the ramp-up takes most of the run: raise --duration or --ramp-rate"
        );
    }
    let (churn_target, churn_http) = (target.clone(), http.clone());
    let (viewer_target, viewer_http) = (target.clone(), http.clone());
    let mut handles = Vec::new();
    {
        let participants: Vec<_> = plan.iter().map(|(p, id)| (p.clone(), *id)).collect();
        let ctx = ctx.clone();
        let cli2 = cli.clone();
        let stop = stop_rx.clone();
        let rooms_feeds = rooms_feeds.clone();
        let (handle_tx, mut handle_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / cli2.ramp_rate);
            let start = tokio::time::Instant::now();
            for (i, (p, janus_room)) in participants.into_iter().enumerate() {
                tokio::time::sleep_until(start + interval * i as u32).await;
                if *stop.borrow() {
                    break;
                }
                let ctx = ctx.clone();
                let stop = stop.clone();
                let h = match cli2.target {
                    Target::Huddle => {
                        let (target, http) = (target.clone(), http.clone());
                        tokio::spawn(async move {
                            if let Err(e) = huddle::run(ctx, target, http, p.clone(), i, stop).await
                            {
                                tracing::warn!(participant = %p.name, error = %format!("{e:#}"), "participant failed");
                                p.fail(&e);
                            }
                        })
                    }
                    Target::Janus => {
                        let url = cli2.janus_url.clone();
                        let feeds = rooms_feeds[&janus_room].clone();
                        tokio::spawn(async move {
                            if let Err(e) = janus::run(
                                ctx,
                                url,
                                janus_room,
                                feeds,
                                publishers_per_room,
                                p.clone(),
                                stop,
                            )
                            .await
                            {
                                tracing::warn!(participant = %p.name, error = %format!("{e:#}"), "participant failed");
                                p.fail(&e);
                            }
                        })
                    }
                };
                let _ = handle_tx.send(h);
            }
        });
        // Collected after the run.
        let collector = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Some(h) = handle_rx.recv().await {
                v.push(h);
            }
            v
        });
        handles.push(collector);
    }

    let churn = Arc::new(Churn::default());
    if cli.churn_per_minute > 0.0 && cli.target == Target::Huddle {
        let rooms: Vec<String> = (0..cli.rooms).map(|r| format!("lt-{run_id}-{r}")).collect();
        let role = roles.first().cloned().map(|r| Role {
            subscribe: true,
            grid: cli.grid_of(usize::MAX),
            ..r
        });
        tokio::spawn(churn_loop(
            ctx.clone(),
            churn_target.clone(),
            churn_http.clone(),
            rooms,
            role.unwrap_or(Role {
                audio: true,
                video: false,
                subscribe: true,
                tile: None,
                grid: None,
                screen: false,
            }),
            Duration::from_secs_f64(60.0 / cli.churn_per_minute),
            Duration::from_secs_f64(cli.churn_stay.max(1.0)),
            Duration::from_secs_f64((cli.duration - cli.churn_stay).max(0.0)),
            churn.clone(),
            stop_rx.clone(),
        ));
    }

    if cli.scenario == Scenario::Churn {
        let room = format!("lt-{run_id}-0");
        // Joiners start once the steady participants are in, and none starts later than its
        // longest stay before the end.
        let start_after = Duration::from_secs_f64(ramp_secs + cli.warmup);
        let last_start = Duration::from_secs_f64(
            (cli.duration - cli.churn_stay * 1.5 - 5.0).max(ramp_secs + cli.warmup),
        );
        let role = Role {
            audio: true,
            video: true,
            subscribe: true,
            tile: None,
            grid: cli.grid_of(usize::MAX),
            screen: false,
        };
        for slot in 0..cli.churn_concurrent {
            tokio::spawn(churn_slot(
                ChurnSlot {
                    ctx: ctx.clone(),
                    target: churn_target.clone(),
                    http: churn_http.clone(),
                    room: room.clone(),
                    role: role.clone(),
                    // Staggered, so that the slots do not all turn over at once.
                    first: start_after
                        + Duration::from_secs_f64(
                            cli.churn_stay * slot as f64 / cli.churn_concurrent as f64,
                        ),
                    last_start,
                    mean_stay: cli.churn_stay,
                    total: cli.churn_total,
                    screen_every: cli.churn_screen_every,
                    churn: churn.clone(),
                },
                stop_rx.clone(),
            ));
        }
    }

    // Sample once a second until the duration is over.
    let progress = if cli.no_progress {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(cli.duration.ceil() as u64);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}",
            )
            .expect("valid template"),
        );
        pb
    };
    let participants: Vec<Arc<Participant>> = plan.iter().map(|(p, _)| p.clone()).collect();
    let first_probes = probe_all().await;
    let mut samples = vec![Sample {
        t: 0.0,
        packets: 0,
        sent: 0,
        bytes: 0,
        whep_packets: 0,
        whep_video_bytes: 0,
        server: sum_samples(&first_probes),
        tester: proc_sample("self"),
    }];
    let mut probe_samples = vec![first_probes];
    let class_now = || class_counters(&participants, &classes);
    let mut class_samples = vec![class_now()];
    // Each node's /metrics when the measurement window opens (the sample at or after the
    // warm-up that follows the last join) and when it closes.
    let mut scrape_start: Option<(usize, Vec<NodeScrape>)> = None;
    let mut seconds = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    // When every participant was in (the WHEP viewers start then), and when the viewers were
    // too (the window opens --warmup after that).
    let mut participants_in_at: Option<f64> = None;
    let mut all_joined_at: Option<f64> = None;
    let mut viewer_starter = None;
    let mut latency_at_window = None;
    let record_rooms: Vec<String> = (0..cli.rooms).map(|r| format!("lt-{run_id}-{r}")).collect();
    let mut recorder: Option<tokio::task::JoinHandle<Result<()>>> = None;
    let mut recording_started = !cli.record;
    loop {
        tick.tick().await;
        if cli.udp_rcvbuf > 0 {
            // The participants' sockets come and go (joins, churn): new ones are raised here.
            stats::raise_udp_rcvbuf(cli.udp_rcvbuf);
        }
        let now = now_us();
        let each = probe_all().await;
        let s = Sample {
            t: t_of(now),
            packets: ctx.totals.packets.load(Ordering::Relaxed),
            sent: ctx.totals.sent_packets.load(Ordering::Relaxed),
            bytes: ctx.totals.bytes.load(Ordering::Relaxed),
            whep_packets: viewers
                .iter()
                .map(|v| v.packets.load(Ordering::Relaxed))
                .sum(),
            whep_video_bytes: viewers
                .iter()
                .map(|v| v.video_bytes.load(Ordering::Relaxed))
                .sum(),
            server: sum_samples(&each),
            tester: proc_sample("self"),
        };
        probe_samples.push(each);
        class_samples.push(class_now());
        let prev = *samples.last().expect("a first sample");
        let dt = (s.t - prev.t).max(1e-3);
        let hist = {
            let mut h = ctx.totals.interval_latency.lock().expect("latency lock");
            std::mem::replace(&mut *h, stats::new_histogram())
        };
        let joined = participants
            .iter()
            .filter(|p| {
                p.connected_us.load(Ordering::Relaxed) != 0
                    || p.first_media_us.load(Ordering::Relaxed) != 0
            })
            .count();
        let failed = participants
            .iter()
            .filter(|p| p.error.lock().map(|e| e.is_some()).unwrap_or(false))
            .count();
        let second = Second {
            t: s.t,
            joined,
            packets_per_sec: (s.packets - prev.packets) as f64 / dt,
            sent_per_sec: (s.sent - prev.sent) as f64 / dt,
            bits_per_sec: (s.bytes - prev.bytes) as f64 * 8.0 / dt,
            whep_packets_per_sec: (s.whep_packets - prev.whep_packets) as f64 / dt,
            latency_p50_ms: (!hist.is_empty()).then(|| hist.value_at_quantile(0.5) as f64 / 1000.0),
            latency_p99_ms: (!hist.is_empty())
                .then(|| hist.value_at_quantile(0.99) as f64 / 1000.0),
            server_cores: match (s.server, prev.server) {
                (Some(a), Some(b)) => Some((a.cpu_seconds - b.cpu_seconds) / dt),
                _ => None,
            },
            server_rss_bytes: s.server.map(|x| x.rss_bytes),
            tester_cores: match (s.tester, prev.tester) {
                (Some(a), Some(b)) => Some((a.cpu_seconds - b.cpu_seconds) / dt),
                _ => None,
            },
        };
        progress.set_position(s.t as u64);
        progress.set_message(format!(
            "joined {joined}/{total} failed {failed} | {:.0} pkt/s {:.1} Mbit/s | p50 {} | server {}",
            second.packets_per_sec,
            second.bits_per_sec / 1e6,
            second
                .latency_p50_ms
                .map(|l| format!("{l:.1} ms"))
                .unwrap_or_else(|| "-".into()),
            second
                .server_cores
                .map(|c| format!("{:.0} %", c * 100.0))
                .unwrap_or_else(|| "-".into()),
        ));
        if participants_in_at.is_none() && joined + failed >= total {
            participants_in_at = Some(s.t);
            if cli.record {
                recorder = Some(tokio::spawn(recording::start(
                    urls[0].clone(),
                    admin_token(&cli)?,
                    record_rooms.clone(),
                )));
            }
            if !viewers.is_empty() {
                viewer_starter = Some(tokio::spawn(start_viewers(
                    ctx.clone(),
                    viewer_target.clone(),
                    viewer_http.clone(),
                    viewers.clone(),
                    participants.clone(),
                    cli.ramp_rate,
                    stop_rx.clone(),
                )));
            }
        }
        let viewers_in = viewers
            .iter()
            .filter(|v| {
                v.connected_us.load(Ordering::Relaxed) != 0
                    || v.error.lock().map(|e| e.is_some()).unwrap_or(false)
            })
            .count();
        if recorder.as_ref().is_some_and(|h| h.is_finished()) {
            if let Some(h) = recorder.take() {
                h.await??;
                recording_started = true;
                println!("recording: {} room(s) being recorded", record_rooms.len());
            }
        }
        if all_joined_at.is_none()
            && participants_in_at.is_some()
            && viewers_in >= viewers.len()
            && recording_started
        {
            all_joined_at = Some(s.t);
        }
        samples.push(s);
        if latency_at_window.is_none() && s.t >= all_joined_at.unwrap_or(ramp_secs) + cli.warmup {
            latency_at_window = Some(report::latency_totals(&participants));
        }
        if scrape_start.is_none()
            && cli.target == Target::Huddle
            && s.t >= all_joined_at.unwrap_or(ramp_secs) + cli.warmup
        {
            scrape_start = Some((samples.len() - 1, scrape_nodes(&urls).await));
        }
        seconds.push(second);
        if s.t >= cli.duration {
            break;
        }
        if cli.scenario == Scenario::Churn
            && churn.slots_done.load(Ordering::Relaxed) as usize >= cli.churn_concurrent
            && churn.active.load(Ordering::Relaxed) == 0
        {
            // Every joiner has come and gone: the run is over before --duration.
            break;
        }
    }
    progress.finish_and_clear();
    let scrape_end = if cli.target == Target::Huddle {
        Some(scrape_nodes(&urls).await)
    } else {
        None
    };
    // Stats are read before anyone leaves: leaving would show as a throughput drop.
    let window_start_t = all_joined_at.unwrap_or(ramp_secs) + cli.warmup;
    let last = samples.len() - 1;
    let mut first = samples
        .iter()
        .position(|s| s.t >= window_start_t)
        .unwrap_or(last);
    if last - first < 2 {
        tracing::warn!(
            window_start_t,
            "the measurement window is under 2 s: raise --duration (using the last seconds)"
        );
        first = last.saturating_sub(2);
    }
    let data = RunData {
        participants: participants.clone(),
        viewers: viewers.clone(),
        seconds,
        samples,
        window: (first, last),
        rss_before,
        sent_packets: ctx.totals.sent_packets.load(Ordering::Relaxed),
        probe_samples,
        classes,
        class_samples,
        urls: urls.clone(),
        // The start scrape counts only when it was taken at the window's first sample.
        scrape_start: scrape_start.filter(|(i, _)| *i == first).map(|(_, s)| s),
        scrape_end,
        churn: (cli.scenario == Scenario::Churn || cli.churn_per_minute > 0.0)
            .then(|| churn.counts()),
        churn_warmup: cli.churn_stay * 1.5,
        churn_end: match churn.first_slot_done_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(t_of(us)),
        },
        latency_at_window,
    };
    let mut summary = report::summarize(&data);
    let _ = stop_tx.send(true);
    println!("{}", report::table(&cli.label(), &summary));
    if let Some(path) = &cli.plot {
        report::plot(path, &cli.label(), &data.seconds)?;
        eprintln!("plot written to {}", path.display());
    }
    // Let participants leave (bounded).
    let collected = handles.pop().expect("collector");
    if let Ok(Ok(hs)) = tokio::time::timeout(Duration::from_secs(2), collected).await {
        let _ =
            tokio::time::timeout(Duration::from_secs(3), futures_util::future::join_all(hs)).await;
    }
    if let Some(starter) = viewer_starter {
        // The viewers DELETE their resources on the stop signal (bounded).
        if let Ok(Ok(hs)) = tokio::time::timeout(Duration::from_secs(2), starter).await {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(hs))
                    .await;
        }
        let deleted = viewers
            .iter()
            .filter(|v| v.deleted.load(Ordering::Relaxed))
            .count();
        println!(
            "whep: {deleted} of {} viewer resources deleted",
            viewers.len()
        );
        summary.whep_viewers_deleted = Some(deleted);
    }
    if cli.record {
        let bytes =
            recording::stop(urls[0].clone(), admin_token(&cli)?, record_rooms.clone()).await?;
        println!("recording: {bytes} bytes in the recordings' files");
        summary.recording_bytes = Some(bytes);
    }
    if data.churn.is_some() {
        // The churners still in a room leave on the stop signal; give them a moment.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while churn.active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "churn: started={} joined={} failed={} still_active={}",
            churn.started.load(Ordering::Relaxed),
            churn.joined.load(Ordering::Relaxed),
            churn.failed.load(Ordering::Relaxed),
            churn.active.load(Ordering::Relaxed),
        );
        if cli.target == Target::Huddle {
            // Every gauge should be back to 0 now that everyone has left.
            let gauges = gauges_after_leaving(&urls).await;
            println!(
                "gauges after everyone left: {}",
                gauges
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            if let Some(c) = summary.churn.as_mut() {
                c.gauges_after = Some(gauges);
            }
        }
    }
    if let Some(path) = &cli.report {
        report::write_json(path, &cli, &summary, &data)?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

/// Starts the WHEP viewers at `rate` per second, each through the node its room's first
/// participant landed on (the room's node in a cluster), and returns their tasks.
async fn start_viewers(
    ctx: Arc<Ctx>,
    target: Arc<HuddleTarget>,
    http: reqwest::Client,
    viewers: Vec<Arc<Viewer>>,
    participants: Vec<Arc<Participant>>,
    rate: f64,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let mut handles = Vec::new();
    for (i, v) in viewers.into_iter().enumerate() {
        tokio::time::sleep_until(start + interval * i as u32).await;
        if *stop.borrow() {
            break;
        }
        let url = participants
            .iter()
            .filter(|p| p.room == v.room)
            .find_map(|p| p.node_url.lock().expect("node lock").clone())
            .unwrap_or_else(|| target.url(i).to_string());
        let (ctx, target, http, stop) = (ctx.clone(), target.clone(), http.clone(), stop.clone());
        handles.push(tokio::spawn(async move {
            if let Err(e) = huddle::run_viewer(ctx, target, http, url, v.clone(), stop).await {
                tracing::warn!(viewer = %v.name, error = %format!("{e:#}"), "WHEP viewer failed");
                v.fail(&e);
            }
        }));
    }
    handles
}

/// The Huddle gauges of people and media, summed over the nodes (--url), once they are all 0 or
/// after 10 s.
async fn gauges_after_leaving(urls: &[String]) -> std::collections::BTreeMap<String, f64> {
    const GAUGES: [&str; 6] = [
        "huddle_participants",
        "huddle_media_connections",
        "huddle_websocket_connections",
        "huddle_rooms",
        "huddle_subscriptions",
        "huddle_tracks_published",
    ];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut g: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
        for u in urls {
            let Ok(res) = http.get(format!("{u}/metrics")).send().await else {
                continue;
            };
            let Ok(text) = res.text().await else { continue };
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let name = series.split('{').next().unwrap_or_default();
                if GAUGES.contains(&name) {
                    *g.entry(name.to_string()).or_default() += value.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
        if g.values().all(|v| *v == 0.0) || tokio::time::Instant::now() > deadline {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Counts of the churning participants.
#[derive(Default)]
pub struct Churn {
    started: std::sync::atomic::AtomicU64,
    joined: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    active: std::sync::atomic::AtomicU64,
    /// Joiners that shared a screen.
    screens: std::sync::atomic::AtomicU64,
    /// The most joiners in the room at once.
    peak_active: std::sync::atomic::AtomicU64,
    /// `error` messages the joiners got.
    server_errors: std::sync::atomic::AtomicU64,
    /// Negotiations of the joiners that failed.
    negotiation_failures: std::sync::atomic::AtomicU64,
    /// The largest SDP a joiner received.
    max_sdp_bytes: std::sync::atomic::AtomicU64,
    /// Churn scenario: slots that have stopped starting joiners.
    slots_done: std::sync::atomic::AtomicU64,
    /// Churn scenario: when the first slot stopped (µs on the tester clock; 0: not yet): from
    /// then on the room drains instead of churning.
    first_slot_done_us: std::sync::atomic::AtomicU64,
}

impl Churn {
    /// Adds a joiner's figures once it has left.
    fn add(&self, p: &Participant) {
        self.server_errors
            .fetch_add(p.server_errors.load(Ordering::Relaxed), Ordering::Relaxed);
        self.negotiation_failures.fetch_add(
            p.negotiation_failures.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.max_sdp_bytes
            .fetch_max(p.max_sdp_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The counts for the summary.
    pub fn counts(&self) -> report::ChurnCounts {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        report::ChurnCounts {
            started: l(&self.started),
            joined: l(&self.joined),
            failed: l(&self.failed),
            screens: l(&self.screens),
            peak_concurrent: l(&self.peak_active),
            server_errors: l(&self.server_errors),
            negotiation_failures: l(&self.negotiation_failures),
            max_sdp_bytes: l(&self.max_sdp_bytes),
        }
    }
}

/// One churn slot of the churn scenario: its settings.
struct ChurnSlot {
    ctx: Arc<Ctx>,
    target: Arc<HuddleTarget>,
    http: reqwest::Client,
    room: String,
    role: Role,
    /// When its first joiner starts (from the slot's spawn).
    first: Duration,
    /// No joiner starts after this (from the slot's spawn).
    last_start: Duration,
    mean_stay: f64,
    total: usize,
    screen_every: usize,
    churn: Arc<Churn>,
}

/// Runs joiners one after the other in one slot: each joins, stays 0.5 to 1.5 times the mean,
/// leaves; the next one starts right after. Stops at `total` joiners over all slots, at
/// `last_start`, or on `stop`.
async fn churn_slot(s: ChurnSlot, stop: watch::Receiver<bool>) {
    let start = tokio::time::Instant::now();
    tokio::time::sleep_until(start + s.first).await;
    loop {
        if *stop.borrow() || start.elapsed() > s.last_start {
            break;
        }
        let n = s.churn.started.fetch_add(1, Ordering::Relaxed) as usize;
        if n >= s.total {
            s.churn.started.fetch_sub(1, Ordering::Relaxed);
            break;
        }
        let screen = s.screen_every > 0 && n % s.screen_every == s.screen_every - 1;
        if screen {
            s.churn.screens.fetch_add(1, Ordering::Relaxed);
        }
        let p = Arc::new(Participant::new(
            format!("churn-{n}"),
            s.room.clone(),
            Role {
                screen,
                ..s.role.clone()
            },
        ));
        let active = s.churn.active.fetch_add(1, Ordering::Relaxed) + 1;
        s.churn.peak_active.fetch_max(active, Ordering::Relaxed);
        let stay = Duration::from_secs_f64(s.mean_stay * (0.5 + rand::random::<f64>()));
        let (leave_tx, leave_rx) = watch::channel(false);
        let mut outer = stop.clone();
        let timer = tokio::spawn(async move {
            let _ = tokio::time::timeout(stay, outer.wait_for(|s| *s)).await;
            let _ = leave_tx.send(true);
        });
        let result = huddle::run(
            s.ctx.clone(),
            s.target.clone(),
            s.http.clone(),
            p.clone(),
            n,
            leave_rx,
        )
        .await;
        timer.abort();
        let connected = p.connected_us.load(Ordering::Relaxed) != 0;
        match result {
            Ok(()) if connected => s.churn.joined.fetch_add(1, Ordering::Relaxed),
            Ok(()) => s.churn.failed.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(participant = %p.name, error = %format!("{e:#}"), "churning participant failed");
                s.churn.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        s.churn.add(&p);
        s.churn.active.fetch_sub(1, Ordering::Relaxed);
    }
    Participant::mark(&s.churn.first_slot_done_us);
    s.churn.slots_done.fetch_add(1, Ordering::Relaxed);
}

/// Starts a participant every `every` until `until`, each staying `stay` and then leaving.
#[allow(clippy::too_many_arguments)]
async fn churn_loop(
    ctx: Arc<Ctx>,
    target: Arc<HuddleTarget>,
    http: reqwest::Client,
    rooms: Vec<String>,
    role: Role,
    every: Duration,
    stay: Duration,
    until: Duration,
    churn: Arc<Churn>,
    stop: watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now();
    let mut n = 0usize;
    loop {
        tokio::time::sleep_until(start + every * (n as u32 + 1)).await;
        if *stop.borrow() || start.elapsed() > until || rooms.is_empty() {
            return;
        }
        let p = Arc::new(Participant::new(
            format!("churn-{n}"),
            rooms[n % rooms.len()].clone(),
            role.clone(),
        ));
        n += 1;
        churn.started.fetch_add(1, Ordering::Relaxed);
        churn.active.fetch_add(1, Ordering::Relaxed);
        let (leave_tx, leave_rx) = watch::channel(false);
        let mut outer = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(stay, outer.wait_for(|s| *s)).await;
            let _ = leave_tx.send(true);
        });
        let (ctx, target, http, churn) = (ctx.clone(), target.clone(), http.clone(), churn.clone());
        tokio::spawn(async move {
            let result = huddle::run(ctx, target, http, p.clone(), n, leave_rx).await;
            let connected = p.connected_us.load(Ordering::Relaxed) != 0;
            match result {
                Ok(()) if connected => churn.joined.fetch_add(1, Ordering::Relaxed),
                Ok(()) => churn.failed.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(participant = %p.name, error = %format!("{e:#}"), "churning participant failed");
                    churn.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            churn.add(&p);
            churn.active.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_metrics_are_summed_over_kinds_with_the_node_label() {
        let text = "# HELP huddle_rooms Open rooms.\n\
            huddle_node_info{node=\"n2\",region=\"\"} 1\n\
            huddle_rooms 2\n\
            huddle_participants 16\n\
            huddle_rtp_packets_total{direction=\"out\",kind=\"audio\"} 1200\n\
            huddle_rtp_packets_total{direction=\"out\",kind=\"video\"} 34\n\
            huddle_rtp_packets_total{direction=\"in\",kind=\"audio\"} 200\n\
            huddle_cluster_redirects_total 11\n";
        let n = parse_node_metrics(text);
        assert!(n.ok);
        assert_eq!(n.node.as_deref(), Some("n2"));
        assert_eq!((n.rooms, n.participants), (2.0, 16.0));
        assert_eq!((n.packets_out, n.packets_in), (1234.0, 200.0));
        assert_eq!(n.redirects, 11.0);
    }

    #[test]
    fn the_subscriber_mix_cycles_over_each_rooms_subscribers() {
        let cli = Cli::parse_from([
            "huddle-loadtest",
            "--scenario",
            "livestream",
            "--subscribers",
            "5",
            "--subscriber-mix",
            "small,large,320x180",
            "--url",
            "http://a:1,http://b:2",
            "--url",
            "http://c:3",
        ]);
        assert_eq!(cli.url.len(), 3);
        let tiles: Vec<Option<(u32, u32)>> = cli
            .room_roles()
            .iter()
            .map(|r| r.tile.as_ref().map(|t| (t.width, t.height)))
            .collect();
        assert_eq!(
            tiles,
            vec![
                None, // the publisher
                Some((160, 90)),
                Some((1280, 720)),
                Some((320, 180)),
                Some((160, 90)),
                Some((1280, 720)),
            ]
        );
        assert_eq!(cli.tile_classes(), vec!["small", "large", "320x180"]);
        assert!("huge".parse::<peer::Tile>().is_err());
    }

    #[test]
    fn meetings_show_the_speaker_large_the_next_ones_medium_and_the_rest_small() {
        let cli = Cli::parse_from([
            "huddle-loadtest",
            "--scenario",
            "meeting",
            "--participants",
            "25",
        ]);
        let roles = cli.room_roles();
        assert_eq!(roles.len(), 25);
        let class = |viewer: usize, publisher: usize| {
            roles[viewer]
                .tile_for(Some(&format!("lt-0-{publisher}")), false)
                .map(|t| t.class)
                .unwrap()
        };
        for viewer in 0..25 {
            let classes: Vec<String> = (0..25)
                .filter(|p| *p != viewer)
                .map(|p| class(viewer, p))
                .collect();
            let count = |c: &str| classes.iter().filter(|x| *x == c).count();
            assert_eq!(
                (count("large"), count("medium"), count("small")),
                (1, 4, 19),
                "viewer {viewer}: {classes:?}"
            );
        }
        // Everyone shows participant 0 large, and participant 0 shows participant 1 large.
        assert_eq!(class(7, 0), "large");
        assert_eq!(class(0, 1), "large");
        assert_eq!(class(3, 1), "medium");
        assert_eq!(class(3, 5), "medium");
        assert_eq!(class(3, 6), "small");
        // A churning participant's video is small, a shared screen large.
        assert_eq!(
            roles[3].tile_for(Some("churn-7"), false).unwrap().class,
            "small"
        );
        assert_eq!(
            roles[3].tile_for(Some("churn-7"), true).unwrap().class,
            "large"
        );
        assert_eq!(cli.tile_classes(), vec!["large", "medium", "small"]);

        // --layout none and --subscriber-mix turn the grid off.
        let none = Cli::parse_from([
            "huddle-loadtest",
            "--scenario",
            "meeting",
            "--layout",
            "none",
        ]);
        assert!(none.room_roles().iter().all(|r| !r.sizes_tiles()));
        let mix = Cli::parse_from([
            "huddle-loadtest",
            "--scenario",
            "meeting",
            "--subscriber-mix",
            "medium",
        ]);
        assert!(mix
            .room_roles()
            .iter()
            .all(|r| r.grid.is_none() && r.tile.as_ref().unwrap().class == "medium"));
    }

    #[test]
    fn the_churn_scenario_has_eight_steady_participants_by_default() {
        let cli = Cli::parse_from(["huddle-loadtest", "--scenario", "churn"]);
        let roles = cli.room_roles();
        assert_eq!(roles.len(), 8);
        assert!(roles
            .iter()
            .all(|r| r.audio && r.video && r.subscribe && !r.screen));
        assert_eq!(
            (
                cli.churn_total,
                cli.churn_concurrent,
                cli.churn_screen_every
            ),
            (40, 4, 4)
        );
    }
}
