//! Properties: parse∘emit is identity for Geneve, encap∘decap is identity,
//! incremental checksums equal full ones, NAT rewrites keep every checksum right, and
//! packets sent = delivered + dropped for arbitrary flows.

use netsim::datapath::encap::{decapsulate, encapsulate, EncapHeader, Encapsulation};
use netsim::packet::Packet;
use netsim::wire::checksum;
use netsim::wire::geneve::{self, Repr};
use netsim::wire::{
    transport_frame, FrameAddresses, Ipv4Packet, Mac, TcpPacket, UdpPacket, PROTOCOL_TCP,
    PROTOCOL_UDP,
};
use proptest::prelude::*;
use smoltcp::wire::IpAddress;
use std::net::Ipv4Addr;

fn options_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        (
            any::<u16>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..3),
        ),
        0..4,
    )
    .prop_map(|options| {
        let mut bytes = Vec::new();
        for (class, option_type, words) in options {
            bytes.extend_from_slice(&class.to_be_bytes());
            bytes.push(option_type);
            bytes.push(u8::try_from(words.len()).unwrap());
            for word in words {
                bytes.extend_from_slice(&[word; 4]);
            }
        }
        bytes
    })
}

/// A UDP datagram or TCP segment as an endpoint sends it (the library's builder).
fn l4_frame(
    protocol: u8,
    source: Ipv4Addr,
    destination: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let addresses = FrameAddresses {
        source_mac: Mac::local(9, 1),
        destination_mac: Mac::local(9, 2),
        source,
        destination,
        source_port: ports.0,
        destination_port: ports.1,
    };
    transport_frame(protocol, &addresses, payload)
}

fn checksums_hold(frame: &[u8]) -> bool {
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    let (source, destination) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let l4 = &frame[34..];
    let l4_ok = match ip.next_header() {
        smoltcp::wire::IpProtocol::Tcp => TcpPacket::new_checked(l4)
            .unwrap()
            .verify_checksum(&source, &destination),
        smoltcp::wire::IpProtocol::Udp => UdpPacket::new_checked(l4)
            .unwrap()
            .verify_checksum(&source, &destination),
        _ => true,
    };
    ip.verify_checksum() && l4_ok
}

