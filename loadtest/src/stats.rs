//! What the tester measures: per received track (loss, jitter, latency), per participant (join
//! times), and over the whole run (throughput and latency per second).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Audio or video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Opus.
    Audio,
    /// VP8.
    Video,
}

/// A latency histogram in microseconds (1 µs to 60 s, 2 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// Receive statistics of one incoming RTP stream.
#[derive(Debug)]
pub struct TrackRx {
    /// Audio or video.
    pub kind: Kind,
    /// Who published it (participant id on Huddle, feed id on Janus).
    pub from: String,
    /// Its track id (the msid's second part) and the mid of its m-line, set by the receiver.
    pub track_id: String,
    /// See `track_id`.
    pub mid: String,
    clock_rate: f64,
    /// Packets received (duplicates included).
    pub packets: u64,
    /// Payload bytes received.
    pub bytes: u64,
    base_seq: Option<u64>,
    max_ext_seq: u64,
    /// Interarrival jitter (RFC 3550 §6.4.1), in RTP timestamp units.
    jitter: f64,
    last_transit: Option<i64>,
    /// First and highest stamp number seen, and how many stamps arrived (end-to-end loss).
    stamp_first: Option<u32>,
    stamp_max: u32,
    /// Stamped packets (audio) or frames (video) received.
    pub stamps: u64,
    /// Video key frames seen.
    pub keyframes: u64,
    /// End-to-end latency of this track, µs.
    pub latency: Histogram<u64>,
}

impl TrackRx {
    /// Empty statistics for a stream of `kind` at `clock_rate` Hz.
    pub fn new(kind: Kind, from: String, clock_rate: u32) -> Self {
        TrackRx {
            kind,
            from,
            track_id: String::new(),
            mid: String::new(),
            clock_rate: f64::from(clock_rate),
            packets: 0,
            bytes: 0,
            base_seq: None,
            max_ext_seq: 0,
            jitter: 0.0,
            last_transit: None,
            stamp_first: None,
            stamp_max: 0,
            stamps: 0,
            keyframes: 0,
            latency: new_histogram(),
        }
    }

    /// Accounts one packet that arrived at `arrival_us` (tester clock).
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, payload_len: usize, arrival_us: u64) {
        self.packets += 1;
        self.bytes += payload_len as u64;
        // Extend the 16-bit sequence number to the candidate nearest the highest one seen.
        match self.base_seq {
            None => {
                let e = (1u64 << 16) + u64::from(seq);
                self.base_seq = Some(e);
                self.max_ext_seq = e;
            }
            Some(_) => {
                let cand = (self.max_ext_seq & !0xffff) | u64::from(seq);
                let cands = [cand - (1 << 16), cand, cand + (1 << 16)];
                let e = *cands
                    .iter()
                    .min_by_key(|c| c.abs_diff(self.max_ext_seq))
                    .expect("three candidates");
                self.max_ext_seq = self.max_ext_seq.max(e);
            }
        }
        let arrival_ts = (arrival_us as f64 * self.clock_rate / 1e6) as i64;
        let transit = arrival_ts - i64::from(rtp_ts);
        if let Some(last) = self.last_transit {
            let d = (transit - last).unsigned_abs() as f64;
            // Differences of more than an hour mean a timestamp wrap: skip them.
            if d < self.clock_rate * 3600.0 {
                self.jitter += (d - self.jitter) / 16.0;
            }
        }
        self.last_transit = Some(transit);
    }

    /// Accounts one stamp number (see [`crate::media::Stamp`]).
    pub fn on_stamp(&mut self, n: u32) {
        self.stamps += 1;
        match self.stamp_first {
            None => {
                self.stamp_first = Some(n);
                self.stamp_max = n;
            }
            Some(f) => {
                if n < f {
                    // Earlier than the first one seen (reordering at the start).
                    self.stamp_first = Some(n);
                }
                self.stamp_max = self.stamp_max.max(n);
            }
        }
    }

    /// Stamped packets or frames the publisher sent since the first one received.
    pub fn stamps_expected(&self) -> u64 {
        self.stamp_first
            .map(|f| u64::from(self.stamp_max - f) + 1)
            .unwrap_or(0)
    }

    /// End-to-end losses: stamped packets or frames the publisher sent that never arrived.
    pub fn stamps_lost(&self) -> u64 {
        self.stamps_expected().saturating_sub(self.stamps)
    }

    /// Packets the sequence numbers say were sent since the first one received.
    pub fn expected(&self) -> u64 {
        match self.base_seq {
            Some(b) => self.max_ext_seq - b + 1,
            None => 0,
        }
    }

    /// Packets missing (never negative: duplicates do not hide losses of other packets).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.packets)
    }

    /// Jitter in milliseconds.
    pub fn jitter_ms(&self) -> f64 {
        self.jitter / self.clock_rate * 1000.0
    }
}

