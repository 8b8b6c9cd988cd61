//! Bad input: a located `file:line:column: message`, exit code 2, nothing written,
//! never a panic.

mod common;

use common::*;
use std::fs;

/// A valid topology; each test breaks one thing in it.
const BASE: &str = r#"[topology]
name = "broken"

[[segment]]
name = "nodes"
cidr = "10.20.0.0/24"
gateway = "r1"

[[router]]
name = "r1"

[[cluster]]
name = "c1"
pod_cidr = "172.20.0.0/16"
service_cidr = "10.96.0.0/23"
node_segment = "nodes"

[[cluster.node]]
name = "worker-1"
ip = "10.20.0.11"
pod_cidr = "172.20.1.0/24"

[[cluster.node]]
name = "worker-2"
ip = "10.20.0.12"
pod_cidr = "172.20.2.0/24"

[[cluster.pod]]
name = "web"
node = "worker-1"
ip = "172.20.1.10"
ports = [ { port = 8080 } ]
"#;

/// Runs `netsim run` and `netsim check` on `text`; returns stderr of `run`.
fn refuse(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    fs::write(&file, text).unwrap();
    let out = dir.path().join("out");
    let run = netsim(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        run.status.code(),
        Some(2),
        "stdout: {}",
        String::from_utf8_lossy(&run.stdout)
    );
    assert!(!out.exists(), "nothing is written for bad input");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no staging directory left behind"
    );
    let check = netsim(&["check", file.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(2));
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let prefix = format!("{}:", file.display());
    assert!(stderr.starts_with(&prefix), "{stderr}");
    stderr[prefix.len()..].to_string()
}

fn assert_located(stderr: &str, line: usize, column: usize, message: &str) {
    let expected = format!("{line}:{column}: ");
    assert!(
        stderr.starts_with(&expected),
        "wanted {expected}{message}, got {stderr}"
    );
    assert!(stderr.contains(message), "wanted {message:?} in {stderr}");
}

#[test]
fn the_base_topology_is_valid() {
    netsim::topology::parse("base.toml", BASE).expect("base is valid");
}

#[test]
fn an_unknown_key_is_located() {
    let text = BASE.replace("gateway = \"r1\"\n", "gateway = \"r1\"\ncolour = \"red\"\n");
    let stderr = refuse(&text);
    assert_located(&stderr, 8, 1, "unknown field `colour`");
    assert!(
        stderr.contains("colour = \"red\""),
        "the offending text is shown: {stderr}"
    );
}

#[test]
fn a_bad_cidr_is_located() {
    let stderr = refuse(&BASE.replace("cidr = \"10.20.0.0/24\"", "cidr = \"10.20.0.0/33\""));
    assert_located(&stderr, 6, 8, "invalid IP address syntax");
}

#[test]
fn a_duplicate_name_is_located() {
    let stderr = refuse(&BASE.replace("name = \"worker-2\"", "name = \"worker-1\""));
    assert_located(
        &stderr,
        24,
        8,
        "duplicate device (router, host or node) name `worker-1`",
    );
}

#[test]
fn a_dangling_reference_is_located() {
    let stderr = refuse(&BASE.replace("node = \"worker-1\"", "node = \"worker-9\""));
    assert_located(&stderr, 30, 8, "no node named `worker-9` in this cluster");
}

#[test]
fn a_pod_ip_outside_its_node_pod_cidr_is_located() {
    let stderr = refuse(&BASE.replace("ip = \"172.20.1.10\"", "ip = \"172.20.2.10\""));
    assert_located(
        &stderr,
        31,
        6,
        "pod ip 172.20.2.10 is outside node worker-1's pod CIDR 172.20.1.0/24",
    );
}

#[test]
fn overlapping_node_pod_cidrs_are_located() {
    let stderr = refuse(&BASE.replace(
        "pod_cidr = \"172.20.2.0/24\"",
        "pod_cidr = \"172.20.1.128/25\"",
    ));
    assert_located(&stderr, 26, 12, "overlaps 172.20.1.0/24 of another node");
}

