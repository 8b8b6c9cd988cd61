//! The serde mirror of the TOML topology file (SPEC §2): names as strings, every
//! default a real deployment has, and `Spanned` wherever a later check must point at
//! the offending text. Unknown keys are refused (`deny_unknown_fields`).

use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use toml::Spanned;

pub type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyFile {
    pub topology: TopologySection,
    #[serde(default)]
    pub segment: Vec<Spanned<SegmentConfig>>,
    #[serde(default)]
    pub router: Vec<Spanned<RouterConfig>>,
    #[serde(default)]
    pub host: Vec<Spanned<HostConfig>>,
    #[serde(default)]
    pub cluster: Vec<Spanned<ClusterConfig>>,
    /// NSX distributed firewall sections.
    #[serde(default)]
    pub dfw: Vec<Spanned<super::dfw::DfwConfig>>,
    #[serde(default)]
    pub flow: Vec<Spanned<FlowConfig>>,
    #[serde(default)]
    pub expect: Vec<Spanned<ExpectConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySection {
    pub name: Text,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_conntrack_max")]
    pub conntrack_max: Spanned<usize>,
    /// The DFW's default Layer-3 rule: `allow` (NSX's default) or `drop`.
    #[serde(default)]
    pub dfw_default: Option<Text>,
    /// Kubernetes manifests to load: refused until modelled.
    #[serde(default)]
    pub include: Option<Spanned<toml::Value>>,
}

/// nf_conntrack_max's usual value on a node (reference §g; SPEC §2 example).
fn default_conntrack_max() -> Spanned<usize> {
    Spanned::new(0..0, 262_144)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    pub name: Text,
    pub cidr: Spanned<Ipv4Net>,
    #[serde(default)]
    pub gateway: Option<Text>,
    #[serde(default)]
    pub gateway_ip: Option<Spanned<Ipv4Addr>>,
    #[serde(default = "default_mtu")]
    pub mtu: Spanned<u16>,
    /// One-way latency of the segment, e.g. "50us", "0.2ms".
    #[serde(default)]
    pub latency: Option<Text>,
}

fn default_mtu() -> Spanned<u16> {
    Spanned::new(0..0, 1500)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    pub name: Text,
    #[serde(default)]
    pub kind: Option<Text>,
    #[serde(default)]
    pub interfaces: Vec<Spanned<RouterInterfaceConfig>>,
    #[serde(default)]
    pub static_routes: Vec<Spanned<StaticRouteConfig>>,
    /// NSX Tier-1: the link to its Tier-0.
    #[serde(default)]
    pub uplink: Option<Spanned<UplinkConfig>>,
    /// NSX Tier-1: the route types advertised to the Tier-0.
    #[serde(default)]
    pub advertise: Option<Vec<Text>>,
    /// SNAT rules (an NSX Tier-1's: a namespace's subnets to its egress /32), in
    /// priority order.
    #[serde(default)]
    pub snat: Vec<Spanned<SnatRuleConfig>>,
    /// Equal-cost multipath (default: on for an NSX Tier-0, off otherwise).
    #[serde(default)]
    pub ecmp: Option<Spanned<bool>>,
    /// `strict` or `none` (default: strict on NSX gateways, none otherwise).
    #[serde(default)]
    pub urpf: Option<Text>,
    #[serde(default)]
    pub aggregate: Vec<Spanned<AggregateConfig>>,
    #[serde(default)]
    pub route_map_out: Vec<Spanned<RouteMapEntryConfig>>,
    #[serde(default)]
    pub bgp: Option<Spanned<BgpConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The Tier-0.
    pub router: Text,
    /// This Tier-1's address on the transit link (100.64.0.0/16 style); the Tier-0
    /// takes the other address of the /31.
    pub ip: Spanned<Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    pub prefix: Spanned<Ipv4Net>,
    #[serde(default)]
    pub summary_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMapEntryConfig {
    /// permit | deny
    pub action: Text,
    pub prefix: Spanned<Ipv4Net>,
    #[serde(default)]
    pub ge: Option<Spanned<u8>>,
    #[serde(default)]
    pub le: Option<Spanned<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    pub asn: Spanned<u32>,
    #[serde(default)]
    pub router_id: Option<Spanned<Ipv4Addr>>,
    #[serde(default)]
    pub neighbors: Vec<Spanned<BgpNeighborConfig>>,
    #[serde(default)]
    pub redistribute: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpNeighborConfig {
    pub ip: Spanned<Ipv4Addr>,
    pub asn: Spanned<u32>,
    /// This speaker reflects iBGP routes to the neighbor (RFC 4456).
    #[serde(default)]
    pub route_reflector_client: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterInterfaceConfig {
    pub segment: Text,
    /// Address with prefix length, e.g. "192.168.100.2/24".
    pub ip: Spanned<Ipv4Net>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticRouteConfig {
    pub prefix: Spanned<Ipv4Net>,
    pub next_hop: Spanned<Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub name: Text,
    #[serde(default)]
    pub ip: Option<Spanned<Ipv4Addr>>,
    pub segment: Text,
    #[serde(default)]
    pub listen: Vec<Spanned<ListenConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    #[serde(default = "default_protocol")]
    pub protocol: Text,
    pub port: Spanned<u16>,
}

fn default_protocol() -> Text {
    Spanned::new(0..0, "tcp".to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub name: Text,
    #[serde(default)]
    pub cni: Option<Text>,
    #[serde(default)]
    pub pod_cidr: Option<Spanned<Ipv4Net>>,
    #[serde(default)]
    pub service_cidr: Option<Spanned<Ipv4Net>>,
    #[serde(default)]
    pub node_segment: Option<Text>,
    /// The nodes' Linux kernel, "MAJOR.MINOR" (default "5.15", Ubuntu 22.04 TKrs).
    #[serde(default)]
    pub node_kernel: Option<Text>,
    #[serde(default)]
    pub antrea: Option<Spanned<AntreaConfig>>,
    #[serde(default)]
    pub calico: Option<Spanned<CalicoConfig>>,
    #[serde(default)]
    pub node: Vec<Spanned<NodeConfig>>,
    #[serde(default)]
    pub namespace: Vec<Spanned<NamespaceConfig>>,
    #[serde(default)]
    pub pod: Vec<Spanned<PodConfig>>,
    #[serde(default)]
    pub deployment: Vec<Spanned<DeploymentConfig>>,
    #[serde(default)]
    pub service: Vec<Spanned<ServiceConfig>>,
    #[serde(default)]
    pub network_policy: Vec<Spanned<super::policy::NetworkPolicyConfig>>,
    #[serde(default)]
    pub cluster_network_policy: Vec<Spanned<super::policy::ClusterNetworkPolicyConfig>>,
    #[serde(default)]
    pub egress: Vec<Spanned<super::egress::EgressConfig>>,
    #[serde(default)]
    pub external_ip_pool: Vec<Spanned<super::egress::ExternalIpPoolConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntreaConfig {
    #[serde(default)]
    pub traffic_encap_mode: Option<Text>,
    #[serde(default)]
    pub tunnel_type: Option<Text>,
    #[serde(default)]
    pub no_snat: bool,
    /// AntreaProxy `proxyAll`: node ports are load-balanced in OVS, not by kube-proxy.
    #[serde(default)]
    pub proxy_all: bool,
    /// antrea-agent `snatFullyRandomPorts`: `--random-fully` on the masquerade and
    /// the Egress SNAT rules.
    #[serde(default)]
    pub snat_fully_random_ports: bool,
    /// Pod MTU; 0 (the default) = the node segment's MTU minus the tunnel overhead.
    #[serde(default = "zero_mtu")]
    pub mtu: Spanned<u16>,
    #[serde(default)]
    pub node_port_local: Option<Spanned<NodePortLocalConfig>>,
}

fn zero_mtu() -> Spanned<u16> {
    Spanned::new(0..0, 0)
}

impl Default for AntreaConfig {
    fn default() -> Self {
        AntreaConfig {
            traffic_encap_mode: None,
            tunnel_type: None,
            no_snat: false,
            proxy_all: false,
            snat_fully_random_ports: false,
            mtu: zero_mtu(),
            node_port_local: None,
        }
    }
}

/// `[cluster.calico]`: the IPPool, BGPConfiguration and BGPPeer resources of a
/// Calico install, in one table. Defaults are those of Calico's `calico.yaml`
/// manifest (IPIP Always, natOutgoing, block size 26, AS 64512, node-to-node mesh).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalicoConfig {
    #[serde(default)]
    pub asn: Option<Spanned<u32>>,
    #[serde(default)]
    pub node_to_node_mesh: Option<bool>,
    /// Nodes acting as route reflectors (`routeReflectorClusterID` set).
    #[serde(default)]
    pub route_reflectors: Vec<Text>,
    #[serde(default)]
    pub bgp_peers: Vec<Spanned<CalicoPeerConfig>>,
    #[serde(default)]
    pub ipip_mode: Option<Text>,
    #[serde(default)]
    pub vxlan_mode: Option<Text>,
    #[serde(default)]
    pub nat_outgoing: Option<bool>,
    #[serde(default)]
    pub block_size: Option<Spanned<u8>>,
    /// IP pools (default: one pool, the cluster's `pod_cidr`); inside `pod_cidr`.
    #[serde(default)]
    pub ip_pools: Vec<Spanned<Ipv4Net>>,
    /// Pod MTU; 0 (the default) = the node segment's MTU minus the encapsulation.
    #[serde(default = "zero_mtu")]
    pub mtu: Spanned<u16>,
}

/// A Calico BGPPeer: global (every node peers with it) or limited to `nodes`
/// (BGPPeer `spec.node` / `nodeSelector`, e.g. the nodes of one rack).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalicoPeerConfig {
    pub ip: Spanned<Ipv4Addr>,
    pub asn: Spanned<u32>,
    #[serde(default)]
    pub nodes: Vec<Text>,
    /// BGPPeer `keepOriginalNextHop`.
    #[serde(default)]
    pub keep_original_next_hop: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: Text,
    #[serde(default)]
    pub ip: Option<Spanned<Ipv4Addr>>,
    #[serde(default)]
    pub pod_cidr: Option<Spanned<Ipv4Net>>,
    /// The node's own segment (default: the cluster's `node_segment`).
    #[serde(default)]
    pub segment: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    pub name: Text,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodConfig {
    pub name: Text,
    #[serde(default)]
    pub namespace: Option<Text>,
    #[serde(default)]
    pub node: Option<Text>,
    #[serde(default)]
    pub ip: Option<Spanned<Ipv4Addr>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<Spanned<ContainerPortConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPortConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub port: Spanned<u16>,
    #[serde(default = "default_protocol")]
    pub protocol: Text,
}

/// Antrea's NodePortLocal (`node_port_local = { enabled, port_range }`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePortLocalConfig {
    #[serde(default = "enabled")]
    pub enabled: bool,
    #[serde(default)]
    pub port_range: Option<Text>,
}

fn enabled() -> bool {
    true
}

/// One SNAT rule of a router.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnatRuleConfig {
    /// How the report names the rule (default `snat[INDEX]`).
    #[serde(default)]
    pub name: Option<Text>,
    /// `snat` (default) or `no_snat` (NSX `NO_SNAT`: leave matching traffic alone).
    #[serde(default)]
    pub action: Option<Text>,
    pub match_source: Spanned<Ipv4Net>,
    #[serde(default)]
    pub match_destination: Option<Spanned<Ipv4Net>>,
    /// One address (`192.0.2.10`) or a range (`192.0.2.10-192.0.2.13`).
    #[serde(default)]
    pub translated: Option<Text>,
    #[serde(default)]
    pub random_fully: bool,
}

/// `[[cluster.service]]` (SPEC §2).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: Text,
    #[serde(default)]
    pub namespace: Option<Text>,
    #[serde(default, rename = "type")]
    pub kind: Option<Text>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub cluster_ip: Option<Spanned<Ipv4Addr>>,
    pub ports: Vec<Spanned<ServicePortConfig>>,
    #[serde(default)]
    pub external_traffic_policy: Option<Text>,
    #[serde(default)]
    pub internal_traffic_policy: Option<Text>,
    #[serde(default)]
    pub session_affinity: Option<Text>,
    #[serde(default)]
    pub node_port_local: Option<Spanned<bool>>,
    #[serde(default)]
    pub load_balancer_ip: Option<Spanned<Ipv4Addr>>,
    #[serde(default)]
    pub load_balancer: Option<Spanned<LoadBalancerConfig>>,
    #[serde(default)]
    pub load_balancer_source_ranges: Vec<Spanned<Ipv4Net>>,
    /// NCP's `ncp/snat_pool` annotation: a per-Service SNAT address from this pool
    /// (`A-B` or a CIDR) for the Service's backend pods, on the Tier-1 in front of
    /// the cluster, before the namespace's rule.
    #[serde(default)]
    pub snat_pool: Option<Text>,
}

/// Where a LoadBalancer Service's VIP lives and how it reaches the pods.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancerConfig {
    /// The router (an NSX Tier-1's load balancer, or an external LB device).
    pub router: Text,
    /// nodeport (default) | nodeportlocal | clusterip
    #[serde(default)]
    pub backend: Option<Text>,
    /// automap (default: the LB's interface address) | none
    #[serde(default)]
    pub snat: Option<Text>,
}

/// One port of a Service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePortConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub port: Spanned<u16>,
    /// A number, or the name of a container port of the selected pods (default:
    /// `port`).
    #[serde(default)]
    pub target_port: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub node_port: Option<Spanned<u16>>,
    #[serde(default = "default_protocol")]
    pub protocol: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    pub name: Text,
    #[serde(default)]
    pub namespace: Option<Text>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<Spanned<ContainerPortConfig>>,
}

fn default_replicas() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    pub name: Text,
    pub from: Text,
    pub to: Text,
    #[serde(default)]
    pub protocol: Option<Text>,
    #[serde(default)]
    pub exchange: Option<Text>,
    #[serde(default)]
    pub requests: Option<Spanned<u32>>,
    #[serde(default)]
    pub bytes: Option<Spanned<u32>>,
    #[serde(default)]
    pub start: Option<Text>,
    #[serde(default)]
    pub dont_fragment: Option<bool>,
    #[serde(default)]
    pub connections: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectConfig {
    #[serde(default)]
    pub flow: Option<Text>,
    #[serde(default)]
    pub verdict: Option<Text>,
    #[serde(default)]
    pub dropped_by: Option<Text>,
    #[serde(default)]
    pub via: Option<Vec<Text>>,
    #[serde(default)]
    pub seen_source: Option<Spanned<Ipv4Addr>>,
    #[serde(default)]
    pub router: Option<Text>,
    #[serde(default)]
    pub prefix: Option<Spanned<Ipv4Net>>,
    #[serde(default)]
    pub present: Option<bool>,
    /// With `router` and `prefix`: the route must have this next hop (one of them,
    /// under ECMP).
    #[serde(default)]
    pub next_hop: Option<Spanned<Ipv4Addr>>,
    // The from/to/protocol/port form of an expectation.
    #[serde(default)]
    pub from: Option<Text>,
    #[serde(default)]
    pub to: Option<Text>,
    #[serde(default)]
    pub protocol: Option<Text>,
    #[serde(default)]
    pub port: Option<Spanned<u16>>,
}
