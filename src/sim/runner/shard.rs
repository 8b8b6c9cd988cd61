//! One thread's share of a run: the devices and endpoints of its units
//! (`partition`), its own event queue, journal and log of what flows did. A shard
//! orders its events by (time, ordinal), where the ordinal names the unit that
//! scheduled the event and how many that unit had scheduled before — a key that does
//! not depend on how units are spread over threads, so every shard runs its events
//! in the order a single thread would.

use super::partition::Partition;
use super::{describe_packet, flow_application, instant, nanoseconds, Event, EventSlab};
use crate::datapath::{Ctx, DropReason, HopAction, Journal, Outputs, PortId, FIRST_PACKET};
use crate::packet::{FlowTag, IcmpKind, Packet, NO_FLOW};
use crate::sim::application::Application;
use crate::sim::endpoint::{Arrival, Stack};
use crate::sim::network::{process_device, Device, DeviceId, EndpointId, Network};
use crate::topology::{EndpointRef, Topology};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;

/// Events between two progress reports.
const PROGRESS_EVERY: u64 = 4096;

/// Bits of an ordinal that count a unit's events; the unit (plus one) sits above.
/// Ordinals with unit 0 order the flows' starts, by flow index.
const SEQUENCE_BITS: u32 = 40;

/// An event's place in the queue: (time, ordinal, slot in the event slab). The heap
/// orders these small keys; the events themselves (a packet each) stay put in the
/// slab, so sifting moves 24 bytes, not a packet.
type Scheduled = (u64, u64, u32);

/// What a flow's endpoints did, in the order they did it; `merge` sums and orders
/// these into each flow's outcome.
#[derive(Debug, Clone)]
pub enum Update {
    /// An endpoint sent a packet of the flow (or of no flow: `NO_FLOW`).
    Sent(FlowTag),
    /// A candidate for the flow's first packet (from its client) or first reply (the
    /// first each answering endpoint sent): the earliest of each kind wins.
    First {
        flow: FlowTag,
        reply: bool,
        packet_id: u64,
    },
    Delivered(FlowTag),
    /// The source address the flow's destination saw.
    SeenSource(FlowTag, Ipv4Addr),
    /// An ICMP error the client received, and for fragmentation-needed the MTU and
    /// the error's packet id (where it was built is looked up once merged).
    IcmpError {
        flow: FlowTag,
        icmp_type: u8,
        code: u8,
        from: Ipv4Addr,
        fragmentation_needed: Option<(u16, u64)>,
    },
    Note(FlowTag, String),
}

/// Where one event's records end in each of a shard's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Ends {
    pub hops: u32,
    pub drops: u32,
    pub nat: u32,
    pub policy: u32,
    pub generated: u32,
    pub local_deliveries: u32,
    pub local_refusals: u32,
    pub merged: u32,
    pub updates: u32,
}

/// An event that recorded something: its key, and where its records end.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    pub time_ns: u64,
    pub ordinal: u64,
    pub ends: Ends,
}

/// An arrival scheduled for a device another shard runs.
pub struct Message {
    pub time_ns: u64,
    pub ordinal: u64,
    pub device: DeviceId,
    pub port: PortId,
    pub packet: Packet,
}

/// What every shard reads and none changes.
pub struct Shared<'t> {
    pub topology: &'t Topology,
    /// The fabric: links, capture points, endpoints (its devices are in the shards).
    pub network: &'t Network,
    pub partition: &'t Partition,
    pub shard_of_device: &'t [usize],
    /// Each flow's client endpoint.
    pub flow_sources: &'t [Option<EndpointId>],
    pub horizon_ns: u64,
}

pub struct Shard<'t> {
    pub index: usize,
    pub shared: &'t Shared<'t>,
    /// The devices of this shard's units, by device id (`None`: another shard's).
    pub devices: Vec<Option<Device>>,
    /// Each endpoint's TCP/IP stack, built the first time the endpoint sends or
    /// receives: a pod no flow touches costs no stack and no socket buffers.
    pub stacks: Vec<Option<Box<Stack>>>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    pending_events: EventSlab,
    /// Events each unit has scheduled, by unit (device id of its root).
    scheduled_by_unit: Vec<u64>,
    pub now_ns: u64,
    wake_at: Vec<Option<u64>>,
    pub journal: Journal,
    pub updates: Vec<Update>,
    /// Marks of the events that recorded something, when the shard's lists are to be
    /// merged with others'.
    pub marks: Option<Vec<Mark>>,
    /// (flow, endpoint) pairs that have sent a reply, and flows whose client has sent.
    replied: rustc_hash::FxHashSet<(FlowTag, EndpointId)>,
    client_sent: rustc_hash::FxHashSet<FlowTag>,
    /// Arrivals for other shards' devices, by shard, until the window ends.
    pub outbox: Vec<Vec<Message>>,
    /// This shard has taken in every other one's devices and runs alone.
    alone: bool,
    outputs: Outputs,
    pub events: u64,
}

