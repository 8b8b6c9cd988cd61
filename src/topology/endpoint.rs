//! Endpoint strings (`pod:NS/NAME`, `host:NAME`, `node:NAME`, `IP`, `IP:PORT`; SPEC §1)
//! and the flows built from them.

use super::config::{FlowConfig, Text};
use super::error::ConfigError;
use super::model::*;
use super::resolve::{parse_duration_ns, Resolver};
use std::net::Ipv4Addr;
use toml::Spanned;

type Result<T> = std::result::Result<T, ConfigError>;

/// Default request/response size and count when a flow leaves them out.
const DEFAULT_BYTES: u32 = 100;
/// `ping`'s default payload (56 data bytes, 64 with the ICMP header).
const DEFAULT_PING_BYTES: u32 = 56;

/// Splits an optional `:PORT` suffix off `text`.
fn split_port(text: &str) -> std::result::Result<(&str, Option<u16>), String> {
    match text.rsplit_once(':') {
        Some((head, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            let port: u16 = port
                .parse()
                .map_err(|_| format!("port `{port}` is out of range"))?;
            Ok((head, Some(port)))
        }
        _ => Ok((text, None)),
    }
}

/// Resolves an endpoint string against the topology: the endpoint and a port if the
/// string gave one.
pub fn parse_endpoint(
    topology: &Topology,
    text: &str,
) -> std::result::Result<(EndpointRef, Option<u16>), String> {
    if let Some(rest) = text.strip_prefix("pod:") {
        let (name, port) = split_port(rest)?;
        // pod:NAMESPACE/NAME, or pod:CLUSTER/NAMESPACE/NAME when several clusters
        // have a pod of that name.
        let parts: Vec<&str> = name.split('/').collect();
        let (cluster_name, namespace, pod_name) = match parts.as_slice() {
            [namespace, pod] => (None, *namespace, *pod),
            [cluster, namespace, pod] => (Some(*cluster), *namespace, *pod),
            _ => {
                return Err(format!(
                    "`{text}`: a pod is written pod:NAMESPACE/NAME (or pod:CLUSTER/NAMESPACE/NAME)"
                ))
            }
        };
        if let Some(cluster_name) = cluster_name {
            if !topology.clusters.iter().any(|c| c.name == cluster_name) {
                return Err(format!("no cluster `{cluster_name}`"));
            }
        }
        let found: Vec<EndpointRef> = topology
            .names
            .pods(namespace, pod_name)
            .iter()
            .filter(|(cluster_id, _)| {
                cluster_name.is_none_or(|wanted| wanted == topology.clusters[*cluster_id].name)
            })
            .map(|&(cluster, pod)| EndpointRef::Pod { cluster, pod })
            .collect();
        return match found.as_slice() {
            [one] => Ok((*one, port)),
            [] => Err(format!("no pod `{namespace}/{pod_name}`")),
            _ => Err(format!(
                "pod `{namespace}/{pod_name}` exists in several clusters; name one: pod:CLUSTER/{namespace}/{pod_name}"
            )),
        };
    }
    if let Some(rest) = text.strip_prefix("host:") {
        let (name, port) = split_port(rest)?;
        let host = topology
            .names
            .host(name)
            .ok_or_else(|| format!("no host `{name}`"))?;
        return Ok((EndpointRef::Host(host), port));
    }
    if let Some(rest) = text.strip_prefix("node:") {
        let (name, port) = split_port(rest)?;
        return match topology.names.node(name) {
            Some((cluster, node)) => Ok((EndpointRef::Node { cluster, node }, port)),
            None => Err(format!("no node `{name}`")),
        };
    }
    if let Some(rest) = text.strip_prefix("svc:") {
        let (name, port) = split_port(rest)?;
        let (cluster, service) = find_service(topology, name)?;
        let service = &topology.clusters[cluster].services[service];
        let port = service_port(service, port)?;
        return Ok((EndpointRef::Address(service.cluster_ip), Some(port.port)));
    }
    if let Some(rest) = text.strip_prefix("nodeport:") {
        let (name, port) = split_port(rest)?;
        let (cluster, node, service) = node_and_service(topology, name, || {
            format!("`{text}`: a NodePort is written nodeport:NODE/NS/NAME:PORT")
        })?;
        let port = service_port(service, port)?;
        let node_port = port.node_port.ok_or_else(|| {
            format!(
                "Service {} is type ClusterIP: it has no node port",
                service.qualified_name()
            )
        })?;
        return Ok((EndpointRef::Node { cluster, node }, Some(node_port)));
    }
    if let Some(rest) = text.strip_prefix("npl:") {
        let (name, port) = split_port(rest)?;
        let (pod_ref, _) = parse_endpoint(topology, &format!("pod:{name}"))?;
        let EndpointRef::Pod { cluster, pod } = pod_ref else {
            return Err(format!(
                "`{text}`: a NodePortLocal mapping is written npl:NS/POD:PORT"
            ));
        };
        let mappings: Vec<&NodePortLocalMapping> = topology.clusters[cluster]
            .node_port_local
            .iter()
            .filter(|m| m.pod == pod && port.is_none_or(|p| p == m.pod_port))
            .collect();
        let Some(mapping) = mappings.first() else {
            return Err(format!(
                "pod `{name}` has no NodePortLocal mapping{} (a Service with node_port_local = true must select it)",
                port.map(|p| format!(" for port {p}")).unwrap_or_default()
            ));
        };
        return Ok((
            EndpointRef::Node {
                cluster,
                node: mapping.node,
            },
            Some(mapping.node_port),
        ));
    }
    if let Some(rest) = text.strip_prefix("healthcheck:") {
        let (cluster, node, service) = node_and_service(topology, rest, || {
            format!("`{text}`: a health check is written healthcheck:NODE/NS/NAME")
        })?;
        let port = service.health_check_node_port.ok_or_else(|| {
            format!(
                "Service {} has no health-check node port (it needs type LoadBalancer and external_traffic_policy = \"Local\")",
                service.qualified_name()
            )
        })?;
        return Ok((EndpointRef::Node { cluster, node }, Some(port)));
    }
    if let Some(rest) = text.strip_prefix("lb:") {
        let (name, port) = split_port(rest)?;
        let (cluster, service) = find_service(topology, name)?;
        let service = &topology.clusters[cluster].services[service];
        let vip = service
            .load_balancer
            .as_ref()
            .map(|lb| lb.ip)
            .ok_or_else(|| {
                format!(
                    "Service {} is not type LoadBalancer",
                    service.qualified_name()
                )
            })?;
        let port = service_port(service, port)?;
        return Ok((EndpointRef::Address(vip), Some(port.port)));
    }
    let (address, port) = split_port(text)?;
    let address: Ipv4Addr = address.parse().map_err(|_| {
        format!(
            "`{text}` is not an endpoint (pod:NS/NAME, host:NAME, node:NAME, svc:NS/NAME:PORT, \
             nodeport:NODE/NS/NAME:PORT, lb:NS/NAME:PORT, npl:NS/POD:PORT, \
             healthcheck:NODE/NS/NAME, IP or IP:PORT)"
        )
    })?;
    Ok((EndpointRef::Address(address), port))
}

/// `NODE/NS/NAME`: the cluster, the node's index and the Service; `form` says how
/// the endpoint is written when `text` has no node part.
fn node_and_service<'t>(
    topology: &'t Topology,
    text: &str,
    form: impl FnOnce() -> String,
) -> std::result::Result<(usize, usize, &'t Service), String> {
    let Some((node_name, service_name)) = text.split_once('/') else {
        return Err(form());
    };
    let (cluster, service) = find_service(topology, service_name)?;
    let node = topology.clusters[cluster]
        .nodes
        .iter()
        .position(|n| n.name == node_name)
        .ok_or_else(|| format!("no node `{node_name}` in the Service's cluster"))?;
    Ok((cluster, node, &topology.clusters[cluster].services[service]))
}

