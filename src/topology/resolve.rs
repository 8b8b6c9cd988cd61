//! Config -> model: checks every name, reference and address, applies defaults and
//! allocates what the file leaves out. The first mistake becomes a located
//! [`ConfigError`]; nothing here panics on input.

use super::config::*;
use super::error::{ConfigError, Source};
use super::model::*;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use toml::Spanned;

type Result<T> = std::result::Result<T, ConfigError>;

/// Default latency of a segment (one switch hop in a rack).
const DEFAULT_SEGMENT_LATENCY_NS: u64 = 50_000;
/// Default cluster networks of a Tanzu Kubernetes cluster (TKC spec defaults
/// `pods.cidrBlocks: 192.168.0.0/16`, `services.cidrBlocks: 10.96.0.0/12`) [K].
const DEFAULT_POD_CIDR: &str = "192.168.0.0/16";
const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// kube-controller-manager `--node-cidr-mask-size` for IPv4.
const NODE_CIDR_PREFIX: u8 = 24;

struct Resolver<'a> {
    source: &'a Source,
}

impl Resolver<'_> {
    fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.source.error(Some(spanned.span()), message)
    }

    fn unsupported<T>(&self, spanned: &Option<Spanned<T>>, what: &str) -> Result<()> {
        match spanned {
            Some(value) => Err(self.error(
                value,
                format!("{what} is not modelled by this netsim version yet"),
            )),
            None => Ok(()),
        }
    }

    fn unsupported_list<T>(&self, list: &[Spanned<T>], what: &str) -> Result<()> {
        match list.first() {
            Some(value) => Err(self.error(
                value,
                format!("{what} is not modelled by this netsim version yet"),
            )),
            None => Ok(()),
        }
    }
}

/// Parses a duration such as `0ms`, `1.5ms`, `200us`, `2s` or `100ns` into nanoseconds.
pub fn parse_duration_ns(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    let nanoseconds = (value * scale).round();
    if !(0.0..=1e18).contains(&nanoseconds) {
        return None;
    }
    // Range-checked above.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some(nanoseconds as u64)
}

fn parse_protocol(text: &str) -> Option<Protocol> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "icmp" => Some(Protocol::Icmp),
        _ => None,
    }
}

/// Checks that no two items share a name.
fn unique_names<'n>(
    resolver: &Resolver,
    what: &str,
    names: impl Iterator<Item = &'n Text>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    for name in names {
        if name.get_ref().is_empty() {
            return Err(resolver.error(name, format!("{what} name is empty")));
        }
        if !seen.insert(name.get_ref().as_str()) {
            return Err(resolver.error(name, format!("duplicate {what} name `{}`", name.get_ref())));
        }
    }
    Ok(())
}

/// Resolves a parsed file into the model.
pub fn resolve(file: &TopologyFile, source: &Source) -> Result<Topology> {
    let resolver = Resolver { source };
    resolver.unsupported(&file.topology.include, "`include` of Kubernetes manifests")?;
    resolver.unsupported_list(&file.dfw, "NSX distributed firewall (`[[dfw]]`)")?;

    unique_names(
        &resolver,
        "segment",
        file.segment.iter().map(|s| &s.get_ref().name),
    )?;
    unique_names(
        &resolver,
        "router",
        file.router.iter().map(|r| &r.get_ref().name),
    )?;
    unique_names(
        &resolver,
        "host",
        file.host.iter().map(|h| &h.get_ref().name),
    )?;
    unique_names(
        &resolver,
        "cluster",
        file.cluster.iter().map(|c| &c.get_ref().name),
    )?;
    // Routers, hosts and nodes are all devices; a capture point is DEVICE:INTERFACE.
    let device_names = file
        .router
        .iter()
        .map(|r| &r.get_ref().name)
        .chain(file.host.iter().map(|h| &h.get_ref().name))
        .chain(
            file.cluster
                .iter()
                .flat_map(|c| c.get_ref().node.iter().map(|n| &n.get_ref().name)),
        );
    unique_names(&resolver, "device (router, host or node)", device_names)?;

    let router_index: BTreeMap<&str, RouterId> = file
        .router
        .iter()
        .enumerate()
        .map(|(index, r)| (r.get_ref().name.get_ref().as_str(), index))
        .collect();
    let segments = resolve_segments(&resolver, file, &router_index)?;
    let segment_index: BTreeMap<&str, SegmentId> = segments
        .iter()
        .enumerate()
        .map(|(index, s)| (s.name.as_str(), index))
        .collect();
    let lookup_segment = |name: &Text| -> Result<SegmentId> {
        segment_index
            .get(name.get_ref().as_str())
            .copied()
            .ok_or_else(|| resolver.error(name, format!("no segment named `{}`", name.get_ref())))
    };

    let mut addresses = AddressBook::new(&segments);
    let routers = resolve_routers(&resolver, file, &segments, &lookup_segment, &mut addresses)?;
    let mut clusters = Vec::new();
    for cluster in &file.cluster {
        clusters.push(resolve_cluster(
            &resolver,
            cluster,
            &segments,
            &lookup_segment,
            &mut addresses,
        )?);
    }
    check_pod_cidrs_disjoint(&resolver, file, &clusters)?;
    check_cluster_networks_off_segments(&resolver, file, &clusters, &segments)?;
    let hosts = resolve_hosts(&resolver, file, &lookup_segment, &mut addresses)?;
    check_static_routes(&resolver, file, &routers, &segments)?;

    let mut topology = Topology {
        name: file.topology.name.get_ref().clone(),
        seed: file.topology.seed,
        conntrack_max: file.topology.conntrack_max,
        segments,
        routers,
        hosts,
        clusters,
        flows: Vec::new(),
        expectations: Vec::new(),
    };
    if topology.name.is_empty()
        || topology.name.contains(['/', '\\'])
        || topology.name.starts_with('.')
    {
        return Err(resolver.error(
            &file.topology.name,
            "topology name must be a plain file name",
        ));
    }
    unique_names(
        &resolver,
        "flow",
        file.flow.iter().map(|f| &f.get_ref().name),
    )?;
    for flow in &file.flow {
        let resolved = super::endpoint::resolve_flow(&resolver_view(&resolver), &topology, flow)?;
        topology.flows.push(resolved);
    }
    for expect in &file.expect {
        let expectation = resolve_expect(&resolver, &mut topology, expect)?;
        topology.expectations.push(expectation);
    }
    Ok(topology)
}

