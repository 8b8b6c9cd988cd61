//! Puts the shards of a run back together: their journals' lists and their flows'
//! updates interleaved event by event in (time, ordinal) order — the order one
//! thread runs the events in — and each flow's outcome built from the updates.

use super::shard::{Ends, Mark, Update};
use super::{FlowOutcome, PathMtuDiscovery};
use crate::datapath::Journal;
use crate::packet::FlowTag;
use crate::sim::network::Network;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// One shard's lists, consumed front to back as its marks say.
pub struct Recorded {
    pub journal: Journal,
    pub updates: Vec<Update>,
    pub marks: Vec<Mark>,
}

/// Moves the next `end - *start` items of `from` to `into`.
fn take<T>(from: &mut std::vec::IntoIter<T>, start: &mut u32, end: u32, into: &mut Vec<T>) {
    into.extend(from.by_ref().take((end - *start) as usize));
    *start = end;
}

/// A shard's lists as iterators, and where the last merged event of it ended.
struct Cursor {
    hops: std::vec::IntoIter<crate::datapath::Hop>,
    drops: std::vec::IntoIter<crate::datapath::DropRecord>,
    nat: std::vec::IntoIter<crate::datapath::NatRecord>,
    policy: std::vec::IntoIter<crate::datapath::PolicyRecord>,
    generated: std::vec::IntoIter<(FlowTag, u64)>,
    local_deliveries: std::vec::IntoIter<(FlowTag, std::net::Ipv4Addr)>,
    local_refusals: std::vec::IntoIter<(FlowTag, std::net::Ipv4Addr)>,
    merged: std::vec::IntoIter<FlowTag>,
    updates: std::vec::IntoIter<Update>,
    at: Ends,
}

/// The shards' journals and updates as one, in event order.
pub fn merge(shards: Vec<Recorded>) -> (Journal, Vec<Update>) {
    let mut journal = Journal::default();
    let mut updates = Vec::new();
    let mut cursors = Vec::with_capacity(shards.len());
    let mut marks = Vec::with_capacity(shards.len());
    for (index, shard) in shards.into_iter().enumerate() {
        let part = shard.journal;
        if index == 0 {
            journal.recording = part.recording;
            journal.uncaptured = part.uncaptured;
        }
        journal.drop_count += part.drop_count;
        journal.generated_count += part.generated_count;
        journal.last_packet_id = journal.last_packet_id.max(part.last_packet_id);
        journal.error_origins.extend(part.error_origins);
        cursors.push(Cursor {
            hops: part.hops.into_iter(),
            drops: part.drops.into_iter(),
            nat: part.nat.into_iter(),
            policy: part.policy.into_iter(),
            generated: part.generated.into_iter(),
            local_deliveries: part.local_deliveries.into_iter(),
            local_refusals: part.local_refusals.into_iter(),
            merged: part.merged.into_iter(),
            updates: shard.updates.into_iter(),
            at: Ends::default(),
        });
        marks.push(shard.marks.into_iter());
    }
    let mut next: BinaryHeap<Reverse<(u64, u64, usize, Ends)>> = BinaryHeap::new();
    for (index, shard_marks) in marks.iter_mut().enumerate() {
        if let Some(mark) = shard_marks.next() {
            next.push(Reverse((mark.time_ns, mark.ordinal, index, mark.ends)));
        }
    }
    while let Some(Reverse((_, _, index, ends))) = next.pop() {
        let cursor = &mut cursors[index];
        let at = &mut cursor.at;
        take(&mut cursor.hops, &mut at.hops, ends.hops, &mut journal.hops);
        take(
            &mut cursor.drops,
            &mut at.drops,
            ends.drops,
            &mut journal.drops,
        );
        take(&mut cursor.nat, &mut at.nat, ends.nat, &mut journal.nat);
        take(
            &mut cursor.policy,
            &mut at.policy,
            ends.policy,
            &mut journal.policy,
        );
        take(
            &mut cursor.generated,
            &mut at.generated,
            ends.generated,
            &mut journal.generated,
        );
        take(
            &mut cursor.local_deliveries,
            &mut at.local_deliveries,
            ends.local_deliveries,
            &mut journal.local_deliveries,
        );
        take(
            &mut cursor.local_refusals,
            &mut at.local_refusals,
            ends.local_refusals,
            &mut journal.local_refusals,
        );
        take(
            &mut cursor.merged,
            &mut at.merged,
            ends.merged,
            &mut journal.merged,
        );
        take(
            &mut cursor.updates,
            &mut at.updates,
            ends.updates,
            &mut updates,
        );
        if let Some(mark) = marks[index].next() {
            next.push(Reverse((mark.time_ns, mark.ordinal, index, mark.ends)));
        }
    }
    (journal, updates)
}

