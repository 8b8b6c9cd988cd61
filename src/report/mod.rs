//! `report.json` (SPEC §3) and the text summary: every flow's verdict, counters,
//! path, NAT and drop; every expectation with what was seen; run-wide counters.
//! Fields are serialized in a fixed order, so reports are byte-identical run to run.

pub mod matrix;
pub mod routes;

use crate::datapath::Hop;
use crate::packet::FlowTag;
use crate::sim::network::Network;
use crate::sim::runner::{FlowOutcome, RunResult};
use crate::topology::{Expectation, Flow, Topology, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct Report {
    pub topology: String,
    pub netsim_version: String,
    pub seed: u64,
    pub flows: Vec<FlowReport>,
    pub expectations: Vec<ExpectationReport>,
    /// Antrea NodePortLocal mappings: `NODE_IP:PORT` -> `POD_IP:PORT`.
    pub node_port_local: Vec<NodePortLocalReport>,
    pub counters: Counters,
}

#[derive(Debug, Serialize)]
pub struct NodePortLocalReport {
    /// `NS/NAME`.
    pub pod: String,
    pub node: String,
    pub protocol: String,
    /// `NODE_IP:PORT`.
    pub node_address: String,
    /// `POD_IP:PORT`.
    pub pod_address: String,
}

#[derive(Debug, Serialize)]
pub struct FlowReport {
    pub name: String,
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub destination: String,
    pub verdict: String,
    pub packets: PacketCounts,
    pub connections: ConnectionCounts,
    pub seen_source: Option<String>,
    pub path: Vec<PathHop>,
    pub reply_path: Vec<PathHop>,
    pub nat: Vec<NatReport>,
    pub policy: Vec<PolicyReport>,
    pub drop: Option<DropReport>,
    pub icmp_received: Vec<String>,
    /// The path MTU the sender discovered (from ICMP fragmentation-needed), and where.
    pub path_mtu: Option<PathMtuReport>,
    /// What the endpoints' stacks refused locally or reported to the application.
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct PathMtuReport {
    pub mtu: u16,
    /// The source of the fragmentation-needed the sender received.
    pub from: String,
    /// The capture point (`DEVICE:INTERFACE`) of the device that built it.
    pub reported_by: String,
}

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
pub struct PacketCounts {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
}

#[derive(Debug, Serialize)]
pub struct ConnectionCounts {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    /// Why the failed connections failed, counted: the drop reason of a
    /// connection's lost request packets (`snat-ports-exhausted`, `conntrack-full`,
    /// …), or what the client's own stack said (`EADDRNOTAVAIL`, an ICMP error's
    /// errno), else `no-answer`.
    pub failure_reasons: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Clone)]
pub struct PathHop {
    pub time_us: f64,
    pub device: String,
    pub interface: String,
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct NatReport {
    pub device: String,
    /// Who translated: `kube-proxy`, `AntreaProxy`, `netfilter`.
    pub component: String,
    pub kind: String,
    pub from: String,
    pub to: String,
}

/// A policy rule's decision on the flow (each distinct one once).
#[derive(Debug, Serialize)]
pub struct PolicyReport {
    pub device: String,
    pub direction: String,
    pub verdict: String,
    pub rule: String,
}

#[derive(Debug, Serialize)]
pub struct DropReport {
    pub device: String,
    pub reason: String,
    pub detail: String,
    /// `request` (on the way to the destination) or `reply` (on the way back).
    pub direction: String,
}

#[derive(Debug, Serialize)]
pub struct ExpectationReport {
    pub expect: String,
    pub ok: bool,
    pub got: String,
}

#[derive(Debug, Serialize)]
pub struct Counters {
    pub packets_sent: u64,
    pub packets_delivered: u64,
    pub packets_dropped: u64,
    pub drops_by_reason: BTreeMap<String, u64>,
    pub packets_generated_by_devices: u64,
    pub flow_cache_hits: u64,
    pub flow_cache_misses: u64,
    pub conntrack_entries: usize,
    /// Endpoints (pods, hosts) whose TCP/IP stack was built: those some flow touched.
    pub endpoint_stacks: usize,
    pub events: u64,
    pub simulated_ns: u64,
}

/// What was lost of a flow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Losses {
    /// A packet on its way to the destination (or refused there) was dropped.
    pub request: bool,
    /// A packet on its way back to the client was dropped.
    pub reply: bool,
}

/// The verdict of one flow: delivered when every connection completed its exchange;
/// dropped when not and a packet on its way to the destination was dropped (or
/// refused there); no reply when only answers were lost on the way back (the lost
/// reply: `drop` names where) or nothing explains the silence.
pub fn flow_verdict(flow: &Flow, outcome: &FlowOutcome, losses: Losses) -> Verdict {
    let all_answered = outcome.connections.len() == flow.connections as usize
        && outcome
            .connections
            .iter()
            .all(|c| c.completed && !c.failed && c.answers == flow.requests);
    if all_answered {
        Verdict::Delivered
    } else if losses.request {
        Verdict::Dropped
    } else {
        Verdict::NoReply
    }
}

fn path_of(network: &Network, hops: &[&Hop], packet_id: Option<u64>) -> Vec<PathHop> {
    let Some(packet_id) = packet_id else {
        return Vec::new();
    };
    hops.iter()
        .filter(|hop| hop.packet_id == packet_id)
        .map(|hop| {
            let point = &network.points[hop.point as usize];
            let interface = point
                .name
                .rsplit_once(':')
                .map(|(_, i)| i.to_string())
                .unwrap_or_default();
            // Microseconds with nanosecond precision; exact in f64 for any realistic run.
            #[allow(clippy::cast_precision_loss)]
            let time_us = hop.time_ns as f64 / 1000.0;
            PathHop {
                time_us,
                device: point.device.clone(),
                interface,
                action: hop.action.name().to_string(),
                detail: hop.detail.clone(),
            }
        })
        .collect()
}

/// Devices along a path, consecutive repeats collapsed.
pub fn path_devices(path: &[PathHop]) -> Vec<String> {
    let mut devices: Vec<String> = Vec::new();
    for hop in path {
        if devices.last() != Some(&hop.device) {
            devices.push(hop.device.clone());
        }
    }
    devices
}

/// A stretch of a sequence: an item kept, or repetitions folded away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// The item at this index.
    Keep(usize),
    /// `count` items repeating the cycle that starts at index `cycle` (of `period`).
    Folded {
        cycle: usize,
        period: usize,
        count: usize,
    },
}

