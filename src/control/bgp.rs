//! BGP (RFC 4271) between the speakers a topology declares, run to convergence
//! before traffic: sessions (single hop, configured on both ends with matching AS
//! numbers, or down with the reason), origination by redistribution and aggregates,
//! export (eBGP: own AS prepended, next hop self; iBGP: split horizon unless route
//! reflection, RFC 4456, with ORIGINATOR_ID and CLUSTER_LIST), outbound route maps,
//! import with AS-path loop prevention, and best-path selection in BIRD's order
//! (local preference, AS-path length, origin, MED from the same neighbour AS, eBGP
//! over iBGP, router id, neighbour address), with multipath when equal.
//!
//! Synchronous rounds: each speaker picks its best paths from what it originates and
//! what its peers sent, then sends its peers what its export rules allow; until
//! nothing changes. Deterministic: speakers, sessions and prefixes in fixed order.

use crate::topology::{Aggregate, RouteMapEntry};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Rounds after which convergence is given up (an oscillating design).
const MAX_ROUNDS: usize = 256;
/// LOCAL_PREF given to routes learned over eBGP and originated here.
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// The ORIGIN attribute (RFC 4271 §5.1.1), in preference order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OriginCode {
    Igp,
    Egp,
    Incomplete,
}

/// One path to a prefix, as a speaker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub prefix: Ipv4Net,
    /// None for a path this speaker originates.
    pub next_hop: Option<Ipv4Addr>,
    pub as_path: Vec<u32>,
    pub origin: OriginCode,
    pub med: u32,
    pub local_pref: u32,
    /// The session it came over (an index into the sessions), or none if local.
    pub from_session: Option<usize>,
    pub from_ebgp: bool,
    /// Router id of the speaker that sent it (or of this one, when local).
    pub peer_router_id: Ipv4Addr,
    pub peer_address: Option<Ipv4Addr>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
}

impl Path {
    /// The router id the tie-break compares: the ORIGINATOR_ID of a reflected path
    /// (RFC 4456 §9), else the sender's.
    fn advertiser_id(&self) -> Ipv4Addr {
        self.originator_id.unwrap_or(self.peer_router_id)
    }
}

/// A BGP speaker as the control plane sees it.
#[derive(Debug, Clone)]
pub struct Speaker {
    pub name: String,
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// The route-reflection cluster id (RFC 4456 §7): the router id unless several
    /// reflectors share one (Calico's `routeReflectorClusterID`).
    pub cluster_id: Ipv4Addr,
    /// Its interface addresses, with their subnets.
    pub addresses: Vec<Ipv4Net>,
    pub neighbors: Vec<Neighbor>,
    /// What it originates (redistribution), before aggregation.
    pub originated: Vec<Path>,
    pub aggregates: Vec<Aggregate>,
    pub route_map_out: Vec<RouteMapEntry>,
    pub multipath: bool,
}

/// A configured neighbor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbor {
    pub address: Ipv4Addr,
    pub asn: u32,
    /// This speaker reflects iBGP routes to it (RFC 4456).
    pub route_reflector_client: bool,
    /// Not on a connected subnet: the session runs from the speaker's router id
    /// (Calico's node-to-node mesh, `multihop`).
    pub multihop: bool,
    /// Send learned paths with their next hop unchanged, even over eBGP (BIRD `next
    /// hop keep`; Calico BGPPeer `keepOriginalNextHop`).
    pub next_hop_keep: bool,
}

/// One direction of a session: from `local` to `peer` (speaker indices).
#[derive(Debug, Clone)]
pub struct Session {
    pub local: usize,
    pub peer: usize,
    pub local_address: Ipv4Addr,
    pub peer_address: Ipv4Addr,
    pub ebgp: bool,
    /// The peer is a route-reflector client of `local`.
    pub peer_is_client: bool,
    pub next_hop_keep: bool,
}

/// A configured neighbor's session state, for `netsim routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub speaker: usize,
    pub peer_address: Ipv4Addr,
    pub peer_asn: u32,
    pub established: bool,
    /// Why it is down, or `established (eBGP)`.
    pub reason: String,
}

/// What BGP computed: each speaker's best paths per prefix (several under
/// multipath), every path it held, and every session's state.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub best: Vec<BTreeMap<Ipv4Net, Vec<Path>>>,
    pub received: Vec<Vec<Path>>,
    pub sessions: Vec<SessionState>,
    pub rounds: usize,
    /// False when the paths still changed after the last round (an oscillating
    /// design, such as reflectors preferring each other's copies).
    pub converged: bool,
}

