//! ICMP messages that forwarding elements originate: time exceeded, destination
//! unreachable (net, host, fragmentation needed) and echo replies.
//!
//! RFC 792 gives the formats; RFC 1812 §4.3.2 the rules routers follow: never answer
//! an ICMP error or a non-initial fragment, never a broadcast or multicast, and quote
//! as much of the offending datagram as fits in 576 bytes (§4.3.2.3), which Linux's
//! `icmp_send` also does.

use super::{Ctx, HopAction, PointId};
use crate::packet::{IcmpKind, Packet};
use crate::wire::{
    checksum, emit_ethernet, emit_ipv4, Mac, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN,
    PROTOCOL_ICMP,
};
use std::net::Ipv4Addr;

pub const TYPE_ECHO_REPLY: u8 = 0;
pub const TYPE_DESTINATION_UNREACHABLE: u8 = 3;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
pub const CODE_NET_UNREACHABLE: u8 = 0;
pub const CODE_HOST_UNREACHABLE: u8 = 1;
pub const CODE_PORT_UNREACHABLE: u8 = 3;
pub const CODE_FRAGMENTATION_NEEDED: u8 = 4;
pub const CODE_TTL_EXCEEDED_IN_TRANSIT: u8 = 0;

/// Largest ICMP error datagram (RFC 1812 §4.3.2.3).
const MAX_ERROR_DATAGRAM: usize = 576;
/// Initial TTL of packets Linux originates (`net.ipv4.ip_default_ttl`).
pub const DEFAULT_TTL: u8 = 64;

/// True when RFC 1812 §4.3.2.7 allows an ICMP error about `packet`.
pub fn may_send_error(packet: &Packet) -> bool {
    let meta = &packet.meta;
    let source = meta.key.source;
    !matches!(meta.icmp, IcmpKind::Error { .. })
        && !meta.is_later_fragment
        && !source.is_unspecified()
        && !source.is_broadcast()
        && !source.is_multicast()
        && !source.is_loopback()
        && !meta.key.destination.is_broadcast()
        && !meta.key.destination.is_multicast()
}

/// How much of the offending datagram an error quotes. Linux quotes as much as fits
/// in 576 bytes (RFC 1812 §4.3.2.3). netsim does the same when the whole datagram
/// fits; when it does not, it quotes the RFC 792 minimum (the IP header and the first
/// 8 payload bytes) instead of a truncated segment, because Wireshark checks the
/// TCP checksum of a truncated quote as if it were whole and flags it as bad — the
/// one place netsim's bytes differ from the kernel's, so that every capture reads
/// clean. The ports and addresses conntrack and the sender need are in both.
fn quote_len(ip_packet: &[u8]) -> usize {
    if ip_packet.len() <= MAX_ERROR_DATAGRAM - IPV4_HEADER_LEN - 8 {
        return ip_packet.len();
    }
    let header_len = ip_packet
        .first()
        .map(|b| usize::from(b & 0x0f) * 4)
        .unwrap_or(IPV4_HEADER_LEN);
    (header_len + 8).min(ip_packet.len())
}

/// Which ICMP error: type, code and the 32-bit field after the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorMessage {
    pub icmp_type: u8,
    pub code: u8,
    pub rest: u32,
}

impl ErrorMessage {
    pub const TIME_EXCEEDED: ErrorMessage = ErrorMessage {
        icmp_type: TYPE_TIME_EXCEEDED,
        code: CODE_TTL_EXCEEDED_IN_TRANSIT,
        rest: 0,
    };
    pub const NET_UNREACHABLE: ErrorMessage = ErrorMessage {
        icmp_type: TYPE_DESTINATION_UNREACHABLE,
        code: CODE_NET_UNREACHABLE,
        rest: 0,
    };
    pub const HOST_UNREACHABLE: ErrorMessage = ErrorMessage {
        icmp_type: TYPE_DESTINATION_UNREACHABLE,
        code: CODE_HOST_UNREACHABLE,
        rest: 0,
    };

    /// "Fragmentation needed and DF set" with the next-hop MTU (RFC 1191 §4).
    pub fn fragmentation_needed(mtu: u16) -> ErrorMessage {
        ErrorMessage {
            icmp_type: TYPE_DESTINATION_UNREACHABLE,
            code: CODE_FRAGMENTATION_NEEDED,
            rest: u32::from(mtu),
        }
    }

    fn describe(self) -> String {
        match (self.icmp_type, self.code) {
            (TYPE_TIME_EXCEEDED, _) => "time-exceeded".into(),
            (TYPE_DESTINATION_UNREACHABLE, CODE_NET_UNREACHABLE) => "net-unreachable".into(),
            (TYPE_DESTINATION_UNREACHABLE, CODE_HOST_UNREACHABLE) => "host-unreachable".into(),
            (TYPE_DESTINATION_UNREACHABLE, CODE_FRAGMENTATION_NEEDED) => {
                format!("fragmentation-needed mtu={}", self.rest)
            }
            (icmp_type, code) => format!("type {icmp_type} code {code}"),
        }
    }
}

