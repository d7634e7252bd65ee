//! The core on virtual time: a scripted client talks to it through byte
//! buffers; relay binds succeed unless a port is marked taken.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;

use super::*;
use crate::config::{PeerMode, StaticUser, TurnConfig};
use crate::rest_credentials;

const SECRET: &str = "test-secret";
const SERVER: &str = "192.0.2.1:3478";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn config() -> TurnConfig {
    TurnConfig {
        secret: Some(SECRET.into()),
        realm: "example.org".into(),
        peer_mode: PeerMode::General,
        unauth_requests_per_sec: 0,
        ..TurnConfig::default()
    }
}

struct Harness {
    core: Core,
    stats: Arc<TurnStats>,
    t0: Instant,
    now: Instant,
    unix0: SystemTime,
    taken_ports: HashSet<u16>,
    bound: HashSet<SocketAddr>,
}

impl Harness {
    fn new(config: TurnConfig) -> Self {
        let stats = Arc::new(TurnStats::default());
        let t0 = Instant::now();
        let unix0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let core = Core::new(
            &config,
            stats.clone(),
            CoreParams {
                now: t0,
                unix_now: unix0,
                seed: [7; 32],
            },
        );
        Harness {
            core,
            stats,
            t0,
            now: t0,
            unix0,
            taken_ports: HashSet::new(),
            bound: HashSet::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
    }

    /// Drains outputs, completing relay binds like a driver would.
    fn outputs(&mut self) -> Vec<Output> {
        let mut rest = Vec::new();
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::BindRelay { id, addr } => {
                    let ok = !self.taken_ports.contains(&addr.port());
                    if ok {
                        self.bound.insert(addr);
                    }
                    self.core.relay_bound(self.now, id, addr, ok);
                }
                Output::ReleaseRelay { addr } => {
                    assert!(self.bound.remove(&addr), "released unbound {addr}");
                    rest.push(Output::ReleaseRelay { addr });
                }
                o => rest.push(o),
            }
        }
        rest
    }

    fn client_input(&mut self, tuple: FiveTuple, data: &[u8]) -> Vec<Output> {
        self.core.handle_client(self.now, tuple, data);
        self.outputs()
    }

    /// Sends a request and decodes the one reply.
    fn request(&mut self, tuple: FiveTuple, data: &[u8]) -> Message {
        let mut replies: Vec<Message> = self
            .client_input(tuple, data)
            .into_iter()
            .filter_map(|o| match o {
                Output::ToClient { tuple: t, data } => {
                    assert_eq!(t, tuple);
                    let mut m = Message::new();
                    m.write(&data).expect("reply decodes");
                    Some(m)
                }
                _ => None,
            })
            .collect();
        assert_eq!(replies.len(), 1, "expected exactly one reply");
        replies.remove(0)
    }

    fn unix_now(&self) -> SystemTime {
        self.unix0 + (self.now - self.t0)
    }
}

fn udp_client(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new("198.51.100.7".parse().expect("ip"), port),
        server: sa(SERVER),
    }
}

fn code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|_| e.code.0)
}

fn text(m: &Message, attr: AttrType) -> Option<String> {
    TextAttribute::get_from_as(m, attr).ok().map(|t| t.text)
}

/// A TURN client's view: credentials and the realm/nonce it was given.
struct Client {
    tuple: FiveTuple,
    username: String,
    password: String,
    realm: Option<String>,
    nonce: Option<String>,
}

impl Client {
    fn rest(tuple: FiveTuple, identity: &str, ttl: Duration, now: SystemTime) -> Self {
        let (username, password) = rest_credentials(SECRET.as_bytes(), identity, ttl, now);
        Client {
            tuple,
            username,
            password,
            realm: None,
            nonce: None,
        }
    }

    fn build(&self, method: Method, attrs: &[&dyn Setter], sign: bool) -> (Vec<u8>, TransactionId) {
        self.build_as(MessageType::new(method, CLASS_REQUEST), attrs, sign)
    }

