//! Antrea Egress (`[[cluster.egress]]`) and ExternalIPPools
//! (`[[cluster.external_ip_pool]]`), resolved as the Antrea controller and agents
//! would (reference §b "Egress CRD"; antrea docs/egress.md): the pods an Egress
//! applies to, its egress IP (given, or the first free address of its pool — a CIDR
//! range excludes its network and broadcast addresses), the node that holds the IP
//! (given, or chosen among the pool's nodes by a consistent hash of the IP, as the
//! agents' memberlist ring does), and the SNAT mark id each egress IP gets.

use super::config::Text;
use super::model::{Cluster, Namespace, Node, Pod, Segment, SegmentId, TrafficEncapMode};
use super::resolve::{parse_address_range, AddressBook, Resolver, Result};
use super::selector::{resolve_peer, PodPeerConfig};
use ipnet::Ipv4Net;
use serde::Deserialize;
use std::net::Ipv4Addr;
use toml::Spanned;

/// `[[cluster.egress]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    pub name: Text,
    #[serde(default)]
    pub applied_to: PodPeerConfig,
    #[serde(default)]
    pub egress_ip: Option<Text>,
    #[serde(default)]
    pub external_ip_pool: Option<Text>,
    /// The node that holds the egress IP.
    #[serde(default)]
    pub node: Option<Text>,
    /// Destinations this Egress leaves alone (antrea-agent `egress.exceptCIDRs`).
    #[serde(default)]
    pub except_cidrs: Vec<Text>,
}

/// `[[cluster.external_ip_pool]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIpPoolConfig {
    pub name: Text,
    /// `"A-B"` ranges or CIDRs.
    pub ip_ranges: Vec<Text>,
    /// The nodes the pool's nodeSelector selects (default: every node).
    #[serde(default)]
    pub nodes: Vec<Text>,
}

/// A resolved Egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub name: String,
    pub ip: Ipv4Addr,
    /// The node holding the IP (index in the cluster's nodes).
    pub node: usize,
    /// The pods whose external traffic it carries (indices in the cluster's pods);
    /// a pod selected by several Egresses belongs to the first.
    pub pods: Vec<usize>,
    pub except_cidrs: Vec<Ipv4Net>,
    /// The 8-bit SNAT-IP id the egress node's OVS marks new connections with
    /// (`pkt_mark`, SNATIPMarkMask 0xff), one per egress IP.
    pub mark: u32,
}

/// A pool's usable addresses, in order.
struct Pool<'a> {
    config: &'a Spanned<ExternalIpPoolConfig>,
    ranges: Vec<(u32, u32)>,
    nodes: Vec<usize>,
}

impl Pool<'_> {
    fn contains(&self, address: Ipv4Addr) -> bool {
        let address = u32::from(address);
        self.ranges
            .iter()
            .any(|(first, last)| (*first..=*last).contains(&address))
    }

    fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|(first, last)| (*first..=*last).map(Ipv4Addr::from))
    }
}

