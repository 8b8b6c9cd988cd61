//! The event-driven runner: a simulated clock (nanoseconds from a fixed epoch), one
//! event queue ordered by (time, sequence), endpoints polled when they have work or a
//! timer fires, frames moved over links with their latency. Single-threaded and
//! deterministic: the same topology and seed give the same events in the same order.

use super::application::Application;
use super::endpoint::{Arrival, ConnectionStatus, Stack};
use super::network::{build, Device, DeviceId, EndpointId, Network};
use crate::capture::CaptureMode;
use crate::datapath::{
    Ctx, DropReason, HopAction, Journal, Outputs, PortId, Recording, FIRST_PACKET,
};
use crate::packet::{tcp_flags, FlowTag, IcmpKind, Packet, NO_FLOW};
use crate::topology::{EndpointRef, Topology};
use smoltcp::time::Instant;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;

/// How long after the last flow starts the endpoints keep running (enough for every
/// TCP timeout and retransmission to play out).
pub const HORIZON_AFTER_LAST_START_NS: u64 = 30_000_000_000;

enum Event {
    Arrive {
        device: DeviceId,
        port: PortId,
        packet: Packet,
    },
    Wake {
        endpoint: EndpointId,
    },
    Start {
        flow: usize,
    },
}

/// An event's place in the queue: (time, sequence, slot in the event slab). The heap
/// orders these small keys; the events themselves (a packet each) stay put in the
/// slab, so sifting moves 24 bytes, not a packet.
type Scheduled = (u64, u64, u32);

/// The events waiting in the queue, by slot; freed slots are reused.
#[derive(Default)]
struct EventSlab {
    events: Vec<Option<Event>>,
    free: Vec<u32>,
}

impl EventSlab {
    fn insert(&mut self, event: Event) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.events[slot as usize] = Some(event);
                slot
            }
            None => {
                self.events.push(Some(event));
                u32::try_from(self.events.len() - 1).unwrap_or(u32::MAX)
            }
        }
    }

    fn take(&mut self, slot: u32) -> Option<Event> {
        let event = self.events.get_mut(slot as usize)?.take();
        self.free.push(slot);
        event
    }
}

/// What one flow did.
#[derive(Debug, Clone, Default)]
pub struct FlowOutcome {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub connections: Vec<ConnectionStatus>,
    /// The source address the destination saw on the flow's first packet.
    pub seen_source: Option<Ipv4Addr>,
    /// The first packet the client sent, and the first the destination answered with.
    pub first_packet: Option<u64>,
    pub first_reply: Option<u64>,
    /// ICMP errors the client received (type, code, from).
    pub icmp_errors: Vec<(u8, u8, Ipv4Addr)>,
    /// The path MTU the client learned from fragmentation-needed, if it did.
    pub path_mtu: Option<PathMtuDiscovery>,
    /// What the endpoints' stacks refused locally or reported (EMSGSIZE, …).
    pub notes: Vec<String>,
}

/// A path MTU learned from ICMP fragmentation-needed: the MTU, the address the ICMP
/// came from, and the capture point (`DEVICE:INTERFACE`) of the device that built it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMtuDiscovery {
    pub mtu: u16,
    pub from: Ipv4Addr,
    pub reported_by: String,
}

/// Everything a run produced.
pub struct RunResult {
    pub network: Network,
    pub journal: Journal,
    pub flows: Vec<FlowOutcome>,
    pub end_ns: u64,
    pub events: u64,
    /// Packets sent by endpoints that belong to no flow (e.g. answers to strays).
    pub untagged_sent: u64,
    pub untagged_delivered: u64,
    /// Endpoints whose TCP/IP stack was built (those some flow touched).
    pub stacks_built: usize,
}

struct Runner<'t> {
    topology: &'t Topology,
    network: Network,
    /// Each endpoint's TCP/IP stack, built the first time the endpoint sends or
    /// receives: a pod no flow touches costs no stack and no socket buffers.
    stacks: Vec<Option<Box<Stack>>>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pending_events: EventSlab,
    sequence: u64,
    now_ns: u64,
    horizon_ns: u64,
    wake_at: Vec<Option<u64>>,
    journal: Journal,
    flows: Vec<FlowOutcome>,
    flow_sources: Vec<Option<EndpointId>>,
    untagged_sent: u64,
    untagged_delivered: u64,
    outputs: Outputs,
    events: u64,
}

