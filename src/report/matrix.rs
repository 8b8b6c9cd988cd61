//! `netsim matrix`: the reachability truth table policy gives between pods (and named
//! hosts) for one protocol and port, like a NetworkPolicy conformance table — rows
//! are sources, columns destinations, `.` allowed and `X` blocked, each cell with the
//! rules that decided it. It evaluates the compiled policy (`datapath::policy`, the
//! same layers `run` enforces: egress on the source's side, ingress on the
//! destination's), not a packet per cell; routing and NAT are `run`'s business.

use crate::datapath::policy::{compile, ClusterPolicy, PolicyAction, PolicyDirection};
use crate::packet::FlowKey;
use crate::topology::Topology;
use serde::Serialize;
use std::net::Ipv4Addr;

/// The source port a matrix cell's connection uses (policy never matches on it).
const EPHEMERAL_PORT: u16 = 40000;

/// The truth table (SPEC §1 `matrix` JSON).
#[derive(Debug, Serialize)]
pub struct Matrix {
    pub protocol: String,
    pub port: u16,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub allowed: Vec<Vec<bool>>,
    pub rules: Vec<Vec<Vec<String>>>,
}

/// A pod or host in the table.
struct Member {
    label: String,
    ip: Ipv4Addr,
    /// The pod's cluster (its policy applies); None for a host.
    cluster: Option<usize>,
}

/// Builds the table for `protocol` (an IP protocol number) and `port`, over every pod
/// (of `namespace` when given) and, without a namespace, every host.
pub fn build(topology: &Topology, protocol: u8, port: u16, namespace: Option<&str>) -> Matrix {
    let policies: Vec<ClusterPolicy> = topology.clusters.iter().map(compile).collect();
    let members = members(topology, namespace);
    let mut allowed = Vec::with_capacity(members.len());
    let mut rules = Vec::with_capacity(members.len());
    for source in &members {
        let mut allowed_row = Vec::with_capacity(members.len());
        let mut rules_row = Vec::with_capacity(members.len());
        for destination in &members {
            let key = FlowKey {
                protocol,
                source: source.ip,
                destination: destination.ip,
                source_port: EPHEMERAL_PORT,
                destination_port: port,
            };
            let (ok, deciding) = cell(&policies, source, destination, &key);
            allowed_row.push(ok);
            rules_row.push(deciding);
        }
        allowed.push(allowed_row);
        rules.push(rules_row);
    }
    let labels: Vec<String> = members.into_iter().map(|m| m.label).collect();
    Matrix {
        protocol: protocol_name(protocol).to_string(),
        port,
        rows: labels.clone(),
        columns: labels,
        allowed,
        rules,
    }
}

/// One cell: the source's egress policy, then the destination's ingress policy.
fn cell(
    policies: &[ClusterPolicy],
    source: &Member,
    destination: &Member,
    key: &FlowKey,
) -> (bool, Vec<String>) {
    let mut deciding = Vec::new();
    let mut ok = true;
    for (member, direction) in [
        (source, PolicyDirection::Egress),
        (destination, PolicyDirection::Ingress),
    ] {
        let Some(cluster) = member.cluster else {
            continue;
        };
        let steps = policies[cluster].direction(direction).decide(key);
        for step in &steps {
            if let Some(rule) = &step.rule {
                deciding.push(format!("{}: {rule}", direction.name()));
            }
        }
        let last = steps.last().map_or(PolicyAction::Allow, |s| s.action);
        if matches!(last, PolicyAction::Drop | PolicyAction::Reject) {
            ok = false;
            break;
        }
    }
    (ok, deciding)
}

fn members(topology: &Topology, namespace: Option<&str>) -> Vec<Member> {
    let several = topology.clusters.len() > 1;
    let mut members = Vec::new();
    for (index, cluster) in topology.clusters.iter().enumerate() {
        for pod in &cluster.pods {
            if namespace.is_some_and(|ns| ns != pod.namespace) {
                continue;
            }
            let label = if several {
                format!("{}/{}", cluster.name, pod.qualified_name())
            } else {
                pod.qualified_name()
            };
            members.push(Member {
                label,
                ip: pod.ip,
                cluster: Some(index),
            });
        }
    }
    if namespace.is_none() {
        for host in &topology.hosts {
            members.push(Member {
                label: format!("host:{}", host.name),
                ip: host.ip,
                cluster: None,
            });
        }
    }
    members
}

fn protocol_name(protocol: u8) -> &'static str {
    match protocol {
        crate::wire::PROTOCOL_TCP => "tcp",
        crate::wire::PROTOCOL_UDP => "udp",
        crate::topology::policy::PROTOCOL_SCTP => "sctp",
        _ => "ip",
    }
}

/// The table as text: a header of column numbers, one row per source.
pub fn text(matrix: &Matrix) -> String {
    let width = matrix.rows.iter().map(String::len).max().unwrap_or(0);
    let mut out = format!(
        "{}/{} — policy only (the compiled rules, no packets); . allowed, X blocked\n",
        matrix.protocol, matrix.port
    );
    for (index, column) in matrix.columns.iter().enumerate() {
        out.push_str(&format!("  [{index}] {column}\n"));
    }
    out.push_str(&format!("{:width$} ", ""));
    for index in 0..matrix.columns.len() {
        out.push_str(&format!("{:>3}", index % 1000));
    }
    out.push('\n');
    for (row, cells) in matrix.rows.iter().zip(&matrix.allowed) {
        out.push_str(&format!("{row:width$} "));
        for &ok in cells {
            out.push_str(if ok { "  ." } else { "  X" });
        }
        out.push('\n');
    }
    out
}

/// The table as CSV: a header of destinations, then per source `.` / `X`.
pub fn csv(matrix: &Matrix) -> String {
    let quote = |field: &str| {
        if field.contains([',', '"']) {
            format!("\"{}\"", field.replace('"', "\"\""))
        } else {
            field.to_string()
        }
    };
    let mut out = String::from("source");
    for column in &matrix.columns {
        out.push(',');
        out.push_str(&quote(column));
    }
    out.push('\n');
    for (row, cells) in matrix.rows.iter().zip(&matrix.allowed) {
        out.push_str(&quote(row));
        for &ok in cells {
            out.push_str(if ok { ",." } else { ",X" });
        }
        out.push('\n');
    }
    out
}
