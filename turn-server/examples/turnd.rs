//! A stand-alone Huddle TURN server, for benchmarks and manual tests.
//!
//! ```text
//! cargo run --release -p huddle-turn --example turnd -- \
//!     --listen 127.0.0.1:3478 --secret s3cret --mode general --allow-peer 127.0.0.0/8
//! ```
//! Runs until SIGINT/SIGTERM, then prints the counters.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use huddle_turn::{PeerMode, StaticUser, TurnConfig, TurnServer};

#[derive(Parser, Debug)]
#[command(about = "Huddle's TURN server, stand-alone")]
struct Args {
    /// Address to serve UDP and TCP on (repeatable).
    #[arg(long, default_value = "127.0.0.1:3478")]
    listen: Vec<SocketAddr>,
    /// TURN REST API shared secret.
    #[arg(long, env = "TURN_SECRET")]
    secret: Option<String>,
    /// Static user as NAME:PASSWORD (repeatable).
    #[arg(long)]
    user: Vec<String>,
    /// Realm.
    #[arg(long, default_value = "huddle")]
    realm: String,
    /// Peer policy: media-only or general.
    #[arg(long, default_value = "media-only")]
    mode: String,
    /// Allowed peer network in general mode (repeatable).
    #[arg(long)]
    allow_peer: Vec<ipnet::IpNet>,
    /// Allowed media address in media-only mode (repeatable).
    #[arg(long)]
    media_addr: Vec<SocketAddr>,
    /// IP to bind relay sockets on.
    #[arg(long)]
    relay_ip: Option<IpAddr>,
    /// IP advertised in XOR-RELAYED-ADDRESS.
    #[arg(long)]
    public_ip: Option<IpAddr>,
    /// Lowest relay port.
    #[arg(long, default_value_t = 49152)]
    min_port: u16,
    /// Highest relay port.
    #[arg(long, default_value_t = 65535)]
    max_port: u16,
    /// Unauthenticated requests per second per IP (0 = unlimited).
    #[arg(long, default_value_t = 20)]
    unauth_rate: u32,
    /// Allocations per user.
    #[arg(long, default_value_t = 10)]
    user_quota: u32,
    /// Allocations in total.
    #[arg(long, default_value_t = 1000)]
    total_quota: u32,
    /// Worker threads of the tokio runtime (default: one per CPU); 0 runs
    /// everything on a single current-thread runtime.
    #[arg(long)]
    threads: Option<usize>,
    /// TLS certificate chain (PEM).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Address to serve TLS on (repeatable).
    #[arg(long)]
    tls_listen: Vec<SocketAddr>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let mut users = Vec::new();
    for u in &args.user {
        let (username, password) = u.split_once(':').ok_or("--user wants NAME:PASSWORD")?;
        users.push(StaticUser {
            username: username.into(),
            password: password.into(),
        });
    }
    let peer_mode = match args.mode.as_str() {
        "general" => PeerMode::General,
        "media-only" | "media_only" => PeerMode::MediaOnly,
        other => return Err(format!("unknown --mode {other}").into()),
    };
    let mut config = TurnConfig {
        listen: args.listen,
        secret: args.secret,
        users,
        realm: args.realm,
        peer_mode,
        allow_peers: args.allow_peer,
        media_addrs: args.media_addr,
        relay_ip: args.relay_ip,
        public_ip: args.public_ip,
        min_port: args.min_port,
        max_port: args.max_port,
        unauth_requests_per_sec: args.unauth_rate,
        user_quota: args.user_quota,
        total_quota: args.total_quota,
        tls_cert_pem: args.tls_cert,
        tls_key_pem: args.tls_key,
        ..TurnConfig::default()
    };
    if !args.tls_listen.is_empty() {
        config.tls_listen = args.tls_listen;
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let server = TurnServer::start(config).await?;
        for (transport, addr) in server.local_addrs() {
            println!("listening {transport:?} {addr}");
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        println!("{:?}", server.stats().snapshot());
        server.shutdown().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
