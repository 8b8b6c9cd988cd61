//! The routing parts of `[[router]]`: kinds (NSX Tier-1 / Tier-0, ToR, router), an
//! NSX Tier-1's uplink to its Tier-0 (a transit link of its own), route
//! advertisement, aggregates, outbound route maps and BGP — checked and resolved
//! into the model. Reference §e (NSX), BIRD / RFC 4271 for BGP.

use super::config::*;
use super::model::*;
use super::resolve::{Resolver, Result};
use crate::datapath::router::Urpf;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// The kind a router is, from `kind`.
pub(super) fn router_kind(resolver: &Resolver, kind: &Option<Text>) -> Result<RouterKind> {
    let Some(kind) = kind else {
        return Ok(RouterKind::Router);
    };
    match kind.get_ref().as_str() {
        "router" => Ok(RouterKind::Router),
        "nsx-t1" => Ok(RouterKind::NsxTier1),
        "nsx-t0" => Ok(RouterKind::NsxTier0),
        "tor" => Ok(RouterKind::Tor),
        other => Err(resolver.error(
            kind,
            format!("unknown router kind `{other}` (expected nsx-t1, nsx-t0, tor or router)"),
        )),
    }
}

/// `ecmp` (default: on for an NSX Tier-0, whose ECMP is on by default; off
/// elsewhere) and `urpf` (default: strict on NSX gateways, none elsewhere).
pub(super) fn forwarding_options(
    resolver: &Resolver,
    config: &RouterConfig,
    kind: RouterKind,
) -> Result<(bool, Urpf)> {
    let ecmp = config
        .ecmp
        .as_ref()
        .map_or(kind == RouterKind::NsxTier0, |e| *e.get_ref());
    let default_urpf = match kind {
        RouterKind::NsxTier0 | RouterKind::NsxTier1 => Urpf::Strict,
        RouterKind::Router | RouterKind::Tor => Urpf::None,
    };
    let urpf = match &config.urpf {
        None => default_urpf,
        Some(text) => match text.get_ref().as_str() {
            "strict" => Urpf::Strict,
            "none" => Urpf::None,
            other => {
                return Err(resolver.error(
                    text,
                    format!("unknown urpf mode `{other}` (expected strict or none)"),
                ))
            }
        },
    };
    Ok((ecmp, urpf))
}

fn route_kind(resolver: &Resolver, text: &Text) -> Result<RouteKind> {
    match text.get_ref().as_str() {
        "connected" => Ok(RouteKind::Connected),
        "static" => Ok(RouteKind::Static),
        "nat" => Ok(RouteKind::Nat),
        "lb-vip" => Ok(RouteKind::LbVip),
        other => Err(resolver.error(
            text,
            format!("unknown route type `{other}` (expected connected, static, nat or lb-vip)"),
        )),
    }
}

/// A Tier-1's `advertise` list (default: none — NSX advertises nothing until told).
pub(super) fn advertise(
    resolver: &Resolver,
    config: &RouterConfig,
    kind: RouterKind,
) -> Result<Vec<RouteKind>> {
    let Some(list) = &config.advertise else {
        return Ok(Vec::new());
    };
    if kind != RouterKind::NsxTier1 {
        if let Some(first) = list.first() {
            return Err(resolver.error(
                first,
                "`advertise` is for an NSX Tier-1 (kind = \"nsx-t1\")",
            ));
        }
    }
    let mut kinds = list
        .iter()
        .map(|text| route_kind(resolver, text))
        .collect::<Result<Vec<_>>>()?;
    kinds.sort();
    kinds.dedup();
    Ok(kinds)
}

pub(super) fn aggregates(config: &RouterConfig) -> Vec<Aggregate> {
    config
        .aggregate
        .iter()
        .map(|a| Aggregate {
            prefix: a.get_ref().prefix.get_ref().trunc(),
            summary_only: a.get_ref().summary_only,
        })
        .collect()
}

