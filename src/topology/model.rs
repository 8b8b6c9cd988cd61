//! The validated, resolved topology: every name turned into a dense index, every
//! address allocated, every default applied. This is what the datapath is built from;
//! nothing downstream re-reads strings from the file.

use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub type SegmentId = usize;
pub type RouterId = usize;
pub type HostId = usize;
pub type ClusterId = usize;

#[derive(Debug, Clone)]
pub struct Topology {
    pub name: String,
    pub seed: u64,
    pub conntrack_max: usize,
    /// Devices keep a flow cache in front of their slow path (always, but for the
    /// test that checks the cache changes nothing but speed).
    pub flow_cache: bool,
    pub segments: Vec<Segment>,
    pub routers: Vec<Router>,
    pub hosts: Vec<Host>,
    pub clusters: Vec<Cluster>,
    pub flows: Vec<Flow>,
    pub expectations: Vec<Expectation>,
    /// NSX DFW sections, and the default rule's action.
    pub dfw: Vec<super::dfw::DfwSection>,
    pub dfw_default: crate::datapath::policy::PolicyAction,
    /// Pods, nodes, Services and hosts by name, for endpoint strings.
    pub names: EndpointNames,
}

/// Name → index maps over a topology's clusters and hosts, built once after they are
/// resolved: resolving 10,000 flows' endpoints must not scan 16,500 pods each time.
/// Where a name repeats, the lists keep every match in cluster order and the single
/// maps the first, as a scan in that order finds it.
#[derive(Debug, Clone, Default)]
pub struct EndpointNames {
    /// Namespace → pod name → every (cluster, pod) of that name.
    pods: rustc_hash::FxHashMap<String, rustc_hash::FxHashMap<String, Vec<(ClusterId, usize)>>>,
    /// Namespace → Service name → (cluster, Service).
    services: rustc_hash::FxHashMap<String, rustc_hash::FxHashMap<String, (ClusterId, usize)>>,
    /// Node name → (cluster, node).
    nodes: rustc_hash::FxHashMap<String, (ClusterId, usize)>,
    hosts: rustc_hash::FxHashMap<String, HostId>,
}

impl EndpointNames {
    pub fn index(clusters: &[Cluster], hosts: &[Host]) -> Self {
        let mut names = Self::default();
        for (cluster_id, cluster) in clusters.iter().enumerate() {
            for (pod_id, pod) in cluster.pods.iter().enumerate() {
                names
                    .pods
                    .entry(pod.namespace.clone())
                    .or_default()
                    .entry(pod.name.clone())
                    .or_default()
                    .push((cluster_id, pod_id));
            }
            for (service_id, service) in cluster.services.iter().enumerate() {
                names
                    .services
                    .entry(service.namespace.clone())
                    .or_default()
                    .entry(service.name.clone())
                    .or_insert((cluster_id, service_id));
            }
            for (node_id, node) in cluster.nodes.iter().enumerate() {
                names
                    .nodes
                    .entry(node.name.clone())
                    .or_insert((cluster_id, node_id));
            }
        }
        for (host_id, host) in hosts.iter().enumerate() {
            names.hosts.entry(host.name.clone()).or_insert(host_id);
        }
        names
    }

    /// Every (cluster, pod) named `namespace/name`, in cluster order.
    pub fn pods(&self, namespace: &str, name: &str) -> &[(ClusterId, usize)] {
        self.pods
            .get(namespace)
            .and_then(|pods| pods.get(name))
            .map_or(&[], Vec::as_slice)
    }

    /// The first cluster's Service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<(ClusterId, usize)> {
        self.services.get(namespace)?.get(name).copied()
    }

    /// The first cluster's node `name`.
    pub fn node(&self, name: &str) -> Option<(ClusterId, usize)> {
        self.nodes.get(name).copied()
    }

    pub fn host(&self, name: &str) -> Option<HostId> {
        self.hosts.get(name).copied()
    }
}

#[derive(Debug, Clone)]
pub struct Segment {
    pub name: String,
    pub cidr: Ipv4Net,
    /// The router that owns `gateway_ip`, if any.
    pub gateway: Option<RouterId>,
    pub gateway_ip: Option<Ipv4Addr>,
    pub mtu: u16,
    pub latency_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouterKind {
    /// A plain IP router: connected and static routes (and BGP when configured).
    Router,
    /// An NSX Tier-1 gateway: segments' gateway, uplink to a Tier-0, advertisement.
    NsxTier1,
    /// An NSX Tier-0 gateway: uplinks, redistribution of Tier-1 routes, BGP.
    NsxTier0,
    /// A top-of-rack switch routing with BGP.
    Tor,
}

/// The route types an NSX Tier-1 advertises to its Tier-0 (NSX "route
/// advertisement"), and a Tier-0 redistributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Connected,
    Static,
    Nat,
    LbVip,
}

