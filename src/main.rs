//! `huddle`: the meeting server in one binary. This file only reads the configuration and wires
//! the crates together; each concern lives in its own crate.

mod cluster;
mod config;
mod conns;
mod metrics;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use figment::providers::Serialized;
use figment::Figment;
use huddle_signaling::token::{Grants, TokenKeys};
use huddle_signaling::{AppState, SignalingConfig};

use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "huddle",
    version,
    about = "Self-hosted voice and video meetings in one binary"
)]
struct Cli {
    /// TOML configuration file (see docs/configuration.md).
    #[arg(long, short, global = true, env = "HUDDLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Print an access token signed with this server's secret.
    Token(TokenArgs),
    /// Print an admin token for the room API, signed with the `[api]` secret.
    ApiToken(ApiTokenArgs),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run only the bundled TURN server (the `[turn]` section of the configuration).
    Turn(ServeArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; names the bad key if there is one.
    Check {
        /// The TOML file.
        file: PathBuf,
        #[command(flatten)]
        serve: ServeArgs,
    },
    /// Print the effective configuration as TOML (secrets left out).
    Show {
        #[command(flatten)]
        serve: ServeArgs,
    },
}

#[derive(clap::Args, Default, Clone)]
struct ServeArgs {
    /// HTTP/WebSocket listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    bind: Option<String>,
    /// Data directory [default: ./huddle-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// First media UDP port (0 = any free port) [default: 50000].
    #[arg(long)]
    media_port: Option<u16>,
    /// Address the media sockets bind to [default: 127.0.0.1].
    #[arg(long)]
    media_bind_ip: Option<String>,
    /// Address advertised to clients for media (1:1 NAT, LAN).
    #[arg(long)]
    public_ip: Option<String>,
    /// Media worker threads [default: one per core].
    #[arg(long)]
    workers: Option<usize>,
    /// Refuse guest tokens: only tokens from your application admit anyone.
    #[arg(long)]
    no_open_join: bool,
    /// Port of the bundled TURN server, UDP and TCP (0 = any free port) [default: 3478].
    #[arg(long)]
    turn_port: Option<u16>,
    /// Do not run the bundled TURN server.
    #[arg(long)]
    no_turn: bool,
    /// PEM certificate chain: serve HTTPS and WSS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate made at start (LAN use).
    #[arg(long)]
    tls_self_signed: bool,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(clap::Args)]
struct ApiTokenArgs {
    /// Limit the token to this room [default: every room].
    #[arg(long)]
    room: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 600)]
    ttl: u64,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Room the token admits to.
    #[arg(long)]
    room: String,
    /// The participant's identity (your user id).
    #[arg(long)]
    identity: String,
    /// Display name [default: the identity].
    #[arg(long)]
    name: Option<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Grant room admin.
    #[arg(long)]
    admin: bool,
    /// Withhold the publish grant (listen-only).
    #[arg(long)]
    no_publish: bool,
    /// Withhold the chat grant.
    #[arg(long)]
    no_chat: bool,
    #[command(flatten)]
    serve: ServeArgs,
}

impl ServeArgs {
    fn overrides(&self) -> Figment {
        let mut f = Figment::new();
        if let Some(v) = &self.bind {
            f = f.merge(Serialized::default("server.bind", v));
        }
        if let Some(v) = &self.data_dir {
            f = f.merge(Serialized::default("data_dir", v));
        }
        if let Some(v) = self.media_port {
            f = f.merge(Serialized::default("media.port", v));
        }
        if let Some(v) = &self.media_bind_ip {
            f = f.merge(Serialized::default("media.bind_ip", v));
        }
        if let Some(v) = &self.public_ip {
            f = f.merge(Serialized::default("media.public_ip", v));
        }
        if let Some(v) = self.workers {
            f = f.merge(Serialized::default("media.workers", v));
        }
        if self.no_open_join {
            f = f.merge(Serialized::default("auth.open_join", false));
        }
        if let Some(p) = self.turn_port {
            f = f.merge(Serialized::default(
                "turn.listen",
                vec![format!("127.0.0.1:{p}")],
            ));
            f = f.merge(Serialized::default("turn.tls_listen", Vec::<String>::new()));
        }
        if self.no_turn {
            f = f.merge(Serialized::default("ice.turn", false));
        }
        if let Some(v) = &self.tls_cert {
            f = f.merge(Serialized::default("server.tls_cert", v));
        }
        if let Some(v) = &self.tls_key {
            f = f.merge(Serialized::default("server.tls_key", v));
        }
        if self.tls_self_signed {
            f = f.merge(Serialized::default("server.tls_self_signed", true));
        }
        if let Some(v) = self.log_format {
            f = f.merge(Serialized::default("log.format", v));
        }
        f
    }
}

