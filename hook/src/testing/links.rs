//! Real links for the netdev-mode tests: veth pairs standing in for VFs'
//! netdevs (`<tag>pv<i>`, peers `<tag>q<i>`), made and removed with `ip`.
//! Needs root.

use std::process::{Command, Stdio};

/// Adds the veth pairs `<tag>pv<i>` <-> `<tag>q<i>` for `i` in `0..n`.
pub fn add_vf_veths(tag: &str, n: u32) {
    for i in 0..n {
        let args = [
            "link",
            "add",
            &format!("{tag}pv{i}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("{tag}q{i}"),
        ];
        let o = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip: {e}"));
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Deletes whatever is left of the pairs [`add_vf_veths`] adds, for `i` in
/// `0..n` (a missing link is no error).
pub fn del_vf_veths(tag: &str, n: u32) {
    for i in 0..n {
        for name in [format!("{tag}pv{i}"), format!("{tag}q{i}")] {
            let _ = Command::new("ip")
                .args(["link", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}
