//! Clusters: CNI settings, nodes and their pod CIDRs, namespaces, pods and
//! deployments — checked and allocated as kube-controller-manager and Antrea's IPAM do.

use super::calico::*;
use super::config::*;
use super::error::ConfigError;
use super::model::*;
use super::resolve::*;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use toml::Spanned;

type Result<T> = std::result::Result<T, ConfigError>;

/// Default cluster networks of a Tanzu Kubernetes cluster (TKC spec defaults
/// `pods.cidrBlocks: 192.168.0.0/16`, `services.cidrBlocks: 10.96.0.0/12`) [K].
const DEFAULT_POD_CIDR: &str = "192.168.0.0/16";
const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// kube-controller-manager `--node-cidr-mask-size` for IPv4.
const NODE_CIDR_PREFIX: u8 = 24;

pub(super) fn resolve_cluster(
    resolver: &Resolver,
    spanned: &Spanned<ClusterConfig>,
    routers: &[Router],
    segments: &[Segment],
    lookup_segment: &dyn Fn(&Text) -> Result<SegmentId>,
    addresses: &mut AddressBook,
) -> Result<Cluster> {
    let config = spanned.get_ref();
    let name = config.name.get_ref().clone();
    let cni = match config.cni.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("antrea") => Cni::Antrea,
        Some("calico") => Cni::Calico,
        Some("nsx") => {
            return Err(resolver.error(
                config.cni.as_ref().unwrap_or(&config.name),
                "cni `nsx` is not modelled by this netsim version yet; use cni = \"antrea\" or \"calico\"",
            ))
        }
        Some(other) => {
            return Err(resolver.error(
                config.cni.as_ref().unwrap_or(&config.name),
                format!("unknown cni `{other}` (expected antrea, calico or nsx)"),
            ))
        }
    };
    if cni == Cni::Antrea {
        if let Some(calico) = &config.calico {
            return Err(resolver.error(
                calico,
                "[cluster.calico] is for cni = \"calico\"; this cluster runs Antrea",
            ));
        }
    }

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
    let node_kernel = resolve_kernel(resolver, &config.node_kernel)?;
    let antrea = resolve_antrea(resolver, config, &segments[node_segment])?;
    let mut nodes = resolve_nodes(
        resolver,
        config,
        node_segment,
        lookup_segment,
        (cni == Cni::Antrea).then_some(pod_cidr),
        addresses,
    )?;
    let namespaces = resolve_namespaces(resolver, config)?;
    let (calico, pods) = match cni {
        Cni::Antrea => {
            let mut ipam = NodeCidrIpam::new(&nodes);
            (
                None,
                resolve_pods(resolver, config, &nodes, &namespaces, &mut ipam)?,
            )
        }
        Cni::Calico => {
            let settings =
                resolve_calico(resolver, config, pod_cidr, &nodes, &segments[node_segment])?;
            let mut ipam = CalicoIpam::new(&settings, &mut nodes)
                .map_err(|message| resolver.error(&config.name, message))?;
            let pods = resolve_pods(resolver, config, &nodes, &namespaces, &mut ipam)?;
            ipam.finish(&mut nodes);
            (Some(settings), pods)
        }
    };
    let services = super::service::resolve_services(
        resolver,
        config,
        service_cidr,
        &namespaces,
        &pods,
        routers,
        segments[node_segment].gateway,
    )?;
    let node_port_local = super::service::allocate_node_port_local(
        resolver,
        config,
        antrea.node_port_local.filter(|_| cni == Cni::Antrea),
        &services,
        &pods,
    )?;
    let mut cluster = Cluster {
        name,
        cni,
        calico,
        services,
        node_port_local,
        pod_cidr,
        service_cidr,
        node_segment,
        node_kernel,
        antrea,
        nodes,
        namespaces,
        pods,
        egresses: Vec::new(),
        network_policies: Vec::new(),
        cluster_network_policies: Vec::new(),
    };
    if cni == Cni::Calico {
        resolver.unsupported_list(
            &config.cluster_network_policy,
            "Antrea ClusterNetworkPolicy on a Calico cluster",
        )?;
    }
    cluster.cluster_network_policies = super::policy::resolve_cluster_network_policies(
        resolver,
        &config.cluster_network_policy,
        &cluster.pods,
        &cluster.namespaces,
    )?;
    cluster.network_policies = super::policy::resolve_network_policies(
        resolver,
        &config.network_policy,
        &cluster.pods,
        &cluster.namespaces,
    )?;
    cluster.egresses = super::egress::resolve_egresses(
        resolver,
        &config.egress,
        &config.external_ip_pool,
        &cluster,
        segments,
        addresses,
    )?;
    Ok(cluster)
}