/// Errors end the process with their chain of causes on one line ("what: why: why"), never
/// a backtrace or a debug dump.
fn main() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Config(ConfigCommand::Check { file, serve })) => {
            // What `serve --config FILE` would read (the file, HUDDLE_* and these flags), held
            // to what `serve` checks before it starts anything.
            let cfg = config::load(Some(&file), serve.overrides())
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            check(&cfg).map_err(|e| anyhow::anyhow!("{}: {e:#}", file.display()))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Some(Command::Config(ConfigCommand::Show { serve })) => {
            let mut cfg = load(cli.config.as_deref(), &serve)?;
            // Secrets are left out (a placeholder would be a short secret `serve` refuses):
            // the output is a file `serve --config` accepts, with comments naming what is set.
            let mut hidden = Vec::new();
            for (key, secret) in [
                ("auth.secret", &mut cfg.auth.secret),
                ("api.secret", &mut cfg.api.secret),
                ("webhooks.secret", &mut cfg.webhooks.secret),
                ("turn.secret", &mut cfg.turn.secret),
            ] {
                if secret.take().is_some() {
                    hidden.push(key);
                }
            }
            if !cfg.turn.users.is_empty() {
                cfg.turn.users.clear();
                hidden.push("turn.users");
            }
            cluster::hide_secrets(&mut cfg);
            let text = toml::to_string(&cfg).context("writing the configuration as TOML")?;
            println!("# The effective configuration (huddle config show).");
            for key in hidden {
                println!("# {key} is set; hidden here.");
            }
            print!("{text}");
            Ok(())
        }
        Some(Command::Turn(args)) => {
            let cfg = load(cli.config.as_deref(), &args)?;
            init_logging(&cfg);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let turn = start_turn(&cfg, &[]).await?;
                for (t, a) in turn.local_addrs() {
                    println!("TURN {t:?} on {a}");
                }
                let _ = shutdown_signal().await;
                turn.shutdown().await;
                Ok(())
            })
        }
        Some(Command::Token(t)) => {
            let cfg = load(cli.config.as_deref(), &t.serve)?;
            if !huddle_signaling::token::valid_room_name(&t.room) {
                bail!(
                    "--room {:?} is not a room name: 1 to 64 characters of A-Z a-z 0-9 - _ ., not starting with .",
                    t.room
                );
            }
            // The server's own secret, never a new one: a token signed with another secret
            // would be refused by the server.
            let keys = token_keys(&cfg, Secret::Existing)?;
            if t.ttl > cfg.auth.max_token_lifetime_secs {
                bail!(
                    "--ttl {} is longer than auth.max_token_lifetime_secs ({}): the server would refuse the token",
                    t.ttl,
                    cfg.auth.max_token_lifetime_secs
                );
            }
            let grants = Grants {
                publish: !t.no_publish,
                subscribe: true,
                chat: !t.no_chat,
                admin: t.admin,
            };
            let name = t.name.as_deref().unwrap_or(&t.identity);
            println!(
                "{}",
                keys.issue(
                    &t.room,
                    &t.identity,
                    name,
                    grants,
                    Duration::from_secs(t.ttl)
                )?
            );
            Ok(())
        }
        Some(Command::ApiToken(t)) => {
            let cfg = load(cli.config.as_deref(), &t.serve)?;
            let Some(creds) = api_credentials(&cfg)? else {
                bail!("the room API is not configured: set [api] key and secret");
            };
            if t.ttl > cfg.auth.max_token_lifetime_secs {
                bail!(
                    "--ttl {} is longer than auth.max_token_lifetime_secs ({}): the server would refuse the token",
                    t.ttl,
                    cfg.auth.max_token_lifetime_secs
                );
            }
            println!(
                "{}",
                huddle_signaling::api::issue_admin_token(
                    &creds,
                    t.room.as_deref(),
                    Duration::from_secs(t.ttl)
                )?
            );
            Ok(())
        }
        Some(Command::Serve(args)) => serve(load(cli.config.as_deref(), &args)?),
        None => serve(load(cli.config.as_deref(), &cli.serve)?),
    }
}

