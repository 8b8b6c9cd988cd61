//! Pod egress to the outside: the default masquerade, several connections at once,
//! and what happens with `no_snat` when nothing routes the pod CIDR back.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::packet::{parse_meta, tcp_flags};
use std::collections::BTreeSet;

fn quickstart_with(
    antrea: &str,
    flows: &str,
) -> (
    netsim::topology::Topology,
    netsim::sim::runner::RunResult,
    netsim::report::Report,
) {
    let text = std::fs::read_to_string(topology_path("quickstart")).unwrap();
    let text = text.replace(
        "tunnel_type = \"geneve\"",
        &format!("tunnel_type = \"geneve\"\n{antrea}"),
    );
    let text = format!("{}{flows}", &text[..text.find("[[flow]]").unwrap()]);
    let topology = netsim::topology::parse("egress.toml", &text).unwrap();
    let result = netsim::sim::runner::run(&topology);
    let report = netsim::report::build(&topology, &result);
    (topology, result, report)
}

#[test]
fn parallel_connections_each_get_their_own_source_port_and_masquerade_binding() {
    let flows = "[[flow]]\nname = \"pool\"\nfrom = \"pod:app01/client-1\"\nto = \"host:db\"\nconnections = 3\nrequests = 2\nbytes = 300\n";
    let (topology, result, report) = quickstart_with("", flows);
    let flow = flow(&report, "pool");
    assert_eq!(flow.verdict, "delivered");
    assert_eq!(
        (
            flow.connections.attempted,
            flow.connections.established,
            flow.connections.failed
        ),
        (3, 3, 0)
    );
    assert_eq!(flow.nat.iter().filter(|n| n.kind == "snat").count(), 3);
    let tag = flow_index(&topology, "pool");
    let db = point(&result, "db:eth0");
    let ports: BTreeSet<u16> = result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.flow == tag && hop.point == db && hop.action == HopAction::Deliver)
        .map(|hop| parse_meta(&hop.frame).unwrap())
        .inspect(|meta| assert_eq!(meta.key.source.to_string(), "10.20.0.11"))
        .map(|meta| meta.key.source_port)
        .collect();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        flow.packets.sent,
        flow.packets.delivered + flow.packets.dropped
    );
}

#[test]
fn without_snat_the_reply_is_lost_and_the_client_retransmits_its_syn() {
    let flows =
        "[[flow]]\nname = \"unrouted-return\"\nfrom = \"pod:app01/client-1\"\nto = \"host:db\"\n";
    let (topology, result, report) = quickstart_with("no_snat = true", flows);
    let flow = flow(&report, "unrouted-return");
    // The lost reply: the SYN got there, only answers died on the way back.
    assert_eq!(flow.verdict, "no-reply");
    assert_eq!(
        flow.seen_source.as_deref(),
        Some("172.20.1.11"),
        "the host saw the pod IP"
    );
    assert!(flow.nat.is_empty());
    let drop = flow.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("r1", "no-route"),
        "nothing routes 172.20.0.0/16 back"
    );
    assert_eq!(drop.direction, "reply");
    let tag = flow_index(&topology, "unrouted-return");
    let client = point(&result, "app01/client-1:eth0");
    let syns = result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.flow == tag && hop.point == client && hop.action == HopAction::Send)
        .filter(|hop| {
            parse_meta(&hop.frame).unwrap().tcp_flags & (tcp_flags::SYN | tcp_flags::ACK)
                == tcp_flags::SYN
        })
        .count();
    assert!(syns >= 3, "SYN retransmissions, got {syns}");
    let synacks_at_client = result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.flow == tag && hop.point == client && hop.action == HopAction::Deliver)
        .count();
    assert_eq!(synacks_at_client, 0, "no SYN-ACK ever reaches the pod");
    assert_eq!(
        flow.packets.sent,
        flow.packets.delivered + flow.packets.dropped
    );
}

#[test]
fn an_expectation_with_from_and_to_runs_its_own_probe() {
    let flows = "[[expect]]\nfrom = \"pod:app01/web-2\"\nto = \"host:db\"\nprotocol = \"udp\"\nport = 40053\nverdict = \"delivered\"\nseen_source = \"10.20.0.12\"\n\n\
                 [[expect]]\nfrom = \"host:db\"\nto = \"pod:app01/web-1\"\nverdict = \"dropped\"\ndropped_by = \"no-route@r1\"\n";
    let (topology, _, report) = quickstart_with("", flows);
    assert_eq!(topology.flows.len(), 2, "one probe flow per expectation");
    assert_eq!(flow(&report, "expect-1").protocol, "udp");
    assert_eq!(flow(&report, "expect-1").destination, "192.168.50.10:40053");
    assert_eq!(flow(&report, "expect-2").destination, "172.20.1.10:8080");
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
}

