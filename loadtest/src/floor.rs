//! `huddle-loadtest floor`: the least work any SFU must do per packet, measured on this machine.
//!
//! A forwarder thread with one UDP socket does nothing but: `recvmmsg`, one AES-128-GCM open per
//! incoming packet (SRTP's AEAD mode, RFC 7714, with a 12-byte RTP header as additional data),
//! then per subscriber a copy, a new SSRC and sequence number, one AES-128-GCM seal under that
//! subscriber's key, and `sendmmsg`. No ICE, no RTCP, no pacing, no bandwidth estimation, no
//! allocation per packet. Its CPU time (`getrusage(RUSAGE_THREAD)`: user and system, so the
//! kernel's UDP send and the loopback delivery it runs inline are included, as they are in the
//! SFU's figure) divided by the packets it sent is the floor an SFU's "CPU-µs per forwarded
//! packet" can be compared with.
//!
//! Around it, on other threads (pinned elsewhere with `--client-cpu`): a sender that seals
//! packets of `--size` bytes at `--packets-per-second` (incoming packets, in bursts of `--burst`
//! like publishers on a shared 20 ms tick), and `--fanout` sink sockets that receive, open and
//! check every packet.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use serde::Serialize;

/// RTP header bytes (no CSRC, no extensions): the AEAD's additional data.
const HEADER: usize = 12;
/// AES-GCM tag bytes.
const TAG: usize = 16;
/// Datagrams taken per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// The kernel's limit on messages per `sendmmsg` (UIO_MAXIOV).
const SEND_MAX: usize = 1024;
/// The ingress stream's SSRC.
const INGRESS_SSRC: u32 = 0x1234_5678;

/// When the forwarder calls `sendmmsg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendBatch {
    /// One `sendmmsg` per incoming packet (its N copies).
    PerPacket,
    /// One `sendmmsg` per `recvmmsg` batch (all copies of all packets received together).
    PerRecv,
    /// Both, one after the other (two rows).
    Both,
}

/// `huddle-loadtest floor` options.
#[derive(clap::Args, Debug, Clone)]
pub struct FloorArgs {
    /// Copies sent per incoming packet (subscribers per publisher).
    #[arg(long, default_value_t = 40)]
    pub fanout: usize,
    /// Incoming packets per second (outgoing is this times --fanout).
    #[arg(long, default_value_t = 500.0)]
    pub packets_per_second: f64,
    /// Incoming packets sent back to back each time (10 = ten publishers on one 20 ms tick).
    #[arg(long, default_value_t = 1)]
    pub burst: usize,
    /// Seconds of sending per mode.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Datagram size in bytes (RTP header, payload and tag).
    #[arg(long, default_value_t = 1200)]
    pub size: usize,
    /// When to call sendmmsg.
    #[arg(long, value_enum, default_value = "both")]
    pub send_batch: SendBatch,
    /// Pin the forwarder thread to this CPU.
    #[arg(long)]
    pub forwarder_cpu: Option<usize>,
    /// Pin the sender and sink threads to this CPU.
    #[arg(long)]
    pub client_cpu: Option<usize>,
    /// Print the results as JSON (one object per mode) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FloorResult {
    pub send_batch: SendBatch,
    pub fanout: usize,
    pub size: usize,
    pub seconds: f64,
    /// Packets the sender sent.
    pub sent: u64,
    /// Packets the forwarder received and opened.
    pub received: u64,
    /// Packets the forwarder could not open (none, unless something is broken).
    pub open_failures: u64,
    /// Copies the forwarder's sendmmsg calls accepted.
    pub forwarded: u64,
    /// Copies the sinks received, opened and found intact.
    pub delivered: u64,
    /// Copies the sinks received but could not open, or that carried the wrong content.
    pub corrupt: u64,
    pub recv_calls: u64,
    pub send_calls: u64,
    /// Forwarder thread CPU time, µs: user and system as the kernel splits it (by sampling at
    /// the timer tick, so the split is rough at low load; the sum is exact).
    pub cpu_user_us: f64,
    pub cpu_system_us: f64,
    /// Wall-clock µs the forwarder spent in the opens, copies and seals (timed around them
    /// in the thread): the cipher's share, without the kernel's.
    pub crypto_us: f64,
    pub in_packets_per_sec: f64,
    pub out_packets_per_sec: f64,
    /// Forwarder CPU-µs per outgoing (forwarded) packet.
    pub cpu_us_per_out_packet: f64,
    /// Forwarder CPU-µs per incoming packet (its N copies included).
    pub cpu_us_per_in_packet: f64,
    /// Copies lost between the forwarder's input and the sinks, percent of received × fanout.
    pub loss_pct: f64,
}

