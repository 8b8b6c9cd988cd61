//! Endpoints react to ICMP as a Linux pod does (`tcp_v4_err`, `__udp4_lib_err`,
//! `ping_err`): path MTU discovery for TCP (the smoltcp patch in vendor/smoltcp) and
//! for datagrams, SYN-SENT aborted at once by an unreachable, UDP refused by port
//! unreachable; and the old-kernel black hole for contrast.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::packet::IcmpKind;
use netsim::wire::PROTOCOL_TCP;

#[test]
fn tcp_recovers_after_one_fragmentation_needed() {
    let (topology, result, report) = run("pod-mtu-mismatch");
    let bulk = flow(&report, "bulk-tcp");
    assert_eq!(bulk.verdict, "delivered");
    assert_balanced(&report, "bulk-tcp");
    let discovered = bulk.path_mtu.as_ref().expect("the path MTU is reported");
    assert_eq!(discovered.mtu, 1450);
    assert_eq!(discovered.from, "172.20.1.2");
    assert_eq!(discovered.reported_by, "worker-1:antrea-tun0");

    let tag = flow_index(&topology, "bulk-tcp");
    let sender = point(&result, "default/sender:eth0");
    let hops: Vec<_> = result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.flow == tag && hop.point == sender)
        .collect();
    let first_error = hops
        .iter()
        .find(|hop| {
            hop.action == HopAction::Deliver
                && netsim::packet::parse_meta(&hop.frame).unwrap().icmp
                    == IcmpKind::Error {
                        icmp_type: 3,
                        code: 4,
                    }
        })
        .expect("the sender got fragmentation-needed")
        .time_ns;
    let sent: Vec<_> = hops
        .iter()
        .filter(|hop| hop.action == HopAction::Send)
        .map(|hop| (hop.time_ns, netsim::packet::parse_meta(&hop.frame).unwrap()))
        .filter(|(_, meta)| meta.key.protocol == PROTOCOL_TCP)
        .collect();
    assert!(
        sent.iter()
            .any(|(time, meta)| *time < first_error && meta.ip_total_len == 1500),
        "full-size segments first"
    );
    let after: Vec<_> = sent
        .iter()
        .filter(|(time, _)| *time >= first_error)
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|(_, meta)| meta.ip_total_len <= 1450),
        "segments of at most 1410 bytes after the ICMP: {:?}",
        after
            .iter()
            .map(|(_, m)| m.ip_total_len)
            .collect::<Vec<_>>()
    );
    assert!(after.iter().any(|(_, meta)| meta.ip_total_len == 1450));
    // Resent at once, not after a retransmission timeout.
    let resent = after.iter().map(|(time, _)| *time).min().unwrap();
    assert!(resent - first_error < 1_000_000, "resent within 1 ms");
}

#[test]
fn an_old_kernel_black_holes_the_transfer() {
    let (topology, result, report) = run("pod-mtu-mismatch");
    let bulk = flow(&report, "bulk-tcp-old-kernel");
    assert_eq!(bulk.verdict, "dropped");
    let drop = bulk.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("legacy-1", "mtu-exceeded")
    );
    assert!(bulk.icmp_received.is_empty(), "no ICMP from a 5.4 kernel");
    assert!(bulk.path_mtu.is_none());
    assert_eq!(bulk.connections.established, 1, "the handshake passes");
    assert_eq!(bulk.connections.failed, 1, "then the connection times out");
    assert_balanced(&report, "bulk-tcp-old-kernel");
    // The first full-size segment is retransmitted again and again.
    let sent = frames_at(
        &topology,
        &result,
        "bulk-tcp-old-kernel",
        "default/old-sender:eth0",
        HopAction::Send,
    );
    let full_size = sent.iter().filter(|p| p.meta.ip_total_len == 1500).count();
    assert!(full_size >= 4, "{full_size} full-size transmissions");
}

