//! Routed pods for Antrea (docs/noencap-hybrid-modes.md): `hybrid` routes between
//! nodes of one subnet and tunnels between subnets; `noEncap` never tunnels and
//! relies on the underlay, which an NSX Tier-1 provides with one static route per
//! node pod CIDR; nodes on several segments.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::wire::{PROTOCOL_TCP, PROTOCOL_UDP};

fn hybrid() -> String {
    std::fs::read_to_string(topology_path("antrea-hybrid")).unwrap()
}

#[test]
fn hybrid_tunnels_across_subnets_only() {
    let (topology, result, report) = run("antrea-hybrid");
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    let on_wire = |flow: &str| {
        frames_at(
            &topology,
            &result,
            flow,
            "worker-a1:eth0",
            HopAction::Transmit,
        )
        .into_iter()
        .chain(frames_at(
            &topology,
            &result,
            flow,
            "worker-a1:eth0",
            HopAction::Encapsulate,
        ))
        .map(|p| (p.meta.key.protocol, p.meta.key.destination_port))
        .collect::<Vec<_>>()
    };
    let same = on_wire("same-rack");
    assert!(!same.is_empty());
    assert!(
        same.iter().all(|(protocol, _)| *protocol == PROTOCOL_TCP),
        "routed: {same:?}"
    );
    let cross = on_wire("cross-rack");
    assert!(!cross.is_empty());
    assert!(
        cross.iter().all(|k| *k == (PROTOCOL_UDP, 6081)),
        "Geneve between subnets: {cross:?}"
    );
    // Routed through two host stacks (worker-a1, worker-a2): TTL 62 at the pod.
    let delivered = frames_at(
        &topology,
        &result,
        "same-rack",
        "default/web-a:eth0",
        HopAction::Deliver,
    );
    assert!(
        delivered.iter().all(|p| p.meta.ttl == 62),
        "{:?}",
        delivered[0].meta
    );
}

#[test]
fn no_encap_routes_every_pod_packet_through_the_tier1_static_routes() {
    let text = hybrid()
        .replace(
            "traffic_encap_mode = \"hybrid\"",
            "traffic_encap_mode = \"noEncap\"",
        )
        .replace("name = \"antrea-hybrid\"", "name = \"antrea-noencap\"");
    let (topology, result, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    assert_eq!(
        topology.clusters[0].antrea.pod_mtu, 1500,
        "no tunnel overhead"
    );
    let frames = frames_at(
        &topology,
        &result,
        "cross-rack",
        "t1-vks:rack-b",
        HopAction::Transmit,
    );
    assert!(!frames.is_empty());
    assert!(
        frames.iter().all(|p| p.meta.key.protocol == PROTOCOL_TCP),
        "no Geneve"
    );
    // pod -> worker-a1 -> t1-vks -> worker-b1 -> pod: three routed hops.
    let delivered = frames_at(
        &topology,
        &result,
        "cross-rack",
        "default/web-b:eth0",
        HopAction::Deliver,
    );
    assert!(delivered.iter().all(|p| p.meta.ttl == 61));
}

#[test]
fn no_encap_behind_a_router_without_pod_routes_has_no_route() {
    let text = hybrid()
        .replace("traffic_encap_mode = \"hybrid\"", "traffic_encap_mode = \"noEncap\"")
        .replace("kind = \"nsx-t1\"", "kind = \"router\"")
        .replace(
            "[[expect]]                      # the integration's static route for worker-b1's pods\nrouter = \"t1-vks\"\nprefix = \"172.20.3.0/24\"\nnext_hop = \"10.20.2.11\"\n",
            "",
        );
    let (_, _, report) = run_text(&text);
    let cross = flow(&report, "cross-rack");
    assert_eq!(cross.verdict, "dropped");
    let drop = cross.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("t1-vks", "no-route")
    );
    // On one subnet the nodes route to each other directly.
    assert_eq!(flow(&report, "same-rack").verdict, "delivered");
}
