//! Helpers shared by the integration tests.
#![allow(dead_code)]

use netsim::report::Report;
use netsim::sim::runner::RunResult;
use netsim::topology::Topology;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn topology_path(name: &str) -> PathBuf {
    root().join("topologies").join(format!("{name}.toml"))
}

/// Loads and runs a bundled topology.
pub fn run(name: &str) -> (Topology, RunResult, Report) {
    let topology = netsim::topology::load(&topology_path(name)).expect("bundled topology loads");
    let result = netsim::sim::runner::run(&topology);
    let report = netsim::report::build(&topology, &result);
    (topology, result, report)
}

pub fn flow<'a>(report: &'a Report, name: &str) -> &'a netsim::report::FlowReport {
    report
        .flows
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no flow {name}"))
}

pub fn flow_index(topology: &Topology, name: &str) -> u32 {
    u32::try_from(
        topology
            .flows
            .iter()
            .position(|f| f.name == name)
            .expect("flow exists"),
    )
    .unwrap()
}

/// The index of capture point `name` (DEVICE:INTERFACE).
pub fn point(result: &RunResult, name: &str) -> u32 {
    u32::try_from(
        result
            .network
            .points
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no capture point {name}")),
    )
    .unwrap()
}

pub fn netsim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netsim"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("netsim runs")
}

/// Writes `text` as `NAME.toml` in `dir` and runs `netsim run` on it into
/// `dir/NAME`, which it returns; the run must succeed.
pub fn run_into_dir(dir: &Path, name: &str, text: &str) -> PathBuf {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).unwrap();
    let out = dir.join(name);
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
    out
}

pub fn pcap_lint() -> PathBuf {
    root().join("../shared/tools/pcap-lint")
}

/// Runs pcap-lint on `files` with `flags`; panics with its output on failure — except
/// for two things real Linux captures show and Wireshark (4.0) raises as expert
/// *errors*, which pcap-lint's `_ws.expert.severity == error` clause catches:
///
/// * Linux quotes at most 548 bytes of the offending packet in an ICMP error, so a long
///   TCP/UDP segment's quote is cut short and its checksum cannot verify (pcap-lint's
///   checksum clause excludes ICMP for this reason; its expert clause does not);
/// * after path MTU discovery TCP resends the same bytes in smaller segments, and
///   Wireshark's reassembly reports the resent segment as overlapping old data
///   ("New fragment overlaps old data (retransmission?)"), even in a capture taken
///   at the sending pod alone.
///
/// When pcap-lint fails, every file is checked again with pcap-lint's own filter less
/// exactly those cases, and that must be clean.
pub fn lint(flags: &[&str], files: &[&Path]) {
    let output = Command::new("bash")
        .arg(pcap_lint())
        .args(flags)
        .args(files)
        .output()
        .expect("pcap-lint runs");
    if output.status.success() {
        return;
    }
    let report = format!(
        "pcap-lint {flags:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    const QUOTED_CHECKSUM: &str =
        "icmp && (tcp.checksum.status == \"Bad\" || udp.checksum.status == \"Bad\")";
    const RESEGMENTED: &str =
        "!icmp && tcp && _ws.expert.message contains \"New fragment overlaps old data\"";
    let filter = format!(
        "(_ws.malformed && !({RESEGMENTED})) || ip.checksum.status == \"Bad\" || icmp.checksum.status == \"Bad\" \
         || (!icmp && (tcp.checksum.status == \"Bad\" || udp.checksum.status == \"Bad\")) \
         || (_ws.expert.severity == error && !({QUOTED_CHECKSUM}) && !({RESEGMENTED}))"
    );
    for file in files {
        let problems = Command::new("tshark")
            .args(["-n", "-r"])
            .arg(file)
            .args([
                "-o",
                "ip.check_checksum:TRUE",
                "-o",
                "tcp.check_checksum:TRUE",
                "-o",
                "udp.check_checksum:TRUE",
                "-Y",
                &filter,
            ])
            .output()
            .expect("tshark runs");
        let problems = String::from_utf8_lossy(&problems.stdout);
        assert!(problems.trim().is_empty(), "{report}\nstill:\n{problems}");
    }
}

/// Loads and runs a topology written inline (into a temporary file).
pub fn run_text(text: &str) -> (Topology, RunResult, Report) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("topology.toml");
    std::fs::write(&file, text).expect("topology written");
    let topology = netsim::topology::load(&file).expect("topology loads");
    let result = netsim::sim::runner::run(&topology);
    let report = netsim::report::build(&topology, &result);
    (topology, result, report)
}

/// Every frame of flow `flow` seen at capture point `point` with `action`, parsed.
pub fn frames_at(
    topology: &Topology,
    result: &RunResult,
    flow: &str,
    point_name: &str,
    action: netsim::datapath::HopAction,
) -> Vec<netsim::packet::Packet> {
    let tag = flow_index(topology, flow);
    let at = point(result, point_name);
    result
        .journal
        .hops
        .iter()
        .filter(|hop| hop.flow == tag && hop.point == at && hop.action == action)
        .map(|hop| netsim::packet::Packet::from_frame(&hop.frame, tag).expect("frame parses"))
        .collect()
}

/// sent = delivered + dropped for one flow of the report.
pub fn assert_balanced(report: &Report, name: &str) {
    let packets = flow(report, name).packets;
    assert_eq!(
        packets.sent,
        packets.delivered + packets.dropped,
        "{name}: {packets:?}"
    );
}

/// `netsim routes --format json` on a topology written inline.
pub fn routes_json(text: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(&file, text).unwrap();
    let output = netsim(&["routes", file.to_str().unwrap(), "--format", "json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// One router (or node, with `kind = "nodes"`) of a `routes` JSON by name.
pub fn device<'a>(routes: &'a serde_json::Value, kind: &str, name: &str) -> &'a serde_json::Value {
    routes[kind]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// One router of a `routes` JSON by name.
pub fn router<'a>(routes: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    device(routes, "routers", name)
}
