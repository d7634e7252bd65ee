//! str0m's per-stream stats turned into the node's counters (deltas of cumulative figures).

#[allow(unused_imports)]
use super::*;

impl Sfu {
    /// Counts a published stream's stats (deltas of str0m's cumulative figures).
    pub(super) fn ingress_stats(&mut self, pid: ParticipantId, s: &MediaIngressStats) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let kind = match peer.producers.iter().find(|p| p.mid == s.mid) {
            Some(p) => track_kind(p.kind),
            None => match peer.rtc.media(s.mid) {
                Some(m) => track_kind(m.kind()),
                None => return,
            },
        };
        let rtx = peer
            .rtc
            .direct_api()
            .stream_rx_by_mid(s.mid, s.rid)
            .and_then(|r| r.rtx());
        remember_ssrc(&mut peer.rtx_in, rtx);
        let mark = peer.ingress_marks.entry((s.mid, s.rid)).or_default();
        let packets = s.packets.saturating_sub(mark.packets);
        let m = &self.metrics;
        m.rtp_packets.r#in.get(kind).inc_by(packets);
        m.rtp_bytes
            .r#in
            .get(kind)
            .inc_by(s.bytes.saturating_sub(mark.bytes));
        m.nacks.out.inc_by(s.nacks.saturating_sub(mark.nacks));
        m.plis.out.inc_by(s.plis.saturating_sub(mark.plis));
        m.firs.out.inc_by(s.firs.saturating_sub(mark.firs));
        if let Some(loss) = s.loss {
            let loss = f64::from(loss).clamp(0.0, 1.0);
            m.loss_ratio.r#in.observe(loss);
            // The loss fraction of our last receiver report: received = expected × (1 − loss).
            if loss < 1.0 && packets > 0 {
                let lost = (packets as f64 * loss / (1.0 - loss)).round() as u64;
                m.packets_lost.r#in.inc_by(lost);
            }
        }
        if s.packets > 0 {
            m.jitter
                .r#in
                .get(kind)
                .observe(f64::from(s.jitter) / clock_rate(kind));
        }
        *mark = StatsMark {
            packets: s.packets,
            bytes: s.bytes,
            nacks: s.nacks,
            plis: s.plis,
            firs: s.firs,
            lost: 0,
        };
    }

    /// Counts a forwarded stream's stats and what its subscriber reports about it.
    pub(super) fn egress_stats(&mut self, pid: ParticipantId, s: &MediaEgressStats) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let kind = match peer.consumers.iter().find(|c| c.state.mid() == Some(s.mid)) {
            Some(c) => track_kind(c.kind),
            None => match peer.rtc.media(s.mid) {
                Some(m) => track_kind(m.kind()),
                None => return,
            },
        };
        let rtx = peer
            .rtc
            .direct_api()
            .stream_tx_by_mid(s.mid, s.rid)
            .and_then(|t| t.rtx());
        remember_ssrc(&mut peer.rtx_out, rtx);
        let mark = peer.egress_marks.entry((s.mid, s.rid)).or_default();
        let m = &self.metrics;
        m.rtp_packets
            .out
            .get(kind)
            .inc_by(s.packets.saturating_sub(mark.packets));
        m.rtp_bytes
            .out
            .get(kind)
            .inc_by(s.bytes.saturating_sub(mark.bytes));
        m.nacks.r#in.inc_by(s.nacks.saturating_sub(mark.nacks));
        m.plis.r#in.inc_by(s.plis.saturating_sub(mark.plis));
        m.firs.r#in.inc_by(s.firs.saturating_sub(mark.firs));
        if let Some(loss) = s.loss {
            m.loss_ratio.out.observe(f64::from(loss).clamp(0.0, 1.0));
            if kind == TrackKind::Video && s.packets > mark.packets {
                peer.rr_loss = Some(peer.rr_loss.map_or(loss, |l| l.max(loss)));
            }
        }
        if let Some(rtt) = s.rtt {
            m.rtt.observe(rtt.as_secs_f64());
        }
        let mut lost = mark.lost;
        if let Some(r) = &s.remote {
            m.packets_lost
                .out
                .inc_by(r.packets_lost.saturating_sub(mark.lost));
            lost = lost.max(r.packets_lost);
            m.jitter
                .out
                .get(kind)
                .observe(f64::from(r.jitter) / clock_rate(kind));
        }
        *mark = StatsMark {
            packets: s.packets,
            bytes: s.bytes,
            nacks: s.nacks,
            plis: s.plis,
            firs: s.firs,
            lost,
        };
    }
}

/// RTP clock rate of a kind's codecs (Opus 48 kHz; VP8 and H.264 90 kHz), for jitter in seconds.
pub(super) fn clock_rate(kind: TrackKind) -> f64 {
    match kind {
        TrackKind::Audio => 48_000.0,
        TrackKind::Video => 90_000.0,
    }
}

/// Adds `ssrc` to `list` once.
pub(super) fn remember_ssrc(list: &mut Vec<u32>, ssrc: Option<str0m::rtp::Ssrc>) {
    if let Some(ssrc) = ssrc.map(|s| *s) {
        if !list.contains(&ssrc) {
            list.push(ssrc);
        }
    }
}

/// Whether `datagram` is an (S)RTP retransmission: a packet on one of the `rtx` SSRCs without
/// the padding bit (padding-only packets on the RTX SSRC are bandwidth probes, not repairs).
/// The RTP header, SSRC included, is not encrypted by SRTP; RTCP (second byte 192–223) is not
/// RTP.
pub(super) fn is_rtx(datagram: &[u8], rtx: &[u32]) -> bool {
    if datagram.len() < 12
        || datagram[0] >> 6 != 2
        || datagram[0] & 0x20 != 0
        || (192..=223).contains(&datagram[1])
    {
        return false;
    }
    let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    rtx.contains(&ssrc)
}