/// `route_map_out`: a prefix list; `ge`/`le` must lie within the entry's prefix
/// length..32 (and `ge` <= `le`).
pub(super) fn route_map(resolver: &Resolver, config: &RouterConfig) -> Result<Vec<RouteMapEntry>> {
    let mut entries = Vec::new();
    for spanned in &config.route_map_out {
        let entry = spanned.get_ref();
        let permit = match entry.action.get_ref().as_str() {
            "permit" => true,
            "deny" => false,
            other => {
                return Err(resolver.error(
                    &entry.action,
                    format!("unknown route-map action `{other}` (expected permit or deny)"),
                ))
            }
        };
        let prefix = entry.prefix.get_ref().trunc();
        let length = prefix.prefix_len();
        let check = |value: &Option<toml::Spanned<u8>>, what: &str| -> Result<Option<u8>> {
            match value {
                Some(v) if !(length..=32).contains(v.get_ref()) => Err(resolver.error(
                    v,
                    format!(
                        "`{what}` {} is outside {length}..32 (the prefix length of {prefix} to 32)",
                        v.get_ref()
                    ),
                )),
                Some(v) => Ok(Some(*v.get_ref())),
                None => Ok(None),
            }
        };
        let ge = check(&entry.ge, "ge")?;
        let le = check(&entry.le, "le")?;
        let (ge, le) = match (ge, le) {
            (None, None) => (length, length),
            (Some(ge), None) => (ge, 32),
            (None, Some(le)) => (length, le),
            (Some(ge), Some(le)) => (ge, le),
        };
        if ge > le {
            return Err(resolver.error(spanned, format!("`ge` {ge} is greater than `le` {le}")));
        }
        entries.push(RouteMapEntry {
            permit,
            prefix,
            ge,
            le,
        });
    }
    Ok(entries)
}

