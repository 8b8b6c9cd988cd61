//! Calico's settings and IPAM (reference §f): IP pools carved into blocks of
//! `block_size` (default /26, range 20..32), each block affine to the node that
//! claimed it; a node takes addresses from its own blocks, claims a new free block
//! when they are full, and borrows from another node's block when the pools have
//! no free block left (Calico's default `strictAffinity: false`). A borrowed address
//! is what later shows up as a /32 route. Blocks are claimed in pool order, which
//! keeps the allocation deterministic (Calico picks a free block at random).

use super::config::*;
use super::error::ConfigError;
use super::model::*;
use super::resolve::Resolver;
use ipnet::Ipv4Net;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use toml::Spanned;

type Result<T> = std::result::Result<T, ConfigError>;

/// Calico's default AS number for nodes (BGPConfiguration `asNumber`).
pub const DEFAULT_ASN: u32 = 64512;
/// IPPool `blockSize` default for IPv4.
const DEFAULT_BLOCK_SIZE: u8 = 26;

fn encap_mode(
    resolver: &Resolver,
    value: &Option<Text>,
    default: CalicoEncapMode,
    what: &str,
) -> Result<CalicoEncapMode> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.get_ref().as_str() {
        "Always" => Ok(CalicoEncapMode::Always),
        "CrossSubnet" => Ok(CalicoEncapMode::CrossSubnet),
        "Never" => Ok(CalicoEncapMode::Never),
        other => Err(resolver.error(
            text,
            format!("unknown {what} `{other}` (expected Always, CrossSubnet or Never)"),
        )),
    }
}

/// `[cluster.calico]` with the cluster's nodes (already resolved, for names).
pub(super) fn resolve_calico(
    resolver: &Resolver,
    config: &ClusterConfig,
    pod_cidr: Ipv4Net,
    nodes: &[Node],
    node_segment: &Segment,
) -> Result<CalicoSettings> {
    let default = Spanned::new(0..0, empty_config());
    let spanned = config.calico.as_ref().unwrap_or(&default);
    let calico = spanned.get_ref();
    let node_index = |name: &Text| super::egress::node_index(resolver, name, nodes);
    // calico.yaml: CALICO_IPV4POOL_IPIP=Always, VXLAN Never.
    let ipip_mode = encap_mode(
        resolver,
        &calico.ipip_mode,
        CalicoEncapMode::Always,
        "ipip_mode",
    )?;
    let vxlan_mode = encap_mode(
        resolver,
        &calico.vxlan_mode,
        CalicoEncapMode::Never,
        "vxlan_mode",
    )?;
    if ipip_mode != CalicoEncapMode::Never && vxlan_mode != CalicoEncapMode::Never {
        let at = calico.vxlan_mode.as_ref().or(calico.ipip_mode.as_ref());
        let message = "a Calico pool cannot use both ipip_mode and vxlan_mode; set one of them to \"Never\" (ipip_mode defaults to \"Always\")";
        return Err(match at {
            Some(text) => resolver.error(text, message),
            None => resolver.error(spanned, message),
        });
    }
    let block_size = match &calico.block_size {
        Some(size) if !(20..=32).contains(size.get_ref()) => {
            return Err(resolver.error(
                size,
                format!(
                    "block_size {} is outside 20..32 (Calico IPPool blockSize)",
                    size.get_ref()
                ),
            ))
        }
        Some(size) => *size.get_ref(),
        None => DEFAULT_BLOCK_SIZE,
    };
    let pools = resolve_pools(resolver, &calico.ip_pools, pod_cidr, block_size)?;
    let mut route_reflectors = Vec::new();
    for name in &calico.route_reflectors {
        route_reflectors.push(node_index(name)?);
    }
    let asn = calico.asn.as_ref().map_or(DEFAULT_ASN, |a| *a.get_ref());
    let mut bgp_peers = Vec::new();
    for peer in &calico.bgp_peers {
        let peer_config = peer.get_ref();
        let selected = if peer_config.nodes.is_empty() {
            (0..nodes.len()).collect()
        } else {
            peer_config
                .nodes
                .iter()
                .map(node_index)
                .collect::<Result<Vec<_>>>()?
        };
        bgp_peers.push(CalicoPeer {
            ip: *peer_config.ip.get_ref(),
            asn: *peer_config.asn.get_ref(),
            nodes: selected,
            keep_original_next_hop: peer_config.keep_original_next_hop,
        });
    }
    let settings = CalicoSettings {
        asn,
        node_to_node_mesh: calico.node_to_node_mesh.unwrap_or(true),
        route_reflectors,
        bgp_peers,
        ipip_mode,
        vxlan_mode,
        nat_outgoing: calico.nat_outgoing.unwrap_or(true),
        block_size,
        pools,
        pod_mtu: 0,
    };
    // Felix's MTU auto-detection: the uplink MTU minus the encapsulation in use
    // (IPIP 20, VXLAN 50), or the uplink MTU when pods are routed.
    let overhead = settings
        .encapsulation(false)
        .map_or(0, |e| u16::try_from(e.overhead()).unwrap_or(50));
    let pod_mtu =
        super::cluster::resolve_pod_mtu(resolver, &calico.mtu, node_segment.mtu, overhead)?;
    Ok(CalicoSettings {
        pod_mtu,
        ..settings
    })
}

