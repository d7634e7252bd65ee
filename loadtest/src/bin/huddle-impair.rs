//! `huddle-impair`: a user-space network impairment proxy for tests (the CI kernel has no
//! `netem`). It sits between clients and a Huddle server and applies loss, delay, jitter (which
//! reorders), a rate cap with a bounded queue, and blackouts, per direction and per client flow.
//!
//! - UDP (`--udp LISTEN=UPSTREAM`): every client source address gets its own upstream socket,
//!   so the server sees one address per client and its replies find their way back. Put it in
//!   front of the media port and start the server with `--public-ip` set to the proxy's IP
//!   (e.g. listen on `127.0.0.2:P`, forward to `127.0.0.1:P`, `--public-ip 127.0.0.2`): the
//!   server then advertises the proxy as its ICE candidate.
//! - TCP (`--tcp LISTEN=UPSTREAM`, "lanes" numbered from 0 in flag order): plain forwarding,
//!   for a browser's page and WebSocket; a blocked lane closes its connections and refuses new
//!   ones, as a dropped network does.
//!
//! On start it prints one JSON line with the bound addresses, then reads commands on stdin,
//! one per line, answering each with a line starting `ok` or `error`:
//!
//! ```text
//! set all|port=N up|down|both [loss=0.05] [delay=100] [jitter=20] [rate=300] [queue=300] [blocked=0|1]
//!     loss: probability 0..1; delay, jitter, queue: ms; rate: kbit/s (0 = no cap).
//!     `port=N` is a client's UDP source port and overrides `all` for that flow.
//! clear port=N                     drop the override of one flow
//! tcp-block LANE | tcp-unblock LANE
//! stats                            one JSON line: packets forwarded and dropped per flow
//! ```
//!
//! Used by the browser tests in `tests/e2e/` (impairment, reconnection, capped downlink).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "huddle-impair",
    version,
    about = "User-space network impairment proxy for tests"
)]
struct Args {
    /// A UDP forward, LISTEN=UPSTREAM (repeatable).
    #[arg(long, value_parser = parse_pair)]
    udp: Vec<(SocketAddr, SocketAddr)>,
    /// A TCP forward, LISTEN=UPSTREAM (repeatable); lanes are numbered from 0 in this order.
    #[arg(long, value_parser = parse_pair)]
    tcp: Vec<(SocketAddr, SocketAddr)>,
    /// Seed of the random loss and jitter (reproducible runs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn parse_pair(s: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let (a, b) = s.split_once('=').ok_or("expected LISTEN=UPSTREAM")?;
    Ok((
        a.parse().map_err(|e| format!("{a}: {e}"))?,
        b.parse().map_err(|e| format!("{b}: {e}"))?,
    ))
}

/// How one direction of a flow is impaired.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Impairment {
    loss: f64,
    delay_ms: f64,
    jitter_ms: f64,
    /// kbit/s; 0 = no cap.
    rate_kbps: f64,
    /// The longest a packet may wait for the rate cap before it is dropped (ms).
    queue_ms: f64,
    blocked: bool,
}

