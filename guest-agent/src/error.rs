//! The one I/O error type of kata-sriov (guest and host): what was being
//! done, on which path, and the OS error as its source; and [`chain`], the
//! one-line rendering of an error with its causes.

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};

/// An I/O error with the operation and the path. Its message names both;
/// the OS error is its source, not repeated in the message.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct IoError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> IoError {
        IoError {
            op,
            path: path.into(),
            source,
        }
    }

    /// For `map_err`: `fs::read(&p).map_err(IoError::at("reading", &p))?`.
    pub fn at<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> IoError + 'p {
        move |source| IoError::new(op, path, source)
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// Whether an exclusive create found the file there already.
    pub fn already_exists(&self) -> bool {
        self.kind() == io::ErrorKind::AlreadyExists
    }
}

/// An error and each of its causes, outermost first, joined by ": " on one
/// line (newlines in a message become spaces).
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_then_source_once() {
        let e = IoError::new(
            "reading",
            "/x/y",
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        assert_eq!(e.to_string(), "reading /x/y");
        let c = chain(&e);
        assert!(c.starts_with("reading /x/y: No such file"), "{c}");
        assert_eq!(c.matches("No such file").count(), 1);
    }
}
