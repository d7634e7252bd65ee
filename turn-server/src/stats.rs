//! Counters the binary can read at any time (e.g. to export Prometheus metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a running server. All counters only grow, except
/// `allocations_active`, which is a gauge.
#[derive(Debug, Default)]
pub struct TurnStats {
    /// Allocations alive now (gauge).
    pub allocations_active: AtomicU64,
    /// Allocations ever created.
    pub allocations_total: AtomicU64,
    /// Requests refused with 401 because the credentials were wrong, unknown
    /// or expired (the first, credential-less challenge is not counted).
    pub auth_failures: AtomicU64,
    /// CreatePermission / ChannelBind requests refused with 403 and Send
    /// indications dropped by the peer policy.
    pub permission_refusals: AtomicU64,
    /// Allocate requests refused with 486 (user quota) or 508 (total quota,
    /// no free relay port).
    pub quota_refusals: AtomicU64,
    /// Unauthenticated requests dropped by the per-IP rate limit.
    pub rate_limited: AtomicU64,
    /// Datagrams or stream frames dropped because they were not valid STUN or
    /// ChannelData.
    pub malformed_dropped: AtomicU64,
    /// Data dropped by the relay: no allocation, channel or permission, over
    /// the bandwidth cap, or a full send queue.
    pub relay_dropped: AtomicU64,
    /// Datagrams relayed from clients to peers.
    pub packets_to_peer: AtomicU64,
    /// Payload bytes relayed from clients to peers.
    pub bytes_to_peer: AtomicU64,
    /// Datagrams relayed from peers to clients.
    pub packets_to_client: AtomicU64,
    /// Payload bytes relayed from peers to clients.
    pub bytes_to_client: AtomicU64,
}

/// A plain copy of [`TurnStats`] at one moment; see there for each field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnStatsSnapshot {
    /// Allocations alive now.
    pub allocations_active: u64,
    /// Allocations ever created.
    pub allocations_total: u64,
    /// Requests refused for wrong, unknown or expired credentials.
    pub auth_failures: u64,
    /// Requests and Send indications refused by the peer policy.
    pub permission_refusals: u64,
    /// Allocations refused by a quota or for want of a relay port.
    pub quota_refusals: u64,
    /// Unauthenticated requests dropped by the per-IP rate limit.
    pub rate_limited: u64,
    /// Malformed datagrams or frames dropped.
    pub malformed_dropped: u64,
    /// Data the relay dropped (no permission/channel, bandwidth cap, full queue).
    pub relay_dropped: u64,
    /// Datagrams relayed from clients to peers.
    pub packets_to_peer: u64,
    /// Payload bytes relayed from clients to peers.
    pub bytes_to_peer: u64,
    /// Datagrams relayed from peers to clients.
    pub packets_to_client: u64,
    /// Payload bytes relayed from peers to clients.
    pub bytes_to_client: u64,
}

impl TurnStats {
    /// Reads every counter (relaxed; the values are not a consistent cut).
    pub fn snapshot(&self) -> TurnStatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TurnStatsSnapshot {
            allocations_active: r(&self.allocations_active),
            allocations_total: r(&self.allocations_total),
            auth_failures: r(&self.auth_failures),
            permission_refusals: r(&self.permission_refusals),
            quota_refusals: r(&self.quota_refusals),
            rate_limited: r(&self.rate_limited),
            malformed_dropped: r(&self.malformed_dropped),
            relay_dropped: r(&self.relay_dropped),
            packets_to_peer: r(&self.packets_to_peer),
            bytes_to_peer: r(&self.bytes_to_peer),
            packets_to_client: r(&self.packets_to_client),
            bytes_to_client: r(&self.bytes_to_client),
        }
    }
}

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub(crate) fn dec(counter: &AtomicU64) {
    counter.fetch_sub(1, Ordering::Relaxed);
}
