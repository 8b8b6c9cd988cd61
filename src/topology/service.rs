//! Services (SPEC §2 `[[cluster.service]]`, reference §c): type, ports with their
//! target ports resolved on every selected pod (the EndpointSlice), a ClusterIP
//! allocated from the service CIDR when not given, node ports from 30000–32767.
//! The apiserver hands out dynamic ClusterIPs and node ports from the upper part of
//! each range (KEP-3070, KEP-3668), so that is where allocation starts here, going
//! down, which keeps it deterministic.

use super::config::*;
use super::error::ConfigError;
use super::model::*;
use super::resolve::Resolver;
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use toml::Spanned;

type Result<T> = std::result::Result<T, ConfigError>;

/// kube-apiserver `--service-node-port-range` default.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// `sessionAffinityConfig.clientIP.timeoutSeconds` default (3 hours).
const AFFINITY_TIMEOUT_SECONDS: u64 = 10_800;

/// What a Service's ports aim at on each pod.
enum TargetPort {
    Number(u16),
    Name(String),
}

/// Resolves every `[[cluster.service]]` of a cluster whose pods are placed.
pub(super) fn resolve_services(
    resolver: &Resolver,
    config: &ClusterConfig,
    service_cidr: Ipv4Net,
    namespaces: &[Namespace],
    pods: &[Pod],
    routers: &[Router],
    gateway: Option<RouterId>,
) -> Result<Vec<Service>> {
    let mut snat_taken: BTreeSet<Ipv4Addr> = BTreeSet::new();
    super::resolve::unique_names(
        resolver,
        "service",
        config.service.iter().map(|s| &s.get_ref().name),
    )?;
    let mut taken_ips: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut taken_node_ports: BTreeSet<u16> = BTreeSet::new();
    let by_namespace = super::selector::PodsByNamespace::new(pods);
    // Explicit addresses and node ports first, so allocation skips them.
    for spanned in &config.service {
        let service = spanned.get_ref();
        if let Some(ip) = &service.cluster_ip {
            let address = *ip.get_ref();
            if !service_cidr.contains(&address)
                || address == service_cidr.network()
                || address == service_cidr.broadcast()
            {
                return Err(resolver.error(
                    ip,
                    format!("cluster_ip {address} is outside service_cidr {service_cidr}"),
                ));
            }
            if !taken_ips.insert(address) {
                return Err(resolver.error(
                    ip,
                    format!("cluster_ip {address} is taken by another Service"),
                ));
            }
        }
        for port in &service.ports {
            if let Some(node_port) = &port.get_ref().node_port {
                let number = *node_port.get_ref();
                if !NODE_PORT_RANGE.contains(&number) {
                    return Err(resolver.error(
                        node_port,
                        format!("node_port {number} is outside the node port range 30000-32767"),
                    ));
                }
                if !taken_node_ports.insert(number) {
                    return Err(
                        resolver.error(node_port, format!("node_port {number} is used twice"))
                    );
                }
            }
        }
    }
    let mut services = Vec::new();
    for spanned in &config.service {
        let service = spanned.get_ref();
        refuse_not_modelled(resolver, service)?;
        let namespace =
            super::resolve::namespace_of(resolver, service.namespace.as_ref(), namespaces)?;
        let kind = match service.kind.as_ref().map(|k| k.get_ref().as_str()) {
            None | Some("ClusterIP") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some(other) => {
                return Err(resolver.error(
                    service.kind.as_ref().unwrap_or(&service.name),
                    format!(
                    "unknown Service type `{other}` (expected ClusterIP, NodePort or LoadBalancer)"
                ),
                ))
            }
        };
        let cluster_ip = match &service.cluster_ip {
            Some(ip) => *ip.get_ref(),
            None => allocate_cluster_ip(service_cidr, &mut taken_ips).ok_or_else(|| {
                resolver.error(
                    &service.name,
                    format!("service_cidr {service_cidr} is full"),
                )
            })?,
        };
        // A Service's selector is a matchLabels selector.
        let selector = super::selector::LabelSelector {
            match_labels: service.selector.clone(),
            expressions: Vec::new(),
        };
        let selected: Vec<usize> = if service.selector.is_empty() {
            Vec::new() // a Service without a selector has no automatic endpoints
        } else {
            by_namespace
                .in_namespace(&namespace)
                .iter()
                .copied()
                .filter(|&index| selector.matches(&pods[index].labels))
                .collect()
        };
        let mut ports = Vec::new();
        for spanned_port in &service.ports {
            ports.push(resolve_port(
                resolver,
                spanned_port,
                kind,
                pods,
                &selected,
                &mut taken_node_ports,
            )?);
        }
        let load_balancer = resolve_load_balancer(resolver, spanned, kind, routers)?;
        let external_local = traffic_policy(
            resolver,
            &service.external_traffic_policy,
            "external_traffic_policy",
        )?;
        let health_check_node_port = if kind == ServiceType::LoadBalancer && external_local {
            let free = NODE_PORT_RANGE
                .rev()
                .find(|p| !taken_node_ports.contains(p))
                .ok_or_else(|| resolver.error(&service.name, "the node port range is full"))?;
            taken_node_ports.insert(free);
            Some(free)
        } else {
            None
        };
        let snat = match &service.snat_pool {
            Some(pool) => Some(service_snat(
                resolver,
                pool,
                gateway,
                routers,
                &mut snat_taken,
                selected.iter().map(|&pod| pods[pod].ip).collect(),
            )?),
            None => None,
        };
        services.push(Service {
            snat,
            name: service.name.get_ref().clone(),
            namespace,
            kind,
            cluster_ip,
            ports,
            external_local: traffic_policy(
                resolver,
                &service.external_traffic_policy,
                "external_traffic_policy",
            )?,
            load_balancer,
            health_check_node_port,
            affinity_timeout_ns: service
                .session_affinity
                .as_ref()
                .filter(|a| a.get_ref() == "ClientIP")
                .map(|_| AFFINITY_TIMEOUT_SECONDS * 1_000_000_000),
            internal_local: traffic_policy(
                resolver,
                &service.internal_traffic_policy,
                "internal_traffic_policy",
            )?,
        });
    }
    Ok(services)
}