impl<'t> Shard<'t> {
    pub fn new(
        index: usize,
        shards: usize,
        shared: &'t Shared<'t>,
        devices: Vec<Option<Device>>,
        journal: Journal,
    ) -> Self {
        let endpoint_count = shared.network.endpoints.len();
        Shard {
            index,
            shared,
            devices,
            stacks: (0..endpoint_count).map(|_| None).collect(),
            queue: BinaryHeap::new(),
            pending_events: EventSlab::default(),
            scheduled_by_unit: vec![0; shared.network.device_names.len()],
            now_ns: 0,
            wake_at: vec![None; endpoint_count],
            journal,
            updates: Vec::new(),
            marks: (shards > 1).then(Vec::new),
            replied: rustc_hash::FxHashSet::default(),
            client_sent: rustc_hash::FxHashSet::default(),
            outbox: (0..shards).map(|_| Vec::new()).collect(),
            alone: shards == 1,
            outputs: Outputs::default(),
            events: 0,
        }
    }

    /// Queues the start of flow `index` (its client's shard does this).
    pub fn schedule_start(&mut self, time_ns: u64, flow: usize) {
        let ordinal = u64::try_from(flow).unwrap_or(u64::MAX);
        self.enqueue(time_ns, ordinal, Event::Start { flow });
    }

    /// Queues an arrival another shard scheduled.
    pub fn receive(&mut self, message: Message) {
        self.enqueue(
            message.time_ns,
            message.ordinal,
            Event::Arrive {
                device: message.device,
                port: message.port,
                packet: message.packet,
            },
        );
    }

    fn enqueue(&mut self, time_ns: u64, ordinal: u64, event: Event) {
        let slot = self.pending_events.insert(event);
        self.queue.push(Reverse((time_ns, ordinal, slot)));
    }

    /// The next ordinal of the unit `device` belongs to.
    fn ordinal(&mut self, device: DeviceId) -> u64 {
        let unit = self.shared.partition.unit(device) as usize;
        self.scheduled_by_unit[unit] += 1;
        ((unit as u64 + 1) << SEQUENCE_BITS) | self.scheduled_by_unit[unit]
    }

    /// Schedules an event `device`'s unit caused: here, or for another shard's device
    /// into the outbox.
    fn schedule(&mut self, by: DeviceId, time_ns: u64, event: Event) {
        let ordinal = self.ordinal(by);
        if let Event::Arrive {
            device,
            port,
            packet,
        } = event
        {
            let shard = self.shared.shard_of_device[device];
            if shard != self.index && !self.alone {
                self.outbox[shard].push(Message {
                    time_ns,
                    ordinal,
                    device,
                    port,
                    packet,
                });
                return;
            }
            self.enqueue(
                time_ns,
                ordinal,
                Event::Arrive {
                    device,
                    port,
                    packet,
                },
            );
            return;
        }
        self.enqueue(time_ns, ordinal, event);
    }

    /// Takes in `other`'s devices, stacks, timers and queued events, to run alone
    /// from here on; what `other` recorded stays with it, to be merged.
    pub fn absorb(&mut self, other: &mut Shard) {
        for (mine, theirs) in self.devices.iter_mut().zip(&mut other.devices) {
            if theirs.is_some() {
                *mine = theirs.take();
            }
        }
        for (mine, theirs) in self.stacks.iter_mut().zip(&mut other.stacks) {
            if theirs.is_some() {
                *mine = theirs.take();
            }
        }
        for (mine, theirs) in self.wake_at.iter_mut().zip(&mut other.wake_at) {
            if theirs.is_some() {
                *mine = theirs.take();
            }
        }
        // Only a unit's own shard counted its events.
        for (mine, theirs) in self
            .scheduled_by_unit
            .iter_mut()
            .zip(&other.scheduled_by_unit)
        {
            *mine = (*mine).max(*theirs);
        }
        self.replied.extend(other.replied.drain());
        self.client_sent.extend(other.client_sent.drain());
        while let Some(Reverse((time_ns, ordinal, slot))) = other.queue.pop() {
            if let Some(event) = other.pending_events.take(slot) {
                self.enqueue(time_ns, ordinal, event);
            }
        }
        self.alone = true;
    }

