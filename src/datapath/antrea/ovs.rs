//! The OVS bridge `br-int` of an Antrea node: its OpenFlow pipeline as stages
//! (antrea docs/design/ovs-pipeline.md): Classifier (+SpoofGuard) -> EgressRule ->
//! L3Forwarding (+L3DecTTL) -> IngressRule -> output to a pod's veth, antrea-tun0 or
//! antrea-gw0. Pods on one node share a subnet, so a frame addressed to a peer pod's
//! MAC is switched at L2 (no TTL change); a frame to antrea-gw0's MAC is routed.
//! The bridge knows nothing of the host stack's conntrack or routes.

use super::*;
use crate::datapath::path_log::Table;
use crate::engine::conntrack::Direction;
use crate::wire::{Dotted, DottedNet};
use std::fmt::Write as _;

use crate::datapath::policy::{PolicyDirection, PolicyState};

/// ICMP destination unreachable code 10: host administratively prohibited.
const CODE_HOST_PROHIBITED: u8 = 10;

/// Where a packet entered the OVS bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum OvsSource {
    Pod(usize),
    Gateway,
    /// antrea-tun0, with the outer destination (`tun_dst`) it arrived for.
    Tunnel {
        destination: Ipv4Addr,
    },
}

/// What the OVS pipeline decided for a flow; cached per flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OvsDecision {
    /// Output to a local pod's veth; `routed` packets get their MACs rewritten
    /// (and, from a local pod, the TTL decremented).
    ToPod {
        pod: usize,
        routed: bool,
        decrement_ttl: bool,
    },
    /// Output to antrea-tun0 with `tun_dst` = the peer node.
    ToTunnel {
        peer: Ipv4Addr,
    },
    /// Output to antrea-gw0, into the host network stack; `egress` when EgressMark
    /// marks it for an Egress this node holds (index in the node's Egresses).
    ToGateway {
        egress: Option<usize>,
    },
    /// EgressMark: to antrea-tun0 with `tun_dst` = the egress IP of a remote Egress.
    ToEgressNode {
        egress: usize,
    },
    /// A stage ended the packet and accounted for it (a policy denial).
    Consumed,
    Drop(DropReason),
}

/// The OVS pipeline's stages, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OvsStage {
    Classifier,
    /// ConntrackTable: `ct(zone=0xfff0, nat)` — a tracked connection's DNAT, or its
    /// reply's un-DNAT, is applied here.
    Conntrack,
    /// ServiceLB + EndpointDNAT: AntreaProxy picks an endpoint for a new connection
    /// from a local pod to a ClusterIP and commits the DNAT.
    ServiceLb,
    EgressPolicy,
    L3Forwarding,
    IngressPolicy,
}

pub(super) const OVS_PIPELINE: [OvsStage; 6] = [
    OvsStage::Classifier,
    OvsStage::Conntrack,
    OvsStage::ServiceLb,
    OvsStage::EgressPolicy,
    OvsStage::L3Forwarding,
    OvsStage::IngressPolicy,
];

