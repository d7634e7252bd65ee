//! The tokio driver: sockets, tasks, the clock, and one lock around the core.

mod batch;
mod tls;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

use crate::core::{Core, CoreParams, FiveTuple, Input, Output, StreamFramer};
use crate::stats::{inc, TurnStats};
use crate::{Transport, TurnConfig, TurnError};
use batch::{recv_batch, send_batch, RecvBufs};

/// Frames a TCP/TLS client may have queued towards it before more are dropped.
const STREAM_QUEUE: usize = 1024;
/// A TCP/TLS connection that holds no allocation this long after it opened is
/// closed.
const NO_ALLOCATION_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for a TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    static RX: RefCell<RecvBufs> = RefCell::new(RecvBufs::new());
}

/// A running TURN server. Dropping it stops every task (without waiting);
/// [`TurnServer::shutdown`] stops them and waits until the listeners are
/// closed.
pub struct TurnServer {
    shared: Arc<Shared>,
    local_addrs: Vec<(Transport, SocketAddr)>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    stats: Arc<TurnStats>,
    buffer_bytes: usize,
}

struct Relay {
    socket: Arc<UdpSocket>,
    task: AbortHandle,
}

struct State {
    core: Core,
    udp_listeners: HashMap<SocketAddr, Arc<UdpSocket>>,
    relays: HashMap<SocketAddr, Relay>,
    streams: HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>,
    stream_tasks: HashMap<FiveTuple, AbortHandle>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a bug panicked mid-update; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Datagrams for one socket: (destination, bytes).
type Datagrams = Vec<(SocketAddr, Vec<u8>)>;

/// Datagrams to send once the lock is released, grouped by socket.
#[derive(Default)]
struct Sends {
    udp: Vec<(Arc<UdpSocket>, Datagrams)>,
}

impl Sends {
    fn push(&mut self, socket: &Arc<UdpSocket>, to: SocketAddr, data: Vec<u8>) {
        match self.udp.iter_mut().find(|(s, _)| Arc::ptr_eq(s, socket)) {
            Some((_, msgs)) => msgs.push((to, data)),
            None => self.udp.push((socket.clone(), vec![(to, data)])),
        }
    }

    async fn flush(self, stats: &TurnStats) {
        for (socket, msgs) in self.udp {
            let mut done = 0;
            while done < msgs.len() {
                match socket.try_io(tokio::io::Interest::WRITABLE, || {
                    send_batch(&socket, &msgs[done..])
                }) {
                    Ok(n) => done += n.max(1),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if socket.writable().await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        // The first datagram was refused (e.g. unreachable);
                        // skip it and go on with the rest.
                        tracing::trace!(error = %e, to = %msgs[done].0, "send failed");
                        inc(&stats.relay_dropped);
                        done += 1;
                    }
                }
            }
        }
    }
}

fn udp_socket(addr: SocketAddr, buffer_bytes: usize) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Binds UDP and TCP on the same port; port 0 picks one free for both.
fn bind_pair(addr: SocketAddr, buffer_bytes: usize) -> Result<(UdpSocket, TcpListener), TurnError> {
    let bind_err = |source| TurnError::Bind { addr, source };
    let tries = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..tries {
        let udp = udp_socket(addr, buffer_bytes).map_err(bind_err)?;
        let port = udp.local_addr().map_err(bind_err)?.port();
        match tcp_listener(SocketAddr::new(addr.ip(), port)) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(
        last.unwrap_or_else(|| io::Error::other("no free port")),
    ))
}