proptest! {
    #[test]
    fn geneve_parse_of_emit_is_identity(oam in any::<bool>(), critical in any::<bool>(), protocol_type in any::<u16>(),
                                        vni in 0u32..(1 << 24), options in options_strategy()) {
        let repr = Repr { oam, critical, protocol_type, vni, options: &options };
        let mut bytes = vec![0u8; repr.buffer_len() + 3];
        repr.emit(&mut geneve::Packet::new_unchecked(&mut bytes[..])).unwrap();
        let view = geneve::Packet::new_checked(&bytes[..]).unwrap();
        prop_assert_eq!(Repr::parse(&view).unwrap(), repr);
        prop_assert_eq!(view.payload().len(), 3);
    }

    #[test]
    fn encap_then_decap_is_identity(source in any::<u32>(), destination in any::<u32>(), ports in any::<(u16, u16)>(),
                                    payload in proptest::collection::vec(any::<u8>(), 0..1400), outer_port in 1u16..65535) {
        let frame = l4_frame(PROTOCOL_UDP, Ipv4Addr::from(source), Ipv4Addr::from(destination), ports, &payload);
        let mut packet = Packet::from_frame(&frame, 7).unwrap();
        let inner_meta = packet.meta;
        let header = EncapHeader {
            source: Ipv4Addr::new(10, 20, 0, 11),
            destination: Ipv4Addr::new(10, 20, 0, 12),
            source_mac: Mac::local(1, 0),
            destination_mac: Mac::local(1, 1),
            source_port: outer_port,
            identification: 9,
            dont_fragment: true,
        };
        encapsulate(&mut packet, Encapsulation::Geneve, &header);
        prop_assert_eq!(packet.len(), frame.len() + 50);
        prop_assert_eq!(packet.meta.key.destination_port, 6081);
        prop_assert!(Ipv4Packet::new_checked(&packet.frame()[14..]).unwrap().verify_checksum());
        prop_assert_eq!(decapsulate(&mut packet).unwrap(), (Encapsulation::Geneve, 0));
        prop_assert_eq!(packet.frame(), &frame[..]);
        prop_assert_eq!(packet.meta, inner_meta);
    }

    #[test]
    fn incremental_checksum_equals_full(header in proptest::collection::vec(any::<u8>(), 20), word in 0usize..10, value in any::<u16>()) {
        let mut header = header;
        header[10] = 0;
        header[11] = 0;
        let original = checksum::checksum(&header);
        let word = if word == 5 { 4 } else { word };
        let old = u16::from_be_bytes([header[word * 2], header[word * 2 + 1]]);
        header[word * 2..word * 2 + 2].copy_from_slice(&value.to_be_bytes());
        let incremental = checksum::update_word(original, old, value);
        let full = checksum::checksum(&header);
        // One's complement has two zeros; RFC 1624 eqn. 3 never yields the other one
        // unless the full sum does too.
        prop_assert!(incremental == full || (incremental ^ full) == 0xffff && (full == 0 || full == 0xffff));
    }

    #[test]
    fn nat_rewrites_keep_checksums_right(tcp in any::<bool>(), source in any::<u32>(), destination in any::<u32>(),
                                        ports in any::<(u16, u16)>(), payload in proptest::collection::vec(any::<u8>(), 0..600),
                                        new_source in any::<u32>(), new_port in any::<u16>()) {
        let protocol = if tcp { PROTOCOL_TCP } else { PROTOCOL_UDP };
        let frame = l4_frame(protocol, Ipv4Addr::from(source), Ipv4Addr::from(destination), ports, &payload);
        let mut packet = Packet::from_frame(&frame, 0).unwrap();
        packet.set_source(Ipv4Addr::from(new_source), new_port);
        prop_assert!(checksums_hold(packet.frame()));
        packet.set_destination(Ipv4Addr::from(source), ports.0);
        prop_assert!(packet.decrement_ttl());
        prop_assert!(checksums_hold(packet.frame()));
        prop_assert_eq!(packet.meta.key.source, Ipv4Addr::from(new_source));
        prop_assert_eq!(packet.meta.key.source_port, new_port);
    }
}

