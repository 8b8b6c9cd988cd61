//! Network policy as every CNI enforces it, on the engine's rule table: a cluster's
//! Antrea ClusterNetworkPolicies and Kubernetes NetworkPolicies compiled once, per
//! direction, into three `Layer<PolicyAction>`s (reference §b, §d), and a per-node
//! enforcer that decides a connection once — egress on the source pod's node,
//! ingress on the destination's — and lets every later packet and every reply of an
//! allowed connection through its own connection table, as Antrea's `ct_state=+est`
//! flows and Felix's conntrack accept rule do.
//!
//! Evaluation: the Antrea tiers (emergency 50 … application 250; within a tier by
//! policy priority, rules in order; first match; `Pass` falls through), then
//! Kubernetes policy (every rule that allows, then one drop per policy for the pods
//! it isolates — "default-deny by isolation" — so allows are additive), then, for
//! connections Kubernetes policy does not isolate, the baseline tier (253), then
//! allow.

use super::path_log::Table;
use super::{Ctx, DropReason};
use crate::engine::conntrack::Conntrack;
use crate::engine::rules::{AddressSet, Layer, Metadata, Predicate, Rule};
use crate::packet::{FlowKey, Packet};
use crate::topology::policy::{
    named_port, ClusterNetworkPolicy, PolicyPeer, PolicyPort, PortRef, BASELINE_TIER,
};
use crate::topology::Cluster;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Not;
use std::sync::Arc;

/// What a policy rule does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyAction {
    Allow,
    Drop,
    /// Answer the client (TCP RST, ICMP administratively prohibited).
    Reject,
    /// Hand the decision to the next level (Antrea's `Pass`).
    Pass,
}

/// Which way a policy looks at a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDirection {
    /// Leaving the source pod (enforced on its node).
    Egress,
    /// Arriving at the destination pod (enforced on its node).
    Ingress,
}

impl PolicyDirection {
    pub fn name(self) -> &'static str {
        match self {
            PolicyDirection::Egress => "egress",
            PolicyDirection::Ingress => "ingress",
        }
    }
}

/// One direction's compiled policy, in the order Antrea evaluates it (reference §b):
/// the Antrea-native tiers emergency … application (Allow, Drop, Reject, or Pass to
/// the next level), then Kubernetes NetworkPolicy (allows, then isolation drops),
/// then the baseline tier for what Kubernetes policy leaves unisolated.
#[derive(Debug, Clone)]
pub struct DirectionPolicy {
    pub tiers: Layer<PolicyAction>,
    pub kubernetes: Layer<PolicyAction>,
    pub baseline: Layer<PolicyAction>,
}

impl DirectionPolicy {
    fn new(direction: PolicyDirection) -> Self {
        let name = direction.name();
        DirectionPolicy {
            tiers: Layer::new(format!("antrea-tiers/{name}"), PolicyAction::Pass),
            kubernetes: Layer::new(format!("network-policy/{name}"), PolicyAction::Pass),
            baseline: Layer::new(format!("baseline/{name}"), PolicyAction::Allow),
        }
    }

    fn is_empty(&self) -> bool {
        self.tiers.is_empty() && self.kubernetes.is_empty() && self.baseline.is_empty()
    }

    /// The decision for a new connection: the first tier rule that is not Pass;
    /// else Kubernetes policy where it isolates; else the baseline tier; else allow.
    /// Every rule that decided something (a Pass included) is listed, last the one
    /// that decided.
    pub fn decide(&self, key: &FlowKey) -> Vec<PolicyDecision> {
        let metadata = Metadata {
            key: *key,
            in_interface: None,
            out_interface: None,
            mark: 0,
        };
        let mut steps = Vec::new();
        for layer in [&self.tiers, &self.kubernetes, &self.baseline] {
            let decision = layer.classify(&metadata);
            let action = *decision.action;
            if decision.rule.is_some() {
                steps.push(PolicyDecision {
                    action,
                    rule: Some(decision.name.to_string()),
                });
            }
            if action != PolicyAction::Pass {
                if decision.rule.is_none() {
                    steps.push(PolicyDecision { action, rule: None });
                }
                return steps;
            }
        }
        steps.push(PolicyDecision {
            action: PolicyAction::Allow,
            rule: None,
        });
        steps
    }
}

