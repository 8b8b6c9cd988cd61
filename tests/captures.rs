//! The CLI's outputs: files in place, clean under Wireshark's dissectors, interfaces
//! named DEVICE:INTERFACE, and byte-identical across runs and thread counts.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn run_into(dir: &Path, extra: &[&str]) {
    let out = dir.to_str().unwrap();
    let mut args = vec!["run", "topologies/quickstart.toml", "--out", out];
    args.extend_from_slice(extra);
    let output = netsim(&args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn run_writes_clean_captures_with_named_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quickstart");
    run_into(&out, &[]);
    let flows = [
        "same-node",
        "cross-node",
        "cross-node-udp",
        "to-db",
        "ping-db",
        "closed-port",
    ];
    assert!(out.join("report.json").is_file());
    for flow in flows {
        assert!(
            out.join("flows").join(format!("{flow}.pcapng")).is_file(),
            "{flow}"
        );
    }
    let capture = out.join("capture.pcapng");
    // Every file reads clean; the ones that cross nodes carry Geneve.
    let all = files_under(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "pcapng"))
        .collect::<Vec<_>>();
    lint(&[], &all.iter().map(PathBuf::as_path).collect::<Vec<_>>());
    let crossing = [
        capture.clone(),
        out.join("flows/cross-node.pcapng"),
        out.join("flows/cross-node-udp.pcapng"),
        out.join("flows/closed-port.pcapng"),
    ];
    lint(
        &["--expect-geneve"],
        &crossing.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    );

    let names = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&capture)
        .args(["-T", "fields", "-e", "frame.interface_name"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    for expected in [
        "worker-1:eth0",
        "worker-1:antrea-tun0",
        "worker-1:antrea-gw0",
        "worker-2:veth-app01-web-2",
        "app01/web-1:eth0",
        "r1:corp",
        "r1:vks-nodes",
        "db:eth0",
    ] {
        assert!(
            names.lines().any(|line| line == expected),
            "no packet on {expected}"
        );
    }
    // The Geneve packets on a node's uplink, as Wireshark reads them.
    let geneve = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(out.join("flows/cross-node.pcapng"))
        .args([
            "-Y",
            "geneve && frame.interface_name == \"worker-1:eth0\" && ip.src == 10.20.0.11",
        ])
        .args([
            "-T",
            "fields",
            "-e",
            "geneve.vni",
            "-e",
            "udp.dstport",
            "-e",
            "udp.checksum",
            "-e",
            "ip.flags.df",
            "-e",
            "ip.dst",
        ])
        .output()
        .unwrap();
    let geneve = String::from_utf8_lossy(&geneve.stdout);
    assert!(!geneve.is_empty());
    for line in geneve.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[0], "0x000000", "{line}");
        assert!(fields[1].starts_with("6081"), "{line}");
        assert!(fields[2].starts_with("0x0000"), "{line}");
        assert!(fields[3].starts_with('1'), "{line}");
        assert!(fields[4].starts_with("10.20.0.12"), "{line}");
    }
    // Each packet says what the hop did.
    let comments = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(&capture)
        .args(["-T", "fields", "-e", "frame.comment"])
        .output()
        .unwrap();
    let comments = String::from_utf8_lossy(&comments.stdout);
    assert!(comments.contains("geneve encap vni=0 10.20.0.11 -> 10.20.0.12"));
    assert!(comments.contains("drop: nothing listens on tcp/9999"));
}

#[test]
fn two_runs_give_byte_identical_outputs_whatever_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    run_into(&first, &["--threads", "1"]);
    run_into(&second, &["--threads", "2"]);
    let first_files = files_under(&first);
    let second_files = files_under(&second);
    assert_eq!(first_files.len(), second_files.len());
    assert!(first_files.len() >= 8);
    for (a, b) in first_files.iter().zip(&second_files) {
        assert_eq!(
            a.strip_prefix(&first).unwrap(),
            b.strip_prefix(&second).unwrap()
        );
        assert!(
            fs::read(a).unwrap() == fs::read(b).unwrap(),
            "{} differs",
            a.display()
        );
    }
}

#[test]
fn capture_edges_leaves_out_node_internals_and_none_writes_only_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let edges = dir.path().join("edges");
    run_into(&edges, &["--capture", "edges"]);
    let names = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(edges.join("capture.pcapng"))
        .args(["-T", "fields", "-e", "frame.interface_name"])
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(names.lines().any(|line| line == "worker-1:eth0"));
    assert!(!names
        .lines()
        .any(|line| line.ends_with("antrea-tun0") || line.ends_with("antrea-gw0")));
    let none = dir.path().join("none");
    run_into(&none, &["--capture", "none"]);
    assert_eq!(
        files_under(&none),
        vec![none.join(".netsim-outputs"), none.join("report.json")]
    );
    // Recording only the report's paths changes nothing in the report.
    assert!(
        fs::read(none.join("report.json")).unwrap() == fs::read(edges.join("report.json")).unwrap()
    );
}

