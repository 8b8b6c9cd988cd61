//! NAT as a conntrack entry carries it, applied to packets: one entry holds the
//! DNAT and the SNAT of a connection (its original and reply tuples), and every
//! device that translates from an entry it committed — AntreaProxy's OVS zone, a
//! router's load balancer and SNAT rules — rewrites a packet's two ends from it in
//! one place, recording each rewrite for the report. (The host stack applies the same
//! entries split over PREROUTING and POSTROUTING, as netfilter does.) RELATED ICMP
//! errors are translated back here too.

use super::Ctx;
use crate::datapath::host::Side;
use crate::engine::conntrack::{Direction, Entry};
use crate::packet::Packet;
use std::net::Ipv4Addr;

/// Rewrites both ends of `packet` as `entry` says for a packet in `direction`
/// (original: DNAT and SNAT; reply: un-SNAT and un-DNAT), recording each rewrite that
/// changes something as done by `component` on `device`.
pub fn apply_entry(
    ctx: &mut Ctx,
    device: &str,
    component: &'static str,
    entry: &Entry,
    direction: Direction,
    packet: &mut Packet,
) {
    let (destination_kind, source_kind) = match direction {
        Direction::Original => ("dnat", "snat"),
        Direction::Reply => ("unsnat", "undnat"),
    };
    let record = (device, component);
    let destination = entry.translated_destination(direction);
    rewrite(
        ctx,
        record,
        packet,
        Side::Destination,
        destination,
        destination_kind,
    );
    let source = entry.translated_source(direction);
    rewrite(ctx, record, packet, Side::Source, source, source_kind);
}

/// Rewrites one end of `packet` to `target` when it differs (addresses, port and
/// checksums together) and records the rewrite as `kind` by `(device, component)`.
pub fn rewrite(
    ctx: &mut Ctx,
    (device, component): (&str, &'static str),
    packet: &mut Packet,
    side: Side,
    target: (Ipv4Addr, u16),
    kind: &'static str,
) {
    let key = packet.meta.key;
    let current = match side {
        Side::Source => (key.source, key.source_port),
        Side::Destination => (key.destination, key.destination_port),
    };
    if current == target {
        return;
    }
    match side {
        Side::Source => packet.set_source(target.0, target.1),
        Side::Destination => packet.set_destination(target.0, target.1),
    }
    ctx.nat(
        device,
        component,
        packet,
        kind,
        || format!("{}:{}", current.0, current.1),
        || format!("{}:{}", target.0, target.1),
    );
}

/// An ICMP error RELATED to a tracked connection, about a packet the connection's
/// reply direction carries, translated back as netfilter's
/// `nf_nat_icmp_reply_translation` does: un-SNAT (the outer destination and the
/// quoted source go back to the original client) and un-DNAT (the quoted
/// destination, and the outer source when the endpoint itself sent the error, go
/// back to the Service address the client used). Shared by the host's netfilter and
/// AntreaProxy's zone in OVS.
pub fn translate_related_icmp(
    ctx: &mut Ctx,
    device: &str,
    component: &'static str,
    entry: &Entry,
    packet: &mut Packet,
) {
    if entry.has_snat() {
        let (address, port) = (entry.original.source, entry.original.source_port);
        let before = packet.meta.key.destination;
        packet.rewrite_quoted_source(address, port);
        packet.set_destination(address, packet.meta.key.destination_port);
        ctx.nat(
            device,
            component,
            packet,
            "unsnat-related",
            || before.to_string(),
            || address.to_string(),
        );
    }
    if entry.has_dnat() {
        let (address, port) = (entry.original.destination, entry.original.destination_port);
        let before = packet.meta.key.source;
        packet.rewrite_quoted_destination(address, port);
        if before == entry.reply.source {
            packet.set_source(address, packet.meta.key.source_port);
        }
        ctx.nat(
            device,
            component,
            packet,
            "undnat-related",
            || before.to_string(),
            || address.to_string(),
        );
    }
}
