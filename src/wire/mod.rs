//! Bytes <-> headers, no state.
//!
//! Ethernet, IPv4, TCP, UDP and ICMPv4 views and `Repr`s come from `smoltcp::wire`
//! (re-exported here so the rest of the crate names one place); Geneve is ours
//! ([`geneve`], RFC 8926), as is the checksum arithmetic ([`checksum`], RFC 1071 and
//! RFC 1624). This module must not know about devices, flows or Kubernetes.

pub mod checksum;
pub mod geneve;
pub mod vxlan;

pub use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Message, Icmpv4Packet,
    IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

/// Ethernet header length (no VLAN tag).
pub const ETHERNET_HEADER_LEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IP protocol numbers (IANA).
pub const PROTOCOL_ICMP: u8 = 1;
/// IPv4-in-IPv4 (RFC 2003).
pub const PROTOCOL_IPIP: u8 = 4;
pub const PROTOCOL_TCP: u8 = 6;
pub const PROTOCOL_UDP: u8 = 17;

/// Why bytes could not be read as a header. Small and `Copy`: wire errors are data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated header")]
    Truncated,
    #[error("malformed header")]
    Malformed,
    #[error("unsupported protocol or version")]
    Unsupported,
}

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// Antrea's "Global Virtual MAC", the inner destination MAC of every tunnelled
    /// packet (antrea docs/design/ovs-pipeline.md, L3Forwarding).
    pub const ANTREA_GLOBAL_VIRTUAL: Mac = Mac([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);

    /// A locally administered unicast address derived from a device kind and index,
    /// so every run gives every interface the same MAC (see [`Mac::seeded`]).
    pub fn local(kind: u8, index: u32) -> Mac {
        Mac::seeded(0, kind, index)
    }

    /// A locally administered unicast address that looks random, as Linux gives a
    /// veth or an OVS internal port (`eth_random_addr`: random bytes, the local bit
    /// set, the multicast bit clear), derived from the topology seed, a device kind
    /// and an index so every run gives every interface the same MAC. Distinct
    /// (kind < 16, index < 2^24) give distinct MACs. The first byte is one that no
    /// vendor or well-known-address entry of Wireshark's (`manuf`, `wka`) starts with,
    /// so Wireshark never names these MACs after a vendor (02:xx is MS-NLB there).
    pub fn seeded(seed: u64, kind: u8, index: u32) -> Mac {
        const FIRST_BYTES: [u8; 12] = [
            0x12, 0x16, 0x22, 0x26, 0x32, 0x36, 0x42, 0x46, 0x62, 0x66, 0x72, 0x76,
        ];
        let hash = crate::engine::hash::mix(seed ^ (u64::from(kind) << 40) ^ 0x6d61_6373);
        let bytes = hash.to_be_bytes();
        let index = index.to_be_bytes();
        Mac([
            FIRST_BYTES[usize::from(bytes[0]) % FIRST_BYTES.len()],
            bytes[1],
            (kind << 4) | (bytes[2] & 0x0f),
            index[1] ^ bytes[3],
            index[2] ^ bytes[4],
            index[3] ^ bytes[5],
        ])
    }

    /// A vSphere VM's NIC: VMware's OUI 00:50:56 in the range vCenter assigns
    /// automatically (00:50:56:80:00:00 – 00:50:56:BF:FF:FF), seeded, distinct per
    /// index (< 2^22).
    pub fn vmware(seed: u64, index: u32) -> Mac {
        let hash = crate::engine::hash::mix(seed ^ 0x766d_7761_7265).to_be_bytes();
        let index = index.to_be_bytes();
        Mac([
            0x00,
            0x50,
            0x56,
            0x80 | ((index[1] ^ hash[0]) & 0x3f),
            index[2] ^ hash[1],
            index[3] ^ hash[2],
        ])
    }
}

/// An IPv4 address shown dotted-quad, as `Ipv4Addr`'s `Display` does, but built in
/// a stack buffer and written once: capture comments name addresses on every hop,
/// and `Ipv4Addr`'s formatting (four integer formats through `fmt::write`) was most
/// of what recording a hop cost.
#[derive(Debug, Clone, Copy)]
pub struct Dotted(pub std::net::Ipv4Addr);

impl std::fmt::Display for Dotted {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = [0u8; 15];
        let mut length = 0;
        for (index, octet) in self.0.octets().into_iter().enumerate() {
            if index > 0 {
                text[length] = b'.';
                length += 1;
            }
            if octet >= 100 {
                text[length] = b'0' + octet / 100;
                length += 1;
            }
            if octet >= 10 {
                text[length] = b'0' + octet / 10 % 10;
                length += 1;
            }
            text[length] = b'0' + octet % 10;
            length += 1;
        }
        // Only ASCII digits and dots were written.
        formatter.pad(std::str::from_utf8(&text[..length]).unwrap_or_default())
    }
}

