//! Longest-prefix match over IPv4 prefixes: the one table type every router FIB, node
//! route table and "which node owns this pod CIDR" lookup uses.
//!
//! A multibit trie with a stride of 8 bits and controlled prefix expansion (Srinivasan
//! and Varghese, "Fast address lookups using controlled prefix expansion", 1999; the
//! shape of DPDK's DIR-24-8 with four 8-bit levels instead of a 16 M-entry first
//! level, so a table of a few routes stays a few kilobytes). A prefix of length
//! `l` lives in the node of its `ceil(l / 8)`-th octet, expanded over the
//! `2^(8·ceil(l/8) − l)` slots it covers, where it replaces only shorter prefixes. A
//! lookup reads at most four slots, one per octet, keeping the last match: a deeper
//! match is always the longer prefix. Tables only grow (routes are computed before
//! traffic), so there is no deletion.

use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// A slot or child that holds nothing.
const NONE: u32 = u32::MAX;

/// One trie level: 256 slots, one per value of its octet.
#[derive(Debug, Clone)]
struct Node {
    /// The entry of the longest prefix ending at this level that covers the slot.
    entry: [u32; 256],
    /// That prefix's length (0: none; /0 is kept apart).
    length: [u8; 256],
    /// The node of the next octet, for longer prefixes.
    child: [u32; 256],
}

impl Node {
    fn empty() -> Node {
        Node {
            entry: [NONE; 256],
            length: [0; 256],
            child: [NONE; 256],
        }
    }
}

/// A longest-prefix-match table from IPv4 prefixes to `T`.
#[derive(Debug, Clone)]
pub struct LpmTable<T> {
    /// Every prefix with its value; the trie's slots index this.
    entries: Vec<(Ipv4Net, T)>,
    /// (network, length) to the entry, for exact lookups and replacement.
    exact: FxHashMap<(u32, u8), u32>,
    /// Node 0 is the root (the first octet).
    nodes: Vec<Node>,
    /// The entry of 0.0.0.0/0, which covers every slot of the root.
    default_route: u32,
}

impl<T> Default for LpmTable<T> {
    fn default() -> Self {
        LpmTable {
            entries: Vec::new(),
            exact: FxHashMap::default(),
            nodes: vec![Node::empty()],
            default_route: NONE,
        }
    }
}

fn mask(length: u8) -> u32 {
    if length == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(length))
    }
}

/// The octet of `address` that trie level `level` (0-3) indexes.
fn octet(address: u32, level: usize) -> usize {
    ((address >> (24 - 8 * level)) & 0xff) as usize
}

