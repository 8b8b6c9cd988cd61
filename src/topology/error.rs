//! `ConfigError`: what the user wrote wrong, located as `file:line:column` with the
//! offending text, so the CLI can print it and exit 2 without writing anything.

use std::ops::Range;

/// A mistake in a topology file — and, in `also`, the further independent mistakes
/// found in the same pass (up to [`MAX_REPORTED`] in all), so a user fixes a file in
/// one round rather than one error at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The offending line, indented, with a caret under the column (or empty).
    pub snippet: String,
    pub also: Vec<ConfigError>,
    /// Further errors found beyond [`MAX_REPORTED`], not shown.
    pub hidden: usize,
}

/// Errors reported from one file at most.
pub const MAX_REPORTED: usize = 20;

impl ConfigError {
    /// The first of `errors`, carrying the rest (at most [`MAX_REPORTED`] in all).
    pub fn many(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        if errors.is_empty() {
            return None;
        }
        let total = errors.len();
        errors.truncate(MAX_REPORTED);
        let mut first = errors.remove(0);
        first.also = errors;
        first.hidden = total.saturating_sub(MAX_REPORTED);
        Some(first)
    }

    /// Every error this one reports, itself first.
    pub fn all(&self) -> impl Iterator<Item = &ConfigError> {
        std::iter::once(self).chain(self.also.iter())
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (index, error) in self.all().enumerate() {
            if index > 0 {
                writeln!(formatter)?;
            }
            write!(
                formatter,
                "{}:{}:{}: {}{}",
                error.file, error.line, error.column, error.message, error.snippet
            )?;
        }
        if self.hidden > 0 {
            write!(formatter, "\n… and {} more errors", self.hidden)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

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
            also: Vec::new(),
            hidden: 0,
        }
    }
}

/// Rewrites a deserializer message in the user's words: "expected u16" becomes "a
/// port number 0–65535" for a port (or "a whole number 0–65535"), "invalid type:
/// string" becomes what was written instead, and so on. `key` is the key being set.
pub fn in_users_words(message: &str, key: Option<&str>) -> String {
    let expected = |wanted: &str| -> String {
        match wanted {
            "u8" => "a whole number 0–255".into(),
            "u16" if key.is_some_and(|k| k.contains("port")) => "a port number 0–65535".into(),
            "u16" if key.is_some_and(|k| k.contains("mtu")) => "an MTU in bytes (576–9216)".into(),
            "u16" => "a whole number 0–65535".into(),
            "u32" => "a whole number 0–4294967295".into(),
            "u64" | "usize" => "a whole number 0 or more".into(),
            "i64" => "a whole number".into(),
            "f64" => "a number".into(),
            "a boolean" => "true or false".into(),
            other => other.to_string(),
        }
    };
    let found = |what: &str| -> String {
        if let Some(rest) = what.strip_prefix("integer ") {
            format!("the number {}", rest.trim_matches('`'))
        } else if let Some(rest) = what.strip_prefix("string ") {
            format!("the text {rest}")
        } else if let Some(rest) = what.strip_prefix("boolean ") {
            rest.trim_matches('`').to_string()
        } else if let Some(rest) = what.strip_prefix("floating point ") {
            format!("the number {}", rest.trim_matches('`'))
        } else {
            what.to_string()
        }
    };
    // ipnet / std address parsers speak of syntax; say what the field wants.
    let syntax = [
        "invalid IPv4 address syntax",
        "invalid IP address syntax",
        "invalid IPv4 network syntax",
        "invalid IP network syntax",
    ];
    if syntax.contains(&message) {
        let subject = key.map_or("this value".to_string(), |k| format!("`{k}`"));
        let network = key.is_some_and(|k| {
            ["cidr", "prefix", "source", "pool", "range", "except"]
                .iter()
                .any(|word| k.contains(word))
        });
        return if network {
            format!("{subject} must be an IPv4 network such as 10.30.0.0/24 ({message})")
        } else {
            format!("{subject} must be one IPv4 address such as 10.30.0.5 ({message})")
        };
    }
    for prefix in ["invalid value: ", "invalid type: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((what, wanted)) = rest.split_once(", expected ") {
                let subject = key.map_or("this value".to_string(), |k| format!("`{k}`"));
                return format!(
                    "{subject} must be {}, not {}",
                    expected(wanted),
                    found(what)
                );
            }
        }
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserializer_messages_read_as_the_user_wrote_the_file() {
        assert_eq!(
            in_users_words("invalid value: integer `70000`, expected u16", Some("port")),
            "`port` must be a port number 0–65535, not the number 70000"
        );
        assert_eq!(
            in_users_words("invalid type: string \"big\", expected u16", Some("mtu")),
            "`mtu` must be an MTU in bytes (576–9216), not the text \"big\""
        );
        assert_eq!(
            in_users_words(
                "invalid type: boolean `true`, expected a string",
                Some("latency")
            ),
            "`latency` must be a string, not true"
        );
        assert_eq!(
            in_users_words("unknown field `x`", None),
            "unknown field `x`"
        );
    }

    #[test]
    fn many_errors_are_reported_together_up_to_twenty() {
        let source = Source::new("t.toml", "a = 1\nb = 2\n");
        let errors: Vec<ConfigError> = (0..25)
            .map(|i| source.error(Some(i % 2 * 6..i % 2 * 6 + 1), format!("e{i}")))
            .collect();
        let error = ConfigError::many(errors).unwrap();
        assert_eq!(error.all().count(), 20);
        let text = error.to_string();
        assert!(text.starts_with("t.toml:1:1: e0"));
        assert!(text.contains("\nt.toml:2:1: e1"));
        assert!(text.ends_with("… and 5 more errors"));
    }
}