/// A prefix shown as `network/length` with a [`Dotted`] network.
#[derive(Debug, Clone, Copy)]
pub struct DottedNet(pub ipnet::Ipv4Net);

impl std::fmt::Display for DottedNet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{}/{}",
            Dotted(self.0.network()),
            self.0.prefix_len()
        )
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            formatter,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Writes an Ethernet II header (RFC 894) at the start of `buffer`.
pub fn emit_ethernet(buffer: &mut [u8], destination: Mac, source: Mac, ethertype: u16) {
    buffer[0..6].copy_from_slice(&destination.0);
    buffer[6..12].copy_from_slice(&source.0);
    buffer[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// Writes a 20-byte IPv4 header (RFC 791) with a correct checksum. The header is
/// built in a fixed-size array (no bounds checks, an unrolled checksum) and copied in.
#[allow(clippy::too_many_arguments)]
pub fn emit_ipv4(
    buffer: &mut [u8],
    source: std::net::Ipv4Addr,
    destination: std::net::Ipv4Addr,
    protocol: u8,
    payload_len: usize,
    ttl: u8,
    identification: u16,
    dont_fragment: bool,
) {
    let total = u16::try_from(IPV4_HEADER_LEN + payload_len)
        .unwrap_or(u16::MAX)
        .to_be_bytes();
    let identification = identification.to_be_bytes();
    let flags = if dont_fragment { 0x40 } else { 0 };
    let source = source.octets();
    let destination = destination.octets();
    let mut header: [u8; IPV4_HEADER_LEN] = [
        0x45,
        0,
        total[0],
        total[1],
        identification[0],
        identification[1],
        flags,
        0,
        ttl,
        protocol,
        0,
        0,
        source[0],
        source[1],
        source[2],
        source[3],
        destination[0],
        destination[1],
        destination[2],
        destination[3],
    ];
    let mut sum = 0u32;
    for word in header.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    let sum = !checksum::fold(sum);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
    buffer[..IPV4_HEADER_LEN].copy_from_slice(&header);
}

/// Sets the type-of-service byte of the IPv4 header at the start of `header`, keeping
/// its checksum right (RFC 1624).
pub fn set_ipv4_tos(header: &mut [u8], tos: u8) {
    let old_word = u16::from_be_bytes([header[0], header[1]]);
    header[1] = tos;
    let new_word = u16::from_be_bytes([header[0], header[1]]);
    let sum = u16::from_be_bytes([header[10], header[11]]);
    let sum = checksum::update_word(sum, old_word, new_word);
    header[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Who a built frame is from and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameAddresses {
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub source: std::net::Ipv4Addr,
    pub destination: std::net::Ipv4Addr,
    pub source_port: u16,
    pub destination_port: u16,
}

/// Builds an Ethernet / IPv4 (TTL 64, DF, id 1) frame carrying `payload` in a UDP
/// datagram or a TCP segment (PSH|ACK, no options), every checksum right. For
/// benchmarks and tests that need a packet as an endpoint would send it.
pub fn transport_frame(protocol: u8, addresses: &FrameAddresses, payload: &[u8]) -> Vec<u8> {
    let header_len = if protocol == PROTOCOL_TCP {
        20
    } else {
        UDP_HEADER_LEN
    };
    let l4_len = header_len + payload.len();
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + l4_len];
    emit_ethernet(
        &mut frame,
        addresses.destination_mac,
        addresses.source_mac,
        ETHERTYPE_IPV4,
    );
    emit_ipv4(
        &mut frame[ETHERNET_HEADER_LEN..],
        addresses.source,
        addresses.destination,
        protocol,
        l4_len,
        64,
        1,
        true,
    );
    let l4 = &mut frame[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..];
    l4[0..2].copy_from_slice(&addresses.source_port.to_be_bytes());
    l4[2..4].copy_from_slice(&addresses.destination_port.to_be_bytes());
    let checksum_at = if protocol == PROTOCOL_TCP {
        l4[12] = 0x50; // data offset: 5 words
        l4[13] = 0x18; // PSH|ACK
        16
    } else {
        l4[4..6].copy_from_slice(&u16::try_from(l4_len).unwrap_or(u16::MAX).to_be_bytes());
        6
    };
    l4[header_len..].copy_from_slice(payload);
    let sum = checksum::transport_checksum(addresses.source, addresses.destination, protocol, l4);
    l4[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    frame
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod dotted_tests {
    use super::{Dotted, DottedNet};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    proptest! {
        #[test]
        fn dotted_shows_what_ipv4addr_shows(address in any::<u32>(), length in 0u8..=32) {
            let address = Ipv4Addr::from(address);
            prop_assert_eq!(Dotted(address).to_string(), address.to_string());
            prop_assert_eq!(format!("{:>16}", Dotted(address)), format!("{address:>16}"));
            let net = ipnet::Ipv4Net::new(address, length).unwrap().trunc();
            prop_assert_eq!(DottedNet(net).to_string(), net.to_string());
        }
    }
}