/// The Service `NS/NAME` (in whichever cluster has it).
fn find_service(topology: &Topology, name: &str) -> std::result::Result<(usize, usize), String> {
    let Some((namespace, service_name)) = name.split_once('/') else {
        return Err(format!("`{name}`: a Service is written NS/NAME"));
    };
    topology
        .names
        .service(namespace, service_name)
        .ok_or_else(|| format!("no Service `{namespace}/{service_name}`"))
}

/// The Service port `port` names (its first port when none is given).
fn service_port(service: &Service, port: Option<u16>) -> std::result::Result<&ServicePort, String> {
    match port {
        None => service
            .ports
            .first()
            .ok_or_else(|| format!("Service {} has no ports", service.qualified_name())),
        Some(number) => service
            .ports
            .iter()
            .find(|p| p.port == number)
            .ok_or_else(|| {
                let ports: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
                format!(
                    "Service {} has no port {number} (its ports: {})",
                    service.qualified_name(),
                    ports.join(", ")
                )
            }),
    }
}

/// The first port the target listens on for `protocol` (SPEC §1).
fn first_listening_port(
    topology: &Topology,
    endpoint: EndpointRef,
    protocol: Protocol,
) -> Option<u16> {
    match endpoint {
        EndpointRef::Pod { cluster, pod } => {
            let ports = &topology.pod(cluster, pod).ports;
            ports
                .iter()
                .find(|p| p.protocol == protocol)
                .or(ports.first())
                .map(|p| p.port)
        }
        EndpointRef::Host(host) => {
            let listen = &topology.hosts[host].listen;
            listen
                .iter()
                .find(|p| p.protocol == protocol)
                .or(listen.first())
                .map(|p| p.port)
        }
        EndpointRef::Node { .. } | EndpointRef::Address(_) => None,
    }
}

