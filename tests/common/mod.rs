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

pub fn pcap_lint() -> PathBuf {
    root().join("../shared/tools/pcap-lint")
}

/// Runs pcap-lint on `files` with `flags`; panics with its output on failure.
pub fn lint(flags: &[&str], files: &[&Path]) {
    let output = Command::new("bash")
        .arg(pcap_lint())
        .args(flags)
        .args(files)
        .output()
        .expect("pcap-lint runs");
    assert!(
        output.status.success(),
        "pcap-lint {flags:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
