//! The NSX distributed firewall at a VM's vNIC (reference §e): it filters what
//! crosses the wire between the VM and its segment port — for a Kubernetes node in
//! encap mode the Geneve packets between node IPs, with routed pods the pod
//! addresses. Sections apply by category (Ethernet, Emergency, Infrastructure,
//! Environment, Application), rules top-down, first Allow/Drop/Reject wins, then the
//! default rule; stateful per vNIC (a connection's replies pass), written on the
//! engine's rule table, each decision naming `dfw:SECTION/RULE`.

use super::local::AnswerLink;
use super::path_log::Table;
use super::policy::PolicyAction;
use super::{Ctx, DropReason, Outputs, PortId};
use crate::engine::conntrack::Conntrack;
use crate::engine::rules::{AddressSet, Layer, Metadata, Predicate, Rule};
use crate::packet::Packet;
use crate::topology::dfw::DfwSection;
use crate::topology::Topology;
use crate::wire::ETHERTYPE_IPV4;

/// Which way a packet crosses the vNIC, as the VM sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VnicDirection {
    /// From the segment into the VM.
    In,
    /// From the VM onto the segment.
    Out,
}

/// One VM's vNIC filter.
#[derive(Debug, Clone)]
pub struct VnicFirewall {
    /// `dfw:VM`: how drops name where they happened.
    pub device: String,
    /// The VM's eth0 capture point: a denied frame is recorded there, named.
    pub point: Option<super::PointId>,
    inbound: Layer<PolicyAction>,
    outbound: Layer<PolicyAction>,
    connections: Conntrack,
}

/// The firewall of VM `vm`, if any section applies to it or the default rule drops.
pub fn compile(topology: &Topology, vm: &str) -> Option<VnicFirewall> {
    let mut sections: Vec<&DfwSection> = topology
        .dfw
        .iter()
        .filter(|section| section.vms.iter().any(|member| member == vm))
        .collect();
    if sections.is_empty() && topology.dfw_default == PolicyAction::Allow {
        return None;
    }
    sections.sort_by_key(|section| section.category);
    let mut inbound = Layer::new(format!("dfw/{vm}/in"), topology.dfw_default);
    let mut outbound = Layer::new(format!("dfw/{vm}/out"), topology.dfw_default);
    for section in sections {
        for rule in &section.rules {
            let name = format!("dfw:{}/{}", section.name, rule.name);
            let mut base = Vec::new();
            if let Some(sources) = &rule.sources {
                base.push(Predicate::SourceIn(AddressSet::new(
                    sources.iter().copied(),
                )));
            }
            if let Some(destinations) = &rule.destinations {
                base.push(Predicate::DestinationIn(AddressSet::new(
                    destinations.iter().copied(),
                )));
            }
            let conjunctions: Vec<Vec<Predicate>> = match &rule.services {
                None => vec![base],
                Some(services) => services
                    .iter()
                    .map(|service| {
                        let mut predicates = base.clone();
                        predicates.push(Predicate::Protocol(service.protocol));
                        if let Some((low, high)) = service.ports {
                            predicates.push(Predicate::DestinationPort { low, high });
                        }
                        predicates
                    })
                    .collect(),
            };
            for predicates in conjunctions {
                if rule.inbound {
                    inbound.push(Rule::new(name.clone(), predicates.clone(), rule.action));
                }
                if rule.outbound {
                    outbound.push(Rule::new(name.clone(), predicates, rule.action));
                }
            }
        }
    }
    Some(VnicFirewall {
        device: format!("dfw:{vm}"),
        point: None,
        inbound,
        outbound,
        connections: Conntrack::new(topology.conntrack_max, topology.seed),
    })
}

impl VnicFirewall {
    /// The vNIC's connection table.
    pub fn connections(&self) -> &Conntrack {
        &self.connections
    }

    pub fn connections_mut(&mut self) -> &mut Conntrack {
        &mut self.connections
    }

    /// Filters one frame crossing the vNIC; false when it was dropped (a Reject's
    /// answer goes back out of `answer_port`).
    pub fn admit(
        &mut self,
        ctx: &mut Ctx,
        port: PortId,
        direction: VnicDirection,
        packet: &Packet,
        answer_port: PortId,
        out: &mut Outputs,
    ) -> bool {
        if packet.meta.ethertype != ETHERTYPE_IPV4 || packet.meta.is_later_fragment {
            return true;
        }
        let key = packet.meta.key;
        if ctx
            .track(
                Table::Vnic(port),
                &mut self.connections,
                &key,
                packet.meta.tcp_flags,
            )
            .is_some()
        {
            return true;
        }
        let layer = match direction {
            VnicDirection::In => &self.inbound,
            VnicDirection::Out => &self.outbound,
        };
        let metadata = Metadata {
            key,
            in_interface: None,
            out_interface: None,
            mark: 0,
        };
        let decision = layer.classify(&metadata);
        let action = *decision.action;
        let rule = match decision.rule {
            Some(_) => decision.name.to_string(),
            None => "dfw:default".to_string(),
        };
        let way = match direction {
            VnicDirection::In => "ingress",
            VnicDirection::Out => "egress",
        };
        ctx.policy(&self.device, packet, way, action, &rule);
        if action == PolicyAction::Allow || action == PolicyAction::Pass {
            let _ = self.connections.insert_untranslated(key, ctx.now_ns);
            return true;
        }
        let verb = if action == PolicyAction::Reject {
            "rejected"
        } else {
            "dropped"
        };
        if let Some(point) = self.point {
            ctx.hop(point, packet, super::HopAction::Drop, || {
                format!("dfw {way} {verb} by {rule}")
            });
        }
        ctx.drop_packet(&self.device, packet, DropReason::Policy, || {
            format!("{way} {verb} by {rule}")
        });
        if action == PolicyAction::Reject {
            if let Some(answer) = reject(ctx, packet) {
                out.send(answer_port, answer);
            }
        }
        false
    }
}

/// ICMP destination unreachable code 13 (RFC 1812 §5.2.7.1).
const CODE_ADMINISTRATIVELY_PROHIBITED: u8 = 13;

/// NSX's Reject: a TCP RST, otherwise ICMP "administratively prohibited", from the
/// rejected packet's destination, back on the wire it came from.
fn reject(ctx: &mut Ctx, packet: &Packet) -> Option<Packet> {
    let link = AnswerLink {
        source_mac: packet.meta.destination_mac,
        destination_mac: packet.meta.source_mac,
        identification: 0,
    };
    // The reference gives no ICMP code for NSX's reject [K]; NSX documents a
    // "destination unreachable" answer, and RFC 1812's "communication
    // administratively prohibited" (13) is what a filter sends.
    super::local::refusal(ctx, packet, link, CODE_ADMINISTRATIVELY_PROHIBITED, None)
}
