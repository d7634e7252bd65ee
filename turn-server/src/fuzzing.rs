//! An entry point for fuzzing the sans-IO core with arbitrary bytes (not part of the API).
//!
//! [`feed`] builds a core with a fixed configuration, clock and seed, and hands it `data` as a
//! sequence of client datagrams over UDP and frames over TCP, then peer datagrams, draining its
//! output after each. Nothing a client sends may panic the core.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::config::{PeerMode, TurnConfig};
use crate::core::{Core, CoreParams, FiveTuple, Input, Output, StreamFramer};
use crate::{Transport, TurnStats};

/// Feeds `data` to a fresh core. The first byte picks how it is cut into messages; each
/// message is a 2-byte length prefix and that many bytes (the rest, when shorter).
pub fn feed(data: &[u8]) {
    let t0 = Instant::now();
    let config = TurnConfig {
        secret: Some("fuzzing-secret-0123456789".into()),
        realm: "example.org".into(),
        peer_mode: PeerMode::General,
        unauth_requests_per_sec: 0,
        ..TurnConfig::default()
    };
    let mut core = Core::new(
        &config,
        Arc::new(TurnStats::default()),
        CoreParams {
            now: t0,
            unix_now: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            seed: [7; 32],
        },
    );
    let server: SocketAddr = ([127, 0, 0, 1], 3478).into();
    let client: SocketAddr = ([127, 0, 0, 1], 40000).into();
    let udp = FiveTuple {
        transport: Transport::Udp,
        client,
        server,
    };
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..udp
    };
    let mut framer = StreamFramer::default();
    let mut now = t0;
    let mut rest = data;
    let mut i = 0u32;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let msg = &rest[2..2 + len];
        rest = &rest[2 + len..];
        match i % 3 {
            0 => core.handle_input(
                now,
                Input::Client {
                    tuple: udp,
                    data: msg,
                },
            ),
            1 => {
                framer.push(msg);
                while let Ok(Some(frame)) = framer.next_frame() {
                    core.handle_input(
                        now,
                        Input::Client {
                            tuple: tcp,
                            data: frame,
                        },
                    );
                }
            }
            _ => core.handle_input(
                now,
                Input::Peer {
                    relay: ([127, 0, 0, 1], 49152).into(),
                    peer: ([127, 0, 0, 1], 50000).into(),
                    data: msg,
                },
            ),
        }
        while let Some(out) = core.poll_output() {
            if let Output::BindRelay { id, addr } = out {
                core.relay_bound(now, id, addr, true);
            }
        }
        now += Duration::from_millis(100);
        core.handle_timeout(now);
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    /// Bounded random input on the stable compiler (the cargo-fuzz target `turn_input` explores
    /// further): random bytes, and real STUN/ChannelData headers with random bodies.
    #[test]
    fn the_core_survives_random_datagrams_and_frames() {
        let mut x: u64 = 0x7e57_0000_0000_0001;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3_000 {
            let mut data = Vec::new();
            for _ in 0..1 + next() % 6 {
                let len = (next() % 120) as usize;
                data.extend_from_slice(&(len as u16).to_be_bytes());
                let mut msg: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                match next() % 3 {
                    // A STUN header: method, length, magic cookie.
                    0 if len >= 20 => {
                        msg[0] = 0;
                        msg[1] = [0x01, 0x03, 0x04, 0x06, 0x08, 0x09][(next() % 6) as usize];
                        msg[2..4].copy_from_slice(&((len - 20) as u16).to_be_bytes());
                        msg[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
                    }
                    // A ChannelData header.
                    1 if len >= 4 => {
                        msg[0] = 0x40;
                        msg[2..4].copy_from_slice(&((len - 4) as u16).to_be_bytes());
                    }
                    _ => {}
                }
                data.extend_from_slice(&msg);
            }
            super::feed(&data);
        }
    }
}