/// Runs the floor for the chosen mode(s) and prints the results.
pub fn main(args: FloorArgs) -> Result<()> {
    let modes = match args.send_batch {
        SendBatch::Both => vec![SendBatch::PerPacket, SendBatch::PerRecv],
        m => vec![m],
    };
    let mut results = Vec::new();
    for mode in modes {
        results.push(run(&args, mode)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print_table(&args, &results);
    }
    Ok(())
}

fn print_table(args: &FloorArgs, results: &[FloorResult]) {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header([
        "sendmmsg",
        "fanout",
        "in pkt/s",
        "out pkt/s",
        "CPU-µs / out pkt",
        "CPU-µs / in pkt",
        "of which cipher + copies (%)",
        "loss %",
        "pkts per recvmmsg",
    ]);
    for r in results {
        let cpu = r.cpu_user_us + r.cpu_system_us;
        t.add_row([
            format!("{:?}", r.send_batch),
            r.fanout.to_string(),
            format!("{:.0}", r.in_packets_per_sec),
            format!("{:.0}", r.out_packets_per_sec),
            format!("{:.3}", r.cpu_us_per_out_packet),
            format!("{:.2}", r.cpu_us_per_in_packet),
            format!("{:.0}", 100.0 * r.crypto_us / cpu.max(1e-9)),
            format!("{:.3}", r.loss_pct),
            format!("{:.2}", r.received as f64 / r.recv_calls.max(1) as f64),
        ]);
    }
    println!(
        "floor: recvmmsg + 1 AES-128-GCM open + {} seals + sendmmsg, {} B datagrams, {} s per mode",
        args.fanout, args.size, args.seconds
    );
    println!("{t}");
}

/// A deterministic key (the floor measures cost, not secrecy): one per stream.
fn key(stream: u32) -> LessSafeKey {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(&stream.to_be_bytes());
    k[4..].copy_from_slice(b"huddle-floor");
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &k).expect("16-byte key"))
}

/// RFC 7714's IV: a salt XOR (0, SSRC, ROC, SEQ). ROC is 0: runs are short.
fn nonce(ssrc: u32, seq: u16) -> Nonce {
    const SALT: [u8; 12] = *b"floor-salt!!";
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[10..12].copy_from_slice(&seq.to_be_bytes());
    for (b, s) in iv.iter_mut().zip(SALT) {
        *b ^= s;
    }
    Nonce::assume_unique_for_key(iv)
}

fn write_header(buf: &mut [u8], seq: u16, ts: u32, ssrc: u32) {
    buf[0] = 0x80;
    buf[1] = 111; // Opus's usual payload type
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

fn header_fields(buf: &[u8]) -> (u16, u32, u32) {
    (
        u16::from_be_bytes([buf[2], buf[3]]),
        u32::from_be_bytes(buf[4..8].try_into().unwrap()),
        u32::from_be_bytes(buf[8..12].try_into().unwrap()),
    )
}

/// The payload of the incoming packet numbered `n`: checked by the sinks after the round trip.
fn payload_byte(n: u64, i: usize) -> u8 {
    (n as usize).wrapping_mul(31).wrapping_add(i) as u8
}

/// Seals `packet` in place: header in the first 12 bytes, payload after, tag in the last 16.
fn seal(key: &LessSafeKey, packet: &mut [u8]) -> bool {
    let (seq, _, ssrc) = header_fields(packet);
    let (header, rest) = packet.split_at_mut(HEADER);
    let body_len = rest.len() - TAG;
    let (body, tag_out) = rest.split_at_mut(body_len);
    match key.seal_in_place_separate_tag(nonce(ssrc, seq), Aad::from(&*header), body) {
        Ok(tag) => {
            tag_out.copy_from_slice(tag.as_ref());
            true
        }
        Err(_) => false,
    }
}

/// Opens `packet` in place; the plaintext payload is `packet[HEADER..len - TAG]` on success.
fn open(key: &LessSafeKey, packet: &mut [u8]) -> bool {
    let (seq, _, ssrc) = header_fields(packet);
    let (header, rest) = packet.split_at_mut(HEADER);
    key.open_in_place(nonce(ssrc, seq), Aad::from(&*header), rest)
        .is_ok()
}

fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: cpu_set_t is plain data; sched_setaffinity(0, ..) applies to the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's (user, system) CPU time in µs.
fn thread_cpu_us() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

fn bind_loopback() -> Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0").context("binding a loopback UDP socket")?;
    // Large buffers, as an SFU would set them (capped by net.core.{r,w}mem_max).
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let size: libc::c_int = 4 << 20;
        // SAFETY: a valid fd and a c_int option value of the right length.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(s)
}