/// Folds a sequence where a cycle of up to six items repeats three times or more
/// (a routing loop): the first cycle and the last are kept, the ones between are
/// folded into one [`Fold::Folded`].
pub fn fold_repeats<T: PartialEq>(items: &[T]) -> Vec<Fold> {
    let mut out = Vec::new();
    let mut index = 0;
    while index < items.len() {
        let cycle = (1..=6).find_map(|period| {
            let repeats = (0..)
                .take_while(|k| {
                    let start = index + k * period;
                    start + period <= items.len()
                        && items[start..start + period] == items[index..index + period]
                })
                .count();
            (repeats >= 3).then_some((period, repeats))
        });
        match cycle {
            Some((period, repeats)) => {
                out.extend((index..index + period).map(Fold::Keep));
                out.push(Fold::Folded {
                    cycle: index,
                    period,
                    count: (repeats - 2) * period,
                });
                let last = index + (repeats - 1) * period;
                out.extend((last..last + period).map(Fold::Keep));
                index += repeats * period;
            }
            None => {
                out.push(Fold::Keep(index));
                index += 1;
            }
        }
    }
    out
}

/// The devices of a cycle, for "… 58 more hops between r1 and r2 …".
pub fn cycle_devices(names: &[String]) -> String {
    let mut devices: Vec<&str> = Vec::new();
    for name in names {
        let device = name.rsplit_once(':').map_or(name.as_str(), |(d, _)| d);
        // A capture point is DEVICE:INTERFACE, and a pod is NS/NAME:eth0.
        if !devices.contains(&device) {
            devices.push(device);
        }
    }
    match devices.as_slice() {
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
        [] => String::new(),
    }
}

