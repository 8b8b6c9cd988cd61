//! The flow cache changes speed, never results: every bundled topology run with the
//! nodes' flow caches on and off gives the same packets at the same hops at the same
//! times, the same verdicts, paths, NAT and drops. (A stage that read an input not in
//! the cache key would make the two differ.)

mod common;

use common::*;

/// Runs `name` with and without the cache and checks they agree; returns the hits.
fn compare(name: &str) -> u64 {
    let mut topology = netsim::topology::load(&topology_path(name)).expect("loads");
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
    ] {
        hits += compare(name);
    }
    assert!(hits > 100, "the cache answered most packets: {hits}");
}
