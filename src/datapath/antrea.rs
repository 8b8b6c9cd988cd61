//! A Kubernetes node running Antrea in `encap` mode with Geneve (reference §a, §b).
//!
//! The node owns three parts, each a pipeline of stages:
//!
//! * the **OVS bridge** `br-int`, with one port per pod (`veth-NS-POD`), `antrea-gw0`
//!   and `antrea-tun0`. Its stages follow Antrea's OpenFlow pipeline
//!   (docs/design/ovs-pipeline.md): Classifier -> EgressPolicy (Antrea's egress rules
//!   are enforced on the source node) -> L3Forwarding (+ L3DecTTL) -> IngressPolicy
//!   (ingress rules on the destination node) -> Output. The policy stages allow
//!   everything until NetworkPolicy is modelled. A flow cache in front of
//!   L3Forwarding replays the slow path's decision for every later packet of a flow.
//! * the **tunnel**: Geneve encapsulation exactly as the OVS kernel datapath emits it
//!   for Antrea — UDP 6081, VNI 0, no options, outer UDP checksum 0 (Antrea's default
//!   `tunnelCsum: false`), outer DF set (OVS `df_default=true`), outer TTL 64, outer
//!   UDP source port a hash of the inner 5-tuple (Linux `udp_flow_src_port`) — and
//!   the bridged-tunnel PMTU check of Linux `skb_tunnel_check_pmtu`.
//! * the **host network stack**: conntrack (PREROUTING un-NAT), routing, TTL,
//!   the forwarding MTU check, and Antrea's `ANTREA-POSTROUTING` MASQUERADE of pod
//!   traffic leaving the cluster to the node IP (pkg/agent/route/route_linux.go).

use super::icmp::{self, ErrorHeader, ErrorMessage};
use super::{Ctx, DropReason, HopAction, Neighbors, Outputs, PointId, PortId, Verdict};
use crate::engine::conntrack::{Conntrack, ConntrackError, Direction, EntryId};
use crate::engine::flow_cache::FlowCache;
use crate::engine::hash::tunnel_source_port;
use crate::engine::lpm::LpmTable;
use crate::packet::{FlowKey, IcmpKind, Packet};
use crate::wire::geneve::{self, Repr as GeneveRepr};
use crate::wire::{emit_ethernet, emit_ipv4, Mac, ETHERTYPE_IPV4, PROTOCOL_UDP};
use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// The node's uplink `eth0` is port 0; pod veths follow from port 1.
pub const UPLINK_PORT: PortId = 0;
/// Entries in a node's flow cache before it is emptied.
const FLOW_CACHE_CAPACITY: usize = 65_536;

/// A pod attached to this node's bridge.
#[derive(Debug, Clone)]
pub struct LocalPod {
    /// `NS/NAME`.
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// Capture point of the node side of the veth (`NODE:veth-NS-POD`).
    pub veth_point: PointId,
}

/// Another node of the cluster, reached through the tunnel.
#[derive(Debug, Clone)]
pub struct PeerNode {
    pub name: String,
    pub ip: Ipv4Addr,
}

/// Everything a node is built from.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub uplink_subnet: Ipv4Net,
    pub uplink_mtu: u16,
    /// MTU of antrea-gw0 and the pods' interfaces.
    pub pod_mtu: u16,
    pub default_gateway: Option<Ipv4Addr>,
    pub neighbors: Neighbors,
    pub gateway_mac: Mac,
    pub pod_cidr: Ipv4Net,
    pub cluster_pod_cidr: Ipv4Net,
    pub no_snat: bool,
    pub pods: Vec<LocalPod>,
    /// Peer pod CIDR -> peer node.
    pub peers: Vec<(Ipv4Net, PeerNode)>,
    pub conntrack_max: usize,
    pub seed: u64,
    pub uplink_point: PointId,
    pub gateway_point: PointId,
    pub tunnel_point: PointId,
}

/// Where a packet entered the OVS bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OvsSource {
    Pod(usize),
    Gateway,
    Tunnel,
}

