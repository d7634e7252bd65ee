//! The SFU's forwarding hot path, measured: one SRTP-protected audio packet from a publisher in,
//! one SRTP-protected copy out per subscriber, through the real [`Sfu`] core.
//!
//! The call is set up outside the measurement, over an in-memory network on virtual time (the
//! approach of `tests/in_memory.rs`): P publishers, N subscribers, all str0m client peers that
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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use huddle_media::{Grants, Output, ParticipantId, PeerEvent, Sfu, SfuConfig};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Rtc};

const SFU_ADDR: &str = "10.0.0.1:5000";
/// One audio frame every 20 ms, as a browser sends Opus.
const FRAME: Duration = Duration::from_millis(20);

struct Client {
    pid: ParticipantId,
    addr: SocketAddr,
    rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    send_mid: Option<Mid>,
    connected: bool,
    /// Media frames received (subscribers).
    frames: u64,
}

/// One room: the first `publishers` clients publish audio (and subscribe to nothing, like the
/// load tester's audio scenario), the others subscribe.
struct Call {
    now: Instant,
    sfu: Sfu,
    sfu_addr: SocketAddr,
    clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Datagrams from the clients, waiting for the core.
    to_sfu: Vec<(SocketAddr, Vec<u8>)>,
    /// The core's output of the last iteration, waiting for the clients.
    from_sfu: Vec<Output>,
    publishers: usize,
    /// Index of the first client that receives (0 in a meeting: everyone does).
    first_receiver: usize,
    frame_no: u64,
    /// `Sfu::handle_timeout` calls in the measured ticks.
    timeouts: u64,
    /// RTP/RTCP datagrams the core sent (first byte 128..=191), for the sanity check.
    srtp_out: u64,
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
        huddle_media::init_crypto();
        let sfu_addr: SocketAddr = SFU_ADDR.parse().unwrap();
        let mut call = Call {
            now: Instant::now(),
            sfu: Sfu::new(SfuConfig {
                candidates: vec![sfu_addr],
                local_addr: sfu_addr,
                worker_index: 0,
                max_tracks_per_participant: 8,
            }),
            sfu_addr,
            clients: Vec::new(),
            by_addr: HashMap::new(),
            to_sfu: Vec::new(),
            from_sfu: Vec::new(),
            publishers,
            first_receiver: if meeting { 0 } else { publishers },
            frame_no: 0,
            timeouts: 0,
            srtp_out: 0,
        };
        for _ in 0..publishers {
            call.join(true, meeting);
        }
        for _ in 0..subscribers {
            call.join(false, true);
        }
        // ICE, DTLS, the answers and the SFU's renegotiations for the consumers.
        for _ in 0..600 {
            call.step_setup(Duration::from_millis(5));
            if call.clients.iter().all(|c| c.connected)
                && call.clients[..publishers]
                    .iter_mut()
                    .all(Client::writer_ready)
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

    fn join(&mut self, publish: bool, subscribe: bool) {
        let n = self.clients.len() as u32 + 1;
        let addr: SocketAddr = format!("10.{}.{}.{}:6000", 1 + n / 65536, (n / 256) % 256, n % 256)
            .parse()
            .unwrap();
        let mut rtc = Rtc::builder().build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut change = rtc.sdp_api();
        let send_mid = publish
            .then(|| change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
        change.add_channel("huddle".into());
        let (offer, pending) = change.apply().unwrap();
        let pid = ParticipantId(u64::from(n));
        let grants = Grants {
            publish,
            subscribe,
            ..Grants::default()
        };
        self.sfu
            .offer(self.now, pid, "room", grants, &offer.to_sdp_string())
            .unwrap();
        self.by_addr.insert(addr, self.clients.len());
        self.clients.push(Client {
            pid,
            addr,
            rtc,
            pending: Some(pending),
            send_mid,
            connected: false,
            frames: 0,
        });
    }

    /// Hands the core's pending output to the clients (signaling events too).
    fn deliver(&mut self) {
        while let Some(o) = self.sfu.poll_output() {
            self.from_sfu.push(o);
        }
        for out in std::mem::take(&mut self.from_sfu) {
            match out {
                Output::Transmit {
                    destination,
                    contents,
                } => {
                    let Some(&i) = self.by_addr.get(&destination) else {
                        continue;
                    };
                    let input = Input::Receive(
                        self.now,
                        Receive {
                            proto: Protocol::Udp,
                            source: self.sfu_addr,
                            destination,
                            contents: contents.as_slice().try_into().unwrap(),
                        },
                    );
                    self.clients[i].rtc.handle_input(input).unwrap();
                }
                Output::Event(pid, ev) => {
                    let c = self.clients.iter_mut().find(|c| c.pid == pid).unwrap();
                    match ev {
                        PeerEvent::Answer { sdp } => {
                            let answer = SdpAnswer::from_sdp_string(&sdp).unwrap();
                            c.rtc
                                .sdp_api()
                                .accept_answer(c.pending.take().unwrap(), answer)
                                .unwrap();
                        }
                        PeerEvent::Offer { sdp } => {
                            let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
                            let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                            self.sfu
                                .answer(self.now, pid, &answer.to_sdp_string())
                                .unwrap();
                        }
                        PeerEvent::Closed { reason } => panic!("{pid} closed: {reason:?}"),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Collects every client's pending datagrams into `to_sfu`.
    fn collect(&mut self) {
        for c in &mut self.clients {
            loop {
                match c.rtc.poll_output().unwrap() {
                    str0m::Output::Timeout(_) => break,
                    str0m::Output::Transmit(t) => {
                        self.to_sfu.push((c.addr, Vec::from(t.contents)));
                    }
                    str0m::Output::Event(Event::Connected) => c.connected = true,
                    str0m::Output::Event(Event::MediaData(_)) => c.frames += 1,
                    str0m::Output::Event(_) => {}
                }
            }
        }
    }

    /// Moves time forward: the clients' and the core's timers.
    fn advance(&mut self, dt: Duration) {
        self.now += dt;
        for c in &mut self.clients {
            c.rtc.handle_input(Input::Timeout(self.now)).unwrap();
        }
    }

    fn step_setup(&mut self, dt: Duration) {
        self.deliver();
        self.collect();
        for (from, data) in std::mem::take(&mut self.to_sfu) {
            self.sfu.handle_receive(self.now, from, &data);
        }
        self.advance(dt);
        self.sfu.handle_timeout(self.now);
    }

    /// Every publisher writes its next 20 ms frame (an Opus-sized payload).
    fn speak(&mut self) {
        let n = self.frame_no;
        self.frame_no += 1;
        let now = self.now;
        for c in &mut self.clients[..self.publishers] {
            let w = c.rtc.writer(c.send_mid.unwrap()).unwrap();
            let pt = w.payload_params().next().unwrap().pt();
            let mut frame = vec![0xfc];
            frame.extend((0..79u64).map(|i| (i ^ n) as u8));
            w.write(pt, now, MediaTime::from_90khz(n * 1800), frame)
                .unwrap();
        }
    }

    /// One iteration (one 20 ms tick: a packet from every publisher): returns the time the
    /// core spent.
    fn tick(&mut self) -> Duration {
        self.speak();
        self.collect();
        let start = Instant::now();
        for (from, data) in self.to_sfu.drain(..) {
            self.sfu.handle_receive(self.now, from, &data);
        }
        // The core's timers until the next tick, as the driver would fire them: tokio's timer
        // wakes at whole milliseconds, so a deadline is rounded up to one, and one wake-up
        // handles everything due by then.
        let end = self.now + FRAME;
        let mut t = self.now;
        loop {
            while let Some(o) = self.sfu.poll_output() {
                self.from_sfu.push(o);
            }
            let Some(due) = self.sfu.poll_timeout() else {
                break;
            };
            let wake = self.now
                + Duration::from_millis(
                    due.saturating_duration_since(self.now)
                        .as_micros()
                        .div_ceil(1000) as u64,
                );
            t = wake.max(t + Duration::from_millis(1));
            if t >= end {
                break;
            }
            self.sfu.handle_timeout(t);
            self.timeouts += 1;
        }
        let spent = start.elapsed();
        self.srtp_out += self
            .from_sfu
            .iter()
            .filter(|o| matches!(o, Output::Transmit { contents, .. } if (128..192).contains(&contents[0])))
            .count() as u64;
        self.deliver();
        self.advance(FRAME);
        spent
    }
}

impl Client {
    fn writer_ready(&mut self) -> bool {
        self.send_mid.is_some_and(|m| self.rtc.writer(m).is_some())
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