fn instant(ns: u64) -> Instant {
    Instant::from_micros(i64::try_from(ns / 1000).unwrap_or(i64::MAX))
}

fn nanoseconds(instant: Instant) -> u64 {
    u64::try_from(instant.total_micros()).unwrap_or(0) * 1000
}

/// Runs every flow of `topology` to completion, recording every hop.
pub fn run(topology: &Topology) -> RunResult {
    run_with_progress(topology, CaptureMode::All, &mut |_, _| {})
}

/// Events between two progress reports.
const PROGRESS_EVERY: u64 = 4096;

/// Like [`run`], reporting `(simulated now, horizon)` in nanoseconds now and then, for
/// a progress bar. The callback must not influence the run.
/// `capture` says which hops are recorded: every hop (`All`); every hop at the edge
/// points plus every hop of each flow's first packet and first reply (`Edges`: what
/// the capture writes and the report's paths); or only those first packets (`None`:
/// enough for the report, memory flat).
pub fn run_with_progress(
    topology: &Topology,
    capture: CaptureMode,
    progress: &mut dyn FnMut(u64, u64),
) -> RunResult {
    let network = build(topology);
    let uncaptured = match capture {
        CaptureMode::Edges => capture.left_out(&network.points),
        CaptureMode::All | CaptureMode::None => Vec::new(),
    };
    let stacks: Vec<Option<Box<Stack>>> = network.endpoints.iter().map(|_| None).collect();
    let flow_sources = topology
        .flows
        .iter()
        .map(|flow| network.endpoint(flow.from))
        .collect();
    let last_start = topology
        .flows
        .iter()
        .map(|flow| flow.start_ns)
        .max()
        .unwrap_or(0);
    let endpoint_count = network.endpoints.len();
    let mut runner = Runner {
        topology,
        network,
        stacks,
        queue: BinaryHeap::new(),
        pending_events: EventSlab::default(),
        sequence: 0,
        now_ns: 0,
        horizon_ns: last_start + HORIZON_AFTER_LAST_START_NS,
        wake_at: vec![None; endpoint_count],
        journal: Journal {
            recording: match capture {
                CaptureMode::All => Recording::Everything,
                CaptureMode::Edges => Recording::EdgesAndFirstPackets,
                CaptureMode::None => Recording::FirstPackets,
            },
            uncaptured,
            ..Journal::default()
        },
        flows: vec![FlowOutcome::default(); topology.flows.len()],
        flow_sources,
        untagged_sent: 0,
        untagged_delivered: 0,
        outputs: Outputs::default(),
        events: 0,
    };
    for (index, flow) in topology.flows.iter().enumerate() {
        runner.schedule(flow.start_ns, Event::Start { flow: index });
    }
    runner.run_to_completion(progress);
    progress(runner.horizon_ns, runner.horizon_ns);
    runner.finish()
}

