//! Antrea Egress: selected pods leave as their egress IP through the node that holds
//! it (Geneve with the egress IP as outer destination), everything else keeps the
//! node masquerade, and the loader refuses Egress mistakes with a located error.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::packet::parse_meta;
use netsim::wire::geneve;
use std::net::Ipv4Addr;

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

#[test]
fn the_egress_example_meets_its_expectations_and_accounts_for_every_packet() {
    let (_, _, report) = run("antrea-egress");
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    for name in [
        "prod-to-db",
        "prod-pings-db",
        "batch-to-db",
        "dev-to-db",
        "prod-to-vault",
    ] {
        assert_balanced(&report, name);
    }
}

#[test]
fn a_selected_pod_is_tunnelled_to_the_egress_ip_and_snatted_there() {
    let (topology, result, report) = run("antrea-egress");
    // worker-1 encapsulates shop-1's packets for the egress IP itself.
    let outer = frames_at(
        &topology,
        &result,
        "prod-to-db",
        "worker-1:eth0",
        HopAction::Encapsulate,
    );
    assert!(!outer.is_empty());
    for packet in &outer {
        let key = packet.meta.key;
        assert_eq!(
            (key.source, key.destination, key.destination_port),
            (ip("10.20.0.11"), ip("10.20.0.100"), geneve::UDP_PORT)
        );
        // The inner packet still carries the pod's own address and its TTL: the
        // EgressMark flows skip L3DecTTL.
        let inner = &packet.frame()[14 + 20 + 8 + 8..];
        let meta = parse_meta(inner).unwrap();
        assert_eq!(meta.key.source, ip("172.20.1.2"));
        assert_eq!(meta.key.destination, ip("192.168.50.10"));
        assert_eq!(meta.ttl, 64);
        assert_eq!(
            meta.destination_mac,
            netsim::wire::Mac::ANTREA_GLOBAL_VIRTUAL
        );
    }
    // egress-1 SNATs to the egress IP, keeping the port (netfilter, by the mark).
    let flow = flow(&report, "prod-to-db");
    let snat = flow
        .nat
        .iter()
        .find(|n| n.kind == "snat")
        .expect("an snat record");
    assert_eq!(
        (snat.device.as_str(), snat.component.as_str()),
        ("egress-1", "netfilter")
    );
    assert!(snat.to.starts_with("10.20.0.100:"), "{}", snat.to);
    assert_eq!(
        snat.from.split(':').next_back(),
        snat.to.split(':').next_back(),
        "the original port is kept when unique"
    );
    // The server sees the egress IP with the TTL the egress node's forward left.
    let at_db = frames_at(
        &topology,
        &result,
        "prod-to-db",
        "db:eth0",
        HopAction::Deliver,
    );
    assert!(at_db
        .iter()
        .all(|p| p.meta.key.source == ip("10.20.0.100") && p.meta.ttl == 62));
    // Replies go back through egress-1's tunnel to worker-1, from egress-1's IP.
    let back = frames_at(
        &topology,
        &result,
        "prod-to-db",
        "egress-1:eth0",
        HopAction::Encapsulate,
    );
    assert!(!back.is_empty());
    assert!(back.iter().all(
        |p| (p.meta.key.source, p.meta.key.destination) == (ip("10.20.0.13"), ip("10.20.0.11"))
    ));
}

#[test]
fn a_pool_egress_gets_the_pools_first_address_and_other_traffic_keeps_the_node_masquerade() {
    let (_, _, report) = run("antrea-egress");
    assert_eq!(
        flow(&report, "batch-to-db").seen_source.as_deref(),
        Some("10.20.0.101")
    );
    // Not selected: MASQUERADE on the pod's own node.
    let dev = flow(&report, "dev-to-db");
    assert_eq!(dev.seen_source.as_deref(), Some("10.20.0.11"));
    assert!(dev.nat.iter().all(|n| n.device == "worker-1"));
    // An except CIDR: the same.
    let vault = flow(&report, "prod-to-vault");
    assert_eq!(vault.seen_source.as_deref(), Some("10.20.0.11"));
    assert!(!vault.path.iter().any(|hop| hop.device == "egress-1"));
    // A ping is SNATed by the Egress too (ICMP id kept), and answered.
    let ping = flow(&report, "prod-pings-db");
    assert_eq!(ping.verdict, "delivered");
    assert_eq!(ping.seen_source.as_deref(), Some("10.20.0.100"));
}

#[test]
fn the_egress_node_answers_a_ping_to_its_egress_ip() {
    let text = std::fs::read_to_string(topology_path("antrea-egress"))
        .unwrap()
        .replace(
            "[[flow]]\nname = \"prod-to-db\"",
            "[[flow]]\nname = \"ping-egress-ip\"\nfrom = \"host:db\"\nto = \"10.20.0.100\"\nprotocol = \"icmp\"\n\n[[flow]]\nname = \"prod-to-db\"",
        );
    let (_, _, report) = run_text(&text);
    let ping = flow(&report, "ping-egress-ip");
    assert_eq!(ping.verdict, "delivered", "{ping:#?}");
    assert!(ping.path.iter().any(|hop| hop.device == "egress-1"));
}

