//! The thin driver: media worker threads, each owning one UDP socket and one [`Sfu`].
//!
//! Each worker runs a single-threaded tokio runtime on its own OS thread. Its loop waits for
//! datagrams, a command from signaling, or the core's next timeout, hands them to the core, and
//! sends what the core asks to send. Everything for one room happens on that thread.
//!
//! Socket I/O is batched with [`quinn_udp`]: one `recvmmsg` reads up to
//! [`quinn_udp::BATCH_SIZE`] datagrams (GRO-coalesced ones are split again), and consecutive
//! datagrams to one destination go out in one GSO `sendmsg` where the kernel has it.
//!
//! A room is placed on the worker with the fewest participants when its first participant
//! arrives, and stays there while anyone is in it.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::error::Refusal;
use crate::sfu::{Follow, Grants, Output, PeerEvent, Sfu, SfuConfig};
use crate::{MediaError, MediaMetrics, ParticipantId, Source, TrackId};

/// Media settings.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Address the media sockets bind to. Default `127.0.0.1`.
    pub bind_ip: IpAddr,
    /// First UDP port: worker `i` listens on `port + i`. `0` picks free ports. Default 50000.
    pub port: u16,
    /// Number of workers (each one thread and one socket). Default: one per core.
    pub workers: usize,
    /// Address advertised in ICE candidates instead of `bind_ip` (hosts behind 1:1 NAT, or
    /// `bind_ip` 0.0.0.0). Default: none.
    pub public_ip: Option<IpAddr>,
    /// Tracks one participant may publish. Default 4.
    pub max_tracks_per_participant: usize,
    /// Debug capture of published frames (see [`crate::capture`]). Default: none.
    pub capture: Option<crate::capture::FrameCapture>,
    /// Whether simulcast layers are chosen within each subscriber's downlink estimate (see
    /// [`Sfu::use_bandwidth_estimate`]). Default `true`.
    pub bandwidth_estimate: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            port: 50000,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            public_ip: None,
            max_tracks_per_participant: 4,
            capture: None,
            bandwidth_estimate: true,
        }
    }
}

/// A command from signaling to the worker that owns a participant's room.
enum Command {
    Offer {
        participant: ParticipantId,
        room: String,
        grants: Grants,
        sdp: String,
        sources: Vec<(String, Source)>,
        events: mpsc::UnboundedSender<PeerEvent>,
    },
    View {
        viewer: ParticipantId,
        room: String,
        sdp: String,
        follow: Follow,
        events: mpsc::UnboundedSender<PeerEvent>,
    },
    VideoSizes {
        participant: ParticipantId,
        sizes: Vec<(TrackId, u32, u32)>,
    },
    Answer {
        participant: ParticipantId,
        /// Parsed by the sender, off the media thread (see [`Sfu::answer_parsed`]).
        answer: Result<str0m::change::SdpAnswer, MediaError>,
    },
    Candidate {
        participant: ParticipantId,
        candidate: String,
    },
    Remove {
        participant: ParticipantId,
    },
    Pause {
        participant: ParticipantId,
        kind: crate::sfu::TrackKind,
        paused: bool,
    },
    IceRestart {
        participant: ParticipantId,
    },
    /// Start (`Some`) or stop recording a room.
    Record {
        room: String,
        tap: Option<crate::recording::RecordTap>,
    },
}

/// Signaling's handle on the media workers. Cheap to clone.
#[derive(Clone)]
pub struct MediaHandle {
    workers: Vec<mpsc::UnboundedSender<Command>>,
    addrs: Vec<SocketAddr>,
    local_addrs: Vec<SocketAddr>,
    metrics: MediaMetrics,
    placement: Arc<Mutex<Placement>>,
}

/// Which worker each room and participant is on.
#[derive(Default)]
struct Placement {
    /// Room → (worker, participants placed).
    rooms: HashMap<String, (usize, usize)>,
    /// Participants placed on each worker.
    load: Vec<usize>,
    /// Participant → (room, worker).
    participants: HashMap<ParticipantId, (String, usize)>,
    /// Rooms being recorded: their tap, handed to the room's worker when it is placed.
    recordings: HashMap<String, crate::recording::RecordTap>,
}