#[test]
fn a_datagram_sender_learns_the_path_mtu_and_refuses_larger_datagrams_locally() {
    let (_, _, report) = run("pod-mtu-mismatch");
    let udp = flow(&report, "full-size-udp");
    assert_eq!(udp.verdict, "dropped");
    let drop = udp.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("worker-1", "mtu-exceeded")
    );
    assert_eq!(udp.path_mtu.as_ref().map(|p| p.mtu), Some(1450));
    assert!(
        udp.notes.iter().any(|n| n.starts_with("send: EMSGSIZE")
            && n.contains("1500 bytes exceed the path MTU 1450 to 172.20.1.2")),
        "{:?}",
        udp.notes
    );
    // One datagram on the wire (lost at the tunnel), the ICMP back, one refused locally.
    assert_eq!(
        (udp.packets.sent, udp.packets.delivered, udp.packets.dropped),
        (3, 1, 2)
    );
    // Smaller datagrams from the same pod still pass.
    assert_eq!(flow(&report, "small-udp").verdict, "delivered");
}

const UNREACHABLE: &str = r#"
[topology]
name = "unreachable"
seed = 2

[[segment]]
name = "nodes"
cidr = "10.20.0.0/24"
gateway = "r1"

[[segment]]
name = "transit"
cidr = "10.255.0.0/29"

[[router]]
name = "r1"
interfaces = [ { segment = "transit", ip = "10.255.0.1/29" } ]
static_routes = [ { prefix = "198.51.100.0/24", next_hop = "10.255.0.3" } ]

[[router]]
name = "r3"
interfaces = [ { segment = "transit", ip = "10.255.0.3/29" } ]

[[cluster]]
name = "c1"
node_segment = "nodes"

[[cluster.node]]
name = "worker-1"
ip = "10.20.0.11"

[[cluster.node]]
name = "worker-2"
ip = "10.20.0.12"

[[cluster.pod]]
name = "client"
node = "worker-1"

[[cluster.pod]]
name = "server"
node = "worker-2"
ports = [ { name = "dns", port = 5353, protocol = "UDP" } ]

[[flow]]
name = "syn-to-nowhere"
from = "pod:default/client"
to = "198.51.100.20:443"
protocol = "tcp"

[[flow]]
name = "udp-to-closed-port"
from = "pod:default/client"
to = "pod:default/server:9999"
protocol = "udp"
requests = 3
"#;

#[test]
fn a_syn_answered_by_net_unreachable_ends_at_once() {
    let (topology, result, report) = run_text(UNREACHABLE);
    let syn = flow(&report, "syn-to-nowhere");
    assert_eq!(syn.verdict, "dropped");
    let drop = syn.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("r3", "no-route")
    );
    assert_eq!(syn.connections.failed, 1);
    assert_balanced(&report, "syn-to-nowhere");
    assert!(
        syn.notes
            .iter()
            .any(|n| n.starts_with("connect: ENETUNREACH") && n.contains("10.255.0.3")),
        "{:?}",
        syn.notes
    );
    let sent = frames_at(
        &topology,
        &result,
        "syn-to-nowhere",
        "default/client:eth0",
        HopAction::Send,
    );
    assert_eq!(sent.len(), 1, "one SYN, no retransmission, no reset");
    let errors = frames_at(
        &topology,
        &result,
        "syn-to-nowhere",
        "default/client:eth0",
        HopAction::Deliver,
    );
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].meta.icmp,
        IcmpKind::Error {
            icmp_type: 3,
            code: 0
        }
    );
}

#[test]
fn udp_to_a_closed_port_is_refused_and_the_client_stops() {
    let (topology, result, report) = run_text(UNREACHABLE);
    let udp = flow(&report, "udp-to-closed-port");
    assert_eq!(udp.verdict, "dropped");
    let drop = udp.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("default/server", "no-listener")
    );
    assert!(
        udp.notes
            .iter()
            .any(|n| n.starts_with("recv: ECONNREFUSED")),
        "{:?}",
        udp.notes
    );
    assert_balanced(&report, "udp-to-closed-port");
    let sent = frames_at(
        &topology,
        &result,
        "udp-to-closed-port",
        "default/client:eth0",
        HopAction::Send,
    );
    assert_eq!(
        sent.len(),
        1,
        "connection refused: the other requests are not sent"
    );
    let errors = frames_at(
        &topology,
        &result,
        "udp-to-closed-port",
        "default/client:eth0",
        HopAction::Deliver,
    );
    assert_eq!(
        errors[0].meta.icmp,
        IcmpKind::Error {
            icmp_type: 3,
            code: 3
        }
    );
}
