//! MTU and routing failures: the drop reason, the device, and the ICMP error the
//! sender gets back, with its exact fields.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::packet::{parse_meta, quoted_flow_key, IcmpKind, Packet};
use std::net::Ipv4Addr;

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

#[test]
fn a_full_size_datagram_with_df_is_dropped_at_the_tunnel_and_the_sender_gets_fragmentation_needed()
{
    let (topology, result, report) = run("pod-mtu-mismatch");
    let flow = flow(&report, "full-size-udp");
    assert_eq!(flow.verdict, "dropped");
    let drop = flow.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("worker-1", "mtu-exceeded")
    );
    assert_eq!(flow.icmp_received, ["type 3 code 4 from 172.20.1.2"]);
    assert_eq!(
        flow.packets.sent,
        flow.packets.delivered + flow.packets.dropped
    );

    let tag = flow_index(&topology, "full-size-udp");
    let sender = point(&result, "default/udp-sender:eth0");
    let error = result
        .journal
        .hops
        .iter()
        .find(|hop| hop.flow == tag && hop.point == sender && hop.action == HopAction::Deliver)
        .expect("the ICMP reached the sending pod");
    let packet = Packet::from_frame(&error.frame, tag).unwrap();
    assert_eq!(
        packet.meta.icmp,
        IcmpKind::Error {
            icmp_type: 3,
            code: 4
        }
    );
    assert_eq!(
        (packet.meta.key.source, packet.meta.key.destination),
        (ip("172.20.1.2"), ip("172.20.0.3"))
    );
    let icmp = &error.frame[packet.meta.l4_offset..];
    assert_eq!(
        u16::from_be_bytes([icmp[6], icmp[7]]),
        1450,
        "next-hop MTU = 1500 - 50"
    );
    // As iptunnel_pmtud_build_icmp builds it: DF set, TOS 0, id 0, the inner TTL
    // (63 after the source node's L3DecTTL), then decremented again by OVS on its way
    // from the tunnel port to the pod; the quote cut to 548 bytes (576 in all).
    assert!(packet.meta.dont_fragment);
    assert_eq!(packet.tos(), 0);
    assert_eq!(&error.frame[18..20], &[0, 0], "IP id 0");
    assert_eq!(packet.meta.ttl, 62);
    assert_eq!(packet.ip_len(), 576);
    let quoted = quoted_flow_key(&packet).unwrap();
    assert_eq!(
        (quoted.source, quoted.destination, quoted.destination_port),
        (ip("172.20.0.3"), ip("172.20.1.2"), 7000)
    );
    // Nothing of it left worker-1.
    let uplink = point(&result, "worker-1:eth0");
    assert!(!result
        .journal
        .hops
        .iter()
        .any(|hop| hop.flow == tag && hop.point == uplink));
}

#[test]
fn smaller_packets_pass_and_bulk_tcp_falls_into_the_hole_on_an_old_kernel() {
    let (_, _, report) = run("pod-mtu-mismatch");
    assert_eq!(flow(&report, "small-udp").verdict, "delivered");
    let bulk = flow(&report, "bulk-tcp-old-kernel");
    assert_eq!(bulk.verdict, "dropped");
    assert_eq!(bulk.connections.established, 1, "the handshake fits");
    assert_eq!(bulk.drop.as_ref().unwrap().reason, "mtu-exceeded");
    assert!(report.expectations.iter().all(|e| e.ok));
}

#[test]
fn a_routing_loop_expires_the_ttl_and_the_time_exceeded_is_un_natted_to_the_pod() {
    let (topology, result, report) = run("routing-failures");
    let flow = flow(&report, "into-the-loop");
    assert_eq!(flow.verdict, "dropped");
    assert_eq!(flow.drop.as_ref().unwrap().reason, "ttl-exceeded");
    assert!(["r1", "r2"].contains(&flow.drop.as_ref().unwrap().device.as_str()));
    assert_eq!(flow.icmp_received.len(), 1);
    assert!(
        flow.icmp_received[0].starts_with("type 11 code 0 from 10."),
        "{:?}",
        flow.icmp_received
    );
    assert!(flow
        .nat
        .iter()
        .any(|n| n.kind == "unsnat-related" && n.to == "172.20.0.2"));
    // The quoted echo request inside carries the pod's address again.
    let tag = flow_index(&topology, "into-the-loop");
    let pod = point(&result, "default/probe:eth0");
    let hop = result
        .journal
        .hops
        .iter()
        .find(|hop| hop.flow == tag && hop.point == pod && hop.action == HopAction::Deliver)
        .unwrap();
    let packet = Packet::from_frame(&hop.frame, tag).unwrap();
    assert_eq!(quoted_flow_key(&packet).unwrap().source, ip("172.20.0.2"));
    assert_eq!(
        parse_meta(&hop.frame).unwrap().key.destination,
        ip("172.20.0.2")
    );
}

#[test]
fn a_missing_route_is_answered_with_net_unreachable() {
    let (_, _, report) = run("routing-failures");
    let flow = flow(&report, "unrouted");
    let drop = flow.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("r3", "no-route")
    );
    assert_eq!(flow.icmp_received, ["type 3 code 0 from 10.255.0.3"]);
    assert_eq!(
        report.counters.packets_sent,
        report.counters.packets_delivered + report.counters.packets_dropped
    );
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
}

