//! The quickstart topology end to end: what each flow did, the exact bytes on the
//! node uplinks, and that every packet is accounted for.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::packet::{parse_meta, tcp_flags, IcmpKind};
use netsim::report::path_devices;
use netsim::wire::geneve;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// Outer and inner facts of one Geneve frame.
struct Encapsulated {
    outer_source: Ipv4Addr,
    outer_destination: Ipv4Addr,
    outer_ttl: u8,
    outer_dont_fragment: bool,
    udp_source_port: u16,
    udp_destination_port: u16,
    udp_checksum: u16,
    vni: u32,
    options_len: usize,
    protocol_type: u16,
    inner_destination_mac: [u8; 6],
    inner_source: Ipv4Addr,
    inner_ttl: u8,
}

fn decode(frame: &[u8]) -> Encapsulated {
    let outer = parse_meta(frame).unwrap();
    let udp = &frame[outer.l4_offset..];
    let header = geneve::Packet::new_checked(&udp[8..]).unwrap();
    let inner_frame = &udp[8 + header.header_len()..];
    let inner = parse_meta(inner_frame).unwrap();
    Encapsulated {
        outer_source: outer.key.source,
        outer_destination: outer.key.destination,
        outer_ttl: outer.ttl,
        outer_dont_fragment: outer.dont_fragment,
        udp_source_port: outer.key.source_port,
        udp_destination_port: outer.key.destination_port,
        udp_checksum: u16::from_be_bytes([udp[6], udp[7]]),
        vni: header.vni(),
        options_len: header.options_len(),
        protocol_type: header.protocol_type(),
        inner_destination_mac: inner.destination_mac.0,
        inner_source: inner.key.source,
        inner_ttl: inner.ttl,
    }
}