impl AntreaNode {
    pub(super) fn ovs(
        &mut self,
        ctx: &mut Ctx,
        source: OvsSource,
        slot: Option<usize>,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        if packet.meta.ethertype != ETHERTYPE_IPV4 {
            ctx.describe(slot, HopAction::Drop, || "not IPv4".into());
            ctx.drop_packet(&self.settings.name, &packet, DropReason::Malformed, || {
                "non-IPv4 frame on br-int".into()
            });
            return;
        }
        let mut decision = OvsDecision::Drop(DropReason::NoRoute);
        let mut cache_hit = false;
        let mut tracked = None;
        let mut policy = PolicyState::Unenforced;
        for stage in OVS_PIPELINE {
            let verdict = match stage {
                OvsStage::Classifier => self.classifier(source, &packet),
                OvsStage::Conntrack => {
                    tracked = self.service_conntrack(ctx, &mut packet);
                    Verdict::Continue
                }
                OvsStage::ServiceLb if tracked.is_some() => Verdict::Continue,
                OvsStage::ServiceLb => self.service_lb(ctx, source, slot, &mut packet, out),
                OvsStage::EgressPolicy => {
                    policy = self.policy_state(ctx, tracked, &packet);
                    self.egress_policy(ctx, slot, source, policy, &packet, out)
                }
                OvsStage::L3Forwarding => {
                    (decision, cache_hit) = self.l3_forwarding_cached(source, &packet);
                    if !cache_hit {
                        ctx.flow_cache_missed();
                    }
                    match decision {
                        OvsDecision::Drop(reason) => Verdict::Drop(reason),
                        _ => Verdict::Continue,
                    }
                }
                OvsStage::IngressPolicy => {
                    self.ingress_policy(ctx, slot, decision, policy, &packet, out)
                }
            };
            match verdict {
                Verdict::Continue => {}
                Verdict::Forward(forwarded) => {
                    decision = forwarded;
                    break;
                }
                Verdict::Drop(reason) => {
                    let destination = packet.meta.key.destination;
                    ctx.describe(slot, HopAction::Drop, || {
                        format!("ovs {stage:?}: {reason} for {destination}")
                    });
                    let port = packet.meta.key.destination_port;
                    ctx.drop_packet(&self.settings.name, &packet, reason, || match reason {
                        DropReason::NoEndpoints => format!(
                            "AntreaProxy: Service {destination}:{port} has no endpoints (rejected)"
                        ),
                        _ => format!("ovs {stage:?}: {destination}"),
                    });
                    return;
                }
            }
        }
        if let OvsDecision::Consumed = decision {
            return;
        }
        let enforced_here =
            matches!(source, OvsSource::Pod(_)) || matches!(decision, OvsDecision::ToPod { .. });
        if policy == PolicyState::New && enforced_here {
            self.policy.commit(ctx, &packet);
        }
        match decision {
            OvsDecision::ToPod {
                pod,
                routed,
                decrement_ttl,
            } => self.output_to_pod(ctx, slot, pod, routed, decrement_ttl, packet, out),
            OvsDecision::ToTunnel { peer } => {
                // L3DecTTL (pipeline.go decTTLFlows) skips only packets from antrea-gw0.
                let decrement = matches!(source, OvsSource::Pod(_));
                if decrement && !self.l3_decrement_ttl(ctx, slot, &mut packet) {
                    return;
                }
                ctx.describe_with(slot, HopAction::Receive, |out| {
                    let destination = packet.meta.key.destination;
                    let (cidr, peer_name) = self
                        .peers
                        .lookup(destination)
                        .map(|(cidr, p)| (cidr, p.name.as_str()))
                        .unwrap_or_default();
                    let (destination, cidr, peer) =
                        (Dotted(destination), DottedNet(cidr), Dotted(peer));
                    let via = if cache_hit { "flow cache" } else { "L3Forwarding" };
                    let ttl = packet.meta.ttl;
                    let _ = write!(
                        out,
                        "ovs {via}: {destination} in {cidr} ({peer_name}) -> antrea-tun0 tun_dst={peer}, ttl {}->{ttl}",
                        ttl + 1
                    );
                });
                self.tunnel_output(ctx, peer, packet, out);
            }
            OvsDecision::ToEgressNode { egress } => {
                let plan = &self.settings.egress.egresses[egress];
                let (name, ip) = (plan.name.clone(), plan.ip);
                packet.set_macs(self.settings.gateway_mac, Mac::ANTREA_GLOBAL_VIRTUAL);
                ctx.describe(slot, HopAction::Receive, || {
                    format!(
                        "ovs EgressMark: egress {name} is held by another node -> antrea-tun0 tun_dst={ip} (the egress IP)"
                    )
                });
                self.tunnel_output(ctx, ip, packet, out);
            }
            OvsDecision::ToGateway { egress } => {
                let marked =
                    egress.map(|egress| self.mark_for_egress(ctx, source, egress, &mut packet));
                ctx.describe(slot, HopAction::Receive, || {
                    format!(
                        "ovs l3 forward {} -> antrea-gw0 (to the host network stack){}",
                        packet.meta.key.destination,
                        marked.unwrap_or_default()
                    )
                });
                // The pod addressed antrea-gw0's MAC already; L3Forwarding outputs the
                // frame to the gateway port as the pod sent it (no TTL change: the
                // host stack decrements its own forwards).
                ctx.hop(
                    self.settings.gateway_point,
                    &packet,
                    HopAction::Transmit,
                    || "ovs -> host network stack".into(),
                );
                self.host_input(ctx, HostIngress::Interior(GATEWAY), None, packet, out);
            }
            OvsDecision::Drop(_) | OvsDecision::Consumed => {
                unreachable!("drops leave the pipeline above")
            }
        }
    }

