//! `netsim trace`: one exchange (TCP: handshake, one request and its response, the
//! close; UDP: one datagram and its answer; ICMP: one echo), printed hop by hop — for
//! every packet, each capture point it crossed with the device, interface, what
//! happened and why (the lookup, the match, the rewrite), in milliseconds from the
//! exchange's first packet; a routing loop folded; then the verdict.

use crate::report::{
    build, cycle_devices, describe_drop, fold_path, fold_repeats, path_devices, Fold,
};
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
    let target = match flow.protocol {
        crate::topology::Protocol::Icmp => format!("icmp echo to {}", flow.destination_ip),
        protocol => format!(
            "{} {}:{}",
            protocol.name(),
            flow.destination_ip,
            flow.destination_port
        ),
    };
    let _ = writeln!(
        out,
        "trace {} -> {} ({target})",
        flow.from_text, flow.to_text
    );
    let mut order: Vec<u64> = Vec::new();
    let mut by_packet: BTreeMap<u64, Vec<&crate::datapath::Hop>> = BTreeMap::new();
    for hop in result.journal.hops.iter().filter(|hop| hop.flow == 0) {
        if !by_packet.contains_key(&hop.packet_id) {
            order.push(hop.packet_id);
        }
        by_packet.entry(hop.packet_id).or_default().push(hop);
    }
    let start_ns = order
        .first()
        .and_then(|id| by_packet.get(id))
        .and_then(|hops| hops.first())
        .map_or(0, |hop| hop.time_ns);
    let milliseconds = |time_ns: u64| time_ns.saturating_sub(start_ns) as f64 / 1e6;
    for (number, packet_id) in order.iter().enumerate() {
        let hops = &by_packet[packet_id];
        let first = hops[0];
        let summary = crate::packet::Packet::from_frame(&first.frame, 0)
            .map(|p| describe_packet(&p))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n#{:<3} {:>9.3} ms  {summary}",
            number + 1,
            milliseconds(first.time_ns)
        );
        let names: Vec<String> = hops
            .iter()
            .map(|hop| result.network.points[hop.point as usize].name.clone())
            .collect();
        for fold in fold_repeats(&names) {
            match fold {
                Fold::Keep(index) => {
                    let hop = hops[index];
                    let _ = writeln!(
                        out,
                        "     {:>9.3} ms  {:<32} {:<10} {}",
                        milliseconds(hop.time_ns),
                        names[index],
                        hop.action.name(),
                        hop.detail
                    );
                }
                Fold::Folded {
                    cycle,
                    period,
                    count,
                } => {
                    let _ = writeln!(
                        out,
                        "                   … {count} more hops between {} …",
                        cycle_devices(&names[cycle..cycle + period])
                    );
                }
            }
        }
    }
    let report = build(topology, result);
    if let Some(flow_report) = report.flows.first() {
        let _ = writeln!(out, "\nverdict: {}", flow_report.verdict);
        let _ = writeln!(out, "path: {}", fold_path(&path_devices(&flow_report.path)));
        if let Some(seen) = &flow_report.seen_source {
            let _ = writeln!(out, "seen source: {seen}");
        }
        if let Some(path_mtu) = &flow_report.path_mtu {
            let _ = writeln!(
                out,
                "path mtu: {} learned from {} (sent by {})",
                path_mtu.mtu, path_mtu.from, path_mtu.reported_by
            );
        }
        for note in &flow_report.notes {
            let _ = writeln!(out, "note: {note}");
        }
        if let Some(drop) = &flow_report.drop {
            let _ = writeln!(out, "drop: {}", describe_drop(drop));
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
