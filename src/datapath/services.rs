//! The Service frontends a node's proxy translates — kube-proxy's iptables rules in
//! the host stack, AntreaProxy's flows in OVS (reference §c) — built once from the
//! topology and shared by every node of a cluster. A frontend is a ClusterIP:port
//! or a node port; its backends are the EndpointSlice. The choice of a backend is
//! uniform over the eligible ones, as kube-proxy's `statistic --mode random` chain
//! gives, made deterministic by hashing the connection's 5-tuple with the topology
//! seed: each connection keeps its backend through conntrack, connections spread.

use crate::engine::hash::flow_hash;
use crate::packet::FlowKey;
use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// One endpoint of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The node (index in the cluster) the endpoint runs on.
    pub node: usize,
}

/// What a frontend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
}

/// One Service port, as a frontend.
#[derive(Debug, Clone)]
pub struct Frontend {
    /// `NS/NAME`.
    pub service: String,
    pub kind: FrontendKind,
    pub backends: Vec<Backend>,
    /// `externalTrafficPolicy: Local` (node ports).
    pub external_local: bool,
    /// `internalTrafficPolicy: Local` (ClusterIP).
    pub internal_local: bool,
    /// `sessionAffinity: ClientIP`: how long a client sticks to its endpoint.
    pub affinity_timeout_ns: Option<u64>,
    /// Its index in the table (the key of affinity entries).
    pub index: usize,
}

/// One node's ClientIP affinity memory: kube-proxy's `-m recent` list per KUBE-SEP,
/// AntreaProxy's learned flows. (frontend, client) -> (endpoint, expiry).
#[derive(Debug, Clone, Default)]
pub struct Affinity {
    entries: FxHashMap<(usize, Ipv4Addr), (Backend, u64)>,
}

/// What one Service port contributes: its ClusterIP frontend and, for a NodePort
/// Service, its node port.
#[derive(Debug, Clone)]
pub struct ServicePortFrontends {
    /// `NS/NAME`.
    pub service: String,
    pub protocol: u8,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub backends: Vec<Backend>,
    pub external_local: bool,
    pub internal_local: bool,
    pub affinity_timeout_ns: Option<u64>,
    /// A LoadBalancer Service's VIP: from inside the cluster it is translated on the
    /// node like a ClusterIP, with Cluster semantics (reference §c).
    pub load_balancer_ip: Option<Ipv4Addr>,
}

/// Every frontend of a cluster.
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    /// (protocol, ClusterIP, port) -> frontend.
    cluster_ips: FxHashMap<(u8, Ipv4Addr, u16), usize>,
    /// (protocol, node port) -> frontend, on every node address.
    node_ports: FxHashMap<(u8, u16), usize>,
    frontends: Vec<Frontend>,
    /// NodePortLocal: (node, protocol, node port) -> the pod behind it.
    node_port_local: FxHashMap<(usize, u8, u16), Backend>,
    /// kube-proxy `--cluster-cidr`: the pod network.
    pub cluster_cidr: Ipv4Net,
    seed: u64,
}

impl ServiceTable {
    pub fn new(cluster_cidr: Ipv4Net, seed: u64) -> Self {
        ServiceTable {
            cluster_cidr,
            seed,
            ..Default::default()
        }
    }

