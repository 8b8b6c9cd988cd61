//! The path cache: above each device's own flow cache, a flow's whole walk through
//! the fabric — every device from the sender's link to the receiving endpoint —
//! compiled into one transform, as OVS's megaflows and opte's unified flow table
//! compile a pipeline into one action list, here across devices.
//!
//! A packet that may be replayed (IPv4, unfragmented, no options, not an ICMP error)
//! and misses walks the devices with its [`PathLog`](crate::datapath::path_log)
//! recording: the conntrack entries each device found (and how their states moved),
//! the tuples each found absent, the counters each advanced. If the walk was steady —
//! one packet out, delivered to an endpoint, no drop, no generated packet, no
//! connection state changed — the difference between the frame that entered and the
//! frame that arrived (MACs, addresses and ports, TTL) becomes the path's
//! [`Transform`], kept only if applying it to the entering frame gives the arriving
//! frame byte for byte (checksums included).
//!
//! A later packet of the flow (same ingress, MACs, 5-tuple and TCP flags; TTL at least, IP
//! length at most, DF and TOS equal to the compiling packet's) replays the path when
//! every touch still holds: each entry alive, still the same connection, in the
//! same state, and left there by this packet; each absent tuple still absent (the
//! table has committed nothing since, or a probe finds nothing). Replaying refreshes
//! each entry at the time its device would have seen the packet and advances each
//! counter, then rewrites the frame once — the devices' state ends exactly as the
//! walk would have left it (`tests/path_cache.rs` compares with the cache off). A
//! touch that no longer holds sends the packet down the walk again, which compiles
//! the path anew.
//!
//! [`PathCache::replay_frame`] replays a bare frame in the caller's buffer: it reads
//! the key from the header bytes ([`PathKey::read`]), skips re-checking touches
//! while the network's generation has not moved and no refreshed entry can have
//! expired, and rewrites in place (a NAT through its [`CompiledNat`]). Nothing is
//! parsed. Property tests below hold the bare-frame key and NAT to `parse_meta` and
//! `HeaderEditor`. With capture on, each hop the compiling walk recorded is laid out
//! again for the replayed packet straight into a [`HopSink`]'s buffer: the entering
//! frame copied, rewritten in place as far as that hop, and wrapped in the outer
//! headers the encapsulating device would build (`datapath::encap`), its IP
//! identification taken from that device's counter — checked at compile time to give
//! the walk's own hop frame byte for byte.

use crate::datapath::encap::{decapsulate, emit_outer_headers, EncapHeader, Encapsulation};
use crate::datapath::path_log::{Counter, Table, Touch};
use crate::datapath::{Hop, HopAction, HopRecord, HopSink, PointId, PortId};
use crate::engine::conntrack::Conntrack;
use crate::engine::flow_cache::FlowCache;
use crate::packet::{
    write_identification, write_macs, write_ttl, CompiledNat, FlowTag, HeaderEditor, Meta, Packet,
};
use crate::sim::network::{Device, DeviceId, LinkEnd, Network};
use crate::wire::{Mac, ETHERNET_HEADER_LEN, IPV4_HEADER_LEN};
use std::net::Ipv4Addr;

/// Paths a cache holds before it starts over (as a node's flow cache).
pub const CAPACITY: usize = 65_536;

/// Touches a cache keeps per path, on average, before it starts over.
const STEPS_PER_PATH: usize = 16;

mod key;
pub use key::PathKey;

/// The header fields a path rewrites, from the frame that enters to the frame that
/// arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    pub source_mac: Mac,
    pub destination_mac: Mac,
    /// New source / destination (address, port), when NAT changed them.
    pub source: Option<(Ipv4Addr, u16)>,
    pub destination: Option<(Ipv4Addr, u16)>,
    /// Hops that decremented the TTL.
    pub ttl_decrement: u8,
}

impl Transform {
    /// The rewrite that turns `entering` into `arriving`, when one of these fields
    /// explains it.
    fn between(entering: &Packet, arriving: &Packet) -> Option<Transform> {
        let (before, after) = (&entering.meta, &arriving.meta);
        let endpoint = |old: (Ipv4Addr, u16), new: (Ipv4Addr, u16)| (old != new).then_some(new);
        Some(Transform {
            source_mac: after.source_mac,
            destination_mac: after.destination_mac,
            source: endpoint(
                (before.key.source, before.key.source_port),
                (after.key.source, after.key.source_port),
            ),
            destination: endpoint(
                (before.key.destination, before.key.destination_port),
                (after.key.destination, after.key.destination_port),
            ),
            ttl_decrement: before.ttl.checked_sub(after.ttl)?,
        })
    }

    /// Its NAT compiled for a flow parsed as `meta`, when it translates.
    fn compiled_nat(&self, meta: &Meta) -> Option<CompiledNat> {
        let translates = self.source.is_some() || self.destination.is_some();
        translates.then(|| CompiledNat::compile(meta, self.source, self.destination))
    }