const POOL: &str = "[[cluster.external_ip_pool]]\nname = \"batch-pool\"\nip_ranges = [\"10.20.0.101-10.20.0.102\"]\nnodes = [\"egress-1\"]            # the pool's nodeSelector\n";

fn refused(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("egress.toml");
    std::fs::write(&file, text).unwrap();
    let run = netsim(&["check", file.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle} in text"));
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn assert_located(text: &str, needle: &str, message: &str) {
    let stderr = refused(text);
    let (line, column) = position(text, needle);
    assert!(
        stderr.contains(&format!("egress.toml:{line}:{column}: ")),
        "wanted {line}:{column} in {stderr}"
    );
    assert!(stderr.contains(message), "wanted {message:?} in {stderr}");
}

fn example() -> String {
    std::fs::read_to_string(topology_path("antrea-egress")).unwrap()
}

#[test]
fn egress_mistakes_are_located() {
    let text = example().replace("egress_ip = \"10.20.0.100\"", "egress_ip = \"10.99.0.100\"");
    assert_located(
        &text,
        "\"10.99.0.100\"",
        "egress IP 10.99.0.100 is outside segment vks-nodes",
    );
    let text = example().replace("node = \"egress-1\"\nexcept", "node = \"egress-9\"\nexcept");
    assert_located(
        &text,
        "\"egress-9\"",
        "no node named `egress-9` in this cluster",
    );
    let text = example().replace("[\"192.168.60.0/24\"]", "[\"192.168.60.0/33\"]");
    assert_located(&text, "\"192.168.60.0/33\"", "is not a CIDR");
    let text = example().replace("\"10.20.0.101-10.20.0.102\"", "\"10.20.0.101/32\"");
    assert_located(
        &text,
        "\"batch-pool\"  #",
        "external_ip_pool batch-pool has no free address",
    );
    let text = example().replace("operator = \"In\"", "operator = \"Within\"");
    assert_located(&text, "\"Within\"", "unknown selector operator `Within`");
    let text = example().replace(", values = [\"worker\"]", "");
    assert_located(&text, "{ key = \"tier\"", "operator In needs `values`");
    let text = example().replace(
        "traffic_encap_mode = \"encap\"",
        "traffic_encap_mode = \"noEncap\"",
    );
    assert_located(
        &text,
        "[[cluster.egress]]\nname = \"prod-egress\"",
        "works only in encap and hybrid",
    );
    let text = example().replace(POOL, "");
    assert_located(
        &text,
        "\"batch-pool\"  #",
        "unknown external_ip_pool `batch-pool`",
    );
}

#[test]
fn a_tunnelled_packet_for_the_outside_that_no_held_egress_claims_is_dropped() {
    // Take the Geneve packet worker-1 sends for the egress IP and address it to
    // egress-1's own transport IP instead: no Egress is held at that address, so
    // EgressMark drops it (flow 7) instead of letting it out.
    let (topology, result, _) = run("antrea-egress");
    let mut packet = frames_at(
        &topology,
        &result,
        "prod-to-db",
        "worker-1:eth0",
        HopAction::Encapsulate,
    )
    .remove(0);
    let port = packet.meta.key.destination_port;
    packet.set_destination(ip("10.20.0.13"), port);
    let mut network = netsim::sim::network::build(&topology);
    let device = network
        .device_names
        .iter()
        .position(|name| name == "egress-1")
        .unwrap();
    let mut journal = netsim::datapath::Journal::default();
    let mut outputs = netsim::datapath::Outputs::default();
    let mut ctx = netsim::datapath::Ctx {
        now_ns: 0,
        journal: &mut journal,
    };
    network.process(&mut ctx, device, 0, packet, &mut outputs);
    assert!(outputs.packets.is_empty());
    let drop = journal.drops.first().expect("a drop");
    assert_eq!(
        (drop.device.as_str(), drop.reason.name()),
        ("egress-1", "no-egress")
    );
}

#[test]
fn snat_fully_random_ports_randomises_the_egress_and_masquerade_ports() {
    let text = example().replace(
        "traffic_encap_mode = \"encap\"",
        "traffic_encap_mode = \"encap\"\nsnat_fully_random_ports = true",
    );
    let (_, _, report) = run_text(&text);
    for name in ["prod-to-db", "dev-to-db"] {
        let flow = flow(&report, name);
        assert_eq!(flow.verdict, "delivered");
        let snat = flow.nat.iter().find(|n| n.kind == "snat").unwrap();
        assert_ne!(
            snat.from.rsplit(':').next(),
            snat.to.rsplit(':').next(),
            "--random-fully does not keep the original port ({name})"
        );
    }
}
