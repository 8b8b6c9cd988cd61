//! `netsim bench`: the forwarding core's speed, measured on the same datapath `run`
//! and `trace` use ([`Network::process`]). Cross-node pod-to-pod UDP packets go from
//! the client pod's veth through the source node (OVS, Geneve encap), the segment,
//! and the destination node (decap, OVS) to the server pod's veth; other scenarios
//! go through a ClusterIP, out through the node's masquerade, or past 1,000
//! NetworkPolicies. Each thread is a shard: it owns the flows a symmetric flow hash
//! gives it ([`crate::engine::hash::shard_of`], receive-side scaling, so a
//! connection's replies would land there too) and its own fabric with their state,
//! so threads share nothing on the fast path. With capture on, every hop streams
//! into the shard's own pcapng file. Wall-clock timing lives here only, outside the
//! core.

use crate::capture::{CaptureMode, PcapngStream, PreallocatedFile};
use crate::datapath::{Ctx, HopRecord, HopSink, Journal, Outputs, PortId, Recording};
use crate::packet::{Packet, NO_FLOW};
use crate::sim::network::{build, Device, DeviceId, LinkEnd, Network};
use crate::sim::path::{
    self, Lookup, PathCache, PathKey, RecordedHops, Recorder, Replay, WalkSummary,
};
use crate::topology::{EndpointRef, Topology};
use crate::wire::{
    checksum, transport_frame, FrameAddresses, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN, PROTOCOL_UDP,
};
use serde::Serialize;
use std::net::Ipv4Addr;
use std::time::Instant;

/// The topology `netsim bench` uses without one: topologies/two-node.toml.
pub fn default_topology() -> Topology {
    crate::topology::parse(
        "topologies/two-node.toml",
        include_str!("../topologies/two-node.toml"),
    )
    .unwrap_or_else(|error| panic!("the bundled two-node topology is invalid: {error}"))
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub flows: usize,
    /// Packets per scenario run; `None`: [`ESTABLISHED_PACKETS`] for established
    /// scenarios ([`ESTABLISHED_CAPTURED_PACKETS`] with capture on), and
    /// [`NEW_FLOW_PACKETS`] for new-flow ones.
    pub packets: Option<usize>,
    /// IP packet size in bytes.
    pub size: usize,
    /// The thread counts to measure; empty: 1 and every count up to the machine's
    /// cores.
    pub threads: Vec<usize>,
    pub capture: CaptureMode,
    /// Runs of each scenario; the one with the median packets/s is reported (a
    /// shared machine's noise is one-sided: it only ever slows a run down).
    pub repeat: usize,
    /// Where capture files go when capture is on; kept there. `None`: a temporary
    /// directory, removed after each scenario.
    pub capture_dir: Option<std::path::PathBuf>,
    /// Only the scenarios whose name contains this; `None`: every scenario.
    pub scenario: Option<String>,
}

/// Packets an established scenario sends by default: about half a second at
/// 20 M packets/s, long enough to time.
pub const ESTABLISHED_PACKETS: usize = 10_000_000;
/// Packets an established scenario sends by default with capture on: with every
/// hop captured a packet is about 1.2 kB of pcapng (six hops), so 1.2 GB per
/// scenario, not the 12 GB ten million packets would write.
pub const ESTABLISHED_CAPTURED_PACKETS: usize = 1_000_000;
/// Packets a new-flow scenario sends by default (every one walks every device).
pub const NEW_FLOW_PACKETS: usize = 500_000;

/// Frames an established scenario sends as one burst (`Forwarder::send_burst`).
pub const BURST: usize = 32;

/// The id every bench packet carries (its hops are told apart by time, not id).
const PACKET_ID: u64 = 1;

#[derive(Debug, Serialize)]
pub struct BenchResults {
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Serialize)]
pub struct Scenario {
    pub name: String,
    pub threads: usize,
    pub capture: String,
    pub packets: u64,
    pub packets_per_second: f64,
    pub bits_per_second: f64,
    /// CPU time per packet: elapsed time x threads / packets.
    pub ns_per_packet: f64,
    pub new_flows_per_second: f64,
    /// With capture on: hops written to pcapng (every capture point a packet
    /// crossed, or the edges), per second and in all, and the bytes written.
    pub captured_packets: u64,
    pub captured_packets_per_second: f64,
    pub capture_bytes_per_second: f64,
    /// Of the flow-cache lookups every node made (OVS's cache in front of its
    /// pipeline, consulted by packets that walk), the share that hit.
    pub flow_cache_hit_rate: f64,
    /// Of the packets sent, the share replayed through their flow's compiled path
    /// (`sim::path`) instead of walking device by device.
    pub path_cache_hit_rate: f64,
}

/// Pushes pre-built frames from one pod through the fabric to another.
pub struct Forwarder {
    network: Network,
    journal: Journal,
    source_device: DeviceId,
    source_port: PortId,
    destination_device: DeviceId,
    outputs: Outputs,
    queue: Vec<(DeviceId, PortId, Packet)>,
    spare: Option<Packet>,
    /// Where the first packet dropped on the way was dropped, and why (for the
    /// error when bench packets do not arrive).
    first_drop: Option<String>,
    pub source_ip: Ipv4Addr,
    pub destination_ip: Ipv4Addr,
    /// The UDP port frames go to (the server's, or the Service's).
    pub destination_port: u16,
    source_mac: crate::wire::Mac,
    gateway_mac: crate::wire::Mac,
    /// Where recorded hops stream as pcapng, when capture is on.
    capture: Option<PcapngStream<PreallocatedFile>>,
    /// The first error writing the capture (a full disk), for finish_capture.
    capture_failure: Option<String>,
    /// Flows' walks compiled into one transform each (`sim::path`).
    paths: PathCache,
    /// The buffer a frame is replayed in when nothing is recorded, and whether the
    /// last packet arrived there (rather than as the spare packet).
    work: Vec<u8>,
    arrived_in_work: bool,
}