#[test]
fn a_node_outside_its_segment_is_located() {
    let stderr = refuse(&BASE.replace("ip = \"10.20.0.12\"", "ip = \"10.99.0.12\""));
    assert_located(
        &stderr,
        25,
        6,
        "node worker-2: 10.99.0.12 is outside the segment's cidr 10.20.0.0/24",
    );
}

#[test]
fn a_flow_to_a_missing_pod_and_broken_toml_are_located() {
    let text = format!(
        "{BASE}\n[[flow]]\nname = \"f\"\nfrom = \"pod:default/web\"\nto = \"pod:default/nope\"\n"
    );
    let stderr = refuse(&text);
    assert_located(&stderr, 37, 6, "no pod `default/nope`");
    let stderr = refuse(&BASE.replace("[[router]]", "[[router]"));
    assert!(stderr.starts_with("9:"), "{stderr}");
}

#[test]
fn a_udp_message_larger_than_the_pod_mtu_allows_is_refused() {
    let text = format!("{BASE}\n[[flow]]\nname = \"f\"\nfrom = \"pod:default/web\"\nto = \"10.20.0.1:53\"\nprotocol = \"udp\"\nbytes = 1472\n");
    let stderr = refuse(&text);
    assert_located(&stderr, 39, 9, "carries 1..=1422 bytes (MTU 1450)");
}

#[test]
fn features_not_modelled_yet_are_refused_not_ignored_and_incomplete_sections_are_explained() {
    // An Egress without an address says what it needs.
    let text = format!("{BASE}\n[[cluster.egress]]\nname = \"egress\"\n");
    assert_located(
        &refuse(&text),
        34,
        1,
        "an egress needs `egress_ip` or `external_ip_pool`",
    );
    // `include` of Kubernetes manifests is not modelled yet.
    let text = BASE.replacen(
        "[topology]\n",
        "[topology]\ninclude = [\"k8s/*.yaml\"]\n",
        1,
    );
    let (line, column) = position(&text, "[\"k8s/*.yaml\"]");
    assert_located(&refuse(&text), line, column, "is not modelled");
}

