//! The control plane, computed before any packet moves: for each router, every
//! candidate route with its origin (the RIB), the winner of each prefix and why the
//! others lost, and the FIB installed from the winners. Forwarding only reads the
//! FIB; nothing here runs per packet.
//!
//! The candidates come from connected subnets and static routes, an NSX Tier-1's
//! default route to its Tier-0, what each Tier-1 advertises to its Tier-0 (only the
//! types it advertises), and BGP ([`bgp`]), run to convergence among the speakers.
//! Selection follows the usual router order: the origin with the lowest
//! administrative distance wins (`RouteOrigin::distance`); among equals, BGP's own
//! best path, or the first by next-hop address, or up to eight equal-cost next hops
//! when the router does ECMP.

pub mod bgp;

use crate::datapath::router::{NextHop, Route, RouteOrigin};
use crate::datapath::PortId;
use crate::engine::lpm::LpmTable;
use crate::topology::{Redistribute, RouteKind, Topology};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Equal-cost next hops a router installs at most (NSX: 8).
pub const MAX_ECMP_PATHS: usize = 8;

/// One candidate route in a router's RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub prefix: Ipv4Net,
    /// The next hop, or none for a connected prefix.
    pub next_hop: Option<Ipv4Addr>,
    /// The interface toward the next hop.
    pub port: PortId,
    pub origin: RouteOrigin,
    /// BGP attributes, for a BGP route.
    pub bgp: Option<BgpAttributes>,
    /// The neighbour packets go to when the next hop is not on a connected subnet
    /// and was resolved through another route (a recursive iBGP next hop).
    pub resolved_via: Option<Ipv4Addr>,
    /// Installed in the FIB.
    pub best: bool,
    /// Why it lost, when it did (set before selection when it cannot win: a BGP path
    /// that is not BGP's best, a next hop that does not resolve).
    pub reason: Option<String>,
}

/// The attributes of a BGP candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpAttributes {
    pub as_path: Vec<u32>,
    pub local_pref: u32,
    pub med: u32,
}

impl Candidate {
    fn new(prefix: Ipv4Net, next_hop: Option<Ipv4Addr>, port: PortId, origin: RouteOrigin) -> Self {
        Candidate {
            prefix,
            next_hop,
            port,
            origin,
            bgp: None,
            resolved_via: None,
            best: false,
            reason: None,
        }
    }
}

/// A router's RIB and the FIB computed from it, and its BGP sessions.
#[derive(Debug, Clone)]
pub struct RouteTables {
    pub rib: Vec<Candidate>,
    pub fib: LpmTable<Route>,
    pub sessions: Vec<bgp::SessionState>,
}

