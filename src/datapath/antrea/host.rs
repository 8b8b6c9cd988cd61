//! The node's host network stack: conntrack and NAT (PREROUTING, POSTROUTING),
//! the kernel routing table, TTL and MTU on forward, and answers for the node itself.

use super::*;
use crate::datapath::forwarding::{self, Refusal};
use crate::datapath::local::{self, AnswerLink, Settle};
use crate::engine::reassembly::{self, Reassembly};

/// Which end of a packet a NAT rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Source,
    Destination,
}

/// Where the host stack received a packet from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostIngress {
    Uplink,
    Gateway,
}

/// Where the host stack routes a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostEgress {
    Uplink { next_hop: Ipv4Addr },
    Gateway,
}

/// A route in the node's kernel routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostRoute {
    /// `dev antrea-gw0`: the local pod CIDR, and every peer pod CIDR (Antrea installs
    /// `<peer podCIDR> via <peer gw IP> dev antrea-gw0 onlink` in encap mode).
    Gateway,
    /// `dev eth0`, to the destination itself (connected) or via a gateway.
    Uplink { via: Option<Ipv4Addr> },
}

impl AntreaNode {
    pub(super) fn host_input(
        &mut self,
        ctx: &mut Ctx,
        ingress: HostIngress,
        slot: Option<usize>,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        // nf_defrag_ipv4: conntrack sees whole datagrams, so fragments are held until
        // the datagram is complete; ip_fragment cuts it again on output to the
        // largest fragment size seen (`frag_max_size`).
        let mut fragment_size = None;
        if reassembly::is_fragment(packet.frame()) {
            match self
                .reassembler
                .add_tagged(packet.frame(), ctx.now_ns, packet.meta.packet_id)
            {
                Reassembly::Invalid => {
                    ctx.describe(slot, HopAction::Drop, || "malformed fragment".into());
                    ctx.drop_packet(&self.settings.name, &packet, DropReason::Malformed, || {
                        "a fragment whose lengths do not add up".into()
                    });
                    return;
                }
                Reassembly::Held => {
                    ctx.describe(slot, HopAction::Receive, || {
                        "fragment held for reassembly (nf_defrag_ipv4, before conntrack)".into()
                    });
                    ctx.merged(&packet);
                    return;
                }
                Reassembly::Complete {
                    frame,
                    largest_fragment,
                    first_tag,
                } => {
                    let Ok(mut whole) = Packet::from_frame(&frame, packet.meta.flow) else {
                        return;
                    };
                    // The datagram goes on as its first fragment (so that packet's path
                    // continues); the others, this one included, end merged here.
                    whole.meta.packet_id = first_tag;
                    whole.meta.reply = packet.meta.reply;
                    packet = whole;
                    fragment_size = Some(largest_fragment);
                }
            }
        }
        let arrived = packet.meta.key;
        let connection = self.prerouting(ctx, &mut packet);
        let destination = packet.meta.key.destination;
        if destination == self.settings.ip || destination == self.gateway_ip() {
            self.local_delivery(ctx, slot, packet, out);
            return;
        }
        let Some(egress) = self.route(destination) else {
            self.refuse(ctx, slot, &packet, forwarding::no_route(destination), out);
            return;
        };
        let (mtu, interface) = match egress {
            HostEgress::Uplink { .. } => (self.settings.uplink_mtu, "eth0"),
            HostEgress::Gateway => (self.settings.pod_mtu, "antrea-gw0"),
        };
        let checks = forwarding::check_ttl(&packet)
            .and_then(|()| forwarding::check_mtu(&packet, mtu, interface));
        if let Err(refusal) = checks {
            self.refuse(ctx, slot, &packet, refusal, out);
            return;
        }
        packet.decrement_ttl();
        // Neighbour resolution. Linux resolves after POSTROUTING and sends the
        // host-unreachable to the translated source, which the RELATED conntrack
        // entry then un-NATs back to the pod (nf_nat_icmp_reply_translation); checking
        // before POSTROUTING sends the pod the same error.
        let next_mac = match egress {
            HostEgress::Uplink { next_hop } => match self.settings.neighbors.get(&next_hop) {
                Some(&mac) => Some(mac),
                None => {
                    let refusal = forwarding::no_neighbor(next_hop, "eth0");
                    self.refuse(ctx, slot, &packet, refusal, out);
                    return;
                }
            },
            HostEgress::Gateway => None,
        };
        let before = packet.meta.key;
        if let Err(reason) = self.postrouting(ctx, ingress, egress, connection, &mut packet) {
            ctx.describe(slot, HopAction::Drop, || format!("postrouting: {reason}"));
            ctx.drop_packet(&self.settings.name, &packet, reason, || {
                "POSTROUTING could not commit the connection".into()
            });
            return;
        }
        let reassembled = if fragment_size.is_some() {
            "reassembled; "
        } else {
            ""
        };
        let size_limit = usize::from(mtu).min(fragment_size.unwrap_or(usize::MAX));
        match (egress, next_mac) {
            (HostEgress::Uplink { next_hop }, Some(next_mac)) => {
                let route = format!("host stack: route {destination} via {next_hop} dev eth0");
                ctx.describe(slot, HopAction::Receive, || format!("{reassembled}{route}"));
                packet.set_macs(self.settings.mac, next_mac);
                let after = packet.meta.key;
                let fragments = forwarding::fragment_for_mtu(ctx, packet, size_limit);
                let count = fragments.len();
                for (index, fragment) in fragments.enumerate() {
                    ctx.hop(
                        self.settings.uplink_point,
                        &fragment,
                        HopAction::Transmit,
                        || {
                            let cut = if count > 1 {
                                format!(
                                    ", {}",
                                    forwarding::describe_fragment(index, count, &fragment)
                                )
                            } else {
                                String::new()
                            };
                            describe_source_rewrite(&before, &after)
                                + &format!("{route} ({next_mac}){cut}")
                        },
                    );
                    out.send(UPLINK_PORT, fragment);
                }
            }
            _ => {
                ctx.describe(slot, HopAction::Receive, || {
                    let rewrite = if arrived.destination == destination {
                        String::new()
                    } else {
                        format!(
                            "unsnat {}:{} -> {destination}:{}; ",
                            arrived.destination,
                            arrived.destination_port,
                            packet.meta.key.destination_port
                        )
                    };
                    format!("{reassembled}{rewrite}host stack: route {destination} dev antrea-gw0")
                });
                let destination_mac = match self.pod_by_ip.get(&destination) {
                    Some(&pod) => self.settings.pods[pod].mac,
                    None => Mac::ANTREA_GLOBAL_VIRTUAL,
                };
                packet.set_macs(self.settings.gateway_mac, destination_mac);
                for fragment in forwarding::fragment_for_mtu(ctx, packet, size_limit) {
                    let gateway_slot = ctx.begin_receive(self.settings.gateway_point, &fragment);
                    self.ovs(ctx, OvsSource::Gateway, gateway_slot, fragment, out);
                }
            }
        }
    }