fn load(file: Option<&Path>, args: &ServeArgs) -> Result<Config> {
    config::load(file, args.overrides()).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.filter));
    // Colour codes only for a person at a terminal, not in a log file or a journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The shortest token secret accepted, from wherever it comes (`auth.secret`,
/// `auth.secret_file`, the generated `data_dir/secret.key`), in bytes.
const MIN_SECRET_LEN: usize = 16;

/// The token secret: from the configuration, a file, or generated once into the data directory.
/// A secret under [`MIN_SECRET_LEN`] is refused wherever it comes from: an empty one would
/// make every token forgeable (and the TURN secret is derived from it).
fn secret(cfg: &Config, use_secret: Secret) -> Result<Vec<u8>> {
    if let Some(s) = &cfg.auth.secret {
        if s.len() < MIN_SECRET_LEN {
            bail!("auth.secret must be at least {MIN_SECRET_LEN} characters");
        }
        return Ok(s.as_bytes().to_vec());
    }
    if let Some(f) = &cfg.auth.secret_file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("reading auth.secret_file {}", f.display()))?;
        let s = s.trim();
        if s.len() < MIN_SECRET_LEN {
            bail!(
                "the secret in {} must be at least {MIN_SECRET_LEN} characters",
                f.display()
            );
        }
        return Ok(s.as_bytes().to_vec());
    }
    let path = cfg.data_dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim();
            if s.len() < MIN_SECRET_LEN {
                bail!(
                    "the generated secret in {} has {} characters, fewer than the {MIN_SECRET_LEN} \
                     needed (a crash or a full disk at first start can leave it empty): remove the \
                     file to have a new one generated, which ends every token issued so far, or \
                     set auth.secret_file",
                    path.display(),
                    s.len()
                );
            }
            return Ok(s.as_bytes().to_vec());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if use_secret == Secret::Existing {
                return Err(NoSecretYet(path).into());
            }
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let s: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    write_private(&path, &s).with_context(|| format!("writing {}", path.display()))?;
    Ok(s.into_bytes())
}

/// Everything `serve` refuses before it starts anything, without side effects (no secret
/// is generated, nothing is bound): `serve` and `config check` both run it.
fn check(cfg: &Config) -> Result<()> {
    if cfg.auth.guest_token_ttl_secs > cfg.auth.max_token_lifetime_secs {
        bail!(
            "auth.guest_token_ttl_secs ({}) is longer than auth.max_token_lifetime_secs ({}): every guest token would be refused",
            cfg.auth.guest_token_ttl_secs,
            cfg.auth.max_token_lifetime_secs
        );
    }
    // The token secret as configured, or the generated one when it exists already.
    match secret(cfg, Secret::Existing) {
        Ok(_) => {}
        Err(e) if e.downcast_ref::<NoSecretYet>().is_some() => {}
        Err(e) => return Err(e),
    }
    if let Some(s) = &cfg.turn.secret {
        if s.len() < MIN_SECRET_LEN {
            bail!("turn.secret must be at least {MIN_SECRET_LEN} characters");
        }
    }
    cluster::settings(cfg)?;
    for p in &cfg.signaling.trusted_proxies {
        p.parse::<huddle_signaling::limits::IpNet>()
            .map_err(|e| anyhow::anyhow!("signaling.trusted_proxies: {p:?}: {e}"))?;
    }
    let api = api_credentials(cfg)?;
    webhooks(cfg, api.as_ref())?;
    match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => {
            for (what, path) in [("server.tls_cert", cert), ("server.tls_key", key)] {
                std::fs::metadata(path)
                    .with_context(|| format!("{what} = {:?}: cannot read it", path.display()))?;
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            bail!("server.tls_cert and server.tls_key go together")
        }
        (None, None) => {}
    }
    if cfg.media.bind_ip.is_unspecified() && cfg.media.public_ip.is_none() {
        bail!(
            "media.bind_ip = \"{}\" binds every address, so clients need to be told which one \
             reaches this machine: set media.public_ip",
            cfg.media.bind_ip
        );
    }
    Ok(())
}