#[test]
fn cross_node_tcp_is_delivered_through_a_geneve_tunnel_like_antreas() {
    let (topology, result, report) = run("quickstart");
    let flow = flow(&report, "cross-node");
    assert_eq!(flow.verdict, "delivered");
    assert_eq!(
        path_devices(&flow.path),
        ["app01/client-1", "worker-1", "worker-2", "app01/web-2"]
    );
    assert_eq!(
        flow.seen_source.as_deref(),
        Some("172.20.1.11"),
        "pod-to-pod is never SNATed"
    );
    assert_eq!(
        (
            flow.connections.attempted,
            flow.connections.established,
            flow.connections.failed
        ),
        (1, 1, 0)
    );
    assert!(flow.nat.is_empty());

    let tag = flow_index(&topology, "cross-node");
    let uplink = point(&result, "worker-1:eth0");
    let encapsulated: Vec<Encapsulated> = result
        .journal
        .hops
        .iter()
        .filter(|hop| {
            hop.flow == tag && hop.point == uplink && hop.action == HopAction::Encapsulate
        })
        .map(|hop| decode(&hop.frame))
        .collect();
    assert!(
        encapsulated.len() >= 5,
        "handshake, three requests and close cross the tunnel"
    );
    for packet in &encapsulated {
        assert_eq!(
            (packet.outer_source, packet.outer_destination),
            (ip("10.20.0.11"), ip("10.20.0.12"))
        );
        assert_eq!(packet.udp_destination_port, 6081);
        assert_eq!(packet.udp_checksum, 0, "Antrea's default tunnelCsum=false");
        assert!(packet.outer_dont_fragment);
        assert_eq!(packet.outer_ttl, 64);
        assert_eq!(
            (packet.vni, packet.options_len, packet.protocol_type),
            (0, 0, 0x6558)
        );
        assert_eq!(
            packet.inner_destination_mac,
            [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
        );
        assert_eq!(packet.inner_source, ip("172.20.1.11"));
        assert_eq!(
            packet.inner_ttl, 63,
            "the pod sent TTL 64; OVS decrements it once"
        );
        assert!((1..=65534).contains(&packet.udp_source_port));
    }
    let forward_ports: BTreeSet<u16> = encapsulated.iter().map(|p| p.udp_source_port).collect();
    assert_eq!(
        forward_ports.len(),
        1,
        "one flow keeps one outer source port"
    );

    // The reply direction leaves worker-2 with its own, stable port.
    let reply_uplink = point(&result, "worker-2:eth0");
    let replies: BTreeSet<u16> = result
        .journal
        .hops
        .iter()
        .filter(|hop| {
            hop.flow == tag && hop.point == reply_uplink && hop.action == HopAction::Encapsulate
        })
        .map(|hop| decode(&hop.frame))
        .inspect(|p| {
            assert_eq!(
                (p.outer_source, p.outer_destination),
                (ip("10.20.0.12"), ip("10.20.0.11"))
            )
        })
        .map(|p| p.udp_source_port)
        .collect();
    assert_eq!(replies.len(), 1);
    assert_ne!(replies, forward_ports);

    // Another flow between other pods gets another port.
    let other = flow_index(&topology, "cross-node-udp");
    let other_ports: BTreeSet<u16> = result
        .journal
        .hops
        .iter()
        .filter(|hop| {
            hop.flow == other && hop.point == uplink && hop.action == HopAction::Encapsulate
        })
        .map(|hop| decode(&hop.frame).udp_source_port)
        .collect();
    assert_eq!(other_ports.len(), 1);
    assert!(other_ports.is_disjoint(&forward_ports));
}

#[test]
fn the_tcp_mss_follows_the_pod_mtu() {
    let (topology, result, _) = run("quickstart");
    let tag = flow_index(&topology, "cross-node");
    let client = point(&result, "app01/client-1:eth0");
    let syn = result
        .journal
        .hops
        .iter()
        .find(|hop| hop.flow == tag && hop.point == client && hop.action == HopAction::Send)
        .expect("the client sent a SYN");
    let meta = parse_meta(&syn.frame).unwrap();
    assert_eq!(
        meta.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK),
        tcp_flags::SYN
    );
    let tcp = &syn.frame[meta.l4_offset..];
    let header_len = usize::from(tcp[12] >> 4) * 4;
    let options = &tcp[20..header_len];
    let mss_at = options
        .iter()
        .position(|&kind| kind == 2)
        .expect("an MSS option");
    let mss = u16::from_be_bytes([options[mss_at + 2], options[mss_at + 3]]);
    assert_eq!(
        mss,
        1450 - 40,
        "pod MTU 1500 - 50 (Geneve) minus IP and TCP headers"
    );
}

#[test]
fn pod_to_host_is_masqueraded_to_the_node_ip_and_the_reply_reaches_the_pod() {
    let (topology, result, report) = run("quickstart");
    let flow = flow(&report, "to-db");
    assert_eq!(flow.verdict, "delivered");
    assert_eq!(
        path_devices(&flow.path),
        ["app01/client-1", "worker-1", "r1", "db"]
    );
    assert_eq!(flow.seen_source.as_deref(), Some("10.20.0.11"));
    let snat = flow
        .nat
        .iter()
        .find(|n| n.kind == "snat")
        .expect("masquerade");
    assert_eq!(snat.device, "worker-1");
    assert!(
        snat.from.starts_with("172.20.1.11:") && snat.to.starts_with("10.20.0.11:"),
        "{snat:?}"
    );
    let unsnat = flow
        .nat
        .iter()
        .find(|n| n.kind == "unsnat")
        .expect("reply un-NATed");
    assert_eq!(
        (unsnat.from.as_str(), unsnat.to.as_str()),
        (snat.to.as_str(), snat.from.as_str())
    );
    assert_eq!(
        path_devices(&flow.reply_path),
        ["db", "r1", "worker-1", "app01/client-1"]
    );

    // The host saw the node IP; the pod got the reply addressed to itself.
    let tag = flow_index(&topology, "to-db");
    let at_host = point(&result, "db:eth0");
    let at_pod = point(&result, "app01/client-1:eth0");
    for hop in result.journal.hops.iter().filter(|hop| hop.flow == tag) {
        let meta = parse_meta(&hop.frame).unwrap();
        if hop.point == at_host && hop.action == HopAction::Deliver {
            assert_eq!(meta.key.source, ip("10.20.0.11"));
        }
        if hop.point == at_pod && hop.action == HopAction::Deliver {
            assert_eq!(
                (meta.key.source, meta.key.destination),
                (ip("192.168.50.10"), ip("172.20.1.11"))
            );
        }
    }
    assert_eq!(flow.packets.sent, flow.packets.delivered);
}