impl RouteKind {
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Connected => "connected",
            RouteKind::Static => "static",
            RouteKind::Nat => "nat",
            RouteKind::LbVip => "lb-vip",
        }
    }
}

/// What a BGP speaker announces (`bgp.redistribute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Redistribute {
    /// Its own connected subnets.
    Connected,
    /// Its own static routes.
    Static,
    /// What its Tier-1s advertise, by type.
    Tier1(RouteKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregate {
    pub prefix: Ipv4Net,
    pub summary_only: bool,
}

/// One entry of a prefix list (first match wins, implicit deny at the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMapEntry {
    pub permit: bool,
    pub prefix: Ipv4Net,
    /// Prefix lengths matched: `ge..=le` (both the entry's own length by default).
    pub ge: u8,
    pub le: u8,
}

impl RouteMapEntry {
    pub fn matches(&self, prefix: Ipv4Net) -> bool {
        self.prefix.contains(&prefix.network())
            && prefix.prefix_len() >= self.prefix.prefix_len()
            && (self.ge..=self.le).contains(&prefix.prefix_len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpNeighbor {
    pub ip: Ipv4Addr,
    pub asn: u32,
    pub route_reflector_client: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgp {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub neighbors: Vec<BgpNeighbor>,
    pub redistribute: Vec<Redistribute>,
}

#[derive(Debug, Clone)]
pub struct Router {
    pub name: String,
    pub kind: RouterKind,
    pub interfaces: Vec<RouterInterface>,
    pub static_routes: Vec<StaticRoute>,
    /// Several equal-cost next hops per prefix, chosen by a hash of the 5-tuple.
    pub ecmp: bool,
    pub urpf: crate::datapath::router::Urpf,
    /// NSX Tier-1: the Tier-0 it hangs off, and the interface index of its uplink.
    pub uplink: Option<Uplink>,
    /// NSX Tier-1: what it advertises to its Tier-0.
    pub advertise: Vec<RouteKind>,
    pub aggregates: Vec<Aggregate>,
    pub route_map_out: Vec<RouteMapEntry>,
    pub bgp: Option<Bgp>,
    /// SNAT rules, first match wins.
    pub snat: Vec<SnatRule>,
}

/// A router's SNAT rule: sources in `match_source` (toward `match_destination` when
/// given) are translated into a pool, or explicitly not (`no_snat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatRule {
    pub name: String,
    pub match_source: Ipv4Net,
    pub match_destination: Option<Ipv4Net>,
    /// `Snat(pool)` or `Keep` for `no_snat`.
    pub action: crate::engine::nat::NatAction,
}

impl Router {
    /// True when `address` lies on a segment this router has an interface on.
    pub fn is_attached_to(&self, segments: &[Segment], address: Ipv4Addr) -> bool {
        self.interfaces
            .iter()
            .any(|interface| segments[interface.segment].cidr.contains(&address))
    }
}

/// A Tier-1's link to its Tier-0: the transit segment, both addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uplink {
    pub tier0: RouterId,
    pub segment: SegmentId,
    pub tier1_address: Ipv4Addr,
    pub tier0_address: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
pub struct RouterInterface {
    pub segment: SegmentId,
    /// The interface address and the segment's prefix length.
    pub address: Ipv4Net,
    /// The interface name when it is not the segment's (an NSX transit link:
    /// `transit`).
    pub name: Option<&'static str>,
}

#[derive(Debug, Clone, Copy)]
pub struct StaticRoute {
    pub prefix: Ipv4Net,
    pub next_hop: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => crate::wire::PROTOCOL_TCP,
            Protocol::Udp => crate::wire::PROTOCOL_UDP,
            Protocol::Icmp => crate::wire::PROTOCOL_ICMP,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenPort {
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub segment: SegmentId,
    pub listen: Vec<ListenPort>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficEncapMode {
    /// Every inter-node pod packet goes through the tunnel.
    Encap,
    /// Never tunnelled: the underlay routes pod CIDRs.
    NoEncap,
    /// Routed between nodes on one subnet, tunnelled between subnets.
    Hybrid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelType {
    /// UDP 6081 (Antrea's default).
    Geneve,
    /// UDP 4789.
    Vxlan,
}

impl TunnelType {
    /// The encapsulation it uses: VNI 0 either way (Antrea sets no tunnel id).
    pub fn encapsulation(self) -> crate::datapath::encap::Encapsulation {
        use crate::datapath::encap::Encapsulation;
        match self {
            TunnelType::Geneve => Encapsulation::Geneve,
            TunnelType::Vxlan => Encapsulation::Vxlan { vni: 0 },
        }
    }
}

#[derive(Debug, Clone)]
pub struct AntreaSettings {
    pub traffic_encap_mode: TrafficEncapMode,
    pub tunnel_type: TunnelType,
    pub no_snat: bool,
    /// AntreaProxy `proxyAll`.
    pub proxy_all: bool,
    /// `snatFullyRandomPorts`: `--random-fully` on masquerade and Egress SNAT.
    pub snat_fully_random_ports: bool,
    /// The MTU of every pod interface and of antrea-gw0.
    pub pod_mtu: u16,
    /// NodePortLocal's port range, when enabled (Antrea default 61000-62000).
    pub node_port_local: Option<(u16, u16)>,
}

/// The CNI a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cni {
    Antrea,
    Calico,
}

/// When Calico encapsulates between nodes (IPPool `ipipMode` / `vxlanMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalicoEncapMode {
    Always,
    /// Only toward a node outside this node's subnet.
    CrossSubnet,
    Never,
}

/// A Calico BGPPeer as the nodes it applies to see it.
#[derive(Debug, Clone)]
pub struct CalicoPeer {
    pub ip: Ipv4Addr,
    pub asn: u32,
    /// Indices of the nodes that peer with it.
    pub nodes: Vec<usize>,
    /// BGPPeer `keepOriginalNextHop`: routes learned over the mesh go to this peer
    /// with the owning node as next hop.
    pub keep_original_next_hop: bool,
}

#[derive(Debug, Clone)]
pub struct CalicoSettings {
    pub asn: u32,
    pub node_to_node_mesh: bool,
    /// Node indices of the route reflectors.
    pub route_reflectors: Vec<usize>,
    pub bgp_peers: Vec<CalicoPeer>,
    pub ipip_mode: CalicoEncapMode,
    pub vxlan_mode: CalicoEncapMode,
    pub nat_outgoing: bool,
    pub block_size: u8,
    pub pools: Vec<Ipv4Net>,
    /// The MTU of every pod interface (and tunl0 / vxlan.calico).
    pub pod_mtu: u16,
}

impl CalicoSettings {
    /// The encapsulation toward a peer, if any: IPIP or VXLAN by their modes
    /// (CrossSubnet only when the peer is on another subnet).
    pub fn encapsulation(
        &self,
        peer_on_same_subnet: bool,
    ) -> Option<crate::datapath::encap::Encapsulation> {
        use crate::datapath::encap::Encapsulation;
        let applies = |mode: CalicoEncapMode| match mode {
            CalicoEncapMode::Always => true,
            CalicoEncapMode::CrossSubnet => !peer_on_same_subnet,
            CalicoEncapMode::Never => false,
        };
        if applies(self.ipip_mode) {
            Some(Encapsulation::Ipip)
        } else if applies(self.vxlan_mode) {
            Some(Encapsulation::Vxlan {
                vni: crate::wire::vxlan::CALICO_VNI,
            })
        } else {
            None
        }
    }

    /// Whether the nodes have a tunnel device at all.
    pub fn tunnels(&self) -> bool {
        self.ipip_mode != CalicoEncapMode::Never || self.vxlan_mode != CalicoEncapMode::Never
    }

    /// Whether an address belongs to one of the pools.
    pub fn in_pool(&self, address: Ipv4Addr) -> bool {
        self.pools.iter().any(|pool| pool.contains(&address))
    }
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub cni: Cni,
    /// Calico's settings, when `cni = "calico"`.
    pub calico: Option<CalicoSettings>,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub node_segment: SegmentId,
    pub node_kernel: KernelVersion,
    pub antrea: AntreaSettings,
    pub nodes: Vec<Node>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// NodePortLocal mappings (Antrea): node IP:port -> pod:port.
    pub node_port_local: Vec<NodePortLocalMapping>,
    /// Antrea Egresses, in file order.
    pub egresses: Vec<super::egress::Egress>,
    /// Kubernetes NetworkPolicies, in file order.
    pub network_policies: Vec<super::policy::NetworkPolicy>,
    /// Antrea ClusterNetworkPolicies, in file order.
    pub cluster_network_policies: Vec<super::policy::ClusterNetworkPolicy>,
}

/// One NodePortLocal mapping: the pod's node forwards `node_port` to the pod's
/// `pod_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePortLocalMapping {
    pub pod: usize,
    pub node: usize,
    pub protocol: Protocol,
    pub pod_port: u16,
    pub node_port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// How a load balancer reaches a Service's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbBackend {
    /// Every node's node port (only nodes with a local endpoint under Local).
    NodePort,
    /// The nodes hosting the pods, on their NodePortLocal ports.
    NodePortLocal,
    /// The pods' addresses directly (routed pods only).
    ClusterIp,
}

/// A LoadBalancer Service's VIP on a router.
#[derive(Debug, Clone)]
pub struct LoadBalancer {
    pub ip: Ipv4Addr,
    pub router: RouterId,
    pub backend: LbBackend,
    /// `snat = "automap"`: the LB's interface address toward the member.
    pub snat_automap: bool,
    /// `load_balancer_source_ranges`; empty: everyone.
    pub source_ranges: Vec<Ipv4Net>,
}

/// NCP's per-Service SNAT rule on a Tier-1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSnat {
    pub router: RouterId,
    pub ip: Ipv4Addr,
    pub sources: Vec<Ipv4Addr>,
}

/// A Service: its virtual address and ports, and the pods its selector picks.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub kind: ServiceType,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP` with its timeout.
    pub affinity_timeout_ns: Option<u64>,
    /// A LoadBalancer Service's VIP.
    pub load_balancer: Option<LoadBalancer>,
    /// `healthCheckNodePort` (LoadBalancer with externalTrafficPolicy Local), where
    /// kube-proxy on every node answers whether the node has local endpoints.
    pub health_check_node_port: Option<u16>,
    /// NCP per-Service SNAT (`ncp/snat_pool`): the Tier-1, the address allocated
    /// from the pool, and the backend pods' addresses it translates.
    pub snat: Option<ServiceSnat>,
}

impl Cluster {
    /// The health-check node ports kube-proxy serves on node `node`, with that node's
    /// local endpoint count for each.
    pub fn health_checks(&self, node: usize) -> Vec<(u16, u16)> {
        self.services
            .iter()
            .filter_map(|service| {
                let port = service.health_check_node_port?;
                let local = service
                    .ports
                    .iter()
                    .flat_map(|p| &p.endpoints)
                    .filter(|e| e.node == node)
                    .map(|e| e.pod)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                Some((port, u16::try_from(local).unwrap_or(u16::MAX)))
            })
            .collect()
    }
}

impl Service {
    /// `NS/NAME`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One Service port with its endpoints (the EndpointSlice: each selected pod that
/// has the target port).
#[derive(Debug, Clone)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    pub endpoints: Vec<ServiceEndpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceEndpoint {
    pub pod: usize,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub port: u16,
}

impl Cluster {
    /// The MTU of every pod interface.
    pub fn pod_mtu(&self) -> u16 {
        match &self.calico {
            Some(calico) => calico.pod_mtu,
            None => self.antrea.pod_mtu,
        }
    }
}

/// The Linux kernel the nodes run, where its behaviour differs by version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u16,
    pub minor: u16,
}

