//! An IPv4 router: a pipeline of stages, like a node. Classify (an IPv4 frame for
//! this interface; a packet for one of the router's own addresses is answered
//! locally) -> uRPF (strict: the source must be routed back out of the interface the
//! packet came in on) -> Route (longest-prefix match in the FIB the control plane
//! computed, `control`; one of several equal-cost next hops by a seeded hash of the
//! 5-tuple) -> Forward (RFC 1812: TTL §5.3.1, next-hop resolution, egress MTU with
//! fragmentation of a packet without DF, RFC 791 §3.2) -> Output. Each failure owes
//! its ICMP error (time exceeded, net / host unreachable, fragmentation needed).

use super::forwarding::{self, Refusal};
use super::icmp::{self, ErrorHeader, ErrorMessage};
use super::local::{self, AnswerLink, Settle};
use super::path_log::{IdentificationCounter, Table};
use super::{Ctx, DropReason, HopAction, Neighbors, Outputs, PointId, PortId, Verdict};
use crate::control::RouteTables;
use crate::engine::conntrack::{Conntrack, Direction};
use crate::engine::hash::flow_hash;
use crate::engine::lpm::LpmTable;
use crate::engine::nat::{NatAction, NatPool};
use crate::engine::rules::{AddressSet, Layer, Metadata, Predicate, Rule};
use crate::packet::Packet;
use crate::wire::{Mac, ETHERTYPE_IPV4};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::ops::Not;

/// Where a route came from (`netsim routes` prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteOrigin {
    Connected,
    Static,
    /// An NSX Tier-1's default route to its Tier-0 over the transit link.
    Tier0Uplink,
    /// What a Tier-1 advertised to this Tier-0, by type.
    Tier1(crate::topology::RouteKind),
    /// Learned over BGP: external (eBGP) or internal (iBGP).
    Bgp {
        internal: bool,
    },
}

impl RouteOrigin {
    pub fn name(self) -> &'static str {
        use crate::topology::RouteKind;
        match self {
            RouteOrigin::Connected => "connected",
            RouteOrigin::Static => "static",
            RouteOrigin::Tier0Uplink => "t0-uplink",
            RouteOrigin::Tier1(RouteKind::Connected) => "t1-connected",
            RouteOrigin::Tier1(RouteKind::Static) => "t1-static",
            RouteOrigin::Tier1(RouteKind::Nat) => "t1-nat",
            RouteOrigin::Tier1(RouteKind::LbVip) => "t1-lb-vip",
            RouteOrigin::Bgp { internal: false } => "ebgp",
            RouteOrigin::Bgp { internal: true } => "ibgp",
        }
    }

    /// Administrative distance: the lower wins between origins. Connected 0, static
    /// 1, eBGP 20, iBGP 200 are the values Cisco, FRR and NSX share; NSX installs a
    /// Tier-1's default route like a static one and ranks what Tier-1s advertise
    /// (its internal "NSX" routes) at 3 [K: NSX admin guide's distance table].
    pub fn distance(self) -> u8 {
        match self {
            RouteOrigin::Connected => 0,
            RouteOrigin::Static | RouteOrigin::Tier0Uplink => 1,
            RouteOrigin::Tier1(_) => 3,
            RouteOrigin::Bgp { internal: false } => 20,
            RouteOrigin::Bgp { internal: true } => 200,
        }
    }
}

/// One next hop of a route: out of `port`, to `address` (or to the destination
/// itself when the prefix is connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NextHop {
    pub port: PortId,
    pub address: Option<Ipv4Addr>,
}

/// A FIB entry: one next hop, or several of equal cost (ECMP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub next_hops: Vec<NextHop>,
    pub origin: RouteOrigin,
}

/// Unicast reverse-path forwarding (RFC 3704).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urpf {
    /// No check.
    None,
    /// Drop a packet whose source is not routed back out of the interface it came
    /// in on (NSX's default on gateway interfaces).
    Strict,
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

