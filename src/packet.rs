//! `Packet`: one frame in flight — its bytes (with headroom, so an encapsulation
//! prepends without copying the payload) and the metadata parsed from them once at
//! ingress ([`Meta`]). Every rewrite goes through a method here that keeps the bytes,
//! the metadata and every checksum in step (RFC 1624 incremental updates).
//!
//! Owns byte layout of Ethernet/IPv4/L4 in a frame; must not know about devices.

use crate::wire::{
    checksum, Mac, WireError, ETHERNET_HEADER_LEN, ETHERTYPE_IPV4, PROTOCOL_ICMP, PROTOCOL_TCP,
    PROTOCOL_UDP,
};
use std::net::Ipv4Addr;

/// Headroom reserved in front of every frame: room for one Geneve encapsulation
/// (outer Ethernet 14 + IPv4 20 + UDP 8 + Geneve 8) with space to spare.
pub const HEADROOM: usize = 64;

/// The 5-tuple of a flow as it is on the wire at this point. For ICMP echo the
/// identifier stands in for both ports (as conntrack does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub protocol: u8,
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub source_port: u16,
    pub destination_port: u16,
}

impl FlowKey {
    /// The tuple a reply to this flow carries.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            protocol: self.protocol,
            source: self.destination,
            destination: self.source,
            source_port: self.destination_port,
            destination_port: self.source_port,
        }
    }

    /// Protocol name for reports and traces.
    pub fn protocol_name(&self) -> &'static str {
        protocol_name(self.protocol)
    }
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "{} {}:{} -> {}:{}",
            self.protocol_name(),
            crate::wire::Dotted(self.source),
            self.source_port,
            crate::wire::Dotted(self.destination),
            self.destination_port
        )
    }
}

/// Name of an IP protocol number.
pub fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        PROTOCOL_TCP => "tcp",
        PROTOCOL_UDP => "udp",
        PROTOCOL_ICMP => "icmp",
        _ => "ip",
    }
}

/// What kind of ICMP message a packet is, when it is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IcmpKind {
    #[default]
    None,
    EchoRequest,
    EchoReply,
    /// An error (destination unreachable, time exceeded, …) quoting another packet.
    Error {
        icmp_type: u8,
        code: u8,
    },
    Other,
}

/// A simulation-side label carried with a packet (like an skb mark): which flow of
/// the topology it belongs to. Never on the wire.
pub type FlowTag = u32;
/// A packet that belongs to no configured flow.
pub const NO_FLOW: FlowTag = u32::MAX;

/// Metadata parsed from the frame at ingress. Offsets are from the frame start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub ethertype: u16,
    /// Offset of the L4 header (the IPv4 header is at `ETHERNET_HEADER_LEN`).
    pub l4_offset: usize,
    pub key: FlowKey,
    pub ttl: u8,
    pub dont_fragment: bool,
    /// Fragment offset != 0: no L4 header in this packet.
    pub is_later_fragment: bool,
    pub ip_total_len: u16,
    pub tcp_flags: u8,
    pub icmp: IcmpKind,
    pub flow: FlowTag,
    /// Which packet this is, run-wide (assigned when an endpoint or a device creates
    /// it; kept through every rewrite and encapsulation). Never on the wire.
    pub packet_id: u64,
    /// The packet travels back toward the flow's client: sent by the flow's
    /// destination, or a device's answer (an ICMP error, an echo reply, a reset) to a
    /// packet that was not. Never on the wire.
    pub reply: bool,
    /// The packet mark inside one node (`skb->mark` / OVS `pkt_mark`): kube-proxy's
    /// KUBE-MARK-MASQ, Antrea Egress's SNAT-IP id. Kept through re-parsing inside a
    /// device; cleared when the frame goes on a wire. Never on the wire.
    pub mark: u32,
    /// The source port (echo identifier) the packet had when its endpoint sent it:
    /// which of a flow's connections it belongs to, whatever NAT did since. Never on
    /// the wire.
    pub origin_port: u16,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            source_mac: Mac::default(),
            destination_mac: Mac::default(),
            ethertype: 0,
            l4_offset: 0,
            key: FlowKey {
                protocol: 0,
                source: Ipv4Addr::UNSPECIFIED,
                destination: Ipv4Addr::UNSPECIFIED,
                source_port: 0,
                destination_port: 0,
            },
            ttl: 0,
            dont_fragment: false,
            is_later_fragment: false,
            ip_total_len: 0,
            tcp_flags: 0,
            icmp: IcmpKind::None,
            flow: NO_FLOW,
            packet_id: 0,
            reply: false,
            mark: 0,
            origin_port: 0,
        }
    }
}