/// NCP's `ncp/snat_pool`: the first free address of the pool, on the NSX Tier-1 that
/// is the cluster's node-segment gateway (reference §e: per-Service SNAT for the
/// backend pods, before the namespace rule).
fn service_snat(
    resolver: &Resolver,
    pool: &Text,
    gateway: Option<RouterId>,
    routers: &[Router],
    taken: &mut BTreeSet<Ipv4Addr>,
    sources: Vec<Ipv4Addr>,
) -> Result<ServiceSnat> {
    let router = gateway
        .filter(|&router| routers[router].kind == RouterKind::NsxTier1)
        .ok_or_else(|| {
            resolver.error(
                pool,
                "snat_pool is NCP's per-Service SNAT: the cluster's node segment needs an nsx-t1 gateway",
            )
        })?;
    let (first, last) = match pool.get_ref().trim().parse::<Ipv4Net>() {
        Ok(cidr) => (
            u32::from(cidr.network()) + 1,
            u32::from(cidr.broadcast()).saturating_sub(1),
        ),
        Err(_) => super::resolve::parse_address_range(pool.get_ref())
            .map(|(a, b)| (u32::from(a), u32::from(b)))
            .ok_or_else(|| {
                resolver.error(
                    pool,
                    format!(
                        "snat_pool `{}` is not a range (10.20.200.16-10.20.200.31) or a CIDR",
                        pool.get_ref()
                    ),
                )
            })?,
    };
    let ip = (first..=last)
        .map(Ipv4Addr::from)
        .find(|address| !taken.contains(address))
        .ok_or_else(|| {
            resolver.error(
                pool,
                format!(
                    "snat_pool `{}` has no free address (IP_POOL_EXHAUSTED)",
                    pool.get_ref()
                ),
            )
        })?;
    taken.insert(ip);
    Ok(ServiceSnat {
        router,
        ip,
        sources,
    })
}

