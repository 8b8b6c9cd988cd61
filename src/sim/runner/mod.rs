//! The event-driven runner: a simulated clock (nanoseconds from a fixed epoch),
//! events ordered by (time, ordinal), endpoints polled when they have work or a
//! timer fires, frames moved over links with their latency. The fabric is split
//! into units (`partition`) spread over shards, one per thread (`shard`), which run
//! in windows as long as the shortest link between units; `merge` puts their
//! journals back in event order. Deterministic: the same topology and seed give the
//! same events in the same order, whatever the thread count.

mod merge;
pub mod partition;
mod shard;

use super::application::Application;
use super::endpoint::ConnectionStatus;
use super::network::{build, CapturePoint, Device, DeviceId, EndpointId, Network};
use crate::capture::CaptureMode;
use crate::datapath::{Journal, PortId, Recording};
use crate::packet::{tcp_flags, IcmpKind, Packet};
use crate::topology::{EndpointRef, Topology};
use partition::Partition;
use shard::{Message, Shard, Shared};
use smoltcp::time::Instant;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

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
    /// How many shards (threads) ran the simulation.
    pub shards: usize,
    /// When the shards' windows grew too sparse and the first shard took in the
    /// others (simulated ns), if it came to that.
    pub joined_at_ns: Option<u64>,
}

fn instant(ns: u64) -> Instant {
    Instant::from_micros(i64::try_from(ns / 1000).unwrap_or(i64::MAX))
}

fn nanoseconds(instant: Instant) -> u64 {
    u64::try_from(instant.total_micros()).unwrap_or(0) * 1000
}

/// Runs every flow of `topology` to completion, recording every hop.
pub fn run(topology: &Topology) -> RunResult {
    run_with_progress(topology, CaptureMode::All, 1, &mut |_, _| {})
}

