//! Kubernetes NetworkPolicy (`[[cluster.network_policy]]`), resolved as the API
//! server validates it and as every CNI reads it (reference §d): the pods a policy
//! selects, the directions it isolates (`policy_types`, defaulting to Ingress plus
//! Egress when an egress section is written), and each rule's peers and ports with
//! selectors evaluated against the cluster's pods and namespaces. Peers and ports
//! left out mean "everything"; an empty rule list isolates and allows nothing.

use super::config::Text;
use super::model::{Namespace, Pod, Protocol};
use super::resolve::{Resolver, Result};
use super::selector::{resolve_selector, LabelSelectorConfig, PodsByNamespace};
use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

/// `[[cluster.network_policy]]`: a NetworkPolicy spec in snake_case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicyConfig {
    pub name: Text,
    #[serde(default)]
    pub namespace: Option<Text>,
    #[serde(default)]
    pub pod_selector: Option<LabelSelectorConfig>,
    #[serde(default)]
    pub policy_types: Option<Vec<Text>>,
    #[serde(default)]
    pub ingress: Option<Vec<Spanned<PolicyRuleConfig>>>,
    #[serde(default)]
    pub egress: Option<Vec<Spanned<PolicyRuleConfig>>>,
}

/// One ingress or egress rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRuleConfig {
    #[serde(default)]
    pub from: Option<Vec<Spanned<PeerConfig>>>,
    #[serde(default)]
    pub to: Option<Vec<Spanned<PeerConfig>>>,
    #[serde(default)]
    pub ports: Option<Vec<Spanned<PolicyPortConfig>>>,
}

/// A peer: pod and/or namespace selectors, or an IP block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    #[serde(default)]
    pub namespace_selector: Option<LabelSelectorConfig>,
    #[serde(default)]
    pub pod_selector: Option<LabelSelectorConfig>,
    #[serde(default)]
    pub ip_block: Option<IpBlockConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlockConfig {
    pub cidr: Text,
    #[serde(default)]
    pub except: Vec<Text>,
}

/// A port: by number or by name, with an optional range end.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPortConfig {
    #[serde(default)]
    pub protocol: Option<Text>,
    #[serde(default)]
    pub port: Option<Spanned<PortValue>>,
    #[serde(default)]
    pub end_port: Option<Spanned<u16>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(u16),
    Name(String),
}

/// A resolved NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub name: String,
    pub namespace: String,
    /// The pods it selects (indices in the cluster's pods).
    pub pods: Vec<usize>,
    /// Its ingress rules when it isolates ingress; None when it does not.
    pub ingress: Option<Vec<PolicyRule>>,
    pub egress: Option<Vec<PolicyRule>>,
}

