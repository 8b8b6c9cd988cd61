//! The NSX distributed firewall (`[[dfw]]`), resolved as NSX reads it (reference
//! §e): sections in categories Ethernet > Emergency > Infrastructure > Environment >
//! Application, applied to a segment's VM ports or to named VMs (the Kubernetes
//! nodes, the hosts), rules top-down with sources, destinations and services, then
//! the default Layer-3 rule (`[topology] dfw_default`, allow unless set).

use super::config::Text;
use super::resolve::{Resolver, Result};
use crate::datapath::policy::PolicyAction;
use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

/// `[[dfw]]`: one DFW section (an NSX security policy).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DfwConfig {
    pub name: Text,
    #[serde(default)]
    pub category: Option<Text>,
    pub applied_to: Spanned<DfwAppliedToConfig>,
    #[serde(default)]
    pub rules: Vec<Spanned<DfwRuleConfig>>,
}

/// `{ segment = "NAME" }` or `{ vms = ["NODE", "HOST", …] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DfwAppliedToConfig {
    #[serde(default)]
    pub segment: Option<Text>,
    #[serde(default)]
    pub vms: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DfwRuleConfig {
    pub name: Text,
    pub action: Text,
    #[serde(default)]
    pub sources: Vec<Text>,
    #[serde(default)]
    pub destinations: Vec<Text>,
    #[serde(default)]
    pub services: Vec<Text>,
    /// `in`, `out` or `in_out` (default), as the VM sees it.
    #[serde(default)]
    pub direction: Option<Text>,
}

/// NSX's categories, in evaluation order.
pub const CATEGORIES: [&str; 5] = [
    "ethernet",
    "emergency",
    "infrastructure",
    "environment",
    "application",
];

/// A resolved DFW section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfwSection {
    pub name: String,
    /// Index in [`CATEGORIES`].
    pub category: usize,
    /// The VMs (node and host names) whose vNICs it filters.
    pub vms: Vec<String>,
    pub rules: Vec<DfwRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DfwRule {
    pub name: String,
    pub action: PolicyAction,
    /// None: any.
    pub sources: Option<Vec<Ipv4Net>>,
    pub destinations: Option<Vec<Ipv4Net>>,
    /// (protocol, port range); None: any service.
    pub services: Option<Vec<DfwService>>,
    /// Applies to traffic into the VM.
    pub inbound: bool,
    /// Applies to traffic out of the VM.
    pub outbound: bool,
}

/// `tcp/443`, `udp/1000-2000`, `icmp`: a protocol and an optional port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DfwService {
    pub protocol: u8,
    pub ports: Option<(u16, u16)>,
}

/// Resolves the `[[dfw]]` sections; `vm_segment` says which segment a node or host
/// named so is on.
pub(super) fn resolve_dfw(
    resolver: &Resolver,
    sections: &[Spanned<DfwConfig>],
    segment_of: &dyn Fn(&Text) -> Result<usize>,
    vms: &[(String, usize)],
) -> Result<Vec<DfwSection>> {
    super::resolve::unique_names(resolver, "dfw", sections.iter().map(|s| &s.get_ref().name))?;
    let mut resolved = Vec::new();
    for spanned in sections {
        let config = spanned.get_ref();
        let category = match &config.category {
            None => CATEGORIES.len() - 1,
            Some(text) => CATEGORIES
                .iter()
                .position(|c| *c == text.get_ref())
                .ok_or_else(|| {
                    resolver.error(
                        text,
                        format!(
                            "unknown category `{}` (expected ethernet, emergency, infrastructure, environment or application)",
                            text.get_ref()
                        ),
                    )
                })?,
        };
        let applied_to = config.applied_to.get_ref();
        let members: Vec<String> = match (&applied_to.segment, &applied_to.vms) {
            (Some(segment), None) => {
                let segment = segment_of(segment)?;
                vms.iter()
                    .filter(|(_, on)| *on == segment)
                    .map(|(name, _)| name.clone())
                    .collect()
            }
            (None, Some(names)) => names
                .iter()
                .map(|name| {
                    vms.iter()
                        .find(|(vm, _)| vm == name.get_ref())
                        .map(|(vm, _)| vm.clone())
                        .ok_or_else(|| {
                            resolver
                                .error(name, format!("no node or host named `{}`", name.get_ref()))
                        })
                })
                .collect::<Result<_>>()?,
            _ => {
                return Err(resolver.error(
                    &config.applied_to,
                    "applied_to takes either { segment = \"NAME\" } or { vms = [...] }",
                ))
            }
        };
        let rules = config
            .rules
            .iter()
            .map(|rule| resolve_rule(resolver, rule))
            .collect::<Result<Vec<_>>>()?;
        resolved.push(DfwSection {
            name: config.name.get_ref().clone(),
            category,
            vms: members,
            rules,
        });
    }
    Ok(resolved)
}

