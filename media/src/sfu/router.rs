//! A room's media on this worker (mediasoup's Router): its members, speakers and qualities.

#[allow(unused_imports)]
use super::*;

/// A room's media: who is in it and which tracks they publish (mediasoup's Router).
#[derive(Debug)]
pub struct Router {
    pub(super) members: Vec<ParticipantId>,
    pub(super) speakers: SpeakerDetector,
    pub(super) next_quality: Instant,
    pub(super) last_quality: Vec<(ParticipantId, Quality)>,
    pub(super) last_quality_sent: Option<Instant>,
}

impl Router {
    pub(super) fn new(now: Instant) -> Self {
        Router {
            members: Vec::new(),
            speakers: SpeakerDetector::new(now),
            next_quality: now + QUALITY_INTERVAL,
            last_quality: Vec::new(),
            last_quality_sent: None,
        }
    }

    /// The participants whose media connections are in this room.
    pub fn members(&self) -> &[ParticipantId] {
        &self.members
    }
}