/// A path as `a -> b -> c`, a routing loop folded:
/// `pod -> node -> r1 -> r2 -> … 58 more hops between r1 and r2 … -> r1 -> r2`.
pub fn fold_path(devices: &[String]) -> String {
    fold_repeats(devices)
        .into_iter()
        .map(|fold| match fold {
            Fold::Keep(index) => devices[index].clone(),
            Fold::Folded {
                cycle,
                period,
                count,
            } => format!(
                "… {count} more hops between {} …",
                cycle_devices(&devices[cycle..cycle + period])
            ),
        })
        .collect::<Vec<_>>()
        .join(" -> ")
}

fn is_subsequence(wanted: &[String], devices: &[String]) -> bool {
    let mut remaining = devices.iter();
    wanted
        .iter()
        .all(|device| remaining.any(|seen| seen == device))
}

/// Counts why each failed connection failed: its stack's own reason, else the
/// reason its request packets were dropped for (matched by the source port they
/// left the client with), else `no-answer`.
fn failure_reasons(
    drops: &[&crate::datapath::DropRecord],
    failed: &[&crate::sim::endpoint::ConnectionStatus],
) -> BTreeMap<String, u64> {
    let mut by_port: std::collections::HashMap<u16, &'static str> = Default::default();
    for drop in drops.iter().filter(|d| !d.reply) {
        by_port
            .entry(drop.origin_port)
            .or_insert(drop.reason.name());
    }
    let mut reasons = BTreeMap::new();
    for connection in failed {
        let reason = connection
            .failure
            .or_else(|| by_port.get(&connection.local_port).copied())
            .unwrap_or("no-answer");
        *reasons.entry(reason.to_string()).or_insert(0) += 1;
    }
    reasons
}

/// The flow's policy decisions, each distinct one once, in the order first made.
fn policy_decisions(decisions: &[&crate::datapath::PolicyRecord]) -> Vec<PolicyReport> {
    let mut seen = std::collections::HashSet::new();
    decisions
        .iter()
        .filter(|p| seen.insert((&p.device, p.direction, p.action, &p.rule)))
        .map(|p| PolicyReport {
            device: p.device.clone(),
            direction: p.direction.to_string(),
            verdict: match p.action {
                crate::datapath::policy::PolicyAction::Allow => "allow",
                crate::datapath::policy::PolicyAction::Drop => "drop",
                crate::datapath::policy::PolicyAction::Reject => "reject",
                crate::datapath::policy::PolicyAction::Pass => "pass",
            }
            .to_string(),
            rule: p.rule.clone(),
        })
        .collect()
}

/// `records` split by the flow each belongs to (a flow tag is the flow's index), in
/// their order; records of no configured flow are left out.
fn by_flow<T>(records: &[T], flow_count: usize, flow_of: impl Fn(&T) -> FlowTag) -> Vec<Vec<&T>> {
    let mut split: Vec<Vec<&T>> = (0..flow_count).map(|_| Vec::new()).collect();
    for record in records {
        if let Some(list) = usize::try_from(flow_of(record))
            .ok()
            .and_then(|index| split.get_mut(index))
        {
            list.push(record);
        }
    }
    split
}

/// Translations the text summary shows per flow.
const SUMMARY_NAT_LINES: usize = 8;

