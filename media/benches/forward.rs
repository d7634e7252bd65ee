//! The SFU's forwarding hot path, measured: one SRTP-protected audio packet from a publisher in,
//! one SRTP-protected copy out per subscriber, through the real [`Sfu`] core.
//!
//! The call is set up outside the measurement, over the in-memory network on virtual time that the
//! core's tests use (`tests/harness/mod.rs`): P publishers, N subscribers, all str0m client peers that
//! did real ICE, DTLS and SDP with the core. Group `forward_audio_packet` has P = 1 and N = 1,
//! 10, 40; group `audio_room_tick` is the load tester's audio scenario, P = 10 and N = 40;
//! group `meeting_tick` is a meeting of 25, each participant publishing audio and receiving
//! the 24 others (600 copies per tick).
//! Each iteration then:
//!
//! * (not timed) each publisher's `Rtc` writes one 20 ms Opus-sized frame and seals it; every
//!   client's pending datagrams (the media packet, and now and then RTCP: receiver reports,
//!   TWCC feedback, STUN consent checks from the subscribers) are collected;
//! * (timed) the core takes those datagrams (`Sfu::handle_receive`), then runs its timers up to
//!   the next tick, each when the core asks for it (rounded up to a whole millisecond, as the
//!   driver's tokio timer does; `Sfu::handle_timeout`: str0m's pacer, BWE, stats, the room's
//!   ticks), and every datagram it produces is drained (`Sfu::poll_output`);
//! * (not timed) the subscribers receive and decrypt the copies, and virtual time moves 20 ms.
//!
//! So the figure is the core's CPU time per forwarded packet, its share of RTCP and timers
//! included, at P audio streams of 50 packets per second; the socket calls are not in it
//! (`huddle-loadtest floor` measures those). Throughput is P × N elements per iteration:
//! criterion's "thrpt" is forwarded packets per second of the core's time.
//!
//!     cargo bench -p huddle-media --bench forward

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use harness::{Net, Publish};
use huddle_media::{Grants, Output};
use str0m::media::MediaTime;

/// One audio frame every 20 ms, as a browser sends Opus.
const FRAME: Duration = Duration::from_millis(20);

/// One room: the first `publishers` clients publish audio (and subscribe to nothing, like the
/// load tester's audio scenario), the others subscribe.
struct Call {
    net: Net,
    publishers: usize,
    /// Index of the first client that receives (0 in a meeting: everyone does).
    first_receiver: usize,
    frame_no: u64,
    /// `Sfu::handle_timeout` calls in the measured ticks.
    timeouts: u64,
    /// RTP/RTCP datagrams the core sent (first byte 128..=191), for the sanity check.
    srtp_out: u64,
}

impl Deref for Call {
    type Target = Net;
    fn deref(&self) -> &Net {
        &self.net
    }
}

impl DerefMut for Call {
    fn deref_mut(&mut self) -> &mut Net {
        &mut self.net
    }
}

impl Call {
    fn new(publishers: usize, subscribers: usize) -> Call {
        Call::build(publishers, subscribers, false)
    }

    /// A meeting: `n` clients that each publish audio and receive everyone else's.
    fn meeting(n: usize) -> Call {
        Call::build(n, 0, true)
    }

    fn build(publishers: usize, subscribers: usize, meeting: bool) -> Call {
        let mut net = Net::new();
        // Only counted: the bench keeps no frames.
        net.record = false;
        let mut call = Call {
            net,
            publishers,
            first_receiver: if meeting { 0 } else { publishers },
            frame_no: 0,
            timeouts: 0,
            srtp_out: 0,
        };
        for _ in 0..publishers {
            call.net.join_with(
                Publish::AUDIO,
                Grants {
                    publish: true,
                    subscribe: meeting,
                    ..Grants::default()
                },
            );
        }
        for _ in 0..subscribers {
            call.net.join_with(
                Publish::NOTHING,
                Grants {
                    publish: false,
                    subscribe: true,
                    ..Grants::default()
                },
            );
        }
        // ICE, DTLS, the answers and the SFU's renegotiations for the consumers.
        for _ in 0..600 {
            call.net.step(Duration::from_millis(5));
            if call.clients.iter().all(|c| c.connected)
                && call.net.clients[..publishers]
                    .iter_mut()
                    .all(|c| c.writer_ready())
            {
                break;
            }
        }
        assert!(
            call.clients.iter().all(|c| c.connected),
            "every client connected"
        );
        call
    }