/// Picks each prefix's winners among `candidates` and builds the FIB. `ecmp` allows
/// several equal-cost next hops per prefix.
pub fn select(mut candidates: Vec<Candidate>, ecmp: bool) -> RouteTables {
    let mut by_prefix: BTreeMap<Ipv4Net, Vec<usize>> = BTreeMap::new();
    for (index, candidate) in candidates.iter().enumerate() {
        by_prefix.entry(candidate.prefix).or_default().push(index);
    }
    let mut fib = LpmTable::new();
    for (prefix, all) in by_prefix {
        // Candidates that cannot win keep the reason they were given.
        let indices: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| candidates[i].reason.is_none())
            .collect();
        if indices.is_empty() {
            continue;
        }
        let best_distance = indices
            .iter()
            .map(|&i| candidates[i].origin.distance())
            .min()
            .unwrap_or(u8::MAX);
        let mut equal: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| candidates[i].origin.distance() == best_distance)
            .collect();
        // BGP candidates come in BGP's own order (its best first); others by next hop.
        if !matches!(candidates[equal[0]].origin, RouteOrigin::Bgp { .. }) {
            equal.sort_by_key(|&i| (candidates[i].next_hop, candidates[i].port));
        }
        equal.dedup_by_key(|i| (candidates[*i].next_hop, candidates[*i].port));
        let paths = if ecmp { MAX_ECMP_PATHS } else { 1 };
        let winners: Vec<usize> = equal.iter().copied().take(paths).collect();
        let origin = candidates[winners[0]].origin;
        for &index in &indices {
            let candidate = &candidates[index];
            let reason = if winners.contains(&index) {
                None
            } else if candidate.origin.distance() > best_distance {
                Some(format!(
                    "{} (distance {}) is preferred over {} (distance {})",
                    origin.name(),
                    best_distance,
                    candidate.origin.name(),
                    candidate.origin.distance()
                ))
            } else if equal.contains(&index) && !ecmp {
                Some("an equal route with a lower next hop won (no ECMP)".to_string())
            } else if equal.contains(&index) {
                Some(format!("more than {MAX_ECMP_PATHS} equal-cost paths"))
            } else {
                Some("the same route is listed twice".to_string())
            };
            candidates[index].best = reason.is_none();
            candidates[index].reason = reason;
        }
        let next_hops = winners
            .iter()
            .map(|&i| NextHop {
                port: candidates[i].port,
                address: candidates[i].resolved_via.or(candidates[i].next_hop),
            })
            .collect();
        fib.insert(prefix, Route { next_hops, origin });
    }
    RouteTables {
        rib: candidates,
        fib,
        sessions: Vec::new(),
    }
}

/// The connected and static candidates of a router with `interfaces` (address and
/// prefix length, in port order) and `static_routes` (prefix, next hop): a static
/// route leaves by the interface whose subnet holds its next hop.
pub fn connected_and_static(
    interfaces: &[Ipv4Net],
    static_routes: &[(Ipv4Net, Ipv4Addr)],
) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for (index, address) in interfaces.iter().enumerate() {
        candidates.push(Candidate::new(
            address.trunc(),
            None,
            port_id(index),
            RouteOrigin::Connected,
        ));
    }
    for (prefix, next_hop) in static_routes {
        if let Some(index) = interfaces.iter().position(|a| a.contains(next_hop)) {
            candidates.push(Candidate::new(
                *prefix,
                Some(*next_hop),
                port_id(index),
                RouteOrigin::Static,
            ));
        }
    }
    candidates
}

fn port_id(index: usize) -> PortId {
    PortId::try_from(index).unwrap_or(PortId::MAX)
}

/// The port of `interfaces` whose subnet holds `address`.
fn port_toward(interfaces: &[Ipv4Net], address: Ipv4Addr) -> Option<PortId> {
    interfaces
        .iter()
        .position(|a| a.contains(&address))
        .map(port_id)
}

/// What BIRD on a Calico node learned: its BGP candidates (best or why not) and its
/// sessions. The node's kernel routes are built from the best ones.
#[derive(Debug, Clone, Default)]
pub struct NodeBgp {
    pub candidates: Vec<Candidate>,
    pub sessions: Vec<bgp::SessionState>,
}

/// The whole control plane: every router's tables, and every Calico node's BGP
/// (indexed by cluster, then node; empty for other CNIs).
#[derive(Debug, Clone, Default)]
pub struct ControlPlane {
    pub routers: Vec<RouteTables>,
    pub nodes: Vec<Vec<NodeBgp>>,
    /// BGP rounds run, and whether they reached a fixpoint.
    pub bgp_rounds: usize,
    pub bgp_converged: bool,
}

