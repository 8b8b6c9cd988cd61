//! The fabric: every device of a topology, the links between their ports, and the
//! capture points (`DEVICE:INTERFACE`). Built once from the resolved topology; `run`,
//! `trace` and `bench` all push packets through [`Network::process`].

use crate::datapath::antrea::{AntreaNode, LocalPod, NodeSettings, PeerNode};
use crate::datapath::calico::{CalicoNode, CalicoNodeSettings, CalicoTunnel, RouteSource};
use crate::datapath::encap::Encapsulation;
use crate::datapath::host::{HostProcess, HostRoute};
use crate::datapath::router::{Router, RouterPort, VirtualServer};
use crate::datapath::services::{Backend, ServicePortFrontends, ServiceTable};
use crate::datapath::switch::Switch;
use crate::datapath::{Ctx, Neighbors, Outputs, PointId, PortId};
use crate::packet::Packet;
use crate::topology::{EndpointRef, Topology, TrafficEncapMode};
use crate::wire::Mac;
use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

pub type DeviceId = usize;
pub type EndpointId = usize;

/// Latency of a veth pair plus the OVS hop (a few microseconds on a real node).
pub const VETH_LATENCY_NS: u64 = 5_000;

/// MAC address kinds, so every interface gets a stable, distinct MAC.
mod mac_kind {
    pub const NODE_GATEWAY: u8 = 2;
    pub const POD: u8 = 3;
    pub const ROUTER: u8 = 4;
    pub const HOST: u8 = 5;
    pub const CALICO_VTEP: u8 = 6;
    pub const HOST_PROCESS: u8 = 7;
}

/// What a capture point is, for `--capture edges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointKind {
    /// One view of a wire between devices (a pod's eth0, a node's eth0, router and
    /// host interfaces).
    Edge,
    /// An interface inside a node (antrea-gw0, antrea-tun0), or the node's end of a
    /// pod's veth (the same frames as the pod's eth0).
    Internal,
}

#[derive(Debug, Clone)]
pub struct CapturePoint {
    /// `DEVICE:INTERFACE`.
    pub name: String,
    pub device: String,
    pub kind: PointKind,
    /// The interface carries bare IP packets (Linux `tunl0`, ARPHRD_TUNNEL): its
    /// capture has link type RAW and no Ethernet header, as tcpdump shows it.
    pub raw_ip: bool,
}

pub enum Device {
    Node(Box<AntreaNode>),
    CalicoNode(Box<CalicoNode>),
    Router(Box<Router>),
    Switch(Switch),
    /// A pod's or host's NIC: frames arriving here go to that endpoint's stack.
    Endpoint(EndpointId),
}

/// The far end of a link and how long the wire takes.
#[derive(Debug, Clone, Copy)]
pub struct LinkEnd {
    pub device: DeviceId,
    pub port: PortId,
    pub latency_ns: u64,
}

/// An endpoint's network identity, as its stack needs it.
#[derive(Debug, Clone)]
pub struct EndpointNic {
    /// `NS/POD` or the host name.
    pub name: String,
    pub reference: EndpointRef,
    pub ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub mac: Mac,
    pub mtu: u16,
    /// The MAC off-subnet traffic goes to (the default gateway's), if there is one.
    pub gateway_mac: Option<Mac>,
    /// The default gateway's address (a pod's antrea-gw0, Calico's 169.254.1.1, the
    /// segment gateway).
    pub gateway_ip: Ipv4Addr,
    /// On-link neighbors.
    pub neighbors: Neighbors,
    pub point: PointId,
    pub device: DeviceId,
}

pub struct Network {
    /// Changed only through [`Network::process`], which counts each change in
    /// `generation` (the path cache relies on that).
    pub(super) devices: Vec<Device>,
    /// Frames the devices have processed: a device's state (conntrack entries and
    /// states, rules, routes) changes only when this moves. A path cache replay
    /// refreshes entries and advances counters without moving it.
    generation: u64,
    pub device_names: Vec<String>,
    pub links: Vec<Vec<Option<LinkEnd>>>,
    pub points: Vec<CapturePoint>,
    pub endpoints: Vec<EndpointNic>,
    endpoint_index: FxHashMap<EndpointRef, EndpointId>,
    /// BGP rounds the control plane ran, and whether it converged.
    pub bgp_rounds: usize,
    pub bgp_converged: bool,
}

impl Network {
    fn add_device(&mut self, name: String, device: Device) -> DeviceId {
        self.devices.push(device);
        self.device_names.push(name);
        self.links.push(Vec::new());
        self.devices.len() - 1
    }

    fn add_point(&mut self, device: &str, interface: &str, kind: PointKind) -> PointId {
        self.points.push(CapturePoint {
            name: format!("{device}:{interface}"),
            device: device.to_string(),
            kind,
            raw_ip: false,
        });
        PointId::try_from(self.points.len() - 1).unwrap_or(PointId::MAX)
    }

