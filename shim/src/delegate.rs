//! The shim every call is handed to, and the hand-over itself (`execve(2)`
//! with the same arguments, environment, working directory and stdin).
//!
//! Which shim, first match:
//! 1. this binary invoked as `containerd-shim-<H>-v2` (a symlink; containerd
//!    runs it for the runtime type `io.containerd.<H>.v2`, or as the
//!    handler's `runtime_path`) and `[shim.delegates]` has `H`: that
//!    absolute path (how one node fronts Kata's Go runtime and runtime-rs,
//!    whose shims share a file name; `kata-sriov configure containerd`
//!    writes both sides);
//! 2. invoked as `containerd-shim-kata-sriov-<X>-v2`: `containerd-shim-<X>-v2`;
//! 3. `[shim] delegate` from the config (default `containerd-shim-kata-v2`).
//!
//! Where: an absolute path as is; a name is looked up as containerd looks
//! up shims: `$PATH`, then beside containerd's binary (`-publish-binary`).
//! Reads `$PATH` and `/proc/self/exe`.

use std::ffi::CString;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::execv;

use kata_sriov::policy::config::ShimConfig;

/// This shim's own binary name.
pub const OWN_NAME: &str = "containerd-shim-kata-sriov-v2";
const NAME_PREFIX: &str = "containerd-shim-kata-sriov-";
const NAME_SUFFIX: &str = "-v2";

#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error("delegate shim {name:?}: not found on PATH ({path}){beside}")]
    NotFound {
        name: String,
        path: String,
        beside: String,
    },
    #[error("delegate shim {0:?}: must be a bare name or an absolute path")]
    Relative(String),
    #[error("delegate shim {0}: is this shim itself; set [shim] delegate to another shim")]
    Itself(PathBuf),
    #[error("delegate shim {path} of runtime handler {handler:?} ([shim.delegates] in the kata-sriov config): not an executable file")]
    HandlerMissing { handler: String, path: PathBuf },
    #[error("delegate shim {path}: exec failed: {cause}")]
    Exec { path: PathBuf, cause: io::Error },
}

/// Where the delegate's name came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `[shim.delegates]` for the runtime handler in the invoked name.
    Handler(String),
    /// The name this binary was invoked under.
    InvokedName,
    /// `[shim] delegate` in the config (or its default).
    Config,
}

/// The runtime handler `H` of a binary invoked as `.../containerd-shim-<H>-v2`
/// (the binary name containerd derives from `io.containerd.<H>.v2`).
pub fn handler_of(argv0: &OsStr) -> Option<&str> {
    let base = Path::new(argv0).file_name()?.to_str()?;
    let h = base
        .strip_prefix("containerd-shim-")?
        .strip_suffix(NAME_SUFFIX)?;
    (!h.is_empty()).then_some(h)
}

/// The delegate for a binary invoked as `argv0`, with the config's `[shim]`.
pub fn choose(argv0: &OsStr, shim: &ShimConfig) -> (String, Origin) {
    if let Some(h) = handler_of(argv0) {
        if let Some(p) = shim.delegates.get(h) {
            return (
                p.to_string_lossy().into_owned(),
                Origin::Handler(h.to_owned()),
            );
        }
    }
    match from_invoked_name(argv0) {
        Some(n) => (n, Origin::InvokedName),
        None => (shim.delegate.clone(), Origin::Config),
    }
}

/// `.../containerd-shim-kata-sriov-<X>-v2` → `containerd-shim-<X>-v2`.
pub fn from_invoked_name(argv0: &OsStr) -> Option<String> {
    let base = Path::new(argv0).file_name()?.to_str()?;
    let mid = base.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    let ok = !mid.is_empty()
        && !mid.starts_with('-')
        && !mid.ends_with('-')
        && mid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| format!("containerd-shim-{mid}-v2"))
}

pub fn is_executable_file(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the delegate's binary: an absolute path as is, a bare name on
/// `path_var`, then in the directory of `containerd` (the
/// `-publish-binary`). Refuses to resolve to `own_exe`.
pub fn resolve(
    name: &str,
    path_var: Option<&OsStr>,
    containerd: Option<&Path>,
    own_exe: Option<&Path>,
) -> Result<PathBuf, DelegateError> {
    let found = if name.contains('/') {
        if !name.starts_with('/') {
            return Err(DelegateError::Relative(name.to_owned()));
        }
        PathBuf::from(name)
    } else {
        let beside = containerd
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty());
        let dirs: Vec<PathBuf> = path_var
            .map(|p| std::env::split_paths(p).collect())
            .unwrap_or_default();
        dirs.iter()
            .filter(|d| !d.as_os_str().is_empty())
            .map(PathBuf::as_path)
            .chain(beside)
            .map(|d| d.join(name))
            .find(|c| is_executable_file(c))
            .ok_or_else(|| DelegateError::NotFound {
                name: name.to_owned(),
                path: path_var
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                beside: beside
                    .map(|d| format!(" nor in {}", d.display()))
                    .unwrap_or_default(),
            })?
    };
    if let Some(own) = own_exe {
        if let (Ok(a), Ok(b)) = (fs::canonicalize(&found), fs::canonicalize(own)) {
            if a == b {
                return Err(DelegateError::Itself(found));
            }
        }
    }
    Ok(found)
}