impl Placement {
    /// The worker of `room`, placing it on the least-loaded worker if it has none, and
    /// counting `participant` in.
    fn place(&mut self, room: &str, participant: ParticipantId) -> usize {
        if let Some((_, w)) = self.participants.get(&participant) {
            return *w;
        }
        let w = match self.rooms.get_mut(room) {
            Some((w, n)) => {
                *n += 1;
                *w
            }
            None => {
                let w = (0..self.load.len())
                    .min_by_key(|i| self.load[*i])
                    .unwrap_or(0);
                self.rooms.insert(room.to_string(), (w, 1));
                w
            }
        };
        if let Some(l) = self.load.get_mut(w) {
            *l += 1;
        }
        self.participants.insert(participant, (room.to_string(), w));
        w
    }

    /// The worker a participant (or else its room) is on.
    fn worker_of(&self, room: &str, participant: ParticipantId) -> usize {
        self.participants
            .get(&participant)
            .map(|(_, w)| *w)
            .or_else(|| self.rooms.get(room).map(|(w, _)| *w))
            .unwrap_or(0)
    }

    /// The participant left its worker (a repeated call is a no-op).
    fn leave(&mut self, participant: ParticipantId) -> Option<usize> {
        let (room, w) = self.participants.remove(&participant)?;
        if let Some(l) = self.load.get_mut(w) {
            *l = l.saturating_sub(1);
        }
        if let Some((_, n)) = self.rooms.get_mut(&room) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.rooms.remove(&room);
            }
        }
        Some(w)
    }
}

/// Counts a worker as running while its loop runs (a panic unwinding the thread included).
struct RunningGuard(prometheus::IntGauge);

impl RunningGuard {
    fn new(g: prometheus::IntGauge) -> Self {
        g.inc();
        RunningGuard(g)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.dec();
        tracing::info!("media worker stopped");
    }
}