impl NetworkPolicy {
    /// `NS/NAME`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One rule: peers (None: every source or destination) and ports (None: every port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    pub peers: Option<Vec<PolicyPeer>>,
    pub ports: Option<Vec<PolicyPort>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPeer {
    /// Pods chosen by the peer's selectors.
    Pods(Vec<usize>),
    /// `ip_block`: the CIDR minus its exceptions (pod addresses included).
    IpBlock { cidr: Ipv4Net, except: Vec<Ipv4Net> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyPort {
    /// IP protocol number (TCP 6, UDP 17, SCTP 132).
    pub protocol: u8,
    /// None: every port of the protocol.
    pub port: Option<PortRef>,
    pub end_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    /// A container port name, resolved on the destination pod.
    Name(String),
}

/// The SCTP protocol number.
pub const PROTOCOL_SCTP: u8 = 132;

/// Resolves a cluster's NetworkPolicies against its pods and namespaces.
pub(super) fn resolve_network_policies(
    resolver: &Resolver,
    policies: &[Spanned<NetworkPolicyConfig>],
    pods: &[Pod],
    namespaces: &[Namespace],
) -> Result<Vec<NetworkPolicy>> {
    let mut resolved = Vec::new();
    let by_namespace = PodsByNamespace::new(pods);
    let mut names = std::collections::BTreeSet::new();
    for spanned in policies {
        let config = spanned.get_ref();
        let namespace =
            super::resolve::namespace_of(resolver, config.namespace.as_ref(), namespaces)?;
        let name = config.name.get_ref().clone();
        if !names.insert((namespace.clone(), name.clone())) {
            return Err(resolver.error(
                &config.name,
                format!("a network_policy {namespace}/{name} is defined twice"),
            ));
        }
        let selector = match &config.pod_selector {
            Some(selector) => resolve_selector(resolver, selector)?,
            None => Default::default(),
        };
        let selected: Vec<usize> = by_namespace
            .in_namespace(&namespace)
            .iter()
            .copied()
            .filter(|&pod| selector.matches(&pods[pod].labels))
            .collect();
        let (isolates_ingress, isolates_egress) = policy_types(resolver, config)?;
        let context = PeerContext {
            resolver,
            pods,
            namespaces,
            by_namespace: &by_namespace,
            namespace: Some(&namespace),
        };
        let ingress = if isolates_ingress {
            Some(resolve_rules(
                &context,
                config.ingress.as_deref().unwrap_or(&[]),
                true,
            )?)
        } else {
            None
        };
        let egress = if isolates_egress {
            Some(resolve_rules(
                &context,
                config.egress.as_deref().unwrap_or(&[]),
                false,
            )?)
        } else {
            None
        };
        resolved.push(NetworkPolicy {
            name,
            namespace,
            pods: selected,
            ingress,
            egress,
        });
    }
    Ok(resolved)
}

/// `policy_types`, or its default: Ingress always, Egress when an egress section
/// is written (reference §d).
fn policy_types(resolver: &Resolver, config: &NetworkPolicyConfig) -> Result<(bool, bool)> {
    let Some(types) = &config.policy_types else {
        return Ok((true, config.egress.is_some()));
    };
    let (mut ingress, mut egress) = (false, false);
    for kind in types {
        match kind.get_ref().as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            other => {
                return Err(resolver.error(
                    kind,
                    format!("unknown policy type `{other}` (expected Ingress or Egress)"),
                ))
            }
        }
    }
    Ok((ingress, egress))
}

struct PeerContext<'a> {
    resolver: &'a Resolver<'a>,
    pods: &'a [Pod],
    namespaces: &'a [Namespace],
    by_namespace: &'a PodsByNamespace<'a>,
    /// The policy's namespace; None for a cluster-scoped policy (Antrea's
    /// ClusterNetworkPolicy), whose pod selectors pick in every namespace.
    namespace: Option<&'a str>,
}

fn resolve_rules(
    context: &PeerContext,
    rules: &[Spanned<PolicyRuleConfig>],
    ingress: bool,
) -> Result<Vec<PolicyRule>> {
    rules
        .iter()
        .map(|spanned| {
            let rule = spanned.get_ref();
            let sides = RuleSides {
                from: &rule.from,
                to: &rule.to,
                ports: &rule.ports,
            };
            resolve_rule(context, spanned, &sides, ingress)
        })
        .collect()
}

/// A rule's peers (both spellings, to refuse the wrong one) and ports.
struct RuleSides<'a> {
    from: &'a Option<Vec<Spanned<PeerConfig>>>,
    to: &'a Option<Vec<Spanned<PeerConfig>>>,
    ports: &'a Option<Vec<Spanned<PolicyPortConfig>>>,
}

/// One rule's peers and ports; a missing or empty list means every peer / port.
fn resolve_rule<T>(
    context: &PeerContext,
    at: &Spanned<T>,
    sides: &RuleSides,
    ingress: bool,
) -> Result<PolicyRule> {
    let (peers, wrong) = if ingress {
        (sides.from, sides.to)
    } else {
        (sides.to, sides.from)
    };
    if wrong.is_some() {
        let (right, wrong) = if ingress {
            ("from", "to")
        } else {
            ("to", "from")
        };
        return Err(context.resolver.error(
            at,
            format!("this rule's peers are `{right}`, not `{wrong}`"),
        ));
    }
    let peers = match peers {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .map(|peer| resolve_peer(context, peer))
                .collect::<Result<Vec<_>>>()?,
        ),
        _ => None,
    };
    let ports = match sides.ports {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .map(|port| resolve_port(context.resolver, port))
                .collect::<Result<Vec<_>>>()?,
        ),
        _ => None,
    };
    Ok(PolicyRule { peers, ports })
}

