//! The Linux host network stack of a Kubernetes node, whatever its CNI: fragment
//! reassembly in front of conntrack (nf_defrag_ipv4), PREROUTING (un-NAT, RELATED
//! ICMP), the kernel routing table (an [`LpmTable`] of [`HostRoute`]s), the checks of
//! `ip_forward` (TTL, MTU, neighbour; `datapath::forwarding`), POSTROUTING (SNAT /
//! MASQUERADE committed in the node's one conntrack), fragmentation on output, and the
//! answers and ICMP errors the node sends itself (`datapath::local`, `datapath::icmp`).
//!
//! A CNI plugs in through [`LinuxHost`]: what its interior interfaces are (Antrea's
//! antrea-gw0 into OVS; Calico's pod veths and tunl0 / vxlan.calico), which of its
//! addresses are the node's own, and its masquerade rule. The stack owns the
//! mechanism; the CNI says where a routed packet goes next.

use super::forwarding::{self, Refusal};
use super::icmp::{self, ErrorHeader, ErrorMessage};
use super::local::{self, AnswerLink, Settle};
use super::path_log::{IdentificationCounter, Table};
use super::services::{Affinity, ServiceTable};
use super::{Ctx, DropReason, HopAction, Neighbors, Outputs, PointId, PortId};
use crate::engine::conntrack::{Conntrack, Direction, EntryId};
use crate::engine::lpm::LpmTable;
use crate::engine::nat::NatAction;
use crate::engine::reassembly::{self, Reassembly};
use crate::engine::rules::{InterfaceId, Layer, Metadata, Predicate, Rule};
use crate::packet::{FlowKey, IcmpKind, Packet};
use crate::wire::Mac;
use std::net::Ipv4Addr;

/// An interface inside the node (not eth0), numbered by the CNI.
pub type InteriorId = u16;

/// eth0 in the rule tables' interface numbering; an interior interface is its
/// [`InteriorId`].
pub const UPLINK_INTERFACE: InterfaceId = 0x1_0000;

/// KUBE-MARK-MASQ's mark (kube-proxy `--iptables-masquerade-bit` 14; reference §c).
pub const KUBE_MARK_MASQ: u32 = 0x4000;

impl HostIngress {
    /// The interface in the rule tables' numbering (`-i`).
    pub fn interface(self) -> InterfaceId {
        match self {
            HostIngress::Uplink => UPLINK_INTERFACE,
            HostIngress::Interior(interface) => InterfaceId::from(interface),
        }
    }
}

impl HostEgress {
    /// The interface in the rule tables' numbering (`-o`).
    pub fn interface(self) -> InterfaceId {
        match self {
            HostEgress::Uplink { .. } => UPLINK_INTERFACE,
            HostEgress::Interior { interface, .. } => InterfaceId::from(interface),
        }
    }
}

/// The nat table's POSTROUTING chain as every node starts it: kube-proxy's
/// KUBE-POSTROUTING (`-m mark --mark 0x4000/0x4000 -j MASQUERADE`) first; the CNI
/// appends its own rules after it.
pub fn postrouting_chain() -> Layer<NatAction> {
    let mut chain = Layer::new("nat/POSTROUTING", NatAction::Keep);
    chain.push(Rule::new(
        "KUBE-POSTROUTING",
        vec![Predicate::Mark {
            value: KUBE_MARK_MASQ,
            mask: KUBE_MARK_MASQ,
        }],
        NatAction::Masquerade {
            random_fully: false,
        },
    ));
    chain
}

/// Which end of a packet a NAT rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Where the host stack received a packet from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostIngress {
    Uplink,
    Interior(InteriorId),
}

/// Where the host stack routes a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEgress {
    Uplink {
        next_hop: Ipv4Addr,
    },
    Interior {
        interface: InteriorId,
        next_hop: Ipv4Addr,
    },
}

/// A route in the node's kernel routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRoute {
    /// `dev eth0`, to the destination itself (connected) or via a gateway.
    Uplink { via: Option<Ipv4Addr> },
    /// `dev <interior>`, optionally `via` a gateway reached through it (`onlink`: a
    /// tunnel's peer).
    Interior {
        interface: InteriorId,
        via: Option<Ipv4Addr>,
    },
    /// `blackhole`: discarded without an answer (Calico's route for its own blocks).
    Blackhole,
}

/// A new connection kube-proxy DNATed in PREROUTING, to be committed in
/// POSTROUTING with its original tuple (and SNAT when the packet carries
/// KUBE-MARK-MASQ).
#[derive(Debug, Clone)]
pub struct ServiceNat {
    pub original: FlowKey,
    /// `NS/NAME` of the Service.
    pub service: String,
    /// Who translated (`kube-proxy`, `NodePortLocal`, `antrea-agent`).
    pub component: &'static str,
}

