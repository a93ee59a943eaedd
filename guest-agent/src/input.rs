//! Where the guest network description comes from: the OCI state of a Kata
//! guest hook on stdin (annotation `io.kata-sriov.guest-networks`, else the
//! same annotation in `<bundle>/config.json`), a `--config` file or stdin, or
//! `kata_sriov.networks=<base64>` on `/proc/cmdline`. Reads those files and
//! nothing else; every read is bounded.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use kata_sriov_guest::{
    parse_guest_networks, GuestNetError, GuestNetwork, CMDLINE_KEY, GUEST_ANNOTATION,
    MAX_GUEST_JSON,
};
use serde::Deserialize;

/// Largest OCI state accepted on stdin.
pub const MAX_STATE: usize = 1024 * 1024;
/// Largest `config.json` read from the bundle.
pub const MAX_CONFIG_JSON: usize = 16 * 1024 * 1024;
/// Largest `/proc/cmdline` read.
pub const MAX_CMDLINE: usize = 256 * 1024;

/// Why the input was refused.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading {what}: {cause}")]
    Read { what: String, cause: io::Error },
    #[error("{what}: more than {limit} bytes")]
    TooLarge { what: String, limit: usize },
    #[error("{what}: not UTF-8")]
    NotUtf8 { what: String },
    #[error("OCI state on stdin: {0}")]
    State(serde_json::Error),
    #[error("OCI state: pid {0} is not a process id")]
    BadPid(i64),
    #[error("OCI state: bundle {0:?} is not an absolute path")]
    BadBundle(PathBuf),
    #[error("{path}: not an OCI config: {cause}")]
    Config {
        path: String,
        cause: serde_json::Error,
    },
    #[error("{what}: {cause}")]
    Networks { what: String, cause: GuestNetError },
    #[error("/proc/cmdline: {CMDLINE_KEY} is given {0} times")]
    CmdlineTwice(usize),
    #[error("/proc/cmdline: {CMDLINE_KEY}: not base64: {0}")]
    Base64(base64::DecodeError),
}