    fn build_as(
        &self,
        typ: MessageType,
        attrs: &[&dyn Setter],
        sign: bool,
    ) -> (Vec<u8>, TransactionId) {
        let mut m = Message::new();
        m.typ = typ;
        m.new_transaction_id().expect("txid");
        m.write_header();
        for a in attrs {
            a.add_to(&mut m).expect("attr");
        }
        if sign {
            if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
                TextAttribute::new(ATTR_USERNAME, self.username.clone())
                    .add_to(&mut m)
                    .expect("username");
                TextAttribute::new(ATTR_REALM, realm.clone())
                    .add_to(&mut m)
                    .expect("realm");
                TextAttribute::new(ATTR_NONCE, nonce.clone())
                    .add_to(&mut m)
                    .expect("nonce");
                MessageIntegrity::new_long_term_integrity(
                    self.username.clone(),
                    realm.clone(),
                    self.password.clone(),
                )
                .add_to(&mut m)
                .expect("integrity");
            }
        }
        FINGERPRINT.add_to(&mut m).expect("fingerprint");
        (m.raw, m.transaction_id)
    }

    /// Sends a signed request, learning realm/nonce from 401/438 as a client
    /// does (at most two retries).
    fn call(&mut self, h: &mut Harness, method: Method, attrs: &[&dyn Setter]) -> Message {
        for _ in 0..3 {
            let (raw, _) = self.build(method, attrs, true);
            let reply = h.request(self.tuple, &raw);
            match code(&reply) {
                Some(401) | Some(438) if self.nonce.is_none() || code(&reply) == Some(438) => {
                    self.realm = text(&reply, ATTR_REALM);
                    self.nonce = text(&reply, ATTR_NONCE);
                    assert!(self.realm.is_some() && self.nonce.is_some());
                }
                _ => return reply,
            }
        }
        panic!("no answer after retries");
    }

    fn key(&self) -> Vec<u8> {
        MessageIntegrity::new_long_term_integrity(
            self.username.clone(),
            self.realm.clone().expect("realm"),
            self.password.clone(),
        )
        .0
    }

    fn allocate(&mut self, h: &mut Harness) -> Message {
        let transport = RequestedTransport {
            protocol: PROTO_UDP,
        };
        self.call(h, METHOD_ALLOCATE, &[&transport])
    }

    fn create_permission(&mut self, h: &mut Harness, peer: SocketAddr) -> Message {
        let p = PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        };
        self.call(h, METHOD_CREATE_PERMISSION, &[&p])
    }

    fn channel_bind(&mut self, h: &mut Harness, number: u16, peer: SocketAddr) -> Message {
        let p = PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        };
        self.call(h, METHOD_CHANNEL_BIND, &[&ChannelNumber(number), &p])
    }

    fn refresh(&mut self, h: &mut Harness, lifetime: u64) -> Message {
        self.call(
            h,
            METHOD_REFRESH,
            &[&Lifetime(Duration::from_secs(lifetime))],
        )
    }
}

fn is_success(m: &Message) -> bool {
    m.typ.class == CLASS_SUCCESS_RESPONSE
}

fn relayed(m: &Message) -> SocketAddr {
    let mut r = RelayedAddress::default();
    r.get_from(m).expect("XOR-RELAYED-ADDRESS");
    SocketAddr::new(r.ip, r.port)
}

fn allocated(h: &mut Harness, port: u16, identity: &str) -> (Client, SocketAddr) {
    let now = h.unix_now();
    let mut c = Client::rest(udp_client(port), identity, Duration::from_secs(3600), now);
    let reply = c.allocate(h);
    assert!(is_success(&reply), "allocate failed: {:?}", code(&reply));
    let relay = relayed(&reply);
    (c, relay)
}

// ----- STUN and credentials --------------------------------------------------

#[test]
fn binding_request_is_answered_with_the_mapped_address() {
    let mut h = Harness::new(config());
    let c = Client::rest(udp_client(5000), "a", Duration::from_secs(60), h.unix_now());
    let (raw, txid) = c.build(METHOD_BINDING, &[], false);
    let reply = h.request(c.tuple, &raw);
    assert_eq!(reply.typ, BINDING_SUCCESS);
    assert_eq!(reply.transaction_id, txid);
    let mut x = stun::xoraddr::XorMappedAddress::default();
    x.get_from(&reply).expect("XOR-MAPPED-ADDRESS");
    assert_eq!(SocketAddr::new(x.ip, x.port), c.tuple.client);
    assert!(reply.contains(ATTR_FINGERPRINT));
}

#[test]
fn allocate_without_credentials_is_challenged_with_401_realm_and_nonce() {
    let mut h = Harness::new(config());
    let c = Client::rest(udp_client(5000), "a", Duration::from_secs(60), h.unix_now());
    let (raw, _) = c.build(
        METHOD_ALLOCATE,
        &[&RequestedTransport {
            protocol: PROTO_UDP,
        }],
        false,
    );
    let reply = h.request(c.tuple, &raw);
    assert_eq!(code(&reply), Some(401));
    assert_eq!(text(&reply, ATTR_REALM).as_deref(), Some("example.org"));
    assert!(text(&reply, ATTR_NONCE).is_some_and(|n| !n.is_empty()));
    assert!(!reply.contains(ATTR_MESSAGE_INTEGRITY));
    assert_eq!(
        h.stats.snapshot().auth_failures,
        0,
        "a challenge is no failure"
    );
}