/// What the endpoint resolver needs from this one.
pub struct ResolverView<'a> {
    pub source: &'a Source,
}

impl ResolverView<'_> {
    pub fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.source.error(Some(spanned.span()), message)
    }
}

fn resolver_view<'a>(resolver: &Resolver<'a>) -> ResolverView<'a> {
    ResolverView {
        source: resolver.source,
    }
}

fn resolve_segments(
    resolver: &Resolver,
    file: &TopologyFile,
    router_index: &BTreeMap<&str, RouterId>,
) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for spanned in &file.segment {
        let config = spanned.get_ref();
        let cidr = *config.cidr.get_ref();
        if cidr != cidr.trunc() {
            return Err(resolver.error(
                &config.cidr,
                format!(
                    "segment cidr {cidr} has host bits set (did you mean {}?)",
                    cidr.trunc()
                ),
            ));
        }
        if cidr.prefix_len() > 30 {
            return Err(resolver.error(
                &config.cidr,
                format!("segment cidr {cidr} is too small to hold a gateway and a host"),
            ));
        }
        let gateway = match &config.gateway {
            Some(name) => Some(*router_index.get(name.get_ref().as_str()).ok_or_else(|| {
                resolver.error(name, format!("no router named `{}`", name.get_ref()))
            })?),
            None => None,
        };
        let gateway_ip = match &config.gateway_ip {
            Some(ip) => {
                if !cidr.contains(ip.get_ref()) {
                    return Err(resolver.error(
                        ip,
                        format!("gateway_ip {} is outside the segment {cidr}", ip.get_ref()),
                    ));
                }
                Some(*ip.get_ref())
            }
            None => gateway.map(|_| Ipv4Addr::from(u32::from(cidr.network()) + 1)),
        };
        let mtu = *config.mtu.get_ref();
        if !(576..=9216).contains(&mtu) {
            return Err(resolver.error(&config.mtu, format!("mtu {mtu} is outside 576..9216")));
        }
        let latency_ns = match &config.latency {
            Some(text) => parse_duration_ns(text.get_ref()).ok_or_else(|| {
                resolver.error(
                    text,
                    format!(
                        "`{}` is not a duration like \"50us\" or \"1ms\"",
                        text.get_ref()
                    ),
                )
            })?,
            None => DEFAULT_SEGMENT_LATENCY_NS,
        };
        segments.push(Segment {
            name: config.name.get_ref().clone(),
            cidr,
            gateway,
            gateway_ip,
            mtu,
            latency_ns,
        });
    }
    Ok(segments)
}

/// Who holds which address on which segment; allocates free ones.
struct AddressBook {
    used: Vec<BTreeMap<Ipv4Addr, String>>,
    cidrs: Vec<Ipv4Net>,
}

