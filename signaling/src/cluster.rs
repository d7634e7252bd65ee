//! Cluster mode: several Huddle nodes sharing one Redis server.
//!
//! Redis holds three things, all with a time to live so that a dead node's entries vanish by
//! themselves (see `docs/scaling.md`):
//!
//! * `huddle:node:{id}`: the node's [`NodeInfo`] (public URL, region, load) as JSON, refreshed
//!   every [`ClusterConfig::heartbeat`] and expiring after [`ClusterConfig::node_ttl`]. The set
//!   `huddle:nodes` lists the ids ever seen; ids whose key expired are removed when read.
//! * `huddle:room:{name}`: the id of the node that owns the room. It is claimed atomically by a
//!   Lua script (the current owner is kept while its node key lives, otherwise the candidate is
//!   set) and refreshed by the owner's heartbeat while the room has members, with the same TTL.
//! * `huddle:placed`: rooms placed on each node since that node's last heartbeat, so that rooms
//!   opened in a burst spread before the nodes report their new load.
//!
//! A join that reaches a node that does not own the room is answered with a `redirect` message
//! naming the owner's public URL; the client opens its socket there. Media and signaling of a
//! room therefore always live on one node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use crate::SignalingError;

/// How long the first connection to Redis may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const NODES: &str = "huddle:nodes";
const PLACED: &str = "huddle:placed";
const NODE_PREFIX: &str = "huddle:node:";
const ROOM_PREFIX: &str = "huddle:room:";
const SETTINGS_PREFIX: &str = "huddle:settings:";
/// The rooms with settings in Redis.
const SETTINGS_SET: &str = "huddle:settings";

/// Keeps a live owner, or makes the candidate the owner. KEYS[1] the room key; ARGV[1] the
/// candidate node id, ARGV[2] the TTL in ms, ARGV[3] the node key prefix.
const CLAIM: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and redis.call('EXISTS', ARGV[3] .. cur) == 1 then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return ARGV[1]
";

/// The live owner of a room, or nil. KEYS[1] the room key; ARGV[1] the node key prefix.
const LOOKUP: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and redis.call('EXISTS', ARGV[1] .. cur) == 1 then return cur end
return false
";

/// The owner's refresh: extends its claim, re-takes a lapsed one, leaves another owner's alone.
/// Returns 1 when the room is ours. KEYS[1] the room key; ARGV[1] our id, ARGV[2] the TTL in ms.
const REFRESH: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
";

/// Deletes the room key only if it is ours. KEYS[1] the room key; ARGV[1] our id.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Cluster settings (`[cluster]` in the configuration).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/db`.
    pub redis_url: String,
    /// This node's name in Redis; unique per node.
    pub node_id: String,
    /// The address clients reach this node at (`https://node1.example.org`); redirects name it.
    pub public_url: String,
    /// This node's region label. Joins reaching a node are placed on a node of its region when
    /// one has room, else anywhere. Default: none.
    pub region: Option<String>,
    /// How often the node reports its load. Default 2 s.
    pub heartbeat: Duration,
    /// How long a node (and the rooms it owns) stays placed without a heartbeat. Default 6 s.
    pub node_ttl: Duration,
    /// Rooms this node takes before placement passes it over (the node's `max_rooms`).
    pub max_rooms: usize,
}

/// What a node reports about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// Its public URL.
    pub url: String,
    /// Its region label.
    #[serde(default)]
    pub region: Option<String>,
    /// Process CPU over the last heartbeat, in cores (1.0 = one core busy).
    pub cpu: f64,
    /// Open rooms.
    pub rooms: usize,
    /// Participants in them.
    pub participants: usize,
    /// Published tracks.
    pub tracks: usize,
    /// The most rooms it takes.
    pub max_rooms: usize,
}

/// [`crate::moderation::RoomSettings`] as Redis keeps them (with the password hash, which the
/// API never shows).
#[derive(Serialize, Deserialize)]
struct StoredSettings {
    max_participants: Option<usize>,
    password_hash: Option<String>,
    lobby: bool,
    created_at: u64,
}

impl StoredSettings {
    fn into_settings(self) -> crate::moderation::RoomSettings {
        crate::moderation::RoomSettings {
            max_participants: self.max_participants,
            password_hash: self.password_hash,
            lobby: self.lobby,
            created_at: self.created_at,
        }
    }
}

/// Where a join goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This node owns the room.
    Local,
    /// Another node does: its public URL.
    Remote(String),
}