/// The router's stages, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouterStage {
    Classify,
    Urpf,
    /// The load balancer's virtual servers (an NSX Tier-1 LB): DNAT to a member and
    /// SNAT (automap) on a new connection, its translations on every later packet.
    LoadBalancer,
    Route,
}

const ROUTER_PIPELINE: [RouterStage; 4] = [
    RouterStage::Classify,
    RouterStage::Urpf,
    RouterStage::LoadBalancer,
    RouterStage::Route,
];

/// A VIP:port the router load-balances (an NSX load balancer's virtual server for a
/// LoadBalancer Service).
#[derive(Debug, Clone)]
pub struct VirtualServer {
    /// `NS/NAME` of the Service.
    pub service: String,
    pub protocol: u8,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// The pool: address and port of each member.
    pub members: Vec<(Ipv4Addr, u16)>,
    /// SNAT automap: the LB's interface address toward the member.
    pub snat_automap: bool,
    /// Allowed client ranges; empty allows everyone.
    pub source_ranges: Vec<Ipv4Net>,
}

/// What the route stage decided: the prefix matched and the next hop chosen.
#[derive(Debug, Clone, Copy)]
struct Forwarding {
    prefix: Ipv4Net,
    origin: RouteOrigin,
    next_hop: NextHop,
    paths: usize,
}

/// Why a stage stopped a packet.
enum Stop {
    /// Addressed to the router itself.
    Local,
    Refuse(Refusal),
    Drop(DropReason, String),
}

#[derive(Debug, Clone)]
pub struct Router {
    pub name: String,
    pub ports: Vec<RouterPort>,
    pub fib: LpmTable<Route>,
    /// Every candidate route and why it won or lost (`netsim routes`).
    pub rib: Vec<crate::control::Candidate>,
    /// Each configured BGP neighbor's session state.
    pub sessions: Vec<crate::control::bgp::SessionState>,
    pub urpf: Urpf,
    /// Load-balancer virtual servers.
    pub virtual_servers: Vec<VirtualServer>,
    /// SNAT rules (an NSX Tier-1's) on the rule table, first match wins.
    pub snat: Layer<NatAction>,
    /// The connections its load balancer and SNAT translate.
    lb_conntrack: Conntrack,
    /// Salt of the ECMP hash (the topology seed).
    seed: u64,
    /// The IPv4 identification of packets it originates.
    pub identification: IdentificationCounter,
}

impl Router {
    /// The load balancer's connection table (`Table::LoadBalancer`), for the path
    /// cache.
    pub fn conntrack(&self, table: Table) -> Option<&Conntrack> {
        (table == Table::LoadBalancer).then_some(&self.lb_conntrack)
    }

    pub fn conntrack_mut(&mut self, table: Table) -> Option<&mut Conntrack> {
        (table == Table::LoadBalancer).then_some(&mut self.lb_conntrack)
    }

    /// A router forwarding with the tables the control plane computed.
    pub fn new(
        name: String,
        ports: Vec<RouterPort>,
        tables: RouteTables,
        urpf: Urpf,
        seed: u64,
    ) -> Self {
        Router {
            name,
            ports,
            fib: tables.fib,
            rib: tables.rib,
            sessions: tables.sessions,
            urpf,
            virtual_servers: Vec::new(),
            snat: Layer::new("snat", NatAction::Keep),
            lb_conntrack: Conntrack::new(0, seed),
            seed,
            identification: IdentificationCounter::default(),
        }
    }

    /// Gives the router a load balancer with these virtual servers and these SNAT
    /// rules, over one connection table.
    pub fn set_nat(
        &mut self,
        servers: Vec<VirtualServer>,
        snat_rules: &[crate::topology::SnatRule],
        conntrack_max: usize,
    ) {
        self.virtual_servers = servers;
        self.snat = snat_layer(&self.name, snat_rules);
        self.lb_conntrack = Conntrack::new(conntrack_max, self.seed);
    }