impl Forwarder {
    /// A forwarder between the first two pods of the first cluster that run on
    /// different nodes.
    pub fn new(topology: &Topology, capture: bool) -> Result<Forwarder, String> {
        Forwarder::with_target(topology, capture, Target::Pod)
    }

    /// Like [`Forwarder::new`], but addressed to the ClusterIP of a UDP Service whose
    /// only endpoint is the server pod (AntreaProxy translates every packet).
    pub fn via_service(topology: &Topology, capture: bool) -> Result<Forwarder, String> {
        Forwarder::with_target(topology, capture, Target::Service)
    }

    /// From the client pod to the topology's first host (port 5000), out of the
    /// cluster through the node's host stack: MASQUERADEd unless the cluster has
    /// `no_snat`.
    pub fn to_host(topology: &Topology, capture: bool) -> Result<Forwarder, String> {
        Forwarder::with_target(topology, capture, Target::Host)
    }

    /// The UDP Service port whose one endpoint is pod `server` of the first cluster.
    fn service_of(topology: &Topology, server: usize) -> Option<(Ipv4Addr, u16)> {
        let cluster = topology.clusters.first()?;
        cluster.services.iter().find_map(|service| {
            service.ports.iter().find_map(|port| {
                let only_server = port.endpoints.len() == 1 && port.endpoints[0].pod == server;
                (port.protocol == crate::topology::Protocol::Udp && only_server)
                    .then_some((service.cluster_ip, port.port))
            })
        })
    }

    fn with_target(
        topology: &Topology,
        capture: bool,
        target: Target,
    ) -> Result<Forwarder, String> {
        let cluster = topology.clusters.first().ok_or("bench needs a cluster")?;
        let client = cluster.pods.first().ok_or("bench needs pods")?;
        let server = cluster
            .pods
            .iter()
            .position(|pod| pod.node != client.node)
            .ok_or("bench needs two pods on different nodes")?;
        let network = build(topology);
        let source = network
            .endpoint(EndpointRef::Pod { cluster: 0, pod: 0 })
            .ok_or("no client endpoint")?;
        let server_ref = match target {
            Target::Host if topology.hosts.is_empty() => {
                return Err("bench to a host needs a [[host]]".into())
            }
            Target::Host => EndpointRef::Host(0),
            Target::Pod | Target::Service => EndpointRef::Pod {
                cluster: 0,
                pod: server,
            },
        };
        let destination = network.endpoint(server_ref).ok_or("no server endpoint")?;
        let (destination_ip, destination_port) = if target == Target::Service {
            Forwarder::service_of(topology, server).ok_or(
                "bench via a Service needs a UDP Service whose only endpoint is the server pod",
            )?
        } else {
            (network.endpoints[destination].ip, 5000)
        };
        let source_nic = network.endpoints[source].clone();
        let link = network
            .peer(source_nic.device, 0)
            .ok_or("client pod is not connected")?;
        Ok(Forwarder {
            journal: Journal {
                recording: if capture {
                    Recording::Everything
                } else {
                    Recording::Nothing
                },
                ..Journal::default()
            },
            source_device: link.device,
            source_port: link.port,
            destination_device: network.endpoints[destination].device,
            outputs: Outputs::default(),
            queue: Vec::new(),
            spare: None,
            first_drop: None,
            source_ip: source_nic.ip,
            destination_ip,
            destination_port,
            source_mac: source_nic.mac,
            gateway_mac: source_nic.gateway_mac.ok_or("client pod has no gateway")?,
            capture: None,
            capture_failure: None,
            paths: PathCache::new(if topology.flow_cache {
                path::CAPACITY
            } else {
                0
            }),
            work: Vec::with_capacity(2048),
            arrived_in_work: false,
            network,
        })
    }

    /// Records every hop at the capture points `mode` includes and streams them into
    /// `file` as pcapng (one interface per included point), as `run` writes
    /// `capture.pcapng`.
    pub fn capture_into(&mut self, file: std::fs::File, mode: CaptureMode) {
        // Paths compiled with nothing recorded have no hops to rebuild.
        self.set_path_capacity(self.paths.capacity());
        let points = &self.network.points;
        self.journal.recording = match mode {
            CaptureMode::Edges => Recording::EdgesAndFirstPackets,
            CaptureMode::All | CaptureMode::None => Recording::Everything,
        };
        self.journal.uncaptured = mode.left_out(points);
        let file = PreallocatedFile::new(file);
        self.capture = Some(PcapngStream::new(file, points, |_, point| {
            mode.includes(point.kind)
        }));
    }

    /// Flow-cache (hits, misses) over every node the forwarder's network has.
    pub fn flow_cache_stats(&self) -> (u64, u64) {
        self.network.flow_cache_stats()
    }

