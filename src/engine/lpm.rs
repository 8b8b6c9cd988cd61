//! Longest-prefix match over IPv4 prefixes: the one table type every router FIB, node
//! route table and "which node owns this pod CIDR" lookup uses.
//!
//! One hash map per prefix length plus a bitmap of the lengths in use; a lookup probes
//! only used lengths, longest first (at most 33 probes, typically 2–4).

use ipnet::Ipv4Net;
use rustc_hash::FxHashMap;
use std::net::Ipv4Addr;

/// A longest-prefix-match table from IPv4 prefixes to `T`.
#[derive(Debug, Clone)]
pub struct LpmTable<T> {
    by_length: Vec<FxHashMap<u32, T>>,
    /// Bit `n` set when some prefix of length `n` is present.
    lengths_in_use: u64,
    count: usize,
}

impl<T> Default for LpmTable<T> {
    fn default() -> Self {
        LpmTable {
            by_length: (0..=32).map(|_| FxHashMap::default()).collect(),
            lengths_in_use: 0,
            count: 0,
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

impl<T> LpmTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (or replaces) the value for `prefix`; returns the value it replaced.
    pub fn insert(&mut self, prefix: Ipv4Net, value: T) -> Option<T> {
        let length = prefix.prefix_len();
        let key = u32::from(prefix.network()) & mask(length);
        self.lengths_in_use |= 1 << length;
        let previous = self.by_length[usize::from(length)].insert(key, value);
        if previous.is_none() {
            self.count += 1;
        }
        previous
    }

    /// The value stored for exactly `prefix`.
    pub fn get_exact(&self, prefix: Ipv4Net) -> Option<&T> {
        let length = prefix.prefix_len();
        self.by_length[usize::from(length)].get(&(u32::from(prefix.network()) & mask(length)))
    }

    /// The longest prefix containing `address`, with its value.
    pub fn lookup(&self, address: Ipv4Addr) -> Option<(Ipv4Net, &T)> {
        let address = u32::from(address);
        let mut lengths = self.lengths_in_use;
        while lengths != 0 {
            let length = 63 - lengths.leading_zeros();
            lengths &= !(1u64 << length);
            let length = u8::try_from(length).unwrap_or(0);
            let key = address & mask(length);
            if let Some(value) = self.by_length[usize::from(length)].get(&key) {
                let prefix = Ipv4Net::new(Ipv4Addr::from(key), length).ok()?;
                return Some((prefix, value));
            }
        }
        None
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every entry, sorted by prefix (longest first for equal networks), for output.
    pub fn entries(&self) -> Vec<(Ipv4Net, &T)> {
        let mut entries: Vec<(Ipv4Net, &T)> = self
            .by_length
            .iter()
            .enumerate()
            .flat_map(|(length, map)| {
                map.iter().filter_map(move |(key, value)| {
                    Ipv4Net::new(Ipv4Addr::from(*key), u8::try_from(length).ok()?)
                        .ok()
                        .map(|net| (net, value))
                })
            })
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

    fn linear(entries: &[(Ipv4Net, u32)], address: Ipv4Addr) -> Option<&u32> {
        entries
            .iter()
            .filter(|(net, _)| net.contains(&address))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, value)| value)
    }

    proptest! {
        #[test]
        fn table_equals_linear_scan(prefixes in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..40),
                                    probes in proptest::collection::vec(any::<u32>(), 1..40)) {
            let mut table = LpmTable::new();
            let mut entries: Vec<(Ipv4Net, u32)> = Vec::new();
            for (index, (address, length)) in prefixes.into_iter().enumerate() {
                let net = Ipv4Net::new(Ipv4Addr::from(address), length).unwrap().trunc();
                let index = u32::try_from(index).unwrap();
                table.insert(net, index);
                entries.retain(|(existing, _)| *existing != net);
                entries.push((net, index));
            }
            for probe in probes {
                // Probe near stored prefixes too, not only at random.
                for address in [Ipv4Addr::from(probe)].into_iter().chain(entries.first().map(|(n, _)| n.network())) {
                    prop_assert_eq!(table.lookup(address).map(|(_, v)| v), linear(&entries, address));
                }
            }
        }
    }
}
