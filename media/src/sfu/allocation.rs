//! The parts of [`Sfu`] that shape what each subscriber receives: simulcast layer choice by
//! tile size and downlink estimate, pausing hidden tiles, dynacast (pausing layers nobody
//! watches at the publisher), active speakers and connection quality.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use std::sync::Arc;

use super::rtp::AUDIO_LATE;

use str0m::media::{KeyframeRequestKind, MediaKind, MediaTime, Mid, Rid};
use str0m::stats::{MediaIngressStats, PeerStats};

use super::{
    allocate, clock_rate, layer_for_size, track_kind, ConsumerState, Output, PeerEvent, Quality,
    Sfu, Source, Want, ALLOCATION_INTERVAL, QUALITY_INTERVAL, QUALITY_REPEAT,
};
use crate::{MediaError, ParticipantId, TrackId, TrackKind};

/// How much of a video stream's jitter counts against its connection's quality (see
/// `note_jitter`): video jitter of 200 ms weighs as audio jitter of 30 ms.
const VIDEO_JITTER_WEIGHT: f64 = 0.15;
/// How far each second of loss-free delivery raises a subscriber's downlink estimate.
const ESTIMATE_GROWTH: f64 = 1.08;
/// Loss above this lowers the estimate (to what arrived, less half the loss); below
/// `LOSS_LOW` it grows. In between it holds (GCC's loss-based controller, RFC 8698 style).
const LOSS_HIGH: f32 = 0.10;
const LOSS_LOW: f32 = 0.02;
/// The estimate never falls below this (audio and the lowest layer of one video).
const ESTIMATE_FLOOR: u64 = 100_000;

/// A layer silent for longer than this was paused: its bitrate window starts again.
const LAYER_GAP: Duration = Duration::from_millis(500);
/// After a downgrade for lack of bandwidth, how long no layer goes up (doubling, up to the
/// maximum, while upgrades keep failing).
const UPGRADE_HOLD_MIN: Duration = Duration::from_secs(8);
const UPGRADE_HOLD_MAX: Duration = Duration::from_secs(60);
/// A downgrade this soon after an upgrade means the upgrade failed.
const UPGRADE_TRIAL: Duration = Duration::from_secs(10);

/// What one subscriber's allocation decided for one of its consumers.
struct Decision {
    consumer: usize,
    target: Option<Option<Rid>>,
}

/// What [`Sfu::note_layer`] learns from one incoming packet.
pub(super) struct Arrival {
    pub(super) mid: Mid,
    pub(super) rid: Option<Rid>,
    /// Payload bytes.
    pub(super) bytes: usize,
    /// The frame size, when it starts a VP8 keyframe.
    pub(super) keyframe_size: Option<(u32, u32)>,
    /// Its extended RTP time.
    pub(super) time: MediaTime,
}

