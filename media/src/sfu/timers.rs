//! When each connection wants its next timeout, kept in a heap so that neither
//! [`Sfu::poll_timeout`](super::Sfu::poll_timeout) nor
//! [`Sfu::handle_timeout`](super::Sfu::handle_timeout) scans every connection.
//!
//! Each peer holds the time str0m last asked for (`next_timeout`) and the earliest entry it has
//! in the heap (`scheduled`). A later wish needs no new entry: when the earlier one comes up it
//! is pushed again at the peer's current wish. An earlier wish pushes a new entry; the old one
//! is then stale and skipped when it comes up. So the heap holds about one entry per peer.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap as HashMap;
use std::time::Instant;

use super::Peer;
use crate::ParticipantId;

/// The per-peer half of the bookkeeping.
#[derive(Debug)]
pub(super) struct PeerTimer {
    /// What str0m last asked for.
    pub(super) next_timeout: Instant,
    /// This peer's earliest live entry in the heap.
    scheduled: Option<Instant>,
}

impl PeerTimer {
    pub(super) fn new(now: Instant) -> Self {
        PeerTimer {
            next_timeout: now,
            scheduled: None,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
}

impl Timers {
    /// The peer wants a timeout at `at`.
    pub(super) fn schedule(&mut self, pid: ParticipantId, timer: &mut PeerTimer, at: Instant) {
        timer.next_timeout = at;
        if timer.scheduled.is_none_or(|s| at < s) {
            timer.scheduled = Some(at);
            self.heap.push(Reverse((at, pid)));
        }
    }

    /// The earliest entry (possibly stale: waking for it is harmless).
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Pops the peers whose timeout is due at `now` into `due`. Gone peers' entries are dropped. Entries that turn out to be early are pushed again at the
    /// peer's current wish.
    pub(super) fn pop_due(
        &mut self,
        now: Instant,
        peers: &mut HashMap<ParticipantId, Peer>,
        due: &mut Vec<ParticipantId>,
    ) {
        let mut again = Vec::new();
        while let Some(Reverse((t, pid))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            let Some(timer) = peers.get_mut(&pid).map(|p| &mut p.timer) else {
                continue;
            };
            if timer.scheduled != Some(t) {
                continue; // stale: a newer, earlier entry was pushed and has come up already
            }
            timer.scheduled = None;
            if timer.next_timeout <= now {
                due.push(pid);
            } else {
                again.push((pid, timer.next_timeout));
                timer.scheduled = Some(timer.next_timeout);
            }
        }
        for (pid, at) in again {
            self.heap.push(Reverse((at, pid)));
        }
    }
}