impl MediaHandle {
    /// Binds one socket per worker and starts the worker threads.
    pub fn start(config: &MediaConfig) -> Result<MediaHandle, MediaError> {
        crate::init_crypto();
        let metrics = MediaMetrics::new();
        let mut workers = Vec::new();
        let mut addrs = Vec::new();
        let mut local_addrs = Vec::new();
        for i in 0..config.workers.max(1) {
            let port = if config.port == 0 {
                0
            } else {
                config.port + i as u16
            };
            let std_socket = std::net::UdpSocket::bind(SocketAddr::new(config.bind_ip, port))?;
            std_socket.set_nonblocking(true)?;
            let local_addr = std_socket.local_addr()?;
            let advertised = SocketAddr::new(
                config.public_ip.unwrap_or(local_addr.ip()),
                local_addr.port(),
            );
            if advertised.ip().is_unspecified() {
                return Err(MediaError::Io(std::io::Error::other(
                    "media bound to an unspecified address: set media.public_ip to the address clients reach",
                )));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let mut sfu = Sfu::with_metrics(
                SfuConfig {
                    candidates: vec![advertised],
                    local_addr,
                    worker_index: i as u16,
                    max_tracks_per_participant: config.max_tracks_per_participant,
                },
                metrics.clone(),
            );
            if let Some(c) = &config.capture {
                sfu.set_capture(c.clone());
            }
            sfu.use_bandwidth_estimate = config.bandwidth_estimate;
            let running = RunningGuard::new(metrics.workers.clone());
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || {
                    let _running = running;
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "media worker runtime failed to start");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        match UdpSocket::from_std(std_socket) {
                            Ok(socket) => run(socket, sfu, rx).await,
                            Err(e) => tracing::error!(error = %e, "media socket failed"),
                        }
                    });
                })?;
            tracing::info!(worker = i, addr = %local_addr, advertised = %advertised, "media worker started");
            workers.push(tx);
            addrs.push(advertised);
            local_addrs.push(local_addr);
        }
        let placement = Placement {
            load: vec![0; workers.len()],
            ..Placement::default()
        };
        Ok(MediaHandle {
            workers,
            addrs,
            local_addrs,
            metrics,
            placement: Arc::new(Mutex::new(placement)),
        })
    }

    /// The media metrics of this node (register them with [`MediaMetrics::register`]).
    pub fn metrics(&self) -> &MediaMetrics {
        &self.metrics
    }

    /// Whether every media worker thread is running.
    pub fn all_workers_running(&self) -> bool {
        self.metrics.workers_running() == self.workers.len() as i64
            && self.workers.iter().all(|w| !w.is_closed())
    }

    /// The advertised media addresses (one per worker).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound media socket addresses (one per worker).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    fn placement(&self) -> std::sync::MutexGuard<'_, Placement> {
        // The placement is a few maps updated in place: a panic elsewhere cannot leave it
        // half-changed, so a poisoned lock is still good.
        self.placement
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Worker `w`'s channel (placement only hands out indexes below the worker count).
    fn worker(&self, w: usize) -> &mpsc::UnboundedSender<Command> {
        &self.workers[w.min(self.workers.len() - 1)]
    }

    /// The worker of a participant already placed (or of its room).
    fn worker_for(
        &self,
        room: &str,
        participant: ParticipantId,
    ) -> &mpsc::UnboundedSender<Command> {
        self.worker(self.placement().worker_of(room, participant))
    }

    /// Places the participant (see [`Placement::place`]); a recorded room newly placed on a
    /// worker gets its recording there first.
    fn place(&self, room: &str, participant: ParticipantId) -> usize {
        let mut p = self.placement();
        let new_room = !p.rooms.contains_key(room);
        let w = p.place(room, participant);
        if new_room {
            if let Some(tap) = p.recordings.get(room) {
                let _ = self.worker(w).send(Command::Record {
                    room: room.to_string(),
                    tap: Some(tap.clone()),
                });
            }
        }
        w
    }

    /// Starts recording `room` into `dir` (see [`crate::recording`]). `done` gets the files
    /// when the recording has stopped ([`MediaHandle::stop_recording`]) and they are closed.
    pub fn start_recording(
        &self,
        room: &str,
        dir: std::path::PathBuf,
        done: tokio::sync::oneshot::Sender<crate::recording::RecordingDone>,
    ) -> Result<(), MediaError> {
        let (tap, rx) = crate::recording::RecordTap::new(
            crate::recording::QUEUE_PACKETS,
            self.metrics.recording_dropped.clone(),
        );
        crate::recording::spawn(dir, rx, self.metrics.clone(), Instant::now(), done)?;
        let mut p = self.placement();
        if let Some((w, _)) = p.rooms.get(room) {
            let _ = self.worker(*w).send(Command::Record {
                room: room.to_string(),
                tap: Some(tap.clone()),
            });
        }
        p.recordings.insert(room.to_string(), tap);
        Ok(())
    }

    /// Stops recording `room`: every worker lets go of its tap, and the recording's thread
    /// closes the files. Whether it was recording.
    pub fn stop_recording(&self, room: &str) -> bool {
        let was = self.placement().recordings.remove(room).is_some();
        for w in &self.workers {
            let _ = w.send(Command::Record {
                room: room.to_string(),
                tap: None,
            });
        }
        was
    }

    /// The client's first offer. The answer (or an error) arrives on `events` as
    /// [`PeerEvent::Answer`] / [`PeerEvent::Error`], followed by everything else for this
    /// participant.
    pub fn offer(
        &self,
        room: &str,
        participant: ParticipantId,
        grants: Grants,
        sdp: String,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<(), MediaError> {
        self.offer_with_sources(room, participant, grants, sdp, Vec::new(), events)
    }

    /// [`MediaHandle::offer`] with the source of each send m-line, by mid.
    pub fn offer_with_sources(
        &self,
        room: &str,
        participant: ParticipantId,
        grants: Grants,
        sdp: String,
        sources: Vec<(String, Source)>,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<(), MediaError> {
        let w = self.place(room, participant);
        self.worker(w)
            .send(Command::Offer {
                participant,
                room: room.to_string(),
                grants,
                sdp,
                sources,
                events,
            })
            .map_err(|_| MediaError::WorkerGone)
    }

    /// A receive-only viewer's offer (WHEP, see [`Sfu::offer_viewer`]): the answer arrives on
    /// `events` as for [`MediaHandle::offer`]. Remove it with [`MediaHandle::remove`].
    pub fn offer_viewer(
        &self,
        room: &str,
        viewer: ParticipantId,
        sdp: String,
        follow: Follow,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Result<(), MediaError> {
        let w = self.place(room, viewer);
        self.worker(w)
            .send(Command::View {
                viewer,
                room: room.to_string(),
                sdp,
                follow,
                events,
            })
            .map_err(|_| MediaError::WorkerGone)
    }

    /// The sizes at which the participant shows others' video tracks (see
    /// [`Sfu::set_video_sizes`]).
    pub fn video_sizes(
        &self,
        room: &str,
        participant: ParticipantId,
        sizes: Vec<(TrackId, u32, u32)>,
    ) -> Result<(), MediaError> {
        self.worker_for(room, participant)
            .send(Command::VideoSizes { participant, sizes })
            .map_err(|_| MediaError::WorkerGone)
    }

    /// The client's answer to a [`PeerEvent::Offer`].
    pub fn answer(
        &self,
        room: &str,
        participant: ParticipantId,
        sdp: String,
    ) -> Result<(), MediaError> {
        self.worker_for(room, participant)
            .send(Command::Answer {
                participant,
                answer: crate::sfu::parse_answer(&sdp),
            })
            .map_err(|_| MediaError::WorkerGone)
    }

    /// A trickled ICE candidate.
    pub fn candidate(
        &self,
        room: &str,
        participant: ParticipantId,
        candidate: String,
    ) -> Result<(), MediaError> {
        self.worker_for(room, participant)
            .send(Command::Candidate {
                participant,
                candidate,
            })
            .map_err(|_| MediaError::WorkerGone)
    }

    /// Stops or resumes forwarding a participant's tracks of one kind (see
    /// [`Sfu::set_paused`]).
    pub fn set_paused(
        &self,
        room: &str,
        participant: ParticipantId,
        kind: crate::sfu::TrackKind,
        paused: bool,
    ) {
        let _ = self.worker_for(room, participant).send(Command::Pause {
            participant,
            kind,
            paused,
        });
    }

    /// The participant left: drop its connection.
    pub fn remove(&self, room: &str, participant: ParticipantId) {
        let w = self.placement().leave(participant);
        let w = w.or_else(|| self.placement().rooms.get(room).map(|(w, _)| *w));
        if let Some(w) = w {
            let _ = self.worker(w).send(Command::Remove { participant });
        }
    }

    /// The participant resumed after a dropped signaling socket: restart ICE with the next
    /// server offer (see [`Sfu::ice_restart`]).
    pub fn ice_restart(&self, room: &str, participant: ParticipantId) -> Result<(), MediaError> {
        self.worker_for(room, participant)
            .send(Command::IceRestart { participant })
            .map_err(|_| MediaError::WorkerGone)
    }
}

async fn run(socket: UdpSocket, mut sfu: Sfu, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut sessions: HashMap<ParticipantId, mpsc::UnboundedSender<PeerEvent>> = HashMap::new();
    let state = match UdpSocketState::new((&socket).into()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "media socket setup failed");
            return;
        }
    };
    // A worker busy for a few milliseconds (an allocation round, a burst of joins) must not
    // lose what arrives meanwhile: room for ~3,000 datagrams. The kernel caps the request at
    // net.core.rmem_max / wmem_max (see docs/scaling.md); what was granted is logged.
    let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    tracing::debug!(
        recv = state.recv_buffer_size((&socket).into()).unwrap_or(0),
        send = state.send_buffer_size((&socket).into()).unwrap_or(0),
        "media socket buffers"
    );
    let mut rx = RecvBufs::new(state.gro_segments());
    let mut tx = SendBatch::default();
    let loopback_only = socket
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    // Timeouts handled in a row without waiting: every so often the loop goes through the
    // select (and so yields to the runtime) even when the next timeout is due already.
    let mut immediate = 0u32;
    let epoch = Instant::now();
    loop {
        flush(&socket, &state, &mut tx, &mut sfu, &mut sessions);
        let deadline = sfu
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        // Due already: no trip through the timer wheel (it rounds up to the next millisecond).
        if deadline <= Instant::now() && immediate < 64 {
            immediate += 1;
            sfu.handle_timeout(Instant::now());
            // Datagrams and commands that arrived meanwhile come before the next timeout.
            read_ready(
                &socket,
                &state,
                &mut rx,
                &mut sfu,
                loopback_only,
                &mut tx,
                &mut sessions,
            );
            while let Ok(cmd) = commands.try_recv() {
                handle_command(&mut sfu, &mut sessions, cmd);
            }
            continue;
        }
        immediate = 0;
        // Due already (after 64 in a row): at once. Otherwise on the grid.
        let wake = if deadline <= Instant::now() {
            deadline
        } else {
            on_grid(deadline, epoch)
        };
        tokio::select! {
            r = socket.readable() => match r {
                Ok(()) => read_ready(&socket, &state, &mut rx, &mut sfu, loopback_only, &mut tx, &mut sessions),
                Err(e) => tracing::debug!(error = %e, "media socket receive error"),
            },
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                handle_command(&mut sfu, &mut sessions, cmd);
            }
            _ = tokio::time::sleep_until(wake.into()) => sfu.handle_timeout(Instant::now()),
        }
    }
}

