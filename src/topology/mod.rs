//! The topology file: its serde mirror ([`config`]), the resolved model ([`model`])
//! and the checks between them ([`resolve`]; clusters and expectations in their own
//! private modules). Errors carry `file:line:column`.

mod cluster;
pub mod config;
pub mod endpoint;
pub mod error;
mod expect;
pub mod model;
pub mod resolve;

pub use error::{ConfigError, Source};
pub use model::*;

/// Parses and resolves topology text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Topology, ConfigError> {
    let source = Source::new(file, text);
    let parsed: config::TopologyFile = toml::from_str(text).map_err(|error| {
        let message = error.message().trim().replace('\n', "; ");
        source.error(error.span(), message)
    })?;
    resolve::resolve(&parsed, &source)
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
    })?;
    parse(&file, &text)
}
