//! Encapsulations as mechanism every CNI shares: Geneve (RFC 8926; Antrea's
//! default), VXLAN (RFC 7348; Antrea's `vxlan` tunnel type, Calico's `vxlan.calico`)
//! and IP-in-IP (RFC 2003; Calico's `tunl0`). Each prepends its outer headers in the
//! packet's headroom (no copy of the payload) and removes them in place; the device
//! decides when and toward whom, and whether the outer IPv4 header has DF (see
//! [`EncapHeader::dont_fragment`]). The outer TTL is 64, the outer UDP checksum 0
//! (allowed over IPv4; Linux's default for both UDP tunnels), the UDP source port a
//! hash of the inner flow (chosen by the caller).

use super::icmp;
use crate::packet::Packet;
use crate::wire::geneve::{self, Repr as GeneveRepr};
use crate::wire::{
    emit_ethernet, emit_ipv4, vxlan, Mac, WireError, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4,
    IPV4_HEADER_LEN, PROTOCOL_IPIP, PROTOCOL_UDP, UDP_HEADER_LEN,
};
use std::net::Ipv4Addr;

/// Which encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encapsulation {
    /// Geneve, VNI 0, no options (as Antrea emits it).
    Geneve,
    /// VXLAN with this VNI (Calico: 4096).
    Vxlan { vni: u32 },
    /// IPv4 in IPv4: the inner IP packet, no inner Ethernet.
    Ipip,
}

impl Encapsulation {
    /// The outer UDP source ports it picks from, `[low, high)`, by a hash of the
    /// inner flow (`udp_flow_src_port(net, skb, min, max, true)`). Geneve: 1–65534
    /// (drivers/net/geneve.c `geneve_xmit_skb` passes 1, USHRT_MAX; reference §a).
    /// VXLAN: the local port range, 32768–60998: `vxlan_xmit_one` passes the device's
    /// `port_min`/`port_max`, which neither OVS's vxlan vport (Antrea's
    /// `tunnel_type: vxlan`) nor Felix's `vxlan.calico` sets, and
    /// `udp_flow_src_port` falls back to `inet_get_local_port_range` when
    /// `min >= max` (include/net/udp.h). IPIP carries no ports.
    pub fn source_ports(self) -> (u16, u16) {
        match self {
            Encapsulation::Geneve => (1, u16::MAX),
            Encapsulation::Vxlan { .. } => (32_768, 60_999),
            Encapsulation::Ipip => (0, 0),
        }
    }

    /// Bytes it adds, counted against the inner IP packet (what a pod MTU loses).
    pub fn overhead(self) -> usize {
        match self {
            Encapsulation::Geneve => geneve::IPV4_OVERHEAD,
            Encapsulation::Vxlan { .. } => vxlan::IPV4_OVERHEAD,
            Encapsulation::Ipip => IPV4_HEADER_LEN,
        }
    }
}

/// The outer headers of one encapsulation.
#[derive(Debug, Clone, Copy)]
pub struct EncapHeader {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub source_port: u16,
    pub identification: u16,
    /// DF on the outer header. OVS's tunnels (Antrea): set, from the tunnel key's
    /// `df_default` (reference §a). Calico's `vxlan.calico`: clear — Felix creates the
    /// kernel VXLAN device without `df` (felix/dataplane/linux/vxlan_mgr.go `device`),
    /// and `vxlan_xmit_one` sets DF only for `df set` or `df inherit`. Calico's
    /// `tunl0`: the inner packet's — the fallback IPIP device's template has no
    /// frag_off, and `ip_tunnel_xmit` ORs in the inner header's DF.
    pub dont_fragment: bool,
}

/// Wraps `packet` in `encapsulation`, in its headroom, and re-parses the metadata.
pub fn encapsulate(packet: &mut Packet, encapsulation: Encapsulation, header: &EncapHeader) {
    let inner_len = packet.len();
    let (outer_len, replaced) = encapsulation.outer_len();
    packet.push_front(outer_len - replaced);
    emit_outer_headers(
        &mut packet.frame_mut()[..outer_len],
        encapsulation,
        header,
        inner_len,
    );
    let _ = packet.parse();
}