/// What the OVS pipeline decided for a flow; cached per flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OvsDecision {
    /// Output to a local pod's veth; `routed` packets get their MACs rewritten
    /// (and, from a local pod, the TTL decremented).
    ToPod {
        pod: usize,
        routed: bool,
        decrement_ttl: bool,
    },
    /// Output to antrea-tun0 with `tun_dst` = the peer node.
    ToTunnel {
        peer: Ipv4Addr,
    },
    /// Output to antrea-gw0, into the host network stack.
    ToGateway,
    Drop(DropReason),
}

/// The OVS pipeline's stages, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OvsStage {
    Classifier,
    EgressPolicy,
    L3Forwarding,
    IngressPolicy,
}

const OVS_PIPELINE: [OvsStage; 4] = [
    OvsStage::Classifier,
    OvsStage::EgressPolicy,
    OvsStage::L3Forwarding,
    OvsStage::IngressPolicy,
];

/// Which end of a packet a NAT rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Where the host stack received a packet from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostIngress {
    Uplink,
    Gateway,
}

/// Where the host stack routes a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostEgress {
    Uplink { next_hop: Ipv4Addr },
    Gateway,
}

/// A route in the node's kernel routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostRoute {
    /// `dev antrea-gw0`: the local pod CIDR, and every peer pod CIDR (Antrea installs
    /// `<peer podCIDR> via <peer gw IP> dev antrea-gw0 onlink` in encap mode).
    Gateway,
    /// `dev eth0`, to the destination itself (connected) or via a gateway.
    Uplink { via: Option<Ipv4Addr> },
}

#[derive(Debug, Clone)]
pub struct AntreaNode {
    settings: NodeSettings,
    pod_by_ip: FxHashMap<Ipv4Addr, usize>,
    pod_by_mac: FxHashMap<Mac, usize>,
    peers: LpmTable<PeerNode>,
    /// The kernel routing table (`ip route` on the node).
    routes: LpmTable<HostRoute>,
    pub conntrack: Conntrack,
    flow_cache: FlowCache<(OvsSource, FlowKey), OvsDecision>,
    identification: u16,
}