impl KernelVersion {
    /// Ubuntu 22.04, the kernel of current VKS Tanzu Kubernetes releases.
    pub const DEFAULT: KernelVersion = KernelVersion {
        major: 5,
        minor: 15,
    };

    /// Linux 5.9 added PMTU discovery for bridged UDP tunnels (commit 4cb47a8644cc,
    /// "tunnels: PMTU discovery support for directly bridged IP packets":
    /// `skb_tunnel_check_pmtu` answers an oversize DF packet on an OVS or bridge
    /// tunnel port with ICMP fragmentation-needed). Older kernels drop it silently.
    pub fn answers_tunnel_pmtu(self) -> bool {
        self >= KernelVersion { major: 5, minor: 9 }
    }
}

impl std::fmt::Display for KernelVersion {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Antrea: the node's pod CIDR. Calico: its first affine IPAM block.
    pub pod_cidr: Ipv4Net,
    /// The segment the node's eth0 is on.
    pub segment: SegmentId,
    /// Calico: the IPAM blocks affine to this node, in the order it claimed them.
    pub blocks: Vec<Ipv4Net>,
    /// Calico: the address of tunl0 / vxlan.calico (from the node's first block).
    pub tunnel_ip: Option<Ipv4Addr>,
}

impl Node {
    /// antrea-gw0's address: the first address of the node's pod CIDR (Antrea
    /// host-local IPAM reserves it for the gateway).
    pub fn gateway_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.pod_cidr.network()) + 1)
    }
}

