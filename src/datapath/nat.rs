//! NAT as a conntrack entry carries it, applied to packets: one entry holds the
//! DNAT and the SNAT of a connection (its original and reply tuples), and every
//! device that translates from an entry it committed — AntreaProxy's OVS zone, a
//! router's load balancer and SNAT rules — rewrites a packet's two ends from it in
//! one place, recording each rewrite for the report. (The host stack applies the same
//! entries split over PREROUTING and POSTROUTING, as netfilter does.) RELATED ICMP
//! errors are translated back here too.

use super::Ctx;
use crate::engine::conntrack::{Direction, Entry};
use crate::packet::Packet;

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
    let key = packet.meta.key;
    let destination = entry.translated_destination(direction);
    let source = entry.translated_source(direction);
    let (destination_kind, source_kind) = match direction {
        Direction::Original => ("dnat", "snat"),
        Direction::Reply => ("unsnat", "undnat"),
    };
    let before = (key.destination, key.destination_port);
    if before != destination {
        packet.set_destination(destination.0, destination.1);
        ctx.nat(
            device,
            component,
            packet,
            destination_kind,
            || format!("{}:{}", before.0, before.1),
            || format!("{}:{}", destination.0, destination.1),
        );
    }
    let before = (key.source, key.source_port);
    if before != source {
        packet.set_source(source.0, source.1);
        ctx.nat(
            device,
            component,
            packet,
            source_kind,
            || format!("{}:{}", before.0, before.1),
            || format!("{}:{}", source.0, source.1),
        );
    }
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
