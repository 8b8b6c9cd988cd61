//! Config -> model: checks every name, reference and address, applies defaults and
//! allocates what the file leaves out. The first mistake becomes a located
//! [`ConfigError`]; nothing here panics on input.

use super::cluster::*;
use super::config::*;
use super::error::{ConfigError, Source};
use super::expect::*;
use super::model::*;
use ipnet::Ipv4Net;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use toml::Spanned;

pub(super) type Result<T> = std::result::Result<T, ConfigError>;

/// Default latency of a segment (one switch hop in a rack).
pub(super) const DEFAULT_SEGMENT_LATENCY_NS: u64 = 50_000;

/// Turns spans into located errors for every part of the resolution.
pub struct Resolver<'a> {
    pub source: &'a Source,
}

impl Resolver<'_> {
    pub fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        self.source.error(Some(spanned.span()), message)
    }

    pub fn unsupported<T>(&self, spanned: &Option<Spanned<T>>, what: &str) -> Result<()> {
        match spanned {
            Some(value) => Err(self.error(
                value,
                format!("{what} is not modelled by this netsim version yet"),
            )),
            None => Ok(()),
        }
    }

    pub fn unsupported_list<T>(&self, list: &[Spanned<T>], what: &str) -> Result<()> {
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

pub(super) fn parse_protocol(text: &str) -> Option<Protocol> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "icmp" => Some(Protocol::Icmp),
        _ => None,
    }
}

/// Checks that no two items share a name.
pub(super) fn unique_names<'n>(
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

    // Routers, each cluster and the hosts are resolved independently of one another:
    // their mistakes are reported together (the flows, which name them, wait).
    let mut errors = Vec::new();
    let mut addresses = AddressBook::new(&segments);
    let routers = resolve_routers(&resolver, file, &segments, &lookup_segment, &mut addresses)
        .unwrap_or_else(|error| {
            errors.push(error);
            Vec::new()
        });
    let mut clusters = Vec::new();
    for cluster in &file.cluster {
        match resolve_cluster(
            &resolver,
            cluster,
            &routers,
            &segments,
            &lookup_segment,
            &mut addresses,
        ) {
            Ok(resolved) => clusters.push(resolved),
            Err(error) => errors.push(error),
        }
    }
    let hosts =
        resolve_hosts(&resolver, file, &lookup_segment, &mut addresses).unwrap_or_else(|error| {
            errors.push(error);
            Vec::new()
        });
    if let Some(error) = ConfigError::many(errors) {
        return Err(error);
    }
    check_pod_cidrs_disjoint(&resolver, file, &clusters)?;
    check_cluster_networks_off_segments(&resolver, file, &clusters, &segments)?;
    let mut routers = routers;
    add_service_snat_rules(&mut routers, &clusters);
    let transit = super::routing::resolve_uplinks(&resolver, file, &mut routers, segments.len())?;
    let mut segments = segments;
    segments.extend(transit);
    check_static_routes(&resolver, file, &routers, &segments)?;
    super::routing::check_bgp_neighbors(&resolver, file, &routers, &segments)?;

    if *file.topology.conntrack_max.get_ref() == 0 {
        return Err(resolver.error(
            &file.topology.conntrack_max,
            "conntrack_max must be at least 1 (nf_conntrack_max; the kernel's usual value is 262144)",
        ));
    }
    let names = EndpointNames::index(&clusters, &hosts);
    let mut topology = Topology {
        name: file.topology.name.get_ref().clone(),
        seed: file.topology.seed,
        conntrack_max: *file.topology.conntrack_max.get_ref(),
        flow_cache: true,
        segments,
        routers,
        hosts,
        clusters,
        flows: Vec::new(),
        expectations: Vec::new(),
        dfw: Vec::new(),
        dfw_default: crate::datapath::policy::PolicyAction::Allow,
        names,
    };
    resolve_firewall(&resolver, file, &mut topology)?;
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
    // Flows and expectations are independent of one another: every mistake among
    // them is reported in one pass (up to 20), not the first only.
    let mut errors = Vec::new();
    let mut failed_flows = std::collections::BTreeSet::new();
    for flow in &file.flow {
        match super::endpoint::resolve_flow(&resolver, &topology, flow) {
            Ok(resolved) => topology.flows.push(resolved),
            Err(error) => {
                failed_flows.insert(flow.get_ref().name.get_ref().clone());
                errors.push(error);
            }
        }
    }
    for expect in &file.expect {
        let about_failed_flow = expect
            .get_ref()
            .flow
            .as_ref()
            .is_some_and(|name| failed_flows.contains(name.get_ref()));
        if about_failed_flow {
            continue;
        }
        match resolve_expect(&resolver, &mut topology, expect) {
            Ok(expectation) => topology.expectations.push(expectation),
            Err(error) => errors.push(error),
        }
    }
    match ConfigError::many(errors) {
        Some(error) => Err(error),
        None => Ok(topology),
    }
}