    /// Writes what is still buffered; returns the hops and bytes written.
    pub fn finish_capture(&mut self) -> Result<(u64, u64), String> {
        let Some(stream) = self.capture.take() else {
            return Ok((0, 0));
        };
        if let Some(failure) = self.capture_failure.take() {
            return Err(format!("writing the bench capture: {failure}"));
        }
        let totals = (stream.packets(), stream.bytes());
        stream.finish().map_err(|error| error.to_string())?;
        Ok(totals)
    }

    /// A UDP frame of `size` IP bytes from the client pod, as the pod sends it.
    pub fn frame(&self, source_port: u16, size: usize) -> Vec<u8> {
        let addresses = FrameAddresses {
            source_mac: self.source_mac,
            destination_mac: self.gateway_mac,
            source: self.source_ip,
            destination: self.destination_ip,
            source_port,
            destination_port: self.destination_port,
        };
        let payload: Vec<u8> = (0..size.saturating_sub(IPV4_HEADER_LEN + 8))
            .map(|index| u8::try_from(index % 251).unwrap_or(0))
            .collect();
        transport_frame(PROTOCOL_UDP, &addresses, &payload)
    }

    /// The established flows (source ports 10,000 up, `flows` of them) that shard
    /// `shard` of `shards` owns by symmetric flow hash (receive-side scaling: a
    /// connection's packets and replies on one shard), as frames of `size` IP bytes.
    /// A shard the hash leaves empty (fewer flows than shards) takes every
    /// `shards`-th flow instead, so each shard sends.
    pub fn shard_of_flows(
        &self,
        flows: usize,
        shard: usize,
        shards: usize,
        size: usize,
    ) -> Vec<Vec<u8>> {
        let port = |flow: usize| 10_000 + u16::try_from(flow % 50_000).unwrap_or(0);
        let key = |flow: usize| crate::packet::FlowKey {
            protocol: PROTOCOL_UDP,
            source: self.source_ip,
            source_port: port(flow),
            destination: self.destination_ip,
            destination_port: self.destination_port,
        };
        let mut owned: Vec<usize> = (0..flows)
            .filter(|&flow| crate::engine::hash::shard_of(&key(flow), 0, shards) == shard)
            .collect();
        if owned.is_empty() {
            owned = (0..flows).filter(|flow| flow % shards == shard).collect();
        }
        if owned.is_empty() {
            owned.push(0);
        }
        owned
            .into_iter()
            .map(|flow| self.frame(port(flow), size))
            .collect()
    }

    /// Rewrites `frame` (one of [`Forwarder::frame`]'s) into the `index`-th of more
    /// distinct UDP flows than any node's flow cache holds (4,160 source ports ×
    /// 4,328 destination ports: 18 M), so a run over consecutive indices misses the
    /// cache on every packet. The sources are in Linux's ephemeral range
    /// (32768–60999), and both ranges hold no port Wireshark dissects as some
    /// protocol (`tshark -G decodes`: 1194 would be OpenVPN, 2222 CIP I/O), so a
    /// capture of new flows reads as the UDP it is and lints clean.
    pub fn make_new_flow(frame: &mut [u8], index: usize) {
        let source_port = 37_009 + u16::try_from(index % 4_160).unwrap_or(0);
        let destination_port = 50_000 + u16::try_from(index / 4_160 % 4_328).unwrap_or(0);
        set_udp_ports(frame, source_port, destination_port);
    }

    /// Turns the path cache off (every packet walks) or back on.
    pub fn set_path_cache(&mut self, on: bool) {
        self.set_path_capacity(if on { path::CAPACITY } else { 0 });
    }

    /// A new path cache of `paths` paths (it starts over when full; 0: none), once
    /// what the old one's replays left pending is applied.
    pub fn set_path_capacity(&mut self, paths: usize) {
        self.paths.settle(&mut self.network);
        self.paths = PathCache::new(paths);
    }

    /// The frame the last packet arrived as, when it arrived at an endpoint.
    pub fn last_arrival(&self) -> Option<&[u8]> {
        if self.arrived_in_work {
            return Some(&self.work);
        }
        self.spare.as_ref().map(Packet::frame)
    }

    /// The devices' conntrack entries and counters (`Network::state_digest`).
    pub fn state_digest(&mut self) -> String {
        self.paths.settle(&mut self.network);
        self.network.state_digest()
    }

    /// Path-cache (hits, misses).
    pub fn path_cache_stats(&self) -> (u64, u64) {
        self.paths.stats()
    }

    /// Forwards one frame end to end; true when it reached the server pod. A frame
    /// of a flow whose path is compiled is replayed through it in a reused buffer
    /// (`PathCache::replay_frame`), its hops laid out straight into the capture when
    /// capture is on; otherwise it becomes a packet and walks device by device, and
    /// a steady walk compiles the path.
    pub fn send(&mut self, frame: &[u8], now_ns: u64) -> bool {
        let lookup = self
            .paths
            .look_up((self.source_device, self.source_port), frame);
        self.send_looked_up(frame, lookup, now_ns)
    }

    /// Forwards a burst of up to [`BURST`] frames, the `i`-th entering at
    /// `now_ns(i)`; returns how many reached the server pod. Every frame's path is
    /// looked up first, so their memory accesses overlap instead of each waiting on
    /// the last (DPDK's and OVS's bursts); then each frame is replayed or walked in
    /// turn, exactly as [`Forwarder::send`] one by one would.
    pub fn send_burst(&mut self, frames: &[&[u8]], now_ns: impl Fn(usize) -> u64) -> u64 {
        let frames = &frames[..frames.len().min(BURST)];
        let ingress = (self.source_device, self.source_port);
        let mut lookups = [Lookup::NONE; BURST];
        for (lookup, frame) in lookups.iter_mut().zip(frames) {
            *lookup = self.paths.look_up(ingress, frame);
        }
        let mut delivered = 0;
        for (index, (frame, lookup)) in frames.iter().zip(lookups).enumerate() {
            delivered += u64::from(self.send_looked_up(frame, lookup, now_ns(index)));
        }
        delivered
    }

