//! The four smoltcp-style tests (deconstruct, construct, parse, emit) for the headers
//! whose views come from `smoltcp::wire`, over byte arrays written out by hand, so the
//! exact bytes netsim puts on the wire are pinned down here.

use super::*;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, Ipv4Address, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber, UdpRepr};
use std::net::Ipv4Addr;

// dst 02:00:00:00:00:02, src 02:00:00:00:00:01, IPv4.
static ETHERNET_BYTES: [u8; 16] = [
    0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0xaa, 0xbb,
];

#[test]
fn ethernet_deconstruct() {
    let frame = EthernetFrame::new_checked(&ETHERNET_BYTES[..]).unwrap();
    assert_eq!(frame.dst_addr(), EthernetAddress([2, 0, 0, 0, 0, 2]));
    assert_eq!(frame.src_addr(), EthernetAddress([2, 0, 0, 0, 0, 1]));
    assert_eq!(frame.ethertype(), EthernetProtocol::Ipv4);
    assert_eq!(frame.payload(), &[0xaa, 0xbb]);
}

#[test]
fn ethernet_construct() {
    let mut bytes = [0u8; 16];
    emit_ethernet(
        &mut bytes,
        Mac([2, 0, 0, 0, 0, 2]),
        Mac([2, 0, 0, 0, 0, 1]),
        ETHERTYPE_IPV4,
    );
    bytes[14..].copy_from_slice(&[0xaa, 0xbb]);
    assert_eq!(bytes, ETHERNET_BYTES);
}

#[test]
fn ethernet_parse_and_emit() {
    let frame = EthernetFrame::new_checked(&ETHERNET_BYTES[..]).unwrap();
    let repr = EthernetRepr::parse(&frame).unwrap();
    let mut bytes = [0u8; 16];
    repr.emit(&mut EthernetFrame::new_unchecked(&mut bytes[..]));
    bytes[14..].copy_from_slice(&[0xaa, 0xbb]);
    assert_eq!(bytes, ETHERNET_BYTES);
}

// 10.20.0.11 -> 10.20.0.12, UDP, payload 8 bytes, TTL 64, id 0, DF.
// Checksum worked out by hand: 4500+001c+0000+4000+4011+0a14+000b+0a14+000c = 0xd96c;
// complement 0x2693.
static IPV4_BYTES: [u8; 28] = [
    0x45, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x26, 0x93, 0x0a, 0x14, 0x00, 0x0b,
    0x0a, 0x14, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8,
];

#[test]
fn ipv4_deconstruct() {
    let packet = Ipv4Packet::new_checked(&IPV4_BYTES[..]).unwrap();
    assert_eq!(packet.version(), 4);
    assert_eq!(packet.header_len(), 20);
    assert_eq!(packet.total_len(), 28);
    assert!(packet.dont_frag());
    assert_eq!(packet.hop_limit(), 64);
    assert_eq!(packet.next_header(), IpProtocol::Udp);
    assert_eq!(packet.checksum(), 0x2693);
    assert!(packet.verify_checksum());
    assert_eq!(packet.src_addr(), Ipv4Address::new(10, 20, 0, 11));
    assert_eq!(packet.dst_addr(), Ipv4Address::new(10, 20, 0, 12));
}

#[test]
fn ipv4_construct() {
    let mut bytes = [0u8; 28];
    emit_ipv4(
        &mut bytes,
        Ipv4Addr::new(10, 20, 0, 11),
        Ipv4Addr::new(10, 20, 0, 12),
        PROTOCOL_UDP,
        8,
        64,
        0,
        true,
    );
    bytes[20..].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(bytes, IPV4_BYTES);
}

#[test]
fn ipv4_parse_and_emit() {
    let packet = Ipv4Packet::new_checked(&IPV4_BYTES[..]).unwrap();
    let repr = Ipv4Repr::parse(&packet, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(repr.payload_len, 8);
    let mut bytes = [0u8; 28];
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut bytes[..]),
        &ChecksumCapabilities::default(),
    );
    bytes[20..].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(bytes, IPV4_BYTES);
}

