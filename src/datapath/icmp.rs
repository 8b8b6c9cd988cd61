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
    checksum, emit_ethernet, emit_ipv4, set_ipv4_tos, Mac, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4,
    IPV4_HEADER_LEN, PROTOCOL_ICMP,
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

/// How much of the offending datagram an error quotes: as much as fits in a 576-byte
/// error datagram (RFC 1812 §4.3.2.3; Linux `__icmp_send` caps `room` at 576 less the
/// IP and ICMP headers, `iptunnel_pmtud_build_icmp` trims to the same 548 bytes). A
/// long packet's quote is cut short, so its own TCP/UDP checksum cannot verify; the
/// ICMP checksum covers the quote as it is.
fn quote_len(ip_packet: &[u8]) -> usize {
    ip_packet
        .len()
        .min(MAX_ERROR_DATAGRAM - IPV4_HEADER_LEN - 8)
}

/// The type of service Linux gives an ICMP error: the offending packet's TOS bits
/// with precedence "internetwork control" (`__icmp_send`: `(iph->tos &
/// IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL`), 0xc0 for an ordinary packet.
pub fn error_tos(original: &Packet) -> u8 {
    const IPTOS_TOS_MASK: u8 = 0x1e;
    const IPTOS_PREC_INTERNETCONTROL: u8 = 0xc0;
    (original.tos() & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL
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
    ctx.journal
        .error_origins
        .insert(packet.meta.packet_id, point);
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
    /// Type of service ([`error_tos`] for `icmp_send`; 0 for the tunnel's PMTU reply).
    pub tos: u8,
    /// DF: clear for `icmp_send` (the ICMP socket uses `IP_PMTUDISC_DONT`), set by
    /// `iptunnel_pmtud_build_icmp`.
    pub dont_fragment: bool,
}

impl ErrorHeader {
    /// The header Linux `icmp_send` gives an error about `original`: TTL 64
    /// (`ip_default_ttl`), TOS 0xc0 ([`error_tos`]), DF clear.
    pub fn icmp_send(
        original: &Packet,
        source: Ipv4Addr,
        source_mac: Mac,
        destination_mac: Mac,
        identification: u16,
    ) -> Self {
        ErrorHeader {
            source,
            source_mac,
            destination_mac,
            ttl: DEFAULT_TTL,
            identification,
            tos: error_tos(original),
            dont_fragment: false,
        }
    }
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
        header.dont_fragment,
    );
    set_ipv4_tos(&mut frame[ETHERNET_HEADER_LEN..], header.tos);
    let icmp = &mut frame[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..];
    icmp[0] = icmp_type;
    icmp[1] = code;
    icmp[4..8].copy_from_slice(&rest.to_be_bytes());
    icmp[8..].copy_from_slice(&ip_packet[..quoted_len]);
    let sum = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    // The frame was built well-formed just above.
    let mut packet =
        Packet::from_frame(&frame, original.meta.flow).unwrap_or_else(|_| original.clone());
    packet.meta.reply = !original.meta.reply;
    packet
}

/// Turns an echo request addressed to `local` into the echo reply, in place
/// (RFC 792: swap addresses, type 0, same identifier, sequence and data). As Linux
/// `icmp_reply` builds it: the request's TOS, DF clear, TTL and id from `header`.
pub fn answer_echo(packet: &mut Packet, local: Ipv4Addr, header: ErrorHeader) {
    let requester = packet.meta.key.source;
    let tos = packet.tos();
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
    set_ipv4_tos(&mut reply[ETHERNET_HEADER_LEN..], tos);
    let icmp = &mut reply[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..];
    icmp.copy_from_slice(&frame[l4..l4 + payload_len]);
    icmp[0] = TYPE_ECHO_REPLY;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let sum = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let (flow, reply_direction) = (packet.meta.flow, !packet.meta.reply);
    if let Ok(mut built) = Packet::from_frame(&reply, flow) {
        built.meta.reply = reply_direction;
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
        let header = ErrorHeader::icmp_send(
            &original,
            Ipv4Addr::new(172, 20, 2, 10),
            Mac::local(1, 9),
            Mac::local(1, 8),
            0,
        );
        let reply = error(
            &original,
            TYPE_DESTINATION_UNREACHABLE,
            CODE_FRAGMENTATION_NEEDED,
            1450,
            header,
        );
        // 1500 bytes do not fit in 576: the quote is cut to 548 bytes, the error
        // datagram is 576 bytes, TOS 0xc0, DF clear.
        assert_eq!(reply.len(), 14 + 576);
        assert_eq!(reply.tos(), 0xc0);
        assert!(!reply.meta.dont_fragment);
        assert_eq!(&reply.frame()[42..42 + 548], &frame[14..14 + 548]);
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
