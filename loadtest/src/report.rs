//! The end of a run: the summary (table and JSON) and the plot.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::stats::{new_histogram, Kind, Second};
use crate::{Cli, RunData};

/// Percentiles of a set of values.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Dist {
    /// Values counted.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Dist {
    fn of_ms(mut v: Vec<f64>) -> Option<Dist> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
        Some(Dist {
            count: v.len() as u64,
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            max: v[v.len() - 1],
        })
    }

    fn of_hist_us(h: &Histogram<u64>) -> Option<Dist> {
        (!h.is_empty()).then(|| Dist {
            count: h.len(),
            p50: h.value_at_quantile(0.5) as f64 / 1000.0,
            p95: h.value_at_quantile(0.95) as f64 / 1000.0,
            p99: h.value_at_quantile(0.99) as f64 / 1000.0,
            max: h.max() as f64 / 1000.0,
        })
    }

    fn show(d: &Option<Dist>) -> String {
        match d {
            Some(d) => format!(
                "p50 {:.1} / p95 {:.1} / p99 {:.1} / max {:.1} ms (n={})",
                d.p50, d.p95, d.p99, d.max, d.count
            ),
            None => "-".into(),
        }
    }
}

/// The server's cost in the measurement window.
#[derive(Clone, Debug, Serialize)]
pub struct ServerCost {
    /// Average CPU use, cores.
    pub cores: f64,
    /// CPU time per packet the participants and the WHEP viewers received (= packets the SFU
    /// forwarded), µs.
    pub cpu_us_per_forwarded_packet: f64,
    /// Forwarded packets per second one core would sustain at this cost (1e6 / the above).
    pub projected_packets_per_sec_per_core: f64,
    /// Resident memory at the end of the window, MiB.
    pub rss_mib: f64,
    /// Growth of resident memory since before the first join, per participant, KiB.
    pub rss_per_participant_kib: Option<f64>,
}

/// The tester's own cost in the window.
#[derive(Clone, Debug, Serialize)]
pub struct TesterCost {
    /// Average CPU use, cores.
    pub cores: f64,
    /// Cores used per 10,000 received packets/s (participants and WHEP viewers).
    pub cores_per_10k_pps: f64,
}

/// What the subscribers of one tile class (--subscriber-mix) received in the window.
#[derive(Clone, Debug, Serialize)]
pub struct TileClassSummary {
    /// `small`, `medium`, `large` or `WxH`.
    pub class: String,
    /// The tile size reported, device pixels.
    pub width: u32,
    /// The tile size reported, device pixels.
    pub height: u32,
    /// Subscribers of this class.
    pub subscribers: usize,
    /// Video tracks they received.
    pub video_tracks: usize,
    /// Video payload bitrate per received video track, kbit/s.
    pub video_kbps_per_track: f64,
    /// Video packets per second per received video track.
    pub video_packets_per_sec_per_track: f64,
}

/// One node (--url) in the window, from its /metrics and from where participants landed.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    /// The URL given.
    pub url: String,
    /// Its `huddle_node_info` node label (cluster mode).
    pub node: Option<String>,
    /// Open rooms at the end of the window (`huddle_rooms`).
    pub rooms: f64,
    /// Participants at the end of the window (`huddle_participants`).
    pub participants: f64,
    /// Participants of this run whose join ended on this node (after any redirect).
    pub landed: usize,
    /// RTP packets it sent per second in the window (`huddle_rtp_packets_total{direction="out"}`).
    pub forwarded_packets_per_sec: Option<f64>,
    /// RTP packets it received per second in the window.
    pub received_packets_per_sec: Option<f64>,
    /// RTP packets it sent since it started.
    pub forwarded_packets_total: f64,
    /// Joins it redirected since it started (`huddle_cluster_redirects_total`).
    pub redirects_total: f64,
    /// Its CPU use in the window, cores (with one --server-pid per --url, or from its /metrics).
    pub cores: Option<f64>,
    /// Its CPU time per packet it forwarded in the window, µs.
    pub cpu_us_per_forwarded_packet: Option<f64>,
}

/// The participants that joined and left during the run (churn scenario, --churn-per-minute).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnCounts {
    /// Joiners started.
    pub started: u64,
    /// Joiners whose connection came up.
    pub joined: u64,
    /// Joiners that failed (or never connected).
    pub failed: u64,
    /// Joiners that shared a screen.
    pub screens: u64,
    /// The most joiners in the room at once.
    pub peak_concurrent: u64,
    /// `error` messages the joiners got.
    pub server_errors: u64,
    /// Failed negotiations of the joiners.
    pub negotiation_failures: u64,
    /// The largest SDP a joiner received, bytes.
    pub max_sdp_bytes: u64,
}

/// The server over one part of the measurement window.
#[derive(Clone, Debug, Serialize)]
pub struct Phase {
    /// Seconds since the start.
    pub from: f64,
    /// Seconds since the start.
    pub to: f64,
    /// Packets the participants (steady and joiners) received per second.
    pub packets_per_sec: f64,
    /// Server CPU time per forwarded packet, µs.
    pub cpu_us_per_forwarded_packet: Option<f64>,
    /// Server CPU, cores.
    pub cores: Option<f64>,
    /// Server resident memory at the phase's end, MiB.
    pub rss_mib: Option<f64>,
}

