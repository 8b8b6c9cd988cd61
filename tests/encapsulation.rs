//! The encapsulations every CNI shares (Geneve, VXLAN, IP-in-IP) read clean in
//! Wireshark: a TCP segment wrapped in each, written as pcapng and checked with
//! pcap-lint and tshark's own dissection.

mod common;

use common::*;
use netsim::capture::{write_pcapng, CaptureMode};
use netsim::datapath::encap::{encapsulate, EncapHeader, Encapsulation};
use netsim::datapath::{Hop, HopAction};
use netsim::packet::Packet;
use netsim::sim::network::{CapturePoint, PointKind};
use netsim::wire::{transport_frame, FrameAddresses, Mac, PROTOCOL_TCP};
use std::net::Ipv4Addr;
use std::process::Command;

fn encapsulated(encapsulation: Encapsulation) -> Vec<u8> {
    let inner = transport_frame(
        PROTOCOL_TCP,
        &FrameAddresses {
            source_mac: Mac::local(3, 1),
            destination_mac: Mac::local(3, 2),
            source: Ipv4Addr::new(192, 168, 10, 5),
            destination: Ipv4Addr::new(192, 168, 20, 7),
            source_port: 43_210,
            destination_port: 9000,
        },
        &[0x41u8; 200],
    );
    let mut packet = Packet::from_frame(&inner, 0).unwrap();
    encapsulate(
        &mut packet,
        encapsulation,
        &EncapHeader {
            source: Ipv4Addr::new(10, 20, 1, 11),
            destination: Ipv4Addr::new(10, 20, 2, 11),
            source_mac: Mac::vmware(1, 1),
            destination_mac: Mac::vmware(1, 2),
            source_port: 50_001,
            identification: 1,
            dont_fragment: true,
        },
    );
    packet.frame().to_vec()
}

#[test]
fn geneve_vxlan_and_ipip_captures_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let points = vec![CapturePoint {
        name: "node-a:eth0".into(),
        device: "node-a".into(),
        kind: PointKind::Edge,
        raw_ip: false,
    }];
    let cases = [
        (
            Encapsulation::Geneve,
            "geneve",
            "eth:ethertype:ip:udp:geneve:eth:ethertype:ip:tcp",
        ),
        (
            Encapsulation::Vxlan { vni: 4096 },
            "vxlan",
            "eth:ethertype:ip:udp:vxlan:eth:ethertype:ip:tcp",
        ),
        (Encapsulation::Ipip, "ipip", "eth:ethertype:ip:ip:tcp"),
    ];
    for (encapsulation, name, protocols) in cases {
        let hop = Hop {
            time_ns: 0,
            point: 0,
            flow: 0,
            packet_id: 1,
            frame: encapsulated(encapsulation),
            action: HopAction::Encapsulate,
            detail: format!("{name} encap"),
        };
        let path = dir.path().join(format!("{name}.pcapng"));
        let file = std::fs::File::create(&path).unwrap();
        write_pcapng(file, &points, &[&hop], CaptureMode::All).unwrap();
        lint(&[], &[&path]);
        let output = Command::new("tshark")
            .args(["-n", "-r"])
            .arg(&path)
            .args(["-T", "fields", "-e", "frame.protocols", "-e", "vxlan.vni"])
            .output()
            .unwrap();
        let fields = String::from_utf8_lossy(&output.stdout);
        assert!(fields.starts_with(protocols), "{name}: {fields}");
        if name == "vxlan" {
            assert!(fields.trim_end().ends_with("4096"), "{fields}");
        }
    }
}