pub(super) fn parse_cidr_or_default(
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

/// `node_kernel = "MAJOR.MINOR"` (a patch level or suffix after it is accepted).
fn resolve_kernel(resolver: &Resolver, value: &Option<Text>) -> Result<KernelVersion> {
    let Some(text) = value else {
        return Ok(KernelVersion::DEFAULT);
    };
    let mut parts = text
        .get_ref()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) if (2..=9).contains(&major) => {
            Ok(KernelVersion { major, minor })
        }
        _ => Err(resolver.error(
            text,
            format!(
                "node_kernel `{}` is not a Linux version such as \"5.15\" or \"4.19\"",
                text.get_ref()
            ),
        )),
    }
}

pub(super) fn resolve_antrea(
    resolver: &Resolver,
    config: &ClusterConfig,
    node_segment: &Segment,
) -> Result<AntreaSettings> {
    let default = Spanned::new(0..0, AntreaConfig::default());
    let antrea = config.antrea.as_ref().unwrap_or(&default).get_ref();
    if let Some(mode) = &antrea.traffic_encap_mode {
        match mode.get_ref().as_str() {
            "encap" => {}
            "noEncap" | "hybrid" => {}
            "networkPolicyOnly" => return Err(resolver.error(mode, "traffic_encap_mode `networkPolicyOnly` is not modelled by this netsim version yet; use \"encap\", \"noEncap\" or \"hybrid\"")),
            other => return Err(resolver.error(mode, format!("unknown traffic_encap_mode `{other}` (expected encap, noEncap or hybrid)"))),
        }
    }
    let mut tunnel_type = TunnelType::Geneve;
    if let Some(tunnel) = &antrea.tunnel_type {
        match tunnel.get_ref().as_str() {
            "geneve" => {}
            "vxlan" => tunnel_type = TunnelType::Vxlan,
            "gre" | "stt" => {
                return Err(resolver.error(
                    tunnel,
                    format!(
                    "tunnel_type `{}` is not modelled by this netsim version yet; use \"geneve\" or \"vxlan\"",
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
    let node_port_local = resolve_node_port_local(resolver, &antrea.node_port_local)?;
    let mode = match antrea
        .traffic_encap_mode
        .as_ref()
        .map(|m| m.get_ref().as_str())
    {
        Some("noEncap") => TrafficEncapMode::NoEncap,
        Some("hybrid") => TrafficEncapMode::Hybrid,
        _ => TrafficEncapMode::Encap,
    };
    // Antrea deducts the tunnel overhead from the uplink MTU (pkg/agent/config/node_config.go):
    // 50 bytes for Geneve or VXLAN over IPv4; nothing in noEncap mode, where pods are routed.
    let overhead = match mode {
        TrafficEncapMode::NoEncap => 0,
        TrafficEncapMode::Encap | TrafficEncapMode::Hybrid => {
            u16::try_from(tunnel_type.encapsulation().overhead()).unwrap_or(50)
        }
    };
    let pod_mtu = resolve_pod_mtu(resolver, &antrea.mtu, node_segment.mtu, overhead)?;
    Ok(AntreaSettings {
        traffic_encap_mode: mode,
        tunnel_type,
        no_snat: antrea.no_snat,
        proxy_all: antrea.proxy_all,
        snat_fully_random_ports: antrea.snat_fully_random_ports,
        pod_mtu,
        node_port_local,
    })
}

/// Antrea's NodePortLocal: on unless `enabled = false`; `port_range` "LOW-HIGH"
/// (default 61000-62000, Antrea's `nodePortLocal.portRange`).
fn resolve_node_port_local(
    resolver: &Resolver,
    config: &Option<Spanned<NodePortLocalConfig>>,
) -> Result<Option<(u16, u16)>> {
    let Some(config) = config else {
        return Ok(Some((61000, 62000)));
    };
    let npl = config.get_ref();
    if !npl.enabled {
        return Ok(None);
    }
    let Some(range) = &npl.port_range else {
        return Ok(Some((61000, 62000)));
    };
    let parsed = range.get_ref().split_once('-').and_then(|(low, high)| {
        Some((
            low.trim().parse::<u16>().ok()?,
            high.trim().parse::<u16>().ok()?,
        ))
    });
    match parsed {
        Some((low, high)) if low > 0 && low <= high => Ok(Some((low, high))),
        _ => Err(resolver.error(
            range,
            format!(
                "port_range `{}` is not LOW-HIGH such as \"61000-62000\"",
                range.get_ref()
            ),
        )),
    }
}

/// A CNI's pod MTU: as configured, or (0) the node segment's MTU less the
/// encapsulation's overhead; within 576..9216.
pub(super) fn resolve_pod_mtu(
    resolver: &Resolver,
    configured: &Spanned<u16>,
    segment_mtu: u16,
    overhead: u16,
) -> Result<u16> {
    let pod_mtu = match *configured.get_ref() {
        0 => segment_mtu - overhead,
        requested => requested,
    };
    if !(576..=9216).contains(&pod_mtu) {
        return Err(resolver.error(
            configured,
            format!("pod mtu {pod_mtu} is outside 576..9216"),
        ));
    }
    Ok(pod_mtu)
}

pub(super) fn resolve_nodes(
    resolver: &Resolver,
    config: &ClusterConfig,
    node_segment: SegmentId,
    lookup_segment: &dyn Fn(&Text) -> Result<SegmentId>,
    node_pod_cidrs: Option<Ipv4Net>,
    addresses: &mut AddressBook,
) -> Result<Vec<Node>> {
    if config.node.is_empty() {
        return Err(resolver.error(&config.name, "cluster has no [[cluster.node]]"));
    }
    // Calico ignores the node's podCIDR: its IPAM hands out blocks (calico.rs).
    if node_pod_cidrs.is_none() {
        if let Some(cidr) = config
            .node
            .iter()
            .find_map(|n| n.get_ref().pod_cidr.as_ref())
        {
            return Err(resolver.error(
                cidr,
                "with cni = \"calico\" a node has no pod_cidr: Calico IPAM gives it blocks of the ip pools (see [cluster.calico] block_size)",
            ));
        }
    }
    let pod_cidr = node_pod_cidrs.unwrap_or_default();
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
        let node_segment = match &node.segment {
            Some(segment) => lookup_segment(segment)?,
            None => node_segment,
        };
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
            None if node_pod_cidrs.is_none() => Ipv4Net::default(),
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
            segment: node_segment,
            blocks: Vec::new(),
            tunnel_ip: None,
        });
    }
    Ok(nodes)
}

pub(super) fn check_pod_cidrs_disjoint(
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
pub(super) fn check_cluster_networks_off_segments(
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

pub(super) fn resolve_namespaces(
    resolver: &Resolver,
    config: &ClusterConfig,
) -> Result<Vec<Namespace>> {
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
pub(super) struct PodRequest<'a> {
    name: String,
    name_at: &'a Text,
    namespace: Option<&'a Text>,
    node: Option<&'a Text>,
    ip: Option<&'a Spanned<Ipv4Addr>>,
    labels: BTreeMap<String, String>,
    ports: &'a [Spanned<ContainerPortConfig>],
}

pub(super) fn resolve_pods(
    resolver: &Resolver,
    config: &ClusterConfig,
    nodes: &[Node],
    namespaces: &[Namespace],
    addresses: &mut dyn PodAddresses,
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
            addresses
                .reserve(node, *ip.get_ref())
                .map_err(|message| resolver.error(ip, message))?;
        }
        placements.push((namespace, node));
    }
    let mut pods = Vec::new();
    for (request, (namespace, node)) in requests.iter().zip(placements) {
        let ip = match request.ip {
            Some(ip) => *ip.get_ref(),
            None => addresses
                .allocate(node)
                .map_err(|message| resolver.error(request.name_at, message))?,
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