impl State {
    /// Carries out the core's outputs; datagrams go into `sends`.
    fn drain(&mut self, shared: &Arc<Shared>, sends: &mut Sends) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::ToClient { tuple, data } => match tuple.transport {
                    Transport::Udp => match self.udp_listeners.get(&tuple.server) {
                        Some(s) => sends.push(s, tuple.client, data),
                        None => inc(&shared.stats.relay_dropped),
                    },
                    Transport::Tcp | Transport::Tls => {
                        let queued = self
                            .streams
                            .get(&tuple)
                            .is_some_and(|tx| tx.try_send(data).is_ok());
                        if !queued {
                            inc(&shared.stats.relay_dropped);
                        }
                    }
                },
                Output::ToPeer { relay, peer, data } => match self.relays.get(&relay) {
                    Some(r) => sends.push(&r.socket, peer, data),
                    None => inc(&shared.stats.relay_dropped),
                },
                Output::BindRelay { id, addr } => {
                    let ok = !self.closed && self.bind_relay(shared, addr);
                    self.core
                        .handle_input(Instant::now(), Input::RelayBound { id, addr, ok });
                }
                Output::ReleaseRelay { addr } => {
                    if let Some(r) = self.relays.remove(&addr) {
                        r.task.abort();
                    }
                }
            }
        }
    }

    fn bind_relay(&mut self, shared: &Arc<Shared>, addr: SocketAddr) -> bool {
        match udp_socket(addr, shared.buffer_bytes) {
            Ok(socket) => {
                let socket = Arc::new(socket);
                let task =
                    tokio::spawn(udp_loop(shared.clone(), socket.clone(), addr, Role::Relay));
                self.relays.insert(
                    addr,
                    Relay {
                        socket,
                        task: task.abort_handle(),
                    },
                );
                true
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "relay port not available");
                false
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Role {
    Listener,
    Relay,
}

/// Reads a UDP socket in batches and feeds the core.
async fn udp_loop(shared: Arc<Shared>, socket: Arc<UdpSocket>, local: SocketAddr, role: Role) {
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let mut sends = Sends::default();
        let result = RX.with(|rx| {
            let mut rx = rx.borrow_mut();
            let n = socket.try_io(tokio::io::Interest::READABLE, || {
                recv_batch(&socket, &mut rx)
            })?;
            let now = Instant::now();
            let mut st = shared.lock();
            for i in 0..n {
                let Some((from, data)) = rx.get(i) else {
                    inc(&shared.stats.malformed_dropped);
                    continue;
                };
                match role {
                    Role::Listener => {
                        let tuple = FiveTuple {
                            transport: Transport::Udp,
                            client: from,
                            server: local,
                        };
                        st.core.handle_input(now, Input::Client { tuple, data });
                    }
                    Role::Relay => st.core.handle_input(
                        now,
                        Input::Peer {
                            relay: local,
                            peer: from,
                            data,
                        },
                    ),
                }
            }
            st.drain(&shared, &mut sends);
            Ok::<_, io::Error>(())
        });
        if let Err(e) = result {
            if e.kind() != io::ErrorKind::WouldBlock {
                tracing::debug!(%local, error = %e, "udp receive error");
            }
        }
        sends.flush(&shared.stats).await;
    }
}

async fn timer_loop(shared: Arc<Shared>) {
    loop {
        let deadline = shared.lock().core.poll_timeout();
        tokio::time::sleep_until(deadline.into()).await;
        let mut sends = Sends::default();
        {
            let mut st = shared.lock();
            st.core.handle_timeout(Instant::now());
            st.drain(&shared, &mut sends);
        }
        sends.flush(&shared.stats).await;
    }
}

async fn tcp_accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    local: SocketAddr,
    limit: Arc<Semaphore>,
    tls: Option<tls::Acceptor>,
) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%local, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::debug!(%client, "too many TCP connections; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let tuple = FiveTuple {
            transport,
            client,
            server: local,
        };
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut st = shared.lock();
        if st.closed {
            return;
        }
        st.streams.insert(tuple, tx);
        let task = match &tls {
            None => tokio::spawn(serve_stream(shared.clone(), stream, tuple, rx, permit)),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let shared2 = shared.clone();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                    match handshake {
                        Ok(Ok(tls_stream)) => {
                            serve_stream(shared2, tls_stream, tuple, rx, permit).await
                        }
                        failed => {
                            let reason = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => "timeout".to_owned(),
                            };
                            tracing::debug!(%client, %reason, "TLS handshake failed");
                            let mut st = shared2.lock();
                            st.streams.remove(&tuple);
                            st.stream_tasks.remove(&tuple);
                        }
                    }
                })
            }
        };
        if st.streams.contains_key(&tuple) {
            st.stream_tasks.insert(tuple, task.abort_handle());
        }
    }
}