#[test]
fn allocate_with_good_rest_credentials_gets_a_signed_relayed_address() {
    let mut h = Harness::new(config());
    let (c, relay) = allocated(&mut h, 5000, "alice");
    assert_eq!(relay.ip(), sa(SERVER).ip());
    assert!(relay.port() >= 49152);
    assert!(h.bound.contains(&relay));
    // Allocate once more to read the success response in full.
    let mut c2 = Client::rest(
        udp_client(5001),
        "alice",
        Duration::from_secs(60),
        h.unix_now(),
    );
    let reply = c2.allocate(&mut h);
    let mut lt = Lifetime::default();
    lt.get_from(&reply).expect("LIFETIME");
    assert_eq!(lt.0, Duration::from_secs(600));
    let raw = reply.raw.clone();
    assert!(
        auth::verify_integrity(&raw, &c2.key()),
        "response is signed"
    );
    let s = h.stats.snapshot();
    assert_eq!((s.allocations_active, s.allocations_total), (2, 2));
    drop(c);
}

#[test]
fn allocate_with_a_wrong_password_gets_401_and_a_fresh_nonce() {
    let mut h = Harness::new(config());
    let mut c = Client::rest(
        udp_client(5000),
        "mallory",
        Duration::from_secs(60),
        h.unix_now(),
    );
    c.password = "not-the-password".into();
    let reply = c.allocate(&mut h);
    assert_eq!(code(&reply), Some(401));
    assert!(text(&reply, ATTR_NONCE).is_some());
    assert!(text(&reply, ATTR_REALM).is_some());
    assert_eq!(h.stats.snapshot().auth_failures, 1);
    assert_eq!(h.core.allocation_count(), 0);
    assert!(h.bound.is_empty());
}

#[test]
fn allocate_with_credentials_of_another_secret_is_refused() {
    let mut h = Harness::new(config());
    let (username, password) = rest_credentials(
        b"wrong-secret",
        "eve",
        Duration::from_secs(60),
        h.unix_now(),
    );
    let mut c = Client {
        tuple: udp_client(5000),
        username,
        password,
        realm: None,
        nonce: None,
    };
    assert_eq!(code(&c.allocate(&mut h)), Some(401));
}

#[test]
fn allocate_with_expired_rest_credentials_gets_401() {
    let mut h = Harness::new(config());
    let past = h.unix_now() - Duration::from_secs(120);
    let mut c = Client::rest(udp_client(5000), "late", Duration::from_secs(60), past);
    let reply = c.allocate(&mut h);
    assert_eq!(code(&reply), Some(401));
    assert!(text(&reply, ATTR_NONCE).is_some());
    assert_eq!(h.stats.snapshot().auth_failures, 1);
}

#[test]
fn credentials_that_expire_later_stop_working_on_virtual_time() {
    let mut h = Harness::new(TurnConfig {
        nonce_lifetime_secs: 3600,
        ..config()
    });
    let mut c = Client::rest(
        udp_client(5000),
        "bob",
        Duration::from_secs(100),
        h.unix_now(),
    );
    assert!(is_success(&c.allocate(&mut h)));
    h.advance(Duration::from_secs(50));
    assert!(is_success(&c.refresh(&mut h, 600)));
    h.advance(Duration::from_secs(60));
    assert_eq!(code(&c.refresh(&mut h, 600)), Some(401));
}

#[test]
fn a_stale_nonce_gets_438_and_the_new_nonce_works() {
    let mut h = Harness::new(TurnConfig {
        nonce_lifetime_secs: 300,
        ..config()
    });
    let (mut c, _) = allocated(&mut h, 5000, "carol");
    let old_nonce = c.nonce.clone();
    h.advance(Duration::from_secs(301));
    let (raw, _) = c.build(METHOD_REFRESH, &[&Lifetime(Duration::from_secs(600))], true);
    let reply = h.request(c.tuple, &raw);
    assert_eq!(code(&reply), Some(438));
    let fresh = text(&reply, ATTR_NONCE);
    assert!(fresh.is_some() && fresh != old_nonce);
    // The client's retry loop picks up the new nonce.
    assert!(is_success(&c.refresh(&mut h, 600)));
}

