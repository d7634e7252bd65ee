//! The sans-IO TURN server: allocations, permissions, channels, credentials
//! and quotas as plain state.
//!
//! No sockets, no clock, no spawning: the driver feeds it what arrived
//! ([`Core::handle_client`], [`Core::handle_peer`]), the passing of time
//! ([`Core::handle_timeout`]) and the outcome of relay-socket binds
//! ([`Core::relay_bound`]), and drains [`Core::poll_output`] for datagrams to
//! send and sockets to bind or release. Unit tests drive it on virtual time.

mod auth;
mod framing;
mod policy;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use stun::agent::TransactionId;
use stun::attributes::*;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::uattrs::UnknownAttributes;
use stun::xoraddr::XorMappedAddress;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::rsrvtoken::ReservationToken;

pub(crate) use auth::rest_password;
pub(crate) use framing::StreamFramer;

use crate::config::{PeerMode, TurnConfig};
use crate::stats::{add, dec, inc, TurnStats};
use crate::Transport;
use auth::{verify_integrity, Credentials, Key, Lookup, NonceCheck, Nonces};
use policy::PeerPolicy;

/// How often expired allocations, permissions and channels are swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Ports tried for one allocation before answering 508.
const MAX_BIND_ATTEMPTS: u32 = 8;
/// How long a port reserved by EVEN-PORT's R bit waits for its token.
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);
/// Source IPs tracked by the unauthenticated-request limiter.
const MAX_RATE_ENTRIES: usize = 100_000;

/// One client association: transport, client address, server address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FiveTuple {
    pub(crate) transport: Transport,
    pub(crate) client: SocketAddr,
    pub(crate) server: SocketAddr,
}

/// An allocation's id (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AllocId(u64);

/// Something that happened, for [`Core::handle_input`].
#[derive(Debug)]
pub(crate) enum Input<'a> {
    /// A datagram (UDP) or one frame (TCP/TLS) from the client of `tuple`.
    Client { tuple: FiveTuple, data: &'a [u8] },
    /// A datagram from `peer` on the relay socket bound at `relay`.
    Peer {
        relay: SocketAddr,
        peer: SocketAddr,
        data: &'a [u8],
    },
    /// The outcome of an [`Output::BindRelay`].
    RelayBound {
        id: AllocId,
        addr: SocketAddr,
        ok: bool,
    },
    /// A TCP/TLS client connection closed.
    ClientClosed(FiveTuple),
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Send `data` to the client of `tuple` (over its listener or connection).
    ToClient { tuple: FiveTuple, data: Vec<u8> },
    /// Send `data` from the relay socket bound at `relay` to `peer`.
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// Bind a UDP relay socket at `addr`, then call [`Core::relay_bound`].
    BindRelay { id: AllocId, addr: SocketAddr },
    /// Close the relay socket bound at `addr`.
    ReleaseRelay { addr: SocketAddr },
}

/// Fixed inputs of a core: the clock reading it starts at (instant and wall
/// clock, so that REST expiries can be compared on virtual time) and a random
/// seed for nonces, ports and transaction ids.
pub(crate) struct CoreParams {
    pub(crate) now: Instant,
    pub(crate) unix_now: SystemTime,
    pub(crate) seed: [u8; 32],
}

struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    fn take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortChoice {
    Any,
    Even,
    EvenReserveNext,
    Reserved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AllocState {
    /// Waiting for the driver to bind the relay socket.
    Binding {
        attempts: u32,
        /// How the port was chosen: EVEN-PORT (with the R bit: reserve the
        /// next port too), or a redeemed RESERVATION-TOKEN (no retry).
        choice: PortChoice,
    },
    Active,
}

struct Allocation {
    tuple: FiveTuple,
    username: String,
    identity: String,
    key: Key,
    /// The relay socket's bound address.
    relay: SocketAddr,
    /// The address advertised in XOR-RELAYED-ADDRESS (public IP, same port).
    advertised_ip: IpAddr,
    lifetime: Duration,
    expires: Instant,
    perms: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    peer_channels: HashMap<SocketAddr, u16>,
    bucket: Option<TokenBucket>,
    alloc_txid: TransactionId,
    alloc_fingerprint: bool,
    alloc_response: Vec<u8>,
    state: AllocState,
}

impl Allocation {
    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.perms.get(&ip).is_some_and(|&exp| exp > now)
    }

    fn within_bandwidth(&mut self, bytes: usize, now: Instant) -> bool {
        match &mut self.bucket {
            None => true,
            Some(b) => b.take(bytes as f64, now),
        }
    }
}

