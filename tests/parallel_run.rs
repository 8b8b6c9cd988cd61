//! `run` on several threads: the fabric split into units and shards, run in
//! lookahead windows and merged in event order, gives exactly what one thread gives.

mod common;

use common::topology_path;
use netsim::capture::CaptureMode;
use netsim::sim::runner::{run_with_progress, RunResult};
use netsim::topology::Topology;

/// Everything a run's outputs are made of: the report, and every recorded hop and
/// drop with its time, place, bytes and words.
fn outputs(topology: &Topology, result: &RunResult) -> (String, Vec<String>, Vec<String>) {
    let report = serde_json::to_string(&netsim::report::build(topology, result)).unwrap();
    let hops = result
        .journal
        .hops
        .iter()
        .map(|hop| {
            format!(
                "{} {} {} {:?} {} {:02x?}",
                hop.time_ns, hop.point, hop.flow, hop.action, hop.detail, hop.frame
            )
        })
        .collect();
    let drops = result
        .journal
        .drops
        .iter()
        .map(|drop| {
            format!(
                "{} {} {} {:?} {}",
                drop.time_ns, drop.flow, drop.device, drop.reason, drop.detail
            )
        })
        .collect();
    (report, hops, drops)
}

fn run(topology: &Topology, capture: CaptureMode, threads: usize) -> RunResult {
    run_with_progress(topology, capture, threads, &mut |_, _| {})
}

#[test]
fn every_bundled_topology_gives_the_same_outputs_on_one_two_and_three_threads() {
    let mut names: Vec<String> = std::fs::read_dir(common::root().join("topologies"))
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            (path.extension()? == "toml").then(|| path.file_stem()?.to_str().map(String::from))?
        })
        .collect();
    names.sort();
    assert!(names.len() >= 16, "{names:?}");
    for name in &names {
        let topology = netsim::topology::load(&topology_path(name)).unwrap();
        for capture in [CaptureMode::All, CaptureMode::Edges] {
            let one = run(&topology, capture, 1);
            let expected = outputs(&topology, &one);
            assert!(!expected.1.is_empty(), "{name}: no hops");
            for threads in [2, 3] {
                let many = run(&topology, capture, threads);
                assert!(many.shards > 1, "{name}: {} shard(s)", many.shards);
                let got = outputs(&topology, &many);
                assert!(
                    got.0 == expected.0,
                    "{name} {capture:?} {threads} threads: reports differ"
                );
                assert_eq!(
                    got.1.len(),
                    expected.1.len(),
                    "{name} {capture:?} {threads}: hops"
                );
                for (index, (got, expected)) in got.1.iter().zip(&expected.1).enumerate() {
                    assert_eq!(
                        got, expected,
                        "{name} {capture:?} {threads} threads: hop {index}"
                    );
                }
                assert_eq!(
                    got.2, expected.2,
                    "{name} {capture:?} {threads} threads: drops"
                );
                assert_eq!(many.events, one.events, "{name}");
                assert_eq!(many.end_ns, one.end_ns, "{name}");
            }
        }
    }
}

fn generated(flows: usize) -> String {
    netsim::generate::scale_topology(&netsim::generate::ScaleOptions {
        nodes: 24,
        pods_per_node: 10,
        namespaces: 6,
        apps: 4,
        policies: 100,
        services: 20,
        flows,
    })
    .unwrap()
}

/// Flows one after another (the generator starts flow i at i ms): windows hold an
/// event or two, so after the first 256 the first shard takes in the others and
/// runs alone — with the same outputs.
#[test]
fn flows_one_after_another_join_the_shards_and_keep_the_outputs() {
    let topology = netsim::topology::parse("staggered.toml", &generated(400)).unwrap();
    assert_eq!(topology.flows[399].start_ns, 399_000_000);
    let one = run(&topology, CaptureMode::All, 1);
    assert_eq!(one.joined_at_ns, None);
    let two = run(&topology, CaptureMode::All, 2);
    assert_eq!(two.shards, 2);
    let joined = two.joined_at_ns.expect("sparse windows join the shards");
    assert!(joined < 399_000_000, "joined at {joined} ns");
    let (expected, got) = (outputs(&topology, &one), outputs(&topology, &two));
    assert!(got.0 == expected.0, "reports differ");
    assert!(got.1 == expected.1, "hops differ");
    assert!(got.2 == expected.2, "drops differ");
}

/// Many flows at once across a cluster: the case threads exist for. 24 nodes, 240
/// pods, 600 flows all starting at 0 (pod to pod across nodes, through Services,
/// out to hosts), with 100 NetworkPolicies.
#[test]
fn six_hundred_simultaneous_flows_give_the_same_outputs_on_one_two_and_four_threads() {
    let simultaneous: String = generated(600)
        .lines()
        .map(|line| {
            if line.starts_with("start = ") {
                "start = \"0ms\"\n".to_string()
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    let topology = netsim::topology::parse("simultaneous.toml", &simultaneous).unwrap();
    assert_eq!(topology.flows.len(), 600);
    assert!(topology.flows.iter().all(|flow| flow.start_ns == 0));
    let one = run(&topology, CaptureMode::All, 1);
    let expected = outputs(&topology, &one);
    let report = netsim::report::build(&topology, &one);
    let sent: u64 = report.flows.iter().map(|f| f.packets.sent).sum();
    let delivered: u64 = report.flows.iter().map(|f| f.packets.delivered).sum();
    let dropped: u64 = report.flows.iter().map(|f| f.packets.dropped).sum();
    assert_eq!(sent, delivered + dropped);
    assert!(
        report
            .flows
            .iter()
            .filter(|f| f.verdict == "delivered")
            .count()
            > 300,
        "most flows get through"
    );
    for threads in [2, 4] {
        let many = run(&topology, CaptureMode::All, threads);
        assert_eq!(many.shards, threads);
        // Dense windows keep the shards apart at least through the flows' exchanges.
        assert!(
            many.joined_at_ns.is_none_or(|at| at > 1_000_000),
            "{:?}",
            many.joined_at_ns
        );
        let got = outputs(&topology, &many);
        assert!(got.0 == expected.0, "{threads} threads: reports differ");
        assert!(got.1 == expected.1, "{threads} threads: hops differ");
        assert!(got.2 == expected.2, "{threads} threads: drops differ");
    }
}

/// `check --threads 2` prints and exits as one thread does.
#[test]
fn check_on_two_threads_gives_the_same_verdicts() {
    let path = topology_path("network-policy");
    let path = path.to_str().unwrap();
    let one = common::netsim(&["check", path, "--threads", "1"]);
    let two = common::netsim(&["check", path, "--threads", "2"]);
    assert_eq!(one.status.code(), two.status.code());
    assert_eq!(
        String::from_utf8_lossy(&one.stdout),
        String::from_utf8_lossy(&two.stdout)
    );
    assert!(String::from_utf8_lossy(&one.stdout).contains("[ok]"));
}