/// The churn run: the joiners, and the server's first and last minute of the window (or its
/// halves, when it is shorter than two minutes).
#[derive(Clone, Debug, Serialize)]
pub struct ChurnSummary {
    /// The joiners' counts.
    pub joiners: ChurnCounts,
    /// The first minute of the window.
    pub first: Option<Phase>,
    /// The last minute of the window.
    pub last: Option<Phase>,
    /// Last against first: CPU per forwarded packet, % change.
    pub cpu_change_pct: Option<f64>,
    /// Last against first: resident memory, % change.
    pub rss_change_pct: Option<f64>,
    /// The server's gauges once everyone had left (Huddle's /metrics; filled after the run).
    pub gauges_after: Option<BTreeMap<String, f64>>,
}

/// Everything the summary shows.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Participants planned.
    pub participants: usize,
    /// Participants whose connection came up or who received media.
    pub joined: usize,
    /// Participants that failed.
    pub failed: usize,
    /// Up to three distinct failure messages.
    pub errors: Vec<String>,
    /// `error` messages the server sent to participants (each one a protocol failure).
    pub server_errors: u64,
    /// The same by error code (`message_too_large`, `invalid_sdp`, …).
    pub server_error_codes: BTreeMap<String, u64>,
    /// The largest SDP (offer or answer) the server sent any measured participant, bytes.
    pub max_sdp_bytes: u64,
    /// Offers the server sent the measured participants.
    pub offers: u64,
    /// Negotiations that failed: a server offer a participant could not apply, or an answer
    /// the server refused.
    pub negotiation_failures: u64,
    /// The most remote tracks a measured participant was told of at once.
    pub peak_remote_tracks: u64,
    /// Shared screens the measured participants were sent (`media_slots` entries of source
    /// `screen`, grid layouts only), in all.
    pub screens_received: u64,
    /// Participants that neither joined nor failed, by the join step they were stuck at.
    pub stuck: Vec<(String, usize)>,
    /// Measurement window, seconds since the start.
    pub window: (f64, f64),
    /// Packets received per second in the window, all participants.
    pub packets_per_sec: f64,
    /// Payload throughput in the window, Mbit/s.
    pub mbit_per_sec: f64,
    /// Packets written by all publishers over the run.
    pub sent_packets: u64,
    /// Packets received over the run.
    pub received_packets: u64,
    /// Lost packets / expected packets over every received track, from the RTP sequence numbers
    /// the subscriber sees (losses between the SFU and the subscriber), %.
    pub loss_pct: f64,
    /// End-to-end loss from the publishers' stamps (audio packets and video frames that were sent
    /// and never arrived, wherever they were lost), %.
    pub e2e_loss_pct: f64,
    /// Tracks with any loss.
    pub tracks_with_loss: usize,
    /// Received tracks.
    pub tracks: usize,
    /// Mean RFC 3550 jitter over tracks, ms.
    pub jitter_ms_mean: f64,
    /// Largest track jitter, ms.
    pub jitter_ms_max: f64,
    /// End-to-end latency of audio packets (sender to receiver, over the SFU).
    pub latency_audio: Option<Dist>,
    /// End-to-end latency of video frames (last packet).
    pub latency_video: Option<Dist>,
    /// Audio latency within the measurement window only (the window CPU and packets/s are
    /// measured on: from `--warmup` after the last join to the end). `latency_audio` is the
    /// whole run, the join ramp included.
    pub latency_audio_window: Option<Dist>,
    /// Video latency within the measurement window only.
    pub latency_video_window: Option<Dist>,
    /// Start of join (token request) to first remote media, ms, subscribers.
    pub join_ms: Option<Dist>,
    /// Start of join to peer connection `connected`, ms.
    pub connect_ms: Option<Dist>,
    /// Start of join to first video key frame, ms.
    pub first_keyframe_ms: Option<Dist>,
    /// Participants whose join was redirected to another node (cluster mode).
    pub redirected: usize,
    /// Signaling join (WebSocket opened to `joined`, redirects included), ms, joins answered by
    /// the node first reached.
    pub signal_join_direct_ms: Option<Dist>,
    /// The same for joins that followed a `redirect`.
    pub signal_join_redirected_ms: Option<Dist>,
    /// Start of join to first remote media, subscribers joined directly, ms.
    pub join_direct_ms: Option<Dist>,
    /// Start of join to first remote media, subscribers joined through a redirect, ms.
    pub join_redirected_ms: Option<Dist>,
    /// Received video per tile class (--subscriber-mix).
    pub tile_classes: Vec<TileClassSummary>,
    /// Per node (--url).
    pub nodes: Vec<NodeSummary>,
    /// Server cost, when its PID was given.
    pub server: Option<ServerCost>,
    /// The churn (churn scenario, or --churn-per-minute).
    pub churn: Option<ChurnSummary>,
    /// WHEP viewers planned (--whep-viewers per room).
    pub whep_viewers: usize,
    /// Viewers whose connection came up.
    pub whep_viewers_connected: usize,
    /// Viewers that failed before their connection came up.
    pub whep_viewers_failed: usize,
    /// Up to three distinct failure messages of viewers.
    pub whep_errors: Vec<String>,
    /// RTP packets the viewers received over the run.
    pub whep_packets_received: u64,
    /// The fewest packets a connected viewer received over the run (0: one got nothing).
    pub whep_min_packets_per_viewer: Option<u64>,
    /// Packets the viewers received per second in the window, all viewers.
    pub whep_packets_per_sec: f64,
    /// Video payload bitrate per connected viewer in the window, kbit/s.
    pub whep_video_kbps_per_viewer: f64,
    /// Start (token request) to connected, ms, viewers.
    pub whep_connect_ms: Option<Dist>,
    /// Viewers whose resource was deleted at the end (filled after the run).
    pub whep_viewers_deleted: Option<usize>,
    /// Bytes in the recordings' files (--record; filled after the run).
    pub recording_bytes: Option<u64>,
    /// Tester cost.
    pub tester: Option<TesterCost>,
}

