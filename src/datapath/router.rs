//! An IPv4 router (`kind = "router"`): connected and static routes in one
//! longest-prefix-match FIB, forwarding as RFC 1812 describes — check and decrement
//! the TTL (§5.3.1), look up the route, resolve the next hop on the egress segment,
//! check the egress MTU, fragmenting a packet without DF that does not fit (RFC 791
//! §3.2) — and the ICMP errors of each failure (time exceeded, net unreachable, host
//! unreachable, fragmentation needed). It answers pings to its own addresses.

use super::forwarding::{self, Refusal};
use super::icmp::{self, ErrorHeader, ErrorMessage};
use super::local::{self, AnswerLink, Settle};
use super::{Ctx, DropReason, HopAction, Neighbors, Outputs, PointId, PortId};
use crate::engine::lpm::LpmTable;
use crate::packet::Packet;
use crate::wire::{Mac, ETHERTYPE_IPV4};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// Where a route came from (`netsim routes` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOrigin {
    Connected,
    Static,
}

impl RouteOrigin {
    pub fn name(self) -> &'static str {
        match self {
            RouteOrigin::Connected => "connected",
            RouteOrigin::Static => "static",
        }
    }
}

/// A FIB entry: out of `port`, to `next_hop` (or to the destination itself when the
/// prefix is connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub port: PortId,
    pub next_hop: Option<Ipv4Addr>,
    pub origin: RouteOrigin,
}

/// One interface of a router, on one segment.
#[derive(Debug, Clone)]
pub struct RouterPort {
    /// The interface name: the segment it attaches to.
    pub name: String,
    pub address: Ipv4Net,
    pub mac: Mac,
    pub mtu: u16,
    pub point: PointId,
    pub neighbors: Neighbors,
}

#[derive(Debug, Clone)]
pub struct Router {
    pub name: String,
    pub ports: Vec<RouterPort>,
    pub fib: LpmTable<Route>,
    identification: u16,
}

impl Router {
    /// A router with connected routes for its ports and the given static routes
    /// (each resolved to the port whose subnet holds its next hop).
    pub fn new(
        name: String,
        ports: Vec<RouterPort>,
        static_routes: &[(Ipv4Net, Ipv4Addr)],
    ) -> Self {
        let mut fib = LpmTable::new();
        for (index, port) in ports.iter().enumerate() {
            let port_id = PortId::try_from(index).unwrap_or(PortId::MAX);
            fib.insert(
                port.address.trunc(),
                Route {
                    port: port_id,
                    next_hop: None,
                    origin: RouteOrigin::Connected,
                },
            );
        }
        for (prefix, next_hop) in static_routes {
            if let Some(index) = ports
                .iter()
                .position(|port| port.address.contains(next_hop))
            {
                let port_id = PortId::try_from(index).unwrap_or(PortId::MAX);
                // A connected route for the same prefix wins (administrative distance 0 < 1).
                if fib.get_exact(*prefix).is_none() {
                    fib.insert(
                        *prefix,
                        Route {
                            port: port_id,
                            next_hop: Some(*next_hop),
                            origin: RouteOrigin::Static,
                        },
                    );
                }
            }
        }
        Router {
            name,
            ports,
            fib,
            identification: 0,
        }
    }

    fn next_identification(&mut self) -> u16 {
        self.identification = self.identification.wrapping_add(1);
        self.identification
    }

