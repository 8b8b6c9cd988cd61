//! Kubernetes NetworkPolicy as Antrea enforces it: isolation per direction, additive
//! allows, selectors, ip_block with except, ports by number, name and range, stateful
//! replies, policy after Service DNAT, and every decision naming its rule.

mod common;

use common::*;

/// Two nodes, namespaces `a` (env=prod) and `b`, pods with labels and named ports.
const BASE: &str = r#"
[topology]
name = "np"
seed = 5

[[segment]]
name = "nodes"
cidr = "10.20.0.0/24"
gateway = "r1"

[[segment]]
name = "corp"
cidr = "192.168.50.0/24"
gateway = "r1"

[[router]]
name = "r1"

[[cluster]]
name = "c"
pod_cidr = "172.20.0.0/16"
service_cidr = "10.96.0.0/23"
node_segment = "nodes"

[[cluster.node]]
name = "w1"
ip = "10.20.0.11"
pod_cidr = "172.20.1.0/24"

[[cluster.node]]
name = "w2"
ip = "10.20.0.12"
pod_cidr = "172.20.2.0/24"

[[cluster.namespace]]
name = "a"
labels = { env = "prod" }

[[cluster.namespace]]
name = "b"
labels = { env = "dev" }

[[cluster.pod]]
name = "web-1"
namespace = "a"
node = "w1"
labels = { app = "web", tier = "front" }
ports = [ { name = "http", port = 8080 }, { name = "dns", port = 53, protocol = "UDP" } ]

[[cluster.pod]]
name = "web-2"
namespace = "a"
node = "w2"
labels = { app = "web", tier = "front" }
ports = [ { name = "http", port = 8081 } ]

[[cluster.pod]]
name = "client-a"
namespace = "a"
node = "w2"
labels = { app = "client" }

[[cluster.pod]]
name = "client-b"
namespace = "b"
node = "w1"
labels = { app = "client" }

[[cluster.service]]
name = "web"
namespace = "a"
selector = { app = "web" }
ports = [ { port = 80, target_port = "http" } ]
"#;

fn with(policies: &str, flows: &[(&str, &str, &str)]) -> netsim::report::Report {
    let mut text = format!("{BASE}\n{policies}\n");
    for (name, from, to) in flows {
        text.push_str(&format!(
            "[[flow]]\nname = \"{name}\"\nfrom = \"{from}\"\nto = \"{to}\"\nprotocol = \"tcp\"\n\n"
        ));
    }
    let (_, _, report) = run_text(&text);
    report
}

fn verdict(report: &netsim::report::Report, name: &str) -> String {
    flow(report, name).verdict.clone()
}

fn rules(report: &netsim::report::Report, name: &str) -> Vec<(String, String, String)> {
    flow(report, name)
        .policy
        .iter()
        .map(|p| (p.direction.clone(), p.verdict.clone(), p.rule.clone()))
        .collect()
}

const DENY_A: &str =
    "[[cluster.network_policy]]\nname = \"deny\"\nnamespace = \"a\"\npod_selector = {}\n";

#[test]
fn without_policy_nothing_is_isolated_and_nothing_is_recorded() {
    let report = with("", &[("b-to-web", "pod:b/client-b", "pod:a/web-1")]);
    assert_eq!(verdict(&report, "b-to-web"), "delivered");
    assert!(rules(&report, "b-to-web").is_empty());
}

#[test]
fn a_default_deny_isolates_ingress_and_names_itself() {
    let report = with(
        DENY_A,
        &[
            ("b-to-web", "pod:b/client-b", "pod:a/web-1"),
            ("web-to-b", "pod:a/web-1", "pod:b/client-b:8080"),
        ],
    );
    let blocked = flow(&report, "b-to-web");
    assert_eq!(blocked.verdict, "dropped");
    let drop = blocked.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("w1", "policy")
    );
    assert!(
        drop.detail.contains("default-deny by isolation: a/deny"),
        "{}",
        drop.detail
    );
    assert_eq!(
        rules(&report, "b-to-web"),
        [(
            "ingress".to_string(),
            "drop".to_string(),
            "default-deny by isolation: a/deny".to_string()
        )]
    );
    // Egress is not isolated by an Ingress-only policy: web-1 reaches out (b's
    // client has no listener there, so it is refused by the pod, not by policy).
    assert!(rules(&report, "web-to-b").is_empty());
    assert_ne!(
        flow(&report, "web-to-b")
            .drop
            .as_ref()
            .map(|d| d.reason.as_str()),
        Some("policy")
    );
}