/// Every router's route tables, computed together: base routes, Tier-1
/// advertisement to Tier-0s, then BGP to convergence.
pub fn compute(topology: &Topology) -> ControlPlane {
    let interfaces: Vec<Vec<Ipv4Net>> = topology
        .routers
        .iter()
        .map(|r| r.interfaces.iter().map(|i| i.address).collect())
        .collect();
    // Connected, static, and a Tier-1's default route up its transit link.
    let mut candidates: Vec<Vec<Candidate>> = topology
        .routers
        .iter()
        .enumerate()
        .map(|(index, router)| {
            let statics: Vec<(Ipv4Net, Ipv4Addr)> = router
                .static_routes
                .iter()
                .map(|r| (r.prefix, r.next_hop))
                .collect();
            let mut list = connected_and_static(&interfaces[index], &statics);
            if let Some(uplink) = router.uplink {
                if let Some(port) = port_toward(&interfaces[index], uplink.tier0_address) {
                    list.push(Candidate::new(
                        Ipv4Net::default(),
                        Some(uplink.tier0_address),
                        port,
                        RouteOrigin::Tier0Uplink,
                    ));
                }
            }
            list
        })
        .collect();
    routed_pod_cidrs_on_tier1s(topology, &interfaces, &mut candidates);
    advertise_to_tier0s(topology, &interfaces, &mut candidates);
    let (sessions, nodes, outcome) = run_bgp(topology, &interfaces, &mut candidates);
    let routers = candidates
        .into_iter()
        .enumerate()
        .map(|(index, list)| {
            let mut tables = select(list, topology.routers[index].ecmp);
            tables.sessions = sessions[index].clone();
            tables
        })
        .collect();
    ControlPlane {
        routers,
        nodes,
        bgp_rounds: outcome.rounds,
        bgp_converged: outcome.converged || outcome.rounds == 0,
    }
}

/// Routed pods (Antrea noEncap / hybrid) behind an NSX Tier-1: the NSX/Antrea
/// integration programs one static route per node pod CIDR via that node's IP on the
/// Tier-1 that is the node segment's gateway.
fn routed_pod_cidrs_on_tier1s(
    topology: &Topology,
    interfaces: &[Vec<Ipv4Net>],
    candidates: &mut [Vec<Candidate>],
) {
    use crate::topology::{RouterKind, TrafficEncapMode};
    for cluster in &topology.clusters {
        if cluster.calico.is_some() || cluster.antrea.traffic_encap_mode == TrafficEncapMode::Encap
        {
            continue;
        }
        for node in &cluster.nodes {
            let Some(router) = topology.segments[node.segment].gateway else {
                continue;
            };
            if topology.routers[router].kind != RouterKind::NsxTier1 {
                continue;
            }
            if let Some(port) = port_toward(&interfaces[router], node.ip) {
                candidates[router].push(Candidate::new(
                    node.pod_cidr,
                    Some(node.ip),
                    port,
                    RouteOrigin::Static,
                ));
            }
        }
    }
}

/// NSX route advertisement (reference §e): a Tier-1 tells its Tier-0 the prefixes of
/// each type it advertises — its connected segments (not the transit link) and its
/// static routes; NAT and LB VIP addresses once SNAT and load balancers exist. Only
/// what is advertised reaches the Tier-0, with the Tier-1's transit address as next
/// hop.
fn advertise_to_tier0s(
    topology: &Topology,
    interfaces: &[Vec<Ipv4Net>],
    candidates: &mut [Vec<Candidate>],
) {
    for (index, router) in topology.routers.iter().enumerate() {
        let Some(uplink) = router.uplink else {
            continue;
        };
        let Some(port) = port_toward(&interfaces[uplink.tier0], uplink.tier1_address) else {
            continue;
        };
        for kind in &router.advertise {
            let prefixes: Vec<Ipv4Net> = match kind {
                RouteKind::Connected => router
                    .interfaces
                    .iter()
                    .filter(|i| i.segment != uplink.segment)
                    .map(|i| i.address.trunc())
                    .collect(),
                RouteKind::Static => candidates[index]
                    .iter()
                    .filter(|c| c.origin == RouteOrigin::Static)
                    .map(|c| c.prefix)
                    .collect(),
                // The VIPs of the load balancers on this Tier-1, as /32s.
                RouteKind::LbVip => {
                    let vips: std::collections::BTreeSet<Ipv4Net> = topology
                        .clusters
                        .iter()
                        .flat_map(|c| &c.services)
                        .filter_map(|s| s.load_balancer.as_ref())
                        .filter(|lb| lb.router == index)
                        .filter_map(|lb| Ipv4Net::new(lb.ip, 32).ok())
                        .collect();
                    vips.into_iter().collect()
                }
                // Its SNAT addresses, as /32s.
                RouteKind::Nat => {
                    let addresses: std::collections::BTreeSet<Ipv4Net> = router
                        .snat
                        .iter()
                        .filter_map(|rule| match rule.action {
                            crate::engine::nat::NatAction::Snat(pool) => Some(pool),
                            _ => None,
                        })
                        .flat_map(|pool| ipnet::Ipv4Subnets::new(pool.first, pool.last, 0))
                        .collect();
                    addresses.into_iter().collect()
                }
            };
            for prefix in prefixes {
                candidates[uplink.tier0].push(Candidate::new(
                    prefix,
                    Some(uplink.tier1_address),
                    port,
                    RouteOrigin::Tier1(*kind),
                ));
            }
        }
    }
}

