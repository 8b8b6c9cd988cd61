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

#[test]
fn a_trace_reads_in_milliseconds_names_echoes_and_folds_a_loop() {
    let output = netsim(&[
        "trace",
        "topologies/routing-failures.toml",
        "--from",
        "pod:default/probe",
        "--to",
        "203.0.113.10",
        "--protocol",
        "icmp",
    ]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.starts_with("trace pod:default/probe -> 203.0.113.10 (icmp echo to 203.0.113.10)"),
        "{text}"
    );
    assert!(
        text.contains("#1       0.000 ms  icmp echo request id="),
        "{text}"
    );
    assert!(
        text.contains(" seq=1 172.20.0.2 > 203.0.113.10 len 56"),
        "{text}"
    );
    assert!(!text.contains("IP:0"));
    // The loop: a few hops shown, the rest folded, in the trace and in the path.
    assert!(
        text.contains("… 116 more hops between r1 and r2 …"),
        "{text}"
    );
    assert!(text.lines().count() < 40, "{text}");
    assert!(
        text.contains(
            "path: default/probe -> worker-1 -> r1 -> r2 -> … 58 more hops between r1 and r2 …"
        ),
        "{text}"
    );
    assert!(
        text.contains("drop: ttl-exceeded@r1 (ttl 1 expires"),
        "{text}"
    );
}

#[test]
fn a_drop_on_the_way_back_says_so_and_quiet_prints_nothing() {
    // The reply from db is dropped at r1: there is no route back to the pod CIDR once
    // no_snat keeps the pod address.
    let text = std::fs::read_to_string(topology_path("quickstart")).unwrap();
    let text = text.replace(
        "tunnel_type = \"geneve\"       # pod MTU = 1500 - 50 = 1450",
        "tunnel_type = \"geneve\"\nno_snat = true",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-snat.toml");
    std::fs::write(&file, text).unwrap();
    let output = netsim(&[
        "trace",
        file.to_str().unwrap(),
        "--from",
        "pod:app01/api-1",
        "--to",
        "host:db",
        "--protocol",
        "icmp",
    ]);
    let trace = String::from_utf8(output.stdout).unwrap();
    assert!(
        trace.contains("drop: no-route@r1 on the reply path"),
        "{trace}"
    );
    let quiet = netsim(&[
        "run",
        "topologies/two-node.toml",
        "--out",
        dir.path().join("out").to_str().unwrap(),
        "--quiet",
    ]);
    assert!(quiet.status.success());
    assert!(
        quiet.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stdout)
    );
}