    /// PREROUTING: find the connection; replies are un-SNATed (and DNAT would be
    /// applied) here, before routing (reference §g).
    pub(super) fn prerouting(
        &mut self,
        ctx: &mut Ctx,
        packet: &mut Packet,
    ) -> Option<(EntryId, Direction)> {
        if matches!(packet.meta.icmp, IcmpKind::Error { .. }) {
            self.related_icmp(ctx, packet);
            return None;
        }
        let (id, direction) = self.conntrack.lookup(&packet.meta.key, ctx.now_ns)?;
        let entry = *self.conntrack.entry(id)?;
        let kind = if direction == Direction::Reply {
            "unsnat"
        } else {
            "dnat"
        };
        self.translate(
            ctx,
            packet,
            Side::Destination,
            entry.translated_destination(direction),
            kind,
        );
        Some((id, direction))
    }

    /// An ICMP error about a tracked connection is RELATED to it: when that
    /// connection was SNATed, the error (addressed to the translated source) is
    /// translated back — outer destination and the quoted packet's source — so it
    /// reaches the pod that sent the original (reference §g).
    pub(super) fn related_icmp(&mut self, ctx: &mut Ctx, packet: &mut Packet) {
        let Some(quoted) = crate::packet::quoted_flow_key(packet) else {
            return;
        };
        let Some((id, Direction::Reply)) = self.conntrack.lookup(&quoted.reversed(), ctx.now_ns)
        else {
            return;
        };
        let Some(entry) = self.conntrack.entry(id).copied() else {
            return;
        };
        if !entry.has_snat() {
            return;
        }
        let (address, port) = (entry.original.source, entry.original.source_port);
        let before = packet.meta.key.destination;
        packet.rewrite_quoted_source(address, port);
        packet.set_destination(address, packet.meta.key.destination_port);
        ctx.nat(
            &self.settings.name,
            packet,
            "unsnat-related",
            || before.to_string(),
            || address.to_string(),
        );
    }

