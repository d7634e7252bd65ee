//! Receive-only viewers (WHEP): connections whose m-lines are fixed by their own offer.
//!
//! A WHEP client offers once and never renegotiates, so a viewer's slots are exactly the
//! receiving m-lines of its offer, and the server never makes it an offer. Every track of the
//! room becomes a consumer as for anyone else, but only as many of each kind are on a slot as
//! the offer has m-lines of that kind: the ones whose publishers spoke most recently (a viewer
//! with one video m-line sees the active speaker, and one with four audio m-lines hears the
//! last four speakers), or only one participant's, when the viewer follows one. A slot that
//! changes hands switches like any reused slot: a keyframe of the new producer, continuous
//! sequence numbers and rebased timestamps (see [`super::rtp::Rewrite`]).

use std::cmp::Reverse;
use std::collections::HashSet;
use std::time::Instant;

use str0m::media::{MediaKind, Mid};

use super::{ConsumerState, Sfu, Source};
use crate::ParticipantId;

/// Whose tracks a viewer is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// The room's most recent speakers, loudest first: the video m-line switches to whoever
    /// speaks.
    ActiveSpeaker,
    /// One participant's tracks only.
    Participant(ParticipantId),
}

/// A viewer's state beside its connection.
#[derive(Debug, Clone)]
pub(super) struct Viewer {
    pub(super) follow: Follow,
    /// Publishers by how recently they were the room's loudest speaker, most recent first.
    recent: Vec<ParticipantId>,
}

impl Viewer {
    pub(super) fn new(follow: Follow) -> Self {
        Viewer {
            follow,
            recent: Vec::new(),
        }
    }

    /// The room's speakers changed (loudest first): they move to the front, in that order.
    /// Returns whether the order changed.
    pub(super) fn spoke(&mut self, speakers: &[ParticipantId]) -> bool {
        if self.recent.starts_with(speakers) {
            return false;
        }
        for p in speakers.iter().rev() {
            self.recent.retain(|q| q != p);
            self.recent.insert(0, *p);
        }
        // Bounded by the room: a departed publisher has no consumer left to rank, and a
        // room of 25 keeps at most a few dozen ids here.
        self.recent.truncate(64);
        true
    }

    /// Sort key of a publisher: recent speakers first, then everyone else in join order.
    fn rank(&self, publisher: ParticipantId) -> usize {
        self.recent
            .iter()
            .position(|p| *p == publisher)
            .unwrap_or(usize::MAX)
    }
}

impl Sfu {
    /// Puts a viewer's chosen consumers on its slots and takes the others off (see the module
    /// docs). A viewer gets no offer and no [`super::PeerEvent::Slots`]: its client cannot
    /// renegotiate, and it learns who is on a slot from the media itself.
    pub(super) fn assign_viewer_slots(&mut self, now: Instant, pid: ParticipantId) {
        // Which of the room's producers send (a web client's screen m-line exists, idle, all
        // the time it does not share): only those are worth a slot.
        let Some(room) = self.peers.get(&pid).map(|p| p.room.clone()) else {
            return;
        };
        let mut live: HashSet<(ParticipantId, Mid)> = HashSet::new();
        if let Some(router) = self.routers.get(&*room) {
            for m in &router.members {
                if let Some(p) = self.peers.get(m) {
                    for prod in &p.producers {
                        if prod.layers.iter().any(|l| l.available(now)) {
                            live.insert((*m, prod.mid));
                        }
                    }
                }
            }
        }
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let Some(viewer) = peer.viewer.as_ref() else {
            return;
        };
        for kind in [MediaKind::Audio, MediaKind::Video] {
            let slots = peer.slots.iter().filter(|s| s.kind == kind).count();
            let mut wanted: Vec<usize> = (0..peer.consumers.len())
                .filter(|&i| {
                    let c = &peer.consumers[i];
                    c.kind == kind
                        && match viewer.follow {
                            Follow::ActiveSpeaker => true,
                            Follow::Participant(p) => c.publisher == p,
                        }
                })
                .collect();
            // Tracks that arrive first, then recent speakers; a screen share before its
            // publisher's camera; ties keep join order.
            wanted.sort_by_key(|&i| {
                let c = &peer.consumers[i];
                (
                    !live.contains(&(c.publisher, c.producer_mid)),
                    viewer.rank(c.publisher),
                    Reverse(c.source == Source::Screen),
                    i,
                )
            });
            wanted.truncate(slots);
            // Off their slots first, so that the chosen ones find them free.
            for ci in 0..peer.consumers.len() {
                let c = &mut peer.consumers[ci];
                if c.kind != kind || wanted.contains(&ci) {
                    continue;
                }
                if let Some(si) = c.slot.take() {
                    if let Some(slot) = peer.slots.get_mut(si) {
                        slot.consumer = None;
                    }
                }
                c.state = ConsumerState::ToOpen;
                c.current = None;
                c.rewrite = None;
            }
            for &ci in &wanted {
                if peer.consumers[ci].slot.is_some() {
                    continue;
                }
                let Some(si) = peer
                    .slots
                    .iter()
                    .position(|s| s.kind == kind && s.consumer.is_none())
                else {
                    continue;
                };
                let c = &mut peer.consumers[ci];
                let slot = &mut peer.slots[si];
                slot.consumer = Some((c.publisher, c.producer_mid));
                c.state = ConsumerState::Open(slot.mid);
                c.slot = Some(si);
                c.current = None;
                c.rewrite = None;
                if kind == MediaKind::Video {
                    // Its layer is chosen, and a keyframe asked for, before the next output.
                    self.realloc = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Follow, Viewer};
    use crate::ParticipantId;

    #[test]
    fn the_latest_speakers_come_first_loudest_first() {
        let (a, b, c) = (ParticipantId(1), ParticipantId(2), ParticipantId(3));
        let mut v = Viewer::new(Follow::ActiveSpeaker);
        assert_eq!(v.rank(a), usize::MAX, "nobody spoke yet");
        assert!(v.spoke(&[a]));
        assert!(v.spoke(&[b, c]));
        assert_eq!((v.rank(b), v.rank(c), v.rank(a)), (0, 1, 2));
        assert!(!v.spoke(&[]), "silence keeps the order");
        assert!(!v.spoke(&[b]), "the same speaker again");
        assert!(v.spoke(&[a]));
        assert_eq!((v.rank(a), v.rank(b), v.rank(c)), (0, 1, 2));
    }
}