fn resolve_rule(resolver: &Resolver, spanned: &Spanned<DfwRuleConfig>) -> Result<DfwRule> {
    let config = spanned.get_ref();
    let action = match config.action.get_ref().to_ascii_lowercase().as_str() {
        "allow" => PolicyAction::Allow,
        "drop" => PolicyAction::Drop,
        "reject" => PolicyAction::Reject,
        other => {
            return Err(resolver.error(
                &config.action,
                format!("unknown DFW action `{other}` (expected allow, drop or reject)"),
            ))
        }
    };
    let (inbound, outbound) = match config.direction.as_ref().map(|d| d.get_ref().as_str()) {
        None | Some("in_out") => (true, true),
        Some("in") => (true, false),
        Some("out") => (false, true),
        Some(other) => {
            return Err(resolver.error(
                config.direction.as_ref().unwrap_or(&config.name),
                format!("unknown direction `{other}` (expected in, out or in_out)"),
            ))
        }
    };
    Ok(DfwRule {
        name: config.name.get_ref().clone(),
        action,
        sources: addresses(resolver, &config.sources)?,
        destinations: addresses(resolver, &config.destinations)?,
        services: services(resolver, &config.services)?,
        inbound,
        outbound,
    })
}

/// `any` (or nothing) for every address; otherwise CIDRs or single addresses.
fn addresses(resolver: &Resolver, texts: &[Text]) -> Result<Option<Vec<Ipv4Net>>> {
    if texts.is_empty()
        || texts
            .iter()
            .any(|t| t.get_ref().eq_ignore_ascii_case("any"))
    {
        return Ok(None);
    }
    texts
        .iter()
        .map(|text| {
            let value = text.get_ref().trim();
            value
                .parse::<Ipv4Net>()
                .map(|net| net.trunc())
                .or_else(|_| value.parse::<std::net::Ipv4Addr>().map(Ipv4Net::from))
                .map_err(|_| {
                    resolver.error(
                        text,
                        format!("`{value}` is not `any`, an address or a CIDR"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `any`, `icmp`, `tcp/PORT`, `udp/LOW-HIGH`.
fn services(resolver: &Resolver, texts: &[Text]) -> Result<Option<Vec<DfwService>>> {
    if texts.is_empty()
        || texts
            .iter()
            .any(|t| t.get_ref().eq_ignore_ascii_case("any"))
    {
        return Ok(None);
    }
    let parse = |text: &Text| -> Option<DfwService> {
        let value = text.get_ref().trim().to_ascii_lowercase();
        if value == "icmp" {
            return Some(DfwService {
                protocol: crate::wire::PROTOCOL_ICMP,
                ports: None,
            });
        }
        let (protocol, ports) = value.split_once('/')?;
        let protocol = match protocol {
            "tcp" => crate::wire::PROTOCOL_TCP,
            "udp" => crate::wire::PROTOCOL_UDP,
            _ => return None,
        };
        let (low, high) = match ports.split_once('-') {
            Some((low, high)) => (low.parse().ok()?, high.parse().ok()?),
            None => {
                let port = ports.parse().ok()?;
                (port, port)
            }
        };
        (low <= high && low > 0).then_some(DfwService {
            protocol,
            ports: Some((low, high)),
        })
    };
    texts
        .iter()
        .map(|text| {
            parse(text).ok_or_else(|| {
                resolver.error(
                    text,
                    format!(
                        "service `{}` is not any, icmp, tcp/PORT, udp/PORT or tcp/LOW-HIGH",
                        text.get_ref()
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}