    fn connect(
        &mut self,
        a: (DeviceId, PortId),
        b: (DeviceId, PortId),
        a_to_b_ns: u64,
        b_to_a_ns: u64,
    ) {
        for (from, to, latency_ns) in [(a, b, a_to_b_ns), (b, a, b_to_a_ns)] {
            let ports = &mut self.links[from.0];
            let index = usize::from(from.1);
            if ports.len() <= index {
                ports.resize(index + 1, None);
            }
            ports[index] = Some(LinkEnd {
                device: to.0,
                port: to.1,
                latency_ns,
            });
        }
    }

    /// The endpoint a topology reference names, if it is a pod or host.
    pub fn endpoint(&self, reference: EndpointRef) -> Option<EndpointId> {
        self.endpoint_index.get(&reference).copied()
    }

    /// The devices, by id.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// How many frames devices have processed (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where a frame sent out of `device`'s `port` arrives.
    pub fn peer(&self, device: DeviceId, port: PortId) -> Option<LinkEnd> {
        self.links[device].get(usize::from(port)).copied().flatten()
    }

    /// One device processes one frame that arrived on `port`.
    pub fn process(
        &mut self,
        ctx: &mut Ctx,
        device: DeviceId,
        port: PortId,
        packet: Packet,
        out: &mut Outputs,
    ) {
        self.generation = self.generation.wrapping_add(1);
        process_device(&mut self.devices[device], ctx, device, port, packet, out);
    }

    /// The devices, for the runner to hand to its shards and take back.
    pub(super) fn devices_mut(&mut self) -> &mut Vec<Device> {
        &mut self.devices
    }

    /// Sum of flow-cache hits and misses over all nodes.
    pub fn flow_cache_stats(&self) -> (u64, u64) {
        self.devices
            .iter()
            .fold((0, 0), |(hits, misses), device| match device {
                Device::Node(node) => {
                    let (h, m) = node.flow_cache_stats();
                    (hits + h, misses + m)
                }
                _ => (hits, misses),
            })
    }

    /// Conntrack entries over all nodes.
    pub fn conntrack_entries(&self) -> usize {
        self.devices
            .iter()
            .map(|device| match device {
                Device::Node(node) => node.stack.conntrack.len(),
                Device::CalicoNode(node) => node.stack.conntrack.len(),
                _ => 0,
            })
            .sum()
    }

    /// The router named `name`.
    pub fn router(&self, name: &str) -> Option<&Router> {
        self.devices.iter().find_map(|device| match device {
            Device::Router(router) if router.name == name => Some(router.as_ref()),
            _ => None,
        })
    }
}

/// Device `id` processes one frame that arrived on `port` (what
/// [`Network::process`] does, for a device the caller holds apart from the network:
/// a shard of `run`).
pub fn process_device(
    device: &mut Device,
    ctx: &mut Ctx,
    id: DeviceId,
    port: PortId,
    packet: Packet,
    out: &mut Outputs,
) {
    ctx.journal.path.device = id;
    match device {
        Device::Node(node) => node.process(ctx, port, packet, out),
        Device::CalicoNode(node) => node.process(ctx, port, packet, out),
        Device::Router(router) => router.process(ctx, port, packet, out),
        Device::Switch(switch) => switch.process(ctx, port, packet, out),
        Device::Endpoint(_) => unreachable!("endpoints are handled by the runner"),
    }
}