    /// One lookup in the node's routing table (Antrea encap mode): the local pod CIDR
    /// and every peer pod CIDR via antrea-gw0, the node subnet on eth0, the default
    /// route via the segment gateway.
    pub(super) fn route(&self, destination: Ipv4Addr) -> Option<HostEgress> {
        self.routes
            .lookup(destination)
            .map(|(_, route)| match *route {
                HostRoute::Gateway => HostEgress::Gateway,
                HostRoute::Uplink { via } => HostEgress::Uplink {
                    next_hop: via.unwrap_or(destination),
                },
            })
    }

    /// POSTROUTING: apply the connection's SNAT (or un-DNAT), or commit a new
    /// connection — MASQUERADE to the node IP for pod traffic leaving through eth0 to a
    /// destination outside the pod network, unless `noSNAT` (route_linux.go
    /// ANTREA-POSTROUTING: `-s <podCIDR> ! -o antrea-gw0 -j MASQUERADE`).
    pub(super) fn postrouting(
        &mut self,
        ctx: &mut Ctx,
        ingress: HostIngress,
        egress: HostEgress,
        connection: Option<(EntryId, Direction)>,
        packet: &mut Packet,
    ) -> Result<(), DropReason> {
        let key = packet.meta.key;
        let (id, direction) = match connection {
            Some(connection) => connection,
            None => (self.commit(ctx, ingress, egress, key)?, Direction::Original),
        };
        let entry = *self.conntrack.entry(id).ok_or(DropReason::ConntrackFull)?;
        let kind = if direction == Direction::Original {
            "snat"
        } else {
            "undnat"
        };
        self.translate(
            ctx,
            packet,
            Side::Source,
            entry.translated_source(direction),
            kind,
        );
        Ok(())
    }

