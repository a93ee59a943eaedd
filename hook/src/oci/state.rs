//! The state a runtime passes to an OCI hook on stdin, parsed leniently.
//! Bounded like a spec: at most [`MAX_INPUT_BYTES`], nested at most
//! [`MAX_DEPTH`] deep, and only the annotations we read are kept (every
//! annotation must still be a string, as the OCI runtime spec says), so a
//! container's huge or deep annotations cost no memory here.

use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use serde::de::{Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::json::{read_limited, too_deep, MAX_DEPTH, MAX_INPUT_BYTES, READ_ANNOTATIONS};

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
    #[error("hook state: nested deeper than {MAX_DEPTH} arrays and objects (at byte {0})")]
    TooDeep(usize),
}

/// Parses a hook state (at most [`MAX_INPUT_BYTES`]). Unknown fields are
/// ignored, `id` is required, everything else is optional.
pub fn parse_state(bytes: &[u8]) -> Result<HookState, StateError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(StateError::TooLarge(bytes.len()));
    }
    if let Some(at) = too_deep(bytes, MAX_DEPTH) {
        return Err(StateError::TooDeep(at));
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
        annotations: raw.annotations.map(|a| a.0).unwrap_or_default(),
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
    annotations: Option<ReadAnnotations>,
}

/// The annotations of [`READ_ANNOTATIONS`]; every value must be a string.
struct ReadAnnotations(Map<String, Value>);

impl<'de> Deserialize<'de> for ReadAnnotations {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ReadAnnotations;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Map::new();
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    match m.next_value::<Annotation<'de>>()? {
                        Annotation::Text(v) => {
                            if READ_ANNOTATIONS.iter().any(|p| k.starts_with(p)) {
                                out.insert(k.into_owned(), Value::String(v.into_owned()));
                            }
                        }
                        Annotation::Other(kind) => {
                            return Err(A::Error::custom(format!(
                                "annotation {k:?} is {kind}, expected a string"
                            )))
                        }
                    }
                }
                Ok(ReadAnnotations(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One annotation's value: its text, or what else it is (skipped without
/// being built).
enum Annotation<'de> {
    Text(Cow<'de, str>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Annotation<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Annotation<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Annotation::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Annotation::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Annotation::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Annotation::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Annotation::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Annotation::Other("a number"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Annotation::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Annotation::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Annotation::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
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
            (
                br#"{"id":"a","annotations":{"x":{"y":[1]}}}"#,
                r#"annotation "x" is an object, expected a string"#,
            ),
            (b"not json", "malformed JSON"),
            (b"[]", "malformed JSON"),
        ] {
            let got = parse_state(bad).unwrap_err().to_string();
            assert!(
                got.starts_with("hook state: ") && got.contains(want),
                "{got}"
            );
        }
        let deep = format!(
            "{{\"id\":\"a\",\"x\":{}{}}}",
            "[".repeat(65),
            "]".repeat(65)
        );
        assert!(matches!(
            parse_state(deep.as_bytes()),
            Err(StateError::TooDeep(_))
        ));
        // Annotations we do not read are checked, not kept.
        let s = parse_state(br#"{"id":"a","annotations":{"x":"y","io.kata-sriov.owner":"o"}}"#)
            .unwrap();
        assert_eq!(s.annotations.len(), 1);
        assert_eq!(s.annotations[OWNER_ANNOTATION], "o");
        let mut big = br#"{"id":"a","x":""#.to_vec();
        big.resize(MAX_INPUT_BYTES + 10, b'a');
        assert!(matches!(parse_state(&big), Err(StateError::TooLarge(_))));
        assert!(matches!(
            read_state(std::io::Cursor::new(big)),
            Err(StateError::TooLarge(n)) if n == MAX_INPUT_BYTES + 1
        ));
    }
}
