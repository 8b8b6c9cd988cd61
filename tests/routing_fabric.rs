//! The routing fabric's shape: routes with an origin and several next hops, ECMP by a
//! seeded 5-tuple hash (flows spread, each stays on one path), uRPF strict dropping
//! an asymmetric return, `netsim routes` and route expectations with `next_hop`.

mod common;

use common::*;
use netsim::datapath::HopAction;
use std::collections::{BTreeMap, BTreeSet};

/// corp ── r1 ══(a: via r2, b: via r3)══ far, where the server's gateway is r2, so
/// every answer comes back through r2 whichever way the request went.
fn fabric(r1_extra: &str) -> String {
    format!(
        r#"
[topology]
name = "fabric"
seed = 21

[[segment]]
name = "corp"
cidr = "192.168.50.0/24"
gateway = "r1"

[[segment]]
name = "a"
cidr = "10.0.1.0/24"

[[segment]]
name = "b"
cidr = "10.0.2.0/24"

[[segment]]
name = "far"
cidr = "10.9.0.0/24"
gateway = "r2"

[[router]]
name = "r1"
interfaces = [ {{ segment = "a", ip = "10.0.1.1/24" }}, {{ segment = "b", ip = "10.0.2.1/24" }} ]
{r1_extra}

[[router]]
name = "r2"
interfaces = [ {{ segment = "a", ip = "10.0.1.2/24" }} ]
static_routes = [ {{ prefix = "192.168.50.0/24", next_hop = "10.0.1.1" }} ]

[[router]]
name = "r3"
interfaces = [ {{ segment = "b", ip = "10.0.2.3/24" }}, {{ segment = "far", ip = "10.9.0.3/24" }} ]
static_routes = [ {{ prefix = "192.168.50.0/24", next_hop = "10.0.2.1" }} ]

[[host]]
name = "client"
ip = "192.168.50.10"
segment = "corp"

[[host]]
name = "server"
ip = "10.9.0.10"
segment = "far"
listen = [ {{ protocol = "udp", port = 7000 }} ]

[[flow]]
name = "many"
from = "host:client"
to = "host:server:7000"
protocol = "udp"
connections = 100
"#
    )
}

const ECMP: &str = r#"ecmp = true
static_routes = [ { prefix = "10.9.0.0/24", next_hop = "10.0.1.2" }, { prefix = "10.9.0.0/24", next_hop = "10.0.2.3" } ]

[[expect]]
router = "r1"
prefix = "10.9.0.0/24"
next_hop = "10.0.2.3"
"#;

#[test]
fn ecmp_spreads_flows_and_keeps_each_on_one_path() {
    let (topology, result, report) = run_text(&fabric(ECMP));
    assert_eq!(flow(&report, "many").verdict, "delivered");
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:?}",
        report.expectations
    );
    let tag = flow_index(&topology, "many");
    let mut paths: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for name in ["r1:a", "r1:b"] {
        let at = point(&result, name);
        for hop in result
            .journal
            .hops
            .iter()
            .filter(|h| h.flow == tag && h.point == at && h.action == HopAction::Transmit)
        {
            let meta = netsim::packet::parse_meta(&hop.frame).unwrap();
            paths
                .entry(meta.key.source_port)
                .or_default()
                .insert(name.to_string());
        }
    }
    assert_eq!(paths.len(), 100, "every connection crossed r1");
    assert!(
        paths.values().all(|p| p.len() == 1),
        "each flow stays on one path"
    );
    let via_a = paths.values().filter(|p| p.contains("r1:a")).count();
    assert!(
        (25..=75).contains(&via_a),
        "both paths carry part: {via_a} of 100 via a"
    );
}

#[test]
fn urpf_strict_drops_the_asymmetric_return_and_none_lets_it_through() {
    let through_r3 = r#"static_routes = [ { prefix = "10.9.0.0/24", next_hop = "10.0.2.3" } ]"#;
    let (_, _, strict) = run_text(&fabric(&format!("urpf = \"strict\"\n{through_r3}")));
    let many = flow(&strict, "many");
    // Only the returns die: the client hears nothing back.
    assert_eq!(many.verdict, "no-reply");
    let drop = many.drop.as_ref().unwrap();
    assert_eq!((drop.device.as_str(), drop.reason.as_str()), ("r1", "urpf"));
    assert_eq!(drop.direction, "reply");
    assert!(drop.detail.contains("arrived on a"), "{}", drop.detail);
    let (_, _, none) = run_text(&fabric(&format!("urpf = \"none\"\n{through_r3}")));
    assert_eq!(flow(&none, "many").verdict, "delivered");
}

#[test]
fn routes_prints_every_candidate_and_the_fib_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fabric.toml");
    std::fs::write(&file, fabric(ECMP)).unwrap();
    let output = netsim(&[
        "routes",
        file.to_str().unwrap(),
        "--router",
        "r1",
        "--format",
        "json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let routes: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let routers = routes["routers"].as_array().unwrap();
    assert_eq!(routers.len(), 1);
    assert_eq!(routers[0]["name"], "r1");
    let fib = routers[0]["fib"].as_array().unwrap();
    let far = fib.iter().find(|e| e["prefix"] == "10.9.0.0/24").unwrap();
    assert_eq!(far["origin"], "static");
    assert_eq!(far["next_hops"].as_array().unwrap().len(), 2);
    let rib = routers[0]["rib"].as_array().unwrap();
    assert!(rib.iter().all(|c| c["best"] == true));
    for key in [
        "prefix",
        "next_hop",
        "origin",
        "as_path",
        "local_pref",
        "med",
        "best",
        "reason",
    ] {
        assert!(rib[0].get(key).is_some(), "rib entries carry `{key}`");
    }
    let unknown = netsim(&["routes", file.to_str().unwrap(), "--router", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
}
