//! One rule table for every rule-based decision a device makes (opte's `Layer` /
//! `Rule` / `Predicate`): ordered rules, each a conjunction of predicates over a
//! packet's flow key and metadata (interfaces, mark) and an action, then a default.
//! The first rule whose predicates all hold decides; the decision names its rule, so a
//! drop or a translation can say which rule made it.
//!
//! Policy is written on it, not into it: a node's POSTROUTING NAT chains (Antrea's
//! Egress and masquerade rules, kube-proxy's KUBE-POSTROUTING, Calico's
//! `cali-nat-outgoing`) and an NSX Tier-1's SNAT rules are `Layer<NatAction>`s
//! (`engine::nat`). A layer is compiled once when the device is built and classified
//! once per connection — later packets follow the connection's conntrack entry.

use crate::packet::FlowKey;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// An interface of the device classifying, as its policy numbers them.
pub type InterfaceId = u32;

/// A set of IPv4 prefixes (an ipset, an NSX group's addresses, a selector's pods):
/// host addresses in a hash set, wider prefixes in a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet {
    hosts: rustc_hash::FxHashSet<u32>,
    prefixes: Vec<Ipv4Net>,
}

impl AddressSet {
    pub fn new(prefixes: impl IntoIterator<Item = Ipv4Net>) -> Self {
        let mut set = AddressSet::default();
        for prefix in prefixes {
            if prefix.prefix_len() == 32 {
                set.hosts.insert(u32::from(prefix.addr()));
            } else {
                set.prefixes.push(prefix.trunc());
            }
        }
        set
    }

    /// The set of these host addresses.
    pub fn of_hosts(addresses: impl IntoIterator<Item = Ipv4Addr>) -> Self {
        AddressSet {
            hosts: addresses.into_iter().map(u32::from).collect(),
            prefixes: Vec::new(),
        }
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        self.hosts.contains(&u32::from(address))
            || self.prefixes.iter().any(|prefix| prefix.contains(&address))
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.prefixes.is_empty()
    }
}

/// What a rule matches on; a rule holds when all of its predicates do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Predicate {
    /// `-s`: the source address is in the set.
    SourceIn(AddressSet),
    /// `-d`: the destination address is in the set.
    DestinationIn(AddressSet),
    /// `-p`: the IP protocol number.
    Protocol(u8),
    /// `--dport LOW:HIGH`.
    DestinationPort { low: u16, high: u16 },
    /// `-i`: the interface the packet came in by.
    InInterface(InterfaceId),
    /// `-o`: the interface routing sends it out by.
    OutInterface(InterfaceId),
    /// `-m mark --mark VALUE/MASK`.
    Mark { value: u32, mask: u32 },
    /// `!`: the predicate does not hold.
    Not(Box<Predicate>),
}

impl std::ops::Not for Predicate {
    type Output = Predicate;

    /// `! PREDICATE`.
    fn not(self) -> Predicate {
        Predicate::Not(Box::new(self))
    }
}

impl Predicate {
    /// Whether the predicate holds for a packet.
    pub fn holds(&self, packet: &Metadata) -> bool {
        let key = &packet.key;
        match self {
            Predicate::SourceIn(set) => set.contains(key.source),
            Predicate::DestinationIn(set) => set.contains(key.destination),
            Predicate::Protocol(protocol) => key.protocol == *protocol,
            Predicate::DestinationPort { low, high } => {
                (*low..=*high).contains(&key.destination_port)
            }
            Predicate::InInterface(interface) => packet.in_interface == Some(*interface),
            Predicate::OutInterface(interface) => packet.out_interface == Some(*interface),
            Predicate::Mark { value, mask } => packet.mark & mask == *value,
            Predicate::Not(inner) => !inner.holds(packet),
        }
    }
}

/// What a layer classifies: a packet's flow key and what the device knows of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub key: FlowKey,
    pub in_interface: Option<InterfaceId>,
    pub out_interface: Option<InterfaceId>,
    /// The packet mark (`skb->mark`): set by an earlier stage (kube-proxy's 0x4000,
    /// Antrea's Egress SNAT-IP id), never on the wire.
    pub mark: u32,
}

/// One rule: predicates, all of which must hold, and an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<A> {
    /// How reports name it (`ANTREA-POSTROUTING/masquerade`, `t1-ns/snat[0]`).
    pub name: String,
    pub predicates: Vec<Predicate>,
    pub action: A,
}

impl<A> Rule<A> {
    pub fn new(name: impl Into<String>, predicates: Vec<Predicate>, action: A) -> Self {
        Rule {
            name: name.into(),
            predicates,
            action,
        }
    }

    pub fn matches(&self, packet: &Metadata) -> bool {
        self.predicates
            .iter()
            .all(|predicate| predicate.holds(packet))
    }
}