fn flow_strategy() -> impl Strategy<Value = String> {
    let endpoints = [
        "pod:app01/client-1",
        "pod:app01/web-1",
        "pod:app01/web-2",
        "pod:app01/api-0",
        "pod:app01/api-1",
        "host:db",
    ];
    let targets = [
        "pod:app01/web-1:8080",
        "pod:app01/web-2:8080",
        "pod:app01/web-2:40053",
        "host:db:5432",
        "host:db:40053",
        "pod:app01/api-0:9000",
        "pod:app01/web-1:1234",
        "203.0.113.9:80",
    ];
    (0..endpoints.len(), 0..targets.len(), 0..3usize, 1u32..4, 1u32..3000, 0u32..20)
        .prop_filter("a flow to its own source is refused", move |(from, to, ..)| !targets[*to].starts_with(endpoints[*from]))
        .prop_map(move |(from, to, protocol, requests, bytes, start)| {
        let protocol = ["tcp", "udp", "icmp"][protocol];
        let bytes = if protocol == "tcp" { bytes } else { bytes.min(1400) };
        let to = if protocol == "icmp" { targets[to].rsplit_once(':').map(|(a, _)| a.to_string()).unwrap() } else { targets[to].to_string() };
        format!("from = \"{}\"\nto = \"{to}\"\nprotocol = \"{protocol}\"\nrequests = {requests}\nbytes = {bytes}\nstart = \"{start}ms\"\n", endpoints[from])
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_packet_sent_is_delivered_or_dropped(flows in proptest::collection::vec(flow_strategy(), 1..5)) {
        let base = include_str!("../topologies/quickstart.toml");
        let base = &base[..base.find("[[flow]]").unwrap()];
        let mut text = base.to_string();
        for (index, flow) in flows.iter().enumerate() {
            text.push_str(&format!("\n[[flow]]\nname = \"f{index}\"\n{flow}"));
        }
        let topology = netsim::topology::parse("random.toml", &text).unwrap_or_else(|error| panic!("{error}\n{text}"));
        let result = netsim::sim::runner::run(&topology);
        let report = netsim::report::build(&topology, &result);
        for flow in &report.flows {
            prop_assert_eq!(flow.packets.sent, flow.packets.delivered + flow.packets.dropped, "flow {}", flow.name);
            if flow.verdict == "dropped" {
                prop_assert!(flow.drop.is_some());
            }
        }
        let counters = &report.counters;
        prop_assert_eq!(counters.packets_sent, counters.packets_delivered + counters.packets_dropped);
    }
}

proptest! {
    /// Frame parsing and decapsulation never panic, whatever the bytes.
    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = netsim::packet::parse_meta(&bytes);
        if let Ok(mut packet) = Packet::from_frame(&bytes, 0) {
            let _ = netsim::packet::quoted_flow_key(&packet);
            if packet.meta.key.protocol == PROTOCOL_UDP {
                let _ = decapsulate(&mut packet);
            }
        }
        let _ = geneve::Packet::new_checked(&bytes[..]).and_then(|view| Repr::parse(&view).map(|_| ()));
    }

    /// The topology loader turns any text into a model or a located error, never a panic.
    #[test]
    fn loading_arbitrary_text_never_panics(text in "\\PC{0,200}", cut in 0usize..3000) {
        let _ = netsim::topology::parse("fuzz.toml", &text);
        let quickstart = include_str!("../topologies/quickstart.toml");
        let mut cut = cut.min(quickstart.len());
        while !quickstart.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Err(error) = netsim::topology::parse("cut.toml", &quickstart[..cut]) {
            prop_assert!(error.line >= 1 && error.column >= 1);
        }
    }
}

proptest! {
    /// Fragmenting to any MTU and reassembling the fragments in any order gives the
    /// datagram back; every fragment fits the MTU and keeps a valid header checksum.
    #[test]
    fn fragment_then_reassemble_is_identity(
        payload_len in 1usize..6000,
        mtu in 68usize..1500,
        order_seed in any::<u64>(),
    ) {
        use netsim::engine::reassembly::{fragment, Reassembler, Reassembly};
        let payload: Vec<u8> = (0..payload_len).map(|i| u8::try_from(i % 253).unwrap()).collect();
        let mut whole = l4_frame(PROTOCOL_UDP, Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), (1, 2), &payload);
        // Clear DF so the datagram may be cut (with the header checksum updated).
        let mut packet = Packet::from_frame(&whole, 0).unwrap();
        packet.clear_dont_fragment();
        whole = packet.frame().to_vec();
        let mut pieces = fragment(&whole, mtu);
        let limit = if pieces.len() > 1 { mtu } else { whole.len() - 14 };
        for piece in &pieces {
            prop_assert!(piece.len() - 14 <= limit);
            prop_assert_eq!(checksum::checksum(&piece[14..34]), 0);
        }
        // A seeded shuffle.
        let mut state = order_seed | 1;
        for index in (1..pieces.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            let other = usize::try_from(state % (index as u64 + 1)).unwrap();
            pieces.swap(index, other);
        }
        let mut reassembler = Reassembler::default();
        let mut result = None;
        for piece in &pieces {
            match reassembler.add(piece, 0) {
                Reassembly::Complete { frame, .. } => result = Some(frame),
                Reassembly::Held => {}
                Reassembly::Invalid => prop_assert!(false, "a fragment we made is invalid"),
            }
        }
        if pieces.len() == 1 {
            prop_assert_eq!(&pieces[0], &whole);
        } else {
            prop_assert_eq!(result, Some(whole));
        }
    }
}
