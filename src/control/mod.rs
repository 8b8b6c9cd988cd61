//! The control plane, computed before any packet moves: for each router, every
//! candidate route with its origin (the RIB), the winner of each prefix and why the
//! others lost, and the FIB installed from the winners. Forwarding only reads the
//! FIB; nothing here runs per packet.
//!
//! Selection follows the usual router order: the origin with the lowest
//! administrative distance wins (connected 0, static 1 — Cisco, FRR and NSX use these
//! values); among equals, the first by next-hop address, or up to eight of them as
//! equal-cost next hops when the router does ECMP.

use crate::datapath::router::{NextHop, Route, RouteOrigin};
use crate::datapath::PortId;
use crate::engine::lpm::LpmTable;
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Equal-cost next hops a router installs at most (NSX: 8).
pub const MAX_ECMP_PATHS: usize = 8;

/// One candidate route in a router's RIB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub prefix: Ipv4Net,
    /// The next hop, or none for a connected prefix.
    pub next_hop: Option<Ipv4Addr>,
    /// The interface toward the next hop.
    pub port: PortId,
    pub origin: RouteOrigin,
    /// Installed in the FIB.
    pub best: bool,
    /// Why it lost, when it did.
    pub reason: Option<String>,
}

/// A router's RIB and the FIB computed from it.
#[derive(Debug, Clone)]
pub struct RouteTables {
    pub rib: Vec<Candidate>,
    pub fib: LpmTable<Route>,
}

/// Picks each prefix's winners among `candidates` and builds the FIB. `ecmp` allows
/// several equal-cost next hops per prefix.
pub fn select(mut candidates: Vec<Candidate>, ecmp: bool) -> RouteTables {
    let mut by_prefix: BTreeMap<Ipv4Net, Vec<usize>> = BTreeMap::new();
    for (index, candidate) in candidates.iter().enumerate() {
        by_prefix.entry(candidate.prefix).or_default().push(index);
    }
    let mut fib = LpmTable::new();
    for (prefix, indices) in by_prefix {
        let best_distance = indices
            .iter()
            .map(|&i| candidates[i].origin.distance())
            .min()
            .unwrap_or(u8::MAX);
        let mut equal: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| candidates[i].origin.distance() == best_distance)
            .collect();
        equal.sort_by_key(|&i| (candidates[i].next_hop, candidates[i].port));
        equal.dedup_by_key(|i| (candidates[*i].next_hop, candidates[*i].port));
        let paths = if ecmp { MAX_ECMP_PATHS } else { 1 };
        let winners: Vec<usize> = equal.iter().copied().take(paths).collect();
        let origin = candidates[winners[0]].origin;
        for &index in &indices {
            let candidate = &candidates[index];
            let reason = if winners.contains(&index) {
                None
            } else if candidate.origin.distance() > best_distance {
                Some(format!(
                    "{} (distance {}) is preferred over {} (distance {})",
                    origin.name(),
                    best_distance,
                    candidate.origin.name(),
                    candidate.origin.distance()
                ))
            } else if equal.contains(&index) && !ecmp {
                Some("an equal route with a lower next hop won (no ECMP)".to_string())
            } else if equal.contains(&index) {
                Some(format!("more than {MAX_ECMP_PATHS} equal-cost paths"))
            } else {
                Some("the same route is listed twice".to_string())
            };
            candidates[index].best = reason.is_none();
            candidates[index].reason = reason;
        }
        let next_hops = winners
            .iter()
            .map(|&i| NextHop {
                port: candidates[i].port,
                address: candidates[i].next_hop,
            })
            .collect();
        fib.insert(prefix, Route { next_hops, origin });
    }
    RouteTables {
        rib: candidates,
        fib,
    }
}

/// The connected and static candidates of a router with `interfaces` (address and
/// prefix length, in port order) and `static_routes` (prefix, next hop): a static
/// route leaves by the interface whose subnet holds its next hop.
pub fn connected_and_static(
    interfaces: &[Ipv4Net],
    static_routes: &[(Ipv4Net, Ipv4Addr)],
) -> Vec<Candidate> {
    let mut candidates = Vec::new();
    for (index, address) in interfaces.iter().enumerate() {
        candidates.push(Candidate {
            prefix: address.trunc(),
            next_hop: None,
            port: PortId::try_from(index).unwrap_or(PortId::MAX),
            origin: RouteOrigin::Connected,
            best: false,
            reason: None,
        });
    }
    for (prefix, next_hop) in static_routes {
        if let Some(index) = interfaces.iter().position(|a| a.contains(next_hop)) {
            candidates.push(Candidate {
                prefix: *prefix,
                next_hop: Some(*next_hop),
                port: PortId::try_from(index).unwrap_or(PortId::MAX),
                origin: RouteOrigin::Static,
                best: false,
                reason: None,
            });
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    #[test]
    fn connected_beats_static_and_ecmp_installs_equal_next_hops() {
        let interfaces = [net("10.0.0.1/24"), net("10.0.1.1/24")];
        let statics = [
            (net("10.0.1.0/24"), "10.0.0.9".parse().unwrap()),
            (net("0.0.0.0/0"), "10.0.0.2".parse().unwrap()),
            (net("0.0.0.0/0"), "10.0.1.2".parse().unwrap()),
        ];
        let tables = select(connected_and_static(&interfaces, &statics), true);
        let connected = tables.fib.get_exact(net("10.0.1.0/24")).unwrap();
        assert_eq!(connected.origin, RouteOrigin::Connected);
        let lost = tables
            .rib
            .iter()
            .find(|c| c.prefix == net("10.0.1.0/24") && c.origin == RouteOrigin::Static)
            .unwrap();
        assert!(!lost.best);
        assert_eq!(
            lost.reason.as_deref(),
            Some("connected (distance 0) is preferred over static (distance 1)")
        );
        let default = tables.fib.get_exact(net("0.0.0.0/0")).unwrap();
        assert_eq!(default.next_hops.len(), 2);
        let single = select(connected_and_static(&interfaces, &statics), false);
        assert_eq!(
            single
                .fib
                .get_exact(net("0.0.0.0/0"))
                .unwrap()
                .next_hops
                .len(),
            1
        );
    }
}