/// A cluster's compiled policy.
#[derive(Debug, Clone)]
pub struct ClusterPolicy {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl ClusterPolicy {
    pub fn is_empty(&self) -> bool {
        self.ingress.is_empty() && self.egress.is_empty()
    }

    pub fn direction(&self, direction: PolicyDirection) -> &DirectionPolicy {
        match direction {
            PolicyDirection::Egress => &self.egress,
            PolicyDirection::Ingress => &self.ingress,
        }
    }

    /// The final decision for a new connection in one direction.
    pub fn decide(&self, direction: PolicyDirection, key: &FlowKey) -> PolicyDecision {
        self.direction(direction)
            .decide(key)
            .pop()
            .unwrap_or(PolicyDecision {
                action: PolicyAction::Allow,
                rule: None,
            })
    }
}

/// What a policy decided for a new connection in one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDecision {
    pub action: PolicyAction,
    /// The deciding rule (`network_policy:NS/NAME ingress[0]`, `default-deny by
    /// isolation: NS/NAME`, `cluster_network_policy:NAME ingress[1]`), or None when
    /// no rule applies.
    pub rule: Option<String>,
}

/// Compiles a cluster's ClusterNetworkPolicies and NetworkPolicies.
pub fn compile(cluster: &Cluster) -> ClusterPolicy {
    let mut ingress = DirectionPolicy::new(PolicyDirection::Ingress);
    let mut egress = DirectionPolicy::new(PolicyDirection::Egress);
    for (direction, compiled) in [
        (PolicyDirection::Ingress, &mut ingress),
        (PolicyDirection::Egress, &mut egress),
    ] {
        compile_tiers(cluster, direction, compiled);
        compile_kubernetes(cluster, direction, &mut compiled.kubernetes);
    }
    ClusterPolicy { ingress, egress }
}