// UDP 40000 -> 53 from 10.0.0.1 to 10.0.0.2, payload "ab".
// Checksum by hand: pseudo header 0a00+0001+0a00+0002+0011+000a = 0x141e, segment
// 9c40+0035+000a+0000+6162 = 0xfde1; 0x141e+0xfde1 = 0x111ff -> 0x1200; complement 0xedff.
static UDP_BYTES: [u8; 10] = [0x9c, 0x40, 0x00, 0x35, 0x00, 0x0a, 0xed, 0xff, 0x61, 0x62];

#[test]
fn udp_deconstruct() {
    let packet = UdpPacket::new_checked(&UDP_BYTES[..]).unwrap();
    assert_eq!(packet.src_port(), 40000);
    assert_eq!(packet.dst_port(), 53);
    assert_eq!(packet.len(), 10);
    assert_eq!(packet.checksum(), 0xedff);
    assert!(packet.verify_checksum(&IpAddress::v4(10, 0, 0, 1), &IpAddress::v4(10, 0, 0, 2)));
    assert_eq!(packet.payload(), b"ab");
}

#[test]
fn udp_construct() {
    let mut bytes = [0u8; 10];
    bytes[0..2].copy_from_slice(&40000u16.to_be_bytes());
    bytes[2..4].copy_from_slice(&53u16.to_be_bytes());
    bytes[4..6].copy_from_slice(&10u16.to_be_bytes());
    bytes[8..].copy_from_slice(b"ab");
    let sum = checksum::transport_checksum(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        PROTOCOL_UDP,
        &bytes,
    );
    bytes[6..8].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(bytes, UDP_BYTES);
}

#[test]
fn udp_parse_and_emit() {
    let source = IpAddress::v4(10, 0, 0, 1);
    let destination = IpAddress::v4(10, 0, 0, 2);
    let packet = UdpPacket::new_checked(&UDP_BYTES[..]).unwrap();
    let repr = UdpRepr::parse(
        &packet,
        &source,
        &destination,
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    assert_eq!((repr.src_port, repr.dst_port), (40000, 53));
    let mut bytes = [0u8; 10];
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut bytes[..]),
        &source,
        &destination,
        2,
        |payload| payload.copy_from_slice(b"ab"),
        &ChecksumCapabilities::default(),
    );
    assert_eq!(bytes, UDP_BYTES);
}

// TCP SYN 40312 -> 8080, seq 1000, window 64240, no options, from 10.0.0.1 to 10.0.0.2.
static TCP_BYTES: [u8; 20] = [
    0x9d, 0x78, 0x1f, 0x90, 0x00, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x00, 0x00, 0x50, 0x02, 0xfa, 0xf0,
    0x00, 0x00, 0x00, 0x00,
];

fn tcp_bytes_with_checksum() -> [u8; 20] {
    let mut bytes = TCP_BYTES;
    let sum = checksum::transport_checksum(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        PROTOCOL_TCP,
        &bytes,
    );
    bytes[16..18].copy_from_slice(&sum.to_be_bytes());
    bytes
}

#[test]
fn tcp_deconstruct() {
    let bytes = tcp_bytes_with_checksum();
    let packet = TcpPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(packet.src_port(), 40312);
    assert_eq!(packet.dst_port(), 8080);
    assert_eq!(packet.seq_number(), TcpSeqNumber(1000));
    assert!(packet.syn() && !packet.ack() && !packet.fin() && !packet.rst());
    assert_eq!(packet.window_len(), 64240);
    assert!(packet.verify_checksum(&IpAddress::v4(10, 0, 0, 1), &IpAddress::v4(10, 0, 0, 2)));
}

#[test]
fn tcp_construct() {
    let mut bytes = [0u8; 20];
    {
        let mut packet = TcpPacket::new_unchecked(&mut bytes[..]);
        packet.set_src_port(40312);
        packet.set_dst_port(8080);
        packet.set_seq_number(TcpSeqNumber(1000));
        packet.set_ack_number(TcpSeqNumber(0));
        packet.set_header_len(20);
        packet.clear_flags();
        packet.set_syn(true);
        packet.set_window_len(64240);
        packet.set_urgent_at(0);
        packet.fill_checksum(&IpAddress::v4(10, 0, 0, 1), &IpAddress::v4(10, 0, 0, 2));
    }
    assert_eq!(bytes, tcp_bytes_with_checksum());
}

