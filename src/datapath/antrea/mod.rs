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

pub mod egress;
mod ovs;
mod tunnel;

pub use crate::datapath::encap::{decapsulate, encapsulate, EncapHeader, Encapsulation};
pub use crate::datapath::host::LocalPod;
use crate::datapath::host::{
    HostIngress, HostRoute, HostStack, InteriorId, InteriorLink, LinuxHost,
};
use ovs::{OvsDecision, OvsSource};

use super::icmp::{self, ErrorHeader, ErrorMessage};
use super::path_log::Table;
use super::{Ctx, DropReason, HopAction, Neighbors, Outputs, PointId, PortId, Verdict};
use crate::engine::conntrack::Conntrack;
use crate::engine::flow_cache::FlowCache;
use crate::engine::hash::tunnel_source_port;
use crate::engine::lpm::LpmTable;
use crate::engine::nat::NatAction;
use crate::engine::rules::{AddressSet, InterfaceId, Layer, Predicate, Rule};
use crate::packet::{FlowKey, Packet};
use crate::wire::geneve;
use crate::wire::{Mac, ETHERTYPE_IPV4, PROTOCOL_UDP};
use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;
use std::ops::Not;

/// The node's uplink `eth0` is port 0; pod veths follow from port 1.
pub const UPLINK_PORT: PortId = 0;
/// antrea-gw0, the host stack's one interior interface.
const GATEWAY: InteriorId = 0;
/// The interior interface to the node's own processes (antrea-gw0 is 0).
pub const HOST_PROCESS_INTERFACE: InteriorId = 1;
/// Antrea's `VirtualNodePortDNATIPv4`: with proxyAll, the host DNATs node-port
/// traffic to it so that it is routed through antrea-gw0 into OVS.
pub const VIRTUAL_NODE_PORT_DNAT_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 252);
/// Entries in a node's flow cache before it is emptied.
pub const FLOW_CACHE_CAPACITY: usize = 65_536;

/// Another node of the cluster.
#[derive(Debug, Clone)]
pub struct PeerNode {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Its pods are reached through the tunnel (encap, or hybrid across subnets);
    /// otherwise they are routed by the underlay (noEncap, hybrid on one subnet).
    pub tunnel: bool,
    /// On this node's own subnet (a routed peer is then the next hop itself).
    pub same_subnet: bool,
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
    /// Antrea Egress as this node's agent programs it.
    pub egress: egress::NodeEgress,
    /// The cluster's compiled network policy.
    pub policy: std::sync::Arc<crate::datapath::policy::ClusterPolicy>,
    /// antrea-agent `snatFullyRandomPorts`: `--random-fully` on the masquerade.
    pub snat_fully_random_ports: bool,
    /// AntreaProxy `proxyAll`: node ports go to OVS through antrea-gw0.
    pub proxy_all: bool,
    /// The node's own listening processes (kube-proxy's health checks).
    pub host_process: Option<crate::datapath::host::HostProcess>,
    /// antrea-tun0's encapsulation (Geneve or VXLAN, VNI 0).
    pub encapsulation: crate::datapath::encap::Encapsulation,
    /// The kernel answers an oversize DF packet at the tunnel port with ICMP
    /// fragmentation-needed (Linux ≥ 5.9); older kernels drop it silently.
    pub tunnel_pmtu_icmp: bool,
    pub pods: Vec<LocalPod>,
    /// Peer pod CIDR -> peer node.
    pub peers: Vec<(Ipv4Net, PeerNode)>,
    pub conntrack_max: usize,
    /// Entries in the OVS flow cache (0: no cache, every packet takes the slow path).
    pub flow_cache_capacity: usize,
    pub seed: u64,
    pub uplink_point: PointId,
    pub gateway_point: PointId,
    pub tunnel_point: PointId,
}

#[derive(Debug, Clone)]
pub struct AntreaNode {
    settings: NodeSettings,
    pod_by_ip: FxHashMap<Ipv4Addr, usize>,
    pod_by_mac: FxHashMap<Mac, usize>,
    peers: LpmTable<PeerNode>,
    /// The host network stack (routing table, conntrack, reassembly).
    pub stack: HostStack,
    /// AntreaProxy's conntrack zone in OVS (CtZone 0xfff0), apart from the host's
    /// netfilter table.
    pub service_ct: Conntrack,
    /// AntreaProxy's ClientIP affinity (its learned flows).
    service_affinity: crate::datapath::services::Affinity,
    flow_cache: FlowCache<(OvsSource, FlowKey, Mac), OvsDecision>,
    /// NetworkPolicy enforcement: the compiled policy and the connections it allowed.
    policy: crate::datapath::policy::PolicyEnforcer,
}

impl AntreaNode {
    /// The node's conntrack table `table` (netfilter's, AntreaProxy's zone, the
    /// policy connections), for the path cache.
    pub fn conntrack(&self, table: Table) -> Option<&Conntrack> {
        match table {
            Table::HostStack => Some(&self.stack.conntrack),
            Table::ServiceZone => Some(&self.service_ct),
            Table::Policy => Some(self.policy.connections()),
            _ => None,
        }
    }