/// Matches configured neighbors into sessions. `owner_of` says which speaker (if
/// any) owns an address, and what else holds it when no speaker does.
pub fn sessions(
    speakers: &[Speaker],
    owner_of: &dyn Fn(Ipv4Addr) -> Result<usize, String>,
) -> (Vec<Session>, Vec<SessionState>) {
    let mut sessions = Vec::new();
    let mut states = Vec::new();
    for (local, speaker) in speakers.iter().enumerate() {
        for neighbor in &speaker.neighbors {
            let (peer_address, peer_asn) = (neighbor.address, neighbor.asn);
            let client = neighbor.route_reflector_client;
            let outcome = (|| -> Result<Session, String> {
                let peer = owner_of(peer_address)?;
                let other = &speakers[peer];
                if other.asn != peer_asn {
                    return Err(format!(
                        "{} is in AS {}, configured here as AS {peer_asn}",
                        other.name, other.asn
                    ));
                }
                let connected = speaker
                    .addresses
                    .iter()
                    .find(|net| net.contains(&peer_address))
                    .map(|net| net.addr());
                let local_address = match connected {
                    Some(address) => address,
                    None if neighbor.multihop => speaker.router_id,
                    None => {
                        return Err(format!(
                            "{peer_address} is not on a connected subnet (a single-hop session)"
                        ))
                    }
                };
                match other
                    .neighbors
                    .iter()
                    .find(|n| n.address == local_address)
                    .map(|n| (n.address, n.asn))
                {
                    None => Err(format!(
                        "{} has no neighbor {local_address}: the session is not configured back",
                        other.name
                    )),
                    Some((_, asn)) if asn != speaker.asn => Err(format!(
                        "{} expects AS {asn} at {local_address}, this speaker is AS {}",
                        other.name, speaker.asn
                    )),
                    Some(_) => Ok(Session {
                        local,
                        peer,
                        local_address,
                        peer_address,
                        ebgp: speaker.asn != other.asn,
                        peer_is_client: client,
                        next_hop_keep: neighbor.next_hop_keep,
                    }),
                }
            })();
            match outcome {
                Ok(session) => {
                    states.push(SessionState {
                        speaker: local,
                        peer_address,
                        peer_asn,
                        established: true,
                        reason: if session.ebgp {
                            "established (eBGP)".into()
                        } else {
                            "established (iBGP)".into()
                        },
                    });
                    sessions.push(session);
                }
                Err(reason) => states.push(SessionState {
                    speaker: local,
                    peer_address,
                    peer_asn,
                    established: false,
                    reason,
                }),
            }
        }
    }
    (sessions, states)
}

/// BIRD's order (BIRD 2 user guide, "Route selection rules"): true when `a` is
/// preferred to `b`. Locally originated paths come first.
fn better(a: &Path, b: &Path) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let local = |p: &Path| p.from_session.is_none();
    local(b)
        .cmp(&local(a))
        .then(b.local_pref.cmp(&a.local_pref))
        .then(a.as_path.len().cmp(&b.as_path.len()))
        .then(a.origin.cmp(&b.origin))
        .then_with(|| {
            // MED only between paths from the same neighbouring AS.
            if !a.as_path.is_empty() && a.as_path.first() == b.as_path.first() {
                a.med.cmp(&b.med)
            } else {
                Ordering::Equal
            }
        })
        .then(b.from_ebgp.cmp(&a.from_ebgp))
        .then(a.advertiser_id().cmp(&b.advertiser_id()))
        .then(a.cluster_list.len().cmp(&b.cluster_list.len()))
        .then(a.peer_address.cmp(&b.peer_address))
}

/// Equal for multipath: everything up to (not including) the router id.
fn equal_cost(a: &Path, b: &Path) -> bool {
    a.from_session.is_some() == b.from_session.is_some()
        && a.local_pref == b.local_pref
        && a.as_path.len() == b.as_path.len()
        && a.origin == b.origin
        && a.med == b.med
        && a.from_ebgp == b.from_ebgp
}

/// The best paths of each prefix among `paths`.
fn select(paths: &[Path], multipath: bool) -> BTreeMap<Ipv4Net, Vec<Path>> {
    let mut by_prefix: BTreeMap<Ipv4Net, Vec<&Path>> = BTreeMap::new();
    for path in paths {
        by_prefix.entry(path.prefix).or_default().push(path);
    }
    by_prefix
        .into_iter()
        .map(|(prefix, mut candidates)| {
            candidates.sort_by(|a, b| better(a, b));
            let first = candidates[0];
            let chosen: Vec<Path> = if multipath {
                candidates
                    .iter()
                    .filter(|p| equal_cost(first, p))
                    .take(crate::control::MAX_ECMP_PATHS)
                    .map(|p| (*p).clone())
                    .collect()
            } else {
                vec![first.clone()]
            };
            (prefix, chosen)
        })
        .collect()
}