/// Builds the fabric for a topology.
pub fn build(topology: &Topology) -> Network {
    let mut network = Network {
        devices: Vec::new(),
        device_names: Vec::new(),
        links: Vec::new(),
        points: Vec::new(),
        endpoints: Vec::new(),
        endpoint_index: FxHashMap::default(),
        bgp_rounds: 0,
        bgp_converged: true,
        generation: 0,
    };
    let seed = topology.seed;

    // Addresses and MACs on each segment, for neighbor tables.
    let mut segment_neighbors: Vec<FxHashMap<Ipv4Addr, Mac>> = topology
        .segments
        .iter()
        .map(|_| FxHashMap::default())
        .collect();
    let router_macs: Vec<Vec<Mac>> = topology
        .routers
        .iter()
        .enumerate()
        .map(|(router, r)| {
            r.interfaces
                .iter()
                .enumerate()
                .map(|(index, interface)| {
                    let mac = Mac::seeded(
                        seed,
                        mac_kind::ROUTER,
                        u32::try_from(router * 256 + index).unwrap_or(0),
                    );
                    segment_neighbors[interface.segment].insert(interface.address.addr(), mac);
                    mac
                })
                .collect()
        })
        .collect();
    let mut node_counter = 0u32;
    let mut node_macs: Vec<Vec<Mac>> = Vec::new();
    for cluster in &topology.clusters {
        let mut macs = Vec::new();
        for node in &cluster.nodes {
            // Nodes are vSphere VMs: their NICs carry VMware's OUI.
            let mac = Mac::vmware(seed, node_counter);
            node_counter += 1;
            segment_neighbors[node.segment].insert(node.ip, mac);
            macs.push(mac);
        }
        // An egress IP is a secondary address of its node's uplink: the node
        // answers ARP for it.
        for egress in &cluster.egresses {
            let holder = &cluster.nodes[egress.node];
            segment_neighbors[holder.segment].insert(egress.ip, macs[egress.node]);
        }
        node_macs.push(macs);
    }
    let host_macs: Vec<Mac> = topology
        .hosts
        .iter()
        .enumerate()
        .map(|(index, host)| {
            let mac = Mac::seeded(seed, mac_kind::HOST, u32::try_from(index).unwrap_or(0));
            segment_neighbors[host.segment].insert(host.ip, mac);
            mac
        })
        .collect();
    let segment_neighbors: Vec<Neighbors> = segment_neighbors.into_iter().map(Arc::new).collect();

    // One switch per segment.
    let switches: Vec<DeviceId> = topology
        .segments
        .iter()
        .map(|segment| {
            network.add_device(
                format!("segment:{}", segment.name),
                Device::Switch(Switch::new(segment.name.clone())),
            )
        })
        .collect();
    let attach =
        |network: &mut Network, segment: usize, device: DeviceId, port: PortId, mac: Mac| {
            let switch_id = switches[segment];
            let Device::Switch(switch) = &mut network.devices[switch_id] else {
                return;
            };
            let switch_port = switch.add_port(mac);
            // The segment's latency, half to the switch and half from it: every link
            // between devices that are not one machine takes time, which is what lets
            // `run` simulate separate parts of the fabric on separate threads
            // (`sim::runner::partition`).
            let latency = topology.segments[segment].latency_ns;
            let to_switch = latency - latency / 2;
            network.connect(
                (device, port),
                (switch_id, switch_port),
                to_switch,
                latency / 2,
            );
        };

    // Hosts: endpoints on their segment.
    for (index, host) in topology.hosts.iter().enumerate() {
        let device =
            network.add_device(host.name.clone(), Device::Endpoint(network.endpoints.len()));
        let point = network.add_point(&host.name, "eth0", PointKind::Edge);
        let segment = &topology.segments[host.segment];
        let gateway_mac = segment
            .gateway_ip
            .and_then(|ip| segment_neighbors[host.segment].get(&ip).copied());
        add_endpoint(
            &mut network,
            EndpointNic {
                name: host.name.clone(),
                reference: EndpointRef::Host(index),
                ip: host.ip,
                subnet: segment.cidr,
                mac: host_macs[index],
                mtu: segment.mtu,
                gateway_mac,
                gateway_ip: segment
                    .gateway_ip
                    .unwrap_or(Ipv4Addr::from(u32::from(segment.cidr.network()) + 1)),
                neighbors: segment_neighbors[host.segment].clone(),
                point,
                device,
            },
        );
        attach(&mut network, host.segment, device, 0, host_macs[index]);
    }

    // Routers, with the route tables the control plane computed for all of them.
    let control = crate::control::compute(topology);
    network.bgp_rounds = control.bgp_rounds;
    network.bgp_converged = control.bgp_converged;
    let mut route_tables = control.routers.into_iter();
    for (router_id, router) in topology.routers.iter().enumerate() {
        let mut ports = Vec::new();
        let transit_links = router
            .interfaces
            .iter()
            .filter(|i| i.name == Some("transit"))
            .count();
        for (index, interface) in router.interfaces.iter().enumerate() {
            let segment = &topology.segments[interface.segment];
            // An NSX transit link is `transit` at both ends (a Tier-0 with several
            // Tier-1s names each after its segment, `transit-T1`).
            let name = match interface.name {
                Some(name) if transit_links == 1 => name.to_string(),
                _ => segment.name.clone(),
            };
            let point = network.add_point(&router.name, &name, PointKind::Edge);
            ports.push(RouterPort {
                name,
                address: interface.address,
                mac: router_macs[router_id][index],
                mtu: segment.mtu,
                point,
                neighbors: segment_neighbors[interface.segment].clone(),
            });
        }
        let tables = route_tables
            .next()
            .unwrap_or_else(|| crate::control::select(Vec::new(), router.ecmp));
        let mut device_router = Router::new(router.name.clone(), ports, tables, router.urpf, seed);
        let servers = virtual_servers(topology, router_id);
        if !servers.is_empty() || !router.snat.is_empty() {
            device_router.set_nat(servers, &router.snat, topology.conntrack_max);
        }
        let device =
            network.add_device(router.name.clone(), Device::Router(Box::new(device_router)));
        for (index, interface) in router.interfaces.iter().enumerate() {
            let port = PortId::try_from(index).unwrap_or(PortId::MAX);
            attach(
                &mut network,
                interface.segment,
                device,
                port,
                router_macs[router_id][index],
            );
        }
    }

    // Nodes and their pods.
    let mut gateway_counter = 0u32;
    let mut pod_counter = 0u32;
    for (cluster_id, cluster) in topology.clusters.iter().enumerate() {
        let services = service_table(cluster, seed);
        let cluster_policy = Arc::new(crate::datapath::policy::compile(cluster));
        if cluster.calico.is_some() {
            for node_id in 0..cluster.nodes.len() {
                let at = CalicoNodeAt {
                    cluster_id,
                    node_id,
                    node_macs: &node_macs,
                    segment_neighbors: &segment_neighbors,
                    bgp: &control.nodes[cluster_id][node_id],
                    attach: &attach,
                    services: services.clone(),
                    policy: cluster_policy.clone(),
                };
                build_calico_node(&mut network, topology, at, &mut pod_counter);
            }
            continue;
        }
        for (node_id, node) in cluster.nodes.iter().enumerate() {
            let segment = &topology.segments[node.segment];
            let uplink_point = network.add_point(&node.name, "eth0", PointKind::Edge);
            let gateway_point = network.add_point(&node.name, "antrea-gw0", PointKind::Internal);
            let tunnel_point = network.add_point(&node.name, "antrea-tun0", PointKind::Internal);
            let gateway_mac = Mac::seeded(seed, mac_kind::NODE_GATEWAY, gateway_counter);
            gateway_counter += 1;
            let node_pods: Vec<usize> = (0..cluster.pods.len())
                .filter(|&pod| cluster.pods[pod].node == node_id)
                .collect();
            let mut local_pods = Vec::new();
            let mut pod_macs = Vec::new();
            for &pod in &node_pods {
                let pod_config = &cluster.pods[pod];
                let mac = Mac::seeded(seed, mac_kind::POD, pod_counter);
                pod_counter += 1;
                let veth_point = network.add_point(
                    &node.name,
                    &format!("veth-{}-{}", pod_config.namespace, pod_config.name),
                    PointKind::Internal,
                );
                local_pods.push(LocalPod {
                    name: pod_config.qualified_name(),
                    ip: pod_config.ip,
                    mac,
                    veth_point,
                });
                pod_macs.push(mac);
            }
            let peers = cluster
                .nodes
                .iter()
                .enumerate()
                .filter(|(other, _)| *other != node_id)
                .map(|(_, other)| {
                    // Antrea's modes (docs/noencap-hybrid-modes.md): encap tunnels to
                    // every peer, noEncap to none, hybrid only to peers on another
                    // subnet.
                    let same_subnet = other.segment == node.segment;
                    let tunnel = match cluster.antrea.traffic_encap_mode {
                        TrafficEncapMode::Encap => true,
                        TrafficEncapMode::NoEncap => false,
                        TrafficEncapMode::Hybrid => !same_subnet,
                    };
                    (
                        other.pod_cidr,
                        PeerNode {
                            name: other.name.clone(),
                            ip: other.ip,
                            tunnel,
                            same_subnet,
                        },
                    )
                })
                .collect();
            let host_process = node_process(
                &mut network,
                topology,
                (cluster_id, node_id),
                node_pods.len(),
                Some(crate::datapath::antrea::HOST_PROCESS_INTERFACE),
            );
            let settings = NodeSettings {
                host_process: host_process.clone(),
                name: node.name.clone(),
                ip: node.ip,
                mac: node_macs[cluster_id][node_id],
                uplink_subnet: segment.cidr,
                uplink_mtu: segment.mtu,
                pod_mtu: cluster.antrea.pod_mtu,
                default_gateway: segment.gateway_ip,
                neighbors: segment_neighbors[node.segment].clone(),
                gateway_mac,
                pod_cidr: node.pod_cidr,
                cluster_pod_cidr: cluster.pod_cidr,
                no_snat: cluster.antrea.no_snat,
                egress: node_egress(cluster, node_id),
                policy: cluster_policy.clone(),
                snat_fully_random_ports: cluster.antrea.snat_fully_random_ports,
                proxy_all: cluster.antrea.proxy_all,
                tunnel_pmtu_icmp: cluster.node_kernel.answers_tunnel_pmtu(),
                encapsulation: cluster.antrea.tunnel_type.encapsulation(),
                pods: local_pods.clone(),
                peers,
                conntrack_max: topology.conntrack_max,
                flow_cache_capacity: if topology.flow_cache {
                    crate::datapath::antrea::FLOW_CACHE_CAPACITY
                } else {
                    0
                },
                seed,
                uplink_point,
                gateway_point,
                tunnel_point,
            };
            let mut antrea = AntreaNode::new(settings);
            antrea.stack.services = services.clone();
            antrea.stack.node_index = node_id;
            let node_device = network.add_device(node.name.clone(), Device::Node(Box::new(antrea)));
            if let Some(process) = &host_process {
                attach_node_process(
                    &mut network,
                    topology,
                    (cluster_id, node_id),
                    process,
                    node_device,
                );
            }
            attach(
                &mut network,
                node.segment,
                node_device,
                0,
                node_macs[cluster_id][node_id],
            );

            // The pods' own view: their node's pod subnet is on-link (Antrea gives the
            // pod an address with the node subnet's prefix and antrea-gw0 as gateway).
            let mut on_link: FxHashMap<Ipv4Addr, Mac> =
                local_pods.iter().map(|p| (p.ip, p.mac)).collect();
            on_link.insert(node.gateway_ip(), gateway_mac);
            let on_link = Arc::new(on_link);
            for (local_index, &pod) in node_pods.iter().enumerate() {
                let view = PodView {
                    subnet: node.pod_cidr,
                    mac: pod_macs[local_index],
                    mtu: cluster.antrea.pod_mtu,
                    gateway_mac,
                    gateway_ip: node.gateway_ip(),
                    neighbors: on_link.clone(),
                };
                attach_pod(
                    &mut network,
                    topology,
                    (cluster_id, pod),
                    view,
                    (node_device, local_index),
                );
            }
        }
    }
    // The NSX DFW at each node's and host's vNIC.
    let mut vms: Vec<(&str, usize, Mac)> = Vec::new();
    for (cluster_id, cluster) in topology.clusters.iter().enumerate() {
        for (node_id, node) in cluster.nodes.iter().enumerate() {
            vms.push((&node.name, node.segment, node_macs[cluster_id][node_id]));
        }
    }
    for (index, host) in topology.hosts.iter().enumerate() {
        vms.push((&host.name, host.segment, host_macs[index]));
    }
    for (name, segment, mac) in vms {
        let Some(mut firewall) = crate::datapath::dfw::compile(topology, name) else {
            continue;
        };
        let eth0 = format!("{name}:eth0");
        firewall.point = network
            .points
            .iter()
            .position(|point| point.name == eth0)
            .and_then(|index| PointId::try_from(index).ok());
        if let Device::Switch(switch) = &mut network.devices[switches[segment]] {
            switch.set_firewall(mac, firewall);
        }
    }
    network
}