    /// Forwards a frame whose path was looked up (`PathCache::look_up`).
    fn send_looked_up(&mut self, frame: &[u8], lookup: Lookup, now_ns: u64) -> bool {
        self.arrived_in_work = false;
        self.work.clear();
        self.work.extend_from_slice(frame);
        let recording = !matches!(self.journal.recording, Recording::Nothing);
        // A replayed packet's hops go straight into the capture when there is one
        // (in order: each packet's hops are written before the next is sent).
        let mut stream_sink;
        let sink: Option<&mut dyn HopSink> = match (&mut self.capture, recording) {
            (_, false) => None,
            (Some(stream), true) => {
                stream_sink = StreamSink {
                    stream,
                    failure: &mut self.capture_failure,
                };
                Some(&mut stream_sink)
            }
            (None, true) => Some(&mut self.journal),
        };
        let recorder = sink.map(|sink| Recorder {
            sink,
            flow: NO_FLOW,
            packet_id: PACKET_ID,
        });
        let replay = self.paths.replay_looked_up(
            &mut self.network,
            lookup,
            &mut self.work,
            now_ns,
            recorder,
        );
        let delivered = match replay {
            Replay::Arrived(arrival) => {
                self.arrived_in_work = true;
                arrival.device == self.destination_device
            }
            Replay::Walk(key) => {
                let Some(packet) = self.packet_of(frame) else {
                    return false;
                };
                match key {
                    Some(path_key) => self.walk_and_learn(path_key, frame, packet, now_ns),
                    None => self.walk_only(packet, now_ns),
                }
            }
        };
        if recording {
            self.write_capture();
        }
        delivered
    }

    /// `frame` parsed into the spare packet buffer (or a new one).
    fn packet_of(&mut self, frame: &[u8]) -> Option<Packet> {
        let mut packet = match self.spare.take() {
            Some(mut packet) => {
                packet.reset_from(frame, 0).ok()?;
                packet
            }
            None => Packet::from_frame(frame, 0).ok()?,
        };
        packet.meta.packet_id = PACKET_ID;
        Some(packet)
    }

    /// Walks a packet no path may carry.
    fn walk_only(&mut self, packet: Packet, now_ns: u64) -> bool {
        let (delivered, _, arrived) = self.walk(packet, now_ns);
        if let Some((_, packet)) = arrived {
            self.spare = Some(packet);
        }
        delivered
    }

    /// Walks the packet with its path log recording, and compiles its path when the
    /// walk was steady.
    fn walk_and_learn(
        &mut self,
        path_key: PathKey,
        frame: &[u8],
        packet: Packet,
        now_ns: u64,
    ) -> bool {
        let recording = !matches!(self.journal.recording, Recording::Nothing);
        self.journal.path.begin(now_ns);
        let (delivered, summary, arrived) = self.walk(packet, now_ns);
        self.journal.path.end();
        if let (false, 1, Some((arrival, arriving))) = (summary.eventful, summary.arrivals, arrived)
        {
            // Hops whose comments describe a flow cache miss are not what later
            // packets see: compile from a walk that missed nowhere.
            let described_steadily = !self.journal.path.flow_cache_missed;
            let hops = recording.then(|| RecordedHops {
                hops: &self.journal.hops,
                started_ns: now_ns,
            });
            if !recording || described_steadily {
                self.paths.learn(
                    &mut self.network,
                    path_key,
                    frame,
                    (&arriving, arrival),
                    &self.journal.path.touches,
                    hops,
                );
            }
            self.spare = Some(arriving);
        }
        delivered
    }

    /// Streams the hops recorded for the last packet into the capture, when capture
    /// is on, and clears the per-packet records.
    fn write_capture(&mut self) {
        if self.journal.hops.is_empty() {
            // A replayed packet's hops went straight into the capture.
            return;
        }
        if let Some(stream) = &mut self.capture {
            for hop in &self.journal.hops {
                if let Err(error) = stream.write_hop(hop) {
                    // Reported by finish_capture; the packet itself was forwarded.
                    self.capture_failure.get_or_insert(error.to_string());
                }
            }
            self.journal.recycle_hops();
        } else if self.journal.hops.len() > 100_000 {
            self.journal.hops.clear();
        }
    }

