//! Antrea's pipeline and the node's host stack as the real ones behave (reference §a,
//! §b; Linux `net/ipv4/icmp.c`): L3DecTTL on both nodes, what antrea-gw0 sees, a pod
//! reaching its own gateway, neighbour failures answered to the pod, ICMP errors built
//! as Linux builds them, and flows whose destination is a device.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::packet::{quoted_flow_key, IcmpKind};
use std::net::Ipv4Addr;

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

const CLUSTER: &str = r#"
[topology]
name = "pipeline"
seed = 5

[[segment]]
name = "vks-nodes"
cidr = "10.20.0.0/24"
gateway = "r1"

[[segment]]
name = "corp"
cidr = "192.168.50.0/24"
gateway = "r1"

[[router]]
name = "r1"

[[host]]
name = "db"
ip = "192.168.50.10"
segment = "corp"
listen = [ { protocol = "tcp", port = 5432 } ]

[[cluster]]
name = "vks-01"
pod_cidr = "172.20.0.0/16"
service_cidr = "10.96.0.0/23"
node_segment = "vks-nodes"

[[cluster.node]]
name = "worker-1"
ip = "10.20.0.11"
pod_cidr = "172.20.1.0/24"

[[cluster.node]]
name = "worker-2"
ip = "10.20.0.12"
pod_cidr = "172.20.2.0/24"

[[cluster.namespace]]
name = "app"

[[cluster.pod]]
name = "client"
namespace = "app"
node = "worker-1"
ip = "172.20.1.11"

[[cluster.pod]]
name = "web"
namespace = "app"
node = "worker-2"
ip = "172.20.2.10"
ports = [ { name = "http", port = 8080 } ]

[[flow]]
name = "cross-node"
from = "pod:app/client"
to = "pod:app/web"
protocol = "tcp"

[[flow]]
name = "ping-gateway"
from = "pod:app/client"
to = "172.20.1.1"
protocol = "icmp"
requests = 2

[[flow]]
name = "tcp-to-gateway"
from = "pod:app/client"
to = "172.20.1.1:22"
protocol = "tcp"

[[flow]]
name = "to-unused-address"
from = "pod:app/client"
to = "10.20.0.99"
protocol = "icmp"

[[flow]]
name = "ping-node"
from = "pod:app/client"
to = "node:worker-2"
protocol = "icmp"
requests = 2

[[flow]]
name = "host-pings-node"
from = "host:db"
to = "node:worker-1"
protocol = "icmp"

[[flow]]
name = "to-db"
from = "pod:app/client"
to = "host:db"
protocol = "tcp"
start = "50ms"
"#;

#[test]
fn a_cross_node_packet_reaches_the_pod_with_ttl_62() {
    let (topology, result, report) = run_text(CLUSTER);
    assert_eq!(flow(&report, "cross-node").verdict, "delivered");
    let delivered = frames_at(
        &topology,
        &result,
        "cross-node",
        "app/web:eth0",
        HopAction::Deliver,
    );
    assert!(!delivered.is_empty());
    // L3DecTTL on the source node (pod -> tunnel) and on the destination node
    // (tunnel -> pod): 64 -> 62.
    assert!(
        delivered.iter().all(|p| p.meta.ttl == 62),
        "{:?}",
        delivered[0].meta
    );
    // And the reply the same way back.
    let replies = frames_at(
        &topology,
        &result,
        "cross-node",
        "app/client:eth0",
        HopAction::Deliver,
    );
    assert!(replies.iter().all(|p| p.meta.ttl == 62));
}

#[test]
fn pod_traffic_leaves_ovs_on_antrea_gw0_as_the_pod_sent_it() {
    let (topology, result, report) = run_text(CLUSTER);
    assert_eq!(flow(&report, "to-db").verdict, "delivered");
    let sent = frames_at(
        &topology,
        &result,
        "to-db",
        "app/client:eth0",
        HopAction::Send,
    );
    let at_gateway = frames_at(
        &topology,
        &result,
        "to-db",
        "worker-1:antrea-gw0",
        HopAction::Transmit,
    );
    let syn = &at_gateway[0];
    assert_eq!(
        syn.meta.source_mac, sent[0].meta.source_mac,
        "the pod's MAC"
    );
    assert_eq!(
        syn.meta.destination_mac, sent[0].meta.destination_mac,
        "antrea-gw0's MAC"
    );
    assert_eq!(
        syn.meta.ttl, 64,
        "OVS does not decrement toward the gateway"
    );
    assert_eq!(syn.frame(), sent[0].frame());
}

#[test]
fn a_pod_pings_its_gateway_and_the_host_stack_answers() {
    let (topology, result, report) = run_text(CLUSTER);
    let ping = flow(&report, "ping-gateway");
    assert_eq!(ping.verdict, "delivered");
    assert_eq!(ping.packets.sent, 4);
    assert_eq!(ping.packets.delivered, 4);
    assert_eq!(ping.seen_source.as_deref(), Some("172.20.1.11"));
    let replies = frames_at(
        &topology,
        &result,
        "ping-gateway",
        "app/client:eth0",
        HopAction::Deliver,
    );
    assert_eq!(replies.len(), 2);
    assert!(replies.iter().all(|r| r.meta.icmp == IcmpKind::EchoReply
        && r.meta.key.source == ip("172.20.1.1")
        && r.meta.ttl == 64));
}