/// Serves one TCP or TLS client connection until it closes.
async fn serve_stream<S>(
    shared: Arc<Shared>,
    stream: S,
    tuple: FiveTuple,
    mut rx: mpsc::Receiver<Vec<u8>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Over TCP, queued frames are coalesced into one write. Over TLS each
    // frame gets its own record: some clients (coturn's uclient among them)
    // read one message per record.
    let coalesce = tuple.transport == Transport::Tcp;
    let writer = async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.recv().await {
            buf.clear();
            buf.extend_from_slice(&first);
            while coalesce && buf.len() < 64 * 1024 {
                match rx.try_recv() {
                    Ok(more) => buf.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
            if !coalesce && rx.is_empty() && wr.flush().await.is_err() {
                break;
            }
        }
    };
    let reader_shared = shared.clone();
    let reader = async move {
        let shared = reader_shared;
        let mut framer = StreamFramer::default();
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + NO_ALLOCATION_TIMEOUT;
        let mut watch_idle = true;
        loop {
            let read = if watch_idle {
                tokio::select! {
                    r = rd.read(&mut chunk) => r,
                    _ = tokio::time::sleep_until(deadline) => {
                        if !shared.lock().core.has_allocation(&tuple) {
                            tracing::debug!(client = %tuple.client, "closing a connection without allocation");
                            return;
                        }
                        watch_idle = false;
                        continue;
                    }
                }
            } else {
                rd.read(&mut chunk).await
            };
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            framer.push(&chunk[..n]);
            let mut sends = Sends::default();
            let broken = {
                let now = Instant::now();
                let mut st = shared.lock();
                let mut broken = false;
                loop {
                    match framer.next_frame() {
                        Ok(Some(frame)) => st
                            .core
                            .handle_input(now, Input::Client { tuple, data: frame }),
                        Ok(None) => break,
                        Err(_) => {
                            inc(&shared.stats.malformed_dropped);
                            broken = true;
                            break;
                        }
                    }
                }
                st.drain(&shared, &mut sends);
                broken
            };
            sends.flush(&shared.stats).await;
            if broken {
                return;
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
    let mut sends = Sends::default();
    {
        let mut st = shared.lock();
        st.streams.remove(&tuple);
        st.stream_tasks.remove(&tuple);
        st.core
            .handle_input(Instant::now(), Input::ClientClosed(tuple));
        st.drain(&shared, &mut sends);
    }
    sends.flush(&shared.stats).await;
}

impl TurnServer {
    /// Validates `config`, binds every listener (UDP and TCP on each
    /// [`TurnConfig::listen`] address, TLS when configured) and starts
    /// serving on the current tokio runtime.
    pub async fn start(config: TurnConfig) -> Result<TurnServer, TurnError> {
        config.validate().map_err(TurnError::Config)?;
        if config.listen.is_empty() {
            return Err(TurnError::Config("`listen` is empty".into()));
        }
        let needs_ip = |ip: IpAddr| ip.is_unspecified();
        match (config.relay_ip, config.public_ip) {
            (_, Some(p)) if needs_ip(p) => {
                return Err(TurnError::Config(
                    "public_ip must not be unspecified".into(),
                ))
            }
            (Some(r), None) if needs_ip(r) => {
                return Err(TurnError::Config(
                    "relay_ip is unspecified: set public_ip too".into(),
                ))
            }
            (None, None) if config.listen.iter().any(|a| needs_ip(a.ip())) => {
                return Err(TurnError::Config(
                    "listening on an unspecified address: set relay_ip or public_ip".into(),
                ))
            }
            _ => {}
        }
        let tls = tls::Acceptor::from_config(&config)?;

        let mut local_addrs = Vec::new();
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for addr in &config.listen {
            let (u, t) = bind_pair(*addr, config.socket_buffer_bytes)?;
            let bind_err = |source| TurnError::Bind {
                addr: *addr,
                source,
            };
            let ua = u.local_addr().map_err(bind_err)?;
            let got = socket2::SockRef::from(&u).recv_buffer_size().unwrap_or(0);
            // Linux reports twice the size it was given.
            if got < config.socket_buffer_bytes {
                tracing::warn!(
                    addr = %ua,
                    wanted = config.socket_buffer_bytes,
                    got,
                    "UDP receive buffer is smaller than configured; raise net.core.rmem_max"
                );
            }
            let ta = t.local_addr().map_err(bind_err)?;
            local_addrs.push((Transport::Udp, ua));
            local_addrs.push((Transport::Tcp, ta));
            udp.push((Arc::new(u), ua));
            tcp.push((t, ta, None));
        }
        if let Some(acceptor) = &tls {
            for addr in &config.tls_listen {
                let bind_err = |source| TurnError::Bind {
                    addr: *addr,
                    source,
                };
                let t = tcp_listener(*addr).map_err(bind_err)?;
                let ta = t.local_addr().map_err(bind_err)?;
                local_addrs.push((Transport::Tls, ta));
                tcp.push((t, ta, Some(acceptor.clone())));
            }
        }

        let mut core_config = config.clone();
        for (_, a) in &local_addrs {
            if !core_config.deny_ports.contains(&a.port()) {
                core_config.deny_ports.push(a.port());
            }
        }
        let stats = Arc::new(TurnStats::default());
        let core = Core::new(
            &core_config,
            stats.clone(),
            CoreParams {
                now: Instant::now(),
                unix_now: SystemTime::now(),
                seed: rand::random(),
            },
        );
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                core,
                udp_listeners: udp.iter().map(|(s, a)| (*a, s.clone())).collect(),
                relays: HashMap::new(),
                streams: HashMap::new(),
                stream_tasks: HashMap::new(),
                closed: false,
            }),
            stats,
            buffer_bytes: config.socket_buffer_bytes,
        });

        let mut tasks = Vec::new();
        for (socket, addr) in udp {
            tasks.push(tokio::spawn(udp_loop(
                shared.clone(),
                socket,
                addr,
                Role::Listener,
            )));
        }
        let limit = Arc::new(Semaphore::new(config.max_tcp_connections));
        for (listener, addr, acceptor) in tcp {
            tasks.push(tokio::spawn(tcp_accept_loop(
                shared.clone(),
                listener,
                addr,
                limit.clone(),
                acceptor,
            )));
        }
        tasks.push(tokio::spawn(timer_loop(shared.clone())));
        tracing::info!(addrs = ?local_addrs, realm = %config.realm, mode = ?config.peer_mode, "TURN server started");
        Ok(TurnServer {
            shared,
            local_addrs,
            tasks,
        })
    }

    /// The bound listening addresses with their transports (ports resolved
    /// when 0 was asked for).
    pub fn local_addrs(&self) -> &[(Transport, SocketAddr)] {
        &self.local_addrs
    }

    /// The first bound address of `transport`, if any.
    pub fn local_addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.local_addrs
            .iter()
            .find(|(t, _)| *t == transport)
            .map(|(_, a)| *a)
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<TurnStats> {
        self.shared.stats.clone()
    }

    fn stop_tasks(&mut self) {
        let mut st = self.shared.lock();
        st.closed = true;
        for (_, r) in st.relays.drain() {
            r.task.abort();
        }
        for (_, t) in st.stream_tasks.drain() {
            t.abort();
        }
        st.streams.clear();
        drop(st);
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops serving: closes the listeners, every relay socket and every
    /// client connection, and waits for the listener tasks to end.
    pub async fn shutdown(mut self) {
        self.stop_tasks();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        tracing::info!("TURN server stopped");
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        self.stop_tasks();
    }
}
