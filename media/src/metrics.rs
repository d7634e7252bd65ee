//! The SFU's Prometheus metrics.
//!
//! Every metric is an atomic (a `prometheus` counter, gauge or histogram) shared by all media
//! workers; label children are resolved once here, so the per-packet path never takes the
//! lock behind a `*Vec`'s label lookup. Labels are bounded sets (`direction`, `kind`, `reason`):
//! no room or participant id ever becomes a label.
//!
//! RTP and RTCP counts come from str0m's per-stream statistics events (every second per stream),
//! as deltas of their cumulative values, so they trail the wire by up to a second and the last
//! second of a stream that ends is not counted.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
};

use crate::sfu::{CloseReason, TrackKind};

/// Buckets of the forwarding latency histogram, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Buckets of the jitter histogram, seconds.
const JITTER_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5,
];
/// Buckets of the loss ratio histogram (fraction of packets lost per report).
const LOSS_BUCKETS: &[f64] = &[0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];
/// Buckets of the round-trip time histogram, seconds.
const RTT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0,
];

/// Per-direction counters: `in` is what arrives at the SFU, `out` what it sends.
#[derive(Clone)]
pub(crate) struct InOut<T> {
    pub(crate) r#in: T,
    pub(crate) out: T,
}

/// Per-kind children.
#[derive(Clone)]
pub(crate) struct ByKind<T> {
    pub(crate) audio: T,
    pub(crate) video: T,
}

impl<T> ByKind<T> {
    pub(crate) fn get(&self, kind: TrackKind) -> &T {
        match kind {
            TrackKind::Audio => &self.audio,
            TrackKind::Video => &self.video,
        }
    }
}

/// The SFU's metrics; one instance is shared by every worker of a node
/// (see [`crate::MediaHandle::metrics`]). Register it with [`MediaMetrics::register`].
#[derive(Clone)]
pub struct MediaMetrics {
    families: Families,
    pub(crate) rtp_packets: InOut<ByKind<IntCounter>>,
    pub(crate) rtp_bytes: InOut<ByKind<IntCounter>>,
    pub(crate) packets_lost: InOut<IntCounter>,
    pub(crate) nacks: InOut<IntCounter>,
    pub(crate) retransmissions: InOut<IntCounter>,
    pub(crate) plis: InOut<IntCounter>,
    pub(crate) firs: InOut<IntCounter>,
    pub(crate) jitter: InOut<ByKind<Histogram>>,
    pub(crate) loss_ratio: InOut<Histogram>,
    pub(crate) rtt: Histogram,
    pub(crate) forward_latency: Histogram,
    pub(crate) tracks: IntGauge,
    pub(crate) tracks_total: IntCounter,
    pub(crate) subscriptions: IntGauge,
    pub(crate) subscriptions_total: IntCounter,
    pub(crate) connections: IntGauge,
    connections_closed: [IntCounter; 4],
    pub(crate) unrouted: IntCounter,
    pub(crate) workers: IntGauge,
    pub(crate) keyframe_requests_suppressed: IntCounter,
    pub(crate) late_dropped: ByKind<IntCounter>,
    /// Recordings running on this node.
    pub recordings: IntGauge,
    /// Bytes the recordings wrote.
    pub recording_bytes: IntCounter,
    /// Failed writes of the recordings (the file is given up).
    pub recording_write_errors: IntCounter,
    /// Recorded copies dropped because the recording's queue was full (a slow disk).
    pub recording_dropped: IntCounter,
}

/// The registrable families (the children above share their atomics).
#[derive(Clone)]
struct Families {
    rtp_packets: IntCounterVec,
    rtp_bytes: IntCounterVec,
    packets_lost: IntCounterVec,
    nacks: IntCounterVec,
    retransmissions: IntCounterVec,
    plis: IntCounterVec,
    firs: IntCounterVec,
    jitter: HistogramVec,
    loss_ratio: HistogramVec,
    rtt: Histogram,
    forward_latency: Histogram,
    tracks: IntGauge,
    tracks_total: IntCounter,
    subscriptions: IntGauge,
    subscriptions_total: IntCounter,
    connections: IntGauge,
    connections_closed: IntCounterVec,
    unrouted: IntCounter,
    workers: IntGauge,
    keyframe_requests_suppressed: IntCounter,
    late_dropped: IntCounterVec,
    recordings: IntGauge,
    recording_bytes: IntCounter,
    recording_write_errors: IntCounter,
    recording_dropped: IntCounter,
}

// The definitions below are constants: building them fails only on an invalid name or label,
// which the unit test catches.
fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition")
}
fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric definition")
}
fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric definition")
}
fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .expect("valid metric definition")
}
fn histogram_vec(name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric definition")
}

fn in_out_kind<T: Clone>(vec: &impl Fn(&[&str]) -> T) -> InOut<ByKind<T>> {
    InOut {
        r#in: ByKind {
            audio: vec(&["in", "audio"]),
            video: vec(&["in", "video"]),
        },
        out: ByKind {
            audio: vec(&["out", "audio"]),
            video: vec(&["out", "video"]),
        },
    }
}

