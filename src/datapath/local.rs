//! What a Linux host answers for a packet addressed to one of its own addresses when
//! no application of netsim's runs there (a node's host stack, a router): an echo
//! request gets its reply (`icmp_echo`); a TCP segment to a closed port gets a reset
//! (`tcp_v4_send_reset`, RFC 9293 §3.10.7.1); a UDP datagram to a closed port gets
//! ICMP port unreachable from the address it was sent to (`__udp4_lib_rcv` →
//! `icmp_send`, whose source for a local destination is that destination). Anything
//! else is dropped without an answer.
//!
//! Owns building those answers; the caller records the hop and sends them.

use super::icmp::{self, ErrorHeader, ErrorMessage};
use super::{Ctx, DropReason, HopAction, PointId};
use crate::packet::{tcp_flags, IcmpKind, Packet};
use crate::wire::{
    checksum, emit_ethernet, emit_ipv4, Mac, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN,
    PROTOCOL_TCP, PROTOCOL_UDP,
};

/// The ICMP "port unreachable" a host sends for UDP to a closed port.
pub const PORT_UNREACHABLE: ErrorMessage = ErrorMessage {
    icmp_type: icmp::TYPE_DESTINATION_UNREACHABLE,
    code: icmp::CODE_PORT_UNREACHABLE,
    rest: 0,
};

/// What the host does with a packet for itself.
#[derive(Debug)]
pub enum LocalAnswer {
    /// Accepted and answered (an echo reply): the packet was delivered.
    Reply(Packet),
    /// Refused with an answer (TCP reset, ICMP port unreachable): nothing listens.
    Refuse(Packet),
    /// Refused without an answer (a reset, an ICMP error, another protocol).
    Ignore,
}

/// The link-layer and IP details of an answer: sent from `source_mac` to
/// `destination_mac` with IP identification `identification`.
#[derive(Debug, Clone, Copy)]
pub struct AnswerLink {
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub identification: u16,
}

/// Decides and builds the host's answer to `packet`, addressed to one of its own
/// addresses where nothing listens.
pub fn answer(packet: &Packet, link: AnswerLink) -> LocalAnswer {
    let local = packet.meta.key.destination;
    let header = ErrorHeader::icmp_send(
        packet,
        local,
        link.source_mac,
        link.destination_mac,
        link.identification,
    );
    match (packet.meta.key.protocol, packet.meta.icmp) {
        (_, IcmpKind::EchoRequest) => {
            let mut reply = packet.clone();
            icmp::answer_echo(&mut reply, local, header);
            LocalAnswer::Reply(reply)
        }
        (PROTOCOL_TCP, _) if !packet.meta.is_later_fragment => match reset(packet, link) {
            Some(reset) => LocalAnswer::Refuse(reset),
            None => LocalAnswer::Ignore,
        },
        (PROTOCOL_UDP, _) if icmp::may_send_error(packet) => LocalAnswer::Refuse(icmp::error(
            packet,
            PORT_UNREACHABLE.icmp_type,
            PORT_UNREACHABLE.code,
            PORT_UNREACHABLE.rest,
            header,
        )),
        _ => LocalAnswer::Ignore,
    }
}

/// Where and how a host settles a packet addressed to itself.
#[derive(Debug, Clone, Copy)]
pub struct Settle<'a> {
    /// The device, for drop records.
    pub device: &'a str,
    /// What the address is, for the trace: `the router itself`, `node worker-1`.
    pub what: &'a str,
    /// The packet's reserved receive hop.
    pub slot: Option<usize>,
    /// Where the answer leaves.
    pub point: PointId,
}

