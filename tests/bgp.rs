//! BGP and NSX routing computed like the real control planes: advertisement, route
//! maps and aggregates at the Tier-0, sessions that stay down with their reason,
//! BIRD's best-path order with AS-path loop prevention, route reflection.

mod common;

use common::*;

#[test]
fn the_nsx_example_meets_its_expectations_and_the_tor_sees_only_the_summary() {
    let (_, _, report) = run("nsx-t1-t0-bgp");
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    let text = std::fs::read_to_string(topology_path("nsx-t1-t0-bgp")).unwrap();
    let routes = routes_json(&text);
    let tor = router(&routes, "tor");
    let fib = tor["fib"].as_array().unwrap();
    let summary = fib.iter().find(|e| e["prefix"] == "10.20.0.0/16").unwrap();
    assert_eq!(summary["origin"], "ebgp");
    assert_eq!(
        summary["next_hops"].as_array().unwrap().len(),
        2,
        "ECMP over both uplinks"
    );
    assert!(fib
        .iter()
        .all(|e| !e["prefix"].as_str().unwrap().starts_with("172.20.")));
    let sessions = tor["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(sessions.iter().all(|s| s["state"] == "established"));
    let t0 = router(&routes, "t0");
    let advertised = t0["rib"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prefix"] == "10.20.0.0/24")
        .unwrap();
    assert_eq!(advertised["origin"], "t1-connected");
    assert_eq!(advertised["next_hop"], "100.64.0.1");
    assert_eq!(advertised["interface"], "transit");
}

const TRIANGLE: &str = r#"
[topology]
name = "triangle"

[[segment]]
name = "ab"
cidr = "10.0.12.0/24"

[[segment]]
name = "at"
cidr = "10.0.13.0/24"

[[segment]]
name = "bt"
cidr = "10.0.23.0/24"

[[segment]]
name = "lan-a"
cidr = "10.99.0.0/24"
gateway = "a"

[[router]]
name = "a"
interfaces = [ { segment = "ab", ip = "10.0.12.1/24" }, { segment = "at", ip = "10.0.13.1/24" } ]
bgp = { asn = 100, neighbors = [ { ip = "10.0.12.2", asn = 200 }, { ip = "10.0.13.3", asn = 300 } ] }

[[router]]
name = "b"
interfaces = [ { segment = "ab", ip = "10.0.12.2/24" }, { segment = "bt", ip = "10.0.23.2/24" } ]
bgp = { asn = 200, neighbors = [ { ip = "10.0.12.1", asn = 100 }, { ip = "10.0.23.3", asn = 300 } ] }

[[router]]
name = "tor"
kind = "tor"
interfaces = [ { segment = "at", ip = "10.0.13.3/24" }, { segment = "bt", ip = "10.0.23.3/24" } ]
bgp = { asn = 300, neighbors = [ { ip = "10.0.13.1", asn = 100 }, { ip = "10.0.23.2", asn = BT_ASN } ] }
"#;

#[test]
fn the_shorter_as_path_wins_and_a_speaker_rejects_its_own_as() {
    let routes = routes_json(&TRIANGLE.replace("BT_ASN", "200"));
    let tor = router(&routes, "tor");
    let candidates: Vec<&serde_json::Value> = tor["rib"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["prefix"] == "10.99.0.0/24")
        .collect();
    assert_eq!(candidates.len(), 2, "{candidates:?}");
    let best = candidates.iter().find(|c| c["best"] == true).unwrap();
    assert_eq!(best["as_path"], serde_json::json!([100]));
    assert_eq!(best["next_hop"], "10.0.13.1");
    let lost = candidates.iter().find(|c| c["best"] == false).unwrap();
    assert_eq!(lost["as_path"], serde_json::json!([200, 100]));
    assert!(
        lost["reason"]
            .as_str()
            .unwrap()
            .contains("shorter AS path (1 < 2)"),
        "{lost}"
    );
    // a never takes back its own prefix through b or the ToR (AS 100 in the path).
    let a = router(&routes, "a");
    assert!(a["rib"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["prefix"] == "10.99.0.0/24")
        .all(|c| c["origin"] == "connected"));
}

#[test]
fn a_session_with_the_wrong_asn_stays_down_and_says_why() {
    let routes = routes_json(&TRIANGLE.replace("BT_ASN", "201"));
    let tor = router(&routes, "tor");
    let down = tor["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["peer"] == "10.0.23.2")
        .unwrap();
    assert_eq!(down["state"], "down");
    assert_eq!(down["reason"], "b is in AS 200, configured here as AS 201");
    let b = router(&routes, "b");
    let back = b["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["peer"] == "10.0.23.3")
        .unwrap();
    assert_eq!(back["state"], "down");
    assert!(
        back["reason"].as_str().unwrap().contains("expects AS 201"),
        "{back}"
    );
    // Without that session the ToR still learns the prefix from a, once.
    assert_eq!(
        tor["rib"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["prefix"] == "10.99.0.0/24")
            .count(),
        1
    );
}

const REFLECTION: &str = r#"
[topology]
name = "reflection"

[[segment]]
name = "core"
cidr = "10.1.0.0/24"

[[segment]]
name = "lan-1"
cidr = "10.11.0.0/24"
gateway = "c1"

[[router]]
name = "rr"
interfaces = [ { segment = "core", ip = "10.1.0.1/24" } ]
bgp = { asn = 65000, neighbors = [ { ip = "10.1.0.11", asn = 65000, route_reflector_client = CLIENT }, { ip = "10.1.0.12", asn = 65000, route_reflector_client = CLIENT } ] }

[[router]]
name = "c1"
interfaces = [ { segment = "core", ip = "10.1.0.11/24" } ]
bgp = { asn = 65000, neighbors = [ { ip = "10.1.0.1", asn = 65000 } ] }

[[router]]
name = "c2"
interfaces = [ { segment = "core", ip = "10.1.0.12/24" } ]
bgp = { asn = 65000, neighbors = [ { ip = "10.1.0.1", asn = 65000 } ] }
"#;

#[test]
fn ibgp_routes_reach_another_client_only_through_a_route_reflector() {
    let reflected = routes_json(&REFLECTION.replace("CLIENT", "true"));
    let c2 = router(&reflected, "c2");
    let route = c2["fib"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == "10.11.0.0/24")
        .expect("c2 learns c1's LAN through the reflector");
    assert_eq!(route["origin"], "ibgp");
    assert!(
        route["next_hops"][0]
            .as_str()
            .unwrap()
            .starts_with("10.1.0.11"),
        "{route}"
    );
    let split = routes_json(&REFLECTION.replace("CLIENT", "false"));
    let c2 = router(&split, "c2");
    assert!(
        c2["fib"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["prefix"] != "10.11.0.0/24"),
        "iBGP split horizon: rr does not pass an iBGP route to another iBGP peer"
    );
}

#[test]
fn bad_routing_input_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            REFLECTION.replace("CLIENT", "true").replace("{ ip = \"10.1.0.1\", asn = 65000 } ] }\n\n[[router]]\nname = \"c2\"", "{ ip = \"10.9.9.9\", asn = 65000 } ] }\n\n[[router]]\nname = \"c2\""),
            "BGP neighbor 10.9.9.9 is not on a subnet router c1 is attached to",
        ),
        (
            TRIANGLE.replace("BT_ASN", "200").replace("name = \"b\"\n", "name = \"b\"\nuplink = { router = \"a\", ip = \"100.64.0.1\" }\n"),
            "`uplink` is for an NSX Tier-1",
        ),
        (
            TRIANGLE.replace("BT_ASN", "200").replace("name = \"tor\"\nkind = \"tor\"\n", "name = \"tor\"\nkind = \"tor\"\nroute_map_out = [ { action = \"deny\", prefix = \"10.0.0.0/16\", le = 8 } ]\n"),
            "`le` 8 is outside 16..32",
        ),
    ];
    for (text, message) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let output = netsim(&["check", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{message}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{stderr}");
        assert!(
            stderr.starts_with(&format!("{}:", file.display())),
            "{stderr}"
        );
    }
}

#[test]
fn an_ibgp_next_hop_off_the_subnet_is_resolved_through_another_route() {
    let text = r#"
[topology]
name = "recursive"

[[segment]]
name = "core"
cidr = "10.1.0.0/24"

[[segment]]
name = "edge"
cidr = "10.2.0.0/24"
gateway = "c2"                # near's replies take c2's BGP route, resolved via rr
gateway_ip = "10.2.0.12"

[[segment]]
name = "lan-1"
cidr = "10.11.0.0/24"
gateway = "c1"

[[router]]
name = "rr"
interfaces = [ { segment = "core", ip = "10.1.0.1/24" }, { segment = "edge", ip = "10.2.0.1/24" } ]
bgp = { asn = 65000, neighbors = [ { ip = "10.1.0.11", asn = 65000, route_reflector_client = true }, { ip = "10.2.0.12", asn = 65000, route_reflector_client = true } ] }

[[router]]
name = "c1"
interfaces = [ { segment = "core", ip = "10.1.0.11/24" } ]
static_routes = [ { prefix = "10.2.0.0/24", next_hop = "10.1.0.1" } ]
bgp = { asn = 65000, neighbors = [ { ip = "10.1.0.1", asn = 65000 } ] }

[[router]]
name = "c2"
interfaces = [ { segment = "edge", ip = "10.2.0.12/24" } ]
static_routes = [ { prefix = "10.1.0.0/24", next_hop = "10.2.0.1" } ]
bgp = { asn = 65000, neighbors = [ { ip = "10.2.0.1", asn = 65000 } ] }

[[host]]
name = "far"
ip = "10.11.0.10"
segment = "lan-1"

[[host]]
name = "near"
ip = "10.2.0.50"
segment = "edge"
listen = [ { protocol = "tcp", port = 22 } ]

[[flow]]
name = "across"
from = "host:far"
to = "host:near"
protocol = "tcp"
"#;
    let routes = routes_json(text);
    let c2 = router(&routes, "c2");
    let candidate = c2["rib"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prefix"] == "10.11.0.0/24")
        .unwrap();
    assert_eq!(
        candidate["next_hop"], "10.1.0.11",
        "the BGP next hop, unchanged over iBGP"
    );
    assert_eq!(candidate["best"], true);
    let fib = c2["fib"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["prefix"] == "10.11.0.0/24")
        .unwrap();
    assert_eq!(
        fib["next_hops"][0], "10.2.0.1 (edge)",
        "resolved through the static route"
    );
    let (_, _, report) = run_text(text);
    let across = flow(&report, "across");
    assert_eq!(across.verdict, "delivered");
    assert_eq!(
        netsim::report::path_devices(&across.reply_path),
        ["near", "c2", "rr", "c1", "far"]
    );
}
