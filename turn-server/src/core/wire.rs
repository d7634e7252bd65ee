//! Small wire helpers around the `stun` codec: ChannelData framing, XOR
//! address decoding for repeated attributes, and building replies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use stun::agent::TransactionId;
use stun::attributes::AttrType;
use stun::error_code::{ErrorCode, ErrorCodeAttribute};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{Message, MessageType, Setter, MAGIC_COOKIE};

/// True when the first two bits say ChannelData (channel numbers
/// 0x4000..=0x7FFF).
pub(crate) fn is_channel_data(b: &[u8]) -> bool {
    b.len() >= 4 && (b[0] & 0xC0) == 0x40
}

/// A ChannelData message; `pad` rounds it up to four bytes (streams).
pub(crate) fn channel_data(number: u16, payload: &[u8], pad: bool) -> Vec<u8> {
    let padded = if pad {
        payload.len().div_ceil(4) * 4
    } else {
        payload.len()
    };
    let mut out = Vec::with_capacity(4 + padded);
    out.extend_from_slice(&number.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(4 + padded, 0);
    out
}

/// Decodes an XOR-*-ADDRESS value (RFC 5389 §15.2).
pub(crate) fn decode_xor_addr(v: &[u8], txid: &TransactionId) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = v[4 + i] ^ cookie[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut mask = [0u8; 16];
            mask[..4].copy_from_slice(&cookie);
            mask[4..].copy_from_slice(&txid.0);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = v[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// All values of attribute `t`, in order.
pub(crate) fn all_attrs(m: &Message, t: AttrType) -> impl Iterator<Item = &[u8]> {
    m.attributes
        .0
        .iter()
        .filter(move |a| a.typ == t)
        .map(|a| a.value.as_slice())
}

pub(crate) fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        508 => "Insufficient Capacity",
        _ => "Server Error",
    }
}

pub(crate) fn error_attr(code: u16) -> ErrorCodeAttribute {
    ErrorCodeAttribute {
        code: ErrorCode(code),
        reason: reason(code).as_bytes().to_vec(),
    }
}

/// Builds a message: header, `attrs`, then MESSAGE-INTEGRITY when `key` is
/// given and FINGERPRINT when asked. Setters that fail (an over-long text)
/// are left out rather than failing the reply.
pub(crate) fn build(
    typ: MessageType,
    txid: TransactionId,
    attrs: &[&dyn Setter],
    key: Option<&[u8]>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut m = Message::new();
    m.typ = typ;
    m.transaction_id = txid;
    m.write_header();
    for a in attrs {
        let _ = a.add_to(&mut m);
    }
    if let Some(k) = key {
        let _ = MessageIntegrity(k.to_vec()).add_to(&mut m);
    }
    if fingerprint {
        let _ = FINGERPRINT.add_to(&mut m);
    }
    m.raw
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun::xoraddr::XorMappedAddress;

    #[test]
    fn xor_addresses_round_trip_through_the_stun_codec() {
        for addr in ["192.0.2.7:4242", "[2001:db8::9]:65535"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let txid = TransactionId([3; 12]);
            let raw = build(
                stun::message::BINDING_SUCCESS,
                txid,
                &[&XorMappedAddress {
                    ip: addr.ip(),
                    port: addr.port(),
                }],
                None,
                false,
            );
            let mut m = Message::new();
            m.write(&raw).expect("decodes");
            let v = all_attrs(&m, stun::attributes::ATTR_XORMAPPED_ADDRESS)
                .next()
                .expect("attr");
            assert_eq!(decode_xor_addr(v, &txid), Some(addr));
        }
        assert_eq!(decode_xor_addr(&[0, 1, 0], &TransactionId([0; 12])), None);
        assert_eq!(
            decode_xor_addr(&[0, 3, 0, 0, 1, 2, 3, 4], &TransactionId([0; 12])),
            None
        );
    }

    #[test]
    fn channel_data_pads_only_when_asked() {
        assert_eq!(
            channel_data(0x4001, &[9, 9, 9], false),
            vec![0x40, 1, 0, 3, 9, 9, 9]
        );
        assert_eq!(
            channel_data(0x4001, &[9, 9, 9], true),
            vec![0x40, 1, 0, 3, 9, 9, 9, 0]
        );
    }
}
