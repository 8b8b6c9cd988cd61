//! `ConfigError`: what the user wrote wrong, located as `file:line:column` with the
//! offending text, so the CLI can print it and exit 2 without writing anything.

use std::ops::Range;

/// One mistake in a topology file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}{snippet}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The offending line, indented, with a caret under the column (or empty).
    pub snippet: String,
}

/// The text of a topology file and its name, for locating errors.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: String,
    pub text: String,
}

impl Source {
    pub fn new(file: impl Into<String>, text: impl Into<String>) -> Self {
        Source {
            file: file.into(),
            text: text.into(),
        }
    }

    /// An error at byte range `span` (or at the top of the file when unknown).
    pub fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let offset = span
            .map(|range| range.start)
            .unwrap_or(0)
            .min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|index| index + 1).unwrap_or(0);
        let column = self.text[line_start..offset].chars().count() + 1;
        let line_text = self.text[line_start..].lines().next().unwrap_or("");
        let snippet = if line_text.trim().is_empty() {
            String::new()
        } else {
            format!("\n    {line_text}\n    {}^", " ".repeat(column - 1))
        };
        ConfigError {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
            snippet,
        }
    }
}