    pub fn conntrack_mut(&mut self, table: Table) -> Option<&mut Conntrack> {
        match table {
            Table::HostStack => Some(&mut self.stack.conntrack),
            Table::ServiceZone => Some(&mut self.service_ct),
            Table::Policy => Some(self.policy.connections_mut()),
            _ => None,
        }
    }

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
        let gateway = HostRoute::Interior {
            interface: GATEWAY,
            via: None,
        };
        let mut routes = LpmTable::new();
        for (cidr, peer) in &settings.peers {
            peers.insert(*cidr, peer.clone());
            // Encap: `<peer podCIDR> via <peer gw> dev antrea-gw0 onlink`. Routed
            // (noEncap, hybrid on one subnet): `via <peer node IP> dev eth0` when the
            // peer shares the subnet; otherwise the default route (the underlay must
            // route pod CIDRs) — pkg/agent/route/route_linux.go.
            if peer.tunnel {
                routes.insert(*cidr, gateway);
            } else if peer.same_subnet {
                routes.insert(*cidr, HostRoute::Uplink { via: Some(peer.ip) });
            }
        }
        routes.insert(settings.pod_cidr, gateway);
        if settings.proxy_all {
            routes.insert(Ipv4Net::from(VIRTUAL_NODE_PORT_DNAT_IP), gateway);
        }
        routes.insert(
            settings.uplink_subnet.trunc(),
            HostRoute::Uplink { via: None },
        );
        if let Some(gateway) = settings.default_gateway {
            routes.insert(Ipv4Net::default(), HostRoute::Uplink { via: Some(gateway) });
        }
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
        stack.routes = routes;
        stack.host_process = settings.host_process.clone();
        append_postrouting(&mut stack.postrouting, &settings);
        AntreaNode {
            pod_by_ip,
            pod_by_mac,
            peers,
            stack,
            service_ct: Conntrack::new(settings.conntrack_max, settings.seed),
            service_affinity: Default::default(),
            flow_cache: FlowCache::new(settings.flow_cache_capacity),
            policy: crate::datapath::policy::PolicyEnforcer::new(
                settings.policy.clone(),
                settings.conntrack_max,
                settings.seed,
            ),
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

    /// The node's kernel routing table as `ip route` shows it: prefix, next hop (if
    /// any) and device.
    pub fn route_table(&self) -> Vec<(Ipv4Net, Option<Ipv4Addr>, &'static str)> {
        self.stack
            .routes
            .entries()
            .into_iter()
            .map(|(prefix, route)| match *route {
                HostRoute::Interior { via, .. } => (prefix, via, "antrea-gw0"),
                HostRoute::Uplink { via } => (prefix, via, "eth0"),
                HostRoute::Blackhole => (prefix, None, "blackhole"),
            })
            .collect()
    }

    /// Flow cache hits and misses.
    pub fn flow_cache_stats(&self) -> (u64, u64) {
        (self.flow_cache.hits(), self.flow_cache.misses())
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
            let pod = usize::from(in_port - 1);
            let slot = ctx.begin_receive(self.settings.pods[pod].veth_point, &packet);
            self.ovs(ctx, OvsSource::Pod(pod), slot, packet, out);
        }
    }
}

/// The host stack of an Antrea node: antrea-gw0 is its one interior interface, into
/// OVS; MASQUERADE as Antrea installs it.
impl LinuxHost for AntreaNode {
    fn stack(&self) -> &HostStack {
        &self.stack
    }

    fn stack_mut(&mut self) -> &mut HostStack {
        &mut self.stack
    }

    fn is_own_address(&self, address: Ipv4Addr) -> bool {
        address == self.gateway_ip() || self.holds_egress_ip(address)
    }

    fn interior(&self, _interface: InteriorId, next_hop: Ipv4Addr) -> InteriorLink {
        InteriorLink {
            mtu: self.settings.pod_mtu,
            address: self.gateway_ip(),
            source_mac: self.settings.gateway_mac,
            destination_mac: self
                .pod_by_ip
                .get(&next_hop)
                .map(|&pod| self.settings.pods[pod].mac)
                .unwrap_or(Mac::ANTREA_GLOBAL_VIRTUAL),
            point: self.settings.gateway_point,
        }
    }

    fn interior_name(&self, _interface: InteriorId) -> &str {
        "antrea-gw0"
    }

    fn node_port_redirect(&self) -> Option<Ipv4Addr> {
        self.settings.proxy_all.then_some(VIRTUAL_NODE_PORT_DNAT_IP)
    }

    /// MASQUERADE to the node IP for pod traffic leaving through eth0 to a
    /// destination outside the pod network, unless `noSNAT` (route_linux.go
    /// ANTREA-POSTROUTING: `-s <podCIDR> ! -o antrea-gw0 -j MASQUERADE`).
    /// Through antrea-gw0 into OVS, toward the pod.
    fn send_interior(
        &mut self,
        ctx: &mut Ctx,
        _interface: InteriorId,
        _next_hop: Ipv4Addr,
        packet: Packet,
        out: &mut Outputs,
        forwarded: bool,
    ) {
        let slot = if forwarded {
            ctx.begin_receive(self.settings.gateway_point, &packet)
        } else {
            None
        };
        self.ovs(ctx, OvsSource::Gateway, slot, packet, out);
    }
}

/// ANTREA-POSTROUTING as the agent installs it (pkg/agent/route/route_linux.go;
/// reference §b): pod-CIDR sources to anything outside the pod network (ipset
/// ANTREA-POD-IP) leaving by anything but antrea-gw0 are MASQUERADEd — unless
/// `noSNAT`.
fn append_postrouting(chain: &mut Layer<NatAction>, settings: &NodeSettings) {
    egress::append_egress_snat(chain, &settings.egress, settings.snat_fully_random_ports);
    if settings.no_snat {
        return;
    }
    chain.push(Rule::new(
        "ANTREA-POSTROUTING/masquerade",
        vec![
            Predicate::SourceIn(AddressSet::new([settings.pod_cidr])),
            Predicate::DestinationIn(AddressSet::new([settings.cluster_pod_cidr])).not(),
            Predicate::OutInterface(InterfaceId::from(GATEWAY)).not(),
        ],
        NatAction::Masquerade {
            random_fully: settings.snat_fully_random_ports,
        },
    ));
}