#[test]
fn the_report_has_the_spec_shape() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q");
    run_into(&out, &[]);
    let report: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["topology"], "quickstart");
    let flow = report["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "to-db")
        .unwrap();
    assert_eq!(flow["verdict"], "delivered");
    assert_eq!(flow["seen_source"], "10.20.0.11");
    assert_eq!(flow["drop"], serde_json::Value::Null);
    let sent = flow["packets"]["sent"].as_u64().unwrap();
    assert_eq!(
        sent,
        flow["packets"]["delivered"].as_u64().unwrap()
            + flow["packets"]["dropped"].as_u64().unwrap()
    );
    assert_eq!(flow["connections"]["established"], 1);
    assert_eq!(flow["path"][0]["device"], "app01/client-1");
    assert_eq!(flow["path"][0]["interface"], "eth0");
    assert!(report["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["ok"] == true));
    let counters = &report["counters"];
    assert_eq!(
        counters["packets_sent"].as_u64().unwrap(),
        counters["packets_delivered"].as_u64().unwrap()
            + counters["packets_dropped"].as_u64().unwrap()
    );
}

/// netsim's streaming pcapng encoder (one reused buffer, no allocation per packet)
/// writes exactly the bytes pcap-file's writer does for the same blocks: section
/// header with the application, one interface per point (Ethernet or RAW, ns
/// resolution), enhanced packets with their comments — here for every hop of the
/// Calico ToR example (IP-in-IP across subnets: RAW tunl0 included) and the quickstart.
#[test]
fn the_pcapng_stream_writes_what_pcap_file_writes() {
    use netsim::capture::{write_pcapng, CaptureMode, EPOCH_SECONDS};
    use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
    use pcap_file::pcapng::blocks::interface_description::{
        InterfaceDescriptionBlock, InterfaceDescriptionOption,
    };
    use pcap_file::pcapng::blocks::section_header::{SectionHeaderBlock, SectionHeaderOption};
    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::{DataLink, Endianness};
    use std::borrow::Cow;
    use std::time::Duration;
    for name in ["quickstart", "calico-bgp-tor"] {
        let (_, result, _) = run(name);
        let points = &result.network.points;
        let hops: Vec<_> = result.journal.hops.iter().collect();
        let ours = write_pcapng(Vec::new(), points, &hops, CaptureMode::All).unwrap();

        let section = SectionHeaderBlock {
            endianness: Endianness::Little,
            major_version: 1,
            minor_version: 0,
            section_length: -1,
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "netsim {}",
                env!("CARGO_PKG_VERSION")
            )))],
        };
        let mut theirs = PcapNgWriter::with_section_header(Vec::new(), section).unwrap();
        let mut interface_of = vec![None; points.len()];
        let mut next = 0u32;
        for (index, point) in points.iter().enumerate() {
            if !hops.iter().any(|hop| hop.point as usize == index) {
                continue;
            }
            interface_of[index] = Some(next);
            next += 1;
            theirs
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: if point.raw_ip {
                        DataLink::RAW
                    } else {
                        DataLink::ETHERNET
                    },
                    snaplen: 0,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Borrowed(&point.name)),
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                })
                .unwrap();
        }
        for hop in &hops {
            let data = if points[hop.point as usize].raw_ip {
                &hop.frame[14..]
            } else {
                &hop.frame[..]
            };
            theirs
                .write_pcapng_block(EnhancedPacketBlock {
                    interface_id: interface_of[hop.point as usize].unwrap(),
                    timestamp: Duration::from_secs(EPOCH_SECONDS)
                        + Duration::from_nanos(hop.time_ns),
                    original_len: u32::try_from(data.len()).unwrap(),
                    data: Cow::Borrowed(data),
                    options: vec![EnhancedPacketOption::Comment(Cow::Owned(format!(
                        "{}: {}",
                        hop.action.name(),
                        hop.detail
                    )))],
                })
                .unwrap();
        }
        assert!(hops.len() > 10, "{name}: {} hops", hops.len());
        assert!(ours == theirs.into_inner(), "{name}: the bytes differ");
    }
}

/// `run --capture edges` records no node-internal hop it will not write — except
/// those of each flow's first packet and first replies (each answering endpoint's
/// first, marked by `FIRST_PACKET`; the earliest is the report's reply path) — so
/// its report is the one `all` gives, with fewer hops held.
#[test]
fn capture_edges_keeps_internal_hops_only_for_the_report_paths() {
    use netsim::capture::CaptureMode;
    use netsim::sim::network::PointKind;
    for name in ["quickstart", "antrea-services", "calico-bgp-tor"] {
        let topology = netsim::topology::load(&topology_path(name)).unwrap();
        let run = |mode| netsim::sim::runner::run_with_progress(&topology, mode, 1, &mut |_, _| {});
        let (all, edges) = (run(CaptureMode::All), run(CaptureMode::Edges));
        let path_packets: Vec<u64> = edges
            .flows
            .iter()
            .flat_map(|flow| [flow.first_packet, flow.first_reply])
            .flatten()
            .collect();
        let internal = |hop: &&netsim::datapath::Hop| {
            edges.network.points[hop.point as usize].kind != PointKind::Edge
        };
        assert!(
            edges.journal.hops.iter().filter(internal).count() > 0,
            "{name}"
        );
        assert!(
            edges
                .journal
                .hops
                .iter()
                .filter(internal)
                .all(|hop| hop.packet_id & netsim::datapath::FIRST_PACKET != 0),
            "{name}: an internal hop of a packet that is no flow's first"
        );
        assert!(
            path_packets
                .iter()
                .all(|packet| packet & netsim::datapath::FIRST_PACKET != 0),
            "{name}: a path's packet is not marked as a flow's first"
        );
        assert!(edges.journal.hops.len() < all.journal.hops.len(), "{name}");
        let json = |result| {
            serde_json::to_value(netsim::report::build(&topology, result)).unwrap()["flows"].clone()
        };
        assert_eq!(json(&all), json(&edges), "{name}: the reports differ");
    }
}