/// What kube-proxy's rules did with a packet.
#[derive(Debug)]
pub enum Proxied {
    /// Not addressed to a Service.
    Untouched,
    Translated(ServiceNat),
    /// No endpoint: rejected or dropped (already accounted for).
    Refused,
}

/// A pod attached to a node (Antrea: a port of br-int; Calico: a routed veth).
#[derive(Debug, Clone)]
pub struct LocalPod {
    /// `NS/NAME`.
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// Capture point of the node side of the veth (`NODE:veth-NS-POD`, Calico
    /// `NODE:caliXXXXXXXXXXX`).
    pub veth_point: PointId,
}

/// The node's own processes that listen (kube-proxy's health-check servers): an
/// endpoint behind an interior interface, reached for the node's own address.
#[derive(Debug, Clone)]
pub struct HostProcess {
    /// The node port its link is on.
    pub port: PortId,
    /// The interior interface the host stack reaches it by.
    pub interface: InteriorId,
    pub mac: Mac,
    pub point: PointId,
    /// TCP ports it listens on.
    pub listens: Vec<u16>,
}

impl HostProcess {
    /// True when `key` is TCP to `node_ip` on one of its ports.
    pub fn listens_for(&self, key: &FlowKey, node_ip: Ipv4Addr) -> bool {
        key.protocol == crate::wire::PROTOCOL_TCP
            && key.destination == node_ip
            && self.listens.contains(&key.destination_port)
    }

    /// Hands `packet` to the process over its link.
    pub fn deliver(&self, ctx: &mut Ctx, packet: Packet, out: &mut Outputs) {
        ctx.hop(self.point, &packet, HopAction::Transmit, || {
            "to the node's listening process".into()
        });
        out.send(self.port, packet);
    }
}

/// How the node reaches its own process: the node's address, its uplink MTU.
pub fn process_link(
    process: &HostProcess,
    node_ip: Ipv4Addr,
    node_mac: Mac,
    mtu: u16,
) -> InteriorLink {
    InteriorLink {
        mtu,
        address: node_ip,
        source_mac: node_mac,
        destination_mac: process.mac,
        point: process.point,
    }
}

/// How a packet leaves through an interior interface.
#[derive(Debug, Clone, Copy)]
pub struct InteriorLink {
    pub mtu: u16,
    /// The interface's address (or the one Linux picks for it): the source of what
    /// the node itself sends through it.
    pub address: Ipv4Addr,
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub point: PointId,
}

/// The state of one node's host stack.
#[derive(Debug, Clone)]
pub struct HostStack {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub uplink_mtu: u16,
    pub neighbors: Neighbors,
    pub uplink_point: PointId,
    pub uplink_port: PortId,
    /// The kernel routing table (`ip route`).
    pub routes: LpmTable<HostRoute>,
    pub conntrack: Conntrack,
    /// The nat table's POSTROUTING chain: every SNAT / MASQUERADE rule of the node,
    /// kube-proxy's and the CNI's, in iptables order.
    pub postrouting: Layer<NatAction>,
    /// The node's own listening processes (kube-proxy's health-check servers).
    pub host_process: Option<HostProcess>,
    /// The cluster's Services, translated by kube-proxy in PREROUTING.
    pub services: Option<std::sync::Arc<ServiceTable>>,
    /// This node's index in its cluster (for traffic policies `Local`).
    pub node_index: usize,
    /// kube-proxy's ClientIP affinity memory on this node.
    pub affinity: Affinity,
    reassembler: reassembly::Reassembler,
    /// The IPv4 identification of packets it originates or encapsulates.
    pub identification: IdentificationCounter,
    /// Path MTUs learned per destination (the kernel's next-hop exceptions): the
    /// MTU and when it expires.
    path_mtus: rustc_hash::FxHashMap<Ipv4Addr, (u16, u64)>,
}

/// How long a learned path MTU holds (`net.ipv4.route.mtu_expires`: 600 s).
pub const PATH_MTU_EXPIRES_NS: u64 = 600_000_000_000;

