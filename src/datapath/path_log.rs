//! What a packet's walk read and changed of the devices' own state, for the path
//! cache (`sim::path`): every conntrack lookup (the entry found and how its state
//! moved, or the tuple's absence), and every per-packet counter a device advanced.
//! A later packet of the same flow may replay the walk as one transform only while
//! each of these still holds; replaying then applies the same updates (conntrack
//! timers, counters) the walk would have. A device reports through [`Ctx`] helpers,
//! which cost nothing when no path is being recorded.

use super::{Ctx, PortId};
use crate::engine::conntrack::{Conntrack, Direction, EntryId, State};
use crate::packet::FlowKey;

/// Which of a device's conntrack tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// A node's netfilter table (host stack).
    HostStack,
    /// AntreaProxy's OVS conntrack zone.
    ServiceZone,
    /// The connections a node's NetworkPolicy allowed.
    Policy,
    /// A router's load balancer / SNAT connection table.
    LoadBalancer,
    /// The NSX DFW at a segment port's vNIC.
    Vnic(PortId),
}

/// A per-packet counter a device advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// The host stack's IPv4 identification (every tunnel encapsulation takes one).
    Identification,
}

/// One thing a walk depended on or changed, at device `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// A lookup found entry `entry` (tuples `original`, `reply`) in `direction`, in
    /// state `before`, and left it in `after`.
    Found {
        device: usize,
        table: Table,
        entry: EntryId,
        direction: Direction,
        original: FlowKey,
        reply: FlowKey,
        before: State,
        after: State,
        /// Simulated time since the walk began.
        offset_ns: u64,
    },
    /// A lookup of `key` found nothing; the table had committed `insertions`
    /// entries by then.
    Absent {
        device: usize,
        table: Table,
        key: FlowKey,
        insertions: u64,
    },
    /// A check that `key` is tracked (without touching it) said yes.
    Present {
        device: usize,
        table: Table,
        key: FlowKey,
    },
    /// The device advanced a counter once.
    Advanced { device: usize, counter: Counter },
}

/// The touches of the walk being recorded.
#[derive(Debug, Default)]
pub struct PathLog {
    /// Recording (a packet that may compile a path is walking).
    pub active: bool,
    /// The device processing now (set by `Network::process`).
    pub device: usize,
    /// When the walk began.
    pub started_ns: u64,
    pub touches: Vec<Touch>,
    /// A device's flow cache missed: the walk's hop comments describe a first look
    /// (the slow path) that later packets will not repeat.
    pub flow_cache_missed: bool,
}

impl PathLog {
    /// Starts recording a walk that begins at `now_ns`.
    pub fn begin(&mut self, now_ns: u64) {
        self.active = true;
        self.started_ns = now_ns;
        self.touches.clear();
        self.flow_cache_missed = false;
    }

    /// Stops recording; the touches stay for the caller to read.
    pub fn end(&mut self) {
        self.active = false;
    }
}

/// A device's IPv4 identification counter — the next value for each packet it
/// originates or encapsulates (one counter per host stack or router) — taken
/// through the path log, so a path cache replay can advance it as the walk would.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IdentificationCounter {
    last: u16,
}

impl IdentificationCounter {
    /// The next identification, recorded for the path cache.
    pub fn next(&mut self, ctx: &mut Ctx) -> u16 {
        ctx.advanced(Counter::Identification);
        self.advance(1)
    }

    /// The last identification taken.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// Advances by `count` packets without recording (a path cache replay);
    /// returns the last identification taken.
    pub fn advance(&mut self, count: u16) -> u16 {
        self.last = self.last.wrapping_add(count);
        self.last
    }
}

impl Ctx<'_> {
    /// Looks `key` up in `conntrack` (`Conntrack::track`) and records what it found
    /// for the path being recorded.
    pub fn track(
        &mut self,
        table: Table,
        conntrack: &mut Conntrack,
        key: &FlowKey,
        flags: u8,
    ) -> Option<(EntryId, Direction)> {
        let insertions = conntrack.insertions();
        let tracked = conntrack.track_observed(key, flags, self.now_ns);
        let log = &mut self.journal.path;
        if log.active {
            let device = log.device;
            let touch = match tracked.and_then(|t| Some((t, *conntrack.entry(t.id)?))) {
                Some((tracked, entry)) => Touch::Found {
                    device,
                    table,
                    entry: tracked.id,
                    direction: tracked.direction,
                    original: entry.original,
                    reply: entry.reply,
                    before: tracked.before,
                    after: tracked.after,
                    offset_ns: self.now_ns.saturating_sub(log.started_ns),
                },
                None => Touch::Absent {
                    device,
                    table,
                    key: *key,
                    insertions,
                },
            };
            log.touches.push(touch);
        }
        tracked.map(|tracked| (tracked.id, tracked.direction))
    }

    /// A lookup skipped because `conntrack` is empty: recorded as the absence it is.
    pub fn track_empty(&mut self, table: Table, conntrack: &Conntrack, key: &FlowKey) {
        let log = &mut self.journal.path;
        if log.active {
            log.touches.push(Touch::Absent {
                device: log.device,
                table,
                key: *key,
                insertions: conntrack.insertions(),
            });
        }
    }

    /// Whether `conntrack` tracks `key` (`Conntrack::knows`), recorded.
    pub fn knows(&mut self, table: Table, conntrack: &Conntrack, key: &FlowKey) -> bool {
        let known = conntrack.knows(key);
        let log = &mut self.journal.path;
        if log.active {
            let device = log.device;
            log.touches.push(if known {
                Touch::Present {
                    device,
                    table,
                    key: *key,
                }
            } else {
                Touch::Absent {
                    device,
                    table,
                    key: *key,
                    insertions: conntrack.insertions(),
                }
            });
        }
        known
    }

    /// Records that a device's flow cache missed for this packet.
    pub fn flow_cache_missed(&mut self) {
        self.journal.path.flow_cache_missed = true;
    }

    /// Records that the device advanced `counter` once for this packet.
    pub fn advanced(&mut self, counter: Counter) {
        let log = &mut self.journal.path;
        if log.active {
            log.touches.push(Touch::Advanced {
                device: log.device,
                counter,
            });
        }
    }
}