    /// The time of the earliest queued event.
    pub fn next_time(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((time, _, _))| *time)
    }

    /// Runs every queued event earlier than `end_ns`, in key order.
    pub fn run_until(&mut self, end_ns: u64, progress: &mut dyn FnMut(u64, u64)) {
        let horizon_ns = self.shared.horizon_ns;
        while let Some(&Reverse((time_ns, ordinal, slot))) = self.queue.peek() {
            if time_ns >= end_ns {
                break;
            }
            self.queue.pop();
            let Some(event) = self.pending_events.take(slot) else {
                continue;
            };
            self.now_ns = time_ns;
            self.events += 1;
            if self.events.is_multiple_of(PROGRESS_EVERY) {
                progress(self.now_ns.min(horizon_ns), horizon_ns);
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
            self.mark(time_ns, ordinal);
        }
    }

    /// Notes where the event's records end, if it recorded any and the lists are to
    /// be merged.
    fn mark(&mut self, time_ns: u64, ordinal: u64) {
        let Some(marks) = self.marks.as_mut() else {
            return;
        };
        let count = |length: usize| u32::try_from(length).unwrap_or(u32::MAX);
        let journal = &self.journal;
        let ends = Ends {
            hops: count(journal.hops.len()),
            drops: count(journal.drops.len()),
            nat: count(journal.nat.len()),
            policy: count(journal.policy.len()),
            generated: count(journal.generated.len()),
            local_deliveries: count(journal.local_deliveries.len()),
            local_refusals: count(journal.local_refusals.len()),
            merged: count(journal.merged.len()),
            updates: count(self.updates.len()),
        };
        if marks.last().map_or(Ends::default(), |mark| mark.ends) != ends {
            marks.push(Mark {
                time_ns,
                ordinal,
                ends,
            });
        }
    }

    /// The endpoint's stack, built on first use with its listening ports open.
    fn stack(&mut self, endpoint: EndpointId) -> &mut Stack {
        if self.stacks[endpoint].is_none() {
            let topology = self.shared.topology;
            let nic = self.shared.network.endpoints[endpoint].clone();
            let reference = nic.reference;
            let mut stack = Stack::new(nic, topology.seed, instant(self.now_ns));
            match reference {
                EndpointRef::Pod { cluster, pod } => {
                    for port in &topology.pod(cluster, pod).ports {
                        stack.listen(port.protocol, port.port, port.name.as_deref());
                    }
                }
                EndpointRef::Host(host) => {
                    for port in &topology.hosts[host].listen {
                        stack.listen(port.protocol, port.port, None);
                    }
                }
                // The node's own processes: kube-proxy's health-check servers.
                EndpointRef::Node { cluster, node } => {
                    for (port, local_endpoints) in topology.clusters[cluster].health_checks(node) {
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

    fn start_flow(&mut self, flow_index: usize) {
        let Some(endpoint) = self.shared.flow_sources[flow_index] else {
            return;
        };
        let topology = self.shared.topology;
        let flow = &topology.flows[flow_index];
        let tag = FlowTag::try_from(flow_index).unwrap_or(NO_FLOW);
        let application = flow_application(topology, flow);
        for _ in 0..flow.connections {
            self.stack(endpoint).start(tag, flow, application);
        }
        self.poll_endpoint(endpoint);
    }

    /// Runs an endpoint's stack now and sends what it produced.
    fn poll_endpoint(&mut self, endpoint: EndpointId) {
        let horizon_ns = self.shared.horizon_ns;
        if self.now_ns > horizon_ns {
            return;
        }
        let now = instant(self.now_ns);
        let flows = &self.shared.topology.flows;
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
            if next_ns <= horizon_ns
                && self.wake_at[endpoint].is_none_or(|scheduled| next_ns < scheduled)
            {
                self.wake_at[endpoint] = Some(next_ns);
                let device = self.shared.network.endpoints[endpoint].device;
                self.schedule(device, next_ns, Event::Wake { endpoint });
            }
        }
    }

    fn is_flow(&self, flow: FlowTag) -> bool {
        (flow as usize) < self.shared.topology.flows.len()
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
            if self.is_flow(report.flow) {
                self.updates
                    .push(Update::Note(report.flow, report.message.clone()));
                if report.refused {
                    self.updates.push(Update::Sent(report.flow));
                }
            }
            if report.refused {
                let name = self.shared.network.endpoints[endpoint].name.clone();
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
        let Some(flow) = self.shared.topology.flows.get(flow as usize) else {
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
        let nic = &self.shared.network.endpoints[endpoint];
        let (name, point, device) = (nic.name.clone(), nic.point, nic.device);
        self.updates.push(Update::Sent(flow));
        if self.is_flow(flow) {
            // The flow's first packet each way: its hops become the report's paths.
            // Each answering endpoint's first reply is a candidate; the earliest wins.
            let first = if packet.meta.reply {
                self.replied.insert((flow, endpoint))
            } else if self.shared.flow_sources[flow as usize] == Some(endpoint) {
                self.client_sent.insert(flow)
            } else {
                false
            };
            if first {
                packet.meta.packet_id |= FIRST_PACKET;
                self.updates.push(Update::First {
                    flow,
                    reply: packet.meta.reply,
                    packet_id: packet.meta.packet_id,
                });
            }
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
        match self.shared.network.peer(device, port) {
            Some(end) => self.schedule(
                device,
                self.now_ns + end.latency_ns,
                Event::Arrive {
                    device: end.device,
                    port: end.port,
                    packet,
                },
            ),
            None => {
                let name = self.shared.network.device_names[device].clone();
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
        let Some(owned) = self.devices[device].as_mut() else {
            unreachable!("an arrival goes to the shard that runs its device");
        };
        if let Device::Endpoint(endpoint) = *owned {
            self.deliver(endpoint, packet);
            return;
        }
        let mut outputs = std::mem::take(&mut self.outputs);
        {
            let mut ctx = Ctx {
                now_ns: self.now_ns,
                journal: &mut self.journal,
            };
            process_device(owned, &mut ctx, device, port, packet, &mut outputs);
        }
        for (out_port, packet) in outputs.packets.drain(..) {
            self.transmit(device, out_port, packet);
        }
        self.outputs = outputs;
    }

    fn deliver(&mut self, endpoint: EndpointId, packet: Packet) {
        let flow = packet.meta.flow;
        let arrival = self.stack(endpoint).receive(packet.frame(), flow);
        let nic = &self.shared.network.endpoints[endpoint];
        let (name, point) = (nic.name.clone(), nic.point);
        let is_flow = self.is_flow(flow);
        let mut ctx = Ctx {
            now_ns: self.now_ns,
            journal: &mut self.journal,
        };
        match arrival {
            Arrival::Delivered => {
                ctx.hop(point, &packet, HopAction::Deliver, || {
                    format!("delivered to {name}")
                });
                self.updates.push(Update::Delivered(flow));
                if is_flow {
                    // The server side: the flow's destination, or the endpoint a
                    // Service translated it to (a hairpin: the client itself).
                    if !packet.meta.reply {
                        self.updates
                            .push(Update::SeenSource(flow, packet.meta.key.source));
                    }
                    if let IcmpKind::Error { icmp_type, code } = packet.meta.icmp {
                        if self.shared.flow_sources[flow as usize] == Some(endpoint) {
                            let fragmentation_needed = ((icmp_type, code) == (3, 4)).then(|| {
                                let l4 = packet.meta.l4_offset;
                                let mtu = packet
                                    .frame()
                                    .get(l4 + 6..l4 + 8)
                                    .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                                (mtu, packet.meta.packet_id)
                            });
                            self.updates.push(Update::IcmpError {
                                flow,
                                icmp_type,
                                code,
                                from: packet.meta.key.source,
                                fragmentation_needed,
                            });
                        }
                    }
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
                if is_flow && !packet.meta.reply {
                    self.updates.push(Update::SeenSource(flow, key.source));
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
}
