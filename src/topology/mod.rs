//! The topology file: its serde mirror ([`config`]), the resolved model ([`model`])
//! and the checks between them ([`resolve`]; clusters and expectations in their own
//! private modules). Errors carry `file:line:column`.

mod calico;
mod cluster;
pub mod config;
pub mod dfw;
pub mod egress;
pub mod endpoint;
pub mod error;
mod expect;
pub mod model;
pub mod policy;
pub mod resolve;
mod routing;
pub mod selector;
mod service;

pub use error::{ConfigError, Source};
pub use model::*;

/// Parses and resolves topology text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Topology, ConfigError> {
    let source = Source::new(file, text);
    let parsed: config::TopologyFile = toml::from_str(text).map_err(|error| {
        let message = error.message().trim().replace('\n', "; ");
        let key = error.span().and_then(|span| key_at(text, span.start));
        source.error(
            error.span(),
            error::in_users_words(&message, key.as_deref()),
        )
    })?;
    resolve::resolve(&parsed, &source)
}

/// The key being assigned at byte `offset`: the nearest `key =` before it on its
/// line (`translated` in `{ match_source = "…", translated = "…" }`, `mtu` in
/// `mtu = 70000`).
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let before = text.get(start..offset)?;
    let line = text[start..].lines().next()?;
    // The value may start at `offset` itself, or the span may cover the whole line.
    let head = if before.contains('=') { before } else { line };
    let equals = head.rfind('=')?;
    let key = head[..equals].trim_end();
    let key = key
        .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()?;
    (!key.is_empty()).then(|| key.to_string())
}

/// Reads, parses and resolves a topology file.
pub fn load(path: &std::path::Path) -> Result<Topology, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        file: file.clone(),
        line: 1,
        column: 1,
        message: format!("cannot read the file: {error}"),
        snippet: String::new(),
        also: Vec::new(),
        hidden: 0,
    })?;
    parse(&file, &text)
}