/// The OCI state as a hook receives it; only the fields used here.
/// Kata's guest state has `ociVersion, id, status, pid, bundle,
/// annotations`; the host's lacks some: everything is optional.
#[derive(Debug, Default, Deserialize)]
pub struct HookState {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub bundle: Option<PathBuf>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

/// What a hook run has to do.
#[derive(Debug)]
pub struct HookInput {
    /// The container's process (network namespace to configure in); `None`
    /// when the state has no pid (or pid 0): configure where we are.
    pub pid: Option<i32>,
    /// The container id, for the logs.
    pub id: Option<String>,
    /// `None` when the container asked for nothing.
    pub networks: Option<Vec<GuestNetwork>>,
    /// Where the description was found, for the logs.
    pub origin: String,
}

#[derive(Deserialize)]
struct OciConfig {
    #[serde(default)]
    annotations: Option<HashMap<String, String>>,
}

/// Reads at most `limit` bytes; more is an error (nothing is parsed).
pub fn read_bounded(mut r: impl Read, limit: usize, what: &str) -> Result<String, InputError> {
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    r.by_ref()
        .take(cap)
        .read_to_end(&mut buf)
        .map_err(|cause| InputError::Read {
            what: what.to_owned(),
            cause,
        })?;
    if buf.len() > limit {
        return Err(InputError::TooLarge {
            what: what.to_owned(),
            limit,
        });
    }
    String::from_utf8(buf).map_err(|_| InputError::NotUtf8 {
        what: what.to_owned(),
    })
}

fn read_file_bounded(path: &Path, limit: usize) -> Result<String, InputError> {
    let what = path.display().to_string();
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(path)
        .map_err(|cause| InputError::Read {
            what: what.clone(),
            cause,
        })?;
    read_bounded(f, limit, &what)
}

fn parse_nets(text: &str, what: &str) -> Result<Vec<GuestNetwork>, InputError> {
    parse_guest_networks(text).map_err(|cause| InputError::Networks {
        what: what.to_owned(),
        cause,
    })
}

/// Parses the hook's OCI state and finds the description: in the state's
/// annotations, else in `<bundle>/config.json`.
pub fn hook_input(state_text: &str) -> Result<HookInput, InputError> {
    let state: HookState = serde_json::from_str(state_text).map_err(InputError::State)?;
    let pid = match state.pid {
        None | Some(0) => None,
        Some(p) => Some(
            i32::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or(InputError::BadPid(p))?,
        ),
    };
    if let Some(text) = state
        .annotations
        .as_ref()
        .and_then(|a| a.get(GUEST_ANNOTATION))
    {
        let what = format!("OCI state annotation {GUEST_ANNOTATION}");
        return Ok(HookInput {
            pid,
            id: state.id,
            networks: Some(parse_nets(text, &what)?),
            origin: what,
        });
    }
    if let Some(bundle) = &state.bundle {
        if !bundle.is_absolute() {
            return Err(InputError::BadBundle(bundle.clone()));
        }
        let path = bundle.join("config.json");
        let shown = path.display().to_string();
        let text = match read_file_bounded(&path, MAX_CONFIG_JSON) {
            Ok(t) => Some(t),
            // A state whose bundle has no config.json simply carries no request.
            Err(InputError::Read { cause, .. }) if cause.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(text) = text {
            let cfg: OciConfig =
                serde_json::from_str(&text).map_err(|cause| InputError::Config {
                    path: shown.clone(),
                    cause,
                })?;
            if let Some(v) = cfg
                .annotations
                .as_ref()
                .and_then(|a| a.get(GUEST_ANNOTATION))
            {
                let what = format!("{shown} annotation {GUEST_ANNOTATION}");
                return Ok(HookInput {
                    pid,
                    id: state.id,
                    networks: Some(parse_nets(v, &what)?),
                    origin: what,
                });
            }
        }
    }
    Ok(HookInput {
        pid,
        id: state.id,
        networks: None,
        origin: "OCI state".to_owned(),
    })
}

/// Reads the description from a file, or stdin for `-`.
pub fn config_input(arg: &Path) -> Result<Vec<GuestNetwork>, InputError> {
    let (text, what) = if arg == Path::new("-") {
        (
            read_bounded(io::stdin().lock(), MAX_GUEST_JSON, "stdin")?,
            "stdin".to_owned(),
        )
    } else {
        (
            read_file_bounded(arg, MAX_GUEST_JSON)?,
            arg.display().to_string(),
        )
    };
    parse_nets(&text, &what)
}

/// Reads `kata_sriov.networks=` from a kernel command line file
/// (`/proc/cmdline`). `None` when the key is absent.
pub fn cmdline_file_input(path: &Path) -> Result<Option<Vec<GuestNetwork>>, InputError> {
    let text = read_file_bounded(path, MAX_CMDLINE)?;
    cmdline_input(&text)
}

/// Finds `kata_sriov.networks=<base64>` in a kernel command line and parses
/// the JSON it carries (standard alphabet, padding optional).
pub fn cmdline_input(cmdline: &str) -> Result<Option<Vec<GuestNetwork>>, InputError> {
    let prefix = format!("{CMDLINE_KEY}=");
    let values: Vec<&str> = cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(&prefix))
        .collect();
    let value = match values.as_slice() {
        [] => return Ok(None),
        [v] => *v,
        more => return Err(InputError::CmdlineTwice(more.len())),
    };
    // base64 is 4/3 of the JSON: refuse before decoding anything bigger.
    if value.len() > MAX_GUEST_JSON / 3 * 4 + 4 {
        return Err(InputError::TooLarge {
            what: format!("/proc/cmdline: {CMDLINE_KEY}"),
            limit: MAX_GUEST_JSON,
        });
    }
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(value).map_err(InputError::Base64)?;
    let what = format!("/proc/cmdline: {CMDLINE_KEY}");
    let text = String::from_utf8(bytes).map_err(|_| InputError::NotUtf8 { what: what.clone() })?;
    parse_nets(&text, &what).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETS: &str =
        r#"[{"mac":"02:00:00:00:00:01","pci_id":"8086:10ca","name":"net1","ips":["10.0.0.5/24"]}]"#;

    fn state(annotations: Option<&str>, bundle: Option<&Path>) -> String {
        let mut v = serde_json::json!({"ociVersion":"1.0.2","id":"c1","status":"created","pid":42});
        if let Some(a) = annotations {
            v["annotations"] = serde_json::json!({ GUEST_ANNOTATION: a, "other": "x" });
        }
        if let Some(b) = bundle {
            v["bundle"] = serde_json::json!(b);
        }
        v.to_string()
    }

    #[test]
    fn state_annotation_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "not json").unwrap();
        let h = hook_input(&state(Some(NETS), Some(dir.path()))).unwrap();
        assert_eq!(h.pid, Some(42));
        assert_eq!(h.id.as_deref(), Some("c1"));
        let n = h.networks.unwrap();
        assert_eq!(n[0].l3.name.as_ref().unwrap().as_str(), "net1");
    }

    #[test]
    fn falls_back_to_bundle_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = serde_json::json!({"ociVersion":"1.0.2","process":{},"annotations":{GUEST_ANNOTATION: NETS}});
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        let h = hook_input(&state(None, Some(dir.path()))).unwrap();
        assert_eq!(h.networks.unwrap().len(), 1);
        assert!(h.origin.contains("config.json"), "{}", h.origin);
    }

    #[test]
    fn nothing_requested() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"ociVersion":"1"}"#).unwrap();
        assert!(hook_input(&state(None, Some(dir.path())))
            .unwrap()
            .networks
            .is_none());
        let gone = dir.path().join("gone");
        assert!(hook_input(&state(None, Some(&gone)))
            .unwrap()
            .networks
            .is_none());
        assert!(hook_input("{}").unwrap().networks.is_none());
    }

    #[test]
    fn refuses_bad_state() {
        assert!(hook_input("[").is_err());
        assert!(hook_input(r#"{"pid":-3}"#).is_err());
        assert!(hook_input(r#"{"pid":99999999999}"#).is_err());
        assert!(hook_input(r#"{"bundle":"relative/dir"}"#).is_err());
        let bad = state(
            Some(r#"[{"pci_id":"8086:10ca","ips":["10.0.0.5/40"]}]"#),
            None,
        );
        assert!(matches!(hook_input(&bad), Err(InputError::Networks { .. })));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        assert!(matches!(
            hook_input(&state(None, Some(dir.path()))),
            Err(InputError::Config { .. })
        ));
    }

    #[test]
    fn bounded_reads() {
        let big = [b' '; 100];
        assert!(read_bounded(&big[..], 100, "x").is_ok());
        assert!(matches!(
            read_bounded(&big[..], 99, "x"),
            Err(InputError::TooLarge { .. })
        ));
        assert!(matches!(
            read_bounded(&[0xff, 0xfe][..], 10, "x"),
            Err(InputError::NotUtf8 { .. })
        ));
    }

    #[test]
    fn cmdline() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(NETS);
        let line = format!("console=ttyS0 quiet {CMDLINE_KEY}={b64} panic=1\n");
        assert_eq!(cmdline_input(&line).unwrap().unwrap().len(), 1);
        let nopad = b64.trim_end_matches('=');
        assert!(cmdline_input(&format!("{CMDLINE_KEY}={nopad}"))
            .unwrap()
            .is_some());
        assert!(cmdline_input("console=ttyS0 kata_sriov.networksX=1")
            .unwrap()
            .is_none());
        assert!(matches!(
            cmdline_input(&format!("{CMDLINE_KEY}={b64} {CMDLINE_KEY}={b64}")),
            Err(InputError::CmdlineTwice(2))
        ));
        assert!(matches!(
            cmdline_input(&format!("{CMDLINE_KEY}=!!!")),
            Err(InputError::Base64(_))
        ));
        let huge = "A".repeat(MAX_GUEST_JSON * 2);
        assert!(matches!(
            cmdline_input(&format!("{CMDLINE_KEY}={huge}")),
            Err(InputError::TooLarge { .. })
        ));
        let bad = base64::engine::general_purpose::STANDARD.encode(r#"[{"pci_id":"x"}]"#);
        assert!(matches!(
            cmdline_input(&format!("{CMDLINE_KEY}={bad}")),
            Err(InputError::Networks { .. })
        ));
    }
}