#[test]
fn tcp_parse_and_emit() {
    let source = IpAddress::v4(10, 0, 0, 1);
    let destination = IpAddress::v4(10, 0, 0, 2);
    let bytes = tcp_bytes_with_checksum();
    let packet = TcpPacket::new_checked(&bytes[..]).unwrap();
    let repr = TcpRepr::parse(
        &packet,
        &source,
        &destination,
        &ChecksumCapabilities::default(),
    )
    .unwrap();
    assert_eq!(repr.control, TcpControl::Syn);
    let mut out = [0u8; 20];
    repr.emit(
        &mut TcpPacket::new_unchecked(&mut out[..]),
        &source,
        &destination,
        &ChecksumCapabilities::default(),
    );
    assert_eq!(out, bytes);
}

// ICMP echo request id 0x1234 seq 1, payload "hi"; checksum by hand:
// 0800 + 0000 + 1234 + 0001 + 6869 = 0x829e -> complement 0x7d61.
static ICMP_BYTES: [u8; 10] = [0x08, 0x00, 0x7d, 0x61, 0x12, 0x34, 0x00, 0x01, 0x68, 0x69];

#[test]
fn icmp_deconstruct() {
    let packet = Icmpv4Packet::new_checked(&ICMP_BYTES[..]).unwrap();
    assert_eq!(packet.msg_type(), Icmpv4Message::EchoRequest);
    assert_eq!(packet.echo_ident(), 0x1234);
    assert_eq!(packet.echo_seq_no(), 1);
    assert!(packet.verify_checksum());
}

#[test]
fn icmp_construct() {
    let mut bytes = [0u8; 10];
    bytes[0] = 8;
    bytes[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    bytes[6..8].copy_from_slice(&1u16.to_be_bytes());
    bytes[8..].copy_from_slice(b"hi");
    let sum = checksum::checksum(&bytes);
    bytes[2..4].copy_from_slice(&sum.to_be_bytes());
    assert_eq!(bytes, ICMP_BYTES);
}

#[test]
fn icmp_parse_and_emit() {
    use smoltcp::wire::Icmpv4Repr;
    let packet = Icmpv4Packet::new_checked(&ICMP_BYTES[..]).unwrap();
    let repr = Icmpv4Repr::parse(&packet, &ChecksumCapabilities::default()).unwrap();
    let mut out = [0u8; 10];
    repr.emit(
        &mut Icmpv4Packet::new_unchecked(&mut out[..]),
        &ChecksumCapabilities::default(),
    );
    assert_eq!(out, ICMP_BYTES);
}

#[test]
fn transport_frame_builds_the_hand_written_udp_datagram_and_a_valid_tcp_segment() {
    let addresses = FrameAddresses {
        source_mac: Mac([2, 0, 0, 0, 0, 1]),
        destination_mac: Mac([2, 0, 0, 0, 0, 2]),
        source: Ipv4Addr::new(10, 0, 0, 1),
        destination: Ipv4Addr::new(10, 0, 0, 2),
        source_port: 40000,
        destination_port: 53,
    };
    let udp = transport_frame(PROTOCOL_UDP, &addresses, b"ab");
    assert_eq!(&udp[..12], &ETHERNET_BYTES[..12]);
    assert_eq!(&udp[34..], &UDP_BYTES[..]);
    assert!(Ipv4Packet::new_checked(&udp[14..])
        .unwrap()
        .verify_checksum());
    let tcp = transport_frame(PROTOCOL_TCP, &addresses, b"hello");
    let segment = TcpPacket::new_checked(&tcp[34..]).unwrap();
    assert!(segment.psh() && segment.ack());
    assert_eq!(segment.payload(), b"hello");
    assert!(segment.verify_checksum(&IpAddress::v4(10, 0, 0, 1), &IpAddress::v4(10, 0, 0, 2)));
}