    pub fn process(
        &mut self,
        ctx: &mut Ctx,
        in_port: PortId,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        let slot = ctx.begin_receive(self.ports[usize::from(in_port)].point, &packet);
        let mut forwarding = None;
        for stage in ROUTER_PIPELINE {
            let verdict = match stage {
                RouterStage::Classify => self.classify(ctx, in_port, &packet),
                RouterStage::Urpf => self.check_urpf(in_port, &packet),
                RouterStage::LoadBalancer => self.load_balance(ctx, &mut packet),
                RouterStage::Route => match self.route(&packet) {
                    Ok(chosen) => {
                        forwarding = Some(chosen);
                        Verdict::Continue
                    }
                    Err(stop) => Verdict::Forward(stop),
                },
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Forward(Stop::Local) => {
                    self.deliver_local(ctx, in_port, slot, packet, out);
                    return;
                }
                Verdict::Forward(Stop::Refuse(refusal)) => {
                    self.refuse(ctx, slot, in_port, &packet, refusal, out);
                    return;
                }
                Verdict::Forward(Stop::Drop(reason, detail)) => {
                    ctx.describe(slot, HopAction::Drop, || detail.clone());
                    ctx.drop_packet(&self.name, &packet, reason, || detail);
                    return;
                }
                Verdict::Drop(reason) => {
                    ctx.drop_packet(&self.name, &packet, reason, String::new);
                    return;
                }
            }
        }
        let Some(chosen) = forwarding else {
            return;
        };
        self.forward(ctx, slot, in_port, chosen, packet, out);
    }

    /// Classify: an IPv4 frame addressed to this interface; a packet for one of the
    /// router's own addresses stops here to be answered.
    fn classify(&self, ctx: &mut Ctx, in_port: PortId, packet: &Packet) -> Verdict<Stop> {
        let ingress = &self.ports[usize::from(in_port)];
        if packet.meta.ethertype != ETHERTYPE_IPV4
            || (packet.meta.destination_mac != ingress.mac
                && packet.meta.destination_mac != Mac::BROADCAST)
        {
            return Verdict::Forward(Stop::Drop(
                DropReason::Malformed,
                "not an IPv4 frame addressed to this interface".into(),
            ));
        }
        let destination = packet.meta.key.destination;
        // A reply to the load balancer's SNAT address belongs to its connection.
        let load_balanced = self.translates()
            && ctx.knows(Table::LoadBalancer, &self.lb_conntrack, &packet.meta.key);
        if !load_balanced
            && self
                .ports
                .iter()
                .any(|port| port.address.addr() == destination)
        {
            return Verdict::Forward(Stop::Local);
        }
        Verdict::Continue
    }

    /// Applies the router's connection `id` to `packet` (`datapath::nat`): the load
    /// balancer's entries (with a DNAT) or an SNAT rule's.
    fn apply_tracked(&self, ctx: &mut Ctx, id: u32, direction: Direction, packet: &mut Packet) {
        let Some(entry) = self.lb_conntrack.entry(id).copied() else {
            return;
        };
        let component = if entry.has_dnat() {
            "load-balancer"
        } else {
            "nsx-snat"
        };
        super::nat::apply_entry(ctx, &self.name, component, &entry, direction, packet);
    }

    /// Whether the router translates anything (a load balancer or SNAT rules).
    fn translates(&self) -> bool {
        !self.virtual_servers.is_empty() || !self.snat.is_empty()
    }

