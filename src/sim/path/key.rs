//! What selects a compiled path: the key of a packet entering the fabric — read
//! from its parsed metadata on the walk, or straight from the frame's bytes on the
//! bare-frame lane, the two held equal by a property test.

use crate::datapath::PortId;
use crate::packet::{IcmpKind, Meta, Packet};
use crate::sim::network::DeviceId;
use crate::wire::{Mac, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, IPV4_HEADER_LEN};
use crate::wire::{PROTOCOL_ICMP, PROTOCOL_TCP, PROTOCOL_UDP};

/// What selects a path: where the packet enters and what it is — the ingress
/// device and port, the 5-tuple, the TCP flags (a SYN or FIN moves conntrack
/// states; a pure ACK does not) and both Ethernet addresses (OVS's L3Forwarding
/// reads the destination: antrea-gw0's MAC is routed, a pod's switched, another
/// dropped; a switch forwards by it). Packed into four words once, so hashing and
/// comparing it are a few word operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathKey {
    /// Source and destination address.
    addresses: u64,
    /// Source and destination port, protocol, TCP flags, ingress port.
    ports: u64,
    /// The source MAC above the ingress device (a device id past 16 bits has no
    /// key: its packets walk).
    source: u64,
    destination_mac: u64,
}

/// The four words mixed by two folded multiplies (as foldhash does): the table's
/// hasher then sees one word.
impl std::hash::Hash for PathKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The low and high halves of the 128-bit product, xored.
        #[allow(clippy::cast_possible_truncation)]
        let folded_multiply = |a: u64, b: u64| {
            let full = u128::from(a) * u128::from(b);
            (full as u64) ^ ((full >> 64) as u64)
        };
        state.write_u64(
            folded_multiply(
                self.addresses ^ 0x243f_6a88_85a3_08d3,
                self.ports ^ 0x1319_8a2e_0370_7344,
            ) ^ folded_multiply(
                self.source ^ 0xa409_3822_299f_31d0,
                self.destination_mac ^ 0x082e_fa98_ec4e_6c89,
            ),
        );
    }
}

impl PathKey {
    /// The key of a packet entering `device` at `port`, when the packet is one a path
    /// may carry.
    pub fn of(device: DeviceId, port: PortId, packet: &Packet) -> Option<PathKey> {
        PathKey::of_frame(device, port, packet.frame(), &packet.meta)
    }

    /// Like [`PathKey::of`], for a bare frame and its metadata.
    pub fn of_frame(device: DeviceId, port: PortId, frame: &[u8], meta: &Meta) -> Option<PathKey> {
        let device = u16::try_from(device).ok()?;
        if !replayable(frame, meta) {
            return None;
        }
        let key = &meta.key;
        let mac = |mac: Mac| {
            let [a, b, c, d, e, f] = mac.0;
            u64::from_be_bytes([0, 0, a, b, c, d, e, f])
        };
        Some(PathKey {
            addresses: (u64::from(u32::from(key.source)) << 32)
                | u64::from(u32::from(key.destination)),
            ports: (u64::from(key.source_port) << 48)
                | (u64::from(key.destination_port) << 32)
                | (u64::from(key.protocol) << 24)
                | (u64::from(meta.tcp_flags) << 16)
                | u64::from(port),
            source: (mac(meta.source_mac) << 16) | u64::from(device),
            destination_mac: mac(meta.destination_mac),
        })
    }

    /// Like [`PathKey::of_frame`], read straight from the frame's bytes (the
    /// bare-frame lane parses nothing else): the same key, and `None` for the same
    /// frames, as `parse_meta` and [`PathKey::of_frame`] give (a property test
    /// holds them to it).
    pub fn read(device: DeviceId, port: PortId, frame: &[u8]) -> Option<PathKey> {
        let device = u16::try_from(device).ok()?;
        // Ethernet and an IPv4 header without options.
        let header = frame.first_chunk::<{ ETHERNET_HEADER_LEN + IPV4_HEADER_LEN }>()?;
        let ip = ETHERNET_HEADER_LEN;
        let total_len = usize::from(u16::from_be_bytes([header[ip + 2], header[ip + 3]]));
        let flags_and_offset = u16::from_be_bytes([header[ip + 6], header[ip + 7]]);
        if u16::from_be_bytes([header[12], header[13]]) != ETHERTYPE_IPV4
            || header[ip] != 0x45
            || total_len > frame.len() - ETHERNET_HEADER_LEN
            || flags_and_offset & 0x3fff != 0
        {
            return None;
        }
        // The transport header lies within the frame: total_len fits in it.
        let l4 = ip + IPV4_HEADER_LEN;
        let l4_len = total_len.checked_sub(IPV4_HEADER_LEN)?;
        let word = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
        let protocol = header[ip + 9];
        let (source_port, destination_port, tcp_flags) = match protocol {
            PROTOCOL_TCP if l4_len >= 20 => (word(l4), word(l4 + 2), frame[l4 + 13]),
            PROTOCOL_UDP if l4_len >= 8 => (word(l4), word(l4 + 2), 0),
            // An echo request or reply: the identifier stands for both ports.
            PROTOCOL_ICMP if l4_len >= 8 && matches!(frame[l4], 0 | 8) => {
                (word(l4 + 4), word(l4 + 4), 0)
            }
            PROTOCOL_TCP | PROTOCOL_UDP | PROTOCOL_ICMP => return None,
            _ => (0, 0, 0),
        };
        let mac = |at: usize| {
            let bytes = &header[at..at + 6];
            u64::from_be_bytes([
                0, 0, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5],
            ])
        };
        let address = |at: usize| {
            u64::from(u32::from_be_bytes([
                header[at],
                header[at + 1],
                header[at + 2],
                header[at + 3],
            ]))
        };
        Some(PathKey {
            addresses: (address(ip + 12) << 32) | address(ip + 16),
            ports: (u64::from(source_port) << 48)
                | (u64::from(destination_port) << 32)
                | (u64::from(protocol) << 24)
                | (u64::from(tcp_flags) << 16)
                | u64::from(port),
            source: (mac(6) << 16) | u64::from(device),
            destination_mac: mac(0),
        })
    }

    /// The TCP flags of the packets this key selects.
    pub fn tcp_flags(&self) -> u8 {
        u8::try_from((self.ports >> 16) & 0xff).unwrap_or(0)
    }
}