/// What node `node_id`'s Antrea agent programs for the cluster's Egresses.
fn node_egress(
    cluster: &crate::topology::Cluster,
    node_id: usize,
) -> crate::datapath::antrea::egress::NodeEgress {
    use crate::datapath::antrea::egress::{EgressPlan, NodeEgress};
    use crate::engine::rules::AddressSet;
    let mut by_pod = FxHashMap::default();
    for (index, egress) in cluster.egresses.iter().enumerate() {
        for &pod in &egress.pods {
            if cluster.pods[pod].node == node_id {
                by_pod.insert(cluster.pods[pod].ip, index);
            }
        }
    }
    let bypass = [cluster.pod_cidr, cluster.service_cidr].into_iter().chain(
        cluster
            .nodes
            .iter()
            .filter_map(|node| ipnet::Ipv4Net::new(node.ip, 32).ok()),
    );
    NodeEgress {
        egresses: cluster
            .egresses
            .iter()
            .map(|egress| EgressPlan {
                name: egress.name.clone(),
                ip: egress.ip,
                mark: egress.mark,
                held_here: egress.node == node_id,
                except_cidrs: AddressSet::new(egress.except_cidrs.iter().copied()),
            })
            .collect(),
        by_pod,
        bypass: AddressSet::new(bypass),
    }
}