/// Builds the report of a run.
pub fn build(topology: &Topology, result: &RunResult) -> Report {
    // Each record list split by flow in one pass: a run of 10,000 flows must not
    // walk the whole journal once per flow.
    let flow_count = topology.flows.len();
    let hops_by_flow = by_flow(&result.journal.hops, flow_count, |hop| hop.flow);
    let drops_by_flow = by_flow(&result.journal.drops, flow_count, |drop| drop.flow);
    let nat_by_flow = by_flow(&result.journal.nat, flow_count, |nat| nat.flow);
    let policy_by_flow = by_flow(&result.journal.policy, flow_count, |decision| decision.flow);
    let mut flows = Vec::new();
    for (index, (flow, outcome)) in topology.flows.iter().zip(&result.flows).enumerate() {
        let hops = hops_by_flow[index].as_slice();
        let drops = &drops_by_flow[index];
        let losses = Losses {
            request: drops.iter().any(|d| !d.reply),
            reply: drops.iter().any(|d| d.reply),
        };
        let verdict = flow_verdict(flow, outcome, losses);
        // Each translation once, in the order first seen (a set: a flow with
        // thousands of connections has thousands of distinct bindings).
        let mut seen = std::collections::HashSet::new();
        let nat: Vec<NatReport> = nat_by_flow[index]
            .iter()
            .filter(|n| seen.insert((&n.device, n.kind, &n.before, &n.after)))
            .map(|n| NatReport {
                device: n.device.clone(),
                component: n.component.to_string(),
                kind: n.kind.to_string(),
                from: n.before.clone(),
                to: n.after.clone(),
            })
            .collect();
        let attempted = u64::from(flow.connections);
        let established = outcome.connections.iter().filter(|c| c.established).count() as u64;
        let failed_connections: Vec<_> = outcome
            .connections
            .iter()
            .filter(|c| !c.completed || c.failed)
            .collect();
        let failed = failed_connections.len() as u64;
        let failure_reasons = failure_reasons(drops, &failed_connections);
        let destination = if flow.destination_port == 0 {
            flow.destination_ip.to_string()
        } else {
            format!("{}:{}", flow.destination_ip, flow.destination_port)
        };
        flows.push(FlowReport {
            name: flow.name.clone(),
            from: flow.from_text.clone(),
            to: flow.to_text.clone(),
            protocol: flow.protocol.name().to_string(),
            destination,
            verdict: verdict.name().to_string(),
            packets: PacketCounts {
                sent: outcome.sent,
                delivered: outcome.delivered,
                dropped: outcome.dropped,
            },
            connections: ConnectionCounts {
                attempted,
                established,
                failed,
                failure_reasons,
            },
            seen_source: outcome.seen_source.map(|s| s.to_string()),
            path: path_of(&result.network, hops, outcome.first_packet),
            reply_path: path_of(&result.network, hops, outcome.first_reply),
            nat,
            policy: policy_decisions(&policy_by_flow[index]),
            drop: if verdict == Verdict::Delivered {
                None
            } else {
                drops.first().map(|d| DropReport {
                    device: d.device.clone(),
                    reason: d.reason.name().to_string(),
                    detail: d.detail.clone(),
                    direction: if d.reply { "reply" } else { "request" }.to_string(),
                })
            },
            icmp_received: outcome
                .icmp_errors
                .iter()
                .map(|(t, c, from)| format!("type {t} code {c} from {from}"))
                .collect(),
            path_mtu: outcome.path_mtu.as_ref().map(|p| PathMtuReport {
                mtu: p.mtu,
                from: p.from.to_string(),
                reported_by: p.reported_by.clone(),
            }),
            notes: outcome.notes.clone(),
        });
    }
    let expectations = topology
        .expectations
        .iter()
        .map(|e| evaluate(e, topology, &flows, &result.network))
        .collect();
    let mut drops_by_reason = BTreeMap::new();
    for drop in &result.journal.drops {
        *drops_by_reason
            .entry(drop.reason.name().to_string())
            .or_insert(0) += 1;
    }
    let flow_sent: u64 = result.flows.iter().map(|f| f.sent).sum();
    let flow_delivered: u64 = result.flows.iter().map(|f| f.delivered).sum();
    let (hits, misses) = result.network.flow_cache_stats();
    let node_port_local = topology
        .clusters
        .iter()
        .flat_map(|cluster| {
            cluster.node_port_local.iter().map(move |m| {
                let node = &cluster.nodes[m.node];
                let pod = &cluster.pods[m.pod];
                NodePortLocalReport {
                    pod: pod.qualified_name(),
                    node: node.name.clone(),
                    protocol: m.protocol.name().to_string(),
                    node_address: format!("{}:{}", node.ip, m.node_port),
                    pod_address: format!("{}:{}", pod.ip, m.pod_port),
                }
            })
        })
        .collect();
    Report {
        topology: topology.name.clone(),
        netsim_version: env!("CARGO_PKG_VERSION").to_string(),
        seed: topology.seed,
        flows,
        expectations,
        node_port_local,
        counters: Counters {
            packets_sent: flow_sent + result.untagged_sent,
            packets_delivered: flow_delivered + result.untagged_delivered,
            packets_dropped: result.journal.drop_count,
            drops_by_reason,
            packets_generated_by_devices: result.journal.generated_count,
            flow_cache_hits: hits,
            flow_cache_misses: misses,
            conntrack_entries: result.network.conntrack_entries(),
            endpoint_stacks: result.stacks_built,
            events: result.events,
            simulated_ns: result.end_ns,
        },
    }
}

