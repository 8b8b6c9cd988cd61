//! Connection tracking with NAT bindings, as netfilter does it (reference §g).
//!
//! One table per node (and per stateful device), shared by DNAT and SNAT: an entry
//! holds the original tuple and the reply tuple, and the difference between the two
//! *is* the NAT binding, chosen on the first packet and applied to every later packet
//! in both directions. Lookups are by either tuple. TCP entries follow the kernel's
//! state machine (nf_conntrack_proto_tcp.c: SYN_SENT, SYN_RECV, ESTABLISHED,
//! FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE) with its per-state timeouts; UDP
//! and ICMP have their unreplied / replied ones (nf_conntrack-sysctl.rst). Expiry is
//! on the simulated clock the caller passes in: checked on lookup, and a full table
//! sweeps its expired entries before it refuses a new one.

use crate::engine::hash::flow_hash;
use crate::engine::nat::NatPool;
use crate::packet::FlowKey;
use crate::wire::{PROTOCOL_ICMP, PROTOCOL_TCP, PROTOCOL_UDP};
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// Which tuple of an entry a packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The packet travels the way the connection's first packet did.
    Original,
    /// The packet is a reply.
    Reply,
}

/// Index of an entry in its table.
pub type EntryId = u32;

/// An entry's state: for TCP the kernel's (`/proc/net/nf_conntrack`), for UDP and
/// ICMP whether a reply was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// UDP / ICMP: no reply yet.
    Unreplied,
    /// UDP / ICMP: replied.
    Replied,
    SynSent,
    SynRecv,
    Established,
    FinWait,
    CloseWait,
    LastAck,
    TimeWait,
    Close,
}

/// TCP flags the state machine reads.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

impl State {
    /// The first state of a new entry.
    fn initial(protocol: u8) -> State {
        if protocol == PROTOCOL_TCP {
            State::SynSent
        } else {
            State::Unreplied
        }
    }

    /// The state after a packet in `direction` with TCP `flags` (a simplification of
    /// `tcp_conntracks` that follows every ordinary handshake and close).
    fn next(self, protocol: u8, direction: Direction, flags: u8) -> State {
        if protocol != PROTOCOL_TCP {
            return match direction {
                Direction::Reply => State::Replied,
                Direction::Original => self,
            };
        }
        if flags & RST != 0 {
            return State::Close;
        }
        match (self, direction) {
            // A new SYN on a closed tuple reopens it (tcp_conntracks sIV for TW/CL).
            (State::TimeWait | State::Close, Direction::Original)
                if flags & SYN != 0 && flags & ACK == 0 =>
            {
                State::SynSent
            }
            (State::SynSent, Direction::Reply) if flags & SYN != 0 && flags & ACK != 0 => {
                State::SynRecv
            }
            (State::SynRecv, Direction::Original) if flags & ACK != 0 => State::Established,
            (State::Established, Direction::Original) if flags & FIN != 0 => State::FinWait,
            (State::Established, Direction::Reply) if flags & FIN != 0 => State::CloseWait,
            (State::FinWait, Direction::Reply) if flags & FIN != 0 => State::LastAck,
            (State::CloseWait, Direction::Original) if flags & FIN != 0 => State::LastAck,
            (State::LastAck, _) if flags & ACK != 0 && flags & FIN == 0 => State::TimeWait,
            (state, _) => state,
        }
    }

    /// How the state reads in `/proc/net/nf_conntrack`.
    pub fn name(self) -> &'static str {
        match self {
            State::Unreplied => "UNREPLIED",
            State::Replied => "ASSURED",
            State::SynSent => "SYN_SENT",
            State::SynRecv => "SYN_RECV",
            State::Established => "ESTABLISHED",
            State::FinWait => "FIN_WAIT",
            State::CloseWait => "CLOSE_WAIT",
            State::LastAck => "LAST_ACK",
            State::TimeWait => "TIME_WAIT",
            State::Close => "CLOSE",
        }
    }
}

