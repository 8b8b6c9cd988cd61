//! `dont_fragment = false` means it (RFC 791 §3.2): the sender leaves DF clear, a
//! router cuts an oversize packet into fragments, each captured; the node reassembles
//! in front of conntrack and cuts again on output; the receiver reassembles.

mod common;

use common::*;
use netsim::datapath::HopAction;

const TOPOLOGY: &str = r#"
[topology]
name = "fragments"
seed = 4

[[segment]]
name = "nodes"
cidr = "10.20.0.0/24"
gateway = "r1"

[[segment]]
name = "corp"
cidr = "192.168.50.0/24"
gateway = "r1"

[[segment]]
name = "wan"                  # a small-MTU link (a VPN, an old WAN)
cidr = "192.168.60.0/24"
gateway = "r1"
mtu = 1000

[[router]]
name = "r1"

[[host]]
name = "laptop"
ip = "192.168.50.10"
segment = "corp"

[[host]]
name = "server"
ip = "192.168.60.10"
segment = "wan"
listen = [ { protocol = "udp", port = 7000 } ]

[[cluster]]
name = "c1"
pod_cidr = "172.20.0.0/16"
node_segment = "nodes"

[[cluster.node]]
name = "worker-1"
ip = "10.20.0.11"

[[cluster.pod]]
name = "app"
node = "worker-1"

[[flow]]
name = "host-fragments"
from = "host:laptop"
to = "host:server:7000"
protocol = "udp"
bytes = 1400
dont_fragment = false

[[flow]]
name = "pod-fragments"
from = "pod:default/app"
to = "host:server:7000"
protocol = "udp"
bytes = 1400
dont_fragment = false

[[flow]]
name = "pod-with-df"
from = "pod:default/app"
to = "host:server:7000"
protocol = "udp"
bytes = 1400
start = "10ms"
"#;

#[test]
fn a_non_df_datagram_crosses_a_small_mtu_link_in_fragments_and_is_delivered() {
    let (topology, result, report) = run_text(TOPOLOGY);
    let udp = flow(&report, "host-fragments");
    assert_eq!(udp.verdict, "delivered");
    assert_balanced(&report, "host-fragments");
    let sent = frames_at(
        &topology,
        &result,
        "host-fragments",
        "laptop:eth0",
        HopAction::Send,
    );
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].meta.dont_fragment, "DF clear");
    let fragments = frames_at(
        &topology,
        &result,
        "host-fragments",
        "r1:wan",
        HopAction::Transmit,
    );
    assert_eq!(fragments.len(), 2, "1428 bytes cut to fit 1000");
    assert!(fragments.iter().all(|f| f.ip_len() <= 1000));
    assert!(fragments[1].meta.is_later_fragment);
    let delivered = frames_at(
        &topology,
        &result,
        "host-fragments",
        "server:eth0",
        HopAction::Deliver,
    );
    assert_eq!(
        delivered.len(),
        2,
        "both fragments reach the server, which reassembles"
    );
    // The answer is cut by the server itself (its link has MTU 1000).
    let answers = frames_at(
        &topology,
        &result,
        "host-fragments",
        "laptop:eth0",
        HopAction::Deliver,
    );
    assert_eq!(answers.len(), 2);
}

#[test]
fn the_node_reassembles_in_front_of_conntrack_and_cuts_again_on_output() {
    let (topology, result, report) = run_text(TOPOLOGY);
    let udp = flow(&report, "pod-fragments");
    assert_eq!(udp.verdict, "delivered");
    assert_balanced(&report, "pod-fragments");
    assert_eq!(
        udp.seen_source.as_deref(),
        Some("10.20.0.11"),
        "masqueraded"
    );
    // The fragmented answer reaches the pod un-NATed, in fragments again.
    let answers = frames_at(
        &topology,
        &result,
        "pod-fragments",
        "default/app:eth0",
        HopAction::Deliver,
    );
    assert_eq!(answers.len(), 2);
    assert!(answers
        .iter()
        .all(|a| a.meta.key.destination == "172.20.0.2".parse::<std::net::Ipv4Addr>().unwrap()));
}

#[test]
fn with_df_the_router_answers_fragmentation_needed_instead() {
    let (_, _, report) = run_text(TOPOLOGY);
    let udp = flow(&report, "pod-with-df");
    assert_eq!(udp.verdict, "dropped");
    let drop = udp.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("r1", "mtu-exceeded")
    );
    assert_eq!(
        udp.path_mtu
            .as_ref()
            .map(|p| (p.mtu, p.reported_by.as_str())),
        Some((1000, "r1:nodes"))
    );
}

#[test]
fn fragment_captures_are_clean() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fragments.toml");
    std::fs::write(&file, TOPOLOGY).unwrap();
    let out = dir.path().join("out");
    let run = netsim(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    lint(&[], &[&out.join("capture.pcapng")]);
}