/// Counters and the latency histogram shared by every receiver, read once a second.
pub struct Totals {
    /// Packets received by all participants.
    pub packets: AtomicU64,
    /// Payload bytes received by all participants.
    pub bytes: AtomicU64,
    /// Packets sent by all publishers.
    pub sent_packets: AtomicU64,
    /// Latency samples of the current interval (µs); swapped out by the sampler.
    pub interval_latency: Mutex<Histogram<u64>>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            sent_packets: AtomicU64::new(0),
            interval_latency: Mutex::new(new_histogram()),
        }
    }
}

impl Totals {
    /// Counts one received packet.
    pub fn count(&self, bytes: usize) {
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records one latency sample.
    pub fn latency(&self, us: u64) {
        if let Ok(mut h) = self.interval_latency.lock() {
            let _ = h.record(us.max(1));
        }
    }
}

/// CPU time and resident memory of a process, from `/proc`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ProcSample {
    /// User plus system CPU time of all threads, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/stat` (utime, stime) and `/proc/PID/status` (VmRSS). `pid` may be `"self"`.
pub fn proc_sample(pid: &str) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_seconds: (utime + stime) as f64 / clock_ticks() as f64,
        rss_bytes: rss_kb * 1024,
    })
}

/// Raises the receive buffer of every UDP socket this process has to at least `bytes`
/// (`SO_RCVBUFFORCE`, which root may use beyond `net.core.rmem_max`, else `SO_RCVBUF` up to
/// it), so that a tester that falls behind for a moment does not drop what the server sent
/// (the `webrtc` crate makes its sockets itself, with the default buffer). Returns how many
/// sockets were raised.
pub fn raise_udp_rcvbuf(bytes: usize) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let get = |fd: libc::c_int, opt: libc::c_int| -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = int_len;
        // SAFETY: `v` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let mut raised = 0;
    for entry in dir.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<libc::c_int>() else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket || get(fd, libc::SO_TYPE) != Some(libc::SOCK_DGRAM) {
            continue;
        }
        // The kernel reports twice the size set (its bookkeeping).
        if get(fd, libc::SO_RCVBUF).is_some_and(|cur| cur / 2 >= want) {
            continue;
        }
        let set = |opt: libc::c_int| {
            // SAFETY: `want` is valid for reads of `int_len` bytes.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&want as *const libc::c_int).cast(),
                    int_len,
                )
            };
            rc == 0
        };
        if set(libc::SO_RCVBUFFORCE) || set(libc::SO_RCVBUF) {
            raised += 1;
        }
    }
    raised
}

fn clock_ticks() -> u64 {
    // USER_HZ is 100 on every Linux architecture this runs on; `getconf CLK_TCK` agrees.
    100
}

/// One second of the run.
#[derive(Clone, Debug, Serialize)]
pub struct Second {
    /// Seconds since the start of the run.
    pub t: f64,
    /// Participants that have joined so far.
    pub joined: usize,
    /// Packets received in this second, all participants.
    pub packets_per_sec: f64,
    /// Packets sent per second, all publishers.
    pub sent_per_sec: f64,
    /// Payload bits received per second, all participants.
    pub bits_per_sec: f64,
    /// Packets the WHEP viewers received in this second.
    pub whep_packets_per_sec: f64,
    /// Latency percentiles of this second, ms (None when no sample).
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub latency_p99_ms: Option<f64>,
    /// Server CPU use in this second, in cores (1.0 = one core busy).
    pub server_cores: Option<f64>,
    /// Server resident memory, bytes.
    pub server_rss_bytes: Option<u64>,
    /// The tester's own CPU use, in cores.
    pub tester_cores: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_gaps_across_a_sequence_wrap() {
        let mut t = TrackRx::new(Kind::Audio, "a".into(), 48_000);
        let mut seq: u16 = 65_530;
        for i in 0..20u32 {
            if i != 7 && i != 8 {
                t.on_packet(seq, i * 960, 50, u64::from(i) * 20_000);
            }
            seq = seq.wrapping_add(1);
        }
        assert_eq!(t.expected(), 20);
        assert_eq!(t.lost(), 2);
        assert!(t.jitter_ms() < 0.01, "perfectly paced: {}", t.jitter_ms());
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut t = TrackRx::new(Kind::Audio, "a".into(), 48_000);
        for i in 0..200u32 {
            // Every other packet 4 ms late.
            let late = if i % 2 == 1 { 4_000 } else { 0 };
            t.on_packet(i as u16, i * 960, 50, u64::from(i) * 20_000 + late);
        }
        assert!((t.jitter_ms() - 4.0).abs() < 0.2, "{}", t.jitter_ms());
    }

    #[test]
    fn udp_receive_buffers_are_raised() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        raise_udp_rcvbuf(1 << 20);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid pointers of the given sizes.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        // As root (SO_RCVBUFFORCE) the full size; otherwise at most net.core.rmem_max.
        let max: i32 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        assert!(v / 2 >= (1 << 20).min(max), "SO_RCVBUF {v}");
    }

    #[test]
    fn reads_its_own_proc_sample() {
        let s = proc_sample("self").unwrap();
        assert!(s.rss_bytes > 0);
    }
}