    /// Walks `packet` device by device from the client's link: whether it reached the
    /// server, how the walk went, and (when one packet arrived at an endpoint) where
    /// and as what.
    fn walk(
        &mut self,
        packet: Packet,
        now_ns: u64,
    ) -> (bool, WalkSummary, Option<(LinkEnd, Packet)>) {
        // The devices see the state every replay so far left.
        self.paths.settle(&mut self.network);
        let before = (
            self.journal.drop_count,
            self.journal.generated_count,
            self.journal.local_deliveries.len() + self.journal.local_refusals.len(),
        );
        let mut summary = WalkSummary::default();
        let mut arrived = None;
        self.queue
            .push((self.source_device, self.source_port, packet));
        let mut delivered = false;
        let mut ctx = Ctx {
            now_ns,
            journal: &mut self.journal,
        };
        while let Some((device, port, packet)) = self.queue.pop() {
            if let Device::Endpoint(_) = self.network.devices()[device] {
                delivered |= device == self.destination_device;
                summary.arrivals += 1;
                let end = LinkEnd {
                    device,
                    port,
                    latency_ns: 0,
                };
                if let Some((_, spare)) = arrived.replace((end, packet)) {
                    self.spare = Some(spare);
                }
                continue;
            }
            self.network
                .process(&mut ctx, device, port, packet, &mut self.outputs);
            summary.eventful |= self.outputs.packets.len() > 1;
            for (out_port, packet) in self.outputs.packets.drain(..) {
                match self.network.peer(device, out_port) {
                    Some(end) => self.queue.push((end.device, end.port, packet)),
                    None => summary.eventful = true,
                }
            }
        }
        let after = (
            self.journal.drop_count,
            self.journal.generated_count,
            self.journal.local_deliveries.len() + self.journal.local_refusals.len(),
        );
        summary.eventful |= before != after;
        if let (None, Some(drop)) = (&self.first_drop, self.journal.drops.first()) {
            self.first_drop = Some(format!(
                "{}: {} ({})",
                drop.device, drop.reason, drop.detail
            ));
        }
        self.journal.drops.clear();
        self.journal.nat.clear();
        self.journal.policy.clear();
        self.journal.local_deliveries.clear();
        self.journal.local_refusals.clear();
        self.journal.generated.clear();
        if summary.arrivals != 1 || summary.eventful {
            if let Some((_, packet)) = arrived.take() {
                self.spare = Some(packet);
            }
        }
        (delivered, summary, arrived)
    }
}

/// A capture stream as the sink of replayed hops; the first write error is kept
/// for `finish_capture`.
struct StreamSink<'a> {
    stream: &'a mut PcapngStream<PreallocatedFile>,
    failure: &'a mut Option<String>,
}

impl HopSink for StreamSink<'_> {
    fn record(&mut self, hop: &HopRecord, frame: &mut dyn FnMut(&mut Vec<u8>)) {
        if let Err(error) = self.stream.write_record(hop, frame) {
            // Reported by finish_capture; the packet itself was forwarded.
            self.failure.get_or_insert(error.to_string());
        }
    }
}

/// Where a [`Forwarder`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Pod,
    Service,
    Host,
}

/// Rewrites a UDP frame's ports in place, with an RFC 1624 checksum update.
fn set_udp_ports(frame: &mut [u8], source_port: u16, destination_port: u16) {
    let udp = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    let mut sum = u16::from_be_bytes([frame[udp + 6], frame[udp + 7]]);
    for (offset, port) in [(0, source_port), (2, destination_port)] {
        let old = u16::from_be_bytes([frame[udp + offset], frame[udp + offset + 1]]);
        sum = checksum::update_word(sum, old, port);
        frame[udp + offset..udp + offset + 2].copy_from_slice(&port.to_be_bytes());
    }
    frame[udp + 6..udp + 8].copy_from_slice(&(if sum == 0 { 0xffff } else { sum }).to_be_bytes());
}

fn thread_counts(options: &BenchOptions) -> Vec<usize> {
    if options.threads.is_empty() {
        let cores = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1);
        return (1..=cores).collect();
    }
    options
        .threads
        .iter()
        .map(|&threads| threads.max(1))
        .collect()
}