#[test]
fn tcp_to_the_gateway_is_reset_by_the_node_at_once() {
    let (topology, result, report) = run_text(CLUSTER);
    let tcp = flow(&report, "tcp-to-gateway");
    assert_eq!(tcp.verdict, "dropped");
    let drop = tcp.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("worker-1", "no-listener")
    );
    assert_balanced(&report, "tcp-to-gateway");
    let resets = frames_at(
        &topology,
        &result,
        "tcp-to-gateway",
        "app/client:eth0",
        HopAction::Deliver,
    );
    assert_eq!(resets.len(), 1, "one SYN, one RST+ACK, no retransmission");
    assert_eq!(resets[0].meta.key.source, ip("172.20.1.1"));
    assert_eq!(
        tcp.seen_source.as_deref(),
        Some("172.20.1.11"),
        "what the node saw"
    );
    assert_eq!(resets[0].meta.tcp_flags, 0x14);
}

#[test]
fn an_unused_address_on_the_node_segment_gets_host_unreachable_back_to_the_pod() {
    let (topology, result, report) = run_text(CLUSTER);
    let unused = flow(&report, "to-unused-address");
    assert_eq!(unused.verdict, "dropped");
    let drop = unused.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("worker-1", "no-neighbor")
    );
    assert_balanced(&report, "to-unused-address");
    let errors = frames_at(
        &topology,
        &result,
        "to-unused-address",
        "app/client:eth0",
        HopAction::Deliver,
    );
    assert!(!errors.is_empty());
    let error = &errors[0];
    assert_eq!(
        error.meta.icmp,
        IcmpKind::Error {
            icmp_type: 3,
            code: 1
        }
    );
    // From antrea-gw0's address (the interface the error leaves by), to the pod, and
    // the quote names the pod as it sent the packet (not the masqueraded node IP).
    assert_eq!(error.meta.key.source, ip("172.20.1.1"));
    assert_eq!(error.meta.key.destination, ip("172.20.1.11"));
    let quoted = quoted_flow_key(error).unwrap();
    assert_eq!(
        (quoted.source, quoted.destination),
        (ip("172.20.1.11"), ip("10.20.0.99"))
    );
    assert_eq!(error.tos(), 0xc0);
    assert!(!error.meta.dont_fragment);
}

#[test]
fn flows_to_devices_balance_and_say_what_the_device_saw() {
    let (_, _, report) = run_text(CLUSTER);
    let ping = flow(&report, "ping-node");
    assert_eq!(ping.verdict, "delivered");
    assert_eq!(
        (
            ping.packets.sent,
            ping.packets.delivered,
            ping.packets.dropped
        ),
        (4, 4, 0)
    );
    // Pod -> another node's IP leaves eth0: masqueraded to the node IP.
    assert_eq!(ping.seen_source.as_deref(), Some("10.20.0.11"));
    let host = flow(&report, "host-pings-node");
    assert_eq!(host.verdict, "delivered");
    assert_eq!((host.packets.sent, host.packets.delivered), (2, 2));
    assert_eq!(host.seen_source.as_deref(), Some("192.168.50.10"));
}

#[test]
fn a_router_builds_time_exceeded_from_the_interface_it_leaves_by_with_tos_0xc0() {
    let (topology, result, report) = run("routing-failures");
    assert_balanced(&report, "into-the-loop");
    let errors = frames_at(
        &topology,
        &result,
        "into-the-loop",
        "default/probe:eth0",
        HopAction::Deliver,
    );
    assert!(!errors.is_empty());
    for error in &errors {
        assert_eq!(
            error.meta.icmp,
            IcmpKind::Error {
                icmp_type: 11,
                code: 0
            }
        );
        assert_eq!(error.tos(), 0xc0);
        assert!(!error.meta.dont_fragment);
        // r1 answers from its interface toward the node (10.20.0.1), r2 from its
        // transit interface, the one its route back to the node leaves by.
        assert!(
            [ip("10.20.0.1"), ip("10.255.0.2")].contains(&error.meta.key.source),
            "{}",
            error.meta.key.source
        );
        // The whole 84-byte echo request is quoted (it fits in 576 bytes).
        assert_eq!(error.ip_len(), 20 + 8 + 84);
    }
}

#[test]
fn antrea_with_the_vxlan_tunnel_type_carries_pods_in_vxlan_vni_0() {
    let text = std::fs::read_to_string(topology_path("quickstart"))
        .unwrap()
        .replace("tunnel_type = \"geneve\"", "tunnel_type = \"vxlan\"");
    let dir = tempfile::tempdir().unwrap();
    let out = run_into_dir(dir.path(), "vxlan", &text);
    let (topology, result, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    assert_eq!(topology.clusters[0].antrea.pod_mtu, 1450);
    let encapsulated = frames_at(
        &topology,
        &result,
        "cross-node",
        "worker-1:eth0",
        HopAction::Encapsulate,
    );
    assert!(!encapsulated.is_empty());
    assert!(encapsulated
        .iter()
        .all(|p| p.meta.key.destination_port == 4789));
    lint(&[], &[&out.join("capture.pcapng")]);
    let vnis = std::process::Command::new("tshark")
        .args(["-n", "-r"])
        .arg(out.join("capture.pcapng"))
        .args(["-Y", "vxlan", "-T", "fields", "-e", "vxlan.vni"])
        .output()
        .unwrap();
    let vnis = String::from_utf8_lossy(&vnis.stdout);
    assert!(!vnis.trim().is_empty());
    assert!(vnis.lines().all(|v| v == "0"), "{vnis}");
}