/// A timeout that is not due yet is waited for until the next multiple of `TIMER_GRID` since
/// the worker started, so that the connections' periodic work (TWCC feedback every 50 ms, NACK
/// checks, reports, ICE keep-alives: each connection on its own phase) shares wake-ups instead
/// of waking the thread once each; a wake-up costs about as much as forwarding a few packets.
/// Forwarded packets do not wait for timeouts (they go out as they come), and anything due
/// when the worker is awake for a datagram is handled then; so this delays only periodic work,
/// by less than `TIMER_GRID`.
const TIMER_GRID: Duration = Duration::from_millis(5);

/// `deadline` rounded up to the grid of [`TIMER_GRID`] from `epoch`.
fn on_grid(deadline: Instant, epoch: Instant) -> Instant {
    let grid = TIMER_GRID.as_nanos();
    let steps = deadline
        .saturating_duration_since(epoch)
        .as_nanos()
        .div_ceil(grid);
    epoch + Duration::from_nanos(u64::try_from(steps * grid).unwrap_or(u64::MAX))
}

/// Receive buffers for one `recvmmsg`: [`quinn_udp::BATCH_SIZE`] datagrams, each buffer large
/// enough for the GRO segments the kernel may coalesce into it.
struct RecvBufs {
    bufs: [Vec<u8>; quinn_udp::BATCH_SIZE],
    meta: [RecvMeta; quinn_udp::BATCH_SIZE],
}