    /// Rewrites `packet` (checksums updated incrementally, as each device does).
    pub fn apply(&self, packet: &mut Packet) {
        self.apply_to(&mut packet.headers());
    }

    /// Rewrites a bare frame in place: Ethernet addresses, the NAT compiled for
    /// its flow (`nat`, when the path translates), the TTL.
    fn apply_to_frame(&self, nat: Option<&CompiledNat>, frame: &mut [u8]) {
        write_macs(frame, self.source_mac, self.destination_mac);
        if let Some(nat) = nat {
            nat.apply(frame);
        }
        if self.ttl_decrement != 0 {
            let ttl = frame[ETHERNET_HEADER_LEN + 8];
            write_ttl(frame, ttl - self.ttl_decrement);
        }
    }

    /// Rewrites the headers of a packet or a bare frame.
    fn apply_to(&self, headers: &mut HeaderEditor) {
        headers.set_macs(self.source_mac, self.destination_mac);
        if let Some((address, port)) = self.destination {
            headers.set_destination(address, port);
        }
        if let Some((address, port)) = self.source {
            headers.set_source(address, port);
        }
        if self.ttl_decrement != 0 {
            let ttl = headers.ttl();
            headers.set_ttl(ttl - self.ttl_decrement);
        }
    }
}

/// What a later packet must share with the one that compiled the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Guards {
    /// Every TTL check on the way passed with this much.
    min_ttl: u8,
    /// Every MTU check on the way passed with this IP length.
    max_ip_len: usize,
    dont_fragment: bool,
    tos: u8,
}

impl Guards {
    fn of(packet: &Packet) -> Guards {
        Guards {
            min_ttl: packet.meta.ttl,
            max_ip_len: packet.ip_len(),
            dont_fragment: packet.meta.dont_fragment,
            tos: packet.tos(),
        }
    }

    /// An IPv4 frame (one a key was read from) the path may carry; `exact` (a path
    /// that records hops, whose comments name TTLs and lengths): the same TTL and
    /// length.
    fn admit(&self, frame: &[u8], exact: bool) -> bool {
        let Some(header) = frame.first_chunk::<{ ETHERNET_HEADER_LEN + IPV4_HEADER_LEN }>() else {
            return false;
        };
        let ip = ETHERNET_HEADER_LEN;
        let (tos, dont_fragment, ttl) =
            (header[ip + 1], header[ip + 6] & 0x40 != 0, header[ip + 8]);
        let length = frame.len() - ETHERNET_HEADER_LEN;
        let fits = if exact {
            ttl == self.min_ttl && length == self.max_ip_len
        } else {
            ttl >= self.min_ttl && length <= self.max_ip_len
        };
        fits && dont_fragment == self.dont_fragment && tos == self.tos
    }
}

/// One flow's compiled walk.
#[derive(Debug, Clone)]
pub struct CompiledPath {
    guards: Guards,
    transform: Transform,
    /// The transform's NAT compiled for the bare-frame lane.
    nat: Option<CompiledNat>,
    /// Its touches, in the cache's [`Steps`].
    touches: Span,
    /// What a replay does to the devices' state, in the cache's [`Steps`]: the
    /// touches that refresh an entry or advance a counter.
    effects: Span,
    /// The network generation at which the touches last held in full; while it has
    /// not moved no entry was added, removed or changed state, so they still hold
    /// until the first entry this path refreshes could expire, `alive_until_ns`.
    checked_generation: Option<u64>,
    alive_until_ns: u64,
    /// The shortest timeout of the entries this path refreshes.
    shortest_timeout_ns: u64,
    /// Replays on the bare-frame lane whose effects wait for `PathCache::settle`.
    pending: Option<Replays>,
    /// Where the packet arrives (the endpoint's NIC).
    pub arrival: LinkEnd,
    /// The hops the walk recorded (capture on), rebuilt for each replayed packet;
    /// `None`: compiled with nothing recorded.
    hops: Option<Box<[HopTemplate]>>,
}

/// One hop a replayed packet records: the compiling walk's hop, its frame described
/// as the entering frame rewritten (and, on a tunnel's wire, encapsulated again).
#[derive(Debug, Clone)]
struct HopTemplate {
    point: PointId,
    action: HopAction,
    detail: String,
    /// The comment as a capture writes it.
    rendered_comment: Box<[u8]>,
    offset_ns: u64,
    inner: Transform,
    /// The inner rewrite's NAT compiled for the entering flow, when it translates.
    nat: Option<CompiledNat>,
    outer: Option<Outer>,
}