fn empty_config() -> CalicoConfig {
    CalicoConfig {
        asn: None,
        node_to_node_mesh: None,
        route_reflectors: Vec::new(),
        bgp_peers: Vec::new(),
        ipip_mode: None,
        vxlan_mode: None,
        nat_outgoing: None,
        block_size: None,
        ip_pools: Vec::new(),
        mtu: Spanned::new(0..0, 0),
    }
}

/// The pools: inside the cluster's pod CIDR, aligned, at least one block, and
/// disjoint (Calico refuses an IPPool overlapping another).
fn resolve_pools(
    resolver: &Resolver,
    configured: &[Spanned<Ipv4Net>],
    pod_cidr: Ipv4Net,
    block_size: u8,
) -> Result<Vec<Ipv4Net>> {
    if configured.is_empty() {
        if pod_cidr.prefix_len() > block_size {
            return Err(resolver.source.error(
                None,
                format!("pod_cidr {pod_cidr} is smaller than one /{block_size} block"),
            ));
        }
        return Ok(vec![pod_cidr]);
    }
    let mut pools: Vec<Ipv4Net> = Vec::new();
    for spanned in configured {
        let pool = *spanned.get_ref();
        if pool != pool.trunc() {
            return Err(resolver.error(
                spanned,
                format!(
                    "ip pool {pool} has host bits set (did you mean {}?)",
                    pool.trunc()
                ),
            ));
        }
        if !pod_cidr.contains(&pool.network()) || pool.prefix_len() < pod_cidr.prefix_len() {
            return Err(resolver.error(
                spanned,
                format!("ip pool {pool} is outside the cluster pod_cidr {pod_cidr}"),
            ));
        }
        if pool.prefix_len() > block_size {
            return Err(resolver.error(
                spanned,
                format!("ip pool {pool} is smaller than one /{block_size} block"),
            ));
        }
        if let Some(other) = pools
            .iter()
            .find(|other| other.contains(&pool.network()) || pool.contains(&other.network()))
        {
            return Err(resolver.error(spanned, format!("ip pool {pool} overlaps ip pool {other}")));
        }
        pools.push(pool);
    }
    Ok(pools)
}

/// Where pod addresses come from while pods are placed.
pub(super) trait PodAddresses {
    /// Takes `address` (given in the file) for a pod on `node`.
    fn reserve(&mut self, node: usize, address: Ipv4Addr) -> std::result::Result<(), String>;
    /// The next free address for a pod on `node`.
    fn allocate(&mut self, node: usize) -> std::result::Result<Ipv4Addr, String>;
}

/// Calico IPAM over the pools.
pub(super) struct CalicoIpam {
    /// Every block of every pool with the node it is affine to.
    blocks: Vec<(Ipv4Net, Option<usize>)>,
    used: BTreeSet<Ipv4Addr>,
    /// Per block, the lowest address that may still be free (addresses are only
    /// ever taken, so the search never goes back).
    first_free: rustc_hash::FxHashMap<Ipv4Net, u32>,
}

impl CalicoIpam {
    /// Blocks of `settings.pools`; every node claims its first block as it starts
    /// (for its tunnel address when the pool encapsulates), in node order.
    pub(super) fn new(
        settings: &CalicoSettings,
        nodes: &mut [Node],
    ) -> std::result::Result<Self, String> {
        let blocks = settings
            .pools
            .iter()
            .flat_map(|pool| pool.subnets(settings.block_size).into_iter().flatten())
            .map(|block| (block, None))
            .collect();
        let mut ipam = CalicoIpam {
            blocks,
            used: BTreeSet::new(),
            first_free: Default::default(),
        };
        for (index, node) in nodes.iter_mut().enumerate() {
            let block = ipam.claim(index).ok_or_else(|| {
                format!(
                    "the Calico pools have no free block left for node {}",
                    node.name
                )
            })?;
            if settings.tunnels() {
                let address = block.network();
                ipam.used.insert(address);
                node.tunnel_ip = Some(address);
            }
        }
        Ok(ipam)
    }