/// Datagrams per read while the worker is behind (see `read_ready`).
const BEHIND_BATCH: usize = 2;

/// The receive and send buffer each media socket asks the kernel for.
const SOCKET_BUFFER: usize = 4 << 20;

/// The largest datagram a media peer sends (above any path MTU).
const MAX_DATAGRAM: usize = 2048;

impl RecvBufs {
    fn new(gro_segments: usize) -> Self {
        RecvBufs {
            bufs: std::array::from_fn(|_| vec![0u8; MAX_DATAGRAM * gro_segments.max(1)]),
            meta: [RecvMeta::default(); quinn_udp::BATCH_SIZE],
        }
    }
}

/// Reads every datagram the socket has (batch by batch) into the core, sending what each
/// batch produced before the next is read (so the first packet of a burst does not wait for
/// the last, and the output queue stays one batch deep).
fn read_ready(
    socket: &UdpSocket,
    state: &UdpSocketState,
    rx: &mut RecvBufs,
    sfu: &mut Sfu,
    loopback_only: bool,
    tx: &mut SendBatch,
    sessions: &mut HashMap<ParticipantId, mpsc::UnboundedSender<PeerEvent>>,
) {
    // A bounded number of batches, so that timers and commands get their turn under a flood.
    for _ in 0..64 {
        let mut slices = rx.bufs.each_mut().map(|b| IoSliceMut::new(b));
        // Behind, a few datagrams per read: a packet is judged late or not when it is read, and
        // what it fans out to goes out only after the whole batch's fan-out has been made, so
        // a full batch (32 datagrams, each to up to a hundred subscribers) on a starved core
        // could hold a packet judged on time for longer than the lateness limit.
        let take = if sfu.socket_behind(Instant::now()) {
            BEHIND_BATCH.min(quinn_udp::BATCH_SIZE)
        } else {
            quinn_udp::BATCH_SIZE
        };
        let n = match socket.try_io(Interest::READABLE, || {
            state.recv(socket.into(), &mut slices[..take], &mut rx.meta[..take])
        }) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                sfu.socket_drained();
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "media socket receive error");
                return;
            }
        };
        let now = Instant::now();
        for (meta, buf) in rx.meta.iter().zip(slices.iter()).take(n) {
            // Bound to loopback, take only loopback traffic, so that every ICE pair stays on
            // the address we advertise.
            if loopback_only && !meta.addr.ip().is_loopback() {
                continue;
            }
            let source = meta.addr;
            let stride = meta.stride.max(1);
            for datagram in buf[..meta.len.min(buf.len())].chunks(stride) {
                sfu.handle_receive(now, source, datagram);
            }
        }
        flush(socket, state, tx, sfu, sessions);
    }
}