/// The encapsulation a hop saw around the inner frame: its outer headers as the
/// encapsulating device emitted them (`datapath::encap`) for the compiling packet.
/// A path that records hops carries only packets of the compiling packet's length
/// (its guards are exact), so for each packet only the identification — the
/// device's next — and with it the header checksum differ.
#[derive(Debug, Clone, Copy)]
struct Outer {
    encapsulation: Encapsulation,
    /// The device whose IP identification counter the encapsulation took.
    identification_from: DeviceId,
    emitted: [u8; MAX_OUTER_LEN],
    /// The inner frame's length those headers were emitted for.
    inner_len: usize,
}

/// The longest outer headers an encapsulation writes (Geneve and VXLAN: 50 bytes).
const MAX_OUTER_LEN: usize = 64;

impl HopTemplate {
    /// Describes `hop` in terms of `entering` (parsed); `None` when the rewrite and
    /// encapsulation do not explain its frame byte for byte.
    fn of(
        hop: &Hop,
        entering: &Packet,
        started_ns: u64,
        counters: &[(DeviceId, u16)],
    ) -> Option<HopTemplate> {
        let seen = Packet::from_frame(&hop.frame, 0).ok()?;
        let mut inner = seen.clone();
        let outer = match decapsulate(&mut inner) {
            Ok((encapsulation, _)) => {
                let identification = u16::from_be_bytes([hop.frame[18], hop.frame[19]]);
                // The one device on the path whose counter gave this identification.
                let mut givers = counters.iter().filter(|(_, id)| *id == identification);
                let (device, _) = givers.next()?;
                if givers.next().is_some() {
                    return None;
                }
                let key = seen.meta.key;
                let header = EncapHeader {
                    source: key.source,
                    destination: key.destination,
                    source_mac: seen.meta.source_mac,
                    destination_mac: seen.meta.destination_mac,
                    source_port: key.source_port,
                    identification,
                    dont_fragment: seen.meta.dont_fragment,
                };
                let (outer_len, _) = encapsulation.outer_len();
                let mut emitted = [0; MAX_OUTER_LEN];
                let inner_len = entering.len();
                emit_outer_headers(
                    emitted.get_mut(..outer_len)?,
                    encapsulation,
                    &header,
                    inner_len,
                );
                Some(Outer {
                    encapsulation,
                    identification_from: *device,
                    emitted,
                    inner_len,
                })
            }
            Err(_) => None,
        };
        let transform = Transform::between(entering, &inner)?;
        let template = HopTemplate {
            point: hop.point,
            action: hop.action,
            detail: hop.detail.clone(),
            rendered_comment: crate::capture::render_comment(hop.action, &hop.detail),
            offset_ns: hop.time_ns.saturating_sub(started_ns),
            inner: transform,
            nat: transform.compiled_nat(&entering.meta),
            outer,
        };
        let identification = |device: DeviceId| {
            counters
                .iter()
                .find(|(counted, _)| *counted == device)
                .map_or(0, |(_, id)| *id)
        };
        let mut frame = Vec::with_capacity(hop.frame.len());
        template.write_frame(entering.frame(), identification, &mut frame);
        (frame == hop.frame).then_some(template)
    }

    /// Appends this hop's frame, for a packet that entered as `entering`, to `out`:
    /// the entering frame copied and rewritten in place, then the outer headers (the
    /// IP identification `identification(device)` gives) written in front of it —
    /// over its Ethernet header, for an encapsulation that does not carry one.
    fn write_frame(
        &self,
        entering: &[u8],
        identification: impl Fn(DeviceId) -> u16,
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        let Some(outer) = &self.outer else {
            out.extend_from_slice(entering);
            self.inner
                .apply_to_frame(self.nat.as_ref(), &mut out[start..]);
            return;
        };
        // The outer headers as emitted go in front of the inner frame; the bytes
        // of them that take the place of its Ethernet header (IPIP) follow once the
        // inner frame is rewritten.
        let (outer_len, replaced) = outer.encapsulation.outer_len();
        out.extend_from_slice(&outer.emitted[..outer_len - replaced]);
        let inner = out.len();
        out.extend_from_slice(entering);
        self.inner
            .apply_to_frame(self.nat.as_ref(), &mut out[inner..]);
        debug_assert_eq!(entering.len(), outer.inner_len, "exact guards");
        let headers = &mut out[start..start + outer_len];
        headers[outer_len - replaced..]
            .copy_from_slice(&outer.emitted[outer_len - replaced..outer_len]);
        write_identification(headers, identification(outer.identification_from));
    }
}

/// What [`PathCache::replay_frame`] did with a frame.
#[derive(Debug, Clone, Copy)]
pub enum Replay {
    /// Replayed: the frame, rewritten, arrives here.
    Arrived(LinkEnd),
    /// Not replayed: walk it (and, with a key, compile its path from the walk).
    Walk(Option<PathKey>),
}

/// What replaying a path does to one device's state.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// Conntrack entry `entry` seen `offset_ns` after the packet entered.
    Refresh {
        device: DeviceId,
        table: Table,
        entry: crate::engine::conntrack::EntryId,
        offset_ns: u64,
    },
    /// One of the device's counters advanced.
    Advance { device: DeviceId, counter: Counter },
}

