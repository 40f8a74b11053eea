//! [`Fatal`]: a startup failure, reported as one line before exiting 1; and the words for
//! the most common one, an address that can't be listened on.

use std::{fmt, io};

/// A failure that stops switchback before or while it starts: printed as one line that says
/// what failed and how to fix it, then the process exits 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fatal(pub(crate) String);

impl Fatal {
    /// A failure with this message.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// Writes a line to standard output; a closed or full stdout is no reason to panic (as
/// `println!` would).
pub(crate) fn print_out(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Writes a line to standard error, never panicking.
pub(crate) fn print_err(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// A bind error in words a person can act on, ending with `fix`.
pub(crate) fn why_not_listening(e: &io::Error, fix: &str) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            format!("the address is already in use by another program; stop it or {fix}")
        }
        io::ErrorKind::AddrNotAvailable => format!("no local interface has this address; {fix}"),
        io::ErrorKind::PermissionDenied => {
            format!("permission denied (ports below 1024 need privileges); {fix}")
        }
        _ => format!("{e}; {fix}"),
    }
}