impl Sfu {
    /// The sizes, in device pixels, at which `participant` shows other participants' video
    /// tracks. A zero width or height means hidden: nothing is forwarded for that track.
    /// Tracks not listed keep their last size; unknown track ids are ignored.
    pub fn set_video_sizes(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        sizes: &[(TrackId, u32, u32)],
    ) -> Result<(), MediaError> {
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant(participant))?;
        for &(track, w, h) in sizes {
            for c in peer.consumers.iter_mut().filter(|c| c.producer == track) {
                c.size = Some((w, h));
            }
        }
        self.realloc = true;
        self.drive(now);
        Ok(())
    }

    /// Caps what `participant` is sent, in bits per second, below str0m's bandwidth estimate
    /// (`None` removes the cap). For clients on metered links, and for tests.
    pub fn set_max_bitrate(
        &mut self,
        now: Instant,
        participant: ParticipantId,
        bps: Option<u64>,
    ) -> Result<(), MediaError> {
        let peer = self
            .peers
            .get_mut(&participant)
            .ok_or(MediaError::UnknownParticipant(participant))?;
        peer.max_bitrate = bps;
        self.realloc = true;
        self.drive(now);
        Ok(())
    }

    /// Measures the layer an incoming frame belongs to. Returns the publisher's room.
    pub(super) fn note_layer(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        packet: Arrival,
    ) -> Option<(Arc<str>, bool)> {
        let Arrival {
            mid,
            rid,
            bytes,
            keyframe_size,
            time,
        } = packet;
        let hold = self.socket_behind(now);
        let peer = self.peers.get_mut(&publisher)?;
        if let Some(prod) = peer.producers.iter_mut().find(|p| p.mid == mid) {
            let audio = prod.kind == MediaKind::Audio;
            let layer = prod.layer_mut(rid);
            match layer.last_seen {
                // A layer to choose from: choose again.
                None => self.realloc = true,
                // Resumed after a pause: measure afresh (the last figure stands meanwhile).
                Some(t) if now.saturating_duration_since(t) > LAYER_GAP => {
                    layer.window_start = None;
                    layer.window_bytes = 0;
                }
                Some(_) => {}
            }
            layer.last_seen = Some(now);
            layer.window_bytes += bytes as u64;
            match layer.window_start {
                None => layer.window_start = Some(now),
                Some(t) => {
                    let span = now.saturating_duration_since(t);
                    if span >= ALLOCATION_INTERVAL {
                        layer.bitrate =
                            (layer.window_bytes as f64 * 8.0 / span.as_secs_f64()) as u64;
                        layer.window_bytes = 0;
                        layer.window_start = Some(now);
                    }
                }
            }
            if let Some(size) = keyframe_size {
                layer.size = size;
            }
            // Audio is timed by its RTP clock. Video is not (a publisher's pacer spreads a
            // large keyframe over hundreds of milliseconds): it yields while the worker is
            // behind, as judged from everyone's audio.
            if audio {
                let late = layer.lateness.observe(
                    now,
                    time.numer(),
                    u64::from(time.frequency().get()),
                    hold,
                );
                self.behind.audio(now, late);
                return Some((peer.room.clone(), late > AUDIO_LATE));
            }
            return Some((peer.room.clone(), self.behind.is_behind(now)));
        }
        Some((peer.room.clone(), false))
    }

    pub(super) fn note_jitter(&mut self, pid: ParticipantId, s: &MediaIngressStats) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let Some(kind) = peer.rtc.media(s.mid).map(|m| track_kind(m.kind())) else {
            return;
        };
        let key = (s.mid, s.rid);
        let before = match peer.ingress_packets.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => std::mem::replace(n, s.packets),
            None => {
                peer.ingress_packets.push((key, s.packets));
                0
            }
        };
        if s.packets > before {
            // Judged against the kind's norm, in audio terms: video frames leave as bursts of
            // packets sharing one RTP time, so tens of milliseconds of video jitter are normal
            // (50 to 200 ms on a clean but busy loopback link: the encoder's time varies) where
            // the same for audio is not. Video counts at 0.15 of its value: fair from 200 ms,
            // poor from 400 ms (audio: 30 and 60 ms). Only streams still arriving count.
            let norm = match kind {
                TrackKind::Audio => 1.0,
                TrackKind::Video => VIDEO_JITTER_WEIGHT,
            };
            let j = f64::from(s.jitter) / clock_rate(kind) * norm;
            peer.quality_jitter = peer.quality_jitter.max(j);
        }
    }

    pub(super) fn note_peer_stats(&mut self, now: Instant, pid: ParticipantId, s: &PeerStats) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        // The downlink estimate, loss-based: what the subscriber's TWCC feedback (or else its
        // receiver reports) says was lost of what we sent since the last tick.
        let sent = peer.last_tx.and_then(|(bytes, at)| {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            (secs > 0.2).then(|| (s.peer_bytes_tx.saturating_sub(bytes) as f64 * 8.0 / secs) as u64)
        });
        peer.last_tx = Some((s.peer_bytes_tx, now));
        let loss = s.egress_loss_fraction.or(peer.rr_loss.take());
        if let (Some(sent), Some(loss)) = (sent, loss) {
            let old = peer.estimate;
            peer.estimate = next_estimate(old, sent, loss.clamp(0.0, 1.0));
            // A sharp drop is acted on at once; the rest waits for the next round.
            if let (Some(new), Some(old)) = (peer.estimate, old.or(Some(u64::MAX))) {
                if new < old / 10 * 8 {
                    tracing::debug!(participant = %pid, estimate = new, loss, "downlink estimate down");
                    self.realloc = true;
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        for loss in [s.egress_loss_fraction, s.ingress_loss_fraction]
            .into_iter()
            .flatten()
        {
            peer.quality_loss = peer.quality_loss.max(loss.clamp(0.0, 1.0));
        }
        if let Some(rtt) = s.rtt {
            peer.quality_rtt = peer.quality_rtt.max(rtt.as_secs_f64());
        }
    }

    /// Per-room timers: the speaker list, the connection qualities, and the layer choice.
    pub(super) fn room_ticks(&mut self, now: Instant) {
        if self.next_allocation.is_none_or(|t| now >= t) {
            self.realloc = true;
        }
        let mut events = Vec::new();
        let mut viewers = Vec::new();
        for router in self.routers.values_mut() {
            if let Some(speakers) = router.speakers.poll(now) {
                let ids: Vec<ParticipantId> = speakers.iter().map(|s| s.participant).collect();
                for m in &router.members {
                    if let Some(p) = self.peers.get_mut(m) {
                        if p.viewer.as_mut().is_some_and(|v| v.spoke(&ids)) {
                            p.negotiate = true;
                            viewers.push(*m);
                        }
                    }
                    events.push((
                        *m,
                        PeerEvent::Speakers {
                            speakers: speakers.clone(),
                        },
                    ));
                }
            }
            if now < router.next_quality {
                continue;
            }
            router.next_quality = now + QUALITY_INTERVAL;
            let mut list = Vec::new();
            for m in &router.members {
                let Some(p) = self.peers.get_mut(m) else {
                    continue;
                };
                if !p.connected {
                    continue;
                }
                let q = Quality::classify(p.quality_loss, p.quality_jitter, p.quality_rtt);
                tracing::debug!(participant = %m, loss = p.quality_loss, jitter = p.quality_jitter, rtt = p.quality_rtt, quality = q.as_str(), "connection quality");
                list.push((*m, q));
                p.quality_loss = 0.0;
                p.quality_jitter = 0.0;
                p.quality_rtt = 0.0;
            }
            let repeat = router
                .last_quality_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= QUALITY_REPEAT);
            if list.is_empty() || (list == router.last_quality && !repeat) {
                continue;
            }
            router.last_quality = list.clone();
            router.last_quality_sent = Some(now);
            for m in &router.members {
                events.push((
                    *m,
                    PeerEvent::Quality {
                        participants: list.clone(),
                    },
                ));
            }
        }
        for (pid, ev) in events {
            self.out.push_back(Output::Event(pid, ev));
        }
        for pid in viewers {
            self.mark_dirty(pid);
        }
    }

    /// Chooses every subscriber's layers, asks for the keyframes the switches need, and tells
    /// publishers which layers are watched.
    pub(super) fn allocate_all(&mut self, now: Instant) {
        self.realloc = false;
        self.next_allocation = Some(now + ALLOCATION_INTERVAL);
        // A viewer's slots go to the tracks that send (see `viewer`): looked at again each
        // round, since a track starting or stopping (a screen share) says nothing else.
        let viewers: Vec<ParticipantId> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| p.viewer.is_some())
            .map(|(id, p)| {
                p.negotiate = true;
                *id
            })
            .collect();
        for v in viewers {
            self.mark_dirty(v);
        }
        let subscribers: Vec<ParticipantId> = self.peers.keys().copied().collect();
        let mut keyframes: Vec<(ParticipantId, Mid, Option<Rid>)> = Vec::new();
        for sid in subscribers {
            let Some(sub) = self.peers.get(&sid) else {
                continue;
            };
            let mut audio = 0u64;
            let mut wants = Vec::new();
            let mut layer_rids: Vec<Vec<Option<Rid>>> = Vec::new();
            let mut video_idx = Vec::new();
            for (ci, c) in sub.consumers.iter().enumerate() {
                if !matches!(c.state, ConsumerState::Open(_)) {
                    continue;
                }
                let Some(prod) = self
                    .peers
                    .get(&c.publisher)
                    .and_then(|p| p.producers.iter().find(|p| p.mid == c.producer_mid))
                else {
                    continue;
                };
                let n = prod.layers.len();
                if c.kind == MediaKind::Audio {
                    audio += prod
                        .layers
                        .first()
                        .map_or(40_000, |l| l.rate(0, 1, MediaKind::Audio));
                    continue;
                }
                let avail: Vec<usize> = (0..n).filter(|&i| prod.layers[i].available(now)).collect();
                let hidden = c.size.is_some_and(|(w, h)| w == 0 || h == 0);
                let cap = match c.size {
                    _ if avail.is_empty() || hidden => None,
                    None => Some(avail.len() - 1),
                    Some(tile) => {
                        let sizes: Vec<(u32, u32)> =
                            avail.iter().map(|&i| prod.layers[i].size).collect();
                        Some(layer_for_size(&sizes, tile))
                    }
                };
                let upto = cap.map_or(0, |c| c + 1);
                wants.push(Want {
                    bitrates: avail[..upto]
                        .iter()
                        .map(|&i| prod.layers[i].rate(i, n, MediaKind::Video))
                        .collect(),
                    priority: prod.source == Source::Screen,
                });
                layer_rids.push(avail[..upto].iter().map(|&i| prod.layers[i].rid).collect());
                video_idx.push(ci);
            }
            let estimate = sub.estimate.filter(|_| self.use_bandwidth_estimate);
            let cap = sub.max_bitrate.unwrap_or(u64::MAX);
            let budget = estimate.unwrap_or(u64::MAX).min(cap);
            // Only an estimate (not a cap) below every layer leaves one video running.
            let mut chosen = allocate(budget, audio, &wants, budget < cap);
            // Hysteresis against a bouncing estimate: after a downgrade for lack of bandwidth,
            // no consumer goes up a layer until the hold ends; an upgrade undone by congestion
            // within UPGRADE_TRIAL doubles the next hold (LiveKit's stream allocator backs off
            // the same way). Resuming a paused or new consumer is never held.
            let held = sub.upgrade_hold.is_some_and(|t| now < t);
            let (mut congested, mut upgraded) = (false, false);
            for (k, pick) in chosen.iter_mut().enumerate() {
                let prev = sub.consumers[video_idx[k]]
                    .target
                    .and_then(|t| layer_rids[k].iter().position(|r| *r == t));
                let Some(prev) = prev else { continue };
                match *pick {
                    Some(n) if n > prev && held => *pick = Some(prev),
                    Some(n) if n > prev => upgraded = true,
                    Some(n) if n < prev => congested = true,
                    None => congested = true,
                    Some(_) => {}
                }
            }
            let hold = if congested {
                let failed = sub
                    .last_upgrade
                    .is_some_and(|t| now.saturating_duration_since(t) < UPGRADE_TRIAL);
                let backoff = if failed {
                    (sub.upgrade_backoff * 2).clamp(UPGRADE_HOLD_MIN, UPGRADE_HOLD_MAX)
                } else {
                    UPGRADE_HOLD_MIN
                };
                Some(backoff)
            } else {
                None
            };
            let decisions: Vec<Decision> = chosen
                .iter()
                .enumerate()
                .map(|(k, pick)| Decision {
                    consumer: video_idx[k],
                    target: pick.map(|i| layer_rids[k][i]),
                })
                .collect();
            let Some(sub) = self.peers.get_mut(&sid) else {
                continue;
            };
            if let Some(backoff) = hold {
                sub.upgrade_backoff = backoff;
                sub.upgrade_hold = Some(now + backoff);
            }
            if upgraded {
                sub.last_upgrade = Some(now);
            }
            for d in decisions {
                let c = &mut sub.consumers[d.consumer];
                c.target = d.target;
                match d.target {
                    None => c.current = None,
                    Some(rid) if c.current != Some(rid) => {
                        keyframes.push((c.publisher, c.producer_mid, rid));
                    }
                    Some(_) => {}
                }
            }
        }
        keyframes.sort_by_key(|(p, m, r)| (*p, *m, r.as_deref().map(str::to_string)));
        keyframes.dedup();
        for (publisher, mid, rid) in keyframes {
            self.request_keyframe(now, publisher, mid, rid, KeyframeRequestKind::Pli);
        }
        self.dynacast(now);
    }

    /// Tells each simulcast publisher which of its layers some consumer forwards or is about to.
    fn dynacast(&mut self, now: Instant) {
        let mut needed: HashSet<(ParticipantId, Mid, Rid)> = HashSet::new();
        for p in self.peers.values() {
            for c in &p.consumers {
                for rid in [c.current, c.target].into_iter().flatten().flatten() {
                    needed.insert((c.publisher, c.producer_mid, rid));
                }
            }
        }
        needed.extend(self.recorded_layers());
        let mut events = Vec::new();
        for (pid, peer) in self.peers.iter_mut() {
            for prod in &mut peer.producers {
                if !prod.simulcast() {
                    continue;
                }
                let mut changed = false;
                for l in &mut prod.layers {
                    let Some(rid) = l.rid else { continue };
                    // A layer never seen is left as the browser has it: pausing it could
                    // leave nothing to choose from.
                    if l.last_seen.is_none() {
                        continue;
                    }
                    let want = needed.contains(&(*pid, prod.mid, rid));
                    if want != l.active {
                        l.active = want;
                        if want {
                            l.resumed_at = Some(now);
                        }
                        changed = true;
                    }
                }
                if changed {
                    let active = prod
                        .layers
                        .iter()
                        .filter(|l| l.active)
                        .filter_map(|l| l.rid.map(|r| r.to_string()))
                        .collect();
                    events.push((
                        *pid,
                        PeerEvent::Layers {
                            track_id: prod.id,
                            active,
                        },
                    ));
                }
            }
        }
        for (pid, ev) in events {
            self.out.push_back(Output::Event(pid, ev));
        }
    }
}

