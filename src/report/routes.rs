//! `netsim routes` (SPEC §1): each router's RIB — every candidate route with its
//! origin, whether it won and why not — and its FIB (the winners, with every
//! equal-cost next hop), and each node's kernel routing table. Text for people, JSON
//! in the SPEC's shape for tools.

use crate::sim::network::{Device, Network};
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Serialize)]
pub struct RoutesReport {
    /// BGP rounds run to the fixpoint, and whether it was reached.
    pub bgp_rounds: usize,
    pub bgp_converged: bool,
    pub routers: Vec<RouterRoutes>,
    pub nodes: Vec<NodeRoutes>,
}

#[derive(Debug, Serialize)]
pub struct RouterRoutes {
    pub name: String,
    pub fib: Vec<FibEntry>,
    pub rib: Vec<RibEntry>,
    pub sessions: Vec<SessionEntry>,
}

/// A configured BGP neighbor and its session's state.
#[derive(Debug, Serialize)]
pub struct SessionEntry {
    pub peer: String,
    pub asn: u32,
    /// `established` or `down`.
    pub state: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct FibEntry {
    pub prefix: String,
    pub next_hops: Vec<String>,
    pub origin: String,
}

#[derive(Debug, Serialize)]
pub struct RibEntry {
    pub prefix: String,
    pub next_hop: Option<String>,
    pub interface: String,
    pub origin: String,
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub best: bool,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NodeRoutes {
    pub name: String,
    pub fib: Vec<FibEntry>,
    /// What the node's BGP daemon (Calico's BIRD) learned; empty without one.
    pub rib: Vec<RibEntry>,
    pub sessions: Vec<SessionEntry>,
}

/// The routes of every router (or only `only`) and node of `network`.
pub fn build(network: &Network, only: Option<&str>) -> RoutesReport {
    let mut routers = Vec::new();
    let mut nodes = Vec::new();
    for device in network.devices() {
        match device {
            Device::Router(router) if only.is_none_or(|name| name == router.name) => {
                let interface = |port: u16| {
                    router
                        .ports
                        .get(usize::from(port))
                        .map_or(String::new(), |p| p.name.clone())
                };
                let fib = router
                    .fib
                    .entries()
                    .into_iter()
                    .map(|(prefix, route)| FibEntry {
                        prefix: prefix.to_string(),
                        next_hops: route
                            .next_hops
                            .iter()
                            .map(|hop| match hop.address {
                                Some(address) => format!("{address} ({})", interface(hop.port)),
                                None => format!("directly connected ({})", interface(hop.port)),
                            })
                            .collect(),
                        origin: route.origin.name().to_string(),
                    })
                    .collect();
                let rib = rib_entries(&router.rib, interface);
                let sessions = session_entries(&router.sessions);
                routers.push(RouterRoutes {
                    name: router.name.clone(),
                    fib,
                    rib,
                    sessions,
                });
            }
            Device::Node(node) if only.is_none_or(|name| name == node.name()) => {
                let fib = node
                    .route_table()
                    .into_iter()
                    .map(|(prefix, via, device)| FibEntry {
                        prefix: prefix.to_string(),
                        next_hops: vec![match via {
                            Some(via) => format!("{via} ({device})"),
                            None => format!("directly connected ({device})"),
                        }],
                        origin: if via.is_some() { "static" } else { "connected" }.to_string(),
                    })
                    .collect();
                nodes.push(NodeRoutes {
                    name: node.name().to_string(),
                    fib,
                    rib: Vec::new(),
                    sessions: Vec::new(),
                });
            }
            Device::CalicoNode(node) if only.is_none_or(|name| name == node.name()) => {
                let fib = node
                    .route_table()
                    .into_iter()
                    .map(|(prefix, via, device, source)| FibEntry {
                        prefix: prefix.to_string(),
                        next_hops: vec![match via {
                            Some(via) => format!("{via} ({device})"),
                            None => format!("directly connected ({device})"),
                        }],
                        origin: source.to_string(),
                    })
                    .collect();
                let bgp = node.bgp();
                nodes.push(NodeRoutes {
                    name: node.name().to_string(),
                    fib,
                    rib: rib_entries(&bgp.candidates, |_| "eth0".to_string()),
                    sessions: session_entries(&bgp.sessions),
                });
            }
            _ => {}
        }
    }
    RoutesReport {
        bgp_rounds: network.bgp_rounds,
        bgp_converged: network.bgp_converged,
        routers,
        nodes,
    }
}

fn rib_entries(
    candidates: &[crate::control::Candidate],
    interface: impl Fn(u16) -> String,
) -> Vec<RibEntry> {
    candidates
        .iter()
        .map(|candidate| RibEntry {
            prefix: candidate.prefix.to_string(),
            next_hop: candidate.next_hop.map(|h| h.to_string()),
            interface: interface(candidate.port),
            origin: candidate.origin.name().to_string(),
            as_path: candidate
                .bgp
                .as_ref()
                .map(|b| b.as_path.clone())
                .unwrap_or_default(),
            local_pref: candidate.bgp.as_ref().map(|b| b.local_pref),
            med: candidate.bgp.as_ref().map(|b| b.med),
            best: candidate.best,
            reason: candidate.reason.clone(),
        })
        .collect()
}

fn session_entries(sessions: &[crate::control::bgp::SessionState]) -> Vec<SessionEntry> {
    sessions
        .iter()
        .map(|s| SessionEntry {
            peer: s.peer_address.to_string(),
            asn: s.peer_asn,
            state: if s.established { "established" } else { "down" }.to_string(),
            reason: s.reason.clone(),
        })
        .collect()
}

/// The routes as text: per device, the FIB, the BGP sessions, then every RIB
/// candidate with `*` on the winners and the reason the others lost.
pub fn text(report: &RoutesReport) -> String {
    let mut out = String::new();
    if !report.bgp_converged {
        let _ = writeln!(
            out,
            "warning: BGP did not converge in {} rounds: paths still change (an oscillating design); the tables below are the last round's",
            report.bgp_rounds
        );
    }
    for router in &report.routers {
        device_text(
            &mut out,
            "router",
            &router.name,
            &router.fib,
            &router.sessions,
            &router.rib,
        );
    }
    for node in &report.nodes {
        device_text(
            &mut out,
            "node",
            &node.name,
            &node.fib,
            &node.sessions,
            &node.rib,
        );
    }
    out
}

fn device_text(
    out: &mut String,
    kind: &str,
    name: &str,
    fib: &[FibEntry],
    sessions: &[SessionEntry],
    rib: &[RibEntry],
) {
    let _ = writeln!(out, "{kind} {name}");
    let _ = writeln!(out, "  fib:");
    let width = fib.iter().map(|e| e.prefix.len()).max().unwrap_or(0);
    for entry in fib {
        let _ = writeln!(
            out,
            "    {:<width$}  {:<10} {}",
            entry.prefix,
            entry.origin,
            entry.next_hops.join(", ")
        );
    }
    if !sessions.is_empty() {
        let _ = writeln!(out, "  bgp sessions:");
        for session in sessions {
            let _ = if session.state == "established" {
                writeln!(
                    out,
                    "    {} AS {}  {}",
                    session.peer, session.asn, session.reason
                )
            } else {
                writeln!(
                    out,
                    "    {} AS {}  down: {}",
                    session.peer, session.asn, session.reason
                )
            };
        }
    }
    if rib.is_empty() {
        return;
    }
    let _ = writeln!(out, "  rib:");
    let width = rib.iter().map(|e| e.prefix.len()).max().unwrap_or(0);
    for candidate in rib {
        let mark = if candidate.best { '*' } else { ' ' };
        let mut via = candidate
            .next_hop
            .as_ref()
            .map_or("directly connected".to_string(), |h| format!("via {h}"));
        if let Some(local_pref) = candidate.local_pref {
            let path: Vec<String> = candidate.as_path.iter().map(u32::to_string).collect();
            via.push_str(&format!(
                " as-path [{}] local-pref {local_pref} med {}",
                path.join(" "),
                candidate.med.unwrap_or(0)
            ));
        }
        let reason = candidate
            .reason
            .as_ref()
            .map(|r| format!("  — lost: {r}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {mark} {:<width$}  {:<10} {via} ({}){reason}",
            candidate.prefix, candidate.origin, candidate.interface
        );
    }
}