    /// Rewrites one side of `packet` to `target` when it differs, and records the NAT.
    pub(super) fn translate(
        &self,
        ctx: &mut Ctx,
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
            &self.settings.name,
            packet,
            kind,
            || format!("{}:{}", current.0, current.1),
            || format!("{}:{}", target.0, target.1),
        );
    }

    /// Commits a new connection: with MASQUERADE to the node IP for pod traffic
    /// leaving through eth0 to a destination outside the pod network (unless
    /// `noSNAT`), untranslated otherwise.
    pub(super) fn commit(
        &mut self,
        ctx: &Ctx,
        ingress: HostIngress,
        egress: HostEgress,
        key: FlowKey,
    ) -> Result<EntryId, DropReason> {
        let masquerade = ingress == HostIngress::Gateway
            && matches!(egress, HostEgress::Uplink { .. })
            && !self.settings.no_snat
            && self.settings.pod_cidr.contains(&key.source)
            && !self.settings.cluster_pod_cidr.contains(&key.destination);
        let committed = if masquerade {
            self.conntrack
                .insert_snat(key, self.settings.ip, ctx.now_ns)
        } else {
            self.conntrack.insert_untranslated(key, ctx.now_ns)
        };
        committed.map_err(|error| match error {
            ConntrackError::Full => DropReason::ConntrackFull,
            ConntrackError::PortsExhausted => DropReason::SnatPortsExhausted,
        })
    }

    /// Traffic for the node itself (its node IP or antrea-gw0's address): a ping is
    /// answered, TCP is reset and UDP refused with port unreachable, as the node's
    /// kernel does when nothing listens (datapath::local). Answers leave the way
    /// routing sends them: eth0, or antrea-gw0 into OVS toward a pod.
    pub(super) fn local_delivery(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        packet: Packet,
        out: &mut Outputs,
    ) {
        let destination = packet.meta.key.destination;
        let Some(route) = self.local_route(packet.meta.key.source) else {
            ctx.describe(slot, HopAction::Drop, || {
                format!("{destination} is the node; no route back to the sender")
            });
            ctx.drop_packet(&self.settings.name, &packet, DropReason::NoRoute, || {
                format!("no route back to {}", packet.meta.key.source)
            });
            return;
        };
        let link = AnswerLink {
            source_mac: route.source_mac,
            destination_mac: route.destination_mac,
            identification: self.next_identification(),
        };
        let what = format!("node {}", self.settings.name);
        let at = Settle {
            device: &self.settings.name,
            what: &what,
            slot,
            point: route.point,
        };
        let answer = local::answer(&packet, link);
        if let Some(answer) = local::settle(ctx, at, &packet, answer) {
            self.send_local(ctx, route.egress, answer, out);
        }
    }

    /// How a packet the node itself sends to `destination` leaves: the interface the
    /// routing table picks, that interface's address (the source Linux chooses when
    /// none is bound) and MACs, and its capture point. None when there is no route or
    /// the next hop does not resolve.
    pub(super) fn local_route(&self, destination: Ipv4Addr) -> Option<LocalRoute> {
        match self.route(destination)? {
            egress @ HostEgress::Uplink { next_hop } => Some(LocalRoute {
                egress,
                source: self.settings.ip,
                source_mac: self.settings.mac,
                destination_mac: *self.settings.neighbors.get(&next_hop)?,
                point: self.settings.uplink_point,
            }),
            egress @ HostEgress::Gateway => Some(LocalRoute {
                egress,
                source: self.gateway_ip(),
                source_mac: self.settings.gateway_mac,
                destination_mac: self
                    .pod_by_ip
                    .get(&destination)
                    .map(|&pod| self.settings.pods[pod].mac)
                    .unwrap_or(Mac::ANTREA_GLOBAL_VIRTUAL),
                point: self.settings.gateway_point,
            }),
        }
    }

    /// Sends a packet the node originated out of `egress`.
    pub(super) fn send_local(
        &mut self,
        ctx: &mut Ctx,
        egress: HostEgress,
        packet: Packet,
        out: &mut Outputs,
    ) {
        match egress {
            HostEgress::Uplink { .. } => out.send(UPLINK_PORT, packet),
            // Through antrea-gw0 into OVS, toward the pod.
            HostEgress::Gateway => self.ovs(ctx, OvsSource::Gateway, None, packet, out),
        }
    }

    /// Drops `packet` for `refusal`, answering the sender with the ICMP error it owes.
    pub(super) fn refuse(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        packet: &Packet,
        refusal: Refusal,
        out: &mut Outputs,
    ) {
        ctx.describe(slot, HopAction::Drop, || refusal.detail.clone());
        if let Some(message) = refusal.icmp {
            self.send_error(ctx, packet, message, out);
        }
        ctx.drop_packet(&self.settings.name, packet, refusal.reason, || {
            refusal.detail
        });
    }

    /// An ICMP error from the host stack to the packet's source, routed like any
    /// packet the node sends, from the address of the interface it leaves by (Linux
    /// `__icmp_send`, `icmp_errors_use_inbound_ifaddr = 0`): the node IP on eth0,
    /// antrea-gw0's address toward a pod.
    pub(super) fn send_error(
        &mut self,
        ctx: &mut Ctx,
        packet: &Packet,
        message: ErrorMessage,
        out: &mut Outputs,
    ) {
        if !icmp::may_send_error(packet) {
            return;
        }
        let Some(route) = self.local_route(packet.meta.key.source) else {
            return;
        };
        let header = ErrorHeader::icmp_send(
            packet,
            route.source,
            route.source_mac,
            route.destination_mac,
            self.next_identification(),
        );
        let error = icmp::originate(ctx, route.point, packet, message, header);
        self.send_local(ctx, route.egress, error, out);
    }
}

/// Where a packet the node originates leaves (see [`AntreaNode::local_route`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct LocalRoute {
    pub egress: HostEgress,
    pub source: Ipv4Addr,
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub point: PointId,
}

/// `snat A:a -> B:b; ` when the source changed between `before` and `after`.
pub(super) fn describe_source_rewrite(before: &FlowKey, after: &FlowKey) -> String {
    if (before.source, before.source_port) == (after.source, after.source_port) {
        return String::new();
    }
    format!(
        "snat {}:{} -> {}:{}; ",
        before.source, before.source_port, after.source, after.source_port
    )
}