/// A latency histogram, µs.
pub type LatencyHist = Histogram<u64>;

/// Every received track's latency added up so far: (audio, video).
pub fn latency_totals(
    ps: &[std::sync::Arc<crate::peer::Participant>],
) -> (LatencyHist, LatencyHist) {
    let mut audio = new_histogram();
    let mut video = new_histogram();
    for p in ps {
        for t in p.tracks.lock().expect("tracks lock").iter() {
            let t = t.lock().expect("track lock");
            let _ = match t.kind {
                Kind::Audio => audio.add(&t.latency),
                Kind::Video => video.add(&t.latency),
            };
        }
    }
    (audio, video)
}

/// Computes the summary of a run.
pub fn summarize(d: &RunData) -> Summary {
    let ps = &d.participants;
    let mut errors: Vec<String> = Vec::new();
    let mut failed = 0;
    for p in ps {
        if let Some(e) = p.error.lock().expect("error lock").clone() {
            failed += 1;
            if errors.len() < 3 && !errors.contains(&e) {
                errors.push(e);
            }
        }
    }
    let is_joined = |p: &crate::peer::Participant| {
        p.connected_us.load(Ordering::Relaxed) != 0 || p.first_media_us.load(Ordering::Relaxed) != 0
    };
    let joined = ps.iter().filter(|p| is_joined(p)).count();
    let mut stuck: Vec<(String, usize)> = Vec::new();
    for p in ps {
        if is_joined(p) || p.error.lock().expect("error lock").is_some() {
            continue;
        }
        let stage = p.stage.lock().expect("stage lock").to_string();
        match stuck.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, n)) => *n += 1,
            None => stuck.push((stage, 1)),
        }
    }
    let (mut lost, mut expected, mut tracks, mut with_loss) = (0u64, 0u64, 0usize, 0usize);
    let (mut e2e_lost, mut e2e_expected) = (0u64, 0u64);
    let mut jitters = Vec::new();
    let (audio, video) = latency_totals(ps);
    // What the window saw: the totals less those when it opened (None if a track went away
    // in between and the totals shrank).
    let in_window = |now: &LatencyHist, then: &LatencyHist| {
        let mut h = now.clone();
        h.subtract(then).ok().and_then(|_| Dist::of_hist_us(&h))
    };
    let (latency_audio_window, latency_video_window) = match &d.latency_at_window {
        Some((a, v)) => (in_window(&audio, a), in_window(&video, v)),
        None => (None, None),
    };
    let mut received = 0;
    for p in ps {
        for t in p.tracks.lock().expect("tracks lock").iter() {
            let t = t.lock().expect("track lock");
            tracks += 1;
            received += t.packets;
            lost += t.lost();
            expected += t.expected();
            e2e_lost += t.stamps_lost();
            e2e_expected += t.stamps_expected();
            if t.lost() > 0 || t.stamps_lost() > 0 {
                with_loss += 1;
            }
            jitters.push(t.jitter_ms());
        }
    }
    let ms = |f: &dyn Fn(&crate::peer::Participant) -> Option<f64>| {
        Dist::of_ms(ps.iter().filter_map(|p| f(p)).collect())
    };
    let join_ms = ms(&|p| {
        p.role
            .subscribe
            .then(|| p.since_start_ms(&p.first_media_us))
            .flatten()
    });
    let connect_ms = ms(&|p| p.since_start_ms(&p.connected_us));
    let redirected = |p: &crate::peer::Participant| p.redirects.load(Ordering::Relaxed) > 0;
    let signal_ms = |p: &crate::peer::Participant| {
        crate::peer::Participant::between_ms(&p.signal_start_us, &p.joined_us)
    };
    let signal_join_direct_ms = ms(&|p| (!redirected(p)).then(|| signal_ms(p)).flatten());
    let signal_join_redirected_ms = ms(&|p| redirected(p).then(|| signal_ms(p)).flatten());
    let first_media = |p: &crate::peer::Participant| {
        p.role
            .subscribe
            .then(|| p.since_start_ms(&p.first_media_us))
            .flatten()
    };
    let join_direct_ms = ms(&|p| (!redirected(p)).then(|| first_media(p)).flatten());
    let join_redirected_ms = ms(&|p| redirected(p).then(|| first_media(p)).flatten());
    let first_keyframe_ms = ms(&|p| p.since_start_ms(&p.first_keyframe_us));

    let (a, b) = (d.samples[d.window.0], d.samples[d.window.1]);
    let dt = (b.t - a.t).max(1e-3);
    let tile_classes = d
        .classes
        .iter()
        .enumerate()
        .map(|(i, class)| {
            let in_class = |p: &crate::peer::Participant| {
                p.tracks
                    .lock()
                    .expect("tracks lock")
                    .iter()
                    .filter(|t| {
                        let t = t.lock().expect("track lock");
                        t.kind == Kind::Video && track_class(p, &t).as_deref() == Some(class)
                    })
                    .count()
            };
            let members: Vec<_> = ps.iter().filter(|p| in_class(p) > 0).collect();
            let tile: Option<crate::peer::Tile> = class.parse().ok();
            let video_tracks: usize = members.iter().map(|p| in_class(p)).sum();
            let (ca, cb) = (
                d.class_samples[d.window.0][i],
                d.class_samples[d.window.1][i],
            );
            let n = video_tracks.max(1) as f64;
            TileClassSummary {
                class: class.clone(),
                width: tile.as_ref().map_or(0, |t| t.width),
                height: tile.as_ref().map_or(0, |t| t.height),
                subscribers: members.len(),
                video_tracks,
                video_kbps_per_track: (cb.0 - ca.0) as f64 * 8.0 / dt / 1000.0 / n,
                video_packets_per_sec_per_track: (cb.1 - ca.1) as f64 / dt / n,
            }
        })
        .collect();
    let nodes = d
        .urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let end = d.scrape_end.as_ref().and_then(|v| v.get(i)).cloned();
            let start = d.scrape_start.as_ref().and_then(|v| v.get(i)).cloned();
            let end = end.unwrap_or_default();
            // The scrapes are taken right after the window's samples: close enough to its span.
            let rate = |f: fn(&crate::NodeScrape) -> f64| {
                start
                    .as_ref()
                    .filter(|s| s.ok && end.ok)
                    .map(|s| (f(&end) - f(s)).max(0.0) / dt)
            };
            let forwarded = rate(|n| n.packets_out);
            let cores = if d.probe_samples[0].len() == d.urls.len() {
                match (
                    d.probe_samples[d.window.0][i],
                    d.probe_samples[d.window.1][i],
                ) {
                    (Some(sa), Some(sb)) => Some((sb.cpu_seconds - sa.cpu_seconds) / dt),
                    _ => None,
                }
            } else {
                None
            };
            let key = |u: &str| {
                u.trim_end_matches('/')
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .to_string()
            };
            let landed = ps
                .iter()
                .filter(|p| {
                    p.node_url
                        .lock()
                        .expect("node lock")
                        .as_deref()
                        .is_some_and(|u| key(u) == key(url))
                })
                .count();
            NodeSummary {
                url: url.clone(),
                node: end.node.clone(),
                rooms: end.rooms,
                participants: end.participants,
                landed,
                forwarded_packets_per_sec: forwarded,
                received_packets_per_sec: rate(|n| n.packets_in),
                forwarded_packets_total: end.packets_out,
                redirects_total: end.redirects,
                cores,
                cpu_us_per_forwarded_packet: match (cores, forwarded) {
                    (Some(c), Some(f)) if f > 0.0 => Some(c * 1e6 / f),
                    _ => None,
                },
            }
        })
        .collect();
    let pps = (b.packets - a.packets) as f64 / dt;
    // What the server forwarded and the tester received: the participants' and the viewers'.
    let all_packets = (b.packets + b.whep_packets) - (a.packets + a.whep_packets);
    let server = match (a.server, b.server) {
        (Some(sa), Some(sb)) => {
            let cpu = sb.cpu_seconds - sa.cpu_seconds;
            let pkts = all_packets.max(1) as f64;
            let us = cpu * 1e6 / pkts;
            Some(ServerCost {
                cores: cpu / dt,
                cpu_us_per_forwarded_packet: us,
                projected_packets_per_sec_per_core: if us > 0.0 { 1e6 / us } else { 0.0 },
                rss_mib: sb.rss_bytes as f64 / 1048576.0,
                rss_per_participant_kib: d
                    .rss_before
                    .map(|r0| (sb.rss_bytes as f64 - r0 as f64) / 1024.0 / ps.len().max(1) as f64),
            })
        }
        _ => None,
    };
    let mut server_error_codes: BTreeMap<String, u64> = BTreeMap::new();
    for p in ps {
        for (code, n) in p.error_codes.lock().expect("codes lock").iter() {
            *server_error_codes.entry(code.clone()).or_default() += n;
        }
    }
    let sum = |f: fn(&crate::peer::Participant) -> u64| ps.iter().map(|p| f(p)).sum::<u64>();
    let max = |f: fn(&crate::peer::Participant) -> u64| ps.iter().map(|p| f(p)).max().unwrap_or(0);
    let churn = d.churn.clone().map(|joiners| {
        // The first and last minute of the window after the churn's own warm-up (every slot
        // has turned over once), or the halves of that when it is under two minutes; without
        // 20 s after the warm-up, from the window's start.
        // It ends when the churn stopped (the room drains after that), if that leaves 20 s.
        let end = d
            .churn_end
            .filter(|e| *e < b.t && *e - a.t >= 20.0)
            .unwrap_or(b.t);
        let start = if end - (a.t + d.churn_warmup) >= 20.0 {
            a.t + d.churn_warmup
        } else {
            a.t
        };
        let span = (end - start).max(0.0);
        let len = span.min(120.0) / 2.0;
        let at = |t: f64| {
            d.samples[d.window.0..=d.window.1]
                .iter()
                .position(|s| s.t >= t - 0.5)
                .map(|i| i + d.window.0)
                .unwrap_or(d.window.1)
        };
        let phase = |i: usize, j: usize| {
            let (x, y) = (d.samples[i], d.samples[j]);
            let dt = y.t - x.t;
            (dt > 0.0).then(|| {
                let pkts = y.packets.saturating_sub(x.packets);
                let cpu = match (x.server, y.server) {
                    (Some(sx), Some(sy)) => Some(sy.cpu_seconds - sx.cpu_seconds),
                    _ => None,
                };
                Phase {
                    from: x.t,
                    to: y.t,
                    packets_per_sec: pkts as f64 / dt,
                    cpu_us_per_forwarded_packet: cpu
                        .filter(|_| pkts > 0)
                        .map(|c| c * 1e6 / pkts as f64),
                    cores: cpu.map(|c| c / dt),
                    rss_mib: y.server.map(|s| s.rss_bytes as f64 / 1048576.0),
                }
            })
        };
        let first = phase(at(start), at(start + len));
        let last = phase(at(end - len), at(end));
        let change = |f: fn(&Phase) -> Option<f64>| match (&first, &last) {
            (Some(x), Some(y)) => match (f(x), f(y)) {
                (Some(u), Some(v)) if u > 0.0 => Some((v - u) * 100.0 / u),
                _ => None,
            },
            _ => None,
        };
        ChurnSummary {
            joiners,
            cpu_change_pct: change(|p| p.cpu_us_per_forwarded_packet),
            rss_change_pct: change(|p| p.rss_mib),
            first,
            last,
            gauges_after: None,
        }
    });
    let tester = match (a.tester, b.tester) {
        (Some(ta), Some(tb)) => {
            let cores = (tb.cpu_seconds - ta.cpu_seconds) / dt;
            let pps = all_packets as f64 / dt;
            Some(TesterCost {
                cores,
                cores_per_10k_pps: if pps > 0.0 {
                    cores / (pps / 10_000.0)
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    let vs = &d.viewers;
    let viewer_connected = |v: &crate::peer::Viewer| v.connected_us.load(Ordering::Relaxed) != 0;
    let mut whep_errors: Vec<String> = Vec::new();
    let mut whep_viewers_failed = 0;
    for v in vs.iter().filter(|v| !viewer_connected(v)) {
        if let Some(e) = v.error.lock().expect("error lock").clone() {
            whep_viewers_failed += 1;
            if whep_errors.len() < 3 && !whep_errors.contains(&e) {
                whep_errors.push(e);
            }
        }
    }
    let whep_viewers_connected = vs.iter().filter(|v| viewer_connected(v)).count();
    let whep_connect_ms = Dist::of_ms(
        vs.iter()
            .filter_map(|v| crate::peer::Participant::between_ms(&v.started_us, &v.connected_us))
            .collect(),
    );
    Summary {
        whep_viewers: vs.len(),
        whep_viewers_connected,
        whep_viewers_failed,
        whep_errors,
        whep_packets_received: vs.iter().map(|v| v.packets.load(Ordering::Relaxed)).sum(),
        whep_min_packets_per_viewer: vs
            .iter()
            .filter(|v| viewer_connected(v))
            .map(|v| v.packets.load(Ordering::Relaxed))
            .min(),
        whep_packets_per_sec: (b.whep_packets - a.whep_packets) as f64 / dt,
        whep_video_kbps_per_viewer: (b.whep_video_bytes - a.whep_video_bytes) as f64 * 8.0
            / dt
            / 1000.0
            / whep_viewers_connected.max(1) as f64,
        whep_connect_ms,
        whep_viewers_deleted: None,
        recording_bytes: None,
        participants: ps.len(),
        joined,
        failed,
        errors,
        server_errors: ps
            .iter()
            .map(|p| p.server_errors.load(Ordering::Relaxed))
            .sum(),
        server_error_codes,
        max_sdp_bytes: max(|p| p.max_sdp_bytes.load(Ordering::Relaxed)),
        offers: sum(|p| p.offers.load(Ordering::Relaxed)),
        negotiation_failures: sum(|p| p.negotiation_failures.load(Ordering::Relaxed)),
        peak_remote_tracks: max(|p| p.peak_tracks.load(Ordering::Relaxed)),
        screens_received: sum(|p| p.screens_received.load(Ordering::Relaxed)),
        stuck,
        window: (a.t, b.t),
        packets_per_sec: pps,
        mbit_per_sec: (b.bytes - a.bytes) as f64 * 8.0 / dt / 1e6,
        sent_packets: d.sent_packets,
        received_packets: received,
        loss_pct: if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        },
        e2e_loss_pct: if e2e_expected > 0 {
            e2e_lost as f64 * 100.0 / e2e_expected as f64
        } else {
            0.0
        },
        tracks_with_loss: with_loss,
        tracks,
        jitter_ms_mean: if jitters.is_empty() {
            0.0
        } else {
            jitters.iter().sum::<f64>() / jitters.len() as f64
        },
        jitter_ms_max: jitters.iter().copied().fold(0.0, f64::max),
        latency_audio: Dist::of_hist_us(&audio),
        latency_video: Dist::of_hist_us(&video),
        latency_audio_window,
        latency_video_window,
        join_ms,
        connect_ms,
        first_keyframe_ms,
        redirected: ps.iter().filter(|p| redirected(p)).count(),
        signal_join_direct_ms,
        signal_join_redirected_ms,
        join_direct_ms,
        join_redirected_ms,
        tile_classes,
        nodes,
        server,
        churn,
        tester,
    }
}

/// The tile class a received video track is shown at: the subscriber's one tile, or the one
/// its grid gave the m-line's current track (by mid; by track id for a server without
/// `media_slots`).
pub fn track_class(p: &crate::peer::Participant, t: &crate::stats::TrackRx) -> Option<String> {
    if let Some(tile) = &p.role.tile {
        return Some(tile.class.clone());
    }
    let tiles = p.track_tiles.lock().expect("tiles lock");
    tiles
        .get(&format!("mid:{}", t.mid))
        .or_else(|| tiles.get(&t.track_id))
        .cloned()
}

/// The summary as a table.
pub fn table(label: &str, s: &Summary) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![label.to_string(), String::new()]);
    t.add_row(vec![
        "participants".into(),
        format!(
            "{} planned, {} joined, {} failed",
            s.participants, s.joined, s.failed
        ),
    ]);
    for e in &s.errors {
        t.add_row(vec!["  error".into(), e.clone()]);
    }
    if s.server_errors > 0 {
        t.add_row(vec![
            "  server errors".into(),
            format!("{} (see the log)", s.server_errors),
        ]);
    }
    for (code, n) in &s.server_error_codes {
        t.add_row(vec!["  server error".into(), format!("{code}: {n}")]);
    }
    if s.offers > 0 || s.max_sdp_bytes > 0 {
        t.add_row(vec![
            "negotiation".into(),
            format!(
                "{} server offers, {} failed negotiations, largest SDP received {} bytes{}",
                s.offers,
                s.negotiation_failures,
                s.max_sdp_bytes,
                if s.peak_remote_tracks > 0 {
                    format!(
                        ", at most {} remote tracks at once, {} shared screens received",
                        s.peak_remote_tracks, s.screens_received
                    )
                } else {
                    String::new()
                }
            ),
        ]);
    }
    for (stage, n) in &s.stuck {
        t.add_row(vec![
            "  not joined".into(),
            format!("{n} stuck at: {stage}"),
        ]);
    }
    t.add_row(vec![
        "window".into(),
        format!("{:.0}–{:.0} s", s.window.0, s.window.1),
    ]);
    t.add_row(vec![
        "received (window)".into(),
        format!(
            "{:.0} packets/s, {:.2} Mbit/s",
            s.packets_per_sec, s.mbit_per_sec
        ),
    ]);
    t.add_row(vec![
        "packets (run)".into(),
        format!("{} sent, {} received", s.sent_packets, s.received_packets),
    ]);
    t.add_row(vec![
        "loss".into(),
        format!(
            "{:.3} % end to end, {:.3} % SFU to subscriber ({} of {} tracks with loss)",
            s.e2e_loss_pct, s.loss_pct, s.tracks_with_loss, s.tracks
        ),
    ]);
    t.add_row(vec![
        "jitter".into(),
        format!(
            "mean {:.2} ms, max {:.2} ms",
            s.jitter_ms_mean, s.jitter_ms_max
        ),
    ]);
    t.add_row(vec!["latency audio".into(), Dist::show(&s.latency_audio)]);
    t.add_row(vec!["latency video".into(), Dist::show(&s.latency_video)]);
    t.add_row(vec![
        "latency audio, window".into(),
        Dist::show(&s.latency_audio_window),
    ]);
    t.add_row(vec![
        "latency video, window".into(),
        Dist::show(&s.latency_video_window),
    ]);
    t.add_row(vec!["join → first media".into(), Dist::show(&s.join_ms)]);
    t.add_row(vec!["join → connected".into(), Dist::show(&s.connect_ms)]);
    t.add_row(vec![
        "join → first key frame".into(),
        Dist::show(&s.first_keyframe_ms),
    ]);
    if s.redirected > 0 || s.nodes.len() > 1 {
        t.add_row(vec![
            "joined directly: WebSocket → joined".into(),
            Dist::show(&s.signal_join_direct_ms),
        ]);
        t.add_row(vec![
            format!("joined via redirect ({}): WebSocket → joined", s.redirected),
            Dist::show(&s.signal_join_redirected_ms),
        ]);
        t.add_row(vec![
            "join → first media, direct".into(),
            Dist::show(&s.join_direct_ms),
        ]);
        t.add_row(vec![
            "join → first media, via redirect".into(),
            Dist::show(&s.join_redirected_ms),
        ]);
    }
    for c in &s.tile_classes {
        t.add_row(vec![
            format!("video to {} tiles ({}x{})", c.class, c.width, c.height),
            format!(
                "{:.0} kbit/s, {:.1} packets/s per track ({} subscribers, {} tracks)",
                c.video_kbps_per_track,
                c.video_packets_per_sec_per_track,
                c.subscribers,
                c.video_tracks
            ),
        ]);
    }
    for n in &s.nodes {
        let opt =
            |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map(f).unwrap_or_else(|| "-".into());
        t.add_row(vec![
            format!("node {}", n.node.as_deref().unwrap_or(&n.url)),
            format!(
                "{} rooms, {} participants ({} landed), forwarded {} packets/s (received {}), {} redirects; CPU {}, {} µs per forwarded packet",
                n.rooms,
                n.participants,
                n.landed,
                opt(n.forwarded_packets_per_sec, &|v| format!("{v:.0}")),
                opt(n.received_packets_per_sec, &|v| format!("{v:.0}")),
                n.redirects_total,
                opt(n.cores, &|v| format!("{:.1} %", v * 100.0)),
                opt(n.cpu_us_per_forwarded_packet, &|v| format!("{v:.2}")),
            ),
        ]);
    }
    if s.whep_viewers > 0 {
        t.add_row(vec![
            "WHEP viewers".into(),
            format!(
                "{} planned, {} connected, {} failed; {} packets received (window: {:.0} packets/s, video {:.0} kbit/s per viewer; the least a viewer got: {})",
                s.whep_viewers,
                s.whep_viewers_connected,
                s.whep_viewers_failed,
                s.whep_packets_received,
                s.whep_packets_per_sec,
                s.whep_video_kbps_per_viewer,
                s.whep_min_packets_per_viewer
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
        ]);
        for e in &s.whep_errors {
            t.add_row(vec!["  viewer error".into(), e.clone()]);
        }
        t.add_row(vec![
            "WHEP viewer → connected".into(),
            Dist::show(&s.whep_connect_ms),
        ]);
    }
    match &s.server {
        Some(c) => {
            t.add_row(vec![
                "server CPU".into(),
                format!(
                    "{:.1} % of a core, {:.2} CPU-µs per forwarded packet (≈ {:.0} packets/s per core)",
                    c.cores * 100.0,
                    c.cpu_us_per_forwarded_packet,
                    c.projected_packets_per_sec_per_core
                ),
            ]);
            t.add_row(vec![
                "server memory".into(),
                format!(
                    "{:.1} MiB resident{}",
                    c.rss_mib,
                    c.rss_per_participant_kib
                        .map(|k| format!(", +{k:.0} KiB per participant"))
                        .unwrap_or_default()
                ),
            ]);
        }
        None => {
            t.add_row(vec!["server CPU", "not measured (pass --server-pid)"]);
        }
    }
    if let Some(c) = &s.churn {
        let j = &c.joiners;
        t.add_row(vec![
            "churn: joiners".into(),
            format!(
                "{} started, {} joined, {} failed, {} shared a screen, at most {} at once; {} server errors, {} failed negotiations, largest SDP {} bytes",
                j.started, j.joined, j.failed, j.screens, j.peak_concurrent, j.server_errors,
                j.negotiation_failures, j.max_sdp_bytes
            ),
        ]);
        for (name, ph) in [("first", &c.first), ("last", &c.last)] {
            if let Some(ph) = ph {
                t.add_row(vec![
                    format!("churn: {name} part ({:.0}–{:.0} s)", ph.from, ph.to),
                    format!(
                        "{:.0} packets/s, server {} CPU-µs per forwarded packet, {} MiB resident",
                        ph.packets_per_sec,
                        ph.cpu_us_per_forwarded_packet
                            .map(|v| format!("{v:.2}"))
                            .unwrap_or_else(|| "-".into()),
                        ph.rss_mib
                            .map(|v| format!("{v:.1}"))
                            .unwrap_or_else(|| "-".into()),
                    ),
                ]);
            }
        }
        t.add_row(vec![
            "churn: last against first".into(),
            format!(
                "CPU per packet {}, RSS {}",
                c.cpu_change_pct
                    .map(|v| format!("{v:+.1} %"))
                    .unwrap_or_else(|| "-".into()),
                c.rss_change_pct
                    .map(|v| format!("{v:+.1} %"))
                    .unwrap_or_else(|| "-".into()),
            ),
        ]);
    }
    if let Some(c) = &s.tester {
        t.add_row(vec![
            "tester CPU".into(),
            format!(
                "{:.1} % of a core, {:.3} cores per 10,000 received packets/s",
                c.cores * 100.0,
                c.cores_per_10k_pps
            ),
        ]);
    }
    t.to_string()
}

/// Writes the JSON report: settings, summary, per-participant results, per-second series.
pub fn write_json(path: &Path, cli: &Cli, s: &Summary, d: &RunData) -> Result<()> {
    let participants: Vec<_> = d
        .participants
        .iter()
        .map(|p| {
            let tracks: Vec<_> = p
                .tracks
                .lock()
                .expect("tracks lock")
                .iter()
                .map(|t| {
                    let t = t.lock().expect("track lock");
                    json!({
                        "kind": t.kind,
                        "from": t.from,
                        "packets": t.packets,
                        "bytes": t.bytes,
                        "expected": t.expected(),
                        "lost": t.lost(),
                        "stamps": t.stamps,
                        "stamps_expected": t.stamps_expected(),
                        "stamps_lost": t.stamps_lost(),
                        "jitter_ms": t.jitter_ms(),
                        "keyframes": t.keyframes,
                        "latency_ms": Dist::of_hist_us(&t.latency),
                    })
                })
                .collect();
            json!({
                "name": p.name,
                "room": p.room,
                "role": p.role,
                "join_ms": p.since_start_ms(&p.first_media_us),
                "signal_join_ms": crate::peer::Participant::between_ms(&p.signal_start_us, &p.joined_us),
                "redirects": p.redirects.load(Ordering::Relaxed),
                "node_url": p.node_url.lock().expect("node lock").clone(),
                "video_bytes": p.video_bytes.load(Ordering::Relaxed),
                "connect_ms": p.since_start_ms(&p.connected_us),
                "first_keyframe_ms": p.since_start_ms(&p.first_keyframe_us),
                "error": p.error.lock().expect("error lock").clone(),
                "tracks": tracks,
            })
        })
        .collect();
    let viewers: Vec<_> = d
        .viewers
        .iter()
        .map(|v| {
            json!({
                "name": v.name,
                "room": v.room,
                "connect_ms": crate::peer::Participant::between_ms(&v.started_us, &v.connected_us),
                "packets": v.packets.load(Ordering::Relaxed),
                "video_packets": v.video_packets.load(Ordering::Relaxed),
                "video_bytes": v.video_bytes.load(Ordering::Relaxed),
                "deleted": v.deleted.load(Ordering::Relaxed),
                "error": v.error.lock().expect("error lock").clone(),
            })
        })
        .collect();
    let report = json!({
        "label": cli.label(),
        "settings": cli,
        "machine": {
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu_model": cpu_model(),
        },
        "summary": s,
        "participants": participants,
        "viewers": viewers,
        "seconds": d.seconds,
    });
    std::fs::write(path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn cpu_model() -> Option<String> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
}

/// Plots received packets/s and latency (p50, p99) per second, one above the other.
pub fn plot(path: &Path, label: &str, seconds: &[Second]) -> Result<()> {
    let root = SVGBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(300);
    let t_max = seconds.last().map(|s| s.t).unwrap_or(1.0).max(1.0);
    let pps_max = seconds
        .iter()
        .map(|s| s.packets_per_sec)
        .fold(1.0, f64::max)
        * 1.1;
    let mut c = ChartBuilder::on(&top)
        .caption(format!("{label}: received packets/s"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..pps_max)?;
    c.configure_mesh().x_desc("s").y_desc("packets/s").draw()?;
    c.draw_series(LineSeries::new(
        seconds.iter().map(|s| (s.t, s.packets_per_sec)),
        &BLUE,
    ))?
    .label("received packets/s")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if seconds.iter().any(|s| s.server_cores.is_some()) {
        // Server CPU on the same axis, scaled so that one core = the top of the chart.
        c.draw_series(LineSeries::new(
            seconds
                .iter()
                .filter_map(|s| s.server_cores.map(|x| (s.t, x * pps_max))),
            &RED,
        ))?
        .label("server CPU (top = 1 core)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;

    let lat_max = seconds
        .iter()
        .filter_map(|s| s.latency_p99_ms)
        .fold(1.0, f64::max)
        * 1.2;
    let mut c = ChartBuilder::on(&bottom)
        .caption(
            format!("{label}: end-to-end latency (loopback)"),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..lat_max)?;
    c.configure_mesh().x_desc("s").y_desc("ms").draw()?;
    c.draw_series(LineSeries::new(
        seconds
            .iter()
            .filter_map(|s| s.latency_p50_ms.map(|l| (s.t, l))),
        &GREEN,
    ))?
    .label("p50")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    c.draw_series(LineSeries::new(
        seconds
            .iter()
            .filter_map(|s| s.latency_p99_ms.map(|l| (s.t, l))),
        &MAGENTA,
    ))?
    .label("p99")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA));
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