/// An ordered rule table with a default action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer<A> {
    /// The table's name (`nat/POSTROUTING`, `t1-ns/snat`).
    pub name: String,
    rules: Vec<Rule<A>>,
    default: A,
    /// Which rules can match a packet's addresses (see [`AddressIndex`]).
    index: AddressIndex,
}

/// Rules a layer holds before classification uses its index rather than a scan.
const INDEXED_FROM: usize = 32;

/// Which rules can match a packet, by address, so a large layer classifies by
/// looking at its candidates only (in rule order) instead of every rule. Every rule
/// is filed on both sides: under the addresses of its positive `SourceIn` (host
/// addresses exactly, prefixes by length) or among the source-free rules, and the
/// same for `DestinationIn`. A packet's candidates on one side are that side's
/// rules for its address plus the side's free rules; classification walks the
/// smaller side in rule order, so first match still wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct AddressIndex {
    source: SideIndex,
    destination: SideIndex,
    source_free: Vec<u32>,
    destination_free: Vec<u32>,
}

/// One side's index: host address -> rules, (prefix length, network) -> rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SideIndex {
    hosts: rustc_hash::FxHashMap<u32, Vec<u32>>,
    prefixes: rustc_hash::FxHashMap<(u8, u32), Vec<u32>>,
    /// Prefix lengths in use.
    lengths: Vec<u8>,
}

impl SideIndex {
    fn add(&mut self, index: u32, set: &AddressSet) {
        for host in &set.hosts {
            self.hosts.entry(*host).or_default().push(index);
        }
        for prefix in &set.prefixes {
            let length = prefix.prefix_len();
            let network = u32::from(prefix.network());
            self.prefixes
                .entry((length, network))
                .or_default()
                .push(index);
            if !self.lengths.contains(&length) {
                self.lengths.push(length);
            }
        }
    }

    fn lists<'a>(&'a self, address: Ipv4Addr, lists: &mut Vec<&'a [u32]>) {
        let address = u32::from(address);
        if let Some(rules) = self.hosts.get(&address) {
            lists.push(rules);
        }
        for &length in &self.lengths {
            let mask = if length == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(length))
            };
            if let Some(rules) = self.prefixes.get(&(length, address & mask)) {
                lists.push(rules);
            }
        }
    }
}

impl AddressIndex {
    fn add<A>(&mut self, index: u32, rule: &Rule<A>) {
        let first = |source: bool| {
            rule.predicates
                .iter()
                .find_map(|predicate| match predicate {
                    Predicate::SourceIn(set) if source => Some(set),
                    Predicate::DestinationIn(set) if !source => Some(set),
                    _ => None,
                })
        };
        match first(true) {
            Some(set) => self.source.add(index, set),
            None => self.source_free.push(index),
        }
        match first(false) {
            Some(set) => self.destination.add(index, set),
            None => self.destination_free.push(index),
        }
    }

    /// The lists of rules that can match `key` on its more selective side; each
    /// list is in rule order.
    fn candidate_lists(&self, key: &FlowKey) -> Vec<&[u32]> {
        let mut by_source: Vec<&[u32]> = vec![&self.source_free];
        self.source.lists(key.source, &mut by_source);
        let mut by_destination: Vec<&[u32]> = vec![&self.destination_free];
        self.destination.lists(key.destination, &mut by_destination);
        let size = |lists: &[&[u32]]| lists.iter().map(|list| list.len()).sum::<usize>();
        if size(&by_source) <= size(&by_destination) {
            by_source
        } else {
            by_destination
        }
    }
}

/// Walks several ascending lists of rule indices as one, in order, each index once
/// (the lists are few: the rules for any packet, its addresses, their prefixes).
struct MergedCandidates<'a> {
    lists: Vec<&'a [u32]>,
    last: Option<u32>,
}

impl Iterator for MergedCandidates<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            let (position, &smallest) = self
                .lists
                .iter()
                .enumerate()
                .filter_map(|(position, list)| list.first().map(|head| (position, head)))
                .min_by_key(|(_, head)| **head)?;
            self.lists[position] = &self.lists[position][1..];
            if self.last != Some(smallest) {
                self.last = Some(smallest);
                return Some(smallest);
            }
        }
    }
}

/// Which rule decided, and its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'a, A> {
    pub action: &'a A,
    /// The rule's index, or None when no rule matched and the default decided.
    pub rule: Option<usize>,
    /// The rule's name, or `default` when none matched.
    pub name: &'a str,
}

impl<A> Layer<A> {
    pub fn new(name: impl Into<String>, default: A) -> Self {
        Layer {
            name: name.into(),
            rules: Vec::new(),
            default,
            index: AddressIndex::default(),
        }
    }

    /// Appends a rule (`-A`): it is tried after every rule already in the table.
    pub fn push(&mut self, rule: Rule<A>) {
        let index = u32::try_from(self.rules.len()).unwrap_or(u32::MAX);
        self.index.add(index, &rule);
        self.rules.push(rule);
    }

