use std::fmt;

use crate::MediaError;

/// A participant's id: one session in one room, assigned by signaling. Not the participant's
/// identity (the same person joining twice gets two ids).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ParticipantId(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PA_{:012x}", self.0)
    }
}

impl std::str::FromStr for ParticipantId {
    type Err = MediaError;
    fn from_str(s: &str) -> Result<Self, MediaError> {
        let bad = || MediaError::BadId("participant");
        let hex = s.strip_prefix("PA_").ok_or_else(bad)?;
        u64::from_str_radix(hex, 16)
            .map(ParticipantId)
            .map_err(|_| bad())
    }
}

/// A published track (a producer), unique within its media worker.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct TrackId(pub u64);

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TR_{:x}", self.0)
    }
}

impl std::str::FromStr for TrackId {
    type Err = MediaError;
    fn from_str(s: &str) -> Result<Self, MediaError> {
        let bad = || MediaError::BadId("track");
        let hex = s.strip_prefix("TR_").ok_or_else(bad)?;
        u64::from_str_radix(hex, 16).map(TrackId).map_err(|_| bad())
    }
}
