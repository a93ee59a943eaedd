//! JSON from outside (a container's `config.json`, a hook state, a
//! request): bounded reads and the words for error messages.

use std::io::Read;

use serde_json::Value;

/// Largest hook state or `config.json` read from stdin, in bytes.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting of arrays and objects accepted in input JSON (an OCI
/// spec nests about 6 deep; serde_json's own limit, 128, bounds the stack
/// but not the memory a deep, wide document costs).
pub const MAX_DEPTH: usize = 64;

/// Prefixes of the annotations this crate reads from a spec or a hook
/// state (ours and the CRI's); others are checked, never kept.
pub const READ_ANNOTATIONS: [&str; 2] = ["io.kata-sriov.", "io.kubernetes.cri."];

/// The byte offset where `text` first nests deeper than `max` arrays and
/// objects, if it does (brackets inside strings do not count). A scan
/// without allocation, run before any parse.
pub fn too_deep(text: &[u8], max: usize) -> Option<usize> {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for (i, &b) in text.iter().enumerate() {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// What kind of JSON value `v` is, for error messages ("a string").
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads at most one byte over [`MAX_INPUT_BYTES`], so that a caller can
/// tell an oversized input from one at the limit.
pub fn read_limited<R: Read>(r: R) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.take(MAX_INPUT_BYTES as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth() {
        assert_eq!(too_deep(b"[[1]]", 2), None);
        assert_eq!(too_deep(b"[[[1]]]", 2), Some(2));
        assert_eq!(too_deep(br#"{"a":"[[[[\"[[["}"#, 1), None);
        assert_eq!(too_deep(br#"["\\",[[]]]"#, 2), Some(7));
    }
}