/// `bgp`: ASN, router id (default: the highest interface address, as BIRD and FRR
/// pick one), neighbors, and what to redistribute (SPEC §2 defaults: a Tier-0
/// announces its connected subnets and everything its Tier-1s advertise; others
/// their connected subnets).
pub(super) fn bgp(
    resolver: &Resolver,
    config: &RouterConfig,
    kind: RouterKind,
    interfaces: &[RouterInterface],
) -> Result<Option<Bgp>> {
    let Some(spanned) = &config.bgp else {
        if kind == RouterKind::Tor {
            return Err(resolver.error(
                &config.name,
                "a ToR routes with BGP: give it `bgp = { asn = …, neighbors = [...] }`",
            ));
        }
        return Ok(None);
    };
    if kind == RouterKind::NsxTier1 {
        return Err(resolver.error(spanned, "an NSX Tier-1 does not speak BGP; its Tier-0 does"));
    }
    let bgp = spanned.get_ref();
    let asn = *bgp.asn.get_ref();
    if asn == 0 {
        return Err(resolver.error(&bgp.asn, "an AS number is 1..4294967295"));
    }
    let router_id = match &bgp.router_id {
        Some(id) => *id.get_ref(),
        None => interfaces
            .iter()
            .map(|i| i.address.addr())
            .max()
            .unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let neighbors = bgp
        .neighbors
        .iter()
        .map(|n| BgpNeighbor {
            ip: *n.get_ref().ip.get_ref(),
            asn: *n.get_ref().asn.get_ref(),
            route_reflector_client: n.get_ref().route_reflector_client,
        })
        .collect();
    let redistribute = match &bgp.redistribute {
        Some(list) => list
            .iter()
            .map(|text| match text.get_ref().as_str() {
                "connected" => Ok(Redistribute::Connected),
                "static" => Ok(Redistribute::Static),
                other => match other.strip_prefix("t1-") {
                    Some(rest) if kind == RouterKind::NsxTier0 => {
                        let kind_text = toml::Spanned::new(text.span(), rest.to_string());
                        route_kind(resolver, &kind_text).map(Redistribute::Tier1)
                    }
                    _ => Err(resolver.error(
                        text,
                        format!("unknown redistribution `{other}` (expected connected, static, or on a Tier-0 t1-connected, t1-static, t1-nat, t1-lb-vip)"),
                    )),
                },
            })
            .collect::<Result<Vec<_>>>()?,
        None if kind == RouterKind::NsxTier0 => vec![
            Redistribute::Connected,
            Redistribute::Tier1(RouteKind::Connected),
            Redistribute::Tier1(RouteKind::Static),
            Redistribute::Tier1(RouteKind::Nat),
            Redistribute::Tier1(RouteKind::LbVip),
        ],
        None => vec![Redistribute::Connected],
    };
    Ok(Some(Bgp {
        asn,
        router_id,
        neighbors,
        redistribute,
    }))
}

/// Every NSX Tier-1 uplink becomes a transit link: a /31 segment of its own (named
/// `transit-T1`, the interface `transit` at both ends) between the Tier-1 and its
/// Tier-0, the Tier-0 holding the other address of the /31. Returns the new
/// segments; `first_segment` is the id the first one gets.
pub(super) fn resolve_uplinks(
    resolver: &Resolver,
    file: &TopologyFile,
    routers: &mut [Router],
    first_segment: SegmentId,
) -> Result<Vec<Segment>> {
    let mut transit = Vec::new();
    for (index, spanned) in file.router.iter().enumerate() {
        let config = spanned.get_ref();
        let Some(uplink) = &config.uplink else {
            continue;
        };
        let uplink_config = uplink.get_ref();
        if routers[index].kind != RouterKind::NsxTier1 {
            return Err(resolver.error(uplink, "`uplink` is for an NSX Tier-1 (kind = \"nsx-t1\")"));
        }
        let target = uplink_config.router.get_ref();
        let Some(tier0) = routers.iter().position(|r| &r.name == target) else {
            return Err(
                resolver.error(&uplink_config.router, format!("no router named `{target}`"))
            );
        };
        if routers[tier0].kind != RouterKind::NsxTier0 {
            return Err(resolver.error(
                &uplink_config.router,
                format!(
                    "a Tier-1 uplinks to a Tier-0, and `{target}` is not one (kind = \"nsx-t0\")"
                ),
            ));
        }
        let tier1_address = *uplink_config.ip.get_ref();
        let link = Ipv4Net::new(tier1_address, 31)
            .map_err(|e| resolver.error(&uplink_config.ip, e.to_string()))?
            .trunc();
        let network = u32::from(link.network());
        let tier0_address = if u32::from(tier1_address) == network {
            Ipv4Addr::from(network + 1)
        } else {
            Ipv4Addr::from(network)
        };
        let segment = first_segment + transit.len();
        let name = routers[index].name.clone();
        transit.push(Segment {
            name: format!("transit-{name}"),
            cidr: link,
            gateway: None,
            gateway_ip: None,
            mtu: 1500,
            latency_ns: 1_000,
        });
        let interface = |address: Ipv4Addr| RouterInterface {
            segment,
            address: Ipv4Net::new(address, 31).unwrap_or_default(),
            name: Some("transit"),
        };
        routers[index].interfaces.push(interface(tier1_address));
        routers[tier0].interfaces.push(interface(tier0_address));
        routers[index].uplink = Some(Uplink {
            tier0,
            segment,
            tier1_address,
            tier0_address,
        });
    }
    Ok(transit)
}

/// Every BGP neighbor must be on a subnet the speaker is attached to (single-hop
/// sessions, as NSX edges and ToRs run them).
pub(super) fn check_bgp_neighbors(
    resolver: &Resolver,
    file: &TopologyFile,
    routers: &[Router],
    segments: &[Segment],
) -> Result<()> {
    for (router, config) in routers.iter().zip(&file.router) {
        let (Some(bgp), Some(bgp_config)) = (&router.bgp, &config.get_ref().bgp) else {
            continue;
        };
        for (neighbor, neighbor_config) in bgp.neighbors.iter().zip(&bgp_config.get_ref().neighbors)
        {
            if !router.is_attached_to(segments, neighbor.ip) {
                return Err(resolver.error(
                    &neighbor_config.get_ref().ip,
                    format!(
                        "BGP neighbor {} is not on a subnet router {} is attached to",
                        neighbor.ip, router.name
                    ),
                ));
            }
        }
    }
    Ok(())
}