/// Replaces this process with `path` (`execv(2)`: no `$PATH` search and no
/// `/bin/sh` retry of a file the kernel cannot run, as containerd's own exec),
/// `args` after argv[0], which is the path, as containerd passes it.
/// Environment, working directory and the descriptors without close-on-exec
/// (stdin, stdout, stderr) are kept; SIGPIPE, which the Rust runtime
/// ignores, is reset to its default first. Returns only on failure.
pub fn exec(path: &Path, args: &[OsString]) -> DelegateError {
    let fail = |cause: io::Error| DelegateError::Exec {
        path: path.to_owned(),
        cause,
    };
    let argv: Result<Vec<CString>, _> = std::iter::once(path.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(|a| CString::new(a.as_bytes()))
        .collect();
    let argv = match argv {
        Ok(v) => v,
        Err(e) => return fail(io::Error::new(io::ErrorKind::InvalidInput, e)),
    };
    // SAFETY: installs the default disposition (no handler code runs in
    // this process); done right before execv, which resets handlers anyway.
    let old = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let Err(e) = execv(&argv[0], &argv);
    if let Ok(h) = old {
        // SAFETY: puts back the disposition read above (SIG_IGN or SIG_DFL).
        let _ = unsafe { signal(Signal::SIGPIPE, h) };
    }
    fail(io::Error::from(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn invoked_name_selects_the_delegate() {
        let n = |s: &str| from_invoked_name(OsStr::new(s));
        assert_eq!(
            n("/usr/local/bin/containerd-shim-kata-sriov-runc-v2").as_deref(),
            Some("containerd-shim-runc-v2")
        );
        assert_eq!(
            n("containerd-shim-kata-sriov-kata-qemu-v2").as_deref(),
            Some("containerd-shim-kata-qemu-v2")
        );
        for plain in [
            "/usr/bin/containerd-shim-kata-sriov-v2",
            "containerd-shim-kata-sriov--v2",
            "containerd-shim-kata-sriov-a/b-v2",
            "containerd-shim-kata-sriov-x",
            "shim",
        ] {
            assert_eq!(n(plain), None, "{plain}");
        }
        let cfg = ShimConfig {
            delegate: "d".into(),
            ..Default::default()
        };
        assert_eq!(
            choose(OsStr::new("/x/containerd-shim-kata-sriov-v2"), &cfg),
            ("d".to_owned(), Origin::Config)
        );
        assert_eq!(
            choose(OsStr::new("/x/containerd-shim-kata-sriov-runc-v2"), &cfg).1,
            Origin::InvokedName
        );
    }

    #[test]
    fn handler_table_selects_by_absolute_path() {
        let mut cfg = ShimConfig::default();
        cfg.delegates.insert(
            "kata-sriov-qemu-runtime-rs".into(),
            PathBuf::from("/opt/kata/runtime-rs/bin/containerd-shim-kata-v2"),
        );
        cfg.delegates.insert(
            "kata-sriov-qemu".into(),
            PathBuf::from("/opt/kata/bin/containerd-shim-kata-v2"),
        );
        let c = |a: &str| choose(OsStr::new(a), &cfg);
        assert_eq!(
            c("/usr/local/bin/containerd-shim-kata-sriov-qemu-runtime-rs-v2"),
            (
                "/opt/kata/runtime-rs/bin/containerd-shim-kata-v2".to_owned(),
                Origin::Handler("kata-sriov-qemu-runtime-rs".into())
            )
        );
        assert_eq!(
            c("containerd-shim-kata-sriov-qemu-v2").0,
            "/opt/kata/bin/containerd-shim-kata-v2"
        );
        // Not in the table: the name rule, then [shim] delegate.
        assert_eq!(
            c("/x/containerd-shim-kata-sriov-clh-v2"),
            ("containerd-shim-clh-v2".to_owned(), Origin::InvokedName)
        );
        assert_eq!(c("/x/containerd-shim-kata-sriov-v2").1, Origin::Config);
        assert_eq!(handler_of(OsStr::new("/x/containerd-shim--v2")), None);
        assert_eq!(handler_of(OsStr::new("/x/shim")), None);
    }

    fn exe(p: &Path) {
        fs::write(p, "#!/bin/sh\n").unwrap();
        fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn resolve_path_then_beside_containerd() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        for x in [&a, &b, &c] {
            fs::create_dir(x).unwrap();
        }
        exe(&b.join("shim-x"));
        exe(&c.join("shim-x"));
        fs::write(a.join("shim-x"), "not executable").unwrap();
        let path = std::env::join_paths([&a, &b]).unwrap();
        let got = resolve("shim-x", Some(&path), Some(&c.join("containerd")), None).unwrap();
        assert_eq!(got, b.join("shim-x"));
        let only_a = std::env::join_paths([&a]).unwrap();
        let got = resolve("shim-x", Some(&only_a), Some(&c.join("containerd")), None).unwrap();
        assert_eq!(got, c.join("shim-x"));
        let e = resolve("shim-y", Some(&only_a), Some(&c.join("containerd")), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shim-y") && e.contains(&c.display().to_string()),
            "{e}"
        );
        assert!(matches!(
            resolve("rel/shim", None, None, None),
            Err(DelegateError::Relative(_))
        ));
        let abs = c.join("shim-x");
        assert_eq!(
            resolve(abs.to_str().unwrap(), None, None, None).unwrap(),
            abs
        );
    }

    #[test]
    fn resolve_refuses_itself() {
        let d = tempfile::tempdir().unwrap();
        let own = d.path().join("real");
        exe(&own);
        symlink(&own, d.path().join("containerd-shim-kata-v2")).unwrap();
        let path = d.path().as_os_str().to_owned();
        let e = resolve("containerd-shim-kata-v2", Some(&path), None, Some(&own)).unwrap_err();
        assert!(matches!(e, DelegateError::Itself(_)), "{e}");
    }
}