impl Impairment {
    fn apply(&mut self, key: &str, value: &str) -> Result<()> {
        let v: f64 = value
            .parse()
            .with_context(|| format!("{key}={value}: not a number"))?;
        if !v.is_finite() || v < 0.0 {
            bail!("{key}={value}: must be a non-negative number");
        }
        match key {
            "loss" if v <= 1.0 => self.loss = v,
            "loss" => bail!("loss is a probability (0..1)"),
            "delay" => self.delay_ms = v,
            "jitter" => self.jitter_ms = v,
            "rate" => self.rate_kbps = v,
            "queue" => self.queue_ms = v,
            "blocked" => self.blocked = v != 0.0,
            _ => bail!("unknown setting {key}"),
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Both {
    up: Impairment,
    down: Impairment,
}

/// Counters of one direction of one flow.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Counts {
    forwarded: u64,
    dropped_loss: u64,
    dropped_queue: u64,
    dropped_blocked: u64,
}

/// The state one direction of one flow needs: its counters and when its link is next free.
#[derive(Debug)]
struct Lane {
    counts: Counts,
    next_free: Instant,
}

impl Lane {
    fn new() -> Self {
        Lane {
            counts: Counts::default(),
            next_free: Instant::now(),
        }
    }

    /// When to deliver a packet of `len` bytes that arrives now, or `None` to drop it.
    fn schedule(&mut self, imp: &Impairment, len: usize, rng: &mut impl Rng) -> Option<Instant> {
        let now = Instant::now();
        if imp.blocked {
            self.counts.dropped_blocked += 1;
            return None;
        }
        if imp.loss > 0.0 && rng.random_bool(imp.loss) {
            self.counts.dropped_loss += 1;
            return None;
        }
        let mut at = now;
        if imp.rate_kbps > 0.0 {
            let start = self.next_free.max(now);
            let queue = Duration::from_secs_f64(imp.queue_ms.max(1.0) / 1000.0);
            if start.duration_since(now) > queue {
                self.counts.dropped_queue += 1;
                return None;
            }
            let tx = Duration::from_secs_f64(len as f64 * 8.0 / (imp.rate_kbps * 1000.0));
            self.next_free = start + tx;
            at = self.next_free;
        }
        let jitter = if imp.jitter_ms > 0.0 {
            rng.random_range(-imp.jitter_ms..=imp.jitter_ms)
        } else {
            0.0
        };
        let delay = (imp.delay_ms + jitter).max(0.0);
        self.counts.forwarded += 1;
        Some(at + Duration::from_secs_f64(delay / 1000.0))
    }
}

#[derive(Debug)]
struct Flow {
    up: Lane,
    down: Lane,
}

/// Shared settings and per-flow state. The lock is held only to decide a packet's fate.
struct State {
    all: Both,
    by_port: HashMap<u16, Both>,
    flows: HashMap<SocketAddr, Flow>,
    rng: rand::rngs::StdRng,
    tcp_blocked: Vec<watch::Sender<bool>>,
}

impl State {
    fn settings(&self, client: &SocketAddr) -> Both {
        self.by_port
            .get(&client.port())
            .copied()
            .unwrap_or(self.all)
    }

    /// When to deliver a packet of a flow in one direction, or `None` to drop it.
    fn schedule(&mut self, client: SocketAddr, up: bool, len: usize) -> Option<Instant> {
        let settings = self.settings(&client);
        let State { flows, rng, .. } = self;
        let flow = flows.entry(client).or_insert_with(|| Flow {
            up: Lane::new(),
            down: Lane::new(),
        });
        if up {
            flow.up.schedule(&settings.up, len, rng)
        } else {
            flow.down.schedule(&settings.down, len, rng)
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `data` to `to` from `socket` at `at` (now when it is already due).
fn deliver(socket: Arc<UdpSocket>, to: SocketAddr, data: Vec<u8>, at: Instant) {
    if at <= Instant::now() {
        let _ = socket.try_send_to(&data, to);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep_until(at).await;
        let _ = socket.send_to(&data, to).await;
    });
}

async fn udp_forward(listen: Arc<UdpSocket>, upstream: SocketAddr, state: Shared) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = match listen.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; keep going.
                tracing::debug!(error = %e, "udp receive");
                continue;
            }
        };
        let socket = match clients.get(&client) {
            Some(s) => s.clone(),
            None => {
                let bind: SocketAddr = if upstream.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                }
                .parse()
                .expect("constant address");
                let Ok(socket) = UdpSocket::bind(bind).await else {
                    continue;
                };
                let socket = Arc::new(socket);
                clients.insert(client, socket.clone());
                tokio::spawn(udp_return(
                    socket.clone(),
                    listen.clone(),
                    client,
                    state.clone(),
                ));
                socket
            }
        };
        let at = lock(&state).schedule(client, true, n);
        if let Some(at) = at {
            deliver(socket, upstream, buf[..n].to_vec(), at);
        }
    }
}

