//! The one I/O error type ([`IoError`]: operation, path, and the OS error
//! as its source) and [`chain`], shared with the guest library.

pub use kata_sriov_guest::{chain, IoError};

/// `s` safe for a terminal and for a line-based format: control
/// characters (escape sequences, newlines) become `\u{..}` escapes. Every
/// string from a container or the host (owners, driver names, reasons) is
/// printed through this.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("k8s.io/abc"), "k8s.io/abc");
        let p = printable("\u{1b}[2J\u{1b}]0;PWNED\u{7}x\nline2");
        assert!(!p.chars().any(char::is_control), "{p:?}");
        assert!(p.contains("\\u{1b}") && p.contains("line2"), "{p}");
    }
}
