//! Keyframe requests: from subscribers (PLI/FIR), new consumers and gaps, to publishers,
//! throttled per layer.

#[allow(unused_imports)]
use super::*;

impl Sfu {
    /// Sends the keyframe requests that were held back by [`KEYFRAME_MIN_INTERVAL`] and are due.
    pub(super) fn send_postponed_keyframe_requests(&mut self, now: Instant) {
        if self.postponed_keyframes.is_none_or(|t| t > now) {
            return;
        }
        self.postponed_keyframes = None;
        let mut due = Vec::new();
        for (pid, peer) in &self.peers {
            for producer in &peer.producers {
                for layer in &producer.layers {
                    if let (Some(kind), Some(at)) = (layer.keyframe_pending, layer.keyframe_due()) {
                        if at <= now {
                            due.push((*pid, producer.mid, layer.rid, kind));
                        } else {
                            self.postponed_keyframes =
                                Some(self.postponed_keyframes.map_or(at, |t| t.min(at)));
                        }
                    }
                }
            }
        }
        for (pid, mid, rid, kind) in due {
            self.request_keyframe(now, pid, mid, rid, kind);
        }
    }

    pub(super) fn keyframe_from_subscriber(
        &mut self,
        now: Instant,
        subscriber: ParticipantId,
        req: KeyframeRequest,
    ) {
        let Some(target) = self.peers.get_mut(&subscriber).and_then(|p| {
            p.consumers
                .iter_mut()
                .find(|c| c.state.mid() == Some(req.mid))
                .map(|c| {
                    let allowed = c.keyframes.allow(now);
                    (c.publisher, c.producer_mid, c.current.or(c.target), allowed)
                })
        }) else {
            return;
        };
        if !target.3 {
            self.metrics.keyframe_requests_suppressed.inc();
            return;
        }
        // Paused: nothing to refresh.
        let Some(rid) = target.2 else {
            return;
        };
        self.request_keyframe(now, target.0, target.1, rid, req.kind);
    }

    pub(super) fn request_keyframe(
        &mut self,
        now: Instant,
        publisher: ParticipantId,
        mid: Mid,
        rid: Option<Rid>,
        kind: KeyframeRequestKind,
    ) {
        let Some(peer) = self.peers.get_mut(&publisher) else {
            return;
        };
        let Some(producer) = peer.producers.iter_mut().find(|p| p.mid == mid) else {
            return;
        };
        if producer.kind != MediaKind::Video {
            return;
        }
        let layer = producer.layer_mut(rid);
        if layer
            .last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_MIN_INTERVAL)
        {
            layer.keyframe_pending = Some(kind);
            if let Some(at) = layer.keyframe_due() {
                self.postponed_keyframes = Some(self.postponed_keyframes.map_or(at, |t| t.min(at)));
            }
            return;
        }
        layer.last_keyframe_request = Some(now);
        layer.keyframe_pending = None;
        if let Some(stream) = peer.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            stream.request_keyframe(kind);
        }
        self.mark_dirty(publisher);
    }
}