    /// EgressMark flows 5 and 6: the first packet of a connection gets the egress
    /// IP's id in `pkt_mark` for iptables to SNAT by; a tunnelled one is addressed
    /// to antrea-gw0 (it arrived for the Global Virtual MAC). Says what it did.
    fn mark_for_egress(
        &self,
        ctx: &mut Ctx,
        source: OvsSource,
        egress: usize,
        packet: &mut Packet,
    ) -> String {
        if let OvsSource::Tunnel { .. } = source {
            packet.set_macs(packet.meta.source_mac, self.settings.gateway_mac);
        }
        let plan = &self.settings.egress.egresses[egress];
        if ctx.knows(Table::HostStack, &self.stack.conntrack, &packet.meta.key) {
            // ct_state -new: no mark; the connection's SNAT is in conntrack.
            return format!("; egress {}", plan.name);
        }
        packet.meta.mark = (packet.meta.mark & !egress::SNAT_IP_MARK_MASK) | plan.mark;
        format!(
            "; EgressMark: egress {} (egress IP {} held here) pkt_mark={:#x}",
            plan.name, plan.ip, plan.mark
        )
    }

    /// ConntrackTable in AntreaProxy's zone: a packet of a tracked Service connection
    /// is translated (DNAT on the way to the endpoint, the Service address put back
    /// as the source of a reply). True when the packet belongs to a connection.
    pub(super) fn service_conntrack(
        &mut self,
        ctx: &mut Ctx,
        packet: &mut Packet,
    ) -> Option<Direction> {
        if self.service_ct.is_empty() {
            ctx.track_empty(Table::ServiceZone, &self.service_ct, &packet.meta.key);
            return None;
        }
        if let crate::packet::IcmpKind::Error { .. } = packet.meta.icmp {
            // RELATED: an error about a Service connection, e.g. the endpoint's port
            // unreachable, goes back to the client from the Service address.
            let quoted = crate::packet::quoted_flow_key(packet)?;
            let found = self.service_ct.lookup(&quoted.reversed(), ctx.now_ns);
            if let Some((id, Direction::Reply)) = found {
                if let Some(entry) = self.service_ct.entry(id).copied() {
                    crate::datapath::nat::translate_related_icmp(
                        ctx,
                        &self.settings.name,
                        "AntreaProxy",
                        &entry,
                        packet,
                    );
                    return Some(Direction::Reply);
                }
            }
            return None;
        }
        let tracked = ctx.track(
            Table::ServiceZone,
            &mut self.service_ct,
            &packet.meta.key,
            packet.meta.tcp_flags,
        );
        let (id, direction) = tracked?;
        let entry = self.service_ct.entry(id).copied()?;
        // Both bindings of the entry, each way: DNAT / un-DNAT of the Service
        // address, and (hairpins, proxyAll node ports) SNAT / un-SNAT of antrea-gw0's.
        crate::datapath::nat::apply_entry(
            ctx,
            &self.settings.name,
            "AntreaProxy",
            &entry,
            direction,
            packet,
        );
        Some(direction)
    }