/// A LoadBalancer Service's `load_balancer_ip` on `load_balancer.router`, its
/// backend mode, SNAT and source ranges; the fields belong to type LoadBalancer only.
fn resolve_load_balancer(
    resolver: &Resolver,
    spanned: &Spanned<ServiceConfig>,
    kind: ServiceType,
    routers: &[Router],
) -> Result<Option<LoadBalancer>> {
    let service = spanned.get_ref();
    if kind != ServiceType::LoadBalancer {
        if let Some(ip) = &service.load_balancer_ip {
            return Err(resolver.error(ip, "load_balancer_ip needs type LoadBalancer"));
        }
        if let Some(lb) = &service.load_balancer {
            return Err(resolver.error(lb, "load_balancer needs type LoadBalancer"));
        }
        return Ok(None);
    }
    let Some(ip) = &service.load_balancer_ip else {
        return Err(resolver.error(
            &service.name,
            "a LoadBalancer Service needs load_balancer_ip (the VIP) and load_balancer = { router = ... }",
        ));
    };
    let Some(config) = &service.load_balancer else {
        return Err(resolver.error(
            &service.name,
            "a LoadBalancer Service needs load_balancer = { router = \"...\" } (where its VIP lives)",
        ));
    };
    let config = config.get_ref();
    let router = routers
        .iter()
        .position(|r| &r.name == config.router.get_ref())
        .ok_or_else(|| {
            resolver.error(
                &config.router,
                format!(
                    "no router named `{}` for the load balancer",
                    config.router.get_ref()
                ),
            )
        })?;
    let backend = match config.backend.as_ref().map(|b| b.get_ref().as_str()) {
        None | Some("nodeport") => LbBackend::NodePort,
        Some("nodeportlocal") => {
            if !service.node_port_local.as_ref().is_some_and(|n| *n.get_ref()) {
                return Err(resolver.error(
                    config.backend.as_ref().unwrap_or(&config.router),
                    "backend nodeportlocal needs node_port_local = true on the Service",
                ));
            }
            LbBackend::NodePortLocal
        }
        Some("clusterip") => LbBackend::ClusterIp,
        Some(other) => {
            return Err(resolver.error(
                config.backend.as_ref().unwrap_or(&config.router),
                format!("unknown load balancer backend `{other}` (expected nodeport, nodeportlocal or clusterip)"),
            ))
        }
    };
    let snat_automap = match config.snat.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("automap") => true,
        Some("none") => false,
        Some(other) => {
            return Err(resolver.error(
                config.snat.as_ref().unwrap_or(&config.router),
                format!("unknown load balancer snat `{other}` (expected automap or none)"),
            ))
        }
    };
    Ok(Some(LoadBalancer {
        ip: *ip.get_ref(),
        router,
        backend,
        snat_automap,
        source_ranges: service
            .load_balancer_source_ranges
            .iter()
            .map(|r| r.get_ref().trunc())
            .collect(),
    }))
}

/// What later issues build (affinity, NodePortLocal, load balancers) is refused,
/// located, rather than ignored.
fn refuse_not_modelled(resolver: &Resolver, service: &ServiceConfig) -> Result<()> {
    if let Some(affinity) = &service.session_affinity {
        match affinity.get_ref().as_str() {
            "None" => {}
            "ClientIP" => {}
            other => {
                return Err(resolver.error(
                    affinity,
                    format!("unknown session_affinity `{other}` (expected None or ClientIP)"),
                ))
            }
        }
    }
    Ok(())
}

fn traffic_policy(resolver: &Resolver, value: &Option<Text>, what: &str) -> Result<bool> {
    match value.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(resolver.error(
            value.as_ref().expect("matched Some"),
            format!("unknown {what} `{other}` (expected Cluster or Local)"),
        )),
    }
}

/// The highest free address of the service CIDR (the apiserver's dynamic band).
fn allocate_cluster_ip(cidr: Ipv4Net, taken: &mut BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let low = u32::from(cidr.network()) + 1;
    let high = u32::from(cidr.broadcast()).checked_sub(1)?;
    let address = (low..=high)
        .rev()
        .map(Ipv4Addr::from)
        .find(|address| !taken.contains(address))?;
    taken.insert(address);
    Some(address)
}

