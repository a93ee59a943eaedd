//! Owner tokens: the name a VF's lease is recorded under. The shim uses
//! `<namespace>/<id>`; `hook precreate`, which sees no container id,
//! generates one; the other hooks read the owner annotation the host side
//! wrote, else the state's id.

use serde_json::{Map, Value};

use crate::kernel::random;

/// Annotation the host side writes: the token the VFs' leases are recorded
/// under. Poststop releases by it.
pub const OWNER_ANNOTATION: &str = "io.kata-sriov.owner";
/// Prefix of the owners of VFs the Kubernetes device plugin allocated
/// (`k8s-dp/<pool>/<pci>`).
pub const DEVICE_PLUGIN_PREFIX: &str = "k8s-dp/";
/// Longest owner token.
pub const MAX_OWNER: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "annotation {OWNER_ANNOTATION}: must be a non-empty string of at most {MAX_OWNER} bytes"
    )]
    BadAnnotation,
    #[error("annotation {OWNER_ANNOTATION}: {0:?} names no claim of this host; refusing it (the host side writes it only after claiming)")]
    Unknown(String),
    #[error("owner token must be 1 to {MAX_OWNER} bytes without control characters")]
    BadToken,
    #[error("cannot generate an owner token: reading random bytes failed")]
    Random(#[source] std::io::Error),
}

/// Whether `token` can name an owner: 1 to [`MAX_OWNER`] bytes, no control
/// characters (it is printed and stored).
pub fn valid(token: &str) -> bool {
    !token.is_empty() && token.len() <= MAX_OWNER && !token.chars().any(char::is_control)
}

/// The owner token a hook acts for: the owner annotation of its state,
/// else the state's id.
pub fn from_state(annotations: &Map<String, Value>, id: &str) -> Result<String, OwnerError> {
    match annotations.get(OWNER_ANNOTATION) {
        None => Ok(id.to_owned()),
        Some(v) => match v.as_str() {
            Some(s) if valid(s) => Ok(s.to_owned()),
            _ => Err(OwnerError::BadAnnotation),
        },
    }
}

/// The shim's owner token for a container: `<namespace>/<id>`.
pub fn for_container(namespace: &str, id: &str) -> Option<String> {
    (!namespace.is_empty() && !id.is_empty()).then(|| format!("{namespace}/{id}"))
}

/// Whether `token` is one [`generate`] made for precreate: a capability
/// (96 random bits) that only the runtime given the edited spec knows.
pub fn is_generated(token: &str) -> bool {
    token
        .strip_prefix("precreate/")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A fresh token `<prefix>/<24 hex digits>` from the kernel's random
/// source; an error when that source fails (never a predictable token).
pub fn generate(prefix: &str) -> Result<String, OwnerError> {
    let mut b = [0u8; 12];
    random::fill(&mut b).map_err(OwnerError::Random)?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!("{prefix}/{hex}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let mut a = Map::new();
        assert_eq!(from_state(&a, "c1").unwrap(), "c1");
        a.insert(OWNER_ANNOTATION.into(), "default/c1".into());
        assert_eq!(from_state(&a, "x").unwrap(), "default/c1");
        for bad in [
            Value::from(""),
            Value::from(3),
            Value::from("a".repeat(MAX_OWNER + 1)),
        ] {
            a.insert(OWNER_ANNOTATION.into(), bad);
            assert!(matches!(
                from_state(&a, "x"),
                Err(OwnerError::BadAnnotation)
            ));
        }
        assert_eq!(
            for_container("k8s.io", "abc").as_deref(),
            Some("k8s.io/abc")
        );
        assert_eq!(for_container("", "abc"), None);
        let t = generate("precreate").unwrap();
        assert!(
            t.starts_with("precreate/") && t.len() == "precreate/".len() + 24,
            "{t}"
        );
        assert_ne!(t, generate("precreate").unwrap());
        assert!(valid(&t) && !valid("") && !valid("a\nb"));
    }
}