/// The most bytes one GSO send may carry: one UDP datagram's worth (65,507 over IPv4), less
/// room for the IPv6 header. A larger one fails with EMSGSIZE, which `quinn-udp` treats as sent,
/// losing every segment (a keyframe's run of full-size packets to one subscriber is enough).
const MAX_GSO_BYTES: usize = 65_000;

/// Datagrams gathered for one GSO send: consecutive ones to one destination, all of one
/// size but the last, which may be shorter.
#[derive(Default)]
struct SendBatch {
    destination: Option<SocketAddr>,
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    /// The last one added was shorter than the segment size: nothing more can follow.
    closed: bool,
}

impl SendBatch {
    /// Adds a datagram if it fits the batch; returns false if the batch must be sent first.
    fn try_add(&mut self, destination: SocketAddr, contents: &[u8], max_segments: usize) -> bool {
        if self.count == 0 {
            self.destination = Some(destination);
            self.segment = contents.len();
            self.buf.clear();
            self.buf.extend_from_slice(contents);
            self.count = 1;
            self.closed = false;
            return true;
        }
        if self.closed
            || self.destination != Some(destination)
            || self.count >= max_segments
            || contents.len() > self.segment
            || contents.is_empty()
            || self.buf.len() + contents.len() > MAX_GSO_BYTES
        {
            return false;
        }
        self.buf.extend_from_slice(contents);
        self.count += 1;
        self.closed = contents.len() < self.segment;
        true
    }

    fn send(&mut self, socket: &UdpSocket, state: &UdpSocketState) {
        let Some(destination) = self.destination.filter(|_| self.count > 0) else {
            return;
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents: &self.buf,
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        };
        // UDP: a full send buffer drops the datagrams, as the network would.
        if let Err(e) = socket.try_io(Interest::WRITABLE, || state.send(socket.into(), &transmit)) {
            tracing::trace!(error = %e, "media send dropped");
        }
        self.count = 0;
    }
}

fn handle_command(
    sfu: &mut Sfu,
    sessions: &mut HashMap<ParticipantId, mpsc::UnboundedSender<PeerEvent>>,
    cmd: Command,
) {
    let now = Instant::now();
    let (participant, result) = match cmd {
        Command::Offer {
            participant,
            room,
            grants,
            sdp,
            sources,
            events,
        } => {
            let r = sfu.offer_with_sources(now, participant, &room, grants, &sdp, &sources);
            match &r {
                Ok(()) => {
                    sessions.insert(participant, events);
                }
                Err(e) => {
                    let mut ev = error_event(e);
                    if let PeerEvent::Error { refusal, .. } = &mut ev {
                        if *refusal == Refusal::Answer {
                            *refusal = Refusal::Offer;
                        }
                    }
                    let _ = events.send(ev);
                }
            }
            return;
        }
        Command::View {
            viewer,
            room,
            sdp,
            follow,
            events,
        } => {
            match sfu.offer_viewer(now, viewer, &room, &sdp, follow) {
                Ok(()) => {
                    sessions.insert(viewer, events);
                }
                Err(e) => {
                    let mut ev = error_event(&e);
                    if let PeerEvent::Error { refusal, .. } = &mut ev {
                        if *refusal == Refusal::Answer {
                            *refusal = Refusal::Offer;
                        }
                    }
                    let _ = events.send(ev);
                }
            }
            return;
        }
        Command::Answer {
            participant,
            answer,
        } => (
            participant,
            answer.and_then(|a| sfu.answer_parsed(now, participant, a)),
        ),
        Command::VideoSizes { participant, sizes } => {
            (participant, sfu.set_video_sizes(now, participant, &sizes))
        }
        Command::Candidate {
            participant,
            candidate,
        } => (participant, sfu.add_candidate(now, participant, &candidate)),
        Command::IceRestart { participant } => (participant, sfu.ice_restart(now, participant)),
        Command::Record { room, tap } => {
            sfu.set_recording(now, &room, tap);
            return;
        }
        Command::Pause {
            participant,
            kind,
            paused,
        } => {
            sfu.set_paused(now, participant, kind, paused);
            return;
        }
        Command::Remove { participant } => {
            sfu.remove(now, participant);
            sessions.remove(&participant);
            return;
        }
    };
    if let Err(e) = result {
        if let Some(tx) = sessions.get(&participant) {
            let _ = tx.send(error_event(&e));
        }
    }
}

