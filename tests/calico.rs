//! Calico (reference §f): IPAM blocks per node and borrowed /32s, BIRD on every node
//! (mesh, route reflectors, BGPPeers), the kernel routes Felix and BIRD program,
//! IP-in-IP and VXLAN by mode, routed veths, natOutgoing.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::wire::{Mac, PROTOCOL_IPIP, PROTOCOL_UDP};
use std::net::Ipv4Addr;

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(topology_path(name)).unwrap()
}

/// The FIB entry of `prefix` on a router or node of a `routes` JSON.
fn fib_entry<'a>(device: &'a serde_json::Value, prefix: &str) -> &'a serde_json::Value {
    device["fib"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {}", device["name"]))
}

/// `netsim run` of `text` into a fresh directory; returns it and the output dir.
fn run_to_dir(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = run_into_dir(dir.path(), "calico", text);
    (dir, out)
}

/// Every encapsulated frame of `cross-rack` leaving worker-a1, checked to go from
/// node to node with TTL 64 and `protocol` outside.
fn outer_frames_of_cross_rack(
    topology: &netsim::topology::Topology,
    result: &netsim::sim::runner::RunResult,
    protocol: u8,
) -> Vec<netsim::packet::Packet> {
    let outer = frames_at(
        topology,
        result,
        "cross-rack",
        "worker-a1:eth0",
        HopAction::Encapsulate,
    );
    assert!(!outer.is_empty());
    for packet in &outer {
        let key = packet.meta.key;
        assert_eq!(
            (key.source, key.destination, key.protocol, packet.meta.ttl),
            (ip("10.30.1.11"), ip("10.30.2.11"), protocol, 64)
        );
    }
    outer
}

