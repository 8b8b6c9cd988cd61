//! Services (reference §c): AntreaProxy in OVS for pods, kube-proxy in the host stack
//! for node ports (and for everything on Calico); endpoints chosen uniformly and kept
//! per connection; traffic policies; the extra hop and its SNAT; rejects without
//! endpoints, each in the translating component's way.

mod common;

use common::*;
use netsim::datapath::HopAction;
use netsim::packet::tcp_flags;
use netsim::wire::PROTOCOL_UDP;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn example(name: &str) -> String {
    std::fs::read_to_string(topology_path(name)).unwrap()
}

/// The example with its flows replaced by `flows`.
fn with_flows(name: &str, flows: &str) -> String {
    let text = example(name);
    format!("{}\n{flows}", &text[..text.find("[[flow]]").unwrap()])
}

#[test]
fn the_services_example_meets_its_expectations_and_its_captures_are_clean() {
    let text = example("antrea-services");
    let (_, _, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    for flow in &report.flows {
        assert_balanced(&report, &flow.name);
    }
    // Who translated, in the report.
    let clusterip = flow(&report, "pod-to-clusterip");
    assert!(clusterip
        .nat
        .iter()
        .all(|n| n.component == "AntreaProxy" && n.device == "worker-1"));
    let nodeport = flow(&report, "nodeport-cluster");
    let kinds: Vec<(&str, &str)> = nodeport
        .nat
        .iter()
        .map(|n| (n.kind.as_str(), n.component.as_str()))
        .collect();
    assert!(kinds.contains(&("dnat", "kube-proxy")), "{kinds:?}");
    assert!(kinds.contains(&("snat", "netfilter")), "{kinds:?}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = dir.path().join("services.toml");
    std::fs::write(&file, &text).unwrap();
    let output = netsim(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(output.status.success() || output.status.code() == Some(1));
    lint(&["--min-packets", "4"], &[&out.join("capture.pcapng")]);
}

#[test]
fn a_thousand_connections_spread_over_three_endpoints_and_each_keeps_its_own() {
    let text = with_flows(
        "antrea-services",
        "[[flow]]\nname = \"many\"\nfrom = \"pod:app01/client-1\"\nto = \"svc:app01/web:80\"\nconnections = 1000\n",
    );
    let (topology, result, report) = run_text(&text);
    assert_eq!(flow(&report, "many").verdict, "delivered");
    let endpoints: BTreeMap<Ipv4Addr, &str> = [
        ("172.20.2.2", "app01/web-1:eth0"),
        ("172.20.2.3", "app01/web-2:eth0"),
        ("172.20.2.4", "app01/web-3:eth0"),
    ]
    .into_iter()
    .map(|(address, point)| (ip(address), point))
    .collect();
    let mut by_client_port: BTreeMap<u16, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    let mut connections: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (&address, point) in &endpoints {
        for packet in frames_at(&topology, &result, "many", point, HopAction::Deliver) {
            assert_eq!(packet.meta.key.destination, address);
            by_client_port
                .entry(packet.meta.key.source_port)
                .or_default()
                .insert(address);
            if packet.meta.tcp_flags & tcp_flags::SYN != 0 {
                *connections.entry(address).or_default() += 1;
            }
        }
    }
    // Every packet of a connection went to the endpoint its first one got.
    assert_eq!(by_client_port.len(), 1000);
    assert!(by_client_port.values().all(|set| set.len() == 1));
    // Uniform: 1000/3 each, within five standard deviations (sqrt(1000·1/3·2/3) ≈ 15).
    assert_eq!(connections.values().sum::<usize>(), 1000);
    for (address, count) in &connections {
        assert!((259..=408).contains(count), "{address}: {count} of 1000");
    }
}

#[test]
fn a_node_port_under_cluster_takes_the_extra_hop_over_geneve_snated_to_the_gateway() {
    let (topology, result, report) = run_text(&example("antrea-services"));
    let flow_report = flow(&report, "nodeport-cluster");
    assert_eq!(flow_report.seen_source.as_deref(), Some("172.20.1.1"));
    let outer = frames_at(
        &topology,
        &result,
        "nodeport-cluster",
        "worker-1:eth0",
        HopAction::Encapsulate,
    );
    assert!(!outer.is_empty());
    for packet in &outer {
        let key = packet.meta.key;
        assert_eq!(
            (
                key.source,
                key.destination,
                key.protocol,
                key.destination_port
            ),
            (ip("10.20.0.11"), ip("10.20.0.12"), PROTOCOL_UDP, 6081)
        );
    }
    // The reply returns through worker-1, which puts the node port back as source.
    let replies = frames_at(
        &topology,
        &result,
        "nodeport-cluster",
        "db:eth0",
        HopAction::Deliver,
    );
    assert!(!replies.is_empty());
    assert!(replies
        .iter()
        .all(|p| { (p.meta.key.source, p.meta.key.source_port) == (ip("10.20.0.11"), 30080) }));
    // Under Local the client's address reaches the pod, and a node without an
    // endpoint drops silently (no ICMP: KUBE-MARK-DROP).
    assert_eq!(
        flow(&report, "nodeport-local").seen_source.as_deref(),
        Some("192.168.50.10")
    );
    let miss = flow(&report, "nodeport-local-miss");
    assert_eq!(miss.drop.as_ref().unwrap().reason, "no-endpoints");
    assert!(miss.icmp_received.is_empty());
}

#[test]
fn antrea_proxy_rejects_a_service_without_endpoints_from_the_service_address() {
    let text = with_flows(
        "antrea-services",
        "[[flow]]\nname = \"tcp\"\nfrom = \"pod:app01/client-1\"\nto = \"svc:app01/retired:80\"\n\
         \n[[flow]]\nname = \"udp\"\nfrom = \"pod:app01/client-1\"\nto = \"svc:app01/retired:80\"\nprotocol = \"udp\"\n",
    )
    .replace(
        "ports = [ { port = 80 } ]",
        "ports = [ { name = \"tcp\", port = 80 }, { name = \"udp\", port = 80, protocol = \"UDP\" } ]",
    );
    let (topology, result, report) = run_text(&text);
    let vip = topology.clusters[0]
        .services
        .iter()
        .find(|s| s.name == "retired")
        .unwrap()
        .cluster_ip;
    let resets = frames_at(
        &topology,
        &result,
        "tcp",
        "app01/client-1:eth0",
        HopAction::Deliver,
    );
    assert_eq!(resets.len(), 1);
    let reset = &resets[0];
    assert_eq!(
        (reset.meta.key.source, reset.meta.key.source_port),
        (vip, 80)
    );
    assert_eq!(
        reset.meta.tcp_flags & (tcp_flags::RST | tcp_flags::ACK),
        tcp_flags::RST | tcp_flags::ACK
    );
    let tcp = flow(&report, "tcp");
    assert_eq!(tcp.verdict, "dropped");
    assert_eq!(tcp.drop.as_ref().unwrap().reason, "no-endpoints");
    let udp = flow(&report, "udp");
    assert_eq!(udp.icmp_received, [format!("type 3 code 10 from {vip}")]);
    assert_eq!(udp.drop.as_ref().unwrap().reason, "no-endpoints");
}

#[test]
fn kube_proxy_on_calico_rejects_with_port_unreachable_and_masquerades_a_hairpin() {
    let base = example("calico-bgp-tor");
    let base = base[..base.find("[[flow]]").unwrap()].replace(
        "name = \"web-a\"\nnode = \"worker-a2\"",
        "name = \"web-a\"\nnode = \"worker-a2\"\nlabels = { app = \"web\" }",
    );
    let text = format!(
        "{base}\n[[cluster.service]]\nname = \"web\"\nselector = {{ app = \"web\" }}\nports = [ {{ port = 80, target_port = \"http\" }} ]\n\
         \n[[cluster.service]]\nname = \"retired\"\nselector = {{ app = \"retired\" }}\nports = [ {{ port = 80 }} ]\n\
         \n[[flow]]\nname = \"to-svc\"\nfrom = \"pod:default/client\"\nto = \"svc:default/web:80\"\n\
         \n[[flow]]\nname = \"hairpin\"\nfrom = \"pod:default/web-a\"\nto = \"svc:default/web:80\"\n\
         \n[[flow]]\nname = \"refused\"\nfrom = \"pod:default/client\"\nto = \"svc:default/retired:80\"\n"
    );
    let (_, _, report) = run_text(&text);
    let to_svc = flow(&report, "to-svc");
    assert_eq!(to_svc.verdict, "delivered");
    assert_eq!(to_svc.seen_source.as_deref(), Some("192.168.0.1"));
    assert!(to_svc
        .nat
        .iter()
        .all(|n| n.device == "worker-a1" && n.component == "kube-proxy"));
    // A pod reaching itself through its Service is masqueraded (KUBE-MARK-MASQ in
    // KUBE-SEP), so the reply comes back through the node.
    let hairpin = flow(&report, "hairpin");
    assert_eq!(hairpin.verdict, "delivered");
    assert_eq!(hairpin.seen_source.as_deref(), Some("10.30.1.12"));
    let refused = flow(&report, "refused");
    assert_eq!(refused.icmp_received, ["type 3 code 3 from 10.30.1.11"]);
    assert_eq!(refused.drop.as_ref().unwrap().reason, "no-endpoints");
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_endpoint() {
    let text = with_flows(
        "antrea-services",
        "[[flow]]\nname = \"sticky\"\nfrom = \"pod:app01/client-1\"\nto = \"svc:app01/web:80\"\nconnections = 40\n\
         \n[[flow]]\nname = \"spread\"\nfrom = \"pod:app01/client-1\"\nto = \"svc:app01/web-spread:80\"\nconnections = 40\n",
    )
    .replace(
        "cluster_ip = \"10.96.0.50\"\nselector = { app = \"web\" }",
        "cluster_ip = \"10.96.0.50\"\nsession_affinity = \"ClientIP\"\nselector = { app = \"web\" }",
    )
    .replace(
        "[[cluster.service]]\nname = \"retired\"",
        "[[cluster.service]]\nname = \"web-spread\"\nnamespace = \"app01\"\nselector = { app = \"web\" }\nports = [ { port = 80, target_port = \"http\" } ]\n\n[[cluster.service]]\nname = \"retired\"",
    );
    let (topology, result, report) = run_text(&text);
    let endpoints_of = |name: &str| -> BTreeSet<Ipv4Addr> {
        ["app01/web-1:eth0", "app01/web-2:eth0", "app01/web-3:eth0"]
            .iter()
            .flat_map(|point| frames_at(&topology, &result, name, point, HopAction::Deliver))
            .map(|p| p.meta.key.destination)
            .collect()
    };
    assert_eq!(flow(&report, "sticky").verdict, "delivered");
    assert_eq!(endpoints_of("sticky").len(), 1, "ClientIP: one endpoint");
    assert_eq!(endpoints_of("spread").len(), 3, "no affinity: all three");
}

#[test]
fn node_port_local_allocates_61000_up_per_node_and_dnats_without_snat() {
    let (topology, _, report) = run_text(&example("antrea-services"));
    let mappings: Vec<(String, String, String)> = report
        .node_port_local
        .iter()
        .map(|m| (m.pod.clone(), m.node_address.clone(), m.pod_address.clone()))
        .collect();
    assert_eq!(
        mappings,
        [
            (
                "app01/web-1".into(),
                "10.20.0.12:61000".into(),
                "172.20.2.2:8080".into()
            ),
            (
                "app01/web-2".into(),
                "10.20.0.12:61001".into(),
                "172.20.2.3:8080".into()
            ),
            (
                "app01/web-3".into(),
                "10.20.0.12:61002".into(),
                "172.20.2.4:8080".into()
            ),
        ]
    );
    let npl = flow(&report, "node-port-local");
    assert_eq!(npl.seen_source.as_deref(), Some("192.168.50.10"));
    assert_eq!(npl.nat.len(), 2, "{:?}", npl.nat);
    assert!(npl
        .nat
        .iter()
        .all(|n| n.device == "worker-2" && n.kind.ends_with("dnat")));
    assert_eq!(
        topology
            .flows
            .iter()
            .find(|f| f.name == "node-port-local")
            .unwrap()
            .destination_port,
        61001
    );
}

#[test]
fn an_icmp_error_from_the_endpoint_reaches_the_client_from_the_service_address() {
    // UDP to a Service port whose endpoint listens on nothing: the pod answers
    // port unreachable; AntreaProxy translates it back (outer source and quote).
    let text = with_flows(
        "antrea-services",
        "[[flow]]\nname = \"udp\"\nfrom = \"pod:app01/client-1\"\nto = \"svc:app01/dns:53\"\nprotocol = \"udp\"\n",
    )
    .replace(
        "[[cluster.service]]\nname = \"retired\"",
        "[[cluster.service]]\nname = \"dns\"\nnamespace = \"app01\"\ncluster_ip = \"10.96.0.53\"\nselector = { app = \"web\" }\nports = [ { port = 53, protocol = \"UDP\" } ]\n\n[[cluster.service]]\nname = \"retired\"",
    );
    let (topology, result, report) = run_text(&text);
    let udp = flow(&report, "udp");
    assert_eq!(udp.icmp_received, ["type 3 code 3 from 10.96.0.53"]);
    assert_eq!(udp.drop.as_ref().unwrap().reason, "no-listener");
    let errors = frames_at(
        &topology,
        &result,
        "udp",
        "app01/client-1:eth0",
        HopAction::Deliver,
    );
    let quoted = netsim::packet::quoted_flow_key(&errors[0]).unwrap();
    assert_eq!(
        (quoted.destination, quoted.destination_port),
        (ip("10.96.0.53"), 53)
    );
    assert!(report
        .flows
        .iter()
        .find(|f| f.name == "udp")
        .unwrap()
        .nat
        .iter()
        .any(|n| n.kind == "undnat-related" && n.component == "AntreaProxy"));
}

#[test]
fn load_balancer_vips_on_an_nsx_tier1_reach_pods_by_nodeport_and_nodeportlocal() {
    let text = example("nsx-loadbalancer");
    let (_, _, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    // nodeport: the LB's automap SNAT, then kube-proxy's masquerade on the node.
    let nodeport = flow(&report, "client-to-lb-nodeport");
    assert_eq!(nodeport.verdict, "delivered");
    let components: BTreeSet<(&str, &str)> = nodeport
        .nat
        .iter()
        .map(|n| (n.device.as_str(), n.component.as_str()))
        .collect();
    assert!(
        components.contains(&("t1-vks", "load-balancer")),
        "{components:?}"
    );
    assert!(
        components.iter().any(|(_, c)| *c == "kube-proxy"),
        "{components:?}"
    );
    // nodeportlocal: straight to the pod's node on its NPL port; the pod sees the LB.
    let npl = flow(&report, "client-to-lb-npl");
    assert_eq!(npl.seen_source.as_deref(), Some("10.20.0.1"));
    assert!(npl
        .nat
        .iter()
        .any(|n| n.to.ends_with("10.20.0.12:61000") || n.to.ends_with("10.20.0.11:61000")));
    // The Tier-1 advertises each VIP once; the Tier-0 holds them.
    let routes = routes_json(&text);
    let t0 = router(&routes, "t0");
    let vips: Vec<&str> = t0["fib"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["origin"] == "t1-lb-vip")
        .map(|e| e["prefix"].as_str().unwrap())
        .collect();
    assert_eq!(
        vips,
        ["10.20.100.10/32", "10.20.100.11/32", "10.20.100.12/32"]
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let file = dir.path().join("lb.toml");
    std::fs::write(&file, &text).unwrap();
    assert!(netsim(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap()
    ])
    .status
    .success());
    lint(&["--min-packets", "4"], &[&out.join("capture.pcapng")]);
}

#[test]
fn a_pod_reaching_a_load_balancer_vip_is_translated_on_its_own_node() {
    let text = with_flows(
        "nsx-loadbalancer",
        "[[flow]]\nname = \"pod-to-lb\"\nfrom = \"pod:app01/api-1\"\nto = \"lb:app01/web:80\"\n",
    );
    let (_, _, report) = run_text(&text);
    let inside = flow(&report, "pod-to-lb");
    assert_eq!(inside.verdict, "delivered");
    // AntreaProxy short-circuits the VIP (Cluster semantics): the pod's address
    // reaches the endpoint and the Tier-1 never sees the connection.
    assert_eq!(inside.seen_source.as_deref(), Some("172.20.2.3"));
    assert!(inside.path.iter().all(|hop| hop.device != "t1-vks"));
    assert!(inside
        .nat
        .iter()
        .all(|n| n.device == "worker-2" && n.component == "AntreaProxy"));
}

#[test]
fn with_proxy_all_antrea_proxy_load_balances_node_ports_in_ovs() {
    let text = example("antrea-services").replacen(
        "node_segment = \"vks-nodes\"\n",
        "node_segment = \"vks-nodes\"\n\n[cluster.antrea]\nproxy_all = true\n",
        1,
    );
    let (_, _, report) = run_text(&text);
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    // The host only redirects (to 169.254.0.252, antrea-agent's rule); OVS picks the
    // endpoint and SNATs to antrea-gw0's address; kube-proxy is not involved.
    let nodeport = flow(&report, "nodeport-cluster");
    assert_eq!(nodeport.seen_source.as_deref(), Some("172.20.1.1"));
    let by: BTreeSet<(&str, &str)> = nodeport
        .nat
        .iter()
        .map(|n| (n.component.as_str(), n.kind.as_str()))
        .collect();
    assert!(by.contains(&("antrea-agent", "dnat")), "{by:?}");
    assert!(by.contains(&("AntreaProxy", "dnat")), "{by:?}");
    assert!(by.contains(&("AntreaProxy", "snat")), "{by:?}");
    assert!(
        by.iter().all(|(component, _)| *component != "kube-proxy"),
        "{by:?}"
    );
    assert!(nodeport.nat.iter().any(|n| n.to == "169.254.0.252:30080"));
}

#[test]
fn kube_proxy_answers_the_health_check_node_port_with_200_or_503() {
    let base = example("nsx-loadbalancer");
    let base = base[..base.find("[[flow]]").unwrap()].replace(
        "[[cluster.pod]]\nname = \"api-1\"",
        "[[cluster.pod]]\nname = \"web-solo\"\nnamespace = \"app01\"\nnode = \"worker-1\"\nlabels = { app = \"solo\" }\nports = [ { name = \"http\", port = 8080 } ]\n\n[[cluster.pod]]\nname = \"api-1\"",
    );
    let text = format!(
        "{base}\n[[cluster.service]]\nname = \"solo\"\nnamespace = \"app01\"\ntype = \"LoadBalancer\"\nexternal_traffic_policy = \"Local\"\nselector = {{ app = \"solo\" }}\nports = [ {{ port = 80, target_port = \"http\" }} ]\nload_balancer_ip = \"10.20.100.13\"\nload_balancer = {{ router = \"t1-vks\" }}\n\
         \n[[flow]]\nname = \"health-1\"\nfrom = \"host:client\"\nto = \"healthcheck:worker-1/app01/solo\"\n\
         \n[[flow]]\nname = \"health-2\"\nfrom = \"host:client\"\nto = \"healthcheck:worker-2/app01/solo\"\n"
    );
    let (topology, result, report) = run_text(&text);
    let status = |name: &str| -> String {
        let answers = frames_at(&topology, &result, name, "client:eth0", HopAction::Deliver);
        answers
            .iter()
            .find_map(|p| {
                let frame = p.frame();
                let at = frame.windows(9).position(|w| w == b"HTTP/1.1 ")?;
                Some(String::from_utf8_lossy(&frame[at + 9..at + 12]).to_string())
            })
            .unwrap_or_default()
    };
    assert_eq!(flow(&report, "health-1").verdict, "delivered");
    assert_eq!(status("health-1"), "200", "worker-1 has the endpoint");
    assert_eq!(status("health-2"), "503", "worker-2 has none");
    let port = topology.clusters[0]
        .services
        .iter()
        .find(|s| s.name == "solo")
        .unwrap()
        .health_check_node_port
        .unwrap();
    assert!((30000..=32767).contains(&port));
}

#[test]
fn an_antrea_pod_reaching_itself_through_its_service_is_snated_to_the_gateway() {
    let text = with_flows(
        "antrea-services",
        "[[flow]]\nname = \"hairpin\"\nfrom = \"pod:app01/web-1\"\nto = \"svc:app01/solo:80\"\n",
    )
    .replace(
        "[[cluster.service]]\nname = \"retired\"",
        "[[cluster.service]]\nname = \"solo\"\nnamespace = \"app01\"\nselector = { app = \"web\", solo = \"yes\" }\nports = [ { port = 80, target_port = \"http\" } ]\n\n[[cluster.service]]\nname = \"retired\"",
    )
    .replacen(
        "name = \"web-1\"\nnamespace = \"app01\"\nnode = \"worker-2\"\nlabels = { app = \"web\" }",
        "name = \"web-1\"\nnamespace = \"app01\"\nnode = \"worker-2\"\nlabels = { app = \"web\", solo = \"yes\" }",
        1,
    );
    let (_, _, report) = run_text(&text);
    let hairpin = flow(&report, "hairpin");
    assert_eq!(hairpin.verdict, "delivered");
    assert_eq!(hairpin.seen_source.as_deref(), Some("172.20.2.1"));
    assert!(hairpin
        .nat
        .iter()
        .any(|n| n.component == "AntreaProxy" && n.kind == "snat"));
}

#[test]
fn internal_traffic_policy_local_uses_only_the_clients_node_and_drops_without_one() {
    let text = with_flows(
        "antrea-services",
        "[[flow]]\nname = \"local-miss\"\nfrom = \"pod:app01/client-1\"\nto = \"svc:app01/web-internal:80\"\n\
         \n[[flow]]\nname = \"local-hit\"\nfrom = \"pod:app01/web-1\"\nto = \"svc:app01/web-internal:80\"\nconnections = 8\n",
    )
    .replace(
        "[[cluster.service]]\nname = \"retired\"",
        "[[cluster.service]]\nname = \"web-internal\"\nnamespace = \"app01\"\ninternal_traffic_policy = \"Local\"\nselector = { app = \"web\" }\nports = [ { port = 80, target_port = \"http\" } ]\n\n[[cluster.service]]\nname = \"retired\"",
    );
    let (_, _, report) = run_text(&text);
    // client-1 runs on worker-1, where no web pod is: no endpoint for it.
    let miss = flow(&report, "local-miss");
    assert_eq!(miss.verdict, "dropped");
    assert_eq!(miss.drop.as_ref().unwrap().reason, "no-endpoints");
    // web-1 on worker-2 only ever reaches worker-2's pods.
    let hit = flow(&report, "local-hit");
    assert_eq!(hit.verdict, "delivered");
    assert!(hit.path.iter().all(|hop| hop.device != "worker-1"));
}

#[test]
fn a_clusterip_backend_without_routes_to_the_pods_dies_no_route() {
    let text = with_flows(
        "nsx-loadbalancer",
        "[[flow]]\nname = \"direct\"\nfrom = \"host:client\"\nto = \"lb:app01/web-direct:80\"\n",
    )
    .replace(
        "[[cluster.service]]\nname = \"web-ranges\"",
        "[[cluster.service]]\nname = \"web-direct\"\nnamespace = \"app01\"\ntype = \"LoadBalancer\"\nselector = { app = \"web\" }\nports = [ { port = 80, target_port = \"http\" } ]\nload_balancer_ip = \"10.20.100.14\"\nload_balancer = { router = \"t1-vks\", backend = \"clusterip\" }\n\n[[cluster.service]]\nname = \"web-ranges\"",
    );
    let (_, _, report) = run_text(&text);
    let direct = flow(&report, "direct");
    assert_eq!(direct.verdict, "dropped");
    let drop = direct.drop.as_ref().unwrap();
    // The Tier-1 load balancer picked a pod address; with Geneve pods nothing routes
    // it: the Tier-1 sends it up its default route and the Tier-0 has none.
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("t0", "no-route")
    );
    assert!(direct
        .nat
        .iter()
        .any(|n| n.device == "t1-vks" && n.to.contains("172.20.")));
}