impl Runner<'_> {
    fn schedule(&mut self, time_ns: u64, event: Event) {
        self.sequence += 1;
        let slot = self.pending_events.insert(event);
        self.queue.push(Reverse((time_ns, self.sequence, slot)));
    }

    /// The endpoint's stack, built on first use with its listening ports open.
    fn stack(&mut self, endpoint: EndpointId) -> &mut Stack {
        if self.stacks[endpoint].is_none() {
            let nic = self.network.endpoints[endpoint].clone();
            let reference = nic.reference;
            let mut stack = Stack::new(nic, self.topology.seed, instant(self.now_ns));
            match reference {
                EndpointRef::Pod { cluster, pod } => {
                    for port in &self.topology.pod(cluster, pod).ports {
                        stack.listen(port.protocol, port.port, port.name.as_deref());
                    }
                }
                EndpointRef::Host(host) => {
                    for port in &self.topology.hosts[host].listen {
                        stack.listen(port.protocol, port.port, None);
                    }
                }
                // The node's own processes: kube-proxy's health-check servers.
                EndpointRef::Node { cluster, node } => {
                    for (port, local_endpoints) in
                        self.topology.clusters[cluster].health_checks(node)
                    {
                        stack.listen_with(
                            crate::topology::Protocol::Tcp,
                            port,
                            Application::KubeProxyHealth { local_endpoints },
                        );
                    }
                }
                EndpointRef::Address(_) => {}
            }
            self.stacks[endpoint] = Some(Box::new(stack));
        }
        self.stacks[endpoint]
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("built just above"))
    }

    fn run_to_completion(&mut self, progress: &mut dyn FnMut(u64, u64)) {
        while let Some(Reverse((time_ns, _, slot))) = self.queue.pop() {
            let Some(event) = self.pending_events.take(slot) else {
                continue;
            };
            self.now_ns = time_ns;
            self.events += 1;
            if self.events.is_multiple_of(PROGRESS_EVERY) {
                progress(self.now_ns.min(self.horizon_ns), self.horizon_ns);
            }
            match event {
                Event::Arrive {
                    device,
                    port,
                    packet,
                } => self.arrive(device, port, packet),
                Event::Wake { endpoint } => {
                    if self.wake_at[endpoint] == Some(self.now_ns) {
                        self.wake_at[endpoint] = None;
                        self.poll_endpoint(endpoint);
                    }
                }
                Event::Start { flow } => self.start_flow(flow),
            }
        }
    }

    fn start_flow(&mut self, flow_index: usize) {
        let Some(endpoint) = self.flow_sources[flow_index] else {
            return;
        };
        let flow = &self.topology.flows[flow_index];
        let tag = FlowTag::try_from(flow_index).unwrap_or(NO_FLOW);
        let application = flow_application(self.topology, flow);
        for _ in 0..flow.connections {
            self.stack(endpoint).start(tag, flow, application);
        }
        self.poll_endpoint(endpoint);
    }

    /// Runs an endpoint's stack now and sends what it produced.
    fn poll_endpoint(&mut self, endpoint: EndpointId) {
        if self.now_ns > self.horizon_ns {
            return;
        }
        let now = instant(self.now_ns);
        let flows = &self.topology.flows;
        let Some(stack) = self.stacks[endpoint].as_deref_mut() else {
            return;
        };
        let departures = stack.poll(now, flows);
        self.take_stack_reports(endpoint);
        for departure in departures {
            self.send_from_endpoint(
                endpoint,
                departure.frame,
                departure.flow,
                departure.undeliverable,
            );
        }
        let next = self.stacks[endpoint]
            .as_deref_mut()
            .and_then(|stack| stack.poll_at(now));
        if let Some(next) = next {
            let next_ns = nanoseconds(next).max(self.now_ns + 1_000);
            if next_ns <= self.horizon_ns
                && self.wake_at[endpoint].is_none_or(|scheduled| next_ns < scheduled)
            {
                self.wake_at[endpoint] = Some(next_ns);
                self.schedule(next_ns, Event::Wake { endpoint });
            }
        }
    }

    /// What an endpoint's stack told its applications: notes for the report, and a
    /// datagram it refused to send (EMSGSIZE) as a drop at the endpoint — the
    /// application handed it over, so it counts as sent.
    fn take_stack_reports(&mut self, endpoint: EndpointId) {
        let reports = match self.stacks[endpoint].as_deref_mut() {
            Some(stack) => stack.take_reports(),
            None => Vec::new(),
        };
        for report in reports {
            if let Some(outcome) = self.flows.get_mut(report.flow as usize) {
                if !outcome.notes.contains(&report.message) {
                    outcome.notes.push(report.message.clone());
                }
                if report.refused {
                    outcome.sent += 1;
                }
            }
            if report.refused {
                let name = self.network.endpoints[endpoint].name.clone();
                let mut ctx = Ctx {
                    now_ns: self.now_ns,
                    journal: &mut self.journal,
                };
                ctx.drop_unsent(&name, report.flow, DropReason::MtuExceeded, report.message);
            }
        }
    }

    /// Whether a packet an endpoint sends travels back toward the flow's client:
    /// anything not addressed to the flow's destination address and port (what the
    /// client sends is, even through a Service), and ICMP answers.
    fn is_reply(&self, flow: FlowTag, packet: &Packet) -> bool {
        let Some(flow) = self.topology.flows.get(flow as usize) else {
            return false;
        };
        let key = packet.meta.key;
        match packet.meta.icmp {
            IcmpKind::EchoRequest => key.destination != flow.destination_ip,
            IcmpKind::None => {
                (key.destination, key.destination_port)
                    != (flow.destination_ip, flow.destination_port)
            }
            _ => true,
        }
    }

    fn send_from_endpoint(
        &mut self,
        endpoint: EndpointId,
        frame: Vec<u8>,
        flow: FlowTag,
        undeliverable: Option<DropReason>,
    ) {
        let Ok(mut packet) = Packet::from_frame(&frame, flow) else {
            return;
        };
        packet.meta.packet_id = self.journal.next_packet_id();
        packet.meta.reply = self.is_reply(flow, &packet);
        packet.meta.origin_port = packet.meta.key.source_port;
        let nic = &self.network.endpoints[endpoint];
        let (name, point, device) = (nic.name.clone(), nic.point, nic.device);
        match self.flows.get_mut(flow as usize) {
            Some(outcome) => {
                outcome.sent += 1;
                let first = if packet.meta.reply {
                    Some(&mut outcome.first_reply)
                } else if self.flow_sources[flow as usize] == Some(endpoint) {
                    Some(&mut outcome.first_packet)
                } else {
                    None
                };
                // The flow's first packet each way: its hops become the report's paths.
                if let Some(first @ None) = first {
                    packet.meta.packet_id |= FIRST_PACKET;
                    *first = Some(packet.meta.packet_id);
                }
            }
            None => self.untagged_sent += 1,
        }
        let mut ctx = Ctx {
            now_ns: self.now_ns,
            journal: &mut self.journal,
        };
        ctx.hop(point, &packet, HopAction::Send, || describe_packet(&packet));
        if let Some(reason) = undeliverable {
            let destination = packet.meta.key.destination;
            ctx.drop_packet(&name, &packet, reason, || match reason {
                DropReason::NoRoute => {
                    format!("{name} has no route to {destination} (no gateway on its segment)")
                }
                _ => format!("no neighbor answers for {destination} (ARP fails)"),
            });
            return;
        }
        self.transmit(device, 0, packet);
    }

    /// Puts a frame on the wire out of `device`'s `port`.
    fn transmit(&mut self, device: DeviceId, port: PortId, mut packet: Packet) {
        packet.meta.mark = 0; // skb->mark stays in the node
        match self.network.peer(device, port) {
            Some(end) => self.schedule(
                self.now_ns + end.latency_ns,
                Event::Arrive {
                    device: end.device,
                    port: end.port,
                    packet,
                },
            ),
            None => {
                let name = self.network.device_names[device].clone();
                let mut ctx = Ctx {
                    now_ns: self.now_ns,
                    journal: &mut self.journal,
                };
                ctx.drop_packet(&name, &packet, DropReason::NoNeighbor, || {
                    format!("port {port} is not connected")
                });
            }
        }
    }

    fn arrive(&mut self, device: DeviceId, port: PortId, packet: Packet) {
        if let Device::Endpoint(endpoint) = self.network.devices()[device] {
            self.deliver(endpoint, packet);
            return;
        }
        let mut outputs = std::mem::take(&mut self.outputs);
        {
            let mut ctx = Ctx {
                now_ns: self.now_ns,
                journal: &mut self.journal,
            };
            self.network
                .process(&mut ctx, device, port, packet, &mut outputs);
        }
        for (out_port, packet) in outputs.packets.drain(..) {
            self.transmit(device, out_port, packet);
        }
        self.outputs = outputs;
    }

    fn deliver(&mut self, endpoint: EndpointId, packet: Packet) {
        let flow = packet.meta.flow;
        let arrival = self.stack(endpoint).receive(packet.frame(), flow);
        let nic = &self.network.endpoints[endpoint];
        let (name, point) = (nic.name.clone(), nic.point);
        let mut ctx = Ctx {
            now_ns: self.now_ns,
            journal: &mut self.journal,
        };
        match arrival {
            Arrival::Delivered => {
                ctx.hop(point, &packet, HopAction::Deliver, || {
                    format!("delivered to {name}")
                });
                match self.flows.get_mut(flow as usize) {
                    Some(outcome) => {
                        outcome.delivered += 1;
                        // The server side: the flow's destination, or the endpoint a
                        // Service translated it to (a hairpin: the client itself).
                        if !packet.meta.reply {
                            outcome.seen_source.get_or_insert(packet.meta.key.source);
                        }
                        if let IcmpKind::Error { icmp_type, code } = packet.meta.icmp {
                            if self.flow_sources[flow as usize] == Some(endpoint) {
                                outcome
                                    .icmp_errors
                                    .push((icmp_type, code, packet.meta.key.source));
                                if (icmp_type, code) == (3, 4) && outcome.path_mtu.is_none() {
                                    let l4 = packet.meta.l4_offset;
                                    let mtu = packet
                                        .frame()
                                        .get(l4 + 6..l4 + 8)
                                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                                    let reported_by = self
                                        .journal
                                        .error_origins
                                        .get(&packet.meta.packet_id)
                                        .and_then(|&p| self.network.points.get(p as usize))
                                        .map(|p| p.name.clone())
                                        .unwrap_or_default();
                                    outcome.path_mtu = Some(PathMtuDiscovery {
                                        mtu,
                                        from: packet.meta.key.source,
                                        reported_by,
                                    });
                                }
                            }
                        }
                    }
                    None => self.untagged_delivered += 1,
                }
            }
            Arrival::NoListener => {
                let key = packet.meta.key;
                ctx.hop(point, &packet, HopAction::Drop, || {
                    format!(
                        "nothing listens on {}/{}: the stack answers",
                        key.protocol_name(),
                        key.destination_port
                    )
                });
                ctx.drop_packet(&name, &packet, DropReason::NoListener, || {
                    format!(
                        "nothing listens on {}/{}",
                        key.protocol_name(),
                        key.destination_port
                    )
                });
                if let Some(outcome) = self.flows.get_mut(flow as usize) {
                    if !packet.meta.reply {
                        outcome.seen_source.get_or_insert(key.source);
                    }
                }
            }
            Arrival::NotForUs => {
                let destination = packet.meta.key.destination;
                ctx.hop(point, &packet, HopAction::Drop, || {
                    format!("not addressed to {name}")
                });
                ctx.drop_packet(&name, &packet, DropReason::NoNeighbor, || {
                    format!("frame for {destination} reached {name}")
                });
            }
        }
        self.poll_endpoint(endpoint);
    }

    fn finish(mut self) -> RunResult {
        for drop in &self.journal.drops {
            if let Some(outcome) = self.flows.get_mut(drop.flow as usize) {
                outcome.dropped += 1;
            }
        }
        // Packets a device (a node, a router) accepted as addressed to itself.
        for (flow, source) in &self.journal.local_deliveries {
            if let Some(outcome) = self.flows.get_mut(*flow as usize) {
                outcome.delivered += 1;
                outcome.seen_source.get_or_insert(*source);
            }
        }
        for (flow, source) in &self.journal.local_refusals {
            if let Some(outcome) = self.flows.get_mut(*flow as usize) {
                outcome.seen_source.get_or_insert(*source);
            }
        }
        // Fragments merged into a reassembled datagram end there.
        for flow in &self.journal.merged {
            match self.flows.get_mut(*flow as usize) {
                Some(outcome) => outcome.delivered += 1,
                None => self.untagged_delivered += 1,
            }
        }
        for (flow, _) in &self.journal.generated {
            if let Some(outcome) = self.flows.get_mut(*flow as usize) {
                outcome.sent += 1;
            } else {
                self.untagged_sent += 1;
            }
        }
        for stack in self.stacks.iter().flatten() {
            for (flow, status) in stack.client_status() {
                if let Some(outcome) = self.flows.get_mut(flow as usize) {
                    outcome.connections.push(status);
                }
            }
        }
        RunResult {
            network: self.network,
            journal: self.journal,
            flows: self.flows,
            end_ns: self.now_ns,
            events: self.events,
            untagged_sent: self.untagged_sent,
            untagged_delivered: self.untagged_delivered,
            stacks_built: self.stacks.iter().filter(|s| s.is_some()).count(),
        }
    }
}

