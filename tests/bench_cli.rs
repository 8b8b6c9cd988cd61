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
            "cross-node-udp-1000-policies-500-services/established",
            "cross-node-udp-1000-policies-500-services/new-flow-per-packet",
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
    // Established flows walk once each (8 flows, each on the one shard its hash
    // picks; the walk compiles the path, no conntrack on this path) and replay the
    // rest: 1,992 of 2,000 packets. The walks are all the nodes' OVS flow caches
    // see: each walk misses on both nodes. A new flow every packet walks always.
    let established = scenarios[0]["path_cache_hit_rate"].as_f64().unwrap();
    assert_eq!(established, 1992.0 / 2000.0);
    assert_eq!(scenarios[0]["flow_cache_hit_rate"].as_f64().unwrap(), 0.0);
    assert_eq!(scenarios[1]["path_cache_hit_rate"].as_f64().unwrap(), 0.0);
    assert_eq!(scenarios[1]["flow_cache_hit_rate"].as_f64().unwrap(), 0.0);
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

/// `--capture edges` and `all` write real pcapng (Wireshark reads it clean, the
/// Geneve on the underlay included), one file per scenario and thread, the edges
/// file holding fewer hops than `all` for the same packets; the JSON says how many.
#[test]
fn bench_capture_writes_clean_pcapng_and_edges_writes_fewer_hops() {
    let mut captured = Vec::new();
    for mode in ["all", "edges"] {
        let directory = tempfile::tempdir().unwrap();
        let output = netsim(&[
            "bench",
            "--packets",
            "300",
            "--threads",
            "1",
            "--size",
            "64",
            "--capture",
            mode,
            "--capture-dir",
            directory.path().to_str().unwrap(),
            "--format",
            "json",
        ]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let established = &json["scenarios"][0];
        assert_eq!(established["name"], "cross-node-udp/established");
        assert_eq!(established["capture"], mode);
        let file = directory
            .path()
            .join("cross-node-udp-established-0-of-1.pcapng");
        let hops = established["captured_packets"].as_u64().unwrap();
        assert!(hops >= 600, "{mode}: {hops} hops for 300 packets");
        lint(&["--expect-geneve"], &[&file]);
        let listed = std::process::Command::new("tshark")
            .args(["-n", "-r"])
            .arg(&file)
            .output()
            .unwrap();
        let frames = String::from_utf8_lossy(&listed.stdout).lines().count();
        assert_eq!(
            frames as u64, hops,
            "{mode}: the file holds every hop written"
        );
        captured.push(hops);
    }
    assert!(captured[1] < captured[0], "edges {captured:?} all");
}

/// `netsim generate` writes a topology netsim loads and runs (every flow delivered:
/// the policies allow what the flows send), never replaces a file without
/// `--force`, and refuses sizes it cannot lay out with exit 2.
#[test]
fn generate_writes_a_runnable_topology_and_keeps_existing_files() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("scale.toml");
    let file_text = file.to_str().unwrap();
    let sizes = [
        "--nodes",
        "6",
        "--pods-per-node",
        "20",
        "--namespaces",
        "5",
        "--apps",
        "3",
        "--policies",
        "30",
        "--services",
        "15",
        "--flows",
        "12",
    ];
    let mut args = vec!["generate", "--out", file_text];
    args.extend_from_slice(&sizes);
    let output = netsim(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (topology, _, report) = run_text(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(topology.clusters[0].pods.len(), 120);
    assert_eq!(topology.clusters[0].services.len(), 15);
    assert_eq!(topology.clusters[0].network_policies.len(), 30);
    assert_eq!(report.flows.len(), 12);
    for flow in &report.flows {
        assert_eq!(flow.verdict, "delivered", "{}", flow.name);
    }

    std::fs::write(&file, "mine").unwrap();
    let output = netsim(&args);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");

    let output = netsim(&["generate", "--pods-per-node", "400"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--pods-per-node"));
}

#[test]
fn bench_packets_a_design_drops_fail_the_bench_naming_where_and_the_rule() {
    // network-policy.toml isolates the server pod's namespace for ingress: the
    // bench's client is not allowed, so no packet arrives, and the error says
    // which scenario, which device and which policy.
    let output = netsim(&[
        "bench",
        "topologies/network-policy.toml",
        "--packets",
        "1000",
        "--threads",
        "1",
        "--scenario",
        "cross-node-udp/established",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "cross-node-udp/established: only 0 of 1000 bench packets reached the server pod; \
             the first was dropped at worker-2: policy"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("shop/default-deny-ingress"), "{stderr}");
}
