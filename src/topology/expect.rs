//! `[[expect]]`: what the user expects of a flow or a router, resolved against the model.

use super::config::*;
use super::error::ConfigError;
use super::model::*;
use super::resolve::*;
use toml::Spanned;

type Result<T> = std::result::Result<T, ConfigError>;

pub(super) fn resolve_expect(
    resolver: &Resolver,
    topology: &mut Topology,
    spanned: &Spanned<ExpectConfig>,
) -> Result<Expectation> {
    let config = spanned.get_ref();
    let text = describe_expect(config);
    if let Some(router_name) = &config.router {
        let router = topology
            .routers
            .iter()
            .position(|r| &r.name == router_name.get_ref())
            .ok_or_else(|| {
                resolver.error(
                    router_name,
                    format!("no router named `{}`", router_name.get_ref()),
                )
            })?;
        let prefix = config
            .prefix
            .as_ref()
            .ok_or_else(|| resolver.error(spanned, "a routing expectation needs `prefix`"))?;
        return Ok(Expectation::Route {
            text,
            router,
            prefix: prefix.get_ref().trunc(),
            present: config.present.unwrap_or(true),
            next_hop: config.next_hop.as_ref().map(|h| *h.get_ref()),
        });
    }
    let flow = match (&config.flow, &config.from, &config.to) {
        (Some(name), _, _) => topology
            .flows
            .iter()
            .position(|f| &f.name == name.get_ref())
            .ok_or_else(|| resolver.error(name, format!("no flow named `{}`", name.get_ref())))?,
        (None, Some(from), Some(to)) => {
            // A from/to expectation runs its own probe flow.
            let flow = super::endpoint::probe_flow(
                resolver,
                topology,
                &format!("expect-{}", topology.expectations.len() + 1),
                from,
                to,
                config.protocol.as_ref(),
                config.port.as_ref(),
            )?;
            topology.flows.push(flow);
            topology.flows.len() - 1
        }
        _ => {
            return Err(resolver.error(
                spanned,
                "an expectation needs `flow`, or `from` and `to`, or `router` and `prefix`",
            ))
        }
    };
    let verdict = match &config.verdict {
        None => None,
        Some(text) => Some(match text.get_ref().as_str() {
            "delivered" => Verdict::Delivered,
            "dropped" => Verdict::Dropped,
            "no-reply" => Verdict::NoReply,
            other => {
                return Err(resolver.error(
                    text,
                    format!("unknown verdict `{other}` (expected delivered, dropped or no-reply)"),
                ))
            }
        }),
    };
    let mut via = Vec::new();
    for device in config.via.iter().flatten() {
        if !topology.has_device(device.get_ref()) {
            return Err(resolver.error(
                device,
                format!(
                    "no device named `{}` (routers, hosts, nodes and pods as NS/NAME)",
                    device.get_ref()
                ),
            ));
        }
        via.push(device.get_ref().clone());
    }
    Ok(Expectation::Flow {
        text,
        flow,
        verdict,
        dropped_by: config
            .dropped_by
            .as_ref()
            .map(|d| d.get_ref().clone())
            .filter(|d| !d.is_empty()),
        via,
        seen_source: config.seen_source.as_ref().map(|s| *s.get_ref()),
    })
}

/// How an expectation reads in reports: its keys as written.
pub(super) fn describe_expect(config: &ExpectConfig) -> String {
    let mut parts = Vec::new();
    let mut text = |key: &str, value: &Option<Text>| {
        if let Some(value) = value {
            parts.push(format!("{key}={}", value.get_ref()));
        }
    };
    text("flow", &config.flow);
    text("from", &config.from);
    text("to", &config.to);
    text("protocol", &config.protocol);
    text("router", &config.router);
    text("verdict", &config.verdict);
    text("dropped_by", &config.dropped_by);
    if let Some(port) = &config.port {
        parts.push(format!("port={}", port.get_ref()));
    }
    if let Some(via) = &config.via {
        parts.push(format!(
            "via=[{}]",
            via.iter()
                .map(|d| d.get_ref().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(seen) = &config.seen_source {
        parts.push(format!("seen_source={}", seen.get_ref()));
    }
    if let Some(prefix) = &config.prefix {
        parts.push(format!("prefix={}", prefix.get_ref()));
    }
    if let Some(present) = config.present {
        parts.push(format!("present={present}"));
    }
    if let Some(next_hop) = &config.next_hop {
        parts.push(format!("next_hop={}", next_hop.get_ref()));
    }
    parts.join(" ")
}