/// What a flow's fields say, before resolution.
struct FlowRequest<'a> {
    name: String,
    name_at: &'a Spanned<String>,
    from: &'a Text,
    to: &'a Text,
    protocol: Option<&'a Text>,
    exchange: Option<&'a Text>,
    port_override: Option<&'a Spanned<u16>>,
    requests: Option<&'a Spanned<u32>>,
    bytes: Option<&'a Spanned<u32>>,
    start: Option<&'a Text>,
    dont_fragment: Option<bool>,
    connections: Option<&'a Spanned<u32>>,
}

/// Resolves a `[[flow]]`.
pub fn resolve_flow(
    resolver: &Resolver,
    topology: &Topology,
    spanned: &Spanned<FlowConfig>,
) -> Result<Flow> {
    let config = spanned.get_ref();
    build_flow(
        resolver,
        topology,
        FlowRequest {
            name: config.name.get_ref().clone(),
            name_at: &config.name,
            from: &config.from,
            to: &config.to,
            protocol: config.protocol.as_ref(),
            exchange: config.exchange.as_ref(),
            port_override: None,
            requests: config.requests.as_ref(),
            bytes: config.bytes.as_ref(),
            start: config.start.as_ref(),
            dont_fragment: config.dont_fragment,
            connections: config.connections.as_ref(),
        },
    )
}

/// The probe flow an `[[expect]]` with from/to runs.
pub fn probe_flow(
    resolver: &Resolver,
    topology: &Topology,
    name: &str,
    from: &Text,
    to: &Text,
    protocol: Option<&Text>,
    port: Option<&Spanned<u16>>,
) -> Result<Flow> {
    build_flow(
        resolver,
        topology,
        FlowRequest {
            name: name.to_string(),
            name_at: from,
            from,
            to,
            protocol,
            exchange: None,
            port_override: port,
            requests: None,
            bytes: None,
            start: None,
            dont_fragment: None,
            connections: None,
        },
    )
}

fn build_flow(resolver: &Resolver, topology: &Topology, request: FlowRequest) -> Result<Flow> {
    let (from, from_port) = parse_endpoint(topology, request.from.get_ref())
        .map_err(|m| resolver.error(request.from, m))?;
    if from_port.is_some() {
        return Err(resolver.error(
            request.from,
            "a flow's source takes no port (each connection picks an ephemeral one)",
        ));
    }
    if !matches!(from, EndpointRef::Pod { .. } | EndpointRef::Host(_)) {
        return Err(resolver.error(request.from, "a flow starts at a pod or a host"));
    }
    let (to, to_port) = parse_endpoint(topology, request.to.get_ref())
        .map_err(|m| resolver.error(request.to, m))?;
    if topology.endpoint_ip(to) == topology.endpoint_ip(from) {
        return Err(resolver.error(
            request.to,
            "a flow to its own source stays on the loopback interface; netsim models the network",
        ));
    }
    let protocol = match request.protocol {
        Some(text) => parse_flow_protocol(resolver, text)?,
        None if request.exchange.is_some_and(|e| e.get_ref() == "ping") => Protocol::Icmp,
        None => Protocol::Tcp,
    };
    let exchange = match request.exchange {
        None if protocol == Protocol::Icmp => Exchange::Ping,
        None => Exchange::RequestResponse,
        Some(text) => match (text.get_ref().as_str(), protocol) {
            ("request-response", Protocol::Tcp | Protocol::Udp) => Exchange::RequestResponse,
            ("ping", Protocol::Icmp) => Exchange::Ping,
            ("ping", _) => {
                return Err(resolver.error(text, "exchange `ping` needs protocol = \"icmp\""))
            }
            ("request-response", Protocol::Icmp) => {
                return Err(resolver.error(text, "ICMP flows use exchange = \"ping\""))
            }
            ("stream", _) => {
                return Err(resolver.error(
                    text,
                    "exchange `stream` is not modelled by this netsim version yet",
                ))
            }
            (other, _) => {
                return Err(resolver.error(
                    text,
                    format!(
                        "unknown exchange `{other}` (expected request-response, stream or ping)"
                    ),
                ))
            }
        },
    };
    let destination_port = match protocol {
        Protocol::Icmp => 0,
        _ => match request
            .port_override
            .map(|p| *p.get_ref())
            .or(to_port)
            .or_else(|| first_listening_port(topology, to, protocol))
        {
            Some(port) => port,
            None => {
                return Err(resolver.error(
                    request.to,
                    format!(
                        "`{}` listens on no port; give one as IP:PORT or list the target's ports",
                        request.to.get_ref()
                    ),
                ))
            }
        },
    };
    let requests = request.requests.map(|r| *r.get_ref()).unwrap_or(1);
    if requests == 0 || requests > 100_000 {
        let at = request.requests.map(|r| r.span());
        return Err(resolver.source.error(at, "requests must be 1..=100000"));
    }
    let bytes = request
        .bytes
        .map(|b| *b.get_ref())
        .unwrap_or(if exchange == Exchange::Ping {
            DEFAULT_PING_BYTES
        } else {
            DEFAULT_BYTES
        });
    let dont_fragment = request.dont_fragment.unwrap_or(true);
    check_bytes(
        resolver,
        topology,
        from,
        protocol,
        bytes,
        dont_fragment,
        request.bytes,
    )?;
    let start_ns = match request.start {
        Some(text) => parse_duration_ns(text.get_ref()).ok_or_else(|| {
            resolver.error(
                text,
                format!(
                    "`{}` is not a duration like \"0ms\" or \"1.5s\"",
                    text.get_ref()
                ),
            )
        })?,
        None => 0,
    };
    let connections = request.connections.map(|c| *c.get_ref()).unwrap_or(1);
    if connections == 0 || connections > 100_000 {
        let at = request.connections.map(|c| c.span());
        return Err(resolver.source.error(at, "connections must be 1..=1000"));
    }
    if request.name.is_empty()
        || request.name.contains(['/', '\\'])
        || request.name.starts_with('.')
    {
        return Err(resolver.error(request.name_at, "a flow name must be usable as a file name"));
    }
    Ok(Flow {
        name: request.name,
        from_text: request.from.get_ref().clone(),
        to_text: request.to.get_ref().clone(),
        from,
        to,
        destination_ip: topology.endpoint_ip(to),
        destination_port,
        protocol,
        exchange,
        requests,
        bytes,
        start_ns,
        dont_fragment,
        connections,
    })
}