/// Runs one scenario on `threads` threads: `established` replays `flows` known flows
/// (flow-cache hits after the first packet of each); otherwise every packet is a new
/// flow (a cache miss and the slow path).
fn scenario(
    topology: &Topology,
    options: &BenchOptions,
    threads: usize,
    kind: ScenarioKind,
) -> Result<Scenario, String> {
    let established = !matches!(
        kind,
        ScenarioKind::NewFlows | ScenarioKind::NewFlowsWithPolicies
    );
    let capturing = !matches!(options.capture, CaptureMode::None);
    let packets = options.packets.unwrap_or(match (established, capturing) {
        (true, false) => ESTABLISHED_PACKETS,
        (true, true) => ESTABLISHED_CAPTURED_PACKETS,
        (false, _) => NEW_FLOW_PACKETS,
    });
    let per_thread = packets.div_ceil(threads);
    // Only the scenarios that change the topology copy it.
    let topology = match kind {
        ScenarioKind::EstablishedWithPolicies | ScenarioKind::NewFlowsWithPolicies => {
            let loaded = with_policies(topology, POLICY_COUNT);
            std::borrow::Cow::Owned(with_services(&loaded, SERVICE_COUNT))
        }
        ScenarioKind::ToHostNoSnat => std::borrow::Cow::Owned(without_snat(topology)),
        _ => std::borrow::Cow::Borrowed(topology),
    };
    let build = |topology: &Topology| match kind {
        ScenarioKind::ViaClusterIp => Forwarder::via_service(topology, false),
        ScenarioKind::ToHostMasquerade | ScenarioKind::ToHostNoSnat => {
            Forwarder::to_host(topology, false)
        }
        _ => Forwarder::new(topology, false),
    };
    let (capture_files, mut files) = CaptureFiles::open(options, kind, threads)?;
    let flows = options.flows.max(1);
    // Each thread builds its own shard (so its fabric lives in that thread's heap
    // arena, sharing no cache line with another shard), then all start together.
    let ready = std::sync::Barrier::new(threads);
    let shards: Vec<Result<Finished, String>> = crossbeam::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let file = files.get_mut(thread).and_then(Option::take);
                let (ready, build, topology) = (&ready, &build, &topology);
                scope.spawn(move |_| {
                    let built = build(topology).map(|mut forwarder| {
                        if let Some(file) = file {
                            forwarder.capture_into(file, options.capture);
                        }
                        let templates =
                            forwarder.shard_of_flows(flows, thread, threads, options.size);
                        (forwarder, templates)
                    });
                    ready.wait();
                    let began = Instant::now();
                    let (mut forwarder, templates) = built?;
                    let shard = Shard {
                        thread,
                        threads,
                        packets: per_thread,
                        established,
                    };
                    let delivered = shard.run(&mut forwarder, &templates, options.size);
                    let captured = forwarder.finish_capture()?;
                    Ok(Finished {
                        forwarder,
                        delivered,
                        captured,
                        began,
                        ended: Instant::now(),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err("a bench thread panicked".to_string()))
            })
            .collect()
    })
    .map_err(|_| "a bench thread panicked".to_string())?;
    capture_files.close();
    // Wall time from the first shard's start to the last one's end, each taken by
    // the shard itself (a main thread descheduled at the barrier would miss a short
    // run's start).
    let mut span: Option<(Instant, Instant)> = None;
    let mut forwarders = Vec::new();
    let mut delivered = Vec::new();
    let mut captured = (0u64, 0u64);
    for shard in shards {
        let finished = shard?;
        span = Some(match span {
            None => (finished.began, finished.ended),
            Some((began, ended)) => (began.min(finished.began), ended.max(finished.ended)),
        });
        forwarders.push(finished.forwarder);
        delivered.push(finished.delivered);
        let (hops, bytes) = finished.captured;
        captured = (captured.0 + hops, captured.1 + bytes);
    }
    let sum = |stats: &dyn Fn(&Forwarder) -> (u64, u64)| {
        forwarders
            .iter()
            .map(stats)
            .fold((0, 0), |(h, m), (hits, misses)| (h + hits, m + misses))
    };
    let (hits, misses) = sum(&Forwarder::flow_cache_stats);
    let (replayed, walked) = sum(&Forwarder::path_cache_stats);
    let elapsed = span.map_or(0.0, |(began, ended)| (ended - began).as_secs_f64());
    let packets: u64 = delivered.iter().sum();
    let expected = u64::try_from(per_thread * threads).unwrap_or(0);
    if packets != expected {
        let scenario = kind.name();
        let dropped = forwarders
            .iter()
            .find_map(|forwarder| forwarder.first_drop.as_deref())
            .map_or(String::new(), |drop| {
                format!("; the first was dropped at {drop}")
            });
        return Err(format!(
            "{scenario}: only {packets} of {expected} bench packets reached the server pod{dropped} \
             (`--scenario TEXT` measures only the scenarios whose name contains TEXT)"
        ));
    }
    #[allow(clippy::cast_precision_loss)]
    let packets_f = packets as f64;
    #[allow(clippy::cast_precision_loss)]
    let threads_f = threads as f64;
    #[allow(clippy::cast_precision_loss)]
    let size_f = options.size as f64;
    let packets_per_second = packets_f / elapsed;
    #[allow(clippy::cast_precision_loss)]
    let (captured_packets, captured_bytes) = (captured.0 as f64, captured.1 as f64);
    Ok(Scenario {
        name: kind.name().into(),
        threads,
        capture: match options.capture {
            CaptureMode::All => "all",
            CaptureMode::Edges => "edges",
            CaptureMode::None => "none",
        }
        .into(),
        packets,
        packets_per_second,
        bits_per_second: packets_per_second * size_f * 8.0,
        ns_per_packet: elapsed * 1e9 * threads_f / packets_f,
        new_flows_per_second: if established { 0.0 } else { packets_per_second },
        captured_packets: captured.0,
        captured_packets_per_second: captured_packets / elapsed,
        capture_bytes_per_second: captured_bytes / elapsed,
        flow_cache_hit_rate: share(hits, misses),
        path_cache_hit_rate: share(replayed, walked),
    })
}

/// One thread's share of a scenario.
struct Shard {
    thread: usize,
    threads: usize,
    packets: usize,
    /// Established flows in turn; otherwise a new 5-tuple every packet.
    established: bool,
}

impl Shard {
    /// Sends the shard's packets through `forwarder`; returns how many reached the
    /// server.
    fn run(&self, forwarder: &mut Forwarder, templates: &[Vec<u8>], size: usize) -> u64 {
        let time_of = |index: usize| u64::try_from(index).unwrap_or(0) * 1_000;
        if !self.established {
            let mut delivered = 0u64;
            let mut fresh = forwarder.frame(1024, size);
            for index in 0..self.packets {
                // A new 5-tuple every packet: more distinct flows than any node's
                // flow cache holds, so every packet takes the slow path.
                Forwarder::make_new_flow(&mut fresh, index * self.threads + self.thread);
                delivered += u64::from(forwarder.send(&fresh, time_of(index)));
            }
            return delivered;
        }
        // The flows in turn (a cycling iterator: no division per packet), a burst
        // at a time.
        let mut turns = templates.iter().cycle();
        let mut delivered = 0u64;
        let mut burst: [&[u8]; BURST] = [&[]; BURST];
        let mut sent = 0;
        while sent < self.packets {
            let count = BURST.min(self.packets - sent);
            for slot in &mut burst[..count] {
                *slot = turns.next().map_or(&[], Vec::as_slice);
            }
            delivered += forwarder.send_burst(&burst[..count], |index| time_of(sent + index));
            sent += count;
        }
        delivered
    }
}