/// Server → client for one flow.
async fn udp_return(
    socket: Arc<UdpSocket>,
    listen: Arc<UdpSocket>,
    client: SocketAddr,
    state: Shared,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match socket.recv_from(&mut buf).await {
            Ok((n, _)) => n,
            Err(_) => continue,
        };
        let at = lock(&state).schedule(client, false, n);
        if let Some(at) = at {
            deliver(listen.clone(), client, buf[..n].to_vec(), at);
        }
    }
}

async fn tcp_forward(listener: TcpListener, upstream: SocketAddr, blocked: watch::Receiver<bool>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *blocked.borrow() {
            // A dropped network: the connection goes nowhere.
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let mut blocked = blocked.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = blocked.wait_for(|b| *b) => {
                    let _ = client.set_zero_linger();
                }
            }
        });
    }
}

#[derive(Serialize)]
struct Bound {
    udp: Vec<Pair>,
    tcp: Vec<Pair>,
}

#[derive(Serialize)]
struct Pair {
    listen: SocketAddr,
    upstream: SocketAddr,
}

#[derive(Serialize)]
struct FlowStats {
    client: SocketAddr,
    up: Counts,
    down: Counts,
}

fn command(state: &Shared, line: &str) -> Result<String> {
    let mut words = line.split_whitespace();
    let Some(verb) = words.next() else {
        return Ok(String::new());
    };
    match verb {
        "set" => {
            let sel = words.next().context("set: which flows (all or port=N)?")?;
            let dir = words
                .next()
                .context("set: which direction (up, down, both)?")?;
            let mut st = lock(state);
            let mut both = match sel {
                "all" => st.all,
                _ => {
                    let port = port_of(sel)?;
                    st.by_port.get(&port).copied().unwrap_or(st.all)
                }
            };
            for kv in words {
                let (k, v) = kv
                    .split_once('=')
                    .with_context(|| format!("{kv}: expected KEY=VALUE"))?;
                match dir {
                    "up" => both.up.apply(k, v)?,
                    "down" => both.down.apply(k, v)?,
                    "both" => {
                        both.up.apply(k, v)?;
                        both.down.apply(k, v)?;
                    }
                    _ => bail!("direction must be up, down or both"),
                }
            }
            match sel {
                "all" => st.all = both,
                _ => {
                    st.by_port.insert(port_of(sel)?, both);
                }
            }
            Ok("ok".into())
        }
        "clear" => {
            let port = port_of(words.next().context("clear: port=N")?)?;
            lock(state).by_port.remove(&port);
            Ok("ok".into())
        }
        "tcp-block" | "tcp-unblock" => {
            let lane: usize = words.next().context("which lane?")?.parse()?;
            let st = lock(state);
            let tx = st.tcp_blocked.get(lane).context("no such lane")?;
            tx.send_replace(verb == "tcp-block");
            Ok("ok".into())
        }
        "stats" => {
            let st = lock(state);
            let flows: Vec<FlowStats> = st
                .flows
                .iter()
                .map(|(client, f)| FlowStats {
                    client: *client,
                    up: f.up.counts,
                    down: f.down.counts,
                })
                .collect();
            Ok(format!("ok {}", serde_json::to_string(&flows)?))
        }
        _ => bail!("unknown command {verb}"),
    }
}