/// Whether [`secret`] may generate the secret file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secret {
    /// `serve` (and `turn`): generate `data_dir/secret.key` at first start.
    CreateIfMissing,
    /// `token` and `config check`: only the secret the server has.
    Existing,
}

/// No token secret is configured and none was generated yet.
#[derive(Debug)]
struct NoSecretYet(PathBuf);

impl std::fmt::Display for NoSecretYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no token secret: auth.secret and auth.secret_file are not set and {} does not exist \
             (`huddle serve` creates it at first start). Run this with the same --config, \
             --data-dir and HUDDLE_* settings as the server",
            self.0.display()
        )
    }
}

impl std::error::Error for NoSecretYet {}

/// The token keys, with the configured token rules.
fn token_keys(cfg: &Config, use_secret: Secret) -> Result<TokenKeys> {
    if cfg.auth.guest_token_ttl_secs > cfg.auth.max_token_lifetime_secs {
        bail!(
            "auth.guest_token_ttl_secs ({}) is longer than auth.max_token_lifetime_secs ({}): every guest token would be refused",
            cfg.auth.guest_token_ttl_secs,
            cfg.auth.max_token_lifetime_secs
        );
    }
    Ok(TokenKeys::new(&secret(cfg, use_secret)?)
        .with_max_lifetime(Duration::from_secs(cfg.auth.max_token_lifetime_secs)))
}