fn parse_flow_protocol(resolver: &Resolver, text: &Text) -> Result<Protocol> {
    match text.get_ref().to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "icmp" => Ok(Protocol::Icmp),
        other => Err(resolver.error(
            text,
            format!("unknown protocol `{other}` (expected tcp, udp or icmp)"),
        )),
    }
}

/// Largest UDP or ICMP message a sender without DF may send: it is fragmented at the
/// source and must fit the endpoints' reassembly buffer (16 KiB).
pub const FRAGMENTED_MESSAGE_MAX: u32 = 16 * 1024 - 28;

/// A UDP or ICMP message with DF must fit one datagram at the sender's MTU (Linux
/// refuses a larger one with EMSGSIZE); without DF the sender fragments it.
fn check_bytes(
    resolver: &Resolver,
    topology: &Topology,
    from: EndpointRef,
    protocol: Protocol,
    bytes: u32,
    dont_fragment: bool,
    at: Option<&Spanned<u32>>,
) -> Result<()> {
    let mtu = match from {
        EndpointRef::Pod { cluster, .. } => topology.clusters[cluster].pod_mtu(),
        EndpointRef::Host(host) => topology.segments[topology.hosts[host].segment].mtu,
        _ => return Ok(()),
    };
    let limit = match protocol {
        Protocol::Tcp => 16 * 1024 * 1024,
        Protocol::Udp | Protocol::Icmp if dont_fragment => u32::from(mtu) - 28,
        Protocol::Udp | Protocol::Icmp => FRAGMENTED_MESSAGE_MAX,
    };
    if bytes == 0 || bytes > limit {
        let why = if protocol == Protocol::Tcp || !dont_fragment {
            String::new()
        } else {
            " with dont_fragment = true; set it to false to send fragments".to_string()
        };
        return Err(resolver.source.error(
            at.map(|b| b.span()),
            format!("bytes = {bytes} does not fit: a {} message from this sender carries 1..={limit} bytes (MTU {mtu}){why}", protocol.name()),
        ));
    }
    Ok(())
}

/// A flow from command-line endpoints (`netsim trace --from EP --to EP`); errors
/// point into the command line.
pub fn command_line_flow(
    topology: &Topology,
    from: &str,
    to: &str,
    protocol: Option<&str>,
    port: Option<u16>,
) -> Result<Flow> {
    let text = format!("--from {from} --to {to}");
    let source = super::error::Source::new("command line", text);
    let resolver = Resolver { source: &source };
    let from_at = 7..7 + from.len();
    let to_start = from_at.end + 6;
    let from_text = Spanned::new(from_at, from.to_string());
    let to_text = Spanned::new(to_start..to_start + to.len(), to.to_string());
    let protocol = protocol.map(|p| Spanned::new(0..0, p.to_string()));
    let port = port.map(|p| Spanned::new(0..0, p));
    probe_flow(
        &resolver,
        topology,
        "trace",
        &from_text,
        &to_text,
        protocol.as_ref(),
        port.as_ref(),
    )
}
