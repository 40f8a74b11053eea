//! The error reported for a config file.

use std::fmt;

/// One problem with a config file: where it is and what to do about it.
///
/// Displays as `file:line:column: path: message`, e.g.
/// `config.yaml:12:14: routes[0].cluster: unknown cluster "ech"; define it under `clusters`
/// or fix the name (known: echo)`. Parts that are unknown are left out (an unreadable file
/// has no line, a problem with the whole document has an empty path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name as given to [`Config::from_yaml_str`](crate::Config::from_yaml_str) or
    /// the path given to [`Config::load`](crate::Config::load).
    pub file: String,
    /// 1-based line of the offending YAML node, when known.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the offending YAML node, when known.
    pub column: Option<usize>,
    /// Path of the offending field, e.g. `routes[0].match.prefix`; empty for the whole
    /// document.
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}
