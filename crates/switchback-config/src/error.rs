//! The error reported for a config file, and [`Ctx`], which collects them.

use std::fmt;

use crate::tree::Pos;

/// One problem with a config file: where it is and what to do about it.
///
/// Displays as `file:line:column: path: message`, e.g.
/// `config.yaml:12:14: routes[0].cluster: unknown cluster "ech"; did you mean `echo`?
/// (known: echo, other)`. Parts that are unknown are left out (an unreadable file has no
/// line, a problem with the whole document has an empty path). A hint, when there is one,
/// follows on a line of its own (`  hint: ...`), and a syntax error ends with a line saying
/// that it is the only error shown.
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
    /// More help where the message alone may not lead to the fix, e.g. which line's
    /// indentation to check.
    pub hint: Option<String>,
    /// Whether this is a YAML syntax error. The file cannot be read past one, so it is the
    /// only error reported and nothing after it has been checked.
    pub syntax: bool,
}

impl ConfigError {
    /// The config file at `file` could not be read (`e` says why).
    pub fn unreadable(file: String, e: &std::io::Error) -> Self {
        Self {
            file,
            line: None,
            column: None,
            path: String::new(),
            message: format!("cannot read the config file: {e}"),
            hint: None,
            syntax: false,
        }
    }
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
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        if self.syntax {
            f.write_str(
                "\n  note: only the first syntax error can be shown: the file cannot be read past it, so nothing after it was checked",
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects the errors found in one file, while it is read and while it is validated.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(file: &'a str) -> Self {
        Ctx {
            file,
            errors: Vec::new(),
        }
    }

    /// The folder the config file's relative paths are read from.
    pub(crate) fn base_dir(&self) -> &std::path::Path {
        crate::tls::base_dir(self.file)
    }

    /// An error at `at` in the field at `path`.
    pub(crate) fn error(&mut self, at: Pos, path: &str, message: impl Into<String>) {
        self.error_with_hint(at, path, message, None);
    }

    /// An error with a hint line.
    pub(crate) fn error_with_hint(
        &mut self,
        at: Pos,
        path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: Some(at.line),
            column: Some(at.column),
            path: path.to_owned(),
            message: message.into(),
            hint,
            syntax: false,
        });
    }

    /// The errors, in the order they appear in the file (errors at the same place in the
    /// order they were found).
    pub(crate) fn into_errors(self) -> Vec<ConfigError> {
        let mut errors = self.errors;
        errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(0)));
        errors
    }
}