impl<T> LpmTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) the value for `prefix`; returns the value it replaced.
    pub fn insert(&mut self, prefix: Ipv4Net, value: T) -> Option<T> {
        let length = prefix.prefix_len();
        let network = u32::from(prefix.network()) & mask(length);
        if let Some(&index) = self.exact.get(&(network, length)) {
            let slot = &mut self.entries[index as usize].1;
            return Some(std::mem::replace(slot, value));
        }
        let index = u32::try_from(self.entries.len()).expect("fewer than 4 G routes");
        let net = Ipv4Net::new(Ipv4Addr::from(network), length).unwrap_or_default();
        self.entries.push((net, value));
        self.exact.insert((network, length), index);
        if length == 0 {
            self.default_route = index;
        } else {
            self.expand(network, length, index);
        }
        None
    }

    /// Files entry `index` (`network`/`length`, length ≥ 1) into the trie.
    fn expand(&mut self, network: u32, length: u8, index: u32) {
        let mut node = 0usize;
        for level in 0..4 {
            let slot = octet(network, level);
            let level_end = 8 * (u8::try_from(level).unwrap_or(3) + 1);
            if length <= level_end {
                let span = 1usize << (level_end - length);
                let node = &mut self.nodes[node];
                for slot in slot..slot + span {
                    if node.length[slot] <= length {
                        node.entry[slot] = index;
                        node.length[slot] = length;
                    }
                }
                return;
            }
            node = match self.nodes[node].child[slot] {
                NONE => {
                    let child = self.nodes.len();
                    self.nodes.push(Node::empty());
                    self.nodes[node].child[slot] = u32::try_from(child).unwrap_or(NONE);
                    child
                }
                child => child as usize,
            };
        }
    }

    /// The value stored for exactly `prefix`.
    pub fn get_exact(&self, prefix: Ipv4Net) -> Option<&T> {
        let length = prefix.prefix_len();
        let network = u32::from(prefix.network()) & mask(length);
        let index = *self.exact.get(&(network, length))?;
        Some(&self.entries[index as usize].1)
    }

    /// The longest prefix containing `address`, with its value.
    pub fn lookup(&self, address: Ipv4Addr) -> Option<(Ipv4Net, &T)> {
        let address = u32::from(address);
        let mut best = self.default_route;
        let mut node = 0usize;
        for level in 0..4 {
            let slot = octet(address, level);
            let here = &self.nodes[node];
            if here.entry[slot] != NONE {
                best = here.entry[slot];
            }
            match here.child[slot] {
                NONE => break,
                child => node = child as usize,
            }
        }
        let (prefix, value) = self.entries.get(best as usize)?;
        Some((*prefix, value))
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, sorted by prefix (longest first for equal networks), for output.
    pub fn entries(&self) -> Vec<(Ipv4Net, &T)> {
        let mut entries: Vec<(Ipv4Net, &T)> = self
            .entries
            .iter()
            .map(|(prefix, value)| (*prefix, value))
            .collect();
        entries.sort_by(|a, b| {
            a.0.network()
                .cmp(&b.0.network())
                .then(b.0.prefix_len().cmp(&a.0.prefix_len()))
        });
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn longest_prefix_wins() {
        let mut table = LpmTable::new();
        table.insert("0.0.0.0/0".parse().unwrap(), "default");
        table.insert("10.20.0.0/16".parse().unwrap(), "wide");
        table.insert("10.20.1.0/24".parse().unwrap(), "narrow");
        assert_eq!(
            table.lookup("10.20.1.7".parse().unwrap()).map(|(_, v)| *v),
            Some("narrow")
        );
        assert_eq!(
            table.lookup("10.20.2.7".parse().unwrap()).map(|(_, v)| *v),
            Some("wide")
        );
        let (prefix, value) = table.lookup("8.8.8.8".parse().unwrap()).unwrap();
        assert_eq!(
            (prefix.to_string().as_str(), *value),
            ("0.0.0.0/0", "default")
        );
        assert_eq!(table.len(), 3);
    }

    /// Prefixes that nest and overlap: a few base addresses with random low bits, every
    /// length, inserted in random order (shorter after longer too), some twice.
    fn nested_prefixes() -> impl Strategy<Value = Vec<(u32, u8)>> {
        let base = prop_oneof![
            Just(0x0a14_0000u32),
            Just(0xac14_0100),
            Just(0xc0a8_3200),
            any::<u32>()
        ];
        proptest::collection::vec((base, any::<u16>(), 0u8..=32), 0..60).prop_map(|items| {
            items
                .into_iter()
                .map(|(base, low, length)| (base ^ u32::from(low), length))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn table_equals_linear_scan(prefixes in nested_prefixes(),
                                    probes in proptest::collection::vec(any::<u32>(), 1..40)) {
            let mut table = LpmTable::new();
            let mut entries: Vec<(Ipv4Net, u32)> = Vec::new();
            for (index, (address, length)) in prefixes.into_iter().enumerate() {
                let net = Ipv4Net::new(Ipv4Addr::from(address), length).unwrap().trunc();
                let index = u32::try_from(index).unwrap();
                let replaced = table.insert(net, index);
                let existing = entries.iter().position(|(existing, _)| *existing == net);
                prop_assert_eq!(replaced, existing.map(|at| entries[at].1));
                entries.retain(|(existing, _)| *existing != net);
                entries.push((net, index));
                prop_assert_eq!(table.get_exact(net), Some(&index));
            }
            prop_assert_eq!(table.len(), entries.len());
            // Probe at random, and at and around every stored prefix's edges.
            let edges = entries.iter().flat_map(|(net, _)| {
                let (first, last) = (u32::from(net.network()), u32::from(net.broadcast()));
                [first, last, first.wrapping_sub(1), last.wrapping_add(1)]
            });
            for address in probes.into_iter().chain(edges).map(Ipv4Addr::from) {
                let found = table.lookup(address);
                let expected = entries
                    .iter()
                    .filter(|(net, _)| net.contains(&address))
                    .max_by_key(|(net, _)| net.prefix_len());
                prop_assert_eq!(found.map(|(net, v)| (net, *v)), expected.copied());
            }
        }
    }

    #[test]
    fn a_shorter_prefix_inserted_later_keeps_the_longer_ones() {
        let mut table = LpmTable::new();
        table.insert("10.20.1.128/25".parse().unwrap(), "half");
        table.insert("10.20.0.0/23".parse().unwrap(), "pair");
        table.insert("10.20.1.7/32".parse().unwrap(), "host");
        let value = |address: &str| table.lookup(address.parse().unwrap()).map(|(_, v)| *v);
        assert_eq!(value("10.20.1.200"), Some("half"));
        assert_eq!(value("10.20.1.7"), Some("host"));
        assert_eq!(value("10.20.1.8"), Some("pair"));
        assert_eq!(value("10.20.0.1"), Some("pair"));
        assert_eq!(value("10.20.2.1"), None);
    }
}