/// TCP flag bits (RFC 9293 §3.1).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

const IP: usize = ETHERNET_HEADER_LEN;

/// A frame and its parsed metadata.
#[derive(Debug, Clone)]
pub struct Packet {
    buffer: Vec<u8>,
    start: usize,
    pub meta: Meta,
}

impl Packet {
    /// Copies `frame` into a new buffer with headroom and parses it.
    pub fn from_frame(frame: &[u8], flow: FlowTag) -> Result<Packet, WireError> {
        let mut buffer = Vec::with_capacity(HEADROOM + frame.len());
        buffer.resize(HEADROOM, 0);
        buffer.extend_from_slice(frame);
        let mut packet = Packet {
            buffer,
            start: HEADROOM,
            meta: Meta::default(),
        };
        packet.meta.flow = flow;
        packet.parse()?;
        Ok(packet)
    }

    /// Replaces this packet's bytes with `frame`, reusing the buffer (no allocation
    /// once the buffer is large enough), and parses it.
    pub fn reset_from(&mut self, frame: &[u8], flow: FlowTag) -> Result<(), WireError> {
        // The headroom's old bytes stay: push_front overwrites what it hands out.
        self.buffer.resize(HEADROOM, 0);
        self.buffer.extend_from_slice(frame);
        self.start = HEADROOM;
        self.meta = Meta {
            flow,
            ..Meta::default()
        };
        self.parse()
    }

    /// Replaces this packet with a copy of `frame`, whose metadata `meta` already
    /// holds (another packet's parse): no parsing again.
    pub fn reset_parsed(&mut self, frame: &[u8], meta: &Meta) {
        self.buffer.resize(HEADROOM, 0);
        self.buffer.extend_from_slice(frame);
        self.start = HEADROOM;
        self.meta = *meta;
    }

    /// The frame as it is on the wire.
    pub fn frame(&self) -> &[u8] {
        &self.buffer[self.start..]
    }

    /// The frame, writable. A caller that changes headers must call [`Packet::parse`].
    pub fn frame_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[self.start..]
    }

    /// The frame and its metadata, both writable (a [`HeaderEditor`]'s parts).
    pub fn frame_and_meta_mut(&mut self) -> (&mut [u8], &mut Meta) {
        (&mut self.buffer[self.start..], &mut self.meta)
    }

    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The IPv4 type-of-service byte (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        self.frame().get(IP + 1).copied().unwrap_or(0)
    }

    /// Length of the IP packet (what an MTU limits).
    pub fn ip_len(&self) -> usize {
        self.len().saturating_sub(ETHERNET_HEADER_LEN)
    }

    /// Grows the frame at the front by `count` bytes and returns them for writing.
    /// Uses the headroom; only a frame already encapsulated twice reallocates.
    pub fn push_front(&mut self, count: usize) -> &mut [u8] {
        if self.start < count {
            let mut grown = vec![0; HEADROOM + count];
            grown.extend_from_slice(&self.buffer[self.start..]);
            self.buffer = grown;
            self.start = HEADROOM + count;
        }
        self.start -= count;
        let start = self.start;
        &mut self.buffer[start..start + count]
    }

    /// Drops `count` bytes from the front (decapsulation), without copying.
    pub fn pull_front(&mut self, count: usize) {
        self.start = (self.start + count).min(self.buffer.len());
    }

    /// Parses Ethernet, IPv4 and the L4 ports into `meta`. Non-IPv4 frames parse with
    /// only the Ethernet fields set.
    pub fn parse(&mut self) -> Result<(), WireError> {
        let Meta {
            flow,
            packet_id,
            reply,
            mark,
            origin_port,
            ..
        } = self.meta;
        self.meta = parse_meta(self.frame())?;
        self.meta.flow = flow;
        self.meta.packet_id = packet_id;
        self.meta.reply = reply;
        self.meta.mark = mark;
        self.meta.origin_port = origin_port;
        Ok(())
    }

    /// This packet's headers, for rewriting in place.
    pub fn headers(&mut self) -> HeaderEditor<'_> {
        HeaderEditor {
            frame: &mut self.buffer[self.start..],
            meta: &mut self.meta,
        }
    }

    /// Sets the Ethernet addresses.
    pub fn set_macs(&mut self, source: Mac, destination: Mac) {
        self.headers().set_macs(source, destination);
    }

    /// Decrements the IPv4 TTL with an incremental header-checksum update
    /// (RFC 1624, RFC 1812 §5.3.1). Returns false, changing nothing, when the TTL is
    /// already 1 or 0 and the packet must not be forwarded.
    pub fn decrement_ttl(&mut self) -> bool {
        if self.meta.ttl <= 1 {
            return false;
        }
        self.set_ttl(self.meta.ttl - 1);
        true
    }

    /// Sets the IPv4 TTL with an incremental header-checksum update (RFC 1624).
    pub fn set_ttl(&mut self, ttl: u8) {
        self.headers().set_ttl(ttl);
    }

    /// Clears the IPv4 Don't Fragment flag (with checksum update).
    pub fn clear_dont_fragment(&mut self) {
        self.headers().clear_dont_fragment();
    }

    /// Rewrites the source address and port (SNAT, or un-DNAT on a reply).
    pub fn set_source(&mut self, address: Ipv4Addr, port: u16) {
        self.headers().set_source(address, port);
    }

    /// Rewrites the destination address and port (DNAT, or un-SNAT on a reply).
    pub fn set_destination(&mut self, address: Ipv4Addr, port: u16) {
        self.headers().set_destination(address, port);
    }
}