/// One tracked connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub original: FlowKey,
    /// The tuple replies carry, after NAT.
    pub reply: FlowKey,
    pub state: State,
    pub last_seen_ns: u64,
    /// Who chose the entry's DNAT (`kube-proxy`, `NodePortLocal`, …), for reports.
    pub dnat_by: &'static str,
}

impl Entry {
    /// True when the entry rewrites the source (SNAT/MASQUERADE).
    pub fn has_snat(&self) -> bool {
        self.original.source != self.reply.destination
            || self.original.source_port != self.reply.destination_port
    }

    /// True when the entry rewrites the destination (DNAT).
    pub fn has_dnat(&self) -> bool {
        self.original.destination != self.reply.source
            || self.original.destination_port != self.reply.source_port
    }

    /// The (address, port) a packet in `direction` must carry as its destination
    /// after translation (DNAT on the original direction, un-SNAT on replies).
    pub fn translated_destination(&self, direction: Direction) -> (Ipv4Addr, u16) {
        match direction {
            Direction::Original => (self.reply.source, self.reply.source_port),
            Direction::Reply => (self.original.source, self.original.source_port),
        }
    }

    /// The (address, port) a packet in `direction` must carry as its source after
    /// translation (SNAT on the original direction, un-DNAT on replies).
    pub fn translated_source(&self, direction: Direction) -> (Ipv4Addr, u16) {
        match direction {
            Direction::Original => (self.reply.destination, self.reply.destination_port),
            Direction::Reply => (self.original.destination, self.original.destination_port),
        }
    }
}

/// Why a new entry could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConntrackError {
    /// The table holds `conntrack_max` entries (drop reason `conntrack-full`).
    Full,
    /// No source port gave a unique reply tuple (drop reason `snat-ports-exhausted`).
    PortsExhausted,
    /// The new entry's tuple (either direction) belongs to another entry already: the
    /// kernel's `nf_conntrack_confirm` clash, counted as `insert_failed` and dropped.
    Clash,
}

/// A conntrack table.
#[derive(Debug, Clone)]
pub struct Conntrack {
    entries: Vec<Option<Entry>>,
    free: Vec<EntryId>,
    index: FxHashMap<FlowKey, (EntryId, Direction)>,
    max_entries: usize,
    seed: u64,
    /// When a full table last swept (it sweeps at most once a simulated second).
    last_sweep_ns: Option<u64>,
    /// Entries ever committed: a path compiled while a tuple was absent is still
    /// right while this has not moved (`sim::path`).
    insertions: u64,
}

/// What one packet's lookup found and did to its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    pub id: EntryId,
    pub direction: Direction,
    /// The entry's state before and after this packet.
    pub before: State,
    pub after: State,
}

/// `NF_NAT_MAX_ATTEMPTS`: ports tried from one offset before a new one.
const MAX_NAT_ATTEMPTS: u32 = 128;

/// Kernel default timeouts in nanoseconds (nf_conntrack-sysctl.rst; reference §g):
/// `nf_conntrack_tcp_timeout_*`, `udp_timeout` 30 / `udp_timeout_stream` 120,
/// `icmp_timeout` 30, `generic_timeout` 600.
fn timeout_ns(entry: &Entry) -> u64 {
    const SECOND: u64 = 1_000_000_000;
    let seconds = match (entry.original.protocol, entry.state) {
        (PROTOCOL_TCP, State::SynSent) => 120,
        (PROTOCOL_TCP, State::SynRecv) => 60,
        (PROTOCOL_TCP, State::Established) => 432_000,
        (PROTOCOL_TCP, State::FinWait) => 120,
        (PROTOCOL_TCP, State::CloseWait) => 60,
        (PROTOCOL_TCP, State::LastAck) => 30,
        (PROTOCOL_TCP, State::TimeWait) => 120,
        (PROTOCOL_TCP, State::Close) => 10,
        (PROTOCOL_UDP, State::Replied) => 120,
        (PROTOCOL_UDP, _) => 30,
        (PROTOCOL_ICMP, _) => 30,
        _ => 600,
    };
    seconds * SECOND
}