/// A speaker's own paths: what it redistributes, and each aggregate that covers at
/// least one of them (ORIGIN IGP, RFC 4271 §9.2.2.2).
fn origination(speaker: &Speaker) -> Vec<Path> {
    let mut paths = speaker.originated.clone();
    for aggregate in &speaker.aggregates {
        let covers = paths.iter().any(|p| {
            aggregate.prefix.contains(&p.prefix.network()) && p.prefix != aggregate.prefix
        });
        if covers && !paths.iter().any(|p| p.prefix == aggregate.prefix) {
            paths.push(Path {
                prefix: aggregate.prefix,
                next_hop: None,
                as_path: Vec::new(),
                origin: OriginCode::Igp,
                med: 0,
                local_pref: DEFAULT_LOCAL_PREF,
                from_session: None,
                from_ebgp: false,
                peer_router_id: speaker.router_id,
                peer_address: None,
                originator_id: None,
                cluster_list: Vec::new(),
            });
        }
    }
    paths
}

/// What `session.local` sends its peer of its best paths.
fn export(
    speakers: &[Speaker],
    sessions: &[Session],
    session_index: usize,
    best: &BTreeMap<Ipv4Net, Vec<Path>>,
) -> Vec<Path> {
    let session = &sessions[session_index];
    let speaker = &speakers[session.local];
    let mut out = Vec::new();
    for (prefix, paths) in best {
        let path = &paths[0];
        // Never back to where it came from.
        if let Some(from) = path.from_session {
            if sessions[from].peer == session.peer {
                continue;
            }
        }
        // iBGP split horizon, unless reflecting (RFC 4456 §6).
        let learned_ibgp = path.from_session.is_some() && !path.from_ebgp;
        let reflected = if !session.ebgp && learned_ibgp {
            let from_client = path
                .from_session
                .is_some_and(|from| sessions[from].peer_is_client);
            if !(from_client || session.peer_is_client) {
                continue;
            }
            true
        } else {
            false
        };
        // Aggregates with summary-only hold back the prefixes they cover.
        let suppressed = speaker
            .aggregates
            .iter()
            .any(|a| a.summary_only && a.prefix != *prefix && a.prefix.contains(&prefix.network()));
        if suppressed {
            continue;
        }
        if !speaker.route_map_out.is_empty() {
            let permit = speaker
                .route_map_out
                .iter()
                .find(|entry| entry.matches(*prefix))
                .is_some_and(|entry| entry.permit);
            if !permit {
                continue;
            }
        }
        let mut sent = path.clone();
        if session.ebgp {
            sent.as_path.insert(0, speaker.asn);
            // Next hop self, unless the path's next hop shares the subnet with the
            // peer (the third-party next hop of RFC 4271 §5.1.3, BIRD's default).
            let shared = speaker
                .addresses
                .iter()
                .find(|net| net.contains(&session.peer_address));
            sent.next_hop = match (path.next_hop, shared) {
                (Some(hop), _) if session.next_hop_keep => Some(hop),
                (Some(hop), Some(net)) if net.contains(&hop) => Some(hop),
                _ => Some(session.local_address),
            };
            sent.local_pref = DEFAULT_LOCAL_PREF;
            sent.originator_id = None;
            sent.cluster_list.clear();
            if path.from_session.is_some() {
                sent.med = 0; // MED is not passed on to another AS (RFC 4271 §5.1.4)
            }
        } else {
            if path.from_session.is_none() || path.next_hop.is_none() {
                sent.next_hop = Some(session.local_address);
            }
            if reflected {
                sent.originator_id.get_or_insert(path.peer_router_id);
                sent.cluster_list.insert(0, speaker.cluster_id);
            }
        }
        out.push(sent);
    }
    out
}

/// What `session.peer` accepts of `paths`: loop prevention (own AS in the path, own
/// router id as originator, own id in the cluster list), then its own view of them.
fn import(
    speakers: &[Speaker],
    session_index: usize,
    sessions: &[Session],
    back: &[Option<usize>],
    paths: Vec<Path>,
) -> Vec<Path> {
    let session = &sessions[session_index];
    let receiver = &speakers[session.peer];
    let sender = &speakers[session.local];
    // The receiver's view: the session back from peer to local.
    let back = back[session_index];
    paths
        .into_iter()
        .filter(|p| {
            !p.as_path.contains(&receiver.asn)
                && p.originator_id != Some(receiver.router_id)
                && !p.cluster_list.contains(&receiver.cluster_id)
        })
        .map(|mut p| {
            p.from_session = back;
            p.from_ebgp = session.ebgp;
            p.peer_router_id = sender.router_id;
            p.peer_address = Some(session.local_address);
            p
        })
        .collect()
}