/// The node's own listening processes (kube-proxy's health-check servers), on the
/// node port after its pods, if the node serves any.
fn node_process(
    network: &mut Network,
    topology: &Topology,
    (cluster, node): (usize, usize),
    pods_on_node: usize,
    interface: Option<crate::datapath::host::InteriorId>,
) -> Option<HostProcess> {
    let listens: Vec<u16> = topology.clusters[cluster]
        .health_checks(node)
        .into_iter()
        .map(|(port, _)| port)
        .collect();
    if listens.is_empty() {
        return None;
    }
    let name = &topology.clusters[cluster].nodes[node].name;
    let point = network.add_point(&format!("{name}/kube-proxy"), "lo", PointKind::Internal);
    let index = u32::try_from(network.endpoints.len()).unwrap_or(0);
    let port = PortId::try_from(pods_on_node + 1).unwrap_or(PortId::MAX);
    Some(HostProcess {
        port,
        // By default the interior interface is numbered like its port (Calico's
        // interior interfaces are its ports).
        interface: interface.unwrap_or(port),
        mac: Mac::seeded(topology.seed, mac_kind::HOST_PROCESS, index),
        point,
        listens,
    })
}

/// The endpoint that runs the node's processes, linked to the node.
fn attach_node_process(
    network: &mut Network,
    topology: &Topology,
    (cluster, node): (usize, usize),
    process: &HostProcess,
    node_device: DeviceId,
) {
    let settings = &topology.clusters[cluster].nodes[node];
    let name = format!("{}/kube-proxy", settings.name);
    let device = network.add_device(name.clone(), Device::Endpoint(network.endpoints.len()));
    add_endpoint(
        network,
        EndpointNic {
            name,
            reference: EndpointRef::Node { cluster, node },
            ip: settings.ip,
            subnet: Ipv4Net::new(settings.ip, 32).unwrap_or_default(),
            mac: process.mac,
            mtu: topology.segments[settings.segment].mtu,
            gateway_mac: Some(process.mac),
            gateway_ip: Ipv4Addr::new(169, 254, 1, 1),
            neighbors: Arc::new(FxHashMap::default()),
            point: process.point,
            device,
        },
    );
    network.connect((device, 0), (node_device, process.port), 0, 0);
}