    /// Adds one Service port: its ClusterIP frontend, and its node port if any.
    pub fn add(&mut self, port: ServicePortFrontends) {
        let ServicePortFrontends {
            service,
            protocol,
            cluster_ip,
            port,
            node_port,
            backends,
            external_local,
            internal_local,
            affinity_timeout_ns,
            load_balancer_ip,
        } = port;
        let frontend = Frontend {
            service,
            kind: FrontendKind::ClusterIp,
            backends,
            external_local,
            internal_local,
            affinity_timeout_ns,
            index: self.frontends.len(),
        };
        self.cluster_ips
            .insert((protocol, cluster_ip, port), self.frontends.len());
        if let Some(vip) = load_balancer_ip {
            self.cluster_ips
                .insert((protocol, vip, port), self.frontends.len() + 1);
            self.frontends.push(frontend.clone());
            self.frontends.push(Frontend {
                internal_local: false,
                index: self.frontends.len(),
                ..frontend.clone()
            });
            if let Some(node_port) = node_port {
                self.node_ports
                    .insert((protocol, node_port), self.frontends.len());
                self.frontends.push(Frontend {
                    kind: FrontendKind::NodePort,
                    index: self.frontends.len(),
                    ..frontend
                });
            }
            return;
        }
        if let Some(node_port) = node_port {
            self.node_ports
                .insert((protocol, node_port), self.frontends.len() + 1);
            self.frontends.push(frontend.clone());
            self.frontends.push(Frontend {
                kind: FrontendKind::NodePort,
                index: self.frontends.len(),
                ..frontend
            });
        } else {
            self.frontends.push(frontend);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.node_port_local.is_empty()
    }

    /// Adds a NodePortLocal mapping on `backend.node`.
    pub fn add_node_port_local(&mut self, protocol: u8, node_port: u16, backend: Backend) {
        self.node_port_local
            .insert((backend.node, protocol, node_port), backend);
    }

    /// The pod a NodePortLocal port of node `node` forwards to.
    pub fn node_port_local(&self, node: usize, key: &FlowKey) -> Option<Backend> {
        self.node_port_local
            .get(&(node, key.protocol, key.destination_port))
            .copied()
    }

    /// The ClusterIP frontend a packet is addressed to.
    pub fn cluster_ip(&self, key: &FlowKey) -> Option<&Frontend> {
        let index = self
            .cluster_ips
            .get(&(key.protocol, key.destination, key.destination_port))?;
        self.frontends.get(*index)
    }

    /// The node-port frontend a packet to one of the node's addresses hits.
    pub fn node_port(&self, key: &FlowKey) -> Option<&Frontend> {
        let index = self.node_ports.get(&(key.protocol, key.destination_port))?;
        self.frontends.get(*index)
    }

    /// The backend a new connection goes to, honouring ClientIP affinity: a client
    /// seen within the timeout gets its endpoint again (if still eligible), and every
    /// new connection renews the memory (`--rcheck --seconds T --reap`, `--set`).
    pub fn choose_sticky(
        &self,
        frontend: &Frontend,
        key: &FlowKey,
        only_node: Option<usize>,
        affinity: &mut Affinity,
        now_ns: u64,
    ) -> Option<Backend> {
        let Some(timeout) = frontend.affinity_timeout_ns else {
            return self.choose(frontend, key, only_node);
        };
        let client = (frontend.index, key.source);
        let remembered = affinity
            .entries
            .get(&client)
            .filter(|(backend, expiry)| {
                now_ns <= *expiry
                    && only_node.is_none_or(|node| backend.node == node)
                    && frontend.backends.contains(backend)
            })
            .map(|(backend, _)| *backend);
        let backend = remembered.or_else(|| self.choose(frontend, key, only_node))?;
        affinity
            .entries
            .insert(client, (backend, now_ns.saturating_add(timeout)));
        Some(backend)
    }

    /// The backend of `frontend` a new connection goes to: uniform over the
    /// backends, or over those on `only_node` when a traffic policy is Local.
    pub fn choose(
        &self,
        frontend: &Frontend,
        key: &FlowKey,
        only_node: Option<usize>,
    ) -> Option<Backend> {
        let eligible = |b: &&Backend| only_node.is_none_or(|node| b.node == node);
        let count = frontend.backends.iter().filter(eligible).count();
        if count == 0 {
            return None;
        }
        let pick = usize::try_from(flow_hash(key, self.seed)).unwrap_or(0) % count;
        frontend.backends.iter().filter(eligible).nth(pick).copied()
    }
}