/// Records what the host did with `packet`: delivered and answered (an echo), or
/// refused (dropped as `no-listener`, with the reset or port unreachable it sends, if
/// any). Returns the answer to send.
pub fn settle(ctx: &mut Ctx, at: Settle, packet: &Packet, answer: LocalAnswer) -> Option<Packet> {
    let destination = packet.meta.key.destination;
    match answer {
        LocalAnswer::Reply(mut reply) => {
            ctx.describe(at.slot, HopAction::Deliver, || {
                format!("echo request to {destination}: reply")
            });
            ctx.delivered_here(packet);
            ctx.generated(&mut reply);
            ctx.hop(at.point, &reply, HopAction::Transmit, || {
                "echo reply".into()
            });
            Some(reply)
        }
        refused => {
            let key = packet.meta.key;
            ctx.describe(at.slot, HopAction::Drop, || {
                format!(
                    "{destination} is {}; nothing listens on {}/{}",
                    at.what,
                    key.protocol_name(),
                    key.destination_port
                )
            });
            ctx.drop_packet(at.device, packet, DropReason::NoListener, || {
                format!("{destination} is {}", at.what)
            });
            ctx.refused_here(packet);
            let LocalAnswer::Refuse(mut refusal) = refused else {
                return None;
            };
            ctx.generated(&mut refusal);
            ctx.hop(at.point, &refusal, HopAction::Transmit, || {
                describe_refusal(&refusal)
            });
            Some(refusal)
        }
    }
}

/// How a refusal reads in a capture comment.
pub fn describe_refusal(refusal: &Packet) -> String {
    match refusal.meta.key.protocol {
        PROTOCOL_TCP => "tcp reset: nothing listens".into(),
        _ => "icmp port-unreachable: nothing listens".into(),
    }
}

/// A firewall's or proxy's refusal of `packet`, from its destination back to its
/// source: a TCP RST (counted as generated), otherwise ICMP destination unreachable
/// with `code` (none for a packet no ICMP error may answer). The ICMP error's hop is
/// recorded at `point` when there is one.
pub fn refusal(
    ctx: &mut Ctx,
    packet: &Packet,
    link: AnswerLink,
    code: u8,
    point: Option<PointId>,
) -> Option<Packet> {
    if packet.meta.key.protocol == crate::wire::PROTOCOL_TCP {
        let mut answer = reset(packet, link)?;
        ctx.generated(&mut answer);
        return Some(answer);
    }
    if !icmp::may_send_error(packet) {
        return None;
    }
    let header = ErrorHeader {
        source: packet.meta.key.destination,
        source_mac: link.source_mac,
        destination_mac: link.destination_mac,
        ttl: 64,
        identification: 0,
        tos: 0,
        dont_fragment: false,
    };
    let message = ErrorMessage {
        icmp_type: icmp::TYPE_DESTINATION_UNREACHABLE,
        code,
        rest: 0,
    };
    Some(match point {
        Some(point) => icmp::originate(ctx, point, packet, message, header),
        None => {
            let mut answer = icmp::error(packet, message.icmp_type, code, 0, header);
            ctx.generated(&mut answer);
            answer
        }
    })
}

