//! A Kubernetes node running Calico (reference §f): no bridge — every pod's veth
//! (`cali…`, host side MAC `ee:ee:ee:ee:ee:ee`) is routed by the node's Linux host
//! stack ([`LinuxHost`]). The pod's default gateway 169.254.1.1 is answered by proxy
//! ARP on that veth, so a pod sends every frame to `ee:ee:ee:ee:ee:ee`. The kernel
//! routing table holds what Felix and BIRD program: a /32 per local pod via its veth,
//! a `blackhole` for each block affine to the node, the BGP routes to other nodes'
//! blocks (and borrowed /32s) — via `tunl0` (IP-in-IP, IP protocol 4) when the pool's
//! `ipipMode` says so for that next hop, via `vxlan.calico` (VXLAN, UDP 4789, VNI 4096)
//! when `vxlanMode` does, else straight over eth0 — the node subnet and the default
//! route. Felix's `cali-nat-outgoing` masquerades pool sources to destinations outside
//! every pool. Felix also drops a packet from a pod whose source is not the pod's
//! address (its anti-spoofing rule on `cali-fw-*`).

use super::encap::{decapsulate, encapsulate, EncapHeader, Encapsulation};
use super::forwarding;
use super::host::{
    HostEgress, HostIngress, HostRoute, HostStack, InteriorId, InteriorLink, LinuxHost, LocalPod,
};
use super::{Ctx, DropReason, HopAction, Neighbors, Outputs, PointId, PortId};
use crate::datapath::path_log::Table;
use crate::datapath::policy::{PolicyDirection, PolicyEnforcer, PolicyState};
use crate::engine::conntrack::Conntrack;
use crate::engine::conntrack::Direction;
use crate::engine::hash::tunnel_source_port;
use crate::engine::nat::NatAction;
use crate::engine::rules::{AddressSet, Layer, Predicate, Rule};
use crate::packet::Packet;
use crate::wire::{vxlan, Mac, ETHERTYPE_IPV4, PROTOCOL_IPIP, PROTOCOL_UDP};
use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Not;

/// eth0 is port 0; pod veths follow from port 1.
pub const UPLINK_PORT: PortId = 0;
/// tunl0 / vxlan.calico; pod `i`'s veth is interior `i + 1`.
const TUNNEL: InteriorId = 0;

/// The MAC of every Calico host-side veth (Felix sets it so that no pod ever learns
/// a real one).
pub const VETH_MAC: Mac = Mac([0xee; 6]);
/// The pod's default gateway, answered by proxy ARP on the veth.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The node's tunnel device.
#[derive(Debug, Clone)]
pub struct CalicoTunnel {
    /// IP-in-IP (tunl0) or VXLAN (vxlan.calico).
    pub encapsulation: Encapsulation,
    /// The device's address, from the node's first block.
    pub address: Ipv4Addr,
    /// vxlan.calico's MAC.
    pub mac: Mac,
    pub point: PointId,
    /// VXLAN: each peer's VTEP address -> (its node IP, its VTEP MAC), the ARP and
    /// FDB entries Felix programs.
    pub vteps: FxHashMap<Ipv4Addr, (Ipv4Addr, Mac)>,
}

impl CalicoTunnel {
    pub fn name(&self) -> &'static str {
        match self.encapsulation {
            Encapsulation::Vxlan { .. } => "vxlan.calico",
            _ => "tunl0",
        }
    }
}

/// Where a kernel route came from, for `netsim routes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    Connected,
    Static,
    /// Felix: local pod /32s, VXLAN routes.
    Felix,
    /// BIRD: the node's own blocks (blackhole) and what BGP learned.
    Bird,
}

impl RouteSource {
    pub fn name(self) -> &'static str {
        match self {
            RouteSource::Connected => "connected",
            RouteSource::Static => "static",
            RouteSource::Felix => "felix",
            RouteSource::Bird => "bird",
        }
    }
}

