//! Batched UDP I/O: `recvmmsg`/`sendmmsg` on Linux, a plain loop elsewhere.
//! Both are called from inside `UdpSocket::try_io`, so they must not block
//! and must report `WouldBlock` as an error.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Datagrams read per call.
pub(crate) const BATCH: usize = 32;
/// One slot holds the largest UDP payload.
pub(crate) const SLOT: usize = 65536;

/// Receive buffers; one set per worker thread (see the driver).
pub(crate) struct RecvBufs {
    data: Vec<u8>,
    lens: [usize; BATCH],
    from: [Option<SocketAddr>; BATCH],
}

impl RecvBufs {
    pub(crate) fn new() -> Self {
        RecvBufs {
            data: vec![0; BATCH * SLOT],
            lens: [0; BATCH],
            from: [None; BATCH],
        }
    }

    /// Datagram `i` of the last batch, if it was usable.
    pub(crate) fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let from = self.from.get(i).copied().flatten()?;
        let len = *self.lens.get(i)?;
        Some((from, &self.data[i * SLOT..i * SLOT + len]))
    }
}

#[cfg(target_os = "linux")]
pub(crate) fn recv_batch(sock: &UdpSocket, bufs: &mut RecvBufs) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let base = bufs.data.as_mut_ptr();
    for i in 0..BATCH {
        iovs[i] = libc::iovec {
            // SAFETY: `data` holds BATCH * SLOT bytes.
            iov_base: unsafe { base.add(i * SLOT) }.cast(),
            iov_len: SLOT,
        };
        hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
        hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at live buffers of the stated sizes.
    let n = unsafe {
        libc::recvmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            BATCH as _,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for i in 0..n {
        let h = &hdrs[i];
        bufs.lens[i] = (h.msg_len as usize).min(SLOT);
        bufs.from[i] = if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            None
        } else {
            // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes.
            let sa = unsafe { socket2::SockAddr::new(addrs[i], h.msg_hdr.msg_namelen) };
            sa.as_socket()
        };
    }
    Ok(n)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn recv_batch(sock: &UdpSocket, bufs: &mut RecvBufs) -> io::Result<usize> {
    let mut n = 0;
    while n < BATCH {
        let slot = &mut bufs.data[n * SLOT..(n + 1) * SLOT];
        match sock.try_recv_from(slot) {
            Ok((len, from)) => {
                bufs.lens[n] = len;
                bufs.from[n] = Some(from);
                n += 1;
            }
            Err(e) if n == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(n)
}

/// Sends a prefix of `msgs`; returns how many went out (at least one, or an
/// error about the first).
#[cfg(target_os = "linux")]
pub(crate) fn send_batch(sock: &UdpSocket, msgs: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    let n = msgs.len().min(BATCH);
    let addrs: Vec<socket2::SockAddr> = msgs[..n]
        .iter()
        .map(|(to, _)| socket2::SockAddr::from(*to))
        .collect();
    // SAFETY: all-zero is a valid value for these plain C structs.
    let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iovs[i] = libc::iovec {
            iov_base: msgs[i].1.as_ptr() as *mut libc::c_void,
            iov_len: msgs[i].1.len(),
        };
        hdrs[i].msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
        hdrs[i].msg_hdr.msg_namelen = addrs[i].len();
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the headers point at `addrs` and `msgs`, alive for the call;
    // the kernel only reads them.
    let sent = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            n as _,
            libc::MSG_DONTWAIT,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn send_batch(sock: &UdpSocket, msgs: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    let mut n = 0;
    for (to, data) in msgs {
        match sock.try_send_to(data, *to) {
            Ok(_) => n += 1,
            Err(e) if n == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(n)
}