/// The application a flow speaks: by its destination port, and the port's name when
/// the destination is a pod.
pub fn flow_application(topology: &Topology, flow: &crate::topology::Flow) -> Application {
    if let EndpointRef::Node { cluster, node } = flow.to {
        let health = topology.clusters[cluster]
            .health_checks(node)
            .into_iter()
            .find(|(port, _)| *port == flow.destination_port);
        if let Some((_, local_endpoints)) = health {
            return Application::KubeProxyHealth { local_endpoints };
        }
    }
    // Through a Service the client speaks what the endpoints serve: their target
    // port decides (a NodePort 30080 in front of HTTP on 8080 is HTTP).
    if let Some((cluster, endpoint)) = topology.service_endpoint(flow) {
        let pod = topology.pod(cluster, endpoint.pod);
        let name = pod
            .ports
            .iter()
            .find(|p| p.port == endpoint.port && p.protocol == flow.protocol)
            .and_then(|p| p.name.as_deref());
        return Application::for_port(flow.protocol, endpoint.port, name);
    }
    let port_name = match flow.to {
        EndpointRef::Pod { cluster, pod } => topology
            .pod(cluster, pod)
            .ports
            .iter()
            .find(|p| p.port == flow.destination_port && p.protocol == flow.protocol)
            .and_then(|p| p.name.as_deref()),
        _ => None,
    };
    Application::for_port(flow.protocol, flow.destination_port, port_name)
}