impl HostStack {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        ip: Ipv4Addr,
        mac: Mac,
        uplink_mtu: u16,
        neighbors: Neighbors,
        uplink_point: PointId,
        uplink_port: PortId,
        conntrack: Conntrack,
    ) -> Self {
        HostStack {
            name,
            ip,
            mac,
            uplink_mtu,
            neighbors,
            uplink_point,
            uplink_port,
            routes: LpmTable::new(),
            conntrack,
            postrouting: postrouting_chain(),
            host_process: None,
            services: None,
            node_index: 0,
            affinity: Affinity::default(),
            reassembler: Default::default(),
            identification: IdentificationCounter::default(),
            path_mtus: rustc_hash::FxHashMap::default(),
        }
    }

    /// Records a smaller MTU toward `destination` (`__ip_rt_update_pmtu`: a
    /// next-hop exception that expires after [`PATH_MTU_EXPIRES_NS`]).
    pub fn learn_path_mtu(&mut self, destination: Ipv4Addr, mtu: u16, now_ns: u64) {
        self.path_mtus
            .insert(destination, (mtu, now_ns + PATH_MTU_EXPIRES_NS));
    }

    /// The MTU toward `destination` through a link of `link_mtu`: the link's, or a
    /// smaller path MTU learned and not expired (`dst_mtu`).
    pub fn path_mtu(&self, destination: Ipv4Addr, link_mtu: u16, now_ns: u64) -> u16 {
        match self.path_mtus.get(&destination) {
            Some(&(learned, expires_ns)) if now_ns < expires_ns => learned.min(link_mtu),
            _ => link_mtu,
        }
    }

    /// One lookup in the routing table; None for no route or a blackhole.
    pub fn route(&self, destination: Ipv4Addr) -> Option<HostEgress> {
        self.routes
            .lookup(destination)
            .and_then(|(_, route)| match *route {
                HostRoute::Interior { interface, via } => Some(HostEgress::Interior {
                    interface,
                    next_hop: via.unwrap_or(destination),
                }),
                HostRoute::Uplink { via } => Some(HostEgress::Uplink {
                    next_hop: via.unwrap_or(destination),
                }),
                HostRoute::Blackhole => None,
            })
    }

    /// Whether eth0 takes a frame: IPv4 to the node's MAC (or broadcast). Anything
    /// else is dropped here, named.
    pub fn accepts_frame(&self, ctx: &mut Ctx, slot: Option<usize>, packet: &Packet) -> bool {
        let meta = &packet.meta;
        if meta.ethertype == crate::wire::ETHERTYPE_IPV4
            && (meta.destination_mac == self.mac || meta.destination_mac == Mac::BROADCAST)
        {
            return true;
        }
        ctx.describe(slot, HopAction::Drop, || {
            "not an IPv4 frame for this node".into()
        });
        ctx.drop_packet(&self.name, packet, DropReason::Malformed, || {
            "not an IPv4 frame for this node".into()
        });
        false
    }

    /// Whether the route to `destination` is a blackhole.
    pub fn blackholed(&self, destination: Ipv4Addr) -> bool {
        matches!(
            self.routes.lookup(destination),
            Some((_, HostRoute::Blackhole))
        )
    }
}

/// A node's host stack with its CNI's interior interfaces. The provided methods are
/// the stack; the required ones are what the CNI decides.
pub trait LinuxHost {
    fn stack(&self) -> &HostStack;
    fn stack_mut(&mut self) -> &mut HostStack;
    /// One of the node's own addresses other than its node IP (antrea-gw0's,
    /// tunl0's).
    fn is_own_address(&self, address: Ipv4Addr) -> bool;
    /// How a packet to `next_hop` leaves through `interface`.
    fn interior(&self, interface: InteriorId, next_hop: Ipv4Addr) -> InteriorLink;
    /// The interface's name (`antrea-gw0`, `cali…`, `tunl0`).
    fn interior_name(&self, interface: InteriorId) -> &str;
    /// The interior interface of the node's own process listening for `key` (TCP to
    /// one of its ports), if one does.
    fn local_listener(&self, key: &FlowKey) -> Option<InteriorId> {
        let stack = self.stack();
        let process = stack.host_process.as_ref()?;
        process
            .listens_for(key, stack.ip)
            .then_some(process.interface)
    }
    /// The interior interface of the node's own processes, if it has any.
    fn host_process_interface(&self) -> Option<InteriorId> {
        self.stack().host_process.as_ref().map(|p| p.interface)
    }

    /// How a packet leaves through `interface`: the node's own processes, or the
    /// CNI's interface.
    fn link(&self, interface: InteriorId, next_hop: Ipv4Addr) -> InteriorLink {
        let stack = self.stack();
        match stack.host_process.as_ref() {
            Some(process) if process.interface == interface => {
                process_link(process, stack.ip, stack.mac, stack.uplink_mtu)
            }
            _ => self.interior(interface, next_hop),
        }
    }