    /// Every publisher writes its next 20 ms frame (an Opus-sized payload).
    fn speak(&mut self) {
        let n = self.frame_no;
        self.frame_no += 1;
        for i in 0..self.publishers {
            let mut frame = vec![0xfc];
            frame.extend((0..79u64).map(|i| (i ^ n) as u8));
            self.net
                .write_audio(i, MediaTime::from_90khz(n * 1800), None, frame);
        }
    }

    /// One iteration (one 20 ms tick: a packet from every publisher): returns the time the
    /// core spent.
    fn tick(&mut self) -> Duration {
        self.speak();
        self.net.collect();
        let net = &mut self.net;
        let start = Instant::now();
        for (from, data) in net.to_sfu.drain(..) {
            net.sfu.handle_receive(net.now, from, &data);
        }
        // The core's timers until the next tick, as the driver would fire them: tokio's timer
        // wakes at whole milliseconds, so a deadline is rounded up to one, and one wake-up
        // handles everything due by then.
        let end = net.now + FRAME;
        let mut t = net.now;
        loop {
            while let Some(o) = net.sfu.poll_output() {
                net.from_sfu.push(o);
            }
            let Some(due) = net.sfu.poll_timeout() else {
                break;
            };
            let wake = net.now
                + Duration::from_millis(
                    due.saturating_duration_since(net.now)
                        .as_micros()
                        .div_ceil(1000) as u64,
                );
            t = wake.max(t + Duration::from_millis(1));
            if t >= end {
                break;
            }
            net.sfu.handle_timeout(t);
            self.timeouts += 1;
        }
        let spent = start.elapsed();
        self.srtp_out += net
            .from_sfu
            .iter()
            .filter(|o| matches!(o, Output::Transmit { contents, .. } if (128..192).contains(&contents[0])))
            .count() as u64;
        net.deliver();
        net.advance(FRAME);
        spent
    }
}

/// Measures `publishers` × `subscribers` (one iteration: one packet from each publisher, a copy
/// to each subscriber) and checks afterwards that the copies arrived. `subscribers == 0`: a
/// meeting of `publishers`, each receiving everyone else.
fn measure(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    publishers: usize,
    subscribers: usize,
) {
    let meeting = subscribers == 0;
    let mut call = if meeting {
        Call::meeting(publishers)
    } else {
        Call::new(publishers, subscribers)
    };
    // A second of audio first: consumers open, keyframe and allocation rounds settle.
    for _ in 0..50 {
        call.tick();
    }
    let received = |call: &Call| -> u64 {
        call.clients[call.first_receiver..]
            .iter()
            .map(|c| c.frames)
            .sum()
    };
    let timeouts_before = call.timeouts;
    let (frames_before, srtp_before, ticks_before) =
        (received(&call), call.srtp_out, call.frame_no);
    let copies = if meeting {
        (publishers * (publishers - 1)) as u64
    } else {
        (publishers * subscribers) as u64
    };
    group.throughput(Throughput::Elements(copies));
    let id = if meeting {
        BenchmarkId::from_parameter(format!("meeting{publishers}"))
    } else if publishers == 1 {
        BenchmarkId::from_parameter(subscribers)
    } else {
        BenchmarkId::from_parameter(format!("{publishers}x{subscribers}"))
    };
    group.bench_function(id, |b| {
        b.iter_custom(|iters| (0..iters).map(|_| call.tick()).sum())
    });
    // The copies really went out and arrived: otherwise the figure would be meaningless.
    call.collect();
    let ticks = call.frame_no - ticks_before;
    let frames = received(&call) - frames_before;
    let per_packet = (call.srtp_out - srtp_before) as f64 / (ticks * publishers as u64) as f64;
    eprintln!(
        "{publishers} publisher(s) x {subscribers} subscribers: {ticks} ticks, {:.1} timer \
         wake-ups per tick, {per_packet:.2} SRTP/SRTCP datagrams out per packet in, \
         subscribers received {:.1}% of the frames",
        (call.timeouts - timeouts_before) as f64 / ticks as f64,
        100.0 * frames as f64 / (ticks * copies) as f64
    );
    assert!(
        frames as f64 >= 0.99 * (ticks * copies) as f64,
        "subscribers got {frames} of {} frames",
        ticks * copies
    );
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward_audio_packet");
    group.sample_size(20);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(5));
    for subscribers in [1, 10, 40] {
        measure(&mut group, 1, subscribers);
    }
    group.finish();
    // The load tester's audio scenario (BENCHMARKS.md): ten publishers on one tick, 40 listeners.
    let mut group = c.benchmark_group("audio_room_tick");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    measure(&mut group, 10, 40);
    group.finish();
    // A meeting of 25 (audio: every participant publishes and hears the 24 others).
    let mut group = c.benchmark_group("meeting_tick");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    measure(&mut group, 25, 0);
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
