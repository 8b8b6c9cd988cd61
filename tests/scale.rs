//! Scale without waste: a 150-node, 16,500-pod topology with 2,000 flows runs in well
//! under 2 GiB, because a pod no flow touches costs no TCP/IP stack or socket
//! buffers. Memory is read from the kernel (`VmHWM`, the peak resident set) after the
//! run; this test binary runs nothing else.

use std::fmt::Write;

const NODES: usize = 150;
const PODS_PER_NODE: usize = 110;
const FLOWS: usize = 2_000;

/// The topology: one segment of 150 workers, 110 pods each, and 2,000 TCP flows —
/// three in four pod to pod across nodes, one in four pod to an external database.
fn topology_text() -> String {
    let mut text = String::from(
        r#"
[topology]
name = "scale"
seed = 1

[[segment]]
name = "nodes"
cidr = "10.20.0.0/23"
gateway = "r1"

[[segment]]
name = "corp"
cidr = "192.168.50.0/24"
gateway = "r1"

[[router]]
name = "r1"

[[host]]
name = "db"
ip = "192.168.50.10"
segment = "corp"
listen = [ { protocol = "tcp", port = 5432 } ]

[[cluster]]
name = "big"
pod_cidr = "172.16.0.0/12"
node_segment = "nodes"
"#,
    );
    for node in 0..NODES {
        let address = node + 11;
        let _ = writeln!(
            text,
            "[[cluster.node]]\nname = \"w{node}\"\nip = \"10.20.{}.{}\"\n",
            address / 256,
            address % 256
        );
    }
    for node in 0..NODES {
        for pod in 0..PODS_PER_NODE {
            let _ = writeln!(
                text,
                "[[cluster.pod]]\nname = \"p{node}-{pod}\"\nnode = \"w{node}\"\nports = [ {{ name = \"http\", port = 8080 }} ]\n"
            );
        }
    }
    for flow in 0..FLOWS {
        let from = format!("pod:default/p{}-{}", flow % NODES, flow % PODS_PER_NODE);
        let to = if flow % 4 == 0 {
            "host:db".to_string()
        } else {
            format!(
                "pod:default/p{}-{}",
                (flow * 7 + 3) % NODES,
                (flow * 3) % PODS_PER_NODE
            )
        };
        let _ = writeln!(
            text,
            "[[flow]]\nname = \"f{flow}\"\nfrom = \"{from}\"\nto = \"{to}\"\nprotocol = \"tcp\"\nstart = \"{flow}ms\"\n"
        );
    }
    text
}

/// Peak resident set of this process, in bytes.
fn peak_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kilobytes: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number");
    kilobytes * 1024
}

#[test]
fn sixteen_thousand_pods_and_two_thousand_flows_fit_in_two_gibibytes() {
    let topology = netsim::topology::parse("scale.toml", &topology_text()).expect("loads");
    assert_eq!(topology.clusters[0].pods.len(), NODES * PODS_PER_NODE);
    let result = netsim::sim::runner::run_with_progress(
        &topology,
        netsim::capture::CaptureMode::None,
        1,
        &mut |_, _| {},
    );
    let report = netsim::report::build(&topology, &result);
    assert!(report.flows.iter().all(|f| f.verdict == "delivered"));
    assert_eq!(
        report.counters.packets_sent,
        report.counters.packets_delivered + report.counters.packets_dropped
    );
    // Only endpoints some flow touches get a stack: at most one per flow end.
    assert!(result.stacks_built <= 2 * FLOWS, "{}", result.stacks_built);
    assert!(result.stacks_built < NODES * PODS_PER_NODE / 4);
    let peak = peak_resident_bytes();
    eprintln!(
        "peak resident set: {} MiB, {} endpoint stacks",
        peak >> 20,
        result.stacks_built
    );
    assert!(peak < 2 << 30, "peak resident set {} MiB", peak >> 20);
}
