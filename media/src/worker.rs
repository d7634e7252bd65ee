//! The thin driver: media worker threads, each owning one UDP socket and one [`Sfu`].
//!
//! Each worker runs a single-threaded tokio runtime on its own OS thread. Its loop waits for a
//! datagram, a command from signaling, or the core's next timeout, hands it to the core, and
//! sends what the core asks to send. Everything for one room happens on that thread.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::sfu::{Grants, Output, PeerEvent, Sfu, SfuConfig};
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
    VideoSizes {
        participant: ParticipantId,
        sizes: Vec<(TrackId, u32, u32)>,
    },
    Answer {
        participant: ParticipantId,
        sdp: String,
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
}

/// Signaling's handle on the media workers. Cheap to clone.
#[derive(Clone)]
pub struct MediaHandle {
    workers: Vec<mpsc::UnboundedSender<Command>>,
    addrs: Vec<SocketAddr>,
    local_addrs: Vec<SocketAddr>,
    metrics: MediaMetrics,
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
        Ok(MediaHandle {
            workers,
            addrs,
            local_addrs,
            metrics,
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

    fn worker_for(&self, room: &str) -> &mpsc::UnboundedSender<Command> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut h);
        &self.workers[(h.finish() % self.workers.len() as u64) as usize]
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
        self.worker_for(room)
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

    /// The sizes at which the participant shows others' video tracks (see
    /// [`Sfu::set_video_sizes`]).
    pub fn video_sizes(
        &self,
        room: &str,
        participant: ParticipantId,
        sizes: Vec<(TrackId, u32, u32)>,
    ) -> Result<(), MediaError> {
        self.worker_for(room)
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
        self.worker_for(room)
            .send(Command::Answer { participant, sdp })
            .map_err(|_| MediaError::WorkerGone)
    }

    /// A trickled ICE candidate.
    pub fn candidate(
        &self,
        room: &str,
        participant: ParticipantId,
        candidate: String,
    ) -> Result<(), MediaError> {
        self.worker_for(room)
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
        let _ = self.worker_for(room).send(Command::Pause {
            participant,
            kind,
            paused,
        });
    }

    /// The participant left: drop its connection.
    pub fn remove(&self, room: &str, participant: ParticipantId) {
        let _ = self.worker_for(room).send(Command::Remove { participant });
    }

    /// The participant resumed after a dropped signaling socket: restart ICE with the next
    /// server offer (see [`Sfu::ice_restart`]).
    pub fn ice_restart(&self, room: &str, participant: ParticipantId) -> Result<(), MediaError> {
        self.worker_for(room)
            .send(Command::IceRestart { participant })
            .map_err(|_| MediaError::WorkerGone)
    }
}

async fn run(socket: UdpSocket, mut sfu: Sfu, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut sessions: HashMap<ParticipantId, mpsc::UnboundedSender<PeerEvent>> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let loopback_only = socket
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    loop {
        flush(&socket, &mut sfu, &mut sessions);
        let deadline = sfu
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, source)) => {
                    // Bound to loopback, take only loopback traffic, so that every ICE pair stays
                    // on the address we advertise.
                    if loopback_only && !source.ip().is_loopback() {
                        continue;
                    }
                    sfu.handle_receive(Instant::now(), source, &buf[..n]);
                }
                Err(e) => tracing::debug!(error = %e, "media socket receive error"),
            },
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                handle_command(&mut sfu, &mut sessions, cmd);
            }
            _ = tokio::time::sleep_until(deadline.into()) => sfu.handle_timeout(Instant::now()),
        }
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
                    if let PeerEvent::Error { code, .. } = &mut ev {
                        if *code == "invalid_sdp" {
                            *code = "invalid_offer";
                        }
                    }
                    let _ = events.send(ev);
                }
            }
            return;
        }
        Command::Answer { participant, sdp } => (participant, sfu.answer(now, participant, &sdp)),
        Command::VideoSizes { participant, sizes } => {
            (participant, sfu.set_video_sizes(now, participant, &sizes))
        }
        Command::Candidate {
            participant,
            candidate,
        } => (participant, sfu.add_candidate(now, participant, &candidate)),
        Command::IceRestart { participant } => (participant, sfu.ice_restart(now, participant)),
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
    let code = match e {
        MediaError::SdpParse(_)
        | MediaError::SdpApply(_)
        | MediaError::NoPendingOffer
        | MediaError::AlreadyConnected => "invalid_sdp",
        MediaError::BadCandidate => "invalid_candidate",
        _ => "internal",
    };
    PeerEvent::Error {
        code,
        message: e.to_string(),
    }
}

fn flush(
    socket: &UdpSocket,
    sfu: &mut Sfu,
    sessions: &mut HashMap<ParticipantId, mpsc::UnboundedSender<PeerEvent>>,
) {
    while let Some(out) = sfu.poll_output() {
        match out {
            Output::Transmit {
                destination,
                contents,
            } => {
                // UDP: a full send buffer drops the datagram, as the network would.
                if let Err(e) = socket.try_send_to(&contents, destination) {
                    tracing::trace!(error = %e, "media send dropped");
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
}