/// Everything a Calico node is built from.
#[derive(Debug, Clone)]
pub struct CalicoNodeSettings {
    /// The cluster's compiled network policy.
    pub policy: std::sync::Arc<crate::datapath::policy::ClusterPolicy>,
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub uplink_mtu: u16,
    pub neighbors: Neighbors,
    pub uplink_point: PointId,
    /// MTU of the pod interfaces and of the tunnel device.
    pub pod_mtu: u16,
    pub pods: Vec<LocalPod>,
    /// The host-side veth names (`cali` + 11 hex digits), by pod.
    pub veth_names: Vec<String>,
    pub tunnel: Option<CalicoTunnel>,
    /// The kernel routing table, with where each route came from.
    pub routes: Vec<(Ipv4Net, HostRoute, RouteSource)>,
    pub nat_outgoing: bool,
    pub pools: Vec<Ipv4Net>,
    pub conntrack_max: usize,
    pub seed: u64,
    /// What BIRD learned and its sessions, for `netsim routes`.
    pub bgp: crate::control::NodeBgp,
    /// The node's own listening processes (kube-proxy's health checks); its
    /// interior interface is its port.
    pub host_process: Option<crate::datapath::host::HostProcess>,
}

#[derive(Debug, Clone)]
pub struct CalicoNode {
    settings: CalicoNodeSettings,
    pub stack: HostStack,
    route_sources: BTreeMap<Ipv4Net, RouteSource>,
    /// Felix's policy: the cluster's compiled NetworkPolicy and the connections it
    /// allowed.
    policy: PolicyEnforcer,
}

impl CalicoNode {
    /// The node's conntrack table `table` (netfilter's or Felix's policy
    /// connections), for the path cache.
    pub fn conntrack(&self, table: Table) -> Option<&Conntrack> {
        match table {
            Table::HostStack => Some(&self.stack.conntrack),
            Table::Policy => Some(self.policy.connections()),
            _ => None,
        }
    }

    pub fn conntrack_mut(&mut self, table: Table) -> Option<&mut Conntrack> {
        match table {
            Table::HostStack => Some(&mut self.stack.conntrack),
            Table::Policy => Some(self.policy.connections_mut()),
            _ => None,
        }
    }