/// The reset RFC 9293 §3.10.7.1 sends for a segment to a closed port (never for a
/// reset): with ACK set, `<SEQ=SEG.ACK><CTL=RST>`; otherwise `<SEQ=0><ACK=SEG.SEQ +
/// SEG.LEN><CTL=RST,ACK>`, SYN and FIN each counting one. Linux sends it with DF set,
/// IP id 0 and TTL 64 (`tcp_v4_send_reset` on the per-netns control socket).
pub fn reset(packet: &Packet, link: AnswerLink) -> Option<Packet> {
    let meta = &packet.meta;
    if meta.tcp_flags & tcp_flags::RST != 0 {
        return None;
    }
    let frame = packet.frame();
    let tcp = frame.get(meta.l4_offset..)?;
    if tcp.len() < 20 {
        return None;
    }
    let word = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
    let (sequence, acknowledgment) = (word(4), word(8));
    let header_len = usize::from(tcp[12] >> 4) * 4;
    let ip_payload =
        usize::from(meta.ip_total_len).saturating_sub(meta.l4_offset - ETHERNET_HEADER_LEN);
    let data_len = u32::try_from(ip_payload.saturating_sub(header_len)).unwrap_or(0);
    let flags = meta.tcp_flags;
    let (reset_sequence, reset_acknowledgment, reset_flags) = if flags & tcp_flags::ACK != 0 {
        (acknowledgment, 0, tcp_flags::RST)
    } else {
        let length = data_len
            + u32::from(flags & tcp_flags::SYN != 0)
            + u32::from(flags & tcp_flags::FIN != 0);
        (
            0,
            sequence.wrapping_add(length),
            tcp_flags::RST | tcp_flags::ACK,
        )
    };
    let (local, remote) = (meta.key.destination, meta.key.source);
    let mut out = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + 20];
    emit_ethernet(
        &mut out,
        link.destination_mac,
        link.source_mac,
        ETHERTYPE_IPV4,
    );
    emit_ipv4(
        &mut out[ETHERNET_HEADER_LEN..],
        local,
        remote,
        PROTOCOL_TCP,
        20,
        icmp::DEFAULT_TTL,
        0,
        true,
    );
    let segment = &mut out[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..];
    segment[0..2].copy_from_slice(&meta.key.destination_port.to_be_bytes());
    segment[2..4].copy_from_slice(&meta.key.source_port.to_be_bytes());
    segment[4..8].copy_from_slice(&reset_sequence.to_be_bytes());
    segment[8..12].copy_from_slice(&reset_acknowledgment.to_be_bytes());
    segment[12] = 0x50;
    segment[13] = reset_flags;
    let sum = checksum::transport_checksum(local, remote, PROTOCOL_TCP, segment);
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut reset = Packet::from_frame(&out, meta.flow).ok()?;
    reset.meta.reply = !meta.reply;
    Some(reset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{transport_frame, FrameAddresses};
    use std::net::Ipv4Addr;

    fn link() -> AnswerLink {
        AnswerLink {
            source_mac: Mac::local(1, 1),
            destination_mac: Mac::local(1, 2),
            identification: 7,
        }
    }

    fn segment(flags: u8, payload: &[u8]) -> Packet {
        let addresses = FrameAddresses {
            source_mac: Mac::local(1, 2),
            destination_mac: Mac::local(1, 1),
            source: Ipv4Addr::new(10, 0, 0, 2),
            destination: Ipv4Addr::new(10, 0, 0, 1),
            source_port: 40000,
            destination_port: 22,
        };
        let mut frame = transport_frame(PROTOCOL_TCP, &addresses, payload);
        let tcp = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
        frame[tcp + 4..tcp + 8].copy_from_slice(&1000u32.to_be_bytes());
        frame[tcp + 8..tcp + 12].copy_from_slice(&5000u32.to_be_bytes());
        frame[tcp + 13] = flags;
        frame[tcp + 16..tcp + 18].copy_from_slice(&[0, 0]);
        let sum = checksum::transport_checksum(
            addresses.source,
            addresses.destination,
            PROTOCOL_TCP,
            &frame[tcp..],
        );
        frame[tcp + 16..tcp + 18].copy_from_slice(&sum.to_be_bytes());
        Packet::from_frame(&frame, 4).unwrap()
    }

    #[test]
    fn a_syn_to_a_closed_port_gets_rst_ack_acknowledging_the_syn() {
        let LocalAnswer::Refuse(reset) = answer(&segment(tcp_flags::SYN, &[]), link()) else {
            panic!("a reset");
        };
        let tcp = &reset.frame()[34..];
        assert_eq!(reset.meta.tcp_flags, tcp_flags::RST | tcp_flags::ACK);
        assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), 0);
        assert_eq!(u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]), 1001);
        assert_eq!(reset.meta.key.source, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            (reset.meta.key.source_port, reset.meta.key.destination_port),
            (22, 40000)
        );
        assert!(reset.meta.dont_fragment);
        assert_eq!(reset.meta.flow, 4);
        assert_eq!(
            checksum::transport_checksum(
                reset.meta.key.source,
                reset.meta.key.destination,
                PROTOCOL_TCP,
                tcp
            ),
            0
        );
    }

    #[test]
    fn a_segment_with_ack_gets_a_bare_rst_at_its_ack_number_and_a_reset_gets_nothing() {
        let Some(reset) = reset(&segment(tcp_flags::ACK | tcp_flags::PSH, b"hello"), link()) else {
            panic!("a reset");
        };
        let tcp = &reset.frame()[34..];
        assert_eq!(reset.meta.tcp_flags, tcp_flags::RST);
        assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), 5000);
        assert!(super::reset(&segment(tcp_flags::RST, &[]), link()).is_none());
    }
}