fn in_out(v: &IntCounterVec) -> InOut<IntCounter> {
    InOut {
        r#in: v.with_label_values(&["in"]),
        out: v.with_label_values(&["out"]),
    }
}

impl Default for MediaMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MediaMetrics {
    /// Fresh metrics, all zero, registered nowhere.
    pub fn new() -> Self {
        let f = Families {
            rtp_packets: counter_vec(
                "huddle_rtp_packets_total",
                "RTP packets received from publishers (direction=in) and sent to subscribers (direction=out), retransmissions included.",
                &["direction", "kind"],
            ),
            rtp_bytes: counter_vec(
                "huddle_rtp_bytes_total",
                "RTP bytes received from publishers (direction=in) and sent to subscribers (direction=out), retransmissions included.",
                &["direction", "kind"],
            ),
            packets_lost: counter_vec(
                "huddle_rtp_packets_lost_total",
                "RTP packets lost: direction=out as reported by subscribers' RTCP receiver reports; direction=in estimated from the loss fraction in the SFU's own receiver reports to publishers.",
                &["direction"],
            ),
            nacks: counter_vec(
                "huddle_rtcp_nacks_total",
                "RTCP NACKs received from subscribers (direction=in) and sent to publishers (direction=out).",
                &["direction"],
            ),
            retransmissions: counter_vec(
                "huddle_rtp_retransmissions_total",
                "RTX retransmissions (RFC 4588; padding-only bandwidth probes excluded) received from publishers (direction=in, answering the SFU's NACKs) and sent to subscribers (direction=out, answering theirs).",
                &["direction"],
            ),
            plis: counter_vec(
                "huddle_rtcp_plis_total",
                "RTCP picture loss indications received from subscribers (direction=in) and sent to publishers (direction=out).",
                &["direction"],
            ),
            firs: counter_vec(
                "huddle_rtcp_firs_total",
                "RTCP full intra requests received from subscribers (direction=in) and sent to publishers (direction=out).",
                &["direction"],
            ),
            jitter: histogram_vec(
                "huddle_rtp_jitter_seconds",
                "Interarrival jitter per stream and stats report: measured by the SFU on published streams (direction=in), reported by subscribers (direction=out).",
                JITTER_BUCKETS,
                &["direction", "kind"],
            ),
            loss_ratio: histogram_vec(
                "huddle_rtp_loss_ratio",
                "Fraction of packets lost per stream and RTCP report: on published streams (direction=in), on forwarded streams as subscribers report (direction=out).",
                LOSS_BUCKETS,
                &["direction"],
            ),
            rtt: histogram(
                "huddle_rtt_seconds",
                "Round-trip time to subscribers, from their RTCP receiver reports.",
                RTT_BUCKETS,
            ),
            forward_latency: histogram(
                "huddle_sfu_forward_latency_seconds",
                "Time inside the SFU from a media frame's arrival (its first packet) to its write to the subscribers.",
                LATENCY_BUCKETS,
            ),
            tracks: gauge(
                "huddle_tracks_published",
                "Tracks being published now.",
            ),
            tracks_total: counter(
                "huddle_tracks_published_total",
                "Tracks ever published.",
            ),
            subscriptions: gauge(
                "huddle_subscriptions",
                "Subscriptions (one subscriber's copy of one track) existing now.",
            ),
            subscriptions_total: counter(
                "huddle_subscriptions_total",
                "Subscriptions ever created.",
            ),
            connections: gauge(
                "huddle_media_connections",
                "Participants' media (WebRTC) connections on the media workers.",
            ),
            connections_closed: counter_vec(
                "huddle_media_connections_closed_total",
                "Media connections ended, by reason: removed (the participant left), ice_disconnected, connect_timeout (ICE/DTLS never completed), failed.",
                &["reason"],
            ),
            unrouted: counter(
                "huddle_media_unrouted_datagrams_total",
                "Datagrams on the media sockets that no connection accepted.",
            ),
            workers: gauge(
                "huddle_media_workers",
                "Media worker threads running.",
            ),
            keyframe_requests_suppressed: counter(
                "huddle_keyframe_requests_suppressed_total",
                "Subscribers' keyframe requests (PLI/FIR) not passed on to the publisher because that subscriber kept asking (over 5 in 10 s; a decoder that cannot decode).",
            ),
            late_dropped: counter_vec(
                "huddle_media_late_packets_dropped_total",
                "Publishers' RTP packets not forwarded because they reached the SFU too late to be of use (audio over 200 ms behind its RTP clock; video while every publisher's audio is over 100 ms late: an overloaded worker), by kind.",
                &["kind"],
            ),
            recordings: gauge(
                "huddle_recordings_active",
                "Recordings running on this node.",
            ),
            recording_bytes: counter(
                "huddle_recording_bytes_written_total",
                "Bytes written to recording files.",
            ),
            recording_write_errors: counter(
                "huddle_recording_write_errors_total",
                "Writes to recording files that failed (the file is given up; the meeting goes on).",
            ),
            recording_dropped: counter(
                "huddle_recording_packets_dropped_total",
                "Recorded copies of packets dropped because a recording's queue was full (a slow disk); live forwarding is not affected.",
            ),
        };
        MediaMetrics {
            rtp_packets: in_out_kind(&|l: &[&str]| f.rtp_packets.with_label_values(l)),
            rtp_bytes: in_out_kind(&|l: &[&str]| f.rtp_bytes.with_label_values(l)),
            packets_lost: in_out(&f.packets_lost),
            nacks: in_out(&f.nacks),
            retransmissions: in_out(&f.retransmissions),
            plis: in_out(&f.plis),
            firs: in_out(&f.firs),
            jitter: in_out_kind(&|l: &[&str]| f.jitter.with_label_values(l)),
            loss_ratio: InOut {
                r#in: f.loss_ratio.with_label_values(&["in"]),
                out: f.loss_ratio.with_label_values(&["out"]),
            },
            rtt: f.rtt.clone(),
            forward_latency: f.forward_latency.clone(),
            tracks: f.tracks.clone(),
            tracks_total: f.tracks_total.clone(),
            subscriptions: f.subscriptions.clone(),
            subscriptions_total: f.subscriptions_total.clone(),
            connections: f.connections.clone(),
            connections_closed: [
                f.connections_closed.with_label_values(&["removed"]),
                f.connections_closed
                    .with_label_values(&["ice_disconnected"]),
                f.connections_closed.with_label_values(&["connect_timeout"]),
                f.connections_closed.with_label_values(&["failed"]),
            ],
            unrouted: f.unrouted.clone(),
            workers: f.workers.clone(),
            keyframe_requests_suppressed: f.keyframe_requests_suppressed.clone(),
            late_dropped: ByKind {
                audio: f.late_dropped.with_label_values(&["audio"]),
                video: f.late_dropped.with_label_values(&["video"]),
            },
            recordings: f.recordings.clone(),
            recording_bytes: f.recording_bytes.clone(),
            recording_write_errors: f.recording_write_errors.clone(),
            recording_dropped: f.recording_dropped.clone(),
            families: f,
        }
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        let f = self.families.clone();
        registry.register(Box::new(f.rtp_packets))?;
        registry.register(Box::new(f.rtp_bytes))?;
        registry.register(Box::new(f.packets_lost))?;
        registry.register(Box::new(f.nacks))?;
        registry.register(Box::new(f.retransmissions))?;
        registry.register(Box::new(f.plis))?;
        registry.register(Box::new(f.firs))?;
        registry.register(Box::new(f.jitter))?;
        registry.register(Box::new(f.loss_ratio))?;
        registry.register(Box::new(f.rtt))?;
        registry.register(Box::new(f.forward_latency))?;
        registry.register(Box::new(f.tracks))?;
        registry.register(Box::new(f.tracks_total))?;
        registry.register(Box::new(f.subscriptions))?;
        registry.register(Box::new(f.subscriptions_total))?;
        registry.register(Box::new(f.connections))?;
        registry.register(Box::new(f.connections_closed))?;
        registry.register(Box::new(f.unrouted))?;
        registry.register(Box::new(f.workers))?;
        registry.register(Box::new(f.keyframe_requests_suppressed))?;
        registry.register(Box::new(f.late_dropped))?;
        registry.register(Box::new(f.recordings))?;
        registry.register(Box::new(f.recording_bytes))?;
        registry.register(Box::new(f.recording_write_errors))?;
        registry.register(Box::new(f.recording_dropped))?;
        Ok(())
    }

    /// A connection ended: `None` when the participant left (signaling removed it).
    pub(crate) fn connection_closed(&self, reason: Option<CloseReason>) {
        let i = match reason {
            None => 0,
            Some(CloseReason::IceDisconnected) => 1,
            Some(CloseReason::ConnectTimeout) => 2,
            Some(CloseReason::Failed) => 3,
        };
        self.connections_closed[i].inc();
    }

    /// Tracks being published now (for tests and health).
    pub fn tracks_published(&self) -> i64 {
        self.tracks.get()
    }

    /// Subscriptions existing now.
    pub fn subscriptions(&self) -> i64 {
        self.subscriptions.get()
    }

    /// Media worker threads running now.
    pub fn workers_running(&self) -> i64 {
        self.workers.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_encodes() {
        let m = MediaMetrics::new();
        let r = prometheus::Registry::new();
        m.register(&r).expect("registers");
        m.rtp_packets.r#in.audio.inc();
        m.forward_latency.observe(0.0);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .expect("encodes");
        assert!(text.contains("huddle_rtp_packets_total{direction=\"in\",kind=\"audio\"} 1"));
        assert!(text.contains("huddle_sfu_forward_latency_seconds_count 1"));
    }
}