    /// ServiceLB / EndpointDNAT: a new connection from a local pod to a ClusterIP
    /// gets an endpoint (uniform; only this node's under internalTrafficPolicy
    /// Local), DNATed and committed in AntreaProxy's zone. With no endpoint Antrea
    /// rejects (pkg/agent/controller/networkpolicy/reject.go,
    /// `RejectNoAPServiceLocal`): TCP RST+ACK from the Service address, ICMP host
    /// administratively prohibited (type 3 code 10) otherwise.
    pub(super) fn service_lb(
        &mut self,
        ctx: &mut Ctx,
        source: OvsSource,
        slot: Option<usize>,
        packet: &mut Packet,
        out: &mut Outputs,
    ) -> Verdict<OvsDecision> {
        let key = packet.meta.key;
        // Most packets are for no Service: decide that on a borrow, and take a handle
        // on the table (an atomic increment) only for a Service's new connection.
        let for_a_service = self.stack.services.as_deref().is_some_and(|table| {
            (source == OvsSource::Gateway && key.destination == VIRTUAL_NODE_PORT_DNAT_IP)
                || (matches!(source, OvsSource::Pod(_)) && table.cluster_ip(&key).is_some())
        });
        if !for_a_service {
            return Verdict::Continue;
        }
        let Some(table) = self.stack.services.clone() else {
            return Verdict::Continue;
        };
        if source == OvsSource::Gateway && key.destination == VIRTUAL_NODE_PORT_DNAT_IP {
            return self.node_port_lb(ctx, slot, &table, packet);
        }
        let OvsSource::Pod(pod) = source else {
            return Verdict::Continue;
        };
        let Some(frontend) = table.cluster_ip(&key) else {
            return Verdict::Continue;
        };
        let only_node = frontend.internal_local.then_some(self.stack.node_index);
        let chosen = table.choose_sticky(
            frontend,
            &key,
            only_node,
            &mut self.service_affinity,
            ctx.now_ns,
        );
        let Some(backend) = chosen else {
            self.reject_no_endpoints(ctx, pod, packet, out);
            let service = &frontend.service;
            ctx.describe(slot, HopAction::Drop, || {
                format!(
                    "AntreaProxy: svc {service} {}:{} has no endpoints; rejected",
                    key.destination, key.destination_port
                )
            });
            return Verdict::Drop(DropReason::NoEndpoints);
        };
        // A hairpin (the pod is its own endpoint) is SNATed to antrea-gw0's address
        // (Antrea's SNAT zone, HairpinCTMark), so the reply comes back through OVS.
        let snat = (backend.ip == key.source).then(|| self.gateway_ip());
        self.commit_service(ctx, packet, (backend.ip, backend.port), snat)
    }

    /// Commits a Service connection in AntreaProxy's zone — DNAT to `endpoint`, and
    /// SNAT to `snat` when given — and translates its first packet.
    fn commit_service(
        &mut self,
        ctx: &mut Ctx,
        packet: &mut Packet,
        endpoint: (Ipv4Addr, u16),
        snat: Option<Ipv4Addr>,
    ) -> Verdict<OvsDecision> {
        let key = packet.meta.key;
        let snat = snat.map(crate::engine::nat::NatPool::address);
        let id = match self
            .service_ct
            .insert_nat(key, endpoint, snat.as_ref(), ctx.now_ns)
        {
            Ok(id) => id,
            Err(error) => return Verdict::Drop(DropReason::from(error)),
        };
        if let Some(entry) = self.service_ct.entry(id).copied() {
            crate::datapath::nat::apply_entry(
                ctx,
                &self.settings.name,
                "AntreaProxy",
                &entry,
                Direction::Original,
                packet,
            );
        }
        Verdict::Continue
    }