fn resolve_peer(context: &PeerContext, spanned: &Spanned<PeerConfig>) -> Result<PolicyPeer> {
    let resolver = context.resolver;
    let peer = spanned.get_ref();
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err(resolver.error(
                spanned,
                "a peer is either an ip_block or selectors, not both",
            ));
        }
        let cidr = parse_cidr(resolver, &block.cidr)?;
        let mut except = Vec::new();
        for text in &block.except {
            let excluded = parse_cidr(resolver, text)?;
            if !cidr.contains(&excluded) {
                return Err(resolver.error(
                    text,
                    format!("except {excluded} is outside its cidr {cidr}"),
                ));
            }
            except.push(excluded);
        }
        return Ok(PolicyPeer::IpBlock { cidr, except });
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err(resolver.error(
            spanned,
            "a peer needs pod_selector, namespace_selector or ip_block",
        ));
    }
    let pod_selector = peer
        .pod_selector
        .as_ref()
        .map(|s| resolve_selector(resolver, s))
        .transpose()?;
    let namespace_selector = peer
        .namespace_selector
        .as_ref()
        .map(|s| resolve_selector(resolver, s))
        .transpose()?;
    // Without a namespace selector a pod selector picks in the policy's own
    // namespace (every namespace for a cluster-scoped policy); with one, in the
    // namespaces it selects.
    let candidates: Vec<usize> = match (&namespace_selector, context.namespace) {
        (Some(selector), _) => context
            .by_namespace
            .in_selected_namespaces(selector, context.namespaces),
        (None, Some(own)) => context.by_namespace.in_namespace(own).to_vec(),
        (None, None) => (0..context.pods.len()).collect(),
    };
    let pods = candidates
        .into_iter()
        .filter(|&index| {
            pod_selector
                .as_ref()
                .is_none_or(|selector| selector.matches(&context.pods[index].labels))
        })
        .collect();
    Ok(PolicyPeer::Pods(pods))
}

fn parse_cidr(resolver: &Resolver, text: &Text) -> Result<Ipv4Net> {
    text.get_ref()
        .trim()
        .parse::<Ipv4Net>()
        .map(|net| net.trunc())
        .map_err(|_| {
            resolver.error(
                text,
                format!("`{}` is not a CIDR such as 192.168.0.0/16", text.get_ref()),
            )
        })
}

fn resolve_port(resolver: &Resolver, spanned: &Spanned<PolicyPortConfig>) -> Result<PolicyPort> {
    let config = spanned.get_ref();
    let protocol = match &config.protocol {
        None => crate::wire::PROTOCOL_TCP,
        Some(text) => match text.get_ref().as_str() {
            "TCP" => crate::wire::PROTOCOL_TCP,
            "UDP" => crate::wire::PROTOCOL_UDP,
            "SCTP" => PROTOCOL_SCTP,
            other => {
                return Err(resolver.error(
                    text,
                    format!("unknown protocol `{other}` (expected TCP, UDP or SCTP)"),
                ))
            }
        },
    };
    let port = config.port.as_ref().map(|p| match p.get_ref() {
        PortValue::Number(number) => PortRef::Number(*number),
        PortValue::Name(name) => PortRef::Name(name.clone()),
    });
    if let Some(end) = &config.end_port {
        match &port {
            None => {
                return Err(resolver.error(end, "end_port needs a numeric `port` to start from"))
            }
            Some(PortRef::Name(name)) => {
                return Err(resolver.error(
                    end,
                    format!("end_port cannot follow a named port (`{name}`)"),
                ))
            }
            Some(PortRef::Number(start)) if end.get_ref() < start => {
                return Err(resolver.error(
                    end,
                    format!("end_port {} is below port {start}", end.get_ref()),
                ))
            }
            Some(PortRef::Number(_)) => {}
        }
    }
    Ok(PolicyPort {
        protocol,
        port,
        end_port: config.end_port.as_ref().map(|e| *e.get_ref()),
    })
}

/// The port numbers a named port has on `pod` for `protocol`.
pub fn named_port(pod: &Pod, name: &str, protocol: u8) -> Option<u16> {
    pod.ports.iter().find_map(|port| {
        let matches_protocol = match port.protocol {
            Protocol::Tcp => protocol == crate::wire::PROTOCOL_TCP,
            Protocol::Udp => protocol == crate::wire::PROTOCOL_UDP,
            Protocol::Icmp => false,
        };
        (port.name.as_deref() == Some(name) && matches_protocol).then_some(port.port)
    })
}

/// `[[cluster.cluster_network_policy]]`: an Antrea ClusterNetworkPolicy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNetworkPolicyConfig {
    pub name: Text,
    #[serde(default)]
    pub tier: Option<Text>,
    pub priority: Spanned<f64>,
    #[serde(default)]
    pub applied_to: Vec<Spanned<super::selector::PodPeerConfig>>,
    #[serde(default)]
    pub ingress: Vec<Spanned<AntreaRuleConfig>>,
    #[serde(default)]
    pub egress: Vec<Spanned<AntreaRuleConfig>>,
}

/// One Antrea-native rule: an action and the Kubernetes-style peers and ports.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntreaRuleConfig {
    pub action: Text,
    #[serde(default)]
    pub name: Option<Text>,
    #[serde(default)]
    pub from: Option<Vec<Spanned<PeerConfig>>>,
    #[serde(default)]
    pub to: Option<Vec<Spanned<PeerConfig>>>,
    #[serde(default)]
    pub ports: Option<Vec<Spanned<PolicyPortConfig>>>,
}