#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
}

impl Pod {
    /// `NS/NAME`, as endpoints and reports write a pod.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// Something a flow starts or ends at, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointRef {
    Pod { cluster: ClusterId, pod: usize },
    Host(HostId),
    Node { cluster: ClusterId, node: usize },
    Address(Ipv4Addr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// TCP: handshake, `requests` requests of `bytes` answered by equal responses,
    /// FIN close. UDP: `requests` datagrams each answered by one of equal size.
    RequestResponse,
    /// ICMP echo, `requests` times.
    Ping,
}

#[derive(Debug, Clone)]
pub struct Flow {
    pub name: String,
    /// As written in the file (`pod:app01/web-1`), for reports.
    pub from_text: String,
    pub to_text: String,
    pub from: EndpointRef,
    pub to: EndpointRef,
    pub destination_ip: Ipv4Addr,
    /// Destination port (0 for ICMP).
    pub destination_port: u16,
    pub protocol: Protocol,
    pub exchange: Exchange,
    pub requests: u32,
    pub bytes: u32,
    pub start_ns: u64,
    pub dont_fragment: bool,
    pub connections: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    Dropped,
    NoReply,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Dropped => "dropped",
            Verdict::NoReply => "no-reply",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Expectation {
    Flow {
        /// How the expectation reads in the file, for the report.
        text: String,
        flow: usize,
        verdict: Option<Verdict>,
        dropped_by: Option<String>,
        via: Vec<String>,
        seen_source: Option<Ipv4Addr>,
    },
    Route {
        text: String,
        router: RouterId,
        prefix: Ipv4Net,
        present: bool,
        /// The route must use this next hop (one of them, under ECMP).
        next_hop: Option<Ipv4Addr>,
    },
}

impl Topology {
    /// The pod an endpoint names, if it names one.
    pub fn pod(&self, cluster: ClusterId, pod: usize) -> &Pod {
        &self.clusters[cluster].pods[pod]
    }