/// The port and neighbour through which `next_hop` is reached by the longest
/// non-BGP route among `candidates` (connected, static, a Tier-1's uplink).
fn resolve_recursively(
    candidates: &[Candidate],
    next_hop: Ipv4Addr,
) -> (Option<PortId>, Option<Ipv4Addr>) {
    candidates
        .iter()
        .filter(|c| !matches!(c.origin, RouteOrigin::Bgp { .. }) && c.prefix.contains(&next_hop))
        .max_by_key(|c| {
            (
                c.prefix.prefix_len(),
                std::cmp::Reverse(c.origin.distance()),
            )
        })
        .map_or((None, None), |c| (Some(c.port), c.next_hop))
}

/// A path this speaker originates (no next hop, empty AS path).
fn originated_path(prefix: Ipv4Net, origin: bgp::OriginCode, router_id: Ipv4Addr) -> bgp::Path {
    bgp::Path {
        prefix,
        next_hop: None,
        as_path: Vec::new(),
        origin,
        med: 0,
        local_pref: bgp::DEFAULT_LOCAL_PREF,
        from_session: None,
        from_ebgp: false,
        peer_router_id: router_id,
        peer_address: None,
        originator_id: None,
        cluster_list: Vec::new(),
    }
}

/// A router's BGP speaker: what it redistributes (connected but not the transit
/// link, static, what its Tier-1s advertise, by type).
fn router_speaker(
    router: &crate::topology::Router,
    config: &crate::topology::Bgp,
    interfaces: &[Ipv4Net],
    candidates: &[Candidate],
) -> bgp::Speaker {
    let transit: Vec<usize> = router
        .interfaces
        .iter()
        .enumerate()
        .filter(|(_, i)| i.name == Some("transit"))
        .map(|(position, _)| position)
        .collect();
    let mut originated: Vec<bgp::Path> = Vec::new();
    for redistribute in &config.redistribute {
        for candidate in candidates {
            let wanted = match (redistribute, candidate.origin) {
                (Redistribute::Connected, RouteOrigin::Connected) => {
                    !transit.contains(&usize::from(candidate.port))
                }
                (Redistribute::Static, RouteOrigin::Static) => true,
                (Redistribute::Tier1(kind), RouteOrigin::Tier1(origin)) => *kind == origin,
                _ => false,
            };
            if wanted && !originated.iter().any(|p| p.prefix == candidate.prefix) {
                originated.push(originated_path(
                    candidate.prefix,
                    bgp::OriginCode::Incomplete,
                    config.router_id,
                ));
            }
        }
    }
    bgp::Speaker {
        name: router.name.clone(),
        asn: config.asn,
        router_id: config.router_id,
        cluster_id: config.router_id,
        addresses: interfaces.to_vec(),
        neighbors: config
            .neighbors
            .iter()
            .map(|n| bgp::Neighbor {
                address: n.ip,
                asn: n.asn,
                route_reflector_client: n.route_reflector_client,
                multihop: false,
                next_hop_keep: false,
            })
            .collect(),
        originated,
        aggregates: router.aggregates.clone(),
        route_map_out: router.route_map_out.clone(),
        multipath: router.ecmp,
    }
}