    pub fn rules(&self) -> &[Rule<A>] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that matches, or the default. A large layer looks only at
    /// the rules its address index says can match.
    pub fn classify(&self, packet: &Metadata) -> Decision<'_, A> {
        let found = if self.rules.len() < INDEXED_FROM {
            self.rules
                .iter()
                .enumerate()
                .find(|(_, rule)| rule.matches(packet))
        } else {
            MergedCandidates {
                lists: self.index.candidate_lists(&packet.key),
                last: None,
            }
            .map(|index| (index as usize, &self.rules[index as usize]))
            .find(|(_, rule)| rule.matches(packet))
        };
        match found {
            Some((index, rule)) => Decision {
                action: &rule.action,
                rule: Some(index),
                name: &rule.name,
            },
            None => Decision {
                action: &self.default,
                rule: None,
                name: "default",
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PROTOCOL_TCP;
    use std::ops::Not;

    fn packet(source: [u8; 4], destination: [u8; 4], out: InterfaceId, mark: u32) -> Metadata {
        Metadata {
            key: FlowKey {
                protocol: PROTOCOL_TCP,
                source: Ipv4Addr::from(source),
                destination: Ipv4Addr::from(destination),
                source_port: 40000,
                destination_port: 443,
            },
            in_interface: Some(1),
            out_interface: Some(out),
            mark,
        }
    }

    fn set(prefix: &str) -> AddressSet {
        AddressSet::new([prefix.parse().unwrap()])
    }

    #[test]
    fn first_matching_rule_decides_then_the_default() {
        let mut layer = Layer::new("nat/POSTROUTING", "accept");
        layer.push(Rule::new(
            "egress",
            vec![
                Predicate::Mark {
                    value: 0x1,
                    mask: 0xff,
                },
                Predicate::OutInterface(2).not(),
            ],
            "snat",
        ));
        layer.push(Rule::new(
            "masquerade",
            vec![
                Predicate::SourceIn(set("10.244.0.0/24")),
                Predicate::DestinationIn(set("10.244.0.0/16")).not(),
                Predicate::OutInterface(2).not(),
            ],
            "masquerade",
        ));
        // Marked and leaving by eth0: the Egress rule, before the masquerade.
        let marked = layer.classify(&packet([10, 244, 0, 5], [8, 8, 8, 8], 0, 0x301));
        assert_eq!(
            (*marked.action, marked.rule, marked.name),
            ("snat", Some(0), "egress")
        );
        let plain = layer.classify(&packet([10, 244, 0, 5], [8, 8, 8, 8], 0, 0));
        assert_eq!((*plain.action, plain.name), ("masquerade", "masquerade"));
        // Pod to pod, or out by antrea-gw0: nothing matches.
        let east_west = layer.classify(&packet([10, 244, 0, 5], [10, 244, 1, 5], 0, 0));
        assert_eq!((*east_west.action, east_west.rule), ("accept", None));
        let gateway = layer.classify(&packet([10, 244, 0, 5], [8, 8, 8, 8], 2, 0x1));
        assert_eq!(gateway.name, "default");
    }

    #[test]
    fn a_large_layer_decides_as_a_linear_scan_would() {
        let mut layer = Layer::new("big", 0usize);
        for index in 0..200u32 {
            let predicates = match index % 4 {
                0 => vec![Predicate::SourceIn(AddressSet::of_hosts([Ipv4Addr::from(
                    0x0a00_0000 + index,
                )]))],
                1 => vec![Predicate::SourceIn(set(&format!(
                    "10.{}.0.0/16",
                    index % 7
                )))],
                2 => vec![Predicate::DestinationIn(set("2.2.2.0/24"))],
                _ => vec![
                    Predicate::SourceIn(set("10.0.0.0/8")),
                    Predicate::DestinationPort {
                        low: 443,
                        high: 443,
                    },
                ],
            };
            layer.push(Rule::new(
                format!("r{index}"),
                predicates,
                index as usize + 1,
            ));
        }
        for source in [
            [10, 0, 0, 5],
            [10, 3, 1, 1],
            [10, 0, 0, 200],
            [192, 168, 1, 1],
        ] {
            for destination in [[2, 2, 2, 2], [8, 8, 8, 8]] {
                let metadata = packet(source, destination, 0, 0);
                let linear = layer
                    .rules()
                    .iter()
                    .position(|rule| rule.matches(&metadata));
                assert_eq!(layer.classify(&metadata).rule, linear, "{source:?}");
            }
        }
    }

    #[test]
    fn port_and_protocol_predicates() {
        let web = packet([1, 1, 1, 1], [2, 2, 2, 2], 0, 0);
        assert!(Predicate::Protocol(PROTOCOL_TCP).holds(&web));
        assert!(Predicate::DestinationPort {
            low: 443,
            high: 443
        }
        .holds(&web));
        assert!(!Predicate::DestinationPort { low: 1, high: 442 }.holds(&web));
        assert!(Predicate::InInterface(1).holds(&web));
    }
}