impl AntreaNode {
    pub fn new(settings: NodeSettings) -> Self {
        let pod_by_ip = settings
            .pods
            .iter()
            .enumerate()
            .map(|(index, pod)| (pod.ip, index))
            .collect();
        let pod_by_mac = settings
            .pods
            .iter()
            .enumerate()
            .map(|(index, pod)| (pod.mac, index))
            .collect();
        let mut peers = LpmTable::new();
        let mut routes = LpmTable::new();
        for (cidr, peer) in &settings.peers {
            peers.insert(*cidr, peer.clone());
            routes.insert(*cidr, HostRoute::Gateway);
        }
        routes.insert(settings.pod_cidr, HostRoute::Gateway);
        routes.insert(
            settings.uplink_subnet.trunc(),
            HostRoute::Uplink { via: None },
        );
        if let Some(gateway) = settings.default_gateway {
            routes.insert(Ipv4Net::default(), HostRoute::Uplink { via: Some(gateway) });
        }
        let conntrack = Conntrack::new(settings.conntrack_max, settings.seed);
        AntreaNode {
            pod_by_ip,
            pod_by_mac,
            peers,
            routes,
            conntrack,
            flow_cache: FlowCache::new(FLOW_CACHE_CAPACITY),
            identification: 0,
            settings,
        }
    }

    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// antrea-gw0's address: the first address of the node's pod CIDR.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.settings.pod_cidr.network()) + 1)
    }

    /// Flow cache hits and misses.
    pub fn flow_cache_stats(&self) -> (u64, u64) {
        (self.flow_cache.hits(), self.flow_cache.misses())
    }

    fn next_identification(&mut self) -> u16 {
        self.identification = self.identification.wrapping_add(1);
        self.identification
    }

    /// Entry point: a frame arrives on `in_port`.
    pub fn process(&mut self, ctx: &mut Ctx, in_port: PortId, packet: Packet, out: &mut Outputs) {
        if in_port == UPLINK_PORT {
            self.uplink_input(ctx, packet, out);
        } else {
            let pod = usize::from(in_port - 1);
            let slot = ctx.begin_receive(self.settings.pods[pod].veth_point, &packet);
            self.ovs(ctx, OvsSource::Pod(pod), slot, packet, out);
        }
    }

    // ---- OVS bridge -------------------------------------------------------------

    fn ovs(
        &mut self,
        ctx: &mut Ctx,
        source: OvsSource,
        slot: Option<usize>,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        if packet.meta.ethertype != ETHERTYPE_IPV4 {
            ctx.describe(slot, HopAction::Drop, || "not IPv4".into());
            ctx.drop_packet(&self.settings.name, &packet, DropReason::Malformed, || {
                "non-IPv4 frame on br-int".into()
            });
            return;
        }
        let mut decision = OvsDecision::Drop(DropReason::NoRoute);
        let mut cache_hit = false;
        for stage in OVS_PIPELINE {
            let verdict = match stage {
                OvsStage::Classifier => self.classifier(source, &packet),
                OvsStage::EgressPolicy => self.egress_policy(source, &packet),
                OvsStage::L3Forwarding => {
                    (decision, cache_hit) = self.l3_forwarding_cached(source, &packet);
                    match decision {
                        OvsDecision::Drop(reason) => Verdict::Drop(reason),
                        _ => Verdict::Continue,
                    }
                }
                OvsStage::IngressPolicy => self.ingress_policy(decision, &packet),
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Forward(_) => break,
                Verdict::Drop(reason) => {
                    let destination = packet.meta.key.destination;
                    ctx.describe(slot, HopAction::Drop, || {
                        format!("ovs {stage:?}: {reason} for {destination}")
                    });
                    ctx.drop_packet(&self.settings.name, &packet, reason, || {
                        format!("ovs {stage:?}: {destination}")
                    });
                    return;
                }
            }
        }
        match decision {
            OvsDecision::ToPod {
                pod,
                routed,
                decrement_ttl,
            } => self.output_to_pod(ctx, slot, pod, routed, decrement_ttl, packet, out),
            OvsDecision::ToTunnel { peer } => {
                let decrement = source != OvsSource::Tunnel;
                if decrement && !packet.decrement_ttl() {
                    ctx.describe(slot, HopAction::Drop, || "ovs L3DecTTL: ttl expired".into());
                    ctx.drop_packet(
                        &self.settings.name,
                        &packet,
                        DropReason::TtlExceeded,
                        || "ttl expired in OVS dec_ttl".into(),
                    );
                    return;
                }
                ctx.describe(slot, HopAction::Receive, || {
                    let destination = packet.meta.key.destination;
                    let (cidr, peer_name) = self
                        .peers
                        .lookup(destination)
                        .map(|(cidr, p)| (cidr.to_string(), p.name.as_str()))
                        .unwrap_or_default();
                    let via = if cache_hit { "flow cache" } else { "L3Forwarding" };
                    let ttl = packet.meta.ttl;
                    format!(
                        "ovs {via}: {destination} in {cidr} ({peer_name}) -> antrea-tun0 tun_dst={peer}, ttl {}->{ttl}",
                        ttl + 1
                    )
                });
                self.tunnel_output(ctx, peer, packet, out);
            }
            OvsDecision::ToGateway => {
                ctx.describe(slot, HopAction::Receive, || {
                    format!(
                        "ovs l3 forward {} -> antrea-gw0 (leaves the pod network)",
                        packet.meta.key.destination
                    )
                });
                packet.set_macs(self.settings.gateway_mac, self.settings.mac);
                ctx.hop(
                    self.settings.gateway_point,
                    &packet,
                    HopAction::Transmit,
                    || "ovs -> host network stack".into(),
                );
                self.host_input(ctx, HostIngress::Gateway, None, packet, out);
            }
            OvsDecision::Drop(_) => unreachable!("drops leave the pipeline above"),
        }
    }

    /// Classifier: where the packet came from; SpoofGuard for pod ports (a pod may
    /// only send from its own IP and MAC).
    fn classifier(&self, source: OvsSource, packet: &Packet) -> Verdict<OvsDecision> {
        if let OvsSource::Pod(pod) = source {
            let local = &self.settings.pods[pod];
            if packet.meta.key.source != local.ip || packet.meta.source_mac != local.mac {
                return Verdict::Drop(DropReason::Policy);
            }
        }
        Verdict::Continue
    }

    /// EgressRule / EgressDefaultRule tables: Antrea enforces a pod's egress policy on
    /// its own node, so only packets from a local pod are subject to it. No policy is
    /// modelled yet: every packet passes.
    fn egress_policy(&self, source: OvsSource, _packet: &Packet) -> Verdict<OvsDecision> {
        match source {
            OvsSource::Pod(_) | OvsSource::Gateway | OvsSource::Tunnel => Verdict::Continue,
        }
    }

    /// IngressRule / IngressDefaultRule tables: a pod's ingress policy is enforced on
    /// the destination node, for packets about to be output to a local pod. No policy
    /// is modelled yet: every packet passes.
    fn ingress_policy(&self, decision: OvsDecision, _packet: &Packet) -> Verdict<OvsDecision> {
        match decision {
            OvsDecision::ToPod { .. }
            | OvsDecision::ToTunnel { .. }
            | OvsDecision::ToGateway
            | OvsDecision::Drop(_) => Verdict::Forward(decision),
        }
    }

    /// L3Forwarding through the flow cache; also says whether the cache answered.
    fn l3_forwarding_cached(&mut self, source: OvsSource, packet: &Packet) -> (OvsDecision, bool) {
        let key = (source, packet.meta.key);
        if let Some(decision) = self.flow_cache.get(&key) {
            return (decision, true);
        }
        let decision = self.l3_forwarding(source, packet);
        self.flow_cache.insert(key, decision);
        (decision, false)
    }

    /// L3Forwarding: local pod (switched or routed), peer node's pod CIDR (tunnel),
    /// or out of the pod network (gateway).
    fn l3_forwarding(&self, source: OvsSource, packet: &Packet) -> OvsDecision {
        let destination = packet.meta.key.destination;
        let destination_mac = packet.meta.destination_mac;
        if let OvsSource::Pod(_) = source {
            if destination_mac != self.settings.gateway_mac {
                // Same subnet: the pod addressed the peer's MAC itself; plain L2.
                return match self.pod_by_mac.get(&destination_mac) {
                    Some(&pod) => OvsDecision::ToPod {
                        pod,
                        routed: false,
                        decrement_ttl: false,
                    },
                    None => OvsDecision::Drop(DropReason::NoNeighbor),
                };
            }
        }
        if let Some(&pod) = self.pod_by_ip.get(&destination) {
            // Routed to a local pod; packets from the tunnel were decremented on the
            // source node and the host stack decrements its own forwards.
            let decrement_ttl = matches!(source, OvsSource::Pod(_));
            return OvsDecision::ToPod {
                pod,
                routed: true,
                decrement_ttl,
            };
        }
        if self.settings.pod_cidr.contains(&destination) {
            return OvsDecision::Drop(DropReason::NoNeighbor);
        }
        if source != OvsSource::Tunnel {
            if let Some((_, peer)) = self.peers.lookup(destination) {
                return OvsDecision::ToTunnel { peer: peer.ip };
            }
        }
        match source {
            OvsSource::Pod(_) => OvsDecision::ToGateway,
            OvsSource::Gateway | OvsSource::Tunnel => OvsDecision::Drop(DropReason::NoRoute),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn output_to_pod(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        pod: usize,
        routed: bool,
        decrement_ttl: bool,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        let local = &self.settings.pods[pod];
        if decrement_ttl && !packet.decrement_ttl() {
            ctx.describe(slot, HopAction::Drop, || "ovs L3DecTTL: ttl expired".into());
            ctx.drop_packet(
                &self.settings.name,
                &packet,
                DropReason::TtlExceeded,
                || "ttl expired in OVS dec_ttl".into(),
            );
            return;
        }
        if routed {
            packet.set_macs(self.settings.gateway_mac, local.mac);
        }
        let how = if routed { "l3 forward" } else { "l2 switch" };
        ctx.describe(slot, HopAction::Receive, || {
            format!("ovs {how} -> local pod {}", local.name)
        });
        let port = PortId::try_from(pod + 1).unwrap_or(PortId::MAX);
        ctx.hop(local.veth_point, &packet, HopAction::Transmit, || {
            format!("ovs output to pod {}", local.name)
        });
        out.send(port, packet);
    }

    // ---- tunnel -----------------------------------------------------------------

    /// Encapsulates toward `peer` and sends on eth0; or, when the result would not
    /// fit the uplink, drops with the ICMP Linux's bridged-tunnel PMTU check builds.
    fn tunnel_output(
        &mut self,
        ctx: &mut Ctx,
        peer: Ipv4Addr,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        packet.set_macs(self.settings.gateway_mac, Mac::ANTREA_GLOBAL_VIRTUAL);
        let tunnel_mtu = usize::from(self.settings.uplink_mtu) - geneve::IPV4_OVERHEAD;
        ctx.hop(
            self.settings.tunnel_point,
            &packet,
            HopAction::Transmit,
            || format!("output to antrea-tun0, tun_dst={peer}"),
        );
        if packet.ip_len() > tunnel_mtu {
            self.tunnel_pmtu_exceeded(ctx, tunnel_mtu, packet, out);
            return;
        }
        let next_hop = if self.settings.uplink_subnet.contains(&peer) {
            Some(peer)
        } else {
            self.settings.default_gateway
        };
        let Some(next_mac) = next_hop.and_then(|hop| self.settings.neighbors.get(&hop).copied())
        else {
            ctx.drop_packet(&self.settings.name, &packet, DropReason::NoNeighbor, || {
                format!("no neighbor for tunnel peer {peer}")
            });
            return;
        };
        let inner_key = packet.meta.key;
        let source_port = tunnel_source_port(&inner_key, self.settings.seed);
        let identification = self.next_identification();
        encapsulate(
            &mut packet,
            &EncapHeader {
                source: self.settings.ip,
                destination: peer,
                source_mac: self.settings.mac,
                destination_mac: next_mac,
                source_port,
                identification,
            },
        );
        let node_ip = self.settings.ip;
        ctx.hop(self.settings.uplink_point, &packet, HopAction::Encapsulate, || {
            format!("geneve encap vni=0 {node_ip} -> {peer} udp {source_port}->6081 (inner {inner_key})")
        });
        out.send(UPLINK_PORT, packet);
    }

    /// Linux `skb_tunnel_check_pmtu` for a bridged (OVS) tunnel port: with DF set on
    /// the inner packet, an ICMP "fragmentation needed" with MTU = uplink MTU - 50 is
    /// built from the inner destination back to the inner source
    /// (`iptunnel_pmtud_build_icmp`: addresses and MACs swapped, TTL copied, quoting up
    /// to 576 bytes) and injected back as if received from the tunnel, so OVS delivers
    /// it to the sending pod. The packet itself is dropped either way.
    fn tunnel_pmtu_exceeded(
        &mut self,
        ctx: &mut Ctx,
        tunnel_mtu: usize,
        packet: Packet,
        out: &mut Outputs,
    ) {
        let size = packet.ip_len();
        let sends_icmp =
            packet.meta.dont_fragment && tunnel_mtu >= 576 && icmp::may_send_error(&packet);
        if sends_icmp {
            let header = ErrorHeader {
                source: packet.meta.key.destination,
                source_mac: packet.meta.destination_mac,
                destination_mac: packet.meta.source_mac,
                ttl: packet.meta.ttl,
                identification: 0,
            };
            let mtu = u16::try_from(tunnel_mtu).unwrap_or(u16::MAX);
            let point = self.settings.tunnel_point;
            let error = icmp::originate(
                ctx,
                point,
                &packet,
                ErrorMessage::fragmentation_needed(mtu),
                header,
            );
            ctx.drop_packet(
                &self.settings.name,
                &packet,
                DropReason::MtuExceeded,
                || {
                    format!(
                        "{size} bytes + 50 geneve overhead exceed uplink mtu {}",
                        self.settings.uplink_mtu
                    )
                },
            );
            self.ovs(ctx, OvsSource::Tunnel, None, error, out);
        } else {
            ctx.drop_packet(
                &self.settings.name,
                &packet,
                DropReason::MtuExceeded,
                || {
                    format!(
                        "{size} bytes + 50 geneve overhead exceed uplink mtu {}",
                        self.settings.uplink_mtu
                    )
                },
            );
        }
    }

    fn uplink_input(&mut self, ctx: &mut Ctx, packet: Packet, out: &mut Outputs) {
        let slot = ctx.begin_receive(self.settings.uplink_point, &packet);
        let meta = &packet.meta;
        if meta.ethertype != ETHERTYPE_IPV4
            || (meta.destination_mac != self.settings.mac && meta.destination_mac != Mac::BROADCAST)
        {
            ctx.describe(slot, HopAction::Drop, || {
                "not an IPv4 frame for this node".into()
            });
            ctx.drop_packet(&self.settings.name, &packet, DropReason::Malformed, || {
                "not an IPv4 frame for this node".into()
            });
            return;
        }
        if meta.key.destination == self.settings.ip
            && meta.key.protocol == PROTOCOL_UDP
            && meta.key.destination_port == geneve::UDP_PORT
        {
            self.decapsulate(ctx, slot, packet, out);
        } else {
            self.host_input(ctx, HostIngress::Uplink, slot, packet, out);
        }
    }

    /// Geneve receive (RFC 8926 §3.4/§3.5): version 0 only; a packet whose options
    /// include a critical one this endpoint does not understand (Antrea understands
    /// none) is dropped, as is an OAM packet and any payload but Ethernet.
    fn decapsulate(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        let outer_source = packet.meta.key.source;
        let vni = match decapsulate(&mut packet) {
            Ok(vni) => vni,
            Err(error) => {
                ctx.describe(slot, HopAction::Drop, || {
                    format!("geneve packet refused: {error}")
                });
                ctx.drop_packet(&self.settings.name, &packet, DropReason::Malformed, || {
                    format!("geneve packet from {outer_source} refused: {error}")
                });
                return;
            }
        };
        ctx.describe(slot, HopAction::Decapsulate, || {
            format!("geneve decap vni={vni} from {outer_source}")
        });
        let tunnel_slot = ctx.begin_receive(self.settings.tunnel_point, &packet);
        self.ovs(ctx, OvsSource::Tunnel, tunnel_slot, packet, out);
    }

    // ---- host network stack -------------------------------------------------------

    fn host_input(
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
            ctx.describe(slot, HopAction::Drop, || {
                format!("host routing: no route to {destination}")
            });
            ctx.drop_packet(&self.settings.name, &packet, DropReason::NoRoute, || {
                format!("no route to {destination}")
            });
            return;
        };
        if packet.meta.ttl <= 1 {
            ctx.describe(slot, HopAction::Drop, || {
                "ttl expired in the host stack".into()
            });
            self.send_error(ctx, ingress, &packet, ErrorMessage::TIME_EXCEEDED, out);
            ctx.drop_packet(
                &self.settings.name,
                &packet,
                DropReason::TtlExceeded,
                || format!("ttl expired forwarding to {destination}"),
            );
            return;
        }
        // ip_forward: the MTU check happens before POSTROUTING, so the ICMP quotes
        // the packet as the sender sent it.
        let (mtu, device) = match egress {
            HostEgress::Uplink { .. } => (self.settings.uplink_mtu, "eth0"),
            HostEgress::Gateway => (self.settings.pod_mtu, "antrea-gw0"),
        };
        if packet.ip_len() > usize::from(mtu) {
            let size = packet.ip_len();
            ctx.describe(slot, HopAction::Drop, || {
                format!("{size} bytes exceed {device} mtu {mtu}")
            });
            if packet.meta.dont_fragment {
                self.send_error(
                    ctx,
                    ingress,
                    &packet,
                    ErrorMessage::fragmentation_needed(mtu),
                    out,
                );
            }
            ctx.drop_packet(
                &self.settings.name,
                &packet,
                DropReason::MtuExceeded,
                || format!("{size} bytes > {device} mtu {mtu}"),
            );
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
                    ctx.describe(slot, HopAction::Drop, || format!("no neighbor {next_hop}"));
                    ctx.drop_packet(&self.settings.name, &packet, DropReason::NoNeighbor, || {
                        format!("no neighbor {next_hop} on eth0")
                    });
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
    fn prerouting(&mut self, ctx: &mut Ctx, packet: &mut Packet) -> Option<(EntryId, Direction)> {
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
    fn related_icmp(&mut self, ctx: &mut Ctx, packet: &mut Packet) {
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
    fn route(&self, destination: Ipv4Addr) -> Option<HostEgress> {
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
    fn postrouting(
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
    fn translate(
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
    fn commit(
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
    fn local_delivery(
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

    /// An ICMP error from the host stack, sent back the way the packet came: from the
    /// node IP on eth0, or from antrea-gw0's address toward a pod.
    #[allow(clippy::too_many_arguments)]
    fn send_error(
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
fn describe_source_rewrite(before: &FlowKey, after: &FlowKey) -> String {
    if (before.source, before.source_port) == (after.source, after.source_port) {
        return String::new();
    }
    format!(
        "snat {}:{} -> {}:{}; ",
        before.source, before.source_port, after.source, after.source_port
    )
}

/// The outer headers of one Geneve encapsulation.
#[derive(Debug, Clone, Copy)]
pub struct EncapHeader {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub source_mac: Mac,
    pub destination_mac: Mac,
    pub source_port: u16,
    pub identification: u16,
}

/// Prepends outer Ethernet / IPv4 (DF, TTL 64) / UDP (checksum 0) / Geneve (VNI 0, no
/// options) to `packet`'s frame, in its headroom, and re-parses the metadata.
pub fn encapsulate(packet: &mut Packet, header: &EncapHeader) {
    let inner_len = packet.len();
    let udp_len = crate::wire::UDP_HEADER_LEN + geneve::BASE_LEN + inner_len;
    let bytes = packet.push_front(geneve::IPV4_OVERHEAD);
    emit_ethernet(
        bytes,
        header.destination_mac,
        header.source_mac,
        ETHERTYPE_IPV4,
    );
    emit_ipv4(
        &mut bytes[14..],
        header.source,
        header.destination,
        PROTOCOL_UDP,
        udp_len,
        icmp::DEFAULT_TTL,
        header.identification,
        true,
    );
    let udp = &mut bytes[34..42];
    udp[0..2].copy_from_slice(&header.source_port.to_be_bytes());
    udp[2..4].copy_from_slice(&geneve::UDP_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&u16::try_from(udp_len).unwrap_or(u16::MAX).to_be_bytes());
    // Antrea's default tunnelCsum=false: the outer UDP checksum is 0 (allowed over IPv4).
    udp[6..8].copy_from_slice(&[0, 0]);
    let mut view = geneve::Packet::new_unchecked(&mut bytes[42..50]);
    // Eight bytes were just reserved for a header without options; emit cannot fail.
    let _ = GeneveRepr::antrea().emit(&mut view);
    let _ = packet.parse();
}

/// Removes one Geneve encapsulation (outer Ethernet/IPv4/UDP/Geneve) in place and
/// returns the VNI. Refuses (RFC 8926 §3.4/§3.5) an unknown version, a critical option
/// (Antrea understands no option, so every critical one is unknown), an OAM packet and
/// a payload other than Ethernet.
pub fn decapsulate(packet: &mut Packet) -> Result<u32, crate::wire::WireError> {
    let offset = packet.meta.l4_offset + crate::wire::UDP_HEADER_LEN;
    let (vni, header_len) = {
        let view = geneve::Packet::new_checked(&packet.frame()[offset..])?;
        let repr = GeneveRepr::parse(&view)?;
        if repr.critical
            || repr
                .options()
                .any(|option| option.map(|o| o.is_critical()).unwrap_or(true))
        {
            return Err(crate::wire::WireError::Unsupported);
        }
        if repr.oam || repr.protocol_type != geneve::PROTOCOL_ETHERNET {
            return Err(crate::wire::WireError::Unsupported);
        }
        (repr.vni, repr.buffer_len())
    };
    packet.pull_front(offset + header_len);
    packet.parse()?;
    Ok(vni)
}