#[test]
fn their_captures_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "pod-mtu-mismatch",
        "routing-failures",
        "two-node",
        "nsx-t1-t0-bgp",
        "antrea-hybrid",
        "calico-bgp-tor",
        "calico-route-reflectors",
        "antrea-services",
        "nsx-loadbalancer",
        "egress-no-snat",
        "nsx-double-nat",
        "antrea-egress",
        "network-policy",
        "antrea-tiers",
        "nsx-dfw",
    ] {
        let out = dir.path().join(name);
        let output = netsim(&[
            "run",
            &format!("topologies/{name}.toml"),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        lint(&["--min-packets", "4"], &[&out.join("capture.pcapng")]);
    }
}

#[test]
fn nodes_answer_pings_from_their_own_pods_and_from_other_nodes_pods() {
    let text = std::fs::read_to_string(topology_path("quickstart")).unwrap();
    let text = &text[..text.find("[[flow]]").unwrap()];
    let text = format!(
        "{text}\n[[flow]]\nname = \"own-node\"\nfrom = \"pod:app01/web-1\"\nto = \"node:worker-1\"\nprotocol = \"icmp\"\n\
         \n[[flow]]\nname = \"other-node\"\nfrom = \"pod:app01/web-1\"\nto = \"node:worker-2\"\nprotocol = \"icmp\"\n\
         \n[[flow]]\nname = \"node-tcp\"\nfrom = \"pod:app01/web-1\"\nto = \"10.20.0.12:22\"\n"
    );
    let topology = netsim::topology::parse("nodes.toml", &text).unwrap();
    let result = netsim::sim::runner::run(&topology);
    let report = netsim::report::build(&topology, &result);
    let own = flow(&report, "own-node");
    assert_eq!(own.verdict, "delivered");
    assert_eq!(
        netsim::report::path_devices(&own.path),
        ["app01/web-1", "worker-1"]
    );
    let other = flow(&report, "other-node");
    assert_eq!(other.verdict, "delivered");
    assert_eq!(
        other.seen_source.as_deref(),
        Some("10.20.0.11"),
        "the node saw the masqueraded source"
    );
    assert_eq!(
        other.packets.sent,
        other.packets.delivered + other.packets.dropped
    );
    assert!(
        other
            .nat
            .iter()
            .any(|n| n.kind == "snat" && n.to.starts_with("10.20.0.11:")),
        "pod to another node is masqueraded"
    );
    let tcp = flow(&report, "node-tcp");
    assert_eq!(tcp.verdict, "dropped");
    let drop = tcp.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("worker-2", "no-listener")
    );
}

#[test]
fn senders_without_a_route_or_a_neighbor_drop_at_the_source_with_the_reason() {
    let text = r#"
[topology]
name = "isolated"

[[segment]]
name = "nodes"
cidr = "10.1.0.0/24"

[[segment]]
name = "island"
cidr = "10.9.0.0/24"

[[host]]
name = "lonely"
segment = "island"

[[host]]
name = "peer"
segment = "nodes"

[[cluster]]
name = "c"
pod_cidr = "10.244.0.0/16"
service_cidr = "10.96.0.0/16"

node_segment = "nodes"
[[cluster.node]]
name = "n1"

[[cluster.pod]]
name = "a"

[[flow]]
name = "off-subnet"
from = "host:lonely"
to = "10.1.0.50:80"

[[flow]]
name = "no-such-neighbor"
from = "host:peer"
to = "10.1.0.77:80"

[[flow]]
name = "pod-to-peer"
from = "pod:default/a"
to = "host:peer:22"

[[flow]]
name = "pod-off-subnet"
from = "pod:default/a"
to = "203.0.113.5"
protocol = "icmp"
"#;
    let topology = netsim::topology::parse("isolated.toml", text).unwrap();
    let result = netsim::sim::runner::run(&topology);
    let report = netsim::report::build(&topology, &result);
    let drop = |name: &str| {
        let drop = flow(&report, name).drop.as_ref().unwrap();
        format!("{}@{}", drop.reason, drop.device)
    };
    assert_eq!(drop("off-subnet"), "no-route@lonely");
    assert_eq!(drop("no-such-neighbor"), "no-neighbor@peer");
    // Without a segment gateway the node still reaches its own subnet, masqueraded.
    let pod_to_peer = flow(&report, "pod-to-peer");
    assert_eq!(drop("pod-to-peer"), "no-listener@peer");
    assert_eq!(pod_to_peer.seen_source.as_deref(), Some("10.1.0.11"));
    // The node has no default route: it drops and tells the pod, from antrea-gw0.
    assert_eq!(drop("pod-off-subnet"), "no-route@n1");
    assert_eq!(
        flow(&report, "pod-off-subnet").icmp_received,
        ["type 3 code 0 from 10.244.0.1"]
    );
    for flow in &report.flows {
        assert_eq!(
            flow.packets.sent,
            flow.packets.delivered + flow.packets.dropped
        );
    }
}
