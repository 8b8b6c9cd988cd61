//! What Wireshark makes of netsim's captures: real DNS and HTTP where the port says
//! so (dissected without a malformed packet), VMware NICs on the nodes, and pod and
//! gateway MACs no vendor entry names.

mod common;

use common::*;
use std::process::Command;

const TOPOLOGY: &str = r#"
[topology]
name = "wireshark-view"
seed = 9

[[segment]]
name = "vks-nodes"
cidr = "10.20.0.0/24"
gateway = "r1"

[[segment]]
name = "corp"
cidr = "192.168.50.0/24"
gateway = "r1"

[[router]]
name = "r1"

[[host]]
name = "dns"
ip = "192.168.50.53"
segment = "corp"
listen = [ { protocol = "udp", port = 53 }, { protocol = "tcp", port = 53 }, { protocol = "udp", port = 5353 } ]

[[cluster]]
name = "vks-01"
pod_cidr = "172.20.0.0/16"
node_segment = "vks-nodes"

[[cluster.node]]
name = "worker-1"
ip = "10.20.0.11"

[[cluster.node]]
name = "worker-2"
ip = "10.20.0.12"

[[cluster.pod]]
name = "client"
node = "worker-1"

[[cluster.pod]]
name = "web"
node = "worker-2"
ports = [ { name = "http", port = 8080 }, { name = "http", port = 9000 } ]

[[flow]]
name = "lookup"
from = "pod:default/client"
to = "host:dns:53"
protocol = "udp"
requests = 2

[[flow]]
name = "lookup-tcp"
from = "pod:default/client"
to = "host:dns:53"
protocol = "tcp"

[[flow]]
name = "mdns"
from = "pod:default/client"
to = "host:dns:5353"
protocol = "udp"

[[flow]]
name = "web"
from = "pod:default/client"
to = "pod:default/web:8080"
protocol = "tcp"
bytes = 3000
requests = 2

[[flow]]
name = "web-named-port"
from = "pod:default/client"
to = "pod:default/web:9000"
protocol = "tcp"
"#;

fn tshark_fields(file: &std::path::Path, filter: &str, fields: &[&str]) -> Vec<String> {
    tshark(file, filter, fields, "n")
}

/// `resolve` is tshark's `-N` flags: "n" for none, "m" for MAC vendor names.
fn tshark(file: &std::path::Path, filter: &str, fields: &[&str], resolve: &str) -> Vec<String> {
    let mut command = Command::new("tshark");
    if resolve == "n" {
        command.arg("-n");
    } else {
        command.args(["-N", resolve]);
    }
    command
        .arg("-r")
        .arg(file)
        .args(["-Y", filter, "-T", "fields"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let output = command.output().expect("tshark runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn run_into(dir: &std::path::Path) -> std::path::PathBuf {
    run_into_dir(dir, "view", TOPOLOGY)
}

#[test]
fn dns_and_http_flows_dissect_as_dns_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_into(dir.path());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    for flow in report["flows"].as_array().unwrap() {
        assert_eq!(flow["verdict"], "delivered", "{}", flow["name"]);
    }
    for name in ["lookup", "lookup-tcp", "mdns", "web", "web-named-port"] {
        lint(&[], &[&out.join(format!("flows/{name}.pcapng"))]);
    }
    let lookup = out.join("flows/lookup.pcapng");
    let answers = tshark_fields(
        &lookup,
        "dns.flags.response == 1",
        &["dns.qry.name", "dns.a"],
    );
    assert!(!answers.is_empty());
    assert!(
        answers
            .iter()
            .all(|a| a == "lookup.netsim.test\t192.168.50.53"),
        "{answers:?}"
    );
    let tcp_answers = tshark_fields(
        &out.join("flows/lookup-tcp.pcapng"),
        "tcp && dns.flags.response == 1",
        &["dns.a"],
    );
    assert!(
        tcp_answers.iter().any(|a| a == "192.168.50.53"),
        "{tcp_answers:?}"
    );
    let web = out.join("flows/web.pcapng");
    let requests = tshark_fields(
        &web,
        "http.request",
        &["http.request.method", "http.content_length"],
    );
    assert!(
        requests.iter().any(|r| r.starts_with("POST\t")),
        "{requests:?}"
    );
    let responses = tshark_fields(&web, "http.response", &["http.response.code"]);
    assert!(responses.iter().any(|r| r == "200"), "{responses:?}");
    let named = tshark_fields(
        &out.join("flows/web-named-port.pcapng"),
        "tcp.port == 9000 && tcp.len > 0",
        &["tcp.payload"],
    );
    assert!(!named.is_empty());
    // 'POST /' in hex: the named port carries HTTP too.
    assert!(
        named.iter().any(|p| p.starts_with("504f5354202f")),
        "{named:?}"
    );
}

#[test]
fn nodes_carry_vmware_macs_and_pods_no_vendor_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_into(dir.path());
    let capture = out.join("capture.pcapng");
    let node_macs = tshark(
        &capture,
        "frame.interface_name == \"worker-1:eth0\" && ip.src == 10.20.0.11",
        &["eth.src", "eth.src_resolved"],
        "m",
    );
    assert!(!node_macs.is_empty());
    for line in &node_macs {
        let (mac, resolved) = line.split_once('\t').unwrap();
        assert!(mac.starts_with("00:50:56:"), "{mac}");
        assert!(resolved.starts_with("VMware_"), "{resolved}");
    }
    // Pods and antrea-gw0: resolved names are the bare MAC (no vendor, no MS-NLB).
    let pod_macs = tshark(
        &capture,
        "frame.interface_name == \"default/client:eth0\"",
        &["eth.src", "eth.src_resolved", "eth.dst", "eth.dst_resolved"],
        "m",
    );
    assert!(!pod_macs.is_empty());
    for line in &pod_macs {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[0], fields[1], "{line}");
        assert_eq!(fields[2], fields[3], "{line}");
    }
}

#[test]
fn the_shipped_wireshark_profile_shows_capture_points_and_hops_and_its_colours_parse() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_into(dir.path());
    let home = dir.path().join("home");
    let profiles = home.join(".config/wireshark/profiles/netsim");
    std::fs::create_dir_all(&profiles).unwrap();
    for file in ["preferences", "colorfilters", "recent"] {
        std::fs::copy(
            root().join("wireshark/netsim").join(file),
            profiles.join(file),
        )
        .unwrap();
    }
    let output = Command::new("tshark")
        .env("HOME", &home)
        .args(["-C", "netsim", "--color", "-r"])
        .arg(out.join("flows/web.pcapng"))
        .output()
        .expect("tshark runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("does not exist"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("colorfilter"), "{stderr}");
    // The capture point and the hop's comment are columns.
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.contains("default/client:eth0"), "{first}");
    assert!(first.contains("send: tcp"), "{first}");
    // Every colouring rule is a display filter Wireshark compiles.
    let rules = std::fs::read_to_string(root().join("wireshark/netsim/colorfilters")).unwrap();
    for rule in rules.lines().filter(|l| l.starts_with('@')) {
        let filter = rule.split('@').nth(2).unwrap();
        let check = Command::new("tshark")
            .args(["-r"])
            .arg(out.join("flows/web.pcapng"))
            .args(["-Y", filter, "-c", "1"])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{filter}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