    pub fn new(settings: CalicoNodeSettings) -> Self {
        let mut stack = HostStack::new(
            settings.name.clone(),
            settings.ip,
            settings.mac,
            settings.uplink_mtu,
            settings.neighbors.clone(),
            settings.uplink_point,
            UPLINK_PORT,
            Conntrack::new(settings.conntrack_max, settings.seed),
        );
        stack.host_process = settings.host_process.clone();
        append_nat_outgoing(&mut stack.postrouting, &settings);
        let mut route_sources = BTreeMap::new();
        for (prefix, route, source) in &settings.routes {
            stack.routes.insert(*prefix, *route);
            route_sources.insert(*prefix, *source);
        }
        let policy = PolicyEnforcer::new(
            settings.policy.clone(),
            settings.conntrack_max,
            settings.seed,
        );
        CalicoNode {
            settings,
            stack,
            route_sources,
            policy,
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// What BIRD learned and its sessions.
    pub fn bgp(&self) -> &crate::control::NodeBgp {
        &self.settings.bgp
    }

    /// The kernel routing table as `ip route` shows it: prefix, next hop, device, and
    /// who programmed it.
    pub fn route_table(&self) -> Vec<(Ipv4Net, Option<Ipv4Addr>, String, &'static str)> {
        self.stack
            .routes
            .entries()
            .into_iter()
            .map(|(prefix, route)| {
                let source = self
                    .route_sources
                    .get(&prefix)
                    .map_or("kernel", |s| s.name());
                match *route {
                    HostRoute::Uplink { via } => (prefix, via, "eth0".to_string(), source),
                    HostRoute::Interior { interface, via } => (
                        prefix,
                        via,
                        self.interior_name(interface).to_string(),
                        source,
                    ),
                    HostRoute::Blackhole => (prefix, None, "blackhole".to_string(), source),
                }
            })
            .collect()
    }

    /// Entry point: a frame arrives on `in_port`.
    pub fn process(&mut self, ctx: &mut Ctx, in_port: PortId, packet: Packet, out: &mut Outputs) {
        if in_port == UPLINK_PORT {
            self.uplink_input(ctx, packet, out);
        } else if let Some(process) = self
            .stack
            .host_process
            .as_ref()
            .filter(|p| p.port == in_port)
        {
            let interface = HostIngress::Interior(process.interface);
            self.host_input(ctx, interface, None, packet, out);
        } else {
            self.pod_input(ctx, usize::from(in_port - 1), packet, out);
        }
    }

    /// A pod's frame on its veth: Felix's anti-spoofing, then the host stack.
    fn pod_input(&mut self, ctx: &mut Ctx, pod: usize, packet: Packet, out: &mut Outputs) {
        let local = &self.settings.pods[pod];
        let slot = ctx.begin_receive(local.veth_point, &packet);
        if packet.meta.ethertype != ETHERTYPE_IPV4 || packet.meta.key.source != local.ip {
            ctx.describe(slot, HopAction::Drop, || {
                format!("felix: source is not {} (anti-spoofing)", local.ip)
            });
            ctx.drop_packet(&self.settings.name, &packet, DropReason::Policy, || {
                format!(
                    "felix anti-spoofing: pod {} sent from another address",
                    local.name
                )
            });
            return;
        }
        let interface = InteriorId::try_from(pod + 1).unwrap_or(InteriorId::MAX);
        self.host_input(ctx, HostIngress::Interior(interface), slot, packet, out);
    }

    /// eth0: IP-in-IP or VXLAN for this node goes to its tunnel device, the rest to
    /// the host stack.
    fn uplink_input(&mut self, ctx: &mut Ctx, mut packet: Packet, out: &mut Outputs) {
        let slot = ctx.begin_receive(self.settings.uplink_point, &packet);
        if !self.stack.accepts_frame(ctx, slot, &packet) {
            return;
        }
        if self.settings.tunnel.is_none() {
            self.host_input(ctx, HostIngress::Uplink, slot, packet, out);
            return;
        }
        // A fragment for the node itself is reassembled first (nf_defrag_ipv4 in
        // PREROUTING, ip_defrag before local delivery): an outer tunnel packet the
        // sender had to cut is decapsulated whole.
        if packet.meta.key.destination == self.settings.ip
            && crate::engine::reassembly::is_fragment(packet.frame())
        {
            match self.defragment(ctx, slot, packet) {
                Some((whole, _)) => packet = whole,
                None => return,
            }
        }
        let Some(tunnel) = &self.settings.tunnel else {
            return;
        };
        let key = packet.meta.key;
        let tunnelled = key.destination == self.settings.ip
            && match tunnel.encapsulation {
                Encapsulation::Ipip => key.protocol == PROTOCOL_IPIP,
                Encapsulation::Vxlan { .. } => {
                    key.protocol == PROTOCOL_UDP && key.destination_port == vxlan::UDP_PORT
                }
                Encapsulation::Geneve => false,
            };
        if !tunnelled {
            self.host_input(ctx, HostIngress::Uplink, slot, packet, out);
            return;
        }
        let (name, point) = (tunnel.name(), tunnel.point);
        match decapsulate(&mut packet) {
            Ok((_, vni)) => {
                ctx.describe(slot, HopAction::Decapsulate, || {
                    format!("{name} decap from {} (vni {vni})", key.source)
                });
                let tunnel_slot = ctx.begin_receive(point, &packet);
                self.host_input(ctx, HostIngress::Interior(TUNNEL), tunnel_slot, packet, out);
            }
            Err(error) => {
                ctx.describe(slot, HopAction::Drop, || {
                    format!("tunnel packet refused: {error}")
                });
                ctx.drop_packet(&self.settings.name, &packet, DropReason::Malformed, || {
                    format!("{name} packet from {} refused: {error}", key.source)
                });
            }
        }
    }

    /// tunl0's PMTU check (`ip_tunnel_xmit` → `tnl_update_pmtu`): the outer header
    /// copies the inner DF, so a DF packet that would not fit the uplink with the
    /// outer header is refused with fragmentation-needed carrying the uplink's MTU
    /// less 20, sent from the node to the packet's source. (VXLAN's outer header has
    /// no DF: an outer packet too long is fragmented instead.)
    fn tunnel_refusal(&self, packet: &Packet) -> Option<forwarding::Refusal> {
        let tunnel = self.settings.tunnel.as_ref()?;
        if tunnel.encapsulation != Encapsulation::Ipip {
            return None;
        }
        let mtu = self.path_mtu_through(Encapsulation::Ipip);
        forwarding::check_mtu(packet, mtu, tunnel.name()).err()
    }

    /// The largest inner packet `encapsulation` carries over the uplink unfragmented.
    fn path_mtu_through(&self, encapsulation: Encapsulation) -> u16 {
        let overhead = u16::try_from(encapsulation.overhead()).unwrap_or(u16::MAX);
        self.settings.uplink_mtu.saturating_sub(overhead)
    }

    /// Encapsulates toward the peer behind `next_hop` and sends the outer packet the
    /// way the routing table sends it (the peer itself on the node subnet, else the
    /// default gateway).
    fn tunnel_output(
        &mut self,
        ctx: &mut Ctx,
        next_hop: Ipv4Addr,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        if let Some(refusal) = self.tunnel_refusal(&packet) {
            let point = self
                .settings
                .tunnel
                .as_ref()
                .map_or(self.settings.uplink_point, |t| t.point);
            ctx.hop(point, &packet, HopAction::Drop, || refusal.detail.clone());
            self.refuse(ctx, None, &packet, refusal, out);
            return;
        }
        let Some(tunnel) = &self.settings.tunnel else {
            return;
        };
        let (encapsulation, name) = (tunnel.encapsulation, tunnel.name());
        let (peer, inner_destination_mac) = match tunnel.vteps.get(&next_hop) {
            Some(&(node_ip, mac)) => (node_ip, mac),
            None => (next_hop, Mac::default()),
        };
        if let Encapsulation::Vxlan { .. } = encapsulation {
            packet.set_macs(tunnel.mac, inner_destination_mac);
        }
        let outer_next_hop = match self.stack.route(peer) {
            Some(HostEgress::Uplink { next_hop }) => Some(next_hop),
            _ => None,
        };
        let Some(next_mac) = outer_next_hop.and_then(|hop| self.stack.neighbors.get(&hop).copied())
        else {
            ctx.drop_packet(&self.settings.name, &packet, DropReason::NoNeighbor, || {
                format!("{name}: no route or neighbor toward tunnel peer {peer}")
            });
            return;
        };
        let inner_key = packet.meta.key;
        let identification = self.stack.identification.next(ctx);
        let header = EncapHeader {
            source: self.settings.ip,
            destination: peer,
            source_mac: self.settings.mac,
            destination_mac: next_mac,
            source_port: tunnel_source_port(
                &inner_key,
                self.settings.seed,
                encapsulation.source_ports(),
            ),
            identification,
            // vxlan.calico: the kernel device's `df` unset; tunl0: the inner DF.
            dont_fragment: match encapsulation {
                Encapsulation::Ipip => packet.meta.dont_fragment,
                Encapsulation::Vxlan { .. } | Encapsulation::Geneve => false,
            },
        };
        encapsulate(&mut packet, encapsulation, &header);
        self.learn_path_mtu(ctx, encapsulation, inner_key.destination, &packet);
        let node_ip = self.settings.ip;
        self.send_outer(ctx, packet, out, |cut| match encapsulation {
            Encapsulation::Vxlan { vni } => format!(
                "{name} encap vni={vni} {node_ip} -> {peer} udp {}->{} (inner {inner_key}){cut}",
                header.source_port,
                vxlan::UDP_PORT
            ),
            _ => format!("{name} encap ipip {node_ip} -> {peer} (inner {inner_key}){cut}"),
        });
    }

    /// vxlan_xmit_one lowers the inner route's path MTU to what the uplink leaves
    /// when an outer packet does not fit (skb_dst_update_pmtu /
    /// skb_tunnel_check_pmtu): that packet still goes, in fragments; later DF
    /// packets to `destination` are refused with fragmentation-needed by ip_forward.
    fn learn_path_mtu(
        &mut self,
        ctx: &Ctx,
        encapsulation: Encapsulation,
        destination: Ipv4Addr,
        outer: &Packet,
    ) {
        if !matches!(encapsulation, Encapsulation::Vxlan { .. })
            || outer.ip_len() <= usize::from(self.settings.uplink_mtu)
        {
            return;
        }
        let mtu = self.path_mtu_through(encapsulation);
        self.stack.learn_path_mtu(destination, mtu, ctx.now_ns);
    }

    /// Sends an outer packet out of eth0, each hop described by `describe` (given
    /// `, fragment i/n offset o` when cut). An outer packet over the uplink's MTU
    /// without DF (vxlan.calico, or tunl0 carrying a DF-clear packet: a pod MTU set
    /// above what the underlay leaves) is cut by ip_fragment on output, as any
    /// datagram the host sends; the peer reassembles it before decapsulating.
    fn send_outer(
        &self,
        ctx: &mut Ctx,
        outer: Packet,
        out: &mut Outputs,
        describe: impl Fn(&str) -> String,
    ) {
        let fragments =
            forwarding::fragment_for_mtu(ctx, outer, usize::from(self.settings.uplink_mtu));
        let count = fragments.len();
        for (index, fragment) in fragments.enumerate() {
            ctx.hop(
                self.settings.uplink_point,
                &fragment,
                HopAction::Encapsulate,
                || {
                    let cut = forwarding::fragment_suffix(index, count, &fragment);
                    describe(&cut)
                },
            );
            out.send(UPLINK_PORT, fragment);
        }
    }
}

impl LinuxHost for CalicoNode {
    fn stack(&self) -> &HostStack {
        &self.stack
    }

    fn stack_mut(&mut self) -> &mut HostStack {
        &mut self.stack
    }

    fn is_own_address(&self, address: Ipv4Addr) -> bool {
        self.settings
            .tunnel
            .as_ref()
            .is_some_and(|tunnel| tunnel.address == address)
    }

    fn interior(&self, interface: InteriorId, next_hop: Ipv4Addr) -> InteriorLink {
        if interface == TUNNEL {
            let tunnel = self.settings.tunnel.as_ref();
            return InteriorLink {
                mtu: self.settings.pod_mtu,
                address: tunnel.map_or(self.settings.ip, |t| t.address),
                source_mac: tunnel.map_or(Mac::default(), |t| t.mac),
                destination_mac: tunnel
                    .and_then(|t| t.vteps.get(&next_hop))
                    .map_or(Mac::default(), |&(_, mac)| mac),
                point: tunnel.map_or(self.settings.uplink_point, |t| t.point),
            };
        }
        let pod = &self.settings.pods[usize::from(interface - 1)];
        // A veth has no address: Linux sources what the node sends a pod from its
        // primary address, the node IP.
        InteriorLink {
            mtu: self.settings.pod_mtu,
            address: self.settings.ip,
            source_mac: VETH_MAC,
            destination_mac: pod.mac,
            point: pod.veth_point,
        }
    }

    fn interior_name(&self, interface: InteriorId) -> &str {
        if interface == TUNNEL {
            return self.settings.tunnel.as_ref().map_or("tunl0", |t| t.name());
        }
        self.settings
            .veth_names
            .get(usize::from(interface - 1))
            .map_or("cali", String::as_str)
    }

    /// Felix's filter FORWARD chains (reference §f; Calico enforces Kubernetes
    /// NetworkPolicy in iptables): `cali-fw-<veth>` for what a local pod sends
    /// (its egress policy), `cali-tw-<veth>` for what is routed to one (its ingress
    /// policy), both after `--ctstate RELATED,ESTABLISHED -j ACCEPT`.
    fn filter_forward(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        ingress: HostIngress,
        egress: HostEgress,
        connection: Option<(crate::engine::conntrack::EntryId, Direction)>,
        packet: &Packet,
    ) -> bool {
        let state = match (self.policy.state(ctx, packet), connection) {
            (PolicyState::New, None | Some((_, Direction::Original))) => PolicyState::New,
            _ => return true,
        };
        let is_pod = |interface: InteriorId| {
            interface != TUNNEL && usize::from(interface) <= self.settings.pods.len()
        };
        let from_pod = matches!(ingress, HostIngress::Interior(id) if is_pod(id));
        let to_pod = matches!(egress, HostEgress::Interior { interface, .. } if is_pod(interface));
        for (applies, direction, chain) in [
            (from_pod, PolicyDirection::Egress, "cali-fw"),
            (to_pod, PolicyDirection::Ingress, "cali-tw"),
        ] {
            if !applies {
                continue;
            }
            if let Err(denial) = self
                .policy
                .check(ctx, &self.settings.name, direction, packet)
            {
                let what = denial.describe();
                ctx.describe(slot, HopAction::Drop, || format!("felix {chain}: {what}"));
                ctx.drop_packet(&self.settings.name, packet, denial.reason(), || what);
                return false;
            }
        }
        if state == PolicyState::New && (from_pod || to_pod) {
            self.policy.commit(ctx, packet);
        }
        true
    }

    fn send_interior(
        &mut self,
        ctx: &mut Ctx,
        interface: InteriorId,
        next_hop: Ipv4Addr,
        packet: Packet,
        out: &mut Outputs,
        forwarded: bool,
    ) {
        if interface == TUNNEL {
            if forwarded {
                let name = self.interior_name(TUNNEL);
                let point = self
                    .settings
                    .tunnel
                    .as_ref()
                    .map_or(self.settings.uplink_point, |t| t.point);
                ctx.hop(point, &packet, HopAction::Transmit, || {
                    format!("output to {name}, via {next_hop}")
                });
            }
            self.tunnel_output(ctx, next_hop, packet, out);
            return;
        }
        let pod = usize::from(interface - 1);
        let local = &self.settings.pods[pod];
        if forwarded {
            ctx.hop(local.veth_point, &packet, HopAction::Transmit, || {
                format!("output to pod {}", local.name)
            });
        }
        out.send(interface, packet);
    }
}

/// Felix's `cali-nat-outgoing` (reference §f): `-m set --match-set
/// cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst -j
/// MASQUERADE --random-fully` — whatever interface the packet leaves by.
fn append_nat_outgoing(chain: &mut Layer<NatAction>, settings: &CalicoNodeSettings) {
    if !settings.nat_outgoing {
        return;
    }
    let pools = AddressSet::new(settings.pools.iter().copied());
    chain.push(Rule::new(
        "cali-nat-outgoing",
        vec![
            Predicate::SourceIn(pools.clone()),
            Predicate::DestinationIn(pools).not(),
        ],
        // Felix adds `--random-fully` to its MASQUERADE when iptables supports it
        // (every current node image does; reference §f).
        NatAction::Masquerade { random_fully: true },
    ));
}