    /// The node a pod runs on.
    pub fn pod_node(&self, cluster: ClusterId, pod: usize) -> &Node {
        let cluster = &self.clusters[cluster];
        &cluster.nodes[cluster.pods[pod].node]
    }

    /// True when `name` is a device on some path: a router, host, node or pod (`NS/NAME`).
    pub fn has_device(&self, name: &str) -> bool {
        self.routers.iter().any(|r| r.name == name)
            || self.hosts.iter().any(|h| h.name == name)
            || self.clusters.iter().any(|c| {
                c.nodes.iter().any(|n| n.name == name)
                    || c.pods.iter().any(|p| p.qualified_name() == name)
            })
    }

    /// The first endpoint of the Service port a flow is addressed to (its ClusterIP
    /// and port, or a node port on a node), if it is.
    pub fn service_endpoint(&self, flow: &Flow) -> Option<(ClusterId, ServiceEndpoint)> {
        for (index, cluster) in self.clusters.iter().enumerate() {
            let to_node = matches!(flow.to, EndpointRef::Node { cluster: c, .. } if c == index);
            if let EndpointRef::Node { node, .. } = flow.to {
                let mapping = cluster.node_port_local.iter().find(|m| {
                    to_node
                        && m.node == node
                        && m.protocol == flow.protocol
                        && m.node_port == flow.destination_port
                });
                if let Some(m) = mapping {
                    let endpoint = ServiceEndpoint {
                        pod: m.pod,
                        node: m.node,
                        ip: cluster.pods[m.pod].ip,
                        port: m.pod_port,
                    };
                    return Some((index, endpoint));
                }
            }
            for service in &cluster.services {
                for port in &service.ports {
                    let vip = service.load_balancer.as_ref().map(|lb| lb.ip);
                    let hit = port.protocol == flow.protocol
                        && (((service.cluster_ip == flow.destination_ip
                            || vip == Some(flow.destination_ip))
                            && port.port == flow.destination_port)
                            || (to_node && port.node_port == Some(flow.destination_port)));
                    if hit {
                        return port.endpoints.first().map(|e| (index, *e));
                    }
                }
            }
        }
        None
    }

    /// The address an endpoint is reached at.
    pub fn endpoint_ip(&self, endpoint: EndpointRef) -> Ipv4Addr {
        match endpoint {
            EndpointRef::Pod { cluster, pod } => self.pod(cluster, pod).ip,
            EndpointRef::Host(host) => self.hosts[host].ip,
            EndpointRef::Node { cluster, node } => self.clusters[cluster].nodes[node].ip,
            EndpointRef::Address(address) => address,
        }
    }
}