fn evaluate(
    expectation: &Expectation,
    topology: &Topology,
    flows: &[FlowReport],
    network: &Network,
) -> ExpectationReport {
    match expectation {
        Expectation::Flow {
            text,
            flow,
            verdict,
            dropped_by,
            via,
            seen_source,
        } => {
            let report = &flows[*flow];
            let devices = path_devices(&report.path);
            let mut ok = true;
            if let Some(verdict) = verdict {
                ok &= report.verdict == verdict.name();
            }
            if let Some(dropped_by) = dropped_by {
                let got = report
                    .drop
                    .as_ref()
                    .map(|d| format!("{}@{}", d.reason, d.device));
                ok &= match (dropped_by.contains('@'), &got, &report.drop) {
                    (true, Some(got), _) => got == dropped_by,
                    (false, _, Some(drop)) => &drop.reason == dropped_by,
                    _ => false,
                };
            }
            if !via.is_empty() {
                ok &= is_subsequence(via, &devices);
            }
            if let Some(seen) = seen_source {
                ok &= report.seen_source.as_deref() == Some(seen.to_string().as_str());
            }
            let mut got = format!(
                "flow {}: verdict={} dropped_by={} path=[{}] seen_source={}",
                report.name,
                report.verdict,
                report
                    .drop
                    .as_ref()
                    .map(|d| format!("{}@{}", d.reason, d.device))
                    .unwrap_or_else(|| "-".into()),
                devices.join(", "),
                report.seen_source.as_deref().unwrap_or("-")
            );
            // The policy rule that decided (the last one recorded on the flow).
            if let Some(decision) = report.policy.last() {
                got.push_str(&format!(
                    " decided_by={} {} on {} ({})",
                    decision.verdict, decision.rule, decision.device, decision.direction
                ));
            }
            ExpectationReport {
                expect: text.clone(),
                ok,
                got,
            }
        }
        Expectation::Route {
            text,
            router,
            prefix,
            present,
            next_hop,
        } => {
            let name = &topology.routers[*router].name;
            let route = network
                .router(name)
                .and_then(|r| r.fib.get_exact(*prefix).cloned());
            let got = match &route {
                Some(route) => {
                    let hops: Vec<String> = route
                        .next_hops
                        .iter()
                        .filter_map(|h| h.address.map(|a| a.to_string()))
                        .collect();
                    let via = if hops.is_empty() {
                        String::new()
                    } else {
                        format!(" via {}", hops.join(", "))
                    };
                    format!("{name} has {prefix} ({}{via})", route.origin.name())
                }
                None => format!("{name} has no route for exactly {prefix}"),
            };
            let hop_ok = match (&route, next_hop) {
                (Some(route), Some(wanted)) => {
                    route.next_hops.iter().any(|h| h.address == Some(*wanted))
                }
                _ => true,
            };
            ExpectationReport {
                expect: text.clone(),
                ok: route.is_some() == *present && hop_ok,
                got,
            }
        }
    }
}

