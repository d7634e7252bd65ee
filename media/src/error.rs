use crate::ParticipantId;

/// Everything that can go wrong in the media crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The SDP text did not parse.
    #[error("the SDP could not be parsed: {0}")]
    SdpParse(String),
    /// The SDP parsed but could not be applied to the connection.
    #[error("the SDP could not be applied: {0}")]
    SdpApply(String),
    /// An answer came while no offer of ours was waiting for one.
    #[error("no offer is waiting for an answer")]
    NoPendingOffer,
    /// The client sent a second offer: in Huddle's protocol the client offers once, then the
    /// server makes every later offer.
    #[error("the connection already exists; only the server offers after the first offer")]
    AlreadyConnected,
    /// An ICE candidate did not parse.
    #[error("the ICE candidate could not be parsed")]
    BadCandidate,
    /// A command named a participant this worker does not know.
    #[error("unknown participant {0}")]
    UnknownParticipant(ParticipantId),
    /// Text that is not a participant or track id of ours (`PA_` or `TR_` and hex).
    #[error("not a {0} id")]
    BadId(&'static str),
    /// The media worker has stopped.
    #[error("the media worker has stopped")]
    WorkerGone,
    /// Binding or using a media socket failed.
    #[error("media socket: {0}")]
    Io(#[from] std::io::Error),
}

/// What signaling tells a client when media refuses one of its commands: the kind of refusal,
/// typed, so that nothing is matched by text. The detail (the [`MediaError`]'s text, which may
/// name parser internals) travels beside it for the log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The client's first offer did not parse or could not be applied: no connection exists,
    /// and a corrected offer is taken.
    Offer,
    /// An answer to a server offer did not parse or could not be applied.
    Answer,
    /// A trickled ICE candidate did not parse.
    Candidate,
    /// A published track over the per-participant limit: it is not forwarded.
    TooManyTracks {
        /// The limit.
        max: usize,
    },
    /// Anything else (the worker is gone, an unknown participant).
    Internal,
}

impl From<&MediaError> for Refusal {
    fn from(e: &MediaError) -> Self {
        match e {
            MediaError::SdpParse(_)
            | MediaError::SdpApply(_)
            | MediaError::NoPendingOffer
            | MediaError::AlreadyConnected => Refusal::Answer,
            MediaError::BadCandidate => Refusal::Candidate,
            _ => Refusal::Internal,
        }
    }
}
