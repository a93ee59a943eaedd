//! The command line containerd gives a runtime v2 shim, read leniently:
//! `-namespace NS -address ADDR -publish-binary PATH -id ID [-debug]
//! [-bundle DIR] ACTION`, in Go's `flag` syntax (`-f v`, `-f=v`, `--f v`,
//! `--f=v`, `--` ends the flags). Nothing is rejected: whatever is not
//! understood is ignored here and passed to the delegate untouched, which
//! owns the real parsing.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Flags that take a value (those of containerd 1.6 to 2.x and of the
/// Go shim library). Any other flag is taken as a boolean.
const VALUE_FLAGS: &[&str] = &[
    "namespace",
    "id",
    "address",
    "publish-binary",
    "bundle",
    "socket",
];

/// What the shim needs from its arguments.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShimArgs {
    pub namespace: Option<String>,
    pub id: Option<String>,
    pub address: Option<String>,
    /// containerd's own binary (`-publish-binary`).
    pub publish_binary: Option<PathBuf>,
    /// `-bundle` (containerd passes it to `delete`).
    pub bundle: Option<PathBuf>,
    pub debug: bool,
    /// The first argument that is not a flag: `start`, `delete`, ...
    pub action: Option<String>,
}

impl ShimArgs {
    /// Parses the arguments after the program name.
    pub fn parse<I, S>(args: I) -> ShimArgs
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut out = ShimArgs::default();
        let mut i = 0;
        while i < args.len() {
            let raw = args[i].as_bytes();
            i += 1;
            if raw == b"--" {
                out.action = args.get(i).map(|a| a.to_string_lossy().into_owned());
                break;
            }
            let flag = match raw {
                [b'-', b'-', rest @ ..] | [b'-', rest @ ..] if !rest.is_empty() => rest,
                _ => {
                    out.action = Some(String::from_utf8_lossy(raw).into_owned());
                    break;
                }
            };
            let (name, inline) = match flag.iter().position(|&b| b == b'=') {
                Some(p) => (&flag[..p], Some(&flag[p + 1..])),
                None => (flag, None),
            };
            let name = String::from_utf8_lossy(name);
            let value: Option<OsString> = if VALUE_FLAGS.contains(&name.as_ref()) {
                match inline {
                    Some(v) => Some(OsStr::from_bytes(v).to_owned()),
                    None => {
                        let v = args.get(i).cloned();
                        i += 1;
                        v
                    }
                }
            } else {
                None
            };
            let text = value.as_ref().map(|v| v.to_string_lossy().into_owned());
            match name.as_ref() {
                "namespace" => out.namespace = text,
                "id" => out.id = text,
                "address" => out.address = text,
                "publish-binary" => out.publish_binary = value.map(PathBuf::from),
                "bundle" => out.bundle = value.map(PathBuf::from),
                "debug" => out.debug = !matches!(inline, Some(b"false") | Some(b"0") | Some(b"f")),
                _ => {}
            }
        }
        out
    }

    /// The lease owner: `<namespace>/<id>`.
    pub fn owner(&self) -> Option<String> {
        kata_sriov::policy::owner::for_container(self.namespace.as_deref()?, self.id.as_deref()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_16_start_line() {
        let a = ShimArgs::parse([
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ]);
        assert_eq!(a.namespace.as_deref(), Some("k8s.io"));
        assert_eq!(
            a.address.as_deref(),
            Some("/run/containerd/containerd.sock")
        );
        assert_eq!(
            a.publish_binary.as_deref(),
            Some(std::path::Path::new("/usr/bin/containerd"))
        );
        assert_eq!(a.id.as_deref(), Some("abc"));
        assert!(a.debug);
        assert_eq!(a.action.as_deref(), Some("start"));
        assert_eq!(a.owner().as_deref(), Some("k8s.io/abc"));
    }

    #[test]
    fn equals_double_dash_and_terminator() {
        let a = ShimArgs::parse([
            "--namespace=default",
            "--id",
            "x",
            "-bundle=/b",
            "-debug=false",
            "--",
            "delete",
        ]);
        assert_eq!(a.owner().as_deref(), Some("default/x"));
        assert_eq!(a.bundle.as_deref(), Some(std::path::Path::new("/b")));
        assert!(!a.debug);
        assert_eq!(a.action.as_deref(), Some("delete"));
    }

    #[test]
    fn unknown_flags_are_booleans_and_missing_values_are_none() {
        let a = ShimArgs::parse(["-v"]);
        assert_eq!(a, ShimArgs::default());
        let a = ShimArgs::parse(["-info", "-namespace", "n", "start", "-id", "late"]);
        assert_eq!(a.action.as_deref(), Some("start"));
        assert_eq!(a.id, None, "flags after the action belong to the action");
        assert_eq!(a.owner(), None);
        let a = ShimArgs::parse(["-id"]);
        assert_eq!(a.id, None);
        let a = ShimArgs::parse(["-namespace", "", "-id", "x", "start"]);
        assert_eq!(a.owner(), None);
    }
}
