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
}

/// Every frontend of a cluster.
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    /// (protocol, ClusterIP, port) -> frontend.
    cluster_ips: FxHashMap<(u8, Ipv4Addr, u16), usize>,
    /// (protocol, node port) -> frontend, on every node address.
    node_ports: FxHashMap<(u8, u16), usize>,
    frontends: Vec<Frontend>,
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
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        service: &str,
        protocol: u8,
        cluster_ip: Ipv4Addr,
        port: u16,
        node_port: Option<u16>,
        backends: Vec<Backend>,
        external_local: bool,
        internal_local: bool,
    ) {
        let frontend = Frontend {
            service: service.to_string(),
            kind: FrontendKind::ClusterIp,
            backends,
            external_local,
            internal_local,
        };
        self.cluster_ips
            .insert((protocol, cluster_ip, port), self.frontends.len());
        if let Some(node_port) = node_port {
            self.node_ports
                .insert((protocol, node_port), self.frontends.len() + 1);
            self.frontends.push(frontend.clone());
            self.frontends.push(Frontend {
                kind: FrontendKind::NodePort,
                ..frontend
            });
        } else {
            self.frontends.push(frontend);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
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