    /// Hands `packet` to `interface`: to the node's own processes, or to the CNI.
    fn deliver_interior(
        &mut self,
        ctx: &mut Ctx,
        interface: InteriorId,
        next_hop: Ipv4Addr,
        packet: Packet,
        out: &mut Outputs,
        forwarded: bool,
    ) {
        match self.stack().host_process.as_ref() {
            Some(process) if process.interface == interface => process.deliver(ctx, packet, out),
            _ => self.send_interior(ctx, interface, next_hop, packet, out, forwarded),
        }
    }
    /// Where node-port traffic is redirected instead of kube-proxy translating it
    /// (Antrea's proxyAll: its virtual NodePort DNAT address, into OVS).
    fn node_port_redirect(&self) -> Option<Ipv4Addr> {
        None
    }
    /// The filter FORWARD chain for a routed packet (after PREROUTING's NAT, before
    /// POSTROUTING): false when the CNI's policy dropped it (and recorded so).
    fn filter_forward(
        &mut self,
        _ctx: &mut Ctx,
        _slot: Option<usize>,
        _ingress: HostIngress,
        _egress: HostEgress,
        _connection: Option<(EntryId, Direction)>,
        _packet: &Packet,
    ) -> bool {
        true
    }

    /// Hands a packet to an interior interface; `forwarded` is false for what the
    /// node itself sends (its hop is recorded already).
    fn send_interior(
        &mut self,
        ctx: &mut Ctx,
        interface: InteriorId,
        next_hop: Ipv4Addr,
        packet: Packet,
        out: &mut Outputs,
        forwarded: bool,
    );

    /// A packet enters the host stack from `ingress`.
    fn host_input(
        &mut self,
        ctx: &mut Ctx,
        ingress: HostIngress,
        slot: Option<usize>,
        packet: Packet,
        out: &mut Outputs,
    ) {
        let Some((packet, fragment_size)) = self.defragment(ctx, slot, packet) else {
            return;
        };
        self.forward(ctx, ingress, slot, packet, fragment_size, out);
    }

    /// nf_defrag_ipv4: conntrack sees whole datagrams, so fragments are held until
    /// the datagram is complete; the datagram goes on as its first fragment (so that
    /// packet's path continues), with the largest fragment size seen, which
    /// `ip_fragment` cuts to again on output (`frag_max_size`).
    fn defragment(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        packet: Packet,
    ) -> Option<(Packet, Option<usize>)> {
        if !reassembly::is_fragment(packet.frame()) {
            return Some((packet, None));
        }
        let stack = self.stack_mut();
        match stack
            .reassembler
            .add_tagged(packet.frame(), ctx.now_ns, packet.meta.packet_id)
        {
            Reassembly::Invalid => {
                ctx.describe(slot, HopAction::Drop, || "malformed fragment".into());
                ctx.drop_packet(&stack.name, &packet, DropReason::Malformed, || {
                    "a fragment whose lengths do not add up".into()
                });
                None
            }
            Reassembly::Held => {
                ctx.describe(slot, HopAction::Receive, || {
                    "fragment held for reassembly (nf_defrag_ipv4, before conntrack)".into()
                });
                ctx.merged(&packet);
                None
            }
            Reassembly::Complete {
                frame,
                largest_fragment,
                first_tag,
            } => {
                let mut whole = Packet::from_frame(&frame, packet.meta.flow).ok()?;
                whole.meta.packet_id = first_tag;
                whole.meta.reply = packet.meta.reply;
                whole.meta.origin_port = packet.meta.origin_port;
                Some((whole, Some(largest_fragment)))
            }
        }
    }