/// A frame's headers rewritten in place with its parsed metadata kept in step: the
/// one implementation of each header rewrite, for a [`Packet`] and for a bare frame
/// (the path cache's replay, `sim::path`). Checksums are updated incrementally
/// (RFC 1624), as each device does.
pub struct HeaderEditor<'a> {
    frame: &'a mut [u8],
    meta: &'a mut Meta,
}

impl<'a> HeaderEditor<'a> {
    /// The editor of `frame`, whose metadata (as [`parse_meta`] reads it) is `meta`.
    pub fn new(frame: &'a mut [u8], meta: &'a mut Meta) -> Self {
        HeaderEditor { frame, meta }
    }

    /// The IPv4 TTL.
    pub fn ttl(&self) -> u8 {
        self.meta.ttl
    }

    /// Sets the Ethernet addresses.
    pub fn set_macs(&mut self, source: Mac, destination: Mac) {
        write_macs(self.frame, source, destination);
        self.meta.source_mac = source;
        self.meta.destination_mac = destination;
    }

    /// Sets the IPv4 TTL with an incremental header-checksum update (RFC 1624).
    pub fn set_ttl(&mut self, ttl: u8) {
        write_ttl(self.frame, ttl);
        self.meta.ttl = ttl;
    }

    /// Clears the IPv4 Don't Fragment flag (with checksum update).
    pub fn clear_dont_fragment(&mut self) {
        let frame = &mut *self.frame;
        let old_word = u16::from_be_bytes([frame[IP + 6], frame[IP + 7]]);
        let new_word = old_word & !0x4000;
        frame[IP + 6..IP + 8].copy_from_slice(&new_word.to_be_bytes());
        let old_sum = u16::from_be_bytes([frame[IP + 10], frame[IP + 11]]);
        let new_sum = checksum::update_word(old_sum, old_word, new_word);
        frame[IP + 10..IP + 12].copy_from_slice(&new_sum.to_be_bytes());
        self.meta.dont_fragment = false;
    }

    /// Rewrites the source address and port (SNAT, or un-DNAT on a reply).
    pub fn set_source(&mut self, address: Ipv4Addr, port: u16) {
        self.rewrite_endpoint(Side::Source, address, port);
    }

    /// Rewrites the destination address and port (DNAT, or un-SNAT on a reply).
    pub fn set_destination(&mut self, address: Ipv4Addr, port: u16) {
        self.rewrite_endpoint(Side::Destination, address, port);
    }