/// How a pod sees its network: its interface's subnet, MAC and MTU, its default
/// gateway and the neighbours on its link.
struct PodView {
    subnet: Ipv4Net,
    mac: Mac,
    mtu: u16,
    gateway_mac: Mac,
    gateway_ip: Ipv4Addr,
    neighbors: Neighbors,
}

/// Adds pod `pod` of cluster `cluster` as an endpoint and wires its eth0 to port
/// `local_index + 1` of its node (the veth pair).
fn attach_pod(
    network: &mut Network,
    topology: &Topology,
    (cluster, pod): (usize, usize),
    view: PodView,
    (node_device, local_index): (DeviceId, usize),
) {
    let config = &topology.clusters[cluster].pods[pod];
    let name = config.qualified_name();
    let device = network.add_device(name.clone(), Device::Endpoint(network.endpoints.len()));
    let point = network.add_point(&name, "eth0", PointKind::Edge);
    add_endpoint(
        network,
        EndpointNic {
            name,
            reference: EndpointRef::Pod { cluster, pod },
            ip: config.ip,
            subnet: view.subnet,
            mac: view.mac,
            mtu: view.mtu,
            gateway_mac: Some(view.gateway_mac),
            gateway_ip: view.gateway_ip,
            neighbors: view.neighbors,
            point,
            device,
        },
    );
    let node_port = PortId::try_from(local_index + 1).unwrap_or(PortId::MAX);
    network.connect(
        (device, 0),
        (node_device, node_port),
        VETH_LATENCY_NS,
        VETH_LATENCY_NS,
    );
}

fn add_endpoint(network: &mut Network, nic: EndpointNic) {
    network
        .endpoint_index
        .insert(nic.reference, network.endpoints.len());
    network.endpoints.push(nic);
}

/// Which Calico node to build, and what the rest of the fabric already knows.
struct CalicoNodeAt<'a> {
    cluster_id: usize,
    node_id: usize,
    node_macs: &'a [Vec<Mac>],
    segment_neighbors: &'a [Neighbors],
    bgp: &'a crate::control::NodeBgp,
    /// Plugs a device's port into a segment's switch.
    attach: &'a dyn Fn(&mut Network, usize, DeviceId, PortId, Mac),
    services: Option<Arc<ServiceTable>>,
    policy: Arc<crate::datapath::policy::ClusterPolicy>,
}

/// The virtual servers of the LoadBalancer Services whose VIP lives on router
/// `router`: one per Service port, its pool by the backend mode.
fn virtual_servers(topology: &Topology, router: usize) -> Vec<VirtualServer> {
    use crate::topology::LbBackend;
    let mut servers = Vec::new();
    for cluster in &topology.clusters {
        for service in &cluster.services {
            let Some(lb) = service
                .load_balancer
                .as_ref()
                .filter(|lb| lb.router == router)
            else {
                continue;
            };
            for port in &service.ports {
                let members: Vec<(Ipv4Addr, u16)> = match lb.backend {
                    LbBackend::NodePort => {
                        let Some(node_port) = port.node_port else {
                            continue;
                        };
                        cluster
                            .nodes
                            .iter()
                            .enumerate()
                            .filter(|(index, _)| {
                                !service.external_local
                                    || port.endpoints.iter().any(|e| e.node == *index)
                            })
                            .map(|(_, node)| (node.ip, node_port))
                            .collect()
                    }
                    LbBackend::NodePortLocal => port
                        .endpoints
                        .iter()
                        .filter_map(|e| {
                            let mapping = cluster.node_port_local.iter().find(|m| {
                                m.pod == e.pod
                                    && m.pod_port == e.port
                                    && m.protocol == port.protocol
                            })?;
                            Some((cluster.nodes[mapping.node].ip, mapping.node_port))
                        })
                        .collect(),
                    LbBackend::ClusterIp => port.endpoints.iter().map(|e| (e.ip, e.port)).collect(),
                };
                servers.push(VirtualServer {
                    service: service.qualified_name(),
                    protocol: port.protocol.number(),
                    vip: lb.ip,
                    port: port.port,
                    members,
                    snat_automap: lb.snat_automap,
                    source_ranges: lb.source_ranges.clone(),
                });
            }
        }
    }
    servers
}

/// The cluster's Services as every node's proxy sees them (None without any).
fn service_table(cluster: &crate::topology::Cluster, seed: u64) -> Option<Arc<ServiceTable>> {
    if cluster.services.is_empty() {
        return None;
    }
    let mut table = ServiceTable::new(cluster.pod_cidr, seed);
    for mapping in &cluster.node_port_local {
        let backend = Backend {
            ip: cluster.pods[mapping.pod].ip,
            port: mapping.pod_port,
            node: mapping.node,
        };
        table.add_node_port_local(mapping.protocol.number(), mapping.node_port, backend);
    }
    for service in &cluster.services {
        let name = service.qualified_name();
        for port in &service.ports {
            let backends = port
                .endpoints
                .iter()
                .map(|e| Backend {
                    ip: e.ip,
                    port: e.port,
                    node: e.node,
                })
                .collect();
            table.add(ServicePortFrontends {
                service: name.clone(),
                protocol: port.protocol.number(),
                cluster_ip: service.cluster_ip,
                port: port.port,
                node_port: port.node_port,
                backends,
                external_local: service.external_local,
                internal_local: service.internal_local,
                affinity_timeout_ns: service.affinity_timeout_ns,
                load_balancer_ip: service.load_balancer.as_ref().map(|lb| lb.ip),
            });
        }
    }
    Some(Arc::new(table))
}