impl Effect {
    fn of(touch: &Touch) -> Option<Effect> {
        match *touch {
            Touch::Found {
                device,
                table,
                entry,
                offset_ns,
                ..
            } => Some(Effect::Refresh {
                device,
                table,
                entry,
                offset_ns,
            }),
            Touch::Advanced { device, counter } => Some(Effect::Advance { device, counter }),
            Touch::Absent { .. } | Touch::Present { .. } => None,
        }
    }
}

/// Every path's touches and effects, one after another (a path holds its spans):
/// compiling a path allocates nothing once these have grown. Emptied with the
/// paths.
#[derive(Debug, Default)]
struct Steps {
    touches: Vec<Touch>,
    effects: Vec<Effect>,
}

/// Where one path's touches (or effects) lie in [`Steps`].
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// Appends `items` to `all` and returns where they went.
    fn push<T: Clone>(all: &mut Vec<T>, items: impl IntoIterator<Item = T>) -> Span {
        let start = all.len();
        all.extend(items);
        Span {
            start: u32::try_from(start).unwrap_or(u32::MAX),
            len: u32::try_from(all.len() - start).unwrap_or(0),
        }
    }

    fn range(self) -> std::ops::Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// True when a packet of `key` entering as `frame` at `now_ns` may replay `path`
/// (with hops to record, when `recording`).
fn admit(
    path: &mut CompiledPath,
    steps: &mut Steps,
    network: &Network,
    (key, frame): (&PathKey, &[u8]),
    now_ns: u64,
    recording: bool,
) -> bool {
    path.guards.admit(frame, path.hops.is_some())
        && (!recording || path.hops.is_some())
        && path.holds(
            network,
            key,
            &mut steps.touches[path.touches.range()],
            now_ns,
        )
}

/// A frame's path, looked up ahead of its replay: a batch looks up every frame's
/// first, so their memory accesses overlap instead of each waiting on the last
/// (as DPDK and OVS's netdev datapath process a burst).
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    key: Option<PathKey>,
    slot: Option<u32>,
    /// The cache's layout when it was looked up: a path stored since, or the cache
    /// starting over, makes the slot stale.
    layout: u64,
}

impl Lookup {
    /// A frame no path may carry (it walks).
    pub const NONE: Lookup = Lookup {
        key: None,
        slot: None,
        layout: 0,
    };
}

/// Replays of one path whose effects are not applied yet: how many, and when the
/// last one entered.
#[derive(Debug, Clone, Copy)]
struct Replays {
    last_ns: u64,
    count: u64,
}

impl CompiledPath {
    /// Applies a replay to the devices' state (entries refreshed, counters
    /// advanced), as the walk would have.
    fn commit(&mut self, network: &mut Network, steps: &Steps, now_ns: u64) {
        let replays = Replays {
            last_ns: now_ns,
            count: 1,
        };
        network.replay_effects(&steps.effects[self.effects.range()], replays);
        self.alive_until_ns = now_ns.saturating_add(self.shortest_timeout_ns);
    }

    /// Counts a replay at `now_ns` whose effects wait for [`PathCache::settle`];
    /// true when the path had none waiting.
    fn defer(&mut self, now_ns: u64) -> bool {
        self.alive_until_ns = now_ns.saturating_add(self.shortest_timeout_ns);
        match &mut self.pending {
            Some(replays) => {
                replays.last_ns = now_ns;
                replays.count += 1;
                false
            }
            None => {
                self.pending = Some(Replays {
                    last_ns: now_ns,
                    count: 1,
                });
                true
            }
        }
    }

    /// True when the touches hold for a packet of `key` at `now_ns`. While the
    /// network's generation stands where the last full check left it, nothing was
    /// committed, removed or moved to another state, so only time can have broken
    /// a touch: the entries this path refreshes live at least until
    /// `alive_until_ns` (a replay of another path only refreshes them later).
    fn holds(
        &mut self,
        network: &Network,
        key: &PathKey,
        touches: &mut [Touch],
        now_ns: u64,
    ) -> bool {
        let generation = network.generation();
        if self.checked_generation == Some(generation) && now_ns <= self.alive_until_ns {
            return true;
        }
        if !network.touches_hold(touches, key, now_ns) {
            return false;
        }
        self.checked_generation = Some(generation);
        self.shortest_timeout_ns = network.shortest_timeout(touches);
        true
    }
}

/// How a walk ended, as the path cache needs to judge it.
#[derive(Debug, Default, Clone, Copy)]
pub struct WalkSummary {
    /// Packets that arrived at endpoints.
    pub arrivals: u32,
    /// Something besides one packet hop to hop happened: a device sent two packets,
    /// sent one out of an unconnected port, dropped, generated or answered one.
    pub eventful: bool,
}