    fn rewrite_endpoint(&mut self, side: Side, address: Ipv4Addr, port: u16) {
        let meta = *self.meta;
        let (address_offset, old_address, old_port) = match side {
            Side::Source => (IP + 12, meta.key.source, meta.key.source_port),
            Side::Destination => (IP + 16, meta.key.destination, meta.key.destination_port),
        };
        let l4 = meta.l4_offset;
        let has_l4 = !meta.is_later_fragment;
        let frame = &mut *self.frame;
        // IPv4 header checksum covers the addresses.
        frame[address_offset..address_offset + 4].copy_from_slice(&address.octets());
        let ip_sum = u16::from_be_bytes([frame[IP + 10], frame[IP + 11]]);
        let ip_sum = checksum::update_address(ip_sum, old_address, address);
        frame[IP + 10..IP + 12].copy_from_slice(&ip_sum.to_be_bytes());
        if has_l4 {
            rewrite_l4(frame, &meta, side, old_address, address, old_port, port, l4);
        }
        match side {
            Side::Source => {
                self.meta.key.source = address;
                self.meta.key.source_port = port;
            }
            Side::Destination => {
                self.meta.key.destination = address;
                self.meta.key.destination_port = port;
            }
        }
    }
}

impl Packet {
    /// For an ICMP error: rewrites the source address and port of the packet it quotes
    /// (the inner IPv4 header checksum and, when the quote reaches it, the inner
    /// TCP/UDP checksum incrementally — whether or not the quote holds the whole
    /// segment, as netfilter's `tcp_manip_pkt` / `udp_manip_pkt` do), then recomputes
    /// the ICMP checksum. This is how NAT translates an error about a translated
    /// connection (netfilter `nf_nat_icmp_reply_translation`).
    pub fn rewrite_quoted_source(&mut self, address: Ipv4Addr, port: u16) {
        self.rewrite_quoted(Side::Source, address, port);
    }

    /// For an ICMP error: rewrites the destination address and port of the packet it
    /// quotes (an error about a DNATed connection, translated back to the Service
    /// address the sender used), with the same checksum updates.
    pub fn rewrite_quoted_destination(&mut self, address: Ipv4Addr, port: u16) {
        self.rewrite_quoted(Side::Destination, address, port);
    }

    fn rewrite_quoted(&mut self, side: Side, address: Ipv4Addr, port: u16) {
        let Some(quoted_key) = quoted_flow_key(self) else {
            return;
        };
        let (old_address, old_port, address_at, port_at) = match side {
            Side::Source => (quoted_key.source, quoted_key.source_port, 12, 0),
            Side::Destination => (quoted_key.destination, quoted_key.destination_port, 16, 2),
        };
        let icmp_start = self.meta.l4_offset;
        let icmp_end = ETHERNET_HEADER_LEN + usize::from(self.meta.ip_total_len);
        let frame = self.frame_mut();
        let inner = icmp_start + 8;
        let inner_header_len = usize::from(frame[inner] & 0x0f) * 4;
        frame[inner + address_at..inner + address_at + 4].copy_from_slice(&address.octets());
        let sum = u16::from_be_bytes([frame[inner + 10], frame[inner + 11]]);
        let sum = checksum::update_address(sum, old_address, address);
        frame[inner + 10..inner + 12].copy_from_slice(&sum.to_be_bytes());
        let l4 = inner + inner_header_len;
        match quoted_key.protocol {
            PROTOCOL_TCP | PROTOCOL_UDP => {
                frame[l4 + port_at..l4 + port_at + 2].copy_from_slice(&port.to_be_bytes());
                let checksum_offset = if quoted_key.protocol == PROTOCOL_TCP {
                    l4 + 16
                } else {
                    l4 + 6
                };
                if checksum_offset + 2 <= icmp_end {
                    let mut sum =
                        u16::from_be_bytes([frame[checksum_offset], frame[checksum_offset + 1]]);
                    if !(quoted_key.protocol == PROTOCOL_UDP && sum == 0) {
                        sum = checksum::update_address(sum, old_address, address);
                        sum = checksum::update_word(sum, old_port, port);
                        frame[checksum_offset..checksum_offset + 2]
                            .copy_from_slice(&sum.to_be_bytes());
                    }
                }
            }
            PROTOCOL_ICMP if side == Side::Source => {
                // An echo request's identifier.
                let old = u16::from_be_bytes([frame[l4 + 4], frame[l4 + 5]]);
                frame[l4 + 4..l4 + 6].copy_from_slice(&port.to_be_bytes());
                if l4 + 4 <= icmp_end {
                    let sum = u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]);
                    let sum = checksum::update_word(sum, old, port);
                    frame[l4 + 2..l4 + 4].copy_from_slice(&sum.to_be_bytes());
                }
            }
            _ => {}
        }
        frame[icmp_start + 2..icmp_start + 4].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&frame[icmp_start..icmp_end]);
        frame[icmp_start + 2..icmp_start + 4].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Writes an Ethernet frame's addresses (no metadata to keep in step).