#[test]
fn allows_are_additive_and_selectors_combine_namespace_and_pod_with_and() {
    let policies = format!(
        "{DENY_A}\n[[cluster.network_policy]]\nname = \"from-prod-clients\"\nnamespace = \"a\"\npod_selector = {{ match_labels = {{ app = \"web\" }} }}\ningress = [ {{ from = [ {{ namespace_selector = {{ match_labels = {{ env = \"prod\" }} }}, pod_selector = {{ match_labels = {{ app = \"client\" }} }} }} ] }} ]\n"
    );
    let report = with(
        &policies,
        &[
            ("a-client", "pod:a/client-a", "pod:a/web-1"),
            ("b-client", "pod:b/client-b", "pod:a/web-1"),
            ("web-to-web", "pod:a/web-2", "pod:a/web-1"),
        ],
    );
    assert_eq!(verdict(&report, "a-client"), "delivered");
    assert_eq!(
        rules(&report, "a-client"),
        [(
            "ingress".to_string(),
            "allow".to_string(),
            "network_policy:a/from-prod-clients ingress[0]".to_string()
        )]
    );
    // b's namespace is not prod; web-2 is not a client.
    assert_eq!(verdict(&report, "b-client"), "dropped");
    assert_eq!(verdict(&report, "web-to-web"), "dropped");
}

#[test]
fn named_ports_resolve_on_each_destination_pod_and_ranges_bound_numbers() {
    // `http` is 8080 on web-1 and 8081 on web-2; the rule allows each its own.
    let policies = format!(
        "{DENY_A}\n[[cluster.network_policy]]\nname = \"http\"\nnamespace = \"a\"\npod_selector = {{ match_labels = {{ app = \"web\" }} }}\ningress = [ {{ ports = [ {{ port = \"http\" }} ] }}, {{ ports = [ {{ port = 9000, end_port = 9100 }} ] }} ]\n"
    );
    let report = with(
        &policies,
        &[
            ("web-1-http", "pod:b/client-b", "pod:a/web-1:8080"),
            ("web-2-http", "pod:b/client-b", "pod:a/web-2:8081"),
            ("web-2-at-8080", "pod:b/client-b", "pod:a/web-2:8080"),
            ("range-in", "pod:b/client-b", "pod:a/web-1:9050"),
            ("range-out", "pod:b/client-b", "pod:a/web-1:9101"),
        ],
    );
    assert_eq!(verdict(&report, "web-1-http"), "delivered");
    assert_eq!(verdict(&report, "web-2-http"), "delivered");
    assert_eq!(verdict(&report, "web-2-at-8080"), "dropped");
    // 9050 is allowed by the range: the pod itself refuses (nothing listens).
    let range_in = flow(&report, "range-in");
    assert_eq!(range_in.drop.as_ref().unwrap().reason, "no-listener");
    assert_eq!(
        rules(&report, "range-in")[0].2,
        "network_policy:a/http ingress[1]"
    );
    assert_eq!(
        flow(&report, "range-out").drop.as_ref().unwrap().reason,
        "policy"
    );
}

#[test]
fn replies_of_an_allowed_connection_pass_an_isolated_egress() {
    // web-1 may send nothing (egress = []), yet answers what its ingress allows.
    let policies = "[[cluster.network_policy]]\nname = \"lockdown\"\nnamespace = \"a\"\npod_selector = { match_labels = { app = \"web\" } }\npolicy_types = [\"Ingress\", \"Egress\"]\ningress = [ {} ]\negress = []\n";
    let report = with(
        policies,
        &[
            ("to-web", "pod:b/client-b", "pod:a/web-1"),
            ("from-web", "pod:a/web-1", "pod:b/client-b:8080"),
        ],
    );
    assert_eq!(verdict(&report, "to-web"), "delivered");
    assert_balanced(&report, "to-web");
    let from_web = flow(&report, "from-web");
    assert_eq!(from_web.drop.as_ref().unwrap().reason, "policy");
    assert_eq!(
        rules(&report, "from-web"),
        [(
            "egress".to_string(),
            "drop".to_string(),
            "default-deny by isolation: a/lockdown".to_string()
        )]
    );
}