    /// proxyAll: a node port redirected by the host (to the virtual NodePort DNAT
    /// address) is load-balanced here: an endpoint (only this node's under
    /// externalTrafficPolicy Local, else dropped), DNAT, and under Cluster SNAT to
    /// antrea-gw0's address (Antrea's SNAT zone, `ServiceNeedSNATRegMark`).
    fn node_port_lb(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        table: &crate::datapath::services::ServiceTable,
        packet: &mut Packet,
    ) -> Verdict<OvsDecision> {
        let key = packet.meta.key;
        let Some(frontend) = table.node_port(&key) else {
            return Verdict::Drop(DropReason::NoRoute);
        };
        let only_node = frontend.external_local.then_some(self.stack.node_index);
        let chosen = table.choose_sticky(
            frontend,
            &key,
            only_node,
            &mut self.service_affinity,
            ctx.now_ns,
        );
        let Some(backend) = chosen else {
            let service = &frontend.service;
            ctx.describe(slot, HopAction::Drop, || {
                format!("AntreaProxy: node port of {service} has no endpoints here")
            });
            return Verdict::Drop(DropReason::NoEndpoints);
        };
        let snat = (!frontend.external_local).then(|| self.gateway_ip());
        self.commit_service(ctx, packet, (backend.ip, backend.port), snat)
    }

    /// Antrea's reject for a Service without endpoints, sent back to the pod.
    fn reject_no_endpoints(
        &mut self,
        ctx: &mut Ctx,
        pod: usize,
        packet: &Packet,
        out: &mut Outputs,
    ) {
        let local = &self.settings.pods[pod];
        let link = crate::datapath::local::AnswerLink {
            source_mac: self.settings.gateway_mac,
            destination_mac: local.mac,
            identification: 0,
        };
        let tcp = packet.meta.key.protocol == crate::wire::PROTOCOL_TCP;
        let point = (!tcp).then_some(local.veth_point);
        let Some(answer) =
            crate::datapath::local::refusal(ctx, packet, link, CODE_HOST_PROHIBITED, point)
        else {
            return;
        };
        if tcp {
            ctx.hop(local.veth_point, &answer, HopAction::Transmit, || {
                "AntreaProxy reject: tcp reset from the Service address (no endpoints)".into()
            });
        }
        let port = PortId::try_from(pod + 1).unwrap_or(PortId::MAX);
        out.send(port, answer);
    }

    /// Classifier: where the packet came from; SpoofGuard for pod ports (a pod may
    /// only send from its own IP and MAC).
    pub(super) fn classifier(&self, source: OvsSource, packet: &Packet) -> Verdict<OvsDecision> {
        if let OvsSource::Pod(pod) = source {
            let local = &self.settings.pods[pod];
            if packet.meta.key.source != local.ip || packet.meta.source_mac != local.mac {
                return Verdict::Drop(DropReason::Policy);
            }
        }
        Verdict::Continue
    }

    /// L3DecTTL: OVS `dec_ttl`; a packet whose TTL runs out is dropped (no ICMP: Antrea
    /// installs no controller action for invalid TTL). False when it was dropped.
    pub(super) fn l3_decrement_ttl(
        &self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        packet: &mut Packet,
    ) -> bool {
        if packet.decrement_ttl() {
            return true;
        }
        ctx.describe(slot, HopAction::Drop, || "ovs L3DecTTL: ttl expired".into());
        ctx.drop_packet(&self.settings.name, packet, DropReason::TtlExceeded, || {
            "ttl expired in OVS dec_ttl".into()
        });
        false
    }

    /// The connection's policy state (`ct_state`): a reply AntreaProxy un-DNATed
    /// belongs to a connection policy allowed where it started; anything else is
    /// looked up in the node's policy connection table.
    fn policy_state(
        &mut self,
        ctx: &mut Ctx,
        tracked: Option<Direction>,
        packet: &Packet,
    ) -> PolicyState {
        match (self.policy.state(ctx, packet), tracked) {
            (PolicyState::Unenforced, _) => PolicyState::Unenforced,
            (_, Some(Direction::Reply)) => PolicyState::Established,
            (state, _) => state,
        }
    }

    /// EgressRule / EgressDefaultRule: a local pod's new connection is decided by
    /// the egress policy on its own node (after AntreaProxy's DNAT: the endpoint,
    /// not the Service address).
    pub(super) fn egress_policy(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        source: OvsSource,
        policy: PolicyState,
        packet: &Packet,
        out: &mut Outputs,
    ) -> Verdict<OvsDecision> {
        if policy != PolicyState::New || !matches!(source, OvsSource::Pod(_)) {
            return Verdict::Continue;
        }
        match self
            .policy
            .check(ctx, &self.settings.name, PolicyDirection::Egress, packet)
        {
            Ok(()) => Verdict::Continue,
            Err(denial) => self.deny(ctx, slot, packet, &denial, out),
        }
    }