/// Packets sent and delivered that belong to no configured flow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Untagged {
    pub sent: u64,
    pub delivered: u64,
}

/// Each flow's outcome from what its endpoints did (`updates`, in event order) and
/// what the devices recorded (`journal`).
pub fn outcomes(
    flow_count: usize,
    updates: Vec<Update>,
    journal: &Journal,
    network: &Network,
) -> (Vec<FlowOutcome>, Untagged) {
    let mut flows = vec![FlowOutcome::default(); flow_count];
    let mut untagged = Untagged::default();
    for update in updates {
        apply(&mut flows, &mut untagged, update, journal, network);
    }
    for drop in &journal.drops {
        if let Some(outcome) = flows.get_mut(drop.flow as usize) {
            outcome.dropped += 1;
        }
    }
    // Packets a device (a node, a router) accepted as addressed to itself.
    for (flow, source) in &journal.local_deliveries {
        if let Some(outcome) = flows.get_mut(*flow as usize) {
            outcome.delivered += 1;
            outcome.seen_source.get_or_insert(*source);
        }
    }
    for (flow, source) in &journal.local_refusals {
        if let Some(outcome) = flows.get_mut(*flow as usize) {
            outcome.seen_source.get_or_insert(*source);
        }
    }
    // Fragments merged into a reassembled datagram end there.
    for flow in &journal.merged {
        match flows.get_mut(*flow as usize) {
            Some(outcome) => outcome.delivered += 1,
            None => untagged.delivered += 1,
        }
    }
    for (flow, _) in &journal.generated {
        match flows.get_mut(*flow as usize) {
            Some(outcome) => outcome.sent += 1,
            None => untagged.sent += 1,
        }
    }
    (flows, untagged)
}

fn apply(
    flows: &mut [FlowOutcome],
    untagged: &mut Untagged,
    update: Update,
    journal: &Journal,
    network: &Network,
) {
    match update {
        Update::Sent(flow) => match flows.get_mut(flow as usize) {
            Some(outcome) => outcome.sent += 1,
            None => untagged.sent += 1,
        },
        Update::Delivered(flow) => match flows.get_mut(flow as usize) {
            Some(outcome) => outcome.delivered += 1,
            None => untagged.delivered += 1,
        },
        Update::First {
            flow,
            reply,
            packet_id,
        } => {
            if let Some(outcome) = flows.get_mut(flow as usize) {
                let first = if reply {
                    &mut outcome.first_reply
                } else {
                    &mut outcome.first_packet
                };
                first.get_or_insert(packet_id);
            }
        }
        Update::SeenSource(flow, source) => {
            if let Some(outcome) = flows.get_mut(flow as usize) {
                outcome.seen_source.get_or_insert(source);
            }
        }
        Update::IcmpError {
            flow,
            icmp_type,
            code,
            from,
            fragmentation_needed,
        } => {
            let Some(outcome) = flows.get_mut(flow as usize) else {
                return;
            };
            outcome.icmp_errors.push((icmp_type, code, from));
            if let (Some((mtu, packet_id)), None) = (fragmentation_needed, &outcome.path_mtu) {
                let reported_by = journal
                    .error_origins
                    .get(&packet_id)
                    .and_then(|&point| network.points.get(point as usize))
                    .map(|point| point.name.clone())
                    .unwrap_or_default();
                outcome.path_mtu = Some(PathMtuDiscovery {
                    mtu,
                    from,
                    reported_by,
                });
            }
        }
        Update::Note(flow, message) => {
            if let Some(outcome) = flows.get_mut(flow as usize) {
                if !outcome.notes.contains(&message) {
                    outcome.notes.push(message);
                }
            }
        }
    }
}