/// Calico's host-side veth name: `cali` + 11 hex digits of a hash of the workload
/// (Calico hashes the workload endpoint's id with SHA-1; any stable hash names it).
fn calico_veth_name(namespace: &str, pod: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in namespace.bytes().chain([b'.']).chain(pod.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("cali{:011x}", hash & 0xfff_ffff_ffff)
}

/// A Calico node, its pods and its kernel routes (what Felix and BIRD program).
fn build_calico_node(
    network: &mut Network,
    topology: &Topology,
    at: CalicoNodeAt,
    pod_counter: &mut u32,
) {
    let seed = topology.seed;
    let cluster = &topology.clusters[at.cluster_id];
    let Some(calico) = &cluster.calico else {
        return;
    };
    let node = &cluster.nodes[at.node_id];
    let segment = &topology.segments[node.segment];
    let uplink_point = network.add_point(&node.name, "eth0", PointKind::Edge);
    let tunnel = node.tunnel_ip.and_then(|address| {
        let encapsulation = calico.encapsulation(false)?;
        let name = match encapsulation {
            Encapsulation::Vxlan { .. } => "vxlan.calico",
            _ => "tunl0",
        };
        let point = network.add_point(&node.name, name, PointKind::Internal);
        if encapsulation == Encapsulation::Ipip {
            network.points[point as usize].raw_ip = true;
        }
        let vtep_mac = |index: usize| {
            Mac::seeded(
                seed,
                mac_kind::CALICO_VTEP,
                u32::try_from(at.cluster_id * 4096 + index).unwrap_or(0),
            )
        };
        let vteps = cluster
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(index, peer)| Some((peer.tunnel_ip?, (peer.ip, vtep_mac(index)))))
            .collect();
        Some(CalicoTunnel {
            encapsulation,
            address,
            mac: vtep_mac(at.node_id),
            point,
            vteps,
        })
    });
    let node_pods: Vec<usize> = (0..cluster.pods.len())
        .filter(|&pod| cluster.pods[pod].node == at.node_id)
        .collect();
    let mut pods = Vec::new();
    let mut veth_names = Vec::new();
    for &pod in &node_pods {
        let config = &cluster.pods[pod];
        let veth = calico_veth_name(&config.namespace, &config.name);
        let veth_point = network.add_point(&node.name, &veth, PointKind::Internal);
        pods.push(LocalPod {
            name: config.qualified_name(),
            ip: config.ip,
            mac: Mac::seeded(seed, mac_kind::POD, *pod_counter),
            veth_point,
        });
        *pod_counter += 1;
        veth_names.push(veth);
    }
    let routes = calico_routes(topology, at.cluster_id, at.node_id, &pods, at.bgp);
    let host_process = node_process(
        network,
        topology,
        (at.cluster_id, at.node_id),
        node_pods.len(),
        None,
    );
    let settings = CalicoNodeSettings {
        policy: at.policy.clone(),
        host_process: host_process.clone(),
        name: node.name.clone(),
        ip: node.ip,
        mac: at.node_macs[at.cluster_id][at.node_id],
        uplink_mtu: segment.mtu,
        neighbors: at.segment_neighbors[node.segment].clone(),
        uplink_point,
        pod_mtu: calico.pod_mtu,
        pods: pods.clone(),
        veth_names,
        tunnel,
        routes,
        nat_outgoing: calico.nat_outgoing,
        pools: calico.pools.clone(),
        conntrack_max: topology.conntrack_max,
        seed,
        bgp: at.bgp.clone(),
    };
    let mut calico_node = CalicoNode::new(settings);
    calico_node.stack.services = at.services.clone();
    calico_node.stack.node_index = at.node_id;
    let node_device =
        network.add_device(node.name.clone(), Device::CalicoNode(Box::new(calico_node)));
    if let Some(process) = &host_process {
        attach_node_process(
            network,
            topology,
            (at.cluster_id, at.node_id),
            process,
            node_device,
        );
    }
    (at.attach)(
        network,
        node.segment,
        node_device,
        0,
        at.node_macs[at.cluster_id][at.node_id],
    );
    // A Calico pod has a /32 and a default route via 169.254.1.1, which proxy ARP
    // on the veth answers with ee:ee:ee:ee:ee:ee: every frame goes to the node.
    let no_neighbors: Neighbors = Arc::new(FxHashMap::default());
    for (local_index, &pod) in node_pods.iter().enumerate() {
        let view = PodView {
            subnet: Ipv4Net::new(cluster.pods[pod].ip, 32).unwrap_or_default(),
            mac: pods[local_index].mac,
            mtu: calico.pod_mtu,
            gateway_mac: crate::datapath::calico::VETH_MAC,
            gateway_ip: crate::datapath::calico::POD_GATEWAY,
            neighbors: no_neighbors.clone(),
        };
        attach_pod(
            network,
            topology,
            (at.cluster_id, pod),
            view,
            (node_device, local_index),
        );
    }
}