    fn claim(&mut self, node: usize) -> Option<Ipv4Net> {
        let free = self.blocks.iter_mut().find(|(_, owner)| owner.is_none())?;
        free.1 = Some(node);
        Some(free.0)
    }

    fn free_in(&mut self, block: Ipv4Net) -> Option<Ipv4Addr> {
        // Calico uses every address of a block (pods get /32s, no network or
        // broadcast address is reserved).
        let start = self
            .first_free
            .get(&block)
            .copied()
            .unwrap_or(u32::from(block.network()));
        let found = (start..=u32::from(block.broadcast()))
            .find(|&address| !self.used.contains(&Ipv4Addr::from(address)));
        self.first_free
            .insert(block, found.unwrap_or(u32::from(block.broadcast())));
        found.map(Ipv4Addr::from)
    }

    /// Writes each node's affine blocks into the model.
    pub(super) fn finish(self, nodes: &mut [Node]) {
        for (block, owner) in self.blocks {
            if let Some(node) = owner {
                nodes[node].blocks.push(block);
            }
        }
        for node in nodes {
            if let Some(first) = node.blocks.first() {
                node.pod_cidr = *first;
            }
        }
    }
}

impl PodAddresses for CalicoIpam {
    fn reserve(&mut self, node: usize, address: Ipv4Addr) -> std::result::Result<(), String> {
        let Some(index) = self.blocks.iter().position(|(b, _)| b.contains(&address)) else {
            return Err(format!("pod ip {address} is in no Calico ip pool"));
        };
        if !self.used.insert(address) {
            return Err(format!("pod ip {address} is already in use"));
        }
        // An address in a free block claims the block for the pod's node; one in
        // another node's block is borrowed.
        if self.blocks[index].1.is_none() {
            self.blocks[index].1 = Some(node);
        }
        Ok(())
    }

    fn allocate(&mut self, node: usize) -> std::result::Result<Ipv4Addr, String> {
        let own: Vec<Ipv4Net> = self
            .blocks
            .iter()
            .filter(|(_, owner)| *owner == Some(node))
            .map(|(block, _)| *block)
            .collect();
        let found = own
            .into_iter()
            .find_map(|block| self.free_in(block))
            .or_else(|| self.claim(node).and_then(|block| self.free_in(block)))
            .or_else(|| {
                let blocks: Vec<Ipv4Net> = self.blocks.iter().map(|(b, _)| *b).collect();
                blocks.into_iter().find_map(|block| self.free_in(block))
            });
        match found {
            Some(address) => {
                self.used.insert(address);
                Ok(address)
            }
            None => Err("the Calico ip pools are full".to_string()),
        }
    }
}

/// Antrea's node IPAM (host-local over the node's pod CIDR): the first address is
/// antrea-gw0's, pods take the next free ones.
pub(super) struct NodeCidrIpam {
    cidrs: Vec<Ipv4Net>,
    names: Vec<String>,
    used: Vec<BTreeSet<Ipv4Addr>>,
}

impl NodeCidrIpam {
    pub(super) fn new(nodes: &[Node]) -> Self {
        NodeCidrIpam {
            cidrs: nodes.iter().map(|n| n.pod_cidr).collect(),
            names: nodes.iter().map(|n| n.name.clone()).collect(),
            used: nodes
                .iter()
                .map(|node| BTreeSet::from([node.gateway_ip()]))
                .collect(),
        }
    }
}

impl PodAddresses for NodeCidrIpam {
    fn reserve(&mut self, node: usize, address: Ipv4Addr) -> std::result::Result<(), String> {
        let cidr = self.cidrs[node];
        if !cidr.contains(&address) || address == cidr.network() || address == cidr.broadcast() {
            return Err(format!(
                "pod ip {address} is outside node {}'s pod CIDR {cidr}",
                self.names[node]
            ));
        }
        if !self.used[node].insert(address) {
            return Err(format!(
                "pod ip {address} is already in use on node {}",
                self.names[node]
            ));
        }
        Ok(())
    }

    fn allocate(&mut self, node: usize) -> std::result::Result<Ipv4Addr, String> {
        let cidr = self.cidrs[node];
        let first = u32::from(cidr.network()) + 2;
        let address = (first..u32::from(cidr.broadcast()))
            .map(Ipv4Addr::from)
            .find(|address| !self.used[node].contains(address))
            .ok_or_else(|| format!("node {}'s pod CIDR {cidr} is full", self.names[node]))?;
        self.used[node].insert(address);
        Ok(address)
    }
}