#[test]
fn static_users_work_only_when_configured() {
    let mut h = Harness::new(TurnConfig {
        secret: None,
        users: vec![StaticUser {
            username: "test".into(),
            password: "test".into(),
        }],
        ..config()
    });
    let mut good = Client {
        tuple: udp_client(5000),
        username: "test".into(),
        password: "test".into(),
        realm: None,
        nonce: None,
    };
    assert!(is_success(&good.allocate(&mut h)));
    let mut rest = Client::rest(udp_client(5001), "x", Duration::from_secs(60), h.unix_now());
    assert_eq!(
        code(&rest.allocate(&mut h)),
        Some(401),
        "no secret configured"
    );
}

#[test]
fn a_request_without_username_realm_or_nonce_gets_400() {
    let mut h = Harness::new(config());
    let mut m = Message::new();
    m.typ = MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST);
    m.new_transaction_id().expect("txid");
    m.write_header();
    RequestedTransport {
        protocol: PROTO_UDP,
    }
    .add_to(&mut m)
    .expect("attr");
    MessageIntegrity(vec![1; 16]).add_to(&mut m).expect("mi");
    let reply = h.request(udp_client(5000), &m.raw);
    assert_eq!(code(&reply), Some(400));
}

// ----- allocation lifecycle ---------------------------------------------------

#[test]
fn allocations_expire_unless_refreshed() {
    let mut h = Harness::new(TurnConfig {
        nonce_lifetime_secs: 3600,
        ..config()
    });
    let (mut c, relay) = allocated(&mut h, 5000, "dave");
    h.advance(Duration::from_secs(500));
    assert!(is_success(&c.refresh(&mut h, 600)));
    h.advance(Duration::from_secs(550));
    assert!(h.outputs().is_empty(), "still alive at 1050 s");
    assert_eq!(h.core.allocation_count(), 1);
    h.advance(Duration::from_secs(51));
    assert_eq!(h.outputs(), vec![Output::ReleaseRelay { addr: relay }]);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.stats.snapshot().allocations_active, 0);
    // The 5-tuple is free again: a refresh now gets 437.
    assert_eq!(code(&c.refresh(&mut h, 600)), Some(437));
}

#[test]
fn refresh_with_lifetime_zero_deletes_the_allocation() {
    let mut h = Harness::new(config());
    let (mut c, relay) = allocated(&mut h, 5000, "erin");
    let reply = c.refresh(&mut h, 0);
    assert!(is_success(&reply));
    assert!(!h.bound.contains(&relay), "relay socket released");
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(
        code(&c.create_permission(&mut h, sa("203.0.113.9:4000"))),
        Some(437)
    );
}

#[test]
fn lifetimes_are_clamped_to_the_maximum() {
    let mut h = Harness::new(config());
    let (mut c, _) = allocated(&mut h, 5000, "fay");
    let reply = c.refresh(&mut h, 100_000);
    let mut lt = Lifetime::default();
    lt.get_from(&reply).expect("LIFETIME");
    assert_eq!(lt.0, Duration::from_secs(3600));
    let reply = c.refresh(&mut h, 5);
    lt.get_from(&reply).expect("LIFETIME");
    assert_eq!(lt.0, Duration::from_secs(600), "never below the default");
}

#[test]
fn a_second_allocate_on_the_same_five_tuple_is_437_but_a_retransmission_is_repeated() {
    let mut h = Harness::new(config());
    // Learn realm and nonce with a first allocation, delete it, then send one
    // signed Allocate twice.
    let (mut c2, _) = allocated(&mut h, 5001, "gus");
    assert!(is_success(&c2.refresh(&mut h, 0)));
    let (raw, _) = c2.build(
        METHOD_ALLOCATE,
        &[&RequestedTransport {
            protocol: PROTO_UDP,
        }],
        true,
    );
    let first = h.request(c2.tuple, &raw);
    assert!(is_success(&first));
    let again = h.request(c2.tuple, &raw);
    assert_eq!(again.raw, first.raw, "retransmission gets the same answer");
    assert_eq!(code(&c2.allocate(&mut h)), Some(437));
}

#[test]
fn a_refresh_by_another_user_is_441() {
    let mut h = Harness::new(config());
    let (c, _) = allocated(&mut h, 5000, "hal");
    let mut other = Client::rest(c.tuple, "ivy", Duration::from_secs(600), h.unix_now());
    assert_eq!(code(&other.refresh(&mut h, 600)), Some(441));
}