#[test]
fn policy_sees_the_endpoint_after_service_dnat_and_ip_blocks_cover_pods() {
    // Allow web from an ip_block that holds client-a's address but excepts w1's
    // pod CIDR (client-b): through the ClusterIP, the endpoint web-1 decides.
    let policies = format!(
        "{DENY_A}\n[[cluster.network_policy]]\nname = \"block\"\nnamespace = \"a\"\npod_selector = {{ match_labels = {{ app = \"web\" }} }}\ningress = [ {{ from = [ {{ ip_block = {{ cidr = \"172.20.0.0/16\", except = [\"172.20.1.0/24\"] }} }} ] }} ]\n"
    );
    let report = with(
        &policies,
        &[
            ("a-via-svc", "pod:a/client-a", "svc:a/web:80"),
            ("b-via-svc", "pod:b/client-b", "svc:a/web:80"),
        ],
    );
    assert_eq!(verdict(&report, "a-via-svc"), "delivered");
    assert_eq!(
        rules(&report, "a-via-svc")[0].2,
        "network_policy:a/block ingress[0]"
    );
    assert_eq!(verdict(&report, "b-via-svc"), "dropped");
}

#[test]
fn match_expressions_select_with_not_in_and_does_not_exist() {
    let policies = "[[cluster.network_policy]]\nname = \"expr\"\nnamespace = \"a\"\npod_selector = { match_expressions = [ { key = \"tier\", operator = \"NotIn\", values = [\"back\"] }, { key = \"app\", operator = \"Exists\" } ] }\ningress = [ { from = [ { pod_selector = { match_expressions = [ { key = \"tier\", operator = \"DoesNotExist\" } ] } } ] } ]\n";
    let report = with(
        policies,
        &[
            ("client-to-web", "pod:a/client-a", "pod:a/web-1"),
            ("web-to-web", "pod:a/web-2", "pod:a/web-1"),
        ],
    );
    // client-a has no tier label: DoesNotExist selects it; web-2 has one.
    assert_eq!(verdict(&report, "client-to-web"), "delivered");
    assert_eq!(verdict(&report, "web-to-web"), "dropped");
}