/// The reply tuple of `original` after SNAT to `address:port`. An ICMP echo's
/// identifier is one field, carried as both "ports", so it is rewritten as a whole.
fn snat_reply_tuple(original: &FlowKey, address: Ipv4Addr, port: u16) -> FlowKey {
    let source_port = if original.protocol == PROTOCOL_ICMP {
        port
    } else {
        original.destination_port
    };
    FlowKey {
        protocol: original.protocol,
        source: original.destination,
        source_port,
        destination: address,
        destination_port: port,
    }
}

impl Conntrack {
    pub fn new(max_entries: usize, seed: u64) -> Self {
        Conntrack {
            entries: Vec::new(),
            free: Vec::new(),
            index: FxHashMap::default(),
            max_entries,
            seed,
            last_sweep_ns: None,
            insertions: 0,
        }
    }

    /// Entries in the table.
    pub fn len(&self) -> usize {
        self.index.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Finds the entry `key` belongs to and refreshes it (a packet without TCP flags:
    /// only a reply moves UDP/ICMP along). Expired entries are removed and not
    /// returned.
    pub fn lookup(&mut self, key: &FlowKey, now_ns: u64) -> Option<(EntryId, Direction)> {
        self.track(key, 0, now_ns)
    }

    /// Like [`Conntrack::lookup`] for a packet with TCP `flags`, moving the entry
    /// through the TCP state machine.
    pub fn track(&mut self, key: &FlowKey, flags: u8, now_ns: u64) -> Option<(EntryId, Direction)> {
        self.track_observed(key, flags, now_ns)
            .map(|tracked| (tracked.id, tracked.direction))
    }

    /// Like [`Conntrack::track`], also saying how the entry's state moved.
    pub fn track_observed(&mut self, key: &FlowKey, flags: u8, now_ns: u64) -> Option<Tracked> {
        let (id, direction) = *self.index.get(key)?;
        let entry = self.entries[id as usize].as_mut()?;
        if now_ns.saturating_sub(entry.last_seen_ns) > timeout_ns(entry) {
            self.remove(id);
            return None;
        }
        entry.last_seen_ns = now_ns;
        let before = entry.state;
        if key.protocol != PROTOCOL_TCP || flags != 0 {
            entry.state = entry.state.next(key.protocol, direction, flags);
        }
        Some(Tracked {
            id,
            direction,
            before,
            after: entry.state,
        })
    }

    /// True when a packet with TCP `flags` arriving at `now_ns` would find entry `id`
    /// alive, still the connection `original` / `reply`, in `state`, and leave it in
    /// that state: what [`Conntrack::track_observed`] would do is then only
    /// [`Conntrack::refresh`]. Changes nothing.
    pub fn would_only_refresh(
        &self,
        id: EntryId,
        connection: (&FlowKey, &FlowKey),
        state: State,
        direction: Direction,
        flags: u8,
        now_ns: u64,
    ) -> bool {
        let Some(entry) = self.entry(id) else {
            return false;
        };
        let protocol = entry.original.protocol;
        let moves = protocol != PROTOCOL_TCP || flags != 0;
        entry.original == *connection.0
            && entry.reply == *connection.1
            && entry.state == state
            && now_ns.saturating_sub(entry.last_seen_ns) <= timeout_ns(entry)
            && (!moves || state.next(protocol, direction, flags) == state)
    }

    /// How long entry `id` lives unseen in its present state (the kernel's
    /// per-protocol, per-state timeout).
    pub fn timeout_of(&self, id: EntryId) -> Option<u64> {
        self.entry(id).map(timeout_ns)
    }

    /// Marks entry `id` as seen at `now_ns` (a packet that changes no state).
    pub fn refresh(&mut self, id: EntryId, now_ns: u64) {
        if let Some(Some(entry)) = self.entries.get_mut(id as usize) {
            entry.last_seen_ns = now_ns;
        }
    }

    /// Entries ever committed to this table.
    pub fn insertions(&self) -> u64 {
        self.insertions
    }

    /// Every live entry, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().flatten()
    }

    /// Removes every entry whose timeout has run out at `now_ns` (the kernel's
    /// garbage collection); returns how many.
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        let expired: Vec<EntryId> = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(id, entry)| {
                let entry = entry.as_ref()?;
                (now_ns.saturating_sub(entry.last_seen_ns) > timeout_ns(entry))
                    .then(|| EntryId::try_from(id).ok())
                    .flatten()
            })
            .collect();
        for &id in &expired {
            self.remove(id);
        }
        expired.len()
    }

    /// True when `key` belongs to a tracked connection (either direction), without
    /// touching it.
    pub fn knows(&self, key: &FlowKey) -> bool {
        self.index.contains_key(key)
    }

    /// Records who chose entry `id`'s DNAT.
    pub fn set_dnat_by(&mut self, id: EntryId, component: &'static str) {
        if let Some(Some(entry)) = self.entries.get_mut(id as usize) {
            entry.dnat_by = component;
        }
    }

    /// The entry with this id.
    pub fn entry(&self, id: EntryId) -> Option<&Entry> {
        self.entries.get(id as usize).and_then(Option::as_ref)
    }

    /// True when some entry already expects replies with tuple `reply`.
    pub fn reply_tuple_in_use(&self, reply: &FlowKey) -> bool {
        self.index.contains_key(reply)
    }

    /// Commits a new entry for `original` whose replies will carry `reply`.
    pub fn insert(
        &mut self,
        original: FlowKey,
        reply: FlowKey,
        now_ns: u64,
    ) -> Result<EntryId, ConntrackError> {
        if self.len() >= self.max_entries {
            let due = self
                .last_sweep_ns
                .is_none_or(|last| now_ns.saturating_sub(last) >= 1_000_000_000);
            if due {
                self.last_sweep_ns = Some(now_ns);
                self.sweep(now_ns);
            }
            if self.len() >= self.max_entries {
                return Err(ConntrackError::Full);
            }
        }
        if self.index.contains_key(&original) || self.index.contains_key(&reply) {
            return Err(ConntrackError::Clash);
        }
        let entry = Entry {
            original,
            reply,
            state: State::initial(original.protocol),
            last_seen_ns: now_ns,
            dnat_by: "netfilter",
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                EntryId::try_from(self.entries.len() - 1).map_err(|_| ConntrackError::Full)?
            }
        };
        self.index.insert(original, (id, Direction::Original));
        self.index.insert(reply, (id, Direction::Reply));
        self.insertions += 1;
        Ok(id)
    }

    /// Commits an entry with no translation.
    pub fn insert_untranslated(
        &mut self,
        original: FlowKey,
        now_ns: u64,
    ) -> Result<EntryId, ConntrackError> {
        self.insert(original, original.reversed(), now_ns)
    }

    /// Commits an entry that SNATs `original` to `address`, choosing the port the way
    /// the kernel's `nf_nat_l4proto_unique_tuple` does (reference §g): keep the original
    /// port when the reply tuple is unique; otherwise search the port's class
    /// (1-511, 600-1023, 1024-65535) from a hash-derived offset. Uniqueness is over the
    /// whole reply tuple, so one port serves many destinations.
    pub fn insert_snat(
        &mut self,
        original: FlowKey,
        address: Ipv4Addr,
        now_ns: u64,
    ) -> Result<EntryId, ConntrackError> {
        self.insert_snat_pool(original, &NatPool::address(address), now_ns)
    }

    /// Commits an entry that SNATs `original` into `pool`: the address as
    /// `find_best_ips_proto` picks it, the port as [`Conntrack::insert_snat`] does
    /// (within the pool's port range when it has one; with `random_fully` the
    /// original port is not tried first).
    pub fn insert_snat_pool(
        &mut self,
        original: FlowKey,
        pool: &NatPool,
        now_ns: u64,
    ) -> Result<EntryId, ConntrackError> {
        let reply = self.snat_reply(&original, pool)?;
        self.insert(original, reply, now_ns)
    }

    /// Commits one entry that DNATs `original` to `destination` (kube-proxy's
    /// KUBE-SEP DNAT, chosen in PREROUTING) and, when `snat` is given, also SNATs it
    /// into that pool (KUBE-MARK-MASQ → MASQUERADE in POSTROUTING): both bindings in
    /// the one entry, the port chosen over the whole reply tuple.
    pub fn insert_nat(
        &mut self,
        original: FlowKey,
        destination: (Ipv4Addr, u16),
        snat: Option<&NatPool>,
        now_ns: u64,
    ) -> Result<EntryId, ConntrackError> {
        let translated = FlowKey {
            destination: destination.0,
            destination_port: destination.1,
            ..original
        };
        let reply = match snat {
            Some(pool) => self.snat_reply(&translated, pool)?,
            None => translated.reversed(),
        };
        self.insert(original, reply, now_ns)
    }

    /// The reply tuple of `original` SNATed into `pool`.
    fn snat_reply(&self, original: &FlowKey, pool: &NatPool) -> Result<FlowKey, ConntrackError> {
        let address = pool.address_for(original, self.seed);
        let port = self.choose_snat_port(original, address, pool)?;
        Ok(snat_reply_tuple(original, address, port))
    }

    fn choose_snat_port(
        &self,
        original: &FlowKey,
        address: Ipv4Addr,
        pool: &NatPool,
    ) -> Result<u16, ConntrackError> {
        let candidate = |port: u16| snat_reply_tuple(original, address, port);
        let (low, high): (u32, u32) = match (pool.ports, original.source_port) {
            (Some((low, high)), _) => (u32::from(low), u32::from(high)),
            (None, _) if original.protocol == PROTOCOL_ICMP => (0, 65535),
            (None, 0..=511) => (1, 511),
            (None, 512..=1023) => (600, 1023),
            (None, _) => (1024, 65535),
        };
        let in_range = (low..=high).contains(&u32::from(original.source_port));
        if !pool.random_fully
            && in_range
            && !self.reply_tuple_in_use(&candidate(original.source_port))
        {
            return Ok(original.source_port);
        }
        // nf_nat_l4proto_unique_tuple: at most 128 tries from a random offset; then a
        // new random offset and half the window, down to 16 (softirq must not scan a
        // whole full range) — so a nearly full class can fail before its last port
        // is taken, as on a real node. The offsets are seeded hashes: deterministic.
        let span = high.saturating_sub(low) + 1;
        let mut attempts = span.min(MAX_NAT_ATTEMPTS);
        let mut round = 0u64;
        loop {
            let salt = self.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let offset = flow_hash(original, salt) % span;
            for step in 0..attempts {
                let port = u16::try_from(low + (offset + step) % span).unwrap_or(0);
                if !self.reply_tuple_in_use(&candidate(port)) {
                    return Ok(port);
                }
            }
            if attempts >= span || attempts < 16 {
                break;
            }
            attempts /= 2;
            round += 1;
        }
        Err(ConntrackError::PortsExhausted)
    }

    fn remove(&mut self, id: EntryId) {
        if let Some(entry) = self.entries[id as usize].take() {
            self.index.remove(&entry.original);
            self.index.remove(&entry.reply);
            self.free.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(source: [u8; 4], source_port: u16) -> FlowKey {
        FlowKey {
            protocol: PROTOCOL_TCP,
            source: Ipv4Addr::from(source),
            destination: Ipv4Addr::new(192, 168, 50, 10),
            source_port,
            destination_port: 443,
        }
    }

    #[test]
    fn snat_keeps_the_port_then_remaps_on_clash() {
        let mut table = Conntrack::new(16, 1);
        let node = Ipv4Addr::new(10, 20, 0, 11);
        let first = table
            .insert_snat(key([172, 20, 1, 10], 40000), node, 0)
            .unwrap();
        assert_eq!(table.entry(first).unwrap().reply.destination_port, 40000);
        // A second pod using the same source port towards the same server clashes.
        let second = table
            .insert_snat(key([172, 20, 1, 11], 40000), node, 0)
            .unwrap();
        let port = table.entry(second).unwrap().reply.destination_port;
        assert_ne!(port, 40000);
        assert!(port >= 1024);
        // The reply to the second finds the entry in the reply direction.
        let reply = table.entry(second).unwrap().reply;
        assert_eq!(table.lookup(&reply, 1), Some((second, Direction::Reply)));
        assert_eq!(
            table
                .entry(second)
                .unwrap()
                .translated_destination(Direction::Reply),
            (Ipv4Addr::new(172, 20, 1, 11), 40000)
        );
    }

    #[test]
    fn full_table_refuses() {
        let mut table = Conntrack::new(1, 1);
        table.insert_untranslated(key([1, 1, 1, 1], 1), 0).unwrap();
        assert_eq!(
            table.insert_untranslated(key([1, 1, 1, 2], 1), 0),
            Err(ConntrackError::Full)
        );
    }

    #[test]
    fn tcp_walks_the_kernel_states_and_a_full_table_sweeps_what_expired() {
        let mut table = Conntrack::new(1, 1);
        let original = key([1, 1, 1, 1], 40000);
        let id = table.insert_untranslated(original, 0).unwrap();
        let reply = original.reversed();
        let state = |table: &Conntrack| table.entry(id).unwrap().state;
        assert_eq!(state(&table), State::SynSent);
        table.track(&reply, SYN | ACK, 1).unwrap();
        assert_eq!(state(&table), State::SynRecv);
        table.track(&original, ACK, 2).unwrap();
        assert_eq!(state(&table), State::Established);
        table.track(&original, FIN | ACK, 3).unwrap();
        assert_eq!(state(&table), State::FinWait);
        table.track(&reply, FIN | ACK, 4).unwrap();
        assert_eq!(state(&table), State::LastAck);
        table.track(&original, ACK, 5).unwrap();
        assert_eq!(state(&table), State::TimeWait);
        // Full: a new connection is refused until TIME_WAIT's 120 s have passed.
        let other = key([1, 1, 1, 2], 40000);
        assert_eq!(
            table.insert_untranslated(other, 60_000_000_000),
            Err(ConntrackError::Full)
        );
        assert!(table.insert_untranslated(other, 126_000_000_000).is_ok());
    }

    #[test]
    fn a_replay_holds_only_while_the_packet_would_change_nothing_but_the_timer() {
        const SECOND: u64 = 1_000_000_000;
        let mut table = Conntrack::new(8, 1);
        let original = key([1, 1, 1, 1], 40000);
        let id = table.insert_untranslated(original, 0).unwrap();
        let reply = original.reversed();
        table.track(&reply, SYN | ACK, 1).unwrap();
        let tracked = table.track_observed(&original, ACK, 2).unwrap();
        assert_eq!(
            (tracked.id, tracked.direction, tracked.before, tracked.after),
            (id, Direction::Original, State::SynRecv, State::Established)
        );
        let connection = (&original, &reply);
        let holds = |table: &Conntrack, state, flags, now| {
            table.would_only_refresh(id, connection, state, Direction::Original, flags, now)
        };
        // An ACK in ESTABLISHED moves nothing; a FIN would (FIN_WAIT).
        assert!(holds(&table, State::Established, ACK, 3 * SECOND));
        assert!(!holds(&table, State::Established, FIN | ACK, 3 * SECOND));
        // Not in the state the path was compiled in, or another connection.
        assert!(!holds(&table, State::SynRecv, ACK, 3 * SECOND));
        let other = key([1, 1, 1, 2], 40000);
        assert!(!table.would_only_refresh(
            id,
            (&other, &reply),
            State::Established,
            Direction::Original,
            ACK,
            3 * SECOND
        ));
        // Refreshing keeps it alive past ESTABLISHED's 432,000 s from the last packet
        // only; after that the entry is gone for a replay as for a lookup.
        table.refresh(id, 100 * SECOND);
        assert_eq!(table.entry(id).unwrap().last_seen_ns, 100 * SECOND);
        assert!(holds(&table, State::Established, ACK, 432_100 * SECOND));
        assert!(!holds(&table, State::Established, ACK, 432_101 * SECOND));
        // Every commit counts, so a path that saw a tuple absent can tell.
        assert_eq!(table.insertions(), 1);
        table.insert_untranslated(other, 5).unwrap();
        assert_eq!(table.insertions(), 2);
    }

    #[test]
    fn an_entry_whose_reply_tuple_is_taken_is_refused() {
        let mut table = Conntrack::new(8, 1);
        let direct = key([1, 1, 1, 1], 40000);
        table.insert_untranslated(direct, 0).unwrap();
        // The same client port DNATed to the same server: the reply tuples clash.
        let via_vip = FlowKey {
            destination: Ipv4Addr::new(10, 96, 0, 10),
            destination_port: 80,
            ..direct
        };
        assert_eq!(
            table.insert_nat(
                via_vip,
                (direct.destination, direct.destination_port),
                None,
                0
            ),
            Err(ConntrackError::Clash)
        );
    }

    #[test]
    fn a_masquerade_runs_out_of_ports_near_the_class_limit_but_not_for_another_port() {
        // Pods on one node, all to 192.168.50.10:443: one node address gives the
        // 1024-65535 class, 64,512 ports, per destination tuple.
        let mut table = Conntrack::new(200_000, 3);
        let node = Ipv4Addr::new(10, 20, 0, 11);
        let mut established = 0u32;
        let mut first_failure = None;
        for index in 0..70_000u32 {
            let pod = [172, 20, 1, 10 + u8::try_from(index % 8).unwrap()];
            let original = key(pod, 20_000 + u16::try_from(index / 8).unwrap());
            match table.insert_snat(original, node, 0) {
                Ok(_) => established += 1,
                Err(error) => {
                    assert_eq!(error, ConntrackError::PortsExhausted);
                    first_failure.get_or_insert(index);
                }
            }
        }
        assert!(established <= 64_512);
        assert!(established > 60_000, "{established}");
        assert!(first_failure.unwrap() > 50_000, "{first_failure:?}");
        // Another destination port is another set of reply tuples: ports again.
        let other = FlowKey {
            destination_port: 8443,
            ..key([172, 20, 1, 10], 20_000)
        };
        assert!(table.insert_snat(other, node, 0).is_ok());
    }

    #[test]
    fn random_fully_does_not_keep_the_original_port() {
        let mut table = Conntrack::new(16, 5);
        let node = Ipv4Addr::new(10, 20, 0, 11);
        let kept = table
            .insert_snat(key([172, 20, 1, 10], 40000), node, 0)
            .unwrap();
        assert_eq!(table.entry(kept).unwrap().reply.destination_port, 40000);
        let random = table
            .insert_snat_pool(
                key([172, 20, 1, 11], 40001),
                &NatPool::address(node).with_random_fully(true),
                0,
            )
            .unwrap();
        let port = table.entry(random).unwrap().reply.destination_port;
        assert_ne!(port, 40001);
        assert!(port >= 1024);
    }

    #[test]
    fn entries_expire() {
        let mut table = Conntrack::new(4, 1);
        let original = FlowKey {
            protocol: PROTOCOL_UDP,
            ..key([1, 1, 1, 1], 5000)
        };
        table.insert_untranslated(original, 0).unwrap();
        assert!(table.lookup(&original, 29_000_000_000).is_some());
        assert!(table.lookup(&original, 60_000_000_000).is_none());
        assert!(table.is_empty());
    }

    proptest! {
        /// NAT then reverse NAT restores the tuple.
        #[test]
        fn snat_round_trip(source in any::<u32>(), port in 1u16.., others in 0usize..8) {
            let mut table = Conntrack::new(64, 9);
            let node = Ipv4Addr::new(10, 20, 0, 11);
            for other in 0..others {
                table.insert_snat(key([172, 20, 9, u8::try_from(other).unwrap()], port), node, 0).unwrap();
            }
            let original = key(Ipv4Addr::from(source).octets(), port);
            let id = table.insert_snat(original, node, 0).unwrap();
            let entry = *table.entry(id).unwrap();
            let (translated_source, translated_port) = entry.translated_source(Direction::Original);
            prop_assert_eq!(translated_source, node);
            let reply = FlowKey { source: original.destination, source_port: original.destination_port, destination: translated_source, destination_port: translated_port, protocol: original.protocol };
            let (found, direction) = table.lookup(&reply, 1).unwrap();
            prop_assert_eq!(found, id);
            prop_assert_eq!(table.entry(found).unwrap().translated_destination(direction), (original.source, original.source_port));
        }
    }
}
