//! The state a runtime passes to an OCI hook on stdin, parsed leniently.

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::json::{read_limited, MAX_INPUT_BYTES};

/// The state a runtime passes to a hook on stdin. Parsed leniently: Kata's
/// host hooks get only `pid`, `bundle`, `id` and `annotations` (no
/// `ociVersion`, no `status`), and their `id` is the sandbox id.
#[derive(Debug, Clone, PartialEq)]
pub struct HookState {
    pub id: String,
    pub pid: Option<i64>,
    pub bundle: Option<PathBuf>,
    pub annotations: Map<String, Value>,
    pub status: Option<String>,
    pub oci_version: Option<String>,
}

/// Why a hook state was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("hook state: {0} bytes is over the {MAX_INPUT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("hook state: cannot read: {0}")]
    Read(std::io::Error),
    #[error("hook state: malformed JSON: {0}")]
    Json(serde_json::Error),
    #[error("hook state: \"id\" is missing or empty")]
    MissingId,
}

/// Parses a hook state (at most [`MAX_INPUT_BYTES`]). Unknown fields are
/// ignored, `id` is required, everything else is optional.
pub fn parse_state(bytes: &[u8]) -> Result<HookState, StateError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(StateError::TooLarge(bytes.len()));
    }
    let raw: RawState = serde_json::from_slice(bytes).map_err(StateError::Json)?;
    let id = raw
        .id
        .filter(|s| !s.is_empty())
        .ok_or(StateError::MissingId)?;
    Ok(HookState {
        id,
        pid: raw.pid,
        bundle: raw.bundle.filter(|b| !b.is_empty()).map(PathBuf::from),
        annotations: raw.annotations.unwrap_or_default(),
        status: raw.status,
        oci_version: raw.oci_version,
    })
}

/// Reads and parses a hook state from `r` (stdin), reading at most one
/// byte over the limit.
pub fn read_state<R: Read>(r: R) -> Result<HookState, StateError> {
    let bytes = read_limited(r).map_err(StateError::Read)?;
    parse_state(&bytes)
}

#[derive(Deserialize)]
struct RawState {
    #[serde(rename = "ociVersion")]
    oci_version: Option<String>,
    id: Option<String>,
    status: Option<String>,
    pid: Option<i64>,
    bundle: Option<String>,
    annotations: Option<Map<String, Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::owner::OWNER_ANNOTATION;
    use std::path::Path;

    #[test]
    fn hook_states() {
        // Kata's host hook state: no ociVersion, no status.
        let kata = br#"{"pid":4242,"bundle":"/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc","id":"sandbox-1","annotations":{"io.kata-sriov.owner":"k8s.io/abc"}}"#;
        let s = parse_state(kata).unwrap();
        assert_eq!(s.id, "sandbox-1");
        assert_eq!(s.pid, Some(4242));
        assert_eq!(
            s.bundle.as_deref(),
            Some(Path::new(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc"
            ))
        );
        assert_eq!(s.annotations[OWNER_ANNOTATION], "k8s.io/abc");
        assert_eq!(s.status, None);
        // runc's state, with an unknown field.
        let runc =
            br#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","bundle":"/b","x-new":1}"#;
        let s = parse_state(runc).unwrap();
        assert_eq!(
            (s.status.as_deref(), s.pid, s.annotations.len()),
            (Some("stopped"), None, 0)
        );
        assert_eq!(s.oci_version.as_deref(), Some("1.0.2"));
        let s = read_state(std::io::Cursor::new(
            &b"{\"id\":\"x\",\"annotations\":null}"[..],
        ))
        .unwrap();
        assert_eq!(s.id, "x");

        for (bad, want) in [
            (&b"{}"[..], "\"id\" is missing"),
            (br#"{"id":""}"#, "\"id\" is missing"),
            (br#"{"id":null}"#, "\"id\" is missing"),
            (br#"{"id":5}"#, "malformed JSON: invalid type"),
            (br#"{"id":"a","id":"b"}"#, "duplicate field `id`"),
            (br#"{"id":"a","pid":"12"}"#, "malformed JSON"),
            (br#"{"id":"a","annotations":[]}"#, "malformed JSON"),
            (b"not json", "malformed JSON"),
            (b"[]", "malformed JSON"),
        ] {
            let got = parse_state(bad).unwrap_err().to_string();
            assert!(
                got.starts_with("hook state: ") && got.contains(want),
                "{got}"
            );
        }
        let mut big = br#"{"id":"a","x":""#.to_vec();
        big.resize(MAX_INPUT_BYTES + 10, b'a');
        assert!(matches!(parse_state(&big), Err(StateError::TooLarge(_))));
        assert!(matches!(
            read_state(std::io::Cursor::new(big)),
            Err(StateError::TooLarge(n)) if n == MAX_INPUT_BYTES + 1
        ));
    }
}
