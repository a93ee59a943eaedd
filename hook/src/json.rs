//! JSON from outside (a container's `config.json`, a hook state, a
//! request): bounded reads and the words for error messages.

use std::io::Read;

use serde_json::Value;

/// Largest hook state or `config.json` read from stdin, in bytes.
pub const MAX_INPUT_BYTES: usize = 4 * 1024 * 1024;

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