/// A connection to the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<ClusterInner>,
}

struct ClusterInner {
    cfg: ClusterConfig,
    conn: ConnectionManager,
    claim: Script,
    lookup: Script,
    refresh: Script,
    release: Script,
    redirects: prometheus::IntCounter,
    routing_errors: prometheus::IntCounter,
    nodes_live: prometheus::IntGauge,
    node_info: prometheus::IntGaugeVec,
    heartbeats_failed: AtomicU64,
    /// For the room API calls this node carries to other nodes (one pool of connections).
    http: reqwest::Client,
}

impl Cluster {
    /// Connects to Redis and checks it answers.
    pub async fn connect(cfg: ClusterConfig) -> Result<Self, SignalingError> {
        if cfg.node_id.is_empty() || cfg.node_id.contains(char::is_whitespace) {
            return Err(SignalingError::ClusterConfig(
                "cluster.node_id must be a non-empty word",
            ));
        }
        if !(cfg.public_url.starts_with("http://") || cfg.public_url.starts_with("https://")) {
            return Err(SignalingError::ClusterConfig(
                "cluster.public_url must start with http:// or https://",
            ));
        }
        let client = redis::Client::open(cfg.redis_url.as_str())?;
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, ConnectionManager::new(client))
            .await
            .map_err(|_| SignalingError::RedisTimeout(CONNECT_TIMEOUT))??;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        let node_info = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "huddle_node_info",
                "This node in the cluster (always 1): its id and region.",
            ),
            &["node", "region"],
        )?;
        node_info
            .with_label_values(&[cfg.node_id.as_str(), cfg.region.as_deref().unwrap_or("")])
            .set(1);
        Ok(Cluster {
            inner: Arc::new(ClusterInner {
                redirects: prometheus::IntCounter::new(
                    "huddle_cluster_redirects_total",
                    "Joins redirected to the node that owns the room.",
                )?,
                routing_errors: prometheus::IntCounter::new(
                    "huddle_cluster_routing_errors_total",
                    "Joins refused because Redis failed or no node had room.",
                )?,
                nodes_live: prometheus::IntGauge::new(
                    "huddle_cluster_nodes",
                    "Live nodes seen at the last placement or heartbeat.",
                )?,
                node_info,
                cfg,
                conn,
                claim: Script::new(CLAIM),
                lookup: Script::new(LOOKUP),
                refresh: Script::new(REFRESH),
                release: Script::new(RELEASE),
                heartbeats_failed: AtomicU64::new(0),
                http: reqwest::Client::new(),
            }),
        })
    }

    /// The HTTP client for calls to other nodes (their connections are kept and reused).
    pub fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.cfg.node_id
    }

    /// Registers the cluster's metrics.
    pub fn register(&self, r: &prometheus::Registry) -> prometheus::Result<()> {
        r.register(Box::new(self.inner.node_info.clone()))?;
        r.register(Box::new(self.inner.redirects.clone()))?;
        r.register(Box::new(self.inner.routing_errors.clone()))?;
        r.register(Box::new(self.inner.nodes_live.clone()))?;
        Ok(())
    }

    fn ttl_ms(&self) -> u64 {
        self.inner.cfg.node_ttl.as_millis().max(1000) as u64
    }

    /// Where a join for `room` goes: the live owner, or (no owner) the least loaded node with
    /// room to spare, preferring this node's region, which then owns it.
    pub async fn route(&self, room: &str) -> Result<Route, SignalingError> {
        let result = self.route_inner(room).await;
        match &result {
            Ok(Route::Remote(_)) => self.inner.redirects.inc(),
            Ok(Route::Local) => {}
            Err(_) => self.inner.routing_errors.inc(),
        }
        result
    }

    async fn route_inner(&self, room: &str) -> Result<Route, SignalingError> {
        let mut conn = self.inner.conn.clone();
        let room_key = format!("{ROOM_PREFIX}{room}");
        let owner: Option<String> = self
            .inner
            .lookup
            .key(&room_key)
            .arg(NODE_PREFIX)
            .invoke_async(&mut conn)
            .await?;
        let owner = match owner {
            Some(o) => o,
            None => {
                let nodes = self.nodes().await?;
                let candidate = choose(&nodes, self.inner.cfg.region.as_deref(), room)
                    .ok_or(SignalingError::NoNode)?;
                self.inner
                    .claim
                    .key(&room_key)
                    .key(PLACED)
                    .arg(&candidate.id)
                    .arg(self.ttl_ms())
                    .arg(NODE_PREFIX)
                    .invoke_async(&mut conn)
                    .await?
            }
        };
        if owner == self.inner.cfg.node_id {
            return Ok(Route::Local);
        }
        let info: Option<String> = conn.get(format!("{NODE_PREFIX}{owner}")).await?;
        let info = info
            .and_then(|j| serde_json::from_str::<NodeInfo>(&j).ok())
            .ok_or(SignalingError::NoNode)?;
        Ok(Route::Remote(info.url))
    }

    /// The public URL of the live node that owns `room`, when that is another node. `None`:
    /// this node owns it, or nobody does (nothing is claimed).
    pub async fn remote_owner(&self, room: &str) -> Result<Option<String>, SignalingError> {
        let mut conn = self.inner.conn.clone();
        let owner: Option<String> = self
            .inner
            .lookup
            .key(format!("{ROOM_PREFIX}{room}"))
            .arg(NODE_PREFIX)
            .invoke_async(&mut conn)
            .await?;
        let Some(owner) = owner.filter(|o| *o != self.inner.cfg.node_id) else {
            return Ok(None);
        };
        let info: Option<String> = conn.get(format!("{NODE_PREFIX}{owner}")).await?;
        Ok(info
            .and_then(|j| serde_json::from_str::<NodeInfo>(&j).ok())
            .map(|n| n.url))
    }

    /// Stores a room's settings (room API) where every node reads them; kept until the room is
    /// ended. The password is stored as its PBKDF2 hash, as on disk.
    pub async fn put_settings(
        &self,
        room: &str,
        s: &crate::moderation::RoomSettings,
    ) -> Result<(), SignalingError> {
        let stored = StoredSettings {
            max_participants: s.max_participants,
            password_hash: s.password_hash.clone(),
            lobby: s.lobby,
            created_at: s.created_at,
        };
        let json = serde_json::to_string(&stored)?;
        let mut conn = self.inner.conn.clone();
        let () = redis::pipe()
            .atomic()
            .set(format!("{SETTINGS_PREFIX}{room}"), json)
            .ignore()
            .sadd(SETTINGS_SET, room)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// A room's settings from Redis, if it was created through the room API.
    pub async fn settings(
        &self,
        room: &str,
    ) -> Result<Option<crate::moderation::RoomSettings>, SignalingError> {
        let mut conn = self.inner.conn.clone();
        let json: Option<String> = conn.get(format!("{SETTINGS_PREFIX}{room}")).await?;
        Ok(json
            .and_then(|j| serde_json::from_str::<StoredSettings>(&j).ok())
            .map(StoredSettings::into_settings))
    }

    /// Every room with settings in Redis.
    pub async fn all_settings(
        &self,
    ) -> Result<Vec<(String, crate::moderation::RoomSettings)>, SignalingError> {
        let mut conn = self.inner.conn.clone();
        let rooms: Vec<String> = conn.smembers(SETTINGS_SET).await?;
        let keys: Vec<String> = rooms
            .iter()
            .map(|r| format!("{SETTINGS_PREFIX}{r}"))
            .collect();
        let mut out = Vec::new();
        for key in keys {
            let json: Option<String> = conn.get(&key).await?;
            if let Some(s) = json.and_then(|j| serde_json::from_str::<StoredSettings>(&j).ok()) {
                let room = key.trim_start_matches(SETTINGS_PREFIX).to_string();
                out.push((room, s.into_settings()));
            }
        }
        Ok(out)
    }

    /// Forgets a room's settings (the room was ended).
    pub async fn delete_settings(&self, room: &str) -> Result<(), SignalingError> {
        let mut conn = self.inner.conn.clone();
        let () = redis::pipe()
            .atomic()
            .del(format!("{SETTINGS_PREFIX}{room}"))
            .ignore()
            .srem(SETTINGS_SET, room)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The live nodes (from their heartbeat keys), with the rooms placed on each since its last
    /// heartbeat added to its room count. Expired ids are dropped from `huddle:nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, SignalingError> {
        let mut conn = self.inner.conn.clone();
        let ids: Vec<String> = conn.smembers(NODES).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("{NODE_PREFIX}{id}")).collect();
        let infos: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        let placed: std::collections::HashMap<String, i64> = conn.hgetall(PLACED).await?;
        let mut live = Vec::new();
        for (id, info) in ids.iter().zip(infos) {
            match info.and_then(|j| serde_json::from_str::<NodeInfo>(&j).ok()) {
                Some(mut n) => {
                    n.rooms += placed.get(id).copied().unwrap_or(0).max(0) as usize;
                    live.push(n);
                }
                None => {
                    let _: Result<(), _> = conn.srem(NODES, id).await;
                    let _: Result<(), _> = conn.hdel(PLACED, id).await;
                }
            }
        }
        self.inner.nodes_live.set(live.len() as i64);
        Ok(live)
    }

    /// One heartbeat: reports `info` and refreshes the claims on `rooms` (the rooms with members
    /// on this node). Rooms now owned by another node are returned.
    pub async fn heartbeat(
        &self,
        info: &NodeInfo,
        rooms: &[String],
    ) -> Result<Vec<String>, SignalingError> {
        let mut conn = self.inner.conn.clone();
        let json = serde_json::to_string(info)?;
        let ttl = self.ttl_ms();
        redis::pipe()
            .cmd("SET")
            .arg(format!("{NODE_PREFIX}{}", info.id))
            .arg(json)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .sadd(NODES, &info.id)
            .ignore()
            .hset(PLACED, &info.id, 0)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        let mut lost = Vec::new();
        for room in rooms {
            let ours: i64 = self
                .inner
                .refresh
                .key(format!("{ROOM_PREFIX}{room}"))
                .arg(&info.id)
                .arg(ttl)
                .invoke_async(&mut conn)
                .await?;
            if ours == 0 {
                lost.push(room.clone());
            }
        }
        Ok(lost)
    }

    /// Gives up this node's place at shutdown: its key, and the rooms it owns, so that their
    /// participants are placed elsewhere at once rather than after the TTL.
    pub async fn leave(&self, rooms: &[String]) -> Result<(), SignalingError> {
        let mut conn = self.inner.conn.clone();
        let id = &self.inner.cfg.node_id;
        for room in rooms {
            let _: i64 = self
                .inner
                .release
                .key(format!("{ROOM_PREFIX}{room}"))
                .arg(id)
                .invoke_async(&mut conn)
                .await?;
        }
        redis::pipe()
            .del(format!("{NODE_PREFIX}{id}"))
            .ignore()
            .srem(NODES, id)
            .ignore()
            .hdel(PLACED, id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Runs the heartbeat until the process ends: load from `rooms` and this process's CPU time.
    pub fn spawn_heartbeat(&self, rooms_of: crate::AppState) -> tokio::task::JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut cpu = CpuMeter::new();
            let mut tick = tokio::time::interval(cluster.inner.cfg.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if rooms_of.is_draining() {
                    continue;
                }
                let registry = rooms_of.rooms();
                let counts = registry.counts();
                let tracks = counts
                    .iter()
                    .map(|(r, _)| {
                        registry
                            .participants(r)
                            .iter()
                            .map(|p| p.tracks.len())
                            .sum::<usize>()
                    })
                    .sum();
                let cfg = &cluster.inner.cfg;
                let info = NodeInfo {
                    id: cfg.node_id.clone(),
                    url: cfg.public_url.clone(),
                    region: cfg.region.clone(),
                    cpu: cpu.sample(),
                    rooms: counts.len(),
                    participants: counts.iter().map(|(_, n)| n).sum(),
                    tracks,
                    max_rooms: cfg.max_rooms,
                };
                let rooms: Vec<String> = counts.into_iter().map(|(r, _)| r).collect();
                match cluster.heartbeat(&info, &rooms).await {
                    Ok(lost) => {
                        cluster.inner.heartbeats_failed.store(0, Ordering::Relaxed);
                        for room in lost {
                            tracing::warn!(%room, "another node owns this room now (our claim lapsed)");
                        }
                    }
                    Err(e) => {
                        let n = cluster
                            .inner
                            .heartbeats_failed
                            .fetch_add(1, Ordering::Relaxed);
                        if n.is_multiple_of(30) {
                            tracing::error!(error = %e, "cluster heartbeat failed");
                        }
                    }
                }
            }
        })
    }
}

