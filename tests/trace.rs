//! `netsim trace` prints one exchange hop by hop.

mod common;

use common::*;
use std::process::Output;

/// `netsim trace topologies/quickstart.toml ARGS...`.
fn trace(args: &[&str]) -> Output {
    let mut all = vec!["trace", "topologies/quickstart.toml"];
    all.extend_from_slice(args);
    netsim(&all)
}

#[test]
fn trace_prints_every_hop_of_a_cross_node_exchange_in_order() {
    let output = trace(&["--from", "pod:app01/client-1", "--to", "pod:app01/web-2"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with("trace pod:app01/client-1 -> pod:app01/web-2 (tcp 172.20.2.10:8080)"),
        "{text}"
    );
    // The SYN's hops, in order.
    let first_packet: Vec<&str> = text.split("\n#").nth(1).unwrap().lines().collect();
    assert!(first_packet[0].contains("[S] len 0"), "{}", first_packet[0]);
    let points: Vec<&str> = first_packet[1..]
        .iter()
        .map(|line| line.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        points,
        [
            "app01/client-1:eth0",
            "worker-1:veth-app01-client-1",
            "worker-1:antrea-tun0",
            "worker-1:eth0",
            "worker-2:eth0",
            "worker-2:antrea-tun0",
            "worker-2:veth-app01-web-2",
            "app01/web-2:eth0"
        ]
    );
    assert!(text.contains("geneve encap vni=0 10.20.0.11 -> 10.20.0.12"));
    assert!(text.contains("geneve decap vni=0 from 10.20.0.11"));
    assert!(text.contains("\nverdict: delivered\n"));
    assert!(text.contains("path: app01/client-1 -> worker-1 -> worker-2 -> app01/web-2"));
}

#[test]
fn trace_to_an_external_host_shows_the_masquerade() {
    let output = trace(&[
        "--from",
        "pod:app01/web-1",
        "--to",
        "host:db",
        "--port",
        "5432",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("seen source: 10.20.0.11"), "{text}");
    assert!(text.contains("host stack: route 192.168.50.10 via 10.20.0.1 dev eth0"));
}

#[test]
fn trace_rejects_an_unknown_endpoint_with_exit_2() {
    let output = trace(&["--from", "pod:app01/nope", "--to", "host:db"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no pod `app01/nope`"));
}

/// The whole text of a same-node trace, pinned (insta snapshot): any change to what a
/// hop reports, its timing or its order shows up in review.
#[test]
fn same_node_trace_snapshot() {
    let output = trace(&["--from", "pod:app01/client-1", "--to", "pod:app01/web-1"]);
    assert!(output.status.success());
    insta::assert_snapshot!(String::from_utf8(output.stdout).unwrap());
}