/// The paths of one forwarding shard. Its owner calls [`PathCache::settle`] before
/// anything reads the devices' state (a walk, a digest): until then the bare-frame
/// lane's replays have left their effects on the paths, not on the devices.
#[derive(Debug)]
pub struct PathCache {
    /// Each path's slot in `paths`, by key (one hash per packet).
    index: FlowCache<PathKey, u32>,
    /// The paths; a recompiled path takes a new slot, the old one unused until the
    /// cache starts over.
    paths: Vec<CompiledPath>,
    /// Counts the paths stored and the cache's starting over.
    layout: u64,
    /// Walks that compiled a path, and walks that could not.
    pub compiled: u64,
    pub refused: u64,
    /// Packets replayed through a path, and packets that walked.
    replayed: u64,
    walked: u64,
    /// Where transforms are verified.
    scratch: Option<Packet>,
    /// The paths' touches and effects.
    steps: Steps,
    /// Paths (slots) replayed on the bare-frame lane since the last settle.
    unsettled: Vec<u32>,
}

impl Default for PathCache {
    fn default() -> Self {
        PathCache::new(CAPACITY)
    }
}

/// What the walk that compiles a path recorded, when hops were recorded.
pub struct RecordedHops<'a> {
    pub hops: &'a [Hop],
    pub started_ns: u64,
}

impl PathCache {
    /// A cache of `capacity` paths; 0 compiles nothing.
    pub fn new(capacity: usize) -> Self {
        PathCache {
            index: FlowCache::new(capacity),
            paths: Vec::new(),
            layout: 0,
            compiled: 0,
            refused: 0,
            replayed: 0,
            walked: 0,
            scratch: None,
            steps: Steps::default(),
            unsettled: Vec::new(),
        }
    }

    /// Paths it holds at most.
    pub fn capacity(&self) -> usize {
        self.index.capacity()
    }

    /// (hits, misses) so far: packets replayed, packets that walked (no path, or
    /// one that no longer held).
    pub fn stats(&self) -> (u64, u64) {
        (self.replayed, self.walked)
    }

    /// Replays the path of a bare frame entering `device` at `port` when there is
    /// one and it still holds, rewriting the frame in place: the key is read from the
    /// frame's bytes and nothing else is parsed. Without a `recorder` the replay's
    /// effects on the devices wait for [`PathCache::settle`]; with one they are
    /// applied at once, and each hop the walk recorded is laid out again for this
    /// packet into the recorder's sink.
    pub fn replay_frame(
        &mut self,
        network: &mut Network,
        ingress: (DeviceId, PortId),
        frame: &mut [u8],
        now_ns: u64,
        recorder: Option<Recorder>,
    ) -> Replay {
        let lookup = self.look_up(ingress, frame);
        self.replay_looked_up(network, lookup, frame, now_ns, recorder)
    }

    /// Looks up the path of a frame entering `device` at `port`, and starts
    /// loading it, for [`PathCache::replay_looked_up`] when the frame's turn comes.
    pub fn look_up(&mut self, (device, port): (DeviceId, PortId), frame: &[u8]) -> Lookup {
        let key = PathKey::read(device, port, frame);
        let slot = key.as_ref().and_then(|key| self.index.get(key));
        if let Some(path) = slot.and_then(|slot| self.paths.get(slot as usize)) {
            // A load nothing waits on: the path is in cache by its turn.
            std::hint::black_box(path.guards.min_ttl);
        }
        Lookup {
            key,
            slot,
            layout: self.layout,
        }
    }

    /// [`PathCache::replay_frame`] for a frame already looked up (`frame` as it
    /// was then), its turn come: every frame before it in the batch has been
    /// replayed or walked.
    pub fn replay_looked_up(
        &mut self,
        network: &mut Network,
        lookup: Lookup,
        frame: &mut [u8],
        now_ns: u64,
        recorder: Option<Recorder>,
    ) -> Replay {
        let Some(key) = lookup.key else {
            return Replay::Walk(None);
        };
        let slot = if lookup.layout == self.layout {
            lookup.slot
        } else {
            self.index.get(&key)
        };
        if recorder.is_some() {
            self.settle(network);
        }
        let recording = recorder.is_some();
        let path = slot.and_then(|slot| self.paths.get_mut(slot as usize));
        let Some(path) = path else {
            self.walked += 1;
            return Replay::Walk(Some(key));
        };
        if !admit(
            path,
            &mut self.steps,
            network,
            (&key, frame),
            now_ns,
            recording,
        ) {
            self.walked += 1;
            return Replay::Walk(Some(key));
        }
        match recorder {
            Some(recorder) => {
                path.commit(network, &self.steps, now_ns);
                if let Some(hops) = &path.hops {
                    record_hops(network, recorder, hops, frame, now_ns);
                }
            }
            None => {
                if let (true, Some(slot)) = (path.defer(now_ns), slot) {
                    self.unsettled.push(slot);
                }
            }
        }
        path.transform.apply_to_frame(path.nat.as_ref(), frame);
        self.replayed += 1;
        Replay::Arrived(path.arrival)
    }