/// A Calico node's BIRD, as confd generates its configuration (reference §f):
/// router id = node IP, the cluster's AS; iBGP to every other node (the
/// node-to-node mesh, multihop) unless it is a route reflector or the mesh is off;
/// route reflectors reflect to every other node (`rr client`) and peer with each
/// other; the BGPPeers that select it. It exports each affine block (the static
/// `blackhole` route) and a /32 for every local pod whose address is borrowed from
/// another node's block (`calico_aggr` suppresses what lies under its own blocks).
/// `merge paths on`: equal paths go to the kernel as ECMP.
fn calico_speaker(
    cluster: &crate::topology::Cluster,
    calico: &crate::topology::CalicoSettings,
    index: usize,
    subnet_prefix: u8,
) -> bgp::Speaker {
    let node = &cluster.nodes[index];
    let is_reflector = |i: usize| calico.route_reflectors.contains(&i);
    let mut neighbors = Vec::new();
    let mut ibgp = |other: usize, client: bool| {
        if other != index {
            neighbors.push(bgp::Neighbor {
                address: cluster.nodes[other].ip,
                asn: calico.asn,
                route_reflector_client: client,
                multihop: true,
                next_hop_keep: false,
            });
        }
    };
    for other in 0..cluster.nodes.len() {
        match (is_reflector(index), is_reflector(other)) {
            (true, false) => ibgp(other, true),
            (true, true) | (false, true) => ibgp(other, false),
            (false, false) if calico.node_to_node_mesh => ibgp(other, false),
            (false, false) => {}
        }
    }
    for peer in &calico.bgp_peers {
        if peer.nodes.contains(&index) {
            neighbors.push(bgp::Neighbor {
                address: peer.ip,
                asn: peer.asn,
                route_reflector_client: false,
                multihop: peer.asn == calico.asn,
                next_hop_keep: peer.keep_original_next_hop,
            });
        }
    }
    let mut originated: Vec<bgp::Path> = node
        .blocks
        .iter()
        .map(|block| originated_path(*block, bgp::OriginCode::Igp, node.ip))
        .collect();
    for pod in cluster.pods.iter().filter(|p| p.node == index) {
        if !node.blocks.iter().any(|block| block.contains(&pod.ip)) {
            let host = Ipv4Net::new(pod.ip, 32).unwrap_or_default();
            originated.push(originated_path(host, bgp::OriginCode::Igp, node.ip));
        }
    }
    bgp::Speaker {
        name: node.name.clone(),
        asn: calico.asn,
        router_id: node.ip,
        // Calico's reflectors share one `routeReflectorClusterID` (the docs use
        // 224.0.0.1), so they never accept each other's reflections of a path.
        cluster_id: if is_reflector(index) {
            CALICO_CLUSTER_ID
        } else {
            node.ip
        },
        addresses: vec![Ipv4Net::new(node.ip, subnet_prefix).unwrap_or_default()],
        neighbors,
        originated,
        aggregates: Vec::new(),
        // `filter calico_export_to_bgp_peers { calico_aggr(); if net ~ <pool> then
        // accept; reject; }`: only what lies inside a pool leaves the node.
        route_map_out: calico
            .pools
            .iter()
            .map(|pool| crate::topology::RouteMapEntry {
                permit: true,
                prefix: *pool,
                ge: pool.prefix_len(),
                le: 32,
            })
            .collect(),
        multipath: true,
    }
}

/// The `routeReflectorClusterID` Calico's route reflectors share.
const CALICO_CLUSTER_ID: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 1);

/// Who a BGP speaker is, for handing its outcome back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SpeakerOf {
    Router(usize),
    Node { cluster: usize, node: usize },
}