/// The room API's key and secret, when configured.
fn api_credentials(cfg: &Config) -> Result<Option<huddle_signaling::api::ApiCredentials>> {
    let secret = match (&cfg.api.secret, &cfg.api.secret_file) {
        (Some(s), _) => Some(s.trim().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading api.secret_file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    match (&cfg.api.key, secret) {
        (None, None) => Ok(None),
        (Some(key), Some(secret)) => {
            if secret.len() < 16 {
                bail!("the API secret must be at least 16 characters");
            }
            if key.is_empty() {
                bail!("api.key must not be empty");
            }
            Ok(Some(huddle_signaling::api::ApiCredentials {
                key: key.clone(),
                secret: secret.into_bytes(),
            }))
        }
        (Some(_), None) => bail!("api.key is set but neither api.secret nor api.secret_file"),
        (None, Some(_)) => bail!("an API secret is set but api.key is not"),
    }
}

/// Webhook URLs and their signing secret.
fn webhooks(
    cfg: &Config,
    api: Option<&huddle_signaling::api::ApiCredentials>,
) -> Result<huddle_signaling::webhooks::WebhookConfig> {
    let w = &cfg.webhooks;
    for url in &w.urls {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("webhooks.urls: {url} is not an http:// or https:// URL");
        }
    }
    let secret = match (&w.secret, api) {
        (Some(s), _) => s.as_bytes().to_vec(),
        (None, Some(a)) => a.secret.clone(),
        (None, None) if w.urls.is_empty() => Vec::new(),
        (None, None) => {
            bail!("webhooks.urls needs webhooks.secret or an [api] secret to sign with")
        }
    };
    Ok(huddle_signaling::webhooks::WebhookConfig {
        urls: w.urls.clone(),
        secret,
        max_attempts: w.max_attempts.max(1),
        timeout: Duration::from_secs(w.timeout_secs.max(1)),
    })
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    // Written whole to a temporary file and synced before it takes the real name, then the
    // directory is synced: a crash leaves either no file or the complete one, never an empty one.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn serve(cfg: Config) -> Result<()> {
    init_logging(&cfg);
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(run(cfg));
    // A blocking task still running (a slow disk) must not hold the exit past the drain.
    rt.shutdown_timeout(Duration::from_millis(500));
    result
}

async fn run(cfg: Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    check(&cfg)?;
    let keys = token_keys(&cfg, Secret::CreateIfMissing)?;
    // Checked here so that a short TURN secret stops the start even when the bundled TURN
    // server is off.
    turn_secret(&cfg)?;
    let cluster = cluster::settings(&cfg)?;
    let chat = match cluster.as_ref().map(|c| c.postgres_url.as_str()) {
        Some(url) => {
            let path = cfg.data_dir.join("chat.db");
            let url = url.to_string();
            tokio::task::spawn_blocking(move || {
                huddle_signaling::chat::ChatStore::open_postgres(&path, &url)
            })
            .await??
        }
        None => huddle_signaling::chat::ChatStore::open(&cfg.data_dir.join("chat.db"))?,
    };

    let media_cfg = huddle_media::MediaConfig {
        bind_ip: cfg.media.bind_ip,
        port: cfg.media.port,
        workers: if cfg.media.workers == 0 {
            huddle_media::MediaConfig::default().workers
        } else {
            cfg.media.workers
        },
        public_ip: cfg.media.public_ip,
        max_tracks_per_participant: cfg.limits.max_tracks_per_participant,
        capture: match &cfg.media.capture_path {
            Some(path) => {
                tracing::warn!(path = %path.display(), frames = cfg.media.capture_frames,
                    "media.capture_path is set: published frames are written to disk (debugging only)");
                Some(
                    huddle_media::capture::FrameCapture::create(path, cfg.media.capture_frames)
                        .with_context(|| format!("creating {}", path.display()))?,
                )
            }
            None => None,
        },
        bandwidth_estimate: cfg.media.bandwidth_estimate,
    };
    let media = huddle_media::MediaHandle::start(&media_cfg).with_context(|| {
        if media_cfg.port == 0 {
            format!(
                "starting the media workers on {} (free UDP ports)",
                media_cfg.bind_ip
            )
        } else {
            format!(
                "starting the media workers on UDP {}:{} (media.port = {}, and one more port per \
                 worker after the first: {} in all; is another program using them?)",
                media_cfg.bind_ip, media_cfg.port, media_cfg.port, media_cfg.workers
            )
        }
    })?;

    let signaling = SignalingConfig {
        open_join: cfg.auth.open_join,
        guest_token_ttl: Duration::from_secs(cfg.auth.guest_token_ttl_secs),
        max_message_bytes: cfg.signaling.max_message_bytes,
        max_sdp_bytes: cfg.signaling.max_sdp_bytes,
        max_participants: cfg.signaling.max_participants,
        idle_timeout: Duration::from_secs(cfg.signaling.idle_timeout_secs),
        chat_max_chars: cfg.signaling.chat_max_chars,
        ping_interval: Duration::from_secs(cfg.signaling.ping_interval_secs.max(1)),
        resume_window: Duration::from_secs(cfg.signaling.resume_window_secs),
        max_rooms: cfg.limits.max_rooms,
        messages_per_sec: cfg.limits.messages_per_second,
        message_burst: cfg.limits.message_burst,
        rate_limit_strikes: cfg.limits.rate_limit_strikes,
        chat_per_minute: cfg.limits.chat_messages_per_minute,
        max_connections: cfg.limits.max_connections,
        joins_per_ip_per_minute: cfg.limits.joins_per_ip_per_minute,
        guest_tokens_per_ip_per_minute: cfg.limits.guest_tokens_per_ip_per_minute,
        body_read_timeout: Duration::from_secs(cfg.server.body_read_timeout_secs.max(1)),
        trusted_proxies: cfg
            .signaling
            .trusted_proxies
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .context("signaling.trusted_proxies")?,
        allowed_origins: cfg.signaling.allowed_origins.clone(),
        api: api_credentials(&cfg)?,
        files: huddle_signaling::files::FilesConfig {
            dir: Some(cfg.data_dir.join("files")),
            max_upload_bytes: cfg.chat.max_upload_bytes,
            allowed_types: cfg.chat.allowed_types.clone(),
            retention: Duration::from_secs(cfg.chat.retention_days.saturating_mul(86_400)),
            thumbnail_workers: cfg.chat.thumbnail_workers,
            thumbnail_max_bytes: cfg.chat.thumbnail_max_bytes,
            uploads_per_identity_per_hour: cfg.chat.uploads_per_identity_per_hour,
            upload_bytes_per_identity_per_hour: cfg.chat.upload_bytes_per_identity_per_hour,
            uploads_per_ip_per_hour: cfg.chat.uploads_per_ip_per_hour,
            upload_bytes_per_ip_per_hour: cfg.chat.upload_bytes_per_ip_per_hour,
            max_room_bytes: cfg.chat.max_room_bytes,
        },
        recording: huddle_signaling::recording::RecordingConfig {
            dir: cfg.recording.enabled.then(|| {
                cfg.recording
                    .path
                    .clone()
                    .unwrap_or_else(|| cfg.data_dir.join("recordings"))
            }),
            retention: Duration::from_secs(cfg.recording.retention_days.saturating_mul(86_400)),
            max_active: cfg.recording.max_active,
        },
        ..SignalingConfig::default()
    };
    let signaling = SignalingConfig {
        webhooks: webhooks(&cfg, signaling.api.as_ref())?,
        ..signaling
    };
    let trusted_proxies = signaling.trusted_proxies.clone();
    let mut media_addrs = media.local_addrs().to_vec();
    media_addrs.extend_from_slice(media.addrs());
    let turn = if cfg.ice.turn {
        Some(start_turn(&cfg, &media_addrs).await?)
    } else {
        None
    };
    let ice = ice_servers(&cfg, turn.as_ref(), media.addrs()[0].ip());
    let state = AppState::new(signaling, keys, chat, media, ice);
    metrics::register(state.registry(), turn.as_ref().map(|t| t.stats()))
        .context("registering metrics")?;

    let listener = std::net::TcpListener::bind(cfg.server.bind)
        .with_context(|| format!("binding {}", cfg.server.bind))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && cfg.auth.open_join {
        tracing::warn!(
            "serving {addr} beyond this machine with open joining on: anyone who reaches it can join; set auth.open_join = false for production"
        );
    }
    let tls = tls_config(&cfg, addr).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(c) = cluster {
        cluster::join(
            &state,
            c,
            &format!("{scheme}://{addr}"),
            cfg.limits.max_rooms,
        )
        .await?;
    }
    let fds = conns::raise_fd_limit();
    let cap = conns::effective_cap(cfg.server.max_connections, fds);
    if cap < cfg.server.max_connections {
        tracing::warn!(
            configured = cfg.server.max_connections,
            cap,
            fd_limit = fds,
            "server.max_connections lowered to stay under the file-descriptor limit"
        );
    }
    let limiter = conns::LimitAcceptor::new(
        cap,
        cfg.server.max_connections_per_ip,
        trusted_proxies,
        state.limit_counters().clone(),
    );
    state.set_connection_count(Arc::new(limiter.clone()));
    let drain_state = state.clone();
    let app = huddle_signaling::router(state)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    let drain = Duration::from_secs(cfg.server.drain_secs);
    tokio::spawn(async move {
        let kind = shutdown_signal().await;
        let started = tokio::time::Instant::now();
        // Give up this node's place first, so that reconnecting participants go elsewhere.
        if let Some(c) = drain_state.cluster() {
            if let Err(e) = c.leave(&drain_state.rooms().room_names()).await {
                tracing::warn!(error = %e, "leaving the cluster failed");
            }
        }
        // The listener stays open while draining, so new joins get 503 rather than a refused
        // connection; then whatever is left of the drain time bounds the HTTP connections.
        drain_state.shutdown(drain, kind).await;
        let left = drain.saturating_sub(started.elapsed());
        h.graceful_shutdown(Some(left.max(Duration::from_millis(100))));
    });
    println!("Huddle is ready at {scheme}://{addr}/");
    let mut server = axum_server::from_tcp(listener)?;
    // Connections that send no request, or their headers too slowly, or idle between
    // keep-alive requests, are closed: the first request is bounded by axum-server (it covers
    // hyper's protocol detection), each later one by hyper. HTTP/2 peers that stop answering
    // pings are closed too.
    let header_timeout = Duration::from_secs(cfg.server.header_read_timeout_secs.max(1));
    server
        .http_builder()
        .http1()
        .header_read_timeout(header_timeout);
    server
        .http_builder()
        .http2()
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    let server = server.first_request_timeout(header_timeout).handle(handle);
    match tls {
        Some(tls) => {
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                .handshake_timeout(Duration::from_secs(
                    cfg.server.tls_handshake_timeout_secs.max(1),
                ))
                .acceptor(limiter);
            server.acceptor(acceptor).serve(app).await?
        }
        None => server.acceptor(limiter).serve(app).await?,
    }
    if let Some(t) = turn {
        if tokio::time::timeout(Duration::from_secs(2), t.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("the TURN server did not stop within 2 s");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// TLS for signaling and the web client, when configured.
async fn tls_config(
    cfg: &Config,
    addr: std::net::SocketAddr,
) -> Result<Option<axum_server::tls_rustls::RustlsConfig>> {
    use axum_server::tls_rustls::RustlsConfig;
    match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(
            RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS certificate {} and key {}",
                        cert.display(),
                        key.display()
                    )
                })?,
        )),
        (Some(_), None) | (None, Some(_)) => {
            bail!("server.tls_cert and server.tls_key go together")
        }
        (None, None) if cfg.server.tls_self_signed => {
            let mut names = vec!["localhost".to_string(), addr.ip().to_string()];
            if let Some(ip) = cfg.media.public_ip {
                names.push(ip.to_string());
            }
            let cert = rcgen::generate_simple_self_signed(names)
                .context("generating a self-signed certificate")?;
            let tls = RustlsConfig::from_pem(
                cert.cert.pem().into_bytes(),
                cert.key_pair.serialize_pem().into_bytes(),
            )
            .await
            .context("loading the self-signed certificate")?;
            tracing::info!("serving HTTPS with a self-signed certificate (browsers will ask to accept it once)");
            Ok(Some(tls))
        }
        (None, None) => Ok(None),
    }
}