/// A Calico node's kernel routing table (reference §f): the node subnet and default
/// route; Felix's /32 per local pod via its veth; BIRD's blackhole for each affine
/// block; then the routes to other nodes' blocks and borrowed /32s — with VXLAN,
/// Felix programs them from IPAM (`via <peer VTEP> dev vxlan.calico onlink`, or
/// straight to a peer on the same subnet under CrossSubnet) and BIRD's BGP routes
/// inside the pools stay out of the kernel; otherwise BIRD installs its BGP best
/// paths, via tunl0 (`onlink`) when ipipMode applies to the next hop (CrossSubnet: a
/// next hop outside the node's subnet, `krt_tunnel` in bird_ipam.cfg), else via the
/// next hop itself or, off-subnet, recursively through the default gateway.
fn calico_routes(
    topology: &Topology,
    cluster_id: usize,
    node_id: usize,
    pods: &[LocalPod],
    bgp: &crate::control::NodeBgp,
) -> Vec<(Ipv4Net, HostRoute, RouteSource)> {
    let cluster = &topology.clusters[cluster_id];
    let Some(calico) = &cluster.calico else {
        return Vec::new();
    };
    let node = &cluster.nodes[node_id];
    let segment = &topology.segments[node.segment];
    let tunnel = |via: Option<Ipv4Addr>| HostRoute::Interior { interface: 0, via };
    let mut routes = vec![(
        segment.cidr.trunc(),
        HostRoute::Uplink { via: None },
        RouteSource::Connected,
    )];
    if let Some(gateway) = segment.gateway_ip {
        routes.push((
            Ipv4Net::default(),
            HostRoute::Uplink { via: Some(gateway) },
            RouteSource::Static,
        ));
    }
    for block in &node.blocks {
        routes.push((*block, HostRoute::Blackhole, RouteSource::Bird));
    }
    let vxlan = matches!(
        calico.encapsulation(false),
        Some(Encapsulation::Vxlan { .. })
    );
    let via_peer = |peer: &crate::topology::Node| -> HostRoute {
        let same_subnet = segment.cidr.contains(&peer.ip);
        match calico.encapsulation(same_subnet) {
            Some(Encapsulation::Vxlan { .. }) => tunnel(peer.tunnel_ip),
            Some(_) => tunnel(Some(peer.ip)),
            None if same_subnet => HostRoute::Uplink { via: Some(peer.ip) },
            None => HostRoute::Uplink {
                via: segment.gateway_ip,
            },
        }
    };
    if vxlan {
        for (index, peer) in cluster.nodes.iter().enumerate() {
            if index == node_id {
                continue;
            }
            for block in &peer.blocks {
                routes.push((*block, via_peer(peer), RouteSource::Felix));
            }
            for pod in cluster.pods.iter().filter(|p| p.node == index) {
                if !peer.blocks.iter().any(|b| b.contains(&pod.ip)) {
                    let host = Ipv4Net::new(pod.ip, 32).unwrap_or_default();
                    routes.push((host, via_peer(peer), RouteSource::Felix));
                }
            }
        }
    }
    let mut installed: Vec<Ipv4Net> = Vec::new();
    for candidate in bgp.candidates.iter().filter(|c| c.best) {
        let Some(next_hop) = candidate.next_hop else {
            continue;
        };
        // BIRD's direct protocol (preference 240) holds the node subnet over BGP
        // (100); with VXLAN, Felix programs the pool routes, not BIRD.
        if installed.contains(&candidate.prefix)
            || candidate.prefix == segment.cidr.trunc()
            || (vxlan && calico.in_pool(candidate.prefix.addr()))
        {
            continue;
        }
        installed.push(candidate.prefix);
        let same_subnet = segment.cidr.contains(&next_hop);
        let route = match calico.encapsulation(same_subnet) {
            Some(Encapsulation::Ipip) if calico.in_pool(candidate.prefix.addr()) => {
                tunnel(Some(next_hop))
            }
            _ => HostRoute::Uplink {
                via: Some(candidate.resolved_via.unwrap_or(next_hop)),
            },
        };
        routes.push((candidate.prefix, route, RouteSource::Bird));
    }
    for (index, pod) in pods.iter().enumerate() {
        let host = Ipv4Net::new(pod.ip, 32).unwrap_or_default();
        let interface = u16::try_from(index + 1).unwrap_or(u16::MAX);
        routes.push((
            host,
            HostRoute::Interior {
                interface,
                via: None,
            },
            RouteSource::Felix,
        ));
    }
    routes
}