pub fn write_macs(frame: &mut [u8], source: Mac, destination: Mac) {
    frame[0..6].copy_from_slice(&destination.0);
    frame[6..12].copy_from_slice(&source.0);
}

/// Writes an IPv4 frame's TTL with an incremental header-checksum update
/// (RFC 1624; no metadata to keep in step).
pub fn write_ttl(frame: &mut [u8], ttl: u8) {
    let old_word = u16::from_be_bytes([frame[IP + 8], frame[IP + 9]]);
    frame[IP + 8] = ttl;
    let new_word = u16::from_be_bytes([frame[IP + 8], frame[IP + 9]]);
    let old_sum = u16::from_be_bytes([frame[IP + 10], frame[IP + 11]]);
    let new_sum = checksum::update_word(old_sum, old_word, new_word);
    frame[IP + 10..IP + 12].copy_from_slice(&new_sum.to_be_bytes());
}

/// Writes an IPv4 frame's identification with an incremental header-checksum
/// update (RFC 1624).
pub fn write_identification(frame: &mut [u8], identification: u16) {
    let old_word = u16::from_be_bytes([frame[IP + 4], frame[IP + 5]]);
    frame[IP + 4..IP + 6].copy_from_slice(&identification.to_be_bytes());
    let old_sum = u16::from_be_bytes([frame[IP + 10], frame[IP + 11]]);
    let new_sum = checksum::update_word(old_sum, old_word, identification);
    frame[IP + 10..IP + 12].copy_from_slice(&new_sum.to_be_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// A NAT of one flow — new source and/or destination (address, port) — compiled to
/// byte writes and two constant checksum adjustments, for a path cache replaying
/// it on every packet of the flow. The old values are the flow's, so each
/// RFC 1624 update `~old + new` sums to a constant per flow; one's-complement
/// addition is associative, so adding the sum once gives what [`HeaderEditor`]'s
/// word-by-word updates give (a property test in `sim::path` holds the two equal
/// byte for byte, UDP's zero checksum included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompiledNat {
    source_address: Option<[u8; 4]>,
    destination_address: Option<[u8; 4]>,
    /// Transport words rewritten: (offset in the frame, new value).
    ports: [Option<(usize, u16)>; 2],
    /// Added to the IPv4 header checksum's complement.
    ip_adjustment: u16,
    /// The transport checksum's offset and adjustment, when the NAT touches it.
    transport: Option<(usize, u16)>,
    udp: bool,
}

impl CompiledNat {
    /// The NAT that rewrites a frame parsed as `meta` (IPv4 without options, not a
    /// fragment) to `source` and `destination`, as [`HeaderEditor::set_destination`]
    /// then [`HeaderEditor::set_source`] would.
    pub fn compile(
        meta: &Meta,
        source: Option<(Ipv4Addr, u16)>,
        destination: Option<(Ipv4Addr, u16)>,
    ) -> CompiledNat {
        let word_change = |old: u16, new: u16| u32::from(!old) + u32::from(new);
        let address_change = |old: Ipv4Addr, new: Ipv4Addr| {
            let (old, new) = (old.octets(), new.octets());
            word_change(
                u16::from_be_bytes([old[0], old[1]]),
                u16::from_be_bytes([new[0], new[1]]),
            ) + word_change(
                u16::from_be_bytes([old[2], old[3]]),
                u16::from_be_bytes([new[2], new[3]]),
            )
        };
        let key = meta.key;
        let l4 = meta.l4_offset;
        let mut nat = CompiledNat {
            source_address: None,
            destination_address: None,
            ports: [None, None],
            ip_adjustment: 0,
            transport: None,
            udp: key.protocol == PROTOCOL_UDP,
        };
        let (mut ip_sum, mut transport_sum) = (0u32, 0u32);
        let changes = [
            (
                Side::Destination,
                destination,
                key.destination,
                key.destination_port,
            ),
            (Side::Source, source, key.source, key.source_port),
        ];
        for (slot, (side, change, old_address, old_port)) in changes.into_iter().enumerate() {
            let Some((address, port)) = change else {
                continue;
            };
            match side {
                Side::Source => nat.source_address = Some(address.octets()),
                Side::Destination => nat.destination_address = Some(address.octets()),
            }
            ip_sum += address_change(old_address, address);
            // As rewrite_l4: which word holds the port, where the checksum is, and
            // whether the pseudo-header (the addresses) is in it.
            let (port_offset, checksum_offset, pseudo_header) = match (key.protocol, meta.icmp) {
                (PROTOCOL_TCP, _) => (l4 + if side == Side::Source { 0 } else { 2 }, l4 + 16, true),
                (PROTOCOL_UDP, _) => (l4 + if side == Side::Source { 0 } else { 2 }, l4 + 6, true),
                (PROTOCOL_ICMP, IcmpKind::EchoRequest) if side == Side::Source => {
                    (l4 + 4, l4 + 2, false)
                }
                (PROTOCOL_ICMP, IcmpKind::EchoReply) if side == Side::Destination => {
                    (l4 + 4, l4 + 2, false)
                }
                _ => continue,
            };
            nat.transport = Some((checksum_offset, 0));
            if pseudo_header {
                transport_sum += address_change(old_address, address);
            }
            if old_port != port {
                nat.ports[slot] = Some((port_offset, port));
                transport_sum += word_change(old_port, port);
            }
        }
        nat.ip_adjustment = checksum::fold(ip_sum);
        if let Some((offset, _)) = nat.transport {
            nat.transport = Some((offset, checksum::fold(transport_sum)));
        }
        nat
    }

    /// Rewrites `frame` (a packet of the flow it was compiled for).
    pub fn apply(&self, frame: &mut [u8]) {
        let adjust = |frame: &mut [u8], offset: usize, adjustment: u16| {
            let sum = u16::from_be_bytes([frame[offset], frame[offset + 1]]);
            let sum = !checksum::fold(u32::from(!sum) + u32::from(adjustment));
            frame[offset..offset + 2].copy_from_slice(&sum.to_be_bytes());
            sum
        };
        if let Some(address) = self.source_address {
            frame[IP + 12..IP + 16].copy_from_slice(&address);
        }
        if let Some(address) = self.destination_address {
            frame[IP + 16..IP + 20].copy_from_slice(&address);
        }
        adjust(frame, IP + 10, self.ip_adjustment);
        for (offset, port) in self.ports.into_iter().flatten() {
            frame[offset..offset + 2].copy_from_slice(&port.to_be_bytes());
        }
        if let Some((offset, adjustment)) = self.transport {
            let without_checksum =
                self.udp && u16::from_be_bytes([frame[offset], frame[offset + 1]]) == 0;
            if !without_checksum && adjust(frame, offset, adjustment) == 0 && self.udp {
                // RFC 768: a computed zero is sent as all ones.
                frame[offset..offset + 2].copy_from_slice(&[0xff, 0xff]);
            }
        }
    }
}

/// Rewrites the L4 port (or ICMP echo id) and patches the L4 checksum for the address
/// change (pseudo-header) and the port change.
#[allow(clippy::too_many_arguments)]
fn rewrite_l4(
    frame: &mut [u8],
    meta: &Meta,
    side: Side,
    old_address: Ipv4Addr,
    new_address: Ipv4Addr,
    old_port: u16,
    new_port: u16,
    l4: usize,
) {
    let (port_offset, checksum_offset, pseudo_header) = match meta.key.protocol {
        PROTOCOL_TCP => (
            if side == Side::Source { l4 } else { l4 + 2 },
            l4 + 16,
            true,
        ),
        PROTOCOL_UDP => (if side == Side::Source { l4 } else { l4 + 2 }, l4 + 6, true),
        PROTOCOL_ICMP => match meta.icmp {
            // The echo identifier is NATed like a port (reference §g); requests carry
            // it as the "source port", replies as the "destination port".
            IcmpKind::EchoRequest if side == Side::Source => (l4 + 4, l4 + 2, false),
            IcmpKind::EchoReply if side == Side::Destination => (l4 + 4, l4 + 2, false),
            _ => return,
        },
        _ => return,
    };
    if frame.len() < checksum_offset + 2 {
        return;
    }
    let mut sum = u16::from_be_bytes([frame[checksum_offset], frame[checksum_offset + 1]]);
    let udp_without_checksum = meta.key.protocol == PROTOCOL_UDP && sum == 0;
    if pseudo_header && !udp_without_checksum {
        sum = checksum::update_address(sum, old_address, new_address);
    }
    if old_port != new_port {
        frame[port_offset..port_offset + 2].copy_from_slice(&new_port.to_be_bytes());
        if !udp_without_checksum {
            sum = checksum::update_word(sum, old_port, new_port);
        }
    }
    if meta.key.protocol == PROTOCOL_UDP && !udp_without_checksum && sum == 0 {
        // RFC 768: a computed zero is sent as all ones.
        sum = 0xffff;
    }
    frame[checksum_offset..checksum_offset + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Parses the metadata of an Ethernet frame.
pub fn parse_meta(frame: &[u8]) -> Result<Meta, WireError> {
    if frame.len() < ETHERNET_HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let mut meta = Meta {
        destination_mac: Mac(frame[0..6].try_into().map_err(|_| WireError::Truncated)?),
        source_mac: Mac(frame[6..12].try_into().map_err(|_| WireError::Truncated)?),
        ethertype: u16::from_be_bytes([frame[12], frame[13]]),
        ..Meta::default()
    };
    if meta.ethertype != ETHERTYPE_IPV4 {
        return Ok(meta);
    }
    let ip = &frame[IP..];
    if ip.len() < 20 {
        return Err(WireError::Truncated);
    }
    if ip[0] >> 4 != 4 {
        return Err(WireError::Malformed);
    }
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = u16::from_be_bytes([ip[2], ip[3]]);
    if header_len < 20 || usize::from(total_len) < header_len || ip.len() < usize::from(total_len) {
        return Err(WireError::Truncated);
    }
    let flags_fragment = u16::from_be_bytes([ip[6], ip[7]]);
    meta.dont_fragment = flags_fragment & 0x4000 != 0;
    meta.is_later_fragment = flags_fragment & 0x1fff != 0;
    meta.ttl = ip[8];
    meta.ip_total_len = total_len;
    meta.key.protocol = ip[9];
    meta.key.source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    meta.key.destination = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    meta.l4_offset = IP + header_len;
    if meta.is_later_fragment {
        return Ok(meta);
    }
    let l4 = &ip[header_len..usize::from(total_len)];
    match meta.key.protocol {
        PROTOCOL_TCP if l4.len() >= 20 => {
            meta.key.source_port = u16::from_be_bytes([l4[0], l4[1]]);
            meta.key.destination_port = u16::from_be_bytes([l4[2], l4[3]]);
            meta.tcp_flags = l4[13];
        }
        PROTOCOL_UDP if l4.len() >= 8 => {
            meta.key.source_port = u16::from_be_bytes([l4[0], l4[1]]);
            meta.key.destination_port = u16::from_be_bytes([l4[2], l4[3]]);
        }
        PROTOCOL_ICMP if l4.len() >= 8 => {
            let identifier = u16::from_be_bytes([l4[4], l4[5]]);
            meta.icmp = match l4[0] {
                8 => IcmpKind::EchoRequest,
                0 => IcmpKind::EchoReply,
                3 | 4 | 5 | 11 | 12 => IcmpKind::Error {
                    icmp_type: l4[0],
                    code: l4[1],
                },
                _ => IcmpKind::Other,
            };
            if matches!(meta.icmp, IcmpKind::EchoRequest | IcmpKind::EchoReply) {
                meta.key.source_port = identifier;
                meta.key.destination_port = identifier;
            }
        }
        PROTOCOL_TCP | PROTOCOL_UDP | PROTOCOL_ICMP => return Err(WireError::Truncated),
        _ => {}
    }
    Ok(meta)
}

/// The flow key of the packet an ICMP error quotes (RFC 792: the original IP header
/// and at least the first 8 bytes of its payload), as that packet was sent.
pub fn quoted_flow_key(packet: &Packet) -> Option<FlowKey> {
    if !matches!(packet.meta.icmp, IcmpKind::Error { .. }) {
        return None;
    }
    let frame = packet.frame();
    let quoted = frame.get(packet.meta.l4_offset + 8..)?;
    if quoted.len() < 28 || quoted[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(quoted[0] & 0x0f) * 4;
    let l4 = quoted.get(header_len..header_len + 8)?;
    let protocol = quoted[9];
    let (source_port, destination_port) = match protocol {
        PROTOCOL_TCP | PROTOCOL_UDP => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        PROTOCOL_ICMP => {
            let identifier = u16::from_be_bytes([l4[4], l4[5]]);
            (identifier, identifier)
        }
        _ => (0, 0),
    };
    Some(FlowKey {
        protocol,
        source: Ipv4Addr::new(quoted[12], quoted[13], quoted[14], quoted[15]),
        destination: Ipv4Addr::new(quoted[16], quoted[17], quoted[18], quoted[19]),
        source_port,
        destination_port,
    })
}

/// Frame builders shared by unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn udp_frame(
        source: Ipv4Addr,
        destination: Ipv4Addr,
        ports: (u16, u16),
        payload: &[u8],
    ) -> Vec<u8> {
        let addresses = crate::wire::FrameAddresses {
            source_mac: Mac::local(1, 1),
            destination_mac: Mac::local(1, 2),
            source,
            destination,
            source_port: ports.0,
            destination_port: ports.1,
        };
        crate::wire::transport_frame(PROTOCOL_UDP, &addresses, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::udp_frame;
    use super::*;

    #[test]
    fn snat_keeps_checksums_right() {
        let frame = udp_frame(
            Ipv4Addr::new(172, 20, 1, 10),
            Ipv4Addr::new(192, 168, 50, 10),
            (40312, 53),
            b"hello",
        );
        let mut packet = Packet::from_frame(&frame, 0).unwrap();
        packet.set_source(Ipv4Addr::new(10, 20, 0, 11), 61002);
        assert!(packet.decrement_ttl());
        let expected = {
            let mut rebuilt = udp_frame(
                Ipv4Addr::new(10, 20, 0, 11),
                Ipv4Addr::new(192, 168, 50, 10),
                (61002, 53),
                b"hello",
            );
            rebuilt[IP + 8] = 63;
            rebuilt[IP + 10..IP + 12].copy_from_slice(&[0, 0]);
            let sum = checksum::checksum(&rebuilt[IP..IP + 20]);
            rebuilt[IP + 10..IP + 12].copy_from_slice(&sum.to_be_bytes());
            rebuilt
        };
        assert_eq!(packet.frame(), &expected[..]);
        assert_eq!(packet.meta.key.source_port, 61002);
        assert_eq!(packet.meta.ttl, 63);
    }

    #[test]
    fn push_and_pull_front() {
        let frame = udp_frame(
            Ipv4Addr::new(1, 1, 1, 1),
            Ipv4Addr::new(2, 2, 2, 2),
            (1, 2),
            b"x",
        );
        let mut packet = Packet::from_frame(&frame, 0).unwrap();
        packet.push_front(50).fill(0xee);
        assert_eq!(packet.len(), frame.len() + 50);
        packet.pull_front(50);
        assert_eq!(packet.frame(), &frame[..]);
        packet.push_front(200);
        assert_eq!(packet.len(), frame.len() + 200);
        packet.pull_front(200);
        assert_eq!(packet.frame(), &frame[..]);
    }

    #[test]
    fn truncated_ipv4_is_an_error() {
        let frame = udp_frame(
            Ipv4Addr::new(1, 1, 1, 1),
            Ipv4Addr::new(2, 2, 2, 2),
            (1, 2),
            b"abc",
        );
        assert_eq!(parse_meta(&frame[..30]).unwrap_err(), WireError::Truncated);
    }
}