    /// Applies the effects the bare-frame lane's replays left pending: each
    /// entry seen when the path's last packet would have seen it, each counter
    /// advanced once per packet — the state the walks would have left. Call before
    /// anything reads the devices' state: a walk, a digest. (OVS's revalidators
    /// push a datapath flow's statistics to its rules the same way, after the
    /// packets.)
    pub fn settle(&mut self, network: &mut Network) {
        let PathCache {
            paths,
            steps,
            unsettled,
            ..
        } = self;
        for slot in unsettled.drain(..) {
            if let Some(path) = paths.get_mut(slot as usize) {
                if let Some(replays) = path.pending.take() {
                    network.replay_effects(&steps.effects[path.effects.range()], replays);
                }
            }
        }
    }

    /// Compiles the walk of the packet that entered as `entering` and arrived at
    /// `arrival` as `arriving`, with `touches` recorded on the way (and `hops`, when
    /// hops were recorded). True when a path was stored.
    pub fn learn(
        &mut self,
        network: &mut Network,
        key: PathKey,
        entering: &[u8],
        arrived: (&Packet, LinkEnd),
        touches: &[Touch],
        hops: Option<RecordedHops>,
    ) -> bool {
        let scratch = self.scratch.get_or_insert_with(|| arrived.0.clone());
        match compile(network, entering, arrived, touches, hops, scratch) {
            Some(_) if self.capacity() == 0 => false,
            Some(mut path) => {
                let steps = self.steps.touches.len() + touches.len();
                if self.paths.len() >= self.capacity() || steps > STEPS_PER_PATH * CAPACITY {
                    // Full (or recompiled so often its slots or steps piled up):
                    // start over, once what the replays left pending is applied.
                    self.settle(network);
                    self.index.clear();
                    self.paths.clear();
                    self.steps.touches.clear();
                    self.steps.effects.clear();
                }
                path.touches = Span::push(&mut self.steps.touches, touches.iter().copied());
                let effects = touches.iter().filter_map(Effect::of);
                path.effects = Span::push(&mut self.steps.effects, effects);
                let slot = u32::try_from(self.paths.len()).unwrap_or(u32::MAX);
                self.paths.push(path);
                self.index.insert(key, slot);
                self.layout += 1;
                self.compiled += 1;
                true
            }
            None => {
                self.refused += 1;
                false
            }
        }
    }
}

fn compile(
    network: &Network,
    entering: &[u8],
    (arriving, arrival): (&Packet, LinkEnd),
    touches: &[Touch],
    hops: Option<RecordedHops>,
    scratch: &mut Packet,
) -> Option<CompiledPath> {
    let steady = touches.iter().all(|touch| match touch {
        Touch::Found { before, after, .. } => before == after,
        _ => true,
    });
    if !steady {
        return None;
    }
    let hops = match hops {
        Some(recorded) => {
            let entering_packet = Packet::from_frame(entering, 0).ok()?;
            let counters: Vec<(DeviceId, u16)> = touches
                .iter()
                .filter_map(|touch| match touch {
                    Touch::Advanced { device, .. } => {
                        Some((*device, network.identification(*device)?))
                    }
                    _ => None,
                })
                .collect();
            let templates = recorded
                .hops
                .iter()
                .map(|hop| HopTemplate::of(hop, &entering_packet, recorded.started_ns, &counters))
                .collect::<Option<Vec<_>>>()?;
            Some(templates.into_boxed_slice())
        }
        None => None,
    };
    scratch.reset_from(entering, 0).ok()?;
    let guards = Guards::of(scratch);
    let transform = Transform::between(scratch, arriving)?;
    let nat = transform.compiled_nat(&scratch.meta);
    transform.apply(scratch);
    if scratch.frame() != arriving.frame() {
        return None;
    }
    // The bare-frame lane's rewrite must give the same bytes.
    scratch.reset_from(entering, 0).ok()?;
    transform.apply_to_frame(nat.as_ref(), scratch.frame_mut());
    (scratch.frame() == arriving.frame()).then(|| CompiledPath {
        guards,
        transform,
        nat,
        touches: Span::default(),
        effects: Span::default(),
        checked_generation: None,
        alive_until_ns: 0,
        shortest_timeout_ns: u64::MAX,
        pending: None,
        arrival,
        hops,
    })
}

/// Where a replayed packet's hops go, and whose they are.
pub struct Recorder<'a> {
    pub sink: &'a mut dyn HopSink,
    pub flow: FlowTag,
    pub packet_id: u64,
}