/// Antrea's static tiers (reference §b): lower numbers first; baseline after
/// Kubernetes NetworkPolicy.
pub const TIERS: [(&str, u8); 6] = [
    ("emergency", 50),
    ("securityops", 100),
    ("networkops", 150),
    ("platform", 200),
    ("application", 250),
    ("baseline", 253),
];

/// The baseline tier's priority.
pub const BASELINE_TIER: u8 = 253;

/// A resolved ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterNetworkPolicy {
    pub name: String,
    pub tier: &'static str,
    pub tier_priority: u8,
    pub priority: f64,
    /// The pods it applies to.
    pub pods: Vec<usize>,
    pub ingress: Vec<AntreaRule>,
    pub egress: Vec<AntreaRule>,
}

/// One Antrea-native rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AntreaRule {
    pub action: crate::datapath::policy::PolicyAction,
    pub rule: PolicyRule,
}

/// Resolves a cluster's ClusterNetworkPolicies: tier, priority (1.0-10000.0),
/// `applied_to` and rules (peers cluster-scoped: a pod selector alone picks in every
/// namespace), with Antrea's validation.
pub(super) fn resolve_cluster_network_policies(
    resolver: &Resolver,
    policies: &[Spanned<ClusterNetworkPolicyConfig>],
    pods: &[Pod],
    namespaces: &[Namespace],
) -> Result<Vec<ClusterNetworkPolicy>> {
    super::resolve::unique_names(
        resolver,
        "cluster_network_policy",
        policies.iter().map(|p| &p.get_ref().name),
    )?;
    let by_namespace = PodsByNamespace::new(pods);
    let mut resolved = Vec::new();
    for spanned in policies {
        let config = spanned.get_ref();
        let (tier, tier_priority) = match &config.tier {
            None => ("application", 250),
            Some(text) => TIERS
                .iter()
                .find(|(name, _)| *name == text.get_ref())
                .copied()
                .ok_or_else(|| {
                    resolver.error(
                        text,
                        format!(
                            "unknown tier `{}` (expected emergency, securityops, networkops, platform, application or baseline)",
                            text.get_ref()
                        ),
                    )
                })?,
        };
        let priority = *config.priority.get_ref();
        if !(1.0..=10000.0).contains(&priority) {
            return Err(resolver.error(
                &config.priority,
                format!("priority {priority} is outside 1.0-10000.0"),
            ));
        }
        let mut selected = std::collections::BTreeSet::new();
        for target in &config.applied_to {
            let peer = super::selector::resolve_peer(resolver, target.get_ref())?;
            selected.extend((0..pods.len()).filter(|&pod| peer.selects(&pods[pod], namespaces)));
        }
        let context = PeerContext {
            resolver,
            pods,
            namespaces,
            by_namespace: &by_namespace,
            namespace: None,
        };
        let mut rules = [Vec::new(), Vec::new()];
        for (direction, configs) in [(0, &config.ingress), (1, &config.egress)] {
            for rule in configs {
                rules[direction].push(resolve_antrea_rule(
                    &context,
                    rule,
                    direction == 0,
                    tier_priority,
                )?);
            }
        }
        let [ingress, egress] = rules;
        resolved.push(ClusterNetworkPolicy {
            name: config.name.get_ref().clone(),
            tier,
            tier_priority,
            priority,
            pods: selected.into_iter().collect(),
            ingress,
            egress,
        });
    }
    Ok(resolved)
}

fn resolve_antrea_rule(
    context: &PeerContext,
    spanned: &Spanned<AntreaRuleConfig>,
    ingress: bool,
    tier_priority: u8,
) -> Result<AntreaRule> {
    use crate::datapath::policy::PolicyAction;
    let config = spanned.get_ref();
    let action = match config.action.get_ref().as_str() {
        "Allow" => PolicyAction::Allow,
        "Drop" => PolicyAction::Drop,
        "Reject" => PolicyAction::Reject,
        "Pass" if tier_priority == BASELINE_TIER => {
            return Err(context.resolver.error(
                &config.action,
                "Pass is not allowed in the baseline tier (nothing comes after it)",
            ))
        }
        "Pass" => PolicyAction::Pass,
        other => {
            return Err(context.resolver.error(
                &config.action,
                format!("unknown action `{other}` (expected Allow, Drop, Reject or Pass)"),
            ))
        }
    };
    let sides = RuleSides {
        from: &config.from,
        to: &config.to,
        ports: &config.ports,
    };
    let rule = resolve_rule(context, spanned, &sides, ingress)?;
    Ok(AntreaRule { action, rule })
}