/// Builds the BGP speakers (routers with `bgp`, Calico nodes), runs BGP, and adds
/// each router's BGP paths to its candidates (the best ones eligible; the others with
/// the reason they lost). Returns each router's session states and each Calico
/// node's BGP.
fn run_bgp(
    topology: &Topology,
    interfaces: &[Vec<Ipv4Net>],
    candidates: &mut [Vec<Candidate>],
) -> (Vec<Vec<bgp::SessionState>>, Vec<Vec<NodeBgp>>, bgp::Outcome) {
    let mut owners: Vec<SpeakerOf> = Vec::new();
    let mut speakers = Vec::new();
    for (index, router) in topology.routers.iter().enumerate() {
        if let Some(config) = &router.bgp {
            owners.push(SpeakerOf::Router(index));
            speakers.push(router_speaker(
                router,
                config,
                &interfaces[index],
                &candidates[index],
            ));
        }
    }
    for (cluster_index, cluster) in topology.clusters.iter().enumerate() {
        let Some(calico) = &cluster.calico else {
            continue;
        };
        for (node, settings) in cluster.nodes.iter().enumerate() {
            let prefix = topology.segments[settings.segment].cidr.prefix_len();
            owners.push(SpeakerOf::Node {
                cluster: cluster_index,
                node,
            });
            speakers.push(calico_speaker(cluster, calico, node, prefix));
        }
    }
    // Which speaker holds an address: router interfaces and node IPs.
    let mut by_address: rustc_hash::FxHashMap<Ipv4Addr, usize> = Default::default();
    for (speaker, owner) in owners.iter().enumerate() {
        match *owner {
            SpeakerOf::Router(router) => {
                for interface in &topology.routers[router].interfaces {
                    by_address.insert(interface.address.addr(), speaker);
                }
            }
            SpeakerOf::Node { cluster, node } => {
                by_address.insert(topology.clusters[cluster].nodes[node].ip, speaker);
            }
        }
    }
    let owner_of = |address: Ipv4Addr| -> Result<usize, String> {
        if let Some(&speaker) = by_address.get(&address) {
            return Ok(speaker);
        }
        if let Some(router) = topology
            .routers
            .iter()
            .find(|r| r.interfaces.iter().any(|i| i.address.addr() == address))
        {
            return Err(format!("router {} does not speak BGP", router.name));
        }
        if let Some(host) = topology.hosts.iter().find(|h| h.ip == address) {
            return Err(format!(
                "{address} is host {}, not a BGP speaker",
                host.name
            ));
        }
        for cluster in &topology.clusters {
            if let Some(node) = cluster.nodes.iter().find(|n| n.ip == address) {
                return Err(format!(
                    "{address} is node {}, not a BGP speaker (its CNI does not run BGP)",
                    node.name
                ));
            }
        }
        Err(format!("no device has address {address}"))
    };
    let (sessions, states) = bgp::sessions(&speakers, &owner_of);
    let outcome = bgp::converge(&speakers, &sessions, states);
    let mut per_router = vec![Vec::new(); topology.routers.len()];
    let mut per_node: Vec<Vec<NodeBgp>> = topology
        .clusters
        .iter()
        .map(|c| {
            if c.calico.is_some() {
                vec![NodeBgp::default(); c.nodes.len()]
            } else {
                Vec::new()
            }
        })
        .collect();
    for state in &outcome.sessions {
        match owners[state.speaker] {
            SpeakerOf::Router(router) => per_router[router].push(state.clone()),
            SpeakerOf::Node { cluster, node } => {
                per_node[cluster][node].sessions.push(state.clone())
            }
        }
    }
    for (speaker, owner) in owners.iter().enumerate() {
        match *owner {
            SpeakerOf::Router(router) => {
                let list = learned_candidates(&outcome, speaker, |next_hop| {
                    match port_toward(&interfaces[router], next_hop) {
                        Some(port) => (Some(port), None),
                        None => resolve_recursively(&candidates[router], next_hop),
                    }
                });
                candidates[router].extend(list);
            }
            SpeakerOf::Node { cluster, node } => {
                let settings = &topology.clusters[cluster].nodes[node];
                let segment = &topology.segments[settings.segment];
                // BIRD's `gateway recursive`: a next hop off the node's subnet is
                // reached through the default route.
                let list = learned_candidates(&outcome, speaker, |next_hop| {
                    if segment.cidr.contains(&next_hop) {
                        (Some(0), None)
                    } else {
                        (segment.gateway_ip.map(|_| 0), segment.gateway_ip)
                    }
                });
                per_node[cluster][node].candidates = list;
            }
        }
    }
    let summary = bgp::Outcome {
        rounds: outcome.rounds,
        converged: outcome.converged,
        ..Default::default()
    };
    (per_router, per_node, summary)
}