/// IPv4 without options, not a fragment, TCP, UDP or an ICMP echo.
fn replayable(frame: &[u8], meta: &Meta) -> bool {
    let flags_and_offset = frame
        .get(ETHERNET_HEADER_LEN + 6..ETHERNET_HEADER_LEN + 8)
        .map_or(0x3fff, |word| u16::from_be_bytes([word[0], word[1]]));
    meta.ethertype == ETHERTYPE_IPV4
        && meta.l4_offset == ETHERNET_HEADER_LEN + IPV4_HEADER_LEN
        && flags_and_offset & 0x3fff == 0
        && matches!(
            meta.icmp,
            IcmpKind::None | IcmpKind::EchoRequest | IcmpKind::EchoReply
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::parse_meta;
    use crate::wire::{transport_frame, FrameAddresses};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// A frame of `protocol` (TCP and UDP built whole; any other protocol number as
    /// UDP's bytes relabelled) with `payload` bytes after its transport header.
    fn frame(protocol: u8, payload: usize) -> Vec<u8> {
        let addresses = FrameAddresses {
            source_mac: Mac([2, 0, 0, 0, 0, 1]),
            destination_mac: Mac([2, 0, 0, 0, 0, 2]),
            source: Ipv4Addr::new(10, 244, 0, 2),
            destination: Ipv4Addr::new(10, 96, 0, 10),
            source_port: 40_000,
            destination_port: 53,
        };
        let built = if protocol == PROTOCOL_TCP {
            PROTOCOL_TCP
        } else {
            PROTOCOL_UDP
        };
        let mut frame = transport_frame(built, &addresses, &vec![0x5a; payload]);
        frame[ETHERNET_HEADER_LEN + 9] = protocol;
        frame
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The bare-frame key reader and parse_meta + PathKey::of_frame agree on
        /// every frame: the same key, or both none. Frames are built whole, then
        /// the bytes either reader looks at are overwritten and the frame cut short.
        #[test]
        fn reading_a_key_from_bytes_agrees_with_parsing(
            protocol in prop_oneof![Just(PROTOCOL_TCP), Just(PROTOCOL_UDP), Just(PROTOCOL_ICMP), Just(47u8)],
            payload in 0usize..40,
            writes in proptest::collection::vec((0usize..60, any::<u8>()), 0..4),
            interesting in proptest::collection::vec(
                (prop_oneof![Just(12usize), Just(13), Just(14), Just(16), Just(17), Just(20), Just(21), Just(34), Just(47)], any::<u8>()),
                0..3,
            ),
            version_and_length in prop_oneof![Just(0x45u8), Just(0x46), Just(0x4f), Just(0x44), Just(0x65), any::<u8>()],
            length_change in -30i32..4,
            cut in 0usize..8,
            device in prop_oneof![Just(3usize), Just(70_000)],
        ) {
            let mut frame = frame(protocol, payload);
            frame[ETHERNET_HEADER_LEN] = version_and_length;
            let at = ETHERNET_HEADER_LEN + 2;
            let total_len = i32::from(u16::from_be_bytes([frame[at], frame[at + 1]])) + length_change;
            let total_len = u16::try_from(total_len.max(0)).unwrap_or(0);
            frame[at..at + 2].copy_from_slice(&total_len.to_be_bytes());
            for (at, value) in writes.into_iter().chain(interesting) {
                if let Some(byte) = frame.get_mut(at) {
                    *byte = value;
                }
            }
            let length = frame.len().saturating_sub(cut);
            frame.truncate(length);
            let parsed = parse_meta(&frame)
                .ok()
                .and_then(|meta| PathKey::of_frame(device, 1, &frame, &meta));
            prop_assert_eq!(PathKey::read(device, 1, &frame), parsed);
        }
    }

    #[test]
    fn an_echo_key_reads_its_identifier_as_both_ports_and_an_error_has_none() {
        let mut echo = frame(PROTOCOL_ICMP, 8);
        let l4 = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
        echo[l4] = 8;
        echo[l4 + 4..l4 + 6].copy_from_slice(&0x1234u16.to_be_bytes());
        let key = PathKey::read(3, 1, &echo).expect("an echo request has a key");
        assert_eq!(key.ports >> 32, 0x1234_1234);
        echo[l4] = 3; // destination unreachable: an error walks
        assert_eq!(PathKey::read(3, 1, &echo), None);
    }
}
