//! Logging for the binaries: slog with a synchronous drain (no line is lost
//! when a hook exits), to a file opened in append mode or to stderr. Never
//! to stdout: stdout is protocol for hooks and shims.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use slog::{o, Drain, Logger};

/// Environment variable naming a log file that overrides the default.
pub const ENV_LOG: &str = "KATA_SRIOV_LOG";

fn build<W: io::Write + Send + 'static>(w: W, component: &'static str) -> Logger {
    let decorator = slog_term::PlainSyncDecorator::new(w);
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    Logger::root(
        drain,
        o!("component" => component, "pid" => std::process::id()),
    )
}

/// A logger writing to stderr.
pub fn stderr(component: &'static str) -> Logger {
    build(io::stderr(), component)
}

/// Opens `path` to append log lines: 0600, created when missing, a
/// regular file only (not a symlink, never a FIFO that would block).
pub fn open(path: &Path) -> io::Result<std::fs::File> {
    crate::file::open_regular(
        OpenOptions::new().append(true).create(true).mode(0o600),
        path,
    )
}

/// A logger appending to `path` (see [`open`]); stderr when the file
/// cannot be opened.
pub fn file(path: &Path, component: &'static str) -> Logger {
    match open(path) {
        Ok(f) => build(f, component),
        Err(_) => stderr(component),
    }
}

/// `$KATA_SRIOV_LOG` if set, else `default` (None: stderr).
pub fn from_env(default: Option<&Path>, component: &'static str) -> Logger {
    match std::env::var_os(ENV_LOG) {
        Some(p) if !p.is_empty() => file(Path::new(&p), component),
        _ => match default {
            Some(p) => file(p, component),
            None => stderr(component),
        },
    }
}

/// A logger that drops everything (tests, library callers without one).
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