/// In cluster mode, what a verified join for `room` gets instead of entering it here: a
/// `redirect` to the owner, or `unavailable` when no node can be chosen. `None`: join here.
pub(crate) async fn instead_of_join(
    state: &crate::AppState,
    room: &str,
) -> Option<crate::protocol::ServerMsg> {
    use crate::protocol::{ErrorCode, ServerMsg};
    let cluster = state.cluster()?;
    match cluster.route(room).await {
        Ok(Route::Local) => {
            // The room's settings may have been made through another node's room API.
            refresh_settings(state, cluster, room).await;
            None
        }
        Ok(Route::Remote(url)) => {
            tracing::debug!(%room, %url, "join redirected to the room's node");
            Some(ServerMsg::Redirect {
                url,
                room: room.to_string(),
            })
        }
        Err(e) => {
            tracing::warn!(error = %e, %room, "no node for the room");
            Some(ServerMsg::error(
                ErrorCode::Unavailable,
                "no node can take this room right now; try again shortly",
                None,
            ))
        }
    }
}

/// Picks the node for a new room: in `region` if any node there has room, else anywhere; the
/// fewest rooms, then participants, then CPU; ties broken by the room name so that equal nodes
/// share new rooms.
pub fn choose<'a>(nodes: &'a [NodeInfo], region: Option<&str>, room: &str) -> Option<&'a NodeInfo> {
    let spare: Vec<&NodeInfo> = nodes.iter().filter(|n| n.rooms < n.max_rooms).collect();
    let local: Vec<&NodeInfo> = spare
        .iter()
        .copied()
        .filter(|n| region.is_some() && n.region.as_deref() == region)
        .collect();
    let pool = if local.is_empty() { spare } else { local };
    pool.into_iter().min_by(|a, b| {
        a.rooms
            .cmp(&b.rooms)
            .then(a.participants.cmp(&b.participants))
            .then(a.cpu.total_cmp(&b.cpu))
            .then(tie(room, &a.id).cmp(&tie(room, &b.id)))
    })
}