#[test]
fn no_snat_behind_an_nsx_tier1_urpf_drops_the_request_and_routed_pods_work() {
    let text = std::fs::read_to_string(topology_path("egress-no-snat")).unwrap();
    let (_, _, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    // With uRPF off the SYN gets there and the answer is what dies: the lost reply.
    let text = text.replace("kind = \"nsx-t1\"", "kind = \"nsx-t1\"\nurpf = \"none\"");
    let (_, _, report) = run_text(&text);
    let lost = flow(&report, "overlay-to-db");
    assert_eq!(lost.verdict, "no-reply");
    assert_eq!(lost.seen_source.as_deref(), Some("172.20.0.2"));
    let drop = lost.drop.as_ref().unwrap();
    assert_eq!(
        (
            drop.device.as_str(),
            drop.reason.as_str(),
            drop.direction.as_str()
        ),
        ("t1", "no-route", "reply")
    );
    assert_eq!(flow(&report, "routed-to-db").verdict, "delivered");
}

#[test]
fn a_ping_goes_through_the_masquerade_and_back() {
    let flows = "[[flow]]\nname = \"ping\"\nfrom = \"pod:app01/client-1\"\nto = \"host:db\"\nprotocol = \"icmp\"\nrequests = 3\n";
    let (_, _, report) = quickstart_with("", flows);
    let ping = flow(&report, "ping");
    assert_eq!(ping.verdict, "delivered");
    assert_eq!(ping.seen_source.as_deref(), Some("10.20.0.11"));
    assert!(ping.nat.iter().any(|n| n.kind == "snat"));
    assert!(ping.nat.iter().any(|n| n.kind == "unsnat"));
}

#[test]
fn a_small_conntrack_table_refuses_new_connections_as_conntrack_full() {
    let flows = "[[flow]]\nname = \"burst\"\nfrom = \"pod:app01/client-1\"\nto = \"host:db\"\nconnections = 6\n";
    let text = std::fs::read_to_string(topology_path("quickstart")).unwrap();
    let text = format!(
        "{}{flows}",
        &text[..text.find("[[flow]]").unwrap()].replace("seed = 7", "seed = 7\nconntrack_max = 3")
    );
    let (_, _, report) = run_text(&text);
    let burst = flow(&report, "burst");
    assert_eq!(burst.verdict, "dropped");
    assert_eq!(burst.drop.as_ref().unwrap().reason, "conntrack-full");
    assert_eq!(burst.connections.established, 3);
    assert_balanced(&report, "burst");
}

#[test]
fn behind_an_nsx_tier1_snat_a_pod_is_translated_twice_and_answered_through_both() {
    let text = std::fs::read_to_string(topology_path("nsx-double-nat")).unwrap();
    let (_, _, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    let flow = flow(&report, "pod-to-client");
    assert_eq!(flow.seen_source.as_deref(), Some("10.20.200.5"));
    let snats: Vec<(&str, &str, &str)> = flow
        .nat
        .iter()
        .filter(|n| n.kind == "snat")
        .map(|n| (n.device.as_str(), n.component.as_str(), n.to.as_str()))
        .collect();
    assert!(snats
        .iter()
        .any(|(d, c, to)| *d == "worker-2" && *c == "netfilter" && to.starts_with("10.20.0.12:")));
    assert!(snats
        .iter()
        .any(|(d, c, to)| *d == "t1-vks" && *c == "nsx-snat" && to.starts_with("10.20.200.5:")));
    // The Tier-1 advertises its NAT address to the Tier-0.
    let routes = routes_json(&text);
    let t0 = router(&routes, "t0");
    assert!(t0["fib"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["prefix"] == "10.20.200.5/32" && e["origin"] == "t1-nat"));
}

#[test]
fn tier1_snat_rules_match_in_order_a_no_snat_rule_first_and_a_range_pool_after() {
    let text = std::fs::read_to_string(topology_path("nsx-double-nat"))
        .unwrap()
        .replace(
            "snat = [ { match_source = \"10.20.0.0/24\", translated = \"10.20.200.5\" } ]",
            "snat = [\n  { name = \"keep-worker-1\", action = \"no_snat\", match_source = \"10.20.0.11/32\" },\n  { name = \"namespace\", match_source = \"10.20.0.0/24\", translated = \"10.20.200.5-10.20.200.6\" },\n]",
        )
        .replace("seen_source = \"10.20.200.5\"\n", "")
        .replace(
            "[[flow]]\nname = \"client-to-pod-ip\"",
            "[[flow]]\nname = \"web-to-client\"\nfrom = \"pod:app01/web-1\"\nto = \"host:client\"\nprotocol = \"tcp\"\n\n[[flow]]\nname = \"client-to-pod-ip\"",
        );
    let (_, _, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    // worker-1 matches the no_snat rule first: the client sees its node IP.
    let web = flow(&report, "web-to-client");
    assert_eq!(web.verdict, "delivered");
    assert_eq!(web.seen_source.as_deref(), Some("10.20.0.11"));
    assert!(!web.nat.iter().any(|n| n.device == "t1-vks"));
    // worker-2 falls to the namespace rule and leaves as one address of the range.
    let api = flow(&report, "pod-to-client");
    assert_eq!(api.verdict, "delivered");
    let seen = api.seen_source.clone().unwrap();
    assert!(seen == "10.20.200.5" || seen == "10.20.200.6", "{seen}");
    // Both addresses of the range are advertised as NAT /32s.
    let routes = routes_json(&text);
    let t0 = router(&routes, "t0");
    for prefix in ["10.20.200.5/32", "10.20.200.6/32"] {
        assert!(
            t0["fib"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["prefix"] == prefix && e["origin"] == "t1-nat"),
            "{prefix}"
        );
    }
}

/// Quickstart with `pods` load pods on worker-1 and the flows given.
fn load_topology(pods: usize, flows: &str) -> String {
    let text = std::fs::read_to_string(topology_path("quickstart")).unwrap();
    let mut text = text[..text.find("[[cluster.pod]]").unwrap()].replace(
        "listen = [ { protocol = \"tcp\", port = 5432 }, { protocol = \"udp\", port = 40053 } ]",
        "listen = [ { protocol = \"tcp\", port = 5432 }, { protocol = \"tcp\", port = 5433 } ]",
    );
    for pod in 1..=pods {
        text.push_str(&format!(
            "[[cluster.pod]]\nname = \"load-{pod}\"\nnamespace = \"app01\"\nnode = \"worker-1\"\n\n"
        ));
    }
    text + flows
}

#[test]
fn tens_of_thousands_of_connections_exhaust_the_masquerade_at_the_port_class_limit() {
    // Three pods open 25,000 connections each to db:5432 at once: 75,000 want the
    // node IP's 64,512 ports of the 1024-65535 class toward that one destination.
    let mut flows = String::new();
    for pod in 1..=3 {
        flows.push_str(&format!(
            "[[flow]]\nname = \"load-{pod}\"\nfrom = \"pod:app01/load-{pod}\"\nto = \"host:db:5432\"\nprotocol = \"tcp\"\nconnections = 25000\n\n"
        ));
    }
    // A fourth pod, later, to another port of the same server: its tuples are
    // unique again, so it gets ports (its own, kept).
    flows.push_str("[[flow]]\nname = \"other-port\"\nfrom = \"pod:app01/load-4\"\nto = \"host:db:5433\"\nprotocol = \"tcp\"\nconnections = 200\nstart = \"10ms\"\n");
    let topology = netsim::topology::parse("exhaust.toml", &load_topology(4, &flows)).unwrap();
    let result = netsim::sim::runner::run(&topology);
    let report = netsim::report::build(&topology, &result);
    let mut established = 0;
    let mut failed = 0;
    for pod in 1..=3 {
        let connections = &flow(&report, &format!("load-{pod}")).connections;
        assert_eq!(connections.attempted, 25_000);
        established += connections.established;
        failed += connections.failed;
        for reason in connections.failure_reasons.keys() {
            assert_eq!(reason, "snat-ports-exhausted");
        }
        assert_balanced(&report, &format!("load-{pod}"));
    }
    // The class holds 64,512 ports; the bounded search (128 tries, halving) may give
    // up a little before the last one is taken, as the kernel does.
    assert!(established <= 64_512, "{established}");
    assert!(established >= 64_000, "{established}");
    assert_eq!(established + failed, 75_000);
    let exhausted = flow(&report, "load-3")
        .drop
        .as_ref()
        .expect("a drop is reported");
    assert_eq!(
        (exhausted.device.as_str(), exhausted.reason.as_str()),
        ("worker-1", "snat-ports-exhausted")
    );
    let other = &flow(&report, "other-port").connections;
    assert_eq!((other.established, other.failed), (200, 0));
    // Every translated port stays in the class of the original (>= 1024).
    assert!(flow(&report, "load-1")
        .nat
        .iter()
        .filter(|n| n.kind == "snat")
        .all(|n| n.to.rsplit(':').next().unwrap().parse::<u32>().unwrap() >= 1024));
}

#[test]
fn behind_a_tier1_snat_address_the_tier1_runs_out_of_ports_at_the_same_limit() {
    // Two nodes masquerade 33,000 connections each to client:443 (well inside each
    // node IP's class); the Tier-1 SNATs all 66,000 to the namespace's one /32 and
    // runs out at its 64,512 ports.
    let text = std::fs::read_to_string(topology_path("nsx-double-nat")).unwrap();
    let mut text = text[..text.find("[[cluster.pod]]").unwrap()].to_string();
    let mut flows = String::new();
    for node in 1..=2 {
        for pod in 1..=3 {
            text.push_str(&format!(
                "[[cluster.pod]]\nname = \"load-{node}-{pod}\"\nnamespace = \"app01\"\nnode = \"worker-{node}\"\n\n"
            ));
            flows.push_str(&format!(
                "[[flow]]\nname = \"load-{node}-{pod}\"\nfrom = \"pod:app01/load-{node}-{pod}\"\nto = \"host:client:443\"\nprotocol = \"tcp\"\nconnections = 11000\n\n"
            ));
        }
    }
    let topology = netsim::topology::parse("t1.toml", &(text + &flows)).unwrap();
    let result = netsim::sim::runner::run(&topology);
    let report = netsim::report::build(&topology, &result);
    let (mut established, mut failed) = (0, 0);
    for node in 1..=2 {
        for pod in 1..=3 {
            let flow = flow(&report, &format!("load-{node}-{pod}"));
            established += flow.connections.established;
            failed += flow.connections.failed;
            for reason in flow.connections.failure_reasons.keys() {
                assert_eq!(reason, "snat-ports-exhausted");
            }
            if let Some(drop) = &flow.drop {
                assert_eq!(
                    (drop.device.as_str(), drop.reason.as_str()),
                    ("t1-vks", "snat-ports-exhausted")
                );
            }
        }
    }
    assert!((64_000..=64_512).contains(&established), "{established}");
    assert_eq!(established + failed, 66_000);
}

#[test]
fn an_ncp_per_service_snat_pool_wins_over_the_namespace_rule_for_its_backend_pods() {
    let text = std::fs::read_to_string(topology_path("egress-no-snat"))
        .unwrap()
        .replace(
            "kind = \"nsx-t1\"",
            "kind = \"nsx-t1\"\nsnat = [ { name = \"namespace\", match_source = \"172.21.0.0/16\", translated = \"10.30.0.5\" } ]",
        )
        .replace(
            "[[cluster.pod]]\nname = \"app\"\nnode = \"b-worker-1\"\n",
            "[[cluster.pod]]\nname = \"app\"\nnode = \"b-worker-1\"\nlabels = { app = \"web\" }\nports = [ { port = 8080 } ]\n\n[[cluster.pod]]\nname = \"batch\"\nnode = \"b-worker-1\"\n\n[[cluster.service]]\nname = \"web\"\nselector = { app = \"web\" }\nports = [ { port = 80, target_port = 8080 } ]\nsnat_pool = \"10.30.0.16-10.30.0.31\"\n",
        );
    let text = format!(
        "{}[[flow]]\nname = \"batch-to-db\"\nfrom = \"pod:routed/default/batch\"\nto = \"host:db:5432\"\n",
        text
    );
    let (_, _, report) = run_text(&text);
    // The Service's backend pod leaves as the Service's SNAT address ...
    let web = flow(&report, "routed-to-db");
    assert_eq!(web.verdict, "delivered");
    assert_eq!(web.seen_source.as_deref(), Some("10.30.0.16"));
    // ... any other pod of the namespace as the namespace's.
    let batch = flow(&report, "batch-to-db");
    assert_eq!(batch.verdict, "delivered");
    assert_eq!(batch.seen_source.as_deref(), Some("10.30.0.5"));
}

#[test]
fn a_snat_pool_without_an_nsx_tier1_in_front_is_refused() {
    let text = std::fs::read_to_string(topology_path("quickstart"))
        .unwrap()
        .replace(
            "[[cluster.deployment]]",
            "[[cluster.service]]\nname = \"web\"\nnamespace = \"app01\"\nselector = { app = \"web\" }\nports = [ { port = 80, target_port = 8080 } ]\nsnat_pool = \"10.30.0.16-10.30.0.31\"\n\n[[cluster.deployment]]",
        );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.toml");
    std::fs::write(&file, &text).unwrap();
    let run = netsim(&["check", file.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8(run.stderr).unwrap();
    let at = text.find("\"10.30.0.16-10.30.0.31\"").unwrap();
    let line = text[..at].matches('\n').count() + 1;
    assert!(stderr.contains(&format!("pool.toml:{line}:")), "{stderr}");
    assert!(stderr.contains("needs an nsx-t1 gateway"), "{stderr}");
}