/// The authenticated sender of a request.
struct Auth {
    username: String,
    identity: String,
    key: Key,
}

/// A request being answered.
struct Req<'a> {
    tuple: FiveTuple,
    msg: &'a Message,
    fingerprint: bool,
}

/// Comprehension-required attributes this server understands (or accepts and
/// ignores, like DONT-FRAGMENT and the deprecated BANDWIDTH).
const KNOWN_REQUIRED: &[u16] = &[
    0x0001, 0x0006, 0x0008, 0x0009, 0x000A, 0x000C, 0x000D, 0x0010, 0x0012, 0x0013, 0x0014, 0x0015,
    0x0016, 0x0017, 0x0018, 0x0019, 0x001A, 0x0020, 0x0022, 0x0024, 0x0025,
];

/// The TURN server state machine.
pub(crate) struct Core {
    realm: String,
    creds: Credentials,
    nonces: Nonces,
    policy: PeerPolicy,
    stats: Arc<TurnStats>,
    rng: StdRng,
    epoch: Instant,
    epoch_unix: Duration,

    relay_ip: Option<IpAddr>,
    public_ip: Option<IpAddr>,
    min_port: u16,
    max_port: u16,
    default_lifetime: Duration,
    max_lifetime: Duration,
    permission_lifetime: Duration,
    channel_lifetime: Duration,
    user_quota: u32,
    total_quota: u32,
    max_bytes_per_sec: u64,
    unauth_rate: u32,

    allocs: HashMap<AllocId, Allocation>,
    by_tuple: HashMap<FiveTuple, AllocId>,
    by_relay: HashMap<SocketAddr, AllocId>,
    user_allocs: HashMap<String, u32>,
    /// Ports held for a RESERVATION-TOKEN: token -> (address, expiry).
    reservations: HashMap<[u8; 8], (SocketAddr, Instant)>,
    reserved: HashMap<SocketAddr, [u8; 8]>,
    unauth: HashMap<IpAddr, TokenBucket>,
    next_id: u64,
    next_sweep: Instant,
    out: VecDeque<Output>,
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

impl Core {
    /// A core for `config` (already validated). `deny_ports` of the config
    /// should already include the server's own listening ports.
    pub(crate) fn new(config: &TurnConfig, stats: Arc<TurnStats>, params: CoreParams) -> Self {
        let users: Vec<(String, String)> = config
            .users
            .iter()
            .map(|u| (u.username.clone(), u.password.clone()))
            .collect();
        let mut rng = StdRng::from_seed(params.seed);
        let mut nonce_key = [0u8; 32];
        rng.fill_bytes(&mut nonce_key);
        Core {
            realm: config.realm.clone(),
            creds: Credentials::new(&config.realm, config.secret.as_deref(), &users),
            nonces: Nonces::new(&nonce_key, u64::from(config.nonce_lifetime_secs)),
            policy: PeerPolicy::new(
                config.peer_mode,
                &config.media_addrs,
                &config.allow_peers,
                &config.deny_ports,
            ),
            stats,
            rng,
            epoch: params.now,
            epoch_unix: params
                .unix_now
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
            relay_ip: config.relay_ip,
            public_ip: config.public_ip,
            min_port: config.min_port,
            max_port: config.max_port.max(config.min_port),
            default_lifetime: secs(config.default_lifetime_secs),
            max_lifetime: secs(config.max_lifetime_secs.max(config.default_lifetime_secs)),
            permission_lifetime: secs(config.permission_lifetime_secs),
            channel_lifetime: secs(config.channel_lifetime_secs),
            user_quota: config.user_quota,
            total_quota: config.total_quota,
            max_bytes_per_sec: config.max_bytes_per_sec,
            unauth_rate: config.unauth_requests_per_sec,
            allocs: HashMap::new(),
            by_tuple: HashMap::new(),
            by_relay: HashMap::new(),
            user_allocs: HashMap::new(),
            reservations: HashMap::new(),
            reserved: HashMap::new(),
            unauth: HashMap::new(),
            next_id: 1,
            next_sweep: params.now + SWEEP_INTERVAL,
            out: VecDeque::new(),
        }
    }