/// A shard after its run: its forwarder (for the cache statistics), the packets
/// that reached the server, and the hops and bytes its capture wrote.
struct Finished {
    forwarder: Forwarder,
    delivered: u64,
    captured: (u64, u64),
    /// When the shard started sending (past the start barrier) and when its last
    /// packet and capture byte were done.
    began: Instant,
    ended: Instant,
}

/// `hits` as a share of `hits + misses` (0 when both are 0).
fn share(hits: u64, misses: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

/// The pcapng files of one scenario's threads, when capture is on: in
/// `--capture-dir` (kept), or in a temporary directory removed afterwards.
struct CaptureFiles {
    temporary: Option<std::path::PathBuf>,
}

impl CaptureFiles {
    /// The directory and one file per thread (`None` each with capture off).
    fn open(
        options: &BenchOptions,
        kind: ScenarioKind,
        threads: usize,
    ) -> Result<(CaptureFiles, Vec<Option<std::fs::File>>), String> {
        if options.capture == CaptureMode::None {
            return Ok((CaptureFiles { temporary: None }, Vec::new()));
        }
        let (directory, temporary) = match &options.capture_dir {
            Some(directory) => (directory.clone(), None),
            None => {
                let directory =
                    std::env::temp_dir().join(format!("netsim-bench-{}", std::process::id()));
                (directory.clone(), Some(directory))
            }
        };
        std::fs::create_dir_all(&directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?;
        let mut files = Vec::new();
        for thread in 0..threads {
            let name = format!(
                "{}-{thread}-of-{threads}.pcapng",
                kind.name().replace('/', "-")
            );
            let path = directory.join(name);
            let file = std::fs::File::create(&path)
                .map_err(|error| format!("{}: {error}", path.display()))?;
            files.push(Some(file));
        }
        Ok((CaptureFiles { temporary }, files))
    }

    fn close(self) {
        if let Some(directory) = self.temporary {
            let _ = std::fs::remove_dir_all(directory);
        }
    }
}

impl ScenarioKind {
    fn name(self) -> &'static str {
        match self {
            ScenarioKind::Established => "cross-node-udp/established",
            ScenarioKind::NewFlows => "cross-node-udp/new-flow-per-packet",
            ScenarioKind::ViaClusterIp => "cross-node-udp-via-clusterip/established",
            ScenarioKind::ToHostMasquerade => "pod-to-host-udp-masquerade/established",
            ScenarioKind::ToHostNoSnat => "pod-to-host-udp-no-snat/established",
            ScenarioKind::EstablishedWithPolicies => {
                "cross-node-udp-1000-policies-500-services/established"
            }
            ScenarioKind::NewFlowsWithPolicies => {
                "cross-node-udp-1000-policies-500-services/new-flow-per-packet"
            }
        }
    }
}

/// What a scenario sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScenarioKind {
    /// Known flows, pod to pod across nodes.
    Established,
    /// A new 5-tuple every packet.
    NewFlows,
    /// Known flows to a ClusterIP whose endpoint is the server pod (AntreaProxy).
    ViaClusterIp,
    /// Known flows from the pod to a host outside, MASQUERADEd by the node.
    ToHostMasquerade,
    /// The same path with the cluster's `no_snat`: the conntrack entry without
    /// translation (the masquerade's cost is the difference).
    ToHostNoSnat,
    /// Pod to pod with 1,000 NetworkPolicies on the server: known flows (the
    /// connection's decision is reused) ...
    EstablishedWithPolicies,
    /// ... and a new connection every packet (each decided by the policy layers).
    NewFlowsWithPolicies,
}

/// NetworkPolicies the policy scenarios load.
const POLICY_COUNT: usize = 1_000;
/// ClusterIP Services the policy scenarios load beside the policies (issue 10's
/// new-flow target: 1,000 policies and 500 Services).
const SERVICE_COUNT: usize = 500;

/// The topology with `count` more TCP ClusterIP Services in the first cluster, each
/// port 80 to port 8080 of one pod (round robin), on addresses of the Service CIDR
/// no Service holds yet: AntreaProxy then holds that many Services' flows.
pub fn with_services(topology: &Topology, count: usize) -> Topology {
    use crate::topology::model::{Service, ServiceEndpoint, ServicePort, ServiceType};
    let mut copy = topology.clone();
    let Some(cluster) = copy.clusters.first_mut() else {
        return copy;
    };
    let taken: std::collections::BTreeSet<Ipv4Addr> = cluster
        .services
        .iter()
        .map(|service| service.cluster_ip)
        .collect();
    let free = cluster
        .service_cidr
        .hosts()
        .skip(1)
        .filter(|address| !taken.contains(address));
    let pods = cluster.pods.len().max(1);
    let mut added = Vec::new();
    for (index, cluster_ip) in free.take(count).enumerate() {
        let pod = &cluster.pods[index % pods];
        added.push(Service {
            name: format!("bench-{index}"),
            namespace: pod.namespace.clone(),
            kind: ServiceType::ClusterIp,
            cluster_ip,
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: crate::topology::Protocol::Tcp,
                node_port: None,
                endpoints: vec![ServiceEndpoint {
                    pod: index % pods,
                    node: pod.node,
                    ip: pod.ip,
                    port: 8080,
                }],
            }],
            external_local: false,
            internal_local: false,
            affinity_timeout_ns: None,
            load_balancer: None,
            health_check_node_port: None,
            snat: None,
        });
    }
    cluster.services.extend(added);
    copy
}