#[test]
fn a_taken_relay_port_is_retried_on_another_port() {
    let mut h = Harness::new(TurnConfig {
        min_port: 50000,
        max_port: 50001,
        ..config()
    });
    h.taken_ports.insert(50000);
    h.taken_ports.insert(50001);
    let mut c = Client::rest(
        udp_client(5000),
        "jo",
        Duration::from_secs(600),
        h.unix_now(),
    );
    assert_eq!(code(&c.allocate(&mut h)), Some(508), "no port can be bound");
    assert_eq!(h.core.allocation_count(), 0);
    h.taken_ports.remove(&50001);
    let reply = c.allocate(&mut h);
    assert!(is_success(&reply));
    assert_eq!(relayed(&reply).port(), 50001);
}

#[test]
fn a_closed_tcp_connection_deletes_its_allocation() {
    let mut h = Harness::new(config());
    let tuple = FiveTuple {
        transport: Transport::Tcp,
        ..udp_client(5000)
    };
    let mut c = Client::rest(tuple, "kim", Duration::from_secs(600), h.unix_now());
    let relay = relayed(&c.allocate(&mut h));
    h.core.client_closed(tuple);
    assert_eq!(h.outputs(), vec![Output::ReleaseRelay { addr: relay }]);
    assert_eq!(h.stats.snapshot().allocations_active, 0);
}

// ----- quotas -----------------------------------------------------------------

#[test]
fn the_per_user_quota_is_486() {
    let mut h = Harness::new(TurnConfig {
        user_quota: 2,
        ..config()
    });
    allocated(&mut h, 5000, "lee");
    allocated(&mut h, 5001, "lee");
    let mut third = Client::rest(
        udp_client(5002),
        "lee",
        Duration::from_secs(600),
        h.unix_now(),
    );
    assert_eq!(code(&third.allocate(&mut h)), Some(486));
    allocated(&mut h, 5003, "someone-else");
    assert_eq!(h.stats.snapshot().quota_refusals, 1);
}

#[test]
fn the_total_quota_is_508() {
    let mut h = Harness::new(TurnConfig {
        total_quota: 2,
        ..config()
    });
    allocated(&mut h, 5000, "a");
    let (mut b, _) = allocated(&mut h, 5001, "b");
    let mut c = Client::rest(
        udp_client(5002),
        "c",
        Duration::from_secs(600),
        h.unix_now(),
    );
    assert_eq!(code(&c.allocate(&mut h)), Some(508));
    assert!(is_success(&b.refresh(&mut h, 0)));
    assert!(is_success(&c.allocate(&mut h)), "room again after a delete");
}

#[test]
fn unauthenticated_requests_are_rate_limited_per_ip() {
    let mut h = Harness::new(TurnConfig {
        unauth_requests_per_sec: 2,
        ..config()
    });
    let c = Client::rest(udp_client(5000), "x", Duration::from_secs(60), h.unix_now());
    let (raw, _) = c.build(
        METHOD_ALLOCATE,
        &[&RequestedTransport {
            protocol: PROTO_UDP,
        }],
        false,
    );
    let answered = (0..15)
        .filter(|_| !h.client_input(c.tuple, &raw).is_empty())
        .count();
    assert_eq!(answered, 10, "burst of five seconds' worth");
    assert_eq!(h.stats.snapshot().rate_limited, 5);
    h.advance(Duration::from_secs(1));
    assert!(!h.client_input(c.tuple, &raw).is_empty(), "refilled");
    // Another IP is not affected.
    let other = FiveTuple {
        client: sa("198.51.100.8:5000"),
        ..c.tuple
    };
    assert!(!h.client_input(other, &raw).is_empty());
}

// ----- peer policy ------------------------------------------------------------

#[test]
fn media_only_refuses_every_peer_but_the_media_addrs() {
    let media = sa("192.0.2.50:40000");
    let mut h = Harness::new(TurnConfig {
        peer_mode: PeerMode::MediaOnly,
        media_addrs: vec![media],
        ..config()
    });
    let (mut c, _) = allocated(&mut h, 5000, "m");
    assert!(is_success(&c.create_permission(&mut h, media)));
    assert!(is_success(&c.channel_bind(&mut h, 0x4000, media)));
    let refused = [
        c.create_permission(&mut h, sa("203.0.113.9:40000")),
        c.create_permission(&mut h, sa("127.0.0.1:40000")),
        c.channel_bind(&mut h, 0x4001, sa("192.0.2.50:40001")),
        c.channel_bind(&mut h, 0x4002, sa("8.8.8.8:53")),
    ];
    for r in &refused {
        assert_eq!(code(r), Some(403));
        assert!(
            r.contains(ATTR_MESSAGE_INTEGRITY),
            "authenticated errors are signed"
        );
    }
    assert_eq!(h.stats.snapshot().permission_refusals, 4);
}