    /// The next output for the driver, if any.
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Core::handle_timeout`] next has work to do.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next_sweep
    }

    /// Whether the client of `tuple` holds an allocation.
    pub(crate) fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    /// Number of allocations (bound or binding).
    #[cfg(test)]
    pub(crate) fn allocation_count(&self) -> usize {
        self.allocs.len()
    }

    fn unix_now(&self, now: Instant) -> u64 {
        (self.epoch_unix + now.saturating_duration_since(self.epoch)).as_secs()
    }

    // ----- inputs ---------------------------------------------------------

    /// Feeds one input at time `now`; then drain [`Core::poll_output`].
    pub(crate) fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Client { tuple, data } => self.handle_client(now, tuple, data),
            Input::Peer { relay, peer, data } => self.handle_peer(now, relay, peer, data),
            Input::RelayBound { id, addr, ok } => self.relay_bound(now, id, addr, ok),
            Input::ClientClosed(tuple) => self.client_closed(tuple),
        }
    }

    /// A datagram (UDP) or one frame (TCP/TLS) from a client.
    pub(crate) fn handle_client(&mut self, now: Instant, tuple: FiveTuple, data: &[u8]) {
        if wire::is_channel_data(data) {
            self.client_channel_data(now, tuple, data);
            return;
        }
        if (data.first().copied().unwrap_or(0xFF) & 0xC0) != 0 || !is_message(data) {
            inc(&self.stats.malformed_dropped);
            return;
        }
        let mut m = Message::new();
        if m.write(data).is_err() {
            inc(&self.stats.malformed_dropped);
            return;
        }
        let raw = &data[..(MESSAGE_HEADER_SIZE + m.length as usize).min(data.len())];
        let req = Req {
            tuple,
            msg: &m,
            fingerprint: m.contains(ATTR_FINGERPRINT),
        };
        let (method, class) = (m.typ.method, m.typ.class);
        if class == CLASS_REQUEST {
            if method == METHOD_BINDING {
                self.on_binding(now, &req);
            } else {
                self.on_request(now, &req, raw);
            }
        } else if class == CLASS_INDICATION && method == METHOD_SEND {
            self.on_send(now, &req);
        }
        // Responses and other indications from clients are ignored.
    }

    /// A datagram that arrived from `peer` on the relay socket bound at `relay`.
    pub(crate) fn handle_peer(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) {
        let media_only = self.policy.mode() == PeerMode::MediaOnly;
        if media_only && !self.policy.permit_addr(peer) {
            inc(&self.stats.relay_dropped);
            return;
        }
        let Some(a) = self
            .by_relay
            .get(&relay)
            .and_then(|id| self.allocs.get_mut(id))
        else {
            inc(&self.stats.relay_dropped);
            return;
        };
        if a.state != AllocState::Active
            || !a.permitted(peer.ip(), now)
            || !a.within_bandwidth(data.len(), now)
        {
            inc(&self.stats.relay_dropped);
            return;
        }
        let tuple = a.tuple;
        let msg = if let Some(&number) = a.peer_channels.get(&peer) {
            wire::channel_data(number, data, tuple.transport != Transport::Udp)
        } else {
            let mut txid = [0u8; TRANSACTION_ID_SIZE];
            self.rng.fill_bytes(&mut txid);
            wire::build(
                MessageType::new(METHOD_DATA, CLASS_INDICATION),
                TransactionId(txid),
                &[
                    &PeerAddress {
                        ip: peer.ip(),
                        port: peer.port(),
                    },
                    &Data(data.to_vec()),
                ],
                None,
                false,
            )
        };
        inc(&self.stats.packets_to_client);
        add(&self.stats.bytes_to_client, data.len() as u64);
        self.out.push_back(Output::ToClient { tuple, data: msg });
    }

    /// The driver's answer to [`Output::BindRelay`] for `addr`: bound (`ok`)
    /// or not (the port was taken).
    pub(crate) fn relay_bound(&mut self, now: Instant, id: AllocId, addr: SocketAddr, ok: bool) {
        let Some(a) = self.allocs.get_mut(&id).filter(|a| a.relay == addr) else {
            if ok {
                // Nobody waits for this socket any more.
                self.out.push_back(Output::ReleaseRelay { addr });
            }
            return;
        };
        let AllocState::Binding { attempts, choice } = a.state else {
            return;
        };
        if ok {
            a.state = AllocState::Active;
            let tuple = a.tuple;
            let relayed = RelayedAddress {
                ip: a.advertised_ip,
                port: a.relay.port(),
            };
            let lifetime = Lifetime(a.lifetime);
            let mapped = XorMappedAddress {
                ip: tuple.client.ip(),
                port: tuple.client.port(),
            };
            let mut token = None;
            if choice == PortChoice::EvenReserveNext {
                let next = SocketAddr::new(a.relay.ip(), a.relay.port().wrapping_add(1));
                let mut t = [0u8; 8];
                self.rng.fill_bytes(&mut t);
                self.reservations
                    .insert(t, (next, now + RESERVATION_LIFETIME));
                self.reserved.insert(next, t);
                token = Some(ReservationToken(t.to_vec()));
            }
            let Some(a) = self.allocs.get_mut(&id) else {
                return;
            };
            let mut attrs: Vec<&dyn Setter> = vec![&relayed, &lifetime, &mapped];
            if let Some(t) = &token {
                attrs.push(t);
            }
            let response = wire::build(
                MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE),
                a.alloc_txid,
                &attrs,
                Some(&a.key),
                a.alloc_fingerprint,
            );
            a.alloc_response = response.clone();
            inc(&self.stats.allocations_total);
            inc(&self.stats.allocations_active);
            tracing::debug!(client = %tuple.client, relay = %a.relay, user = %a.username, "allocation created");
            self.out.push_back(Output::ToClient {
                tuple,
                data: response,
            });
            return;
        }
        let old = a.relay;
        self.by_relay.remove(&old);
        let ip = old.ip();
        let next = if attempts < MAX_BIND_ATTEMPTS && choice != PortChoice::Reserved {
            self.pick_port(ip, choice)
        } else {
            None
        };
        match next {
            Some(port) => {
                let addr = SocketAddr::new(ip, port);
                if let Some(a) = self.allocs.get_mut(&id) {
                    a.relay = addr;
                    a.state = AllocState::Binding {
                        attempts: attempts + 1,
                        choice,
                    };
                }
                self.by_relay.insert(addr, id);
                self.out.push_back(Output::BindRelay { id, addr });
            }
            None => {
                let Some(a) = self.remove_alloc(id) else {
                    return;
                };
                inc(&self.stats.quota_refusals);
                let data = wire::build(
                    MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE),
                    a.alloc_txid,
                    &[&wire::error_attr(508)],
                    Some(&a.key),
                    a.alloc_fingerprint,
                );
                self.out.push_back(Output::ToClient {
                    tuple: a.tuple,
                    data,
                });
            }
        }
    }

    /// A TCP/TLS client connection closed: its allocation goes with it.
    pub(crate) fn client_closed(&mut self, tuple: FiveTuple) {
        if let Some(&id) = self.by_tuple.get(&tuple) {
            self.remove_alloc(id);
        }
    }

    /// Expires allocations, permissions, channels and limiter entries.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let expired: Vec<AllocId> = self
            .allocs
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(a) = self.remove_alloc(id) {
                tracing::debug!(client = %a.tuple.client, relay = %a.relay, "allocation expired");
            }
        }
        for a in self.allocs.values_mut() {
            a.perms.retain(|_, exp| *exp > now);
            let before = a.channels.len();
            a.channels.retain(|_, (_, exp)| *exp > now);
            if a.channels.len() != before {
                let channels = &a.channels;
                a.peer_channels
                    .retain(|_, number| channels.contains_key(number));
            }
        }
        self.unauth.retain(|_, b| !b.is_full(now));
        let reserved = &mut self.reserved;
        self.reservations.retain(|_, (addr, exp)| {
            let keep = *exp > now;
            if !keep {
                reserved.remove(addr);
            }
            keep
        });
    }

    // ----- helpers --------------------------------------------------------

    fn remove_alloc(&mut self, id: AllocId) -> Option<Allocation> {
        let a = self.allocs.remove(&id)?;
        self.by_tuple.remove(&a.tuple);
        if self.by_relay.get(&a.relay) == Some(&id) {
            self.by_relay.remove(&a.relay);
        }
        if let Some(n) = self.user_allocs.get_mut(&a.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.user_allocs.remove(&a.identity);
            }
        }
        if a.state == AllocState::Active {
            dec(&self.stats.allocations_active);
            self.out.push_back(Output::ReleaseRelay { addr: a.relay });
        }
        Some(a)
    }

    /// A free relay port on `ip` (even, and with a free successor, if
    /// asked), starting at a random point.
    fn pick_port(&mut self, ip: IpAddr, choice: PortChoice) -> Option<u16> {
        let (lo, hi) = (u32::from(self.min_port), u32::from(self.max_port));
        let span = hi - lo + 1;
        let start = self.rng.random_range(0..span);
        let free = |p: u32| {
            let addr = SocketAddr::new(ip, p as u16);
            p <= hi && !self.by_relay.contains_key(&addr) && !self.reserved.contains_key(&addr)
        };
        (0..span)
            .map(|i| lo + (start + i) % span)
            .find(|&p| match choice {
                PortChoice::Any | PortChoice::Reserved => free(p),
                PortChoice::Even => p % 2 == 0 && free(p),
                PortChoice::EvenReserveNext => p % 2 == 0 && free(p) && free(p + 1),
            })
            .map(|p| p as u16)
    }

    fn unauth_allowed(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.unauth_rate == 0 {
            return true;
        }
        let rate = f64::from(self.unauth_rate);
        let burst = rate * 5.0;
        if !self.unauth.contains_key(&ip) && self.unauth.len() >= MAX_RATE_ENTRIES {
            inc(&self.stats.rate_limited);
            return false;
        }
        let ok = self
            .unauth
            .entry(ip)
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .take(1.0, now);
        if !ok {
            inc(&self.stats.rate_limited);
        }
        ok
    }

    fn reply(&mut self, req: &Req, class: MessageClass, attrs: &[&dyn Setter], key: Option<&Key>) {
        let data = wire::build(
            MessageType::new(req.msg.typ.method, class),
            req.msg.transaction_id,
            attrs,
            key.map(|k| &k[..]),
            req.fingerprint,
        );
        self.out.push_back(Output::ToClient {
            tuple: req.tuple,
            data,
        });
    }

    fn reply_error(&mut self, req: &Req, code: u16, key: Option<&Key>) {
        self.reply(req, CLASS_ERROR_RESPONSE, &[&wire::error_attr(code)], key);
    }

    /// An error to a request that is not (yet) authenticated: rate limited,
    /// with REALM and a fresh NONCE for 401 and 438.
    fn reply_unauth(&mut self, now: Instant, req: &Req, code: u16) {
        let ip = req.tuple.client.ip();
        if !self.unauth_allowed(ip, now) {
            return;
        }
        if code == 401 || code == 438 {
            let nonce = self.nonces.issue(ip, self.unix_now(now));
            let realm = TextAttribute::new(ATTR_REALM, self.realm.clone());
            let nonce = TextAttribute::new(ATTR_NONCE, nonce);
            self.reply(
                req,
                CLASS_ERROR_RESPONSE,
                &[&wire::error_attr(code), &realm, &nonce],
                None,
            );
        } else {
            self.reply_error(req, code, None);
        }
    }

    fn authenticate(&mut self, now: Instant, req: &Req, raw: &[u8]) -> Option<Auth> {
        let m = req.msg;
        if !m.contains(ATTR_MESSAGE_INTEGRITY) {
            self.reply_unauth(now, req, 401);
            return None;
        }
        let (Ok(user), Ok(_realm), Ok(nonce)) = (
            TextAttribute::get_from_as(m, ATTR_USERNAME),
            TextAttribute::get_from_as(m, ATTR_REALM),
            TextAttribute::get_from_as(m, ATTR_NONCE),
        ) else {
            self.reply_unauth(now, req, 400);
            return None;
        };
        let unix = self.unix_now(now);
        if self.nonces.check(&nonce.text, req.tuple.client.ip(), unix) == NonceCheck::Stale {
            self.reply_unauth(now, req, 438);
            return None;
        }
        let (key, identity) = match self.creds.lookup(&user.text, unix) {
            Lookup::Found { key, identity } => (key, identity),
            outcome => {
                inc(&self.stats.auth_failures);
                tracing::debug!(client = %req.tuple.client, user = %user.text, ?outcome, "credentials refused");
                self.reply_unauth(now, req, 401);
                return None;
            }
        };
        if !verify_integrity(raw, &key) {
            inc(&self.stats.auth_failures);
            tracing::debug!(client = %req.tuple.client, user = %user.text, "bad MESSAGE-INTEGRITY");
            self.reply_unauth(now, req, 401);
            return None;
        }
        Some(Auth {
            username: user.text,
            identity,
            key,
        })
    }

    /// max(default, min(requested, max)), or zero when zero was asked for.
    fn lifetime(&self, m: &Message) -> Duration {
        let mut lt = Lifetime::default();
        let requested = match lt.get_from(m) {
            Ok(()) => lt.0,
            Err(_) => return self.default_lifetime,
        };
        if requested.is_zero() {
            return Duration::ZERO;
        }
        requested.min(self.max_lifetime).max(self.default_lifetime)
    }

    fn relay_family_matches(relay: SocketAddr, peer: SocketAddr) -> bool {
        relay.is_ipv4() == peer.is_ipv4()
    }

    // ----- requests -------------------------------------------------------

    fn on_binding(&mut self, now: Instant, req: &Req) {
        if !self.unauth_allowed(req.tuple.client.ip(), now) {
            return;
        }
        let mapped = XorMappedAddress {
            ip: req.tuple.client.ip(),
            port: req.tuple.client.port(),
        };
        self.reply(req, CLASS_SUCCESS_RESPONSE, &[&mapped], None);
    }

    fn on_request(&mut self, now: Instant, req: &Req, raw: &[u8]) {
        let method = req.msg.typ.method;
        let known = [
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ];
        if !known.contains(&method) {
            self.reply_unauth(now, req, 400);
            return;
        }
        let Some(auth) = self.authenticate(now, req, raw) else {
            return;
        };
        let unknown: Vec<AttrType> = req
            .msg
            .attributes
            .0
            .iter()
            .map(|a| a.typ)
            .filter(|t| t.0 < 0x8000 && !KNOWN_REQUIRED.contains(&t.0))
            .collect();
        if !unknown.is_empty() {
            self.reply(
                req,
                CLASS_ERROR_RESPONSE,
                &[&wire::error_attr(420), &UnknownAttributes(unknown)],
                Some(&auth.key),
            );
            return;
        }
        if method == METHOD_ALLOCATE {
            self.on_allocate(now, req, auth);
            return;
        }
        // Every other request needs this 5-tuple's allocation, held by the
        // same user.
        let Some(&id) = self.by_tuple.get(&req.tuple) else {
            self.reply_error(req, 437, Some(&auth.key));
            return;
        };
        let Some(a) = self.allocs.get(&id) else {
            self.reply_error(req, 437, Some(&auth.key));
            return;
        };
        if a.username != auth.username {
            self.reply_error(req, 441, Some(&auth.key));
            return;
        }
        if a.state != AllocState::Active {
            // Still binding its relay socket: the client will retransmit.
            return;
        }
        if method == METHOD_REFRESH {
            self.on_refresh(now, req, id, &auth);
        } else if method == METHOD_CREATE_PERMISSION {
            self.on_create_permission(now, req, id, &auth);
        } else {
            self.on_channel_bind(now, req, id, &auth);
        }
    }

    fn on_allocate(&mut self, now: Instant, req: &Req, auth: Auth) {
        let m = req.msg;
        if let Some(&id) = self.by_tuple.get(&req.tuple) {
            if let Some(a) = self.allocs.get(&id) {
                if a.alloc_txid == m.transaction_id {
                    // A retransmission: repeat the answer (none yet while binding).
                    if a.state == AllocState::Active {
                        let data = a.alloc_response.clone();
                        self.out.push_back(Output::ToClient {
                            tuple: req.tuple,
                            data,
                        });
                    }
                    return;
                }
            }
            self.reply_error(req, 437, Some(&auth.key));
            return;
        }
        let key = Some(&auth.key);
        let transport = match m.get(ATTR_REQUESTED_TRANSPORT) {
            Ok(v) if v.len() == 4 => v[0],
            _ => return self.reply_error(req, 400, key),
        };
        if transport != 17 {
            return self.reply_error(req, 442, key);
        }
        let token = m.get(ATTR_RESERVATION_TOKEN).ok();
        if token.is_some() && m.contains(ATTR_EVEN_PORT) {
            return self.reply_error(req, 400, key);
        }
        let relay_ip = self.relay_ip.unwrap_or(req.tuple.server.ip());
        let advertised_ip = self.public_ip.unwrap_or(relay_ip);
        if advertised_ip.is_unspecified() {
            tracing::warn!("no relay address to advertise: set relay_ip or public_ip");
            return self.reply_error(req, 508, key);
        }
        if let Ok(v) = m.get(ATTR_REQUESTED_ADDRESS_FAMILY) {
            let wants_v4 = v.first() == Some(&0x01);
            let wants_v6 = v.first() == Some(&0x02);
            if !(wants_v4 && relay_ip.is_ipv4() || wants_v6 && relay_ip.is_ipv6()) {
                return self.reply_error(req, 440, key);
            }
        }
        let held = self.user_allocs.get(&auth.identity).copied().unwrap_or(0);
        if held >= self.user_quota {
            inc(&self.stats.quota_refusals);
            return self.reply_error(req, 486, key);
        }
        if self.allocs.len() >= self.total_quota as usize {
            inc(&self.stats.quota_refusals);
            return self.reply_error(req, 508, key);
        }
        let choice = match m.get(ATTR_EVEN_PORT) {
            Ok(v) if v.first().is_some_and(|b| b & 0x80 != 0) => PortChoice::EvenReserveNext,
            Ok(_) => PortChoice::Even,
            Err(_) if token.is_some() => PortChoice::Reserved,
            Err(_) => PortChoice::Any,
        };
        let port = match &token {
            Some(t) => {
                let redeemed = <[u8; 8]>::try_from(t.as_slice())
                    .ok()
                    .and_then(|t| self.reservations.remove(&t))
                    .filter(|(addr, exp)| *exp > now && addr.ip() == relay_ip);
                if let Some((addr, _)) = redeemed {
                    self.reserved.remove(&addr);
                }
                redeemed.map(|(addr, _)| addr.port())
            }
            None => self.pick_port(relay_ip, choice),
        };
        let Some(port) = port else {
            inc(&self.stats.quota_refusals);
            return self.reply_error(req, 508, key);
        };
        let lifetime = match self.lifetime(m) {
            d if d.is_zero() => self.default_lifetime,
            d => d,
        };
        let id = AllocId(self.next_id);
        self.next_id += 1;
        let relay = SocketAddr::new(relay_ip, port);
        let bucket = (self.max_bytes_per_sec > 0).then(|| {
            let rate = self.max_bytes_per_sec as f64;
            TokenBucket::new(rate, rate, now)
        });
        *self.user_allocs.entry(auth.identity.clone()).or_insert(0) += 1;
        self.allocs.insert(
            id,
            Allocation {
                tuple: req.tuple,
                username: auth.username,
                identity: auth.identity,
                key: auth.key,
                relay,
                advertised_ip,
                lifetime,
                expires: now + lifetime,
                perms: HashMap::new(),
                channels: HashMap::new(),
                peer_channels: HashMap::new(),
                bucket,
                alloc_txid: m.transaction_id,
                alloc_fingerprint: req.fingerprint,
                alloc_response: Vec::new(),
                state: AllocState::Binding {
                    attempts: 1,
                    choice,
                },
            },
        );
        self.by_tuple.insert(req.tuple, id);
        self.by_relay.insert(relay, id);
        self.out.push_back(Output::BindRelay { id, addr: relay });
    }

    fn on_refresh(&mut self, now: Instant, req: &Req, id: AllocId, auth: &Auth) {
        let m = req.msg;
        if let Ok(v) = m.get(ATTR_REQUESTED_ADDRESS_FAMILY) {
            let relay_v4 = self.allocs.get(&id).is_some_and(|a| a.relay.is_ipv4());
            let wants_v4 = v.first() == Some(&0x01);
            if wants_v4 != relay_v4 {
                return self.reply_error(req, 443, Some(&auth.key));
            }
        }
        let lifetime = self.lifetime(m);
        if lifetime.is_zero() {
            if let Some(a) = self.remove_alloc(id) {
                tracing::debug!(client = %a.tuple.client, relay = %a.relay, "allocation deleted by refresh");
            }
        } else if let Some(a) = self.allocs.get_mut(&id) {
            a.expires = now + lifetime;
        }
        self.reply(
            req,
            CLASS_SUCCESS_RESPONSE,
            &[&Lifetime(lifetime)],
            Some(&auth.key),
        );
    }

    fn on_create_permission(&mut self, now: Instant, req: &Req, id: AllocId, auth: &Auth) {
        let m = req.msg;
        let Some(relay) = self.allocs.get(&id).map(|a| a.relay) else {
            return;
        };
        let peers: Option<Vec<SocketAddr>> = wire::all_attrs(m, ATTR_XOR_PEER_ADDRESS)
            .map(|v| wire::decode_xor_addr(v, &m.transaction_id))
            .collect();
        let peers = match peers {
            Some(p) if !p.is_empty() => p,
            _ => return self.reply_error(req, 400, Some(&auth.key)),
        };
        if peers.iter().any(|p| !Self::relay_family_matches(relay, *p)) {
            return self.reply_error(req, 443, Some(&auth.key));
        }
        if let Some(refused) = peers.iter().find(|p| !self.policy.permit_ip(p.ip())) {
            inc(&self.stats.permission_refusals);
            tracing::debug!(client = %req.tuple.client, peer = %refused.ip(), "permission refused by peer policy");
            return self.reply_error(req, 403, Some(&auth.key));
        }
        let until = now + self.permission_lifetime;
        if let Some(a) = self.allocs.get_mut(&id) {
            for p in &peers {
                a.perms.insert(p.ip(), until);
            }
        }
        self.reply(req, CLASS_SUCCESS_RESPONSE, &[], Some(&auth.key));
    }

    fn on_channel_bind(&mut self, now: Instant, req: &Req, id: AllocId, auth: &Auth) {
        let m = req.msg;
        let key = Some(&auth.key);
        let number = match m.get(ATTR_CHANNEL_NUMBER) {
            Ok(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => return self.reply_error(req, 400, key),
        };
        if !(0x4000..=0x7FFF).contains(&number) {
            return self.reply_error(req, 400, key);
        }
        let Some(peer) = wire::all_attrs(m, ATTR_XOR_PEER_ADDRESS)
            .next()
            .and_then(|v| wire::decode_xor_addr(v, &m.transaction_id))
        else {
            return self.reply_error(req, 400, key);
        };
        let Some(a) = self.allocs.get(&id) else {
            return;
        };
        if !Self::relay_family_matches(a.relay, peer) {
            return self.reply_error(req, 443, key);
        }
        if !self.policy.permit_addr(peer) {
            inc(&self.stats.permission_refusals);
            tracing::debug!(client = %req.tuple.client, %peer, "channel bind refused by peer policy");
            return self.reply_error(req, 403, key);
        }
        let channel_taken = a
            .channels
            .get(&number)
            .is_some_and(|(bound, _)| *bound != peer);
        let peer_taken = a.peer_channels.get(&peer).is_some_and(|n| *n != number);
        if channel_taken || peer_taken {
            return self.reply_error(req, 400, key);
        }
        let (perm_until, chan_until) =
            (now + self.permission_lifetime, now + self.channel_lifetime);
        if let Some(a) = self.allocs.get_mut(&id) {
            a.channels.insert(number, (peer, chan_until));
            a.peer_channels.insert(peer, number);
            a.perms.insert(peer.ip(), perm_until);
        }
        self.reply(req, CLASS_SUCCESS_RESPONSE, &[], key);
    }

    // ----- data from clients ---------------------------------------------

    fn on_send(&mut self, now: Instant, req: &Req) {
        let m = req.msg;
        let peer = wire::all_attrs(m, ATTR_XOR_PEER_ADDRESS)
            .next()
            .and_then(|v| wire::decode_xor_addr(v, &m.transaction_id));
        let (Some(peer), Ok(data)) = (peer, m.get(ATTR_DATA)) else {
            inc(&self.stats.malformed_dropped);
            return;
        };
        let Some(a) = self
            .by_tuple
            .get(&req.tuple)
            .and_then(|id| self.allocs.get_mut(id))
        else {
            inc(&self.stats.relay_dropped);
            return;
        };
        if !self.policy.permit_addr(peer) {
            inc(&self.stats.permission_refusals);
            return;
        }
        if a.state != AllocState::Active
            || !Self::relay_family_matches(a.relay, peer)
            || !a.permitted(peer.ip(), now)
            || !a.within_bandwidth(data.len(), now)
        {
            inc(&self.stats.relay_dropped);
            return;
        }
        let relay = a.relay;
        inc(&self.stats.packets_to_peer);
        add(&self.stats.bytes_to_peer, data.len() as u64);
        self.out.push_back(Output::ToPeer { relay, peer, data });
    }

    fn client_channel_data(&mut self, now: Instant, tuple: FiveTuple, data: &[u8]) {
        let number = u16::from_be_bytes([data[0], data[1]]);
        let len = u16::from_be_bytes([data[2], data[3]]) as usize;
        let Some(payload) = data.get(4..4 + len) else {
            inc(&self.stats.malformed_dropped);
            return;
        };
        let Some(a) = self
            .by_tuple
            .get(&tuple)
            .and_then(|id| self.allocs.get_mut(id))
        else {
            inc(&self.stats.relay_dropped);
            return;
        };
        let Some(&(peer, expires)) = a.channels.get(&number) else {
            inc(&self.stats.relay_dropped);
            return;
        };
        if expires <= now || !a.permitted(peer.ip(), now) || !a.within_bandwidth(len, now) {
            inc(&self.stats.relay_dropped);
            return;
        }
        let relay = a.relay;
        inc(&self.stats.packets_to_peer);
        add(&self.stats.bytes_to_peer, len as u64);
        self.out.push_back(Output::ToPeer {
            relay,
            peer,
            data: payload.to_vec(),
        });
    }
}