fn resolve_port(
    resolver: &Resolver,
    spanned: &Spanned<ServicePortConfig>,
    kind: ServiceType,
    pods: &[Pod],
    selected: &[usize],
    taken_node_ports: &mut BTreeSet<u16>,
) -> Result<ServicePort> {
    let config = spanned.get_ref();
    let protocol = super::resolve::parse_listen_protocol(resolver, &config.protocol)?;
    let port = *config.port.get_ref();
    let target = match &config.target_port {
        None => TargetPort::Number(port),
        Some(value) => match value.get_ref() {
            toml::Value::Integer(number) => match u16::try_from(*number) {
                Ok(number) if number > 0 => TargetPort::Number(number),
                _ => {
                    return Err(resolver.error(value, format!("target_port {number} is not a port")))
                }
            },
            toml::Value::String(name) => match name.parse::<u16>() {
                Ok(number) => TargetPort::Number(number),
                Err(_) => TargetPort::Name(name.clone()),
            },
            _ => {
                return Err(resolver.error(
                    value,
                    "target_port is a port number or the name of a container port",
                ))
            }
        },
    };
    // A named target port must be declared by some selected pod (each pod
    // resolves it on its own; one without it is no endpoint for this port).
    if let (TargetPort::Name(name), Some(value)) = (&target, &config.target_port) {
        let declared = selected.iter().any(|&pod| {
            pods[pod]
                .ports
                .iter()
                .any(|p| p.name.as_deref() == Some(name.as_str()))
        });
        if !declared && !selected.is_empty() {
            return Err(resolver.error(
                value,
                format!("target_port `{name}` is declared by none of the selected pods"),
            ));
        }
    }
    let endpoints = selected
        .iter()
        .filter_map(|&pod| {
            let target_port = match &target {
                TargetPort::Number(number) => Some(*number),
                TargetPort::Name(name) => pods[pod]
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol)
                    .map(|p| p.port),
            }?;
            Some(ServiceEndpoint {
                pod,
                node: pods[pod].node,
                ip: pods[pod].ip,
                port: target_port,
            })
        })
        .collect();
    let node_port = match (kind, &config.node_port) {
        (ServiceType::ClusterIp, Some(node_port)) => {
            return Err(resolver.error(node_port, "node_port needs type NodePort"))
        }
        (ServiceType::ClusterIp, None) => None,
        (ServiceType::NodePort | ServiceType::LoadBalancer, Some(node_port)) => {
            Some(*node_port.get_ref())
        }
        (ServiceType::NodePort | ServiceType::LoadBalancer, None) => {
            let free = NODE_PORT_RANGE
                .rev()
                .find(|p| !taken_node_ports.contains(p))
                .ok_or_else(|| resolver.error(&config.port, "the node port range is full"))?;
            taken_node_ports.insert(free);
            Some(free)
        }
    };
    Ok(ServicePort {
        name: config.name.clone(),
        port,
        protocol,
        node_port,
        endpoints,
    })
}

/// NodePortLocal (Antrea, reference §b): for every Service with `node_port_local`,
/// each selected pod's target ports get a port on the pod's own node, taken from the
/// range by a search cursor per node and protocol (the first is the range start, then
/// the next, …); a pod port shared by several Services keeps its one mapping.
pub(super) fn allocate_node_port_local(
    resolver: &Resolver,
    config: &ClusterConfig,
    range: Option<(u16, u16)>,
    services: &[Service],
    pods: &[Pod],
) -> Result<Vec<NodePortLocalMapping>> {
    let mut mappings: Vec<NodePortLocalMapping> = Vec::new();
    let mut cursors: std::collections::BTreeMap<(usize, u8), u16> = Default::default();
    for (service, spanned) in services.iter().zip(&config.service) {
        let Some(enabled) = &spanned.get_ref().node_port_local else {
            continue;
        };
        if !*enabled.get_ref() {
            continue;
        }
        let Some((low, high)) = range else {
            return Err(resolver.error(
                enabled,
                "node_port_local is Antrea's NodePortLocal: the cluster's CNI is not Antrea, or [cluster.antrea] node_port_local has enabled = false",
            ));
        };
        for port in &service.ports {
            for endpoint in &port.endpoints {
                let known = mappings.iter().any(|m| {
                    m.pod == endpoint.pod
                        && m.pod_port == endpoint.port
                        && m.protocol == port.protocol
                });
                if known {
                    continue;
                }
                let cursor = cursors
                    .entry((endpoint.node, port.protocol.number()))
                    .or_insert(low);
                if *cursor > high {
                    return Err(resolver.error(
                        enabled,
                        format!(
                            "NodePortLocal range {low}-{high} is exhausted on the node of pod {}",
                            pods[endpoint.pod].qualified_name()
                        ),
                    ));
                }
                mappings.push(NodePortLocalMapping {
                    pod: endpoint.pod,
                    node: endpoint.node,
                    protocol: port.protocol,
                    pod_port: endpoint.port,
                    node_port: *cursor,
                });
                *cursor += 1;
            }
        }
    }
    Ok(mappings)
}