fn refused(policies: &str, needle: &str, message: &str) {
    let text = format!("{BASE}\n{policies}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("np.toml");
    std::fs::write(&file, &text).unwrap();
    let run = netsim(&["check", file.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(2));
    let stderr = String::from_utf8(run.stderr).unwrap();
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle}"));
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    assert!(
        stderr.contains(&format!("np.toml:{line}:{column}: ")),
        "wanted {line}:{column} in {stderr}"
    );
    assert!(stderr.contains(message), "wanted {message:?} in {stderr}");
}

#[test]
fn policy_mistakes_are_located() {
    let head = "[[cluster.network_policy]]\nname = \"p\"\nnamespace = \"a\"\n";
    refused(
        &format!("{head}pod_selector = {{ match_expressions = [ {{ key = \"x\", operator = \"Near\" }} ] }}\n"),
        "\"Near\"",
        "unknown selector operator `Near`",
    );
    refused(
        &format!("{head}pod_selector = {{ match_expressions = [ {{ key = \"x\", operator = \"In\" }} ] }}\n"),
        "{ key = \"x\"",
        "operator In needs `values`",
    );
    refused(
        &format!("{head}ingress = [ {{ ports = [ {{ port = \"http\", end_port = 90 }} ] }} ]\n"),
        "90 }",
        "end_port cannot follow a named port",
    );
    refused(
        &format!("{head}ingress = [ {{ ports = [ {{ port = 100, end_port = 90 }} ] }} ]\n"),
        "90 }",
        "end_port 90 is below port 100",
    );
    refused(
        &format!("{head}ingress = [ {{ from = [ {{ ip_block = {{ cidr = \"10.0.0.0/8\", except = [\"11.0.0.0/16\"] }} }} ] }} ]\n"),
        "\"11.0.0.0/16\"",
        "except 11.0.0.0/16 is outside its cidr 10.0.0.0/8",
    );
    refused(
        &format!("{head}policy_types = [\"Ingres\"]\n"),
        "\"Ingres\"",
        "unknown policy type `Ingres`",
    );
    refused(
        &format!("{head}ingress = [ {{ ports = [ {{ protocol = \"ICMP\" }} ] }} ]\n"),
        "\"ICMP\"",
        "unknown protocol `ICMP`",
    );
}

#[test]
fn antrea_tiers_decide_before_kubernetes_policy_and_baseline_after() {
    let (topology, result, report) = run("antrea-tiers");
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    // Pass hands the decision to Kubernetes policy: both are named, in order.
    assert_eq!(
        rules(&report, "web-to-api"),
        [
            (
                "ingress".to_string(),
                "pass".to_string(),
                "cluster_network_policy:team-a-decides ingress[0]".to_string()
            ),
            (
                "ingress".to_string(),
                "allow".to_string(),
                "network_policy:team-a/web-to-api ingress[0]".to_string()
            ),
        ]
    );
    // A securityops Allow opens what team-a's isolation would drop.
    assert_eq!(
        rules(&report, "prom-to-api")[0].2,
        "cluster_network_policy:allow-monitoring ingress[0]"
    );
    // A securityops Drop beats the Kubernetes allow for the quarantined pod.
    assert_eq!(
        rules(&report, "web-to-legacy"),
        [(
            "ingress".to_string(),
            "drop".to_string(),
            "cluster_network_policy:quarantine ingress[0]".to_string()
        )]
    );
    // Baseline guards team-b (no Kubernetes policy there) ...
    assert_eq!(
        rules(&report, "tool-to-team-b")[0].2,
        "cluster_network_policy:namespace-walls ingress[0]"
    );
    // ... but never opens what Kubernetes policy isolates: dev -> team-a dies by
    // team-a's isolation, not by a baseline rule.
    assert_eq!(
        rules(&report, "tool-to-api")[0].2,
        "default-deny by isolation: team-a/web-to-api"
    );
    // Reject: the quarantined client gets a TCP reset from the destination at once.
    let resets = frames_at(
        &topology,
        &result,
        "legacy-out",
        "team-a/legacy:eth0",
        netsim::datapath::HopAction::Deliver,
    );
    assert_eq!(resets.len(), 1);
    let reset = &resets[0];
    assert_eq!(
        reset.meta.tcp_flags & netsim::packet::tcp_flags::RST,
        netsim::packet::tcp_flags::RST
    );
    assert_eq!(reset.meta.key.source.to_string(), "172.20.2.5");
    assert_eq!(flow(&report, "legacy-out").connections.failed, 1);
}

#[test]
fn a_udp_reject_answers_with_icmp_administratively_prohibited() {
    let policies = "[[cluster.cluster_network_policy]]\nname = \"no-udp\"\npriority = 1.0\napplied_to = [ { pod_selector = { match_labels = { app = \"web\" } } } ]\ningress = [ { action = \"Reject\", ports = [ { protocol = \"UDP\" } ] } ]\n";
    let text = format!(
        "{BASE}\n{policies}\n[[flow]]\nname = \"dns\"\nfrom = \"pod:b/client-b\"\nto = \"pod:a/web-1:53\"\nprotocol = \"udp\"\n"
    );
    let (topology, result, report) = run_text(&text);
    let dns = flow(&report, "dns");
    assert_eq!(dns.verdict, "dropped");
    assert_eq!(dns.icmp_received, ["type 3 code 10 from 172.20.1.2"]);
    assert!(!frames_at(
        &topology,
        &result,
        "dns",
        "b/client-b:eth0",
        netsim::datapath::HopAction::Deliver
    )
    .is_empty());
}

#[test]
fn cluster_network_policy_mistakes_are_located() {
    let head = "[[cluster.cluster_network_policy]]\nname = \"p\"\n";
    refused(
        &format!("{head}tier = \"ops\"\npriority = 1.0\n"),
        "\"ops\"",
        "unknown tier `ops`",
    );
    refused(
        &format!("{head}priority = 10001.0\n"),
        "10001.0",
        "priority 10001 is outside 1.0-10000.0",
    );
    refused(
        &format!(
            "{head}tier = \"baseline\"\npriority = 1.0\ningress = [ {{ action = \"Pass\" }} ]\n"
        ),
        "\"Pass\"",
        "Pass is not allowed in the baseline tier",
    );
    refused(
        &format!("{head}priority = 1.0\ningress = [ {{ action = \"Deny\" }} ]\n"),
        "\"Deny\"",
        "unknown action `Deny`",
    );
}

/// The matrix cell of `from` -> `to` for TCP `port`.
fn cell(matrix: &netsim::report::matrix::Matrix, from: &str, to: &str) -> bool {
    let row = matrix.rows.iter().position(|r| r == from).unwrap();
    let column = matrix.columns.iter().position(|c| c == to).unwrap();
    matrix.allowed[row][column]
}

#[test]
fn the_matrix_agrees_with_run_on_every_pod_to_pod_flow_of_the_examples() {
    for name in ["network-policy", "antrea-tiers"] {
        let (topology, _, report) = run(name);
        for flow in &topology.flows {
            let (Some(from), Some(to)) = (
                flow.from_text.strip_prefix("pod:"),
                flow.to_text.strip_prefix("pod:"),
            ) else {
                continue;
            };
            let to = to.split(':').next().unwrap();
            let matrix = netsim::report::matrix::build(
                &topology,
                netsim::wire::PROTOCOL_TCP,
                flow.destination_port,
                None,
            );
            let outcome = common::flow(&report, &flow.name);
            let blocked_by_policy = outcome.drop.as_ref().is_some_and(|d| d.reason == "policy");
            assert_eq!(
                cell(&matrix, from, to),
                !blocked_by_policy,
                "{name}: {} ({from} -> {to})",
                flow.name
            );
        }
    }
}

#[test]
fn the_matrix_lists_the_deciding_rules_and_hosts() {
    let topology = netsim::topology::load(&topology_path("network-policy")).unwrap();
    let matrix = netsim::report::matrix::build(&topology, netsim::wire::PROTOCOL_TCP, 8080, None);
    assert!(matrix.columns.contains(&"host:desk".to_string()));
    // desk -> frontend on 8080: the ip_block rule.
    let row = matrix.rows.iter().position(|r| r == "host:desk").unwrap();
    let column = matrix
        .columns
        .iter()
        .position(|c| c == "shop/frontend-1")
        .unwrap();
    assert!(matrix.allowed[row][column]);
    assert_eq!(
        matrix.rules[row][column],
        ["ingress: network_policy:shop/allow-frontend ingress[1]"]
    );
    // quarantined -> frontend: the isolation.
    let row = matrix
        .rows
        .iter()
        .position(|r| r == "host:quarantined")
        .unwrap();
    assert!(!matrix.allowed[row][column]);
    // --namespace keeps that namespace's pods only.
    let shop =
        netsim::report::matrix::build(&topology, netsim::wire::PROTOCOL_TCP, 8080, Some("shop"));
    assert_eq!(shop.rows, ["shop/frontend-1", "shop/api-1", "shop/db-1"]);
    let output = netsim(&[
        "matrix",
        "topologies/network-policy.toml",
        "--port",
        "8080",
        "--format",
        "csv",
    ]);
    assert!(output.status.success());
    let csv = String::from_utf8(output.stdout).unwrap();
    assert!(
        csv.starts_with("source,ingress/lb-1,shop/frontend-1,"),
        "{csv}"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const LABELS: [&str; 3] = ["web", "client", "db"];

    /// A Kubernetes policy in namespace a or b selecting app=L, allowing ingress
    /// from app=M pods of either namespace.
    fn kubernetes_policy(index: usize, namespace: u8, own: usize, peer: usize) -> String {
        let namespace = if namespace == 0 { "a" } else { "b" };
        format!(
            "[[cluster.network_policy]]\nname = \"k{index}\"\nnamespace = \"{namespace}\"\npod_selector = {{ match_labels = {{ app = \"{}\" }} }}\ningress = [ {{ from = [ {{ namespace_selector = {{}}, pod_selector = {{ match_labels = {{ app = \"{}\" }} }} }} ] }} ]\n\n",
            LABELS[own], LABELS[peer]
        )
    }

    fn antrea_policy(name: &str, tier: &str, action: &str, own: usize, peer: usize) -> String {
        format!(
            "[[cluster.cluster_network_policy]]\nname = \"{name}\"\ntier = \"{tier}\"\npriority = 10.0\napplied_to = [ {{ pod_selector = {{ match_labels = {{ app = \"{}\" }} }} }} ]\ningress = [ {{ action = \"{action}\", from = [ {{ pod_selector = {{ match_labels = {{ app = \"{}\" }} }} }} ] }} ]\n\n",
            LABELS[own], LABELS[peer]
        )
    }

    fn matrix_of(policies: &str) -> netsim::report::matrix::Matrix {
        let topology = netsim::topology::parse("p.toml", &format!("{BASE}\n{policies}")).unwrap();
        netsim::report::matrix::build(&topology, netsim::wire::PROTOCOL_TCP, 8080, None)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// An Antrea Allow never turns a `.` into an `X` when no Drop or Reject
        /// rule exists.
        #[test]
        fn adding_an_allow_never_removes_a_dot(
            kubernetes in prop::collection::vec((0u8..2, 0usize..3, 0usize..3), 0..4),
            allow in (0usize..3, 0usize..3),
        ) {
            let mut policies = String::new();
            for (index, (namespace, own, peer)) in kubernetes.iter().enumerate() {
                policies.push_str(&kubernetes_policy(index, *namespace, *own, *peer));
            }
            let before = matrix_of(&policies);
            policies.push_str(&antrea_policy("extra-allow", "application", "Allow", allow.0, allow.1));
            let after = matrix_of(&policies);
            for (row_before, row_after) in before.allowed.iter().zip(&after.allowed) {
                for (was, is) in row_before.iter().zip(row_after) {
                    prop_assert!(!*was || *is);
                }
            }
        }

        /// A securityops Drop wins over every application-tier Allow and every
        /// Kubernetes allow for the pairs it covers.
        #[test]
        fn a_drop_in_a_higher_tier_always_wins(
            kubernetes in prop::collection::vec((0u8..2, 0usize..3, 0usize..3), 0..4),
            allows in prop::collection::vec((0usize..3, 0usize..3), 0..3),
            drop in (0usize..3, 0usize..3),
        ) {
            let mut policies = String::new();
            for (index, (namespace, own, peer)) in kubernetes.iter().enumerate() {
                policies.push_str(&kubernetes_policy(index, *namespace, *own, *peer));
            }
            for (index, (own, peer)) in allows.iter().enumerate() {
                policies.push_str(&antrea_policy(&format!("allow-{index}"), "application", "Allow", *own, *peer));
            }
            policies.push_str(&antrea_policy("drop", "securityops", "Drop", drop.0, drop.1));
            let topology = netsim::topology::parse("p.toml", &format!("{BASE}\n{policies}")).unwrap();
            let matrix = netsim::report::matrix::build(&topology, netsim::wire::PROTOCOL_TCP, 8080, None);
            let pods = &topology.clusters[0].pods;
            for (row, source) in matrix.rows.iter().enumerate() {
                for (column, destination) in matrix.columns.iter().enumerate() {
                    let label = |name: &str| {
                        pods.iter()
                            .find(|p| p.qualified_name() == name)
                            .and_then(|p| p.labels.get("app").cloned())
                    };
                    if label(destination).as_deref() == Some(LABELS[drop.0])
                        && label(source).as_deref() == Some(LABELS[drop.1])
                    {
                        prop_assert!(!matrix.allowed[row][column], "{source} -> {destination}");
                    }
                }
            }
        }
    }
}

#[test]
fn check_writes_junit_and_names_the_deciding_rule_of_a_failed_expectation() {
    let text = std::fs::read_to_string(topology_path("antrea-tiers"))
        .unwrap()
        .replace(
            "[[expect]]\nflow = \"web-to-legacy\"\nverdict = \"dropped\"",
            "[[expect]]\nflow = \"web-to-legacy\"\nverdict = \"delivered\"",
        );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiers.toml");
    std::fs::write(&file, &text).unwrap();
    let junit = dir.path().join("report.xml");
    let output = netsim(&[
        "check",
        file.to_str().unwrap(),
        "--quiet",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("decided_by=drop cluster_network_policy:quarantine ingress[0] on w2"),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    assert!(xml.contains("<testsuite name=\"antrea-tiers\" tests=\"7\" failures=\"1\">"));
    assert_eq!(xml.matches("<testcase ").count(), 7);
    assert_eq!(xml.matches("<failure message=").count(), 1);
    assert!(xml.contains("cluster_network_policy:quarantine ingress[0]"));
    // Nothing but the named file was written.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn the_dfw_sees_geneve_in_encap_and_pod_addresses_when_routed() {
    let (_, _, report) = run("nsx-dfw");
    assert!(
        report.expectations.iter().all(|e| e.ok),
        "{:#?}",
        report.expectations
    );
    // Encap: the DFW decides on the outer Geneve packets between node IPs.
    assert!(rules(&report, "overlay-cross-node")
        .iter()
        .all(|(_, verdict, rule)| verdict == "allow" && rule == "dfw:protect-nodes/allow-geneve"));
    // Routed: the DFW at the node's vNIC and the NetworkPolicy in OVS, in order.
    assert_eq!(
        rules(&report, "desk-to-web"),
        [
            (
                "ingress".to_string(),
                "allow".to_string(),
                "dfw:protect-nodes/allow-web".to_string()
            ),
            (
                "ingress".to_string(),
                "allow".to_string(),
                "network_policy:default/web-from-corp ingress[0]".to_string()
            ),
        ]
    );
    let admin = flow(&report, "desk-to-admin");
    assert_eq!(admin.drop.as_ref().unwrap().device, "dfw:b-worker-1");
}

#[test]
fn a_dfw_that_drops_geneve_cuts_cross_node_pods_but_not_same_node_ones() {
    let text = std::fs::read_to_string(topology_path("nsx-dfw"))
        .unwrap()
        .replace("action = \"allow\", sources = [\"10.20.0.0/24\"]", "action = \"reject\", sources = [\"10.20.0.0/24\"]")
        .replace(
            "[[cluster.pod]]\nname = \"server\"\nnode = \"a-worker-2\"",
            "[[cluster.pod]]\nname = \"neighbour\"\nnode = \"a-worker-1\"\nports = [ { port = 8080 } ]\n\n[[cluster.pod]]\nname = \"server\"\nnode = \"a-worker-2\"",
        )
        + "\n[[flow]]\nname = \"same-node\"\nfrom = \"pod:overlay/default/client\"\nto = \"pod:overlay/default/neighbour\"\nprotocol = \"tcp\"\n";
    let (_, _, report) = run_text(&text);
    let cross = flow(&report, "overlay-cross-node");
    assert_eq!(cross.verdict, "dropped");
    let drop = cross.drop.as_ref().unwrap();
    assert_eq!(
        (drop.device.as_str(), drop.reason.as_str()),
        ("dfw:a-worker-1", "policy")
    );
    assert!(drop
        .detail
        .contains("rejected by dfw:protect-nodes/allow-geneve"));
    assert_eq!(flow(&report, "same-node").verdict, "delivered");
}

#[test]
fn dfw_mistakes_are_located() {
    let example = std::fs::read_to_string(topology_path("nsx-dfw")).unwrap();
    for (from, to, needle, message) in [
        (
            "action = \"drop\"",
            "action = \"deny\"",
            "\"deny\"",
            "unknown DFW action `deny`",
        ),
        (
            "services = [\"tcp/8080\"]",
            "services = [\"http\"]",
            "\"http\"",
            "service `http` is not any, icmp",
        ),
        (
            "category = \"application\"",
            "category = \"apps\"",
            "\"apps\"",
            "unknown category `apps`",
        ),
        (
            "applied_to = { vms = [\"a-worker-1\",",
            "applied_to = { vms = [\"a-worker-9\",",
            "\"a-worker-9\"",
            "no node or host named `a-worker-9`",
        ),
    ] {
        let text = example.replacen(from, to, 1);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dfw.toml");
        std::fs::write(&file, &text).unwrap();
        let run = netsim(&["check", file.to_str().unwrap()]);
        assert_eq!(run.status.code(), Some(2), "{to}");
        let stderr = String::from_utf8(run.stderr).unwrap();
        let at = text.find(needle).unwrap();
        let line = text[..at].matches('\n').count() + 1;
        let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        assert!(
            stderr.contains(&format!("dfw.toml:{line}:{column}: ")),
            "{to}: {stderr}"
        );
        assert!(stderr.contains(message), "{stderr}");
    }
}