#[test]
fn same_node_traffic_is_switched_locally_without_a_tunnel() {
    let (topology, result, report) = run("quickstart");
    let flow = flow(&report, "same-node");
    assert_eq!(flow.verdict, "delivered");
    assert_eq!(
        path_devices(&flow.path),
        ["app01/client-1", "worker-1", "app01/web-1"]
    );
    let tag = flow_index(&topology, "same-node");
    let hops: Vec<_> = result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.flow == tag)
        .collect();
    assert!(hops.iter().all(|hop| hop.action != HopAction::Encapsulate));
    let server = point(&result, "app01/web-1:eth0");
    let delivered = hops
        .iter()
        .find(|hop| hop.point == server && hop.action == HopAction::Deliver)
        .unwrap();
    assert_eq!(
        parse_meta(&delivered.frame).unwrap().ttl,
        64,
        "L2-switched: no TTL decrement"
    );
}

#[test]
fn a_syn_to_a_closed_port_is_refused_with_rst() {
    let (topology, result, report) = run("quickstart");
    let flow = flow(&report, "closed-port");
    assert_eq!(flow.verdict, "dropped");
    let drop = flow.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("app01/web-2", "no-listener")
    );
    assert_eq!(flow.connections.failed, 1);
    let tag = flow_index(&topology, "closed-port");
    let client = point(&result, "app01/client-1:eth0");
    let rst = result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.flow == tag && hop.point == client && hop.action == HopAction::Deliver)
        .map(|hop| parse_meta(&hop.frame).unwrap())
        .find(|meta| meta.tcp_flags & tcp_flags::RST != 0);
    assert!(rst.is_some(), "the client received the RST");
}

#[test]
fn ping_to_the_host_is_answered() {
    let (topology, result, report) = run("quickstart");
    let flow = flow(&report, "ping-db");
    assert_eq!(flow.verdict, "delivered");
    assert_eq!(flow.seen_source.as_deref(), Some("10.20.0.12"));
    let tag = flow_index(&topology, "ping-db");
    let pod = point(&result, "app01/api-1:eth0");
    let reply = result
        .journal
        .hops
        .iter()
        .find(|hop| hop.flow == tag && hop.point == pod && hop.action == HopAction::Deliver)
        .map(|hop| parse_meta(&hop.frame).unwrap())
        .unwrap();
    assert_eq!(reply.icmp, IcmpKind::EchoReply);
    assert_eq!(reply.key.destination, ip("172.20.2.2"));
}

#[test]
fn every_packet_is_accounted_for_and_every_expectation_holds() {
    let (_, _, report) = run("quickstart");
    for flow in &report.flows {
        assert_eq!(
            flow.packets.sent,
            flow.packets.delivered + flow.packets.dropped,
            "flow {}",
            flow.name
        );
    }
    let counters = &report.counters;
    assert_eq!(
        counters.packets_sent,
        counters.packets_delivered + counters.packets_dropped
    );
    assert_eq!(counters.drops_by_reason.get("no-listener"), Some(&1));
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    assert!(
        counters.flow_cache_hits > counters.flow_cache_misses,
        "later packets hit the flow cache"
    );
}
