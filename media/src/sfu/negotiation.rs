//! Negotiation: giving each consumer a send slot (an m-line) in its subscriber's connection.
//!
//! A consumer first looks for a free slot of its kind, negotiated earlier and freed when its
//! producer left; it takes it at once, with no offer (the subscriber learns what the slot
//! carries from a [`PeerEvent::Slots`]). Only consumers that find none get new m-lines, in one
//! server offer at a time. So a subscriber's SDP is bounded by the most tracks it was sent at
//! once, and str0m never holds a stopped stream.

use std::time::Instant;

use str0m::media::{Direction, MediaKind};

use super::{track_kind, ConsumerState, Output, PeerEvent, Sfu, Slot, SlotInfo, SlotTrack};
use crate::ParticipantId;

impl Sfu {
    /// Puts waiting consumers on free slots, makes a server offer for the rest (and for an ICE
    /// restart) when none is pending, and tells the client what changed.
    pub(super) fn negotiate_if_needed(&mut self, now: Instant, pid: ParticipantId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if !std::mem::take(&mut peer.negotiate) {
            return;
        }
        if peer.viewer.is_some() {
            return self.assign_viewer_slots(now, pid);
        }
        // Free slots first.
        for ci in 0..peer.consumers.len() {
            let c = &peer.consumers[ci];
            if c.state != ConsumerState::ToOpen {
                continue;
            }
            let Some(si) = peer
                .slots
                .iter()
                .position(|s| s.open && s.consumer.is_none() && s.kind == c.kind)
            else {
                continue;
            };
            let slot = &mut peer.slots[si];
            slot.consumer = Some((c.publisher, c.producer_mid));
            let c = &mut peer.consumers[ci];
            c.state = ConsumerState::Open(slot.mid);
            c.slot = Some(si);
            peer.slots_changed.push(si);
            if c.kind == MediaKind::Video {
                // Its layer is chosen, and a keyframe asked for, before the next output.
                self.realloc = true;
            }
        }
        // New m-lines for the rest.
        let mut offer_sdp = None;
        let waiting = peer
            .consumers
            .iter()
            .any(|c| c.state == ConsumerState::ToOpen);
        if peer.pending.is_none() && (peer.ice_restart || waiting) {
            let mut change = peer.rtc.sdp_api();
            let mut restarted = None;
            if std::mem::take(&mut peer.ice_restart) {
                // New ICE credentials; the host candidates stay.
                restarted = Some(change.ice_restart(true).ufrag);
            }
            let mut planned = Vec::new();
            for (i, c) in peer.consumers.iter().enumerate() {
                if c.state == ConsumerState::ToOpen {
                    let mid = change.add_media(
                        c.kind,
                        Direction::SendOnly,
                        Some(c.publisher.to_string()),
                        Some(c.producer.to_string()),
                        None,
                    );
                    planned.push((Some(i), mid, c.kind));
                }
            }
            // A kind that ran out of slots grows by spares too, so that the next few tracks
            // (the rest of a meeting arriving) take slots without an offer each.
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let wanted = planned.iter().filter(|(_, _, k)| *k == kind).count();
                if wanted == 0 {
                    continue;
                }
                let existing = peer.slots.iter().filter(|s| s.kind == kind).count();
                for _ in 0..spare_slots(existing, wanted) {
                    let mid = change.add_media(kind, Direction::SendOnly, None, None, None);
                    planned.push((None, mid, kind));
                }
            }
            if let Some((offer, pending)) = change.apply() {
                if let Some(ufrag) = restarted {
                    // The new credentials name this connection from now on; the last few old
                    // ones too, since checks with them may still be on their way.
                    self.by_ufrag.insert(ufrag.clone(), pid);
                    peer.ufrags.push(ufrag);
                    if peer.ufrags.len() > 3 {
                        let old = peer.ufrags.remove(0);
                        self.by_ufrag.remove(&old);
                    }
                }
                for (i, mid, kind) in planned {
                    let consumer = i.map(|i| {
                        let c = &mut peer.consumers[i];
                        c.state = ConsumerState::Negotiating(mid);
                        c.slot = Some(peer.slots.len());
                        (c.publisher, c.producer_mid)
                    });
                    peer.slots_changed.push(peer.slots.len());
                    peer.slots.push(Slot {
                        mid,
                        kind,
                        open: false,
                        consumer,
                        out: Default::default(),
                        ssrc: None,
                    });
                }
                peer.pending = Some(pending);
                let sdp = offer.to_sdp_string();
                peer.pending_sdp = Some(sdp.clone());
                offer_sdp = Some(sdp);
            }
        }
        self.emit_slots(pid);
        if let Some(sdp) = offer_sdp {
            self.out
                .push_back(Output::Event(pid, PeerEvent::Offer { sdp }));
        }
    }

    /// Sends the participant a [`PeerEvent::Slots`] for the slots that changed.
    pub(super) fn emit_slots(&mut self, pid: ParticipantId) {
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        if peer.slots_changed.is_empty() {
            return;
        }
        let mut changed = std::mem::take(&mut peer.slots_changed);
        changed.sort_unstable();
        changed.dedup();
        let mut slots = Vec::with_capacity(changed.len());
        for i in changed {
            let Some(slot) = peer.slots.get(i) else {
                continue;
            };
            let track = slot.consumer.and_then(|key| {
                let c = &peer.consumers[*peer.consumer_index.get(&key)?];
                Some(SlotTrack {
                    participant: c.publisher,
                    track_id: c.producer,
                    source: c.source,
                })
            });
            slots.push(SlotInfo {
                mid: slot.mid.to_string(),
                kind: track_kind(slot.kind),
                track,
            });
        }
        self.out
            .push_back(Output::Event(pid, PeerEvent::Slots { slots }));
    }
}

/// How many spare slots of a kind an offer adds beside the `wanted` new ones, when the
/// subscriber already has `existing`: half of what it will have, at least 2 and at most
/// [`MAX_SPARE_SLOTS`]. A meeting filling up then costs each subscriber a handful of offers,
/// not one per arrival, and the SDP stays within the peak number of tracks plus that margin.
pub(super) fn spare_slots(existing: usize, wanted: usize) -> usize {
    ((existing + wanted) / 2).clamp(2, MAX_SPARE_SLOTS)
}

/// The most spare slots of one kind an offer adds.
pub(super) const MAX_SPARE_SLOTS: usize = 8;

#[cfg(test)]
mod tests {
    use super::spare_slots;

    #[test]
    fn a_meeting_filling_up_costs_a_subscriber_a_few_offers() {
        // Arrivals one at a time: count the offers until 24 tracks of a kind are held.
        let (mut slots, mut offers) = (0, 0);
        for held in 1..=24 {
            if held > slots {
                slots += 1 + spare_slots(slots, 1);
                offers += 1;
            }
        }
        assert!(offers <= 6, "{offers} offers for 24 arrivals");
        assert!(slots <= 24 + 8, "{slots} slots for 24 tracks");
        assert_eq!(spare_slots(0, 1), 2);
        assert_eq!(spare_slots(40, 2), 8);
    }
}
