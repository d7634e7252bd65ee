//! # huddle-media: the selective forwarding unit
//!
//! Huddle forwards media between the participants of a room without decoding it. This crate is
//! that forwarder, split the way [quinn] and [str0m] split a protocol from its I/O:
//!
//! * [`Sfu`] is the **sans-IO core** of one media worker. It owns one [`str0m::Rtc`] per
//!   participant, the rooms ([`Router`]s, in mediasoup's words), the tracks each participant
//!   publishes (producers) and the copies of those tracks sent to each subscriber (consumers).
//!   It never touches a socket or a clock: the caller hands it datagrams and the current time and
//!   takes back datagrams to send, events for signaling, and the next time it wants to be woken.
//! * [`worker`] is the **thin driver**: one OS thread per media worker, each owning one UDP socket
//!   and one [`Sfu`]. Signaling talks to it through [`MediaHandle`] commands; per-participant
//!   [`PeerEvent`]s come back on a channel the participant's session gave at creation.
//!
//! A room is placed on the least-loaded worker when it starts and stays there, so the
//! per-packet path (a batched socket read → `Sfu::handle_receive` → writes into the
//! subscribers' `Rtc`s → batched socket writes) runs on one thread with no lock and no channel.
//!
//! ## What the core does per packet
//! A datagram is demultiplexed by its source address (learned from ICE connectivity checks),
//! fed to that participant's `Rtc`, and whatever media frame comes out is written, as is, to each
//! consumer of that producer (`Rtc` then packetizes, paces, keeps a NACK buffer and answers NACKs).
//! A new consumer, a gap in the incoming stream, or a subscriber's PLI/FIR asks the publisher for
//! a keyframe, at most once per [`KEYFRAME_MIN_INTERVAL`] per producer.
//!
//! [quinn]: https://docs.rs/quinn-proto
//! [str0m]: https://docs.rs/str0m
#![deny(missing_docs)]

pub mod capture;
mod error;
mod ids;
mod layers;
mod metrics;
pub mod recording;
mod sfu;
mod speakers;
pub mod worker;

pub use error::{MediaError, Refusal};
pub use ids::{ParticipantId, TrackId};
pub use layers::{Quality, Source};
pub use metrics::MediaMetrics;
pub use sfu::{
    CloseReason, Follow, Grants, Output, PeerEvent, Router, Sfu, SfuConfig, SlotInfo, SlotTrack,
    TrackKind, KEYFRAME_MIN_INTERVAL,
};
pub use speakers::Speaker;
pub use worker::{MediaConfig, MediaHandle};

/// Installs str0m's process-wide crypto provider. Call once before any [`Sfu`] is created
/// (the worker does it for you).
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| str0m::crypto::from_feature_flags().install_process_default());
}
