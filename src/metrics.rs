//! Wiring of the metrics that are not signaling's or media's own: the bundled TURN server's
//! counters (read from its atomics at scrape time) and the process (CPU, memory, fds).

use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

/// Adds the TURN collector (when TURN runs) and the process collector to the `/metrics` registry.
pub fn register(
    registry: &prometheus::Registry,
    turn: Option<Arc<huddle_turn::TurnStats>>,
) -> prometheus::Result<()> {
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    if let Some(stats) = turn {
        registry.register(Box::new(TurnCollector::new(stats)?))?;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        registry.register(Box::new(TasksCollector::new(handle)?))?;
    }
    Ok(())
}

/// `huddle_runtime_tasks_alive`: tasks alive on the main tokio runtime (one per signaling
/// connection and a few per room and node), read when scraped, so that a leak shows.
struct TasksCollector {
    handle: tokio::runtime::Handle,
    gauge: IntGauge,
}

impl TasksCollector {
    fn new(handle: tokio::runtime::Handle) -> prometheus::Result<Self> {
        Ok(TasksCollector {
            handle,
            gauge: IntGauge::new(
                "huddle_runtime_tasks_alive",
                "Tasks alive on the server's main tokio runtime (the media workers run their own).",
            )?,
        })
    }
}

impl Collector for TasksCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.gauge
            .set(self.handle.metrics().num_alive_tasks() as i64);
        self.gauge.collect()
    }
}

/// Reads [`huddle_turn::TurnStats`] when scraped: the TURN relay counts with plain atomics and
/// knows nothing of Prometheus.
struct TurnCollector {
    stats: Arc<huddle_turn::TurnStats>,
    /// Serialises scrapes, so two at once cannot both add the same delta.
    lock: Mutex<()>,
    allocations: IntGauge,
    allocations_total: IntCounter,
    auth_failures: IntCounter,
    permission_refusals: IntCounter,
    quota_refusals: IntCounter,
    rate_limited: IntCounter,
    malformed: IntCounter,
    relay_dropped: IntCounter,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    descs: Vec<Desc>,
}

impl TurnCollector {
    fn new(stats: Arc<huddle_turn::TurnStats>) -> prometheus::Result<Self> {
        let c = |name: &str, help: &str| IntCounter::new(name, help);
        let dir =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["direction"]);
        let t = TurnCollector {
            stats,
            lock: Mutex::new(()),
            allocations: IntGauge::new("huddle_turn_allocations", "TURN allocations alive now.")?,
            allocations_total: c(
                "huddle_turn_allocations_total",
                "TURN allocations ever created.",
            )?,
            auth_failures: c(
                "huddle_turn_auth_failures_total",
                "TURN requests refused for wrong, unknown or expired credentials.",
            )?,
            permission_refusals: c(
                "huddle_turn_permission_refusals_total",
                "TURN permissions, channel binds and sends refused by the peer policy.",
            )?,
            quota_refusals: c(
                "huddle_turn_quota_refusals_total",
                "TURN allocations refused by a quota or for want of a relay port.",
            )?,
            rate_limited: c(
                "huddle_turn_rate_limited_total",
                "Unauthenticated TURN requests dropped by the per-address rate limit.",
            )?,
            malformed: c(
                "huddle_turn_malformed_total",
                "TURN datagrams or stream frames dropped as neither STUN nor ChannelData.",
            )?,
            relay_dropped: c(
                "huddle_turn_relay_dropped_total",
                "Data the TURN relay dropped: no permission or channel, bandwidth cap, full queue.",
            )?,
            packets: dir(
                "huddle_turn_relayed_packets_total",
                "Datagrams relayed by TURN: direction=to_peer (client to peer), to_client.",
            )?,
            bytes: dir(
                "huddle_turn_relayed_bytes_total",
                "Payload bytes relayed by TURN: direction=to_peer (client to peer), to_client.",
            )?,
            descs: Vec::new(),
        };
        let descs = t.parts().iter().flat_map(|c| c.desc()).cloned().collect();
        Ok(TurnCollector { descs, ..t })
    }

    fn parts(&self) -> [&dyn Collector; 10] {
        [
            &self.allocations,
            &self.allocations_total,
            &self.auth_failures,
            &self.permission_refusals,
            &self.quota_refusals,
            &self.rate_limited,
            &self.malformed,
            &self.relay_dropped,
            &self.packets,
            &self.bytes,
        ]
    }
}

/// Brings a counter up to a cumulative value read elsewhere.
fn catch_up(c: &IntCounter, total: u64) {
    c.inc_by(total.saturating_sub(c.get()));
}

impl Collector for TurnCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let s = self.stats.snapshot();
        self.allocations
            .set(i64::try_from(s.allocations_active).unwrap_or(i64::MAX));
        catch_up(&self.allocations_total, s.allocations_total);
        catch_up(&self.auth_failures, s.auth_failures);
        catch_up(&self.permission_refusals, s.permission_refusals);
        catch_up(&self.quota_refusals, s.quota_refusals);
        catch_up(&self.rate_limited, s.rate_limited);
        catch_up(&self.malformed, s.malformed_dropped);
        catch_up(&self.relay_dropped, s.relay_dropped);
        catch_up(
            &self.packets.with_label_values(&["to_peer"]),
            s.packets_to_peer,
        );
        catch_up(
            &self.packets.with_label_values(&["to_client"]),
            s.packets_to_client,
        );
        catch_up(&self.bytes.with_label_values(&["to_peer"]), s.bytes_to_peer);
        catch_up(
            &self.bytes.with_label_values(&["to_client"]),
            s.bytes_to_client,
        );
        self.parts().iter().flat_map(|c| c.collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn turn_counters_follow_the_atomics() {
        let stats = Arc::new(huddle_turn::TurnStats::default());
        let r = prometheus::Registry::new();
        register(&r, Some(stats.clone())).expect("registers");
        stats.allocations_total.store(3, Ordering::Relaxed);
        stats.allocations_active.store(2, Ordering::Relaxed);
        stats.bytes_to_peer.store(1000, Ordering::Relaxed);
        let scrape = || {
            prometheus::TextEncoder::new()
                .encode_to_string(&r.gather())
                .expect("encodes")
        };
        let text = scrape();
        assert!(text.contains("huddle_turn_allocations 2"), "{text}");
        assert!(text.contains("huddle_turn_allocations_total 3"), "{text}");
        assert!(text.contains("huddle_turn_relayed_bytes_total{direction=\"to_peer\"} 1000"));
        stats.allocations_total.store(5, Ordering::Relaxed);
        assert!(scrape().contains("huddle_turn_allocations_total 5"));
        assert!(
            scrape().contains("huddle_turn_allocations_total 5"),
            "no double counting"
        );
    }
}
