//! Operator limits: the pieces that keep one participant, one address or one flood from taking
//! the node down, and the counters that show how often each limit was hit.
//!
//! * [`TokenBucket`]: a per-connection message rate (and the chat rate).
//! * [`IpWindow`]: WebSocket upgrades (and guest tokens) per client address per minute.
//! * [`Quota`]: uploads and their bytes per identity and per address per hour.
//! * [`IpNet`] and [`client_ip`]: which address a request came from, honouring
//!   `X-Forwarded-For` only from configured proxies.
//! * [`origin_allowed`]: the WebSocket `Origin` check.
//! * [`LimitCounters`]: one counter per limit, for the metrics endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `capacity` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, capacity: u32, now: Instant) -> Self {
        let capacity = f64::from(capacity.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            rate: rate_per_sec.max(0.0),
            last: now,
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Strikes against a connection that goes over its message rate: at most one strike per
/// second of overflow, forgotten after [`Strikes::FORGET_AFTER`] without overflow.
#[derive(Debug, Clone, Default)]
pub struct Strikes {
    count: u32,
    last: Option<Instant>,
}

impl Strikes {
    /// A clean record is restored after this long without overflow.
    pub const FORGET_AFTER: Duration = Duration::from_secs(30);

    /// Records an overflowing message. Returns `Some(strikes)` when this message starts a new
    /// strike (the client is then told), `None` when it falls in the current one.
    pub fn overflow(&mut self, now: Instant) -> Option<u32> {
        if let Some(last) = self.last {
            let since = now.saturating_duration_since(last);
            if since < Duration::from_secs(1) {
                return None;
            }
            if since >= Self::FORGET_AFTER {
                self.count = 0;
            }
        }
        self.last = Some(now);
        self.count += 1;
        Some(self.count)
    }
}

/// Counts attempts per client address in fixed one-minute windows.
#[derive(Debug)]
pub struct IpWindow {
    per_minute: u32,
    seen: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl IpWindow {
    /// Allows `per_minute` attempts per address (0 = no limit).
    pub fn new(per_minute: u32) -> Self {
        IpWindow {
            per_minute,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an attempt from `ip`; false when it is over the limit.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        self.allow_or_retry(ip, now).is_ok()
    }

    /// Records an attempt from `ip`; over the limit, how long until the address's window
    /// ends (for `Retry-After`).
    pub fn allow_or_retry(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
        }
        let entry = seen.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= self.per_minute {
            return Err(WINDOW.saturating_sub(now.saturating_duration_since(entry.0)));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// Uses and amounts (bytes) per key in fixed windows: at most `max_uses` uses and
/// `max_amount` in one window (0: that part has no limit). The window of a key starts at its
/// first use.
#[derive(Debug)]
pub struct Quota<K> {
    window: Duration,
    max_uses: u64,
    max_amount: u64,
    seen: Mutex<HashMap<K, (Instant, u64, u64)>>,
}

impl<K: std::hash::Hash + Eq> Quota<K> {
    /// A quota over windows of `window`.
    pub fn new(window: Duration, max_uses: u64, max_amount: u64) -> Self {
        Quota {
            window,
            max_uses,
            max_amount,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn entry<'a>(
        &self,
        seen: &'a mut HashMap<K, (Instant, u64, u64)>,
        key: K,
        now: Instant,
    ) -> &'a mut (Instant, u64, u64) {
        if seen.len() > 10_000 {
            seen.retain(|_, (start, _, _)| now.saturating_duration_since(*start) < self.window);
        }
        let e = seen.entry(key).or_insert((now, 0, 0));
        if now.saturating_duration_since(e.0) >= self.window {
            *e = (now, 0, 0);
        }
        e
    }

    /// Whether one more use of `amount` fits `key`'s window; if not, how long until the window
    /// ends. Records nothing.
    pub fn check(&self, key: K, now: Instant, amount: u64) -> Result<(), Duration> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = self.entry(&mut seen, key, now);
        let uses_full = self.max_uses > 0 && e.1 >= self.max_uses;
        let amount_full = self.max_amount > 0 && e.2.saturating_add(amount) > self.max_amount;
        if uses_full || amount_full {
            Err(self
                .window
                .saturating_sub(now.saturating_duration_since(e.0)))
        } else {
            Ok(())
        }
    }

    /// Records `uses` uses and `amount` for `key`.
    pub fn record(&self, key: K, now: Instant, uses: u64, amount: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = self.entry(&mut seen, key, now);
        e.1 = e.1.saturating_add(uses);
        e.2 = e.2.saturating_add(amount);
    }
}

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`), or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A string that is not an address or an address range.
#[derive(Debug, thiserror::Error)]
#[error("not an IP address or CIDR range: {0:?}")]
pub struct BadIpNet(pub String);

impl FromStr for IpNet {
    type Err = BadIpNet;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadIpNet(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Untrusted peers'
/// `X-Forwarded-For` is ignored (anyone can write that header).
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Several headers are one list, in order; entries are appended by each proxy.
    let entries: Vec<&str> = forwarded_for
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .collect();
    for e in entries.iter().rev() {
        let Some(ip) = parse_forwarded_addr(e) else {
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The WebSocket `Origin` check. No `Origin` header (a non-browser client) is allowed. With an
/// empty `allowed` list the origin's `host[:port]` must equal the request's `Host`; otherwise
/// the origin must be one of `allowed` (`scheme://host[:port]`, or `*` for any).
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim().trim_end_matches('/');
    if allowed.is_empty() {
        let Some(host) = host else { return false };
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        return origin_host.is_some_and(|h| h.eq_ignore_ascii_case(host.trim()));
    }
    allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// A signaling message over the per-connection rate (dropped).
    MessageRate,
    /// A connection closed after repeated rate-limit strikes.
    MessageRateClose,
    /// A chat message over the chat rate.
    ChatRate,
    /// A WebSocket refused with 503: too many connections.
    Connections,
    /// A WebSocket refused with 429: too many joins from one address.
    JoinsPerIp,
    /// A join refused: the node has `max_rooms` rooms.
    Rooms,
    /// A join refused: the room is full.
    Participants,
    /// A WebSocket refused with 403: its `Origin` is not allowed.
    Origin,
    /// A frame over `max_message_bytes`.
    MessageSize,
    /// A TCP connection to the HTTP port closed at once: `server.max_connections` or
    /// `server.max_connections_per_ip` reached.
    HttpConnections,
    /// An upload refused with 429: its identity's or address's uploads or bytes this hour.
    Uploads,
    /// A guest token refused with 429: too many from one address this minute.
    GuestTokens,
    /// An upload refused with 507: its room keeps `chat.max_room_bytes` of files.
    RoomBytes,
}

impl Limit {
    /// Every limit, in a fixed order.
    pub const ALL: [Limit; 13] = [
        Limit::MessageRate,
        Limit::MessageRateClose,
        Limit::ChatRate,
        Limit::Connections,
        Limit::JoinsPerIp,
        Limit::Rooms,
        Limit::Participants,
        Limit::Origin,
        Limit::MessageSize,
        Limit::HttpConnections,
        Limit::Uploads,
        Limit::GuestTokens,
        Limit::RoomBytes,
    ];

    /// A short label (for a metric's `limit` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MessageRate => "message_rate",
            Limit::MessageRateClose => "message_rate_close",
            Limit::ChatRate => "chat_rate",
            Limit::Connections => "connections",
            Limit::JoinsPerIp => "joins_per_ip",
            Limit::Rooms => "rooms",
            Limit::Participants => "participants",
            Limit::Origin => "origin",
            Limit::MessageSize => "message_size",
            Limit::HttpConnections => "http_connections",
            Limit::Uploads => "uploads",
            Limit::GuestTokens => "guest_tokens",
            Limit::RoomBytes => "room_bytes",
        }
    }
}

/// How often each limit was hit since start: the `huddle_limit_hits_total{limit}` counter
/// family (every limit present from the start, at 0), registered with the node's metrics.
#[derive(Debug, Clone)]
pub struct LimitCounters {
    family: prometheus::IntCounterVec,
    counts: Vec<prometheus::IntCounter>,
}

impl Default for LimitCounters {
    fn default() -> Self {
        let family = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "huddle_limit_hits_total",
                "Requests refused or cut by an operator limit, by limit (http_connections: a TCP connection closed at once over the HTTP port's caps; uploads and guest_tokens: 429; room_bytes: 507; before the WebSocket upgrade: origin 403, joins_per_ip 429, connections 503; after it: the error codes in docs/protocol.md).",
            ),
            &["limit"],
        )
        .expect("valid metric definition");
        let counts = Limit::ALL
            .iter()
            .map(|l| family.with_label_values(&[l.as_str()]))
            .collect();
        LimitCounters { family, counts }
    }
}