impl AddressBook {
    fn new(segments: &[Segment]) -> Self {
        AddressBook {
            used: segments.iter().map(|_| BTreeMap::new()).collect(),
            cidrs: segments.iter().map(|s| s.cidr).collect(),
        }
    }

    /// Claims `address` on `segment` for `owner`; the error names the current holder.
    fn claim(
        &mut self,
        segment: SegmentId,
        address: Ipv4Addr,
        owner: &str,
    ) -> std::result::Result<(), String> {
        let cidr = self.cidrs[segment];
        if !cidr.contains(&address) {
            return Err(format!("{address} is outside the segment's cidr {cidr}"));
        }
        if address == cidr.network() || address == cidr.broadcast() {
            return Err(format!(
                "{address} is the network or broadcast address of {cidr}"
            ));
        }
        if let Some(holder) = self.used[segment].get(&address) {
            return Err(format!("{address} is already used by {holder}"));
        }
        self.used[segment].insert(address, owner.to_string());
        Ok(())
    }

    /// The first free address at or after host offset `from`.
    fn allocate(&mut self, segment: SegmentId, from: u32, owner: &str) -> Option<Ipv4Addr> {
        let cidr = self.cidrs[segment];
        let network = u32::from(cidr.network());
        let broadcast = u32::from(cidr.broadcast());
        (network + from..broadcast)
            .map(Ipv4Addr::from)
            .find(|address| !self.used[segment].contains_key(address))
            .inspect(|address| {
                self.used[segment].insert(*address, owner.to_string());
            })
    }
}

fn resolve_routers(
    resolver: &Resolver,
    file: &TopologyFile,
    segments: &[Segment],
    lookup_segment: &dyn Fn(&Text) -> Result<SegmentId>,
    addresses: &mut AddressBook,
) -> Result<Vec<Router>> {
    let mut routers = Vec::new();
    for (router_id, spanned) in file.router.iter().enumerate() {
        let config = spanned.get_ref();
        let kind = match &config.kind {
            None => RouterKind::Router,
            Some(kind) => match kind.get_ref().as_str() {
                "router" => RouterKind::Router,
                "nsx-t1" | "nsx-t0" | "tor" => {
                    return Err(resolver.error(kind, format!("router kind `{}` is not modelled by this netsim version yet; use kind = \"router\"", kind.get_ref())))
                }
                other => return Err(resolver.error(kind, format!("unknown router kind `{other}` (expected nsx-t1, nsx-t0, tor or router)"))),
            },
        };
        for (value, what) in [
            (&config.uplink, "a T1 uplink"),
            (&config.advertise, "route advertisement"),
            (&config.snat, "router SNAT"),
            (&config.ecmp, "ECMP"),
            (&config.urpf, "uRPF"),
            (&config.aggregate, "route aggregation"),
            (&config.route_map_out, "route maps"),
            (&config.bgp, "BGP"),
        ] {
            resolver.unsupported(value, what)?;
        }
        let name = config.name.get_ref().clone();
        let mut interfaces = Vec::new();
        for (segment_id, segment) in segments.iter().enumerate() {
            if segment.gateway == Some(router_id) {
                if let Some(gateway_ip) = segment.gateway_ip {
                    addresses
                        .claim(segment_id, gateway_ip, &format!("router {name}"))
                        .map_err(|message| resolver.error(&file.segment[segment_id], message))?;
                    let address = Ipv4Net::new(gateway_ip, segment.cidr.prefix_len())
                        .map_err(|e| resolver.error(spanned, e.to_string()))?;
                    interfaces.push(RouterInterface {
                        segment: segment_id,
                        address,
                    });
                }
            }
        }
        for interface in &config.interfaces {
            let interface_config = interface.get_ref();
            let segment_id = lookup_segment(&interface_config.segment)?;
            let address = *interface_config.ip.get_ref();
            if interfaces
                .iter()
                .any(|existing| existing.segment == segment_id)
            {
                if interfaces.iter().any(|existing| {
                    existing.segment == segment_id && existing.address.addr() == address.addr()
                }) {
                    continue; // the same attachment listed twice (SPEC allows it)
                }
                return Err(resolver.error(
                    interface,
                    format!(
                        "router {name} already has an interface on segment {}",
                        segments[segment_id].name
                    ),
                ));
            }
            if address.prefix_len() != segments[segment_id].cidr.prefix_len() {
                return Err(resolver.error(
                    &interface_config.ip,
                    format!(
                        "prefix length /{} differs from segment {} ({})",
                        address.prefix_len(),
                        segments[segment_id].name,
                        segments[segment_id].cidr
                    ),
                ));
            }
            addresses
                .claim(segment_id, address.addr(), &format!("router {name}"))
                .map_err(|message| resolver.error(&interface_config.ip, message))?;
            interfaces.push(RouterInterface {
                segment: segment_id,
                address,
            });
        }
        let static_routes = config
            .static_routes
            .iter()
            .map(|route| StaticRoute {
                prefix: route.get_ref().prefix.get_ref().trunc(),
                next_hop: *route.get_ref().next_hop.get_ref(),
            })
            .collect();
        routers.push(Router {
            name,
            kind,
            interfaces,
            static_routes,
        });
    }
    Ok(routers)
}