fn port_of(sel: &str) -> Result<u16> {
    let p = sel
        .strip_prefix("port=")
        .with_context(|| format!("{sel}: expected all or port=N"))?;
    Ok(p.parse()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    if args.udp.is_empty() && args.tcp.is_empty() {
        bail!("nothing to forward: give --udp and/or --tcp");
    }
    let mut tcp_blocked = Vec::new();
    let mut tcp_rx = Vec::new();
    for _ in &args.tcp {
        let (tx, rx) = watch::channel(false);
        tcp_blocked.push(tx);
        tcp_rx.push(rx);
    }
    let state: Shared = Arc::new(Mutex::new(State {
        all: Both::default(),
        by_port: HashMap::new(),
        flows: HashMap::new(),
        rng: rand::SeedableRng::seed_from_u64(args.seed),
        tcp_blocked,
    }));
    let mut bound = Bound {
        udp: Vec::new(),
        tcp: Vec::new(),
    };
    for (listen, upstream) in &args.udp {
        let socket = Arc::new(
            UdpSocket::bind(listen)
                .await
                .with_context(|| format!("binding UDP {listen}"))?,
        );
        bound.udp.push(Pair {
            listen: socket.local_addr()?,
            upstream: *upstream,
        });
        tokio::spawn(udp_forward(socket, *upstream, state.clone()));
    }
    for ((listen, upstream), rx) in args.tcp.iter().zip(tcp_rx) {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding TCP {listen}"))?;
        bound.tcp.push(Pair {
            listen: listener.local_addr()?,
            upstream: *upstream,
        });
        tokio::spawn(tcp_forward(listener, *upstream, rx));
    }
    println!("{}", serde_json::to_string(&bound)?);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Runs until stdin closes (the test that started it ends).
    while let Some(line) = lines.next_line().await? {
        let reply = match command(&state, &line) {
            Ok(r) => r,
            Err(e) => format!("error {e:#}"),
        };
        if !reply.is_empty() {
            println!("{reply}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn rate_cap_queues_then_drops() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let imp = Impairment {
            rate_kbps: 80.0, // 10 bytes per ms
            queue_ms: 50.0,
            ..Default::default()
        };
        let mut lane = Lane::new();
        let t0 = Instant::now();
        // 1000-byte packets take 100 ms each: the first goes, the second waits 100 ms > 50 ms.
        let first = lane.schedule(&imp, 1000, &mut rng).expect("first is sent");
        assert!(first.duration_since(t0) >= Duration::from_millis(99));
        assert!(lane.schedule(&imp, 1000, &mut rng).is_none());
        assert_eq!(lane.counts.dropped_queue, 1);
        assert_eq!(lane.counts.forwarded, 1);
    }

    #[test]
    fn loss_is_about_the_asked_fraction() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let imp = Impairment {
            loss: 0.05,
            ..Default::default()
        };
        let mut lane = Lane::new();
        for _ in 0..20_000 {
            lane.schedule(&imp, 100, &mut rng);
        }
        let lost = lane.counts.dropped_loss as f64 / 20_000.0;
        assert!((0.04..0.06).contains(&lost), "lost {lost}");
    }

    #[test]
    fn commands_parse_and_refuse_nonsense() {
        let state: Shared = Arc::new(Mutex::new(State {
            all: Both::default(),
            by_port: HashMap::new(),
            flows: HashMap::new(),
            rng: rand::SeedableRng::seed_from_u64(1),
            tcp_blocked: Vec::new(),
        }));
        assert_eq!(
            command(&state, "set all both loss=0.05 delay=100 jitter=20").unwrap(),
            "ok"
        );
        assert_eq!(lock(&state).all.up.delay_ms, 100.0);
        assert_eq!(
            command(&state, "set port=5000 down rate=300").unwrap(),
            "ok"
        );
        let st = lock(&state).by_port[&5000];
        assert_eq!(st.down.rate_kbps, 300.0);
        assert_eq!(
            st.down.loss, 0.05,
            "an override starts from the common settings"
        );
        assert!(command(&state, "set all up loss=2").is_err());
        assert!(command(&state, "set all sideways loss=0.1").is_err());
        assert!(command(&state, "set port=x up loss=0.1").is_err());
        assert!(command(&state, "tcp-block 3").is_err());
        assert!(command(&state, "launch").is_err());
    }
}