    /// PREROUTING, local delivery or `ip_forward`, POSTROUTING, output.
    fn forward(
        &mut self,
        ctx: &mut Ctx,
        ingress: HostIngress,
        slot: Option<usize>,
        mut packet: Packet,
        fragment_size: Option<usize>,
        out: &mut Outputs,
    ) {
        let arrived = packet.meta.key;
        let connection = self.prerouting(ctx, &mut packet);
        let mut service = None;
        if connection.is_none() && !matches!(packet.meta.icmp, IcmpKind::Error { .. }) {
            match self.kube_proxy(ctx, slot, &mut packet, out) {
                Proxied::Untouched => service = self.node_port_local(ctx, &mut packet),
                Proxied::Translated(nat) => service = Some(nat),
                Proxied::Refused => return,
            }
        }
        let destination = packet.meta.key.destination;
        if destination == self.stack().ip || self.is_own_address(destination) {
            self.local_delivery(ctx, slot, packet, out);
            return;
        }
        let Some(egress) = self.stack().route(destination) else {
            let refusal = if self.stack().blackholed(destination) {
                Refusal {
                    reason: DropReason::NoRoute,
                    detail: format!("blackhole route for {destination}"),
                    icmp: None,
                }
            } else {
                forwarding::no_route(destination)
            };
            self.refuse(ctx, slot, &packet, refusal, out);
            return;
        };
        let (mtu, next_mac) = match egress {
            HostEgress::Uplink { next_hop } => (
                self.stack().uplink_mtu,
                self.stack().neighbors.get(&next_hop).copied(),
            ),
            HostEgress::Interior {
                interface,
                next_hop,
            } => {
                let link = self.link(interface, next_hop);
                (link.mtu, Some(link.destination_mac))
            }
        };
        // A learned path MTU only ever lies at or above what a steady path (one that
        // fits its tunnel without fragments) carries, so it needs no path-cache
        // touch: it refuses only packets no compiled path admits.
        let mtu = self.stack().path_mtu(destination, mtu, ctx.now_ns);
        let checks = forwarding::check_ttl(&packet)
            .and_then(|()| forwarding::check_mtu(&packet, mtu, self.egress_name(egress)));
        if let Err(refusal) = checks {
            self.refuse(ctx, slot, &packet, refusal, out);
            return;
        }
        // What the node's own processes send is not forwarded (OUTPUT, no TTL change).
        if !matches!(ingress, HostIngress::Interior(id) if Some(id) == self.host_process_interface())
        {
            packet.decrement_ttl();
        }
        // The filter table's FORWARD chain: the CNI's policy (Felix's cali-fw / cali-tw).
        if !self.filter_forward(ctx, slot, ingress, egress, connection, &packet) {
            return;
        }
        // Neighbour resolution. Linux resolves after POSTROUTING and sends the
        // host-unreachable to the translated source, which the RELATED conntrack
        // entry then un-NATs back to the pod (nf_nat_icmp_reply_translation); checking
        // before POSTROUTING sends the pod the same error.
        let Some(next_mac) = next_mac else {
            let HostEgress::Uplink { next_hop } = egress else {
                return;
            };
            self.refuse(
                ctx,
                slot,
                &packet,
                forwarding::no_neighbor(next_hop, "eth0"),
                out,
            );
            return;
        };
        let before = packet.meta.key;
        if let Err(reason) = self.postrouting(
            ctx,
            ingress,
            egress,
            connection,
            service.as_ref(),
            &mut packet,
        ) {
            let name = &self.stack().name;
            ctx.describe(slot, HopAction::Drop, || format!("postrouting: {reason}"));
            ctx.drop_packet(name, &packet, reason, || {
                "POSTROUTING could not commit the connection".into()
            });
            return;
        }
        let size_limit = usize::from(mtu).min(fragment_size.unwrap_or(usize::MAX));
        ctx.describe(slot, HopAction::Receive, || {
            let route = self.describe_route(egress, destination);
            let reassembled = if fragment_size.is_some() {
                "reassembled; "
            } else {
                ""
            };
            let unsnat = if let Some(nat) = &service {
                let by = match nat.component {
                    "NodePortLocal" => "antrea-agent NodePortLocal:".to_string(),
                    "antrea-agent" => {
                        format!("antrea-agent proxyAll: svc {} to OVS", nat.service)
                    }
                    _ => format!("kube-proxy: svc {}", nat.service),
                };
                format!(
                    "{by} {}:{} -> endpoint {destination}:{}{}; ",
                    arrived.destination,
                    arrived.destination_port,
                    packet.meta.key.destination_port,
                    if packet.meta.mark & KUBE_MARK_MASQ != 0 {
                        " (KUBE-MARK-MASQ)"
                    } else {
                        ""
                    }
                )
            } else if arrived.destination == destination {
                String::new()
            } else {
                let kind = match connection {
                    Some((_, Direction::Original)) => "dnat",
                    _ => "unsnat",
                };
                format!(
                    "{kind} {}:{} -> {destination}:{}; ",
                    arrived.destination, arrived.destination_port, packet.meta.key.destination_port
                )
            };
            format!("{reassembled}{unsnat}{route}")
        });
        match egress {
            HostEgress::Uplink { .. } => {
                let stack = self.stack();
                packet.set_macs(stack.mac, next_mac);
                let after = packet.meta.key;
                let (uplink_point, uplink_port) = (stack.uplink_point, stack.uplink_port);
                let fragments = forwarding::fragment_for_mtu(ctx, packet, size_limit);
                let count = fragments.len();
                for (index, fragment) in fragments.enumerate() {
                    ctx.hop(uplink_point, &fragment, HopAction::Transmit, || {
                        let cut = forwarding::fragment_suffix(index, count, &fragment);
                        let route = self.describe_route(egress, destination);
                        describe_source_rewrite(&before, &after)
                            + &format!("{route} ({next_mac}){cut}")
                    });
                    out.send(uplink_port, fragment);
                }
            }
            HostEgress::Interior {
                interface,
                next_hop,
            } => {
                let link = self.link(interface, next_hop);
                packet.set_macs(link.source_mac, next_mac);
                for fragment in forwarding::fragment_for_mtu(ctx, packet, size_limit) {
                    self.deliver_interior(ctx, interface, next_hop, fragment, out, true);
                }
            }
        }
    }