    /// IngressRule / IngressDefaultRule: a new connection to a local pod is decided
    /// by the ingress policy on the destination's node.
    pub(super) fn ingress_policy(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        decision: OvsDecision,
        policy: PolicyState,
        packet: &Packet,
        out: &mut Outputs,
    ) -> Verdict<OvsDecision> {
        if policy != PolicyState::New || !matches!(decision, OvsDecision::ToPod { .. }) {
            return Verdict::Forward(decision);
        }
        match self
            .policy
            .check(ctx, &self.settings.name, PolicyDirection::Ingress, packet)
        {
            Ok(()) => Verdict::Forward(decision),
            Err(denial) => self.deny(ctx, slot, packet, &denial, out),
        }
    }

    /// A policy denial: the drop, named by its rule; a Reject also answers the
    /// client.
    fn deny(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        packet: &Packet,
        denial: &crate::datapath::policy::PolicyDenial,
        out: &mut Outputs,
    ) -> Verdict<OvsDecision> {
        let what = denial.describe();
        ctx.describe(slot, HopAction::Drop, || format!("ovs {what}"));
        ctx.drop_packet(&self.settings.name, packet, denial.reason(), || what);
        if denial.action == crate::datapath::policy::PolicyAction::Reject {
            self.reject(ctx, packet, out);
        }
        Verdict::Forward(OvsDecision::Consumed)
    }

    /// Antrea's policy Reject (pkg/agent/controller/networkpolicy/reject.go;
    /// reference §b): a TCP RST, otherwise ICMP destination unreachable "host
    /// administratively prohibited", from the rejected packet's destination to its
    /// source, sent the way the source is reached — a local pod's port, the tunnel
    /// to its node, or the host network stack.
    fn reject(&mut self, ctx: &mut Ctx, packet: &Packet, out: &mut Outputs) {
        let client = packet.meta.key.source;
        let local = self.pod_by_ip.get(&client).copied();
        let link = crate::datapath::local::AnswerLink {
            source_mac: self.settings.gateway_mac,
            destination_mac: local
                .map_or(self.settings.gateway_mac, |pod| self.settings.pods[pod].mac),
            identification: 0,
        };
        let point = self.settings.gateway_point;
        let Some(answer) =
            crate::datapath::local::refusal(ctx, packet, link, CODE_HOST_PROHIBITED, Some(point))
        else {
            return;
        };
        if let Some(pod) = local {
            let veth = self.settings.pods[pod].veth_point;
            ctx.hop(veth, &answer, HopAction::Transmit, || {
                "policy reject: answer to the client".into()
            });
            out.send(PortId::try_from(pod + 1).unwrap_or(PortId::MAX), answer);
            return;
        }
        match self
            .peers
            .lookup(client)
            .map(|(_, peer)| (peer.ip, peer.tunnel))
        {
            Some((peer, true)) => self.tunnel_output(ctx, peer, answer, out),
            _ => {
                ctx.hop(point, &answer, HopAction::Transmit, || {
                    "policy reject: answer to the client through the host".into()
                });
                self.host_input(ctx, HostIngress::Interior(GATEWAY), None, answer, out);
            }
        }
    }

    /// L3Forwarding (and EgressMark, which reads only the same inputs and static
    /// Egress configuration) through the flow cache; also says whether the cache
    /// answered.
    pub(super) fn l3_forwarding_cached(
        &mut self,
        source: OvsSource,
        packet: &Packet,
    ) -> (OvsDecision, bool) {
        // Every input L3Forwarding reads: the ingress, the 5-tuple (after AntreaProxy's
        // DNAT) and the destination MAC (gateway: routed; a pod's: switched).
        let key = (source, packet.meta.key, packet.meta.destination_mac);
        if let Some(decision) = self.flow_cache.get(&key) {
            return (decision, true);
        }
        let decision = self.l3_forwarding(source, packet);
        self.flow_cache.insert(key, decision);
        (decision, false)
    }