/// Builds an ICMP error about `original`, counts it as a packet this device sent, and
/// records it at `point`.
pub fn originate(
    ctx: &mut Ctx,
    point: PointId,
    original: &Packet,
    message: ErrorMessage,
    header: ErrorHeader,
) -> Packet {
    let mut packet = error(
        original,
        message.icmp_type,
        message.code,
        message.rest,
        header,
    );
    ctx.generated(&mut packet);
    let to = original.meta.key.source;
    ctx.hop(point, &packet, HopAction::IcmpError, || {
        format!("icmp {} to {to}", message.describe())
    });
    packet
}

/// How the error's IP header is filled in.
#[derive(Debug, Clone, Copy)]
pub struct ErrorHeader {
    pub source: Ipv4Addr,
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub ttl: u8,
    pub identification: u16,
}

/// Builds an ICMP error of `icmp_type`/`code` about `original`, addressed to its
/// source. `rest` is the 32-bit field after the checksum (next-hop MTU in its low 16
/// bits for fragmentation-needed, RFC 1191 §4; zero otherwise).
pub fn error(original: &Packet, icmp_type: u8, code: u8, rest: u32, header: ErrorHeader) -> Packet {
    let ip_packet = &original.frame()[ETHERNET_HEADER_LEN..];
    let quoted_len = quote_len(ip_packet);
    let icmp_len = 8 + quoted_len;
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + icmp_len];
    emit_ethernet(
        &mut frame,
        header.destination_mac,
        header.source_mac,
        ETHERTYPE_IPV4,
    );
    emit_ipv4(
        &mut frame[ETHERNET_HEADER_LEN..],
        header.source,
        original.meta.key.source,
        PROTOCOL_ICMP,
        icmp_len,
        header.ttl,
        header.identification,
        false,
    );
    let icmp = &mut frame[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..];
    icmp[0] = icmp_type;
    icmp[1] = code;
    icmp[4..8].copy_from_slice(&rest.to_be_bytes());
    icmp[8..].copy_from_slice(&ip_packet[..quoted_len]);
    let sum = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    // The frame was built well-formed just above.
    Packet::from_frame(&frame, original.meta.flow).unwrap_or_else(|_| original.clone())
}

/// Turns an echo request addressed to `local` into the echo reply, in place
/// (RFC 792: swap addresses, type 0, same identifier, sequence and data).
pub fn answer_echo(packet: &mut Packet, local: Ipv4Addr, header: ErrorHeader) {
    let requester = packet.meta.key.source;
    let l4 = packet.meta.l4_offset;
    let total = usize::from(packet.meta.ip_total_len);
    let frame = packet.frame_mut();
    emit_ethernet(
        frame,
        header.destination_mac,
        header.source_mac,
        ETHERTYPE_IPV4,
    );
    let payload_len = total - (l4 - ETHERNET_HEADER_LEN);
    // Rebuild a plain 20-byte header (options, if any, are not echoed).
    let mut reply = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + payload_len];
    reply[..ETHERNET_HEADER_LEN].copy_from_slice(&frame[..ETHERNET_HEADER_LEN]);
    emit_ipv4(
        &mut reply[ETHERNET_HEADER_LEN..],
        local,
        requester,
        PROTOCOL_ICMP,
        payload_len,
        header.ttl,
        header.identification,
        false,
    );
    let icmp = &mut reply[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..];
    icmp.copy_from_slice(&frame[l4..l4 + payload_len]);
    icmp[0] = TYPE_ECHO_REPLY;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let sum = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let flow = packet.meta.flow;
    if let Ok(built) = Packet::from_frame(&reply, flow) {
        *packet = built;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse_meta;

    #[test]
    fn fragmentation_needed_quotes_the_packet_and_carries_the_mtu() {
        let frame = crate::packet::tests_support::udp_frame(
            Ipv4Addr::new(172, 20, 1, 10),
            Ipv4Addr::new(172, 20, 2, 10),
            (40000, 53),
            &[0u8; 1472],
        );
        let original = Packet::from_frame(&frame, 3).unwrap();
        let header = ErrorHeader {
            source: Ipv4Addr::new(172, 20, 2, 10),
            source_mac: Mac::local(1, 9),
            destination_mac: Mac::local(1, 8),
            ttl: 64,
            identification: 0,
        };
        let reply = error(
            &original,
            TYPE_DESTINATION_UNREACHABLE,
            CODE_FRAGMENTATION_NEEDED,
            1450,
            header,
        );
        // 1500 bytes do not fit in 576: the RFC 792 minimum quote (20 + 8).
        assert_eq!(reply.len(), 14 + 20 + 8 + 28);
        let meta = parse_meta(reply.frame()).unwrap();
        assert_eq!(meta.key.destination, Ipv4Addr::new(172, 20, 1, 10));
        assert_eq!(
            meta.icmp,
            IcmpKind::Error {
                icmp_type: 3,
                code: 4
            }
        );
        let icmp = &reply.frame()[34..];
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450);
        assert_eq!(checksum::checksum(icmp), 0);
        assert_eq!(reply.meta.flow, 3);
        assert!(!may_send_error(&reply));
        assert_eq!(
            crate::packet::quoted_flow_key(&reply),
            Some(original.meta.key)
        );
    }
}