/// A speaker's BGP paths learned from peers as RIB candidates: the best ones
/// eligible, the others with the reason they lost. `resolve` gives the port toward a
/// next hop and the neighbour it resolves through when not directly connected.
fn learned_candidates(
    outcome: &bgp::Outcome,
    speaker: usize,
    resolve: impl Fn(Ipv4Addr) -> (Option<PortId>, Option<Ipv4Addr>),
) -> Vec<Candidate> {
    let best = &outcome.best[speaker];
    let mut list = Vec::new();
    for path in &outcome.received[speaker] {
        let (Some(next_hop), Some(_)) = (path.next_hop, path.from_session) else {
            continue; // originated here: the device has the route already
        };
        let chosen = best
            .get(&path.prefix)
            .map(|paths| paths.contains(path))
            .unwrap_or(false);
        let (port, resolved_via) = resolve(next_hop);
        let mut candidate = Candidate::new(
            path.prefix,
            Some(next_hop),
            port.unwrap_or(PortId::MAX),
            RouteOrigin::Bgp {
                internal: !path.from_ebgp,
            },
        );
        candidate.resolved_via = resolved_via;
        candidate.bgp = Some(BgpAttributes {
            as_path: path.as_path.clone(),
            local_pref: path.local_pref,
            med: path.med,
        });
        candidate.reason = if port.is_none() {
            Some(format!(
                "next hop {next_hop} is unreachable (no route resolves it)"
            ))
        } else if !chosen {
            let winner = best.get(&path.prefix).and_then(|p| p.first());
            Some(match winner {
                Some(winner) => format!(
                    "BGP best path is {}",
                    bgp::describe_preference(winner, path)
                ),
                None => "not a BGP best path".to_string(),
            })
        } else {
            None
        };
        candidate.best = candidate.reason.is_none();
        list.push(candidate);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn connected_beats_static_and_ecmp_installs_equal_next_hops() {
        let interfaces = [net("10.0.0.1/24"), net("10.0.1.1/24")];
        let statics = [
            (net("10.0.1.0/24"), "10.0.0.9".parse().unwrap()),
            (net("0.0.0.0/0"), "10.0.0.2".parse().unwrap()),
            (net("0.0.0.0/0"), "10.0.1.2".parse().unwrap()),
        ];
        let tables = select(connected_and_static(&interfaces, &statics), true);
        let connected = tables.fib.get_exact(net("10.0.1.0/24")).unwrap();
        assert_eq!(connected.origin, RouteOrigin::Connected);
        let lost = tables
            .rib
            .iter()
            .find(|c| c.prefix == net("10.0.1.0/24") && c.origin == RouteOrigin::Static)
            .unwrap();
        assert!(!lost.best);
        assert_eq!(
            lost.reason.as_deref(),
            Some("connected (distance 0) is preferred over static (distance 1)")
        );
        let default = tables.fib.get_exact(net("0.0.0.0/0")).unwrap();
        assert_eq!(default.next_hops.len(), 2);
        let single = select(connected_and_static(&interfaces, &statics), false);
        assert_eq!(
            single
                .fib
                .get_exact(net("0.0.0.0/0"))
                .unwrap()
                .next_hops
                .len(),
            1
        );
    }
}