/// Runs BGP to convergence. Each round, only speakers that received something new
/// pick their best paths again, and only speakers whose best paths changed send
/// again (what a real speaker sends is an UPDATE for what changed); the fixpoint is
/// the round in which nothing is sent.
pub fn converge(speakers: &[Speaker], sessions: &[Session], states: Vec<SessionState>) -> Outcome {
    let own: Vec<Vec<Path>> = speakers.iter().map(origination).collect();
    let mut incoming: Vec<Vec<usize>> = vec![Vec::new(); speakers.len()];
    for (index, session) in sessions.iter().enumerate() {
        incoming[session.peer].push(index);
    }
    let held = |index: usize, adj_in: &[Vec<Path>]| -> Vec<Path> {
        let mut paths = own[index].clone();
        for &session in &incoming[index] {
            paths.extend(adj_in[session].iter().cloned());
        }
        paths
    };
    // Each session's reverse direction (the receiver's session back to the sender).
    let by_ends: rustc_hash::FxHashMap<(usize, usize), usize> = sessions
        .iter()
        .enumerate()
        .map(|(index, s)| ((s.local, s.peer), index))
        .collect();
    let back: Vec<Option<usize>> = sessions
        .iter()
        .map(|s| by_ends.get(&(s.peer, s.local)).copied())
        .collect();
    let mut adj_in: Vec<Vec<Path>> = vec![Vec::new(); sessions.len()];
    let mut best: Vec<BTreeMap<Ipv4Net, Vec<Path>>> = vec![BTreeMap::new(); speakers.len()];
    let mut reselect = vec![true; speakers.len()];
    let mut rounds = 0;
    let mut converged = false;
    for round in 1..=MAX_ROUNDS {
        rounds = round;
        let mut changed = vec![false; speakers.len()];
        for (index, speaker) in speakers.iter().enumerate() {
            if !reselect[index] {
                continue;
            }
            let selected = select(&held(index, &adj_in), speaker.multipath);
            if round == 1 || selected != best[index] {
                best[index] = selected;
                changed[index] = true;
            }
        }
        reselect = vec![false; speakers.len()];
        let mut sent_anything = false;
        for index in 0..sessions.len() {
            if !changed[sessions[index].local] {
                continue;
            }
            let sent = export(speakers, sessions, index, &best[sessions[index].local]);
            let received = import(speakers, index, sessions, &back, sent);
            if received != adj_in[index] {
                adj_in[index] = received;
                reselect[sessions[index].peer] = true;
                sent_anything = true;
            }
        }
        if !sent_anything {
            converged = true;
            break;
        }
    }
    let received = (0..speakers.len())
        .map(|index| held(index, &adj_in))
        .collect();
    Outcome {
        best,
        received,
        sessions: states,
        rounds,
        converged,
    }
}

/// Why `winner` beat `loser`, in BIRD's order: `"via 10.0.0.2: shorter AS path (1 < 2)"`.
pub fn describe_preference(winner: &Path, loser: &Path) -> String {
    let via = winner
        .next_hop
        .map_or("local".to_string(), |h| format!("via {h}"));
    let why = if winner.from_session.is_none() {
        "originated here".to_string()
    } else if winner.local_pref != loser.local_pref {
        format!(
            "higher local-pref ({} > {})",
            winner.local_pref, loser.local_pref
        )
    } else if winner.as_path.len() != loser.as_path.len() {
        format!(
            "shorter AS path ({} < {})",
            winner.as_path.len(),
            loser.as_path.len()
        )
    } else if winner.origin != loser.origin {
        format!("better origin ({:?} < {:?})", winner.origin, loser.origin)
    } else if winner.med != loser.med && winner.as_path.first() == loser.as_path.first() {
        format!("lower MED ({} < {})", winner.med, loser.med)
    } else if winner.from_ebgp != loser.from_ebgp {
        "eBGP is preferred over iBGP".to_string()
    } else if winner.advertiser_id() != loser.advertiser_id() {
        format!(
            "lower router id ({} < {})",
            winner.advertiser_id(),
            loser.advertiser_id()
        )
    } else {
        "lower neighbour address".to_string()
    };
    format!("{via}: {why}")
}