#[test]
fn the_tor_learns_each_block_from_its_node_and_the_borrowed_address_as_a_32() {
    let routes = routes_json(&example("calico-bgp-tor"));
    let tor = router(&routes, "tor");
    for (prefix, next_hop) in [
        ("192.168.0.0/26", "10.30.1.11 (rack-a)"),
        ("192.168.0.64/26", "10.30.1.12 (rack-a)"),
        ("192.168.0.128/26", "10.30.2.11 (rack-b)"),
        // worker-b1's pod holds 192.168.0.20 of worker-a1's block: the /32 wins.
        ("192.168.0.20/32", "10.30.2.11 (rack-b)"),
    ] {
        let entry = fib_entry(tor, prefix);
        assert_eq!(entry["origin"], "ebgp");
        assert_eq!(
            entry["next_hops"],
            serde_json::json!([next_hop]),
            "{prefix}"
        );
    }
    let sessions = tor["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3);
    assert!(sessions.iter().all(|s| s["state"] == "established"));

    let a1 = device(&routes, "nodes", "worker-a1");
    // Its own block is a blackhole; its pod a /32 on the veth (Felix).
    assert_eq!(
        fib_entry(a1, "192.168.0.0/26")["next_hops"],
        serde_json::json!(["directly connected (blackhole)"])
    );
    let pod_route = fib_entry(a1, "192.168.0.1/32");
    assert_eq!(pod_route["origin"], "felix");
    assert!(pod_route["next_hops"][0]
        .as_str()
        .unwrap()
        .starts_with("directly connected (cali"));
    // CrossSubnet: the rack-b block through tunl0, the rack-a neighbour's straight.
    assert_eq!(
        fib_entry(a1, "192.168.0.128/26")["next_hops"],
        serde_json::json!(["10.30.2.11 (tunl0)"])
    );
    assert_eq!(
        fib_entry(a1, "192.168.0.64/26")["next_hops"],
        serde_json::json!(["10.30.1.12 (eth0)"])
    );
    // The node subnet stays the connected route (BIRD's direct protocol wins).
    assert_eq!(fib_entry(a1, "10.30.1.0/24")["origin"], "connected");
    let mesh: Vec<&str> = a1["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        mesh,
        [
            "established (iBGP)",
            "established (iBGP)",
            "established (eBGP)"
        ]
    );
    // Only pool routes leave a node (calico_export_to_bgp_peers): the ToR's
    // connected networks reach each node from the ToR alone.
    let learned_corp = a1["rib"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["prefix"] == "172.16.60.0/24")
        .count();
    assert_eq!(learned_corp, 1);
}

#[test]
fn ipip_crosses_racks_and_same_rack_traffic_is_routed_as_is() {
    let text = example("calico-bgp-tor");
    let (topology, result, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    for name in [
        "same-rack",
        "cross-rack",
        "to-borrowed",
        "to-client",
        "client-to-pod",
    ] {
        assert_balanced(&report, name);
    }
    outer_frames_of_cross_rack(&topology, &result, PROTOCOL_IPIP);
    // Routed twice (worker-a1, worker-b1): the pod sees TTL 62, from the veth MAC.
    let delivered = frames_at(
        &topology,
        &result,
        "cross-rack",
        "default/web-b:eth0",
        HopAction::Deliver,
    );
    assert!(!delivered.is_empty());
    assert!(delivered.iter().all(|p| p.meta.ttl == 62));
    assert!(delivered
        .iter()
        .all(|p| p.meta.source_mac == Mac([0xee; 6])));
    // The pod's own frames go to ee:ee:ee:ee:ee:ee (proxy ARP for 169.254.1.1).
    let sent = frames_at(
        &topology,
        &result,
        "cross-rack",
        "default/client:eth0",
        HopAction::Send,
    );
    assert!(sent
        .iter()
        .all(|p| p.meta.destination_mac == Mac([0xee; 6])));
    let same_rack = frames_at(
        &topology,
        &result,
        "same-rack",
        "worker-a1:eth0",
        HopAction::Transmit,
    );
    assert!(!same_rack.is_empty());
    assert!(same_rack
        .iter()
        .all(|p| p.meta.key.protocol != PROTOCOL_IPIP
            && p.meta.key.destination == ip("192.168.0.65")));
    // natOutgoing: to the client, from the node IP; from the client, no NAT.
    let to_client = flow(&report, "to-client");
    assert_eq!(to_client.seen_source.as_deref(), Some("10.30.2.11"));
    assert_eq!(to_client.nat[0].kind, "snat");
    // natOutgoing's MASQUERADE is --random-fully: the pod's port is not kept.
    let (from_port, to_port) = (
        to_client.nat[0].from.rsplit(':').next().unwrap(),
        to_client.nat[0].to.rsplit(':').next().unwrap(),
    );
    assert_ne!(from_port, to_port);
    assert!(flow(&report, "client-to-pod").nat.is_empty());

    let (_dir, out) = run_to_dir(&text);
    lint(
        &["--min-packets", "4"],
        &[
            &out.join("capture.pcapng"),
            &out.join("flows/cross-rack.pcapng"),
        ],
    );
    // tunl0 carries bare IP (link type RAW), as tcpdump shows it; eth0 the outer
    // IPv4 with protocol 4.
    let tshark = std::process::Command::new("tshark")
        .args(["-r", out.join("flows/cross-rack.pcapng").to_str().unwrap()])
        .args([
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.protocols",
        ])
        .output()
        .expect("tshark runs");
    let lines = String::from_utf8(tshark.stdout).unwrap();
    assert!(lines.contains("worker-a1:tunl0\traw:ip:tcp"), "{lines}");
    assert!(
        lines.contains("worker-a1:eth0\teth:ethertype:ip:ip:tcp"),
        "{lines}"
    );
}

#[test]
fn vxlan_mode_uses_vxlan_calico_with_vni_4096_and_a_smaller_pod_mtu() {
    let text = example("calico-bgp-tor").replace(
        "ipip_mode = \"CrossSubnet\"",
        "ipip_mode = \"Never\"\nvxlan_mode = \"CrossSubnet\"",
    );
    let (topology, result, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    assert_eq!(topology.clusters[0].pod_mtu(), 1450);
    for packet in &outer_frames_of_cross_rack(&topology, &result, PROTOCOL_UDP) {
        assert_eq!(packet.meta.key.destination_port, 4789);
        // VXLAN header: flags 0x08, VNI 4096 in bytes 4..7.
        let vxlan = &packet.frame()[14 + 20 + 8..14 + 20 + 16];
        assert_eq!(vxlan, [0x08, 0, 0, 0, 0, 0x10, 0, 0]);
    }
    // Felix programs the pool routes: via the peer's VTEP on vxlan.calico.
    let routes = routes_json(&text);
    let a1 = device(&routes, "nodes", "worker-a1");
    let entry = fib_entry(a1, "192.168.0.128/26");
    assert_eq!(entry["origin"], "felix");
    assert_eq!(
        entry["next_hops"],
        serde_json::json!(["192.168.0.128 (vxlan.calico)"])
    );
    assert_eq!(
        fib_entry(a1, "192.168.0.64/26")["next_hops"][0],
        "10.30.1.12 (eth0)"
    );
    let (_dir, out) = run_to_dir(&text);
    lint(
        &["--min-packets", "4"],
        &[&out.join("flows/cross-rack.pcapng")],
    );
}

#[test]
fn route_reflectors_pass_blocks_on_with_the_owning_node_as_next_hop() {
    let text = example("calico-route-reflectors");
    let (_, _, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    let routes = routes_json(&text);
    let worker = device(&routes, "nodes", "worker-1");
    let peers: Vec<&str> = worker["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["peer"].as_str().unwrap())
        .collect();
    assert_eq!(
        peers,
        ["10.50.0.11", "10.50.0.12"],
        "no mesh: only the reflectors"
    );
    // worker-3's block reaches worker-1 through a reflector, next hop unchanged.
    assert_eq!(
        fib_entry(worker, "192.168.1.0/26")["next_hops"],
        serde_json::json!(["10.50.0.23 (eth0)"])
    );
    let tor = router(&routes, "tor");
    for (prefix, next_hop) in [
        ("192.168.0.128/26", "10.50.0.21 (rack)"),
        ("192.168.1.0/26", "10.50.0.23 (rack)"),
    ] {
        assert_eq!(
            fib_entry(tor, prefix)["next_hops"],
            serde_json::json!([next_hop])
        );
    }
    assert_eq!(routes["bgp_converged"], true);
}

#[test]
fn a_peer_with_the_wrong_as_stays_down_and_says_why() {
    let text = example("calico-bgp-tor").replace(
        "{ ip = \"10.30.2.1\", asn = 65001,",
        "{ ip = \"10.30.2.1\", asn = 65002,",
    );
    let routes = routes_json(&text);
    let b1 = device(&routes, "nodes", "worker-b1");
    let session = b1["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["peer"] == "10.30.2.1")
        .unwrap();
    assert_eq!(session["state"], "down");
    assert_eq!(
        session["reason"],
        "tor is in AS 65001, configured here as AS 65002"
    );
    let tor = router(&routes, "tor");
    let back = tor["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["peer"] == "10.30.2.11")
        .unwrap();
    assert_eq!(back["state"], "down", "a session is down at both ends");
    // The ToR still learns worker-b1's block, from the rack-a nodes, which keep the
    // original next hop (keepOriginalNextHop).
    let learned: Vec<&str> = tor["rib"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["prefix"] == "192.168.0.128/26")
        .map(|c| c["next_hop"].as_str().unwrap())
        .collect();
    assert_eq!(
        learned,
        ["10.30.2.11", "10.30.2.11"],
        "from worker-a1 and worker-a2"
    );
    assert_eq!(
        fib_entry(tor, "192.168.0.128/26")["next_hops"],
        serde_json::json!(["10.30.2.11 (rack-b)"])
    );
}

#[test]
fn plain_routed_pods_cross_racks_through_the_tor_without_encapsulation() {
    let text =
        example("calico-bgp-tor").replace("ipip_mode = \"CrossSubnet\"", "ipip_mode = \"Never\"");
    let (topology, result, report) = run_text(&text);
    assert_eq!(topology.clusters[0].pod_mtu(), 1500);
    let cross = flow(&report, "cross-rack");
    assert_eq!(cross.verdict, "delivered");
    // No tunnel address is taken: web-b holds the first address of worker-b1's block.
    let web_b = topology.clusters[0]
        .pods
        .iter()
        .find(|p| p.name == "web-b")
        .unwrap()
        .ip;
    assert_eq!(web_b, ip("192.168.0.128"));
    let on_wire = frames_at(
        &topology,
        &result,
        "cross-rack",
        "tor:rack-b",
        HopAction::Transmit,
    );
    assert!(!on_wire.is_empty());
    assert!(on_wire
        .iter()
        .all(|p| p.meta.key.destination == web_b && p.meta.ttl == 62));
}

#[test]
fn kube_proxy_on_a_calico_node_answers_the_health_check_port() {
    let base = example("calico-bgp-tor");
    let base = base[..base.find("[[flow]]").unwrap()].replace(
        "name = \"web-a\"\nnode = \"worker-a2\"",
        "name = \"web-a\"\nnode = \"worker-a2\"\nlabels = { app = \"web\" }",
    );
    let text = format!(
        "{base}\n[[cluster.service]]\nname = \"web\"\ntype = \"LoadBalancer\"\nexternal_traffic_policy = \"Local\"\nselector = {{ app = \"web\" }}\nports = [ {{ port = 80, target_port = \"http\" }} ]\nload_balancer_ip = \"172.16.61.10\"\nload_balancer = {{ router = \"tor\" }}\n\
         \n[[flow]]\nname = \"a1\"\nfrom = \"host:client\"\nto = \"healthcheck:worker-a1/default/web\"\n\
         \n[[flow]]\nname = \"a2\"\nfrom = \"host:client\"\nto = \"healthcheck:worker-a2/default/web\"\n"
    );
    let (topology, result, report) = run_text(&text);
    let status = |name: &str| -> String {
        frames_at(&topology, &result, name, "client:eth0", HopAction::Deliver)
            .iter()
            .find_map(|p| {
                let frame = p.frame();
                let at = frame.windows(9).position(|w| w == b"HTTP/1.1 ")?;
                Some(String::from_utf8_lossy(&frame[at + 9..at + 12]).to_string())
            })
            .unwrap_or_default()
    };
    assert_eq!(flow(&report, "a1").verdict, "delivered");
    assert_eq!(status("a1"), "503", "worker-a1 has no web pod");
    assert_eq!(status("a2"), "200", "worker-a2 runs web-a");
    assert_eq!(
        netsim::report::path_devices(&flow(&report, "a2").path),
        ["client", "tor", "worker-a2", "worker-a2/kube-proxy"]
    );
}

#[test]
fn felix_enforces_network_policy_in_the_forward_chain_statefully() {
    // web-b accepts only the client pod on http; web-a's egress is closed.
    let text = std::fs::read_to_string(topology_path("calico-bgp-tor"))
        .unwrap()
        .replace(
            "[[cluster.pod]]\nname = \"client\"\nnode = \"worker-a1\"\n",
            "[[cluster.pod]]\nname = \"client\"\nnode = \"worker-a1\"\nlabels = { app = \"client\" }\n",
        )
        .replace(
            "[[cluster.pod]]\nname = \"web-b\"\nnode = \"worker-b1\"\n",
            "[[cluster.pod]]\nname = \"web-b\"\nnode = \"worker-b1\"\nlabels = { app = \"web-b\" }\n",
        )
        .replace(
            "[[cluster.pod]]\nname = \"web-a\"\nnode = \"worker-a2\"\n",
            "[[cluster.pod]]\nname = \"web-a\"\nnode = \"worker-a2\"\nlabels = { app = \"web-a\" }\n",
        )
        .replacen(
            "[[flow]]",
            "[[cluster.network_policy]]\nname = \"web-b-from-client\"\npod_selector = { match_labels = { app = \"web-b\" } }\ningress = [ { from = [ { pod_selector = { match_labels = { app = \"client\" } } } ], ports = [ { port = \"http\" } ] } ]\n\n[[cluster.network_policy]]\nname = \"web-a-no-egress\"\npod_selector = { match_labels = { app = \"web-a\" } }\npolicy_types = [\"Egress\"]\n\n[[flow]]",
            1,
        );
    let (_, _, report) = run_text(&text);
    // The client reaches web-b (and its answers come back through the ESTABLISHED
    // accept).
    let cross = flow(&report, "cross-rack");
    assert_eq!(cross.verdict, "delivered");
    assert_eq!(
        cross.policy[0].rule,
        "network_policy:default/web-b-from-client ingress[0]"
    );
    assert_eq!(cross.policy[0].device, "worker-b1");
    // The corporate host is not the client pod: dropped on web-b's node.
    let host = flow(&report, "client-to-pod");
    assert_eq!(host.verdict, "dropped");
    let drop = host.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("worker-b1", "policy")
    );
    assert!(drop
        .detail
        .contains("default-deny by isolation: default/web-b-from-client"));
    // web-a may send nothing: its own node drops it (egress).
    let borrowed = flow(&report, "to-borrowed");
    assert_eq!(borrowed.verdict, "dropped");
    assert_eq!(borrowed.drop.as_ref().unwrap().device, "worker-a2");
    assert_eq!(borrowed.policy[0].direction, "egress");
}