fn error_event(e: &MediaError) -> PeerEvent {
    PeerEvent::Error {
        refusal: Refusal::from(e),
        message: e.to_string(),
    }
}

fn flush(
    socket: &UdpSocket,
    state: &UdpSocketState,
    tx: &mut SendBatch,
    sfu: &mut Sfu,
    sessions: &mut HashMap<ParticipantId, mpsc::UnboundedSender<PeerEvent>>,
) {
    let max_segments = state.max_gso_segments().max(1);
    while let Some(out) = sfu.poll_output() {
        match out {
            Output::Transmit {
                destination,
                contents,
            } => {
                if !tx.try_add(destination, &contents, max_segments) {
                    tx.send(socket, state);
                    tx.try_add(destination, &contents, max_segments);
                }
            }
            Output::Event(pid, event) => {
                let closed = matches!(event, PeerEvent::Closed { .. });
                if let Some(tx) = sessions.get(&pid) {
                    let _ = tx.send(event);
                }
                if closed {
                    sessions.remove(&pid);
                }
            }
        }
    }
    tx.send(socket, state);
}

#[cfg(test)]
mod tests {
    use super::{on_grid, SendBatch, MAX_GSO_BYTES, TIMER_GRID};
    use std::time::{Duration, Instant};

    #[test]
    fn timeouts_wait_for_the_next_grid_step_and_no_longer() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(on_grid(epoch + ms(1), epoch), epoch + TIMER_GRID);
        assert_eq!(on_grid(epoch + TIMER_GRID, epoch), epoch + TIMER_GRID);
        assert_eq!(
            on_grid(epoch + TIMER_GRID + ms(1), epoch),
            epoch + TIMER_GRID * 2
        );
        // Never earlier than asked, and due ones stay where they are.
        assert_eq!(on_grid(epoch, epoch), epoch);
        for us in (0..20_000).step_by(137) {
            let d = epoch + Duration::from_micros(us);
            let g = on_grid(d, epoch);
            assert!(g >= d && g - d < TIMER_GRID, "{us} µs");
        }
    }

    #[test]
    fn a_gso_batch_takes_one_size_then_a_shorter_last_one_within_one_datagrams_bytes() {
        let to: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: std::net::SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let mut b = SendBatch::default();
        assert!(b.try_add(to, &[1; 1200], 64));
        assert!(b.try_add(to, &[2; 1200], 64));
        assert!(!b.try_add(other, &[3; 1200], 64), "another destination");
        assert!(!b.try_add(to, &[4; 1300], 64), "a larger datagram");
        assert!(b.try_add(to, &[5; 700], 64), "a shorter last one");
        assert!(
            !b.try_add(to, &[6; 700], 64),
            "nothing after the shorter one"
        );
        assert_eq!((b.count, b.segment, b.buf.len()), (3, 1200, 3100));

        // A keyframe's run of full-size packets: never more than one datagram's bytes.
        let mut b = SendBatch::default();
        let mut taken = 0;
        while b.try_add(to, &[7; 1200], 64) {
            taken += 1;
        }
        assert!(
            b.buf.len() <= MAX_GSO_BYTES && taken == MAX_GSO_BYTES / 1200,
            "{taken}"
        );
    }
}