/// Records the hops of a replayed packet that entered as `entering` (not yet
/// rewritten), each laid out from its template in the sink's buffer.
fn record_hops(
    network: &Network,
    recorder: Recorder,
    hops: &[HopTemplate],
    entering: &[u8],
    now_ns: u64,
) {
    let identification = |device| network.identification(device).unwrap_or(0);
    for hop in hops {
        let record = HopRecord {
            time_ns: now_ns + hop.offset_ns,
            point: hop.point,
            flow: recorder.flow,
            packet_id: recorder.packet_id,
            action: hop.action,
            detail: &hop.detail,
            rendered_comment: Some(&hop.rendered_comment),
        };
        recorder.sink.record(&record, &mut |buffer| {
            hop.write_frame(entering, identification, buffer);
        });
    }
}

impl Network {
    /// The conntrack table `table` of `device`.
    fn conntrack(&self, device: DeviceId, table: Table) -> Option<&Conntrack> {
        match &self.devices[device] {
            Device::Node(node) => node.conntrack(table),
            Device::CalicoNode(node) => node.conntrack(table),
            Device::Router(router) => router.conntrack(table),
            Device::Switch(switch) => switch.conntrack(table),
            Device::Endpoint(_) => None,
        }
    }

    fn conntrack_mut(&mut self, device: DeviceId, table: Table) -> Option<&mut Conntrack> {
        match &mut self.devices[device] {
            Device::Node(node) => node.conntrack_mut(table),
            Device::CalicoNode(node) => node.conntrack_mut(table),
            Device::Router(router) => router.conntrack_mut(table),
            Device::Switch(switch) => switch.conntrack_mut(table),
            Device::Endpoint(_) => None,
        }
    }

    /// True when a packet of `key` arriving at `now_ns` would find every touch as
    /// the compiling walk did. An absent tuple whose table has committed entries
    /// since is probed, and the count brought up to date when it is still absent.
    fn touches_hold(&self, touches: &mut [Touch], key: &PathKey, now_ns: u64) -> bool {
        touches.iter_mut().all(|touch| match touch {
            Touch::Found {
                device,
                table,
                entry,
                direction,
                original,
                reply,
                after,
                offset_ns,
                ..
            } => self.conntrack(*device, *table).is_some_and(|conntrack| {
                conntrack.would_only_refresh(
                    *entry,
                    (original, reply),
                    *after,
                    *direction,
                    key.tcp_flags(),
                    now_ns + *offset_ns,
                )
            }),
            Touch::Absent {
                device,
                table,
                key,
                insertions,
            } => self.conntrack(*device, *table).is_some_and(|conntrack| {
                let now = conntrack.insertions();
                let still = now == *insertions || !conntrack.knows(key);
                if still {
                    *insertions = now;
                }
                still
            }),
            Touch::Present { device, table, key } => self
                .conntrack(*device, *table)
                .is_some_and(|conntrack| conntrack.knows(key)),
            Touch::Advanced { .. } => true,
        })
    }