/// The TURN REST secret: configured, or derived from the token secret so that one generated
/// secret serves both.
fn turn_secret(cfg: &Config) -> Result<String> {
    if let Some(s) = &cfg.turn.secret {
        if s.len() < MIN_SECRET_LEN {
            bail!("turn.secret must be at least {MIN_SECRET_LEN} characters");
        }
        return Ok(s.clone());
    }
    // HMAC-SHA256 of a fixed label under the token secret: a leaked TURN secret does not
    // reveal the token secret, and one generated secret serves both.
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &secret(cfg, Secret::CreateIfMissing)?,
    );
    let tag = ring::hmac::sign(&key, b"huddle turn rest secret v1");
    let out: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(out)
}

async fn start_turn(
    cfg: &Config,
    media_addrs: &[std::net::SocketAddr],
) -> Result<huddle_turn::TurnServer> {
    let mut tc = cfg.turn.clone();
    let defaults = huddle_turn::TurnConfig::default();
    if tc.listen == defaults.listen {
        tc.listen = vec![std::net::SocketAddr::new(cfg.media.bind_ip, 3478)];
    }
    if tc.tls_listen == defaults.tls_listen {
        tc.tls_listen = vec![std::net::SocketAddr::new(cfg.media.bind_ip, 5349)];
    }
    if tc.public_ip.is_none() {
        tc.public_ip = cfg.media.public_ip;
    }
    tc.secret = Some(turn_secret(cfg)?);
    tc.media_addrs.extend_from_slice(media_addrs);
    let addrs: Vec<String> = tc.listen.iter().map(|a| a.to_string()).collect();
    let turn = huddle_turn::TurnServer::start(tc).await.with_context(|| {
        format!(
            "starting the bundled TURN server on {} (UDP and TCP; is another program using them? \
             set ice.turn = false or turn.listen to change it)",
            addrs.join(", ")
        )
    })?;
    for (t, a) in turn.local_addrs() {
        tracing::info!(transport = ?t, addr = %a, "TURN listening");
    }
    Ok(turn)
}