impl LimitCounters {
    /// Counts one hit.
    pub fn hit(&self, limit: Limit) {
        if let Some(c) = self.counts.get(Self::index(limit)) {
            c.inc();
        }
    }

    /// Hits so far.
    pub fn get(&self, limit: Limit) -> u64 {
        self.counts.get(Self::index(limit)).map_or(0, |c| c.get())
    }

    /// Adds the counters to `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.family.clone()))
    }

    fn index(limit: Limit) -> usize {
        Limit::ALL.iter().position(|l| *l == limit).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5, t0);
        assert!((0..5).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
        // Saved tokens are capped at the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 5);
    }

    #[test]
    fn quotas_bound_uses_and_amounts_per_window_and_say_when_to_retry() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let q = Quota::new(hour, 3, 100);
        for _ in 0..3 {
            assert_eq!(q.check("a", t0, 10), Ok(()));
            q.record("a", t0, 1, 10);
        }
        let later = t0 + Duration::from_secs(600);
        assert_eq!(q.check("a", later, 0), Err(Duration::from_secs(3000)));
        assert_eq!(q.check("b", later, 0), Ok(()), "keys are separate");
        let amounts = Quota::new(hour, 0, 100);
        amounts.record("a", t0, 1, 90);
        assert!(amounts.check("a", t0, 10).is_ok());
        assert!(amounts.check("a", t0, 11).is_err());
        assert_eq!(q.check("a", t0 + hour, 0), Ok(()), "a new window");
        let open = Quota::new(hour, 0, 0);
        open.record("a", t0, 1_000, u64::MAX);
        assert!(open.check("a", t0, u64::MAX).is_ok(), "0 = no limit");
    }

    #[test]
    fn ip_windows_say_when_to_retry() {
        let t0 = Instant::now();
        let w = IpWindow::new(2);
        let ip = IpAddr::from([192, 0, 2, 1]);
        assert!(w.allow(ip, t0) && w.allow(ip, t0));
        assert_eq!(
            w.allow_or_retry(ip, t0 + Duration::from_secs(15)),
            Err(Duration::from_secs(45))
        );
    }

    #[test]
    fn strikes_come_once_a_second_and_are_forgotten() {
        let t0 = Instant::now();
        let mut s = Strikes::default();
        assert_eq!(s.overflow(t0), Some(1));
        assert_eq!(s.overflow(t0 + Duration::from_millis(500)), None);
        assert_eq!(s.overflow(t0 + Duration::from_millis(1000)), Some(2));
        assert_eq!(s.overflow(t0 + Duration::from_secs(40)), Some(1));
    }

    #[test]
    fn ip_window_counts_per_address_per_minute() {
        let t0 = Instant::now();
        let w = IpWindow::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(w.allow(a, t0) && w.allow(a, t0));
        assert!(!w.allow(a, t0));
        assert!(w.allow(b, t0));
        assert!(w.allow(a, t0 + Duration::from_secs(61)));
        assert!(IpWindow::new(0).allow(a, t0));
    }

    #[test]
    fn cidr_ranges() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpNet = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "nope", "1.2.3.4/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["127.0.0.1".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        // A direct client cannot pick its address.
        assert_eq!(client_ip(stranger, &["1.1.1.1"], &trusted), stranger);
        // Behind the proxy: the right-most untrusted entry; spoofed left entries are ignored.
        assert_eq!(
            client_ip(proxy, &["1.1.1.1, 198.51.100.7, 10.0.0.5"], &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &["1.1.1.1", "198.51.100.7:4242"], &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // No header, or garbage: the proxy itself.
        assert_eq!(client_ip(proxy, &[], &trusted), proxy);
        assert_eq!(client_ip(proxy, &["garbage"], &trusted), proxy);
        // No trusted proxies configured: the header never counts.
        assert_eq!(client_ip(proxy, &["1.1.1.1"], &[]), proxy);
    }

    #[test]
    fn origin_rules() {
        assert!(origin_allowed(None, Some("a:1"), &[]));
        assert!(origin_allowed(Some("http://a:1"), Some("a:1"), &[]));
        assert!(origin_allowed(Some("https://A:1"), Some("a:1"), &[]));
        assert!(!origin_allowed(Some("http://evil:1"), Some("a:1"), &[]));
        assert!(!origin_allowed(Some("null"), Some("a:1"), &[]));
        assert!(!origin_allowed(Some("http://a:1"), None, &[]));
        let allowed = vec!["https://meet.example.org".to_string()];
        assert!(origin_allowed(
            Some("https://meet.example.org"),
            Some("internal:8080"),
            &allowed
        ));
        assert!(!origin_allowed(
            Some("http://meet.example.org"),
            Some("meet.example.org"),
            &allowed
        ));
        assert!(origin_allowed(Some("http://x"), None, &["*".to_string()]));
    }
}