    /// SNAT rules (an NSX Tier-1's, as NCP programs them for a namespace): the first
    /// rule that matches a new connection decides — SNAT into its pool (the port chosen
    /// as the kernel does, in the router's connection table) or `no_snat`.
    fn source_nat(&mut self, ctx: &mut Ctx, packet: &mut Packet) -> Verdict<Stop> {
        let key = packet.meta.key;
        let metadata = Metadata {
            key,
            in_interface: None,
            out_interface: None,
            mark: 0,
        };
        let decision = self.snat.classify(&metadata);
        let Some(pool) = decision.action.pool(key.source) else {
            return Verdict::Continue;
        };
        // Only a connection that starts here is translated: the answers of one that
        // came in (a node port's SYN-ACK) leave as they are.
        let starts = match (key.protocol, packet.meta.icmp) {
            (crate::wire::PROTOCOL_TCP, _) => {
                packet.meta.tcp_flags & 0x12 == 0x02 // SYN without ACK
            }
            (_, crate::packet::IcmpKind::EchoRequest) => true,
            (crate::wire::PROTOCOL_UDP, _) => true,
            _ => false,
        };
        if !starts {
            return Verdict::Continue;
        }
        let committed = self.lb_conntrack.insert_snat_pool(key, &pool, ctx.now_ns);
        let id = match committed {
            Ok(id) => id,
            Err(error) => {
                return Verdict::Forward(Stop::Drop(
                    DropReason::from(error),
                    format!(
                        "snat rule {} to {} could not be committed",
                        decision.name,
                        describe_pool(&pool)
                    ),
                ))
            }
        };
        self.apply_tracked(ctx, id, Direction::Original, packet);
        Verdict::Continue
    }

    /// The load balancer: a tracked connection's packets are translated both ways; a
    /// new one to a virtual server is checked against the source ranges, given a
    /// member (a hash of the 5-tuple with the topology seed) and SNATed to the LB's
    /// interface toward the member under automap — one conntrack entry with both.
    fn load_balance(&mut self, ctx: &mut Ctx, packet: &mut Packet) -> Verdict<Stop> {
        if !self.translates() {
            return Verdict::Continue;
        }
        let key = packet.meta.key;
        if let Some((id, direction)) = ctx.track(
            Table::LoadBalancer,
            &mut self.lb_conntrack,
            &key,
            packet.meta.tcp_flags,
        ) {
            self.apply_tracked(ctx, id, direction, packet);
            return Verdict::Continue;
        }
        let Some(server) = self.virtual_servers.iter().find(|v| {
            v.protocol == key.protocol && v.vip == key.destination && v.port == key.destination_port
        }) else {
            return self.source_nat(ctx, packet);
        };
        if !server.source_ranges.is_empty()
            && !server.source_ranges.iter().any(|r| r.contains(&key.source))
        {
            return Verdict::Forward(Stop::Drop(
                DropReason::Policy,
                format!(
                    "load balancer: {} is outside load_balancer_source_ranges of {}",
                    key.source, server.service
                ),
            ));
        }
        if server.members.is_empty() {
            return Verdict::Forward(Stop::Drop(
                DropReason::NoEndpoints,
                format!(
                    "load balancer: the pool of {} has no members",
                    server.service
                ),
            ));
        }
        let pick = usize::try_from(crate::engine::hash::flow_hash(&key, self.seed)).unwrap_or(0)
            % server.members.len();
        let member = server.members[pick];
        let snat = if server.snat_automap {
            self.fib
                .lookup(member.0)
                .and_then(|(_, route)| route.next_hops.first().copied())
                .map(|hop| self.ports[usize::from(hop.port)].address.addr())
        } else {
            None
        };
        let snat = snat.map(crate::engine::nat::NatPool::address);
        let id = match self
            .lb_conntrack
            .insert_nat(key, member, snat.as_ref(), ctx.now_ns)
        {
            Ok(id) => id,
            Err(error) => {
                return Verdict::Forward(Stop::Drop(
                    DropReason::from(error),
                    "load balancer: the connection could not be committed".into(),
                ))
            }
        };
        self.apply_tracked(ctx, id, Direction::Original, packet);
        Verdict::Continue
    }