/// Like [`run`], on up to `threads` threads, reporting `(simulated now, horizon)` in
/// nanoseconds now and then, for a progress bar. The callback must not influence
/// the run. `capture` says which hops are recorded: every hop (`All`); every hop at
/// the edge points plus every hop of each flow's first packet and first reply
/// (`Edges`: what the capture writes and the report's paths); or only those first
/// packets (`None`: enough for the report, memory flat). The result is the same for
/// every thread count.
pub fn run_with_progress(
    topology: &Topology,
    capture: CaptureMode,
    threads: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> RunResult {
    let mut network = build(topology);
    let partition = Partition::of(&network);
    let shards = threads.clamp(1, partition.unit_count().max(1));
    let shard_of_device = partition.shard_of_devices(shards);
    let flow_sources: Vec<Option<EndpointId>> = topology
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
    let devices_by_shard = deal_devices(&mut network, &shard_of_device, shards);
    let shared = Shared {
        topology,
        network: &network,
        partition: &partition,
        shard_of_device: &shard_of_device,
        flow_sources: &flow_sources,
        horizon_ns: last_start + HORIZON_AFTER_LAST_START_NS,
    };
    let mut parts: Vec<Shard> = devices_by_shard
        .into_iter()
        .enumerate()
        .map(|(index, devices)| {
            let journal = shard_journal(index, capture, &shared.network.points);
            Shard::new(index, shards, &shared, devices, journal)
        })
        .collect();
    for (index, flow) in topology.flows.iter().enumerate() {
        let shard = flow_sources[index].map_or(0, |endpoint| {
            shard_of_device[network.endpoints[endpoint].device]
        });
        parts[shard].schedule_start(flow.start_ns, index);
    }
    let mut joined_at_ns = None;
    if parts.len() == 1 {
        parts[0].run_until(u64::MAX, progress);
    } else {
        (parts, joined_at_ns) = run_in_windows(parts, partition.lookahead_ns, progress);
    }
    let horizon_ns = shared.horizon_ns;
    progress(horizon_ns, horizon_ns);
    let pieces = take_apart(parts, &network);
    let mut result = finish(topology, pieces, network);
    result.joined_at_ns = joined_at_ns;
    result
}

/// Takes the devices out of `network` and deals each to its shard (by device id;
/// `None` where another shard holds it): the fabric the shards read stays shared.
fn deal_devices(
    network: &mut Network,
    shard_of_device: &[usize],
    shards: usize,
) -> Vec<Vec<Option<Device>>> {
    let mut dealt: Vec<Vec<Option<Device>>> = (0..shards)
        .map(|_| (0..shard_of_device.len()).map(|_| None).collect())
        .collect();
    for (id, device) in std::mem::take(network.devices_mut())
        .into_iter()
        .enumerate()
    {
        dealt[shard_of_device[id]][id] = Some(device);
    }
    dealt
}

/// A shard's journal, recording what `capture` needs: every hop (`All`); every hop
/// at the edge points plus every hop of each flow's first packet and first replies
/// (`Edges`); or only those first packets (`None`).
fn shard_journal(index: usize, capture: CaptureMode, points: &[CapturePoint]) -> Journal {
    let (recording, uncaptured) = match capture {
        CaptureMode::All => (Recording::Everything, Vec::new()),
        CaptureMode::Edges => (Recording::EdgesAndFirstPackets, capture.left_out(points)),
        CaptureMode::None => (Recording::FirstPackets, Vec::new()),
    };
    Journal {
        recording,
        uncaptured,
        // Packet ids are unique run-wide: each shard counts in its own range.
        last_packet_id: (index as u64) << 48,
        ..Journal::default()
    }
}

/// What the shards share while they run in windows: each one's next event time, an
/// inbox each, and the barrier that ends a phase.
struct Exchange {
    /// Each shard's earliest pending time, by window parity.
    next: [Vec<AtomicU64>; 2],
    /// Events each shard has run so far, by window parity.
    processed: [Vec<AtomicU64>; 2],
    inboxes: Vec<Mutex<Vec<Message>>>,
    /// Whether a shard's inbox may hold mail (so an empty one is not locked).
    mail: Vec<AtomicBool>,
    barrier: SpinBarrier,
}

/// A barrier that spins before it yields: a window often holds a few events, so
/// shards meet every few microseconds, and sleeping on a condition variable at
/// each meeting cost 40 times the work (197,698 windows for 10,000 staggered flows:
/// 10.9 s with `std::sync::Barrier`).
struct SpinBarrier {
    count: usize,
    waiting: AtomicUsize,
    generation: AtomicUsize,
    /// A shard panicked: the others stop waiting for it and panic too, so the run
    /// ends with the panic instead of hanging.
    broken: AtomicBool,
}

/// Breaks the barrier if the shard holding it unwinds.
struct BreakOnPanic<'a>(&'a SpinBarrier);

impl Drop for BreakOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.broken.store(true, Ordering::Release);
        }
    }
}

impl SpinBarrier {
    /// Spins before each yield to the scheduler (more threads than cores still
    /// make progress).
    const SPINS: u32 = 2_000;

    fn new(count: usize) -> Self {
        SpinBarrier {
            count,
            waiting: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
        }
    }

    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.waiting.fetch_add(1, Ordering::AcqRel) + 1 == self.count {
            self.waiting.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0;
        while self.generation.load(Ordering::Acquire) == generation {
            assert!(
                !self.broken.load(Ordering::Acquire),
                "another shard of the run panicked"
            );
            if spins < Self::SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Runs the shards on threads of their own (the first on this one), window by
/// window: each window starts at the earliest pending event anywhere and lasts the
/// lookahead, so nothing a shard sends in it arrives before it ends. When windows
/// hold too little work to pay for meeting at their ends (flows one after another,
/// a long tail of timers), the first shard takes in the others and runs alone.
fn run_in_windows<'t>(
    parts: Vec<Shard<'t>>,
    lookahead_ns: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> (Vec<Shard<'t>>, Option<u64>) {
    let count = parts.len();
    let exchange = Exchange {
        next: [0, 1].map(|_| (0..count).map(|_| AtomicU64::new(u64::MAX)).collect()),
        processed: [0, 1].map(|_| (0..count).map(|_| AtomicU64::new(0)).collect()),
        inboxes: (0..count).map(|_| Mutex::new(Vec::new())).collect(),
        mail: (0..count).map(|_| AtomicBool::new(false)).collect(),
        barrier: SpinBarrier::new(count),
    };
    let mut parts = parts.into_iter();
    let Some(mut first) = parts.next() else {
        return (Vec::new(), None);
    };
    let (end, mut others) = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .map(|mut part| {
                let exchange = &exchange;
                scope.spawn(move || {
                    let _guard = BreakOnPanic(&exchange.barrier);
                    run_windows(&mut part, exchange, lookahead_ns, &mut |_, _| {});
                    part
                })
            })
            .collect();
        let end = {
            let _guard = BreakOnPanic(&exchange.barrier);
            run_windows(&mut first, &exchange, lookahead_ns, progress)
        };
        let others: Vec<Shard> = handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        (end, others)
    });
    let mut joined_at_ns = None;
    if end == WindowsEnd::Sparse {
        for other in &mut others {
            first.absorb(other);
        }
        joined_at_ns = first.next_time();
        first.run_until(u64::MAX, progress);
    }
    let mut all = vec![first];
    all.append(&mut others);
    (all, joined_at_ns)
}

/// Why shards stopped running in windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowsEnd {
    /// Nothing is left to run.
    Finished,
    /// The last windows held too few events to be worth running in parallel.
    Sparse,
}