#[test]
fn vxlan_source_ports_come_from_the_local_port_range_and_geneve_from_the_whole_range() {
    // quickstart with `tunnel_type = "vxlan"`: worker-1 sends each cross-node
    // packet out of eth0 in VXLAN to worker-2 (10.20.0.11 -> 10.20.0.12, UDP 4789),
    // its outer source port the inner flow's hash scaled into 32768..60999 as
    // Linux's vxlan_xmit_one does with no port range set (OVS's vxlan vport), not
    // Geneve's 1..65535.
    let text = std::fs::read_to_string("topologies/quickstart.toml")
        .unwrap()
        .replace("tunnel_type = \"geneve\"", "tunnel_type = \"vxlan\"");
    let topology = netsim::topology::parse("quickstart-vxlan.toml", &text).unwrap();
    let result = netsim::sim::runner::run(&topology);
    let eth0 = result
        .network
        .points
        .iter()
        .position(|point| point.name == "worker-1:eth0")
        .unwrap();
    let mut checked = 0;
    let mut ports = std::collections::BTreeSet::new();
    for hop in result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.point as usize == eth0 && hop.action == HopAction::Encapsulate)
    {
        let outer = Packet::from_frame(&hop.frame, 0).unwrap();
        let key = outer.meta.key;
        assert_eq!(
            (key.source, key.destination, key.destination_port),
            (
                Ipv4Addr::new(10, 20, 0, 11),
                Ipv4Addr::new(10, 20, 0, 12),
                4789
            )
        );
        let mut inner = outer.clone();
        netsim::datapath::encap::decapsulate(&mut inner).unwrap();
        let vxlan = Encapsulation::Vxlan { vni: 0 };
        let expected =
            netsim::engine::hash::tunnel_source_port(&inner.meta.key, 7, vxlan.source_ports());
        assert_eq!(key.source_port, expected, "{}", hop.detail);
        assert!(
            (32_768..=60_998).contains(&key.source_port),
            "{}",
            hop.detail
        );
        ports.insert(key.source_port);
        checked += 1;
    }
    // cross-node (TCP 172.20.1.11 -> 172.20.2.10:8080), cross-node-udp (to
    // :40053) and closed-port (to :9999): one outer source port each.
    assert_eq!(
        ports.into_iter().collect::<Vec<_>>(),
        [38_356, 43_119, 52_994]
    );
    // The TCP flow's handshake and requests and the UDP flow's datagrams.
    assert!(
        checked >= 10,
        "{checked} VXLAN packets out of worker-1:eth0"
    );
    assert_eq!(Encapsulation::Geneve.source_ports(), (1, u16::MAX));
}

/// The outer DF bit of every packet a node encapsulates toward `peer`, with the
/// inner packet's DF, per flow name.
fn outer_and_inner_df(text: &str, node_eth0: &str) -> Vec<(String, bool, bool)> {
    let topology = netsim::topology::parse("df.toml", text).unwrap();
    let result = netsim::sim::runner::run(&topology);
    let eth0 = result
        .network
        .points
        .iter()
        .position(|point| point.name == node_eth0)
        .unwrap();
    result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.point as usize == eth0 && hop.action == HopAction::Encapsulate)
        .map(|hop| {
            let outer = Packet::from_frame(&hop.frame, 0).unwrap();
            let mut inner = outer.clone();
            netsim::datapath::encap::decapsulate(&mut inner).unwrap();
            let name = topology.flows[hop.flow as usize].name.clone();
            (name, outer.meta.dont_fragment, inner.meta.dont_fragment)
        })
        .collect()
}

#[test]
fn calico_vxlan_clears_the_outer_df_and_ipip_copies_the_inner_one_while_antrea_sets_it() {
    let calico = std::fs::read_to_string("topologies/calico-bgp-tor.toml").unwrap()
        + "\n[[flow]]\nname = \"cross-rack-udp-no-df\"\nfrom = \"pod:default/client\"\n\
           to = \"pod:default/web-b:8080\"\nprotocol = \"udp\"\ndont_fragment = false\n";
    // IPIP (CrossSubnet, worker-a1 -> worker-b1): tunl0 copies the inner DF.
    let ipip = outer_and_inner_df(&calico, "worker-a1:eth0");
    let flows: std::collections::BTreeSet<&str> = ipip.iter().map(|(f, _, _)| f.as_str()).collect();
    assert_eq!(
        flows,
        ["cross-rack", "cross-rack-udp-no-df"].into_iter().collect()
    );
    for (flow, outer, inner) in &ipip {
        assert_eq!(outer, inner, "{flow}");
        assert_eq!(*inner, flow == "cross-rack", "{flow}");
    }
    // VXLAN Always: vxlan.calico leaves DF clear whatever the inner packet says.
    let vxlan = calico.replace(
        "ipip_mode = \"CrossSubnet\"",
        "ipip_mode = \"Never\"\nvxlan_mode = \"Always\"",
    );
    let packets = outer_and_inner_df(&vxlan, "worker-a1:eth0");
    assert!(packets.iter().any(|(_, _, inner)| *inner));
    assert!(packets.iter().all(|(_, outer, _)| !outer), "{packets:?}");
    // Antrea over VXLAN (OVS, df_default): DF set whatever the inner packet says.
    let antrea = std::fs::read_to_string("topologies/quickstart.toml")
        .unwrap()
        .replace("tunnel_type = \"geneve\"", "tunnel_type = \"vxlan\"");
    let packets = outer_and_inner_df(&antrea, "worker-1:eth0");
    assert!(!packets.is_empty());
    assert!(packets.iter().all(|(_, outer, _)| *outer), "{packets:?}");
}