fn sockaddr_of(addr: SocketAddr) -> libc::sockaddr_in {
    let SocketAddr::V4(v4) = addr else {
        unreachable!("loopback IPv4 only")
    };
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Counters the forwarder thread reports when it stops.
#[derive(Default)]
struct ForwarderStats {
    received: u64,
    open_failures: u64,
    forwarded: u64,
    recv_calls: u64,
    send_calls: u64,
    cpu: (f64, f64),
    crypto: Duration,
}

/// The forwarder: everything here is what the floor measures.
fn forward(
    sock: UdpSocket,
    sinks: Vec<SocketAddr>,
    size: usize,
    mode: SendBatch,
    stop: Arc<AtomicBool>,
) -> ForwarderStats {
    let fd = sock.as_raw_fd();
    let fanout = sinks.len();
    let ingress_key = key(INGRESS_SSRC);
    let egress: Vec<(LessSafeKey, u32)> = (0..fanout as u32)
        .map(|i| (key(1000 + i), 1000 + i))
        .collect();
    let dests: Vec<libc::sockaddr_in> = sinks.iter().map(|a| sockaddr_of(*a)).collect();
    let mut out_seq = vec![0u16; fanout];

    // Receive buffers and headers, allocated once.
    let mut rbufs = vec![[0u8; 2048]; RECV_BATCH];
    let mut riov: Vec<libc::iovec> = rbufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY (zeroed): mmsghdr is plain data; all-zero is a valid empty header.
    let mut rmsgs: Vec<libc::mmsghdr> = (0..RECV_BATCH)
        .map(|i| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut riov[i];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();

    // Send buffers: one per copy, for a whole receive batch in per-recv mode.
    let slots = match mode {
        SendBatch::PerPacket => fanout,
        _ => fanout * RECV_BATCH,
    };
    let mut sbufs = vec![0u8; slots * size.max(HEADER + TAG)];
    let slot_len = size.max(HEADER + TAG);
    let mut siov: Vec<libc::iovec> = (0..slots)
        .map(|i| libc::iovec {
            iov_base: sbufs[i * slot_len..].as_mut_ptr().cast(),
            iov_len: 0,
        })
        .collect();
    let mut smsgs: Vec<libc::mmsghdr> = (0..slots)
        .map(|i| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut siov[i];
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_name = (&dests[i % fanout] as *const libc::sockaddr_in)
                .cast_mut()
                .cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m
        })
        .collect();

    let mut st = ForwarderStats::default();
    let send = |msgs: &mut [libc::mmsghdr], st: &mut ForwarderStats| {
        let mut done = 0;
        while done < msgs.len() {
            let n = (msgs.len() - done).min(SEND_MAX);
            // SAFETY: every header points at a live iovec, buffer and sockaddr.
            let rc = unsafe { libc::sendmmsg(fd, msgs[done..].as_mut_ptr(), n as u32, 0) };
            st.send_calls += 1;
            if rc <= 0 {
                // A full send buffer on loopback: count the rest as not forwarded.
                break;
            }
            st.forwarded += rc as u64;
            done += rc as usize;
        }
    };

    // A receive timeout (SO_RCVTIMEO; recvmmsg's own timeout is not checked while it waits for
    // the first datagram) lets the loop see `stop`.
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("receive timeout");
    let cpu0 = thread_cpu_us();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the headers point at RECV_BATCH live buffers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                rmsgs.as_mut_ptr(),
                RECV_BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        st.recv_calls += 1;
        let mut used = 0;
        for (m, buf) in rmsgs.iter().zip(rbufs.iter_mut()).take(n as usize) {
            let len = m.msg_len as usize;
            if len < HEADER + TAG {
                st.open_failures += 1;
                continue;
            }
            let packet = &mut buf[..len];
            let t = Instant::now();
            if !open(&ingress_key, packet) {
                st.open_failures += 1;
                continue;
            }
            st.received += 1;
            let (_, ts, _) = header_fields(packet);
            let plain = &packet[HEADER..len - TAG];
            for (i, (k, ssrc)) in egress.iter().enumerate() {
                let slot = used + i;
                let out = &mut sbufs[slot * slot_len..slot * slot_len + len];
                write_header(out, out_seq[i], ts, *ssrc);
                out_seq[i] = out_seq[i].wrapping_add(1);
                out[HEADER..len - TAG].copy_from_slice(plain);
                seal(k, out);
                siov[slot].iov_len = len;
            }
            st.crypto += t.elapsed();
            used += fanout;
            if mode == SendBatch::PerPacket {
                send(&mut smsgs[..used], &mut st);
                used = 0;
            }
        }
        if used > 0 {
            send(&mut smsgs[..used], &mut st);
        }
    }
    let cpu1 = thread_cpu_us();
    st.cpu = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    st
}

