//! Which peers an allocation may talk to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use crate::config::PeerMode;

pub(crate) struct PeerPolicy {
    mode: PeerMode,
    media_addrs: Vec<SocketAddr>,
    allow: Vec<IpNet>,
    deny_ports: Vec<u16>,
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(addr.ip()), addr.port())
}

/// Loopback, RFC 1918, unique-local, link-local, multicast, unspecified
/// ("this network" 0.0.0.0/8 included) and broadcast.
fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || v4 == Ipv4Addr::UNSPECIFIED
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7 unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10 link local
                || v6 == Ipv6Addr::UNSPECIFIED
        }
    }
}

impl PeerPolicy {
    pub(crate) fn new(
        mode: PeerMode,
        media_addrs: &[SocketAddr],
        allow: &[IpNet],
        deny_ports: &[u16],
    ) -> Self {
        PeerPolicy {
            mode,
            media_addrs: media_addrs.iter().copied().map(canonical_addr).collect(),
            allow: allow.to_vec(),
            deny_ports: deny_ports.to_vec(),
        }
    }

    pub(crate) fn mode(&self) -> PeerMode {
        self.mode
    }

    fn general_ip_ok(&self, ip: IpAddr) -> bool {
        !is_special(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// May a permission be installed for `ip` (CreatePermission: ports do not
    /// matter)?
    pub(crate) fn permit_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self.mode {
            PeerMode::MediaOnly => self.media_addrs.iter().any(|a| a.ip() == ip),
            PeerMode::General => self.general_ip_ok(ip),
        }
    }

    /// May data be relayed to or from exactly `addr` (ChannelBind, Send, and
    /// data arriving from peers)?
    pub(crate) fn permit_addr(&self, addr: SocketAddr) -> bool {
        let addr = canonical_addr(addr);
        match self.mode {
            PeerMode::MediaOnly => self.media_addrs.contains(&addr),
            PeerMode::General => {
                self.general_ip_ok(addr.ip()) && !self.deny_ports.contains(&addr.port())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn media_only_allows_exactly_the_media_addrs() {
        let p = PeerPolicy::new(PeerMode::MediaOnly, &[sa("203.0.113.5:4000")], &[], &[]);
        assert!(p.permit_ip("203.0.113.5".parse().expect("ip")));
        assert!(p.permit_addr(sa("203.0.113.5:4000")));
        assert!(p.permit_addr(sa("[::ffff:203.0.113.5]:4000")));
        assert!(!p.permit_addr(sa("203.0.113.5:4001")));
        assert!(!p.permit_ip("203.0.113.6".parse().expect("ip")));
        assert!(!p.permit_addr(sa("8.8.8.8:4000")));
    }

    #[test]
    fn general_refuses_special_ranges_unless_allow_listed() {
        let p = PeerPolicy::new(PeerMode::General, &[], &[], &[3478]);
        for bad in [
            "127.0.0.1:5000",
            "10.0.0.1:5000",
            "172.16.3.4:5000",
            "192.168.1.1:5000",
            "169.254.1.1:5000",
            "224.0.0.1:5000",
            "255.255.255.255:5000",
            "0.0.0.0:5000",
            "0.1.2.3:5000",
            "[::1]:5000",
            "[::]:5000",
            "[fd00::1]:5000",
            "[fe80::1]:5000",
            "[ff02::1]:5000",
            "[::ffff:10.0.0.1]:5000",
            "8.8.8.8:3478",
        ] {
            assert!(!p.permit_addr(sa(bad)), "{bad} should be refused");
        }
        assert!(p.permit_addr(sa("8.8.8.8:5000")));
        assert!(p.permit_addr(sa("[2001:db8::1]:5000")));
        assert!(p.permit_ip("8.8.8.8".parse().expect("ip")));
        assert!(!p.permit_ip("10.0.0.1".parse().expect("ip")));

        let allow = PeerPolicy::new(
            PeerMode::General,
            &[],
            &["127.0.0.0/8".parse().expect("net")],
            &[3478],
        );
        assert!(allow.permit_addr(sa("127.0.0.1:5000")));
        assert!(!allow.permit_addr(sa("127.0.0.1:3478")));
        assert!(!allow.permit_addr(sa("10.0.0.1:5000")));
    }
}