/// The loss-based downlink estimate after one stats tick in which `sent` bits per second went
/// out and the subscriber reported `loss`. `None` (no estimate: tiles alone decide) until loss
/// above `LOSS_HIGH` is seen; then the sent rate less half the loss, growing by
/// `ESTIMATE_GROWTH` per loss-free tick (RFC 8698's loss-based controller, which GCC runs
/// beside its delay-based one).
pub(super) fn next_estimate(old: Option<u64>, sent: u64, loss: f32) -> Option<u64> {
    if loss > LOSS_HIGH {
        let lowered = (sent as f64 * (1.0 - 0.5 * f64::from(loss))).round() as u64;
        return Some(old.map_or(lowered, |o| o.min(lowered)).max(ESTIMATE_FLOOR));
    }
    let old = old?;
    if loss < LOSS_LOW {
        // Far above what is sent, the estimate says nothing more: it is dropped.
        let grown = (old as f64 * ESTIMATE_GROWTH).round() as u64;
        return (grown < sent.saturating_mul(20).max(20 * ESTIMATE_FLOOR)).then_some(grown);
    }
    Some(old)
}

#[cfg(test)]
mod tests {
    use super::next_estimate;

    #[test]
    fn loss_lowers_the_estimate_and_a_clean_link_raises_it_again() {
        assert_eq!(
            next_estimate(None, 1_000_000, 0.0),
            None,
            "no loss, no estimate"
        );
        assert_eq!(
            next_estimate(None, 1_000_000, 0.05),
            None,
            "moderate loss alone"
        );
        let low = next_estimate(None, 1_000_000, 0.40).unwrap();
        assert_eq!(low, 800_000, "40 % loss: what was sent less half the loss");
        assert_eq!(
            next_estimate(Some(low), 300_000, 0.05),
            Some(low),
            "holds in between"
        );
        let mut e = Some(low);
        for _ in 0..10 {
            e = next_estimate(e, 300_000, 0.0);
        }
        assert!(
            e.unwrap() > 1_600_000,
            "ten clean seconds more than double it: {e:?}"
        );
        assert_eq!(
            next_estimate(Some(200_000), 10_000_000, 0.9),
            Some(200_000),
            "loss never raises it"
        );
        assert_eq!(
            next_estimate(Some(50_000), 10_000, 0.9),
            Some(super::ESTIMATE_FLOOR)
        );
    }
}
