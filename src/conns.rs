//! Caps on the TCP connections of the HTTP port (plain HTTP, TLS and WebSockets alike), and the
//! file-descriptor limit they must stay under.
//!
//! The connection and header-read timeouts are hyper's and axum-server's (set where the server
//! is built in `main.rs`); this module only counts. [`LimitAcceptor`] runs first on every
//! accepted connection, before any TLS handshake: over the total cap
//! (`server.max_connections`) or the per-address cap (`server.max_connections_per_ip`) the
//! connection is closed at once and counted in `huddle_limit_hits_total{limit="http_connections"}`.
//! Otherwise the connection carries a permit until it closes, WebSocket upgrades included.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum_server::accept::Accept;
use huddle_signaling::limits::{IpNet, Limit, LimitCounters};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// File descriptors kept free of HTTP connections for everything else (media and TURN sockets,
/// the database, files being uploaded).
const FD_RESERVE: u64 = 512;

/// Raises the soft file-descriptor limit to the hard one; returns the soft limit now in force
/// (`None` where it cannot be read).
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer,
        // which lives for the whole call.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        // rlim_t is u64 on Linux but not on every Unix.
        #[allow(clippy::unnecessary_cast)]
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The total cap to use: `configured`, lowered to stay [`FD_RESERVE`] below the file-descriptor
/// limit `fds` (at least 64).
pub fn effective_cap(configured: usize, fds: Option<u64>) -> usize {
    match fds {
        Some(fds) => configured.min(fds.saturating_sub(FD_RESERVE).max(64) as usize),
        None => configured,
    }
}

struct Shared {
    total: Arc<Semaphore>,
    cap: usize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
    /// Addresses the per-address cap does not apply to (reverse proxies).
    exempt: Vec<IpNet>,
    counters: LimitCounters,
    /// Whether "near the cap" has been logged since the count was last low.
    warned: AtomicBool,
}

/// Counts the HTTP port's connections and refuses those over a cap.
#[derive(Clone)]
pub struct LimitAcceptor {
    shared: Arc<Shared>,
}

impl LimitAcceptor {
    /// At most `cap` connections in all and `max_per_ip` (0: no limit) from one address other
    /// than those in `exempt`; refusals are counted in `counters`.
    pub fn new(cap: usize, max_per_ip: usize, exempt: Vec<IpNet>, counters: LimitCounters) -> Self {
        LimitAcceptor {
            shared: Arc::new(Shared {
                total: Arc::new(Semaphore::new(cap)),
                cap,
                per_ip: Mutex::new(HashMap::new()),
                max_per_ip,
                exempt,
                counters,
                warned: AtomicBool::new(false),
            }),
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.cap - self.shared.total.available_permits()
    }

    fn admit(&self, peer: Option<SocketAddr>) -> Option<ConnPermit> {
        let s = &self.shared;
        let Ok(total) = s.total.clone().try_acquire_owned() else {
            s.counters.hit(Limit::HttpConnections);
            if !s.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    cap = s.cap,
                    "HTTP connections at server.max_connections: new ones are closed at once"
                );
            }
            return None;
        };
        let open = self.open();
        if open * 10 >= s.cap * 9 {
            if !s.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    open,
                    cap = s.cap,
                    "HTTP connections near server.max_connections"
                );
            }
        } else if open * 10 < s.cap * 7 {
            s.warned.store(false, Ordering::Relaxed);
        }
        let ip = peer
            .map(|p| p.ip().to_canonical())
            .filter(|ip| s.max_per_ip > 0 && !s.exempt.iter().any(|n| n.contains(*ip)));
        if let Some(ip) = ip {
            let mut map = s.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= s.max_per_ip {
                drop(map);
                s.counters.hit(Limit::HttpConnections);
                tracing::debug!(%ip, "HTTP connections per address at their cap");
                return None;
            }
            *n += 1;
        }
        Some(ConnPermit {
            _total: total,
            ip: ip.map(|ip| (self.shared.clone(), ip)),
        })
    }
}

/// One admitted connection's place; given back when the connection closes.
struct ConnPermit {
    _total: OwnedSemaphorePermit,
    ip: Option<(Arc<Shared>, IpAddr)>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        if let Some((s, ip)) = self.ip.take() {
            let mut map = s.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

impl huddle_signaling::ConnectionCount for LimitAcceptor {
    fn open(&self) -> usize {
        LimitAcceptor::open(self)
    }

    fn cap(&self) -> usize {
        self.shared.cap
    }
}

impl<S> Accept<TcpStream, S> for LimitAcceptor {
    type Stream = Counted<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(match self.admit(stream.peer_addr().ok()) {
            Some(permit) => Ok((
                Counted {
                    inner: stream,
                    _permit: permit,
                },
                service,
            )),
            None => Err(io::Error::other("connection cap reached")),
        })
    }
}

/// A connection holding its place under the caps.
pub struct Counted<T> {
    inner: T,
    _permit: ConnPermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: [u8; 4]) -> Option<SocketAddr> {
        Some(SocketAddr::from((ip, 40000)))
    }

    #[test]
    fn caps_in_all_and_per_address_and_places_come_back() {
        let counters = LimitCounters::default();
        let proxies = vec!["10.0.0.0/8".parse().unwrap()];
        let a = LimitAcceptor::new(4, 2, proxies, counters.clone());
        let p1 = a.admit(peer([127, 0, 0, 2])).unwrap();
        let _p2 = a.admit(peer([127, 0, 0, 2])).unwrap();
        assert!(
            a.admit(peer([127, 0, 0, 2])).is_none(),
            "third from one address"
        );
        let _p3 = a.admit(peer([10, 0, 0, 1])).unwrap();
        let _p4 = a.admit(peer([10, 0, 0, 1])).unwrap();
        assert!(a.admit(peer([127, 0, 0, 3])).is_none(), "over the total");
        assert_eq!(counters.get(Limit::HttpConnections), 2);
        drop(p1);
        assert_eq!(a.open(), 3);
        assert!(a.admit(peer([127, 0, 0, 2])).is_some(), "a place came back");
    }

    #[test]
    fn the_cap_stays_under_the_descriptor_limit() {
        assert_eq!(effective_cap(10_000, Some(20_000)), 10_000);
        assert_eq!(effective_cap(10_000, Some(1024)), 512);
        assert_eq!(effective_cap(10_000, Some(100)), 64);
        assert_eq!(effective_cap(10_000, None), 10_000);
    }
}