impl Encapsulation {
    /// The outer headers' length, and how many of the inner frame's first bytes
    /// they take the place of (IPIP carries no inner Ethernet header).
    pub fn outer_len(self) -> (usize, usize) {
        let outer_ip = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
        match self {
            Encapsulation::Geneve => (outer_ip + UDP_HEADER_LEN + geneve::BASE_LEN, 0),
            Encapsulation::Vxlan { .. } => (outer_ip + UDP_HEADER_LEN + vxlan::HEADER_LEN, 0),
            Encapsulation::Ipip => (outer_ip, ETHERNET_HEADER_LEN),
        }
    }
}

/// Writes the outer headers of `encapsulation` into `outer` (its
/// [`Encapsulation::outer_len`] bytes, just in front of what is left of an inner
/// Ethernet frame of `inner_len` bytes): what [`encapsulate`] puts on the wire, for
/// a caller that lays the frame out itself (a path cache rebuilding a hop).
pub fn emit_outer_headers(
    outer: &mut [u8],
    encapsulation: Encapsulation,
    header: &EncapHeader,
    inner_len: usize,
) {
    match encapsulation {
        // Geneve: outer Ethernet / IPv4 (TTL 64) / UDP 6081 (checksum 0: Antrea's
        // default `tunnelCsum: false`) / Geneve (VNI 0, no options) / the inner frame.
        Encapsulation::Geneve => {
            let tunnel_header = emit_udp_tunnel(outer, header, geneve::UDP_PORT, inner_len);
            let mut view = geneve::Packet::new_unchecked(tunnel_header);
            // The eight bytes of a header without options; emit cannot fail.
            let _ = GeneveRepr::antrea().emit(&mut view);
        }
        // VXLAN (RFC 7348): outer Ethernet / IPv4 / UDP 4789 (checksum 0, Linux's
        // default for VXLAN over IPv4) / VXLAN with `vni` / the inner Ethernet frame.
        Encapsulation::Vxlan { vni } => {
            let tunnel_header = emit_udp_tunnel(outer, header, vxlan::UDP_PORT, inner_len);
            // The eight bytes of the header; emit cannot fail.
            let _ = vxlan::Repr { vni }.emit(tunnel_header);
        }
        // IP-in-IP (RFC 2003 §3): the inner IP packet behind an outer IPv4 header
        // (protocol 4); the inner Ethernet header is not carried, the outer headers
        // take its place.
        Encapsulation::Ipip => {
            let inner_ip_len = inner_len - ETHERNET_HEADER_LEN;
            emit_outer(outer, header, PROTOCOL_IPIP, inner_ip_len);
        }
    }
}

/// Removes the encapsulation the outer headers say (Geneve on UDP 6081, VXLAN on UDP
/// 4789, IP protocol 4) and returns which it was and its VNI (0 for IPIP).
pub fn decapsulate(packet: &mut Packet) -> Result<(Encapsulation, u32), WireError> {
    let key = packet.meta.key;
    match (key.protocol, key.destination_port) {
        (PROTOCOL_UDP, geneve::UDP_PORT) => {
            decapsulate_geneve(packet).map(|vni| (Encapsulation::Geneve, vni))
        }
        (PROTOCOL_UDP, vxlan::UDP_PORT) => {
            decapsulate_vxlan(packet).map(|vni| (Encapsulation::Vxlan { vni }, vni))
        }
        (PROTOCOL_IPIP, _) => decapsulate_ipip(packet).map(|()| (Encapsulation::Ipip, 0)),
        _ => Err(WireError::Unsupported),
    }
}

/// Outer Ethernet / IPv4 (TTL 64, DF as the header says) for `payload_len` bytes of
/// `protocol`.
fn emit_outer(bytes: &mut [u8], header: &EncapHeader, protocol: u8, payload_len: usize) {
    emit_ethernet(
        bytes,
        header.destination_mac,
        header.source_mac,
        ETHERTYPE_IPV4,
    );
    emit_ipv4(
        &mut bytes[ETHERNET_HEADER_LEN..],
        header.source,
        header.destination,
        protocol,
        payload_len,
        icmp::DEFAULT_TTL,
        header.identification,
        header.dont_fragment,
    );
}

/// Outer UDP with checksum 0 (allowed over IPv4).
fn emit_udp(bytes: &mut [u8], source_port: u16, destination_port: u16, udp_len: usize) {
    bytes[0..2].copy_from_slice(&source_port.to_be_bytes());
    bytes[2..4].copy_from_slice(&destination_port.to_be_bytes());
    bytes[4..6].copy_from_slice(&u16::try_from(udp_len).unwrap_or(u16::MAX).to_be_bytes());
    bytes[6..8].copy_from_slice(&[0, 0]);
}