    pub fn process(
        &mut self,
        ctx: &mut Ctx,
        in_port: PortId,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        let ingress = &self.ports[usize::from(in_port)];
        let slot = ctx.begin_receive(ingress.point, &packet);
        if packet.meta.ethertype != ETHERTYPE_IPV4
            || (packet.meta.destination_mac != ingress.mac
                && packet.meta.destination_mac != Mac::BROADCAST)
        {
            ctx.describe(slot, HopAction::Drop, || {
                "not IPv4 for this interface".into()
            });
            ctx.drop_packet(&self.name, &packet, DropReason::Malformed, || {
                "not an IPv4 frame addressed to the router".into()
            });
            return;
        }
        let destination = packet.meta.key.destination;
        if self
            .ports
            .iter()
            .any(|port| port.address.addr() == destination)
        {
            self.deliver_local(ctx, in_port, slot, packet, out);
            return;
        }
        if let Err(refusal) = forwarding::check_ttl(&packet) {
            self.refuse(ctx, slot, in_port, &packet, refusal, out);
            return;
        }
        let Some((prefix, route)) = self
            .fib
            .lookup(destination)
            .map(|(prefix, route)| (prefix, *route))
        else {
            self.refuse(
                ctx,
                slot,
                in_port,
                &packet,
                forwarding::no_route(destination),
                out,
            );
            return;
        };
        let next_hop = route.next_hop.unwrap_or(destination);
        let egress = &self.ports[usize::from(route.port)];
        let Some(&next_mac) = egress.neighbors.get(&next_hop) else {
            let refusal = forwarding::no_neighbor(next_hop, &egress.name);
            self.refuse(ctx, slot, in_port, &packet, refusal, out);
            return;
        };
        if let Err(refusal) = forwarding::check_mtu(&packet, egress.mtu, &egress.name) {
            self.refuse(ctx, slot, in_port, &packet, refusal, out);
            return;
        }
        let old_ttl = packet.meta.ttl;
        packet.decrement_ttl();
        ctx.describe(slot, HopAction::Receive, || {
            format!(
                "route {prefix} ({}) via {next_hop}, ttl {old_ttl}->{}",
                route.origin.name(),
                old_ttl - 1
            )
        });
        let egress = &self.ports[usize::from(route.port)];
        packet.set_macs(egress.mac, next_mac);
        let (point, mtu) = (egress.point, usize::from(egress.mtu));
        let fragments = forwarding::fragment_for_mtu(ctx, packet, mtu);
        let count = fragments.len();
        for (index, fragment) in fragments.enumerate() {
            ctx.hop(point, &fragment, HopAction::Transmit, || {
                if count == 1 {
                    format!("forward to {next_hop} ({next_mac})")
                } else {
                    format!(
                        "forward to {next_hop} ({next_mac}), {} to fit mtu {mtu}",
                        forwarding::describe_fragment(index, count, &fragment)
                    )
                }
            });
            out.send(route.port, fragment);
        }
    }

    /// A packet for one of the router's own addresses: a ping is answered, TCP is
    /// reset and UDP refused with port unreachable (nothing listens on a router).
    fn deliver_local(
        &mut self,
        ctx: &mut Ctx,
        in_port: PortId,
        slot: Option<usize>,
        packet: Packet,
        out: &mut Outputs,
    ) {
        let identification = self.next_identification();
        let ingress = &self.ports[usize::from(in_port)];
        let link = AnswerLink {
            source_mac: ingress.mac,
            destination_mac: packet.meta.source_mac,
            identification,
        };
        let at = Settle {
            device: &self.name,
            what: "the router itself",
            slot,
            point: ingress.point,
        };
        let answer = local::answer(&packet, link);
        if let Some(answer) = local::settle(ctx, at, &packet, answer) {
            out.send(in_port, answer);
        }
    }

    /// Drops `packet` for `refusal`, answering the sender with the ICMP error it owes.
    fn refuse(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        in_port: PortId,
        packet: &Packet,
        refusal: Refusal,
        out: &mut Outputs,
    ) {
        ctx.describe(slot, HopAction::Drop, || refusal.detail.clone());
        if let Some(message) = refusal.icmp {
            self.send_error(ctx, in_port, packet, message, out);
        }
        ctx.drop_packet(&self.name, packet, refusal.reason, || refusal.detail);
    }

    /// Sends an ICMP error about `packet` to its source, routed like any packet the
    /// router originates, from the address of the interface the error leaves by (Linux
    /// `__icmp_send` with `icmp_errors_use_inbound_ifaddr = 0`: the route back to the
    /// sender picks the source); when RFC 1812 allows one.
    fn send_error(
        &mut self,
        ctx: &mut Ctx,
        in_port: PortId,
        packet: &Packet,
        message: ErrorMessage,
        out: &mut Outputs,
    ) {
        if !icmp::may_send_error(packet) {
            return;
        }
        let identification = self.next_identification();
        let source = packet.meta.key.source;
        let (port, next_mac) = match self.fib.lookup(source) {
            Some((_, route)) => {
                let next_hop = route.next_hop.unwrap_or(source);
                match self.ports[usize::from(route.port)].neighbors.get(&next_hop) {
                    Some(mac) => (route.port, *mac),
                    None => (in_port, packet.meta.source_mac),
                }
            }
            None => (in_port, packet.meta.source_mac),
        };
        let egress = &self.ports[usize::from(port)];
        let header = ErrorHeader::icmp_send(
            packet,
            egress.address.addr(),
            egress.mac,
            next_mac,
            identification,
        );
        let error = icmp::originate(ctx, egress.point, packet, message, header);
        out.send(port, error);
    }
}
