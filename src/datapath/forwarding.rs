//! The checks every IPv4 forwarder makes before it sends a packet on, and the ICMP
//! error each failure calls for: no route (net unreachable), no neighbor for the next
//! hop (host unreachable), TTL expiry (time exceeded, RFC 1812 §5.3.1), and a packet
//! larger than the egress MTU (fragmentation needed when DF is set, RFC 1191 §4;
//! fragmentation otherwise, RFC 791 §3.2 and Linux `ip_fragment`).
//!
//! Shared by routers and the node's host stack; each device only decides how it
//! sends the ICMP back (its own `refuse`).

use super::icmp::ErrorMessage;
use super::{Ctx, DropReason};
use crate::packet::Packet;
use std::net::Ipv4Addr;

/// Why a forwarder will not send a packet on, and what it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DropReason,
    /// The ICMP error owed to the sender (if RFC 1812 then allows one for it).
    pub icmp: Option<ErrorMessage>,
    pub detail: String,
}

/// No route to `destination`.
pub fn no_route(destination: Ipv4Addr) -> Refusal {
    Refusal {
        reason: DropReason::NoRoute,
        icmp: Some(ErrorMessage::NET_UNREACHABLE),
        detail: format!("no route to {destination}"),
    }
}

/// The next hop does not answer ARP.
pub fn no_neighbor(next_hop: Ipv4Addr, interface: &str) -> Refusal {
    Refusal {
        reason: DropReason::NoNeighbor,
        icmp: Some(ErrorMessage::HOST_UNREACHABLE),
        detail: format!("no neighbor answers for {next_hop} on {interface}"),
    }
}

/// The TTL check of RFC 1812 §5.3.1: a packet arriving with TTL 1 (or 0) expires here.
pub fn check_ttl(packet: &Packet) -> Result<(), Refusal> {
    if packet.meta.ttl > 1 {
        return Ok(());
    }
    Err(Refusal {
        reason: DropReason::TtlExceeded,
        icmp: Some(ErrorMessage::TIME_EXCEEDED),
        detail: format!(
            "ttl {} expires forwarding to {}",
            packet.meta.ttl, packet.meta.key.destination
        ),
    })
}

/// The egress MTU check (Linux `ip_forward` runs it before POSTROUTING, so an ICMP
/// quotes the packet as it arrived). An oversize packet without DF passes: it is
/// fragmented on output ([`fragment_for_mtu`]).
pub fn check_mtu(packet: &Packet, mtu: u16, interface: &str) -> Result<(), Refusal> {
    let size = packet.ip_len();
    if size <= usize::from(mtu) || !packet.meta.dont_fragment {
        return Ok(());
    }
    Err(Refusal {
        reason: DropReason::MtuExceeded,
        icmp: packet
            .meta
            .dont_fragment
            .then(|| ErrorMessage::fragmentation_needed(mtu)),
        detail: format!("{size} bytes exceed the mtu {mtu} of {interface}"),
    })
}

/// The packets a forwarder sends for one it forwards: the packet itself (the common
/// case, with no allocation), or its fragments.
#[derive(Debug)]
pub enum Fragments {
    Whole(Option<Packet>),
    Cut(std::vec::IntoIter<Packet>),
}

impl Iterator for Fragments {
    type Item = Packet;

    fn next(&mut self) -> Option<Packet> {
        match self {
            Fragments::Whole(packet) => packet.take(),
            Fragments::Cut(fragments) => fragments.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = match self {
            Fragments::Whole(packet) => usize::from(packet.is_some()),
            Fragments::Cut(fragments) => fragments.len(),
        };
        (left, Some(left))
    }
}

impl ExactSizeIterator for Fragments {}

/// Cuts `packet` into fragments that fit `mtu` (RFC 791 §3.2, Linux `ip_fragment`);
/// a packet that fits comes back alone. The first fragment keeps the packet's
/// identity; the others are new packets the device sends (counted as generated, so
/// every one is accounted for).
pub fn fragment_for_mtu(ctx: &mut Ctx, packet: Packet, mtu: usize) -> Fragments {
    if packet.ip_len() <= mtu {
        return Fragments::Whole(Some(packet));
    }
    let pieces = crate::engine::reassembly::fragment(packet.frame(), mtu);
    let mut fragments = Vec::with_capacity(pieces.len());
    for (index, piece) in pieces.iter().enumerate() {
        let Ok(mut fragment) = Packet::from_frame(piece, packet.meta.flow) else {
            continue;
        };
        fragment.meta.reply = packet.meta.reply;
        fragment.meta.origin_port = packet.meta.origin_port;
        if index == 0 {
            fragment.meta.packet_id = packet.meta.packet_id;
        } else {
            ctx.generated(&mut fragment);
        }
        fragments.push(fragment);
    }
    Fragments::Cut(fragments.into_iter())
}

/// What a hop's comment adds for a packet that was cut: `, fragment 2/3 offset
/// 1480`; nothing when `count` is 1.
pub fn fragment_suffix(index: usize, count: usize, packet: &Packet) -> String {
    if count > 1 {
        format!(", {}", describe_fragment(index, count, packet))
    } else {
        String::new()
    }
}

/// How a fragment reads in a capture comment: `fragment 2/3 offset 1480`.
pub fn describe_fragment(index: usize, count: usize, packet: &Packet) -> String {
    let frame = packet.frame();
    let at = crate::wire::ETHERNET_HEADER_LEN + 6;
    let offset = u16::from_be_bytes([frame[at], frame[at + 1]]) & 0x1fff;
    format!(
        "fragment {}/{count} offset {}",
        index + 1,
        usize::from(offset) * 8
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests_support::udp_frame;

    fn packet(ttl: u8, payload: usize) -> Packet {
        let mut frame = udp_frame(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 1, 1),
            (1, 2),
            &vec![0; payload],
        );
        frame[22] = ttl; // checksum is not looked at here
        Packet::from_frame(&frame, 0).unwrap()
    }

    #[test]
    fn ttl_one_expires_and_ttl_two_passes() {
        assert_eq!(check_ttl(&packet(2, 10)), Ok(()));
        let refusal = check_ttl(&packet(1, 10)).unwrap_err();
        assert_eq!(
            (refusal.reason, refusal.icmp),
            (DropReason::TtlExceeded, Some(ErrorMessage::TIME_EXCEEDED))
        );
    }

    #[test]
    fn oversize_without_df_passes_to_be_fragmented() {
        let mut oversize = packet(64, 1473);
        oversize.clear_dont_fragment();
        assert_eq!(check_mtu(&oversize, 1500, "eth0"), Ok(()));
    }

    #[test]
    fn oversize_with_df_owes_fragmentation_needed_with_the_mtu() {
        assert_eq!(check_mtu(&packet(64, 1472), 1500, "eth0"), Ok(()));
        let refusal = check_mtu(&packet(64, 1473), 1500, "eth0").unwrap_err();
        assert_eq!(refusal.reason, DropReason::MtuExceeded);
        assert_eq!(refusal.icmp, Some(ErrorMessage::fragmentation_needed(1500)));
        assert_eq!(refusal.detail, "1501 bytes exceed the mtu 1500 of eth0");
    }
}