/// Writes outer Ethernet / IPv4 / UDP to `port` in front of a tunnel header and an
/// inner Ethernet frame of `inner_len` bytes, and returns the rest of `outer`: the
/// tunnel header's room, to be written.
fn emit_udp_tunnel<'a>(
    outer: &'a mut [u8],
    header: &EncapHeader,
    port: u16,
    inner_len: usize,
) -> &'a mut [u8] {
    let headers = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    let udp_len = outer.len() - headers + inner_len;
    emit_outer(outer, header, PROTOCOL_UDP, udp_len);
    emit_udp(
        &mut outer[headers..headers + UDP_HEADER_LEN],
        header.source_port,
        port,
        udp_len,
    );
    &mut outer[headers + UDP_HEADER_LEN..]
}

fn decapsulate_vxlan(packet: &mut Packet) -> Result<u32, WireError> {
    let offset = packet.meta.l4_offset + UDP_HEADER_LEN;
    let repr = vxlan::Repr::parse(packet.frame().get(offset..).ok_or(WireError::Truncated)?)?;
    packet.pull_front(offset + vxlan::HEADER_LEN);
    packet.parse()?;
    Ok(repr.vni)
}

/// Removes the outer IPv4 header and gives the inner packet an Ethernet header again
/// (same MACs as the outer frame; the receiver sets its own on output).
fn decapsulate_ipip(packet: &mut Packet) -> Result<(), WireError> {
    let header_len = packet.meta.l4_offset - ETHERNET_HEADER_LEN;
    let (destination, source) = (packet.meta.destination_mac, packet.meta.source_mac);
    if packet.len() < ETHERNET_HEADER_LEN + header_len + IPV4_HEADER_LEN {
        return Err(WireError::Truncated);
    }
    packet.pull_front(header_len);
    emit_ethernet(packet.frame_mut(), destination, source, ETHERTYPE_IPV4);
    packet.parse()
}

