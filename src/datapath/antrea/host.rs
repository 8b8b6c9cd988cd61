//! The node's host network stack: conntrack and NAT (PREROUTING, POSTROUTING),
//! the kernel routing table, TTL and MTU on forward, and answers for the node itself.

use super::*;
use crate::datapath::forwarding::{self, Refusal};

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
        let arrived = packet.meta.key;
        let connection = self.prerouting(ctx, &mut packet);
        let destination = packet.meta.key.destination;
        if destination == self.settings.ip || destination == self.gateway_ip() {
            self.local_delivery(ctx, ingress, slot, packet, out);
            return;
        }
        let Some(egress) = self.route(destination) else {
            self.refuse(
                ctx,
                slot,
                ingress,
                &packet,
                forwarding::no_route(destination),
                out,
            );
            return;
        };
        let (mtu, interface) = match egress {
            HostEgress::Uplink { .. } => (self.settings.uplink_mtu, "eth0"),
            HostEgress::Gateway => (self.settings.pod_mtu, "antrea-gw0"),
        };
        let checks = forwarding::check_ttl(&packet)
            .and_then(|()| forwarding::check_mtu(&packet, mtu, interface));
        if let Err(refusal) = checks {
            self.refuse(ctx, slot, ingress, &packet, refusal, out);
            return;
        }
        packet.decrement_ttl();
        let before = packet.meta.key;
        if let Err(reason) = self.postrouting(ctx, ingress, egress, connection, &mut packet) {
            ctx.describe(slot, HopAction::Drop, || format!("postrouting: {reason}"));
            ctx.drop_packet(&self.settings.name, &packet, reason, || {
                "POSTROUTING could not commit the connection".into()
            });
            return;
        }
        match egress {
            HostEgress::Uplink { next_hop } => {
                let Some(&next_mac) = self.settings.neighbors.get(&next_hop) else {
                    self.refuse(
                        ctx,
                        slot,
                        ingress,
                        &packet,
                        forwarding::no_neighbor(next_hop, "eth0"),
                        out,
                    );
                    return;
                };
                let route = format!("host stack: route {destination} via {next_hop} dev eth0");
                ctx.describe(slot, HopAction::Receive, || route.clone());
                packet.set_macs(self.settings.mac, next_mac);
                let after = packet.meta.key;
                ctx.hop(
                    self.settings.uplink_point,
                    &packet,
                    HopAction::Transmit,
                    || describe_source_rewrite(&before, &after) + &format!("{route} ({next_mac})"),
                );
                out.send(UPLINK_PORT, packet);
            }
            HostEgress::Gateway => {
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
                    format!("{rewrite}host stack: route {destination} dev antrea-gw0")
                });
                let destination_mac = match self.pod_by_ip.get(&destination) {
                    Some(&pod) => self.settings.pods[pod].mac,
                    None => Mac::ANTREA_GLOBAL_VIRTUAL,
                };
                packet.set_macs(self.settings.gateway_mac, destination_mac);
                let gateway_slot = ctx.begin_receive(self.settings.gateway_point, &packet);
                self.ovs(ctx, OvsSource::Gateway, gateway_slot, packet, out);
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

    /// Traffic for the node itself: pings are answered; nothing else listens.
    pub(super) fn local_delivery(
        &mut self,
        ctx: &mut Ctx,
        ingress: HostIngress,
        slot: Option<usize>,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        let destination = packet.meta.key.destination;
        if packet.meta.icmp == IcmpKind::EchoRequest {
            ctx.describe(slot, HopAction::Deliver, || {
                format!("echo request to {destination}: reply")
            });
            let (source_mac, point) = match ingress {
                HostIngress::Uplink => (self.settings.mac, self.settings.uplink_point),
                HostIngress::Gateway => (self.settings.gateway_mac, self.settings.gateway_point),
            };
            let header = ErrorHeader {
                source: destination,
                source_mac,
                destination_mac: packet.meta.source_mac,
                ttl: icmp::DEFAULT_TTL,
                identification: self.next_identification(),
            };
            icmp::answer_echo(&mut packet, destination, header);
            ctx.generated(&mut packet);
            ctx.hop(point, &packet, HopAction::Transmit, || "echo reply".into());
            match ingress {
                HostIngress::Uplink => out.send(UPLINK_PORT, packet),
                // Back through antrea-gw0 into OVS, to the pod that asked.
                HostIngress::Gateway => self.ovs(ctx, OvsSource::Gateway, None, packet, out),
            }
            return;
        }
        ctx.describe(slot, HopAction::Drop, || {
            format!("{destination} is the node itself; nothing listens")
        });
        ctx.drop_packet(&self.settings.name, &packet, DropReason::NoListener, || {
            format!("{destination} is node {}", self.settings.name)
        });
    }

    /// Drops `packet` for `refusal`, answering the sender with the ICMP error it owes.
    pub(super) fn refuse(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        ingress: HostIngress,
        packet: &Packet,
        refusal: Refusal,
        out: &mut Outputs,
    ) {
        ctx.describe(slot, HopAction::Drop, || refusal.detail.clone());
        if let Some(message) = refusal.icmp {
            self.send_error(ctx, ingress, packet, message, out);
        }
        ctx.drop_packet(&self.settings.name, packet, refusal.reason, || {
            refusal.detail
        });
    }

    /// An ICMP error from the host stack, sent back the way the packet came: from the
    /// node IP on eth0, or from antrea-gw0's address toward a pod.
    pub(super) fn send_error(
        &mut self,
        ctx: &mut Ctx,
        ingress: HostIngress,
        packet: &Packet,
        message: ErrorMessage,
        out: &mut Outputs,
    ) {
        if !icmp::may_send_error(packet) {
            return;
        }
        let identification = self.next_identification();
        match ingress {
            HostIngress::Uplink => {
                let header = ErrorHeader {
                    source: self.settings.ip,
                    source_mac: self.settings.mac,
                    destination_mac: packet.meta.source_mac,
                    ttl: icmp::DEFAULT_TTL,
                    identification,
                };
                let error =
                    icmp::originate(ctx, self.settings.uplink_point, packet, message, header);
                out.send(UPLINK_PORT, error);
            }
            HostIngress::Gateway => {
                let destination_mac = self
                    .pod_by_ip
                    .get(&packet.meta.key.source)
                    .map(|&pod| self.settings.pods[pod].mac)
                    .unwrap_or(Mac::ANTREA_GLOBAL_VIRTUAL);
                let header = ErrorHeader {
                    source: self.gateway_ip(),
                    source_mac: self.settings.gateway_mac,
                    destination_mac,
                    ttl: icmp::DEFAULT_TTL,
                    identification,
                };
                let error =
                    icmp::originate(ctx, self.settings.gateway_point, packet, message, header);
                self.ovs(ctx, OvsSource::Gateway, None, error, out);
            }
        }
    }
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