/// Windows between two looks at how much work they hold.
const WINDOWS_PER_LOOK: usize = 256;

/// Events per window and shard below which meeting at every window's end costs
/// more than the shards gain (a meeting costs about what an event does).
const MIN_EVENTS_PER_WINDOW_AND_SHARD: u64 = 4;

/// One shard's side of [`run_in_windows`]: one barrier per window. Before it, each
/// shard has mailed what it sent and published the earliest of its own next event
/// and what it mailed (in the buffer of the window's parity, so a shard ahead never
/// overwrites what a shard behind still reads) and how many events it has run;
/// after it, every shard reads the same figures, so all decide alike whether to go
/// on, takes its mail and runs its events up to the earliest time plus the
/// lookahead. Mail that comes early belongs to a later window and waits in the
/// queue.
fn run_windows(
    part: &mut Shard,
    exchange: &Exchange,
    lookahead_ns: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> WindowsEnd {
    let me = part.index;
    let shards = exchange.inboxes.len() as u64;
    let mut round = 0;
    let mut events_at_last_look = 0;
    exchange.next[0][me].store(part.next_time().unwrap_or(u64::MAX), Ordering::Release);
    loop {
        exchange.barrier.wait();
        let start = exchange.next[round % 2]
            .iter()
            .map(|next| next.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        if start == u64::MAX {
            return WindowsEnd::Finished;
        }
        let take_mail = |part: &mut Shard| {
            if exchange.mail[me].swap(false, Ordering::AcqRel) {
                let arrived = std::mem::take(&mut *lock(&exchange.inboxes[me]));
                for message in arrived {
                    part.receive(message);
                }
            }
        };
        if round > 0 && round % WINDOWS_PER_LOOK == 0 {
            let events: u64 = exchange.processed[round % 2]
                .iter()
                .map(|count| count.load(Ordering::Acquire))
                .sum();
            let recent = events - events_at_last_look;
            events_at_last_look = events;
            if recent < WINDOWS_PER_LOOK as u64 * MIN_EVENTS_PER_WINDOW_AND_SHARD * shards {
                take_mail(part);
                return WindowsEnd::Sparse;
            }
        }
        take_mail(part);
        part.run_until(start.saturating_add(lookahead_ns), progress);
        let mut earliest = part.next_time().unwrap_or(u64::MAX);
        for (shard, outbox) in part.outbox.iter_mut().enumerate() {
            if let Some(first) = outbox.iter().map(|message| message.time_ns).min() {
                earliest = earliest.min(first);
                lock(&exchange.inboxes[shard]).append(outbox);
                exchange.mail[shard].store(true, Ordering::Release);
            }
        }
        round += 1;
        exchange.processed[round % 2][me].store(part.events, Ordering::Release);
        exchange.next[round % 2][me].store(earliest, Ordering::Release);
    }
}

/// The inbox, even if another shard panicked holding it (its panic ends the run).
fn lock(inbox: &Mutex<Vec<Message>>) -> std::sync::MutexGuard<'_, Vec<Message>> {
    inbox
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the shards hold at the end of a run, gathered.
struct Pieces {
    devices: Vec<Option<Device>>,
    stacks: Vec<Option<Box<super::endpoint::Stack>>>,
    recorded: Vec<merge::Recorded>,
    end_ns: u64,
    events: u64,
}

/// Gathers the shards' devices, stacks and records.
fn take_apart(parts: Vec<Shard>, network: &Network) -> Pieces {
    let device_count = network.device_names.len();
    let endpoint_count = network.endpoints.len();
    let mut devices: Vec<Option<Device>> = (0..device_count).map(|_| None).collect();
    let mut stacks: Vec<Option<Box<super::endpoint::Stack>>> =
        (0..endpoint_count).map(|_| None).collect();
    let (mut end_ns, mut events) = (0, 0);
    let mut recorded = Vec::with_capacity(parts.len());
    for part in parts {
        end_ns = end_ns.max(part.now_ns);
        events += part.events;
        for (slot, device) in devices.iter_mut().zip(part.devices) {
            if device.is_some() {
                *slot = device;
            }
        }
        for (slot, stack) in stacks.iter_mut().zip(part.stacks) {
            if stack.is_some() {
                *slot = stack;
            }
        }
        recorded.push(merge::Recorded {
            journal: part.journal,
            updates: part.updates,
            marks: part.marks.unwrap_or_default(),
        });
    }
    Pieces {
        devices,
        stacks,
        recorded,
        end_ns,
        events,
    }
}

/// Puts the shards back together: the devices into the network, the journals and
/// flow updates merged in event order, each flow's outcome and connections.
fn finish(topology: &Topology, pieces: Pieces, mut network: Network) -> RunResult {
    let Pieces {
        devices,
        stacks,
        mut recorded,
        end_ns,
        events,
    } = pieces;
    let shards = recorded.len();
    *network.devices_mut() = devices.into_iter().flatten().collect();
    let (journal, updates) = if recorded.len() == 1 {
        let only = recorded.pop().unwrap_or_else(|| unreachable!("one shard"));
        (only.journal, only.updates)
    } else {
        merge::merge(recorded)
    };
    let (mut flows, untagged) = merge::outcomes(topology.flows.len(), updates, &journal, &network);
    for stack in stacks.iter().flatten() {
        for (flow, status) in stack.client_status() {
            if let Some(outcome) = flows.get_mut(flow as usize) {
                outcome.connections.push(status);
            }
        }
    }
    RunResult {
        network,
        journal,
        flows,
        end_ns,
        events,
        untagged_sent: untagged.sent,
        untagged_delivered: untagged.delivered,
        stacks_built: stacks.iter().filter(|s| s.is_some()).count(),
        shards,
        joined_at_ns: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spin_barrier_lets_shards_meet_again_and_again() {
        let barrier = SpinBarrier::new(3);
        let meetings = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for round in 0..1_000 {
                        meetings.fetch_add(1, Ordering::AcqRel);
                        barrier.wait();
                        // Everyone has counted this round before anyone goes on.
                        assert!(meetings.load(Ordering::Acquire) >= 3 * (round + 1));
                        barrier.wait();
                    }
                });
            }
        });
        assert_eq!(meetings.load(Ordering::Acquire), 3_000);
    }

    #[test]
    fn a_shard_that_panics_breaks_the_barrier_instead_of_hanging_the_others() {
        let barrier = SpinBarrier::new(2);
        let waiter = std::thread::scope(|scope| {
            let waiter = scope.spawn(|| barrier.wait());
            let panicked = scope
                .spawn(|| {
                    let _guard = BreakOnPanic(&barrier);
                    panic!("a shard's bug");
                })
                .join();
            assert!(panicked.is_err());
            waiter.join()
        });
        let message = waiter.expect_err("the waiter panics too");
        assert_eq!(
            message.downcast_ref::<&str>().copied(),
            Some("another shard of the run panicked")
        );
    }
}