/// Removes one Geneve encapsulation (outer Ethernet/IPv4/UDP/Geneve) in place and
/// returns the VNI. Refuses (RFC 8926 §3.4/§3.5) an unknown version, a critical option
/// (Antrea understands no option, so every critical one is unknown), an OAM packet and
/// a payload other than Ethernet.
fn decapsulate_geneve(packet: &mut Packet) -> Result<u32, WireError> {
    let offset = packet.meta.l4_offset + UDP_HEADER_LEN;
    let (vni, header_len) = {
        let view = geneve::Packet::new_checked(&packet.frame()[offset..])?;
        let repr = GeneveRepr::parse(&view)?;
        if repr.critical
            || repr
                .options()
                .any(|option| option.map(|o| o.is_critical()).unwrap_or(true))
        {
            return Err(WireError::Unsupported);
        }
        if repr.oam || repr.protocol_type != geneve::PROTOCOL_ETHERNET {
            return Err(WireError::Unsupported);
        }
        (repr.vni, repr.buffer_len())
    };
    packet.pull_front(offset + header_len);
    packet.parse()?;
    Ok(vni)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests_support::udp_frame;

    /// Each encapsulation (VXLAN with Calico's VNI).
    const EVERY: [Encapsulation; 3] = [
        Encapsulation::Geneve,
        Encapsulation::Vxlan { vni: 4096 },
        Encapsulation::Ipip,
    ];

    fn header() -> EncapHeader {
        EncapHeader {
            source: Ipv4Addr::new(10, 20, 0, 11),
            destination: Ipv4Addr::new(10, 20, 1, 12),
            source_mac: Mac::local(1, 1),
            destination_mac: Mac::local(1, 2),
            source_port: 51_234,
            identification: 9,
            dont_fragment: true,
        }
    }

    #[test]
    fn every_encapsulation_adds_its_overhead_and_comes_off_again() {
        let frame = udp_frame(
            Ipv4Addr::new(192, 168, 1, 10),
            Ipv4Addr::new(192, 168, 2, 10),
            (4000, 53),
            &[7u8; 100],
        );
        for (encapsulation, vni) in [
            (Encapsulation::Geneve, 0),
            (Encapsulation::Vxlan { vni: 4096 }, 4096),
            (Encapsulation::Ipip, 0),
        ] {
            let mut packet = Packet::from_frame(&frame, 0).unwrap();
            let inner_ip = packet.ip_len();
            encapsulate(&mut packet, encapsulation, &header());
            // Geneve and VXLAN carry the inner Ethernet header too (14 of their 50).
            assert_eq!(packet.ip_len() - inner_ip, encapsulation.overhead());
            assert_eq!(packet.meta.key.source, Ipv4Addr::new(10, 20, 0, 11));
            assert!(packet.meta.dont_fragment);
            assert_eq!(packet.meta.ttl, 64);
            assert_eq!(crate::wire::checksum::checksum(&packet.frame()[14..34]), 0);
            match encapsulation {
                Encapsulation::Ipip => assert_eq!(packet.meta.key.protocol, PROTOCOL_IPIP),
                Encapsulation::Vxlan { .. } => {
                    assert_eq!(packet.meta.key.destination_port, vxlan::UDP_PORT)
                }
                Encapsulation::Geneve => {
                    assert_eq!(packet.meta.key.destination_port, geneve::UDP_PORT)
                }
            }
            assert_eq!(decapsulate(&mut packet).unwrap(), (encapsulation, vni));
            assert_eq!(
                &packet.frame()[14..],
                &frame[14..],
                "the inner IP packet as it was"
            );
        }
    }

    #[test]
    fn outer_headers_laid_out_by_hand_are_what_encapsulate_builds() {
        // A path cache lays a hop's frame out itself: room for the outer headers,
        // the inner frame, the headers written last (over the inner Ethernet
        // header for IPIP).
        let frame = udp_frame(
            Ipv4Addr::new(10, 244, 0, 2),
            Ipv4Addr::new(10, 244, 1, 2),
            (37_009, 50_000),
            &[5u8; 61],
        );
        for encapsulation in EVERY {
            let mut packet = Packet::from_frame(&frame, 0).unwrap();
            encapsulate(&mut packet, encapsulation, &header());
            let (outer_len, replaced) = encapsulation.outer_len();
            let mut laid_out = vec![0xEE; outer_len - replaced];
            laid_out.extend_from_slice(&frame);
            emit_outer_headers(
                &mut laid_out[..outer_len],
                encapsulation,
                &header(),
                frame.len(),
            );
            assert_eq!(laid_out, packet.frame(), "{encapsulation:?}");
        }
    }

    #[test]
    fn another_identification_written_into_emitted_outer_headers_is_what_emit_writes() {
        // A path cache keeps a hop's outer headers as emitted and writes each
        // packet's identification in, the header checksum updated (RFC 1624).
        for encapsulation in EVERY {
            let (outer_len, _) = encapsulation.outer_len();
            let mut kept = vec![0; outer_len];
            emit_outer_headers(&mut kept, encapsulation, &header(), 92);
            // Every identification, so no checksum corner (0x0000, 0xffff) is missed.
            for identification in 0..=u16::MAX {
                let mut emitted = vec![0; outer_len];
                let other = EncapHeader {
                    identification,
                    ..header()
                };
                emit_outer_headers(&mut emitted, encapsulation, &other, 92);
                let mut written = kept.clone();
                crate::packet::write_identification(&mut written, identification);
                assert!(written == emitted, "{encapsulation:?} {identification:#x}");
            }
        }
    }

    #[test]
    fn vxlan_takes_its_source_port_from_the_local_range_and_geneve_from_all() {
        use crate::engine::hash::tunnel_source_port;
        use crate::packet::FlowKey;
        let ports = |encapsulation: Encapsulation| -> Vec<u16> {
            (0..2_000u16)
                .map(|flow| {
                    let inner = FlowKey {
                        protocol: PROTOCOL_UDP,
                        source: Ipv4Addr::new(172, 20, 1, 10),
                        destination: Ipv4Addr::new(172, 20, 2, 10),
                        source_port: 40_000 + flow,
                        destination_port: 53,
                    };
                    tunnel_source_port(&inner, 7, encapsulation.source_ports())
                })
                .collect()
        };
        let vxlan = ports(Encapsulation::Vxlan { vni: 4096 });
        assert!(vxlan.iter().all(|port| (32_768..=60_998).contains(port)));
        let geneve = ports(Encapsulation::Geneve);
        assert!(geneve.iter().all(|port| (1..=65_534).contains(port)));
        assert!(geneve.iter().any(|port| *port < 32_768));
        assert!(geneve.iter().any(|port| *port > 60_998));
    }
}