/// A one-line summary of a packet, like tcpdump's.
pub fn describe_packet(packet: &Packet) -> String {
    let key = packet.meta.key;
    if packet.meta.is_later_fragment {
        let frame = packet.frame();
        let at = crate::wire::ETHERNET_HEADER_LEN + 6;
        let offset = usize::from(u16::from_be_bytes([frame[at], frame[at + 1]]) & 0x1fff) * 8;
        return format!(
            "{} fragment {} > {} offset {offset} len {}",
            key.protocol_name(),
            key.source,
            key.destination,
            packet.ip_len().saturating_sub(20)
        );
    }
    match key.protocol {
        crate::wire::PROTOCOL_TCP => {
            let flags = packet.meta.tcp_flags;
            let mut names = Vec::new();
            for (bit, name) in [
                (tcp_flags::SYN, "S"),
                (tcp_flags::FIN, "F"),
                (tcp_flags::RST, "R"),
                (tcp_flags::PSH, "P"),
                (tcp_flags::ACK, "."),
            ] {
                if flags & bit != 0 {
                    names.push(name);
                }
            }
            let payload = usize::from(packet.meta.ip_total_len)
                .saturating_sub(packet.meta.l4_offset - crate::wire::ETHERNET_HEADER_LEN)
                .saturating_sub(
                    usize::from(
                        packet
                            .frame()
                            .get(packet.meta.l4_offset + 12)
                            .copied()
                            .unwrap_or(0x50)
                            >> 4,
                    ) * 4,
                );
            format!(
                "tcp {}:{} > {}:{} [{}] len {payload}",
                key.source,
                key.source_port,
                key.destination,
                key.destination_port,
                names.concat()
            )
        }
        crate::wire::PROTOCOL_UDP => format!(
            "udp {}:{} > {}:{} len {}",
            key.source,
            key.source_port,
            key.destination,
            key.destination_port,
            usize::from(packet.meta.ip_total_len).saturating_sub(28)
        ),
        crate::wire::PROTOCOL_ICMP => match packet.meta.icmp {
            IcmpKind::EchoRequest | IcmpKind::EchoReply => {
                let frame = packet.frame();
                let l4 = packet.meta.l4_offset;
                let word = |at: usize| {
                    frame
                        .get(at..at + 2)
                        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
                };
                let kind = if packet.meta.icmp == IcmpKind::EchoRequest {
                    "request"
                } else {
                    "reply"
                };
                format!(
                    "icmp echo {kind} id={} seq={} {} > {} len {}",
                    word(l4 + 4),
                    word(l4 + 6),
                    key.source,
                    key.destination,
                    usize::from(packet.meta.ip_total_len)
                        .saturating_sub(l4 - crate::wire::ETHERNET_HEADER_LEN + 8)
                )
            }
            IcmpKind::Error { icmp_type, code } => format!(
                "icmp error type {icmp_type} code {code} {} > {}",
                key.source, key.destination
            ),
            _ => format!("icmp {} > {}", key.source, key.destination),
        },
        _ => format!(
            "ip {} > {} proto {}",
            key.source, key.destination, key.protocol
        ),
    }
}