#[test]
fn general_mode_refuses_loopback_and_private_peers() {
    let mut h = Harness::new(config());
    let (mut c, _) = allocated(&mut h, 5000, "g");
    for peer in ["127.0.0.1:40000", "10.0.0.1:40000"] {
        assert_eq!(
            code(&c.create_permission(&mut h, sa(peer))),
            Some(403),
            "{peer}"
        );
    }
    assert_eq!(
        code(&c.channel_bind(&mut h, 0x4000, sa("127.0.0.1:40000"))),
        Some(403)
    );
    assert_eq!(
        code(&c.channel_bind(&mut h, 0x4001, sa("10.0.0.1:40000"))),
        Some(403)
    );
    assert_eq!(h.stats.snapshot().permission_refusals, 4);
    assert!(is_success(
        &c.create_permission(&mut h, sa("203.0.113.9:40000"))
    ));
    assert!(is_success(&c.channel_bind(
        &mut h,
        0x4002,
        sa("203.0.113.9:40000")
    )));
}

#[test]
fn general_mode_allows_allow_listed_networks_only() {
    let mut h = Harness::new(TurnConfig {
        allow_peers: vec!["127.0.0.0/8".parse().expect("net")],
        deny_ports: vec![3478],
        ..config()
    });
    let (mut c, _) = allocated(&mut h, 5000, "g");
    assert!(is_success(
        &c.create_permission(&mut h, sa("127.0.0.1:40000"))
    ));
    assert!(is_success(&c.channel_bind(
        &mut h,
        0x4000,
        sa("127.0.0.1:40000")
    )));
    assert_eq!(
        code(&c.create_permission(&mut h, sa("10.0.0.1:40000"))),
        Some(403)
    );
    assert_eq!(
        code(&c.channel_bind(&mut h, 0x4001, sa("10.0.0.1:40000"))),
        Some(403)
    );
    assert_eq!(
        code(&c.channel_bind(&mut h, 0x4002, sa("127.0.0.1:3478"))),
        Some(403),
        "the server's own port"
    );
}

#[test]
fn a_create_permission_with_one_refused_peer_installs_none() {
    let mut h = Harness::new(config());
    let (mut c, _) = allocated(&mut h, 5000, "n");
    let ok = PeerAddress {
        ip: "203.0.113.9".parse().expect("ip"),
        port: 1,
    };
    let bad = PeerAddress {
        ip: "10.1.1.1".parse().expect("ip"),
        port: 1,
    };
    let reply = c.call(&mut h, METHOD_CREATE_PERMISSION, &[&ok, &bad]);
    assert_eq!(code(&reply), Some(403));
    // No permission for the allowed one either: its data is dropped.
    let relay = h.bound.iter().next().copied().expect("relay");
    h.core.handle_peer(h.now, relay, sa("203.0.113.9:1"), b"hi");
    assert!(h.outputs().is_empty());
}

#[test]
fn channel_bind_refuses_bad_numbers_and_rebinding() {
    let mut h = Harness::new(config());
    let (mut c, _) = allocated(&mut h, 5000, "o");
    let peer = sa("203.0.113.9:4000");
    assert_eq!(code(&c.channel_bind(&mut h, 0x3FFF, peer)), Some(400));
    assert_eq!(code(&c.channel_bind(&mut h, 0x8000, peer)), Some(400));
    assert!(is_success(&c.channel_bind(&mut h, 0x4000, peer)));
    assert!(is_success(&c.channel_bind(&mut h, 0x4000, peer)), "refresh");
    assert_eq!(code(&c.channel_bind(&mut h, 0x4001, peer)), Some(400));
    assert_eq!(
        code(&c.channel_bind(&mut h, 0x4000, sa("203.0.113.9:4001"))),
        Some(400)
    );
}

// ----- data -------------------------------------------------------------------

fn to_peer(outs: Vec<Output>) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    outs.into_iter()
        .filter_map(|o| match o {
            Output::ToPeer { relay, peer, data } => Some((relay, peer, data)),
            _ => None,
        })
        .collect()
}

fn to_client(outs: Vec<Output>) -> Vec<(FiveTuple, Vec<u8>)> {
    outs.into_iter()
        .filter_map(|o| match o {
            Output::ToClient { tuple, data } => Some((tuple, data)),
            _ => None,
        })
        .collect()
}