pub(super) fn resolve_segments(
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
pub(super) struct AddressBook {
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
    pub(super) fn claim(
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
    pub(super) fn allocate(
        &mut self,
        segment: SegmentId,
        from: u32,
        owner: &str,
    ) -> Option<Ipv4Addr> {
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

pub(super) fn resolve_routers(
    resolver: &Resolver,
    file: &TopologyFile,
    segments: &[Segment],
    lookup_segment: &dyn Fn(&Text) -> Result<SegmentId>,
    addresses: &mut AddressBook,
) -> Result<Vec<Router>> {
    let mut routers = Vec::new();
    for (router_id, spanned) in file.router.iter().enumerate() {
        let config = spanned.get_ref();
        let kind = super::routing::router_kind(resolver, &config.kind)?;
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
                        name: None,
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
                name: None,
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
        let (ecmp, urpf) = super::routing::forwarding_options(resolver, config, kind)?;
        let advertise = super::routing::advertise(resolver, config, kind)?;
        let route_map_out = super::routing::route_map(resolver, config)?;
        let bgp = super::routing::bgp(resolver, config, kind, &interfaces)?;
        routers.push(Router {
            name,
            kind,
            interfaces,
            static_routes,
            ecmp,
            urpf,
            uplink: None,
            advertise,
            aggregates: super::routing::aggregates(config),
            route_map_out,
            bgp,
            snat: snat_rules(resolver, config)?,
        });
    }
    Ok(routers)
}

/// A router's `snat` rules: `translated` is one address or a range, required for
/// `snat` and refused for `no_snat`.
fn snat_rules(resolver: &Resolver, config: &RouterConfig) -> Result<Vec<SnatRule>> {
    use crate::engine::nat::{NatAction, NatPool};
    let mut rules = Vec::new();
    for (index, spanned) in config.snat.iter().enumerate() {
        let rule = spanned.get_ref();
        let name = rule
            .name
            .as_ref()
            .map_or_else(|| format!("snat[{index}]"), |name| name.get_ref().clone());
        let action = match rule.action.as_ref().map(|a| a.get_ref().as_str()) {
            None | Some("snat") => {
                let Some(translated) = &rule.translated else {
                    return Err(resolver.error(
                        spanned,
                        "an snat rule needs `translated` (one address or a range A-B)",
                    ));
                };
                let (first, last) = parse_address_range(translated.get_ref()).ok_or_else(|| {
                    resolver.error(
                        translated,
                        format!(
                            "translated `{}` is not one address (192.0.2.10) or a range \
                             (192.0.2.10-192.0.2.13)",
                            translated.get_ref()
                        ),
                    )
                })?;
                NatAction::Snat(NatPool::range(first, last).with_random_fully(rule.random_fully))
            }
            Some("no_snat") => {
                if let Some(translated) = &rule.translated {
                    return Err(resolver.error(
                        translated,
                        "a no_snat rule translates nothing: remove `translated`",
                    ));
                }
                NatAction::Keep
            }
            Some(other) => {
                return Err(resolver.error(
                    rule.action.as_ref().unwrap_or(&config.name),
                    format!("unknown snat action `{other}` (expected snat or no_snat)"),
                ))
            }
        };
        rules.push(SnatRule {
            name,
            match_source: rule.match_source.get_ref().trunc(),
            match_destination: rule.match_destination.as_ref().map(|d| d.get_ref().trunc()),
            action,
        });
    }
    Ok(rules)
}

/// NCP's per-Service SNAT rules go on the Tier-1 ahead of its own (namespace)
/// rules, "with higher priority than the namespace rule" (reference §e): one rule
/// per backend pod address, in the order the Services are written.
fn add_service_snat_rules(routers: &mut [Router], clusters: &[Cluster]) {
    use crate::engine::nat::{NatAction, NatPool};
    let mut inserted = vec![0usize; routers.len()];
    for service in clusters.iter().flat_map(|cluster| &cluster.services) {
        let Some(snat) = &service.snat else {
            continue;
        };
        for source in &snat.sources {
            let rule = SnatRule {
                name: format!("service:{}/{}", service.namespace, service.name),
                match_source: Ipv4Net::from(*source),
                match_destination: None,
                action: NatAction::Snat(NatPool::address(snat.ip)),
            };
            routers[snat.router]
                .snat
                .insert(inserted[snat.router], rule);
            inserted[snat.router] += 1;
        }
    }
}

/// The `[[dfw]]` sections over the topology's VMs (nodes and hosts), and the
/// default rule.
fn resolve_firewall(
    resolver: &Resolver,
    file: &TopologyFile,
    topology: &mut Topology,
) -> Result<()> {
    let vms: Vec<(String, usize)> = topology
        .clusters
        .iter()
        .flat_map(|cluster| {
            cluster
                .nodes
                .iter()
                .map(|node| (node.name.clone(), node.segment))
        })
        .chain(
            topology
                .hosts
                .iter()
                .map(|host| (host.name.clone(), host.segment)),
        )
        .collect();
    let segments = &topology.segments;
    let segment_of = |name: &Text| -> Result<usize> {
        segments
            .iter()
            .position(|segment| &segment.name == name.get_ref())
            .ok_or_else(|| resolver.error(name, format!("no segment named `{}`", name.get_ref())))
    };
    topology.dfw = super::dfw::resolve_dfw(resolver, &file.dfw, &segment_of, &vms)?;
    topology.dfw_default = match file
        .topology
        .dfw_default
        .as_ref()
        .map(|d| d.get_ref().as_str())
    {
        None | Some("allow") => crate::datapath::policy::PolicyAction::Allow,
        Some("drop") => crate::datapath::policy::PolicyAction::Drop,
        Some(other) => {
            return Err(resolver.error(
                file.topology
                    .dfw_default
                    .as_ref()
                    .unwrap_or(&file.topology.name),
                format!("unknown dfw_default `{other}` (expected allow or drop)"),
            ))
        }
    };
    Ok(())
}

/// An object's `namespace` (default `default`), which must be declared.
pub(super) fn namespace_of(
    resolver: &Resolver,
    namespace: Option<&Text>,
    namespaces: &[Namespace],
) -> Result<String> {
    match namespace {
        Some(ns) if !namespaces.iter().any(|n| &n.name == ns.get_ref()) => Err(resolver.error(
            ns,
            format!(
                "no namespace named `{}` (declare it with [[cluster.namespace]])",
                ns.get_ref()
            ),
        )),
        Some(ns) => Ok(ns.get_ref().clone()),
        None => Ok("default".to_string()),
    }
}

/// `A` or `A-B` with A <= B.
pub(super) fn parse_address_range(text: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (first.trim().parse().ok()?, last.trim().parse().ok()?),
        None => {
            let address: Ipv4Addr = text.trim().parse().ok()?;
            (address, address)
        }
    };
    (u32::from(first) <= u32::from(last)).then_some((first, last))
}

pub(super) fn check_static_routes(
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
            if !router.is_attached_to(segments, route.next_hop) {
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

pub(super) fn resolve_hosts(
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

pub(super) fn parse_listen_protocol(resolver: &Resolver, text: &Text) -> Result<Protocol> {
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