    /// kube-proxy's nat-table rules for a packet no connection knows (reference §c):
    /// KUBE-SERVICES matches a ClusterIP:port, or (`--dst-type LOCAL`) a node port on
    /// any of the node's addresses; KUBE-SVC picks an endpoint (only the node's own
    /// under a `Local` policy: internalTrafficPolicy for ClusterIP,
    /// externalTrafficPolicy for node ports from outside the pod network); KUBE-SEP
    /// DNATs to it. KUBE-MARK-MASQ for a ClusterIP reached from outside the cluster
    /// CIDR, for node ports under `Cluster`, and for a hairpin (an endpoint reaching
    /// itself). No endpoint: REJECT (ICMP port unreachable), or for a node port
    /// under `Local` on a node without one, DROP.
    fn kube_proxy(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        packet: &mut Packet,
        out: &mut Outputs,
    ) -> Proxied {
        let Some(table) = self.stack().services.clone() else {
            return Proxied::Untouched;
        };
        let key = packet.meta.key;
        let to_node = key.destination == self.stack().ip || self.is_own_address(key.destination);
        let (frontend, external) = match table.cluster_ip(&key) {
            Some(frontend) => (frontend, false),
            None => match table.node_port(&key) {
                Some(frontend) if to_node => (frontend, true),
                _ => return Proxied::Untouched,
            },
        };
        if let (true, Some(redirect)) = (external, self.node_port_redirect()) {
            // ANTREA-NODEPORT: to the virtual address, port kept; AntreaProxy in OVS
            // picks the endpoint.
            self.translate(
                ctx,
                packet,
                Side::Destination,
                (redirect, key.destination_port),
                ("dnat", "antrea-agent"),
            );
            return Proxied::Translated(ServiceNat {
                original: key,
                service: frontend.service.clone(),
                component: "antrea-agent",
            });
        }
        let from_pods = table.cluster_cidr.contains(&key.source);
        let local_only = if external {
            frontend.external_local && !from_pods
        } else {
            frontend.internal_local
        };
        let stack = self.stack_mut();
        let only_node = local_only.then_some(stack.node_index);
        let chosen =
            table.choose_sticky(frontend, &key, only_node, &mut stack.affinity, ctx.now_ns);
        let Some(backend) = chosen else {
            let what = if local_only {
                "no local endpoints"
            } else {
                "no endpoints"
            };
            let refusal = Refusal {
                reason: DropReason::NoEndpoints,
                detail: format!(
                    "kube-proxy: svc {} {}:{} has {what}",
                    frontend.service, key.destination, key.destination_port
                ),
                // KUBE-MARK-DROP for node ports under Local; REJECT otherwise.
                icmp: (!(external && local_only)).then_some(local::PORT_UNREACHABLE),
            };
            self.refuse(ctx, slot, packet, refusal, out);
            return Proxied::Refused;
        };
        let masquerade = if external {
            !frontend.external_local
        } else {
            !from_pods
        } || backend.ip == key.source;
        if masquerade {
            packet.meta.mark |= KUBE_MARK_MASQ;
        }
        self.translate(
            ctx,
            packet,
            Side::Destination,
            (backend.ip, backend.port),
            ("dnat", "kube-proxy"),
        );
        Proxied::Translated(ServiceNat {
            original: key,
            service: frontend.service.clone(),
            component: "kube-proxy",
        })
    }

    /// Antrea's NodePortLocal rules (`ANTREA-NODE-PORT-LOCAL` in PREROUTING, for
    /// the node's own addresses): DNAT straight to the pod, no SNAT.
    fn node_port_local(&mut self, ctx: &mut Ctx, packet: &mut Packet) -> Option<ServiceNat> {
        let stack = self.stack();
        let table = stack.services.clone()?;
        let key = packet.meta.key;
        if key.destination != stack.ip {
            return None;
        }
        let backend = table.node_port_local(stack.node_index, &key)?;
        self.translate(
            ctx,
            packet,
            Side::Destination,
            (backend.ip, backend.port),
            ("dnat", "NodePortLocal"),
        );
        Some(ServiceNat {
            original: key,
            service: format!("{}:{}", backend.ip, backend.port),
            component: "NodePortLocal",
        })
    }