#[test]
fn a_missing_file_is_an_input_error() {
    let output = netsim(&["run", "topologies/does-not-exist.toml"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read the file"));
}

#[test]
fn a_cluster_network_overlapping_a_segment_is_located() {
    let stderr = refuse(&BASE.replace(
        "service_cidr = \"10.96.0.0/23\"",
        "service_cidr = \"10.20.0.0/23\"",
    ));
    assert_located(
        &stderr,
        15,
        16,
        "service_cidr 10.20.0.0/23 overlaps segment nodes (10.20.0.0/24)",
    );
}

#[test]
fn an_expectation_naming_an_unknown_device_is_located() {
    let text = format!("{BASE}\n[[flow]]\nname = \"f\"\nfrom = \"pod:default/web\"\nto = \"10.20.0.1\"\nprotocol = \"icmp\"\n\n[[expect]]\nflow = \"f\"\nvia = [\"worker-1\", \"rl\"]\n");
    let stderr = refuse(&text);
    assert!(stderr.contains("no device named `rl`"), "{stderr}");
}

#[test]
fn a_failing_expectation_exits_1_not_2() {
    let text = format!("{BASE}\n[[flow]]\nname = \"f\"\nfrom = \"pod:default/web\"\nto = \"10.20.0.1\"\nprotocol = \"icmp\"\n\n[[expect]]\nflow = \"f\"\nverdict = \"dropped\"\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("expect.toml");
    fs::write(&file, text).unwrap();
    let check = netsim(&["check", file.to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(1));
    let stdout = String::from_utf8(check.stdout).unwrap();
    assert!(stdout.contains("[FAIL] flow=f verdict=dropped"), "{stdout}");
    assert!(
        stdout.contains("got: flow f: verdict=delivered"),
        "{stdout}"
    );
}

#[test]
fn every_bad_flow_is_reported_in_one_pass() {
    let text = format!(
        "{BASE}\n[[flow]]\nname = \"a\"\nfrom = \"pod:default/web\"\nto = \"pod:default/nobody\"\n\
         \n[[flow]]\nname = \"b\"\nfrom = \"pod:default/web\"\nto = \"host:missing\"\n\
         \n[[flow]]\nname = \"c\"\nfrom = \"pod:default/web\"\nto = \"10.20.0.11:80\"\nprotocol = \"sctp\"\n\
         \n[[expect]]\nflow = \"a\"\nverdict = \"delivered\"\n"
    );
    let stderr = refuse(&text);
    // `refuse` strips the first error's file name; the others carry theirs.
    let carets = stderr.lines().filter(|line| line.trim() == "^").count();
    assert_eq!(carets, 3, "{stderr}");
    assert!(stderr.contains("no pod `default/nobody`"), "{stderr}");
    assert!(stderr.contains("no host `missing`"), "{stderr}");
    assert!(stderr.contains("unknown protocol `sctp`"), "{stderr}");
}

#[test]
fn a_value_of_the_wrong_kind_is_explained_in_the_users_words() {
    let text = BASE.replace(
        "name = \"nodes\"\ncidr = \"10.20.0.0/24\"",
        "name = \"nodes\"\ncidr = \"10.20.0.0/24\"\nmtu = 70000",
    );
    let stderr = refuse(&text);
    assert!(
        stderr.contains("`mtu` must be an MTU in bytes (576–9216), not the number 70000"),
        "{stderr}"
    );
}

#[test]
fn mistakes_in_a_cluster_and_in_a_host_are_reported_together() {
    let text = BASE.replace(
        "node = \"worker-1\"\nip = \"172.20.1.10\"",
        "node = \"worker-9\"\nip = \"172.20.1.10\"",
    ) + "\n[[host]]\nname = \"db\"\nip = \"192.168.50.10\"\nsegment = \"nowhere\"\n";
    let stderr = refuse(&text);
    assert!(stderr.contains("worker-9"), "{stderr}");
    assert!(stderr.contains("no segment named `nowhere`"), "{stderr}");
}

/// A valid Calico cluster; each test breaks one thing in it.
const CALICO_BASE: &str = r#"[topology]
name = "broken-calico"

[[segment]]
name = "nodes"
cidr = "10.20.0.0/24"
gateway = "r1"

[[router]]
name = "r1"

[[cluster]]
name = "c1"
cni = "calico"
pod_cidr = "192.168.0.0/16"
node_segment = "nodes"

[cluster.calico]
block_size = 26
ip_pools = [ "192.168.0.0/18", "192.168.64.0/18" ]
route_reflectors = [ "worker-1" ]

[[cluster.node]]
name = "worker-1"
ip = "10.20.0.11"

[[cluster.node]]
name = "worker-2"
ip = "10.20.0.12"
"#;

/// Line and column (1-based) where `needle` starts in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    position_at(text, text.find(needle).expect("needle in text"))
}

/// Line and column (1-based) of byte `offset` in `text`.
fn position_at(text: &str, offset: usize) -> (usize, usize) {
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    (
        text[..offset].matches('\n').count() + 1,
        offset - line_start + 1,
    )
}

#[test]
fn the_calico_base_topology_is_valid() {
    netsim::topology::parse("calico.toml", CALICO_BASE).expect("calico base is valid");
}

#[test]
fn calico_mistakes_are_located() {
    let cases = [
        (
            "block_size = 26",
            "block_size = 19",
            "19\n",
            "block_size 19 is outside 20..32",
        ),
        (
            "\"192.168.64.0/18\"",
            "\"192.168.32.0/19\"",
            "\"192.168.32.0/19\"",
            "ip pool 192.168.32.0/19 overlaps ip pool 192.168.0.0/18",
        ),
        (
            "[ \"worker-1\" ]",
            "[ \"worker-9\" ]",
            "\"worker-9\"",
            "no node named `worker-9`",
        ),
        (
            "block_size = 26",
            "block_size = 26\nipip_mode = \"Always\"\nvxlan_mode = \"Always\"",
            "\"Always\"\n",
            "cannot use both ipip_mode and vxlan_mode",
        ),
        (
            "ip = \"10.20.0.12\"",
            "ip = \"10.20.0.12\"\npod_cidr = \"192.168.9.0/24\"",
            "\"192.168.9.0/24\"",
            "with cni = \"calico\" a node has no pod_cidr",
        ),
    ];
    for (from, to, at, message) in cases {
        let text = CALICO_BASE.replace(from, to);
        let (line, column) = if at == "\"Always\"\n" {
            // vxlan_mode's value.
            let offset = text.find("vxlan_mode = ").unwrap() + "vxlan_mode = ".len();
            position_at(&text, offset)
        } else {
            position(&text, at)
        };
        assert_located(&refuse(&text), line, column, message);
    }
}

#[test]
fn service_mistakes_are_located() {
    let service = "\n[[cluster.service]]\nname = \"web\"\ntype = \"NodePort\"\nselector = { app = \"web\" }\ncluster_ip = \"10.96.0.50\"\nports = [ { port = 80, target_port = 8080, node_port = 30080 } ]\n";
    let pod = BASE.replace(
        "ip = \"172.20.1.10\"\n",
        "ip = \"172.20.1.10\"\nlabels = { app = \"web\" }\n",
    );
    let base = format!("{pod}{service}");
    netsim::topology::parse("service.toml", &base).expect("the service base is valid");
    let cases = [
        (
            "node_port = 30080",
            "node_port = 20080",
            "20080",
            "node_port 20080 is outside the node port range 30000-32767",
        ),
        (
            "type = \"NodePort\"",
            "type = \"ExternalName\"",
            "\"ExternalName\"",
            "unknown Service type `ExternalName`",
        ),
        (
            "cluster_ip = \"10.96.0.50\"",
            "cluster_ip = \"10.97.0.50\"",
            "\"10.97.0.50\"",
            "cluster_ip 10.97.0.50 is outside service_cidr 10.96.0.0/23",
        ),
        (
            "target_port = 8080",
            "target_port = \"grpc\"",
            "\"grpc\"",
            "target_port `grpc` is declared by none of the selected pods",
        ),
    ];
    for (from, to, at, message) in cases {
        let text = base.replace(from, to);
        let (line, column) = position(&text, at);
        assert_located(&refuse(&text), line, column, message);
    }
    // A node port used twice, a ClusterIP taken twice.
    let twice = format!(
        "{base}\n[[cluster.service]]\nname = \"web2\"\ntype = \"NodePort\"\ncluster_ip = \"10.96.0.50\"\nports = [ {{ port = 80, node_port = 30081 }} ]\n"
    );
    let (line, column) = position_at(&twice, twice.rfind("\"10.96.0.50\"").unwrap());
    assert_located(
        &refuse(&twice),
        line,
        column,
        "cluster_ip 10.96.0.50 is taken by another Service",
    );
    let twice = format!(
        "{base}\n[[cluster.service]]\nname = \"web2\"\ntype = \"NodePort\"\nports = [ {{ port = 80, node_port = 30080 }} ]\n"
    );
    let (line, column) = position_at(&twice, twice.rfind("30080").unwrap());
    assert_located(
        &refuse(&twice),
        line,
        column,
        "node_port 30080 is used twice",
    );
    // LoadBalancer: its VIP and router are required and must exist.
    let lb = base.replace("type = \"NodePort\"", "type = \"LoadBalancer\"");
    let (line, column) = position_at(&lb, lb.rfind("name = \"web\"").unwrap() + 7);
    assert_located(
        &refuse(&lb),
        line,
        column,
        "a LoadBalancer Service needs load_balancer_ip",
    );
    let lb = lb.replace(
        "cluster_ip = \"10.96.0.50\"",
        "cluster_ip = \"10.96.0.50\"\nload_balancer_ip = \"10.30.0.10\"\nload_balancer = { router = \"t1\", backend = \"nodeportlocal\" }",
    );
    let (line, column) = position(&lb, "\"t1\"");
    assert_located(&refuse(&lb), line, column, "no router named `t1`");
    let lb = lb.replace("router = \"t1\"", "router = \"r1\"");
    let (line, column) = position(&lb, "\"nodeportlocal\"");
    assert_located(
        &refuse(&lb),
        line,
        column,
        "backend nodeportlocal needs node_port_local = true",
    );
    // A selector that matches no pod is valid (the Service has no endpoints).
    let empty = base.replace(
        "selector = { app = \"web\" }",
        "selector = { app = \"nothing\" }",
    );
    netsim::topology::parse("empty.toml", &empty).expect("a Service without endpoints is valid");
}

#[test]
fn a_conntrack_max_of_zero_is_located() {
    let text = BASE.replace(
        "name = \"broken\"\n",
        "name = \"broken\"\nconntrack_max = 0\n",
    );
    let (line, column) = position(&text, "0\n");
    assert_located(
        &refuse(&text),
        line,
        column,
        "conntrack_max must be at least 1",
    );
}

#[test]
fn a_tier1_snat_rule_translating_to_a_network_is_located_at_its_value() {
    let text = BASE.replace(
        "name = \"r1\"\n",
        "name = \"r1\"\nsnat = [ { match_source = \"10.20.0.0/24\", translated = \"10.30.0.0/24\" } ]\n",
    );
    let (line, column) = position(&text, "\"10.30.0.0/24\"");
    assert_located(
        &refuse(&text),
        line,
        column,
        "translated `10.30.0.0/24` is not one address (192.0.2.10) or a range",
    );
}

#[test]
fn a_tier1_snat_rule_with_a_backwards_range_or_an_unknown_action_is_located() {
    let text = BASE.replace(
        "name = \"r1\"\n",
        "name = \"r1\"\nsnat = [ { match_source = \"10.20.0.0/24\", translated = \"10.30.0.9-10.30.0.5\" } ]\n",
    );
    let (line, column) = position(&text, "\"10.30.0.9-10.30.0.5\"");
    assert_located(&refuse(&text), line, column, "is not one address");
    let text = BASE.replace(
        "name = \"r1\"\n",
        "name = \"r1\"\nsnat = [ { match_source = \"10.20.0.0/24\", action = \"dnat\" } ]\n",
    );
    let (line, column) = position(&text, "\"dnat\"");
    assert_located(
        &refuse(&text),
        line,
        column,
        "unknown snat action `dnat` (expected snat or no_snat)",
    );
}

#[test]
fn an_unknown_endpoint_form_is_located_and_the_forms_are_listed() {
    let text = format!(
        "{BASE}\n[[flow]]\nname = \"f\"\nfrom = \"pod:default/web\"\nto = \"service:default/web:80\"\n"
    );
    let stderr = refuse(&text);
    assert_located(
        &stderr,
        37,
        6,
        "`service:default/web:80` is not an endpoint (pod:NS/NAME, host:NAME, node:NAME, \
         svc:NS/NAME:PORT, nodeport:NODE/NS/NAME:PORT, lb:NS/NAME:PORT, npl:NS/POD:PORT, \
         healthcheck:NODE/NS/NAME, IP or IP:PORT)",
    );
}

#[test]
fn a_pod_name_two_clusters_share_must_name_its_cluster() {
    let bundled = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/topologies/egress-no-snat.toml"
    ))
    .unwrap();
    let qualified = netsim::topology::parse("egress-no-snat.toml", &bundled).unwrap();
    for (flow, cluster_name) in qualified.flows.iter().zip(["overlay", "routed"]) {
        let netsim::topology::EndpointRef::Pod { cluster, pod } = flow.from else {
            panic!("{} starts at a pod", flow.name);
        };
        assert_eq!(qualified.clusters[cluster].name, cluster_name);
        assert_eq!(qualified.pod(cluster, pod).qualified_name(), "default/app");
    }
    let ambiguous = bundled.replacen(
        "from = \"pod:overlay/default/app\"",
        "from = \"pod:default/app\"",
        1,
    );
    let stderr = refuse(&ambiguous);
    assert!(
        stderr.contains(
            "pod `default/app` exists in several clusters; name one: pod:CLUSTER/default/app"
        ),
        "{stderr}"
    );
}
