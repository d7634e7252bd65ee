//! `[cluster]`: turns the configuration into cluster settings, enforces what a cluster needs,
//! and joins the node to it.

use anyhow::{bail, Context, Result};

use crate::config::Config;

/// The checked `[cluster]` settings.
pub struct Settings {
    pub redis_url: String,
    pub postgres_url: String,
    pub node_id: String,
    pub public_url: Option<String>,
    pub region: Option<String>,
}

/// `None` for a single node. In a cluster every node must verify the tokens the others issue,
/// so the token secret must be configured, not generated per node.
pub fn settings(cfg: &Config) -> Result<Option<Settings>> {
    let c = &cfg.cluster;
    let Some(redis_url) = c.redis_url.clone() else {
        if c.postgres_url.is_some() || c.public_url.is_some() {
            bail!("cluster.postgres_url and cluster.public_url need cluster.redis_url");
        }
        return Ok(None);
    };
    if cfg.auth.secret.is_none() && cfg.auth.secret_file.is_none() {
        bail!(
            "cluster.redis_url is set: set auth.secret (or auth.secret_file) to the same value on every node; a generated secret would differ per node"
        );
    }
    let Some(postgres_url) = c.postgres_url.clone() else {
        bail!("cluster.redis_url is set: set cluster.postgres_url (chat history is shared)");
    };
    let node_id = match &c.node_id {
        Some(id) => id.clone(),
        None => hostname().context("cluster.node_id is not set and the host name is unknown")?,
    };
    Ok(Some(Settings {
        redis_url,
        postgres_url,
        node_id,
        public_url: c
            .public_url
            .as_ref()
            .map(|u| u.trim_end_matches('/').to_string()),
        region: c.region.clone().filter(|r| !r.is_empty()),
    }))
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Connects to Redis, registers the cluster metrics and starts the heartbeat.
pub async fn join(
    state: &huddle_signaling::AppState,
    s: Settings,
    bound: &str,
    max_rooms: usize,
) -> Result<()> {
    // Without public_url the bound address stands in, when it is a specific one.
    let public_url = match s.public_url {
        Some(u) => u,
        None if !bound.contains("0.0.0.0") && !bound.contains("[::]") => bound.to_string(),
        None => bail!(
            "cluster.redis_url is set: set cluster.public_url (where clients reach this node); server.bind is a wildcard address"
        ),
    };
    use huddle_signaling::cluster::{Cluster, ClusterConfig};
    let cluster = Cluster::connect(ClusterConfig {
        redis_url: s.redis_url.clone(),
        node_id: s.node_id.clone(),
        public_url,
        region: s.region,
        heartbeat: std::time::Duration::from_secs(2),
        node_ttl: std::time::Duration::from_secs(6),
        max_rooms,
    })
    .await
    .with_context(|| format!("joining the cluster at {}", redact(&s.redis_url)))?;
    cluster
        .register(state.registry())
        .context("registering cluster metrics")?;
    state.set_cluster(cluster);
    tracing::info!(node = %s.node_id, "joined the cluster");
    Ok(())
}

/// A URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://<hidden>@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Hides credentials in the cluster URLs (for `config show`).
pub fn hide_secrets(cfg: &mut Config) {
    for u in [&mut cfg.cluster.redis_url, &mut cfg.cluster.postgres_url]
        .into_iter()
        .flatten()
    {
        *u = redact(u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_needs_a_configured_secret() {
        let mut cfg = Config::default();
        cfg.cluster.redis_url = Some("redis://127.0.0.1:1".into());
        cfg.cluster.postgres_url = Some("postgres://u@h/db".into());
        cfg.cluster.public_url = Some("http://n1".into());
        cfg.cluster.node_id = Some("n1".into());
        let e = settings(&cfg).err().expect("refused").to_string();
        assert!(e.contains("auth.secret"), "{e}");
        cfg.auth.secret = Some("0123456789abcdef0123".into());
        assert_eq!(settings(&cfg).unwrap().unwrap().node_id, "n1");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact("postgres://huddle:pw@db:5432/huddle"),
            "postgres://<hidden>@db:5432/huddle"
        );
        assert_eq!(redact("redis://r:6379"), "redis://r:6379");
    }
}