    /// The egress interface's name.
    fn egress_name(&self, egress: HostEgress) -> &str {
        match egress {
            HostEgress::Uplink { .. } => "eth0",
            HostEgress::Interior { interface, .. }
                if Some(interface) == self.host_process_interface() =>
            {
                "kube-proxy"
            }
            HostEgress::Interior { interface, .. } => self.interior_name(interface),
        }
    }

    /// `host stack: route D via H dev IF`.
    fn describe_route(&self, egress: HostEgress, destination: Ipv4Addr) -> String {
        let name = self.egress_name(egress);
        match egress {
            HostEgress::Uplink { next_hop } | HostEgress::Interior { next_hop, .. }
                if next_hop != destination =>
            {
                format!("host stack: route {destination} via {next_hop} dev {name}")
            }
            _ => format!("host stack: route {destination} dev {name}"),
        }
    }

    /// PREROUTING: find the connection; replies are un-SNATed (and DNAT would be
    /// applied) here, before routing (reference §g).
    fn prerouting(&mut self, ctx: &mut Ctx, packet: &mut Packet) -> Option<(EntryId, Direction)> {
        if matches!(packet.meta.icmp, IcmpKind::Error { .. }) {
            self.related_icmp(ctx, packet);
            return None;
        }
        let stack = self.stack_mut();
        let (id, direction) = ctx.track(
            Table::HostStack,
            &mut stack.conntrack,
            &packet.meta.key,
            packet.meta.tcp_flags,
        )?;
        let entry = *stack.conntrack.entry(id)?;
        let kind = if direction == Direction::Reply {
            ("unsnat", "netfilter")
        } else {
            ("dnat", entry.dnat_by)
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
    fn related_icmp(&mut self, ctx: &mut Ctx, packet: &mut Packet) {
        let Some(quoted) = crate::packet::quoted_flow_key(packet) else {
            return;
        };
        let stack = self.stack_mut();
        let Some((id, Direction::Reply)) = stack.conntrack.lookup(&quoted.reversed(), ctx.now_ns)
        else {
            return;
        };
        let Some(entry) = stack.conntrack.entry(id).copied() else {
            return;
        };
        let name = stack.name.clone();
        super::nat::translate_related_icmp(ctx, &name, "netfilter", &entry, packet);
    }

    /// POSTROUTING: apply the connection's SNAT (or un-DNAT), or commit a new
    /// connection under the CNI's masquerade rule.
    fn postrouting(
        &mut self,
        ctx: &mut Ctx,
        ingress: HostIngress,
        egress: HostEgress,
        connection: Option<(EntryId, Direction)>,
        service: Option<&ServiceNat>,
        packet: &mut Packet,
    ) -> Result<(), DropReason> {
        let (id, direction) = match connection {
            Some(connection) => connection,
            None => (
                self.commit(ctx, ingress, egress, packet, service)?,
                Direction::Original,
            ),
        };
        let entry = *self
            .stack()
            .conntrack
            .entry(id)
            .ok_or(DropReason::ConntrackFull)?;
        let (kind, component) = if direction == Direction::Original {
            ("snat", "netfilter")
        } else {
            ("undnat", entry.dnat_by)
        };
        self.translate(
            ctx,
            packet,
            Side::Source,
            entry.translated_source(direction),
            (kind, component),
        );
        Ok(())
    }

    /// Rewrites one side of `packet` to `target` when it differs, and records the NAT.
    fn translate(
        &self,
        ctx: &mut Ctx,
        packet: &mut Packet,
        side: Side,
        target: (Ipv4Addr, u16),
        (kind, component): (&'static str, &'static str),
    ) {
        let device = self.stack().name.as_str();
        super::nat::rewrite(ctx, (device, component), packet, side, target, kind);
    }

    /// Commits a new connection as the POSTROUTING chain decides: the first rule that
    /// matches SNATs into its pool, or MASQUERADEs to the address of the interface
    /// the packet leaves by (the node IP on eth0); no match leaves it untranslated.
    /// A Service's DNAT is committed in the same entry.
    fn commit(
        &mut self,
        ctx: &Ctx,
        ingress: HostIngress,
        egress: HostEgress,
        packet: &Packet,
        service: Option<&ServiceNat>,
    ) -> Result<EntryId, DropReason> {
        let key = packet.meta.key;
        let address = match egress {
            HostEgress::Uplink { .. } => self.stack().ip,
            HostEgress::Interior {
                interface,
                next_hop,
            } => self.link(interface, next_hop).address,
        };
        let metadata = Metadata {
            key,
            in_interface: Some(ingress.interface()),
            out_interface: Some(egress.interface()),
            mark: packet.meta.mark,
        };
        let stack = self.stack_mut();
        let pool = stack.postrouting.classify(&metadata).action.pool(address);
        let committed = match (service, pool) {
            (Some(nat), pool) => stack.conntrack.insert_nat(
                nat.original,
                (key.destination, key.destination_port),
                pool.as_ref(),
                ctx.now_ns,
            ),
            (None, Some(pool)) => stack.conntrack.insert_snat_pool(key, &pool, ctx.now_ns),
            (None, None) => stack.conntrack.insert_untranslated(key, ctx.now_ns),
        };
        let id = committed.map_err(DropReason::from)?;
        if let Some(nat) = service {
            self.stack_mut().conntrack.set_dnat_by(id, nat.component);
        }
        Ok(id)
    }

    /// Traffic for the node itself: a ping is answered, TCP is reset and UDP refused
    /// with port unreachable, as the node's kernel does when nothing listens
    /// (datapath::local). Answers leave the way routing sends them.
    fn local_delivery(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        packet: Packet,
        out: &mut Outputs,
    ) {
        let destination = packet.meta.key.destination;
        if let Some(interface) = self.local_listener(&packet.meta.key) {
            ctx.describe(slot, HopAction::Receive, || {
                format!(
                    "local delivery: tcp/{} to the node's listening process",
                    packet.meta.key.destination_port
                )
            });
            let link = self.link(interface, destination);
            let mut packet = packet;
            packet.set_macs(link.source_mac, link.destination_mac);
            self.deliver_interior(ctx, interface, destination, packet, out, true);
            return;
        }
        let Some(route) = self.local_route(packet.meta.key.source) else {
            let name = &self.stack().name;
            ctx.describe(slot, HopAction::Drop, || {
                format!("{destination} is the node; no route back to the sender")
            });
            ctx.drop_packet(name, &packet, DropReason::NoRoute, || {
                format!("no route back to {}", packet.meta.key.source)
            });
            return;
        };
        let link = AnswerLink {
            source_mac: route.source_mac,
            destination_mac: route.destination_mac,
            identification: self.stack_mut().identification.next(ctx),
        };
        let stack = self.stack();
        let what = format!("node {}", stack.name);
        let at = Settle {
            device: &stack.name,
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
    fn local_route(&self, destination: Ipv4Addr) -> Option<LocalRoute> {
        let stack = self.stack();
        match stack.route(destination)? {
            egress @ HostEgress::Uplink { next_hop } => Some(LocalRoute {
                egress,
                source: stack.ip,
                source_mac: stack.mac,
                destination_mac: *stack.neighbors.get(&next_hop)?,
                point: stack.uplink_point,
            }),
            egress @ HostEgress::Interior {
                interface,
                next_hop,
            } => {
                let link = self.link(interface, next_hop);
                Some(LocalRoute {
                    egress,
                    source: link.address,
                    source_mac: link.source_mac,
                    destination_mac: link.destination_mac,
                    point: link.point,
                })
            }
        }
    }

    /// Sends a packet the node originated out of `egress`.
    fn send_local(&mut self, ctx: &mut Ctx, egress: HostEgress, packet: Packet, out: &mut Outputs) {
        match egress {
            HostEgress::Uplink { .. } => out.send(self.stack().uplink_port, packet),
            HostEgress::Interior {
                interface,
                next_hop,
            } => self.deliver_interior(ctx, interface, next_hop, packet, out, false),
        }
    }

    /// Drops `packet` for `refusal`, answering the sender with the ICMP error it owes.
    fn refuse(
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
        ctx.drop_packet(&self.stack().name, packet, refusal.reason, || {
            refusal.detail
        });
    }

    /// An ICMP error from the host stack to the packet's source, routed like any
    /// packet the node sends, from the address of the interface it leaves by (Linux
    /// `__icmp_send`, `icmp_errors_use_inbound_ifaddr = 0`).
    fn send_error(
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
        let identification = self.stack_mut().identification.next(ctx);
        let header = ErrorHeader::icmp_send(
            packet,
            route.source,
            route.source_mac,
            route.destination_mac,
            identification,
        );
        let error = icmp::originate(ctx, route.point, packet, message, header);
        self.send_local(ctx, route.egress, error, out);
    }
}

/// Where a packet the node originates leaves (see [`LinuxHost::local_route`]).
#[derive(Debug, Clone, Copy)]
pub struct LocalRoute {
    pub egress: HostEgress,
    pub source: Ipv4Addr,
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub point: PointId,
}

/// `snat A:a -> B:b; ` when the source changed between `before` and `after`.
pub fn describe_source_rewrite(before: &FlowKey, after: &FlowKey) -> String {
    if (before.source, before.source_port) == (after.source, after.source_port) {
        return String::new();
    }
    format!(
        "snat {}:{} -> {}:{}; ",
        before.source, before.source_port, after.source, after.source_port
    )
}