/// Antrea-native rules: tiers by priority, policies by priority (ties in file
/// order), rules in order; baseline's into its own layer.
fn compile_tiers(cluster: &Cluster, direction: PolicyDirection, compiled: &mut DirectionPolicy) {
    let mut order: Vec<&ClusterNetworkPolicy> = cluster.cluster_network_policies.iter().collect();
    order.sort_by(|a, b| {
        (a.tier_priority, a.priority)
            .partial_cmp(&(b.tier_priority, b.priority))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    for policy in order {
        if policy.pods.is_empty() {
            continue;
        }
        let rules = match direction {
            PolicyDirection::Ingress => &policy.ingress,
            PolicyDirection::Egress => &policy.egress,
        };
        let selected = pod_set(cluster, &policy.pods);
        let layer = if policy.tier_priority == BASELINE_TIER {
            &mut compiled.baseline
        } else {
            &mut compiled.tiers
        };
        for (index, rule) in rules.iter().enumerate() {
            let name = format!(
                "cluster_network_policy:{} {}[{index}]",
                policy.name,
                direction.name()
            );
            for predicates in
                rule_predicates(cluster, &policy.pods, direction, &rule.rule, &selected)
            {
                layer.push(Rule::new(name.clone(), predicates, rule.action));
            }
        }
    }
}

/// Kubernetes NetworkPolicy: every allow, then each policy's isolation drop.
fn compile_kubernetes(
    cluster: &Cluster,
    direction: PolicyDirection,
    layer: &mut Layer<PolicyAction>,
) {
    let mut isolation = Vec::new();
    for policy in &cluster.network_policies {
        let rules = match direction {
            PolicyDirection::Ingress => &policy.ingress,
            PolicyDirection::Egress => &policy.egress,
        };
        let Some(rules) = rules else {
            continue;
        };
        if policy.pods.is_empty() {
            continue;
        }
        let selected = pod_set(cluster, &policy.pods);
        for (index, rule) in rules.iter().enumerate() {
            let name = format!(
                "network_policy:{} {}[{index}]",
                policy.qualified_name(),
                direction.name()
            );
            for predicates in rule_predicates(cluster, &policy.pods, direction, rule, &selected) {
                layer.push(Rule::new(name.clone(), predicates, PolicyAction::Allow));
            }
        }
        isolation.push(Rule::new(
            format!("default-deny by isolation: {}", policy.qualified_name()),
            vec![own_side(direction, selected)],
            PolicyAction::Drop,
        ));
    }
    for rule in isolation {
        layer.push(rule);
    }
}

/// The policy's own pods: the destination of ingress, the source of egress.
fn own_side(direction: PolicyDirection, pods: AddressSet) -> Predicate {
    match direction {
        PolicyDirection::Ingress => Predicate::DestinationIn(pods),
        PolicyDirection::Egress => Predicate::SourceIn(pods),
    }
}

/// The peer: the source of ingress, the destination of egress.
fn peer_side(direction: PolicyDirection, addresses: AddressSet) -> Predicate {
    match direction {
        PolicyDirection::Ingress => Predicate::SourceIn(addresses),
        PolicyDirection::Egress => Predicate::DestinationIn(addresses),
    }
}

fn pod_set(cluster: &Cluster, pods: &[usize]) -> AddressSet {
    AddressSet::of_hosts(pods.iter().map(|&pod| cluster.pods[pod].ip))
}

/// The conjunctions one rule compiles to: one per (peer, port, destination group).
/// A named port is resolved on each destination pod (the policy's own pods for
/// ingress, the peer pods — or every pod, for any peer — for egress), so pods that
/// name the port differently get their own rules, and pods without it none.
fn rule_predicates(
    cluster: &Cluster,
    own_pods: &[usize],
    direction: PolicyDirection,
    rule: &crate::topology::policy::PolicyRule,
    selected: &AddressSet,
) -> Vec<Vec<Predicate>> {
    let peers: Vec<Option<&PolicyPeer>> = match &rule.peers {
        None => vec![None],
        Some(peers) => peers.iter().map(Some).collect(),
    };
    let ports: Vec<Option<&PolicyPort>> = match &rule.ports {
        None => vec![None],
        Some(ports) => ports.iter().map(Some).collect(),
    };
    let mut out = Vec::new();
    for peer in &peers {
        let peer_predicates = peer_predicates(cluster, direction, *peer);
        for port in &ports {
            let port_groups = match port {
                None => vec![(Vec::new(), None)],
                Some(port) => port_predicates(cluster, own_pods, direction, *peer, port),
            };
            for (port_predicates, destinations) in port_groups {
                let mut predicates = vec![own_side(direction, selected.clone())];
                predicates.extend(peer_predicates.iter().cloned());
                predicates.extend(port_predicates);
                if let Some(destinations) = destinations {
                    predicates.push(Predicate::DestinationIn(destinations));
                }
                out.push(predicates);
            }
        }
    }
    out
}

fn peer_predicates(
    cluster: &Cluster,
    direction: PolicyDirection,
    peer: Option<&PolicyPeer>,
) -> Vec<Predicate> {
    match peer {
        None => Vec::new(),
        Some(PolicyPeer::Pods(pods)) => vec![peer_side(direction, pod_set(cluster, pods))],
        Some(PolicyPeer::IpBlock { cidr, except }) => {
            let mut predicates = vec![peer_side(direction, AddressSet::new([*cidr]))];
            if !except.is_empty() {
                predicates
                    .push(peer_side(direction, AddressSet::new(except.iter().copied())).not());
            }
            predicates
        }
    }
}

/// A port's predicates, and (for a named port) the destination pods each number
/// applies to.
fn port_predicates(
    cluster: &Cluster,
    own_pods: &[usize],
    direction: PolicyDirection,
    peer: Option<&PolicyPeer>,
    port: &PolicyPort,
) -> Vec<(Vec<Predicate>, Option<AddressSet>)> {
    let protocol = Predicate::Protocol(port.protocol);
    match &port.port {
        None => vec![(vec![protocol], None)],
        Some(PortRef::Number(low)) => vec![(
            vec![
                protocol,
                Predicate::DestinationPort {
                    low: *low,
                    high: port.end_port.unwrap_or(*low),
                },
            ],
            None,
        )],
        Some(PortRef::Name(name)) => {
            let candidates: Vec<usize> = match (direction, peer) {
                (PolicyDirection::Ingress, _) => own_pods.to_vec(),
                (PolicyDirection::Egress, Some(PolicyPeer::Pods(pods))) => pods.clone(),
                (PolicyDirection::Egress, _) => (0..cluster.pods.len()).collect(),
            };
            let mut by_number: BTreeMap<u16, Vec<Ipv4Addr>> = BTreeMap::new();
            for pod in candidates {
                if let Some(number) = named_port(&cluster.pods[pod], name, port.protocol) {
                    by_number
                        .entry(number)
                        .or_default()
                        .push(cluster.pods[pod].ip);
                }
            }
            by_number
                .into_iter()
                .map(|(number, addresses)| {
                    (
                        vec![
                            protocol.clone(),
                            Predicate::DestinationPort {
                                low: number,
                                high: number,
                            },
                        ],
                        Some(AddressSet::of_hosts(addresses)),
                    )
                })
                .collect()
        }
    }
}

/// One node's policy enforcement: the cluster's compiled policy and the node's
/// table of connections policy has allowed.
#[derive(Debug, Clone)]
pub struct PolicyEnforcer {
    pub policy: Arc<ClusterPolicy>,
    connections: Conntrack,
}

/// A connection's policy state on one packet's way through a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyState {
    /// No policy anywhere in the cluster: nothing to check.
    Unenforced,
    /// A packet of a connection policy already allowed here (or its reply).
    Established,
    /// The first packet of a connection: each direction enforced on this node is
    /// decided, and the connection committed when every one allows it.
    New,
}

impl PolicyEnforcer {
    /// The table of connections policy allowed.
    pub fn connections(&self) -> &Conntrack {
        &self.connections
    }

    pub fn connections_mut(&mut self) -> &mut Conntrack {
        &mut self.connections
    }

    pub fn new(policy: Arc<ClusterPolicy>, conntrack_max: usize, seed: u64) -> Self {
        PolicyEnforcer {
            policy,
            connections: Conntrack::new(conntrack_max, seed),
        }
    }

    /// Looks the packet's connection up (`ct_state`).
    pub fn state(&mut self, ctx: &mut Ctx, packet: &Packet) -> PolicyState {
        if self.policy.is_empty() {
            return PolicyState::Unenforced;
        }
        let key = packet.meta.key;
        match ctx.track(
            Table::Policy,
            &mut self.connections,
            &key,
            packet.meta.tcp_flags,
        ) {
            Some(_) => PolicyState::Established,
            None => PolicyState::New,
        }
    }

    /// Decides one direction for a new connection, recording the decision on the
    /// flow; a denial is returned as the drop to make.
    pub fn check(
        &self,
        ctx: &mut Ctx,
        device: &str,
        direction: PolicyDirection,
        packet: &Packet,
    ) -> Result<(), PolicyDenial> {
        let mut steps = self.policy.direction(direction).decide(&packet.meta.key);
        for step in &steps {
            if let Some(rule) = &step.rule {
                ctx.policy(device, packet, direction.name(), step.action, rule);
            }
        }
        let decision = steps.pop().unwrap_or(PolicyDecision {
            action: PolicyAction::Allow,
            rule: None,
        });
        match decision.action {
            PolicyAction::Allow | PolicyAction::Pass => Ok(()),
            action => Err(PolicyDenial {
                action,
                rule: decision.rule.unwrap_or_else(|| "default".into()),
                direction,
            }),
        }
    }

    /// Commits an allowed new connection: its later packets and replies pass.
    pub fn commit(&mut self, ctx: &Ctx, packet: &Packet) {
        let _ = self
            .connections
            .insert_untranslated(packet.meta.key, ctx.now_ns);
    }
}

/// A connection policy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDenial {
    pub action: PolicyAction,
    pub rule: String,
    pub direction: PolicyDirection,
}

impl PolicyDenial {
    pub fn reason(&self) -> DropReason {
        DropReason::Policy
    }

    /// `ingress denied by network_policy:…`.
    pub fn describe(&self) -> String {
        let verb = match self.action {
            PolicyAction::Reject => "rejected",
            _ => "dropped",
        };
        format!("{} {verb} by {}", self.direction.name(), self.rule)
    }
}