    /// The shortest timeout of the entries `touches` found (`u64::MAX`: none).
    fn shortest_timeout(&self, touches: &[Touch]) -> u64 {
        touches
            .iter()
            .filter_map(|touch| match *touch {
                Touch::Found {
                    device,
                    table,
                    entry,
                    ..
                } => self.conntrack(device, table)?.timeout_of(entry),
                _ => None,
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Applies what the walk did to the devices' state: each entry seen when its
    /// device saw the packet, each counter advanced.
    fn replay_effects(&mut self, effects: &[Effect], replays: Replays) {
        let Replays { last_ns, count } = replays;
        // Identifications wrap at 16 bits: `count` packets advance by count mod 2^16.
        let count = u16::try_from(count & 0xffff).unwrap_or(0);
        for effect in effects {
            match *effect {
                Effect::Refresh {
                    device,
                    table,
                    entry,
                    offset_ns,
                } => {
                    // The last packet's sighting is the one a walk leaves.
                    if let Some(conntrack) = self.conntrack_mut(device, table) {
                        conntrack.refresh(entry, last_ns + offset_ns);
                    }
                }
                Effect::Advance { device, counter } => self.advance(device, counter, count),
            }
        }
    }

    /// The last IPv4 identification `device` sent (nodes and routers).
    fn identification(&self, device: DeviceId) -> Option<u16> {
        match &self.devices[device] {
            Device::Node(node) => Some(node.stack.identification.last()),
            Device::CalicoNode(node) => Some(node.stack.identification.last()),
            Device::Router(router) => Some(router.identification.last()),
            Device::Switch(_) | Device::Endpoint(_) => None,
        }
    }

    /// Every conntrack entry (tuples, state, last seen) and identification counter
    /// of every device, as text: what a walk and a replay must leave alike.
    pub fn state_digest(&self) -> String {
        use std::fmt::Write as _;
        let tables = [
            Table::HostStack,
            Table::ServiceZone,
            Table::Policy,
            Table::LoadBalancer,
        ];
        let mut digest = String::new();
        for (device, kind) in self.devices.iter().enumerate() {
            let ports = match kind {
                Device::Switch(switch) => switch.port_count(),
                _ => 0,
            };
            let vnics = (0..ports).map(Table::Vnic);
            for table in tables.into_iter().chain(vnics) {
                let Some(conntrack) = self.conntrack(device, table) else {
                    continue;
                };
                let mut entries: Vec<String> = conntrack
                    .entries()
                    .map(|entry| format!("{entry:?}"))
                    .collect();
                entries.sort();
                let _ = writeln!(digest, "{device} {table:?}: {}", entries.join("; "));
            }
            if let Some(identification) = self.identification(device) {
                let _ = writeln!(digest, "{device} ip id {identification}");
            }
        }
        digest
    }

    /// Advances `device`'s `counter` by `count` packets.
    fn advance(&mut self, device: DeviceId, counter: Counter, count: u16) {
        let Counter::Identification = counter;
        match &mut self.devices[device] {
            Device::Node(node) => {
                node.stack.identification.advance(count);
            }
            Device::CalicoNode(node) => {
                node.stack.identification.advance(count);
            }
            Device::Router(router) => {
                router.identification.advance(count);
            }
            Device::Switch(_) | Device::Endpoint(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{transport_frame, FrameAddresses};
    use crate::wire::{PROTOCOL_ICMP, PROTOCOL_TCP, PROTOCOL_UDP};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// The bare-frame lane's compiled NAT writes the bytes HeaderEditor's
        /// word-by-word updates write: TCP, UDP (its checksum at the edges 0x0000,
        /// none, and 0xffff) and ICMP echoes, either side or both translated.
        #[test]
        fn a_compiled_nat_rewrites_as_the_header_editor_does(
            kind in 0u8..4,
            payload in proptest::collection::vec(any::<u8>(), 0..24),
            ports in (any::<u16>(), any::<u16>()),
            source in proptest::option::of((any::<u32>(), any::<u16>())),
            destination in proptest::option::of((any::<u32>(), any::<u16>())),
            udp_checksum in prop_oneof![Just(None), Just(Some(0u16)), Just(Some(0xffff)), any::<u16>().prop_map(Some)],
            ttl in 2u8..=255,
            ttl_decrement in 0u8..2,
        ) {
            let addresses = FrameAddresses {
                source_mac: Mac([2, 0, 0, 0, 0, 1]),
                destination_mac: Mac([2, 0, 0, 0, 0, 2]),
                source: Ipv4Addr::new(10, 244, 0, 2),
                destination: Ipv4Addr::new(10, 96, 0, 10),
                source_port: ports.0,
                destination_port: ports.1,
            };
            let protocol = if kind == 0 { PROTOCOL_TCP } else { PROTOCOL_UDP };
            let mut frame = transport_frame(protocol, &addresses, &payload);
            let l4 = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
            if kind >= 2 {
                // An echo request (2) or reply (3): type, code, checksum, identifier.
                frame[ETHERNET_HEADER_LEN + 9] = PROTOCOL_ICMP;
                frame[l4] = if kind == 2 { 8 } else { 0 };
                frame[l4 + 1] = 0;
                frame[l4 + 2..l4 + 4].copy_from_slice(&[0, 0]);
                let sum = crate::wire::checksum::checksum(&frame[l4..]);
                frame[l4 + 2..l4 + 4].copy_from_slice(&sum.to_be_bytes());
            } else if let (PROTOCOL_UDP, Some(sum)) = (protocol, udp_checksum) {
                frame[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
            }
            let header_sum = |frame: &mut Vec<u8>| {
                frame[ETHERNET_HEADER_LEN + 8] = ttl;
                frame[ETHERNET_HEADER_LEN + 10..ETHERNET_HEADER_LEN + 12].copy_from_slice(&[0, 0]);
                let sum = crate::wire::checksum::checksum(
                    &frame[ETHERNET_HEADER_LEN..ETHERNET_HEADER_LEN + IPV4_HEADER_LEN],
                );
                frame[ETHERNET_HEADER_LEN + 10..ETHERNET_HEADER_LEN + 12]
                    .copy_from_slice(&sum.to_be_bytes());
            };
            header_sum(&mut frame);
            let transform = Transform {
                source_mac: Mac([2, 0, 0, 0, 0, 3]),
                destination_mac: Mac([2, 0, 0, 0, 0, 4]),
                source: source.map(|(address, port)| (Ipv4Addr::from(address), port)),
                destination: destination.map(|(address, port)| (Ipv4Addr::from(address), port)),
                ttl_decrement,
            };
            let mut edited = Packet::from_frame(&frame, 0).expect("the frame parses");
            let nat = CompiledNat::compile(&edited.meta, transform.source, transform.destination);
            transform.apply(&mut edited);
            let mut compiled = frame.clone();
            transform.apply_to_frame(Some(&nat), &mut compiled);
            prop_assert_eq!(edited.frame(), compiled.as_slice());
        }
    }
}