/// A human-readable summary of a report.
pub fn text_summary(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "topology {} (seed {})\n",
        report.topology, report.seed
    ));
    let name_width = report
        .flows
        .iter()
        .map(|f| f.name.chars().count())
        .max()
        .unwrap_or(0);
    for flow in &report.flows {
        out.push_str(&format!(
            "  {:<name_width$}  {:<9} sent {:>5} delivered {:>5} dropped {:>4}  {} -> {}\n",
            flow.name,
            flow.verdict,
            flow.packets.sent,
            flow.packets.delivered,
            flow.packets.dropped,
            flow.from,
            flow.to
        ));
        out.push_str(&format!(
            "      path: {}\n",
            fold_path(&path_devices(&flow.path))
        ));
        if let Some(seen) = &flow.seen_source {
            out.push_str(&format!("      seen source: {seen}\n"));
        }
        let connections = &flow.connections;
        if connections.attempted > 1 || connections.failed > 0 {
            let reasons: Vec<String> = connections
                .failure_reasons
                .iter()
                .map(|(reason, count)| format!("{reason} {count}"))
                .collect();
            out.push_str(&format!(
                "      connections: attempted {}, established {}, failed {}{}\n",
                connections.attempted,
                connections.established,
                connections.failed,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                }
            ));
        }
        for decision in &flow.policy {
            out.push_str(&format!(
                "      policy {} on {}: {} by {}\n",
                decision.direction, decision.device, decision.verdict, decision.rule
            ));
        }
        for nat in flow.nat.iter().take(SUMMARY_NAT_LINES) {
            out.push_str(&format!(
                "      {} on {}: {} -> {}\n",
                nat.kind, nat.device, nat.from, nat.to
            ));
        }
        if flow.nat.len() > SUMMARY_NAT_LINES {
            out.push_str(&format!(
                "      … {} more translations (report.json lists every one)\n",
                flow.nat.len() - SUMMARY_NAT_LINES
            ));
        }
        if let Some(path_mtu) = &flow.path_mtu {
            out.push_str(&format!(
                "      path mtu {} learned from {} (sent by {})\n",
                path_mtu.mtu, path_mtu.from, path_mtu.reported_by
            ));
        }
        for note in &flow.notes {
            out.push_str(&format!("      {note}\n"));
        }
        if let Some(drop) = &flow.drop {
            out.push_str(&format!("      drop: {}\n", describe_drop(drop)));
        }
    }
    let failed = report.expectations.iter().filter(|e| !e.ok).count();
    if !report.expectations.is_empty() {
        out.push_str(&format!(
            "expectations: {} passed, {} failed\n",
            report.expectations.len() - failed,
            failed
        ));
        for expectation in &report.expectations {
            out.push_str(&format!(
                "  [{}] {}\n        got: {}\n",
                if expectation.ok { "ok" } else { "FAIL" },
                expectation.expect,
                expectation.got
            ));
        }
    }
    let c = &report.counters;
    out.push_str(&format!(
        "packets: sent {} = delivered {} + dropped {}\n",
        c.packets_sent, c.packets_delivered, c.packets_dropped
    ));
    out
}

/// `no-route@r3 (no route to 198.51.100.20)`, and ` on the reply path` when the
/// dropped packet was on its way back.
pub fn describe_drop(drop: &DropReport) -> String {
    let direction = if drop.direction == "reply" {
        " on the reply path"
    } else {
        ""
    };
    format!(
        "{}@{}{direction} ({})",
        drop.reason, drop.device, drop.detail
    )
}

/// The expectations as JUnit XML (one test case each; a failure carries what was
/// observed), for CI systems that read test reports.
pub fn junit(report: &Report) -> String {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let failures = report.expectations.iter().filter(|e| !e.ok).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"netsim\" tests=\"{}\" failures=\"{failures}\">\n",
        report.expectations.len()
    ));
    out.push_str(&format!(
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\">\n",
        escape(&report.topology),
        report.expectations.len()
    ));
    for expectation in &report.expectations {
        out.push_str(&format!(
            "    <testcase classname=\"{}.expect\" name=\"{}\"",
            escape(&report.topology),
            escape(&expectation.expect)
        ));
        if expectation.ok {
            out.push_str(" />\n");
        } else {
            out.push_str(&format!(
                ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                escape(&expectation.got),
                escape(&expectation.got)
            ));
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routing_loop_is_folded_and_a_plain_path_is_not() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut looped = names(&["pod", "node", "r1"]);
        for _ in 0..30 {
            looped.extend(names(&["r2", "r1"]));
        }
        assert_eq!(
            fold_path(&looped),
            "pod -> node -> r1 -> r2 -> … 56 more hops between r1 and r2 … -> r1 -> r2 -> r1"
        );
        let plain = names(&["pod", "node", "r1", "host"]);
        assert_eq!(fold_path(&plain), "pod -> node -> r1 -> host");
    }
}