fn check_static_routes(
    resolver: &Resolver,
    file: &TopologyFile,
    routers: &[Router],
    segments: &[Segment],
) -> Result<()> {
    for (router, config) in routers.iter().zip(&file.router) {
        for (route, route_config) in router
            .static_routes
            .iter()
            .zip(&config.get_ref().static_routes)
        {
            let on_link = router
                .interfaces
                .iter()
                .any(|interface| segments[interface.segment].cidr.contains(&route.next_hop));
            if !on_link {
                return Err(resolver.error(
                    &route_config.get_ref().next_hop,
                    format!(
                        "next hop {} is not on any segment router {} is attached to",
                        route.next_hop, router.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn resolve_hosts(
    resolver: &Resolver,
    file: &TopologyFile,
    lookup_segment: &dyn Fn(&Text) -> Result<SegmentId>,
    addresses: &mut AddressBook,
) -> Result<Vec<Host>> {
    let mut hosts = Vec::new();
    for spanned in &file.host {
        let config = spanned.get_ref();
        let name = config.name.get_ref().clone();
        let segment = lookup_segment(&config.segment)?;
        let owner = format!("host {name}");
        let ip = match &config.ip {
            Some(ip) => {
                addresses
                    .claim(segment, *ip.get_ref(), &owner)
                    .map_err(|message| resolver.error(ip, message))?;
                *ip.get_ref()
            }
            None => addresses.allocate(segment, 100, &owner).ok_or_else(|| {
                resolver.error(&config.segment, "no free address left on the segment")
            })?,
        };
        let mut listen = Vec::new();
        for port in &config.listen {
            let protocol = parse_listen_protocol(resolver, &port.get_ref().protocol)?;
            listen.push(ListenPort {
                protocol,
                port: *port.get_ref().port.get_ref(),
            });
        }
        hosts.push(Host {
            name,
            ip,
            segment,
            listen,
        });
    }
    Ok(hosts)
}

fn parse_listen_protocol(resolver: &Resolver, text: &Text) -> Result<Protocol> {
    match parse_protocol(text.get_ref()) {
        Some(Protocol::Icmp) | None => Err(resolver.error(
            text,
            format!(
                "`{}` is not a listening protocol (tcp or udp)",
                text.get_ref()
            ),
        )),
        Some(protocol) => Ok(protocol),
    }
}

fn resolve_cluster(
    resolver: &Resolver,
    spanned: &Spanned<ClusterConfig>,
    segments: &[Segment],
    lookup_segment: &dyn Fn(&Text) -> Result<SegmentId>,
    addresses: &mut AddressBook,
) -> Result<Cluster> {
    let config = spanned.get_ref();
    let name = config.name.get_ref().clone();
    if let Some(cni) = &config.cni {
        match cni.get_ref().as_str() {
            "antrea" => {}
            "calico" | "nsx" => {
                return Err(resolver.error(
                    cni,
                    format!(
                        "cni `{}` is not modelled by this netsim version yet; use cni = \"antrea\"",
                        cni.get_ref()
                    ),
                ))
            }
            other => {
                return Err(resolver.error(
                    cni,
                    format!("unknown cni `{other}` (expected antrea, calico or nsx)"),
                ))
            }
        }
    }
    resolver.unsupported(&config.calico, "[cluster.calico]")?;
    resolver.unsupported_list(&config.service, "Services")?;
    resolver.unsupported_list(&config.network_policy, "NetworkPolicy")?;
    resolver.unsupported_list(
        &config.cluster_network_policy,
        "Antrea ClusterNetworkPolicy",
    )?;
    resolver.unsupported_list(&config.egress, "Antrea Egress")?;

    let node_segment = match &config.node_segment {
        Some(name) => lookup_segment(name)?,
        None if segments.len() == 1 => 0,
        None => {
            return Err(resolver.error(
                &config.name,
                "cluster needs `node_segment` (the topology has several segments)",
            ))
        }
    };
    let pod_cidr = parse_cidr_or_default(resolver, &config.pod_cidr, DEFAULT_POD_CIDR)?;
    let service_cidr = parse_cidr_or_default(resolver, &config.service_cidr, DEFAULT_SERVICE_CIDR)?;
    if pod_cidr.contains(&service_cidr.network()) || service_cidr.contains(&pod_cidr.network()) {
        let at = config
            .service_cidr
            .as_ref()
            .map(|s| s.span())
            .or_else(|| config.pod_cidr.as_ref().map(|s| s.span()));
        return Err(resolver.source.error(
            at,
            format!("service_cidr {service_cidr} overlaps pod_cidr {pod_cidr}"),
        ));
    }
    let antrea = resolve_antrea(resolver, config, &segments[node_segment])?;
    let nodes = resolve_nodes(resolver, config, node_segment, pod_cidr, addresses)?;
    let namespaces = resolve_namespaces(resolver, config)?;
    let pods = resolve_pods(resolver, config, &nodes, &namespaces)?;
    Ok(Cluster {
        name,
        pod_cidr,
        service_cidr,
        node_segment,
        antrea,
        nodes,
        namespaces,
        pods,
    })
}

fn parse_cidr_or_default(
    resolver: &Resolver,
    value: &Option<Spanned<Ipv4Net>>,
    default: &str,
) -> Result<Ipv4Net> {
    match value {
        Some(cidr) => {
            let net = *cidr.get_ref();
            if net != net.trunc() {
                return Err(resolver.error(
                    cidr,
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                ));
            }
            Ok(net)
        }
        None => Ok(default.parse().unwrap_or_default()),
    }
}

fn resolve_antrea(
    resolver: &Resolver,
    config: &ClusterConfig,
    node_segment: &Segment,
) -> Result<AntreaSettings> {
    let default = Spanned::new(0..0, AntreaConfig::default());
    let antrea = config.antrea.as_ref().unwrap_or(&default).get_ref();
    if let Some(mode) = &antrea.traffic_encap_mode {
        match mode.get_ref().as_str() {
            "encap" => {}
            "noEncap" | "hybrid" | "networkPolicyOnly" => return Err(resolver.error(mode, format!("traffic_encap_mode `{}` is not modelled by this netsim version yet; use \"encap\"", mode.get_ref()))),
            other => return Err(resolver.error(mode, format!("unknown traffic_encap_mode `{other}` (expected encap, noEncap or hybrid)"))),
        }
    }
    if let Some(tunnel) = &antrea.tunnel_type {
        match tunnel.get_ref().as_str() {
            "geneve" => {}
            "vxlan" | "gre" | "stt" => {
                return Err(resolver.error(
                    tunnel,
                    format!(
                    "tunnel_type `{}` is not modelled by this netsim version yet; use \"geneve\"",
                    tunnel.get_ref()
                ),
                ))
            }
            other => {
                return Err(resolver.error(
                    tunnel,
                    format!("unknown tunnel_type `{other}` (expected geneve or vxlan)"),
                ))
            }
        }
    }
    resolver.unsupported(&antrea.node_port_local, "NodePortLocal")?;
    let requested = *antrea.mtu.get_ref();
    // Antrea deducts the tunnel overhead from the uplink MTU (pkg/agent/config/node_config.go):
    // 50 bytes for Geneve over IPv4.
    let overhead = u16::try_from(crate::wire::geneve::IPV4_OVERHEAD).unwrap_or(50);
    let pod_mtu = if requested == 0 {
        node_segment.mtu - overhead
    } else {
        requested
    };
    if !(576..=9216).contains(&pod_mtu) {
        return Err(resolver.error(
            &antrea.mtu,
            format!("pod mtu {pod_mtu} is outside 576..9216"),
        ));
    }
    Ok(AntreaSettings {
        traffic_encap_mode: TrafficEncapMode::Encap,
        tunnel_type: TunnelType::Geneve,
        no_snat: antrea.no_snat,
        pod_mtu,
    })
}

fn resolve_nodes(
    resolver: &Resolver,
    config: &ClusterConfig,
    node_segment: SegmentId,
    pod_cidr: Ipv4Net,
    addresses: &mut AddressBook,
) -> Result<Vec<Node>> {
    if config.node.is_empty() {
        return Err(resolver.error(&config.name, "cluster has no [[cluster.node]]"));
    }
    // First the explicit pod CIDRs, so allocation skips them.
    let mut taken: Vec<Ipv4Net> = Vec::new();
    for node in &config.node {
        if let Some(cidr) = &node.get_ref().pod_cidr {
            let net = *cidr.get_ref();
            if net != net.trunc() {
                return Err(resolver.error(
                    cidr,
                    format!("{net} has host bits set (did you mean {}?)", net.trunc()),
                ));
            }
            if !pod_cidr.contains(&net.network()) || net.prefix_len() < pod_cidr.prefix_len() {
                return Err(resolver.error(
                    cidr,
                    format!("node pod_cidr {net} is outside the cluster pod_cidr {pod_cidr}"),
                ));
            }
            if net.prefix_len() > 30 {
                return Err(resolver.error(
                    cidr,
                    format!("node pod_cidr {net} is too small for a gateway and pods"),
                ));
            }
            if let Some(other) = taken
                .iter()
                .find(|other| other.contains(&net.network()) || net.contains(&other.network()))
            {
                return Err(resolver.error(
                    cidr,
                    format!("node pod_cidr {net} overlaps {other} of another node"),
                ));
            }
            taken.push(net);
        }
    }
    let mut free_blocks = pod_cidr
        .subnets(NODE_CIDR_PREFIX.max(pod_cidr.prefix_len()))
        .into_iter()
        .flatten();
    let mut nodes = Vec::new();
    for spanned in &config.node {
        let node = spanned.get_ref();
        let name = node.name.get_ref().clone();
        let owner = format!("node {name}");
        let ip = match &node.ip {
            Some(ip) => {
                addresses
                    .claim(node_segment, *ip.get_ref(), &owner)
                    .map_err(|message| resolver.error(ip, format!("node {name}: {message}")))?;
                *ip.get_ref()
            }
            None => addresses
                .allocate(node_segment, 11, &owner)
                .ok_or_else(|| {
                    resolver.error(&node.name, "no free address left on the node segment")
                })?,
        };
        let node_pod_cidr = match &node.pod_cidr {
            Some(cidr) => *cidr.get_ref(),
            None => {
                let block = free_blocks
                    .find(|block| !taken.iter().any(|other| other.contains(&block.network()) || block.contains(&other.network())))
                    .ok_or_else(|| resolver.error(&node.name, format!("cluster pod_cidr {pod_cidr} has no free /{NODE_CIDR_PREFIX} left for this node")))?;
                taken.push(block);
                block
            }
        };
        nodes.push(Node {
            name,
            ip,
            pod_cidr: node_pod_cidr,
        });
    }
    Ok(nodes)
}

fn check_pod_cidrs_disjoint(
    resolver: &Resolver,
    file: &TopologyFile,
    clusters: &[Cluster],
) -> Result<()> {
    for (index, cluster) in clusters.iter().enumerate() {
        for other in &clusters[..index] {
            if cluster.pod_cidr.contains(&other.pod_cidr.network())
                || other.pod_cidr.contains(&cluster.pod_cidr.network())
            {
                let config = file.cluster[index].get_ref();
                let at = config
                    .pod_cidr
                    .as_ref()
                    .map(|s| s.span())
                    .unwrap_or_else(|| config.name.span());
                return Err(resolver.source.error(
                    Some(at),
                    format!(
                        "pod_cidr {} overlaps cluster {}'s {}",
                        cluster.pod_cidr, other.name, other.pod_cidr
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A cluster's pod and service networks must not overlap a segment: a node could not
/// tell a pod from a machine on its own wire.
fn check_cluster_networks_off_segments(
    resolver: &Resolver,
    file: &TopologyFile,
    clusters: &[Cluster],
    segments: &[Segment],
) -> Result<()> {
    let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(&b.network()) || b.contains(&a.network());
    for (index, cluster) in clusters.iter().enumerate() {
        let config = file.cluster[index].get_ref();
        for (what, net, at) in [
            (
                "pod_cidr",
                cluster.pod_cidr,
                config.pod_cidr.as_ref().map(|s| s.span()),
            ),
            (
                "service_cidr",
                cluster.service_cidr,
                config.service_cidr.as_ref().map(|s| s.span()),
            ),
        ] {
            if let Some(segment) = segments
                .iter()
                .find(|segment| overlaps(&net, &segment.cidr))
            {
                let at = at.unwrap_or_else(|| config.name.span());
                return Err(resolver.source.error(
                    Some(at),
                    format!(
                        "{what} {net} overlaps segment {} ({})",
                        segment.name, segment.cidr
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn resolve_namespaces(resolver: &Resolver, config: &ClusterConfig) -> Result<Vec<Namespace>> {
    unique_names(
        resolver,
        "namespace",
        config.namespace.iter().map(|n| &n.get_ref().name),
    )?;
    let mut namespaces: Vec<Namespace> = config
        .namespace
        .iter()
        .map(|n| {
            let mut labels = n.get_ref().labels.clone();
            // Every namespace carries its own name as a label (reference §d).
            labels.insert(
                "kubernetes.io/metadata.name".into(),
                n.get_ref().name.get_ref().clone(),
            );
            Namespace {
                name: n.get_ref().name.get_ref().clone(),
                labels,
            }
        })
        .collect();
    if !namespaces.iter().any(|n| n.name == "default") {
        let labels = BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            "default".to_string(),
        )]);
        namespaces.push(Namespace {
            name: "default".into(),
            labels,
        });
    }
    Ok(namespaces)
}

/// A pod to place: from a `[[cluster.pod]]` or expanded from a deployment.
struct PodRequest<'a> {
    name: String,
    name_at: &'a Text,
    namespace: Option<&'a Text>,
    node: Option<&'a Text>,
    ip: Option<&'a Spanned<Ipv4Addr>>,
    labels: BTreeMap<String, String>,
    ports: &'a [Spanned<ContainerPortConfig>],
}

fn resolve_pods(
    resolver: &Resolver,
    config: &ClusterConfig,
    nodes: &[Node],
    namespaces: &[Namespace],
) -> Result<Vec<Pod>> {
    let mut requests: Vec<PodRequest> = config
        .pod
        .iter()
        .map(|p| {
            let pod = p.get_ref();
            PodRequest {
                name: pod.name.get_ref().clone(),
                name_at: &pod.name,
                namespace: pod.namespace.as_ref(),
                node: pod.node.as_ref(),
                ip: pod.ip.as_ref(),
                labels: pod.labels.clone(),
                ports: &pod.ports,
            }
        })
        .collect();
    for deployment in &config.deployment {
        let deployment = deployment.get_ref();
        for replica in 0..deployment.replicas {
            requests.push(PodRequest {
                name: format!("{}-{replica}", deployment.name.get_ref()),
                name_at: &deployment.name,
                namespace: deployment.namespace.as_ref(),
                node: None,
                ip: None,
                labels: deployment.labels.clone(),
                ports: &deployment.ports,
            });
        }
    }
    let mut seen = BTreeSet::new();
    let mut used_ips: Vec<BTreeSet<Ipv4Addr>> = nodes
        .iter()
        .map(|node| BTreeSet::from([node.gateway_ip()]))
        .collect();
    // Explicit IPs first, so allocation skips them.
    let mut placements = Vec::new();
    let mut round_robin = 0usize;
    for request in &requests {
        let namespace = match request.namespace {
            Some(ns) => {
                if !namespaces.iter().any(|n| &n.name == ns.get_ref()) {
                    return Err(resolver.error(
                        ns,
                        format!(
                            "no namespace named `{}` (declare it with [[cluster.namespace]])",
                            ns.get_ref()
                        ),
                    ));
                }
                ns.get_ref().clone()
            }
            None => "default".to_string(),
        };
        if !seen.insert((namespace.clone(), request.name.clone())) {
            return Err(resolver.error(
                request.name_at,
                format!("duplicate pod `{namespace}/{}`", request.name),
            ));
        }
        let node = match request.node {
            Some(node_name) => nodes
                .iter()
                .position(|n| &n.name == node_name.get_ref())
                .ok_or_else(|| {
                    resolver.error(
                        node_name,
                        format!("no node named `{}` in this cluster", node_name.get_ref()),
                    )
                })?,
            None => {
                round_robin += 1;
                (round_robin - 1) % nodes.len()
            }
        };
        if let Some(ip) = request.ip {
            let address = *ip.get_ref();
            let node_cidr = nodes[node].pod_cidr;
            if !node_cidr.contains(&address)
                || address == node_cidr.network()
                || address == node_cidr.broadcast()
            {
                return Err(resolver.error(
                    ip,
                    format!(
                        "pod ip {address} is outside node {}'s pod CIDR {node_cidr}",
                        nodes[node].name
                    ),
                ));
            }
            if !used_ips[node].insert(address) {
                return Err(resolver.error(
                    ip,
                    format!(
                        "pod ip {address} is already in use on node {}",
                        nodes[node].name
                    ),
                ));
            }
        }
        placements.push((namespace, node));
    }
    let mut pods = Vec::new();
    for (request, (namespace, node)) in requests.iter().zip(placements) {
        let ip = match request.ip {
            Some(ip) => *ip.get_ref(),
            None => {
                let cidr = nodes[node].pod_cidr;
                let first = u32::from(cidr.network()) + 2;
                let address = (first..u32::from(cidr.broadcast()))
                    .map(Ipv4Addr::from)
                    .find(|address| !used_ips[node].contains(address))
                    .ok_or_else(|| {
                        resolver.error(
                            request.name_at,
                            format!("node {}'s pod CIDR {cidr} is full", nodes[node].name),
                        )
                    })?;
                used_ips[node].insert(address);
                address
            }
        };
        let mut ports = Vec::new();
        for port in request.ports {
            let port_config = port.get_ref();
            let protocol = parse_listen_protocol(resolver, &port_config.protocol)?;
            ports.push(ContainerPort {
                name: port_config.name.clone(),
                port: *port_config.port.get_ref(),
                protocol,
            });
        }
        pods.push(Pod {
            name: request.name.clone(),
            namespace,
            node,
            ip,
            labels: request.labels.clone(),
            ports,
        });
    }
    Ok(pods)
}

fn resolve_expect(
    resolver: &Resolver,
    topology: &mut Topology,
    spanned: &Spanned<ExpectConfig>,
) -> Result<Expectation> {
    let config = spanned.get_ref();
    let text = describe_expect(config);
    if let Some(router_name) = &config.router {
        let router = topology
            .routers
            .iter()
            .position(|r| &r.name == router_name.get_ref())
            .ok_or_else(|| {
                resolver.error(
                    router_name,
                    format!("no router named `{}`", router_name.get_ref()),
                )
            })?;
        let prefix = config
            .prefix
            .as_ref()
            .ok_or_else(|| resolver.error(spanned, "a routing expectation needs `prefix`"))?;
        return Ok(Expectation::Route {
            text,
            router,
            prefix: prefix.get_ref().trunc(),
            present: config.present.unwrap_or(true),
        });
    }
    let flow = match (&config.flow, &config.from, &config.to) {
        (Some(name), _, _) => topology
            .flows
            .iter()
            .position(|f| &f.name == name.get_ref())
            .ok_or_else(|| resolver.error(name, format!("no flow named `{}`", name.get_ref())))?,
        (None, Some(from), Some(to)) => {
            // A from/to expectation runs its own probe flow.
            let flow = super::endpoint::probe_flow(
                &resolver_view(resolver),
                topology,
                &format!("expect-{}", topology.expectations.len() + 1),
                from,
                to,
                config.protocol.as_ref(),
                config.port.as_ref(),
            )?;
            topology.flows.push(flow);
            topology.flows.len() - 1
        }
        _ => {
            return Err(resolver.error(
                spanned,
                "an expectation needs `flow`, or `from` and `to`, or `router` and `prefix`",
            ))
        }
    };
    let verdict = match &config.verdict {
        None => None,
        Some(text) => Some(match text.get_ref().as_str() {
            "delivered" => Verdict::Delivered,
            "dropped" => Verdict::Dropped,
            "no-reply" => Verdict::NoReply,
            other => {
                return Err(resolver.error(
                    text,
                    format!("unknown verdict `{other}` (expected delivered, dropped or no-reply)"),
                ))
            }
        }),
    };
    let mut via = Vec::new();
    for device in config.via.iter().flatten() {
        if !topology.has_device(device.get_ref()) {
            return Err(resolver.error(
                device,
                format!(
                    "no device named `{}` (routers, hosts, nodes and pods as NS/NAME)",
                    device.get_ref()
                ),
            ));
        }
        via.push(device.get_ref().clone());
    }
    Ok(Expectation::Flow {
        text,
        flow,
        verdict,
        dropped_by: config
            .dropped_by
            .as_ref()
            .map(|d| d.get_ref().clone())
            .filter(|d| !d.is_empty()),
        via,
        seen_source: config.seen_source.as_ref().map(|s| *s.get_ref()),
    })
}

/// How an expectation reads in reports: its keys as written.
fn describe_expect(config: &ExpectConfig) -> String {
    let mut parts = Vec::new();
    let mut text = |key: &str, value: &Option<Text>| {
        if let Some(value) = value {
            parts.push(format!("{key}={}", value.get_ref()));
        }
    };
    text("flow", &config.flow);
    text("from", &config.from);
    text("to", &config.to);
    text("protocol", &config.protocol);
    text("router", &config.router);
    text("verdict", &config.verdict);
    text("dropped_by", &config.dropped_by);
    if let Some(port) = &config.port {
        parts.push(format!("port={}", port.get_ref()));
    }
    if let Some(via) = &config.via {
        parts.push(format!(
            "via=[{}]",
            via.iter()
                .map(|d| d.get_ref().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(seen) = &config.seen_source {
        parts.push(format!("seen_source={}", seen.get_ref()));
    }
    if let Some(prefix) = &config.prefix {
        parts.push(format!("prefix={}", prefix.get_ref()));
    }
    if let Some(present) = config.present {
        parts.push(format!("present={present}"));
    }
    parts.join(" ")
}
