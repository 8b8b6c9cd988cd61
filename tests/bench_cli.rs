//! `netsim bench` reports packets/s, bits/s and ns/packet in the SPEC's JSON shape,
//! having pushed every packet through the real datapath (it fails otherwise).

mod common;

use common::*;

#[test]
fn bench_json_has_the_spec_fields_for_each_scenario() {
    let output = netsim(&[
        "bench",
        "--packets",
        "2000",
        "--flows",
        "8",
        "--threads",
        "2",
        "--format",
        "json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let scenarios = results["scenarios"].as_array().unwrap();
    // Established, new flows, established through the two-node ClusterIP, and out to
    // the host with and without the node's masquerade.
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "cross-node-udp/established",
            "cross-node-udp/new-flow-per-packet",
            "cross-node-udp-via-clusterip/established",
            "pod-to-host-udp-masquerade/established",
            "pod-to-host-udp-no-snat/established",
            "cross-node-udp-1000-policies/established",
            "cross-node-udp-1000-policies/new-flow-per-packet",
        ]
    );
    for scenario in scenarios {
        for field in [
            "name",
            "threads",
            "capture",
            "packets_per_second",
            "bits_per_second",
            "ns_per_packet",
            "new_flows_per_second",
        ] {
            assert!(!scenario[field].is_null(), "{field} missing in {scenario}");
        }
        assert_eq!(scenario["threads"], 2);
        assert_eq!(scenario["packets"], 2000);
        assert!(scenario["packets_per_second"].as_f64().unwrap() > 0.0);
    }
    assert!(scenarios[1]["new_flows_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_runs_on_a_given_topology_with_capture() {
    let output = netsim(&[
        "bench",
        "topologies/quickstart.toml",
        "--packets",
        "500",
        "--threads",
        "1",
        "--capture",
        "all",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("cross-node-udp/established"));
    assert!(text.contains("packets/s"));
}

#[test]
fn bench_takes_a_list_of_thread_counts() {
    let output = netsim(&[
        "bench",
        "--threads",
        "1,2",
        "--packets",
        "200",
        "--flows",
        "4",
        "--format",
        "json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let threads: std::collections::BTreeSet<u64> = results["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["threads"].as_u64().unwrap())
        .collect();
    assert_eq!(threads.into_iter().collect::<Vec<_>>(), [1, 2]);
}
