//! Antrea Egress on one node (reference §b "Egress CRD"; antrea
//! docs/design/ovs-pipeline.md, table EgressMark; pkg/agent/route/route_linux.go):
//!
//! * a local pod an Egress selects, sending to the external network (not a pod CIDR,
//!   the Service CIDR, a node's transport IP or an except CIDR), is tunnelled to the
//!   node holding the egress IP with `tun_dst` = the egress IP itself (EgressMark
//!   flow 4), or, when this node holds it, marked with the IP's 8-bit id (flow 6);
//! * a packet from the tunnel addressed to an egress IP this node holds is marked the
//!   same way (flow 5) and handed to the host stack; any other tunnelled packet bound
//!   for the external network is dropped (flow 7);
//! * iptables SNATs marked packets to the egress IP in POSTROUTING, before the
//!   masquerade rule (`! -o antrea-gw0 -m mark --mark ID/0xff -j SNAT --to IP`).
//!
//! EgressMark's flows jump straight to L2ForwardingCalc, so an Egress packet is not
//! decremented by OVS (no L3DecTTL) on either node; the egress node's host stack
//! decrements it when it forwards.

use super::*;

/// The SNAT-IP id sits in the low byte of `pkt_mark` (SNATIPMarkMask).
pub const SNAT_IP_MARK_MASK: u32 = 0xff;

/// One Egress as this node's agent programs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPlan {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mark: u32,
    /// This node holds the egress IP.
    pub held_here: bool,
    pub except_cidrs: AddressSet,
}

/// The node's Egress state: the Egresses, which local pods each carries, and the
/// destinations no Egress takes.
#[derive(Debug, Clone, Default)]
pub struct NodeEgress {
    pub egresses: Vec<EgressPlan>,
    /// Local pod IP -> index in `egresses`.
    pub by_pod: FxHashMap<Ipv4Addr, usize>,
    /// The cluster's pod CIDR, the Service CIDR and every node's transport IP
    /// (EgressMark flows 1-3 and L3Forwarding send these elsewhere).
    pub bypass: AddressSet,
}

impl NodeEgress {
    /// The Egress holding `ip` on this node.
    pub fn held(&self, ip: Ipv4Addr) -> Option<usize> {
        self.egresses
            .iter()
            .position(|egress| egress.held_here && egress.ip == ip)
    }
}

impl AntreaNode {
    /// EgressMark for a local pod's packet bound for the external network.
    pub(super) fn egress_mark_from_pod(&self, packet: &Packet) -> OvsDecision {
        let egress = &self.settings.egress;
        let key = packet.meta.key;
        let Some(&index) = egress.by_pod.get(&key.source) else {
            return OvsDecision::ToGateway { egress: None };
        };
        let plan = &egress.egresses[index];
        if egress.bypass.contains(key.destination) || plan.except_cidrs.contains(key.destination) {
            return OvsDecision::ToGateway { egress: None };
        }
        if plan.held_here {
            OvsDecision::ToGateway {
                egress: Some(index),
            }
        } else {
            OvsDecision::ToEgressNode { egress: index }
        }
    }

    /// EgressMark for a tunnelled packet bound for the external network: it must be
    /// addressed (`tun_dst`) to an egress IP this node holds.
    pub(super) fn egress_mark_from_tunnel(&self, tunnel_destination: Ipv4Addr) -> OvsDecision {
        match self.settings.egress.held(tunnel_destination) {
            Some(index) => OvsDecision::ToGateway {
                egress: Some(index),
            },
            None => OvsDecision::Drop(DropReason::NoEgress),
        }
    }

    /// Whether `address` is an egress IP this node holds (it answers ARP for it and
    /// takes its traffic on eth0).
    pub(super) fn holds_egress_ip(&self, address: Ipv4Addr) -> bool {
        self.settings.egress.held(address).is_some()
    }
}

/// The Egress SNAT rules for the IPs this node holds, appended to POSTROUTING before
/// the masquerade (route_linux.go; reference §b).
/// `random_fully` is `snatFullyRandomPorts`, as on the masquerade.
pub(super) fn append_egress_snat(
    chain: &mut Layer<NatAction>,
    egress: &NodeEgress,
    random_fully: bool,
) {
    let mut done: Vec<Ipv4Addr> = Vec::new();
    for plan in egress.egresses.iter().filter(|plan| plan.held_here) {
        if done.contains(&plan.ip) {
            continue;
        }
        done.push(plan.ip);
        chain.push(Rule::new(
            format!("ANTREA-POSTROUTING/egress {}", plan.ip),
            vec![
                Predicate::Mark {
                    value: plan.mark,
                    mask: SNAT_IP_MARK_MASK,
                },
                Predicate::OutInterface(InterfaceId::from(GATEWAY)).not(),
            ],
            NatAction::Snat(
                crate::engine::nat::NatPool::address(plan.ip).with_random_fully(random_fully),
            ),
        ));
    }
}