    /// uRPF strict (RFC 3704 §2.2): the route back to the source must leave by the
    /// interface the packet came in on.
    fn check_urpf(&self, in_port: PortId, packet: &Packet) -> Verdict<Stop> {
        if self.urpf == Urpf::None {
            return Verdict::Continue;
        }
        let source = packet.meta.key.source;
        let back = self.fib.lookup(source);
        let ok = back.is_some_and(|(_, route)| route.next_hops.iter().any(|h| h.port == in_port));
        if ok {
            return Verdict::Continue;
        }
        let ingress = &self.ports[usize::from(in_port)].name;
        let detail = match back {
            Some((prefix, route)) => format!(
                "urpf strict: source {source} arrived on {ingress} but {prefix} leaves by {}",
                route
                    .next_hops
                    .iter()
                    .map(|h| self.ports[usize::from(h.port)].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => format!("urpf strict: no route back to source {source} (arrived on {ingress})"),
        };
        Verdict::Forward(Stop::Drop(DropReason::Urpf, detail))
    }

    /// Route: the longest prefix that matches, and among its equal-cost next hops the
    /// one a seeded hash of the 5-tuple picks (every packet of a flow takes the same).
    fn route(&self, packet: &Packet) -> Result<Forwarding, Stop> {
        let destination = packet.meta.key.destination;
        let (prefix, route) = self
            .fib
            .lookup(destination)
            .ok_or_else(|| Stop::Refuse(forwarding::no_route(destination)))?;
        let paths = route.next_hops.len();
        let index = if paths > 1 {
            usize::try_from(flow_hash(&packet.meta.key, self.seed)).unwrap_or(0) % paths
        } else {
            0
        };
        Ok(Forwarding {
            prefix,
            origin: route.origin,
            next_hop: route.next_hops[index],
            paths,
        })
    }

    /// Forward: TTL, next-hop resolution, MTU, then out (in fragments if need be).
    fn forward(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        in_port: PortId,
        chosen: Forwarding,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        if let Err(refusal) = forwarding::check_ttl(&packet) {
            self.refuse(ctx, slot, in_port, &packet, refusal, out);
            return;
        }
        let destination = packet.meta.key.destination;
        let next_hop = chosen.next_hop.address.unwrap_or(destination);
        let egress = &self.ports[usize::from(chosen.next_hop.port)];
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
            let ecmp = if chosen.paths > 1 {
                format!(" (ecmp: 1 of {} paths)", chosen.paths)
            } else {
                String::new()
            };
            format!(
                "route {} ({}) via {next_hop}{ecmp}, ttl {old_ttl}->{}",
                chosen.prefix,
                chosen.origin.name(),
                old_ttl - 1
            )
        });
        let port = chosen.next_hop.port;
        let egress = &self.ports[usize::from(port)];
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
            out.send(port, fragment);
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
        let identification = self.identification.next(ctx);
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
        let identification = self.identification.next(ctx);
        let source = packet.meta.key.source;
        let (port, next_mac) = match self.fib.lookup(source) {
            Some((_, route)) => {
                let hop = route.next_hops[0];
                let next_hop = hop.address.unwrap_or(source);
                match self.ports[usize::from(hop.port)].neighbors.get(&next_hop) {
                    Some(mac) => (hop.port, *mac),
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

/// An NSX gateway's SNAT rules on the rule table: each matches its sources (and
/// destinations when given) but never traffic that stays inside its own source
/// network (east-west between a namespace's segments is not translated).
pub fn snat_layer(router: &str, rules: &[crate::topology::SnatRule]) -> Layer<NatAction> {
    let mut layer = Layer::new(format!("{router}/snat"), NatAction::Keep);
    for rule in rules {
        let sources = AddressSet::new([rule.match_source]);
        let mut predicates = vec![
            Predicate::SourceIn(sources.clone()),
            Predicate::DestinationIn(sources).not(),
        ];
        if let Some(destination) = rule.match_destination {
            predicates.push(Predicate::DestinationIn(AddressSet::new([destination])));
        }
        layer.push(Rule::new(rule.name.clone(), predicates, rule.action));
    }
    layer
}

/// `A` or `A-B`, with `:LOW-HIGH` when the pool has ports.
pub fn describe_pool(pool: &NatPool) -> String {
    let addresses = if pool.first == pool.last {
        pool.first.to_string()
    } else {
        format!("{}-{}", pool.first, pool.last)
    };
    match pool.ports {
        Some((low, high)) => format!("{addresses}:{low}-{high}"),
        None => addresses,
    }
}