/// Sends sealed packets to `to` at `pps`, in bursts of `burst`, for `seconds`.
fn send_packets(
    sock: &UdpSocket,
    to: SocketAddr,
    pps: f64,
    burst: usize,
    seconds: f64,
    size: usize,
) -> u64 {
    let key = key(INGRESS_SSRC);
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let total = (pps * seconds).round() as u64;
    let burst = burst.max(1) as u64;
    let mut sent = 0u64;
    while sent < total {
        let elapsed = start.elapsed().as_secs_f64();
        let due = (((elapsed * pps) as u64 / burst + 1) * burst).min(total);
        while sent < due {
            write_header(&mut buf, sent as u16, (sent * 960) as u32, INGRESS_SSRC);
            for (i, b) in buf[..size - TAG].iter_mut().enumerate().skip(HEADER) {
                *b = payload_byte(sent, i);
            }
            seal(&key, &mut buf);
            if sock.send_to(&buf, to).is_ok() {
                sent += 1;
            }
        }
        let next = Duration::from_secs_f64(due as f64 / pps);
        if let Some(wait) = next.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    sent
}

/// Receives on every sink socket until `stop`, checking each copy; returns (intact, corrupt).
fn sink(
    sockets: Vec<UdpSocket>,
    size: usize,
    stop: Arc<AtomicBool>,
    intact: Arc<AtomicU64>,
) -> u64 {
    let keys: Vec<LessSafeKey> = (0..sockets.len() as u32).map(|i| key(1000 + i)).collect();
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    for s in &sockets {
        s.set_nonblocking(true).expect("nonblocking sink");
    }
    let mut corrupt = 0;
    let mut buf = vec![0u8; 2048];
    // Keep draining for a while after `stop` so nothing in flight is miscounted as lost.
    let mut quiet_since: Option<Instant> = None;
    loop {
        // SAFETY: fds is a valid array of pollfd.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if ready <= 0 {
            if stop.load(Ordering::Relaxed) {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(200) {
                    break;
                }
            }
            continue;
        }
        quiet_since = None;
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            while let Ok(len) = sockets[i].recv(&mut buf) {
                let packet = &mut buf[..len];
                let (_, ts, ssrc) = header_fields(packet);
                let n = u64::from(ts / 960);
                let ok = len == size
                    && ssrc == 1000 + i as u32
                    && open(&keys[i], packet)
                    && (HEADER..len - TAG).all(|j| packet[j] == payload_byte(n, j));
                if ok {
                    intact.fetch_add(1, Ordering::Relaxed);
                } else {
                    corrupt += 1;
                }
            }
        }
    }
    corrupt
}

