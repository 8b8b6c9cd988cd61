//! The flow cache changes speed, never results: every bundled topology run with the
//! nodes' flow caches on and off gives the same packets at the same hops at the same
//! times, the same verdicts, paths, NAT and drops. (A stage that read an input not in
//! the cache key would make the two differ.)

mod common;

use common::*;

/// Runs `name` with and without the cache and checks they agree; returns the hits.
fn compare(name: &str) -> u64 {
    let topology = netsim::topology::load(&topology_path(name)).expect("loads");
    compare_topology(name, topology)
}

fn compare_topology(name: &str, mut topology: netsim::topology::Topology) -> u64 {
    let cached = netsim::sim::runner::run(&topology);
    topology.flow_cache = false;
    let uncached = netsim::sim::runner::run(&topology);
    let (hits, _) = cached.network.flow_cache_stats();
    assert_eq!(uncached.network.flow_cache_stats().0, 0, "{name}: no cache");

    assert_eq!(
        cached.journal.hops.len(),
        uncached.journal.hops.len(),
        "{name}"
    );
    for (a, b) in cached.journal.hops.iter().zip(&uncached.journal.hops) {
        assert_eq!(
            (a.time_ns, a.point, a.packet_id, a.action, &a.frame),
            (b.time_ns, b.point, b.packet_id, b.action, &b.frame),
            "{name}: hop differs"
        );
    }
    let with = netsim::report::build(&topology, &cached);
    let without = netsim::report::build(&topology, &uncached);
    for (a, b) in with.flows.iter().zip(&without.flows) {
        assert_eq!(a.verdict, b.verdict, "{name}/{}", a.name);
        assert_eq!(a.packets, b.packets, "{name}/{}", a.name);
        assert_eq!(a.seen_source, b.seen_source, "{name}/{}", a.name);
        assert_eq!(
            serde_json::to_string(&a.nat).unwrap(),
            serde_json::to_string(&b.nat).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&a.drop).unwrap(),
            serde_json::to_string(&b.drop).unwrap()
        );
    }
    hits
}

#[test]
fn the_flow_cache_changes_nothing_but_speed() {
    let mut hits = 0;
    for name in [
        "quickstart",
        "two-node",
        "pod-mtu-mismatch",
        "routing-failures",
        "nsx-t1-t0-bgp",
        "antrea-hybrid",
        "calico-bgp-tor",
        "calico-route-reflectors",
        "antrea-services",
        "nsx-loadbalancer",
        "egress-no-snat",
        "nsx-double-nat",
        "antrea-egress",
        "network-policy",
        "antrea-tiers",
        "nsx-dfw",
    ] {
        hits += compare(name);
    }
    assert!(hits > 100, "the cache answered most packets: {hits}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, ..Default::default() })]

    /// Random flows through Services, node ports and straight to pods: the cache on
    /// and off give the same bytes at the same hops.
    #[test]
    fn random_flows_agree_with_the_cache_on_and_off(
        picks in proptest::collection::vec((0usize..3, 0usize..7, 1u32..4), 1..5)
    ) {
        let sources = ["pod:app01/client-1", "host:db", "pod:app01/web-1"];
        let targets = [
            "svc:app01/web:80",
            "nodeport:worker-1/app01/web-cluster:80",
            "nodeport:worker-2/app01/web-local:80",
            "npl:app01/web-3:8080",
            "pod:app01/web-2:8080",
            "svc:app01/retired:80",
            "nodeport:worker-1/app01/web-local:80",
        ];
        let text = std::fs::read_to_string(topology_path("antrea-services")).unwrap();
        let mut text = text[..text.find("[[flow]]").unwrap()].to_string();
        for (index, (source, target, connections)) in picks.iter().enumerate() {
            text.push_str(&format!(
                "\n[[flow]]\nname = \"f{index}\"\nfrom = \"{}\"\nto = \"{}\"\nconnections = {connections}\nstart = \"{index}ms\"\n",
                sources[*source], targets[*target]
            ));
        }
        let topology = netsim::topology::parse("random.toml", &text).expect("parses");
        compare_topology("random", topology);
    }
}
