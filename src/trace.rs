//! `netsim trace`: one exchange, printed hop by hop — for every packet, each capture
//! point it crossed with the device, interface, what happened and why (the lookup,
//! the match, the rewrite), then the verdict.

use crate::report::{build, path_devices};
use crate::sim::runner::{describe_packet, RunResult};
use crate::topology::Topology;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Renders the trace of flow 0 of `result`.
pub fn render(topology: &Topology, result: &RunResult) -> String {
    let mut out = String::new();
    let Some(flow) = topology.flows.first() else {
        return out;
    };
    let _ = writeln!(
        out,
        "trace {} -> {} ({} {}:{})",
        flow.from_text,
        flow.to_text,
        flow.protocol.name(),
        flow.destination_ip,
        flow.destination_port
    );
    let mut order: Vec<u64> = Vec::new();
    let mut by_packet: BTreeMap<u64, Vec<&crate::datapath::Hop>> = BTreeMap::new();
    for hop in result.journal.hops.iter().filter(|hop| hop.flow == 0) {
        if !by_packet.contains_key(&hop.packet_id) {
            order.push(hop.packet_id);
        }
        by_packet.entry(hop.packet_id).or_default().push(hop);
    }
    for (number, packet_id) in order.iter().enumerate() {
        let hops = &by_packet[packet_id];
        let first = hops[0];
        let summary = crate::packet::Packet::from_frame(&first.frame, 0)
            .map(|p| describe_packet(&p))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n#{:<3} {:>12.3} us  {summary}",
            number + 1,
            first.time_ns as f64 / 1000.0
        );
        for hop in hops {
            let point = &result.network.points[hop.point as usize];
            let _ = writeln!(
                out,
                "     {:>12.3} us  {:<32} {:<10} {}",
                hop.time_ns as f64 / 1000.0,
                point.name,
                hop.action.name(),
                hop.detail
            );
        }
    }
    let report = build(topology, result);
    if let Some(flow_report) = report.flows.first() {
        let _ = writeln!(out, "\nverdict: {}", flow_report.verdict);
        let _ = writeln!(
            out,
            "path: {}",
            path_devices(&flow_report.path).join(" -> ")
        );
        if let Some(seen) = &flow_report.seen_source {
            let _ = writeln!(out, "seen source: {seen}");
        }
        if let Some(drop) = &flow_report.drop {
            let _ = writeln!(
                out,
                "drop: {}@{} ({})",
                drop.reason, drop.device, drop.detail
            );
        }
        let packets = &flow_report.packets;
        let _ = writeln!(
            out,
            "packets: sent {} = delivered {} + dropped {}",
            packets.sent, packets.delivered, packets.dropped
        );
    }
    out
}