/// What each participant gets in `joined.ice_servers`: the bundled TURN server's STUN and TURN
/// URLs with credentials minted for that participant.
fn ice_servers(
    cfg: &Config,
    turn: Option<&huddle_turn::TurnServer>,
    media_ip: std::net::IpAddr,
) -> huddle_signaling::IceServerProvider {
    use huddle_signaling::protocol::IceServer;
    use huddle_turn::Transport;
    let Some(turn) = turn else {
        return Arc::new(|_: &str| Vec::new());
    };
    let host_for = |a: std::net::SocketAddr| -> String {
        let ip = if a.ip().is_unspecified() {
            media_ip
        } else {
            a.ip()
        };
        let host = cfg
            .ice
            .host
            .clone()
            .unwrap_or_else(|| cfg.media.public_ip.unwrap_or(ip).to_string());
        if host.contains(':') {
            format!("[{host}]:{}", a.port())
        } else {
            format!("{host}:{}", a.port())
        }
    };
    let mut urls = Vec::new();
    let mut stun = Vec::new();
    if let Some(a) = turn.local_addr(Transport::Udp) {
        stun.push(format!("stun:{}", host_for(a)));
        urls.push(format!("turn:{}?transport=udp", host_for(a)));
    }
    if let Some(a) = turn.local_addr(Transport::Tcp) {
        urls.push(format!("turn:{}?transport=tcp", host_for(a)));
    }
    if let Some(a) = turn.local_addr(Transport::Tls) {
        urls.push(format!("turns:{}?transport=tcp", host_for(a)));
    }
    let secret = match turn_secret(cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "no TURN secret; participants get no TURN server");
            return Arc::new(|_: &str| Vec::new());
        }
    };
    let ttl = Duration::from_secs(cfg.ice.credential_ttl_secs);
    Arc::new(move |identity: &str| {
        let (username, credential) = huddle_turn::rest_credentials(
            secret.as_bytes(),
            identity,
            ttl,
            std::time::SystemTime::now(),
        );
        vec![
            IceServer {
                urls: stun.clone(),
                username: None,
                credential: None,
            },
            IceServer {
                urls: urls.clone(),
                username: Some(username),
                credential: Some(credential),
            },
        ]
    })
}

/// Waits for SIGTERM or SIGINT. SIGTERM is what `systemctl restart`, container runtimes and
/// rolling deploys send: participants are told to come back ([`Shutdown::Restart`]). SIGINT
/// (Ctrl-C) is an operator stopping the server by hand: meetings end ([`Shutdown::Stop`]).
async fn shutdown_signal() -> huddle_signaling::Shutdown {
    use huddle_signaling::Shutdown;
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    let kind = tokio::select! {
        _ = ctrl_c => Shutdown::Stop,
        _ = term => Shutdown::Restart,
    };
    tracing::info!(?kind, "shutting down");
    kind
}
