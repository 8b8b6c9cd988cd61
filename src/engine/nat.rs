//! NAT actions and pools: what a NAT rule does once it matches (opte's `NatPool` is the
//! model). A pool is an address range and optionally a port range, as iptables writes
//! `SNAT --to-source FIRST-LAST:LOW-HIGH`; the address for a connection and its port
//! are chosen the way the kernel's `nf_nat_core.c` does (reference §g) — the address in
//! `find_best_ips_proto`, the port in the conntrack table that commits the binding.

use crate::engine::hash::flow_hash;
use crate::packet::FlowKey;
use std::net::Ipv4Addr;

/// Addresses (and ports) a source NAT may translate to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatPool {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// `:LOW-HIGH`; None keeps the original port's class (1-511, 600-1023, 1024-65535).
    pub ports: Option<(u16, u16)>,
    /// `--random-fully`: never try the original port first; every connection starts
    /// its port search from its own random offset.
    pub random_fully: bool,
}

impl NatPool {
    /// One address (`--to-source A`: Antrea Egress, an NSX SNAT /32).
    pub fn address(address: Ipv4Addr) -> Self {
        Self::range(address, address)
    }

    /// An address range `FIRST-LAST`.
    pub fn range(first: Ipv4Addr, last: Ipv4Addr) -> Self {
        NatPool {
            first,
            last,
            ports: None,
            random_fully: false,
        }
    }

    pub fn with_ports(self, low: u16, high: u16) -> Self {
        NatPool {
            ports: Some((low, high)),
            ..self
        }
    }

    pub fn with_random_fully(self, random_fully: bool) -> Self {
        NatPool {
            random_fully,
            ..self
        }
    }

    /// The address a connection is translated to: `find_best_ips_proto` hashes the
    /// source and destination addresses over the range, so one client keeps one
    /// address toward one server (seeded here, so runs repeat).
    pub fn address_for(&self, key: &FlowKey, seed: u64) -> Ipv4Addr {
        let first = u32::from(self.first);
        let size = u32::from(self.last).saturating_sub(first).saturating_add(1);
        if size <= 1 {
            return self.first;
        }
        let addresses_only = FlowKey {
            protocol: 0,
            source_port: 0,
            destination_port: 0,
            ..*key
        };
        let offset = flow_hash(&addresses_only, seed) % size;
        Ipv4Addr::from(first + offset)
    }
}

/// What a NAT rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatAction {
    /// No translation (iptables `RETURN` / `ACCEPT` in the nat table, NSX `NO_SNAT`).
    Keep,
    /// SNAT to a pool.
    Snat(NatPool),
    /// MASQUERADE: SNAT to the primary address of the interface routing chose.
    Masquerade { random_fully: bool },
}

impl NatAction {
    /// The pool this action translates to, given the outgoing interface's address.
    pub fn pool(&self, interface_address: Ipv4Addr) -> Option<NatPool> {
        match *self {
            NatAction::Keep => None,
            NatAction::Snat(pool) => Some(pool),
            NatAction::Masquerade { random_fully } => {
                Some(NatPool::address(interface_address).with_random_fully(random_fully))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::PROTOCOL_TCP;

    #[test]
    fn a_range_keeps_one_address_per_client_and_server() {
        let pool = NatPool::range(Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 13));
        let key = |source_port| FlowKey {
            protocol: PROTOCOL_TCP,
            source: Ipv4Addr::new(10, 0, 0, 5),
            destination: Ipv4Addr::new(198, 51, 100, 1),
            source_port,
            destination_port: 443,
        };
        let chosen = pool.address_for(&key(40000), 7);
        assert!((u32::from(pool.first)..=u32::from(pool.last)).contains(&u32::from(chosen)));
        assert_eq!(pool.address_for(&key(40001), 7), chosen);
        let single = NatPool::address(Ipv4Addr::new(192, 0, 2, 10));
        assert_eq!(single.address_for(&key(1), 7), single.first);
    }
}