#[test]
fn channel_data_is_relayed_both_ways() {
    let mut h = Harness::new(config());
    let (mut c, relay) = allocated(&mut h, 5000, "p");
    let peer = sa("203.0.113.9:4000");
    assert!(is_success(&c.channel_bind(&mut h, 0x4001, peer)));

    let sent = to_peer(h.client_input(c.tuple, &[0x40, 0x01, 0, 3, 1, 2, 3]));
    assert_eq!(sent, vec![(relay, peer, vec![1, 2, 3])]);

    h.core.handle_peer(h.now, relay, peer, &[9, 8, 7, 6, 5]);
    let got = to_client(h.outputs());
    assert_eq!(got, vec![(c.tuple, vec![0x40, 0x01, 0, 5, 9, 8, 7, 6, 5])]);

    // Unbound channel, short frame: dropped.
    assert!(h.client_input(c.tuple, &[0x40, 0x02, 0, 1, 1]).is_empty());
    assert!(h.client_input(c.tuple, &[0x40, 0x01, 0, 9, 1]).is_empty());
    // A peer without permission: dropped.
    h.core
        .handle_peer(h.now, relay, sa("203.0.113.10:4000"), b"x");
    assert!(h.outputs().is_empty());

    let s = h.stats.snapshot();
    assert_eq!((s.packets_to_peer, s.bytes_to_peer), (1, 3));
    assert_eq!((s.packets_to_client, s.bytes_to_client), (1, 5));
    assert_eq!(s.malformed_dropped, 1);
    assert_eq!(s.relay_dropped, 2);
}

#[test]
fn channel_data_to_a_tcp_client_is_padded() {
    let mut h = Harness::new(config());
    let tuple = FiveTuple {
        transport: Transport::Tcp,
        ..udp_client(5000)
    };
    let mut c = Client::rest(tuple, "q", Duration::from_secs(600), h.unix_now());
    let relay = relayed(&c.allocate(&mut h));
    let peer = sa("203.0.113.9:4000");
    assert!(is_success(&c.channel_bind(&mut h, 0x4001, peer)));
    h.core.handle_peer(h.now, relay, peer, &[1]);
    assert_eq!(
        to_client(h.outputs()),
        vec![(tuple, vec![0x40, 1, 0, 1, 1, 0, 0, 0])]
    );
}

#[test]
fn send_and_data_indications_work_with_a_permission() {
    let mut h = Harness::new(config());
    let (mut c, relay) = allocated(&mut h, 5000, "r");
    let peer = sa("203.0.113.9:4000");
    let send_indication = MessageType::new(METHOD_SEND, CLASS_INDICATION);
    let (indication, _) = c.build_as(
        send_indication,
        &[
            &PeerAddress {
                ip: peer.ip(),
                port: peer.port(),
            },
            &Data(b"hello".to_vec()),
        ],
        false,
    );
    assert!(
        h.client_input(c.tuple, &indication).is_empty(),
        "no permission yet"
    );
    assert!(is_success(&c.create_permission(&mut h, peer)));
    assert_eq!(
        to_peer(h.client_input(c.tuple, &indication)),
        vec![(relay, peer, b"hello".to_vec())]
    );

    h.core.handle_peer(h.now, relay, peer, b"back");
    let got = to_client(h.outputs());
    assert_eq!(got.len(), 1);
    let mut m = Message::new();
    m.write(&got[0].1).expect("Data indication");
    assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    let mut d = Data::default();
    d.get_from(&m).expect("DATA");
    assert_eq!(d.0, b"back");
    let mut p = PeerAddress::default();
    p.get_from(&m).expect("XOR-PEER-ADDRESS");
    assert_eq!(SocketAddr::new(p.ip, p.port), peer);

    // A Send to a refused address is dropped and counted.
    let refused_peer = PeerAddress {
        ip: "10.0.0.1".parse().expect("ip"),
        port: 4000,
    };
    let (bad, _) = c.build_as(
        send_indication,
        &[&refused_peer, &Data(b"x".to_vec())],
        false,
    );
    let before = h.stats.snapshot().permission_refusals;
    assert!(h.client_input(c.tuple, &bad).is_empty());
    assert_eq!(h.stats.snapshot().permission_refusals, before + 1);
}