/// The topology with `count` NetworkPolicies on the server pod's namespace: each
/// isolates the server for ingress and allows one /16 that sends nothing, one port;
/// the last allows the client. Every new connection to the server walks them all.
pub fn with_policies(topology: &Topology, count: usize) -> Topology {
    use crate::topology::policy::{NetworkPolicy, PolicyPeer, PolicyPort, PolicyRule, PortRef};
    let mut copy = topology.clone();
    let Some(cluster) = copy.clusters.first_mut() else {
        return copy;
    };
    let (Some(client), Some(server)) = (
        cluster.pods.first().cloned(),
        cluster
            .pods
            .iter()
            .position(|pod| Some(pod.node) != cluster.pods.first().map(|c| c.node)),
    ) else {
        return copy;
    };
    let namespace = cluster.pods[server].namespace.clone();
    for index in 0..count {
        let peer = if index + 1 == count {
            PolicyPeer::IpBlock {
                cidr: ipnet::Ipv4Net::from(client.ip),
                except: Vec::new(),
            }
        } else {
            let second = u8::try_from(index % 250).unwrap_or(0);
            let first = 100 + u8::try_from(index / 250).unwrap_or(0);
            PolicyPeer::IpBlock {
                cidr: ipnet::Ipv4Net::new(Ipv4Addr::new(first, second, 0, 0), 16)
                    .unwrap_or_default(),
                except: Vec::new(),
            }
        };
        let port = (index + 1 != count).then(|| PolicyPort {
            protocol: PROTOCOL_UDP,
            port: Some(PortRef::Number(7000 + u16::try_from(index).unwrap_or(0))),
            end_port: None,
        });
        cluster.network_policies.push(NetworkPolicy {
            name: format!("bench-{index}"),
            namespace: namespace.clone(),
            pods: vec![server],
            ingress: Some(vec![PolicyRule {
                peers: Some(vec![peer]),
                ports: port.map(|p| vec![p]),
            }]),
            egress: None,
        });
    }
    copy
}

/// The topology with every Antrea cluster's SNAT off.
fn without_snat(topology: &Topology) -> Topology {
    let mut copy = topology.clone();
    for cluster in &mut copy.clusters {
        cluster.antrea.no_snat = true;
    }
    copy
}

/// Runs every scenario for every thread count.
pub fn run(topology: &Topology, options: &BenchOptions) -> Result<BenchResults, String> {
    run_with_progress(topology, options, &mut |_, _| {})
}

/// Like [`run`], calling `progress(done, total)` before each scenario.
pub fn run_with_progress(
    topology: &Topology,
    options: &BenchOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<BenchResults, String> {
    let counts = thread_counts(options);
    let mut kinds = vec![ScenarioKind::Established, ScenarioKind::NewFlows];
    if Forwarder::via_service(topology, false).is_ok() {
        kinds.push(ScenarioKind::ViaClusterIp);
    }
    if Forwarder::to_host(topology, false).is_ok() {
        kinds.extend([ScenarioKind::ToHostMasquerade, ScenarioKind::ToHostNoSnat]);
    }
    kinds.extend([
        ScenarioKind::EstablishedWithPolicies,
        ScenarioKind::NewFlowsWithPolicies,
    ]);
    if let Some(wanted) = &options.scenario {
        kinds.retain(|kind| kind.name().contains(wanted.as_str()));
        if kinds.is_empty() {
            return Err(format!("no bench scenario's name contains {wanted:?}"));
        }
    }
    let total = counts.len() * kinds.len();
    let mut scenarios = Vec::new();
    for threads in counts {
        for &kind in &kinds {
            progress(scenarios.len(), total);
            let mut runs = (0..options.repeat.max(1))
                .map(|_| scenario(topology, options, threads, kind))
                .collect::<Result<Vec<_>, _>>()?;
            runs.sort_by(|a, b| a.packets_per_second.total_cmp(&b.packets_per_second));
            let median = runs.swap_remove(runs.len() / 2);
            scenarios.push(median);
        }
    }
    progress(total, total);
    Ok(BenchResults { scenarios })
}

/// The text table of a bench run (with captured hops/s and MB/s when capture is on).
pub fn text(results: &BenchResults) -> String {
    let capture = results.scenarios.iter().any(|s| s.captured_packets > 0);
    let mut out = format!(
        "{:<60} {:>7} {:>12} {:>8} {:>10} {:>9} {:>9}",
        "scenario", "threads", "packets/s", "Gbit/s", "ns/packet", "path hit", "flow hit"
    );
    if capture {
        out.push_str(&format!(" {:>13} {:>9}", "captured/s", "MB/s"));
    }
    out.push('\n');
    for s in &results.scenarios {
        out.push_str(&format!(
            "{:<60} {:>7} {:>12.0} {:>8.3} {:>10.1} {:>8.1}% {:>8.1}%",
            s.name,
            s.threads,
            s.packets_per_second,
            s.bits_per_second / 1e9,
            s.ns_per_packet,
            s.path_cache_hit_rate * 100.0,
            s.flow_cache_hit_rate * 100.0
        ));
        if capture {
            out.push_str(&format!(
                " {:>13.0} {:>9.1}",
                s.captured_packets_per_second,
                s.capture_bytes_per_second / 1e6
            ));
        }
        out.push('\n');
    }
    out
}