fn tie(room: &str, node: &str) -> u64 {
    // FNV-1a: stable across processes, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes().chain([0]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// This process's CPU use between samples, in cores, from `/proc/self/stat` (0 elsewhere).
struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl CpuMeter {
    fn new() -> Self {
        CpuMeter {
            last: cpu_seconds().map(|s| (Instant::now(), s)),
        }
    }

    fn sample(&mut self) -> f64 {
        let now = Instant::now();
        let Some(s) = cpu_seconds() else { return 0.0 };
        let used = match self.last {
            Some((t, prev)) => {
                let wall = now.duration_since(t).as_secs_f64();
                if wall > 0.0 {
                    (s - prev).max(0.0) / wall
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, s));
        used
    }
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Copies a room's settings from Redis into this node's moderation state (Redis is the truth in
/// cluster mode: a room ended elsewhere loses its settings here too). Redis errors keep what
/// the node has.
pub(crate) async fn refresh_settings(state: &crate::AppState, cluster: &Cluster, room: &str) {
    match cluster.settings(room).await {
        Ok(s) => state.inner.moderation.set_cached(room, s),
        Err(e) => tracing::warn!(error = %e, %room, "room settings could not be read from redis"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, region: Option<&str>, rooms: usize, participants: usize) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            url: format!("http://{id}"),
            region: region.map(Into::into),
            cpu: 0.0,
            rooms,
            participants,
            tracks: 0,
            max_rooms: 10,
        }
    }

    #[test]
    fn placement_prefers_fewest_rooms_and_skips_full_nodes() {
        let nodes = [
            node("a", None, 3, 9),
            node("b", None, 1, 50),
            node("c", None, 10, 0),
        ];
        assert_eq!(choose(&nodes, None, "r").unwrap().id, "b");
    }

    #[test]
    fn placement_prefers_the_region_while_it_has_room() {
        let nodes = [node("a", Some("eu"), 5, 9), node("b", Some("us"), 0, 0)];
        assert_eq!(choose(&nodes, Some("eu"), "r").unwrap().id, "a");
        let full = [node("a", Some("eu"), 10, 9), node("b", Some("us"), 0, 0)];
        assert_eq!(choose(&full, Some("eu"), "r").unwrap().id, "b");
        assert!(choose(&[node("a", None, 10, 0)], None, "r").is_none());
    }

    #[test]
    fn equal_nodes_share_new_rooms() {
        let nodes = [
            node("a", None, 0, 0),
            node("b", None, 0, 0),
            node("c", None, 0, 0),
        ];
        let picked: std::collections::HashSet<_> = (0..30)
            .map(|i| {
                choose(&nodes, None, &format!("room-{i}"))
                    .unwrap()
                    .id
                    .clone()
            })
            .collect();
        assert_eq!(picked.len(), 3);
    }
}