/// One measured run of one mode.
pub fn run(args: &FloorArgs, mode: SendBatch) -> Result<FloorResult> {
    if args.fanout == 0 || args.size < HEADER + TAG + 1 || args.size > 2048 {
        bail!("--fanout must be at least 1 and --size between 29 and 2048");
    }
    let fwd_sock = bind_loopback()?;
    let fwd_addr = fwd_sock.local_addr()?;
    let sink_socks: Vec<UdpSocket> = (0..args.fanout)
        .map(|_| bind_loopback())
        .collect::<Result<_>>()?;
    let sink_addrs: Vec<SocketAddr> = sink_socks
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()?;
    let sender = bind_loopback()?;

    let stop_fwd = Arc::new(AtomicBool::new(false));
    let stop_sink = Arc::new(AtomicBool::new(false));
    let intact = Arc::new(AtomicU64::new(0));

    let fwd = {
        let stop = stop_fwd.clone();
        let (size, cpu) = (args.size, args.forwarder_cpu);
        std::thread::Builder::new()
            .name("floor-forwarder".into())
            .spawn(move || -> Result<ForwarderStats> {
                pin(cpu)?;
                Ok(forward(fwd_sock, sink_addrs, size, mode, stop))
            })?
    };
    let sinks = {
        let (stop, intact) = (stop_sink.clone(), intact.clone());
        let (size, cpu) = (args.size, args.client_cpu);
        std::thread::Builder::new()
            .name("floor-sinks".into())
            .spawn(move || -> Result<u64> {
                pin(cpu)?;
                Ok(sink(sink_socks, size, stop, intact))
            })?
    };
    pin(args.client_cpu)?;
    // Let the threads reach their loops.
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let sent = send_packets(
        &sender,
        fwd_addr,
        args.packets_per_second,
        args.burst,
        args.seconds,
        args.size,
    );
    let send_secs = t0.elapsed().as_secs_f64();
    // Let the last packets through, then stop the forwarder, then the sinks.
    std::thread::sleep(Duration::from_millis(200));
    stop_fwd.store(true, Ordering::Relaxed);
    let st = fwd.join().expect("forwarder thread")?;
    stop_sink.store(true, Ordering::Relaxed);
    let corrupt = sinks.join().expect("sink thread")?;
    let delivered = intact.load(Ordering::Relaxed);

    let cpu = st.cpu.0 + st.cpu.1;
    let expected = st.received * args.fanout as u64;
    Ok(FloorResult {
        send_batch: mode,
        fanout: args.fanout,
        size: args.size,
        seconds: send_secs,
        sent,
        received: st.received,
        open_failures: st.open_failures,
        forwarded: st.forwarded,
        delivered,
        corrupt,
        recv_calls: st.recv_calls,
        send_calls: st.send_calls,
        cpu_user_us: st.cpu.0,
        cpu_system_us: st.cpu.1,
        crypto_us: st.crypto.as_secs_f64() * 1e6,
        in_packets_per_sec: st.received as f64 / send_secs,
        out_packets_per_sec: st.forwarded as f64 / send_secs,
        cpu_us_per_out_packet: cpu / st.forwarded.max(1) as f64,
        cpu_us_per_in_packet: cpu / st.received.max(1) as f64,
        loss_pct: 100.0 * expected.saturating_sub(delivered) as f64 / expected.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(fanout: usize) -> FloorArgs {
        FloorArgs {
            fanout,
            packets_per_second: 200.0,
            burst: 2,
            seconds: 0.5,
            size: 300,
            send_batch: SendBatch::Both,
            forwarder_cpu: None,
            client_cpu: None,
            json: false,
        }
    }

    #[test]
    fn every_packet_reaches_every_sink_intact_in_both_modes() {
        for mode in [SendBatch::PerPacket, SendBatch::PerRecv] {
            let r = run(&args(3), mode).unwrap();
            assert_eq!(r.sent, 100, "{mode:?}: the sender sent what was asked");
            assert_eq!(
                r.received, r.sent,
                "{mode:?}: the forwarder opened every packet"
            );
            assert_eq!(r.open_failures, 0, "{mode:?}");
            assert_eq!(r.forwarded, 3 * r.received, "{mode:?}: three copies each");
            assert_eq!(
                (r.delivered, r.corrupt),
                (r.forwarded, 0),
                "{mode:?}: every copy arrived, opened under its sink's key, payload intact"
            );
            assert!(r.cpu_us_per_out_packet > 0.0, "{mode:?}: CPU time measured");
        }
    }

    #[test]
    fn a_packet_sealed_for_one_sink_does_not_open_for_another() {
        let mut p = vec![0u8; 100];
        write_header(&mut p, 7, 960, 1000);
        assert!(seal(&key(1000), &mut p));
        let mut copy = p.clone();
        assert!(!open(&key(1001), &mut copy));
        assert!(open(&key(1000), &mut p));
    }
}