#[test]
fn permissions_expire_after_five_minutes() {
    let mut h = Harness::new(TurnConfig {
        nonce_lifetime_secs: 3600,
        ..config()
    });
    let (mut c, relay) = allocated(&mut h, 5000, "s");
    let peer = sa("203.0.113.9:4000");
    assert!(is_success(&c.create_permission(&mut h, peer)));
    h.advance(Duration::from_secs(299));
    h.core.handle_peer(h.now, relay, peer, b"ok");
    assert_eq!(to_client(h.outputs()).len(), 1);
    h.advance(Duration::from_secs(2));
    h.core.handle_peer(h.now, relay, peer, b"late");
    assert!(h.outputs().is_empty());
}

#[test]
fn the_bandwidth_cap_drops_what_exceeds_the_bucket() {
    let mut h = Harness::new(TurnConfig {
        max_bytes_per_sec: 1000,
        ..config()
    });
    let (mut c, _) = allocated(&mut h, 5000, "t");
    let peer = sa("203.0.113.9:4000");
    assert!(is_success(&c.channel_bind(&mut h, 0x4000, peer)));
    let mut frame = vec![0x40, 0x00, 0x02, 0x58]; // 600 bytes
    frame.resize(4 + 600, 0xAB);
    assert_eq!(to_peer(h.client_input(c.tuple, &frame)).len(), 1);
    assert_eq!(to_peer(h.client_input(c.tuple, &frame)).len(), 0);
    h.advance(Duration::from_millis(700));
    assert_eq!(to_peer(h.client_input(c.tuple, &frame)).len(), 1);
}

// ----- robustness -------------------------------------------------------------

#[test]
fn junk_never_panics_and_is_counted() {
    let mut h = Harness::new(config());
    let (mut c, relay) = allocated(&mut h, 5000, "u");
    assert!(is_success(&c.channel_bind(
        &mut h,
        0x4000,
        sa("203.0.113.9:4000")
    )));
    let (valid, _) = c.build(
        METHOD_CREATE_PERMISSION,
        &[&PeerAddress {
            ip: "203.0.113.9".parse().expect("ip"),
            port: 1,
        }],
        true,
    );
    let mut state = 0x1234_5678_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000 {
        let mut data = if i % 2 == 0 {
            valid.clone()
        } else {
            (0..(next() % 80)).map(|_| next() as u8).collect()
        };
        if !data.is_empty() {
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % data.len();
                data[at] = next() as u8;
            }
            if next() % 3 == 0 {
                data.truncate((next() as usize) % data.len());
            }
        }
        h.core.handle_client(h.now, c.tuple, &data);
        h.core
            .handle_peer(h.now, relay, sa("203.0.113.9:4000"), &data);
        let _ = h.outputs();
    }
    assert!(h.stats.snapshot().malformed_dropped > 0);
}

#[test]
fn even_port_with_the_r_bit_reserves_the_next_port_for_a_token() {
    let mut h = Harness::new(config());
    let now = h.unix_now();
    let mut rtp = Client::rest(udp_client(5000), "v", Duration::from_secs(600), now);
    let even_r = RawAttribute {
        typ: ATTR_EVEN_PORT,
        length: 1,
        value: vec![0x80],
    };
    let reply = rtp.call(
        &mut h,
        METHOD_ALLOCATE,
        &[
            &RequestedTransport {
                protocol: PROTO_UDP,
            },
            &even_r,
        ],
    );
    assert!(is_success(&reply), "{:?}", code(&reply));
    let port = relayed(&reply).port();
    assert_eq!(port % 2, 0);
    let token = reply
        .get(ATTR_RESERVATION_TOKEN)
        .expect("RESERVATION-TOKEN");
    assert_eq!(token.len(), 8);

    let mut rtcp = Client::rest(udp_client(5001), "v", Duration::from_secs(600), now);
    let t = RawAttribute {
        typ: ATTR_RESERVATION_TOKEN,
        length: 8,
        value: token.clone(),
    };
    let reply = rtcp.call(
        &mut h,
        METHOD_ALLOCATE,
        &[
            &RequestedTransport {
                protocol: PROTO_UDP,
            },
            &t,
        ],
    );
    assert!(is_success(&reply), "{:?}", code(&reply));
    assert_eq!(relayed(&reply).port(), port + 1);

    // A token works once.
    let mut again = Client::rest(udp_client(5002), "v", Duration::from_secs(600), now);
    let reply = again.call(
        &mut h,
        METHOD_ALLOCATE,
        &[
            &RequestedTransport {
                protocol: PROTO_UDP,
            },
            &t,
        ],
    );
    assert_eq!(code(&reply), Some(508));
}