/// Resolves a cluster's Egresses and pools; egress IPs are claimed on their node's
/// segment.
#[allow(clippy::too_many_arguments)]
pub(super) fn resolve_egresses(
    resolver: &Resolver,
    egresses: &[Spanned<EgressConfig>],
    pools: &[Spanned<ExternalIpPoolConfig>],
    cluster: &Cluster,
    segments: &[Segment],
    addresses: &mut AddressBook,
) -> Result<Vec<Egress>> {
    let Some(first) = egresses.first() else {
        return Ok(Vec::new());
    };
    if cluster.cni != super::model::Cni::Antrea {
        return Err(resolver.error(
            first,
            "[[cluster.egress]] is Antrea's Egress; this cluster does not run Antrea",
        ));
    }
    if cluster.antrea.traffic_encap_mode == TrafficEncapMode::NoEncap {
        return Err(resolver.error(
            first,
            "Antrea Egress works only in encap and hybrid modes (docs/egress.md); \
             this cluster is noEncap",
        ));
    }
    super::resolve::unique_names(
        resolver,
        "egress",
        egresses.iter().map(|e| &e.get_ref().name),
    )?;
    let pools = resolve_pools(resolver, pools, &cluster.nodes)?;
    let mut resolved: Vec<Egress> = Vec::new();
    let mut marks: Vec<Ipv4Addr> = Vec::new();
    for spanned in egresses {
        let config = spanned.get_ref();
        let pool = match &config.external_ip_pool {
            Some(name) => Some(
                pools
                    .iter()
                    .find(|p| p.config.get_ref().name.get_ref() == name.get_ref())
                    .ok_or_else(|| {
                        resolver.error(
                            name,
                            format!("unknown external_ip_pool `{}`", name.get_ref()),
                        )
                    })?,
            ),
            None => None,
        };
        let ip = egress_ip(resolver, spanned, pool, &resolved)?;
        let node = egress_node(resolver, spanned, pool, &cluster.nodes, ip)?;
        let node_segment = cluster.nodes[node].segment;
        check_on_segment(
            resolver,
            spanned,
            ip,
            node_segment,
            segments,
            &cluster.nodes[node],
        )?;
        if !resolved.iter().any(|e| e.ip == ip) {
            let owner = format!("egress {}", config.name.get_ref());
            addresses
                .claim(node_segment, ip, &owner)
                .map_err(|message| {
                    resolver.error(config.egress_ip.as_ref().unwrap_or(&config.name), message)
                })?;
        } else if let Some(other) = resolved.iter().find(|e| e.ip == ip && e.node != node) {
            return Err(resolver.error(
                config.node.as_ref().unwrap_or(&config.name),
                format!(
                    "egress IP {ip} is held by node {} for egress {}",
                    cluster.nodes[other.node].name, other.name
                ),
            ));
        }
        let except_cidrs = config
            .except_cidrs
            .iter()
            .map(|text| {
                text.get_ref()
                    .trim()
                    .parse::<Ipv4Net>()
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        resolver.error(
                            text,
                            format!(
                                "except_cidrs entry `{}` is not a CIDR such as 192.168.0.0/16",
                                text.get_ref()
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let peer = resolve_peer(resolver, &config.applied_to)?;
        let pods = selected_pods(&peer, &cluster.pods, &cluster.namespaces, &resolved);
        let mark = match marks.iter().position(|m| *m == ip) {
            Some(index) => index + 1,
            None => {
                marks.push(ip);
                marks.len()
            }
        };
        if mark > 255 {
            return Err(resolver.error(
                spanned,
                "more than 255 egress IPs in one cluster (Antrea's SNAT mark is 8 bits)",
            ));
        }
        resolved.push(Egress {
            name: config.name.get_ref().clone(),
            ip,
            node,
            pods,
            except_cidrs,
            mark: u32::try_from(mark).unwrap_or(0),
        });
    }
    Ok(resolved)
}

fn selected_pods(
    peer: &super::selector::PodPeer,
    pods: &[Pod],
    namespaces: &[Namespace],
    earlier: &[Egress],
) -> Vec<usize> {
    (0..pods.len())
        .filter(|&index| peer.selects(&pods[index], namespaces))
        .filter(|index| !earlier.iter().any(|e| e.pods.contains(index)))
        .collect()
}

fn resolve_pools<'a>(
    resolver: &Resolver,
    pools: &'a [Spanned<ExternalIpPoolConfig>],
    nodes: &[Node],
) -> Result<Vec<Pool<'a>>> {
    super::resolve::unique_names(
        resolver,
        "external_ip_pool",
        pools.iter().map(|p| &p.get_ref().name),
    )?;
    let mut resolved = Vec::new();
    for spanned in pools {
        let config = spanned.get_ref();
        let mut ranges = Vec::new();
        for text in &config.ip_ranges {
            let range = if let Ok(cidr) = text.get_ref().trim().parse::<Ipv4Net>() {
                // A CIDR gives its hosts: no network, no broadcast (so /31 and /32
                // give nothing), as Antrea's IP allocator does.
                let cidr = cidr.trunc();
                (
                    u32::from(cidr.network()) + 1,
                    u32::from(cidr.broadcast()).saturating_sub(1),
                )
            } else if let Some((first, last)) = parse_address_range(text.get_ref()) {
                (u32::from(first), u32::from(last))
            } else {
                return Err(resolver.error(
                    text,
                    format!(
                        "ip_ranges entry `{}` is not a range (10.20.0.100-10.20.0.110) or a CIDR",
                        text.get_ref()
                    ),
                ));
            };
            if range.0 <= range.1 {
                ranges.push(range);
            }
        }
        let node_indices = if config.nodes.is_empty() {
            (0..nodes.len()).collect()
        } else {
            config
                .nodes
                .iter()
                .map(|name| node_index(resolver, name, nodes))
                .collect::<Result<Vec<_>>>()?
        };
        resolved.push(Pool {
            config: spanned,
            ranges,
            nodes: node_indices,
        });
    }
    Ok(resolved)
}

/// The index of the cluster node named `name`.
pub(super) fn node_index(resolver: &Resolver, name: &Text, nodes: &[Node]) -> Result<usize> {
    nodes
        .iter()
        .position(|n| &n.name == name.get_ref())
        .ok_or_else(|| {
            resolver.error(
                name,
                format!("no node named `{}` in this cluster", name.get_ref()),
            )
        })
}

/// The egress IP: as given (inside the pool when there is one), or the pool's first
/// address no earlier Egress holds.
fn egress_ip(
    resolver: &Resolver,
    spanned: &Spanned<EgressConfig>,
    pool: Option<&Pool>,
    earlier: &[Egress],
) -> Result<Ipv4Addr> {
    let config = spanned.get_ref();
    match (&config.egress_ip, pool) {
        (Some(text), pool) => {
            let ip: Ipv4Addr = text.get_ref().trim().parse().map_err(|_| {
                resolver.error(
                    text,
                    format!(
                        "egress_ip `{}` is not an IPv4 address such as 10.20.0.100",
                        text.get_ref()
                    ),
                )
            })?;
            if let Some(pool) = pool.filter(|p| !p.contains(ip)) {
                return Err(resolver.error(
                    text,
                    format!(
                        "egress_ip {ip} is not in external_ip_pool {}",
                        pool.config.get_ref().name.get_ref()
                    ),
                ));
            }
            Ok(ip)
        }
        (None, Some(pool)) => pool
            .addresses()
            .find(|address| !earlier.iter().any(|e| e.ip == *address))
            .ok_or_else(|| {
                resolver.error(
                    config.external_ip_pool.as_ref().unwrap_or(&config.name),
                    format!(
                        "external_ip_pool {} has no free address",
                        pool.config.get_ref().name.get_ref()
                    ),
                )
            }),
        (None, None) => {
            Err(resolver.error(spanned, "an egress needs `egress_ip` or `external_ip_pool`"))
        }
    }
}

/// The node holding the IP: as given (one of the pool's nodes when there is a pool),
/// or the pool node the IP hashes to (rendezvous hashing over node names: every agent
/// computes the same owner, as Antrea's consistent hash ring does).
fn egress_node(
    resolver: &Resolver,
    spanned: &Spanned<EgressConfig>,
    pool: Option<&Pool>,
    nodes: &[Node],
    ip: Ipv4Addr,
) -> Result<usize> {
    let config = spanned.get_ref();
    match (&config.node, pool) {
        (Some(name), pool) => {
            let node = node_index(resolver, name, nodes)?;
            if let Some(pool) = pool.filter(|p| !p.nodes.contains(&node)) {
                return Err(resolver.error(
                    name,
                    format!(
                        "node {} is not one of external_ip_pool {}'s nodes",
                        name.get_ref(),
                        pool.config.get_ref().name.get_ref()
                    ),
                ));
            }
            Ok(node)
        }
        (None, Some(pool)) => pool
            .nodes
            .iter()
            .copied()
            .max_by_key(|&node| rendezvous(&nodes[node].name, ip))
            .ok_or_else(|| resolver.error(spanned, "the external_ip_pool selects no node")),
        (None, None) => Err(resolver.error(
            spanned,
            "an egress_ip outside any external_ip_pool needs `node` (the node that holds it)",
        )),
    }
}

/// FNV-1a of the node name and the address.
fn rendezvous(node: &str, ip: Ipv4Addr) -> u64 {
    node.bytes()
        .chain(ip.octets())
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Antrea assigns the egress IP to the holding node's transport interface, so it
/// must be an address of that node's segment.
fn check_on_segment(
    resolver: &Resolver,
    spanned: &Spanned<EgressConfig>,
    ip: Ipv4Addr,
    segment: SegmentId,
    segments: &[Segment],
    node: &Node,
) -> Result<()> {
    let cidr = segments[segment].cidr;
    if cidr.contains(&ip) {
        return Ok(());
    }
    let config = spanned.get_ref();
    let at = config
        .egress_ip
        .as_ref()
        .or(config.external_ip_pool.as_ref())
        .unwrap_or(&config.name);
    Err(resolver.error(
        at,
        format!(
            "egress IP {ip} is outside segment {} ({cidr}) of node {}, which would hold it on its uplink",
            segments[segment].name, node.name
        ),
    ))
}