    /// L3Forwarding: local pod (switched or routed), peer node's pod CIDR (tunnel),
    /// or out of the pod network (gateway).
    pub(super) fn l3_forwarding(&self, source: OvsSource, packet: &Packet) -> OvsDecision {
        let destination = packet.meta.key.destination;
        let destination_mac = packet.meta.destination_mac;
        if let OvsSource::Pod(_) = source {
            if destination_mac != self.settings.gateway_mac {
                // Same subnet: the pod addressed the peer's MAC itself; plain L2.
                return match self.pod_by_mac.get(&destination_mac) {
                    Some(&pod) => OvsDecision::ToPod {
                        pod,
                        routed: false,
                        decrement_ttl: false,
                    },
                    None => OvsDecision::Drop(DropReason::NoNeighbor),
                };
            }
        }
        if let Some(&pod) = self.pod_by_ip.get(&destination) {
            // Routed to a local pod. L3DecTTL decrements every routed packet except
            // those from antrea-gw0 (pipeline.go decTTLFlows; the host stack
            // decrements its own forwards): a packet from the tunnel is decremented
            // again here, so a cross-node packet reaches the pod with TTL 62.
            let decrement_ttl = source != OvsSource::Gateway;
            return OvsDecision::ToPod {
                pod,
                routed: true,
                decrement_ttl,
            };
        }
        if destination == self.gateway_ip() {
            // antrea-gw0's own address: the host stack answers.
            return match source {
                OvsSource::Pod(_) | OvsSource::Tunnel { .. } => {
                    OvsDecision::ToGateway { egress: None }
                }
                OvsSource::Gateway => OvsDecision::Drop(DropReason::NoRoute),
            };
        }
        if self.settings.pod_cidr.contains(&destination) {
            return OvsDecision::Drop(DropReason::NoNeighbor);
        }
        // proxyAll: the reply of a redirected node-port connection, un-NATed to the
        // virtual address, returns to the host stack.
        if packet.meta.key.source == VIRTUAL_NODE_PORT_DNAT_IP {
            return OvsDecision::ToGateway { egress: None };
        }
        if !matches!(source, OvsSource::Tunnel { .. }) {
            if let Some((_, peer)) = self.peers.lookup(destination) {
                if peer.tunnel {
                    return OvsDecision::ToTunnel { peer: peer.ip };
                }
                // A routed peer (noEncap / hybrid on one subnet): the host stack
                // routes it over the underlay.
                if let OvsSource::Pod(_) = source {
                    return OvsDecision::ToGateway { egress: None };
                }
            }
        }
        // The external network: EgressMark decides.
        match source {
            OvsSource::Pod(_) => self.egress_mark_from_pod(packet),
            OvsSource::Tunnel { destination } => self.egress_mark_from_tunnel(destination),
            OvsSource::Gateway => OvsDecision::Drop(DropReason::NoRoute),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn output_to_pod(
        &mut self,
        ctx: &mut Ctx,
        slot: Option<usize>,
        pod: usize,
        routed: bool,
        decrement_ttl: bool,
        mut packet: Packet,
        out: &mut Outputs,
    ) {
        let local = &self.settings.pods[pod];
        if decrement_ttl && !self.l3_decrement_ttl(ctx, slot, &mut packet) {
            return;
        }
        if routed {
            packet.set_macs(self.settings.gateway_mac, local.mac);
        }
        let how = if routed { "l3 forward" } else { "l2 switch" };
        ctx.describe_with(slot, HopAction::Receive, |out| {
            let _ = write!(out, "ovs {how} -> local pod {}", local.name);
        });
        let port = PortId::try_from(pod + 1).unwrap_or(PortId::MAX);
        ctx.hop_with(local.veth_point, &packet, HopAction::Transmit, |out| {
            let _ = write!(out, "ovs output to pod {}", local.name);
        });
        out.send(port, packet);
    }
}
